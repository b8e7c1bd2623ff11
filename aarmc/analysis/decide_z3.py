"""The decision function of LANGUAGE.md §5 (steps 2–6) for one tool, as Z3 terms.

It mirrors `aarmc.reference.decide` clause by clause, including its documented
choices: a DEFER for `conflict` / `absent-context` carries the minimum timeout
of the rules it names (else 300 s); a modify whose new value reads absent
context has an *unknown* outcome; more than 16 unknown rules DEFER at once;
the rules named by an `absent-context` DEFER are those whose flip changes the
outcome under some assignment of the others, plus modifies with unknown new
values that decide under some assignment.

Step 5 (R3a) without trying all 2^k assignments of the k unknown rules: only
the rules at the top priority of a set decide it, so the outcomes reachable
by assignments decompose by priority level. With K the true rules and p_K
their top priority, an assignment X has top level P = max(p_K, top(X)), and
its outcome is the outcome of the rules at P alone: K's rules at P plus the
chosen unknown ones there. Hence

    every assignment agrees  ⇔  for every level P ≥ p_K and every subset Y of
                                 the unknown rules at P (non-empty at P > p_K):
                                 outcome(K_P ∪ Y) = outcome(K)

    u (at level P) matters   ⇔  P ≥ p_K and ( some Y ⊆ unknown at P without u,
                                 K_P ∪ Y ≠ ∅, has outcome(K_P ∪ Y) ≠ outcome(K_P ∪ Y ∪ {u})
                               or P > p_K and (outcome(K) ≠ outcome({u}) or some
                                 level below P disagrees) )

so the enumeration is over subsets of the unknown rules *of one priority
level*, never over all of them — and, since a level's outcome reads a rule
only through its signature (effect, approvers, timeout, assignments), over
subsets of the distinct signatures among them (17 unknown `allow` rules at
one level are one signature: two subsets). `ENUM_CAP` bounds the signatures
per level; a tool beyond it is reported `unknown` rather than guessed.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import attrs
import z3

from aarmc.analysis.encode import Env, ToolEncoding, V
from aarmc.analysis.symbolic import FALSE, TRUE, SVal, and_, eq_, implies, is_false, is_true, ite, not_, or_
from aarmc.semantics import ir

# The reference interpreter's own constants: the encoding must follow them exactly.
from aarmc.reference.decide import DEFAULT_TIMEOUT_S, MAX_UNKNOWN_RULES  # noqa: E402

ENUM_CAP = 6

ALLOW, DENY, STEP_UP, DEFER, MODIFY, MODIFY_UNKNOWN = range(6)
CODE_OF_EFFECT = {"allow": ALLOW, "deny": DENY, "step_up": STEP_UP, "defer": DEFER, "modify": MODIFY}
DECISION_NAMES = {ALLOW: "allow", DENY: "deny", STEP_UP: "step_up", DEFER: "defer", MODIFY: "modify"}
REASONS = ("forbidden", "rule", "default", "conflict", "absent-context", "evaluation-error", "invalid-params")


class TooManyUnknowns(Exception):
    pass


def _signature(r: ir.Rule) -> tuple:
    """What a level's outcome reads of a rule: rules with one signature are interchangeable."""
    return (r.effect, tuple(sorted(set(r.approvers))), r.timeout_s,
            tuple((a.param, a.value) for a in r.assignments))


def _eq(a: z3.ExprRef, b: z3.ExprRef) -> z3.BoolRef:
    return eq_(a, b)


_CODE = {c: z3.IntVal(c) for c in range(6)}


def _is(code: z3.ExprRef, c: int) -> z3.BoolRef:
    return eq_(code, _CODE[c])


@attrs.frozen
class Key:
    """What step 5 compares: (effect, modified params, approvers, timeout)."""
    code: Any
    timeout: Any
    approvers: dict
    params: dict  # name -> (SVal, present)
    fields: dict  # field -> Bool (unknown-valued modify)

    def eq(self, other: "Key") -> z3.BoolRef:
        same_code = _eq(self.code, other.code)
        parts = [same_code,
                 implies(or_(_is(self.code, STEP_UP), _is(self.code, DEFER)), _eq(self.timeout, other.timeout)),
                 implies(_is(self.code, STEP_UP),
                         and_(*(_eq(self.approvers[a], other.approvers[a]) for a in self.approvers)))]
        peq = []
        for name, (v, present) in self.params.items():
            ov, op = other.params[name]
            if v is ov and present is op:
                continue
            peq.append(and_(_eq(present, op), implies(present, v.eq(ov))))
        if peq:
            parts.append(implies(_is(self.code, MODIFY), and_(*peq)))
        if self.fields:
            parts.append(implies(_is(self.code, MODIFY_UNKNOWN),
                                 and_(*(_eq(self.fields[f], other.fields[f]) for f in self.fields))))
        return and_(*parts)

    def ite(self, cond: z3.BoolRef, other: "Key") -> "Key":
        if is_true(cond):
            return self
        if is_false(cond):
            return other
        return Key(
            code=ite(cond, self.code, other.code),
            timeout=ite(cond, self.timeout, other.timeout),
            approvers={a: ite(cond, self.approvers[a], other.approvers[a]) for a in self.approvers},
            params={n: (v.ite(cond, other.params[n][0]), ite(cond, p, other.params[n][1]))
                    for n, (v, p) in self.params.items()},
            fields={f: ite(cond, self.fields[f], other.fields[f]) for f in self.fields},
        )


@attrs.frozen
class Write:
    param: str
    value: SVal
    known: Any
    fields: frozenset


@attrs.frozen
class LevelOutcome:
    key: Key
    named: dict  # rule id -> Bool: the rules the outcome names
    conflict: Any  # Bool: effect conflict or conflicting modify assignments
    modify_unknown: Any  # Bool: code MODIFY_UNKNOWN


@attrs.define
class Decision:
    """The symbolic decision record of one action in one context."""
    code: Any  # ALLOW..MODIFY (decision)
    reason: dict  # reason -> Bool (exactly one true)
    rules: dict  # rule id -> Bool (named in the record)
    timeout: Any
    approvers: dict
    params: dict  # the new params of a MODIFY
    forbidden: Any
    key0: Key
    named_absent: dict
    unknown: dict  # rule id -> Bool (rule unknown)
    status: dict  # rule id -> Tri
    writes: dict  # modify rule id -> [Write]

    def is_decision(self, name: str) -> z3.BoolRef:
        return self.code == {v: k for k, v in DECISION_NAMES.items()}[name]

    def outcome_eq(self, other: "Decision") -> z3.BoolRef:
        """Equal (decision, params, approvers, timeout), as the diff and redundancy compare."""
        parts = [self.code == other.code, self.timeout == other.timeout]
        for a in sorted(set(self.approvers) | set(other.approvers)):
            parts.append(self.approvers.get(a, FALSE) == other.approvers.get(a, FALSE))
        peq = []
        for name, (v, present) in self.params.items():
            ov, op = other.params[name]
            peq.append(and_(present == op, implies(present, v.eq(ov))))
        parts.append(implies(self.code == MODIFY, and_(*peq)))
        return and_(*parts)


def _min_timeout(items: Sequence[tuple[z3.BoolRef, int]]) -> z3.ArithRef:
    """Minimum timeout among the chosen rules that have one, else the default."""
    expr: Any = z3.IntVal(DEFAULT_TIMEOUT_S)
    for chosen, t in sorted(items, key=lambda it: -it[1]):
        expr = z3.If(chosen, z3.IntVal(t), expr) if not is_false(chosen) else expr
    return expr


class DecisionEncoder:
    """Builds the decision of one policy's rules for the tool of `enc`."""

    def __init__(self, enc: ToolEncoding, pi: int = 0, removed: frozenset = frozenset()) -> None:
        self.enc = enc
        self.pi = pi
        self.policy = enc.policies[pi]
        rules = [r for r in self.policy.rules_for(enc.name) if r.id not in removed]
        self.forbids = [r for r in rules if r.effect == "forbid"]
        self.rules = [r for r in rules if r.effect != "forbid"]
        self.approver_names = sorted({a for r in self.rules for a in r.approvers})
        self.status = {r.id: enc.rule_tri(r, pi) for r in self.rules}
        self.forbid_status = {r.id: enc.rule_tri(r, pi) for r in self.forbids}
        self.writes: dict[str, list[Write]] = {}
        for r in self.rules:
            if r.effect == "modify":
                self.writes[r.id] = [self._write(r, a) for a in r.assignments]
        self.levels = sorted({r.priority for r in self.rules}, reverse=True)
        self.at = {p: [r for r in self.rules if r.priority == p] for p in self.levels}

    def _write(self, rule: ir.Rule, a: ir.Assignment) -> Write:
        target = self.enc.params[a.param][0]
        value: V = self.enc.val(a.value, self.enc.env, self.pi)
        if isinstance(value.v, SVal):
            v = value.v
        else:
            v = target.const(value.v.value)
        fields = frozenset({f"{a.value.source}.{a.value.key}"}) if isinstance(a.value, ir.Ctx) else frozenset()
        return Write(param=a.param, value=v, known=value.ok, fields=fields)

    # -- outcome of a set of rules at one priority level

    def default_key(self) -> Key:
        return self._key(z3.IntVal(CODE_OF_EFFECT[self.policy.default]), z3.IntVal(-1), {}, None, {})

    def _key(self, code, timeout, approvers, params, fields) -> Key:
        return Key(code=code, timeout=timeout,
                   approvers={a: approvers.get(a, FALSE) for a in self.approver_names},
                   params=params if params is not None else dict(self.enc.params),
                   fields={f: fields.get(f, FALSE) for f in self.all_fields()})

    def all_fields(self) -> list[str]:
        return sorted({f for ws in self.writes.values() for w in ws for f in w.fields})

    def level_outcome(self, p: int, z: dict) -> LevelOutcome:
        rules = [r for r in self.at[p] if not is_false(z[r.id])]
        effects = sorted({r.effect for r in rules})
        present = {e: or_(*(z[r.id] for r in rules if r.effect == e)) for e in effects}
        n_eff = z3.Sum([z3.If(present[e], 1, 0) for e in effects]) if effects else z3.IntVal(0)
        eff_conflict = n_eff >= 2 if len(effects) >= 2 else FALSE
        timeout_all = _min_timeout([(z[r.id], r.timeout_s) for r in rules if r.timeout_s is not None])
        # Modify composition (only meaningful when every rule at the level is a modify).
        mods = [r for r in rules if r.effect == "modify"]
        by_param: dict[str, list[tuple[ir.Rule, Write]]] = {}
        for r in mods:
            for w in self.writes[r.id]:
                by_param.setdefault(w.param, []).append((r, w))
        conflict_x = {}
        for x, ws in by_param.items():
            pairs = []
            for (r1, w1), (r2, w2) in itertools.combinations(ws, 2):
                pairs.append(and_(z[r1.id], z[r2.id], w1.known, w2.known, not_(w1.value.eq(w2.value))))
            conflict_x[x] = or_(*pairs)
        mod_conflict = or_(*conflict_x.values())
        unknown_writer = {r.id: or_(*(not_(w.known) for w in self.writes[r.id])) for r in mods}
        mod_unknown = and_(not_(mod_conflict), or_(*(and_(z[r.id], unknown_writer[r.id]) for r in mods)))
        fields = {}
        for r in mods:
            for w in self.writes[r.id]:
                for f in w.fields:
                    fields[f] = or_(fields.get(f, FALSE), and_(z[r.id], not_(w.known)))
        params = {}
        for name, (orig, orig_present) in self.enc.params.items():
            v, pres = orig, orig_present
            for r, w in reversed(by_param.get(name, [])):
                chosen = and_(z[r.id], w.known)
                if is_false(chosen):
                    continue
                v = w.value.ite(chosen, v) if not is_true(chosen) else w.value
                pres = or_(chosen, pres)
            params[name] = (v, pres)
        # The code: conflict, or the single effect present.
        code: Any = z3.IntVal(DEFER)
        single = {e: and_(present[e], *(not_(present[o]) for o in effects if o != e)) for e in effects}
        for e in effects:
            if e == "modify":
                c = z3.If(mod_conflict, z3.IntVal(DEFER), z3.If(mod_unknown, z3.IntVal(MODIFY_UNKNOWN), z3.IntVal(MODIFY)))
            else:
                c = z3.IntVal(CODE_OF_EFFECT[e])
            code = z3.If(single[e], c, code) if not is_true(single[e]) else c
        approvers = {}
        for r in rules:
            if r.effect == "step_up":
                for a in r.approvers:
                    approvers[a] = or_(approvers.get(a, FALSE), z[r.id])
        is_timed = or_(code == STEP_UP, code == DEFER)
        timeout = z3.If(is_timed, timeout_all, z3.IntVal(-1))
        conflict = or_(eff_conflict, and_(single.get("modify", FALSE), mod_conflict))
        named = {r.id: FALSE for r in self.at[p]}
        for r in rules:
            if r.effect == "modify":
                writes_conflicting = or_(*(conflict_x[w.param] for w in self.writes[r.id] if w.param in conflict_x))
                in_mod = z3.If(mod_conflict, writes_conflicting,
                               z3.If(mod_unknown, unknown_writer[r.id], TRUE))
                named[r.id] = and_(z[r.id], z3.If(eff_conflict, TRUE, in_mod) if not is_false(eff_conflict) else in_mod)
            else:
                named[r.id] = z[r.id]
        key = self._key(code, timeout, approvers, params, fields)
        return LevelOutcome(key=key, named=named, conflict=conflict,
                            modify_unknown=and_(single.get("modify", FALSE), mod_unknown))

    # -- the whole decision

    def build(self) -> Decision:
        enc = self.enc
        t = {r.id: self.status[r.id].t for r in self.rules}
        u = {r.id: self.status[r.id].u for r in self.rules}
        xr = {r.id: self.status[r.id].x for r in self.rules}
        any_k = {p: or_(*(t[r.id] for r in self.at[p])) for p in self.levels}
        above: dict[int, Any] = {}
        acc = FALSE
        for p in self.levels:
            above[p] = acc
            acc = or_(acc, any_k[p])
        some_k = acc
        is_top = {p: and_(any_k[p], not_(above[p])) for p in self.levels}
        pk_ge = {p: not_(above[p]) for p in self.levels}  # p_K <= p
        pk_lt = {p: and_(not_(above[p]), not_(any_k[p])) for p in self.levels}  # p_K < p
        # The outcome of the known-true rules (all unknown rules false).
        k_out = {p: self.level_outcome(p, {r.id: t[r.id] for r in self.at[p]}) for p in self.levels}
        key0 = self.default_key()
        for p in reversed(self.levels):
            key0 = k_out[p].key.ite(is_top[p], key0)
        # Step 5 per level: outcomes of K_P ∪ Y for subsets Y of the unknown rules at P. A level's
        # outcome depends on its rules only through their signatures (effect, approvers, timeout,
        # assignments): enumerate subsets of the signatures of the unknown rules, not of the rules.
        unk_at = {p: [r for r in self.at[p] if not is_false(u[r.id])] for p in self.levels}
        sig = {r.id: _signature(r) for r in self.rules}
        tables: dict[int, dict[frozenset, tuple[Any, LevelOutcome]]] = {}
        agree_level = {}
        for p in self.levels:
            us = unk_at[p]
            if not us:
                agree_level[p] = TRUE
                continue
            groups = sorted({sig[r.id] for r in us}, key=repr)
            if len(groups) > ENUM_CAP:
                raise TooManyUnknowns(f"more than {ENUM_CAP} different kinds of rules of `{enc.name}` at "
                                      f"priority {p} may be unknown")
            table = {}
            conds = []
            for size in range(len(groups) + 1):
                for gs in itertools.combinations(groups, size):
                    gset = frozenset(gs)
                    z = {r.id: or_(t[r.id], u[r.id]) if sig[r.id] in gset else t[r.id] for r in self.at[p]}
                    nonempty = or_(*z.values())
                    out = self.level_outcome(p, z) if gset else k_out[p]
                    table[gset] = (nonempty, out)
                    conds.append(implies(and_(pk_ge[p], nonempty), out.key.eq(key0)))
            tables[p] = table
            agree_level[p] = and_(*conds)
        all_agree = and_(*agree_level.values())
        n_unknown = z3.Sum([z3.If(u[r.id], 1, 0) for r in self.rules if not is_false(u[r.id])]) \
            if any(not is_false(u[r.id]) for r in self.rules) else z3.IntVal(0)
        too_many = n_unknown > MAX_UNKNOWN_RULES if sum(1 for r in self.rules if not is_false(u[r.id])) > MAX_UNKNOWN_RULES else FALSE
        # Which unknown rules matter, and which unknown-valued modifies decide somewhere.
        matters: dict[str, Any] = {}
        modunk: dict[str, Any] = {}
        for idx, p in enumerate(self.levels):
            if p not in tables:
                continue
            below = and_(*(agree_level[q] for q in self.levels[idx + 1:]))
            table = tables[p]
            for r in unk_at[p]:
                g = sig[r.id]
                m1 = []
                for gset, (nonempty, out) in table.items():
                    if g in gset:
                        continue
                    # Adding r adds its signature (a no-op when a true rule already carries it).
                    with_r = table[gset | {g}][1]
                    m1.append(and_(nonempty, not_(out.key.eq(with_r.key))))
                alone = table[frozenset({g})][1]
                m2 = and_(pk_lt[p], or_(not_(key0.eq(alone.key)), not_(below)))
                matters[r.id] = and_(u[r.id], pk_ge[p], or_(*m1, m2))
            for r in self.at[p]:
                if r.effect != "modify" or all(w.known is TRUE or is_true(w.known) for w in self.writes[r.id]):
                    continue
                modunk[r.id] = or_(*(and_(pk_ge[p], nonempty, out.modify_unknown, out.named[r.id])
                                     for (nonempty, out) in table.values()))
        for p in self.levels:
            if p in tables:
                continue
            for r in self.at[p]:
                if r.effect == "modify" and any(not is_true(w.known) for w in self.writes[r.id]):
                    out = k_out[p]
                    modunk[r.id] = and_(is_top[p], out.modify_unknown, out.named[r.id])
        # Failures (step 7 as the reference orders them), forbids (step 2).
        forb_match = {f.id: or_(self.forbid_status[f.id].t, self.forbid_status[f.id].u) for f in self.forbids}
        forbidden = or_(*forb_match.values())
        forbid_fail = or_(*(self.forbid_status[f.id].x for f in self.forbids))
        rule_fail = or_(*xr.values())
        eval_error = and_(not_(forbidden), or_(forbid_fail, rule_fail))
        ok = and_(not_(forbidden), not_(eval_error))
        disagree = and_(not_(too_many), not_(all_agree))
        k_unknown_value = and_(some_k, key0.code == MODIFY_UNKNOWN)
        absent = and_(ok, or_(too_many, disagree, k_unknown_value))
        decided = and_(ok, not_(absent))
        # Rules named by each kind of record.
        top_named = {}
        for r in self.rules:
            top_named[r.id] = and_(is_top[r.priority], k_out[r.priority].named[r.id])
        named_absent = {}
        for r in self.rules:
            parts = [and_(too_many, u[r.id]),
                     and_(disagree, or_(matters.get(r.id, FALSE), modunk.get(r.id, FALSE))),
                     and_(not_(too_many), all_agree, k_unknown_value, top_named[r.id])]
            named_absent[r.id] = or_(*parts)
        # Step 6: a MODIFY's new params go through the forbids again.
        is_modify = and_(decided, some_k, key0.code == MODIFY)
        new_env = Env(params=key0.params)
        recheck = {f.id: self._forbid_on(f, new_env) for f in self.forbids}
        refused = and_(is_modify, or_(*(c.match for c in recheck.values())))
        recheck_error = and_(is_modify, not_(refused), or_(*(c.fail for c in recheck.values())))
        # The record.
        rules_named = {}
        for f in self.forbids:
            rules_named[f.id] = or_(forb_match[f.id], and_(refused, recheck[f.id].match),
                                    and_(eval_error, self.forbid_status[f.id].x),
                                    and_(recheck_error, recheck[f.id].fail))
        for r in self.rules:
            failed_named = and_(eval_error, not_(forbid_fail), xr[r.id])
            rules_named[r.id] = or_(and_(absent, named_absent[r.id]),
                                    and_(decided, some_k, not_(recheck_error), top_named[r.id]),
                                    failed_named)
        default = and_(decided, not_(some_k))
        conflict = and_(decided, some_k, key0.code == DEFER,
                        or_(*(and_(is_top[p], k_out[p].conflict) for p in self.levels)))
        reason = {
            "forbidden": or_(forbidden, refused),
            "evaluation-error": or_(eval_error, recheck_error),
            "absent-context": absent,
            "default": default,
            "conflict": conflict,
            "rule": and_(decided, some_k, not_(conflict), not_(refused), not_(recheck_error)),
            "invalid-params": FALSE,
        }
        code = z3.If(or_(forbidden, eval_error, refused, recheck_error), z3.IntVal(DENY),
                     z3.If(absent, z3.IntVal(DEFER), key0.code))
        absent_timeout = _min_timeout([(named_absent[r.id], r.timeout_s) for r in self.rules if r.timeout_s is not None])
        timeout = z3.If(absent, absent_timeout,
                        z3.If(and_(decided, or_(key0.code == STEP_UP, key0.code == DEFER)), key0.timeout, z3.IntVal(-1)))
        approvers = {a: and_(decided, key0.code == STEP_UP, key0.approvers[a]) for a in self.approver_names}
        return Decision(code=code, reason=reason, rules=rules_named, timeout=timeout, approvers=approvers,
                        params=key0.params, forbidden=forbidden, key0=key0, named_absent=named_absent,
                        unknown=u, status=self.status, writes=self.writes)

    def _forbid_on(self, f: ir.Rule, env: Env) -> "_Recheck":
        tri = self.enc.rule_tri(f, self.pi, env, tag="modified")
        return _Recheck(match=or_(tri.t, tri.u), fail=tri.x)


@attrs.frozen
class _Recheck:
    match: Any
    fail: Any
