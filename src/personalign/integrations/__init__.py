"""Doors into other ecosystems, each behind its optional extra; the core never imports them.

* :mod:`personalign.integrations.mcp`: the MCP server (``pip install 'personalign[mcp]'``)
  over :mod:`personalign.integrations.tools`, the scoped verbs it exposes.
* :mod:`personalign.integrations.langgraph`: :class:`PersonalignStore`, a LangGraph
  ``BaseStore`` over the personalign memory (``pip install 'personalign[langgraph]'``).
"""
