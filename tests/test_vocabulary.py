"""The vocabulary's rules: which state changes are legal, and how the state sets relate."""

from __future__ import annotations

from typing import get_args

import pytest

from scheduler.vocabulary import (
    CAMPAIGN_STATES,
    ENDED,
    FINISHED,
    STARTED,
    TRANSITIONS,
    CampaignState,
    SkipReason,
    may_move,
)


def test_every_state_has_its_moves_and_may_stay() -> None:
    """The table covers every state, names only states, and staying put is always allowed."""
    assert set(TRANSITIONS) == set(CAMPAIGN_STATES)
    for state, targets in TRANSITIONS.items():
        assert targets <= set(CAMPAIGN_STATES)
        assert may_move(state, state)


@pytest.mark.parametrize("finished", sorted(FINISHED))
def test_a_finished_campaign_never_moves(finished: CampaignState) -> None:
    """done and expired are final: no target but themselves."""
    assert [t for t in CAMPAIGN_STATES if may_move(finished, t)] == [finished]


def test_only_a_sending_campaign_finishes_or_backs_off() -> None:
    """done, expired and backing_off are reached from running (or backing_off) only."""
    for target in ("done", "expired", "backing_off"):
        sources = {s for s in CAMPAIGN_STATES if s != target and may_move(s, target)}
        assert sources <= {"running", "backing_off"}, (target, sources)


def test_scheduled_is_reached_only_by_a_fresh_snapshot_of_an_unstarted_campaign() -> None:
    """Nothing that has sent goes back to scheduled (its snapshot is frozen)."""
    sources = {s for s in CAMPAIGN_STATES if s != "scheduled" and may_move(s, "scheduled")}
    assert sources == {"paused", "invalid", "cancelled"}
    assert not sources & STARTED


def test_state_sets_agree() -> None:
    """Finished states have started and have ended; paused is not "started" by itself."""
    assert FINISHED <= STARTED and FINISHED <= ENDED
    assert "paused" not in STARTED and "cancelled" in ENDED


def test_skip_reasons_are_the_documented_ones() -> None:
    """The reasons SPEC §5 names, SPEC §11.4's two, SPEC §13.1's evergreen one, SPEC §13.2's
    trigger one, no other."""
    assert set(get_args(SkipReason)) == {
        "invalid_phone", "duplicate", "suppressed", "invalid_id", "text_too_long",
        "invalid_timezone", "frequency_cap", "already_messaged", "invalid_date"}
