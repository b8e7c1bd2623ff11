"""Approvals answered from another process: `SqliteApprovals` and `RedisApprovals`, one contract.

The owner (the guard's side) runs in the test process; operators run in real
subprocesses (`python -c`), as `aarmc approve` does. The listener stands in
for the guard's receipt writer: it records what it was told, and can be made
to fail like an unwritable receipt log. Every test that is not about the
SQLite file runs on both implementations (`backend`), Redis on a real
redis-server (see `conftest.redis_url`).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from aarm_runtime.approvals import ApprovalError, ApprovalRequest
from aarm_runtime.approvals_store import SqliteApprovals

ROOT = Path(__file__).resolve().parents[1]


class Backend:
    """Where the queue lives; `make` opens an instance on it here, `ctor` is the same in another process."""

    def __init__(self, kind: str, tmp_path: Path, redis_url: str | None) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.db = tmp_path / "approvals.db"
            self.imports = "from aarm_runtime.approvals_store import SqliteApprovals"
            self._ctor = f"SqliteApprovals({str(self.db)!r}, {{}})"
        else:
            self.url, self.prefix = redis_url, f"t-{uuid.uuid4().hex}:"
            self.imports = "from aarm_runtime.approvals_redis import RedisApprovals"
            self._ctor = f"RedisApprovals({redis_url!r}, prefix={self.prefix!r}, {{}})"

    def ctor(self, kwargs: str = "") -> str:
        return self._ctor.format(kwargs)

    def make(self, **kwargs):
        if self.kind == "sqlite":
            return SqliteApprovals(self.db, **kwargs)
        from aarm_runtime.approvals_redis import RedisApprovals

        return RedisApprovals(self.url, prefix=self.prefix, **kwargs)

    def age_owners(self, seconds: float) -> None:
        """Make every guard's last heartbeat *seconds* older."""
        if self.kind == "sqlite":
            raw = sqlite3.connect(self.db)
            raw.execute("UPDATE owners SET heartbeat = heartbeat - ?", (seconds,))
            raw.commit()
            raw.close()
            return
        client = self._client()
        key = f"{self.prefix}{{approvals}}:owners"
        for owner, beat in client.hgetall(key).items():
            beat = float(beat)
            client.hset(key, owner, beat - seconds if beat > 0 else beat + seconds)
        client.close()

    def owners(self) -> int:
        if self.kind == "sqlite":
            return sqlite3.connect(self.db).execute("SELECT count(*) FROM owners").fetchone()[0]
        client = self._client()
        try:
            return client.hlen(f"{self.prefix}{{approvals}}:owners")
        finally:
            client.close()

    def _client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def cleanup(self) -> None:
        if self.kind == "redis":  # the server may be a developer's own: leave nothing behind
            client = self._client()
            keys = list(client.scan_iter(match=self.prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    b = Backend(request.param, tmp_path, url)
    yield b
    b.cleanup()


def _request(decision_id: str = "d1", *, deadline: float | None = None, params=None) -> ApprovalRequest:
    now = time.time()
    return ApprovalRequest(decision_id=decision_id, session_id="s1", action_id="a1", tool="bank.send_money",
                           args_hash="ab" * 32, approvers=("finance-oncall",), rules=("big-transfer",),
                           message="step-up required by rule `big-transfer`", requested_at=now,
                           deadline=now + 600 if deadline is None else deadline, principal="alice", params=params)


class Recorder:
    """The guard's listener: remembers every answer; `fail` makes it raise like an unwritable log."""

    def __init__(self) -> None:
        self.answers: list = []
        self.fail: str | None = None
        self.lock = threading.Lock()

    def __call__(self, request, answer) -> None:
        if self.fail:
            raise OSError(self.fail)
        with self.lock:
            self.answers.append((request.decision_id, answer.verdict, answer.approver))


@pytest.fixture
def owner(backend):
    recorder = Recorder()
    store = backend.make(poll_interval_s=0.02, confirm_timeout_s=3.0)
    store.attach(recorder)
    store.recorder = recorder
    yield store
    store.close()


def _operator(backend: Backend, script: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run `script` in another process with `store` = an approvals queue on *backend*."""
    code = textwrap.dedent(f"""
        import json, sys
        from aarm_runtime.approvals import ApprovalError
        {backend.imports}
        store = {backend.ctor("poll_interval_s=0.02, confirm_timeout_s=10.0")}
        try:
    """) + textwrap.indent(textwrap.dedent(script), "    ") + textwrap.dedent("""
        except ApprovalError as err:
            print("refused:", err)
            sys.exit(1)
        finally:
            store.close()
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_another_process_approves_and_the_owner_records_it_first(owner, backend):
    owner.request(_request(params={"recipient": "Acme GmbH", "amount": "5000"}))
    assert owner.answer("d1") is None
    done = _operator(backend, """
        a = store.approve("d1", "alice", reason="invoice checked")
        print(a.verdict, a.approver, a.reason)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["approved", "alice", "invoice", "checked"]
    # The listener (the receipt) saw it before the operator's command returned.
    assert owner.recorder.answers == [("d1", "approved", "alice")]
    answer = owner.answer("d1")
    assert (answer.verdict, answer.approver, answer.args_hash) == ("approved", "alice", "ab" * 32)
    assert owner.pending() == []


def test_reject_from_another_process(owner, backend):
    owner.request(_request())
    done = _operator(backend, 'print(store.reject("d1", "bob", reason="not ours").verdict)')
    assert done.stdout.strip() == "rejected"
    assert owner.answer("d1").verdict == "rejected"
    assert owner.recorder.answers == [("d1", "rejected", "bob")]


def test_single_answer(owner, backend):
    owner.request(_request())
    owner.approve("d1", "alice")
    done = _operator(backend, 'store.reject("d1", "mallory")')
    assert done.returncode == 1
    assert "already answered (approved by `alice`)" in done.stdout
    assert owner.answer("d1").verdict == "approved"
    assert owner.recorder.answers == [("d1", "approved", "alice")]


def test_concurrent_operators_exactly_one_wins(owner, backend):
    owner.request(_request())
    procs = []
    for who in ("alice", "bob", "carol"):
        script = textwrap.dedent(f"""
            import sys
            from aarm_runtime.approvals import ApprovalError
            {backend.imports}
            store = {backend.ctor("poll_interval_s=0.02, confirm_timeout_s=10.0")}
            try:
                print(store.approve("d1", {who!r}).approver)
            except ApprovalError as err:
                print("refused:", err); sys.exit(1)
        """)
        procs.append(subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT))
    results = [(p.wait(timeout=30), p.stdout.read()) for p in procs]
    winners = [out.strip() for rc, out in results if rc == 0]
    assert len(winners) == 1, results
    assert owner.answer("d1").approver == winners[0]
    assert len(owner.recorder.answers) == 1


def test_args_hash_binds_the_approval(owner, backend):
    owner.request(_request())
    done = _operator(backend, 'store.approve("d1", "alice", args_hash="cd" * 32)')
    assert done.returncode == 1 and "was requested for arguments" in done.stdout
    assert owner.answer("d1") is None
    assert owner.approve("d1", "alice", args_hash="ab" * 32).verdict == "approved"


def test_an_unrecorded_answer_does_not_count(owner, backend):
    owner.request(_request())
    owner.recorder.fail = "No space left on device"
    done = _operator(backend, 'store.approve("d1", "alice")')
    assert done.returncode == 1
    assert "could not be recorded: No space left on device" in done.stdout
    assert owner.answer("d1") is None
    assert [r.decision_id for r in owner.pending()] == ["d1"]
    owner.recorder.fail = None
    assert owner.approve("d1", "alice").verdict == "approved"


def test_no_answer_after_the_deadline(owner, backend):
    owner.request(_request(deadline=time.time() - 1))
    done = _operator(backend, 'store.approve("d1", "alice")')
    assert done.returncode == 1 and "timed out" in done.stdout
    assert owner.pending() == []
    assert owner.expire("d1").verdict == "timeout"
    assert owner.recorder.answers == [("d1", "timeout", "aarm-runtime")]
    with pytest.raises(ApprovalError, match="already answered"):
        owner.approve("d1", "alice")


def test_expire_keeps_a_humans_answer(owner):
    owner.request(_request())
    owner.approve("d1", "alice")
    assert owner.expire("d1").verdict == "approved"


def test_a_proposal_to_a_killed_guard_is_withdrawn(backend):
    # The owner is killed (SIGKILL: no cleanup) while its heartbeat is still
    # fresh: the operator proposes, hears nothing, and withdraws.
    script = textwrap.dedent(f"""
        import sys, time
        from aarm_runtime.approvals import ApprovalRequest
        {backend.imports}
        store = {backend.ctor("poll_interval_s=0.02")}
        store.attach(lambda request, answer: None)
        store.request(ApprovalRequest(decision_id="d1", session_id="s", action_id="a", tool="t", args_hash="ab" * 32,
                      approvers=(), rules=("r",), message="", requested_at=time.time(), deadline=time.time() + 600))
        print("queued", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "queued"
    finally:
        proc.kill()
        proc.wait()
    operator = backend.make(poll_interval_s=0.02, confirm_timeout_s=0.5)
    try:
        with pytest.raises(ApprovalError, match="no running guard recorded the answer"):
            operator.approve("d1", "alice")
        row = operator._row("d1")
        assert (row["state"], row["proposal"]) == ("pending", None)
    finally:
        operator.close()


def test_requests_of_a_stopped_guard_cannot_be_answered(backend):
    owner = backend.make(poll_interval_s=0.02)
    owner.attach(Recorder())
    owner.request(_request())
    operator = backend.make()
    assert [r.decision_id for r in operator.pending()] == ["d1"]
    owner.close()
    assert operator.pending() == []
    with pytest.raises(ApprovalError, match="no longer running"):
        operator.approve("d1", "alice")
    operator.close()


def test_unknown_id_and_bad_names(owner):
    with pytest.raises(ApprovalError, match="no approval request for decision `nope`"):
        owner.approve("nope", "alice")
    owner.request(_request())
    with pytest.raises(ApprovalError, match="approver name is required"):
        owner.approve("d1", " ")
    with pytest.raises(ApprovalError, match="runtime's own name"):
        owner.approve("d1", "aarm-runtime")
    with pytest.raises(ApprovalError, match="already queued"):
        owner.request(_request())


def test_only_an_attached_store_queues(backend):
    with backend.make() as store, pytest.raises(ApprovalError, match="attached to a guard"):
        store.request(_request())


def test_authorize_runs_in_the_owner(backend):
    store = backend.make(poll_interval_s=0.02, authorize=lambda approver, request: approver in ("alice",))
    recorder = Recorder()
    store.attach(recorder)
    try:
        store.request(_request())
        done = _operator(backend, 'store.approve("d1", "mallory")')
        assert done.returncode == 1 and "`mallory` may not answer for finance-oncall" in done.stdout
        assert store.answer("d1") is None
        done = _operator(backend, 'print(store.approve("d1", "alice").verdict)')
        assert done.stdout.strip() == "approved"
        assert recorder.answers == [("d1", "approved", "alice")]
    finally:
        store.close()


def test_pending_lists_params_for_the_approver(owner, backend):
    from decimal import Decimal

    owner.request(_request("d1", params={"recipient": "Acme GmbH", "amount": Decimal("5000.50")}))
    owner.request(_request("d2"))
    with backend.make() as other:
        listed = other.pending()
    assert [r.decision_id for r in listed] == ["d1", "d2"]
    assert listed[0].params == {"recipient": "Acme GmbH", "amount": "5000.5"}
    assert listed[0].principal == "alice" and listed[0].approvers == ("finance-oncall",)


def test_wait_returns_when_another_process_answers(owner, backend):
    owner.request(_request())
    got = {}
    waiter = threading.Thread(target=lambda: got.update(answer=owner.wait("d1", 20)))
    waiter.start()
    done = _operator(backend, 'store.approve("d1", "alice")')
    waiter.join(30)
    assert done.returncode == 0 and got["answer"].approver == "alice"
    assert owner.wait("d1", 0) is not None


def test_wait_times_out_with_none(owner):
    owner.request(_request())
    started = time.monotonic()
    assert owner.wait("d1", 0.2) is None
    assert time.monotonic() - started >= 0.2


# ---- the SQLite file ------------------------------------------------------------------------------


def test_file_is_private_and_in_wal_mode(tmp_path):
    path = tmp_path / "approvals.db"
    with SqliteApprovals(path):
        pass
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_refuses_files_it_cannot_use(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ApprovalError, match="not a usable approvals database"):
        SqliteApprovals(junk)
    other = tmp_path / "other.db"
    with SqliteApprovals(other):
        pass
    db = sqlite3.connect(other)
    db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    db.commit()
    db.close()
    with pytest.raises(ApprovalError, match="has schema 99"):
        SqliteApprovals(other)


def test_answered_requests_are_pruned_to_keep(backend):
    store = backend.make(keep=2)
    store.attach(Recorder())
    try:
        for i in range(4):
            store.request(_request(f"d{i}"))
            store.approve(f"d{i}", "alice")
        store.request(_request("d9"))
        with pytest.raises(ApprovalError, match="no approval request for decision `d0`"):
            store.answer("d0")
        assert store.answer("d3").verdict == "approved"
    finally:
        store.close()


def test_answering_while_the_guard_holds_its_session_lock_does_not_deadlock(backend):
    """The listener takes the guard's session lock; the guard calls `answer` while holding it (a redemption)."""
    session_lock = threading.RLock()
    recorded: list[str] = []

    def listener(request, answer) -> None:
        with session_lock:
            recorded.append(answer.verdict)

    store = backend.make(poll_interval_s=0.005)
    store.attach(listener)
    try:
        store.request(_request())
        got: dict = {}

        def guard_redeeming() -> None:
            # Like retried redemptions: each holds the session lock while it asks.
            limit = time.monotonic() + 20
            while "answer" not in got and time.monotonic() < limit:
                with session_lock:
                    answer = store.answer("d1")
                if answer is not None:
                    got["answer"] = answer
                time.sleep(0.001)

        redeemer = threading.Thread(target=guard_redeeming, daemon=True)
        redeemer.start()
        done = _operator(backend, 'print(store.approve("d1", "alice").verdict)')
        redeemer.join(30)
        assert not redeemer.is_alive(), "deadlock: the guard's thread never got the answer"
        assert done.stdout.strip() == "approved" and got["answer"].verdict == "approved"
        assert recorded == ["approved"]
    finally:
        store.close()


def test_rows_of_long_gone_guards_are_forgotten(backend):
    old = backend.make()
    old.attach(Recorder())
    old.request(_request("old"))
    old._stop.set()  # stop its heartbeat thread, keep its rows (as a SIGKILL would)
    old._thread.join()
    backend.age_owners(2 * 86400)
    fresh = backend.make()
    fresh.attach(Recorder())
    try:
        with pytest.raises(ApprovalError, match="no approval request for decision `old`"):
            fresh.answer("old")
        assert backend.owners() == 1
    finally:
        fresh.close()
        old.close()


def test_two_guards_share_one_queue_and_each_records_its_own(backend):
    """Replicas (here: two guards, each with its own instance) queue into one place; an operator answers both."""
    first, second = backend.make(poll_interval_s=0.02), backend.make(poll_interval_s=0.02)
    one, two = Recorder(), Recorder()
    first.attach(one)
    second.attach(two)
    try:
        first.request(_request("d1"))
        second.request(_request("d2"))
        with pytest.raises(ApprovalError, match="already queued"):
            second.request(_request("d1"))
        done = _operator(backend, """
            print(sorted(r.decision_id for r in store.pending()))
            print(store.approve("d2", "alice").verdict, store.reject("d1", "bob").verdict)
        """)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["['d1', 'd2']", "approved rejected"]
        assert one.answers == [("d1", "rejected", "bob")] and two.answers == [("d2", "approved", "alice")]
        assert first.answer("d2").verdict == "approved"  # any instance reads any answer
        assert first.expire("d2").verdict == "approved"  # a human's answer stands
        second.request(_request("d3"))
        with pytest.raises(ApprovalError, match="belongs to another guard"):
            first.expire("d3")
        assert second.expire("d3", verdict="cancelled").verdict == "cancelled"
        assert two.answers[-1] == ("d3", "cancelled", "aarm-runtime")
    finally:
        first.close()
        second.close()


# ---- the Redis server ------------------------------------------------------------------------------


def test_redis_down_is_an_approval_error_in_bounded_time():
    import socket

    from aarm_runtime.approvals_redis import RedisApprovals

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nobody listens there
    store = RedisApprovals(f"redis://127.0.0.1:{port}/0", timeout_s=1.0)
    started = time.monotonic()
    for call in (lambda: store.attach(Recorder()), store.pending, lambda: store.approve("d1", "alice"),
                 lambda: store.get("d1"), lambda: store.answer("d1")):
        with pytest.raises(ApprovalError, match=f"Redis at `127.0.0.1:{port}/0`: ConnectionError"):
            call()
    assert time.monotonic() - started < 5
    store.close()


def test_redis_keys_share_one_cluster_slot(redis_url):
    from redis.crc import key_slot

    from aarm_runtime.approvals_redis import RedisApprovals

    with RedisApprovals(redis_url, prefix="x:") as store:
        assert len({key_slot(k.encode()) for k in store._keys}) == 1
    with pytest.raises(ValueError, match="key prefix"):
        RedisApprovals(redis_url, prefix="{x}:")
