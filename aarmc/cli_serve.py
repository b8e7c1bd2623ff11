"""`aarmc serve`: the HTTP decision API (`aarmc.serve`) on uvicorn.

Registered on the main `aarmc` group by `aarmc.cli`. This module imports
`aarmc.cli` only when the command runs, so that either module may be
imported first (`aarmc.cli` imports this one while it registers commands).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from aarmc.cli_gateway import telemetry_options

DEFAULT_LISTEN = "127.0.0.1:8181"
EXIT_OK = 0

EXIT_CODES = """\b
Exit codes:
  0  stopped (Ctrl-C, SIGTERM or SIGHUP): sessions closed with receipts
  2  usage error, or the server refused to start (policy, keys, receipt
     log, identity issuers or the listen address not usable)
"""


def fail(message: str, help: str | None = None) -> NoReturn:
    from aarmc.cli_common import fail as cli_fail

    cli_fail(message, help=help)


def _guarded(fn: Callable) -> Callable:
    """`aarmc.cli._guarded` (no traceback, ever), looked up when the command runs."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from aarmc.cli_common import _guarded as guarded

        return guarded(fn)(*args, **kwargs)
    return wrapper


def parse_listen(text: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT`` or ``[IPV6]:PORT``; port 0 picks a free port.

    >>> parse_listen("127.0.0.1:8181"), parse_listen("[::1]:0")
    (('127.0.0.1', 8181), ('::1', 0))
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"`{text}` is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    elif ":" in host:
        raise ValueError(f"`{text}`: write an IPv6 address in brackets, e.g. `[::1]:8181`")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _print_openapi(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from aarmc.serve.openapi import openapi_text

    click.echo(openapi_text(), nl=False)
    ctx.exit(EXIT_OK)


def _issuers(specs: tuple[str, ...]) -> dict[str, list[Any]]:
    from aarm_runtime import keys

    trusted: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            fail(f"--identity-issuer `{spec}` is not NAME=PUBLIC_KEY_FILE",
                 help="e.g. --identity-issuer idp.corp=idp.pub")
        try:
            trusted.setdefault(name, []).append(keys.load_verify_key(Path(path)))
        except (keys.KeyFileError, keys.InvalidKeyError, OSError) as err:
            fail(f"identity issuer key `{path}`: {err}")
    return trusted


def receipt_log_path(receipts: str) -> tuple[Path, bool]:
    """(log file, whether it is this run's own): a directory (or a path ending in a separator) gets a
    new file per run, as `aarmc gateway` does; anything else is the log file itself."""
    if receipts.endswith(os.sep) or Path(receipts).is_dir():
        folder = Path(receipts)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            fail(f"cannot create receipt directory `{receipts}`: {(err.strerror or str(err)).lower()}")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return folder / f"receipts-{stamp}-{os.getpid()}.cbor", True
    return Path(receipts), False


def _open_log(path: Path, key: Any, fsync: str) -> tuple[Any, str]:
    """The receipt log: created when the file does not exist, continued (crash recovery) when it does."""
    from aarm_runtime.receipt_log import LogClosedError, LogError, ReceiptLog

    try:
        if path.exists():
            log = ReceiptLog.open(path, key, fsync=fsync)
            return log, f"continued, {log.records} records"
        return ReceiptLog.create(path, key, fsync=fsync), "new"
    except LogClosedError:
        fail(f"receipt log `{path}` was closed by an earlier run",
             help="give a new --receipts file, or a directory to get a new log per run")
    except LogError as err:
        fail(f"receipt log `{path}`: {err}")


@click.command(epilog=EXIT_CODES, short_help="Serve the HTTP decision API for interceptors in any language.",
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--policy", "policy", required=True, metavar="POLICY.aarmc", help="The compiled policy artifact.")
@click.option("--key", "key_paths", multiple=True, metavar="PUB",
              help="Public key of the policy's author (repeatable). Required unless --unsafe-unsigned.")
@click.option("--receipts", "receipts", required=True, metavar="LOG",
              help="The receipt log: a file (created, or continued after a stop or a crash) or a directory "
                   "(a new log per run, closed on exit).")
@click.option("--receipt-key", "receipt_key", required=True, metavar="KEY",
              help="Private key that signs the receipts (`aarmc keygen`; verify with its .pub).")
@click.option("--identity-issuer", "issuers", multiple=True, metavar="NAME=PUB",
              help="Trust identity assertions of issuer NAME signed with key PUB (repeatable). "
                   "Required unless --unsafe-no-identity.")
@click.option("--revocations", metavar="FILE", help="Revoked identity tokens and subjects (docs/identity.md).")
@click.option("--audience", metavar="NAME", help="Accept only identity assertions for this audience.")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              help="Address to listen on; port 0 picks a free one (the address is printed).")
@click.option("--approvals", "approvals_db", metavar="DB", envvar="AARMC_APPROVALS",
              help="Queue step-ups in this SQLite file (or at a `redis://` URL, for replicas on several hosts), so "
                   "that `aarmc approve ID` / `aarmc reject ID` / `aarmc pending` answer them too (also "
                   "$AARMC_APPROVALS; default: in memory, HTTP only).")
@click.option("--approval-token-file", metavar="FILE",
              help="Approving, rejecting and resolving need `Authorization: Bearer` with this file's content.")
@click.option("--fsync", type=click.Choice(["always", "group", "none"]), default="group", show_default=True,
              help="When a receipt counts as written (docs/receipts.md §5); `none` is for benchmarks only.")
@click.option("--approval-timeout", type=click.FloatRange(min=0.001), metavar="SECONDS",
              help="Cap on how long a STEP_UP waits for a human (default: the policy's timeout).")
@click.option("--deferral-timeout", type=click.FloatRange(min=0.001), metavar="SECONDS",
              help="Cap on how long a DEFER waits for context (default: the policy's timeout).")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True,
              help="Larger request bodies are refused (413).")
@click.option("--include-params", is_flag=True,
              help="Write raw params into receipts for tools without `sensitive` params (default: digests).")
@click.option("--close-receipts-on-exit", is_flag=True,
              help="Write log-close on shutdown also for a --receipts file (it then verifies COMPLETE and "
                   "cannot be continued).")
@click.option("--unsafe-no-identity", is_flag=True,
              help="Development only: take identity objects as given, verify no assertion.")
@click.option("--unsafe-unsigned", is_flag=True, help="Development only: load an unsigned policy artifact.")
@click.option("--print-openapi", is_flag=True, is_eager=True, expose_value=False, callback=_print_openapi,
              help="Print the OpenAPI 3.1 description and exit.")
@telemetry_options
@click.option("--session-store", metavar="STORE",
              help="Keep sessions in a store several `aarmc serve` replicas share: `sqlite:PATH` (one host) or a "
                   "`redis://HOST:PORT/DB` URL; a session another replica opened is joined on first use "
                   "(docs/runtime.md §13).")
@click.option("--aligner", type=click.Choice(["overlap", "none"]), default="overlap", show_default=True,
              help="Score each action against the session's intent (`intent.score`) and its drift (`risk.drift`) "
                   "for drift rules (docs/aligner.md); `none` leaves both absent.")
@_guarded
def serve(policy: str, key_paths: tuple[str, ...], receipts: str, receipt_key: str, issuers: tuple[str, ...],
          revocations: str | None, audience: str | None, listen: str, approvals_db: str | None,
          approval_token_file: str | None, fsync: str,
          approval_timeout: float | None, deferral_timeout: float | None, max_body_bytes: int,
          include_params: bool, close_receipts_on_exit: bool, unsafe_no_identity: bool,
          unsafe_unsigned: bool, telemetry_ocsf: str | None = None, telemetry_otel: bool = False,
          telemetry_decisions: tuple[str, ...] = (), telemetry_principals: tuple[str, ...] = (),
          session_store: str | None = None, aligner: str = "overlap") -> None:
    """Serve the HTTP decision API: sessions, decide, outcome, approvals, health, metrics.

    Every decision is written to the receipt log before it is answered; an
    interceptor executes a tool call only on `allow` or `modify`. The API
    is described by GET /openapi.json (and --print-openapi). Stop with
    Ctrl-C or SIGTERM: open sessions are closed with receipts.
    """
    try:
        import uvicorn
    except ImportError:
        fail("`aarmc serve` needs the serve extra", help="pip install 'aarmc[serve]'")
    from aarm_runtime import keys
    from aarm_runtime.artifact import ArtifactError
    from aarm_runtime.engine import Engine
    from aarm_runtime.guard import Guard
    from aarm_runtime.identity import IdentityVerifier, RevocationFileError, RevocationList

    from aarmc.serve import create_app

    try:
        host, port = parse_listen(listen)
    except ValueError as err:
        fail(f"--listen {err}")
    if not key_paths and not unsafe_unsigned:
        fail("no policy key", help="pass --key PUB (the author's public key), or --unsafe-unsigned for development")
    if not issuers and not unsafe_no_identity:
        fail("no identity issuer", help="pass --identity-issuer NAME=PUB for each trusted issuer, or "
                                        "--unsafe-no-identity for development")
    if issuers and unsafe_no_identity:
        fail("--identity-issuer and --unsafe-no-identity contradict each other")
    trusted = []
    for path in key_paths:
        try:
            trusted.append(keys.load_verify_key(Path(path)))
        except (keys.KeyFileError, keys.InvalidKeyError, OSError) as err:
            fail(f"policy key `{path}`: {err}")
    try:
        engine = Engine.load(policy, trusted, unsafe_unsigned=unsafe_unsigned)
    except (ArtifactError, OSError) as err:
        # Refusing to start is the visible form of failing closed: a server without a policy would deny all.
        fail(f"policy `{policy}`: {err}")
    engine.prepare()
    verifier = None
    if issuers:
        revocation = RevocationList()
        if revocations is not None:
            try:
                revocation = RevocationList.load(revocations)
            except (RevocationFileError, OSError) as err:
                fail(f"revocations `{revocations}`: {err}")
        verifier = IdentityVerifier(_issuers(issuers), revocation, audience=audience)
    token = None
    if approval_token_file is not None:
        try:
            token = Path(approval_token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            fail(f"approval token file `{approval_token_file}`: {err}")
        if len(token) < 16:
            fail(f"approval token file `{approval_token_file}`: the token must be at least 16 characters")
    try:
        signing = keys.load_signing_key(Path(receipt_key))
    except (keys.KeyFileError, keys.InvalidKeyError, OSError) as err:
        fail(f"receipt key `{receipt_key}`: {err}")

    from aarm_runtime.telemetry import TelemetryError, from_options

    try:
        telemetry = from_options(ocsf=telemetry_ocsf, otel=telemetry_otel, decisions=telemetry_decisions,
                                 principals=telemetry_principals, service_name="aarmc-serve")
    except TelemetryError as err:
        fail(str(err))

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets that do, and without it every response
    # (headers and body written apart) waits for the client's delayed ACK, 40 ms per request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening now (uvicorn listens again, harmlessly) lets clients connect as soon as the address is
        # printed: their connections wait in the backlog until the server accepts them.
        sock.listen(2048)
    except OSError as err:
        sock.close()
        fail(f"cannot listen on `{listen}`: {(err.strerror or str(err)).lower()}")
    bound = sock.getsockname()[:2]

    from aarm_runtime.aligner import OverlapAligner
    from aarm_runtime.stores import open_approvals, open_session_store

    approvals = None
    if approvals_db is not None:
        try:
            approvals = open_approvals(approvals_db)
        except Exception as err:  # noqa: BLE001 - sqlite3, redis and OS errors alike: the store is unusable
            fail(f"approvals `{approvals_db}`: {err}")
    store = None
    if session_store is not None:
        try:
            store = open_session_store(session_store)
        except Exception as err:  # noqa: BLE001 - no store, no shared sessions: refuse to start
            fail(f"session store `{session_store}`: {err}",
                 help="for example --session-store sqlite:sessions.db or redis://127.0.0.1:6379/0")
    log_path, per_run = receipt_log_path(receipts)
    log, how = _open_log(log_path, signing, fsync)
    close_receipts_on_exit = close_receipts_on_exit or per_run
    guard = Guard(engine, receipts=log, identity_verifier=verifier, unsafe_no_identity=unsafe_no_identity,
                  approvals=approvals,
                  approval_timeout_s=approval_timeout, deferral_timeout_s=deferral_timeout,
                  include_params=include_params, name="aarmc-serve",
                  observers=() if telemetry is None else (telemetry,), session_store=store,
                  aligner=OverlapAligner() if aligner == "overlap" else None)
    app = create_app(guard, max_body_bytes=max_body_bytes, approval_token=token, telemetry=telemetry)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False,
                            proxy_headers=False, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)

    shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
    ref = guard.policy_ref
    assert ref is not None
    click.echo(f"aarmc serve: policy `{ref.policy}` version {ref.version} (sha256 {ref.digest.hex()[:16]}…)", err=True)
    click.echo(f"aarmc serve: receipts `{log_path}` ({how}), signed by key {signing.kid.hex()[:16]}…", err=True)
    if unsafe_no_identity:
        click.echo("warning: --unsafe-no-identity: identities are taken as given, not verified", err=True)
    if not is_loopback(bound[0]):
        click.echo(f"warning: listening on `{bound[0]}`, not loopback: anyone who reaches it can ask for "
                   "decisions" + ("" if token else " and answer approvals"), err=True)
    if token is None:
        click.echo("warning: no --approval-token-file: any client of this API can approve step-ups", err=True)
    # The line tests and scripts wait for: the address actually bound (port 0 resolved).
    click.echo(f"aarmc serve: listening on http://{shown}:{bound[1]}", err=True)
    sys.stderr.flush()

    # uvicorn handles SIGINT and SIGTERM while it runs, then restores the handlers it found and raises
    # the signal again; with the default handlers that would end the process before the sessions below
    # are closed. These handlers only ask the server to stop (and SIGHUP stops it the same way).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        guard.close()
        if telemetry is not None:
            telemetry.close()  # after guard.close(): exports the session-end events too
        if approvals is not None:
            approvals.close()
        if store is not None:
            store.close()
        try:
            if close_receipts_on_exit:
                log.close(note="aarmc serve stopped")
            else:
                # A final checkpoint vouches for every record; the next run continues this log.
                log.checkpoint()
                log.abandon()
        except Exception as err:  # noqa: BLE001 - reported; the receipts written so far stand
            click.echo(f"error: the receipt log could not be finished cleanly: {err}", err=True)
    click.echo("aarmc serve: stopped", err=True)
