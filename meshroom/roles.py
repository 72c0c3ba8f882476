"""Roles and the permission matrix. Pure data: the room core asks, it never decides inline."""

from __future__ import annotations

import enum
from typing import Final


class Role(enum.StrEnum):
    HOST = "HOST"
    COHOST = "COHOST"
    PARTICIPANT = "PARTICIPANT"


class Action(enum.StrEnum):
    KICK = "kick"
    BAN = "ban"
    UNBAN = "unban"
    END = "end"
    PROMOTE = "promote"
    DEMOTE = "demote"


# Actions that name a live target: actor role -> roles it may act on.
_TARGETED: Final[dict[Action, dict[Role, frozenset[Role]]]] = {
    Action.KICK: {
        Role.HOST: frozenset({Role.COHOST, Role.PARTICIPANT}),
        Role.COHOST: frozenset({Role.PARTICIPANT}),
    },
    Action.BAN: {
        Role.HOST: frozenset({Role.COHOST, Role.PARTICIPANT}),
        Role.COHOST: frozenset({Role.PARTICIPANT}),
    },
    Action.PROMOTE: {Role.HOST: frozenset({Role.PARTICIPANT})},
    Action.DEMOTE: {Role.HOST: frozenset({Role.COHOST})},
}

# Actions with no live target (unban names an employee who is, by definition, not in the room).
_UNTARGETED: Final[dict[Action, frozenset[Role]]] = {
    Action.UNBAN: frozenset({Role.HOST, Role.COHOST}),
    Action.END: frozenset({Role.HOST}),
}


def may(actor: Role, action: Action, target: Role | None = None) -> bool:
    """Whether ``actor`` may perform ``action`` (on a peer whose role is ``target``)."""
    if action in _UNTARGETED:
        return actor in _UNTARGETED[action]
    if target is None:
        return actor in _TARGETED[action]
    return target in _TARGETED[action].get(actor, frozenset())


def is_moderator(role: Role) -> bool:
    return role in (Role.HOST, Role.COHOST)
