"""Tampering with a closed log is always detected: every single-byte change, every deletion, every reordering.

"Detected" means any verdict other than COMPLETE (RECEIPTS.md). The log is
the sample log of `test_receipt_log` (about 40 records of every kind, a key
rotation, six checkpoints). Mutations are checked on two worker processes;
each test prints how many it tried (``pytest -s`` shows the counts).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from aarm_runtime import receipts as R
from aarm_runtime.verify import Status, verify_log

from test_receipt_log import KEY_A, write_sample_log

TRUST = [KEY_A.verify_key]
WORKERS = min(2, os.cpu_count() or 1)


def _flip_range(data: bytes, lo: int, hi: int, masks: tuple[int, ...]) -> list[tuple[int, int, str]]:
    out = []
    buf = bytearray(data)
    for i in range(lo, hi):
        original = buf[i]
        for mask in masks:
            buf[i] = original ^ mask
            out.append((i, mask, verify_log(bytes(buf), TRUST, workers=1).status.value))
        buf[i] = original
    return out


def _statuses(blobs: list[bytes]) -> list[str]:
    return [verify_log(b, TRUST, workers=1).status.value for b in blobs]


def _pool() -> concurrent.futures.ProcessPoolExecutor:
    # The test process has no threads of its own, so fork is safe and cheap here.
    return concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork"))


def _flip_all(data: bytes, masks: tuple[int, ...]) -> list[tuple[int, int, str]]:
    step = max(1, len(data) // (8 * WORKERS))
    with _pool() as pool:
        parts = pool.map(_flip_range, [data] * len(range(0, len(data), step)),
                         range(0, len(data), step), [min(len(data), lo + step) for lo in range(0, len(data), step)],
                         [masks] * len(range(0, len(data), step)))
        return [r for part in parts for r in part]


def _check_all(blobs: list[bytes]) -> list[str]:
    with _pool() as pool:
        step = max(1, len(blobs) // (4 * WORKERS))
        parts = pool.map(_statuses, [blobs[i:i + step] for i in range(0, len(blobs), step)])
        return [s for part in parts for s in part]


@pytest.fixture(scope="module")
def closed_log(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("tamper") / "log.cbor"
    write_sample_log(path)
    data = path.read_bytes()
    assert verify_log(data, TRUST).status is Status.COMPLETE
    return data


def _items(data: bytes) -> list[bytes]:
    spans, tail = R.split_items(data)
    assert tail is None
    return [data[s:e] for s, e in spans]


def _is_record(item: bytes) -> bool:
    return isinstance(R.parse_item(item), R.RecordItem)


def test_every_single_byte_flip_is_detected(closed_log: bytes) -> None:
    results = _flip_all(closed_log, (0xFF,))
    assert len(results) == len(closed_log)
    missed = [(i, m) for i, m, s in results if s == Status.COMPLETE.value]
    counts = Counter(s for _, _, s in results)
    print(f"\nsingle-byte flips (xor 0xff): {len(results)} tried over a {len(closed_log)}-byte log; {dict(counts)}")
    assert not missed, f"undetected flips at {missed[:10]}"


def test_every_deletion_is_detected(closed_log: bytes) -> None:
    items = _items(closed_log)
    blobs = [b"".join(items[:k] + items[k + 1:]) for k in range(len(items))]
    statuses = _check_all(blobs)
    records = sum(_is_record(i) for i in items)
    print(f"\ndeletions: {len(blobs)} tried ({records} records, {len(items) - records} checkpoints); "
          f"{dict(Counter(statuses))}")
    for k, s in enumerate(statuses):
        assert s != Status.COMPLETE.value, f"deleting item {k} went unnoticed"


def test_every_adjacent_swap_and_random_permutations_are_detected(closed_log: bytes) -> None:
    items = _items(closed_log)
    blobs = []
    for k in range(len(items) - 1):
        swapped = list(items)
        swapped[k], swapped[k + 1] = swapped[k + 1], swapped[k]
        blobs.append(b"".join(swapped))
    adjacent = len(blobs)
    rng = random.Random(20260101)
    for _ in range(100):
        perm = list(items)
        while perm == items:
            rng.shuffle(perm)
        blobs.append(b"".join(perm))
    for _ in range(100):
        perm = list(items)
        a, b = sorted(rng.sample(range(len(items)), 2))
        perm[a], perm[b] = perm[b], perm[a]
        blobs.append(b"".join(perm))
    # Duplicating any item (a replayed record or checkpoint) is also an alteration.
    duplicates = [b"".join(items[:k + 1] + items[k:]) for k in range(len(items))]
    blobs += duplicates
    statuses = _check_all(blobs)
    print(f"\nreorderings: {adjacent} adjacent swaps, 100 random permutations, 100 random swaps, "
          f"{len(duplicates)} duplications; {dict(Counter(statuses))}")
    for k, s in enumerate(statuses):
        assert s != Status.COMPLETE.value, f"mutation {k} went unnoticed"


def test_cutting_a_closed_log_is_detected(closed_log: bytes) -> None:
    items = _items(closed_log)
    blobs = [b"".join(items[:k]) for k in range(len(items))]
    statuses = _check_all(blobs)
    assert all(s != Status.COMPLETE.value for s in statuses)


@pytest.mark.slow
def test_larger_sweep(tmp_path: Path) -> None:
    """Two more masks per byte (low bit, high bit) over a longer log, and a cut at every byte."""
    path = tmp_path / "log.cbor"
    write_sample_log(path, extra_allows=40, checkpoint_every=16)
    data = path.read_bytes()
    results = _flip_all(data, (0x01, 0x80))
    print(f"\nslow sweep: {len(results)} flips over a {len(data)}-byte log; {dict(Counter(s for *_, s in results))}")
    assert all(s != Status.COMPLETE.value for *_, s in results)
    cuts = _check_all([data[:n] for n in range(len(data))])
    assert all(s != Status.COMPLETE.value for s in cuts)
