"""The `nightlab` command: one module per group of commands, the live terminal view, the demo and
the MCP server. Nothing imports this package."""
