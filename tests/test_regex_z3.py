"""The Z3 translation of the regex subset agrees with Python `re` (via aarm_runtime.regex)."""

from __future__ import annotations

import pytest
import z3
from aarm_runtime.regex import RegexError, matches, parse_regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aarmc.analysis.regex_z3 import search_regex, string_of, string_val


def z3_matches(pattern: str, flags: str, text: str) -> bool:
    s = z3.Solver()
    s.add(z3.InRe(string_val(text), search_regex(pattern, flags)))
    result = s.check()
    assert result != z3.unknown
    return result == z3.sat


ATOMS = ["a", "b", "A", ".", r"\d", r"\w", r"\s", r"\D", r"\W", "[ab]", "[^a]", "[a-c]", "[^\\n]",
         "^", "$", r"\.", r"\-", "é", " ", "1", r"\n"]


@st.composite
def patterns(draw, depth=0):
    if depth > 2 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(ATOMS))
    kind = draw(st.sampled_from(["cat", "alt", "group", "rep"]))
    if kind == "cat":
        return "".join(draw(st.lists(patterns(depth + 1), min_size=2, max_size=3)))
    if kind == "alt":
        return "|".join(draw(st.lists(patterns(depth + 1), min_size=2, max_size=3)))
    if kind == "group":
        return draw(st.sampled_from(["(", "(?:"])) + draw(patterns(depth + 1)) + ")"
    inner = draw(patterns(depth + 1))
    quant = draw(st.sampled_from(["*", "+", "?", "{2}", "{0,2}", "{1,3}", "{2,}"]))
    return "(?:" + inner + ")" + quant


TEXTS = st.text(alphabet="abA1 \n._-é", max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=patterns(), flags=st.sampled_from(["", "i"]), texts=st.lists(TEXTS, min_size=1, max_size=4))
def test_z3_agrees_with_python_re(pattern, flags, texts):
    try:
        parse_regex(pattern, flags)
    except RegexError:
        return
    for text in texts:
        assert z3_matches(pattern, flags, text) == matches(pattern, flags, text), (pattern, flags, text)


@pytest.mark.parametrize("pattern,flags,text,expected", [
    ("a^b", "", "a^b", False),            # `^` in the middle never holds
    ("a|^b", "", "cb", False),
    ("a|^b", "", "bc", True),
    ("(^)x", "", "x", True),
    ("(^)x", "", "yx", False),
    ("x$", "", "x\n", False),             # `$` is the very end (\Z)
    ("^$", "", "", True),
    ("(?:^|a)b", "", "ab", True),
    ("(?:^|a)b", "", "cb", False),
    ("(?:a|$){2}", "", "a", True),
    ("(?:^a|b){2}", "", "ab", True),
    ("(?:^a|b){2}", "", "cab", False),
    (".", "", "\n", False),
    (r"drop\s+(table|database)", "i", "DROP  Table x", True),
    (r"[^a]", "i", "A", False),
    (r"\w+@", "", "é@", False),          # \w is ASCII
])
def test_anchor_and_class_cases(pattern, flags, text, expected):
    assert matches(pattern, flags, text) == expected
    assert z3_matches(pattern, flags, text) == expected


def test_solver_finds_member_and_string_roundtrip():
    s = z3.Solver()
    x = z3.String("x")
    s.add(z3.InRe(x, search_regex(r"^rm\s+-rf\s+\/$", "")))
    assert s.check() == z3.sat
    text = string_of(s.model()[x])
    assert matches(r"^rm\s+-rf\s+\/$", "", text)
    weird = 'a\\u{0}\x00"\U0002ffff'
    assert string_of(z3.simplify(string_val(weird))) == weird
