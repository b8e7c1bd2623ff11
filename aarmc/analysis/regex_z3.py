"""The regex subset of `aarm_runtime.regex` as Z3 regular expressions, with search semantics.

`matches` is a search (unanchored), and `^` / `$` are zero-width assertions
that may stand anywhere in a pattern (`a|^b`, `(^)x`, `a^b` which matches
nothing). A Z3 regex has no zero-width assertions, so each sub-pattern is
translated once per *context*: whether the text it matches starts at the start
of the string (`s`) and whether it ends at the end of the string (`e`). A
context-aware translation is a table `{(s, e): (nullable, nonempty)}` where
`nonempty` is a Z3 regex for the non-empty strings the sub-pattern matches in
that context and `nullable` says whether it matches the empty string there.
Concatenation decides the context of the seam from which side is empty:

    AB, both parts non-empty      A(s, ·N) then B(N·, e)
    A empty, B non-empty          A must match "" at (s, N); B takes (s, e)
    A non-empty, B empty          A takes (s, e); B must match "" at (N, e)

and a search is the union over where the match lies in the string:
`Σ⁺ L(N,N) Σ⁺ | L(S,N) Σ⁺ | Σ⁺ L(N,E) | L(S,E)`. Patterns without anchors skip
all that (`Σ* L Σ*`).

The alphabet is that of valid strings (`aarm_runtime.values.STRING_ALPHABET`,
U+0000–U+2FFFF without surrogates), so negated classes and `.` never produce
a character a valid value cannot contain.

>>> import z3
>>> r = search_regex("^ab?$", "")
>>> s = z3.Solver(); _ = s.add(z3.InRe(string_val("a"), r)); s.check()
sat
"""

from __future__ import annotations

import ctypes
import functools

import z3
from aarm_runtime import regex as rx
from aarm_runtime.values import STRING_ALPHABET

_SORT = z3.ReSort(z3.StringSort())
Ranges = tuple[tuple[int, int], ...]


# ---- exact conversion between Python strings and Z3 string values ---------------
# z3.StringVal reads `\u{..}` escapes in its argument and `as_string` prints
# them, so neither is exact for text containing a backslash; the u32 API is.

def string_val(text: str, ctx: z3.Context | None = None) -> z3.SeqRef:
    """A Z3 string constant with exactly these code points."""
    ctx = ctx or z3.main_ctx()
    codes = [ord(c) for c in text]
    buf = (ctypes.c_uint * max(len(codes), 1))(*codes)
    return z3.SeqRef(z3.Z3_mk_u32string(ctx.ref(), len(codes), buf), ctx)


def string_of(value: z3.ExprRef) -> str:
    """The Python text of a Z3 string value (from a model)."""
    ctx = value.ctx
    n = z3.Z3_get_string_length(ctx.ref(), value.as_ast())
    buf = (ctypes.c_uint * max(n, 1))()
    z3.Z3_get_string_contents(ctx.ref(), value.as_ast(), n, buf)
    return "".join(chr(buf[i]) for i in range(n))


# ---- character sets -------------------------------------------------------------

def _clip(ranges: Ranges) -> Ranges:
    """Intersect a set of code points with the alphabet of valid strings."""
    out = []
    for lo, hi in ranges:
        for alo, ahi in STRING_ALPHABET:
            a, b = max(lo, alo), min(hi, ahi)
            if a <= b:
                out.append((a, b))
    return tuple(out)


def _complement(ranges: Ranges) -> Ranges:
    out, start = [], 0
    for lo, hi in sorted(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= rx.MAX_CHAR:
        out.append((start, rx.MAX_CHAR))
    return tuple(out)


def char_set(ranges: Ranges) -> z3.ReRef | None:
    """A regex for one character among `ranges` (clipped to the alphabet), None if empty."""
    parts = [z3.Range(string_val(chr(lo)), string_val(chr(hi))) for lo, hi in _clip(ranges)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else z3.Union(*parts)


ALL_CHARS: z3.ReRef = char_set(((0, rx.MAX_CHAR),))  # type: ignore[assignment]
SIGMA_STAR = z3.Star(ALL_CHARS)
SIGMA_PLUS = z3.Plus(ALL_CHARS)
EPSILON = z3.Re(string_val(""))


def valid_string(s: z3.SeqRef) -> z3.BoolRef:
    """`s` holds only characters a valid value may contain."""
    return z3.InRe(s, SIGMA_STAR)


# ---- regex algebra with None as the empty language --------------------------------

def _union(*items: z3.ReRef | None) -> z3.ReRef | None:
    xs = [x for x in items if x is not None]
    if not xs:
        return None
    return xs[0] if len(xs) == 1 else z3.Union(*xs)


def _cat(*items: z3.ReRef | None) -> z3.ReRef | None:
    if any(x is None for x in items):
        return None
    return items[0] if len(items) == 1 else z3.Concat(*items)


def _loop(item: z3.ReRef | None, lo: int, hi: int | None) -> z3.ReRef | None:
    """item{lo,hi}; `None` hi = unbounded; an empty `item` still allows zero copies."""
    if item is None:
        return EPSILON if lo == 0 else None
    if hi is None:
        star = z3.Star(item)
        return star if lo == 0 else z3.Concat(z3.Loop(item, lo, lo), star)
    if hi == 0:
        return EPSILON
    return z3.Loop(item, lo, hi)


def _lang(null: bool, ne: z3.ReRef | None) -> z3.ReRef | None:
    return _union(EPSILON if null else None, ne)


# ---- translation ------------------------------------------------------------------

Ctx = tuple[bool, bool]  # (at string start, at string end)
CONTEXTS: tuple[Ctx, ...] = ((False, False), (False, True), (True, False), (True, True))
Table = dict[Ctx, tuple[bool, "z3.ReRef | None"]]


def _const(null: bool, ne: z3.ReRef | None) -> Table:
    return {c: (null, ne) for c in CONTEXTS}


def _concat2(a: Table, b: Table) -> Table:
    out: Table = {}
    for s, e in CONTEXTS:
        null = a[(s, e)][0] and b[(s, e)][0]
        ne = _union(
            _cat(a[(s, False)][1], b[(False, e)][1]),
            b[(s, e)][1] if a[(s, False)][0] else None,
            a[(s, e)][1] if b[(False, e)][0] else None,
        )
        out[(s, e)] = (null, ne)
    return out


def _repeat(x: Table, lo: int, hi: int | None) -> Table:
    out: Table = {}
    for s, e in CONTEXTS:
        null = lo == 0 or x[(s, e)][0]
        # k non-empty pieces; missing iterations up to `lo` are empty pieces,
        # possible before the first (s, N), between two (N, N) or after the last (N, e).
        if x[(s, False)][0] or x[(False, e)][0]:
            kmin = 1
        elif x[(False, False)][0]:
            kmin = min(max(lo, 1), 2)
        else:
            kmin = max(lo, 1)
        one = x[(s, e)][1] if kmin <= 1 and (hi is None or hi >= 1) else None
        many = None
        k2 = max(kmin, 2)
        if hi is None or hi >= k2:
            middle = _loop(x[(False, False)][1], k2 - 2, None if hi is None else hi - 2)
            many = _cat(x[(s, False)][1], middle, x[(False, e)][1])
        out[(s, e)] = (null, _union(one, many))
    return out


def _has_anchor(node: rx.Regex) -> bool:
    if isinstance(node, (rx.Bol, rx.Eol)):
        return True
    if isinstance(node, (rx.Concat, rx.Alt)):
        return any(_has_anchor(i) for i in node.items)
    if isinstance(node, (rx.Group, rx.Repeat)):
        return _has_anchor(node.item)
    return False


def _table(node: rx.Regex) -> Table:
    if isinstance(node, rx.Lit):
        return _const(False, char_set(((ord(node.char), ord(node.char)),)))
    if isinstance(node, rx.AnyChar):
        return _const(False, char_set(_complement(((0x0A, 0x0A),))))
    if isinstance(node, rx.CharClass):
        ranges = _complement(node.ranges) if node.negated else node.ranges
        return _const(False, char_set(ranges))
    if isinstance(node, rx.Empty):
        return _const(True, None)
    if isinstance(node, rx.Bol):
        return {(s, e): (s, None) for s, e in CONTEXTS}
    if isinstance(node, rx.Eol):
        return {(s, e): (e, None) for s, e in CONTEXTS}
    if isinstance(node, rx.Group):
        return _table(node.item)
    if isinstance(node, rx.Concat):
        acc = _table(node.items[0])
        for item in node.items[1:]:
            acc = _concat2(acc, _table(item))
        return acc
    if isinstance(node, rx.Alt):
        tables = [_table(i) for i in node.items]
        return {c: (any(t[c][0] for t in tables), _union(*(t[c][1] for t in tables))) for c in CONTEXTS}
    if isinstance(node, rx.Repeat):
        return _repeat(_table(node.item), node.min, node.max)
    raise TypeError(f"not a regex node: {node!r}")


def _plain(node: rx.Regex) -> z3.ReRef | None:
    """Anchor-free translation (the language of whole matches)."""
    t = _table(node)
    return _lang(*t[(False, False)])


@functools.lru_cache(maxsize=4096)
def search_regex(pattern: str, flags: str) -> z3.ReRef:
    """The set of strings in which `/pattern/flags` finds a match (`s matches /pattern/flags`)."""
    node = rx.parse_regex(pattern, flags)
    if not _has_anchor(node):
        lang = _plain(node)
        if lang is None:
            return z3.Empty(_SORT)
        return z3.Concat(SIGMA_STAR, lang, SIGMA_STAR)
    t = _table(node)
    alt = _union(
        _cat(SIGMA_PLUS, _lang(*t[(False, False)]), SIGMA_PLUS),
        _cat(_lang(*t[(True, False)]), SIGMA_PLUS),
        _cat(SIGMA_PLUS, _lang(*t[(False, True)])),
        _lang(*t[(True, True)]),
    )
    return alt if alt is not None else z3.Empty(_SORT)


def matches(s: z3.SeqRef, pattern: str, flags: str) -> z3.BoolRef:
    """`s matches /pattern/flags` as a Z3 formula."""
    return z3.InRe(s, search_regex(pattern, flags))
