"""A modify that produces params a forbid matches: the runtime denies those actions (the modify is a bug)."""

from __future__ import annotations

from aarmc.analysis.decide_z3 import DENY
from aarmc.analysis.findings import SAT, UNKNOWN, Analysis, describe, replay_decide, unknown_finding
from aarmc.analysis.report import Finding
from aarmc.analysis.symbolic import and_


def check_forbidden_reachable(an: Analysis) -> list[Finding]:
    out: list[Finding] = []
    for m in an.policy.rules:
        if m.effect != "modify":
            continue
        for f in an.policy.rules:
            if f.effect != "forbid":
                continue
            tools = [t for t in an.tools_of(m.tools) if t in f.tools]
            for t in tools:
                def replay(action, session, m=m, f=f):
                    d = replay_decide(an.policy, action, session)
                    if d.decision == "deny" and d.reason == "forbidden" and {m.id, f.id} <= set(d.rules):
                        return None
                    return f"expected DENY forbidden naming `{m.id}` and `{f.id}`, got {describe(d)}"
                a = an.query("forbidden-reachable", t,
                             lambda c, m=m, f=f: and_(c.decision.code == DENY, c.decision.reason["forbidden"],
                                                      c.decision.rules[m.id], c.decision.rules[f.id]), replay)
                if a.status == SAT:
                    out.append(Finding(
                        kind="forbidden-reachable", rule=m.id, related=(f.id,), span=m.span, tools=(t,),
                        witness=a.witness,
                        message=f"modify `{m.id}` produces params that forbid `{f.id}` matches on `{t}`: "
                                f"the runtime denies those actions",
                        help="change the modify's values, or narrow its condition"))
                    break
                if a.status == UNKNOWN:
                    out.append(unknown_finding(f"whether `{m.id}` produces params `{f.id}` forbids", m.id, m.span,
                                               a.why, [t], f"can `{m.id}` produce params `{f.id}` matches?"))
                    break
    return out
