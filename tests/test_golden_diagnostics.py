"""Golden diagnostics: one input per code, its exact rendered output beside it.

A case is `tests/golden/diagnostics/CODE-short-name.aarm` (one file) or
`CODE-short-name.d/` (a directory loaded as one policy set); its expected
output is `CODE-short-name.expected`: every diagnostic rendered with
`render_human`, separated by blank lines. Regenerate after an intended change
with `AARMC_BLESS=1 pytest tests/test_golden_diagnostics.py` and review the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from aarmc.diagnostics import render_human
from aarmc.semantics.load import load_policy

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "diagnostics"
DOC = ROOT / "docs" / "diagnostics.md"
CASE_NAME = re.compile(r"^(E\d{4})-[a-z0-9-]+$")


def _cases() -> list[tuple[str, str]]:
    """(case name, input name relative to GOLDEN)."""
    out = []
    for entry in sorted(GOLDEN.iterdir()):
        if entry.is_file() and entry.suffix == ".aarm":
            out.append((entry.stem, entry.name))
        elif entry.is_dir() and entry.suffix == ".d":
            out.append((entry.name[:-2], entry.name))
    return out


CASES = _cases()


def documented_codes() -> list[str]:
    """The codes in the table of docs/diagnostics.md (first column), in order."""
    codes = []
    for line in DOC.read_text("utf-8").splitlines():
        m = re.match(r"^\|\s*AARM-(E\d{4})\s*\|\s*(\w+)\s*\|", line)
        if m:
            codes.append(m.group(1))
    return codes


def render_case(input_name: str, monkeypatch) -> str:
    # Loaded by relative path, so file names in the output do not depend on the checkout.
    monkeypatch.chdir(GOLDEN)
    result = load_policy([input_name])
    return "\n\n".join(render_human(d, result.sources) for d in result.diagnostics) + "\n"


@pytest.mark.parametrize("name,input_name", CASES, ids=[c[0] for c in CASES])
def test_golden(name, input_name, monkeypatch):
    m = CASE_NAME.match(name)
    assert m, f"golden case `{name}` must be named CODE-short-name"
    code = m.group(1)
    actual = render_case(input_name, monkeypatch)
    expected_path = GOLDEN / f"{name}.expected"
    if os.environ.get("AARMC_BLESS") == "1":
        expected_path.write_text(actual, "utf-8")
    assert expected_path.exists(), f"no expected output for `{name}`; run with AARMC_BLESS=1"
    assert actual == expected_path.read_text("utf-8")
    # The case must exercise its own code, not only some other error.
    assert f"[AARM-{code}]" in actual


def test_every_documented_code_has_a_golden_case():
    codes = documented_codes()
    assert len(codes) > 50, "the code table of docs/diagnostics.md was not found"
    covered = {CASE_NAME.match(name).group(1) for name, _ in CASES if CASE_NAME.match(name)}
    missing = [c for c in codes if c not in covered]
    assert not missing, f"documented codes without a golden case: {missing}"


def test_every_golden_case_is_documented():
    codes = set(documented_codes())
    undocumented = sorted({name for name, _ in CASES if CASE_NAME.match(name).group(1) not in codes})
    assert not undocumented


def test_documented_codes_are_unique_and_sorted():
    codes = documented_codes()
    assert codes == sorted(set(codes))


def test_every_code_the_front_end_emits_is_documented():
    codes = set(documented_codes())
    sources = list((ROOT / "aarmc" / "semantics").glob("*.py")) + [ROOT / "aarmc" / "syntax" / "parser.py"]
    emitted = set()
    for path in sources:
        emitted.update(re.findall(r'"(?:AARM-)?(E0\d{3})"', path.read_text("utf-8")))
    assert emitted, "no codes found in the front end sources"
    assert sorted(emitted - codes) == []


def test_no_stale_expected_files():
    names = {name for name, _ in CASES}
    stale = [p.name for p in GOLDEN.glob("*.expected") if p.stem not in names]
    assert not stale


def test_code_titles_match_the_documentation():
    """aarmc/codes.py carries the same codes and titles as docs/diagnostics.md."""
    from aarmc.codes import CODES

    doc = (Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md").read_text("utf-8")
    documented = {}
    for line in doc.splitlines():
        if line.startswith("| AARM-"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            documented[cells[0]] = cells[2]
    registered = {k: v for k, v in CODES.items() if k != "AARM-E0999"}
    assert registered == documented


def test_finding_codes_match_docs_findings():
    from aarmc.codes import FINDINGS

    table = (ROOT / "docs" / "findings.md").read_text()
    rows = re.findall(r"^\| (?:<a id=\"[^\"]+\"></a>)?`(AARM-[EWI]06\d\d)` \| `([a-z-]+)` \|", table, re.M)
    assert len(rows) >= 10, "the finding table of docs/findings.md was not found"
    assert {code for code, _ in rows} == set(FINDINGS)
    # Each title starts with the kind the table gives the code.
    assert all(FINDINGS[code].startswith(kind + ":") for code, kind in rows), rows
