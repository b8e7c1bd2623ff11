"""The receipt log writer: one RFC 8742 CBOR-sequence file of signed receipts and checkpoints.

Layout (see `aarm_runtime.receipts` and ``docs/receipts.md``): every record is
a tagged COSE_Sign1 receipt; record ``seq`` is its leaf index in an RFC 9162
Merkle tree over the exact record bytes, ``prev`` the SHA-256 of the previous
record's bytes. Checkpoints are interleaved items outside the chain: a
COSE_Sign1 over the detached Merkle root of all records so far, in the COSE
Receipts shape (protected vds = 1, unprotected vdp with the inclusion proof of
the last leaf). One is written every `checkpoint_every` records (256), every
`checkpoint_interval_s` seconds (10) when records arrived, after a key
rotation or a recovery, and after the log-close record.

Durability and acknowledgement
------------------------------
`append` returns an `Ack` only once the record is on disk as the fsync mode
defines it — that return *is* the acknowledgement; an exception means the
record may not be durable and the caller must treat the action as not
recorded (fail closed). `submit` writes and signs at once and returns a
`Pending`, whose `Pending.wait` returns the `Ack` after the covering fsync:
an interceptor can start other work and wait before it lets the effect out.
`append_many` writes a batch and waits for one fsync.

``FsyncMode.ALWAYS`` (``"always"``): fdatasync after every record, under the
writer lock. ``FsyncMode.GROUP`` (``"group"``, the default): group commit —
records are written at once; one fdatasync covers every record written before
it started, issued by the first waiter, while other threads keep writing. A
waiter never waits longer than for one sync in progress and its own. A
background flusher syncs what nobody waits for (`submit` without
`Pending.wait`): at once while callers have been waiting for acks (within
the last 50 ms — the sync then runs while they sign their next records),
else `flush_delay_s` (2 ms) after it sees the log dirty, so that one
fdatasync covers that window's records instead of two or three — syncing
back to back slowed a busy writing thread that waits for nothing by a
quarter to a third on a 2-vCPU machine (GIL hand-offs, the syncs' own CPU).
``FsyncMode.UNSAFE_NONE``
(``"none"``): never fsync except at close; acks say ``durable=False`` and a
power loss may drop acknowledged receipts — for benchmarks and tests only.

Crash recovery
--------------
`ReceiptLog.open` reopens an unterminated log. A torn tail (an incomplete
last item, or zero fill) is truncated to the end of the last complete item
and a recovery record carries the offset, length and SHA-256 of the removed
bytes; a log that simply stopped gets a recovery record with length 0. A tail
that hides complete items (an altered length, not a crash) is refused with
`LogCorruptError`, so recovery never destroys evidence of tampering. A
closed log cannot be reopened.

One writer per file: the file is locked with ``flock``. All methods are
thread-safe; signing happens under the lock because ``prev`` is the hash of
the previous record's signed bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from aarm_runtime import __version__, cose, keys, merkle
from aarm_runtime.receipts import (
    Close,
    Kind,
    ReceiptFormatError,
    Record,
    RecordItem,
    Recovery,
    Rotation,
    StateError,
    StateMachine,
    ZERO_DIGEST,
    checkpoint_headers,
    encode_record_payload,
    facts,
    parse_item,
    protected_receipt_header,
    read_windows,
    rotation_pop_message,
    sign1_receipt,
)

__all__ = [
    "Ack",
    "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_CHECKPOINT_INTERVAL_S",
    "DEFAULT_FLUSH_DELAY_S",
    "FsyncMode",
    "KeyMismatchError",
    "LogBusyError",
    "LogClosedError",
    "LogCorruptError",
    "LogError",
    "LogWriteError",
    "Pending",
    "ReceiptLog",
]

DEFAULT_CHECKPOINT_EVERY = 256
DEFAULT_CHECKPOINT_INTERVAL_S = 10.0
DEFAULT_FLUSH_DELAY_S = 0.002
DEFAULT_ISSUER = "aarm-runtime"

_fdatasync = getattr(os, "fdatasync", os.fsync)
_sha256 = hashlib.sha256
_WAITED_RECENTLY_S = 0.05  # a caller waited for an ack this recently: the flusher does not delay
_LEAF_PREFIX = b"\x00"  # RFC 9162 leaf hash: SHA-256(0x00 ‖ record bytes), as `merkle.leaf_hash`


class FsyncMode(enum.Enum):
    ALWAYS = "always"
    GROUP = "group"
    UNSAFE_NONE = "none"


class LogError(Exception):
    """The receipt log cannot do what was asked."""


class LogWriteError(LogError):
    """Writing or syncing failed; the log refuses every further append (fail closed)."""


class LogClosedError(LogError):
    """The log has a log-close record (or was closed by this writer); start a new log."""


class LogCorruptError(LogError):
    """The file is not a recoverable receipt log: not a torn tail but altered or foreign bytes."""


class LogBusyError(LogError):
    """Another writer holds the log's lock."""


class KeyMismatchError(LogError):
    """The key given to reopen a log is not the key the log is currently signed with."""


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """A record is in the log: its seq, where its bytes are, their SHA-256, and whether an fsync covered them."""

    seq: int
    offset: int
    length: int
    digest: bytes
    durable: bool


class Pending:
    """A record written and signed but perhaps not yet synced; `wait` returns its `Ack` after the fsync."""

    __slots__ = ("_log", "digest", "length", "offset", "seq")

    def __init__(self, log: ReceiptLog, seq: int, offset: int, length: int, digest: bytes) -> None:
        self._log = log
        self.seq = seq
        self.offset = offset
        self.length = length
        self.digest = digest

    def done(self) -> bool:
        """True once `wait` would return without blocking (always true with fsync ``none``)."""
        log = self._log
        return log._fsync is FsyncMode.UNSAFE_NONE or log._synced >= self.offset + self.length

    def wait(self, timeout: float | None = None) -> Ack:
        """Block until an fsync covers this record; raise `LogWriteError` if syncing failed, TimeoutError on timeout."""
        return self._log._wait(self, timeout)


class ReceiptLog:
    """The writer of one receipt log. Build it with `create` or `open`; use it as a context manager."""

    def __init__(self, *, _token: object = None) -> None:
        if _token is not _TOKEN:
            raise TypeError("use ReceiptLog.create(...) or ReceiptLog.open(...)")

    # ---------------------------------------------------------------- construction

    def _setup(self, path: Path, fd: int, key: keys.SigningKey, fsync: FsyncMode | str, checkpoint_every: int,
               checkpoint_interval_s: float | None, issuer: str, clock: Callable[[], int],
               flush_delay_s: float) -> None:
        self._path = path
        self._fd = fd
        self._fsync = _check_options(fsync, checkpoint_every, checkpoint_interval_s, issuer, flush_delay_s)
        self._flush_delay = flush_delay_s
        self._every = checkpoint_every
        self._interval = checkpoint_interval_s
        self._issuer = issuer
        self._clock = clock
        self._key = key
        self._kid = key.kid
        self._headers: dict[str | None, bytes] = {}
        self._header_iat = -1
        # Two locks. `_lock` orders the records: held while one is signed, chained and written. `_sync_lock`
        # (with `_cond`) covers what syncing needs: `_synced`, `_syncing`, and the waiters. A sync never
        # needs the writer lock, so a thread back from fdatasync does not queue behind the writers (it
        # used to, and lost that race to a busy writer for milliseconds, each of its wake-ups costing
        # the writer a futex call). Order: `_lock` before `_sync_lock`, never the other way.
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._cond = threading.Condition(self._sync_lock)
        self._log_id = b""
        self._seq = 0
        self._prev = ZERO_DIGEST
        self._acc = merkle.MerkleAccumulator()
        self._state = StateMachine(remember=REMEMBER_FINISHED)
        self._size = 0
        self._synced = 0
        self._syncing = False
        self._waited_at = -1.0
        self._failed: BaseException | None = None
        self._closed = False
        self._checkpoints = 0
        self._last_cp_size = 0
        self._last_cp_time = time.monotonic()
        self._recovery: Recovery | None = None
        self._thread: threading.Thread | None = None
        self._stop = False

    @classmethod
    def create(cls, path: str | os.PathLike[str], key: keys.SigningKey, *, fsync: FsyncMode | str = FsyncMode.GROUP,
               checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
               checkpoint_interval_s: float | None = DEFAULT_CHECKPOINT_INTERVAL_S, issuer: str = DEFAULT_ISSUER,
               clock: Callable[[], int] = time.time_ns, mode: int = 0o600,
               flush_delay_s: float = DEFAULT_FLUSH_DELAY_S) -> ReceiptLog:
        """Create a new log at *path* (which must not exist) and write its log-open record, durably."""
        path = Path(path)
        _check_options(fsync, checkpoint_every, checkpoint_interval_s, issuer, flush_delay_s)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:
            raise LogError(f"receipt log `{path}` already exists; use ReceiptLog.open to continue it") from None
        except OSError as exc:
            raise LogWriteError(f"cannot create receipt log `{path}`: {exc.strerror}") from None
        log = cls(_token=_TOKEN)
        try:
            _lock_file(fd, path)
            log._setup(path, fd, key, fsync, checkpoint_every, checkpoint_interval_s, issuer, clock, flush_delay_s)
            log._log_id = os.urandom(16)
            with log._lock:
                log._append_locked(Record(kind=Kind.LOG_OPEN, note=f"aarm-runtime {__version__}"))
                log._sync_locked_inline()
            _fsync_dir(path)
        except BaseException:
            os.close(fd)
            raise
        log._start_thread()
        return log

    @classmethod
    def open(cls, path: str | os.PathLike[str], key: keys.SigningKey, *, fsync: FsyncMode | str = FsyncMode.GROUP,
             checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
             checkpoint_interval_s: float | None = DEFAULT_CHECKPOINT_INTERVAL_S, issuer: str = DEFAULT_ISSUER,
             clock: Callable[[], int] = time.time_ns, flush_delay_s: float = DEFAULT_FLUSH_DELAY_S) -> ReceiptLog:
        """Continue an unterminated log after a crash or stop: recover a torn tail, append a recovery record.

        Signatures are not re-verified here (that is `verify.verify_log`'s
        job), but the structure, chain and state machine are rebuilt and must
        hold. *key* must be the log's current signing key.
        """
        path = Path(path)
        _check_options(fsync, checkpoint_every, checkpoint_interval_s, issuer, flush_delay_s)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise LogError(f"receipt log `{path}` does not exist") from None
        except OSError as exc:
            raise LogWriteError(f"cannot open receipt log `{path}`: {exc.strerror}") from None
        log = cls(_token=_TOKEN)
        try:
            _lock_file(fd, path)
            log._setup(path, fd, key, fsync, checkpoint_every, checkpoint_interval_s, issuer, clock, flush_delay_s)
            with log._lock:
                log._recover_locked()
        except BaseException:
            os.close(fd)
            raise
        log._start_thread()
        return log

    def _recover_locked(self) -> None:
        # Window by window (`RECOVERY_WINDOW_BYTES`): reopening a long log costs its state, not its size.
        fd = self._fd
        current_kid: bytes | None = None
        next_kid: bytes | None = None
        index = 0
        end = 0
        tail = None
        last = (0, b"")
        for base, data, spans, tail in read_windows(lambda offset, n: os.pread(fd, n, offset), os.fstat(fd).st_size,
                                                     RECOVERY_WINDOW_BYTES):
            last = (base, data)
            for start, stop in spans:
                current_kid, next_kid = self._recover_item(data[start:stop], index, base + start, current_kid,
                                                           next_kid)
                index += 1
            if spans:
                end = base + spans[-1][1]
        if tail is not None and not tail.torn:
            raise LogCorruptError(f"receipt log `{self._path}` is not recoverable: {tail.message}")
        if index == 0:
            raise LogCorruptError(
                f"receipt log `{self._path}` holds no complete record; it was torn while being created "
                "or is not a receipt log"
            )
        if self._state.closed:
            raise LogClosedError(f"receipt log `{self._path}` is closed; start a new log")
        if next_kid is not None:
            current_kid = next_kid
        if self._kid != current_kid:
            raise KeyMismatchError(
                f"receipt log `{self._path}` is signed with key `{current_kid.hex()}`, not the given "
                f"`{self._kid.hex()}`"
            )
        if tail is not None:
            base, data = last
            removed = data[tail.offset - base:]
            try:
                os.ftruncate(self._fd, tail.offset)
                _fdatasync(self._fd)
            except OSError as exc:
                raise LogWriteError(f"cannot truncate the torn tail of `{self._path}`: {exc.strerror}") from None
            self._recovery = Recovery(offset=tail.offset, length=len(removed), digest=hashlib.sha256(removed).digest())
            note = tail.message
        else:
            self._recovery = Recovery(offset=end, length=0, digest=hashlib.sha256(b"").digest())
            note = "restart after the log stopped without log-close"
        self._size = self._synced = self._recovery.offset
        self._append_locked(Record(kind=Kind.RECOVERY, recovery=self._recovery, note=note))
        self._checkpoint_locked()
        self._sync_locked_inline()

    def _recover_item(self, item_bytes: bytes, index: int, offset: int, current_kid: bytes | None,
                      next_kid: bytes | None) -> tuple[bytes | None, bytes | None]:
        """Rebuild the writer's state from one item of the log being reopened; return the current and next
        key ids."""
        try:
            item = parse_item(item_bytes)
        except ReceiptFormatError as exc:
            raise LogCorruptError(f"receipt log `{self._path}`: item {index} at offset {offset}: {exc}") from None
        if not isinstance(item, RecordItem):
            self._checkpoints += 1
            self._last_cp_size = item.tree_size
            return current_kid, next_kid
        r = item.receipt
        if next_kid is not None:
            current_kid, next_kid = next_kid, None
        if r.seq == 0:
            self._log_id = r.log_id
            current_kid = item.kid
        problem = None
        if r.seq != self._seq:
            problem = f"seq {r.seq} where {self._seq} was expected"
        elif r.log_id != self._log_id:
            problem = "log id differs from the log-open record's"
        elif r.prev != self._prev:
            problem = "prev does not hash the previous record"
        elif item.kid != current_kid:
            problem = "signed by a key other than the log's current key"
        if problem is None:
            try:
                self._state.apply(r.record)
            except StateError as exc:
                problem = str(exc)
        if problem is not None:
            raise LogCorruptError(f"receipt log `{self._path}`: record {self._seq} at offset {offset}: {problem}")
        if r.kind == Kind.KEY_ROTATION:
            next_kid = keys.kid(keys.VerifyKey(r.record.rotation.public_key))
        self._prev = hashlib.sha256(item_bytes).digest()
        self._acc.append(merkle.leaf_hash(item_bytes))
        self._seq += 1
        return current_kid, next_kid

    # ---------------------------------------------------------------- properties

    @property
    def path(self) -> Path:
        return self._path

    @property
    def log_id(self) -> bytes:
        return self._log_id

    @property
    def fsync_mode(self) -> FsyncMode:
        return self._fsync

    @property
    def kid(self) -> bytes:
        """Key id of the current signing key."""
        return self._kid

    @property
    def records(self) -> int:
        """Number of records written so far (the next seq)."""
        return self._seq

    @property
    def checkpoints(self) -> int:
        return self._checkpoints

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def recovery(self) -> Recovery | None:
        """What `open` recovered (None for a log made by `create`)."""
        return self._recovery

    def root(self) -> tuple[int, bytes]:
        """(tree size, Merkle root) over the records written so far: an anchor for ``verify --anchor``."""
        with self._lock:
            return self._acc.size, self._acc.root()

    # ---------------------------------------------------------------- appending

    def submit(self, record: Record) -> Pending:
        """Sign and write *record* now; return a `Pending` whose `wait` gives the `Ack` after its fsync.

        Raises `StateError` (nothing written) when the record is out of order
        for the state machine, `LogClosedError` after close, `LogWriteError`
        once a write or sync has failed.
        """
        with self._lock:
            pending = self._append_locked(record)
            if self._fsync is FsyncMode.ALWAYS:
                self._sync_locked_inline()
                return pending
        if self._fsync is FsyncMode.GROUP and self._synced >= pending.offset and not self._syncing:
            # The log just became dirty: wake the flusher (later writes find it busy).
            self._notify()
        return pending

    def append(self, record: Record, timeout: float | None = None) -> Ack:
        """Sign, write and sync *record*; the returned `Ack` is the acknowledgement."""
        with self._lock:
            pending = self._append_locked(record)
            if self._fsync is FsyncMode.ALWAYS:
                self._sync_locked_inline()
        # Group commit: this thread leads the sync unless one is under way (then
        # it waits for the next); no hand-off to the background flusher.
        return self._wait(pending, timeout)

    def append_many(self, records: Iterable[Record], timeout: float | None = None) -> list[Ack]:
        """Write several records and wait for one fsync covering all of them.

        Not atomic: if record k is out of order (`StateError`), records before
        it are written, synced and reported in the exception's ``acks``.
        """
        pendings: list[Pending] = []
        error: StateError | None = None
        with self._lock:
            for record in records:
                try:
                    pendings.append(self._append_locked(record))
                except StateError as exc:
                    error = exc
                    break
            if pendings and self._fsync is FsyncMode.ALWAYS:
                self._sync_locked_inline()
        # One group-commit sync covers the whole batch; the other waits return at once.
        if pendings:
            pendings[-1].wait(timeout)
        acks = [p.wait(timeout) for p in pendings]
        if error is not None:
            error.acks = acks  # type: ignore[attr-defined]
            raise error
        return acks

    def checkpoint(self) -> None:
        """Write a checkpoint now (if records arrived since the last one) and sync it."""
        with self._lock:
            self._check_usable()
            self._checkpoint_locked()
            if self._fsync is not FsyncMode.UNSAFE_NONE:
                self._sync_locked_inline()

    def rotate_key(self, new_key: keys.SigningKey) -> Ack:
        """Hand the log over to *new_key*: a key-rotation record signed by the current key, carrying the new
        public key and its proof of possession, then a checkpoint by the old key; records after it use the new key."""
        if new_key.kid == self._kid:
            raise ValueError("the new key is the current key")
        with self._lock:
            self._check_usable()
            pop = new_key.sign(rotation_pop_message(self._log_id, self._seq, self._kid,
                                                    new_key.verify_key.public_bytes))
            pending = self._append_locked(Record(
                kind=Kind.KEY_ROTATION, rotation=Rotation(public_key=new_key.verify_key.public_bytes, proof=pop)))
            self._checkpoint_locked()
            self._key = new_key
            self._kid = new_key.kid
            self._headers.clear()
            if self._fsync is not FsyncMode.UNSAFE_NONE:
                self._sync_locked_inline()
        return pending.wait()

    def close(self, note: str | None = None) -> Ack:
        """Write log-close and the final checkpoint, sync (in every fsync mode), stop the flusher, close the file."""
        with self._lock:
            self._check_usable()
            pending = self._append_locked(Record(kind=Kind.LOG_CLOSE, close=Close(checkpoints=self._checkpoints),
                                                 note=note))
            self._checkpoint_locked()
            self._sync_locked_inline(force=True)
            self._closed = True
            self._stop = True
        self._notify()
        self._join_thread()
        ack = Ack(seq=pending.seq, offset=pending.offset, length=pending.length, digest=pending.digest, durable=True)
        self._release()
        return ack

    def abandon(self) -> None:
        """Stop writing without log-close (the log stays unterminated, as after a crash); release the file."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop = True
        self._notify()
        self._join_thread()
        self._release()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _release(self) -> None:
        # A group-commit leader may still be inside fdatasync: let it finish
        # before the descriptor goes away.
        with self._cond:
            while self._syncing:
                self._cond.wait()
        os.close(self._fd)

    def __enter__(self) -> ReceiptLog:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._closed:
            return
        if exc_type is None and self._failed is None:
            self.close()
        else:
            # Leave it unterminated: a failure is what `open` and the verifier should see.
            self.abandon()

    # ---------------------------------------------------------------- internals (lock held)

    def _check_usable(self) -> None:
        if self._closed:
            raise LogClosedError(f"receipt log `{self._path}` is closed")
        if self._failed is not None:
            raise LogWriteError(f"receipt log `{self._path}` failed earlier and refuses writes: {self._failed}")

    def _append_locked(self, record: Record) -> Pending:
        self._check_usable()
        if type(record) is not Record and not isinstance(record, Record):
            raise TypeError(f"expected a Record, got `{type(record).__name__}`")
        fs = facts(record)
        self._state.check(fs)
        now = self._clock()
        if type(now) is not int or now < 0:
            raise ValueError(f"the log clock returned `{now!r}`, not integer nanoseconds")
        # The writer's own fields need no checking; the record checked itself when it was built.
        seq = self._seq
        payload = encode_record_payload(self._log_id, seq, self._prev, now, record)
        data = sign1_receipt(self._protected(record.session, now // 1_000_000_000), payload, self._key)
        offset = self._size
        self._write_locked(data)
        self._state.commit(fs)
        digest = _sha256(data).digest()
        self._prev = digest
        self._acc.append_unchecked(_sha256(_LEAF_PREFIX + data).digest())
        self._seq = seq + 1
        pending = Pending(self, seq, offset, len(data), digest)
        if self._acc.size - self._last_cp_size >= self._every:
            self._checkpoint_locked()
        return pending

    def _protected(self, session: str | None, iat: int) -> bytes:
        # A receipt's protected header depends on the key, the session and the second only: records of
        # one session within a second share it.
        if iat != self._header_iat:
            self._headers.clear()
            self._header_iat = iat
        header = self._headers.get(session)
        if header is None:
            subject = session if session is not None else self._log_id.hex()
            header = protected_receipt_header(self._kid, self._issuer, subject, iat)
            if len(self._headers) < 1024:
                self._headers[session] = header
        return header

    def _checkpoint_locked(self) -> None:
        n = self._acc.size
        if n == 0 or n == self._last_cp_size:
            return
        iat = self._clock() // 1_000_000_000
        cwt, extra, unprotected = checkpoint_headers(self._kid, self._issuer, self._log_id, iat, n,
                                                     self._acc.last_inclusion_proof())
        data = cose.sign1(self._acc.root(), self._key, typ=cose.TYP_CHECKPOINT, cwt_claims=cwt,
                          extra_protected=extra, unprotected=unprotected, detached=True)
        self._write_locked(data)
        self._checkpoints += 1
        self._last_cp_size = n
        self._last_cp_time = time.monotonic()

    def _write_locked(self, data: bytes) -> None:
        written = 0
        try:
            written = os.write(self._fd, data)
            while written < len(data):
                written += os.write(self._fd, memoryview(data)[written:])
        except OSError as exc:
            self._failed = exc
            self._notify()
            raise LogWriteError(f"cannot write receipt log `{self._path}`: {exc.strerror}") from None
        finally:
            self._size += written

    def _sync_locked_inline(self, force: bool = False) -> None:
        # With the writer lock held: nothing is written meanwhile.
        if self._fsync is FsyncMode.UNSAFE_NONE and not force:
            return
        target = self._size
        try:
            _fdatasync(self._fd)
        except OSError as exc:
            self._failed = exc
            self._notify()
            raise LogWriteError(f"cannot sync receipt log `{self._path}`: {exc.strerror}") from None
        with self._cond:
            if target > self._synced:
                self._synced = target
            self._cond.notify_all()

    def _lead_sync_locked(self) -> None:
        # Group commit, with `_sync_lock` held: sync with it released, so that
        # other threads keep writing and waiting. Everything written before the
        # call starts is covered: `_size` grows only once a write has returned.
        self._syncing = True
        target = self._size
        self._sync_lock.release()
        error: OSError | None = None
        try:
            _fdatasync(self._fd)
        except OSError as exc:
            error = exc
        finally:
            self._sync_lock.acquire()
            self._syncing = False
        if error is not None:
            self._failed = error
        elif target > self._synced:
            self._synced = target
        self._cond.notify_all()

    def _wait(self, pending: Pending, timeout: float | None) -> Ack:
        if self._fsync is FsyncMode.UNSAFE_NONE:
            return Ack(seq=pending.seq, offset=pending.offset, length=pending.length, digest=pending.digest,
                       durable=self._synced >= pending.offset + pending.length)
        end = pending.offset + pending.length
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._synced < end:
                self._waited_at = time.monotonic()
            while self._synced < end:
                if self._failed is not None:
                    raise LogWriteError(f"receipt {pending.seq} may not be durable: {self._failed}")
                if not self._syncing:
                    self._lead_sync_locked()
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"receipt {pending.seq} was not synced within {timeout} s")
                self._cond.wait(remaining)
        return Ack(seq=pending.seq, offset=pending.offset, length=pending.length, digest=pending.digest, durable=True)

    # ---------------------------------------------------------------- background flusher

    def _start_thread(self) -> None:
        if self._fsync is not FsyncMode.GROUP and self._interval is None:
            return
        self._thread = threading.Thread(target=self._run, name=f"receipt-log-{self._log_id.hex()[:8]}", daemon=True)
        self._thread.start()

    def _join_thread(self) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        dirty_since: float | None = None
        while True:
            with self._cond:
                if self._stop or self._failed is not None:
                    return
                timeout = None
                now = time.monotonic()
                checkpoint_due = False
                if self._interval is not None and self._acc.size > self._last_cp_size:
                    timeout = self._last_cp_time + self._interval - now
                    checkpoint_due = timeout <= 0
                if not checkpoint_due:
                    if self._fsync is FsyncMode.GROUP and self._size > self._synced and not self._syncing:
                        # While callers wait for acknowledgements, sync at once: the sync runs while they
                        # sign their next records. Records nobody waits for: let the flush delay gather
                        # more of them under one fdatasync.
                        if dirty_since is None:
                            dirty_since = now
                        delay = 0.0 if now - self._waited_at < _WAITED_RECENTLY_S else self._flush_delay
                        left = dirty_since + delay - now
                        if left <= 0:
                            dirty_since = None
                            self._lead_sync_locked()
                            continue
                        timeout = left if timeout is None else min(timeout, left)
                    else:
                        dirty_since = None
                    if timeout is None and self._interval is not None:
                        timeout = self._interval
                    self._cond.wait(timeout)
                    continue
            # A checkpoint is a write: the writer lock, taken without the sync lock (lock order).
            with self._lock:
                if self._closed:
                    return
                try:
                    self._checkpoint_locked()
                except LogWriteError:
                    return


_TOKEN = object()

# How many finished decisions (and ended sessions) the writer's state machine keeps to catch a reused id:
# its memory is then bounded by what is open plus these, however long the writer runs (`StateMachine`).
REMEMBER_FINISHED = 65_536

# How much of a log `open` reads at once while it rebuilds the writer's state (`receipts.read_windows`).
RECOVERY_WINDOW_BYTES = 32 << 20


def _check_options(fsync: FsyncMode | str, checkpoint_every: int, checkpoint_interval_s: float | None,
                   issuer: str, flush_delay_s: float) -> FsyncMode:
    try:
        mode = FsyncMode(fsync)
    except ValueError:
        raise ValueError(f"fsync mode `{fsync}` is not one of always, group, none") from None
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got `{checkpoint_every!r}`")
    if checkpoint_interval_s is not None and not checkpoint_interval_s > 0:
        raise ValueError(f"checkpoint_interval_s must be positive or None, got `{checkpoint_interval_s!r}`")
    if not isinstance(issuer, str) or not issuer:
        raise ValueError("issuer must be non-empty text")
    if isinstance(flush_delay_s, bool) or not isinstance(flush_delay_s, (int, float)) or not 0 <= flush_delay_s <= 1:
        raise ValueError(f"flush_delay_s must be between 0 and 1 second, got `{flush_delay_s!r}`")
    return mode


def _lock_file(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise LogBusyError(f"receipt log `{path}` is held by another writer") from None
        raise LogWriteError(f"cannot lock receipt log `{path}`: {exc.strerror}") from None


def _fsync_dir(path: Path) -> None:
    # A new file's directory entry is durable only once its directory is synced.
    try:
        dfd = os.open(path.parent if str(path.parent) else Path("."), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
