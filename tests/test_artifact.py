"""The compiled artifact: its format, its envelope, and everything the loader must refuse."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aarm_runtime import artifact as fmt
from aarm_runtime import cose, dcbor, keys, values
from aarm_runtime.engine import Engine
from aarmc.compile.artifact import compile_policy, encode_payload, write_artifact
from aarmc.compile.table import INDEX_MIN_RULES, build_table
from aarmc.semantics.load import load_policy, load_policy_text

SPEC = Path(__file__).parent.parent / "specs" / "mail-assistant"
KEY = keys.SigningKey.from_seed(bytes(range(32)))
OTHER = keys.SigningKey.from_seed(bytes(32))

SMALL = """policy "small" version "2"
default deny
tool a.b(x: int, to: email) returns none
forbid "f" a.b when params.x > 100
allow "r" a.b when params.x < 5 and params.to.domain == "corp.example" because "small and internal"
"""


def _policy(text: str = SMALL):
    result = load_policy_text(text)
    assert result.policy is not None, result.diagnostics
    return result.policy


@pytest.fixture(scope="module")
def small() -> bytes:
    return compile_policy(_policy(), KEY, issued_at=1_700_000_000, validate=False).data


@pytest.fixture(scope="module")
def spec():
    policy = load_policy([SPEC]).policy
    return policy, compile_policy(policy, KEY, issued_at=1_700_000_000, check_report_digest=bytes(range(32)))


# ---- what an artifact holds ---------------------------------------------------------------------


def test_artifact_holds_the_policy(spec):
    policy, result = spec
    art = fmt.load_artifact(result.data, [KEY.verify_key])
    assert (art.format_version, art.policy, art.version, art.default) == (1, "mail-assistant", "4", "deny")
    assert art.sources == tuple((s.file, bytes.fromhex(s.sha256)) for s in policy.sources)
    assert {name for name, _ in art.sources} == {f"{SPEC.as_posix()}/{f}" for f in
                                                   ("calendar.aarm", "properties.aarm", "rules.aarm", "tools.aarm")}
    assert art.labels == ("public", "internal", "confidential", "restricted")
    assert art.tags == policy.tags and dict(art.consts).keys() == dict(policy.consts).keys()
    assert [t.name for t in art.tools] == sorted(t.name for t in policy.tools)
    assert [r.id for r in art.rules] == [r.id for r in policy.rules]
    assert art.check_report_digest == bytes(range(32))
    assert art.signer_kid == KEY.kid and art.issued_at == 1_700_000_000
    assert art.digest == hashlib.sha256(result.data).digest()
    # The artifact states what was proved about it.
    assert art.validation == {0: f"z3 {result.validation.solver}", 1: len(policy.tools), 2: 0}


def test_rules_keep_their_source_span_effect_arguments_and_order(spec):
    policy, result = spec
    art = fmt.load_artifact(result.data, [KEY.verify_key])
    for entry, rule in zip(art.rules, policy.rules):
        assert (entry.id, entry.effect, entry.priority, entry.approvers, entry.timeout_s, entry.because) == \
            (rule.id, rule.effect, rule.priority, rule.approvers, rule.timeout_s, rule.because)
        assert entry.span == (rule.span.file, rule.span.line, rule.span.col, rule.span.end_line, rule.span.end_col)
        assert entry.tools == rule.tools
    send = art.tool("email.send")
    prios = [g.priority for g in send.groups]
    assert prios == sorted(prios, reverse=True) == [400, 350, 300, 200, 100]
    assert [art.rules[i].id for g in send.groups for i in g.rules] == \
        ["send-burst", "injected-recipient", "no-external-after-pii", "drifted", "internal-mail"]
    send_decl = {p.name: p for p in send.params}
    assert send_decl["cc"].has_default and send_decl["cc"].default == () and send_decl["body"].sensitive


def test_compiling_is_deterministic(spec):
    policy, result = spec
    again = compile_policy(policy, KEY, issued_at=1_700_000_000, check_report_digest=bytes(range(32)))
    assert again.data == result.data


def test_equal_sub_expressions_are_stored_once():
    policy = _policy("""policy "p" version "1"
default deny
tool a.b(s: str)
allow "one" a.b when params.s matches /x+/ and params.s != "y"
deny "two" a.b when params.s matches /x+/
""")
    table = build_table(policy)
    matches = [n for n in table.nodes if n[0] == fmt.MATCH]
    assert len(matches) == 1
    assert table.rules[1][3] == table.nodes.index(matches[0])  # rule "two" is that very node


def test_many_equality_tests_on_one_param_get_an_index():
    rules = "\n".join(f'allow "r{i}" a.b when params.k == "v{i}" and params.n > {i}' for i in range(INDEX_MIN_RULES))
    policy = _policy(f'policy "p" version "1"\ndefault deny\ntool a.b(k: str, n: int)\n{rules}\n'
                     'allow "wide" a.b when params.n == 7\n')
    art = fmt.decode_payload(encode_payload(policy, build_table(policy), check_report_digest=None, validation=None))
    (group,) = art.tool("a.b").groups
    assert group.index is not None
    assert art.nodes[group.index.key] == (fmt.PARAM, "k")
    assert dict(group.index.entries) == {f"v{i}": (i,) for i in range(INDEX_MIN_RULES)}
    # Too few rules on one key: no index.
    few = _policy('policy "p" version "1"\ndefault deny\ntool a.b(k: str)\nallow "r" a.b when params.k == "v"\n')
    assert build_table(few).tools[0][6][0][2] is None


VALUES = [
    None, True, False, 0, -1, 2**64 - 1, -(2**64), 2**64, -(2**64) - 1, 10**40, "", "text é ü",
    Decimal("1.5"), Decimal("-0.001"), Decimal("1000"),
    values.parse_email("Bob@Corp.EXAMPLE"), values.parse_url("https://u@Example.com:8080/a/b?q=1#f"),
    values.parse_path("/srv//data/./x"), ("a", 1, (True,)), frozenset({"b", "a", 3}),
    values.validate(values.Prim("json"), {"k": [1, values.load_json("2.5"), None], "é": {"x": "y"}}),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_round_trip_exactly(value):
    encoded = fmt.encode_value(value)
    back = fmt.decode_value(dcbor.decode_strict(dcbor.encode(encoded)))
    assert type(back) is type(value) and back == value
    assert values.canonical_json(back) == values.canonical_json(value) if not isinstance(value, frozenset) else True


_TEXT = st.text(alphabet=st.characters(max_codepoint=values.MAX_CODE_POINT, exclude_categories=("Cs",)), max_size=5)


@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), _TEXT,
                              st.decimals(allow_nan=False, allow_infinity=False, places=3)),
                    lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=8))
@settings(max_examples=200)
def test_value_encoding_round_trips(value):
    value = values.validate(values.Prim("json"), values.to_json_value(value)) if not isinstance(value, Decimal) \
        else values.validate(values.Prim("decimal"), value)
    back = fmt.decode_value(dcbor.decode_strict(dcbor.encode(fmt.encode_value(value))))
    assert values.canonical_json(back) == values.canonical_json(value)


@pytest.mark.parametrize("raw", [
    [1, "1.50"],  # not canonical
    [2, "bob", "Corp.example"],  # domain not lower-cased
    [4, "/a//b"],  # path not normalised
    [8, "12"],  # a small int as a big one
    [6, ["b", "a"]],  # set not sorted
    [9, "x"],  # unknown kind
    [5],  # wrong arity
    1.5,  # floats are never values
])
def test_non_canonical_values_are_refused(raw):
    with pytest.raises(fmt.ArtifactFormatError):
        fmt.decode_value(raw)


@pytest.mark.parametrize("t", [values.Prim("str"), values.EnumT(("a", "b")), values.ListT(values.OptT(values.Prim("url")))])
def test_types_round_trip(t):
    assert fmt.decode_type(fmt.encode_type(t)) == t


# ---- the envelope and what the loader refuses ----------------------------------------------------


def test_signed_artifact_loads_with_the_trusted_key(small):
    art = fmt.load_artifact(small, [KEY.verify_key])
    assert art.policy == "small" and art.signer_kid == KEY.kid
    msg = cose.verify1(small, [KEY.verify_key], typ=cose.TYP_POLICY)
    assert msg.cwt_claims == {2: "small", 6: 1_700_000_000}


def test_every_flipped_byte_is_refused(small):
    for i in range(len(small)):
        for bit in (0x01, 0x80):
            bad = bytearray(small)
            bad[i] ^= bit
            with pytest.raises(fmt.ArtifactError):
                fmt.load_artifact(bytes(bad), [KEY.verify_key])


def test_a_truncated_artifact_is_refused(small):
    for n in range(len(small)):
        with pytest.raises(fmt.ArtifactError):
            fmt.load_artifact(small[:n], [KEY.verify_key])
    with pytest.raises(fmt.ArtifactError, match="trailing"):
        fmt.load_artifact(small + b"\x00", [KEY.verify_key])


def test_a_wrong_key_is_refused(small):
    with pytest.raises(fmt.ArtifactSignatureError, match="not among the 1 trusted key"):
        fmt.load_artifact(small, [OTHER.verify_key])
    with pytest.raises(fmt.ArtifactSignatureError, match="no trusted keys"):
        fmt.load_artifact(small, [])


def test_a_forged_signature_is_refused(small):
    msg = cose.verify1(small, [KEY.verify_key], typ=cose.TYP_POLICY)
    doc = dcbor.decode_strict(small)
    doc.value[3] = OTHER.sign(cose.sig_structure(msg.protected_bytes, msg.payload))
    with pytest.raises(fmt.ArtifactSignatureError, match="signature does not verify"):
        fmt.load_artifact(dcbor.encode(doc), [KEY.verify_key])


def _payload_doc(data: bytes) -> dict:
    return dcbor.decode_strict(cose.verify1(data, [KEY.verify_key], typ=cose.TYP_POLICY).payload)


def test_an_unknown_format_version_is_refused_even_when_signed(small):
    doc = _payload_doc(small)
    doc[fmt.K_FORMAT] = 2
    resigned = fmt.sign_payload(dcbor.encode(doc), KEY, policy="small", issued_at=1)
    with pytest.raises(fmt.UnsupportedFormatVersion, match="format version `2` is not supported"):
        fmt.load_artifact(resigned, [KEY.verify_key])


def test_a_receipt_typed_message_is_refused(small):
    payload = cose.verify1(small, [KEY.verify_key], typ=cose.TYP_POLICY).payload
    receipt = cose.sign1(payload, KEY, typ=cose.TYP_RECEIPT, cwt_claims={2: "small", 6: 1})
    with pytest.raises(fmt.ArtifactSignatureError, match="typ is `application/aarm-receipt\\+cose`"):
        fmt.load_artifact(receipt, [KEY.verify_key])
    # Not even the unsafe mode, which skips the signature, accepts another typ.
    with pytest.raises(fmt.ArtifactSignatureError, match="typ"):
        fmt.load_artifact(receipt, unsafe_unsigned=True)


def test_the_cwt_subject_must_name_the_policy(small):
    payload = cose.verify1(small, [KEY.verify_key], typ=cose.TYP_POLICY).payload
    other = fmt.sign_payload(payload, KEY, policy="another-policy", issued_at=1)
    with pytest.raises(fmt.ArtifactSignatureError, match="sub `another-policy`"):
        fmt.load_artifact(other, [KEY.verify_key])


def test_a_non_deterministic_payload_is_refused_even_when_signed(small):
    payload = cose.verify1(small, [KEY.verify_key], typ=cose.TYP_POLICY).payload
    doc = cbor2.loads(payload)
    # Same content, keys in another order: valid CBOR, but not deterministic.
    reordered = cbor2.dumps(dict(reversed(list(doc.items()))))
    with pytest.raises(fmt.ArtifactFormatError, match="not deterministic cbor"):
        fmt.load_artifact(fmt.sign_payload(reordered, KEY, policy="small", issued_at=1), [KEY.verify_key])
    # An indefinite-length array (the empty labels) that cbor2 reads silently.
    assert b"\x05\x80\x06\x80" in payload
    indefinite = payload.replace(b"\x05\x80\x06\x80", b"\x05\x9f\xff\x06\x80", 1)
    assert cbor2.loads(indefinite) == doc
    with pytest.raises(fmt.ArtifactFormatError, match="not strict deterministic cbor"):
        fmt.load_artifact(fmt.sign_payload(indefinite, KEY, policy="small", issued_at=1), [KEY.verify_key])


def test_a_table_that_leaves_out_a_covering_rule_is_refused(small):
    doc = _payload_doc(small)
    doc[fmt.K_TOOLS][0][5][1] = []  # the forbid group no longer lists the forbid rule
    bad = fmt.sign_payload(dcbor.encode(doc), KEY, policy="small", issued_at=1)
    with pytest.raises(fmt.ArtifactFormatError, match="does not list exactly the rules that cover"):
        fmt.load_artifact(bad, [KEY.verify_key])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[fmt.K_NODES].append([fmt.NOT, 99]), "earlier node"),
    (lambda d: d[fmt.K_NODES].append([99, 1]), "unknown opcode"),
    (lambda d: d[fmt.K_RULES][0].__setitem__(1, "maybe"), "unknown effect"),
    (lambda d: d[fmt.K_RULES][1].__setitem__(2, 5000), "0..1000"),
    (lambda d: d.__setitem__(fmt.K_DEFAULT, "perhaps"), "allow"),
    (lambda d: d.pop(fmt.K_COMPILER), "missing key `14`"),
    (lambda d: d[fmt.K_NODES].append([fmt.MATCH, 0, "(", ""]), "invalid regex"),
])
def test_malformed_payloads_are_refused_with_a_path(small, mutate, message):
    doc = _payload_doc(small)
    mutate(doc)
    bad = fmt.sign_payload(dcbor.encode(doc), KEY, policy="small", issued_at=1)
    with pytest.raises(fmt.ArtifactFormatError, match=message):
        Engine.load(bad, [KEY.verify_key])


def test_unsigned_artifacts_load_only_in_the_unsafe_mode():
    unsigned = compile_policy(_policy(), None, validate=False).data
    assert unsigned[:1] != b"\xd2"  # the bare payload, no envelope
    with pytest.raises(fmt.ArtifactSignatureError, match="unsafe_unsigned=True"):
        fmt.load_artifact(unsigned, [KEY.verify_key])
    assert fmt.load_artifact(unsigned, unsafe_unsigned=True).signer_kid is None
    # The unsafe mode also accepts a signature by an unknown key (but says nobody vouched for it).
    signed = compile_policy(_policy(), OTHER, validate=False).data
    assert fmt.load_artifact(signed, [KEY.verify_key], unsafe_unsigned=True).signer_kid is None


def test_engine_load_reads_files_and_refuses_missing_ones(tmp_path, small):
    path = tmp_path / "policy.aarmc"
    write_artifact(path, small)
    assert path.read_bytes() == small
    engine = Engine.load(path, trusted_keys=[KEY.verify_key])
    assert engine.policy == "small" and engine.tools == ("a.b",)
    with pytest.raises(fmt.ArtifactError, match="cannot read artifact"):
        Engine.load(tmp_path / "missing.aarmc", trusted_keys=[KEY.verify_key])


def test_nothing_is_loaded_from_a_refused_artifact(small):
    bad = bytearray(small)
    bad[-1] ^= 1
    engine = None
    with pytest.raises(fmt.ArtifactError):
        engine = Engine.load(bytes(bad), trusted_keys=[KEY.verify_key])
    assert engine is None
