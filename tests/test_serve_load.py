"""A bounded concurrent load on `aarmc serve` over loopback: 4 client threads × 500 requests.

It asserts correctness only — every answer well-formed and as the policy says, the receipt log verifies,
and its counts match what the clients saw — and prints throughput and latency for the record.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from aarm_runtime import values
from aarm_runtime.receipts import Kind
from aarm_runtime.verify import Status, read_verified
from test_serve import INTENT, Keys, Server, _samples, conforms

THREADS = 4
REQUESTS = 500  # per thread

# One round of five requests, as an interceptor issues them; `expect` is the status the policy gives.
ROUND = (
    ("decide", "mail.read", {}, "allow"),
    ("outcome", None, None, None),
    ("decide", "pay.transfer", {"payee": "acme", "amount": Decimal("750.25")}, "modify"),
    ("decide", "mail.send", {"to": "eve@elsewhere.example", "subject": "s", "body": "b"}, "deny"),
    ("decide", "pay.transfer", {"payee": "acme", "amount": 120}, "allow"),
)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("load-keys"))


def _client_run(base: str, token: str, out: dict, errors: list) -> None:
    latencies: list[float] = []
    statuses: Counter = Counter()
    outcomes = 0
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            opened = client.post("/v1/sessions", json={"identity_token": token, "intent": INTENT})
            assert opened.status_code == 201, opened.text
            sid = opened.json()["session_id"]
            last_allowed = None
            for i in range(REQUESTS):
                kind, tool, params, expect = ROUND[i % len(ROUND)]
                started = time.perf_counter()
                if kind == "decide":
                    body = {"tool": tool, "params": params}
                    r = client.post(f"/v1/sessions/{sid}/decide", content=values.canonical_json(body).encode(),
                                    headers={"content-type": "application/json"})
                    latencies.append(time.perf_counter() - started)
                    assert r.status_code == 200, r.text
                    got = conforms("Submission", r.json())
                    assert got["status"] == expect, (tool, got)
                    statuses[got["status"]] += 1
                    if tool == "mail.read":
                        last_allowed = got["decision_id"]
                    if expect == "modify":
                        assert Decimal(str(got["params"]["amount"])) == Decimal("500.5")
                else:
                    r = client.post(f"/v1/sessions/{sid}/outcome", json={
                        "decision_id": last_allowed, "ok": True, "output": f"inbox page {i}"})
                    assert r.status_code == 200, r.text
                    assert conforms("Recorded", r.json())["recorded"] is True
                    outcomes += 1
            closed = client.delete(f"/v1/sessions/{sid}")
            assert closed.status_code == 200, closed.text
    except BaseException as err:  # noqa: BLE001 - reported by the test thread
        errors.append(err)
    out.update(latencies=latencies, statuses=statuses, outcomes=outcomes)


def test_concurrent_load_on_loopback(key_files: Keys, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log = tmp_path / "load.log"
    server = Server(key_files, log, "--close-receipts-on-exit")
    results = [dict() for _ in range(THREADS)]
    errors: list = []
    try:
        tokens = [key_files.token(principal=f"user{i}") for i in range(THREADS)]
        threads = [threading.Thread(target=_client_run, args=(server.url, tokens[i], results[i], errors))
                   for i in range(THREADS)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        wall = time.perf_counter() - started
        assert not any(t.is_alive() for t in threads), "a client thread did not finish"
        assert not errors, errors[0]
        with httpx.Client(base_url=server.url, timeout=10) as client:
            metrics = _samples(client.get("/metrics").text)
            health = client.get("/healthz").json()
    finally:
        code = server.stop()
    assert code == 0, "".join(server.lines)

    statuses = sum((r["statuses"] for r in results), Counter())
    latencies = sorted(x for r in results for x in r["latencies"])
    outcomes = sum(r["outcomes"] for r in results)
    decided = sum(statuses.values())
    assert decided + outcomes == THREADS * REQUESTS
    per_round = Counter(expect for kind, _, _, expect in ROUND if kind == "decide")
    rounds = REQUESTS // len(ROUND)
    assert statuses == Counter({s: n * rounds * THREADS for s, n in per_round.items()})

    # The server counted what the clients saw.
    assert health["status"] == "ok"
    assert metrics["aarm_decision_latency_seconds_count"] == decided
    assert metrics['aarm_decisions_total{effect="allow"}'] == statuses["allow"]
    assert metrics['aarm_decisions_total{effect="modify"}'] == statuses["modify"]
    assert metrics['aarm_decisions_total{effect="deny"}'] == statuses["deny"]
    assert metrics["aarm_internal_errors_total"] == 0

    # And so did the receipt log, which verifies end to end.
    got = read_verified(log, [key_files.receipts.verify_key])
    assert got.verdict.status is Status.COMPLETE, got.verdict.describe()
    kinds = Counter(r.record.kind for r in got.receipts)
    assert kinds[Kind.DECISION] == decided
    assert kinds[Kind.OUTCOME] == outcomes
    assert kinds[Kind.SESSION_START] == kinds[Kind.SESSION_END] == THREADS
    effects = Counter(r.record.decision.effect for r in got.receipts if r.record.kind == Kind.DECISION)
    assert effects == Counter({"allow": statuses["allow"], "modify": statuses["modify"], "deny": statuses["deny"]})
    principals = {r.record.identity.principal for r in got.receipts if r.record.kind == Kind.DECISION}
    assert principals == {f"user{i}" for i in range(THREADS)}

    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    with capsys.disabled():
        print(f"\n[serve load] {THREADS} threads x {REQUESTS} requests over loopback (fsync=group): "
              f"{decided} decisions + {outcomes} outcomes in {wall:.2f} s = {decided / wall:.0f} decisions/s, "
              f"{(decided + outcomes) / wall:.0f} requests/s; decide latency p50 {p50 * 1000:.2f} ms, "
              f"p99 {p99 * 1000:.2f} ms; {got.verdict.records} receipts verified")
