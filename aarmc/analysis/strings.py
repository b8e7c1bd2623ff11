"""String values in the encoding: equivalence classes of literals where exact, string theory elsewhere.

Every string-valued place the conditions of one tool can read is a *leaf*: a
str/enum/path param, a part of an email (`local`, `domain`) or url (`scheme`,
`host`, `path`, and `rest` = userinfo, port, query and fragment together), an
element of a list, an env attribute, an identity or intent attribute. Leaves
that are compared with each other (`params.a == params.b`, `x in params.list`,
`set a = params.b`, two values tested with `from`) are joined into one
*component* and share one representation.

A component whose leaves are only ever compared for equality (`==`, `!=`,
`in`, `not in`) with literals and with each other is encoded *exactly* by an
integer index: one class per literal that occurs, plus one fresh class per
leaf instance (enough for every leaf to differ from every literal and from
each other). Two strings that are not literals are indistinguishable to such
a condition, so a fresh class stands for all of them. A component in which a
leaf is read with `startswith`, `endswith`, `contains`, `matches` or `len`
uses Z3's string theory, constrained to the values the leaf's type accepts
(`aarm_runtime.values`). This is what keeps the common policy (domains in a
set, enums, tags) out of the slow string theory (peers benchmark: 25x).
"""

from __future__ import annotations

import functools
import string
from typing import Any, Iterable

import attrs
import z3
from aarm_runtime import values
from aarm_runtime.values import EnumT

from aarmc.analysis.regex_z3 import char_set, string_val
from aarmc.semantics import types as ty

LeafKey = tuple

# ---- leaf kinds and their valid values ----------------------------------------------

# A kind is "str", "path", "local", "domain", "scheme", "host", "upath", "rest" or ("enum", values).


def kind_valid(kind: Any, value: Any) -> bool:
    """Whether a literal can be the value of a leaf of this kind (values.py decides)."""
    if kind == "rest":
        return isinstance(value, tuple)
    if not isinstance(value, str):
        return False
    try:
        values.check_string(value)
        if kind == "str":
            return True
        if isinstance(kind, tuple):
            return value in kind[1]
        if kind == "path":
            return values.parse_path(value).text == value
        if kind == "local":
            return values.parse_email(value + "@x.example").local == value
        if kind == "domain":
            return "@" not in value and values.parse_email("a@" + value).domain == value
        if kind == "scheme":
            return values.parse_url(value + "://x.example").scheme == value
        if kind == "host":
            return values.parse_url("http://" + value).host == value
        if kind == "upath":
            return (value == "" or value.startswith("/")) and values.parse_url("http://x.example" + value).path == value
    except values.InvalidValue:
        return False
    raise ValueError(f"unknown leaf kind {kind!r}")


def _invisible_ranges() -> tuple[tuple[int, int], ...]:
    # values.INVISIBLE is a regex class body of actual characters and ranges.
    text = values.INVISIBLE
    out, i = [], 0
    while i < len(text):
        if i + 2 < len(text) and text[i + 1] == "-":
            out.append((ord(text[i]), ord(text[i + 2])))
            i += 3
        else:
            out.append((ord(text[i]), ord(text[i])))
            i += 1
    return tuple(out)


def _minus(ranges, holes):
    from aarmc.analysis.regex_z3 import _complement
    keep = _complement(tuple(sorted(holes)))
    out = []
    for lo, hi in ranges:
        for klo, khi in keep:
            a, b = max(lo, klo), min(hi, khi)
            if a <= b:
                out.append((a, b))
    return tuple(out)


def _chars(text: str):
    return tuple((ord(c), ord(c)) for c in text)


@functools.lru_cache(maxsize=None)
def kind_regex(kind: Any) -> z3.ReRef | None:
    """The set of values a string-theory leaf of this kind may take (None: any valid string).

    Exact for str, enum, local, domain and scheme; for host and url paths a
    close over-approximation (IPv6 literals, percent-encoding details): the
    witness builder validates every value and excludes any the runtime rejects.
    """
    invisible = _invisible_ranges()
    visible = char_set(_minus(((0, 0x2FFFF),), invisible))
    if kind == "str":
        return None
    if kind == "local":
        return z3.Plus(visible)
    if kind == "domain":
        return z3.Plus(char_set(_minus(((0, 0x2FFFF),), invisible + ((ord("@"), ord("@")), (0x41, 0x5A)))))
    if kind == "scheme":
        return z3.Concat(z3.Range("a", "z"),
                         z3.Star(char_set(_chars(string.ascii_lowercase + string.digits + "+.-"))))
    if kind == "host":
        label_chars = char_set(_chars(string.ascii_lowercase + string.digits + "-_~!$&'()*+,;="))
        label = z3.Plus(label_chars)
        digits = z3.Plus(z3.Range("0", "9"))
        hexnum = z3.Concat(z3.Re(string_val("0x")), z3.Star(char_set(_chars("0123456789abcdef"))))
        last = z3.Intersect(label, z3.Complement(z3.Union(digits, hexnum)))
        reg = z3.Concat(z3.Star(z3.Concat(label, z3.Re(string_val(".")))), last)
        octet = z3.Union(z3.Re(string_val("0")), z3.Concat(z3.Range("1", "9"), z3.Option(z3.Range("0", "9"))),
                         z3.Concat(z3.Re(string_val("1")), z3.Range("0", "9"), z3.Range("0", "9")),
                         z3.Concat(z3.Re(string_val("2")), z3.Range("0", "4"), z3.Range("0", "9")),
                         z3.Concat(z3.Re(string_val("25")), z3.Range("0", "5")))
        dot = z3.Re(string_val("."))
        quad = z3.Concat(octet, dot, octet, dot, octet, dot, octet)
        ipv6 = z3.Concat(z3.Re(string_val("[")), z3.Plus(char_set(_chars("0123456789abcdef:."))), z3.Re(string_val("]")))
        return z3.Union(reg, quad, ipv6)
    if kind == "upath":
        unreserved = string.ascii_letters + string.digits + "-._~"
        plain = char_set(_chars(unreserved + "!$&'()*+,;=:@"))
        hexd = "0123456789ABCDEF"
        pct_parts = []
        for h in hexd:
            los = [lo for lo in hexd if chr(int(h + lo, 16)) not in unreserved]
            if los:
                pct_parts.append(z3.Concat(z3.Re(string_val("%" + h)), char_set(_chars("".join(los)))))
        non_ascii = char_set(_minus(((0x80, 0x2FFFF),), invisible))
        pchar = z3.Union(plain, non_ascii, *pct_parts)
        seg = z3.Intersect(z3.Star(pchar), z3.Complement(z3.Union(z3.Re(string_val(".")), z3.Re(string_val("..")))))
        return z3.Star(z3.Concat(z3.Re(string_val("/")), seg))
    if kind == "path":
        seg_char = char_set(_minus(((0, 0x2FFFF),), ((0, 0), (ord("/"), ord("/")))))
        seg = z3.Intersect(z3.Plus(seg_char), z3.Complement(z3.Union(z3.Re(string_val(".")), z3.Re(string_val("..")))))
        rel = z3.Concat(seg, z3.Star(z3.Concat(z3.Re(string_val("/")), seg)))
        return z3.Union(z3.Re(string_val("/")), z3.Re(string_val(".")),
                        z3.Concat(z3.Re(string_val("/")), rel), rel)
    if isinstance(kind, tuple):
        return z3.Union(*[z3.Re(string_val(v)) for v in kind[1]]) if len(kind[1]) > 1 else z3.Re(string_val(kind[1][0]))
    raise ValueError(f"unknown leaf kind {kind!r}")


# ---- fresh values ----------------------------------------------------------------------

_SLASH_KINDS = {"upath"}
_PLAIN_KINDS = {"str", "path", "local", "domain", "scheme", "host"}


def fresh_values(kinds: Iterable[Any], literals: Iterable[Any], count: int) -> list[Any] | None:
    """`count` distinct readable values valid for every kind and equal to no literal (None: impossible)."""
    kinds = set(kinds)
    lits = set(literals)
    if "rest" in kinds:
        if kinds != {"rest"}:
            return None
        out, i = [], 0
        candidates = [(None, None, None, None)]
        while len(out) < count:
            cand = candidates[i] if i < len(candidates) else (None, None, _name(i), None)
            i += 1
            if cand not in lits:
                out.append(cand)
        return out
    # An enum leaf never takes a fresh value; the other leaves of its component may.
    plain = {k for k in kinds if not isinstance(k, tuple)}
    if not plain:
        return []
    if plain <= _PLAIN_KINDS:
        prefix = ""
    elif plain <= _SLASH_KINDS | {"str", "path", "local"}:
        prefix = "/"
    else:
        return None
    out, i = [], 0
    while len(out) < count:
        cand = prefix + _name(i)
        i += 1
        if cand not in lits:
            out.append(cand)
    return out


def _name(i: int) -> str:
    # "xqa", "xqb", ...: readable, three characters (a provenance token), lower case (a valid domain or host).
    letters = string.ascii_lowercase
    name = ""
    n = i
    while True:
        name = letters[n % 26] + name
        n //= 26
        if n == 0:
            break
    return "xq" + name


# ---- the analysis ----------------------------------------------------------------------------

class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[LeafKey, LeafKey] = {}

    def add(self, x: LeafKey) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: LeafKey) -> LeafKey:
        self.add(x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: LeafKey, b: LeafKey) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb, key=repr)] = min(ra, rb, key=repr)


@attrs.define
class Component:
    """Leaves that share one representation.

    `mode`: "classes" (an index over literals and fresh values), "cells" (an
    index over the cells of automata.py: one representative string per truth
    vector of the leaf's atoms) or "theory" (a Z3 string).
    """
    root: LeafKey
    leaves: set = attrs.field(factory=set)
    kinds: set = attrs.field(factory=set)
    literals: set = attrs.field(factory=set)
    string_theory: bool = False
    instances: int = 0
    domain: list = attrs.field(factory=list)  # classes: literals then fresh values; cells: representatives
    fresh_start: int = 0
    mode: str = "classes"
    atoms: tuple = ()

    def index(self, value: Any) -> int | None:
        if self.mode == "cells":
            # Equality atoms make every literal's cell a singleton, whose representative is the literal.
            return self.domain.index(value) if value in self.domain else None
        try:
            return self.domain.index(value)
        except ValueError:
            return None


def scalar_shape(t: Any) -> dict[str, Any] | None:
    """The leaf fields of a scalar type and their kinds (None for non-string scalars)."""
    if t == ty.STR:
        return {"": "str"}
    if t == ty.PATH:
        return {"": "path"}
    if isinstance(t, EnumT):
        return {"": ("enum", tuple(t.values))}
    if t == ty.EMAIL:
        return {"local": "local", "domain": "domain"}
    if t == ty.URL:
        return {"scheme": "scheme", "host": "host", "path": "upath", "rest": "rest"}
    return None


def literal_leaves(value: Any) -> dict[str, Any] | None:
    """The leaf values of a literal of a string-like type, keyed like `scalar_shape`."""
    if isinstance(value, str):
        return {"": value}
    if isinstance(value, values.Path):
        return {"": value.text}
    if isinstance(value, values.Email):
        return {"local": value.local, "domain": value.domain}
    if isinstance(value, values.Url):
        return {"scheme": value.scheme, "host": value.host, "path": value.path, "rest": url_rest(value)}
    return None


def url_rest(u: values.Url) -> tuple:
    return (u.userinfo, u.port, u.query, u.fragment)


class StringPlan:
    """Which leaves share a representation, and whether it is exact classes or string theory."""

    def __init__(self) -> None:
        self.uf = _UnionFind()
        self.kinds: dict[LeafKey, Any] = {}
        self.literals: dict[LeafKey, set] = {}
        self.needs_theory: set[LeafKey] = set()
        self.instances: dict[LeafKey, int] = {}
        self.components: dict[LeafKey, Component] = {}
        self.atoms: dict[LeafKey, set] = {}
        self.nonunary: set[LeafKey] = set()
        self.frozen = False

    # -- building

    def leaf(self, key: LeafKey, kind: Any, instances: int = 1) -> None:
        self.uf.add(key)
        self.kinds[key] = kind
        if isinstance(kind, tuple):
            # Every value of an enum is a class of its own: the leaf can hold nothing else.
            self.literals.setdefault(key, set()).update(kind[1])
        self.instances[key] = max(self.instances.get(key, 0), instances)

    def join(self, a: LeafKey, b: LeafKey) -> None:
        self.uf.union(a, b)

    def literal(self, key: LeafKey, value: Any) -> None:
        self.literals.setdefault(key, set()).add(value)

    def theory(self, key: LeafKey) -> None:
        self.needs_theory.add(key)

    def atom(self, key: LeafKey, atom: tuple) -> None:
        """A unary regular predicate the conditions read the leaf through (see automata.py)."""
        self.needs_theory.add(key)
        self.atoms.setdefault(key, set()).add(atom)

    def not_unary(self, key: LeafKey) -> None:
        """The leaf is compared with another non-literal string: no cells."""
        self.needs_theory.add(key)
        self.nonunary.add(key)

    def freeze(self) -> None:
        comps: dict[LeafKey, Component] = {}
        for key in self.uf.parent:
            root = self.uf.find(key)
            comp = comps.setdefault(root, Component(root=root))
            comp.leaves.add(key)
            if key in self.kinds:
                comp.kinds.add(self.kinds[key])
            comp.literals |= self.literals.get(key, set())
            comp.instances += self.instances.get(key, 1)
            if key in self.needs_theory:
                comp.string_theory = True
        for comp in comps.values():
            if "rest" in comp.kinds:
                comp.string_theory = False
            if comp.string_theory:
                self._try_cells(comp)
            if comp.mode == "classes" and not comp.string_theory:
                lits = sorted(comp.literals, key=repr)
                # Keep only literals some leaf of the component can hold.
                lits = [v for v in lits if any(kind_valid(k, v) for k in comp.kinds)]
                fresh = fresh_values(comp.kinds, lits, max(comp.instances, 1))
                if fresh is None:
                    comp.string_theory = True
                else:
                    comp.domain = lits + fresh
                    comp.fresh_start = len(lits)
            if comp.string_theory:
                comp.mode = "theory"
            for key in comp.leaves:
                self.components[key] = comp
        self.frozen = True

    def component(self, key: LeafKey) -> Component:
        return self.components[key]

    def _try_cells(self, comp: Component) -> None:
        from aarmc.analysis import automata
        if len(comp.leaves) != 1 or comp.leaves & self.nonunary or len(comp.kinds) != 1:
            return
        (key,) = comp.leaves
        (kind,) = comp.kinds
        if isinstance(kind, tuple):
            return
        atoms = set(self.atoms.get(key, set()))
        for lit in comp.literals:
            if isinstance(lit, str):
                atoms.add(("eq", lit))
        atoms.add(("len", 2))  # has a provenance token (3 characters or more)
        order = sorted(atoms, key=repr)
        try:
            cells = automata.explore(order, kind)
        except automata.TooLarge:
            return
        reps = []
        for vec in sorted(cells, key=repr):
            rep = next((c for c in cells[vec] if kind_valid(kind, c)), None)
            if rep is None:
                return  # validity is over-approximated for this kind and no candidate is valid
            reps.append(rep)
        comp.mode = "cells"
        comp.string_theory = False
        comp.domain = reps
        comp.fresh_start = len(reps)
        comp.atoms = tuple(order)
