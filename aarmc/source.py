"""Source files and spans.

A span is carried by every AST and IR node but never takes part in equality,
so that two policies that differ only in layout compare equal.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import attrs


@attrs.frozen(kw_only=True)
class Span:
    """A region of one source file; lines and columns are 1-based.

    >>> Span(file="p.aarm", line=3, col=5, end_line=3, end_col=9).start
    'p.aarm:3:5'
    """

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    @property
    def start(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def span_field():
    """An attrs field for a node's span: optional, and left out of eq/hash."""
    return attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class SourceFile:
    """The text of one policy file, as read (name is the path shown to users)."""

    name: str
    text: str

    @classmethod
    def read(cls, path: Path, display: str | None = None) -> "SourceFile":
        data = path.read_bytes()
        text = data.decode("utf-8")
        return cls(name=display if display is not None else str(path), text=text)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        if 1 <= line <= len(lines):
            return lines[line - 1]
        return ""
