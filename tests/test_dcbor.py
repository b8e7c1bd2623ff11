"""Deterministic CBOR: RFC 8949 Appendix A bytes, key order, and strict rejection."""

from __future__ import annotations

import doctest

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aarm_runtime import dcbor
from aarm_runtime.dcbor import EncodingError, decode_strict, encode

# RFC 8949 Appendix A, the rows inside our value space (no floats, no bignums,
# no undefined/simple values). Expected hex copied from the RFC table.
APPENDIX_A = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (bytes.fromhex("01020304"), "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}, "a56161614161626142616361436164614461656145"),
    (cbor2.CBORTag(0, "2013-03-21T20:04:00Z"), "c074323031332d30332d32315432303a30343a30305a"),
    (cbor2.CBORTag(1, 1363896240), "c11a514b67b0"),
    (cbor2.CBORTag(23, bytes.fromhex("01020304")), "d74401020304"),
    (cbor2.CBORTag(24, bytes.fromhex("6449455446")), "d818456449455446"),
    (cbor2.CBORTag(32, "http://www.example.com"), "d82076687474703a2f2f7777772e6578616d706c652e636f6d"),
]


@pytest.mark.parametrize(("value", "expected"), APPENDIX_A, ids=[h for _, h in APPENDIX_A])
def test_rfc8949_appendix_a_encodes_byte_exact(value: object, expected: str) -> None:
    assert encode(value).hex() == expected


# cbor2 turns tags 0, 1 and 32 into Python objects, which are outside the value
# space; the others must round-trip unchanged.
@pytest.mark.parametrize(
    ("value", "expected"),
    [(v, h) for v, h in APPENDIX_A if not (isinstance(v, cbor2.CBORTag) and v.tag in (0, 1, 32))],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_rfc8949_appendix_a_decodes_strictly(value: object, expected: str) -> None:
    assert decode_strict(bytes.fromhex(expected)) == value


@pytest.mark.parametrize("hex_", ["c074323031332d30332d32315432303a30343a30305a", "c11a514b67b0"])
def test_tags_cbor2_converts_to_objects_are_rejected_on_decode(hex_: str) -> None:
    with pytest.raises(EncodingError, match="outside the deterministic value space"):
        decode_strict(bytes.fromhex(hex_))


def test_tuples_encode_as_arrays() -> None:
    assert encode((1, (2, 3))) == encode([1, [2, 3]])


def test_tag_contents_decode_to_lists_and_dicts() -> None:
    # cbor2 alone would give a tuple and a cbor2.frozendict here.
    value = decode_strict(bytes.fromhex("d2828201a10102a0"))
    assert value == cbor2.CBORTag(18, [[1, {1: 2}], {}])
    assert type(value.value) is list and type(value.value[0][1]) is dict and type(value.value[1]) is dict


def test_map_keys_sort_bytewise_not_length_first() -> None:
    # RFC 8949 §4.2.1 orders by encoded bytes: 0x0a < 0x1864 < 0x20.
    value = {-1: "n", 100: "h", 10: "t"}
    assert encode(value).hex() == "a3" + "0a6174" + "18646168" + "20616e"
    # cbor2's canonical mode is RFC 7049 length-first (10, -1, 100); this is the
    # pitfall the module exists to avoid.
    assert cbor2.dumps(value, canonical=True) != encode(value)


def test_map_keys_mixed_int_and_text() -> None:
    value = {"b": 0, "a": 0, 23: 0, -24: 0, "aa": 0, 0: 0}
    assert encode(value).hex() == "a6" + "0000" + "1700" + "3700" + "616100" + "616200" + "62616100"


def test_large_int_keys_sort_after_small_ones() -> None:
    # Protected COSE headers use 395 (vds) next to 1 and 4.
    assert encode({395: 1, 4: 2, 1: 3}).hex() == "a3" + "0103" + "0402" + "19018b01"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (1.0, "float"),
        ([1, 2.5], "float"),
        ({1: 0.0}, "float"),
        (2**64, "64 bits"),
        (-(2**64) - 1, "64 bits"),
        ({b"k": 1}, "key"),
        ({(1, 2): 1}, "key"),
        ({True: 1}, "key"),
        ({None: 1}, "key"),
        ({1.5: 1}, "key"),
        (set([1]), "not allowed"),
        (object(), "not allowed"),
        (range(3), "sequence"),
        ("\ud800", "surrogate"),
    ],
)
def test_values_outside_the_space_are_rejected(value: object, fragment: str) -> None:
    with pytest.raises(EncodingError, match=fragment):
        encode(value)


def test_nesting_limit() -> None:
    deep: list[object] = []
    for _ in range(dcbor.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(EncodingError, match="nesting"):
        encode(deep)


def test_deepest_decodable_nesting_round_trips_inside_a_tag() -> None:
    # cbor2 stops at 400 containers; everything below that must survive the
    # re-encode and the list/dict conversion without hitting Python's recursion limit.
    data = bytes.fromhex("d2" + "81" * 399 + "00")
    assert encode(decode_strict(data)) == data


@pytest.mark.parametrize(
    ("hex_", "fragment"),
    [
        # Duplicate keys: cbor2 keeps the last value silently.
        ("a201020103", "not deterministic"),
        ("a2616101616102", "not deterministic"),
        # Unsorted keys.
        ("a203040102", "not deterministic"),
        ("a30a002000186400", "not deterministic"),  # cbor2 canonical=True order
        # Indefinite lengths (RFC 8949 Appendix A examples).
        ("5f42010243030405ff", "not deterministic"),
        ("7f657374726561646d696e67ff", "not deterministic"),
        ("9fff", "not deterministic"),
        ("9f018202039f0405ffff", "not deterministic"),
        ("bf61610161629f0203ffff", "not deterministic"),
        # Non-shortest integers, lengths and tags.
        ("1800", "not deterministic"),
        ("1817", "not deterministic"),
        ("190001", "not deterministic"),
        ("1a00000001", "not deterministic"),
        ("1b0000000000000001", "not deterministic"),
        ("3800", "not deterministic"),
        ("5800", "not deterministic"),
        ("780161", "not deterministic"),
        ("980100", "not deterministic"),
        ("b8010102", "not deterministic"),
        ("d81700", "not deterministic"),
        # Floats, including ones equal to integers.
        ("f90000", "value space"),
        ("fb3ff199999999999a", "value space"),
        ("f97c00", "value space"),
        ("fa47c35000", "value space"),
        # Bignum for a value that fits in a uint, and one that does not.
        ("c24101", "not deterministic"),
        ("c249010000000000000000", "value space"),
        # Simple values other than false/true/null.
        ("f7", "value space"),
        ("f0", "value space"),
        # Trailing bytes.
        ("0000", "trailing"),
        ("a0ff", "trailing"),
        # Malformed.
        ("", "empty"),
        ("5bffffffffffffffff", "malformed"),
        ("62c328", "malformed"),
        ("81" * 1000 + "00", "malformed"),
    ],
)
def test_decode_strict_rejects(hex_: str, fragment: str) -> None:
    with pytest.raises(EncodingError, match=fragment):
        decode_strict(bytes.fromhex(hex_))


def test_decode_strict_rejects_non_bytes() -> None:
    with pytest.raises(EncodingError, match="expected bytes"):
        decode_strict("a0")  # type: ignore[arg-type]


# --- property tests -------------------------------------------------------

_small_keys = st.one_of(st.integers(-24, 23), st.text(max_size=30))
_scalars = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.binary(max_size=40),
    st.text(max_size=40),
    st.booleans(),
    st.none(),
)


def _values(keys: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.recursive(
        _scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=6),
            st.dictionaries(keys, inner, max_size=6),
            st.builds(cbor2.CBORTag, st.sampled_from([18, 24, 96, 1000, 2**32]), inner),
        ),
        max_leaves=25,
    )


@settings(max_examples=200, deadline=None)
@given(_values(st.one_of(st.integers(-(2**64), 2**64 - 1), st.text(max_size=30))))
def test_round_trip(value: object) -> None:
    data = encode(value)
    decoded = decode_strict(data)
    assert decoded == value
    assert encode(decoded) == data


@settings(max_examples=200, deadline=None)
@given(_values(_small_keys))
def test_agrees_with_cbor2_canonical_when_keys_are_small(value: object) -> None:
    # An independent encoder: with keys in -24..23 or text, RFC 7049 and
    # RFC 8949 orders coincide, so cbor2's canonical mode must give our bytes.
    assert encode(value) == cbor2.dumps(value, canonical=True)


@settings(max_examples=200, deadline=None)
@given(_values(st.integers(-(2**64), 2**64 - 1)), st.data())
def test_corrupted_bytes_raise_only_encoding_error(value: object, data: st.DataObject) -> None:
    encoded = encode(value)
    at = data.draw(st.integers(0, len(encoded) - 1))
    flip = data.draw(st.integers(1, 255))
    mutated = encoded[:at] + bytes([encoded[at] ^ flip]) + encoded[at + 1 :]
    try:
        other = decode_strict(mutated)
    except EncodingError:
        return
    # Accepted only if the mutation happens to be another deterministic encoding.
    assert encode(other) == mutated


def test_doctests() -> None:
    assert doctest.testmod(dcbor).failed == 0
