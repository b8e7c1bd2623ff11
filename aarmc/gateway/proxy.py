"""The MCP proxy: one upstream MCP server, any number of client sessions, every tool call decided.

Built on the official MCP SDK: the upstream is a `mcp.ClientSession` over
`mcp.stdio_client`; the client side is a low-level `mcp.server.lowlevel.Server`
run over stdio or streamable HTTP (`aarmc.gateway.run`). Only tools are
proxied: resources, prompts and completions would let data into the agent's
context without a decision, so the gateway does not offer them.

Per client session (the server's lifespan) the gateway opens a runtime
session (`Guard.open_session`: identity verified, a session-start receipt)
and closes it at the end. Per `tools/call`:

1. protocol checks — a name longer than `MAX_TOOL_NAME`, arguments over the
   size limit or not JSON the runtime accepts, a malformed approval id: a
   JSON-RPC error (-32602), nothing decided, nothing run;
2. the decision — `Guard.submit`, or `Guard.redeem` when the call carries an
   approval id (`_aarm_approval` in the arguments, or ``_meta`` key
   ``aarm.dev/approval``; stripped before anything else sees the arguments);
3. ALLOW forwards the arguments (policy defaults filled in for absent
   params, so the server runs what was decided); MODIFY forwards the
   decision's params; DENY answers a tool error (``isError: true``) naming
   the rules and the reason; STEP_UP and DEFER answer at once with a tool
   error "pending approval ID" (an MCP client times out long before a human
   answers) and the retry that carries the id is honoured once approved;
4. the outcome — `Guard.record_outcome` puts the output into the session
   before the client sees it; if it cannot be recorded the output is
   withheld.

Every answer carries ``_meta["aarm.dev/decision"]``: the decision, its id,
rules and reason, so a program can act on it without parsing text.

Fail closed: anything unexpected while deciding is a DENY (the Guard writes
a receipt where it can); the gateway never forwards a call it has no
ALLOW or MODIFY for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import mcp.types as types
from mcp import ClientSession
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import McpError

from aarm_runtime import artifact as fmt
from aarm_runtime import values

from aarmc.gateway.names import ArgumentNameClash, ToolNames
from aarmc.gateway.visibility import may_not_deny
from aarmc.gateway.wire import BadArguments, exact_arguments, to_wire, typed_to_wire

__all__ = [
    "ARG_APPROVAL",
    "DEFAULT_MAX_ARGUMENT_BYTES",
    "META_APPROVAL",
    "META_DECISION",
    "MAX_TOOL_NAME",
    "Gateway",
]

log = logging.getLogger("aarmc.gateway")

ARG_APPROVAL = "_aarm_approval"
META_APPROVAL = "aarm.dev/approval"
META_DECISION = "aarm.dev/decision"
MAX_TOOL_NAME = 256
MAX_APPROVAL_ID = 128
DEFAULT_MAX_ARGUMENT_BYTES = 1024 * 1024
DEFAULT_CALL_TIMEOUT_S = 300.0


def _invalid(message: str) -> McpError:
    return McpError(types.ErrorData(code=types.INVALID_PARAMS, message=message))


def _text_of(result: types.CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.EmbeddedResource) and isinstance(block.resource, types.TextResourceContents):
            parts.append(block.resource.text)
    return "\n".join(parts)


def _output_of(result: types.CallToolResult) -> Any:
    """What enters the session as the tool's output: structured content when there is some, else its text."""
    if result.structuredContent is not None:
        return result.structuredContent
    return _text_of(result)


def _duration(seconds: int) -> str:
    """A timeout as the policy language writes it.

    >>> _duration(900), _duration(90), _duration(7200)
    ('15m', '90s', '2h')
    """
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _by_rules(ids: tuple[str, ...]) -> str:
    """The deciding rules, as the answer names them.

    >>> _by_rules(("a",)), _by_rules(("a", "b"))
    ('rule `a`', 'rules `a`, `b`')
    """
    return ("rule " if len(ids) == 1 else "rules ") + ", ".join(f"`{r}`" for r in ids)


class _SessionState:
    """One client session: its runtime session, opened by the first tool call.

    Not at connection time: a request the transport refuses (a bad Host
    header, a malformed first message) also starts a server session, and it
    must leave nothing in the receipt log.
    """

    def __init__(self, open_session: Any) -> None:
        self._open = open_session
        self._lock = anyio.Lock()
        self.session: Any = None

    async def get(self) -> Any:
        async with self._lock:
            if self.session is None:
                self.session = await anyio.to_thread.run_sync(self._open)
            return self.session


class Gateway:
    """The proxy's logic between a Guard and an upstream `ClientSession`; `server()` is the MCP side.

    `guard` is an `aarm_runtime.guard.Guard`; `upstream` an initialised
    `mcp.ClientSession`. `open_session` opens a runtime session for a new
    client session (a callable, so transports can bind identity and intent).
    """

    def __init__(
        self,
        guard: Any,
        upstream: ClientSession,
        *,
        open_session: Any,
        prefix: str | None = None,
        max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        approve_hint: str = "aarmc approve",
        name: str = "aarmc-gateway",
    ) -> None:
        self.guard = guard
        self.upstream = upstream
        self.artifact: fmt.Artifact = guard.engine.artifact
        self._open_session = open_session
        self.prefix = prefix
        self.max_argument_bytes = max_argument_bytes
        self.call_timeout_s = call_timeout_s
        self.approve_hint = approve_hint
        self.name = name
        self.names = ToolNames({}, {})
        self.receipts_path: Any = None  # set by `open_gateway`, for what the gateway reports
        self._upstream_tools: list[types.Tool] = []

    # ---- upstream ------------------------------------------------------------------

    async def refresh_tools(self) -> list[types.Tool]:
        """Every tool the upstream lists (all pages); rebuilds the name map."""
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(1000):
            page = await self.upstream.list_tools(params=types.PaginatedRequestParams(cursor=cursor)
                                                  if cursor else None)
            tools.extend(page.tools)
            cursor = page.nextCursor
            if not cursor:
                break
        self._upstream_tools = tools
        self.names = ToolNames.build(((t.name, t.inputSchema) for t in tools), prefix=self.prefix)
        return tools

    def visible(self, tools: list[types.Tool]) -> list[types.Tool]:
        out = []
        for tool in tools:
            name = self.names.policy_name(tool.name)
            if name is not None and may_not_deny(self.artifact, name):
                out.append(tool)
        return out

    # ---- the MCP server side -----------------------------------------------------

    def server(self) -> Server:
        """A low-level MCP server whose handlers are this gateway's; one run per client session."""

        @contextlib.asynccontextmanager
        async def lifespan(_: Server) -> AsyncIterator[_SessionState]:
            state = _SessionState(self._open_session)
            try:
                yield state
            finally:
                if state.session is not None:
                    with anyio.CancelScope(shield=True):
                        try:
                            await anyio.to_thread.run_sync(self.guard.close_session, state.session)
                        except Exception as err:  # noqa: BLE001 - closing must not mask the session's end
                            log.warning("could not close runtime session: %s", err)

        server: Server = Server(self.name, instructions="Tool calls pass through an AARM policy gateway (aarmc).",
                                lifespan=lifespan)

        async def list_tools(_: types.ListToolsRequest) -> types.ServerResult:
            tools = await self.refresh_tools()
            return types.ServerResult(types.ListToolsResult(tools=self.visible(tools)))

        async def call_tool(req: types.CallToolRequest) -> types.ServerResult:
            state: _SessionState = server.request_context.lifespan_context
            return types.ServerResult(await self.call(state.get, req.params))

        server.request_handlers[types.ListToolsRequest] = list_tools
        server.request_handlers[types.CallToolRequest] = call_tool
        return server

    # ---- one call ---------------------------------------------------------------------

    async def call(self, get_session: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        """Decide one `tools/call` and act on the decision; protocol errors raise `McpError`.

        `get_session` returns (opening it on first use) the client session's runtime session.
        """
        mcp_name = params.name
        if not mcp_name or len(mcp_name) > MAX_TOOL_NAME:
            raise _invalid(f"a tool name must have 1 to {MAX_TOOL_NAME} characters")
        args = dict(params.arguments or {})
        approval = self._approval_id(args, params)
        policy_name = self.names.policy_name(mcp_name) or self._unlisted_name(mcp_name)
        try:
            # From here on, params carry the policy's names; the server's come back in `_forward`.
            args = self.names.to_policy_args(mcp_name, args)
            exact = exact_arguments(args, self.max_argument_bytes)
        except (BadArguments, ArgumentNameClash) as err:
            raise _invalid(str(err)) from None

        try:
            session = await get_session()
            if approval is None:
                sub = await anyio.to_thread.run_sync(functools.partial(self.guard.submit, session, policy_name, exact))
            else:
                sub = await anyio.to_thread.run_sync(
                    functools.partial(self.guard.redeem, session, approval, policy_name, exact))
        except Exception as err:  # noqa: BLE001 - fail closed: no decision is a DENY
            log.error("decision failed for `%s`: %s", policy_name, err)
            return self._error(f"aarm: DENY `{policy_name}`: the gateway could not decide ({err}); nothing was run",
                               {"decision": "deny", "reason": "evaluation-error", "status": "deny"})

        info = {"decision": sub.decision.decision, "decision_id": sub.decision_id, "rules": list(sub.decision.rules),
                "reason": sub.decision.reason, "status": sub.status}
        if sub.status == "deny":
            return self._error(self._denial_text(policy_name, sub), info)
        if sub.status == "pending":
            return self._error(self._pending_text(policy_name, sub), info)
        if sub.status not in ("allow", "modify"):
            return self._error(f"aarm: DENY `{policy_name}`: unknown submission status `{sub.status}`", info)
        try:
            if sub.status == "allow":
                forward = self._with_defaults(policy_name, args)
            else:
                forward = self._modified(policy_name, args, exact, sub.decision)
                info["params"] = sub.decision.params
            forward = self.names.to_server_args(mcp_name, forward)
        except Exception as err:  # noqa: BLE001 - authorised but not sendable: it does not run, and says so
            now = time.time_ns()
            await self._record(session, sub, ok=False, output=None, started=now, ended=now,
                               error=f"not forwarded: {err}")
            return self._error(f"aarm: `{policy_name}` was allowed but could not be forwarded ({err}); "
                               "nothing was run", info)
        return await self._forward(session, mcp_name, forward, sub, info)

    def _approval_id(self, args: dict[str, Any], params: types.CallToolRequestParams) -> str | None:
        ids = []
        if ARG_APPROVAL in args:
            ids.append(args.pop(ARG_APPROVAL))
        meta = params.meta
        if meta is not None and meta.model_extra and META_APPROVAL in meta.model_extra:
            ids.append(meta.model_extra[META_APPROVAL])
        if not ids:
            return None
        for got in ids:
            if not isinstance(got, str) or not got or len(got) > MAX_APPROVAL_ID:
                raise _invalid(f"`{ARG_APPROVAL}` / `_meta.{META_APPROVAL}` must be an approval id "
                               f"(a string of 1 to {MAX_APPROVAL_ID} characters)")
        if len(set(ids)) > 1:
            raise _invalid(f"`{ARG_APPROVAL}` and `_meta.{META_APPROVAL}` name different approvals")
        return ids[0]

    def _unlisted_name(self, mcp_name: str) -> str:
        # A tool the upstream does not list is decided under the name it would
        # have, which the policy does not declare (DENY unknown-tool, recorded).
        if self.prefix is None:
            return mcp_name
        from aarmc.mcp_import import identifier

        return f"{identifier(self.prefix)}.{identifier(mcp_name)}"

    def _entry(self, policy_name: str) -> fmt.ToolEntry | None:
        entry = self.artifact.tool(policy_name)
        return entry if entry is not None and entry.wraps is None else None

    def _with_defaults(self, policy_name: str, args: dict[str, Any]) -> dict[str, Any]:
        """The arguments plus the policy's defaults for absent params: the server runs what was decided."""
        entry = self._entry(policy_name)
        if entry is None:
            return args
        out = dict(args)
        for p in entry.params:
            if p.name not in out and p.has_default and p.default is not None:
                out[p.name] = to_wire(values.to_json_value(p.default))
        return out

    def _modified(self, policy_name: str, args: dict[str, Any], exact: dict[str, Any], decision: Any) -> dict[str, Any]:
        """The decision's params as JSON for the server; unchanged params keep the client's exact wire form."""
        new = decision.params
        entry = self.artifact.tool(policy_name)
        if decision.wrapper is not None or entry is None or entry.wraps is not None:
            # A meta-tool's MODIFY rewrites the wrapped tool's params, which sit
            # inside the meta-tool's arguments: put them back where they came from.
            return self._rewrap(policy_name, args, decision)
        types_by_name = {p.name: p.type for p in entry.params}
        out: dict[str, Any] = {}
        for key, value in new.items():
            if key in args and key in exact and values.to_jsonable(exact[key]) == value:
                out[key] = args[key]
            else:
                out[key] = typed_to_wire(value, types_by_name.get(key))
        return out

    def _rewrap(self, policy_name: str, args: dict[str, Any], decision: Any) -> dict[str, Any]:
        entry = self.artifact.tool(policy_name)
        out = dict(args)
        cursor = out
        while entry is not None and entry.wraps is not None:
            name_param, args_param = entry.wraps
            inner_name = cursor.get(name_param)
            inner_args = cursor.get(args_param)
            if not isinstance(inner_name, str) or not isinstance(inner_args, Mapping):
                break
            inner_entry = self.artifact.tool(inner_name)
            if inner_entry is not None and inner_entry.wraps is None:
                types_by_name = {p.name: p.type for p in inner_entry.params}
                cursor[args_param] = {k: typed_to_wire(v, types_by_name.get(k)) for k, v in decision.params.items()}
                return out
            cursor[args_param] = dict(inner_args)
            cursor = cursor[args_param]
            entry = inner_entry
        raise RuntimeError(f"cannot place the modified params of `{decision.tool}` inside `{policy_name}`")

    async def _forward(self, session: Any, mcp_name: str, args: dict[str, Any], sub: Any,
                       info: dict[str, Any]) -> types.CallToolResult:
        started = time.time_ns()
        try:
            result = await self.upstream.call_tool(mcp_name, args,
                                                   read_timeout_seconds=timedelta(seconds=self.call_timeout_s))
        except Exception as err:  # noqa: BLE001 - the server failed: recorded as a failed outcome
            ended = time.time_ns()
            message = err.error.message if isinstance(err, McpError) else (str(err) or type(err).__name__)
            await self._record(session, sub, ok=False, output=None, started=started, ended=ended, error=message)
            return self._error(f"aarm: `{mcp_name}` was allowed but the server failed: {message}", info)
        ended = time.time_ns()
        recorded = await self._record(session, sub, ok=not result.isError, output=_output_of(result), started=started,
                                      ended=ended, error=_text_of(result) if result.isError else None)
        if not recorded:
            return self._error(f"aarm: `{mcp_name}` ran but its outcome could not be recorded; the output is withheld",
                               info)
        meta = dict(result.meta or {})
        meta[META_DECISION] = info
        return result.model_copy(update={"meta": meta})

    async def _record(self, session: Any, sub: Any, *, ok: bool, output: Any, started: int, ended: int,
                      error: str | None) -> bool:
        kwargs: dict[str, Any] = {"ok": ok, "output": output, "started_ns": started, "ended_ns": ended}
        if error is not None:
            kwargs["error"] = error
        try:
            await anyio.to_thread.run_sync(
                functools.partial(self.guard.record_outcome, session, sub.decision_id, **kwargs))
        except Exception as err:  # noqa: BLE001 - an unrecorded output never reaches the agent
            log.error("could not record the outcome of decision %s: %s", sub.decision_id, err)
            return False
        return True

    # ---- answers --------------------------------------------------------------------

    @staticmethod
    def _error(text: str, info: dict[str, Any]) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=True,
                                    _meta={META_DECISION: info})

    @staticmethod
    def _denial_text(policy_name: str, sub: Any) -> str:
        d = sub.decision
        by = f" by {_by_rules(d.rules)}" if d.rules else ""
        return f"aarm: DENY `{policy_name}`{by}: {d.message} (reason: {d.reason}; decision {sub.decision_id})"

    def _pending_text(self, policy_name: str, sub: Any) -> str:
        d = sub.decision
        rules = f" ({_by_rules(d.rules)})" if d.rules else ""
        within = f" within {_duration(d.timeout_s)}" if d.timeout_s is not None else ""
        retry = f"retry the same call with the same arguments plus \"{ARG_APPROVAL}\": \"{sub.decision_id}\""
        head = f"aarm: pending approval {sub.decision_id}: `{policy_name}`"
        if d.decision == "step_up":
            who = f" by {', '.join(d.approvers)}" if d.approvers else ""
            return (f"{head} needs a human's approval{who}{rules}: {d.message}. Nothing was run. A human approves"
                    f"{within} with `{self.approve_hint} {sub.decision_id}`; then {retry}.")
        if d.reason == "pending-dependency":
            return (f"{head} waits: {d.message}. Nothing was run. Once that action is approved or refused, "
                    f"{retry}: it is decided again.")
        # A DEFER waits for context the gateway cannot supply: a resolver or the deferral service may.
        deadline = f" after {_duration(d.timeout_s)}" if d.timeout_s is not None else ""
        return (f"{head} is deferred{rules}: {d.message}. Nothing was run. When the missing context is there, "
                f"{retry}: it is decided again; without it, it is denied{deadline}.")
