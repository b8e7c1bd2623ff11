"""Run every benchmark module and write `benchmarks/RESULTS.md` — the single entry point.

    python3 benchmarks/run.py [--budget SECONDS] [--quick] [--no-setup]

Benchmarks run in a virtual environment outside the repository (default:
`aarmc-bench-venv` in the system temp directory, or `AARMC_BENCH_VENV`),
which gets this checkout (`./runtime` and `.`, editable) and the peer
engines' pins from the shared peer harness's `requirements.txt`
(`AARMC_PEERS_DIR`, default `../shared/bench/peers` beside the repository),
installed one at a time as that harness does, so a peer that fails to
install is reported and the rest still run.

Every `benchmarks/bench_*.py` module is run in that environment. A module
whose ``--help`` lists ``--out`` and ``--budget`` is run as ``python
bench_X.py --out DIR/bench_X.json --budget S [--quick]`` and writes JSON with
a ``markdown`` section; any other module is run without arguments and its
standard output is taken as its markdown. This script then writes
`RESULTS.md`: the date, the machine, the versions, the command, and each
module's section. The peers are measured in the same run as aarmc.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_PEERS = REPO.parent / "shared" / "bench" / "peers"
COMMAND = "python3 benchmarks/run.py"


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def peers_dir() -> Path:
    return Path(os.environ.get("AARMC_PEERS_DIR", DEFAULT_PEERS)).resolve()


def venv_dir() -> Path:
    return Path(os.environ.get("AARMC_BENCH_VENV", Path(tempfile.gettempdir()) / "aarmc-bench-venv"))


def _installed(py: Path, name: str) -> str | None:
    out = subprocess.run([str(py), "-c", "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))", name],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def setup(venv: Path) -> tuple[Path, list[str]]:
    """Create the benchmark venv if needed and install the checkout and the peers' pins; return (python, warnings)."""
    py = venv / "bin" / "python"
    warnings: list[str] = []
    if not py.exists():
        log(f"creating the benchmark venv at {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=False)
    requirements = peers_dir() / "requirements.txt"
    if requirements.exists():
        for line in requirements.read_text().splitlines():
            req = line.split("#", 1)[0].strip()
            if not req:
                continue
            name, _, want = req.partition("==")
            if _installed(py, name) != want:
                done = subprocess.run([str(py), "-m", "pip", "install", "-q", req], check=False)
                if done.returncode != 0:
                    warnings.append(f"could not install `{req}`; its engine is listed as unavailable")
    else:
        warnings.append(f"no peer harness at `{peers_dir()}`: peers are not measured")
    if any(_installed(py, name) is None for name in ("aarmc", "aarm-runtime", "redis", "opentelemetry-sdk")):
        # The runtime's redis and otel extras: bench_store.py measures the Redis session store, and the
        # telemetry overhead is measured with the OpenTelemetry SDK.
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-e", f"{REPO / 'runtime'}[redis,otel]", "-e",
                        str(REPO)], check=True)
    return py, warnings


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "memory": memory, "kernel": platform.release(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def versions(py: Path) -> dict[str, str]:
    out = {"python": subprocess.run([str(py), "-c", "import platform; print(platform.python_version(), "
                                     "platform.python_implementation())"], capture_output=True, text=True,
                                    check=False).stdout.strip()}
    for name in ("aarmc", "aarm-runtime", "cbor2", "PyNaCl", "z3-solver", "redis", "opentelemetry-sdk", "cedarpy",
                 "pycasbin", "regopy"):
        v = _installed(py, name)
        if v:
            out[name] = v
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per engine and N for each timed phase")
    ap.add_argument("--quick", action="store_true", help="a short smoke run (small budget, fewer repeats)")
    ap.add_argument("--no-setup", action="store_true", help="use the current interpreter; install nothing")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "aarmc-bench-out"),
                    help="directory for the raw JSON results (outside the repository by default)")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"))
    a = ap.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    if a.no_setup:
        py, warnings = Path(sys.executable), []
    else:
        py, warnings = setup(venv_dir())
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    env = dict(os.environ, AARMC_PEERS_DIR=str(peers_dir()))
    for module in sorted(HERE.glob("bench_*.py")):
        target = out_dir / f"{module.stem}.json"
        usage = subprocess.run([str(py), str(module), "--help"], capture_output=True, text=True, env=env,
                               check=False).stdout
        protocol = "--out" in usage and "--budget" in usage
        cmd = [str(py), str(module)]
        if protocol:
            cmd += ["--out", str(target), "--budget", str(a.budget)] + (["--quick"] if a.quick else [])
        log(f"running {module.name}")
        done = subprocess.run(cmd, env=env, check=False, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sections.append(f"## {module.stem}\n\nFAILED (exit {done.returncode}); see the log of the run.\n")
            continue
        markdown = json.loads(target.read_text())["markdown"] if protocol else done.stdout
        if not markdown.lstrip().startswith("#"):
            markdown = f"## {module.stem}\n\n{markdown}"
        sections.append(markdown.rstrip() + "\n")
    elapsed = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    m, v = machine(), versions(py)
    head = [
        "# aarmc benchmarks",
        "",
        f"- Date (UTC): {started:%Y-%m-%d %H:%M}; wall time of the run: {elapsed:.0f} s",
        f"- Machine: nproc={m['nproc']}, CPU: {m['cpu']}, memory: {m['memory']}, kernel {m['kernel']}, "
        f"load average at the end: {m['load']}",
        f"- Python {v.pop('python')}, single thread; " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- Reproduce: `{COMMAND}`" + (" (this run: `--quick`)" if a.quick else "")
        + f" — budget {a.budget:g} s per engine and N; peers from `{peers_dir()}` measured in the same run",
    ]
    head += [f"- Warning: {w}" for w in warnings]
    Path(a.results).write_text("\n".join(head) + "\n\n" + "\n".join(sections))
    log(f"wrote {a.results} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
