"""Receipts (AARM R5): the signed record of every decision, approval, deferral resolution and outcome.

A receipt is a tagged COSE_Sign1 (RFC 9052) signed with Ed25519 whose payload
is a deterministic-CBOR map with **integer keys in 0..23 only**, in every map
and every nested map. That keeps cbor2's length-first "canonical" ordering and
the RFC 8949 §4.2.1 bytewise ordering identical, so the writer can build the
bytes directly (`encode_payload`: keys in ascending order, every head the
shortest) and the strict parser can check them with cbor2's C encoder, while
`aarm_runtime.dcbor` stays the reference: tests check all three agree byte
for byte. There are no floats anywhere: times are integer nanoseconds since the
Unix epoch; raw params, where the policy allows them in a receipt, are RFC
8785 canonical JSON text (`aarm_runtime.values.canonical_json`, decimals as
exact text). A digest is ``[-16, sha256]`` (RFC 9054: -16 is SHA-256).

COSE headers of a receipt (byte-for-byte what `cose.sign1` would write):
protected ``{1: -19, 4: kid, 15: {1: iss, 2: sub, 6: iat}, 16:
"application/aarm-receipt+cose"}``, unprotected ``{}``, payload attached.
``sub`` is the session id, or the log id in lowercase hex for records that
belong to no session; ``iat`` is ``time // 10**9``.

Payload keys
============

====  ===========  ==============================================================
key   name         value
====  ===========  ==============================================================
0     version      1 (`VERSION`)
1     log id       16 random bytes fixed by the log-open record
2     seq          leaf index of this record in the log's Merkle tree (0, 1, ...)
3     prev         digest of the exact bytes of the previous record; 32 zero
                   bytes for the log-open record
4     kind         record kind (`Kind`, below)
5     time         integer ns since the Unix epoch, stamped by the writer
6     session      session id (text)
7     action id    id of the proposed tool call (text); stays the same when a
                   DEFER is re-evaluated
8     decision id  id of this decision (text), unique in the log; a
                   re-evaluation gets a new one
9     action       ``{0: tool, 1: params digest[, 2: params JSON][, 3: wrapper]}``
                   — 2 is the canonical JSON text of the params, present only
                   where the policy allows raw params in receipts (its digest is
                   1); 3 is the meta-tool that named the tool
10    decision     ``{0: effect, 1: [rule id...], 2: reason, 3: message[, 4:
                   modified params digest][, 5: modified params JSON][, 6:
                   [approver...]][, 7: timeout seconds]}``; effect is one of
                   ``allow deny modify step_up defer``
11    policy       ``{0: artifact digest, 1: policy id, 2: policy version}``
12    identity     ``{0: principal, 1: agent, 2: service, 3: role, 4: [scope...],
                   5: [delegation...], 6: identity assertion digest}`` (every
                   entry optional; delegation entries are text, structured ones
                   as canonical JSON)
13    context      digest of the session-context log head at decision time
14    ref          the decision id an approval, deferral resolution or outcome
                   refers to
15    outcome      ``{0: ok, 2: start ns, 3: end ns[, 1: output digest][, 4:
                   error text]}``
16    approver     who approved or rejected a STEP_UP (or resolved a DEFER)
17    resolution   ``{0: verdict[, 1: next decision id]}``
18    rotation     ``{0: new Ed25519 public key, 1: proof of possession}``
19    recovery     ``{0: offset, 1: length, 2: digest}`` of the bytes removed
                   from a torn tail (length 0: a restart after an unclean stop)
20    close        ``{0: number of checkpoints before this record}``
21    note         free text (writer name on log-open, end reason, ...)
====  ===========  ==============================================================

Keys 0-5 are in every record. Per kind (``+`` required, ``o`` optional):

===  ====================  =================================================
no.  kind                  fields
===  ====================  =================================================
0    log-open              o note
1    session-start         + session; o identity, context, policy, note
2    decision              + session, decision id, action, decision;
                           o action id, policy, identity, context, note
3    approval              + session, ref, approver, resolution (verdict
                           ``approved`` ``rejected`` ``timeout`` ``cancelled``);
                           o action id, action, context, note
4    deferral-resolution   + session, ref, resolution (verdict ``resolved``
                           ``timeout`` ``denied`` ``cancelled``; ``next`` names
                           the decision id of the re-evaluation);
                           o action id, approver, context, note
5    outcome               + session, ref, outcome; o action id, context, note
6    session-end           + session; o context, note
7    key-rotation          + rotation; o note
8    recovery              + recovery; o note
9    log-close             + close; o note
===  ====================  =================================================

State machine (checked by the writer before it signs, and by the verifier):
log-open is record 0 and only record 0; session-start comes once per session
per log, before its decisions; no decision after its session's session-end;
each decision id has exactly one decision record; approval refers to an
earlier STEP_UP decision, deferral-resolution to an earlier DEFER decision,
outcome to an earlier decision that could execute (ALLOW, MODIFY, or a STEP_UP
whose approval says ``approved``), each at most once per decision and in the
decision's session (and with its action id, when one is given); log-close is
the last record. A decision id is never reused, so re-evaluating a DEFER is a
new decision record. A decision and its follow-ups live in one log: close a
log only once no decision in it awaits an approval, resolution or outcome.

Key rotation: the record is signed by the current key and carries the new
public key and a proof of possession, the new key's Ed25519 signature over
`rotation_pop_message` (log id, seq of the rotation record, the old kid, the
new public key). From the next seq on, records and checkpoints are signed by
the new key only.

>>> r = Record(kind=Kind.SESSION_START, session="s1", identity=Identity(principal="alice"))
>>> receipt = Receipt(log_id=bytes(16), seq=1, prev=bytes(32), time_ns=5, record=r)
>>> data = encode_payload(receipt)
>>> data == dcbor.encode(dcbor.decode_strict(data)) and decode_payload(data) == receipt
True
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import io
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import cbor2

from aarm_runtime import cose, dcbor, keys, merkle, values
from aarm_runtime.decision import ALLOW, DECISIONS, DEFER, DENY, MODIFY, STEP_UP, Decision

__all__ = [
    "APPROVAL_VERDICTS",
    "Action",
    "CheckpointItem",
    "Close",
    "DecisionInfo",
    "HASH_SHA256",
    "Identity",
    "Kind",
    "LOG_ID_SIZE",
    "Outcome",
    "PolicyRef",
    "Receipt",
    "ReceiptFormatError",
    "Record",
    "RecordItem",
    "Recovery",
    "RESOLUTION_VERDICTS",
    "Resolution",
    "Rotation",
    "StateError",
    "StateMachine",
    "Tail",
    "VERSION",
    "ZERO_DIGEST",
    "approval_record",
    "checkpoint_headers",
    "decision_record",
    "decode_payload",
    "digest_bytes",
    "digest_json",
    "encode_payload",
    "encode_record_payload",
    "facts",
    "outcome_record",
    "parse_item",
    "protected_receipt_header",
    "resolution_record",
    "rotation_pop_message",
    "scan_receipt",
    "session_end_record",
    "session_start_record",
    "sig_structure",
    "sign1_receipt",
    "sign_receipt",
    "read_windows",
    "split_items",
]

VERSION = 1
LOG_ID_SIZE = 16
HASH_SHA256 = -16  # RFC 9054 / IANA COSE Algorithms: SHA-256
ZERO_DIGEST = bytes(32)

# draft-ietf-cose-merkle-tree-proofs: vds value for RFC 9162 with SHA-256, and
# the vdp map label of the inclusion proofs.
VDS_RFC9162_SHA256 = 1
VDP_INCLUSION = -1

_INT_MAX = 2**64 - 1


class Kind(enum.IntEnum):
    LOG_OPEN = 0
    SESSION_START = 1
    DECISION = 2
    APPROVAL = 3
    DEFERRAL_RESOLUTION = 4
    OUTCOME = 5
    SESSION_END = 6
    KEY_ROTATION = 7
    RECOVERY = 8
    LOG_CLOSE = 9

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


# Plain names for the kinds the state machine tests on every record.
_LOG_OPEN, _SESSION_START, _DECISION, _APPROVAL, _DEFERRAL_RESOLUTION, _OUTCOME, _SESSION_END, _LOG_CLOSE = (
    Kind.LOG_OPEN, Kind.SESSION_START, Kind.DECISION, Kind.APPROVAL, Kind.DEFERRAL_RESOLUTION, Kind.OUTCOME,
    Kind.SESSION_END, Kind.LOG_CLOSE)

# Payload keys (see the table in the module docstring).
K_VERSION = 0
K_LOG_ID = 1
K_SEQ = 2
K_PREV = 3
K_KIND = 4
K_TIME = 5
K_SESSION = 6
K_ACTION_ID = 7
K_DECISION_ID = 8
K_ACTION = 9
K_DECISION = 10
K_POLICY = 11
K_IDENTITY = 12
K_CONTEXT = 13
K_REF = 14
K_OUTCOME = 15
K_APPROVER = 16
K_RESOLUTION = 17
K_ROTATION = 18
K_RECOVERY = 19
K_CLOSE = 20
K_NOTE = 21

APPROVAL_VERDICTS = ("approved", "rejected", "timeout", "cancelled")
RESOLUTION_VERDICTS = ("resolved", "timeout", "denied", "cancelled")

_FIELD_NAMES = {
    K_SESSION: "session", K_ACTION_ID: "action_id", K_DECISION_ID: "decision_id", K_ACTION: "action",
    K_DECISION: "decision", K_POLICY: "policy", K_IDENTITY: "identity", K_CONTEXT: "context", K_REF: "ref",
    K_OUTCOME: "outcome", K_APPROVER: "approver", K_RESOLUTION: "resolution", K_ROTATION: "rotation",
    K_RECOVERY: "recovery", K_CLOSE: "close", K_NOTE: "note",
}
_KEY_OF = {name: key for key, name in _FIELD_NAMES.items()}

# kind -> (required, optional) semantic fields
_SHAPES: dict[Kind, tuple[frozenset[int], frozenset[int]]] = {
    Kind.LOG_OPEN: (frozenset(), frozenset({K_NOTE})),
    Kind.SESSION_START: (frozenset({K_SESSION}), frozenset({K_IDENTITY, K_CONTEXT, K_POLICY, K_NOTE})),
    Kind.DECISION: (
        frozenset({K_SESSION, K_DECISION_ID, K_ACTION, K_DECISION}),
        frozenset({K_ACTION_ID, K_POLICY, K_IDENTITY, K_CONTEXT, K_NOTE}),
    ),
    Kind.APPROVAL: (
        frozenset({K_SESSION, K_REF, K_APPROVER, K_RESOLUTION}),
        frozenset({K_ACTION_ID, K_ACTION, K_CONTEXT, K_NOTE}),
    ),
    Kind.DEFERRAL_RESOLUTION: (
        frozenset({K_SESSION, K_REF, K_RESOLUTION}),
        frozenset({K_ACTION_ID, K_APPROVER, K_CONTEXT, K_NOTE}),
    ),
    Kind.OUTCOME: (frozenset({K_SESSION, K_REF, K_OUTCOME}), frozenset({K_ACTION_ID, K_CONTEXT, K_NOTE})),
    Kind.SESSION_END: (frozenset({K_SESSION}), frozenset({K_CONTEXT, K_NOTE})),
    Kind.KEY_ROTATION: (frozenset({K_ROTATION}), frozenset({K_NOTE})),
    Kind.RECOVERY: (frozenset({K_RECOVERY}), frozenset({K_NOTE})),
    Kind.LOG_CLOSE: (frozenset({K_CLOSE}), frozenset({K_NOTE})),
}


class ReceiptFormatError(ValueError):
    """Bytes are not a well-formed, strictly encoded receipt or checkpoint, or a record breaks the schema."""


class StateError(ValueError):
    """A record is out of order for the documented state machine."""


# ----------------------------------------------------------------------------- digests


def digest_bytes(data: bytes) -> bytes:
    """SHA-256 of *data*; receipts carry it as ``[-16, digest]``."""
    return hashlib.sha256(data).digest()


def digest_json(value: Any) -> bytes:
    """SHA-256 of the RFC 8785 canonical JSON text of *value* (UTF-8)."""
    return hashlib.sha256(values.canonical_json(value).encode("utf-8")).digest()


# ----------------------------------------------------------------------------- record fields


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be text, got `{type(value).__name__}`")
    return value


def _opt_text(value: Any, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _hash(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise TypeError(f"{what} must be a 32-byte sha-256 digest")
    return value


def _opt_hash(value: Any, what: str) -> bytes | None:
    return None if value is None else _hash(value, what)


def _texts(value: Iterable[Any], what: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of text, not a single `{type(value).__name__}`")
    return tuple(_text(v, f"{what} entry") for v in value)


def _uint(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT_MAX:
        raise TypeError(f"{what} must be an unsigned 64-bit integer")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    """The proposed tool call: tool, digest of its params, and the params themselves where allowed."""

    tool: str
    params_digest: bytes
    params_json: str | None = None
    wrapper: str | None = None

    def __post_init__(self) -> None:
        if (type(self.tool) is str and type(self.params_digest) is bytes and len(self.params_digest) == 32
                and (self.params_json is None or type(self.params_json) is str)
                and (self.wrapper is None or type(self.wrapper) is str)):
            return  # the common case, checked in one expression; the general checks accept subclasses too
        _text(self.tool, "action tool")
        _hash(self.params_digest, "action params digest")
        _opt_text(self.params_json, "action params json")
        _opt_text(self.wrapper, "action wrapper")

    @classmethod
    def of(cls, tool: str, params: Any, *, include_params: bool = False, wrapper: str | None = None) -> Action:
        """Digest *params* (canonical JSON); keep the text only when *include_params* (the policy allows it)."""
        text = values.canonical_json(params)
        return cls(tool=tool, params_digest=digest_bytes(text.encode("utf-8")),
                   params_json=text if include_params else None, wrapper=wrapper)


@dataclasses.dataclass(frozen=True, slots=True)
class DecisionInfo:
    """What was decided and why; for MODIFY the params the tool runs with (digest, text where allowed)."""

    effect: str
    rules: tuple[str, ...] = ()
    reason: str = ""
    message: str = ""
    params_digest: bytes | None = None
    params_json: str | None = None
    approvers: tuple[str, ...] = ()
    timeout_s: int | None = None

    def __post_init__(self) -> None:
        if self.effect not in DECISIONS:
            raise ValueError(f"decision effect `{self.effect}` is not one of {', '.join(DECISIONS)}")
        object.__setattr__(self, "rules", _texts(self.rules, "decision rules"))
        object.__setattr__(self, "approvers", _texts(self.approvers, "decision approvers"))
        _text(self.reason, "decision reason")
        _text(self.message, "decision message")
        _opt_hash(self.params_digest, "modified params digest")
        _opt_text(self.params_json, "modified params json")
        if self.params_json is not None and self.params_digest is None:
            raise ValueError("modified params json given without its digest")
        if self.timeout_s is not None:
            _uint(self.timeout_s, "decision timeout")

    @classmethod
    def from_decision(cls, d: Decision, *, include_params: bool = False) -> DecisionInfo:
        digest = text = None
        if d.decision == MODIFY:
            text = values.canonical_json(d.params)
            digest = digest_bytes(text.encode("utf-8"))
            if not include_params:
                text = None
        return cls(effect=d.decision, rules=tuple(d.rules), reason=d.reason, message=d.message,
                   params_digest=digest, params_json=text, approvers=tuple(d.approvers), timeout_s=d.timeout_s)


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyRef:
    """The policy that decided: digest of the artifact bytes, policy id and version."""

    digest: bytes
    policy: str
    version: str

    def __post_init__(self) -> None:
        _hash(self.digest, "policy digest")
        _text(self.policy, "policy id")
        _text(self.version, "policy version")

    @classmethod
    def from_artifact(cls, artifact: Any) -> PolicyRef:
        """From a loaded `aarm_runtime.artifact.Artifact` (anything with ``digest``, ``policy``, ``version``)."""
        return cls(digest=artifact.digest, policy=artifact.policy, version=artifact.version)


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who asked: principal, agent, service, role, scopes, delegation chain, and the assertion that said so."""

    principal: str | None = None
    agent: str | None = None
    service: str | None = None
    role: str | None = None
    scopes: tuple[str, ...] = ()
    delegation: tuple[str, ...] = ()
    assertion_digest: bytes | None = None

    def __post_init__(self) -> None:
        for name in ("principal", "agent", "service", "role"):
            _opt_text(getattr(self, name), f"identity {name}")
        object.__setattr__(self, "scopes", _texts(self.scopes, "identity scopes"))
        object.__setattr__(self, "delegation", _texts(self.delegation, "identity delegation"))
        _opt_hash(self.assertion_digest, "identity assertion digest")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any], *, assertion_digest: bytes | None = None) -> Identity:
        """From a session file's ``identity`` section; structured delegation entries become canonical JSON."""
        chain = tuple(e if isinstance(e, str) else values.canonical_json(e) for e in m.get("delegation", ()))
        return cls(principal=m.get("principal"), agent=m.get("agent"), service=m.get("service"),
                   role=m.get("role"), scopes=tuple(m.get("scopes", ())), delegation=chain,
                   assertion_digest=assertion_digest)


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What happened when the tool ran."""

    ok: bool
    start_ns: int
    end_ns: int
    output_digest: bytes | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ok, bool):
            raise TypeError("outcome ok must be a bool")
        _uint(self.start_ns, "outcome start")
        _uint(self.end_ns, "outcome end")
        if self.end_ns < self.start_ns:
            raise ValueError(f"outcome ends ({self.end_ns}) before it starts ({self.start_ns})")
        _opt_hash(self.output_digest, "output digest")
        _opt_text(self.error, "outcome error")


@dataclasses.dataclass(frozen=True, slots=True)
class Resolution:
    """How a STEP_UP (approval) or DEFER (deferral resolution) ended; `next_decision` is the re-evaluation."""

    verdict: str
    next_decision: str | None = None

    def __post_init__(self) -> None:
        _text(self.verdict, "resolution verdict")
        _opt_text(self.next_decision, "next decision id")


@dataclasses.dataclass(frozen=True, slots=True)
class Rotation:
    public_key: bytes
    proof: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or len(self.public_key) != keys.PUBLIC_KEY_SIZE:
            raise TypeError(f"rotation public key must be {keys.PUBLIC_KEY_SIZE} bytes")
        if not isinstance(self.proof, bytes) or len(self.proof) != keys.SIGNATURE_SIZE:
            raise TypeError(f"rotation proof of possession must be a {keys.SIGNATURE_SIZE}-byte signature")


@dataclasses.dataclass(frozen=True, slots=True)
class Recovery:
    offset: int
    length: int
    digest: bytes

    def __post_init__(self) -> None:
        _uint(self.offset, "recovery offset")
        _uint(self.length, "recovery length")
        _hash(self.digest, "recovery digest")


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    checkpoints: int

    def __post_init__(self) -> None:
        _uint(self.checkpoints, "close checkpoints")


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """The meaning of a receipt; the log writer adds version, log id, seq, prev and time."""

    kind: Kind
    session: str | None = None
    action_id: str | None = None
    decision_id: str | None = None
    action: Action | None = None
    decision: DecisionInfo | None = None
    policy: PolicyRef | None = None
    identity: Identity | None = None
    context: bytes | None = None
    ref: str | None = None
    outcome: Outcome | None = None
    approver: str | None = None
    resolution: Resolution | None = None
    rotation: Rotation | None = None
    recovery: Recovery | None = None
    close: Close | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        kind = self.kind
        if type(kind) is not Kind:
            kind = Kind(kind)
            object.__setattr__(self, "kind", kind)
        # Which fields are present, and their types, is one tuple of types: the guard builds records of a
        # handful of shapes again and again, so a shape checked once is remembered.
        shape = (kind, *map(type, _field_values(self)))
        if shape not in _GOOD_SHAPES:
            _check_shape(self, kind)
            if len(_GOOD_SHAPES) < 4096:
                _GOOD_SHAPES.add(shape)
        if self.context is not None and len(self.context) != 32:
            raise TypeError("context digest must be a 32-byte sha-256 digest")
        if self.resolution is not None:
            problem = _resolution_problem(kind, self.resolution)
            if problem:
                raise ValueError(problem)
        for a in (self.action, self.decision):
            if a is not None and a.params_json is not None:
                if digest_bytes(a.params_json.encode("utf-8")) != a.params_digest:
                    raise ValueError("params json does not match its digest")


def _resolution_problem(kind: Kind, resolution: Resolution) -> str | None:
    allowed = APPROVAL_VERDICTS if kind == Kind.APPROVAL else RESOLUTION_VERDICTS
    if resolution.verdict not in allowed:
        return f"{kind.label} verdict `{resolution.verdict}` is not one of {', '.join(allowed)}"
    if kind == Kind.APPROVAL and resolution.next_decision is not None:
        return "an approval names no next decision; only a deferral resolution does"
    return None


def _names(field_keys: Iterable[int]) -> str:
    return ", ".join(f"`{_FIELD_NAMES[k]}`" for k in sorted(field_keys))


def _factory(cls: type) -> Any:
    """A constructor that skips ``__post_init__``: verification parses every record of a log, and the
    strict parser has already checked each field, so re-validating would double the parse cost.
    (A closure, not generated code: the runtime never execs anything.)"""
    slots = tuple((f.name, getattr(cls, f.name).__set__, f.default) for f in dataclasses.fields(cls))
    missing = dataclasses.MISSING

    def make(**values: Any) -> Any:
        o = object.__new__(cls)
        for name, store, default in slots:
            value = values.pop(name, default)
            if value is missing:
                raise TypeError(f"{cls.__name__}: missing field `{name}`")
            store(o, value)
        if values:
            raise TypeError(f"{cls.__name__}: unknown fields {sorted(values)}")
        return o

    return make


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    """A record placed in a log: the chain header around a `Record`."""

    log_id: bytes
    seq: int
    prev: bytes
    time_ns: int
    record: Record
    version: int = VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.log_id, bytes) or len(self.log_id) != LOG_ID_SIZE:
            raise TypeError(f"log id must be {LOG_ID_SIZE} bytes")
        _uint(self.seq, "seq")
        _hash(self.prev, "prev")
        _uint(self.time_ns, "time")
        if self.version != VERSION:
            raise ValueError(f"receipt version {self.version!r} is not {VERSION}")
        if not isinstance(self.record, Record):
            raise TypeError("record must be a `Record`")

    @property
    def kind(self) -> Kind:
        return self.record.kind

    @property
    def subject(self) -> str:
        """The CWT ``sub`` claim: the session id, or the log id in hex."""
        return self.record.session if self.record.session is not None else self.log_id.hex()


_FIELD_TYPES = (
    (K_SESSION, "session", str), (K_ACTION_ID, "action_id", str), (K_DECISION_ID, "decision_id", str),
    (K_ACTION, "action", Action), (K_DECISION, "decision", DecisionInfo), (K_POLICY, "policy", PolicyRef),
    (K_IDENTITY, "identity", Identity), (K_CONTEXT, "context", bytes), (K_REF, "ref", str),
    (K_OUTCOME, "outcome", Outcome), (K_APPROVER, "approver", str), (K_RESOLUTION, "resolution", Resolution),
    (K_ROTATION, "rotation", Rotation), (K_RECOVERY, "recovery", Recovery), (K_CLOSE, "close", Close),
    (K_NOTE, "note", str),
)

_field_values = operator.attrgetter(*(name for _, name, _ in _FIELD_TYPES))
_GOOD_SHAPES: set[tuple[Any, ...]] = set()


def _check_shape(record: Record, kind: Kind) -> None:
    """Every present field has its type, and the kind has every field it needs and no other."""
    present = set()
    for key, name, want in _FIELD_TYPES:
        value = getattr(record, name)
        if value is None:
            continue
        present.add(key)
        if type(value) is not want:
            raise TypeError(f"{name.replace('_', ' ')} must be `{want.__name__}`, got `{type(value).__name__}`")
    required, optional = _SHAPES[kind]
    if not required <= present:
        raise ValueError(f"{kind.label} record needs {_names(required - present)}")
    if not present <= required | optional:
        raise ValueError(f"{kind.label} record cannot carry {_names(present - required - optional)}")


# Constructors without __post_init__ for the strict parser, which has checked every field already.
_new_action = _factory(Action)
_new_decisioninfo = _factory(DecisionInfo)
_new_policyref = _factory(PolicyRef)
_new_identity = _factory(Identity)
_new_outcome = _factory(Outcome)
_new_resolution = _factory(Resolution)
_new_rotation = _factory(Rotation)
_new_recovery = _factory(Recovery)
_new_close = _factory(Close)
_new_record = _factory(Record)
_new_receipt = _factory(Receipt)


# ----------------------------------------------------------------------------- builders


def session_start_record(session: str, *, identity: Identity | None = None, context: bytes | None = None,
                         policy: PolicyRef | None = None, note: str | None = None) -> Record:
    return Record(kind=Kind.SESSION_START, session=session, identity=identity, context=context, policy=policy,
                  note=note)


def session_end_record(session: str, *, context: bytes | None = None, note: str | None = None) -> Record:
    return Record(kind=Kind.SESSION_END, session=session, context=context, note=note)


def decision_record(*, session: str, decision_id: str, tool: str, params: Any, decision: Decision | DecisionInfo,
                    action_id: str | None = None, policy: PolicyRef | None = None,
                    identity: Identity | None = None, context: bytes | None = None,
                    include_params: bool = False, wrapper: str | None = None, note: str | None = None) -> Record:
    """A decision record: *params* as proposed (digested; kept as canonical JSON only with *include_params*)."""
    info = decision if isinstance(decision, DecisionInfo) else DecisionInfo.from_decision(
        decision, include_params=include_params)
    if wrapper is None and isinstance(decision, Decision):
        wrapper = decision.wrapper
    return Record(kind=Kind.DECISION, session=session, action_id=action_id, decision_id=decision_id,
                  action=Action.of(tool, params, include_params=include_params, wrapper=wrapper), decision=info,
                  policy=policy, identity=identity, context=context, note=note)


def approval_record(*, session: str, ref: str, approver: str, verdict: str, action_id: str | None = None,
                    action: Action | None = None, context: bytes | None = None, note: str | None = None) -> Record:
    return Record(kind=Kind.APPROVAL, session=session, ref=ref, approver=approver,
                  resolution=Resolution(verdict=verdict), action_id=action_id, action=action, context=context,
                  note=note)


def resolution_record(*, session: str, ref: str, verdict: str, next_decision: str | None = None,
                      approver: str | None = None, action_id: str | None = None, context: bytes | None = None,
                      note: str | None = None) -> Record:
    return Record(kind=Kind.DEFERRAL_RESOLUTION, session=session, ref=ref,
                  resolution=Resolution(verdict=verdict, next_decision=next_decision), approver=approver,
                  action_id=action_id, context=context, note=note)


def outcome_record(*, session: str, ref: str, ok: bool, start_ns: int, end_ns: int, output: Any = None,
                   output_digest: bytes | None = None, error: str | None = None, action_id: str | None = None,
                   context: bytes | None = None, note: str | None = None) -> Record:
    """An outcome record; pass the tool *output* (digested as canonical JSON) or its *output_digest*."""
    if output is not None:
        if output_digest is not None:
            raise ValueError("give the output or its digest, not both")
        output_digest = digest_bytes(output) if isinstance(output, bytes) else digest_json(output)
    return Record(kind=Kind.OUTCOME, session=session, ref=ref,
                  outcome=Outcome(ok=ok, start_ns=start_ns, end_ns=end_ns, output_digest=output_digest, error=error),
                  action_id=action_id, context=context, note=note)


def rotation_pop_message(log_id: bytes, seq: int, old_kid: bytes, new_public_key: bytes) -> bytes:
    """What the new key signs to prove possession: binds it to this log, this record and the key it replaces."""
    return dcbor.encode(["aarm-key-rotation", log_id, seq, old_kid, new_public_key])


# ----------------------------------------------------------------------------- encoding


def _payload_map(r: Receipt) -> dict[int, Any]:
    # Keys are inserted in ascending order: with one-byte keys that is the
    # RFC 8949 §4.2.1 order, so cbor2's plain encoder writes deterministic CBOR.
    rec = r.record
    m: dict[int, Any] = {
        K_VERSION: r.version, K_LOG_ID: r.log_id, K_SEQ: r.seq, K_PREV: [HASH_SHA256, r.prev],
        K_KIND: int(rec.kind), K_TIME: r.time_ns,
    }
    if rec.session is not None:
        m[K_SESSION] = rec.session
    if rec.action_id is not None:
        m[K_ACTION_ID] = rec.action_id
    if rec.decision_id is not None:
        m[K_DECISION_ID] = rec.decision_id
    a = rec.action
    if a is not None:
        am: dict[int, Any] = {0: a.tool, 1: [HASH_SHA256, a.params_digest]}
        if a.params_json is not None:
            am[2] = a.params_json
        if a.wrapper is not None:
            am[3] = a.wrapper
        m[K_ACTION] = am
    d = rec.decision
    if d is not None:
        dm: dict[int, Any] = {0: d.effect, 1: list(d.rules), 2: d.reason, 3: d.message}
        if d.params_digest is not None:
            dm[4] = [HASH_SHA256, d.params_digest]
        if d.params_json is not None:
            dm[5] = d.params_json
        if d.approvers:
            dm[6] = list(d.approvers)
        if d.timeout_s is not None:
            dm[7] = d.timeout_s
        m[K_DECISION] = dm
    p = rec.policy
    if p is not None:
        m[K_POLICY] = {0: [HASH_SHA256, p.digest], 1: p.policy, 2: p.version}
    i = rec.identity
    if i is not None:
        im: dict[int, Any] = {}
        if i.principal is not None:
            im[0] = i.principal
        if i.agent is not None:
            im[1] = i.agent
        if i.service is not None:
            im[2] = i.service
        if i.role is not None:
            im[3] = i.role
        if i.scopes:
            im[4] = list(i.scopes)
        if i.delegation:
            im[5] = list(i.delegation)
        if i.assertion_digest is not None:
            im[6] = [HASH_SHA256, i.assertion_digest]
        m[K_IDENTITY] = im
    if rec.context is not None:
        m[K_CONTEXT] = [HASH_SHA256, rec.context]
    if rec.ref is not None:
        m[K_REF] = rec.ref
    o = rec.outcome
    if o is not None:
        om: dict[int, Any] = {0: o.ok}
        if o.output_digest is not None:
            om[1] = [HASH_SHA256, o.output_digest]
        om[2] = o.start_ns
        om[3] = o.end_ns
        if o.error is not None:
            om[4] = o.error
        m[K_OUTCOME] = om
    if rec.approver is not None:
        m[K_APPROVER] = rec.approver
    s = rec.resolution
    if s is not None:
        sm: dict[int, Any] = {0: s.verdict}
        if s.next_decision is not None:
            sm[1] = s.next_decision
        m[K_RESOLUTION] = sm
    if rec.rotation is not None:
        m[K_ROTATION] = {0: rec.rotation.public_key, 1: rec.rotation.proof}
    if rec.recovery is not None:
        v = rec.recovery
        m[K_RECOVERY] = {0: v.offset, 1: v.length, 2: [HASH_SHA256, v.digest]}
    if rec.close is not None:
        m[K_CLOSE] = {0: rec.close.checkpoints}
    if rec.note is not None:
        m[K_NOTE] = rec.note
    return m


def encode_payload(receipt: Receipt) -> bytes:
    """Deterministic CBOR of the receipt payload (equal to ``dcbor.encode(_payload_map(receipt))``)."""
    return encode_record_payload(receipt.log_id, receipt.seq, receipt.prev, receipt.time_ns, receipt.record)


# ---- the writer's encoder
#
# `_payload_map` + cbor2 is the readable definition; the log writer encodes
# every record, so this builds the same bytes directly: heads by table, the
# maps' keys already in ascending order, and the sub-maps a guard passes again
# and again (its policy, a session's identity, a rule's decision) encoded once
# and remembered by object identity. The tests hold it to `dcbor.encode` of
# `_payload_map` byte for byte.

_HEADS = tuple(tuple(bytes((major << 5 | n,)) for n in range(24)) for major in range(8))


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return _HEADS[major][n]
    mt = major << 5
    if n < 0x100:
        return bytes((mt | 24, n))
    if n < 0x10000:
        return bytes((mt | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((mt | 26,)) + n.to_bytes(4, "big")
    if n <= _INT_MAX:
        return bytes((mt | 27,)) + n.to_bytes(8, "big")
    raise dcbor.EncodingError(f"integer `{n}` does not fit in 64 bits; bignums are not allowed")


def _e_uint(n: int) -> bytes:
    if n < 0:
        raise dcbor.EncodingError(f"`{n}` is negative where an unsigned integer belongs")
    return _head(0, n)


_TEXT_HEADS = _HEADS[3]


def _e_text(value: str) -> bytes:
    raw = value.encode("utf-8")
    n = len(raw)
    return (_TEXT_HEADS[n] if n < 24 else _head(3, n)) + raw


def _e_texts(items: tuple[str, ...]) -> bytes:
    return _head(4, len(items)) + b"".join([_e_text(t) for t in items])


_DIGEST_HEAD = b"\x82\x2f\x58\x20"  # [-16, bstr .size 32
_E_TRUE, _E_FALSE = b"\xf5", b"\xf4"


def _e_digest(digest: bytes) -> bytes:
    if len(digest) != 32:
        raise dcbor.EncodingError("a digest must be 32 bytes")
    return _DIGEST_HEAD + digest


def _e_action(a: Action) -> bytes:
    n = 2
    parts = [b"", b"\x00", _e_text(a.tool), b"\x01", _e_digest(a.params_digest)]
    if a.params_json is not None:
        parts += (b"\x02", _e_text(a.params_json))
        n += 1
    if a.wrapper is not None:
        parts += (b"\x03", _e_text(a.wrapper))
        n += 1
    parts[0] = _HEADS[5][n]
    return b"".join(parts)


def _e_decision(d: DecisionInfo) -> bytes:
    n = 4
    parts = [b"", b"\x00", _e_text(d.effect), b"\x01", _e_texts(d.rules), b"\x02", _e_text(d.reason), b"\x03",
             _e_text(d.message)]
    if d.params_digest is not None:
        parts += (b"\x04", _e_digest(d.params_digest))
        n += 1
    if d.params_json is not None:
        parts += (b"\x05", _e_text(d.params_json))
        n += 1
    if d.approvers:
        parts += (b"\x06", _e_texts(d.approvers))
        n += 1
    if d.timeout_s is not None:
        parts += (b"\x07", _e_uint(d.timeout_s))
        n += 1
    parts[0] = _HEADS[5][n]
    return b"".join(parts)


def _e_policy(p: PolicyRef) -> bytes:
    return b"".join((b"\xa3\x00", _e_digest(p.digest), b"\x01", _e_text(p.policy), b"\x02", _e_text(p.version)))


def _e_identity(i: Identity) -> bytes:
    parts = [b""]
    for key, value in ((b"\x00", i.principal), (b"\x01", i.agent), (b"\x02", i.service), (b"\x03", i.role)):
        if value is not None:
            parts += (key, _e_text(value))
    if i.scopes:
        parts += (b"\x04", _e_texts(i.scopes))
    if i.delegation:
        parts += (b"\x05", _e_texts(i.delegation))
    if i.assertion_digest is not None:
        parts += (b"\x06", _e_digest(i.assertion_digest))
    parts[0] = _HEADS[5][len(parts) // 2]
    return b"".join(parts)


def _e_outcome(o: Outcome) -> bytes:
    parts = [b"", b"\x00", _E_TRUE if o.ok else _E_FALSE]
    if o.output_digest is not None:
        parts += (b"\x01", _e_digest(o.output_digest))
    parts += (b"\x02", _e_uint(o.start_ns), b"\x03", _e_uint(o.end_ns))
    if o.error is not None:
        parts += (b"\x04", _e_text(o.error))
    parts[0] = _HEADS[5][len(parts) // 2]
    return b"".join(parts)


def _e_resolution(r: Resolution) -> bytes:
    if r.next_decision is None:
        return b"\xa1\x00" + _e_text(r.verdict)
    return b"".join((b"\xa2\x00", _e_text(r.verdict), b"\x01", _e_text(r.next_decision)))


# id(object) -> (object, encoding). The entry holds the object, so its id cannot be reused while cached;
# the objects are frozen dataclasses.
_ENCODED: dict[int, tuple[Any, bytes]] = {}
_ENCODED_MAX = 4096


def _cached(obj: Any, encoder: Any) -> bytes:
    got = _ENCODED.get(id(obj))
    if got is not None and got[0] is obj:
        return got[1]
    data = encoder(obj)
    if len(_ENCODED) >= _ENCODED_MAX:
        _ENCODED.clear()
    _ENCODED[id(obj)] = (obj, data)
    return data


_KIND_FIELD = tuple(bytes((K_KIND, k)) for k in range(len(Kind)))


def encode_record_payload(log_id: bytes, seq: int, prev: bytes, time_ns: int, rec: Record) -> bytes:
    """`encode_payload` of ``Receipt(log_id, seq, prev, time_ns, rec)`` without building the `Receipt`."""
    if len(log_id) != LOG_ID_SIZE or len(prev) != 32 or seq < 0 or time_ns < 0:
        raise dcbor.EncodingError("log id, prev, seq or time out of range")
    # Keys 0-5; then the optional fields in ascending key order.
    parts = [b"", b"\x00\x01\x01\x50", log_id, b"\x02", _head(0, seq), b"\x03\x82\x2f\x58\x20", prev,
             _KIND_FIELD[rec.kind], b"\x05", _head(0, time_ns)]
    n = 6
    if rec.session is not None:
        parts += (b"\x06", _e_text(rec.session))
        n += 1
    if rec.action_id is not None:
        parts += (b"\x07", _e_text(rec.action_id))
        n += 1
    if rec.decision_id is not None:
        parts += (b"\x08", _e_text(rec.decision_id))
        n += 1
    if rec.action is not None:
        parts += (b"\x09", _e_action(rec.action))
        n += 1
    if rec.decision is not None:
        parts += (b"\x0a", _cached(rec.decision, _e_decision))
        n += 1
    if rec.policy is not None:
        parts += (b"\x0b", _cached(rec.policy, _e_policy))
        n += 1
    if rec.identity is not None:
        parts += (b"\x0c", _cached(rec.identity, _e_identity))
        n += 1
    if rec.context is not None:
        parts += (b"\x0d", _e_digest(rec.context))
        n += 1
    if rec.ref is not None:
        parts += (b"\x0e", _e_text(rec.ref))
        n += 1
    if rec.outcome is not None:
        parts += (b"\x0f", _e_outcome(rec.outcome))
        n += 1
    if rec.approver is not None:
        parts += (b"\x10", _e_text(rec.approver))
        n += 1
    if rec.resolution is not None:
        parts += (b"\x11", _e_resolution(rec.resolution))
        n += 1
    if rec.rotation is not None:
        t = rec.rotation
        parts += (b"\x12\xa2\x00", _head(2, len(t.public_key)), t.public_key, b"\x01", _head(2, len(t.proof)),
                  t.proof)
        n += 1
    if rec.recovery is not None:
        v = rec.recovery
        parts += (b"\x13\xa3\x00", _e_uint(v.offset), b"\x01", _e_uint(v.length), b"\x02", _e_digest(v.digest))
        n += 1
    if rec.close is not None:
        parts += (b"\x14\xa1\x00", _e_uint(rec.close.checkpoints))
        n += 1
    if rec.note is not None:
        parts += (b"\x15", _e_text(rec.note))
        n += 1
    parts[0] = _HEADS[5][n]
    return b"".join(parts)


def _bstr_head(n: int) -> bytes:
    return _head(2, n)


_SIG1_PREFIX = b"\x84\x6aSignature1"  # ["Signature1", ...] header and context string
_EMPTY_AAD = b"\x40"
_SIGN1_HEAD = b"\xd2\x84"  # tag 18, array of 4
_SIG_HEAD = b"\x58\x40"  # bstr of 64 bytes
_EMPTY_MAP = b"\xa0"
_NIL = b"\xf6"
_TYP_RECEIPT_FIELD = b"\x10" + _e_text(cose.TYP_RECEIPT)


def _e_int(n: int) -> bytes:
    return _head(0, n) if n >= 0 else _head(1, -1 - n)


def protected_receipt_header(kid: bytes, issuer: str, subject: str, iat: int, alg: int = cose.ALG_ED25519) -> bytes:
    """Deterministic CBOR of a receipt's protected header (labels 1, 4, 15, 16: ascending, one byte each)."""
    if len(kid) != 32:
        raise dcbor.EncodingError("kid must be a 32-byte thumbprint")
    return b"".join((b"\xa4\x01", _e_int(alg), b"\x04\x58\x20", kid, b"\x0f\xa3\x01", _e_text(issuer), b"\x02",
                     _e_text(subject), b"\x06", _e_uint(iat), _TYP_RECEIPT_FIELD))


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """``["Signature1", protected, h'', payload]`` (RFC 9052 §4.4), as `cose.sig_structure` builds it."""
    return b"".join((_SIG1_PREFIX, _bstr_head(len(protected)), protected, _EMPTY_AAD, _bstr_head(len(payload)),
                     payload))


def sign_receipt(payload: bytes, key: keys.SigningKey, *, issuer: str, subject: str, iat: int,
                 kid: bytes | None = None) -> bytes:
    """Sign a receipt payload; the bytes equal ``cose.sign1(payload, key, typ=TYP_RECEIPT, cwt_claims=...)``.

    Built by hand because the log writer signs every record and the generic
    encoder costs more than the signature; the tests hold the two to byte
    equality. *kid* may be passed to save recomputing the key's thumbprint.
    """
    return sign1_receipt(protected_receipt_header(kid or key.kid, issuer, subject, iat), payload, key)


def sign1_receipt(protected: bytes, payload: bytes, key: keys.SigningKey) -> bytes:
    """The tagged COSE_Sign1 of *payload* under the encoded *protected* header (`protected_receipt_header`)."""
    ph, pl = _bstr_head(len(protected)), _bstr_head(len(payload))
    signature = key.sign(b"".join((_SIG1_PREFIX, ph, protected, _EMPTY_AAD, pl, payload)))
    return b"".join((_SIGN1_HEAD, ph, protected, _EMPTY_MAP, pl, payload, _SIG_HEAD, signature))


def checkpoint_headers(kid: bytes, issuer: str, log_id: bytes, iat: int, tree_size: int,
                       path: Iterable[bytes]) -> tuple[dict[int, Any], dict[int, Any], dict[int, Any]]:
    """(cwt claims, extra protected, unprotected) of a checkpoint over leaves 0..tree_size-1.

    COSE Receipts shape (draft-ietf-cose-merkle-tree-proofs): protected ``vds``
    (395) = 1, RFC9162_SHA256; unprotected ``vdp`` (396) = ``{-1:
    [bstr .cbor [tree_size, leaf_index, [hash...]]]}`` with the inclusion proof
    of the last leaf; the signed payload is the detached root.
    """
    proof = dcbor.encode([tree_size, tree_size - 1, list(path)])
    return ({1: issuer, 2: log_id.hex(), 6: iat}, {cose.HDR_VDS: VDS_RFC9162_SHA256},
            {cose.HDR_VDP: {VDP_INCLUSION: [proof]}})


# ----------------------------------------------------------------------------- strict decoding


def _fail(message: str) -> ReceiptFormatError:
    return ReceiptFormatError(message)


def _loads_exact(data: bytes, what: str) -> Any:
    """Decode with cbor2 and require that re-encoding gives back *data*.

    The re-encoding check rejects duplicate keys, indefinite lengths,
    non-shortest heads and semantic tags cbor2 would resolve; key order and
    value types are checked by the schema walkers below (they accept only
    int keys in ascending order and plain values). Together that is exactly
    `dcbor.decode_strict` for this schema — the tests check the two agree —
    at a fraction of its cost.
    """
    try:
        value = cbor2.loads(data)
    except Exception as exc:  # noqa: BLE001 - cbor2 raises assorted errors on hostile input
        raise _fail(f"{what} is not well-formed cbor: {exc}") from None
    try:
        again = cbor2.dumps(value)
    except Exception:  # noqa: BLE001
        raise _fail(f"{what} decodes to values outside deterministic cbor") from None
    if again != data:
        raise _fail(f"{what} is not deterministic cbor (rfc 8949 §4.2.1)")
    return value


def _map(value: Any, allowed: range, what: str) -> dict[int, Any]:
    # Valid when the keys, in the map's own order, are exactly the allowed integers it holds, in ascending
    # order: one comparison of tuples, plus one look at the key types (True == 1 and 1.0 == 1 as dict keys).
    if type(value) is not dict:
        raise _fail(f"{what} must be a map")
    keys = tuple(value)
    if keys != tuple(filter(value.__contains__, allowed)) or (keys and {*map(type, keys)} != _INT_ONLY):
        raise _map_problem(value, allowed, what)
    return value


_INT_ONLY = {int}


def _map_problem(value: dict[Any, Any], allowed: range, what: str) -> ReceiptFormatError:
    last = -1 << 70
    for k in value:
        if type(k) is not int or k not in allowed:
            return _fail(f"{what} has unknown key `{k!r}`")
        if k <= last:
            return _fail(f"{what} keys are not in ascending order")
        last = k
    return _fail(f"{what} keys are not in ascending order")  # pragma: no cover - the loop finds the problem


def _p_text(value: Any, what: str) -> str:
    if type(value) is not str:
        raise _fail(f"{what} must be text")
    return value


def _p_uint(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _INT_MAX:
        raise _fail(f"{what} must be an unsigned integer")
    return value


def _p_bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise _fail(f"{what} must be a bool")
    return value


def _p_digest(value: Any, what: str) -> bytes:
    if (type(value) is not list or len(value) != 2 or type(value[0]) is not int or value[0] != HASH_SHA256
            or type(value[1]) is not bytes or len(value[1]) != 32):
        raise _fail(f"{what} must be a digest [-16, sha256]")
    return value[1]


def _p_texts(value: Any, what: str) -> tuple[str, ...]:
    if type(value) is not list:
        raise _fail(f"{what} must be an array of text")
    for v in value:
        if type(v) is not str:
            raise _fail(f"{what} must be an array of text")
    return tuple(value)


def _p_bytes(value: Any, size: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise _fail(f"{what} must be {size} bytes")
    return value


def _req(m: dict[int, Any], key: int, what: str) -> Any:
    try:
        return m[key]
    except KeyError:
        raise _fail(f"{what} is missing") from None


_R4 = range(4)
_R5 = range(5)
_R2 = range(2)
_R3 = range(3)
_R7 = range(7)
_R8 = range(8)
_R1 = range(1)
_TOP = range(K_NOTE + 1)
_KINDS = tuple(Kind)
_HEADER_KEYS = frozenset({K_VERSION, K_LOG_ID, K_SEQ, K_PREV, K_KIND, K_TIME})

# Strict decoding is in two steps: `_check_payload` checks every field of the decoded map and builds nothing
# (all the verifier needs), `_build_receipt` turns a checked map into a `Receipt` (for readers that keep
# records) without checking again.


def _p_action(v: Any) -> None:
    m = _map(v, _R4, "action")
    text = m.get(2)
    digest = _p_digest(_req(m, 1, "action params digest"), "action params digest")
    if text is not None:
        _p_json_text(text, digest, "action params json")
    _p_text(_req(m, 0, "action tool"), "action tool")
    if 3 in m:
        _p_text(m[3], "action wrapper")


def _p_json_text(text: Any, digest: bytes, what: str) -> None:
    _p_text(text, what)
    if digest_bytes(text.encode("utf-8")) != digest:
        raise _fail(f"{what} does not match its digest")
    try:
        canonical = values.canonical_json(values.load_json(text))
    except (ValueError, TypeError) as exc:
        raise _fail(f"{what} is not json: {exc}") from None
    if canonical != text:
        raise _fail(f"{what} is not rfc 8785 canonical json")


def _p_decision(v: Any) -> str:
    m = _map(v, _R8, "decision")
    effect = _p_text(_req(m, 0, "decision effect"), "decision effect")
    if effect not in DECISIONS:
        raise _fail(f"decision effect `{effect}` is unknown")
    digest = None if 4 not in m else _p_digest(m[4], "modified params digest")
    text = m.get(5)
    if text is not None:
        if digest is None:
            raise _fail("modified params json without its digest")
        _p_json_text(text, digest, "modified params json")
    _p_texts(_req(m, 1, "decision rules"), "decision rules")
    _p_text(_req(m, 2, "decision reason"), "decision reason")
    _p_text(_req(m, 3, "decision message"), "decision message")
    if 6 in m:
        _p_nonempty_texts(m[6], "decision approvers")
    if 7 in m:
        _p_uint(m[7], "decision timeout")
    return effect


def _p_policy(v: Any) -> None:
    m = _map(v, _R3, "policy")
    _p_digest(_req(m, 0, "policy digest"), "policy digest")
    _p_text(_req(m, 1, "policy id"), "policy id")
    _p_text(_req(m, 2, "policy version"), "policy version")


_IDENTITY_TEXTS = ((0, "identity principal"), (1, "identity agent"), (2, "identity service"), (3, "identity role"))


def _p_identity(v: Any) -> None:
    m = _map(v, _R7, "identity")
    for key, what in _IDENTITY_TEXTS:
        if key in m:
            _p_text(m[key], what)
    if 4 in m:
        _p_nonempty_texts(m[4], "identity scopes")
    if 5 in m:
        _p_nonempty_texts(m[5], "identity delegation")
    if 6 in m:
        _p_digest(m[6], "identity assertion digest")


def _p_nonempty_texts(v: Any, what: str) -> tuple[str, ...]:
    # The encoder leaves empty tuples out, so an empty array is a second encoding.
    out = _p_texts(v, what)
    if not out:
        raise _fail(f"{what} is empty; an empty list is encoded by leaving it out")
    return out


def _p_outcome(v: Any) -> None:
    m = _map(v, _R5, "outcome")
    start = _p_uint(_req(m, 2, "outcome start"), "outcome start")
    end = _p_uint(_req(m, 3, "outcome end"), "outcome end")
    if end < start:
        raise _fail("outcome ends before it starts")
    _p_bool(_req(m, 0, "outcome ok"), "outcome ok")
    if 1 in m:
        _p_digest(m[1], "output digest")
    if 4 in m:
        _p_text(m[4], "outcome error")


_TEXT_FIELDS = tuple((key, _FIELD_NAMES[key].replace("_", " ")) for key in
                     (K_SESSION, K_ACTION_ID, K_DECISION_ID, K_REF, K_APPROVER, K_NOTE))


def _check_payload(data: bytes) -> tuple[dict[int, Any], Kind]:
    """Decode a receipt payload and check it strictly; return the map (as checked) and the record kind."""
    m = _map(_loads_exact(data, "receipt payload"), _TOP, "receipt payload")
    version = _req(m, K_VERSION, "version")
    if type(version) is not int or version != VERSION:
        raise _fail(f"receipt version `{version!r}` is not {VERSION}")
    kind_no = _p_uint(_req(m, K_KIND, "kind"), "kind")
    if kind_no >= len(_KINDS):
        raise _fail(f"record kind {kind_no} is unknown")
    kind = _KINDS[kind_no]
    required, optional = _SHAPES[kind]
    present = m.keys() - _HEADER_KEYS
    if not required <= present:
        raise _fail(f"{kind.label} record needs {_names(required - present)}")
    if not present <= required | optional:
        raise _fail(f"{kind.label} record cannot carry {_names(present - required - optional)}")
    for key, what in _TEXT_FIELDS:
        if key in m:
            _p_text(m[key], what)
    if K_ACTION in m:
        _p_action(m[K_ACTION])
    if K_DECISION in m:
        _p_decision(m[K_DECISION])
    if K_POLICY in m:
        _p_policy(m[K_POLICY])
    if K_IDENTITY in m:
        _p_identity(m[K_IDENTITY])
    if K_CONTEXT in m:
        _p_digest(m[K_CONTEXT], "context digest")
    if K_OUTCOME in m:
        _p_outcome(m[K_OUTCOME])
    if K_RESOLUTION in m:
        rm = _map(m[K_RESOLUTION], _R2, "resolution")
        verdict = _p_text(_req(rm, 0, "resolution verdict"), "resolution verdict")
        next_decision = None if 1 not in rm else _p_text(rm[1], "next decision id")
    if K_ROTATION in m:
        rm = _map(m[K_ROTATION], _R2, "rotation")
        _p_bytes(_req(rm, 0, "rotation public key"), keys.PUBLIC_KEY_SIZE, "rotation public key")
        _p_bytes(_req(rm, 1, "rotation proof"), keys.SIGNATURE_SIZE, "rotation proof")
    if K_RECOVERY in m:
        vm = _map(m[K_RECOVERY], _R3, "recovery")
        _p_uint(_req(vm, 0, "recovery offset"), "recovery offset")
        _p_uint(_req(vm, 1, "recovery length"), "recovery length")
        _p_digest(_req(vm, 2, "recovery digest"), "recovery digest")
    if K_CLOSE in m:
        cm = _map(m[K_CLOSE], _R1, "close")
        _p_uint(_req(cm, 0, "close checkpoints"), "close checkpoints")
    if K_RESOLUTION in m:
        problem = _resolution_problem(kind, _new_resolution(verdict=verdict, next_decision=next_decision))
        if problem:
            raise _fail(problem)
    _p_bytes(_req(m, K_LOG_ID, "log id"), LOG_ID_SIZE, "log id")
    _p_uint(_req(m, K_SEQ, "seq"), "seq")
    _p_digest(m.get(K_PREV), "prev")
    _p_uint(_req(m, K_TIME, "time"), "time")
    return m, kind


def _texts_or_empty(m: dict[int, Any], key: int) -> tuple[str, ...]:
    v = m.get(key)
    return () if v is None else tuple(v)


def _digest_or_none(v: Any) -> bytes | None:
    return None if v is None else v[1]


def _build_receipt(m: dict[int, Any], kind: Kind) -> Receipt:
    """The `Receipt` of a map `_check_payload` accepted (nothing is checked again)."""
    g = m.get
    action = decision = policy = identity = outcome = resolution = rotation = recovery = close = None
    if K_ACTION in m:
        am = m[K_ACTION]
        action = _new_action(tool=am[0], params_digest=am[1][1], params_json=am.get(2), wrapper=am.get(3))
    if K_DECISION in m:
        dm = m[K_DECISION]
        decision = _new_decisioninfo(effect=dm[0], rules=tuple(dm[1]), reason=dm[2], message=dm[3],
                                     params_digest=_digest_or_none(dm.get(4)), params_json=dm.get(5),
                                     approvers=_texts_or_empty(dm, 6), timeout_s=dm.get(7))
    if K_POLICY in m:
        pm = m[K_POLICY]
        policy = _new_policyref(digest=pm[0][1], policy=pm[1], version=pm[2])
    if K_IDENTITY in m:
        im = m[K_IDENTITY]
        identity = _new_identity(principal=im.get(0), agent=im.get(1), service=im.get(2), role=im.get(3),
                                 scopes=_texts_or_empty(im, 4), delegation=_texts_or_empty(im, 5),
                                 assertion_digest=_digest_or_none(im.get(6)))
    if K_OUTCOME in m:
        om = m[K_OUTCOME]
        outcome = _new_outcome(ok=om[0], start_ns=om[2], end_ns=om[3], output_digest=_digest_or_none(om.get(1)),
                               error=om.get(4))
    if K_RESOLUTION in m:
        sm = m[K_RESOLUTION]
        resolution = _new_resolution(verdict=sm[0], next_decision=sm.get(1))
    if K_ROTATION in m:
        rm = m[K_ROTATION]
        rotation = _new_rotation(public_key=rm[0], proof=rm[1])
    if K_RECOVERY in m:
        vm = m[K_RECOVERY]
        recovery = _new_recovery(offset=vm[0], length=vm[1], digest=vm[2][1])
    if K_CLOSE in m:
        close = _new_close(checkpoints=m[K_CLOSE][0])
    record = _new_record(kind=kind, session=g(K_SESSION), action_id=g(K_ACTION_ID), decision_id=g(K_DECISION_ID),
                         action=action, decision=decision, policy=policy, identity=identity,
                         context=_digest_or_none(g(K_CONTEXT)), ref=g(K_REF), outcome=outcome,
                         approver=g(K_APPROVER), resolution=resolution, rotation=rotation, recovery=recovery,
                         close=close, note=g(K_NOTE))
    return _new_receipt(log_id=m[K_LOG_ID], seq=m[K_SEQ], prev=m[K_PREV][1], time_ns=m[K_TIME], record=record,
                        version=VERSION)


def decode_payload(data: bytes) -> Receipt:
    """Parse a receipt payload strictly: deterministic CBOR, known keys only, the fields its kind allows."""
    return _build_receipt(*_check_payload(data))


def _payload_facts(m: dict[int, Any], kind: Kind) -> tuple:
    """`facts` of the record in a checked payload map, without building it."""
    g = m.get
    d = g(K_DECISION)
    s = g(K_RESOLUTION)
    return (kind, g(K_SESSION), g(K_DECISION_ID), g(K_REF), g(K_ACTION_ID), None if d is None else d[0],
            None if s is None else s[0])


# ----------------------------------------------------------------------------- items of a log


@dataclasses.dataclass(frozen=True, slots=True)
class RecordItem:
    """A receipt as it sits in the log, parsed strictly but not yet verified."""

    protected: bytes
    payload: bytes
    signature: bytes
    alg: int
    kid: bytes
    issuer: str
    subject: str
    iat: int
    receipt: Receipt

    def to_be_signed(self) -> bytes:
        return sig_structure(self.protected, self.payload)


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointItem:
    """A checkpoint as it sits in the log: signature over the detached root of leaves 0..tree_size-1."""

    protected: bytes
    signature: bytes
    alg: int
    kid: bytes
    issuer: str
    subject: str
    iat: int
    tree_size: int
    leaf_index: int
    path: tuple[bytes, ...]

    def to_be_signed(self, root: bytes) -> bytes:
        return sig_structure(self.protected, root)


_RECEIPT_LABELS = (cose.HDR_ALG, cose.HDR_KID, cose.HDR_CWT_CLAIMS, cose.HDR_TYP)
_CHECKPOINT_LABELS = (cose.HDR_ALG, cose.HDR_KID, cose.HDR_CWT_CLAIMS, cose.HDR_TYP, cose.HDR_VDS)
_ALGS = (cose.ALG_ED25519, cose.ALG_EDDSA)


def _p_protected(protected: bytes, labels: tuple[int, ...], typ: str, what: str) -> tuple[int, bytes, str, str, int]:
    h = _loads_exact(protected, "protected header")
    if type(h) is not dict:
        raise _fail("protected header must be a map")
    if h.get(cose.HDR_TYP) != typ:
        raise _fail(f"item typ is `{h.get(cose.HDR_TYP)}` where {what} has `{typ}`")
    if tuple(h) != labels:
        raise _fail(f"protected header must have exactly the labels {list(labels)} in that order")
    alg = h[cose.HDR_ALG]
    if type(alg) is not int or alg not in _ALGS:
        raise _fail(f"unsupported alg `{alg!r}`; expected -19 (Ed25519) or -8 (EdDSA)")
    kid = _p_bytes(h[cose.HDR_KID], 32, "kid")
    claims = h[cose.HDR_CWT_CLAIMS]
    if type(claims) is not dict or tuple(claims) != (1, 2, 6):
        raise _fail("cwt claims must be exactly {1: iss, 2: sub, 6: iat}")
    issuer = _p_text(claims[1], "cwt iss")
    subject = _p_text(claims[2], "cwt sub")
    iat = _p_uint(claims[6], "cwt iat")
    if type(h.get(cose.HDR_VDS, VDS_RFC9162_SHA256)) is not int or h.get(cose.HDR_VDS, 1) != VDS_RFC9162_SHA256:
        raise _fail("checkpoint vds is not 1 (RFC9162_SHA256)")
    return alg, kid, issuer, subject, iat


def _bstr_at(data: bytes, pos: int) -> tuple[int, int]:
    """(start, end) of the byte string whose head is at *pos*, if that head is a shortest one; else IndexError."""
    b = data[pos]
    if 0x40 <= b < 0x58:
        return pos + 1, pos + 1 + b - 0x40
    if b == 0x58 and data[pos + 1] >= 24:
        return pos + 2, pos + 2 + data[pos + 1]
    if b == 0x59:
        n = int.from_bytes(data[pos + 1:pos + 3], "big")
        if n >= 0x100:
            return pos + 3, pos + 3 + n
    elif b == 0x5A:
        n = int.from_bytes(data[pos + 1:pos + 5], "big")
        if n >= 0x10000:
            return pos + 5, pos + 5 + n
    elif b == 0x5B:
        n = int.from_bytes(data[pos + 1:pos + 9], "big")
        if n >= 0x100000000:
            return pos + 9, pos + 9 + n
    raise IndexError(pos)


def _receipt_envelope(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(protected, payload, signature) when *data* is exactly ``18([protected, {}, payload, signature])``
    with shortest heads — the only encoding of a receipt `parse_item` accepts; None for anything else."""
    if data[:2] != _SIGN1_HEAD:
        return None
    try:
        ps, pe = _bstr_at(data, 2)
        if data[pe] != 0xA0:
            return None
        ys, ye = _bstr_at(data, pe + 1)
    except IndexError:
        return None
    if len(data) != ye + 2 + keys.SIGNATURE_SIZE or data[ye:ye + 2] != _SIG_HEAD:
        return None
    return data[ps:pe], data[ys:ye], data[ye + 2:]


# protected header bytes -> (alg, kid, issuer, subject, iat): a function of the bytes alone, and the records
# of one session within one second share them.
_PROTECTED: dict[bytes, tuple[int, bytes, str, str, int]] = {}


def _receipt_protected(protected: bytes) -> tuple[int, bytes, str, str, int]:
    got = _PROTECTED.get(protected)
    if got is None:
        got = _p_protected(protected, _RECEIPT_LABELS, cose.TYP_RECEIPT, "a receipt")
        if len(_PROTECTED) >= 4096:
            _PROTECTED.clear()
        _PROTECTED[protected] = got
    return got


def scan_receipt(data: bytes) -> tuple[bytes, bytes, bytes, tuple[int, bytes, str, str, int], dict[int, Any],
                                       Kind] | None:
    """Check a receipt item as strictly as `parse_item`, building no objects (what the verifier needs).

    Returns ``(protected, payload, signature, (alg, kid, issuer, subject, iat), payload map, kind)``, or None
    when *data* is not a receipt in the exact layout (`parse_item` then says what it is, or what is wrong).
    Raises `ReceiptFormatError` for a receipt whose header or payload is wrong.
    """
    envelope = _receipt_envelope(data)
    if envelope is None:
        return None
    protected, payload, signature = envelope
    header = _receipt_protected(protected)
    m, kind = _check_payload(payload)
    subject = m.get(K_SESSION)
    if subject is None:
        subject = m[K_LOG_ID].hex()
    if header[3] != subject:
        raise _fail(f"cwt sub `{header[3]}` is not the record's `{subject}`")
    if header[4] != m[K_TIME] // 1_000_000_000:
        raise _fail("cwt iat is not the record's time in seconds")
    return protected, payload, signature, header, m, kind


def parse_item(data: bytes) -> RecordItem | CheckpointItem:
    """Parse one item of a log (a receipt or a checkpoint) strictly, without checking any signature.

    Raises `ReceiptFormatError` for anything but aarmc's exact layout, with
    ``typ`` naming either a receipt or a checkpoint.
    """
    scan = scan_receipt(data)
    if scan is not None:
        protected, payload, signature, (alg, kid, issuer, subject, iat), m, kind = scan
        return RecordItem(protected=protected, payload=payload, signature=signature, alg=alg, kid=kid,
                          issuer=issuer, subject=subject, iat=iat, receipt=_build_receipt(m, kind))
    try:
        item = cbor2.loads(data)
    except Exception as exc:  # noqa: BLE001 - hostile input
        raise _fail(f"item is not well-formed cbor: {exc}") from None
    if type(item) is not cbor2.CBORTag or item.tag != cose.COSE_SIGN1_TAG:
        raise _fail(f"item is not a tagged cose_sign1 (tag {cose.COSE_SIGN1_TAG})")
    body = item.value
    if type(body) not in (list, tuple) or len(body) != 4:
        raise _fail("cose_sign1 must be an array of 4 items")
    protected, unprotected, payload, signature = body
    if type(protected) is not bytes or type(signature) is not bytes or len(signature) != keys.SIGNATURE_SIZE:
        raise _fail("cose_sign1 protected header or signature has the wrong type or size")
    if type(payload) is bytes:
        # Not in the exact layout `scan_receipt` takes: say what differs.
        if unprotected != {}:
            raise _fail("a receipt's unprotected header must be empty")
        raise _fail("receipt is not deterministic cbor (rfc 8949 §4.2.1)")
    if payload is not None:
        raise _fail("cose_sign1 payload must be a byte string or nil")
    try:
        unprotected_bytes = dcbor.encode(unprotected)
    except dcbor.EncodingError as exc:
        raise _fail(f"checkpoint unprotected header: {exc}") from None
    expected = b"".join((_SIGN1_HEAD, _bstr_head(len(protected)), protected, unprotected_bytes, _NIL, _SIG_HEAD,
                         signature))
    if expected != data:
        raise _fail("checkpoint is not deterministic cbor (rfc 8949 §4.2.1)")
    alg, kid, issuer, subject, iat = _p_protected(protected, _CHECKPOINT_LABELS, cose.TYP_CHECKPOINT,
                                                  "a checkpoint")
    # Inside a tag cbor2 hands out cbor2.frozendict and tuples.
    if not isinstance(unprotected, Mapping) or list(unprotected) != [cose.HDR_VDP]:
        raise _fail("checkpoint unprotected header must be exactly {396: vdp}")
    vdp = unprotected[cose.HDR_VDP]
    if not isinstance(vdp, Mapping) or list(vdp) != [VDP_INCLUSION]:
        raise _fail("checkpoint vdp must be exactly {-1: [inclusion proof]}")
    proofs = vdp[VDP_INCLUSION]
    if type(proofs) not in (list, tuple) or len(proofs) != 1 or type(proofs[0]) is not bytes:
        raise _fail("checkpoint must carry exactly one inclusion proof")
    try:
        proof = dcbor.decode_strict(proofs[0])
    except dcbor.EncodingError as exc:
        raise _fail(f"checkpoint inclusion proof: {exc}") from None
    if not isinstance(proof, list) or len(proof) != 3 or not isinstance(proof[2], list):
        raise _fail("checkpoint inclusion proof must be [tree_size, leaf_index, [hash...]]")
    tree_size = _p_uint(proof[0], "checkpoint tree size")
    leaf_index = _p_uint(proof[1], "checkpoint leaf index")
    path = tuple(_p_bytes(p, merkle.HASH_SIZE, "inclusion path hash") for p in proof[2])
    return CheckpointItem(protected=protected, signature=signature, alg=alg, kid=kid, issuer=issuer,
                          subject=subject, iat=iat, tree_size=tree_size, leaf_index=leaf_index, path=path)


@dataclasses.dataclass(frozen=True, slots=True)
class Tail:
    """Bytes after the last complete item. ``torn``: a write cut short (a prefix of one item, or zero fill)."""

    offset: int
    length: int
    torn: bool
    message: str


def split_items(data: bytes, *, final: bool = True, base: int = 0) -> tuple[list[tuple[int, int]], Tail | None]:
    """Cut an RFC 8742 CBOR sequence into ``(start, end)`` spans of complete items.

    Returns the spans and what follows the last complete item, if anything: a
    torn tail (an item that runs past the end of the data and hides no
    complete item, or a run of zero bytes as a crashed file system leaves), or
    malformed bytes (``torn=False``) after which no boundary can be trusted.

    *data* may be a window of a longer log that starts at byte *base* of it:
    spans are offsets in *data*, a tail's offset and message are the log's.
    With ``final=False`` more of the log follows the window, so an item that
    runs past its end, or zero bytes up to its end, are not judged: the tail
    is then ``torn`` with the message ``"incomplete"``, and the next window
    starts at its offset.
    """
    data = bytes(data)
    n = len(data)
    fp = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(fp)
    spans: list[tuple[int, int]] = []
    start = 0
    while start < n:
        if data[start] == 0 and not data[start:].strip(b"\x00"):
            if not final:
                return spans, Tail(base + start, n - start, True, "incomplete")
            return spans, Tail(base + start, n - start, True, f"{n - start} zero byte(s) at the end of the log")
        try:
            decoder.decode()
        except cbor2.CBORDecodeEOF:
            if not final:
                return spans, Tail(base + start, n - start, True, "incomplete")
            return spans, _torn_or_hiding(data, start, base)
        except Exception as exc:  # noqa: BLE001 - hostile input
            return spans, Tail(base + start, n - start, False, f"malformed cbor at offset {base + start}: {exc}")
        end = fp.tell()
        spans.append((start, end))
        start = end
    return spans, None


def read_windows(read: Callable[[int, int], bytes], size: int, window: int
                 ) -> Iterator[tuple[int, bytes, list[tuple[int, int]], Tail | None]]:
    """A CBOR sequence of *size* bytes, read with ``read(offset, n)`` about *window* bytes at a time.

    Yields ``(base, data, spans, tail)`` in order: *data* starts at byte *base*
    of the sequence, *spans* are its complete items (offsets in *data*, as
    `split_items`); *tail* is what follows the last complete item of the
    sequence (last window only), or malformed bytes (then no window follows).
    An item cut by a window's end starts the next window; an item longer than
    a window gets a larger one. A short read means the sequence ends there.
    """
    base = 0
    size_now = window
    while True:
        want = min(size_now, size - base)
        data = read(base, want)
        final = base + len(data) >= size or len(data) < want
        spans, tail = split_items(data, final=final, base=base)
        if final or (tail is not None and not tail.torn):
            yield base, data, spans, tail
            return
        carry = len(data) if tail is None else tail.offset - base
        if spans:
            yield base, data, spans, None
        size_now = window if carry else size_now * 2
        base += carry


def _torn_or_hiding(data: bytes, start: int, base: int = 0) -> Tail:
    n = len(data)
    # A write cut short is a prefix of one item. An item that only *seems*
    # cut short because a length was altered swallows the items after it:
    # find one and this is tampering, not a crash.
    at = data.find(_SIGN1_HEAD, start + 1)
    while at != -1:
        fp = io.BytesIO(data[at:])
        try:
            cbor2.CBORDecoder(fp).decode()
            parse_item(data[at:at + fp.tell()])
        except Exception:  # noqa: BLE001 - not an item; keep looking
            pass
        else:
            return Tail(base + start, n - start, False,
                        f"the item at offset {base + start} runs past the end of the log, over a complete item at "
                        f"offset {base + at}")
        at = data.find(_SIGN1_HEAD, at + 1)
    return Tail(base + start, n - start, True, f"the last {n - start} byte(s) are an incomplete item (a torn write)")


# ----------------------------------------------------------------------------- state machine


def facts(record: Record) -> tuple:
    """What the state machine reads from a record: (kind, session, decision id, ref, action id, effect, verdict)."""
    return (record.kind, record.session, record.decision_id, record.ref, record.action_id,
            None if record.decision is None else record.decision.effect,
            None if record.resolution is None else record.resolution.verdict)


class _Recent:
    """The last *size* keys added (with a value each), the oldest dropped first: a dict and a ring of keys,
    O(1) per operation (deleting a dict's oldest key would make finding the next oldest ever slower)."""

    __slots__ = ("_at", "_map", "_ring", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._map: dict[str, Any] = {}
        self._ring: list[str] = []
        self._at = 0

    def add(self, key: str, value: Any) -> None:
        if self._size == 0:
            return
        if len(self._ring) < self._size:
            self._ring.append(key)
        else:
            self._map.pop(self._ring[self._at], None)
            self._ring[self._at] = key
            self._at = (self._at + 1) % self._size
        self._map[key] = value

    def get(self, key: Any) -> Any:
        return self._map.get(key)

    def __contains__(self, key: Any) -> bool:
        return key in self._map

    def __len__(self) -> int:
        return len(self._map)


# Stands for the action id of a finished decision in the verifier's state machine (`StateMachine._finish`).
_ACTION_DROPPED = object()


class StateMachine:
    """The documented order of record kinds (module docstring), applied record by record.

    `check` raises `StateError` without changing anything; `apply` checks,
    then records the effect. The writer runs it before signing, the verifier
    on what it reads, so a writer bug cannot produce a log that fails to verify.
    Both take a `Record` or its `facts` tuple (what crosses process boundaries
    in the parallel verifier).

    Memory. A decision is *finished* once no record may follow it (a deny; an
    allow or modify with its outcome; a step-up rejected, timed out or
    cancelled, or approved and run; a resolved defer), a session once it has
    ended. With ``remember=None`` (the verifier) every finished decision and
    ended session is remembered for the life of the machine, so a reused id
    anywhere in a log is caught. With ``remember=N`` (the log writer, whose
    process may run for months) only the *N* most recently finished decisions
    and the *N* most recently ended sessions are, and memory stays bounded by
    what is open plus *N* of each: a record that refers to an older finished
    decision is still refused (as one no earlier record made), but a
    decision or session-start that *reuses* an id forgotten that way is not
    caught by the writer — the verifier, which forgets nothing, reports it.
    The guard never reuses an id (a random prefix per process and a counter).
    """

    __slots__ = ("_shapes", "closed", "decisions", "ended", "finished", "records", "remember", "sessions")

    def __init__(self, remember: int | None = None) -> None:
        if remember is not None and (type(remember) is not int or remember < 0):
            raise ValueError(f"remember must be a non-negative int or None, got `{remember!r}`")
        self.records = 0
        self.closed = False
        self.remember = remember
        self.sessions: dict[str, bool] = {}  # session -> ended (with `remember`, open sessions only)
        # decision id -> [session, effect, action id, approval verdict, resolved, outcome seen]: with
        # `remember`, the decisions that may still be followed by a record; else all of them.
        self.decisions: dict[str, list[Any]] = {}
        # With `remember`: the most recently finished decisions and ended sessions.
        self.finished = _Recent(remember or 0)
        self.ended = _Recent(remember or 0)
        # Without `remember`: a finished decision keeps only a tuple shared by every finished decision of its
        # session with the same ending, so what a long log costs the verifier is about its decision ids.
        self._shapes: dict[tuple, tuple] = {}

    def _decision(self, ref: str | None) -> list[Any] | None:
        d = self.decisions.get(ref)  # type: ignore[arg-type]
        if d is None and self.remember:
            d = self.finished.get(ref)
        return d

    def _finish(self, decision_id: str) -> None:
        if self.remember is None:
            # No record may follow a finished decision, whatever action it names (each kind's own check
            # refuses it: see `check`), so its action id is dropped and the rest shared.
            d = self.decisions[decision_id]
            shape = (d[0], d[1], _ACTION_DROPPED, d[3], d[4], d[5])
            self.decisions[decision_id] = self._shapes.setdefault(shape, shape)
            return
        self.finished.add(decision_id, self.decisions.pop(decision_id))

    def check(self, record: Record | tuple) -> None:
        kind, session, decision_id, ref, action_id, _, _ = record if type(record) is tuple else facts(record)
        if self.closed:
            raise StateError(f"{Kind(kind).label} record after log-close")
        if (kind == _LOG_OPEN) != (self.records == 0):
            raise StateError("log-open must be the first record and only the first")
        if kind == _DECISION:
            ended = self.sessions.get(session)
            if ended is None:
                if session in self.ended:
                    raise StateError(f"decision `{decision_id}` after session `{session}` ended")
                raise StateError(f"decision `{decision_id}` in session `{session}` before its session-start")
            if ended:
                raise StateError(f"decision `{decision_id}` after session `{session}` ended")
            if decision_id in self.decisions or decision_id in self.finished:
                raise StateError(f"decision id `{decision_id}` has a second decision record")
        elif kind == _OUTCOME or kind == _APPROVAL or kind == _DEFERRAL_RESOLUTION:
            d = self._decision(ref)
            if d is None:
                raise StateError(f"{Kind(kind).label} refers to decision `{ref}`, which no earlier record made")
            if d[0] != session:
                raise StateError(f"{Kind(kind).label} for decision `{ref}` is in session `{session}`, the decision "
                                 f"in `{d[0]}`")
            if action_id is not None and d[2] is not _ACTION_DROPPED and action_id != d[2]:
                raise StateError(f"{Kind(kind).label} for decision `{ref}` names action `{action_id}`, the decision "
                                 f"`{d[2]}`")
            if kind == _APPROVAL:
                if d[1] != STEP_UP:
                    raise StateError(f"approval for decision `{ref}`, a {d[1]}, not a step_up")
                if d[3] is not None:
                    raise StateError(f"decision `{ref}` is approved or rejected twice")
            elif kind == _DEFERRAL_RESOLUTION:
                if d[1] != DEFER:
                    raise StateError(f"deferral resolution for decision `{ref}`, a {d[1]}, not a defer")
                if d[4]:
                    raise StateError(f"deferral `{ref}` is resolved twice")
            else:
                if d[5]:
                    raise StateError(f"decision `{ref}` has a second outcome")
                if not (d[1] in (ALLOW, MODIFY) or (d[1] == STEP_UP and d[3] == "approved")):
                    why = "was not approved" if d[1] == STEP_UP else f"is a {d[1]}"
                    raise StateError(f"outcome for decision `{ref}`, which {why} and cannot execute")
        elif kind == _SESSION_START:
            if session in self.sessions or session in self.ended:
                raise StateError(f"session `{session}` is started twice")
        elif kind == _SESSION_END:
            ended = self.sessions.get(session)
            if ended is None:
                if session in self.ended:
                    raise StateError(f"session `{session}` ends twice")
                raise StateError(f"session-end for session `{session}` that never started")
            if ended:
                raise StateError(f"session `{session}` ends twice")

    def apply(self, record: Record | tuple) -> None:
        f = record if type(record) is tuple else facts(record)
        self.check(f)
        self.commit(f)

    def commit(self, f: tuple) -> None:
        """Record the effect of a `facts` tuple that `check` has accepted (the writer checks before it signs)."""
        kind, session, decision_id, ref, action_id, effect, verdict = f
        self.records += 1
        if kind == _DECISION:
            self.decisions[decision_id] = [session, effect, action_id, None, False, False]
            if effect == DENY:
                self._finish(decision_id)
        elif kind == _OUTCOME:
            self.decisions[ref][5] = True
            self._finish(ref)
        elif kind == _SESSION_START:
            self.sessions[session] = False
        elif kind == _SESSION_END:
            if self.remember is None:
                self.sessions[session] = True
            else:
                del self.sessions[session]
                self.ended.add(session, True)
        elif kind == _APPROVAL:
            self.decisions[ref][3] = verdict
            if verdict != "approved":
                self._finish(ref)
        elif kind == _DEFERRAL_RESOLUTION:
            self.decisions[ref][4] = True
            self._finish(ref)
        elif kind == _LOG_CLOSE:
            self.closed = True
