"""Crashes: a writer process killed with SIGKILL mid-stream, torn tails, recovery on reopen.

The writer runs in a real subprocess and reports each `Ack` (seq and record
digest) to this process over a pipe only after `append` returned it. After
SIGKILL the log must verify as UNTERMINATED or TORN_TAIL — never COMPLETE —
with every acknowledged receipt present byte for byte; reopening appends a
recovery record and the log verifies again. A power cut is modelled by
cutting the file anywhere after the last acknowledged (fsynced) record.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aarm_runtime import receipts as R
from aarm_runtime.decision import Decision
from aarm_runtime.receipt_log import LogCorruptError, ReceiptLog
from aarm_runtime.verify import Status, read_verified, verify_log

from test_receipt_log import KEY_A, write_sample_log

TRUST = [KEY_A.verify_key]

WRITER = textwrap.dedent(
    """
    import sys, threading
    from aarm_runtime import keys, receipts as R
    from aarm_runtime.decision import Decision
    from aarm_runtime.receipt_log import ReceiptLog

    path, seed, mode, threads = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    log = ReceiptLog.create(path, keys.SigningKey.from_seed(seed), fsync=mode, checkpoint_every=16,
                            checkpoint_interval_s=None)
    lock = threading.Lock()

    def ack(a):
        # Only what append returned is reported: that is the acknowledgement.
        with lock:
            sys.stdout.write(f"{a.seq} {a.digest.hex()} {int(a.durable)}\\n")
            sys.stdout.flush()

    allow = Decision(decision="allow", rules=("r",), reason="rule", message="")

    def run(t):
        s = f"s{t}"
        ack(log.append(R.session_start_record(s)))
        i = 0
        while True:
            did = f"{s}-d{i}"
            ack(log.append(R.decision_record(session=s, decision_id=did, tool="t.x",
                                             params={"i": i, "pad": "x" * (i % 97)}, decision=allow)))
            ack(log.append(R.outcome_record(session=s, ref=did, ok=True, start_ns=i, end_ns=i + 1)))
            i += 1

    workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    """
)


def _record_digests(data: bytes) -> dict[int, bytes]:
    spans, _ = R.split_items(data)
    out = {}
    for s, e in spans:
        item = R.parse_item(data[s:e])
        if isinstance(item, R.RecordItem):
            out[item.receipt.seq] = hashlib.sha256(data[s:e]).digest()
    return out


def _kill_mid_stream(path: Path, mode: str, threads: int, acks_before_kill: int) -> dict[int, bytes]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), KEY_A.seed.hex(), mode, str(threads)],
                            stdout=subprocess.PIPE, text=True)
    acked: dict[int, bytes] = {}
    try:
        for line in proc.stdout:
            seq, digest, durable = line.split()
            assert durable == "1"
            acked[int(seq)] = bytes.fromhex(digest)
            if len(acked) >= acks_before_kill:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # Acks already in the pipe were sent before the kill: they count as acknowledged too.
        for line in proc.stdout:
            seq, digest, _ = line.split()
            acked[int(seq)] = bytes.fromhex(digest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= acks_before_kill
    return acked


@pytest.mark.parametrize(
    ("mode", "threads", "acks"),
    [("always", 1, 37), ("always", 1, 180), ("group", 1, 120), ("group", 3, 250), ("always", 3, 90)],
)
def test_sigkill_mid_stream_loses_no_acknowledged_receipt(tmp_path: Path, mode: str, threads: int,
                                                          acks: int) -> None:
    path = tmp_path / "log.cbor"
    acked = _kill_mid_stream(path, mode, threads, acks)
    data = path.read_bytes()
    verified = read_verified(data, TRUST, allow_open=True)
    assert verified.verdict.status in (Status.UNTERMINATED, Status.TORN_TAIL), verified.verdict.describe()
    assert verified.verdict.status is not Status.COMPLETE
    present = _record_digests(data)
    assert len(verified.receipts) >= len(acked)
    for seq, digest in acked.items():
        assert present.get(seq) == digest, f"acknowledged receipt {seq} is missing or different"
        assert seq < verified.verdict.records

    log = ReceiptLog.open(path, KEY_A, checkpoint_interval_s=None)
    recovery = log.recovery
    assert recovery is not None and recovery.offset <= len(data)
    assert recovery.length == len(data) - recovery.offset
    assert recovery.digest == hashlib.sha256(data[recovery.offset:]).digest()
    log.append(R.session_start_record("after-crash"))
    log.close()
    after = read_verified(path, TRUST)
    assert after.verdict.status is Status.COMPLETE, after.verdict.describe()
    kinds = [r.kind for r in after.receipts]
    assert kinds.count(R.Kind.RECOVERY) == 1
    present_after = _record_digests(path.read_bytes())
    for seq, digest in acked.items():
        assert present_after[seq] == digest


def test_power_cut_after_the_last_acknowledged_record(tmp_path: Path) -> None:
    """Only fsynced bytes survive a power cut; the rest of the file may be cut anywhere."""
    path = tmp_path / "log.cbor"
    acked = _kill_mid_stream(path, "always", 1, 60)
    data = path.read_bytes()
    spans, _ = R.split_items(data)
    ends = {}
    for s, e in spans:
        item = R.parse_item(data[s:e])
        if isinstance(item, R.RecordItem):
            ends[item.receipt.seq] = e
    durable_end = ends[max(acked)]
    rng = random.Random(7)
    cuts = sorted({durable_end, len(data), *rng.sample(range(durable_end, len(data) + 1),
                                                       min(12, len(data) - durable_end + 1))})
    torn = 0
    for n, cut in enumerate(cuts):
        copy = tmp_path / f"cut{n}.cbor"
        copy.write_bytes(data[:cut])
        v = verify_log(copy, TRUST)
        assert v.status in (Status.UNTERMINATED, Status.TORN_TAIL)
        torn += v.status is Status.TORN_TAIL
        log = ReceiptLog.open(copy, KEY_A, checkpoint_interval_s=None)
        assert log.recovery.offset <= cut and log.recovery.length == cut - log.recovery.offset
        log.close()
        assert verify_log(copy, TRUST).status is Status.COMPLETE
        assert all(_record_digests(copy.read_bytes())[s] == d for s, d in acked.items())
    assert torn or len(cuts) <= 2


def test_every_torn_cut_of_the_last_record_recovers(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path, close=False, rotate=False).abandon()
    data = path.read_bytes()
    spans, _ = R.split_items(data)
    start = spans[-1][0]
    for cut in range(start + 1, len(data)):
        copy = tmp_path / "torn.cbor"
        copy.write_bytes(data[:cut])
        v = verify_log(copy, TRUST)
        assert v.status is Status.TORN_TAIL and v.offset == start
        log = ReceiptLog.open(copy, KEY_A, checkpoint_interval_s=None)
        assert log.recovery == R.Recovery(offset=start, length=cut - start,
                                          digest=hashlib.sha256(data[start:cut]).digest())
        log.close()
        assert verify_log(copy, TRUST).status is Status.COMPLETE
        copy.unlink()


def test_zero_filled_tail_recovers(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path, close=False, rotate=False).abandon()
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(bytes(4096))  # what a file system may leave after a crash: the size grew, the data did not
    assert verify_log(path, TRUST).status is Status.TORN_TAIL
    log = ReceiptLog.open(path, KEY_A, checkpoint_interval_s=None)
    assert log.recovery.offset == size and log.recovery.length == 4096
    log.close()
    assert verify_log(path, TRUST).status is Status.COMPLETE


def test_recovery_refuses_to_destroy_evidence_of_tampering(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path, close=False, rotate=False).abandon()
    data = path.read_bytes()
    spans, _ = R.split_items(data)
    s, e = spans[5]
    item = data[s:e]
    p = 5 + item[3]
    head = {0x58: 2, 0x59: 3}[item[p]]
    forged = data[:s] + item[:p] + b"\x5a" + (10**6).to_bytes(4, "big") + item[p + head:] + data[e:]
    path.write_bytes(forged)
    assert verify_log(path, TRUST).status is Status.TAMPERED
    with pytest.raises(LogCorruptError, match="not recoverable"):
        ReceiptLog.open(path, KEY_A)
    assert path.read_bytes() == forged  # nothing was truncated


def test_reopen_refuses_a_broken_chain(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path, close=False, rotate=False).abandon()
    data = path.read_bytes()
    spans, _ = R.split_items(data)
    items = [data[s:e] for s, e in spans]
    items[3], items[4] = items[4], items[3]
    path.write_bytes(b"".join(items))
    with pytest.raises(LogCorruptError, match="record 3"):
        ReceiptLog.open(path, KEY_A)


def test_outcome_after_recovery_for_a_decision_before_the_crash(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    log = ReceiptLog.create(path, KEY_A, fsync="always", checkpoint_interval_s=None)
    log.append(R.session_start_record("s"))
    log.append(R.decision_record(session="s", decision_id="d", tool="t.x", params={},
                                 decision=Decision(decision="allow", rules=(), reason="default", message="")))
    log.abandon()
    log = ReceiptLog.open(path, KEY_A, checkpoint_interval_s=None)
    log.append(R.outcome_record(session="s", ref="d", ok=False, start_ns=1, end_ns=2, error="writer restarted"))
    log.close()
    assert verify_log(path, TRUST).status is Status.COMPLETE
