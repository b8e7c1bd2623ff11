"""Real MCP servers (FastMCP, stdio) that the gateway tests start as subprocesses."""
