"""Guard events as OpenTelemetry spans: the real SDK with its in-memory exporter, and OTLP/HTTP to a
receiver on 127.0.0.1 (the protobuf requests decoded with the OpenTelemetry proto package).

No sensitive param value may appear in any span attribute, event or status.
"""

from __future__ import annotations

import http.server
import json
import re
import signal
import sys
import threading
import time
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import guard_fixtures as gf
from aarm_runtime.guard import Guard
from aarm_runtime.otel import OpenTelemetryExporter, otlp_tracer_provider
from aarm_runtime.telemetry import REDACTED, Telemetry, TelemetryError
from test_telemetry import CARD, POLICY, TEST_CARD, ServeKeys, event, run_server, serve_scenario


@pytest.fixture
def spans():
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider, memory
    provider.shutdown()


def _everything(span: Any) -> str:
    """All text a span carries (attributes, events, links, status), to look for leaked values in."""
    parts = [span.name, json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in span.attributes.items()})]
    parts += [json.dumps(dict(e.attributes or {})) + e.name for e in span.events]
    parts += [json.dumps(dict(link.attributes or {})) for link in span.links]
    parts.append(span.status.description or "")
    return "\n".join(parts)


def test_a_decision_is_one_span_with_the_decision_attributes(spans):
    provider, memory = spans
    exporter = OpenTelemetryExporter(provider)
    e = event(decision="deny", reason="forbidden", rules=("test-card",), message="test cards are refused")
    exporter.export([e])
    [span] = memory.get_finished_spans()
    assert span.name == "aarm.decide card.charge"
    assert (span.start_time, span.end_time) == (e.time_ns - 2_500_000, e.time_ns)
    a = span.attributes
    assert a["aarm.decision"] == "deny" and a["aarm.reason"] == "forbidden" and a["aarm.rules"] == ("test-card",)
    assert (a["aarm.tool"], a["aarm.session_id"], a["aarm.decision_id"], a["aarm.action_id"]) == \
        ("card.charge", "s1", "d1", "a1")
    assert a["enduser.id"] == "alice" and a["aarm.identity.agent"] == "pay-bot"
    assert (a["aarm.identity.service"], a["aarm.identity.role"]) == ("svc-pay", "assistant")
    assert (a["aarm.policy.name"], a["aarm.policy.version"], a["aarm.policy.sha256"]) == ("telemetry-test", "2",
                                                                                          "ab" * 32)
    assert json.loads(a["aarm.params"]) == {"holder": "A", "card": REDACTED, "amount": 5}
    assert a["aarm.context"] == "07" * 32 and a["aarm.latency_ns"] == 2_500_000
    # A DENY is the guard doing its job: not an error status.
    assert span.status.status_code is StatusCode.UNSET
    assert CARD not in _everything(span)


def test_a_runtime_failure_is_an_error_span_and_its_text_is_redacted(spans):
    provider, memory = spans
    exporter = OpenTelemetryExporter(provider)
    exporter.export([event(decision="deny", reason="internal-error", message=f"KeyError: {CARD}")])
    [span] = memory.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == f"internal-error: {REDACTED}"
    assert CARD not in _everything(span)


def test_sessions_parent_their_spans_and_follow_ups_link_their_decision(spans):
    provider, memory = spans
    exporter = OpenTelemetryExporter(provider, include_params=False)
    t0 = event().time_ns
    exporter.export([
        event("session-start", time_ns=t0 - 10),
        event(decision="step_up", reason="rule"),
        event("approval", decision="step_up", verdict="approved", approver="carol", params=None, time_ns=t0 + 5),
        event("outcome", decision="step_up", ok=False, error=f"declined {CARD}", params=None, time_ns=t0 + 9),
        event("session-end", time_ns=t0 + 20),
    ])
    by_name = {s.name: s for s in memory.get_finished_spans()}
    assert set(by_name) == {"aarm.session", "aarm.decide card.charge", "aarm.approval card.charge",
                            "aarm.outcome card.charge"}
    session, decide = by_name["aarm.session"], by_name["aarm.decide card.charge"]
    assert (session.start_time, session.end_time) == (t0 - 10, t0 + 20) and session.parent is None
    for name in ("aarm.decide card.charge", "aarm.approval card.charge", "aarm.outcome card.charge"):
        span = by_name[name]
        assert span.parent.span_id == session.context.span_id
        assert span.context.trace_id == session.context.trace_id
        assert "aarm.params" not in span.attributes
    for name in ("aarm.approval card.charge", "aarm.outcome card.charge"):
        [link] = by_name[name].links
        assert link.context.span_id == decide.context.span_id and link.attributes["aarm.link"] == "decision"
        assert by_name[name].attributes["aarm.decision_id"] == "d1"
    assert by_name["aarm.approval card.charge"].attributes["aarm.approver"] == "carol"
    outcome = by_name["aarm.outcome card.charge"]
    assert outcome.status.status_code is StatusCode.ERROR and outcome.status.description == REDACTED
    for span in memory.get_finished_spans():
        assert CARD not in _everything(span)


def test_follow_ups_of_an_unknown_decision_are_unlinked_roots(spans):
    provider, memory = spans
    exporter = OpenTelemetryExporter(provider, max_decisions=1)
    exporter.export([event(decision_id="d1"), event(decision_id="d2"),
                     event("outcome", decision_id="d1", ok=True, params=None)])
    outcome = [s for s in memory.get_finished_spans() if s.name.startswith("aarm.outcome")][0]
    assert not outcome.links and outcome.parent is None
    assert outcome.attributes["aarm.decision_id"] == "d1"


def test_close_ends_open_session_spans_and_refuses_more(spans):
    provider, memory = spans
    exporter = OpenTelemetryExporter(provider)
    exporter.export([event("session-start")])
    assert memory.get_finished_spans() == ()
    exporter.close()
    [session] = memory.get_finished_spans()
    assert session.attributes["aarm.session.open"] is True
    with pytest.raises(TelemetryError, match="closed"):
        exporter.export([event()])


def test_a_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(TelemetryError, match=r"needs the `otel` extra \(pip install 'aarm-runtime\[otel\]'\)"):
        OpenTelemetryExporter()
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(TelemetryError, match="--otel needs the `otel` extra"):
        otlp_tracer_provider()


def test_a_guard_through_telemetry_makes_redacted_spans(spans, tmp_path):
    provider, memory = spans
    t = Telemetry([OpenTelemetryExporter(provider)])
    g = Guard(gf.engine_text(POLICY), receipts=gf.new_log(tmp_path), identity_verifier=gf.verifier(),
              clock=time.time, observers=[t])
    s = g.open_session(gf.token("alice", now=time.time()))
    ran: list[Any] = []
    modified = g.call(s, "card.charge", {"holder": "A", "card": CARD, "amount": 500}, execute=ran.append)
    denied = g.call(s, "card.charge", {"holder": "A", "card": TEST_CARD, "amount": 5}, execute=ran.append)
    g.close()
    t.close()
    finished = memory.get_finished_spans()
    names = [sp.name for sp in finished]
    assert names == ["aarm.decide card.charge", "aarm.outcome card.charge", "aarm.decide card.charge",
                     "aarm.session"]
    modify, outcome, deny, session = finished
    assert modify.attributes["aarm.decision_id"] == modified.decision_id
    assert modify.attributes["aarm.decision"] == "modify" and modify.attributes["aarm.rules"] == ("cap-charge",)
    assert json.loads(modify.attributes["aarm.modified_params"])["card"] == REDACTED
    assert json.loads(modify.attributes["aarm.modified_params"])["amount"] == 100
    assert deny.attributes["aarm.decision_id"] == denied.decision_id
    assert deny.attributes["aarm.message"] == "test cards are refused"
    assert modify.end_time - modify.start_time == modify.attributes["aarm.latency_ns"] > 0
    assert outcome.links[0].context.span_id == modify.context.span_id
    assert all(sp.parent is not None and sp.parent.span_id == session.context.span_id for sp in finished[:3])
    assert session.attributes["enduser.id"] == "alice"
    assert session.attributes["aarm.policy.sha256"] == g.policy_ref.digest.hex()
    for sp in finished:
        assert CARD not in _everything(sp) and TEST_CARD not in _everything(sp)
    assert t.failed == 0 and t.dropped == 0


# ---- OTLP/HTTP ------------------------------------------------------------------------------------------


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps every ExportTraceServiceRequest it is sent."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        self.requests: list[Any] = []
        received = self.requests
        self.arrived = threading.Event()
        arrived = self.arrived

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server protocol
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                received.append((self.path, request))
                arrived.set()
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[tuple[str, Any, dict[str, Any]]]:
        """(service.name, span, attributes) of every span received."""
        out = []
        for _, request in self.requests:
            for rs in request.resource_spans:
                service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        attrs = {}
                        for a in sp.attributes:
                            v = a.value
                            attrs[a.key] = v.string_value if v.HasField("string_value") else \
                                v.int_value if v.HasField("int_value") else \
                                v.bool_value if v.HasField("bool_value") else \
                                [x.string_value for x in v.array_value.values]
                        out.append((service, sp, attrs))
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_otlp_http_delivers_the_spans(receiver, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    exporter = OpenTelemetryExporter(otlp_tracer_provider("aarm-test"), owns_provider=True)
    t = Telemetry([exporter])
    t(event(decision="deny", reason="forbidden"))
    t.close()  # shuts the provider down: its batch is sent now
    [(path, _)] = receiver.requests
    assert path == "/v1/traces"
    [(service, span, attrs)] = receiver.spans()
    assert service == "aarm-test" and span.name == "aarm.decide card.charge"
    assert attrs["aarm.decision"] == "deny" and attrs["aarm.rules"] == ["small-charge"]
    assert CARD not in attrs["aarm.params"]


def test_otel_service_name_overrides_the_default(receiver, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url + "/custom/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "payments-guard")
    exporter = OpenTelemetryExporter(otlp_tracer_provider("aarm-test"), owns_provider=True)
    exporter.export([event()])
    exporter.close()
    [(path, _)] = receiver.requests
    assert path == "/custom/traces"
    assert receiver.spans()[0][0] == "payments-guard"


def test_serve_otel_exports_spans_over_otlp(receiver, tmp_path_factory):
    k = ServeKeys(tmp_path_factory.mktemp("serve-otel"))
    tmp = tmp_path_factory.mktemp("serve-otel-run")
    proc, url, lines = run_server(k.args(tmp / "r.log", "--otel", "--telemetry-decision", "deny"),
                                  env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"})
    try:
        serve_scenario(url, k)
        assert receiver.arrived.wait(30), "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
    got = receiver.spans()
    # Filtered on deny: one denied test-card charge per principal, nothing else.
    assert sorted((service, span.name, attrs["enduser.id"]) for service, span, attrs in got) == [
        ("aarmc-serve", "aarm.decide card.charge", "alice"), ("aarmc-serve", "aarm.decide card.charge", "bob")]
    for _, _, attrs in got:
        assert attrs["aarm.decision"] == "deny" and attrs["aarm.reason"] == "forbidden"
        assert TEST_CARD not in json.dumps(attrs) and json.loads(attrs["aarm.params"])["card"] == REDACTED


def test_serve_otel_without_a_collector_still_decides(tmp_path_factory):
    # Nothing listens on the endpoint: the exporter's failures stay in its own thread.
    k = ServeKeys(tmp_path_factory.mktemp("serve-otel-down"))
    tmp = tmp_path_factory.mktemp("serve-otel-down-run")
    proc, url, lines = run_server(k.args(tmp / "r.log", "--otel"),
                                  env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                       "OTEL_EXPORTER_OTLP_TIMEOUT": "1", "OTEL_BSP_SCHEDULE_DELAY": "50"})
    try:
        serve_scenario(url, k)
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/healthz").json()["status"] == "ok"
            # Exported in the background (within the worker's interval): the spans reached the SDK.
            deadline = time.monotonic() + 30
            while not re.search(r'aarm_telemetry_events_total\{result="exported"\} [1-9]',
                                text := client.get("/metrics").text):
                assert time.monotonic() < deadline, text
                time.sleep(0.05)
        assert 'aarm_telemetry_events_total{result="failed"} 0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
