"""The policy regex subset of `aarm_runtime.regex`: what it accepts and what it means."""

from __future__ import annotations

import doctest
import pickle
import random
import re
import threading
import time
import timeit
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aarm_runtime import regex
from aarm_runtime.regex import (
    MAX_REPEAT,
    MAX_STATES,
    Alt,
    AnyChar,
    Bol,
    CharClass,
    Concat,
    Empty,
    Eol,
    Group,
    Lit,
    Matcher,
    Regex,
    RegexError,
    Repeat,
    compile_matcher,
    compile_regex,
    matches,
    parse_regex,
    to_python,
)


def test_doctests() -> None:
    result = doctest.testmod(regex)
    assert result.attempted >= 5 and result.failed == 0


def _cls(*chars: str, negated: bool = False) -> CharClass:
    ranges: list[tuple[int, int]] = []
    for code in sorted(map(ord, chars)):
        if ranges and ranges[-1][1] + 1 == code:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return CharClass(tuple(ranges), negated)


# --------------------------------------------------------------------------- accepted

ACCEPTED: list[tuple[str, str, Regex]] = [
    ("", "", Empty()),
    ("a", "", Lit("a")),
    ("ab", "", Concat((Lit("a"), Lit("b")))),
    ("a|", "", Alt((Lit("a"), Empty()))),
    ("(a)", "", Group(Lit("a"))),
    ("(?:a)", "", Group(Lit("a"))),
    ("()", "", Group(Empty())),
    ("^a$", "", Concat((Bol(), Lit("a"), Eol()))),
    (".", "", AnyChar()),
    ("a*", "", Repeat(Lit("a"), 0, None)),
    ("a+", "", Repeat(Lit("a"), 1, None)),
    ("a?", "", Repeat(Lit("a"), 0, 1)),
    ("a{3}", "", Repeat(Lit("a"), 3, 3)),
    ("a{2,5}", "", Repeat(Lit("a"), 2, 5)),
    ("a{2,}", "", Repeat(Lit("a"), 2, None)),
    ("a{0}", "", Repeat(Lit("a"), 0, 0)),
    (f"a{{{MAX_REPEAT}}}", "", Repeat(Lit("a"), MAX_REPEAT, MAX_REPEAT)),
    ("(?:a*)*", "", Repeat(Group(Repeat(Lit("a"), 0, None)), 0, None)),
    ("(^)*", "", Repeat(Group(Bol()), 0, None)),
    ("A", "i", _cls("A", "a")),
    ("1", "i", Lit("1")),
    ("é", "i", Lit("é")),
    ("\\d", "", CharClass(((48, 57),))),
    ("\\D", "", CharClass(((48, 57),), negated=True)),
    ("\\w", "i", CharClass(((48, 57), (65, 90), (95, 95), (97, 122)))),
    ("\\S", "", CharClass(((9, 13), (32, 32)), negated=True)),
    ("\\n\\t\\r\\f\\v", "", Concat(tuple(Lit(c) for c in "\n\t\r\f\v"))),
    ("\\.\\/\\-\\\\", "", Concat(tuple(Lit(c) for c in "./-\\"))),
    ("\\(\\)\\[\\]\\{\\}", "", Concat(tuple(Lit(c) for c in "()[]{}"))),
    ("\\*\\+\\?\\|\\^\\$", "", Concat(tuple(Lit(c) for c in "*+?|^$"))),
    ("/", "", Lit("/")),
    ("[abc]", "", CharClass(((97, 99),))),
    ("[^a-c]", "", CharClass(((97, 99),), negated=True)),
    ("[a-cx]", "i", CharClass(((65, 67), (88, 88), (97, 99), (120, 120)))),
    ("[^a]", "i", _cls("A", "a", negated=True)),
    ("[Z-a]", "i", CharClass(((65, 65), (90, 97), (122, 122)))),
    ("[-a]", "", _cls("-", "a")),
    ("[a-]", "", _cls("-", "a")),
    ("[a\\-z]", "", _cls("-", "a", "z")),
    ("[!--]", "", CharClass(((33, 45),))),
    ("[\\]\\\\\\^]", "", _cls("]", "\\", "^")),
    ("[a^]", "", _cls("^", "a")),
    ("[.*+?(){}|$/]", "", _cls(*".*+?(){}|$/")),
    ("[\\d_]", "", CharClass(((48, 57), (95, 95)))),
    ("[\\Da]", "", CharClass(((0, 47), (58, 0x10FFFF)))),
    ("[\\t-\\r]", "", CharClass(((9, 13),))),
]


@pytest.mark.parametrize(("pattern", "flags", "tree"), ACCEPTED, ids=[repr(c[0]) for c in ACCEPTED])
def test_accepted(pattern: str, flags: str, tree: Regex) -> None:
    assert parse_regex(pattern, flags) == tree
    re.compile(to_python(tree))


# --------------------------------------------------------------------------- rejected

REJECTED: list[tuple[str, str, int, str]] = [
    ("\\1", "", 0, "backreference"),
    ("(a)\\1", "", 3, "backreference"),
    ("(?P=n)", "", 0, "backreference"),
    ("(?=a)", "", 0, "lookaround"),
    ("x(?!a)", "", 1, "lookaround"),
    ("(?<=a)b", "", 0, "lookaround"),
    ("(?<!a)b", "", 0, "lookaround"),
    ("(?P<n>a)", "", 0, "named group"),
    ("(?<n>a)", "", 0, "named group"),
    ("(?i)a", "", 0, "inline flag"),
    ("a(?i:b)", "", 1, "inline flag"),
    ("(?-i:b)", "", 0, "inline flag"),
    ("(?#c)", "", 0, "comment"),
    ("(?>a)", "", 0, "atomic"),
    ("(?(1)a)", "", 0, "conditional"),
    ("(?", "", 0, "unsupported group"),
    ("\\b", "", 0, "word boundar"),
    ("a\\B", "", 1, "word boundar"),
    ("\\A", "", 0, "anchor"),
    ("a\\Z", "", 1, "anchor"),
    ("\\x41", "", 0, "character code"),
    ("\\u0041", "", 0, "character code"),
    ("\\0", "", 0, "character code"),
    ("\\p{L}", "", 0, "property"),
    ("\\@", "", 0, "not an allowed escape"),
    ("\\ ", "", 0, "not an allowed escape"),
    ("\\a", "", 0, "not an allowed escape"),
    ("[\\b]", "", 1, "word boundar"),
    ("[\\x5b]", "", 1, "character code"),
    ("a\\", "", 1, "lone `\\`"),
    ("a*?", "", 2, "lazy"),
    ("a+?", "", 2, "lazy"),
    ("a??", "", 2, "lazy"),
    ("a{2}?", "", 4, "lazy"),
    ("a*+", "", 2, "possessive"),
    ("a{1,2}+", "", 6, "possessive"),
    ("a**", "", 2, "cannot follow"),
    ("a{2}{3}", "", 4, "cannot follow"),
    ("*a", "", 0, "nothing to repeat"),
    ("a|*", "", 2, "nothing to repeat"),
    ("(+)", "", 1, "nothing to repeat"),
    ("{2}", "", 0, "nothing to repeat"),
    ("^*", "", 1, "nothing to repeat"),
    ("a$+", "", 2, "nothing to repeat"),
    ("a{,3}", "", 1, "lower bound"),
    ("a{3,2}", "", 1, "out of order"),
    (f"a{{{MAX_REPEAT + 1}}}", "", 1, "at most"),
    (f"a{{0,{MAX_REPEAT + 1}}}", "", 1, "at most"),
    ("a{", "", 1, "unescaped `{`"),
    ("a{x}", "", 1, "unescaped `{`"),
    ("a{1,x}", "", 1, "unescaped `{`"),
    ("a}", "", 1, "unescaped `}`"),
    ("a]", "", 1, "unescaped `]`"),
    ("(a", "", 0, "unterminated group"),
    ("a(b(c)", "", 1, "unterminated group"),
    ("a)", "", 1, "unbalanced"),
    ("())", "", 2, "unbalanced"),
    ("[a", "", 0, "unterminated character class"),
    ("x[^", "", 1, "unterminated character class"),
    ("[]", "", 0, "empty character class"),
    ("[^]a]", "", 0, "empty character class"),
    ("[z-a]", "", 1, "out of order"),
    ("a[b-a]", "", 2, "out of order"),
    ("[\\d-z]", "", 1, "one character to another"),
    ("[a-\\w]", "", 1, "one character to another"),
    ("[a-c-e]", "", 4, "literal `-`"),
    ("[--a]", "", 1, "literal `-`"),
    ("[a[]", "", 2, "unescaped `[`"),
    ("\U00030000", "", 0, "above U+2FFFF"),
    ("ab[x-\U00030000]", "", 5, "above U+2FFFF"),
    ("\ud800", "", 0, "surrogate"),
    ("(?:a{100}){101}", "", 10, "too large"),
    ("x(?:a{1000}){11}", "", 12, "too large"),
    ("a{1000}" * 10 + "b", "", 70, "too large"),
    ("a{1000}|" * 9 + "a{999}|b", "", 79, "too large"),
    ("(a{1000}b{1000}){2}(c{1000}){4}(d{1000}){3}", "", 31, "too large"),
    ("((a{1000}){1000}){1000}", "", 10, "too large"),
    ("a", "m", 2, "unknown flag"),
    ("abc", "ix", 5, "unknown flag"),
    ("a", "ii", 3, "twice"),
    ("a", "I", 2, "unknown flag"),
]


@pytest.mark.parametrize(("pattern", "flags", "offset", "fragment"), REJECTED, ids=[repr(c[0] + "/" + c[1]) for c in REJECTED])
def test_rejected(pattern: str, flags: str, offset: int, fragment: str) -> None:
    with pytest.raises(RegexError) as info:
        parse_regex(pattern, flags)
    assert info.value.offset == offset
    assert fragment in info.value.message
    message = info.value.message
    assert not message[0].isupper() and not message.endswith(".")


# --------------------------------------------------------------------------- ASCII meaning


@pytest.mark.parametrize(
    ("pattern", "flags", "text", "found"),
    [
        ("é", "i", "\u00c9", False),
        ("\u00c9", "i", "é", False),
        ("k", "i", "\u212a", False),  # KELVIN SIGN folds to k in Unicode, not here
        ("s", "i", "\u017f", False),  # LATIN SMALL LETTER LONG S
        ("k", "i", "K", True),
        ("[a-z]+", "i", "HELLO", True),
        ("[^a]", "i", "A", False),
        ("[^a]", "i", "b", True),
        ("\\d", "", "\u0663", False),  # ARABIC-INDIC DIGIT THREE
        ("\\d", "", "\uff11", False),  # FULLWIDTH DIGIT ONE
        ("\\D", "", "\u0663", True),
        ("\\w", "", "é", False),
        ("\\w", "", "_", True),
        ("\\W", "", "é", True),
        ("\\s", "", "\u00a0", False),
        ("\\s", "", "\x1c", False),  # str.isspace() says yes, ASCII \s says no
        ("\\s", "", "\v", True),
        ("\\S", "", "\x85", True),
        ("a$", "", "a\n", False),  # `$` is the very end, not "before a final newline"
        ("a$", "", "a", True),
        ("^b", "", "a\nb", False),  # no multiline
        ("a.b", "", "a\nb", False),
        ("a.b", "", "a\rb", True),
        ("a[^x]b", "", "a\nb", True),  # a negated class does match \n
        (".", "", "\U0002ffff", True),
        ("drop\\s+(table|database)", "i", "please DROP  Table users", True),
        ("drop\\s+(table|database)", "i", "dropdatabase", False),
        ("rm\\s+-rf\\s+\\/", "", "rm -rf /", True),
        ("rm\\s+-rf\\s+\\/", "", "rm -rf ./x", False),
        ("", "", "", True),
        ("a{0}$", "", "", True),
        ("^a{0}$", "", "a", False),
        ("^a{1,3}$", "", "aaa", True),
        ("^a{1,3}$", "", "aaaa", False),
        ("^a{2}$", "", "aaa", False),
        ("^a{2,}$", "", "aaaaa", True),
        ("^(ab){2,}$", "", "ab", False),
        ("^a?$", "", "aa", False),
        ("[\\Da]", "", "a", True),
        ("[\\Da]", "", "5", False),
        ("$^", "", "", True),  # both hold in the empty text
        ("$^", "", "a", False),
        ("^$", "", "", True),
        ("(^|a)b", "", "ab", True),
        ("(^|a)b", "", "cb", False),
        ("(^|a)b", "", "bc", True),
        ("a(?:$|b)", "", "xa", True),
        ("a(?:$|b)", "", "ac", False),
        ("(?:$)*a", "", "ba", True),
        ("(?:^)+a", "", "ba", False),
        ("x*$", "", "abc", True),
        ("(a|b)*c$", "", "ababababd", False),
        ("^(a+)+$", "", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaab", False),
        ("[\U0002ffff]", "", "x\U0002ffff", True),
        ("[^\u00e9]", "", "\u00e9", False),
        ("\\w", "", "\U0010ffff", False),
        (".", "", "\U0010ffff", True),
    ],
)
def test_meaning(pattern: str, flags: str, text: str, found: bool) -> None:
    assert matches(pattern, flags, text) is found
    assert _reference_search(parse_regex(pattern, flags), text) is found


def test_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(RegexError("lookaround is not allowed", 3)))
    assert (error.message, error.offset, str(error)) == ("lookaround is not allowed", 3, "lookaround is not allowed (at offset 3)")


def test_compile_is_cached() -> None:
    assert compile_regex("a+b", "i") is compile_regex("a+b", "i")
    assert compile_regex("a+b", "i") is not compile_regex("a+b", "")


def test_empty_classes_render() -> None:
    nothing, anything = CharClass(()), CharClass((), negated=True)
    assert re.search(to_python(nothing), "abc\n") is None
    assert re.search(to_python(anything), "\n") is not None


# --------------------------------------------------------------------------- differential

def _ends(node: Regex, s: str, i: int) -> frozenset[int]:
    """Every position where a match of ``node`` starting at ``i`` can end."""
    if isinstance(node, Lit):
        return frozenset({i + 1}) if i < len(s) and s[i] == node.char else frozenset()
    if isinstance(node, AnyChar):
        return frozenset({i + 1}) if i < len(s) and s[i] != "\n" else frozenset()
    if isinstance(node, CharClass):
        if i >= len(s):
            return frozenset()
        inside = any(lo <= ord(s[i]) <= hi for lo, hi in node.ranges)
        return frozenset({i + 1}) if inside != node.negated else frozenset()
    if isinstance(node, Concat):
        current = frozenset({i})
        for item in node.items:
            current = frozenset(e for j in current for e in _ends(item, s, j))
        return current
    if isinstance(node, Alt):
        return frozenset(e for item in node.items for e in _ends(item, s, i))
    if isinstance(node, Group):
        return _ends(node.item, s, i)
    if isinstance(node, Repeat):
        current, result = frozenset({i}), set()
        count = 0
        while True:
            if count >= node.min:
                if current <= result and node.max is None:
                    break
                result |= current
            if node.max is not None and count == node.max:
                break
            current = frozenset(e for j in current for e in _ends(node.item, s, j))
            count += 1
            if not current:
                break
        return frozenset(result)
    if isinstance(node, Bol):
        return frozenset({i}) if i == 0 else frozenset()
    if isinstance(node, Eol):
        return frozenset({i}) if i == len(s) else frozenset()
    if isinstance(node, Empty):
        return frozenset({i})
    raise TypeError(node)


def _reference_search(node: Regex, s: str) -> bool:
    return any(_ends(node, s, i) for i in range(len(s) + 1))


def _has_eol(node: Regex) -> bool:
    if isinstance(node, Eol):
        return True
    children = getattr(node, "items", None) or ((node.item,) if isinstance(node, (Group, Repeat)) else ())
    return any(_has_eol(child) for child in children)


_LITERALS = st.sampled_from(["a", "b", "A", "B", "k", "é", "1", " ", "_", "\\.", "\\-", "\\n", "\\*", "\\/", "\\\\", "\\$"])
_SHORT = st.sampled_from([".", "\\d", "\\w", "\\s", "\\D", "\\W", "\\S"])
_CLASS_ITEMS = st.sampled_from(["a", "b", "Z", "0", "é", " ", "_", "\\]", "\\-", "\\^", "\\n", "\\d", "\\W", "\\s",
                                "a-c", "A-Z", "0-9", "Z-a", "\\t-\\r", "!-/"])
_CLASSES = st.builds(lambda neg, items: "[" + neg + "".join(items) + "]",
                     st.sampled_from(["", "^"]), st.lists(_CLASS_ITEMS, min_size=1, max_size=3))
_QUANTIFIERS = st.sampled_from(["", "", "", "*", "+", "?", "{2}", "{0,2}", "{1,}", "{2,}", "{0}", "{1,3}"])


def _patterns(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    group = st.builds(lambda opener, body: opener + body + ")", st.sampled_from(["(", "(?:"]), inner)
    atom = st.one_of(_LITERALS, _SHORT, _CLASSES, group)
    quantified = st.builds(str.__add__, atom, _QUANTIFIERS)
    # Anchors inside a pattern mostly make it unmatchable: keep them rare.
    piece = st.one_of(quantified, quantified, quantified, quantified, st.sampled_from(["^", "$"]))
    sequence = st.lists(piece, min_size=1, max_size=4).map("".join)
    return st.lists(sequence, min_size=1, max_size=3).map("|".join)


_UNANCHORED = st.recursive(st.just(""), _patterns, max_leaves=6)
# Search hides upper bounds (`a{0,2}` and `a{0,3}` find the same strings);
# anchoring both ends makes every bound observable.
PATTERNS = st.one_of(_UNANCHORED, _UNANCHORED.map(lambda p: f"^(?:{p})$"))
SUBJECTS = st.lists(st.text(alphabet="abAB1k_ .-\n\t\u212aé\u00c9\u0663", max_size=8), min_size=1, max_size=6)


_PROBES = "aAbBkK1 _-.\n\t\u212aé\u00c9\u0663\U0002ffff"


def _sample(node: Regex, data: st.DataObject) -> str:
    """A string the node can match (ignoring anchors), to probe the language's edges."""
    if isinstance(node, Lit):
        return node.char
    if isinstance(node, AnyChar):
        return data.draw(st.sampled_from(_PROBES.replace("\n", "")))
    if isinstance(node, CharClass):
        inside = [c for c in _PROBES if any(lo <= ord(c) <= hi for lo, hi in node.ranges) != node.negated]
        if node.ranges and not node.negated:
            lo, hi = data.draw(st.sampled_from(node.ranges))
            inside += [chr(lo), chr(hi)]
        return data.draw(st.sampled_from(inside)) if inside else ""
    if isinstance(node, Concat):
        return "".join(_sample(item, data) for item in node.items)
    if isinstance(node, Alt):
        return _sample(data.draw(st.sampled_from(node.items)), data)
    if isinstance(node, Group):
        return _sample(node.item, data)
    if isinstance(node, Repeat):
        # The bounds themselves are where translations go wrong.
        high = node.max if node.max is not None else node.min + 2
        count = data.draw(st.sampled_from(sorted({node.min, high, min(node.min + 1, high)})))
        return "".join(_sample(node.item, data) for _ in range(count))
    return ""


def _near(word: str, data: st.DataObject) -> list[str]:
    # The word and one-edit neighbours: a wrong bound or class shows up here.
    at = data.draw(st.integers(0, len(word)))
    return [word, word[:at] + word[at:][:1] + word[at:], word[:at] + word[at + 1 :], word.swapcase(),
            "\n" + word, word + "\n"]


def _check_differential(pattern: str, flags: str, subjects: list[str]) -> None:
    tree = parse_regex(pattern, flags)
    compiled = compile_regex(pattern, flags)
    # The shared cached matcher, plain NFA simulation, and a budget that runs
    # out part way: the three paths of the linear engine.
    matchers = [compile_matcher(pattern, flags), Matcher(tree, cache_budget=0), Matcher(tree, cache_budget=2000)]
    native = None
    if not _has_eol(tree):
        # Where `$` does not occur, Python's own reading of the pattern under
        # re.ASCII must agree too: that pins the parser to the usual meaning.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            native = re.compile(pattern, re.ASCII | (re.IGNORECASE if flags else 0))
    for subject in [*subjects, "".join(subjects)]:
        expected = _reference_search(tree, subject)
        assert (compiled.search(subject) is not None) is expected, (pattern, flags, subject, to_python(tree))
        for matcher in matchers:
            assert matcher.search(subject) is expected, (pattern, flags, subject)
        if native is not None:
            assert (native.search(subject) is not None) is expected, (pattern, flags, subject)


def _differential(pattern: str, flags: str, subjects: list[str], data: st.DataObject) -> None:
    tree = parse_regex(pattern, flags)
    _check_differential(pattern, flags, subjects + _near(_sample(tree, data), data))


@given(PATTERNS, st.sampled_from(["", "i"]), SUBJECTS, st.data())
@settings(max_examples=300, deadline=None)
def test_python_translation_and_linear_matcher_agree_with_reference_matcher(
    pattern: str, flags: str, subjects: list[str], data: st.DataObject
) -> None:
    _differential(pattern, flags, subjects, data)


@pytest.mark.slow
@given(PATTERNS, st.sampled_from(["", "i"]), SUBJECTS, st.data())
@settings(max_examples=5000, deadline=None)
def test_python_translation_and_linear_matcher_agree_with_reference_matcher_long(
    pattern: str, flags: str, subjects: list[str], data: st.DataObject
) -> None:
    _differential(pattern, flags, subjects, data)


def _nodes(node: Regex):
    yield node
    children = getattr(node, "items", None) or ((node.item,) if isinstance(node, (Group, Repeat)) else ())
    for child in children:
        yield from _nodes(child)


def _swap_case(code: int) -> int:
    char = chr(code)
    return ord(char.swapcase()) if char.isascii() and char.isalpha() else code


@given(PATTERNS)
@settings(max_examples=200, deadline=None)
def test_the_i_flag_leaves_no_trace_but_case_closed_sets(pattern: str) -> None:
    # Back ends never see the flag, so with `i` every letter must already be
    # a set closed under ASCII case swap, and without it nothing is folded.
    folded, plain = parse_regex(pattern, "i"), parse_regex(pattern, "")
    for node in _nodes(folded):
        assert not (isinstance(node, Lit) and node.char.isascii() and node.char.isalpha())
        if isinstance(node, CharClass):
            members = {c for lo, hi in node.ranges for c in range(lo, min(hi, 0x7F) + 1)}
            assert {_swap_case(c) for c in members} == members
    if not any(isinstance(n, (Lit, CharClass)) for n in _nodes(plain)):
        assert folded == plain


# --------------------------------------------------------------------------- linear-time matcher


@given(PATTERNS, st.sampled_from(["", "i"]))
@settings(max_examples=200, deadline=None)
def test_the_size_limit_counts_the_states_the_matcher_builds(pattern: str, flags: str) -> None:
    tree = parse_regex(pattern, flags)
    assert Matcher(tree).states == regex._size(tree) + 1  # + the match state


def test_size_limit_boundary() -> None:
    assert compile_matcher("a{1000}" * (MAX_STATES // 1000)).states == MAX_STATES + 1
    with pytest.raises(RegexError, match="too large"):
        Matcher(Concat((Repeat(Lit("a"), MAX_STATES, MAX_STATES), Lit("b"))))


def test_matches_and_compile_matcher() -> None:
    assert compile_matcher("a+b", "i") is compile_matcher("a+b", "i")
    assert compile_matcher("a+b", "i") is not compile_matcher("a+b", "")
    assert matches("a+b", "i", "xAAB") is True and matches("a+b", "", "xAAB") is False
    with pytest.raises(RegexError):
        compile_matcher("(?=a)")


# Classic catastrophic-backtracking patterns (each takes Python's `re` time
# exponential in the text, or quadratic and more), and one whose DFA has 2^13
# states so that the cache runs out and plain NFA simulation takes over.
_RNG = random.Random(7)
_RANDOM_AB = "".join(_RNG.choice("ab") for _ in range(10_000))
PATHOLOGICAL = [
    ("(a+)+$", "a" * 10_000 + "b", False),
    ("(a+)+b", "a" * 10_000 + "b", True),
    ("^(a|a)*$", "a" * 10_000 + "b", False),
    ("(a|aa)*c", "a" * 10_000, False),
    ("(a*)*b", "a" * 10_000, False),
    ("(x+x+)+y", "x" * 10_000, False),
    ("(.*a){20}$", "a" * 10_000 + "\n", False),
    ("(\\w+\\s?)+$", "a" * 10_000 + "!", False),
    ("^(\\w+\\.)+\\w+@x\\.example$", "a." * 5_000, False),
    ("(.*){1000}x", "y" * 10_000, False),
    ("(a|b)*a(a|b){12}$", _RANDOM_AB + "c", False),
    ("(a|b)*a(a|b){12}$", _RANDOM_AB[:-13] + "a" + _RANDOM_AB[-12:], True),
]


@pytest.mark.parametrize(("pattern", "text", "found"), PATHOLOGICAL, ids=[c[0] for c in PATHOLOGICAL])
def test_pathological_patterns_take_linear_time(pattern: str, text: str, found: bool) -> None:
    matcher = compile_matcher(pattern)
    assert len(text) >= 10_000
    timings = []
    for _ in range(2):  # a fresh cache, then a warm one
        start = time.perf_counter()
        assert matcher.search(text) is found
        timings.append(time.perf_counter() - start)
    print(f"/{pattern}/ on {len(text)} chars: {timings[0] * 1e3:.1f} ms cold, {timings[1] * 1e3:.1f} ms warm")
    # Typically well under 50 ms; a generous bound keeps a loaded CI quiet.
    assert max(timings) < 1.0


def test_the_cost_grows_linearly_with_the_text() -> None:
    # A DFA that runs out of cache: the slow path must be linear too.
    matcher = Matcher(parse_regex("(a|b)*a(a|b){12}$"), cache_budget=0)
    def cost(n: int) -> float:
        text = (_RANDOM_AB * 8)[:n] + "c"
        return min(timeit.repeat(lambda: matcher.search(text), number=1, repeat=3))
    small, large = cost(2_000), cost(16_000)
    print(f"plain NFA simulation: {small * 1e3:.1f} ms for 2k chars, {large * 1e3:.1f} ms for 16k chars")
    assert large < 8 * small * 3  # 8 times the text: not 64 times the time


def test_micro_benchmark_against_re() -> None:
    pattern, flags = r"drop\s+(table|database)", "i"
    text = ("SELECT name, email FROM users WHERE id = 42 AND status = 'active' ORDER BY created_at DESC "
            "LIMIT 10;")[:100]
    assert len(text) == 100
    matcher, backtracking = compile_matcher(pattern, flags), compile_regex(pattern, flags)
    assert matcher.search(text) is False and backtracking.search(text) is None
    calls = 2_000
    ours = min(timeit.repeat(lambda: matcher.search(text), number=calls, repeat=3)) / calls
    theirs = min(timeit.repeat(lambda: backtracking.search(text), number=calls, repeat=3)) / calls
    print(f"/{pattern}/{flags} on 100 chars: linear matcher {ours * 1e6:.2f} us per call, re {theirs * 1e6:.2f} us")
    assert ours < 1e-3


def test_non_ascii_text_beyond_the_class_memo() -> None:
    # More distinct characters than the matcher remembers classes for.
    pattern = "[\u0100-\u017f\U00020000]z|\u00e9"
    matcher, backtracking = compile_matcher(pattern), compile_regex(pattern)
    for code in [*range(0x80, 0x3000), 0xFFFF, 0x1FFFF, 0x20000, 0x2FFFF, 0x10FFFF]:
        for text in (chr(code) + "z", "a" + chr(code)):
            assert matcher.search(text) is (backtracking.search(text) is not None), hex(code)


@pytest.mark.parametrize("budget", [0, 500, 5_000, 50_000])
def test_small_cache_budgets_change_speed_not_answers(budget: int) -> None:
    pattern = "(a|b)*a(a|b){6}(c|$)"
    matcher, backtracking = Matcher(parse_regex(pattern), cache_budget=budget), compile_regex(pattern)
    rng = random.Random(budget)
    for _ in range(300):
        text = "".join(rng.choice("abbc") for _ in range(rng.randrange(30)))
        assert matcher.search(text) is (backtracking.search(text) is not None), text


def test_one_matcher_shared_by_threads() -> None:
    pattern = "(a|b)*a(a|b){8}(c|$)|^b{3}"
    matcher, backtracking = Matcher(parse_regex(pattern), cache_budget=20_000), compile_regex(pattern)
    failures: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(400):
            text = "".join(rng.choice("abc") for _ in range(rng.randrange(40)))
            if matcher.search(text) is not (backtracking.search(text) is not None):
                failures.append(text)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
