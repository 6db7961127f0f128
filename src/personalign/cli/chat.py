"""``personalign chat``, ``ask`` and ``logs``: personalized conversation from the terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from personalign.cli._common import err, errors, out, print_json, state
from personalign.types import Message

if TYPE_CHECKING:
    from personalign.pipeline import PersonalizeOptions, Personalizer, Reply

User = Annotated[str, typer.Option("--user", "-u", help="Who is talking.")]
MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="plain (no memory), prompt (memory in the prompt), or a decoding-time method: "
        "contrastive, mod, best_of_n, reward_guided (default: the pipeline's, best_of_n).",
    ),
]
MaxTokens = Annotated[int, typer.Option("--max-tokens", min=1, max=4096, help="Reply length cap.")]

HELP = (
    "/memory  list your stored preferences\n"
    "/forget ID  forget one of them\n"
    "/why     which stored preferences shaped the last answer, and how\n"
    "/good /bad  rate the last answer\n"
    "/edit TEXT  give the last answer as it should have been\n"
    "/prefer  show another answer; then /prefer 1 or /prefer 2 says which is better\n"
    "/answer 1|2  answer the short question a new user is asked about their style\n"
    "/quit    leave (Ctrl-D too)"
)


@contextmanager
def _personalizer() -> Iterator[Personalizer]:
    with errors():
        from personalign.pipeline import Personalizer

        p = Personalizer.open(state.settings())
    try:
        yield p
    finally:
        with errors():
            p.close()


def _options(method: str, max_tokens: int) -> PersonalizeOptions:
    from personalign.backends.models.base import GenerationOptions
    from personalign.pipeline import PersonalizeOptions

    generation = GenerationOptions(max_new_tokens=max_tokens)
    if not method:  # the pipeline's default method
        return PersonalizeOptions(generation=generation)
    return PersonalizeOptions(method=method, generation=generation)  # type: ignore[arg-type]


def why_table(reply: Reply) -> Table:
    """The preferences behind a reply, with their fused scores and matching signals."""
    x = reply.exchange
    adapter = f" adapter={x.meta['adapter']}" if x.meta.get("adapter") else ""
    table = Table(
        title=f"method={x.method} model={x.model}{adapter} latency={x.latency_ms:.0f} ms "
        f"(retrieval {x.retrieval_ms:.1f} ms)",
        title_justify="left",
    )
    table.add_column("id", style="dim", no_wrap=True)
    table.add_column("kind")
    table.add_column("preference", overflow="fold", ratio=1)
    table.add_column("score", justify="right")
    table.add_column("matched")
    for p in x.preferences:
        text = p.text + (f"\n(only when: {p.context}; the message is)" if p.context else "")
        table.add_row(p.id, p.kind, text, f"{p.score:.4f}", ",".join(p.matched))
    if not x.preferences:
        table.caption = "no stored preference was relevant: the answer is not personalized"
    decoding = x.meta.get("decoding")
    if decoding:
        facts = ", ".join(f"{k}={v}" for k, v in decoding.items() if k != "method")
        table.caption = (table.caption or "") + (
            f"decoded with {decoding['method']} ({facts}): the preferences steered each token"
        )
    lines = []
    for c in x.meta.get("constraints", []):
        verdict = "kept" if c["passed_as_generated"] else "repaired" if c["passed"] else "MISSED"
        lines.append(f'\n{verdict}: {c["asks"]} (from "{c["from"]}")')
    for h in x.meta.get("scope", {}).get("held_back", []):
        lines.append(f'\nheld back: "{h["text"]}" ({h["detail"]})')
    style = x.meta.get("style")
    if style:
        used = ", ".join(f"{k}={v}" for k, v in style["weights"].items())
        lines.append(f"\nstyle weights used: {used}")
    table.caption = (table.caption or "") + "".join(lines)
    if adapter:
        table.caption = (table.caption or "") + (
            f"\nanswered with your own adapter {x.meta['adapter']}, trained on your feedback"
        )
    rejected = x.meta.get("adapter_rejected")
    if rejected:
        table.caption = (table.caption or "") + (
            f"\nanswered by the base model: your adapter {rejected['adapter']} was rejected by "
            f"the safety check (it refused {rejected['adapter_rate']:.2f} of the harmful probes, "
            f"the base model {rejected['base_rate']:.2f}; allowed drop {rejected['margin']:.2f})"
        )
    return table


def ask(
    message: Annotated[str, typer.Argument(help="The message.")],
    user: User,
    method: MethodOpt = "",
    max_tokens: MaxTokens = 256,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Ask one question and print the personalized answer."""
    with _personalizer() as p, errors():
        reply = p.respond(message, user=user, options=_options(method, max_tokens))
    if json_out:
        x = reply.exchange
        print_json(
            {
                "answer": reply.text,
                "preferences": [pr.model_dump(mode="json") for pr in x.preferences],
                "method": x.method,
                "model": x.model,
                "latency_ms": x.latency_ms,
                "retrieval_ms": x.retrieval_ms,
                "exchange_id": x.id,
                "constraints": x.meta.get("constraints", []),
                "repaired": x.meta.get("repaired", False),
                "style": x.meta.get("style"),
                **({"question": x.meta["question"]} if x.meta.get("question") else {}),
                "scope": x.meta.get("scope", {}),
            }
        )
    else:
        out.print(reply.text, highlight=False, markup=False)
        if reply.exchange.meta.get("question"):
            err.print(reply.exchange.meta["question"]["text"], style="dim", markup=False)
        if reply.preferences:
            err.print(
                f"[dim]personalized with {len(reply.preferences)} preference(s); "
                "see `personalign logs`[/]"
            )


def chat(
    user: User,
    method: MethodOpt = "",
    max_tokens: MaxTokens = 256,
    turns: Annotated[int, typer.Option(help="Earlier turns kept in context.")] = 6,
) -> None:
    """Interactive personalized chat with streaming replies. Type /help for commands."""
    with _personalizer() as p:
        with errors():
            options = _options(method, max_tokens)
        out.print(
            f"[bold]personalign chat[/] as {user} (model {p.model.name}). /help for commands."
        )
        history: list[Message] = []
        last: list[Reply] = []
        pending: dict[str, str] = {}  # /prefer's alternative answer
        while True:
            try:
                line = input("you> ").strip() if sys.stdin.isatty() else _read_line()
            except (EOFError, KeyboardInterrupt):
                out.print()
                break
            if not line:
                continue
            if line.startswith("/"):
                if not _command(p, line, user=user, last=last, pending=pending):
                    break
                continue
            history.append(Message(role="user", content=line))
            out.print("assistant> ", end="")
            parts: list[str] = []
            with errors():
                for delta in p.stream(
                    history[-(2 * turns + 1) :], user=user, options=options, on_done=last.append
                ):
                    parts.append(delta)
                    out.print(delta, end="", highlight=False, markup=False)
            out.print()
            history.append(Message(role="assistant", content="".join(parts)))
            question = last[-1].exchange.meta.get("question") if last else None
            if question:  # a new user's one style question (feedback.coldstart)
                out.print(question["text"], style="dim", highlight=False, markup=False)
                out.print("[dim](/answer 1 or /answer 2, or just carry on)[/]")


def _read_line() -> str:
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    out.print(f"you> {line.rstrip()}", highlight=False, markup=False)
    return line.strip()


def _command(
    p: Personalizer,
    line: str,
    *,
    user: str,
    last: list[Reply],
    pending: dict[str, str] | None = None,
) -> bool:
    """Run a slash command; False means leave the chat."""
    cmd, _, arg = line.partition(" ")
    if cmd in ("/good", "/bad", "/edit", "/prefer", "/answer"):
        _feedback(
            p, cmd, arg.strip(), user=user, last=last, pending={} if pending is None else pending
        )
        return True
    if cmd in ("/quit", "/exit"):
        return False
    if cmd == "/help":
        out.print(HELP)
    elif cmd == "/memory":
        from personalign.cli.memory import _table

        recs = p.memory.list(user=user) if p.memory.has_user(user=user) else []
        out.print(_table(recs, title=f"memories of {user} ({len(recs)})"))
    elif cmd == "/forget":
        try:
            rec = p.memory.forget(arg.strip(), user=user, reason="/forget in chat")
            out.print(f"forgot {rec.id}: {rec.text}", highlight=False)
        except Exception as e:
            err.print(f"[bold red]error:[/] {e}")
    elif cmd == "/why":
        if not last:
            out.print("no answer yet")
        else:
            out.print(why_table(last[-1]))
    else:
        err.print(f"[bold red]error:[/] unknown command {cmd}; /help lists them")
    return True


def logs(
    user: User,
    limit: Annotated[int, typer.Option(min=1, help="Newest N exchanges.")] = 20,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The user's logged exchanges: prompt, answer, model, method, preferences, latency."""
    from personalign.pipeline import open_guarded_memory

    with errors():
        mem = open_guarded_memory(state.settings())
        try:
            mem.require_user(user=user)
            xs = mem.store.exchanges(user=user, limit=limit)
        finally:
            mem.close()
    if json_out:
        print_json([x.model_dump(mode="json") for x in xs])
        return
    table = Table(title=f"exchanges of {user} ({len(xs)})", title_justify="left")
    table.add_column("when", no_wrap=True)
    table.add_column("message", overflow="fold", ratio=1)
    table.add_column("answer", overflow="fold", ratio=2)
    table.add_column("method")
    table.add_column("prefs", justify="right")
    table.add_column("ms", justify="right")
    for x in xs:
        question = next((m.content for m in reversed(x.messages) if m.role == "user"), "")
        table.add_row(
            x.at.strftime("%m-%d %H:%M:%S"),
            question,
            x.response,
            x.method,
            str(len(x.preferences)),
            f"{x.latency_ms:.0f}",
        )
    out.print(table)


def _feedback(
    p: Personalizer, cmd: str, arg: str, *, user: str, last: list[Reply], pending: dict[str, str]
) -> None:
    """/good, /bad, /edit TEXT, /prefer [1|2] on the last answer."""
    from personalign.errors import PersonalignError
    from personalign.feedback import events

    if not last:
        out.print("no answer yet")
        return
    x = last[-1].exchange
    try:
        if cmd in ("/good", "/bad"):
            fb = events.thumbs(cmd == "/good", exchange_id=x.id, source="chat")
        elif cmd == "/answer":
            asked = [r.exchange.meta.get("question") for r in last]
            q = next((a for a in reversed(asked) if a), None)
            if q is None or arg not in ("1", "2"):
                err.print("[bold red]error:[/] /answer 1 or /answer 2, after a question")
                return
            picked, other = q["options"] if arg == "1" else q["options"][::-1]
            fb = events.pairwise(picked, other, prompt=q["prompt"], source="coldstart")
        elif cmd == "/edit":
            fb = events.edit(arg, exchange_id=x.id, source="chat")
        elif not arg:  # /prefer: show another answer to choose against
            import random

            from personalign.backends.models.base import GenerationOptions
            from personalign.pipeline import PersonalizeOptions

            opts = GenerationOptions(temperature=0.9, seed=random.randrange(1 << 30))
            opts = p.with_adapter(PersonalizeOptions(generation=opts), user=user).generation
            gen = p.model.generate(x.messages, options=opts)
            pending.clear()
            pending.update({"exchange": x.id, "text": gen.text})
            out.print("answer 2> " + gen.text, highlight=False, markup=False)
            out.print("[dim]which is better? /prefer 1 (the first) or /prefer 2[/]")
            return
        else:
            if arg not in ("1", "2") or pending.get("exchange") != x.id:
                err.print("[bold red]error:[/] /prefer first, then /prefer 1 or /prefer 2")
                return
            first, second = x.response, pending.pop("text")
            chosen, rejected = (first, second) if arg == "1" else (second, first)
            fb = events.pairwise(chosen, rejected, exchange_id=x.id, source="chat")
        res = p.record_feedback(fb, user=user)
    except PersonalignError as e:
        err.print(f"[bold red]error:[/] {e}")
        return
    from personalign.cli.feedback import weights_line

    out.print(f"[dim]recorded {res.feedback.kind}[/]", highlight=False)
    for text in res.memories:
        out.print(f"[dim]learned: {text}[/]", highlight=False)
    if res.profile is not None:
        out.print(f"[dim]weights: {weights_line(res.profile)}[/]", highlight=False)
