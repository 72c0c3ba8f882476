"""Room codes: shape, alphabet and what a person may type."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshroom.roomcode import ALPHABET, new_room_code, normalize_room_code

CODE = re.compile(r"^[a-z]{3}-[a-z]{4}-[a-z]{3}$")


def test_alphabet_leaves_out_confusable_characters():
    assert not set("ilo0123456789") & set(ALPHABET)
    assert len(ALPHABET) == 23


def test_new_codes_have_the_3_4_3_shape_and_the_alphabet():
    for _ in range(200):
        code = new_room_code()
        assert CODE.match(code), code
        assert set(code.replace("-", "")) <= set(ALPHABET)


def test_new_codes_do_not_repeat():
    codes = {new_room_code() for _ in range(2000)}
    assert len(codes) == 2000


def test_new_codes_normalize_to_themselves():
    for _ in range(50):
        code = new_room_code()
        assert normalize_room_code(code) == code


@pytest.mark.parametrize(
    "typed",
    [
        "kfm-qpwz-thr",
        "KFM-QPWZ-THR",
        "kfmqpwzthr",
        " kfm qpwz thr ",
        "Kfm-Qpwz thr",
        "kfm--qpwzthr",
    ],
)
def test_what_a_person_types_is_normalized(typed):
    assert normalize_room_code(typed) == "kfm-qpwz-thr"


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "kfm-qpwz-th",  # too short
        "kfm-qpwz-thrr",  # too long
        "kfm-qpwz-th1",  # digit
        "kfm-qpwz-tho",  # o is not in the alphabet
        "kfi-qpwz-thr",  # nor i
        "kfl-qpwz-thr",  # nor l
        "kfm_qpwz_thr",  # other separators
        "kfm-qpwz-thé",
        "3fa85f64-5717-4562-b3fc-2c963f66afa6",  # a meeting id is not a code
    ],
)
def test_non_codes_are_none(typed):
    assert normalize_room_code(typed) is None


@given(st.text(max_size=30))
def test_normalize_returns_a_well_formed_code_or_none(text):
    code = normalize_room_code(text)
    assert code is None or (CODE.match(code) and set(code.replace("-", "")) <= set(ALPHABET))
