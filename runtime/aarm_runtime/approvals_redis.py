"""STEP_UP approvals shared by replicas on several hosts: `SqliteApprovals`'s interface and guarantees on Redis.

Install with the runtime's extra: ``pip install 'aarm-runtime[redis]'``.

Everything `aarm_runtime.approvals_store` says holds here, with the Redis
server in place of the file: the request belongs to the instance whose
guard queued it (its *owner*); another process *proposes* an answer; the
owner claims the proposal, checks the deadline and `authorize`, calls its
listener (which writes the approval receipt) and only then makes the answer
final; a proposer that hears nothing within `confirm_timeout_s` withdraws;
a request whose owner stopped cannot be answered and is not pending. The
states and transitions are the same::

    pending --propose--> proposed --claim (owner)--> answering --listener ok--> answered
       ^                    |                            |
       +---withdraw/refuse--+----------listener failed---+
    pending/proposed --claim (owner: expire)--> answering --> answered (timeout, cancelled)

Each transition is one Lua script, which Redis runs atomically. Owners'
heartbeats are stamped with the Redis server's clock (``TIME``), so hosts
whose clocks disagree still agree on which guards are running; deadlines
are in the guard's clock, as for the other implementations.

Layout: a request is one field (its decision id) in each of a few hashes,
one per column (``owner``, ``state``, ``request`` …), plus sorted sets of the
open and the answered ids. Every key carries the hash tag ``{approvals}``,
so the scripts, which name all of them, run on one Redis Cluster slot —
approvals come at the pace of people, one slot is plenty. The request
JSON holds the proposed params, for the approver's eyes: protect the server
as you would the SQLite file (ACLs, TLS with ``rediss://``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from aarm_runtime.approvals import (
    ApprovalAnswer,
    ApprovalError,
    ApprovalRequest,
    Approvals,
    _bind,
)
from aarm_runtime.approvals_store import (
    ANSWERED,
    FORGET_AFTER_S,
    HEARTBEAT_S,
    OWNER_STALE_S,
    PENDING,
    PROPOSED,
    _answer_from,
    _ProposalApprovals,
    _answer_json,
    _request_from,
    _request_json,
)
from aarm_runtime.session_store import StoreError

__all__ = ["RedisApprovals"]

_COLUMNS = ("owner", "request", "args", "requested_at", "deadline", "state", "proposal", "perr", "answer")
_KEYS = (*_COLUMNS, "open", "done", "proposed", "owners", "seq")

# Shared by every script: the keys by name, the server's clock, forgetting a request.
# An owner's heartbeat is the server time of its last beat, negated once it
# closed (so that it is not alive, and is forgotten a day later like the rest).
_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local K = {}
local names = {%(names)s}
for i, name in ipairs(names) do K[name] = KEYS[i] end
local function now()
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function alive(owner, stale)
    local beat = tonumber(redis.call('HGET', K.owners, owner) or '0')
    return beat > 0 and beat > now() - stale
end
local function forget(id)
    for i = 1, %(ncolumns)d do redis.call('HDEL', KEYS[i], id) end
    redis.call('ZREM', K.open, id)
    redis.call('ZREM', K.done, id)
    redis.call('SREM', K.proposed, id)
end
local function col(name, id) return redis.call('HGET', K[name], id) end
""" % {"names": ", ".join(f"'{n}'" for n in _KEYS), "ncolumns": len(_COLUMNS)}

# ARGV: id, owner, request json, args hash, requested_at, deadline.
_REQUEST = """
local id = ARGV[1]
if col('state', id) then return 0 end
local seq = redis.call('INCR', K.seq)
local values = {owner = ARGV[2], request = ARGV[3], args = ARGV[4], requested_at = ARGV[5], deadline = ARGV[6],
                state = 'pending'}
for name, value in pairs(values) do redis.call('HSET', K[name], id, value) end
redis.call('ZADD', K.open, seq, id)
return 1
"""

# ARGV: id, proposal json, guard's now, check args (0/1), args hash, own owner id ('' if none), stale s.
_PROPOSE = """
local id = ARGV[1]
local state = col('state', id)
if not state then return {'missing'} end
if state == 'answered' then return {'answered', col('answer', id)} end
if state ~= 'pending' then return {'busy'} end
if tonumber(ARGV[3]) >= tonumber(col('deadline', id)) then return {'timeout'} end
local expected = col('args', id)
if ARGV[4] == '1' and ARGV[5] ~= expected then return {'args', expected} end
local owner = col('owner', id)
if owner ~= ARGV[6] and not alive(owner, tonumber(ARGV[7])) then return {'gone'} end
redis.call('HSET', K.state, id, 'proposed')
redis.call('HSET', K.proposal, id, ARGV[2])
redis.call('HDEL', K.perr, id)
redis.call('SADD', K.proposed, id)
return {'ok'}
"""

# ARGV: id, proposal json.
_WITHDRAW = """
local id = ARGV[1]
if col('state', id) ~= 'proposed' or col('proposal', id) ~= ARGV[2] then return 0 end
redis.call('HSET', K.state, id, 'pending')
redis.call('HDEL', K.proposal, id)
redis.call('SREM', K.proposed, id)
return 1
"""

# ARGV: id, own owner id, the states it may be claimed from...
# Returns {'missing'}, {'other'}, {'no', state, proposal, answer} or {'yes', state, proposal, answer, request}.
_CLAIM = """
local id = ARGV[1]
local state = col('state', id)
if not state then return {'missing'} end
local from = false
for i = 3, #ARGV do if ARGV[i] == state then from = true end end
if state == 'answered' or not from then return {'no', state, col('proposal', id), col('answer', id)} end
if col('owner', id) ~= ARGV[2] then return {'other'} end
redis.call('HSET', K.state, id, 'answering')
redis.call('SREM', K.proposed, id)
return {'yes', state, col('proposal', id), col('answer', id), col('request', id)}
"""

# ARGV: id, error.
_RELEASE = """
local id = ARGV[1]
if col('state', id) ~= 'answering' then return 0 end
redis.call('HSET', K.state, id, 'pending')
redis.call('HDEL', K.proposal, id)
redis.call('HSET', K.perr, id, ARGV[2])
return 1
"""

# ARGV: id, answer json, has error (0/1), error, keep.
_FINISH = """
local id = ARGV[1]
if not col('state', id) then return 0 end
redis.call('HSET', K.state, id, 'answered')
redis.call('HSET', K.answer, id, ARGV[2])
if ARGV[3] == '1' then redis.call('HSET', K.perr, id, ARGV[4]) else redis.call('HDEL', K.perr, id) end
redis.call('ZREM', K.open, id)
redis.call('SREM', K.proposed, id)
redis.call('ZADD', K.done, redis.call('INCR', K.seq), id)
local over = redis.call('ZCARD', K.done) - tonumber(ARGV[5])
if over > 0 then
    for _, old in ipairs(redis.call('ZRANGE', K.done, 0, over - 1)) do forget(old) end
end
return 1
"""

# ARGV: owner id, forget after s. Stamps the owner and forgets guards gone for a day, with their requests.
_ATTACH = """
local cutoff = now() - tonumber(ARGV[2])
local gone = {}
local beats = redis.call('HGETALL', K.owners)
for i = 1, #beats, 2 do
    if math.abs(tonumber(beats[i + 1])) < cutoff then
        gone[beats[i]] = true
        redis.call('HDEL', K.owners, beats[i])
    end
end
for _, set in ipairs({K.open, K.done}) do
    for _, id in ipairs(redis.call('ZRANGE', set, 0, -1)) do
        local owner = col('owner', id)
        if not owner or gone[owner] then forget(id) end
    end
end
redis.call('HSET', K.owners, ARGV[1], tostring(now()))
return 1
"""

# ARGV: owner id, closing (0/1).
_BEAT = """
local beat = now()
if ARGV[2] == '1' then beat = -beat end
redis.call('HSET', K.owners, ARGV[1], string.format('%.6f', beat))
return 1
"""

# ARGV: guard's now, stale s. Open requests that can still be answered: {request json, requested_at, ...}.
_PENDING = """
local out = {}
local guard_now = tonumber(ARGV[1])
local stale = tonumber(ARGV[2])
for _, id in ipairs(redis.call('ZRANGE', K.open, 0, -1)) do
    local state = col('state', id)
    if (state == 'pending' or state == 'proposed') and tonumber(col('deadline', id)) > guard_now
            and alive(col('owner', id), stale) then
        table.insert(out, col('request', id))
        table.insert(out, col('requested_at', id))
    end
end
return out
"""

# ARGV: id. The request's columns in _COLUMNS order, or {} when there is none.
_ROW = """
local id = ARGV[1]
if not col('state', id) then return {} end
local out = {}
for i = 1, %(ncolumns)d do out[i] = redis.call('HGET', KEYS[i], id) end
return out
""" % {"ncolumns": len(_COLUMNS)}

# ARGV: owner id. The ids proposed to this owner.
_INBOX = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', K.proposed)) do
    if col('state', id) ~= 'proposed' then
        redis.call('SREM', K.proposed, id)
    elseif col('owner', id) == ARGV[1] then
        table.insert(out, id)
    end
end
return out
"""


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


class RedisApprovals(_ProposalApprovals):
    """The approvals queue on the Redis server at *url_or_client*, answerable from any host; thread-safe.

    *prefix* starts every key; the other arguments are `SqliteApprovals`'s:
    *clock* (seconds since the epoch; defaults to the attached guard's
    clock, else `time.time`), *authorize* (called in the owner process as
    ``authorize(approver, request)``), *confirm_timeout_s* (how long
    `approve` / `reject` wait for the owner to record a proposed answer),
    *keep* (answered requests kept for late `answer` calls). *timeout_s*
    bounds each round trip when the client is made from a URL.
    """

    SYSTEM = Approvals.SYSTEM

    def __init__(self, url_or_client: Any, *, prefix: str = "aarm:", clock: Callable[[], float] | None = None,
                 authorize: Callable[[str, ApprovalRequest], bool] | None = None, keep: int = 10_000,
                 poll_interval_s: float = 0.05, confirm_timeout_s: float = 10.0, timeout_s: float = 5.0) -> None:
        from aarm_runtime.session_redis import redis_address, redis_client

        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain `{` or `}` (they mark Redis Cluster hash tags)")
        if keep < 1:
            raise ValueError("keep must be at least 1")
        try:
            self._client = redis_client(url_or_client, timeout_s=timeout_s)
        except StoreError as err:
            raise ApprovalError(str(err)) from None
        import redis

        self._redis = redis
        self._own_client = isinstance(url_or_client, str)
        self.address = redis_address(self._client)
        self._keys = [f"{prefix}{{approvals}}:{name}" for name in _KEYS]
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
        scripts = {"request": _REQUEST, "propose": _PROPOSE, "withdraw": _WITHDRAW, "claim": _CLAIM,
                   "release": _RELEASE, "finish": _FINISH, "attach": _ATTACH, "beat": _BEAT, "pending": _PENDING,
                   "row": _ROW, "inbox": _INBOX}
        self._scripts = {name: self._client.register_script(_PRELUDE + body) for name, body in scripts.items()}

    # ---- the server --------------------------------------------------------------------

    def _run(self, name: str, *args: Any) -> Any:
        try:
            return self._scripts[name](keys=self._keys, args=list(args))
        except self._redis.RedisError as err:
            raise ApprovalError(f"approvals on Redis at `{self.address}`: {type(err).__name__}: {err}") from None

    def close(self) -> None:
        """Stop the owner's thread, mark the owner stopped (its requests can no longer be answered)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._owner is not None:
            try:
                self._run("beat", self._owner, 1)
            except ApprovalError:
                pass  # the heartbeat stops anyway: the owner counts as stopped after OWNER_STALE_S
        if self._own_client:
            try:
                self._client.close()
            except self._redis.RedisError:
                pass

    def __enter__(self) -> RedisApprovals:
        return self

    # ---- the guard's side --------------------------------------------------------------

    def attach(self, listener: Callable[[ApprovalRequest, ApprovalAnswer], None], *,
               clock: Callable[[], float] | None = None, name: str | None = None) -> None:
        """Called once by the guard: this instance owns the requests it queues and records their answers."""
        with self._lock:
            _bind(self, listener, clock, name)
            if self._owner is None:
                owner = uuid.uuid4().hex
                self._run("attach", owner, FORGET_AFTER_S)
                self._owner = owner
                self._thread = threading.Thread(target=self._loop, name="aarm-approvals", daemon=True)
                self._thread.start()

    def request(self, request: ApprovalRequest) -> None:
        """Queue a STEP_UP decision for approval (this instance must be attached to a guard)."""
        if not isinstance(request, ApprovalRequest):
            raise TypeError(f"expected an `ApprovalRequest`, got `{type(request).__name__}`")
        if self._owner is None:
            raise ApprovalError("only a store attached to a guard can queue approval requests")
        if not self._run("request", request.decision_id, self._owner, _request_json(request), request.args_hash,
                         repr(float(request.requested_at)), repr(float(request.deadline))):
            raise ApprovalError(f"decision `{request.decision_id}` is already queued for approval")

    # ---- the operator's side ------------------------------------------------------------

    def pending(self) -> list[ApprovalRequest]:
        """Requests still waiting for an answer whose guard is running and whose deadline has not passed."""
        flat = self._run("pending", repr(float(self._now())), OWNER_STALE_S)
        rows = [(float(flat[i + 1]), i, flat[i]) for i in range(0, len(flat), 2)]
        # Queued order breaks ties between equal request times, as the SQLite rowid does.
        return [_request_from(text.decode()) for _, _, text in sorted(rows)]

    def get(self, decision_id: str) -> ApprovalRequest | None:
        try:
            text = self._client.hget(self._keys[_KEYS.index("request")], decision_id)
        except self._redis.RedisError as err:
            raise ApprovalError(f"approvals on Redis at `{self.address}`: {type(err).__name__}: {err}") from None
        return None if text is None else _request_from(text.decode())

    # ---- internals ------------------------------------------------------------------------

    def _row(self, decision_id: str) -> dict[str, Any]:
        got = self._run("row", decision_id)
        if not got:
            raise ApprovalError(f"no approval request for decision `{decision_id}`")
        row = dict(zip(_COLUMNS, (_text(v) for v in got)))
        row["decision_id"] = decision_id
        row["proposal_error"] = row.pop("perr")
        row["args_hash"] = row.pop("args")
        row["deadline"] = float(row["deadline"])
        return row

    def _human(self, decision_id: str, verdict: str, approver: str, args_hash: str | None,
               reason: str | None) -> ApprovalAnswer:
        if not isinstance(approver, str) or not approver.strip():
            raise ApprovalError("an approver name is required")
        if approver == self.system_name or approver == self.SYSTEM:
            raise ApprovalError(f"`{approver}` is the runtime's own name and cannot approve")
        proposal = json.dumps({"verdict": verdict, "approver": approver, "reason": reason,
                               "nonce": uuid.uuid4().hex})
        got = self._run("propose", decision_id, proposal, repr(float(self._now())), 0 if args_hash is None else 1,
                        args_hash or "", self._owner or "", OWNER_STALE_S)
        outcome = got[0].decode()
        if outcome == "missing":
            raise ApprovalError(f"no approval request for decision `{decision_id}`")
        if outcome == "answered":
            done = _answer_from(got[1].decode())
            raise ApprovalError(f"decision `{decision_id}` was already answered ({done.verdict} by "
                                f"`{done.approver}`)")
        if outcome == "busy":
            raise ApprovalError(f"decision `{decision_id}` is being answered by someone else")
        if outcome == "timeout":
            raise ApprovalError(f"approval of decision `{decision_id}` timed out")
        if outcome == "args":
            raise ApprovalError(f"decision `{decision_id}` was requested for arguments `{got[1].decode()}`, "
                                f"not `{args_hash}`")
        if outcome == "gone":
            raise ApprovalError(f"the guard that asked for decision `{decision_id}` is no longer running")
        return self._await_proposal(decision_id, proposal)

    def _await_proposal(self, decision_id: str, proposal: str) -> ApprovalAnswer:
        nonce = json.loads(proposal)["nonce"]
        verdict = json.loads(proposal)["verdict"]
        limit = time.monotonic() + self._confirm_timeout
        while True:
            self._process(decision_id)
            row = self._row(decision_id)
            if row["state"] == ANSWERED:
                answer = _answer_from(row["answer"])
                if row["proposal"] is not None and json.loads(row["proposal"]).get("nonce") == nonce \
                        and answer.verdict == verdict:
                    return answer
                raise ApprovalError(row["proposal_error"] or f"decision `{decision_id}` was answered "
                                    f"({answer.verdict} by `{answer.approver}`) before this answer was recorded")
            if row["state"] == PENDING:
                raise ApprovalError(row["proposal_error"] or f"the answer to decision `{decision_id}` was not recorded")
            if time.monotonic() >= limit:
                if self._run("withdraw", decision_id, proposal):
                    raise ApprovalError(f"no running guard recorded the answer to decision `{decision_id}` within "
                                        f"{self._confirm_timeout:g} s; nothing was answered")
                continue
            time.sleep(self._poll)

    def _claim(self, decision_id: str, states: tuple[str, ...]) -> tuple[ApprovalRequest | None, dict]:
        """Move an own request from one of *states* to `answering` (one script); see `SqliteApprovals._claim`."""
        got = self._run("claim", decision_id, self._owner or "", *states)
        outcome = got[0].decode()
        if outcome == "missing":
            raise ApprovalError(f"no approval request for decision `{decision_id}`")
        if outcome == "other":
            raise ApprovalError(f"decision `{decision_id}` belongs to another guard")
        row = {"state": _text(got[1]), "proposal": _text(got[2]), "answer": _text(got[3])}
        if outcome == "no":
            return None, row
        return _request_from(got[4].decode()), row

    def _process(self, decision_id: str | None = None) -> None:
        """As the owner, record the proposed answers (of one request, or all); the listener runs unlocked."""
        if self._owner is None or self._closed:
            return
        if decision_id is None:
            ids = [i.decode() for i in self._run("inbox", self._owner)]
        else:
            got = self._run("row", decision_id)
            row = dict(zip(_COLUMNS, (_text(v) for v in got)))
            ids = [decision_id] if row.get("owner") == self._owner and row.get("state") == PROPOSED else []
        for did in ids:
            self._record_proposal(did)

    def _release(self, decision_id: str, error: str) -> None:
        self._run("release", decision_id, error)

    def _finish(self, decision_id: str, answer: ApprovalAnswer, *, error: str | None) -> None:
        self._run("finish", decision_id, _answer_json(answer), 0 if error is None else 1, error or "", self._keep)

    def _loop(self) -> None:
        last_beat = 0.0
        while not self._stop.wait(self._poll):
            try:
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    self._run("beat", self._owner, 0)
                    last_beat = time.monotonic()
                self._process()
            except Exception:  # noqa: BLE001 - an unreachable server is retried at the next tick
                continue

