"""Translation validation: the decoded decision table decides exactly as the source IR.

`validate_payload(policy, payload)` decodes the artifact payload with the
runtime's own reader (`aarm_runtime.artifact.decode_payload`), lifts each
tool's table back to IR rules — each rule with the priority of the group
that lists it, its effect, arguments and condition read from the table, and
the equality index as an extra conjunct (`key == k1 or key == k2 ...`) on the
rules it files, since the engine treats a rule the index leaves out as
false — and then asks Z3, per tool, whether some well-typed action in some
realisable context gets a different decision record (decision, reason,
rules, timeout, approvers, modified params) from the source policy and from
the lifted table. The decision function is the analysis' encoding of
LANGUAGE.md §5 (`aarmc.analysis.decide_z3`), instantiated on both.

*unsat* is a proof. *sat* is a refutation, and the witness (an action and a
session) is replayed: the reference interpreter on the source and the
runtime engine on the decoded artifact must actually disagree on it.
*unknown* (the solver gave up, or a construct the encoding does not model,
such as more unknown-able rules at one priority than it enumerates) is never
reported as proved by the solver. For such a tool a second, structural proof
is tried: every lifted rule is the source rule itself (same id, effect,
priority, arguments, and a condition with the same encoding), and each index
guard is implied by a top-level conjunct of the rule's own condition; then
the table is the source, read by the same semantics. The report says which
tools were proved which way.

Declarations (tools, params, outputs, labels, tags, env, default posture,
policy name and version) are compared directly: they are data, not logic.
"""

from __future__ import annotations

from typing import Any

import attrs
import z3
from aarm_runtime import artifact as fmt
from aarm_runtime import dcbor

from aarmc.semantics import ir

PROVED, REFUTED, UNKNOWN = "proved", "refuted", "unknown"


class TranslationValidationError(Exception):
    """A table was not proved equal to its source; `report` says which and why."""

    def __init__(self, report: "ValidationReport") -> None:
        self.report = report
        bad = [r for r in report.tools if r.status != PROVED] + list(report.declaration_errors)
        first = bad[0]
        what = first if isinstance(first, str) else first.describe()
        super().__init__(f"translation validation failed: {what}")


@attrs.frozen(kw_only=True)
class ToolProof:
    tool: str
    status: str  # proved | refuted | unknown
    method: str = "z3"  # for proved: "z3" or "identity"
    witness: dict | None = None  # {"action": ..., "session": ...} for refuted
    why: str = ""
    source: Any = None  # the source policy's decision on the witness (JSON)
    table: Any = None  # the compiled table's decision on the witness (JSON)

    def describe(self) -> str:
        if self.status == PROVED:
            return f"`{self.tool}`: proved"
        if self.status == REFUTED:
            return (f"the table of `{self.tool}` decides differently from the source: on {self.witness} the "
                    f"source decides {self.source} and the table {self.table}")
        return f"the table of `{self.tool}` could not be proved: {self.why}"


@attrs.frozen(kw_only=True)
class ValidationReport:
    tools: tuple[ToolProof, ...]
    declaration_errors: tuple[str, ...] = ()
    solver: str = ""

    @property
    def proved(self) -> bool:
        return not self.declaration_errors and all(t.status == PROVED for t in self.tools)

    @property
    def proved_count(self) -> int:
        return sum(1 for t in self.tools if t.status == PROVED)

    def count(self, method: str) -> int:
        return sum(1 for t in self.tools if t.status == PROVED and t.method == method)

    def claim(self) -> dict[int, Any]:
        """What the artifact states (payload key 13)."""
        return {0: f"z3 {self.solver}", 1: self.count("z3"), 2: self.count("identity")}

    def raise_for_failure(self) -> None:
        if not self.proved:
            raise TranslationValidationError(self)

    def summary(self) -> str:
        if self.proved:
            n_id = self.count("identity")
            how = f" ({n_id} of them by structural identity, beyond the solver's encoding)" if n_id else ""
            return (f"translation validated: the table of each of {len(self.tools)} tool(s) is proved to decide "
                    f"exactly as the source (Z3 {self.solver}){how}")
        return "; ".join([*self.declaration_errors, *(t.describe() for t in self.tools if t.status != PROVED)])


def solver_version() -> str:
    return z3.get_version_string()


# ---- lifting the decoded table back to IR ------------------------------------------------


def lift_expr(nodes: tuple[tuple, ...], i: int, cache: dict[int, ir.Expr] | None = None) -> ir.Expr:
    """The IR expression of node `i` of a decoded program."""
    if cache is None:
        cache = {}
    got = cache.get(i)
    if got is not None:
        return got
    node = nodes[i]
    op = node[0]

    def sub(k: int) -> ir.Expr:
        return lift_expr(nodes, k, cache)

    if op == fmt.LIT:
        e: ir.Expr = ir.Lit(value=node[1])
    elif op == fmt.LABEL:
        e = ir.Label(name=node[1], level=node[2])
    elif op == fmt.PARAM:
        e = ir.Param(name=node[1])
    elif op == fmt.VAR:
        e = ir.Var(name=node[1])
    elif op == fmt.FIELD:
        e = ir.Field(base=sub(node[1]), name=node[2])
    elif op == fmt.CTX:
        e = ir.Ctx(source=node[1], key=node[2])
    elif op == fmt.COUNT:
        e = ir.Count(tools=tuple(node[1]), within_s=node[2])
    elif op == fmt.USED:
        e = ir.Used(tools=tuple(node[1]))
    elif op == fmt.LEN:
        e = ir.Len(arg=sub(node[1]))
    elif op == fmt.HAS:
        e = ir.Has(target=sub(node[1]))
    elif op == fmt.NOT:
        e = ir.Not(operand=sub(node[1]))
    elif op == fmt.AND:
        e = ir.And(items=tuple(sub(k) for k in node[1]))
    elif op == fmt.OR:
        e = ir.Or(items=tuple(sub(k) for k in node[1]))
    elif op == fmt.CMP:
        e = ir.Cmp(op=node[1], left=sub(node[2]), right=sub(node[3]))
    elif op == fmt.MATCH:
        e = ir.Match(value=sub(node[1]), pattern=node[2], flags=node[3])
    elif op == fmt.FROM:
        e = ir.From(value=sub(node[1]), source=node[2], tools=tuple(node[3]))
    elif op == fmt.QUANT:
        e = ir.Quant(kind=node[1], var=node[2], collection=sub(node[3]), body=sub(node[4]))
    else:
        raise ValueError(f"unknown opcode `{op}`")
    cache[i] = e
    return e


def _lift_tool(t: fmt.ToolEntry) -> ir.Tool:
    return ir.Tool(
        name=t.name,
        params=tuple(ir.ParamSpec(name=p.name, type=p.type, optional=p.optional, has_default=p.has_default,
                                  default=p.default, sensitive=p.sensitive) for p in t.params),
        output=ir.Output(none=t.output.none, level=t.output.level, untrusted=t.output.untrusted,
                         tags=t.output.tags, declared=t.output.declared),
        effects=t.effects,
        wraps=None if t.wraps is None else ir.Wrap(name_param=t.wraps[0], args_param=t.wraps[1]),
    )


def _index_guard(art: fmt.Artifact, group: fmt.Group, position: int, cache: dict) -> ir.Expr | None:
    """What the engine's equality index adds to a rule: it can only be true for its keys."""
    if group.index is None:
        return None
    keys = [value for value, targets in group.index.entries if position in targets]
    if not keys:
        return None  # not filed under any key: always a candidate
    key = lift_expr(art.nodes, group.index.key, cache)
    tests = tuple(ir.Cmp(op="==", left=key, right=ir.Lit(value=k)) for k in keys)
    return tests[0] if len(tests) == 1 else ir.Or(items=tests)


def lift_tool_rules(art: fmt.Artifact, tool: fmt.ToolEntry) -> tuple[ir.Rule, ...]:
    """The rules of one tool as its decoded table states them, in source order."""
    cache: dict[int, ir.Expr] = {}
    out = []
    for group in (tool.forbid, *tool.groups):
        for pos in group.rules:
            entry = art.rules[pos]
            cond = None if entry.condition is None else lift_expr(art.nodes, entry.condition, cache)
            guard = _index_guard(art, group, pos, cache)
            if guard is not None:
                cond = guard if cond is None else ir.And(items=(cond, guard))
            out.append(ir.Rule(
                id=entry.id,
                effect=entry.effect,
                priority=group.priority,
                tools=(tool.name,),
                condition=cond,
                assignments=tuple(ir.Assignment(param=name, value=lift_expr(art.nodes, node, cache))
                                  for name, node in entry.assignments),
                approvers=entry.approvers,
                timeout_s=entry.timeout_s,
                because=entry.because,
                index=pos,
                explicit_priority=entry.explicit_priority,
            ))
    return tuple(sorted(out, key=lambda r: r.index))


def lift_policy(art: fmt.Artifact, tool: fmt.ToolEntry) -> ir.Policy:
    """A policy whose only rules are one tool's table (declarations from the artifact)."""
    return ir.Policy(
        name=art.policy, version=art.version, default=art.default, labels=art.labels, tags=art.tags,
        tools=tuple(_lift_tool(t) for t in art.tools),
        env=tuple(ir.EnvVar(name=n, type=t) for n, t in art.env),
        consts=art.consts,
        rules=lift_tool_rules(art, tool),
    )


def _strict(e: Any) -> bytes:
    """An expression's encoding: unlike attrs equality it tells `true` from `1` and `1` from `1.0`."""
    from aarmc.compile.table import _Pool

    pool = _Pool()
    pool.expr(e)
    return dcbor.encode(pool.nodes)


def identical(policy: ir.Policy, art: fmt.Artifact, tool: fmt.ToolEntry) -> bool:
    """The structural proof: the table lists the source's rules of the tool, unchanged, with sound guards."""
    from aarmc.compile.table import _equality_tests

    source = sorted(policy.rules_for(tool.name), key=lambda r: r.index)
    positions = [pos for g in (tool.forbid, *tool.groups) for pos in g.rules]
    if sorted(positions) != [r.index for r in source]:
        return False
    cache: dict[int, ir.Expr] = {}
    by_pos = {r.index: r for r in source}
    for group in (tool.forbid, *tool.groups):
        for pos in group.rules:
            rule, entry = by_pos[pos], art.rules[pos]
            if (entry.id, entry.effect, group.priority, entry.approvers, entry.timeout_s, entry.because) != \
                    (rule.id, rule.effect, rule.priority, rule.approvers, rule.timeout_s, rule.because):
                return False
            cond = None if entry.condition is None else lift_expr(art.nodes, entry.condition, cache)
            if (cond is None) != (rule.condition is None):
                return False
            if cond is not None and _strict(cond) != _strict(rule.condition):
                return False
            if len(entry.assignments) != len(rule.assignments):
                return False
            for (name, node), a in zip(entry.assignments, rule.assignments):
                if name != a.param or _strict(lift_expr(art.nodes, node, cache)) != _strict(a.value):
                    return False
            if group.index is not None:
                keys = {(type(v), v) for v, targets in group.index.entries if pos in targets}
                if keys:
                    key = _strict(lift_expr(art.nodes, group.index.key, cache))
                    # Sound iff some conjunct `key == k` / `key in {...}` of the rule allows only these keys.
                    if not any(_strict(k) == key and {(type(v), v) for v in vals} <= keys
                               for k, vals in _equality_tests(rule.condition)):
                        return False
    return True


# ---- declarations ---------------------------------------------------------------------------


def compare_declarations(policy: ir.Policy, art: fmt.Artifact) -> list[str]:
    errors = []
    if (art.policy, art.version, art.default) != (policy.name, policy.version, policy.default):
        errors.append("the artifact's policy name, version or default posture differs from the source")
    if art.labels != policy.labels or art.tags != policy.tags:
        errors.append("the artifact's labels or tags differ from the source")
    if tuple((e.name, e.type) for e in policy.env) != art.env:
        errors.append("the artifact's env declarations differ from the source")
    source_tools = {t.name: t for t in policy.tools}
    if set(source_tools) != {t.name for t in art.tools}:
        errors.append("the artifact declares other tools than the source")
    for t in art.tools:
        s = source_tools.get(t.name)
        if s is None:
            continue
        lifted = _lift_tool(t)
        if (lifted.params, lifted.output, lifted.effects, lifted.wraps) != (s.params, s.output, s.effects, s.wraps):
            errors.append(f"the declaration of tool `{t.name}` differs from the source")
        else:
            for a, b in zip(lifted.params, s.params):
                # attrs equality equates `true` with `1`; defaults must match in type too.
                if a.has_default and (type(a.default) is not type(b.default)):
                    errors.append(f"the default of `{t.name}` parameter `{a.name}` differs from the source")
    if [r.id for r in art.rules] != [r.id for r in sorted(policy.rules, key=lambda r: r.index)]:
        errors.append("the artifact's rules are not the source's rules in source order")
    return errors


# ---- the proof ---------------------------------------------------------------------------------


def _records_differ(d0: Any, d1: Any) -> z3.BoolRef:
    from aarmc.analysis.symbolic import FALSE, and_, not_

    parts = [d0.code == d1.code, d0.timeout == d1.timeout]
    for reason in sorted(set(d0.reason) | set(d1.reason)):
        parts.append(d0.reason.get(reason, FALSE) == d1.reason.get(reason, FALSE))
    for rid in sorted(set(d0.rules) | set(d1.rules)):
        parts.append(d0.rules.get(rid, FALSE) == d1.rules.get(rid, FALSE))
    for a in sorted(set(d0.approvers) | set(d1.approvers)):
        parts.append(d0.approvers.get(a, FALSE) == d1.approvers.get(a, FALSE))
    parts.append(d0.outcome_eq(d1))
    return not_(and_(*parts))


def prove_tool(policy: ir.Policy, art: fmt.Artifact, tool: fmt.ToolEntry, *, timeout_ms: int) -> ToolProof:
    """Z3: is there an action of `tool` and a context where source and table decide differently?"""
    from aarmc.analysis.decide_z3 import DecisionEncoder, TooManyUnknowns
    from aarmc.analysis.encode import ToolEncoding, Unsupported
    from aarmc.analysis.report import WitnessError
    from aarmc.analysis.witness import WitnessBuilder

    lifted = lift_policy(art, tool)
    try:
        enc = ToolEncoding([policy, lifted], tool.name)
        d0 = DecisionEncoder(enc, 0).build()
        d1 = DecisionEncoder(enc, 1).build()
        differ = _records_differ(d0, d1)
        solver = z3.Solver()
        solver.set("timeout", timeout_ms)
        solver.add(*enc.take_constraints())
        solver.push()
        solver.add(differ)
        result = solver.check()
        if result == z3.unsat:
            return ToolProof(tool=tool.name, status=PROVED)
        if result != z3.sat:
            return ToolProof(tool=tool.name, status=UNKNOWN, why=f"solver: {solver.reason_unknown()}")
        outcome: dict[str, Any] = {}

        def replay(action: dict, session: dict) -> str | None:
            source, table = _replay(policy, art, action, session)
            outcome["source"], outcome["table"] = source, table
            if source == table:
                return "the solver's witness does not reproduce: source and table agree on it"
            return None

        try:
            witness = WitnessBuilder(enc).find(solver, replay)
        except WitnessError as err:
            return ToolProof(tool=tool.name, status=UNKNOWN, why=str(err))
        if witness is None:
            return ToolProof(tool=tool.name, status=PROVED)
        return ToolProof(tool=tool.name, status=REFUTED, witness=witness, source=outcome.get("source"),
                         table=outcome.get("table"))
    except (Unsupported, TooManyUnknowns) as err:
        return ToolProof(tool=tool.name, status=UNKNOWN, why=str(err))


def _replay(policy: ir.Policy, art: fmt.Artifact, action: dict, session: dict) -> tuple[Any, Any]:
    """The reference interpreter on the source and the runtime engine on the decoded artifact."""
    from aarm_runtime.engine import Engine

    from aarmc.reference import decide

    source = decide(policy, action, session).to_json()
    table = Engine(art).decide(action, session).to_json()
    return source, table


def validate_payload(policy: ir.Policy, payload: bytes, *, timeout_ms: int = 60_000) -> ValidationReport:
    """Decode `payload` with the runtime's reader and prove every tool's table equal to `policy`."""
    art = fmt.decode_payload(payload)
    return validate_artifact(policy, art, timeout_ms=timeout_ms)


def validate_artifact(policy: ir.Policy, art: fmt.Artifact, *, timeout_ms: int = 60_000) -> ValidationReport:
    errors = compare_declarations(policy, art)
    proofs = []
    for tool in art.tools:
        # A meta-tool's own table never decides: the engine, like the
        # reference, evaluates the rules of the tool it resolves to.
        if tool.wraps is not None:
            continue
        proof = prove_tool(policy, art, tool, timeout_ms=timeout_ms)
        if proof.status == UNKNOWN and identical(policy, art, tool):
            proof = ToolProof(tool=tool.name, status=PROVED, method="identity", why=proof.why)
        proofs.append(proof)
    return ValidationReport(tools=tuple(proofs), declaration_errors=tuple(errors), solver=solver_version())
