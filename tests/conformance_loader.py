"""The YAML conformance corpus (`tests/conformance/*.yaml`) as plain data.

One corpus, several engines: the reference interpreter, the compiled decision
table and the runtime all run the same cases through `run_case`, each with its
own `decide_fn(policy_text, action, session) -> Decision | dict`.

A corpus file is::

    policy: |             # the policy source, one file
      policy "p" version "1"
      ...
    cases:
      - name: short-description        # unique within the file
        action: {tool: a.b, params: {...}}
        session: {...}                 # optional, LANGUAGE.md §7
        expect:
          decision: deny               # required
          rules: [r1]                  # required (source order)
          reason: rule                 # required
          params: {...}                # optional keys, checked when given:
          approvers: [...]             #   params, approvers, timeout_s,
          timeout_s: 300               #   fields, message, tool, wrapper
          fields: [...]

YAML is read so that the data equals what `aarm_runtime.values.load_json`
gives for the same JSON: non-integral numbers are `Decimal` (never float) and
date-times stay strings.
"""

from __future__ import annotations

import dataclasses
import decimal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from aarm_runtime.values import canonical_decimal

CORPUS_DIR = Path(__file__).parent / "conformance"
REQUIRED_EXPECT = ("decision", "rules", "reason")
OPTIONAL_EXPECT = ("params", "approvers", "timeout_s", "fields", "message", "tool", "wrapper")
CASE_KEYS = ("name", "action", "session", "expect")


class CorpusError(ValueError):
    """A malformed corpus file (a bug in the corpus, not in an engine)."""


class _ExactLoader(yaml.SafeLoader):
    """SafeLoader with exact decimals and without YAML's implicit timestamps."""


def _decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> decimal.Decimal:
    text = loader.construct_scalar(node).replace("_", "")
    try:
        value = decimal.Decimal(text)
    except decimal.InvalidOperation:
        raise CorpusError(f"`{text}` is not an exact number (NaN and infinities are not JSON)") from None
    if not value.is_finite():
        raise CorpusError(f"`{text}` is not an exact number (NaN and infinities are not JSON)")
    return value


_ExactLoader.add_constructor("tag:yaml.org,2002:float", _decimal)
# Date-times must reach the engine as the RFC 3339 strings a session file holds.
_ExactLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclasses.dataclass(frozen=True)
class Case:
    file: str
    name: str
    policy: str
    action: Any
    session: Any
    expect: Mapping[str, Any]

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"


def load_file(path: Path) -> list[Case]:
    with path.open(encoding="utf-8") as f:
        doc = yaml.load(f, Loader=_ExactLoader)  # noqa: S506 - a SafeLoader subclass
    where = path.name
    if not isinstance(doc, dict) or set(doc) != {"policy", "cases"}:
        raise CorpusError(f"{where}: expected exactly the keys `policy` and `cases`")
    if not isinstance(doc["policy"], str) or not isinstance(doc["cases"], list):
        raise CorpusError(f"{where}: `policy` must be text and `cases` a list")
    cases, names = [], set()
    for i, raw in enumerate(doc["cases"]):
        if not isinstance(raw, dict):
            raise CorpusError(f"{where}: case {i} is not a mapping")
        unknown = set(raw) - set(CASE_KEYS)
        if unknown or not {"name", "action", "expect"} <= set(raw):
            raise CorpusError(f"{where}: case {i} needs `name`, `action`, `expect` (and may have `session`);"
                              f" unknown keys: {sorted(unknown)}")
        name = raw["name"]
        if name in names:
            raise CorpusError(f"{where}: duplicate case name `{name}`")
        names.add(name)
        expect = raw["expect"]
        if not isinstance(expect, dict) or not set(REQUIRED_EXPECT) <= set(expect):
            raise CorpusError(f"{where}::{name}: `expect` needs {', '.join(REQUIRED_EXPECT)}")
        extra = set(expect) - set(REQUIRED_EXPECT) - set(OPTIONAL_EXPECT)
        if extra:
            raise CorpusError(f"{where}::{name}: unknown `expect` keys {sorted(extra)}")
        cases.append(Case(file=where, name=name, policy=doc["policy"], action=raw["action"],
                          session=raw.get("session"), expect=expect))
    return cases


def load_corpus(directory: Path = CORPUS_DIR) -> list[Case]:
    """Every case of every `*.yaml` file, files sorted by name, cases in file order."""
    cases: list[Case] = []
    for path in sorted(directory.glob("*.yaml")):
        cases.extend(load_file(path))
    return cases


def _as_json(decision: Any) -> dict[str, Any]:
    return decision if isinstance(decision, Mapping) else decision.to_json()


def _normalise(value: Any) -> Any:
    """Decimals as canonical strings (as records carry them), tuples as lists."""
    if isinstance(value, decimal.Decimal):
        return canonical_decimal(value)
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    return value


DecideFn = Callable[[str, Any, Any], Any]


def run_case(case: Case, decide_fn: DecideFn) -> list[str]:
    """Run one case; the mismatches as readable lines (empty = pass)."""
    try:
        got = _as_json(decide_fn(case.policy, case.action, case.session))
    except Exception as err:  # noqa: BLE001 - report, don't abort the corpus
        return [f"{case.id}: raised {type(err).__name__}: {err}"]
    problems = []
    for key, want in case.expect.items():
        have = got.get(key, [] if key in ("rules", "fields", "approvers") else None)
        if _normalise(have) != _normalise(want):
            problems.append(f"{case.id}: `{key}` is {have!r}, expected {want!r}")
    if problems:
        problems.append(f"{case.id}: full record {got!r}")
    return problems
