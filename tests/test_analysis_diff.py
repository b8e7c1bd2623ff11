"""`aarmc diff` (changes with witnesses, equivalence proofs) and `--emit-tests` output."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_analysis_oracle import actions, outcome, policies, sessions

from aarmc import testing
from aarmc.analysis import analyze, diff_policies, emit_tests
from aarmc.reference import SessionFileError, decide
from aarmc.semantics.load import load_policy, load_policy_text

H = """policy "p" version "1"
default deny
labels public < internal
tags pii
tool t.read() returns internal tagged pii
tool t.send(n: int, to: email) returns none
"""


def _load(text: str):
    loaded = load_policy_text(text)
    assert loaded.policy is not None, loaded.diagnostics
    return loaded.policy


def test_changes_are_listed_with_replayed_witnesses():
    old = _load(H + 'allow "small" t.send when params.n < 10\n'
                    'deny "pii" t.send when "pii" in session.tags and params.to.domain != "corp.example"\n')
    new = _load(H + 'allow "small" t.send when params.n < 20\n'
                    'step_up "mid" t.send when params.n >= 20 and params.n < 30 approvers ["ops"] timeout 5m\n')
    report = diff_policies(old, new)
    got = {(c.tool, c.old, c.new) for c in report.changes}
    assert got == {("t.send", "deny", "allow"), ("t.send", "deny", "step_up")}
    assert report.widens and not report.equivalent
    for c in report.changes:
        assert decide(old, c.witness["action"], c.witness["session"]).decision == c.old
        assert decide(new, c.witness["action"], c.witness["session"]).decision == c.new
    assert {t.tool: t.status for t in report.tools} == {"t.read": "equivalent", "t.send": "changed"}


def test_rewritten_policy_is_proved_equivalent():
    old = _load(H + 'allow "small" t.send when not (params.n >= 10) and params.to.domain in {"a.example", "b.example"}\n')
    new = _load(H + 'allow "a" t.send when params.n < 10 and params.to.domain == "a.example"\n'
                    'allow "b" t.send when params.n <= 9 and params.to.domain == "b.example"\n')
    report = diff_policies(old, new)
    assert report.equivalent and not report.widens and not report.changes


def test_same_decision_other_approvers_is_a_change():
    old = _load(H + 'step_up "s" t.send when params.n > 5 approvers ["ops"] timeout 5m\n')
    new = _load(H + 'step_up "s" t.send when params.n > 5 approvers ["ops", "sec"] timeout 5m\n')
    changes = diff_policies(old, new).changes
    assert [(c.old, c.new) for c in changes] == [("step_up", "step_up")]
    assert not changes[0].widens


def test_added_and_removed_tools():
    old = _load(H + 'allow "r" t.read\n')
    new = _load(H.replace("tool t.read() returns internal tagged pii\n", "") + 'allow "s" t.send when params.n == 1\n')
    report = diff_policies(old, new)
    status = {t.tool: t.status for t in report.tools}
    assert status == {"t.read": "removed", "t.send": "changed"}
    assert {(c.tool, c.old, c.new) for c in report.changes} == {("t.read", "allow", "deny"), ("t.send", "deny", "allow")}


@st.composite
def policy_pairs(draw):
    (a, fa) = draw(policies(max_feats=2))
    # The second policy reads the same features, so one finite domain covers both.
    (b, fb) = draw(policies(feats=fa))
    return a, b, sorted(set(fa) | set(fb))


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=policy_pairs())
def test_diff_agrees_with_brute_force(case):
    a_text, b_text, feats = case
    old, new = _load(a_text), _load(b_text)
    expected = set()
    for act in actions(feats):
        for s in sessions(feats):
            d0, d1 = decide(old, act, s), decide(new, act, s)
            if outcome(d0) != outcome(d1):
                expected.add((d0.decision, d1.decision))
    report = diff_policies(old, new)
    assert not report.inconclusive
    got = {(c.old, c.new) for c in report.changes if c.tool == "a.act"}
    assert got == expected, f"\n{a_text}\n{b_text}"
    status = {t.tool: t.status for t in report.tools}
    assert (status["a.act"] == "equivalent") == (not expected)


def test_emitted_witnesses_are_passing_test_cases(tmp_path):
    src = Path(__file__).parent / "golden" / "findings"
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    text = (src / "conflict.aarm").read_text() + (src / "forbidden-reachable.aarm").read_text().split("\n", 3)[3] \
        .replace('"ok"', '"ok2"').replace('"huge"', '"huge2"').replace('"bump"', '"bump2"')
    (policy_dir / "p.aarm").write_text(text)
    loaded = load_policy([policy_dir])
    assert loaded.policy is not None, loaded.diagnostics
    report = analyze(loaded.policy)
    files = emit_tests(report, tmp_path / "tests", loaded.policy, policy_ref="../policy")
    assert len(files) == 1
    run = testing.run(files, load=load_policy, decide=decide, session_error=SessionFileError)
    assert not run.problems
    statuses = [r.status for r in run.results]
    assert statuses and all(s == "pass" for s in statuses)
    assert len(statuses) == sum(1 for f in report.findings if f.witness is not None)
