"""What the benchmark modules share: percentiles, the sample summary, the timed loop, the file system name,
and the guards they measure (fixed keys, a spec compiled, a guard over it with an identity verifier).

Not a benchmark itself (`run.py` runs only `bench_*.py`); each module imports it as a sibling.
"""

from __future__ import annotations

import gc
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aarm_runtime import keys

REPO = Path(__file__).resolve().parent.parent
# Fixed seeds: the policy author, the receipt signer, the identity provider (`idp.corp`).
AUTHOR = keys.SigningKey.from_seed(bytes(range(32)))
RECEIPT_KEY = keys.SigningKey.from_seed(bytes(range(1, 33)))
IDP = keys.SigningKey.from_seed(bytes(range(2, 34)))


def compile_spec(name: str, *, validate: bool = True) -> bytes:
    """The artifact of `specs/<name>`, signed by `AUTHOR` (*validate*: with the translation proof, Z3)."""
    from aarmc.compile.artifact import compile_policy
    from aarmc.semantics.load import load_policy

    return compile_policy(load_policy([REPO / "specs" / name]).policy, AUTHOR, validate=validate).data


def guard_over(artifact: bytes, log: Any, **options: Any) -> Any:
    """A `Guard` over *artifact* (checked against `AUTHOR`) writing to *log*, trusting `IDP` for identities;
    sessions without TTL or action cap unless *options* say otherwise."""
    from aarm_runtime.engine import Engine
    from aarm_runtime.guard import Guard
    from aarm_runtime.identity import IdentityVerifier, RevocationList

    options = {"session_ttl_s": None, "max_actions_per_session": 10**9, **options}
    verifier = IdentityVerifier({"idp.corp": IDP.verify_key}, RevocationList())
    return Guard(Engine.load(artifact, [AUTHOR.verify_key]).prepare(), receipts=log, identity_verifier=verifier,
                 **options)


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
