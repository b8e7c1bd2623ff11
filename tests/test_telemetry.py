"""Telemetry export (AARM R8): redaction, filters, the non-blocking queue, OCSF JSON lines, CLI wiring.

Unit tests feed hand-built `GuardEvent`s; the end-to-end tests run a real
`Guard` over a policy compiled here (a tool with a ``sensitive`` param), a
real MCP gateway (`open_gateway` with the toolbox server) and a real
`aarmc serve` subprocess, and read back the JSON lines they wrote. No
sensitive value may appear anywhere in what was exported.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

import guard_fixtures as gf
from aarm_runtime import keys
from aarm_runtime.events import GuardEvent
from aarm_runtime.guard import Guard
from aarm_runtime.identity import Identity, issue_identity
from aarm_runtime.telemetry import (
    REDACTED,
    OcsfJsonLines,
    Telemetry,
    TelemetryError,
    from_options,
    ocsf_record,
    redact,
    sanitize,
)

ROOT = Path(__file__).resolve().parents[1]
CARD = "4242424242424242"
TEST_CARD = "4000000000000002"

POLICY = """
policy "telemetry-test" version "2"
default deny
tool card.charge(holder: str, card: str sensitive, amount: int, memo: str = "")
tool kb.read(q: str)
allow "reads" kb.read
forbid "test-card" card.charge when params.card == "4000000000000002" because "test cards are refused"
step_up "big-charge" card.charge when params.amount > 1000 approvers ["finance"] timeout 10m
modify "cap-charge" card.charge when params.amount > 100 and params.amount <= 1000 set amount = 100
allow "small-charge" card.charge when params.amount <= 100
"""

IDENT = {"principal": "alice", "agent": "pay-bot", "service": "svc-pay", "role": "assistant", "scopes": ["pay"]}
POLICY_REF = ("telemetry-test", "2", "ab" * 32)


def event(kind: str = "decision", **kw: Any) -> GuardEvent:
    base: dict[str, Any] = {"time_ns": 1_800_000_000_123_456_789, "session_id": "s1", "identity": IDENT,
                            "policy": POLICY_REF}
    if kind not in ("session-start", "session-end"):
        base.update(decision_id="d1", action_id="a1", tool="card.charge", decision="allow", reason="rule",
                    rules=("small-charge",), message="allowed by rule `small-charge`", sensitive=("card",))
    if kind == "decision":
        base.update(params={"holder": "A", "card": CARD, "amount": 5}, latency_ns=2_500_000, context=b"\x07" * 32)
    base.update(kw)
    return GuardEvent(kind=kind, **base)


class Collect:
    """An exporter that keeps what it was given (optionally holding the worker until released)."""

    def __init__(self, hold: bool = False) -> None:
        self.events: list[GuardEvent] = []
        self.batches = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.closed = False

    def export(self, events):
        self.entered.set()
        self.release.wait(30)
        self.events.extend(events)
        self.batches += 1

    def close(self) -> None:
        self.closed = True


class Broken:
    def export(self, events):
        raise OSError("disk full")


def _no_secret(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text, f"`{s}` was exported"


# ---- redaction ------------------------------------------------------------------------------------------


def test_redact_replaces_sensitive_params_and_never_reprs_what_is_not_json():
    class Secretive:
        def __repr__(self) -> str:
            return CARD

        __str__ = __repr__

    assert redact({"card": CARD, "amount": 5}, ["card"]) == {"card": REDACTED, "amount": 5}
    assert redact({"card": {"pan": CARD}, "n": [1]}, ("card",)) == {"card": REDACTED, "n": [1]}
    # A meta-tool's params: the wrapped tool's names, at any depth.
    assert redact({"name": "card.charge", "args": {"card": CARD, "x": [{"card": CARD}]}}, ["card"], nested=True) \
        == {"name": "card.charge", "args": {"card": REDACTED, "x": [{"card": REDACTED}]}}
    assert redact([CARD], ["card"]) == REDACTED and redact(CARD, ["card"]) == REDACTED
    assert redact(None, ["card"]) is None
    assert redact({"card": CARD}, []) == {"card": CARD}
    from decimal import Decimal

    assert redact({"amount": Decimal("1.50"), "obj": Secretive(), "b": b"xyz", "f": float("nan")}, []) \
        == {"amount": "1.5", "obj": "<Secretive>", "b": "<3 bytes>", "f": "nan"}
    json.dumps(redact({1: {2: (3, Secretive())}}, []))


def test_sanitize_redacts_params_modified_params_outcome_errors_and_notes():
    e = sanitize(event(decision="modify", modified_params={"holder": "A", "card": CARD, "amount": 100, "memo": ""}))
    assert e.params == {"holder": "A", "card": REDACTED, "amount": 5}
    assert e.modified_params == {"holder": "A", "card": REDACTED, "amount": 100, "memo": ""}
    assert e.message == "allowed by rule `small-charge`"  # a policy text stays
    assert sanitize(e) == e  # idempotent
    out = sanitize(event("outcome", ok=False, error=f"gateway refused card {CARD}", params=None))
    assert out.error == REDACTED and out.message == "allowed by rule `small-charge`"
    for kind in ("approval", "resolution"):
        note = sanitize(event(kind, verdict="rejected", approver="carol", message=f"not {CARD[-4:]} again",
                              params=None))
        assert note.message == REDACTED and note.approver == "carol"
    # Without sensitive params nothing is hidden.
    plain = sanitize(event("outcome", sensitive=(), error="timeout talking to kb", params=None))
    assert plain.error == "timeout talking to kb"


@pytest.mark.parametrize("reason, message, kept", [
    ("rule", "allowed by rule `small-charge`", True),
    ("forbidden", "test cards are refused", True),
    ("invalid-params", "invalid params: params.amount: expected `int`, got a string", True),
    ("evaluation-error", "rule `x` could not be evaluated: division by zero", False),
    ("internal-error", "internal error: KeyError: 'card'", False),
    ("approval-unavailable", "approvals service failed: OSError", False),
    # Any message quoting a sensitive value, whatever its reason.
    ("invalid-params", f"invalid params: {CARD} is not allowed", False),
    ("rule", "charged A 4242 twice", True),  # a part of the value is not the value
])
def test_decision_messages_are_kept_only_when_they_cannot_quote_a_sensitive_value(reason, message, kept):
    got = sanitize(event(decision="deny", reason=reason, message=message)).message
    assert got == (message if kept else REDACTED)


def test_short_sensitive_values_are_matched_as_words():
    e = event(params={"holder": "A", "card": "42", "amount": 5}, message="rule r42 says 42 is refused",
              decision="deny", reason="rule")
    assert sanitize(e).message == REDACTED
    assert sanitize(dataclasses.replace(e, message="rule r42 refused")).message == "rule r42 refused"


# ---- the observer: filters, queue, failures ---------------------------------------------------------------


def test_filters_by_decision_principal_and_kind():
    got = Collect()
    t = Telemetry([got], decisions=["deny", "step_up"], principals=["alice"])
    t(event(decision="deny"))
    t(event(decision="allow"))
    t(event(decision="deny", identity={**IDENT, "principal": "bob"}))
    t(event(decision="deny", identity=None))
    t(event("approval", decision="step_up", verdict="approved", params=None))
    t(event("session-start"))  # carries no decision: out with a decision filter
    assert t.flush(10)
    assert [(e.kind, e.decision) for e in got.events] == [("decision", "deny"), ("approval", "step_up")]
    assert t.filtered == 4 and t.dropped == 0 and t.exported == 2
    t.close()
    kinds = Collect()
    t = Telemetry([kinds], kinds=["session-start", "session-end"])
    for e in (event("session-start"), event(), event("session-end")):
        t(e)
    t.close()
    assert [e.kind for e in kinds.events] == ["session-start", "session-end"] and kinds.closed


def test_bad_filters_are_refused():
    with pytest.raises(TelemetryError, match="unknown decision `permit`"):
        Telemetry([Collect()], decisions=["permit"])
    with pytest.raises(TelemetryError, match="unknown event kind `start`"):
        Telemetry([Collect()], kinds=["start"])
    with pytest.raises(TypeError, match="not one string"):
        Telemetry([Collect()], principals="alice")
    with pytest.raises(TypeError, match="export"):
        Telemetry([object()])
    with pytest.raises(ValueError, match="queue_size"):
        Telemetry([Collect()], queue_size=0)


def test_a_full_queue_drops_and_counts_and_never_blocks_the_caller():
    slow = Collect(hold=True)
    t = Telemetry([slow], queue_size=3)
    t(event(decision_id="first"))
    assert slow.entered.wait(10)  # the worker holds the first event inside the exporter
    started = time.perf_counter()
    for i in range(10):
        t(event(decision_id=f"d{i}"))
    spent = time.perf_counter() - started
    assert spent < 0.5, f"enqueueing took {spent:.3f} s while the exporter was stuck"
    assert t.dropped == 7 and t.queued == 3
    assert not t.flush(0.05)  # the exporter is still stuck
    slow.release.set()
    assert t.flush(10)
    assert [e.decision_id for e in slow.events] == ["first", "d0", "d1", "d2"]
    assert t.exported == 4 and t.dropped == 7
    t.close()
    t(event())
    assert t.dropped == 8  # closed: dropped, not raised


def test_a_failing_exporter_is_counted_and_isolated():
    good = Collect()
    t = Telemetry([Broken(), good])
    for i in range(5):
        t(event(decision_id=f"d{i}"))
    assert t.flush(10)
    assert len(good.events) == 5 and t.failed == 5 and t.exported == 5
    assert t.last_error == "Broken: OSError: disk full"
    t.close()


def test_a_failing_exporter_never_reaches_the_guard(tmp_path):
    t = Telemetry([Broken()])
    g = Guard(gf.engine_text(POLICY), receipts=gf.new_log(tmp_path), identity_verifier=gf.verifier(),
              clock=gf.Clock(), observers=[t])
    s = g.open_session(gf.token("alice"))
    result = g.call(s, "card.charge", {"holder": "A", "card": CARD, "amount": 5}, execute=lambda p: "ok")
    assert result.ok
    g.close()
    assert t.flush(10) and t.failed >= 3 and g.observer_errors == 0
    t.close()


def test_concurrent_callers_lose_nothing_below_the_bound():
    got = Collect()
    t = Telemetry([got], queue_size=100_000)

    def run(n: int) -> None:
        for i in range(2000):
            t(event(decision_id=f"{n}-{i}"))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert t.flush(30)
    assert len({e.decision_id for e in got.events}) == 8000 and t.dropped == 0
    t.close()


def test_follow_ups_of_a_sensitive_tool_are_redacted_even_without_their_own_sensitive_list():
    buf = io.StringIO()
    t = Telemetry([OcsfJsonLines(buf)])
    t(event())
    t(event("outcome", sensitive=(), ok=False, error=f"card {CARD} declined", params=None))
    t.close()
    _no_secret(buf.getvalue(), CARD)
    assert json.loads(buf.getvalue().splitlines()[1])["api"]["response"]["error"] == REDACTED


# ---- OCSF -----------------------------------------------------------------------------------------------

REQUIRED = ("class_uid", "category_uid", "activity_id", "type_uid", "severity_id", "time", "status_id",
            "metadata", "actor", "api", "src_endpoint")


def test_an_ocsf_record_has_the_required_attributes():
    r = ocsf_record(event(decision="deny", reason="forbidden", rules=("test-card",), message="test cards are refused"))
    for key in REQUIRED:
        assert key in r, key
    assert (r["class_uid"], r["category_uid"], r["activity_id"]) == (6003, 6, 99)
    assert r["type_uid"] == r["class_uid"] * 100 + r["activity_id"]
    assert r["time"] == 1_800_000_000_123 and isinstance(r["time"], int)
    assert r["metadata"]["version"] == "1.6.0" and r["metadata"]["uid"] == "d1"
    assert r["metadata"]["product"] == {"name": "aarm-runtime", "vendor_name": "aarmc", "version": "0.1.0"}
    assert r["actor"]["user"] == {"uid": "alice", "name": "alice"}
    assert r["actor"]["session"] == {"uid": "s1"} and r["actor"]["app_name"] == "pay-bot"
    assert r["api"]["operation"] == "card.charge" and r["api"]["request"]["uid"] == "a1"
    assert r["api"]["request"]["data"] == {"holder": "A", "card": REDACTED, "amount": 5}
    assert r["src_endpoint"] == {"name": "pay-bot", "svc_name": "svc-pay"}
    assert r["policy"] == {"name": "telemetry-test", "version": "2", "uid": "ab" * 32}
    assert (r["action_id"], r["disposition_id"], r["status_id"], r["severity_id"]) == (2, 2, 2, 3)
    assert r["status_detail"] == "forbidden" and r["message"] == "test cards are refused"
    u = r["unmapped"]
    assert u["rules"] == ["test-card"] and u["reason"] == "forbidden" and u["decision_id"] == "d1"
    assert u["context"] == "07" * 32 and u["policy_sha256"] == "ab" * 32 and u["latency_ns"] == 2_500_000
    assert (u["role"], u["scopes"]) == ("assistant", ["pay"])
    assert r["duration"] == 2
    assert "data" not in ocsf_record(event(), include_params=False)["api"]["request"]


@pytest.mark.parametrize("decision, reason, codes", [
    ("allow", "rule", (1, 1, 1, 1)),
    ("modify", "rule", (4, 11, 1, 1)),
    ("step_up", "rule", (0, 23, 99, 2)),
    ("defer", "absent-context", (0, 14, 99, 2)),
    ("deny", "rule", (2, 2, 2, 3)),
    ("deny", "internal-error", (2, 27, 2, 4)),
])
def test_decisions_map_to_ocsf_action_disposition_status_and_severity(decision, reason, codes):
    r = ocsf_record(event(decision=decision, reason=reason))
    assert (r["action_id"], r["disposition_id"], r["status_id"], r["severity_id"]) == codes
    assert r["status"] == {1: "Success", 2: "Failure", 99: "Pending"}[codes[2]]


def test_follow_up_and_session_records():
    approved = ocsf_record(event("approval", decision="step_up", verdict="approved", approver="carol", params=None))
    assert approved["metadata"]["uid"] == "d1/approval" and approved["activity_name"] == "Approval"
    assert (approved["action_id"], approved["disposition_id"]) == (1, 8)
    assert approved["unmapped"]["approver"] == "carol"
    rejected = ocsf_record(event("approval", decision="step_up", verdict="rejected", params=None))
    assert (rejected["action_id"], rejected["disposition_id"], rejected["status_id"]) == (2, 25, 2)
    resolved = ocsf_record(event("resolution", decision="defer", verdict="resolved", next_decision="d2", params=None))
    assert resolved["unmapped"]["next_decision"] == "d2" and resolved["status_id"] == 1
    failed = ocsf_record(event("outcome", ok=False, error="boom", params=None, sensitive=()))
    assert failed["status_id"] == 2 and failed["api"]["response"] == {"error": "boom", "code": 1}
    assert "action_id" not in failed
    start = ocsf_record(event("session-start"))
    assert start["metadata"]["uid"] == "s1/session-start" and start["activity_name"] == "Session Start"
    assert start["api"]["operation"] == "Session Start" and start["status_id"] == 1


def test_ocsf_json_lines_are_one_object_per_line_in_a_private_file(tmp_path):
    path = tmp_path / "events.jsonl"
    exporter = OcsfJsonLines(path)
    exporter.export([event(), event("outcome", ok=True, params=None)])
    exporter.export([event("session-end")])
    exporter.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["activity_name"] for line in lines] == ["Decide", "Outcome", "Session End"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    _no_secret(path.read_text(), CARD)
    # Appended to, not truncated.
    again = OcsfJsonLines(path)
    again.export([event()])
    again.close()
    assert len(path.read_text().splitlines()) == 4


def test_an_unwritable_ocsf_path_is_a_clear_error(tmp_path):
    with pytest.raises(TelemetryError, match=r"cannot write OCSF events to `.*missing/e\.jsonl`: no such file"):
        OcsfJsonLines(tmp_path / "missing" / "e.jsonl")
    with pytest.raises(TelemetryError, match="is a directory"):
        OcsfJsonLines(tmp_path)
    with pytest.raises(TypeError, match="a path or a text stream"):
        OcsfJsonLines(42)  # type: ignore[arg-type]


def test_from_options():
    assert from_options() is None
    with pytest.raises(TelemetryError, match="without an exporter"):
        from_options(decisions=["deny"])
    with pytest.raises(TelemetryError, match="unknown decision"):
        from_options(ocsf=os.devnull, decisions=["nope"])
    t = from_options(ocsf=os.devnull, decisions=["deny"], principals=["alice"])
    assert t is not None and t.decisions == {"deny"} and t.principals == {"alice"}
    t.close()


# ---- end to end through a real Guard -------------------------------------------------------------------


def test_a_guard_exports_every_step_redacted(tmp_path):
    path = tmp_path / "events.jsonl"
    t = Telemetry([OcsfJsonLines(path)])
    g = Guard(gf.engine_text(POLICY), receipts=gf.new_log(tmp_path), identity_verifier=gf.verifier(),
              clock=time.time, observers=[t], approval_timeout_s=30)
    s = g.open_session(gf.token("alice", now=time.time()))
    ran = []
    assert g.call(s, "card.charge", {"holder": "A", "card": CARD, "amount": 50}, execute=ran.append).ok
    assert g.call(s, "card.charge", {"holder": "A", "card": CARD, "amount": 500}, execute=ran.append).ok
    assert not g.call(s, "card.charge", {"holder": "A", "card": TEST_CARD, "amount": 5}, execute=ran.append).ok
    pending = g.submit(s, "card.charge", {"holder": "A", "card": CARD, "amount": 5000})
    g.approvals.approve(pending.decision_id, approver="carol", args_hash=pending.args_hash)
    redeemed = g.redeem(s, pending.decision_id, "card.charge", {"holder": "A", "card": CARD, "amount": 5000})
    assert redeemed.status == "allow"
    g.record_outcome(s, pending.decision_id, ok=False, error=f"declined: {CARD}")
    assert g.call(s, "kb.read", {"q": "refund policy"}, execute=ran.append).ok
    g.close()
    t.close()
    text = path.read_text()
    _no_secret(text, CARD, TEST_CARD)
    records = [json.loads(line) for line in text.splitlines()]
    steps = [(r["unmapped"]["kind"], r["unmapped"].get("decision")) for r in records]
    assert steps == [("session-start", None),
                     ("decision", "allow"), ("outcome", "allow"),
                     ("decision", "modify"), ("outcome", "modify"),
                     ("decision", "deny"),
                     ("decision", "step_up"), ("approval", "step_up"), ("outcome", "step_up"),
                     ("decision", "allow"), ("outcome", "allow"),
                     ("session-end", None)]
    assert t.dropped == 0 and t.failed == 0 and g.observer_errors == 0
    modify = records[3]
    assert modify["api"]["request"]["data"] == {"holder": "A", "card": REDACTED, "amount": 500}
    assert modify["unmapped"]["modified_params"]["card"] == REDACTED
    assert modify["unmapped"]["modified_params"]["amount"] == 100
    deny = records[5]
    assert deny["message"] == "test cards are refused" and deny["unmapped"]["rules"] == ["test-card"]
    assert records[7]["unmapped"]["approver"] == "carol" and records[8]["api"]["response"]["error"] == REDACTED
    # A tool without sensitive params keeps its params; every record names the policy and the principal.
    assert records[9]["api"]["request"]["data"] == {"q": "refund policy"}
    assert all(r["actor"]["user"]["uid"] == "alice" for r in records)
    digest = g.policy_ref.digest.hex()
    assert all(r["policy"]["uid"] == digest for r in records)
    ids = {r["metadata"]["uid"] for r in records}
    assert len(ids) == len(records)


# ---- aarmc gateway ---------------------------------------------------------------------------------------

GATEWAY_POLICY = """\
policy "gateway-telemetry" version "1"
default deny
labels public < internal
tool mail.read(folder: str = "INBOX") returns public
tool mail.send(to: email, subject: str, body: str sensitive) returns none effects external
tool admin.nuke(target: str) returns none effects destructive
allow "read" mail.read
allow "internal-mail" mail.send when params.to.domain == "corp.example"
"""
SECRET_BODY = "the merger closes on friday"


@pytest.fixture(scope="module")
def gateway_env(tmp_path_factory) -> dict[str, Path]:
    from aarmc.compile import compile_policy, write_artifact
    from aarmc.semantics.load import load_policy_text

    d = tmp_path_factory.mktemp("gateway-telemetry")
    author = keys.generate_keypair(d / "author.key", d / "author.pub")
    keys.generate_keypair(d / "gateway.key", d / "gateway.pub")
    idp = keys.generate_keypair(d / "idp.key", d / "idp.pub")
    (d / "alice.cwt").write_bytes(issue_identity(Identity(issuer="test-idp", principal="alice", agent="bot"),
                                                 idp, ttl_s=3600))
    loaded = load_policy_text(GATEWAY_POLICY, name="policy.aarm")
    assert loaded.policy is not None
    write_artifact(d / "policy.aarmc", compile_policy(loaded.policy, author).data)
    return {"dir": d}


def _gateway_args(env: dict[str, Path], run: Path, *extra: str) -> list[str]:
    d = env["dir"]
    return ["--policy", str(d / "policy.aarmc"), "--key", str(d / "author.pub"),
            "--receipt-key", str(d / "gateway.key"), "--receipts", str(run / "receipts.cbor"),
            "--approvals", str(run / "approvals.db"), "--identity", str(d / "alice.cwt"),
            "--identity-issuer", f"test-idp={d / 'idp.pub'}", *extra,
            "--", sys.executable, str(ROOT / "tests" / "mcp_servers" / "toolbox.py"),
            "--journal", str(run / "journal.jsonl")]


def test_the_gateway_exports_filtered_redacted_events(gateway_env, tmp_path):
    from mcp import ClientSession
    from mcp.shared.memory import create_client_server_memory_streams

    from aarmc.gateway.run import GatewayOptions, open_gateway

    d = gateway_env["dir"]
    out = tmp_path / "events.jsonl"
    options = GatewayOptions(
        policy=d / "policy.aarmc", policy_keys=(d / "author.pub",), receipts=tmp_path / "receipts.cbor",
        receipt_key=d / "gateway.key", approvals=tmp_path / "approvals.db", identity=d / "alice.cwt",
        identity_issuers=(("test-idp", d / "idp.pub"),), ocsf=out, telemetry_decisions=("allow", "deny"),
        telemetry_principals=("alice",),
        command=(sys.executable, str(ROOT / "tests" / "mcp_servers" / "toolbox.py"), "--journal",
                 str(tmp_path / "journal.jsonl")))

    async def scenario() -> None:
        with open(os.devnull, "w") as errlog:
            async with open_gateway(options, errlog=errlog) as gw:
                assert gw.telemetry is not None
                server = gw.server()
                async with create_client_server_memory_streams() as (client_streams, server_streams):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(lambda: server.run(*server_streams, server.create_initialization_options()))
                        async with ClientSession(*client_streams) as s:
                            await s.initialize()
                            assert not (await s.call_tool("mail.read", {})).isError
                            sent = await s.call_tool("mail.send", {"to": "bob@corp.example", "subject": "s",
                                                                   "body": SECRET_BODY})
                            assert not sent.isError
                            denied = await s.call_tool("mail.send", {"to": "eve@evil.example", "subject": "s",
                                                                     "body": SECRET_BODY})
                            assert denied.isError
                        tg.cancel_scope.cancel()

    anyio.run(scenario)
    text = out.read_text()
    _no_secret(text, SECRET_BODY)
    records = [json.loads(line) for line in text.splitlines()]
    # Filtered on allow and deny: the session start and end are not exported.
    assert [(r["unmapped"]["kind"], r["api"]["operation"], r["unmapped"]["decision"]) for r in records] == [
        ("decision", "mail.read", "allow"), ("outcome", "mail.read", "allow"),
        ("decision", "mail.send", "allow"), ("outcome", "mail.send", "allow"),
        ("decision", "mail.send", "deny")]
    assert records[2]["api"]["request"]["data"]["body"] == REDACTED
    assert all(r["actor"]["user"]["uid"] == "alice" for r in records)


def test_the_gateway_refuses_telemetry_it_cannot_set_up(gateway_env, tmp_path):
    from aarmc.cli_gateway import gateway

    for extra, message in ((("--ocsf", str(tmp_path / "no" / "dir" / "e.jsonl")), "cannot write ocsf events"),
                           (("--telemetry-decision", "deny"), "without an exporter"),
                           (("--ocsf", str(tmp_path / "e.jsonl"), "--telemetry-decision", "permit"),
                            "invalid value for '--telemetry-decision'")):
        result = CliRunner().invoke(gateway, _gateway_args(gateway_env, tmp_path, *extra))
        assert result.exit_code == 2, result.output
        assert message in result.output.lower() and "Traceback" not in result.output
    # Refused before the receipt log was touched: nothing to verify, nothing closed for good.
    assert not (tmp_path / "receipts.cbor").exists()


# ---- aarmc serve -----------------------------------------------------------------------------------------

SERVE = [sys.executable, "-c", "from aarmc.cli_serve import serve; serve.main(prog_name='aarmc serve')"]


class ServeKeys:
    def __init__(self, where: Path) -> None:
        from aarmc.compile.artifact import compile_policy
        from aarmc.semantics.load import load_policy_text

        self.dir = where
        author = keys.generate_keypair(where / "author.key", where / "author.pub")
        keys.generate_keypair(where / "receipts.key", where / "receipts.pub")
        self.issuer = keys.generate_keypair(where / "idp.key", where / "idp.pub")
        loaded = load_policy_text(POLICY)
        assert loaded.policy is not None
        (where / "policy.aarmc").write_bytes(compile_policy(loaded.policy, author, validate=False).data)

    def args(self, log: Path, *extra: str) -> list[str]:
        d = self.dir
        return [*SERVE, "--policy", str(d / "policy.aarmc"), "--key", str(d / "author.pub"),
                "--receipts", str(log), "--receipt-key", str(d / "receipts.key"),
                "--identity-issuer", f"idp.corp={d / 'idp.pub'}", "--listen", "127.0.0.1:0", *extra]

    def token(self, principal: str) -> str:
        import base64

        return base64.b64encode(issue_identity(Identity(issuer="idp.corp", principal=principal, agent="bot"),
                                               self.issuer, ttl_s=600)).decode()


@pytest.fixture(scope="module")
def serve_keys(tmp_path_factory) -> ServeKeys:
    return ServeKeys(tmp_path_factory.mktemp("serve-telemetry"))


def run_server(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
            return proc, m.group(1), lines
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines) + proc.stderr.read())


def serve_scenario(url: str, k: ServeKeys) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for principal in ("alice", "bob"):
            sid = client.post("/v1/sessions", json={"identity_token": k.token(principal)}).json()["session_id"]
            for amount, card in ((50, CARD), (5, TEST_CARD)):
                got = client.post(f"/v1/sessions/{sid}/decide", json={
                    "tool": "card.charge", "params": {"holder": "A", "card": card, "amount": amount}})
                assert got.status_code == 200, got.text


def test_serve_exports_ocsf_lines_filtered_by_principal(serve_keys, tmp_path):
    out = tmp_path / "events.jsonl"
    proc, url, lines = run_server(serve_keys.args(tmp_path / "r.log", "--ocsf", str(out),
                                                  "--telemetry-principal", "alice"))
    try:
        serve_scenario(url, serve_keys)
        with httpx.Client(base_url=url, timeout=30) as client:
            metrics = client.get("/metrics").text
        assert 'aarm_telemetry_events_total{result="filtered"}' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
    text = out.read_text()
    _no_secret(text, CARD, TEST_CARD)
    records = [json.loads(line) for line in text.splitlines()]
    assert {r["actor"]["user"]["uid"] for r in records} == {"alice"}
    # SIGTERM closed the session: its session-end was exported before the process left.
    assert [(r["unmapped"]["kind"], r["unmapped"].get("decision")) for r in records] == [
        ("session-start", None), ("decision", "allow"), ("decision", "deny"), ("session-end", None)]


def test_serve_refuses_an_unwritable_ocsf_file(serve_keys, tmp_path):
    done = subprocess.run(serve_keys.args(tmp_path / "r.log", "--ocsf", str(tmp_path / "no" / "e.jsonl")),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "cannot write OCSF events" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r.log").exists()


def test_serve_metrics_show_telemetry_counts(serve_keys, tmp_path):
    from aarm_runtime.engine import Engine
    from aarm_runtime.identity import IdentityVerifier, RevocationList
    from aarm_runtime.receipt_log import ReceiptLog

    from aarmc.serve import create_app

    t = Telemetry([Collect()], decisions=["deny"])
    engine = Engine.load((serve_keys.dir / "policy.aarmc").read_bytes(),
                         [keys.load_verify_key(serve_keys.dir / "author.pub")])
    log = ReceiptLog.create(tmp_path / "r.log", keys.load_signing_key(serve_keys.dir / "receipts.key"))
    g = Guard(engine, receipts=log, identity_verifier=IdentityVerifier({"idp.corp": serve_keys.issuer.verify_key},
                                                                       RevocationList()), observers=[t])
    client = TestClient(create_app(g, telemetry=t))
    sid = client.post("/v1/sessions", json={"identity_token": serve_keys.token("alice")}).json()["session_id"]
    client.post(f"/v1/sessions/{sid}/decide", json={"tool": "card.charge",
                                                    "params": {"holder": "A", "card": TEST_CARD, "amount": 5}})
    assert t.flush(10)
    samples = dict(re.findall(r'aarm_telemetry_events_total\{result="(\w+)"\} (\d+)', client.get("/metrics").text))
    assert samples == {"exported": "1", "failed": "0", "dropped": "0", "filtered": "1"}
    g.close()
    t.close()
    log.abandon()
