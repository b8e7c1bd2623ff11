"""The IR: one resolved, type-checked policy set, shared by every later stage.

The reference interpreter, the Z3 analysis and the compiler all read this and
nothing else. Names are resolved (consts inlined as literals, labels as levels,
selectors expanded to the sorted tuple of tool names they cover), priorities
are filled in, and the condition of a rule is well-typed for every tool its
selector covers. Types are those of `aarm_runtime.values` (one meaning of a
value for compiler and runtime).

Literal values use the canonical value space of `aarm_runtime.values`: str,
int, `decimal.Decimal`, bool, `Email`, `Url`, `Path`, tuples for lists and
frozensets for set constants.
"""

from __future__ import annotations

import functools
from typing import Any, Union

import attrs

from aarmc.source import Span, span_field

frozen = attrs.frozen(kw_only=True)

DEFAULT_PRIORITY = {"deny": 300, "defer": 200, "step_up": 150, "modify": 120, "allow": 100}
CONTEXT_SOURCES = ("session", "intent", "identity", "env", "risk")
SESSION_KEYS = ("tags", "level", "actions")
INTENT_KEYS = ("text", "entities", "tools", "score")
IDENTITY_KEYS = ("principal", "agent", "service", "session", "role", "scopes", "delegated")
RISK_KEYS = ("injection", "confidence", "drift")


# ---- expressions --------------------------------------------------------------

@frozen
class Lit:
    """A literal or an inlined const (`const` names it, for messages)."""
    value: Any
    const: str | None = attrs.field(default=None, eq=False)
    span: Span | None = span_field()


@frozen
class Param:
    """`params.NAME`: a top-level parameter of the action's (resolved) tool."""
    name: str
    span: Span | None = span_field()


@frozen
class Var:
    """A quantifier variable."""
    name: str
    span: Span | None = span_field()


@frozen
class Field:
    """`.local` / `.domain` of an email, `.scheme` / `.host` / `.path` of a url."""
    base: "Expr"
    name: str
    span: Span | None = span_field()


@frozen
class Ctx:
    """A context term: `source` in CONTEXT_SOURCES, `key` the attribute.

    session.{tags,level,actions} are always known; intent.*, identity.*, env.*
    and risk.* are unknown when absent (Kleene logic, LANGUAGE.md §5.3).
    """
    source: str
    key: str
    span: Span | None = span_field()


@frozen
class Label:
    """A label name, as its level (0 = bottom)."""
    name: str
    level: int
    span: Span | None = span_field()


@frozen
class Count:
    """`session.count(SEL [within D])`: executed actions of these tools (the current one excluded)."""
    tools: tuple[str, ...]
    within_s: int | None = None
    span: Span | None = span_field()


@frozen
class Used:
    tools: tuple[str, ...]
    span: Span | None = span_field()


@frozen
class Len:
    arg: "Expr"
    span: Span | None = span_field()


@frozen
class Has:
    """`has params.x` (optional param present) or `has env.x` / `has intent` ... (context present)."""
    target: "Param | Ctx"
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


@frozen
class Cmp:
    """op: == != < <= > >= in `not in` startswith endswith contains."""
    op: str
    left: "Expr"
    right: "Expr"
    span: Span | None = span_field()


@frozen
class Match:
    """`value matches /pattern/flags` (search, ASCII semantics: aarm_runtime.regex)."""
    value: "Expr"
    pattern: str
    flags: str
    span: Span | None = span_field()


@frozen
class From:
    """Provenance: source is `user`, `untrusted` or `tools` (then `tools` names them)."""
    value: "Expr"
    source: str
    tools: tuple[str, ...] = ()
    span: Span | None = span_field()


@frozen
class Quant:
    kind: str  # "all" | "any"
    var: str
    collection: "Expr"
    body: "Expr"
    span: Span | None = span_field()


Expr = Union[Lit, Param, Var, Field, Ctx, Label, Count, Used, Len, Has, Not, And, Or, Cmp, Match, From, Quant]


# ---- declarations ---------------------------------------------------------------

@frozen
class ParamSpec:
    """A tool parameter. `type` is never an OptT: optionality is `optional`.

    A param with a default is optional to the caller but always present after
    validation (the default is filled in), so only `optional and not has_default`
    params can be absent in a condition.
    """
    name: str
    type: Any  # aarm_runtime.values type descriptor
    optional: bool = False
    has_default: bool = False
    default: Any = None  # canonical value
    sensitive: bool = False
    span: Span | None = span_field()

    @property
    def may_be_absent(self) -> bool:
        return self.optional and not self.has_default


@frozen
class Output:
    """What the session acquires when the tool's output is recorded.

    `declared=False` (no `returns`): unknown classification = top label and untrusted.
    `none=True`: the output is not data (no label, no tags, trusted).
    """
    none: bool
    level: int = 0
    untrusted: bool = False
    tags: tuple[str, ...] = ()
    declared: bool = True


@frozen
class Wrap:
    """A meta-tool: the real tool is named by param `name_param`, its params are in `args_param`."""
    name_param: str
    args_param: str


@frozen
class Tool:
    name: str
    params: tuple[ParamSpec, ...]
    output: Output
    effects: tuple[str, ...] = ()
    wraps: Wrap | None = None
    span: Span | None = span_field()

    def param(self, name: str) -> ParamSpec | None:
        for p in self.params:
            if p.name == name:
                return p
        return None


@frozen
class EnvVar:
    name: str
    type: Any
    span: Span | None = span_field()


@frozen
class Assignment:
    """`set NAME = EXPR` of a modify (EXPR: Lit, Param or Ctx(env)); redact is a Lit of REDACTED."""
    param: str
    value: Expr
    span: Span | None = span_field()


REDACTED = "[REDACTED]"


@frozen
class Rule:
    id: str
    effect: str  # forbid deny allow modify step_up defer
    priority: int  # filled in from DEFAULT_PRIORITY; forbid: -1 (not ranked)
    tools: tuple[str, ...]  # sorted names the selector covers
    condition: Expr | None = None  # None = always true
    assignments: tuple[Assignment, ...] = ()  # modify: set and redact, in source order
    approvers: tuple[str, ...] = ()
    timeout_s: int | None = None
    because: str | None = None
    index: int = 0  # source order in the policy set
    explicit_priority: bool = False
    span: Span | None = span_field()


@frozen
class Assert:
    name: str
    kind: str  # "never" | "always"
    decisions: tuple[str, ...]
    tools: tuple[str, ...]
    condition: Expr | None = None
    span: Span | None = span_field()


@frozen
class SourceDigest:
    file: str
    sha256: str


@frozen
class Policy:
    name: str
    version: str
    default: str  # "allow" | "deny"
    labels: tuple[str, ...]  # bottom first; empty when undeclared
    tags: tuple[str, ...]
    tools: tuple[Tool, ...]  # sorted by name
    env: tuple[EnvVar, ...] = ()
    consts: tuple[tuple[str, Any], ...] = ()
    rules: tuple[Rule, ...] = ()  # source order
    asserts: tuple[Assert, ...] = ()
    sources: tuple[SourceDigest, ...] = ()

    @property
    def top_level(self) -> int:
        """The level of unknown classification: the top label (0 when no labels are declared)."""
        return max(len(self.labels) - 1, 0)

    def tool(self, name: str) -> Tool | None:
        return self.tool_map.get(name)

    @functools.cached_property
    def tool_map(self) -> dict[str, Tool]:
        return {t.name: t for t in self.tools}

    def rules_for(self, tool: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if tool in r.tools)
