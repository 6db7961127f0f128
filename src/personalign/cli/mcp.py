"""``personalign mcp``: the MCP server, over stdio (one user) or streamable HTTP (API keys)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from personalign.cli._common import err, errors, fail, state


def mcp_command(
    user: Annotated[
        str | None,
        typer.Option(
            "--user", "-u", help="stdio: the user every call acts for (the host runs one each)."
        ),
    ] = None,
    http: Annotated[
        bool,
        typer.Option("--http", help="Serve streamable HTTP behind the API keys, not stdio."),
    ] = False,
    host: Annotated[str, typer.Option(help="--http: interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="--http: port.")] = 8765,
    path: Annotated[str, typer.Option(help="--http: the endpoint's path.")] = "/mcp",
) -> None:
    """Serve a user's preference memory to MCP hosts (Claude Desktop, Cursor, ...).

    stdio (the default): the host launches `personalign mcp --user alice` and every call acts
    for alice. --http: streamable HTTP at http://HOST:PORT/mcp; each request carries an API
    key (`Authorization: Bearer pal_...`, from `personalign keys create`): an application
    key acts for its own users, a user token for its user only.
    """
    if http and user is not None:
        raise fail("with --http the API key decides the user: --user is for stdio")
    if not http and user is None:
        raise fail("stdio serves one user: pass --user NAME (or --http for API keys)")
    if not path.startswith("/"):
        raise fail(f"--path must start with '/', got {path!r}")
    try:
        from personalign.integrations import mcp as server
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("mcp", "mcp_types"):
            raise
        hint = escape("pip install 'personalign[mcp]'")  # not rich markup
        raise fail(f"the MCP server needs the mcp package: {hint}") from e
    with errors():
        from personalign.pipeline import Personalizer, open_guarded_memory
        from personalign.service.keys import KeyStore
        from personalign.types import check_user

        settings = state.settings()
        keys = None
        if http:
            keys = KeyStore(settings.home / "keys.db")
            if not keys.list():
                raise fail("no API keys yet: run `personalign keys create --scope admin` first")
        else:
            check_user(user or "")
        # no language model: the host's model answers; this serves memory and feedback
        personalizer = Personalizer(open_guarded_memory(settings))
    try:
        if keys is not None:
            # stdout is free over HTTP; over stdio it carries the protocol: nothing printed
            err.print(f"personalign MCP server on http://{host}:{port}{path}", highlight=False)
            server.serve_http(personalizer, keys, host=host, port=port, path=path)
        else:
            server.serve_stdio(personalizer, user=user or "")
    except KeyboardInterrupt:
        pass
    finally:
        personalizer.close()
        if keys is not None:
            keys.close()
