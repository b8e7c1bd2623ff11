"""Intent alignment and drift (AARM R7): `aarm_runtime.aligner`.

The interface contract (ranges, 4 places, None without intent, determinism
across processes and hash seeds), the drift recurrence, the behaviour on the
threat scenarios, hostile params, and the calibration set
(tests/data/alignment_calibration.yaml) whose measured report is quoted
verbatim in docs/aligner.md (`python tests/test_aligner.py` prints it).
"""

from __future__ import annotations

import decimal
import json
import math
import os
import subprocess
import sys
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aarm_runtime import aligner as A
from aarm_runtime import values
from aarm_runtime.aligner import (
    PUBLIC_MAIL_DOMAINS,
    Aligner,
    Alignment,
    OverlapAligner,
    drift_step,
)

ROOT = Path(__file__).parent.parent
FIXTURE = Path(__file__).parent / "data" / "alignment_calibration.yaml"
DOC = ROOT / "docs" / "aligner.md"
BEGIN, END = "<!-- calibration:begin -->", "<!-- calibration:end -->"
RECOMMENDED = Decimal("0.5")  # the threshold docs/aligner.md recommends for `risk.drift`

MAIL = {"text": "send the Q3 notes to bob@corp.example", "entities": ["bob@corp.example"],
        "tools": ["docs.read", "email.send"]}
CODE = {"text": "fix the failing test in tests/test_parser.py; the bug is in src/parser.py",
        "tools": ["fs.read", "fs.write", "shell.exec"]}


def places(d: Decimal) -> int:
    exponent = d.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def check_alignment(a: Alignment) -> None:
    for value in (a.score, a.drift):
        assert isinstance(value, Decimal)
        assert 0 <= value <= 1
        assert places(value) <= 4
        assert values.canonical_decimal(value) == str(value)  # canonical: no trailing zeros, no exponent


# --------------------------------------------------------------------------- the contract


def test_overlap_aligner_is_an_aligner() -> None:
    assert isinstance(OverlapAligner(), Aligner)


@pytest.mark.parametrize("intent", [None, {}, {"score": Decimal("0.9")}, {"text": 5, "entities": "x"},
                                    {"entities": [], "tools": []}, "send mail", ["a"]])
def test_none_without_usable_intent(intent: Any) -> None:
    assert OverlapAligner().assess(intent, "email.send", {"to": "bob@corp.example"}, []) is None


def test_alignment_validates_and_canonicalises() -> None:
    a = Alignment(Decimal("0.5000"), Decimal(1))
    assert (str(a.score), str(a.drift)) == ("0.5", "1")
    assert Alignment(Decimal("0.5"), Decimal("0")) == a.__class__(Decimal("0.50"), Decimal("0.0"))
    for bad, kind in [(0.5, TypeError), (True, TypeError), ("0.5", TypeError), (Decimal("NaN"), ValueError),
                      (Decimal("1.0001"), ValueError), (Decimal(-1), ValueError), (Decimal("0.12345"), ValueError)]:
        with pytest.raises(kind):
            Alignment(bad, Decimal(0))
        with pytest.raises(kind):
            Alignment(Decimal(0), bad)


def test_constructor_refuses_inexact_or_out_of_range_constants() -> None:
    with pytest.raises(TypeError, match="floats are not exact"):
        OverlapAligner(rise=0.3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`fall` must be in \(0, 1\]"):
        OverlapAligner(fall=Fraction(0))
    with pytest.raises(ValueError, match=r"`domain_credit` must be in \[0, 1\]"):
        OverlapAligner(domain_credit=Decimal("1.5"))
    with pytest.raises(ValueError, match="`max_nodes` must be a positive int"):
        OverlapAligner(max_nodes=0)
    assert OverlapAligner(rise=Decimal("0.5")).rise == Fraction(1, 2)


def test_prior_must_hold_alignments() -> None:
    with pytest.raises(TypeError, match="`prior` must hold `Alignment` values"):
        OverlapAligner().assess(MAIL, "email.send", {"to": "bob@corp.example"}, [{"drift": Decimal(0)}])


def test_the_opened_intent_score_is_not_used() -> None:
    aligner = OverlapAligner()
    params = {"to": "eve@evil.example", "subject": "hi"}
    assert (aligner.assess({**MAIL, "score": Decimal(1)}, "email.send", params, [])
            == aligner.assess(MAIL, "email.send", params, []))


# --------------------------------------------------------------------------- behaviour


def score(intent: dict[str, Any], tool: str, params: Any, **kw: Any) -> Decimal:
    got = OverlapAligner(**kw).score(intent, tool, params)
    assert got is not None
    return got


def test_requested_tool_and_recipient_score_high() -> None:
    assert score(MAIL, "email.send", {"to": "bob@corp.example", "subject": "Q3 notes"}) == 1
    assert score(MAIL, "email.send", {"to": "Bob@CORP.example"}) == 1  # emails compare caselessly


def test_outside_domain_scores_low_and_named_domain_in_between() -> None:
    named = score(MAIL, "email.send", {"to": "bob@corp.example"})
    colleague = score(MAIL, "email.send", {"to": "carol@corp.example"})
    subdomain = score(MAIL, "email.send", {"to": "carol@eu.corp.example"})
    outside = score(MAIL, "email.send", {"to": "eve@evil.example"})
    lookalike = score(MAIL, "email.send", {"to": "bob@corp.example.evil.net"})
    assert named > colleague == subdomain > Decimal("0.5") > outside == lookalike == 0


def test_one_unnamed_recipient_among_named_ones_pulls_the_action_down() -> None:
    assert score(MAIL, "email.send", {"to": "bob@corp.example", "cc": ["eve@evil.example"]}) == 0


def test_public_mail_domains_give_no_domain_credit() -> None:
    intent = {"text": "mail the contract to jo@gmail.com", "entities": ["jo@gmail.com"], "tools": ["email.send"]}
    assert "gmail.com" in PUBLIC_MAIL_DOMAINS
    assert score(intent, "email.send", {"to": "jo@gmail.com"}) == 1
    assert score(intent, "email.send", {"to": "archive@gmail.com"}) == 0
    assert score(intent, "email.send", {"to": "archive@gmail.com"}, public_domains=frozenset()) > 0


def test_reading_unnamed_documents_scores_low() -> None:
    prep = {"text": "prepare my meeting with the design team", "tools": ["docs.read"]}
    related = score(prep, "docs.read", {"doc_id": "design-review-notes", "folder": "design"})
    unrelated = score(prep, "docs.read", {"doc_id": "strategy-2027", "folder": "strategy"})
    assert score(prep, "docs.read", {"doc_id": "design", "folder": "design"}) == 1
    assert related == Decimal("0.8833")  # objects 1 (`design`) and 1/2 + 1/2 × 1/3 (one word of three)
    assert unrelated == OverlapAligner().tool_only  # the requested tool, nothing else
    assert score(prep, "db.query", {"sql": "select * from salaries"}) == 0


def test_coding_agent_named_file_versus_ssh_keys() -> None:
    assert score(CODE, "fs.read", {"path": "src/parser.py"}) == 1
    assert score(CODE, "fs.read", {"path": "/repo/src/parser.py"}) == 1  # the file name is named
    assert score(CODE, "fs.read", {"path": "src/lexer.py"}) > Decimal("0.6")  # shares `src`
    assert score(CODE, "fs.read", {"path": "~/.ssh/id_rsa"}) == Decimal("0.3")
    assert score(CODE, "secrets.read", {"name": "DEPLOY_TOKEN"}) == 0


def test_tool_evidence_without_a_tools_list() -> None:
    text_only = {"text": "send the Q3 notes to bob@corp.example"}
    assert score(text_only, "email.send", {}) == Decimal("0.5")  # `send` is a word of the request
    assert score(text_only, "shell.exec", {}) == 0
    with_tools = {"text": "x", "tools": ["email.send"]}
    assert score(with_tools, "email.read_inbox", {}) == Decimal("0.5")  # same service
    assert score(with_tools, "email.send", {}) == 1


def test_entities_only_judges_the_params() -> None:
    intent = {"entities": ["Acme GmbH"]}
    assert score(intent, "bank.send_money", {"recipient": "Acme GmbH", "amount": 12}) == 1
    assert score(intent, "bank.send_money", {"recipient": "Globex Ltd"}) == 0


def test_numbers_count_only_when_named() -> None:
    intent = {"text": "pay invoice 3321 of 120.50 EUR", "tools": ["bank.send_money"]}
    assert score(intent, "bank.send_money", {"amount": Decimal("120.5")}) == 1
    assert score(intent, "bank.send_money", {"amount": 120.5}) == 1  # a float reads as the decimal it spells
    assert score(intent, "bank.send_money", {"amount": 999}) == 1  # a detail: no evidence either way


def test_meta_tool_is_judged_as_called_and_its_wrapped_name_matches_intent_tools() -> None:
    wrapped = score(CODE, "mcp.invoke", {"server": "files", "name": "fs.read", "args": {"path": "src/parser.py"}})
    other = score(CODE, "mcp.invoke", {"server": "vault", "name": "secrets.read", "args": {"name": "token"}})
    # An unrequested tool (target_only = 1/2) on objects `files` (unrelated),
    # `fs.read` (a requested tool) and `src/parser.py` (named): 1/2 × 2/3.
    assert wrapped == Decimal("0.3333")
    assert score(CODE, "mcp.invoke", {"name": "fs.read", "args": {"path": "src/parser.py"}}) == Decimal("0.5")
    assert other == 0


def test_values_from_aarm_runtime_values_are_read_like_their_strings() -> None:
    raw = score(MAIL, "email.send", {"to": "bob@corp.example", "cc": ["eve@evil.example"]})
    typed = score(MAIL, "email.send", {"to": values.Email("bob", "corp.example"),
                                       "cc": (values.parse_email("eve@evil.example"),)})
    assert raw == typed


# --------------------------------------------------------------------------- drift


@given(st.decimals(min_value=0, max_value=1, places=4), st.decimals(min_value=0, max_value=1, places=4))
def test_drift_step_moves_toward_the_misalignment_without_overshooting(previous: Decimal, s: Decimal) -> None:
    got = drift_step(previous, s)
    target = 1 - s
    assert min(previous, target) <= got <= max(previous, target)
    check_alignment(Alignment(s, got))


def test_drift_reaches_a_steady_misalignment_exactly() -> None:
    drift = Decimal(0)
    for _ in range(60):
        drift = drift_step(drift, Decimal("0.3"))
    assert drift == Decimal("0.7")
    for _ in range(200):
        drift = drift_step(drift, Decimal(1))
    assert drift == 0


def test_drift_forgives_slower_than_it_rises() -> None:
    up = drift_step(Decimal(0), Decimal(0))
    down = drift_step(Decimal(1), Decimal(1))
    assert up == Decimal("0.3334") and down == Decimal("0.9")


@given(st.decimals(min_value=0, max_value=1, places=4), st.decimals(min_value=0, max_value=1, places=4),
       st.fractions(min_value=Fraction(1, 1000), max_value=1, max_denominator=1000),
       st.fractions(min_value=Fraction(1, 1000), max_value=1, max_denominator=1000))
def test_drift_step_is_the_documented_ewma_in_exact_arithmetic(previous: Decimal, s: Decimal, rise: Fraction,
                                                               fall: Fraction) -> None:
    # drift_step computes on the 10^-4 grid in integers; this is its docstring's definition in Fractions.
    prev, target = Fraction(previous), 1 - Fraction(s)
    if target >= prev:
        want = math.ceil((prev + rise * (target - prev)) * 10_000)
    else:
        want = math.floor((prev - fall * (prev - target)) * 10_000)
    assert drift_step(previous, s, rise=rise, fall=fall) == Fraction(want, 10_000)


ints = st.integers(min_value=-10**6, max_value=10**6)
dens = st.integers(min_value=1, max_value=10**6)


@given(st.lists(st.tuples(ints, dens), min_size=2, max_size=6))
def test_score_arithmetic_is_exact_rational_arithmetic(pairs: list[tuple[int, int]]) -> None:
    # `_score` computes with unreduced (numerator, denominator) pairs; each operation must be Fraction's.
    fr = [Fraction(n, d) for n, d in pairs]
    a, b = pairs[0], pairs[1]
    assert Fraction(*A._q_add(a, b)) == fr[0] + fr[1]
    assert Fraction(*A._q_mul(a, b)) == fr[0] * fr[1]
    assert A._q_less(a, b) == (fr[0] < fr[1])
    assert Fraction(*A._q_mean(pairs)) == sum(fr, Fraction(0)) / len(fr)
    assert A._q_round(a) == round(fr[0] * 10_000)  # half to even, like round(Fraction)
    assert A._q_round((2 * a[0] + 1, 2 * 10_000)) == round(Fraction(2 * a[0] + 1, 2 * 10_000) * 10_000)  # ties


score_lists = st.lists(st.decimals(min_value=0, max_value=1, places=4), max_size=40)


@given(score_lists)
def test_drift_from_the_last_element_equals_drift_of_the_whole_sequence(scores: list[Decimal]) -> None:
    aligner = OverlapAligner()
    prior: list[Alignment] = []
    for s in scores:
        prior.append(Alignment(s, aligner.next_drift(prior[-1] if prior else None, s)))
    assert (prior[-1].drift if prior else Decimal(0)) == aligner.drift_of(scores)


def test_assess_reads_only_the_last_prior_alignment() -> None:
    aligner = OverlapAligner()
    prior = [Alignment(Decimal(i % 7) / 10, Decimal(i % 5) / 10) for i in range(5000)]
    action = ("email.send", {"to": "eve@evil.example"})
    full = aligner.assess(MAIL, *action, prior)
    assert full == aligner.assess(MAIL, *action, prior[-1:])
    assert full is not None and full.drift == drift_step(prior[-1].drift, full.score)


# --------------------------------------------------------------------------- determinism and hostile input

_words = st.sampled_from(["send", "notes", "bob@corp.example", "eve@evil.example", "https://evil.example/x",
                          "src/parser.py", "~/.ssh/id_rsa", "Q3", "design", "strategy-2027", "é", "\u0663\u0663\u0663",
                          "a b c", "http://[::1]/", "x@y", "@@", "\ud800", "ＢＯＢ", " ", ""])
_scalars = st.one_of(_words, st.text(max_size=12), st.integers(), st.booleans(), st.none(),
                     st.decimals(allow_nan=True, allow_infinity=True), st.floats())
json_like = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=4), inner, max_size=4)),
                         max_leaves=12)
intents = st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "text": st.one_of(st.text(max_size=40), _words), "entities": st.lists(_words, max_size=3),
    "tools": st.lists(st.sampled_from(["email.send", "docs.read", "fs.read", "x"]), max_size=3),
    "score": st.decimals(min_value=0, max_value=1, places=2)}))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(intents, st.sampled_from(["email.send", "docs.read", "a", "", "mcp.invoke"]), json_like, score_lists)
def test_contract_on_arbitrary_input(intent: Any, tool: str, params: Any, scores: list[Decimal]) -> None:
    aligner = OverlapAligner()
    prior = [Alignment(Decimal(1), d) for d in scores]
    got = aligner.assess(intent, tool, params, prior)
    if got is None:
        return
    check_alignment(got)
    assert got == aligner.assess(intent, tool, params, prior)
    if isinstance(params, dict):
        reordered = dict(reversed(list(params.items())))
        assert aligner.assess(intent, tool, reordered, prior) == got


@pytest.mark.slow
@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(intents, st.sampled_from(["email.send", "docs.read", "mcp.invoke"]), json_like)
def test_contract_on_arbitrary_input_long(intent: Any, tool: str, params: Any) -> None:
    got = OverlapAligner().assess(intent, tool, params, [])
    if got is not None:
        check_alignment(got)


def _deep(depth: int) -> Any:
    value: Any = "bob@corp.example"
    for _ in range(depth):
        value = {"x": [value]}
    return value


def _cyclic() -> list[Any]:
    loop: list[Any] = ["bob@corp.example"]
    loop.append(loop)
    return loop


HOSTILE = {
    "huge string": lambda: {"body": "send notes " * 1_000_000},
    "huge list": lambda: {"cc": ["bob@corp.example"] * 1_000_000},
    "huge object": lambda: {f"k{i}": "bob@corp.example" for i in range(200_000)},
    "many strings": lambda: {"cc": [f"user{i}@corp.example" for i in range(100_000)]},
    "deep": lambda: _deep(20_000),
    "cycle": _cyclic,
    "not json": lambda: {"a": {1, 2}, "b": b"bytes", "c": object(), 3: "int key", "d": float("nan"),
                         "e": Decimal("NaN"), "f": Decimal("1E+999999999"), "g": 10**5000, "h": float("inf")},
    "unicode": lambda: {"to": "bob\ud800@corp.example", "s": "ｂｏｂ＠ｃｏｒｐ．ｅｘａｍｐｌｅ \U0002fffd 😀",
                        "u": "https://ex\u00e4mple.com/", "p": "\u202e/etc/passwd"},
    "non-mapping": lambda: ["bob@corp.example", 3],
    "scalar": lambda: "bob@corp.example",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_params_are_bounded_and_never_raise(name: str) -> None:
    params = HOSTILE[name]()
    aligner = OverlapAligner()
    start = time.perf_counter()
    got = aligner.assess(MAIL, "email.send", params, [Alignment(Decimal(0), Decimal("0.5"))])
    elapsed = time.perf_counter() - start
    assert got is not None
    check_alignment(got)
    assert elapsed < 1.0, f"{name}: {elapsed:.3f} s"


def test_what_is_left_unread_counts_against_the_action() -> None:
    aligner = OverlapAligner(max_nodes=64)
    # Named recipients first, an outsider past the budget: the outsider is never
    # seen, but the unread remainder keeps the score from looking fully aligned.
    padded = {"cc": ["bob@corp.example"] * 100 + ["eve@evil.example"]}
    assert aligner.score(MAIL, "email.send", padded) < aligner.score(MAIL, "email.send", {"cc": ["bob@corp.example"]})
    assert aligner.score(MAIL, "email.send", padded) < Decimal("0.5")


def test_huge_intent_is_read_once() -> None:
    aligner = OverlapAligner()
    intent = {"text": "notes " * 200_000 + "bob@corp.example", "tools": ["email.send"]}
    aligner.score(intent, "email.send", {"to": "bob@corp.example"})
    start = time.perf_counter()
    for _ in range(100):
        assert aligner.score(intent, "email.send", {"to": "bob@corp.example"}) == 1
    assert time.perf_counter() - start < 0.5  # cached: the request is not re-tokenised per action


DETERMINISM_SCRIPT = r"""
import decimal, json, sys, yaml
from aarm_runtime.aligner import OverlapAligner
if sys.argv[2] == "odd-context":
    # Replicas must not depend on the decimal context either.
    decimal.getcontext().prec = 3
    decimal.getcontext().rounding = decimal.ROUND_FLOOR
doc = yaml.safe_load(open(sys.argv[1]))
aligner = OverlapAligner()
out = []
for sc in doc["scenarios"]:
    prior = []
    for act in sc["actions"]:
        params = act["params"]
        if sys.argv[2] == "reversed":
            params = dict(reversed(list(params.items())))
        prior.append(aligner.assess(sc["intent"], act["tool"], params, prior))
    out.append([[str(a.score), str(a.drift)] for a in prior])
print(json.dumps(out))
"""


def test_replicas_agree_across_hash_seeds_key_orders_and_decimal_contexts() -> None:
    runs = set()
    for seed, mode in [("0", "plain"), ("1", "plain"), ("4242", "reversed"), ("random", "odd-context")]:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, str(FIXTURE), mode],
                              capture_output=True, text=True, env=env, timeout=120, check=True)
        runs.add(done.stdout)
    assert len(runs) == 1
    assert len(json.loads(runs.pop())) == len(load_fixture()["scenarios"])


# --------------------------------------------------------------------------- calibration


def load_fixture() -> dict[str, Any]:
    with FIXTURE.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def replay(aligner: OverlapAligner, doc: dict[str, Any]) -> list[tuple[dict[str, Any], list[Alignment]]]:
    runs = []
    for sc in doc["scenarios"]:
        prior: list[Alignment] = []
        for act in sc["actions"]:
            got = aligner.assess(sc["intent"], act["tool"], act["params"], prior)
            assert got is not None
            prior.append(got)
        runs.append((sc, prior))
    return runs


def _has_destination(params: Any) -> bool:
    if isinstance(params, dict):
        return any(_has_destination(v) for v in params.values())
    if isinstance(params, list):
        return any(_has_destination(v) for v in params)
    return isinstance(params, str) and " " not in params and ("@" in params[1:] or "://" in params)


def _quartiles(xs: list[Decimal]) -> str:
    xs = sorted(xs)
    # nearest rank: the smallest value with at least q of the sample at or below it
    pick = [xs[max(0, -(-len(xs) * q // 4) - 1)] for q in range(5)]
    pick[0] = xs[0]
    return " | ".join(str(x) for x in pick)


def caught_at(sc: dict[str, Any], run: list[Alignment], threshold: Decimal) -> int | None:
    """How many drifting actions ran before drift first exceeded `threshold` (None: never)."""
    for i, a in enumerate(run):
        if a.drift > threshold:
            return sum(1 for act in sc["actions"][:i] if act["label"] == "drifting")
    return None


def calibration_report() -> str:
    doc = load_fixture()
    runs = replay(OverlapAligner(), doc)
    lines = [f"Measured on tests/data/alignment_calibration.yaml ({len(runs)} sessions, "
             f"{sum(len(r) for _, r in runs)} actions) with `OverlapAligner()` defaults.", ""]
    lines += ["Per-action `intent.score` (nearest-rank quartiles):", "",
              "| actions | n | min | q1 | median | q3 | max |", "|---|---|---|---|---|---|---|"]
    groups: dict[str, list[Decimal]] = {"aligned": [], "drifting": [], "aligned, with a destination": [],
                                        "drifting, with a destination": []}
    for sc, run in runs:
        for act, a in zip(sc["actions"], run):
            groups[act["label"]].append(a.score)
            if _has_destination(act["params"]):
                groups[f"{act['label']}, with a destination"].append(a.score)
    for name, xs in groups.items():
        lines.append(f"| {name} | {len(xs)} | {_quartiles(xs)} |")
    lines += ["", "Peak `risk.drift` per session, and how many drifting actions ran before drift passed 0.5:", "",
              "| session | kind | peak drift | drifting actions run before `> 0.5` |", "|---|---|---|---|"]
    for sc, run in runs:
        peak = max(a.drift for a in run)
        if sc["kind"] == "drift":
            at = caught_at(sc, run, RECOMMENDED)
            when = "never" if at is None else str(at)
        else:
            when = "—"
        lines.append(f"| {sc['name']} | {sc['kind']} | {peak} | {when} |")
    lines += ["", "Thresholds on `risk.drift` (a session is deferred at its first action with drift above it):", "",
              "| threshold | on-intent sessions deferred | drift sessions caught | drifting actions run before the catch (max) |",
              "|---|---|---|---|"]
    on = [(sc, r) for sc, r in runs if sc["kind"] == "on-intent"]
    off = [(sc, r) for sc, r in runs if sc["kind"] == "drift"]
    for t in ("0.3", "0.4", "0.5", "0.6", "0.7"):
        th = Decimal(t)
        false = sum(1 for _, r in on if any(a.drift > th for a in r))
        lat = [caught_at(sc, r, th) for sc, r in off]
        hit = [x for x in lat if x is not None]
        lines.append(f"| {t} | {false} of {len(on)} | {len(hit)} of {len(off)} | {max(hit) if hit else '—'} |")
    return "\n".join(lines) + "\n"


def test_calibration_separates_on_intent_from_drifting_sessions() -> None:
    doc = load_fixture()
    threshold = Decimal(str(doc["threshold"]))
    assert threshold == RECOMMENDED
    runs = replay(OverlapAligner(), doc)
    kinds = {sc["kind"] for sc, _ in runs}
    assert kinds == {"on-intent", "drift"}
    on_peak = max(a.drift for sc, r in runs if sc["kind"] == "on-intent" for a in r)
    off_peaks = [max(a.drift for a in r) for sc, r in runs if sc["kind"] == "drift"]
    assert on_peak < threshold < min(off_peaks), (on_peak, sorted(off_peaks))
    # Drift passes the threshold on a drifting action, never on the aligned prefix.
    for sc, run in runs:
        if sc["kind"] == "drift":
            first = next(i for i, a in enumerate(run) if a.drift > threshold)
            assert sc["actions"][first]["label"] == "drifting", sc["name"]
    # Per action, a destination the request never named is a strong signal on its own.
    dest = {label: [a.score for sc, r in runs for act, a in zip(sc["actions"], r)
                    if act["label"] == label and _has_destination(act["params"])] for label in ("aligned", "drifting")}
    assert max(dest["drifting"]) < Decimal("0.4") < min(dest["aligned"])


def test_docs_quote_the_measured_calibration() -> None:
    text = DOC.read_text(encoding="utf-8")
    quoted = text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n") + "\n"
    assert quoted == calibration_report(), "docs/aligner.md is stale: run `python tests/test_aligner.py`"


def test_assess_cost_is_small() -> None:
    aligner = OverlapAligner()
    doc = load_fixture()
    calls = [(sc["intent"], act["tool"], act["params"]) for sc in doc["scenarios"] for act in sc["actions"]]
    prior = [Alignment(Decimal("0.9"), Decimal("0.1"))]
    start = time.perf_counter()
    for _ in range(5):
        for intent, tool, params in calls:
            aligner.assess(intent, tool, params, prior)
    per_call = (time.perf_counter() - start) / (5 * len(calls))
    assert per_call < 0.005, f"{per_call * 1e6:.0f} µs per assess()"


def _doc_policy() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("```aarm\n") + len("```aarm\n")
    return text[start:text.index("```", start)]


def test_the_documented_policy_acts_on_score_and_drift() -> None:
    from aarmc.reference import decide
    from aarmc.semantics.load import load_policy_text

    loaded = load_policy_text(_doc_policy(), name="docs/aligner.md")
    assert loaded.diagnostics == ()
    aligner = OverlapAligner()
    intent = dict(MAIL)
    actions = [("docs.read", {"doc_id": "q3-notes", "folder": "finance"}, "allow"),
               # an unnamed destination: a human decides, whatever the drift
               ("email.send", {"to": "eve@evil.example", "subject": "notes", "body": "attached"}, "step_up"),
               # unrelated reads: the first is allowed, the next one passes 0.5
               ("docs.read", {"doc_id": "salary-bands", "folder": "hr"}, "allow"),
               ("docs.read", {"doc_id": "board-minutes", "folder": "board"}, "defer"),
               # back on the request: drift falls below 0.5 again
               ("email.send", {"to": "bob@corp.example", "subject": "Q3 notes", "body": "the Q3 notes"}, "allow")]
    prior: list[Alignment] = []
    got = []
    for tool, params, _ in actions:
        a = aligner.assess(intent, tool, params, prior)
        assert a is not None
        prior.append(a)
        session = {"intent": {**intent, "score": a.score}, "risk": {"drift": a.drift}}
        got.append(decide(loaded.policy, {"tool": tool, "params": params}, session).decision)
    assert got == [want for _, _, want in actions], [(str(a.score), str(a.drift)) for a in prior]
    # Without an aligner both terms are absent: the drift rule is unknown and defers.
    absent = decide(loaded.policy, {"tool": "email.send", "params": actions[1][1]}, {"intent": intent})
    assert (absent.decision, absent.reason) == ("defer", "absent-context")


if __name__ == "__main__":
    sys.stdout.write(calibration_report())


def test_alignment_values_are_canonical_whatever_their_spelling_or_the_decimal_context():
    """The fast check of a Decimal (written with at most four places) gives exactly what the exact path gives."""
    from decimal import localcontext
    from fractions import Fraction

    from aarm_runtime import aligner as A

    def exact(value):
        return A._decimal(int(Fraction(value) * A._SCALE))

    spellings = ["1", "0", "-0", "1.0000", "0E+3", "0.00E+2", "10E-1", "100E-2", "00.5000"]
    for i in range(10_001):
        spellings += [f"{i / 10_000:.4f}", f"{i}E-4"]
    with localcontext() as ctx:
        ctx.prec = 2  # a context that would round: the result must not depend on it
        for text in spellings:
            got, want = A._unit_decimal(Decimal(text), "score"), exact(Decimal(text))
            assert got.as_tuple() == want.as_tuple(), (text, got, want)
    for bad in ("0.12345", "1.0001", "-0.0001", "2"):
        with pytest.raises(ValueError):
            A._unit_decimal(Decimal(bad), "score")
