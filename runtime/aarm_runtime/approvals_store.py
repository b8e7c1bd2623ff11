"""STEP_UP approvals shared between processes: the `Approvals` interface on one SQLite file (WAL).

A gateway (or any process running a `Guard`) queues its STEP_UP decisions
here; an operator in another process — ``aarmc approve ID``, ``aarmc reject
ID``, ``aarmc pending`` — answers them by decision id. The guarantees are
those of the in-process `aarm_runtime.approvals.Approvals`:

- an answer is bound to the decision id and, when the operator passes it, to
  the argument hash (the guard also checks the hash at redemption);
- one answer per request: a second approve or reject is refused;
- after the deadline nothing can be approved;
- recorded before it counts: the approval receipt is written by the guard's
  listener, which lives in the guard's process, before the answer is final.

How the last point works across processes. Each request row belongs to the
store instance whose guard queued it (its *owner*; `attach` makes an
instance an owner). Another process does not answer a request, it
*proposes* an answer (``state = proposed``) and waits. The owner picks the
proposal up (a background thread polls every `poll_interval_s`; `answer`
and `wait` also look before they read), claims it (``answering``), checks
the deadline and `authorize`, calls the listener — which writes the receipt
— and only then makes it final (``answered``). If the listener fails, the
request returns to ``pending`` with the error, which the proposer reports.
A proposer that hears nothing within `confirm_timeout_s` (no owner running)
withdraws its proposal, so an approval never takes effect later behind the
operator's back. Owners write a heartbeat; a request whose owner has
stopped can no longer be answered (its guard, and the session that would
redeem it, are gone) and is not listed as pending.

State transitions (one row per decision id; every change is a single
``BEGIN IMMEDIATE`` transaction, so concurrent processes serialise)::

    pending --propose--> proposed --claim (owner)--> answering --listener ok--> answered
       ^                    |                            |
       +---withdraw/refuse--+----------listener failed---+
    pending/proposed --claim (owner: expire)--> answering --> answered (timeout, cancelled)

The file is created 0600: request rows hold the proposed params, for the
approver's eyes (never written to a receipt here).

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "approvals.db")
>>> store = SqliteApprovals(path, clock=lambda: 100.0)
>>> store.attach(lambda request, answer: None)
>>> store.request(ApprovalRequest(decision_id="d1", session_id="s1", action_id="a1", tool="bank.send_money",
...     args_hash="ab" * 32, approvers=("finance-oncall",), rules=("big-transfer",), message="",
...     requested_at=100.0, deadline=160.0))
>>> operator = SqliteApprovals(path, clock=lambda: 100.0)   # as in another process
>>> operator.approve("d1", approver="alice").verdict
'approved'
>>> store.answer("d1").approver
'alice'
>>> store.close(); operator.close()
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aarm_runtime import values
from aarm_runtime.approvals import (
    APPROVED,
    CANCELLED,
    REJECTED,
    TIMEOUT,
    ApprovalAnswer,
    ApprovalError,
    ApprovalRequest,
    Approvals,
    _bind,
)
from aarm_runtime.sqlite_file import Tx, open_database

__all__ = ["SCHEMA_VERSION", "SqliteApprovals"]

SCHEMA_VERSION = 1
PENDING, PROPOSED, ANSWERING, ANSWERED = "pending", "proposed", "answering", "answered"
# An owner that has not written a heartbeat for this long is taken to have stopped.
OWNER_STALE_S = 5.0
HEARTBEAT_S = 1.0
FORGET_AFTER_S = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY, name TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL,
    heartbeat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    decision_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    request TEXT NOT NULL,
    args_hash TEXT NOT NULL,
    requested_at REAL NOT NULL,
    deadline REAL NOT NULL,
    state TEXT NOT NULL,
    proposal TEXT,
    proposal_error TEXT,
    answer TEXT,
    answered_at REAL);
CREATE INDEX IF NOT EXISTS requests_owner_state ON requests (owner, state);
"""


def _request_json(r: ApprovalRequest) -> str:
    doc = r.to_json()
    doc["params"] = values.to_jsonable(r.params) if r.params is not None else None
    return json.dumps(doc, ensure_ascii=False, sort_keys=True)


def _request_from(text: str) -> ApprovalRequest:
    d = json.loads(text)
    return ApprovalRequest(decision_id=d["decision_id"], session_id=d["session"], action_id=d["action_id"],
                           tool=d["tool"], args_hash=d["args_hash"], approvers=tuple(d["approvers"]),
                           rules=tuple(d["rules"]), message=d["message"], requested_at=d["requested_at"],
                           deadline=d["deadline"], wrapper=d.get("wrapper"), principal=d.get("principal"),
                           params=d.get("params"))


def _answer_json(a: ApprovalAnswer) -> str:
    return json.dumps({"decision_id": a.decision_id, "verdict": a.verdict, "approver": a.approver,
                       "args_hash": a.args_hash, "at": a.at, "reason": a.reason}, ensure_ascii=False)


def _answer_from(text: str) -> ApprovalAnswer:
    d = json.loads(text)
    return ApprovalAnswer(decision_id=d["decision_id"], verdict=d["verdict"], approver=d["approver"],
                          args_hash=d["args_hash"], at=d["at"], reason=d.get("reason"))


class _ProposalApprovals:
    """What `SqliteApprovals` and `aarm_runtime.approvals_redis.RedisApprovals` share, word for word: the
    operator's side (approve, reject), reading and waiting for answers, and the owner recording a proposed
    answer. Subclasses provide the storage steps (`_claim`, `_release`, `_finish`, `_human`, `_row`,
    `_await_proposal`) and the attributes `_clock`, `_listener`, `_authorize`, `system_name`."""

    def _now(self) -> float:
        return (self._clock or time.time)()

    def expire(self, decision_id: str, *, verdict: str = TIMEOUT, reason: str | None = None) -> ApprovalAnswer:
        """End a pending request without a human (timeout or cancelled); a human's final answer stands."""
        if verdict not in (TIMEOUT, CANCELLED):
            raise ValueError(f"expire answers `timeout` or `cancelled`, not `{verdict}`")
        request, row = self._claim(decision_id, (PENDING, PROPOSED))
        if request is None:
            if row["state"] == ANSWERED:
                return _answer_from(row["answer"])
            # Another thread is recording a human's answer right now. Waiting for
            # it could deadlock (its listener may need a lock the caller holds):
            # refuse, and the guard denies.
            raise ApprovalError(f"decision `{decision_id}` is being answered right now")
        answer = ApprovalAnswer(decision_id=decision_id, verdict=verdict, approver=self.system_name,
                                args_hash=request.args_hash, at=self._now(), reason=reason)
        # As in-process: a timeout stands even when its receipt cannot be
        # written (the guard denies either way, and nobody may approve after it).
        try:
            self._notify(request, answer)
        finally:
            self._finish(decision_id, answer, error="the request timed out" if row["proposal"] else None)
        return answer

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer(self, decision_id: str) -> ApprovalAnswer | None:
        """The final answer, or None while the request is pending (never blocks)."""
        self._process(decision_id)
        row = self._row(decision_id)
        return _answer_from(row["answer"]) if row["state"] == ANSWERED else None

    def wait(self, decision_id: str, timeout: float | None) -> ApprovalAnswer | None:
        """Block until the request is answered or *timeout* seconds (real time) pass; None = no answer yet."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            got = self.answer(decision_id)
            if got is not None:
                return got
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._stop.wait(self._poll if remaining is None else min(self._poll, remaining))
            if self._stop.is_set():
                raise ApprovalError("the approvals store is closed")

    def approve(self, decision_id: str, approver: str, *, args_hash: str | None = None,
                reason: str | None = None) -> ApprovalAnswer:
        """Approve one pending STEP_UP decision; *args_hash*, when given, must be the request's."""
        return self._human(decision_id, APPROVED, approver, args_hash, reason)

    def reject(self, decision_id: str, approver: str, *, reason: str | None = None) -> ApprovalAnswer:
        """Reject one pending STEP_UP decision (the action is denied)."""
        return self._human(decision_id, REJECTED, approver, None, reason)

    def _record_proposal(self, decision_id: str) -> None:
        request, row = self._claim(decision_id, (PROPOSED,))
        if request is None:
            return
        proposal = json.loads(row["proposal"])
        approver = proposal["approver"]
        now = self._now()
        if now >= request.deadline:
            self._release(decision_id, f"approval of decision `{decision_id}` timed out")
            self.expire(decision_id)
            return
        if self._authorize is not None:
            try:
                allowed = self._authorize(approver, request)
            except Exception as err:  # noqa: BLE001 - an authoriser that fails refuses
                allowed = False
                refusal = f"the approver check failed: {err}"
            else:
                refusal = f"`{approver}` may not answer for {', '.join(request.approvers)}"
            if not allowed:
                self._release(decision_id, refusal)
                return
        answer = ApprovalAnswer(decision_id=decision_id, verdict=proposal["verdict"], approver=approver,
                                args_hash=request.args_hash, at=now, reason=proposal.get("reason"))
        try:
            self._notify(request, answer)
        except Exception as err:  # noqa: BLE001 - not recorded: it does not count, the request stays pending
            self._release(decision_id, f"the answer to decision `{decision_id}` could not be recorded: {err}")
            return
        self._finish(decision_id, answer, error=None)

    def _notify(self, request: ApprovalRequest, answer: ApprovalAnswer) -> None:
        if self._listener is not None:
            self._listener(request, answer)


class SqliteApprovals(_ProposalApprovals):
    """The approvals queue in a SQLite file, answerable from any process; thread-safe.

    *clock*: seconds since the epoch (defaults to the attached guard's clock,
    else `time.time`). *authorize*: as for `Approvals`, called in the owner
    process as ``authorize(approver, request)``. *confirm_timeout_s*: how
    long `approve` / `reject` wait for the owner to record a proposed
    answer. *keep*: answered requests kept for late `answer` calls.
    """

    SYSTEM = Approvals.SYSTEM

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] | None = None,
                 authorize: Callable[[str, ApprovalRequest], bool] | None = None, keep: int = 10_000,
                 poll_interval_s: float = 0.05, confirm_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self._clock = clock
        self._authorize = authorize
        self._keep = keep
        self._poll = poll_interval_s
        self._confirm_timeout = confirm_timeout_s
        self._listener: Callable[[ApprovalRequest, ApprovalAnswer], None] | None = None
        self._owner: str | None = None
        self.system_name = self.SYSTEM
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._db = self._connect()

    # ---- the database ----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = open_database(self.path, schema=_SCHEMA, version=SCHEMA_VERSION, timeout_s=10.0,
                           noun="approvals database", error=ApprovalError)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def close(self) -> None:
        """Stop the owner's thread, forget the owner (its requests can no longer be answered), close the file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._owner is not None:
                try:
                    with Tx(self._db):
                        self._db.execute("DELETE FROM owners WHERE owner=?", (self._owner,))
                except sqlite3.Error:
                    pass
            self._db.close()

    def __enter__(self) -> SqliteApprovals:
        return self

    # ---- the guard's side --------------------------------------------------------------

    def attach(self, listener: Callable[[ApprovalRequest, ApprovalAnswer], None], *,
               clock: Callable[[], float] | None = None, name: str | None = None) -> None:
        """Called once by the guard: this instance owns the requests it queues and records their answers."""
        with self._lock:
            _bind(self, listener, clock, name)
            if self._owner is None:
                self._owner = uuid.uuid4().hex
                now = time.time()
                with Tx(self._db):
                    # Guards that stopped a day ago (killed, or crashed) left rows no one can answer.
                    gone = now - FORGET_AFTER_S
                    self._db.execute("DELETE FROM requests WHERE owner IN"
                                     " (SELECT owner FROM owners WHERE heartbeat < ?)", (gone,))
                    self._db.execute("DELETE FROM owners WHERE heartbeat < ?", (gone,))
                    self._db.execute("INSERT INTO owners (owner, name, pid, started, heartbeat) VALUES (?,?,?,?,?)",
                                     (self._owner, self.system_name, os.getpid(), now, now))
                self._thread = threading.Thread(target=self._run, name="aarm-approvals", daemon=True)
                self._thread.start()

    def request(self, request: ApprovalRequest) -> None:
        """Queue a STEP_UP decision for approval (this instance must be attached to a guard)."""
        if not isinstance(request, ApprovalRequest):
            raise TypeError(f"expected an `ApprovalRequest`, got `{type(request).__name__}`")
        with self._lock:
            if self._owner is None:
                raise ApprovalError("only a store attached to a guard can queue approval requests")
            try:
                with Tx(self._db):
                    self._db.execute(
                        "INSERT INTO requests (decision_id, owner, request, args_hash, requested_at, deadline, state)"
                        " VALUES (?,?,?,?,?,?,?)",
                        (request.decision_id, self._owner, _request_json(request), request.args_hash,
                         request.requested_at, request.deadline, PENDING))
                    self._prune()
            except sqlite3.IntegrityError:
                raise ApprovalError(f"decision `{request.decision_id}` is already queued for approval") from None

    # ---- the operator's side ------------------------------------------------------------

    def pending(self) -> list[ApprovalRequest]:
        """Requests still waiting for an answer whose guard is running and whose deadline has not passed."""
        now = self._now()
        with self._lock:
            rows = self._db.execute(
                "SELECT r.request FROM requests r JOIN owners o ON o.owner = r.owner"
                " WHERE r.state IN (?, ?) AND r.deadline > ? AND o.heartbeat > ? ORDER BY r.requested_at, r.rowid",
                (PENDING, PROPOSED, now, time.time() - OWNER_STALE_S)).fetchall()
        return [_request_from(r[0]) for r in rows]

    def get(self, decision_id: str) -> ApprovalRequest | None:
        with self._lock:
            row = self._db.execute("SELECT request FROM requests WHERE decision_id=?", (decision_id,)).fetchone()
        return None if row is None else _request_from(row[0])

    # ---- internals ------------------------------------------------------------------------

    def _row(self, decision_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute(
                "SELECT decision_id, owner, request, state, proposal, proposal_error, answer, deadline, args_hash"
                " FROM requests WHERE decision_id=?", (decision_id,)).fetchone()
        if row is None:
            raise ApprovalError(f"no approval request for decision `{decision_id}`")
        keys = ("decision_id", "owner", "request", "state", "proposal", "proposal_error", "answer", "deadline",
                "args_hash")
        return dict(zip(keys, row))

    def _human(self, decision_id: str, verdict: str, approver: str, args_hash: str | None,
               reason: str | None) -> ApprovalAnswer:
        if not isinstance(approver, str) or not approver.strip():
            raise ApprovalError("an approver name is required")
        if approver == self.system_name or approver == self.SYSTEM:
            raise ApprovalError(f"`{approver}` is the runtime's own name and cannot approve")
        proposal = {"verdict": verdict, "approver": approver, "reason": reason, "nonce": uuid.uuid4().hex}
        with self._lock:
            with Tx(self._db):
                row = self._db.execute("SELECT owner, state, answer, deadline, args_hash FROM requests"
                                       " WHERE decision_id=?", (decision_id,)).fetchone()
                if row is None:
                    raise ApprovalError(f"no approval request for decision `{decision_id}`")
                owner, state, answer, deadline, expected = row
                if state == ANSWERED:
                    done = _answer_from(answer)
                    raise ApprovalError(f"decision `{decision_id}` was already answered ({done.verdict} by "
                                        f"`{done.approver}`)")
                if state != PENDING:
                    raise ApprovalError(f"decision `{decision_id}` is being answered by someone else")
                if self._now() >= deadline:
                    raise ApprovalError(f"approval of decision `{decision_id}` timed out")
                if args_hash is not None and args_hash != expected:
                    raise ApprovalError(f"decision `{decision_id}` was requested for arguments `{expected}`, "
                                        f"not `{args_hash}`")
                alive = self._db.execute("SELECT heartbeat FROM owners WHERE owner=?", (owner,)).fetchone()
                if owner != self._owner and (alive is None or alive[0] <= time.time() - OWNER_STALE_S):
                    raise ApprovalError(f"the guard that asked for decision `{decision_id}` is no longer running")
                self._db.execute("UPDATE requests SET state=?, proposal=?, proposal_error=NULL WHERE decision_id=?",
                                 (PROPOSED, json.dumps(proposal), decision_id))
        return self._await_proposal(decision_id, proposal)

    def _await_proposal(self, decision_id: str, proposal: dict) -> ApprovalAnswer:
        limit = time.monotonic() + self._confirm_timeout
        while True:
            self._process(decision_id)
            row = self._row(decision_id)
            if row["state"] == ANSWERED:
                answer = _answer_from(row["answer"])
                if row["proposal"] is not None and json.loads(row["proposal"]).get("nonce") == proposal["nonce"] \
                        and answer.verdict == proposal["verdict"]:
                    return answer
                raise ApprovalError(row["proposal_error"] or f"decision `{decision_id}` was answered "
                                    f"({answer.verdict} by `{answer.approver}`) before this answer was recorded")
            if row["state"] == PENDING:
                raise ApprovalError(row["proposal_error"] or f"the answer to decision `{decision_id}` was not recorded")
            if time.monotonic() >= limit:
                with self._lock, Tx(self._db):
                    withdrawn = self._db.execute(
                        "UPDATE requests SET state=?, proposal=NULL WHERE decision_id=? AND state=? AND proposal=?",
                        (PENDING, decision_id, PROPOSED, json.dumps(proposal))).rowcount
                if withdrawn:
                    raise ApprovalError(f"no running guard recorded the answer to decision `{decision_id}` within "
                                        f"{self._confirm_timeout:g} s; nothing was answered")
                continue
            time.sleep(self._poll)

    def _claim(self, decision_id: str, states: tuple[str, ...]) -> tuple[ApprovalRequest | None, dict]:
        """Move an own request from one of *states* to `answering` (one transaction).

        Returns (request, row) when claimed, (None, row) when the request is in
        another state (answered, or claimed by another thread of this process:
        `answering` is only ever set by the owner). The caller must not hold
        the claim across anything but recording the answer, and must end it
        with `_finish` or `_release`.
        """
        with self._lock, Tx(self._db):
            row = self._db.execute("SELECT owner, request, state, proposal, answer FROM requests"
                                   " WHERE decision_id=?", (decision_id,)).fetchone()
            if row is None:
                raise ApprovalError(f"no approval request for decision `{decision_id}`")
            owner, request, state, proposal, answer = row
            got = {"state": state, "proposal": proposal, "answer": answer}
            if state == ANSWERED or state not in states:
                return None, got
            if owner != self._owner:
                raise ApprovalError(f"decision `{decision_id}` belongs to another guard")
            self._db.execute("UPDATE requests SET state=? WHERE decision_id=?", (ANSWERING, decision_id))
            return _request_from(request), got

    def _process(self, decision_id: str | None = None) -> None:
        """As the owner, record the proposed answers (of one request, or all).

        The listener runs without this store's lock held: it takes the guard's
        session lock, which a guard thread may hold while it calls `answer`.
        """
        if self._owner is None:
            return
        with self._lock:
            if self._closed:
                return
            if decision_id is None:
                ids = [r[0] for r in self._db.execute("SELECT decision_id FROM requests WHERE owner=? AND state=?",
                                                      (self._owner, PROPOSED)).fetchall()]
            else:
                row = self._db.execute("SELECT owner, state FROM requests WHERE decision_id=?",
                                       (decision_id,)).fetchone()
                ids = [decision_id] if row is not None and row[0] == self._owner and row[1] == PROPOSED else []
        for did in ids:
            self._record_proposal(did)

    def _release(self, decision_id: str, error: str) -> None:
        with self._lock, Tx(self._db):
            self._db.execute("UPDATE requests SET state=?, proposal=NULL, proposal_error=? WHERE decision_id=?"
                             " AND state=?", (PENDING, error, decision_id, ANSWERING))

    def _finish(self, decision_id: str, answer: ApprovalAnswer, *, error: str | None) -> None:
        with self._lock, Tx(self._db):
            self._db.execute("UPDATE requests SET state=?, answer=?, answered_at=?, proposal_error=?"
                             " WHERE decision_id=?", (ANSWERED, _answer_json(answer), answer.at, error, decision_id))

    def _prune(self) -> None:
        self._db.execute(
            "DELETE FROM requests WHERE state=? AND decision_id NOT IN (SELECT decision_id FROM requests WHERE state=?"
            " ORDER BY answered_at DESC LIMIT ?)", (ANSWERED, ANSWERED, self._keep))

    def _run(self) -> None:
        last_beat = 0.0
        while not self._stop.wait(self._poll):
            try:
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    with self._lock:
                        if self._closed:
                            return
                        with Tx(self._db):
                            self._db.execute("UPDATE owners SET heartbeat=? WHERE owner=?", (time.time(), self._owner))
                    last_beat = time.monotonic()
                self._process()
            except Exception:  # noqa: BLE001 - a busy or failing database is retried at the next tick
                continue
