"""Benchmark of `aarmc check` (issue 3): generated policies shaped like real ones, at 100 and 1,000 rules.

Each generated policy has the mix of the specs: string equality and sets,
prefixes, suffixes, email domains, url hosts, regexes, numeric thresholds,
enums, list quantifiers, tags and labels, windowed counts, provenance (`from
untrusted`, `from user`, `from TOOL`), env and risk signals, forbids, modifies
(some capped below a forbid), step-ups, defers and asserts — about four rules
per tool plus a few rules over `effects` selectors. Goal: 3 s at 100 rules and
30 s at 1,000 rules on the 2-core machine, with the solver time of every check.

    .venv/bin/python benchmarks/bench_check.py            # 100 and 1000 rules
    .venv/bin/python benchmarks/bench_check.py --sizes 100

Prints a markdown table and writes benchmarks/out/check.json and check.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aarmc.analysis import analyze  # noqa: E402
from aarmc.semantics.load import load_policy_text  # noqa: E402

SEED = 20251126


def generate(n_rules: int, seed: int = SEED) -> str:
    rnd = random.Random(seed + n_rules)
    out = [f'policy "bench-{n_rules}" version "1"', "default deny",
           "labels public < internal < confidential < restricted", "tags pii, financial, credentials",
           "env maintenance: bool", "env region: enum(\"eu\", \"us\")",
           'const internal_domains = {"corp.example", "corp.internal", "mail.corp.example"}',
           'const trusted_hosts = {"git.corp.example", "pypi.org", "files.corp.example"}',
           "tool web.get(url: url) returns public untrusted",
           "tool mail.read(folder: str = \"INBOX\") returns confidential untrusted tagged pii",
           "tool crm.lookup(id: str) returns confidential tagged pii, financial",
           "tool vault.read(name: str) returns restricted tagged credentials"]
    n_tools = max(4, n_rules // 4)
    tools = []
    kinds = ["mail", "pay", "fs", "shell", "http", "db"]
    for i in range(n_tools):
        kind = kinds[i % len(kinds)]
        name = f"{kind}{i}.op"
        tools.append((name, kind))
        if kind == "mail":
            sig = "(to: email, cc: list[email] = [], subject: str, body: str sensitive)"
            out.append(f"tool {name}{sig} returns none effects external")
        elif kind == "pay":
            sig = "(recipient: str, amount: decimal, currency: enum(\"USD\", \"EUR\", \"GBP\"), memo: str?)"
            out.append(f"tool {name}{sig} returns none effects external, write")
        elif kind == "fs":
            out.append(f"tool {name}(path: str, recursive: bool = false) returns internal effects write")
        elif kind == "shell":
            out.append(f"tool {name}(cmd: str, timeout_s: int = 60) returns internal untrusted effects destructive")
        elif kind == "http":
            out.append(f"tool {name}(url: url, method: enum(\"GET\", \"POST\", \"DELETE\")) returns public untrusted "
                       f"effects external")
        else:
            out.append(f"tool {name}(sql: str, limit: int = 100) returns restricted")
    rules: list[str] = []
    asserts: list[str] = []
    rid = 0

    def add(text: str) -> None:
        nonlocal rid
        rules.append(text.replace("RID", f"r{rid}"))
        rid += 1

    # A handful of cross-cutting rules, as the specs have.
    add('defer "RID" effects external when risk.drift > 0.6 timeout 10m')
    add('deny "RID" priority 500 effects destructive when has risk.injection and risk.injection >= 0.8')
    add('deny "RID" effects write when "credentials" in session.tags and not env.maintenance')
    # Planted problems, one set per 100 rules (4 rules each): a conflict at one explicit
    # priority, a modify that produces what a forbid refuses, and a redundant narrower allow.
    pays = [t for t in tools if t[1] == "pay"]
    shells = [t for t in tools if t[1] == "shell"]
    for k in range(max(1, n_rules // 100)):
        pay, shell = pays[k % len(pays)][0], shells[k % len(shells)][0]
        add(f'allow "RID" priority 150 {pay} when params.amount <= 10')
        add(f'deny "RID" priority 150 {pay} when params.currency == "GBP"')
        add(f'modify "RID" {shell} when params.cmd startswith "make" set timeout_s = 100000')
        add(f'forbid "RID" {shell} when params.timeout_s > 50000')
    used: set[tuple[str, int]] = set()
    while rid < n_rules:
        name, kind = rnd.choice(tools)
        t = rnd.randint(1, 9) * 100
        # Real policies do not repeat a rule on one tool: draw the kind of rule until it is new.
        options = {"mail": 5, "pay": 5, "fs": 4, "shell": 5, "http": 4, "db": 4}[kind]
        fresh = [c for c in range(options) if (name, c) not in used]
        if not fresh:
            continue
        pick = rnd.choice(fresh)
        used.add((name, pick))
        rnd_choice = pick
        if kind == "mail":
            choice = rnd_choice
            if choice == 0:
                add(f'allow "RID" {name} when params.to.domain in internal_domains '
                    f'and all c in params.cc: c.domain in internal_domains')
            elif choice == 1:
                add(f'deny "RID" {name} when "pii" in session.tags and params.to.domain not in internal_domains')
            elif choice == 2:
                add(f'deny "RID" priority 350 {name} when params.to from untrusted and not (params.to from user)')
            elif choice == 3:
                add(f'deny "RID" priority 400 {name} when session.count({name} within 1h) >= {rnd.randint(5, 20)}')
            else:
                add(f'step_up "RID" {name} when params.to.domain endswith ".partner.example" '
                    f'approvers ["owner"] timeout 10m')
        elif kind == "pay":
            choice = rnd_choice
            if choice == 0:
                add(f'step_up "RID" {name} when params.amount > {t} approvers ["finance"] timeout 15m')
            elif choice == 1:
                add(f'allow "RID" {name} when params.amount <= {t} and params.recipient from user')
            elif choice == 2:
                add(f'forbid "RID" {name} when params.amount > 1000000')
            elif choice == 3:
                add(f'modify "RID" {name} when params.currency != "USD" set currency = "USD"')
            else:
                add(f'deny "RID" {name} when has params.memo and params.memo matches /invoice\\s+#?[0-9]+/i')
        elif kind == "fs":
            choice = rnd_choice
            if choice == 0:
                add(f'deny "RID" {name} when params.path startswith "/" and not (params.path startswith "/workspace/")')
            elif choice == 1:
                add(f'forbid "RID" {name} when params.path matches /(^|\\/)\\.\\.(\\/|$)/')
            elif choice == 2:
                add(f'allow "RID" {name} when params.path startswith "/workspace/"')
            else:
                add(f'step_up "RID" {name} when params.recursive approvers ["dev"] timeout 30m')
        elif kind == "shell":
            choice = rnd_choice
            if choice == 0:
                add(f'forbid "RID" {name} when params.cmd matches /rm\\s+-rf\\s+\\//')
            elif choice == 1:
                add(f'deny "RID" {name} when params.cmd contains "--no-verify"')
            elif choice == 2:
                add(f'modify "RID" {name} when params.timeout_s > 600 set timeout_s = 600')
            elif choice == 3:
                add(f'allow "RID" {name} when params.cmd startswith "git status" or params.cmd startswith "ls"')
            else:
                add(f'step_up "RID" {name} when params.cmd matches /(^|[;&|]\\s*)(sudo|chmod\\s+-R)/ '
                    f'approvers ["dev"] timeout 15m')
        elif kind == "http":
            choice = rnd_choice
            if choice == 0:
                add(f'allow "RID" {name} when params.url.host in trusted_hosts and params.method == "GET"')
            elif choice == 1:
                add(f'deny "RID" {name} when "credentials" in session.tags and params.url.host not in trusted_hosts')
            elif choice == 2:
                add(f'allow "RID" {name} when params.url.host endswith ".corp.example"')
            else:
                add(f'deny "RID" {name} when params.url from web.get and params.method != "GET"')
        else:
            choice = rnd_choice
            if choice == 0:
                add(f'forbid "RID" {name} when params.sql matches /drop\\s+(table|database)/i')
            elif choice == 1:
                add(f'modify "RID" {name} when params.limit > {t} set limit = {t}')
            elif choice == 2:
                add(f'allow "RID" {name} when params.limit <= {t * 10}')
            else:
                add(f'deny "RID" {name} when session.level >= restricted and params.sql contains "export"')
    for i, (name, kind) in enumerate(tools[: max(2, n_rules // 50)]):
        if kind == "pay":
            asserts.append(f'assert "a{i}": never allow {name} when params.amount > 2000000')
        elif kind == "shell":
            asserts.append(f'assert "a{i}": always deny {name} when params.cmd matches /rm\\s+-rf\\s+\\//')
        else:
            asserts.append(f'assert "a{i}": never allow, modify {name} when risk.injection >= 0.9')
    return "\n".join(out + rules + asserts) + "\n"


def run(n_rules: int, timeout_ms: int) -> dict:
    text = generate(n_rules)
    t0 = time.perf_counter()
    loaded = load_policy_text(text, name=f"bench-{n_rules}.aarm")
    load_s = time.perf_counter() - t0
    if loaded.policy is None:
        raise SystemExit("\n".join(d.message for d in loaded.diagnostics))
    t1 = time.perf_counter()
    report = analyze(loaded.policy, timeout_ms=timeout_ms)
    check_s = time.perf_counter() - t1
    kinds: dict[str, int] = {}
    for f in report.findings:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    return {
        "rules": len(loaded.policy.rules),
        "tools": len(loaded.policy.tools),
        "asserts": len(loaded.policy.asserts),
        "load_s": round(load_s, 3),
        "check_s": round(check_s, 3),
        "findings": kinds,
        "timings": [{"check": t.check, "queries": t.queries, "solver_s": t.solver_s} for t in report.timings],
    }


def markdown(results: list[dict]) -> str:
    lines = ["| rules | tools | asserts | load s | check s | goal s | findings |", "|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        goal = 3 if r["rules"] <= 100 else 30
        found = ", ".join(f"{k} {v}" for k, v in sorted(r["findings"].items()))
        lines.append(f"| {r['rules']} | {r['tools']} | {r['asserts']} | {r['load_s']} | {r['check_s']} | {goal} | {found} |")
    lines.append("")
    lines.append("Per-check solver time (s) and queries (time includes witness minimisation and replay):")
    lines.append("")
    checks = sorted({t["check"] for r in results for t in r["timings"]})
    lines.append("| check | " + " | ".join(f"{r['rules']} rules" for r in results) + " |")
    lines.append("|---|" + "---:|" * len(results))
    for c in checks:
        cells = []
        for r in results:
            t = next((x for x in r["timings"] if x["check"] == c), None)
            cells.append(f"{t['solver_s']:.3f} ({t['queries']})" if t else "–")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--timeout-ms", type=int, default=10_000)
    args = ap.parse_args()
    results = [run(n, args.timeout_ms) for n in args.sizes]
    out_dir = ROOT / "benchmarks" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "seed": SEED}
    (out_dir / "check.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    md = markdown(results)
    (out_dir / "check.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
