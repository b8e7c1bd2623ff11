"""Exact validation, canonical forms and provenance tokens of parameter values.

The reference interpreter (aarmc) and the runtime engine both validate actions
with this module, so they accept exactly the same params, fill in the same
defaults and compute the same provenance tokens (LANGUAGE.md §3, §4, §5 step 1).

Nothing is coerced: ``"42"`` is not an int, ``true`` is not an int, ``1.0`` is
not an int; numbers are never floats (parse JSON with :func:`load_json`).

Validated values:

======== =====================================================================
type     Python value
======== =====================================================================
str      ``str``
int      ``int`` (never ``bool``)
decimal  ``decimal.Decimal`` in canonical form (``1.50`` becomes ``1.5``)
bool     ``bool``
email    :class:`Email`
url      :class:`Url`
path     :class:`Path`
enum     ``str``, one of the declared values
list[T]  ``tuple`` of T
json     frozen JSON: ``None``, ``bool``, ``int``, ``Decimal`` (non-integral
         numbers only), ``str``, ``tuple`` (arrays), :class:`FrozenJson`
         (objects); compare two json values with :func:`json_equal` because
         Python's ``==`` equates ``true`` with ``1``
======== =====================================================================

Decisions taken where LANGUAGE.md leaves room (each one keeps validity and
canonical forms independent of the Python version, and expressible in Z3):

- Every string anywhere in a value must consist of Unicode scalar values up to
  U+2FFFF: above is outside the solver's alphabet, and lone surrogates
  (U+D800–U+DFFF, which ``json.loads`` produces from ``"\\ud800"``) cannot be
  encoded in receipts. See :data:`STRING_ALPHABET`.
- Email domains, URL schemes and URL hosts are lower-cased for ASCII letters
  only: DNS compares names ASCII-case-insensitively (RFC 4343) and the solver
  can state "no A–Z" but not full Unicode case mapping.
- A URL is an RFC 3986 URI with an authority and a non-empty host, normalised
  as RFC 3986 §6.2.2 says (case, percent-encoding of unreserved characters, dot
  segments). Stricter than RFC 3986, because hosts are compared by policies and
  a host that two parsers read differently is a bypass: the host must be an
  ASCII reg-name without percent-encoding (write IDNs in punycode) or an IPv6
  literal; ``user@`` may appear once; a host whose last label is numeric must be
  a dotted-quad IPv4 address (WHATWG parsers read ``0x7f.1`` and ``2130706433``
  as 127.0.0.1); one trailing dot of the host is dropped and empty labels are
  invalid. Non-ASCII characters are accepted in userinfo, path, query and
  fragment (IRIs, RFC 3987), except invisible and control characters.
- Numbers whose canonical text would exceed :data:`MAX_NUMBER_DIGITS` digits
  and JSON nested deeper than :data:`MAX_JSON_DEPTH` are invalid: both are
  implementation limits that keep a hostile action from costing unbounded time.
- Error messages never repeat the offending value, because params may be
  ``sensitive`` and messages end up in decision records.

>>> validate(ListT(Prim("email")), ["Bob@Corp.EXAMPLE"], "params.cc")
(Email(local='Bob', domain='corp.example'),)
>>> canonical_token(Email("Bob", "corp.example"))
'bob@corp.example'
>>> occurs_as_token(provenance_token(Email("bob", "corp.example")), "mail Bob@Corp.Example now")
True
"""

from __future__ import annotations

import dataclasses
import decimal
import ipaddress
import json
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, Union

__all__ = [
    "MAX_CODE_POINT",
    "MAX_JSON_DEPTH",
    "MAX_NUMBER_DIGITS",
    "PRIMITIVES",
    "STRING_ALPHABET",
    "Email",
    "EnumT",
    "FrozenJson",
    "InvalidValue",
    "JsonError",
    "ListT",
    "OptT",
    "ParamSpec",
    "Path",
    "Prim",
    "Token",
    "TokenIndex",
    "Type",
    "Url",
    "canonical_decimal",
    "canonical_json",
    "canonical_token",
    "check_string",
    "is_token_char",
    "json_equal",
    "load_json",
    "occurs_as_token",
    "output_text",
    "parse_email",
    "parse_path",
    "parse_url",
    "provenance_token",
    "to_json_value",
    "to_jsonable",
    "token_equals",
    "type_to_text",
    "validate",
    "validate_params",
]

MAX_CODE_POINT = 0x2FFFF
# Inclusive ranges of the code points a valid string may contain.
STRING_ALPHABET: tuple[tuple[int, int], ...] = ((0x0, 0xD7FF), (0xE000, MAX_CODE_POINT))
# Same bound as CPython's default int/str conversion limit, so no valid number
# ever trips that limit in the interpreter or the runtime.
MAX_NUMBER_DIGITS = 4300
MAX_JSON_DEPTH = 256

PRIMITIVES = frozenset({"str", "int", "decimal", "bool", "email", "url", "path", "json"})


class InvalidValue(ValueError):
    """A value does not fit its declared type; ``path`` names where (``params.cc[2]``)."""

    def __init__(self, path: str, message: str) -> None:
        # Both in args, so that the exception survives pickling (worker pools).
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class JsonError(ValueError):
    """The text is not JSON this project accepts (syntax, NaN, duplicate keys, limits)."""


# --------------------------------------------------------------------------- types


@dataclasses.dataclass(frozen=True, slots=True)
class Prim:
    name: str

    def __post_init__(self) -> None:
        if self.name not in PRIMITIVES:
            raise ValueError(f"unknown primitive type `{self.name}`")


@dataclasses.dataclass(frozen=True, slots=True)
class EnumT:
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.values, tuple) or not self.values:
            raise ValueError("an enum needs a non-empty tuple of values")
        if len(set(self.values)) != len(self.values):
            raise ValueError("enum values must be distinct")
        for value in self.values:
            if not isinstance(value, str):
                raise ValueError("enum values must be strings")
            check_string(value, "enum")


@dataclasses.dataclass(frozen=True, slots=True)
class ListT:
    elem: Type


@dataclasses.dataclass(frozen=True, slots=True)
class OptT:
    inner: Type

    def __post_init__(self) -> None:
        if isinstance(self.inner, OptT):
            raise ValueError("an optional type cannot be optional again")


Type = Union[Prim, EnumT, ListT, OptT]


def type_to_text(t: Type) -> str:
    """The surface spelling of a type.

    >>> type_to_text(OptT(ListT(EnumT(("a", "b")))))
    'list[enum("a", "b")]?'
    """
    if isinstance(t, Prim):
        return t.name
    if isinstance(t, EnumT):
        return "enum(" + ", ".join(json.dumps(v, ensure_ascii=False) for v in t.values) + ")"
    if isinstance(t, ListT):
        return f"list[{type_to_text(t.elem)}]"
    if isinstance(t, OptT):
        return f"{type_to_text(t.inner)}?"
    raise TypeError(f"not a type: {t!r}")


# --------------------------------------------------------------------------- strings

# A Python `re` class accepts lone surrogates, which is what we need to find them.
_OUTSIDE_ALPHABET = re.compile("[\ud800-\udfff\U00030000-\U0010ffff]")

# A fixed list rather than unicodedata categories: validity must not change
# with the Unicode version of whichever Python runs the runtime. Public: the
# checker's string automata (aarmc.analysis.strings) read the same class.
INVISIBLE = (
    "\x00-\x20\x7f-\xa0\xad\u061c\u115f\u1160\u1680\u180e\u2000-\u200f"
    "\u2028-\u202f\u205f-\u206f\u3000\u3164\ufeff\ufff9-\ufffb"
)
_HAS_INVISIBLE = re.compile(f"[{INVISIBLE}]")

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _ascii_lower(text: str) -> str:
    # Maps one character to one character, so offsets stay valid.
    return text.translate(_ASCII_LOWER)


def check_string(text: str, path: str = "value") -> str:
    """Raise :class:`InvalidValue` unless every code point is in :data:`STRING_ALPHABET`."""
    bad = _OUTSIDE_ALPHABET.search(text)
    if bad is not None:
        code = ord(bad.group())
        what = "a lone surrogate" if code <= 0xDFFF else "a code point above U+2FFFF"
        raise InvalidValue(path, f"string contains {what} at index {bad.start()}")
    return text


# --------------------------------------------------------------------------- email


@dataclasses.dataclass(frozen=True, slots=True)
class Email:
    """An email address split at its last ``@``; build it with :func:`parse_email`."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_email(text: str, path: str = "value") -> Email:
    """Parse an email: the domain is lower-cased (ASCII), the local part kept.

    >>> str(parse_email('"a@b"@Example.COM'))
    '"a@b"@example.com'
    """
    check_string(text, path)
    if _HAS_INVISIBLE.search(text):
        raise InvalidValue(path, "an email may not contain whitespace or control characters")
    local, at, domain = text.rpartition("@")
    if not at:
        raise InvalidValue(path, "expected an email: no `@`")
    if not local:
        raise InvalidValue(path, "expected an email: empty local part")
    if not domain:
        raise InvalidValue(path, "expected an email: empty domain")
    return Email(local=local, domain=_ascii_lower(domain))


# --------------------------------------------------------------------------- url


@dataclasses.dataclass(frozen=True, slots=True)
class Url:
    """A normalised absolute URL with an authority; build it with :func:`parse_url`.

    ``host`` is a lower-case reg-name, a dotted-quad IPv4 address, or an IPv6
    literal in brackets (RFC 3986 counts the brackets as part of the host, and
    keeping them makes a host never look like a reg-name). ``query``,
    ``fragment`` and ``userinfo`` are ``None`` when absent and ``""`` when
    present but empty.
    """

    scheme: str
    host: str
    port: int | None
    path: str
    query: str | None
    fragment: str | None
    userinfo: str | None

    def __str__(self) -> str:
        parts = [self.scheme, "://"]
        if self.userinfo is not None:
            parts += [self.userinfo, "@"]
        parts.append(self.host)
        if self.port is not None:
            parts += [":", str(self.port)]
        parts.append(self.path)
        if self.query is not None:
            parts += ["?", self.query]
        if self.fragment is not None:
            parts += ["#", self.fragment]
        return "".join(parts)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_UNRESERVED = string.ascii_letters + string.digits + "-._~"
_SUB_DELIMS = "!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
# Non-ASCII characters are allowed (IRI) unless invisible; ASCII ones per RFC 3986.
_NON_ASCII = f"[^\\x00-\\x7f{INVISIBLE}]"


def _component(extra: str) -> re.Pattern[str]:
    allowed = re.escape(_UNRESERVED + _SUB_DELIMS + extra)
    return re.compile(f"(?:[{allowed}]|{_PCT}|{_NON_ASCII})*")


_USERINFO = _component(":")
_PATH = _component(":@/")
_QUERY = _component(":@/?")
_REG_NAME = re.compile(f"[{re.escape(_UNRESERVED + _SUB_DELIMS)}]+")
_PCT_TRIPLET = re.compile(_PCT)
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_DOTTED_QUAD_PART = re.compile(r"0|[1-9][0-9]{0,2}")


def _normalise_percent(text: str) -> str:
    # RFC 3986 §6.2.2.1-2: upper-case hex digits, decode unreserved characters.
    def fix(m: re.Match[str]) -> str:
        char = chr(int(m.group()[1:], 16))
        return char if char in _UNRESERVED else m.group().upper()

    return _PCT_TRIPLET.sub(fix, text)


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 §5.2.4, step by step.
    out: list[str] = []
    rest = path
    while rest:
        if rest.startswith("../"):
            rest = rest[3:]
        elif rest.startswith("./"):
            rest = rest[2:]
        elif rest.startswith("/./"):
            rest = rest[2:]
        elif rest == "/.":
            rest = "/"
        elif rest.startswith("/../"):
            rest = rest[3:]
            if out:
                out.pop()
        elif rest == "/..":
            rest = "/"
            if out:
                out.pop()
        elif rest in (".", ".."):
            rest = ""
        else:
            end = rest.find("/", 1 if rest.startswith("/") else 0)
            end = len(rest) if end < 0 else end
            out.append(rest[:end])
            rest = rest[end:]
    return "".join(out)


def _ipv6_text(value: int) -> str:
    # RFC 5952 by hand: `ipaddress` spells IPv4-mapped addresses differently
    # across Python versions, and the canonical form must not depend on that.
    groups = [(value >> (16 * (7 - i))) & 0xFFFF for i in range(8)]
    best_start, best_len = -1, 1
    i = 0
    while i < 8:
        if groups[i] == 0:
            j = i
            while j < 8 and groups[j] == 0:
                j += 1
            if j - i > best_len:
                best_start, best_len = i, j - i
            i = j
        else:
            i += 1
    hexes = [f"{g:x}" for g in groups]
    if best_start < 0:
        return ":".join(hexes)
    return ":".join(hexes[:best_start]) + "::" + ":".join(hexes[best_start + best_len :])


def _canonical_host(host: str, path: str) -> str:
    if host.startswith("["):
        inner = host[1:-1]
        # Excludes IPvFuture (`[v1.x]`) and zone ids (`%25eth0`) as well.
        if not inner or not re.fullmatch(r"[0-9A-Fa-f:.]+", inner):
            raise InvalidValue(path, "expected a url: malformed IPv6 literal")
        try:
            address = ipaddress.IPv6Address(inner)
        except ValueError:
            raise InvalidValue(path, "expected a url: malformed IPv6 literal") from None
        return f"[{_ipv6_text(int(address))}]"
    if not host:
        raise InvalidValue(path, "expected a url: empty host")
    if not _REG_NAME.fullmatch(host):
        raise InvalidValue(
            path,
            "expected a url: the host may only contain ASCII letters, digits and `-._~!$&'()*+,;=`"
            " (write internationalised names in punycode)",
        )
    host = _ascii_lower(host)
    if host.endswith("."):
        host = host[:-1]
    labels = host.split(".")
    if "" in labels:
        raise InvalidValue(path, "expected a url: the host has an empty label")
    if _NUMERIC_LABEL.fullmatch(labels[-1]) and not (
        len(labels) == 4
        and all(_DOTTED_QUAD_PART.fullmatch(label) and int(label) <= 255 for label in labels)
    ):
        raise InvalidValue(path, "expected a url: a numeric host must be a dotted-quad IPv4 address")
    return host


def _split_host_port(hostport: str, path: str) -> tuple[str, str | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise InvalidValue(path, "expected a url: unterminated IPv6 literal")
        host, after = hostport[: end + 1], hostport[end + 1 :]
        if not after:
            return host, None
        if not after.startswith(":"):
            raise InvalidValue(path, "expected a url: unexpected text after the IPv6 literal")
        return host, after[1:]
    host, colon, port = hostport.partition(":")
    return host, (port if colon else None)


def parse_url(text: str, path: str = "value") -> Url:
    """Parse and normalise an absolute URL (RFC 3986; see the module notes).

    >>> str(parse_url("HTTPS://User@Example.COM.:08080/a/./b/../%7ec?q=%2f#Frag"))
    'https://User@example.com:8080/a/~c?q=%2F#Frag'
    """
    check_string(text, path)
    rest, hash_mark, fragment = text.partition("#")
    rest, question_mark, query = rest.partition("?")
    scheme, colon, hier = rest.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise InvalidValue(path, "expected a url: missing or malformed scheme")
    if not hier.startswith("//"):
        raise InvalidValue(path, "expected a url with an authority: `scheme://host`")
    authority, slash, tail = hier[2:].partition("/")
    url_path = slash + tail
    userinfo: str | None
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        userinfo = None
    elif "@" in userinfo:
        raise InvalidValue(path, "expected a url: more than one `@` in the authority")
    host, port_text = _split_host_port(hostport, path)
    port: int | None = None
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            raise InvalidValue(path, "expected a url: the port must be a number from 0 to 65535")
        port = int(port_text)
    if userinfo is not None and not _USERINFO.fullmatch(userinfo):
        raise InvalidValue(path, "expected a url: the userinfo has characters a url may not contain")
    if not _PATH.fullmatch(url_path):
        raise InvalidValue(path, "expected a url: the path has characters a url may not contain")
    if question_mark and not _QUERY.fullmatch(query):
        raise InvalidValue(path, "expected a url: the query has characters a url may not contain")
    if hash_mark and not _QUERY.fullmatch(fragment):
        raise InvalidValue(path, "expected a url: the fragment has characters a url may not contain")
    return Url(
        scheme=_ascii_lower(scheme),
        host=_canonical_host(host, path),
        port=port,
        path=_remove_dot_segments(_normalise_percent(url_path)),
        query=_normalise_percent(query) if question_mark else None,
        fragment=_normalise_percent(fragment) if hash_mark else None,
        userinfo=_normalise_percent(userinfo) if userinfo is not None else None,
    )


# --------------------------------------------------------------------------- path


@dataclasses.dataclass(frozen=True, slots=True)
class Path:
    """A normalised POSIX path; build it with :func:`parse_path`."""

    text: str

    def __str__(self) -> str:
        return self.text


def parse_path(text: str, path: str = "value") -> Path:
    """Collapse repeated slashes, ``.`` segments and a trailing slash; refuse ``..``.

    >>> parse_path("//srv/./data//x/")
    Path(text='/srv/data/x')
    """
    check_string(text, path)
    if not text:
        raise InvalidValue(path, "expected a path: empty")
    if "\x00" in text:
        raise InvalidValue(path, "a path may not contain NUL")
    segments = text.split("/")
    if ".." in segments:
        raise InvalidValue(path, "a path may not contain a `..` segment")
    body = "/".join(s for s in segments if s not in ("", "."))
    if text.startswith("/"):
        return Path("/" + body)
    return Path(body or ".")


# --------------------------------------------------------------------------- numbers

_INT_LIMIT = 10**MAX_NUMBER_DIGITS


def _decimal_parts(value: Decimal) -> tuple[int, str, int]:
    # (sign, significant digits without trailing zeros, exponent); "" for zero.
    sign, digit_tuple, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    stripped = digits.rstrip("0")
    return sign, stripped, exponent + len(digits) - len(stripped)


def _decimal_text_length(value: Decimal) -> int:
    _, digits, exponent = _decimal_parts(value)
    if exponent >= 0:
        return len(digits) + exponent
    return max(len(digits), -exponent + 1)


def canonical_decimal(value: Decimal) -> str:
    """Plain notation, no trailing zeros, no exponent, no ``-0``.

    The digits are rearranged by hand: ``Decimal.normalize`` would round to
    the context precision.

    >>> [canonical_decimal(Decimal(t)) for t in ("1.50", "1E+3", "-0.0", "12E-5", "7")]
    ['1.5', '1000', '0', '0.00012', '7']
    """
    if not value.is_finite():
        raise ValueError("only finite decimals have a canonical form")
    sign, digits, exponent = _decimal_parts(value)
    if not digits:
        return "0"
    if exponent >= 0:
        text = digits + "0" * exponent
    elif len(digits) > -exponent:
        text = digits[:exponent] + "." + digits[exponent:]
    else:
        text = "0." + "0" * (-exponent - len(digits)) + digits
    return "-" + text if sign else text


def _check_number(value: int | Decimal, path: str) -> None:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidValue(path, "a number must be finite")
        too_long = _decimal_text_length(value) > MAX_NUMBER_DIGITS
    else:
        too_long = abs(value) >= _INT_LIMIT
    if too_long:
        raise InvalidValue(path, f"a number may have at most {MAX_NUMBER_DIGITS} digits")


def _canonical_decimal_value(value: Decimal) -> Decimal:
    return Decimal(canonical_decimal(value))


# --------------------------------------------------------------------------- json


def _utf16_key(key: str) -> bytes:
    # RFC 8785 orders object keys by UTF-16 code units.
    return key.encode("utf-16-be", "surrogatepass")


class FrozenJson(Mapping[str, Any]):
    """A hashable JSON object with canonically ordered keys.

    Equality and hash follow the canonical JSON text, so ``{"a": true}`` and
    ``{"a": 1}`` differ even though Python's ``True == 1``.

    >>> FrozenJson({"b": 1, "a": (True,)})
    FrozenJson({'a': (True,), 'b': 1})
    """

    __slots__ = ("_items", "_index", "_text")

    def __init__(self, mapping: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        pairs = list(mapping.items() if isinstance(mapping, Mapping) else mapping)
        index = dict(pairs)
        if len(index) != len(pairs):
            raise ValueError("duplicate key in a json object")
        items = tuple(sorted(index.items(), key=lambda kv: _utf16_key(kv[0])))
        object.__setattr__(self, "_items", items)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_text", _object_text(items))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenJson is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenJson, (self._items,))

    def __getitem__(self, key: str) -> Any:
        return self._index[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrozenJson):
            return NotImplemented
        return self._text == other._text

    def __hash__(self) -> int:
        return hash(self._text)

    def __repr__(self) -> str:
        return f"FrozenJson({dict(self._items)!r})"

    @property
    def canonical_text(self) -> str:
        return self._text


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1.0`` is ``1``, key order is irrelevant."""
    return canonical_json(a) == canonical_json(b)


def _freeze(raw: Any, path: str, depth: int) -> Any:
    if depth > MAX_JSON_DEPTH:
        raise InvalidValue(path, f"json may nest at most {MAX_JSON_DEPTH} levels")
    if raw is None or isinstance(raw, bool):
        return raw
    if isinstance(raw, int):
        _check_number(raw, path)
        return int(raw)
    if isinstance(raw, Decimal):
        _check_number(raw, path)
        value = _canonical_decimal_value(raw)
        # One spelling per number: 2.0 and 2 are the same JSON number.
        return int(value) if value == value.to_integral_value() else value
    if isinstance(raw, str):
        return check_string(str(raw), path)
    if isinstance(raw, (list, tuple)):
        return tuple(_freeze(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(raw))
    if isinstance(raw, Mapping):
        items = []
        for key, item in raw.items():
            if not isinstance(key, str):
                raise InvalidValue(path, "json object keys must be strings")
            check_string(key, path)
            items.append((str(key), _freeze(item, _field_path(path, key), depth + 1)))
        return FrozenJson(items)
    raise InvalidValue(path, f"expected json, got {_kind(raw)}")


def _reject_constant(name: str) -> Any:
    raise JsonError(f"`{name}` is not a JSON number")


def _parse_decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except decimal.InvalidOperation:
        # The exponent does not fit the decimal module at all.
        value = Decimal("Infinity")
    if not value.is_finite() or _decimal_text_length(value) > MAX_NUMBER_DIGITS:
        raise JsonError(f"a number may have at most {MAX_NUMBER_DIGITS} digits")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise JsonError(f"a number may have at most {MAX_NUMBER_DIGITS} digits")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise JsonError(f"duplicate key `{key}`")
        obj[key] = value
    return obj


def _json_depth(value: Any) -> int:
    # Iterative, so that measuring a deep document cannot overflow the stack.
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def load_json(text: str | bytes) -> Any:
    """Parse JSON exactly: non-integral numbers become ``Decimal``, never ``float``.

    NaN/Infinity, duplicate keys, numbers longer than :data:`MAX_NUMBER_DIGITS`
    and nesting deeper than :data:`MAX_JSON_DEPTH` raise :class:`JsonError`.

    >>> load_json('{"amount": 0.1, "n": 3}')
    {'amount': Decimal('0.1'), 'n': 3}
    """
    try:
        value = json.loads(
            text,
            parse_float=_parse_decimal,
            parse_int=_parse_int,
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        raise JsonError(f"json may nest at most {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as err:
        raise JsonError(f"invalid json: {err.msg} at line {err.lineno} column {err.colno}") from None
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise JsonError(f"json may nest at most {MAX_JSON_DEPTH} levels")
    return value


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\\ud800-\udfff]')


def _json_string(text: str) -> str:
    # RFC 8785 §3.2.2.2 (ECMAScript JSON.stringify): only `"`, `\` and controls
    # are escaped; lone surrogates become \uXXXX as in well-formed JSON.stringify.
    def escape(m: re.Match[str]) -> str:
        char = m.group()
        return _JSON_ESCAPES.get(char) or f"\\u{ord(char):04x}"

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'


def _object_text(items: Iterable[tuple[str, Any]]) -> str:
    return "{" + ",".join(_json_string(k) + ":" + canonical_json(v) for k, v in items) + "}"


def canonical_json(value: Any) -> str:
    """Canonical JSON text in the manner of RFC 8785 for this value space.

    Keys sorted by UTF-16 code units, no whitespace, non-ASCII kept, numbers
    exact (``Decimal`` in :func:`canonical_decimal` form; an integral decimal is
    the same number as the int). Email, Url and Path become their strings.

    >>> canonical_json({"b": [1, Decimal("2.50"), None], "a": "\u00e9\\n", "c": True})
    '{"a":"\u00e9\\\\n","b":[1,2.5,null],"c":true}'
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return canonical_decimal(value)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, (Email, Url, Path)):
        return _json_string(str(value))
    if isinstance(value, FrozenJson):
        return value.canonical_text
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise TypeError("json object keys must be strings")
        return _object_text(sorted(value.items(), key=lambda kv: _utf16_key(kv[0])))
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_json(item) for item in value) + "]"
    if isinstance(value, float):
        raise TypeError("floats are not exact: parse JSON with `load_json` to get decimals")
    raise TypeError(f"not a json value: {type(value).__name__}")


# --------------------------------------------------------------------------- validation


def _kind(raw: Any) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, int):
        return "an integer"
    if isinstance(raw, Decimal):
        return "a decimal number"
    if isinstance(raw, float):
        return "a float (parse JSON with `load_json`)"
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, (list, tuple)):
        return "an array"
    if isinstance(raw, Mapping):
        return "an object"
    return f"a `{type(raw).__name__}`"


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _field_path(path: str, name: Any) -> str:
    if isinstance(name, str) and _IDENTIFIER.fullmatch(name):
        return f"{path}.{name}"
    return f"{path}[{json.dumps(name, ensure_ascii=False) if isinstance(name, str) else repr(name)}]"


def _expected(t: Type, raw: Any, path: str) -> InvalidValue:
    return InvalidValue(path, f"expected `{type_to_text(t)}`, got {_kind(raw)}")


def validate(t: Type, raw: Any, path: str = "value") -> Any:
    """Check ``raw`` against ``t`` and return its canonical typed value.

    ``raw`` is JSON as :func:`load_json` returns it; this module's own values
    (Email, Url, Path, tuples, FrozenJson) are accepted too, so validating a
    validated value (a MODIFY's new params) returns it unchanged.
    An optional type accepts ``None`` and returns ``None``.

    >>> validate(Prim("decimal"), 12)
    Decimal('12')
    >>> validate(Prim("int"), "42")
    Traceback (most recent call last):
    ...
    aarm_runtime.values.InvalidValue: value: expected `int`, got a string
    """
    if isinstance(t, OptT):
        return None if raw is None else validate(t.inner, raw, path)
    if isinstance(t, ListT):
        if not isinstance(raw, (list, tuple)):
            raise _expected(t, raw, path)
        return tuple(validate(t.elem, item, f"{path}[{i}]") for i, item in enumerate(raw))
    if isinstance(t, EnumT):
        if not isinstance(raw, str):
            raise _expected(t, raw, path)
        if raw not in t.values:
            allowed = ", ".join(json.dumps(v, ensure_ascii=False) for v in t.values)
            raise InvalidValue(path, f"expected one of {allowed}")
        return str(raw)
    if not isinstance(t, Prim):
        raise TypeError(f"not a type: {t!r}")
    name = t.name
    if name == "json":
        return _freeze(raw, path, 0)
    if name == "bool":
        if not isinstance(raw, bool):
            raise _expected(t, raw, path)
        return bool(raw)
    if name == "int":
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise _expected(t, raw, path)
        _check_number(raw, path)
        return int(raw)
    if name == "decimal":
        if isinstance(raw, bool) or not isinstance(raw, (int, Decimal)):
            raise _expected(t, raw, path)
        _check_number(raw, path)
        return _canonical_decimal_value(Decimal(raw))
    if name == "email" and isinstance(raw, Email):
        raw = str(raw)
    elif name == "url" and isinstance(raw, Url):
        raw = str(raw)
    elif name == "path" and isinstance(raw, Path):
        raw = str(raw)
    if not isinstance(raw, str):
        raise _expected(t, raw, path)
    raw = str(raw)
    if name == "str":
        return check_string(raw, path)
    if name == "email":
        return parse_email(raw, path)
    if name == "url":
        return parse_url(raw, path)
    return parse_path(raw, path)


@dataclasses.dataclass(frozen=True, slots=True)
class ParamSpec:
    """A declared tool parameter; ``default`` is raw JSON, validated like input."""

    name: str
    type: Type
    default: Any = None
    has_default: bool = False
    optional: bool = False

    @property
    def may_be_absent(self) -> bool:
        return self.optional or self.has_default or isinstance(self.type, OptT)


def validate_params(schema: Sequence[ParamSpec], raw: Any, path: str = "params") -> dict[str, Any]:
    """Validate a params object against a tool's declaration (LANGUAGE.md §5 step 1).

    Unknown fields and missing required params are invalid; defaults are
    filled in; an absent optional param without default is left out; an
    explicit ``null`` counts as absent for a param that may be absent.
    Unknown fields are reported first (sorted), then params in declared order.

    >>> spec = [ParamSpec("to", Prim("email")), ParamSpec("cc", ListT(Prim("email")), [], True)]
    >>> validate_params(spec, {"to": "a@B.c"})
    {'to': Email(local='a', domain='b.c'), 'cc': ()}
    """
    if not isinstance(raw, Mapping):
        raise InvalidValue(path, f"expected an object, got {_kind(raw)}")
    declared = {spec.name for spec in schema}
    unknown = [key for key in raw if key not in declared]
    if unknown:
        first = min(unknown, key=lambda k: (not isinstance(k, str), str(k)))
        raise InvalidValue(_field_path(path, first), "unknown parameter")
    out: dict[str, Any] = {}
    for spec in schema:
        field = _field_path(path, spec.name)
        inner = spec.type.inner if isinstance(spec.type, OptT) else spec.type
        value = raw.get(spec.name)
        if value is not None:
            out[spec.name] = validate(inner, value, field)
        elif spec.name in raw and not spec.may_be_absent:
            raise _expected(spec.type, None, field)
        elif spec.has_default and spec.default is not None:
            out[spec.name] = validate(inner, spec.default, field)
        elif not spec.may_be_absent:
            raise InvalidValue(field, "missing required parameter")
    return out


def to_json_value(value: Any) -> Any:
    """The exact JSON form of a validated value: ``validate(t, to_json_value(v)) == v``.

    Decimals stay ``Decimal`` (render with :func:`canonical_json`); use this
    for params forwarded to a tool.
    """
    if isinstance(value, (Email, Url, Path)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, Mapping):
        return {key: to_json_value(item) for key, item in value.items()}
    return value


def to_jsonable(value: Any) -> Any:
    """A form the standard ``json`` module can write, for decision records.

    Like :func:`to_json_value` but every ``Decimal`` becomes its canonical
    string, so a decimal param reads ``"1.5"`` (a number would need floats).

    >>> to_jsonable((Email("a", "b.c"), Decimal("1.50"), FrozenJson({"k": (1,)})))
    ['a@b.c', '1.5', {'k': [1]}]
    """
    if isinstance(value, Decimal):
        return canonical_decimal(value)
    if isinstance(value, (Email, Url, Path)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {key: to_jsonable(item) for key, item in value.items()}
    return value


# --------------------------------------------------------------------------- provenance


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    """A canonical string to look for, and the spans of it that match any ASCII case.

    Only emails (whole) and URL schemes and hosts are case-insensitive; the
    text inside a caseless span is already lower-case.
    """

    text: str
    caseless: tuple[tuple[int, int], ...] = ()


def provenance_token(value: Any) -> Token | None:
    """The token a value is looked up by (LANGUAGE.md §4, "occurs as a token").

    Str and enum values as they are; emails lower-cased (ASCII) whole; a URL
    is its whole canonical string, of which scheme and host match in any
    case (the path is case-sensitive, and a host alone would let
    ``https://evil.example/x`` pass as ``https://evil.example/y``); paths
    normalised; decimals canonical; ints in decimal. Booleans, lists, json
    and values shorter than 3 characters have no token (never match).
    """
    t = type(value)
    if t is Email or t is Url:
        # Parsed addresses recur (an agent mails the same people): their tokens are remembered.
        got = _EMAIL_URL_TOKENS.get(value)
        if got is None:
            got = _provenance_token(value)
            if len(_EMAIL_URL_TOKENS) >= 4096:
                _EMAIL_URL_TOKENS.clear()
            _EMAIL_URL_TOKENS[value] = got
        return got
    return _provenance_token(value)


_EMAIL_URL_TOKENS: dict[Any, Token | None] = {}


def _provenance_token(value: Any) -> Token | None:
    if isinstance(value, bool) or value is None:
        return None
    caseless: tuple[tuple[int, int], ...] = ()
    if isinstance(value, str):
        text = value
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, Decimal):
        text = canonical_decimal(value)
    elif isinstance(value, Email):
        text = _ascii_lower(str(value))
        caseless = ((0, len(text)),)
    elif isinstance(value, Url):
        text = str(value)
        host_start = len(value.scheme) + 3
        if value.userinfo is not None:
            host_start += len(value.userinfo) + 1
        caseless = ((0, len(value.scheme)), (host_start, host_start + len(value.host)))
    elif isinstance(value, Path):
        text = value.text
    else:
        return None
    if len(text) < 3:
        return None
    return Token(text, caseless)


def canonical_token(value: Any) -> str | None:
    """The canonical string of :func:`provenance_token`, or ``None``.

    >>> [canonical_token(v) for v in ("ab", "abc", 1000, Decimal("1E+3"), True)]
    [None, 'abc', '1000', '1000', None]
    """
    token = provenance_token(value)
    return None if token is None else token.text


def is_token_char(char: str) -> bool:
    """Whether ``char`` may not touch a token: a letter or digit in the Unicode
    sense of ``str.isalnum`` (``é`` and ``٣`` too, so ``bob@x.example`` does not
    match inside ``bob@x.exampleé``), ``@``, ``.``, ``_`` or ``-``. The one
    exception is a sentence's full stop after a token: see :func:`occurs_as_token`."""
    return char.isalnum() or char in "@._-"


def _ends_token(text: str, end: int) -> bool:
    # A `.` right after the match is a full stop, not part of a longer name,
    # when no token character follows it: "mail bob@x.example." names
    # bob@x.example, "bob@x.example.evil.com" does not.
    if end == len(text) or not is_token_char(text[end]):
        return True
    return text[end] == "." and (end + 1 == len(text) or not is_token_char(text[end + 1]))


# `\w` of `re` in str mode is exactly `str.isalnum() or "_"`; the tests check it. Public: the aligner
# reads terms as provenance's tokens.
TOKEN_RUN = re.compile(r"[\w@.\-]+")


def _as_token(token: str | Token) -> Token:
    return token if isinstance(token, Token) else Token(token)


def _case_sensitive_spans(token: Token) -> list[tuple[int, int]]:
    spans, start = [], 0
    for lo, hi in sorted(token.caseless):
        if lo > start:
            spans.append((start, lo))
        start = max(start, hi)
    if start < len(token.text):
        spans.append((start, len(token.text)))
    return spans


def _find(token: Token, text: str, lowered: str | None) -> bool:
    needle = token.text
    if token.caseless:
        # Search case-folded, then check the case-sensitive spans exactly.
        needle = _ascii_lower(needle)
        haystack = lowered if lowered is not None else _ascii_lower(text)
        exact = _case_sensitive_spans(token)
    else:
        haystack, exact = text, []
    size = len(needle)
    at = haystack.find(needle)
    while at >= 0:
        if (
            (at == 0 or not is_token_char(text[at - 1]))
            and _ends_token(text, at + size)
            and all(text[at + lo : at + hi] == token.text[lo:hi] for lo, hi in exact)
        ):
            return True
        at = haystack.find(needle, at + 1)
    return False


def occurs_as_token(token: str | Token, text: str) -> bool:
    """Whether ``token`` appears in ``text`` with no token character (see
    :func:`is_token_char`) directly before it, and directly after it the end
    of the text, a character that is no token character, or a single ``.``
    followed by the end of the text or a character that is no token
    character (a full stop). A plain ``str`` token is case-sensitive; tokens
    shorter than 3 characters never match.

    >>> occurs_as_token("bob@corp.example", "to bob@corp.example.evil.net")
    False
    >>> occurs_as_token("bob@corp.example", "to: bob@corp.example, now")
    True
    >>> occurs_as_token("bob@corp.example", "send the notes to bob@corp.example.")
    True
    >>> occurs_as_token("bob@corp.example", "see .bob@corp.example or bob@corp.example..")
    False
    """
    token = _as_token(token)
    return len(token.text) >= 3 and _find(token, text, None)


def token_equals(token: str | Token, text: str) -> bool:
    """Whether ``text`` is the token itself (``from user`` against ``intent.entities``)."""
    token = _as_token(token)
    return len(token.text) >= 3 and len(text) == len(token.text) and _find(token, text, None)


def output_text(output: Any) -> str:
    """The text an output is searched in: strings as they are, anything else as canonical JSON."""
    return output if isinstance(output, str) else canonical_json(output)


# Never in a valid token (above U+2FFFF) and not a token character, so joining
# texts with it creates no match across two texts and acts as a text boundary.
_SEPARATOR = "\U0010ffff"


class TokenIndex:
    """A growing set of texts, searched for tokens (session outputs, intent text).

    ``add`` costs O(len(text)). ``contains`` costs O(len(token)) on average for
    a token made only of token characters (emails, hosts, numbers, names):
    such a token occurs exactly when it equals a maximal run of token
    characters, or such a run but for its final ``.`` (a full stop), which a
    set answers. Any other token (URLs, strings with spaces) is one C-speed
    scan over all texts, O(total length).

    >>> index = TokenIndex(["Mail Bob@Corp.example now", '{"url":"https://x.example/a"}'])
    >>> index.contains(provenance_token(Email("bob", "corp.example"))), index.contains("bob")
    (True, False)
    >>> index.contains(provenance_token(parse_url("https://X.example/a")))
    True
    """

    __slots__ = ("_texts", "_runs", "_lower_runs", "_joined", "_lower_joined", "_answers")

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._texts: list[str] = []
        self._runs: set[str] = set()
        self._lower_runs: set[str] = set()
        self._joined: str | None = None
        self._lower_joined: str | None = None
        # Answers since the last `add`: a session asks about the same few values again and again.
        self._answers: dict[Token, bool] = {}
        for text in texts:
            self.add(text)

    def add(self, text: str) -> None:
        self._texts.append(text)
        for run in TOKEN_RUN.findall(text):
            self._add_run(run)
            if run.endswith("."):
                self._add_run(run[:-1])
        self._joined = self._lower_joined = None
        self._answers.clear()

    def _add_run(self, run: str) -> None:
        self._runs.add(run)
        self._lower_runs.add(_ascii_lower(run))

    def __len__(self) -> int:
        return len(self._texts)

    def contains(self, token: str | Token) -> bool:
        token = _as_token(token)
        got = self._answers.get(token)
        if got is None:
            got = self._contains(token)
            if len(self._answers) >= 256:
                self._answers.clear()
            self._answers[token] = got
        return got

    def _contains(self, token: Token) -> bool:
        size = len(token.text)
        if size < 3:
            return False
        if TOKEN_RUN.fullmatch(token.text):
            if not token.caseless:
                return token.text in self._runs
            if _case_sensitive_spans(token) == []:
                return _ascii_lower(token.text) in self._lower_runs
        if _SEPARATOR in token.text:
            return any(_find(token, text, None) for text in self._texts)
        if self._joined is None:
            self._joined = _SEPARATOR.join(self._texts)
        lowered = None
        if token.caseless:
            if self._lower_joined is None:
                self._lower_joined = _ascii_lower(self._joined)
            lowered = self._lower_joined
        return _find(token, self._joined, lowered)
