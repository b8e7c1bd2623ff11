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
from decimal import Decimal
from typing import Any

import cbor2

from aarm_runtime import values
from aarm_runtime.context import Declarations, Entry, SessionContext
from aarm_runtime.decision import Decision

__all__ = ["ContextLog", "GuardContext", "Session", "StoreLock", "ZERO_HEAD"]

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

    __slots__ = ("_entries", "_head", "journal")

    def __init__(self) -> None:
        self._entries: list[bytes] = []
        self._head = ZERO_HEAD
        # With a session store: the events of the operation in progress (see `Session`).
        self.journal: list[tuple] | None = None

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
        if self.journal is not None:
            self.journal.append(("log", entry))
        return self._head

    def _extend(self, entry: bytes) -> None:
        """Append an entry another replica wrote (already checked to carry the next index)."""
        self._entries.append(entry)
        self._head = hashlib.sha256(self._head + entry).digest()

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

    __slots__ = ("_raw_times", "_unsorted", "base_intent", "journal")

    def __init__(self, declarations: Declarations, **sections: Any) -> None:
        super().__init__(declarations, **sections)
        self._raw_times: dict[str, list[Any]] = {}
        self._unsorted = False
        # The intent as opened (validated); a decision may see it with the aligner's `score` for its action.
        self.base_intent = self.intent
        self.journal: list[tuple] | None = None

    def record(self, tool: str, *, time: Any = None, output: Any = None, has_output: bool | None = None) -> None:
        if type(time) in (int, float) and not has_output and output is None:
            # The guard's clock: kept as given (ints and floats compare exactly with the Fraction bounds
            # of the exact scan), sparing a Fraction per authorised action.
            self._append(Entry(tool=tool, time=time, has_output=False, output=None))
        else:
            super().record(tool, time=time, output=output, has_output=has_output)
        if self.journal is not None:
            self.journal.append(("rec", tool, time, bool(has_output) if has_output is not None else output is not None,
                                 output))
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
        if self.journal is not None:
            self.journal.append(("out", index, output))

    def replace_sections(self, *, identity: Mapping[str, Any] | None, intent: Mapping[str, Any] | None,
                         env: Mapping[str, Any] | None) -> None:
        fresh = SessionContext(self._decl, identity=identity, intent=intent, env=env)
        self.identity, self.intent, self.env = fresh.identity, fresh.intent, fresh.env
        self.base_intent = fresh.intent
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
    # A DEFER's context given through `Guard.provide` and not used yet: [env, intent, risk, by]. Part of the
    # decision state, so that in a shared session whichever replica redeems the action decides it with it.
    provided: Any = None
    request: Any = None


class _SharedDecisionState(_DecisionState):
    """A decision state of a shared session: every change marks it for the next commit."""

    __slots__ = ("_dirty",)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        dirty = getattr(self, "_dirty", None)
        if dirty is not None:
            dirty.add(self.decision_id)


class _Finished(dict):
    """`Session.finished`: decision id -> how it ended; with a store, each new entry is an event."""

    __slots__ = ("journal",)

    def __init__(self) -> None:
        super().__init__()
        self.journal: list[tuple] | None = None

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        if self.journal is not None:
            self.journal.append(("fin", key, value))


class Session:
    """One agent session under a `Guard`. Create it with `Guard.open_session`; read-only for callers.

    Attributes a caller may read: `id`, `identity` (the `VerifiedIdentity`, or
    None), `identity_json` (the LANGUAGE.md §7 identity section the policy
    sees), `identity_error` (``(reason, message)`` when the identity was
    refused: every decision is then a DENY), `intent`, `env`, `opened_at`,
    `closed`, `actions` (actions submitted), `context` (the `GuardContext`,
    None without a policy), `log` (the `ContextLog`), `context_head`,
    `alignments` (the aligner's verdicts on the session's actions, in order).

    **Shared sessions.** With a `SessionStore` (`aarm_runtime.session_store`)
    the session lives in the store and this object is the replica's cache of
    it. `lock` is then a `StoreLock`: entering it (outermost level) takes
    the store's lease on the session and applies what other replicas
    committed since; leaving it commits what this replica changed, all or
    nothing, and gives the lease back. What changes is captured as it
    happens: the growth of the session as *events* (context-log entries,
    authorised actions, outputs, finished decision ids, alignments), the
    small mutable rest (counters, sections, the decisions still in play) as
    one *state* blob, both deterministic CBOR. Because every decision runs
    under the lock on a context brought up to date first, replicas serving
    one session alternately decide as one process would. A commit that
    fails (lease lost, store down) raises `StoreError` out of the lock: the
    guard turns that into a DENY, and the cache is reloaded from the store
    before its next use.
    """

    __slots__ = (
        "id", "identity", "identity_json", "identity_receipt", "identity_error", "intent", "env", "opened_at",
        "expires_at", "closed", "broken", "actions", "context", "base_invalid", "base_failure", "log", "lock",
        "decisions", "pending", "finished", "alignments", "alignment_of", "_declarations", "_store", "_applied",
        "_version", "_state_blob", "_journal", "_token", "_lease_s", "_wait_s", "_stale", "_opened", "logged",
        "_dirty", "_committed_ids", "_incarnation", "_replaced",
        "__weakref__",
    )

    def __init__(self, *, session_id: str, identity: Any, identity_json: Mapping[str, Any] | None,
                 identity_receipt: Any, identity_error: tuple[str, str] | None, intent: Mapping[str, Any] | None,
                 env: Mapping[str, Any] | None, opened_at: float, expires_at: float | None,
                 declarations: Declarations | None, store: Any = None, lease_s: float = 10.0,
                 wait_s: float = 10.0) -> None:
        self.id = session_id
        self.identity = identity
        self.identity_json = identity_json
        self.identity_receipt = identity_receipt
        self.identity_error = identity_error
        self.opened_at = opened_at
        self.expires_at = expires_at
        self._declarations = declarations
        self._store = store
        self._lease_s = lease_s
        self._wait_s = wait_s
        self._opened = (intent, env)
        # Shared sessions: the decision ids this replica's receipt log has a decision record of.
        self.logged: set[str] = set()
        # Shared sessions: which incarnation of the id in the store this copy is of (the first acquire tells),
        # and why it may not be used any more once the store holds another one.
        self._incarnation: str | None = None
        self._replaced: str | None = None
        self._reset(intent, env)
        self.lock: Any = threading.RLock() if store is None else StoreLock(self)

    def _reset(self, intent: Mapping[str, Any] | None, env: Mapping[str, Any] | None) -> None:
        """The session as opened, before any event: also how a replica starts over from the store."""
        self.intent = None if intent is None else dict(intent)
        self.env = None if env is None else dict(env)
        self.closed = False
        self.broken: str | None = None
        self.actions = 0
        self.context: GuardContext | None = None
        self.base_invalid: tuple[str, str] | None = None
        self.base_failure: str | None = None
        if self._declarations is not None:
            self.context = GuardContext(self._declarations, identity=self.identity_json, intent=self.intent,
                                        env=self.env)
            self.base_invalid, self.base_failure = self.context.invalid, self.context.failure
        self.log = ContextLog()
        self.decisions: dict[str, _DecisionState] = {}
        self.pending: dict[str, _DecisionState] = {}
        # Ids of decisions nothing can follow any more (a DENY, an action whose outcome is recorded).
        self.finished: dict[str, str] = _Finished()
        self.alignments: list[Any] = []
        self.alignment_of: dict[int, Any] = {}
        self._applied = 0
        self._version = -1
        self._state_blob: bytes | None = None
        self._journal: list[tuple] | None = None
        self._token: str | None = None
        self._stale = False
        # Shared sessions: ids of decision states changed since the last commit, and those the store has.
        self._dirty: set[str] = set()
        self._committed_ids: set[str] = set()

    def new_state(self, **fields: Any) -> _DecisionState:
        """A decision state for this session (for a shared one, its changes are tracked for the store)."""
        if self._store is None:
            return _DecisionState(**fields)
        state = _SharedDecisionState(**fields)
        object.__setattr__(state, "_dirty", self._dirty)
        self._dirty.add(state.decision_id)
        return state

    @property
    def shared(self) -> bool:
        """True when the session lives in a session store (several replicas may serve it)."""
        return self._store is not None

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
        self._sections_changed()

    def _sections_changed(self) -> None:
        if self.context is not None:
            self.context.replace_sections(identity=self.identity_json, intent=self.intent, env=self.env)
            self.base_invalid, self.base_failure = self.context.invalid, self.context.failure

    def add_alignment(self, seq: int, alignment: Any) -> None:
        """The aligner's verdict on action *seq* (a new action); caller holds the lock."""
        self.alignments.append(alignment)
        self.alignment_of[seq] = alignment
        if self._journal is not None:
            self._journal.append(("align", seq, str(alignment.score), str(alignment.drift)))

    def __repr__(self) -> str:
        who = self.identity_json.get("principal") if self.identity_json else None
        return f"Session(id={self.id!r}, principal={who!r}, actions={self.actions}, closed={self.closed})"

    # ---- the session store ------------------------------------------------------------------

    def _begin(self) -> None:
        """Take the store's lease on the session and apply what other replicas committed."""
        from aarm_runtime.session_store import SessionReplaced, StoreError

        if self._replaced is not None:
            raise SessionReplaced(self._replaced)
        if self._stale:
            for state in self.decisions.values():
                # Whoever still holds one of these must not act on it: it is rebuilt from the store.
                state.used = True
                state.revoked = state.revoked or "session state reloaded from the store"
            self._reset(*self._opened)
        try:
            view = self._store.acquire(self.id, since=self._applied, known_version=self._version,
                                       lease_s=self._lease_s, wait_s=self._wait_s)
        except StoreError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure of the store is a store error
            raise StoreError(f"session store failed: {type(err).__name__}: {err}") from err
        self._token = view.token
        incarnation = view.incarnation
        if incarnation and self._incarnation != incarnation:
            if self._incarnation is not None:
                # The session this copy is of expired from the store, and one with the same id was opened
                # since. Applying its events to this copy would mix two sessions, and committing this copy's
                # would write into the new one: this copy is done with (the guard joins the new one afresh).
                self._replaced = (f"session `{self.id}` in the store is another one than this replica served: it "
                                  "expired from the store and was opened again under the same id")
                self._release_quietly()
                for state in self.decisions.values():
                    state.used = True
                    state.revoked = state.revoked or self._replaced
                raise SessionReplaced(self._replaced)
            self._incarnation = incarnation
        try:
            if view.count < self._applied:
                raise StoreError(f"session `{self.id}` has {view.count} events in the store, fewer than the "
                                 f"{self._applied} this replica applied")
            for raw in view.events:
                self._apply_event(raw)
            if view.state is not None:
                self._apply_state(view.state)
            self._version = view.version
            self._dirty.clear()
            self._committed_ids = set(self.decisions)
        except Exception as err:
            self._stale = True
            self._release_quietly()
            if isinstance(err, StoreError):
                raise
            raise StoreError(f"session `{self.id}` in the store could not be read: {type(err).__name__}: "
                             f"{err}") from err
        self._set_journal([])

    def _end(self) -> None:
        """Commit what this operation changed and give the lease back."""
        from aarm_runtime.session_store import StoreError

        journal = self._journal
        self._set_journal(None)
        token, self._token = self._token, None
        if token is None:
            return
        try:
            events = [cbor2.dumps(list(e)) for e in journal or ()]
            current = self.decisions
            for did in sorted(self._dirty):
                state = current.get(did)
                if state is not None:
                    events.append(cbor2.dumps(["st", _encode_decision_state(state)]))
            for did in sorted(self._committed_ids - current.keys()):
                events.append(cbor2.dumps(["drop", did]))
            blob = self._encode_state()
            if not events and blob == self._state_blob:
                self._store.release(self.id, token)
                return
            version = self._store.commit(self.id, token, base_count=self._applied, events=events,
                                         state=None if blob == self._state_blob else blob)
        except Exception as err:
            # Nothing of this operation is in the store: this cache is ahead of it. Start over from the
            # store before the next use, and let the caller deny.
            self._stale = True
            self._release_quietly(token)
            if isinstance(err, StoreError):
                raise
            raise StoreError(f"session `{self.id}` could not be committed to the store: "
                             f"{type(err).__name__}: {err}") from err
        self._applied += len(events)
        self._state_blob = blob
        self._version = version
        self._dirty.clear()
        self._committed_ids = set(self.decisions)

    def _release_quietly(self, token: str | None = None) -> None:
        token = token or self._token
        self._token = None
        if token is not None:
            try:
                self._store.release(self.id, token)
            except Exception:  # noqa: BLE001, S110 - the lease expires on its own
                pass

    def _set_journal(self, journal: list[tuple] | None) -> None:
        self._journal = journal
        self.log.journal = journal
        self.finished.journal = journal
        if self.context is not None:
            self.context.journal = journal

    def _apply_event(self, raw: bytes) -> None:
        event = cbor2.loads(raw)
        if not isinstance(event, list) or not event:
            raise ValueError("an event is not a non-empty array")
        kind = event[0]
        if kind == "log":
            entry = event[1]
            index = cbor2.loads(entry)[0]
            if index != len(self.log):
                raise ValueError(f"context log entry carries index {index}, expected {len(self.log)}")
            self.log._extend(entry)
        elif kind == "rec":
            _, tool, at, has_output, output = event
            if self.context is not None:
                self.context.record(tool, time=at, output=output, has_output=has_output)
        elif kind == "out":
            if self.context is not None:
                self.context.attach_output(event[1], event[2])
        elif kind == "fin":
            dict.__setitem__(self.finished, event[1], event[2])
        elif kind == "st":
            raw_state = event[1]
            did = raw_state[0]
            got = self.decisions.get(did)
            state = _decode_decision_state(raw_state, got)
            if got is None:
                object.__setattr__(state, "_dirty", self._dirty)
                self.decisions[did] = state
        elif kind == "drop":
            gone = self.decisions.pop(event[1], None)
            if gone is not None:
                # Whoever still holds it must not act on it: another replica finished it.
                gone.used = True
                if gone.revoked is None:
                    gone.revoked = "finished by another replica"
        elif kind == "align":
            from aarm_runtime.aligner import Alignment

            alignment = Alignment(score=Decimal(event[2]), drift=Decimal(event[3]))
            self.alignments.append(alignment)
            self.alignment_of[event[1]] = alignment
        else:
            raise ValueError(f"unknown event kind `{kind}`")
        self._applied += 1

    def _encode_state(self) -> bytes:
        # The decision states travel as events when they change (`st`, `drop`); the blob is what is left:
        # small, so that a commit costs the same in a long session as in a short one.
        return cbor2.dumps([STATE_FORMAT, self.actions, self.closed, self.broken, self.intent, self.env,
                            list(self.decisions), list(self.pending)], canonical=True)

    def _apply_state(self, blob: bytes) -> None:
        fmt, actions, closed, broken, intent, env, order, pending = cbor2.loads(blob)
        if fmt != STATE_FORMAT:
            raise ValueError(f"session state format {fmt!r} is not {STATE_FORMAT!r}")
        self.actions, self.closed, self.broken = actions, closed, broken
        if intent != self.intent or env != self.env:
            self.intent, self.env = intent, env
            self._sections_changed()
        if set(order) != self.decisions.keys():
            raise ValueError("the session's decision states and its events disagree")
        # The order decisions were made in (dict order), as the replica that committed had it.
        self.decisions = {did: self.decisions[did] for did in order}
        self.pending = {did: self.decisions[did] for did in pending}
        self._state_blob = blob


STATE_FORMAT = 2

_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(_DecisionState) if f.name not in ("decision", "approval",
                                                                                              "request"))


def _encode_decision_state(state: _DecisionState) -> list[Any]:
    d = state.decision
    decision = [d.decision, list(d.rules), d.reason, d.message, list(d.fields), d.params, list(d.approvers),
                d.timeout_s, d.tool, d.wrapper]
    a = state.approval
    approval = None if a is None else [a.decision_id, a.verdict, a.approver, a.args_hash, a.at, a.reason]
    out = [getattr(state, name) for name in _STATE_FIELDS]
    out[_STATE_FIELDS.index("depends_on")] = list(state.depends_on)
    return [*out, decision, approval]


def _decode_decision_state(raw: list[Any], into: _DecisionState | None) -> _DecisionState:
    from aarm_runtime.approvals import ApprovalAnswer

    *plain, decision, approval = raw
    if len(plain) != len(_STATE_FIELDS):
        raise ValueError("a decision state has the wrong number of fields")
    fields = dict(zip(_STATE_FIELDS, plain))
    fields["depends_on"] = tuple(fields["depends_on"])
    d = Decision(decision=decision[0], rules=tuple(decision[1]), reason=decision[2], message=decision[3],
                 fields=tuple(decision[4]), params=decision[5], approvers=tuple(decision[6]), timeout_s=decision[7],
                 tool=decision[8], wrapper=decision[9])
    answer = None if approval is None else ApprovalAnswer(*approval)
    if into is None:
        return _SharedDecisionState(decision=d, approval=answer, **fields)
    for name, value in fields.items():
        object.__setattr__(into, name, value)
    if into.decision != d:
        object.__setattr__(into, "decision", d)
    object.__setattr__(into, "approval", answer)
    return into


class StoreLock:
    """`Session.lock` for a session in a store: a re-entrant local lock, and at its outermost level the
    store's lease — entering syncs the session from the store, leaving commits to it."""

    __slots__ = ("_depth", "_local", "_session")

    def __init__(self, session: Session) -> None:
        self._local = threading.RLock()
        self._session = session
        self._depth = 0

    def __enter__(self) -> StoreLock:
        self._local.acquire()
        if self._depth == 0:
            try:
                self._session._begin()
            except BaseException:
                self._local.release()
                raise
        self._depth += 1
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0:
                self._session._end()
        finally:
            self._local.release()
