"""What the guard tells its observers: one `GuardEvent` per receipt-worthy step (AARM R8).

A `Guard` built with ``observers=[...]`` calls each observer with a
`GuardEvent` right after the step's receipt is in the log: a decision, an
approval answer, a deferral resolution, an outcome, a session start or end.
Observers are how telemetry leaves the process (`aarm_runtime.telemetry`
turns events into OCSF JSON lines and OpenTelemetry spans); they run on the
deciding thread while the session is locked, so they must only hand the
event on (a queue), and anything they raise is counted and dropped — an
observer can never change a decision.

`params` are the action's params as the guard received them, unredacted;
`sensitive` names the tool's params the policy marks ``sensitive``, which
every exporter must redact before the event leaves the process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["EVENT_KINDS", "GuardEvent"]

EVENT_KINDS = ("decision", "approval", "resolution", "outcome", "session-start", "session-end")


@dataclasses.dataclass(frozen=True, slots=True)
class GuardEvent:
    """One step of a guarded session, as observers see it.

    - `kind`: one of `EVENT_KINDS`.
    - `time_ns`: wall clock (`time.time_ns`) when the step was recorded.
    - `session_id`, `decision_id`, `action_id`: the receipt's ids (the last two
      None for session start/end).
    - `tool`, `wrapper`: the tool decided (a meta-tool resolved) and the
      meta-tool called, if any.
    - `decision`, `reason`, `rules`, `message`: the decision record (for a
      decision; for an approval, resolution or outcome, the decision it follows).
    - `verdict`, `approver`: an approval's or a resolution's answer and who gave it.
    - `ok`, `error`: an outcome's success and failure text.
    - `identity`: the LANGUAGE.md §7 identity of the session (principal, agent,
      service, session, role, scopes), or None when none was verified.
    - `params`: the params as proposed (decision events only), unredacted;
      `sensitive`: the names of the tool's params to redact before export;
      `modified_params`: a MODIFY's params (equally subject to `sensitive`).
    - `latency_ns`: decision events: from the guard taking the action to its
      receipt being signed and written (before the fsync that acknowledges it).
    - `policy`: ``(name, version, sha256 hex)`` of the policy artifact, or None.
    - `context`: the session's context-log head when the receipt was written.
    - `next_decision`: a resolution that decided the action again: the new decision id.
    """

    kind: str
    time_ns: int
    session_id: str
    decision_id: str | None = None
    action_id: str | None = None
    tool: str | None = None
    wrapper: str | None = None
    decision: str | None = None
    reason: str | None = None
    rules: tuple[str, ...] = ()
    message: str | None = None
    verdict: str | None = None
    approver: str | None = None
    ok: bool | None = None
    error: str | None = None
    identity: Mapping[str, Any] | None = None
    params: Any = None
    sensitive: tuple[str, ...] = ()
    modified_params: Any = None
    latency_ns: int | None = None
    policy: tuple[str, str, str] | None = None
    context: bytes | None = None
    next_decision: str | None = None
