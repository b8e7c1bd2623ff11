"""Context gaps: a rule that may be unknown (absent intent, env, risk, identity, time) and so make
the decision DEFER `absent-context`; the finding names the missing fields."""

from __future__ import annotations

import z3

from aarmc.analysis.findings import SAT, UNKNOWN, Analysis, describe, replay_decide, unknown_finding
from aarmc.analysis.report import Finding
from aarmc.analysis.symbolic import and_
from aarmc.semantics import ir


def check_context_gap(an: Analysis, rule: ir.Rule) -> list[Finding]:
    for t in an.tools_of(rule.tools):
        c = an.ctx(t)
        if not isinstance(c, str) and z3.is_false(c.decision.unknown.get(rule.id, z3.BoolVal(False))) \
                and rule.effect != "modify":
            continue
        fields: list[str] = []

        def replay(action, session):
            d = replay_decide(an.policy, action, session)
            if d.decision == "defer" and d.reason == "absent-context" and rule.id in d.rules:
                fields[:] = list(d.fields)
                return None
            return f"expected DEFER absent-context naming `{rule.id}`, got {describe(d)}"
        a = an.query("context-gap", t, lambda c: and_(c.decision.reason["absent-context"], c.decision.rules[rule.id]),
                     replay)
        if a.status == SAT:
            names = ", ".join(f"`{f}`" for f in fields)
            return [Finding(kind="context-gap", rule=rule.id, span=rule.span, tools=(t,), witness=a.witness,
                            notes=(f"missing: {names}",),
                            message=f"rule `{rule.id}` may be unknown on `{t}` when {names} "
                                    f"{'is' if len(fields) == 1 else 'are'} absent, and then the decision is DEFER",
                            help="guard the rule with `has ...`, or make sure the interceptor supplies the field")]
        if a.status == UNKNOWN:
            return [unknown_finding(f"whether rule `{rule.id}` can leave a decision to absent context", rule.id,
                                    rule.span, a.why, [t], f"can `{rule.id}` be unknown and matter on `{t}`?")]
    return []
