"""Credentials with line breaks or control characters (issue 8, item 4): one trailing newline
(as ``echo`` writes it) is dropped, anything else is refused at load with one line naming the
credential, never showing it, and nothing is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.config import load_credentials
from scheduler.errors import ConfigError
from tests.helpers import clean_env, run_cli, write_audience, write_campaign, write_config

SECRET = "sk-live-9f8e7d6c5b4a"


@pytest.mark.parametrize("written", [
    SECRET, SECRET + "\n", SECRET + "\r\n", f"  {SECRET}  ", f" {SECRET} \n", f"{SECRET}\n ",
    f"\u00a0{SECRET}\u3000\n",  # other spaces were stripped before, and still are
])
def test_one_trailing_newline_and_spaces_are_dropped(written: str, tmp_path: Path) -> None:
    """The same key from the environment or a credentials file, however `echo` wrote it."""
    (tmp_path / "api-key").write_text(written, "utf-8", newline="")
    from_file = load_credentials({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    from_env = load_credentials({"CASCADE_API_KEY": written})
    for credentials in (from_file, from_env):
        assert credentials.headers() == {"X-Authorization-Key": SECRET}


CONTROLLED = [
    SECRET + "\nsecond-line",  # the fault suite's file: a key, then a second line
    SECRET + "\n\n",  # two newlines: only one is echo's
    SECRET + "\rjunk",
    "sk\x00live-key",
    SECRET + "\t",
    "sk\x1b[31mlive",
    "\u200bsk-live-key",  # a zero-width space (format character) pasted with the key
    SECRET + "\u2028more",  # the Unicode line separator
]


@pytest.mark.parametrize("written", CONTROLLED)
def test_a_control_character_in_a_variable_is_refused(written: str) -> None:
    """One problem naming the variable and what to do; the value is nowhere in the error."""
    with pytest.raises(ConfigError) as caught:
        load_credentials({"CASCADE_API_KEY": written})
    assert str(caught.value) == (
        "CASCADE_API_KEY contains a line break or another control character: "
        "keep only the key on one line"
    )
    assert "live" not in str(caught.value) and "junk" not in str(caught.value)


@pytest.mark.parametrize("written", CONTROLLED)
def test_a_control_character_in_a_credentials_file_is_refused(
    written: str, tmp_path: Path
) -> None:
    """The file is named as systemd's LoadCredential= names it; the value is not shown."""
    (tmp_path / "tg-bot-key").write_text(written, "utf-8", newline="")
    with pytest.raises(ConfigError) as caught:
        load_credentials({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert str(caught.value) == (
        "tg-bot-key in $CREDENTIALS_DIRECTORY contains a line break or another control "
        "character: keep only the key on one line"
    )


def test_the_journal_password_follows_the_same_rule(tmp_path: Path) -> None:
    """CASCADE_JOURNAL_PASSWORD and the journal-password file: one newline dropped, a second
    line refused (named "password"), and every bad credential reported in one pass."""
    (tmp_path / "journal-password").write_text("pg-secret\n", "utf-8")
    credentials = load_credentials({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert credentials.secrets() == ["pg-secret"]
    with pytest.raises(ConfigError) as caught:
        load_credentials({
            "CASCADE_JOURNAL_PASSWORD": "pg-secret\nother", "CASCADE_VIBER_TOKEN": "v\x07t",
        })
    assert [p.render() for p in caught.value.problems] == [
        "CASCADE_VIBER_TOKEN contains a line break or another control character: "
        "keep only the token on one line",
        "CASCADE_JOURNAL_PASSWORD contains a line break or another control character: "
        "keep only the password on one line",
    ]


def test_a_credentials_file_that_is_not_text_is_refused(tmp_path: Path) -> None:
    """Binary bytes in a credentials file: a ConfigError, not a UnicodeDecodeError."""
    (tmp_path / "api-key").write_bytes(b"\xff\xfe key")
    with pytest.raises(ConfigError, match=r"^api-key in \$CREDENTIALS_DIRECTORY is not UTF-8"):
        load_credentials({"CREDENTIALS_DIRECTORY": str(tmp_path)})


# --- the real CLI ------------------------------------------------------------------------------


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    """A config (embedded sandbox) and a campaign of three recipients due now."""
    write_config(tmp_path)
    write_audience(tmp_path / "campaigns" / "people.csv", 3)
    return write_campaign(tmp_path / "campaigns", "creds", "people.csv")


def send(campaign: Path, **env: str) -> tuple[int, str, str]:
    """``python -m scheduler send FILE --now`` with ``env``: exit code, stdout, stderr."""
    config = campaign.parent.parent / "config.toml"
    result = run_cli(["send", str(campaign), "--now", "--config", str(config)],
                     env=clean_env(**env), cwd=campaign.parent.parent)
    return result.returncode, result.stdout, result.stderr


def test_send_refuses_a_key_with_a_second_line_from_the_environment(campaign: Path) -> None:
    """Exit 1, one line on stderr naming CASCADE_API_KEY, no traceback, the key not shown,
    nothing sent (before: aiohttp refused the header in a worker and the campaign hung)."""
    code, out, err = send(campaign, CASCADE_API_KEY="abc\ndef")
    assert code == 1, err
    assert err.splitlines() == [
        "CASCADE_API_KEY contains a line break or another control character: "
        "keep only the key on one line"
    ]
    assert "Traceback" not in out + err and "def" not in out + err
    assert not (campaign.parent.parent / "logs" / "delivery.jsonl").exists()


def test_send_refuses_a_credentials_file_with_a_second_line(
    campaign: Path, tmp_path: Path
) -> None:
    """The same for ``api-key`` in $CREDENTIALS_DIRECTORY holding "key\\nsecond-line\\n"."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api-key").write_text("key\nsecond-line\n", "utf-8")
    code, out, err = send(campaign, CREDENTIALS_DIRECTORY=str(credentials))
    assert code == 1, err
    assert err.splitlines() == [
        "api-key in $CREDENTIALS_DIRECTORY contains a line break or another control "
        "character: keep only the key on one line"
    ]
    assert "Traceback" not in out + err and "second-line" not in out + err


def test_send_accepts_a_key_written_by_echo(campaign: Path, tmp_path: Path) -> None:
    """``echo key > api-key`` (one trailing newline) is fine: the campaign is sent."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api-key").write_text("key-from-echo\n", "utf-8")
    code, out, err = send(campaign, CREDENTIALS_DIRECTORY=str(credentials))
    assert code == 0, err
    assert "Traceback" not in out + err
