"""Telemetry export (AARM R8): guard events out of the process, redacted, without slowing decisions.

    telemetry = Telemetry([OcsfJsonLines("aarm-events.jsonl")], decisions=["deny", "step_up"])
    guard = Guard(engine, receipts=log, identity_verifier=verifier, observers=[telemetry])
    ...
    guard.close()
    telemetry.close()            # drains the queue, then closes the exporters

`Telemetry` is the observer the guard calls with each `GuardEvent`, on the
deciding thread and under the session lock. It only filters and enqueues:
a bounded queue, drained by one background thread that hands batches to
the exporters. When the queue is full the event is dropped and counted
(`Telemetry.dropped`), never waited for; an exporter that raises is
counted (`Telemetry.failed`, `Telemetry.last_error`) and never reaches the
guard. Telemetry is a view, not the record: the signed receipt log is.

Nothing sensitive leaves through an exporter: `sanitize` is applied to
every event before it is written. It replaces the params the policy marks
``sensitive`` (`redact`), in the proposed params and in a MODIFY's params,
and drops the free texts that could echo them (docs/telemetry.md, "Redaction").

Exporters here: `OcsfJsonLines` (OCSF 1.6 "API Activity" records as JSON
lines); `aarm_runtime.otel.OpenTelemetryExporter` (spans, optional extra).
An exporter is any object with ``export(events)``, and optionally
``flush()`` and ``close()``.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import IO, Any

from aarm_runtime import __version__
from aarm_runtime.decision import ALLOW, DECISIONS, DEFER, DENY, MODIFY, STEP_UP
from aarm_runtime.events import EVENT_KINDS, GuardEvent

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "OCSF_VERSION",
    "REDACTED",
    "OcsfJsonLines",
    "Telemetry",
    "TelemetryError",
    "from_options",
    "ocsf_record",
    "redact",
    "sanitize",
]

REDACTED = "[redacted]"
DEFAULT_QUEUE_SIZE = 10_000
OCSF_VERSION = "1.6.0"
PRODUCT = "aarm-runtime"
_MAX_DEPTH = 64
_MAX_TEXT = 4096

# Messages of these reasons are built from the policy (`because` texts, rule ids, field names, param
# paths and declared types) or from fixed templates: they never quote a param value. Every other
# reason's message can carry an exception's text (evaluation failures, failing services, internal
# errors), which may quote anything it was given.
_FIXED_TEXT_REASONS = frozenset({
    "rule", "forbidden", "default", "unknown-tool", "conflict", "absent-context", "invalid-params",
    "policy-unavailable", "session-closed", "session-expired", "action-cap", "identity-missing",
    "pending-dependency", "pending-limit", "approval-timeout", "rejected", "approval-mismatch", "approval-used",
    "approval-expired", "deferral-timeout", "unknown-decision", "not-redeemable",
})


class TelemetryError(Exception):
    """Telemetry cannot be set up (an unwritable file, a missing extra, a bad filter)."""


# ---- redaction -------------------------------------------------------------------------------------


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A value `json.dumps` writes, for export: decimals as their canonical text (as decision records
    have them), emails, urls and paths as text; anything else not JSON as its type's name only (its
    `repr` could hold anything)."""
    t = type(value)
    if t is str or t is bool or t is int or value is None:
        return value
    if t is float:
        return value if math.isfinite(value) else str(value)
    if depth >= _MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, Mapping):
        return {k if type(k) is str else str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, Decimal):
        from aarm_runtime.values import canonical_decimal

        try:
            return canonical_decimal(value)
        except (ValueError, ArithmeticError):
            return str(value)
    if isinstance(value, (str, int)):  # subclasses (an IntEnum, a str-based value type)
        return str(value) if isinstance(value, str) else int(value)
    from aarm_runtime import values

    if isinstance(value, (values.Email, values.Url, values.Path)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return f"<{t.__name__}>"


def _redact_deep(value: Any, names: frozenset[str], depth: int) -> Any:
    if depth >= _MAX_DEPTH:
        return "<nested too deep>"
    if isinstance(value, Mapping):
        return {(k if type(k) is str else str(k)): (REDACTED if k in names else _redact_deep(v, names, depth + 1))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_deep(v, names, depth + 1) for v in value]
    return _jsonable(value, depth)


def redact(params: Any, sensitive: Iterable[str], *, nested: bool = False) -> Any:
    """*params* as a JSON value, each top-level param named in *sensitive* replaced by `REDACTED`.

    *nested*: replace the named keys at any depth — for a meta-tool's params,
    where the wrapped tool's params (whose names *sensitive* lists) sit inside
    an argument object. Params that are not an object while some are
    sensitive are replaced whole: which part is sensitive cannot be told.

    >>> redact({"to": "bob@example.com", "body": "the secret"}, ["body"])
    {'to': 'bob@example.com', 'body': '[redacted]'}
    >>> redact({"tool": "email.send", "args": {"body": "x"}}, ["body"], nested=True)
    {'tool': 'email.send', 'args': {'body': '[redacted]'}}
    >>> redact("not an object", ["body"])
    '[redacted]'
    """
    names = frozenset(sensitive)
    if not names:
        return _jsonable(params)
    if params is None:
        return None
    if not isinstance(params, Mapping):
        return REDACTED
    if nested:
        return _redact_deep(params, names, 0)
    return {(k if type(k) is str else str(k)): (REDACTED if k in names else _jsonable(v, 1))
            for k, v in params.items()}


def _secrets(params: Any, names: frozenset[str], nested: bool, out: list[str], depth: int = 0) -> None:
    """The texts of every scalar inside the sensitive params (what a free text must not contain)."""
    if depth >= _MAX_DEPTH or not isinstance(params, Mapping):
        return
    for k, v in params.items():
        if k in names:
            _leaves(v, out, depth + 1)
        elif nested and isinstance(v, (Mapping, list, tuple)):
            for item in (v if isinstance(v, (list, tuple)) else (v,)):
                _secrets(item, names, nested, out, depth + 1)


def _leaves(value: Any, out: list[str], depth: int) -> None:
    if depth >= _MAX_DEPTH:
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and k:
                out.append(k)
            _leaves(v, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _leaves(v, out, depth + 1)
    elif value is not None and not isinstance(value, bool):
        text = str(_jsonable(value)) if not isinstance(value, str) else value
        if text:
            out.append(text)


def _mentions(text: str, secrets: Sequence[str]) -> bool:
    for s in secrets:
        if len(s) >= 4:
            if s in text:
                return True
        # A short value ("42", "eu") is looked for as a whole word only: as a substring it is in
        # almost every message, and redacting them all would hide nothing more.
        elif re.search(r"(?<![0-9A-Za-z])" + re.escape(s) + r"(?![0-9A-Za-z])", text):
            return True
    return False


def _clean_text(text: str | None, reason: str | None, secrets: Sequence[str]) -> str | None:
    if text is None:
        return text
    if reason not in _FIXED_TEXT_REASONS or _mentions(text, secrets):
        return REDACTED
    return text


def sanitize(event: GuardEvent) -> GuardEvent:
    """The event as it may leave the process: params and MODIFY params redacted (`redact`, JSON values),
    and, for a tool with sensitive params, every free text that could quote one replaced by `REDACTED`.

    Free texts: the ``message`` of a decision (or outcome) whose reason's message can carry
    an exception's text (``evaluation-error``, ``internal-error``, failing
    services; see `_FIXED_TEXT_REASONS` for the others) or that contains a
    sensitive value; the message of an approval or a resolution (a person's
    note, a resolver's error); an outcome's ``error`` (the tool's own failure
    text, which may quote its arguments). Idempotent.
    """
    sensitive = tuple(event.sensitive)
    if not sensitive:
        params = _jsonable(event.params)
        modified = _jsonable(event.modified_params)
        if params is event.params and modified is event.modified_params:
            return event
        return dataclasses.replace(event, params=params, modified_params=modified)
    names = frozenset(sensitive)
    nested = event.wrapper is not None
    secrets: list[str] = []
    _secrets(event.params, names, nested, secrets)
    _secrets(event.modified_params, names, False, secrets)
    secrets = [s for s in secrets if s != REDACTED]
    return dataclasses.replace(
        event,
        params=redact(event.params, names, nested=nested),
        modified_params=redact(event.modified_params, names),
        # A decision's message (an outcome repeats it) comes from the policy or a runtime template; an
        # approval's or a resolution's is a person's note or a resolver's exception text, which may quote
        # anything.
        message=_clean_text(event.message, event.reason, secrets) if event.kind in ("decision", "outcome")
        else None if event.message is None else REDACTED,
        error=None if event.error is None else REDACTED,
    )


# ---- the observer ----------------------------------------------------------------------------------


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class Telemetry:
    """The guard observer: filter, enqueue without blocking, export from one background thread.

    *exporters*: objects with ``export(events)`` (optionally ``flush()``,
    ``close()``). Filters (None: everything): *decisions* — the events of
    those decisions (approvals, resolutions and outcomes carry the decision
    they follow; session start and end carry none and pass only without this
    filter); *principals* — the identity principals (sessions without a
    verified principal never match); *kinds* — `events.EVENT_KINDS`.
    *queue_size* bounds the events waiting for export; beyond it events are
    dropped and counted in `dropped` (the deciding thread never waits).
    The worker exports every *interval_s* seconds, or as soon as
    *batch_size* events wait, in batches of at most *batch_size*.
    """

    def __init__(self, exporters: Iterable[Any], *, decisions: Iterable[str] | None = None,
                 principals: Iterable[str] | None = None, kinds: Iterable[str] | None = None,
                 queue_size: int = DEFAULT_QUEUE_SIZE, batch_size: int = 64, interval_s: float = 0.1) -> None:
        self.exporters = tuple(exporters)
        for e in self.exporters:
            if not callable(getattr(e, "export", None)):
                raise TypeError(f"an exporter needs an `export(events)` method, got `{type(e).__name__}`")
        self.decisions = _choice("decision", decisions, DECISIONS)
        self.kinds = _choice("event kind", kinds, EVENT_KINDS)
        if principals is not None:
            if isinstance(principals, str):
                raise TypeError("principals must be a collection of strings, not one string")
            principals = frozenset(principals)
            if not all(isinstance(p, str) for p in principals):
                raise TypeError("principals must be strings")
        self.principals: frozenset[str] | None = principals
        for what, n in (("queue_size", queue_size), ("batch_size", batch_size)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{what} must be a positive integer, got `{n!r}`")
        if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or not interval_s > 0:
            raise ValueError(f"interval_s must be a positive number, got `{interval_s!r}`")
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.interval_s = float(interval_s)
        self._queue: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._dropped = 0
        self._filtered = 0
        self._exported = 0
        self._failed = 0
        self.last_error: str | None = None
        # Which tools have sensitive params, learned from their decisions: approvals, resolutions and
        # outcomes of those tools are then redacted too, whatever their own event says.
        self._sensitive_tools: dict[str, tuple[str, ...]] = {}
        self._worker = threading.Thread(target=self._run, name="aarm-telemetry", daemon=True)
        self._worker.start()

    # The deciding thread: a few attribute reads, a lock, an append. Everything else is the worker's.
    def __call__(self, event: GuardEvent) -> None:
        if event.sensitive and event.tool is not None and event.tool not in self._sensitive_tools:
            self._sensitive_tools[event.tool] = tuple(event.sensitive)
        if ((self.kinds is not None and event.kind not in self.kinds)
                or (self.decisions is not None and event.decision not in self.decisions)
                or (self.principals is not None and _principal(event) not in self.principals)):
            with self._lock:
                self._filtered += 1
            return
        with self._lock:
            waiting = len(self._queue)
            if self._closed or waiting >= self.queue_size:
                self._dropped += 1
                return
            self._queue.append(event)
        # Woken once per batch, not per event: a thread switch per decision would cost more than the rest.
        if waiting + 1 >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    @property
    def dropped(self) -> int:
        """Events lost because the queue was full (or telemetry was closed)."""
        return self._dropped

    @property
    def filtered(self) -> int:
        """Events the filters left out."""
        return self._filtered

    @property
    def exported(self) -> int:
        """Events handed to an exporter that returned (counted once per exporter)."""
        return self._exported

    @property
    def failed(self) -> int:
        """Events an exporter raised on (counted once per exporter); `last_error` says the last why."""
        return self._failed

    @property
    def queued(self) -> int:
        return len(self._queue)

    def stats(self) -> dict[str, int]:
        return {"exported": self._exported, "failed": self._failed, "dropped": self._dropped,
                "filtered": self._filtered, "queued": len(self._queue)}

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until every event enqueued before this call is exported and the exporters flushed;
        False when *timeout* (seconds) passed first."""
        if self._closed:
            return not self._worker.is_alive()
        marker = _Flush()
        with self._lock:
            self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Export what is queued, stop the worker, close the exporters. Later events are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._worker.join(timeout)
        for e in self.exporters:
            close = getattr(e, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as err:  # noqa: BLE001 - closing is best effort; say why
                    self.last_error = f"{type(e).__name__}.close: {type(err).__name__}: {err}"

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the worker ----

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._drain()
            if self._closed:
                self._drain()
                return

    def _drain(self) -> None:
        q = self._queue
        while q:
            batch: list[GuardEvent] = []
            markers: list[_Flush] = []
            while q and len(batch) < self.batch_size:
                item = q.popleft()
                if type(item) is _Flush:
                    markers.append(item)
                    break
                batch.append(self._complete(item))
            if batch:
                self._export(batch)
                # Let a deciding thread that waits for the GIL run now, rather than after the
                # interpreter's switch interval (5 ms): exporting must not add to decision latency.
                time.sleep(0)
            if markers:
                self._flush_exporters()
                for m in markers:
                    m.done.set()

    def _complete(self, event: GuardEvent) -> GuardEvent:
        if not event.sensitive and event.tool is not None:
            known = self._sensitive_tools.get(event.tool)
            if known:
                return dataclasses.replace(event, sensitive=known)
        return event

    def _export(self, batch: list[GuardEvent]) -> None:
        for e in self.exporters:
            try:
                e.export(batch)
            except Exception as err:  # noqa: BLE001 - an exporter never reaches the guard
                self._failed += len(batch)
                self.last_error = f"{type(e).__name__}: {type(err).__name__}: {err}"
            else:
                self._exported += len(batch)

    def _flush_exporters(self) -> None:
        for e in self.exporters:
            flush = getattr(e, "flush", None)
            if flush is not None:
                try:
                    flush()
                except Exception as err:  # noqa: BLE001
                    self.last_error = f"{type(e).__name__}.flush: {type(err).__name__}: {err}"


def _choice(what: str, given: Iterable[str] | None, allowed: Sequence[str]) -> frozenset[str] | None:
    if given is None:
        return None
    if isinstance(given, str):
        raise TypeError(f"the {what} filter must be a collection of strings, not one string")
    chosen = frozenset(given)
    unknown = sorted(str(c) for c in chosen - set(allowed))
    if unknown:
        raise TelemetryError(f"unknown {what} `{unknown[0]}`: expected one of {', '.join(allowed)}")
    return chosen


def _principal(event: GuardEvent) -> str | None:
    ident = event.identity
    if ident is None:
        return None
    p = ident.get("principal")
    return p if isinstance(p, str) else None


# ---- OCSF ------------------------------------------------------------------------------------------

# OCSF 1.6.0, class API Activity (6003) in category Application Activity (6), with the
# security_control profile (action_id, disposition_id, policy). docs/telemetry.md justifies the class.
_CLASS_UID, _CATEGORY_UID, _ACTIVITY_OTHER = 6003, 6, 99
_ACTIVITY_NAMES = {"decision": "Decide", "approval": "Approval", "resolution": "Resolution",
                   "outcome": "Outcome", "session-start": "Session Start", "session-end": "Session End"}
_SEVERITY = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High"}
_STATUS = {0: "Unknown", 1: "Success", 2: "Failure", 99: "Other"}
_ACTION = {0: "Unknown", 1: "Allowed", 2: "Denied", 4: "Modified"}
_DISPOSITION = {1: "Allowed", 2: "Blocked", 8: "Approved", 11: "Corrected", 14: "Delayed", 16: "No Action",
                23: "Challenge", 25: "Rejected", 27: "Error"}
# (action_id, disposition_id, status_id, severity_id) of each decision.
_DECISION_CODES = {ALLOW: (1, 1, 1, 1), MODIFY: (4, 11, 1, 1), STEP_UP: (0, 23, 99, 2), DEFER: (0, 14, 99, 2),
                   DENY: (2, 2, 2, 3)}
# A DENY because the runtime itself failed: the deciding system needs attention, not only the agent.
_FAILURE_REASONS = frozenset({"internal-error", "receipt-unavailable", "policy-unavailable", "approval-unavailable",
                              "deferral-unavailable", "evaluation-error"})


def _codes(event: GuardEvent) -> tuple[int | None, int | None, int, int]:
    kind = event.kind
    if kind == "decision":
        action, disposition, status, severity = _DECISION_CODES.get(event.decision or "", (0, 27, 0, 3))
        if event.decision == DENY and event.reason in _FAILURE_REASONS:
            disposition, severity = 27, 4
        return action, disposition, status, severity
    if kind == "approval":
        if event.verdict == "approved":
            return 1, 8, 1, 1
        if event.verdict == "rejected":
            return 2, 25, 2, 2
        return 2, 2, 2, 2  # timeout, cancelled: the action is denied
    if kind == "resolution":
        if event.verdict == "resolved":
            return 0, 16, 1, 1  # decided again: the next decision event says how
        return 2, 2, 2, 2
    if kind == "outcome":
        return None, None, 1 if event.ok else 2, 1 if event.ok else 2
    return None, None, 1, 1


def _compact(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None and (v or type(v) not in (dict, list))}


def ocsf_record(event: GuardEvent, *, product: str = PRODUCT, include_params: bool = True) -> dict[str, Any]:
    """One OCSF 1.6 API Activity record (a JSON object) for *event*, sanitized first (`sanitize`).

    The mapping is docs/telemetry.md's table; AARM fields without an OCSF
    attribute are in ``unmapped``.
    """
    e = sanitize(event)
    action, disposition, status, severity = _codes(e)
    ident = e.identity or {}
    principal = ident.get("principal") if isinstance(ident.get("principal"), str) else None
    agent = ident.get("agent") if isinstance(ident.get("agent"), str) else None
    service = ident.get("service") if isinstance(ident.get("service"), str) else None
    role = ident.get("role") if isinstance(ident.get("role"), str) else None
    scopes = ident.get("scopes")
    policy = None
    if e.policy is not None:
        policy = {"name": e.policy[0], "version": e.policy[1], "uid": e.policy[2]}
    if e.kind in ("session-start", "session-end"):
        uid = f"{e.session_id}/{e.kind}"
    elif e.kind == "decision":
        uid = e.decision_id
    else:
        uid = f"{e.decision_id}/{e.kind}"
    activity = _ACTIVITY_NAMES.get(e.kind, e.kind)
    status_detail = e.reason if e.kind == "decision" else (e.verdict or e.reason)
    if e.kind == "outcome" and not e.ok:
        status_detail = e.error
    latency_ms = None if e.latency_ns is None else e.latency_ns // 1_000_000
    api = _compact({
        "operation": e.tool or activity,
        "service": _compact({"name": e.tool.rpartition(".")[0] or None}) if e.tool else None,
        "request": _compact({"uid": e.action_id,
                             "data": e.params if include_params and e.params is not None else None}),
        "response": _compact({"error": e.error,
                              "code": None if e.kind != "outcome" else (0 if e.ok else 1)})
        if e.kind == "outcome" else None,
    })
    record: dict[str, Any] = {
        "class_uid": _CLASS_UID,
        "class_name": "API Activity",
        "category_uid": _CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": _ACTIVITY_OTHER,
        "activity_name": activity,
        "type_uid": _CLASS_UID * 100 + _ACTIVITY_OTHER,
        "type_name": "API Activity: Other",
        "time": e.time_ns // 1_000_000,
        "severity_id": severity,
        "severity": _SEVERITY.get(severity, "Unknown"),
        "status_id": status,
        "status": "Pending" if status == 99 else _STATUS[status],
        "status_detail": status_detail,
        "message": e.message,
        "duration": latency_ms,
        "action_id": action,
        "action": None if action is None else _ACTION[action],
        "disposition_id": disposition,
        "disposition": None if disposition is None else _DISPOSITION.get(disposition, "Other"),
        "metadata": _compact({
            "version": OCSF_VERSION,
            "uid": uid,
            "correlation_uid": e.session_id,
            "product": {"name": product, "vendor_name": "aarmc", "version": __version__},
            "profiles": ["security_control"],
            "log_name": "aarm-guard",
        }),
        "actor": _compact({
            "user": _compact({"uid": principal, "name": principal}),
            "session": {"uid": e.session_id},
            "app_name": agent,
            "authorizations": [_compact({"decision": e.decision, "policy": policy})] if e.decision else None,
        }),
        "api": api,
        "src_endpoint": _compact({"name": agent, "svc_name": service}) or {"name": "unknown"},
        "policy": policy,
        "unmapped": _compact({
            "kind": e.kind,
            "decision": e.decision,
            "reason": e.reason,
            "rules": list(e.rules),
            "decision_id": e.decision_id,
            "action_id": e.action_id,
            "session_id": e.session_id,
            "tool": e.tool,
            "wrapper": e.wrapper,
            "verdict": e.verdict,
            "approver": e.approver,
            "next_decision": e.next_decision,
            "latency_ns": e.latency_ns,
            "modified_params": e.modified_params if include_params else None,
            "sensitive": list(e.sensitive),
            "context": None if e.context is None else e.context.hex(),
            "policy_sha256": None if e.policy is None else e.policy[2],
            "service": service,
            "role": role,
            "scopes": [s for s in scopes if isinstance(s, str)] if isinstance(scopes, (list, tuple)) else None,
        }),
    }
    return _compact(record)


class OcsfJsonLines:
    """Writes each event as one OCSF record (`ocsf_record`) per line to a file (appended to, created
    mode 0600) or a text stream; one write and one flush per batch.

    *include_params*: the (redacted) params in ``api.request.data``.
    """

    def __init__(self, path_or_stream: str | os.PathLike[str] | IO[str], *, include_params: bool = True,
                 product: str = PRODUCT) -> None:
        self.include_params = include_params
        self.product = product
        self._lock = threading.Lock()
        if isinstance(path_or_stream, (str, os.PathLike)):
            path = os.fspath(path_or_stream)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as err:
                raise TelemetryError(f"cannot write OCSF events to `{path}`: "
                                     f"{(err.strerror or str(err)).lower()}") from None
            self._stream: IO[str] = io.open(fd, "a", encoding="utf-8", newline="\n")
            self._owned = True
            self.path: str | None = path
        else:
            if not callable(getattr(path_or_stream, "write", None)):
                raise TypeError(f"expected a path or a text stream, got `{type(path_or_stream).__name__}`")
            self._stream = path_or_stream
            self._owned = False
            self.path = None

    def export(self, events: Sequence[GuardEvent]) -> None:
        lines = [json.dumps(ocsf_record(e, product=self.product, include_params=self.include_params),
                            ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n" for e in events]
        with self._lock:
            self._stream.write("".join(lines))
            self._stream.flush()

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._owned and not self._stream.closed:
                self._stream.close()


# ---- from command-line options ---------------------------------------------------------------------


def from_options(*, ocsf: str | os.PathLike[str] | None = None, otel: bool = False,
                 decisions: Iterable[str] = (), principals: Iterable[str] = (),
                 service_name: str = PRODUCT) -> Telemetry | None:
    """The `Telemetry` that `aarmc gateway` / `aarmc serve` flags ask for, or None when they ask for none.

    *ocsf*: a JSON-lines file. *otel*: spans over OTLP/HTTP (the standard
    ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_SERVICE_NAME`` variables apply).
    Empty *decisions* / *principals*: no such filter.
    """
    exporters: list[Any] = []
    if ocsf is not None:
        exporters.append(OcsfJsonLines(ocsf))
    if otel:
        from aarm_runtime.otel import OpenTelemetryExporter, otlp_tracer_provider

        try:
            exporters.append(OpenTelemetryExporter(otlp_tracer_provider(service_name), owns_provider=True))
        except BaseException:
            for e in exporters:
                e.close()
            raise
    decisions, principals = tuple(decisions), tuple(principals)
    if not exporters:
        if decisions or principals:
            raise TelemetryError("a telemetry filter without an exporter: add --ocsf FILE or --otel")
        return None
    try:
        return Telemetry(exporters, decisions=decisions or None, principals=principals or None)
    except BaseException:
        for e in exporters:
            e.close()
        raise

