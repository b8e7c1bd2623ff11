"""A `SessionStore` on Redis (redis-py): gateway replicas on several hosts share sessions.

Install with the runtime's extra: ``pip install 'aarm-runtime[redis]'``.

A session is three keys with the same hash tag, so that every script below
touches one slot and runs on Redis Cluster as well:

- ``<prefix>{<id>}:m`` — a hash: ``h`` the header, ``v`` the version,
  ``st`` the state blob, ``ttl`` the TTL in ms (0: none), and the nonces
  that make a retried create or commit answer what the first try did;
- ``<prefix>{<id>}:ev`` — the events, a list;
- ``<prefix>{<id>}:lk`` — the lock: the holder's token, expiring with the
  lease (``SET NX PX``), on the Redis server's clock, so a killed holder's
  lease runs out whatever the replicas' clocks say.

Each operation is one round trip: a Lua script (``EVALSHA``, loaded once)
that Redis runs atomically. The scripts check everything before their first
write, and Redis does not stop a script for memory once it has written, so
a commit is all or nothing. Waiting for a lock held elsewhere is polling
with a short, growing, jittered backoff.

redis-py retries a command whose connection broke. A retried acquire that
had in fact taken the lock finds its own token and keeps it; a retried
commit or create that had in fact run finds its nonce and returns the first
result instead of refusing (or applying) it twice.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

from aarm_runtime.session_store import LeaseLost, StoreError, StoreLockTimeout, StoreView, _check_id, _commit_args

__all__ = ["RedisSessionStore", "redis_address", "redis_client"]

_FIRST_BACKOFF_S = 0.0005
_MAX_BACKOFF_S = 0.02
# Lua's unpack() is bounded by the C stack (LUAI_MAXCSTACK, 8000): RPUSH in slices.
_PUSH_SLICE = 1000

# KEYS: m, ev, lk. ARGV: header, ttl_ms (0: none), nonce.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    if redis.call('HGET', KEYS[1], 'cn') == ARGV[3] then return 1 end
    return 0
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'h', ARGV[1], 'v', 0, 'ttl', ARGV[2], 'cn', ARGV[3])
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

# KEYS: m, ev, lk. ARGV: token, lease_ms, since, known_version.
# Returns {-1} no session, {0, pttl} locked, {1, version, count, events, state|nil, incarnation}.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then
    if redis.call('GET', KEYS[3]) ~= ARGV[1] then return {0, redis.call('PTTL', KEYS[3])} end
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
local version = tonumber(redis.call('HGET', KEYS[1], 'v'))
local count = redis.call('LLEN', KEYS[2])
local since = tonumber(ARGV[3])
if since < 0 or since > count then since = 0 end
local events = {}
if since < count then events = redis.call('LRANGE', KEYS[2], since, -1) end
local state = false
if version ~= tonumber(ARGV[4]) then state = redis.call('HGET', KEYS[1], 'st') end
return {1, version, count, events, state, redis.call('HGET', KEYS[1], 'cn') or ''}
"""

# KEYS: m, ev, lk. ARGV: token, base_count, release (0/1), has_state (0/1), state, nonce, events...
# Returns {-1} no session, {-2} lease lost, {-3, count} count moved, {1, version}.
_COMMIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local done = redis.call('HGET', KEYS[1], 'cc')
if done then
    local sep = string.find(done, ':', 1, true)
    if string.sub(done, 1, sep - 1) == ARGV[6] then return {1, tonumber(string.sub(done, sep + 1))} end
end
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return {-2} end
local count = redis.call('LLEN', KEYS[2])
if count ~= tonumber(ARGV[2]) then return {-3, count} end
for i = 7, #ARGV, %(slice)d do
    redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + %(slice)d - 1, #ARGV)))
end
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'st', ARGV[5]) end
local version = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 'cc', ARGV[6] .. ':' .. version)
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or '0')
if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
end
if ARGV[3] == '1' then redis.call('DEL', KEYS[3]) end
return {1, version}
""" % {"slice": _PUSH_SLICE}

# KEYS: lk. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise StoreError("the Redis stores need redis-py: install the runtime's `redis` extra "
                         "(pip install 'aarm-runtime[redis]')") from None
    return redis


def redis_client(url_or_client: Any, *, timeout_s: float = 5.0) -> Any:
    """A redis-py client: *url_or_client* itself, or one for the URL (``redis://host:port/db``, ``rediss://``,
    ``unix://``) whose every wait is bounded by *timeout_s*.

    A broken connection is retried twice, quickly; a timeout is not retried
    (the caller's own timeouts would multiply).
    """
    if not isinstance(url_or_client, str):
        kwargs = getattr(getattr(url_or_client, "connection_pool", None), "connection_kwargs", {})
        if kwargs.get("decode_responses"):
            raise ValueError("the Redis client must return bytes (decode_responses=False)")
        return url_or_client
    redis = _import_redis()
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    try:
        return redis.Redis.from_url(
            url_or_client, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 2, supported_errors=(redis.ConnectionError,)),
            retry_on_timeout=False, health_check_interval=30)
    except ValueError as err:
        raise StoreError(f"bad Redis URL `{url_or_client}`: {err}") from None


def redis_address(client: Any) -> str:
    """Where *client* connects, for error messages (``host:port/db`` or the socket path)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:
        nodes = getattr(client, "startup_nodes", None)
        return ",".join(f"{n.host}:{n.port}" for n in nodes) if nodes else repr(client)
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


class RedisSessionStore:
    """The session store on the Redis server at *url_or_client* (a URL or a redis-py client); thread-safe.

    *prefix* starts every key (several deployments can share a server);
    *timeout_s* bounds each round trip when the store makes the client from
    a URL. A client passed in is used as configured (its own timeouts and
    retries) and is not closed by `close`.
    """

    def __init__(self, url_or_client: Any, *, prefix: str = "aarm:", timeout_s: float = 5.0) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain `{` or `}` (they mark Redis Cluster hash tags)")
        self._redis = _import_redis()
        self._own_client = isinstance(url_or_client, str)
        self._client = redis_client(url_or_client, timeout_s=timeout_s)
        self.address = redis_address(self._client)
        self._prefix = prefix
        self._closed = False
        self._lock = threading.Lock()
        self._create = self._client.register_script(_CREATE)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._commit = self._client.register_script(_COMMIT)
        self._release = self._client.register_script(_RELEASE)

    def _keys(self, session_id: str) -> list[str]:
        # `%`-escaping keeps braces out of the tag and stays one-to-one.
        tag = session_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
        base = f"{self._prefix}{{{tag}}}:"
        return [base + "m", base + "ev", base + "lk"]

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self._closed:
            raise StoreError(f"the session store on Redis at `{self.address}` is closed")
        try:
            return script(keys=keys, args=args)
        except self._redis.RedisError as err:
            raise StoreError(f"Redis at `{self.address}`: {type(err).__name__}: {err}") from None

    # ---- the protocol -----------------------------------------------------------------

    def create(self, session_id: str, header: bytes, *, ttl_s: float | None = None) -> bool:
        _check_id(session_id)
        if not isinstance(header, bytes):
            raise TypeError("header must be bytes")
        ttl_ms = 0 if ttl_s is None else max(1, int(ttl_s * 1000))
        return self._run(self._create, self._keys(session_id), [header, ttl_ms, secrets.token_hex(8)]) == 1

    def header(self, session_id: str) -> bytes | None:
        _check_id(session_id)
        if self._closed:
            raise StoreError(f"the session store on Redis at `{self.address}` is closed")
        try:
            return self._client.hget(self._keys(session_id)[0], "h")
        except self._redis.RedisError as err:
            raise StoreError(f"Redis at `{self.address}`: {type(err).__name__}: {err}") from None

    def acquire(self, session_id: str, *, since: int, known_version: int, lease_s: float,
                wait_s: float) -> StoreView:
        _check_id(session_id)
        deadline = time.monotonic() + max(0.0, wait_s)
        token = secrets.token_hex(16)
        keys = self._keys(session_id)
        args = [token, max(1, int(lease_s * 1000)), int(since), int(known_version)]
        backoff = _FIRST_BACKOFF_S
        while True:
            got = self._run(self._acquire, keys, args)
            if got[0] == -1:
                raise StoreError(f"session `{session_id}` is not in the store")
            if got[0] == 1:
                _, version, count, events, state, incarnation = got
                if isinstance(incarnation, bytes):
                    incarnation = incarnation.decode("ascii", "replace")
                return StoreView(token=token, version=int(version), count=int(count), events=tuple(events),
                                 state=state, incarnation=incarnation)
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreLockTimeout(f"session `{session_id}` stayed locked by another replica for {wait_s:g} s")
            held_for = max(int(got[1]), 0) / 1000
            # Jitter keeps waiters on several replicas from retrying in step.
            time.sleep(min(left, max(held_for, 0.0001), backoff) * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def commit(self, session_id: str, token: str, *, base_count: int, events: Sequence[bytes],
               state: bytes | None, release: bool = True) -> int:
        blobs, state = _commit_args(session_id, events, state)
        args = [token, int(base_count), 1 if release else 0, 0 if state is None else 1,
                b"" if state is None else state, secrets.token_hex(8), *blobs]
        got = self._run(self._commit, self._keys(session_id), args)
        if got[0] == -1:
            raise LeaseLost(f"session `{session_id}` is no longer in the store")
        if got[0] == -2:
            raise LeaseLost(f"the lease on session `{session_id}` expired before the commit")
        if got[0] == -3:
            raise LeaseLost(f"session `{session_id}` has {got[1]} events, not {base_count}")
        return int(got[1])

    def release(self, session_id: str, token: str) -> None:
        if self._closed:
            return  # as for a dead holder: the lease runs out
        self._run(self._release, self._keys(session_id)[2:], [token])

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._own_client:
            try:
                self._client.close()
            except self._redis.RedisError:
                pass

    def __enter__(self) -> RedisSessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
