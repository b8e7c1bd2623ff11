"""Shared sessions: decisions per second with each session store, Redis on loopback among them.

    python benchmarks/bench_store.py [--out FILE] [--budget S] [--quick] [--dir DIR]

Workload: the mail-assistant spec compiled and signed once; an identified
session (CWT re-verified per decision); `calendar.list_events` decided ALLOW
by `calendar-read` — a tool with no window rule, so every decision is the
same whatever the rate. Each decision is `Guard.submit` returning: decided,
receipt signed and written, and (with a store) the session synced from the
store under its lease and the decision's events committed to it. The
receipt log's fsync mode is ``none`` in the per-store rows so that they
differ only by the store (unsafe, stated beside every figure); one more row
uses ``group`` with the Redis store, acknowledged, as a deployment would.

Rows:

* one thread, one session, per store: no store (the session in the guard's
  memory), `MemorySessionStore`, `SqliteSessionStore` (a file in --dir),
  `RedisSessionStore` (a redis-server this script starts on a free loopback
  port; the row says so when there is none);
* two replica processes, each its own guard and receipt log, deciding in
  ONE shared session at once (every decision waits for the session's lease:
  the contention case), and in two sessions of their own (no contention),
  on Redis: aggregate decisions/s.

Writes JSON (with a ``markdown`` section) to ``--out`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aarm_runtime.guard import Guard  # noqa: E402
from aarm_runtime.identity import Identity, issue_identity  # noqa: E402
from aarm_runtime.receipt_log import ReceiptLog  # noqa: E402
from aarm_runtime.session_store import MemorySessionStore  # noqa: E402
from timing_tools import IDP, RECEIPT_KEY, guard_over  # noqa: E402
from timing_tools import compile_spec as _compile  # noqa: E402
from timing_tools import pct as _pct  # noqa: E402

ACTION = ("calendar.list_events", {"day": "2026-11-27"})


def compile_spec() -> bytes:
    return _compile("mail-assistant", validate=False)


def _stats(samples: list[int]) -> dict:
    # Decisions/s from the decisions' own time (the outcomes between them are not timed).
    return {"n": len(samples), "p50_us": _pct(samples, 0.5), "p99_us": _pct(samples, 0.99),
            "mean_us": statistics.fmean(samples) / 1000.0, "per_s": len(samples) / (sum(samples) / 1e9)}


def make_store(kind: str, directory: Path, redis_url: str | None, prefix: str):
    if kind == "none":
        return None
    if kind == "memory":
        return MemorySessionStore()
    if kind == "sqlite":
        from aarm_runtime.session_sqlite import SqliteSessionStore

        return SqliteSessionStore(directory / "sessions.db")
    from aarm_runtime.session_redis import RedisSessionStore

    return RedisSessionStore(redis_url, prefix=prefix)


def make_guard(artifact: bytes, directory: Path, store, fsync: str) -> Guard:
    log = ReceiptLog.create(Path(tempfile.mkdtemp(dir=directory)) / "receipts.cbor", RECEIPT_KEY, fsync=fsync,
                            checkpoint_interval_s=None)
    return guard_over(artifact, log, session_store=store)


def _token(principal: str) -> bytes:
    return issue_identity(Identity(issuer="idp.corp", principal=principal, agent="mail-bot"), IDP, ttl_s=10**9,
                          now=time.time())


def bench_one(artifact: bytes, directory: Path, kind: str, fsync: str, budget: float, redis_url: str | None,
              prefix: str) -> dict:
    store = make_store(kind, directory, redis_url, prefix)
    g = make_guard(artifact, directory, store, fsync)
    s = g.open_session(_token("alice"), session_id=f"bench-{kind}-{fsync}-{time.time_ns()}")
    for _ in range(50):
        g.record_outcome(s, g.submit(s, *ACTION).decision_id, ok=True, output="3 events")
    samples: list[int] = []
    gc.collect()
    gc.disable()
    try:
        t_start = time.perf_counter()
        end = t_start + budget
        while time.perf_counter() < end or len(samples) < 100:
            t0 = time.perf_counter_ns()
            sub = g.submit(s, *ACTION)
            samples.append(time.perf_counter_ns() - t0)
            assert sub.status == "allow", sub.decision
            # Outside the timing, as the tool's run would be: its outcome (another locked step with a store).
            t_out = time.perf_counter()
            g.record_outcome(s, sub.decision_id, ok=True, output="3 events")
            end += time.perf_counter() - t_out
        elapsed = time.perf_counter() - t_start
    finally:
        gc.enable()
    g.close()
    g.receipts.close()
    if store is not None:
        store.close()
    return {"store": kind, "fsync": fsync, **_stats(samples)}


def _replica(args: tuple) -> dict:
    artifact, directory, redis_url, prefix, session_id, opener, budget, start_at = args
    store = make_store("redis", Path(directory), redis_url, prefix)
    g = make_guard(artifact, Path(directory), store, "none")
    if opener:
        s = g.open_session(_token("alice"), session_id=session_id)
    else:
        while True:
            try:
                s = g.session(session_id)
                break
            except Exception:  # noqa: BLE001 - the opener is not there yet
                time.sleep(0.01)
    while time.time() < start_at:
        time.sleep(0.001)
    samples = []
    t_start = time.perf_counter()
    end = t_start + budget
    while time.perf_counter() < end:
        t0 = time.perf_counter_ns()
        sub = g.submit(s, *ACTION)
        samples.append(time.perf_counter_ns() - t0)
        assert sub.status == "allow", sub.decision
        g.record_outcome(s, sub.decision_id, ok=True, output="3 events")
    elapsed = time.perf_counter() - t_start
    g.detach_session(s)
    g.receipts.close()
    store.close()
    return {"n": len(samples), "elapsed": elapsed, "samples": samples}


def bench_replicas(artifact: bytes, directory: Path, redis_url: str, prefix: str, budget: float, shared: bool) -> dict:
    stamp = time.time_ns()
    ids = [f"bench-shared-{stamp}"] * 2 if shared else [f"bench-own-{stamp}-{i}" for i in range(2)]
    start_at = time.time() + 3.0
    jobs = [(artifact, str(directory), redis_url, prefix, ids[i], i == 0 or not shared, budget, start_at)
            for i in range(2)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        got = pool.map(_replica, jobs)
    total = sum(r["n"] for r in got)
    elapsed = max(r["elapsed"] for r in got)
    flat = [x for r in got for x in r["samples"]]
    return {"shared": shared, "replicas": 2, "per_s": total / elapsed, "n": total, "p50_us": _pct(flat, 0.5),
            "p99_us": _pct(flat, 0.99)}


def start_redis(directory: Path) -> tuple[subprocess.Popen | None, str | None, str]:
    url = os.environ.get("AARM_TEST_REDIS_URL")
    if url:
        return None, url, "the redis-server of `AARM_TEST_REDIS_URL`"
    server = shutil.which("redis-server")
    if server is None:
        return None, None, "no redis-server on PATH"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    version = subprocess.run([server, "--version"], capture_output=True, text=True, check=False).stdout.split()
    return proc, f"redis://127.0.0.1:{port}/0", "redis-server " + next(
        (w[2:] for w in version if w.startswith("v=")), "?") + " started by this benchmark on loopback"


def markdown(out: dict) -> str:
    lines = [
        "## shared sessions: decisions/s per session store",
        "",
        f"Workload: mail-assistant spec, identified session, `{ACTION[0]}` decided ALLOW; `Guard.submit` returning "
        f"(decided, receipt signed and written; with a store: synced under the session's lease and committed). "
        f"Redis: {out['redis']}. SQLite file in `{out['dir']}`. Budget {out['budget_s']:g} s per row; Python "
        f"{out['python']}; load average at start {out['load']}.",
        "",
        "| store | receipt fsync | decisions/s | p50 µs | p99 µs | samples |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in out["rows"]:
        if "error" in r:
            lines.append(f"| {r['store']} | {r['fsync']} | not measured: {r['error']} | | | |")
            continue
        fsync = r["fsync"] + (" (unsafe: never synced)" if r["fsync"] == "none" else " (acknowledged)")
        lines.append(f"| {r['store']} | {fsync} | {r['per_s']:,.0f} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
                     f"{r['n']:,} |")
    if out.get("replicas"):
        lines += ["", "Two replica processes at once on Redis (receipt fsync `none`, unsafe), each its own guard and "
                      "receipt log:", "", "| sessions | decisions/s (both) | p50 µs | p99 µs | samples |",
                  "|---|---:|---:|---:|---:|"]
        for r in out["replicas"]:
            what = "one shared session (lease contention)" if r["shared"] else "a session each"
            lines.append(f"| {what} | {r['per_s']:,.0f} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['n']:,} |")
    lines += ["", "Notes: a store adds its round trips to every decision — Redis two (acquire + read in one Lua "
                  "script, commit + release in another), SQLite two transactions on one file. One shared session "
                  "serialises its replicas on the session's lease by design (that is what makes them decide as "
                  "one process); replicas scale over different sessions. A shared 2-vCPU VM: compare rows within "
                  "one run."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "bench_store.json"))
    ap.add_argument("--budget", type=float, default=4.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", default=tempfile.gettempdir())
    a = ap.parse_args()
    budget = 0.5 if a.quick else a.budget
    directory = Path(tempfile.mkdtemp(dir=a.dir, prefix="aarmc-bench-store-"))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    artifact = compile_spec()
    proc, redis_url, redis_note = start_redis(directory)
    prefix = f"aarm-bench-{os.getpid()}:"
    rows = []
    try:
        for kind in ("none", "memory", "sqlite", "redis"):
            if kind == "redis" and redis_url is None:
                rows.append({"store": kind, "fsync": "none", "error": redis_note})
                continue
            try:
                rows.append(bench_one(artifact, directory, kind, "none", budget, redis_url, prefix))
            except ImportError as err:
                rows.append({"store": kind, "fsync": "none", "error": str(err)})
        if redis_url is not None:
            rows.append(bench_one(artifact, directory, "redis", "group", budget, redis_url, prefix))
            replicas = [bench_replicas(artifact, directory, redis_url, prefix, budget, shared)
                        for shared in (True, False)]
        else:
            replicas = []
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    out = {"rows": rows, "replicas": replicas, "redis": redis_note, "dir": a.dir, "budget_s": budget, "load": load,
           "python": sys.version.split()[0]}
    out["markdown"] = markdown(out)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(out["markdown"])


if __name__ == "__main__":
    main()
