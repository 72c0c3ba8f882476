"""The peer lifecycle as data: every transition, the exit rule, and the outcome of a drop."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshroom.core import lifecycle
from meshroom.core.lifecycle import (
    MEMBER_STATES,
    TRANSITIONS,
    Lifecycle,
    LifecycleError,
    Outcome,
    PeerState,
    Step,
)

DOCS = Path(__file__).parent.parent / "docs" / "protocol.md"
REMOVALS = [
    lifecycle.LEFT,
    lifecycle.RATE_LIMITED,
    lifecycle.SLOW_CONSUMER,
    lifecycle.INTERNAL,
    lifecycle.REPLACED,
    lifecycle.kicked("host"),
    lifecycle.banned(None),
    lifecycle.meeting_ended("host"),
    lifecycle.SHUTDOWN,
]
DROPS = [lifecycle.DISCONNECTED, lifecycle.TIMEOUT]


def _in_state(state: PeerState) -> Lifecycle:
    """A lifecycle driven (legally) into ``state``."""
    life = Lifecycle()
    path = {
        PeerState.JOINING: [],
        PeerState.LIVE: [Step.ATTACH],
        PeerState.DETACHED: [Step.ATTACH, Step.DETACH],
        PeerState.RESUMING: [Step.ATTACH, Step.RESUME],
        PeerState.CLOSING: [Step.ATTACH, Step.REMOVE],
        PeerState.GONE: [Step.ATTACH, Step.REMOVE, Step.FINISH],
    }[state]
    for step in path:
        _apply(life, step)
    assert life.state is state
    return life


def _apply(life: Lifecycle, step: Step) -> None:
    if step is Step.ATTACH:
        life.attach()
    elif step is Step.DETACH:
        life.note(lifecycle.DISCONNECTED)
        life.detach()
    elif step is Step.RESUME:
        life.resume()
    elif step is Step.RESUMED:
        life.resumed()
    elif step is Step.REMOVE:
        if not life.remove(lifecycle.kicked("host")):
            raise LifecycleError("not a member")
    else:
        life.finish()


@pytest.mark.parametrize(("state", "step"), list(itertools.product(PeerState, Step)))
def test_every_step_from_every_state_is_in_the_table_or_refused(state, step):
    life = _in_state(state)
    expected = TRANSITIONS[state].get(step)
    if expected is None:
        with pytest.raises(LifecycleError):
            _apply(life, step)
        assert life.state is state  # a refused step changes nothing
    else:
        _apply(life, step)
        assert life.state is expected


def test_gone_is_final_and_every_state_can_reach_it():
    assert TRANSITIONS[PeerState.GONE] == {}
    for state in PeerState:
        reachable, frontier = {state}, [state]
        while frontier:
            for target in TRANSITIONS[frontier.pop()].values():
                if target not in reachable:
                    reachable.add(target)
                    frontier.append(target)
        assert PeerState.GONE in reachable, state


@pytest.mark.parametrize("removal", REMOVALS, ids=lambda e: e.reason.value)
@pytest.mark.parametrize("later", REMOVALS + DROPS, ids=lambda e: e.reason.value)
def test_a_removal_is_never_replaced(removal, later):
    life = _in_state(PeerState.LIVE)
    life.note(removal)
    assert life.note(later) is removal


@pytest.mark.parametrize("drop", DROPS, ids=lambda e: e.reason.value)
@pytest.mark.parametrize("later", REMOVALS + DROPS, ids=lambda e: e.reason.value)
def test_a_drop_gives_way_to_whatever_comes_after_it(drop, later):
    life = _in_state(PeerState.LIVE)
    life.note(drop)
    assert life.note(later) is later


def test_a_peer_with_a_removal_decided_cannot_resume():
    life = _in_state(PeerState.LIVE)
    life.note(lifecycle.LEFT)
    assert not life.may_resume()
    with pytest.raises(LifecycleError):
        life.resume()


def test_resuming_forgives_the_drop():
    life = _in_state(PeerState.DETACHED)
    assert life.exit is lifecycle.DISCONNECTED and life.may_resume()
    life.resume()
    life.resumed()
    assert (life.state, life.exit) == (PeerState.LIVE, None)


@pytest.mark.parametrize(
    ("state", "exit", "resume_allowed", "outcome"),
    [
        (PeerState.LIVE, lifecycle.DISCONNECTED, True, Outcome.DETACH),
        (PeerState.LIVE, lifecycle.TIMEOUT, True, Outcome.DETACH),
        (PeerState.LIVE, lifecycle.DISCONNECTED, False, Outcome.END),
        (PeerState.LIVE, lifecycle.LEFT, True, Outcome.END),
        (PeerState.LIVE, None, True, Outcome.END),
        (PeerState.RESUMING, None, True, Outcome.TAKEOVER),
        (PeerState.DETACHED, lifecycle.DISCONNECTED, True, Outcome.END),  # window ran out
        (PeerState.CLOSING, None, True, Outcome.END),
    ],
)
def test_what_the_end_of_a_connection_means(state, exit, resume_allowed, outcome):
    life = _in_state(state)
    if exit is not None:
        life.note(exit)
    assert life.connection_ended(resume_allowed=resume_allowed) is outcome


@given(st.lists(st.sampled_from(list(Step)), max_size=30))
def test_random_walks_keep_the_invariants(steps):
    life = Lifecycle()
    final_exit = None
    for step in steps:
        before = life.state
        try:
            _apply(life, step)
        except LifecycleError:
            assert life.state is before
            continue
        assert life.state is TRANSITIONS[before][step]
        assert life.is_member == (life.state in MEMBER_STATES)
        if life.removal_decided:
            final_exit = final_exit or life.exit
            assert life.exit is final_exit  # a removal, once decided, is never replaced
        if life.state is PeerState.GONE:
            assert life.exit is not None


def test_the_protocol_doc_shows_the_transition_table():
    """docs/protocol.md §9 carries the table generated from the code, verbatim."""
    text = DOCS.read_text()
    match = re.search(
        r"<!-- lifecycle-table:start -->\n(.*?)<!-- lifecycle-table:end -->", text, re.S
    )
    assert match, "docs/protocol.md lost its lifecycle table markers"
    assert match.group(1).strip() == lifecycle.transition_table().strip()
