"""Kleene three-valued evaluation of IR conditions (LANGUAGE.md §5 step 3).

Every expression evaluates to a value, to `Unknown` (it read an absent
context field; `fields` says which) or to `Failure` (it could not be
evaluated). Both are ordinary results rather than exceptions, so `and` / `or`
combine them without an evaluation order: `false and X` is false and
`true or X` is true whatever X is, including a failure (this is what makes a
guard such as `has params.x and params.x > 3` safe in any operand order). A
failure that is not absorbed this way reaches the rule, and the decision is
DENY `evaluation-error`.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import attrs

from aarm_runtime import regex, values
from aarmc.reference.context import Context, is_untrusted, output_of
from aarmc.semantics import ir


@attrs.frozen
class Unknown:
    """The value of a term that read absent context: `fields` names what was missing."""
    fields: frozenset[str]


@attrs.frozen
class Failure:
    """A term that could not be evaluated (only reachable from an ill-typed IR or a bug)."""
    message: str


class EvalError(Exception):
    """Raised inside evaluation; `evaluate` turns it (and any other exception) into a Failure."""


@attrs.frozen(kw_only=True)
class Scope:
    """What a condition may read: the (resolved, validated) action and its context."""
    policy: ir.Policy
    tool: ir.Tool
    params: dict[str, Any]
    context: Context
    variables: tuple[tuple[str, Any], ...] = ()

    def bind(self, name: str, value: Any) -> "Scope":
        return attrs.evolve(self, variables=((name, value),) + self.variables)

    def variable(self, name: str) -> Any:
        for bound, value in self.variables:
            if bound == name:
                return value
        raise EvalError(f"unbound variable `{name}`")


def _special(*results: Any) -> Failure | Unknown | None:
    """The first Failure among `results`, else the union of their Unknowns, else None."""
    for r in results:
        if isinstance(r, Failure):
            return r
    unknown = [r for r in results if isinstance(r, Unknown)]
    if unknown:
        return Unknown(frozenset().union(*(u.fields for u in unknown)))
    return None


def kleene_and(results: list[Any]) -> Any:
    """Strong Kleene conjunction; false absorbs unknown and failure alike."""
    if any(r is False for r in results):
        return False
    for r in results:
        if not isinstance(r, (Failure, Unknown, bool)):
            return Failure(f"expected a boolean, got {_describe(r)}")
    special = _special(*results)
    return special if special is not None else True


def kleene_or(results: list[Any]) -> Any:
    """Strong Kleene disjunction; true absorbs unknown and failure alike."""
    if any(r is True for r in results):
        return True
    for r in results:
        if not isinstance(r, (Failure, Unknown, bool)):
            return Failure(f"expected a boolean, got {_describe(r)}")
    special = _special(*results)
    return special if special is not None else False


def kleene_not(result: Any) -> Any:
    if isinstance(result, (Failure, Unknown)):
        return result
    if not isinstance(result, bool):
        return Failure(f"expected a boolean, got {_describe(result)}")
    return not result


def _describe(value: Any) -> str:
    return f"a `{type(value).__name__}`"


def evaluate(expr: ir.Expr, scope: Scope) -> Any:
    """The value of `expr`, an `Unknown` or a `Failure`; never raises."""
    try:
        return _evaluate(expr, scope)
    except Exception as err:  # noqa: BLE001 - step 7: a failure is a result, never an escape
        return Failure(str(err) or type(err).__name__)


def truth(expr: ir.Expr | None, scope: Scope) -> bool | Unknown | Failure:
    """A condition's truth value; no condition means always true."""
    if expr is None:
        return True
    result = evaluate(expr, scope)
    if isinstance(result, (bool, Unknown, Failure)):
        return result
    return Failure(f"a condition evaluated to {_describe(result)}, not a boolean")


# ---- the cases ----------------------------------------------------------------------

def _evaluate(expr: ir.Expr, scope: Scope) -> Any:
    if isinstance(expr, ir.Lit):
        return expr.value
    if isinstance(expr, ir.Label):
        return expr.level
    if isinstance(expr, ir.Param):
        if expr.name not in scope.params:
            raise EvalError(f"`params.{expr.name}` is absent (an unguarded read of an optional param)")
        return scope.params[expr.name]
    if isinstance(expr, ir.Var):
        return scope.variable(expr.name)
    if isinstance(expr, ir.Field):
        return _field(evaluate(expr.base, scope), expr.name)
    if isinstance(expr, ir.Ctx):
        return read_context(scope.context, expr.source, expr.key)
    if isinstance(expr, ir.Count):
        return count(scope.context, expr.tools, expr.within_s)
    if isinstance(expr, ir.Used):
        return any(entry.tool in expr.tools for entry in scope.context.history)
    if isinstance(expr, ir.Len):
        return _len(evaluate(expr.arg, scope))
    if isinstance(expr, ir.Has):
        return _has(expr.target, scope)
    if isinstance(expr, ir.Not):
        return kleene_not(evaluate(expr.operand, scope))
    if isinstance(expr, ir.And):
        return kleene_and([evaluate(item, scope) for item in expr.items])
    if isinstance(expr, ir.Or):
        return kleene_or([evaluate(item, scope) for item in expr.items])
    if isinstance(expr, ir.Cmp):
        return _compare(expr.op, evaluate(expr.left, scope), evaluate(expr.right, scope))
    if isinstance(expr, ir.Match):
        value = evaluate(expr.value, scope)
        special = _special(value)
        if special is not None:
            return special
        return regex.matches(expr.pattern, expr.flags, _text(value))
    if isinstance(expr, ir.From):
        return _from(expr, evaluate(expr.value, scope), scope)
    if isinstance(expr, ir.Quant):
        return _quantify(expr, scope)
    raise EvalError(f"not an expression: {_describe(expr)}")


_FIELDS = {values.Email: ("local", "domain"), values.Url: ("scheme", "host", "path")}


def _field(base: Any, name: str) -> Any:
    special = _special(base)
    if special is not None:
        return special
    allowed = _FIELDS.get(type(base), ())
    if name not in allowed:
        raise EvalError(f"{_describe(base)} has no field `.{name}`")
    return getattr(base, name)


def _len(value: Any) -> Any:
    special = _special(value)
    if special is not None:
        return special
    if isinstance(value, (str, tuple, values.FrozenJson)):
        return len(value)
    raise EvalError(f"`len` of {_describe(value)}")


def read_context(context: Context, source: str, key: str) -> Any:
    """A context term; absent sections and keys are Unknown, named `source.key`."""
    if source == "session":
        if key == "tags":
            return context.tags
        if key == "level":
            return context.level
        if key == "actions":
            return len(context.history)
        raise EvalError(f"unknown session attribute `{key}`")
    section = _section(context, source)
    if section is None or key not in section:
        return Unknown(frozenset({f"{source}.{key}"}))
    return section[key]


def _section(context: Context, source: str) -> dict[str, Any] | None:
    if source not in ("intent", "identity", "env", "risk"):
        raise EvalError(f"unknown context source `{source}`")
    return getattr(context, source)


def _has(target: ir.Param | ir.Ctx, scope: Scope) -> bool:
    if isinstance(target, ir.Param):
        return target.name in scope.params
    if isinstance(target, ir.Ctx):
        if target.source == "session":
            return True
        section = _section(scope.context, target.source)
        if section is None:
            return False
        return not target.key or target.key in section
    raise EvalError(f"`has` of {_describe(target)}")


def count(context: Context, tools: tuple[str, ...], within_s: int | None) -> int | Unknown:
    """History entries of `tools`; windowed: those with time in (now - D, now]."""
    selected = [entry for entry in context.history if entry.tool in tools]
    if within_s is None:
        return len(selected)
    missing = set()
    if context.now is None:
        missing.add("now")
    if any(entry.time is None for entry in selected):
        missing.add("history.time")
    if missing:
        return Unknown(frozenset(missing))
    assert context.now is not None
    start = context.now - Fraction(within_s)
    return sum(1 for entry in selected if start < entry.time <= context.now)


# ---- comparisons --------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, Decimal)) and not isinstance(value, bool)


def _text(value: Any) -> str:
    """String operations read emails, urls and paths as their canonical text."""
    if isinstance(value, str):
        return value
    if isinstance(value, (values.Email, values.Url, values.Path)):
        return str(value)
    raise EvalError(f"expected a string, got {_describe(value)}")


def equal(a: Any, b: Any) -> bool:
    """Value equality: JSON equality (so `true` is not `1`, and `1.0` is `1`)."""
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
    raise EvalError(f"`in` needs a list or set on the right, got {_describe(collection)}")


def _order(op: str, a: Any, b: Any) -> bool:
    if not (_is_number(a) and _is_number(b)):
        raise EvalError(f"cannot order {_describe(a)} and {_describe(b)}")
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


def _compare(op: str, left: Any, right: Any) -> Any:
    special = _special(left, right)
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
    raise EvalError(f"unknown operator `{op}`")


# ---- provenance and quantifiers --------------------------------------------------------

def _from(expr: ir.From, value: Any, scope: Scope) -> Any:
    context = scope.context
    special = _special(value)
    if special is not None:
        return special
    if isinstance(value, (tuple, frozenset, values.FrozenJson)):
        raise EvalError("`from` needs a scalar value")
    token = values.provenance_token(value)
    if expr.source == "user":
        return _from_user(token, context)
    if expr.source == "untrusted":
        outputs = [e.output for e in context.history
                   if e.has_output and is_untrusted(output_of(scope.policy, e.tool))]
    elif expr.source == "tools":
        outputs = [e.output for e in context.history if e.has_output and e.tool in expr.tools]
    else:
        raise EvalError(f"unknown provenance source `{expr.source}`")
    if token is None:
        return False
    return any(values.occurs_as_token(token, values.output_text(output)) for output in outputs)


def _from_user(token: values.Token | None, context: Context) -> Any:
    """`V from user` = V equals an entity or occurs in the text, each part Kleene.

    With no intent at all the term is unknown (`intent`), as LANGUAGE.md §4
    says. Inside a present intent, a missing `entities` or `text` is unknown
    only for its own half: a match in the other half still makes it true.
    """
    if context.intent is None:
        return Unknown(frozenset({"intent"}))
    parts: list[Any] = []
    entities = context.intent.get("entities")
    text = context.intent.get("text")
    if entities is None:
        parts.append(Unknown(frozenset({"intent.entities"})))
    else:
        parts.append(token is not None and any(values.token_equals(token, e) for e in entities))
    if text is None:
        parts.append(Unknown(frozenset({"intent.text"})))
    else:
        parts.append(token is not None and values.occurs_as_token(token, text))
    return kleene_or(parts)


def _quantify(expr: ir.Quant, scope: Scope) -> Any:
    collection = evaluate(expr.collection, scope)
    special = _special(collection)
    if special is not None:
        return special
    if isinstance(collection, frozenset):
        # A set const: a fixed order keeps the first failure's message deterministic.
        collection = tuple(sorted(collection, key=values.canonical_json))
    if not isinstance(collection, tuple):
        raise EvalError(f"a quantifier needs a list, got {_describe(collection)}")
    results = [evaluate(expr.body, scope.bind(expr.var, item)) for item in collection]
    return kleene_and(results) if expr.kind == "all" else kleene_or(results)
