"""The LangChain adapter against the real `langchain-core` (no model, no network): tools invoked the way an
agent invokes them — with arguments, and with a model's tool call — through `guard_tool`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import StructuredTool, tool

from aarm_runtime.adapters.langchain import ToolDenied, ToolPending, guard_tool, guard_tools, guarded_tool
from aarm_runtime.guard import Guard, GuardError
from aarm_runtime.receipt_log import ReceiptLog
from aarm_runtime.receipts import Kind
from aarm_runtime.sdk import use_session
from aarm_runtime.verify import read_verified
from test_serve import INJECTED_EMAIL, INTENT, Keys


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("lc-keys"))


class Tools:
    """Real LangChain tools that remember how they were called, each under a guard."""

    def __init__(self, k: Keys, log_path: Path) -> None:
        self.keys = k
        self.log_path = log_path
        self.log = ReceiptLog.create(log_path, k.receipts, fsync="none")
        self.guard = Guard(k.engine(), receipts=self.log, identity_verifier=k.verifier())
        self.session = self.guard.open_session(identity_token=base64.b64decode(k.token()), intent=INTENT)
        self.calls: list[tuple[str, dict]] = []

        @tool
        def read_inbox(folder: str = "INBOX") -> str:
            """Read the newest email of a folder."""
            self.calls.append(("read_inbox", {"folder": folder}))
            return INJECTED_EMAIL

        @tool
        def send_email(to: str, subject: str, body: str) -> str:
            """Send an email."""
            self.calls.append(("send_email", {"to": to, "subject": subject, "body": body}))
            return f"sent to {to}"

        @tool
        def transfer(payee: str, amount: float, memo: str | None = None) -> str:
            """Pay a supplier."""
            self.calls.append(("transfer", {"payee": payee, "amount": amount}))
            return f"paid {amount} to {payee}"

        self.read = guard_tool(read_inbox, self.guard, action="mail.read", session=self.session)
        self.send = guard_tool(send_email, self.guard, action="mail.send", session=self.session)
        self.transfer = guard_tool(transfer, self.guard, action="pay.transfer", session=self.session)

    def receipts(self) -> list:
        got = read_verified(self.log_path, [self.keys.receipts.verify_key], allow_open=True)
        assert got.verdict.ok, got.verdict.describe()
        return [r.record for r in got.receipts]


@pytest.fixture
def tools(key_files: Keys, tmp_path: Path):
    t = Tools(key_files, tmp_path / "receipts.log")
    yield t
    t.guard.close()
    t.log.abandon()


def test_the_guarded_tool_looks_like_the_original_to_the_model(tools: Tools) -> None:
    assert tools.send.name == "send_email"
    assert tools.send.description == "Send an email."
    assert tools.send.tool_call_schema.model_json_schema()["required"] == ["to", "subject", "body"]
    assert tools.send.metadata["aarm_action"] == "mail.send"


def test_an_allowed_call_runs_and_its_output_is_recorded(tools: Tools) -> None:
    out = tools.send.invoke({"to": "bob@corp.example", "subject": "Q3", "body": "notes"})
    assert out == "sent to bob@corp.example"
    assert tools.calls == [("send_email", {"to": "bob@corp.example", "subject": "Q3", "body": "notes"})]
    kinds = [r.kind for r in tools.receipts()]
    assert kinds == [Kind.LOG_OPEN, Kind.SESSION_START, Kind.DECISION, Kind.OUTCOME]
    assert tools.receipts()[2].decision.effect == "allow"


def test_a_denied_call_never_runs_and_the_model_reads_rule_and_reason(tools: Tools) -> None:
    assert tools.read.invoke({}) == INJECTED_EMAIL
    # The model, having read the injected email, calls send_email with the attacker's address.
    call = {"type": "tool_call", "id": "call_7", "name": "send_email",
            "args": {"to": "mallory@corp.example", "subject": "records", "body": "all of them"}}
    message = tools.send.invoke(call)
    assert isinstance(message, ToolMessage)
    assert message.status == "error" and message.tool_call_id == "call_7"
    assert "denied by rule `injected-recipient` (rule)" in message.content
    assert "the recipient came from untrusted content, not from the user" in message.content
    assert [c[0] for c in tools.calls] == ["read_inbox"]
    denied = [r for r in tools.receipts() if r.kind == Kind.DECISION and r.decision.effect == "deny"]
    assert [d.decision.rules for d in denied] == [("injected-recipient",)]


def test_raise_on_deny_raises_the_tool_exception(tools: Tools, key_files: Keys) -> None:
    tools.read.invoke({})
    strict = guard_tool(tools.send, tools.guard, action="mail.send", session=tools.session, raise_on_deny=True)
    with pytest.raises(ToolDenied) as caught:
        strict.invoke({"to": "mallory@corp.example", "subject": "s", "body": "b"})
    assert caught.value.rules == ("injected-recipient",) and caught.value.reason == "rule"
    assert caught.value.decision_id
    with pytest.raises(ToolDenied) as caught:
        strict.invoke({"to": "nobody@elsewhere.example", "subject": "s", "body": "b"})
    assert caught.value.reason == "default" and "denied by the policy" in str(caught.value)
    assert [c[0] for c in tools.calls] == ["read_inbox"]


def test_modify_runs_the_tool_with_the_policys_params(tools: Tools) -> None:
    out = tools.transfer.invoke({"payee": "acme", "amount": 750.25})
    assert tools.calls == [("transfer", {"payee": "acme", "amount": 500.5})]
    assert out == "paid 500.5 to acme"
    decision = [r for r in tools.receipts() if r.kind == Kind.DECISION][0]
    assert decision.decision.effect == "modify" and decision.decision.rules == ("cap-mid-transfer",)


def _answer_when_asked(guard: Guard, verdict: str, seen: list) -> threading.Thread:
    def approver() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pending = guard.approvals.pending()
            if pending:
                request = pending[0]
                seen.append((time.monotonic(), request.tool, request.rules))
                if verdict == "approve":
                    guard.approvals.approve(request.decision_id, approver="carol", args_hash=request.args_hash)
                else:
                    guard.approvals.reject(request.decision_id, approver="carol", reason="no invoice")
                return
            time.sleep(0.01)

    thread = threading.Thread(target=approver)
    thread.start()
    return thread


def test_step_up_blocks_until_another_thread_approves(tools: Tools) -> None:
    seen: list = []
    thread = _answer_when_asked(tools.guard, "approve", seen)
    out = tools.transfer.invoke({"payee": "acme", "amount": 9000})
    ran_at = time.monotonic()
    thread.join()
    assert out == "paid 9000.0 to acme"
    assert seen and seen[0][1:] == ("pay.transfer", ("large-transfer",)) and seen[0][0] < ran_at
    kinds = [r.kind for r in tools.receipts()]
    assert kinds[2:] == [Kind.DECISION, Kind.APPROVAL, Kind.OUTCOME]
    assert tools.receipts()[3].approver == "carol"


def test_a_rejected_step_up_is_denied_and_never_runs(tools: Tools) -> None:
    seen: list = []
    thread = _answer_when_asked(tools.guard, "reject", seen)
    out = tools.transfer.invoke({"payee": "acme", "amount": 9000})
    thread.join()
    assert "(rejected)" in out and "large-transfer" in out
    assert tools.calls == []


def test_without_blocking_a_step_up_answers_pending_at_once(tools: Tools) -> None:
    quick = guard_tool(tools.transfer, tools.guard, action="pay.transfer", session=tools.session, block=False,
                       raise_on_deny=True)
    with pytest.raises(ToolPending) as caught:
        quick.invoke({"payee": "acme", "amount": 9000})
    assert f"pending approval {caught.value.decision_id}" in str(caught.value)
    assert tools.calls == []


def test_async_tools_and_the_session_from_use_session(tools: Tools) -> None:
    ran = []

    @guarded_tool(tools.guard, "mail.send", name="send_async")
    async def send_async(to: str, subject: str, body: str) -> str:
        """Send an email, asynchronously."""
        await asyncio.sleep(0)
        ran.append(to)
        return "ok"

    async def agent() -> tuple:
        with use_session(tools.session):
            first = await send_async.ainvoke({"to": "bob@corp.example", "subject": "s", "body": "b"})
            second = await send_async.ainvoke({"to": "eve@elsewhere.example", "subject": "s", "body": "b"})
        return first, second

    first, second = asyncio.run(agent())
    assert first == "ok" and ran == ["bob@corp.example"]
    assert "denied by the policy (default)" in second
    with pytest.raises(GuardError, match="no session"):
        send_async.invoke({"to": "bob@corp.example", "subject": "s", "body": "b"})
    assert ran == ["bob@corp.example"]


def test_guard_tools_maps_names_to_actions(tools: Tools) -> None:
    @tool
    def noop() -> str:
        """Do nothing."""
        return "done"

    wrapped = guard_tools([noop], tools.guard, actions={"noop": "mail.read"}, session=tools.session)
    assert [t.name for t in wrapped] == ["noop"] and isinstance(wrapped[0], StructuredTool)
    assert wrapped[0].invoke({}) == "done"
    with pytest.raises(ValueError, match="`missing`"):
        guard_tools([noop], tools.guard, actions={"missing": "x.y"})


def test_importing_the_runtime_never_imports_langchain() -> None:
    script = ("import sys, aarm_runtime, aarm_runtime.guard, aarm_runtime.sdk, aarm_runtime.adapters\n"
              "import json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('langchain'))))")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
