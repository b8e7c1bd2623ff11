"""`aarmc check` and `aarmc diff`: Z3-proved findings with replayed counterexamples.

    analyze(policy, *, timeout_ms=...) -> AnalysisReport
    diff_policies(old, new, *, timeout_ms=...) -> DiffReport
    emit_tests(report, directory) -> list[Path]

Every finding is exactly one of LANGUAGE.md §6's kinds; a witness is replayed
on the reference interpreter before it is reported (a mismatch raises
`WitnessError`, an internal error); a query the solver cannot decide is an
`unknown` finding, never a proof.
"""

from __future__ import annotations

import time
from typing import Callable

from aarmc.analysis.asserts import check_assert
from aarmc.analysis.conflicts import check_conflicts
from aarmc.analysis.context_gap import check_context_gap
from aarmc.analysis.dead import ALIVE, DEAD, INCONCLUSIVE, NEVER_TRUE, check_dead
from aarmc.analysis.findings import DEFAULT_TIMEOUT_MS, Analysis
from aarmc.analysis.forbidden_reachable import check_forbidden_reachable
from aarmc.analysis.redundancy import check_redundant
from aarmc.analysis.report import AnalysisReport, Finding, WitnessError
from aarmc.analysis.shadowing import check_shadowed
from aarmc.analysis.symbolic import AnalysisBug
from aarmc.semantics import ir

__all__ = ["AnalysisReport", "Finding", "WitnessError", "AnalysisBug", "analyze", "diff_policies", "emit_tests",
           "DEFAULT_TIMEOUT_MS"]


def analyze(policy: ir.Policy, *, timeout_ms: int = DEFAULT_TIMEOUT_MS,
            progress: Callable[[str], None] | None = None) -> AnalysisReport:
    """Every finding of LANGUAGE.md §6 for one policy set.

    Raises `WitnessError` (or `AnalysisBug`) on an internal inconsistency;
    the CLI reports those as internal errors (exit 2).
    """
    start = time.perf_counter()
    an = Analysis(policy, timeout_ms=timeout_ms, progress=progress)
    findings: list[Finding] = []
    status: dict[str, str] = {}

    def step(what: str) -> None:
        if progress is not None:
            progress(what)

    for rule in policy.rules:
        step(f"dead: {rule.id}")
        if not an.tools_of(rule.tools):
            # Only meta-tools: the runtime resolves a wrapper to the tool it wraps and evaluates
            # that tool's rules, so this rule is never evaluated at all.
            status[rule.id] = "shadowed"
            findings.append(Finding(
                kind="shadowed-rule", rule=rule.id, span=rule.span, tools=rule.tools,
                message=f"rule `{rule.id}` never decides: it selects only meta-tools, whose actions are "
                        f"decided by the rules of the tools they wrap",
                help="select the wrapped tools instead"))
            continue
        s, fs = check_dead(an, rule)
        status[rule.id] = s
        findings += fs
    for rule in policy.rules:
        if status[rule.id] != ALIVE:
            continue
        step(f"shadowed: {rule.id}")
        shadowed, fs = check_shadowed(an, rule)
        findings += fs
        if shadowed is not False:
            status[rule.id] = "shadowed" if shadowed else INCONCLUSIVE
            continue
        step(f"redundant: {rule.id}")
        redundant, fs = check_redundant(an, rule)
        findings += fs
        if redundant is not False:
            status[rule.id] = "redundant" if redundant else INCONCLUSIVE
    step("conflicts")
    findings += check_conflicts(an)
    step("forbidden-reachable")
    findings += check_forbidden_reachable(an)
    for rule in policy.rules:
        # A rule already reported inconclusive is not asked about again (one `unknown` per rule).
        if rule.effect == "forbid" or status[rule.id] in (DEAD, NEVER_TRUE, INCONCLUSIVE) \
                or not an.tools_of(rule.tools):
            continue
        step(f"context-gap: {rule.id}")
        findings += check_context_gap(an, rule)
    for a in policy.asserts:
        step(f"assert: {a.name}")
        findings += check_assert(an, a)
    notes = tuple(sorted(set(an.bounded_notes.values())))
    return AnalysisReport(findings=tuple(sorted(findings, key=Finding.sort_key)), timings=an.timing_records(),
                          notes=notes, wall_s=time.perf_counter() - start)


def diff_policies(old: ir.Policy, new: ir.Policy, *, timeout_ms: int = DEFAULT_TIMEOUT_MS):
    from aarmc.analysis.diff import diff_policies as _diff
    return _diff(old, new, timeout_ms=timeout_ms)


def emit_tests(report: AnalysisReport, directory, policy: ir.Policy, *, policy_ref: str | None = None):
    """Write every witness as an `aarmc test` case (see emit.py); returns the files written."""
    from aarmc.analysis.emit import emit_tests as _emit
    return _emit(report, directory, policy, policy_ref=policy_ref)
