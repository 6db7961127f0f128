"""``personalign feedback``, ``profile``, ``calibrate`` and ``train``: feedback-based alignment.

Feedback is about a logged exchange (``--exchange ID``; default: the user's latest one, see
``personalign logs``). Each record is stored, then learned from: critique and edits reach the
memory, choices and ratings re-estimate the user's weights (``personalign profile show``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from personalign.cli._common import err, errors, fail, out, print_json, state
from personalign.types import FeedbackIn, Profile

if TYPE_CHECKING:
    from personalign.config import Settings
    from personalign.feedback.learn import FeedbackOutcome
    from personalign.feedback.pairs import RewardScorer
    from personalign.memory import Memory

app = typer.Typer(no_args_is_help=True)
profile_app = typer.Typer(no_args_is_help=True)
train_app = typer.Typer(no_args_is_help=True)

User = Annotated[str, typer.Option("--user", "-u", help="Whose feedback.")]
ExchangeOpt = Annotated[
    str | None, typer.Option("--exchange", "-x", help="Exchange id (default: the latest).")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@contextmanager
def _memory() -> Iterator[Memory]:
    with errors():
        from personalign.pipeline import open_guarded_memory

        mem = open_guarded_memory(state.settings())
    try:
        yield mem
    finally:
        mem.close()


def _exchange_id(mem: Memory, user: str, given: str | None) -> str:
    if given:
        return given
    latest = mem.store.exchanges(user=user, limit=1)
    if not latest:
        raise fail(f"{user} has no logged exchange to give feedback on; pass --exchange ID")
    return latest[0].id


def weights_line(p: Profile | None) -> str:
    """``conciseness 0.81±0.20, warmth 1.00±0.15`` (or a note when there is no profile)."""
    if p is None:
        return "no weights yet"
    parts = []
    for k, v in p.weights.items():
        u = p.uncertainty.get(k)
        parts.append(f"{k} {v:.2f}" + (f"±{u:.2f}" if u is not None else ""))
    return ", ".join(parts) + f" ({p.source})"


def _record(user: str, fb: FeedbackIn, json_out: bool) -> None:
    from personalign.pipeline import Personalizer

    with _memory() as mem, errors():
        res = Personalizer(mem).record_feedback(fb, user=user)  # no model needed
    _report(res, json_out)


def _report(res: FeedbackOutcome, json_out: bool) -> None:
    if json_out:
        print_json(
            {
                "feedback": res.feedback.model_dump(mode="json"),
                "profile": res.profile.model_dump(mode="json") if res.profile else None,
                "memories": res.memories,
                "notes": res.notes,
            }
        )
        return
    fb = res.feedback
    about = f" on exchange {fb.exchange_id}" if fb.exchange_id else ""
    out.print(f"recorded {fb.kind} [dim]{fb.id}[/]{about}", highlight=False)
    for text in res.memories:
        out.print(f"learned: {text}", highlight=False)
    if res.profile is not None:
        out.print(f"weights: {weights_line(res.profile)}", highlight=False)
    for note in res.notes:
        err.print(f"[dim]{note}[/]", highlight=False)


@app.command()
def good(user: User, exchange: ExchangeOpt = None, json_out: Json = False) -> None:
    """Thumbs up on an answer."""
    from personalign.feedback.events import thumbs

    with _memory() as mem:
        xid = _exchange_id(mem, user, exchange)
    with errors():
        fb = thumbs(True, exchange_id=xid, source="cli")
    _record(user, fb, json_out)


@app.command()
def bad(user: User, exchange: ExchangeOpt = None, json_out: Json = False) -> None:
    """Thumbs down on an answer."""
    from personalign.feedback.events import thumbs

    with _memory() as mem:
        xid = _exchange_id(mem, user, exchange)
    with errors():
        fb = thumbs(False, exchange_id=xid, source="cli")
    _record(user, fb, json_out)


@app.command()
def rate(
    stars: Annotated[int, typer.Argument(min=1, max=5, help="1 (bad) to 5 (excellent).")],
    user: User,
    exchange: ExchangeOpt = None,
    json_out: Json = False,
) -> None:
    """Rate an answer from 1 to 5 stars."""
    from personalign.feedback import events

    with _memory() as mem:
        xid = _exchange_id(mem, user, exchange)
    with errors():
        fb = events.stars(stars, exchange_id=xid, source="cli")
    _record(user, fb, json_out)


@app.command()
def prefer(
    user: User,
    chosen: Annotated[str, typer.Option(help="The better answer.")],
    rejected: Annotated[str, typer.Option(help="The worse answer.")],
    prompt: Annotated[str | None, typer.Option(help="What both answer.")] = None,
    exchange: Annotated[str | None, typer.Option("--exchange", "-x", help="Exchange id.")] = None,
    json_out: Json = False,
) -> None:
    """Record that one answer is better than another."""
    from personalign.feedback.events import pairwise

    with errors():
        fb = pairwise(chosen, rejected, prompt=prompt, exchange_id=exchange, source="cli")
    _record(user, fb, json_out)


@app.command()
def edit(
    text: Annotated[str, typer.Argument(help="Your corrected version of the answer.")],
    user: User,
    exchange: ExchangeOpt = None,
    json_out: Json = False,
) -> None:
    """Give the answer as it should have been."""
    from personalign.feedback import events

    _text_feedback(events.edit, text, user, exchange, json_out)


@app.command()
def critique(
    text: Annotated[str, typer.Argument(help="What was wrong (or right) with the answer.")],
    user: User,
    exchange: ExchangeOpt = None,
    json_out: Json = False,
) -> None:
    """Say what was wrong with an answer; stated preferences go to memory."""
    from personalign.feedback import events

    _text_feedback(events.critique, text, user, exchange, json_out)


def _text_feedback(
    make: Callable[..., FeedbackIn], text: str, user: str, exchange: str | None, json_out: bool
) -> None:
    """Record an edit or a critique of ``exchange`` (default: the user's latest)."""
    with _memory() as mem:
        xid = _exchange_id(mem, user, exchange)
    with errors():
        fb = make(text, exchange_id=xid, source="cli")
    _record(user, fb, json_out)


@app.command("list")
def list_(
    user: User, limit: Annotated[int, typer.Option(min=1)] = 50, json_out: Json = False
) -> None:
    """The user's feedback, oldest first."""
    with _memory() as mem, errors():
        fbs = mem.store.feedback(user=user, limit=limit)
    if json_out:
        print_json([f.model_dump(mode="json") for f in fbs])
        return
    table = Table(title=f"feedback of {user} ({len(fbs)})", title_justify="left")
    for col in ("when", "kind", "exchange", "what"):
        table.add_column(col, overflow="fold")
    for f in fbs:
        if f.kind == "rating":
            what = f"{f.scale} {f.value:+g}" if f.scale == "thumbs" else f"{f.value:g} stars"
        elif f.kind == "pairwise":
            what = f"chose: {f.chosen}"
        elif f.kind == "override":
            what = ", ".join(f"{k}={v:g}" for k, v in f.weights.items())
        else:
            what = f.text or ""
        table.add_row(f.at.strftime("%m-%d %H:%M:%S"), f.kind, f.exchange_id or "", what[:200])
    out.print(table)


# -- profile --------------------------------------------------------------------------------


@profile_app.command("show")
def profile_show(user: User, json_out: Json = False) -> None:
    """The user's dimension weights (with uncertainty) and their history."""
    with _memory() as mem, errors():
        hist = mem.store.profile_history(user=user)
    if json_out:
        print_json([p.model_dump(mode="json") for p in hist])
        return
    if not hist:
        out.print(f"{user} has no weights yet: give feedback, or run `personalign calibrate`")
        return
    cur = hist[-1]
    table = Table(title=f"weights of {user} ({cur.source})", title_justify="left")
    table.add_column("dimension")
    table.add_column("weight", justify="right")
    table.add_column("± std", justify="right")
    for k, v in cur.weights.items():
        u = cur.uncertainty.get(k)
        table.add_row(k, f"{v:.2f}", "" if u is None else f"{u:.2f}")
    out.print(table)
    for p in hist[-6:-1][::-1]:
        out.print(
            f"[dim]{p.at:%m-%d %H:%M} {p.source}: {weights_line(p)} — {p.reason or ''}[/]",
            highlight=False,
        )


@profile_app.command("set")
def profile_set(
    user: User,
    weights: Annotated[list[str], typer.Argument(help="dimension=weight pairs, each in [0, 1].")],
    reason: Annotated[str | None, typer.Option(help="Why (kept in history).")] = None,
    json_out: Json = False,
) -> None:
    """Override the weights by hand (kept as feedback; estimates start from it)."""
    from personalign.feedback.learn import set_weights

    parsed: dict[str, float] = {}
    for item in weights:
        name, sep, value = item.partition("=")
        try:
            parsed[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise fail(f"expected dimension=weight, got {item!r}")
    with _memory() as mem, errors():
        _, prof = set_weights(mem.store, parsed, user=user, reason=reason)
    if json_out:
        print_json(prof.model_dump(mode="json"))
    else:
        out.print(f"weights of {user}: {weights_line(prof)}", highlight=False)


# -- calibrate ------------------------------------------------------------------------------


def _ask(prompt: str) -> str:
    if sys.stdin.isatty():
        return input(prompt)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    out.print(f"{prompt}{line.rstrip()}", highlight=False, markup=False)
    return line


def calibrate(
    user: User,
    max_queries: Annotated[int, typer.Option(min=1, max=50, help="Ask at most this many.")] = 15,
    target: Annotated[
        float, typer.Option(min=0.0, help="Stop when the weights' spread is at most this.")
    ] = 0.5,
    max_tokens: Annotated[int, typer.Option(min=8, max=512, help="Answer length.")] = 96,
) -> None:
    """Learn your weights: choose the better of two answers until they are certain enough.
    Answer 1 or 2, s to skip, q to stop."""
    from rich.panel import Panel

    from personalign.backends.models import load_model
    from personalign.backends.models.base import GenerationOptions
    from personalign.feedback.calibrate import Calibration, build_pool

    settings = state.settings()
    with _memory() as mem, errors():
        model = load_model(settings)
        with err.status("Generating answers to compare (cached after the first time)…"):
            pool = build_pool(
                model,
                options=GenerationOptions(max_new_tokens=max_tokens),
                cache=settings.home / "calibration_pool.json",
            )
        model.close()
        from personalign.feedback.coldstart import ColdStart

        prior = ColdStart(mem.store, settings).weight_prior()  # the population's, if any
        cal = Calibration(
            mem.store, pool, user=user, prior=prior, max_queries=max_queries, target_spread=target
        )
        out.print(
            f"Calibrating {user}: pick the answer you prefer (1/2), s to skip, q to stop.",
            highlight=False,
        )
        n = 0
        while (query := cal.next_query()) is not None:
            n += 1
            prompt, a1, a2 = query
            out.print(f"\n[bold]{n}. {prompt}[/]", highlight=False)
            out.print(Panel(a1, title="1", title_align="left"), highlight=False)
            out.print(Panel(a2, title="2", title_align="left"), highlight=False)
            while True:
                try:
                    ans = _ask("better? [1/2/s/q] ").strip().lower()
                except EOFError:
                    ans = "q"
                if ans in ("1", "2", "s", "q"):
                    break
                err.print("answer 1, 2, s or q")
            if ans == "q":
                break
            cal.answer(None if ans == "s" else int(ans))
            out.print(f"[dim]spread {cal.posterior.spread:.2f}[/]")
        prof = cal.finish()
    if prof is None:
        out.print("no choices made: weights unchanged")
    else:
        out.print(f"\nweights of {user}: {weights_line(prof)}", highlight=False)


# -- train ----------------------------------------------------------------------------------


@train_app.command("users")
def train_users_cmd(
    users: Annotated[
        list[str] | None, typer.Option("--user", "-u", help="Train these users (default: all).")
    ] = None,
    executor: Annotated[str, typer.Option(help="local (process pool) or ray.")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local one).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Parallel jobs (local cluster).")] = 1,
    min_pairs: Annotated[int, typer.Option(min=1, help="Pairs needed to train a user.")] = 16,
    ranked_prompts: Annotated[
        int, typer.Option(min=0, help="Prompts for reward-ranked pairs per user.")
    ] = 32,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    max_steps: Annotated[int, typer.Option(help="Stop after N steps (-1: epochs).")] = -1,
    threads: Annotated[int, typer.Option(min=1, help="Torch threads per job.")] = 1,
    force: Annotated[bool, typer.Option(help="Retrain even if up to date.")] = False,
    reward_model: Annotated[
        bool,
        typer.Option(
            help="Rank candidates by the preference reward model over the user's stored "
            "preferences too (not only by their style weights)."
        ),
    ] = True,
    adapter_check: Annotated[
        bool | None,
        typer.Option(
            help="Check each adapter on harmful probes before it serves (default: the "
            "adapter_check.enabled setting, on). --no-adapter-check: only on purpose."
        ),
    ] = None,
    check_margin: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Allowed drop in refusal rate (default: the setting, 0.25)."
        ),
    ] = None,
    json_out: Json = False,
) -> None:
    """Train per-user LoRA adapters with DPO on their preference pairs (resumable: users
    whose data did not change keep their adapter). Each new adapter must pass the safety
    check before it serves; a rejected one is kept but never served."""
    from personalign.feedback.adapters import AdapterStore
    from personalign.feedback.train import TrainConfig, train_users
    from personalign.safety.adapter_check import AdapterCheckConfig

    if executor not in ("local", "ray"):
        raise fail(f"--executor must be local or ray, got {executor!r}")
    settings = state.settings()
    base = settings.model if settings.model != "fake" else "smollm2"
    check = AdapterCheckConfig(
        enabled=settings.adapter_check.enabled if adapter_check is None else adapter_check,
        margin=settings.adapter_check.margin if check_margin is None else check_margin,
    )
    with _memory() as mem, errors():
        cfg = TrainConfig(
            base_model=base,
            min_pairs=min_pairs,
            max_pairs=max(64, min_pairs),
            ranked_prompts=ranked_prompts,
            epochs=epochs,
            max_steps=max_steps,
            threads=threads,
        )
        results = train_users(
            mem.store,
            AdapterStore.for_home(settings.home),
            users=users,
            config=cfg,
            executor=executor,  # type: ignore[arg-type]
            workers=workers,
            address=address,
            cache_dir=settings.cache_dir,
            scorer_factory=_reward_model_factory(settings) if reward_model else None,
            force=force,
            progress=not json_out,
            check=check,
        )
    if json_out:
        print_json(
            [{k: v for k, v in r.__dict__.items() if k not in ("files", "recipe")} for r in results]
        )
        return
    table = Table(title="per-user adapters", title_justify="left")
    for col in ("user", "status", "adapter", "pairs", "seconds", "detail"):
        table.add_column(col, overflow="fold")
    for r in results:
        detail = r.message or (f"reward acc {r.metrics.get('reward_accuracy', 0):.2f}")
        table.add_row(r.user, r.status, r.adapter or "", str(r.pairs), f"{r.seconds:.0f}", detail)
    out.print(table)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def _reward_model_factory(settings: Settings) -> Callable[[], RewardScorer] | None:
    """A picklable factory of the shipped preference reward model (the pipeline's; it runs
    over MiniLM, so none with another embedder)."""
    if settings.embedder != "minilm":
        return None
    from personalign.rewards.preference_rm import shipped_reward_model

    return functools.partial(shipped_reward_model, settings.cache_dir)


@train_app.command("adapters")
def adapters_cmd(
    user: Annotated[str, typer.Option("--user", "-u", help="The user.")],
    json_out: Json = False,
) -> None:
    """List a user's adapter versions: which one serves, and the safety check's verdicts."""
    from personalign.feedback.adapters import AdapterStore
    from personalign.safety.adapter_check import verdict_message

    with errors():
        st = AdapterStore.for_home(state.settings().home)
        rows = st.listing(user)
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"adapters of {user}", title_justify="left")
    for col in ("adapter", "created", "serves", "check", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        detail = verdict_message(r["safety_check"]) if r["safety_check"] else ""
        serves = "yes" if r["serves"] else ""
        table.add_row(r["adapter"], r["created_at"], serves, r["check"], detail)
    out.print(table)
    if rows and not any(r["serves"] for r in rows):
        out.print("no adapter serves: the base model answers", highlight=False)


@train_app.command("export")
def export_cmd(
    dest: Annotated[str, typer.Argument(help="Folder to lay the adapters out in.")],
    base_model: Annotated[
        str, typer.Option(help="The base model name vLLM serves.")
    ] = "HuggingFaceTB/SmolLM2-135M-Instruct",
    users: Annotated[list[str] | None, typer.Option("--user", "-u")] = None,
    copy: Annotated[bool, typer.Option(help="Copy weights instead of symlinking.")] = False,
) -> None:
    """Export the newest adapter of each user in the layout vLLM's multi-LoRA serving loads."""
    from personalign.feedback.adapters import AdapterStore

    with errors():
        manifest = AdapterStore.for_home(state.settings().home).export_vllm(
            dest, base_model=base_model, users=users, copy=copy
        )
    n = len(manifest["adapters"])
    out.print(f"exported {n} adapter(s) to {dest}", highlight=False)
    out.print(
        f"serve: VLLM_ALLOW_RUNTIME_LORA_UPDATING=true VLLM_PLUGINS=lora_filesystem_resolver "
        f"VLLM_LORA_RESOLVER_CACHE_DIR={dest} vllm serve {base_model} --enable-lora "
        f"--max-lora-rank 8   (or --lora-modules $(cat {dest}/lora_modules.txt))",
        highlight=False,
        markup=False,
    )
