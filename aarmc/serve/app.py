"""The HTTP decision API (`aarmc serve`): AARM's vendor-integration hook over one `Guard`.

An interceptor that is not written in Python opens a session, asks for a
decision before every tool call, executes only on ``allow`` / ``modify``,
and reports the outcome. Every answer comes from `aarm_runtime.guard.Guard`,
which writes the receipt before the answer leaves this process; this module
adds only transport: strict request checking, JSON errors, sessions by id,
approvals by decision id, health, metrics and the OpenAPI description.

Fail closed: a request that cannot be decided is never answered ``allow``.
Malformed input is a 4xx with a JSON error body; an internal error while
deciding is a ``deny`` answer (the guard writes a receipt saying why where
the log still takes one); an internal error anywhere else is a 500 with a
JSON body and no traceback.

Starlette, not FastAPI: request bodies must be parsed exactly (decimals,
duplicate keys refused, `aarm_runtime.values.load_json`) and refused with
this API's own error shape, so FastAPI's pydantic validation would be worked
around rather than used, and the OpenAPI document is small enough to keep
beside the schemas that validate the requests (`schema.py`).
"""

from __future__ import annotations

import binascii
import hmac
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from aarm_runtime import values
from aarm_runtime.approvals import ApprovalError
from aarm_runtime.session_store import StoreError
from aarm_runtime.context import SessionContext
from aarm_runtime.decision import Decision
from aarm_runtime.deferrals import DeferralError
from aarm_runtime.guard import Guard, GuardError, Submission
from aarm_runtime.receipt_log import LogError

from aarmc.serve.metrics import Metrics
from aarmc.serve.schema import REQUESTS, RequestError, check

__all__ = ["API_VERSION", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_SESSIONS", "create_app"]

API_VERSION = "1.0.0"
# Params and outputs are tool arguments and tool results, not files: 1 MiB is generous for both.
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_SESSIONS = 10_000
_MAX_PATH_ID = 256


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class JsonResponse(Response):
    """JSON written exactly (`values.canonical_json`): decimals stay numbers, keys in a stable order."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return values.canonical_json(_exact(content)).encode("utf-8")


def _exact(value: Any) -> Any:
    """Floats (the guard's clock readings) become the decimals their shortest repr spells."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_exact(v) for v in value]
    return value


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class _State:
    """What the app keeps beside the guard: metrics, and whether the receipt log has failed."""

    def __init__(self, guard: Guard, metrics: Metrics, max_body: int, approval_token: str | None,
                 max_sessions: int) -> None:
        self.guard = guard
        self.metrics = metrics
        self.max_body = max_body
        self.approval_token = approval_token
        self.max_sessions = max_sessions
        self.log_failure: str | None = None
        self.lock = threading.Lock()
        self.telemetry: Any = None

    def log_failed(self, message: str) -> None:
        # A receipt log refuses every append after its first write or sync error,
        # so one failure makes the server unhealthy until it is restarted.
        with self.lock:
            if self.log_failure is None:
                self.log_failure = message


Handler = Callable[[Request, _State], Awaitable[Response]]


def create_app(guard: Guard, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, approval_token: str | None = None,
               max_sessions: int = DEFAULT_MAX_SESSIONS, metrics: Metrics | None = None,
               telemetry: Any = None) -> Starlette:
    """The ASGI application serving *guard*.

    *approval_token*: when set, approving, rejecting and resolving need
    ``Authorization: Bearer <token>`` — the agent's interceptor can then
    ask for a step-up but not grant it. *max_sessions* bounds the open
    sessions (each holds its context in memory). *telemetry*: the guard's
    `aarm_runtime.telemetry.Telemetry` observer, whose counts /metrics shows.
    """
    if not isinstance(guard, Guard):
        raise TypeError(f"expected a `Guard`, got `{type(guard).__name__}`")
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
        raise ValueError(f"max_body_bytes must be an integer >= 1024, got `{max_body_bytes!r}`")
    if approval_token is not None and (not isinstance(approval_token, str) or len(approval_token) < 16):
        raise ValueError("the approval token must be a string of at least 16 characters")
    state = _State(guard, metrics or Metrics(), max_body_bytes, approval_token, max_sessions)
    state.telemetry = telemetry

    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        async def endpoint(request: Request) -> Response:
            return await _run(handler, request, state)
        return Route(path, endpoint, methods=methods)

    routes = [
        route("/v1/sessions", _open_session, ["POST"]),
        route("/v1/sessions/{session_id}", _close_session, ["DELETE"]),
        route("/v1/sessions/{session_id}/decide", _decide, ["POST"]),
        route("/v1/sessions/{session_id}/redeem", _redeem, ["POST"]),
        route("/v1/sessions/{session_id}/outcome", _outcome, ["POST"]),
        route("/v1/approvals", _list_approvals, ["GET"]),
        route("/v1/approvals/{decision_id}/approve", _approve, ["POST"]),
        route("/v1/approvals/{decision_id}/reject", _reject, ["POST"]),
        route("/v1/deferrals/{decision_id}/provide", _provide, ["POST"]),
        route("/v1/deferrals/{decision_id}/deny", _deny_deferral, ["POST"]),
        route("/healthz", _health, ["GET"]),
        route("/metrics", _metrics, ["GET"]),
        route("/openapi.json", _openapi, ["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        message = {404: f"no such endpoint `{request.url.path}`",
                   405: f"`{request.method}` is not allowed on `{request.url.path}`"}.get(exc.status_code,
                                                                                     str(exc.detail).lower())
        state.metrics.observe_rejected(exc.status_code)
        return _error(exc.status_code, code, message, exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        state.metrics.observe_internal_error()
        return _error(500, "internal", f"internal error: {type(exc).__name__}")

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.aarm = state
    return app


async def _run(handler: Handler, request: Request, state: _State) -> Response:
    try:
        return await handler(request, state)
    except _HttpError as err:
        state.metrics.observe_rejected(err.status)
        return _error(err.status, err.code, err.message, err.headers)
    except RequestError as err:
        state.metrics.observe_rejected(400)
        return _error(400, "invalid-request", str(err))
    except Exception as err:  # noqa: BLE001 - a JSON error, never a traceback
        state.metrics.observe_internal_error()
        if isinstance(err, LogError):
            state.log_failed(f"receipt log: {err}")
            return _error(503, "receipts-unavailable", f"the receipt could not be written: {err}")
        return _error(500, "internal", f"internal error: {type(err).__name__}")


# ---- reading requests ----------------------------------------------------------------------------


async def _body(request: Request, state: _State, schema: str) -> dict[str, Any]:
    """The request's JSON object, checked against `REQUESTS[schema]`."""
    media = request.headers.get("content-type", "")
    kind, _, params = media.partition(";")
    if kind.strip().lower() != "application/json":
        raise _HttpError(415, "unsupported-media-type",
                         f"the request body must be `application/json`, not `{media or 'nothing'}`")
    charset = params.strip().lower()
    if charset and charset.replace(" ", "") not in ("charset=utf-8", "charset=\"utf-8\""):
        raise _HttpError(415, "unsupported-media-type", f"the request body must be UTF-8, not `{params.strip()}`")
    limit = state.max_body
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 18:
            raise _HttpError(400, "invalid-request", f"invalid content-length `{declared[:40]}`")
        if int(declared) > limit:
            raise _HttpError(413, "too-large", f"the request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _HttpError(413, "too-large", f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data.strip():
        raise _HttpError(400, "invalid-request", "the request body must be a JSON object, got nothing")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _HttpError(400, "invalid-request",
                         f"the request body is not UTF-8: invalid byte 0x{data[err.start]:02x} at offset {err.start}")
    try:
        body = values.load_json(text)
    except values.JsonError as err:
        raise _HttpError(400, "invalid-request", f"the request body is not valid JSON: {err}") from None
    check(REQUESTS[schema], body)
    return body


def _path_id(request: Request, name: str) -> str:
    value = request.path_params[name]
    if not value or len(value) > _MAX_PATH_ID:
        raise _HttpError(404, "not-found", f"no {name.replace('_', ' ')} of that length")
    return value


async def _session(state: _State, session_id: str) -> Any:
    guard = state.guard
    try:
        if guard.store is None:
            return guard.session(session_id)
        # Joining a session another replica opened reads the store and writes a receipt: not on the loop.
        return await run_in_threadpool(guard.session, session_id)
    except GuardError:
        raise _HttpError(404, "unknown-session", f"no open session `{session_id}`") from None
    except StoreError as err:
        raise _HttpError(503, "session-store-unavailable", f"session `{session_id}`: {err}") from None


def _authorize(request: Request, state: _State) -> None:
    token = state.approval_token
    if token is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, credential = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), token.encode()):
        raise _HttpError(401, "unauthorized", "answering approvals and deferrals needs the approval token",
                         {"WWW-Authenticate": 'Bearer realm="aarm-approvals"'})


# ---- sessions ------------------------------------------------------------------------------------


async def _open_session(request: Request, state: _State) -> Response:
    body = await _body(request, state, "OpenSession")
    guard = state.guard
    if len(guard.sessions) >= state.max_sessions:
        await run_in_threadpool(_close_expired, guard)
    if len(guard.sessions) >= state.max_sessions:
        raise _HttpError(429, "too-many-sessions",
                         f"{state.max_sessions} sessions are open; close one (DELETE /v1/sessions/ID) first")
    token: bytes | None = None
    identity = body.get("identity")
    if guard.unsafe_no_identity:
        if "identity_token" in body:
            raise RequestError("$.identity_token", "this server runs with --unsafe-no-identity and verifies no "
                                                   "token; send `identity` (an object) instead")
    else:
        if identity is not None:
            raise RequestError("$.identity", "identity objects are taken as given only by a server started with "
                                             "--unsafe-no-identity; send `identity_token`")
        if "identity_token" in body:
            text = body["identity_token"]
            try:
                token = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
            except (binascii.Error, UnicodeEncodeError):
                token = None
            # One accepted spelling (as for the token's own bytes): the canonical encoding of what it decodes to.
            if token is None or binascii.b2a_base64(token, newline=False).decode() != text:
                raise RequestError("$.identity_token", "not standard base64 (RFC 4648 §4, with padding)")
    intent, env = body.get("intent"), body.get("env")
    if guard.engine is not None:
        # A session whose intent or env the policy cannot read would deny every action; say so now.
        probe = SessionContext(guard.engine.declarations, identity=identity, intent=intent, env=env)
        if probe.invalid is not None:
            raise RequestError("$." + probe.invalid[0].lstrip("$."), probe.invalid[1])
        if probe.failure is not None:
            raise RequestError("$", probe.failure)
    # None: the guard names the session (after the id an identity token is bound to, if any).
    session_id = body.get("session_id") or None

    def open_() -> Any:
        try:
            return guard.open_session(identity_token=token, intent=intent, env=env, session_id=session_id,
                                      identity=identity)
        except GuardError as err:
            raise _HttpError(409, "session-exists", str(err)) from None
        except StoreError as err:
            raise _HttpError(503, "session-store-unavailable", str(err)) from None

    session = await run_in_threadpool(open_)
    if session.broken is not None:
        state.log_failed(session.broken)
    out: dict[str, Any] = {"session_id": session.id, "identity": session.identity_json,
                           "expires_at": session.expires_at}
    if session.identity_error is not None:
        reason, message = session.identity_error
        out["identity_error"] = {"reason": reason, "message": message}
    return JsonResponse(out, status_code=201)


def _close_expired(guard: Guard) -> None:
    """Close the sessions past their TTL (they can only deny) to make room; session-end receipts say so."""
    now = guard.clock()
    for session in list(guard.sessions.values()):
        if session.expires_at is not None and now >= session.expires_at:
            try:
                guard.close_session(session, note="expired: closed to make room for a new session")
            except (GuardError, StoreError):
                continue


async def _close_session(request: Request, state: _State) -> Response:
    session = await _session(state, _path_id(request, "session_id"))

    def close() -> None:
        try:
            state.guard.close_session(session, note="closed through the HTTP API")
        except GuardError as err:
            state.log_failed(str(err))
            raise _HttpError(503, "receipts-unavailable", str(err)) from None

    await run_in_threadpool(close)
    return JsonResponse({"session_id": session.id, "closed": True})


# ---- deciding ------------------------------------------------------------------------------------


def _submission(sub: Submission, state: _State) -> dict[str, Any]:
    if sub.decision.reason == "receipt-unavailable":
        state.log_failed(sub.decision.message)
    out: dict[str, Any] = {
        "status": sub.status,
        "decision_id": sub.decision_id,
        "action_id": sub.action_id or None,
        "args_hash": sub.args_hash,
        "decision": sub.decision.to_json(),
    }
    if sub.status in ("allow", "modify"):
        out["params"] = sub.params
    if sub.status == "pending":
        out["deadline"] = sub.deadline
        what = "approval" if sub.decision.decision == "step_up" else "deferral"
        out["retry"] = f"pending {what} {sub.decision_id}"
    return out


def _fail_closed(tool: str, err: BaseException) -> dict[str, Any]:
    """The answer when the guard itself raised: DENY; the guard had no chance to write a receipt."""
    d = Decision(decision="deny", rules=(), reason="internal-error",
                 message=f"internal error: {type(err).__name__}: {err}", tool=tool)
    return {"status": "deny", "decision_id": None, "action_id": None, "args_hash": None, "decision": d.to_json()}


async def _decide(request: Request, state: _State) -> Response:
    session = await _session(state, _path_id(request, "session_id"))
    body = await _body(request, state, "Decide")
    tool, params, risk = body["tool"], body.get("params", {}), body.get("risk")
    return JsonResponse(await run_in_threadpool(
        _timed, state, tool, None, lambda: state.guard.submit(session, tool, params, risk)))


async def _redeem(request: Request, state: _State) -> Response:
    session = await _session(state, _path_id(request, "session_id"))
    body = await _body(request, state, "Redeem")
    tool, params = body["tool"], body.get("params", {})
    return JsonResponse(await run_in_threadpool(
        _timed, state, tool, body["decision_id"], lambda: state.guard.redeem(session, body["decision_id"], tool,
                                                                             params)))


def _timed(state: _State, tool: str, redeemed: str | None, decide: Callable[[], Submission]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        out = _submission(decide(), state)
    except Exception as err:  # noqa: BLE001 - fail closed: never allow what could not be decided
        state.metrics.observe_internal_error()
        out = _fail_closed(tool, err)
    # A redemption that answers with the decision it redeems made no new decision: only its status counts.
    new = out["decision_id"] is None or out["decision_id"] != redeemed
    state.metrics.observe_decision(out["decision"]["decision"] if new else None, time.perf_counter() - started,
                                   out["status"])
    return out


async def _outcome(request: Request, state: _State) -> Response:
    session = await _session(state, _path_id(request, "session_id"))
    body = await _body(request, state, "Outcome")
    decision_id = body["decision_id"]

    def record() -> None:
        try:
            state.guard.record_outcome(session, decision_id, ok=body["ok"], output=body.get("output"),
                                       started_ns=body.get("started_ns"), ended_ns=body.get("ended_ns"),
                                       error=body.get("error"))
        except GuardError as err:
            raise _HttpError(409, "outcome-refused", str(err)) from None

    await run_in_threadpool(record)
    return JsonResponse({"recorded": True, "decision_id": decision_id})


# ---- approvals and deferrals ---------------------------------------------------------------------


async def _list_approvals(request: Request, state: _State) -> Response:
    _authorize(request, state)
    for key in request.query_params:
        if key != "status":
            raise RequestError(f"?{key}", "unknown query parameter (expected `status`)")
    status = request.query_params.get("status", "pending")
    if status != "pending":
        raise RequestError("?status", f"only `pending` requests are listed, not `{status}`")
    guard = state.guard
    listed: list[dict[str, Any]] = []
    for req in await run_in_threadpool(guard.approvals.pending):
        listed.append({**req.to_json(), "kind": "step_up", "status": "pending"})
    for req in await run_in_threadpool(guard.deferrals.pending):
        listed.append({**req.to_json(), "kind": "defer", "status": "pending"})
    return JsonResponse({"approvals": listed})


async def _answer(request: Request, state: _State, schema: str, verdict: str) -> Response:
    _authorize(request, state)
    decision_id = _path_id(request, "decision_id")
    body = await _body(request, state, schema)
    approvals = state.guard.approvals

    def answer() -> Any:
        if approvals.get(decision_id) is None:
            if state.guard.deferrals.get(decision_id) is not None:
                raise _HttpError(409, "not-a-step-up", f"decision `{decision_id}` is a deferral: answer it with "
                                                       f"/v1/deferrals/{decision_id}/provide or /deny")
            raise _HttpError(404, "unknown-approval", f"no approval request for decision `{decision_id}`")
        try:
            if verdict == "approved":
                return approvals.approve(decision_id, body["approver"], args_hash=body.get("args_hash"),
                                         reason=body.get("reason"))
            return approvals.reject(decision_id, body["approver"], reason=body.get("reason"))
        except ApprovalError as err:
            raise _HttpError(409, "approval-refused", str(err)) from None

    got = await run_in_threadpool(answer)
    return JsonResponse({"decision_id": got.decision_id, "verdict": got.verdict, "approver": got.approver,
                         "args_hash": got.args_hash})


async def _approve(request: Request, state: _State) -> Response:
    return await _answer(request, state, "Approve", "approved")


async def _reject(request: Request, state: _State) -> Response:
    return await _answer(request, state, "Reject", "rejected")


async def _provide(request: Request, state: _State) -> Response:
    _authorize(request, state)
    decision_id = _path_id(request, "decision_id")
    body = await _body(request, state, "Provide")
    deferrals = state.guard.deferrals
    if "session" in body:
        session = await _session(state, body["session"])

        def provide_in_session() -> None:
            try:
                state.guard.provide(session, decision_id, env=body.get("env"), intent=body.get("intent"),
                                    risk=body.get("risk"), by=body["by"])
            except DeferralError as err:
                raise _HttpError(409, "deferral-refused", str(err)) from None
            except StoreError as err:
                raise _HttpError(503, "session-store-unavailable", str(err)) from None

        await run_in_threadpool(provide_in_session)
        return JsonResponse({"decision_id": decision_id, "provided": True,
                             "retry": f"redeem decision {decision_id} for the new decision"})

    def provide() -> None:
        if deferrals.get(decision_id) is None:
            raise _HttpError(404, "unknown-deferral", f"no pending deferral for decision `{decision_id}`")
        try:
            deferrals.provide(decision_id, env=body.get("env"), intent=body.get("intent"), risk=body.get("risk"),
                              by=body["by"])
        except DeferralError as err:
            raise _HttpError(409, "deferral-refused", str(err)) from None

    await run_in_threadpool(provide)
    return JsonResponse({"decision_id": decision_id, "provided": True,
                         "retry": f"redeem decision {decision_id} for the new decision"})


async def _deny_deferral(request: Request, state: _State) -> Response:
    _authorize(request, state)
    decision_id = _path_id(request, "decision_id")
    body = await _body(request, state, "DenyDeferral")
    deferrals = state.guard.deferrals
    if "session" in body:
        session = await _session(state, body["session"])

        def deny_in_session() -> None:
            try:
                state.guard.deny_deferral(session, decision_id, by=body["by"], reason=body.get("reason"))
            except DeferralError as err:
                raise _HttpError(409, "deferral-refused", str(err)) from None
            except StoreError as err:
                raise _HttpError(503, "session-store-unavailable", str(err)) from None

        await run_in_threadpool(deny_in_session)
        return JsonResponse({"decision_id": decision_id, "denied": True})

    def deny() -> None:
        if deferrals.get(decision_id) is None:
            raise _HttpError(404, "unknown-deferral", f"no pending deferral for decision `{decision_id}`")
        try:
            deferrals.deny(decision_id, by=body["by"], reason=body.get("reason"))
        except DeferralError as err:
            raise _HttpError(409, "deferral-refused", str(err)) from None

    await run_in_threadpool(deny)
    return JsonResponse({"decision_id": decision_id, "denied": True})


# ---- health, metrics, description ------------------------------------------------------------------


def health(state: _State) -> tuple[bool, dict[str, Any]]:
    """(healthy, the /healthz document)."""
    guard = state.guard
    problems: list[str] = []
    ref = guard.policy_ref
    if guard.engine is None:
        problems.append(f"no policy: {guard.policy_error}")
    policy = {"id": ref.policy, "version": ref.version, "digest": ref.digest.hex()} if ref is not None \
        else {"id": None, "version": None, "digest": None}
    log = guard.receipts
    log_problem = None
    if getattr(log, "closed", False):
        log_problem = "the receipt log is closed"
    elif state.log_failure is not None:
        log_problem = state.log_failure
    if log_problem is not None:
        problems.append(log_problem)
    path = getattr(log, "path", None)
    receipts = {"path": None if path is None else str(path), "records": getattr(log, "records", None),
                "writable": log_problem is None, "problem": log_problem}
    ok = not problems
    return ok, {"status": "ok" if ok else "unhealthy", "policy": policy, "receipts": receipts,
                "sessions": len(guard.sessions), "problems": problems}


async def _health(request: Request, state: _State) -> Response:
    ok, doc = health(state)
    return JsonResponse(doc, status_code=200 if ok else 503)


def _pending_count(guard: Guard) -> int:
    return len(guard.approvals.pending()) + len(guard.deferrals.pending())


async def _metrics(request: Request, state: _State) -> Response:
    pending = await run_in_threadpool(_pending_count, state.guard)
    text = state.metrics.render(pending=pending)
    if state.telemetry is not None:
        stats = state.telemetry.stats()
        text += ("# HELP aarm_telemetry_events_total Guard events by what telemetry did with them "
                 "(exported and failed count once per exporter).\n# TYPE aarm_telemetry_events_total counter\n"
                 + "".join(f'aarm_telemetry_events_total{{result="{k}"}} {stats[k]}\n'
                           for k in ("exported", "failed", "dropped", "filtered")))
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def _openapi(request: Request, state: _State) -> Response:
    from aarmc.serve.openapi import openapi_document

    return JsonResponse(openapi_document())
