"""Signed identity assertions (AARM R6): CWTs (RFC 8392) in COSE_Sign1 with Ed25519.

An identity assertion says, under a trusted issuer's key, who is behind an
action: the human principal, the agent acting for them, the service, the
session, a role, scopes and the delegation chain from principal to agent.
It is a CWT: a COSE_Sign1 (`cose.sign1`, protected ``typ`` =
`TYP_IDENTITY`) whose payload is the deterministic CBOR claims set below.

Claims (integer keys; ``*`` = required)::

    1 iss*  text     issuer name; selects the keys trusted for it
    2 sub*  text     the human principal
    3 aud   text     intended audience (a verifier with no audience refuses it)
    4 exp*  uint     expiry, NumericDate seconds; valid while now < exp + skew
    5 nbf   uint     not before; valid once now >= nbf - skew
    6 iat*  uint     issued at; must not lie beyond now + skew
    7 cti*  bytes    unique token id (1..64 bytes): the handle for revocation
   -1 agent        text
   -2 service      text
   -3 session      text
   -4 role         text
   -5 scopes       [text]           each scope once
   -6 delegation   [{1 from: text, 2 to: text, 3 scopes: [text]}]

A delegation chain starts at the principal, each link starts where the
previous one ended, no link carries a scope its predecessor lacks, the chain
ends at the agent (when there is one) and the token's own scopes fit within
the last link. Claims this module does not know are refused, not ignored:
an unknown claim may restrict the token (``cnf`` does), and ignoring a
restriction widens it.

`IdentityVerifier.verify` raises an `IdentityError` subclass for every
refusal; it never returns a bool. docs/identity.md has the rationale (why CWT
and COSE rather than JWT), the revocation file format and how the runtime
re-verifies at each decision.

>>> issuer = SigningKey.from_seed(bytes(range(32)))
>>> token = issue_identity(
...     Identity(issuer="idp.corp", principal="alice", agent="mail-bot", scopes=("mail",),
...              delegation=(Delegation(from_="alice", to="mail-bot", scopes=("mail",)),),
...              cti=bytes(16)),
...     issuer, ttl_s=600, now=1_800_000_000)
>>> verifier = IdentityVerifier({"idp.corp": issuer.verify_key}, RevocationList())
>>> verifier.verify(token, now=1_800_000_100).to_session_identity()["delegation"]
[{'from': 'alice', 'to': 'mail-bot', 'scopes': ['mail']}]
>>> verifier.verify(token, now=1_800_000_630)
Traceback (most recent call last):
...
aarm_runtime.identity.ExpiredIdentityError: identity expired at 1800000600 (now 1800000630, clock skew 30 s)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from aarm_runtime import cose, dcbor, values
from aarm_runtime.keys import SigningKey, VerifyKey

__all__ = [
    "AudienceMismatchError",
    "BadIdentitySignatureError",
    "CLAIM_AGENT",
    "CLAIM_AUD",
    "CLAIM_CTI",
    "CLAIM_DELEGATION",
    "CLAIM_EXP",
    "CLAIM_IAT",
    "CLAIM_ISS",
    "CLAIM_NBF",
    "CLAIM_ROLE",
    "CLAIM_SCOPES",
    "CLAIM_SERVICE",
    "CLAIM_SESSION",
    "CLAIM_SUB",
    "DelegationError",
    "Delegation",
    "ExpiredIdentityError",
    "Identity",
    "IdentityError",
    "IdentityNotYetValidError",
    "IdentityVerifier",
    "LifetimeTooLongError",
    "MAX_TOKEN_SIZE",
    "MalformedIdentityError",
    "MissingClaimError",
    "RevocationFileError",
    "RevocationList",
    "RevokedIdentityError",
    "TYP_IDENTITY",
    "UntrustedIssuerError",
    "VerifiedIdentity",
    "WrongTokenTypeError",
    "issue_identity",
]

TYP_IDENTITY = "application/aarm-identity+cwt"

# RFC 8392 §3.1 registered claims.
CLAIM_ISS = 1
CLAIM_SUB = 2
CLAIM_AUD = 3
CLAIM_EXP = 4
CLAIM_NBF = 5
CLAIM_IAT = 6
CLAIM_CTI = 7
# aarm claims. Small negative keys encode in one byte and keep every signed map
# within the -24..23 key range RECEIPTS.md asks for; the protected typ scopes
# their meaning to aarm identity tokens (docs/identity.md, "claim keys").
CLAIM_AGENT = -1
CLAIM_SERVICE = -2
CLAIM_SESSION = -3
CLAIM_ROLE = -4
CLAIM_SCOPES = -5
CLAIM_DELEGATION = -6
# Keys of one delegation link.
_LINK_FROM = 1
_LINK_TO = 2
_LINK_SCOPES = 3

#: Tokens above this size are refused before any parsing: an identity is a
#: few hundred bytes, and the bound caps the work an attacker can ask for.
MAX_TOKEN_SIZE = 16 * 1024

_CTI_SIZE = 16
_MAX_CTI = 64
_TEXT_CLAIMS = {
    CLAIM_AGENT: "agent",
    CLAIM_SERVICE: "service",
    CLAIM_SESSION: "session",
    CLAIM_ROLE: "role",
}
_NAMES = {
    CLAIM_ISS: "iss",
    CLAIM_SUB: "sub",
    CLAIM_AUD: "aud",
    CLAIM_EXP: "exp",
    CLAIM_NBF: "nbf",
    CLAIM_IAT: "iat",
    CLAIM_CTI: "cti",
    **_TEXT_CLAIMS,
    CLAIM_SCOPES: "scopes",
    CLAIM_DELEGATION: "delegation",
}
_REQUIRED = (CLAIM_ISS, CLAIM_SUB, CLAIM_EXP, CLAIM_IAT, CLAIM_CTI)
_LINK_KEYS = frozenset({_LINK_FROM, _LINK_TO, _LINK_SCOPES})


# --------------------------------------------------------------------------- errors


class IdentityError(Exception):
    """An identity assertion was refused; `reason` is a stable code for receipts and logs."""

    reason: ClassVar[str] = "identity-invalid"


class MalformedIdentityError(IdentityError):
    """Not a strictly encoded aarm identity CWT: bad CBOR, bad shape, bad claim types, unknown claims."""

    reason = "identity-malformed"


class WrongTokenTypeError(IdentityError):
    """A COSE_Sign1 of another kind (a receipt, a policy) offered as an identity."""

    reason = "identity-wrong-type"


class UntrustedIssuerError(IdentityError):
    """The signing key is unknown, the issuer is unknown, or the key is not trusted for that issuer."""

    reason = "identity-untrusted-issuer"


class BadIdentitySignatureError(IdentityError):
    """The signature does not verify under the key its kid names."""

    reason = "identity-bad-signature"


class ExpiredIdentityError(IdentityError):
    reason = "identity-expired"


class IdentityNotYetValidError(IdentityError):
    """``nbf`` or ``iat`` lies in the future, beyond the clock skew."""

    reason = "identity-not-yet-valid"


class LifetimeTooLongError(IdentityError):
    """``exp - iat`` exceeds the verifier's ``max_ttl_s``."""

    reason = "identity-lifetime-too-long"


class RevokedIdentityError(IdentityError):
    """The token's cti or its subject is on the revocation list; `by` is ``"cti"`` or ``"subject"``."""

    reason = "identity-revoked"

    def __init__(self, message: str, *, by: str) -> None:
        super().__init__(message)
        self.by = by


class AudienceMismatchError(IdentityError):
    reason = "identity-audience-mismatch"


class MissingClaimError(IdentityError):
    """A required claim is absent; `claim` names it."""

    reason = "identity-missing-claim"

    def __init__(self, message: str, *, claim: str) -> None:
        super().__init__(message)
        self.claim = claim


class DelegationError(IdentityError):
    """The delegation chain does not start at the principal, is broken, or widens scopes."""

    reason = "identity-bad-delegation"


class RevocationFileError(ValueError):
    """A revocation list file cannot be read or is not in the documented format."""


# --------------------------------------------------------------------------- records


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got `{type(value).__name__}`")
    if not value:
        raise ValueError(f"{what} must not be empty")
    return value


def _scope_tuple(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be a sequence of strings, got `{type(value).__name__}`")
    out = tuple(_text(s, f"{what} entry") for s in value)
    if len(set(out)) != len(out):
        raise ValueError(f"{what} lists a scope more than once")
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Delegation:
    """One link of a delegation chain: `from_` grants `to` the `scopes`."""

    from_: str
    to: str
    scopes: tuple[str, ...]

    def __post_init__(self) -> None:
        _text(self.from_, "delegation from")
        _text(self.to, "delegation to")
        object.__setattr__(self, "scopes", _scope_tuple(self.scopes, "delegation scopes"))

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_, "to": self.to, "scopes": list(self.scopes)}


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """The claims an issuer asserts; times and the token id are set by `issue_identity`.

    ``None`` leaves a claim out (the field is then unknown to policies), which
    is not the same as an empty scope list or an empty delegation chain.
    ``cti=None`` draws 16 random bytes.
    """

    issuer: str
    principal: str
    agent: str | None = None
    service: str | None = None
    session: str | None = None
    role: str | None = None
    scopes: tuple[str, ...] | None = None
    delegation: tuple[Delegation, ...] | None = None
    audience: str | None = None
    cti: bytes | None = None

    def __post_init__(self) -> None:
        _text(self.issuer, "issuer")
        _text(self.principal, "principal")
        for name in ("agent", "service", "session", "role", "audience"):
            if getattr(self, name) is not None:
                _text(getattr(self, name), name)
        if self.scopes is not None:
            object.__setattr__(self, "scopes", _scope_tuple(self.scopes, "scopes"))
        if self.delegation is not None:
            if isinstance(self.delegation, (str, bytes)) or not isinstance(self.delegation, Iterable):
                raise TypeError("delegation must be a sequence of `Delegation`")
            chain = tuple(self.delegation)
            for link in chain:
                if not isinstance(link, Delegation):
                    raise TypeError(f"delegation link must be a `Delegation`, got `{type(link).__name__}`")
            object.__setattr__(self, "delegation", chain)
        if self.cti is not None:
            if not isinstance(self.cti, bytes):
                raise TypeError(f"cti must be bytes, got `{type(self.cti).__name__}`")
            if not 1 <= len(self.cti) <= _MAX_CTI:
                raise ValueError(f"cti must be 1 to {_MAX_CTI} bytes, got {len(self.cti)}")


@dataclasses.dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    """An identity whose token verified; frozen, so what was bound at submission cannot drift.

    `token` holds the exact bytes received, so the runtime can re-verify the
    same assertion at every later decision (`IdentityVerifier.reverify`).
    `token_sha256` is SHA-256 over those bytes; `token_digest` is its
    RFC 9054 ``[-16, hash]`` form for receipts.
    """

    issuer: str
    principal: str
    agent: str | None
    service: str | None
    session: str | None
    role: str | None
    scopes: tuple[str, ...] | None
    delegation: tuple[Delegation, ...] | None
    audience: str | None
    issued_at: int
    not_before: int | None
    expires_at: int
    cti: bytes
    kid: bytes
    token_sha256: bytes
    token: bytes = dataclasses.field(repr=False)

    @property
    def token_digest(self) -> list[Any]:
        return [-16, self.token_sha256]

    def to_session_identity(self) -> dict[str, Any]:
        """The LANGUAGE.md §7 ``identity`` object; claims the token lacks are left out (unknown)."""
        out: dict[str, Any] = {"principal": self.principal}
        for name in ("agent", "service", "session", "role"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.scopes is not None:
            out["scopes"] = list(self.scopes)
        if self.delegation is not None:
            out["delegation"] = [link.to_json() for link in self.delegation]
        return out


# --------------------------------------------------------------------------- delegation


def _delegation_problem(
    principal: str, agent: str | None, scopes: tuple[str, ...] | None, chain: tuple[Delegation, ...]
) -> str | None:
    if not chain:
        return None
    if chain[0].from_ != principal:
        return f"delegation chain starts at `{chain[0].from_}`, not at the principal `{principal}`"
    for i in range(1, len(chain)):
        prev, link = chain[i - 1], chain[i]
        if link.from_ != prev.to:
            return f"delegation link {i} starts at `{link.from_}` but link {i - 1} ended at `{prev.to}`"
        wider = sorted(set(link.scopes) - set(prev.scopes))
        if wider:
            return f"delegation link {i} widens scopes with {_listing(wider)} not granted by link {i - 1}"
    if agent is not None and chain[-1].to != agent:
        return f"delegation chain ends at `{chain[-1].to}`, not at the agent `{agent}`"
    if scopes is not None:
        wider = sorted(set(scopes) - set(chain[-1].scopes))
        if wider:
            return f"identity scopes {_listing(wider)} exceed what the delegation chain grants"
    return None


def _listing(items: Iterable[str]) -> str:
    return ", ".join(f"`{s}`" for s in items)


# --------------------------------------------------------------------------- issue


def _now(now: float | int | None, what: str) -> float | int:
    if now is None:
        return time.time()
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise TypeError(f"{what} must be a finite number of seconds since the epoch")
    return now


def issue_identity(claims: Identity, key: SigningKey, *, ttl_s: int, now: float | int | None = None) -> bytes:
    """Sign *claims* as an aarm identity CWT valid from *now* for *ttl_s* seconds.

    ``iat`` and ``nbf`` are *now* rounded down to whole seconds (CWT times are
    integers), ``exp`` is ``iat + ttl_s``. Refuses (`ValueError`) a delegation
    chain the verifier would refuse, so an issuer cannot mint a token that no
    verifier accepts.
    """
    if not isinstance(claims, Identity):
        raise TypeError(f"claims must be an `Identity`, got `{type(claims).__name__}`")
    if not isinstance(key, SigningKey):
        raise TypeError(f"key must be a `SigningKey`, got `{type(key).__name__}`")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive integer number of seconds, got `{ttl_s!r}`")
    issued = math.floor(_now(now, "now"))
    if issued < 0:
        raise ValueError("now must not be before the epoch")
    problem = _delegation_problem(claims.principal, claims.agent, claims.scopes, claims.delegation or ())
    if problem is not None:
        raise ValueError(problem)
    payload: dict[int, Any] = {
        CLAIM_ISS: claims.issuer,
        CLAIM_SUB: claims.principal,
        CLAIM_EXP: issued + ttl_s,
        CLAIM_NBF: issued,
        CLAIM_IAT: issued,
        CLAIM_CTI: claims.cti if claims.cti is not None else os.urandom(_CTI_SIZE),
    }
    if claims.audience is not None:
        payload[CLAIM_AUD] = claims.audience
    for label, name in _TEXT_CLAIMS.items():
        value = getattr(claims, name)
        if value is not None:
            payload[label] = value
    if claims.scopes is not None:
        payload[CLAIM_SCOPES] = list(claims.scopes)
    if claims.delegation is not None:
        payload[CLAIM_DELEGATION] = [
            {_LINK_FROM: link.from_, _LINK_TO: link.to, _LINK_SCOPES: list(link.scopes)} for link in claims.delegation
        ]
    try:
        encoded = dcbor.encode(payload)
    except dcbor.EncodingError as exc:
        raise ValueError(f"identity claims cannot be encoded: {exc}") from None
    token = cose.sign1(encoded, key, typ=TYP_IDENTITY)
    if len(token) > MAX_TOKEN_SIZE:
        raise ValueError(f"identity token is {len(token)} bytes; verifiers refuse more than {MAX_TOKEN_SIZE}")
    return token


# --------------------------------------------------------------------------- parse claims


def _claim_text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise MalformedIdentityError(f"claim `{name}` must be a text string")
    if not value:
        raise MalformedIdentityError(f"claim `{name}` must not be empty")
    try:
        values.check_string(value, name)
    except values.InvalidValue as exc:
        # The policy language could not represent it; refuse here rather than
        # let the context turn it into an evaluation error later.
        raise MalformedIdentityError(f"claim `{name}`: {exc.message}") from None
    return value


def _claim_scopes(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise MalformedIdentityError(f"claim `{name}` must be an array of text strings")
    out = tuple(_claim_text(s, f"{name}[{i}]") for i, s in enumerate(value))
    if len(set(out)) != len(out):
        raise MalformedIdentityError(f"claim `{name}` lists a scope more than once")
    return out


def _claim_time(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedIdentityError(f"claim `{name}` must be a non-negative integer NumericDate")
    return value


def _claim_delegation(value: Any) -> tuple[Delegation, ...]:
    if not isinstance(value, list):
        raise MalformedIdentityError("claim `delegation` must be an array of links")
    chain = []
    for i, link in enumerate(value):
        where = f"delegation[{i}]"
        if not isinstance(link, dict) or link.keys() != _LINK_KEYS:
            raise MalformedIdentityError(
                f"claim `{where}` must be a map with exactly the keys 1 (from), 2 (to), 3 (scopes)"
            )
        chain.append(
            Delegation(
                from_=_claim_text(link[_LINK_FROM], f"{where}.from"),
                to=_claim_text(link[_LINK_TO], f"{where}.to"),
                scopes=_claim_scopes(link[_LINK_SCOPES], f"{where}.scopes"),
            )
        )
    return tuple(chain)


def _parse_claims(payload: bytes) -> dict[int, Any]:
    try:
        raw = dcbor.decode_strict(payload)
    except dcbor.EncodingError as exc:
        raise MalformedIdentityError(f"claims set is not deterministic cbor: {exc}") from None
    if not isinstance(raw, dict):
        raise MalformedIdentityError("claims set must be a cbor map")
    unknown = [k for k in raw if k not in _NAMES]
    if unknown:
        # An unknown claim may narrow the token (`cnf` binds it to a key);
        # ignoring it would silently widen what the token allows.
        raise MalformedIdentityError(f"unknown claim key(s) {_listing(str(k) for k in unknown)}")
    out: dict[int, Any] = {}
    for label, value in raw.items():
        name = _NAMES[label]
        if label in (CLAIM_ISS, CLAIM_SUB, CLAIM_AUD) or label in _TEXT_CLAIMS:
            out[label] = _claim_text(value, name)
        elif label in (CLAIM_EXP, CLAIM_NBF, CLAIM_IAT):
            out[label] = _claim_time(value, name)
        elif label == CLAIM_CTI:
            if not isinstance(value, bytes) or not 1 <= len(value) <= _MAX_CTI:
                raise MalformedIdentityError(f"claim `cti` must be a byte string of 1 to {_MAX_CTI} bytes")
            out[label] = value
        elif label == CLAIM_SCOPES:
            out[label] = _claim_scopes(value, name)
        else:
            out[label] = _claim_delegation(value)
    for label in _REQUIRED:
        if label not in out:
            raise MissingClaimError(f"required claim `{_NAMES[label]}` ({label}) is missing", claim=_NAMES[label])
    if out[CLAIM_EXP] <= out[CLAIM_IAT]:
        raise MalformedIdentityError(f"claim `exp` ({out[CLAIM_EXP]}) is not after `iat` ({out[CLAIM_IAT]})")
    if CLAIM_NBF in out and out[CLAIM_EXP] <= out[CLAIM_NBF]:
        raise MalformedIdentityError(f"claim `exp` ({out[CLAIM_EXP]}) is not after `nbf` ({out[CLAIM_NBF]})")
    return out


# --------------------------------------------------------------------------- revocation


class RevocationList:
    """Revoked token ids (cti) and subjects (principals); safe to share between threads.

    File form (JSON, both keys optional, nothing else allowed)::

        {"cti": ["<hex>", ...], "subjects": ["alice", ...]}

    A revoked subject refuses every token whose ``sub`` is that principal,
    including tokens issued later; a revoked cti refuses one token.
    """

    __slots__ = ("_lock", "_ctis", "_subjects")

    def __init__(self, *, ctis: Iterable[bytes] = (), subjects: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._ctis: set[bytes] = set()
        self._subjects: set[str] = set()
        for cti in ctis:
            self._ctis.add(_revocable_cti(cti))
        for subject in subjects:
            self._subjects.add(_text(subject, "revoked subject"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RevocationList:
        ctis, subjects = _read_revocation_file(Path(path))
        return cls(ctis=ctis, subjects=subjects)

    def reload(self, path: str | os.PathLike[str]) -> None:
        """Replace the contents with the file's, all at once; on any error the list is unchanged."""
        ctis, subjects = _read_revocation_file(Path(path))
        with self._lock:
            self._ctis, self._subjects = ctis, subjects

    def revoke(self, *, cti: bytes | None = None, subject: str | None = None) -> None:
        """Revoke a token by its cti, a principal by name, or both."""
        if cti is None and subject is None:
            raise ValueError("revoke needs a cti, a subject or both")
        new_cti = _revocable_cti(cti) if cti is not None else None
        new_subject = _text(subject, "revoked subject") if subject is not None else None
        with self._lock:
            if new_cti is not None:
                self._ctis.add(new_cti)
            if new_subject is not None:
                self._subjects.add(new_subject)

    def revoked_by(self, *, cti: bytes, subject: str) -> str | None:
        """``"cti"`` or ``"subject"`` if either is revoked (cti first), else None."""
        with self._lock:
            if cti in self._ctis:
                return "cti"
            if subject in self._subjects:
                return "subject"
        return None

    def to_json(self) -> dict[str, list[str]]:
        """The file form, sorted, so saved lists diff cleanly."""
        with self._lock:
            return {"cti": sorted(c.hex() for c in self._ctis), "subjects": sorted(self._subjects)}

    def __len__(self) -> int:
        with self._lock:
            return len(self._ctis) + len(self._subjects)


def _revocable_cti(cti: object) -> bytes:
    if not isinstance(cti, bytes):
        raise TypeError(f"cti must be bytes, got `{type(cti).__name__}`")
    if not 1 <= len(cti) <= _MAX_CTI:
        raise ValueError(f"cti must be 1 to {_MAX_CTI} bytes, got {len(cti)}")
    return cti


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise RevocationFileError(f"duplicate key `{k}`")
        out[k] = v
    return out


def _read_revocation_file(path: Path) -> tuple[set[bytes], set[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RevocationFileError(f"cannot read revocation list `{path}`: {exc}") from None
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RevocationFileError as exc:
        raise RevocationFileError(f"revocation list `{path}`: {exc}") from None
    except ValueError as exc:
        raise RevocationFileError(f"revocation list `{path}` is not valid json: {exc}") from None
    if not isinstance(raw, dict):
        raise RevocationFileError(f"revocation list `{path}` must be a json object")
    extra = sorted(raw.keys() - {"cti", "subjects"})
    if extra:
        raise RevocationFileError(f"revocation list `{path}` has unknown key(s) {_listing(extra)}")
    ctis: set[bytes] = set()
    subjects: set[str] = set()
    for i, item in enumerate(_json_list(raw.get("cti", []), path, "cti")):
        try:
            if not isinstance(item, str):
                raise ValueError
            ctis.add(_revocable_cti(bytes.fromhex(item)))
        except ValueError:
            raise RevocationFileError(
                f"revocation list `{path}`: cti[{i}] must be 1 to {_MAX_CTI} bytes as hex"
            ) from None
    for i, item in enumerate(_json_list(raw.get("subjects", []), path, "subjects")):
        if not isinstance(item, str) or not item:
            raise RevocationFileError(f"revocation list `{path}`: subjects[{i}] must be a non-empty string")
        subjects.add(item)
    return ctis, subjects


def _json_list(value: Any, path: Path, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise RevocationFileError(f"revocation list `{path}`: `{key}` must be an array")
    return value


# --------------------------------------------------------------------------- verify


def _trust_store(
    trusted: Mapping[str, VerifyKey | Iterable[VerifyKey]] | Iterable[tuple[str, VerifyKey]],
) -> tuple[dict[bytes, VerifyKey], dict[str, frozenset[bytes]]]:
    pairs: list[tuple[Any, Any]] = []
    if isinstance(trusted, Mapping):
        for issuer, entry in trusted.items():
            if isinstance(entry, VerifyKey):
                pairs.append((issuer, entry))
            elif isinstance(entry, Iterable) and not isinstance(entry, (str, bytes)):
                pairs.extend((issuer, vk) for vk in entry)
            else:
                raise TypeError(f"trusted keys of issuer `{issuer}` must be a `VerifyKey` or a list of them")
    elif isinstance(trusted, Iterable) and not isinstance(trusted, (str, bytes)):
        for pair in trusted:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError("trusted issuers given as a list must hold `(issuer, VerifyKey)` pairs")
            pairs.append(pair)
    else:
        raise TypeError("trusted issuers must be a mapping issuer → key(s) or a list of `(issuer, VerifyKey)` pairs")
    by_kid: dict[bytes, VerifyKey] = {}
    by_issuer: dict[str, set[bytes]] = {}
    for issuer, vk in pairs:
        _text(issuer, "issuer name")
        if not isinstance(vk, VerifyKey):
            raise TypeError(f"trusted key of issuer `{issuer}` must be a `VerifyKey`, got `{type(vk).__name__}`")
        by_kid[vk.kid] = vk
        by_issuer.setdefault(issuer, set()).add(vk.kid)
    if not by_issuer:
        raise ValueError("no trusted issuers: every identity would be refused")
    return by_kid, {issuer: frozenset(kids) for issuer, kids in by_issuer.items()}


class IdentityVerifier:
    """Checks identity CWTs against trusted issuer keys, the clock and a revocation list.

    *trusted_issuers* maps an issuer name (the ``iss`` claim) to its key or
    keys (several during a rotation), or is a list of ``(issuer, VerifyKey)``
    pairs. A key signs only for the issuers it is listed under.
    *revocation* is consulted on every call, so revoking takes effect at the
    next verification. *audience*: the name this verifier answers to; a token
    naming another audience, or naming one when this verifier has none, is
    refused (RFC 7519 §4.1.3). *max_ttl_s*: refuse tokens whose lifetime
    ``exp - iat`` is longer, whatever their issuer chose.

    The trust store is fixed at construction, so what depends only on the
    token's bytes (encoding, signature, claims, issuer, audience, delegation)
    cannot change for a given token: the last *cache_size* tokens that passed
    those checks are remembered by their exact bytes, and verifying one again
    costs a dictionary lookup plus the revocation and clock checks, which are
    never cached. ``cache_size=0`` turns this off.
    """

    __slots__ = ("_by_kid", "_by_issuer", "_revocation", "_skew", "_audience", "_max_ttl", "_cache", "_cache_size",
                 "_cache_lock")

    def __init__(
        self,
        trusted_issuers: Mapping[str, VerifyKey | Iterable[VerifyKey]] | Iterable[tuple[str, VerifyKey]],
        revocation: RevocationList,
        *,
        clock_skew_s: int | float = 30,
        audience: str | None = None,
        max_ttl_s: int | None = None,
        cache_size: int = 1024,
    ) -> None:
        self._by_kid, self._by_issuer = _trust_store(trusted_issuers)
        if not isinstance(revocation, RevocationList):
            raise TypeError(f"revocation must be a `RevocationList`, got `{type(revocation).__name__}`")
        self._revocation = revocation
        if isinstance(clock_skew_s, bool) or not isinstance(clock_skew_s, (int, float)) or not (
            math.isfinite(clock_skew_s) and clock_skew_s >= 0
        ):
            raise ValueError(f"clock_skew_s must be a finite number >= 0, got `{clock_skew_s!r}`")
        self._skew = clock_skew_s
        self._audience = _text(audience, "audience") if audience is not None else None
        if max_ttl_s is not None and (isinstance(max_ttl_s, bool) or not isinstance(max_ttl_s, int) or max_ttl_s <= 0):
            raise ValueError(f"max_ttl_s must be a positive integer, got `{max_ttl_s!r}`")
        self._max_ttl = max_ttl_s
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an integer >= 0, got `{cache_size!r}`")
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, VerifiedIdentity] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def revocation(self) -> RevocationList:
        return self._revocation

    def verify(self, token: bytes, now: float | int | None = None) -> VerifiedIdentity:
        """Return the identity *token* asserts, or raise the `IdentityError` subclass that says why not.

        Order: size and encoding, typ, key, signature, claims, issuer ↔ key,
        lifetime, audience, delegation, then revocation and time.
        """
        moment = _now(now, "now")
        if not isinstance(token, (bytes, bytearray, memoryview)):
            raise MalformedIdentityError(f"identity token must be bytes, got `{type(token).__name__}`")
        data = bytes(token)
        if len(data) > MAX_TOKEN_SIZE:
            raise MalformedIdentityError(f"identity token is {len(data)} bytes; the limit is {MAX_TOKEN_SIZE}")
        with self._cache_lock:
            verified = self._cache.get(data)
            if verified is not None:
                self._cache.move_to_end(data)
        fresh = verified is None
        if verified is None:
            verified = self._verify_bytes(data)
        self._check_revocation(verified)
        self._check_time(verified, moment)
        if fresh and self._cache_size:
            with self._cache_lock:
                self._cache[data] = verified
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return verified

    def reverify(self, identity: VerifiedIdentity, now: float | int | None = None) -> VerifiedIdentity:
        """Verify the frozen identity's own token again (expiry, revocation, trust may have changed since)."""
        if not isinstance(identity, VerifiedIdentity):
            raise TypeError(f"identity must be a `VerifiedIdentity`, got `{type(identity).__name__}`")
        again = self.verify(identity.token, now)
        # A cached token gives back the very object verified at submission: no field-by-field comparison.
        if again is not identity and again != identity:
            # Same bytes give the same claims, so a difference means the record
            # was built or altered by hand around someone else's token.
            raise MalformedIdentityError("identity record does not match the token it carries")
        return identity

    def _verify_bytes(self, data: bytes) -> VerifiedIdentity:
        # Everything here is a function of the token bytes and the (fixed)
        # trust store; the clock and the revocation list are checked by the caller.
        try:
            msg = cose.verify1(data, self._by_kid, typ=TYP_IDENTITY)
        except cose.WrongTypeError as exc:
            raise WrongTokenTypeError(str(exc)) from None
        except cose.UnknownKeyError as exc:
            raise UntrustedIssuerError(
                f"identity signed by key `{exc.kid.hex()}`, which no issuer is trusted with"
            ) from None
        except cose.BadSignatureError as exc:
            raise BadIdentitySignatureError(str(exc)) from None
        except cose.MalformedError as exc:
            raise MalformedIdentityError(str(exc)) from None
        assert msg.payload is not None  # verify1 refuses a detached payload when none is supplied
        claims = _parse_claims(msg.payload)

        issuer = claims[CLAIM_ISS]
        issuer_kids = self._by_issuer.get(issuer)
        if issuer_kids is None:
            raise UntrustedIssuerError(f"issuer `{issuer}` is not trusted")
        if msg.kid not in issuer_kids:
            # The signature holds, but under a key trusted for someone else:
            # without this check any trusted issuer could speak for all.
            raise UntrustedIssuerError(f"key `{msg.kid.hex()}` is not trusted for issuer `{issuer}`")

        exp, iat = claims[CLAIM_EXP], claims[CLAIM_IAT]
        if self._max_ttl is not None and exp - iat > self._max_ttl:
            raise LifetimeTooLongError(
                f"identity lifetime is {exp - iat} s; this verifier accepts at most {self._max_ttl} s"
            )

        aud = claims.get(CLAIM_AUD)
        if aud != self._audience:
            if aud is None:
                raise AudienceMismatchError(f"identity names no audience; expected `{self._audience}`")
            if self._audience is None:
                raise AudienceMismatchError(f"identity is meant for `{aud}`; this verifier has no audience")
            raise AudienceMismatchError(f"identity is meant for `{aud}`, not `{self._audience}`")

        subject = claims[CLAIM_SUB]
        agent, scopes = claims.get(CLAIM_AGENT), claims.get(CLAIM_SCOPES)
        delegation = claims.get(CLAIM_DELEGATION)
        problem = _delegation_problem(subject, agent, scopes, delegation or ())
        if problem is not None:
            raise DelegationError(problem)

        return VerifiedIdentity(
            issuer=issuer,
            principal=subject,
            agent=agent,
            service=claims.get(CLAIM_SERVICE),
            session=claims.get(CLAIM_SESSION),
            role=claims.get(CLAIM_ROLE),
            scopes=scopes,
            delegation=delegation,
            audience=aud,
            issued_at=iat,
            not_before=claims.get(CLAIM_NBF),
            expires_at=exp,
            cti=claims[CLAIM_CTI],
            kid=msg.kid,
            token_sha256=hashlib.sha256(data).digest(),
            token=data,
        )

    def _check_revocation(self, verified: VerifiedIdentity) -> None:
        by = self._revocation.revoked_by(cti=verified.cti, subject=verified.principal)
        if by == "cti":
            raise RevokedIdentityError(f"identity token `{verified.cti.hex()}` is revoked", by=by)
        if by == "subject":
            raise RevokedIdentityError(f"principal `{verified.principal}` is revoked", by=by)

    def _check_time(self, verified: VerifiedIdentity, moment: float | int) -> None:
        skew = self._skew
        if moment >= verified.expires_at + skew:
            raise ExpiredIdentityError(
                f"identity expired at {verified.expires_at} (now {_fmt(moment)}, clock skew {_fmt(skew)} s)"
            )
        nbf = verified.not_before
        if nbf is not None and moment < nbf - skew:
            raise IdentityNotYetValidError(
                f"identity not valid before {nbf} (now {_fmt(moment)}, clock skew {_fmt(skew)} s)"
            )
        if verified.issued_at > moment + skew:
            raise IdentityNotYetValidError(
                f"identity issued in the future at {verified.issued_at} (now {_fmt(moment)}, clock skew {_fmt(skew)} s)"
            )


def _fmt(seconds: float | int) -> str:
    return str(seconds) if isinstance(seconds, int) or not seconds.is_integer() else str(int(seconds))
