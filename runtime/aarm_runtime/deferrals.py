"""DEFER (AARM R4): a suspended action waits for context, then is decided again, or is denied.

A DEFER decision is handed to the deferral service as a `DeferralRequest`.
It is resolved in one of four ways:

- **context arrives**: a resolver registered on the guard
  (`Guard.add_resolver`) returns a `ContextUpdate` (env, intent or risk
  values), or someone calls `Deferrals.provide` (an operator, the HTTP API,
  a service that finished computing a signal). The guard applies the update
  to the session and decides the action again under a **new decision id**;
  a deferral-resolution receipt (verdict ``resolved``) names the new id.
- **its dependencies finish** (reason ``pending-dependency``: an earlier
  action of the same session was pending when this one arrived): the guard
  decides it again once none of them is pending any more.
- **someone denies it** (`Deferrals.deny`): verdict ``denied``, DENY.
- **nothing happens before the deadline**: verdict ``timeout``, DENY. A
  DEFER is never a soft allow.

The service only stores requests, updates and denials and wakes waiters;
the guard decides and writes every receipt. An implementation that raises
counts as "the deferral service is down": the action is denied with a
receipt.

>>> deferrals = Deferrals(clock=lambda: 0.0)
>>> deferrals.request(DeferralRequest(decision_id="d1", session_id="s1", action_id="a1", tool="creds.rotate",
...     args_hash="00" * 32, reason="absent-context", message="", rules=("rotate-in-window",),
...     fields=("env.maintenance_window",), requested_at=0.0, deadline=300.0))
>>> deferrals.provide("d1", env={"maintenance_window": True}, by="secrets-team")
>>> deferrals.take("d1")[0].env
{'maintenance_window': True}
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ContextUpdate", "DeferralError", "DeferralRequest", "Deferrals", "Resolver"]


class DeferralError(Exception):
    """A provide or deny that cannot be accepted (unknown or finished deferral, bad update)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DeferralRequest:
    """One deferred action. `fields` names the absent context the decision depends on (reason
    ``absent-context``); `depends_on` the pending decisions it waits for (reason ``pending-dependency``).
    `env` and `intent` are snapshots of the session's sections when it was deferred."""

    decision_id: str
    session_id: str
    action_id: str
    tool: str
    args_hash: str
    reason: str
    message: str
    rules: tuple[str, ...]
    fields: tuple[str, ...]
    requested_at: float
    deadline: float
    depends_on: tuple[str, ...] = ()
    wrapper: str | None = None
    principal: str | None = None
    params: Any = None
    env: Mapping[str, Any] | None = None
    intent: Mapping[str, Any] | None = None
    risk: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"decision_id": self.decision_id, "session": self.session_id, "action_id": self.action_id,
                "tool": self.tool, "wrapper": self.wrapper, "args_hash": self.args_hash, "reason": self.reason,
                "message": self.message, "rules": list(self.rules), "fields": list(self.fields),
                "depends_on": list(self.depends_on), "principal": self.principal,
                "requested_at": self.requested_at, "deadline": self.deadline}


def _section(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise DeferralError(f"a context update's `{what}` must be an object, got `{type(value).__name__}`")
    for key in value:
        if not isinstance(key, str):
            raise DeferralError(f"a context update's `{what}` keys must be strings")
    return dict(value)


@dataclasses.dataclass(frozen=True, slots=True)
class ContextUpdate:
    """Context a resolver or an operator adds: env and intent values for the session, risk values for the
    deferred action. Keys given replace the session's; values are validated by the guard when applied
    (an invalid value makes the re-evaluation a DENY ``invalid-params``, as any invalid context does).
    `by` names who supplied it; it goes in the deferral-resolution receipt."""

    env: Mapping[str, Any] | None = None
    intent: Mapping[str, Any] | None = None
    risk: Mapping[str, Any] | None = None
    by: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", _section(self.env, "env"))
        object.__setattr__(self, "intent", _section(self.intent, "intent"))
        object.__setattr__(self, "risk", _section(self.risk, "risk"))
        if not isinstance(self.by, str):
            raise DeferralError("a context update's `by` must be a string")

    @property
    def empty(self) -> bool:
        return not (self.env or self.intent or self.risk)

    def merged(self, later: ContextUpdate) -> ContextUpdate:
        """Both updates, *later* winning key by key; `by` lists both suppliers."""
        def join(a: Mapping | None, b: Mapping | None) -> dict | None:
            if a is None and b is None:
                return None
            return {**(a or {}), **(b or {})}

        names = [n for n in (self.by, later.by) if n]
        return ContextUpdate(env=join(self.env, later.env), intent=join(self.intent, later.intent),
                             risk=join(self.risk, later.risk), by=", ".join(dict.fromkeys(names)))


#: A resolver gets the deferred request and returns the context it can add, or None.
Resolver = Callable[[DeferralRequest], "ContextUpdate | Mapping[str, Any] | None"]

DenyListener = Callable[[DeferralRequest, str, "str | None"], None]


class _Entry:
    __slots__ = ("request", "update", "denied", "done")

    def __init__(self, request: DeferralRequest) -> None:
        self.request = request
        self.update: ContextUpdate | None = None
        self.denied: tuple[str, str | None] | None = None
        self.done = False


class Deferrals:
    """The in-process deferral service; thread-safe."""

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._entries: dict[str, _Entry] = {}
        self._version = 0
        self._listener: DenyListener | None = None

    def attach(self, listener: DenyListener, *, clock: Callable[[], float] | None = None) -> None:
        """Called once by the `Guard` that uses this service; *listener* records a denial before it counts."""
        with self._lock:
            if self._listener is not None and self._listener != listener:
                raise DeferralError("this deferral service already serves another guard")
            self._listener = listener
            if self._clock is None and clock is not None:
                self._clock = clock

    def request(self, request: DeferralRequest) -> None:
        if not isinstance(request, DeferralRequest):
            raise TypeError(f"expected a `DeferralRequest`, got `{type(request).__name__}`")
        with self._changed:
            if request.decision_id in self._entries:
                raise DeferralError(f"decision `{request.decision_id}` is already deferred")
            self._entries[request.decision_id] = _Entry(request)

    def provide(self, decision_id: str, *, env: Mapping[str, Any] | None = None,
                intent: Mapping[str, Any] | None = None, risk: Mapping[str, Any] | None = None, by: str) -> None:
        """Add context for a deferred decision; the guard decides it again (new decision id) with it."""
        if not isinstance(by, str) or not by.strip():
            raise DeferralError("`by` must name who provides the context")
        update = ContextUpdate(env=env, intent=intent, risk=risk, by=by)
        if update.empty:
            raise DeferralError("a context update needs env, intent or risk values")
        with self._changed:
            entry = self._live(decision_id)
            entry.update = update if entry.update is None else entry.update.merged(update)
            self._version += 1
            self._changed.notify_all()

    def deny(self, decision_id: str, *, by: str, reason: str | None = None) -> None:
        """Deny a deferred decision now (verdict ``denied``); recorded by the guard before it counts."""
        if not isinstance(by, str) or not by.strip():
            raise DeferralError("`by` must name who denies the action")
        with self._lock:
            entry = self._live(decision_id)
            listener = self._listener
        if listener is not None:
            listener(entry.request, by, reason)
        with self._changed:
            entry.denied = (by, reason)
            self._version += 1
            self._changed.notify_all()

    def take(self, decision_id: str) -> tuple[ContextUpdate | None, tuple[str, str | None] | None]:
        """(update supplied so far, denial) of a deferral; the update is handed over only once."""
        with self._lock:
            entry = self._entries.get(decision_id)
            if entry is None:
                raise DeferralError(f"no deferral for decision `{decision_id}`")
            update, entry.update = entry.update, None
            return update, entry.denied

    def wait(self, decision_id: str, timeout: float | None) -> bool:
        """Block until something changes for any deferral (an update, a denial, a dependency finishing)
        or *timeout* seconds pass; True if something changed."""
        end = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._changed:
            seen = self._version
            while self._version == seen:
                entry = self._entries.get(decision_id)
                if entry is None or entry.done:
                    return True
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def notify(self) -> None:
        """Wake every waiter: a decision they may depend on finished."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def done(self, decision_id: str) -> None:
        """The guard finished this deferral (resolved, denied, timed out, cancelled)."""
        with self._changed:
            entry = self._entries.pop(decision_id, None)
            if entry is not None:
                entry.done = True
            self._version += 1
            self._changed.notify_all()

    def pending(self) -> list[DeferralRequest]:
        with self._lock:
            return [e.request for e in self._entries.values() if not e.done]

    def get(self, decision_id: str) -> DeferralRequest | None:
        with self._lock:
            entry = self._entries.get(decision_id)
            return None if entry is None else entry.request

    def _live(self, decision_id: str) -> _Entry:
        entry = self._entries.get(decision_id)
        if entry is None or entry.done:
            raise DeferralError(f"no pending deferral for decision `{decision_id}`")
        if entry.denied is not None:
            raise DeferralError(f"deferral `{decision_id}` was denied by `{entry.denied[0]}`")
        return entry
