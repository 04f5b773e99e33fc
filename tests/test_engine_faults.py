"""An unexpected exception at any stage of a batch ends its campaign with a stated reason.

Faults are injected at the very edge of each stage (the journal's mark and record, the HTTP
post, the answer's parsing, the delivery log's write, the snapshot's rendering): everything
else is real (sandbox on loopback, SQLite file, delivery log). Each case must end within a
bound (no hang), leave the journal consistent, and let a second run finish the campaign with
every recipient final once and one delivery-log line each.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scheduler import batching
from scheduler.cascade import CascadeClient
from scheduler.delivery_log import DeliveryLog
from scheduler.journal.front import Front
from scheduler.outcomes import Outcomes
from scheduler.service import open_engine
from tests.engine_helpers import KEY, drive, make_setup
from tests.helpers import StartSandbox

COUNT, BATCH = 600, 50

#: stage -> (object, attribute) whose third call raises
STAGES: dict[str, tuple[Any, str]] = {
    "mark": (Front, "mark_in_flight"),
    "post": (CascadeClient, "post"),
    "parse": (Outcomes, "accept"),
    "record": (Front, "record_results"),
    "log": (DeliveryLog, "sent"),
}


def fail_on_third_call(owner: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make ``owner.name`` raise an unexpected exception on its third call (once)."""
    original = getattr(owner, name)
    calls: list[int] = []

    def pick(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("injected fault: Forbidden control character in header")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, _same_kind(original, pick))
    return calls


def _same_kind(original: Callable[..., Any], pick: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a coroutine function as a coroutine function, a plain one as a plain one."""
    if asyncio.iscoroutinefunction(original):
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            return await pick(*args, **kwargs)
        return wrapped
    return pick


@pytest.mark.parametrize("stage", sorted(STAGES))
async def test_a_fault_at_any_stage_fails_the_campaign_and_a_rerun_finishes_it(
    tmp_path: Path, start_sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch, stage: str,
) -> None:
    """First run: state "failed" within seconds, with the reason journaled and logged. Second
    run (fault gone): done, every recipient sent once in the journal and logged once."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = make_setup(tmp_path, sandbox.base_url, COUNT, batch_size=BATCH, concurrency=2,
                       requests_per_second=500)
    owner, name = STAGES[stage]
    calls = fail_on_third_call(owner, name, monkeypatch)

    state = await asyncio.wait_for(drive(setup), 30)
    assert len(calls) >= 3, "the fault was never reached"
    assert state == "failed"
    with_reason = [e for e in setup.log_lines() if e["event"] == "campaign_failed"]
    assert len(with_reason) == 1 and "injected fault" in with_reason[0]["error"]
    counts = setup.counts()
    assert counts["sent"] + counts["pending"] == COUNT  # nothing lost, nothing doubled

    monkeypatch.undo()
    assert await asyncio.wait_for(drive(setup), 30) == "done"
    counts = setup.counts()
    assert (counts["sent"], counts["pending"]) == (COUNT, 0)
    logged = Counter(line["tracking_id"] for line in setup.log_lines()
                     if line["event"] == "message")
    assert len(logged) == COUNT and set(logged.values()) == {1}


async def test_a_fault_while_rendering_keeps_the_journal_clean(
    tmp_path: Path, start_sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A snapshot that breaks half way raises to its caller and leaves no campaign behind."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = make_setup(tmp_path, sandbox.base_url, COUNT, batch_size=BATCH)
    original = batching.batch_builder

    def breaking_builder(campaign: Any) -> Callable[..., Any]:
        build = original(campaign)
        made: list[int] = []

        def build_one(rows: Any) -> Any:
            made.append(len(rows))
            if sum(made) >= 300:
                raise ValueError("injected fault while rendering")
            return build(rows)

        return build_one

    monkeypatch.setattr(batching, "batch_builder", breaking_builder)
    async with open_engine(setup.config) as engine:
        with pytest.raises(ValueError, match="injected fault"):
            await asyncio.wait_for(engine.prepare(setup.campaign), 30)
        assert await engine.journal.campaigns() == []
    monkeypatch.undo()
    assert await asyncio.wait_for(drive(setup), 30) == "done"
    assert (setup.counts()["sent"], setup.counts()["pending"]) == (COUNT, 0)
