"""Guard events as OpenTelemetry spans (AARM R8), through the OpenTelemetry SDK (the ``otel`` extra).

    from opentelemetry.sdk.trace import TracerProvider
    telemetry = Telemetry([OpenTelemetryExporter(provider)])
    guard = Guard(..., observers=[telemetry])

The spans (docs/telemetry.md, "OpenTelemetry"):

- ``aarm.session``: from session start to session end; the parent of the
  session's other spans, so that one trace is one session.
- ``aarm.decide TOOL``: one per decision, from the guard taking the action
  to its receipt being written (the event's ``time_ns - latency_ns`` to
  ``time_ns``).
- ``aarm.approval TOOL``, ``aarm.resolution TOOL``, ``aarm.outcome TOOL``:
  one short span per follow-up, *linked* to its decision's span (and
  carrying ``aarm.decision_id``). A follow-up can come minutes later, from
  another process (`aarmc approve`, another replica): an ended span takes
  no more events, and a span made elsewhere cannot be parented after the
  fact, so a link plus the decision id is what always works.

Everything exported goes through `telemetry.sanitize` first: sensitive
params are never in an attribute. Span status stays UNSET for every policy
decision, DENY included — a DENY is the guard working, not failing, and
the OpenTelemetry convention leaves OK to the application; it is ERROR only
when the runtime itself failed (internal error, no policy, a receipt or a
service unavailable) and for an outcome whose tool run failed.
"""

from __future__ import annotations

import collections
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from aarm_runtime import __version__
from aarm_runtime.events import GuardEvent
from aarm_runtime.telemetry import PRODUCT, TelemetryError, sanitize

__all__ = ["OpenTelemetryExporter", "otlp_tracer_provider"]

_EXTRA_HINT = "pip install 'aarm-runtime[otel]'"
_FAILURE_REASONS = frozenset({"internal-error", "receipt-unavailable", "policy-unavailable", "approval-unavailable",
                              "deferral-unavailable", "evaluation-error"})


def _import_api() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as err:
        raise TelemetryError(f"the OpenTelemetry exporter needs the `otel` extra ({_EXTRA_HINT}): {err}") from None
    return trace


def otlp_tracer_provider(service_name: str = PRODUCT) -> Any:
    """An SDK `TracerProvider` exporting over OTLP/HTTP in batches (a thread of its own).

    The endpoint, headers and timeouts come from the standard variables
    (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_HEADERS``, ...; default ``http://localhost:4318``);
    ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` override
    *service_name*.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as err:
        raise TelemetryError(f"--otel needs the `otel` extra ({_EXTRA_HINT}): {err}") from None
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {SERVICE_NAME: service_name}))
    try:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    except Exception as err:  # noqa: BLE001 - a malformed OTEL_* variable
        provider.shutdown()
        raise TelemetryError(f"cannot set up the OTLP exporter: {err}") from None
    return provider


class OpenTelemetryExporter:
    """Turns guard events into spans on *tracer_provider* (None: the global one).

    *include_params*: the redacted params as a JSON string (``aarm.params``).
    *max_sessions* / *max_decisions* bound what is remembered to parent and
    link later spans (beyond them, spans are made without parent or link).
    *owns_provider*: `close` shuts the provider down (flushing its exporter).
    """

    def __init__(self, tracer_provider: Any = None, *, tracer_name: str = "aarm_runtime",
                 include_params: bool = True, max_sessions: int = 4096, max_decisions: int = 16_384,
                 owns_provider: bool = False) -> None:
        trace = _import_api()
        self._trace = trace
        self.provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self.tracer = self.provider.get_tracer(tracer_name, __version__)
        self.include_params = include_params
        self.max_sessions = max_sessions
        self.max_decisions = max_decisions
        self.owns_provider = owns_provider
        self._sessions: dict[str, Any] = {}
        self._decisions: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def export(self, events: Sequence[GuardEvent]) -> None:
        with self._lock:
            if self._closed:
                raise TelemetryError("the OpenTelemetry exporter is closed")
            for event in events:
                self._one(sanitize(event))

    def flush(self) -> None:
        force = getattr(self.provider, "force_flush", None)
        if force is not None:
            force()

    def close(self) -> None:
        """End the session spans still open (marked ``aarm.session.open``), then shut an owned provider down."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for span in self._sessions.values():
                span.set_attribute("aarm.session.open", True)
                span.end()
            self._sessions.clear()
            self._decisions.clear()
        if self.owns_provider:
            shutdown = getattr(self.provider, "shutdown", None)
            if shutdown is not None:
                shutdown()

    # ---- one event ----

    def _one(self, e: GuardEvent) -> None:
        trace = self._trace
        session = self._sessions.get(e.session_id)
        parent = trace.set_span_in_context(session) if session is not None else None
        attributes = self._attributes(e)
        if e.kind == "session-start":
            if len(self._sessions) < self.max_sessions and e.session_id not in self._sessions:
                self._sessions[e.session_id] = self.tracer.start_span(
                    "aarm.session", start_time=e.time_ns, attributes=attributes)
            return
        if e.kind == "session-end":
            span = self._sessions.pop(e.session_id, None)
            if span is not None:
                span.end(end_time=max(e.time_ns, _start(span)))
            else:
                self.tracer.start_span("aarm.session.end", start_time=e.time_ns,
                                       attributes=attributes).end(end_time=e.time_ns)
            return
        tool = e.tool or "?"
        if e.kind == "decision":
            start = e.time_ns - (e.latency_ns or 0)
            span = self.tracer.start_span(f"aarm.decide {tool}", context=parent, start_time=start,
                                          attributes=attributes)
            if e.decision == "deny" and e.reason in _FAILURE_REASONS:
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{e.reason}: {e.message or ''}"))
            span.end(end_time=e.time_ns)
            if e.decision_id is not None:
                self._decisions[e.decision_id] = span.get_span_context()
                while len(self._decisions) > self.max_decisions:
                    self._decisions.popitem(last=False)
            return
        links = []
        decided = self._decisions.get(e.decision_id) if e.decision_id is not None else None
        if decided is not None:
            links.append(trace.Link(decided, {"aarm.link": "decision"}))
        span = self.tracer.start_span(f"aarm.{e.kind} {tool}", context=parent, start_time=e.time_ns,
                                      attributes=attributes, links=links)
        if e.kind == "outcome" and e.ok is False:
            span.set_status(trace.Status(trace.StatusCode.ERROR, e.error or "the tool failed"))
        span.end(end_time=e.time_ns)
        if e.kind == "outcome" and e.decision_id is not None:
            self._decisions.pop(e.decision_id, None)  # nothing follows an outcome

    def _attributes(self, e: GuardEvent) -> dict[str, Any]:
        a: dict[str, Any] = {"aarm.event": e.kind, "aarm.session_id": e.session_id}
        for key, value in (("aarm.decision_id", e.decision_id), ("aarm.action_id", e.action_id),
                           ("aarm.tool", e.tool), ("aarm.wrapper", e.wrapper), ("aarm.decision", e.decision),
                           ("aarm.reason", e.reason), ("aarm.message", e.message), ("aarm.verdict", e.verdict),
                           ("aarm.approver", e.approver), ("aarm.ok", e.ok), ("aarm.error", e.error),
                           ("aarm.latency_ns", e.latency_ns), ("aarm.next_decision_id", e.next_decision)):
            if value is not None:
                a[key] = value
        if e.rules:
            a["aarm.rules"] = list(e.rules)
        if e.sensitive:
            a["aarm.sensitive"] = list(e.sensitive)
        if e.context is not None:
            a["aarm.context"] = e.context.hex()
        if e.policy is not None:
            a["aarm.policy.name"], a["aarm.policy.version"], a["aarm.policy.sha256"] = e.policy
        ident = e.identity
        if ident:
            principal = ident.get("principal")
            if isinstance(principal, str):
                a["enduser.id"] = principal
            for name in ("agent", "service", "role"):
                v = ident.get(name)
                if isinstance(v, str):
                    a[f"aarm.identity.{name}"] = v
            scopes = ident.get("scopes")
            if isinstance(scopes, (list, tuple)):
                a["aarm.identity.scopes"] = [s for s in scopes if isinstance(s, str)]
        if self.include_params:
            if e.params is not None:
                a["aarm.params"] = json.dumps(e.params, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
            if e.modified_params is not None:
                a["aarm.modified_params"] = json.dumps(e.modified_params, ensure_ascii=False, sort_keys=True,
                                                       separators=(",", ":"))
        return a


def _start(span: Any) -> int:
    start = getattr(span, "start_time", None)
    return start if isinstance(start, int) else 0
