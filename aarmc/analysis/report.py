"""Findings: what `aarmc check` reports about a policy (LANGUAGE.md §6), and their JSON shape.

Codes are stable and documented in docs/findings.md. W = warning, E = error,
I = info; `unknown` (the solver gave up) is a warning whose exit code is 3.

>>> f = Finding(kind="dead-rule", rule="r", message="rule `r` is never true")
>>> f.code, f.severity
('AARM-W0601', 'warning')
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from aarmc.diagnostics import ERROR, INFO, WARNING, Diagnostic
from aarmc.source import Span

KINDS = {
    # kind: (code, severity)
    "dead-rule": ("AARM-W0601", WARNING),
    "never-true": ("AARM-W0602", WARNING),
    "shadowed-rule": ("AARM-W0603", WARNING),
    "redundant-rule": ("AARM-W0604", WARNING),
    "conflict": ("AARM-E0605", ERROR),
    "forbidden-reachable": ("AARM-E0606", ERROR),
    "context-gap": ("AARM-I0607", INFO),
    "assert-refuted": ("AARM-E0608", ERROR),
    "assert-proved": ("AARM-I0609", INFO),
    "unknown": ("AARM-W0610", WARNING),
}
INTERNAL_ERROR_CODE = "AARM-E0999"


@attrs.frozen(kw_only=True)
class Finding:
    """One result of the analysis.

    `rule`: the rule id (for asserts, the assert's name); `related`: the other
    rules involved (covering rules, the other side of a conflict, the forbid a
    modify runs into); `witness`: `{"action": ..., "session": ...}` in the JSON
    of LANGUAGE.md §7, already replayed on the reference interpreter, or None;
    `query`: for `unknown`, the question the solver could not answer; `tools`:
    the tools the finding is about; `notes`: extra lines (bounded lists, fields).
    """

    kind: str = attrs.field(validator=attrs.validators.in_(KINDS))
    rule: str | None = None
    related: tuple[str, ...] = ()
    span: Span | None = attrs.field(default=None, eq=False)
    message: str = ""
    witness: Any = attrs.field(default=None, eq=False)
    query: str | None = attrs.field(default=None, eq=False)
    tools: tuple[str, ...] = attrs.field(default=(), eq=False)
    notes: tuple[str, ...] = attrs.field(default=(), eq=False)
    help: str | None = attrs.field(default=None, eq=False)

    @property
    def code(self) -> str:
        return KINDS[self.kind][0]

    @property
    def severity(self) -> str:
        return KINDS[self.kind][1]

    def to_diagnostic(self) -> Diagnostic:
        """A Diagnostic for `render_human`; the witness goes in a note as pretty JSON."""
        notes = list(self.notes)
        if self.related:
            notes.append("related rules: " + ", ".join(f"`{r}`" for r in self.related))
        if self.query:
            notes.append(f"undecided query: {self.query}")
        if self.witness is not None:
            notes.append("witness (action and session, replayed on the reference interpreter):\n"
                          + dumps_witness(self.witness))
        return Diagnostic(code=self.code, severity=self.severity, message=self.message, span=self.span,
                          help=self.help, notes=tuple(notes))

    def to_item(self):
        """The CLI report's `aarmc.report.Finding` (diagnostic + kind, rule, related, witness)."""
        from aarmc.report import Finding as ReportFinding
        diag = self.to_diagnostic()
        notes = tuple(n for n in diag.notes if not n.startswith("witness (") and not n.startswith("related rules:"))
        return ReportFinding(kind=self.kind, diagnostic=attrs.evolve(diag, notes=notes), rule=self.rule,
                             related=self.related, witness=self.witness)

    def to_json(self) -> dict:
        s = self.span
        return {
            "kind": self.kind,
            "code": self.code,
            "severity": self.severity,
            "rule": self.rule,
            "related": list(self.related),
            "file": s.file if s else None,
            "line": s.line if s else None,
            "col": s.col if s else None,
            "message": self.message,
            "witness": self.witness,
            "query": self.query,
            "tools": list(self.tools),
            "notes": list(self.notes),
        }

    def sort_key(self) -> tuple:
        s = self.span
        return (s.file if s else "", s.line if s else 0, s.col if s else 0, self.code, self.rule or "",
                self.related)


def dumps_witness(witness: Any) -> str:
    from aarmc.report import dumps
    return dumps(witness, indent=2)


@attrs.frozen(kw_only=True)
class CheckTiming:
    check: str
    queries: int
    solver_s: float


@attrs.frozen(kw_only=True)
class AnalysisReport:
    """Every finding of `analyze`, in location order, plus per-check solver times."""

    findings: tuple[Finding, ...]
    timings: tuple[CheckTiming, ...] = ()
    notes: tuple[str, ...] = ()
    wall_s: float = 0.0

    def of_kind(self, kind: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.kind == kind)

    @property
    def inconclusive(self) -> bool:
        return any(f.kind == "unknown" for f in self.findings)

    def diagnostics(self) -> tuple[Diagnostic, ...]:
        return tuple(f.to_diagnostic() for f in self.findings)

    def to_json(self) -> dict:
        return {
            "findings": [f.to_json() for f in self.findings],
            "timings": [attrs.asdict(t) for t in self.timings],
            "notes": list(self.notes),
        }

    def dumps(self) -> str:
        from aarmc.report import dumps
        return dumps(self.to_json())


class WitnessError(Exception):
    """A witness did not reproduce its claim on the reference interpreter: an internal error.

    Never shown as a finding; the CLI reports it and exits with code 2.
    """

    def __init__(self, message: str, witness: Any = None, decision: Any = None) -> None:
        super().__init__(message)
        self.witness = witness
        self.decision = decision

    def diagnostic(self) -> Diagnostic:
        notes = []
        if self.witness is not None:
            notes.append("witness: " + json.dumps(self.witness, default=str))
        if self.decision is not None:
            notes.append("reference decision: " + json.dumps(self.decision, default=str))
        return Diagnostic(code=INTERNAL_ERROR_CODE, severity=ERROR,
                          message=f"internal error in the checker: {self}", notes=tuple(notes),
                          help="please report this; the policy's findings cannot be trusted until it is fixed")
