"""Symbolic values: one Python object per typed value of the encoding.

Each class knows how to compare itself with another value of its type and
with a literal, how to build an if-then-else with another value, and how to
read its concrete canonical value back from a model. Literals stay Python
values (`Lit`) until they meet a symbolic value, which then converts them to
its own representation (an equivalence-class index or a string constant).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import z3
from aarm_runtime import values

from aarmc.analysis.regex_z3 import string_of, string_val
from aarmc.analysis.strings import Component


class AnalysisBug(AssertionError):
    """An internal inconsistency of the encoding (never a user error)."""


TRUE = z3.BoolVal(True)
FALSE = z3.BoolVal(False)
# Z3 hash-conses terms, so each constant has one id; comparing ids is one C call,
# where z3.is_true / z3.is_false take several (they dominated building large formulas).
_TRUE_ID = TRUE.get_id()
_FALSE_ID = FALSE.get_id()


def is_true(x: z3.BoolRef) -> bool:
    return x.get_id() == _TRUE_ID


def is_false(x: z3.BoolRef) -> bool:
    return x.get_id() == _FALSE_ID


# The z3py constructors coerce and sort-check every argument in Python, which
# dominated building the decision formulas; these call the C API directly on
# terms already known to be booleans (or of one sort, for eq / ite).
_CTX = z3.main_ctx()
from z3.z3 import _to_expr_ref as _to_expr  # noqa: E402  (the wrapper z3py uses for every result)


def _bool(ast) -> z3.BoolRef:
    return z3.BoolRef(ast, _CTX)


def _nary(fn, items: list) -> z3.BoolRef:
    arr = (z3.Ast * len(items))()
    for i, x in enumerate(items):
        arr[i] = x.as_ast()
    return _bool(fn(_CTX.ref(), len(items), arr))


def and_(*xs: z3.BoolRef) -> z3.BoolRef:
    """Conjunction that folds constants (keeps formulas small for the common case)."""
    items = []
    for x in xs:
        i = x.get_id()
        if i == _FALSE_ID:
            return FALSE
        if i != _TRUE_ID:
            items.append(x)
    if not items:
        return TRUE
    return items[0] if len(items) == 1 else _nary(z3.Z3_mk_and, items)


def or_(*xs: z3.BoolRef) -> z3.BoolRef:
    items = []
    for x in xs:
        i = x.get_id()
        if i == _TRUE_ID:
            return TRUE
        if i != _FALSE_ID:
            items.append(x)
    if not items:
        return FALSE
    return items[0] if len(items) == 1 else _nary(z3.Z3_mk_or, items)


def not_(x: z3.BoolRef) -> z3.BoolRef:
    i = x.get_id()
    if i == _TRUE_ID:
        return FALSE
    if i == _FALSE_ID:
        return TRUE
    return _bool(z3.Z3_mk_not(_CTX.ref(), x.as_ast()))


def eq_(a: z3.ExprRef, b: z3.ExprRef) -> z3.BoolRef:
    """`a == b` for two terms of one sort."""
    if a.get_id() == b.get_id():
        return TRUE
    return _bool(z3.Z3_mk_eq(_CTX.ref(), a.as_ast(), b.as_ast()))


def implies(a: z3.BoolRef, b: z3.BoolRef) -> z3.BoolRef:
    return or_(not_(a), b)


def ite(c: z3.BoolRef, a: z3.ExprRef, b: z3.ExprRef) -> z3.ExprRef:
    """If-then-else that folds a constant condition and equal branches."""
    i = c.get_id()
    if i == _TRUE_ID or a.get_id() == b.get_id():
        return a
    if i == _FALSE_ID:
        return b
    if a.sort_kind() != b.sort_kind():
        return z3.If(c, a, b)  # int / real mixes need z3py's coercion
    return _to_expr(z3.Z3_mk_ite(_CTX.ref(), c.as_ast(), a.as_ast(), b.as_ast()), _CTX)


class Lit:
    """A literal value (canonical, from the IR) that has not met a symbolic value yet."""

    def __init__(self, value: Any) -> None:
        self.value = value


class SVal:
    def eq(self, other: "SVal | Lit") -> z3.BoolRef:
        raise NotImplementedError

    def ite(self, cond: z3.BoolRef, other: "SVal") -> "SVal":
        raise NotImplementedError

    def const(self, value: Any) -> "SVal":
        """A constant of this value's representation."""
        raise NotImplementedError

    def concrete(self, model: z3.ModelRef) -> Any:
        raise NotImplementedError

    def key(self) -> tuple:
        """Identity of the symbolic value (equal Z3 terms, equal keys)."""
        raise NotImplementedError


class StrV(SVal):
    """A string leaf: an equivalence-class index (exact classes) or a Z3 string."""

    def __init__(self, term: z3.ExprRef, comp: Component, kind: Any) -> None:
        self.term = term
        self.comp = comp
        self.kind = kind

    @property
    def mode(self) -> str:
        return self.comp.mode

    @property
    def exact_classes(self) -> bool:
        """An index (equivalence classes or cells), not a Z3 string."""
        return self.comp.mode != "theory"

    def _lit_term(self, value: Any) -> z3.ExprRef | None:
        if isinstance(value, values.Path):
            value = value.text
        if self.comp.mode == "cells":
            i = self.comp.index(value)
            if i is None:
                if isinstance(value, str) and ("eq", value) not in self.comp.atoms:
                    raise AnalysisBug(f"literal {value!r} is not an atom of the cells of {self.comp.root}")
                return None  # a literal no valid value equals
            return z3.IntVal(i)
        if self.exact_classes:
            i = self.comp.index(value)
            if i is None:
                if value not in self.comp.literals:
                    raise AnalysisBug(f"literal {value!r} missing from the classes of {self.comp.root}")
                return None  # a literal no leaf of this component can hold
            return z3.IntVal(i)
        if not isinstance(value, str):
            raise AnalysisBug(f"non-string literal {value!r} for a string leaf")
        return string_val(value)

    def eq(self, other: "SVal | Lit") -> z3.BoolRef:
        if isinstance(other, Lit):
            t = self._lit_term(other.value)
            return FALSE if t is None else self.term == t
        if not isinstance(other, StrV) or other.comp is not self.comp:
            raise AnalysisBug("comparing string leaves of different components")
        return self.term == other.term

    def ite(self, cond, other):
        if other is self:
            return self
        return StrV(ite(cond, self.term, other.term), self.comp, self.kind)

    def const(self, value):
        t = self._lit_term(value)
        if t is None:
            raise AnalysisBug(f"constant {value!r} cannot be held by {self.comp.root}")
        return StrV(t, self.comp, self.kind)

    def concrete(self, model):
        v = model.eval(self.term, model_completion=True)
        if self.exact_classes:
            return self.comp.domain[v.as_long()]
        return string_of(v)

    def key(self):
        return ("s", self.term.get_id())

    def text(self) -> z3.SeqRef:
        if self.exact_classes:
            raise AnalysisBug("string operation on an exact-class leaf")
        return self.term

    def atom(self, atom: tuple) -> z3.BoolRef:
        """A unary string predicate (automata.py atoms): a table lookup in cell mode."""
        from aarmc.analysis import automata
        if self.comp.mode == "cells":
            if atom not in self.comp.atoms:
                raise AnalysisBug(f"atom {atom!r} was not planned for {self.comp.root}")
            hits = [i for i, rep in enumerate(self.comp.domain) if automata.holds(atom, rep)]
            return or_(*(self.term == i for i in hits))
        raise AnalysisBug("atom lookup on a leaf without cells")

    def length(self) -> z3.ArithRef:
        if self.comp.mode == "cells":
            expr: Any = z3.IntVal(len(self.comp.domain[-1]))
            for i in reversed(range(len(self.comp.domain) - 1)):
                expr = z3.If(self.term == i, len(self.comp.domain[i]), expr)
            return expr
        return z3.Length(self.text())


class NumV(SVal):
    def __init__(self, term: z3.ArithRef, is_int: bool) -> None:
        self.term = term
        self.is_int = is_int

    @staticmethod
    def lit_term(value: Any) -> z3.ArithRef:
        if isinstance(value, bool):
            raise AnalysisBug("a boolean is not a number")
        if isinstance(value, int):
            return z3.IntVal(value)
        return z3.RealVal(values.canonical_decimal(Decimal(value)))

    def real(self) -> z3.ArithRef:
        return self.term if not self.is_int else z3.ToReal(self.term)

    def eq(self, other):
        if isinstance(other, Lit):
            if isinstance(other.value, bool) or not isinstance(other.value, (int, Decimal)):
                return FALSE
            return num_cmp("==", self, NumV(self.lit_term(other.value), isinstance(other.value, int)))
        return num_cmp("==", self, other)

    def ite(self, cond, other):
        if other is self:
            return self
        if self.is_int and other.is_int:
            return NumV(ite(cond, self.term, other.term), True)
        return NumV(ite(cond, self.real(), other.real()), False)

    def const(self, value):
        if self.is_int:
            return NumV(z3.IntVal(value), True)
        return NumV(self.lit_term(value) if isinstance(value, Decimal) else z3.RealVal(value), False)

    def concrete(self, model):
        v = model.eval(self.term, model_completion=True)
        if self.is_int:
            return v.as_long()
        return rational_to_decimal(v)

    def key(self):
        return ("n", self.term.get_id())


def rational_to_decimal(v: z3.ExprRef) -> Decimal:
    num, den = v.numerator_as_long(), v.denominator_as_long()
    d = den
    twos = fives = 0
    while d % 2 == 0:
        d //= 2
        twos += 1
    while d % 5 == 0:
        d //= 5
        fives += 1
    if d != 1:
        raise AnalysisBug(f"model value {num}/{den} is not a finite decimal")
    scale = max(twos, fives)
    return Decimal(num * (10 ** scale) // den).scaleb(-scale)


def num_cmp(op: str, a: NumV, b: NumV) -> z3.BoolRef:
    if a.is_int and b.is_int:
        x, y = a.term, b.term
    else:
        x, y = a.real(), b.real()
    return {"==": lambda: x == y, "!=": lambda: x != y, "<": lambda: x < y, "<=": lambda: x <= y,
            ">": lambda: x > y, ">=": lambda: x >= y}[op]()


class BoolV(SVal):
    def __init__(self, term: z3.BoolRef) -> None:
        self.term = term

    def eq(self, other):
        if isinstance(other, Lit):
            if not isinstance(other.value, bool):
                return FALSE
            return self.term if other.value else not_(self.term)
        return self.term == other.term

    def ite(self, cond, other):
        if other is self:
            return self
        return BoolV(ite(cond, self.term, other.term))

    def const(self, value):
        return BoolV(z3.BoolVal(bool(value)))

    def concrete(self, model):
        return z3.is_true(model.eval(self.term, model_completion=True))

    def key(self):
        return ("b", self.term.get_id())


class EmailV(SVal):
    def __init__(self, local: StrV, domain: StrV) -> None:
        self.local = local
        self.domain = domain

    def eq(self, other):
        if isinstance(other, Lit):
            if not isinstance(other.value, values.Email):
                return FALSE
            return and_(self.local.eq(Lit(other.value.local)), self.domain.eq(Lit(other.value.domain)))
        return and_(self.local.eq(other.local), self.domain.eq(other.domain))

    def ite(self, cond, other):
        if other is self:
            return self
        return EmailV(self.local.ite(cond, other.local), self.domain.ite(cond, other.domain))

    def const(self, value):
        return EmailV(self.local.const(value.local), self.domain.const(value.domain))

    def concrete(self, model):
        return values.Email(local=self.local.concrete(model), domain=self.domain.concrete(model))

    def field(self, name: str) -> StrV:
        return {"local": self.local, "domain": self.domain}[name]

    def key(self):
        return ("e", self.local.key(), self.domain.key())


class UrlV(SVal):
    PARTS = ("scheme", "host", "path", "rest")

    def __init__(self, scheme: StrV, host: StrV, path: StrV, rest: StrV) -> None:
        self.parts = {"scheme": scheme, "host": host, "path": path, "rest": rest}

    @staticmethod
    def lit_parts(u: values.Url) -> dict[str, Any]:
        return {"scheme": u.scheme, "host": u.host, "path": u.path, "rest": (u.userinfo, u.port, u.query, u.fragment)}

    def eq(self, other):
        if isinstance(other, Lit):
            if not isinstance(other.value, values.Url):
                return FALSE
            lp = self.lit_parts(other.value)
            return and_(*(self.parts[p].eq(Lit(lp[p])) for p in self.PARTS))
        return and_(*(self.parts[p].eq(other.parts[p]) for p in self.PARTS))

    def ite(self, cond, other):
        if other is self:
            return self
        return UrlV(*(self.parts[p].ite(cond, other.parts[p]) for p in self.PARTS))

    def const(self, value):
        lp = self.lit_parts(value)
        return UrlV(*(self.parts[p].const(lp[p]) for p in self.PARTS))

    def concrete(self, model):
        c = {p: self.parts[p].concrete(model) for p in self.PARTS}
        userinfo, port, query, fragment = c["rest"]
        return values.Url(scheme=c["scheme"], host=c["host"], port=port, path=c["path"], query=query,
                          fragment=fragment, userinfo=userinfo)

    def field(self, name: str) -> StrV:
        return self.parts[name]

    def key(self):
        return ("u",) + tuple(self.parts[p].key() for p in self.PARTS)


class PathV(StrV):
    """A `path` value: its canonical text as a string leaf."""

    def concrete(self, model):
        return values.Path(super().concrete(model))

    def ite(self, cond, other):
        if other is self:
            return self
        return PathV(ite(cond, self.term, other.term), self.comp, self.kind)

    def const(self, value):
        base = super().const(value)
        return PathV(base.term, self.comp, self.kind)


class JsonDomain:
    """The json values a tool's conditions can tell apart: literals (by canonical text) and fresh ids.

    Kinds: 0 null, 1 bool, 2 number, 3 string, 4 array, 5 object. null, true,
    false, "", [] and {} are always literals, so a fresh id is a number or a
    non-empty string, array or object, of which there are always more.
    """
    NULL, BOOL, NUM, STR, ARR, OBJ = range(6)

    def __init__(self, literals: list[Any], fresh: int, name: str) -> None:
        base = [None, True, False, "", (), values.FrozenJson({})]
        seen: dict[str, Any] = {}
        for v in base + list(literals):
            seen.setdefault(values.canonical_json(v), v)
        self.literals = list(seen.values())
        self.texts = list(seen.keys())
        self.m = len(self.literals)
        self.size = self.m + fresh
        self.fresh_kind = [z3.Int(f"{name}!jk{j}") for j in range(fresh)]
        self.fresh_len = [z3.Int(f"{name}!jl{j}") for j in range(fresh)]

    @staticmethod
    def kind_of(v: Any) -> int:
        if v is None:
            return JsonDomain.NULL
        if isinstance(v, bool):
            return JsonDomain.BOOL
        if isinstance(v, (int, Decimal)):
            return JsonDomain.NUM
        if isinstance(v, str):
            return JsonDomain.STR
        if isinstance(v, tuple):
            return JsonDomain.ARR
        return JsonDomain.OBJ

    @staticmethod
    def len_of(v: Any) -> int:
        return len(v) if isinstance(v, (str, tuple, values.FrozenJson)) else 0

    def index(self, v: Any) -> int | None:
        try:
            text = values.canonical_json(v)
        except TypeError:
            return None
        return self.texts.index(text) if text in self.texts else None

    def constraints(self) -> list[z3.BoolRef]:
        out = []
        for k, n in zip(self.fresh_kind, self.fresh_len):
            out += [k >= self.NUM, k <= self.OBJ, n >= 0,
                    z3.Implies(k == self.NUM, n == 0), z3.Implies(k != self.NUM, n >= 1)]
        return out

    def kind_term(self, i: z3.ArithRef) -> z3.ArithRef:
        expr: z3.ArithRef = z3.IntVal(0)
        for j in reversed(range(self.size)):
            kj = z3.IntVal(self.kind_of(self.literals[j])) if j < self.m else self.fresh_kind[j - self.m]
            expr = kj if j == self.size - 1 else z3.If(i == j, kj, expr)
        return expr

    def len_term(self, i: z3.ArithRef) -> z3.ArithRef:
        expr: z3.ArithRef = z3.IntVal(0)
        for j in reversed(range(self.size)):
            lj = z3.IntVal(self.len_of(self.literals[j])) if j < self.m else self.fresh_len[j - self.m]
            expr = lj if j == self.size - 1 else z3.If(i == j, lj, expr)
        return expr

    def realise(self, i: int, model: z3.ModelRef) -> Any:
        if i < self.m:
            return self.literals[i]
        j = i - self.m
        kind = model.eval(self.fresh_kind[j], model_completion=True).as_long()
        n = model.eval(self.fresh_len[j], model_completion=True).as_long()
        for variant in range(10_000):
            if kind == self.NUM:
                v: Any = 1000 + 17 * j + variant
            elif kind == self.STR:
                v = (chr(ord("a") + (j + variant) % 26) * n) if n else ""
                if variant >= 26:
                    v = v[:-1] + chr(ord("a") + variant % 26) + str(variant) if n > 1 else chr(0x100 + variant)
            elif kind == self.ARR:
                v = tuple([j + variant] + [0] * (n - 1))
            else:
                v = values.FrozenJson({f"k{k}": (j + variant if k == 0 else 0) for k in range(n)})
            if values.canonical_json(v) not in self.texts and self.len_of(v) == (n if kind != self.NUM else 0):
                return v
        raise AnalysisBug("no fresh json value")


class JsonV(SVal):
    def __init__(self, ident: z3.ArithRef, dom: JsonDomain) -> None:
        self.ident = ident
        self.dom = dom

    def eq(self, other):
        if isinstance(other, Lit):
            if isinstance(other.value, frozenset):
                return FALSE
            i = self.dom.index(other.value)
            if i is None:
                raise AnalysisBug(f"json literal {other.value!r} missing from the domain")
            return self.ident == i
        return self.ident == other.ident

    def ite(self, cond, other):
        if other is self:
            return self
        return JsonV(ite(cond, self.ident, other.ident), self.dom)

    def const(self, value):
        i = self.dom.index(value)
        if i is None:
            raise AnalysisBug("json constant missing from the domain")
        return JsonV(z3.IntVal(i), self.dom)

    def concrete(self, model):
        return self.dom.realise(model.eval(self.ident, model_completion=True).as_long(), model)

    def key(self):
        return ("j", self.ident.get_id())


class ListV(SVal):
    """A list of at most len(elems) elements; elements past `length` are ignored."""

    def __init__(self, length: z3.ArithRef, elems: list[SVal]) -> None:
        self.length = length
        self.elems = elems

    @property
    def bound(self) -> int:
        return len(self.elems)

    def active(self, i: int) -> z3.BoolRef:
        return z3.IntVal(i) < self.length if not z3.is_int_value(self.length) else z3.BoolVal(i < self.length.as_long())

    def eq(self, other):
        if isinstance(other, Lit):
            items = other.value
            if isinstance(items, frozenset) or not isinstance(items, tuple):
                return FALSE
            if len(items) > self.bound:
                return FALSE
            return and_(self.length == len(items), *(self.elems[i].eq(Lit(items[i])) for i in range(len(items))))
        n = min(self.bound, other.bound)
        return and_(self.length == other.length,
                    *(implies(self.active(i), self.elems[i].eq(other.elems[i])) for i in range(n)),
                    *(not_(self.active(i)) for i in range(n, self.bound)),
                    *(not_(other.active(i)) for i in range(n, other.bound)))

    def ite(self, cond, other):
        if other is self:
            return self
        if other.bound != self.bound:
            raise AnalysisBug("if-then-else of lists with different bounds")
        return ListV(ite(cond, self.length, other.length), [a.ite(cond, b) for a, b in zip(self.elems, other.elems)])

    def const(self, value):
        items = tuple(value)
        if len(items) > self.bound:
            raise AnalysisBug("list constant longer than the list bound")
        elems = [self.elems[i].const(items[i]) if i < len(items) else self.elems[i] for i in range(self.bound)]
        return ListV(z3.IntVal(len(items)), elems)

    def concrete(self, model):
        n = model.eval(self.length, model_completion=True).as_long()
        return tuple(self.elems[i].concrete(model) for i in range(n))

    def key(self):
        return ("l", self.length.get_id()) + tuple(e.key() for e in self.elems)


class TagsV(SVal):
    """`session.tags`: one boolean per declared tag."""

    def __init__(self, has: dict[str, z3.BoolRef]) -> None:
        self.has = has

    def key(self):
        return ("tags",)


def to_json_value(value: Any) -> Any:
    """A validated canonical value as action/session JSON (decimals stay Decimal)."""
    if isinstance(value, (values.Email, values.Url, values.Path)):
        return str(value)
    if isinstance(value, tuple):
        return [to_json_value(v) for v in value]
    if isinstance(value, values.FrozenJson):
        return {k: to_json_value(v) for k, v in value.items()}
    return value


