"""Deterministic CBOR (RFC 8949 §4.2.1) for the values aarmc signs.

Value space: ``int`` (-2**64 .. 2**64-1), ``bytes``/``bytearray``, ``str``,
``list``/``tuple``, ``dict`` with ``int`` or ``str`` keys, ``bool``, ``None``
and ``cbor2.CBORTag``. Floats, bignums, undefined and other simple values are
outside it and raise `EncodingError`: times are integer nanoseconds and
decimals travel as text, so a float in a signed structure is always a bug.

The encoder is written here rather than delegated to cbor2 because
``cbor2.dumps(canonical=True)`` orders map keys length-first (RFC 7049 §3.9),
not by the bytewise lexicographic order of their encodings that RFC 8949
§4.2.1 requires; the two disagree as soon as a map mixes keys whose encodings
have different lengths (e.g. ``10``, ``100`` and ``-1``). Protected COSE headers
need such keys (``vds`` = 395), so ordering is done bytewise here for every map.

`decode_strict` decodes with cbor2 and then re-encodes: the input is accepted
only if it is exactly the deterministic encoding of what it decodes to. That
single check rejects what cbor2 accepts silently — duplicate map keys,
indefinite lengths, non-shortest integers and lengths, unsorted keys, floats,
trailing bytes, tags cbor2 would turn into Python objects.

>>> encode({"a": 1, 10: [True, None, b"\\x01"]}).hex()
'a20a83f5f64101616101'
>>> decode_strict(bytes.fromhex("a201020304"))
{1: 2, 3: 4}
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import cbor2

__all__ = ["EncodingError", "MAX_DEPTH", "decode_strict", "encode"]

#: Nesting limit for both directions; cbor2's decoder stops at 400 as well, so
#: anything we emit can be read back.
MAX_DEPTH = 400

_UINT64_MAX = 2**64 - 1

_MT_UINT = 0
_MT_NINT = 1
_MT_BYTES = 2
_MT_TEXT = 3
_MT_ARRAY = 4
_MT_MAP = 5
_MT_TAG = 6

_FALSE = b"\xf4"
_TRUE = b"\xf5"
_NULL = b"\xf6"


class EncodingError(ValueError):
    """A value is outside the deterministic-CBOR value space, or bytes are not its encoding."""


def _head(major: int, arg: int) -> bytes:
    # Shortest form of the argument (RFC 8949 §4.2.1, "preferred serialization").
    mt = major << 5
    if arg < 24:
        return bytes((mt | arg,))
    if arg <= 0xFF:
        return bytes((mt | 24, arg))
    if arg <= 0xFFFF:
        return struct.pack(">BH", mt | 25, arg)
    if arg <= 0xFFFFFFFF:
        return struct.pack(">BI", mt | 26, arg)
    return struct.pack(">BQ", mt | 27, arg)


def _encode_key(key: object, depth: int) -> bytes:
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise EncodingError(f"map key `{key!r}` has type `{type(key).__name__}`; only int and text keys are allowed")
    return _encode(key, depth)


def _encode(obj: object, depth: int) -> bytes:
    if depth > MAX_DEPTH:
        raise EncodingError(f"nesting deeper than {MAX_DEPTH} levels")
    # bool before int: bool is an int subclass.
    if obj is True:
        return _TRUE
    if obj is False:
        return _FALSE
    if obj is None:
        return _NULL
    if isinstance(obj, int):
        if obj >= 0:
            if obj > _UINT64_MAX:
                raise EncodingError(f"integer `{obj}` does not fit in 64 bits; bignums are not allowed")
            return _head(_MT_UINT, obj)
        if -1 - obj > _UINT64_MAX:
            raise EncodingError(f"integer `{obj}` does not fit in 64 bits; bignums are not allowed")
        return _head(_MT_NINT, -1 - obj)
    if isinstance(obj, (bytes, bytearray)):
        return _head(_MT_BYTES, len(obj)) + bytes(obj)
    if isinstance(obj, str):
        try:
            raw = obj.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodingError(f"text contains a lone surrogate at index {exc.start}") from None
        return _head(_MT_TEXT, len(raw)) + raw
    if isinstance(obj, float):
        raise EncodingError(f"float `{obj!r}` is not allowed in deterministic structures; use an integer or text")
    if isinstance(obj, cbor2.CBORTag):
        tag = obj.tag
        if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag <= _UINT64_MAX:
            raise EncodingError(f"tag number `{tag!r}` is not an unsigned 64-bit integer")
        return _head(_MT_TAG, tag) + _encode(obj.value, depth + 1)
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            items.append((_encode_key(k, depth + 1), _encode(v, depth + 1)))
        items.sort()
        for i in range(1, len(items)):
            if items[i - 1][0] == items[i][0]:
                raise EncodingError(f"duplicate map key encoding `{items[i][0].hex()}`")
        parts = [_head(_MT_MAP, len(items))]
        for k, v in items:
            parts.append(k)
            parts.append(v)
        return b"".join(parts)
    if isinstance(obj, (list, tuple)):
        # Plain loops, not generator expressions: one Python frame per nesting
        # level keeps MAX_DEPTH well inside the interpreter's recursion limit.
        parts = [_head(_MT_ARRAY, len(obj))]
        for v in obj:
            parts.append(_encode(v, depth + 1))
        return b"".join(parts)
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes, bytearray)):
        raise EncodingError(f"sequence type `{type(obj).__name__}` is not allowed; use a list or tuple")
    raise EncodingError(f"value of type `{type(obj).__name__}` is not allowed in deterministic CBOR")


def encode(obj: Any) -> bytes:
    """Return the RFC 8949 §4.2.1 deterministic encoding of *obj*; raise `EncodingError` outside the value space."""
    return _encode(obj, 0)


def decode_strict(data: bytes) -> Any:
    """Decode one CBOR item and require *data* to be exactly its deterministic encoding.

    Raises `EncodingError` for malformed CBOR, trailing bytes, values outside
    the value space, and any encoding choice other than the deterministic one.
    Arrays decode to lists and maps to dicts, also inside tags (where cbor2
    itself would return tuples and ``cbor2.frozendict``); unknown tags decode
    to ``cbor2.CBORTag``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EncodingError(f"expected bytes, got `{type(data).__name__}`")
    data = bytes(data)
    if not data:
        raise EncodingError("empty input; expected one CBOR item")
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except cbor2.CBORDecodeError as exc:
        raise EncodingError(f"malformed CBOR: {exc}") from None
    consumed = fp.tell()
    if consumed != len(data):
        raise EncodingError(f"{len(data) - consumed} trailing byte(s) after the CBOR item at offset {consumed}")
    try:
        canonical = encode(value)
    except EncodingError as exc:
        raise EncodingError(f"decoded value is outside the deterministic value space: {exc}") from None
    if canonical != data:
        raise EncodingError(_first_difference(data, canonical))
    return _thaw(value)


def _thaw(value: Any) -> Any:
    # cbor2 decodes the contents of tags as tuples and cbor2.frozendict (so
    # they can be hashed); callers get the same list/dict shapes everywhere.
    if isinstance(value, cbor2.CBORTag):
        return cbor2.CBORTag(value.tag, _thaw(value.value))
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def _first_difference(data: bytes, canonical: bytes) -> str:
    # Duplicate keys and indefinite lengths change the length, so say where the
    # streams part: that is where a reader of the hex dump should look.
    at = next((i for i, (a, b) in enumerate(zip(data, canonical)) if a != b), min(len(data), len(canonical)))
    return (
        f"not deterministic CBOR (RFC 8949 §4.2.1): first difference at byte {at} "
        f"({len(data)} bytes given, {len(canonical)} in deterministic form); "
        "duplicate keys, unsorted keys, indefinite lengths or non-shortest heads"
    )
