"""SDK instrumentation: guard plain Python tool functions with a decorator.

    from aarm_runtime.sdk import guarded, use_session

    @guarded(guard, "email.send")
    def send_email(to, subject, body, cc=()):
        ...

    with use_session(session):            # or send_email(..., aarm_session=session)
        send_email(to="bob@corp.example", subject="notes", body="...")

A guarded function's arguments, bound by name to its signature, are the
action's params (arguments left at the function's defaults are not sent:
the policy's declared defaults apply). The call goes through
`Guard.call` (`Guard.acall` for ``async def`` functions): DENY raises
`Denied` and the function never runs; MODIFY runs it with the modified
params; STEP_UP and DEFER block until resolved (with ``block=False`` they
raise `Pending` at once, for callers that retry with `Guard.redeem`). The
return value is recorded as the action's output. The session comes from the
``aarm_session=`` keyword of the call, else the decorator's *session*, else
the context variable set by `use_session` (per thread and per asyncio task);
no session at all raises `GuardError` and nothing runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aarm_runtime.guard import CallResult, Denied, Guard, GuardError, Pending, Session

__all__ = ["Denied", "GuardError", "Pending", "current_session", "guarded", "use_session"]

#: The session guarded functions use when none is passed explicitly.
current_session: contextvars.ContextVar[Session | None] = contextvars.ContextVar("aarm_session", default=None)

SESSION_KEYWORD = "aarm_session"


@contextlib.contextmanager
def use_session(session: Session) -> Iterator[Session]:
    """Make *session* the current one for guarded functions called inside the block."""
    if not isinstance(session, Session):
        raise TypeError(f"expected a `Session`, got `{type(session).__name__}`")
    token = current_session.set(session)
    try:
        yield session
    finally:
        current_session.reset(token)


def _check_signature(fn: Callable) -> inspect.Signature:
    sig = inspect.signature(fn)
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"guarded function `{fn.__qualname__}` has a positional-only parameter `{p.name}`: "
                            "params are passed by name")
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"guarded function `{fn.__qualname__}` takes `*{p.name}`: params are passed by name")
        if p.name == SESSION_KEYWORD:
            raise TypeError(f"guarded function `{fn.__qualname__}` may not name a parameter `{SESSION_KEYWORD}`")
    return sig


def guarded(guard: Guard, tool: str, *, session: Session | None = None,
            risk: Mapping[str, Any] | Callable[[dict], Mapping[str, Any] | None] | None = None,
            block: bool = True, result: bool = False) -> Callable[[Callable], Callable]:
    """Decorate a tool function so that every call is decided by *guard* as the action *tool*.

    *risk*: the risk signals for each call (a mapping, or a function of the
    params returning one). *result*: return the `CallResult` instead of the
    tool's value (and do not raise on DENY).
    """
    if not isinstance(guard, Guard):
        raise TypeError(f"expected a `Guard`, got `{type(guard).__name__}`")
    if not isinstance(tool, str) or not tool:
        raise TypeError("the tool name must be a non-empty string")

    def decorate(fn: Callable) -> Callable:
        sig = _check_signature(fn)
        var_kw = next((p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)

        def params_of(args: tuple, kwargs: dict) -> tuple[Session, dict]:
            chosen = kwargs.pop(SESSION_KEYWORD, None) or session or current_session.get()
            if chosen is None:
                raise GuardError(f"no session for guarded tool `{tool}`: pass `{SESSION_KEYWORD}=` or use "
                                 "`use_session(session)`")
            bound = sig.bind(*args, **kwargs)
            params = dict(bound.arguments)
            if var_kw is not None and var_kw in params:
                params.update(params.pop(var_kw))
            return chosen, params

        def risk_of(params: dict) -> Mapping[str, Any] | None:
            return risk(params) if callable(risk) else risk

        def unwrap(res: CallResult) -> Any:
            if result:
                return res
            if res.error is not None:
                raise res.error
            return res.value

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                chosen, params = params_of(args, kwargs)
                res = await guard.acall(chosen, tool, params, lambda p: fn(**p), risk_of(params), block=block)
                return unwrap(res)
            async_wrapper.__aarm_tool__ = tool  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            chosen, params = params_of(args, kwargs)
            return unwrap(guard.call(chosen, tool, params, lambda p: fn(**p), risk_of(params), block=block))
        wrapper.__aarm_tool__ = tool  # type: ignore[attr-defined]
        return wrapper

    return decorate
