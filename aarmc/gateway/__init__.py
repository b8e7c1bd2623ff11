"""`aarmc gateway`: an MCP proxy that decides every tool call with a compiled policy (AARM's protocol gateway).

    visibility.py  may_not_deny(artifact, tool)     which tools a client may see (from the decision tables)
    names.py       ToolNames                        MCP names <-> policy names (`--prefix`, renamed params)
    wire.py        exact_arguments, to_wire, ...    MCP JSON <-> the runtime's exact values
    proxy.py       Gateway                          the MCP server side, one decision per `tools/call`
    run.py         GatewayOptions, open_gateway, serve, serve_stdio, serve_http

Built on the official MCP SDK (`pip install 'aarmc[gateway]'`); the decisions,
approvals and receipts are `aarm_runtime`'s (`Guard`, `SqliteApprovals`,
`ReceiptLog`).
"""

from aarmc.gateway.proxy import ARG_APPROVAL, META_APPROVAL, META_DECISION, Gateway
from aarmc.gateway.run import GatewayOptions, GatewayStartError, open_gateway, serve
from aarmc.gateway.visibility import may_not_deny, visible_tools

__all__ = ["ARG_APPROVAL", "META_APPROVAL", "META_DECISION", "Gateway", "GatewayOptions", "GatewayStartError",
           "may_not_deny", "open_gateway", "serve", "visible_tools"]
