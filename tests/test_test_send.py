"""`send FILE --test PHONE[,PHONE…]`: the rendered row to those phones only, nothing counted."""

from __future__ import annotations

from pathlib import Path

from daemon_helpers import (
    API_KEY,
    RecordingApi,
    Workspace,
    clean_env,
    json_lines,
    utc_seconds_from_now,
)

from tests.helpers import run_cli

TESTERS = "+380991111111,+380992222222"


def workspace_with_campaign(root: Path, url: str) -> tuple[Workspace, Path]:
    """A campaign whose first data row is invalid (so the first valid row is CSV line 3)."""
    workspace = Workspace(root, base_url=url)
    csv = workspace.campaigns / "audiences" / "people.csv"
    rows = ["phone,first_name", "not-a-phone,Nobody"]
    rows += [f"+38050{i:07d},Name{i}" for i in range(1, 40)]
    csv.write_text("\n".join(rows) + "\n", "utf-8")
    path = workspace.write_campaign("tried", utc_seconds_from_now(3600), audience="people",
                                    kind="promo", text="Hi {first_name}", ttl=86400)
    return workspace, path


def send(workspace: Workspace, path: Path, *args: str) -> tuple[int, str, str]:
    """`send FILE ARGS` with the test key; exit code, stdout, stderr."""
    done = run_cli(["send", str(path), "--config", str(workspace.config), *args],
                   env=clean_env(CASCADE_API_KEY=API_KEY))
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout, done.stderr


def test_the_first_valid_row_reaches_only_the_listed_phones(tmp_path: Path) -> None:
    """Two messages, rendered from CSV line 3, test tracking ids; the journal never hears of
    the campaign; the delivery log has two test_message lines."""
    with RecordingApi() as api:
        workspace, path = workspace_with_campaign(tmp_path, api.url)
        code, out, err = send(workspace, path, "--test", TESTERS)
        assert code == 0, err
        sent = [message for _, message in api.messages()]
    assert [m["toPhone"] for m in sent] == TESTERS.split(",")
    assert {m["text"] for m in sent} == {"Hi Name1"}
    assert all(m["id"].startswith("tried-test-") for m in sent)
    assert [m["id"].split("-")[2] for m in sent] == ["1", "2"]
    assert "CSV line 3" in out and "accepted" in out
    assert workspace.campaign_record("tried") is None
    lines = [e for e in json_lines(workspace.delivery_log) if e["event"] == "test_message"]
    assert [e["tracking_id"] for e in lines] == [m["id"] for m in sent]
    assert all(e["message_id"] for e in lines) and all("*" in e["phone"] for e in lines)


def test_row_picks_the_line_and_mistakes_are_one_clear_line(tmp_path: Path) -> None:
    """--row N renders CSV line N; a bad phone, a skipped row or --row alone: exit 1, a
    sentence, nothing sent."""
    with RecordingApi() as api:
        workspace, path = workspace_with_campaign(tmp_path, api.url)
        code, _, _ = send(workspace, path, "--test", "+380991111111", "--row", "6")
        assert code == 0
        assert [m["text"] for _, m in api.messages()] == ["Hi Name4"]
        for args, words in ((["--test", "0991111111"], "not an E.164 phone"),
                            (["--test", "+380991111111", "--row", "2"], "is skipped"),
                            (["--row", "6"], "--row goes with --test")):
            code, _, err = send(workspace, path, *args)
            assert code == 1 and words in err and err.count("\n") == 1, (args, err)
        assert len(api.messages()) == 1
