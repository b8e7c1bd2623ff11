"""What the Guard tests share: real signed artifacts from `specs/`, real identity tokens, real receipt logs.

Nothing here is a stand-in for a runtime module: policies are compiled by
`aarmc.compile.compile_policy` and loaded by `Engine.load` with the author's
key; identities are CWTs signed by an issuer key and checked by an
`IdentityVerifier`; receipts go to a `ReceiptLog` file and are read back
through `verify.read_verified`.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from aarm_runtime import keys
from aarm_runtime import receipts as R
from aarm_runtime.engine import Engine
from aarm_runtime.guard import Guard
from aarm_runtime.identity import Delegation, Identity, IdentityVerifier, RevocationList, issue_identity
from aarm_runtime.receipt_log import ReceiptLog
from aarm_runtime.verify import Status, read_verified, verify_log
from aarmc.compile.artifact import compile_policy
from aarmc.semantics.load import load_policy, load_policy_text

SPECS = Path(__file__).resolve().parents[1] / "specs"
AUTHOR = keys.SigningKey.from_seed(bytes(range(32)))
RECEIPT_KEY = keys.SigningKey.from_seed(bytes(range(1, 33)))
IDP = keys.SigningKey.from_seed(bytes(range(2, 34)))
T0 = 1_800_000_000


class Clock:
    """A settable clock in seconds (the guard's and the identity checks' notion of now)."""

    def __init__(self, t: float = T0) -> None:
        self.t = t
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.t += seconds


@functools.lru_cache(maxsize=None)
def artifact(spec: str, validate: bool = True) -> bytes:
    """The signed artifact of one policy in `specs/`, translation-validated (compiled once per test process)."""
    result = load_policy([SPECS / spec])
    assert result.policy is not None, result.diagnostics
    return compile_policy(result.policy, AUTHOR, validate=validate).data


@functools.lru_cache(maxsize=None)
def artifact_text(text: str) -> bytes:
    result = load_policy_text(text)
    assert result.policy is not None, result.diagnostics
    return compile_policy(result.policy, AUTHOR, validate=False).data


def engine(spec: str) -> Engine:
    return Engine.load(artifact(spec), [AUTHOR.verify_key])


def engine_text(text: str) -> Engine:
    return Engine.load(artifact_text(text), [AUTHOR.verify_key])


def new_log(directory: Path, fsync: str = "none", name: str = "receipts.cbor") -> ReceiptLog:
    return ReceiptLog.create(directory / name, RECEIPT_KEY, fsync=fsync, checkpoint_interval_s=None)


def verifier(revocation: RevocationList | None = None, **kw: Any) -> IdentityVerifier:
    return IdentityVerifier({"idp.corp": IDP.verify_key}, revocation if revocation is not None else RevocationList(),
                            **kw)


def token(principal: str = "alice", *, agent: str | None = "mail-bot", role: str | None = "assistant",
          scopes: tuple[str, ...] | None = ("mail",), delegated: bool | None = None, ttl_s: int = 7200,
          now: float = T0, cti: bytes | None = None, key: keys.SigningKey = IDP, issuer: str = "idp.corp") -> bytes:
    # None: no delegation claim (unknown to policies); False: an empty chain; True: principal -> agent.
    delegation = None if delegated is None else ()
    if delegated:
        delegation = (Delegation(from_=principal, to=agent or "agent", scopes=scopes or ()),)
    return issue_identity(Identity(issuer=issuer, principal=principal, agent=agent, role=role, scopes=scopes,
                                   delegation=delegation, cti=cti), key, ttl_s=ttl_s, now=now)


def guard(spec: str | None, directory: Path, *, clock: Any = None, revocation: RevocationList | None = None,
          fsync: str = "none", **kw: Any) -> Guard:
    """A guard over a spec's real artifact (or no policy for *spec* None) and a fresh log in *directory*."""
    log = new_log(directory, fsync)
    clock = clock or Clock()
    kw.setdefault("identity_verifier", verifier(revocation))
    return Guard(None if spec is None else engine(spec), receipts=log, clock=clock, **kw)


def records(path: Path, *, allow_open: bool = True) -> list[R.Receipt]:
    """Every receipt of a log, after it verified (the test fails otherwise)."""
    got = read_verified(path, [RECEIPT_KEY.verify_key], allow_open=allow_open)
    assert got.verdict.ok, got.verdict.describe()
    return list(got.receipts)


def of_kind(receipts: list[R.Receipt], kind: R.Kind) -> list[R.Record]:
    return [r.record for r in receipts if r.kind == kind]


def decision_of(receipts: list[R.Receipt], decision_id: str) -> R.Record:
    found = [r.record for r in receipts if r.kind == R.Kind.DECISION and r.record.decision_id == decision_id]
    assert len(found) == 1, f"{len(found)} decision records for `{decision_id}`"
    return found[0]


def follow_ups(receipts: list[R.Receipt], decision_id: str) -> list[R.Record]:
    return [r.record for r in receipts if r.record.ref == decision_id]


def closed_and_verified(g: Guard) -> Status:
    """Close the guard's sessions and its log, then verify the closed log: COMPLETE expected."""
    g.close()
    g.receipts.close()
    return verify_log(g.receipts.path, [RECEIPT_KEY.verify_key]).status


class Runs:
    """A tool that counts its executions (what the tests check never happens on DENY)."""

    def __init__(self, result: Any = "done") -> None:
        self.calls: list[Any] = []
        self.result = result

    def __call__(self, params: Any) -> Any:
        self.calls.append(params)
        return self.result
