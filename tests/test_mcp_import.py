"""`aarmc import-mcp`: MCP `tools/list` results → tool declarations that load."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest

from aarm_runtime.values import EnumT, ListT, Prim
from aarmc.mcp_import import McpImportError, default_literal, identifier, import_text, import_tools
from aarmc.semantics.load import load_policy_text

DATA = Path(__file__).parent / "data" / "mcp"
HEADER = 'policy "imported" version "1"\ndefault deny\n'


def load_declarations(text: str):
    result = load_policy_text(HEADER + text, name="imported.aarm")
    assert result.diagnostics == (), [d.headline() for d in result.diagnostics]
    return result.policy


def one_tool(properties: dict, required=(), **schema) -> str:
    """Through JSON text, as the command reads it (numbers exact)."""
    return import_text(json.dumps({"tools": [{"name": "t", "inputSchema": {
        "type": "object", "properties": properties, "required": list(required), **schema}}]}), prefix="svc")


def declared_params(text: str) -> dict:
    policy = load_declarations(text)
    (tool,) = policy.tools
    return {p.name: p for p in tool.params}


# ---- the two realistic servers ----------------------------------------------------

def test_github_server_loads_and_types_are_mapped():
    text = import_text((DATA / "github_tools_list.json").read_bytes(), prefix="github", source="github.json")
    policy = load_declarations(text)
    tools = policy.tool_map
    assert sorted(tools) == sorted(f"github.{n}" for n in (
        "search_repositories", "get_file_contents", "create_issue", "list_issues", "push_files",
        "merge_pull_request", "add_collaborator", "search_code"))
    search = tools["github.search_repositories"]
    assert [(p.name, p.type, p.has_default, p.default) for p in search.params] == [
        ("query", Prim("str"), False, None), ("page", Prim("int"), True, 1), ("perPage", Prim("int"), True, 30)]
    assert search.effects == ("external",)
    # No `returns`: unknown classification until the author classifies the tool.
    assert all(not t.output.declared for t in policy.tools)
    issues = {p.name: p for p in tools["github.list_issues"].params}
    assert issues["state"].type == EnumT(("open", "closed", "all")) and issues["state"].default == "open"
    assert issues["direction"].type == EnumT(("asc", "desc")) and issues["direction"].default == "desc"
    assert issues["per_page"].type == Prim("decimal") and issues["per_page"].default == Decimal(30)
    assert issues["labels"].type == ListT(Prim("str")) and issues["labels"].may_be_absent
    assert issues["owner"].type == Prim("str") and not issues["owner"].optional
    contents = {p.name: p for p in tools["github.get_file_contents"].params}
    assert contents["branch"].may_be_absent and contents["branch"].type == Prim("str")
    push = {p.name: p for p in tools["github.push_files"].params}
    assert push["files"].type == ListT(Prim("json"))
    assert tools["github.push_files"].effects == ("write", "destructive", "external")
    collab = {p.name: p for p in tools["github.add_collaborator"].params}
    assert collab["email"].type == Prim("email") and collab["notify_url"].type == Prim("url")
    code = {p.name: p for p in tools["github.search_code"].params}
    assert code["filter"].type == Prim("json")  # a recursive $ref
    assert code["order"].type == EnumT(("asc", "desc"))
    assert code["api_key"].sensitive and not code["q"].sensitive
    assert "# MCP tool `add-collaborator` is declared as `github.add_collaborator`." in text
    assert "param `notify-url` is not an identifier: declared as `notify_url`" in text


def test_filesystem_server_loads():
    text = import_text((DATA / "filesystem_tools_list.json").read_bytes(), prefix="fs")
    policy = load_declarations(text)
    assert len(policy.tools) == 10
    edit = policy.tool_map["fs.edit_file"]
    assert {p.name: p.type for p in edit.params} == {
        "path": Prim("str"), "edits": ListT(Prim("json")), "dryRun": Prim("bool")}
    assert edit.param("dryRun").default is False
    assert policy.tool_map["fs.read_text_file"].param("head").type == Prim("decimal")
    assert policy.tool_map["fs.search_files"].param("excludePatterns").default == ()
    assert policy.tool_map["fs.list_allowed_directories"].params == ()
    assert policy.tool_map["fs.list_directory"].effects == ()
    assert policy.tool_map["fs.move_file"].effects == ("write",)


def test_header_explains_the_missing_classification():
    text = import_text((DATA / "filesystem_tools_list.json").read_bytes(), prefix="fs")
    assert "no tool has a `returns` clause" in text
    assert text.count("# classify: add `returns") == 10
    assert not re.search(r"\)\s*returns", text)


# ---- JSON Schema → types ----------------------------------------------------------

@pytest.mark.parametrize("schema, required, expected", [
    ({"type": "integer"}, True, "x: int"),
    ({"type": "number"}, True, "x: decimal"),
    ({"type": "boolean"}, True, "x: bool"),
    ({"type": "string"}, True, "x: str"),
    ({"type": "string", "format": "email"}, True, "x: email"),
    ({"type": "string", "format": "uri"}, True, "x: url"),
    ({"type": "string", "format": "date-time"}, True, "x: str"),
    ({"type": "string", "enum": ["a", "b"]}, True, 'x: enum("a", "b")'),
    ({"enum": ["a", "b", None]}, True, 'x: enum("a", "b")?'),
    ({"type": "array", "items": {"type": "integer"}}, True, "x: list[int]"),
    ({"type": "array", "items": {"type": "array", "items": {"type": "string"}}}, True, "x: list[list[str]]"),
    ({"type": "array"}, True, "x: list[json]"),
    ({"type": "object", "properties": {"a": {"type": "string"}}}, True, "x: json"),
    ({}, True, "x: json"),
    ({"anyOf": [{"type": "string"}, {"type": "null"}]}, True, "x: str?"),
    ({"oneOf": [{"type": "null"}, {"type": "integer"}]}, True, "x: int?"),
    ({"type": ["boolean", "null"]}, True, "x: bool?"),
    ({"type": "string", "nullable": True}, True, "x: str?"),
    ({"type": "integer"}, False, "x: int?"),
    ({"type": "integer", "default": 5}, False, "x: int = 5"),
    ({"type": "number", "default": 0.25}, False, "x: decimal = 0.25"),
    ({"type": "number", "default": 2}, False, "x: decimal = 2.0"),
    ({"type": "boolean", "default": True}, False, "x: bool = true"),
    ({"type": "string", "default": 'say "hi"'}, False, 'x: str = "say \\"hi\\""'),
    ({"type": "string", "enum": ["a", "b"], "default": "b"}, False, 'x: enum("a", "b") = "b"'),
    ({"type": "array", "items": {"type": "string"}, "default": ["a"]}, False, 'x: list[str] = ["a"]'),
    ({"type": "string", "format": "email", "default": "not an email"}, False, "x: email?"),
    ({"type": "object", "default": {}}, False, "x: json?"),
    ({"type": "string", "writeOnly": True}, True, "x: str sensitive"),
    ({"type": "string", "format": "password"}, True, "x: str sensitive"),
    ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, True, "x: json"),
    ({"oneOf": [{"const": "up"}, {"const": "down"}]}, True, 'x: enum("up", "down")'),
    ({"const": "only"}, True, 'x: enum("only")'),
    ({"enum": [1, 2, 3]}, True, "x: int"),
    ({"type": ["string", "integer"]}, True, "x: json"),
    ({"allOf": [{"type": "integer"}]}, True, "x: int"),
])
def test_type_mapping(schema, required, expected):
    text = one_tool({"x": schema}, required=["x"] if required else [])
    assert f"tool svc.t({expected})" in text
    declared_params(text)  # and it loads


def test_lossy_mappings_say_so_in_a_comment():
    text = one_tool({"x": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                     "y": {"enum": [1, 2]},
                     "z": {"type": "string", "format": "email", "default": "nope"}})
    assert "# `x`: `anyOf` of int, str: declared as json." in text
    assert "# `y`: enum of non-strings (1, 2) not enforced: declared as int." in text
    assert "# `z`: default 'nope' cannot be declared." in text


def test_refs_are_resolved_and_cycles_become_json():
    text = one_tool({
        "a": {"$ref": "#/$defs/color"},
        "b": {"$ref": "#/definitions/ids"},
        "c": {"$ref": "#/$defs/node"},
        "d": {"type": "array", "items": {"$ref": "#/$defs/list"}},
        "e": {"$ref": "#/$defs/missing"},
        "f": {"$ref": "#/$defs/alias"},
    }, required=["a", "b", "c", "d", "e", "f"], **{
        "$defs": {"color": {"enum": ["red", "green"]},
                  "node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}},
                  "list": {"type": "array", "items": {"$ref": "#/$defs/list"}},
                  "alias": {"$ref": "#/$defs/color"}},
        "definitions": {"ids": {"type": "array", "items": {"type": "integer"}}}})
    params = declared_params(text)
    assert params["a"].type == EnumT(("red", "green"))
    assert params["b"].type == ListT(Prim("int"))
    assert params["c"].type == Prim("json")
    assert params["d"].type == ListT(ListT(Prim("json")))
    assert params["e"].type == Prim("json")
    assert params["f"].type == EnumT(("red", "green"))
    assert "recursive `#/$defs/list`" in text
    assert "unresolved `#/$defs/missing`" in text


def test_names_are_sanitised_and_deduplicated():
    doc = [{"name": "get-thing", "inputSchema": {"type": "object", "properties": {
        "per-page": {"type": "integer"}, "per_page": {"type": "integer"}, "2fa": {"type": "string"}}}},
        {"name": "get_thing", "inputSchema": {"type": "object"}},
        {"name": "files.read", "inputSchema": {"type": "object"}}]
    text = import_tools(doc, prefix="my-svc")
    policy = load_declarations(text)
    assert sorted(policy.tool_map) == ["my_svc.files_read", "my_svc.get_thing", "my_svc.get_thing_2"]
    assert [p.name for p in policy.tool_map["my_svc.get_thing"].params] == ["per_page", "per_page_2", "_2fa"]
    assert "The prefix `my-svc` is not an identifier: declared as `my_svc`." in text


def test_keywords_are_fine_as_param_names():
    params = declared_params(one_tool({k: {"type": "string"} for k in ("not", "tool", "returns", "path", "any")},
                                      required=["not"]))
    assert list(params) == ["not", "tool", "returns", "path", "any"]


def test_without_prefix_tools_get_the_default_service():
    text = import_tools([{"name": "ping", "inputSchema": {"type": "object"}}])
    assert "tool mcp.ping()" in text
    assert "No --prefix given" in text
    load_declarations(text)


def test_odd_input_schemas():
    text = import_tools([{"name": "a"}, {"name": "b", "inputSchema": {"type": "string"}},
                         {"name": "c", "inputSchema": {"type": "object", "additionalProperties": True,
                                                       "properties": {"q": {"type": "string"}}}}], prefix="s")
    policy = load_declarations(text)
    assert policy.tool_map["s.a"].params == () and policy.tool_map["s.b"].params == ()
    assert "no `inputSchema`: declared without params" in text
    assert "the input schema is not an object" in text
    assert "the server accepts undeclared params" in text


def test_descriptions_become_comments_safely():
    text = one_tool({"x": {"type": "string", "description": "line one\nline two # not code"}})
    assert "x: str?  # line one line two # not code" in text
    text = import_tools([{"name": "t", "description": "evil\ntool x.y()\n", "inputSchema": {"type": "object"}}])
    policy = load_declarations(text)
    assert list(policy.tool_map) == ["mcp.t"]


def test_long_parameter_lists_wrap():
    text = one_tool({f"param_number_{i}": {"type": "string"} for i in range(8)})
    assert "tool svc.t(\n    param_number_0: str?,\n" in text
    assert len(declared_params(text)) == 8


# ---- input shapes -----------------------------------------------------------------

TOOLS = [{"name": "ping", "inputSchema": {"type": "object"}}]


@pytest.mark.parametrize("document", [
    {"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}},
    {"tools": TOOLS},
    TOOLS,
])
def test_accepted_shapes(document):
    assert "tool x.ping()" in import_text(json.dumps(document), prefix="x")


def test_next_cursor_is_mentioned():
    text = import_tools({"tools": TOOLS, "nextCursor": "abc"}, prefix="x")
    assert "the server has more tools" in text


@pytest.mark.parametrize("text, message", [
    ("{", "invalid json: Expecting property name enclosed in double quotes at line 1 column 2"),
    (b"\xff\xfe", "not UTF-8 text (byte 0)"),
    ('"tools"', "expected a `tools/list` result"),
    ('{"result": {}}', "expected a `tools` list"),
    ('{"tools": {}}', "`tools` must be a list"),
    ('{"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "Method not found"}}',
     "the file holds a JSON-RPC error response: Method not found"),
    ('[1]', "tool #1 is not an object"),
    ('[{"description": "x"}]', "tool #1 has no `name`"),
    ('[{"name": "a", "inputSchema": []}]', "tool `a`: `inputSchema` must be an object"),
    ('[{"name": "a", "inputSchema": {"type": "object", "properties": []}}]',
     "tool `a`: `inputSchema.properties` must be an object"),
])
def test_malformed_input(text, message):
    with pytest.raises(McpImportError) as err:
        import_text(text, prefix="x")
    assert message in str(err.value)


# ---- helpers ----------------------------------------------------------------------

def test_identifier():
    assert identifier("") == "_"
    assert identifier("a.b-c") == "a_b_c"
    assert identifier("9lives") == "_9lives"


def test_default_literal_limits():
    assert default_literal(2**70, "int") is None
    assert default_literal(True, "int") is None
    assert default_literal("bell\x07", "str") is None
    assert default_literal(Decimal("1E+2"), "decimal") == "100.0"
    assert default_literal(["a@b.example"], "list[email]") == '["a@b.example"]'
