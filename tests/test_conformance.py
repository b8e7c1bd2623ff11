"""The YAML conformance corpus through the reference interpreter.

Each case is its own test (its id is `file::name`), and a failure prints the
file, the case name and the whole decision record.
"""

from __future__ import annotations

import functools

import pytest

from aarmc.diagnostics import render_human
from aarmc.reference import decide
from aarmc.semantics import ir
from aarmc.semantics.load import load_policy_text
from conformance_loader import Case, load_corpus, run_case

CASES = load_corpus()


@functools.lru_cache(maxsize=None)
def _policy(text: str, name: str) -> ir.Policy:
    result = load_policy_text(text, name)
    if result.policy is None:
        shown = "\n".join(render_human(d, result.sources) for d in result.diagnostics)
        raise AssertionError(f"the policy of {name} does not load:\n{shown}")
    return result.policy


def _reference(case: Case):
    return lambda text, action, session: decide(_policy(text, case.file), action, session)


def test_corpus_is_not_empty():
    assert len({c.file for c in CASES}) >= 8
    assert len(CASES) >= 100


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reference_interpreter(case: Case):
    problems = run_case(case, _reference(case))
    assert not problems, "\n".join(problems)


def test_every_reason_and_decision_is_covered():
    reasons = {c.expect["reason"] for c in CASES}
    decisions = {c.expect["decision"] for c in CASES}
    assert decisions == {"allow", "deny", "modify", "step_up", "defer"}
    # evaluation-error is unreachable from a well-typed policy; tests/test_reference.py covers it on hand-built IR.
    assert reasons >= {"forbidden", "rule", "default", "unknown-tool", "invalid-params", "conflict",
                       "absent-context"}


def test_the_runner_reports_file_and_case_of_a_mismatch():
    case = Case(file="x.yaml", name="wrong", policy='policy "p" version "1"\ndefault deny\ntool a.b()\n',
                action={"tool": "a.b", "params": {}}, session=None,
                expect={"decision": "allow", "rules": [], "reason": "default"})
    problems = run_case(case, _reference(case))
    assert problems and problems[0].startswith("x.yaml::wrong: `decision` is 'deny'")
