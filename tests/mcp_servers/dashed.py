"""An MCP server (the SDK's low-level `Server`, stdio) whose names are not identifiers.

Tool `search-docs` with params `query` and `per-page`. The policy declares
them as `aarmc import-mcp --prefix docs` would, `docs.search_docs(query: str,
per_page: int = 10)`, and the gateway runs with ``--prefix docs``: it renames
on the way in and back on the way out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server


def build(journal: Path | None) -> Server:
    server: Server = Server("dashed")

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return [types.Tool(name="search-docs", inputSchema={
            "type": "object",
            "properties": {"query": {"type": "string"}, "per-page": {"type": "integer", "default": 10}},
            "required": ["query"],
        })]

    @server.call_tool()
    async def call_tool(name: str, arguments: dict[str, Any]) -> list[types.TextContent]:
        if journal is not None:
            with journal.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"tool": name, "args": arguments}) + "\n")
        return [types.TextContent(type="text", text=f"{arguments.get('per-page')} results for {arguments['query']}")]

    return server


async def serve(journal: Path | None) -> None:
    server = build(journal)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--journal", type=Path)
    anyio.run(serve, parser.parse_args().journal)


if __name__ == "__main__":
    main()
