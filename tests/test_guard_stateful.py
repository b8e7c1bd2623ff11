"""A hypothesis state machine over guarded sessions: submit, execute, record, approve, reject, provide,
deny, time out, sweep, redeem (and close at the end) — against a real engine and a real receipt log.

Invariants after every step:

- nothing executes unless its decision record says ALLOW or MODIFY, or it is a STEP_UP whose approval
  record (``approved``) is already in the log; no decision id is executed twice;
- every decision id has exactly one `decision` record, and every approval, deferral resolution and
  outcome record refers to a decision record that precedes it;
- the log verifies (`verify.read_verified`; open logs as UNTERMINATED), and once closed it is COMPLETE.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, multiple, rule

import guard_fixtures as gf
from aarm_runtime import receipts as R
from aarm_runtime.approvals import ApprovalError
from aarm_runtime.deferrals import DeferralError
from aarm_runtime.guard import GuardError
from aarm_runtime.verify import Status, read_verified, verify_log

CALM = {"drift": 0}
ACTIONS = [
    ("email.read_inbox", {}, None),                                                   # allow
    ("db.query", {"sql": "select 1"}, None),                                           # allow
    ("db.query", {"sql": "select 2", "limit": 500}, None),                             # modify
    ("db.query", {"sql": "drop table users"}, None),                                   # deny (forbid)
    ("email.send", {"to": "eve@evil.example", "subject": "s", "body": "b"}, CALM),     # deny (default)
    ("email.send", {"to": "bob@corp.example", "subject": "s", "body": "b"}, CALM),     # allow, or deny after pii
    ("bank.send_money", {"recipient": "bob", "amount": 5000, "subject": "x"}, CALM),  # step_up
    ("bank.send_money", {"recipient": "ann", "amount": 9000, "subject": "y"}, CALM),  # step_up
    ("creds.rotate", {"service": "db"}, None),                                         # defer (absent env)
    ("email.send", {"to": "bob@corp.example", "subject": "s", "body": "b"}, None),     # defer (absent drift)
]


class GuardMachine(RuleBasedStateMachine):
    pending = Bundle("pending")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="guard-sm-"))
        self.clock = gf.Clock()
        self.guard = gf.guard("mail-assistant", self.dir, clock=self.clock, max_pending_per_session=3,
                              session_ttl_s=None)
        self.sessions = [self.guard.open_session(gf.token(p, ttl_s=10**7), session_id=f"s-{p}",
                                                 intent={"text": "mail bob@corp.example", "entities": []})
                         for p in ("alice", "bob")]
        self.executed: list[str] = []          # decision ids whose action ran, in order
        self.unrecorded: list[tuple[int, str]] = []  # ran, outcome not yet recorded

    # ---- helpers ------------------------------------------------------------------------------

    def _ran(self, si: int, sub) -> None:
        assert sub.status in ("allow", "modify") and sub.params is not None
        self.check_authorised(sub.decision_id)
        assert sub.decision_id not in self.executed, "a decision executed twice"
        self.executed.append(sub.decision_id)
        self.unrecorded.append((si, sub.decision_id))

    def _receipts(self) -> list[R.Receipt]:
        got = read_verified(self.guard.receipts.path, [gf.RECEIPT_KEY.verify_key], allow_open=True)
        assert got.verdict.ok, got.verdict.describe()
        return list(got.receipts)

    def check_authorised(self, decision_id: str) -> None:
        receipts = self._receipts()
        decisions = [r for r in receipts if r.kind == R.Kind.DECISION and r.record.decision_id == decision_id]
        assert len(decisions) == 1
        effect = decisions[0].record.decision.effect
        if effect == "step_up":
            approvals = [r.record for r in receipts if r.kind == R.Kind.APPROVAL and r.record.ref == decision_id]
            assert [a.resolution.verdict for a in approvals] == ["approved"], "step-up ran without an approval"
        else:
            assert effect in ("allow", "modify"), f"ran a {effect}"

    # ---- rules --------------------------------------------------------------------------------

    @rule(target=pending, si=st.integers(0, 1), which=st.integers(0, len(ACTIONS) - 1))
    def submit(self, si, which):
        tool, params, risk = ACTIONS[which]
        sub = self.guard.submit(self.sessions[si], tool, params, risk)
        if sub.status in ("allow", "modify"):
            self._ran(si, sub)
        elif sub.status == "deny":
            assert sub.error is not None and sub.params is None
        else:
            return (si, sub.decision_id, tool, params, sub.decision.decision)
        return multiple()

    @rule(data=st.data())
    def record_outcome(self, data):
        if not self.unrecorded:
            return
        si, did = self.unrecorded.pop(data.draw(st.integers(0, len(self.unrecorded) - 1)))
        ok = data.draw(st.booleans())
        self.guard.record_outcome(self.sessions[si], did, ok=ok,
                                  output=data.draw(st.sampled_from(["text eve@evil.example", {"n": 1}, None])))

    @rule(item=pending, approve=st.booleans())
    def answer(self, item, approve):
        if item[4] != "step_up":
            return
        try:
            if approve:
                self.guard.approvals.approve(item[1], approver="carol")
            else:
                self.guard.approvals.reject(item[1], approver="dave")
        except ApprovalError:
            pass  # already answered, timed out, or the session closed

    @rule(item=pending, window=st.booleans(), deny=st.booleans(), in_session=st.booleans())
    def resolve(self, item, window, deny, in_session):
        if item[4] != "defer":
            return
        # Through the deferral service, or kept with the session (`Guard.provide`, as replicas use it).
        session = self.sessions[item[0]]
        try:
            if deny and in_session:
                self.guard.deny_deferral(session, item[1], by="ops")
            elif deny:
                self.guard.deferrals.deny(item[1], by="ops")
            elif in_session:
                self.guard.provide(session, item[1], env={"maintenance_window": window}, risk=CALM, by="ops")
            else:
                self.guard.deferrals.provide(item[1], env={"maintenance_window": window}, risk=CALM, by="ops")
        except DeferralError:
            pass

    @rule(target=pending, item=consumes(pending), tamper=st.booleans())
    def redeem(self, item, tamper):
        si, did, tool, params, _ = item
        used = dict(params, subject="changed") if tamper and "subject" in params else params
        sub = self.guard.redeem(self.sessions[si], did, tool, used)
        if sub.status in ("allow", "modify"):
            assert used is params, "a redemption with other arguments was allowed"
            self._ran(si, sub)
            return multiple()
        if sub.status == "pending":
            return (si, sub.decision_id, tool, params, sub.decision.decision)
        assert sub.error is not None
        # A refused tampered redemption leaves the original open for the right arguments.
        return item if used is not params else multiple()

    @rule(seconds=st.sampled_from([1, 60, 600, 1800]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def sweep(self):
        self.guard.sweep()

    # ---- invariants ---------------------------------------------------------------------------

    @invariant()
    def log_is_consistent(self):
        receipts = self._receipts()
        seen: set[str] = set()
        for r in receipts:
            rec = r.record
            if r.kind == R.Kind.DECISION:
                assert rec.decision_id not in seen, f"two decision records for {rec.decision_id}"
                seen.add(rec.decision_id)
            elif r.kind in (R.Kind.APPROVAL, R.Kind.DEFERRAL_RESOLUTION, R.Kind.OUTCOME):
                assert rec.ref in seen, f"{r.kind.label} before its decision {rec.ref}"
        for did in self.executed:
            assert did in seen

    @invariant()
    def nothing_pending_is_executed(self):
        pending = {d for s in self.sessions for d in s.pending_ids()}
        assert not pending & set(self.executed)

    def teardown(self):
        try:
            self.guard.close()
            for si, did in self.unrecorded:
                try:
                    self.guard.record_outcome(self.sessions[si], did, ok=True)
                except GuardError:
                    pass
            self.guard.receipts.close()
            assert verify_log(self.guard.receipts.path, [gf.RECEIPT_KEY.verify_key]).status is Status.COMPLETE
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


GuardMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=50, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_guard_state_machine = GuardMachine.TestCase


class SlowGuardMachine(GuardMachine):
    pass


SlowGuardMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
test_guard_state_machine_long = pytest.mark.slow(SlowGuardMachine.TestCase)
