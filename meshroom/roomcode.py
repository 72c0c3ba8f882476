"""Short, human-friendly room codes such as ``kfm-qpwz-thr``.

The alphabet leaves out letters that are misread or mistyped (i, l, o) and all
digits (0/o, 1/l, 5/s); 3-4-3 letters give 23**10 ≈ 4e13 codes, and the store
retries on the rare collision (the column is unique).
"""

from __future__ import annotations

import re
import secrets
from typing import Final

ALPHABET: Final = "abcdefghjkmnpqrstuvwxyz"
GROUPS: Final = (3, 4, 3)
_PATTERN: Final = re.compile("^" + "-".join(f"[{ALPHABET}]{{{n}}}" for n in GROUPS) + "$")


def new_room_code() -> str:
    return "-".join("".join(secrets.choice(ALPHABET) for _ in range(n)) for n in GROUPS)


def normalize_room_code(text: str) -> str | None:
    """Accept what a person types (any case, spaces or no dashes); None if it is not a code."""
    letters = re.sub(r"[\s\-]", "", text.lower())
    if len(letters) != sum(GROUPS):
        return None
    a, b = GROUPS[0], GROUPS[0] + GROUPS[1]
    code = f"{letters[:a]}-{letters[a:b]}-{letters[b:]}"
    return code if _PATTERN.match(code) else None
