"""Rendering a check report: human text, versioned JSON, SARIF 2.1.0.

The three formats carry the same content. A report holds diagnostics from the
front end and, once the analysis exists, its findings (LANGUAGE.md §6): a
`Finding` is a diagnostic plus its kind, rule, related rules and witness, so
every renderer handles both with one code path.
"""

from __future__ import annotations

import json
import urllib.parse
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import attrs

from aarmc import __version__
from aarmc.codes import CODES, FINDINGS
from aarmc.diagnostics import ERROR, INFO, SEVERITY_RANK, WARNING, Diagnostic, render_human

REPORT_VERSION = 1
# Rule help is carried as text (docs/diagnostics.md in the distribution), not as a
# URI: the project publishes no web home, and a SARIF helpUri must be absolute.
DIAGNOSTICS_DOC = "docs/diagnostics.md"
FINDINGS_DOC = "docs/findings.md"
SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SARIF_SRCROOT = "SRCROOT"
SARIF_LEVEL = {ERROR: "error", WARNING: "warning", INFO: "note"}
FAIL_LEVELS = (ERROR, WARNING, INFO)

FAMILY_TITLES = {
    "E01": "syntax error",
    "E02": "name or structure error",
    "E03": "type error",
    "E04": "rule error",
    "E05": "assert error",
    "E09": "input file error",
}


def code_title(code: str) -> str:
    """A one-line description of a diagnostic code.

    >>> code_title("AARM-E0102"), code_title("AARM-E0398"), code_title("AARM-W9999")
    ('unexpected end of input', 'type error', 'warning AARM-W9999')
    >>> code_title("AARM-W0601")
    'dead-rule: the condition is never true and never unknown'
    """
    if code in CODES:
        return CODES[code]
    if code in FINDINGS:
        return FINDINGS[code]
    family = code.removeprefix("AARM-")[:3]
    if family in FAMILY_TITLES:
        return FAMILY_TITLES[family]
    kind = {"E": "error", "W": "warning", "I": "note"}.get(family[:1], "diagnostic")
    return f"{kind} {code}"


def help_text(code: str) -> str:
    """Where a code is documented."""
    doc = FINDINGS_DOC if code in FINDINGS else DIAGNOSTICS_DOC
    return f"{code}: {code_title(code)}. Meaning, an example and the fix: {doc}."


@attrs.frozen(kw_only=True)
class Finding:
    """An analysis result: a located diagnostic plus what the checker knows about it.

    `witness` is a JSON value (`{"action": ..., "session": ...}`, LANGUAGE.md §7).
    """

    kind: str
    diagnostic: Diagnostic
    rule: str | None = None
    related: tuple[str, ...] = ()
    witness: Any = None


Item = Diagnostic | Finding


def diagnostic_of(item: Item) -> Diagnostic:
    return item.diagnostic if isinstance(item, Finding) else item


@attrs.frozen(kw_only=True)
class PolicySummary:
    """What the summary line says about a loaded policy set."""

    name: str
    version: str
    tools: int
    rules: int
    asserts: int

    @classmethod
    def of(cls, policy: Any) -> "PolicySummary":
        """From an `ir.Policy` (typed loosely so that this module needs no IR import)."""
        return cls(name=policy.name, version=policy.version, tools=len(policy.tools),
                   rules=len(policy.rules), asserts=len(policy.asserts))

    def headline(self) -> str:
        """The policy's name, version and size.

        >>> PolicySummary(name="m", version="4", tools=1, rules=2, asserts=0).headline()
        'policy `m` v4: 1 tool, 2 rules, 0 asserts'
        """
        version = f"v{self.version}" if self.version[:1].isdigit() else self.version
        return (f"policy `{self.name}` {version}: {_plural(self.tools, 'tool')}, "
                f"{_plural(self.rules, 'rule')}, {_plural(self.asserts, 'assert')}")

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "tools": self.tools,
                "rules": self.rules, "asserts": self.asserts}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@attrs.frozen(kw_only=True)
class Report:
    """Everything `aarmc check` reports, in location order."""

    items: tuple[Item, ...] = attrs.field(
        converter=lambda items: tuple(sorted(items, key=lambda i: diagnostic_of(i).sort_key())))
    sources: Mapping[str, str] = attrs.field(factory=dict, eq=False)
    policy: PolicySummary | None = None

    @property
    def diagnostics(self) -> tuple[Diagnostic, ...]:
        return tuple(diagnostic_of(i) for i in self.items)

    def count(self, severity: str) -> int:
        return sum(1 for d in self.diagnostics if d.severity == severity)

    def reaches(self, fail_level: str) -> bool:
        """Whether anything is at or above `fail_level` (exit code 1)."""
        floor = SEVERITY_RANK[fail_level]
        return any(SEVERITY_RANK.get(d.severity, SEVERITY_RANK[ERROR]) >= floor for d in self.diagnostics)

    def summary_line(self) -> str:
        """`policy `p` v1: 3 tools, 2 rules, 1 assert — no errors`, or just the counts.

        >>> Report(items=[]).summary_line()
        'no errors'
        """
        errors, warnings, infos = self.count(ERROR), self.count(WARNING), self.count(INFO)
        parts = [_plural(errors, "error") if errors else "no errors"]
        if warnings:
            parts.append(_plural(warnings, "warning"))
        if infos:
            parts.append(_plural(infos, "note"))
        counts = ", ".join(parts)
        return f"{self.policy.headline()} — {counts}" if self.policy else counts

    def summary(self) -> dict:
        return {"errors": self.count(ERROR), "warnings": self.count(WARNING), "infos": self.count(INFO),
                "files": len(self.sources)}


# ---- human ----------------------------------------------------------------------

def render_item(item: Item, sources: Mapping[str, str]) -> str:
    """One diagnostic (or finding, with its rule, related rules and witness as notes)."""
    diag = diagnostic_of(item)
    if isinstance(item, Finding):
        notes = list(diag.notes)
        if item.related:
            notes.append("related rules: " + ", ".join(f"`{r}`" for r in item.related))
        if item.witness is not None:
            notes.append("witness: " + dumps(item.witness, indent=None))
        diag = attrs.evolve(diag, notes=tuple(notes))
    return render_human(diag, dict(sources))


def format_human(report: Report, show_level: str = INFO) -> str:
    """Each diagnostic at or above `show_level`, a blank line between them, then
    the summary line (which counts everything)."""
    floor = SEVERITY_RANK[show_level]
    blocks = [render_item(i, report.sources) for i in report.items
              if SEVERITY_RANK[diagnostic_of(i).severity] >= floor]
    blocks.append(report.summary_line())
    return "\n\n".join(blocks) + "\n"


# ---- JSON -----------------------------------------------------------------------

def item_json(item: Item) -> dict:
    """`{code, severity, message, file, line, col, end_line, end_col, help, notes}`, and for a
    finding also `kind`, `rule`, `related`, `witness`."""
    d = diagnostic_of(item)
    s = d.span
    out: dict[str, Any] = {
        "code": d.code,
        "severity": d.severity,
        "message": d.message,
        "file": s.file if s else None,
        "line": s.line if s else None,
        "col": s.col if s else None,
        "end_line": s.end_line if s else None,
        "end_col": s.end_col if s else None,
        "help": d.help,
        "notes": list(d.notes),
    }
    if isinstance(item, Finding):
        out.update(kind=item.kind, rule=item.rule, related=list(item.related), witness=item.witness)
    return out


def report_json(report: Report) -> dict:
    """The versioned JSON report (`version` changes only on an incompatible change)."""
    return {
        "version": REPORT_VERSION,
        "tool": "aarmc",
        "tool_version": __version__,
        "policy": report.policy.to_json() if report.policy else None,
        "diagnostics": [item_json(i) for i in report.items],
        "summary": report.summary(),
    }


def dumps(value: Any, indent: int | None = 2) -> str:
    """JSON text; decimals are written exactly (as numbers), never through float.

    >>> dumps({"a": Decimal("1.50"), "b": [1, "x"]}, indent=None)
    '{"a": 1.50, "b": [1, "x"]}'
    """
    return "".join(_json_chunks(value, indent, 0))


def _json_chunks(value: Any, indent: int | None, level: int) -> Iterable[str]:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot write `{value}` as json")
        yield str(value)
    elif isinstance(value, Mapping):
        yield from _container("{", "}", [(json.dumps(str(k), ensure_ascii=False) + ": ", v)
                                         for k, v in value.items()], indent, level)
    elif isinstance(value, (list, tuple)):
        yield from _container("[", "]", [("", v) for v in value], indent, level)
    elif isinstance(value, (str, int, float, bool)) or value is None:
        yield json.dumps(value, ensure_ascii=False)
    else:
        # Email, Url, Path and other canonical values print as their text.
        yield json.dumps(str(value), ensure_ascii=False)


def _container(open_: str, close: str, entries: Sequence[tuple[str, Any]], indent: int | None,
               level: int) -> Iterable[str]:
    if not entries:
        yield open_ + close
        return
    yield open_
    for i, (prefix, v) in enumerate(entries):
        if indent is not None:
            yield "\n" + " " * (indent * (level + 1))
        elif i:
            yield " "
        yield prefix
        yield from _json_chunks(v, indent, level + 1)
        if i < len(entries) - 1:
            yield ","
    if indent is not None:
        yield "\n" + " " * (indent * level)
    yield close


# ---- SARIF ----------------------------------------------------------------------

def _artifact_location(file: str, root: Path) -> dict:
    path = Path(file)
    if not path.is_absolute():
        return {"uri": urllib.parse.quote(path.as_posix()), "uriBaseId": SARIF_SRCROOT}
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return {"uri": path.resolve().as_uri()}
    return {"uri": urllib.parse.quote(rel.as_posix()), "uriBaseId": SARIF_SRCROOT}


def _region(d: Diagnostic) -> dict | None:
    s = d.span
    if s is None or s.line < 1 or s.col < 1:
        return None
    region = {"startLine": s.line, "startColumn": s.col}
    end_line = max(s.end_line, s.line)
    end_col = s.end_col if end_line > s.line else max(s.end_col, s.col)
    region.update(endLine=end_line, endColumn=max(end_col, 1))
    return region


def _sarif_result(item: Item, rule_index: int, root: Path) -> dict:
    d = diagnostic_of(item)
    text = d.message
    if d.help:
        text += f"\nhelp: {d.help}"
    result: dict[str, Any] = {
        "ruleId": d.code,
        "ruleIndex": rule_index,
        "level": SARIF_LEVEL.get(d.severity, "error"),
        "message": {"text": text},
    }
    if d.span is not None:
        physical: dict[str, Any] = {"artifactLocation": _artifact_location(d.span.file, root)}
        region = _region(d)
        if region:
            physical["region"] = region
        result["locations"] = [{"physicalLocation": physical}]
    properties: dict[str, Any] = {}
    if d.help:
        properties["help"] = d.help
    if d.notes:
        properties["notes"] = list(d.notes)
    if isinstance(item, Finding):
        properties.update(kind=item.kind, related=list(item.related))
        if item.rule is not None:
            properties["rule"] = item.rule
        if item.witness is not None:
            # SARIF property bags are plain JSON: decimals travel as their exact text.
            properties["witness"] = json.loads(dumps(item.witness, indent=None),
                                               parse_float=str)
    if properties:
        result["properties"] = properties
    return result


def report_sarif(report: Report, root: Path | None = None) -> dict:
    """A SARIF 2.1.0 log with one run; `root` is the base of relative artifact URIs (the cwd)."""
    root = Path.cwd() if root is None else root
    codes: list[str] = []
    for d in report.diagnostics:
        if d.code not in codes:
            codes.append(d.code)
    index = {code: i for i, code in enumerate(codes)}
    severities = {d.code: d.severity for d in report.diagnostics}
    rules = [{
        "id": code,
        "shortDescription": {"text": code_title(code)},
        "help": {"text": help_text(code)},
        "defaultConfiguration": {"level": SARIF_LEVEL.get(severities[code], "error")},
    } for code in codes]
    run: dict[str, Any] = {
        "tool": {"driver": {
            "name": "aarmc",
            "version": __version__,
            "rules": rules,
        }},
        "originalUriBaseIds": {SARIF_SRCROOT: {"uri": root.resolve().as_uri().rstrip("/") + "/"}},
        # Span columns count code points (Python string indices), not UTF-16 units.
        "columnKind": "unicodeCodePoints",
        "results": [_sarif_result(i, index[diagnostic_of(i).code], root) for i in report.items],
    }
    if report.policy is not None:
        run["properties"] = {"policy": report.policy.to_json()}
    return {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}
