"""The daemon config (SPEC §4): every rule located by file, line and field; secrets kept out."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler import cli
from scheduler.config import Config, load_config
from scheduler.errors import ConfigError

SECRET = "sk-live-0123456789abcdef"
GOOD_CAMPAIGN = """\
id = "c1"
from_name = "YourBrand"
type = "transaction"
send_at = 2026-11-20T09:00:00Z
text = "Your order is confirmed"

[audience]
csv = "people.csv"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with ``campaigns/`` holding one valid campaign and its CSV."""
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "people.csv").write_text("phone\n+380501234567\n", "utf-8")
    (campaigns / "c1.toml").write_text(GOOD_CAMPAIGN, "utf-8")
    return tmp_path


def write_config(folder: Path, body: str) -> Path:
    """Write ``config.toml`` with ``[paths] campaigns`` set, then ``body``."""
    path = folder / "config.toml"
    path.write_text('[paths]\ncampaigns = "campaigns"\n' + body, "utf-8")
    return path


# (case id, config body after the 2 [paths] lines, line, field, words in the message)
BAD_CONFIGS: list[tuple[str, str, int | None, str | None, str]] = [
    ("syntax", '[api]\nroute = "standard\n', 4, None, "TOML syntax error"),
    ("unknown-table", "[sendng]\nbatch_size = 10\n", 3, "sendng",
     'unknown key: did you mean "sending"'),
    ("unknown-key", '[api]\nbase_uri = "sandbox"\n', 4, "api.base_uri",
     'did you mean "base_url"'),
    ("unknown-paths-key", 'campaign = "x"\n', 3, "paths.campaign", 'did you mean "campaigns"'),
    ("bad-route", '[api]\nroute = "sms"\n', 4, "api.route", "'standard' or 'tg-viber'"),
    ("http-remote", '[api]\nbase_url = "http://restapi.smsbat.com"\n', 4, "api.base_url",
     "clear text"),
    ("not-a-url", '[api]\nbase_url = "restapi.smsbat.com"\n', 4, "api.base_url", "is not a URL"),
    ("timeout-zero", "[api]\ntimeout = 0\n", 4, "api.timeout", "greater than 0"),
    ("batch-zero", "[sending]\nbatch_size = 0\n", 4, "sending.batch_size",
     "greater than or equal to 1"),
    ("batch-1001", "[sending]\nbatch_size = 1001\n", 4, "sending.batch_size",
     "less than or equal to 1000"),
    ("rate-text", '[sending]\nrequests_per_second = "fast"\n', 4,
     "sending.requests_per_second", "valid number"),
    ("concurrency-zero", "[sending]\nconcurrency = 0\n", 4, "sending.concurrency",
     "greater than or equal to 1"),
    ("attempts-zero", "[sending]\nmax_attempts = 0\n", 4, "sending.max_attempts",
     "greater than or equal to 1"),
    ("delivery", '[sending]\ndelivery = "exactly-once"\n', 4, "sending.delivery",
     "'at-least-once' or 'at-most-once'"),
    ("log-level", '[log]\nlevel = "loud"\n', 4, "log.level", "'debug'"),
    ("log-format", '[log]\nformat = "xml"\n', 4, "log.format", "'json' or 'console'"),
    ("log-phones", '[log]\nphones = "hidden"\n', 4, "log.phones", "'masked' or 'full'"),
    ("section-not-table", 'log = "debug"\n', 3, "paths.log", "unknown key"),
    ("unknown-policy-table", '[polcy]\ntimezone = "UTC"\n', 3, "polcy",
     'did you mean "policy"'),
    ("unknown-policy-key", '[policy]\ntimezon = "Europe/Kyiv"\n', 4, "policy.timezon",
     'did you mean "timezone"'),
    ("unknown-cap-key", '[[policy.caps]]\ntypes = ["promo"]\nmax = 2\ndays = 7\n\n'
     '[[policy.caps]]\ntypes = ["promo"]\nmax = 5\ndays = 30\nmaxx = 6\n', 12,
     "policy.caps.1.maxx", 'did you mean "max"'),
    ("credentials-in-file", '[credentials]\napi_key = "sk-live-0123"\n', 3, "credentials",
     "never live in the config file"),
    ("source-in-file", 'source = "elsewhere.toml"\n', 3, "source", "unknown key"),
    ("currency", '[delivery_reports]\ncurrency = "hryvnia"\n', 4,
     "delivery_reports.currency", "three letters"),
]


@pytest.mark.parametrize(
    ("body", "line", "field", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_CONFIGS],
)
def test_bad_config(
    folder: Path, capsys: pytest.CaptureFixture[str], body: str, line: int | None,
    field: str | None, words: str,
) -> None:
    """`check --config` exits 1 and names the config file, the line and the key."""
    config = write_config(folder, body)
    code = cli.main(["check", "--config", str(config)])
    err = capsys.readouterr().err
    where = f"{config}:{line}: " if line is not None else f"{config}: "
    what = f"{field}: " if field else ""
    assert code == 1, err
    assert any(where in text and what in text and words in text for text in err.splitlines()), err
    assert "Traceback" not in err


def test_every_key_of_every_table_is_suggested(folder: Path) -> None:
    """A key misspelt in any table the models define, [policy] and its caps included, gets
    "did you mean" with the right key: the hints come from the models, so none can drift."""
    from pydantic import BaseModel

    from scheduler.config import table_keys

    tables = [name for name, info in Config.model_fields.items()
              if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
              and name != "credentials"]
    assert {"api", "sending", "paths", "journal", "metrics", "delivery_reports", "policy",
            "log"} <= set(tables)
    for table in tables:
        for key in table_keys(Config, [table]):
            typo = key[:-1] + key[-1].upper() if len(key) > 3 else key + "s"
            path = folder / "config.toml"
            path.write_text(f"[{table}]\n{typo} = 1\n", "utf-8")
            with pytest.raises(ConfigError) as caught:
                load_config(path, env={})
            assert f'{table}.{typo}: unknown key: did you mean "{key}"?' in str(caught.value)
    assert table_keys(Config, ["policy", "caps", 0]) == ["accounts", "days", "max", "types"]
    assert "credentials" not in table_keys(Config, [])


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --config that does not exist is one clear sentence and exit 1."""
    code = cli.main(["check", "--config", str(tmp_path / "nope.toml")])
    assert code == 1
    assert "config file not found" in capsys.readouterr().err


def test_loopback_http_is_allowed(folder: Path) -> None:
    """http:// to 127.0.0.1, ::1 or localhost is fine: nothing leaves the machine."""
    for url in ("http://127.0.0.1:8080", "http://[::1]:9000", "http://localhost"):
        config = load_config(write_config(folder, f'[api]\nbase_url = "{url}/"\n'), env={})
        assert config.api.base_url == url
        assert not config.api.is_sandbox


def test_relative_paths_resolve_against_config_file(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths in the file are relative to the file's folder, not the current one."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write_config(folder, 'state = "state/j.sqlite3"\nsuppression = "optout.csv"\n')
    config = load_config(path, env={})
    assert config.paths.campaigns == folder.resolve() / "campaigns"
    assert config.paths.state == folder.resolve() / "state" / "j.sqlite3"
    assert config.paths.suppression == folder.resolve() / "optout.csv"
    assert config.paths.audiences is None


def test_cascade_config_variable(folder: Path, tmp_path: Path) -> None:
    """Without --config, $CASCADE_CONFIG names the file; --config still wins."""
    path = write_config(folder, "[sending]\nbatch_size = 7\n")
    assert load_config(None, env={"CASCADE_CONFIG": str(path)}).sending.batch_size == 7
    other = tmp_path / "other.toml"
    other.write_text("[sending]\nbatch_size = 9\n", "utf-8")
    assert load_config(other, env={"CASCADE_CONFIG": str(path)}).sending.batch_size == 9


def test_cascade_config_variable_through_cli(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check` with no arguments uses $CASCADE_CONFIG's campaigns folder."""
    monkeypatch.setenv("CASCADE_CONFIG", str(write_config(folder, "")))
    monkeypatch.chdir(folder.parent)
    assert cli.main(["check"]) == 0
    assert "c1" in capsys.readouterr().out


def test_credentials_from_environment(folder: Path) -> None:
    """Each credential variable becomes its header."""
    env = {"CASCADE_API_KEY": SECRET, "CASCADE_VIBER_TOKEN": "v", "CASCADE_TG_BOT_KEY": "t"}
    config = load_config(write_config(folder, ""), env=env)
    assert config.credentials.headers() == {
        "X-Authorization-Key": SECRET, "X-Viber-Auth-Token": "v", "X-Tg-Bot-Key": "t",
    }


def test_credentials_from_credentials_directory(folder: Path, tmp_path: Path) -> None:
    """systemd's $CREDENTIALS_DIRECTORY files are read (trailing newline stripped); env wins."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-key").write_text(SECRET + "\n", "utf-8")
    (creds / "tg-bot-key").write_text("from-file", "utf-8")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "CASCADE_TG_BOT_KEY": "from-env"}
    config = load_config(write_config(folder, ""), env=env)
    assert config.credentials.headers() == {
        "X-Authorization-Key": SECRET, "X-Tg-Bot-Key": "from-env",
    }


def test_secret_never_shown(folder: Path) -> None:
    """The key appears in no repr, str, dump or error of the config."""
    path = write_config(folder, '[api]\nbase_url = "https://restapi.smsbat.com"\n')
    config = load_config(path, env={"CASCADE_API_KEY": SECRET})
    shown = [repr(config), str(config), config.model_dump_json(), repr(config.credentials),
             str(config.model_dump())]
    assert all(SECRET not in text for text in shown)
    bad = write_config(folder, "[sending]\nbatch_size = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(bad, env={"CASCADE_API_KEY": SECRET})
    assert SECRET not in str(caught.value)


def test_require_credentials(folder: Path) -> None:
    """The sandbox needs none; a real URL needs at least one, and the error names the variables."""
    assert load_config(write_config(folder, ""), env={}).require_credentials() is None
    real = write_config(folder, '[api]\nbase_url = "https://restapi.smsbat.com"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(real, env={}).require_credentials()
    assert "CASCADE_API_KEY" in str(caught.value)
    assert caught.value.problems[0].field == "api.base_url"
    load_config(real, env={"CASCADE_VIBER_TOKEN": "v"}).require_credentials()


@pytest.mark.parametrize(("body", "field", "words"), [
    ('[api]\nbase_url = "https://restapi.smsbat.com"\n'
     '[delivery_reports]\npoll = true\nstatus_url = "sandbox"\n',
     "delivery_reports.status_url", 'status_url = "sandbox" needs [api] base_url = "sandbox"'),
    ('[delivery_reports]\nlisten = "127.0.0.1:8081"\n', "delivery_reports.listen",
     "listen needs the webhook token"),
    ('[paths]\ncampaigns = "nowhere"\n', "paths.campaigns", "does not exist: create it"),
])
def test_require_daemon(folder: Path, body: str, field: str, words: str) -> None:
    """What `run` cannot start with is one problem naming its key, asked of the config."""
    assert load_config(write_config(folder, ""), env={}).require_daemon() is None
    if body.startswith("[paths]"):  # its own [paths]: the folder it names is missing
        path = folder / "config.toml"
        path.write_text(body, "utf-8")
    else:
        path = write_config(folder, body)
    config = load_config(path, env={"CASCADE_API_KEY": "k"})
    with pytest.raises(ConfigError) as caught:
        config.require_daemon()
    assert [p.field for p in caught.value.problems] == [field]
    assert words in str(caught.value)


def test_check_warns_about_missing_credentials_only_when_strict(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A marketer's `check` says nothing about the daemon's credentials (issue 9, item 13);
    `check --strict`, on the daemon's machine, warns once and still passes."""
    for variable in ("CASCADE_API_KEY", "CASCADE_VIBER_TOKEN", "CASCADE_TG_BOT_KEY",
                     "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(variable, raising=False)
    path = write_config(folder, '[api]\nbase_url = "https://restapi.smsbat.com"\n')
    assert cli.main(["check", "--config", str(path)]) == 0
    assert "credential" not in capsys.readouterr().out
    assert cli.main(["check", "--strict", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("no credential set") == 1
    assert f"{path}: warning: api.base_url: no credential set" in out
    sandbox = write_config(folder, '[api]\nbase_url = "sandbox"\n')
    assert cli.main(["check", "--strict", "--config", str(sandbox)]) == 0
    assert "credential" not in capsys.readouterr().out


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --config, $CASCADE_CONFIG or ./config.toml: defaults relative to the current folder."""
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={})
    assert config == Config(paths=config.paths)
    assert config.paths.campaigns == tmp_path.resolve() / "campaigns"
    assert config.api.is_sandbox and config.sending.batch_size == 500


def test_check_warns_about_a_rate_above_the_account_limit(
    folder: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`requests_per_second` above the account's documented 100/s: a warning at its line
    (issue 9, item 16); 100 is fine."""
    body = '[api]\nbase_url = "https://restapi.smsbat.com"\n[sending]\nrequests_per_second = {}\n'
    path = write_config(folder, body.format(150))
    assert cli.main(["check", "--config", str(path)]) == 0
    assert (f"{path}:6: warning: sending.requests_per_second: 150 requests/s is above the "
            "account's documented 100/s") in capsys.readouterr().out
    path = write_config(folder, body.format(100))
    assert cli.main(["check", "--config", str(path)]) == 0
    assert "requests/s" not in capsys.readouterr().out
