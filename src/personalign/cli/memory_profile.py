"""``personalign memory profile`` and ``memory prune``: a user's profile at a glance, and the
retention of raw turns. :func:`register` adds them to the ``memory`` command group."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from personalign.cli._common import errors, out, print_json
from personalign.cli.memory import AsOf, Json, User, _as_of, _memory

if TYPE_CHECKING:
    from personalign.memory.profile import ProfileSummary


def _print_summary(s: ProfileSummary) -> None:
    when = f" as of {s.as_of:%Y-%m-%d %H:%M} UTC" if s.as_of else ""
    out.print(f"[bold]profile of {s.user}{when}[/]: {s.preferences} preferences", highlight=False)
    for topic, items in s.topics.items():
        table = Table(title=topic, title_justify="left")
        table.add_column("id", style="dim", no_wrap=True)
        table.add_column("preference", overflow="fold", ratio=1)
        table.add_column("constraints", overflow="fold")
        table.add_column("since", no_wrap=True)
        for i in items:
            table.add_row(i.id, i.text, "; ".join(i.constraints) or "-", f"{i.since:%Y-%m-%d}")
        out.print(table)
    lines = [f"  - {c['describe']}" for c in s.constraints]
    out.print("constraints on every reply:", *(lines or ["  (none)"]), sep="\n", highlight=False)
    w = s.weights
    weights = ", ".join(f"{k} {v:.2f}" for k, v in w.weights.items()) if w else "not set"
    out.print(f"style weights: {weights}" + (f" ({w.source})" if w else ""), highlight=False)
    out.print("recent changes:", highlight=False)
    for c in s.recent_changes or []:
        out.print(f"  {c.at:%Y-%m-%d %H:%M} {c.actor}: {c.what}", highlight=False)
    if not s.recent_changes:
        out.print("  (none)")


def profile(
    user: User,
    as_of: AsOf = None,
    recent: Annotated[
        int, typer.Option("--recent", min=0, max=1000, help="How many recent changes.")
    ] = 10,
    json_out: Json = False,
) -> None:
    """A user's profile: preferences by topic, the constraints applied to every reply, style
    weights and recent changes (as they stood then with --as-of). To set the weights, see
    `personalign profile set`."""
    with _memory(user) as mem, errors():
        summary = mem.summary(user=user, as_of=_as_of(as_of), recent=recent)
    if json_out:
        print_json(summary.model_dump(mode="json"))
    else:
        _print_summary(summary)


def prune(
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="Whose raw turns (default: every user).")
    ] = None,
    days: Annotated[
        float | None,
        typer.Option(
            "--days", min=0, help="Keep this many days (default: [retention] turns_days)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say what would be deleted.")
    ] = False,
    json_out: Json = False,
) -> None:
    """Hard-delete raw turns recorded longer ago than the retention period, as completely as
    `memory erase` (their text leaves the database file). Preferences are never pruned."""
    from personalign.memory.timeline import cutoff
    from personalign.types import utcnow

    now = utcnow()
    with _memory(user) as mem, errors():
        now_cutoff = cutoff(mem.settings.retention, days=days, now=now)  # no period: fails
        users = [user] if user is not None else mem.users()
        pruned = {u: mem.prune(user=u, days=days, now=now, dry_run=dry_run) for u in users}
    total = sum(len(v) for v in pruned.values())
    if json_out:
        print_json(
            {
                "dry_run": dry_run,
                "before": now_cutoff.isoformat(),
                "deleted": 0 if dry_run else total,
                "users": {u: [r.id for r in recs] for u, recs in pruned.items() if recs},
            }
        )
        return
    verb = "would delete" if dry_run else "deleted"
    for u, recs in pruned.items():
        if recs:
            out.print(f"{u}: {verb} {len(recs)} raw turns", highlight=False)
    out.print(
        f"{verb} {total} raw turns recorded before {now_cutoff:%Y-%m-%d %H:%M} UTC "
        f"({len(users)} users checked)",
        highlight=False,
    )


def register(group: typer.Typer) -> None:
    """Add ``profile`` and ``prune`` to the ``memory`` command group."""
    group.command()(profile)
    group.command()(prune)
