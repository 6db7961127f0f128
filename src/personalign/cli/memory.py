"""``personalign memory ...``: the preference memory from the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from personalign.cli import memory_conflicts
from personalign.cli._common import errors, out, print_json, state
from personalign.memory import Memory
from personalign.types import Preference, PreferenceIn

app = typer.Typer(no_args_is_help=True)
app.command()(memory_conflicts.conflicts)
app.command()(memory_conflicts.resolve)
app.command()(memory_conflicts.say)

User = Annotated[str, typer.Option("--user", "-u", help="Whose memory.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
KindOpt = Literal["explicit", "implicit"]
AsOf = Annotated[
    str | None,
    typer.Option(
        "--as-of",
        metavar="DATE",
        help="What was active then: ISO 8601 date (end of that day, UTC) or date and time.",
    ),
]


def _as_of(value: str | None) -> datetime | None:
    from personalign.memory.timeline import parse_as_of

    return None if value is None else parse_as_of(value)


@contextmanager
def _memory(user: str | None = None, *, must_exist: bool = True) -> Iterator[Memory]:
    with errors():
        from personalign.pipeline import open_guarded_memory

        mem = open_guarded_memory(state.settings())
        try:
            if user is not None and must_exist:
                mem.require_user(user=user)
            yield mem
        finally:
            mem.close()


def _table(records: list[Preference], *, title: str) -> Table:
    from personalign.memory.constraint_edits import summary

    table = Table(title=title, title_justify="left")
    table.add_column("id", style="dim", no_wrap=True)
    table.add_column("kind")
    table.add_column("text", overflow="fold", min_width=24, ratio=1)
    table.add_column("constraints", overflow="fold", min_width=12)
    table.add_column("recorded", overflow="fold")
    table.add_column("status", overflow="fold")
    for r in records:
        status = "active" if r.active else ("superseded" if r.superseded_at else "forgotten")
        cells = [r.id, r.kind, r.text, summary(r), r.recorded_at.strftime("%Y-%m-%d %H:%M")]
        table.add_row(*cells, status + _context_note(r))
    return table


def _context_note(r: Preference) -> str:
    """ ", only when: <context>" for a preference scoped to a context."""
    from personalign.constraints.context import context_of

    ctx = None if r.kind == "episode" else context_of(r.meta, text=r.text)
    return f", only when: {ctx}" if ctx else ""


def _constraints_table(rec: Preference) -> Table:
    from personalign.constraints import describe
    from personalign.memory.constraint_edits import current

    items, state = current(rec)
    where = {
        "compiled": "compiled from the text",
        "edited": "as edited by the user",
        "not_compiled": "not compiled yet: compiled now from the text",
    }[state]
    table = Table(title=f"constraints of {rec.id} ({where})", title_justify="left")
    table.add_column("kind", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("what it asks", overflow="fold", ratio=1)
    table.add_column("from", overflow="fold", style="dim")
    for c in items:
        value = ", ".join(c.value) if isinstance(c.value, list) else c.value
        phrase = f"“{c.phrase}”" if c.phrase else "(set by the user)"
        table.add_row(c.kind, "" if value is None else str(value), describe(c), phrase)
    return table


@app.command()
def add(
    text: Annotated[str, typer.Argument(help="The preference, in the user's words.")],
    user: User,
    kind: Annotated[str, typer.Option(help="explicit or implicit.")] = "explicit",
    topic: Annotated[str | None, typer.Option(help="Topic tag.")] = None,
    json_out: Json = False,
) -> None:
    """Store a preference."""
    with _memory(user, must_exist=False) as mem, errors():
        if kind not in ("explicit", "implicit"):
            from personalign.errors import ValidationError

            raise ValidationError(f"--kind must be explicit or implicit, got {kind!r}")
        rec = mem.add(PreferenceIn(text=text, kind=kind, topic=topic), user=user)  # type: ignore[arg-type]
    if json_out:
        print_json(rec.model_dump(mode="json"))
    else:
        out.print(f"stored [bold]{rec.id}[/] for {user}: {rec.text}", highlight=False)


@app.command("list")
def list_(
    user: User,
    history: Annotated[bool, typer.Option("--history", help="Include old versions.")] = False,
    episodes: Annotated[bool, typer.Option("--episodes", help="Include raw turns.")] = False,
    as_of: AsOf = None,
    json_out: Json = False,
) -> None:
    """List a user's preferences (active ones unless --history; those active then with
    --as-of), then any open conflicts."""
    kinds = None if episodes else ["explicit", "implicit"]
    with _memory(user) as mem, errors():
        at = _as_of(as_of)
        recs = mem.list(user=user, include_history=history, kinds=kinds, as_of=at)  # type: ignore[arg-type]
        if json_out:
            print_json([r.model_dump(mode="json") for r in recs])
            return
        when = f" as of {at:%Y-%m-%d %H:%M} UTC" if at else ""
        out.print(_table(recs, title=f"memories of {user}{when} ({len(recs)})"))
        if at is None:
            memory_conflicts.print_open_conflicts(mem, user)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    user: User,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many results.")] = 5,
    as_of: AsOf = None,
    json_out: Json = False,
) -> None:
    """Hybrid search (dense + full text + recency) over a user's active memories (those
    active then with --as-of)."""
    with _memory(user) as mem, errors():
        hits = mem.search(query, user=user, k=k, as_of=_as_of(as_of))
    if json_out:
        print_json([h.model_dump(mode="json") for h in hits])
        return
    table = Table(title=f"search {query!r} for {user}", title_justify="left")
    table.add_column("id", style="dim", no_wrap=True)
    table.add_column("text", overflow="fold", min_width=20, ratio=1)
    table.add_column("score", justify="right")
    table.add_column("signals", overflow="fold")
    for h in hits:
        signals = " ".join(f"{n}={h.signals[n]:.2f}" for n in ("dense", "bm25") if n in h.matched)
        note = _context_note(h.record)  # ", only when: ..."
        text = h.record.text + (f"\n({note[2:]})" if note else "")
        table.add_row(h.record.id, text, f"{h.score:.4f}", signals)
    out.print(table)


@app.command()
def update(
    record_id: Annotated[str, typer.Argument(metavar="ID")],
    text: Annotated[str, typer.Argument(help="The new text.")],
    user: User,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the log).")] = None,
    json_out: Json = False,
) -> None:
    """Write a new version that supersedes ID (the old one stays in history)."""
    with _memory(user) as mem, errors():
        rec = mem.update(record_id, text, user=user, reason=reason)
    if json_out:
        print_json(rec.model_dump(mode="json"))
    else:
        out.print(f"{record_id} superseded by [bold]{rec.id}[/]: {rec.text}", highlight=False)


@app.command()
def forget(
    record_id: Annotated[str, typer.Argument(metavar="ID")],
    user: User,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the log).")] = None,
    json_out: Json = False,
) -> None:
    """End a preference's validity now; it stays in history."""
    with _memory(user) as mem, errors():
        rec = mem.forget(record_id, user=user, reason=reason)
    if json_out:
        print_json(rec.model_dump(mode="json"))
    else:
        out.print(f"forgot {rec.id}: {rec.text}", highlight=False)


@app.command()
def constraints(
    record_id: Annotated[str, typer.Argument(metavar="ID")],
    user: User,
    drop: Annotated[
        list[str] | None,
        typer.Option("--drop", metavar="KIND", help="Remove the constraint of this kind."),
    ] = None,
    clear: Annotated[
        bool,
        typer.Option(
            "--clear", help="Remove every constraint (the preference stays, as text only)."
        ),
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KIND[=VALUE]",
            help="Add one, or replace the one of its slot: --set max_words=40, --set lowercase, "
            "--set language=french, --set avoid_words=meat,fish (repeatable).",
        ),
    ] = None,
    json_out: Json = False,
) -> None:
    """Show the checkable constraints compiled from a preference, or edit them.

    An edit (--drop, --clear, --set) writes a new version of the preference with the same
    text (the old one stays in history); its constraints are kept as edited, even when the
    text changes later. Kinds: lowercase, uppercase, no_commas, max_words, max_sentences,
    bullets, numbered, title, start_phrase, end_phrase, postscript, json, quotation, language,
    avoid_words.
    """
    from personalign.errors import ValidationError
    from personalign.memory import constraint_edits as ce

    with _memory(user) as mem, errors():
        rec = mem.get(record_id, user=user)
        if not (drop or clear or set_):
            if json_out:
                print_json(ce.view(rec))
            else:
                out.print(f"[bold]{rec.id}[/]: {rec.text}", highlight=False)
                out.print(_constraints_table(rec))
            return
        if clear and drop:
            raise ValidationError("--clear removes every constraint: do not combine it with --drop")
        if rec.kind == "episode":
            raise ValidationError(
                f"{rec.id} is a raw turn, not a preference: it has no constraints"
            )
        sets = [ce.parse_spec(spec) for spec in set_ or []]
        items, _ = ce.current(rec)
        new_items, changes = ce.apply(items, clear=clear, drop=drop or [], set_=sets)
        if not changes:
            if json_out:
                print_json({**ce.view(rec), "changed": False})
            else:
                out.print(f"nothing to change: {rec.id} is as asked", highlight=False)
            return
        new = ce.save(mem, rec, new_items, user=user, actor="user", change="; ".join(changes))
    if json_out:
        print_json({**ce.view(new), "changed": True, "previous_id": rec.id, "changes": changes})
    else:
        out.print(
            f"{rec.id} superseded by [bold]{new.id}[/]: constraints edited: {'; '.join(changes)}",
            highlight=False,
        )
        out.print(_constraints_table(new))


@app.command()
def history(
    record_id: Annotated[str, typer.Argument(metavar="ID")], user: User, json_out: Json = False
) -> None:
    """Every version of a preference, oldest first."""
    with _memory(user) as mem, errors():
        recs = mem.history(record_id, user=user)
    if json_out:
        print_json([r.model_dump(mode="json") for r in recs])
    else:
        out.print(_table(recs, title=f"history of {record_id}"))


@app.command()
def export(
    user: User,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """All of a user's data as JSON."""
    with _memory(user) as mem:
        data = mem.export(user=user)
    text = json.dumps(data, ensure_ascii=False, indent=2)
    if output:
        output.write_text(text + "\n")
        out.print(f"wrote {len(data['memories'])} memories to {output}")
    else:
        print(text)


@app.command()
def erase(
    user: User,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete everything of a user, history, logs and trained adapters included. Cannot be
    undone."""
    from personalign.feedback.adapters import AdapterStore

    with _memory(user, must_exist=False) as mem:
        adapters = AdapterStore.for_home(mem.settings.home)
        if not mem.has_user(user=user) and not adapters.versions(user):
            mem.require_user(user=user)  # the usual unknown-user error
        if not yes and not typer.confirm(f"Erase every record of {user!r}?"):
            raise typer.Exit(1)
        n = mem.erase_user(user=user)
        k = adapters.erase(user)
    out.print(f"erased {user}: {n} rows deleted, {k} adapter versions deleted")
