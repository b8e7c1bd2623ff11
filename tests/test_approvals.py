"""STEP_UP approvals and DEFER dependencies: by decision id, bound to the arguments, single use, timeouts."""

from __future__ import annotations

import threading
import time

import pytest

import guard_fixtures as gf
from aarm_runtime import receipts as R
from aarm_runtime.approvals import ApprovalError, ApprovalRequest, Approvals
from aarm_runtime.deferrals import ContextUpdate, DeferralError, DeferralRequest, Deferrals

CALM = {"drift": 0}
PAY = {"recipient": "bob", "amount": 5000, "subject": "rent"}


def request(decision_id="d1", deadline=160.0, args="ab" * 32):
    return ApprovalRequest(decision_id=decision_id, session_id="s1", action_id="a1", tool="bank.send_money",
                           args_hash=args, approvers=("finance-oncall",), rules=("big-transfer",), message="m",
                           requested_at=100.0, deadline=deadline)


# ---- the service on its own -----------------------------------------------------------------------


def test_an_approval_is_given_once_and_names_its_approver():
    clock = gf.Clock(100)
    a = Approvals(clock=clock)
    a.request(request())
    assert [r.decision_id for r in a.pending()] == ["d1"] and a.answer("d1") is None
    answer = a.approve("d1", approver="carol", args_hash="ab" * 32, reason="checked the invoice")
    assert (answer.verdict, answer.approver, answer.reason, answer.at) == ("approved", "carol",
                                                                         "checked the invoice", 100)
    assert a.pending() == [] and a.answer("d1") == answer and a.wait("d1", 0) == answer
    with pytest.raises(ApprovalError, match="already answered"):
        a.reject("d1", approver="dave")
    with pytest.raises(ApprovalError, match="no approval request"):
        a.approve("d2", approver="carol")
    with pytest.raises(ApprovalError, match="already queued"):
        a.request(request())


def test_an_approval_is_bound_to_the_argument_hash():
    a = Approvals(clock=gf.Clock(100))
    a.request(request())
    with pytest.raises(ApprovalError, match="requested for arguments"):
        a.approve("d1", approver="carol", args_hash="cd" * 32)
    assert a.answer("d1") is None  # still pending: the right arguments can still be approved
    assert a.approve("d1", approver="carol").verdict == "approved"


def test_a_late_approval_is_refused_and_the_request_times_out():
    clock = gf.Clock(100)
    a = Approvals(clock=clock)
    a.request(request(deadline=160))
    assert a.wait("d1", 0.01) is None
    clock.advance(60)
    with pytest.raises(ApprovalError, match="timed out"):
        a.approve("d1", approver="carol")
    assert a.answer("d1").verdict == "timeout" and a.answer("d1").approver == "aarm-runtime"
    assert a.expire("d1").verdict == "timeout"  # the first answer stands


def test_approvers_can_be_authorised_and_the_runtime_name_cannot_approve():
    a = Approvals(clock=gf.Clock(100),
                  authorize=lambda who, req: who in {"carol"} and "finance-oncall" in req.approvers)
    a.request(request())
    with pytest.raises(ApprovalError, match="may not answer for finance-oncall"):
        a.approve("d1", approver="mallory")
    with pytest.raises(ApprovalError, match="runtime's own name"):
        a.approve("d1", approver="aarm-runtime")
    with pytest.raises(ApprovalError, match="approver name is required"):
        a.approve("d1", approver=" ")
    assert a.approve("d1", approver="carol").approver == "carol"


def test_a_listener_that_fails_leaves_the_request_pending():
    a = Approvals(clock=gf.Clock(100))
    failures = []

    def listener(req, answer):
        if not failures:
            failures.append(answer)
            raise OSError("receipt log full")
    a.attach(listener)
    a.request(request())
    with pytest.raises(OSError, match="receipt log full"):
        a.approve("d1", approver="carol")
    assert a.answer("d1") is None and [r.decision_id for r in a.pending()] == ["d1"]
    assert a.approve("d1", approver="carol").verdict == "approved"


def test_concurrent_answers_one_wins():
    a = Approvals(clock=gf.Clock(100))
    a.request(request())
    results = []
    barrier = threading.Barrier(8)

    def answer(i):
        barrier.wait()
        try:
            results.append(("ok", (a.approve if i % 2 else a.reject)("d1", approver=f"p{i}").verdict))
        except ApprovalError:
            results.append(("refused", None))
    threads = [threading.Thread(target=answer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r[0] for r in results) == ["ok"] + ["refused"] * 7


def test_deferral_service_basics():
    d = Deferrals(clock=gf.Clock(0))
    req = DeferralRequest(decision_id="d1", session_id="s", action_id="a", tool="t.x", args_hash="00" * 32,
                          reason="absent-context", message="", rules=(), fields=("env.x",), requested_at=0,
                          deadline=10)
    d.request(req)
    with pytest.raises(DeferralError, match="needs env"):
        d.provide("d1", by="ops")
    with pytest.raises(DeferralError, match="`by`"):
        d.provide("d1", env={"x": 1}, by="")
    d.provide("d1", env={"x": 1}, by="ops")
    d.provide("d1", env={"y": 2}, risk={"drift": 0}, by="svc")
    update, denial = d.take("d1")
    assert update == ContextUpdate(env={"x": 1, "y": 2}, risk={"drift": 0}, by="ops, svc") and denial is None
    assert d.take("d1") == (None, None)
    d.deny("d1", by="ops", reason="no")
    with pytest.raises(DeferralError, match="denied by `ops`"):
        d.provide("d1", env={"x": 1}, by="ops")
    d.done("d1")
    assert d.pending() == [] and d.wait("d1", 0) is True


# ---- through the guard -----------------------------------------------------------------------------


def test_redeem_is_single_use_and_bound_to_the_arguments(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = g.open_session(gf.token("alice"))
    sub = g.submit(s, "bank.send_money", PAY, risk=CALM)
    assert sub.status == "pending" and sub.decision.decision == "step_up"
    assert g.redeem(s, sub.decision_id, "bank.send_money", PAY).status == "pending"  # not answered yet
    g.approvals.approve(sub.decision_id, approver="carol", args_hash=sub.args_hash)
    other = dict(PAY, recipient="mallory")
    mismatch = g.redeem(s, sub.decision_id, "bank.send_money", other)
    assert mismatch.status == "deny" and mismatch.error.reason == "approval-mismatch"
    first = g.redeem(s, sub.decision_id, "bank.send_money", PAY)
    assert first.status == "allow" and first.decision_id == sub.decision_id and first.params == PAY
    second = g.redeem(s, sub.decision_id, "bank.send_money", PAY)
    assert second.status == "deny" and second.error.reason == "approval-used"
    g.record_outcome(s, first.decision_id, ok=True, output={"tx": 1})
    receipts = gf.records(g.receipts.path)
    approval, outcome = gf.follow_ups(receipts, sub.decision_id)
    assert (approval.kind, approval.approver, outcome.kind) == (R.Kind.APPROVAL, "carol", R.Kind.OUTCOME)
    for refused in (mismatch, second):
        record = gf.decision_of(receipts, refused.decision_id)
        assert record.decision.effect == "deny" and record.action_id == sub.action_id
    # The refused redemption with other arguments names what it carried, not what was approved.
    assert gf.decision_of(receipts, mismatch.decision_id).action.params_digest == R.digest_json(other)


def test_unknown_or_unredeemable_decision_ids_are_denied_with_receipts(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = g.open_session(gf.token("alice"))
    other = g.open_session(gf.token("bob"))
    sub = g.submit(other, "bank.send_money", PAY, risk=CALM)
    allowed = g.submit(s, "email.read_inbox", {})
    stolen = g.redeem(s, sub.decision_id, "bank.send_money", PAY)
    assert stolen.status == "deny" and stolen.error.reason == "unknown-decision"
    again = g.redeem(s, allowed.decision_id, "email.read_inbox", {})
    assert again.status == "deny" and again.error.reason == "not-redeemable"
    receipts = gf.records(g.receipts.path)
    assert gf.decision_of(receipts, stolen.decision_id).session == s.id


def test_approval_timeout_in_the_non_blocking_flow(tmp_path):
    clock = gf.Clock()
    g = gf.guard("mail-assistant", tmp_path, clock=clock)
    s = g.open_session(gf.token("alice"))
    sub = g.submit(s, "bank.send_money", PAY, risk=CALM)
    assert sub.deadline == clock() + 15 * 60  # the policy's `timeout 15m`
    clock.advance(15 * 60)
    late = g.redeem(s, sub.decision_id, "bank.send_money", PAY)
    assert late.status == "deny" and late.error.reason == "approval-timeout"
    with pytest.raises(ApprovalError, match="already answered"):
        g.approvals.approve(sub.decision_id, approver="carol")
    [timeout] = gf.follow_ups(gf.records(g.receipts.path), sub.decision_id)
    assert timeout.resolution.verdict == "timeout"


def test_sweep_writes_timeouts_nobody_asked_for(tmp_path):
    clock = gf.Clock()
    g = gf.guard("mail-assistant", tmp_path, clock=clock, deferral_timeout_s=30)
    s = g.open_session(gf.token("alice"))
    step = g.submit(s, "bank.send_money", PAY, risk=CALM)
    defer = g.submit(s, "creds.rotate", {"service": "x"})
    clock.advance(20 * 60)
    g.sweep()
    assert s.pending_ids() == ()
    receipts = gf.records(g.receipts.path)
    assert [r.resolution.verdict for r in gf.follow_ups(receipts, step.decision_id)] == ["timeout"]
    assert [r.resolution.verdict for r in gf.follow_ups(receipts, defer.decision_id)] == ["timeout"]


def test_rejection_in_the_non_blocking_flow(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = g.open_session(gf.token("alice"))
    sub = g.submit(s, "bank.send_money", PAY, risk=CALM)
    g.approvals.reject(sub.decision_id, approver="dave", reason="unknown payee")
    denied = g.redeem(s, sub.decision_id, "bank.send_money", PAY)
    assert denied.status == "deny" and denied.error.reason == "rejected"
    assert "dave" in denied.error.message and "unknown payee" in denied.error.message


def test_later_actions_wait_for_a_pending_one_and_beyond_the_bound_are_denied(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, max_pending_per_session=3)
    s = g.open_session(gf.token("alice"))
    pay = g.submit(s, "bank.send_money", PAY, risk=CALM)
    q1 = g.submit(s, "db.query", {"sql": "select 1"})
    q2 = g.submit(s, "email.read_inbox", {})
    assert [x.decision.reason for x in (q1, q2)] == ["pending-dependency"] * 2
    assert all(x.status == "pending" for x in (q1, q2))
    q3 = g.submit(s, "db.query", {"sql": "select 3"})
    assert q3.status == "deny" and q3.decision.reason == "pending-limit"
    # A deny is a deny, pending or not.
    assert g.submit(s, "db.query", {"sql": "drop table t"}).decision.reason == "forbidden"
    assert g.redeem(s, q1.decision_id, "db.query", {"sql": "select 1"}).status == "pending"
    g.approvals.approve(pay.decision_id, approver="carol")
    # The approved step-up stays pending until redeemed: its effect is still to come.
    assert g.redeem(s, q1.decision_id, "db.query", {"sql": "select 1"}).status == "pending"
    assert g.redeem(s, pay.decision_id, "bank.send_money", PAY).status == "allow"
    r1 = g.redeem(s, q1.decision_id, "db.query", {"sql": "select 1"})
    assert r1.status == "allow" and r1.decision_id != q1.decision_id
    r2 = g.redeem(s, q2.decision_id, "email.read_inbox", {})
    assert r2.status == "allow"
    receipts = gf.records(g.receipts.path)
    [resolution] = gf.follow_ups(receipts, q1.decision_id)
    assert resolution.resolution.next_decision == r1.decision_id
    assert gf.decision_of(receipts, q1.decision_id).note == f"waits for {pay.decision_id}"
    # Both ran after the payment, in the order they were proposed.
    assert [e.tool for e in s.context.history] == ["bank.send_money", "db.query", "email.read_inbox"]


def test_a_pending_dependency_of_a_rejected_action_is_decided_again(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = g.open_session(gf.token("alice"))
    pay = g.submit(s, "bank.send_money", PAY, risk=CALM)
    q = g.submit(s, "db.query", {"sql": "select 1", "limit": 500})
    g.approvals.reject(pay.decision_id, approver="dave")
    again = g.redeem(s, q.decision_id, "db.query", {"sql": "select 1", "limit": 500})
    assert again.status == "modify" and again.params == {"sql": "select 1", "limit": 100}


def test_deny_a_deferred_action(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = g.open_session(gf.token("alice"))
    sub = g.submit(s, "creds.rotate", {"service": "db"})
    g.deferrals.deny(sub.decision_id, by="secops", reason="not today")
    denied = g.redeem(s, sub.decision_id, "creds.rotate", {"service": "db"})
    assert denied.status == "deny" and denied.error.reason == "deferral-denied"
    [resolution] = gf.follow_ups(gf.records(g.receipts.path), sub.decision_id)
    assert (resolution.resolution.verdict, resolution.approver, resolution.note) == ("denied", "secops", "not today")
    with pytest.raises(DeferralError):
        g.deferrals.deny(sub.decision_id, by="secops")


def test_redeeming_a_resolved_deferral_twice_is_denied(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = g.open_session(gf.token("alice"))
    sub = g.submit(s, "creds.rotate", {"service": "db"})
    g.deferrals.provide(sub.decision_id, env={"maintenance_window": False}, by="ops")
    again = g.redeem(s, sub.decision_id, "creds.rotate", {"service": "db"})
    # Outside the window the policy defers by rule: a new DEFER under a new id.
    assert again.status == "pending" and again.decision.reason == "rule" and again.decision_id != sub.decision_id
    twice = g.redeem(s, sub.decision_id, "creds.rotate", {"service": "db"})
    assert twice.status == "deny" and twice.error.reason == "deferral-used"
    g.deferrals.provide(again.decision_id, env={"maintenance_window": True}, by="ops")
    assert g.redeem(s, again.decision_id, "creds.rotate", {"service": "db"}).status == "allow"


def test_approval_for_a_closed_session_is_refused(tmp_path):
    g = gf.guard("mail-assistant", tmp_path)
    s = g.open_session(gf.token("alice"))
    sub = g.submit(s, "bank.send_money", PAY, risk=CALM)
    g.close_session(s)
    with pytest.raises(ApprovalError, match="already answered"):
        g.approvals.approve(sub.decision_id, approver="carol")


def test_the_sweeper_writes_timeouts_in_the_background(tmp_path):
    g = gf.guard("mail-assistant", tmp_path, clock=time.time, approval_timeout_s=0.05)
    s = g.open_session(gf.token("alice", now=time.time()))
    sub = g.submit(s, "bank.send_money", PAY, risk=CALM)
    g.start_sweeper(0.02)
    deadline = time.monotonic() + 5
    while s.pending_ids() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.pending_ids() == ()
    g.close()
    [timeout] = gf.follow_ups(gf.records(g.receipts.path), sub.decision_id)
    assert timeout.resolution.verdict == "timeout"
