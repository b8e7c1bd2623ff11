"""One guard replica in its own process, driven by JSON lines on stdin (tests/test_shared_sessions.py).

    python tests/shared_replica.py STORE ARTIFACT LOG SESSION open|join

STORE is ``sqlite:PATH`` or a ``redis://`` URL. Each input line is a JSON
object; each answer is one JSON line on stdout, written only after the
guard returned (for a decision: after its receipt was acknowledged and the
session committed to the store):

- ``{"op": "submit", "tool": T, "params": P, "risk": R}`` -> status, decision, reason, id;
- ``{"op": "outcome", "id": D, "output": O}`` -> ok;
- ``{"op": "history"}`` -> the session's authorised tools, tags, level, actions;
- ``{"op": "hold"}`` -> takes the session's lock and answers while holding it (to be killed so).
"""

from __future__ import annotations

import json
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aarm_runtime.engine import Engine  # noqa: E402
from aarm_runtime.guard import Guard  # noqa: E402
from aarm_runtime.receipt_log import ReceiptLog  # noqa: E402
from aarm_runtime.values import load_json  # noqa: E402
from guard_fixtures import AUTHOR, RECEIPT_KEY, token, verifier  # noqa: E402


def store_of(spec: str):
    if spec.startswith("sqlite:"):
        from aarm_runtime.session_sqlite import SqliteSessionStore

        return SqliteSessionStore(spec[len("sqlite:"):])
    from aarm_runtime.session_redis import RedisSessionStore

    url, _, prefix = spec.partition("#")
    return RedisSessionStore(url, prefix=prefix or "aarm:")


def _plain(value):
    if isinstance(value, Decimal):
        return str(value)
    return value


def main() -> None:
    store_spec, artifact, log_path, session_id, mode = sys.argv[1:6]
    engine = Engine.load(Path(artifact).read_bytes(), [AUTHOR.verify_key])
    log = ReceiptLog.create(log_path, RECEIPT_KEY, fsync="always", checkpoint_interval_s=None)
    guard = Guard(engine, receipts=log, identity_verifier=verifier(), session_store=store_of(store_spec),
                  store_lease_s=2.0, store_wait_s=20.0)
    if mode == "open":
        session = guard.open_session(token(now=time.time()), intent={"text": "send bob the minutes"},
                                     session_id=session_id)
    else:
        session = guard.session(session_id)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        msg = load_json(line)
        op = msg["op"]
        if op == "submit":
            sub = guard.submit(session, msg["tool"], msg["params"], msg.get("risk"))
            out = {"status": sub.status, "decision": sub.decision.decision, "reason": sub.decision.reason,
                   "rules": list(sub.decision.rules), "id": sub.decision_id}
        elif op == "outcome":
            guard.record_outcome(session, msg["id"], ok=True, output=msg.get("output"))
            out = {"ok": True}
        elif op == "history":
            with session.lock:
                out = {"tools": [h["tool"] for h in session.history_json()], "tags": sorted(session.context.tags),
                       "level": session.context.level, "actions": session.actions}
        elif op == "hold":
            session.lock.__enter__()
            out = {"holding": True}
        else:
            out = {"error": f"unknown op {op}"}
        print(json.dumps(out, default=_plain), flush=True)


if __name__ == "__main__":
    main()
