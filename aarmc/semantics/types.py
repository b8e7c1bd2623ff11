"""Types of expressions: check conditions per tool and lower them to the IR.

A rule's condition is checked once for every tool its selector covers, because
`params.x` means that tool's parameter `x`. Checking and lowering are one walk
(`TypeChecker`): each AST expression becomes an IR expression and a type.

Types are those of `aarm_runtime.values` (`Prim`, `EnumT`, `ListT`) plus a few
that only conditions have: `SetT` (a `{...}` const), `LABEL` (`session.level`
and label names), `TAGS` (`session.tags`), `ANY` (the element of `[]`) and
`ERROR` (an expression already reported; it silences follow-on errors).

Later stages read types through `expr_type`, `ctx_type` and `elem_type`, which
work on the IR alone (LANGUAGE.md §4 gives every context term one type):

>>> from aarm_runtime.values import Prim, ListT
>>> tool = ir.Tool(name="a.b", params=(ir.ParamSpec(name="cc", type=ListT(Prim("email"))),),
...                output=ir.Output(none=True))
>>> policy = ir.Policy(name="p", version="1", default="deny", labels=(), tags=(), tools=(tool,))
>>> q = ir.Quant(kind="any", var="c", collection=ir.Param(name="cc"),
...              body=ir.Cmp(op="==", left=ir.Field(base=ir.Var(name="c"), name="domain"), right=ir.Lit(value="x.y")))
>>> show(expr_type(q.collection, tool, policy))
'list[email]'
>>> show(elem_type(expr_type(q.collection, tool, policy)))
'email'
>>> show(expr_type(q.body.left, tool, policy, {"c": elem_type(expr_type(q.collection, tool, policy))}))
'str'
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Mapping

import attrs
from aarm_runtime import values
from aarm_runtime.regex import RegexError, parse_regex
from aarm_runtime.values import EnumT, InvalidValue, ListT, OptT, Prim

from aarmc.semantics import ir
from aarmc.semantics.report import Sink, at, quoted
from aarmc.semantics.scope import CONTEXT_ROOTS, RESERVED_WORDS, Scope, did_you_mean, expand_selector
from aarmc.source import Span
from aarmc.syntax import ast

# ---- types ----------------------------------------------------------------------

STR = Prim("str")
INT = Prim("int")
DECIMAL = Prim("decimal")
BOOL = Prim("bool")
EMAIL = Prim("email")
URL = Prim("url")
PATH = Prim("path")
JSON = Prim("json")


@attrs.frozen
class SetT:
    """A set constant `{...}`: only `in`, `not in`, `contains`, `len` and quantifiers use it."""
    elem: Any


@attrs.frozen
class LabelT:
    """`session.level` and label names: ordered by their position in `labels`."""


@attrs.frozen
class TagSetT:
    """`session.tags`: a set of declared tag names."""


@attrs.frozen
class AnyT:
    """The element type of an empty list literal: compatible with every type."""


@attrs.frozen
class ErrorT:
    """The type of an expression that was already reported."""


LABEL = LabelT()
TAGS = TagSetT()
ANY = AnyT()
ERROR = ErrorT()

NUMERIC = (INT, DECIMAL)
# What `from` accepts: values that have a provenance token (aarm_runtime.values.provenance_token).
PROVENANCE_SCALARS = (STR, EMAIL, URL, PATH, INT, DECIMAL)
# A string literal compared with one of these is read as a value of that type.
COERCIBLE = (EMAIL, URL, PATH)

FIELDS = {"email": ("local", "domain"), "url": ("scheme", "host", "path")}

CONTEXT_TYPES: dict[str, dict[str, Any]] = {
    "session": {"tags": TAGS, "level": LABEL, "actions": INT},
    "intent": {"text": STR, "entities": ListT(STR), "tools": ListT(STR), "score": DECIMAL},
    "identity": {"principal": STR, "agent": STR, "service": STR, "session": STR, "role": STR,
                 "scopes": ListT(STR), "delegated": BOOL},
    "risk": {"injection": DECIMAL, "confidence": DECIMAL, "drift": DECIMAL},
}


def show(t: Any) -> str:
    """The surface spelling of a type, for messages.

    >>> show(ListT(Prim("email"))), show(SetT(STR)), show(LABEL)
    ('list[email]', 'set[str]', 'label')
    """
    if isinstance(t, ListT):
        return f"list[{show(t.elem)}]"
    if isinstance(t, SetT):
        return f"set[{show(t.elem)}]"
    if isinstance(t, (Prim, EnumT, OptT)):
        return values.type_to_text(t)
    return {LabelT: "label", TagSetT: "set of tags", AnyT: "any", ErrorT: "error"}[type(t)]


def same_type(a: Any, b: Any) -> bool:
    """Whether values of `a` and `b` can be compared with `==` (numbers compare with numbers).

    >>> same_type(INT, DECIMAL), same_type(ListT(ANY), ListT(STR)), same_type(STR, EMAIL)
    (True, True, False)
    """
    if a == b or a is ANY or b is ANY:
        return True
    if a in NUMERIC and b in NUMERIC:
        return True
    if isinstance(a, EnumT) and isinstance(b, EnumT):
        return set(a.values) == set(b.values)
    if isinstance(a, ListT) and isinstance(b, ListT):
        return same_type(a.elem, b.elem)
    if isinstance(a, SetT) and isinstance(b, SetT):
        return same_type(a.elem, b.elem)
    return False


def assignable(src: Any, dst: Any) -> bool:
    """Whether a value of type `src` is always a valid value of type `dst` (modify `set`).

    >>> assignable(INT, DECIMAL), assignable(DECIMAL, INT), assignable(EnumT(("a",)), STR)
    (True, False, True)
    """
    if src == dst or src is ANY:
        return True
    if src == INT and dst == DECIMAL:
        return True
    if isinstance(src, EnumT):
        return dst == STR or (isinstance(dst, EnumT) and set(src.values) <= set(dst.values))
    if isinstance(src, ListT) and isinstance(dst, ListT):
        return assignable(src.elem, dst.elem)
    return False


def elem_type(t: Any) -> Any:
    """The element type of a list or set type (what a quantifier variable ranges over)."""
    if isinstance(t, (ListT, SetT)):
        return t.elem
    if t is TAGS:
        return STR
    raise TypeError(f"`{show(t)}` has no elements")


def ctx_type(source: str, key: str, policy: ir.Policy) -> Any:
    """The type of a context term `source.key` (env types come from the policy's declarations)."""
    if source == "env":
        for var in policy.env:
            if var.name == key:
                return var.type
        raise KeyError(f"env.{key}")
    return CONTEXT_TYPES[source][key]


def value_type(value: Any) -> Any:
    """The type of a canonical literal value (an `ir.Lit`'s)."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, Decimal):
        return DECIMAL
    if isinstance(value, str):
        return STR
    if isinstance(value, values.Email):
        return EMAIL
    if isinstance(value, values.Url):
        return URL
    if isinstance(value, values.Path):
        return PATH
    if isinstance(value, (tuple, frozenset)):
        elems = [value_type(v) for v in value]
        elem = ANY if not elems else (DECIMAL if DECIMAL in elems else elems[0])
        return ListT(elem) if isinstance(value, tuple) else SetT(elem)
    raise TypeError(f"not a literal value: {value!r}")


def expr_type(expr: ir.Expr, tool: ir.Tool, policy: ir.Policy, vars: Mapping[str, Any] | None = None) -> Any:
    """The type of a well-typed IR expression for one tool.

    `vars` maps the quantifier variables in scope to their types: on entering
    `ir.Quant(var=x, collection=L)`, bind `x` to `elem_type(expr_type(L, ...))`.
    A param's type is its declared type (never `OptT`: `ParamSpec.optional`
    says whether it may be absent).
    """
    if isinstance(expr, ir.Lit):
        return value_type(expr.value)
    if isinstance(expr, ir.Param):
        spec = tool.param(expr.name)
        if spec is None:
            raise KeyError(f"tool `{tool.name}` has no parameter `{expr.name}`")
        return spec.type
    if isinstance(expr, ir.Var):
        return (vars or {})[expr.name]
    if isinstance(expr, ir.Field):
        return STR
    if isinstance(expr, ir.Ctx):
        return ctx_type(expr.source, expr.key, policy)
    if isinstance(expr, ir.Label):
        return LABEL
    if isinstance(expr, (ir.Count, ir.Len)):
        return INT
    return BOOL  # Used, Has, Not, And, Or, Cmp, Match, From, Quant


# ---- literals -------------------------------------------------------------------

def literal_value(node: ast.Expr, sink: Sink) -> tuple[Any, Any] | None:
    """The canonical value and type of a literal, or None (reported) when invalid.

    Lists and sets hold scalars of one type (ints and decimals mix as decimals).
    """
    if isinstance(node, ast.BoolLit):
        return node.value, BOOL
    if isinstance(node, (ast.StrLit, ast.IntLit, ast.DecLit)):
        t = {ast.StrLit: STR, ast.IntLit: INT, ast.DecLit: DECIMAL}[type(node)]
        try:
            return values.validate(t, node.value), t
        except InvalidValue as err:
            sink.error("E0314", f"invalid `{show(t)}` literal: {err.message}", node.span)
            return None
    if isinstance(node, (ast.ListLit, ast.SetLit)):
        kind = "list" if isinstance(node, ast.ListLit) else "set"
        items: list[tuple[Any, Any]] = []
        ok = True
        for item in node.items:
            if isinstance(item, (ast.ListLit, ast.SetLit)):
                sink.error("E0316", f"a {kind} literal holds scalars, not lists or sets", item.span,
                           help="flatten the values into one list")
                ok = False
                continue
            got = literal_value(item, sink)
            if got is None:
                ok = False
            else:
                items.append(got)
        if not ok:
            return None
        types = {t for _, t in items}
        if not types:
            elem = ANY
        elif len(types) == 1:
            elem = types.pop()
        elif types == {INT, DECIMAL}:
            elem = DECIMAL
            items = [(values.validate(DECIMAL, v), DECIMAL) for v, _ in items]
        else:
            found = " and ".join(f"`{show(t)}`" for t in sorted(types, key=show))
            sink.error("E0316", f"a {kind} literal mixes {found} values", node.span,
                       help="every element of a list or set has the same type")
            return None
        vals = [v for v, _ in items]
        if kind == "list":
            return tuple(vals), ListT(elem)
        return frozenset(vals), SetT(elem)
    return None


class _SetValue(Exception):
    """A `{...}` literal where a JSON value is needed."""

    def __init__(self, node: ast.SetLit):
        self.node = node


def raw_literal(node: ast.Expr) -> Any:
    """A literal as raw JSON (lists as lists, mixed types allowed), for `values.validate`.

    Raises `_SetValue` for a set literal (parameter values are JSON, which has no sets).
    """
    if isinstance(node, (ast.StrLit, ast.IntLit, ast.DecLit, ast.BoolLit)):
        return node.value
    if isinstance(node, ast.ListLit):
        return [raw_literal(item) for item in node.items]
    if isinstance(node, ast.SetLit):
        raise _SetValue(node)
    raise TypeError(f"not a literal: {node!r}")


def validate_literal(node: ast.Expr, t: Any, what: str, code: str, sink: Sink) -> tuple[bool, Any]:
    """Validate a literal against a declared type: (ok, canonical value); errors go to `sink` as `code`."""
    try:
        raw = raw_literal(node)
    except _SetValue as err:
        sink.error(code, f"{what} cannot be a set", err.node.span, help="parameter values are JSON: use a list `[...]`")
        return False, None
    try:
        return True, values.validate(t, raw)
    except InvalidValue as err:
        sink.error(code, f"{what} is not a valid `{show(t)}`: {err.message}", node.span)
        return False, None


def _shown_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# ---- the checker ----------------------------------------------------------------

@attrs.frozen(kw_only=True)
class _Frame:
    """What a sub-expression is checked against."""
    tool: ir.Tool
    vars: Mapping[str, tuple[Any, Span | None]] = attrs.field(factory=dict)
    guarded: frozenset[str] = frozenset()  # optional params proved present here
    forbid: bool = False


_BOOL_HELP = {
    "str": "compare it, e.g. `== \"text\"`, or test it with `matches /.../`",
    "list": "quantify over it: `any x in LIST: ...`, or test membership with `in`",
    "int": "compare it, e.g. `> 0`",
    "decimal": "compare it, e.g. `> 0.5`",
}


class TypeChecker:
    """Checks and lowers conditions and modify assignments, against one scope."""

    def __init__(self, scope: Scope, sink: Sink):
        self.scope = scope
        self.sink = sink
        self._dispatch = {
            ast.StrLit: self._literal, ast.IntLit: self._literal, ast.DecLit: self._literal,
            ast.BoolLit: self._literal, ast.ListLit: self._literal, ast.SetLit: self._literal,
            ast.PathRef: self._path, ast.SessionRef: self._session, ast.Count: self._count,
            ast.Used: self._used, ast.Len: self._len, ast.Has: self._has, ast.Not: self._not,
            ast.And: self._and, ast.Or: self._or, ast.Cmp: self._cmp, ast.Matches: self._matches,
            ast.From: self._from, ast.Quant: self._quant,
        }

    # -- entry points

    def check_condition(self, cond: ast.Expr, tool: ir.Tool, *, forbid: bool = False) -> ir.Expr:
        """Lower a rule or assert condition for `tool`; it must be a `bool`."""
        frame = _Frame(tool=tool, forbid=forbid)
        out, t = self.expr(cond, frame)
        self._require_bool(cond, t, "condition")
        return out

    def check_modify(self, args: ast.ModifyArgs, tool: ir.Tool) -> tuple[ir.Assignment, ...]:
        """`set NAME = EXPR` and `redact NAME` of a modify rule, for `tool`, in source order."""
        seen: dict[str, Span | None] = {}
        out: list[ir.Assignment] = []

        def target(name: ast.Name, verb: str) -> ir.ParamSpec | None:
            if name.value in seen:
                self.sink.error("E0412", f"parameter `{name.value}` is assigned twice in one modify", name.span,
                                notes=[f"first assigned at {at(seen[name.value])}"],
                                help="a modify assigns each parameter at most once")
                return None
            seen[name.value] = name.span
            spec = tool.param(name.value)
            if spec is None:
                self.sink.error("E0408", f"cannot {verb} `{name.value}`: tool `{tool.name}` has no such parameter",
                                name.span, help=self._params_help(tool, name.value))
            return spec

        for assign in args.sets:
            spec = target(assign.name, "set")
            if spec is not None:
                value = self._set_value(assign, spec, tool)
                if value is not None:
                    out.append(ir.Assignment(param=spec.name, value=value, span=assign.span))
        for name in args.redacts:
            spec = target(name, "redact")
            if spec is None or spec.type is ERROR:
                continue
            if spec.type != STR:
                self.sink.error("E0411", f"cannot redact `{name.value}`: it is `{show(spec.type)}`, not `str`",
                                name.span, help="only `str` parameters can hold the redaction marker "
                                                f"`{ir.REDACTED}`")
                continue
            out.append(ir.Assignment(param=spec.name, value=ir.Lit(value=ir.REDACTED, span=name.span),
                                     span=name.span))
        return tuple(out)

    def expr(self, node: ast.Expr, fr: _Frame) -> tuple[ir.Expr, Any]:
        return self._dispatch[type(node)](node, fr)

    # -- helpers

    def _require_bool(self, node: ast.Expr, t: Any, what: str) -> None:
        if t == BOOL or t is ERROR:
            return
        key = "list" if isinstance(t, (ListT, SetT)) else show(t)
        self.sink.error("E0301", f"{what} must be a `bool`, found `{show(t)}`", node.span,
                        help=_BOOL_HELP.get(key))

    def _params_help(self, tool: ir.Tool, name: str) -> str:
        names = [p.name for p in tool.params]
        if not names:
            return f"`{tool.name}` has no parameters"
        return did_you_mean(name, names) or f"parameters of `{tool.name}`: {quoted(names)}"

    def _no_context_in_forbid(self, fr: _Frame, what: str, span: Span | None) -> None:
        if fr.forbid:
            self.sink.error("E0403", f"a `forbid` rule cannot read `{what}`", span,
                            help="a forbid must never be unknown, so it may read only `params`; "
                                 "use a `deny` rule for a limit that depends on context")

    # -- literals and names

    def _literal(self, node, fr):
        got = literal_value(node, self.sink)
        if got is None:
            return ir.Lit(value=None, span=node.span), ERROR
        value, t = got
        return ir.Lit(value=value, span=node.span), t

    def _path(self, node: ast.PathRef, fr: _Frame, *, set_value: bool = False):
        parts = node.parts
        root = parts[0]
        if root in fr.vars:
            t, _ = fr.vars[root]
            return self._fields(ir.Var(name=root, span=node.span), t, parts[1:], node)
        if root == "params":
            if len(parts) == 1:
                self.sink.error("E0214", "`params` needs a parameter name", node.span,
                                help=self._params_help(fr.tool, ""))
                return ir.Lit(value=None), ERROR
            spec = fr.tool.param(parts[1])
            if spec is None:
                self.sink.error("E0214", f"unknown parameter `{parts[1]}` of tool `{fr.tool.name}`", node.span,
                                help=self._params_help(fr.tool, parts[1]))
                return ir.Lit(value=None), ERROR
            if spec.may_be_absent and spec.name not in fr.guarded:
                self.sink.error("E0311", f"parameter `{spec.name}` of tool `{fr.tool.name}` may be absent",
                                node.span,
                                help=f"guard the read: `has params.{spec.name} and ...` or "
                                     f"`not (has params.{spec.name}) or ...`, or give `{spec.name}` a default")
                return ir.Lit(value=None), ERROR
            return self._fields(ir.Param(name=spec.name, span=node.span), spec.type, parts[2:], node)
        if root == "env":
            self._no_context_in_forbid(fr, "env", node.span)
            if len(parts) == 1:
                self.sink.error("E0218", "`env` needs an attribute name", node.span,
                                help=self._env_help(""))
                return ir.Lit(value=None), ERROR
            t = self.scope.env.get(parts[1])
            if t is None:
                self.sink.error("E0218", f"unknown env attribute `{parts[1]}`", node.span,
                                help=self._env_help(parts[1]))
                return ir.Lit(value=None), ERROR
            return self._fields(ir.Ctx(source="env", key=parts[1], span=node.span), t, parts[2:], node)
        if root in ("risk", "identity", "intent"):
            self._no_context_in_forbid(fr, root, node.span)
            keys = CONTEXT_TYPES[root]
            if len(parts) == 1 or parts[1] not in keys:
                what = f"`{root}` is not a value" if len(parts) == 1 else f"unknown attribute `{root}.{parts[1]}`"
                self.sink.error("E0219", what, node.span,
                                help=f"`{root}` has {quoted(keys, limit=10)}")
                return ir.Lit(value=None), ERROR
            return self._fields(ir.Ctx(source=root, key=parts[1], span=node.span), keys[parts[1]],
                                parts[2:], node)
        if root == "session":  # only reachable after `has`; elsewhere `session.` is its own syntax
            self.sink.error("E0219", "`session` is not a value", node.span,
                            help="use `session.tags`, `session.level`, `session.actions`, "
                                 "`session.count(...)` or `session.used(...)`")
            return ir.Lit(value=None), ERROR
        const = self.scope.consts.get(root)
        if const is not None:
            return self._fields(ir.Lit(value=const.value, const=root, span=node.span), const.type, parts[1:], node)
        level = self.scope.label_levels.get(root)
        if level is not None:
            return self._fields(ir.Label(name=root, level=level, span=node.span), LABEL, parts[1:], node)
        if root in self.scope.tag_set:
            self.sink.error("E0215", f"`{root}` is a tag, not a value", node.span,
                            help=f"tags are written as strings: `\"{root}\" in session.tags`")
            return ir.Lit(value=None), ERROR
        names = list(self.scope.consts) + list(self.scope.labels) + list(fr.vars)
        self.sink.error("E0215", f"unknown name `{root}`", node.span,
                        help=did_you_mean(root, names)
                        or "a bare name is a const, a label or a quantifier variable; "
                           "parameters are `params.NAME`, env attributes `env.NAME`")
        return ir.Lit(value=None), ERROR

    def _env_help(self, name: str) -> str:
        if not self.scope.env:
            return "no env attributes are declared; declare one with `env NAME: TYPE`"
        return did_you_mean(name, self.scope.env) or f"declared env attributes: {quoted(self.scope.env)}"

    def _fields(self, base: ir.Expr, t: Any, rest: tuple[str, ...], node: ast.PathRef):
        for name in rest:
            fields = FIELDS.get(t.name) if isinstance(t, Prim) else None
            if fields is None or name not in fields:
                if t is ERROR:
                    return base, ERROR
                self.sink.error("E0222", f"`{show(t)}` has no field `{name}`", node.span,
                                help=(f"the fields of `{show(t)}` are {quoted(fields)}" if fields else
                                      "only `email` (`.local`, `.domain`) and `url` (`.scheme`, `.host`, `.path`) "
                                      "values have fields"))
                return base, ERROR
            base = ir.Field(base=base, name=name, span=node.span)
            t = STR
        return base, t

    # -- session

    def _session(self, node: ast.SessionRef, fr: _Frame):
        self._no_context_in_forbid(fr, "session", node.span)
        key = node.parts[0]
        t = CONTEXT_TYPES["session"].get(key)
        if t is None:
            self.sink.error("E0219", f"unknown attribute `session.{key}`", node.span,
                            help="use `session.tags`, `session.level`, `session.actions`, "
                                 "`session.count(...)` or `session.used(...)`")
            return ir.Lit(value=None), ERROR
        if len(node.parts) > 1:
            self.sink.error("E0222", f"`session.{key}` has no field `{node.parts[1]}`", node.span)
            return ir.Lit(value=None), ERROR
        if key == "level" and not self.scope.labels:
            self.sink.error("E0223", "`session.level` needs declared labels", node.span,
                            help="declare the classification order, bottom first: "
                                 "`labels public < internal < confidential`")
            return ir.Lit(value=None), ERROR
        return ir.Ctx(source="session", key=key, span=node.span), t

    def _count(self, node: ast.Count, fr: _Frame):
        self._no_context_in_forbid(fr, "session", node.span)
        tools = expand_selector(node.selector, self.scope, self.sink)
        return ir.Count(tools=tools, within_s=node.within.seconds if node.within else None, span=node.span), INT

    def _used(self, node: ast.Used, fr: _Frame):
        self._no_context_in_forbid(fr, "session", node.span)
        tools = expand_selector(node.selector, self.scope, self.sink)
        return ir.Used(tools=tools, span=node.span), BOOL

    # -- operators

    def _len(self, node: ast.Len, fr: _Frame):
        arg, t = self.expr(node.arg, fr)
        if not (t in (STR, JSON, TAGS, ERROR) or isinstance(t, (ListT, SetT))):
            self.sink.error("E0308", f"`len` needs a string, list or json value, found `{show(t)}`", node.arg.span)
        return ir.Len(arg=arg, span=node.span), INT

    def _has(self, node: ast.Has, fr: _Frame):
        path = node.path
        parts = path.parts
        root = parts[0]
        out = lambda target: (ir.Has(target=target, span=node.span), BOOL)  # noqa: E731
        if root == "params" and root not in fr.vars:
            if len(parts) != 2:
                return self._has_not_applicable(node, "`has` tests a whole parameter, not a field" if len(parts) > 2
                                                else "`has` needs a parameter: `has params.NAME`")
            spec = fr.tool.param(parts[1])
            if spec is None:
                self.sink.error("E0214", f"unknown parameter `{parts[1]}` of tool `{fr.tool.name}`", path.span,
                                help=self._params_help(fr.tool, parts[1]))
                return ir.Lit(value=None), ERROR
            if not spec.may_be_absent:
                why = (f"`{spec.name}` has a default, so it is always present" if spec.has_default
                       else f"`{spec.name}` is required, so it is always present")
                self.sink.error("E0312", f"`has params.{spec.name}` is always true", node.span,
                                help=why + "; remove the test")
                return ir.Lit(value=None), ERROR
            return out(ir.Param(name=spec.name, span=path.span))
        if root == "env" and root not in fr.vars:
            self._no_context_in_forbid(fr, "env", path.span)
            if len(parts) != 2:
                return self._has_not_applicable(node, "`has` needs an env attribute: `has env.NAME`")
            if parts[1] not in self.scope.env:
                self.sink.error("E0218", f"unknown env attribute `{parts[1]}`", path.span,
                                help=self._env_help(parts[1]))
                return ir.Lit(value=None), ERROR
            return out(ir.Ctx(source="env", key=parts[1], span=path.span))
        if root in ("risk", "identity", "intent") and root not in fr.vars:
            self._no_context_in_forbid(fr, root, path.span)
            if root == "intent" and len(parts) == 1:
                return out(ir.Ctx(source="intent", key="", span=path.span))
            if len(parts) != 2:
                return self._has_not_applicable(node, f"`has` needs an attribute: `has {root}.NAME`")
            keys = CONTEXT_TYPES[root]
            if parts[1] not in keys:
                self.sink.error("E0219", f"unknown attribute `{root}.{parts[1]}`", path.span,
                                help=f"`{root}` has {quoted(keys, limit=10)}")
                return ir.Lit(value=None), ERROR
            return out(ir.Ctx(source=root, key=parts[1], span=path.span))
        if root == "session" and root not in fr.vars:
            return self._has_not_applicable(node, "session attributes are always present")
        # A const, label or quantifier variable is always present; an unknown name is reported as such.
        target, t = self._path(path, fr)
        if t is ERROR:
            return target, ERROR
        return self._has_not_applicable(node, f"`{'.'.join(parts)}` is always present")

    def _has_not_applicable(self, node: ast.Has, why: str):
        self.sink.error("E0312", f"`has` cannot test `{'.'.join(node.path.parts)}`", node.span,
                        help=why + "; `has` applies to optional parameters (`has params.x`) and to "
                                   "context attributes (`has env.x`, `has risk.x`, `has identity.x`, `has intent`)")
        return ir.Lit(value=None), ERROR

    def _not(self, node: ast.Not, fr: _Frame):
        operand, t = self.expr(node.operand, fr)
        self._require_bool(node.operand, t, "the operand of `not`")
        return ir.Not(operand=operand, span=node.span), BOOL

    def _and(self, node: ast.And, fr: _Frame):
        # LANGUAGE.md §4: `has params.x and ...` guards the reads of x in later conjuncts.
        guarded = set(fr.guarded)
        items = []
        for item in node.items:
            sub, t = self.expr(item, attrs.evolve(fr, guarded=frozenset(guarded)))
            self._require_bool(item, t, "an operand of `and`")
            items.append(sub)
            if isinstance(sub, ir.Has) and isinstance(sub.target, ir.Param):
                guarded.add(sub.target.name)
        return ir.And(items=tuple(items), span=node.span), BOOL

    def _or(self, node: ast.Or, fr: _Frame):
        # `not (has params.x) or ...`: later disjuncts only matter when x is present.
        guarded = set(fr.guarded)
        items = []
        for item in node.items:
            sub, t = self.expr(item, attrs.evolve(fr, guarded=frozenset(guarded)))
            self._require_bool(item, t, "an operand of `or`")
            items.append(sub)
            if (isinstance(sub, ir.Not) and isinstance(sub.operand, ir.Has)
                    and isinstance(sub.operand.target, ir.Param)):
                guarded.add(sub.operand.target.name)
        return ir.Or(items=tuple(items), span=node.span), BOOL

    def _cmp(self, node: ast.Cmp, fr: _Frame):
        left, lt = self.expr(node.left, fr)
        right, rt = self.expr(node.right, fr)
        result = lambda l, r: (ir.Cmp(op=node.op, left=l, right=r, span=node.span), BOOL)  # noqa: E731
        if lt is ERROR or rt is ERROR:
            return result(left, right)
        op = node.op
        if op in ("==", "!="):
            got = self._equality(node, left, lt, right, rt)
            return result(*(got or (left, right)))
        if JSON in (lt, rt):
            self.sink.error("E0315", f"`{op}` cannot take a `json` value", node.span,
                            help="`json` values support only `has`, `len` and `==`")
            return result(left, right)
        if op in ("<", "<=", ">", ">="):
            if not ((lt in NUMERIC and rt in NUMERIC) or (lt is LABEL and rt is LABEL)):
                self.sink.error("E0303", f"`{op}` needs two numbers or two labels, found `{show(lt)}` and `{show(rt)}`",
                                node.span, help=self._order_help(lt, rt))
            return result(left, right)
        if op in ("in", "not in"):
            got = self._membership(node, op, node.left, left, lt, node.right, right, rt)
            return result(*(got or (left, right)))
        if op == "contains" and (isinstance(lt, (ListT, SetT)) or lt is TAGS):
            got = self._membership(node, op, node.right, right, rt, node.left, left, lt)
            return result(*(reversed(got) if got else (left, right)))
        # contains, startswith, endswith on strings (a path reads as its normalised text)
        if lt not in (STR, PATH) or rt != STR:
            help = None
            if lt in (EMAIL, URL) or rt in (EMAIL, URL):
                help = "compare a field instead: `.local` / `.domain` of an email, `.scheme` / `.host` / `.path` of a url"
            elif op == "contains":
                help = "`contains` takes a string and a string, or a list and an element"
            self.sink.error("E0305", f"`{op}` needs two strings, found `{show(lt)}` and `{show(rt)}`", node.span,
                            help=help)
        return result(left, right)

    def _order_help(self, lt: Any, rt: Any) -> str | None:
        if LABEL in (lt, rt):
            return "compare `session.level` with a label name, e.g. `session.level >= confidential`"
        return None

    def _equality(self, node: ast.Cmp, left, lt, right, rt):
        if JSON in (lt, rt):
            other, other_expr = (rt, right) if lt == JSON else (lt, left)
            if other == JSON or (isinstance(other_expr, ir.Lit) and not isinstance(other, SetT)):
                return left, right
            self.sink.error("E0302", f"cannot compare `json` with `{show(other)}`", node.span,
                            help="a `json` value compares only with another `json` value or a literal")
            return None
        if same_type(lt, rt):
            return left, right
        if self._coercible(right, rt, lt):
            coerced = self._coerce(right, node.right, lt)
            return (left, coerced) if coerced is not None else None
        if self._coercible(left, lt, rt):
            coerced = self._coerce(left, node.left, rt)
            return (coerced, right) if coerced is not None else None
        help = None
        if lt in (EMAIL, URL) or rt in (EMAIL, URL):
            help = ("compare a field (`.domain`, `.local`, `.host`, ...), or compare with a string "
                    "literal, which is read as an email or url")
        elif isinstance(lt, EnumT) or isinstance(rt, EnumT):
            help = "an enum compares with a string literal among its values, or with the same enum"
        self.sink.error("E0302", f"cannot compare `{show(lt)}` with `{show(rt)}`", node.span, help=help)
        return None

    def _coercible(self, expr: ir.Expr, t: Any, target: Any) -> bool:
        """Whether `expr` is a string literal (or a list/set of them) that reads as `target`."""
        if not isinstance(expr, ir.Lit):
            return False
        if isinstance(target, (ListT, SetT)) and type(t) is type(target):
            return t.elem in (STR, ANY) and (target.elem in COERCIBLE or isinstance(target.elem, EnumT))
        return t == STR and (target in COERCIBLE or isinstance(target, EnumT))

    def _coerce(self, lit: ir.Lit, node: ast.Expr, target: Any) -> ir.Lit | None:
        """A string literal read as an email, url, path or enum value (validated now, not at run time)."""
        if isinstance(target, (ListT, SetT)):
            target = target.elem
        if isinstance(lit.value, str):
            value = self._coerce_one(lit.value, target, node.span)
            return None if value is None else attrs.evolve(lit, value=value)
        items = list(lit.value) if isinstance(lit.value, tuple) else sorted(lit.value)
        spans = ([i.span for i in node.items] if isinstance(node, (ast.ListLit, ast.SetLit))
                 and isinstance(lit.value, tuple) else [node.span] * len(items))
        out = [self._coerce_one(v, target, s) for v, s in zip(items, spans)]
        if any(v is None for v in out):
            return None
        return attrs.evolve(lit, value=tuple(out) if isinstance(lit.value, tuple) else frozenset(out))

    def _coerce_one(self, text: str, target: Any, span: Span | None):
        try:
            return values.validate(target, text)
        except InvalidValue as err:
            if isinstance(target, EnumT):
                self.sink.error("E0313", f"`{_shown_value(text)}` is not a value of `{show(target)}`", span,
                                help=did_you_mean(text, target.values)
                                or f"the values are {', '.join(_shown_value(v) for v in target.values)}")
            else:
                self.sink.error("E0314", f"`{_shown_value(text)}` is not a valid `{show(target)}`: {err.message}",
                                span)
            return None

    def _membership(self, node: ast.Cmp, op: str, elem_node, elem, et, coll_node, coll, ct):
        """`elem in coll` (and `coll contains elem`): returns the possibly coerced (elem, coll)."""
        if not (isinstance(ct, (ListT, SetT)) or ct is TAGS):
            help = "to test for a substring write `TEXT contains PART`" if ct == STR and op != "contains" else None
            self.sink.error("E0304", f"`{op}` needs a list or set, found `{show(ct)}`", coll_node.span, help=help)
            return None
        if isinstance(et, (ListT, SetT)) or et in (TAGS, LABEL):
            self.sink.error("E0304", f"`{op}` needs a single value as the element, found `{show(et)}`",
                            elem_node.span, help="quantify over a list: `all x in LIST: x in OTHER`")
            return None
        if et == JSON or (ct is not TAGS and ct.elem == JSON):
            self.sink.error("E0315", f"`{op}` cannot take a `json` value", node.span,
                            help="`json` values support only `has`, `len` and `==`")
            return None
        if ct is TAGS:
            if et != STR:
                self.sink.error("E0304", f"`session.tags` holds tag names (`str`), found `{show(et)}`", elem_node.span)
                return None
            if isinstance(elem, ir.Lit) and elem.value not in self.scope.tag_set:
                self.sink.error("E0217", f"unknown tag `{elem.value}`", elem_node.span,
                                help=self._tags_help(elem.value))
                return None
            return elem, coll
        member = ct.elem
        if same_type(et, member):
            return elem, coll
        if self._coercible(coll, ct, type(ct)(et)):
            coerced = self._coerce(coll, coll_node, et)
            return (elem, coerced) if coerced is not None else None
        if self._coercible(elem, et, member):
            coerced = self._coerce(elem, elem_node, member)
            return (coerced, coll) if coerced is not None else None
        self.sink.error("E0304", f"`{op}` needs a collection of `{show(et)}`, found `{show(ct)}`", node.span)
        return None

    def _tags_help(self, name: str) -> str:
        if not self.scope.tags:
            return "no tags are declared; declare them with `tags NAME, ...`"
        return did_you_mean(name, self.scope.tags) or f"declared tags: {quoted(self.scope.tags)}"

    def _matches(self, node: ast.Matches, fr: _Frame):
        value, t = self.expr(node.value, fr)
        if t not in (STR, PATH, ERROR):
            self.sink.error("E0306", f"`matches` needs a string or a path, found `{show(t)}`", node.value.span,
                            help="match a field instead: `.local` / `.domain` of an email, `.host` / `.path` of a url"
                            if t in (EMAIL, URL) else None)
        try:
            parse_regex(node.pattern, node.flags)
        except RegexError as err:
            self.sink.error("E0307", f"invalid regular expression: {err.message}",
                            _regex_span(node, err.offset),
                            help="the subset has literals, escaped metacharacters, `.`, classes, `\\d \\w \\s`, "
                                 "`* + ? {m} {m,n}`, `|`, groups and `(?:...)`, and the flag `i`")
        return ir.Match(value=value, pattern=node.pattern, flags=node.flags, span=node.span), BOOL

    def _from(self, node: ast.From, fr: _Frame):
        if fr.forbid:
            self.sink.error("E0404", "a `forbid` rule cannot use `from`", node.span,
                            help="provenance depends on the session, and a forbid must never be unknown; "
                                 "use a `deny` rule")
        value, t = self.expr(node.value, fr)
        if not (t in PROVENANCE_SCALARS or isinstance(t, EnumT) or t is ERROR):
            source = {"user": "user", "untrusted": "untrusted"}.get(node.source.kind, "TOOL")
            if isinstance(value, ir.Param) and isinstance(t, ListT):
                help = f"write `all x in params.{value.name}: x from {source}`"
            elif isinstance(t, ListT):
                help = f"quantify over the list: `all x in LIST: x from {source}`"
            else:
                help = "`from` applies to strings, emails, urls, paths, numbers and enum values"
            self.sink.error("E0309", f"`from` needs a single value, found `{show(t)}`", node.value.span, help=help)
        tools: tuple[str, ...] = ()
        if node.source.kind == "tools":
            tools = expand_selector(node.source.selector, self.scope, self.sink)
        return ir.From(value=value, source=node.source.kind, tools=tools, span=node.span), BOOL

    def _quant(self, node: ast.Quant, fr: _Frame):
        var = node.var.value
        ok = True
        if var in RESERVED_WORDS or var in CONTEXT_ROOTS:
            self.sink.error("E0211", f"`{var}` is reserved and cannot name a quantifier variable", node.var.span)
            ok = False
        elif var in fr.vars:
            self.sink.error("E0221", f"quantifier variable `{var}` shadows another quantifier variable", node.var.span,
                            notes=[f"`{var}` is bound at {at(fr.vars[var][1])}"], help="rename one of them")
            ok = False
        elif var in self.scope.consts or var in self.scope.label_levels:
            kind = "const" if var in self.scope.consts else "label"
            decl = self.scope.consts[var].span if kind == "const" else None
            self.sink.error("E0221", f"quantifier variable `{var}` shadows the {kind} `{var}`", node.var.span,
                            notes=[f"the {kind} is declared at {at(decl)}"] if decl else (), help="rename the variable")
            ok = False
        coll, ct = self.expr(node.collection, fr)
        if isinstance(ct, (ListT, SetT)):
            vt = ct.elem
        else:
            if ct is not ERROR:
                self.sink.error("E0310", f"`{node.kind}` needs a list to range over, found `{show(ct)}`",
                                node.collection.span)
            vt = ERROR
        if not ok:
            vt = ERROR
        inner = attrs.evolve(fr, vars={**fr.vars, var: (vt, node.var.span)})
        body, bt = self.expr(node.body, inner)
        self._require_bool(node.body, bt, "a quantifier body")
        return ir.Quant(kind=node.kind, var=var, collection=coll, body=body, span=node.span), BOOL

    # -- modify values

    def _set_value(self, assign: ast.Assign, spec: ir.ParamSpec, tool: ir.Tool) -> ir.Expr | None:
        node = assign.value
        name = spec.name
        if spec.type is ERROR:
            return None
        if isinstance(node, ast.LITERALS):
            good, value = validate_literal(node, spec.type, f"the value of `set {name}`", "E0410", self.sink)
            return ir.Lit(value=value, span=node.span) if good else None
        if isinstance(node, ast.PathRef):
            parts = node.parts
            if len(parts) == 1 and parts[0] in self.scope.consts:
                return self._set_literal(node, name, spec, self.scope.consts[parts[0]].value, const=parts[0])
            if len(parts) == 2 and parts[0] in ("params", "env"):
                fr = _Frame(tool=tool)
                value, t = self._path(node, fr)
                if t is ERROR:
                    return None
                if not assignable(t, spec.type):
                    self.sink.error("E0410", f"cannot set `{name}` (`{show(spec.type)}`) to `{'.'.join(parts)}` "
                                             f"(`{show(t)}`)", node.span)
                    return None
                return value
        self.sink.error("E0409", f"the value of `set {name}` must be a literal, a const, `params.NAME` or `env.NAME`",
                        node.span, help="a modify copies values; it does not compute them")
        return None

    def _set_literal(self, node: ast.Expr, name: str, spec: ir.ParamSpec, value: Any, const: str | None):
        if isinstance(value, frozenset):
            self.sink.error("E0410", f"the value of `set {name}` cannot be a set", node.span,
                            help="parameter values are JSON: use a list `[...]`")
            return None
        try:
            canonical = values.validate(spec.type, value)
        except InvalidValue as err:
            self.sink.error("E0410", f"the value of `set {name}` is not a valid `{show(spec.type)}`: {err.message}",
                            node.span)
            return None
        return ir.Lit(value=canonical, const=const, span=node.span)


def _regex_span(node: ast.Matches, offset: int) -> Span | None:
    s = node.pattern_span
    if s is None:
        return node.span
    col = s.col + 1 + max(0, min(offset, len(node.pattern)))  # +1 for the opening slash
    return Span(file=s.file, line=s.line, col=col, end_line=s.line, end_col=col + 1)
