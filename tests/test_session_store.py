"""The `SessionStore` contract, on every implementation: memory, SQLite and a real redis-server.

Each test gets a fresh store (its own SQLite file, its own Redis key
prefix). Several processes are real ones (multiprocessing with spawn, or a
`python -c` killed with SIGKILL), each with its own store on the same file
or server.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from aarm_runtime.session_store import (
    LeaseLost,
    MemorySessionStore,
    SessionStore,
    StoreError,
    StoreLockTimeout,
)

ROOT = Path(__file__).resolve().parents[1]


def open_store(spec: tuple):
    """A store from a picklable spec, as another process opens it."""
    kind = spec[0]
    if kind == "sqlite":
        from aarm_runtime.session_sqlite import SqliteSessionStore

        return SqliteSessionStore(spec[1])
    if kind == "redis":
        from aarm_runtime.session_redis import RedisSessionStore

        return RedisSessionStore(spec[1], prefix=spec[2])
    raise ValueError(kind)


class Backend:
    """One backing store; `new()` opens another client on it (another replica)."""

    def __init__(self, kind: str, spec: tuple | None) -> None:
        self.kind = kind
        self.spec = spec
        self._memory = MemorySessionStore() if kind == "memory" else None
        self._opened: list = []

    def new(self):
        store = self._memory if self._memory is not None else open_store(self.spec)
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()
        if self.kind == "redis":  # the server may be a developer's own: leave nothing behind
            import redis

            client = redis.Redis.from_url(self.spec[1])
            keys = list(client.scan_iter(match=self.spec[2] + "*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request, tmp_path):
    kind = request.param
    if kind == "memory":
        spec = None
    elif kind == "sqlite":
        spec = ("sqlite", str(tmp_path / "sessions.db"))
    else:
        spec = ("redis", request.getfixturevalue("redis_url"), f"t-{uuid.uuid4().hex}:")
    b = Backend(kind, spec)
    yield b
    b.close()


@pytest.fixture(params=["sqlite", "redis"])
def shared(request, tmp_path):
    """A store that several processes can open."""
    if request.param == "sqlite":
        spec = ("sqlite", str(tmp_path / "sessions.db"))
    else:
        spec = ("redis", request.getfixturevalue("redis_url"), f"t-{uuid.uuid4().hex}:")
    b = Backend(request.param, spec)
    yield b
    b.close()


@pytest.fixture
def redis_prefix(redis_url):
    """A key prefix of this test's own on the test Redis, deleted afterwards."""
    b = Backend("redis", ("redis", redis_url, f"t-{uuid.uuid4().hex}:"))
    yield b.spec[2]
    b.close()


def snapshot(store, session_id: str = "s1") -> tuple:
    """(version, events, state) as a fresh replica sees them; takes and gives back the lock."""
    view = store.acquire(session_id, since=0, known_version=-1, lease_s=5, wait_s=10)
    store.release(session_id, view.token)
    assert view.count == len(view.events)
    return view.version, list(view.events), view.state


# ---- the contract -----------------------------------------------------------------------------


def test_is_a_session_store(backend):
    assert isinstance(backend.new(), SessionStore)


def test_create_header_and_duplicates(backend):
    store = backend.new()
    assert store.header("s1") is None
    assert store.create("s1", b"opened by alice") is True
    assert store.create("s1", b"someone else") is False
    assert backend.new().header("s1") == b"opened by alice"
    assert store.header("s2") is None
    assert snapshot(store) == (0, [], None)
    with pytest.raises(ValueError, match="non-empty string"):
        store.create("", b"h")
    with pytest.raises(TypeError, match="header must be bytes"):
        store.create("s3", "text")
    assert store.header("s3") is None


def test_acquire_commit_release_and_what_acquire_reads(backend):
    store, other = backend.new(), backend.new()
    store.create("s1", b"h")
    view = store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=1)
    assert (view.version, view.count, view.events, view.state) == (0, 0, (), None)
    assert store.commit("s1", view.token, base_count=0, events=[b"e1", b"e2"], state=b"st1") == 1

    # Another replica, knowing nothing: all events and the state.
    view = other.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=1)
    assert (view.version, view.count, view.events, view.state) == (1, 2, (b"e1", b"e2"), b"st1")
    # state=None keeps the blob; events may be empty.
    assert other.commit("s1", view.token, base_count=2, events=[b"e3"], state=None) == 2

    # From `since` on; the state only when the version moved past what the caller knows.
    view = store.acquire("s1", since=2, known_version=2, lease_s=5, wait_s=1)
    assert (view.version, view.count, view.events, view.state) == (2, 3, (b"e3",), None)
    store.release("s1", view.token)
    view = store.acquire("s1", since=3, known_version=1, lease_s=5, wait_s=1)
    assert (view.events, view.state) == ((), b"st1")
    assert store.commit("s1", view.token, base_count=3, events=[], state=b"st2") == 3
    # A `since` the store cannot serve (ahead of it, or negative) reads everything.
    for since in (4, 99, -1):
        view = other.acquire("s1", since=since, known_version=3, lease_s=5, wait_s=1)
        assert view.events == (b"e1", b"e2", b"e3") and view.state is None
        other.release("s1", view.token)
    assert snapshot(store) == (3, [b"e1", b"e2", b"e3"], b"st2")


def test_commit_without_release_keeps_the_lock(backend):
    store, other = backend.new(), backend.new()
    store.create("s1", b"h")
    view = store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=1)
    assert store.commit("s1", view.token, base_count=0, events=[b"a"], state=b"1", release=False) == 1
    with pytest.raises(StoreLockTimeout):
        other.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=0)
    assert store.commit("s1", view.token, base_count=1, events=[b"b"], state=b"2") == 2
    assert snapshot(other) == (2, [b"a", b"b"], b"2")


def test_a_commit_on_a_moved_count_is_refused_and_changes_nothing(backend):
    store = backend.new()
    store.create("s1", b"h")
    view = store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=1)
    store.commit("s1", view.token, base_count=0, events=[b"a"], state=b"st", release=False)
    with pytest.raises(LeaseLost, match="has 1 events, not 0"):
        store.commit("s1", view.token, base_count=0, events=[b"x", b"y"], state=b"bad")
    store.release("s1", view.token)
    assert snapshot(store) == (1, [b"a"], b"st")


def test_a_commit_with_a_bad_event_changes_nothing(backend):
    store = backend.new()
    store.create("s1", b"h")
    view = store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=1)
    with pytest.raises(TypeError, match="events must be bytes, not `int`"):
        store.commit("s1", view.token, base_count=0, events=[b"ok", 3], state=b"st", release=False)
    with pytest.raises(TypeError, match="state must be bytes"):
        store.commit("s1", view.token, base_count=0, events=[b"ok"], state="st", release=False)
    store.release("s1", view.token)
    assert snapshot(store) == (0, [], None)


def test_an_expired_lease_goes_to_the_next_replica_and_its_commit_is_refused(backend):
    store, other = backend.new(), backend.new()
    store.create("s1", b"h")
    old = store.acquire("s1", since=0, known_version=0, lease_s=0.2, wait_s=1)
    time.sleep(0.3)
    new = other.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=0)
    with pytest.raises(LeaseLost, match="expired"):
        store.commit("s1", old.token, base_count=0, events=[b"late"], state=b"late")
    # The old holder's release does not free the new holder's lock.
    store.release("s1", old.token)
    with pytest.raises(StoreLockTimeout):
        store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=0)
    assert other.commit("s1", new.token, base_count=0, events=[b"on time"], state=b"ok") == 1
    assert snapshot(store) == (1, [b"on time"], b"ok")


def test_an_expired_lease_cannot_commit_even_when_nobody_took_it(backend):
    store = backend.new()
    store.create("s1", b"h")
    view = store.acquire("s1", since=0, known_version=0, lease_s=0.1, wait_s=1)
    time.sleep(0.2)
    with pytest.raises(LeaseLost):
        store.commit("s1", view.token, base_count=0, events=[b"late"], state=None)
    assert snapshot(store) == (0, [], None)


def test_waiting_for_the_lock(backend):
    store, other = backend.new(), backend.new()
    store.create("s1", b"h")
    view = store.acquire("s1", since=0, known_version=0, lease_s=30, wait_s=1)
    started = time.monotonic()
    with pytest.raises(StoreLockTimeout, match="stayed locked"):
        other.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=0.3)
    assert 0.3 <= time.monotonic() - started < 3
    # A waiter gets the lock soon after its holder commits.
    timer = threading.Timer(0.2, lambda: store.commit("s1", view.token, base_count=0, events=[b"a"], state=None))
    timer.start()
    started = time.monotonic()
    got = other.acquire("s1", since=0, known_version=0, lease_s=1.5, wait_s=20)
    assert time.monotonic() - started < 5
    timer.join()
    assert (got.version, got.events) == (1, (b"a",))
    # ... and when the lease runs out.
    started = time.monotonic()
    view = store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=20)
    assert 1 <= time.monotonic() - started < 10 and view.version == 1


def test_acquiring_an_unknown_session_fails(backend):
    store = backend.new()
    with pytest.raises(StoreError, match="`nope` is not in the store"):
        store.acquire("nope", since=0, known_version=0, lease_s=5, wait_s=0)
    with pytest.raises(LeaseLost, match="no longer in the store"):
        store.commit("nope", "token", base_count=0, events=[b"a"], state=None)


def test_sessions_past_their_ttl_are_forgotten_and_commits_keep_them(backend):
    store = backend.new()
    started = time.monotonic()
    assert store.create("s1", b"h", ttl_s=1.5)
    assert store.create("forever", b"h")
    time.sleep(0.9)
    view = store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=1)
    store.commit("s1", view.token, base_count=0, events=[b"a"], state=b"st")
    time.sleep(max(0.0, 1.8 - (time.monotonic() - started)))  # past the creation's TTL, within the commit's
    assert store.header("s1") == b"h"
    time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
    assert store.header("s1") is None
    with pytest.raises(StoreError, match="not in the store"):
        store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=0)
    # The id is free again, for a session with nothing in it.
    assert store.create("s1", b"h2") is True
    assert snapshot(store) == (0, [], None)
    assert store.header("forever") == b"h"


def test_a_closed_store_refuses(backend):
    if backend.kind == "memory":
        store = MemorySessionStore()
    else:
        store = open_store(backend.spec)
    store.create("s1", b"h")
    view = store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=0)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.commit("s1", view.token, base_count=0, events=[], state=None)
    with pytest.raises(StoreError, match="closed"):
        store.header("s1")
    store.release("s1", view.token)  # harmless: the lease runs out
    store.close()


# ---- concurrency ------------------------------------------------------------------------------


def _append(store, who: str, k: int) -> list[bytes]:
    """Append `who:0` … `who:k-1`, one commit each, from what this replica has seen; return what it saw."""
    seen: list[bytes] = []
    version = 0
    for i in range(k):
        view = store.acquire("s1", since=len(seen), known_version=version, lease_s=10, wait_s=60)
        assert view.count == len(seen) + len(view.events)
        seen.extend(view.events)
        event = f"{who}:{i}".encode()
        version = store.commit("s1", view.token, base_count=view.count, events=[event], state=event)
        seen.append(event)
    return seen


def _check_appends(store, writers: list[str], k: int, seen: list[list[bytes]]) -> None:
    version, events, state = snapshot(store)
    assert len(events) == len(set(events)) == len(writers) * k
    assert set(events) == {f"{w}:{i}".encode() for w in writers for i in range(k)}
    assert version == len(writers) * k  # one commit per event
    assert state == events[-1]
    for who in writers:  # each writer's events in its order
        mine = [e for e in events if e.split(b":")[0] == who.encode()]
        assert mine == [f"{who}:{i}".encode() for i in range(k)]
    for view in seen:  # every replica saw a prefix of the one history
        assert events[: len(view)] == view


def test_concurrent_commits_from_threads(backend):
    backend.new().create("s1", b"h")
    writers = [f"t{i}" for i in range(6)]
    seen: dict[str, list[bytes]] = {}
    errors: list[BaseException] = []

    def run(who: str) -> None:
        try:
            seen[who] = _append(backend.new(), who, 30)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    _check_appends(backend.new(), writers, 30, list(seen.values()))


def _process_writer(spec: tuple, who: str, k: int) -> list[bytes]:
    store = open_store(spec)
    try:
        return _append(store, who, k)
    finally:
        store.close()


def test_concurrent_commits_from_processes(shared):
    shared.new().create("s1", b"h")
    writers = [f"p{i}" for i in range(4)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(writers)) as pool:
        results = [pool.apply_async(_process_writer, (shared.spec, w, 25)) for w in writers]
        seen = [r.get(timeout=180) for r in results]
    _check_appends(shared.new(), writers, 25, seen)


_KILLED_WRITER = """
import sys
sys.path.insert(0, {tests!r})
from test_session_store import open_store
store = open_store({spec!r})
i = 0
while True:
    view = store.acquire("s1", since=0, known_version=-1, lease_s=1.0, wait_s=30)
    # Two events per commit: a half-applied commit would leave an odd count.
    store.commit("s1", view.token, base_count=view.count, events=[b"%d-a" % i, b"%d-b" % i], state=b"%d" % i,
                 release=i % 3 == 0)
    if i % 3 != 0:
        store.release("s1", view.token)
    print(i, flush=True)
    i += 1
    if i >= 30:
        # Hold the lease from here on, with one more commit prepared and never sent.
        view = store.acquire("s1", since=0, known_version=-1, lease_s=1.0, wait_s=30)
        print("holding", flush=True)
        import time
        time.sleep(600)
"""


@pytest.mark.parametrize("when", ["mid-stream", "holding the lease"])
def test_a_replica_killed_mid_session_loses_nothing_acknowledged(shared, when):
    shared.new().create("s1", b"h")
    code = _KILLED_WRITER.format(tests=str(Path(__file__).parent), spec=shared.spec)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    acked = -1
    try:
        for line in proc.stdout:
            if line.strip() == "holding":
                break
            acked = int(line)
            if when == "mid-stream" and acked >= 12:
                break
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    store = shared.new()
    if when == "holding the lease":
        with pytest.raises(StoreLockTimeout):
            store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=0)
    # The dead replica's lease runs out; everything it was told is committed is there, whole.
    view = store.acquire("s1", since=0, known_version=-1, lease_s=5, wait_s=10)
    assert time.monotonic() - killed_at < 5
    store.release("s1", view.token)
    n = view.count // 2
    assert view.count % 2 == 0 and view.version == n and n >= acked + 1
    assert list(view.events) == [b"%d-%s" % (i, s) for i in range(n) for s in (b"a", b"b")]
    assert view.state == b"%d" % (n - 1)
    if when == "holding the lease":
        assert n == 30


# ---- failures ---------------------------------------------------------------------------------


def test_sqlite_refuses_files_it_cannot_use(tmp_path):
    from aarm_runtime.session_sqlite import SqliteSessionStore

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=f"`{junk}` is not a usable session store"):
        SqliteSessionStore(junk)
    missing = tmp_path / "no" / "such" / "dir" / "s.db"
    with pytest.raises(StoreError, match=f"cannot open session store `{missing}`"):
        SqliteSessionStore(missing)
    other = tmp_path / "other.db"
    SqliteSessionStore(other).close()
    import sqlite3

    db = sqlite3.connect(other)
    db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="has schema 99"):
        SqliteSessionStore(other)


def test_sqlite_file_corrupted_under_an_open_store(tmp_path):
    from aarm_runtime.session_sqlite import SqliteSessionStore

    path = tmp_path / "s.db"
    store = SqliteSessionStore(path)
    store.create("s1", b"h")
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with open(path, "r+b") as f:  # keep the 100-byte file header, wreck the pages after it
        f.seek(100)
        f.write(b"\xff" * (os.path.getsize(path) - 100))
    with pytest.raises(StoreError, match=f"`{path}`"):
        store = SqliteSessionStore(path)
        store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=0)


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path):
    import sqlite3
    import stat

    from aarm_runtime.session_sqlite import SqliteSessionStore

    path = tmp_path / "s.db"
    SqliteSessionStore(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_redis_down_is_a_store_error_in_bounded_time():
    from aarm_runtime.session_redis import RedisSessionStore

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nobody listens there
    store = RedisSessionStore(f"redis://127.0.0.1:{port}/0", timeout_s=1.0)
    started = time.monotonic()
    for call in (lambda: store.create("s1", b"h"), lambda: store.header("s1"),
                 lambda: store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=30),
                 lambda: store.commit("s1", "t", base_count=0, events=[b"a"], state=None),
                 lambda: store.release("s1", "t")):
        with pytest.raises(StoreError, match=f"Redis at `127.0.0.1:{port}/0`: ConnectionError"):
            call()
    assert time.monotonic() - started < 5
    store.close()


def test_redis_that_never_answers_times_out():
    from aarm_runtime.session_redis import RedisSessionStore

    # A socket that accepts connections (the kernel's backlog) and never replies.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(16)
        port = mute.getsockname()[1]
        store = RedisSessionStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(StoreError, match=f"`127.0.0.1:{port}/0`: TimeoutError"):
            store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=30)
        assert time.monotonic() - started < 3
        store.close()


def test_redis_needs_its_extra_and_bytes(monkeypatch, redis_url):
    import redis

    from aarm_runtime.session_redis import RedisSessionStore

    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisSessionStore(redis.Redis.from_url(redis_url, decode_responses=True))
    with pytest.raises(ValueError, match="key prefix"):
        RedisSessionStore(redis_url, prefix="a{b}:")
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(StoreError, match=r"install the runtime's `redis` extra"):
        RedisSessionStore(redis_url)


def test_redis_keys_of_a_session_share_one_cluster_slot(redis_url, redis_prefix):
    from redis.crc import key_slot

    from aarm_runtime.session_redis import RedisSessionStore

    with RedisSessionStore(redis_url, prefix=redis_prefix) as store:
        ids = ["plain", "a{b}c", "}x{", "{}", "%7B", "{"]
        keys = {sid: store._keys(sid) for sid in ids}
        for sid in ids:
            assert len({key_slot(k.encode()) for k in keys[sid]}) == 1, sid
        assert len({k for ks in keys.values() for k in ks}) == 3 * len(ids)
        for sid in ids:  # and they work as ids
            assert store.create(sid, sid.encode())
        assert [store.header(sid) for sid in ids] == [sid.encode() for sid in ids]


def test_redis_a_retried_round_trip_answers_what_the_first_did(redis_url, redis_prefix):
    """redis-py resends a command whose reply was lost; the scripts recognise their own first run."""
    from aarm_runtime.session_redis import RedisSessionStore

    with RedisSessionStore(redis_url, prefix=redis_prefix) as store:
        keys = store._keys("s1")
        assert store._run(store._create, keys, [b"h", 0, "n1"]) == 1
        assert store._run(store._create, keys, [b"h", 0, "n1"]) == 1  # the resend
        assert store._run(store._create, keys, [b"h", 0, "n2"]) == 0  # another creator
        first = store._run(store._acquire, keys, ["tok", 5000, 0, 0])
        assert store._run(store._acquire, keys, ["tok", 5000, 0, 0])[0] == first[0] == 1
        assert store._run(store._acquire, keys, ["other", 5000, 0, 0])[0] == 0
        args = ["tok", 0, 1, 1, b"st", "c1", b"e1", b"e2"]
        assert store._run(store._commit, keys, args) == [1, 1]
        assert store._run(store._commit, keys, args) == [1, 1]  # the resend: not applied twice
        assert snapshot(store) == (1, [b"e1", b"e2"], b"st")


def test_redis_large_commits(redis_url, redis_prefix):
    from aarm_runtime.session_redis import RedisSessionStore

    with RedisSessionStore(redis_url, prefix=redis_prefix) as store:
        store.create("s1", b"h")
        view = store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=0)
        events = [b"%d" % i for i in range(12_345)]
        store.commit("s1", view.token, base_count=0, events=events, state=b"\x00" * 100_000)
        assert snapshot(store) == (1, events, b"\x00" * 100_000)


def test_sqlite_sessions_survive_a_restart(tmp_path):
    from aarm_runtime.session_sqlite import SqliteSessionStore

    code = textwrap.dedent(f"""
        from aarm_runtime.session_sqlite import SqliteSessionStore
        store = SqliteSessionStore({str(tmp_path / "s.db")!r})
        store.create("s1", b"h")
        view = store.acquire("s1", since=0, known_version=0, lease_s=5, wait_s=0)
        store.commit("s1", view.token, base_count=0, events=[b"a"], state=b"st")
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    with SqliteSessionStore(tmp_path / "s.db") as store:
        assert store.header("s1") == b"h"
        assert snapshot(store) == (1, [b"a"], b"st")


def test_each_creation_of_a_session_has_its_own_incarnation(backend):
    a, b = backend.new(), backend.new()
    assert a.create("s1", b"h", ttl_s=0.2)
    first = a.acquire("s1", since=0, known_version=-1, lease_s=5, wait_s=1)
    a.release("s1", first.token)
    again = b.acquire("s1", since=0, known_version=-1, lease_s=5, wait_s=1)
    b.release("s1", again.token)
    assert first.incarnation and again.incarnation == first.incarnation  # every client sees the same one
    time.sleep(0.3)  # the TTL runs out: the store forgets the session, and the id can be created again
    assert b.create("s1", b"h2")
    later = a.acquire("s1", since=0, known_version=-1, lease_s=5, wait_s=1)
    a.release("s1", later.token)
    assert later.incarnation and later.incarnation != first.incarnation


def test_a_sqlite_store_an_older_runtime_made_gets_the_incarnation_column(tmp_path):
    import sqlite3

    from aarm_runtime.session_sqlite import SqliteSessionStore

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE sessions (id TEXT PRIMARY KEY, header BLOB NOT NULL, version INTEGER NOT NULL,
            count INTEGER NOT NULL, state BLOB, lock_token TEXT, lock_until REAL NOT NULL, ttl REAL, expires REAL);
        CREATE TABLE events (session TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL,
            PRIMARY KEY (session, idx)) WITHOUT ROWID;
        INSERT INTO sessions VALUES ('old', x'00', 0, 0, NULL, NULL, 0, NULL, NULL);
    """)
    db.commit()
    db.close()
    store = SqliteSessionStore(path)
    try:
        view = store.acquire("old", since=0, known_version=-1, lease_s=5, wait_s=1)
        assert view.incarnation == ""  # unknown: a replica skips the check for it
        store.release("old", view.token)
        assert store.create("new", b"h")
        view = store.acquire("new", since=0, known_version=-1, lease_s=5, wait_s=1)
        assert view.incarnation
        store.release("new", view.token)
    finally:
        store.close()
    SqliteSessionStore(path).close()  # opening it again changes nothing
