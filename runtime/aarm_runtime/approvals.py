"""STEP_UP approvals (AARM R4): a human approves or rejects one decision, by its id.

The `Guard` hands every STEP_UP decision to an approvals service as an
`ApprovalRequest` and learns the answer from it. `Approvals` is the
in-process default: a queue of pending requests that an operator answers by
decision id (`approve` / `reject`), from the CLI or the HTTP API in front of
the same process. An answer is:

- bound to the decision id **and** the argument hash (`ApprovalRequest.args_hash`):
  an approver may pass the hash they were shown, and an approval answers for
  exactly those arguments — the guard refuses a redemption with other ones;
- given once: a second approve or reject of the same id is refused;
- in time or not at all: after the deadline the request is answered
  ``timeout`` (DENY), and a late approval is refused;
- recorded before it counts: the guard's listener writes the approval receipt
  (approver's name included) before `approve` returns; if the receipt cannot
  be written the approval is refused and the request stays pending.

Any other implementation (a remote queue, a chat-ops bot) provides the same
methods: ``attach``, ``request``, ``answer``, ``wait``, ``expire`` (and for
operators ``approve``, ``reject``, ``pending``). The guard treats an
exception from any of them as "the approval service is down": the action is
denied and a receipt says so.

>>> approvals = Approvals(clock=lambda: 100.0)
>>> approvals.request(ApprovalRequest(decision_id="d1", session_id="s1", action_id="a1", tool="bank.send_money",
...     args_hash="ab" * 32, approvers=("finance-oncall",), rules=("big-transfer",), message="",
...     requested_at=100.0, deadline=160.0))
>>> approvals.approve("d1", approver="alice").verdict
'approved'
>>> approvals.answer("d1").approver
'alice'
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "APPROVED",
    "ApprovalAnswer",
    "ApprovalError",
    "ApprovalRequest",
    "Approvals",
    "CANCELLED",
    "REJECTED",
    "TIMEOUT",
]

APPROVED, REJECTED, TIMEOUT, CANCELLED = "approved", "rejected", "timeout", "cancelled"
_VERDICTS = (APPROVED, REJECTED, TIMEOUT, CANCELLED)


class ApprovalError(Exception):
    """An approve or reject that cannot be accepted (unknown id, answered, timed out, wrong arguments)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One STEP_UP decision waiting for a human.

    `args_hash` is what an approval is bound to (hex SHA-256, see
    docs/runtime.md "argument hash"); `params` are the proposed params, for
    the approver's eyes only (never written to a receipt by this module).
    Times are in the guard's clock (seconds since the epoch).
    """

    decision_id: str
    session_id: str
    action_id: str
    tool: str
    args_hash: str
    approvers: tuple[str, ...]
    rules: tuple[str, ...]
    message: str
    requested_at: float
    deadline: float
    wrapper: str | None = None
    principal: str | None = None
    params: Any = None

    def to_json(self) -> dict[str, Any]:
        """What `aarmc approvals` lists (params excluded: they may be sensitive)."""
        return {"decision_id": self.decision_id, "session": self.session_id, "action_id": self.action_id,
                "tool": self.tool, "wrapper": self.wrapper, "args_hash": self.args_hash,
                "approvers": list(self.approvers), "rules": list(self.rules), "message": self.message,
                "principal": self.principal, "requested_at": self.requested_at, "deadline": self.deadline}


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovalAnswer:
    """How a request ended: `verdict` is approved, rejected, timeout or cancelled; `approver` who said so."""

    decision_id: str
    verdict: str
    approver: str
    args_hash: str
    at: float
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in _VERDICTS:
            raise ValueError(f"approval verdict `{self.verdict}` is not one of {', '.join(_VERDICTS)}")
        if not isinstance(self.approver, str) or not self.approver:
            raise ValueError("an approval answer needs a non-empty approver name")


Listener = Callable[[ApprovalRequest, ApprovalAnswer], None]


class _Entry:
    __slots__ = ("request", "answer", "answering")

    def __init__(self, request: ApprovalRequest) -> None:
        self.request = request
        self.answer: ApprovalAnswer | None = None
        self.answering = False


class Approvals:
    """The in-process approvals queue; thread-safe.

    *authorize*, when given, is called as ``authorize(approver, request)``
    before an approve or reject and must return True: it is where a
    deployment maps the policy's approver groups (``approvers
    ["finance-oncall"]``) to people. Without it any named approver is
    accepted, and the name is what the receipt records. *clock* defaults to
    the clock of the guard it is attached to. Answered requests are kept
    (bounded by *keep*) so that a late `answer` still finds them.
    """

    SYSTEM = "aarm-runtime"

    def __init__(self, *, clock: Callable[[], float] | None = None,
                 authorize: Callable[[str, ApprovalRequest], bool] | None = None, keep: int = 10_000) -> None:
        self._clock = clock
        self._authorize = authorize
        self._keep = keep
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._entries: dict[str, _Entry] = {}
        self._answered: collections.deque[str] = collections.deque()
        self._listener: Listener | None = None
        self.system_name = self.SYSTEM

    # ---- the guard's side -------------------------------------------------------------

    def attach(self, listener: Listener, *, clock: Callable[[], float] | None = None, name: str | None = None) -> None:
        """Called once by the `Guard` that uses this service: every answer is passed to *listener* first."""
        with self._lock:
            _bind(self, listener, clock, name)

    def request(self, request: ApprovalRequest) -> None:
        """Queue a STEP_UP decision for approval."""
        if not isinstance(request, ApprovalRequest):
            raise TypeError(f"expected an `ApprovalRequest`, got `{type(request).__name__}`")
        with self._lock:
            if request.decision_id in self._entries:
                raise ApprovalError(f"decision `{request.decision_id}` is already queued for approval")
            self._entries[request.decision_id] = _Entry(request)

    def answer(self, decision_id: str) -> ApprovalAnswer | None:
        """The final answer, or None while the request is pending (never blocks)."""
        with self._lock:
            entry = self._entries.get(decision_id)
            if entry is None:
                raise ApprovalError(f"no approval request for decision `{decision_id}`")
            return entry.answer

    def wait(self, decision_id: str, timeout: float | None) -> ApprovalAnswer | None:
        """Block until the request is answered or *timeout* seconds (real time) pass; None = no answer yet."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._changed:
            while True:
                entry = self._entries.get(decision_id)
                if entry is None:
                    raise ApprovalError(f"no approval request for decision `{decision_id}`")
                if entry.answer is not None:
                    return entry.answer
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def expire(self, decision_id: str, *, verdict: str = TIMEOUT, reason: str | None = None) -> ApprovalAnswer:
        """End a pending request without a human (timeout, or cancelled); return the final answer.

        If a human answered first, that answer is returned unchanged.
        """
        if verdict not in (TIMEOUT, CANCELLED):
            raise ValueError(f"expire answers `timeout` or `cancelled`, not `{verdict}`")
        entry, answer = self._begin(decision_id, None, None, expire=True)
        if answer is not None:
            return answer
        answer = ApprovalAnswer(decision_id=decision_id, verdict=verdict, approver=self.system_name,
                                args_hash=entry.request.args_hash, at=self._now(), reason=reason)
        # A timeout stands even when its receipt cannot be written: the guard
        # denies either way, and a human must not be able to approve after it.
        try:
            self._notify(entry, answer)
        finally:
            self._finish(entry, answer)
        return answer

    # ---- the operator's side ----------------------------------------------------------

    def approve(self, decision_id: str, approver: str, *, args_hash: str | None = None,
                reason: str | None = None) -> ApprovalAnswer:
        """Approve one pending STEP_UP decision; *args_hash*, when given, must be the request's."""
        return self._human(decision_id, APPROVED, approver, args_hash, reason)

    def reject(self, decision_id: str, approver: str, *, reason: str | None = None) -> ApprovalAnswer:
        """Reject one pending STEP_UP decision (the action is denied)."""
        return self._human(decision_id, REJECTED, approver, None, reason)

    def pending(self) -> list[ApprovalRequest]:
        """Requests still waiting for an answer, oldest first."""
        with self._lock:
            return [e.request for e in self._entries.values() if e.answer is None]

    def get(self, decision_id: str) -> ApprovalRequest | None:
        with self._lock:
            entry = self._entries.get(decision_id)
            return None if entry is None else entry.request

    # ---- internals ------------------------------------------------------------------------

    def _now(self) -> float:
        return (self._clock or time.time)()

    def _human(self, decision_id: str, verdict: str, approver: str, args_hash: str | None,
               reason: str | None) -> ApprovalAnswer:
        if not isinstance(approver, str) or not approver.strip():
            raise ApprovalError("an approver name is required")
        if approver == self.system_name:
            raise ApprovalError(f"`{approver}` is the runtime's own name and cannot approve")
        entry, answered = self._begin(decision_id, approver, args_hash, expire=False)
        if answered is not None:
            raise ApprovalError(f"decision `{decision_id}` was already answered ({answered.verdict} by "
                                f"`{answered.approver}`)")
        now = self._now()
        if now >= entry.request.deadline:
            self._release(entry)
            self.expire(decision_id)
            raise ApprovalError(f"approval of decision `{decision_id}` timed out")
        answer = ApprovalAnswer(decision_id=decision_id, verdict=verdict, approver=approver,
                                args_hash=entry.request.args_hash, at=now, reason=reason)
        try:
            self._notify(entry, answer)
        except BaseException:
            # The receipt was not written: the approval does not count, the request stays pending.
            self._release(entry)
            raise
        self._finish(entry, answer)
        return answer

    def _begin(self, decision_id: str, approver: str | None, args_hash: str | None,
               *, expire: bool) -> tuple[_Entry, ApprovalAnswer | None]:
        with self._changed:
            while True:
                entry = self._entries.get(decision_id)
                if entry is None:
                    raise ApprovalError(f"no approval request for decision `{decision_id}`")
                if entry.answer is not None:
                    return entry, entry.answer
                if not entry.answering:
                    break
                # Another answer is being recorded; its outcome decides this one.
                self._changed.wait()
            if not expire:
                if args_hash is not None and args_hash != entry.request.args_hash:
                    raise ApprovalError(f"decision `{decision_id}` was requested for arguments "
                                        f"`{entry.request.args_hash}`, not `{args_hash}`")
                if self._authorize is not None and not self._authorize(approver, entry.request):
                    raise ApprovalError(f"`{approver}` may not answer for {', '.join(entry.request.approvers)}")
            entry.answering = True
            return entry, None

    def _release(self, entry: _Entry) -> None:
        with self._changed:
            entry.answering = False
            self._changed.notify_all()

    def _notify(self, entry: _Entry, answer: ApprovalAnswer) -> None:
        listener = self._listener
        if listener is not None:
            listener(entry.request, answer)

    def _finish(self, entry: _Entry, answer: ApprovalAnswer) -> None:
        with self._changed:
            entry.answering = False
            entry.answer = answer
            self._answered.append(answer.decision_id)
            while len(self._answered) > self._keep:
                self._entries.pop(self._answered.popleft(), None)
            self._changed.notify_all()


def _bind(service: Any, listener: Any, clock: Callable[[], float] | None, name: str | None) -> None:
    """What every approvals service's `attach` does first (its lock held): one guard per service, the
    guard's clock unless the service was given one, the guard's name for the answers it makes itself."""
    if service._listener is not None and service._listener != listener:
        raise ApprovalError("this approvals service already serves another guard")
    service._listener = listener
    if service._clock is None and clock is not None:
        service._clock = clock
    if name:
        service.system_name = name
