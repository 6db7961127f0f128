"""Personalization at every depth: prompt, MOD over dimension experts, the merged soup,
activation steering and a per-user DPO adapter, on simulated users, against plain decoding.

Simulated users (``--users``, seeded) each lean on two or three of ``--dimensions`` (default
conciseness, structure, formality), each with a random pole (more or less of it) and a weight
in [0.4, 1]. The 100 prompts of ``benchmarks/data/depths_prompts.json`` were written for this
file: none of them trains the experts, the steering vectors or the users' adapters (those use
the experts' training prompts, ``personalign/training/data/expert_prompts.json``), so every
figure here is held out from all training. Each user answers an equal share of the prompts.

Methods (greedy, ``--max-new-tokens``, the embedded SmolLM2-135M on the local backend):

* ``plain`` — the prompt alone (the baseline every gain is measured against);
* ``prompt`` — the user's poles as instructions in the system prompt (the pipeline's lines);
* ``mod`` — multi-objective decoding over the experts: one row per leaned-on pole running that
  pole's expert, ``sum_k w_k log p_k`` (``personalized_generate`` with ``objective_adapters``);
* ``soup`` — the experts merged by the user's signed weights into one adapter (PEFT
  ``add_weighted_adapter``), one model per request;
* ``steering`` — the poles' steering vectors added at the chosen layers, strength = weight x
  ``--steer-scale``;
* ``adapter`` — for the first ``--adapter-users`` users, a LoRA trained with DPO on
  ``--adapter-pairs`` pairs ranked by the user's weighted dimension reward from the base
  model's samples of the training prompts (the per-user path of ``personalign train adapters``).

The judge is not the selector. Experts, steering vectors and user adapters are trained on
pairs ranked by :mod:`personalign.rewards.dimensions`; replies here are scored by this file's
own measured properties (from ``benchmarks/style_weights.py``: word count, list lines,
contractions per 100 words, friendly words per 100 words, words per sentence), each mapped to
[0, 1] toward its "+" pole (:data:`SCALES`). A user's score of a reply is the weight-averaged
property toward each chosen pole.

Keys (``--json``, last line): ``weighted_gain_<m>`` (mean over cases of the user's score of
``m``'s reply minus plain's) and ``cost_ratio_<m>`` (seconds per generated token of ``m`` over
plain's, batch 1, interleaved over ``--cost-cases`` cases in the same run) for m in prompt,
mod, soup, steering, adapter; ``adapter_direction_rate`` (the share of the adapter users'
prompts where the adapter moved the user's strongest dimension's property the chosen way
compared with plain; a tie fails); ``score_<m>``; ``beats_prompt_<m>`` (1 when m's gain is
above prompt's); ``degenerate_rate_<m>`` (replies that are no answer at all by the rule-based
``personalign.rewards.quality.degenerate``: empty, symbol soup, a stub, a few words).
``--report DIR`` writes ``depths.md`` and ``depths_pareto.png``: for two
dimensions, a sweep of weight vectors and each method's mean properties (a Pareto front).

    python benchmarks/depths.py [--experts DIR] [--train] [--prompts 100] [--json] [--report DIR]
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import style_weights as sw
from personalign.eval.bench import emit, parser

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "data" / "depths_prompts.json"
METHODS = ("prompt", "mod", "soup", "steering", "adapter")
DIMENSIONS = ("conciseness", "structure", "formality", "warmth", "readability")

SCALES: dict[str, Callable[[str], float]] = {
    # each property mapped to [0, 1], 1 at the "+" pole of its dimension
    "conciseness": lambda t: 1.0 - min(sw._words(t), 200) / 200.0,
    "structure": lambda t: min(len(sw._LIST_LINE.findall(t)), 6) / 6.0,
    "formality": lambda t: 1.0 - min(sw._per100(len(sw._CONTRACTION.findall(t)), t), 5.0) / 5.0,
    "warmth": lambda t: min(sw._per100(len(sw._FRIENDLY.findall(t)), t), 5.0) / 5.0,
    "readability": lambda t: 1.0 - min(max(sw._sentence_length(t) - 8.0, 0.0), 24.0) / 24.0,
}
"""Dimension -> the measured property of a reply in [0, 1] toward the dimension's "+" pole."""


def user_score(text: str, weights: Mapping[str, float]) -> float:
    """The user's score of ``text``: ``sum |w| * (p if w > 0 else 1 - p) / sum |w|``."""
    total = sum(abs(w) for w in weights.values())
    if total == 0:
        raise ValueError("a simulated user needs at least one non-zero weight")
    s = 0.0
    for dim, w in weights.items():
        p = SCALES[dim](text)
        s += abs(w) * (p if w > 0 else 1.0 - p)
    return s / total


def make_users(n: int, dims: Sequence[str], seed: int) -> list[dict[str, float]]:
    """``n`` users, each leaning on 2 or 3 of ``dims`` (random poles, weights in [0.4, 1])."""
    rng = random.Random(seed)
    users = []
    for _ in range(n):
        k = rng.choice([2, 3]) if len(dims) >= 3 else len(dims)
        picked = rng.sample(list(dims), k)
        users.append({d: rng.choice([-1, 1]) * round(rng.uniform(0.4, 1.0), 2) for d in picked})
    return users


def poles(weights: Mapping[str, float]) -> dict[str, float]:
    """Signed dimension weights -> pole name ("conciseness+") -> |weight|."""
    return {f"{d}{'+' if w > 0 else '-'}": abs(w) for d, w in weights.items() if w != 0}


def load_prompts(path: Path, n: int) -> list[str]:
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing")
    items = json.loads(path.read_text())["prompts"]
    if not items:
        raise SystemExit(f"error: {path} holds no prompt")
    if n > len(items):
        raise SystemExit(f"error: --prompts {n} but {path} holds {len(items)}")
    return list(items[:n])


@dataclass
class Case:
    user: int
    prompt: str


@dataclass
class Out:
    text: str
    tokens: int
    seconds: float


class Dirs:
    """An AdapterSource over named PEFT folders (the simulated users' adapters)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dirs: dict[str, Path] = {}

    def adapter_path(self, name: str) -> Path:
        if name in self.dirs:
            return self.dirs[name]
        return Path(self.inner.adapter_path(name))


class Runner:
    """Every method's reply for a user and a batch of prompts."""

    def __init__(self, lm: Any, experts: Any, steer_scale: float, max_new: int) -> None:
        from personalign.generation.prompt import SYSTEM_PROMPT
        from personalign.pipeline_parts import _DIMENSION_PROMPTS

        self.lm, self.experts, self.steer_scale = lm, experts, steer_scale
        self.max_new = max_new
        self.system, self.lines = SYSTEM_PROMPT, _DIMENSION_PROMPTS

    def messages(self, prompt: str, weights: Mapping[str, float] | None = None) -> list[Any]:
        from personalign.types import Message

        system = self.system
        if weights:
            lines = [self.lines[d][0 if w > 0 else 1] for d, w in weights.items() if w != 0]
            system = " ".join([system, *lines])
        return [Message(role="system", content=system), Message(role="user", content=prompt)]

    def options(self, **kw: Any) -> Any:
        from personalign.backends.models.base import GenerationOptions

        return GenerationOptions(max_new_tokens=self.max_new, temperature=0.0, **kw)

    def batch(
        self, method: str, weights: Mapping[str, float], prompts: Sequence[str], user_adapter: str
    ) -> list[Out]:
        """Replies of ``method`` to ``prompts`` for a user with ``weights`` (batched where the
        method allows: one options object for the batch)."""
        if method == "mod":
            return [self.one("mod", weights, p, user_adapter) for p in prompts]
        if method == "prompt":
            convs = [self.messages(p, weights) for p in prompts]
        else:
            convs = [self.messages(p) for p in prompts]
        opts = self.method_options(method, weights, user_adapter)
        t0 = time.perf_counter()
        gens = self.lm.generate_batch(convs, options=opts)
        dt = time.perf_counter() - t0
        total = max(sum(g.completion_tokens for g in gens), 1)
        return [Out(g.text, g.completion_tokens, dt * g.completion_tokens / total) for g in gens]

    def method_options(self, method: str, weights: Mapping[str, float], user_adapter: str) -> Any:
        if method == "soup":
            from personalign.generation.soups import soup_name

            return self.options(adapter=soup_name(weights))
        if method == "steering":
            steer = tuple(sorted((p, s * self.steer_scale) for p, s in poles(weights).items()))
            return self.options(steering=steer)
        if method == "adapter":
            return self.options(adapter=user_adapter)
        return self.options()

    def one(self, method: str, weights: Mapping[str, float], prompt: str, user_adapter: str) -> Out:
        """One reply at batch 1 (the cost measurement; MOD always)."""
        from personalign.generation.decoding import DecodingConfig, personalized_generate

        t0 = time.perf_counter()
        if method == "mod":
            msgs = self.messages(prompt)
            pw = poles(weights)
            out = personalized_generate(
                self.lm,
                msgs,
                msgs,
                config=DecodingConfig(method="mod", strength=0.0),
                options=self.options(),
                objectives=dict.fromkeys(pw, msgs),
                objective_adapters={p: f"expert:{p}" for p in pw},
                weights=pw,
            )
            gen = out.generation
        else:
            msgs = self.messages(prompt, weights if method == "prompt" else None)
            gen = self.lm.generate(msgs, options=self.method_options(method, weights, user_adapter))
        return Out(gen.text, gen.completion_tokens, time.perf_counter() - t0)


def train_user_adapter(
    weights: Mapping[str, float],
    samples: Mapping[str, Sequence[str]],
    *,
    n_pairs: int,
    base_dir: Path,
    out_dir: Path,
    seed: int,
) -> Path:
    """DPO on ``n_pairs`` best-vs-worst pairs of the base model's samples, ranked by the
    user's weighted dimension reward (rewards.dimensions: the training-side scorer)."""
    from personalign.feedback.pairs import PreferencePair
    from personalign.feedback.train import TrainConfig, train_pairs
    from personalign.rewards.dimensions import DIMENSIONS as SCORERS

    def reward(text: str) -> float:
        tot = sum(abs(w) for w in weights.values())
        return (
            sum(
                abs(w) * (SCORERS[d](text) if w > 0 else 1 - SCORERS[d](text))  # type: ignore[index]
                for d, w in weights.items()
            )
            / tot
        )

    pairs = []
    for prompt, cands in samples.items():
        uniq = list(dict.fromkeys(c for c in cands if c.strip()))
        if len(uniq) < 2:
            continue
        scored = sorted(uniq, key=reward)
        margin = reward(scored[-1]) - reward(scored[0])
        if margin >= 0.03:
            pairs.append(PreferencePair(prompt, scored[-1], scored[0], "ranked", margin))
    pairs.sort(key=lambda p: -(p.margin or 0))
    pairs = pairs[:n_pairs]
    if len(pairs) < n_pairs // 2:
        raise SystemExit(f"error: only {len(pairs)} ranked pairs for a user, need {n_pairs // 2}")
    # the experts' recipe (two epochs at 5e-4, 192 tokens; see ExpertsConfig) on the user's pairs
    cfg = TrainConfig(
        epochs=2, learning_rate=5e-4, max_length=192, threads=2, seed=seed, min_pairs=1
    )
    train_pairs(pairs, base_dir=base_dir, out_dir=out_dir, config=cfg, resume=False)
    return out_dir / "final"


def load_samples(experts_dir: Path) -> dict[str, list[str]]:
    """The base model's samples of the experts' training prompts (``samples.jsonl``: a head
    line, then ``{"prompt", "candidates"}`` rows), prompt -> candidates."""
    path = experts_dir / "samples.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing (train the experts first)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][1:]
    if not rows:
        raise SystemExit(f"error: {path} holds no sample")
    return {r["prompt"]: list(r["candidates"]) for r in rows}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (higher is better)."""
    keep = []
    for i, (x, y) in enumerate(points):
        if not any(
            (x2 >= x and y2 >= y) and (x2 > x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        ):
            keep.append(i)
    return keep


def pareto_sweep(
    runner: Runner, dims: tuple[str, str], prompts: Sequence[str], steps: int
) -> dict[str, list[tuple[float, float, float]]]:
    """Per method, (t, mean property of dims[0], of dims[1]) for weights (t, 1 - t), "+" poles."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for t in np.linspace(0.0, 1.0, steps):
        weights = {dims[0]: float(round(t, 3)), dims[1]: float(round(1 - t, 3))}
        weights = {d: w for d, w in weights.items() if w > 0}
        for method in ("plain", "prompt", "mod", "soup", "steering"):
            replies = runner.batch(method, weights, prompts, "")
            xs = [SCALES[dims[0]](r.text) for r in replies]
            ys = [SCALES[dims[1]](r.text) for r in replies]
            out.setdefault(method, []).append((float(t), float(np.mean(xs)), float(np.mean(ys))))
            print(f"[pareto t={t:.2f} {method}]", file=sys.stderr)
    return out


def write_report(
    out: Path,
    figs: Mapping[str, Any],
    sweep: Mapping[str, list[tuple[float, float, float]]],
    dims: tuple[str, str],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    every: list[tuple[float, float]] = []
    for method, pts in sweep.items():
        xs, ys = [p[1] for p in pts], [p[2] for p in pts]
        every += list(zip(xs, ys, strict=True))
        ax.plot(xs, ys, marker="o", label=method)
    front = sorted(every[i] for i in pareto_front(every))
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel(f"{dims[0]} (measured, toward +)")
    ax.set_ylabel(f"{dims[1]} (measured, toward +)")
    ax.set_title("Weights (t, 1-t) over two dimensions, per method")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "depths_pareto.png", dpi=110)
    plt.close(fig)
    lines = ["# Personalization at every depth (benchmarks/depths.py)", "", "| key | value |"]
    lines += ["|---|---|"] + [f"| {k} | {v} |" for k, v in figs.items()]
    lines += ["", "## Pareto sweep", "", "| method | t | " + " | ".join(dims) + " |"]
    lines += ["|---|---|---|---|"]
    for method, pts in sweep.items():
        lines += [f"| {method} | {t:.2f} | {x:.3f} | {y:.3f} |" for t, x, y in pts]
    lines += ["", "![Pareto front](depths_pareto.png)", ""]
    (out / "depths.md").write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__ or "")
    p.add_argument("--experts", type=Path, help="trained experts folder (default: the cache's)")
    p.add_argument("--train", action="store_true", help="train the experts first if missing")
    p.add_argument("--dimensions", default="conciseness,structure,formality")
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--steer-scale", type=float, default=1.0)
    p.add_argument("--adapter-users", type=int, default=4)
    p.add_argument("--adapter-pairs", type=int, default=32)
    p.add_argument("--cost-cases", type=int, default=6)
    p.add_argument("--pareto-prompts", type=int, default=10)
    p.add_argument("--pareto-steps", type=int, default=5)
    p.add_argument("--report", type=Path, help="write depths.md and depths_pareto.png here")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    dims = [d.strip() for d in args.dimensions.split(",") if d.strip()]
    if len(dims) < 2 or set(dims) - set(DIMENSIONS):
        raise SystemExit(f"error: --dimensions needs two or more of {', '.join(DIMENSIONS)}")
    if args.users < 1 or args.prompts < args.users:
        raise SystemExit("error: --prompts must be >= --users >= 1")

    import torch

    from personalign.backends.models.embedded import EMBEDDED_NAME
    from personalign.backends.models.local import TransformersLM, ensure_embedded_model
    from personalign.config import load_settings
    from personalign.generation.soups import STEERING_FILE, ExpertSet, SoupAdapters
    from personalign.generation.steering import SteeringVectors, compute_steering
    from personalign.training.experts import ExpertsConfig, load_pairs, train_experts

    torch.manual_seed(args.seed)
    settings = load_settings()
    experts_dir = args.experts or (settings.home / "experts")
    need = {f"{d}{s}" for d in dims for s in "+-"}
    experts = ExpertSet(experts_dir) if experts_dir.is_dir() else None
    if experts is None or need - set(experts.poles):
        if not args.train:
            have = sorted(experts.poles) if experts is not None else []
            raise SystemExit(
                f"error: experts {sorted(need)} are not all trained under {experts_dir} "
                f"(found {have}); run `personalign train experts` or pass --train"
            )
        train_experts(ExpertsConfig(), experts_dir)
        experts = ExpertSet(experts_dir)
    base_dir = ensure_embedded_model(settings.cache_dir, quiet=True)
    source = Dirs(SoupAdapters(experts))
    lm = TransformersLM(base_dir, name=EMBEDDED_NAME, adapters=source, max_adapters=16)
    steering_path = experts_dir / STEERING_FILE
    if steering_path.is_dir():
        vectors = SteeringVectors.load(steering_path)
    else:
        vectors = compute_steering(lm, load_pairs(experts_dir))
        vectors.save(steering_path)
    lm.steering = vectors
    runner = Runner(lm, experts, args.steer_scale, args.max_new_tokens)

    prompts = load_prompts(PROMPTS, args.prompts)
    users = make_users(args.users, dims, args.seed)
    cases = [Case(i % args.users, q) for i, q in enumerate(prompts)]
    t_start = time.perf_counter()

    # per-user adapters for the first --adapter-users users (trained on the training prompts)
    n_adapt = min(args.adapter_users, args.users)
    work = Path(tempfile.mkdtemp(prefix="depths-"))
    samples = load_samples(experts_dir)
    for u in range(n_adapt):
        t0 = time.perf_counter()
        path = train_user_adapter(
            users[u],
            samples,
            n_pairs=args.adapter_pairs,
            base_dir=base_dir,
            out_dir=work / f"user{u}",
            seed=args.seed + u,
        )
        source.dirs[f"user{u}"] = path
        print(f"[adapter user{u}] {time.perf_counter() - t0:.0f}s", file=sys.stderr)

    # every method's replies, batched per user
    replies: dict[str, dict[int, Out]] = {m: {} for m in ("plain", *METHODS)}
    for u, weights in enumerate(users):
        idx = [i for i, c in enumerate(cases) if c.user == u]
        qs = [cases[i].prompt for i in idx]
        for method in ("plain", *METHODS):
            if method == "adapter" and u >= n_adapt:
                continue
            for i, o in zip(idx, runner.batch(method, weights, qs, f"user{u}"), strict=True):
                replies[method][i] = o
            print(f"[user {u + 1}/{len(users)} {method}]", file=sys.stderr)

    figs: dict[str, Any] = {
        "prompts": len(cases),
        "users": len(users),
        "adapter_users": n_adapt,
        "dimensions": ",".join(dims),
        "max_new_tokens": args.max_new_tokens,
    }
    from personalign.rewards.quality import degenerate

    for method, got in replies.items():  # a gain made of non-answers is no gain: say how many
        if got:
            bad = [degenerate(o.text) is not None for o in got.values()]
            figs[f"degenerate_rate_{method}"] = round(float(np.mean(bad)), 4)
    plain_scores = {
        i: user_score(o.text, users[cases[i].user]) for i, o in replies["plain"].items()
    }
    figs["score_plain"] = round(float(np.mean(list(plain_scores.values()))), 4)
    for method in METHODS:
        got = replies[method]
        scores = {i: user_score(o.text, users[cases[i].user]) for i, o in got.items()}
        figs[f"score_{method}"] = round(float(np.mean(list(scores.values()))), 4)
        gains = [scores[i] - plain_scores[i] for i in scores]
        figs[f"weighted_gain_{method}"] = round(float(np.mean(gains)), 4)
    for method in METHODS[1:]:
        figs[f"beats_prompt_{method}"] = int(
            figs[f"weighted_gain_{method}"] > figs["weighted_gain_prompt"]
        )
    moved = []
    for i, o in replies["adapter"].items():
        w = users[cases[i].user]
        dim = max(w, key=lambda d: abs(w[d]))
        delta = SCALES[dim](o.text) - SCALES[dim](replies["plain"][i].text)
        moved.append(delta * np.sign(w[dim]) > 0)
    figs["adapter_direction_rate"] = round(float(np.mean(moved)), 4) if moved else float("nan")

    # cost: batch 1, methods interleaved per case, seconds per generated token over plain's
    per_tok: dict[str, list[float]] = {m: [] for m in ("plain", *METHODS)}
    cost_cases = [c for c in cases if c.user < n_adapt][: args.cost_cases]
    for c in cost_cases:
        for method in ("plain", *METHODS):
            o = runner.one(method, users[c.user], c.prompt, f"user{c.user}")
            if o.tokens:
                per_tok[method].append(o.seconds / o.tokens)
    base = float(np.median(per_tok["plain"]))
    for method in METHODS:
        figs[f"cost_ratio_{method}"] = round(float(np.median(per_tok[method])) / base, 3)
    figs["plain_ms_per_token"] = round(base * 1000, 2)
    figs["seconds"] = round(time.perf_counter() - t_start, 1)
    if args.report is not None:
        two = (dims[0], dims[1])
        sweep = pareto_sweep(runner, two, prompts[: args.pareto_prompts], args.pareto_steps)
        write_report(args.report, figs, sweep, two)
    lm.close()
    emit(figs, title="Personalization at every depth", as_json=args.json)


if __name__ == "__main__":
    main()
