"""What the benchmark modules share: percentiles, the sample summary, the timed loop, the file system name.

Not a benchmark itself (`run.py` runs only `bench_*.py`); each module imports it as a sibling.
"""

from __future__ import annotations

import gc
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def pct(samples: list[int], q: float) -> float:
    """The q-quantile of nanosecond samples, in µs."""
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0


def stats(samples: list[int]) -> dict:
    return {"n": len(samples), "p50_us": pct(samples, 0.5), "p90_us": pct(samples, 0.9),
            "p99_us": pct(samples, 0.99), "mean_us": statistics.fmean(samples) / 1000.0}


def timed(fn: Callable[[int], object], budget: float, before: Callable[[int], object] | None = None,
          minimum: int = 200) -> list[int]:
    """`time.perf_counter_ns` around each `fn(i)` for *budget* seconds (at least *minimum* calls), GC off;
    `before(i)` runs untimed before each call."""
    samples: list[int] = []
    gc.collect()
    gc.disable()
    try:
        end = time.perf_counter() + budget
        i = 0
        while time.perf_counter() < end or len(samples) < minimum:
            if before is not None:
                before(i)
            t0 = time.perf_counter_ns()
            fn(i)
            samples.append(time.perf_counter_ns() - t0)
            i += 1
    finally:
        gc.enable()
    return samples


def filesystem(directory: Path) -> str:
    """The file system type of *directory* (`df -T`), or "unknown"."""
    try:
        line = subprocess.run(["df", "-T", str(directory)], capture_output=True, text=True, check=False)
        return line.stdout.splitlines()[-1].split()[1]
    except (OSError, IndexError):
        return "unknown"
