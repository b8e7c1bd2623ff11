"""`aarmc test`: YAML policy unit tests, their diffs, rule coverage and exit codes."""

from __future__ import annotations

import json
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from aarmc import testing
from aarmc.cli import cli
from aarmc.reference import SessionFileError, decide
from aarmc.semantics.load import load_policy

SHOP = """\
policy "shop" version "2"
default deny

labels public < internal
tags pii

tool shop.refund(order: str, amount: decimal) returns none effects write
tool shop.lookup(order: str) returns internal tagged pii
tool shop.search(q: str, limit: int = 10) returns public

forbid "no-negative" shop.refund when params.amount < 0
allow "lookups" shop.lookup
allow "search" shop.search
modify "cap-search" shop.search when params.limit > 50 set limit = 50
step_up "big-refund" shop.refund when params.amount > 100 approvers ["support-lead"] timeout 10m
allow "small-refund" shop.refund when params.amount <= 100
deny "refund-burst" priority 400 shop.refund when session.count(shop.refund within 1h) >= 2
    because "too many refunds in an hour"
"""

PASSING = """\
tests:
  - name: a small refund is allowed
    action: {tool: shop.refund, params: {order: A-1, amount: 20}}
    session: {now: 2026-11-26T10:00:00Z}
    expect: {decision: allow, rules: [small-refund], reason: rule}
  - name: a big refund needs the lead
    action: {tool: shop.refund, params: {order: A-1, amount: 100.0000000000000001}}
    session: {now: 2026-11-26T10:00:00Z}
    expect: {decision: step_up, rules: [big-refund], approvers: [support-lead], timeout_s: 600}
  - name: a negative refund is forbidden
    action: {tool: shop.refund, params: {order: A-1, amount: -5}}
    expect: {decision: deny, reason: forbidden, rules: [no-negative]}
  - name: searches are capped
    action: {tool: shop.search, params: {q: shoes, limit: 500}}
    expect: {decision: modify, rules: [cap-search], params: {limit: 50}}
  - name: the third refund within an hour is denied
    action: {tool: shop.refund, params: {order: A-3, amount: 1}}
    session:
      now: 2026-11-26T10:00:00Z
      history:
        - {tool: shop.refund, params: {order: A-1, amount: 1}, time: 2026-11-26T09:30:00Z}
        - {tool: shop.refund, params: {order: A-2, amount: 1}, time: 2026-11-26T09:59:59Z}
    expect: {decision: deny, rules: [refund-burst], reason: rule}
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def shop(tmp_path) -> Path:
    write(tmp_path, "shop/shop.aarm", SHOP)
    return tmp_path / "shop"


def run(paths, **kwargs) -> testing.Run:
    return testing.run([str(p) for p in paths], load=load_policy, decide=decide,
                       session_error=SessionFileError, **kwargs)


def invoke(*args: str):
    return CliRunner().invoke(cli, ["test", *args])


# ---- running and coverage -----------------------------------------------------------

def test_passing_tests_and_coverage(shop):
    write(shop, "shop.test.yaml", PASSING)
    result = run([shop])
    assert [r.status for r in result.results] == ["pass"] * 5
    (coverage,) = result.coverage
    assert coverage.name == "shop" and len(coverage.rules) == 7
    assert coverage.covered == ("no-negative", "cap-search", "big-refund", "small-refund", "refund-burst")
    assert coverage.uncovered == ("lookups", "search")
    assert result.exit_code() == 0


def test_yaml_numbers_are_exact_and_timestamps_stay_text(shop):
    path = write(shop, "shop.test.yaml", PASSING)
    tf = testing.read_test_file(path)
    big = tf.cases[1]
    assert big.action["params"]["amount"] == Decimal("100.0000000000000001")
    assert tf.cases[4].session["now"] == "2026-11-26T10:00:00Z"
    assert tf.policy == str(shop)
    assert [c.line for c in tf.cases] == [2, 6, 10, 13, 16]


def test_cli_human_output(shop):
    write(shop, "shop.test.yaml", PASSING)
    out = invoke(str(shop))
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == f"{shop}/shop.test.yaml"
    assert lines[1] == "  ok    a small refund is allowed"
    assert "coverage: policy `shop` v2: 5/7 rules (71.4%)" in lines
    assert "  not covered: lookups, search" in lines
    assert lines[-1] == "5 passed, 0 failed"


def test_threshold(shop):
    write(shop, "shop.test.yaml", PASSING)
    below = invoke(str(shop), "--threshold", "80")
    assert below.exit_code == 1
    assert "error: coverage of policy `shop` v2 is 71.4%, below the threshold of 80%" in below.output
    assert invoke(str(shop), "--threshold", "71").exit_code == 0
    assert invoke(str(shop), "--threshold", "120").exit_code == 2  # not a percentage


def test_failing_test_shows_the_mismatched_fields(shop):
    write(shop, "shop.test.yaml", """\
        tests:
          - name: wrong expectation
            action: {tool: shop.refund, params: {order: A-1, amount: 500}}
            session: {now: 2026-11-26T10:00:00Z}
            expect: {decision: allow, rules: [small-refund], approvers: [], timeout_s: 600}
          - name: right one
            action: {tool: shop.lookup, params: {order: A-1}}
            expect: {decision: allow}
        """)
    out = invoke(str(shop))
    assert out.exit_code == 1
    assert f"  FAIL  wrong expectation  ({shop}/shop.test.yaml:2)" in out.output
    assert '          decision: expected "allow", got "step_up"' in out.output
    assert '          rules: expected ["small-refund"], got ["big-refund"]' in out.output
    assert '          approvers: expected [], got ["support-lead"]' in out.output
    assert "timeout_s" not in out.output  # it matched
    assert "  ok    right one" in out.output
    assert out.output.endswith("1 passed, 1 failed\n")
    # Only passing tests count towards coverage.
    result = run([shop])
    assert result.coverage[0].covered == ("lookups",)


def test_params_compare_only_the_listed_keys_by_value(shop):
    write(shop, "shop.test.yaml", """\
        tests:
          - name: capped
            action: {tool: shop.search, params: {q: shoes, limit: 500}}
            expect: {decision: modify, params: {q: shoes, limit: 50}}
          - name: wrong cap
            action: {tool: shop.search, params: {q: shoes, limit: 500}}
            expect: {decision: modify, params: {limit: 49}}
        """)
    result = run([shop])
    assert [r.status for r in result.results] == ["pass", "fail"]
    (mismatch,) = result.results[1].mismatches
    assert (mismatch.field, mismatch.expected, mismatch.actual) == ("params", {"limit": 49}, {"limit": 50})


def test_compare_semantics():
    record = {"decision": "step_up", "rules": ["a", "b"], "reason": "rule", "approvers": ["x", "y"],
              "timeout_s": 60, "params": None}
    assert testing.compare({"decision": "step_up", "rules": ["b", "a"], "approvers": ["y", "x"]}, record) == ()
    assert [m.field for m in testing.compare({"decision": "step_up", "rules": ["a"]}, record)] == ["rules"]
    assert [m.field for m in testing.compare({"decision": "deny", "timeout_s": 61}, record)] == [
        "decision", "timeout_s"]
    assert [m.field for m in testing.compare({"decision": "step_up", "params": {"a": 1}}, record)] == ["params"]
    modify = {"decision": "modify", "rules": ["m"], "params": {"amount": "1.5", "n": 3}}
    assert testing.compare({"decision": "modify", "params": {"amount": Decimal("1.50"), "n": 3}}, modify) == ()
    assert testing.compare({"decision": "modify", "params": {"amount": Decimal("1.51")}}, modify) != ()


def test_policy_key_and_policy_override(shop, tmp_path):
    write(tmp_path, "tests/shop.test.yaml", "policy: ../shop/shop.aarm\n" + PASSING)
    assert invoke(str(tmp_path / "tests")).exit_code == 0
    # The override wins over the file's own `policy` (here: one that has no such tools).
    write(tmp_path, "other/other.aarm", 'policy "other" version "1"\ndefault allow\ntool x.y()\n')
    out = invoke(str(tmp_path / "tests"), "--policy", str(tmp_path / "other"))
    assert out.exit_code == 1
    assert "reason: expected \"rule\", got \"unknown-tool\"" in out.output


def test_json_format(shop):
    write(shop, "shop.test.yaml", PASSING)
    out = invoke(str(shop), "--format", "json", "--threshold", "50")
    assert out.exit_code == 0
    doc = json.loads(out.output)
    assert list(doc) == ["version", "tool", "tests", "coverage", "threshold", "problems",
                         "policy_diagnostics", "summary"]
    assert doc["version"] == 1 and doc["threshold"] == 50
    first = doc["tests"][0]
    assert list(first) == ["file", "line", "name", "policy", "status", "decision", "mismatches", "error"]
    assert first["decision"] == decide(load_policy([shop]).policy,
                                       {"tool": "shop.refund", "params": {"order": "A-1", "amount": 20}},
                                       {"now": "2026-11-26T10:00:00Z"}).to_json()
    assert doc["coverage"][0]["uncovered"] == ["lookups", "search"]
    assert doc["coverage"][0]["percent"] == 71.43
    assert doc["summary"] == {"passed": 5, "failed": 0, "errors": 0, "below_threshold": []}


# ---- malformed input: exit 2 with a located message, never a traceback -------------------

@pytest.mark.parametrize("text, message", [
    ("tests: [\n  {name: a\n", "invalid yaml: "),
    ("- 1\n", "a test file is a mapping with `tests`"),
    ("tests: []\n", "`tests` must be a non-empty list of cases"),
    ("tset: []\n", "unknown key `tset` in a test file"),
    ("tests:\n  - name: a\n    expect: {decision: allow}\n", "test `a` needs an `action`"),
    ("tests:\n  - name: a\n    action: {tool: shop.lookup}\n    expect: {decision: maybe}\n",
     "`expect.decision` must be one of allow, deny, modify, step_up, defer"),
    ("tests:\n  - name: a\n    action: {tool: shop.lookup}\n    expect: {decision: allow, rule: [x]}\n",
     "unknown key `rule` in `expect`"),
    ("tests:\n  - name: a\n    action: {tool: shop.lookup}\n    expect: {decision: allow}\n"
     "  - name: a\n    action: {tool: shop.lookup}\n    expect: {decision: allow}\n", "duplicate test name `a`"),
    ("tests:\n  - name: a\n    action: {tool: shop.lookup, params: {x: .inf}}\n    expect: {decision: allow}\n",
     "is not an exact number"),
    ("tests:\n  - name: a\n    action: {tool: shop.lookup, params: {1: x}}\n    expect: {decision: allow}\n",
     "not a json value"),
    ("tests:\n  - name: a\n    action: {tool: shop.lookup}\n    expect: {decision: allow, timeout_s: soon}\n",
     "`expect.timeout_s` must be an integer"),
])
def test_malformed_test_files(shop, text, message):
    write(shop, "bad.test.yaml", text)
    out = invoke(str(shop))
    assert out.exit_code == 2
    assert message in out.output
    assert f"error: {shop}/bad.test.yaml:" in out.output
    assert "Traceback" not in out.output


def test_yaml_error_is_located(shop):
    write(shop, "bad.test.yaml", "tests:\n  - name: a\n    action: {tool: x.y\n")
    with pytest.raises(testing.TestFileError) as err:
        testing.read_test_file(shop / "bad.test.yaml")
    assert err.value.where.startswith(f"{shop}/bad.test.yaml:4:")


def test_malformed_session_is_a_usage_error_naming_the_case(shop):
    write(shop, "shop.test.yaml", """\
        tests:
          - name: bad session
            action: {tool: shop.lookup, params: {order: A}}
            session: {histroy: []}
            expect: {decision: allow}
        """)
    out = invoke(str(shop))
    assert out.exit_code == 2
    assert f"error: {shop}/shop.test.yaml:2: test `bad session`: $: unknown key `histroy`" in out.output


def test_a_policy_that_does_not_load(tmp_path):
    write(tmp_path, "p/p.aarm", 'policy "p" version "1"\ndefault deny\nallow "r" a.b\n')
    write(tmp_path, "p/p.test.yaml", "tests:\n  - name: a\n    action: {tool: a.b}\n    expect: {decision: allow}\n")
    out = invoke(str(tmp_path / "p"))
    assert out.exit_code == 1
    assert "error[AARM-E0212]: unknown tool `a.b`" in out.output
    assert f"error: policy `{tmp_path}/p` did not load; its tests were not run" in out.output
    assert out.output.endswith("0 passed, 0 failed, 1 errors\n")


def test_missing_paths_and_empty_directories(tmp_path):
    out = invoke(str(tmp_path))
    assert out.exit_code == 2
    assert "no test files (`*.test.yaml`) found below this directory" in out.output
    out = invoke(str(tmp_path / "nope.test.yaml"))
    assert out.exit_code == 2 and "no such file or directory" in out.output


def test_a_test_file_named_twice_runs_once(shop):
    path = write(shop, "shop.test.yaml", PASSING)
    assert testing.discover([shop, path]) == [path]


def test_the_example_in_the_manual_passes(shop):
    manual = (Path(__file__).parents[1] / "docs" / "testing.md").read_text("utf-8")
    example = manual.split("```yaml\n", 1)[1].split("```", 1)[0]
    write(shop, "tests/refunds.test.yaml", example)
    result = run([shop / "tests"])
    assert [r.status for r in result.results] == ["pass", "pass", "pass"]
    assert [len(c.covered) for c in result.coverage] == [3]
    # And with the limit the manual's sample output assumes, the output is that sample.
    write(shop, "shop.aarm", SHOP.replace("amount > 100 ", "amount > 1000 ").replace("<= 100", "<= 1000"))
    out = invoke(str(shop / "tests"))
    sample = manual.split("would report:\n\n", 1)[1].split("\n\n**Rule coverage**", 1)[0]
    expected = "\n".join(line[4:] for line in sample.splitlines())
    assert out.output.replace(str(shop), "specs/shop") == expected + "\n"
