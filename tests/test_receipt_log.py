"""The receipt log writer: layout, chain, checkpoints, fsync modes and acknowledgements, rotation, reopening.

`write_sample_log` is also the generator of the logs the verify, tamper and
crash tests use: every record kind, both sessions, each decision effect, a
key rotation and several checkpoints.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from pathlib import Path

import pytest

from aarm_runtime import cose, keys, merkle, receipt_log
from aarm_runtime import receipts as R
from aarm_runtime.decision import Decision
from aarm_runtime.receipt_log import (
    Ack,
    FsyncMode,
    KeyMismatchError,
    LogBusyError,
    LogClosedError,
    LogError,
    LogWriteError,
    ReceiptLog,
)
from aarm_runtime.receipts import CheckpointItem, Kind, RecordItem, parse_item, split_items
from aarm_runtime.verify import Status, read_verified, verify_log

KEY_A = keys.SigningKey.from_seed(bytes(range(32)))
KEY_B = keys.SigningKey.from_seed(bytes(range(32, 64)))
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns


def fixed_clock(start: int = T0, step: int = 1_000_003) -> object:
    counter = itertools.count(start, step)
    return lambda: next(counter)


POLICY = R.PolicyRef(digest=hashlib.sha256(b"policy artifact").digest(), policy="mail", version="3")
ALICE = R.Identity(principal="alice@example.com", agent="assistant", service="mail-gw", role="analyst",
                   scopes=("mail.read", "mail.send"), delegation=("bob@example.com",))
BOB = R.Identity(principal="bob@example.com", agent="payments-bot", role="treasurer")


def _d(effect: str, rules: tuple[str, ...] = (), reason: str = "rule", message: str = "", **kw: object) -> Decision:
    return Decision(decision=effect, rules=rules, reason=reason, message=message or f"{effect} by rule", **kw)


def write_sample_log(path: Path, *, rotate: bool = True, close: bool = True, checkpoint_every: int = 8,
                     extra_allows: int = 9, fsync: str = "none") -> ReceiptLog | None:
    """A realistic log: two sessions, every decision effect and follow-up kind, a rotation A -> B.

    About 40 records and 5 checkpoints; returns the open writer when *close* is false.
    """
    log = ReceiptLog.create(path, KEY_A, fsync=fsync, checkpoint_every=checkpoint_every,
                            checkpoint_interval_s=None, clock=fixed_clock())
    ctx = [hashlib.sha256(b"ctx%d" % i).digest() for i in range(64)]
    a, b = "sess-alice", "sess-bob"
    recs = [
        R.session_start_record(a, identity=ALICE, context=ctx[0], policy=POLICY),
        R.session_start_record(b, identity=BOB, context=ctx[1]),
        R.decision_record(session=a, decision_id="d1", action_id="a1", tool="mail.read", params={"folder": "inbox"},
                          decision=_d("allow", ("read-own",)), policy=POLICY, identity=ALICE, context=ctx[2],
                          include_params=True),
        R.outcome_record(session=a, ref="d1", action_id="a1", ok=True, start_ns=T0 + 10, end_ns=T0 + 900,
                         output={"messages": 3}),
        R.decision_record(session=a, decision_id="d2", action_id="a2", tool="mail.send",
                          params={"to": "eve@evil.example", "body": "customer list"},
                          decision=_d("deny", ("no-external-pii",), message="pii to an outside domain"),
                          policy=POLICY, identity=ALICE, context=ctx[3]),
        R.decision_record(session=b, decision_id="d3", action_id="a3", tool="payments.transfer",
                          params={"amount": 5000, "to": "acct-9"},
                          decision=_d("step_up", ("large-transfer",), approvers=("carol",), timeout_s=300),
                          policy=POLICY, identity=BOB, context=ctx[4]),
        R.approval_record(session=b, ref="d3", approver="carol", verdict="approved", action_id="a3"),
        R.outcome_record(session=b, ref="d3", ok=True, start_ns=T0 + 2000, end_ns=T0 + 5000,
                         output_digest=hashlib.sha256(b"receipt-77").digest()),
        R.decision_record(session=b, decision_id="d4", action_id="a4", tool="payments.transfer",
                          params={"amount": 20, "to": "acct-1", "memo": "x"},
                          decision=_d("modify", ("strip-memo",), params={"amount": 20, "to": "acct-1"}),
                          policy=POLICY, identity=BOB, context=ctx[5], include_params=True),
        R.outcome_record(session=b, ref="d4", ok=True, start_ns=T0 + 6000, end_ns=T0 + 6100),
        R.decision_record(session=a, decision_id="d5", action_id="a5", tool="calendar.read",
                          params={"day": "monday"}, decision=_d("defer", ("need-window",), reason="absent-context",
                                                                approvers=(), timeout_s=60),
                          policy=POLICY, identity=ALICE, context=ctx[6]),
        R.resolution_record(session=a, ref="d5", verdict="resolved", next_decision="d6", approver="resolver",
                            action_id="a5"),
        R.decision_record(session=a, decision_id="d6", action_id="a5", tool="calendar.read",
                          params={"day": "monday"}, decision=_d("allow", ("read-own",)), policy=POLICY,
                          identity=ALICE, context=ctx[7]),
        R.outcome_record(session=a, ref="d6", ok=False, start_ns=T0 + 7000, end_ns=T0 + 7500,
                         error="calendar unavailable"),
        R.decision_record(session=b, decision_id="d7", action_id="a7", tool="payments.transfer",
                          params={"amount": 90000, "to": "acct-2"},
                          decision=_d("step_up", ("large-transfer",), approvers=("carol",), timeout_s=300),
                          policy=POLICY, identity=BOB, context=ctx[8]),
        R.approval_record(session=b, ref="d7", approver="carol", verdict="rejected"),
    ]
    for r in recs:
        log.append(r)
    if rotate:
        log.rotate_key(KEY_B)
    for i in range(extra_allows):
        did = f"e{i}"
        sess = a if i % 2 else b
        log.append(R.decision_record(session=sess, decision_id=did, tool="docs.read", params={"doc": i},
                                     decision=_d("allow", ("read-own",), message="ok"),
                                     context=ctx[10 + i] if i % 3 == 0 else None))
        log.append(R.outcome_record(session=sess, ref=did, ok=True, start_ns=T0 + 10_000 * i,
                                    end_ns=T0 + 10_000 * i + 77))
    log.append(R.decision_record(session=b, decision_id="d9", action_id="a9", tool="shell.exec",
                                 params={"cmd": "DROP TABLE users"},
                                 decision=_d("deny", (), reason="unknown-tool", message="unknown tool `shell.exec`"),
                                 identity=BOB))
    log.append(R.session_end_record(a, note="user logged out"))
    log.append(R.session_end_record(b, context=ctx[40]))
    if close:
        log.close(note="end of sample")
        return None
    return log


def _items(data: bytes) -> list[RecordItem | CheckpointItem]:
    spans, tail = split_items(data)
    assert tail is None
    return [parse_item(data[s:e]) for s, e in spans]


# ----------------------------------------------------------------------------- layout


def test_sample_log_layout(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path)
    data = path.read_bytes()
    items = _items(data)
    records = [i for i in items if isinstance(i, RecordItem)]
    checkpoints = [i for i in items if isinstance(i, CheckpointItem)]
    assert 36 <= len(records) <= 44
    assert len(checkpoints) >= 5
    assert records[0].receipt.kind == Kind.LOG_OPEN and records[-1].receipt.kind == Kind.LOG_CLOSE
    assert isinstance(items[-1], CheckpointItem) and items[-1].tree_size == len(records)
    assert {r.receipt.kind for r in records} == set(Kind) - {Kind.RECOVERY}
    # seq is the leaf index; prev hashes the exact previous record bytes; one log id.
    spans, _ = split_items(data)
    record_bytes = [data[s:e] for (s, e), it in zip(spans, items) if isinstance(it, RecordItem)]
    prev = bytes(32)
    for n, (raw, item) in enumerate(zip(record_bytes, records)):
        assert item.receipt.seq == n
        assert item.receipt.prev == prev
        assert item.receipt.log_id == records[0].receipt.log_id
        prev = hashlib.sha256(raw).digest()
    # Each checkpoint signs the RFC 9162 root of the records before it and carries the last leaf's proof.
    leaves = [merkle.leaf_hash(raw) for raw in record_bytes]
    seen = 0
    for (s, e), item in zip(spans, items):
        if isinstance(item, RecordItem):
            seen += 1
            continue
        assert item.tree_size == seen and item.leaf_index == seen - 1
        assert item.path == merkle.inclusion_proof(seen - 1, seen, leaves)
        signer = KEY_A if item.kid == KEY_A.kid else KEY_B
        msg = cose.verify1(data[s:e], [signer.verify_key], typ=cose.TYP_CHECKPOINT,
                           detached_payload=merkle.root(leaves[:seen]))
        assert msg.protected[cose.HDR_VDS] == 1
        assert msg.cwt_claims[2] == records[0].receipt.log_id.hex()
    assert verify_log(data, [KEY_A.verify_key]).status is Status.COMPLETE


def test_checkpoint_every_n_and_at_close(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    log = ReceiptLog.create(path, KEY_A, fsync="none", checkpoint_every=5, checkpoint_interval_s=None)
    log.append(R.session_start_record("s"))
    for i in range(11):
        log.append(R.decision_record(session="s", decision_id=f"d{i}", tool="t.x", params={}, decision=_d("deny")))
    assert log.records == 13 and log.checkpoints == 2  # after records 5 and 10
    log.close()
    sizes = [i.tree_size for i in _items(path.read_bytes()) if isinstance(i, CheckpointItem)]
    assert sizes == [5, 10, 14]


def test_checkpoint_every_t_seconds(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    log = ReceiptLog.create(path, KEY_A, fsync="always", checkpoint_every=10_000, checkpoint_interval_s=0.05)
    log.append(R.session_start_record("s"))
    deadline = threading.Event()
    for _ in range(200):
        if log.checkpoints:
            break
        deadline.wait(0.01)
    assert log.checkpoints == 1
    # Idle: no new records, so no new checkpoint.
    deadline.wait(0.15)
    assert log.checkpoints == 1
    log.close()
    assert verify_log(path, [KEY_A.verify_key]).status is Status.COMPLETE


# ----------------------------------------------------------------------------- acknowledgement and fsync modes


@pytest.mark.parametrize("mode", ["always", "group", "none"])
def test_fsync_modes_ack(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "log.cbor"
    log = ReceiptLog.create(path, KEY_A, fsync=mode, checkpoint_interval_s=None)
    assert log.fsync_mode is FsyncMode(mode)
    ack = log.append(R.session_start_record("s"))
    assert isinstance(ack, Ack)
    assert ack.seq == 1 and ack.durable is (mode != "none")
    raw = path.read_bytes()[ack.offset:ack.offset + ack.length]
    assert hashlib.sha256(raw).digest() == ack.digest
    pending = log.submit(R.decision_record(session="s", decision_id="d", tool="t.x", params={}, decision=_d("deny")))
    assert pending.seq == 2
    ack2 = pending.wait()
    assert ack2.seq == 2 and pending.done()
    acks = log.append_many([R.decision_record(session="s", decision_id=f"m{i}", tool="t.x", params={"i": i},
                                              decision=_d("deny")) for i in range(5)])
    assert [a.seq for a in acks] == [3, 4, 5, 6, 7]
    assert all(a.durable is (mode != "none") for a in acks)
    log.close()
    assert verify_log(path, [KEY_A.verify_key]).status is Status.COMPLETE


def test_group_commit_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    log = ReceiptLog.create(path, KEY_A, fsync="group", checkpoint_every=16, checkpoint_interval_s=None)
    sessions = [f"s{t}" for t in range(4)]
    for s in sessions:
        log.append(R.session_start_record(s))
    acks: dict[str, list[Ack]] = {s: [] for s in sessions}

    def worker(s: str) -> None:
        for i in range(40):
            did = f"{s}-d{i}"
            acks[s].append(log.append(R.decision_record(session=s, decision_id=did, tool="t.x", params={"i": i},
                                                        decision=_d("allow"))))
            acks[s].append(log.append(R.outcome_record(session=s, ref=did, ok=True, start_ns=1, end_ns=2)))

    threads = [threading.Thread(target=worker, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    seqs = sorted(a.seq for lst in acks.values() for a in lst)
    assert seqs == list(range(5, 5 + 4 * 80))
    assert all(a.durable for lst in acks.values() for a in lst)
    verified = read_verified(path, [KEY_A.verify_key])
    assert verified.verdict.status is Status.COMPLETE
    by_seq = {r.seq: r for r in verified.receipts}
    data = path.read_bytes()
    for lst in acks.values():
        for a in lst:
            assert hashlib.sha256(data[a.offset:a.offset + a.length]).digest() == a.digest
            assert by_seq[a.seq].seq == a.seq


def test_group_commit_flush_delay(tmp_path: Path) -> None:
    """Records nobody waits for are synced by the flusher once the flush delay has passed; a waiter syncs at
    once and never waits for the delay; while callers wait for acks, the flusher syncs without delay."""
    delay = 1.0
    log = ReceiptLog.create(tmp_path / "log.cbor", KEY_A, fsync="group", checkpoint_interval_s=None,
                            flush_delay_s=delay)
    log.append(R.session_start_record("s"))
    time.sleep(0.2)  # nobody has waited for a while now

    def record(i: int) -> R.Record:
        return R.decision_record(session="s", decision_id=f"d{i}", tool="t.x", params={}, decision=_d("deny"))

    def synced_after(pending: object) -> float:
        t0 = time.monotonic()
        while not pending.done():  # type: ignore[attr-defined]
            assert time.monotonic() - t0 < 30, "the flusher never synced"
            time.sleep(0.005)
        return time.monotonic() - t0

    assert synced_after(log.submit(record(0))) >= delay * 0.9  # it waited for more records to share the sync
    t0 = time.monotonic()
    ack = log.append(record(1))
    assert ack.durable and time.monotonic() - t0 < delay * 0.8
    assert synced_after(log.submit(record(2))) < delay * 0.8  # someone waited just now: no delay
    unwaited = log.submit(record(3))
    waited = log.submit(record(4))
    assert waited.wait().durable and unwaited.done()  # one sync covered both
    log.close()
    assert verify_log(tmp_path / "log.cbor", [KEY_A.verify_key]).status is Status.COMPLETE


def test_state_machine_refuses_before_signing(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    log = ReceiptLog.create(path, KEY_A, fsync="none", checkpoint_interval_s=None)
    size = path.stat().st_size
    with pytest.raises(R.StateError, match="before its session-start"):
        log.append(R.decision_record(session="s", decision_id="d", tool="t.x", params={}, decision=_d("allow")))
    with pytest.raises(R.StateError, match="no earlier record made"):
        log.append(R.outcome_record(session="s", ref="nope", ok=True, start_ns=1, end_ns=1))
    assert path.stat().st_size == size and log.records == 1
    log.append(R.session_start_record("s"))
    log.append(R.decision_record(session="s", decision_id="d", tool="t.x", params={}, decision=_d("deny")))
    with pytest.raises(R.StateError, match="is a deny and cannot execute"):
        log.append(R.outcome_record(session="s", ref="d", ok=True, start_ns=1, end_ns=1))
    with pytest.raises(R.StateError, match="second decision record"):
        log.append(R.decision_record(session="s", decision_id="d", tool="t.x", params={}, decision=_d("deny")))
    with pytest.raises(R.StateError) as info:
        log.append_many([R.decision_record(session="s", decision_id="ok1", tool="t.x", params={},
                                           decision=_d("deny")),
                         R.approval_record(session="s", ref="ok1", approver="c", verdict="approved")])
    assert [a.seq for a in info.value.acks] == [3]
    log.close()
    assert verify_log(path, [KEY_A.verify_key]).status is Status.COMPLETE


def test_closed_log_refuses_appends_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path)
    with pytest.raises(LogClosedError, match="is closed"):
        ReceiptLog.open(path, KEY_B)
    log = ReceiptLog.create(tmp_path / "b.cbor", KEY_A, fsync="none")
    log.close()
    with pytest.raises(LogClosedError):
        log.append(R.session_start_record("s"))
    with pytest.raises(LogError, match="already exists"):
        ReceiptLog.create(path, KEY_A)


def test_one_writer_per_file(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    log = ReceiptLog.create(path, KEY_A, fsync="none", checkpoint_interval_s=None)
    with pytest.raises(LogBusyError):
        ReceiptLog.open(path, KEY_A)
    log.abandon()
    again = ReceiptLog.open(path, KEY_A, checkpoint_interval_s=None)
    again.close()


def test_write_failure_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    log = ReceiptLog.create(path, KEY_A, fsync="always", checkpoint_interval_s=None)
    os.close(log._fd)  # simulate the disk going away under the writer
    with pytest.raises(LogWriteError):
        log.append(R.session_start_record("s"))
    with pytest.raises(LogWriteError, match="refuses writes"):
        log.append(R.session_start_record("s2"))


# ----------------------------------------------------------------------------- rotation and reopening


def test_key_rotation_record(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path)
    items = _items(path.read_bytes())
    rotations = [i for i in items if isinstance(i, RecordItem) and i.receipt.kind == Kind.KEY_ROTATION]
    assert len(rotations) == 1
    rot = rotations[0]
    assert rot.kid == KEY_A.kid  # signed by the old key
    assert rot.receipt.record.rotation.public_key == KEY_B.verify_key.public_bytes
    KEY_B.verify_key.verify(R.rotation_pop_message(rot.receipt.log_id, rot.receipt.seq, KEY_A.kid,
                                                   KEY_B.verify_key.public_bytes), rot.receipt.record.rotation.proof)
    at = items.index(rot)
    assert isinstance(items[at + 1], CheckpointItem) and items[at + 1].kid == KEY_A.kid
    assert all(i.kid == KEY_B.kid for i in items[at + 2:])
    assert all(i.kid == KEY_A.kid for i in items[:at + 2])


def test_reopen_clean_stop_appends_recovery_of_length_zero(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    log = write_sample_log(path, close=False)
    log.abandon()
    size = path.stat().st_size
    assert verify_log(path, [KEY_A.verify_key]).status is Status.UNTERMINATED
    with pytest.raises(KeyMismatchError):
        ReceiptLog.open(path, KEY_A)  # the log was rotated to key B
    log = ReceiptLog.open(path, KEY_B, checkpoint_interval_s=None)
    assert log.recovery == R.Recovery(offset=size, length=0, digest=hashlib.sha256(b"").digest())
    log.append(R.session_start_record("later"))
    log.close()
    assert verify_log(path, [KEY_A.verify_key]).status is Status.COMPLETE


def test_root_is_an_anchor(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    log = write_sample_log(path, close=False)
    size, root = log.root()
    log.abandon()
    verdict = verify_log(path, [KEY_A.verify_key], anchor=f"{size}:{root.hex()}", allow_open=True)
    assert verdict.status is Status.UNTERMINATED and verdict.ok
    assert (verdict.tree_size, verdict.root) == (size, root)


def test_create_refuses_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ReceiptLog.create(tmp_path / "a", KEY_A, fsync="sometimes")
    with pytest.raises(ValueError, match="checkpoint_every"):
        ReceiptLog.create(tmp_path / "b", KEY_A, checkpoint_every=0)
    for bad in (-0.1, 1.5, True, "0"):
        with pytest.raises(ValueError, match="flush_delay_s"):
            ReceiptLog.create(tmp_path / "c", KEY_A, flush_delay_s=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    with pytest.raises(TypeError):
        ReceiptLog()


def _reopened(path: Path, data: bytes) -> bytes | str:
    """The file after `open` recovered *data* and the writer closed it, or the error `open` raised."""
    path.write_bytes(data)
    try:
        log = ReceiptLog.open(path, KEY_B, checkpoint_interval_s=None, clock=fixed_clock(T0 + 10**12))
    except LogError as exc:
        return f"{type(exc).__name__}: {exc}"
    log.close()
    return path.read_bytes()


@pytest.mark.parametrize("window", [1, 97, 700])
def test_reopening_reads_the_log_in_windows_with_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 window: int) -> None:
    # `open` reads the log RECOVERY_WINDOW_BYTES at a time: whatever the windows cut, the recovered log
    # (its recovery record's offset, length and digest included) or the refusal is the one of one window.
    source = tmp_path / "source.cbor"
    write_sample_log(source, close=False).abandon()
    data = source.read_bytes()
    spans, _ = R.split_items(data)
    s, e = spans[5]
    chain_broken = data[:s] + data[s:e].replace(b"\x66", b"\x67", 1) + data[e:]
    cases = [data, data[:-5], data[:spans[-1][0] + 3], data + bytes(40), data[:spans[-3][1]],
             data[:s] + b"\xff" + data[s + 1:], chain_broken]
    expected = [_reopened(tmp_path / f"case{i}.cbor", case) for i, case in enumerate(cases)]
    assert any(isinstance(x, bytes) for x in expected) and any(isinstance(x, str) for x in expected)
    monkeypatch.setattr(receipt_log, "RECOVERY_WINDOW_BYTES", window)
    for i, case in enumerate(cases):
        assert _reopened(tmp_path / f"case{i}.cbor", case) == expected[i], i
