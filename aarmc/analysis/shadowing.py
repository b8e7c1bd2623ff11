"""Shadowed rules: never among the deciding rules of any action, because rules that outrank it
(together, not pairwise) cover every case where it applies."""

from __future__ import annotations

from aarmc.analysis.findings import SAT, UNKNOWN, Analysis, reference_truth, rule_names, unknown_finding
from aarmc.analysis.findings import replay_decide
from aarmc.analysis.report import Finding
from aarmc.analysis.symbolic import and_, not_, or_
from aarmc.semantics import ir


def _candidates(an: Analysis, rule: ir.Rule, tools: list[str]) -> list[ir.Rule]:
    out = []
    for r in an.policy.rules:
        if r.id == rule.id or not set(r.tools) & set(tools):
            continue
        if r.effect == "forbid" or (rule.effect != "forbid" and r.priority > rule.priority):
            out.append(r)
    return out


def _covered(an: Analysis, rule: ir.Rule, tools: list[str], cover: list[ir.Rule]) -> bool | None:
    """Whether, on every tool, the rule is true only where some rule of `cover` is true or unknown."""
    for t in tools:
        def f(c, t=t):
            others = [c.enc.rule_tri(r, 0) for r in cover if t in r.tools]
            return and_(c.enc.rule_tri(rule, 0).t, *(not_(or_(o.t, o.u)) for o in others))
        a = an.query("shadowed-rule", t, f)
        if a.status == UNKNOWN:
            return None
        if a.status == SAT:
            return False
    return True


def check_shadowed(an: Analysis, rule: ir.Rule) -> tuple[bool | None, list[Finding]]:
    tools = an.tools_of(rule.tools)
    if not tools:
        return False, []
    for t in tools:
        a = an.query("shadowed-rule", t, lambda c: c.decision.rules[rule.id])
        if a.status == SAT:
            return False, []
        if a.status == UNKNOWN:
            return None, [unknown_finding(f"whether rule `{rule.id}` ever decides", rule.id, rule.span, a.why,
                                          [t], f"is `{rule.id}` ever among the deciding rules of `{t}`?")]
    # Shadowed: name a minimal set of outranking rules that covers it.
    cands = _candidates(an, rule, tools)
    cover = list(cands)
    if _covered(an, rule, tools, cover):
        for r in list(cover):
            trial = [x for x in cover if x.id != r.id]
            if _covered(an, rule, tools, trial):
                cover = trial
    else:
        cover = []
    witness = None
    for t in tools:
        def replay(action, session, rule=rule):
            if reference_truth(an.policy, rule.condition, action, session) is not True:
                return f"rule `{rule.id}` is not true in the shadowing witness"
            d = replay_decide(an.policy, action, session)
            return f"rule `{rule.id}` decides: {d.rules}" if rule.id in d.rules else None
        a = an.query("shadowed-rule", t, lambda c: c.enc.rule_tri(rule, 0).t, replay)
        if a.status == SAT:
            witness = a.witness
            break
    related = tuple(r.id for r in sorted(cover, key=lambda r: r.index))
    if related:
        why = f"{rule_names(related)} cover every case where it applies"
    else:
        why = "whenever it applies, the decision is made without it"
    return True, [Finding(kind="shadowed-rule", rule=rule.id, related=related, span=rule.span, tools=tuple(tools),
                          witness=witness, message=f"rule `{rule.id}` never decides: {why}",
                          help="remove it, or give it a priority above the rules that shadow it")]
