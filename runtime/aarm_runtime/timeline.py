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

Several replicas serving one shared session each write their own log
(docs/runtime.md §13), and a replica that records a follow-up of a decision
another one made first copies that decision (and, for an approved STEP_UP,
its approval) into its own log, with a note starting "carried over:".
`merge_timelines` takes several verified logs and merges them: sessions by
id, and in a session one step per decision id, whose decision is the
original record (a carried copy only when no log holds the original), with
the follow-ups from whichever log holds them, each record naming the log it
came from; the session lists the replicas that served it (their
session-start records: opened, or "joined:").

`timeline_command` is what ``aarmc timeline LOG [LOG ...] --key PUB
[--session S] [--format human|json] [--anchor SIZE:ROOT] [--allow-open]``
runs. Exit status: 0 when every log verifies (COMPLETE, or UNTERMINATED with
``--allow-open``); 1 when one does not (the verified prefixes are still
used) or the session is not in the verified records; 2 when it cannot run
(unreadable log or key file, malformed anchor, no key, ``--anchor`` with
several logs, a log given twice). With one log the output is exactly the
single-log timeline; the replica labels (``[a.cbor#17]``), the ``logs`` list
and the ``log`` fields appear only when several logs are given.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
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
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    Verdict,
    VerifiedLog,
    prepare,
    read_verified,
)

__all__ = [
    "CARRIED_PREFIX",
    "Copy",
    "FollowUp",
    "JOINED_PREFIX",
    "LogEvent",
    "LogSource",
    "MergedTimeline",
    "Replica",
    "SessionTimeline",
    "Step",
    "Timeline",
    "build_timeline",
    "log_labels",
    "merge_timelines",
    "render_human",
    "timeline_command",
    "to_json",
]

#: How the guard's notes mark a record copied from another replica's decision (`Guard._carry`).
CARRIED_PREFIX = "carried over:"
#: How the guard's notes mark the session-start of a replica that joined a shared session.
JOINED_PREFIX = "joined:"


@dataclasses.dataclass(frozen=True, slots=True)
class FollowUp:
    """An approval or deferral resolution of a decision: who, what verdict, when."""

    seq: int
    time_ns: int
    verdict: str
    approver: str | None
    next_decision: str | None
    note: str | None
    # Set only by `merge_timelines`: the label of the log holding the record, and whether it is a copy.
    log: str | None = None
    carried: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Copy:
    """Another record of a merged step than the one shown: a replica's carried-over copy, or a duplicate."""

    kind: str  # decision, approval, resolution, outcome
    log: str
    seq: int
    carried: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Replica:
    """A replica that served a session, as its own log says (its session-start record)."""

    log: str
    seq: int
    time_ns: int
    joined: bool
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
    # Set only by `merge_timelines`: which log holds the decision and the outcome shown, whether the decision
    # shown is a carried-over copy (no given log holds the original), and the records not shown.
    log: str | None = None
    outcome_log: str | None = None
    carried: bool = False
    copies: tuple[Copy, ...] = ()

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
    # Set only by `merge_timelines`.
    replicas: tuple[Replica, ...] = ()
    end_log: str | None = None
    end_seq: int | None = None


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


@dataclasses.dataclass(frozen=True, slots=True)
class LogSource:
    """One of the logs a merged timeline was built from, with its own verdict and log events."""

    label: str
    path: str
    log_id: bytes | None
    verdict: Verdict
    events: tuple[LogEvent, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class MergedTimeline:
    """Several replicas' logs of the same sessions, merged (`merge_timelines`)."""

    logs: tuple[LogSource, ...]
    sessions: tuple[SessionTimeline, ...]

    @property
    def ok(self) -> bool:
        return all(source.verdict.ok for source in self.logs)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILED


_LOG_KINDS = (Kind.LOG_OPEN, Kind.KEY_ROTATION, Kind.RECOVERY, Kind.LOG_CLOSE)


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
        if kind in _LOG_KINDS:
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


def log_labels(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Short names for logs: each file's name, or as many trailing path parts as make it unique.

    >>> log_labels(["r/a.cbor", "r/b.cbor"])
    ['a.cbor', 'b.cbor']
    >>> log_labels(["east/receipts.cbor", "west/receipts.cbor", "x.cbor"])
    ['east/receipts.cbor', 'west/receipts.cbor', 'x.cbor']
    """
    parts = [Path(p).parts or (os.fspath(p),) for p in paths]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(ps[-d:]) for ps, d in zip(parts, depth)]
        clashes = {label for label in labels if labels.count(label) > 1}
        grow = [i for i, label in enumerate(labels) if label in clashes and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    # Equal paths that no suffix separates (the caller refuses a log given twice; this keeps labels unique).
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}({seen[label]})")
    return out


def _is_carried(note: str | None) -> bool:
    return note is not None and note.startswith(CARRIED_PREFIX)


# (time, position of the log among those given, seq): the merged order, and the choice among a record's copies.
_Key = tuple[int, int, int]
_Item = tuple[_Key, str, Receipt]


def _pick(items: list[_Item]) -> tuple[_Item, bool, list[_Item]]:
    """The record to show (the earliest original, else the earliest carried copy), whether it is a copy,
    and the others."""
    items = sorted(items, key=lambda item: item[0])
    originals = [item for item in items if not _is_carried(item[2].record.note)]
    chosen = originals[0] if originals else items[0]
    return chosen, not originals, [item for item in items if item is not chosen]


def merge_timelines(logs: Sequence[tuple[str | os.PathLike[str], VerifiedLog]], *,
                    session: str | None = None) -> MergedTimeline:
    """Merge the verified receipts of several replicas' logs (path, verified log), only *session* when given.

    Sessions merge by id and steps by decision id: a decision in several logs
    is one step, shown from its original record, with every follow-up from
    whichever log holds it; carried-over copies are listed as copies, not
    shown again. Steps are in time order (ties: the order the logs were given
    in, then seq), sessions in the order of their first record.
    """
    labels = log_labels([path for path, _ in logs])
    sources = []
    sessions: dict[str, dict[str, Any]] = {}
    for position, ((path, verified), label) in enumerate(zip(logs, labels)):
        events = []
        for r in verified.receipts:
            rec = r.record
            kind = rec.kind
            if kind in _LOG_KINDS:
                events.append(LogEvent(seq=r.seq, time_ns=r.time_ns, kind=kind.label, detail=_event_detail(r)))
                continue
            if session is not None and rec.session != session:
                continue
            key = (r.time_ns, position, r.seq)
            s = sessions.setdefault(rec.session, {"first": key, "starts": [], "ends": [], "steps": {}})
            s["first"] = min(s["first"], key)
            item = (key, label, r)
            if kind == Kind.SESSION_START:
                s["starts"].append(item)
            elif kind == Kind.SESSION_END:
                s["ends"].append(item)
            else:
                did = rec.decision_id if kind == Kind.DECISION else rec.ref
                group = s["steps"].setdefault(did, {"decision": [], "approval": [], "resolution": [], "outcome": []})
                group[{Kind.DECISION: "decision", Kind.APPROVAL: "approval",
                       Kind.OUTCOME: "outcome"}.get(kind, "resolution")].append(item)
        sources.append(LogSource(label=label, path=os.fspath(path), log_id=verified.verdict.log_id,
                                 verdict=verified.verdict, events=tuple(events)))
    out = []
    for name, s in sorted(sessions.items(), key=lambda kv: kv[1]["first"]):
        starts = sorted(s["starts"], key=lambda item: item[0])
        replicas = tuple(Replica(log=label, seq=r.seq, time_ns=r.time_ns,
                                 joined=(r.record.note or "").startswith(JOINED_PREFIX), note=r.record.note)
                         for _, label, r in starts)
        opener = next((r for (_, _, r), rep in zip(starts, replicas) if not rep.joined),
                      starts[0][2] if starts else None)
        steps = []
        for group in s["steps"].values():
            if not group["decision"]:
                continue  # cannot happen in a verified log: every follow-up's decision precedes it there
            steps.append(_merged_step(group))
        steps.sort(key=lambda pair: pair[0])
        end = min(s["ends"], key=lambda item: item[0]) if s["ends"] else None
        out.append(SessionTimeline(
            session=name, identity=None if opener is None else opener.record.identity,
            context=None if opener is None else opener.record.context,
            started_ns=None if opener is None else opener.time_ns,
            ended_ns=None if end is None else end[2].time_ns, end_note=None if end is None else end[2].record.note,
            steps=tuple(step for _, step in steps), replicas=replicas,
            end_log=None if end is None else end[1], end_seq=None if end is None else end[2].seq))
    return MergedTimeline(logs=tuple(sources), sessions=tuple(out))


def _merged_step(group: dict[str, list[_Item]]) -> tuple[_Key, Step]:
    (key, label, r), carried, rest = _pick(group["decision"])
    copies = [("decision", item) for item in rest]
    follows: dict[str, FollowUp | None] = {"approval": None, "resolution": None}
    for kind in follows:
        if group[kind]:
            (_, f_label, f), f_carried, f_rest = _pick(group[kind])
            fr = f.record
            follows[kind] = FollowUp(seq=f.seq, time_ns=f.time_ns, verdict=fr.resolution.verdict,
                                     approver=fr.approver, next_decision=fr.resolution.next_decision, note=fr.note,
                                     log=f_label, carried=f_carried)
            copies += [(kind, item) for item in f_rest]
    outcome = outcome_seq = outcome_log = None
    if group["outcome"]:
        (_, outcome_log, o), _, o_rest = _pick(group["outcome"])
        outcome, outcome_seq = o.record.outcome, o.seq
        copies += [("outcome", item) for item in o_rest]
    rec = r.record
    a = rec.action
    step = Step(decision_id=rec.decision_id, action_id=rec.action_id, seq=r.seq, time_ns=r.time_ns, tool=a.tool,
                wrapper=a.wrapper, params_digest=a.params_digest, params_json=a.params_json, context=rec.context,
                identity=rec.identity, policy=rec.policy, decision=rec.decision, approval=follows["approval"],
                resolution=follows["resolution"], outcome=outcome, outcome_seq=outcome_seq, note=rec.note,
                log=label, outcome_log=outcome_log, carried=carried,
                copies=tuple(Copy(kind=kind, log=c_label, seq=c.seq, carried=_is_carried(c.record.note))
                             for kind, (_, c_label, c) in sorted(copies, key=lambda kc: kc[1][0])))
    return key, step


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
    out = {"seq": f.seq, "time": format_ns(f.time_ns), "verdict": f.verdict, "approver": f.approver,
           "next_decision": f.next_decision, "note": f.note}
    if f.log is not None:
        out.update(log=f.log, carried=f.carried)
    return out


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
        if s.outcome_log is not None:
            out["outcome"]["log"] = s.outcome_log
    if s.log is not None:
        out.update(log=s.log, carried=s.carried,
                   copies=[{"kind": c.kind, "log": c.log, "seq": c.seq, "carried": c.carried} for c in s.copies])
    return out


def _events_json(events: Sequence[LogEvent]) -> list[dict[str, Any]]:
    return [{"seq": e.seq, "time": format_ns(e.time_ns), "kind": e.kind, "detail": e.detail} for e in events]


def _session_json(s: SessionTimeline, merged: bool) -> dict[str, Any]:
    out = {"session": s.session, "identity": _identity_json(s.identity), "context_digest": _hex(s.context),
           "started": format_ns(s.started_ns), "ended": format_ns(s.ended_ns), "end_note": s.end_note}
    if merged:
        out.update(end_log=s.end_log, end_seq=s.end_seq,
                   replicas=[{"log": r.log, "seq": r.seq, "time": format_ns(r.time_ns),
                              "role": "joined" if r.joined else "opened", "note": r.note} for r in s.replicas])
    out["steps"] = [_step_json(st) for st in s.steps]
    return out


def to_json(t: Timeline | MergedTimeline) -> dict[str, Any]:
    """The timeline as JSON-able data (digests in hex, times as UTC ISO strings with ns).

    A merged timeline has ``logs`` (each log's label, path, id, verdict, first
    bad index and log events) and ``ok`` instead of one ``log_id``,
    ``verdict`` and ``events``; its sessions list ``replicas``, and its steps
    and follow-ups name their ``log``.
    """
    if isinstance(t, MergedTimeline):
        return {
            "ok": t.ok,
            "logs": [{"log": g.label, "path": g.path, "log_id": _hex(g.log_id), "verdict": g.verdict.to_json(),
                      "first_bad_index": g.verdict.index, "events": _events_json(g.events)} for g in t.logs],
            "sessions": [_session_json(s, True) for s in t.sessions],
        }
    return {
        "log_id": _hex(t.log_id),
        "verdict": t.verdict.to_json(),
        "events": _events_json(t.events),
        "sessions": [_session_json(s, False) for s in t.sessions],
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


def _at(log: str | None, seq: int | None) -> str:
    """Where a record is: ``[17]`` in a single log's timeline, ``[a.cbor#17]`` in a merged one."""
    return f"[{seq}]" if log is None else f"[{log}#{seq}]"


def _verdict_lines(v: Verdict, head: str) -> list[str]:
    lines = [f"{head}: {v.status.value}" + ("" if v.ok else f" — {v.message}")]
    if not v.ok and v.index is not None:
        lines.append(f"  verification stopped at item {v.index} (record {v.record}, byte offset {v.offset}); "
                     f"only the {v.records} record(s) before it are shown")
    return lines


def render_human(t: Timeline | MergedTimeline) -> str:
    """A text report: verdict, log events, then each session's decisions with what followed them.

    A merged timeline gives each log's verdict and events, lists each
    session's replicas, and names the log of every record (``[a.cbor#17]``).
    """
    lines = []
    if isinstance(t, MergedTimeline):
        for g in t.logs:
            lines += _verdict_lines(g.verdict, f"log {g.label} {_hex(g.log_id) or '?'}")
            lines += [f"  {format_ns(e.time_ns)}  {_at(g.label, e.seq)} {e.detail}" for e in g.events]
    else:
        lines += _verdict_lines(t.verdict, f"log {_hex(t.log_id) or '?'}")
        lines += [f"  {format_ns(e.time_ns)}  [{e.seq}] {e.detail}" for e in t.events]
    for s in t.sessions:
        lines.append("")
        lines.append(f"session {s.session}: {_who(s.identity)}")
        for rep in s.replicas:
            lines.append(f"  replica   {rep.log} {'joined' if rep.joined else 'opened'} {format_ns(rep.time_ns)} "
                         f"{_at(rep.log, rep.seq)}")
        if s.started_ns is not None:
            lines.append(f"  started {format_ns(s.started_ns)}, context {_short(s.context)}")
        for st in s.steps:
            lines += _step_lines(st)
        if s.ended_ns is not None:
            where = "" if s.end_log is None else f" {_at(s.end_log, s.end_seq)}"
            lines.append(f"  ended {format_ns(s.ended_ns)}{where}" + (f": {s.end_note}" if s.end_note else ""))
    return "\n".join(lines)


def _step_lines(st: Step) -> list[str]:
    d = st.decision
    lines = []
    head = f"  {_at(st.log, st.seq)} {format_ns(st.time_ns)}  decision {st.decision_id}"
    if st.action_id:
        head += f" (action {st.action_id})"
    if st.carried:
        head += " — carried-over copy: no log given holds the deciding replica's record"
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
            text += f" at {format_ns(f.time_ns)} {_at(f.log, f.seq)}"
            text += f" -> decision {f.next_decision}" if f.next_decision else ""
            text += " (carried-over copy)" if f.carried else ""
            lines.append(text)
    if st.outcome is not None:
        o = st.outcome
        text = f"      outcome   {'ok' if o.ok else 'failed'} in {_duration(o.end_ns - o.start_ns)}"
        text += f", output {_short(o.output_digest)}" if o.output_digest else ""
        text += f", error: {o.error}" if o.error else ""
        lines.append(text + f" {_at(st.outcome_log, st.outcome_seq)}")
    elif d.effect in ("deny", "defer") or (st.approval is not None and st.approval.verdict != "approved"):
        lines.append("      outcome   not executed")
    if st.copies:
        lines.append("      copies    " + ", ".join(
            f"{c.kind} {_at(c.log, c.seq)}" + (" (carried over)" if c.carried else "") for c in st.copies))
    return lines


def timeline_command(logs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                     key_paths: Sequence[str | os.PathLike[str]], *, session: str | None = None,
                     fmt: str = "human", anchor: str | None = None, allow_open: bool = False,
                     out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``aarmc timeline``: verify each log, then print the (merged) timeline; exit status as in the module
    docstring. *logs* is one path or several (one replica's log each)."""
    out = out or sys.stdout
    err = err or sys.stderr
    paths = [logs] if isinstance(logs, (str, os.PathLike)) else list(logs)
    if len(paths) == 1:
        return _single_log(paths[0], key_paths, session=session, fmt=fmt, anchor=anchor, allow_open=allow_open,
                           out=out, err=err)
    try:
        if not paths:
            raise UsageError("no receipt log given")
        if anchor is not None:
            # An anchor is one log's tree size and root: which of the logs it is for would be a guess.
            raise UsageError(f"--anchor checks one log, but {len(paths)} were given; check each log against its "
                             f"own anchor with `aarmc verify LOG --anchor SIZE:ROOT`")
        seen: dict[Path, str] = {}
        for p in paths:
            resolved = Path(p).resolve()
            if resolved in seen:
                raise UsageError(f"receipt log `{p}` is given twice" + (
                    "" if seen[resolved] == os.fspath(p) else f" (also as `{seen[resolved]}`)"))
            seen[resolved] = os.fspath(p)
        prepared = [prepare(p, key_paths, None) for p in paths]
        verified = [(p, read_verified(path, trusted, allow_open=allow_open, session=session))
                    for p, (path, trusted, _) in zip(paths, prepared)]
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    except OSError as exc:  # a log went away or became unreadable after `prepare` looked at it
        print(f"error: cannot read a receipt log: {exc.strerror or exc}", file=err)
        return EXIT_USAGE
    t = merge_timelines(verified, session=session)
    if session is not None and not t.sessions:
        names = ", ".join(f"`{p}`" for p in paths)
        print(f"error: no session `{session}` among the verified records of {names}", file=err)
        return EXIT_FAILED
    if fmt == "json":
        print(json.dumps(to_json(t), indent=2, ensure_ascii=False), file=out)
    else:
        print(render_human(t), file=out)
    return t.exit_code


def _single_log(log: str | os.PathLike[str], key_paths: Sequence[str | os.PathLike[str]], *, session: str | None,
                fmt: str, anchor: str | None, allow_open: bool, out: TextIO, err: TextIO) -> int:
    try:
        path, trusted, parsed = prepare(log, key_paths, anchor)
        verified = read_verified(path, trusted, anchor=parsed, allow_open=allow_open, session=session)
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    except OSError as exc:  # the log went away or became unreadable after `prepare` looked at it
        print(f"error: cannot read receipt log `{log}`: {exc.strerror or exc}", file=err)
        return EXIT_USAGE
    t = build_timeline(verified, session=session)
    if session is not None and not t.sessions:
        print(f"error: no session `{session}` among the verified records of `{log}`", file=err)
        return EXIT_FAILED
    if fmt == "json":
        print(json.dumps(to_json(t), indent=2, ensure_ascii=False), file=out)
    else:
        print(render_human(t), file=out)
    return verified.verdict.exit_code
