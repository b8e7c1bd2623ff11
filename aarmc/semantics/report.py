"""A diagnostics collector shared by the semantic passes.

Passes never raise on a user error: they add a diagnostic and carry on, so one
run reports every problem. The codes are documented in docs/diagnostics.md.
"""

from __future__ import annotations

from typing import Iterable

from aarmc.diagnostics import ERROR, WARNING, Diagnostic
from aarmc.source import Span


def at(span: Span | None) -> str:
    """`file:line:col` of a span, for notes that point at a second place.

    >>> at(Span(file="p.aarm", line=2, col=5, end_line=2, end_col=9))
    'p.aarm:2:5'
    """
    return span.start if span is not None else "<unknown location>"


def quoted(names: Iterable[str], limit: int = 8) -> str:
    """A short, sorted list of names in backticks, for `help` texts.

    >>> quoted(["b", "a"])
    '`a`, `b`'
    """
    names = sorted(set(names))
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


class Sink:
    """Collects diagnostics in the order they are found (sorted once, at the end)."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def error(self, code: str, message: str, span: Span | None, help: str | None = None,
              notes: Iterable[str] = ()) -> None:
        self.items.append(Diagnostic(code=f"AARM-{code}", severity=ERROR, message=message, span=span,
                                     help=help, notes=tuple(notes)))

    def warning(self, code: str, message: str, span: Span | None, help: str | None = None,
                notes: Iterable[str] = ()) -> None:
        self.items.append(Diagnostic(code=f"AARM-{code}", severity=WARNING, message=message, span=span,
                                     help=help, notes=tuple(notes)))

    def extend(self, diags: Iterable[Diagnostic]) -> None:
        self.items.extend(diags)

    @property
    def failed(self) -> bool:
        return any(d.severity == ERROR for d in self.items)
