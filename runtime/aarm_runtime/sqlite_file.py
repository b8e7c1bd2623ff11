"""The SQLite files of the runtime's stores (`approvals_store`, `session_sqlite`): opened one way, written one way.

`open_database` creates the file 0600 when it is new (its rows hold proposed
params or a session's context; SQLite gives its -wal and -shm files the
database file's permissions), insists on WAL, installs the schema in one
`BEGIN IMMEDIATE` transaction and refuses a file of another schema version,
raising the caller's error class with the path in the message. `Tx` is that
transaction: one writer at a time across processes.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["Tx", "open_database"]


class Tx:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error): one writer at a time across processes."""

    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:
            # Some errors (disk full, I/O) end the transaction themselves; a
            # second ROLLBACK would hide the error that matters.
            self._db.execute("ROLLBACK")


def open_database(path: Path, *, schema: str, version: int, timeout_s: float, noun: str,
                  error: type[Exception]) -> sqlite3.Connection:
    """A connection to the *noun* at *path* (autocommit; `Tx` for transactions), schema installed.

    Raises *error* naming *path* when the file cannot be opened, is not a
    SQLite database, cannot use WAL, or has another schema version.
    """
    try:
        if not path.exists():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
                os.close(fd)
            except FileExistsError:
                pass
        db = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as err:
        raise error(f"cannot open {noun} `{path}`: {err}") from None
    try:
        db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise error(f"{noun} `{path}` cannot use WAL mode (got `{mode}`)")
        with Tx(db):
            # One statement at a time: `executescript` would commit the open transaction first.
            for statement in schema.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(version),))
            elif row[0] != str(version):
                raise error(f"{noun} `{path}` has schema {row[0]}; this runtime reads {version}")
    except sqlite3.Error as err:
        db.close()
        raise error(f"`{path}` is not a usable {noun}: {err}") from None
    except BaseException:
        db.close()
        raise
    return db
