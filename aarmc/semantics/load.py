"""The front end's entry point: files → parsed modules → one resolved `ir.Policy`.

`load_policy(paths)` reads every policy file (a directory stands for all
`*.aarm` files below it), parses each, resolves the whole set and returns the
IR with every diagnostic of every stage, sorted. A file that cannot be read or
parsed is reported and left out, and the rest is still resolved, so one run
shows all the problems it can.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import attrs

from aarmc.diagnostics import ERROR, Diagnostic, sort_diagnostics
from aarmc.semantics import ir
from aarmc.semantics.resolve import resolve
from aarmc.source import SourceFile, Span
from aarmc.syntax import ast
from aarmc.syntax.parser import parse_module

POLICY_SUFFIX = ".aarm"


@attrs.frozen(kw_only=True)
class LoadResult:
    """What the front end produced: the policy (None iff there are errors) and every diagnostic."""

    policy: ir.Policy | None
    diagnostics: tuple[Diagnostic, ...]
    sources: dict[str, str]  # display name -> text, for render_human
    modules: tuple[ast.Module, ...]

    @property
    def ok(self) -> bool:
        return self.policy is not None


def load_policy(paths: Sequence[str | Path]) -> LoadResult:
    """Load one policy set from files and directories.

    Files are shown (in spans and `SourceDigest.file`) by the path as given,
    joined with the file's path below a given directory, and are in source
    order: sorted by that path.
    """
    diags: list[Diagnostic] = []
    files = _discover(paths, diags)
    sources: list[SourceFile] = []
    for display, path in files:
        source = _read(display, path, diags)
        if source is not None:
            sources.append(source)
    if not files and not diags:
        diags.append(_error("E0902", "no policy files given", None,
                            help=f"name policy files (`*{POLICY_SUFFIX}`) or a directory that contains them"))
    return _load_sources(sources, diags, incomplete=len(sources) < len(files))


def load_policy_text(text: str, name: str = "<policy>") -> LoadResult:
    """Load a policy set of one file given as text (tests, `aarmc fmt -`).

    >>> r = load_policy_text('policy "p" version "1"\\ndefault deny\\ntool a.b(x: int)\\nallow "r" a.b when params.x > 1')
    >>> r.policy.rules[0].tools, r.diagnostics
    (('a.b',), ())
    """
    return _load_sources([SourceFile(name=name, text=text)], [], incomplete=False)


def _load_sources(sources: list[SourceFile], diags: list[Diagnostic], incomplete: bool) -> LoadResult:
    modules = []
    for source in sources:
        module, parse_diags = parse_module(source)
        diags.extend(parse_diags)
        if module is not None:
            modules.append(module)
        else:
            incomplete = True
    policy = None
    if sources:
        digests = tuple(ir.SourceDigest(file=s.name, sha256=s.sha256) for s in sources)
        policy, resolve_diags = resolve(modules, digests=digests, incomplete=incomplete)
        diags.extend(resolve_diags)
    if any(d.severity == ERROR for d in diags):
        policy = None
    return LoadResult(policy=policy, diagnostics=tuple(sort_diagnostics(diags)),
                      sources={s.name: s.text for s in sources}, modules=tuple(modules))


def _discover(paths: Sequence[str | Path], diags: list[Diagnostic]) -> list[tuple[str, Path]]:
    found: dict[Path, str] = {}  # resolved path -> display name; a file named twice is loaded once
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            below = [f for f in path.rglob(f"*{POLICY_SUFFIX}") if f.is_file()]
            if not below:
                diags.append(_error("E0902", f"no policy files found in `{arg}`", None,
                                    help=f"policy files end in `{POLICY_SUFFIX}`"))
            for f in below:
                found.setdefault(f.resolve(), (path / f.relative_to(path)).as_posix())
        elif path.is_file():
            found.setdefault(path.resolve(), path.as_posix())
        else:
            diags.append(_error("E0901", f"cannot read `{arg}`: no such file or directory", None))
    # Source order: by path, segment by segment (a directory's files stay together).
    return sorted(((display, path) for path, display in found.items()),
                  key=lambda item: Path(item[0]).parts)


def _read(display: str, path: Path, diags: list[Diagnostic]) -> SourceFile | None:
    try:
        data = path.read_bytes()
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        diags.append(_error("E0901", f"cannot read `{display}`: {reason}", None))
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start
        line_start = data.rfind(b"\n", 0, start) + 1
        line = data.count(b"\n", 0, start) + 1
        col = len(data[line_start:start].decode("utf-8", errors="replace")) + 1
        span = Span(file=display, line=line, col=col, end_line=line, end_col=col + 1)
        diags.append(_error("E0901", f"`{display}` is not UTF-8 text: invalid byte 0x{data[start]:02x}", span,
                            help="policy files are UTF-8; re-save the file in that encoding"))
        return None
    return SourceFile(name=display, text=text)


def _error(code: str, message: str, span: Span | None, help: str | None = None) -> Diagnostic:
    return Diagnostic(code=f"AARM-{code}", severity=ERROR, message=message, span=span, help=help)
