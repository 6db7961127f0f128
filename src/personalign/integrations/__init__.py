"""Doors into other ecosystems (optional extras): the MCP server (:mod:`.mcp`, extra
``personalign[mcp]``) over :mod:`.tools`, the scoped verbs it exposes."""
