"""A `SessionStore` in one SQLite file (WAL): guards in several processes on one host share sessions.

Every operation is one ``BEGIN IMMEDIATE`` transaction, so processes
serialise on SQLite's write lock and a commit is all or nothing. The
session's own lock is a row (token, expiry) rather than a held database
lock: a holder killed with SIGKILL leaves only a row whose lease runs out.
Leases and TTLs run on the wall clock (`time.time`) because the processes
sharing the file share no other clock; hosts are not involved (SQLite over
a network filesystem is not supported).

Acquire and release write only the lock row; they run with
``synchronous=NORMAL`` (a lock lost to a power cut is a lock that expired).
Commits run with ``synchronous=FULL``: an acknowledged commit survives a
power cut, and the fsync also makes the lock writes before it durable.

>>> import tempfile, os
>>> store = SqliteSessionStore(os.path.join(tempfile.mkdtemp(), "sessions.db"))
>>> store.create("s1", b"header")
True
>>> view = store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=1)
>>> store.commit("s1", view.token, base_count=0, events=[b"e1", b"e2"], state=b"st")
1
>>> store.acquire("s1", since=1, known_version=0, lease_s=5, wait_s=1).events
(b'e2',)
>>> store.close()
"""

from __future__ import annotations

import os
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from aarm_runtime.session_store import LeaseLost, StoreError, StoreLockTimeout, StoreView, _check_id, _commit_args
from aarm_runtime.sqlite_file import Tx, open_database

__all__ = ["SCHEMA_VERSION", "SqliteSessionStore"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    header BLOB NOT NULL,
    version INTEGER NOT NULL,
    count INTEGER NOT NULL,
    state BLOB,
    lock_token TEXT,
    lock_until REAL NOT NULL,
    ttl REAL,
    expires REAL);
CREATE INDEX IF NOT EXISTS sessions_expires ON sessions (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    session TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (session, idx)) WITHOUT ROWID;
"""

# Polling for a session lock held by another process: short first (commits
# take well under a millisecond), longer when the holder is slow.
_FIRST_BACKOFF_S = 0.0005
_MAX_BACKOFF_S = 0.02


class SqliteSessionStore:
    """The session store in the SQLite file *path* (created 0600 if missing); thread-safe.

    *busy_timeout_s*: how long one operation waits for SQLite's write lock
    (held for one short transaction at a time) before it fails with
    `StoreError`. The session locks of `acquire` are waited for separately,
    up to its *wait_s*.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 5.0) -> None:
        if busy_timeout_s <= 0:
            raise ValueError("busy_timeout_s must be positive")
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        # One connection behind a lock: SQLite lets one writer in at a time
        # anyway, and every operation here writes (acquire takes a lock row).
        self._lock = threading.Lock()
        self._closed = False
        self._sync = ""
        self._db = self._connect()

    # ---- the database ----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = open_database(self.path, schema=_SCHEMA, version=SCHEMA_VERSION, timeout_s=self._busy_timeout_s,
                           noun="session store", error=StoreError)
        try:
            with Tx(db):
                # Added to schema 1 in place (a file an older runtime made reads NULL: not checked).
                if "incarnation" not in {row[1] for row in db.execute("PRAGMA table_info(sessions)")}:
                    db.execute("ALTER TABLE sessions ADD COLUMN incarnation TEXT")
        except sqlite3.Error as err:
            db.close()
            raise StoreError(f"`{self.path}` is not a usable session store: {err}") from None
        return db

    def _synchronous(self, mode: str) -> None:
        if self._sync != mode:
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._sync = mode

    def _fail(self, err: sqlite3.Error) -> StoreError:
        return StoreError(f"session store `{self.path}`: {err}")

    def _check(self) -> None:
        if self._closed:
            raise StoreError(f"the session store `{self.path}` is closed")

    @staticmethod
    def _expire(db: sqlite3.Connection, session_id: str, now: float) -> tuple | None:
        """The session's row (version, count, state, lock_token, lock_until, incarnation), forgetting it if
        past its TTL."""
        row = db.execute("SELECT version, count, state, lock_token, lock_until, incarnation, expires FROM sessions"
                         " WHERE id=?", (session_id,)).fetchone()
        if row is None:
            return None
        if row[6] is not None and now >= row[6]:
            db.execute("DELETE FROM events WHERE session=?", (session_id,))
            db.execute("DELETE FROM sessions WHERE id=?", (session_id,))
            return None
        return row[:6]

    # ---- the protocol -----------------------------------------------------------------

    def create(self, session_id: str, header: bytes, *, ttl_s: float | None = None) -> bool:
        _check_id(session_id)
        if not isinstance(header, bytes):
            raise TypeError("header must be bytes")
        with self._lock:
            self._check()
            now = time.time()
            try:
                self._synchronous("FULL")
                with Tx(self._db) as db:
                    # Sessions past their TTL go here as well as when touched:
                    # otherwise one that nobody touches again stays forever.
                    gone = db.execute("SELECT id FROM sessions WHERE expires IS NOT NULL AND expires <= ?"
                                      " LIMIT 100", (now,)).fetchall()
                    db.executemany("DELETE FROM events WHERE session=?", gone)
                    db.executemany("DELETE FROM sessions WHERE id=?", gone)
                    if self._expire(db, session_id, now) is not None:
                        return False
                    db.execute("INSERT INTO sessions (id, header, version, count, state, lock_token, lock_until,"
                               " ttl, expires, incarnation) VALUES (?, ?, 0, 0, NULL, NULL, 0, ?, ?, ?)",
                               (session_id, header, ttl_s, None if ttl_s is None else now + ttl_s,
                                secrets.token_hex(8)))
                    return True
            except sqlite3.Error as err:
                raise self._fail(err) from None

    def header(self, session_id: str) -> bytes | None:
        _check_id(session_id)
        with self._lock:
            self._check()
            try:
                row = self._db.execute("SELECT header, expires FROM sessions WHERE id=?", (session_id,)).fetchone()
            except sqlite3.Error as err:
                raise self._fail(err) from None
        if row is None or (row[1] is not None and time.time() >= row[1]):
            return None
        return bytes(row[0])

    def acquire(self, session_id: str, *, since: int, known_version: int, lease_s: float,
                wait_s: float) -> StoreView:
        _check_id(session_id)
        deadline = time.monotonic() + max(0.0, wait_s)
        token = secrets.token_hex(16)
        backoff = _FIRST_BACKOFF_S
        while True:
            with self._lock:
                self._check()
                try:
                    self._synchronous("NORMAL")
                    with Tx(self._db) as db:
                        now = time.time()
                        row = self._expire(db, session_id, now)
                        if row is None:
                            raise StoreError(f"session `{session_id}` is not in the store")
                        version, count, state, lock_token, lock_until, incarnation = row
                        if lock_token is None or now >= lock_until:
                            db.execute("UPDATE sessions SET lock_token=?, lock_until=? WHERE id=?",
                                       (token, now + lease_s, session_id))
                            if since < 0 or since > count:
                                since = 0
                            events = tuple(bytes(r[0]) for r in db.execute(
                                "SELECT data FROM events WHERE session=? AND idx>=? ORDER BY idx",
                                (session_id, since)))
                            return StoreView(token=token, version=version, count=count, events=events,
                                             state=None if known_version == version or state is None
                                             else bytes(state), incarnation=incarnation or "")
                        held_for = lock_until - now
                except sqlite3.Error as err:
                    raise self._fail(err) from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreLockTimeout(f"session `{session_id}` stayed locked by another replica for {wait_s:g} s")
            # Jitter keeps waiters in several processes from retrying in step.
            time.sleep(min(left, held_for, backoff) * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def commit(self, session_id: str, token: str, *, base_count: int, events: Sequence[bytes],
               state: bytes | None, release: bool = True) -> int:
        blobs, state = _commit_args(session_id, events, state)
        with self._lock:
            self._check()
            try:
                self._synchronous("FULL")
                with Tx(self._db) as db:
                    now = time.time()
                    row = self._expire(db, session_id, now)
                    if row is None:
                        raise LeaseLost(f"session `{session_id}` is no longer in the store")
                    version, count, _, lock_token, lock_until, _ = row
                    if lock_token != token or now >= lock_until:
                        raise LeaseLost(f"the lease on session `{session_id}` expired before the commit")
                    if count != base_count:
                        raise LeaseLost(f"session `{session_id}` has {count} events, not {base_count}")
                    db.executemany("INSERT INTO events (session, idx, data) VALUES (?, ?, ?)",
                                   [(session_id, count + i, blob) for i, blob in enumerate(blobs)])
                    db.execute(
                        "UPDATE sessions SET version=version+1, count=?, state=coalesce(?, state),"
                        " expires=CASE WHEN ttl IS NULL THEN NULL ELSE ? + ttl END,"
                        " lock_token=CASE WHEN ? THEN NULL ELSE lock_token END WHERE id=?",
                        (count + len(blobs), state, now, release, session_id))
                    return version + 1
            except sqlite3.Error as err:
                raise self._fail(err) from None

    def release(self, session_id: str, token: str) -> None:
        with self._lock:
            if self._closed:
                return  # as for a dead holder: the lease runs out
            try:
                self._synchronous("NORMAL")
                with Tx(self._db) as db:
                    db.execute("UPDATE sessions SET lock_token=NULL WHERE id=? AND lock_token=?",
                               (session_id, token))
            except sqlite3.Error as err:
                raise self._fail(err) from None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()

    def __enter__(self) -> SqliteSessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
