"""Running the checks: one solver per tool, queries under push/pop, timings, `unknown`.

`Analysis` owns the per-tool encodings (built lazily, once) and answers the
checks' questions: `query(tool, formula, ...)` is *sat* with a replayed
witness, *unsat* (a proof), or *unknown* (timeout or a construct the encoding
does not model exactly) — and unknown is never read as a proof by any check.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

import attrs
import z3

from aarm_runtime.decision import Decision as RefDecision
from aarmc.analysis.decide_z3 import Decision, DecisionEncoder, TooManyUnknowns
from aarmc.analysis.encode import ToolEncoding, Unsupported
from aarmc.analysis.report import CheckTiming, Finding
from aarmc.analysis.symbolic import AnalysisBug
from aarmc.analysis.witness import WitnessBuilder
from aarmc.semantics import ir

DEFAULT_TIMEOUT_MS = 10_000
SAT, UNSAT, UNKNOWN = "sat", "unsat", "unknown"


@attrs.define
class Answer:
    status: str
    witness: Any = None
    why: str = ""
    model: Any = None


class ToolContext:
    """The encoding, decision and solver of one tool."""

    def __init__(self, policy: ir.Policy, tool: str, timeout_ms: int) -> None:
        self.policy = policy
        self.name = tool
        self.enc = ToolEncoding([policy], tool)
        self.decision = DecisionEncoder(self.enc).build()
        self._without: dict[str, Decision] = {}
        self.solver = z3.Solver()
        self.solver.set("timeout", timeout_ms)
        self.builder = WitnessBuilder(self.enc)
        self.sync()
        if self.solver.check() == z3.unsat:
            raise AnalysisBug(f"no valid action of `{tool}` exists in the encoding")

    def sync(self) -> None:
        new = self.enc.take_constraints()
        if new:
            self.solver.add(*new)

    def without(self, rule_id: str) -> Decision:
        """The decision of the policy with one rule removed."""
        if rule_id not in self._without:
            self._without[rule_id] = DecisionEncoder(self.enc, removed=frozenset({rule_id})).build()
        return self._without[rule_id]


class Analysis:
    def __init__(self, policy: ir.Policy, timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 progress: Callable[[str], None] | None = None) -> None:
        self.policy = policy
        self.timeout_ms = timeout_ms
        self._ctx: dict[str, ToolContext | str] = {}
        self.timings: dict[str, list[float]] = {}
        self.progress = progress
        self.bounded_notes: dict[str, str] = {}

    def tools_of(self, tools: Iterable[str]) -> list[str]:
        """The tools whose actions a rule decides (meta-tools are resolved to the wrapped tool first)."""
        out = []
        for name in tools:
            t = self.policy.tool(name)
            if t is not None and t.wraps is None:
                out.append(name)
        return out

    def ctx(self, tool: str) -> ToolContext | str:
        """The tool's context, or why it cannot be analysed exactly."""
        if tool not in self._ctx:
            try:
                c = ToolContext(self.policy, tool, self.timeout_ms)
                self._ctx[tool] = c
                for key, b in c.enc.bounds.items():
                    if not b.exact:
                        self.bounded_notes[tool] = (f"lists of `{tool}` are analysed up to {b.k} elements "
                                                    f"({b.why}); results hold for lists up to that length")
            except (Unsupported, TooManyUnknowns) as err:
                self._ctx[tool] = str(err)
        return self._ctx[tool]

    def query(self, check: str, tool: str, formula: Callable[[ToolContext], z3.BoolRef],
              replay: Callable[[dict, dict], str | None] | None = None) -> Answer:
        """Is `formula` satisfiable for some well-typed action of `tool` in a realisable context?"""
        c = self.ctx(tool)
        if isinstance(c, str):
            return Answer(UNKNOWN, why=c)
        start = time.perf_counter()
        try:
            f = formula(c)
            c.sync()
            c.solver.push()
            try:
                c.solver.add(f)
                r = c.solver.check()
                if r == z3.unknown:
                    return Answer(UNKNOWN, why=f"solver: {c.solver.reason_unknown()}")
                if r == z3.unsat:
                    return Answer(UNSAT)
                if replay is None:
                    return Answer(SAT, model=c.solver.model())
                try:
                    w = c.builder.find(c.solver, replay)
                except Unsupported as err:
                    return Answer(UNKNOWN, why=str(err))
                if w is None:
                    return Answer(UNSAT)
                return Answer(SAT, witness=w)
            finally:
                c.solver.pop()
        except Unsupported as err:
            return Answer(UNKNOWN, why=str(err))
        finally:
            self.timings.setdefault(check, []).append(time.perf_counter() - start)

    def timing_records(self) -> tuple[CheckTiming, ...]:
        return tuple(CheckTiming(check=k, queries=len(v), solver_s=round(sum(v), 4))
                     for k, v in sorted(self.timings.items()))


# ---- replay helpers -------------------------------------------------------------------

def replay_decide(policy: ir.Policy, action: dict, session: dict) -> RefDecision:
    from aarmc.reference import decide
    return decide(policy, action, session)


def reference_truth(policy: ir.Policy, expr: ir.Expr | None, action: dict, session: dict) -> Any:
    """The reference interpreter's Kleene value of `expr` for a (valid) action in a session."""
    from aarm_runtime import values
    from aarmc.reference.context import derive_context, read_session
    from aarmc.reference.evaluate import Scope, truth
    tool = policy.tool(action["tool"])
    schema = [values.ParamSpec(name=p.name, type=p.type, default=p.default, has_default=p.has_default,
                               optional=p.optional) for p in tool.params]
    params = values.validate_params(schema, action.get("params", {}))
    context = derive_context(policy, read_session(session))
    return truth(expr, Scope(policy=policy, tool=tool, params=params, context=context))


def describe(d: RefDecision) -> str:
    return f"{d.decision} ({d.reason}, rules {list(d.rules)})"


def rule_names(ids: Sequence[str]) -> str:
    return ", ".join(f"`{i}`" for i in ids)


def unknown_finding(subject: str, rule: str | None, span: Any, why: str, tools: Sequence[str],
                    query: str) -> Finding:
    return Finding(kind="unknown", rule=rule, span=span, tools=tuple(tools), query=query,
                   message=f"could not decide {subject}: {why}",
                   help="the result is inconclusive (exit code 3); raise `--timeout` or simplify the rule")
