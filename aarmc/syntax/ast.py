"""The typed AST of one policy file.

Frozen attrs records; children are tuples; every node carries its span, which
is left out of equality (so parse → print → parse compares equal). The AST is
what the user wrote, names unresolved; `aarmc.semantics` turns a set of
modules into the IR.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Union

import attrs

from aarmc.source import Span, span_field

frozen = attrs.frozen(kw_only=True)


# ---- identifiers and small pieces -------------------------------------------

@frozen
class Name:
    """A declared or referenced identifier with its own span."""
    value: str
    span: Span | None = span_field()


@frozen
class Duration:
    """A duration literal (`15m`); kept in seconds, printed in the largest exact unit."""
    seconds: int
    span: Span | None = span_field()


# ---- types --------------------------------------------------------------------

PRIM_TYPES = ("str", "int", "decimal", "bool", "email", "url", "path", "json")


@frozen
class PrimType:
    name: str  # one of PRIM_TYPES
    span: Span | None = span_field()


@frozen
class EnumType:
    values: tuple[str, ...]
    span: Span | None = span_field()


@frozen
class ListType:
    elem: "TypeExpr"
    span: Span | None = span_field()


@frozen
class OptType:
    inner: "TypeExpr"
    span: Span | None = span_field()


TypeExpr = Union[PrimType, EnumType, ListType, OptType]


# ---- expressions --------------------------------------------------------------

@frozen
class StrLit:
    value: str
    span: Span | None = span_field()


@frozen
class IntLit:
    value: int
    span: Span | None = span_field()


@frozen
class DecLit:
    value: Decimal
    span: Span | None = span_field()


@frozen
class BoolLit:
    value: bool
    span: Span | None = span_field()


@frozen
class ListLit:
    items: tuple["Expr", ...]
    span: Span | None = span_field()


@frozen
class SetLit:
    items: tuple["Expr", ...]
    span: Span | None = span_field()


@frozen
class PathRef:
    """`params.to.domain`, `env.x`, `risk.drift`, `c.domain`, `internal_domains`, `confidential`."""
    parts: tuple[str, ...]
    span: Span | None = span_field()


@frozen
class SessionRef:
    """`session.tags`, `session.level`, `session.actions` (parts after `session.`)."""
    parts: tuple[str, ...]
    span: Span | None = span_field()


@frozen
class SelItem:
    """One selector item: kind is `tool` (a name or a glob with `*`), `any` or `effects`."""
    kind: str
    name: str = ""
    span: Span | None = span_field()


@frozen
class Selector:
    items: tuple[SelItem, ...]
    span: Span | None = span_field()


@frozen
class Count:
    """`session.count(SELECTOR [within D])`."""
    selector: Selector
    within: Duration | None = None
    span: Span | None = span_field()


@frozen
class Used:
    """`session.used(SELECTOR)`."""
    selector: Selector
    span: Span | None = span_field()


@frozen
class Len:
    arg: "Expr"
    span: Span | None = span_field()


@frozen
class Has:
    path: PathRef
    span: Span | None = span_field()


@frozen
class Not:
    operand: "Expr"
    span: Span | None = span_field()


@frozen
class And:
    items: tuple["Expr", ...]
    span: Span | None = span_field()


@frozen
class Or:
    items: tuple["Expr", ...]
    span: Span | None = span_field()


CMP_OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "startswith", "endswith", "contains")


@frozen
class Cmp:
    op: str  # one of CMP_OPS
    left: "Expr"
    right: "Expr"
    span: Span | None = span_field()


@frozen
class Matches:
    value: "Expr"
    pattern: str       # the regex source between the slashes, escapes kept
    flags: str         # "" or "i"
    span: Span | None = span_field()
    pattern_span: Span | None = span_field()


@frozen
class Source:
    """The right side of `from`: kind `user`, `untrusted` or `tools` (with a selector)."""
    kind: str
    selector: Selector | None = None
    span: Span | None = span_field()


@frozen
class From:
    value: "Expr"
    source: Source
    span: Span | None = span_field()


@frozen
class Quant:
    kind: str  # "all" | "any"
    var: Name
    collection: "Expr"
    body: "Expr"
    span: Span | None = span_field()


Expr = Union[StrLit, IntLit, DecLit, BoolLit, ListLit, SetLit, PathRef, SessionRef,
             Count, Used, Len, Has, Not, And, Or, Cmp, Matches, From, Quant]
LITERALS = (StrLit, IntLit, DecLit, BoolLit, ListLit, SetLit)


# ---- declarations -------------------------------------------------------------

@frozen
class PolicyDecl:
    name: str
    version: str
    span: Span | None = span_field()


@frozen
class DefaultDecl:
    posture: str  # "allow" | "deny"
    span: Span | None = span_field()


@frozen
class LabelsDecl:
    names: tuple[Name, ...]
    span: Span | None = span_field()


@frozen
class TagsDecl:
    names: tuple[Name, ...]
    span: Span | None = span_field()


@frozen
class ParamDecl:
    name: Name
    type: TypeExpr
    default: Expr | None = None
    sensitive: bool = False
    span: Span | None = span_field()


@frozen
class Returns:
    """`returns none` (none=True) or `returns LEVEL [untrusted] [tagged T, ...]`."""
    none: bool
    level: Name | None = None
    untrusted: bool = False
    tags: tuple[Name, ...] = ()
    span: Span | None = span_field()


@frozen
class Wraps:
    """`wraps params.name with params.args`: a meta-tool naming the real tool."""
    name: Expr
    args: Expr
    span: Span | None = span_field()


@frozen
class ToolDecl:
    name: Name
    params: tuple[ParamDecl, ...]
    returns: Returns | None = None
    effects: tuple[Name, ...] = ()
    wraps: Wraps | None = None
    span: Span | None = span_field()


@frozen
class EnvDecl:
    name: Name
    type: TypeExpr
    span: Span | None = span_field()


@frozen
class ConstDecl:
    name: Name
    value: Expr  # a literal
    span: Span | None = span_field()


@frozen
class Assign:
    name: Name
    value: Expr
    span: Span | None = span_field()


@frozen
class ModifyArgs:
    sets: tuple[Assign, ...] = ()
    redacts: tuple[Name, ...] = ()
    span: Span | None = span_field()


@frozen
class StepUpArgs:
    approvers: tuple[str, ...]
    timeout: Duration
    span: Span | None = span_field()


@frozen
class DeferArgs:
    timeout: Duration
    span: Span | None = span_field()


EFFECTS = ("forbid", "deny", "allow", "modify", "step_up", "defer")
DECISIONS = ("allow", "deny", "modify", "step_up", "defer")


@frozen
class RuleDecl:
    effect: str  # one of EFFECTS
    id: str
    selector: Selector
    priority: int | None = None
    condition: Expr | None = None
    args: ModifyArgs | StepUpArgs | DeferArgs | None = None
    because: str | None = None
    span: Span | None = span_field()
    id_span: Span | None = span_field()
    priority_span: Span | None = span_field()


@frozen
class AssertDecl:
    name: str
    kind: str  # "never" | "always"
    decisions: tuple[str, ...]
    selector: Selector
    condition: Expr | None = None
    span: Span | None = span_field()


Decl = Union[PolicyDecl, DefaultDecl, LabelsDecl, TagsDecl, ToolDecl, EnvDecl,
             ConstDecl, RuleDecl, AssertDecl]


@frozen
class Comment:
    """A `#` comment, kept so that `aarmc fmt` does not lose it (not part of equality)."""
    line: int
    text: str


@frozen
class Module:
    """One parsed file."""
    file: str
    decls: tuple[Decl, ...]
    comments: tuple[Comment, ...] = attrs.field(default=(), eq=False, repr=False)
