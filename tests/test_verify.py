"""Offline verification: verdicts, keys over time, checkpoints, anchors, the CLI functions, parallel = serial.

Besides logs from the real writer, `forge` signs arbitrary item sequences
with a trusted key — an insider with the key, or a buggy writer — so that the
order, checkpoint and rotation rules are shown to hold even when every
signature is valid.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aarm_runtime import cose, keys, merkle
from aarm_runtime import verify as verify_module
from aarm_runtime import receipts as R
from aarm_runtime.decision import Decision
from aarm_runtime.receipt_log import ReceiptLog
from aarm_runtime.receipts import Kind, Record
from aarm_runtime.verify import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    PARALLEL_THRESHOLD,
    Anchor,
    Status,
    parse_anchor,
    read_verified,
    verify_command,
    verify_log,
)

from test_receipt_log import KEY_A, KEY_B, T0, write_sample_log

KEY_C = keys.SigningKey.from_seed(bytes(range(64, 96)))
TRUST = [KEY_A.verify_key]
LOG_ID = bytes(range(16))


class CP:
    """A checkpoint in a forged sequence; fields override what an honest writer would put."""

    def __init__(self, **over: Any) -> None:
        self.over = over


def forge(entries: list[Any], *, key: keys.SigningKey = KEY_A, log_id: bytes = LOG_ID) -> bytes:
    """Sign records and checkpoints in exactly the given order, chaining seq/prev as an honest writer would.

    An entry is a `Record`, a `CP`, ``(Record, {"key": K, "seq": n, "prev": h})``, or raw bytes.
    A key-rotation record switches the signing key for later entries (unless overridden).
    """
    out = bytearray()
    acc = merkle.MerkleAccumulator()
    prev, seq, current = bytes(32), 0, key
    for entry in entries:
        if isinstance(entry, bytes):
            out += entry
            continue
        if isinstance(entry, CP):
            o = entry.over
            size = o.get("size", acc.size)
            k = o.get("key", current)
            path = o["path"] if "path" in o else acc.last_inclusion_proof()
            cwt, extra, unprotected = R.checkpoint_headers(k.kid, "forge", o.get("log_id", log_id), 0, size, path)
            out += cose.sign1(o.get("root", acc.root()), k, typ=cose.TYP_CHECKPOINT, cwt_claims=cwt,
                              extra_protected=extra, unprotected=unprotected, detached=True)
            continue
        record, over = entry if isinstance(entry, tuple) else (entry, {})
        k = over.get("key", current)
        r = R.Receipt(log_id=over.get("log_id", log_id), seq=over.get("seq", seq), prev=over.get("prev", prev),
                      time_ns=T0 + seq, record=record)
        data = R.sign_receipt(R.encode_payload(r), k, issuer="forge", subject=r.subject, iat=r.time_ns // 10**9)
        out += data
        prev = hashlib.sha256(data).digest()
        acc.append(merkle.leaf_hash(data))
        seq += 1
        if record.kind == Kind.KEY_ROTATION and "next" in over:
            current = over["next"]
    return bytes(out)


OPEN = Record(kind=Kind.LOG_OPEN)


def close(n: int) -> Record:
    return Record(kind=Kind.LOG_CLOSE, close=R.Close(checkpoints=n))


def start(s: str = "s") -> Record:
    return R.session_start_record(s)


def dec(did: str, effect: str = "allow", s: str = "s") -> Record:
    return R.decision_record(session=s, decision_id=did, tool="t.x", params={"d": did},
                             decision=Decision(decision=effect, rules=("r",), reason="rule", message=""))


def rotation(seq: int, old: keys.SigningKey, new: keys.SigningKey, *, pop_key: keys.SigningKey | None = None,
             log_id: bytes = LOG_ID) -> Record:
    pop = (pop_key or new).sign(R.rotation_pop_message(log_id, seq, old.kid, new.verify_key.public_bytes))
    return Record(kind=Kind.KEY_ROTATION, rotation=R.Rotation(public_key=new.verify_key.public_bytes, proof=pop))


def status(data: bytes, **kw: Any) -> tuple[Status, int | None, str]:
    v = verify_log(data, kw.pop("trust", TRUST), **kw)
    return v.status, v.index, v.message


# ----------------------------------------------------------------------------- real logs


def test_complete_log(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path)
    v = verify_log(path, TRUST)
    assert v.status is Status.COMPLETE and v.ok and v.exit_code == EXIT_OK
    assert v.index is None and v.record is None and v.offset is None
    assert v.kids == (KEY_A.kid, KEY_B.kid)
    assert v.records == v.tree_size == v.last_checkpoint
    assert v.checkpoints >= 5
    spans, _ = R.split_items(path.read_bytes())
    data = path.read_bytes()
    leaves = [merkle.leaf_hash(data[s:e]) for s, e in spans if isinstance(R.parse_item(data[s:e]), R.RecordItem)]
    assert v.root == merkle.root(leaves)
    assert json.loads(json.dumps(v.to_json()))["status"] == "COMPLETE"
    # Bytes and path give the same verdict; so does a dict trust store.
    assert verify_log(data, {KEY_A.kid: KEY_A.verify_key}) == v


def test_checkpoints_verify_with_an_independent_ed25519(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path, rotate=False)
    data = path.read_bytes()
    public = Ed25519PublicKey.from_public_bytes(KEY_A.verify_key.public_bytes)
    leaves: list[bytes] = []
    n_checkpoints = 0
    for s, e in R.split_items(data)[0]:
        tag = cbor2.loads(data[s:e])
        protected, unprotected, payload, signature = tag.value
        if payload is not None:
            leaves.append(hashlib.sha256(b"\x00" + data[s:e]).digest())
            continue
        header = cbor2.loads(protected)
        assert header[395] == 1 and header[16] == "application/aarm-checkpoint+cose"
        size, index, path_ = cbor2.loads(unprotected[396][-1][0])
        assert (size, index) == (len(leaves), len(leaves) - 1)
        root = merkle.root(leaves)
        assert merkle.root_from_inclusion_proof(leaves[-1], index, size, path_) == root
        public.verify(signature, cbor2.dumps(["Signature1", protected, b"", root]))
        n_checkpoints += 1
    assert n_checkpoints >= 5


def test_unterminated_and_allow_open(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    log = write_sample_log(path, close=False)
    log.abandon()
    v = verify_log(path, TRUST)
    assert v.status is Status.UNTERMINATED and not v.ok and v.exit_code == EXIT_FAILED
    assert "after the last checkpoint" in v.message
    assert verify_log(path, TRUST, allow_open=True).ok


def test_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path)
    data = path.read_bytes()
    spans, _ = R.split_items(data)
    v = verify_log(data[:-7], TRUST)
    assert v.status is Status.TORN_TAIL and v.index == len(spans) - 1 and v.offset == spans[-1][0]
    assert not verify_log(data[:-7], TRUST, allow_open=True).ok


def test_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path)
    assert status(path.read_bytes(), trust=[KEY_C.verify_key])[:2] == (Status.UNKNOWN_KEY, 0)
    # Trusting only the key the log rotated to is not enough: trust starts at log-open.
    assert status(path.read_bytes(), trust=[KEY_B.verify_key])[:2] == (Status.UNKNOWN_KEY, 0)
    assert status(path.read_bytes(), trust=[KEY_C.verify_key, KEY_A.verify_key])[0] is Status.COMPLETE


# ----------------------------------------------------------------------------- anchors


def test_anchor_detects_truncation_of_an_open_log(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    log = write_sample_log(path, close=False)
    size, root = log.root()
    log.abandon()
    data = path.read_bytes()
    spans, _ = R.split_items(data)
    anchor = f"{size}:{root.hex()}"
    assert verify_log(data, TRUST, anchor=anchor, allow_open=True).ok
    # Cutting whole items off the end leaves a valid, shorter, open log ...
    for cut in range(1, 6):
        shorter = data[:spans[-cut][0]]
        assert verify_log(shorter, TRUST, allow_open=True).status is Status.UNTERMINATED
        # ... which only the anchor exposes.
        v = verify_log(shorter, TRUST, anchor=anchor, allow_open=True)
        assert v.status is Status.TRUNCATED and not v.ok
    # An anchor for an earlier size still holds on the full log; a wrong root does not.
    v = verify_log(data, TRUST, anchor=parse_anchor(f"{size}:{root.hex()}"))
    assert v.status is Status.UNTERMINATED
    bad = Anchor(size=size - 2, root=root)
    assert verify_log(data, TRUST, anchor=bad).status is Status.TAMPERED


def test_parse_anchor() -> None:
    a = parse_anchor(f"12:{'ab' * 32}")
    assert a.size == 12 and a.root == bytes([0xAB]) * 32 and str(a) == f"12:{'ab' * 32}"
    for bad, fragment in [("12", "SIZE:ROOTHEX"), ("x:" + "ab" * 32, "decimal"), ("3:zz", "not hex"),
                          ("3:abcd", "2 bytes"), ("0:" + "ab" * 32, "positive")]:
        with pytest.raises(ValueError, match=fragment):
            parse_anchor(bad)


# ------------------------------------------------------------- forged logs: signatures valid, rules broken


def test_forge_helper_makes_complete_logs() -> None:
    assert status(forge([OPEN, start(), dec("d"), CP(), close(1), CP()]))[0] is Status.COMPLETE


@pytest.mark.parametrize(
    ("entries", "expected", "index", "fragment"),
    [
        ([start(), CP()], Status.TAMPERED, 0, "log-open must be the first"),
        ([OPEN, dec("d"), close(0), CP()], Status.TAMPERED, 1, "before its session-start"),
        ([OPEN, start(), dec("d", "deny"),
          R.outcome_record(session="s", ref="d", ok=True, start_ns=0, end_ns=0), close(0), CP()],
         Status.TAMPERED, 3, "cannot execute"),
        ([OPEN, start(), (dec("d"), {"seq": 5}), close(0), CP()], Status.TAMPERED, 2, "seq 5"),
        ([OPEN, start(), (dec("d"), {"prev": bytes(32)}), close(0), CP()], Status.TAMPERED, 2, "prev"),
        ([OPEN, start(), (dec("d"), {"log_id": bytes(16)}), close(0), CP()], Status.TAMPERED, 2, "belongs to log"),
        ([OPEN, start(), close(1), CP()], Status.TAMPERED, 2, "counts 1 checkpoint"),
        ([OPEN, start(), CP(), CP(), close(2), CP()], Status.TAMPERED, 3, "second checkpoint at tree size 2"),
        ([CP(size=1, path=())], Status.TAMPERED, 0, "before any record"),
        ([CP(size=0, path=())], Status.TAMPERED, 0, "leaf index"),
        ([OPEN, start(), CP(size=3), close(1), CP()], Status.TRUNCATED, 2, "vouches for 3 records"),
        ([OPEN, start(), CP(size=1), close(1), CP()], Status.TAMPERED, 2, "covers 1 records"),
        ([OPEN, start(), CP(path=(bytes(32),)), close(1), CP()], Status.TAMPERED, 2, "inclusion proof"),
        ([OPEN, start(), CP(root=bytes(32)), close(1), CP()], Status.BAD_SIGNATURE, 2, "does not verify"),
        ([OPEN, start(), CP(log_id=bytes(16)), close(1), CP()], Status.TAMPERED, 2, "names log"),
        ([OPEN, start(), CP(key=KEY_C), close(1), CP()], Status.UNKNOWN_KEY, 2, "not trusted"),
        ([OPEN, start(), close(0), CP(), start("t")], Status.TAMPERED, 4, "follows the checkpoint that sealed"),
        ([OPEN, start(), close(0), CP(), CP()], Status.TAMPERED, 4, "follows the checkpoint that sealed"),
        ([OPEN, start(), close(0)], Status.UNTERMINATED, None, "log-close is not followed"),
        ([OPEN, start(), CP()], Status.UNTERMINATED, None, "no log-close"),
        ([OPEN, (Record(kind=Kind.RECOVERY, recovery=R.Recovery(offset=5, length=0, digest=bytes(32))), {}),
          close(0), CP()], Status.TAMPERED, 1, "starts at byte 5"),
        ([b""], Status.TRUNCATED, 0, "no record"),
        ([OPEN, b"\x00\x01"], Status.TAMPERED, 1, "tagged cose_sign1"),
    ],
)
def test_forged_logs(entries: list[Any], expected: Status, index: int | None, fragment: str) -> None:
    got, at, message = status(forge(entries))
    assert (got, at) == (expected, index), message
    assert fragment in message


def test_recovery_record_at_its_own_offset_verifies() -> None:
    head = forge([OPEN, start()])
    rec = Record(kind=Kind.RECOVERY, recovery=R.Recovery(offset=len(head), length=3, digest=bytes(32)))
    assert status(forge([OPEN, start(), rec, close(0), CP()]))[0] is Status.COMPLETE


def test_an_item_of_another_type_is_tampering() -> None:
    head = forge([OPEN, start()])
    policy_item = cose.sign1(b"\xa0", KEY_A, typ=cose.TYP_POLICY, cwt_claims={1: "i", 2: "p", 6: 0})
    got, at, message = status(head + policy_item)
    assert (got, at) == (Status.TAMPERED, 2)
    assert message == "item typ is `application/aarm-policy+cose` where a receipt has `application/aarm-receipt+cose`"


# ----------------------------------------------------------------------------- key rotation


def test_rotation_old_to_new_verifies_with_the_old_key_only() -> None:
    log = forge([OPEN, start(), (rotation(2, KEY_A, KEY_B), {"next": KEY_B}), CP(key=KEY_A), dec("d"), close(1),
                 CP()])
    v = verify_log(log, [KEY_A.verify_key])
    assert v.status is Status.COMPLETE and v.kids == (KEY_A.kid, KEY_B.kid)


@pytest.mark.parametrize(
    ("entries", "expected", "index", "fragment"),
    [
        # the rotation record is signed by a key nobody trusts: refused
        ([OPEN, start(), (rotation(2, KEY_C, KEY_B), {"key": KEY_C, "next": KEY_B}), dec("d"), close(0), CP()],
         Status.UNKNOWN_KEY, 2, "not trusted"),
        # signed by the key it introduces: that key is not trusted yet
        ([OPEN, start(), (rotation(2, KEY_B, KEY_B), {"key": KEY_B, "next": KEY_B}), close(0), CP()],
         Status.UNKNOWN_KEY, 2, "not trusted"),
        # proof of possession by another key
        ([OPEN, start(), (rotation(2, KEY_A, KEY_B, pop_key=KEY_C), {"next": KEY_B}), close(0), CP()],
         Status.BAD_SIGNATURE, 2, "proof of possession"),
        # proof of possession made for another log
        ([OPEN, start(), (rotation(2, KEY_A, KEY_B, log_id=bytes(16)), {"next": KEY_B}), close(0), CP()],
         Status.BAD_SIGNATURE, 2, "proof of possession"),
        # after the rotation the old key may no longer sign
        ([OPEN, start(), (rotation(2, KEY_A, KEY_B), {"next": KEY_B}), (dec("d"), {"key": KEY_A}), close(0), CP()],
         Status.TAMPERED, 3, "the log's key at this point"),
        # the new key may not sign before the rotation's next seq
        ([OPEN, (start(), {"key": KEY_B}), close(0), CP()], Status.UNKNOWN_KEY, 1, "not trusted"),
        # a checkpoint right after the rotation belongs to the old key
        ([OPEN, start(), (rotation(2, KEY_A, KEY_B), {"next": KEY_B}), CP(key=KEY_B), close(1), CP()],
         Status.TAMPERED, 3, "not by the key of the record before it"),
    ],
)
def test_rotation_refusals(entries: list[Any], expected: Status, index: int, fragment: str) -> None:
    got, at, message = status(forge(entries))
    assert (got, at) == (expected, index), message
    assert fragment in message


def test_a_trusted_key_of_another_log_cannot_sign_into_this_one() -> None:
    log = forge([OPEN, start(), (dec("d"), {"key": KEY_C}), close(0), CP()])
    got, at, message = status(log, trust=[KEY_A.verify_key, KEY_C.verify_key])
    assert (got, at) == (Status.TAMPERED, 2) and "the log's key at this point" in message


# ----------------------------------------------------------------------------- read_verified and the CLI function


def test_read_verified_returns_the_verified_prefix(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path)
    full = read_verified(path, TRUST)
    assert full.verdict.ok and len(full.receipts) == full.verdict.records
    assert [r.seq for r in full.receipts] == list(range(len(full.receipts)))
    assert full.checkpoint_sizes[-1] == len(full.receipts)
    data = bytearray(path.read_bytes())
    spans, _ = R.split_items(bytes(data))
    s, e = spans[10]
    data[e - 3] ^= 1  # inside the signature of item 10
    part = read_verified(bytes(data), TRUST)
    assert part.verdict.status is Status.BAD_SIGNATURE and part.verdict.index == 10
    assert len(part.receipts) == part.verdict.record == sum(
        1 for st, en in spans[:10] if isinstance(R.parse_item(bytes(data[st:en])), R.RecordItem))


def _key_file(tmp_path: Path, key: keys.SigningKey, name: str) -> Path:
    p = tmp_path / name
    p.write_text(key.verify_key.hex() + "\n")
    return p


def test_verify_command_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path)
    pub = _key_file(tmp_path, KEY_A, "a.pub")
    other = _key_file(tmp_path, KEY_C, "c.pub")
    out, err = io.StringIO(), io.StringIO()
    assert verify_command(path, [pub], out=out, err=err) == EXIT_OK
    assert out.getvalue().startswith("COMPLETE")
    out = io.StringIO()
    assert verify_command(path, [other], fmt="json", out=out, err=err) == EXIT_FAILED
    assert json.loads(out.getvalue())["status"] == "UNKNOWN_KEY"
    assert verify_command(path, [other, pub], out=io.StringIO(), err=err) == EXIT_OK
    open_path = tmp_path / "open.cbor"
    write_sample_log(open_path, close=False).abandon()
    assert verify_command(open_path, [pub], out=io.StringIO(), err=err) == EXIT_FAILED
    assert verify_command(open_path, [pub], allow_open=True, out=io.StringIO(), err=err) == EXIT_OK
    for args, kw, fragment in [
        ((path, []), {}, "no trusted key"),
        ((path, [tmp_path / "missing.pub"]), {}, "does not exist"),
        ((tmp_path / "missing.cbor", [pub]), {}, "cannot read receipt log"),
        ((path, [pub]), {"anchor": "nope"}, "SIZE:ROOTHEX"),
    ]:
        err = io.StringIO()
        assert verify_command(*args, out=io.StringIO(), err=err, **kw) == EXIT_USAGE
        assert fragment in err.getvalue()


# ----------------------------------------------------------------------------- worker processes


def _big_log(path: Path, n_pairs: int) -> None:
    log = ReceiptLog.create(path, KEY_A, fsync="none", checkpoint_every=256, checkpoint_interval_s=None)
    log.append(start())
    d = Decision(decision="allow", rules=("r",), reason="rule", message="")
    for i in range(n_pairs):
        if i == n_pairs // 3:
            log.rotate_key(KEY_B)  # later chunks must learn the key from the sequential pass
        log.submit(R.decision_record(session="s", decision_id=f"d{i}", tool="t.x", params={"i": i}, decision=d))
        log.submit(R.outcome_record(session="s", ref=f"d{i}", ok=True, start_ns=0, end_ns=i))
    log.close()


def test_workers_agree_with_in_process_verification(tmp_path: Path) -> None:
    path = tmp_path / "big.cbor"
    _big_log(path, PARALLEL_THRESHOLD // 2 + 200)
    data = path.read_bytes()
    serial = verify_log(data, TRUST, workers=1)
    assert serial.status is Status.COMPLETE and serial.records > PARALLEL_THRESHOLD
    assert verify_log(data, TRUST, workers=2) == serial
    assert verify_log(data, TRUST) == serial  # auto: workers at this size when a core is free
    full = read_verified(data, TRUST, workers=2)
    assert [r.seq for r in full.receipts] == list(range(serial.records))
    spans, _ = R.split_items(data)
    for k in (5, len(spans) // 2, len(spans) - 3):
        bad = bytearray(data)
        bad[(spans[k][0] + spans[k][1]) // 2] ^= 0x20
        one = verify_log(bytes(bad), TRUST, workers=1)
        two = verify_log(bytes(bad), TRUST, workers=2)
        three = verify_log(bytes(bad), TRUST, workers=3)
        assert one == two == three and one.status is not Status.COMPLETE and one.index == k


def _windowed_cases(tmp_path: Path) -> list[bytes]:
    """Logs whose verdicts depend on where items start and end: complete, torn, zero-filled, flipped bytes,
    malformed, an item that hides others, a recovery record checked against its own offset."""
    path = tmp_path / "sample.cbor"
    write_sample_log(path)
    data = path.read_bytes()
    spans, _ = R.split_items(data)
    s, e = spans[3]
    item = data[s:e]
    p = 5 + item[3]  # as in test_receipts: the payload's length made to swallow the items after it
    head = {0x58: 2, 0x59: 3}[item[p]]
    hiding = data[:s] + item[:p] + b"\x5a" + (10**6).to_bytes(4, "big") + item[p + head:] + data[e:]
    opened = forge([OPEN, start()])
    rec = Record(kind=Kind.RECOVERY, recovery=R.Recovery(offset=len(opened), length=3, digest=bytes(32)))
    cases = [data, data[:-7], data[:spans[-2][1] + 1], data + bytes(50), data[:spans[-1][0]] + bytes(9), hiding,
             data[:spans[2][0]] + b"\xff" + data[spans[2][0] + 1:], forge([OPEN, start(), rec, close(0), CP()])]
    for k in (1, len(spans) // 2, len(spans) - 2):
        flipped = bytearray(data)
        flipped[(spans[k][0] + spans[k][1]) // 2] ^= 0x04
        cases.append(bytes(flipped))
    return cases


@pytest.mark.parametrize("window", [1, 97, 700, 4096])
def test_reading_a_log_file_in_windows_changes_no_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          window: int) -> None:
    # A file is read WINDOW_BYTES at a time (a bounded memory for any log size): whatever the windows cut,
    # every verdict, first bad index and offset is the one the same bytes get when read whole.
    cases = _windowed_cases(tmp_path)
    monkeypatch.setattr(verify_module, "WINDOW_BYTES", window)
    trust = [KEY_A.verify_key, KEY_B.verify_key]
    statuses = set()
    for i, case in enumerate(cases):
        path = tmp_path / f"case{i}.cbor"
        path.write_bytes(case)
        whole = read_verified(case, trust, workers=1)
        windowed = read_verified(path, trust, workers=1)
        assert windowed == whole, (i, whole.verdict.message, windowed.verdict.message)
        statuses.add(whole.verdict.status)
    assert {Status.COMPLETE, Status.TORN_TAIL, Status.TAMPERED, Status.BAD_SIGNATURE} <= statuses


def test_windows_and_worker_processes_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.cbor"
    _big_log(path, PARALLEL_THRESHOLD // 2 + 200)
    data = path.read_bytes()
    spans, _ = R.split_items(data)
    bad = bytearray(data)
    k = len(spans) * 2 // 3
    bad[(spans[k][0] + spans[k][1]) // 2] ^= 0x20
    (tmp_path / "bad.cbor").write_bytes(bytes(bad))
    monkeypatch.setattr(verify_module, "WINDOW_BYTES", len(data) // 3)
    good = verify_log(path, TRUST + [KEY_B.verify_key], workers=2)
    assert good == verify_log(data, TRUST + [KEY_B.verify_key], workers=1) and good.status is Status.COMPLETE
    broken = verify_log(tmp_path / "bad.cbor", TRUST + [KEY_B.verify_key], workers=2)
    assert broken == verify_log(bytes(bad), TRUST + [KEY_B.verify_key], workers=1) and broken.index == k
    # Receipts kept for one session, built in the workers: its own and the log's, as in one process.
    every = read_verified(data, TRUST + [KEY_B.verify_key], workers=1).receipts
    for session in ("s", "elsewhere"):
        kept = read_verified(path, TRUST + [KEY_B.verify_key], workers=2, session=session).receipts
        assert kept == tuple(r for r in every if r.record.session in (None, session))


class _StoppedWorkers(verify_module._Workers):
    """Real worker processes, stopped with SIGSTOP as soon as they start: a worker that never answers."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        for proc in self.procs:
            os.kill(proc.pid, signal.SIGSTOP)


class _DyingWorkers(verify_module._Workers):
    """Real worker processes killed after their first chunk was sent."""

    def submit(self, worker: int, args: tuple) -> None:
        super().submit(worker, args)
        self.procs[worker].kill()


@pytest.mark.parametrize("faulty", [_StoppedWorkers, _DyingWorkers])
def test_work_sharing_survives_a_worker_that_does_not_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             faulty: type) -> None:
    """A worker that never answers costs a bounded wait per chunk it holds; one that dies makes the verifier
    start over in-process. Either way the verdict is the in-process one."""
    path = tmp_path / "big.cbor"
    _big_log(path, 700)
    data = path.read_bytes()
    serial = verify_log(data, TRUST, workers=1)
    bad = bytearray(data)
    spans, _ = R.split_items(data)
    k = len(spans) - 40
    bad[(spans[k][0] + spans[k][1]) // 2] ^= 0x20
    serial_bad = verify_log(bytes(bad), TRUST, workers=1)
    monkeypatch.setattr(verify_module, "_CHUNK", 64)
    monkeypatch.setattr(verify_module, "_Workers", faulty)
    assert verify_log(data, TRUST, workers=2) == serial
    assert verify_log(bytes(bad), TRUST, workers=3) == serial_bad and serial_bad.index == k


def test_work_sharing_takes_chunks_from_a_slow_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With many small chunks this process checks the first ones itself while the worker starts, and the
    worker's answers, in whatever order the sharing hands out chunks, verify like one process."""
    path = tmp_path / "big.cbor"
    _big_log(path, 900)
    data = path.read_bytes()
    monkeypatch.setattr(verify_module, "_CHUNK", 16)
    serial = verify_log(data, TRUST, workers=1)
    assert serial.status is Status.COMPLETE
    assert verify_log(data, TRUST, workers=2) == serial
    kept = read_verified(data, TRUST, workers=2)
    assert [r.seq for r in kept.receipts] == list(range(serial.records))


# ----------------------------------------------------------------------------- timeline


def test_timeline_reconstructs_sessions_and_decisions(tmp_path: Path) -> None:
    from aarm_runtime.timeline import build_timeline, render_human, to_json

    path = tmp_path / "log.cbor"
    write_sample_log(path)
    t = build_timeline(read_verified(path, TRUST))
    assert [s.session for s in t.sessions] == ["sess-alice", "sess-bob"]
    assert [e.kind for e in t.events] == ["log-open", "key-rotation", "log-close"]
    alice, bob = t.sessions
    assert alice.identity.principal == "alice@example.com" and alice.end_note == "user logged out"
    steps = {s.decision_id: s for s in alice.steps + bob.steps}
    assert steps["d1"].params_json == '{"folder":"inbox"}' and steps["d1"].executed
    assert steps["d2"].decision.effect == "deny" and not steps["d2"].executed
    assert steps["d2"].decision.rules == ("no-external-pii",) and steps["d2"].params_json is None
    assert steps["d3"].approval.approver == "carol" and steps["d3"].approval.verdict == "approved"
    assert steps["d3"].outcome.ok and steps["d3"].identity.principal == "bob@example.com"
    assert steps["d4"].decision.params_json == '{"amount":20,"to":"acct-1"}'
    assert steps["d5"].resolution.next_decision == "d6" and steps["d6"].action_id == "a5"
    assert steps["d6"].outcome.error == "calendar unavailable"
    assert steps["d7"].approval.verdict == "rejected" and not steps["d7"].executed
    assert steps["d1"].policy == steps["d2"].policy and steps["d1"].policy.version == "3"
    data = json.loads(json.dumps(to_json(t)))
    d4 = next(s for s in data["sessions"][1]["steps"] if s["decision_id"] == "d4")
    assert d4["decided"]["modified_params"] == {"amount": 20, "to": "acct-1"}
    assert d4["proposed"]["params"] == {"amount": 20, "memo": "x", "to": "acct-1"}
    assert data["sessions"][0]["steps"][0]["time"].endswith("Z")
    text = render_human(t)
    assert "decided   DENY by no-external-pii (rule): pii to an outside domain" in text
    assert "approval  approved by carol" in text and "deferral  resolved by resolver" in text
    only_bob = build_timeline(read_verified(path, TRUST), session="sess-bob")
    assert [s.session for s in only_bob.sessions] == ["sess-bob"]
    # Reading one session keeps its receipts and the log's own only, and makes the same timeline.
    full, kept = read_verified(path, TRUST), read_verified(path, TRUST, session="sess-bob")
    assert kept.verdict == full.verdict and kept.checkpoint_sizes == full.checkpoint_sizes
    assert kept.receipts == tuple(r for r in full.receipts if r.record.session in (None, "sess-bob"))
    assert len(kept.receipts) < len(full.receipts)
    assert build_timeline(kept, session="sess-bob") == only_bob
    assert read_verified(path, TRUST, session="nobody").receipts == tuple(
        r for r in full.receipts if r.record.session is None)
    with pytest.raises(TypeError):
        read_verified(path, TRUST, session=b"sess-bob")  # type: ignore[arg-type]


def test_timeline_command(tmp_path: Path) -> None:
    from aarm_runtime.timeline import timeline_command

    path = tmp_path / "log.cbor"
    write_sample_log(path)
    pub = _key_file(tmp_path, KEY_A, "a.pub")
    out, err = io.StringIO(), io.StringIO()
    assert timeline_command(path, [pub], fmt="json", out=out, err=err) == EXIT_OK
    assert json.loads(out.getvalue())["verdict"]["status"] == "COMPLETE"
    assert timeline_command(path, [pub], session="nobody", out=io.StringIO(), err=err) == EXIT_FAILED
    assert "no session `nobody`" in err.getvalue()
    assert timeline_command(path, [], out=io.StringIO(), err=io.StringIO()) == EXIT_USAGE
    data = bytearray(path.read_bytes())
    spans, _ = R.split_items(bytes(data))
    data[spans[8][0] + 40] ^= 1
    path.write_bytes(bytes(data))
    out = io.StringIO()
    assert timeline_command(path, [pub], out=out, err=io.StringIO()) == EXIT_FAILED
    assert "verification stopped at item 8" in out.getvalue()
