"""Diagnostics: one record for every error, warning and note that aarmc reports.

Every stage collects diagnostics, sorts them by location and reports them once.
Codes are stable and documented in docs/diagnostics.md (titles in aarmc/codes.py):
E = error, W = warning, I = info. E01xx syntax, E02xx names and structure,
E03xx types, E04xx rules, E05xx asserts, E09xx input files.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import attrs

from aarmc.source import Span


ERROR = "error"
WARNING = "warning"
INFO = "info"
SEVERITY_RANK = {INFO: 0, WARNING: 1, ERROR: 2}


@attrs.frozen(kw_only=True)
class Diagnostic:
    """A located message.

    >>> d = Diagnostic(code="AARM-E0101", severity="error", message="unexpected `)`")
    >>> d.headline()
    'error[AARM-E0101]: unexpected `)`'
    """

    code: str
    severity: str
    message: str
    span: Span | None = None
    help: str | None = None
    notes: tuple[str, ...] = ()

    def headline(self) -> str:
        return f"{self.severity}[{self.code}]: {self.message}"

    def sort_key(self):
        if self.span is None:
            return ("", 0, 0, self.code, self.message)
        return (self.span.file, self.span.line, self.span.col, self.code, self.message)


class PolicyError(Exception):
    """Raised by a stage that cannot continue; carries the diagnostics so far."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = tuple(sorted(diagnostics, key=Diagnostic.sort_key))
        super().__init__("; ".join(d.headline() for d in self.diagnostics))


def sort_diagnostics(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Sorted by location, duplicates (same code, span and message) removed."""
    seen = set()
    out = []
    for d in sorted(diags, key=Diagnostic.sort_key):
        key = (d.sort_key(), d.help)
        if key in seen:
            continue
        seen.add(key)
        out.append(d)
    return out


def has_errors(diags: Iterable[Diagnostic]) -> bool:
    return any(d.severity == ERROR for d in diags)


def render_human(diag: Diagnostic, sources: dict[str, str]) -> str:
    """`file:line:col: severity[CODE]: message`, the source line, a caret, help.

    >>> s = Span(file="p.aarm", line=1, col=8, end_line=1, end_col=11)
    >>> d = Diagnostic(code="AARM-E0101", severity="error", message="unexpected `foo`", span=s, help="remove it")
    >>> print(render_human(d, {"p.aarm": "policy foo"}))
    p.aarm:1:8: error[AARM-E0101]: unexpected `foo`
      |
    1 | policy foo
      |        ^^^
      = help: remove it
    """
    lines = []
    if diag.span is None:
        lines.append(diag.headline())
    else:
        s = diag.span
        lines.append(f"{s.file}:{s.line}:{s.col}: {diag.headline()}")
        text = sources.get(s.file)
        if text is not None:
            src_lines = text.split("\n")  # Lark counts lines at \n only
            if 1 <= s.line <= len(src_lines):
                src = src_lines[s.line - 1].expandtabs(1)
                gutter = str(s.line)
                pad = " " * len(gutter)
                width = (s.end_col - s.col) if s.end_line == s.line and s.end_col > s.col else 1
                width = max(1, min(width, max(1, len(src) - s.col + 1)))
                lines.append(f"{pad} |")
                lines.append(f"{gutter} | {src}")
                lines.append(f"{pad} | {' ' * (s.col - 1)}{'^' * width}")
    pad = " " * (len(str(diag.span.line)) if diag.span else 0)
    for note in diag.notes:
        lines.append(f"{pad} = note: {note}")
    if diag.help:
        lines.append(f"{pad} = help: {diag.help}")
    return "\n".join(lines)
