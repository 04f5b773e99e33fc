"""Two daemons on one PostgreSQL journal: one sends, the other takes over when it goes.

Real everything: a PostgreSQL server started by the test session (a fresh database per test),
two `run` daemons as subprocesses sharing one campaigns folder, each posting to its own sandbox
process (so the records tell who posted what, and when), real signals. The lease is shortened
to 3 s through the config (renewed every second; the daemons give up 0.6 s early), so a
takeover after a kill takes about 4 s instead of about 17.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from daemon_helpers import (
    DaemonPair,
    Workspace,
    clean_env,
    expected_ids,
    parse_ts,
    poll,
    utc_seconds_from_now,
)
from tcp_proxy import TcpProxy

from scheduler.config import load_config
from scheduler.journal import JournalReader, open_journal

# every test here runs two daemons for 10-20 s: the file starts first (conftest.py)
pytestmark = pytest.mark.slow

LEASE = 3.0
SENDING = {"batch_size": 50, "requests_per_second": 8, "concurrency": 2, "max_attempts": 3}
COUNT = 2000  # 40 batches at 8/s: about 5 s of sending


def make_pair(
    root: Path, url: str, delivery: str = "at-least-once", *, latency_ms: int = 150,
    url_a: str | None = None,
) -> DaemonPair:
    """The two daemons of these tests, with ``delivery``."""
    return DaemonPair(root, url, {**SENDING, "delivery": delivery}, lease=LEASE,
                      latency_ms=latency_ms, url_a=url_a)


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[DaemonPair]:
    """Two daemons (not started) on a fresh database."""
    made = make_pair(tmp_path, postgres_url)
    try:
        yield made
    finally:
        made.close()


def journal_state(workspace: Workspace, cid: str) -> tuple[str | None, dict[str, int]]:
    """The campaign's state and counts, read from the shared journal."""
    with JournalReader(open_journal(load_config(workspace.config).journal_location())) as journal:
        record = journal.campaign(cid)
        if record is None:
            return None, {}
        return record.state, journal.counts(cid)


def leader(workspace: Workspace) -> str | None:
    """Who holds the lease now, as the shared journal says."""
    with JournalReader(open_journal(load_config(workspace.config).journal_location())) as journal:
        return journal.leader()


def campaign(pair: DaemonPair, cid: str, count: int = COUNT) -> datetime:
    """A promo campaign due in 3 s in the shared folder; returns its send time."""
    pair.a.audience(cid, count)
    send_at = utc_seconds_from_now(3)
    pair.a.write_campaign(cid, send_at, kind="promo", ttl=600)
    return send_at


def wait_done(pair: DaemonPair, cid: str, timeout: float = 60) -> dict[str, int]:
    """Poll the journal until the campaign is done; its counts."""
    found: dict[str, Any] = {}

    def done() -> bool:
        found["state"], found["counts"] = journal_state(pair.a, cid)
        return bool(found["state"] == "done")

    poll(done, timeout, f"{cid} to be done", step=0.3)
    counts: dict[str, int] = found["counts"]
    return counts


def took_over_at(workspace: Workspace) -> datetime:
    """When the workspace's daemon logged that it became the leader."""
    events = poll(lambda: workspace.events("leadership_acquired"), 30, "a takeover")
    return parse_ts(events[-1]["timestamp"])


def bound(sending: dict[str, Any]) -> int:
    """Messages that may be in flight at a kill: the engine's window of batches."""
    return (2 * int(sending["concurrency"]) + 2) * int(sending["batch_size"])


def test_kill_9_of_the_leader_mid_campaign(pair: DaemonPair) -> None:
    """B takes over within lease + 2 s; every recipient ends final; only batches that were in
    flight at the kill are sent twice (at-least-once)."""
    a, b = pair.start()
    campaign(pair, "failover")
    poll(lambda: len(pair.records()[0]) >= 400, 30, "A to be sending")
    a.signal(signal.SIGKILL)
    took_over_at(pair.b)  # how soon (SPEC §12: 20 s) is bench/failover_bench.py's figure
    counts = wait_done(pair, "failover")
    assert (counts["sent"], counts["pending"]) == (COUNT, 0)
    accepted = pair.accepted("failover")
    assert set(accepted) == expected_ids("failover", COUNT)
    twice = sum(n - 1 for n in accepted.values())
    assert twice <= bound(SENDING)
    assert b.stop() == 0


def test_sigterm_hands_over_at_once_without_duplicates(pair: DaemonPair) -> None:
    """A graceful stop finishes in-flight batches and releases the lease (so B need not wait
    for it to run out: once A has exited, the journal names A leader no more); B leads and
    sends the rest; nobody gets the message twice. How soon B leads (SPEC §12: 3 s) is
    bench/failover_bench.py's figure."""
    a, b = pair.start()
    campaign(pair, "handover")
    poll(lambda: len(pair.records()[0]) >= 400, 30, "A to be sending")
    (led,) = pair.a.events("leadership_acquired")
    assert a.stop() == 0
    assert leader(pair.a) != led["holder"], "A left without releasing the lease"
    took_over_at(pair.b)
    counts = wait_done(pair, "handover")
    assert (counts["sent"], counts["pending"]) == (COUNT, 0)
    assert pair.accepted("handover") == Counter(expected_ids("handover", COUNT))
    assert b.stop() == 0


def test_a_frozen_leader_posts_nothing_after_it_wakes(pair: DaemonPair) -> None:
    """SIGSTOP past the lease, B takes over, SIGCONT: A posts nothing more, steps down
    (leadership_lost) and stays up as a standby; the campaign still ends complete."""
    a, b = pair.start()
    campaign(pair, "frozen")
    poll(lambda: len(pair.records()[0]) >= 400, 30, "A to be sending")
    a.signal(signal.SIGSTOP)
    took_over_at(pair.b)
    time.sleep(0.5)
    woke = datetime.now(UTC)
    a.signal(signal.SIGCONT)
    poll(lambda: pair.a.events("leadership_lost"), 30, "A to step down")
    counts = wait_done(pair, "frozen")
    assert (counts["sent"], counts["pending"]) == (COUNT, 0)
    late = [r for r in pair.records()[0] if parse_ts(r["ts"]) > woke + timedelta(seconds=0.2)]
    assert late == [], f"A posted {len(late)} messages after waking"
    assert set(pair.accepted("frozen")) == expected_ids("frozen", COUNT)
    assert a.alive
    assert a.stop() == 0 and b.stop() == 0


def test_at_most_once_takeover_sends_nothing_twice(tmp_path: Path, postgres_url: str) -> None:
    """Under at-most-once, what was in flight at the kill becomes in_doubt, never resent."""
    pair = make_pair(tmp_path, postgres_url, delivery="at-most-once")
    try:
        a, b = pair.start()
        campaign(pair, "careful")
        poll(lambda: len(pair.records()[0]) >= 400, 30, "A to be sending")
        a.signal(signal.SIGKILL)
        took_over_at(pair.b)
        counts = wait_done(pair, "careful")
        accepted = pair.accepted("careful")
        assert max(accepted.values()) == 1
        assert counts["sent"] + counts["in_doubt"] == COUNT and counts["pending"] == 0
        assert counts["in_doubt"] <= bound(SENDING)
        assert b.stop() == 0
    finally:
        pair.close()


def test_the_database_restarting_mid_campaign(
    tmp_path: Path, postgres_url: str, postgres_server: Any,
) -> None:
    """The leader stops sending while the journal is gone, never crashes, and the campaign
    completes once the database is back (whichever daemon then leads)."""
    pair = make_pair(tmp_path, postgres_url)
    try:
        a, b = pair.start()
        campaign(pair, "restart")
        poll(lambda: len(pair.records()[0]) >= 400, 30, "A to be sending")
        postgres_server.restart()
        counts = wait_done(pair, "restart", timeout=90)
        assert (counts["sent"], counts["pending"]) == (COUNT, 0)
        assert set(pair.accepted("restart")) == expected_ids("restart", COUNT)
        assert a.alive and b.alive
        for daemon in (a, b):
            assert "Traceback" not in daemon.stderr()
        assert a.stop() == 0 and b.stop() == 0
    finally:
        pair.close()


def test_the_password_appears_nowhere(tmp_path: Path, postgres_url: str) -> None:
    """A journal password given as a credential is in no output, even on a connection error."""
    import subprocess
    import sys

    workspace = Workspace(tmp_path, journal_url=postgres_url.replace(
        postgres_url.rsplit(":", 1)[1].split("/")[0], "1"))  # a closed port
    secret = "pw-Zq81-never-printed"
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", "run", "--config", str(workspace.config)],
        capture_output=True, text=True, timeout=60, check=False,
        env=clean_env(CASCADE_JOURNAL_PASSWORD=secret),
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert secret not in done.stdout + done.stderr
    log = workspace.delivery_log
    assert not log.exists() or secret not in log.read_text("utf-8")


def test_status_names_the_leader_and_the_standby(pair: DaemonPair) -> None:
    """`status` from either machine shows both daemons with their roles; exit 0."""
    import json

    from tests.helpers import run_cli

    a, b = pair.start()
    poll(lambda: len(json.loads(run_cli(["status", "--json", "--config",
                                         str(pair.b.config)]).stdout)["daemons"]) == 2,
         10, "both daemons' presence")
    done = run_cli(["status", "--json", "--config", str(pair.b.config)])
    assert done.returncode == 0
    roles = {(d["role"], d["pid"]) for d in json.loads(done.stdout)["daemons"]}
    assert roles == {("leader", a.pid), ("standby", b.pid)}
    assert a.stop() == 0 and b.stop() == 0


# --- what an operator sees after a takeover (issue 23: resends are visible) ---------------
# The sandboxes are slowed (SLOW ms per request) so that requests are surely in flight when
# the leader is frozen or cut off: their answers reach nobody who can record them, and the
# new leader posts those batches again (at-least-once) or leaves them in doubt (at-most-once).

SLOW = 500  # ms the slowed sandboxes take per request
SMALL = 1000  # recipients: 20 batches, a few seconds of sending at 4 requests/s


def batch_in_flight(workspace: Workspace, cid: str) -> bool:
    """True when the journal has a batch of ``cid`` marked in flight (posted, not answered)."""
    with JournalReader(open_journal(load_config(workspace.config).journal_location())) as journal:
        return any(batch.state == "in_flight" for batch in journal.open_batches(cid))


def outcomes(workspace: Workspace, cid: str) -> dict[str, str]:
    """Every recipient's final outcome in the shared journal, by tracking id."""
    with JournalReader(open_journal(load_config(workspace.config).journal_location())) as journal:
        return {row.tracking_id: row.outcome for row in journal.recipients(cid)}


def report_resent(workspace: Workspace, cid: str) -> set[str]:
    """The tracking ids `report --campaign CID --resent` lists (the possible duplicates)."""
    from tests.helpers import run_cli

    done = run_cli(["report", "--config", str(workspace.config), "--campaign", cid,
                    "--resent", "--format", "json"])
    assert done.returncode == 0, done.stderr
    return {row["tracking_id"] for row in orjson.loads(done.stdout)}


def every_duplicate_is_visible(pair: DaemonPair, cid: str, delivery: str) -> None:
    """After the campaign is done: at-least-once, every tracking id the API accepted more
    than once is listed by `report --resent` (counted as resent, and its delivery-log line
    says so); at-most-once, nothing was accepted twice and whatever the old leader posted
    without recording an answer is in doubt, never posted again."""
    accepted = pair.accepted(cid)
    _, counts = journal_state(pair.b, cid)
    listed = report_resent(pair.b, cid)
    if delivery == "at-least-once":
        twice = {tid for tid, times in accepted.items() if times > 1}
        print(f"{cid}: {len(twice)} accepted twice, {len(listed)} listed as resent")
        assert twice, "requests were in flight: the new leader should have resent them"
        assert twice <= listed, f"duplicates not listed: {sorted(twice - listed)[:5]}"
        flagged = {line["tracking_id"] for line in pair.b.events("message")
                   if line.get("resent") is True}
        assert counts["resent"] == len(listed) and flagged == listed
        return
    assert max(accepted.values()) == 1 and listed == set() and counts["resent"] == 0
    final = outcomes(pair.b, cid)
    doubted = {tid for tid, outcome in final.items() if outcome == "in_doubt"}
    posted_by_a = {r["trackinId"] for r in pair.records()[0]}
    unrecorded = {tid for tid in posted_by_a if final[tid] != "sent"}
    print(f"{cid}: {len(unrecorded)} accepted without a recorded answer, {len(doubted)} in doubt")
    assert doubted and unrecorded <= doubted
    assert doubted.isdisjoint(r["trackinId"] for r in pair.records()[1])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("delivery", ["at-least-once", "at-most-once"])
def test_a_frozen_leader_s_requests_in_flight_are_never_invisible_duplicates(
    tmp_path: Path, postgres_url: str, delivery: str,
) -> None:
    """SIGSTOP of the leader while requests are in flight, longer than its lease (issue 23,
    item 2): their answers come back to a frozen process; the standby takes over and posts
    those batches again (at-least-once: every duplicate is listed by `report --resent`) or
    leaves them in doubt (at-most-once: nothing reaches the API twice)."""
    pair = make_pair(tmp_path, postgres_url, delivery, latency_ms=SLOW)
    try:
        a, b = pair.start()
        campaign(pair, "frozen", SMALL)
        poll(lambda: len(pair.records()[0]) >= 200, 30, "A to be sending")
        poll(lambda: batch_in_flight(pair.b, "frozen"), 10, "a batch in flight")
        a.signal(signal.SIGSTOP)
        took_over_at(pair.b)
        a.signal(signal.SIGCONT)
        poll(lambda: pair.a.events("leadership_lost"), 30, "A to step down")
        counts = wait_done(pair, "frozen", timeout=90)
        assert counts["pending"] == 0 and counts["sent"] + counts["in_doubt"] == SMALL
        every_duplicate_is_visible(pair, "frozen", delivery)
        assert a.stop() == 0 and b.stop() == 0
    finally:
        pair.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("delivery", ["at-least-once", "at-most-once"])
def test_a_leader_cut_off_from_the_database(
    tmp_path: Path, postgres_server: Any, postgres_url: str, delivery: str,
) -> None:
    """A real partition (issue 23, item 12): A reaches PostgreSQL through a TCP proxy that
    is cut (connections held open, nothing forwarded) while A's requests are in flight, for
    longer than the lease. B takes over; A, cut off, posts nothing after B leads; once the
    proxy heals, A steps down and stays up; every possible duplicate is listed
    (at-least-once) or in doubt (at-most-once)."""
    with TcpProxy("127.0.0.1", postgres_server.port) as proxy:
        pair = make_pair(tmp_path, postgres_url, delivery, latency_ms=SLOW,
                    url_a=proxy.url(postgres_url))
        try:
            a, b = pair.start()
            campaign(pair, "cut", SMALL)
            poll(lambda: len(pair.records()[0]) >= 200, 30, "A to be sending")
            poll(lambda: batch_in_flight(pair.b, "cut"), 10, "a batch in flight")
            proxy.cut()
            cut = datetime.now(UTC)
            took = took_over_at(pair.b)
            print(f"takeover after the cut: {(took - cut).total_seconds():.2f} s")
            proxy.heal()
            poll(lambda: pair.a.events("leadership_lost"), 30, "A to step down")
            counts = wait_done(pair, "cut", timeout=90)
            assert counts["pending"] == 0 and counts["sent"] + counts["in_doubt"] == SMALL
            # A stopped before its lease could run out, and B took over only after it had:
            # what A posted (its last requests, marked before the cut) landed before that
            late = [r for r in pair.records()[0] if parse_ts(r["ts"]) > took]
            assert late == [], f"A posted {len(late)} messages after B took over"
            every_duplicate_is_visible(pair, "cut", delivery)
            assert a.alive and "Traceback" not in a.stderr()
            assert a.stop() == 0 and b.stop() == 0
        finally:
            pair.close()
