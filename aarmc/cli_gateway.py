"""`aarmc gateway`, `aarmc approve`, `aarmc reject`, `aarmc pending`: the MCP gateway and its approvals.

The four click commands are registered on the `aarmc` group by `aarmc.cli`;
``python -m aarmc.cli_gateway COMMAND ...`` runs them without it.

The gateway's stdout is the MCP channel in stdio mode, so everything it
says goes to stderr. Exit codes: 0 the client ended the session (or the
answer was recorded), 1 an approval or rejection was refused, 2 usage
error or the gateway refused to start (policy, keys, receipt log, approvals
database, identity or the MCP server not usable).
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from aarm_runtime.stores import is_redis_url, open_approvals, store_kind

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
DEFAULT_APPROVALS = "aarm-approvals.db"
DEFAULT_RECEIPTS = "aarm-receipts/"
APPROVALS_ENV = "AARMC_APPROVALS"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(message: str, help: str | None = None, code: int = EXIT_USAGE) -> NoReturn:
    lines = [f"error: {message}"]
    if help:
        lines.append(f"  = help: {help}")
    click.echo("\n".join(lines), err=True)
    sys.exit(code)


def _guarded(fn: Callable) -> Callable:
    """As `aarmc.cli._guarded`: an unexpected exception is an internal error (exit 2), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(EXIT_USAGE)
        except Exception as exc:  # noqa: BLE001
            if os.environ.get("AARMC_DEBUG") == "1":
                raise
            detail = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(f"error[AARM-E0999]: internal error: {type(exc).__name__}" + (f": {detail}" if detail else "")
                       + "\n  = help: this is a bug in aarmc; rerun with AARMC_DEBUG=1 for a traceback and report it",
                       err=True)
            sys.exit(EXIT_USAGE)

    return wrapper


def _approvals_option(fn: Callable) -> Callable:
    return click.option(
        "--approvals", "approvals", metavar="DB", envvar=APPROVALS_ENV, default=DEFAULT_APPROVALS, show_default=True,
        help=f"The approvals the gateway shares with `aarmc approve`: a SQLite database, or a `redis://` URL "
             f"for replicas on several hosts; also ${APPROVALS_ENV}.")(fn)


def telemetry_options(fn: Callable) -> Callable:
    """`--ocsf`, `--otel`, `--telemetry-decision`, `--telemetry-principal` (also used by `aarmc serve`)."""
    from aarm_runtime.decision import DECISIONS

    for option in reversed((
        click.option("--ocsf", "telemetry_ocsf", metavar="FILE",
                     help="Append guard events (decisions, approvals, outcomes, sessions) to FILE as OCSF JSON "
                          "lines, sensitive params redacted (docs/telemetry.md)."),
        click.option("--otel", "telemetry_otel", is_flag=True,
                     help="Export guard events as OpenTelemetry spans over OTLP/HTTP; the OTEL_EXPORTER_OTLP_* "
                          "variables choose the endpoint (needs the otel extra)."),
        click.option("--telemetry-decision", "telemetry_decisions", multiple=True, type=click.Choice(DECISIONS),
                     help="Export only the events of this decision (repeatable; default: all)."),
        click.option("--telemetry-principal", "telemetry_principals", multiple=True, metavar="PRINCIPAL",
                     help="Export only the events of this principal's sessions (repeatable; default: all)."),
    )):
        fn = option(fn)
    return fn


# ---- aarmc gateway -----------------------------------------------------------------------


def _issuer(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise click.BadParameter(f"`{text}` is not NAME=PUB", param_hint="--identity-issuer")
    return name, Path(path)


def _env_value(text: str) -> tuple[str, Any]:
    from aarm_runtime import values

    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"`{text}` is not NAME=VALUE", param_hint="--env")
    try:
        return name, values.load_json(raw)
    except values.JsonError:
        return name, raw  # a bare word is a string: `--env currency=EUR`


@click.command("gateway", context_settings={**CONTEXT, "allow_interspersed_args": False},
               short_help="Run an MCP server behind the policy (an MCP proxy).",
               epilog="\b\nExample:\n  aarmc gateway --policy policy.aarmc --key author.pub --receipt-key gw.key \\\n"
                      "    --identity alice.cwt --identity-issuer idp.corp=idp.pub -- python server.py\n"
                      "\b\nExit codes:\n"
                      "  0  the client closed the session (or SIGTERM): receipt log closed and sealed\n"
                      "  2  usage error, or the gateway refused to start (policy, keys, receipt log,\n"
                      "     approvals database, identity or the MCP server not usable)")
@click.option("--policy", required=True, metavar="FILE", help="The compiled, signed policy (`aarmc compile`).")
@click.option("--key", "policy_keys", multiple=True, required=True, metavar="PUB",
              help="A public key the policy may be signed with (repeatable).")
@click.option("--receipt-key", required=True, metavar="SEED",
              help="The private key that signs this gateway's receipts (a 32-byte seed file, mode 0600).")
@click.option("--receipts", default=DEFAULT_RECEIPTS, show_default=True, metavar="LOG",
              help="The receipt log: a file (created, or continued after a crash) or a directory (a new log "
                   "per run).")
@_approvals_option
@click.option("--identity", metavar="TOKEN_FILE", help="The signed identity assertion (CWT) of the principal.")
@click.option("--identity-issuer", "identity_issuers", multiple=True, metavar="NAME=PUB",
              help="A trusted identity issuer and its public key (repeatable).")
@click.option("--revocations", metavar="FILE", help="The identity revocation list (JSON).")
@click.option("--audience", metavar="NAME", help="This gateway's name, when tokens name an audience.")
@click.option("--unsafe-no-identity", is_flag=True,
              help="Run without a verified identity (development only: identity rules see it as absent).")
@click.option("--intent", "intent_text", metavar="TEXT",
              help="The user's request, for `from user` provenance and intent rules.")
@click.option("--intent-entity", "intent_entities", multiple=True, metavar="VALUE",
              help="A value the user named (repeatable).")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE",
              help="An env attribute the policy declares (JSON value, or a bare string; repeatable).")
@click.option("--prefix", metavar="SERVICE",
              help="The `--prefix` the tools were imported with (`aarmc import-mcp`): MCP tool `x` is `SERVICE.x`.")
@click.option("--listen", metavar="HOST:PORT",
              help="Serve streamable HTTP at http://HOST:PORT/mcp (loopback only) instead of stdio.")
@click.option("--max-argument-bytes", type=click.IntRange(min=64), default=1024 * 1024, show_default=True,
              metavar="BYTES",
              help="Refuse tool calls whose arguments are larger (as JSON).")
@click.option("--session-ttl", type=click.IntRange(min=0), default=3600, show_default=True, metavar="SECONDS",
              help="Deny every call of a client session older than this (0: no limit).")
@telemetry_options
@click.option("--session-store", metavar="STORE",
              help="Keep sessions in a store several gateway replicas share: `sqlite:PATH` (one host) or a "
                   "`redis://HOST:PORT/DB` URL (docs/runtime.md §13).")
@click.option("--session-id", metavar="ID",
              help="Serve this one session for every client: the first replica opens it, the others join it "
                   "(with --session-store).")
@click.option("--aligner", type=click.Choice(["overlap", "none"]), default="overlap", show_default=True,
              help="Score each action against the intent (`intent.score`) and the session's drift "
                   "(`risk.drift`) for drift rules (docs/aligner.md); `none` leaves both absent.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- COMMAND...")
@_guarded
def gateway(policy: str, policy_keys: tuple[str, ...], receipt_key: str, receipts: str, approvals: str,
            identity: str | None, identity_issuers: tuple[str, ...], revocations: str | None, audience: str | None,
            unsafe_no_identity: bool, intent_text: str | None, intent_entities: tuple[str, ...], env: tuple[str, ...],
            prefix: str | None, listen: str | None, max_argument_bytes: int, session_ttl: int,
            command: tuple[str, ...], telemetry_ocsf: str | None = None, telemetry_otel: bool = False,
            telemetry_decisions: tuple[str, ...] = (), telemetry_principals: tuple[str, ...] = (),
            session_store: str | None = None, session_id: str | None = None, aligner: str = "overlap") -> None:
    """Run an MCP server behind the policy: every tool call is decided, DENY never reaches it.

    Serves one MCP client over stdio (or many over streamable HTTP with
    --listen) and starts COMMAND as the upstream MCP server. Clients see only
    the tools the policy could allow. A STEP_UP or DEFER answers at once
    "pending approval ID"; after `aarmc approve ID`, the same call with
    "_aarm_approval": "ID" added to its arguments (or `_meta` key
    "aarm.dev/approval") runs once.
    """
    try:
        import mcp  # noqa: F401 - only to say what is missing
    except ImportError:
        _fail("the gateway needs the MCP SDK", help="pip install 'aarmc[gateway]'")
    from aarmc.gateway.run import GatewayOptions, GatewayStartError, parse_listen

    if unsafe_no_identity and identity:
        _fail("--identity and --unsafe-no-identity exclude each other")
    try:
        listen_at = parse_listen(listen) if listen else None
    except ValueError as err:
        _fail(str(err), help="for example --listen 127.0.0.1:8765")
    options = GatewayOptions(
        policy=Path(policy), policy_keys=tuple(Path(k) for k in policy_keys), command=tuple(command),
        receipts=Path(receipts), receipt_key=Path(receipt_key),
        approvals=approvals if is_redis_url(approvals) else Path(approvals),
        identity=Path(identity) if identity else None,
        identity_issuers=tuple(_issuer(i) for i in identity_issuers),
        revocations=Path(revocations) if revocations else None, audience=audience,
        unsafe_no_identity=unsafe_no_identity, intent_text=intent_text, intent_entities=tuple(intent_entities),
        env=dict(_env_value(e) for e in env), prefix=prefix, listen=listen_at,
        max_argument_bytes=max_argument_bytes, session_ttl_s=session_ttl or None,
        ocsf=Path(telemetry_ocsf) if telemetry_ocsf else None, otel=telemetry_otel,
        telemetry_decisions=tuple(telemetry_decisions), telemetry_principals=tuple(telemetry_principals),
        session_store=session_store, session_id=session_id, aligner=aligner,
    )
    if session_store is not None:
        try:
            store_kind(session_store)
        except ValueError as err:
            _fail(str(err), help="for example --session-store sqlite:sessions.db or redis://127.0.0.1:6379/0")
    if receipts.endswith(os.sep):
        # A trailing separator names a directory (a new log per run) even before it exists.
        try:
            Path(receipts).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            _fail(f"cannot create receipt directory `{receipts}`: {err.strerror}")
    if unsafe_no_identity:
        click.echo("aarmc gateway: warning: --unsafe-no-identity: no verified identity (development only)", err=True)
    try:
        _run_gateway(options)
    except GatewayStartError as err:
        _fail(f"the gateway refuses to start: {err}")


def _run_gateway(options: Any) -> None:
    import anyio

    from aarmc.gateway.run import GatewayStartError, serve

    def ready(where: str, receipts: Path) -> None:
        click.echo(f"aarmc gateway: policy `{options.policy}` verified; receipts -> {receipts}; "
                   f"approvals -> {options.approvals}; serving {where}", err=True)

    refused: list[BaseException] = []

    async def main() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            async def stop_on_signal() -> None:
                # SIGTERM ends the gateway like the client leaving: sessions
                # closed, the receipt log closed and sealed.
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                    async for _ in signals:
                        stop.set()

            tg.start_soon(stop_on_signal)
            try:
                await serve(options, on_ready=ready, stop=stop)
            except GatewayStartError as err:
                # Raised here, it would leave the task group wrapped in an exception group.
                refused.append(err)
            tg.cancel_scope.cancel()

    anyio.run(main)
    if refused:
        raise refused[0]


# ---- aarmc approve / reject / pending ------------------------------------------------------


def _open_store(path: str) -> Any:
    from aarm_runtime.approvals import ApprovalError

    if not is_redis_url(path) and not Path(path).exists():
        _fail(f"no approvals database `{path}`",
              help=f"pass the --approvals DB the gateway uses (or set ${APPROVALS_ENV})")
    try:
        return open_approvals(path)
    except ApprovalError as err:
        _fail(str(err))


def _default_approver() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _answer(decision_id: str, approvals: str, verdict: str, approver: str | None, reason: str | None,
            args_hash: str | None, fmt: str) -> None:
    from aarm_runtime.approvals import ApprovalError

    who = approver or _default_approver()
    if not who:
        _fail("no approver name", help="pass --approver NAME")
    with _open_store(approvals) as store:
        try:
            if verdict == "approved":
                answer = store.approve(decision_id, who, args_hash=args_hash, reason=reason)
            else:
                answer = store.reject(decision_id, who, reason=reason)
        except ApprovalError as err:
            _fail(str(err), code=EXIT_REFUSED)
    if fmt == "json":
        click.echo(json.dumps({"decision_id": answer.decision_id, "verdict": answer.verdict,
                               "approver": answer.approver, "args_hash": answer.args_hash, "at": answer.at,
                               "reason": answer.reason}, indent=2))
    else:
        verb = "approved" if answer.verdict == "approved" else "rejected"
        click.echo(f"{verb} {answer.decision_id} as `{answer.approver}` (recorded in the gateway's receipts)")


_FORMAT = click.option("--format", "fmt", type=click.Choice(["human", "json"]), default="human", show_default=True,
                       help="Output format.")


@click.command("approve", context_settings=CONTEXT)
@click.argument("decision_id", metavar="ID")
@_approvals_option
@click.option("--approver", metavar="NAME", help="Who approves (default: the login name); goes into the receipt.")
@click.option("--args-hash", metavar="HEX", help="Approve only if the call's argument hash is this one.")
@click.option("--reason", metavar="TEXT", help="Why (goes into the receipt).")
@_FORMAT
@_guarded
def approve(decision_id: str, approvals: str, approver: str | None, args_hash: str | None, reason: str | None,
            fmt: str) -> None:
    """Approve a pending STEP_UP decision of a running gateway, by its id.

    The gateway records the approval in its receipt log before this command
    returns; the agent's retry of the same call (same arguments) then runs,
    once.
    """
    _answer(decision_id, approvals, "approved", approver, reason, args_hash, fmt)


@click.command("reject", context_settings=CONTEXT)
@click.argument("decision_id", metavar="ID")
@_approvals_option
@click.option("--approver", metavar="NAME", help="Who rejects (default: the login name); goes into the receipt.")
@click.option("--reason", metavar="TEXT", help="Why (goes into the receipt).")
@_FORMAT
@_guarded
def reject(decision_id: str, approvals: str, approver: str | None, reason: str | None, fmt: str) -> None:
    """Reject a pending STEP_UP decision of a running gateway: the call is denied."""
    _answer(decision_id, approvals, "rejected", approver, reason, None, fmt)


@click.command("pending", context_settings=CONTEXT)
@_approvals_option
@click.option("--params", "show_params", is_flag=True, help="Also show the proposed params (they may be sensitive).")
@_FORMAT
@_guarded
def pending(approvals: str, show_params: bool, fmt: str) -> None:
    """List the decisions waiting for a human, oldest first."""
    import time

    from aarm_runtime import values

    with _open_store(approvals) as store:
        requests = store.pending()
    if fmt == "json":
        out = []
        for r in requests:
            doc = r.to_json()
            if show_params:
                doc["params"] = values.to_jsonable(r.params)
            out.append(doc)
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    if not requests:
        click.echo("no pending approvals")
        return
    now = time.time()
    for r in requests:
        who = ", ".join(r.approvers) or "anyone"
        rules = ", ".join(r.rules)
        principal = f"  principal {r.principal}" if r.principal else ""
        click.echo(f"{r.decision_id}  {r.tool}  rule {rules}  approvers {who}  "
                   f"expires in {max(0, int(r.deadline - now))}s{principal}")
        if r.message:
            click.echo(f"    {r.message}")
        if show_params and r.params is not None:
            click.echo(f"    params {json.dumps(values.to_jsonable(r.params), ensure_ascii=False, sort_keys=True)}")


@click.group(context_settings=CONTEXT)
def main() -> None:
    """The MCP gateway commands of aarmc (registered on `aarmc` itself by `aarmc.cli`)."""


for _command in (gateway, approve, reject, pending):
    main.add_command(_command)


if __name__ == "__main__":
    main()
