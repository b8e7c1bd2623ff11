"""The policy language's regular expressions: one meaning in Python and in Z3.

LANGUAGE.md §4 fixes the subset: literals, escaped metacharacters, ``.``,
classes and ranges, ``\\d \\w \\s``, ``* + ? {m} {m,n} {m,}``, ``|``, groups and
``(?:...)``, ``^`` and ``$``; the only flag is ``i``. Semantics are ASCII:
``\\d`` = ``[0-9]``, ``\\w`` = ``[A-Za-z0-9_]``, ``\\s`` = ``[ \\t\\n\\r\\f\\v]``,
``i`` folds ASCII letters only, ``.`` is any character but ``\\n``, ``^`` is the
start and ``$`` the very end of the string (Python's ``\\Z``, not "before a
final newline"), and matching is search (unanchored).

:func:`parse_regex` turns a pattern into a small AST with the flag already
applied (a folded letter becomes a two-letter class), so every back end (the
linear-time :class:`Matcher`, the Python ``re`` pattern of :func:`to_python`,
the Z3 encoding) translates one flag-free tree and cannot disagree about
folding.

The runtime searches with :class:`Matcher` (:func:`compile_matcher`,
:func:`matches`): a Thompson NFA simulated through a bounded, lazily built DFA,
so a search costs time linear in the text whatever the pattern. Agents choose
the text; Python's backtracking ``re`` (:func:`compile_regex`) needs
exponential time for patterns like ``(a+)+$`` and serves only tools and tests.

Choices where LANGUAGE.md is silent:

- ``\\D \\W \\S`` (the complements) are accepted, inside classes too.
- ``\\n \\t \\r \\f \\v`` denote those characters.
- Every metacharacter must be escaped to be literal, ``{ } ]`` included (Python
  reads a stray ``]`` or a ``{`` that is no quantifier as a literal, which
  hides typos like ``a{1,x}``). In a class, ``-`` is literal only first or
  last, and ``[`` must be escaped; ``^`` is literal anywhere but first.
- With ``i``, a class is folded before it is negated: ``[^a]`` excludes ``A``.
- Repeat bounds are at most :data:`MAX_REPEAT`, to keep the Z3 encoding small.
- With its repeats unrolled a pattern needs at most :data:`MAX_STATES`
  automaton states (``a{n}`` needs ``n``, ``a{0,n}`` ``2n``, ``(a{100}){100}``
  too many): the matcher's worst-case work per character is proportional.
- Characters above U+2FFFF and lone surrogates are refused in patterns: no
  valid string contains them. Negated classes are complements over all of
  Unicode, as in Python; the Z3 encoding intersects them with its alphabet.
- :class:`RegexError` offsets count from the first character of the pattern;
  a bad flag's offset is where it stands in ``/pattern/flags`` minus one, i.e.
  ``len(pattern) + 1 + index``.

>>> to_python(parse_regex(r"drop\\s+(table|database)", "i"))
'[Dd][Rr][Oo][Pp][\\\\x09-\\\\x0d\\\\x20]+(?:[Tt][Aa][Bb][Ll][Ee]|[Dd][Aa][Tt][Aa][Bb][Aa][Ss][Ee])'
>>> matches(r"rm\\s+-rf\\s+\\/", "", "sudo rm -rf /")
True
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import re
from typing import Union

from .values import MAX_CODE_POINT

__all__ = [
    "DFA_BUDGET",
    "DIGIT",
    "MAX_CHAR",
    "MAX_REPEAT",
    "MAX_STATES",
    "SPACE",
    "WORD",
    "AnyChar",
    "Alt",
    "Bol",
    "CharClass",
    "Concat",
    "Empty",
    "Eol",
    "Group",
    "Lit",
    "Matcher",
    "Regex",
    "RegexError",
    "Repeat",
    "compile_matcher",
    "compile_regex",
    "matches",
    "parse_regex",
    "to_python",
]

MAX_CHAR = 0x10FFFF
MAX_REPEAT = 1000
# NFA states a pattern may need with its repeats unrolled: bounds the
# matcher's work per character of text (see Matcher).
MAX_STATES = 10_000

Ranges = tuple[tuple[int, int], ...]

DIGIT: Ranges = ((0x30, 0x39),)
WORD: Ranges = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
SPACE: Ranges = ((0x09, 0x0D), (0x20, 0x20))  # \t \n \v \f \r and space


class RegexError(ValueError):
    """A pattern outside the subset; ``offset`` is 0-based in the pattern."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message, offset)
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        return f"{self.message} (at offset {self.offset})"


# --------------------------------------------------------------------------- AST


@dataclasses.dataclass(frozen=True, slots=True)
class Lit:
    char: str


@dataclasses.dataclass(frozen=True, slots=True)
class AnyChar:
    """Any character except ``\\n``."""


@dataclasses.dataclass(frozen=True, slots=True)
class CharClass:
    """Characters in ``ranges`` (sorted, disjoint, inclusive), or not in them if ``negated``."""

    ranges: Ranges
    negated: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Concat:
    items: tuple[Regex, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Alt:
    items: tuple[Regex, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Repeat:
    item: Regex
    min: int
    max: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Group:
    """``(...)`` and ``(?:...)`` alike: nothing reads captures."""

    item: Regex


@dataclasses.dataclass(frozen=True, slots=True)
class Bol:
    """``^``: the start of the string."""


@dataclasses.dataclass(frozen=True, slots=True)
class Eol:
    """``$``: the very end of the string."""


@dataclasses.dataclass(frozen=True, slots=True)
class Empty:
    """Matches the empty string (an empty pattern or alternative)."""


Regex = Union[Lit, AnyChar, CharClass, Concat, Alt, Repeat, Group, Bol, Eol, Empty]


# --------------------------------------------------------------------------- ranges


def _normalise(ranges: list[tuple[int, int]]) -> Ranges:
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


def _complement(ranges: Ranges) -> Ranges:
    out, start = [], 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CHAR:
        out.append((start, MAX_CHAR))
    return tuple(out)


def _fold(ranges: Ranges) -> Ranges:
    # The ASCII case partner of every letter in the set joins it.
    out = list(ranges)
    for lo, hi in ranges:
        for first, last, shift in ((0x41, 0x5A, 0x20), (0x61, 0x7A, -0x20)):
            a, b = max(lo, first), min(hi, last)
            if a <= b:
                out.append((a + shift, b + shift))
    return _normalise(out)


# --------------------------------------------------------------------------- parser

_ESCAPABLE = frozenset(".\\/-()[]{}*+?|^$")
_CONTROL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_SHORTHANDS = {"d": DIGIT, "w": WORD, "s": SPACE}
_QUANTIFIER = re.compile(r"\{([0-9]+)(?:(,)([0-9]*))?\}")
_LOWERLESS_QUANTIFIER = re.compile(r"\{,[0-9]*\}")


def _escape_error(char: str) -> str:
    if char in "123456789":
        return "backreferences are not allowed"
    if char in "bB":
        return "word boundaries are not allowed"
    if char in "AZzG":
        return "only `^` and `$` anchor a pattern"
    if char in "0xuUN":
        return "character code escapes are not allowed; write the character itself"
    if char in "pP":
        return "unicode property classes are not allowed"
    return f"`\\{char}` is not an allowed escape"


def _group_error(rest: str) -> str:
    if rest.startswith(("?=", "?!", "?<=", "?<!")):
        return "lookaround is not allowed"
    if rest.startswith(("?P<", "?<")):
        return "named groups are not allowed; use `(...)` or `(?:...)`"
    if rest.startswith("?P="):
        return "backreferences are not allowed"
    if rest.startswith("?#"):
        return "comments are not allowed"
    if rest.startswith("?>"):
        return "atomic groups are not allowed"
    if rest.startswith("?("):
        return "conditional groups are not allowed"
    if rest[1:2].isalpha() or rest.startswith("?-"):
        return "inline flags are not allowed; the only flag is `i` after the closing `/`"
    return "unsupported group syntax; use `(...)` or `(?:...)`"


class _Parser:
    def __init__(self, pattern: str, fold: bool) -> None:
        self.text = pattern
        self.pos = 0
        self.fold = fold

    def peek(self, ahead: int = 0) -> str:
        at = self.pos + ahead
        return self.text[at] if at < len(self.text) else ""

    def char_node(self, char: str) -> Regex:
        if self.fold and char.isascii() and char.isalpha():
            return CharClass(_fold(((ord(char), ord(char)),)))
        return Lit(char)

    def check_char(self, char: str, at: int) -> None:
        code = ord(char)
        if code > MAX_CODE_POINT:
            raise RegexError("characters above U+2FFFF cannot occur in a valid string", at)
        if 0xD800 <= code <= 0xDFFF:
            raise RegexError("lone surrogates cannot occur in a valid string", at)

    def parse(self) -> Regex:
        node = self.alternation()
        if self.pos < len(self.text):
            # Only a `)` stops an alternation early.
            raise RegexError("unbalanced `)`", self.pos)
        return node

    def alternation(self) -> Regex:
        items = [self.sequence()]
        size = 1 + _size(items[0])  # the split in front of the alternatives
        while self.peek() == "|":
            self.pos += 1
            item_start = self.pos
            items.append(self.sequence())
            size += _size(items[-1])
            if size > MAX_STATES:
                raise _too_large(item_start)
        return items[0] if len(items) == 1 else Alt(tuple(items))

    def sequence(self) -> Regex:
        items: list[Regex] = []
        size = 0
        while self.pos < len(self.text) and self.peek() not in "|)":
            item_start = self.pos
            items.append(self.repetition())
            size += _size(items[-1])
            if size > MAX_STATES:
                raise _too_large(item_start)
        if not items:
            return Empty()
        return items[0] if len(items) == 1 else Concat(tuple(items))

    def quantifier(self) -> tuple[int, int | None] | None:
        char = self.peek()
        if char in ("*", "+", "?"):
            self.pos += 1
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        if char != "{":
            return None
        m = _QUANTIFIER.match(self.text, self.pos)
        if m is None:
            if _LOWERLESS_QUANTIFIER.match(self.text, self.pos):
                raise RegexError("a repeat needs a lower bound: write `{0,n}`", self.pos)
            return None
        low = int(m.group(1))
        high = (int(m.group(3)) if m.group(3) else None) if m.group(2) else low
        if low > MAX_REPEAT or (high is not None and high > MAX_REPEAT):
            raise RegexError(f"repeat bounds may be at most {MAX_REPEAT}", self.pos)
        if high is not None and high < low:
            raise RegexError("repeat bounds out of order", self.pos)
        self.pos = m.end()
        return low, high

    def repetition(self) -> Regex:
        node = self.atom()
        start = self.pos
        bounds = self.quantifier()
        if bounds is None:
            return node
        if isinstance(node, (Bol, Eol)):
            raise RegexError("nothing to repeat", start)
        after = self.pos
        if self.peek() == "?":
            raise RegexError("lazy quantifiers are not allowed", after)
        if self.peek() == "+":
            raise RegexError("possessive quantifiers are not allowed", after)
        if self.quantifier() is not None:
            raise RegexError("a quantifier cannot follow another; group it: `(?:...)`", after)
        repeat = Repeat(node, bounds[0], bounds[1])
        if _size(repeat) > MAX_STATES:
            raise _too_large(start)
        return repeat

    def atom(self) -> Regex:
        start = self.pos
        char = self.peek()
        if char == "(":
            return self.group()
        if char == "[":
            return self.char_class()
        if char == "\\":
            return self.escape()[0]
        self.pos += 1
        if char == ".":
            return AnyChar()
        if char == "^":
            return Bol()
        if char == "$":
            return Eol()
        if char in "*+?":
            raise RegexError("nothing to repeat", start)
        if char == "{":
            self.pos = start
            if _QUANTIFIER.match(self.text, start):
                raise RegexError("nothing to repeat", start)
            raise RegexError("unescaped `{`; write `\\{`", start)
        if char in "}]":
            raise RegexError(f"unescaped `{char}`; write `\\{char}`", start)
        self.check_char(char, start)
        return self.char_node(char)

    def group(self) -> Regex:
        start = self.pos
        rest = self.text[start + 1 : start + 4]
        if rest.startswith("?:"):
            self.pos += 3
        elif rest.startswith("?"):
            raise RegexError(_group_error(rest), start)
        else:
            self.pos += 1
        inner = self.alternation()
        if self.peek() != ")":
            raise RegexError("unterminated group", start)
        self.pos += 1
        return Group(inner)

    def escape(self) -> tuple[Regex, Ranges | None]:
        """One escape; the node and, for a single character, its one-element range."""
        start = self.pos
        if self.pos + 1 >= len(self.text):
            raise RegexError("the pattern ends in a lone `\\`", start)
        char = self.text[self.pos + 1]
        self.pos += 2
        lower = char.lower()
        if lower in _SHORTHANDS and char.isascii():
            ranges = _SHORTHANDS[lower]
            return CharClass(ranges, negated=char.isupper()), None
        if char in _CONTROL_ESCAPES:
            char = _CONTROL_ESCAPES[char]
        elif char not in _ESCAPABLE:
            raise RegexError(_escape_error(char), start)
        return self.char_node(char), ((ord(char), ord(char)),)

    def class_item(self, first: bool) -> tuple[Ranges, bool, bool]:
        """One class element: its ranges, whether it is a single character
        (so it may end a range), and whether it is an unescaped ``-``."""
        start = self.pos
        char = self.peek()
        if char == "\\":
            node, single = self.escape()
            if single is not None:
                return single, True, False
            assert isinstance(node, CharClass)
            return (_complement(node.ranges) if node.negated else node.ranges), False, False
        if char == "[":
            raise RegexError("unescaped `[` in a class; write `\\[`", start)
        if char == "-" and not first and self.peek(1) != "]":
            raise RegexError("a literal `-` in a class goes first or last, or is written `\\-`", start)
        self.check_char(char, start)
        self.pos += 1
        return ((ord(char), ord(char)),), True, char == "-"

    def char_class(self) -> Regex:
        start = self.pos
        self.pos += 1
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            if self.pos >= len(self.text):
                raise RegexError("unterminated character class", start)
            if self.peek() == "]":
                if first:
                    raise RegexError("empty character class; write `\\]` for a literal `]`", start)
                self.pos += 1
                break
            item_start = self.pos
            low, single, bare_dash = self.class_item(first)
            first = False
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                if bare_dash:
                    raise RegexError("a literal `-` in a class goes first or last, or is written `\\-`", item_start)
                self.pos += 1
                high, high_single, _ = self.class_item(False)
                if not (single and high_single):
                    raise RegexError("a range must go from one character to another", item_start)
                if low[0][0] > high[0][0]:
                    raise RegexError("range out of order", item_start)
                ranges.append((low[0][0], high[0][0]))
            else:
                ranges.extend(low)
        folded = _fold(_normalise(ranges)) if self.fold else _normalise(ranges)
        return CharClass(folded, negated)


def _fold_flag(pattern: str, flags: str) -> bool:
    for index, flag in enumerate(flags):
        at = len(pattern) + 1 + index
        if flag != "i":
            raise RegexError(f"unknown flag `{flag}`; the only flag is `i`", at)
        if index > 0:
            raise RegexError("the flag `i` is given twice", at)
    return bool(flags)


def parse_regex(pattern: str, flags: str = "") -> Regex:
    """Parse a pattern of the subset; anything else raises :class:`RegexError`.

    >>> parse_regex("a|b?", "i")
    Alt(items=(CharClass(ranges=((65, 65), (97, 97)), negated=False), Repeat(item=CharClass(ranges=((66, 66), (98, 98)), negated=False), min=0, max=1)))
    >>> parse_regex("(?=x)")
    Traceback (most recent call last):
    ...
    aarm_runtime.regex.RegexError: lookaround is not allowed (at offset 0)
    """
    fold = _fold_flag(pattern, flags)
    return _Parser(pattern, fold).parse()


# --------------------------------------------------------------------------- Python


def _py_char(code: int) -> str:
    # Hex escapes for everything but ASCII letters and digits: no character
    # can then be read as syntax, inside a class or outside.
    char = chr(code)
    if char.isascii() and char.isalnum():
        return char
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _py_class(ranges: Ranges, negated: bool) -> str:
    if not ranges:
        # Python has no `[]`: an empty set matches nothing, its complement anything.
        return "[\\x00-\\U0010ffff]" if negated else "[^\\x00-\\U0010ffff]"
    body = "".join(
        _py_char(lo) if lo == hi else f"{_py_char(lo)}-{_py_char(hi)}" for lo, hi in ranges
    )
    if not negated and len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _py_char(ranges[0][0])
    return f"[^{body}]" if negated else f"[{body}]"


def _py_unit(node: Regex) -> str:
    # A pattern a quantifier applies to as a whole.
    text = to_python(node)
    if isinstance(node, (Lit, AnyChar, CharClass, Alt, Group)):
        return text
    return "(?:" + text + ")"


def to_python(node: Regex) -> str:
    """A Python ``re`` pattern with exactly the meaning of ``node`` (for ``re.ASCII``).

    >>> to_python(parse_regex("^a.$"))
    '\\\\Aa[^\\\\n]\\\\Z'
    """
    if isinstance(node, Lit):
        return _py_char(ord(node.char))
    if isinstance(node, AnyChar):
        return "[^\\n]"
    if isinstance(node, CharClass):
        return _py_class(node.ranges, node.negated)
    if isinstance(node, Concat):
        return "".join(to_python(item) for item in node.items)
    if isinstance(node, Alt):
        return "(?:" + "|".join(to_python(item) for item in node.items) + ")"
    if isinstance(node, Group):
        return _py_unit(node.item)
    if isinstance(node, Repeat):
        low, high = node.min, node.max
        if (low, high) == (0, None):
            suffix = "*"
        elif (low, high) == (1, None):
            suffix = "+"
        elif (low, high) == (0, 1):
            suffix = "?"
        elif high is None:
            suffix = f"{{{low},}}"
        elif low == high:
            suffix = f"{{{low}}}"
        else:
            suffix = f"{{{low},{high}}}"
        return _py_unit(node.item) + suffix
    if isinstance(node, Bol):
        return "\\A"
    if isinstance(node, Eol):
        return "\\Z"
    if isinstance(node, Empty):
        return "(?:)"
    raise TypeError(f"not a regex node: {node!r}")


# --------------------------------------------------------------------------- linear-time matching
#
# A Thompson NFA built from the tree (counted repeats unrolled), searched by
# simulating all its states at once, so the cost per character is bounded by
# the pattern and never depends on the text the way backtracking does. The
# simulation is memoised as a lazily built DFA: a DFA state is the set of NFA
# states live at a position, and each of its transitions is computed once.
# The cache has a budget; once it is spent, new sets are computed on every
# step and not kept (plain NFA simulation, still linear).
#
# Characters are read through a partition of the code points into classes
# that no range in the pattern splits, so a transition is per class, not per
# character.

_CHAR, _SPLIT, _BOL, _EOL, _MATCH = range(5)
# Approximate bytes one Matcher may spend on its caches (compile_matcher
# keeps up to 1024 matchers).
DFA_BUDGET = 2 << 20
# States visited computing one _CHAR state's closure, beyond which it is not
# memoised: large closures overlap, and are cheaper computed together.
_AFTER_LIMIT = 64
# Non-ASCII characters whose class a Matcher remembers.
_CLASS_MEMO = 1024
_NOT_NEWLINE: Ranges = ((0, 9), (11, MAX_CHAR))


def _size(node: Regex) -> int:
    """How many NFA states :class:`Matcher` builds for ``node``."""
    if isinstance(node, (Lit, AnyChar, CharClass, Bol, Eol)):
        return 1
    if isinstance(node, Empty):
        return 0
    if isinstance(node, Group):
        return _size(node.item)
    if isinstance(node, Concat):
        return sum(_size(item) for item in node.items)
    if isinstance(node, Alt):
        return 1 + sum(_size(item) for item in node.items)
    if isinstance(node, Repeat):
        inner = _size(node.item)
        if node.max is None:
            return max(node.min, 1) * inner + 1
        return node.min * inner + (node.max - node.min) * (inner + 1)
    raise TypeError(f"not a regex node: {node!r}")


def _too_large(offset: int) -> RegexError:
    return RegexError(
        f"the pattern is too large: with repeats unrolled it needs more than {MAX_STATES} states", offset
    )


class _Nfa:
    """The automaton, as parallel lists indexed by state."""

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.next: list[int] = []  # _CHAR, _BOL, _EOL: the one successor
        self.outs: list[tuple[int, ...]] = []  # _SPLIT: the successors
        self.ranges: list[Ranges] = []  # _CHAR: the characters it consumes

    def add(self, kind: int, nxt: int = -1, outs: tuple[int, ...] = (), ranges: Ranges = ()) -> int:
        self.kind.append(kind)
        self.next.append(nxt)
        self.outs.append(outs)
        self.ranges.append(ranges)
        return len(self.kind) - 1

    def emit(self, node: Regex, nxt: int) -> int:
        """States for ``node`` that continue to ``nxt``; returns the entry.

        Built back to front, so every successor exists when a state is made.
        """
        if isinstance(node, Lit):
            return self.add(_CHAR, nxt, ranges=((ord(node.char), ord(node.char)),))
        if isinstance(node, AnyChar):
            return self.add(_CHAR, nxt, ranges=_NOT_NEWLINE)
        if isinstance(node, CharClass):
            ranges = _complement(node.ranges) if node.negated else node.ranges
            return self.add(_CHAR, nxt, ranges=ranges)
        if isinstance(node, Concat):
            for item in reversed(node.items):
                nxt = self.emit(item, nxt)
            return nxt
        if isinstance(node, Alt):
            return self.add(_SPLIT, outs=tuple(self.emit(item, nxt) for item in node.items))
        if isinstance(node, Group):
            return self.emit(node.item, nxt)
        if isinstance(node, Repeat):
            return self.emit_repeat(node, nxt)
        if isinstance(node, Bol):
            return self.add(_BOL, nxt)
        if isinstance(node, Eol):
            return self.add(_EOL, nxt)
        if isinstance(node, Empty):
            return nxt
        raise TypeError(f"not a regex node: {node!r}")

    def emit_repeat(self, node: Repeat, nxt: int) -> int:
        if node.max is None:
            # A loop: a split that re-enters the item or leaves. An item that
            # matches the empty string makes an epsilon cycle, which the
            # closure's visited set absorbs.
            loop = self.add(_SPLIT)
            body = self.emit(node.item, loop)
            self.outs[loop] = (body, nxt)
            entry = loop if node.min == 0 else body
            mandatory = max(node.min - 1, 0)
        else:
            # x{0,k} as nested optionals (x(x(x)?)?)?: linear in k.
            entry = nxt
            for _ in range(node.max - node.min):
                entry = self.add(_SPLIT, outs=(self.emit(node.item, entry), nxt))
            mandatory = node.min
        for _ in range(mandatory):
            entry = self.emit(node.item, entry)
        return entry


class _DState(dict):  # type: ignore[type-arg]
    """A DFA state: the live NFA states; as a dict, its transitions by class.

    A missing transition is computed by ``__missing__``, which keeps the
    search loop to one subscript per character.
    """

    __slots__ = ("matcher", "key", "stop", "final", "cached")

    def __init__(self, matcher: Matcher, key: tuple[int, ...], stop: bool, final: bool | None, cached: bool) -> None:
        super().__init__()
        self.matcher = matcher
        self.key = key  # sorted: the _CHAR and _EOL states live here
        self.stop = stop  # no later character can change the answer
        self.final = final  # the answer if the text ends here (None: not computed yet)
        self.cached = cached  # in the matcher's table, so its transitions are worth keeping

    def __missing__(self, cls: str) -> _DState:
        return self.matcher._step(self, cls)


class _ClassMap(dict):  # type: ignore[type-arg]
    """Code point to class, for ``str.translate``: ASCII preloaded, the rest memoised up to a bound."""

    __slots__ = ("starts",)

    def __missing__(self, code: int) -> int:
        cls = bisect.bisect_right(self.starts, code) - 1
        if len(self) < _CLASS_MEMO:
            self[code] = cls
        return cls


# Approximate bytes, to charge against a Matcher's cache budget.
_STATE_COST, _ENTRY_COST, _TRANSITION_COST = 300, 8, 80


class Matcher:
    """A policy regex compiled to search in time linear in the text.

    A search costs one dictionary step per character while the DFA cache
    holds the states it meets, and at worst, once the cache is full, work
    proportional to the live NFA states per character (at most
    :attr:`states`, itself at most :data:`MAX_STATES` + 1): never worse than
    linear in the text. Thread-safe: the caches only grow, by single
    dictionary and list stores.

    ``cache_budget`` bounds the memory the caches may take, in approximate
    bytes; ``0`` means plain NFA simulation throughout.

    >>> m = Matcher(parse_regex(r"drop\\s+(table|database)", "i"))
    >>> m.search("please DROP  Table users"), m.search("dropdatabase")
    (True, False)
    """

    __slots__ = ("states", "_nfa", "_accepts", "_after", "_after_budget", "_table", "_budget", "_states", "_mid",
                 "_initial", "_matched", "_dead")

    def __init__(self, tree: Regex, *, cache_budget: int = DFA_BUDGET) -> None:
        if _size(tree) > MAX_STATES:
            raise _too_large(0)
        nfa = _Nfa()
        # State 0: a closure containing 0 has reached the match.
        start = nfa.emit(tree, nfa.add(_MATCH))
        self._nfa = nfa
        #: How many NFA states the pattern compiled to.
        self.states = len(nfa.kind)
        self._partition()
        # Per _CHAR state, once computed: the closure after reading its
        # character, or False if too large to keep per state.
        self._after: list[tuple[int, ...] | bool | None] = [None] * self.states
        # A quarter for the per-state closures, so that big DFA states
        # cannot starve the memo that speeds up plain NFA simulation.
        self._after_budget = cache_budget // 4
        self._budget = cache_budget - self._after_budget
        self._states: dict[tuple[int, ...], _DState] = {}
        self._matched = _DState(self, (), True, True, True)
        self._dead = _DState(self, (), True, False, True)
        # Past position 0 `^` never holds, so the states a new match attempt
        # starts in are the same at every later position.
        self._mid = tuple(sorted(self._closure([start], at_start=False)))
        initial = self._closure([start], at_start=True)
        if 0 in initial or 0 in self._mid:
            self._initial = self._matched
        else:
            # Outside the table: its end-of-text answer may differ from that
            # of a later state with the same key, as `$` may precede `^` when
            # the text is empty.
            key = tuple(sorted(initial))
            self._initial = _DState(self, key, False, self._final(key, at_start=True), True)

    def _partition(self) -> None:
        nfa = self._nfa
        bounds = {0}
        for ranges in nfa.ranges:
            for lo, hi in ranges:
                bounds.add(lo)
                if hi < MAX_CHAR:
                    bounds.add(hi + 1)
        starts = sorted(bounds)
        # Each class is named by one character: the keys of the DFA's
        # transition dicts, and what `str.translate` turns the text into.
        names = [chr(i) for i in range(len(starts))]
        nothing: frozenset[str] = frozenset()
        by_ranges: dict[Ranges, frozenset[str]] = {}
        self._accepts: list[frozenset[str]] = []
        for kind, ranges in zip(nfa.kind, nfa.ranges):
            accepted = by_ranges.get(ranges) if kind == _CHAR else nothing
            if accepted is None:
                accepted = by_ranges[ranges] = frozenset(
                    names[i]
                    for lo, hi in ranges
                    for i in range(bisect.bisect_left(starts, lo), bisect.bisect_right(starts, hi))
                )
            self._accepts.append(accepted)
        table = _ClassMap((code, bisect.bisect_right(starts, code) - 1) for code in range(128))
        table.starts = starts
        self._table = table

    def _closure(self, seeds: list[int], at_start: bool, limit: int = -1) -> set[int] | None:
        """The _CHAR and _EOL states reachable from ``seeds`` without reading,
        and 0 if the match is; ``None`` once more than ``limit`` states are
        visited, if ``limit`` is not negative. ``$`` is not crossed: mid-text
        it fails, and :meth:`_final` crosses it at the end."""
        kind, nxt, outs = self._nfa.kind, self._nfa.next, self._nfa.outs
        found: set[int] = set()
        seen: set[int] = set()
        stack = seeds
        while stack:
            limit -= 1
            if limit == -1:
                return None
            q = stack.pop()
            k = kind[q]
            if k == _CHAR or k == _EOL or k == _MATCH:
                found.add(q)
            elif q in seen:
                continue
            elif k == _SPLIT:
                seen.add(q)
                stack.extend(outs[q])
            elif at_start:  # _BOL
                seen.add(q)
                stack.append(nxt[q])
        return found

    def _final(self, key: tuple[int, ...], at_start: bool) -> bool:
        """Whether the text may end in this state: the match is reachable
        across ``$`` (and ``^`` too when the text is empty)."""
        kind, nxt, outs = self._nfa.kind, self._nfa.next, self._nfa.outs
        stack = [nxt[q] for q in key if kind[q] == _EOL]
        seen: set[int] = set()
        while stack:
            q = stack.pop()
            if q in seen:
                continue
            seen.add(q)
            k = kind[q]
            if k == _MATCH:
                return True
            if k == _SPLIT:
                stack.extend(outs[q])
            elif k == _EOL or (k == _BOL and at_start):
                stack.append(nxt[q])
        return False

    def _memo_after(self, live: list[int]) -> list[tuple[int, ...] | bool]:
        """The closures after reading from each of ``live``, computed and
        memoised where missing; ``False`` for a closure too large to memoise."""
        after, nxt = self._after, self._nfa.next
        for q in live:
            if after[q] is None:
                found = self._closure([nxt[q]], at_start=False, limit=_AFTER_LIMIT)
                if found is None:
                    after[q] = False
                elif self._after_budget > 0:
                    known = after[q] = tuple(found)
                    self._after_budget -= _ENTRY_COST * len(known) + _TRANSITION_COST
                else:
                    return [False]
        return [after[q] for q in live]  # type: ignore[misc]

    def _step(self, state: _DState, cls: str) -> _DState:
        accepts, after = self._accepts, self._after
        live = [q for q in state.key if cls in accepts[q]]
        moved = [after[q] for q in live]
        if None in moved:
            moved = self._memo_after(live)
        found: set[int] | None
        if False in moved:
            # One closure for all: each state is visited once however many
            # of the live states reach it.
            nxt = self._nfa.next
            found = self._closure([nxt[q] for q in live], at_start=False)
            assert found is not None
            found.update(self._mid)
        else:
            found = set(self._mid)
            found.update(*moved)
        if 0 in found:
            target = self._matched
        elif not found:
            # Only when no attempt can start mid-text (the pattern begins with `^`).
            target = self._dead
        else:
            key = tuple(sorted(found))
            target = self._states.get(key)  # type: ignore[assignment]
            if target is None:
                cost = _STATE_COST + _ENTRY_COST * len(key)
                cached = self._budget >= cost
                target = _DState(self, key, False, None, cached)
                if cached:
                    self._budget -= cost
                    target = self._states.setdefault(key, target)
        if state.cached and target.cached and self._budget >= _TRANSITION_COST:
            self._budget -= _TRANSITION_COST
            state[cls] = target
        return target

    def search(self, text: str) -> bool:
        """Whether the pattern matches somewhere in ``text``."""
        state = self._initial
        if not state.stop:
            for cls in text.translate(self._table):
                state = state[cls]
                if state.stop:
                    break
        final = state.final
        if final is None:
            final = state.final = self._final(state.key, at_start=False)
        return final


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str, flags: str = "") -> re.Pattern[str]:
    """The compiled Python ``re`` form of a policy regex (cached).

    Kept for tools and differential tests only: ``re`` backtracks, so a
    pattern such as ``(a+)+$`` takes time exponential in the text searched.
    Anything that searches text an agent controls must use
    :func:`compile_matcher`.
    """
    return re.compile(to_python(parse_regex(pattern, flags)), re.ASCII)


@functools.lru_cache(maxsize=1024)
def compile_matcher(pattern: str, flags: str = "") -> Matcher:
    """The linear-time :class:`Matcher` of a policy regex (cached; share it freely).

    >>> compile_matcher(r"^(a+)+$").search("a" * 10_000 + "b")
    False
    """
    return Matcher(parse_regex(pattern, flags))


def matches(pattern: str, flags: str, text: str) -> bool:
    """``text matches /pattern/flags``: search semantics, in time linear in ``text``."""
    return compile_matcher(pattern, flags).search(text)
