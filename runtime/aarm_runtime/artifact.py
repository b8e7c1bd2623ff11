"""The compiled policy artifact (`policy.aarmc`): format version 1.

This module is the definition of the format. The compiler (`aarmc compile`)
writes it with the encoders below; the runtime reads it with `load_artifact`.
`docs/artifact.md` is the same description for readers of the bytes.

Envelope
--------
A tagged COSE_Sign1 (RFC 9052, see `aarm_runtime.cose`) signed with Ed25519:
protected header ``{1: -19, 4: kid, 15: {2: POLICY-NAME, 6: IAT[, 1: ISS]},
16: "application/aarm-policy+cose"}``, unprotected ``{}``, the payload
attached. The ``typ`` is checked before anything else is believed, so a
receipt or checkpoint signed by the same key never loads as a policy; the CWT
``sub`` must equal the payload's policy name.

An *unsigned* artifact is the bare payload (no envelope). It exists for
development only and loads only with ``unsafe_unsigned=True``; that switch
also skips the signature check of an enveloped artifact, but never its
``typ`` check.

Payload
-------
Deterministic CBOR (RFC 8949 §4.2.1, `aarm_runtime.dcbor`), decoded strictly:
a map with integer keys.

====  ============  ==========================================================
key   name          value
====  ============  ==========================================================
0     format        1 (`FORMAT_VERSION`); any other number is refused
1     policy        policy name (text); equals the CWT ``sub``
2     version       policy version (text)
3     sources       ``[[file, [-16, sha256]], ...]`` of every source file
4     default       ``"allow"`` or ``"deny"``: the posture of declared tools
5     labels        ``[label, ...]``, bottom first (level = position)
6     tags          ``[tag, ...]``
7     consts        ``[[name, VALUE], ...]`` (informational: conditions carry
                    their constants inlined)
8     env           ``[[name, TYPE], ...]``: declared env attributes
9     nodes         ``[NODE, ...]``: the expression program (below)
10    rules         ``[RULE, ...]`` in source order; a rule's position is its
                    source index
11    tools         ``[TOOL, ...]`` sorted by name, each with its table
12    check         ``[-16, sha256]`` of the check report the policy passed,
                    or null
13    validation    ``{0: "z3 VERSION", 1: tools proved by the solver,
                    2: tools proved by structural identity}`` when
                    translation validation proved every table, else null
14    compiler      text naming the compiler that wrote the artifact
====  ============  ==========================================================

VALUE (literals, defaults, consts) — plain CBOR for null, bool, text and
integers in the 64-bit range; everything else is an array whose first
element says what it is:
``[1, "decimal text"]`` Decimal (canonical text), ``[2, local, domain]``
email, ``[3, scheme, host, port|null, path, query|null, fragment|null,
userinfo|null]`` url, ``[4, text]`` path, ``[5, [VALUE...]]`` list,
``[6, [VALUE...]]`` set (elements sorted by their encoding), ``[7, [[key,
VALUE], ...]]`` json object (keys sorted as RFC 8785 does), ``[8, "digits"]``
an integer outside the 64-bit range.

TYPE — ``"str" "int" "decimal" "bool" "email" "url" "path" "json"``,
``[0, [value, ...]]`` enum, ``[1, TYPE]`` list, ``[2, TYPE]`` optional.

NODE — an array ``[op, ...]``; an operand that is a node is the index of an
*earlier* node (the program is a DAG in topological order, so equal
sub-expressions are stored, and evaluated, once):

====  ======  ===============================================  ===========================
op    name    operands                                         meaning
====  ======  ===============================================  ===========================
0     LIT     VALUE                                            a literal (inlined const)
1     LABEL   name, level                                      a label as its level
2     PARAM   name                                             ``params.name``
3     VAR     name                                             a quantifier variable
4     FIELD   node, name                                       ``.domain`` ``.host`` ...
5     CTX     source, key                                      ``env.x`` ``session.tags`` ...
6     COUNT   [tool, ...], seconds|null                        ``session.count(... within D)``
7     USED    [tool, ...]                                      ``session.used(...)``
8     LEN     node                                             ``len(x)``
9     HAS     node (a PARAM or CTX node)                       ``has params.x`` / ``has env.x``
10    NOT     node
11    AND     [node, ...]
12    OR      [node, ...]
13    CMP     operator text, left node, right node             ``== != < <= > >= in`` ...
14    MATCH   node, pattern, flags                             regex search (`aarm_runtime.regex`)
15    FROM    node, "user"|"untrusted"|"tools", [tool, ...]    provenance
16    QUANT   "all"|"any", variable, list node, body node
====  ======  ===============================================  ===========================

Records are fixed-length arrays (the format version says which fields
exist; a reader checks the length):

RULE — ``[id, effect, priority (-1 for forbid), condition node or null
(always true), [[param, node], ...] (the assignments of a modify, in source
order), [approver, ...], timeout seconds or null, because text or null,
[file, line, col, end_line, end_col] or null, explicit priority (bool),
[tool, ...] (the tools its selector covers)]``.

TOOL — ``[name, [PARAM, ...], OUTPUT, [effect, ...], [name param, args
param] of a meta-tool or null, GROUP of the forbid rules, [GROUP, ...] the
other rules by priority, highest first]``. The groups list exactly the rules
whose selector covers the tool. PARAM: ``[name, TYPE, optional, has
default, default VALUE or null, sensitive]``. OUTPUT: ``[none, level,
untrusted, [tag, ...], declared]``.

GROUP — the tool's rules of one priority, in source order, and optionally an
equality index: ``[priority, [rule position, ...], INDEX or null]``.
INDEX = ``[key node, [[key, [rule position, ...]], ...]]``: each
listed rule has a top-level conjunct ``key == k`` (or ``key in {k, ...}``)
and can only be true when the key node's value is one of its keys; rules of
the group in no entry are always candidates. Keys are text or integers.
Translation validation proves each tool's table, index included, decides as
the source policy does.
"""

from __future__ import annotations

import decimal
import hashlib
import os
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import cbor2

from aarm_runtime import cose, dcbor, keys, values

__all__ = [
    "FORMAT_VERSION",
    "TYP_POLICY",
    "OPS",
    "Artifact",
    "ArtifactError",
    "ArtifactFormatError",
    "ArtifactSignatureError",
    "EqIndex",
    "Group",
    "OutputDecl",
    "ParamDecl",
    "RuleEntry",
    "ToolEntry",
    "UnsupportedFormatVersion",
    "decode_payload",
    "decode_type",
    "decode_value",
    "encode_type",
    "encode_value",
    "load_artifact",
    "read_artifact_file",
    "sign_payload",
]

FORMAT_VERSION = 1
TYP_POLICY = cose.TYP_POLICY
_SHA256 = -16  # COSE algorithm id of SHA-256 (RFC 9054), the digest shape of RECEIPTS.md

# Payload keys.
K_FORMAT, K_POLICY, K_VERSION, K_SOURCES, K_DEFAULT, K_LABELS, K_TAGS = 0, 1, 2, 3, 4, 5, 6
K_CONSTS, K_ENV, K_NODES, K_RULES, K_TOOLS, K_CHECK, K_VALIDATION, K_COMPILER = 7, 8, 9, 10, 11, 12, 13, 14

# Node opcodes.
LIT, LABEL, PARAM, VAR, FIELD, CTX, COUNT, USED, LEN, HAS, NOT, AND, OR, CMP, MATCH, FROM, QUANT = range(17)
OPS = ("LIT", "LABEL", "PARAM", "VAR", "FIELD", "CTX", "COUNT", "USED", "LEN", "HAS", "NOT", "AND", "OR",
       "CMP", "MATCH", "FROM", "QUANT")

CMP_OPS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "not in", "startswith", "endswith", "contains"})
EFFECTS = ("forbid", "deny", "allow", "modify", "step_up", "defer")
FIELDS = frozenset({"local", "domain", "scheme", "host", "path"})
CONTEXT_SOURCES = ("session", "intent", "identity", "env", "risk")

# Value kinds (first element of an array VALUE).
_V_DECIMAL, _V_EMAIL, _V_URL, _V_PATH, _V_LIST, _V_SET, _V_OBJECT, _V_BIGINT = 1, 2, 3, 4, 5, 6, 7, 8
_INT64_MIN, _UINT64_MAX = -(2**64), 2**64 - 1

# A policy file of many thousand rules is a few megabytes; this refuses a
# runaway file before it is read into memory.
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024


class ArtifactError(Exception):
    """An artifact was refused; nothing from it was loaded."""


class ArtifactSignatureError(ArtifactError):
    """The envelope is malformed, of another type, signed by an untrusted key or not verifiable."""


class ArtifactFormatError(ArtifactError):
    """The payload is not a well-formed format-1 artifact; `path` says where."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"artifact payload `{path}`: {message}")
        self.path = path
        self.message = message


class UnsupportedFormatVersion(ArtifactFormatError):
    """The payload declares a format version this runtime does not read."""


# ------------------------------------------------------------------ decoded records
# Immutable named tuples rather than dataclasses: a dataclass costs about a
# millisecond to define, and import time is part of the load budget.


class ParamDecl(NamedTuple):
    name: str
    type: Any
    optional: bool
    has_default: bool
    default: Any
    sensitive: bool

    def spec(self) -> values.ParamSpec:
        """The `values.ParamSpec` that validates this param (as the reference builds it)."""
        return values.ParamSpec(self.name, self.type, self.default if self.has_default else None,
                                self.has_default, self.optional)


class OutputDecl(NamedTuple):
    none: bool
    level: int
    untrusted: bool
    tags: tuple[str, ...]
    declared: bool


class RuleEntry(NamedTuple):
    id: str
    effect: str
    priority: int
    condition: int | None
    assignments: tuple[tuple[str, int], ...]
    approvers: tuple[str, ...]
    timeout_s: int | None
    because: str | None
    span: tuple[str, int, int, int, int] | None
    explicit_priority: bool
    tools: tuple[str, ...]
    index: int  # source position


class EqIndex(NamedTuple):
    key: int
    entries: tuple[tuple[Any, tuple[int, ...]], ...]


class Group(NamedTuple):
    priority: int
    rules: tuple[int, ...]
    index: EqIndex | None


class ToolEntry(NamedTuple):
    name: str
    params: tuple[ParamDecl, ...]
    output: OutputDecl
    effects: tuple[str, ...]
    wraps: tuple[str, str] | None
    forbid: Group
    groups: tuple[Group, ...]


class Artifact(NamedTuple):
    """A loaded artifact. `nodes` are tuples ``(op, operand, ...)`` with VALUEs and TYPEs decoded."""

    format_version: int
    policy: str
    version: str
    sources: tuple[tuple[str, bytes], ...]
    default: str
    labels: tuple[str, ...]
    tags: tuple[str, ...]
    consts: tuple[tuple[str, Any], ...]
    env: tuple[tuple[str, Any], ...]
    nodes: tuple[tuple[Any, ...], ...]
    rules: tuple[RuleEntry, ...]
    tools: tuple[ToolEntry, ...]
    check_report_digest: bytes | None
    validation: Mapping[int, Any] | None
    compiler: str
    signer_kid: bytes | None  # None: loaded unsigned (unsafe)
    digest: bytes  # SHA-256 of the artifact bytes as loaded
    issued_at: int | None

    @property
    def top_level(self) -> int:
        return max(len(self.labels) - 1, 0)

    def tool(self, name: str) -> ToolEntry | None:
        for t in self.tools:
            if t.name == name:
                return t
        return None


# ------------------------------------------------------------------ values and types


def _sorted_json_items(obj: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return sorted(obj.items(), key=lambda kv: kv[0].encode("utf-16-be", "surrogatepass"))


def encode_value(value: Any) -> Any:
    """The VALUE form of a canonical value (see the module docstring)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if _INT64_MIN <= value <= _UINT64_MAX:
            return value
        return [_V_BIGINT, str(value)]
    if isinstance(value, Decimal):
        return [_V_DECIMAL, values.canonical_decimal(value)]
    if isinstance(value, values.Email):
        return [_V_EMAIL, value.local, value.domain]
    if isinstance(value, values.Url):
        return [_V_URL, value.scheme, value.host, value.port, value.path, value.query, value.fragment,
                value.userinfo]
    if isinstance(value, values.Path):
        return [_V_PATH, value.text]
    if isinstance(value, (tuple, list)):
        return [_V_LIST, [encode_value(v) for v in value]]
    if isinstance(value, frozenset):
        items = [encode_value(v) for v in value]
        items.sort(key=dcbor.encode)
        return [_V_SET, items]
    if isinstance(value, Mapping):
        return [_V_OBJECT, [[k, encode_value(v)] for k, v in _sorted_json_items(value)]]
    raise TypeError(f"value of type `{type(value).__name__}` has no artifact encoding")


def _fail(path: str, message: str) -> ArtifactFormatError:
    return ArtifactFormatError(path, message)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# Checks take the path as (prefix, suffix) and join them only to report a
# failure: building paths for every item would dominate the load time.


def _text(x: Any, path: str, suffix: str = "") -> str:
    if type(x) is not str:
        raise _fail(path + suffix, "expected text")
    return x


def _opt_text(x: Any, path: str, suffix: str = "") -> str | None:
    return None if x is None else _text(x, path, suffix)


def _int(x: Any, path: str, suffix: str = "") -> int:
    if type(x) is not int:
        raise _fail(path + suffix, "expected an integer")
    return x


def _list(x: Any, path: str, suffix: str = "") -> list:
    if type(x) is not list:
        raise _fail(path + suffix, "expected an array")
    return x


def _texts(x: Any, path: str, suffix: str = "") -> tuple[str, ...]:
    items = _list(x, path, suffix)
    for i, v in enumerate(items):
        if type(v) is not str:
            raise _fail(f"{path}{suffix}[{i}]", "expected text")
    return tuple(items)


def decode_value(raw: Any, path: str = "value", suffix: str = "") -> Any:
    """The canonical value of a VALUE; `ArtifactFormatError` if it is not one."""
    t = type(raw)
    if raw is None or t is str or t is int or t is bool:
        return raw
    path = path + suffix
    items = _list(raw, path)
    if not (len(items) >= 2 and _is_int(items[0])):
        raise _fail(path, "expected a value")
    kind = items[0]
    try:
        if kind == _V_DECIMAL and len(items) == 2:
            text = _text(items[1], path, "[1]")
            value = Decimal(text)
            if not (value.is_finite() and values.canonical_decimal(value) == text):
                raise _fail(path, "decimal is not in canonical form")
            return value
        if kind == _V_EMAIL and len(items) == 3:
            email = values.Email(_text(items[1], path, "[1]"), _text(items[2], path, "[2]"))
            if not (values.parse_email(str(email)) == email):
                raise _fail(path, "email is not canonical")
            return email
        if kind == _V_URL and len(items) == 8:
            port = items[3]
            if not (port is None or _is_int(port)):
                raise _fail(f"{path}[3]", "expected a port or null")
            url = values.Url(
                scheme=_text(items[1], path, "[1]"), host=_text(items[2], path, "[2]"), port=port,
                path=_text(items[4], path, "[4]"), query=_opt_text(items[5], path, "[5]"),
                fragment=_opt_text(items[6], path, "[6]"), userinfo=_opt_text(items[7], path, "[7]"),
            )
            if not (values.parse_url(str(url)) == url):
                raise _fail(path, "url is not canonical")
            return url
        if kind == _V_PATH and len(items) == 2:
            p = values.Path(_text(items[1], path, "[1]"))
            if not (values.parse_path(p.text) == p):
                raise _fail(path, "path is not canonical")
            return p
        if kind == _V_LIST and len(items) == 2:
            return tuple(decode_value(v, path, f"[1][{i}]") for i, v in enumerate(_list(items[1], path, "[1]")))
        if kind == _V_SET and len(items) == 2:
            elems = _list(items[1], path, "[1]")
            encoded = [dcbor.encode(e) for e in elems]
            if not (encoded == sorted(set(encoded))):
                raise _fail(path, "set elements must be unique and sorted")
            return frozenset(decode_value(v, path, f"[1][{i}]") for i, v in enumerate(elems))
        if kind == _V_OBJECT and len(items) == 2:
            pairs = []
            for i, pair in enumerate(_list(items[1], path, "[1]")):
                pair = _list(pair, path, f"[1][{i}]")
                if not (len(pair) == 2):
                    raise _fail(f"{path}[1][{i}]", "expected [key, value]")
                pairs.append((_text(pair[0], path, f"[1][{i}][0]"), decode_value(pair[1], path, f"[1][{i}][1]")))
            obj = values.FrozenJson(pairs)
            if not (list(obj.keys()) == [k for k, _ in pairs]):
                raise _fail(path, "json object keys are not in canonical order")
            return obj
        if kind == _V_BIGINT and len(items) == 2:
            text = _text(items[1], path, "[1]")
            if not (text.lstrip("-").isascii() and text.lstrip("-").isdigit()):
                raise _fail(path, "expected integer digits")
            value = int(text)
            if not (str(value) == text and not _INT64_MIN <= value <= _UINT64_MAX):
                raise _fail(path, "big integer is not canonical")
            return value
    except (values.InvalidValue, ValueError, decimal.InvalidOperation) as err:
        if isinstance(err, ArtifactFormatError):
            raise
        raise _fail(path, f"invalid value: {err}") from None
    raise _fail(path, f"unknown value kind `{kind}` or wrong arity")


_T_ENUM, _T_LIST, _T_OPT = 0, 1, 2


def encode_type(t: Any) -> Any:
    """The TYPE form of a `values` type descriptor."""
    if isinstance(t, values.Prim):
        return t.name
    if isinstance(t, values.EnumT):
        return [_T_ENUM, list(t.values)]
    if isinstance(t, values.ListT):
        return [_T_LIST, encode_type(t.elem)]
    if isinstance(t, values.OptT):
        return [_T_OPT, encode_type(t.inner)]
    raise TypeError(f"not a type: {t!r}")


_PRIMS = {name: values.Prim(name) for name in values.PRIMITIVES}


def decode_type(raw: Any, path: str = "type", suffix: str = "") -> Any:
    if type(raw) is str and raw in _PRIMS:
        return _PRIMS[raw]
    path = path + suffix
    try:
        if isinstance(raw, str):
            return values.Prim(raw)
        items = _list(raw, path)
        if not (len(items) == 2 and _is_int(items[0])):
            raise _fail(path, "expected a type")
        if items[0] == _T_ENUM:
            return values.EnumT(_texts(items[1], path, "[1]"))
        if items[0] == _T_LIST:
            return values.ListT(decode_type(items[1], path, "[1]"))
        if items[0] == _T_OPT:
            return values.OptT(decode_type(items[1], path, "[1]"))
    except ValueError as err:
        if isinstance(err, ArtifactFormatError):
            raise
        raise _fail(path, str(err)) from None
    raise _fail(path, f"unknown type kind `{items[0]}`")


# ------------------------------------------------------------------ payload decoding


def _map(x: Any, path: str, keys: Sequence[int]) -> dict:
    """A map whose keys are exactly `keys`, in ascending order (the format has no optional keys)."""
    if not (isinstance(x, dict)):
        raise _fail(path, "expected a map")
    got = list(x)
    if got != list(keys) or any(type(k) is not int for k in got):
        extra = [k for k in got if type(k) is not int or k not in keys]
        if extra:
            raise _fail(path, f"unexpected key `{extra[0]!r}`")
        missing = [k for k in keys if k not in x]
        if missing:
            raise _fail(path, f"missing key `{missing[0]}`")
        raise _fail(path, "map keys are not in ascending order (not deterministic cbor)")
    return x


def _digest(x: Any, path: str) -> bytes:
    items = _list(x, path)
    if not (len(items) == 2 and items[0] == _SHA256 and isinstance(items[1], bytes) and len(items[1]) == 32):
        raise _fail(path, "expected a digest [-16, sha256]")
    return items[1]


_NODE_ARITY = {LIT: 1, LABEL: 2, PARAM: 1, VAR: 1, FIELD: 2, CTX: 2, COUNT: 2, USED: 1, LEN: 1, HAS: 1,
               NOT: 1, AND: 1, OR: 1, CMP: 3, MATCH: 3, FROM: 3, QUANT: 4}


def _decode_node(raw: Any, i: int, nodes: list[tuple]) -> tuple:
    path = f"nodes[{i}]"
    items = _list(raw, path)
    if not (len(items) >= 1 and _is_int(items[0]) and items[0] in _NODE_ARITY):
        raise _fail(path, "unknown opcode")
    op = items[0]
    if not (len(items) == 1 + _NODE_ARITY[op]):
        raise _fail(path, f"{OPS[op]} takes {_NODE_ARITY[op]} operand(s)")

    def ref(x: Any, where: str) -> int:
        if not (_is_int(x) and 0 <= x < i):
            raise _fail(f"{path}{where}", "expected the index of an earlier node")
        return x

    if op == LIT:
        return (LIT, decode_value(items[1], path, "[1]"))
    if op == LABEL:
        level = _int(items[2], path, "[2]")
        return (LABEL, _text(items[1], path, "[1]"), level)
    if op in (PARAM, VAR):
        return (op, _text(items[1], path, "[1]"))
    if op == FIELD:
        name = _text(items[2], path, "[2]")
        if not (name in FIELDS):
            raise _fail(f"{path}[2]", f"unknown field `{name}`")
        return (FIELD, ref(items[1], "[1]"), name)
    if op == CTX:
        source = _text(items[1], path, "[1]")
        if not (source in CONTEXT_SOURCES):
            raise _fail(f"{path}[1]", f"unknown context source `{source}`")
        return (CTX, source, _text(items[2], path, "[2]"))
    if op == COUNT:
        within = items[2]
        if not (within is None or (_is_int(within) and within >= 0)):
            raise _fail(f"{path}[2]", "expected seconds or null")
        return (COUNT, _texts(items[1], path, "[1]"), within)
    if op == USED:
        return (USED, _texts(items[1], path, "[1]"))
    if op == LEN:
        return (LEN, ref(items[1], "[1]"))
    if op == HAS:
        target = ref(items[1], "[1]")
        if not (nodes[target][0] in (PARAM, CTX)):
            raise _fail(f"{path}[1]", "`has` needs a PARAM or CTX node")
        return (HAS, target)
    if op == NOT:
        return (NOT, ref(items[1], "[1]"))
    if op in (AND, OR):
        children = _list(items[1], path, "[1]")
        if not (len(children) >= 1):
            raise _fail(f"{path}[1]", "expected at least one operand")
        return (op, tuple(ref(c, f"[1][{k}]") for k, c in enumerate(children)))
    if op == CMP:
        operator = _text(items[1], path, "[1]")
        if not (operator in CMP_OPS):
            raise _fail(f"{path}[1]", f"unknown operator `{operator}`")
        return (CMP, operator, ref(items[2], "[2]"), ref(items[3], "[3]"))
    if op == MATCH:
        return (MATCH, ref(items[1], "[1]"), _text(items[2], path, "[2]"), _text(items[3], path, "[3]"))
    if op == FROM:
        source = _text(items[2], path, "[2]")
        if not (source in ("user", "untrusted", "tools")):
            raise _fail(f"{path}[2]", f"unknown provenance source `{source}`")
        return (FROM, ref(items[1], "[1]"), source, _texts(items[3], path, "[3]"))
    kind = _text(items[1], path, "[1]")
    if not (kind in ("all", "any")):
        raise _fail(f"{path}[1]", "expected `all` or `any`")
    return (QUANT, kind, _text(items[2], path, "[2]"), ref(items[3], "[3]"), ref(items[4], "[4]"))


def _record(raw: Any, path: str, size: int) -> list:
    if not (type(raw) is list and len(raw) == size):
        raise _fail(path, f"expected an array of {size} items")
    return raw


def _text_list(x: Any, path: str, suffix: str = "") -> tuple[str, ...]:
    return _texts(x, path, suffix)


def _decode_rule(raw: Any, i: int, n_nodes: int) -> RuleEntry:
    path = f"rules[{i}]"
    rid, effect, priority, cond, assignments_raw, approvers, timeout, because, span, explicit, tools = \
        _record(raw, path, 11)
    if not (type(rid) is str):
        raise _fail(f"{path}[0]", "expected text")
    if not (effect in EFFECTS):
        raise _fail(f"{path}[1]", f"unknown effect `{effect!r}`")
    if not (type(priority) is int):
        raise _fail(f"{path}[2]", "expected an integer")
    if effect == "forbid":
        if not (priority == -1):
            raise _fail(f"{path}[2]", "a forbid rule has priority -1")
    else:
        if not (0 <= priority <= 1000):
            raise _fail(f"{path}[2]", "priority must be in 0..1000")
    if not (cond is None or (type(cond) is int and 0 <= cond < n_nodes)):
        raise _fail(f"{path}[3]", "expected a node index or null")
    assignments = []
    for k, pair in enumerate(_list(assignments_raw, path, "[4]")):
        if not (type(pair) is list and len(pair) == 2 and type(pair[0]) is str and type(pair[1]) is int
                and 0 <= pair[1] < n_nodes):
            raise _fail(f"{path}[4][{k}]", "expected [param, node index]")
        assignments.append((pair[0], pair[1]))
    if not (effect == "modify" or not assignments):
        raise _fail(f"{path}[4]", "only a modify rule has assignments")
    if not (timeout is None or (type(timeout) is int and timeout >= 0)):
        raise _fail(f"{path}[6]", "expected seconds or null")
    if not (because is None or type(because) is str):
        raise _fail(f"{path}[7]", "expected text or null")
    if span is not None:
        if not (type(span) is list and len(span) == 5 and type(span[0]) is str
                and all(type(v) is int for v in span[1:])):
            raise _fail(f"{path}[8]", "expected [file, line, col, end_line, end_col]")
        span = tuple(span)
    if not (type(explicit) is bool):
        raise _fail(f"{path}[9]", "expected a boolean")
    # Positional: constructing named tuples by keyword costs more than twice as much.
    return RuleEntry(rid, effect, priority, cond, tuple(assignments), _text_list(approvers, path, "[5]"), timeout,
                     because, span, explicit, _text_list(tools, path, "[10]"), i)


def _positions(raw: Any, path: str, allowed: set[int]) -> tuple[int, ...]:
    """Unique rule positions, ascending (source order), each in `allowed`."""
    items = _list(raw, path)
    prev = -1
    for k, r in enumerate(items):
        if not (type(r) is int and r > prev):
            raise _fail(f"{path}[{k}]", "rule positions must be unique and in source order")
        if not (r in allowed):
            raise _fail(f"{path}[{k}]", "not a rule of this table")
        prev = r
    return tuple(items)


def _decode_group(raw: Any, path: str, rules: tuple[RuleEntry, ...], n_nodes: int, covering: set[int]) -> Group:
    priority, members_raw, index_raw = _record(raw, path, 3)
    if not (type(priority) is int):
        raise _fail(f"{path}[0]", "expected an integer")
    members = _positions(members_raw, f"{path}[1]", covering)
    for k, r in enumerate(members):
        if not (rules[r].priority == priority):
            raise _fail(f"{path}[1][{k}]", f"rule `{rules[r].id}` has another priority")
    index = None
    if index_raw is not None:
        key, entries_raw = _record(index_raw, f"{path}[2]", 2)
        if not (type(key) is int and 0 <= key < n_nodes):
            raise _fail(f"{path}[2][0]", "expected a node index")
        entries = []
        seen = set()
        member_set = set(members)
        for k, entry in enumerate(_list(entries_raw, path, "[2][1]")):
            value, targets = _record(entry, f"{path}[2][1][{k}]", 2)
            if not (type(value) is str or type(value) is int):
                raise _fail(f"{path}[2][1][{k}][0]", "an index key is text or an integer")
            if not ((type(value), value) not in seen):
                raise _fail(f"{path}[2][1][{k}][0]", "duplicate index key")
            seen.add((type(value), value))
            entries.append((value, _positions(targets, f"{path}[2][1][{k}][1]", member_set)))
        index = EqIndex(key, tuple(entries))
    return Group(priority, members, index)


def _decode_param(raw: Any, path: str) -> ParamDecl:
    name, t, optional, has_default, default, sensitive = _record(raw, path, 6)
    if not (type(name) is str):
        raise _fail(f"{path}[0]", "expected text")
    if not (type(optional) is bool and type(has_default) is bool and type(sensitive) is bool):
        raise _fail(path, "optional, has default and sensitive are booleans")
    return ParamDecl(name, decode_type(t, path, "[1]"), optional, has_default, decode_value(default, path, "[4]"),
                     sensitive)


def _decode_tool(raw: Any, i: int, rules: tuple[RuleEntry, ...], n_nodes: int,
                 covers: dict[str, set[int]]) -> ToolEntry:
    path = f"tools[{i}]"
    name, params_raw, output_raw, effects, wraps_raw, forbid_raw, groups_raw = _record(raw, path, 7)
    if not (type(name) is str):
        raise _fail(f"{path}[0]", "expected text")
    params = tuple(_decode_param(p, f"{path}[1][{k}]") for k, p in enumerate(_list(params_raw, path, "[1]")))
    if not (len({p.name for p in params}) == len(params)):
        raise _fail(f"{path}[1]", "duplicate parameter")
    none, level, untrusted, tags, declared = _record(output_raw, f"{path}[2]", 5)
    if not (type(none) is bool and type(untrusted) is bool and type(declared) is bool and type(level) is int
            and level >= 0):
        raise _fail(f"{path}[2]", "expected [none, level, untrusted, tags, declared]")
    output = OutputDecl(none, level, untrusted, _text_list(tags, path, "[2][3]"), declared)
    wraps = None
    if wraps_raw is not None:
        w = _text_list(wraps_raw, path, "[4]")
        if not (len(w) == 2):
            raise _fail(f"{path}[4]", "expected [name param, args param]")
        wraps = (w[0], w[1])
    covering = covers.get(name, set())
    forbid = _decode_group(forbid_raw, f"{path}[5]", rules, n_nodes, covering)
    if not (forbid.priority == -1):
        raise _fail(f"{path}[5][0]", "the forbid group has priority -1")
    groups = tuple(_decode_group(g, f"{path}[6][{k}]", rules, n_nodes, covering)
                   for k, g in enumerate(_list(groups_raw, path, "[6]")))
    prios = [g.priority for g in groups]
    if not (all(p >= 0 for p in prios) and prios == sorted(set(prios), reverse=True)):
        raise _fail(f"{path}[6]", "groups must have distinct priorities, highest first")
    # The table must list exactly the rules whose selector covers the tool:
    # a rule silently left out of a table would change decisions.
    listed = sum(len(g.rules) for g in groups) + len(forbid.rules)
    if not (listed == len(covering)):
        raise _fail(path, "the table does not list exactly the rules that cover the tool")
    return ToolEntry(name, params, output, _text_list(effects, path, "[3]"), wraps, forbid, groups)


def _decode_strict(payload: bytes) -> Any:
    """`dcbor.decode_strict`, by way of cbor2's C codec when it can vouch for the bytes.

    cbor2 writes integers and lengths in their shortest form and never uses
    indefinite lengths, and a decoded map keeps its keys in the order read;
    so when its plain re-encoding reproduces the bytes exactly, they have
    shortest heads, definite lengths, unique keys and nothing trailing. Key
    order is checked by `_map` (every map of the format has integer keys in
    0..23, whose one-byte encodings sort as the integers do), and the
    structure checks type every item, so a tag that cbor2 turned into a
    Python object is refused there. Anything cbor2 cannot vouch for goes
    through `dcbor.decode_strict`, which either explains the problem or
    accepts what the structure checks then refuse.
    """
    try:
        doc = cbor2.loads(payload)
        if cbor2.dumps(doc) == payload:
            return doc
    except Exception:  # noqa: BLE001 - the exact decoder below says what is wrong
        pass
    try:
        return dcbor.decode_strict(payload)
    except dcbor.EncodingError as err:
        raise ArtifactFormatError("$", f"not strict deterministic cbor: {err}") from None


def decode_payload(payload: bytes, *, signer_kid: bytes | None = None, digest: bytes | None = None,
                   issued_at: int | None = None) -> Artifact:
    """Decode and check an artifact payload (strict deterministic CBOR, format 1)."""
    doc = _decode_strict(payload)
    if not (isinstance(doc, dict)):
        raise _fail("$", "expected a map")
    version = doc.get(K_FORMAT)
    if version != FORMAT_VERSION:
        raise UnsupportedFormatVersion(
            "0", f"format version `{version!r}` is not supported; this runtime reads version {FORMAT_VERSION}"
        )
    m = _map(doc, "$", range(15))
    sources = []
    for i, s in enumerate(_list(m[K_SOURCES], "sources")):
        s = _list(s, f"sources[{i}]")
        if not (len(s) == 2):
            raise _fail(f"sources[{i}]", "expected [file, digest]")
        sources.append((_text(s[0], f"sources[{i}][0]"), _digest(s[1], f"sources[{i}][1]")))
    default = _text(m[K_DEFAULT], "default")
    if not (default in ("allow", "deny")):
        raise _fail("default", "expected `allow` or `deny`")
    consts = []
    for i, c in enumerate(_list(m[K_CONSTS], "consts")):
        c = _list(c, f"consts[{i}]")
        if not (len(c) == 2):
            raise _fail(f"consts[{i}]", "expected [name, value]")
        consts.append((_text(c[0], f"consts[{i}][0]"), decode_value(c[1], f"consts[{i}][1]")))
    env = []
    for i, e in enumerate(_list(m[K_ENV], "env")):
        e = _list(e, f"env[{i}]")
        if not (len(e) == 2):
            raise _fail(f"env[{i}]", "expected [name, type]")
        env.append((_text(e[0], f"env[{i}][0]"), decode_type(e[1], f"env[{i}][1]")))
    nodes: list[tuple] = []
    for i, raw in enumerate(_list(m[K_NODES], "nodes")):
        nodes.append(_decode_node(raw, i, nodes))
    rules = tuple(_decode_rule(r, i, len(nodes)) for i, r in enumerate(_list(m[K_RULES], "rules")))
    if not (len({r.id for r in rules}) == len(rules)):
        raise _fail("rules", "duplicate rule id")
    covers: dict[str, set[int]] = {}
    for r in rules:
        for t in r.tools:
            covers.setdefault(t, set()).add(r.index)
    tools = tuple(_decode_tool(t, i, rules, len(nodes), covers) for i, t in enumerate(_list(m[K_TOOLS], "tools")))
    names = [t.name for t in tools]
    if not (names == sorted(set(names))):
        raise _fail("tools", "tools must be unique and sorted by name")
    check = None if m[K_CHECK] is None else _digest(m[K_CHECK], "check")
    validation = m[K_VALIDATION]
    if validation is not None:
        vm = _map(validation, "validation", range(3))
        _text(vm[0], "validation.0")
        _int(vm[1], "validation.1")
        _int(vm[2], "validation.2")
    return Artifact(
        format_version=version,
        policy=_text(m[K_POLICY], "policy"),
        version=_text(m[K_VERSION], "version"),
        sources=tuple(sources),
        default=default,
        labels=_texts(m[K_LABELS], "labels"),
        tags=_texts(m[K_TAGS], "tags"),
        consts=tuple(consts),
        env=tuple(env),
        nodes=tuple(nodes),
        rules=rules,
        tools=tools,
        check_report_digest=check,
        validation=validation,
        compiler=_text(m[K_COMPILER], "compiler"),
        signer_kid=signer_kid,
        digest=digest if digest is not None else hashlib.sha256(payload).digest(),
        issued_at=issued_at,
    )


# ------------------------------------------------------------------ envelope


def sign_payload(payload: bytes, key: keys.SigningKey, *, policy: str, issued_at: int,
                 issuer: str | None = None) -> bytes:
    """Wrap an encoded payload in the artifact's COSE_Sign1 (typ policy, CWT sub = policy name)."""
    claims: dict[int, Any] = {2: policy, 6: issued_at}
    if issuer is not None:
        claims[1] = issuer
    return cose.sign1(payload, key, typ=TYP_POLICY, cwt_claims=claims)


def _is_envelope(data: bytes) -> bool:
    # Tag 18 in its one-byte head: every artifact envelope starts with 0xd2;
    # a bare payload is a map (major type 5).
    return data[:1] == b"\xd2"


def load_artifact(
    data: bytes,
    trusted_keys: Mapping[bytes, keys.VerifyKey] | Sequence[keys.VerifyKey] = (),
    *,
    unsafe_unsigned: bool = False,
) -> Artifact:
    """Verify and decode an artifact; raise an `ArtifactError` subclass for anything else.

    Default (safe): the bytes must be a COSE_Sign1 of typ
    ``application/aarm-policy+cose`` signed by one of ``trusted_keys``.
    ``unsafe_unsigned=True`` (development only) also accepts a bare payload
    and skips the signature check; the typ of an envelope is still checked.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"artifact must be bytes, got `{type(data).__name__}`")
    data = bytes(data)
    if not data:
        raise ArtifactSignatureError("artifact is empty")
    digest = hashlib.sha256(data).digest()
    if not unsafe_unsigned and not trusted_keys:
        raise ArtifactSignatureError("no trusted keys given; pass the policy author's public key "
                                     "(or unsafe_unsigned=True in development)")
    if not _is_envelope(data):
        if not unsafe_unsigned:
            raise ArtifactSignatureError("artifact is not signed (no cose_sign1 envelope); "
                                         "an unsigned artifact loads only with unsafe_unsigned=True")
        return decode_payload(data, signer_kid=None, digest=digest)
    signer: bytes | None
    try:
        if unsafe_unsigned:
            msg = cose._parse(data, cose._MUST_PROTECT)  # noqa: SLF001 - same strict parse, no key needed
            typ = msg.protected.get(cose.HDR_TYP)
            if typ != TYP_POLICY:
                raise cose.WrongTypeError(f"message typ is `{typ}`, expected `{TYP_POLICY}`")
            signer = None
        else:
            msg = cose.verify1(data, trusted_keys, typ=TYP_POLICY)
            signer = msg.kid
    except cose.CoseError as err:
        raise ArtifactSignatureError(f"artifact refused: {err}") from None
    if msg.payload is None:
        raise ArtifactSignatureError("artifact refused: the payload is detached")
    claims = msg.cwt_claims
    if not isinstance(claims, dict) or not isinstance(claims.get(2), str) or not _is_int(claims.get(6)):
        raise ArtifactSignatureError("artifact refused: the protected header lacks CWT claims sub and iat")
    artifact = decode_payload(msg.payload, signer_kid=signer, digest=digest, issued_at=claims[6])
    if claims[2] != artifact.policy:
        raise ArtifactSignatureError(
            f"artifact refused: CWT sub `{claims[2]}` does not name the payload's policy `{artifact.policy}`"
        )
    return artifact


def read_artifact_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an artifact file, refusing anything larger than `MAX_ARTIFACT_BYTES`."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ARTIFACT_BYTES + 1)
    except OSError as err:
        raise ArtifactError(f"cannot read artifact `{path}`: {err.strerror}") from None
    if len(data) > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"artifact `{path}` is larger than {MAX_ARTIFACT_BYTES} bytes")
    return data
