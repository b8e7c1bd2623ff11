"""`aarmc timeline` over several replicas' logs of one shared session.

Two real guards over the compiled mail-assistant spec share a
`MemorySessionStore`, each with its own signed receipt log; the logs' clock
is the test's, so the times (and the ties between replicas) are known. The
session is opened on A; a STEP_UP decided on A is approved through A's
approvals and redeemed on B, which first carries the decision and the
approval over into its own log, then records the outcome.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from aarm_runtime import receipts as R
from aarm_runtime.guard import ALLOW, DENY, PENDING, STEP_UP, Guard
from aarm_runtime.receipt_log import ReceiptLog
from aarm_runtime.session_store import MemorySessionStore
from aarm_runtime.timeline import build_timeline, log_labels, merge_timelines, render_human, timeline_command
from aarm_runtime.verify import EXIT_FAILED, EXIT_OK, EXIT_USAGE, read_verified
from aarmc.cli import cli
from guard_fixtures import RECEIPT_KEY, Clock, engine, records, token, verifier

SESSION = "s-shared"
INTENT = {"text": "prepare the board meeting with bob@corp.example", "entities": ["bob@corp.example"]}
INVITE = {"title": "board prep", "start": "09:00", "attendees": ["bob@corp.example", "dave@partner.example"]}


@dataclass
class Replicas:
    a: Path
    b: Path
    pub: Path
    mail: str  # decided and executed on A
    inbox: str  # decided and executed on B
    step_up: str  # decided and approved on A, redeemed and executed on B
    shell: str  # denied on B, at the same instant as the step-up on A


def _guard(path: Path, clock: Clock, store: MemorySessionStore, name: str) -> Guard:
    log = ReceiptLog.create(path, RECEIPT_KEY, fsync="none", checkpoint_interval_s=None,
                            clock=lambda: round(clock() * 1_000_000_000))
    return Guard(engine("mail-assistant"), receipts=log, identity_verifier=verifier(), clock=clock,
                 session_store=store, name=name)


@pytest.fixture
def replicas(tmp_path: Path) -> Replicas:
    clock, store = Clock(), MemorySessionStore()
    a, b = _guard(tmp_path / "a.cbor", clock, store, "a"), _guard(tmp_path / "b.cbor", clock, store, "b")
    sa = a.open_session(token(), intent=INTENT, session_id=SESSION)
    clock.advance(1)
    mail = a.submit(sa, "email.send", {"to": "bob@corp.example", "subject": "agenda", "body": "x"}, {"drift": 0})
    assert mail.status == ALLOW
    a.record_outcome(sa, mail.decision_id, ok=True)
    clock.advance(1)
    sb = b.session(SESSION)
    inbox = b.submit(sb, "email.read_inbox", {}, None)
    assert inbox.status == ALLOW
    b.record_outcome(sb, inbox.decision_id, ok=True, output="nothing new")
    clock.advance(1)
    up = a.submit(sa, "calendar.create_event", INVITE, {"drift": 0})
    assert (up.status, up.decision.decision) == (PENDING, STEP_UP)
    shell = b.submit(sb, "shell.exec", {"cmd": "rm -rf /"}, None)  # same instant as the step-up
    assert shell.status == DENY
    clock.advance(1)
    a.approvals.approve(up.decision_id, "mailbox-owner")
    clock.advance(1)
    redeemed = b.redeem(sb, up.decision_id, "calendar.create_event", INVITE)
    assert redeemed.status == ALLOW
    b.record_outcome(sb, up.decision_id, ok=True, output="event-1")
    clock.advance(1)
    b.close_session(sb, note="meeting prepared")
    for g in (a, b):
        g.close()
        g.receipts.close()
    pub = tmp_path / "receipts.pub"
    pub.write_text(RECEIPT_KEY.verify_key.hex() + "\n")
    return Replicas(a=tmp_path / "a.cbor", b=tmp_path / "b.cbor", pub=pub, mail=mail.decision_id,
                    inbox=inbox.decision_id, step_up=up.decision_id, shell=shell.decision_id)


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def seq_of(path: Path, kind: R.Kind, decision_id: str, *, carried: bool = False) -> int:
    """The seq of the one record of *kind* about *decision_id* in a log (original or carried-over copy)."""
    found = [r.seq for r in records(path, allow_open=False) if r.kind == kind
             and decision_id in (r.record.decision_id, r.record.ref)
             and (r.record.note or "").startswith("carried over:") == carried]
    assert len(found) == 1, found
    return found[0]


def tamper(path: Path, item: int) -> None:
    """Flip one byte inside the *item*-th item of a log (a record's signed payload)."""
    data = bytearray(path.read_bytes())
    spans, _ = R.split_items(bytes(data))
    data[spans[item][0] + 40] ^= 1
    path.write_bytes(bytes(data))


def test_the_logs_hold_what_the_replicas_did(replicas: Replicas) -> None:
    # The premise of the merge: B's log has its own copies of A's step-up and approval.
    assert seq_of(replicas.b, R.Kind.DECISION, replicas.step_up, carried=True)
    assert seq_of(replicas.b, R.Kind.APPROVAL, replicas.step_up, carried=True)
    assert seq_of(replicas.a, R.Kind.DECISION, replicas.step_up)
    assert seq_of(replicas.b, R.Kind.OUTCOME, replicas.step_up)


def test_the_step_up_is_one_step_with_its_decision_and_approval_from_a_and_its_outcome_from_b(
        replicas: Replicas) -> None:
    got = run("timeline", replicas.a, replicas.b, "--key", replicas.pub)
    assert got.exit_code == 0, got.output
    text = got.output
    assert text.count(": COMPLETE") == 2
    assert text.startswith("log a.cbor ") and "\nlog b.cbor " in text
    decided = seq_of(replicas.a, R.Kind.DECISION, replicas.step_up)
    approved = seq_of(replicas.a, R.Kind.APPROVAL, replicas.step_up)
    outcome = seq_of(replicas.b, R.Kind.OUTCOME, replicas.step_up)
    heads = [line for line in text.splitlines() if f"decision {replicas.step_up}" in line]
    assert len(heads) == 1 and heads[0].startswith(f"  [a.cbor#{decided}] "), heads
    block = text.split(heads[0], 1)[1].split("\n  [", 1)[0]
    approvals = [line for line in block.splitlines() if line.startswith("      approval")]
    assert approvals == [approvals[0]] and approvals[0].endswith(f"[a.cbor#{approved}]"), approvals
    assert "carried" not in approvals[0]
    assert any(line.startswith("      outcome   ok") and line.endswith(f"[b.cbor#{outcome}]")
               for line in block.splitlines()), block
    copy_d = seq_of(replicas.b, R.Kind.DECISION, replicas.step_up, carried=True)
    copy_a = seq_of(replicas.b, R.Kind.APPROVAL, replicas.step_up, carried=True)
    assert (f"      copies    decision [b.cbor#{copy_d}] (carried over), approval [b.cbor#{copy_a}] (carried over)"
            in block.splitlines())
    # Every decision once, in time order; the tie at the step-up's instant goes to the log given first.
    order = [line.split("decision ")[1].split()[0] for line in text.splitlines() if line.startswith("  [")]
    assert order == [replicas.mail, replicas.inbox, replicas.step_up, replicas.shell]
    # Both replicas, in the order they came to the session; the session ended on B.
    [start_a] = [r.seq for r in records(replicas.a, allow_open=False) if r.kind == R.Kind.SESSION_START]
    lines = text.splitlines()
    served = [line for line in lines if line.startswith("  replica ")]
    assert [line.split()[1:3] for line in served] == [["a.cbor", "opened"], ["b.cbor", "joined"]]
    assert served[0].endswith(f"[a.cbor#{start_a}]")
    end = [r.seq for r in records(replicas.b, allow_open=False) if r.kind == R.Kind.SESSION_END]
    assert any(line.startswith("  ended ") and line.endswith(f"[b.cbor#{end[0]}]: meeting prepared")
               for line in lines), lines


def test_ties_between_replicas_follow_the_order_the_logs_are_given_in(replicas: Replicas) -> None:
    both = merge_timelines([(replicas.b, read_verified(replicas.b, [RECEIPT_KEY.verify_key])),
                            (replicas.a, read_verified(replicas.a, [RECEIPT_KEY.verify_key]))])
    [session] = both.sessions
    assert [s.decision_id for s in session.steps] == [replicas.mail, replicas.inbox, replicas.shell,
                                                      replicas.step_up]
    step_up = next(s for s in session.steps if s.decision_id == replicas.step_up)
    # Given second, A's log still supplies the original decision and approval.
    assert (step_up.log, step_up.carried, step_up.approval.log, step_up.outcome_log) == ("a.cbor", False, "a.cbor",
                                                                                          "b.cbor")


def test_json_lists_the_logs_and_names_the_log_of_every_record(replicas: Replicas) -> None:
    got = run("timeline", replicas.a, replicas.b, "--key", replicas.pub, "--format", "json")
    assert got.exit_code == 0, got.output
    data = json.loads(got.output)
    assert set(data) == {"ok", "logs", "sessions"} and data["ok"] is True
    assert [(g["log"], g["path"], g["verdict"]["status"], g["first_bad_index"]) for g in data["logs"]] == [
        ("a.cbor", str(replicas.a), "COMPLETE", None), ("b.cbor", str(replicas.b), "COMPLETE", None)]
    assert [e["kind"] for e in data["logs"][1]["events"]] == ["log-open", "log-close"]
    [session] = data["sessions"]
    assert [(r["log"], r["role"]) for r in session["replicas"]] == [("a.cbor", "opened"), ("b.cbor", "joined")]
    assert session["replicas"][1]["note"].startswith("joined:")
    assert (session["end_log"], session["end_note"]) == ("b.cbor", "meeting prepared")
    steps = {s["decision_id"]: s for s in session["steps"]}
    assert len(session["steps"]) == len(steps) == 4
    assert {d: s["log"] for d, s in steps.items()} == {replicas.mail: "a.cbor", replicas.inbox: "b.cbor",
                                                       replicas.step_up: "a.cbor", replicas.shell: "b.cbor"}
    up = steps[replicas.step_up]
    assert up["decided"]["decision"] == "step_up" and up["carried"] is False and up["note"] is None
    assert up["seq"] == seq_of(replicas.a, R.Kind.DECISION, replicas.step_up)
    assert (up["approval"]["log"], up["approval"]["carried"], up["approval"]["approver"]) == (
        "a.cbor", False, "mailbox-owner")
    assert up["approval"]["seq"] == seq_of(replicas.a, R.Kind.APPROVAL, replicas.step_up)
    assert (up["outcome"]["log"], up["outcome"]["seq"]) == ("b.cbor", seq_of(replicas.b, R.Kind.OUTCOME,
                                                                            replicas.step_up))
    assert [(c["kind"], c["log"], c["carried"]) for c in up["copies"]] == [("decision", "b.cbor", True),
                                                                           ("approval", "b.cbor", True)]
    assert steps[replicas.inbox]["outcome"]["log"] == "b.cbor" and steps[replicas.mail]["copies"] == []


def test_a_tampered_second_log_fails_but_the_first_logs_steps_are_still_shown(replicas: Replicas) -> None:
    outcome = seq_of(replicas.b, R.Kind.OUTCOME, replicas.step_up)
    tamper(replicas.b, outcome)  # no checkpoint before the close: item i is record i
    got = run("timeline", replicas.a, replicas.b, "--key", replicas.pub)
    assert got.exit_code == 1, got.output
    text = got.output
    assert "log a.cbor " in text and ": COMPLETE" in text
    assert f"verification stopped at item {outcome} " in text
    # A's steps, and B's verified prefix (its own decisions before the bad record).
    for decision in (replicas.mail, replicas.step_up, replicas.inbox, replicas.shell):
        assert text.count(f"decision {decision}") == 1, decision
    block = text.split(f"decision {replicas.step_up}", 1)[1].split("\n  [", 1)[0]
    assert "outcome   ok" not in block  # the outcome was the tampered record
    data = json.loads(run("timeline", replicas.a, replicas.b, "--key", replicas.pub, "--format", "json").output)
    assert data["ok"] is False
    assert [(g["verdict"]["ok"], g["first_bad_index"]) for g in data["logs"]] == [(True, None), (False, outcome)]


def test_only_carried_copies_left_are_used_and_marked(replicas: Replicas) -> None:
    decided = seq_of(replicas.a, R.Kind.DECISION, replicas.step_up)
    tamper(replicas.a, decided)
    out = io.StringIO()
    assert timeline_command([replicas.a, replicas.b], [replicas.pub], out=out, err=io.StringIO()) == EXIT_FAILED
    text = out.getvalue()
    heads = [line for line in text.splitlines() if f"decision {replicas.step_up}" in line]
    copy = seq_of(replicas.b, R.Kind.DECISION, replicas.step_up, carried=True)
    assert len(heads) == 1 and heads[0].startswith(f"  [b.cbor#{copy}] ") and "carried-over copy" in heads[0]
    out = io.StringIO()
    timeline_command([replicas.a, replicas.b], [replicas.pub], fmt="json", out=out, err=io.StringIO())
    up = next(s for s in json.loads(out.getvalue())["sessions"][0]["steps"] if s["decision_id"] == replicas.step_up)
    assert (up["log"], up["carried"], up["approval"]["log"], up["approval"]["carried"]) == ("b.cbor", True,
                                                                                           "b.cbor", True)
    assert up["copies"] == [] and up["outcome"]["log"] == "b.cbor"


def test_anchor_with_two_logs_and_a_log_given_twice_are_usage_errors(replicas: Replicas) -> None:
    root = read_verified(replicas.a, [RECEIPT_KEY.verify_key]).verdict
    anchor = f"{root.tree_size}:{root.root.hex()}"
    assert run("timeline", replicas.a, "--key", replicas.pub, "--anchor", anchor).exit_code == 0
    got = run("timeline", replicas.a, replicas.b, "--key", replicas.pub, "--anchor", anchor)
    assert got.exit_code == 2
    assert "--anchor checks one log, but 2 were given" in got.output and "log a.cbor" not in got.output
    twice = run("timeline", replicas.a, replicas.a.parent / "." / "a.cbor", "--key", replicas.pub)
    assert twice.exit_code == 2 and "is given twice" in twice.output
    err = io.StringIO()
    assert timeline_command([replicas.a, replicas.b], [], out=io.StringIO(), err=err) == EXIT_USAGE
    assert "no trusted key" in err.getvalue()


def test_session_filter_over_several_logs(replicas: Replicas) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert timeline_command([replicas.a, replicas.b], [replicas.pub], session=SESSION, out=out, err=err) == EXIT_OK
    assert f"session {SESSION}:" in out.getvalue()
    assert timeline_command([replicas.a, replicas.b], [replicas.pub], session="nobody", out=io.StringIO(),
                            err=err) == EXIT_FAILED
    assert f"no session `nobody` among the verified records of `{replicas.a}`, `{replicas.b}`" in err.getvalue()


def test_a_single_log_keeps_the_single_log_output(replicas: Replicas) -> None:
    got = run("timeline", replicas.b, "--key", replicas.pub)
    assert got.exit_code == 0
    assert got.output == render_human(build_timeline(read_verified(replicas.b, [RECEIPT_KEY.verify_key]))) + "\n"
    assert "b.cbor" not in got.output and "replica" not in got.output and "copies" not in got.output
    # Alone, B's log shows the step-up from its carried-over copy, with its seq as before: `[n]`.
    copy = seq_of(replicas.b, R.Kind.DECISION, replicas.step_up, carried=True)
    assert f"  [{copy}] " in got.output
    data = json.loads(run("timeline", replicas.b, "--key", replicas.pub, "--format", "json").output)
    assert set(data) == {"log_id", "verdict", "events", "sessions"}
    step = data["sessions"][0]["steps"][0]
    assert "log" not in step and "copies" not in step and "replicas" not in data["sessions"][0]


def test_log_labels_tell_same_named_logs_apart() -> None:
    assert log_labels(["east/r.cbor", "west/r.cbor"]) == ["east/r.cbor", "west/r.cbor"]
    assert log_labels(["x/east/r.cbor", "y/east/r.cbor", "b.cbor"]) == ["x/east/r.cbor", "y/east/r.cbor", "b.cbor"]
    assert log_labels(["r.cbor", "r.cbor"]) == ["r.cbor", "r.cbor(2)"]


def test_help_shows_the_several_logs_form() -> None:
    got = run("timeline", "--help")
    assert got.exit_code == 0
    assert "LOG [LOG ...]" in got.output and "[a.cbor#17]" in got.output and "--anchor" in got.output
