"""`aarmc verify` and `aarmc timeline`: offline checks and forensics over receipt logs.

Both are thin: the work is in `aarm_runtime.verify` and `aarm_runtime.timeline`,
so any interceptor's operator can verify a log with the runtime alone.
"""

from __future__ import annotations

import sys

import click

from aarmc.cli_common import _guarded

VERIFY_EXIT = """\b
Exit codes:
  0  COMPLETE (or UNTERMINATED with --allow-open)
  1  any other verdict: UNTERMINATED, TRUNCATED, TAMPERED, TORN_TAIL,
     BAD_SIGNATURE, UNKNOWN_KEY (the first bad record is named)
  2  usage error: unreadable log or key, malformed --anchor
"""


@click.command(epilog=VERIFY_EXIT, short_help="Verify a receipt log offline.")
@click.argument("log", metavar="LOG")
@click.option("--key", "key_paths", multiple=True, required=True, metavar="PUBLIC_KEY_FILE",
              help="A trusted receipt-signing public key (may repeat); keys are looked up by kid.")
@click.option("--anchor", metavar="SIZE:ROOTHEX",
              help="A Merkle tree size and root recorded elsewhere: detects truncation of an open log.")
@click.option("--allow-open", is_flag=True, help="Accept a log that is still being written (UNTERMINATED).")
@click.option("--format", "fmt", type=click.Choice(["human", "json"]), default="human", show_default=True)
@_guarded
def verify(log: str, key_paths: tuple[str, ...], anchor: str | None, allow_open: bool, fmt: str) -> None:
    """Check every signature, the hash chain, the record order and every Merkle
    checkpoint of LOG, and print the verdict with the first bad record."""
    from aarm_runtime.verify import verify_command

    sys.exit(verify_command(log, key_paths, anchor=anchor, allow_open=allow_open, fmt=fmt))


@click.command(epilog=VERIFY_EXIT, short_help="Reconstruct what happened from a receipt log.")
@click.argument("log", metavar="LOG")
@click.option("--key", "key_paths", multiple=True, required=True, metavar="PUBLIC_KEY_FILE",
              help="A trusted receipt-signing public key (may repeat).")
@click.option("--session", metavar="SESSION_ID", help="Only this session.")
@click.option("--anchor", metavar="SIZE:ROOTHEX", help="As for `aarmc verify`.")
@click.option("--allow-open", is_flag=True, help="Accept a log that is still being written.")
@click.option("--format", "fmt", type=click.Choice(["human", "json"]), default="human", show_default=True)
@_guarded
def timeline(log: str, key_paths: tuple[str, ...], session: str | None, anchor: str | None, allow_open: bool,
             fmt: str) -> None:
    """Verify LOG, then show per session and per decision: what was proposed, in
    what context and for whom, what was decided and why, who approved, and what
    happened. A log that does not verify shows only its verified prefix (exit 1)."""
    from aarm_runtime.timeline import timeline_command

    sys.exit(timeline_command(log, key_paths, session=session, fmt=fmt, anchor=anchor, allow_open=allow_open))
