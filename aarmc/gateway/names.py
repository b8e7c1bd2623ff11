"""MCP names ↔ policy names, exactly as `aarmc import-mcp` declared them.

Without a prefix an MCP tool is the policy tool of the same name (servers
whose tools are already dotted, `email.send`). With ``--prefix SERVICE`` the
MCP tool `NAME` is the policy tool `SERVICE.NAME'` where `NAME'` is
`aarmc.mcp_import.identifier(NAME)`, with the importer's `_2`, `_3` suffixes
for names that collide, in the server's listing order. Params that are not
identifiers (`per-page`) were declared under their identifier (`per_page`);
arguments are renamed on the way in and back on the way out, so the policy
sees the declared names and the server the ones it published.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aarmc.mcp_import import identifier


class ArgumentNameClash(ValueError):
    """Two arguments map to the same declared param name."""


def _dedupe(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    used: set[str] = set()
    for name in names:
        candidate = name
        if candidate in used:
            n = 2
            while f"{name}_{n}" in used:
                n += 1
            candidate = f"{name}_{n}"
        used.add(candidate)
        out.append(candidate)
    return out


class ToolNames:
    """The name map of one upstream `tools/list`.

    >>> m = ToolNames.build([("search", {"properties": {"per-page": {}}})], prefix="github")
    >>> m.policy_name("search"), m.to_policy_args("search", {"per-page": 5})
    ('github.search', {'per_page': 5})
    >>> m.to_server_args("search", {"per_page": 10})
    {'per-page': 10}
    """

    def __init__(self, tools: dict[str, str], params: dict[str, dict[str, str]]) -> None:
        self._policy = tools  # mcp name -> policy name
        self._params = params  # mcp tool name -> {mcp param: policy param}, renamed params only
        self._back = {tool: {v: k for k, v in renames.items()} for tool, renames in params.items()}

    @classmethod
    def build(cls, tools: Iterable[tuple[str, Any]], prefix: str | None = None) -> ToolNames:
        """From (MCP tool name, inputSchema) pairs in the server's order."""
        listed = list(tools)
        if prefix is None:
            policy = {name: name for name, _ in listed}
        else:
            service = identifier(prefix)
            policy = dict(zip((n for n, _ in listed), _dedupe(f"{service}.{identifier(n)}" for n, _ in listed)))
        params: dict[str, dict[str, str]] = {}
        for name, schema in listed:
            props = schema.get("properties") if isinstance(schema, Mapping) else None
            if not isinstance(props, Mapping):
                continue
            declared = _dedupe(identifier(p) for p in props)
            renames = {p: d for p, d in zip(props, declared) if p != d}
            if renames:
                params[name] = renames
        return cls(policy, params)

    def policy_name(self, mcp_name: str) -> str | None:
        """The policy tool an upstream tool is declared as, None if the server does not list it."""
        return self._policy.get(mcp_name)

    def to_policy_args(self, mcp_name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        renames = self._params.get(mcp_name)
        if not renames:
            return dict(args)
        out: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for key, value in args.items():
            name = renames.get(key, key)
            if name in out:
                raise ArgumentNameClash(f"arguments `{origin[name]}` and `{key}` both name the param `{name}`")
            out[name] = value
            origin[name] = key
        return out

    def to_server_args(self, mcp_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        back = self._back.get(mcp_name)
        if not back:
            return dict(params)
        return {back.get(k, k): v for k, v in params.items()}
