"""Asserts: `never D SEL when C` and `always D SEL when C`, proved for every well-typed action and
every realisable context (absent intent, env, risk and identity included), or refuted by a witness."""

from __future__ import annotations

from aarmc.analysis.decide_z3 import DECISION_NAMES
from aarmc.analysis.findings import SAT, UNKNOWN, Analysis, describe, reference_truth, replay_decide, unknown_finding
from aarmc.analysis.report import Finding
from aarmc.analysis.symbolic import and_, not_, or_
from aarmc.semantics import ir


def check_assert(an: Analysis, a: ir.Assert) -> list[Finding]:
    codes = {v: k for k, v in DECISION_NAMES.items()}
    tools = an.tools_of(a.tools)
    wrappers = [t for t in a.tools if t not in tools]
    if wrappers:
        return [unknown_finding(f"assert `{a.name}`", a.name, a.span,
                                "it selects meta-tools, whose actions are decided by the tools they wrap "
                                "(select those tools instead)", wrappers, f"assert `{a.name}` on meta-tools")]
    wanted = set(a.decisions)
    for t in tools:
        def formula(c):
            cond = c.enc.cond(a.condition, c.enc.env, 0).t
            in_d = or_(*(c.decision.code == codes[d] for d in a.decisions))
            return and_(cond, in_d if a.kind == "never" else not_(in_d))

        def replay(action, session):
            if reference_truth(an.policy, a.condition, action, session) is not True:
                return f"the condition of assert `{a.name}` is not true in its counterexample"
            d = replay_decide(an.policy, action, session)
            bad = (d.decision in wanted) if a.kind == "never" else (d.decision not in wanted)
            return None if bad else f"the counterexample of `{a.name}` is decided {describe(d)}"
        ans = an.query("assert", t, formula, replay)
        if ans.status == SAT:
            d = ans.witness
            return [Finding(kind="assert-refuted", rule=a.name, span=a.span, tools=(t,), witness=d,
                            message=f"assert `{a.name}` is refuted: on `{t}` an action "
                                    f"{'gets' if a.kind == 'never' else 'does not get'} "
                                    f"{' / '.join(a.decisions)} where its condition holds",
                            help="the witness is a counterexample; fix the rules or the assert")]
        if ans.status == UNKNOWN:
            return [unknown_finding(f"assert `{a.name}`", a.name, a.span, ans.why, [t],
                                    f"assert `{a.name}` on `{t}`")]
    return [Finding(kind="assert-proved", rule=a.name, span=a.span, tools=tuple(tools),
                    message=f"assert `{a.name}` is proved for every action and context")]
