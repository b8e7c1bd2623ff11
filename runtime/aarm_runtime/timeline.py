"""Forensic reconstruction from a verified receipt log (``aarmc timeline``).

For every session, and in it every decision id, in log order: what was
proposed (tool, meta-tool wrapper, params digest, and the canonical JSON
params where the policy allowed them), what context existed (session-context
digest, requester identity), what was decided and why (effect, rules, reason,
message, policy id/version/digest, MODIFY's new params), who approved or how a
deferral ended, and what happened (outcome, output digest, duration). Log
events (open, key rotations, recoveries, close) are listed apart.

Only receipts that verified are used: `build_timeline` takes a
`verify.VerifiedLog`, and when the verdict is not ok the timeline covers the
verified prefix and says where verification stopped.

`timeline_command` is what ``aarmc timeline LOG --key PUB [--session S]
[--format human|json] [--anchor SIZE:ROOT] [--allow-open]`` runs. Exit
status: 0 when the log verifies (COMPLETE, or UNTERMINATED with
``--allow-open``); 1 when it does not (the verified prefix is still printed)
or the session is not in the log; 2 when it cannot run (unreadable log or key
file, malformed anchor, no key).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from aarm_runtime import keys
from aarm_runtime.receipts import (
    DecisionInfo,
    Identity,
    Kind,
    Outcome,
    PolicyRef,
    Receipt,
)
from aarm_runtime.verify import (
    EXIT_FAILED,
    EXIT_USAGE,
    UsageError,
    Verdict,
    VerifiedLog,
    prepare,
    read_verified,
)

__all__ = [
    "FollowUp",
    "LogEvent",
    "SessionTimeline",
    "Step",
    "Timeline",
    "build_timeline",
    "render_human",
    "timeline_command",
    "to_json",
]


@dataclasses.dataclass(frozen=True, slots=True)
class FollowUp:
    """An approval or deferral resolution of a decision: who, what verdict, when."""

    seq: int
    time_ns: int
    verdict: str
    approver: str | None
    next_decision: str | None
    note: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """One decision id: the proposal, its context, the decision and everything that followed it."""

    decision_id: str
    action_id: str | None
    seq: int
    time_ns: int
    tool: str
    wrapper: str | None
    params_digest: bytes
    params_json: str | None
    context: bytes | None
    identity: Identity | None
    policy: PolicyRef | None
    decision: DecisionInfo
    approval: FollowUp | None
    resolution: FollowUp | None
    outcome: Outcome | None
    outcome_seq: int | None
    note: str | None

    @property
    def executed(self) -> bool:
        return self.outcome is not None


@dataclasses.dataclass(frozen=True, slots=True)
class SessionTimeline:
    session: str
    identity: Identity | None
    context: bytes | None
    started_ns: int | None
    ended_ns: int | None
    end_note: str | None
    steps: tuple[Step, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class LogEvent:
    """A record about the log itself: open, key rotation, recovery, close."""

    seq: int
    time_ns: int
    kind: str
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class Timeline:
    log_id: bytes | None
    verdict: Verdict
    events: tuple[LogEvent, ...]
    sessions: tuple[SessionTimeline, ...]


def build_timeline(verified: VerifiedLog, *, session: str | None = None) -> Timeline:
    """Group the verified receipts by session and decision id (only *session* when given)."""
    steps: dict[str, dict[str, Any]] = {}
    sessions: dict[str, dict[str, Any]] = {}
    events: list[LogEvent] = []

    def sess(name: str) -> dict[str, Any]:
        return sessions.setdefault(name, {"identity": None, "context": None, "started": None, "ended": None,
                                          "note": None, "steps": []})

    for r in verified.receipts:
        rec = r.record
        kind = rec.kind
        if kind in (Kind.LOG_OPEN, Kind.KEY_ROTATION, Kind.RECOVERY, Kind.LOG_CLOSE):
            events.append(LogEvent(seq=r.seq, time_ns=r.time_ns, kind=kind.label, detail=_event_detail(r)))
            continue
        if session is not None and rec.session != session:
            continue
        s = sess(rec.session)
        if kind == Kind.SESSION_START:
            s.update(identity=rec.identity, context=rec.context, started=r.time_ns)
        elif kind == Kind.SESSION_END:
            s.update(ended=r.time_ns, note=rec.note)
        elif kind == Kind.DECISION:
            a = rec.action
            step = {"decision_id": rec.decision_id, "action_id": rec.action_id, "seq": r.seq, "time_ns": r.time_ns,
                    "tool": a.tool, "wrapper": a.wrapper, "params_digest": a.params_digest,
                    "params_json": a.params_json, "context": rec.context, "identity": rec.identity,
                    "policy": rec.policy, "decision": rec.decision, "approval": None, "resolution": None,
                    "outcome": None, "outcome_seq": None, "note": rec.note}
            steps[rec.decision_id] = step
            s["steps"].append(step)
        else:
            step = steps[rec.ref]  # the verifier's state machine guarantees the decision came first
            if kind == Kind.OUTCOME:
                step["outcome"] = rec.outcome
                step["outcome_seq"] = r.seq
            else:
                follow = FollowUp(seq=r.seq, time_ns=r.time_ns, verdict=rec.resolution.verdict,
                                  approver=rec.approver, next_decision=rec.resolution.next_decision, note=rec.note)
                step["approval" if kind == Kind.APPROVAL else "resolution"] = follow
    out = []
    for name, s in sessions.items():
        out.append(SessionTimeline(session=name, identity=s["identity"], context=s["context"],
                                   started_ns=s["started"], ended_ns=s["ended"], end_note=s["note"],
                                   steps=tuple(Step(**st) for st in s["steps"])))
    return Timeline(log_id=verified.verdict.log_id, verdict=verified.verdict, events=tuple(events),
                    sessions=tuple(out))


def _event_detail(r: Receipt) -> str:
    rec = r.record
    if rec.kind == Kind.KEY_ROTATION:
        return f"signing key rotated to {keys.kid(keys.VerifyKey(rec.rotation.public_key)).hex()}"
    if rec.kind == Kind.RECOVERY:
        v = rec.recovery
        if v.length == 0:
            return f"writer restarted at byte {v.offset} after an unclean stop"
        return f"writer recovered: {v.length} torn byte(s) removed at byte {v.offset} (sha256 {v.digest.hex()})"
    if rec.kind == Kind.LOG_CLOSE:
        # The record counts the checkpoints written before it; the one that seals it comes right after.
        return (f"log closed ({rec.close.checkpoints} checkpoint(s) before this record, then the sealing one)"
                + (f": {rec.note}" if rec.note else ""))
    return "log opened" + (f" by {rec.note}" if rec.note else "")


# ----------------------------------------------------------------------------- rendering


def format_ns(ns: int | None) -> str | None:
    """UTC ISO 8601 with nanoseconds.

    >>> format_ns(1_767_323_045_000_000_006)
    '2026-01-02T03:04:05.000000006Z'
    """
    if ns is None:
        return None
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


def _identity_json(i: Identity | None) -> dict[str, Any] | None:
    if i is None:
        return None
    out: dict[str, Any] = {k: getattr(i, k) for k in ("principal", "agent", "service", "role") if getattr(i, k)}
    if i.scopes:
        out["scopes"] = list(i.scopes)
    if i.delegation:
        out["delegation"] = list(i.delegation)
    if i.assertion_digest is not None:
        out["assertion_digest"] = i.assertion_digest.hex()
    return out


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def _follow_json(f: FollowUp | None) -> dict[str, Any] | None:
    if f is None:
        return None
    return {"seq": f.seq, "time": format_ns(f.time_ns), "verdict": f.verdict, "approver": f.approver,
            "next_decision": f.next_decision, "note": f.note}


def _step_json(s: Step) -> dict[str, Any]:
    d = s.decision
    out: dict[str, Any] = {
        "decision_id": s.decision_id, "action_id": s.action_id, "seq": s.seq, "time": format_ns(s.time_ns),
        "proposed": {"tool": s.tool, "wrapper": s.wrapper, "params_digest": s.params_digest.hex(),
                     "params": None if s.params_json is None else json.loads(s.params_json)},
        "context": {"digest": _hex(s.context), "identity": _identity_json(s.identity)},
        "decided": {"decision": d.effect, "rules": list(d.rules), "reason": d.reason, "message": d.message,
                    "policy": None if s.policy is None else {"id": s.policy.policy, "version": s.policy.version,
                                                             "digest": s.policy.digest.hex()}},
        "approval": _follow_json(s.approval),
        "resolution": _follow_json(s.resolution),
        "outcome": None,
        "executed": s.executed,
        "note": s.note,
    }
    if d.params_digest is not None:
        out["decided"]["modified_params_digest"] = d.params_digest.hex()
        out["decided"]["modified_params"] = None if d.params_json is None else json.loads(d.params_json)
    if d.approvers:
        out["decided"]["approvers"] = list(d.approvers)
    if d.timeout_s is not None:
        out["decided"]["timeout_s"] = d.timeout_s
    if s.outcome is not None:
        o = s.outcome
        out["outcome"] = {"seq": s.outcome_seq, "ok": o.ok, "start": format_ns(o.start_ns), "end": format_ns(o.end_ns),
                          "duration_ns": o.end_ns - o.start_ns, "output_digest": _hex(o.output_digest),
                          "error": o.error}
    return out


def to_json(t: Timeline) -> dict[str, Any]:
    """The timeline as JSON-able data (digests in hex, times as UTC ISO strings with ns)."""
    return {
        "log_id": _hex(t.log_id),
        "verdict": t.verdict.to_json(),
        "events": [{"seq": e.seq, "time": format_ns(e.time_ns), "kind": e.kind, "detail": e.detail}
                   for e in t.events],
        "sessions": [
            {"session": s.session, "identity": _identity_json(s.identity), "context_digest": _hex(s.context),
             "started": format_ns(s.started_ns), "ended": format_ns(s.ended_ns), "end_note": s.end_note,
             "steps": [_step_json(st) for st in s.steps]}
            for s in t.sessions
        ],
    }


def _short(b: bytes | None) -> str:
    return "-" if b is None else f"sha256:{b.hex()[:16]}…"


def _who(i: Identity | None) -> str:
    if i is None:
        return "no identity"
    parts = []
    if i.principal:
        parts.append(f"principal {i.principal}")
    if i.agent:
        parts.append(f"agent {i.agent}")
    if i.service:
        parts.append(f"service {i.service}")
    if i.role:
        parts.append(f"role {i.role}")
    if i.scopes:
        parts.append("scopes " + ",".join(i.scopes))
    if i.delegation:
        parts.append("delegated by " + " > ".join(i.delegation))
    return ", ".join(parts) or "empty identity"


def _duration(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.1f} ms"
    return f"{ns / 1_000_000_000:.2f} s"


def render_human(t: Timeline) -> str:
    """A text report: verdict, log events, then each session's decisions with what followed them."""
    v = t.verdict
    lines = [f"log {_hex(t.log_id) or '?'}: {v.status.value}" + ("" if v.ok else f" — {v.message}")]
    if not v.ok and v.index is not None:
        lines.append(f"  verification stopped at item {v.index} (record {v.record}, byte offset {v.offset}); "
                     f"only the {v.records} record(s) before it are shown")
    for e in t.events:
        lines.append(f"  {format_ns(e.time_ns)}  [{e.seq}] {e.detail}")
    for s in t.sessions:
        lines.append("")
        lines.append(f"session {s.session}: {_who(s.identity)}")
        if s.started_ns is not None:
            lines.append(f"  started {format_ns(s.started_ns)}, context {_short(s.context)}")
        for st in s.steps:
            d = st.decision
            head = f"  [{st.seq}] {format_ns(st.time_ns)}  decision {st.decision_id}"
            if st.action_id:
                head += f" (action {st.action_id})"
            lines.append(head)
            tool = st.tool + (f" via {st.wrapper}" if st.wrapper else "")
            proposed = f"      proposed  {tool}  params {_short(st.params_digest)}"
            if st.params_json is not None:
                proposed += f"  {st.params_json}"
            lines.append(proposed)
            lines.append(f"      context   {_short(st.context)}; {_who(st.identity)}")
            why = f"{d.effect.upper()}"
            why += f" by {', '.join(d.rules)}" if d.rules else ""
            why += f" ({d.reason})" if d.reason else ""
            why += f": {d.message}" if d.message else ""
            lines.append(f"      decided   {why}")
            if st.policy is not None:
                lines.append(f"      policy    {st.policy.policy} {st.policy.version} ({_short(st.policy.digest)})")
            if d.params_digest is not None:
                mod = f"      modified  params {_short(d.params_digest)}"
                if d.params_json is not None:
                    mod += f"  {d.params_json}"
                lines.append(mod)
            if d.approvers or d.timeout_s is not None:
                lines.append(f"      awaits    {', '.join(d.approvers) or 'anyone'}"
                             + (f" within {d.timeout_s} s" if d.timeout_s is not None else ""))
            for label, f in (("approval", st.approval), ("deferral", st.resolution)):
                if f is not None:
                    text = f"      {label:<9} {f.verdict}"
                    text += f" by {f.approver}" if f.approver else ""
                    text += f" at {format_ns(f.time_ns)} [{f.seq}]"
                    text += f" -> decision {f.next_decision}" if f.next_decision else ""
                    lines.append(text)
            if st.outcome is not None:
                o = st.outcome
                text = f"      outcome   {'ok' if o.ok else 'failed'} in {_duration(o.end_ns - o.start_ns)}"
                text += f", output {_short(o.output_digest)}" if o.output_digest else ""
                text += f", error: {o.error}" if o.error else ""
                lines.append(text + f" [{st.outcome_seq}]")
            elif d.effect in ("deny", "defer") or (st.approval is not None and st.approval.verdict != "approved"):
                lines.append("      outcome   not executed")
        if s.ended_ns is not None:
            lines.append(f"  ended {format_ns(s.ended_ns)}" + (f": {s.end_note}" if s.end_note else ""))
    return "\n".join(lines)


def timeline_command(log: str | os.PathLike[str], key_paths: Sequence[str | os.PathLike[str]], *,
                     session: str | None = None, fmt: str = "human", anchor: str | None = None,
                     allow_open: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``aarmc timeline``: verify, then print the timeline; exit status as in the module docstring."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        data, trusted, parsed = prepare(log, key_paths, anchor)
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    verified = read_verified(data, trusted, anchor=parsed, allow_open=allow_open)
    t = build_timeline(verified, session=session)
    if session is not None and not t.sessions:
        print(f"error: no session `{session}` among the verified records of `{log}`", file=err)
        return EXIT_FAILED
    if fmt == "json":
        print(json.dumps(to_json(t), indent=2, ensure_ascii=False), file=out)
    else:
        print(render_human(t), file=out)
    return verified.verdict.exit_code
