"""Witnesses: realisable sessions (windows, tags, provenance lemmas), exact values, minimal sizes."""

from __future__ import annotations

from decimal import Decimal

import z3

from aarmc.analysis import analyze
from aarmc.analysis.automata import explore, holds
from aarmc.analysis.encode import ToolEncoding
from aarmc.reference import decide
from aarmc.semantics.load import load_policy_text

H = """policy "w" version "1"
default deny
labels public < secret
tags pii
tool t.read() returns secret untrusted tagged pii
tool t.act(a: str, b: str, n: int, amount: decimal, to: email, j: json) returns none
"""


def _analyze(text: str):
    loaded = load_policy_text(H + text)
    assert loaded.policy is not None, loaded.diagnostics
    return loaded.policy, analyze(loaded.policy)


def _kinds(report) -> set[tuple]:
    return {(f.kind, f.rule) for f in report.findings}


def test_a_token_inside_another_token_is_a_lemma_not_a_witness():
    # An output carrying the token "foo bar" carries "bar" too, so the assert holds;
    # a naive model with independent provenance booleans would refute it.
    policy, report = _analyze(
        'allow "fresh-b" t.act when params.a from untrusted and not (params.b from untrusted)\n'
        'assert "contained": never allow t.act when params.a == "foo bar" and params.b == "bar"\n'
        'assert "separate": never allow t.act when params.a == "foo bar" and params.b == "baz"\n')
    assert ("assert-proved", "contained") in _kinds(report)
    refuted = [f for f in report.findings if f.kind == "assert-refuted"]
    assert [f.rule for f in refuted] == ["separate"]
    w = refuted[0].witness
    assert decide(policy, w["action"], w["session"]).decision == "allow"


def test_windowed_count_witness_has_times_and_now():
    policy, report = _analyze('deny "burst" t.act when session.count(t.act within 1h) >= 2\n'
                              'allow "ok" t.act when params.n >= 0\n'
                              'assert "no burst": never deny t.act when params.n == 0\n')
    f = next(f for f in report.findings if f.kind == "assert-refuted")
    session = f.witness["session"]
    assert "now" in session
    timed = [e for e in session["history"] if e["tool"] == "t.act"]
    assert len(timed) >= 2 and all("time" in e for e in timed)
    d = decide(policy, f.witness["action"], session)
    assert (d.decision, d.rules) == ("deny", ("burst",))
    gap = next(f for f in report.findings if f.kind == "context-gap")
    assert gap.rule == "burst" and "now" in gap.notes[0]


def test_tags_and_level_come_from_the_history():
    policy, report = _analyze('deny "after-pii" t.act when "pii" in session.tags and session.level >= secret\n'
                              'allow "ok" t.act\n'
                              'assert "a": always allow t.act when params.n == 1\n')
    f = next(f for f in report.findings if f.kind == "assert-refuted")
    assert [e["tool"] for e in f.witness["session"]["history"]] == ["t.read"]


def test_witness_values_are_minimal_and_readable():
    policy, report = _analyze('allow "mid" t.act when params.amount > 0.333 and params.amount < 0.334\n'
                              'assert "a": never allow t.act\n')
    f = next(f for f in report.findings if f.kind == "assert-refuted")
    params = f.witness["action"]["params"]
    assert isinstance(params["amount"], Decimal) and Decimal("0.333") < params["amount"] < Decimal("0.334")
    assert params["n"] == 0 and f.witness["session"] == {}
    assert len(params["a"]) <= 3 and params["to"].endswith("@xqa")


def test_domains_are_lower_case_so_an_upper_case_literal_is_dead():
    _, report = _analyze('allow "upper" t.act when params.to.domain == "Corp.example"\n'
                         'allow "ok" t.act when params.n > 0\n')
    assert ("dead-rule", "upper") in _kinds(report)


def test_len_of_a_json_number_is_an_evaluation_error():
    policy, report = _analyze('allow "long" t.act when len(params.j) > 2\n'
                              'assert "a": never deny t.act when params.n == 0\n')
    f = next(f for f in report.findings if f.kind == "assert-refuted")
    d = decide(policy, f.witness["action"], f.witness["session"])
    assert d.decision == "deny"


def test_cells_cover_every_combination_of_regex_atoms():
    atoms = [("re", r"^git\s+push", ""), ("contains", "--force"), ("suffix", "main"), ("len", 2)]
    cells = explore(atoms, "str")
    # Any combination of the three string atoms is reachable with 3+ characters; with at most
    # 2 characters none of them can hold.
    assert len(cells) == 2 ** 3 + 1
    for vec, cands in cells.items():
        for c in cands:
            assert tuple(holds(a, c) for a in atoms) == vec


def test_base_constraints_of_a_tool_are_satisfiable():
    loaded = load_policy_text(H + 'allow "x" t.act when params.a matches /a+b/ and params.b startswith "q"\n')
    enc = ToolEncoding([loaded.policy], "t.act")
    s = z3.Solver()
    s.add(enc.take_constraints())
    assert s.check() == z3.sat


def test_list_bound_is_exact_for_simple_quantifiers_and_noted_otherwise():
    simple = load_policy_text(H.replace("j: json)", "j: json, cc: list[email] = [])")
                              + 'deny "ext" t.act when any c in params.cc: c.domain != "corp.example"\n'
                                'allow "ok" t.act when len(params.cc) <= 2\n').policy
    enc = ToolEncoding([simple], "t.act")
    bound = enc.bounds[("p", "cc")]
    assert bound.exact and bound.k == 3  # 3 per quantifier covers `len <= 2` (needs 3) too
    assert analyze(simple).notes == ()
    nested = load_policy_text(H.replace("j: json)", "j: json, cc: list[email] = [])")
                              + 'deny "dup" t.act when any c in params.cc: any d in params.cc: '
                                'c.local == d.local and c.domain != d.domain\n').policy
    report = analyze(nested)
    assert report.notes and "up to" in report.notes[0]
