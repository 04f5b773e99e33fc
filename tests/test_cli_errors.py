"""Mistakes at the process edge end as one clear sentence and an exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scheduler import cli


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command line, as a subprocess."""
    return subprocess.run([sys.executable, "-m", "scheduler", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("state", ["/proc/no-such-dir/journal.sqlite3", "journal-is-a-dir"])
def test_unusable_journal_path_is_one_clear_error(tmp_path: Path, state: str) -> None:
    """A journal that cannot be created or opened: exit 1, the reason, no traceback."""
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "journal-is-a-dir").mkdir()
    (tmp_path / "config.toml").write_text(f'[paths]\nstate = "{state}"\n')
    done = run("run", "--config", "config.toml", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr
    assert "[paths]" in done.stderr


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_bad_sandbox_port_is_a_usage_error(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`sandbox --port` outside 0..65535: exit 2 with the allowed range."""
    assert cli.main(["sandbox", "--port", port]) == 2
    assert "0 to 65535" in capsys.readouterr().err


def test_config_that_is_not_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--config` naming a folder: exit 1, says it is not a file."""
    assert cli.main(["check", "--config", str(tmp_path)]) == 1
    assert "is not a file" in capsys.readouterr().err


def test_journal_from_a_newer_version_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report` on a journal written by a newer release: exit 1, "upgrade", no traceback."""
    import sqlite3

    journal = tmp_path / "journal.sqlite3"
    with sqlite3.connect(journal) as db:
        db.execute("PRAGMA user_version=99")
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nstate = "{journal}"\n')
    assert cli.main(["report", "--config", str(config)]) == 1
    assert "upgrade" in capsys.readouterr().err
