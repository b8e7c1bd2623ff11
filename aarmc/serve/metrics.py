"""Counters, a gauge callback and a latency histogram in the Prometheus text format (0.0.4).

The format is a few lines of text per metric, so it is written here rather
than through a client library whose default registry is process-global (two
apps in one process, as in the tests, would share their counts).

>>> m = Metrics()
>>> m.observe_decision("allow", 0.0004)
>>> print(m.render(pending=0).splitlines()[2])
aarm_decisions_total{effect="allow"} 1
"""

from __future__ import annotations

import bisect
import threading

from aarm_runtime.decision import DECISIONS

__all__ = ["LATENCY_BUCKETS_S", "Metrics"]

# Decisions take tens of microseconds in the engine and up to milliseconds
# with a receipt fsync; the buckets span both, and a slow disk beyond them.
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_STATUSES = ("allow", "modify", "deny", "pending")


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


class Metrics:
    """Thread-safe counts for `GET /metrics`: decisions by effect and by status, latency, errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._effects = dict.fromkeys(DECISIONS, 0)
        self._statuses = dict.fromkeys(_STATUSES, 0)
        self._buckets = [0] * len(LATENCY_BUCKETS_S)
        self._count = 0
        self._sum = 0.0
        self._rejected: dict[int, int] = {}
        self._internal = 0

    def observe_decision(self, effect: str | None, seconds: float, status: str | None = None) -> None:
        """One answer to decide or redeem: the effect of the decision it made (None when a redemption
        answered with the decision it redeemed), the status the interceptor got, and how long it took."""
        with self._lock:
            if effect is not None:
                self._effects[effect] = self._effects.get(effect, 0) + 1
            if status is not None:
                self._statuses[status] = self._statuses.get(status, 0) + 1
            at = bisect.bisect_left(LATENCY_BUCKETS_S, seconds)
            if at < len(self._buckets):
                self._buckets[at] += 1
            self._count += 1
            self._sum += seconds

    def observe_rejected(self, http_status: int) -> None:
        """A request refused before it reached the guard (malformed, too large, unknown session, ...)."""
        with self._lock:
            self._rejected[http_status] = self._rejected.get(http_status, 0) + 1

    def observe_internal_error(self) -> None:
        with self._lock:
            self._internal += 1

    def render(self, *, pending: int) -> str:
        with self._lock:
            effects = dict(self._effects)
            statuses = dict(self._statuses)
            buckets = list(self._buckets)
            count, total = self._count, self._sum
            rejected = dict(self._rejected)
            internal = self._internal
        out = [
            "# HELP aarm_decisions_total Decision records written, by effect.",
            "# TYPE aarm_decisions_total counter",
        ]
        out += [f'aarm_decisions_total{{effect="{e}"}} {n}' for e, n in effects.items()]
        out += [
            "# HELP aarm_decision_status_total Decide and redeem answers by status (what the interceptor may do).",
            "# TYPE aarm_decision_status_total counter",
        ]
        out += [f'aarm_decision_status_total{{status="{s}"}} {n}' for s, n in statuses.items()]
        out += [
            "# HELP aarm_decision_latency_seconds Time to answer a decide or redeem, receipt included.",
            "# TYPE aarm_decision_latency_seconds histogram",
        ]
        running = 0
        for bound, n in zip(LATENCY_BUCKETS_S, buckets):
            running += n
            out.append(f'aarm_decision_latency_seconds_bucket{{le="{bound}"}} {running}')
        out.append(f'aarm_decision_latency_seconds_bucket{{le="+Inf"}} {count}')
        out.append(f"aarm_decision_latency_seconds_sum {_number(total)}")
        out.append(f"aarm_decision_latency_seconds_count {count}")
        out += [
            "# HELP aarm_pending_approvals Decisions waiting for a human (step-up) or for context (defer).",
            "# TYPE aarm_pending_approvals gauge",
            f"aarm_pending_approvals {pending}",
            "# HELP aarm_http_rejected_total Requests refused before a decision, by HTTP status.",
            "# TYPE aarm_http_rejected_total counter",
        ]
        out += [f'aarm_http_rejected_total{{code="{c}"}} {n}' for c, n in sorted(rejected.items())]
        out += [
            "# HELP aarm_internal_errors_total Internal errors; each one was answered as a DENY or an error.",
            "# TYPE aarm_internal_errors_total counter",
            f"aarm_internal_errors_total {internal}",
        ]
        return "\n".join(out) + "\n"
