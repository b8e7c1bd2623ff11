"""The symbol table of a policy set, and selector expansion.

`resolve` builds one `Scope` from the declarations of every file; the type
checker reads it to resolve names in conditions. Selectors are expanded here so
that rules, asserts, `session.count(...)`, `session.used(...)` and `from SEL`
share one meaning of a selector item.
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Any

import attrs

from aarmc.semantics import ir
from aarmc.semantics.report import Sink, quoted
from aarmc.source import Span
from aarmc.syntax import ast

# Words that would make a bare-name reference ambiguous: the grammar's own
# keywords (LANGUAGE.md §3) and the roots of qualified references.
RESERVED_WORDS = ("not", "has", "all", "any", "true", "false", "len")
CONTEXT_ROOTS = ("params", "env", "risk", "identity", "intent", "session")


@attrs.frozen(kw_only=True)
class Const:
    name: str
    value: Any  # canonical: scalar, tuple (list) or frozenset (set)
    type: Any
    span: Span | None = attrs.field(default=None, eq=False)


@attrs.frozen(kw_only=True)
class Scope:
    """Every declared name of a policy set (tools already lowered to IR)."""

    tools: dict[str, ir.Tool]
    labels: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    consts: dict[str, Const] = attrs.field(factory=dict)
    env: dict[str, Any] = attrs.field(factory=dict)  # name -> value type

    @functools.cached_property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.tools))

    @functools.cached_property
    def label_levels(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    @functools.cached_property
    def tag_set(self) -> frozenset[str]:
        return frozenset(self.tags)

    @functools.cached_property
    def by_effect(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for name in self.tool_names:
            for effect in self.tools[name].effects:
                out.setdefault(effect, []).append(name)
        return {k: tuple(v) for k, v in out.items()}


def glob_matches(pattern: str, name: str) -> bool:
    """`*` matches any run of characters within one dotted segment.

    >>> glob_matches("email.*", "email.send"), glob_matches("email.*", "email.x.y")
    (True, False)
    >>> glob_matches("travel.get_*", "travel.get_flight")
    True
    """
    return _glob_regex(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern:
    return re.compile("[^.]*".join(re.escape(part) for part in pattern.split("*")))


def did_you_mean(name: str, candidates) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return f"did you mean `{close[0]}`?" if close else None


def expand_selector(selector: ast.Selector, scope: Scope, sink: Sink, *, decided: bool = False) -> tuple[str, ...]:
    """The sorted names of the declared tools a selector covers.

    Every item must select something: a misspelt tool or a glob that matches
    nothing is a silent hole in a policy, so it is an error (E0212, E0213).

    `decided=True` for the selectors of rules and asserts: a meta-tool (`wraps`)
    is never decided itself — the runtime resolves the call to the tool it wraps
    first — so `any`, globs and `effects E` leave meta-tools out, and naming one
    is an error (E0413): a rule on it could never apply.
    """
    selected: set[str] = set()
    for item in selector.items:
        found = _expand_item(item, scope, sink)
        if decided:
            wrappers = [n for n in found if scope.tools[n].wraps is not None]
            if wrappers and item.kind == "tool" and "*" not in item.name:
                sink.error("E0413", f"`{item.name}` is a meta-tool: a rule or assert on it never applies",
                           item.span,
                           help="a call through a meta-tool is decided as the tool it wraps; "
                                "select the wrapped tools instead")
            found = tuple(n for n in found if scope.tools[n].wraps is None)
        selected.update(found)
    return tuple(sorted(selected))


def _expand_item(item: ast.SelItem, scope: Scope, sink: Sink) -> tuple[str, ...]:
    if item.kind == "any":
        if not scope.tools:
            sink.error("E0213", "`any` selects no tool: no tools are declared", item.span,
                       help="declare tools with `tool service.operation(...)`")
        return scope.tool_names
    if item.kind == "effects":
        found = scope.by_effect.get(item.name, ())
        if not found:
            known = sorted(scope.by_effect)
            sink.error("E0213", f"no declared tool has effect `{item.name}`", item.span,
                       help=(did_you_mean(item.name, known) or f"declared effects: {quoted(known)}") if known
                       else "no tool declares any effects; add `effects NAME` to a tool declaration")
        return found
    if "*" in item.name:
        found = tuple(n for n in scope.tool_names if glob_matches(item.name, n))
        if not found:
            sink.error("E0213", f"`{item.name}` matches no declared tool", item.span,
                       help="`*` matches within the last dotted segment only: `email.*` matches "
                            "`email.send` but not `email.x.y`")
        return found
    if item.name not in scope.tools:
        sink.error("E0212", f"unknown tool `{item.name}`", item.span,
                   help=did_you_mean(item.name, scope.tool_names)
                   or f"declare it: `tool {item.name}(...)`")
        return ()
    return (item.name,)
