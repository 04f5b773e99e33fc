"""Campaign files that are symbolic links which loop or point nowhere (issue 8, item 6): an error
for a path named on the command line, a warning naming the file in a folder, never a traceback
and never a file that silently vanishes (check, plan, send and the daemon's loading alike)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scheduler.config import load_config
from scheduler.loader import broken_link, campaign_files, load_campaigns
from tests.helpers import run_cli, write_audience, write_campaign, write_config

LOOPS = "cannot read: it is a symbolic link that loops"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A config, one valid campaign, and three broken links beside it: a link to itself, two
    links to each other, and a link to a file that does not exist."""
    write_config(tmp_path)
    campaigns = tmp_path / "campaigns"
    write_audience(campaigns / "people.csv", 3)
    write_campaign(campaigns, "good", "people.csv", send_at=datetime.now(UTC) + timedelta(days=1))
    (campaigns / "loop.toml").symlink_to("loop.toml")
    (campaigns / "ping.toml").symlink_to("pong.toml")
    (campaigns / "pong.toml").symlink_to("ping.toml")
    (campaigns / "dangling.toml").symlink_to("missing.toml")
    return tmp_path


def points_nowhere(workspace: Path) -> str:
    """The problem of ``dangling.toml``, which points to a missing file."""
    missing = workspace.resolve() / "campaigns" / "missing.toml"
    return f"cannot read: it is a symbolic link that points to {missing}, which does not exist"


def cli(workspace: Path, *args: str) -> tuple[int, str]:
    """``python -m scheduler ARGS --config config.toml`` in the workspace: exit code, output."""
    result = run_cli([*args, "--config", "config.toml"], cwd=workspace)
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    return result.returncode, output


def test_the_loader_lists_and_reports_broken_links(workspace: Path) -> None:
    """What the daemon, check and plan load: the broken links are listed with the files, each
    fails with its problem in words, and the valid campaign still loads."""
    config = load_config(workspace / "config.toml", env={})
    folder = config.paths.campaigns
    files = campaign_files(folder)
    assert [f.name for f in files] == [
        "dangling.toml", "good.toml", "loop.toml", "ping.toml", "pong.toml"]
    checks = {c.file.name: c for c in load_campaigns(files, config, datetime.now(UTC))}
    good = checks.pop("good.toml")
    assert good.ok and good.campaign is not None and good.campaign.id == "good"
    problems = {name: [p.render() for p in check.problems] for name, check in checks.items()}
    assert problems == {
        "dangling.toml": [f"{folder}/dangling.toml: {points_nowhere(workspace)}"],
        "loop.toml": [f"{folder}/loop.toml: {LOOPS}"],
        "ping.toml": [f"{folder}/ping.toml: {LOOPS}"],
        "pong.toml": [f"{folder}/pong.toml: {LOOPS}"],
    }
    assert all(check.campaign is None and not check.ok for check in checks.values())


def test_broken_link_says_nothing_about_files_folders_or_missing_paths(tmp_path: Path) -> None:
    """Only a link that cannot be followed is a broken link."""
    (tmp_path / "file.toml").write_text("")
    (tmp_path / "link.toml").symlink_to("file.toml")
    for path in ("file.toml", "link.toml", "missing.toml", "."):
        assert broken_link(tmp_path / path) is None


@pytest.mark.parametrize("name", ["loop.toml", "ping.toml", "dangling.toml"])
def test_check_of_a_broken_link_is_an_error(workspace: Path, name: str) -> None:
    """``check campaigns/loop.toml`` (a traceback before): one located error line, exit 1."""
    code, output = cli(workspace, "check", f"campaigns/{name}")
    problem = points_nowhere(workspace) if name == "dangling.toml" else LOOPS
    assert code == 1
    assert f"    campaigns/{name}: {problem}\n" in output
    assert "1 campaign file: 0 valid, 1 invalid; 1 error, 0 warnings" in output


def test_send_of_a_broken_link_is_an_error(workspace: Path) -> None:
    """``send`` names the file and the problem on one line and sends nothing."""
    code, output = cli(workspace, "send", "campaigns/loop.toml", "--now")
    assert (code, output) == (1, f"campaigns/loop.toml: {LOOPS}\n")


@pytest.mark.parametrize("args", [["check"], ["check", "campaigns"]])
def test_check_of_the_folder_warns_about_each_broken_link(
    workspace: Path, args: list[str]
) -> None:
    """Folder-wide (silent before): a warning naming each broken link; the valid file is still
    checked and passes, so the exit code is 0."""
    code, output = cli(workspace, *args)
    assert code == 0, output
    lines = output.splitlines()
    assert lines[:4] == [
        f"campaigns/dangling.toml: warning: {points_nowhere(workspace)}",
        f"campaigns/loop.toml: warning: {LOOPS}",
        f"campaigns/ping.toml: warning: {LOOPS}",
        f"campaigns/pong.toml: warning: {LOOPS}",
    ]
    assert lines[4].startswith("OK       campaigns/good.toml  good  transaction")
    assert lines[5] == "1 campaign file: 1 valid, 0 invalid; 0 errors, 4 warnings"


def test_check_of_one_file_beside_a_broken_link(workspace: Path) -> None:
    """Checking one file compares its id with the folder's other files: the broken links
    there are passed over without a traceback."""
    code, output = cli(workspace, "check", "campaigns/good.toml")
    assert code == 0, output
    assert "1 campaign file: 1 valid, 0 invalid; 0 errors, 0 warnings" in output


def test_plan_names_each_broken_link_and_its_problem(workspace: Path) -> None:
    """``plan`` lists a broken link as an invalid row that says what is wrong (it vanished
    before), next to the valid campaign's row."""
    done = run_cli(["plan", "--json", "--config", "config.toml"], cwd=workspace)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    rows = {row["campaign"]: row for row in json.loads(done.stdout)}  # stderr: no journal yet
    assert rows["good"]["state"] == "scheduled" and rows["good"]["valid"] == 3
    # an unreadable file's row is named by the file (it has no id) and says why in "note"
    assert {name: (rows[name]["state"], rows[name]["eta"], rows[name]["note"]) for name in
            ("loop.toml", "ping.toml", "pong.toml", "dangling.toml")} == {
        "loop.toml": ("invalid", None, f"loop.toml: {LOOPS}"),
        "ping.toml": ("invalid", None, f"ping.toml: {LOOPS}"),
        "pong.toml": ("invalid", None, f"pong.toml: {LOOPS}"),
        "dangling.toml": ("invalid", None, f"dangling.toml: {points_nowhere(workspace)}"),
    }


def test_a_looping_campaigns_folder_in_the_config_is_one_clear_error(tmp_path: Path) -> None:
    """`[paths] campaigns` naming a link that loops: exit 1, the file and field, no traceback."""
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "config.toml").write_text('[paths]\ncampaigns = "loop"\n', "utf-8")
    done = run_cli(["check", "--config", str(tmp_path / "config.toml")])
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"{tmp_path / 'config.toml'}: paths: ")
    assert "fix the symbolic link" in done.stderr
