"""Start a gateway: load and verify everything it needs, start the upstream server, serve a transport.

`open_gateway` refuses to start (`GatewayStartError`, nothing served) when
the policy does not load and verify, the receipt log cannot be created or
continued, the approvals database cannot be opened, the identity token does
not verify, or the upstream server does not start and answer `initialize`.
`serve_stdio` serves one client on the process's stdin/stdout;
`serve_http` serves streamable HTTP on a loopback address (the gateway has
no client authentication of its own, so it refuses to listen elsewhere).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import anyio
import anyio.to_thread
import attrs

from aarmc.gateway.proxy import DEFAULT_CALL_TIMEOUT_S, DEFAULT_MAX_ARGUMENT_BYTES, Gateway

__all__ = ["GatewayOptions", "GatewayStartError", "open_gateway", "parse_listen", "serve", "serve_http",
           "serve_stdio"]

STARTUP_TIMEOUT_S = 30.0
HTTP_PATH = "/mcp"


class GatewayStartError(Exception):
    """The gateway refuses to start; nothing was served."""


@attrs.frozen(kw_only=True)
class GatewayOptions:
    """Everything `aarmc gateway` is given."""

    policy: Path
    policy_keys: tuple[Path, ...]
    command: tuple[str, ...]
    receipts: Path
    receipt_key: Path
    approvals: Path
    identity: Path | None = None
    identity_issuers: tuple[tuple[str, Path], ...] = ()
    revocations: Path | None = None
    audience: str | None = None
    unsafe_no_identity: bool = False
    intent_text: str | None = None
    intent_entities: tuple[str, ...] = ()
    env: Mapping[str, Any] = attrs.field(factory=dict)
    prefix: str | None = None
    listen: tuple[str, int] | None = None
    max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S
    max_pending_per_session: int = 4
    session_ttl_s: float | None = 3600
    # Telemetry (docs/telemetry.md): OCSF JSON lines, OTLP spans, and what to export.
    ocsf: Path | None = None
    otel: bool = False
    telemetry_decisions: tuple[str, ...] = ()
    telemetry_principals: tuple[str, ...] = ()
    # Shared sessions (docs/runtime.md §13): a session store, and the session every client of this gateway
    # serves (opened by the first replica, joined by the others).
    session_store: str | None = None
    session_id: str | None = None
    # Intent drift (docs/aligner.md): `overlap` (the default) or `none`.
    aligner: str = "overlap"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` on a loopback address (port 0 picks a free one).

    >>> parse_listen("127.0.0.1:8765"), parse_listen("[::1]:0")
    (('127.0.0.1', 8765), ('::1', 0))
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"`{text}` is not HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"`{host}` is not a loopback address: the gateway has no client authentication, "
                         "so it listens on 127.0.0.1 or ::1 only")
    return host, int(port)


def _load_engine(options: GatewayOptions) -> Any:
    from aarm_runtime import artifact, keys
    from aarm_runtime.engine import Engine

    trusted = []
    for path in options.policy_keys:
        try:
            trusted.append(keys.load_verify_key(path))
        except (keys.KeyFileError, OSError) as err:
            raise GatewayStartError(f"cannot load policy key: {err}") from None
    if not trusted:
        raise GatewayStartError("no policy key given: pass --key PUB (the public key the policy was signed with)")
    try:
        return Engine.load(options.policy, trusted)
    except (artifact.ArtifactError, OSError) as err:
        raise GatewayStartError(f"cannot load policy `{options.policy}`: {err}") from None


def _open_receipts(options: GatewayOptions) -> Any:
    from aarm_runtime import keys
    from aarm_runtime.receipt_log import LogClosedError, LogError, ReceiptLog

    try:
        key = keys.load_signing_key(options.receipt_key)
    except (keys.KeyFileError, OSError) as err:
        raise GatewayStartError(f"cannot load the receipt signing key: {err}") from None
    path = receipt_log_path(options.receipts)
    try:
        if path.exists():
            log = ReceiptLog.open(path, key)
        else:
            log = ReceiptLog.create(path, key)
    except LogClosedError:
        raise GatewayStartError(f"receipt log `{path}` is closed: a closed log is never appended to; pass a new "
                                "file, or a directory to get a new log per run") from None
    except LogError as err:
        raise GatewayStartError(f"cannot use receipt log `{options.receipts}`: {err}") from None
    except OSError as err:
        raise GatewayStartError(f"cannot use receipt log `{path}`: {err.strerror or err}") from None
    return log


def receipt_log_path(receipts: Path) -> Path:
    """The log file: `receipts` itself, or a new file in it when it is a directory (one log per run)."""
    if receipts.is_dir():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return receipts / f"receipts-{stamp}-{os.getpid()}.cbor"
    return receipts


def _identity(options: GatewayOptions) -> tuple[Any, bytes | None]:
    """(verifier, token bytes); both None only with `unsafe_no_identity`."""
    if options.unsafe_no_identity:
        if options.identity is not None:
            raise GatewayStartError("--identity and --unsafe-no-identity exclude each other")
        return None, None
    if options.identity is None:
        raise GatewayStartError("no identity: pass --identity TOKEN_FILE (a signed identity assertion) with "
                                "--identity-issuer NAME=PUB, or --unsafe-no-identity for development")
    from aarm_runtime import keys
    from aarm_runtime.identity import IdentityError, IdentityVerifier, RevocationFileError, RevocationList

    if not options.identity_issuers:
        raise GatewayStartError("--identity needs at least one --identity-issuer NAME=PUB to verify it against")
    trusted: list[tuple[str, Any]] = []
    for name, path in options.identity_issuers:
        try:
            trusted.append((name, keys.load_verify_key(path)))
        except (keys.KeyFileError, OSError) as err:
            raise GatewayStartError(f"cannot load identity issuer key: {err}") from None
    try:
        revocation = RevocationList.load(options.revocations) if options.revocations else RevocationList()
    except (RevocationFileError, OSError) as err:
        raise GatewayStartError(f"cannot load revocation list: {err}") from None
    verifier = IdentityVerifier(trusted, revocation, audience=options.audience)
    try:
        token = options.identity.read_bytes()
    except OSError as err:
        raise GatewayStartError(f"cannot read identity token `{options.identity}`: {err.strerror}") from None
    try:
        verifier.verify(token)
    except IdentityError as err:
        raise GatewayStartError(f"identity token `{options.identity}` refused: {err}") from None
    return verifier, token


def _bound_session(guard: Any, token: bytes | None) -> str | None:
    """The session an identity token is bound to (its verified `session` claim), if any."""
    if token is None or guard.verifier is None:
        return None
    try:
        return guard.verifier.verify(token, guard.clock()).session
    except Exception:  # noqa: BLE001 - an unverifiable token names nothing
        return None


def _intent(options: GatewayOptions) -> dict[str, Any] | None:
    if options.intent_text is None and not options.intent_entities:
        return None
    intent: dict[str, Any] = {"entities": list(options.intent_entities)}
    if options.intent_text is not None:
        intent["text"] = options.intent_text
    return intent


@contextlib.asynccontextmanager
async def open_gateway(options: GatewayOptions, *, errlog: TextIO | None = None) -> AsyncIterator[Gateway]:
    """A ready gateway: policy verified, receipt log open, upstream initialised; closed on exit."""
    from mcp import ClientSession, StdioServerParameters, stdio_client

    from aarm_runtime.aligner import OverlapAligner
    from aarm_runtime.guard import Guard, GuardError
    from aarm_runtime.stores import open_approvals, open_session_store

    if not options.command:
        raise GatewayStartError("no MCP server command: put it after `--`")
    engine = _load_engine(options)
    verifier, token = _identity(options)
    # Before the receipt log: a refusal here must not leave a closed log behind.
    telemetry = _telemetry(options)
    try:
        receipts = _open_receipts(options)
    except BaseException:
        if telemetry is not None:
            telemetry.close()
        raise
    approvals = None
    store = None
    try:
        try:
            approvals = open_approvals(str(options.approvals))
        except Exception as err:  # noqa: BLE001 - any failure to open the store refuses the start
            raise GatewayStartError(f"cannot open approvals `{options.approvals}`: {err}") from None
        if options.session_store is not None:
            try:
                store = open_session_store(options.session_store)
            except Exception as err:  # noqa: BLE001 - no store, no shared sessions: refuse to start
                raise GatewayStartError(f"cannot open session store `{options.session_store}`: {err}") from None
        guard = Guard(engine, receipts=receipts, identity_verifier=verifier, approvals=approvals,
                      unsafe_no_identity=options.unsafe_no_identity,
                      max_pending_per_session=options.max_pending_per_session, session_ttl_s=options.session_ttl_s,
                      observers=() if telemetry is None else (telemetry,), session_store=store,
                      aligner=OverlapAligner() if options.aligner == "overlap" else None)
        intent = _intent(options)
        env = dict(options.env) or None

        def open_session() -> Any:
            # Read again for every client session, so a token the host renews
            # applies to the next one; unreadable means no identity (every call DENY).
            current = token
            if options.identity is not None:
                try:
                    current = options.identity.read_bytes()
                except OSError:
                    current = None
            if options.session_id is None:
                try:
                    return guard.open_session(identity_token=current, intent=intent, env=env)
                except GuardError:
                    # A token bound to a session (its `session` claim) names it: every client presenting
                    # the token serves that one session.
                    bound = _bound_session(guard, current)
                    if bound is None:
                        raise
                    return guard.session(bound)
            # One named session for every client: the first replica opens it, the others join it.
            for _ in range(3):
                try:
                    return guard.session(options.session_id)
                except GuardError:
                    pass
                try:
                    return guard.open_session(identity_token=current, intent=intent, env=env,
                                              session_id=options.session_id)
                except GuardError:
                    continue  # another replica opened it in between: join it
            return guard.session(options.session_id)

        params = StdioServerParameters(command=options.command[0], args=list(options.command[1:]),
                                       env=dict(os.environ))
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    # Only the handshake is timed: the transports' task groups must not
                    # open inside a cancel scope that closes before they do.
                    read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog or sys.stderr))
                    upstream = await stack.enter_async_context(ClientSession(read, write))
                    with anyio.fail_after(STARTUP_TIMEOUT_S):
                        await upstream.initialize()
                except Exception as err:  # noqa: BLE001 - every way the server can fail to start
                    raise GatewayStartError(f"the MCP server `{' '.join(options.command)}` did not start: "
                                            f"{_describe(err)}") from None
                gateway = Gateway(guard, upstream, open_session=open_session, prefix=options.prefix,
                                  max_argument_bytes=options.max_argument_bytes, call_timeout_s=options.call_timeout_s,
                                  approve_hint=f"aarmc approve --approvals {options.approvals}")
                gateway.receipts_path = receipts.path
                gateway.telemetry = telemetry
                try:
                    await gateway.refresh_tools()
                except Exception as err:  # noqa: BLE001
                    raise GatewayStartError(f"the MCP server did not list its tools: {_describe(err)}") from None
                try:
                    yield gateway
                finally:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(guard.close)
        except BaseExceptionGroup as group:
            # The transports' task groups wrap a refusal raised inside them.
            refusal = _start_error(group)
            if refusal is None:
                raise
            raise refusal from None
    finally:
        with anyio.CancelScope(shield=True):
            if approvals is not None:
                approvals.close()
            if store is not None:
                store.close()
            _close_receipts(receipts)
            if telemetry is not None:
                # After guard.close(): the session-end events are queued; this exports them.
                await anyio.to_thread.run_sync(telemetry.close)


def _telemetry(options: GatewayOptions) -> Any:
    from aarm_runtime.telemetry import TelemetryError, from_options

    try:
        return from_options(ocsf=options.ocsf, otel=options.otel, decisions=options.telemetry_decisions,
                            principals=options.telemetry_principals, service_name="aarmc-gateway")
    except TelemetryError as err:
        raise GatewayStartError(str(err)) from None


def _start_error(group: BaseExceptionGroup) -> GatewayStartError | None:
    for err in group.exceptions:
        if isinstance(err, GatewayStartError):
            return err
        if isinstance(err, BaseExceptionGroup):
            found = _start_error(err)
            if found is not None:
                return found
    return None


def _close_receipts(receipts: Any) -> None:
    if receipts.closed:
        return
    try:
        receipts.close()
    except Exception:  # noqa: BLE001 - a log that cannot be closed stays unterminated, which verify reports
        receipts.abandon()


def _describe(err: BaseException) -> str:
    from mcp.shared.exceptions import McpError

    if isinstance(err, McpError):
        return err.error.message
    if isinstance(err, TimeoutError):
        return f"no answer to `initialize` within {STARTUP_TIMEOUT_S:g} s"
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in err.exceptions)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror + (f": `{err.filename}`" if err.filename else "")
    return str(err) or type(err).__name__


async def serve_stdio(gateway: Gateway) -> None:
    """Serve one MCP client on this process's stdin and stdout until it closes them."""
    from mcp.server.stdio import stdio_server

    server = gateway.server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def serve_http(gateway: Gateway, host: str, port: int, *, on_ready: Callable[[str], None] | None = None,
                     stop: anyio.Event | None = None) -> None:
    """Serve streamable HTTP at ``http://HOST:PORT/mcp`` until `stop` is set (or a signal stops uvicorn).

    `on_ready` gets the URL once the socket accepts connections.
    """
    import socket

    import uvicorn
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.routing import Route

    # Bound here, not by uvicorn, so the Host and Origin checks below name the
    # actual port even when port 0 asked for a free one.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise GatewayStartError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    # DNS-rebinding protection: a web page in the user's browser must not be
    # able to drive the loopback gateway, so Host and Origin must name it.
    hosts = [f"{shown}:{actual}", f"localhost:{actual}"]
    manager = StreamableHTTPSessionManager(
        app=gateway.server(),
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                                    allowed_origins=[f"http://{h}" for h in hosts]),
    )

    class Endpoint:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await manager.handle_request(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        async with manager.run():
            yield

    app = Starlette(routes=[Route(HTTP_PATH, endpoint=Endpoint())], lifespan=lifespan)
    http = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    async def announce() -> None:
        while not http.started:
            await anyio.sleep(0.01)
        if on_ready is not None:
            on_ready(f"http://{shown}:{actual}{HTTP_PATH}")

    async def stop_when_asked() -> None:
        if stop is not None:
            await stop.wait()
            # uvicorn's own graceful shutdown: open requests finish, sessions end.
            http.should_exit = True

    _quiet_sdk_shutdown()
    with sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(announce)
            tg.start_soon(stop_when_asked)
            await http.serve(sockets=[sock])
            tg.cancel_scope.cancel()


class _ClosedStreamNoise(logging.Filter):
    """Drops the SDK's traceback for a client that ended its session (a DELETE closes the SSE stream)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage() == "Error in standalone SSE writer"
                    and isinstance(exc, (anyio.ClosedResourceError, anyio.BrokenResourceError)))


def _quiet_sdk_shutdown() -> None:
    logger = logging.getLogger("mcp.server.streamable_http")
    if not any(isinstance(f, _ClosedStreamNoise) for f in logger.filters):
        logger.addFilter(_ClosedStreamNoise())


async def serve(options: GatewayOptions, *, on_ready: Callable[[str, Path], None] | None = None,
                stop: anyio.Event | None = None) -> None:
    """Open the gateway and serve the transport the options name until the client leaves or `stop` is set.

    `on_ready(where, receipt_log_path)`: where = ``stdio`` or the HTTP URL.
    """
    async with open_gateway(options) as gateway:
        def ready(where: str) -> None:
            if on_ready is not None:
                on_ready(where, gateway.receipts_path)

        if options.listen is not None:
            await serve_http(gateway, *options.listen, on_ready=ready, stop=stop)
            return
        ready("stdio")
        async with anyio.create_task_group() as tg:
            async def stop_when_asked() -> None:
                if stop is not None:
                    await stop.wait()
                    tg.cancel_scope.cancel()

            tg.start_soon(stop_when_asked)
            await serve_stdio(gateway)
            tg.cancel_scope.cancel()
