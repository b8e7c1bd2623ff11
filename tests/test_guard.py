"""The enforcement point: the five decisions, fail-closed behaviour, identity binding, meta-tools, async, SDK.

Every test runs a real `Engine` on a real signed artifact compiled from
`specs/`, writes to a real receipt log file, and reads the receipts back
through the real verifier (`guard_fixtures.records` fails unless the log
verifies).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guard_fixtures as gf
from aarm_runtime import receipts as R
from aarm_runtime import values
from aarm_runtime.approvals import Approvals
from aarm_runtime.guard import (
    CallResult,
    Denied,
    Guard,
    GuardError,
    Pending,
    Session,
    _Prepared,
    args_hash,
    canonical_params,
)
from aarm_runtime.identity import RevocationList
from aarm_runtime.receipt_log import LogWriteError
from aarm_runtime.sdk import current_session, guarded, use_session
from aarm_runtime.verify import Status

CALM = {"drift": 0, "injection": 0}
MAIL = {"to": "bob@corp.example", "subject": "notes", "body": "the notes"}


def open_alice(g: Guard, **kw) -> Session:
    kw.setdefault("intent", {"text": "send the notes to bob@corp.example", "entities": ["bob@corp.example"]})
    return g.open_session(gf.token("alice"), **kw)


# ---- ALLOW / DENY / MODIFY -----------------------------------------------------------------------


def test_allow_executes_after_its_receipt_and_records_the_outcome(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)
    seen_receipts: list[int] = []

    def send(params):
        # The decision receipt is in the log before the tool runs.
        seen_receipts.append(len(gf.records(g.receipts.path)))
        return {"id": "m-1"}

    result = g.call(s, "email.send", MAIL, execute=send, risk=CALM)
    assert isinstance(result, CallResult)
    assert result.ok and result.value == {"id": "m-1"} and result.error is None
    assert result.params_executed == MAIL
    receipts = gf.records(g.receipts.path)
    assert seen_receipts == [3]  # log-open, session-start, decision
    decision = gf.decision_of(receipts, result.decision_id)
    assert decision.decision.effect == "allow" and decision.decision.rules == ("internal-mail",)
    assert decision.action.tool == "email.send"
    assert decision.action.params_digest == R.digest_bytes(values.canonical_json(MAIL).encode())
    assert decision.identity.principal == "alice" and decision.identity.agent == "mail-bot"
    assert decision.identity.assertion_digest is not None
    assert decision.policy.policy == "mail-assistant" and decision.policy.version == "4"
    [outcome] = gf.follow_ups(receipts, result.decision_id)
    assert outcome.kind == R.Kind.OUTCOME and outcome.outcome.ok
    assert outcome.outcome.output_digest == R.digest_json({"id": "m-1"})
    assert gf.closed_and_verified(g) is Status.COMPLETE


def test_deny_never_executes_and_says_why(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)
    tool = gf.Runs()
    result = g.call(s, "db.query", {"sql": "DROP TABLE users"}, execute=tool)
    assert not result.ok and tool.calls == []
    assert isinstance(result.error, Denied)
    assert result.error.reason == "forbidden" and result.error.rules == ("no-drop",)
    assert result.error.decision_id == result.decision_id
    assert "destructive DDL" in result.error.message
    with pytest.raises(Denied) as raised:
        g.call(s, "db.query", {"sql": "drop table x"}, execute=tool, raise_on_deny=True)
    assert raised.value.reason == "forbidden" and tool.calls == []
    receipts = gf.records(g.receipts.path)
    record = gf.decision_of(receipts, result.decision_id)
    assert record.decision.effect == "deny" and record.decision.reason == "forbidden"
    assert gf.follow_ups(receipts, result.decision_id) == []  # no outcome: nothing ran


def test_unknown_tool_and_invalid_params_are_denied_with_receipts(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)
    tool = gf.Runs()
    a = g.call(s, "email.nuke", {}, execute=tool)
    b = g.call(s, "email.send", {"to": "not an address", "subject": "x", "body": "y"}, execute=tool, risk=CALM)
    c = g.call(s, "email.send", {"to": object(), "subject": "x", "body": "y"}, execute=tool, risk=CALM)
    assert tool.calls == []
    assert (a.error.reason, b.error.reason, c.error.reason) == ("unknown-tool", "invalid-params", "invalid-params")
    receipts = gf.records(g.receipts.path)
    for r in (a, b, c):
        assert gf.decision_of(receipts, r.decision_id).decision.effect == "deny"


def test_modify_executes_with_the_new_params_and_the_receipt_shows_both(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)
    tool = gf.Runs(result=[{"n": 1}])
    result = g.call(s, "db.query", {"sql": "select * from t", "limit": 5000}, execute=tool)
    assert result.ok and result.decision.decision == "modify"
    assert tool.calls == [{"sql": "select * from t", "limit": 100}] == [result.params_executed]
    record = gf.decision_of(gf.records(g.receipts.path), result.decision_id)
    assert record.action.params_digest == R.digest_json({"sql": "select * from t", "limit": 5000})
    assert record.decision.params_digest == R.digest_json({"sql": "select * from t", "limit": 100})
    assert record.decision.rules == ("cap-rows",)


def test_include_params_puts_raw_params_only_for_tools_without_sensitive_params(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, include_params=True)
    s = open_alice(g)
    q = g.submit(s, "db.query", {"sql": "select 1", "limit": 500})
    m = g.submit(s, "email.send", MAIL, risk=CALM)  # `body` is sensitive
    receipts = gf.records(g.receipts.path)
    query = gf.decision_of(receipts, q.decision_id)
    assert query.action.params_json == '{"limit":500,"sql":"select 1"}'
    assert query.decision.params_json == '{"limit":100,"sql":"select 1"}'
    assert gf.decision_of(receipts, m.decision_id).action.params_json is None


# ---- STEP_UP (blocking) -------------------------------------------------------------------------


def _approve_when_pending(g: Guard, approver: str = "carol", reject: bool = False) -> threading.Thread:
    def run():
        for _ in range(2000):
            pending = g.approvals.pending()
            if pending:
                if reject:
                    g.approvals.reject(pending[0].decision_id, approver=approver, reason="not expected")
                else:
                    g.approvals.approve(pending[0].decision_id, approver=approver, args_hash=pending[0].args_hash)
                return
            threading.Event().wait(0.005)
    t = threading.Thread(target=run)
    t.start()
    return t


def test_step_up_blocks_until_approved_then_executes_with_the_approver_in_the_receipt(tmp_path):
    # Real time: another thread answers while `call` blocks.
    g = gf.guard("mail-assistant", tmp_path, clock=time.time, approval_timeout_s=30)
    s = g.open_session(gf.token("alice", now=time.time()), intent={"text": "pay bob"})
    tool = gf.Runs(result={"tx": "t-1"})
    approver = _approve_when_pending(g, "carol")
    result = g.call(s, "bank.send_money", {"recipient": "bob", "amount": 5000, "subject": "rent"}, execute=tool,
                    risk=CALM)
    approver.join()
    assert result.ok and len(tool.calls) == 1 and result.decision.decision == "step_up"
    receipts = gf.records(g.receipts.path)
    assert gf.decision_of(receipts, result.decision_id).decision.approvers == ("finance-oncall",)
    approval, outcome = gf.follow_ups(receipts, result.decision_id)
    assert approval.kind == R.Kind.APPROVAL and approval.approver == "carol"
    assert approval.resolution.verdict == "approved"
    assert outcome.kind == R.Kind.OUTCOME and outcome.outcome.ok


def test_step_up_rejected_is_denied_and_the_rejecter_is_recorded(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, clock=time.time, approval_timeout_s=30)
    s = g.open_session(gf.token("alice", now=time.time()), intent={"text": "pay bob"})
    tool = gf.Runs()
    t = _approve_when_pending(g, "dave", reject=True)
    result = g.call(s, "bank.send_money", {"recipient": "bob", "amount": 5000, "subject": "rent"}, execute=tool,
                    risk=CALM)
    t.join()
    assert not result.ok and tool.calls == [] and result.error.reason == "rejected"
    assert "dave" in result.error.message
    [approval] = gf.follow_ups(gf.records(g.receipts.path), result.decision_id)
    assert (approval.resolution.verdict, approval.approver, approval.note) == ("rejected", "dave", "not expected")


def test_step_up_without_an_answer_is_denied_at_the_timeout(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, clock=time.time, approval_timeout_s=0.2)
    s = g.open_session(gf.token("alice", now=time.time()), intent={"text": "pay bob"})
    tool = gf.Runs()
    result = g.call(s, "bank.send_money", {"recipient": "bob", "amount": 5000, "subject": "rent"}, execute=tool,
                    risk=CALM)
    assert not result.ok and tool.calls == [] and result.error.reason == "approval-timeout"
    [timeout] = gf.follow_ups(gf.records(g.receipts.path), result.decision_id)
    assert timeout.resolution.verdict == "timeout" and timeout.approver == g.name
    with pytest.raises(Exception, match="already answered"):
        g.approvals.approve(result.decision_id, approver="late")


def test_block_false_returns_pending_for_the_caller_to_retry(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)
    tool = gf.Runs()
    params = {"recipient": "bob", "amount": 5000, "subject": "rent"}
    result = g.call(s, "bank.send_money", params, execute=tool, risk=CALM, block=False)
    assert not result.ok and isinstance(result.error, Pending) and tool.calls == []
    assert str(result.error) == f"pending approval {result.decision_id}"
    g.approvals.approve(result.decision_id, approver="carol")
    sub = g.redeem(s, result.decision_id, "bank.send_money", params)
    assert sub.status == "allow" and sub.params == params


# ---- DEFER (blocking) ----------------------------------------------------------------------------


def test_defer_is_resolved_by_a_resolver_under_a_new_decision_id(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, deferral_timeout_s=5)
    s = open_alice(g)
    asked = []

    def window(request):
        asked.append(request)
        return {"env": {"maintenance_window": True}}
    g.add_resolver(window, name="change-calendar")
    tool = gf.Runs()
    result = g.call(s, "creds.rotate", {"service": "db"}, execute=tool)
    assert result.ok and tool.calls == [{"service": "db"}]
    [request] = asked
    assert request.reason == "absent-context" and request.fields == ("env.maintenance_window",)
    receipts = gf.records(g.receipts.path)
    deferred = gf.decision_of(receipts, request.decision_id)
    assert deferred.decision.effect == "defer"
    [resolution] = gf.follow_ups(receipts, request.decision_id)
    assert resolution.kind == R.Kind.DEFERRAL_RESOLUTION
    assert resolution.resolution.verdict == "resolved" and resolution.approver == "change-calendar"
    assert resolution.resolution.next_decision == result.decision_id != request.decision_id
    again = gf.decision_of(receipts, result.decision_id)
    assert again.decision.effect == "allow" and again.decision.rules == ("rotate-in-window",)
    assert again.action_id == deferred.action_id
    assert s.env == {"maintenance_window": True}


def test_defer_without_context_is_denied_at_the_timeout(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, clock=time.time, deferral_timeout_s=0.2)
    s = g.open_session(gf.token("alice", now=time.time()))
    g.add_resolver(lambda request: None, name="knows-nothing")
    tool = gf.Runs()
    result = g.call(s, "creds.rotate", {"service": "db"}, execute=tool)
    assert not result.ok and tool.calls == [] and result.error.reason == "deferral-timeout"
    [resolution] = gf.follow_ups(gf.records(g.receipts.path), result.decision_id)
    assert resolution.resolution.verdict == "timeout"


def test_a_resolver_that_raises_denies_the_action(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, deferral_timeout_s=5)
    s = open_alice(g)

    def broken(request):
        raise ConnectionError("cmdb unreachable")
    g.add_resolver(broken)
    tool = gf.Runs()
    result = g.call(s, "creds.rotate", {"service": "db"}, execute=tool)
    assert not result.ok and tool.calls == [] and result.error.reason == "deferral-denied"
    [resolution] = gf.follow_ups(gf.records(g.receipts.path), result.decision_id)
    assert resolution.resolution.verdict == "denied" and "cmdb unreachable" in resolution.note


def test_defer_resolved_by_provide_from_another_thread(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, clock=time.time, deferral_timeout_s=10)
    s = g.open_session(gf.token("alice", now=time.time()))

    def operator():
        for _ in range(2000):
            got = g.deferrals.pending()
            if got:
                g.deferrals.provide(got[0].decision_id, env={"maintenance_window": True}, by="secrets-team")
                return
            threading.Event().wait(0.005)
    t = threading.Thread(target=operator)
    t.start()
    result = g.call(s, "creds.rotate", {"service": "db"}, execute=gf.Runs())
    t.join()
    assert result.ok
    resolutions = gf.of_kind(gf.records(g.receipts.path), R.Kind.DEFERRAL_RESOLUTION)
    assert [(r.approver, r.resolution.verdict) for r in resolutions] == [("secrets-team", "resolved")]


# ---- meta-tools --------------------------------------------------------------------------------


def test_meta_tool_receipts_carry_the_wrapper_and_the_real_tool_and_modify_is_rewrapped(tmp_path):
    g = gf.guard("coding-agent", tmp_path)
    s = g.open_session(gf.token("dev", agent="coder", role="developer", scopes=None), env={"sandboxed": True})
    tool = gf.Runs(result="ok")
    call = {"server": "shell", "name": "shell.exec", "args": {"cmd": "make test", "timeout_s": 99999}}
    result = g.call(s, "mcp.invoke", call, execute=tool, risk=CALM)
    assert result.ok and result.decision.decision == "modify" and result.decision.wrapper == "mcp.invoke"
    assert tool.calls == [{"server": "shell", "name": "shell.exec",
                           "args": {"cmd": "make test", "cwd": "/workspace", "timeout_s": 1800}}]
    denied = g.call(s, "mcp.invoke", {"server": "shell", "name": "shell.exec", "args": {"cmd": "rm -rf /"}},
                    execute=tool, risk=CALM)
    assert not denied.ok and len(tool.calls) == 1
    receipts = gf.records(g.receipts.path)
    for r in (result, denied):
        action = gf.decision_of(receipts, r.decision_id).action
        assert (action.tool, action.wrapper) == ("shell.exec", "mcp.invoke")
    # The executed wrapped call counts as the real tool in the session.
    assert [e.tool for e in s.context.history] == ["shell.exec"]


# ---- identity (R6) -----------------------------------------------------------------------------


def test_missing_identity_denies_every_action_with_receipts(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = g.open_session(None, intent={"text": "x"})
    tool = gf.Runs()
    result = g.call(s, "email.read_inbox", {}, execute=tool)
    assert not result.ok and tool.calls == [] and result.error.reason == "identity-missing"
    receipts = gf.records(g.receipts.path)
    [start] = gf.of_kind(receipts, R.Kind.SESSION_START)
    assert start.identity is None and "identity-missing" in start.note
    assert gf.decision_of(receipts, result.decision_id).decision.reason == "identity-missing"


@pytest.mark.parametrize("bad, reason", [
    (lambda: gf.token("mallory", key=gf.AUTHOR), "identity-untrusted-issuer"),
    (lambda: b"\xd2\x84\x40\xa0\x40\x40", "identity-malformed"),
    (lambda: gf.token("alice", ttl_s=10, now=gf.T0 - 3600), "identity-expired"),
])
def test_invalid_identity_denies(tmp_path, bad, reason):
    g = gf.guard("mail-assistant", tmp_path)
    s = g.open_session(bad())
    result = g.call(s, "email.read_inbox", {}, execute=gf.Runs())
    assert not result.ok and result.error.reason == reason
    assert gf.decision_of(gf.records(g.receipts.path), result.decision_id).identity is None


def test_identity_is_reverified_at_every_decision(tmp_path):
    revocation = RevocationList()
    clock = gf.Clock()
    g = gf.guard("mail-assistant", tmp_path, revocation=revocation, clock=clock)
    s = g.open_session(gf.token("alice", ttl_s=600))
    tool = gf.Runs()
    assert g.call(s, "email.read_inbox", {}, execute=tool).ok
    revocation.revoke(subject="alice")
    revoked = g.call(s, "email.read_inbox", {}, execute=tool)
    assert not revoked.ok and revoked.error.reason == "identity-revoked" and len(tool.calls) == 1
    s2 = g.open_session(gf.token("bob", ttl_s=600))
    clock.advance(700)
    expired = g.call(s2, "email.read_inbox", {}, execute=tool)
    assert expired.error.reason == "identity-expired" and len(tool.calls) == 1


def test_identity_revoked_while_waiting_for_approval_denies_after_the_approval(tmp_path):
    revocation = RevocationList()
    g = gf.guard("mail-assistant", tmp_path, revocation=revocation)
    s = open_alice(g)
    params = {"recipient": "bob", "amount": 5000, "subject": "rent"}
    sub = g.submit(s, "bank.send_money", params, risk=CALM)
    assert sub.status == "pending"
    revocation.revoke(subject="alice")
    g.approvals.approve(sub.decision_id, approver="carol")
    after = g.redeem(s, sub.decision_id, "bank.send_money", params)
    assert after.status == "deny" and after.error.reason == "identity-revoked"
    receipts = gf.records(g.receipts.path)
    refused = gf.decision_of(receipts, after.decision_id)
    assert refused.action_id == sub.action_id and refused.decision.effect == "deny"
    assert [r.kind for r in gf.follow_ups(receipts, sub.decision_id)] == [R.Kind.APPROVAL]  # no outcome


# ---- fail closed ------------------------------------------------------------------------------


def test_no_policy_denies_everything_with_a_receipt(tmp_path):
    g = gf.guard(None, tmp_path)
    s = open_alice(g)
    tool = gf.Runs()
    result = g.call(s, "email.read_inbox", {}, execute=tool)
    assert not result.ok and tool.calls == [] and result.error.reason == "policy-unavailable"
    record = gf.decision_of(gf.records(g.receipts.path), result.decision_id)
    assert record.decision.effect == "deny" and record.policy is None


def test_an_invalid_artifact_denies_everything_with_a_receipt_naming_the_load_error(tmp_path):
    path = tmp_path / "policy.aarmc"
    data = bytearray(gf.artifact("mail-assistant"))
    data[-5] ^= 0x01  # one flipped bit in the signature
    path.write_bytes(bytes(data))
    log = gf.new_log(tmp_path)
    g = Guard.from_artifact(path, [gf.AUTHOR.verify_key], receipts=log, identity_verifier=gf.verifier(),
                            clock=gf.Clock())
    assert g.engine is None
    s = open_alice(g)
    tool = gf.Runs()
    result = g.call(s, "email.read_inbox", {}, execute=tool)
    assert not result.ok and tool.calls == [] and result.error.reason == "policy-unavailable"
    assert "could not be loaded" in gf.decision_of(gf.records(log.path), result.decision_id).decision.message
    missing = Guard.from_artifact(tmp_path / "nope.aarmc", [gf.AUTHOR.verify_key],
                                  receipts=gf.new_log(tmp_path, name="b"), identity_verifier=gf.verifier(),
                                  clock=gf.Clock())
    assert missing.call(open_alice(missing), "email.read_inbox", {}, execute=tool).error.reason == "policy-unavailable"


def _fds_of(path: Path) -> list[int]:
    target = str(path.resolve())
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == target:
                out.append(int(name))
        except OSError:
            continue
    return out


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_an_unwritable_receipt_log_stops_every_action(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, fsync="always")
    s = open_alice(g)
    tool = gf.Runs()
    assert g.call(s, "email.read_inbox", {}, execute=tool).ok
    # The disk fills up: every write to the log's descriptor now fails with ENOSPC (an OS-level failure).
    full = os.open("/dev/full", os.O_WRONLY)
    [fd] = _fds_of(g.receipts.path)
    os.dup2(full, fd)
    os.close(full)
    denied = g.call(s, "email.read_inbox", {}, execute=tool)
    assert not denied.ok and len(tool.calls) == 1
    assert denied.error.reason == "internal-error" and "no receipt could be written" in denied.error.message
    assert g.submit(s, "email.read_inbox", {}).status == "deny"
    with pytest.raises(LogWriteError):
        g.receipts.append(R.session_end_record(s.id))
    g.receipts.abandon()


class FailingClock(gf.Clock):
    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def __call__(self) -> float:
        if self.broken:
            raise OSError("clock source unavailable")
        return super().__call__()


def test_an_internal_exception_denies_with_a_receipt(tmp_path):
    clock = FailingClock()
    g = gf.guard("mail-assistant", tmp_path, clock=clock)
    s = open_alice(g)
    clock.broken = True
    tool = gf.Runs()
    result = g.call(s, "email.read_inbox", {}, execute=tool)
    assert not result.ok and tool.calls == [] and result.error.reason == "internal-error"
    assert "clock source unavailable" in result.error.message
    clock.broken = False
    record = gf.decision_of(gf.records(g.receipts.path), result.decision_id)
    assert record.decision.effect == "deny" and record.decision.reason == "internal-error"


class DownApprovals(Approvals):
    """An approvals service whose backend is unreachable."""

    def request(self, request):
        raise ConnectionError("approval queue unreachable")


def test_approval_service_down_denies_with_a_receipt(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, approvals=DownApprovals())
    s = open_alice(g)
    tool = gf.Runs()
    result = g.call(s, "bank.send_money", {"recipient": "bob", "amount": 5000, "subject": "x"}, execute=tool,
                    risk=CALM)
    assert not result.ok and tool.calls == [] and result.error.reason == "approval-unavailable"
    [cancel] = gf.follow_ups(gf.records(g.receipts.path), result.decision_id)
    assert cancel.resolution.verdict == "cancelled" and "unreachable" in cancel.note


def test_session_ttl_and_action_cap_deny_with_receipts(tmp_path):
    clock = gf.Clock()
    g = gf.guard("mail-assistant", tmp_path, clock=clock, session_ttl_s=60, max_actions_per_session=2)
    s = open_alice(g)
    tool = gf.Runs()
    assert g.call(s, "email.read_inbox", {}, execute=tool).ok
    assert g.call(s, "email.read_inbox", {}, execute=tool).ok
    capped = g.call(s, "email.read_inbox", {}, execute=tool)
    assert capped.error.reason == "action-cap"
    s2 = open_alice(g)
    clock.advance(61)
    expired = g.call(s2, "email.read_inbox", {}, execute=tool)
    assert expired.error.reason == "session-expired" and len(tool.calls) == 2
    receipts = gf.records(g.receipts.path)
    assert gf.decision_of(receipts, capped.decision_id).decision.reason == "action-cap"
    assert gf.decision_of(receipts, expired.decision_id).decision.reason == "session-expired"


def test_guard_construction_refuses_unsafe_defaults(tmp_path):
    with pytest.raises(ValueError, match="identity verifier is required"):
        Guard(gf.engine("mail-assistant"), receipts=gf.new_log(tmp_path))
    with pytest.raises(TypeError, match="receipts"):
        Guard(gf.engine("mail-assistant"), receipts=None, unsafe_no_identity=True)
    g = Guard(gf.engine("mail-assistant"), receipts=gf.new_log(tmp_path, name="x"), identity_verifier=gf.verifier())
    with pytest.raises(ValueError, match="unsafe_no_identity"):
        g.open_session(identity={"principal": "alice"})


def test_record_outcome_refuses_what_did_not_run(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)
    denied = g.submit(s, "db.query", {"sql": "drop table t"})
    allowed = g.submit(s, "db.query", {"sql": "select 1"})
    pending = g.submit(s, "bank.send_money", {"recipient": "b", "amount": 5000, "subject": "x"}, risk=CALM)
    # While the step-up is pending, a later action of the session waits for it.
    assert g.submit(s, "db.query", {"sql": "select 2"}).decision.reason == "pending-dependency"
    with pytest.raises(GuardError, match="did not authorise"):
        g.record_outcome(s, denied.decision_id, ok=True)
    with pytest.raises(GuardError, match="did not authorise"):
        g.record_outcome(s, pending.decision_id, ok=True)
    with pytest.raises(GuardError, match="not a decision"):
        g.record_outcome(s, "d-nope", ok=True)
    g.record_outcome(s, allowed.decision_id, ok=True, output=[{"x": 1}])
    with pytest.raises(GuardError, match="already recorded"):
        g.record_outcome(s, allowed.decision_id, ok=True)


def test_a_tool_that_raises_is_recorded_as_failed_and_the_exception_propagates(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)

    def boom(params):
        raise RuntimeError("smtp down")
    with pytest.raises(RuntimeError, match="smtp down"):
        g.call(s, "email.read_inbox", {}, execute=boom)
    [outcome] = gf.of_kind(gf.records(g.receipts.path), R.Kind.OUTCOME)
    assert not outcome.outcome.ok and "smtp down" in outcome.outcome.error
    assert s.context.history[0].has_output is False


# ---- concurrency ---------------------------------------------------------------------------------


def test_concurrent_calls_on_one_session_keep_one_consistent_history(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, fsync="group", max_actions_per_session=10_000)
    s = open_alice(g)
    ran = []
    lock = threading.Lock()

    def read(params):
        with lock:
            ran.append(params["folder"])
        return f"mail in {params['folder']}"

    def worker(i):
        for j in range(15):
            g.call(s, "email.read_inbox", {"folder": f"f{i}-{j}"}, execute=read)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ran) == 60 == len(s.context.history) == s.actions
    receipts = gf.records(g.receipts.path)
    assert len(gf.of_kind(receipts, R.Kind.DECISION)) == 60 == len(gf.of_kind(receipts, R.Kind.OUTCOME))
    assert s.log.replay(s.log.entries) == s.context_head


# ---- async and the SDK ----------------------------------------------------------------------------


def test_acall_runs_coroutines_and_plain_functions(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)

    async def fetch(params):
        await asyncio.sleep(0)
        return "inbox"

    async def main():
        a = await g.acall(s, "email.read_inbox", {}, execute=fetch)
        b = await g.acall(s, "db.query", {"sql": "select 1", "limit": 1000}, execute=lambda p: p["limit"])
        c = await g.acall(s, "db.query", {"sql": "drop table t"}, execute=fetch)
        return a, b, c
    a, b, c = asyncio.run(main())
    assert (a.ok, a.value) == (True, "inbox")
    assert (b.ok, b.value) == (True, 100)
    assert not c.ok and c.error.reason == "forbidden"


def test_acall_waits_for_an_approval_without_blocking_the_loop(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)
    params = {"recipient": "bob", "amount": 5000, "subject": "rent"}

    async def approver():
        while not g.approvals.pending():
            await asyncio.sleep(0.001)
        g.approvals.approve(g.approvals.pending()[0].decision_id, approver="carol")

    async def main():
        task = asyncio.create_task(approver())
        result = await g.acall(s, "bank.send_money", params, execute=lambda p: "paid", risk=CALM)
        await task
        return result
    result = asyncio.run(main())
    assert result.ok and result.value == "paid"


def test_sdk_decorator_guards_sync_and_async_functions(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)
    sent = []

    @guarded(g, "email.send", risk=CALM)
    def send_email(to, subject, body, cc=()):
        sent.append((to, subject))
        return "queued"

    @guarded(g, "db.query")
    async def query(sql, limit=100, **extra):
        return (sql, limit)

    with pytest.raises(GuardError, match="no session"):
        send_email(to="bob@corp.example", subject="s", body="b")
    with use_session(s):
        assert current_session.get() is s
        assert send_email(to="bob@corp.example", subject="s", body="b") == "queued"
        with pytest.raises(Denied) as raised:
            send_email(to="eve@evil.example", subject="s", body="b")
        assert raised.value.reason == "default"
        assert asyncio.run(query("select 1", limit=5000)) == ("select 1", 100)
    assert current_session.get() is None
    assert send_email(to="bob@corp.example", subject="t", body="b", aarm_session=s) == "queued"
    assert sent == [("bob@corp.example", "s"), ("bob@corp.example", "t")]
    with pytest.raises(TypeError, match="positional-only"):
        guarded(g, "x.y")(lambda a, /: a)
    with pytest.raises(TypeError, match=r"\*args"):
        guarded(g, "x.y")(lambda *args: args)


def test_sdk_block_false_raises_pending(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)

    @guarded(g, "bank.send_money", session=s, risk=CALM, block=False)
    def pay(recipient, amount, subject):
        return "paid"
    with pytest.raises(Pending) as raised:
        pay(recipient="bob", amount=5000, subject="rent")
    assert raised.value.decision.decision == "step_up"


# ---- canonical params ----------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
              st.text(max_size=8), st.floats(allow_nan=False, allow_infinity=False),
              st.decimals(allow_nan=False, allow_infinity=False, places=3)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=12,
)


def _floats_as_decimals(v):
    if isinstance(v, float):
        return Decimal(repr(v))
    if isinstance(v, dict):
        return {k: _floats_as_decimals(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_floats_as_decimals(x) for x in v]
    return v


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonical_params_is_values_canonical_json(value):
    assert canonical_params(value) == values.canonical_json(_floats_as_decimals(value))


_ascii = st.text(st.characters(max_codepoint=127), max_size=8)
flat_params = st.dictionaries(  # the shape `_Prepared` encodes by its fast path
    _ascii,
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30), _ascii),
    min_size=2, max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(flat_params, json_values))
def test_prepared_params_text_is_canonical_params(value):
    # Flat dicts of ASCII take json's C encoder directly; everything else `canonical_params`' path.
    prepared = _Prepared(value)
    assert prepared.error is None
    assert prepared.text == canonical_params(value)
    assert prepared.digest == hashlib.sha256(prepared.text.encode("utf-8")).digest()


def test_args_hash_binds_tool_and_params():
    d1 = R.digest_json({"a": 1})
    d2 = R.digest_json({"a": 2})
    assert args_hash("x.y", d1) != args_hash("x.y", d2) != args_hash("x.z", d2)
    assert len(args_hash("x.y", d1)) == 64


def test_submit_asks_the_resolvers_at_once(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = open_alice(g)
    g.add_resolver(lambda request: {"env": {"maintenance_window": True}}, name="calendar")
    sub = g.submit(s, "creds.rotate", {"service": "db"})
    assert sub.status == "allow" and sub.decision.rules == ("rotate-in-window",)
    receipts = gf.records(g.receipts.path)
    deferred, again = gf.of_kind(receipts, R.Kind.DECISION)
    assert deferred.decision.effect == "defer" and again.decision_id == sub.decision_id


def test_a_token_bound_to_a_session_opens_that_session_and_no_other(tmp_path):
    from aarm_runtime.identity import Identity, issue_identity

    bound = issue_identity(Identity(issuer="idp.corp", principal="alice", agent="mail-bot", session="s-42"),
                           gf.IDP, ttl_s=7200, now=gf.T0)
    g = gf.guard("mail-assistant", tmp_path)
    s = g.open_session(bound)
    assert s.id == "s-42" and s.identity_error is None
    assert s.identity_json["session"] == "s-42"
    other = g.open_session(bound, session_id="s-7")
    assert other.identity_error is not None and other.identity_error[0] == "identity-session-mismatch"
    sub = g.submit(other, "email.read_inbox", {})
    assert sub.status == "deny" and sub.decision.reason == "identity-session-mismatch"
    assert "bound to session `s-42`, not `s-7`" in sub.decision.message
    assert g.submit(s, "email.read_inbox", {}).status == "allow"


def test_a_modify_runs_the_tool_with_exact_values_not_the_records_strings(tmp_path):
    policy = '''policy "m" version "1"
default deny
tool pay.transfer(payee: str, amount: decimal, fees: list[decimal] = [], note: str = "") returns none
modify "cap" pay.transfer when params.amount > 500 set amount = 500.5, fees = [0.25, 1]
'''
    g = Guard(gf.engine_text(policy), receipts=gf.new_log(tmp_path), unsafe_no_identity=True)
    s = g.open_session()
    got = g.call(s, "pay.transfer", {"payee": "acme", "amount": 900, "note": "inv 7"}, lambda p: p)
    assert got.decision.decision == "modify"
    # The record keeps decimals as exact strings; the tool gets Decimals, and what the rule left alone as given.
    assert got.decision.params["amount"] == "500.5"
    assert got.value == {"payee": "acme", "amount": Decimal("500.5"), "fees": [Decimal("0.25"), Decimal("1")],
                         "note": "inv 7"}
    assert type(got.value["amount"]) is Decimal and type(got.value["note"]) is str


def test_a_credential_minter_scopes_one_credential_to_each_authorised_action(tmp_path):
    """AARM R9: the hook is called once per authorised action, with that action only, before it runs."""
    from aarm_runtime.credentials import CredentialError, CredentialRequest

    asked: list[CredentialRequest] = []

    def mint(request: CredentialRequest) -> dict:
        asked.append(request)
        if request.params.get("to") == "ops@corp.example":
            raise RuntimeError("vault sealed")
        return {"token": f"tok-{request.decision_id}", "scope": request.tool}

    g = gf.guard("mail-assistant", tmp_path, credentials=mint)
    s = g.open_session(gf.token(), intent={"text": "send the minutes to bob@corp.example"})
    ran: list[tuple] = []
    send = {"to": "bob@corp.example", "subject": "minutes", "body": "x"}
    got = g.call(s, "email.send", send, lambda params, credential: ran.append((params, credential)) or "sent",
                 {"drift": 0})
    assert got.ok and ran == [(send, {"token": f"tok-{got.decision_id}", "scope": "email.send"})]
    [req] = asked
    assert (req.tool, req.params, req.decision, req.rules) == ("email.send", send, "allow", ("internal-mail",))
    assert req.identity["principal"] == "alice" and req.expires_at == s.expires_at
    # A denied action asks for nothing; a minter that fails means the tool never runs.
    denied = g.call(s, "shell.exec", {"cmd": "rm -rf /"}, lambda p, c: ran.append("shell"))
    assert not denied.ok and len(asked) == 1
    failed = g.call(s, "email.send", {**send, "to": "ops@corp.example"}, lambda p, c: ran.append("ops"),
                    {"drift": 0})
    assert not failed.ok and isinstance(failed.error, CredentialError) and "vault sealed" in str(failed.error)
    assert len(ran) == 1
    outcome = [r.record for r in gf.records(g.receipts.path) if r.record.ref == failed.decision_id]
    assert [(o.kind, o.outcome.ok) for o in outcome] == [(R.Kind.OUTCOME, False)]
    # The credential never enters the context log: only that one was minted, and its type.
    entries = [e for e in s.log.decoded() if e[1] == "credential"]
    assert [e[3:] for e in entries] == [[got.decision_id, "dict"]]
    with pytest.raises(CredentialError, match="no authorised action"):
        g.mint_credential(s, got.decision_id)  # its outcome is recorded: nothing waits to run
