"""Dead rules (never true, never unknown) and never-true rules (only ever unknown: they can only DEFER)."""

from __future__ import annotations

from aarmc.analysis.findings import SAT, UNKNOWN, Analysis, reference_truth, unknown_finding
from aarmc.analysis.report import Finding
from aarmc.reference.evaluate import Unknown
from aarmc.semantics import ir

ALIVE, DEAD, NEVER_TRUE, INCONCLUSIVE = "alive", "dead", "never-true", "unknown"


def check_dead(an: Analysis, rule: ir.Rule) -> tuple[str, list[Finding]]:
    """The rule's status and its finding (if any)."""
    tools = an.tools_of(rule.tools)
    if not tools:
        return ALIVE, []
    unknown = []
    for t in tools:
        a = an.query("dead-rule", t, lambda c: c.enc.rule_tri(rule, 0).t)
        if a.status == SAT:
            return ALIVE, []
        if a.status == UNKNOWN:
            unknown.append((t, a.why))
    if unknown:
        t, why = unknown[0]
        return INCONCLUSIVE, [unknown_finding(f"whether rule `{rule.id}` can be true", rule.id, rule.span, why,
                                              [u[0] for u in unknown], f"can `{rule.id}` be true for `{t}`?")]
    if rule.effect != "forbid":
        for t in tools:
            def replay(action, session, rule=rule):
                v = reference_truth(an.policy, rule.condition, action, session)
                return None if isinstance(v, Unknown) else f"rule `{rule.id}` is {v!r}, not unknown"
            a = an.query("never-true", t, lambda c: c.enc.rule_tri(rule, 0).u, replay)
            if a.status == SAT:
                return NEVER_TRUE, [Finding(
                    kind="never-true", rule=rule.id, span=rule.span, tools=tuple(tools), witness=a.witness,
                    message=f"rule `{rule.id}` is never true: it can only be unknown, and then it makes "
                            f"the decision DEFER",
                    help="the condition only holds when context is missing; check it for a negation or a "
                         "typo")]
            if a.status == UNKNOWN:
                return INCONCLUSIVE, [unknown_finding(f"whether rule `{rule.id}` can be unknown", rule.id,
                                                      rule.span, a.why, [t], f"can `{rule.id}` be unknown?")]
    return DEAD, [Finding(kind="dead-rule", rule=rule.id, span=rule.span, tools=tuple(tools),
                          message=f"rule `{rule.id}` is never true: it can never apply",
                          help="remove the rule, or fix its condition")]
