"""The decision record (LANGUAGE.md §5): the same shape from the reference
interpreter, the compiled engine and every interceptor."""

from __future__ import annotations

import dataclasses
from typing import Any

ALLOW, DENY, MODIFY, STEP_UP, DEFER = "allow", "deny", "modify", "step_up", "defer"
DECISIONS = (ALLOW, DENY, MODIFY, STEP_UP, DEFER)
REASONS = ("forbidden", "rule", "default", "unknown-tool", "invalid-params", "conflict",
           "absent-context", "evaluation-error")


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What was decided and why.

    `rules`: every rule true at P* in source order (for `conflict` the
    conflicting rules, for `absent-context` the unknown rules that matter, `()`
    for default / unknown-tool / invalid-params). `params`: the full validated
    params (JSON-able) for MODIFY, else None. `approvers` / `timeout_s`: for
    STEP_UP and DEFER. `tool`: the tool decided (a meta-tool resolved to the
    real one); `wrapper`: the meta-tool's name when one was resolved.

    >>> Decision(decision="deny", rules=(), reason="unknown-tool", message="unknown tool `x.y`").to_json()["decision"]
    'deny'
    """

    decision: str
    rules: tuple[str, ...]
    reason: str
    message: str
    fields: tuple[str, ...] = ()
    params: Any = None
    approvers: tuple[str, ...] = ()
    timeout_s: int | None = None
    tool: str | None = None
    wrapper: str | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "decision": self.decision,
            "rules": list(self.rules),
            "reason": self.reason,
            "message": self.message,
        }
        if self.fields:
            out["fields"] = list(self.fields)
        if self.decision == MODIFY:
            out["params"] = self.params
        if self.decision in (STEP_UP, DEFER):
            out["approvers"] = list(self.approvers)
            out["timeout_s"] = self.timeout_s
        if self.tool is not None:
            out["tool"] = self.tool
        if self.wrapper is not None:
            out["wrapper"] = self.wrapper
        return out
