"""Golden findings: one policy per finding kind with exactly the planted problem (and a clean one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aarmc.analysis import analyze
from aarmc.reference import decide
from aarmc.semantics.load import load_policy, load_policy_text

GOLDEN = Path(__file__).parent / "golden" / "findings"
SPECS = Path(__file__).parent.parent / "specs"


def _expected(path: Path) -> set[tuple]:
    out = set()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        kind, rest = line.split(" ", 1)
        if " " in rest and kind not in ("assert-proved", "assert-refuted", "unknown"):
            rule, related = rest.split(" ", 1)
            out.add((kind, rule, tuple(related.split(","))))
        else:
            out.add((kind, rest, ()))
    return out


CASES = sorted(p.stem for p in GOLDEN.glob("*.aarm"))


@pytest.mark.parametrize("name", CASES)
def test_golden_findings(name):
    path = GOLDEN / f"{name}.aarm"
    loaded = load_policy_text(path.read_text(), name=path.name)
    assert loaded.policy is not None, loaded.diagnostics
    report = analyze(loaded.policy)
    got = {(f.kind, f.rule, f.related) for f in report.findings}
    assert got == _expected(GOLDEN / f"{name}.expected")
    for f in report.findings:
        assert f.span is not None and f.span.file == path.name
        assert f.code.startswith("AARM-") and f.severity in ("error", "warning", "info")
        if f.witness is not None:
            # Witnesses are concrete, replayable §7 JSON.
            d = decide(loaded.policy, f.witness["action"], f.witness["session"])
            assert d.reason != "invalid-params"


def test_every_kind_has_a_golden_case():
    kinds = {line.split(" ", 1)[0] for p in GOLDEN.glob("*.expected") for line in p.read_text().splitlines() if line}
    from aarmc.analysis.report import KINDS
    assert kinds == set(KINDS)


def test_conflict_witness_replays_as_conflict():
    loaded = load_policy_text((GOLDEN / "conflict.aarm").read_text())
    for f in analyze(loaded.policy).of_kind("conflict"):
        d = decide(loaded.policy, f.witness["action"], f.witness["session"])
        assert (d.decision, d.reason) == ("defer", "conflict")
        assert {f.rule, *f.related} <= set(d.rules)


@pytest.mark.parametrize("spec", sorted(p.name for p in SPECS.iterdir() if p.is_dir()))
def test_specs_check_clean_and_asserts_are_proved(spec):
    loaded = load_policy([SPECS / spec])
    assert loaded.policy is not None, loaded.diagnostics
    report = analyze(loaded.policy)
    bad = [f for f in report.findings if f.severity != "info"]
    assert not bad, [(f.kind, f.rule, f.message) for f in bad]
    proved = {f.rule for f in report.of_kind("assert-proved")}
    assert proved == {a.name for a in loaded.policy.asserts}


def test_finding_json_and_diagnostic_shapes():
    from aarmc.diagnostics import render_human
    from aarmc.report import Report, item_json
    path = GOLDEN / "forbidden-reachable.aarm"
    text = path.read_text()
    loaded = load_policy_text(text, name="f.aarm")
    report = analyze(loaded.policy)
    (f,) = report.findings
    doc = f.to_json()
    assert {k: doc[k] for k in ("kind", "code", "severity", "rule", "related", "file")} == {
        "kind": "forbidden-reachable", "code": "AARM-E0606", "severity": "error", "rule": "bump",
        "related": ["huge"], "file": "f.aarm"}
    assert doc["line"] == text.splitlines().index(next(ln for ln in text.splitlines() if '"bump"' in ln)) + 1
    assert set(doc["witness"]) == {"action", "session"}
    shown = render_human(f.to_diagnostic(), {"f.aarm": text})
    assert "error[AARM-E0606]" in shown and '"action"' in shown and "related rules: `huge`" in shown
    item = f.to_item()
    assert item_json(item)["kind"] == "forbidden-reachable" and item_json(item)["witness"] == f.witness
    assert Report(items=[item]).reaches("error")
