"""What every `aarmc` command shares: exit codes, output, usage errors, the
no-traceback guard, and the one call into the front end.

Command modules (`aarmc.cli`, `aarmc.cli_compile`, `aarmc.cli_receipts`, ...)
import from here, never from each other, so any of them can be imported first.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import click

from aarmc.diagnostics import ERROR, Diagnostic, render_human

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3

EXIT_CODES = """\b
Exit codes:
  0  clean: nothing at or above the fail level; every test passed
  1  errors in the policy, findings at or above --fail-level, failing
     tests or coverage below --threshold
  2  usage or internal error: bad flags, unreadable files, malformed
     action, session or test files
  3  inconclusive: the solver gave up on a query (never shown as proved)
"""

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ---- output ------------------------------------------------------------------

def _colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


_STYLES = (("error[", "bold red"), ("warning[", "bold yellow"), ("info[", "bold cyan"))


def echo_human(text: str, err: bool = False) -> None:
    """Print human-readable output; on a terminal, severities and carets are coloured."""
    if err or not _colour():
        click.echo(text, nl=False, err=err)
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    for line in text.splitlines():
        styled = Text(line)
        for marker, style in _STYLES:
            at = line.find(marker)
            if at >= 0:
                styled.stylize(style, at, line.find("]", at) + 1)
        stripped = line.lstrip(" 0123456789|")
        if stripped and set(stripped) == {"^"}:
            styled.stylize("bold red", len(line) - len(stripped))
        if " = help:" in line:
            styled.stylize("green", line.find(" = help:") + 1)
        console.print(styled)


def fail(message: str, help: str | None = None, code: int = EXIT_USAGE) -> NoReturn:
    """Report a problem with the command's input (not a policy diagnostic) and exit."""
    lines = [f"error: {message}"]
    if help:
        lines.append(f"  = help: {help}")
    click.echo("\n".join(lines), err=True)
    sys.exit(code)


def internal_error(exc: BaseException) -> NoReturn:
    detail = str(exc).splitlines()[0] if str(exc) else ""
    message = f"internal error: {type(exc).__name__}" + (f": {detail}" if detail else "")
    diag = Diagnostic(code="AARM-E0999", severity=ERROR, message=message,
                      help="this is a bug in aarmc; rerun with AARMC_DEBUG=1 for a traceback and report it")
    click.echo(render_human(diag, {}), err=True)
    sys.exit(EXIT_USAGE)


def _guarded(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(EXIT_USAGE)
        except Exception as exc:  # noqa: BLE001 - the point: no input produces a traceback
            if os.environ.get("AARMC_DEBUG") == "1":
                raise
            internal_error(exc)

    return wrapper



def load(paths: Sequence[str | Path]):
    """Load a policy set (`aarmc.semantics.load.load_policy`)."""
    from aarmc.semantics.load import load_policy

    return load_policy(list(paths))
