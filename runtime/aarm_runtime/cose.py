"""COSE_Sign1 (RFC 9052 §4.2) with Ed25519, as aarmc uses it for policies, receipts and checkpoints.

Message: ``18([protected: bstr, unprotected: map, payload: bstr / nil, signature: bstr])``.
The signature is pure Ed25519 (RFC 8032) over the deterministic CBOR of
``["Signature1", protected, external_aad, payload]`` (RFC 9052 §4.4), computed
over the bytes as received — never over a re-encoding.

aarmc's layout (what `sign1` writes and `verify1` demands):
  protected  ``{1: alg, 4: kid, 16: typ[, 15: cwt_claims][, extra...]}``
  unprotected any labels except those that must be protected (alg, crit,
  content type, kid, CWT claims, typ)
``alg`` is -19 (Ed25519, RFC 9864) when signing; verifiers also accept -8
(EdDSA) with an Ed25519 key. ``kid`` is the RFC 9679 thumbprint of the key and
is only used to pick a key from the caller's trust store. ``typ`` (RFC 9596)
names what is signed, so a receipt can never be accepted as a policy.

Everything is decoded strictly (`dcbor.decode_strict`): the whole message and
the protected header must be deterministic CBOR, which rules out duplicate
labels and the other ambiguities cbor2 accepts silently. Verification raises a
`CoseError` subclass; it never returns a bool.

`verify_signature_with_key` is the lower-level check for messages in other
layouts (no ``typ``, ``kid`` unprotected), such as the cose-wg/Examples vectors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import cbor2

from aarm_runtime import dcbor, keys

__all__ = [
    "ALG_ED25519",
    "ALG_EDDSA",
    "BadSignatureError",
    "COSE_SIGN1_TAG",
    "CoseError",
    "HDR_ALG",
    "HDR_CONTENT_TYPE",
    "HDR_CRIT",
    "HDR_CWT_CLAIMS",
    "HDR_KID",
    "HDR_TYP",
    "HDR_VDP",
    "HDR_VDS",
    "MalformedError",
    "Sign1",
    "TYP_CHECKPOINT",
    "TYP_POLICY",
    "TYP_RECEIPT",
    "UnknownKeyError",
    "UnsupportedAlgorithmError",
    "WrongTypeError",
    "sig_structure",
    "sign1",
    "verify1",
    "verify_signature_with_key",
]

COSE_SIGN1_TAG = 18

HDR_ALG = 1
HDR_CRIT = 2
HDR_CONTENT_TYPE = 3
HDR_KID = 4
HDR_CWT_CLAIMS = 15  # RFC 9597
HDR_TYP = 16  # RFC 9596
HDR_VDS = 395  # draft-ietf-cose-merkle-tree-proofs: verifiable data structure
HDR_VDP = 396  # draft-ietf-cose-merkle-tree-proofs: verifiable data structure proofs

ALG_ED25519 = -19  # RFC 9864, fully specified
ALG_EDDSA = -8  # RFC 9053, polymorphic; accepted on verify with Ed25519 keys only

TYP_RECEIPT = "application/aarm-receipt+cose"
TYP_CHECKPOINT = "application/aarm-checkpoint+cose"
TYP_POLICY = "application/aarm-policy+cose"

_ACCEPTED_ALGS = frozenset({ALG_ED25519, ALG_EDDSA})
# Integrity of these changes the meaning of the message, so aarmc never reads
# them from the unprotected bucket.
_MUST_PROTECT = frozenset({HDR_ALG, HDR_CRIT, HDR_CONTENT_TYPE, HDR_KID, HDR_CWT_CLAIMS, HDR_TYP})
# RFC 9052 §3.1: crit must be protected; foreign layouts may carry kid unprotected.
_MUST_PROTECT_FOREIGN = frozenset({HDR_ALG, HDR_CRIT})
_SIG_CONTEXT = "Signature1"


class CoseError(Exception):
    """A COSE_Sign1 message was rejected."""


class MalformedError(CoseError):
    """Not a well-formed, strictly encoded COSE_Sign1 in the expected layout."""


class UnsupportedAlgorithmError(MalformedError):
    """The ``alg`` header names something other than Ed25519."""


class WrongTypeError(CoseError):
    """The ``typ`` header is missing or names another kind of document."""


class UnknownKeyError(CoseError):
    """The ``kid`` header names no key in the verifier's trust store."""

    def __init__(self, message: str, kid: bytes) -> None:
        super().__init__(message)
        self.kid = kid


class BadSignatureError(CoseError):
    """The signature does not verify under the trusted key."""


@dataclasses.dataclass(frozen=True, slots=True)
class Sign1:
    """A verified COSE_Sign1. ``payload`` is the message's own payload: None when it was detached."""

    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes | None
    signature: bytes
    protected_bytes: bytes

    def header(self, label: int) -> Any:
        """Value of *label*, protected bucket first; None if absent."""
        if label in self.protected:
            return self.protected[label]
        return self.unprotected.get(label)

    @property
    def alg(self) -> int:
        return self.protected[HDR_ALG]

    @property
    def kid(self) -> bytes | None:
        return self.header(HDR_KID)

    @property
    def typ(self) -> str | None:
        return self.protected.get(HDR_TYP)

    @property
    def cwt_claims(self) -> dict[int, Any] | None:
        return self.protected.get(HDR_CWT_CLAIMS)


def sig_structure(protected_bytes: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The bytes an Ed25519 COSE_Sign1 signature covers (RFC 9052 §4.4)."""
    return dcbor.encode([_SIG_CONTEXT, protected_bytes, external_aad, payload])


def sign1(
    payload: bytes,
    key: keys.SigningKey,
    *,
    typ: str,
    alg: int = ALG_ED25519,
    cwt_claims: Mapping[int, Any] | None = None,
    extra_protected: Mapping[int, Any] | None = None,
    unprotected: Mapping[int, Any] | None = None,
    detached: bool = False,
) -> bytes:
    """Sign *payload* and return the tagged COSE_Sign1 bytes in aarmc's layout.

    With ``detached=True`` the message carries nil and the verifier must be
    given the payload (checkpoints detach the Merkle root they sign).
    """
    if not isinstance(payload, (bytes, bytearray)):
        raise TypeError(f"payload must be bytes, got `{type(payload).__name__}`")
    if alg not in _ACCEPTED_ALGS:
        raise ValueError(f"alg `{alg}` is not an Ed25519 algorithm; use -19 (Ed25519) or -8 (EdDSA)")
    if not isinstance(typ, str) or not typ:
        raise ValueError("typ must be a non-empty string")
    protected: dict[Any, Any] = {HDR_ALG: alg, HDR_KID: key.kid, HDR_TYP: typ}
    if cwt_claims is not None:
        protected[HDR_CWT_CLAIMS] = dict(cwt_claims)
    for label, value in (extra_protected or {}).items():
        if label in protected or label == HDR_CWT_CLAIMS:
            raise ValueError(f"extra protected header `{label}` collides with a header sign1 sets itself")
        if label == HDR_CRIT:
            raise ValueError("crit is not supported: verify1 rejects every message that carries it")
        protected[label] = value
    unprotected_map = dict(unprotected or {})
    for label in unprotected_map:
        if label in _MUST_PROTECT:
            raise ValueError(f"header `{label}` must be protected")
        if label in protected:
            raise ValueError(f"header `{label}` cannot be both protected and unprotected")
    protected_bytes = dcbor.encode(protected)
    payload = bytes(payload)
    signature = key.sign(sig_structure(protected_bytes, payload))
    return dcbor.encode(
        cbor2.CBORTag(COSE_SIGN1_TAG, [protected_bytes, unprotected_map, None if detached else payload, signature])
    )


def _parse(data: bytes, must_protect: frozenset[int]) -> Sign1:
    try:
        item = dcbor.decode_strict(data)
    except dcbor.EncodingError as exc:
        raise MalformedError(f"cose_sign1 is not strictly encoded: {exc}") from None
    if not isinstance(item, cbor2.CBORTag) or item.tag != COSE_SIGN1_TAG:
        got = f"tag {item.tag}" if isinstance(item, cbor2.CBORTag) else f"untagged {type(item).__name__}"
        raise MalformedError(f"expected a tagged cose_sign1 (tag {COSE_SIGN1_TAG}), got {got}")
    body = item.value
    if not isinstance(body, list) or len(body) != 4:
        raise MalformedError("cose_sign1 must be an array of 4 items: protected, unprotected, payload, signature")
    protected_bytes, unprotected, payload, signature = body
    if not isinstance(protected_bytes, bytes):
        raise MalformedError("protected header must be a byte string")
    if not isinstance(unprotected, dict):
        raise MalformedError("unprotected header must be a map")
    if payload is not None and not isinstance(payload, bytes):
        raise MalformedError("payload must be a byte string or nil")
    if not isinstance(signature, bytes) or len(signature) != keys.SIGNATURE_SIZE:
        raise MalformedError(f"signature must be a {keys.SIGNATURE_SIZE}-byte string")
    if not protected_bytes:
        raise MalformedError("protected header is empty; alg must be protected")
    try:
        protected = dcbor.decode_strict(protected_bytes)
    except dcbor.EncodingError as exc:
        raise MalformedError(f"protected header is not deterministic cbor: {exc}") from None
    if not isinstance(protected, dict) or not protected:
        raise MalformedError("protected header must be a non-empty map")
    for bucket, name in ((protected, "protected"), (unprotected, "unprotected")):
        for label in bucket:
            if isinstance(label, bool) or not isinstance(label, (int, str)):
                raise MalformedError(f"{name} header label `{label!r}` is neither int nor text")
    both = protected.keys() & unprotected.keys()
    if both:
        raise MalformedError(f"header labels {sorted(both, key=repr)} appear both protected and unprotected")
    wrongly_unprotected = unprotected.keys() & must_protect
    if wrongly_unprotected:
        raise MalformedError(f"header labels {sorted(wrongly_unprotected)} must be protected")
    if HDR_CRIT in protected:
        raise MalformedError("crit header is not supported: the message asks for extensions this verifier lacks")
    alg = protected.get(HDR_ALG)
    if alg is None:
        raise MalformedError("protected header has no alg")
    if isinstance(alg, bool) or not isinstance(alg, int) or alg not in _ACCEPTED_ALGS:
        raise UnsupportedAlgorithmError(f"unsupported alg `{alg!r}`; expected -19 (Ed25519) or -8 (EdDSA)")
    return Sign1(
        protected=protected,
        unprotected=unprotected,
        payload=payload,
        signature=signature,
        protected_bytes=protected_bytes,
    )


def _signed_payload(msg: Sign1, detached_payload: bytes | None) -> bytes:
    if detached_payload is None:
        if msg.payload is None:
            raise MalformedError("payload is detached but none was supplied to the verifier")
        return msg.payload
    if msg.payload is not None:
        raise MalformedError("a detached payload was supplied but the message carries its own")
    return bytes(detached_payload)


def _check_signature(msg: Sign1, payload: bytes, verify_key: keys.VerifyKey, external_aad: bytes) -> None:
    try:
        verify_key.verify(sig_structure(msg.protected_bytes, payload, external_aad), msg.signature)
    except keys.InvalidSignature:
        raise BadSignatureError(f"signature does not verify under key `{verify_key.kid.hex()}`") from None


def _trust_store(trusted: Mapping[bytes, keys.VerifyKey] | Sequence[keys.VerifyKey]) -> Mapping[bytes, keys.VerifyKey]:
    if isinstance(trusted, Mapping):
        for kid, vk in trusted.items():
            if keys.kid(vk) != kid:
                raise ValueError(
                    f"trust store maps kid `{bytes(kid).hex()}` to a key whose thumbprint is `{vk.kid.hex()}`"
                )
        return trusted
    return {keys.kid(vk): vk for vk in trusted}


def verify1(
    data: bytes,
    trusted: Mapping[bytes, keys.VerifyKey] | Sequence[keys.VerifyKey],
    *,
    typ: str,
    detached_payload: bytes | None = None,
) -> Sign1:
    """Verify an aarmc COSE_Sign1 of kind *typ* against the trust store *trusted*; raise `CoseError` otherwise.

    Checks, in order: strict encoding and shape (`MalformedError`), alg
    (`UnsupportedAlgorithmError`), typ (`WrongTypeError`), kid in the trust
    store (`UnknownKeyError`), signature (`BadSignatureError`).
    """
    store = _trust_store(trusted)
    msg = _parse(data, _MUST_PROTECT)
    got_typ = msg.protected.get(HDR_TYP)
    if got_typ is None:
        raise WrongTypeError(f"message has no protected typ; expected `{typ}`")
    if got_typ != typ:
        raise WrongTypeError(f"message typ is `{got_typ}`, expected `{typ}`")
    kid = msg.protected.get(HDR_KID)
    if not isinstance(kid, bytes):
        raise MalformedError("protected header has no byte-string kid")
    verify_key = store.get(kid)
    if verify_key is None:
        raise UnknownKeyError(f"kid `{kid.hex()}` is not among the {len(store)} trusted key(s)", kid)
    _check_signature(msg, _signed_payload(msg, detached_payload), verify_key, b"")
    return msg


def verify_signature_with_key(
    data: bytes,
    verify_key: keys.VerifyKey,
    *,
    detached_payload: bytes | None = None,
    external_aad: bytes = b"",
) -> Sign1:
    """Verify any strictly encoded Ed25519 COSE_Sign1 under one given key, whatever its other headers.

    No typ and no kid checks: the caller has chosen the key and owns the
    meaning of the headers. alg must still be protected and Ed25519, and crit
    is still refused.
    """
    msg = _parse(data, _MUST_PROTECT_FOREIGN)
    _check_signature(msg, _signed_payload(msg, detached_payload), verify_key, bytes(external_aad))
    return msg
