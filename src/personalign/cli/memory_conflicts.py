"""``personalign memory conflicts / resolve / say``: contradicting preferences, resolved by the
user, and a way to tell the memory something as in a chat (extracted and reconciled).

Registered on the ``memory`` group by :mod:`personalign.cli.memory`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from personalign.cli._common import errors, out, print_json, state
from personalign.errors import ValidationError
from personalign.memory import Memory
from personalign.types import Conflict, Message

User = Annotated[str, typer.Option("--user", "-u", help="Whose memory.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def conflicts_table(items: list[Conflict], *, title: str) -> Table:
    """Each conflict with both sides and what to type to resolve it."""
    table = Table(title=title, title_justify="left")
    table.add_column("conflict", style="dim", no_wrap=True)
    table.add_column("older (held back while open)", overflow="fold", ratio=1)
    table.add_column("newer (applied while open)", overflow="fold", ratio=1)
    table.add_column("status", overflow="fold")
    for c in items:
        status = c.status if c.status != "resolved" else f"resolved: kept {c.resolution}"
        table.add_row(
            c.id, f"{c.older_id}\n{c.older_text}", f"{c.newer_id}\n{c.newer_text}", status
        )
    if any(c.status == "open" for c in items):
        table.caption = (
            "resolve: personalign memory resolve CONFLICT --keep MEMORY_ID (the other one is "
            "superseded, kept as history) or --both"
        )
    return table


def print_open_conflicts(mem: Memory, user: str) -> None:
    """After ``memory list``: the user's open conflicts, if any."""
    items = mem.store.conflicts(user=user)
    if items:
        out.print(conflicts_table(items, title=f"open conflicts of {user} ({len(items)})"))


def _open(user: str) -> Memory:
    from personalign.pipeline import open_guarded_memory

    mem = open_guarded_memory(state.settings())
    try:
        mem.require_user(user=user)
    except BaseException:
        mem.close()
        raise
    return mem


def conflicts(
    user: User,
    all_: Annotated[
        bool, typer.Option("--all", help="Include resolved and moot conflicts.")
    ] = False,
    json_out: Json = False,
) -> None:
    """Preferences that contradict each other, kept until you decide which holds."""
    with errors():
        mem = _open(user)
        try:
            items = mem.store.conflicts(user=user, include_closed=all_)
        finally:
            mem.close()
    if json_out:
        print_json([c.model_dump(mode="json") for c in items])
    else:
        out.print(conflicts_table(items, title=f"conflicts of {user} ({len(items)})"))


def resolve(
    conflict_id: Annotated[str, typer.Argument(metavar="CONFLICT_ID")],
    user: User,
    keep: Annotated[
        str | None,
        typer.Option(
            "--keep", metavar="MEMORY_ID", help="Keep this side; the other is superseded."
        ),
    ] = None,
    both: Annotated[bool, typer.Option("--both", help="Both hold: keep both.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the log).")] = None,
    json_out: Json = False,
) -> None:
    """Resolve a conflict: --keep one side (the other stays in history) or --both."""
    with errors():
        if (keep is None) == (not both):
            raise ValidationError("give exactly one of --keep MEMORY_ID or --both")
        mem = _open(user)
        try:
            c = mem.store.resolve_conflict(conflict_id, user=user, keep=keep, reason=reason)
        finally:
            mem.close()
    if json_out:
        print_json(c.model_dump(mode="json"))
    elif c.resolution == "both":
        out.print(f"resolved {c.id}: both preferences kept", highlight=False)
    else:
        kept, gone = (
            (c.older_id, c.newer_id) if c.resolution == "older" else (c.newer_id, c.older_id)
        )
        out.print(
            f"resolved {c.id}: kept [bold]{kept}[/]; {gone} superseded (in its history)",
            highlight=False,
        )


def say(
    text: Annotated[str, typer.Argument(help="What you would say in a chat.")],
    user: User,
    json_out: Json = False,
) -> None:
    """Tell the memory something as in a chat: preferences are extracted and reconciled
    (added, merged, superseding an old one, or flagged as a conflict) and the turn is kept."""
    from personalign.pipeline import open_guarded_memory

    with errors():
        mem = open_guarded_memory(state.settings())
        try:
            result = mem.add_messages([Message(role="user", content=text)], user=user)
            opened = {c.newer_id: c for c in mem.store.conflicts(user=user)}
        finally:
            mem.close()
    rows = [
        {
            "action": d.action,
            "text": d.candidate.text,
            "id": d.record.id if d.record else None,
            "target_id": d.target.id if d.target else None,
            "conflict_id": opened[d.record.id].id
            if d.record is not None and d.record.id in opened
            else None,
            "reason": d.reason,
        }
        for d in result.decisions
    ]
    if json_out:
        print_json({"decisions": rows, "counts": result.counts, "notes": result.notes})
        return
    if not rows:
        out.print("no preference found in that; the turn is kept as a raw turn", highlight=False)
    for r in rows:
        line = f"{r['action']}: {r['text']}"
        if r["conflict_id"]:
            line += (
                f"\n  conflicts with {r['target_id']} (conflict [bold]{r['conflict_id']}[/]): "
                "both kept, the newer applies until you run `personalign memory resolve`"
            )
        elif r["action"] == "supersede" and r["target_id"]:
            line += f"\n  supersedes {r['target_id']} (kept in history)"
        out.print(line, highlight=False)
