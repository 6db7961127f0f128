"""``personalign serve`` and ``personalign keys``: the HTTP service and its API keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from personalign.cli._common import errors, fail, out, print_json, state

if TYPE_CHECKING:
    from personalign.service.keys import KeyStore

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")


def _keys() -> KeyStore:
    from personalign.service.keys import KeyStore

    return KeyStore(state.settings().home / "keys.db")


@keys_app.command("create")
def keys_create(
    scope: Annotated[str, typer.Option(help="admin, app (acts for its own users) or user.")],
    app: Annotated[str | None, typer.Option("--app", help="Application namespace.")] = None,
    for_user: Annotated[str | None, typer.Option("--for-user", help="User of a user key.")] = None,
    name: Annotated[str, typer.Option(help="A label for humans.")] = "",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    with errors(), _keys() as ks:
        info, key = ks.create(scope=scope, app=app, user=for_user, name=name)  # type: ignore[arg-type]
    if json_out:
        print_json(
            {"id": info.id, "key": key, "scope": info.scope, "app": info.app, "user": info.user}
        )
    else:
        out.print(f"key {info.id} ({info.scope}) created; it is shown only now:")
        print(key)


@keys_app.command("list")
def keys_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List keys (never their secrets)."""
    with errors(), _keys() as ks:
        infos = ks.list()
    if json_out:
        print_json(
            [
                {
                    **i.__dict__,
                    "created_at": i.created_at.isoformat(),
                    "revoked_at": i.revoked_at.isoformat() if i.revoked_at else None,
                }
                for i in infos
            ]
        )
        return
    table = Table(title="API keys", title_justify="left")
    for col in ("id", "scope", "app", "user", "name", "created", "revoked"):
        table.add_column(col)
    for i in infos:
        table.add_row(
            i.id,
            i.scope,
            i.app or "",
            i.user or "",
            i.name,
            i.created_at.strftime("%Y-%m-%d %H:%M"),
            i.revoked_at.strftime("%Y-%m-%d %H:%M") if i.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    with errors(), _keys() as ks:
        info = ks.revoke(key_id)
    out.print(f"revoked {info.id}")


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    no_dashboard: Annotated[bool, typer.Option("--no-dashboard")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Processes over the one store (SQLite WAL or PostgreSQL); "
            "default [service] workers (1).",
        ),
    ] = None,
) -> None:
    """Serve the OpenAI-compatible API, the memory REST API and the dashboard."""
    import uvicorn

    from personalign.service import serve as serving

    with errors():
        from personalign.service.keys import KeyStore

        settings = state.settings()
        keys = KeyStore(settings.home / "keys.db")
        try:
            if not keys.list():
                raise fail("no API keys yet: run `personalign keys create --scope admin` first")
        finally:
            keys.close()
        n = workers or settings.service.workers
        if n > 1:  # each worker opens its own personalizer (serving.app_from_env)
            serving.worker_env(settings, state.config, state.embedder, not no_dashboard)
            out.print(f"personalign serving {settings.model} on http://{host}:{port}, {n} workers")
            uvicorn.run(
                serving.FACTORY, factory=True, host=host, port=port, workers=n, log_level="info"
            )
            return
        app = serving.build_app(settings, dashboard=not no_dashboard)
    out.print(
        f"personalign serving {app.state.service.personalizer.model.name} on http://{host}:{port}"
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        app.state.service.close()  # pending ingestion first, then every connection
