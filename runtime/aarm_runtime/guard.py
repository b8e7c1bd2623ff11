"""The enforcement point (AARM R1, R4, R5, R6): decide every tool call before it runs, and prove it.

    guard = Guard(engine, receipts=log, identity_verifier=verifier)
    session = guard.open_session(identity_token=token, intent={"text": "..."}, env={...})
    result = guard.call(session, "email.send", params, execute=send_fn)        # blocking (SDK)
    sub = guard.submit(session, "email.send", params)                          # non-blocking (gateway, HTTP)
    guard.record_outcome(session, sub.decision_id, ok=True, output=...)

Every decision — DENY included — and every approval, rejection, deferral
resolution and outcome is a signed receipt in the receipt log, acknowledged
(fsync) **before** the action may run and before the answer is returned.
Whatever goes wrong — no policy, an unverifiable identity, an unwritable
log, an approvals service that raises, an exception anywhere inside — the
action does not run: the answer is DENY, and where the log still takes
records a receipt says why. docs/runtime.md is the reference; the reasons
the runtime adds to LANGUAGE.md §5's are listed in `RUNTIME_REASONS`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import cbor2

from aarm_runtime import receipts as R
from aarm_runtime import values
from aarm_runtime.aligner import Alignment
from aarm_runtime.approvals import (
    APPROVED,
    CANCELLED,
    TIMEOUT,
    ApprovalAnswer,
    ApprovalError,
    ApprovalRequest,
    Approvals,
)
from aarm_runtime.context import SessionContext
from aarm_runtime.credentials import CredentialError, CredentialRequest
from aarm_runtime.decision import ALLOW, DEFER, DENY, MODIFY, STEP_UP, Decision
from aarm_runtime.deferrals import ContextUpdate, DeferralError, DeferralRequest, Deferrals
from aarm_runtime.engine import DEFAULT_TIMEOUT_S, Engine
from aarm_runtime.events import GuardEvent
from aarm_runtime.identity import IdentityError
from aarm_runtime.session import GuardContext, Session, _DecisionState
from aarm_runtime.session_store import StoreError

__all__ = [
    "CallResult",
    "Denied",
    "Guard",
    "GuardError",
    "PENDING",
    "Pending",
    "RUNTIME_REASONS",
    "Session",
    "Submission",
    "args_hash",
    "canonical_params",
]

PENDING = "pending"
_STATUS = {ALLOW: ALLOW, MODIFY: MODIFY, DENY: DENY, STEP_UP: PENDING, DEFER: PENDING}

#: Reasons the runtime itself gives (decision records and `Denied.reason`), beside LANGUAGE.md §5's.
RUNTIME_REASONS = {
    "policy-unavailable": "no policy is loaded (missing or invalid artifact)",
    "session-closed": "the session was closed (no receipt: a closed session takes no decision record)",
    "session-expired": "the session is older than its TTL",
    "action-cap": "the session reached its maximum number of actions",
    "identity-missing": "no identity assertion was presented",
    "identity-*": "the identity assertion was refused (`IdentityError.reason`: expired, revoked, ...)",
    "pending-dependency": "DEFER: an earlier action of the session is still pending",
    "pending-limit": "DENY: too many actions of the session are pending",
    "approval-timeout": "no approval before the STEP_UP deadline",
    "rejected": "a human rejected the STEP_UP",
    "approval-unavailable": "the approvals service failed",
    "approval-mismatch": "a redemption whose arguments differ from the approved ones",
    "approval-used": "a second redemption of the same approval",
    "approval-expired": "an approved action redeemed after its redemption window",
    "deferral-timeout": "a DEFER not resolved before its deadline",
    "deferral-denied": "a human or a failing resolver denied the deferred action",
    "deferral-unavailable": "the deferral service failed",
    "deferral-used": "a deferral redeemed again after its re-evaluation",
    "unknown-decision": "a redemption naming no decision of this session",
    "not-redeemable": "a redemption of a decision that was not STEP_UP or DEFER",
    "invalid-params": "params that are not JSON (also LANGUAGE.md §5's reason for invalid params)",
    "internal-error": "an exception inside the runtime",
    "receipt-unavailable": "the receipt could not be made durable (no receipt can say why)",
    "session-store-unavailable": "the shared session store failed or the session's lease was lost",
}

_ARGS_DOMAIN = b"aarm-args-v1\x00"
_SURROGATES = re.compile("[\ud800-\udfff]")


class GuardError(Exception):
    """A misuse of the guard API (unknown session or decision, an outcome for an action that never ran)."""


class Denied(Exception):
    """The action was not allowed to run; carries the decision that said so and its id.

    Returned in `CallResult.error` and `Submission.error`; raised by `Guard.call(..., raise_on_deny=True)`
    and by `sdk.guarded` functions.
    """

    def __init__(self, decision: Decision, decision_id: str | None) -> None:
        super().__init__(decision.message)
        self.decision = decision
        self.decision_id = decision_id

    @property
    def rules(self) -> tuple[str, ...]:
        return self.decision.rules

    @property
    def reason(self) -> str:
        return self.decision.reason

    @property
    def message(self) -> str:
        return self.decision.message

    def __repr__(self) -> str:
        return f"Denied(reason={self.reason!r}, rules={self.rules!r}, decision_id={self.decision_id!r})"


class Pending(Exception):
    """A STEP_UP or DEFER that is still waiting: what a non-blocking caller answers with
    ("pending approval <decision_id>"), then retries with `Guard.redeem`.

    Returned in `CallResult.error` by ``Guard.call(..., block=False)``; raised by
    `sdk.guarded(..., block=False)` functions.
    """

    def __init__(self, decision: Decision, decision_id: str, deadline: float | None) -> None:
        what = "approval" if decision.decision == STEP_UP else "deferral"
        super().__init__(f"pending {what} {decision_id}")
        self.decision = decision
        self.decision_id = decision_id
        self.deadline = deadline

    @property
    def reason(self) -> str:
        return self.decision.reason

    @property
    def message(self) -> str:
        return str(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Submission:
    """The answer to one submitted (or redeemed) action.

    `status`: ``allow`` or ``modify`` — execute now with `params`; ``deny`` —
    never execute (`error` says why); ``pending`` — STEP_UP or DEFER: answer
    "pending approval <decision_id>" and retry with `Guard.redeem` (or, for
    a STEP_UP, after `guard.approvals.approve(decision_id, ...)`). `deadline`
    is when a pending decision times out (guard clock). `receipt` is the
    log's `Ack` (or, with ``wait=False``, its `receipt_log.Pending`: call
    `wait()` before executing).
    """

    decision: Decision
    decision_id: str
    args_hash: str
    status: str
    action_id: str = ""
    session_id: str = ""
    params: Any = None
    deadline: float | None = None
    error: Denied | None = None
    receipt: Any = None

    def wait(self) -> Any:
        """Block until the decision's receipt is durable; raise if it cannot be (then do not execute)."""
        r = self.receipt
        if r is not None and hasattr(r, "wait"):
            return r.wait()
        return r


@dataclasses.dataclass(frozen=True, slots=True)
class CallResult:
    """What `Guard.call` did. `ok` is True only when the tool ran and returned; `value` is its return value;
    `params_executed` what it ran with (the MODIFY's params, for a MODIFY); `error` the `Denied` when it
    did not run (a `Pending` with ``block=False``; a `CredentialError` when the action was allowed but no
    credential could be minted for it, so it did not run). `outcome_error` is set when the tool ran but its outcome
    receipt could not be written."""

    ok: bool
    value: Any
    decision: Decision
    decision_id: str
    params_executed: Any
    error: Denied | Pending | CredentialError | None
    action_id: str = ""
    outcome_error: str | None = None


# ---- params: canonical JSON fast, and the argument hash --------------------------------------------


# One encoder for every call: `json.dumps` with options builds a new one each time.
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def _flat_encoder() -> Callable[[dict], str]:
    """`_ENCODE` for a `_flat` dict: json's C encoder made once (`JSONEncoder.encode` makes one per call).
    Its options are `_ENCODE`'s; it skips the cycle check, which a dict of scalars never needs."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without json's C accelerator
        return _ENCODE
    encode = make(None, None, json.encoder.encode_basestring, None, ":", ",", True, False, False)
    return lambda value: "".join(encode(value, 0))


_ENCODE_FLAT = _flat_encoder()


def _flat(value: dict) -> bool:
    """A dict of ASCII keys and plain scalars (ASCII strings, ints, bools, null): the common params shape,
    which `_jsonish` would return unchanged as plain."""
    for k, v in value.items():
        t = type(v)
        if type(k) is not str or not k.isascii():
            return False
        if t is str:
            if not v.isascii():
                return False
        elif not (t is int or t is bool or v is None):
            return False
    return True


def _jsonish(value: Any, depth: int = 0) -> tuple[Any, bool]:
    """(value with floats read as decimals, whether `json.dumps` writes it exactly as `values.canonical_json`)."""
    t = type(value)
    if t is str:
        return value, value.isascii() or _SURROGATES.search(value) is None
    if t is int or t is bool or value is None:
        return value, True
    if t is float:
        # The decimal its shortest repr spells: what a JSON parser reads from that text.
        return (Decimal(repr(value)) if math.isfinite(value) else value), False
    if depth > 64:
        return value, False
    if t is dict:
        plain = True
        out = None
        for k, v in value.items():
            cv, p = _jsonish(v, depth + 1)
            if not p or type(k) is not str or not k.isascii():
                plain = False
            if cv is not v:
                if out is None:
                    out = dict(value)
                out[k] = cv
        return (value if out is None else out), plain
    if t is list or t is tuple:
        plain = True
        out_list = None
        for i, v in enumerate(value):
            cv, p = _jsonish(v, depth + 1)
            plain = plain and p
            if cv is not v:
                if out_list is None:
                    out_list = list(value)
                out_list[i] = cv
        return (value if out_list is None else out_list), plain
    return value, False


def canonical_params(value: Any) -> str:
    """`values.canonical_json(value)` (RFC 8785 style), with Python floats read as the decimals they spell.

    Plain JSON (ASCII keys, no floats or decimals, no lone surrogates) takes
    `json.dumps`, which writes exactly the same text several times faster
    (tested against `values.canonical_json`).

    >>> canonical_params({"b": [1, 2.5], "a": "x"})
    '{"a":"x","b":[1,2.5]}'
    """
    converted, plain = _jsonish(value)
    if plain:
        return _ENCODE(converted)
    return values.canonical_json(converted)


def args_hash(tool: str, params_digest: bytes) -> str:
    """The argument hash an approval is bound to: hex SHA-256 of ``"aarm-args-v1" 0x00 tool 0x00 digest``,
    where *digest* is SHA-256 of the canonical JSON of the params as proposed (the receipt's params digest)."""
    return hashlib.sha256(_ARGS_DOMAIN + tool.encode("utf-8") + b"\x00" + params_digest).hexdigest()


class _Prepared:
    __slots__ = ("raw", "value", "text", "digest", "error")

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.error: str | None = None
        self.text: str | None = None
        try:
            if type(raw) is dict and _flat(raw):
                self.value = raw
                self.text = _ENCODE_FLAT(raw)
            else:
                self.value, plain = _jsonish(raw)
                self.text = _ENCODE(self.value) if plain else values.canonical_json(self.value)
            self.digest = hashlib.sha256(self.text.encode("utf-8")).digest()
        except (TypeError, ValueError, RecursionError) as err:
            self.value = raw
            self.error = str(err) or type(err).__name__
            self.digest = hashlib.sha256(f"unserialisable params: {type(raw).__name__}".encode()).digest()


# Ids: a random prefix per process and a counter. Unique within a log (one writer per file; a
# restarted writer draws a new prefix), cheap, and short enough to type in `aarmc approve ID`.
_ID_PREFIX = os.urandom(5).hex()
_ID_COUNTER = itertools.count(1)


def _provided(raw: Any) -> ContextUpdate | None:
    """The context `Guard.provide` kept in a decision state ([env, intent, risk, by]), or None."""
    return None if raw is None else ContextUpdate(env=raw[0], intent=raw[1], risk=raw[2], by=raw[3])


def _new_id(prefix: str) -> str:
    return f"{prefix}{_ID_PREFIX}{next(_ID_COUNTER):x}"


def _runtime(effect: str, reason: str, message: str, tool: str, *, wrapper: str | None = None,
             rules: tuple[str, ...] = (), timeout_s: int | None = None) -> Decision:
    return Decision(decision=effect, rules=rules, reason=reason, message=message, tool=tool, wrapper=wrapper,
                    timeout_s=timeout_s)


class _ResolverFailed(Exception):
    def __init__(self, name: str, err: BaseException) -> None:
        super().__init__(f"resolver `{name}` failed: {type(err).__name__}: {err}")


# ---- the guard --------------------------------------------------------------------------------------


class Guard:
    """The policy enforcement point over one engine, one receipt log and one identity verifier; thread-safe.

    *engine* None (or `Guard.from_artifact` failing to load) means no policy:
    every action is denied, with a receipt. *identity_verifier* None is only
    accepted with ``unsafe_no_identity=True`` (tests, development): identity
    dicts are then taken as given and may be absent. Timeouts: a STEP_UP or
    DEFER waits for its policy timeout, capped by *approval_timeout_s* /
    *deferral_timeout_s* when set; a ``pending-dependency`` DEFER waits
    *deferral_timeout_s* (default 300 s). *include_params*: raw params go in
    receipts (as canonical JSON) for tools without ``sensitive`` params;
    otherwise only their digest does. *clock* returns seconds (int or float).
    """

    def __init__(
        self,
        engine: Engine | None,
        *,
        receipts: Any,
        identity_verifier: Any = None,
        approvals: Any = None,
        deferrals: Any = None,
        deferral_timeout_s: float | None = None,
        approval_timeout_s: float | None = None,
        max_pending_per_session: int = 4,
        session_ttl_s: float | None = 3600,
        max_actions_per_session: int = 10_000,
        clock: Callable[[], float] = time.time,
        unsafe_no_identity: bool = False,
        include_params: bool = False,
        policy_error: str | None = None,
        name: str = "aarm-runtime",
        max_reevaluations: int = 8,
        redeem_window_s: float = 300,
        poll_s: float = 0.25,
        resolver_interval_s: float = 1.0,
        session_store: Any = None,
        store_lease_s: float = 10.0,
        store_wait_s: float = 10.0,
        observers: Any = (),
        aligner: Any = None,
        credentials: Callable[[CredentialRequest], Any] | None = None,
    ) -> None:
        if receipts is None or not hasattr(receipts, "submit"):
            raise TypeError("receipts must be a `ReceiptLog` (every decision needs a receipt)")
        if identity_verifier is None and not unsafe_no_identity:
            raise ValueError("an identity verifier is required; pass unsafe_no_identity=True only for development")
        if engine is not None and not isinstance(engine, Engine):
            raise TypeError(f"engine must be an `Engine` or None, got `{type(engine).__name__}`")
        for what, v in (("max_pending_per_session", max_pending_per_session),
                        ("max_actions_per_session", max_actions_per_session)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{what} must be a positive integer, got `{v!r}`")
        self.engine = engine
        self.policy_error = policy_error if engine is None else None
        if engine is None and self.policy_error is None:
            self.policy_error = "no policy artifact is loaded"
        self.receipts = receipts
        self.verifier = identity_verifier
        self.unsafe_no_identity = unsafe_no_identity
        self.approvals = approvals if approvals is not None else Approvals()
        self.deferrals = deferrals if deferrals is not None else Deferrals()
        self.deferral_timeout_s = deferral_timeout_s
        self.approval_timeout_s = approval_timeout_s
        self.max_pending_per_session = max_pending_per_session
        self.session_ttl_s = session_ttl_s
        self.max_actions_per_session = max_actions_per_session
        self.clock = clock
        self.include_params = include_params
        self.name = name
        self.max_reevaluations = max_reevaluations
        self.redeem_window_s = redeem_window_s
        self.poll_s = poll_s
        self.resolver_interval_s = resolver_interval_s
        self._resolvers: list[tuple[str, Callable]] = []
        if session_store is not None and not all(hasattr(session_store, m) for m in
                                                 ("create", "header", "acquire", "commit", "release")):
            raise TypeError("session_store must be a `SessionStore` (aarm_runtime.session_store)")
        self.store = session_store
        self.store_lease_s = store_lease_s
        self.store_wait_s = store_wait_s
        observers = tuple(observers)
        if not all(callable(o) for o in observers):
            raise TypeError("observers must be callables taking a `GuardEvent`")
        self._observers = observers
        #: Exceptions raised by observers (swallowed: an observer never changes a decision).
        self.observer_errors = 0
        if aligner is not None and not callable(getattr(aligner, "assess", None)):
            raise TypeError("aligner must have an `assess(intent, tool, params, prior)` method")
        self.aligner = aligner
        if credentials is not None and not callable(credentials):
            raise TypeError("credentials must be a callable taking a `CredentialRequest`")
        self.credentials = credentials
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._infos: dict[int, tuple[Decision, R.DecisionInfo]] = {}
        self._risks: dict[Any, tuple[Any, Any, Any]] = {}
        self._sweeper: threading.Thread | None = None
        self._stop_sweeper = threading.Event()
        self._sensitive: dict[str, bool] = {}
        self._sensitive_names: dict[str, tuple[str, ...]] = {}
        self._param_types: dict[str, dict[str, Any]] = {}
        self.policy_ref: R.PolicyRef | None = None
        self._wraps: dict[str, tuple[str, str]] = {}
        if engine is not None:
            art = engine.artifact
            self.policy_ref = R.PolicyRef.from_artifact(art)
            self._wraps = {t.name: t.wraps for t in art.tools if t.wraps is not None}
            self._sensitive = {t.name: any(p.sensitive for p in t.params) for t in art.tools}
            self._sensitive_names = {t.name: tuple(p.name for p in t.params if p.sensitive) for t in art.tools}
            self._param_types = {t.name: {p.name: p.type for p in t.params} for t in art.tools}
        _attach(self.approvals, self._on_approval, clock=clock, name=name)
        _attach(self.deferrals, self._on_deferral_denied, clock=clock)

    @classmethod
    def from_artifact(cls, source: Any, trusted_keys: Any = (), *, unsafe_unsigned: bool = False,
                      **kwargs: Any) -> Guard:
        """A guard over the artifact at *source*; if it cannot be loaded the guard runs with no policy
        (every action DENY ``policy-unavailable``, with a receipt naming the load error)."""
        try:
            engine = Engine.load(source, trusted_keys, unsafe_unsigned=unsafe_unsigned)
        except Exception as err:  # noqa: BLE001 - a missing or bad policy must not stop enforcement
            return cls(None, policy_error=f"policy artifact `{source}` could not be loaded: {err}", **kwargs)
        return cls(engine, **kwargs)

    def add_resolver(self, resolver: Callable[[DeferralRequest], Any], name: str | None = None) -> None:
        """Register a resolver: called with each DEFER (`DeferralRequest`, reason ``absent-context``,
        ``rule`` or ``conflict``), it returns a `ContextUpdate` (or a mapping with ``env`` / ``intent`` /
        ``risk``) to decide the action again with, or None. A resolver that raises denies the action."""
        if not callable(resolver):
            raise TypeError("a resolver must be callable")
        self._resolvers.append((name or getattr(resolver, "__name__", "resolver"), resolver))

    @property
    def sessions(self) -> dict[str, Session]:
        with self._lock:
            return dict(self._sessions)

    def session(self, session_id: str) -> Session:
        """The open session *session_id*; with a session store, one another replica opened is joined."""
        with self._lock:
            got = self._sessions.get(session_id)
        if got is None:
            if self.store is not None and isinstance(session_id, str) and session_id:
                return self.join_session(session_id)
            raise GuardError(f"no open session `{session_id}`")
        return got

    # ---- sessions -------------------------------------------------------------------------------

    def open_session(self, identity_token: bytes | None = None, intent: Mapping[str, Any] | None = None,
                     env: Mapping[str, Any] | None = None, session_id: str | None = None, *,
                     identity: Mapping[str, Any] | None = None) -> Session:
        """Open a session and write its session-start receipt.

        The identity token is verified now; a missing or refused identity does
        not raise — the session opens, its session-start receipt names the
        refusal, and every decision in it is a DENY. *identity* (a §7
        identity object) is accepted only with ``unsafe_no_identity``.

        A token bound to a session (its `session` claim) opens that session:
        *session_id* None takes the claim's id, and another *session_id* is
        refused as an identity error (``identity-session-mismatch``: every
        decision DENY), so a token issued for one session cannot drive another.
        """
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise ValueError("session_id must be a non-empty string")
        now = self.clock()
        verified = None
        identity_json: dict[str, Any] | None = None
        error: tuple[str, str] | None = None
        digest: bytes | None = None
        if self.verifier is not None:
            if identity is not None:
                raise ValueError("an identity dict is taken as given only with unsafe_no_identity=True")
            if identity_token is None:
                error = ("identity-missing", "no identity assertion was presented")
            else:
                try:
                    verified = self.verifier.verify(identity_token, now)
                    identity_json = verified.to_session_identity()
                    digest = verified.token_sha256
                except IdentityError as err:
                    error = (err.reason, str(err))
                except Exception as err:  # noqa: BLE001 - an identity we cannot check is no identity
                    error = ("identity-invalid", f"identity could not be verified: {err}")
            bound = getattr(verified, "session", None)
            if bound is not None:
                if session_id is None:
                    session_id = bound
                elif session_id != bound:
                    error = ("identity-session-mismatch", f"the identity assertion is bound to session `{bound}`, "
                                                          f"not `{session_id}`")
        else:
            given = identity if identity is not None else identity_token
            if given is not None:
                if not isinstance(given, Mapping):
                    raise TypeError("without a verifier, the identity must be a §7 identity object (a mapping)")
                identity_json = dict(given)
        if session_id is None:
            session_id = _new_id("s")
        receipt_identity = None
        if identity_json is not None:
            try:
                receipt_identity = R.Identity.from_mapping(identity_json, assertion_digest=digest)
            except (TypeError, ValueError):
                receipt_identity = None  # an invalid unsafe identity: the context refuses it, decisions DENY
        intent_j = None if intent is None else _jsonish(dict(intent))[0]
        env_j = None if env is None else _jsonish(dict(env))[0]
        ttl = self.session_ttl_s
        expires = None if ttl is None else now + ttl
        session = self._new_session(session_id, verified, identity_json, receipt_identity, error, intent_j, env_j,
                                    now, expires)
        with self._lock:
            if session_id in self._sessions:
                raise GuardError(f"session `{session_id}` is already open")
            if self.store is not None:
                header = cbor2.dumps({"format": 1, "id": session_id, "token": identity_token if verified else None,
                                      "identity": identity_json if self.verifier is None else None,
                                      "intent": intent_j, "env": env_j, "opened_at": now, "expires_at": expires,
                                      "error": None if error is None else list(error)}, canonical=True)
                try:
                    created = self.store.create(session_id, header, ttl_s=None if ttl is None else ttl + 3600)
                except Exception as err:  # noqa: BLE001
                    raise StoreError(f"session `{session_id}` could not be created in the session store: {err}") \
                        from err
                if not created:
                    raise GuardError(f"session `{session_id}` is already open (in the session store)")
            self._sessions[session_id] = session
        note = None if error is None else f"identity refused: {error[0]}: {error[1]}"
        try:
            self._write_open(session, now, digest, identity_json, intent_j, env_j, error, receipt_identity, note)
        except StoreError as err:
            session.broken = f"the session could not be recorded in the session store: {err}"
        self._emit(session, "session-start", None)
        return session

    def _new_session(self, session_id: str, verified: Any, identity_json: Any, receipt_identity: Any, error: Any,
                     intent: Any, env: Any, opened_at: float, expires_at: float | None) -> Session:
        return Session(session_id=session_id, identity=verified, identity_json=identity_json,
                       identity_receipt=receipt_identity, identity_error=error, intent=intent, env=env,
                       opened_at=opened_at, expires_at=expires_at,
                       declarations=None if self.engine is None else self.engine.declarations, store=self.store,
                       lease_s=self.store_lease_s, wait_s=self.store_wait_s)

    def _write_open(self, session: Session, now: float, digest: bytes | None, identity_json: Any, intent_j: Any,
                    env_j: Any, error: Any, receipt_identity: Any, note: str | None) -> None:
        with session.lock:
            session.log.append("open", _ns(now), session.id, None if digest is None else digest,
                               None if identity_json is None else _text_or_none(identity_json),
                               None if intent_j is None else _text_or_none(intent_j),
                               None if env_j is None else _text_or_none(env_j),
                               None if error is None else error[0])
            try:
                self.receipts.submit(R.session_start_record(
                    session.id, identity=receipt_identity, context=session.log.head, policy=self.policy_ref,
                    note=note)).wait()
            except Exception as err:  # noqa: BLE001 - no session-start: every decision of it is refused
                session.broken = f"the session-start receipt could not be written: {err}"

    def join_session(self, session_id: str) -> Session:
        """Serve a session another replica opened in the shared session store.

        The identity is verified again here (with this guard's verifier and
        clock); a refusal the opener saw stands. This replica's receipt log
        gets a session-start receipt saying the session was joined. Raises
        `GuardError` when there is no such session (or it is closed, or still
        being opened), `StoreError` when the store cannot be read.
        """
        if self.store is None:
            raise GuardError("joining a session needs a session store")
        if not isinstance(session_id, str) or not session_id:
            raise ValueError("session_id must be a non-empty string")
        with self._lock:
            got = self._sessions.get(session_id)
            if got is not None:
                return got
        try:
            raw = self.store.header(session_id)
        except Exception as err:  # noqa: BLE001
            raise StoreError(f"session `{session_id}` could not be read from the session store: {err}") from err
        if raw is None:
            raise GuardError(f"no open session `{session_id}` (not in the session store either)")
        try:
            header = cbor2.loads(raw)
            if not isinstance(header, dict) or header.get("format") != 1 or header.get("id") != session_id:
                raise ValueError("not a session header of this format")
            token, ident, error = header["token"], header["identity"], header["error"]
            intent_j, env_j, opened_at, expires = (header["intent"], header["env"], header["opened_at"],
                                                   header["expires_at"])
        except Exception as err:  # noqa: BLE001
            raise GuardError(f"session `{session_id}` in the session store has a malformed header: {err}") from err
        now = self.clock()
        verified = None
        identity_json = None
        digest = None
        err_pair = None if error is None else (str(error[0]), str(error[1]))
        if self.verifier is not None:
            if err_pair is None:
                if token is None:
                    err_pair = ("identity-missing", "no identity assertion was presented")
                else:
                    try:
                        verified = self.verifier.verify(token, now)
                        identity_json = verified.to_session_identity()
                        digest = verified.token_sha256
                        if verified.session is not None and verified.session != session_id:
                            err_pair = ("identity-session-mismatch", f"the identity assertion is bound to session "
                                                                     f"`{verified.session}`, not `{session_id}`")
                    except IdentityError as e:
                        err_pair = (e.reason, str(e))
                    except Exception as e:  # noqa: BLE001
                        err_pair = ("identity-invalid", f"identity could not be verified: {e}")
        elif ident is not None:
            identity_json = dict(ident)
        receipt_identity = None
        if identity_json is not None:
            try:
                receipt_identity = R.Identity.from_mapping(identity_json, assertion_digest=digest)
            except (TypeError, ValueError):
                receipt_identity = None
        session = self._new_session(session_id, verified, identity_json, receipt_identity, err_pair, intent_j, env_j,
                                    opened_at, expires)
        with self._lock:
            got = self._sessions.get(session_id)
            if got is not None:
                return got
            self._sessions[session_id] = session
        try:
            with session.lock:
                if len(session.log) == 0:
                    raise GuardError(f"session `{session_id}` is still being opened by another replica")
                if session.closed:
                    raise GuardError(f"session `{session_id}` is closed")
                self.receipts.submit(R.session_start_record(
                    session_id, identity=receipt_identity, context=session.log.head, policy=self.policy_ref,
                    note="joined: the session was opened by another replica (session store)")).wait()
        except BaseException as err:
            with self._lock:
                self._sessions.pop(session_id, None)
            if isinstance(err, (GuardError, StoreError)):
                raise
            if isinstance(err, Exception):
                raise GuardError(f"session `{session_id}` could not be joined: {err}") from err
            raise
        self._emit(session, "session-start", None)
        return session

    def detach_session(self, session: Session) -> None:
        """Stop serving a shared session here without closing it (other replicas go on serving it)."""
        self._own(session)
        with self._lock:
            self._sessions.pop(session.id, None)

    def close_session(self, session: Session, note: str | None = None) -> None:
        """Cancel what is still pending in the session (receipts say so), then write session-end."""
        self._own(session)
        with session.lock:
            if session.closed:
                return
            # Closed first: no new decision from here on; then what is pending is cancelled.
            session.closed = True
            waiting = list(session.pending.values())
        for state in waiting:
            try:
                self._cancel_pending(session, state, "session closed")
            except Exception:  # noqa: BLE001, S112 - the cancellation is best effort; session-end still goes
                continue
        with session.lock:
            now = self.clock()
            session.log.append("close", _ns(now), note)
            error = None
            if session.broken is None:
                try:
                    self.receipts.submit(R.session_end_record(session.id, context=session.log.head,
                                                              note=note)).wait()
                except Exception as err:  # noqa: BLE001
                    error = err
        with self._lock:
            self._sessions.pop(session.id, None)
        if error is not None:
            raise GuardError(f"session-end receipt of `{session.id}` could not be written: {error}")
        self._emit(session, "session-end", None, message=note)

    def close(self) -> None:
        """Stop the sweeper, close every open session (the receipt log stays open: its owner closes it)."""
        self._stop_sweeper.set()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and sweeper is not threading.current_thread():
            sweeper.join()
        for session in list(self.sessions.values()):
            if session.shared:
                # A replica stopping does not end a session others may be serving.
                self.detach_session(session)
                continue
            try:
                self.close_session(session, note="guard closed")
            except (GuardError, StoreError):
                pass

    # ---- non-blocking enforcement ------------------------------------------------------------------

    def submit(self, session: Session, tool: str, params: Any, risk: Mapping[str, Any] | None = None, *,
               wait: bool = True) -> Submission:
        """Decide one proposed action and record the decision; the caller executes only on allow/modify.

        ``wait=False`` returns once the receipt is signed and written, before
        its fsync: the caller must call `Submission.wait()` before executing.
        """
        self._own(session)
        if not isinstance(tool, str):
            raise TypeError(f"tool must be a string, got `{type(tool).__name__}`")
        self._sweep(session)
        sub = self._decide(session, tool, params, risk, wait=wait)
        if (sub.status == PENDING and sub.decision.decision == DEFER and self._resolvers
                and sub.decision.reason != "pending-dependency"):
            # Ask the resolvers at once: when one knows, the caller gets the re-evaluation now.
            sub.wait()
            sub = self.redeem(session, sub.decision_id, tool, params)
        return sub

    def redeem(self, session: Session, decision_id: str, tool: str, params: Any) -> Submission:
        """A retry that carries a pending decision's id: approved STEP_UP ⇒ allow (once, for the same
        arguments); resolved DEFER ⇒ the re-evaluation (a new decision id); still waiting ⇒ pending;
        rejected, timed out, used, or other arguments ⇒ deny."""
        self._own(session)
        if not isinstance(tool, str):
            raise TypeError(f"tool must be a string, got `{type(tool).__name__}`")
        self._sweep(session)
        prepared = _Prepared(params)
        try:
            with session.lock:
                state = session.decisions.get(decision_id) if isinstance(decision_id, str) else None
                if state is None:
                    if isinstance(decision_id, str) and decision_id in session.finished:
                        return self._refuse(session, tool, prepared, None, "not-redeemable",
                                            f"decision `{decision_id}` was denied or has run: there is nothing "
                                            "to redeem")
                    return self._refuse(session, tool, prepared, None, "unknown-decision",
                                        f"decision `{decision_id}` is not a decision of session `{session.id}`")
                if args_hash(tool, prepared.digest) != state.args_hash:
                    return self._refuse(session, tool, prepared, state, "approval-mismatch",
                                        f"the arguments differ from those of decision `{decision_id}`")
                effect = state.decision.decision
                if effect == DEFER:
                    return self._redeem_deferral(session, state, prepared)
                if effect != STEP_UP:
                    return self._refuse(session, tool, prepared, state, "not-redeemable",
                                        f"decision `{decision_id}` was {effect}, not step_up or defer: "
                                        "there is nothing to redeem")
            # Not under the session lock: asking the approvals service may wait for an answer being
            # recorded right now, and recording it takes the session lock.
            return self._redeem_step_up(session, state, prepared)
        except Exception as err:  # noqa: BLE001 - fail closed
            return self._internal_failure(session, tool, prepared, err, None)

    def record_outcome(self, session: Session, decision_id: str, *, ok: bool = True, output: Any = None,
                       started_ns: int | None = None, ended_ns: int | None = None,
                       error: str | None = None) -> Any:
        """Record what happened when an authorised action ran: an outcome receipt, and the output's
        provenance in the session (its label and tags entered when the action was authorised).

        *output* None means the tool returned no data. A failed run (``ok=False``) adds no output.
        """
        self._own(session)
        now = self.clock()
        end = ended_ns if ended_ns is not None else time.time_ns()
        start = started_ns if started_ns is not None else end
        with session.lock:
            state = session.decisions.get(decision_id)
            if state is None:
                done = session.finished.get(decision_id)
                if done == DENY:
                    raise GuardError(f"decision `{decision_id}` did not authorise an action (deny); nothing ran, "
                                     "so there is no outcome")
                if done is not None:
                    raise GuardError(f"the outcome of decision `{decision_id}` is already recorded")
                raise GuardError(f"decision `{decision_id}` is not a decision of session `{session.id}`")
            if not state.granted:
                raise GuardError(f"decision `{decision_id}` did not authorise an action "
                                 f"({state.decision.decision}); nothing ran, so there is no outcome")
            if state.revoked is not None:
                raise GuardError(f"decision `{decision_id}` was withdrawn before it ran: {state.revoked}")
            if state.outcome_recorded:
                raise GuardError(f"the outcome of decision `{decision_id}` is already recorded")
            has_output = bool(ok) and output is not None
            digest = None
            data = None
            if has_output:
                data, digest = _output(output)
            record = R.outcome_record(session=session.id, ref=decision_id, ok=bool(ok), start_ns=start,
                                      end_ns=max(start, end), output_digest=digest,
                                      error=None if error is None else str(error), action_id=state.action_id,
                                      context=session.log.head)
            self._carry(session, state)
            pending = self.receipts.submit(record)
            state.outcome_recorded = True
            if has_output and session.context is not None and state.history_index is not None:
                session.context.attach_output(state.history_index, data)
            session.log.append("output", _ns(now), decision_id, bool(ok), digest)
            self._emit(session, "outcome", state.decision, decision_id=decision_id, action_id=state.action_id,
                       tool=state.tool, ok=bool(ok), error=None if error is None else str(error))
            if state.decision.decision in (ALLOW, MODIFY):
                # Finished: nothing can follow an outcome. (A STEP_UP keeps its state: a second
                # redemption of its approval must still be told it was used.)
                del session.decisions[decision_id]
                session.finished[decision_id] = "outcome"
        return pending.wait()

    # ---- blocking enforcement ----------------------------------------------------------------------

    def call(self, session: Session, tool: str, params: Any, execute: Callable[[Any], Any],
             risk: Mapping[str, Any] | None = None, *, raise_on_deny: bool = False,
             block: bool = True) -> CallResult:
        """Decide, then run *execute(params)* only if allowed (with the MODIFY's params for a MODIFY).

        STEP_UP blocks until approved (then runs), rejected or timed out
        (DENY); DEFER blocks until resolved (decided again) or timed out
        (DENY). The outcome is recorded. If *execute* raises, its failure is
        recorded and the exception propagates. ``block=False``: a STEP_UP or
        DEFER returns at once with a `Pending` error (retry with `redeem`).
        """
        if not callable(execute):
            raise TypeError("execute must be callable: it runs the tool when the action is allowed")
        sub = self.submit(session, tool, params, risk)
        if sub.status == PENDING and not block:
            return _pending_result(sub)
        sub = self._await(session, sub, tool, params)
        if sub.status not in (ALLOW, MODIFY):
            if raise_on_deny and sub.error is not None:
                raise sub.error
            return CallResult(ok=False, value=None, decision=sub.decision, decision_id=sub.decision_id,
                              params_executed=None, error=sub.error, action_id=sub.action_id)
        started = time.time_ns()
        args: tuple = (sub.params,)
        if self.credentials is not None:
            try:
                args = (sub.params, self.mint_credential(session, sub.decision_id))
            except CredentialError as err:
                return self._not_run(session, sub, started, err)
        try:
            value = execute(*args)
        except BaseException as exc:
            self._record_failure(session, sub, started, exc)
            raise
        return self._finish_call(session, sub, started, value)

    async def acall(self, session: Session, tool: str, params: Any, execute: Callable[[Any], Any],
                    risk: Mapping[str, Any] | None = None, *, raise_on_deny: bool = False,
                    block: bool = True) -> CallResult:
        """`call` for asyncio: the guard's blocking steps (receipt fsyncs) run in a worker thread, waits
        for an approval or a resolution poll without holding one, and *execute* may be a coroutine function
        or a plain function (called in the event loop's thread)."""
        if not callable(execute):
            raise TypeError("execute must be callable: it runs the tool when the action is allowed")
        sub = await asyncio.to_thread(self.submit, session, tool, params, risk)
        if sub.status == PENDING and not block:
            return _pending_result(sub)
        delay = 0.005
        # Every pending decision reaches its deadline, where redeem answers deny: the loop ends.
        while sub.status == PENDING:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.poll_s)
            sub = await asyncio.to_thread(self.redeem, session, sub.decision_id, tool, params)
        if sub.status not in (ALLOW, MODIFY):
            if raise_on_deny and sub.error is not None:
                raise sub.error
            return CallResult(ok=False, value=None, decision=sub.decision, decision_id=sub.decision_id,
                              params_executed=None, error=sub.error, action_id=sub.action_id)
        started = time.time_ns()
        args: tuple = (sub.params,)
        if self.credentials is not None:
            try:
                args = (sub.params, await asyncio.to_thread(self.mint_credential, session, sub.decision_id))
            except CredentialError as err:
                return await asyncio.to_thread(self._not_run, session, sub, started, err)
        try:
            value = execute(*args)
            if inspect.isawaitable(value):
                value = await value
        except BaseException as exc:
            await asyncio.to_thread(self._record_failure, session, sub, started, exc)
            raise
        return await asyncio.to_thread(self._finish_call, session, sub, started, value)

    def mint_credential(self, session: Session, decision_id: str) -> Any:
        """The credential for the authorised action *decision_id* (AARM R9, `aarm_runtime.credentials`).

        Raises `CredentialError` when no minter is configured, the decision did not authorise an action
        (or its outcome is recorded), or the minter fails: the action must not run.
        """
        self._own(session)
        if self.credentials is None:
            raise CredentialError("no credential minter is configured (Guard(credentials=...))")
        with session.lock:
            state = session.decisions.get(decision_id)
            if state is None or not state.granted or state.revoked is not None or state.outcome_recorded:
                raise CredentialError(f"decision `{decision_id}` has no authorised action waiting to run")
            d = state.decision
            request = CredentialRequest(
                session_id=session.id, decision_id=decision_id, action_id=state.action_id, tool=d.tool or state.tool,
                wrapper=d.wrapper, params=state.exec_params, identity=session.identity_json,
                decision=d.decision, rules=d.rules, expires_at=session.expires_at)
        try:
            credential = self.credentials(request)
        except Exception as err:  # noqa: BLE001 - whatever the minter raises, the action does not run
            raise CredentialError(f"credential minting failed: {type(err).__name__}: {err}") from err
        if credential is None:
            raise CredentialError("the credential minter returned nothing")
        with session.lock:
            session.log.append("credential", _ns(self.clock()), decision_id, type(credential).__name__)
        return credential

    def _not_run(self, session: Session, sub: Submission, started: int, err: CredentialError) -> CallResult:
        """An authorised action that cannot run (no credential): its outcome says so; nothing executed."""
        try:
            self.record_outcome(session, sub.decision_id, ok=False, started_ns=started, ended_ns=time.time_ns(),
                                error=f"not run: {err}")
        except Exception:  # noqa: BLE001, S110 - the action did not run either way
            pass
        return CallResult(ok=False, value=None, decision=sub.decision, decision_id=sub.decision_id,
                          params_executed=None, error=err, action_id=sub.action_id)

    def _await(self, session: Session, sub: Submission, tool: str, params: Any) -> Submission:
        while sub.status == PENDING:
            remaining = max(0.0, (sub.deadline if sub.deadline is not None else self.clock()) - self.clock())
            if sub.decision.decision == STEP_UP:
                try:
                    self.approvals.wait(sub.decision_id, min(remaining, 3600.0) + 0.001)
                except Exception:  # noqa: BLE001, S110 - redeem below asks again and handles a dead service
                    pass
                nxt = self.redeem(session, sub.decision_id, tool, params)
            else:
                nxt = self.redeem(session, sub.decision_id, tool, params)
                if nxt.status == PENDING and nxt.decision_id == sub.decision_id:
                    try:
                        self.deferrals.wait(sub.decision_id, min(remaining + 0.001, self.poll_s))
                    except Exception:  # noqa: BLE001 - the next redeem handles a dead service
                        time.sleep(min(remaining + 0.001, self.poll_s))
            sub = nxt
        return sub

    def _finish_call(self, session: Session, sub: Submission, started: int, value: Any) -> CallResult:
        outcome_error = None
        try:
            self.record_outcome(session, sub.decision_id, ok=True, output=value, started_ns=started,
                                ended_ns=time.time_ns())
        except Exception as err:  # noqa: BLE001 - the tool ran: report, do not hide its value
            outcome_error = str(err)
        return CallResult(ok=True, value=value, decision=sub.decision, decision_id=sub.decision_id,
                          params_executed=sub.params, error=None, action_id=sub.action_id,
                          outcome_error=outcome_error)

    def _record_failure(self, session: Session, sub: Submission, started: int, exc: BaseException) -> None:
        try:
            self.record_outcome(session, sub.decision_id, ok=False, started_ns=started, ended_ns=time.time_ns(),
                                error=f"{type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001, S110 - the tool's own exception is what the caller must see
            pass

    # ---- sweeping timeouts ----------------------------------------------------------------------

    def sweep(self) -> None:
        """Time out every pending decision past its deadline, in every session (receipts say so)."""
        for session in list(self.sessions.values()):
            try:
                self._sweep(session, refresh=True)
            except StoreError:
                continue

    def start_sweeper(self, interval_s: float = 1.0) -> threading.Thread:
        """Sweep in a daemon thread every *interval_s* seconds until `close`: interceptors that answer
        "pending" and may never see a retry use it so that every timeout gets its receipt on time."""
        with self._lock:
            if self._sweeper is not None:
                return self._sweeper
            self._stop_sweeper.clear()

            def run() -> None:
                while not self._stop_sweeper.wait(interval_s):
                    try:
                        self.sweep()
                    except Exception:  # noqa: BLE001, S112 - the next round tries again
                        continue
            self._sweeper = threading.Thread(target=run, name="aarm-guard-sweeper", daemon=True)
            self._sweeper.start()
            return self._sweeper

    @staticmethod
    def _due(session: Session, now: float) -> list[_DecisionState]:
        return [s for s in session.pending.values()
                if (s.redeem_until is not None and now > s.redeem_until)
                or (s.redeem_until is None and s.deadline is not None and now >= s.deadline)]

    def _sweep(self, session: Session, refresh: bool = False) -> None:
        # A shared session's cache may not show what other replicas left pending: the sweeper syncs it.
        if not session.pending and not (session.shared and refresh):
            return
        now = self.clock()
        with session.lock:
            due = self._due(session, now)
        for state in due:
            try:
                if state.decision.decision == STEP_UP:
                    if state.redeem_until is not None:  # approved, never redeemed: nothing ran, nothing to write
                        with session.lock:
                            self._finalize(session, state)
                    else:
                        self._settle_approval(session, state, self._expire_approval(state, TIMEOUT, None))
                else:
                    self._settle_deferral(session, state, "timeout", self.name, "no resolution before the deadline")
            except Exception:  # noqa: BLE001, S112 - a later redeem of it is denied anyway
                continue

    def _cancel_pending(self, session: Session, state: _DecisionState, why: str) -> None:
        """End a pending decision without running it; never called with the session lock held."""
        if state.decision.decision == STEP_UP:
            with session.lock:
                recorded = state.approval_recorded
                if recorded:
                    self._finalize(session, state)
            if not recorded:
                self._settle_approval(session, state, self._expire_approval(state, CANCELLED, why))
        else:
            self._settle_deferral(session, state, "cancelled", self.name, why)

    def _expire_approval(self, state: _DecisionState, verdict: str, why: str | None) -> ApprovalAnswer:
        try:
            return self.approvals.expire(state.decision_id, verdict=verdict, reason=why)
        except Exception as err:  # noqa: BLE001 - the service is down: the runtime answers for it
            return ApprovalAnswer(decision_id=state.decision_id, verdict=verdict if verdict == TIMEOUT else CANCELLED,
                                  approver=self.name, args_hash=state.args_hash, at=self.clock(),
                                  reason=f"approvals service failed: {err}")

    # ---- deciding ------------------------------------------------------------------------------

    def _decide(self, session: Session, tool: str, params: Any, risk: Any, *, wait: bool = True,
                prepared: _Prepared | None = None) -> Submission:
        prepared = prepared if prepared is not None else _Prepared(params)
        try:
            for _ in range(3):
                with session.lock:
                    # A shared session may hold pending decisions another replica left past their deadline:
                    # time them out first, outside the lock (as `submit` does for this replica's own).
                    if session.shared and self._due(session, self.clock()):
                        sub = None
                    else:
                        sub, pendings, state = self._decide_locked(session, tool, prepared, risk)
                if sub is not None:
                    break
                self._sweep(session, refresh=True)
            else:
                with session.lock:
                    sub, pendings, state = self._decide_locked(session, tool, prepared, risk)
        except Exception as err:  # noqa: BLE001 - any internal failure: the action does not run
            return self._internal_failure(session, tool, prepared, err, None)
        return self._complete(session, sub, pendings, state, wait)

    def _decide_locked(self, session: Session, tool: str, prepared: _Prepared, risk: Any, *,
                       action_id: str | None = None, seq: int | None = None,
                       forced: Decision | None = None, before: Callable[[str], tuple[list, Callable]] | None = None,
                       rounds: int = 0) -> tuple[Submission, list, _DecisionState | None]:
        started = time.perf_counter_ns()
        now = self.clock()
        did = _new_id("d")
        new_action = action_id is None
        if new_action:
            action_id = _new_id("a")
            seq = session.actions + 1
        digest = prepared.digest
        ahash = args_hash(tool, digest)
        risk_j = None if risk is None else _jsonish(risk)[0]
        if session.closed or session.broken is not None:
            why = "closed" if session.closed else f"unusable: {session.broken}"
            d = _runtime(DENY, "session-closed", f"session `{session.id}` is {why}", tool)
            return Submission(decision=d, decision_id=did, args_hash=ahash, status=DENY, action_id=action_id,
                              session_id=session.id, error=Denied(d, did)), [], None
        depends: tuple[str, ...] = ()
        if forced is not None:
            d = forced
        else:
            score = None
            if self.aligner is not None:
                risk_j, score = self._align(session, tool, prepared, risk_j, now, new_action, seq, did)
            d, depends = self._judge(session, tool, prepared, risk_j, now, new_action, seq, score)
        if new_action:
            session.actions += 1
        records: list[R.Record] = []
        commit = None
        if before is not None:
            records, commit = before(did)
        note = None
        if depends:
            note = "waits for " + ", ".join(depends)
        records.append(self._decision_record(session, did, action_id, tool, prepared, d, note))
        pendings = [self.receipts.submit(r) for r in records]
        if session.shared:
            session.logged.add(did)
        # The receipts are in the log: now the session may change.
        if commit is not None:
            commit()
        if self._observers:
            self._emit(session, "decision", d, decision_id=did, action_id=action_id, tool=tool, params=prepared,
                       latency_ns=time.perf_counter_ns() - started)
        state = session.new_state(decision_id=did, action_id=action_id, seq=seq, tool=tool, params=prepared.raw,
                                  args_hash=ahash, decision=d, risk=risk_j, at=now, depends_on=depends)
        state.rounds = rounds
        if d.decision == DENY:
            # Nothing will follow a DENY: keep its id only, so a long session does not hold every params.
            session.finished[did] = DENY
        else:
            session.decisions[did] = state
        session.log.append("decision", _ns(now), did, action_id, tool, digest, d.decision, d.reason)
        effect = d.decision
        deadline = None
        exec_params = None
        if effect == ALLOW or effect == MODIFY:
            exec_params = prepared.raw if effect == ALLOW else self._rewrap(tool, prepared, d)
            state.exec_params = exec_params
            self._grant(session, state, now)
        elif effect == STEP_UP or effect == DEFER:
            cap = self.approval_timeout_s if effect == STEP_UP else self.deferral_timeout_s
            if d.reason == "pending-dependency":
                timeout = cap if cap is not None else DEFAULT_TIMEOUT_S
            else:
                timeout = d.timeout_s if d.timeout_s is not None else DEFAULT_TIMEOUT_S
                if cap is not None:
                    timeout = min(timeout, cap)
            deadline = now + timeout
            state.deadline = deadline
            session.pending[did] = state
        status = _STATUS[effect]
        error = Denied(d, did) if effect == DENY else None
        sub = Submission(decision=d, decision_id=did, args_hash=ahash, status=status, action_id=action_id,
                         session_id=session.id, params=exec_params, deadline=deadline, error=error,
                         receipt=pendings[-1])
        return sub, pendings, state

    def _judge(self, session: Session, tool: str, prepared: _Prepared, risk: Any, now: float, new_action: bool,
               seq: int, score: Decimal | None = None) -> tuple[Decision, tuple[str, ...]]:
        """The decision for one action: the runtime's preconditions, then the engine, then dependencies."""
        if self.engine is None:
            return _runtime(DENY, "policy-unavailable", f"no policy: {self.policy_error}", tool), ()
        if session.expires_at is not None and now >= session.expires_at:
            return _runtime(DENY, "session-expired",
                            f"session `{session.id}` expired (TTL {self.session_ttl_s} s)", tool), ()
        if new_action and session.actions >= self.max_actions_per_session:
            return _runtime(DENY, "action-cap",
                            f"session `{session.id}` reached {self.max_actions_per_session} actions", tool), ()
        if session.identity_error is not None:
            return _runtime(DENY, session.identity_error[0], session.identity_error[1], tool), ()
        if self.verifier is not None:
            try:
                self.verifier.reverify(session.identity, now)
            except IdentityError as err:
                return _runtime(DENY, err.reason, str(err), tool), ()
        if prepared.error is not None:
            return _runtime(DENY, "invalid-params", f"invalid params: not json: {prepared.error}", tool), ()
        if risk is not None and type(risk) is not dict and not isinstance(risk, Mapping):
            return _runtime(DENY, "invalid-params", f"invalid context: `risk`: expected an object, got "
                                                    f"`{type(risk).__name__}`", tool), ()
        ctx = session.context
        assert ctx is not None  # there is an engine
        ctx.now = now
        base = ctx.base_intent
        ctx.intent = base if score is None or base is None else {**base, "score": score}
        if risk is None:
            ctx.risk = None
            ctx.invalid, ctx.failure = session.base_invalid, session.base_failure
        else:
            checked_risk, invalid, failure = self._check_risk(ctx, risk)
            ctx.risk = checked_risk
            if session.base_invalid is not None or session.base_failure is not None:
                ctx.invalid, ctx.failure = session.base_invalid, session.base_failure
            else:
                ctx.invalid, ctx.failure = invalid, failure
        d = self.engine.decide({"tool": tool, "params": prepared.value}, ctx)
        if d.decision == DENY:
            return d, ()
        earlier = tuple(s.decision_id for s in session.pending.values() if s.seq < seq)
        if not earlier:
            return d, ()
        real = d.tool or tool
        if new_action and len(session.pending) >= self.max_pending_per_session:
            return _runtime(DENY, "pending-limit",
                            f"{len(session.pending)} actions of session `{session.id}` are pending "
                            f"(limit {self.max_pending_per_session})", real, wrapper=d.wrapper), ()
        cap = self.deferral_timeout_s
        return _runtime(DEFER, "pending-dependency",
                        "an earlier action of this session is pending: " + ", ".join(f"`{e}`" for e in earlier),
                        real, wrapper=d.wrapper,
                        timeout_s=math.ceil(cap if cap is not None else DEFAULT_TIMEOUT_S)), earlier

    def _align(self, session: Session, tool: str, prepared: _Prepared, risk: Any, now: float, new_action: bool,
               seq: int, did: str) -> tuple[Any, Decimal | None]:
        """The aligner's verdict on this action: ``intent.score`` for the decision, and ``risk.drift`` unless
        the caller supplied one. A new action is assessed once (its verdict is a fact of the session, in the
        context log); deciding it again reuses that verdict."""
        if self.engine is None or prepared.error is not None or (risk is not None and not isinstance(risk, Mapping)):
            return risk, None
        if new_action:
            got = self.aligner.assess(session.intent, tool, prepared.value, _View(session.alignments))
            if got is not None:
                # Re-made as an `Alignment`, which refuses anything but Decimals in [0, 1] with at most four
                # places: exactly what replicas replay from the session's events.
                if type(got) is not Alignment:  # an `Alignment` checked itself when it was made
                    got = Alignment(score=getattr(got, "score", None), drift=getattr(got, "drift", None))
                session.add_alignment(seq, got)
                session.log.append("aligned", _ns(now), did, seq, str(got.score), str(got.drift))
        else:
            got = session.alignment_of.get(seq)
        if got is None:
            return risk, None
        if risk is None:
            risk = {"drift": got.drift}
        elif "drift" not in risk:
            risk = {**risk, "drift": got.drift}
        return risk, got.score

    def _check_risk(self, ctx: GuardContext, risk: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        """Risk signals validated as the engine's context does (callers send the same few again and again)."""
        try:
            if len(risk) == 1:  # the common case, one signal: nothing to sort
                ((k, v),) = risk.items()
                key: Any = ((k, type(v), v),)
            else:
                key = tuple(sorted((k, type(v), v) for k, v in risk.items()))
            hash(key)
        except TypeError:
            key = None
        got = self._risks.get(key) if key is not None else None
        if got is None:
            checked = SessionContext(ctx._decl, risk=risk)
            got = (checked.risk, checked.invalid, checked.failure)
            if key is not None:
                if len(self._risks) >= 256:
                    self._risks.clear()
                self._risks[key] = got
        return got

    def _decision_record(self, session: Session, did: str, action_id: str, tool: str, prepared: _Prepared,
                         d: Decision, note: str | None) -> R.Record:
        real = d.tool or tool
        include = self.include_params and prepared.text is not None \
            and not self._sensitive.get(real, True) and not self._sensitive.get(tool, True)
        action = R.Action(tool=real, params_digest=prepared.digest, params_json=prepared.text if include else None,
                          wrapper=d.wrapper)
        return R.Record(kind=R.Kind.DECISION, session=session.id, action_id=action_id, decision_id=did,
                        action=action, decision=self._info(d, include), policy=self.policy_ref,
                        identity=session.identity_receipt, context=session.log.head, note=note)

    def _info(self, d: Decision, include: bool) -> R.DecisionInfo:
        if d.decision == MODIFY:
            return R.DecisionInfo.from_decision(d, include_params=include)
        got = self._infos.get(id(d))
        if got is not None and got[0] is d:
            return got[1]
        info = R.DecisionInfo.from_decision(d)
        if len(self._infos) >= 4096:
            self._infos.clear()
        # Keyed by identity and holding the record: the engine reuses its immutable records.
        self._infos[id(d)] = (d, info)
        return info

    def _rewrap(self, tool: str, prepared: _Prepared, d: Decision) -> Any:
        """A MODIFY's params for the tool as called: for a meta-tool, its wrapper params around them.

        The decision record writes decimals as strings (exact JSON); the tool gets exact values: a param
        the rule did not change is passed as the caller gave it, a changed one with its declared type
        (a decimal as a `Decimal`)."""
        out = self._exact_params(d.tool or tool, d.params, self._unwrap(tool, prepared.raw) if d.wrapper
                                 else prepared.raw)
        if d.wrapper is None:
            return out
        chain = []
        name, p = tool, prepared.value
        while name in self._wraps:
            name_param, args_param = self._wraps[name]
            chain.append((p, args_param))
            name, p = p[name_param], p[args_param]
        for p, args_param in reversed(chain):
            out = {**p, args_param: out}
        return out

    def _exact_params(self, tool: str, params: Any, given: Any) -> Any:
        if not isinstance(params, Mapping):
            return params
        types = self._param_types.get(tool, {})
        given = given if isinstance(given, Mapping) else {}
        out = {}
        for name, value in params.items():
            if name in given:
                try:
                    same = values.to_jsonable(_jsonish(given[name])[0]) == value
                except Exception:  # noqa: BLE001 - not comparable: take the decision's value
                    same = False
                if same:
                    out[name] = given[name]
                    continue
            out[name] = _typed(value, types.get(name))
        return out

    def _grant(self, session: Session, state: _DecisionState, now: float) -> None:
        """The action is authorised: it enters the history (counts, tags, label) now."""
        ctx = session.context
        real = state.decision.tool or state.tool
        if ctx is not None:
            ctx.record(real, time=now, has_output=False)
            state.history_index = len(ctx.history) - 1
            level, untrusted, tags = ctx._decl.outputs.get(real, (ctx._decl.top_level, True, ()))
        else:
            level, untrusted, tags = None, True, ()
        state.granted = True
        session.log.append("executed", _ns(now), state.decision_id, real, level, untrusted, list(tags))

    def _complete(self, session: Session, sub: Submission, pendings: list, state: _DecisionState | None,
                  wait: bool) -> Submission:
        if wait and pendings:
            try:
                ack = None
                for p in pendings:
                    ack = p.wait()
                sub = dataclasses.replace(sub, receipt=ack)
            except Exception as err:  # noqa: BLE001 - not durable: the action must not run
                return self._not_durable(session, sub, state, err)
        if state is None:
            return sub
        if sub.status == PENDING:
            try:
                if state.decision.decision == STEP_UP:
                    req = self._approval_request(session, state)
                    state.request = req
                    self.approvals.request(req)
                else:
                    req = self._deferral_request(session, state)
                    state.request = req
                    self.deferrals.request(req)
            except Exception as err:  # noqa: BLE001 - the service is down: deny, with a receipt
                return self._service_down(session, state, err)
        return sub

    def _not_durable(self, session: Session, sub: Submission, state: _DecisionState | None,
                     err: BaseException) -> Submission:
        message = f"the decision receipt could not be made durable: {err}"
        with session.lock:
            if state is not None:
                state.revoked = message
                session.pending.pop(state.decision_id, None)
        d = _runtime(DENY, "receipt-unavailable", message, sub.decision.tool or "")
        return dataclasses.replace(sub, decision=d, status=DENY, params=None, error=Denied(d, sub.decision_id),
                                   deadline=None)

    def _service_down(self, session: Session, state: _DecisionState, err: BaseException) -> Submission:
        d0 = state.decision
        with session.lock:
            if d0.decision == STEP_UP:
                why = f"approvals service failed: {type(err).__name__}: {err}"
                self._settle_approval(session, state, ApprovalAnswer(
                    decision_id=state.decision_id, verdict=CANCELLED, approver=self.name, args_hash=state.args_hash,
                    at=self.clock(), reason=why))
                reason = "approval-unavailable"
            else:
                why = f"deferral service failed: {type(err).__name__}: {err}"
                self._settle_deferral(session, state, "cancelled", self.name, why, notify_service=False)
                reason = "deferral-unavailable"
        d = _runtime(DENY, reason, why, d0.tool or state.tool, wrapper=d0.wrapper, rules=d0.rules)
        return self._status(session, state, d)

    def _status(self, session: Session, state: _DecisionState, d: Decision, status: str = DENY) -> Submission:
        return Submission(decision=d, decision_id=state.decision_id, args_hash=state.args_hash, status=status,
                          action_id=state.action_id, session_id=session.id,
                          error=Denied(d, state.decision_id) if status == DENY else None,
                          deadline=state.deadline if status == PENDING else None)

    def _refuse(self, session: Session, tool: str, prepared: _Prepared, state: _DecisionState | None, reason: str,
                message: str) -> Submission:
        """A new DENY decision record for a refused redemption (same action id when the decision is known)."""
        d = _runtime(DENY, reason, message, state.decision.tool if state is not None and state.decision.tool
                     else tool, wrapper=state.decision.wrapper if state is not None else None)
        sub, pendings, _ = self._decide_locked(session, tool, prepared, None,
                                               action_id=None if state is None else state.action_id,
                                               seq=None if state is None else state.seq, forced=d)
        return self._complete(session, sub, pendings, None, True)

    def _internal_failure(self, session: Session, tool: str, prepared: _Prepared, err: BaseException,
                          action_id: str | None) -> Submission:
        did = _new_id("d")
        if isinstance(err, StoreError):
            return self._store_failure(session, tool, prepared, err, action_id, did)
        message = f"internal error: {type(err).__name__}: {err}"
        d = _runtime(DENY, "internal-error", message, tool if isinstance(tool, str) else "")
        receipt = None
        try:
            with session.lock:
                if not session.closed and session.broken is None and isinstance(tool, str):
                    record = R.Record(kind=R.Kind.DECISION, session=session.id,
                                      action_id=action_id or _new_id("a"), decision_id=did,
                                      action=R.Action(tool=tool, params_digest=prepared.digest),
                                      decision=R.DecisionInfo(effect=DENY, reason="internal-error", message=message),
                                      policy=self.policy_ref, identity=session.identity_receipt,
                                      context=session.log.head)
                    pending = self.receipts.submit(record)
                    session.log.append("decision", _ns(time.time()), did, record.action_id, tool, prepared.digest,
                                       DENY, "internal-error")
                    self._emit(session, "decision", d, decision_id=did, action_id=record.action_id, tool=tool,
                               params=prepared)
                else:
                    pending = None
            if pending is not None:
                receipt = pending.wait()
        except StoreError as second:
            return self._store_failure(session, tool, prepared, second, action_id, did)
        except Exception as second:  # noqa: BLE001 - the log is down too: deny without a receipt
            d = _runtime(DENY, "internal-error", f"{message}; and no receipt could be written: {second}",
                         tool if isinstance(tool, str) else "")
        return Submission(decision=d, decision_id=did, args_hash=args_hash(tool if isinstance(tool, str) else "",
                                                                           prepared.digest),
                          status=DENY, action_id=action_id or "", session_id=session.id, error=Denied(d, did),
                          receipt=receipt)

    def _store_failure(self, session: Session, tool: str, prepared: _Prepared, err: StoreError,
                       action_id: str | None, did: str) -> Submission:
        """The shared session store failed: DENY, with a receipt in this replica's own log. The session's
        context cannot take the decision (the store is where it lives), so the receipt names the context
        head this replica last knew."""
        name = tool if isinstance(tool, str) else ""
        d = _runtime(DENY, "session-store-unavailable", f"session store: {err}", name)
        receipt = None
        try:
            record = R.Record(kind=R.Kind.DECISION, session=session.id, action_id=action_id or _new_id("a"),
                              decision_id=did, action=R.Action(tool=name, params_digest=prepared.digest),
                              decision=R.DecisionInfo(effect=DENY, reason=d.reason, message=d.message),
                              policy=self.policy_ref, identity=session.identity_receipt, context=session.log.head)
            receipt = self.receipts.submit(record).wait()
            self._emit(session, "decision", d, decision_id=did, action_id=record.action_id, tool=name,
                       params=prepared)
        except Exception as second:  # noqa: BLE001 - the log is down too: deny without a receipt
            d = _runtime(DENY, "session-store-unavailable", f"session store: {err}; and no receipt could be "
                                                            f"written: {second}", name)
        return Submission(decision=d, decision_id=did, args_hash=args_hash(name, prepared.digest), status=DENY,
                          action_id=action_id or "", session_id=session.id, error=Denied(d, did), receipt=receipt)

    # ---- STEP_UP ------------------------------------------------------------------------------------

    def _approval_request(self, session: Session, state: _DecisionState) -> ApprovalRequest:
        d = state.decision
        return ApprovalRequest(decision_id=state.decision_id, session_id=session.id, action_id=state.action_id,
                               tool=d.tool or state.tool, args_hash=state.args_hash, approvers=d.approvers,
                               rules=d.rules, message=d.message, requested_at=state.at,
                               deadline=state.deadline if state.deadline is not None else state.at,
                               wrapper=d.wrapper, principal=_principal(session), params=state.params)

    def _on_approval(self, request: ApprovalRequest, answer: ApprovalAnswer) -> None:
        """The approvals service's listener: record the answer (receipt first) or refuse it."""
        with self._lock:
            session = self._sessions.get(request.session_id)
        if session is None:
            raise ApprovalError(f"session `{request.session_id}` of decision `{request.decision_id}` is closed")
        with session.lock:
            state = session.decisions.get(request.decision_id)
            if state is None or state.decision.decision != STEP_UP:
                raise ApprovalError(f"decision `{request.decision_id}` is not a step-up of session `{session.id}`")
            if state.approval_recorded:
                if state.approval == answer:
                    return
                raise ApprovalError(f"decision `{request.decision_id}` was already answered "
                                    f"({state.approval.verdict} by `{state.approval.approver}`)")
            if answer.verdict == APPROVED and state.deadline is not None and self.clock() >= state.deadline:
                raise ApprovalError(f"approval of decision `{request.decision_id}` timed out")
            self._settle_approval(session, state, answer)

    def _settle_approval(self, session: Session, state: _DecisionState, answer: ApprovalAnswer) -> ApprovalAnswer:
        """Write the approval receipt for *answer* once; later answers are ignored (the first one stands)."""
        with session.lock:
            if state.approval_recorded:
                return state.approval
            record = R.approval_record(session=session.id, ref=state.decision_id, approver=answer.approver,
                                       verdict=answer.verdict, action_id=state.action_id, context=session.log.head,
                                       note=answer.reason)
            self._carry(session, state, approval=False)
            self.receipts.submit(record).wait()
            if session.shared:
                session.logged.add(state.decision_id + "#approval")
            state.approval = answer
            state.approval_recorded = True
            now = self.clock()
            session.log.append("approval", _ns(now), state.decision_id, answer.verdict, answer.approver)
            self._emit(session, "approval", state.decision, decision_id=state.decision_id, action_id=state.action_id,
                       tool=state.tool, verdict=answer.verdict, approver=answer.approver,
                       message=answer.reason)
            if answer.verdict == APPROVED:
                state.redeem_until = max(state.deadline or now, now + self.redeem_window_s)
            else:
                state.resolution = answer.verdict
                self._finalize(session, state)
        return answer

    def _redeem_step_up(self, session: Session, state: _DecisionState, prepared: _Prepared) -> Submission:
        """Called without the session lock (see `redeem`)."""
        d0 = state.decision
        with session.lock:
            if state.used:
                return self._refuse(session, state.tool, prepared, state, "approval-used",
                                    f"the approval of decision `{state.decision_id}` was already used")
            if state.revoked is not None:
                return self._status(session, state, _runtime(DENY, "receipt-unavailable", state.revoked,
                                                             d0.tool or state.tool, rules=d0.rules))
            answer = state.approval if state.approval_recorded else None
        if answer is None:
            try:
                answer = self.approvals.answer(state.decision_id)
            except Exception as err:  # noqa: BLE001 - the approvals service is down
                return self._service_down(session, state, err)
            if answer is None:
                if state.deadline is not None and self.clock() >= state.deadline:
                    answer = self._expire_approval(state, TIMEOUT, None)
                else:
                    return self._status(session, state, d0, PENDING)
            answer = self._settle_approval(session, state, answer)
        with session.lock:
            now = self.clock()
            if answer.verdict != APPROVED:
                reason = {"rejected": "rejected", "timeout": "approval-timeout"}.get(answer.verdict,
                                                                                    "approval-unavailable")
                what = {"rejected": f"rejected by `{answer.approver}`", "timeout": "no approval before the deadline"}
                message = what.get(answer.verdict, f"approval {answer.verdict}")
                if answer.reason:
                    message += f": {answer.reason}"
                return self._status(session, state, _runtime(DENY, reason, message, d0.tool or state.tool,
                                                             wrapper=d0.wrapper, rules=d0.rules))
            if state.used:  # another redemption won the race
                return self._refuse(session, state.tool, prepared, state, "approval-used",
                                    f"the approval of decision `{state.decision_id}` was already used")
            state.used = True
            self._finalize(session, state)
            if state.redeem_until is not None and now > state.redeem_until:
                return self._refuse(session, state.tool, prepared, state, "approval-expired",
                                    f"the approval of decision `{state.decision_id}` was not redeemed in time")
            # Approved: the moment it may run is a decision too — session and identity are checked again.
            problem = self._grant_problem(session, state, now)
            if problem is not None:
                return self._refuse(session, state.tool, prepared, state, problem.reason, problem.message)
            if session.closed:
                return self._status(session, state, _runtime(DENY, "session-closed",
                                                             f"session `{session.id}` is closed", d0.tool or ""))
            state.exec_params = state.params
            self._grant(session, state, now)
            return Submission(decision=d0, decision_id=state.decision_id, args_hash=state.args_hash, status=ALLOW,
                              action_id=state.action_id, session_id=session.id, params=state.params)

    def _grant_problem(self, session: Session, state: _DecisionState, now: float) -> Decision | None:
        tool = state.decision.tool or state.tool
        if session.expires_at is not None and now >= session.expires_at:
            return _runtime(DENY, "session-expired", f"session `{session.id}` expired (TTL {self.session_ttl_s} s)",
                            tool)
        if self.verifier is not None:
            try:
                self.verifier.reverify(session.identity, now)
            except IdentityError as err:
                return _runtime(DENY, err.reason, f"after approval: {err}", tool)
        return None

    # ---- DEFER ------------------------------------------------------------------------------------

    def _deferral_request(self, session: Session, state: _DecisionState) -> DeferralRequest:
        d = state.decision
        return DeferralRequest(decision_id=state.decision_id, session_id=session.id, action_id=state.action_id,
                               tool=d.tool or state.tool, args_hash=state.args_hash, reason=d.reason,
                               message=d.message, rules=d.rules, fields=d.fields, requested_at=state.at,
                               deadline=state.deadline if state.deadline is not None else state.at,
                               depends_on=state.depends_on, wrapper=d.wrapper, principal=_principal(session),
                               params=state.params, env=None if session.env is None else dict(session.env),
                               intent=None if session.intent is None else dict(session.intent), risk=state.risk)

    def provide(self, session: Session, decision_id: str, *, env: Mapping[str, Any] | None = None,
                intent: Mapping[str, Any] | None = None, risk: Mapping[str, Any] | None = None, by: str) -> None:
        """Context for a pending DEFER of *session*: the action is decided again with it (new decision id)
        when it is redeemed, or at once by `call` waiting for it.

        Unlike `Deferrals.provide`, which reaches the guard in this process, the context is kept in the
        session: in a shared session (a session store) the replica that redeems the action finds it,
        whichever replica was given it. Raises `DeferralError` when *decision_id* is no pending DEFER of
        the session or the update is empty or not JSON, `StoreError` when the store cannot take it.
        """
        self._own(session)
        if not isinstance(by, str) or not by.strip():
            raise DeferralError("`by` must name who provides the context")
        update = ContextUpdate(env=env, intent=intent, risk=risk, by=by)
        if update.empty:
            raise DeferralError("a context update needs env, intent or risk values")
        self._sweep(session)
        with session.lock:
            state = self._pending_deferral(session, decision_id)
            earlier = _provided(state.provided)
            merged = update if earlier is None else earlier.merged(update)
            kept = [_jsonish(merged.env)[0], _jsonish(merged.intent)[0], _jsonish(merged.risk)[0], merged.by]
            try:
                cbor2.dumps(kept)
            except Exception as err:  # noqa: BLE001 - refused before anything changes
                raise DeferralError(f"a context update must be JSON values: {err}") from None
            state.provided = kept
        try:
            self.deferrals.notify()  # a `call` waiting on this deferral looks again
        except Exception:  # noqa: BLE001, S110 - the context is kept; the next redemption finds it
            pass

    def deny_deferral(self, session: Session, decision_id: str, *, by: str, reason: str | None = None) -> None:
        """Deny a pending DEFER of *session* now: a deferral-resolution receipt (``denied``) in this
        replica's log, then the action can only be DENY. Works from any replica of a shared session
        (`Deferrals.deny` reaches the guard in this process). Raises `DeferralError` when it is no pending
        DEFER of the session."""
        self._own(session)
        if not isinstance(by, str) or not by.strip():
            raise DeferralError("`by` must name who denies the action")
        self._sweep(session)
        with session.lock:
            self._settle_deferral(session, self._pending_deferral(session, decision_id), "denied", by, reason)

    @staticmethod
    def _pending_deferral(session: Session, decision_id: Any) -> _DecisionState:
        """The session's pending DEFER *decision_id* (session lock held), or `DeferralError`."""
        state = session.pending.get(decision_id) if isinstance(decision_id, str) else None
        if state is None or state.decision.decision != DEFER or state.resolution is not None or state.used:
            raise DeferralError(f"no pending deferral for decision `{decision_id}` in session `{session.id}`")
        return state

    def _on_deferral_denied(self, request: DeferralRequest, by: str, reason: str | None) -> None:
        with self._lock:
            session = self._sessions.get(request.session_id)
        if session is None:
            raise DeferralError(f"session `{request.session_id}` of decision `{request.decision_id}` is closed")
        with session.lock:
            state = session.decisions.get(request.decision_id)
            if state is None or state.decision.decision != DEFER:
                raise DeferralError(f"decision `{request.decision_id}` is not a deferral of session `{session.id}`")
            if state.used or state.resolution is not None:
                raise DeferralError(f"deferral `{request.decision_id}` is already resolved")
            self._settle_deferral(session, state, "denied", by, reason, notify_service=False)

    def _settle_deferral(self, session: Session, state: _DecisionState, verdict: str, by: str, note: str | None,
                         *, notify_service: bool = True) -> None:
        with session.lock:
            if state.resolution is not None or state.used:
                return
            record = R.resolution_record(session=session.id, ref=state.decision_id, verdict=verdict, approver=by,
                                         action_id=state.action_id, context=session.log.head, note=note)
            self._carry(session, state)
            self.receipts.submit(record).wait()
            state.resolution = verdict
            session.log.append("resolution", _ns(self.clock()), state.decision_id, verdict, None)
            self._emit(session, "resolution", state.decision, decision_id=state.decision_id,
                       action_id=state.action_id, tool=state.tool, verdict=verdict, approver=by, message=note)
            self._finalize(session, state)
        if notify_service:
            try:
                self.deferrals.done(state.decision_id)
            except Exception:  # noqa: BLE001, S110 - the receipt is written; the service only forgets the entry
                pass

    def _redeem_deferral(self, session: Session, state: _DecisionState, prepared: _Prepared) -> Submission:
        d0 = state.decision
        if state.used:
            return self._refuse(session, state.tool, prepared, state, "deferral-used",
                                f"deferral `{state.decision_id}` was already decided again as "
                                f"`{state.next_decision}`")
        if state.resolution is not None:
            reason = {"timeout": "deferral-timeout", "denied": "deferral-denied"}.get(state.resolution,
                                                                                      "deferral-unavailable")
            return self._status(session, state, _runtime(DENY, reason, f"deferral {state.resolution}",
                                                         d0.tool or state.tool, wrapper=d0.wrapper, rules=d0.rules))
        if state.revoked is not None:
            return self._status(session, state, _runtime(DENY, "receipt-unavailable", state.revoked,
                                                         d0.tool or state.tool))
        now = self.clock()
        try:
            if session.shared and self.deferrals.get(state.decision_id) is None:
                # Deferred by another replica: this one takes it up (its resolvers, its waiters).
                state.request = state.request or self._deferral_request(session, state)
                self.deferrals.request(state.request)
            update, denial = self.deferrals.take(state.decision_id)
        except Exception as err:  # noqa: BLE001 - the deferral service is down
            return self._service_down(session, state, err)
        kept = _provided(state.provided)
        if kept is not None:
            # Given through `provide` (perhaps to another replica): with what the service has, later winning.
            update = kept if update is None else kept.merged(update)
            state.provided = None
        if denial is not None:
            self._settle_deferral(session, state, "denied", denial[0], denial[1])
            return self._redeem_deferral(session, state, prepared)
        if state.deadline is not None and now >= state.deadline:
            self._settle_deferral(session, state, "timeout", self.name, "no resolution before the deadline")
            return self._redeem_deferral(session, state, prepared)
        rounds = state.rounds
        if d0.reason == "pending-dependency":
            ready = update is not None or not any(dep in session.pending for dep in state.depends_on)
        else:
            due = state.last_resolvers is None or now - state.last_resolvers >= self.resolver_interval_s
            if update is None and self._resolvers and state.request is not None and due:
                state.last_resolvers = now
                try:
                    update = self._run_resolvers(state.request)
                except _ResolverFailed as err:
                    self._settle_deferral(session, state, "denied", self.name, str(err))
                    return self._redeem_deferral(session, state, prepared)
            ready = update is not None
        if not ready:
            return self._status(session, state, d0, PENDING)
        if rounds >= self.max_reevaluations:
            self._settle_deferral(session, state, "denied", self.name,
                                  f"decided again {rounds} times without an answer")
            return self._redeem_deferral(session, state, prepared)
        return self._reevaluate(session, state, prepared, update, rounds + 1)

    def _run_resolvers(self, request: DeferralRequest) -> ContextUpdate | None:
        for name, fn in self._resolvers:
            try:
                got = fn(request)
                if got is None:
                    continue
                if isinstance(got, ContextUpdate):
                    update = got if got.by else dataclasses.replace(got, by=name)
                elif isinstance(got, Mapping):
                    unknown = sorted(set(got) - {"env", "intent", "risk"})
                    if unknown:
                        raise ValueError(f"unknown context section(s) {', '.join(unknown)}")
                    update = ContextUpdate(env=got.get("env"), intent=got.get("intent"), risk=got.get("risk"),
                                           by=name)
                else:
                    raise TypeError(f"returned `{type(got).__name__}`, not a ContextUpdate, a mapping or None")
            except Exception as err:  # noqa: BLE001 - a failing resolver denies, never allows
                raise _ResolverFailed(name, err) from err
            if not update.empty:
                return update
        return None

    def _reevaluate(self, session: Session, state: _DecisionState, prepared: _Prepared, update: ContextUpdate | None,
                    rounds: int) -> Submission:
        """Decide a deferred action again, under a new decision id, after a resolution receipt naming it."""
        now = self.clock()
        risk = state.risk
        if update is not None:
            session.update_sections(env=update.env, intent=update.intent)
            if update.risk:
                risk = {**(risk or {}), **_jsonish(update.risk)[0]}
            session.log.append("context", _ns(now), update.by, _text_or_none(update.env),
                               _text_or_none(update.intent), _text_or_none(update.risk))
        by = update.by if update is not None and update.by else self.name
        note = "dependencies finished" if update is None else "context added"

        def before(new_id: str) -> tuple[list, Callable]:
            self._carry(session, state)
            record = R.resolution_record(session=session.id, ref=state.decision_id, verdict="resolved",
                                         next_decision=new_id, approver=by, action_id=state.action_id,
                                         context=session.log.head, note=note)

            def commit() -> None:
                state.used = True
                state.resolution = "resolved"
                state.next_decision = new_id
                session.log.append("resolution", _ns(now), state.decision_id, "resolved", new_id)
                self._emit(session, "resolution", state.decision, decision_id=state.decision_id,
                           action_id=state.action_id, tool=state.tool, verdict="resolved", approver=by, message=note,
                           next_decision=new_id)
                self._finalize(session, state)
            return [record], commit

        # The resolved deferral no longer holds later actions back, and is not "earlier" than itself.
        sub, pendings, new_state = self._decide_locked(session, state.tool, prepared, risk, action_id=state.action_id,
                                                       seq=state.seq, before=before, rounds=rounds)
        try:
            self.deferrals.done(state.decision_id)
        except Exception:  # noqa: BLE001, S110
            pass
        return self._complete(session, sub, pendings, new_state, True)

    # ---- shared -------------------------------------------------------------------------------------

    def _finalize(self, session: Session, state: _DecisionState) -> None:
        if session.pending.pop(state.decision_id, None) is not None:
            try:
                self.deferrals.notify()
            except Exception:  # noqa: BLE001, S110 - waiters also poll
                pass

    def _emit(self, session: Session, kind: str, d: Decision | None, *, decision_id: str | None = None,
              action_id: str | None = None, tool: str | None = None, params: Any = None,
              latency_ns: int | None = None, **more: Any) -> None:
        """Hand one `GuardEvent` to every observer; what they raise is counted, never propagated."""
        if not self._observers:
            return
        try:
            real = tool
            wrapper = None
            shown = None
            modified = None
            if d is not None:
                real = d.tool or tool
                wrapper = d.wrapper
                if d.decision == MODIFY:
                    modified = d.params
            if isinstance(params, _Prepared) and params.error is None:
                shown = params.value
                if wrapper is not None:
                    shown = self._unwrap(tool, shown)
            ref = self.policy_ref
            event = GuardEvent(
                kind=kind, time_ns=time.time_ns(), session_id=session.id, decision_id=decision_id,
                action_id=action_id, tool=real, wrapper=wrapper,
                decision=None if d is None else d.decision, reason=None if d is None else d.reason,
                rules=() if d is None else d.rules, message=more.pop("message", None if d is None else d.message),
                identity=session.identity_json, params=shown,
                sensitive=self._sensitive_names.get(real, ()) if real is not None else (),
                modified_params=modified, latency_ns=latency_ns,
                policy=None if ref is None else (ref.policy, ref.version, ref.digest.hex()),
                context=session.log.head, **more)
        except Exception:  # noqa: BLE001 - telemetry must never stop a decision
            self.observer_errors += 1
            return
        for observer in self._observers:
            try:
                observer(event)
            except Exception:  # noqa: BLE001
                self.observer_errors += 1

    def _carry(self, session: Session, state: _DecisionState, *, approval: bool = True) -> None:
        """Before a follow-up (approval, resolution, outcome) of a decision another replica made, put a copy
        of that decision in this replica's log — and of its approval, for an approved STEP_UP — so that the
        follow-up's `ref` points back within the log and the log's state machine holds.

        A copy is the decision (or approval) as the shared session holds it (same id, action, effect, rules,
        reason; approver and verdict), with the context this replica has now and a note saying it was
        carried over.
        """
        if not session.shared:
            return
        did = state.decision_id
        if did not in session.logged:
            prepared = _Prepared(state.params)
            record = self._decision_record(session, did, state.action_id, state.tool, prepared, state.decision,
                                           "carried over: decided by another replica of this session; this log "
                                           "records what followed")
            self.receipts.submit(record)
            session.logged.add(did)
        key = did + "#approval"
        if approval and state.approval_recorded and state.approval is not None and key not in session.logged:
            answer = state.approval
            self.receipts.submit(R.approval_record(
                session=session.id, ref=did, approver=answer.approver, verdict=answer.verdict,
                action_id=state.action_id, context=session.log.head,
                note="carried over: answered through another replica of this session"))
            session.logged.add(key)

    def _unwrap(self, tool: str, params: Any) -> Any:
        """A meta-tool call's params for the real tool inside it (None if they do not have that shape)."""
        name, p = tool, params
        try:
            while name in self._wraps:
                name_param, args_param = self._wraps[name]
                name, p = p[name_param], p[args_param]
        except (KeyError, TypeError, IndexError):
            return None
        return p

    def _own(self, session: Session) -> None:
        if not isinstance(session, Session):
            raise TypeError(f"expected a `Session` from `open_session`, got `{type(session).__name__}`")


class _View(Sequence):
    """A read-only view of a list (the aligner's `prior`): no copy per decision, however long the session."""

    __slots__ = ("_items",)

    def __init__(self, items: list) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        return self._items[index]


def _attach(service: Any, listener: Callable, **options: Any) -> None:
    """``service.attach(listener, ...)`` with the options its signature accepts (other implementations
    may take fewer)."""
    try:
        accepted = inspect.signature(service.attach).parameters
    except (TypeError, ValueError):
        accepted = {}
    service.attach(listener, **{k: v for k, v in options.items() if k in accepted})


def _typed(value: Any, t: Any) -> Any:
    """A decision record's JSON value as the exact value of declared type *t* (decimals back to `Decimal`)."""
    if isinstance(t, values.OptT):
        t = t.inner
    if value is None or t is None:
        return value
    if t == values.Prim("decimal") and isinstance(value, str):
        return Decimal(value)
    if isinstance(t, values.ListT) and isinstance(value, list):
        return [_typed(v, t.elem) for v in value]
    return value


def _pending_result(sub: Submission) -> CallResult:
    return CallResult(ok=False, value=None, decision=sub.decision, decision_id=sub.decision_id, params_executed=None,
                      error=Pending(sub.decision, sub.decision_id, sub.deadline), action_id=sub.action_id)


def _ns(t: Any) -> int:
    return int(t * 1_000_000_000)


def _text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return canonical_params(value)
    except (TypeError, ValueError):
        return repr(value)


def _principal(session: Session) -> str | None:
    ident = session.identity_json
    if ident is None:
        return None
    p = ident.get("principal")
    return p if isinstance(p, str) else None


def _output(output: Any) -> tuple[Any, bytes]:
    """(what enters the provenance index, digest for the receipt) of a tool's output."""
    if isinstance(output, (bytes, bytearray, memoryview)):
        raw = bytes(output)
        return raw.decode("utf-8", "replace"), hashlib.sha256(raw).digest()
    value, plain = _jsonish(output)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False) if plain \
            else values.canonical_json(value)
        values.output_text(value)
    except (TypeError, ValueError, RecursionError):
        # Not JSON: its string form is what a later action could copy values from.
        value = str(output)
        text = values.canonical_json(value)
    return value, hashlib.sha256(text.encode("utf-8")).digest()
