"""LangChain tools under a `Guard`: every call is decided before the tool runs.

    from aarm_runtime.adapters.langchain import guard_tool
    from aarm_runtime.sdk import use_session

    send = guard_tool(send_email_tool, guard, action="email.send")   # any LangChain `BaseTool`
    with use_session(session):                                       # or guard_tool(..., session=session)
        agent_executor.invoke(...)                                   # the agent calls `send` as before

`guard_tool` returns a `StructuredTool` with the wrapped tool's name,
description and argument schema, so the model sees the same tool. When the
agent calls it, the validated arguments are the action's params (arguments
the model left out are not sent: the policy's declared defaults apply) and
the call goes through `Guard.call`:

- ALLOW: the wrapped tool runs, its result is recorded as the action's output;
- MODIFY: the wrapped tool runs with the policy's params (its own schema
  validates them again);
- DENY: the tool does not run; a `ToolDenied` (a LangChain `ToolException`)
  names the rules, the reason and the message. By default the tool handles
  it the LangChain way (``handle_tool_error``): the model receives
  ``"denied by rule `r` (reason): message"`` as the tool's answer — a
  ``ToolMessage`` with ``status="error"`` when it was called with a tool
  call — and can tell the user. ``raise_on_deny=True`` lets it propagate;
- STEP_UP and DEFER: the call blocks until a human approves (then runs),
  rejects, or the timeout passes (DENY). ``block=False`` answers at once
  with a ``ToolPending`` error naming the decision id instead.

The session is the one given to `guard_tool`, else the one set with
`aarm_runtime.sdk.use_session` (per thread and per asyncio task); with
neither, the call fails (`GuardError`) and nothing runs. Python floats the
model produced are read as the decimals their shortest repr spells.

Needs the ``langchain`` extra (``langchain-core``); this module is the only
part of `aarm_runtime` that imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool, ToolException

from aarm_runtime.guard import CallResult, Denied, Guard, GuardError, Pending, Session
from aarm_runtime.sdk import current_session

__all__ = ["ToolDenied", "ToolPending", "guard_tool", "guard_tools", "guarded_tool"]

Risk = Mapping[str, Any] | Callable[[dict], Mapping[str, Any] | None] | None


class ToolDenied(ToolException):
    """The policy denied the call (the tool did not run). `denied` is the runtime's `Denied`."""

    def __init__(self, denied: Denied, tool: str) -> None:
        rules = ", ".join(f"`{r}`" for r in denied.rules)
        which = f"rule {rules}" if len(denied.rules) == 1 else f"rules {rules}" if denied.rules else "the policy"
        super().__init__(f"`{tool}` was denied by {which} ({denied.reason}): {denied.message}")
        self.denied = denied
        self.decision = denied.decision
        self.decision_id = denied.decision_id
        self.rules = denied.rules
        self.reason = denied.reason


class ToolPending(ToolException):
    """The call waits for an approval or for context (``block=False``); retry with the decision id."""

    def __init__(self, pending: Pending, tool: str) -> None:
        super().__init__(f"`{tool}`: {pending} (retry once it is approved)")
        self.pending = pending
        self.decision_id = pending.decision_id


def _session(fixed: Session | None, tool: str) -> Session:
    chosen = fixed or current_session.get()
    if chosen is None:
        raise GuardError(f"no session for guarded LangChain tool `{tool}`: pass `session=` to guard_tool or use "
                         "`aarm_runtime.sdk.use_session(session)`")
    return chosen


def guard_tool(tool: BaseTool, guard: Guard, *, action: str | None = None, session: Session | None = None,
               risk: Risk = None, block: bool = True, raise_on_deny: bool = False) -> StructuredTool:
    """A `StructuredTool` that asks *guard* before running *tool*, as the policy action *action*.

    *action* defaults to the tool's name (LangChain tool names cannot hold
    the dots of policy names like ``email.send``, so usually it is given).
    *risk*: risk signals per call, a mapping or a function of the params.
    """
    if not isinstance(tool, BaseTool):
        raise TypeError(f"expected a LangChain `BaseTool`, got `{type(tool).__name__}`")
    if not isinstance(guard, Guard):
        raise TypeError(f"expected a `Guard`, got `{type(guard).__name__}`")
    action = action or tool.name
    if not isinstance(action, str) or not action:
        raise TypeError("the action name must be a non-empty string")

    def risk_of(params: dict) -> Mapping[str, Any] | None:
        return risk(params) if callable(risk) else risk

    def answer(res: CallResult) -> Any:
        if isinstance(res.error, Pending):
            raise ToolPending(res.error, action)
        if res.error is not None:
            raise ToolDenied(res.error, action)
        return res.value

    def run(callbacks: Any = None, **params: Any) -> Any:
        config = {"callbacks": callbacks} if callbacks is not None else None
        res = guard.call(_session(session, action), action, params, lambda p: tool.invoke(dict(p), config),
                         risk_of(params), block=block)
        return answer(res)

    async def arun(callbacks: Any = None, **params: Any) -> Any:
        config = {"callbacks": callbacks} if callbacks is not None else None
        res = await guard.acall(_session(session, action), action, params,
                                lambda p: tool.ainvoke(dict(p), config), risk_of(params), block=block)
        return answer(res)

    # A denial is an answer for the model, not a crash of the agent: LangChain's
    # handle_tool_error turns it into the tool's (error) output. Other
    # exceptions of the wrapped tool propagate as they would unguarded.
    handle: Any = False if raise_on_deny else _denial_text
    guarded = StructuredTool(name=tool.name, description=tool.description, args_schema=tool.args_schema,
                             func=run, coroutine=arun, return_direct=tool.return_direct,
                             handle_tool_error=handle, metadata={**(tool.metadata or {}), "aarm_action": action},
                             tags=tool.tags)
    return guarded


def _denial_text(err: ToolException) -> str:
    if isinstance(err, (ToolDenied, ToolPending)):
        return str(err)
    # Not ours (the wrapped tool raised a ToolException): let LangChain's default apply.
    return err.args[0] if err.args else "Tool execution error"


def guard_tools(tools: Iterable[BaseTool], guard: Guard, *, actions: Mapping[str, str] | None = None,
                session: Session | None = None, block: bool = True, raise_on_deny: bool = False) -> list[StructuredTool]:
    """`guard_tool` for each tool; *actions* maps a LangChain tool name to its policy action."""
    actions = dict(actions or {})
    out = [guard_tool(t, guard, action=actions.pop(t.name, None), session=session, block=block,
                      raise_on_deny=raise_on_deny) for t in tools]
    if actions:
        raise ValueError("`actions` names tools that were not given: " + ", ".join(f"`{n}`" for n in sorted(actions)))
    return out


def guarded_tool(guard: Guard, action: str, *, session: Session | None = None, name: str | None = None,
                 description: str | None = None, risk: Risk = None, block: bool = True,
                 raise_on_deny: bool = False) -> Callable[[Callable], StructuredTool]:
    """Decorator: a plain (sync or async) function becomes a guarded LangChain tool.

        @guarded_tool(guard, "email.send", name="send_email")
        def send_email(to: str, subject: str, body: str) -> str:
            "Send an email."
            ...
    """
    def decorate(fn: Callable) -> StructuredTool:
        import inspect

        if inspect.iscoroutinefunction(fn):
            base = StructuredTool.from_function(coroutine=fn, name=name, description=description)
        else:
            base = StructuredTool.from_function(fn, name=name, description=description)
        return guard_tool(base, guard, action=action, session=session, risk=risk, block=block,
                          raise_on_deny=raise_on_deny)
    return decorate
