"""`aarmc check --emit-tests DIR`: every witness as a ready-to-run `aarmc test` case (docs/testing.md).

One file, `check-witnesses.test.yaml`, one case per finding that has a
witness. A case pins what the policy decides *now* for the witness (decision,
reason, deciding rules), so it passes today and fails when a fix changes that
decision — which is the point for a conflict, a forbidden modify or a refuted
assert, and a regression guard for the rest. Actions and sessions are written
in JSON flow syntax (valid YAML) so decimals stay exact.
"""

from __future__ import annotations

import json
from pathlib import Path

from aarmc.analysis.report import AnalysisReport
from aarmc.report import dumps
from aarmc.semantics import ir

FILE_NAME = "check-witnesses.test.yaml"


def emit_tests(report: AnalysisReport, directory: str | Path, policy: ir.Policy,
               *, policy_ref: str | None = None) -> list[Path]:
    """Write the witnesses of `report` as `aarmc test` cases; returns the files written.

    `policy_ref` is the `policy:` key (a path relative to the test file); None
    leaves it out, which means the directory that holds the test file.
    """
    from aarmc.reference import decide
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Witnesses found by `aarmc check`, replayed on the reference interpreter.",
             "# Each case pins the decision the policy makes for the witness today."]
    if policy_ref is not None:
        lines.append(f"policy: {json.dumps(policy_ref)}")
    lines.append("tests:")
    names: set[str] = set()
    count = 0
    for f in report.findings:
        if f.witness is None:
            continue
        d = decide(policy, f.witness["action"], f.witness["session"])
        base = f"{f.kind}: {f.rule}" + (f" / {', '.join(f.related)}" if f.related else "")
        name, i = base, 2
        while name in names:
            name, i = f"{base} ({i})", i + 1
        names.add(name)
        expect = {"decision": d.decision, "reason": d.reason, "rules": list(d.rules)}
        lines.append(f"  - name: {json.dumps(name)}")
        lines.append(f"    # {f.message}")
        lines.append(f"    action: {dumps(f.witness['action'], indent=None)}")
        lines.append(f"    session: {dumps(f.witness['session'], indent=None)}")
        lines.append(f"    expect: {dumps(expect, indent=None)}")
        count += 1
    if count == 0:
        return []
    path = out_dir / FILE_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [path]
