"""Redundant rules: removing the rule changes no outcome (decision, params, approvers, timeout) of
any action in any context, and every action it decides is then decided by another rule the same
way. A rule that merely restates the default posture is *not* redundant: with the rule gone the
default decides, which is what `deny` rules under `default deny` guard against (defence in depth).

Most rules are not redundant, and most show it cheaply: if the rule can be true while every other
rule of the tool is false, it decides alone, and without it the default decides — a change by
the definition above. Only rules that fail that test need the full comparison of the decision
with and without the rule."""

from __future__ import annotations

import attrs

from aarmc.analysis.findings import SAT, UNKNOWN, Analysis, replay_decide, rule_names, unknown_finding
from aarmc.analysis.report import Finding
from aarmc.analysis.symbolic import and_, not_, or_
from aarmc.semantics import ir


def outcome(d) -> tuple:
    return (d.decision, repr(d.params) if d.decision == "modify" else None, frozenset(d.approvers), d.timeout_s)


def _alone(rule: ir.Rule):
    def f(c):
        others = [c.enc.rule_tri(r, 0) for r in c.policy.rules_for(c.name) if r.id != rule.id]
        return and_(c.enc.rule_tri(rule, 0).t, *(o.f for o in others))
    return f


def check_redundant(an: Analysis, rule: ir.Rule) -> tuple[bool | None, list[Finding]]:
    tools = an.tools_of(rule.tools)
    if not tools:
        return False, []
    for t in tools:
        if an.query("redundant-rule", t, _alone(rule)).status == SAT:
            return False, []

    def changed(c):
        d, d2 = c.decision, c.without(rule.id)
        return or_(not_(d.outcome_eq(d2)), and_(d.rules[rule.id], d2.reason["default"]))

    for t in tools:
        a = an.query("redundant-rule", t, changed)
        if a.status == SAT:
            return False, []
        if a.status == UNKNOWN:
            return None, [unknown_finding(f"whether rule `{rule.id}` is redundant", rule.id, rule.span, a.why,
                                          [t], f"does removing `{rule.id}` change a decision of `{t}`?")]
    without = attrs.evolve(an.policy, rules=tuple(r for r in an.policy.rules if r.id != rule.id))
    related: set[str] = set()
    witness = None
    for t in tools:
        # The rules that take over: one model per new rule found, until none is left.
        while True:
            c = an.ctx(t)
            candidates = [s for s in an.policy.rules_for(t) if s.id != rule.id and s.id not in related]
            if not candidates or isinstance(c, str):
                break
            a = an.query("redundant-rule", t, lambda c: and_(
                c.decision.rules[rule.id], or_(*(c.without(rule.id).rules[s.id] for s in candidates))))
            if a.status != SAT:
                break
            named = {s.id for s in candidates if _true(a.model, c.without(rule.id).rules[s.id])}
            if not named:
                break
            related |= named

        def replay(action, session):
            d = replay_decide(an.policy, action, session)
            d2 = replay_decide(without, action, session)
            if rule.id not in d.rules:
                return f"rule `{rule.id}` does not decide the witness"
            if outcome(d) != outcome(d2) or d2.reason == "default":
                return f"removing `{rule.id}` changes the witness's decision"
            return None
        if witness is None:
            a = an.query("redundant-rule", t, lambda c: c.decision.rules[rule.id], replay)
            if a.status == SAT:
                witness = a.witness
    ids = tuple(r.id for r in an.policy.rules if r.id in related)
    takeover = f"{rule_names(ids)} decide the same way without it" if ids else "other rules decide the same way"
    return True, [Finding(kind="redundant-rule", rule=rule.id, related=ids, span=rule.span, tools=tuple(tools),
                          witness=witness,
                          message=f"rule `{rule.id}` is redundant: removing it changes no decision; {takeover}",
                          help="remove it, or document why it is kept")]


def _true(model, b) -> bool:
    import z3
    return z3.is_true(model.eval(b, model_completion=True))
