"""`aarmc diff OLD NEW`: per tool, every kind of decision change with a witness, or a proof of equivalence.

Both policies are encoded over *one* action and *one* session file (each
policy derives its own context from it: its own tags, labels, untrusted
tools), so a witness is a single action + session whose replay on the two
policies shows the change. A tool is *equivalent* when no action in any
context gets a different outcome (decision, modified params, approvers,
timeout); otherwise every decision pair `old → new` that occurs is listed,
including same-decision changes (`step_up → step_up`: other approvers or
timeout; `modify → modify`: other params). `widens` is set when some action
newly gets ALLOW, or MODIFY where it was neither allowed nor modified.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import z3

from aarmc.analysis.decide_z3 import DECISION_NAMES, DecisionEncoder, TooManyUnknowns
from aarmc.analysis.encode import ToolEncoding, Unsupported
from aarmc.analysis.findings import DEFAULT_TIMEOUT_MS, describe, replay_decide
from aarmc.analysis.symbolic import and_, not_
from aarmc.analysis.witness import WitnessBuilder
from aarmc.semantics import ir

DECISIONS = ("allow", "deny", "modify", "step_up", "defer")
CODES = {v: k for k, v in DECISION_NAMES.items()}


def widens(old: str, new: str) -> bool:
    if new == "allow":
        return old != "allow"
    if new == "modify":
        return old not in ("allow", "modify")
    return False


@attrs.frozen(kw_only=True)
class Change:
    tool: str
    old: str
    new: str
    witness: Any = attrs.field(eq=False, default=None)
    detail: str = ""

    @property
    def widens(self) -> bool:
        return widens(self.old, self.new)

    def headline(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.tool}: {self.old} → {self.new}{extra}"

    def to_json(self) -> dict:
        return {"tool": self.tool, "old": self.old, "new": self.new, "detail": self.detail,
                "widens": self.widens, "witness": self.witness}


@attrs.frozen(kw_only=True)
class ToolDiff:
    """`status`: equivalent (proved), changed, added, removed, or unknown (with `why`)."""
    tool: str
    status: str
    changes: tuple[Change, ...] = ()
    why: str = ""

    def to_json(self) -> dict:
        return {"tool": self.tool, "status": self.status, "changes": [c.to_json() for c in self.changes],
                "why": self.why or None}


@attrs.frozen(kw_only=True)
class DiffReport:
    tools: tuple[ToolDiff, ...]
    wall_s: float = 0.0

    @property
    def changes(self) -> tuple[Change, ...]:
        return tuple(c for t in self.tools for c in t.changes)

    @property
    def widens(self) -> bool:
        return any(c.widens for c in self.changes)

    @property
    def equivalent(self) -> bool:
        return all(t.status == "equivalent" for t in self.tools)

    @property
    def inconclusive(self) -> bool:
        return any(t.status == "unknown" for t in self.tools)

    def to_json(self) -> dict:
        return {"equivalent": self.equivalent, "widens": self.widens, "inconclusive": self.inconclusive,
                "tools": [t.to_json() for t in self.tools]}

    def format_human(self) -> str:
        from aarmc.analysis.report import dumps_witness
        lines = []
        for t in self.tools:
            if t.status == "equivalent":
                continue
            if t.status == "unknown":
                lines.append(f"{t.tool}: not decided ({t.why})")
            for c in t.changes:
                lines.append(c.headline() + ("  [widens]" if c.widens else ""))
                if c.witness is not None:
                    lines.append("  witness:\n" + "\n".join("    " + ln for ln in dumps_witness(c.witness).splitlines()))
        same = sum(1 for t in self.tools if t.status == "equivalent")
        lines.append(f"{same} of {len(self.tools)} tools proved to decide identically"
                     + ("; the policies are equivalent" if self.equivalent else ""))
        return "\n".join(lines) + "\n"


def _tools(p: ir.Policy) -> dict[str, ir.Tool]:
    return {t.name: t for t in p.tools if t.wraps is None}


def diff_policies(old: ir.Policy, new: ir.Policy, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> DiffReport:
    start = time.perf_counter()
    old_tools, new_tools = _tools(old), _tools(new)
    out = []
    for name in sorted(set(old_tools) | set(new_tools)):
        out.append(_diff_tool(old, new, name, timeout_ms))
    return DiffReport(tools=tuple(out), wall_s=time.perf_counter() - start)


def _diff_tool(old: ir.Policy, new: ir.Policy, name: str, timeout_ms: int) -> ToolDiff:
    in_old, in_new = old.tool(name) is not None, new.tool(name) is not None
    if in_old and in_new and old.tool(name).params != new.tool(name).params:
        return ToolDiff(tool=name, status="unknown",
                        why="the tool's parameters differ: actions valid for one policy are invalid for the other")
    policies = [p for p, here in ((old, in_old), (new, in_new)) if here]
    try:
        enc = ToolEncoding(policies, name, prefix=f"diff!{name}")
        decs = [DecisionEncoder(enc, i).build() for i in range(len(policies))]
    except (Unsupported, TooManyUnknowns) as err:
        return ToolDiff(tool=name, status="unknown", why=str(err))
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    builder = WitnessBuilder(enc)

    if in_old and in_new:
        d_old, d_new = decs
        old_code = lambda d: d_old.code == CODES[d]  # noqa: E731
        new_code = lambda d: d_new.code == CODES[d]  # noqa: E731
        differ = not_(d_old.outcome_eq(d_new))
    elif in_new:
        d_new = decs[0]
        old_code = lambda d: z3.BoolVal(d == "deny")  # noqa: E731  (unknown tool: DENY)
        new_code = lambda d: d_new.code == CODES[d]  # noqa: E731
        differ = z3.BoolVal(True)
    else:
        d_old = decs[0]
        old_code = lambda d: d_old.code == CODES[d]  # noqa: E731
        new_code = lambda d: z3.BoolVal(d == "deny")  # noqa: E731
        differ = z3.BoolVal(True)
    solver.add(enc.take_constraints())

    def ask(f, replay):
        solver.add(enc.take_constraints())
        solver.push()
        try:
            solver.add(f)
            r = solver.check()
            if r == z3.unknown:
                return "unknown", None
            if r == z3.unsat:
                return "unsat", None
            try:
                w = builder.find(solver, replay)
            except Unsupported as err:
                return "unknown", str(err)
            return ("unsat", None) if w is None else ("sat", w)
        finally:
            solver.pop()

    status, _ = ask(differ, lambda a, s: None) if (in_old and in_new) else ("sat", None)
    if status == "unsat":
        return ToolDiff(tool=name, status="equivalent")
    if status == "unknown":
        return ToolDiff(tool=name, status="unknown", why="the solver gave up")
    changes = []
    undecided = []
    for a in DECISIONS:
        for b in DECISIONS:
            cond = and_(old_code(a), new_code(b))
            if a == b:
                if not (in_old and in_new):
                    continue
                cond = and_(cond, differ)

            def replay(action, session, a=a, b=b):
                got_old = replay_decide(old, action, session)
                got_new = replay_decide(new, action, session)
                if (got_old.decision, got_new.decision) != (a, b):
                    return f"expected {a} → {b}, got {describe(got_old)} → {describe(got_new)}"
                if a == b and _outcome(got_old) == _outcome(got_new):
                    return f"expected a different {a} outcome, got the same"
                return None
            r, w = ask(cond, replay)
            if r == "sat":
                detail = "" if a != b else {"modify": "other params", "step_up": "other approvers or timeout",
                                            "defer": "other timeout"}.get(a, "")
                changes.append(Change(tool=name, old=a, new=b, witness=w, detail=detail))
            elif r == "unknown":
                undecided.append(f"{a} → {b}")
    if undecided:
        return ToolDiff(tool=name, status="unknown", changes=tuple(changes),
                        why="the solver gave up on " + ", ".join(undecided))
    status = "changed" if in_old and in_new else ("added" if in_new else "removed")
    return ToolDiff(tool=name, status=status, changes=tuple(changes))


def _outcome(d) -> tuple:
    return (d.decision, repr(d.params) if d.decision == "modify" else None, frozenset(d.approvers), d.timeout_s)
