"""The compiled engine against the reference interpreter, and translation validation.

- Hypothesis draws policies, actions and sessions (`policy_strategies.py`):
  the engine running the compiled artifact and `aarmc.reference.decide` must
  agree on every field of every decision record (or raise the same error).
- The YAML conformance corpus runs through the engine: same records as the
  reference, and every case's expectations hold.
- Translation validation proves each tool's decoded table equal to the IR,
  and catches a deliberately corrupted table with a witness on which the
  runtime and the reference really disagree.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policy_strategies as ps
from aarm_runtime import artifact as fmt
from aarm_runtime import dcbor
from aarm_runtime.context import SessionFormatError
from aarm_runtime.engine import ActionFormatError, Engine
from aarmc.compile.artifact import compile_policy, encode_payload
from aarmc.compile.table import INDEX_MIN_RULES, build_table
from aarmc.compile.validate import (
    PROVED, REFUTED, TranslationValidationError, validate_artifact, validate_payload,
)
from aarmc.reference import SessionFileError, decide
from aarmc.semantics import ir
from aarmc.semantics.load import load_policy, load_policy_text
from conformance_loader import Case, load_corpus, run_case

SPEC = Path(__file__).parent.parent / "specs" / "mail-assistant"
CASES = load_corpus()


@functools.lru_cache(maxsize=None)
def _policy(text: str, name: str = "<policy>") -> ir.Policy:
    result = load_policy_text(text, name)
    assert result.policy is not None, result.diagnostics
    return result.policy


@functools.lru_cache(maxsize=None)
def _engine(policy: ir.Policy) -> Engine:
    return Engine.load(compile_policy(policy, None, validate=False).data, unsafe_unsigned=True)


def _outcome(fn, *args):
    try:
        return ("record", fn(*args))
    except (SessionFileError, SessionFormatError, ActionFormatError) as err:
        return ("malformed", str(err))


def assert_agree(policy: ir.Policy, action, session) -> None:
    want = _outcome(decide, policy, action, session)
    got = _outcome(_engine(policy).decide, action, session)
    assert got == want, f"\naction {action}\nsession {session}\nreference {want}\nengine    {got}"


# ---- hypothesis ----------------------------------------------------------------------------------

def _differential(text: str, cases: list) -> None:
    policy = _policy(text)
    for action, session in cases:
        assert_agree(policy, action, session)


@given(ps.policies(), st.lists(st.tuples(ps.actions(), ps.sessions()), min_size=1, max_size=10))
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_engine_agrees_with_the_reference(text, cases):
    _differential(text, cases)


@given(ps.unknown_heavy_policies(), st.lists(st.tuples(ps.send_actions, ps.sessions()), min_size=1, max_size=8))
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_engine_agrees_with_the_reference_when_context_is_absent(text, cases):
    _differential(text, cases)


@pytest.mark.slow
@given(ps.policies(max_rules=10), st.lists(st.tuples(ps.actions(), ps.sessions()), min_size=1, max_size=20))
@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
def test_engine_agrees_with_the_reference_long(text, cases):
    _differential(text, cases)


def test_every_reason_is_reached_by_the_strategies():
    seen: set[tuple[str, str]] = set()

    @given(ps.policies(), st.lists(st.tuples(ps.actions(), ps.sessions()), min_size=5, max_size=10))
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def collect(text, cases):
        policy = _policy(text)
        for action, session in cases:
            d = decide(policy, action, session)
            seen.add((d.decision, d.reason))

    collect()
    assert {r for _, r in seen} >= {"forbidden", "rule", "default", "unknown-tool", "invalid-params", "conflict",
                                    "absent-context"}
    assert {d for d, _ in seen} == {"allow", "deny", "modify", "step_up", "defer"}


# ---- the conformance corpus ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conformance_case_on_the_engine(case: Case):
    policy = _policy(case.policy, case.file)
    assert_agree(policy, case.action, case.session)
    problems = run_case(case, lambda text, action, session: _engine(policy).decide(action, session))
    assert not problems, "\n".join(problems)


# ---- translation validation ------------------------------------------------------------------------


def _corpus_policies() -> list[tuple[str, ir.Policy]]:
    out = {"specs/mail-assistant": load_policy([SPEC]).policy}
    for case in CASES:
        out.setdefault(case.file, _policy(case.policy, case.file))
    return sorted(out.items())


@pytest.mark.parametrize("name, policy", _corpus_policies(), ids=lambda x: x if isinstance(x, str) else "")
def test_translation_validation_proves_every_table(name, policy):
    payload = encode_payload(policy, build_table(policy), check_report_digest=None, validation=None)
    report = validate_payload(policy, payload)
    assert report.proved, report.summary()
    assert {t.tool for t in report.tools} == {t.name for t in policy.tools if t.wraps is None}


@given(ps.policies(max_rules=4))
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_translation_validation_proves_generated_policies(text):
    policy = _policy(text)
    report = compile_policy(policy, None).validation
    assert report.proved, report.summary()


CORRUPT = """policy "c" version "1"
default deny
env flag: bool
tool a.pay(to: email, amount: int, memo: str = "x") returns none
tool a.send(k: str, n: int) returns none
forbid "huge" a.pay when params.amount > 100000
deny "outside" a.pay when params.to.domain != "corp.example"
allow "small" a.pay when params.amount < 1000
step_up "big" a.pay when params.amount >= 1000 approvers ["boss"] timeout 10m
modify "tag" priority 400 a.pay when params.amount == 7 set memo = "seven"
defer "wait" priority 500 a.pay when env.flag and params.amount == 8 timeout 5m
""" + "\n".join(f'allow "k{i}" a.send when params.k == "v{i}" and params.n > 0' for i in range(INDEX_MIN_RULES))


def _corrupted(mutate) -> tuple[ir.Policy, fmt.Artifact]:
    policy = _policy(CORRUPT)
    doc = dcbor.decode_strict(encode_payload(policy, build_table(policy), check_report_digest=None, validation=None))
    mutate(doc, policy)
    return policy, fmt.decode_payload(dcbor.encode(doc))


def _rule(doc: dict, rule_id: str) -> list:
    return next(r for r in doc[fmt.K_RULES] if r[0] == rule_id)


def _set_literal(doc: dict, old, new) -> None:
    nodes = doc[fmt.K_NODES]
    i = next(i for i, n in enumerate(nodes) if n[0] == fmt.LIT and n[1] == old and type(n[1]) is type(old))
    nodes[i] = [fmt.LIT, new]


def _drop_index_key(doc: dict, policy) -> None:
    send = next(t for t in doc[fmt.K_TOOLS] if t[0] == "a.send")
    index = send[6][0][2]
    assert index is not None
    index[1] = [e for e in index[1] if e[0] != "v1"] + [["v9", [e[1] for e in index[1] if e[0] == "v1"][0]]]


CORRUPTIONS = {
    "threshold": lambda doc, p: _set_literal(doc, 1000, 999),
    "effect": lambda doc, p: _rule(doc, "small").__setitem__(1, "deny"),
    "approvers": lambda doc, p: _rule(doc, "big").__setitem__(5, ["intern"]),
    "timeout": lambda doc, p: _rule(doc, "big").__setitem__(6, 60),
    "assignment": lambda doc, p: _set_literal(doc, "seven", "eight"),
    "index": _drop_index_key,
}


@pytest.mark.parametrize("what", sorted(CORRUPTIONS))
def test_a_corrupted_table_is_caught_with_a_witness(what):
    policy, art = _corrupted(CORRUPTIONS[what])
    report = validate_artifact(policy, art)
    refuted = [t for t in report.tools if t.status == REFUTED]
    assert len(refuted) == 1 and not report.proved, report.summary()
    proof = refuted[0]
    # The witness is real: the runtime on the corrupted table and the reference on the source disagree.
    action, session = proof.witness["action"], proof.witness["session"]
    assert Engine(art).decide(action, session).to_json() != decide(policy, action, session).to_json()
    assert proof.source != proof.table
    with pytest.raises(TranslationValidationError, match="decides differently from the source"):
        report.raise_for_failure()
    # The other tool is still proved.
    assert [t.status for t in report.tools if t is not proof] == [PROVED]


def test_a_priority_moved_between_groups_is_caught():
    def move(doc, policy):
        # "small" (allow, 100) and "outside" (deny, 300): make "small" outrank "outside".
        _rule(doc, "small")[2] = 350
        pay = next(t for t in doc[fmt.K_TOOLS] if t[0] == "a.pay")
        position = next(i for i, r in enumerate(doc[fmt.K_RULES]) if r[0] == "small")
        for g in pay[6]:
            if position in g[1]:
                g[1].remove(position)
        pay[6] = [g for g in pay[6] if g[1]]
        pay[6].insert(2, [350, [position], None])

    policy, art = _corrupted(move)
    assert [g.priority for g in art.tool("a.pay").groups] == [500, 400, 350, 300, 150]
    report = validate_artifact(policy, art)
    assert [t.status for t in report.tools if t.tool == "a.pay"] == [REFUTED]


def test_declarations_are_compared_directly():
    def retype(doc, policy):
        pay = next(t for t in doc[fmt.K_TOOLS] if t[0] == "a.pay")
        pay[1][2][4] = "y"  # the default of `memo`

    policy, art = _corrupted(retype)
    report = validate_artifact(policy, art)
    assert report.declaration_errors == ("the declaration of tool `a.pay` differs from the source",)
    assert not report.proved
