"""`aarmc test`: policy unit tests (YAML), run through the reference interpreter.

A test file (`*.test.yaml`) names a policy and lists cases; each case is an
action, an optional session (LANGUAGE.md §7) and the expected decision record.
Rule coverage is the share of a policy's rules that decided at least one
passing case. docs/testing.md documents the format.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs
import yaml

from aarm_runtime import values
from aarm_runtime.decision import DECISIONS, REASONS
from aarmc.diagnostics import Diagnostic, render_human

TEST_SUFFIXES = (".test.yaml", ".test.yml")
FILE_KEYS = ("policy", "tests")
CASE_KEYS = ("name", "action", "session", "expect")
EXPECT_KEYS = ("decision", "rules", "reason", "params", "approvers", "timeout_s", "fields")
# Compared as sets: their order carries no meaning a test author should have to know.
SET_FIELDS = ("rules", "approvers", "fields")
RESULT_VERSION = 1


class TestFileError(Exception):
    """A test file that cannot be run: unreadable, not YAML, or not in the test format."""

    __test__ = False  # not a pytest test class

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


# ---- YAML → the JSON value space ------------------------------------------------

class _Lines(dict):
    """A YAML mapping that remembers the line it starts on (for locating cases)."""

    line = 0


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except: non-integral numbers are exact decimals
    (never floats) and timestamps stay the strings the author wrote (session times
    are RFC 3339 text, LANGUAGE.md §7)."""


def _decimal(loader: _Loader, node: yaml.ScalarNode) -> Decimal:
    text = loader.construct_scalar(node).replace("_", "")
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise yaml.constructor.ConstructorError(None, None, f"`{text}` is not an exact number",
                                                node.start_mark)
    return value


def _timestamp(loader: _Loader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node)


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _Lines:
    out = _Lines()
    out.line = node.start_mark.line + 1
    yield out
    out.update(loader.construct_mapping(node))


_Loader.add_constructor("tag:yaml.org,2002:float", _decimal)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)
_Loader.add_constructor("tag:yaml.org,2002:map", _mapping)


def load_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        loc = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        problem = " ".join(filter(None, [err.context, err.problem]))
        raise TestFileError(loc, f"invalid yaml: {problem}") from None
    except yaml.YAMLError as err:
        raise TestFileError(where, f"invalid yaml: {err}") from None


def as_json(value: Any, where: str) -> Any:
    """A YAML value in the exact JSON value space of `aarm_runtime.values.load_json`."""
    try:
        return values.load_json(values.canonical_json(_plain(value)))
    except (TypeError, ValueError) as err:
        raise TestFileError(where, f"not a json value: {err}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# ---- the test format ------------------------------------------------------------

@attrs.frozen(kw_only=True)
class Case:
    name: str
    file: str
    line: int
    action: Any
    session: Any
    expect: Mapping[str, Any]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@attrs.frozen(kw_only=True)
class TestFile:
    __test__ = False

    path: str
    policy: str  # a file or directory, as given to load_policy
    cases: tuple[Case, ...]


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """The test files named or found below `paths`, sorted, without duplicates."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            below = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEST_SUFFIXES))
            if not below:
                raise TestFileError(str(path), "no test files (`*.test.yaml`) found below this directory")
            found.extend(below)
        elif path.is_file():
            found.append(path)
        else:
            raise TestFileError(str(path), "no such file or directory")
    return list(dict.fromkeys(found))


def _check_keys(obj: Mapping, allowed: tuple[str, ...], where: str, what: str) -> None:
    for key in obj:
        if key not in allowed:
            expected = ", ".join(f"`{k}`" for k in allowed)
            raise TestFileError(where, f"unknown key `{key}` in {what} (expected {expected})")


def read_test_file(path: Path, policy_override: str | Path | None = None) -> TestFile:
    where = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise TestFileError(where, f"cannot read file: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise TestFileError(where, f"not UTF-8 text (byte {err.start})") from None
    doc = load_yaml(text, where)
    if not isinstance(doc, Mapping):
        raise TestFileError(where, "a test file is a mapping with `tests` (and optionally `policy`)")
    _check_keys(doc, FILE_KEYS, where, "a test file")
    if policy_override is not None:
        policy = str(policy_override)
    elif "policy" in doc:
        if not isinstance(doc["policy"], str) or not doc["policy"]:
            raise TestFileError(where, "`policy` must be a path (relative to the test file)")
        policy = str(path.parent / doc["policy"])
    else:
        policy = str(path.parent)
    tests = doc.get("tests")
    if not isinstance(tests, list) or not tests:
        raise TestFileError(where, "`tests` must be a non-empty list of cases")
    cases = []
    names: set[str] = set()
    for i, raw in enumerate(tests):
        line = getattr(raw, "line", 0)
        at = f"{where}:{line}" if line else f"{where}: tests[{i}]"
        if not isinstance(raw, Mapping):
            raise TestFileError(at, "a test case is a mapping with `name`, `action` and `expect`")
        _check_keys(raw, CASE_KEYS, at, "a test case")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise TestFileError(at, "a test case needs a `name`")
        if name in names:
            raise TestFileError(at, f"duplicate test name `{name}`")
        names.add(name)
        if "action" not in raw:
            raise TestFileError(at, f"test `{name}` needs an `action`")
        expect = raw.get("expect")
        if not isinstance(expect, Mapping):
            raise TestFileError(at, f"test `{name}` needs an `expect` mapping with a `decision`")
        _check_keys(expect, EXPECT_KEYS, at, "`expect`")
        cases.append(Case(name=name, file=where, line=line, action=as_json(raw["action"], at),
                          session=as_json(raw["session"], at) if raw.get("session") is not None else None,
                          expect=_expectation(expect, at, name)))
    return TestFile(path=where, policy=policy, cases=tuple(cases))


def _expectation(expect: Mapping, at: str, name: str) -> dict[str, Any]:
    out = {}
    if expect.get("decision") not in DECISIONS:
        raise TestFileError(at, f"test `{name}`: `expect.decision` must be one of {', '.join(DECISIONS)}")
    out["decision"] = expect["decision"]
    if "reason" in expect:
        if expect["reason"] not in REASONS:
            raise TestFileError(at, f"test `{name}`: `expect.reason` must be one of {', '.join(REASONS)}")
        out["reason"] = expect["reason"]
    for key in SET_FIELDS:
        if key in expect:
            items = expect[key]
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise TestFileError(at, f"test `{name}`: `expect.{key}` must be a list of strings")
            out[key] = list(items)
    if "timeout_s" in expect:
        t = expect["timeout_s"]
        if t is not None and (isinstance(t, bool) or not isinstance(t, int)):
            raise TestFileError(at, f"test `{name}`: `expect.timeout_s` must be an integer")
        out["timeout_s"] = t
    if "params" in expect:
        if not isinstance(expect["params"], Mapping):
            raise TestFileError(at, f"test `{name}`: `expect.params` must be a mapping")
        out["params"] = as_json(expect["params"], at)
    return out


# ---- running ----------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class Mismatch:
    field: str
    expected: Any
    actual: Any


@attrs.frozen(kw_only=True)
class CaseResult:
    case: Case
    policy: str
    status: str  # "pass" | "fail" | "error"
    decision: Mapping[str, Any] | None = None
    mismatches: tuple[Mismatch, ...] = ()
    error: str | None = None


@attrs.frozen(kw_only=True)
class Coverage:
    policy: str  # the path the policy was loaded from
    name: str
    version: str
    rules: tuple[str, ...]  # every rule of the policy, source order
    covered: tuple[str, ...]

    @property
    def uncovered(self) -> tuple[str, ...]:
        return tuple(r for r in self.rules if r not in self.covered)

    @property
    def percent(self) -> float:
        return 100.0 if not self.rules else 100.0 * len(self.covered) / len(self.rules)

    def to_json(self) -> dict:
        return {"policy": self.policy, "name": self.name, "version": self.version,
                "rules": len(self.rules), "covered": list(self.covered),
                "uncovered": list(self.uncovered), "percent": round(self.percent, 2)}


@attrs.frozen(kw_only=True)
class PolicyFailure:
    """A policy that did not load: its diagnostics, rendered against its sources."""

    policy: str
    diagnostics: tuple[Diagnostic, ...]
    sources: Mapping[str, str] = attrs.field(eq=False)


@attrs.frozen(kw_only=True)
class Run:
    results: tuple[CaseResult, ...] = ()
    coverage: tuple[Coverage, ...] = ()
    policy_failures: tuple[PolicyFailure, ...] = ()
    problems: tuple[TestFileError, ...] = ()
    threshold: float | None = None

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def below_threshold(self) -> tuple[Coverage, ...]:
        if self.threshold is None:
            return ()
        return tuple(c for c in self.coverage if c.percent + 1e-9 < self.threshold)

    @property
    def input_error(self) -> bool:
        """Malformed test files, actions or sessions, or unreadable policies (exit 2)."""
        return bool(self.problems) or any(
            d.code.startswith("AARM-E09") for f in self.policy_failures for d in f.diagnostics)

    def exit_code(self) -> int:
        if self.input_error:
            return 2
        if self.count("fail") or self.count("error") or self.policy_failures or self.below_threshold:
            return 1
        return 0


def _norm(value: Any) -> Any:
    """A form in which expected and actual values compare as the decision record means them:
    numbers by value (a decimal param is written as its canonical string)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, Decimal)):
        return values.canonical_decimal(Decimal(value))
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", value):
        return values.canonical_decimal(Decimal(value))
    if isinstance(value, Mapping):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


def compare(expect: Mapping[str, Any], actual: Mapping[str, Any]) -> tuple[Mismatch, ...]:
    """The fields of the expectation that the decision record does not match.

    `rules`, `approvers` and `fields` compare as sets; `params` compares only the
    keys the test lists (the record carries every param, defaults included).

    >>> compare({"decision": "deny", "rules": ["b", "a"]}, {"decision": "deny", "rules": ["a", "b"]})
    ()
    >>> compare({"decision": "allow"}, {"decision": "deny", "rules": []})[0].field
    'decision'
    """
    out = []
    for key in EXPECT_KEYS:
        if key not in expect:
            continue
        want = expect[key]
        got = actual.get(key, [] if key in SET_FIELDS else None)
        if key in SET_FIELDS:
            same = sorted(want) == sorted(got or [])
        elif key == "params":
            got_params = got if isinstance(got, Mapping) else {}
            same = isinstance(got, Mapping) and all(
                k in got_params and _norm(v) == _norm(got_params[k]) for k, v in want.items())
            if isinstance(got, Mapping):
                got = {k: got[k] for k in want if k in got}
        else:
            same = want == got
        if not same:
            out.append(Mismatch(field=key, expected=want, actual=got))
    return tuple(out)


LoadFn = Callable[[Sequence[str]], Any]
DecideFn = Callable[..., Any]


def run(paths: Sequence[str | Path], *, load: LoadFn, decide: DecideFn,
        session_error: type[Exception] = ValueError,
        policy_override: str | Path | None = None, threshold: float | None = None) -> Run:
    """Read every test file, load each policy once, decide every case.

    `load(paths)` is `aarmc.semantics.load.load_policy`; `decide(policy, action,
    session)` is the reference interpreter, raising `session_error` for a
    malformed action or session.
    """
    problems: list[TestFileError] = []
    try:
        files = discover(paths)
    except TestFileError as err:
        return Run(problems=(err,), threshold=threshold)
    test_files = []
    for path in files:
        try:
            test_files.append(read_test_file(path, policy_override))
        except TestFileError as err:
            problems.append(err)
    loaded: dict[str, Any] = {}
    failures: list[PolicyFailure] = []
    results: list[CaseResult] = []
    for tf in test_files:
        if tf.policy not in loaded:
            result = load([tf.policy])
            loaded[tf.policy] = result
            if result.policy is None:
                failures.append(PolicyFailure(policy=tf.policy, diagnostics=tuple(result.diagnostics),
                                              sources=dict(result.sources)))
        policy = loaded[tf.policy].policy
        for case in tf.cases:
            if policy is None:
                results.append(CaseResult(case=case, policy=tf.policy, status="error",
                                          error=f"policy `{tf.policy}` did not load"))
                continue
            try:
                record = decide(policy, case.action, case.session).to_json()
            except session_error as err:
                problems.append(TestFileError(case.where, f"test `{case.name}`: {err}"))
                results.append(CaseResult(case=case, policy=tf.policy, status="error", error=str(err)))
                continue
            mismatches = compare(case.expect, record)
            results.append(CaseResult(case=case, policy=tf.policy, status="fail" if mismatches else "pass",
                                      decision=record, mismatches=mismatches))
    coverage = []
    for source, result in loaded.items():
        if result.policy is None:
            continue
        rules = tuple(r.id for r in result.policy.rules)
        deciding = {rule for r in results if r.policy == source and r.status == "pass"
                    for rule in r.decision.get("rules", ())}
        coverage.append(Coverage(policy=source, name=result.policy.name, version=result.policy.version,
                                 rules=rules, covered=tuple(r for r in rules if r in deciding)))
    return Run(results=tuple(results), coverage=tuple(coverage), policy_failures=tuple(failures),
               problems=tuple(problems), threshold=threshold)


# ---- reporting --------------------------------------------------------------------

def _shown(value: Any) -> str:
    from aarmc.report import dumps

    return dumps(value, indent=None)


def _policy_label(c: Coverage) -> str:
    version = f"v{c.version}" if c.version[:1].isdigit() else c.version
    return f"policy `{c.name}` {version}"


def format_human(run: Run) -> str:
    lines: list[str] = []
    for failure in run.policy_failures:
        for d in failure.diagnostics:
            lines.append(render_human(d, dict(failure.sources)))
        lines.append(f"error: policy `{failure.policy}` did not load; its tests were not run")
        lines.append("")
    for problem in run.problems:
        lines.append(f"error: {problem}")
    if run.problems:
        lines.append("")
    current = None
    for r in run.results:
        if r.case.file != current:
            current = r.case.file
            lines.append(current)
        if r.status == "pass":
            lines.append(f"  ok    {r.case.name}")
            continue
        lines.append(f"  {r.status.upper():<5} {r.case.name}  ({r.case.where})")
        if r.error:
            lines.append(f"          {r.error}")
        for m in r.mismatches:
            lines.append(f"          {m.field}: expected {_shown(m.expected)}, got {_shown(m.actual)}")
        if r.mismatches and r.decision is not None and r.decision.get("message"):
            lines.append(f"          message: {r.decision['message']}")
    if run.results:
        lines.append("")
    for c in run.coverage:
        lines.append(f"coverage: {_policy_label(c)}: {len(c.covered)}/{len(c.rules)} rules "
                     f"({c.percent:.1f}%)")
        if c.uncovered:
            lines.append("  not covered: " + ", ".join(c.uncovered))
    for c in run.below_threshold:
        lines.append(f"error: coverage of {_policy_label(c)} is {c.percent:.1f}%, "
                     f"below the threshold of {run.threshold:g}%")
    passed, failed, errors = run.count("pass"), run.count("fail"), run.count("error")
    tail = f"{passed} passed, {failed} failed"
    if errors:
        tail += f", {errors} errors"
    lines.append(tail)
    return "\n".join(lines) + "\n"


def run_json(run: Run) -> dict:
    from aarmc.report import item_json

    return {
        "version": RESULT_VERSION,
        "tool": "aarmc",
        "tests": [{
            "file": r.case.file,
            "line": r.case.line,
            "name": r.case.name,
            "policy": r.policy,
            "status": r.status,
            "decision": r.decision,
            "mismatches": [{"field": m.field, "expected": m.expected, "actual": m.actual}
                           for m in r.mismatches],
            "error": r.error,
        } for r in run.results],
        "coverage": [c.to_json() for c in run.coverage],
        "threshold": run.threshold,
        "problems": [{"where": p.where, "message": p.message} for p in run.problems],
        "policy_diagnostics": [item_json(d) for f in run.policy_failures for d in f.diagnostics],
        "summary": {"passed": run.count("pass"), "failed": run.count("fail"), "errors": run.count("error"),
                    "below_threshold": [c.policy for c in run.below_threshold]},
    }

