"""The expression program of an artifact, turned into Python closures at load time.

Nothing from an artifact is ever handed to ``eval``, ``exec`` or ``compile``:
each node of the program (see `aarm_runtime.artifact`) selects one of the
closure factories below, which capture the node's operands as data.
Regular expressions are re-parsed by `aarm_runtime.regex` (the policy
language's subset) and run by its linear-time matcher.

Semantics are those of the reference interpreter (`aarmc/reference/evaluate.py`,
LANGUAGE.md §5.3), case for case:

- A closure ``f(p, c, m)`` reads the validated params ``p``, the
  `SessionContext` ``c`` and the per-decision scratch dict ``m`` (memoised
  shared sub-conditions under their node index, quantifier variables under
  negative slots). It returns a value, ``True``/``False``, or an `Unknown`
  (a term read absent context; ``fields`` names it), and raises
  `EvalFailure` when the term cannot be evaluated.
- ``and``/``or``/quantifiers are strong Kleene: a false conjunct (a true
  disjunct) absorbs unknowns and failures alike; otherwise the first
  non-boolean, then the first failure, then the union of unknowns decides.
  So evaluation may stop at the first absorbing operand without changing
  the result.
- Fast paths (exact-type checks before the general comparison) are taken
  only where they provably give the general result: ``str == str`` is JSON
  equality, ``int < Decimal`` is exact, a set of strings answers membership
  of a string.

A sub-expression shared by several rules of one tool (or occurring twice in
one condition) is evaluated once per decision: `build` memoises every
closed, non-trivial node with more than one parent.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from aarm_runtime import values
from aarm_runtime.artifact import (
    AND, CMP, COUNT, CTX, FIELD, FROM, HAS, LABEL, LEN, LIT, MATCH, NOT, OR, PARAM, QUANT, USED, VAR,
    ArtifactFormatError,
)

__all__ = ["EvalFailure", "Program", "Unknown", "children", "describe", "equal", "failure_message"]

_NONE: frozenset[str] = frozenset()

Closure = Callable[[dict, Any, dict], Any]


class Unknown:
    """The value of a term that read absent context; `fields` names what was missing."""

    __slots__ = ("fields",)

    def __init__(self, fields: frozenset[str]) -> None:
        self.fields = fields

    def __eq__(self, other: object) -> bool:
        return type(other) is Unknown and other.fields == self.fields

    def __hash__(self) -> int:
        return hash(self.fields)

    def __repr__(self) -> str:
        return f"Unknown({sorted(self.fields)})"


class EvalFailure(Exception):
    """A term that could not be evaluated (only reachable from an ill-typed program)."""


def failure_message(err: BaseException) -> str:
    """The text the reference gives a failure: the exception's message, else its type."""
    return str(err) or type(err).__name__


def describe(value: Any) -> str:
    return f"a `{type(value).__name__}`"


def _union(a: Any, b: Any) -> Unknown | None:
    """The reference's `_special` for two operands that did not fail."""
    ua = type(a) is Unknown
    ub = type(b) is Unknown
    if ua and ub:
        return Unknown(a.fields | b.fields)
    if ua:
        return a
    if ub:
        return b
    return None


# ---- value operations (reference: evaluate.py "comparisons") -----------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, Decimal)) and not isinstance(value, bool)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (values.Email, values.Url, values.Path)):
        return str(value)
    raise EvalFailure(f"expected a string, got {describe(value)}")


def equal(a: Any, b: Any) -> bool:
    """Value equality: JSON equality (`true` is not `1`, `1.0` is `1`); sets by their elements."""
    ta = type(a)
    if ta is type(b) and (ta is str or ta is int):
        return a == b
    if isinstance(a, frozenset) or isinstance(b, frozenset):
        if not (isinstance(a, frozenset) and isinstance(b, frozenset)):
            return False
        return len(a) == len(b) and all(any(equal(x, y) for y in b) for x in a)
    return values.json_equal(a, b)


def _member(item: Any, collection: Any) -> bool:
    if isinstance(collection, (tuple, frozenset, list)):
        return any(equal(item, element) for element in collection)
    if isinstance(collection, str) and isinstance(item, str):
        return item in collection
    raise EvalFailure(f"`in` needs a list or set on the right, got {describe(collection)}")


def _order(op: str, a: Any, b: Any) -> bool:
    if not ((_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))):
        raise EvalFailure(f"cannot order {describe(a)} and {describe(b)}")
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


def _compare(op: str, left: Any, right: Any) -> Any:
    special = _union(left, right)
    if special is not None:
        return special
    if op == "==":
        return equal(left, right)
    if op == "!=":
        return not equal(left, right)
    if op in ("<", "<=", ">", ">="):
        return _order(op, left, right)
    if op == "in":
        return _member(left, right)
    if op == "not in":
        return not _member(left, right)
    if op == "startswith":
        return _text(left).startswith(_text(right))
    if op == "endswith":
        return _text(left).endswith(_text(right))
    if op == "contains":
        if isinstance(left, (tuple, frozenset)):
            return _member(right, left)
        return _text(right) in _text(left)
    raise EvalFailure(f"unknown operator `{op}`")


def _and(results_iter: Any) -> Any:
    """Strong Kleene conjunction over (value | exception) results, stopping at false."""
    unknown = None
    failure = None
    bad = None
    for r in results_iter:
        if r is False:
            return False
        if r is True:
            continue
        if isinstance(r, BaseException):
            if failure is None:
                failure = r
        elif type(r) is Unknown:
            unknown = r if unknown is None else Unknown(unknown.fields | r.fields)
        elif bad is None:
            bad = (r,)
    if bad is not None:
        raise EvalFailure(f"expected a boolean, got {describe(bad[0])}")
    if failure is not None:
        raise EvalFailure(failure_message(failure))
    return unknown if unknown is not None else True


def _or(results_iter: Any) -> Any:
    unknown = None
    failure = None
    bad = None
    for r in results_iter:
        if r is True:
            return True
        if r is False:
            continue
        if isinstance(r, BaseException):
            if failure is None:
                failure = r
        elif type(r) is Unknown:
            unknown = r if unknown is None else Unknown(unknown.fields | r.fields)
        elif bad is None:
            bad = (r,)
    if bad is not None:
        raise EvalFailure(f"expected a boolean, got {describe(bad[0])}")
    if failure is not None:
        raise EvalFailure(failure_message(failure))
    return unknown if unknown is not None else False


def _results(fs: Sequence[Closure], p: dict, c: Any, m: dict):
    for f in fs:
        try:
            yield f(p, c, m)
        except Exception as err:  # noqa: BLE001 - a failure is a result that false/true can absorb
            yield err


_FIELDS = {values.Email: ("local", "domain"), values.Url: ("scheme", "host", "path")}


def _canonical_key(value: Any) -> str:
    return values.canonical_json(value)


# ---- the builder --------------------------------------------------------------------------


class Program:
    """Closures for the nodes of one artifact's expression program."""

    def __init__(self, nodes: Sequence[tuple], memoised: frozenset[int] = frozenset()) -> None:
        self.nodes = nodes
        self.memoised = memoised
        self._built: dict[tuple, Closure] = {}
        self._next_slot = -1
        self.free_vars = self._free_vars()
        self.may_be_unknown = self._may_be_unknown()
        for i, node in enumerate(nodes):
            if node[0] == MATCH:
                # Imported on first use: a policy without regexes loads without the matcher.
                from aarm_runtime import regex

                try:
                    regex.compile_matcher(node[2], node[3])
                except regex.RegexError as err:
                    raise ArtifactFormatError(f"nodes[{i}]", f"invalid regex: {err}") from None

    def _free_vars(self) -> list[frozenset[str]]:
        out: list[frozenset[str]] = []
        for node in self.nodes:
            op = node[0]
            if op == VAR:
                out.append(frozenset({node[1]}))
            elif op == QUANT:
                out.append(out[node[3]] | (out[node[4]] - {node[2]}))
            else:
                kids = _children(node)
                if not kids:
                    out.append(_NONE)
                elif len(kids) == 1:
                    out.append(out[kids[0]])
                else:
                    out.append(frozenset().union(*(out[k] for k in kids)))
        return out

    def _may_be_unknown(self) -> list[bool]:
        out: list[bool] = []
        for node in self.nodes:
            op = node[0]
            if op == CTX:
                out.append(node[1] != "session")
            elif op == COUNT:
                out.append(node[2] is not None)
            elif op == FROM:
                out.append(node[2] == "user" or out[node[1]])
            elif op == HAS:
                out.append(False)  # `has env.x` is false when absent, never unknown
            else:
                out.append(any(out[k] for k in _children(node)))
        return out

    def closure(self, i: int) -> Closure:
        """The closure of a node with no free variables (a rule condition, an assignment value)."""
        return self._build(i, {})

    def _build(self, i: int, scope: dict[str, int]) -> Closure:
        free = self.free_vars[i]
        # Closures depend only on the slots of their free variables: nodes
        # are shared (and built once) per binding of those.
        key = (i, tuple(sorted((v, scope.get(v, 0)) for v in free)))
        got = self._built.get(key)
        if got is not None:
            return got
        f = self._make(i, scope)
        if not free and i in self.memoised:
            f = _memo(i, f)
        self._built[key] = f
        return f

    def _make(self, i: int, scope: dict[str, int]) -> Closure:
        node = self.nodes[i]
        op = node[0]
        if op == LIT:
            return _const(node[1])
        if op == LABEL:
            return _const(node[2])
        if op == PARAM:
            return _param(node[1])
        if op == VAR:
            slot = scope.get(node[1])
            if slot is None:
                return _raise(f"unbound variable `{node[1]}`")
            return _var(slot)
        if op == FIELD:
            return _field(self._build(node[1], scope), node[2], self.nodes[node[1]])
        if op == CTX:
            return _ctx(node[1], node[2])
        if op == COUNT:
            return _count(frozenset(node[1]), node[2])
        if op == USED:
            return _used(frozenset(node[1]))
        if op == LEN:
            return _len(self._build(node[1], scope))
        if op == HAS:
            return _has(self.nodes[node[1]])
        if op == NOT:
            return _not(self._build(node[1], scope))
        if op in (AND, OR):
            fs = tuple(self._build(k, scope) for k in node[1])
            return _and_n(fs) if op == AND else _or_n(fs)
        if op == CMP:
            return self._cmp(node, scope)
        if op == MATCH:
            return _match(self._build(node[1], scope), node[2], node[3])
        if op == FROM:
            return _from(self._build(node[1], scope), node[2], frozenset(node[3]))
        if op == QUANT:
            _, kind, var, coll, body = node
            # One slot per quantifier closure: a closed quantifier is shared
            # wherever it occurs, so a depth-based slot could overwrite the
            # binding of an enclosing quantifier.
            slot = self._next_slot
            self._next_slot -= 1
            inner = dict(scope)
            inner[var] = slot
            return _quant(kind, self._build(coll, scope), self._build(body, inner), slot)
        raise ArtifactFormatError(f"nodes[{i}]", f"unknown opcode `{op}`")

    def _cmp(self, node: tuple, scope: dict[str, int]) -> Closure:
        _, op, li, ri = node
        left, right = self.nodes[li], self.nodes[ri]
        fl = self._build(li, scope)
        if right[0] == LIT:
            fast = _cmp_lit(op, fl, right[1])
            if fast is not None:
                fused = _fused(op, left, self.nodes[left[1]] if left[0] == FIELD else None, right[1], fast)
                return fused if fused is not None else fast
        if left[0] == LIT and op == "in" and right[0] == CTX and right[1:] == ("session", "tags") \
                and type(left[1]) is str:
            lit = left[1]
            return lambda p, c, m: lit in c.tags
        fr = self._build(ri, scope)

        def cmp(p: dict, c: Any, m: dict) -> Any:
            return _compare(op, fl(p, c, m), fr(p, c, m))

        return cmp


_ONE_CHILD = frozenset({FIELD, LEN, HAS, NOT, MATCH, FROM})


def _children(node: tuple) -> tuple[int, ...]:
    op = node[0]
    if op in _ONE_CHILD:
        return (node[1],)
    if op == CMP:
        return (node[2], node[3])
    if op == AND or op == OR:
        return node[1]
    if op == QUANT:
        return (node[3], node[4])
    return ()


def children(node: tuple) -> tuple[int, ...]:
    """The node indices a node refers to."""
    return _children(node)


# ---- closure factories ----------------------------------------------------------------------


_MISSING = object()


def _memo(i: int, f: Closure) -> Closure:
    def memo(p: dict, c: Any, m: dict) -> Any:
        r = m.get(i, _MISSING)
        if r is _MISSING:
            r = m[i] = f(p, c, m)
        return r

    return memo


def _const(value: Any) -> Closure:
    return lambda p, c, m: value


def _raise(message: str) -> Closure:
    def fail(p: dict, c: Any, m: dict) -> Any:
        raise EvalFailure(message)

    return fail


def _param(name: str) -> Closure:
    message = f"`params.{name}` is absent (an unguarded read of an optional param)"

    def param(p: dict, c: Any, m: dict) -> Any:
        try:
            return p[name]
        except KeyError:
            raise EvalFailure(message) from None

    return param


def _var(slot: int) -> Closure:
    return lambda p, c, m: m[slot]


def _field(base: Closure, name: str, base_node: tuple) -> Closure:
    owner = values.Email if name in ("local", "domain") else values.Url

    def slow(b: Any) -> Any:
        if type(b) is Unknown:
            return b
        if name not in _FIELDS.get(type(b), ()):
            raise EvalFailure(f"{describe(b)} has no field `.{name}`")
        return getattr(b, name)

    if base_node[0] == PARAM:
        pname = base_node[1]
        absent = f"`params.{pname}` is absent (an unguarded read of an optional param)"
        if name == "domain":
            def param_domain(p: dict, c: Any, m: dict) -> Any:
                try:
                    b = p[pname]
                except KeyError:
                    raise EvalFailure(absent) from None
                if type(b) is values.Email:
                    return b.domain
                return slow(b)
            return param_domain
        if name == "host":
            def param_host(p: dict, c: Any, m: dict) -> Any:
                try:
                    b = p[pname]
                except KeyError:
                    raise EvalFailure(absent) from None
                if type(b) is values.Url:
                    return b.host
                return slow(b)
            return param_host

    def field(p: dict, c: Any, m: dict) -> Any:
        b = base(p, c, m)
        if type(b) is owner:
            return getattr(b, name)
        return slow(b)

    return field


def _ctx(source: str, key: str) -> Closure:
    if source == "session":
        if key == "tags":
            return lambda p, c, m: c.tags
        if key == "level":
            return lambda p, c, m: c.level
        if key == "actions":
            return lambda p, c, m: len(c.history)
        return _raise(f"unknown session attribute `{key}`")
    unknown = Unknown(frozenset({f"{source}.{key}"}))

    def ctx(p: dict, c: Any, m: dict) -> Any:
        section = getattr(c, source)
        if section is None:
            return unknown
        return section.get(key, unknown)

    return ctx


def _count(tools: frozenset[str], within: int | None) -> Closure:
    if within is None:
        return lambda p, c, m: c.count(tools)

    def count(p: dict, c: Any, m: dict) -> Any:
        got = c.count_within(tools, within)
        return Unknown(got) if type(got) is frozenset else got

    return count


def _used(tools: frozenset[str]) -> Closure:
    return lambda p, c, m: c.used(tools)


def _len(arg: Closure) -> Closure:
    def length(p: dict, c: Any, m: dict) -> Any:
        v = arg(p, c, m)
        if type(v) is Unknown:
            return v
        if isinstance(v, (str, tuple, values.FrozenJson)):
            return len(v)
        raise EvalFailure(f"`len` of {describe(v)}")

    return length


def _has(target: tuple) -> Closure:
    if target[0] == PARAM:
        name = target[1]
        return lambda p, c, m: name in p
    source, key = target[1], target[2]
    if source == "session":
        return lambda p, c, m: True

    def has(p: dict, c: Any, m: dict) -> bool:
        section = getattr(c, source)
        if section is None:
            return False
        return not key or key in section

    return has


def _not(operand: Closure) -> Closure:
    def not_(p: dict, c: Any, m: dict) -> Any:
        r = operand(p, c, m)
        if r is True:
            return False
        if r is False:
            return True
        if type(r) is Unknown:
            return r
        raise EvalFailure(f"expected a boolean, got {describe(r)}")

    return not_


def _and_n(fs: tuple[Closure, ...]) -> Closure:
    if len(fs) == 2:
        f0, f1 = fs

        def and2(p: dict, c: Any, m: dict) -> Any:
            try:
                r0 = f0(p, c, m)
            except Exception as err:  # noqa: BLE001
                r0 = err
            if r0 is False:
                return False
            try:
                r1 = f1(p, c, m)
            except Exception as err:  # noqa: BLE001
                r1 = err
            if r1 is False:
                return False
            if r0 is True and r1 is True:
                return True
            return _and((r0, r1))

        return and2

    return lambda p, c, m: _and(_results(fs, p, c, m))


def _or_n(fs: tuple[Closure, ...]) -> Closure:
    if len(fs) == 2:
        f0, f1 = fs

        def or2(p: dict, c: Any, m: dict) -> Any:
            try:
                r0 = f0(p, c, m)
            except Exception as err:  # noqa: BLE001
                r0 = err
            if r0 is True:
                return True
            try:
                r1 = f1(p, c, m)
            except Exception as err:  # noqa: BLE001
                r1 = err
            if r1 is True:
                return True
            if r0 is False and r1 is False:
                return False
            return _or((r0, r1))

        return or2

    return lambda p, c, m: _or(_results(fs, p, c, m))


def _cmp_lit(op: str, fl: Closure, lit: Any) -> Closure | None:
    """A comparison with a literal right operand, with an exact-type fast path."""
    tl = type(lit)
    if op in ("==", "!=") and (tl is str or tl is int):
        eq = op == "=="

        def eq_lit(p: dict, c: Any, m: dict) -> Any:
            v = fl(p, c, m)
            if type(v) is tl:
                return (v == lit) is eq
            if type(v) is Unknown:
                return v
            return equal(v, lit) is eq

        return eq_lit
    if op in ("<", "<=", ">", ">=") and (tl is int or tl is Decimal):
        cmp = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]

        def order_lit(p: dict, c: Any, m: dict) -> Any:
            v = fl(p, c, m)
            tv = type(v)
            if tv is int or tv is Decimal:
                return cmp(v, lit)
            if tv is Unknown:
                return v
            return _order(op, v, lit)

        return order_lit
    if op in ("in", "not in") and isinstance(lit, (frozenset, tuple)):
        inside = op == "in"
        kinds = {type(e) for e in lit}
        if len(kinds) == 1 and next(iter(kinds)) in (str, int):
            kind = next(iter(kinds))
            members = frozenset(lit)

            def in_lit(p: dict, c: Any, m: dict) -> Any:
                v = fl(p, c, m)
                if type(v) is kind:
                    return (v in members) is inside
                if type(v) is Unknown:
                    return v
                return _member(v, lit) is inside

            return in_lit
    if op in ("startswith", "endswith") and tl is str:
        starts = op == "startswith"

        def affix_lit(p: dict, c: Any, m: dict) -> Any:
            v = fl(p, c, m)
            if type(v) is not str:
                if type(v) is Unknown:
                    return v
                v = _text(v)
            return v.startswith(lit) if starts else v.endswith(lit)

        return affix_lit
    return None


def _fused(op: str, left: tuple, base: tuple | None, lit: Any, general: Closure) -> Closure | None:
    """`params.x OP lit` or `params.x.f OP lit` in one closure: read, check the type, compare.

    Whenever the value is not of the expected type (absent, unknown, another
    type) the general closure decides, so the result is always its result.
    """
    if left[0] == PARAM:
        pname = left[1]
        attr = None
        owner: Any = None
    elif left[0] == FIELD and base is not None and base[0] == PARAM:
        pname = base[1]
        attr = operator.attrgetter(left[2])
        owner = values.Email if left[2] in ("local", "domain") else values.Url
    else:
        return None
    tl = type(lit)
    missing = _MISSING
    if op in ("==", "!=") and (tl is str or (tl is int and attr is None)):
        eq = op == "=="
        if attr is None:
            def eq_param(p: dict, c: Any, m: dict) -> Any:
                v = p.get(pname, missing)
                if type(v) is tl:
                    return (v == lit) is eq
                return general(p, c, m)
            return eq_param

        def eq_field(p: dict, c: Any, m: dict) -> Any:
            v = p.get(pname, missing)
            if type(v) is owner:
                return (attr(v) == lit) is eq
            return general(p, c, m)
        return eq_field
    if op in ("<", "<=", ">", ">=") and (tl is int or tl is Decimal) and attr is None:
        cmp = _ORDER[op]

        def order_param(p: dict, c: Any, m: dict) -> Any:
            v = p.get(pname, missing)
            tv = type(v)
            if tv is int or tv is Decimal:
                return cmp(v, lit)
            return general(p, c, m)
        return order_param
    if op in ("startswith", "endswith") and tl is str:
        method = str.startswith if op == "startswith" else str.endswith
        if attr is None:
            def affix_param(p: dict, c: Any, m: dict) -> Any:
                v = p.get(pname, missing)
                if type(v) is str:
                    return method(v, lit)
                return general(p, c, m)
            return affix_param

        def affix_field(p: dict, c: Any, m: dict) -> Any:
            v = p.get(pname, missing)
            if type(v) is owner:
                return method(attr(v), lit)
            return general(p, c, m)
        return affix_field
    if op in ("in", "not in") and isinstance(lit, (frozenset, tuple)):
        kinds = {type(e) for e in lit}
        if len(kinds) != 1:
            return None
        kind = next(iter(kinds))
        if kind is not str and (kind is not int or attr is not None):
            return None
        members = frozenset(lit)
        inside = op == "in"
        if attr is None:
            def in_param(p: dict, c: Any, m: dict) -> Any:
                v = p.get(pname, missing)
                if type(v) is kind:
                    return (v in members) is inside
                return general(p, c, m)
            return in_param

        def in_field(p: dict, c: Any, m: dict) -> Any:
            v = p.get(pname, missing)
            if type(v) is owner:
                return (attr(v) in members) is inside
            return general(p, c, m)
        return in_field
    return None


_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _match(value: Closure, pattern: str, flags: str) -> Closure:
    from aarm_runtime import regex

    # The linear-time matcher: the text is the agent's, so a backtracking
    # engine would let it choose the cost of a decision.
    search = regex.compile_matcher(pattern, flags).search

    def match(p: dict, c: Any, m: dict) -> Any:
        v = value(p, c, m)
        if type(v) is str:
            return search(v)
        if type(v) is Unknown:
            return v
        return search(_text(v))

    return match


_UNKNOWN_INTENT = Unknown(frozenset({"intent"}))
_UNKNOWN_ENTITIES = Unknown(frozenset({"intent.entities"}))
_UNKNOWN_TEXT = Unknown(frozenset({"intent.text"}))


# Types a value of the language may have that are not collections: `token_of` need not ask `isinstance` of
# an abstract class (a slow check) about these.
_SCALARS = frozenset({str, int, bool, type(None), Decimal, values.Email, values.Url, values.Path})


def _from(value: Closure, source: str, tools: frozenset[str]) -> Closure:
    def token_of(p: dict, c: Any, m: dict) -> Any:
        v = value(p, c, m)
        if type(v) is Unknown:
            return v
        if type(v) not in _SCALARS and isinstance(v, (tuple, frozenset, values.FrozenJson)):
            raise EvalFailure("`from` needs a scalar value")
        return values.provenance_token(v)

    if source == "user":
        def from_user(p: dict, c: Any, m: dict) -> Any:
            token = token_of(p, c, m)
            if type(token) is Unknown:
                return token
            intent = c.intent
            if intent is None:
                return _UNKNOWN_INTENT
            entities = intent.get("entities")
            if entities is None:
                first: Any = _UNKNOWN_ENTITIES
            else:
                first = token is not None and any(values.token_equals(token, e) for e in entities)
            if first is True:
                return True
            if "text" not in intent:
                second: Any = _UNKNOWN_TEXT
            else:
                second = token is not None and c.in_intent_text(token)
            if second is True:
                return True
            return _or((first, second))

        return from_user
    if source == "untrusted":
        def from_untrusted(p: dict, c: Any, m: dict) -> Any:
            token = token_of(p, c, m)
            if type(token) is Unknown:
                return token
            return token is not None and c.from_untrusted(token)

        return from_untrusted

    def from_tools(p: dict, c: Any, m: dict) -> Any:
        token = token_of(p, c, m)
        if type(token) is Unknown:
            return token
        return token is not None and c.from_tools(token, tools)

    return from_tools


def _quant(kind: str, coll: Closure, body: Closure, slot: int) -> Closure:
    combine = _and if kind == "all" else _or
    stop = False if kind == "all" else True

    def bodies(items: tuple, p: dict, c: Any, m: dict):
        for item in items:
            m[slot] = item
            try:
                r = body(p, c, m)
            except Exception as err:  # noqa: BLE001
                r = err
            yield r
            if r is stop:
                return

    def quant(p: dict, c: Any, m: dict) -> Any:
        items = coll(p, c, m)
        if type(items) is Unknown:
            return items
        if isinstance(items, frozenset):
            # A set const: a fixed order keeps the first failure's message deterministic.
            items = tuple(sorted(items, key=_canonical_key))
        if not isinstance(items, tuple):
            raise EvalFailure(f"a quantifier needs a list, got {describe(items)}")
        return combine(bodies(items, p, c, m))

    return quant
