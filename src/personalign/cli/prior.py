"""``personalign profile prior``: the population prior a user with no history starts from."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from personalign.cli._common import errors, out, print_json, state


def prior(
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Recompute it now from every user's weights.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The population prior over style weights (an aggregate of users' estimated weights,
    numbers only): a new user's weights until they have their own. Recomputed with
    --refresh, or automatically when older than coldstart.refresh_hours."""
    from personalign.feedback.coldstart import ColdStart, load_prior
    from personalign.pipeline import open_guarded_memory

    settings = state.settings()
    with errors():
        mem = open_guarded_memory(settings)
        try:
            cold = ColdStart(mem.store, settings)
            current = cold.refresh() if refresh else load_prior(cold.path)
            users = len([u for u in mem.store.users() if mem.store.get_profile(user=u)])
        finally:
            mem.close()
    need = settings.coldstart.min_users
    if json_out:
        print_json({"prior": current.to_json() if current else None, "path": str(cold.path)})
        return
    if current is None:
        what = "recomputed: " if refresh else "none saved yet (--refresh computes it): "
        out.print(
            f"no population prior {what}{users} user(s) have weights, {need} needed "
            "(coldstart.min_users)",
            highlight=False,
        )
        return
    age_h = (time.time() - current.computed_at) / 3600
    table = Table(
        title=f"population prior over {current.users} users ({age_h:.1f} h old; {cold.path})",
        title_justify="left",
    )
    table.add_column("dimension")
    table.add_column("mean", justify="right")
    table.add_column("spread", justify="right")
    for d, m, s in zip(current.dims, current.mean, current.std, strict=True):
        table.add_row(d, f"{m:.2f}", f"{s:.2f}")
    out.print(table)
