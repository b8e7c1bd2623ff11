"""Telemetry (AARM R8): what exporting guard events costs the decisions, measured in one run.

    python benchmarks/bench_telemetry.py [--out FILE] [--budget S] [--quick] [--dir DIR]

Workload: the policy `POLICY` below, compiled and signed at start; an
identified session (a signed CWT, re-verified at every decision);
`payments.charge` with a `sensitive` card number decided ALLOW by
`small-charge` after the `test-card` forbid was evaluated. Each decision
is followed by its outcome (`Guard.record_outcome`, outside the timing), as
a tool's run would be, so every decision gives telemetry two events.

Rows, each naming the receipt log's fsync mode (``none`` — unsafe, never
synced — wherever rows must differ only by telemetry):

* the observer call on the deciding thread, `Telemetry.__call__` on a real
  decision event: accepted, filtered out, dropped because the queue is full;
* the background work per event, measured directly on this thread (no
  contention): `sanitize`, one OCSF line (`OcsfJsonLines.export`, into a
  file in --dir), one span (`OpenTelemetryExporter.export` into an SDK
  `TracerProvider` with a `BatchSpanProcessor` whose exporter discards);
* `Guard.submit` latency with no observers, with `Telemetry([OcsfJsonLines
  (file)])` and with `Telemetry([OpenTelemetryExporter(...)])` as above:
  paced (a target rate, sleeping between decisions) and saturated (one
  thread deciding as fast as it can), fsync ``none``; and paced with fsync
  ``group`` (acknowledged, as a deployment would run).

GC stays enabled: the collections telemetry's allocations cause are part
of its cost. Writes JSON (with a ``markdown`` section) to ``--out`` and
prints the markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aarm_runtime.events import GuardEvent
from aarm_runtime.guard import Guard
from aarm_runtime.identity import Identity, issue_identity
from aarm_runtime.receipt_log import ReceiptLog
from aarm_runtime.telemetry import OCSF_VERSION, OcsfJsonLines, Telemetry, sanitize
from timing_tools import AUTHOR, IDP, RECEIPT_KEY, guard_over  # noqa: E402
from timing_tools import pct as _pct  # noqa: E402


POLICY = """\
policy "bench-telemetry" version "1"
default deny
tool payments.charge(customer: str, card: str sensitive, amount: int, memo: str = "")
forbid "test-card" payments.charge when params.card == "4000000000000002" because "test cards are refused"
allow "small-charge" payments.charge when params.amount <= 100
"""
ACTION = ("payments.charge", {"customer": "alice", "card": "4242424242424242", "amount": 42, "memo": "bench"})
PACED_RATE = 1000  # decisions/s aimed at by the paced rows
WARMUP = 200
SINKS = ("none", "ocsf", "otel")
SINK_LABEL = {
    "none": "no observers",
    "ocsf": "`Telemetry([OcsfJsonLines(file)])`",
    "otel": "`Telemetry([OpenTelemetryExporter(...)])`, spans discarded",
}


def compile_artifact() -> bytes:
    from aarmc.compile.artifact import compile_policy
    from aarmc.semantics.load import load_policy_text

    loaded = load_policy_text(POLICY, name="bench_telemetry.POLICY")
    if loaded.policy is None:
        raise SystemExit(f"the benchmark policy does not load: {loaded.diagnostics}")
    # The translation proof does not change what the runtime decides or how fast; skipping it keeps z3 out.
    return compile_policy(loaded.policy, AUTHOR, validate=False).data


def _token() -> bytes:
    return issue_identity(Identity(issuer="idp.corp", principal="alice", agent="pay-bot"), IDP, ttl_s=10**9,
                          now=time.time())


def make_guard(artifact: bytes, directory: Path, fsync: str, observers: Sequence[Any]) -> Guard:
    log = ReceiptLog.create(directory / "receipts.cbor", RECEIPT_KEY, fsync=fsync, checkpoint_interval_s=None)
    return guard_over(artifact, log, observers=observers)


# ---- exporters the benchmark needs ----------------------------------------------------------------


class _NoOp:
    """An exporter that does nothing: the observer-call rows time the call, not the export."""

    def export(self, events: Sequence[GuardEvent]) -> None:
        pass


class _Blocked:
    """An exporter that blocks until released: the worker holds one batch and the queue fills."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, events: Sequence[GuardEvent]) -> None:
        self.entered.set()
        self.release.wait()


def _discarding_provider() -> tuple[Any, Any]:
    """An SDK provider with the SDK's batch processor (defaults, as `otlp_tracer_provider` uses) whose
    exporter counts spans and discards them; ImportError without the `otel` extra."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: Sequence[Any]) -> Any:
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    sink = Discard()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(sink))
    return provider, sink


# ---- statistics -----------------------------------------------------------------------------------


# ---- the real events --------------------------------------------------------------------------------


def capture_events(artifact: bytes, directory: Path) -> tuple[GuardEvent, GuardEvent]:
    """The decision event and the outcome event the guard emits for the workload's action."""
    seen: list[GuardEvent] = []
    d = Path(tempfile.mkdtemp(dir=directory))
    g = make_guard(artifact, d, "none", [seen.append])
    s = g.open_session(_token(), session_id="bench-capture")
    sub = g.submit(s, *ACTION)
    assert sub.status == "allow", sub.decision
    g.record_outcome(s, sub.decision_id, ok=True, output="charged")
    g.close()
    g.receipts.close()
    shutil.rmtree(d, ignore_errors=True)
    decision = next(e for e in seen if e.kind == "decision")
    outcome = next(e for e in seen if e.kind == "outcome")
    assert decision.sensitive == ("card",), decision.sensitive
    return decision, outcome


# ---- the observer call on the deciding thread ------------------------------------------------------


def _calls(fn: Callable[[], Any], seconds: float, repeats: int) -> tuple[list[float], int]:
    """ns per call of *fn*, one figure per repeat (each about seconds/repeats long), and the calls per repeat."""
    inner = 1000
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        dt = time.perf_counter_ns() - t0
        if dt > 20_000_000:
            break
        inner *= 4
    inner = max(1000, int(seconds / repeats * 1e9 / (dt / inner)))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter_ns() - t0) / inner)
    return out, inner


def bench_observer_call(event: GuardEvent, budget: float, repeats: int) -> list[dict]:
    rows = []

    # Accepted: a queue that cannot fill during the row, drained by the worker into a no-op exporter.
    t = Telemetry([_NoOp()], queue_size=10**9)
    per, inner = _calls(lambda: t(event), budget, repeats)
    stats = t.stats()
    t.close()
    assert stats["dropped"] == 0 and stats["filtered"] == 0, stats
    rows.append({"case": "accepted", "telemetry": "`Telemetry([no-op exporter])`", "ns": per, "calls": inner})

    t = Telemetry([_NoOp()], decisions=["deny"])
    before = t.filtered
    per, inner = _calls(lambda: t(event), budget, repeats)
    filtered = t.filtered - before
    t.close()
    rows.append({"case": "filtered out", "telemetry": "`Telemetry(..., decisions=[\"deny\"])`, an ALLOW event",
                 "ns": per, "calls": inner})
    assert filtered > 0 and t.exported == 0

    blocked = _Blocked()
    t = Telemetry([blocked], queue_size=1)
    t(event)
    if not blocked.entered.wait(10):
        raise SystemExit("the telemetry worker did not take the first event")
    t(event)  # the one place in the queue is now taken: every later event is dropped
    before = t.dropped
    per, inner = _calls(lambda: t(event), budget, repeats)
    dropped = t.dropped - before
    blocked.release.set()
    t.close()
    assert dropped > 0 and t.queued == 0
    rows.append({"case": "dropped (queue full)", "telemetry": "`Telemetry([blocked exporter], queue_size=1)`",
                 "ns": per, "calls": inner})
    for r in rows:
        r.update(median_ns=statistics.median(r["ns"]), min_ns=min(r["ns"]), repeats=repeats)
    return rows


# ---- the background work per event, measured directly ----------------------------------------------


def _batches(decision: GuardEvent, outcome: GuardEvent, size: int) -> tuple[list[GuardEvent], list[GuardEvent]]:
    # Distinct decision ids, so that spans are remembered and outcomes linked as in a real session.
    decisions = [dataclasses.replace(decision, decision_id=f"{decision.decision_id}-{i}") for i in range(size)]
    outcomes = [dataclasses.replace(outcome, decision_id=f"{decision.decision_id}-{i}") for i in range(size)]
    return decisions, outcomes


def _steps(steps: Sequence[Callable[[], Any]], items: int, seconds: float, repeats: int,
           between: Callable[[], Any] | None = None) -> tuple[list[list[float]], int]:
    """ns per item of each step (steps run in turn, each timed apart), one figure per repeat; and the
    rounds of steps per repeat."""
    def once(inner: int) -> list[int]:
        spent = [0] * len(steps)
        for _ in range(inner):
            for i, step in enumerate(steps):
                t0 = time.perf_counter_ns()
                step()
                spent[i] += time.perf_counter_ns() - t0
        return spent

    inner = 4
    while True:
        t0 = time.perf_counter_ns()
        once(inner)
        dt = time.perf_counter_ns() - t0
        if between is not None:
            between()
        if dt > 20_000_000:
            break
        inner *= 4
    inner = max(4, int(seconds / repeats * 1e9 / (dt / inner)))
    out: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for i, ns in enumerate(once(inner)):
            out[i].append(ns / (inner * items))
        if between is not None:
            between()
    return out, inner


def bench_background(decision: GuardEvent, outcome: GuardEvent, directory: Path, budget: float, repeats: int,
                     batch: int) -> list[dict]:
    decisions, outcomes = _batches(decision, outcome, batch)
    rows = []

    per = _steps([lambda: [sanitize(e) for e in decisions], lambda: [sanitize(e) for e in outcomes]], batch,
                 budget, repeats)
    rows.append({"case": "`sanitize`", "per_kind": per})

    path = directory / "direct.ocsf.jsonl"
    ocsf = OcsfJsonLines(path)
    per = _steps([lambda: ocsf.export(decisions), lambda: ocsf.export(outcomes)], batch, budget, repeats,
                 between=lambda: os.truncate(path, 0))  # appended to, so truncating keeps the file small
    ocsf.close()
    path.unlink()
    rows.append({"case": f"OCSF {OCSF_VERSION} line: `OcsfJsonLines.export` (sanitize, record, JSON, write, flush)",
                 "per_kind": per})

    try:
        from aarm_runtime.otel import OpenTelemetryExporter

        provider, sink = _discarding_provider()
    except ImportError as err:
        rows.append({"case": "span: `OpenTelemetryExporter.export`", "error": f"no OpenTelemetry SDK: {err}"})
    else:
        exporter = OpenTelemetryExporter(provider, owns_provider=True)
        start = GuardEvent(kind="session-start", time_ns=decision.time_ns, session_id=decision.session_id,
                           identity=decision.identity, policy=decision.policy)
        exporter.export([start])  # the decision spans are children of the session span, as in a session
        per = _steps([lambda: exporter.export(decisions), lambda: exporter.export(outcomes)], batch, budget,
                     repeats)
        exporter.close()
        rows.append({"case": "span: `OpenTelemetryExporter.export` (sanitize, attributes, span, SDK batch queue)",
                     "per_kind": per, "spans_discarded": sink.spans})
    for r in rows:
        if "per_kind" in r:
            r["per_kind"], r["rounds"] = r["per_kind"]
            r["decision_median_ns"], r["outcome_median_ns"] = (statistics.median(k) for k in r["per_kind"])
            r["decision_min_ns"], r["outcome_min_ns"] = (min(k) for k in r["per_kind"])
            r["repeats"] = repeats
            r["batch"] = batch
    return rows


# ---- Guard.submit -----------------------------------------------------------------------------------


def bench_guard(artifact: bytes, directory: Path, sink: str, fsync: str, paced: bool, budget: float) -> dict:
    row: dict[str, Any] = {"telemetry": sink, "fsync": fsync, "mode": "paced" if paced else "saturated",
                           "target_per_s": PACED_RATE if paced else None}
    d = Path(tempfile.mkdtemp(dir=directory))
    telemetry = None
    discard = None
    ocsf_path = d / "events.ocsf.jsonl"
    try:
        if sink == "ocsf":
            telemetry = Telemetry([OcsfJsonLines(ocsf_path)])
        elif sink == "otel":
            try:
                from aarm_runtime.otel import OpenTelemetryExporter

                provider, discard = _discarding_provider()
            except ImportError as err:
                return {**row, "error": f"no OpenTelemetry SDK: {err}"}
            telemetry = Telemetry([OpenTelemetryExporter(provider, owns_provider=True)])
        g = make_guard(artifact, d, fsync, [] if telemetry is None else [telemetry])
        s = g.open_session(_token(), session_id=f"bench-{sink}-{fsync}-{row['mode']}")
        for _ in range(WARMUP):
            g.record_outcome(s, g.submit(s, *ACTION).decision_id, ok=True, output="charged")
        if telemetry is not None:
            telemetry.flush(60)
        gc.collect()
        samples: list[int] = []
        period = 1.0 / PACED_RATE
        t_start = time.perf_counter()
        end = t_start + budget
        next_at = t_start
        while time.perf_counter() < end or len(samples) < 100:
            if paced:
                wait = next_at - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            t0 = time.perf_counter_ns()
            sub = g.submit(s, *ACTION)
            samples.append(time.perf_counter_ns() - t0)
            assert sub.status == "allow", sub.decision
            g.record_outcome(s, sub.decision_id, ok=True, output="charged")
            if paced:
                # Late is late: no burst to catch up, which would turn the paced rows into saturated ones.
                next_at = max(next_at + period, time.perf_counter())
        elapsed = time.perf_counter() - t_start
        drain_ms = None
        if telemetry is not None:
            t0 = time.perf_counter()
            telemetry.flush(120)
            drain_ms = (time.perf_counter() - t0) * 1000
        g.close()
        g.receipts.close()
        row.update(n=len(samples), p50_us=_pct(samples, 0.5), p99_us=_pct(samples, 0.99),
                   mean_us=statistics.fmean(samples) / 1000, per_s=len(samples) / elapsed, drain_ms=drain_ms,
                   observer_errors=g.observer_errors)
        if telemetry is not None:
            telemetry.close()
            st = telemetry.stats()
            row.update(exported=st["exported"], dropped=st["dropped"], failed=st["failed"])
            lost = st["dropped"] + st["failed"]
            if discard is not None:
                # Every exported event is one span, except a session's start and end, which make one.
                row["spans_discarded"] = discard.spans
                row["spans_lost_in_sdk"] = max(0, st["exported"] - 1 - discard.spans)
                lost += row["spans_lost_in_sdk"]
            if sink == "ocsf":
                with ocsf_path.open("rb") as f:
                    lines = sum(1 for _ in f)
                row["ocsf_lines"] = lines
                row["ocsf_bytes_per_line"] = ocsf_path.stat().st_size / max(1, lines)
                lost += max(0, st["exported"] - lines)
            row["lost"] = lost
        return row
    finally:
        if telemetry is not None:
            telemetry.close()
        shutil.rmtree(d, ignore_errors=True)


# ---- markdown -------------------------------------------------------------------------------------


def _fsync_label(fsync: str) -> str:
    return fsync + (" (unsafe: never synced)" if fsync == "none" else " (acknowledged)")


def _delta(value: float, base: float | None) -> str:
    return "" if base is None else f" ({value - base:+,.1f})"


def markdown(out: dict) -> str:
    cfg = out["config"]
    lines = [
        "## telemetry: the overhead of exporting guard events (AARM R8)",
        "",
        f"Workload: a policy compiled at start (`payments.charge` with a `sensitive` card number), an identified "
        f"session, the action decided ALLOW by `small-charge`; each decision followed by its outcome (untimed), "
        f"so a decision event and an outcome event per decision. Telemetry as deployed: queue "
        f"{cfg['queue_size']:,} events, batches of {cfg['batch_size']}, worker interval {cfg['interval_s']:g} s; "
        f"OpenTelemetry SDK {out['otel_sdk'] or 'not installed'} with its `BatchSpanProcessor` defaults. "
        f"Budget {out['budget_s']:g} s per row, {cfg['repeats']} repeats for the per-call and per-event rows; "
        f"Python {out['python']}; {out['nproc']} CPUs; load average at start {out['load']}.",
        "",
        "| row | telemetry | receipt fsync | p50 (Δ vs no observers) or median per call/event | p99 (Δ) | "
        "decisions/s (wall) | events exported / lost | backlog drained after | samples |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    no_guard = "— (no guard, no receipt)"
    for r in out["observer_call"]:
        lines.append(f"| observer call on the deciding thread, {r['case']} | {r['telemetry']} | {no_guard} | "
                     f"{r['median_ns']:,.0f} ns/call (min {r['min_ns']:,.0f}) | | | | | "
                     f"{r['repeats']} × {r['calls']:,} calls |")
    for r in out["background"]:
        if "error" in r:
            lines.append(f"| background, per event: {r['case']} | | {no_guard} | not measured: {r['error']} "
                         f"| | | | | |")
            continue
        lines.append(f"| background, per event: {r['case']} | exporter called directly, batches of {r['batch']} | "
                     f"{no_guard} | decision {r['decision_median_ns'] / 1000:.1f} µs, outcome "
                     f"{r['outcome_median_ns'] / 1000:.1f} µs (min {r['decision_min_ns'] / 1000:.1f}, "
                     f"{r['outcome_min_ns'] / 1000:.1f}) | | | | | {r['repeats']} × {r['rounds']:,} batches of each |")
    base = {(r["mode"], r["fsync"]): r for r in out["guard"] if r["telemetry"] == "none" and "error" not in r}
    for r in out["guard"]:
        mode = (f"paced, target {r['target_per_s']:,}/s" if r["mode"] == "paced" else "saturated, a single thread")
        what = f"`Guard.submit`, {mode}"
        if "error" in r:
            lines.append(f"| {what} | {SINK_LABEL[r['telemetry']]} | {_fsync_label(r['fsync'])} | not measured: "
                         f"{r['error']} | | | | | |")
            continue
        b = base.get((r["mode"], r["fsync"])) if r["telemetry"] != "none" else None
        events = "—" if r["telemetry"] == "none" else f"{r['exported']:,} / {r['lost']:,}"
        drain = "—" if r["drain_ms"] is None else f"{r['drain_ms']:.0f} ms"
        lines.append(f"| {what} | {SINK_LABEL[r['telemetry']]} | {_fsync_label(r['fsync'])} | "
                     f"{r['p50_us']:,.1f} µs{_delta(r['p50_us'], b and b['p50_us'])} | "
                     f"{r['p99_us']:,.1f} µs{_delta(r['p99_us'], b and b['p99_us'])} | {r['per_s']:,.0f} | {events} | "
                     f"{drain} | {r['n']:,} |")
    ocsf_sizes = [r["ocsf_bytes_per_line"] for r in out["guard"] if "ocsf_bytes_per_line" in r]
    size_note = f" (about {statistics.fmean(ocsf_sizes):,.0f} bytes a line)" if ocsf_sizes else ""
    lines += [
        "",
        "What is measured: the observer call is `Telemetry.__call__` timed in a loop on one real decision event "
        "(not under the session lock); the per-event rows time the work the telemetry worker does, on this thread "
        "without contention, in the worker's batch size. `Guard.submit` latency includes the guard building the "
        "`GuardEvent` and the call; the worker runs meanwhile in the same process and shares the interpreter "
        "lock, so its export work shows up in the decisions' latency and, saturated, in decisions/s (wall time "
        "of decisions and their outcomes). \"Lost\" counts events dropped by a full queue, failed exports, spans "
        "the SDK's batch processor dropped and OCSF lines missing from the file; \"backlog drained after\" is how "
        "long `Telemetry.flush` took once the timed loop ended. The OCSF file is a real file in the benchmark's "
        f"directory{size_note}, flushed once a batch and never fsynced. What is not measured: the OTLP encoding "
        "and the network export — the spans go through the SDK's batch processor to an exporter that discards "
        "them — and anything a collector or SIEM does. Each row is one run on a shared machine: compare rows "
        "within one run.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "bench_telemetry.json"))
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per row")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where receipt logs and OCSF files are written")
    a = ap.parse_args()
    budget = 0.5 if a.quick else a.budget
    repeats = 3 if a.quick else 5
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    directory = Path(tempfile.mkdtemp(dir=a.dir, prefix="aarmc-bench-telemetry-"))
    try:
        otel_sdk = importlib.metadata.version("opentelemetry-sdk")
    except importlib.metadata.PackageNotFoundError:
        otel_sdk = None
    defaults = Telemetry([])
    config = {"queue_size": defaults.queue_size, "batch_size": defaults.batch_size,
              "interval_s": defaults.interval_s, "repeats": repeats}
    defaults.close()
    try:
        artifact = compile_artifact()
        decision, outcome = capture_events(artifact, directory)
        observer_call = bench_observer_call(decision, budget, repeats)
        background = bench_background(decision, outcome, directory, budget, repeats, config["batch_size"])
        guard_rows = []
        for fsync, paced in (("none", True), ("none", False), ("group", True)):
            for sink in SINKS:
                guard_rows.append(bench_guard(artifact, directory, sink, fsync, paced, budget))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    out = {"observer_call": observer_call, "background": background, "guard": guard_rows, "config": config,
           "budget_s": budget, "quick": a.quick, "load": load, "nproc": os.cpu_count(), "dir": a.dir,
           "python": f"{platform.python_version()} {platform.python_implementation()}", "otel_sdk": otel_sdk}
    out["markdown"] = markdown(out)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(out["markdown"])


if __name__ == "__main__":
    main()
