"""Validation, canonical forms and provenance tokens of `aarm_runtime.values`."""

from __future__ import annotations

import doctest
import ipaddress
import json
import pickle
import re
import sys
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aarm_runtime import values
from aarm_runtime.values import (
    MAX_JSON_DEPTH,
    MAX_NUMBER_DIGITS,
    Email,
    EnumT,
    FrozenJson,
    InvalidValue,
    JsonError,
    ListT,
    OptT,
    ParamSpec,
    Path,
    Prim,
    Token,
    TokenIndex,
    Url,
    canonical_decimal,
    canonical_json,
    canonical_token,
    is_token_char,
    json_equal,
    load_json,
    occurs_as_token,
    output_text,
    parse_email,
    parse_path,
    parse_url,
    provenance_token,
    to_json_value,
    to_jsonable,
    token_equals,
    type_to_text,
    validate,
    validate_params,
)

STR, INT, DEC, BOOL = Prim("str"), Prim("int"), Prim("decimal"), Prim("bool")
EMAIL, URL, PATH, JSON = Prim("email"), Prim("url"), Prim("path"), Prim("json")


def test_doctests() -> None:
    result = doctest.testmod(values)
    assert result.attempted > 10 and result.failed == 0


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("t", "text"),
    [
        (STR, "str"),
        (EnumT(("a", "b")), 'enum("a", "b")'),
        (EnumT(('q"', "é")), 'enum("q\\"", "é")'),
        (ListT(EMAIL), "list[email]"),
        (OptT(INT), "int?"),
        (OptT(ListT(ListT(DEC))), "list[list[decimal]]?"),
    ],
)
def test_type_to_text(t: values.Type, text: str) -> None:
    assert type_to_text(t) == text


@pytest.mark.parametrize(
    "build",
    [
        lambda: Prim("float"),
        lambda: EnumT(()),
        lambda: EnumT(("a", "a")),
        lambda: EnumT(["a"]),  # type: ignore[arg-type]
        lambda: OptT(OptT(INT)),
    ],
)
def test_malformed_types_are_refused(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_types_are_hashable_values() -> None:
    assert {ListT(OptT(STR)), ListT(OptT(STR))} == {ListT(OptT(Prim("str")))}


# --------------------------------------------------------------------------- scalars, no coercion

ACCEPTED = [
    (STR, "", ""),
    (STR, "héllo \U0002ffff", "héllo \U0002ffff"),
    (INT, 42, 42),
    (INT, -(10**MAX_NUMBER_DIGITS - 1), -(10**MAX_NUMBER_DIGITS - 1)),
    (DEC, 12, Decimal(12)),
    (DEC, Decimal("1.50"), Decimal("1.5")),
    (DEC, Decimal("-0.000"), Decimal(0)),
    (DEC, Decimal("1E+3"), Decimal(1000)),
    (BOOL, True, True),
    (BOOL, False, False),
    (EnumT(("a", "b")), "b", "b"),
    (ListT(INT), [1, 2], (1, 2)),
    (ListT(INT), [], ()),
    (OptT(INT), None, None),
    (OptT(INT), 3, 3),
    (EMAIL, "a@B.c", Email("a", "b.c")),
    (PATH, "a//b/", Path("a/b")),
]

REJECTED = [
    (STR, 1),
    (STR, None),
    (STR, "\ud800"),
    (STR, "ok \U00030000"),
    (STR, "tag \U000e0067"),
    (INT, "42"),
    (INT, True),
    (INT, Decimal("1.0")),
    (INT, Decimal("1")),
    (INT, 1.0),
    (INT, 10**MAX_NUMBER_DIGITS),
    (INT, None),
    (DEC, "1.5"),
    (DEC, True),
    (DEC, 1.5),
    (DEC, Decimal("NaN")),
    (DEC, Decimal("-Infinity")),
    (DEC, Decimal(f"1E+{MAX_NUMBER_DIGITS}")),
    (DEC, Decimal(f"1E-{MAX_NUMBER_DIGITS}")),
    (BOOL, 1),
    (BOOL, "true"),
    (BOOL, None),
    (EnumT(("a", "b")), "c"),
    (EnumT(("a", "b")), "A"),
    (EnumT(("a", "b")), 1),
    (ListT(INT), (1, "2")),
    (ListT(INT), "12"),
    (ListT(INT), {"0": 1}),
    (EMAIL, 5),
    (URL, ["http://x.example"]),
    (PATH, b"/etc"),
    (JSON, 1.5),
    (JSON, {1: "a"}),
    (JSON, {"a": {"b": ["\ud800"]}}),
    (JSON, {"k\U00030000": 1}),
    (JSON, object()),
]


@pytest.mark.parametrize(("t", "raw", "expected"), ACCEPTED, ids=[f"{type_to_text(c[0])}-{i}" for i, c in enumerate(ACCEPTED)])
def test_validate_accepts(t: values.Type, raw: object, expected: object) -> None:
    got = validate(t, raw)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(("t", "raw"), REJECTED, ids=[f"{type_to_text(c[0])}-{i}" for i, c in enumerate(REJECTED)])
def test_validate_rejects(t: values.Type, raw: object) -> None:
    with pytest.raises(InvalidValue) as info:
        validate(t, raw, "params.x")
    assert info.value.path.startswith("params.x")
    assert info.value.message and info.value.message[0].islower() and not info.value.message.endswith(".")


def test_error_paths_point_into_lists_and_objects() -> None:
    with pytest.raises(InvalidValue) as info:
        validate(ListT(EMAIL), ["a@b.c", "a@b.c", "nope"], "params.cc")
    assert info.value.path == "params.cc[2]"
    with pytest.raises(InvalidValue) as info:
        validate(JSON, {"a b": [1, {"c": 1.5}]}, "params.args")
    assert info.value.path == 'params.args["a b"][1].c'


def test_error_messages_never_repeat_the_value() -> None:
    secret = "hunter2-very-secret"
    for t, raw in [(INT, secret), (EMAIL, secret), (URL, "http://" + secret + " x"), (EnumT(("a",)), secret)]:
        with pytest.raises(InvalidValue) as info:
            validate(t, raw)
        assert secret not in str(info.value)


# --------------------------------------------------------------------------- email


@pytest.mark.parametrize(
    ("text", "local", "domain"),
    [
        ("Bob@Corp.Example", "Bob", "corp.example"),
        ('"a@b"@x.example', '"a@b"', "x.example"),
        ("a@b@C", "a@b", "c"),
        ("\u00c9LODIE@\u00c9COLE.FR", "\u00c9LODIE", "\u00c9cole.fr"),
        ("x@\u212a.example", "x", "\u212a.example"),
    ],
)
def test_email_splits_at_last_at_and_lowercases_ascii_of_domain(text: str, local: str, domain: str) -> None:
    email = parse_email(text)
    assert (email.local, email.domain) == (local, domain)
    assert str(email) == f"{local}@{domain}"
    assert parse_email(str(email)) == email


@pytest.mark.parametrize(
    "text",
    ["", "no-at", "@x.example", "bob@", "bob @x.example", "bob@x.example\n", "bob\t@x", "bob@x\u200b.example",
     "bob@x\u00a0y", "b\x00b@x", "bob@x\u202e.example", "bob@x.example\x7f"],
)
def test_email_rejects(text: str) -> None:
    with pytest.raises(InvalidValue):
        parse_email(text)


# --------------------------------------------------------------------------- url

GOOD_URLS = [
    ("HTTP://X.COM", Url("http", "x.com", None, "", None, None, None)),
    ("https://x.example/", Url("https", "x.example", None, "/", None, None, None)),
    ("http://good.com@evil.com/", Url("http", "evil.com", None, "/", None, None, "good.com")),
    ("http://evil.com#@good.com", Url("http", "evil.com", None, "", None, "@good.com", None)),
    ("http://evil.com?@good.com", Url("http", "evil.com", None, "", "@good.com", None, None)),
    ("http://U:P@h.example:0080/p", Url("http", "h.example", 80, "/p", None, None, "U:P")),
    ("http://x.com:", Url("http", "x.com", None, "", None, None, None)),
    ("http://x.com:65535?", Url("http", "x.com", 65535, "", "", None, None)),
    ("http://x.com./a", Url("http", "x.com", None, "/a", None, None, None)),
    ("http://127.0.0.1:8/", Url("http", "127.0.0.1", 8, "/", None, None, None)),
    ("http://1.example/", Url("http", "1.example", None, "/", None, None, None)),
    ("http://[::FFFF:127.0.0.1]/", Url("http", "[::ffff:7f00:1]", None, "/", None, None, None)),
    ("http://[2001:DB8:0:0:1:0:0:1]:1", Url("http", "[2001:db8::1:0:0:1]", 1, "", None, None, None)),
    ("http://[2001:db8:0:1:1:1:1:1]", Url("http", "[2001:db8:0:1:1:1:1:1]", None, "", None, None, None)),
    ("http://x/a/./b/../../c", Url("http", "x", None, "/c", None, None, None)),
    ("http://x/a/%2e%2E/b", Url("http", "x", None, "/b", None, None, None)),
    ("http://x/../../a", Url("http", "x", None, "/a", None, None, None)),
    ("http://x/a/%2f/%7e%41", Url("http", "x", None, "/a/%2F/~A", None, None, None)),
    ("http://x/K\u00f6ln?q=\u00e9#\u00e9", Url("http", "x", None, "/K\u00f6ln", "q=\u00e9", "\u00e9", None)),
    ("git+ssh://x:22/r.git", Url("git+ssh", "x", 22, "/r.git", None, None, None)),
    ("http://xn--exmple-cua.com", Url("http", "xn--exmple-cua.com", None, "", None, None, None)),
    ("http://x?a=/b?c#d?/e", Url("http", "x", None, "", "a=/b?c", "d?/e", None)),
]

BAD_URLS = [
    "",
    "x.example",
    "//x.example/",
    "mailto:bob@x.example",
    "http:/x.example",
    "1http://x",
    "http:///path",
    "http://",
    "http://:80/",
    "http://a@b@c/",
    "http://x.com:65536/",
    "http://x.com:8a/",
    "http://x.com:\u0661/",
    "http://0x7f.1/",
    "http://2130706433/",
    "http://127.1/",
    "http://127.000.0.1/",
    "http://1.2.3.256/",
    "http://1.2.3.4.5/",
    "http://x.0x10/",
    "http://a..b/",
    "http://.a/",
    "http://a.b../",
    "http://ex%41mple.com/",
    "http://ex\u00e4mple.com/",
    "http://x.com\\@evil.com/",
    "http://x com/",
    "http://[fe80::1%25eth0]/",
    "http://[v1.fe]/",
    "http://[::1/",
    "http://[::1]x/",
    "http://[1:2:3]/",
    "http://x/a b",
    "http://x/a<b>",
    "http://x/a%zz",
    "http://x/a%4",
    "http://x/\u200b",
    "http://x/\x00",
    "http://x/a[]",
    "http://x?q=a b",
    "http://x#a#b",
    "http://x#\x01",
    "http://u\u200b@x/",
    "http://x/\U00030000",
]


@pytest.mark.parametrize(("text", "expected"), GOOD_URLS)
def test_url_parses_and_normalises(text: str, expected: Url) -> None:
    url = parse_url(text)
    assert url == expected
    assert parse_url(str(url)) == url


@pytest.mark.parametrize("text", BAD_URLS)
def test_url_rejects(text: str) -> None:
    with pytest.raises(InvalidValue):
        parse_url(text)


@given(st.integers(min_value=0, max_value=2**128 - 1))
@settings(max_examples=200)
def test_ipv6_hosts_are_rfc5952(value: int) -> None:
    address = ipaddress.IPv6Address(value)
    url = parse_url(f"http://[{address.exploded.upper()}]/")
    assert ipaddress.IPv6Address(url.host[1:-1]) == address
    if "." not in address.compressed:
        assert url.host == f"[{address.compressed}]"


_URL_PART = st.text(alphabet="aZ09-._~!$&'()*+,;=:@/?%2fé", max_size=8)


@st.composite
def url_texts(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "HTTPS", "a+b"]))
    userinfo = draw(st.one_of(st.none(), st.text(alphabet="aB:%41", max_size=4)))
    host = draw(st.sampled_from(["x.example", "X.Example.", "[::1]", "10.0.0.1", "a-b.c"]))
    port = draw(st.one_of(st.none(), st.integers(0, 65535)))
    path = draw(st.lists(st.sampled_from(["a", "B", ".", "..", "%2e", "%2E%2e", "", "%7e", "é"]), max_size=5))
    query = draw(st.one_of(st.none(), _URL_PART))
    fragment = draw(st.one_of(st.none(), _URL_PART))
    text = f"{scheme}://" + (f"{userinfo}@" if userinfo is not None else "") + host
    text += f":{port}" if port is not None else ""
    text += "".join("/" + segment for segment in path)
    text += f"?{query}" if query is not None else ""
    text += f"#{fragment}" if fragment is not None else ""
    return text


@given(url_texts())
@settings(max_examples=200)
def test_url_canonical_form_is_a_fixed_point(text: str) -> None:
    try:
        url = parse_url(text)
    except InvalidValue:
        return  # e.g. a `%` not followed by two hex digits
    assert parse_url(str(url)) == url
    assert "/./" not in url.path and "/../" not in url.path and not url.path.endswith(("/.", "/.."))
    assert url.host == url.host.lower()


# --------------------------------------------------------------------------- path


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("/", "/"),
        ("//", "/"),
        ("///etc//./passwd/", "/etc/passwd"),
        (".", "."),
        ("./", "."),
        ("./a/./b", "a/b"),
        ("a", "a"),
        ("...", "..."),
        ("a/..b/c..", "a/..b/c.."),
        ("~/x", "~/x"),
        ("a\\..\\b", "a\\..\\b"),
    ],
)
def test_path_normalises(text: str, canonical: str) -> None:
    assert parse_path(text) == Path(canonical)
    assert parse_path(canonical) == Path(canonical)


@pytest.mark.parametrize("text", ["", "..", "../a", "a/..", "/a/../b", "a/./../b", "/x/..//", "a\x00b"])
def test_path_rejects(text: str) -> None:
    with pytest.raises(InvalidValue):
        parse_path(text)


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("0", "0"),
        ("-0", "0"),
        ("-0.00E-7", "0"),
        ("1.50", "1.5"),
        ("1E+3", "1000"),
        ("1.000", "1"),
        ("-12.5E-3", "-0.0125"),
        ("123456789012345678901234567890.123456789", "123456789012345678901234567890.123456789"),
        ("0.1", "0.1"),
        ("100", "100"),
        ("1E-30", "0." + "0" * 29 + "1"),
    ],
)
def test_canonical_decimal(text: str, canonical: str) -> None:
    assert canonical_decimal(Decimal(text)) == canonical


def test_canonical_decimal_refuses_non_finite() -> None:
    with pytest.raises(ValueError):
        canonical_decimal(Decimal("NaN"))


_CANONICAL_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")


@given(st.decimals(allow_nan=False, allow_infinity=False))
@settings(max_examples=200)
def test_canonical_decimal_is_exact_and_unique(d: Decimal) -> None:
    text = canonical_decimal(d)
    assert Decimal(text) == d
    assert _CANONICAL_NUMBER.fullmatch(text) and text != "-0"
    assert canonical_decimal(Decimal(text)) == text
    # Another spelling of the same number has the same canonical form.
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    assert canonical_decimal(Decimal((sign, (*digits, 0, 0), exponent - 2))) == text


# --------------------------------------------------------------------------- json


def test_load_json_is_exact() -> None:
    value = load_json('{"a": 0.1, "b": 10, "c": 1e2, "d": [1.50, -0], "e": "\\u00e9"}')
    assert value == {"a": Decimal("0.1"), "b": 10, "c": Decimal(100), "d": [Decimal("1.50"), 0], "e": "é"}
    assert type(value["b"]) is int and type(value["c"]) is Decimal
    assert load_json(b'[true, null]') == [True, None]


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "[Infinity]",
        '{"a": -Infinity}',
        '{"a": 1, "a": 1}',
        '[{"x": {"k": 1, "k": 2}}]',
        "[1,]",
        "{'a': 1}",
        "1" * (MAX_NUMBER_DIGITS + 1),
        f"1e{MAX_NUMBER_DIGITS}",
        "1e99999999999999999999999",
        "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
        "[" * 100_000,
    ],
)
def test_load_json_rejects(text: str) -> None:
    with pytest.raises(JsonError):
        load_json(text)


def test_load_json_accepts_the_limits() -> None:
    assert load_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    assert load_json("9" * MAX_NUMBER_DIGITS) == 10**MAX_NUMBER_DIGITS - 1


def test_json_values_are_frozen_and_canonical() -> None:
    a = validate(JSON, load_json('{"b": [1, 2.0, {"y": null, "x": "s"}], "a": true}'))
    b = validate(JSON, {"a": True, "b": (1, 2, FrozenJson({"x": "s", "y": None}))})
    assert isinstance(a, FrozenJson) and a == b and hash(a) == hash(b)
    assert list(a) == ["a", "b"] and a["b"][1] == 2 and type(a["b"][1]) is int
    assert a["b"][2]["x"] == "s" and len(a) == 2 and "a" in a
    assert validate(JSON, Decimal("2.50")) == Decimal("2.5")
    with pytest.raises(AttributeError):
        a._items = ()  # type: ignore[misc]


def test_values_and_errors_survive_pickling() -> None:
    value = validate_params(SEND, {"to": "a@b.c", "subject": "s", "body": "b"})
    value["j"] = validate(JSON, {"k": [1, {"x": Decimal("0.5")}]})
    value["u"] = parse_url("https://x.example/a?b#c")
    assert pickle.loads(pickle.dumps(value)) == value
    error = pickle.loads(pickle.dumps(InvalidValue("params.to", "expected an email: no `@`")))
    assert (error.path, error.message, str(error)) == ("params.to", "expected an email: no `@`", "params.to: expected an email: no `@`")


def test_json_true_is_not_one() -> None:
    assert validate(JSON, {"a": True}) != validate(JSON, {"a": 1})
    assert validate(JSON, {"a": [True]}) != validate(JSON, {"a": [1]})
    assert not json_equal(True, 1) and not json_equal((True,), (1,))
    assert json_equal(validate(JSON, Decimal("1.0")), 1)
    assert json_equal({"b": 1, "a": [Decimal("0.50")]}, FrozenJson({"a": (Decimal("0.5"),), "b": 1}))


def test_json_depth_limit() -> None:
    deep: object = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    with pytest.raises(InvalidValue):
        validate(JSON, deep)


def test_canonical_json_rfc8785_key_order() -> None:
    # The property-sorting example of RFC 8785 §3.2.3: UTF-16 code unit order.
    obj = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    order = [json.loads("[" + k + "]")[0] for k in re.findall(r'("(?:[^"\\]|\\.)*"):', canonical_json(obj))]
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert list(FrozenJson(obj)) == order


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("\x00\x1f\x7f\"\\/\u2028\b\t\n\f\r", '"\\u0000\\u001f\x7f\\"\\\\/\u2028\\b\\t\\n\\f\\r"'),
        ("\ud800x", '"\\ud800x"'),
        ([Decimal("1E+2"), Decimal("-0.0"), 10**20, None, False], "[100,0,100000000000000000000,null,false]"),
        ({"u": parse_url("HTTP://X/"), "e": Email("a", "b"), "p": Path("/a")}, '{"e":"a@b","p":"/a","u":"http://x/"}'),
        ((), "[]"),
        ({}, "{}"),
    ],
)
def test_canonical_json(value: object, text: str) -> None:
    assert canonical_json(value) == text


@pytest.mark.parametrize("value", [1.5, {1: 2}, object(), Decimal("Infinity")])
def test_canonical_json_rejects(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        canonical_json(value)


_KEYS = st.text(alphabet=st.characters(max_codepoint=0xD7FF), max_size=4)
_PLAIN_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=3),
    max_leaves=12,
)


@given(_PLAIN_JSON)
@settings(max_examples=200)
def test_canonical_json_agrees_with_json_dumps_where_they_coincide(value: object) -> None:
    # Below U+D800 code point order is UTF-16 order, and json.dumps escapes
    # exactly what RFC 8785 escapes, so the two must agree byte for byte.
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(value) == expected
    assert load_json(expected) == value


# --------------------------------------------------------------------------- validate_params

SEND = [
    ParamSpec("to", EMAIL),
    ParamSpec("cc", ListT(EMAIL), default=[], has_default=True),
    ParamSpec("subject", STR),
    ParamSpec("body", STR),
    ParamSpec("folder", STR, default="INBOX", has_default=True),
    ParamSpec("reply_to", OptT(EMAIL), optional=True),
    ParamSpec("limit", INT, optional=True),
]


def test_validate_params_fills_defaults_and_omits_absent_optionals() -> None:
    got = validate_params(SEND, {"to": "Bob@Corp.Example", "subject": "s", "body": "b"})
    assert got == {"to": Email("Bob", "corp.example"), "cc": (), "subject": "s", "body": "b", "folder": "INBOX"}
    assert list(got) == ["to", "cc", "subject", "body", "folder"]


def test_validate_params_null_means_absent_for_optional_params() -> None:
    got = validate_params(
        SEND, {"to": "a@b.c", "subject": "s", "body": "b", "cc": None, "reply_to": None, "limit": None}
    )
    assert got["cc"] == () and "reply_to" not in got and "limit" not in got
    got = validate_params(SEND, {"to": "a@b.c", "subject": "s", "body": "b", "reply_to": "R@X.y", "limit": 3})
    assert got["reply_to"] == Email("R", "x.y") and got["limit"] == 3


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        ({"subject": "s", "body": "b"}, "params.to", "missing required parameter"),
        ({"to": None, "subject": "s", "body": "b"}, "params.to", "got null"),
        ({"to": "a@b.c", "subject": "s", "body": "b", "bcc": []}, "params.bcc", "unknown parameter"),
        ({"zz": 1, "a b": 1, "to": "a@b.c"}, 'params["a b"]', "unknown parameter"),
        ({"to": "a@b.c", "subject": "s", "body": 1}, "params.body", "expected `str`"),
        ({"to": "a@b.c", "subject": "s", "body": "b", "cc": ["a@b.c", "x"]}, "params.cc[1]", "email"),
        ({"to": "a@b.c", "subject": "s", "body": "b", "limit": "3"}, "params.limit", "expected `int`"),
        (["to"], "params", "expected an object"),
    ],
)
def test_validate_params_rejects(raw: object, path: str, fragment: str) -> None:
    with pytest.raises(InvalidValue) as info:
        validate_params(SEND, raw)
    assert info.value.path == path
    assert fragment in info.value.message


def test_validate_params_validates_defaults() -> None:
    schema = [ParamSpec("n", INT, default="100", has_default=True)]
    with pytest.raises(InvalidValue) as info:
        validate_params(schema, {})
    assert info.value.path == "params.n"
    assert validate_params(schema, {"n": 5}) == {"n": 5}
    assert validate_params([ParamSpec("n", DEC, default=100, has_default=True)], {}) == {"n": Decimal(100)}


# --------------------------------------------------------------------------- round trips

_SAMPLES = [
    (STR, st.text(alphabet=st.characters(max_codepoint=0x2FFFF, exclude_categories=["Cs"]), max_size=8)),
    (INT, st.integers()),
    (DEC, st.decimals(allow_nan=False, allow_infinity=False) | st.integers()),
    (BOOL, st.booleans()),
    (EMAIL, st.builds(lambda a, b: f"{a}@{b}", st.text("aB.+-@", min_size=1, max_size=5), st.text("xY.-", min_size=1, max_size=5))),
    (URL, url_texts()),
    (PATH, st.lists(st.sampled_from(["a", "B", ".", "", "é"]), min_size=1, max_size=4).map("/".join)),
    (EnumT(("x", "yy", "zzz")), st.sampled_from(["x", "yy", "zzz"])),
    (ListT(OptT(INT)), st.lists(st.none() | st.integers(), max_size=3)),
    (JSON, _PLAIN_JSON),
]


@given(st.sampled_from(range(len(_SAMPLES))).flatmap(lambda i: st.tuples(st.just(_SAMPLES[i][0]), _SAMPLES[i][1])))
@settings(max_examples=300)
def test_validate_is_idempotent_and_to_json_value_inverts_it(sample: tuple[values.Type, object]) -> None:
    t, raw = sample
    try:
        value = validate(t, raw)
    except InvalidValue:
        return
    assert validate(t, value) == value
    assert validate(t, to_json_value(value)) == value
    assert validate(t, load_json(canonical_json(to_json_value(value)))) == value
    hash(value)
    json.dumps(to_jsonable(value))


def test_to_jsonable_writes_decimals_as_canonical_strings() -> None:
    value = validate_params(
        [ParamSpec("amount", DEC), ParamSpec("url", URL), ParamSpec("p", PATH), ParamSpec("j", JSON)],
        {"amount": Decimal("1000.00"), "url": "HTTP://X/", "p": "/a/", "j": {"k": [Decimal("0.50")]}},
    )
    assert to_jsonable(value) == {"amount": "1000", "url": "http://x/", "p": "/a", "j": {"k": ["0.5"]}}
    assert to_json_value(value)["amount"] == Decimal(1000)


# --------------------------------------------------------------------------- provenance


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("abc", "abc"),
        ("ab", None),
        ("é日本", "é日本"),
        (1000, "1000"),
        (-42, "-42"),
        (42, None),
        (Decimal("1E+3"), "1000"),
        (Decimal("1.50"), "1.5"),
        (Decimal("0.5"), "0.5"),
        (True, None),
        (None, None),
        ((1, 2, 3), None),
        (FrozenJson({"a": 1}), None),
        (Email("Bob", "corp.example"), "bob@corp.example"),
        (Email("a", "b"), "a@b"),
        (parse_url("HTTPS://Bob@X.Example/Path?Q"), "https://Bob@x.example/Path?Q"),
        (Path("/etc/passwd"), "/etc/passwd"),
        (Path("/a"), None),
    ],
)
def test_canonical_token(value: object, token: str | None) -> None:
    assert canonical_token(value) == token


@pytest.mark.parametrize(
    ("token", "text", "found"),
    [
        ("bob@corp.example", "send to bob@corp.example", True),
        ("bob@corp.example", "bob@corp.example", True),
        ("bob@corp.example", "(bob@corp.example)", True),
        ("bob@corp.example", "<bob@corp.example>, x", True),
        # A `.` after the token is a full stop when no token character follows it.
        ("bob@corp.example", "send the notes to bob@corp.example.", True),
        ("bob@corp.example", "mail bob@corp.example. Then call", True),
        ("bob@corp.example", "(to bob@corp.example.)", True),
        ("bob@corp.example", "bob@corp.example.\n", True),
        ("bob@corp.example", "bob@corp.example.evil.net", False),
        ("bob@corp.example", "bob@corp.example.evil.com", False),
        ("bob@corp.example", "bob@corp.example.com", False),
        ("bob@corp.example", "bob@corp.example..", False),
        ("bob@corp.example", "bob@corp.example...", False),
        ("bob@corp.example", "bob@corp.example.-", False),
        ("bob@corp.example", "bob@corp.example._", False),
        ("bob@corp.example", "bob@corp.example.@x", False),
        ("bob@corp.example", "bob@corp.example.é", False),
        ("bob@corp.example", "bob@corp.example.\u0663", False),
        ("bob@corp.example", ".bob@corp.example", False),  # only a trailing full stop
        ("bob@corp.example", "see .bob@corp.example.", False),
        ("bob@corp.example", "bob@corp.example-.", False),
        ("corp.example.", "at corp.example..", True),  # the token's own `.`, then a full stop
        ("corp.example", "at corp.example..", False),
        ("bob@corp.example", "xbob@corp.example", False),
        ("bob@corp.example", "a.bob@corp.example", False),
        ("bob@corp.example", "_bob@corp.example", False),
        ("bob@corp.example", "-bob@corp.example", False),
        ("bob@corp.example", "@bob@corp.example", False),
        ("bob@corp.example", "bob@corp.example-x", False),
        ("bob@corp.example", "bob@corp.exampleé", False),
        ("bob@corp.example", "bob@corp.example\u0663", False),
        ("bob@corp.example", "bob@corp.example\u00b2", False),
        ("bob@corp.example", "bob@corp.example+x", True),
        ("bob@corp.example", "bob@corp.example\u0301", True),  # a combining mark is not alphanumeric
        ("bob@corp.example", "Bob@corp.example", False),  # plain str tokens are case-sensitive
        ("1000", "pay 1000 now", True),
        ("1000", "pay 10000", False),
        ("1000", "pay 1,000", False),
        ("1000", "1000.50", False),
        ("1000", "pay 1000.", True),
        ("1000", "pay 1000.5.", False),
        ("-42", "x=-42;", True),
        ("-42", "x--42", False),
        ("a b", "xa b", False),
        ("a b", "a a b c", True),
        ("aaa", "aaaa aaa", True),
        ("aaa", "aaaa", False),
        ("ab", "ab", False),
        (" ab", "( ab", True),
        (" ab", "x ab", False),
    ],
)
def test_occurs_as_token(token: str, text: str, found: bool) -> None:
    assert occurs_as_token(token, text) is found
    assert TokenIndex(["zzz", text, "yyy"]).contains(token) is found


@pytest.mark.parametrize(
    ("value", "text", "found"),
    [
        (Email("bob", "corp.example"), "Mail BOB@Corp.Example today", True),
        (Email("Bob", "corp.example"), "mail bob@corp.example", True),
        (Email("bob", "corp.example"), "mail bob@corp.example.evil", False),
        (parse_url("https://x.example/Doc"), "see HTTPS://X.Example/Doc here", True),
        (parse_url("https://x.example/Doc"), "see https://x.example/doc here", False),
        (parse_url("https://x.example/Doc"), "see https://x.example/Doc/more", True),
        (parse_url("https://x.example/Doc"), "see https://x.example/Docs", False),
        (parse_url("https://U@x.example/"), "at https://U@X.EXAMPLE/ ok", True),
        (parse_url("https://U@x.example/"), "at https://u@x.example/ ok", False),
        (parse_url("http://[::1]:8/"), "at http://[::1]:8/ ok", True),
        (Decimal("1000.00"), "amount: 1000", True),
        (Path("/etc/passwd"), "cat /etc/passwd", True),
        (Path("/etc/passwd"), "cat /etc/passwd.bak", False),
        (Path("/etc/passwd"), "read /etc/passwd.", True),
        (Email("bob", "corp.example"), "Mail BOB@Corp.Example.", True),
        (Email("bob", "corp.example"), "Mail BOB@Corp.Example.Evil.com", False),
        (parse_url("https://x.example/Doc"), "see HTTPS://X.Example/Doc.", True),
        (parse_url("https://x.example/Doc"), "see https://x.example/Doc.html", False),
        (Decimal("1.5"), "costs 1.5.", True),
        (Decimal("1.5"), "version 1.5.1", False),
        (True, "true", False),
    ],
)
def test_value_occurs_in_text(value: object, text: str, found: bool) -> None:
    token = provenance_token(value)
    assert (token is not None and occurs_as_token(token, text)) is found
    assert (token is not None and TokenIndex([text]).contains(token)) is found


def test_token_equals_for_intent_entities() -> None:
    token = provenance_token(Email("bob", "corp.example"))
    assert token is not None
    assert token_equals(token, "Bob@Corp.Example")
    assert not token_equals(token, "bob@corp.example ")
    assert not token_equals(token, "bob@corp.exampl")
    assert token_equals("1000", "1000") and not token_equals("ab", "ab")


def test_token_characters_are_unicode_alphanumerics_and_at_dot_underscore_dash() -> None:
    assert all(is_token_char(c) for c in "aZ09é\u0663\u00b2_@.-日")
    assert not any(is_token_char(c) for c in " \t\n,;:/()<>+'\"\u0301\u200b\U0010ffff")
    # TokenIndex relies on `re`'s \w being exactly `isalnum() or "_"`.
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    assert set(re.findall(r"[\w@.\-]", every)) == {c for c in every if is_token_char(c)}


def test_output_text() -> None:
    assert output_text("plain text") == "plain text"
    assert output_text({"to": "bob@x.example", "n": Decimal("1.0")}) == '{"n":1,"to":"bob@x.example"}'
    assert output_text([1, "a"]) == '[1,"a"]'


def test_token_index_grows() -> None:
    index = TokenIndex()
    assert len(index) == 0 and not index.contains("abc")
    index.add("one abc")
    assert index.contains("abc") and not index.contains("a b")
    index.add("two a b")
    assert index.contains("a b") and len(index) == 2
    assert not index.contains("abc two")  # no match across two texts
    index.add("then x@y.example.")
    assert index.contains("x@y.example") and index.contains("x@y.example.") and not index.contains("y.example.")
    index.add("and q@r.example.evil.")
    assert index.contains("q@r.example.evil") and not index.contains("q@r.example")
    assert TokenIndex(["x\U0010ffffy"]).contains("x\U0010ffffy")  # the join separator inside a token


_TEXT_ALPHABET = "abAB@.-_ é/:\u0663\U0010ffff"


@st.composite
def token_cases(draw: st.DrawFn) -> tuple[list[str], Token]:
    texts = draw(st.lists(st.text(alphabet=_TEXT_ALPHABET, max_size=12), max_size=4))
    source = "".join(texts)
    if source and draw(st.booleans()):
        start = draw(st.integers(0, len(source) - 1))
        end = draw(st.integers(start, len(source)))
        text = source[start:end]
    else:
        text = draw(st.text(alphabet=_TEXT_ALPHABET, max_size=6))
    spans: tuple[tuple[int, int], ...] = ()
    if text and draw(st.booleans()):
        lo = draw(st.integers(0, len(text)))
        hi = draw(st.integers(lo, len(text)))
        spans = ((lo, hi),)
        text = text[:lo] + "".join(map(_ascii_lower, text[lo:hi])) + text[hi:]
    return texts, Token(text, spans)


def _ascii_lower(char: str) -> str:
    return chr(ord(char) + 32) if "A" <= char <= "Z" else char


def _reference_occurs(token: Token, text: str) -> bool:
    # Every position, compared character by character: obviously right, slow.
    size = len(token.text)
    if size < 3:
        return False
    for at in range(len(text) - size + 1):
        if at > 0 and is_token_char(text[at - 1]):
            continue
        after = text[at + size : at + size + 2]
        full_stop = after[:1] == "." and (len(after) == 1 or not is_token_char(after[1]))
        if after and is_token_char(after[0]) and not full_stop:
            continue
        for i in range(size):
            a, b = text[at + i], token.text[i]
            if any(lo <= i < hi for lo, hi in token.caseless):
                a, b = _ascii_lower(a), _ascii_lower(b)
            if a != b:
                break
        else:
            return True
    return False


@given(token_cases())
@settings(max_examples=300)
def test_token_index_agrees_with_a_position_by_position_search(case: tuple[list[str], Token]) -> None:
    texts, token = case
    expected = any(_reference_occurs(token, text) for text in texts)
    assert any(occurs_as_token(token, text) for text in texts) is expected
    assert TokenIndex(texts).contains(token) is expected
    index = TokenIndex()
    for text in texts:
        index.add(text)
        index.contains(token)  # a query between adds must not spoil the cache
    assert index.contains(token) is expected
