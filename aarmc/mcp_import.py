"""`aarmc import-mcp`: tool declarations from an MCP `tools/list` result.

Each tool's `inputSchema` (JSON Schema) becomes typed params: integer→int,
number→decimal, boolean→bool, string→str (format email→email, uri→url),
enum→enum, array→list[T], object→json, `anyOf [T, null]` or not required→`T?`,
local `$ref`s resolved (a cycle → json). MCP says nothing about what a tool's
output contains, so no declaration gets a `returns` clause: unknown
classification, which the language treats as the top label and untrusted until
the author classifies it. Every lossy choice is explained in a comment next to
the declaration it affects.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Mapping, Sequence

import attrs

from aarm_runtime import values

DEFAULT_PREFIX = "mcp"
MAX_INT = 2**63 - 1
LINE_WIDTH = 88
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOT_IDENT_CHAR = re.compile(r"[^A-Za-z0-9_]")
_COMMENT_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")
# Params whose values are secrets: hashed, never copied, into receipts.
_SECRET_NAME = re.compile(
    r"(^|_)(password|passwd|passphrase|secret|api_?key|access_?token|auth_?token|"
    r"private_?key|client_?secret|credentials?)$", re.IGNORECASE)


class McpImportError(Exception):
    """The input is not an MCP `tools/list` result this importer understands."""


@attrs.frozen(kw_only=True)
class _Mapped:
    """A JSON Schema mapped to a type: its spelling, whether it admits null, and why it is lossy."""

    type: str
    nullable: bool = False
    notes: tuple[str, ...] = ()

    def with_notes(self, *notes: str) -> "_Mapped":
        return attrs.evolve(self, notes=self.notes + notes)


JSON = "json"


def identifier(name: str) -> str:
    """`name` as an identifier: every other character becomes `_`, a leading digit gets `_`.

    >>> identifier("per-page"), identifier("2fa"), identifier("ok_name")
    ('per_page', '_2fa', 'ok_name')
    """
    out = _NOT_IDENT_CHAR.sub("_", name) or "_"
    return out if _IDENT.fullmatch(out) else "_" + out


def string_literal(text: str) -> str | None:
    """A policy string literal for `text`, or None when the language cannot spell it.

    >>> string_literal('say "hi"\\n'), string_literal("bell\\x07")
    ('"say \\\\"hi\\\\"\\\\n"', None)
    """
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text):
        return None
    try:
        values.check_string(text)
    except values.InvalidValue:
        return None
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def comment_text(text: str, limit: int = 100) -> str:
    """One line of text safe to put after `#`."""
    line = _COMMENT_UNSAFE.sub(" ", text).strip()
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


# ---- reading the file -----------------------------------------------------------

def tools_of(document: Any) -> tuple[list[Any], list[str]]:
    """The tool list of a `tools/list` result (a JSON-RPC response, its result, or a bare list).

    Returns the tools and header notes about the document.
    """
    notes: list[str] = []
    if isinstance(document, list):
        return document, notes
    if not isinstance(document, Mapping):
        raise McpImportError("expected a `tools/list` result: an object with `tools`, a JSON-RPC "
                             "response with `result.tools`, or a list of tools")
    if "error" in document and "result" not in document:
        err = document["error"]
        message = err.get("message") if isinstance(err, Mapping) else None
        raise McpImportError("the file holds a JSON-RPC error response"
                             + (f": {comment_text(str(message))}" if message else ""))
    body = document.get("result", document)
    if not isinstance(body, Mapping) or "tools" not in body:
        raise McpImportError("expected a `tools` list (or `result.tools` in a JSON-RPC response)")
    tools = body["tools"]
    if not isinstance(tools, list):
        raise McpImportError("`tools` must be a list")
    if body.get("nextCursor"):
        notes.append("the result has a `nextCursor`: the server has more tools; import every page")
    return tools, notes


# ---- JSON Schema → types --------------------------------------------------------

def _is_null(schema: Any) -> bool:
    return isinstance(schema, Mapping) and (schema.get("type") == "null" or schema.get("const", 0) is None
                                            or schema.get("enum") == [None])


def _pointer(root: Any, ref: str) -> Any:
    """Resolve a local JSON pointer (`#/$defs/X`); None when it does not resolve."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node = root
    for raw in ref[2:].split("/"):
        part = re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), raw)
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


class _Mapper:
    def __init__(self, root: Any):
        self.root = root

    def map(self, schema: Any, refs: tuple[str, ...] = ()) -> _Mapped:
        if schema is True or schema == {}:
            return _Mapped(type=JSON)
        if not isinstance(schema, Mapping):
            return _Mapped(type=JSON, notes=("schema is not an object",))
        if "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str):
                return _Mapped(type=JSON, notes=("`$ref` is not a string",))
            if ref in refs:
                return _Mapped(type=JSON, notes=(f"recursive `{ref}`",))
            target = _pointer(self.root, ref)
            if target is None:
                return _Mapped(type=JSON, notes=(f"unresolved `{ref}`",))
            mapped = self.map(target, refs + (ref,))
            return attrs.evolve(mapped, nullable=mapped.nullable or schema.get("nullable") is True)
        mapped = self._map_local(schema, refs)
        if schema.get("nullable") is True:  # OpenAPI 3.0 spelling of `[T, null]`
            mapped = attrs.evolve(mapped, nullable=True)
        return mapped

    def _map_local(self, schema: Mapping, refs: tuple[str, ...]) -> _Mapped:
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                return self._union(key, branches, refs)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1:
            return self.map(all_of[0], refs)
        if isinstance(all_of, list) and all_of:
            return _Mapped(type=JSON, notes=("`allOf` of several schemas",))
        if "const" in schema:
            const = schema["const"]
            if const is None:
                return _Mapped(type=JSON, nullable=True, notes=("`const: null`",))
            if isinstance(const, str) and string_literal(const) is not None:
                return _Mapped(type=f"enum({string_literal(const)})")
            return _Mapped(type=_json_kind_type(const), notes=(f"`const` {comment_text(repr(const), 40)} not enforced",))
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            mapped = self._enum(schema["enum"])
            if mapped is not None:
                return mapped
        kind = schema.get("type")
        nullable = False
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            nullable = len(non_null) < len(kind)
            if len(non_null) != 1:
                return _Mapped(type=JSON, nullable=nullable,
                               notes=("several types: " + ", ".join(map(str, non_null)),) if non_null else ())
            kind = non_null[0]
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema:
                kind = "array"
            else:
                return _Mapped(type=JSON, nullable=nullable)
        mapped = self._typed(kind, schema, refs)
        return attrs.evolve(mapped, nullable=mapped.nullable or nullable)

    def _union(self, key: str, branches: list, refs: tuple[str, ...]) -> _Mapped:
        non_null = [b for b in branches if not _is_null(b)]
        nullable = len(non_null) < len(branches)
        mapped = [self.map(b, refs) for b in non_null]
        if not mapped:
            return _Mapped(type=JSON, nullable=True)
        types = {m.type for m in mapped}
        if len(types) > 1 and all(t.startswith("enum(") for t in types):
            # `oneOf: [{const: "a"}, {const: "b"}]` is how many servers spell an enum.
            merged = dict.fromkeys(v for m in mapped for v in values.load_json("[" + m.type[5:-1] + "]"))
            literals = ", ".join(string_literal(v) for v in merged)
            return _Mapped(type=f"enum({literals})", nullable=nullable or any(m.nullable for m in mapped))
        if len(types) == 1:
            notes = tuple(n for m in mapped for n in m.notes)
            return _Mapped(type=mapped[0].type, nullable=nullable or any(m.nullable for m in mapped),
                           notes=notes)
        return _Mapped(type=JSON, nullable=nullable,
                       notes=(f"`{key}` of " + ", ".join(sorted(types)),))

    def _enum(self, options: list) -> _Mapped | None:
        nullable = None in options
        present = [o for o in options if o is not None]
        if present and all(isinstance(o, str) for o in present):
            literals = []
            for o in dict.fromkeys(present):
                lit = string_literal(o)
                if lit is None:
                    return _Mapped(type="str", nullable=nullable,
                                   notes=("an enum value the language cannot spell: declared as str",))
                literals.append(lit)
            return _Mapped(type="enum(" + ", ".join(literals) + ")", nullable=nullable)
        if not present:
            return _Mapped(type=JSON, nullable=True)
        kinds = {_json_kind_type(o) for o in present}
        base = kinds.pop() if len(kinds) == 1 else JSON
        shown = comment_text(", ".join(map(str, present)), 60)
        return _Mapped(type=base, nullable=nullable, notes=(f"enum of non-strings ({shown}) not enforced",))

    def _typed(self, kind: Any, schema: Mapping, refs: tuple[str, ...]) -> _Mapped:
        if kind == "string":
            fmt = schema.get("format")
            if fmt == "email":
                return _Mapped(type="email")
            if fmt in ("uri", "url"):
                return _Mapped(type="url")
            return _Mapped(type="str")
        if kind == "integer":
            return _Mapped(type="int")
        if kind == "number":
            return _Mapped(type="decimal")
        if kind == "boolean":
            return _Mapped(type="bool")
        if kind == "object":
            return _Mapped(type=JSON)
        if kind == "null":
            return _Mapped(type=JSON, nullable=True, notes=("type `null`",))
        if kind == "array":
            items = schema.get("items")
            if items is None or items is True or items == {}:
                return _Mapped(type=f"list[{JSON}]")
            if not isinstance(items, Mapping):
                return _Mapped(type=f"list[{JSON}]", notes=("tuple-style `items`",))
            inner = self.map(items, refs)
            if inner.nullable:
                return _Mapped(type=f"list[{JSON}]", notes=inner.notes + ("list items may be null",))
            return _Mapped(type=f"list[{inner.type}]", notes=inner.notes)
        return _Mapped(type=JSON, notes=(f"unknown type `{comment_text(str(kind), 30)}`",))


def _json_kind_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, str):
        return "str"
    return JSON


# ---- defaults ---------------------------------------------------------------------

def _parse_type(text: str) -> values.Type:
    """The value type of a spelling this module produced (for validating defaults)."""
    if text.startswith("list[") and text.endswith("]"):
        return values.ListT(_parse_type(text[5:-1]))
    if text.startswith("enum("):
        return values.EnumT(tuple(values.load_json("[" + text[5:-1] + "]")))
    return values.Prim(text)


def default_literal(value: Any, type_text: str) -> str | None:
    """The literal for a JSON default of a param of type `type_text`, or None if not representable.

    >>> default_literal(30, "int"), default_literal(Decimal("0.5"), "decimal"), default_literal(["a"], "list[str]")
    ('30', '0.5', '["a"]')
    >>> default_literal("nope", "email") is None
    True
    """
    if type_text == JSON:
        return None
    try:
        values.validate(_parse_type(type_text), value)
    except (values.InvalidValue, ValueError, TypeError):
        return None
    return _literal(value, type_text)


def _literal(value: Any, type_text: str) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if type_text == "decimal":
        text = format(Decimal(value), "f")
        if "." not in text:
            text += ".0"
        return text if len(text) <= 60 else None
    if isinstance(value, int):
        return str(value) if -MAX_INT <= value <= MAX_INT else None
    if isinstance(value, str):
        return string_literal(value)
    if isinstance(value, list) and type_text.startswith("list["):
        inner = type_text[5:-1]
        items = [_literal(v, inner) for v in value]
        return None if any(i is None for i in items) else "[" + ", ".join(items) + "]"
    return None


# ---- tools → declarations ---------------------------------------------------------

@attrs.frozen(kw_only=True)
class _Param:
    name: str
    text: str
    comment: str | None


def _params(schema: Any, tool_label: str) -> tuple[list[_Param], list[str]]:
    """Declared params and comment lines for one input schema."""
    notes: list[str] = []
    if schema is None:
        return [], ["no `inputSchema`: declared without params"]
    if not isinstance(schema, Mapping):
        raise McpImportError(f"{tool_label}: `inputSchema` must be an object")
    mapper = _Mapper(schema)
    root = schema
    if "$ref" in schema:
        target = _pointer(schema, schema["$ref"]) if isinstance(schema["$ref"], str) else None
        root = target if isinstance(target, Mapping) else {}
    if root.get("type", "object") != "object":
        return [], ["the input schema is not an object: declared without params"]
    properties = root.get("properties", {})
    if not isinstance(properties, Mapping):
        raise McpImportError(f"{tool_label}: `inputSchema.properties` must be an object")
    required = root.get("required") or []
    required = set(required) if isinstance(required, list) else set()
    if root.get("additionalProperties") not in (None, False) or "patternProperties" in root:
        notes.append("the server accepts undeclared params; the policy denies calls that send them")
    out: list[_Param] = []
    used: set[str] = set()
    for mcp_name, prop in properties.items():
        name = identifier(mcp_name)
        if name in used:
            n = 2
            while f"{name}_{n}" in used:
                n += 1
            name = f"{name}_{n}"
        used.add(name)
        if name != mcp_name:
            notes.append(f"param `{comment_text(mcp_name, 60)}` is not an identifier: declared as `{name}` "
                         "(calls that send the original name fail validation until the interceptor renames it)")
        mapped = mapper.map(prop)
        for note in mapped.notes:
            notes.append(f"`{name}`: {note}: declared as {mapped.type}")
        text = f"{name}: {mapped.type}"
        declared = _with_default(prop, mapper)
        default = declared.get("default") if declared is not None else None
        default_text = None
        if default is not None:
            default_text = default_literal(default, mapped.type)
            if default_text is None:
                notes.append(f"`{name}`: default {comment_text(repr(default), 40)} cannot be declared")
        if default_text is not None:
            text += f" = {default_text}"
        elif mcp_name not in required or mapped.nullable:
            text += "?"
        if _is_secret(mcp_name, prop):
            text += " sensitive"
        description = prop.get("description") if isinstance(prop, Mapping) else None
        comment = comment_text(description, 70) if isinstance(description, str) and description.strip() else None
        out.append(_Param(name=name, text=text, comment=comment))
    return out, notes


def _with_default(prop: Any, mapper: _Mapper) -> Mapping | None:
    """The schema that carries `prop`'s default: itself, or what its `$ref` chain points at."""
    seen: set[str] = set()
    while isinstance(prop, Mapping):
        if "default" in prop:
            return prop
        ref = prop.get("$ref")
        if not isinstance(ref, str) or ref in seen:
            return None
        seen.add(ref)
        prop = _pointer(mapper.root, ref)
    return None


def _is_secret(name: str, prop: Any) -> bool:
    if isinstance(prop, Mapping) and (prop.get("writeOnly") is True or prop.get("format") == "password"):
        return True
    return bool(_SECRET_NAME.search(identifier(name)))


def _effects(annotations: Any) -> list[str]:
    """Effects from MCP tool annotations; only hints the server states explicitly count."""
    if not isinstance(annotations, Mapping):
        return []
    effects = []
    if annotations.get("readOnlyHint") is False:
        effects.append("write")
        if annotations.get("destructiveHint") is True:
            effects.append("destructive")
    if annotations.get("openWorldHint") is True:
        effects.append("external")
    return effects


def _declaration(name: str, params: list[_Param], effects: list[str]) -> list[str]:
    tail = f" effects {', '.join(effects)}" if effects else ""
    one_line = f"tool {name}(" + ", ".join(p.text for p in params) + ")" + tail
    if len(one_line) <= LINE_WIDTH and not any(p.comment for p in params):
        return [one_line]
    lines = [f"tool {name}("]
    texts = [p.text + ("," if i < len(params) - 1 else "") for i, p in enumerate(params)]
    width = min(max(map(len, texts)), 36)
    for text, p in zip(texts, params):
        lines.append(f"    {text.ljust(width)}  # {p.comment}" if p.comment else f"    {text}")
    lines.append(")" + tail)
    return lines


def import_tools(document: Any, prefix: str | None = None, source: str = "tools.json") -> str:
    """Tool declarations (policy text) for a parsed `tools/list` result.

    >>> print(import_tools({"tools": [{"name": "search", "inputSchema": {"type": "object",
    ...     "properties": {"q": {"type": "string"}}, "required": ["q"]}}]}, prefix="github"), end="")
    # Generated by `aarmc import-mcp` from `tools.json`: 1 tool, service `github`.
    # MCP says nothing about what a tool returns, so no tool has a `returns` clause:
    # unknown classification counts as the top label and untrusted. Classify each tool
    # with `returns LEVEL [untrusted] [tagged T, ...]` or `returns none`.
    <BLANKLINE>
    # classify: add `returns LEVEL [untrusted] [tagged ...]` or `returns none`
    tool github.search(q: str)
    """
    tools, header_notes = tools_of(document)
    service = identifier(prefix) if prefix else DEFAULT_PREFIX
    lines = [
        f"# Generated by `aarmc import-mcp` from `{comment_text(source, 60)}`: "
        f"{len(tools)} tool{'' if len(tools) == 1 else 's'}, service `{service}`.",
        "# MCP says nothing about what a tool returns, so no tool has a `returns` clause:",
        "# unknown classification counts as the top label and untrusted. Classify each tool",
        "# with `returns LEVEL [untrusted] [tagged T, ...]` or `returns none`.",
    ]
    if not prefix:
        lines.append(f"# No --prefix given: tools are declared as `{service}.NAME`.")
    if prefix and service != prefix:
        lines.append(f"# The prefix `{comment_text(prefix, 40)}` is not an identifier: declared as `{service}`.")
    lines.extend(f"# Note: {n}." for n in header_notes)
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        label = f"tool #{index + 1}"
        if not isinstance(tool, Mapping):
            raise McpImportError(f"{label} is not an object")
        mcp_name = tool.get("name")
        if not isinstance(mcp_name, str) or not mcp_name:
            raise McpImportError(f"{label} has no `name`")
        label = f"tool `{comment_text(mcp_name, 60)}`"
        op = identifier(mcp_name)
        name = f"{service}.{op}"
        if name in seen:
            n = 2
            while f"{name}_{n}" in seen:
                n += 1
            name = f"{name}_{n}"
        seen.add(name)
        params, notes = _params(tool.get("inputSchema"), label)
        effects = _effects(tool.get("annotations"))
        lines.append("")
        annotations = tool.get("annotations") if isinstance(tool.get("annotations"), Mapping) else {}
        candidates = (tool.get("description"), tool.get("title"), annotations.get("title"))
        summary = next((s for s in candidates if isinstance(s, str) and s.strip()), None)
        if summary:
            lines.append(f"# {comment_text(summary.strip().splitlines()[0])}")
        if f"{service}.{mcp_name}" != name:
            lines.append(f"# MCP tool `{comment_text(mcp_name, 60)}` is declared as `{name}`.")
        lines.extend(f"# {comment_text(n, 200)}." for n in notes)
        if effects:
            lines.append("# effects from the server's MCP annotations (hints, not guarantees)")
        lines.append("# classify: add `returns LEVEL [untrusted] [tagged ...]` or `returns none`")
        lines.extend(_declaration(name, params, effects))
    return "\n".join(lines) + "\n"


def import_text(text: str | bytes, prefix: str | None = None, source: str = "tools.json") -> str:
    """`import_tools` over JSON text; malformed JSON raises `McpImportError` with its location."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise McpImportError(f"not UTF-8 text (byte {err.start})") from None
    try:
        document = values.load_json(text)
    except values.JsonError as err:
        raise McpImportError(str(err)) from None
    return import_tools(document, prefix=prefix, source=source)


__all__: Sequence[str] = ("McpImportError", "import_tools", "import_text", "identifier", "default_literal")
