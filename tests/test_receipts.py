"""Receipt payloads: key numbering, deterministic encoding, strict parsing, the COSE envelope, the state machine.

The fast paths (cbor2's encoder over ascending one-byte keys, hand-built
COSE_Sign1, cbor2 decode + re-encode) are held to the reference ones
(`dcbor.encode` / `dcbor.decode_strict`, `cose.sign1`), and receipts are
verified by an independent Ed25519 implementation (pyca/cryptography).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature as PycaInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from aarm_runtime import cose, dcbor, keys, receipt_log
from aarm_runtime import receipts as R
from aarm_runtime.decision import Decision
from aarm_runtime.receipt_log import ReceiptLog
from aarm_runtime.receipts import Kind, ReceiptFormatError, Record, StateError, StateMachine
from aarm_runtime.verify import Status, verify_log

from test_receipt_log import KEY_A, write_sample_log

SK = keys.SigningKey.from_seed(bytes(range(100, 132)))

texts = st.text(max_size=12)
hashes = st.binary(min_size=32, max_size=32)
uints = st.integers(min_value=0, max_value=2**64 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def actions(draw: Any) -> R.Action:
    return R.Action.of(draw(texts), draw(json_values), include_params=draw(st.booleans()),
                       wrapper=draw(st.none() | texts))


@st.composite
def decision_infos(draw: Any) -> R.DecisionInfo:
    effect = draw(st.sampled_from(["allow", "deny", "modify", "step_up", "defer"]))
    params = draw(json_values)
    d = Decision(decision=effect, rules=tuple(draw(st.lists(texts, max_size=3))), reason=draw(texts),
                 message=draw(texts), params=params if effect == "modify" else None,
                 approvers=tuple(draw(st.lists(texts, max_size=2))),
                 timeout_s=draw(st.none() | st.integers(0, 10**6)))
    return R.DecisionInfo.from_decision(d, include_params=draw(st.booleans()))


identities = st.builds(
    R.Identity, principal=st.none() | texts, agent=st.none() | texts, service=st.none() | texts,
    role=st.none() | texts, scopes=st.lists(texts, max_size=3).map(tuple),
    delegation=st.lists(texts, max_size=3).map(tuple), assertion_digest=st.none() | hashes,
)
policies = st.builds(R.PolicyRef, digest=hashes, policy=texts, version=texts)


@st.composite
def outcomes(draw: Any) -> R.Outcome:
    start = draw(st.integers(0, 2**63))
    return R.Outcome(ok=draw(st.booleans()), start_ns=start, end_ns=start + draw(st.integers(0, 2**40)),
                     output_digest=draw(st.none() | hashes), error=draw(st.none() | texts))


@st.composite
def records(draw: Any) -> Record:
    kind = draw(st.sampled_from(list(Kind)))
    opt = lambda s: draw(st.none() | s)  # noqa: E731
    f: dict[str, Any] = {"note": opt(texts)}
    if kind in (Kind.SESSION_START, Kind.SESSION_END, Kind.DECISION, Kind.APPROVAL, Kind.DEFERRAL_RESOLUTION,
                Kind.OUTCOME):
        f["session"] = draw(texts)
        f["context"] = opt(hashes)
    if kind == Kind.SESSION_START:
        f.update(identity=opt(identities), policy=opt(policies))
    elif kind == Kind.DECISION:
        f.update(decision_id=draw(texts), action_id=opt(texts), action=draw(actions()), decision=draw(decision_infos()),
                 policy=opt(policies), identity=opt(identities))
    elif kind == Kind.APPROVAL:
        f.update(ref=draw(texts), approver=draw(texts), action_id=opt(texts), action=opt(actions()),
                 resolution=R.Resolution(verdict=draw(st.sampled_from(R.APPROVAL_VERDICTS))))
    elif kind == Kind.DEFERRAL_RESOLUTION:
        f.update(ref=draw(texts), approver=opt(texts), action_id=opt(texts),
                 resolution=R.Resolution(verdict=draw(st.sampled_from(R.RESOLUTION_VERDICTS)),
                                         next_decision=opt(texts)))
    elif kind == Kind.OUTCOME:
        f.update(ref=draw(texts), action_id=opt(texts), outcome=draw(outcomes()))
    elif kind == Kind.KEY_ROTATION:
        f["rotation"] = R.Rotation(public_key=draw(st.binary(min_size=32, max_size=32)),
                                   proof=draw(st.binary(min_size=64, max_size=64)))
    elif kind == Kind.RECOVERY:
        f["recovery"] = R.Recovery(offset=draw(uints), length=draw(uints), digest=draw(hashes))
    elif kind == Kind.LOG_CLOSE:
        f["close"] = R.Close(checkpoints=draw(uints))
    return Record(kind=kind, **f)


receipts_ = st.builds(R.Receipt, log_id=st.binary(min_size=16, max_size=16), seq=uints, prev=hashes, time_ns=uints,
                      record=records())


def _walk_maps(value: Any, path: str = "payload") -> list[tuple[str, Any]]:
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((path, k))
            out.extend(_walk_maps(v, f"{path}.{k}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_walk_maps(v, f"{path}[{i}]"))
    return out


# ----------------------------------------------------------------------------- encoding


@settings(max_examples=300, deadline=None)
@given(receipts_)
def test_fast_encoding_is_deterministic_cbor_and_round_trips(receipt: R.Receipt) -> None:
    data = R.encode_payload(receipt)
    value = dcbor.decode_strict(data)  # the reference decoder accepts it ...
    assert dcbor.encode(value) == data  # ... and its own encoding is the same bytes
    assert R.decode_payload(data) == receipt
    # The pitfall of RECEIPTS.md: integer keys in -24..23 in every map, nested ones included.
    for _, key in _walk_maps(value):
        assert isinstance(key, int) and -24 <= key <= 23


@settings(max_examples=300, deadline=None)
@given(receipts_, st.data())
def test_strict_parser_agrees_with_the_reference(receipt: R.Receipt, data: st.DataObject) -> None:
    raw = bytearray(R.encode_payload(receipt))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    mutated = bytes(raw)
    try:
        parsed = R.decode_payload(mutated)
    except ReceiptFormatError:
        return
    # Whatever the fast parser accepts, the reference accepts too, and they agree on the content.
    assert R.encode_payload(parsed) == mutated
    assert dcbor.encode(dcbor.decode_strict(mutated)) == mutated


def test_sample_log_uses_only_small_integer_keys(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path)
    data = path.read_bytes()
    spans, _ = R.split_items(data)
    seen = 0
    for s, e in spans:
        item = R.parse_item(data[s:e])
        if isinstance(item, R.RecordItem):
            for where, key in _walk_maps(dcbor.decode_strict(item.payload)):
                assert isinstance(key, int) and 0 <= key <= 23, where
            seen += 1
    assert seen > 30


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        # duplicate key 0
        (lambda m: b"\xa7\x00\x01\x00\x01" + m[3:], "not deterministic"),
        # non-shortest integer for the version
        (lambda m: b"\xa6\x00\x18\x01" + m[3:], "not deterministic"),
        # indefinite-length map
        (lambda m: b"\xbf" + m[1:] + b"\xff", "not deterministic"),
    ],
)
def test_strict_parser_rejects_encoding_tricks(bad: Any, fragment: str) -> None:
    r = R.Receipt(log_id=bytes(16), seq=0, prev=bytes(32), time_ns=1, record=Record(kind=Kind.LOG_OPEN))
    good = R.encode_payload(r)
    assert good[:3] == b"\xa6\x00\x01"
    with pytest.raises(ReceiptFormatError, match=fragment):
        R.decode_payload(bad(good))


def test_strict_parser_rejects_unsorted_unknown_and_misplaced_fields() -> None:
    base = {0: 1, 1: bytes(16), 2: 0, 3: [-16, bytes(32)], 4: 0, 5: 7}
    assert R.decode_payload(cbor2.dumps(base)).kind == Kind.LOG_OPEN
    unsorted = dict(reversed(list(base.items())))
    with pytest.raises(ReceiptFormatError, match="ascending"):
        R.decode_payload(cbor2.dumps(unsorted))
    with pytest.raises(ReceiptFormatError, match="unknown key `22`"):
        R.decode_payload(cbor2.dumps({**base, 22: "x"}))
    with pytest.raises(ReceiptFormatError, match="cannot carry `session`"):
        R.decode_payload(cbor2.dumps({**base, 6: "s"}))
    with pytest.raises(ReceiptFormatError, match="needs `close`"):
        R.decode_payload(cbor2.dumps({**base, 4: 9}))
    with pytest.raises(ReceiptFormatError, match="digest"):
        R.decode_payload(cbor2.dumps({**base, 3: [-17, bytes(32)]}))
    with pytest.raises(ReceiptFormatError, match="kind 10 is unknown"):
        R.decode_payload(cbor2.dumps({**base, 4: 10}))
    with pytest.raises(ReceiptFormatError, match="version"):
        R.decode_payload(cbor2.dumps({**base, 0: 2}))
    with pytest.raises(ReceiptFormatError):
        R.decode_payload(cbor2.dumps({**base, 5: 1.5}))
    with pytest.raises(ReceiptFormatError, match="unsigned"):
        R.decode_payload(cbor2.dumps({**base, 2: 2**64}))  # a bignum seq


def test_params_json_must_match_its_digest_and_be_canonical() -> None:
    action = R.Action.of("t.x", {"b": 1, "a": [True, None]}, include_params=True)
    assert action.params_json == '{"a":[true,null],"b":1}'
    assert action.params_digest == hashlib.sha256(action.params_json.encode()).digest()
    assert R.Action.of("t.x", {"b": 1}).params_json is None
    with pytest.raises(ValueError, match="does not match its digest"):
        Record(kind=Kind.DECISION, session="s", decision_id="d",
               action=R.Action(tool="t.x", params_digest=bytes(32), params_json="{}"),
               decision=R.DecisionInfo(effect="allow"))
    text = '{"b":1, "a":2}'  # not canonical, but with a matching digest
    payload = {0: 1, 1: bytes(16), 2: 1, 3: [-16, bytes(32)], 4: 2, 5: 0, 6: "s", 8: "d",
               9: {0: "t.x", 1: [-16, hashlib.sha256(text.encode()).digest()], 2: text},
               10: {0: "allow", 1: [], 2: "", 3: ""}}
    with pytest.raises(ReceiptFormatError, match="canonical"):
        R.decode_payload(cbor2.dumps(payload))


def test_modify_keeps_both_param_sets() -> None:
    d = Decision(decision="modify", rules=("redact",), reason="rule", message="m", params={"to": "a@b.example"})
    rec = R.decision_record(session="s", decision_id="d", tool="mail.send",
                            params={"to": "a@b.example", "bcc": "x@y.example"}, decision=d, include_params=True)
    assert rec.action.params_json == '{"bcc":"x@y.example","to":"a@b.example"}'
    assert rec.decision.params_json == '{"to":"a@b.example"}'
    assert rec.decision.params_digest == R.digest_json({"to": "a@b.example"})
    hidden = R.decision_record(session="s", decision_id="d", tool="mail.send", params={}, decision=d)
    assert hidden.decision.params_json is None and hidden.decision.params_digest is not None


def test_record_shapes_are_enforced() -> None:
    with pytest.raises(ValueError, match="needs `session`"):
        Record(kind=Kind.SESSION_START)
    with pytest.raises(ValueError, match="cannot carry `identity`"):
        Record(kind=Kind.OUTCOME, session="s", ref="d", outcome=R.Outcome(ok=True, start_ns=0, end_ns=0),
               identity=R.Identity())
    with pytest.raises(ValueError, match="verdict `resolved` is not one of"):
        R.approval_record(session="s", ref="d", approver="c", verdict="resolved")
    with pytest.raises(ValueError, match="verdict `approved` is not one of"):
        R.resolution_record(session="s", ref="d", verdict="approved")
    with pytest.raises(ValueError, match="ends .* before it starts"):
        R.Outcome(ok=True, start_ns=5, end_ns=4)
    with pytest.raises(ValueError, match="effect `maybe`"):
        R.DecisionInfo(effect="maybe")
    with pytest.raises(TypeError, match="32-byte"):
        Record(kind=Kind.SESSION_START, session="s", context=b"short")
    with pytest.raises(TypeError, match="sequence of text"):
        R.Identity(scopes="read")


def test_record_shape_cache_never_skips_a_check() -> None:
    """Records are checked by the tuple of their field types, remembered once valid: a remembered shape
    still checks values (context length, params digest, verdicts), and every other shape is checked in full."""
    info = R.DecisionInfo(effect="allow", rules=("r",))
    action = R.Action.of("t.x", {"a": 1})

    def dec(**kw: Any) -> Record:
        fields = {"kind": Kind.DECISION, "session": "s", "decision_id": "d", "action": action, "decision": info,
                  "context": bytes(32)}
        return Record(**{**fields, **kw})

    for _ in range(2):  # the second round runs with the shape remembered
        dec()
        with pytest.raises(TypeError, match="32-byte"):
            dec(context=bytes(31))
        with pytest.raises(TypeError, match="session must be `str`, got `bytes`"):
            dec(session=b"s")
        with pytest.raises(TypeError, match="decision must be `DecisionInfo`"):
            dec(decision=action)
        with pytest.raises(ValueError, match="needs `decision`"):
            dec(decision=None)
        with pytest.raises(ValueError, match="cannot carry `approver`"):
            dec(approver="carol")
        with pytest.raises(ValueError, match="params json does not match"):
            dec(action=R.Action(tool="t.x", params_digest=bytes(32), params_json="{}"))
        with pytest.raises(ValueError, match="verdict `resolved`"):
            Record(kind=Kind.APPROVAL, session="s", ref="d", approver="c", resolution=R.Resolution("resolved"))
        Record(kind=Kind.APPROVAL, session="s", ref="d", approver="c", resolution=R.Resolution("approved"))
    assert Record(kind=2, session="s", decision_id="d", action=action, decision=info).kind is Kind.DECISION


def test_action_checks_in_both_paths() -> None:
    class Text(str):
        pass

    assert R.Action(tool=Text("t"), params_digest=bytes(32)).tool == "t"  # the general path takes subclasses
    with pytest.raises(TypeError, match="action tool must be text"):
        R.Action(tool=1, params_digest=bytes(32))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="32-byte"):
        R.Action(tool="t", params_digest=bytes(31))
    with pytest.raises(TypeError, match="action wrapper must be text"):
        R.Action(tool="t", params_digest=bytes(32), wrapper=b"w")  # type: ignore[arg-type]


long_texts = st.one_of(st.text(max_size=30), st.integers(20, 300).map(lambda n: "é" * n),
                       st.sampled_from(["x" * 23, "x" * 24, "x" * 255, "x" * 256, "x" * 65535, "x" * 65536]))


@settings(max_examples=200, deadline=None)
@given(receipts_, long_texts, st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]))
def test_writer_encoder_equals_the_reference(receipt: R.Receipt, text: str, number: int) -> None:
    """`encode_payload` builds bytes by hand, with sub-maps remembered per object: always dcbor's bytes."""
    assert R.encode_payload(receipt) == dcbor.encode(R._payload_map(receipt))
    rec = receipt.record
    varied = R.Receipt(log_id=receipt.log_id, seq=number, prev=receipt.prev, time_ns=number,
                       record=dataclasses.replace(rec, note=text))
    for r in (varied, varied):  # the second time from the remembered sub-maps
        assert R.encode_payload(r) == dcbor.encode(R._payload_map(r))
    header = R.protected_receipt_header(SK.kid, text, text, number)
    assert header == dcbor.encode({1: -19, 4: SK.kid, 15: {1: text, 2: text, 6: number}, 16: cose.TYP_RECEIPT})


def test_receipt_envelope_takes_exactly_the_shortest_heads() -> None:
    """`parse_item` reads a receipt's envelope by hand; every payload size takes its one encoding."""
    for size in (0, 23, 24, 255, 256, 65535, 65536):
        r = R.Receipt(log_id=bytes(16), seq=0, prev=bytes(32), time_ns=5 * 10**9,
                      record=Record(kind=Kind.LOG_OPEN, note="n" * size))
        payload = R.encode_payload(r)
        good = R.sign_receipt(payload, SK, issuer="i", subject=r.subject, iat=5)
        assert good == cose.sign1(payload, SK, typ=cose.TYP_RECEIPT, cwt_claims={1: "i", 2: r.subject, 6: 5})
        assert R.parse_item(good).receipt == r
        assert R.scan_receipt(good) is not None
        # The same item with the payload's length in a longer head than needed: well-formed, not deterministic.
        head = len(R._bstr_head(len(payload)))
        at = good.index(payload) - head
        for marker, width in ((0x58, 1), (0x59, 2), (0x5A, 4), (0x5B, 8)):
            if 1 + width <= head or len(payload) >= 1 << 8 * width:
                continue
            longer = bytes((marker,)) + len(payload).to_bytes(width, "big")
            bad = good[:at] + longer + good[at + head:]
            assert cbor2.loads(bad).value[2] == payload
            assert R.scan_receipt(bad) is None
            with pytest.raises(ReceiptFormatError, match="not deterministic"):
                R.parse_item(bad)
    for cut in (1, 3, 10, 70):
        assert R.scan_receipt(good[:-cut]) is None
        with pytest.raises(ReceiptFormatError):
            R.parse_item(good[:-cut])
    with pytest.raises(ReceiptFormatError, match="not deterministic"):
        R.parse_item(good + b"\x00")


@pytest.mark.parametrize(("key", "fragment"), [(True, "unknown key `True`"), (1.0, "unknown key `1.0`"),
                                               (30, "unknown key `30`"), ("6", "unknown key `'6'`")])
def test_strict_parser_wants_integer_keys(key: Any, fragment: str) -> None:
    # A bool or float key equals an int key as a dict key; the parser looks at the key types too.
    items = [(0, 1), (1, bytes(16)), (2, 0), (3, [-16, bytes(32)]), (4, 0), (5, 7)]
    if key in (True, 1.0):
        items[1] = (key, bytes(16))  # in the place of key 1: only its type is wrong
    else:
        items.append((key, "x"))
    data = cbor2.dumps(dict(items))
    assert type(list(cbor2.loads(data))[1]) is type(key) or key not in (True, 1.0)
    with pytest.raises(ReceiptFormatError, match=fragment):
        R.decode_payload(data)


def test_identity_from_session_file_section() -> None:
    i = R.Identity.from_mapping({"principal": "alice", "agent": "bot", "scopes": ["a", "b"],
                                 "delegation": ["carol", {"by": "dave", "exp": 5}]})
    assert i.principal == "alice" and i.scopes == ("a", "b")
    assert i.delegation == ("carol", '{"by":"dave","exp":5}')


# ----------------------------------------------------------------------------- the COSE envelope


def _sample_receipt() -> R.Receipt:
    rec = R.decision_record(session="sess-1", decision_id="d-1", action_id="a-1", tool="mail.send",
                            params={"to": "bob@x.example"},
                            decision=Decision(decision="deny", rules=("r1",), reason="rule", message="no"),
                            policy=R.PolicyRef(digest=bytes(range(32)), policy="p", version="1"),
                            identity=R.Identity(principal="alice"), context=bytes(range(1, 33)))
    return R.Receipt(log_id=bytes(range(16)), seq=7, prev=bytes(range(2, 34)), time_ns=1_767_225_600_123_456_789,
                     record=rec)


def test_fast_signer_matches_cose_sign1_byte_for_byte() -> None:
    r = _sample_receipt()
    payload = R.encode_payload(r)
    claims = {1: "aarm-runtime", 2: r.subject, 6: r.time_ns // 10**9}
    expected = cose.sign1(payload, SK, typ=cose.TYP_RECEIPT, cwt_claims=claims)
    assert R.sign_receipt(payload, SK, issuer="aarm-runtime", subject=r.subject, iat=claims[6]) == expected
    msg = cose.verify1(expected, [SK.verify_key], typ=cose.TYP_RECEIPT)
    assert msg.cwt_claims == claims and msg.kid == SK.kid and msg.alg == cose.ALG_ED25519


def test_receipts_verify_with_an_independent_ed25519(tmp_path: Path) -> None:
    """pyca/cryptography (OpenSSL) checks each record over a Sig_structure assembled here with cbor2."""
    path = tmp_path / "log.cbor"
    write_sample_log(path, rotate=False)
    data = path.read_bytes()
    public = Ed25519PublicKey.from_public_bytes(KEY_A.verify_key.public_bytes)
    spans, _ = R.split_items(data)
    checked = 0
    for s, e in spans:
        tag = cbor2.loads(data[s:e])
        assert tag.tag == 18
        protected, unprotected, payload, signature = tag.value
        if payload is None:
            continue  # checkpoints: detached root, checked in test_verify
        to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
        public.verify(signature, to_be_signed)
        assert cbor2.loads(protected)[16] == "application/aarm-receipt+cose"
        with pytest.raises(PycaInvalidSignature):
            public.verify(signature, to_be_signed[:-1] + bytes([to_be_signed[-1] ^ 1]))
        checked += 1
    assert checked > 30


def test_parse_item_checks_typ_and_layout() -> None:
    r = _sample_receipt()
    payload = R.encode_payload(r)
    claims = {1: "i", 2: r.subject, 6: r.time_ns // 10**9}
    good = cose.sign1(payload, SK, typ=cose.TYP_RECEIPT, cwt_claims=claims)
    assert R.parse_item(good).receipt == r
    as_policy = cose.sign1(payload, SK, typ=cose.TYP_POLICY, cwt_claims=claims)
    with pytest.raises(ReceiptFormatError, match="typ is `application/aarm-policy\\+cose`"):
        R.parse_item(as_policy)
    wrong_sub = cose.sign1(payload, SK, typ=cose.TYP_RECEIPT, cwt_claims={**claims, 2: "other"})
    with pytest.raises(ReceiptFormatError, match="cwt sub"):
        R.parse_item(wrong_sub)
    wrong_iat = cose.sign1(payload, SK, typ=cose.TYP_RECEIPT, cwt_claims={**claims, 6: claims[6] + 1})
    with pytest.raises(ReceiptFormatError, match="iat"):
        R.parse_item(wrong_iat)
    no_claims = cose.sign1(payload, SK, typ=cose.TYP_RECEIPT)
    with pytest.raises(ReceiptFormatError, match="labels"):
        R.parse_item(no_claims)
    with_unprotected = cose.sign1(payload, SK, typ=cose.TYP_RECEIPT, cwt_claims=claims, unprotected={33: 1})
    with pytest.raises(ReceiptFormatError, match="unprotected header must be empty"):
        R.parse_item(with_unprotected)
    eddsa = cose.sign1(payload, SK, typ=cose.TYP_RECEIPT, cwt_claims=claims, alg=cose.ALG_EDDSA)
    assert R.parse_item(eddsa).alg == cose.ALG_EDDSA
    with pytest.raises(ReceiptFormatError, match="tagged cose_sign1"):
        R.parse_item(cbor2.dumps(cbor2.CBORTag(98, [])))


def test_split_items_tells_torn_tails_from_hidden_items(tmp_path: Path) -> None:
    path = tmp_path / "log.cbor"
    write_sample_log(path)
    data = path.read_bytes()
    spans, tail = R.split_items(data)
    assert tail is None and spans[-1][1] == len(data)
    last_start = spans[-1][0]
    for cut in range(last_start + 1, len(data)):
        got, tail = R.split_items(data[:cut])
        assert got == spans[:-1] and tail is not None and tail.torn and tail.offset == last_start
    got, tail = R.split_items(data + bytes(100))
    assert got == spans and tail.torn and tail.length == 100
    # Make an early record claim a longer payload: it swallows complete items, which is not a crash.
    s, e = spans[3]
    item = data[s:e]
    assert item[:3] == b"\xd2\x84\x58"
    p = 5 + item[3]  # protected header bstr, then the empty unprotected map, then the payload's head
    head = {0x58: 2, 0x59: 3}[item[p]]
    forged = data[:s] + item[:p] + b"\x5a" + (10**6).to_bytes(4, "big") + item[p + head:] + data[e:]
    got, tail = R.split_items(forged)
    assert got == spans[:3] and tail is not None and not tail.torn and "over a complete item" in tail.message
    at = spans[1][0]
    got, tail = R.split_items(data[:at] + b"\xff" + data[at + 1:])  # a lone "break" byte: malformed
    assert got == spans[:1] and tail is not None and not tail.torn and "malformed" in tail.message


# ----------------------------------------------------------------------------- state machine


def _start(s: str) -> Record:
    return R.session_start_record(s)


def _dec(s: str, did: str, effect: str, action_id: str | None = None) -> Record:
    return R.decision_record(session=s, decision_id=did, action_id=action_id, tool="t.x", params={},
                             decision=Decision(decision=effect, rules=(), reason="rule", message=""))


def _run(*records: Record, remember: int | None = None) -> StateMachine:
    sm = StateMachine(remember=remember)
    sm.apply(Record(kind=Kind.LOG_OPEN))
    for r in records:
        sm.apply(r)
    return sm


def test_state_machine_accepts_the_documented_order() -> None:
    sm = _run(
        _start("s"),
        _dec("s", "d1", "step_up", "a1"),
        R.approval_record(session="s", ref="d1", approver="c", verdict="approved", action_id="a1"),
        R.outcome_record(session="s", ref="d1", ok=True, start_ns=0, end_ns=1),
        _dec("s", "d2", "defer", "a2"),
        R.resolution_record(session="s", ref="d2", verdict="resolved", next_decision="d3"),
        _dec("s", "d3", "modify", "a2"),
        R.outcome_record(session="s", ref="d3", ok=True, start_ns=0, end_ns=1),
        R.session_end_record("s"),
        Record(kind=Kind.LOG_CLOSE, close=R.Close(checkpoints=0)),
    )
    assert sm.closed and sm.records == 11


@pytest.mark.parametrize(
    ("records", "fragment"),
    [
        ((Record(kind=Kind.LOG_OPEN),), "log-open must be the first"),
        ((_start("s"), _start("s")), "started twice"),
        ((R.session_end_record("s"),), "never started"),
        ((_start("s"), R.session_end_record("s"), R.session_end_record("s")), "ends twice"),
        ((_dec("s", "d", "allow"),), "before its session-start"),
        ((_start("s"), R.session_end_record("s"), _dec("s", "d", "allow")), "after session `s` ended"),
        ((_start("s"), _dec("s", "d", "allow"), _dec("s", "d", "deny")), "second decision record"),
        ((_start("s"), R.outcome_record(session="s", ref="d", ok=True, start_ns=0, end_ns=0)), "no earlier record"),
        ((_start("s"), _start("t"), _dec("s", "d", "allow"),
          R.outcome_record(session="t", ref="d", ok=True, start_ns=0, end_ns=0)), "decision in `s`"),
        ((_start("s"), _dec("s", "d", "allow", "a"),
          R.outcome_record(session="s", ref="d", action_id="b", ok=True, start_ns=0, end_ns=0)), "names action `b`"),
        ((_start("s"), _dec("s", "d", "allow"), R.approval_record(session="s", ref="d", approver="c",
                                                                  verdict="approved")), "not a step_up"),
        ((_start("s"), _dec("s", "d", "step_up"), R.approval_record(session="s", ref="d", approver="c",
                                                                    verdict="rejected"),
          R.approval_record(session="s", ref="d", approver="c", verdict="approved")), "approved or rejected twice"),
        ((_start("s"), _dec("s", "d", "step_up"), R.approval_record(session="s", ref="d", approver="c",
                                                                    verdict="timeout"),
          R.outcome_record(session="s", ref="d", ok=True, start_ns=0, end_ns=0)), "was not approved"),
        ((_start("s"), _dec("s", "d", "step_up"),
          R.outcome_record(session="s", ref="d", ok=True, start_ns=0, end_ns=0)), "was not approved"),
        ((_start("s"), _dec("s", "d", "defer"),
          R.outcome_record(session="s", ref="d", ok=True, start_ns=0, end_ns=0)), "is a defer"),
        ((_start("s"), _dec("s", "d", "allow"), R.resolution_record(session="s", ref="d", verdict="timeout")),
         "not a defer"),
        ((_start("s"), _dec("s", "d", "defer"), R.resolution_record(session="s", ref="d", verdict="timeout"),
          R.resolution_record(session="s", ref="d", verdict="resolved")), "resolved twice"),
        ((_start("s"), _dec("s", "d", "allow"), R.outcome_record(session="s", ref="d", ok=True, start_ns=0, end_ns=0),
          R.outcome_record(session="s", ref="d", ok=True, start_ns=0, end_ns=0)), "second outcome"),
        ((Record(kind=Kind.LOG_CLOSE, close=R.Close(checkpoints=0)), _start("s")), "after log-close"),
    ],
)
@pytest.mark.parametrize("remember", [None, 64, 0])
def test_state_machine_refusals(records: tuple[Record, ...], fragment: str, remember: int | None) -> None:
    # Remembering few finished decisions (the writer's bounded memory) refuses the same records; only
    # the message may differ once the decision or session it names has been forgotten.
    with pytest.raises(StateError, match=fragment if remember != 0 else None):
        _run(*records, remember=remember)


def _ending(kind: str, did: str) -> list[Record]:
    """Records that finish decision *did* of session `s` (action ``a<did>``) in each way it can finish."""
    act = "a" + did
    out = lambda: R.outcome_record(session="s", ref=did, ok=True, start_ns=0, end_ns=1)  # noqa: E731
    approval = lambda v: R.approval_record(session="s", ref=did, approver="c", verdict=v)  # noqa: E731
    return {
        "deny": [_dec("s", did, "deny", act)],
        "allow": [_dec("s", did, "allow", act), out()],
        "modify": [_dec("s", did, "modify", act), out()],
        "rejected": [_dec("s", did, "step_up", act), approval("rejected")],
        "timeout": [_dec("s", did, "step_up", act), approval("timeout")],
        "approved": [_dec("s", did, "step_up", act), approval("approved"), out()],
        "defer": [_dec("s", did, "defer", act), R.resolution_record(session="s", ref=did, verdict="resolved")],
    }[kind]


@pytest.mark.parametrize("ending", ["deny", "allow", "modify", "rejected", "timeout", "approved", "defer"])
def test_the_verifier_keeps_a_shared_state_for_finished_decisions_and_refuses_every_follow_up(ending: str) -> None:
    # The verifier's machine drops a finished decision's action id and shares the rest: no follow-up of
    # any kind, naming any action or none, may pass after the decision finished.
    sm = _run(_start("s"), *_ending(ending, "d1"), *_ending(ending, "d2"))
    assert sm.decisions["d1"] is sm.decisions["d2"]
    for action in (None, "ad1", "other"):
        for follow in (R.outcome_record(session="s", ref="d1", action_id=action, ok=True, start_ns=0, end_ns=1),
                       R.approval_record(session="s", ref="d1", action_id=action, approver="c", verdict="approved"),
                       R.resolution_record(session="s", ref="d1", action_id=action, verdict="resolved")):
            with pytest.raises(StateError):
                sm.check(follow)


def _finished_pair(s: str, did: str) -> tuple[Record, Record]:
    return (_dec(s, did, "allow", "a" + did), R.outcome_record(session=s, ref=did, ok=True, start_ns=0, end_ns=1))


def test_bounded_state_machine_forgets_only_the_oldest_finished_decisions_and_ended_sessions() -> None:
    records: list[Record] = [_start("s")]
    for i in range(10):
        records += _finished_pair("s", f"d{i}")
    records += [_dec("s", "open-allow", "allow"), _dec("s", "open-stepup", "step_up"), _dec("s", "gone", "deny")]
    for i in range(5):
        records += [_start(f"t{i}"), R.session_end_record(f"t{i}")]
    sm = _run(*records, remember=3)
    # What may still be followed stays, whatever its age; of the rest, the three most recent.
    assert set(sm.decisions) == {"open-allow", "open-stepup"}
    assert len(sm.finished) == 3 and "gone" in sm.finished and "d9" in sm.finished and "d6" not in sm.finished
    assert set(sm.sessions) == {"s"} and len(sm.ended) == 3 and "t4" in sm.ended and "t1" not in sm.ended
    sm.check(R.outcome_record(session="s", ref="open-allow", ok=True, start_ns=0, end_ns=1))
    sm.check(R.approval_record(session="s", ref="open-stepup", approver="c", verdict="approved"))
    for refused, fragment in [
        (_dec("s", "d9", "allow"), "second decision record"),  # a recent id reused
        (R.outcome_record(session="s", ref="d9", ok=True, start_ns=0, end_ns=1), "second outcome"),
        (R.outcome_record(session="s", ref="d0", ok=True, start_ns=0, end_ns=1), "no earlier record"),  # forgotten
        (_start("t4"), "started twice"),
        (_dec("t4", "x", "allow"), "after session `t4` ended"),
        (_dec("t0", "x", "allow"), "before its session-start"),  # a forgotten ended session: still refused
    ]:
        with pytest.raises(StateError, match=fragment):
            sm.check(refused)
    # The price, documented: an id reused after it was forgotten passes the writer; the verifier's
    # machine, which forgets nothing, refuses the same records.
    reused = [_dec("s", "d0", "allow"), _start("t0")]
    for r in reused:
        sm.apply(r)
    for r in reused:
        with pytest.raises(StateError):
            _run(*records, r)


def test_the_writer_keeps_bounded_state_and_its_log_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(receipt_log, "REMEMBER_FINISHED", 8)
    key = keys.SigningKey.from_seed(bytes(range(32)))
    path = tmp_path / "r.cbor"
    with ReceiptLog.create(path, key, fsync="none") as log:
        for i in range(40):
            log.append(_start(f"s{i}"))
            for j in range(3):
                for r in _finished_pair(f"s{i}", f"d{i}.{j}"):
                    log.append(r)
            log.append(R.session_end_record(f"s{i}"))
        state = log._state
        assert not state.decisions and not state.sessions and len(state.finished) == 8 and len(state.ended) == 8
    verdict = verify_log(path, [key.verify_key])
    assert verdict.status is Status.COMPLETE and verdict.records == 2 + 40 * 8


def test_check_does_not_change_state() -> None:
    sm = _run(_start("s"))
    sm.check(_dec("s", "d", "allow"))
    sm.check(_dec("s", "d", "allow"))
    assert "d" not in sm.decisions and sm.records == 2
