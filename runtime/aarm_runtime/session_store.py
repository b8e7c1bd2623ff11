"""Session stores: where a guarded session's context lives, so that several replicas share it.

A `Guard` without a store keeps each session in its own memory (the
default). With a store, every operation on a session runs under the
store's lock on that session and goes:

1. `acquire` — take the session's lock (a lease: it expires after
   *lease_s* if its holder dies) and read what changed since this replica
   last saw the session: the events appended since, and the state blob if
   the version moved;
2. the guard applies those to its cached `Session`, decides, writes its
   receipts (each replica has its own receipt log);
3. `commit` — append the operation's new events and replace the state
   blob, only if the lease is still ours and nobody appended in between,
   then release. A commit that fails leaves the store as it was; the guard
   then denies the action (fail closed) and reloads the session.

The store sees opaque bytes: an append-only list of *events* (the
session's growth — context-log entries, history, outputs) and one *state*
blob (the small mutable part — pending decisions, counters), plus a
*header* written once at creation (how the session was opened). What the
bytes mean is `aarm_runtime.session`'s business; the store only provides
atomicity. Implementations: `MemorySessionStore` (one process; tests and
threads), `aarm_runtime.session_sqlite.SqliteSessionStore` (one host,
survives restarts) and `aarm_runtime.session_redis.RedisSessionStore`
(replicas on several hosts; redis-py).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = [
    "LeaseLost", "MemorySessionStore", "SessionReplaced", "SessionStore", "StoreError", "StoreLockTimeout",
    "StoreView",
]


class StoreError(Exception):
    """The session store failed or refused an operation; the guard denies the action it was for."""


class StoreLockTimeout(StoreError):
    """The session's lock was not free within the wait (another replica holds it)."""


class LeaseLost(StoreError):
    """The lease on the session expired or the session changed under it: the commit was refused."""


class SessionReplaced(StoreError):
    """The store's session of this id is another one than the replica's copy: it expired from the store and
    was opened again under the same id. The copy must not be used (nor written back) again."""


@dataclasses.dataclass(frozen=True, slots=True)
class StoreView:
    """What `acquire` returns: the lock token and what changed since the caller's *since* / *known_version*.

    `version` counts commits (0 right after `create`); `count` is the number
    of events in the store; `events` are those from index *since* on;
    `state` is the state blob, or None when *known_version* is the current
    version (the caller's copy is current) or nothing was committed yet.
    `incarnation` is drawn at random by `create`: a session that expired and
    was created again under the same id has another one, so a replica can
    tell that its copy is of the old session ("" from a store that cannot
    say: the check is then skipped).
    """

    token: str
    version: int
    count: int
    events: tuple[bytes, ...]
    state: bytes | None
    incarnation: str = ""


@runtime_checkable
class SessionStore(Protocol):
    """The operations a guard needs from a shared session store (see the module docstring).

    Every method raises `StoreError` (or a subclass) when the store cannot do
    what was asked; none of them may leave a partial change behind.
    """

    def create(self, session_id: str, header: bytes, *, ttl_s: float | None = None) -> bool:
        """Create the session with its header, atomically; False (and no change) if it exists.

        *ttl_s*: the store may forget the session that long after its last commit.
        """

    def header(self, session_id: str) -> bytes | None:
        """The session's header, or None if the store does not have the session."""

    def acquire(self, session_id: str, *, since: int, known_version: int, lease_s: float,
                wait_s: float) -> StoreView:
        """Lock the session for *lease_s* seconds (waiting up to *wait_s* for it) and read what changed.

        Raises `StoreLockTimeout` when the lock stays taken, `StoreError` when
        the session does not exist or the store fails.
        """

    def commit(self, session_id: str, token: str, *, base_count: int, events: Sequence[bytes],
               state: bytes | None, release: bool = True) -> int:
        """Append *events* after exactly *base_count* events and set the state blob (None keeps it);
        all or nothing, and only while *token* holds the lease. Returns the new version.

        Raises `LeaseLost` if the lease is no longer *token*'s or the event count
        is not *base_count*.
        """

    def release(self, session_id: str, token: str) -> None:
        """Give the lock back (nothing if *token* no longer holds it)."""

    def close(self) -> None:
        """Release connections; the store's data stays."""


class _MemorySession:
    __slots__ = ("count_ttl", "events", "expires", "header", "incarnation", "lock_token", "lock_until", "state",
                 "version")

    def __init__(self, header: bytes, ttl_s: float | None) -> None:
        self.header = header
        self.incarnation = secrets.token_hex(8)
        self.events: list[bytes] = []
        self.state: bytes | None = None
        self.version = 0
        self.lock_token: str | None = None
        self.lock_until = 0.0
        self.count_ttl = ttl_s
        self.expires = None if ttl_s is None else time.monotonic() + ttl_s


class MemorySessionStore:
    """A `SessionStore` in this process's memory: guards in one process (threads, tests) share sessions.

    Leases run on `time.monotonic`; a session past its TTL is forgotten at
    the next operation that touches it.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, _MemorySession] = {}
        self._cond = threading.Condition()
        self._closed = False

    def _get(self, session_id: str) -> _MemorySession | None:
        got = self._sessions.get(session_id)
        if got is not None and got.expires is not None and time.monotonic() >= got.expires:
            del self._sessions[session_id]
            return None
        return got

    def _check(self) -> None:
        if self._closed:
            raise StoreError("the session store is closed")

    def create(self, session_id: str, header: bytes, *, ttl_s: float | None = None) -> bool:
        _check_id(session_id)
        if not isinstance(header, bytes):
            raise TypeError("header must be bytes")
        with self._cond:
            self._check()
            if self._get(session_id) is not None:
                return False
            self._sessions[session_id] = _MemorySession(header, ttl_s)
            return True

    def header(self, session_id: str) -> bytes | None:
        _check_id(session_id)
        with self._cond:
            self._check()
            got = self._get(session_id)
            return None if got is None else got.header

    def acquire(self, session_id: str, *, since: int, known_version: int, lease_s: float,
                wait_s: float) -> StoreView:
        _check_id(session_id)
        deadline = time.monotonic() + max(0.0, wait_s)
        token = secrets.token_hex(16)
        with self._cond:
            while True:
                self._check()
                got = self._get(session_id)
                if got is None:
                    raise StoreError(f"session `{session_id}` is not in the store")
                now = time.monotonic()
                if got.lock_token is None or now >= got.lock_until:
                    break
                left = min(deadline, got.lock_until) - now
                if now >= deadline:
                    raise StoreLockTimeout(f"session `{session_id}` stayed locked by another replica for "
                                           f"{wait_s:g} s")
                self._cond.wait(left)
            got.lock_token, got.lock_until = token, now + lease_s
            if since < 0 or since > len(got.events):
                since = 0
            state = None if known_version == got.version else got.state
            return StoreView(token=token, version=got.version, count=len(got.events),
                             events=tuple(got.events[since:]), state=state, incarnation=got.incarnation)

    def commit(self, session_id: str, token: str, *, base_count: int, events: Sequence[bytes],
               state: bytes | None, release: bool = True) -> int:
        blobs, state = _commit_args(session_id, events, state)
        with self._cond:
            self._check()
            got = self._get(session_id)
            if got is None:
                raise LeaseLost(f"session `{session_id}` is no longer in the store")
            if got.lock_token != token or time.monotonic() >= got.lock_until:
                raise LeaseLost(f"the lease on session `{session_id}` expired before the commit")
            if len(got.events) != base_count:
                raise LeaseLost(f"session `{session_id}` has {len(got.events)} events, not {base_count}")
            got.events.extend(blobs)
            if state is not None:
                got.state = state
            got.version += 1
            if got.count_ttl is not None:
                got.expires = time.monotonic() + got.count_ttl
            if release:
                got.lock_token = None
                self._cond.notify_all()
            return got.version

    def release(self, session_id: str, token: str) -> None:
        with self._cond:
            got = self._sessions.get(session_id)
            if got is not None and got.lock_token == token:
                got.lock_token = None
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _check_id(session_id: object) -> None:
    if not isinstance(session_id, str) or not session_id:
        raise ValueError("session_id must be a non-empty string")


def _commit_args(session_id: object, events: Sequence[object], state: object) -> tuple[list[bytes], bytes | None]:
    """A commit's arguments checked and converted before anything changes (every store's `commit` starts
    here): an event that is not bytes must not leave the ones before it appended."""
    _check_id(session_id)
    return [_blob(e, "events") for e in events], None if state is None else _blob(state, "state")


def _blob(value: object, what: str) -> bytes:
    # `bytes(3)` is three zero bytes, not an error: only bytes-like values pass.
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not `{type(value).__name__}`")
    return bytes(value)
