"""A guarded session: the accumulated context of one agent session (AARM R2) and its context log.

`Session` is what `Guard.open_session` returns and every later call takes.
It holds, under one lock:

- the frozen identity (a `VerifiedIdentity`, verified at open and re-verified
  by the guard at every decision), the intent, the env, and for each
  decision the caller's risk signals;
- `context`, a `GuardContext` — the engine's `SessionContext` grown one
  executed action at a time: tags and the top label of data read (a tool
  without a declared output is unknown: top label, untrusted), counts per
  tool with times (for `within` windows), and token indexes of recorded
  outputs for provenance (`values.TokenIndex`: a value is "from" an output
  when it occurs there as a token, LANGUAGE.md §4; look-ups cost
  O(len(token)) for token-shaped values however long the session grows);
- `log`, the session's append-only hash-chained context log: every fact
  that entered the context (session opening, each decision, each executed
  action with its classification, each output digest, each context update,
  approvals and resolutions) as one deterministic CBOR entry;
  ``head = SHA-256(previous head ‖ entry)``. The head at decision time is
  the `context` digest of every receipt, so a receipt pins exactly what
  the session knew when it was written (`ContextLog.replay` recomputes it);
- the decisions made in the session and which of them are pending.

An action enters the history when it is **authorised** (ALLOW, MODIFY, an
approved STEP_UP redeemed), not when its outcome arrives: counts, tags and
the label are conservative from that moment on, so a burst of concurrent
calls cannot slip under a rate limit. Its output joins the provenance
indexes when `Guard.record_outcome` brings it. This is exactly the
LANGUAGE.md §7 session whose `history` lists those actions (with their
outputs once recorded), which is how `tests/test_session_differential.py`
checks it against the reference interpreter.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import cbor2

from aarm_runtime import values
from aarm_runtime.context import Declarations, SessionContext
from aarm_runtime.decision import Decision

__all__ = ["ContextLog", "GuardContext", "Session", "ZERO_HEAD"]

ZERO_HEAD = bytes(32)


class ContextLog:
    """The append-only, hash-chained log of one session's context.

    Each entry is a CBOR array ``[index, kind, time_ns, ...fields]`` of text,
    integers, byte strings, booleans, null and arrays of those only — no
    maps, no floats — so its encoding is deterministic (RFC 8949 §4.2.1)
    without sorting. ``head_0`` is 32 zero bytes and
    ``head_n = SHA-256(head_{n-1} ‖ entry_n)``.

    >>> log = ContextLog()
    >>> head = log.append("open", 0, "s1")
    >>> ContextLog.replay(log.entries) == head == log.head
    True
    """

    __slots__ = ("_entries", "_head")

    def __init__(self) -> None:
        self._entries: list[bytes] = []
        self._head = ZERO_HEAD

    @property
    def head(self) -> bytes:
        return self._head

    @property
    def entries(self) -> tuple[bytes, ...]:
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, kind: str, time_ns: int, *fields: Any) -> bytes:
        entry = cbor2.dumps([len(self._entries), kind, time_ns, *fields])
        self._entries.append(entry)
        self._head = hashlib.sha256(self._head + entry).digest()
        return self._head

    def decoded(self) -> list[list[Any]]:
        """The entries as Python lists (for forensics and tests)."""
        return [cbor2.loads(e) for e in self._entries]

    @staticmethod
    def replay(entries: Iterable[bytes]) -> bytes:
        """The head a sequence of entries chains to."""
        head = ZERO_HEAD
        for i, entry in enumerate(entries):
            if cbor2.loads(entry)[0] != i:
                raise ValueError(f"context log entry {i} carries index {cbor2.loads(entry)[0]}")
            head = hashlib.sha256(head + entry).digest()
        return head


class GuardContext(SessionContext):
    """The engine's `SessionContext`, plus what a live session needs.

    `attach_output` adds the output of an action already in the history (it
    entered the history when authorised), exactly as `SessionContext.record`
    would have indexed it; `replace_sections` swaps identity, intent and env
    (a resolver added context) and re-validates them as the constructor does.

    `count_within` answers in O(log n) per tool instead of scanning every
    past time: the guard's clock values are kept per tool in the order they
    came, and while they are non-decreasing a window (now - D, now] is two
    bisections. For int and float clocks this is exact: ``now - D`` is
    exact in binary floating point for 0 <= D <= now, and Python compares
    ints and floats exactly, so the count is the one the exact (Fraction)
    scan gives. A clock that goes backwards falls back to that scan.

    These reach into the base class's indexes: the differential test against
    the reference interpreter guards that they stay equivalent.
    """

    __slots__ = ("_raw_times", "_unsorted")

    def __init__(self, declarations: Declarations, **sections: Any) -> None:
        super().__init__(declarations, **sections)
        self._raw_times: dict[str, list[Any]] = {}
        self._unsorted = False

    def record(self, tool: str, *, time: Any = None, output: Any = None, has_output: bool | None = None) -> None:
        super().record(tool, time=time, output=output, has_output=has_output)
        if time is None or type(time) not in (int, float):
            self._unsorted = True
            return
        got = self._raw_times.get(tool)
        if got is None:
            self._raw_times[tool] = [time]
        else:
            if time < got[-1]:
                self._unsorted = True
            got.append(time)

    def count_within(self, tools: Any, within_s: int) -> Any:
        now = self.now
        if self._unsorted or now is None or type(now) not in (int, float) or within_s > now or within_s < 0:
            return super().count_within(tools, within_s)
        start = now - within_s
        total = 0
        raw = self._raw_times
        for t in tools:
            got = raw.get(t)
            if got:
                total += bisect.bisect_right(got, now) - bisect.bisect_right(got, start)
        return total

    def attach_output(self, index: int, output: Any) -> None:
        entry = self.history[index]
        if entry.has_output:
            raise ValueError(f"history entry {index} (`{entry.tool}`) already has an output")
        text = values.output_text(output)
        _, untrusted, _ = self._decl.outputs.get(entry.tool, (self._decl.top_level, True, ()))
        if untrusted:
            self._untrusted_index.add(text)
        tool_index = self._tool_index.get(entry.tool)
        if tool_index is None:
            tool_index = self._tool_index[entry.tool] = values.TokenIndex()
        tool_index.add(text)
        self.history[index] = entry._replace(has_output=True, output=output)

    def replace_sections(self, *, identity: Mapping[str, Any] | None, intent: Mapping[str, Any] | None,
                         env: Mapping[str, Any] | None) -> None:
        fresh = SessionContext(self._decl, identity=identity, intent=intent, env=env)
        self.identity, self.intent, self.env = fresh.identity, fresh.intent, fresh.env
        self.invalid, self.failure = fresh.invalid, fresh.failure
        self._intent_index = fresh._intent_index


@dataclasses.dataclass(eq=False, slots=True)
class _DecisionState:
    """The guard's bookkeeping for one decision id (mutated under the session lock)."""

    decision_id: str
    action_id: str
    seq: int
    tool: str
    params: Any
    args_hash: str
    decision: Decision
    risk: Any
    at: float
    exec_params: Any = None
    deadline: float | None = None
    granted: bool = False
    revoked: str | None = None
    outcome_recorded: bool = False
    history_index: int | None = None
    approval: Any = None
    approval_recorded: bool = False
    redeem_until: float | None = None
    resolution: str | None = None
    used: bool = False
    next_decision: str | None = None
    depends_on: tuple[str, ...] = ()
    last_resolvers: float | None = None
    rounds: int = 0
    request: Any = None


class Session:
    """One agent session under a `Guard`. Create it with `Guard.open_session`; read-only for callers.

    Attributes a caller may read: `id`, `identity` (the `VerifiedIdentity`, or
    None), `identity_json` (the LANGUAGE.md §7 identity section the policy
    sees), `identity_error` (``(reason, message)`` when the identity was
    refused: every decision is then a DENY), `intent`, `env`, `opened_at`,
    `closed`, `actions` (actions submitted), `context` (the `GuardContext`,
    None without a policy), `log` (the `ContextLog`), `context_head`.
    """

    __slots__ = (
        "id", "identity", "identity_json", "identity_receipt", "identity_error", "intent", "env", "opened_at",
        "expires_at", "closed", "broken", "actions", "context", "base_invalid", "base_failure", "log", "lock",
        "decisions", "pending", "finished", "__weakref__",
    )

    def __init__(self, *, session_id: str, identity: Any, identity_json: Mapping[str, Any] | None,
                 identity_receipt: Any, identity_error: tuple[str, str] | None, intent: Mapping[str, Any] | None,
                 env: Mapping[str, Any] | None, opened_at: float, expires_at: float | None,
                 declarations: Declarations | None) -> None:
        self.id = session_id
        self.identity = identity
        self.identity_json = identity_json
        self.identity_receipt = identity_receipt
        self.identity_error = identity_error
        self.intent = None if intent is None else dict(intent)
        self.env = None if env is None else dict(env)
        self.opened_at = opened_at
        self.expires_at = expires_at
        self.closed = False
        self.broken: str | None = None
        self.actions = 0
        self.context: GuardContext | None = None
        self.base_invalid: tuple[str, str] | None = None
        self.base_failure: str | None = None
        if declarations is not None:
            self.context = GuardContext(declarations, identity=identity_json, intent=self.intent, env=self.env)
            self.base_invalid, self.base_failure = self.context.invalid, self.context.failure
        self.log = ContextLog()
        self.lock = threading.RLock()
        self.decisions: dict[str, _DecisionState] = {}
        self.pending: dict[str, _DecisionState] = {}
        # Ids of decisions nothing can follow any more (a DENY, an action whose outcome is recorded).
        self.finished: dict[str, str] = {}

    @property
    def context_head(self) -> bytes:
        return self.log.head

    def pending_ids(self) -> tuple[str, ...]:
        """Decision ids of this session awaiting an approval, a redemption or a deferral resolution."""
        with self.lock:
            return tuple(self.pending)

    def history_json(self) -> list[dict[str, Any]]:
        """The authorised actions as a LANGUAGE.md §7 ``history`` (tool, and output once recorded; times
        are left to the caller, who knows how to print its clock)."""
        with self.lock:
            if self.context is None:
                return []
            out = []
            for entry in self.context.history:
                item: dict[str, Any] = {"tool": entry.tool}
                if entry.has_output:
                    item["output"] = entry.output
                out.append(item)
            return out

    def update_sections(self, *, env: Mapping[str, Any] | None = None,
                        intent: Mapping[str, Any] | None = None) -> None:
        """Merge env and intent values into the session (a resolved deferral); caller holds the lock."""
        if env:
            self.env = {**(self.env or {}), **env}
        if intent:
            self.intent = {**(self.intent or {}), **intent}
        if self.context is not None:
            self.context.replace_sections(identity=self.identity_json, intent=self.intent, env=self.env)
            self.base_invalid, self.base_failure = self.context.invalid, self.context.failure

    def __repr__(self) -> str:
        who = self.identity_json.get("principal") if self.identity_json else None
        return f"Session(id={self.id!r}, principal={who!r}, actions={self.actions}, closed={self.closed})"
