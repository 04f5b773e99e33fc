"""The `check` and `new` commands end to end: exit codes, output, and the shipped examples."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import time_machine

from scheduler import __version__, cli
from scheduler.campaign import DEFAULT_TTL, MESSAGE_TYPES
from scheduler.config import load_config
from scheduler.loader import load_campaign

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No config or credentials leak in from the machine running the tests."""
    for variable in ("CASCADE_CONFIG", "CASCADE_API_KEY", "CASCADE_VIBER_TOKEN",
                     "CASCADE_TG_BOT_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def workspace(tmp_path: Path, clean_env: None) -> Path:
    """A config file and an empty campaigns folder with one audience CSV."""
    audiences = tmp_path / "campaigns" / "audiences"
    audiences.mkdir(parents=True)
    (audiences / "people.csv").write_text("phone,name\n+380501234567,Olena\n", "utf-8")
    (tmp_path / "config.toml").write_text('[paths]\ncampaigns = "campaigns"\n', "utf-8")
    return tmp_path


def test_shipped_examples_pass(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    """The README's command, `check campaigns/` from the repo, exits 0 and shows skip reasons."""
    monkeypatch.chdir(REPO)
    assert cli.main(["check", "campaigns/"]) == 0
    out = capsys.readouterr().out
    assert out.count("OK  ") == 4
    for kind in MESSAGE_TYPES:
        assert f"  {kind}  " in out
    assert "invalid_phone 1: line " in out and "duplicate 1: line " in out
    assert "0 errors" in out


def test_shipped_examples_with_example_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    """`check --config config.example.toml` uses its campaigns folder and passes."""
    monkeypatch.chdir(REPO / "campaigns")
    assert cli.main(["--config", str(REPO / "config.example.toml"), "check"]) == 0
    assert "4 campaign files: 4 valid, 0 invalid" in capsys.readouterr().out


def test_check_without_a_config_says_it_uses_the_defaults(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No --config, no $CASCADE_CONFIG, no ./config.toml: a warning that the built-in
    defaults (no policy, no suppression) are checked, not the daemon's config; with the
    config there is none (issue 24, item 13)."""
    daemons = (workspace / "config.toml").rename(workspace / "daemon.toml")
    monkeypatch.chdir(workspace)
    (workspace / "campaigns" / "c.toml").write_text(
        'id = "c"\nfrom_name = "Shop"\ntype = "promo"\nsend_at = 2026-12-01T09:00:00Z\n'
        'text = "Hi {name}"\n\n[audience]\ncsv = "audiences/people.csv"\n', "utf-8")
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("warning: no config file (no --config, $CASCADE_CONFIG or "
                          "./config.toml): checking with the built-in defaults, so with no "
                          "[policy] window or caps and no suppression list")
    assert "pass its config with --config FILE" in out and "1 warning" in out
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["check", "--config", str(daemons)]) == 0
    out = capsys.readouterr().out
    assert "no config file" not in out and "0 warnings" in out


def test_check_with_a_journal_it_may_not_look_at_still_checks(
    workspace: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A marketer checking with the service's config: the journal is the service's, and even
    looking at it fails (EACCES under systemd; here a name too long, which root's tests can
    make). `check` still checks every file: the caps say "cannot tell", a campaign due keeps
    its warning, and no error stops it (issue 24, item 13)."""
    config = workspace / "config.toml"
    config.write_text(f'[paths]\ncampaigns = "campaigns"\nstate = "{"x" * 300}/j.sqlite3"\n\n'
                      '[[policy.caps]]\ntypes = ["promo"]\nmax = 1\ndays = 7\n', "utf-8")
    (workspace / "campaigns" / "c.toml").write_text(
        'id = "c"\nfrom_name = "Shop"\ntype = "promo"\nsend_at = 2026-11-26T11:00:00Z\n'
        'text = "Hi {name}"\n\n[audience]\ncsv = "audiences/people.csv"\n', "utf-8")
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "frequency caps: cannot tell (" in out and "File name too long" in out
    assert "send time has passed: the daemon sends at once" in out


def test_file_named_twice_is_checked_once(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    """A file given both directly and through its folder is not its own duplicate."""
    monkeypatch.chdir(REPO)
    assert cli.main(["check", "campaigns/", "campaigns/winter-sale.toml"]) == 0
    assert "4 campaign files: 4 valid" in capsys.readouterr().out


def test_check_invalid_file_exits_1(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid campaign file makes `check` exit 1 and print its located problems."""
    bad = workspace / "campaigns" / "bad.toml"
    bad.write_text('id = "x"\ntype = "promo"\n', "utf-8")
    code = cli.main(["check", str(bad), "--config", str(workspace / "config.toml")])
    out = capsys.readouterr().out
    assert code == 1
    assert f"INVALID  {bad}" in out and f"{bad}: from_name: required key is missing" in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["check", "--bogus"],
        ["new", "x"],
        ["new", "bad id", "--type", "promo", "--audience", "a.csv"],
        ["new", "x", "--type", "sms", "--audience", "a.csv"],
        ["new", "x", "--type", "promo", "--audience", "a.csv", "--send-at", "2026-12-01T09:00"],
    ],
    ids=["no-command", "unknown-command", "unknown-option", "new-missing-options", "new-bad-id",
         "new-bad-type", "new-send-at-not-utc"],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Argument mistakes exit 2 with argparse's usage message, never a traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version and exits 0."""
    assert cli.main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_config_before_or_after_command(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config works both before and after the subcommand."""
    config = str(workspace / "config.toml")
    assert cli.main(["--config", config, "check"]) == 0
    assert cli.main(["check", "--config", config]) == 0
    assert cli.main(["--config", "/nonexistent.toml", "check", "--config", config]) == 0
    assert "config file not found" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", MESSAGE_TYPES)
def test_new_writes_a_file_that_passes_check(
    workspace: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """`new` writes ID.toml in the campaigns folder, valid for every type, with the type's TTL."""
    csv = workspace / "campaigns" / "audiences" / "people.csv"
    config = str(workspace / "config.toml")
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["new", "fresh-1", "--type", kind, "--audience", str(csv),
                         "--config", config]) == 0
        target = workspace / "campaigns" / "fresh-1.toml"
        assert cli.main(["check", str(target), "--config", config]) == 0
    assert "0 errors, 0 warnings" in capsys.readouterr().out
    check = load_campaign(target, load_config(Path(config), env={}), NOW)
    assert check.campaign is not None
    assert check.campaign.type == kind
    assert check.campaign.ttl == DEFAULT_TTL[kind]  # type: ignore[index]
    assert check.campaign.send_at == datetime(2026, 11, 27, 9, tzinfo=UTC)
    assert 'csv = "audiences/people.csv"' in target.read_text("utf-8")
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []


def test_new_with_send_at_and_dir(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--send-at and --dir are honoured; a draft written to campaigns/drafts still passes
    `check` once moved up into the campaigns folder to go live (issue 24, item 17)."""
    monkeypatch.chdir(workspace)
    drafts = workspace / "campaigns" / "drafts"
    drafts.mkdir()
    with time_machine.travel(NOW, tick=False):
        code = cli.main(["new", "x", "--type", "promo", "--audience",
                         "campaigns/audiences/people.csv", "--send-at", "2026-12-03T10:30:00Z",
                         "--dir", str(drafts), "--from-name", "Shop"])
        assert code == 0, capsys.readouterr().err
        written = (drafts / "x.toml").read_text("utf-8")
        assert "send_at = 2026-12-03T10:30:00Z" in written and 'from_name = "Shop"' in written
        assert cli.main(["check", str(drafts / "x.toml")]) == 0
        moved = (drafts / "x.toml").rename(workspace / "campaigns" / "x.toml")
        capsys.readouterr()
        assert cli.main(["check", str(moved)]) == 0, capsys.readouterr().out


def test_new_writes_a_paused_campaign_that_says_how_to_go_live(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A running daemon watches the folder `new` writes to: the file starts paused, with a
    comment above ``paused = true`` saying how to make it live (issue 24, item 2)."""
    csv = workspace / "campaigns" / "audiences" / "people.csv"
    config = str(workspace / "config.toml")
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["new", "p", "--type", "promo", "--audience", str(csv),
                         "--config", config]) == 0
    assert "set paused = false" in capsys.readouterr().out
    target = workspace / "campaigns" / "p.toml"
    text = target.read_text("utf-8")
    comment, _, after = text.partition("paused = true\n")
    assert after and "set paused = false to make it live" in comment.splitlines()[-1]
    assert "cascade-scheduler check" in comment
    check = load_campaign(target, load_config(Path(config), env={}), NOW)
    assert check.campaign is not None and check.campaign.paused


def test_new_refuses_to_overwrite(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An existing file is left untouched: exit 1 and a clear message."""
    target = workspace / "campaigns" / "mine.toml"
    target.write_text("# keep me\n", "utf-8")
    code = cli.main(["new", "mine", "--type", "promo", "--audience",
                     str(workspace / "campaigns" / "audiences" / "people.csv"),
                     "--config", str(workspace / "config.toml")])
    assert code == 1
    assert f"{target}: already exists" in capsys.readouterr().err
    assert target.read_text("utf-8") == "# keep me\n"


def test_new_refuses_an_invalid_file(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An audience outside the allowed folders: nothing is written, the problem is explained."""
    outside = tmp_path / "outside.csv"
    outside.write_text("phone\n+380501234567\n", "utf-8")
    code = cli.main(["new", "mine", "--type", "promo", "--audience", str(outside),
                     "--config", str(workspace / "config.toml")])
    assert code == 1
    err = capsys.readouterr().err
    assert "--audience: " in err and "audience CSV must be inside" in err
    assert "mine.toml was not written" in err and "mine.toml:" not in err
    assert sorted(p.name for p in (workspace / "campaigns").iterdir()) == ["audiences"]


def test_keyboard_interrupt_exits_130(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C during a command is exit 130 with one word, not a traceback."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "check_paths", interrupted)
    assert cli.main(["check", "--config", str(workspace / "config.toml")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_python_m_scheduler_has_no_traceback(workspace: Path) -> None:
    """A real `python -m scheduler check` on broken files: exit 1, located errors, no traceback."""
    campaigns = workspace / "campaigns"
    (campaigns / "syntax.toml").write_text('id = "a\n', "utf-8")
    (campaigns / "binary.toml").write_bytes(b"\x00\xff\xfe garbage")
    (campaigns / "types.toml").write_text("id = 1\ntype = []\nsend_at = {a = 1}\n", "utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "scheduler", "check", "--config", str(workspace / "config.toml")],
        capture_output=True, text=True, timeout=60, cwd=workspace, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "syntax.toml:1: TOML syntax error" in result.stdout
    assert "3 campaign files: 0 valid, 3 invalid" in result.stdout


# --- issue 9: campaigns that would send nothing, `new` as strict as `check` (items 2, 4, 17) --


def _check(workspace: Path, capsys: pytest.CaptureFixture[str], csv: str) -> tuple[int, str]:
    """`check` of one promo campaign whose audience CSV is ``csv``."""
    (workspace / "campaigns" / "audiences" / "list.csv").write_text(csv, "utf-8")
    (workspace / "campaigns" / "c.toml").write_text(
        'id = "c"\nfrom_name = "Shop"\ntype = "promo"\nsend_at = 2026-12-01T09:00:00Z\n'
        'text = "Hi {name}"\n\n[audience]\ncsv = "audiences/list.csv"\n', "utf-8")
    with time_machine.travel(NOW, tick=False):
        code = cli.main(["check", str(workspace / "campaigns" / "c.toml"),
                         "--config", str(workspace / "config.toml")])
    return code, capsys.readouterr().out


def test_a_campaign_that_would_send_nothing_is_invalid(
    workspace: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """5,000 phones exported without the + (an Excel export), or a header-only CSV: INVALID,
    exit 1, saying why and how to fix the first row."""
    rows = "".join(f"38050{n:07d},N{n}\n" for n in range(5000))
    code, out = _check(workspace, capsys, "phone,name\n" + rows)
    assert code == 1 and "INVALID" in out, out
    assert ("c.toml:8: audience.csv: no valid recipient: all 5,000 rows are skipped "
            "(invalid_phone 5,000), so the campaign would send nothing; line 2: "
            '"380500000000" is missing the + in front: write +380500000000') in out
    code, out = _check(workspace, capsys, "phone,name\n")
    assert code == 1 and "INVALID" in out
    assert "audience.csv: has no recipients: the CSV has its header line but no rows" in out


def test_many_rows_that_cannot_be_sent_is_a_warning(
    workspace: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Over 10% of the rows broken (here 2 of 10): OK with a warning naming the share and the
    first bad row; duplicates do not count (they are expected)."""
    good = "".join(f"+38050{n:07d},N{n}\n" for n in range(8))
    code, out = _check(workspace, capsys, "phone,name\n" + good + "3.80501E+11,X\n0501234567,Y\n")
    assert code == 0 and "OK" in out, out
    assert ("warning: audience.csv: 2 of 10 rows (20%) cannot be sent (invalid_phone 2): is the "
            "CSV exported right? line 10: \"3.80501E+11\" was turned into a number by a "
            "spreadsheet") in out
    code, out = _check(workspace, capsys, "phone,name\n" + good + good[:40])
    assert code == 0 and "cannot be sent" not in out, out


def test_empty_personalisation_is_a_warning_with_the_count(
    workspace: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`{name}` empty in some rows: a warning on the text's line with the count and lines."""
    code, out = _check(workspace, capsys,
                       "phone,name\n+380501234561,Ann\n+380501234562,\n+380501234563,\n")
    assert code == 0, out
    assert ("c.toml:5: warning: text: {name} is empty in 2 rows (lines 3, 4): those messages "
            "go out with nothing in its place") in out


def test_new_checks_the_whole_audience_like_check(
    workspace: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A Windows-1251 CSV (an ASCII header, Cyrillic names below it): `new` writes nothing and
    names the CSV's bad line, where `check` would have called the file INVALID afterwards."""
    csv = workspace / "campaigns" / "audiences" / "cp1251.csv"
    csv.write_bytes("phone,name\n+380501234567,Олена\n".encode("cp1251"))
    code = cli.main(["new", "w", "--type", "promo", "--audience", str(csv),
                     "--config", str(workspace / "config.toml")])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{csv}:2: not UTF-8 text" in err and "w.toml was not written" in err
    assert not (workspace / "campaigns" / "w.toml").exists()


def test_new_takes_the_phone_and_id_columns(
    workspace: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A CSV whose phones are in `tel`: without --phone-column the error names the option and
    the columns; with it (and --id-column) the file is written and passes `check`."""
    csv = workspace / "campaigns" / "audiences" / "tel.csv"
    csv.write_text("tel,customer,name\n+380501234567,C1,Ann\n", "utf-8")
    config = str(workspace / "config.toml")
    args = ["new", "t", "--type", "promo", "--audience", str(csv), "--config", config]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert '--phone-column: "phone" is not a column of audiences/tel.csv' in err
    assert 'its columns are "tel", "customer", "name"' in err and "t.toml:" not in err
    with time_machine.travel(NOW, tick=False):
        assert cli.main([*args, "--phone-column", "tel", "--id-column", "customer"]) == 0
        capsys.readouterr()
        target = workspace / "campaigns" / "t.toml"
        assert cli.main(["check", str(target), "--config", config]) == 0
    written = target.read_text("utf-8")
    assert 'phone_column = "tel"' in written and 'id_column = "customer"' in written


def test_new_warnings_name_the_file_it_wrote(
    workspace: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Warnings of a written file point at it, never at the hidden draft it was checked as."""
    csv = workspace / "campaigns" / "audiences" / "people.csv"
    code = cli.main(["new", "long", "--type", "promo", "--audience", str(csv), "--from-name",
                     "AVeryLongBrandName", "--config", str(workspace / "config.toml")])
    assert code == 0
    err = capsys.readouterr().err
    target = workspace / "campaigns" / "long.toml"
    assert f"{target}:2: warning: from_name:" in err and ".new" not in err


def test_sandbox_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    """`sandbox --help`: each option says what happens when it is left out (item 17)."""
    assert cli.main(["sandbox", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--host", "--port", "--api-key", "--fail-rate", "--rate-limit", "--latency-ms",
                   "--reject-phone", "--drop-rate", "--omit-rate", "--record", "--seed"):
        described = out.split(f" {option} ", 1)[1].split(" --", 1)[0]
        assert "default" in described, (option, described)
    assert "(default: 8080; 0: any free port)" in out and "(default: 127.0.0.1)" in out
