"""Cells: an exact finite encoding of a string leaf read only through regular unary predicates.

When every condition reads a string leaf only through `matches /re/`,
`startswith` / `endswith` / `contains` / `==` / `in` with literals and `len`
compared with constants, the leaf matters only through the truth values of
those *atoms*. The strings with one truth vector form a *cell*; a condition
cannot tell two strings of one cell apart. This module explores the product
of one automaton per atom (plus the leaf type's validity) breadth first and
returns one representative string per non-empty cell (the shortest one found,
in readable characters). The encoding then picks a cell index, and every atom
is a lookup in a table computed in Python — no string theory, and exact.

Z3's sequence solver needs seconds to minutes for a conjunction of a few
regexes with negations over one string (the `shell.exec` rules of the coding
agent spec); the product exploration takes milliseconds for such leaves.

>>> cells = explore([("re", r"git\\s+push", ""), ("contains", "--no-verify")], "str")
>>> sorted((matches(r"git\\s+push", "", c[0]), "--no-verify" in c[0]) for c in cells.values())
[(False, False), (False, True), (True, False), (True, True)]
"""

from __future__ import annotations

import string
from typing import Any, Iterable

from aarm_runtime import regex as rx
from aarm_runtime.regex import matches
from aarm_runtime.values import STRING_ALPHABET

from aarmc.analysis import strings

STATE_CAP = 20_000
CANDIDATES_PER_CELL = 8


class TooLarge(Exception):
    pass


# ---- NFA (Thompson) with zero-width ^ / $ edges ---------------------------------------

class _NFA:
    def __init__(self) -> None:
        self.edges: list[list[tuple[tuple, int]]] = []  # state -> [(ranges, target)]
        self.eps: list[list[tuple[str, int]]] = []  # state -> [("" | "bol" | "eol", target)]

    def new(self) -> int:
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def build(self, node: rx.Regex) -> tuple[int, int]:
        s, f = self.new(), self.new()
        self._frag(node, s, f)
        return s, f

    def _frag(self, node: rx.Regex, s: int, f: int) -> None:
        if isinstance(node, rx.Lit):
            self.edges[s].append((((ord(node.char), ord(node.char)),), f))
        elif isinstance(node, rx.AnyChar):
            self.edges[s].append((((0, 9), (11, rx.MAX_CHAR)), f))
        elif isinstance(node, rx.CharClass):
            ranges = _complement(node.ranges) if node.negated else node.ranges
            self.edges[s].append((tuple(ranges), f))
        elif isinstance(node, rx.Empty):
            self.eps[s].append(("", f))
        elif isinstance(node, rx.Bol):
            self.eps[s].append(("bol", f))
        elif isinstance(node, rx.Eol):
            self.eps[s].append(("eol", f))
        elif isinstance(node, rx.Group):
            self._frag(node.item, s, f)
        elif isinstance(node, rx.Concat):
            cur = s
            for i, item in enumerate(node.items):
                nxt = f if i == len(node.items) - 1 else self.new()
                self._frag(item, cur, nxt)
                cur = nxt
        elif isinstance(node, rx.Alt):
            for item in node.items:
                a, b = self.new(), self.new()
                self.eps[s].append(("", a))
                self._frag(item, a, b)
                self.eps[b].append(("", f))
        elif isinstance(node, rx.Repeat):
            cur = s
            for _ in range(node.min):
                nxt = self.new()
                self._frag(node.item, cur, nxt)
                cur = nxt
            if node.max is None:
                a, b = self.new(), self.new()
                self.eps[cur].append(("", a))
                self._frag(node.item, a, b)
                self.eps[b].append(("", a))
                self.eps[a].append(("", f))
                self.eps[cur].append(("", f))
            else:
                for _ in range(node.max - node.min):
                    nxt = self.new()
                    self.eps[cur].append(("", f))
                    self._frag(node.item, cur, nxt)
                    cur = nxt
                self.eps[cur].append(("", f))
        else:
            raise TypeError(f"not a regex node: {node!r}")

    def closure(self, states: Iterable[int], bol: bool, eol: bool) -> frozenset:
        out = set(states)
        stack = list(out)
        while stack:
            q = stack.pop()
            for kind, t in self.eps[q]:
                if (kind == "" or (kind == "bol" and bol) or (kind == "eol" and eol)) and t not in out:
                    out.add(t)
                    stack.append(t)
        return frozenset(out)


def _complement(ranges) -> tuple:
    out, start = [], 0
    for lo, hi in sorted(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= rx.MAX_CHAR:
        out.append((start, rx.MAX_CHAR))
    return tuple(out)


class _Search:
    """A lazily determinised search automaton: `s matches node` (sticky once matched)."""

    def __init__(self, node: rx.Regex) -> None:
        self.nfa = _NFA()
        self.start, self.final = self.nfa.build(node)
        self.ids: dict[Any, int] = {}
        self.states: list[Any] = []
        self.trans: dict[tuple[int, int], int] = {}
        init = self.nfa.closure({self.start}, bol=True, eol=False)
        self.initial = self._id(("init", init, self.final in init))

    def _id(self, key: Any) -> int:
        if key[2]:
            key = ("matched", frozenset(), True)
        if key not in self.ids:
            self.ids[key] = len(self.states)
            self.states.append(key)
        return self.ids[key]

    def step(self, state: int, symbol: int, char: int) -> int:
        k = (state, symbol)
        if k in self.trans:
            return self.trans[k]
        tag, nfa_states, matched = self.states[state]
        if matched:
            nxt = state
        else:
            moved = {t for q in nfa_states for ranges, t in self.nfa.edges[q] if _in(char, ranges)}
            closed = self.nfa.closure(moved | {self.start}, bol=False, eol=False)
            nxt = self._id(("mid", closed, self.final in closed))
        self.trans[k] = nxt
        return nxt

    def accepts(self, state: int) -> bool:
        tag, nfa_states, matched = self.states[state]
        if matched:
            return True
        return self.final in self.nfa.closure(nfa_states, bol=(tag == "init"), eol=True)


def _in(c: int, ranges) -> bool:
    return any(lo <= c <= hi for lo, hi in ranges)


def _literal(text: str) -> list[rx.Regex]:
    return [rx.Lit(ch) for ch in text]


def atom_regex(atom: tuple) -> rx.Regex | None:
    """The search regex of a string atom (None for length atoms)."""
    kind = atom[0]
    if kind == "re":
        return rx.parse_regex(atom[1], atom[2])
    if kind == "prefix":
        return rx.Concat(tuple([rx.Bol()] + _literal(atom[1])))
    if kind == "suffix":
        return rx.Concat(tuple(_literal(atom[1]) + [rx.Eol()]))
    if kind == "contains":
        return rx.Concat(tuple(_literal(atom[1]))) if atom[1] else rx.Empty()
    if kind == "eq":
        return rx.Concat(tuple([rx.Bol()] + _literal(atom[1]) + [rx.Eol()]))
    return None


def holds(atom: tuple, text: str) -> bool:
    """The atom's truth for a concrete string (what the encoding looks up)."""
    kind = atom[0]
    if kind == "re":
        return matches(atom[1], atom[2], text)
    if kind == "prefix":
        return text.startswith(atom[1])
    if kind == "suffix":
        return text.endswith(atom[1])
    if kind == "contains":
        return atom[1] in text
    if kind == "eq":
        return text == atom[1]
    if kind == "len":
        return len(text) > atom[1]
    raise ValueError(f"unknown atom {atom!r}")


# ---- validity of a leaf's type, over-approximated as a regex ---------------------------------

def _cls(ranges, negated=False) -> rx.CharClass:
    return rx.CharClass(tuple(sorted(ranges)), negated)


def validity_regex(kind: Any) -> rx.Regex | None:
    """A regex every valid value of the kind matches (exact for str/local/domain/scheme; other
    kinds are over-approximated and each representative is validated by `strings.kind_valid`)."""
    invisible = strings._invisible_ranges()
    if kind == "str":
        return None
    anchored = lambda body: rx.Concat((rx.Bol(), body, rx.Eol()))  # noqa: E731
    if kind == "local":
        return anchored(rx.Repeat(_cls(invisible, negated=True), 1, None))
    if kind == "domain":
        return anchored(rx.Repeat(_cls(tuple(invisible) + ((0x40, 0x40), (0x41, 0x5A)), negated=True), 1, None))
    if kind == "scheme":
        tail = _cls(tuple((ord(c), ord(c)) for c in string.ascii_lowercase + string.digits + "+.-"))
        return anchored(rx.Concat((_cls(((0x61, 0x7A),)), rx.Repeat(tail, 0, None))))
    if kind == "host":
        label = rx.Repeat(_cls(tuple((ord(c), ord(c)) for c in string.ascii_lowercase + string.digits
                                     + "-_~!$&'()*+,;=")), 1, None)
        reg = rx.Concat((rx.Repeat(rx.Concat((label, rx.Lit("."))), 0, None), label))
        ipv6 = rx.Concat((rx.Lit("["), rx.Repeat(_cls(tuple((ord(c), ord(c)) for c in "0123456789abcdef:.")), 1, None),
                          rx.Lit("]")))
        return anchored(rx.Alt((reg, ipv6)))
    if kind == "upath":
        seg = rx.Repeat(_cls(tuple(invisible) + ((ord("/"), ord("/")), (ord("?"), ord("?")), (ord("#"), ord("#"))),
                             negated=True), 0, None)
        return anchored(rx.Repeat(rx.Concat((rx.Lit("/"), seg)), 0, None))
    if kind == "path":
        return anchored(rx.Repeat(_cls(((0, 0),), negated=True), 1, None))
    return None


# ---- the product exploration ------------------------------------------------------------

def _alphabet(regexes: list[rx.Regex]) -> list[tuple[int, int, int]]:
    """The valid alphabet split into symbols no regex tells apart: (lo, hi, representative).

    Elementary intervals cut by every class boundary are grouped by the set of
    classes that contain them (characters in the same classes behave alike in
    every automaton); each group is one symbol with its most readable character.
    """
    cuts = {0, rx.MAX_CHAR + 1}
    classes: set[tuple] = set()

    def walk(node):
        if isinstance(node, rx.Lit):
            cuts.update((ord(node.char), ord(node.char) + 1))
            classes.add(((ord(node.char), ord(node.char)),))
        elif isinstance(node, rx.CharClass):
            for lo, hi in node.ranges:
                cuts.update((lo, hi + 1))
            classes.add(tuple(node.ranges))
        elif isinstance(node, rx.AnyChar):
            cuts.update((10, 11))
            classes.add(((10, 10),))
        elif isinstance(node, (rx.Concat, rx.Alt)):
            for i in node.items:
                walk(i)
        elif isinstance(node, (rx.Group, rx.Repeat)):
            walk(node.item)

    for r in regexes:
        walk(r)
    for lo, hi in STRING_ALPHABET:
        cuts.update((lo, hi + 1))
    # Readable characters get intervals of their own, so representatives can use them.
    for c in string.ascii_lowercase[:3] + "x" + string.digits[:1] + " ":
        cuts.update((ord(c), ord(c) + 1))
    bounds = sorted(cuts)
    class_list = sorted(classes)
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for lo, nxt in zip(bounds, bounds[1:]):
        hi = nxt - 1
        if not any(a <= lo and hi <= b for a, b in STRING_ALPHABET):
            continue
        sig = tuple(_in(lo, c) for c in class_list)
        groups.setdefault(sig, []).append((lo, hi))
    out = []
    for ivs in groups.values():
        rep = min((_readable(lo, hi) for lo, hi in ivs), key=_rank)
        out.append((ivs[0][0], ivs[-1][1], rep))
    out.sort(key=lambda iv: _rank(iv[2]))
    return out


_PREFERRED = string.ascii_lowercase + string.digits + " " + string.ascii_uppercase + "-_./:@" + string.punctuation


def _readable(lo: int, hi: int) -> int:
    for ch in _PREFERRED:
        if lo <= ord(ch) <= hi:
            return ord(ch)
    return lo


def _rank(c: int) -> tuple:
    ch = chr(c)
    return (0, _PREFERRED.index(ch)) if ch in _PREFERRED else (1, c)


def explore(atoms: list[tuple], kind: Any) -> dict[tuple, list[str]]:
    """Non-empty cells: truth vector over `atoms` -> candidate strings (shortest first).

    Raises TooLarge when the product exceeds STATE_CAP states. Cached: tools
    of one shape (a regex on every `cmd`) share the work.
    """
    key = (tuple(atoms), kind)
    if key not in _CACHE:
        try:
            _CACHE[key] = _explore(list(atoms), kind)
        except TooLarge as err:
            _CACHE[key] = err
    got = _CACHE[key]
    if isinstance(got, TooLarge):
        raise got
    return {vec: list(c) for vec, c in got.items()}


_CACHE: dict[tuple, Any] = {}


def _explore(atoms: list[tuple], kind: Any) -> dict[tuple, list[str]]:
    searches = []
    regexes = []
    for a in atoms:
        r = atom_regex(a)
        regexes.append(r) if r is not None else None
        searches.append(_Search(r) if r is not None else None)
    valid_re = validity_regex(kind)
    valid = _Search(valid_re) if valid_re is not None else None
    if valid_re is not None:
        regexes.append(valid_re)
    max_len = max([a[1] for a in atoms if a[0] == "len"], default=-1) + 1
    alphabet = _alphabet(regexes)
    init = tuple(s.initial if s is not None else 0 for s in searches) + ((valid.initial,) if valid else ())
    start = (init, 0)
    seen = {start: ""}
    queue = [start]
    cells: dict[tuple, list[str]] = {}
    head = 0
    while head < len(queue):
        state = queue[head]
        head += 1
        comps, length = state
        text = seen[state]
        if valid is None or valid.accepts(comps[-1]):
            vec = []
            for i, a in enumerate(atoms):
                if a[0] == "len":
                    vec.append(length > a[1])
                else:
                    vec.append(searches[i].accepts(comps[i]))
            got = cells.setdefault(tuple(vec), [])
            if len(got) < CANDIDATES_PER_CELL:
                got.append(text)
        for sym, (lo, hi, rep) in enumerate(alphabet):
            nxt_comps = []
            for i, s in enumerate(searches):
                nxt_comps.append(s.step(comps[i], sym, rep) if s is not None else 0)
            if valid is not None:
                nxt_comps.append(valid.step(comps[-1], sym, rep))
            nxt = (tuple(nxt_comps), min(length + 1, max_len))
            if nxt not in seen:
                seen[nxt] = text + chr(rep)
                queue.append(nxt)
                if len(seen) > STATE_CAP:
                    raise TooLarge(f"more than {STATE_CAP} automaton states")
    return cells
