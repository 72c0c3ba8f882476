"""The permission matrix, spelled out in full: every actor x action x target."""

from __future__ import annotations

import itertools

import pytest

from meshroom.roles import Action, Role, is_moderator, may

H, C, P = Role.HOST, Role.COHOST, Role.PARTICIPANT

# (actor, action, target) -> allowed. Every combination appears exactly once.
TARGETED: dict[tuple[Role, Action, Role], bool] = {
    # kick
    (H, Action.KICK, H): False,
    (H, Action.KICK, C): True,
    (H, Action.KICK, P): True,
    (C, Action.KICK, H): False,
    (C, Action.KICK, C): False,
    (C, Action.KICK, P): True,
    (P, Action.KICK, H): False,
    (P, Action.KICK, C): False,
    (P, Action.KICK, P): False,
    # ban
    (H, Action.BAN, H): False,
    (H, Action.BAN, C): True,
    (H, Action.BAN, P): True,
    (C, Action.BAN, H): False,
    (C, Action.BAN, C): False,
    (C, Action.BAN, P): True,
    (P, Action.BAN, H): False,
    (P, Action.BAN, C): False,
    (P, Action.BAN, P): False,
    # promote (participant -> cohost): host only
    (H, Action.PROMOTE, H): False,
    (H, Action.PROMOTE, C): False,
    (H, Action.PROMOTE, P): True,
    (C, Action.PROMOTE, H): False,
    (C, Action.PROMOTE, C): False,
    (C, Action.PROMOTE, P): False,
    (P, Action.PROMOTE, H): False,
    (P, Action.PROMOTE, C): False,
    (P, Action.PROMOTE, P): False,
    # demote (cohost -> participant): host only
    (H, Action.DEMOTE, H): False,
    (H, Action.DEMOTE, C): True,
    (H, Action.DEMOTE, P): False,
    (C, Action.DEMOTE, H): False,
    (C, Action.DEMOTE, C): False,
    (C, Action.DEMOTE, P): False,
    (P, Action.DEMOTE, H): False,
    (P, Action.DEMOTE, C): False,
    (P, Action.DEMOTE, P): False,
}

# Actions without a live target: (actor, action) -> allowed.
UNTARGETED: dict[tuple[Role, Action], bool] = {
    (H, Action.UNBAN): True,
    (C, Action.UNBAN): True,
    (P, Action.UNBAN): False,
    (H, Action.END): True,
    (C, Action.END): False,
    (P, Action.END): False,
}

TARGETED_ACTIONS = (Action.KICK, Action.BAN, Action.PROMOTE, Action.DEMOTE)
UNTARGETED_ACTIONS = (Action.UNBAN, Action.END)


def test_the_tables_cover_every_combination():
    assert set(TARGETED_ACTIONS) | set(UNTARGETED_ACTIONS) == set(Action)
    assert set(TARGETED) == set(itertools.product(Role, TARGETED_ACTIONS, Role))
    assert set(UNTARGETED) == set(itertools.product(Role, UNTARGETED_ACTIONS))


@pytest.mark.parametrize(("actor", "action", "target"), list(TARGETED))
def test_targeted_action(actor, action, target):
    assert may(actor, action, target) is TARGETED[actor, action, target]


@pytest.mark.parametrize(("actor", "action"), list(itertools.product(Role, TARGETED_ACTIONS)))
def test_targeted_action_without_a_target_asks_whether_any_target_is_allowed(actor, action):
    # The room checks this first, so a participant gets FORBIDDEN even for an absent target.
    anyone = any(TARGETED[actor, action, target] for target in Role)
    assert may(actor, action) is anyone


@pytest.mark.parametrize(("actor", "action"), list(UNTARGETED))
def test_untargeted_action(actor, action):
    assert may(actor, action) is UNTARGETED[actor, action]
    # A target makes no difference to an untargeted action.
    for target in Role:
        assert may(actor, action, target) is UNTARGETED[actor, action]


def test_nobody_may_act_on_a_host():
    for actor, action in itertools.product(Role, TARGETED_ACTIONS):
        assert not may(actor, action, H)


def test_a_participant_may_do_nothing():
    assert not any(may(P, action, target) for action in Action for target in Role)
    assert not any(may(P, action) for action in Action)


@pytest.mark.parametrize(("role", "expected"), [(H, True), (C, True), (P, False)])
def test_is_moderator(role, expected):
    assert is_moderator(role) is expected
