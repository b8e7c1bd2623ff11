"""Offline verification of a receipt log (``aarmc verify``): a verdict and where the log first goes wrong.

`verify_log` reads the CBOR sequence and checks, item by item and in file
order: strict deterministic encoding and aarmc's exact COSE layout; ``typ``
on every item (a receipt or a checkpoint, nothing else); ``kid`` in the
trusted keys, or introduced by a valid key-rotation record and then only from
the next seq on; that each record is signed by the log's current key; every
Ed25519 signature; ``seq`` contiguous from 0 and ``prev`` chaining the exact
record bytes; one log id; the record-kind state machine
(`aarm_runtime.receipts.StateMachine`); a recovery record's offset equal to
its own position; log-close's checkpoint count; and, recomputing the RFC 9162
Merkle tree, each checkpoint's size, inclusion proof and signature over the
root, plus an external ``anchor`` (tree size and root) when given.

Verdicts (`Status`): COMPLETE — closed (log-close, then a checkpoint over
every record, then nothing); UNTERMINATED — every item verifies but the log
is not closed (still being written, or stopped); TRUNCATED — records a
checkpoint or the anchor vouches for are missing; TAMPERED — anything altered,
reordered, inserted, malformed or out of order; TORN_TAIL — everything
verifies but the last item is an incomplete write (a crash); BAD_SIGNATURE;
UNKNOWN_KEY. The first problem decides; `Verdict` says where: ``index`` (the
item's position in the file, records and checkpoints counted), ``record``
(how many records verified before it, i.e. the seq the bad record has or
should have) and ``offset`` (bytes). Cutting whole records off the end of an
open log leaves a valid shorter log: only an anchor detects that.

Exit status of `verify_command` (what ``aarmc verify`` returns): 0 when the
verdict is COMPLETE, or UNTERMINATED with ``--allow-open``; 1 for every other
verdict; 2 when verification could not run (unreadable log or key file,
malformed ``--anchor``, no key given).

Parallelism: Ed25519 verification dominates and PyNaCl holds the GIL while it
verifies (measured: two threads over 4,000 signatures took 0.19 s against
0.17 s for one), so large logs are split into chunks of items checked —
parsed and signatures verified — by worker processes and by this process,
which also runs the sequential checks (chain, state machine, Merkle tree,
checkpoints) on the results in file order. The work is shared, not split in
fixed parts: each worker has the next chunks queued, and whenever the result
the sequential pass needs is not back yet this process checks the next chunk
itself instead of waiting, so a worker still starting up or sharing its core
with another job simply does less (`_run`). Chunks are sent with the trust
store known at that point, so a key introduced by rotation is used for later
chunks (items signed by a key a worker did not have are verified by the
sequential pass); memory stays bounded, and verification stops at the first
bad item. Per item the checks build no objects (`receipts.scan_receipt`):
strict decoding, the schema, and the signature are all there is. Small logs
are checked in-process, item by item: below `PARALLEL_THRESHOLD` items
starting a worker costs more than it saves. A log file is read in windows of
`WINDOW_BYTES` (`receipts.read_windows`), each checked as above (workers
per window), so memory does not grow with the file's size.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import json
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import nacl.bindings
import nacl.exceptions

from aarm_runtime import keys, merkle
from aarm_runtime.receipts import (
    K_CLOSE,
    K_LOG_ID,
    K_PREV,
    K_RECOVERY,
    K_ROTATION,
    K_SEQ,
    Kind,
    Receipt,
    ReceiptFormatError,
    StateError,
    StateMachine,
    Tail,
    ZERO_DIGEST,
    _build_receipt,
    _payload_facts,
    parse_item,
    rotation_pop_message,
    read_windows,
    scan_receipt,
    sig_structure,
    split_items,
)

__all__ = [
    "Anchor",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PARALLEL_THRESHOLD",
    "WINDOW_BYTES",
    "Status",
    "Verdict",
    "VerifiedLog",
    "load_trusted_keys",
    "parse_anchor",
    "read_verified",
    "verify_command",
    "verify_log",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: Logs with at least this many items are verified by worker processes.
PARALLEL_THRESHOLD = 3000
_CHUNK = 256


class Status(str, enum.Enum):
    COMPLETE = "COMPLETE"
    UNTERMINATED = "UNTERMINATED"
    TRUNCATED = "TRUNCATED"
    TAMPERED = "TAMPERED"
    TORN_TAIL = "TORN_TAIL"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    UNKNOWN_KEY = "UNKNOWN_KEY"


@dataclasses.dataclass(frozen=True, slots=True)
class Anchor:
    """An external commitment: the Merkle root of the first `size` records, kept somewhere the log is not."""

    size: int
    root: bytes

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"anchor size must be a positive integer, got `{self.size!r}`")
        if not isinstance(self.root, bytes) or len(self.root) != merkle.HASH_SIZE:
            raise ValueError(f"anchor root must be {merkle.HASH_SIZE} bytes")

    def __str__(self) -> str:
        return f"{self.size}:{self.root.hex()}"


def parse_anchor(text: str) -> Anchor:
    """Parse ``SIZE:ROOTHEX`` (what ``--anchor`` takes and `ReceiptLog.root` gives).

    >>> a = parse_anchor("3:" + "ab" * 32)
    >>> a.size, a.root[:2].hex()
    (3, 'abab')
    """
    size_text, sep, root_text = text.strip().partition(":")
    if not sep:
        raise ValueError(f"anchor `{text}` is not SIZE:ROOTHEX")
    try:
        size = int(size_text, 10)
    except ValueError:
        raise ValueError(f"anchor size `{size_text}` is not a decimal integer") from None
    try:
        root = bytes.fromhex(root_text)
    except ValueError:
        raise ValueError(f"anchor root `{root_text}` is not hex") from None
    if len(root) != merkle.HASH_SIZE:
        raise ValueError(f"anchor root has {len(root)} bytes; a sha-256 root has {merkle.HASH_SIZE}")
    return Anchor(size=size, root=root)


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of `verify_log`.

    ``index``/``record``/``offset`` locate the first bad item (None when the
    verdict is COMPLETE or UNTERMINATED). ``records``, ``checkpoints``,
    ``tree_size`` and ``root`` describe the verified prefix; ``root`` over
    ``tree_size`` records is a valid anchor for later checks of the same log.
    """

    status: Status
    message: str
    index: int | None
    record: int | None
    offset: int | None
    records: int
    checkpoints: int
    log_id: bytes | None
    tree_size: int
    root: bytes
    last_checkpoint: int | None
    kids: tuple[bytes, ...]
    allow_open: bool = False

    @property
    def ok(self) -> bool:
        """COMPLETE, or UNTERMINATED when open logs were allowed."""
        return self.status is Status.COMPLETE or (self.status is Status.UNTERMINATED and self.allow_open)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILED

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "ok": self.ok,
            "message": self.message,
            "index": self.index,
            "record": self.record,
            "offset": self.offset,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "log_id": None if self.log_id is None else self.log_id.hex(),
            "tree_size": self.tree_size,
            "root": self.root.hex(),
            "anchor": f"{self.tree_size}:{self.root.hex()}" if self.tree_size else None,
            "last_checkpoint": self.last_checkpoint,
            "kids": [k.hex() for k in self.kids],
        }

    def describe(self) -> str:
        """One human line, then details."""
        head = self.status.value
        if self.index is not None:
            where = f"item {self.index}"
            if self.record is not None:
                where += f", record {self.record}"
            if self.offset is not None:
                where += f", byte offset {self.offset}"
            head += f" at {where}"
        lines = [f"{head}: {self.message}"]
        log = "?" if self.log_id is None else self.log_id.hex()
        lines.append(f"log {log}: {self.records} record(s) and {self.checkpoints} checkpoint(s) verified")
        if self.tree_size:
            lines.append(f"anchor for later checks: {self.tree_size}:{self.root.hex()}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedLog:
    """A verdict and the receipts that verified before it (all of them when the verdict is ok)."""

    verdict: Verdict
    receipts: tuple[Receipt, ...]
    checkpoint_sizes: tuple[int, ...]


# ----------------------------------------------------------------------------- per-item work (workers)

# Result tuples, kept flat and small because they cross process boundaries:
#   ("R", error, kid, sig_ok, seq, log_id, prev, facts, extra, digest, leaf, to_be_signed, signature, receipt)
#   ("C", error, kid, item)
# error: None or (Status, message); sig_ok: True / False / None = key not in
# the store the worker had (the sequential pass decides, and verifies then).
# facts: `receipts.facts`; extra: (public key, proof) for a key rotation, the
# offset for a recovery, the checkpoint count for log-close. receipt: the
# parsed `Receipt` only when the caller keeps records (timeline).
_R, _C = "R", "C"
_sha256 = hashlib.sha256
_LEAF = b"\x00"  # RFC 9162 leaf hash prefix, as `merkle.leaf_hash`


def _extra(m: dict[int, Any], kind: Kind) -> Any:
    if kind == Kind.KEY_ROTATION:
        rotation = m[K_ROTATION]
        return (rotation[0], rotation[1])
    if kind == Kind.RECOVERY:
        return m[K_RECOVERY][0]
    if kind == Kind.LOG_CLOSE:
        return m[K_CLOSE][0]
    return None


def _check_item(raw: bytes, public_keys: Mapping[bytes, bytes], keep: bool | str) -> tuple:
    # keep: False, True (build every receipt), or a session id (build that session's and the log's own).
    try:
        scan = scan_receipt(raw)
        if scan is None:
            # Not a receipt in its one exact encoding: a checkpoint, or parse_item says what is wrong.
            item = parse_item(raw)
            return (_C, None, item.kid, item)
    except ReceiptFormatError as exc:
        return (_R, (Status.TAMPERED, str(exc))) + (None,) * 12
    protected, payload, signature, header, m, kind = scan
    kid = header[1]
    public_key = public_keys.get(kid)
    tbs = sig_structure(protected, payload)
    if public_key is None:
        ok = None
    else:
        try:
            # libsodium's one-shot crypto_sign_open: pure Ed25519 over the bytes as received.
            nacl.bindings.crypto_sign_open(signature + tbs, public_key)
            ok = True
        except nacl.exceptions.BadSignatureError:
            ok = False
        tbs = signature = None
    fs = _payload_facts(m, kind)
    build = keep is True or (keep is not False and (fs[1] is None or fs[1] == keep))
    return (_R, None, kid, ok, m[K_SEQ], m[K_LOG_ID], m[K_PREV][1], fs, _extra(m, kind),
            _sha256(raw).digest(), _sha256(_LEAF + raw).digest(), tbs, signature,
            _build_receipt(m, kind) if build else None)


def _check_chunk(data: bytes, spans: Sequence[tuple[int, int]], store: Mapping[bytes, bytes],
                 keep: bool | str = False) -> list[tuple]:
    return [_check_item(data[start:end], store, keep) for start, end in spans]


# ----------------------------------------------------------------------------- sequential checks


class _Stop(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Checker:
    """Everything that depends on order: chain, keys over time, state machine, Merkle tree, checkpoints."""

    def __init__(self, trusted: Mapping[bytes, keys.VerifyKey], anchor: Anchor | None, keep: bool,
                 only: str | None = None) -> None:
        self.known: dict[bytes, keys.VerifyKey] = dict(trusted)  # trusted plus introduced by rotation
        self.anchor = anchor
        # What `_check_item` builds receipts for: all (True), none (False), or one session's and the log's own.
        self.keep: bool | str = only if keep and only is not None else keep
        self.receipts: list[Receipt] = []
        self.cp_sizes: list[int] = []
        self.state = StateMachine()
        self.acc = merkle.MerkleAccumulator()
        self.count = 0
        self.prev = ZERO_DIGEST
        self.log_id: bytes | None = None
        self.current_kid: bytes | None = None
        self.next_kid: bytes | None = None
        self.checkpoints = 0
        self.last_cp: int | None = None
        self.sealed = False
        self.kids: list[bytes] = []
        self.index = 0
        self.offset = 0
        self.anchor_ok = anchor is None

    def store(self) -> dict[bytes, bytes]:
        return {kid: vk.public_bytes for kid, vk in self.known.items()}

    def feed(self, result: tuple, offset: int) -> None:
        self.offset = offset
        if self.sealed:
            raise _Stop(Status.TAMPERED, "an item follows the checkpoint that sealed the closed log")
        if result[0] == _C:
            self._checkpoint(result)
        else:
            self._record(result)
        self.index += 1

    def _key(self, kid: bytes | None) -> keys.VerifyKey:
        vk = self.known.get(kid)
        if vk is None:
            raise _Stop(Status.UNKNOWN_KEY, f"signed by key `{kid.hex()}`, which is not trusted")
        return vk

    def _record(self, result: tuple) -> None:
        _, error, kid, sig_ok, seq, log_id, prev, fs, extra, digest, leaf, tbs, signature, receipt = result
        if error is not None:
            raise _Stop(*error)
        vk = self._key(kid)
        if sig_ok is None:
            try:
                vk.verify(tbs, signature)
                sig_ok = True
            except keys.InvalidSignature:
                sig_ok = False
        if not sig_ok:
            raise _Stop(Status.BAD_SIGNATURE, f"the signature of record {seq} does not verify under key "
                                              f"`{kid.hex()}`")
        if self.next_kid is not None:
            self.current_kid, self.next_kid = self.next_kid, None
        if self.count == 0:
            self.log_id = log_id
            self.current_kid = kid
        elif kid != self.current_kid:
            raise _Stop(Status.TAMPERED, f"record signed by key `{kid.hex()}`, but the log's key at this point is "
                                         f"`{self.current_kid.hex()}`")
        if seq != self.count:
            raise _Stop(Status.TAMPERED, f"record has seq {seq} where seq {self.count} belongs")
        if log_id != self.log_id:
            raise _Stop(Status.TAMPERED, f"record belongs to log `{log_id.hex()}`, not `{self.log_id.hex()}`")
        if prev != self.prev:
            raise _Stop(Status.TAMPERED, "prev is not the hash of the previous record: a record was removed, "
                                         "inserted or reordered before this one")
        try:
            self.state.apply(fs)
        except StateError as exc:
            raise _Stop(Status.TAMPERED, str(exc)) from None
        kind = fs[0]
        if kind == Kind.KEY_ROTATION:
            public_key, proof = extra
            new_key = keys.VerifyKey(public_key)
            try:
                new_key.verify(rotation_pop_message(log_id, seq, kid, public_key), proof)
            except keys.InvalidSignature:
                raise _Stop(Status.BAD_SIGNATURE, "key rotation's proof of possession does not verify under the "
                                                  "new key") from None
            self.known.setdefault(new_key.kid, new_key)
            self.next_kid = new_key.kid
        elif kind == Kind.RECOVERY:
            if extra != self.offset:
                raise _Stop(Status.TAMPERED, f"recovery record says it starts at byte {extra}, but it is at byte "
                                             f"{self.offset}")
        elif kind == Kind.LOG_CLOSE:
            if extra != self.checkpoints:
                raise _Stop(Status.TAMPERED, f"log-close counts {extra} checkpoint(s) before it, the log has "
                                             f"{self.checkpoints}")
        if kid not in self.kids:
            self.kids.append(kid)
        self.acc.append_unchecked(leaf)
        self.prev = digest
        self.count += 1
        if receipt is not None:
            self.receipts.append(receipt)
        if self.anchor is not None and self.count == self.anchor.size:
            if self.acc.root() != self.anchor.root:
                raise _Stop(Status.TAMPERED, f"the root over the first {self.count} records is not the anchor's")
            self.anchor_ok = True

    def _checkpoint(self, result: tuple) -> None:
        _, error, kid, cp = result
        if error is not None:
            raise _Stop(*error)
        vk = self._key(kid)
        n = self.count
        if n == 0:
            raise _Stop(Status.TAMPERED, "checkpoint before any record")
        if kid != self.current_kid:
            raise _Stop(Status.TAMPERED, f"checkpoint signed by key `{kid.hex()}`, not by the key of the record "
                                         "before it")
        if cp.tree_size > n:
            raise _Stop(Status.TRUNCATED, f"checkpoint vouches for {cp.tree_size} records, only {n} precede it")
        if cp.tree_size < n:
            raise _Stop(Status.TAMPERED, f"checkpoint covers {cp.tree_size} records, but {n} precede it")
        if self.last_cp == n:
            raise _Stop(Status.TAMPERED, f"a second checkpoint at tree size {n}")
        if cp.subject != self.log_id.hex():
            raise _Stop(Status.TAMPERED, f"checkpoint names log `{cp.subject}`")
        if cp.leaf_index != n - 1 or cp.path != self.acc.last_inclusion_proof():
            raise _Stop(Status.TAMPERED, "checkpoint's inclusion proof is not that of the last record")
        root = self.acc.root()
        try:
            vk.verify(cp.to_be_signed(root), cp.signature)
        except keys.InvalidSignature:
            raise _Stop(Status.BAD_SIGNATURE, f"checkpoint over {n} records does not verify: the records differ "
                                              "from what was signed") from None
        self.checkpoints += 1
        self.last_cp = n
        self.cp_sizes.append(n)
        if self.state.closed:
            self.sealed = True

    def verdict(self, status: Status, message: str, *, bad: bool, allow_open: bool,
                index: int | None = None) -> Verdict:
        return Verdict(
            status=status, message=message,
            index=(self.index if index is None else index) if bad else None,
            record=self.count if bad else None,
            offset=self.offset if bad else None,
            records=self.count, checkpoints=self.checkpoints, log_id=self.log_id,
            tree_size=self.acc.size, root=self.acc.root(), last_checkpoint=self.last_cp,
            kids=tuple(self.kids), allow_open=allow_open,
        )


# ----------------------------------------------------------------------------- driver


def _trust_map(trusted_keys: Mapping[bytes, keys.VerifyKey] | Sequence[keys.VerifyKey]) -> dict[bytes, keys.VerifyKey]:
    if isinstance(trusted_keys, Mapping):
        out = {}
        for kid, vk in trusted_keys.items():
            if vk.kid != kid:
                raise ValueError(f"trust store maps kid `{bytes(kid).hex()}` to a key whose thumbprint is "
                                 f"`{vk.kid.hex()}`")
            out[kid] = vk
        return out
    out = {}
    for vk in trusted_keys:
        if not isinstance(vk, keys.VerifyKey):
            raise TypeError(f"trusted keys must be VerifyKey objects, got `{type(vk).__name__}`")
        out[vk.kid] = vk
    return out


# How much of a log file verification holds at once: it reads the file window by window, so its memory is
# this plus what the state machine keeps, not the size of the log.
WINDOW_BYTES = 32 << 20


def _windows(source: str | os.PathLike[str] | bytes | bytearray | memoryview
             ) -> Iterator[tuple[int, bytes, list[tuple[int, int]], Tail | None]]:
    """The log as `receipts.read_windows` yields it: a file window by window, up to the size it had when
    opened; bytes in one window."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        spans, tail = split_items(data)
        yield 0, data, spans, tail
        return
    with open(source, "rb") as f:
        fd = f.fileno()
        yield from read_windows(lambda offset, n: os.pread(fd, n, offset), os.fstat(fd).st_size, WINDOW_BYTES)


class _PoolError(Exception):
    """A worker process could not be started or died; verification falls back to this process."""


_LATE = object()


class _Workers:
    """Worker processes running `_worker_main`: length-prefixed pickle frames over their stdin and stdout.

    Plain subprocesses rather than multiprocessing: a fork of a threaded
    caller (a log writer's flusher, a web server) is unsafe, and the
    forkserver and spawn methods re-import the caller's ``__main__``, which
    breaks any script without a ``__main__`` guard. Each worker gets a feeder
    thread, so that writing a chunk never waits on a worker that is itself
    waiting for its result to be read, and a reader thread, so that this
    process can see whether a result has arrived without blocking (`ready`).
    """

    def __init__(self, n: int) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.procs: list[subprocess.Popen] = []
        self.queues: list[queue.Queue] = []
        self.answers: list[queue.Queue] = []
        self.threads: list[threading.Thread] = []
        try:
            for _ in range(n):
                proc = subprocess.Popen(
                    [sys.executable, "-c", "from aarm_runtime.verify import _worker_main; _worker_main()"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
                q: queue.Queue = queue.Queue()
                answers: queue.Queue = queue.Queue()
                self.procs.append(proc)
                self.queues.append(q)
                self.answers.append(answers)
                for target, arg in ((self._feed, q), (self._read, answers)):
                    t = threading.Thread(target=target, args=(proc, arg), daemon=True)
                    t.start()
                    self.threads.append(t)
        except OSError as exc:
            self.close(kill=True)
            raise _PoolError(f"cannot start a verification worker: {exc}") from None

    @staticmethod
    def _feed(proc: subprocess.Popen, q: queue.Queue) -> None:
        try:
            while True:
                frame = q.get()
                if frame is None:
                    break
                proc.stdin.write(frame)
                proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the worker died or was killed; the reader reports it
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    @staticmethod
    def _read(proc: subprocess.Popen, answers: queue.Queue) -> None:
        stream = proc.stdout
        try:
            while True:
                head = stream.read(8)
                if len(head) != 8:
                    break
                size = struct.unpack(">Q", head)[0]
                body = stream.read(size)
                if len(body) != size:
                    break
                answers.put(body)
        except (OSError, ValueError):
            pass
        answers.put(None)  # end of answers: the worker exited

    def submit(self, worker: int, args: tuple) -> None:
        body = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        self.queues[worker].put(struct.pack(">Q", len(body)) + body)

    def ready(self, worker: int) -> bool:
        """True when `result` would not block."""
        return not self.answers[worker].empty()

    def result(self, worker: int, timeout: float | None = None) -> Any:
        """The worker's next answer; `_LATE` if none came within *timeout* seconds."""
        try:
            body = self.answers[worker].get(timeout=timeout)
        except queue.Empty:
            return _LATE
        if body is None:
            raise _PoolError(f"verification worker {worker} exited (status {self.procs[worker].poll()})")
        status, value = pickle.loads(body)
        if status != "ok":
            raise _PoolError(f"verification worker {worker} failed: {value}")
        return value

    def close(self, kill: bool = False) -> None:
        for q in self.queues:
            q.put(None)
        for proc in self.procs:
            if kill:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=None if not kill else 5)
            except subprocess.TimeoutExpired:  # pragma: no cover - killed processes exit
                pass
        for t in self.threads:
            t.join(timeout=5)
        for proc in self.procs:
            if proc.stdout is not None:
                proc.stdout.close()


def _worker_main() -> None:
    """Loop of a verification worker: read (data, spans, store, keep) frames, answer with `_check_chunk`."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(8)
        if len(head) != 8:
            return
        args = pickle.loads(stdin.read(struct.unpack(">Q", head)[0]))
        try:
            answer = ("ok", _check_chunk(*args))
        except Exception as exc:  # noqa: BLE001 - report, the parent falls back to in-process checking
            answer = ("error", f"{type(exc).__name__}: {exc}")
        body = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(struct.pack(">Q", len(body)) + body)
        stdout.flush()


_DEPTH = 2  # chunks queued per worker: one being checked, one waiting
_AHEAD = 8  # chunks this process may have checked ahead of the sequential pass


def _run(data: bytes, spans: list[tuple[int, int]], checker: _Checker, workers: int, base: int = 0) -> None:
    """Check the items *spans* cut from *data* (a window of the log starting at byte *base*) and feed them to
    *checker* in order."""
    if workers <= 1:
        # Item by item, so that the first bad item stops the work at once.
        known = -1
        for start, end in spans:
            if len(checker.known) != known:
                known = len(checker.known)
                store = checker.store()
            checker.feed(_check_item(data[start:end], store, checker.keep), base + start)
        return
    # Work sharing. The sequential pass takes chunks in file order. Each worker process always has `_DEPTH`
    # chunks queued, the next unassigned ones, each sent with the trust store as the sequential pass knows
    # it at that point. While the result the sequential pass needs next is not back, this process checks
    # the next unassigned chunk itself rather than wait; with nothing left to take (or `_AHEAD` chunks
    # checked ahead) it waits for that result about as long as it takes itself to check a chunk, then
    # checks that chunk too and drops the worker's answer when it comes. So a worker that starts late, or
    # shares its core with another job, gets fewer chunks and never holds the verification up by more
    # than about one chunk.
    chunks = [spans[lo:lo + _CHUNK] for lo in range(0, len(spans), _CHUNK)]
    n = len(chunks)
    assigned = [False] * n
    results: dict[int, list[tuple]] = {}
    lanes = workers - 1
    queued: list[collections.deque[int]] = [collections.deque() for _ in range(lanes)]
    owner: dict[int, int] = {}
    pool = _Workers(lanes)
    next_chunk = 0
    chunk_time = 0.0
    fed: set[int] = set()

    def top_up() -> None:
        nonlocal next_chunk
        for w in range(lanes):
            while len(queued[w]) < _DEPTH and next_chunk < n:
                part = chunks[next_chunk]
                base, stop = part[0][0], part[-1][1]
                pool.submit(w, (data[base:stop], [(st - base, en - base) for st, en in part], checker.store(),
                                checker.keep))
                assigned[next_chunk] = True
                owner[next_chunk] = w
                queued[w].append(next_chunk)
                next_chunk += 1

    def check_here(k: int) -> None:
        nonlocal chunk_time
        t0 = time.perf_counter()
        results[k] = _check_chunk(data, chunks[k], checker.store(), checker.keep)
        chunk_time = time.perf_counter() - t0

    def collect(w: int, timeout: float | None) -> bool:
        answer = pool.result(w, timeout)
        if answer is _LATE:
            return False
        j = queued[w].popleft()
        if j not in results and j not in fed:
            results[j] = answer  # else this process took the chunk over; the answer is dropped
        top_up()
        return True

    try:
        for k in range(n):
            if not assigned[k]:
                assigned[k] = True
                next_chunk = k + 1
                top_up()
                check_here(k)
            while k not in results:
                w = owner[k]
                if pool.ready(w):
                    collect(w, None)
                elif next_chunk < n and len(results) < _AHEAD:
                    j = next_chunk
                    assigned[j] = True
                    next_chunk += 1
                    check_here(j)
                elif not collect(w, max(chunk_time, 0.05)):
                    check_here(k)
            for result, (start, _) in zip(results.pop(k), chunks[k]):
                checker.feed(result, base + start)
            fed.add(k)
    finally:
        # Every answer needed is in; a worker may still be checking a chunk this process took over.
        pool.close(kill=True)


def _auto_workers(items: int) -> int:
    """One process per core (at most 4) for a large log, else 1.

    The load average is not consulted: work sharing (`_run`) gives a worker
    that shares its core with another job fewer chunks, so a worker helps
    even then (measured on 2 vCPUs, 30,000 records, with one CPU-bound job
    running: 17,000 records/s with the worker against 13,100 without).
    """
    if items < PARALLEL_THRESHOLD:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def _check_windows(source: Any, checker: _Checker, workers: int | None) -> tuple[Tail | None, int]:
    """Feed every complete item of the log to *checker*; return the log's tail and where its last item ends."""
    tail = None
    end_offset = 0
    for base, data, spans, tail in _windows(source):
        _run(data, spans, checker, _auto_workers(len(spans)) if workers is None else workers, base)
        if spans:
            end_offset = base + spans[-1][1]
    return tail, end_offset


def _verify(source: Any, trusted_keys: Any, anchor: Anchor | None, allow_open: bool, workers: int | None,
            keep: bool, only: str | None = None) -> tuple[Verdict, _Checker]:
    trusted = _trust_map(trusted_keys)
    if anchor is not None and not isinstance(anchor, Anchor):
        anchor = parse_anchor(str(anchor))
    checker = _Checker(trusted, anchor, keep, only)
    try:
        try:
            tail, end_offset = _check_windows(source, checker, workers)
        except _PoolError:
            checker = _Checker(trusted, anchor, keep, only)
            tail, end_offset = _check_windows(source, checker, 1)
    except _Stop as stop:
        return checker.verdict(stop.status, stop.message, bad=True, allow_open=allow_open), checker
    checker.offset = tail.offset if tail is not None else end_offset
    if tail is not None and not tail.torn:
        return checker.verdict(Status.TAMPERED, tail.message, bad=True, allow_open=allow_open), checker
    if anchor is not None and not checker.anchor_ok:
        return checker.verdict(Status.TRUNCATED, f"the anchor vouches for {anchor.size} records; the log has "
                                                 f"{checker.count}", bad=True, allow_open=allow_open), checker
    if tail is not None:
        return checker.verdict(Status.TORN_TAIL, tail.message, bad=True, allow_open=allow_open), checker
    if checker.count == 0:
        return checker.verdict(Status.TRUNCATED, "the log holds no record", bad=True, allow_open=allow_open), checker
    if checker.sealed:
        return checker.verdict(Status.COMPLETE, "closed and sealed by a checkpoint over every record", bad=False,
                               allow_open=allow_open), checker
    if checker.state.closed:
        why = "log-close is not followed by a checkpoint over every record"
    elif checker.last_cp == checker.count:
        why = "every record is checkpointed but the log has no log-close"
    else:
        since = checker.count - (checker.last_cp or 0)
        why = f"{since} record(s) after the last checkpoint and no log-close"
    return checker.verdict(Status.UNTERMINATED, why, bad=False, allow_open=allow_open), checker


def verify_log(source: str | os.PathLike[str] | bytes, trusted_keys: Mapping[bytes, keys.VerifyKey]
               | Sequence[keys.VerifyKey], *, anchor: Anchor | str | None = None, allow_open: bool = False,
               workers: int | None = None) -> Verdict:
    """Verify a receipt log (a path or its bytes) against *trusted_keys*; see the module docstring.

    *workers*: how many processes check items, this one included. None
    picks 1 for small logs and, from `PARALLEL_THRESHOLD` items up, 2 (this
    process and one worker) when the load average leaves a second core
    free; n forces n.
    """
    verdict, _ = _verify(source, trusted_keys, anchor, allow_open, workers, keep=False)
    return verdict


def read_verified(source: str | os.PathLike[str] | bytes, trusted_keys: Mapping[bytes, keys.VerifyKey]
                  | Sequence[keys.VerifyKey], *, anchor: Anchor | str | None = None, allow_open: bool = False,
                  workers: int | None = None, session: str | None = None) -> VerifiedLog:
    """`verify_log`, also returning the receipts that verified (all of them when the verdict is ok).

    With *session*, every record is still verified, but only that session's receipts and the log's own
    (those without a session: log-open, key rotation, recovery, log-close) are returned: what a timeline
    of one session reads, in memory that grows with the session, not the log."""
    if session is not None and not isinstance(session, str):
        raise TypeError(f"session must be a string, got `{type(session).__name__}`")
    verdict, checker = _verify(source, trusted_keys, anchor, allow_open, workers, keep=True, only=session)
    return VerifiedLog(verdict=verdict, receipts=tuple(checker.receipts), checkpoint_sizes=tuple(checker.cp_sizes))


# ----------------------------------------------------------------------------- command line


class UsageError(Exception):
    """Verification cannot run: bad key file, log file or anchor."""


def load_trusted_keys(paths: Sequence[str | os.PathLike[str]]) -> list[keys.VerifyKey]:
    """Public key files (`keys.load_verify_key` formats); raise `UsageError` on any problem."""
    if not paths:
        raise UsageError("no trusted key given; pass --key PUB (it may repeat)")
    out = []
    for p in paths:
        try:
            out.append(keys.load_verify_key(p))
        except keys.KeyFileError as exc:
            raise UsageError(str(exc)) from None
    return out


def prepare(log: str | os.PathLike[str], key_paths: Sequence[str | os.PathLike[str]],
            anchor: str | None) -> tuple[Path, list[keys.VerifyKey], Anchor | None]:
    """Check what the commands need (the log readable, the keys, the anchor) and return the log's path, the
    keys and the anchor; raise `UsageError` with a message for the user. The log is read later, window by
    window (`WINDOW_BYTES`), never whole."""
    trusted = load_trusted_keys(key_paths)
    parsed = None
    if anchor is not None:
        try:
            parsed = parse_anchor(anchor)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        with open(log, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise UsageError(f"cannot read receipt log `{log}`: {exc.strerror}") from None
    return Path(log), trusted, parsed


def verify_command(log: str | os.PathLike[str], key_paths: Sequence[str | os.PathLike[str]], *,
                   anchor: str | None = None, allow_open: bool = False, fmt: str = "human",
                   out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``aarmc verify LOG --key PUB [--key ...] [--anchor SIZE:ROOT] [--allow-open] [--format human|json]``.

    Prints the verdict and returns the exit status: 0 COMPLETE (or
    UNTERMINATED with *allow_open*), 1 any other verdict, 2 usage error.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        path, trusted, parsed = prepare(log, key_paths, anchor)
        verdict = verify_log(path, trusted, anchor=parsed, allow_open=allow_open)
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    except OSError as exc:  # the log went away or became unreadable after `prepare` looked at it
        print(f"error: cannot read receipt log `{log}`: {exc.strerror or exc}", file=err)
        return EXIT_USAGE
    if fmt == "json":
        print(json.dumps(verdict.to_json(), indent=2), file=out)
    else:
        print(verdict.describe(), file=out)
    return verdict.exit_code
