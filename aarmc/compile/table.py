"""IR → decision table: the content of a compiled artifact, before it is signed.

`build_table(policy)` lowers every condition into one shared expression
program (a DAG: structurally equal sub-expressions become one node, so the
runtime evaluates them once per decision), and gives every tool its table:
its forbid rules, and its other rules grouped by priority, highest first, in
source order within a group. Where several rules of a group test one
parameter for equality with literals (`params.x == "a"`, `params.x.domain
in {...}`) the group gets an equality index, value → candidate rules, so a
decision evaluates only the rules that can be true.

The output is in the shape of `aarm_runtime.artifact` (format 1): CBOR-ready
lists and maps, which `aarmc.compile.artifact` encodes and signs.
"""

from __future__ import annotations

from typing import Any

import attrs
from aarm_runtime import artifact as fmt
from aarm_runtime import dcbor

from aarmc.semantics import ir

#: A group gets an equality index when at least this many of its rules test one key.
INDEX_MIN_RULES = 4


@attrs.frozen(kw_only=True)
class DecisionTable:
    """The compiled content of one policy (CBOR-ready, in the artifact's format)."""

    nodes: tuple[list, ...]
    rules: tuple[list, ...]
    tools: tuple[list, ...]
    indexed_groups: int = 0


class _Pool:
    """Hash-consing of expression nodes by their encoding (which tells `true` from `1`)."""

    def __init__(self) -> None:
        self.nodes: list[list] = []
        self._ids: dict[bytes, int] = {}

    def add(self, node: list) -> int:
        key = dcbor.encode(node)
        got = self._ids.get(key)
        if got is None:
            got = self._ids[key] = len(self.nodes)
            self.nodes.append(node)
        return got

    def expr(self, e: ir.Expr) -> int:
        add = self.add
        if isinstance(e, ir.Lit):
            return add([fmt.LIT, fmt.encode_value(e.value)])
        if isinstance(e, ir.Label):
            return add([fmt.LABEL, e.name, e.level])
        if isinstance(e, ir.Param):
            return add([fmt.PARAM, e.name])
        if isinstance(e, ir.Var):
            return add([fmt.VAR, e.name])
        if isinstance(e, ir.Field):
            return add([fmt.FIELD, self.expr(e.base), e.name])
        if isinstance(e, ir.Ctx):
            return add([fmt.CTX, e.source, e.key])
        if isinstance(e, ir.Count):
            return add([fmt.COUNT, list(e.tools), e.within_s])
        if isinstance(e, ir.Used):
            return add([fmt.USED, list(e.tools)])
        if isinstance(e, ir.Len):
            return add([fmt.LEN, self.expr(e.arg)])
        if isinstance(e, ir.Has):
            return add([fmt.HAS, self.expr(e.target)])
        if isinstance(e, ir.Not):
            return add([fmt.NOT, self.expr(e.operand)])
        if isinstance(e, ir.And):
            return add([fmt.AND, [self.expr(i) for i in e.items]])
        if isinstance(e, ir.Or):
            return add([fmt.OR, [self.expr(i) for i in e.items]])
        if isinstance(e, ir.Cmp):
            return add([fmt.CMP, e.op, self.expr(e.left), self.expr(e.right)])
        if isinstance(e, ir.Match):
            return add([fmt.MATCH, self.expr(e.value), e.pattern, e.flags])
        if isinstance(e, ir.From):
            return add([fmt.FROM, self.expr(e.value), e.source, list(e.tools)])
        if isinstance(e, ir.Quant):
            return add([fmt.QUANT, e.kind, e.var, self.expr(e.collection), self.expr(e.body)])
        raise TypeError(f"not an IR expression: {type(e).__name__}")


def _span(span: Any) -> list | None:
    if span is None:
        return None
    return [span.file, span.line, span.col, span.end_line, span.end_col]


def _encode_rule(rule: ir.Rule, pool: _Pool) -> dict:
    return [
        rule.id,
        rule.effect,
        rule.priority,
        None if rule.condition is None else pool.expr(rule.condition),
        [[a.param, pool.expr(a.value)] for a in rule.assignments],
        list(rule.approvers),
        rule.timeout_s,
        rule.because,
        _span(rule.span),
        rule.explicit_priority,
        list(rule.tools),
    ]


def _encode_tool(tool: ir.Tool, forbid: list, groups: list) -> list:
    return [
        tool.name,
        [
            [p.name, fmt.encode_type(p.type), p.optional, p.has_default,
             fmt.encode_value(p.default) if p.has_default else None, p.sensitive]
            for p in tool.params
        ],
        [tool.output.none, tool.output.level, tool.output.untrusted, list(tool.output.tags), tool.output.declared],
        list(tool.effects),
        None if tool.wraps is None else [tool.wraps.name_param, tool.wraps.args_param],
        forbid,
        groups,
    ]


def _index_key(e: ir.Expr) -> bool:
    """A key expression: closed, never unknown, and read straight from the params."""
    if isinstance(e, ir.Param):
        return True
    return isinstance(e, ir.Field) and isinstance(e.base, ir.Param)


def _literal_keys(value: Any) -> tuple | None:
    """The index keys a literal stands for: text or integers only (never bools, never mixed)."""
    if type(value) in (str, int):
        return (value,)
    if isinstance(value, (tuple, frozenset)) and value:
        kinds = {type(v) for v in value}
        if len(kinds) == 1 and kinds <= {str, int}:
            return tuple(value)
    return None


def _equality_tests(condition: ir.Expr | None) -> list[tuple[ir.Expr, tuple]]:
    """(key expression, keys) for each top-level conjunct `key == k` or `key in {k, ...}`."""
    if condition is None:
        return []
    conjuncts = condition.items if isinstance(condition, ir.And) else (condition,)
    out = []
    for c in conjuncts:
        if not isinstance(c, ir.Cmp) or c.op not in ("==", "in"):
            continue
        left, right = c.left, c.right
        if c.op == "==" and isinstance(left, ir.Lit) and _index_key(right):
            left, right = right, left
        if not (_index_key(left) and isinstance(right, ir.Lit)):
            continue
        if c.op == "==" and type(right.value) not in (str, int):
            continue
        if c.op == "in" and not isinstance(right.value, (tuple, frozenset)):
            continue
        keys = _literal_keys(right.value)
        if keys is not None:
            out.append((left, keys))
    return out


def _group(rules: list[ir.Rule], priority: int, pool: _Pool, positions: dict[str, int]) -> tuple[list, bool]:
    members = [positions[r.id] for r in rules]
    best: dict[int, dict[int, tuple]] = {}  # key node -> rule position -> keys
    for r in rules:
        for key_expr, keys in _equality_tests(r.condition):
            node = pool.expr(key_expr)
            best.setdefault(node, {}).setdefault(positions[r.id], keys)
    index = None
    if best:
        node, per_rule = max(best.items(), key=lambda kv: (len(kv[1]), -kv[0]))
        if len(per_rule) >= INDEX_MIN_RULES:
            by_key: dict[tuple[type, Any], list[int]] = {}
            for pos in sorted(per_rule):
                for k in per_rule[pos]:
                    by_key.setdefault((type(k), k), []).append(pos)
            entries = sorted(([k, sorted(set(v))] for (_, k), v in by_key.items()), key=lambda e: dcbor.encode(e[0]))
            index = [node, entries]
    return [priority, members, index], index is not None


def build_table(policy: ir.Policy) -> DecisionTable:
    """The decision table of a policy (see the module docstring)."""
    rules = sorted(policy.rules, key=lambda r: r.index)
    if [r.index for r in rules] != list(range(len(rules))):
        raise ValueError("rule indices must number the rules 0..n-1 in source order")
    pool = _Pool()
    encoded_rules = [_encode_rule(r, pool) for r in rules]
    positions = {r.id: r.index for r in rules}
    tools = []
    indexed = 0
    for tool in sorted(policy.tools, key=lambda t: t.name):
        covering = [r for r in rules if tool.name in r.tools]
        forbid, n = _group([r for r in covering if r.effect == "forbid"], -1, pool, positions)
        indexed += n
        by_priority: dict[int, list[ir.Rule]] = {}
        for r in covering:
            if r.effect != "forbid":
                by_priority.setdefault(r.priority, []).append(r)
        groups = []
        for priority in sorted(by_priority, reverse=True):
            g, n = _group(by_priority[priority], priority, pool, positions)
            indexed += n
            groups.append(g)
        tools.append(_encode_tool(tool, forbid, groups))
    return DecisionTable(nodes=tuple(pool.nodes), rules=tuple(encoded_rules), tools=tuple(tools),
                         indexed_groups=indexed)

