"""Session stores and approvals services by name, for command lines and configuration files.

A *session store* spec is one of:

- ``sqlite:PATH`` — `SqliteSessionStore` (processes on one host; survives restarts);
- ``redis://HOST[:PORT][/DB]``, ``rediss://…``, ``unix://PATH`` — `RedisSessionStore`
  (replicas on several hosts; needs the runtime's ``redis`` extra); a key
  prefix other than ``aarm:`` goes after ``#``: ``redis://h:6379/0#team-a:``.

An *approvals* spec is a SQLite file path (`SqliteApprovals`, as before) or
one of the Redis URLs above (`RedisApprovals`).

>>> store_kind("sqlite:/var/lib/aarm/sessions.db"), store_kind("redis://10.0.0.5:6379/0#gw:")
('sqlite', 'redis')
>>> store_kind("memory")
Traceback (most recent call last):
...
ValueError: session store `memory` is not `sqlite:PATH` or a `redis://`, `rediss://` or `unix://` URL
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_redis_url", "open_approvals", "open_session_store", "store_kind"]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def is_redis_url(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(_REDIS_SCHEMES)


def _redis_parts(spec: str) -> tuple[str, str]:
    url, _, prefix = spec.partition("#")
    return url, prefix or "aarm:"


def store_kind(spec: str) -> str:
    """``sqlite`` or ``redis`` for a valid session-store spec; `ValueError` otherwise."""
    if isinstance(spec, str) and spec.startswith("sqlite:") and len(spec) > len("sqlite:"):
        return "sqlite"
    if is_redis_url(spec):
        return "redis"
    raise ValueError(f"session store `{spec}` is not `sqlite:PATH` or a `redis://`, `rediss://` or `unix://` URL")


def open_session_store(spec: str) -> Any:
    """The session store *spec* names (see the module docstring); raises `ValueError` or `StoreError`."""
    if store_kind(spec) == "sqlite":
        from aarm_runtime.session_sqlite import SqliteSessionStore

        return SqliteSessionStore(spec[len("sqlite:"):])
    from aarm_runtime.session_redis import RedisSessionStore

    url, prefix = _redis_parts(spec)
    return RedisSessionStore(url, prefix=prefix)


def open_approvals(spec: str, **options: Any) -> Any:
    """The approvals service *spec* names: a Redis URL, else a SQLite database path."""
    if is_redis_url(spec):
        from aarm_runtime.approvals_redis import RedisApprovals

        url, prefix = _redis_parts(spec)
        return RedisApprovals(url, prefix=prefix, **options)
    from aarm_runtime.approvals_store import SqliteApprovals

    return SqliteApprovals(spec, **options)
