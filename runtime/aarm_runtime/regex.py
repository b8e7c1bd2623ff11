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
Python ``re`` pattern of :func:`to_python`, the Z3 encoding) translates one
flag-free tree and cannot disagree about folding.

Choices where LANGUAGE.md is silent:

- ``\\D \\W \\S`` (the complements) are accepted, inside classes too.
- ``\\n \\t \\r \\f \\v`` denote those characters.
- Every metacharacter must be escaped to be literal, ``{ } ]`` included (Python
  reads a stray ``]`` or a ``{`` that is no quantifier as a literal, which
  hides typos like ``a{1,x}``). In a class, ``-`` is literal only first or
  last, and ``[`` must be escaped; ``^`` is literal anywhere but first.
- With ``i``, a class is folded before it is negated: ``[^a]`` excludes ``A``.
- Repeat bounds are at most :data:`MAX_REPEAT`, to keep the Z3 encoding small.
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

import dataclasses
import functools
import re
from typing import Union

from .values import MAX_CODE_POINT

__all__ = [
    "DIGIT",
    "MAX_CHAR",
    "MAX_REPEAT",
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
    "Regex",
    "RegexError",
    "Repeat",
    "compile_regex",
    "matches",
    "parse_regex",
    "to_python",
]

MAX_CHAR = 0x10FFFF
MAX_REPEAT = 1000

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
        while self.peek() == "|":
            self.pos += 1
            items.append(self.sequence())
        return items[0] if len(items) == 1 else Alt(tuple(items))

    def sequence(self) -> Regex:
        items: list[Regex] = []
        while self.pos < len(self.text) and self.peek() not in "|)":
            items.append(self.repetition())
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
        return Repeat(node, bounds[0], bounds[1])

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


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str, flags: str = "") -> re.Pattern[str]:
    """The compiled Python form of a policy regex (cached)."""
    return re.compile(to_python(parse_regex(pattern, flags)), re.ASCII)


def matches(pattern: str, flags: str, text: str) -> bool:
    """``text matches /pattern/flags``: search semantics."""
    return compile_regex(pattern, flags).search(text) is not None
