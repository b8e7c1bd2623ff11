"""Identity assertions (AARM R6): CWT in COSE_Sign1, every refusal, revocation, and an independent verifier."""

from __future__ import annotations

import dataclasses
import doctest
import hashlib
import json
import threading

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature as PycaInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from aarm_runtime import context, cose, dcbor, identity
from aarm_runtime.identity import (
    TYP_IDENTITY,
    AudienceMismatchError,
    BadIdentitySignatureError,
    Delegation,
    DelegationError,
    ExpiredIdentityError,
    Identity,
    IdentityError,
    IdentityNotYetValidError,
    IdentityVerifier,
    LifetimeTooLongError,
    MalformedIdentityError,
    MissingClaimError,
    RevocationFileError,
    RevocationList,
    RevokedIdentityError,
    UntrustedIssuerError,
    VerifiedIdentity,
    WrongTokenTypeError,
    issue_identity,
)
from aarm_runtime.keys import SigningKey

IDP = SigningKey.from_seed(bytes(range(32)))
IDP_NEXT = SigningKey.from_seed(bytes(range(1, 33)))
PARTNER = SigningKey.from_seed(bytes(range(32, 64)))
STRANGER = SigningKey.from_seed(bytes(range(64, 96)))
NOW = 1_800_000_000
TTL = 600
CTI = bytes(range(16))

ALICE = Identity(
    issuer="idp.corp",
    principal="alice",
    agent="mail-bot",
    service="svc-mail",
    session="s-42",
    role="assistant",
    scopes=("mail",),
    delegation=(Delegation(from_="alice", to="mail-bot", scopes=("mail",)),),
    cti=CTI,
)
# LANGUAGE.md §7, verbatim.
SESSION_IDENTITY = {
    "principal": "alice",
    "agent": "mail-bot",
    "service": "svc-mail",
    "session": "s-42",
    "role": "assistant",
    "scopes": ["mail"],
    "delegation": [{"from": "alice", "to": "mail-bot", "scopes": ["mail"]}],
}


def verifier(revocation: RevocationList | None = None, **kwargs) -> IdentityVerifier:
    return IdentityVerifier(
        {"idp.corp": [IDP.verify_key, IDP_NEXT.verify_key], "partner.example": PARTNER.verify_key},
        revocation if revocation is not None else RevocationList(),
        **kwargs,
    )


def alice_token(**changes) -> bytes:
    return issue_identity(dataclasses.replace(ALICE, **changes), IDP, ttl_s=TTL, now=NOW)


def claims(**changes) -> dict:
    """The claims set `issue_identity` writes for ALICE, with *changes* (None removes a claim)."""
    out = dcbor.decode_strict(cose.verify1(alice_token(), [IDP.verify_key], typ=TYP_IDENTITY).payload)
    for name, value in changes.items():
        label = getattr(identity, f"CLAIM_{name.upper()}")
        if value is None:
            out.pop(label, None)
        else:
            out[label] = value
    return out


def signed(payload, key: SigningKey = IDP, *, typ: str = TYP_IDENTITY) -> bytes:
    raw = payload if isinstance(payload, bytes) else dcbor.encode(payload)
    return cose.sign1(raw, key, typ=typ)


def raw_sign1(protected: dict, payload: bytes, key: SigningKey = IDP, unprotected: dict | None = None) -> bytes:
    protected_bytes = dcbor.encode(protected)
    signature = key.sign(cose.sig_structure(protected_bytes, payload))
    return dcbor.encode(cbor2.CBORTag(18, [protected_bytes, unprotected or {}, payload, signature]))


# --------------------------------------------------------------------------- round trip


def test_round_trip_gives_the_language_session_identity() -> None:
    token = alice_token()
    got = verifier().verify(token, now=NOW + 1)
    assert got.to_session_identity() == SESSION_IDENTITY
    assert got.issuer == "idp.corp"
    assert (got.issued_at, got.not_before, got.expires_at) == (NOW, NOW, NOW + TTL)
    assert got.cti == CTI
    assert got.kid == IDP.kid
    assert got.audience is None
    assert got.token == token
    assert got.token_sha256 == hashlib.sha256(token).digest()
    assert got.token_digest == [-16, hashlib.sha256(token).digest()]
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.principal = "mallory"  # type: ignore[misc]
    assert "token=" not in repr(got)


def test_session_identity_is_what_the_session_context_accepts() -> None:
    decl = context.Declarations(outputs={}, top_level=0, env={})
    ctx = context.SessionContext(decl, identity=verifier().verify(alice_token(), now=NOW).to_session_identity())
    assert ctx.invalid is None and ctx.failure is None
    assert ctx.identity["principal"] == "alice"
    assert ctx.identity["scopes"] == ("mail",)
    assert ctx.identity["delegated"] is True


def test_absent_claims_stay_absent_and_empty_lists_stay_empty() -> None:
    bare = issue_identity(Identity(issuer="idp.corp", principal="alice"), IDP, ttl_s=TTL, now=NOW)
    assert verifier().verify(bare, now=NOW).to_session_identity() == {"principal": "alice"}
    assert set(dcbor.decode_strict(cose.verify1(bare, [IDP.verify_key], typ=TYP_IDENTITY).payload)) == {1, 2, 4, 5, 6, 7}
    empty = issue_identity(Identity(issuer="idp.corp", principal="alice", scopes=(), delegation=()), IDP, ttl_s=TTL,
                           now=NOW)
    assert verifier().verify(empty, now=NOW).to_session_identity() == {
        "principal": "alice", "scopes": [], "delegation": []
    }


def test_issue_draws_a_fresh_cti_and_floors_fractional_time() -> None:
    a = issue_identity(Identity(issuer="idp.corp", principal="alice"), IDP, ttl_s=TTL, now=NOW + 0.9)
    b = issue_identity(Identity(issuer="idp.corp", principal="alice"), IDP, ttl_s=TTL, now=NOW + 0.9)
    va, vb = verifier().verify(a, now=NOW), verifier().verify(b, now=NOW)
    assert va.cti != vb.cti and len(va.cti) == 16
    assert va.issued_at == NOW and va.expires_at == NOW + TTL


def test_a_rotated_issuer_key_and_list_form_trust_store() -> None:
    token = issue_identity(ALICE, IDP_NEXT, ttl_s=TTL, now=NOW)
    assert verifier().verify(token, now=NOW).kid == IDP_NEXT.kid
    as_list = IdentityVerifier([("idp.corp", IDP_NEXT.verify_key)], RevocationList())
    assert as_list.verify(token, now=NOW).principal == "alice"
    with pytest.raises(UntrustedIssuerError):
        as_list.verify(alice_token(), now=NOW)


def test_audience_that_matches_is_accepted() -> None:
    token = alice_token(audience="gateway.corp")
    assert verifier(audience="gateway.corp").verify(token, now=NOW).audience == "gateway.corp"


def test_claims_set_uses_the_documented_keys() -> None:
    assert claims() == {
        1: "idp.corp", 2: "alice", 4: NOW + TTL, 5: NOW, 6: NOW, 7: CTI,
        -1: "mail-bot", -2: "svc-mail", -3: "s-42", -4: "assistant", -5: ["mail"],
        -6: [{1: "alice", 2: "mail-bot", 3: ["mail"]}],
    }


# --------------------------------------------------------------------------- malformed and foreign input

JWT = (
    b"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImlzcyI6ImlkcC5jb3JwIiwiZXhwIjo5OTk5OTk5OTk5fQ."
)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(b"", id="empty"),
        pytest.param(JWT, id="jwt-alg-none"),
        pytest.param(JWT + b"c2ln", id="jwt-with-signature"),
        pytest.param(JWT.decode(), id="jwt-as-str"),
        pytest.param(bytes(range(256)), id="byte-ramp"),
        pytest.param(b"\xff" * 40, id="breaks"),
        pytest.param(b'{"sub": "alice"}', id="json"),
        pytest.param(None, id="none"),
        pytest.param({"sub": "alice"}, id="dict"),
        pytest.param(dcbor.encode([b"", {}, b"", b"\0" * 64]), id="untagged-array"),
        pytest.param(dcbor.encode(cbor2.CBORTag(61, cbor2.loads(alice_token()))), id="cwt-tag-61"),
        pytest.param(alice_token() + b"\0", id="trailing-byte"),
        pytest.param(alice_token()[:-1], id="truncated"),
        pytest.param(b"\x00" * (identity.MAX_TOKEN_SIZE + 1), id="oversize"),
        pytest.param(cose.sign1(dcbor.encode(claims()), IDP, typ=TYP_IDENTITY, detached=True), id="detached"),
    ],
)
def test_malformed_inputs_are_refused_as_malformed(token) -> None:
    with pytest.raises(MalformedIdentityError):
        verifier().verify(token, now=NOW)


def test_a_non_ed25519_algorithm_is_malformed() -> None:
    token = raw_sign1({1: -7, 4: IDP.kid, 16: TYP_IDENTITY}, dcbor.encode(claims()))
    with pytest.raises(MalformedIdentityError, match="unsupported alg"):
        verifier().verify(token, now=NOW)


def test_non_deterministic_claims_encoding_is_malformed_even_when_signed() -> None:
    # Same map, keys in the wrong order: a second encoding of one claims set
    # would let two different byte strings (two digests) mean the same identity.
    canonical = dcbor.encode({1: "idp.corp", 2: "alice"})
    swapped = b"\xa2" + canonical[11:] + canonical[1:11]
    assert cbor2.loads(swapped) == {1: "idp.corp", 2: "alice"} and swapped != canonical
    with pytest.raises(MalformedIdentityError, match="not deterministic"):
        verifier().verify(signed(swapped), now=NOW)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        pytest.param(["not", "a", "map"], "must be a cbor map", id="array"),
        pytest.param({**claims(), 8: {1: {1: 1}}}, "unknown claim", id="cnf"),
        pytest.param({**claims(), "iss": "idp.corp"}, "unknown claim", id="text-key"),
        pytest.param({**claims(), -7: "x"}, "unknown claim", id="unknown-private"),
        pytest.param(claims(iss=7), "`iss` must be a text", id="iss-int"),
        pytest.param(claims(sub=""), "`sub` must not be empty", id="sub-empty"),
        pytest.param(claims(sub="al\U00030000ce"), "`sub`: string contains", id="sub-outside-alphabet"),
        pytest.param(claims(aud=["a", "b"]), "`aud` must be a text", id="aud-array"),
        pytest.param(claims(exp=True), "`exp` must be a non-negative integer", id="exp-bool"),
        pytest.param(claims(nbf=-5), "`nbf` must be a non-negative integer", id="nbf-negative"),
        pytest.param(claims(iat="now"), "`iat` must be a non-negative integer", id="iat-text"),
        pytest.param(claims(cti="id-1"), "`cti` must be a byte string", id="cti-text"),
        pytest.param(claims(cti=b""), "`cti` must be a byte string", id="cti-empty"),
        pytest.param(claims(cti=bytes(65)), "`cti` must be a byte string", id="cti-long"),
        pytest.param(claims(agent=["mail-bot"]), "`agent` must be a text", id="agent-array"),
        pytest.param(claims(scopes="mail"), "`scopes` must be an array", id="scopes-text"),
        pytest.param(claims(scopes=["mail", "mail"]), "more than once", id="scopes-duplicate"),
        pytest.param(claims(scopes=["mail", 3]), r"`scopes\[1\]` must be a text", id="scope-int"),
        pytest.param(claims(delegation={1: "alice"}), "array of links", id="delegation-map"),
        pytest.param(claims(delegation=[{1: "alice", 2: "mail-bot"}]), "exactly the keys", id="link-short"),
        pytest.param(claims(delegation=[{1: "alice", 2: "mail-bot", 3: ["mail"], 4: 1}]), "exactly the keys",
                     id="link-extra"),
        pytest.param(claims(delegation=[{1: "alice", 2: 5, 3: ["mail"]}]), r"`delegation\[0\]\.to`", id="link-to"),
        pytest.param(claims(exp=NOW), "`exp` .* is not after `iat`", id="exp-at-iat"),
        pytest.param(claims(nbf=NOW + TTL), "`exp` .* is not after `nbf`", id="exp-at-nbf"),
    ],
)
def test_bad_claims_are_malformed(payload, match: str) -> None:
    with pytest.raises(MalformedIdentityError, match=match):
        verifier().verify(signed(payload), now=NOW)


@pytest.mark.parametrize("name", ["iss", "sub", "exp", "iat", "cti"])
def test_each_required_claim_is_required(name: str) -> None:
    with pytest.raises(MissingClaimError, match=f"required claim `{name}`") as info:
        verifier().verify(signed(claims(**{name: None})), now=NOW)
    assert info.value.claim == name


def test_nbf_and_private_claims_are_optional() -> None:
    payload = claims(nbf=None, agent=None, service=None, session=None, role=None, scopes=None, delegation=None)
    assert verifier().verify(signed(payload), now=NOW).to_session_identity() == {"principal": "alice"}


# --------------------------------------------------------------------------- type, keys, signature


@pytest.mark.parametrize("typ", [cose.TYP_RECEIPT, cose.TYP_POLICY, cose.TYP_CHECKPOINT, "application/cwt"])
def test_other_documents_signed_by_a_trusted_key_are_the_wrong_type(typ: str) -> None:
    with pytest.raises(WrongTokenTypeError, match="typ"):
        verifier().verify(signed(claims(), typ=typ), now=NOW)


def test_a_cwt_without_typ_is_the_wrong_type() -> None:
    token = raw_sign1({1: -19, 4: IDP.kid}, dcbor.encode(claims()))
    with pytest.raises(WrongTokenTypeError, match="no protected typ"):
        verifier().verify(token, now=NOW)


def test_a_key_no_issuer_trusts_is_refused() -> None:
    with pytest.raises(UntrustedIssuerError, match="no issuer is trusted with"):
        verifier().verify(issue_identity(ALICE, STRANGER, ttl_s=TTL, now=NOW), now=NOW)


def test_an_unknown_issuer_is_refused_even_with_a_trusted_key() -> None:
    token = issue_identity(dataclasses.replace(ALICE, issuer="evil.example"), IDP, ttl_s=TTL, now=NOW)
    with pytest.raises(UntrustedIssuerError, match="issuer `evil.example` is not trusted"):
        verifier().verify(token, now=NOW)


def test_a_key_trusted_for_another_issuer_cannot_speak_for_this_one() -> None:
    # partner.example's key signs a token claiming to come from idp.corp.
    forged = issue_identity(ALICE, PARTNER, ttl_s=TTL, now=NOW)
    with pytest.raises(UntrustedIssuerError, match=r"not trusted for issuer `idp\.corp`"):
        verifier().verify(forged, now=NOW)
    # ...while its own tokens are fine.
    own = issue_identity(dataclasses.replace(ALICE, issuer="partner.example"), PARTNER, ttl_s=TTL, now=NOW)
    assert verifier().verify(own, now=NOW).issuer == "partner.example"


def test_a_kid_pointing_at_a_trusted_key_with_a_foreign_signature_is_a_bad_signature() -> None:
    # The attacker names idp.corp's kid but signs with their own key.
    token = raw_sign1({1: -19, 4: IDP.kid, 16: TYP_IDENTITY}, dcbor.encode(claims()), key=STRANGER)
    with pytest.raises(BadIdentitySignatureError):
        verifier().verify(token, now=NOW)


def test_claims_swapped_under_a_valid_signature_are_a_bad_signature() -> None:
    good = cbor2.loads(alice_token())
    other = cbor2.loads(alice_token(principal="root", delegation=None))
    spliced = dcbor.encode(cbor2.CBORTag(18, [good.value[0], {}, other.value[2], good.value[3]]))
    with pytest.raises(BadIdentitySignatureError):
        verifier().verify(spliced, now=NOW)


def _flips(token: bytes, masks):
    for i in range(len(token)):
        for mask in masks:
            flipped = bytearray(token)
            flipped[i] ^= mask
            yield i, mask, bytes(flipped)


def _assert_all_refused(variants) -> int:
    v = verifier()
    tried = 0
    for where, token in variants:
        tried += 1
        try:
            v.verify(token, now=NOW)
        except IdentityError:
            continue
        pytest.fail(f"altered token accepted: {where}")
    return tried


def test_every_single_bit_flip_and_every_byte_inversion_is_refused() -> None:
    token = alice_token()
    masks = [1 << b for b in range(8)] + [0xFF]
    tried = _assert_all_refused(((i, m), t) for i, m, t in _flips(token, masks))
    assert tried == len(token) * 9


@pytest.mark.slow
def test_every_single_byte_substitution_is_refused() -> None:
    token = alice_token()
    tried = _assert_all_refused(((i, m), t) for i, m, t in _flips(token, range(1, 256)))
    assert tried == len(token) * 255


def test_every_truncation_and_every_single_byte_deletion_is_refused() -> None:
    token = alice_token()
    variants = [(("cut", n), token[:n]) for n in range(len(token))]
    variants += [(("del", i), token[:i] + token[i + 1:]) for i in range(len(token))]
    assert _assert_all_refused(variants) == 2 * len(token)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_identity_errors(data: bytes) -> None:
    with pytest.raises(IdentityError):
        verifier().verify(data, now=NOW)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_edits_of_a_valid_token_raise_only_identity_errors(data) -> None:
    token = bytearray(alice_token())
    for _ in range(data.draw(st.integers(1, 4))):
        token[data.draw(st.integers(0, len(token) - 1))] = data.draw(st.integers(0, 255))
    if bytes(token) == alice_token():
        return
    with pytest.raises(IdentityError):
        verifier().verify(bytes(token), now=NOW)


# --------------------------------------------------------------------------- time


@pytest.mark.parametrize("skew", [0, 30, 2.5])
def test_expiry_boundary_with_clock_skew(skew) -> None:
    v = verifier(clock_skew_s=skew)
    token = alice_token()
    exp = NOW + TTL
    v.verify(token, now=exp + skew - 1)
    v.verify(token, now=exp + skew - 0.001)
    with pytest.raises(ExpiredIdentityError, match=f"expired at {exp}"):
        v.verify(token, now=exp + skew)
    with pytest.raises(ExpiredIdentityError):
        v.verify(token, now=exp + skew + 1)


@pytest.mark.parametrize("skew", [0, 30, 2.5])
def test_not_before_boundary_with_clock_skew(skew) -> None:
    v = verifier(clock_skew_s=skew)
    nbf = NOW + 100
    token = signed(claims(nbf=nbf))
    v.verify(token, now=nbf - skew)
    with pytest.raises(IdentityNotYetValidError, match=f"not valid before {nbf}"):
        v.verify(token, now=nbf - skew - 0.001)
    with pytest.raises(IdentityNotYetValidError):
        v.verify(token, now=nbf - skew - 1)


def test_a_token_issued_in_the_future_is_not_yet_valid() -> None:
    token = signed(claims(nbf=None, iat=NOW + 100))
    verifier().verify(token, now=NOW + 70)
    with pytest.raises(IdentityNotYetValidError, match="issued in the future"):
        verifier().verify(token, now=NOW + 69)


def test_a_freshly_issued_token_is_valid_on_a_clock_slightly_behind() -> None:
    verifier().verify(alice_token(), now=NOW - 30)
    with pytest.raises(IdentityNotYetValidError):
        verifier().verify(alice_token(), now=NOW - 31)


def test_verify_without_now_uses_the_clock() -> None:
    import time

    token = issue_identity(ALICE, IDP, ttl_s=TTL)
    assert verifier().verify(token).issued_at <= time.time()
    old = issue_identity(ALICE, IDP, ttl_s=TTL, now=NOW - 10_000_000)
    with pytest.raises(ExpiredIdentityError):
        verifier().verify(old)


def test_max_ttl_refuses_long_lived_tokens() -> None:
    v = verifier(max_ttl_s=TTL)
    v.verify(alice_token(), now=NOW)
    long_lived = issue_identity(ALICE, IDP, ttl_s=TTL + 1, now=NOW)
    with pytest.raises(LifetimeTooLongError, match=f"at most {TTL} s"):
        v.verify(long_lived, now=NOW)


# --------------------------------------------------------------------------- audience


@pytest.mark.parametrize(
    ("token_aud", "verifier_aud", "match"),
    [
        ("gateway.other", "gateway.corp", "meant for `gateway.other`, not `gateway.corp`"),
        (None, "gateway.corp", "names no audience"),
        ("gateway.corp", None, "this verifier has no audience"),
    ],
)
def test_audience_mismatch(token_aud, verifier_aud, match: str) -> None:
    with pytest.raises(AudienceMismatchError, match=match):
        verifier(audience=verifier_aud).verify(alice_token(audience=token_aud), now=NOW)


# --------------------------------------------------------------------------- delegation


def link(frm: str, to: str, *scopes: str) -> dict:
    return {1: frm, 2: to, 3: list(scopes)}


@pytest.mark.parametrize(
    ("chain", "scopes", "match"),
    [
        pytest.param([link("bob", "mail-bot", "mail")], ["mail"], "starts at `bob`, not at the principal", id="start"),
        pytest.param([link("alice", "planner", "mail"), link("bob", "mail-bot", "mail")], ["mail"],
                     "link 1 starts at `bob` but link 0 ended at `planner`", id="broken"),
        pytest.param([link("alice", "planner", "mail"), link("planner", "mail-bot", "mail", "admin")], ["mail"],
                     "link 1 widens scopes with `admin`", id="widens"),
        pytest.param([link("alice", "mail-bot", "mail")], ["mail", "drive"], "scopes `drive` exceed", id="final"),
        pytest.param([link("alice", "planner", "mail")], ["mail"], "ends at `planner`, not at the agent", id="end"),
    ],
)
def test_bad_delegation_chains_are_refused(chain, scopes, match: str) -> None:
    with pytest.raises(DelegationError, match=match):
        verifier().verify(signed(claims(delegation=chain, scopes=scopes)), now=NOW)
    # The issuer refuses to mint the same chain.
    with pytest.raises(ValueError, match=match):
        alice_token(
            scopes=tuple(scopes),
            delegation=tuple(Delegation(from_=c[1], to=c[2], scopes=tuple(c[3])) for c in chain),
        )


def test_a_narrowing_multi_hop_chain_is_accepted() -> None:
    chain = (
        Delegation(from_="alice", to="planner", scopes=("mail", "drive")),
        Delegation(from_="planner", to="mail-bot", scopes=("mail",)),
    )
    got = verifier().verify(alice_token(delegation=chain, scopes=()), now=NOW)
    assert got.delegation == chain
    assert got.to_session_identity()["delegation"][0] == {"from": "alice", "to": "planner", "scopes": ["mail", "drive"]}


# --------------------------------------------------------------------------- revocation


def test_revocation_after_issue_by_cti_is_caught_at_reverification() -> None:
    revocation = RevocationList()
    v = verifier(revocation)
    bound = v.verify(alice_token(), now=NOW)
    assert v.reverify(bound, now=NOW + 10) is bound
    revocation.revoke(cti=CTI)
    with pytest.raises(RevokedIdentityError, match=f"token `{CTI.hex()}` is revoked") as info:
        v.reverify(bound, now=NOW + 20)
    assert info.value.by == "cti"
    # Another token of the same principal is unaffected.
    v.verify(alice_token(cti=b"\x02" * 16), now=NOW)


def test_revoking_a_subject_refuses_all_its_tokens_including_later_ones() -> None:
    revocation = RevocationList(subjects=["alice"])
    with pytest.raises(RevokedIdentityError, match="principal `alice` is revoked") as info:
        verifier(revocation).verify(issue_identity(ALICE, IDP, ttl_s=TTL, now=NOW + 100), now=NOW + 100)
    assert info.value.by == "subject"
    verifier(revocation).verify(alice_token(principal="bob", delegation=None), now=NOW)


def test_reverify_refuses_an_expired_identity_and_a_doctored_record() -> None:
    v = verifier()
    bound = v.verify(alice_token(), now=NOW)
    with pytest.raises(ExpiredIdentityError):
        v.reverify(bound, now=NOW + TTL + 30)
    with pytest.raises(MalformedIdentityError, match="does not match the token"):
        v.reverify(dataclasses.replace(bound, principal="root"), now=NOW)


def test_revocation_file_round_trip_and_reload(tmp_path) -> None:
    path = tmp_path / "revoked.json"
    path.write_text(json.dumps({"cti": [CTI.hex().upper()], "subjects": ["mallory"]}))
    revocation = RevocationList.load(path)
    assert revocation.to_json() == {"cti": [CTI.hex()], "subjects": ["mallory"]}
    assert len(revocation) == 2
    with pytest.raises(RevokedIdentityError):
        verifier(revocation).verify(alice_token(), now=NOW)
    path.write_text(json.dumps({"subjects": ["bob"]}))
    revocation.reload(path)
    assert revocation.to_json() == {"cti": [], "subjects": ["bob"]}
    verifier(revocation).verify(alice_token(), now=NOW)
    path.write_text(json.dumps(revocation.to_json()))
    assert RevocationList.load(path).to_json() == revocation.to_json()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "not valid json"),
        ("[]", "must be a json object"),
        ('{"cti": [], "cti": []}', "duplicate key `cti`"),
        ('{"ctis": []}', "unknown key"),
        ('{"cti": "00"}', "`cti` must be an array"),
        ('{"cti": ["zz"]}', r"cti\[0\] must be 1 to 64 bytes as hex"),
        ('{"cti": [""]}', r"cti\[0\]"),
        ('{"cti": [7]}', r"cti\[0\]"),
        ('{"subjects": [""]}', r"subjects\[0\] must be a non-empty string"),
        ('{"subjects": [null]}', r"subjects\[0\]"),
    ],
)
def test_bad_revocation_files_are_refused_and_reload_keeps_the_old_list(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "revoked.json"
    path.write_text(text)
    with pytest.raises(RevocationFileError, match=match):
        RevocationList.load(path)
    kept = RevocationList(ctis=[CTI])
    with pytest.raises(RevocationFileError):
        kept.reload(path)
    assert kept.to_json() == {"cti": [CTI.hex()], "subjects": []}


def test_a_missing_revocation_file_is_an_error(tmp_path) -> None:
    with pytest.raises(RevocationFileError, match="cannot read"):
        RevocationList.load(tmp_path / "absent.json")


def test_revoke_argument_checks() -> None:
    revocation = RevocationList()
    with pytest.raises(ValueError, match="needs a cti, a subject or both"):
        revocation.revoke()
    with pytest.raises(TypeError):
        revocation.revoke(cti=CTI.hex())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        revocation.revoke(subject="")
    assert len(revocation) == 0


def test_revocation_is_thread_safe_and_seen_by_concurrent_verifiers() -> None:
    revocation = RevocationList()
    v = verifier(revocation)
    tokens = [alice_token(cti=i.to_bytes(16, "big")) for i in range(40)]
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def revoker(base: int) -> None:
        start.wait()
        for i in range(500):
            revocation.revoke(cti=(base * 1000 + i + 100).to_bytes(16, "big"), subject=f"user-{base}-{i}")

    def checker() -> None:
        start.wait()
        try:
            for _ in range(5):
                for token in tokens:
                    v.verify(token, now=NOW)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=revoker, args=(b,)) for b in range(4)]
    threads += [threading.Thread(target=checker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(revocation) == 4 * 500 * 2
    revocation.revoke(cti=(7).to_bytes(16, "big"))
    with pytest.raises(RevokedIdentityError):
        v.verify(tokens[7], now=NOW)


def test_a_remembered_token_is_still_checked_against_revocation_and_the_clock() -> None:
    for size in (1024, 0):
        revocation = RevocationList()
        v = verifier(revocation, cache_size=size)
        token = alice_token()
        first = v.verify(token, now=NOW)
        assert v.verify(bytearray(token), now=NOW + 1) == first
        with pytest.raises(ExpiredIdentityError):
            v.verify(token, now=NOW + TTL + 30)
        with pytest.raises(IdentityNotYetValidError):
            v.verify(token, now=NOW - 31)
        revocation.revoke(subject="alice")
        with pytest.raises(RevokedIdentityError):
            v.verify(token, now=NOW)


def test_the_cache_is_bounded_and_holds_only_accepted_tokens() -> None:
    v = verifier(cache_size=2)
    for i in range(5):
        v.verify(alice_token(cti=bytes([i + 1]) * 16), now=NOW)
    assert len(v._cache) == 2
    for i in range(3, 5):
        assert alice_token(cti=bytes([i + 1]) * 16) in v._cache
    v = verifier()
    with pytest.raises(AudienceMismatchError):
        v.verify(alice_token(audience="elsewhere"), now=NOW)
    with pytest.raises(ExpiredIdentityError):
        v.verify(alice_token(), now=NOW + TTL + 30)
    assert len(v._cache) == 0
    with pytest.raises(ValueError, match="cache_size"):
        verifier(cache_size=-1)


# --------------------------------------------------------------------------- interop


def test_signature_verifies_with_an_independent_ed25519_over_the_sig_structure() -> None:
    token = alice_token()
    # Plain cbor2 and pyca/cryptography only: nothing from aarm_runtime below.
    message = cbor2.loads(token)
    assert message.tag == 18
    protected, unprotected, payload, signature = message.value
    assert unprotected == {}
    header = cbor2.loads(protected)
    assert header[1] == -19
    assert header[16] == "application/aarm-identity+cwt"
    x = IDP.verify_key.public_bytes
    assert header[4] == hashlib.sha256(cbor2.dumps({1: 1, -1: 6, -2: x}, canonical=True)).digest()
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    public = Ed25519PublicKey.from_public_bytes(x)
    public.verify(signature, to_be_signed)
    with pytest.raises(PycaInvalidSignature):
        public.verify(signature, to_be_signed[:-1] + bytes([to_be_signed[-1] ^ 1]))
    assert cbor2.loads(payload)[2] == "alice"


def test_a_token_made_by_an_independent_implementation_verifies() -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    x = private.public_key().public_bytes_raw()
    kid = hashlib.sha256(cbor2.dumps({1: 1, -1: 6, -2: x}, canonical=True)).digest()
    # Every map here has keys of one encoded length, where cbor2's canonical
    # order coincides with RFC 8949 §4.2.1.
    protected = cbor2.dumps({1: -19, 4: kid, 16: "application/aarm-identity+cwt"}, canonical=True)
    payload = cbor2.dumps(
        {1: "idp.corp", 2: "alice", 4: NOW + 60, 6: NOW, 7: b"\x09" * 8, -1: "mail-bot",
         -6: [{1: "alice", 2: "mail-bot", 3: []}]},
        canonical=True,
    )
    signature = private.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    token = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))
    got = verifier().verify(token, now=NOW)
    assert got.to_session_identity() == {
        "principal": "alice", "agent": "mail-bot", "delegation": [{"from": "alice", "to": "mail-bot", "scopes": []}]
    }


# --------------------------------------------------------------------------- API guards


def test_every_refusal_has_its_own_reason_code() -> None:
    classes = [c for c in vars(identity).values() if isinstance(c, type) and issubclass(c, IdentityError)]
    assert len(classes) == 12
    assert len({c.reason for c in classes}) == len(classes)


def test_verifier_configuration_errors() -> None:
    with pytest.raises(ValueError, match="no trusted issuers"):
        IdentityVerifier({}, RevocationList())
    with pytest.raises(TypeError):
        IdentityVerifier({"idp.corp": IDP}, RevocationList())  # a signing key is not a trust anchor
    with pytest.raises(TypeError):
        IdentityVerifier([IDP.verify_key], RevocationList())
    with pytest.raises(TypeError):
        IdentityVerifier({"idp.corp": IDP.verify_key}, set())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clock_skew_s"):
        verifier(clock_skew_s=-1)
    with pytest.raises(ValueError, match="max_ttl_s"):
        verifier(max_ttl_s=0)
    with pytest.raises(TypeError, match="now"):
        verifier().verify(alice_token(), now="today")  # type: ignore[arg-type]


def test_issue_argument_checks() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        issue_identity(ALICE, IDP, ttl_s=0, now=NOW)
    with pytest.raises(ValueError, match="ttl_s"):
        issue_identity(ALICE, IDP, ttl_s=1.5, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        issue_identity(ALICE, IDP.verify_key, ttl_s=TTL, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        Identity(issuer="idp.corp", principal="")
    with pytest.raises(ValueError, match="more than once"):
        Identity(issuer="idp.corp", principal="alice", scopes=("a", "a"))
    with pytest.raises(TypeError):
        Identity(issuer="idp.corp", principal="alice", scopes="mail")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Identity(issuer="idp.corp", principal="alice", delegation=({"from": "alice"},))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cti"):
        Identity(issuer="idp.corp", principal="alice", cti=b"")
    with pytest.raises(ValueError, match="cannot be encoded"):
        issue_identity(Identity(issuer="idp.corp", principal="al\ud800"), IDP, ttl_s=TTL, now=NOW)
    assert Identity(issuer="i", principal="p", scopes=["a", "b"]).scopes == ("a", "b")  # type: ignore[arg-type]


names = st.text(st.characters(codec="utf-8", max_codepoint=0x2FFFF), min_size=1, max_size=12)
scope_sets = st.lists(names, unique=True, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None)
@given(principal=names, agent=st.none() | names, role=st.none() | names, scopes=st.none() | scope_sets)
def test_round_trip_of_generated_identities(principal, agent, role, scopes) -> None:
    chain = None
    if agent is not None and scopes is not None:
        chain = (Delegation(from_=principal, to=agent, scopes=scopes),)
    claimed = Identity(issuer="idp.corp", principal=principal, agent=agent, role=role, scopes=scopes,
                       delegation=chain)
    got = verifier().verify(issue_identity(claimed, IDP, ttl_s=TTL, now=NOW), now=NOW)
    assert (got.principal, got.agent, got.role, got.scopes, got.delegation) == (principal, agent, role, scopes, chain)


def test_doctests() -> None:
    assert doctest.testmod(identity).failed == 0


def test_verified_identity_is_exported() -> None:
    assert VerifiedIdentity.__name__ in identity.__all__
