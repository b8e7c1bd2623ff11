"""Conflicts: two rules true at P* with different effects, or two modifies assigning one param
different values — those actions DEFER (`conflict`)."""

from __future__ import annotations

import itertools

from aarmc.analysis.findings import SAT, UNKNOWN, Analysis, describe, replay_decide, unknown_finding
from aarmc.analysis.report import Finding
from aarmc.analysis.symbolic import and_, not_, or_
from aarmc.semantics import ir


def _may_conflict(a: ir.Rule, b: ir.Rule) -> bool:
    if a.priority != b.priority:
        return False
    if a.effect != b.effect:
        return True
    if a.effect == "modify":
        return bool({x.param for x in a.assignments} & {x.param for x in b.assignments})
    return False


def check_conflicts(an: Analysis) -> list[Finding]:
    out: list[Finding] = []
    done: set[tuple[str, str]] = set()
    for rule_a, rule_b in itertools.combinations([r for r in an.policy.rules if r.effect != "forbid"], 2):
        if not _may_conflict(rule_a, rule_b):
            continue
        tools = [t for t in an.tools_of(rule_a.tools) if t in rule_b.tools]
        for t in tools:
            def replay(action, session):
                d = replay_decide(an.policy, action, session)
                if d.decision == "defer" and d.reason == "conflict" and {rule_a.id, rule_b.id} <= set(d.rules):
                    return None
                return f"expected DEFER conflict naming `{rule_a.id}` and `{rule_b.id}`, got {describe(d)}"
            def formula(c):
                d = c.decision
                parts = [d.reason["conflict"], d.rules[rule_a.id], d.rules[rule_b.id]]
                if rule_a.effect == rule_b.effect:
                    # Two modifies: named together is not enough, they must disagree on a param.
                    parts.append(or_(*(and_(wa.known, wb.known, not_(wa.value.eq(wb.value)))
                                       for wa in d.writes[rule_a.id] for wb in d.writes[rule_b.id]
                                       if wa.param == wb.param)))
                return and_(*parts)
            a = an.query("conflict", t, formula, replay)
            if a.status == SAT:
                how = ("assign the same parameter different values" if rule_a.effect == rule_b.effect
                       else f"apply with different effects ({rule_a.effect}, {rule_b.effect})")
                out.append(Finding(
                    kind="conflict", rule=rule_a.id, related=(rule_b.id,), span=rule_a.span, tools=(t,),
                    witness=a.witness,
                    message=f"rules `{rule_a.id}` and `{rule_b.id}` conflict on `{t}`: both {how} at priority "
                            f"{rule_a.priority}, so such actions DEFER",
                    help="give one of them a higher priority, or make their conditions exclusive"))
                break
            if a.status == UNKNOWN:
                out.append(unknown_finding(f"whether `{rule_a.id}` and `{rule_b.id}` conflict", rule_a.id,
                                           rule_a.span, a.why, [t], f"do `{rule_a.id}` and `{rule_b.id}` conflict "
                                                                    f"on `{t}`?"))
                break
    return out
