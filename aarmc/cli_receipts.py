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


TIMELINE_EXIT = """\b
Several logs: one per replica serving shared sessions (a session store).
Each is verified on its own; sessions merge by id and steps by decision
id, every record is labelled with its log and seq ([a.cbor#17]), and a
decision a replica carried over into its log is shown once, from the log
of the replica that decided it.

\b
Exit codes:
  0  every log verifies: COMPLETE (or UNTERMINATED with --allow-open)
  1  a log does not verify (its verified prefix is still shown), or
     --session names no session in the verified records
  2  usage error: unreadable log or key, malformed --anchor, --anchor
     with several logs, a log given twice
"""


@click.command(epilog=TIMELINE_EXIT, short_help="Reconstruct what happened from receipt logs.")
@click.argument("logs", metavar="LOG [LOG ...]", nargs=-1, required=True)
@click.option("--key", "key_paths", multiple=True, required=True, metavar="PUBLIC_KEY_FILE",
              help="A trusted receipt-signing public key (may repeat); used for every log.")
@click.option("--session", metavar="SESSION_ID", help="Only this session.")
@click.option("--anchor", metavar="SIZE:ROOTHEX", help="As for `aarmc verify` (a single LOG only).")
@click.option("--allow-open", is_flag=True, help="Accept logs that are still being written.")
@click.option("--format", "fmt", type=click.Choice(["human", "json"]), default="human", show_default=True)
@_guarded
def timeline(logs: tuple[str, ...], key_paths: tuple[str, ...], session: str | None, anchor: str | None,
             allow_open: bool, fmt: str) -> None:
    """Verify each LOG, then show per session and per decision: what was
    proposed, in what context and for whom, what was decided and why, who
    approved, and what happened. Give the logs of all the replicas that served
    a shared session to see it whole. A log that does not verify contributes
    only its verified prefix (exit 1)."""
    from aarm_runtime.timeline import timeline_command

    sys.exit(timeline_command(list(logs), key_paths, session=session, fmt=fmt, anchor=anchor,
                              allow_open=allow_open))
