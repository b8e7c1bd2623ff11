"""Soundness and completeness of `aarmc check` on a finite fragment.

Hypothesis generates small policies over small domains: an int compared with
0..3, an enum, a string compared with a few literals (equality, sets, prefix,
regex, provenance), an optional param, an optional env bool, an optional risk
signal, a tag, a label, counts, provenance from one reader tool. For such
policies a finite set of actions and sessions covers every behaviour, so
brute-force enumeration through the reference interpreter decides every
finding kind and every assert. The checker must agree exactly.
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aarmc.analysis import analyze
from aarmc.analysis.findings import reference_truth
from aarmc.reference import decide
from aarmc.reference.evaluate import Unknown, evaluate
from aarmc.semantics.load import load_policy_text

HEADER = """policy "gen" version "1"
default {default}
labels low < high
tags pii
env flag: bool
env limit: int
tool a.read() returns high untrusted tagged pii
tool a.other() returns low
tool a.act(n: int, k: enum("x", "y"), s: str, o: int?, l: list[str] = []) returns none
"""

ATOMS = {
    "n": ["params.n > {c}", "params.n == {c}", "params.n <= {c}", "params.n >= {c}"],
    "k": ['params.k == "x"', 'params.k != "y"'],
    "s": ['params.s == "aaa"', 'params.s in {{"aaa", "bbb"}}', 'params.s != "bbb"'],
    "str": ['params.s startswith "a"', "params.s matches /b+/", 'params.s endswith "b"'],
    "o": ["has params.o and params.o > {c}", "not (has params.o) or params.o == {c}"],
    "env": ["env.flag", "not env.flag", "has env.flag"],
    "risk": ["risk.injection > 0.5", "risk.injection <= 0.5", "has risk.injection"],
    "tags": ['"pii" in session.tags'],
    "level": ["session.level >= high"],
    "count": ["session.used(a.read)", "session.count(a.read) >= 2", "session.count(a.read, a.other) >= 1",
              "session.actions >= 2"],
    "from": ["params.s from a.read", "params.s from untrusted"],
    "user": ["params.s from user"],
    "window": ["session.count(a.read within 1h) >= 1", "session.count(a.read, a.other within 30m) >= 2",
               "session.count(a.read within 30m) >= 1"],
    "list": ['any x in params.l: x == "aaa"', 'all x in params.l: x startswith "a"', "len(params.l) >= 2",
             '"zzz" in params.l', 'any x in params.l: x from untrusted'],
}


@st.composite
def conditions(draw, feats: list[str], depth: int = 0):
    if depth >= 2 or draw(st.integers(0, 2)) == 0:
        feat = draw(st.sampled_from(feats))
        atom = draw(st.sampled_from(ATOMS[feat]))
        return atom.format(c=draw(st.integers(0, 3)))
    kind = draw(st.sampled_from(["and", "or", "not"]))
    if kind == "not":
        return f"not ({draw(conditions(feats, depth + 1))})"
    a, b = draw(conditions(feats, depth + 1)), draw(conditions(feats, depth + 1))
    return f"({a}) {kind} ({b})"


@st.composite
def policies(draw, max_feats: int = 3, feats: list[str] | None = None):
    if feats is None:
        feats = draw(st.lists(st.sampled_from(sorted(ATOMS)), min_size=1, max_size=max_feats, unique=True))
    feats = [f for f in feats if f in ATOMS]
    extra: set[str] = set()
    lines = [HEADER.format(default=draw(st.sampled_from(["deny", "allow"])))]
    n_rules = draw(st.integers(1, 4))
    for i in range(n_rules):
        effect = draw(st.sampled_from(["forbid", "deny", "allow", "allow", "modify", "step_up", "defer"]))
        prio = "" if effect == "forbid" or draw(st.booleans()) else f" priority {draw(st.sampled_from([100, 200]))}"
        cond = draw(st.one_of(st.none(), conditions(feats)))
        when = f" when {cond}" if cond else ""
        if effect == "forbid" and cond is not None:
            # Forbid rules may read params only.
            param_feats = [f for f in ("n", "k", "s", "str") if f in feats]
            if not param_feats:
                param_feats = ["n"]
                extra.add("n")  # the enumerated actions must then cover n
            when = f" when {draw(conditions(param_feats))}"
        args = ""
        if effect == "modify":
            args = draw(st.sampled_from([" set n = {c}", ' set s = "bbb"', " set n = {c}, s = \"aaa\"",
                                         " redact s", " set n = env.limit"])).format(c=draw(st.integers(0, 3)))
            if "env.limit" in args:
                extra.add("limit")  # the enumerated sessions must then cover env.limit
        elif effect == "step_up":
            args = f' approvers ["{draw(st.sampled_from("ab"))}"] timeout {draw(st.sampled_from(["5m", "10m"]))}'
        elif effect == "defer":
            args = f" timeout {draw(st.sampled_from(['5m', '10m']))}"
        lines.append(f'{effect} "r{i}"{prio} a.act{when}{args}')
    for j in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["never", "always"]))
        ds = draw(st.lists(st.sampled_from(["allow", "deny", "modify", "step_up", "defer"]), min_size=1, max_size=2,
                           unique=True))
        cond = draw(st.one_of(st.none(), conditions(feats)))
        when = f" when {cond}" if cond else ""
        lines.append(f'assert "a{j}": {kind} {", ".join(ds)} a.act{when}')
    return "\n".join(lines) + "\n", sorted(set(feats) | extra)


# ---- the finite domain --------------------------------------------------------------------

STRINGS = ["aaa", "bbb", "zzz", "ab", "abb", "zb", "z", "aa"]


def actions(feats: list[str]):
    ns = [-1, 0, 1, 2, 3, 4] if ("n" in feats or "o" in feats) else [0, 4]
    ss = STRINGS if ({"s", "str", "from", "user"} & set(feats)) else ["aaa", "zzz", "bbb"]
    os_ = [None, 0, 1, 2, 3, 4] if "o" in feats else [None, 2]
    ls: list = [[]]
    if "list" in feats:
        # Lists up to 2 elements over values telling the atoms apart: "aaa": == and startswith; "zzz": in
        # and a token; "ab": startswith, too short to be a token; "abb": startswith and a token of an
        # untrusted output, but not == "aaa"; "bbb": none of ==, startswith and in. Without "bbb"
        # `all x startswith "a"` and `"zzz" in` together covered every list (a deny the checker found with
        # [""] was out of reach); without "abb" no list was from untrusted, all startswith "a" and without
        # "aaa" (a DEFER the checker found, which made a rule not redundant, was out of reach).
        ls = [list(t) for n_ in range(3)
              for t in itertools.product(["aaa", "zzz", "ab", "abb", "bbb"], repeat=n_)]
    for n, k, s, o, lst in itertools.product(ns, ["x", "y"], ss, os_, ls):
        params: dict[str, Any] = {"n": n, "k": k, "s": s}
        if o is not None:
            params["o"] = o
        if lst:
            params["l"] = lst
        yield {"tool": "a.act", "params": params}


def sessions(feats: list[str]):
    # env.limit (a modify's new value) over every region of the literals 0..3, absent in the rest.
    flags = (None, True, False) if "env" in feats else (None,)
    limits = (None, -1, 0, 1, 2, 3, 4) if "limit" in feats else (None,)
    envs: list = [None] + [{**({"flag": f} if f is not None else {}), **({"limit": v} if v is not None else {})}
                           for f in flags for v in limits if (f, v) != (None, None)]
    risks = [None, Decimal("0.2"), Decimal("0.5"), Decimal("0.8")] if "risk" in feats else [None]
    entry_kinds: list = [None]
    nows = [None]
    if {"tags", "level", "count", "from", "list"} & set(feats):
        # One output per string value that has a token (3 characters or more), from the
        # untrusted reader and from an undeclared tool (unknown classification: untrusted).
        outs = ["aaa", "bbb", "zzz", "abb"] if ("from" in feats or "list" in feats) else []
        # An undeclared tool has unknown classification: the top label, untrusted, no tags.
        entry_kinds = [None, ("a.read", None), ("a.other", None), ("x.undeclared", None)] \
            + [("a.read", o) for o in outs] \
            + [("x.undeclared", o) for o in outs]
    if "window" in feats:
        # Inside both windows, inside 1h only, outside both; and no time at all.
        nows = [None, "2026-01-01T12:00:00Z"]
        entry_kinds = sorted(set(entry_kinds) | {None, ("a.read", None), ("a.other", None)}
                             | {(t, None, at) for t in ("a.read", "a.other") for at in ("11:50:00", "11:15:00",
                                                                                        "09:00:00")}, key=repr)
    histories = {()}
    for a, b in itertools.product(entry_kinds, repeat=2):
        histories.add(tuple(e for e in (a, b) if e is not None))
    intents = [None]
    if "user" in feats:
        # `from user` true through each half, false with both halves present, unknown with one absent.
        intents = [None] + [
            {**({"entities": e} if e is not None else {}), **({"text": t} if t is not None else {})}
            for e in (None, [], ["aaa"], ["zzz"], ["abb"]) for t in (None, "x", "say bbb")]
    for env, risk, hist, intent, now in itertools.product(envs, risks, sorted(histories, key=repr), intents, nows):
        s: dict[str, Any] = {}
        if now is not None:
            s["now"] = now
        if env is not None:
            s["env"] = env
        if risk is not None:
            s["risk"] = {"injection": risk}
        if intent is not None:
            s["intent"] = intent
        if hist:
            s["history"] = [{"tool": e[0], **({"output": e[1]} if e[1] else {}),
                             **({"time": f"2026-01-01T{e[2]}Z"} if len(e) > 2 else {})} for e in hist]
        yield s


def outcome(d) -> tuple:
    return (d.decision, repr(d.params) if d.decision == "modify" else None, frozenset(d.approvers), d.timeout_s)


def oracle(policy, feats) -> set[tuple]:
    acts, sess = list(actions(feats)), list(sessions(feats))
    rules = policy.rules
    without = {r.id: attrs.evolve(policy, rules=tuple(x for x in rules if x.id != r.id)) for r in rules}
    status = {r.id: set() for r in rules}
    dec: dict = {}
    dec_wo: dict = {r.id: {} for r in rules}
    for a in acts:
        for s in sess:
            d = decide(policy, a, s)
            assert d.reason != "invalid-params", d
            dec[(id(a), id(s))] = (a, s, d)
            for r in rules:
                v = reference_truth(policy, r.condition, a, s)
                status[r.id].add("unknown" if isinstance(v, Unknown) else v)
                dec_wo[r.id][(id(a), id(s))] = decide(without[r.id], a, s)
    out: set[tuple] = set()
    alive = set()
    for r in rules:
        if True in status[r.id]:
            alive.add(r.id)
        elif r.effect != "forbid" and "unknown" in status[r.id]:
            out.add(("never-true", r.id))
        else:
            out.add(("dead-rule", r.id))
    for r in rules:
        if r.id not in alive:
            continue
        if not any(r.id in d.rules for (_, _, d) in dec.values()):
            out.add(("shadowed-rule", r.id))
            continue
        red = True
        for k, (a, s, d) in dec.items():
            d2 = dec_wo[r.id][k]
            if outcome(d) != outcome(d2) or (r.id in d.rules and d2.reason == "default"):
                red = False
                break
        if red:
            out.add(("redundant-rule", r.id))
    by_id = {r.id: r for r in rules}
    for (a, s, d) in dec.values():
        if d.decision == "defer" and d.reason == "conflict":
            for x, y in itertools.combinations(d.rules, 2):
                rx, ry = by_id[x], by_id[y]
                if rx.effect != ry.effect or (rx.effect == "modify" and _assign_differ(policy, rx, ry, a, s)):
                    out.add(("conflict", x, y))
        if d.decision == "deny" and d.reason == "forbidden":
            ms = [x for x in d.rules if by_id[x].effect == "modify"]
            fs = [x for x in d.rules if by_id[x].effect == "forbid"]
            for m in ms:
                for f in fs:
                    out.add(("forbidden-reachable", m, f))
        if d.decision == "defer" and d.reason == "absent-context":
            for x in d.rules:
                if x in alive and by_id[x].effect != "forbid":
                    out.add(("context-gap", x))
    for asr in policy.asserts:
        refuted = False
        for (a, s, d) in dec.values():
            if reference_truth(policy, asr.condition, a, s) is True:
                inside = d.decision in asr.decisions
                if (asr.kind == "never" and inside) or (asr.kind == "always" and not inside):
                    refuted = True
                    break
        out.add(("assert-refuted" if refuted else "assert-proved", asr.name))
    return out


def _assign_differ(policy, rx, ry, action, session) -> bool:
    from aarm_runtime import values
    from aarmc.reference.context import derive_context, read_session
    from aarmc.reference.evaluate import Scope, equal
    tool = policy.tool("a.act")
    schema = [values.ParamSpec(name=p.name, type=p.type, default=p.default, has_default=p.has_default,
                               optional=p.optional) for p in tool.params]
    scope = Scope(policy=policy, tool=tool, params=values.validate_params(schema, action["params"]),
                  context=derive_context(policy, read_session(session)))
    vx = {a.param: evaluate(a.value, scope) for a in rx.assignments}
    vy = {a.param: evaluate(a.value, scope) for a in ry.assignments}
    return any(not equal(vx[p], vy[p]) for p in set(vx) & set(vy)
               if not isinstance(vx[p], Unknown) and not isinstance(vy[p], Unknown))


def checker(policy) -> set[tuple]:
    rep = analyze(policy)
    out = set()
    for f in rep.findings:
        assert f.kind != "unknown", f
        if f.kind in ("conflict", "forbidden-reachable"):
            out.add((f.kind, f.rule) + f.related)
        else:
            out.add((f.kind, f.rule))
    return out


def _normalise_conflicts(found: set[tuple], policy) -> set[tuple]:
    order = {r.id: r.index for r in policy.rules}
    out = set()
    for f in found:
        if f[0] == "conflict":
            a, b = sorted(f[1:], key=order.get)
            out.add(("conflict", a, b))
        else:
            out.add(f)
    return out


def run_case(text: str, feats: list[str]) -> None:
    loaded = load_policy_text(text)
    assert loaded.policy is not None, (text, loaded.diagnostics)
    policy = loaded.policy
    expected = _normalise_conflicts(oracle(policy, feats), policy)
    got = _normalise_conflicts(checker(policy), policy)
    assert got == expected, f"\n{text}\nchecker only: {got - expected}\noracle only: {expected - got}"


# Fast by default (fixed examples, so CI time is stable); `-m slow` runs many more, random ones.
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=policies(max_feats=2))
def test_checker_agrees_with_brute_force(case):
    run_case(*case)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=policies())
def test_checker_agrees_with_brute_force_many(case):
    run_case(*case)
