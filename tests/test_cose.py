"""COSE_Sign1 with Ed25519: the cose-wg interop vector, aarmc's layout, and every rejection path."""

from __future__ import annotations

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature as PycaInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aarm_runtime import cose, dcbor
from aarm_runtime.cose import (
    BadSignatureError,
    CoseError,
    MalformedError,
    Sign1,
    UnknownKeyError,
    UnsupportedAlgorithmError,
    WrongTypeError,
    sign1,
    verify1,
    verify_signature_with_key,
)
from aarm_runtime.keys import SigningKey, VerifyKey

# --- cose-wg/Examples eddsa-examples/eddsa-sig-01.json ("EdDSA-01: EdDSA - 25519 - sign0") ---------
# The RFC 8032 TEST 1 key signs "This is the content." with protected {1: -8, 3: 0}
# (alg EdDSA, content type 0) and unprotected {4: '11'} (kid "11").
# Published bytes, as carried verbatim by public copies of the vector:
#   intermediates.ToBeSign_hex and output.cbor.
# Ed25519 is deterministic, so reproducing these bytes from the key alone is
# a full interop check of Sig_structure assembly, signing and envelope.
CWG_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
CWG_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
CWG_PAYLOAD = b"This is the content."
CWG_TO_BE_SIGNED = bytes.fromhex(
    "846A5369676E61747572653145A2012703004054546869732069732074686520636F6E74656E742E"
)
CWG_OUTPUT = bytes.fromhex(
    "D28445A201270300A10442313154546869732069732074686520636F6E74656E742E5840"
    "7142FD2FF96D56DB85BEE905A76BA1D0B7321A95C8C4D3607C5781932B7AFB87"
    "11497DFA751BF40B58B3BCC32300B1487F3DB34085EEF013BF08F4A44D6FEF0D"
)


def test_cose_wg_eddsa_sig_01_reproduced_byte_for_byte() -> None:
    key = SigningKey.from_seed(CWG_SEED)
    assert key.verify_key.public_bytes == CWG_PUBLIC
    protected = dcbor.encode({cose.HDR_ALG: cose.ALG_EDDSA, cose.HDR_CONTENT_TYPE: 0})
    assert protected == bytes.fromhex("A201270300")
    to_be_signed = cose.sig_structure(protected, CWG_PAYLOAD)
    assert to_be_signed == CWG_TO_BE_SIGNED
    message = dcbor.encode(cbor2.CBORTag(18, [protected, {cose.HDR_KID: b"11"}, CWG_PAYLOAD, key.sign(to_be_signed)]))
    assert message == CWG_OUTPUT


def test_cose_wg_eddsa_sig_01_verifies_with_the_low_level_path() -> None:
    msg = verify_signature_with_key(CWG_OUTPUT, VerifyKey(CWG_PUBLIC))
    assert msg.alg == -8
    assert msg.kid == b"11"
    assert msg.typ is None
    assert msg.payload == CWG_PAYLOAD
    assert msg.protected == {1: -8, 3: 0}
    assert msg.unprotected == {4: b"11"}
    assert msg.protected_bytes == bytes.fromhex("A201270300")
    # Independent check: pyca/cryptography over the published Sig_structure.
    Ed25519PublicKey.from_public_bytes(CWG_PUBLIC).verify(msg.signature, CWG_TO_BE_SIGNED)


def test_cose_wg_vector_fails_under_another_key_or_external_aad() -> None:
    with pytest.raises(BadSignatureError):
        verify_signature_with_key(CWG_OUTPUT, SigningKey.generate().verify_key)
    with pytest.raises(BadSignatureError):
        verify_signature_with_key(CWG_OUTPUT, VerifyKey(CWG_PUBLIC), external_aad=b"aad")


def test_cose_wg_vector_is_not_an_aarmc_message() -> None:
    # Its kid is unprotected and it has no typ: aarmc's verifier must refuse it
    # even when the key is trusted.
    with pytest.raises(MalformedError, match=r"\[4\] must be protected"):
        verify1(CWG_OUTPUT, [VerifyKey(CWG_PUBLIC)], typ=cose.TYP_RECEIPT)


# --- aarmc layout -------------------------------------------------------------

KEY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(1, 33)))
PAYLOAD = dcbor.encode({1: 1, 2: b"\x00" * 16, 3: 0})
CLAIMS = {1: "aarmc-test", 2: "session-1", 6: 1_700_000_000}


def _text_head(text: str) -> bytes:
    raw = text.encode()
    assert 24 <= len(raw) < 256
    return bytes([0x78, len(raw)]) + raw


def test_protected_header_layout_is_byte_exact() -> None:
    data = sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT)
    msg = verify1(data, [KEY.verify_key], typ=cose.TYP_RECEIPT)
    # Built by hand: {1: -19, 4: kid, 16: typ}, labels in bytewise order.
    expected = bytes([0xA3, 0x01, 0x32, 0x04, 0x58, 0x20]) + KEY.kid + bytes([0x10]) + _text_head(cose.TYP_RECEIPT)
    assert msg.protected_bytes == expected
    assert len(PAYLOAD) < 24  # so its byte-string head is the single byte 0x40 + length
    prefix = bytes([0xD2, 0x84, 0x58, len(expected)]) + expected + bytes([0xA0, 0x40 + len(PAYLOAD)]) + PAYLOAD
    assert data.startswith(prefix + bytes([0x58, 0x40]))
    assert len(data) == len(prefix) + 2 + 64


def test_sign1_is_independently_verifiable() -> None:
    data = sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT, cwt_claims=CLAIMS)
    # Parse and rebuild Sig_structure with plain cbor2, not with our code.
    tag = cbor2.loads(data)
    assert tag.tag == 18
    protected_bytes, unprotected, payload, signature = tag.value
    assert dict(unprotected) == {}
    assert payload == PAYLOAD
    assert cbor2.loads(protected_bytes) == {1: -19, 4: KEY.kid, 16: cose.TYP_RECEIPT, 15: CLAIMS}
    to_be_signed = cbor2.dumps(["Signature1", protected_bytes, b"", payload])
    Ed25519PublicKey.from_public_bytes(KEY.verify_key.public_bytes).verify(signature, to_be_signed)
    with pytest.raises(PycaInvalidSignature):
        Ed25519PublicKey.from_public_bytes(KEY.verify_key.public_bytes).verify(signature, to_be_signed + b"x")


def test_sign1_is_deterministic_and_decodes_strictly() -> None:
    a = sign1(PAYLOAD, KEY, typ=cose.TYP_POLICY, cwt_claims=CLAIMS)
    assert a == sign1(PAYLOAD, KEY, typ=cose.TYP_POLICY, cwt_claims=CLAIMS)
    assert dcbor.encode(dcbor.decode_strict(a)) == a


@pytest.mark.parametrize("trusted_form", ["sequence", "mapping"])
def test_round_trip(trusted_form: str) -> None:
    data = sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT, cwt_claims=CLAIMS)
    keys_ = [OTHER.verify_key, KEY.verify_key]
    trusted = keys_ if trusted_form == "sequence" else {k.kid: k for k in keys_}
    msg = verify1(data, trusted, typ=cose.TYP_RECEIPT)
    assert isinstance(msg, Sign1)
    assert msg.payload == PAYLOAD
    assert msg.alg == cose.ALG_ED25519
    assert msg.kid == KEY.kid
    assert msg.typ == cose.TYP_RECEIPT
    assert msg.cwt_claims == CLAIMS
    assert msg.unprotected == {}
    assert len(msg.signature) == 64
    with pytest.raises(AttributeError):
        msg.payload = b""  # type: ignore[misc]


def test_alg_minus_8_is_accepted_with_ed25519() -> None:
    data = sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT, alg=cose.ALG_EDDSA)
    assert verify1(data, [KEY.verify_key], typ=cose.TYP_RECEIPT).alg == -8


def test_a_receipt_never_loads_as_a_policy() -> None:
    data = sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT)
    with pytest.raises(WrongTypeError, match="`application/aarm-receipt\\+cose`, expected `application/aarm-policy\\+cose`"):
        verify1(data, [KEY.verify_key], typ=cose.TYP_POLICY)
    with pytest.raises(WrongTypeError):
        verify1(data, [KEY.verify_key], typ=cose.TYP_CHECKPOINT)


def test_unknown_key() -> None:
    data = sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT)
    with pytest.raises(UnknownKeyError) as info:
        verify1(data, [OTHER.verify_key], typ=cose.TYP_RECEIPT)
    assert info.value.kid == KEY.kid
    assert KEY.kid.hex() in str(info.value)
    with pytest.raises(UnknownKeyError):
        verify1(data, [], typ=cose.TYP_RECEIPT)
    with pytest.raises(UnknownKeyError):
        verify1(data, {}, typ=cose.TYP_RECEIPT)


def test_inconsistent_trust_store_is_a_caller_error() -> None:
    data = sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT)
    with pytest.raises(ValueError, match="trust store maps kid"):
        verify1(data, {KEY.kid: OTHER.verify_key}, typ=cose.TYP_RECEIPT)


# --- hand-built messages for the rejection paths -------------------------------


def _forge(
    protected_bytes: bytes,
    *,
    unprotected: object = None,
    payload: object = PAYLOAD,
    key: SigningKey = KEY,
    tag: int | None = 18,
    signature: bytes | None = None,
) -> bytes:
    """A message with a genuine signature by *key* over whatever headers we want to test."""
    if signature is None:
        signed_payload = payload if isinstance(payload, bytes) else b""
        signature = key.sign(cbor2.dumps(["Signature1", protected_bytes, b"", signed_payload]))
    body = [protected_bytes, {} if unprotected is None else unprotected, payload, signature]
    return cbor2.dumps(body if tag is None else cbor2.CBORTag(tag, body))


def _protected(**extra: object) -> dict[int, object]:
    header: dict[int, object] = {1: -19, 4: KEY.kid, 16: cose.TYP_RECEIPT}
    for k, v in extra.items():
        header[int(k.lstrip("_"))] = v
    return header


def _verify(data: bytes) -> Sign1:
    return verify1(data, [KEY.verify_key], typ=cose.TYP_RECEIPT)


def test_forge_helper_builds_valid_messages() -> None:
    # Guards the rejection tests below: the baseline they perturb is accepted.
    assert _verify(_forge(dcbor.encode(_protected()))).payload == PAYLOAD


def test_signature_by_untrusted_key_claiming_a_trusted_kid() -> None:
    # The kid only selects a key from our store; it proves nothing by itself.
    data = _forge(dcbor.encode(_protected()), key=OTHER)
    with pytest.raises(BadSignatureError):
        _verify(data)


def test_tampered_payload() -> None:
    good = dcbor.decode_strict(sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT)).value
    bad = dcbor.encode(cbor2.CBORTag(18, [good[0], good[1], PAYLOAD + b"\x00", good[3]]))
    with pytest.raises(BadSignatureError):
        _verify(bad)


def _unsorted_protected() -> bytes:
    # {16: typ, 1: -19, 4: kid}: valid CBOR, wrong key order.
    return (
        bytes([0xA3, 0x10])
        + _text_head(cose.TYP_RECEIPT)
        + bytes([0x01, 0x32, 0x04, 0x58, 0x20])
        + KEY.kid
    )


def _duplicate_protected() -> bytes:
    # {1: -19, 1: -7, 4: kid, 16: typ}: cbor2 would silently keep -7.
    return (
        bytes([0xA4, 0x01, 0x32, 0x01, 0x26, 0x04, 0x58, 0x20])
        + KEY.kid
        + bytes([0x10])
        + _text_head(cose.TYP_RECEIPT)
    )


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: _forge(dcbor.encode(_protected()), tag=None), "untagged"),
        (lambda: _forge(dcbor.encode(_protected()), tag=98), "tag 98"),
        (lambda: dcbor.encode(cbor2.CBORTag(18, [dcbor.encode(_protected()), {}, PAYLOAD])), "array of 4"),
        (lambda: dcbor.encode(cbor2.CBORTag(18, {1: 2})), "array of 4"),
        (lambda: _forge(_unsorted_protected()), "protected header is not deterministic"),
        (lambda: _forge(_duplicate_protected()), "protected header is not deterministic"),
        (lambda: _forge(b""), "protected header is empty"),
        (lambda: _forge(dcbor.encode([1, -19])), "non-empty map"),
        (lambda: _forge(dcbor.encode({})), "non-empty map"),
        (lambda: _forge(dcbor.encode(_protected()) + b"\x00"), "trailing"),
        (lambda: _forge(dcbor.encode({4: KEY.kid, 16: cose.TYP_RECEIPT})), "no alg"),
        (lambda: _forge(dcbor.encode(_protected()), unprotected={1: -19}), "both protected and unprotected"),
        (lambda: _forge(dcbor.encode({4: KEY.kid, 16: cose.TYP_RECEIPT}), unprotected={1: -19}), r"\[1\] must be protected"),
        (lambda: _forge(dcbor.encode({1: -19, 16: cose.TYP_RECEIPT}), unprotected={4: KEY.kid}), r"\[4\] must be protected"),
        (lambda: _forge(dcbor.encode({1: -19, 4: KEY.kid}), unprotected={16: cose.TYP_RECEIPT}), r"\[16\] must be protected"),
        (lambda: _forge(dcbor.encode(_protected()), unprotected={15: CLAIMS}), r"\[15\] must be protected"),
        (lambda: _forge(dcbor.encode(_protected()), unprotected={3: 0}), r"\[3\] must be protected"),
        (lambda: _forge(dcbor.encode(_protected()), unprotected={2: [99]}), r"\[2\] must be protected"),
        (lambda: _forge(dcbor.encode(_protected(_2=[99], _99=0))), "crit"),
        (lambda: _forge(dcbor.encode(_protected(_4="kid-as-text"))), "kid"),
        (lambda: _forge(dcbor.encode(_protected()), signature=b"\x00" * 63), "64-byte"),
        (lambda: _forge(dcbor.encode(_protected()), payload="text"), "payload must be"),
        (lambda: _forge(dcbor.encode(_protected()), unprotected=[]), "unprotected header must be a map"),
        (lambda: dcbor.encode(cbor2.CBORTag(18, [{1: -19}, {}, PAYLOAD, b"\x00" * 64])), "protected header must be a byte string"),
        (lambda: sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT) + b"\x00", "trailing"),
        (lambda: b"", "strictly encoded"),
        (lambda: b"\xd2", "strictly encoded"),
        # Indefinite-length outer array: same content, non-deterministic envelope.
        (lambda: b"\xd2\x9f" + sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT)[2:] + b"\xff", "strictly encoded"),
        # A float in the unprotected bucket.
        (lambda: _forge(dcbor.encode(_protected()), unprotected={99: 1.5}), "strictly encoded"),
    ],
)
def test_malformed(build, fragment: str) -> None:
    with pytest.raises(MalformedError, match=fragment):
        _verify(build())


def test_unsupported_algorithms() -> None:
    for alg in (-7, -35, -20, 0, "EdDSA", True):
        data = _forge(dcbor.encode(_protected(_1=alg)))
        with pytest.raises(UnsupportedAlgorithmError, match="unsupported alg"):
            _verify(data)
    with pytest.raises(ValueError, match="not an Ed25519 algorithm"):
        sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT, alg=-7)


def test_missing_typ_is_a_wrong_type() -> None:
    data = _forge(dcbor.encode({1: -19, 4: KEY.kid}))
    with pytest.raises(WrongTypeError, match="no protected typ"):
        _verify(data)


def test_detached_payload() -> None:
    root = bytes(range(32))
    data = sign1(root, KEY, typ=cose.TYP_CHECKPOINT, detached=True)
    msg = verify1(data, [KEY.verify_key], typ=cose.TYP_CHECKPOINT, detached_payload=root)
    assert msg.payload is None
    with pytest.raises(MalformedError, match="detached but none was supplied"):
        verify1(data, [KEY.verify_key], typ=cose.TYP_CHECKPOINT)
    with pytest.raises(BadSignatureError):
        verify1(data, [KEY.verify_key], typ=cose.TYP_CHECKPOINT, detached_payload=bytes(32))
    attached = sign1(root, KEY, typ=cose.TYP_CHECKPOINT)
    with pytest.raises(MalformedError, match="carries its own"):
        verify1(attached, [KEY.verify_key], typ=cose.TYP_CHECKPOINT, detached_payload=root)


def test_checkpoint_shaped_headers() -> None:
    # draft-ietf-cose-merkle-tree-proofs: vds (395) protected, vdp (396) unprotected.
    proof = {-1: [dcbor.encode([5, 4, [bytes(32), bytes(32)]])]}
    data = sign1(
        bytes(32),
        KEY,
        typ=cose.TYP_CHECKPOINT,
        extra_protected={cose.HDR_VDS: 1},
        unprotected={cose.HDR_VDP: proof},
        detached=True,
    )
    msg = verify1(data, [KEY.verify_key], typ=cose.TYP_CHECKPOINT, detached_payload=bytes(32))
    assert msg.protected[cose.HDR_VDS] == 1
    assert msg.header(cose.HDR_VDP) == proof
    # The unprotected proof is not signed: swapping it keeps the signature valid,
    # which is why verifiers must check the proof against the signed root.
    body = dcbor.decode_strict(data).value
    swapped = dcbor.encode(cbor2.CBORTag(18, [body[0], {cose.HDR_VDP: {-1: []}}, None, body[3]]))
    assert verify1(swapped, [KEY.verify_key], typ=cose.TYP_CHECKPOINT, detached_payload=bytes(32)).header(
        cose.HDR_VDP
    ) == {-1: []}


def test_every_bit_flip_is_rejected_with_a_cose_error() -> None:
    data = sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT, cwt_claims=CLAIMS)
    for i in range(len(data)):
        for bit in range(8):
            mutated = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]
            with pytest.raises(CoseError):
                _verify(mutated)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"extra_protected": {1: -8}}, "collides"),
        ({"extra_protected": {4: b"x"}}, "collides"),
        ({"extra_protected": {16: "x"}}, "collides"),
        ({"extra_protected": {15: {}}}, "collides"),
        ({"extra_protected": {2: [395]}}, "crit"),
        ({"unprotected": {4: b"x"}}, "must be protected"),
        ({"unprotected": {16: "x"}}, "must be protected"),
        ({"extra_protected": {395: 1}, "unprotected": {395: 1}}, "both protected and unprotected"),
        ({"typ": ""}, "non-empty"),
    ],
)
def test_sign1_refuses_what_verify1_would_reject(kwargs: dict[str, object], fragment: str) -> None:
    kwargs = {"typ": cose.TYP_RECEIPT, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        sign1(PAYLOAD, KEY, **kwargs)  # type: ignore[arg-type]


def test_sign1_refuses_floats_in_headers() -> None:
    with pytest.raises(dcbor.EncodingError, match="float"):
        sign1(PAYLOAD, KEY, typ=cose.TYP_RECEIPT, cwt_claims={6: 1.5})
