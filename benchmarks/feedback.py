"""Feedback-based alignment: weight estimation with active queries, per-user DPO, adapters, Ray.

1. Weights (fast). Simulated users with hidden weights ``w ~ Dirichlet(1)`` over K = 4
   dimensions (conciseness, readability, warmth, structure) answer pairwise queries over a
   pool of 60 real assistant replies (MT-Bench-101, under ``--data``) by their weighted
   reward with Bradley-Terry noise: ``P(a > b) = sigmoid(beta * w . (s(a) - s(b)))``. The
   estimator (Bayesian Bradley-Terry, Laplace posterior) is scored by cosine(estimated
   profile weights, w) after q queries chosen actively (BALD) or at random, over ``--users``
   users; the curve is plotted to ``--out``. Target: >= 0.95 after 10 active queries.
2. Per-user DPO (slow; ``--dpo-users 0`` skips it). Candidates for each training prompt
   (MT-Bench-101 first turns), shared by all users: with ``--candidates variants`` (default,
   no generation cost) the dataset's reference reply and three rule-based style variants of
   it (its first sentence; its sentences as a bulleted list; with a warm opening and
   closing); with ``--candidates model`` four samples of the embedded SmolLM2-135M under
   style hints (the library's ``ranked_pairs`` path; slow on a loaded CPU). Each simulated
   user ranks them by their own weighted reward and keeps the best-vs-worst pair of each
   prompt, up to ``--pairs``; a LoRA adapter is trained with TRL's DPOTrainer. Figures: the
   user's weighted reward of greedy replies to held-out prompts after minus before (target:
   a gain for at least 80% of users), DPO minutes per user on this machine (target <= 3),
   adapter size, adapter swap time in the local backend (target <= 50 ms).
3. Ray (``--ray-users 0`` skips it): the same training jobs for N users, sequentially in this
   process (all cores) and as Ray tasks on a local cluster (one core each), same run.

    python benchmarks/feedback.py [--json] [--users 200] [--dpo-users 20] [--ray-users 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from personalign.eval.bench import emit, parser, percentile
from personalign.feedback.active import candidate_pairs, choose_pair
from personalign.feedback.pairs import PreferencePair, best_vs_worst, sample_candidates
from personalign.feedback.weights import WeightPrior, cosine, posterior
from personalign.rewards.dimensions import DIMENSIONS, weighted_reward

DIMS = ("conciseness", "readability", "warmth", "structure")
CHECKPOINTS = (1, 3, 5, 10, 15, 20)


def mtbench(data: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(every assistant reply, (first user turn, its reply) pairs) of MT-Bench-101."""
    replies, turns = [], []
    with (data / "mt-bench-101" / "mtbench101.jsonl").open() as fh:
        for line in fh:
            hist = json.loads(line)["history"]
            replies += [t["bot"] for t in hist]
            if 20 <= len(hist[0]["user"]) <= 300 and 20 <= len(hist[0]["bot"]) <= 600:
                turns.append((hist[0]["user"], hist[0]["bot"]))
    return replies, turns


def style_variants(reply: str) -> list[str]:
    """The reply and three rule-based style variants of it (see the module doc)."""
    import re

    sents = [x for x in re.split(r"(?<=[.!?])\s+", reply.strip()) if x]
    bullets = "Key points:\n" + "\n".join(f"- {x}" for x in sents[:6])
    warm = f"Great question, happy to help! {reply} I hope this helps, good luck!"
    return list(dict.fromkeys([reply, sents[0] if sents else reply, bullets, warm]))


def scores(texts: list[str]) -> np.ndarray:
    """(N, K) dimension scores over :data:`DIMS`."""
    return np.array([[DIMENSIONS[d](t) for d in DIMS] for t in texts])  # type: ignore[index]


def simulate(
    pool_scores: np.ndarray, *, users: int, beta: float, queries: int, seed: int
) -> dict[str, np.ndarray]:
    """Cosine curves (users, queries + 1) for active and random query selection."""
    rng = np.random.default_rng(seed)
    prior = WeightPrior()
    out = {m: np.zeros((users, queries + 1)) for m in ("active", "random")}
    k = len(DIMS)
    for u in range(users):
        w = rng.dirichlet(np.ones(k))  # (K,) hidden weights
        pool = pool_scores[rng.choice(len(pool_scores), 60, replace=False)]  # (60, K)
        pairs = candidate_pairs(len(pool))
        for mode in out:
            urng = np.random.default_rng(seed * 100_000 + u)  # same noise stream per mode
            diffs: list[np.ndarray] = []
            labels: list[float] = []
            asked: list[tuple[int, int]] = []
            post = posterior(np.zeros((0, k)), np.zeros(0), dims=DIMS, prior=prior)
            out[mode][u, 0] = cosine(np.array(list(post.weights().values())), w)
            for q in range(queries):
                if mode == "active":
                    i, j = choose_pair(post, pool, pairs=pairs, exclude=asked)
                else:
                    i, j = (int(x) for x in pairs[urng.integers(len(pairs))])
                asked.append((i, j))
                d = pool[i] - pool[j]  # (K,)
                p = 1.0 / (1.0 + np.exp(-beta * float(w @ d)))
                labels.append(float(urng.random() < p))
                diffs.append(d)
                post = posterior(np.array(diffs), np.array(labels), dims=DIMS, prior=prior)
                out[mode][u, q + 1] = cosine(np.array(list(post.weights().values())), w)
    return out


def agreement(pool_scores: np.ndarray, beta: float, n: int = 20000, seed: int = 0) -> float:
    """How often a simulated user picks the answer with the higher reward (random pairs)."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(len(DIMS)), size=n)  # (n, K)
    a, b = rng.integers(len(pool_scores), size=(2, n))
    r = np.einsum("nk,nk->n", w, pool_scores[a] - pool_scores[b])  # (n,)
    p = 1.0 / (1.0 + np.exp(-beta * np.abs(r)))
    return float(p[r != 0].mean())


def plot(curves: dict[str, np.ndarray], path: Path, *, beta: float, users: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, c in curves.items():
        q = np.arange(c.shape[1])
        m = c.mean(0)
        se = c.std(0) / np.sqrt(len(c))
        ax.plot(q, m, marker="o", ms=3, label=f"{mode} queries")
        ax.fill_between(q, m - 2 * se, m + 2 * se, alpha=0.2)  # +-2 standard errors
    ax.axhline(0.95, color="grey", ls="--", lw=1, label="target 0.95")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("pairwise queries answered")
    ax.set_ylabel("cosine(estimated, true weights)")
    ax.set_title(f"Bayesian Bradley-Terry, K={len(DIMS)}, beta={beta:g}, {users} users")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def user_pairs(
    prompts: list[str], cands: list[list[str]], weights: dict[str, float], n: int
) -> list[PreferencePair]:
    """The user's best-vs-worst pair of each prompt by their weighted reward, up to ``n``."""
    out = []
    for p, cs in zip(prompts, cands, strict=True):
        cs = [c for c in cs if c]
        if len(cs) >= 2:
            r = np.array([weighted_reward(c, weights) for c in cs])
            pair = best_vs_worst(p, cs, r, min_margin=0.02)
            if pair is not None:
                out.append(pair)
    return out[:n]


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--out", type=Path, default=Path("results/feedback"))
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--beta", type=float, default=20.0, help="simulated users' consistency")
    p.add_argument("--dpo-users", type=int, default=20)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--train-prompts", type=int, default=40)
    p.add_argument("--eval-prompts", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--ray-users", type=int, default=8)
    p.add_argument("--ray-steps", type=int, default=4)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (DPO part)"
    )
    p.add_argument("--candidates", choices=("variants", "model"), default="variants")
    args = p.parse_args()
    figures: dict[str, float | int | str] = {"load_avg_1min_start": round(os.getloadavg()[0], 2)}

    # -- 1. weights ------------------------------------------------------------------------
    replies, turns = mtbench(args.data)
    rng = random.Random(0)
    rng.shuffle(replies)
    pool = scores(replies[:2000])
    t0 = time.perf_counter()
    curves = simulate(pool, users=args.users, beta=args.beta, queries=args.queries, seed=1)
    noisy = simulate(pool, users=args.users, beta=args.beta / 2, queries=10, seed=2)
    figures["weights_users"] = args.users
    figures["weights_beta"] = args.beta
    figures["weights_user_agreement"] = round(agreement(pool, args.beta), 3)
    for q in CHECKPOINTS:
        if q <= args.queries:
            for mode in ("active", "random"):
                figures[f"weight_cosine_{mode}_q{q}"] = round(float(curves[mode][:, q].mean()), 4)
    figures["weight_cosine_prior_q0"] = round(float(curves["active"][:, 0].mean()), 4)
    figures["weight_cosine_active_q10_p10"] = round(
        percentile(list(curves["active"][:, 10]), 10), 4
    )
    figures[f"weight_cosine_active_q10_beta{args.beta / 2:g}"] = round(
        float(noisy["active"][:, 10].mean()), 4
    )
    figures[f"weight_cosine_random_q10_beta{args.beta / 2:g}"] = round(
        float(noisy["random"][:, 10].mean()), 4
    )
    figures["weights_seconds"] = round(time.perf_counter() - t0, 1)
    plot(curves, args.out / "weight_cosine.png", beta=args.beta, users=args.users)
    figures["plot"] = str(args.out / "weight_cosine.png")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2))
    if args.dpo_users > 0 or args.ray_users > 0:
        figures.update(dpo_and_ray(args, turns, figures))
    figures["candidates"] = args.candidates
    figures["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2))
    emit(figures, title="feedback-based alignment", as_json=args.json)


def dpo_and_ray(
    a: argparse.Namespace, all_turns: list[tuple[str, str]], done: dict[str, float | int | str]
) -> dict[str, float | int | str]:
    """Parts 2 and 3 of the module doc (figures so far are saved after each step)."""
    import torch

    from personalign.backends.models.base import GenerationOptions
    from personalign.backends.models.local import TransformersLM, ensure_embedded_model
    from personalign.config import load_settings
    from personalign.feedback.adapters import ADAPTER_FILES, AdapterStore
    from personalign.feedback.train import TrainConfig, UserJob, run_local, run_ray, train_pairs
    from personalign.types import Message

    figs: dict[str, float | int | str] = {}
    cache = a.cache_dir or load_settings().cache_dir
    base_dir = ensure_embedded_model(cache, quiet=True)
    rng = random.Random(1)
    turns = rng.sample(all_turns, a.train_prompts + a.eval_prompts)
    prompts = [t[0] for t in turns]
    train_prompts, eval_prompts = prompts[: a.train_prompts], prompts[a.train_prompts :]
    work = Path(tempfile.mkdtemp(prefix="pal-fb-"))
    torch.set_num_threads(a.threads)

    # shared candidate pool and the base model's held-out replies
    lm = TransformersLM(base_dir, dtype="float32")
    t0 = time.perf_counter()
    sample = GenerationOptions(max_new_tokens=a.gen_tokens, temperature=0.8, top_p=0.95, seed=0)
    greedy = GenerationOptions(max_new_tokens=a.gen_tokens)
    evals = [[Message(role="user", content=q)] for q in eval_prompts]
    saved = a.out / "candidates.json"  # the shared pool, reused by later runs
    key = {"prompts": prompts, "tokens": a.gen_tokens, "candidates": a.candidates}
    if saved.is_file() and json.loads(saved.read_text())["key"] == key:
        cands, before = (json.loads(saved.read_text())[k] for k in ("cands", "before"))
    else:
        if a.candidates == "model":
            cands = sample_candidates(lm, train_prompts, n=4, options=sample)
        else:
            cands = [style_variants(reply) for _, reply in turns[: a.train_prompts]]
        figs["candidate_generation_minutes"] = round((time.perf_counter() - t0) / 60, 2)
        before = [g.text for g in lm.generate_batch(evals, options=greedy)]
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"key": key, "cands": cands, "before": before}))
    lm.close()

    cfg = TrainConfig(
        base_model=str(base_dir),
        min_pairs=4,
        max_pairs=max(a.pairs, 4),
        epochs=a.epochs,
        max_steps=a.max_steps,
        threads=a.threads,
    )
    np_rng = np.random.default_rng(7)
    adapters = AdapterStore(work / "adapters")
    gains, minutes, steps_per_s, n_pairs = [], [], [], []
    for u in range(a.dpo_users):
        w = dict(zip(DIMS, np_rng.dirichlet(np.ones(len(DIMS))).tolist(), strict=True))
        pairs = user_pairs(train_prompts, cands, w, a.pairs)
        n_pairs.append(len(pairs))
        t1 = time.perf_counter()
        metrics = train_pairs(pairs, base_dir=base_dir, out_dir=work / f"u{u}", config=cfg)
        secs = time.perf_counter() - t1
        minutes.append(secs / 60)
        steps_per_s.append(metrics["steps"] / secs)
        info = adapters.save_dir(f"user{u}", work / f"u{u}" / "final", {"weights": w})
        tuned = TransformersLM(base_dir, dtype="float32", adapters=adapters)
        after = [
            g.text
            for g in tuned.generate_batch(
                evals, options=GenerationOptions(max_new_tokens=a.gen_tokens, adapter=info.name)
            )
        ]
        tuned.close()
        r0 = np.mean([weighted_reward(t, w) for t in before])
        r1 = np.mean([weighted_reward(t, w) for t in after])
        gains.append(float(r1 - r0))
        shutil.rmtree(work / f"u{u}", ignore_errors=True)
        print(
            f"user {u}: {len(pairs)} pairs, {secs:.0f} s, reward {r0:.3f} -> {r1:.3f}", flush=True
        )
    if gains:
        figs.update(
            {
                "dpo_users": len(gains),
                "dpo_pairs_per_user": round(float(np.mean(n_pairs)), 1),
                "dpo_steps_per_user": int(metrics["steps"]),
                "dpo_reward_gain": round(float(np.mean(gains)), 4),
                "dpo_reward_gain_median": round(percentile(gains, 50), 4),
                "dpo_users_with_gain_fraction": round(float(np.mean(np.array(gains) > 0)), 3),
                "dpo_minutes_per_user": round(float(np.mean(minutes)), 2),
                "dpo_seconds_per_step": round(float(1 / np.mean(steps_per_s)), 2),
            }
        )
    # adapter size and swap time
    if not adapters.users():
        w = dict.fromkeys(DIMS, 0.25)
        pairs = user_pairs(train_prompts, cands, w, 4)
        quick = TrainConfig(base_model=str(base_dir), min_pairs=1, max_steps=1, threads=cfg.threads)
        train_pairs(pairs, base_dir=base_dir, out_dir=work / "tmp", config=quick)
        adapters.save_dir("user0", work / "tmp" / "final", {})
    names = adapters.users()
    first = adapters.latest(names[0])
    assert first is not None
    figs["adapter_mb"] = round((first.path / "adapter_model.safetensors").stat().st_size / 1e6, 2)
    for extra in range(max(0, 3 - len(names))):  # at least 3 adapters to swap between
        files = {f: (first.path / f).read_bytes() for f in ADAPTER_FILES}
        adapters.save(f"copy{extra}", files, {})
    names = adapters.users()[:8]
    lm = TransformersLM(base_dir, dtype="bfloat16", adapters=adapters, max_adapters=len(names))
    cold = [lm.activate_adapter(n) for n in names]  # load from disk
    warm = [lm.activate_adapter(n) for _ in range(5) for n in names]  # switch among loaded
    lm.max_adapters = 2
    evict = [lm.activate_adapter(n) for _ in range(2) for n in names]  # LRU of 2: reload
    lm.close()
    figs["adapter_swap_ms"] = round(percentile(warm, 50), 3)
    figs["adapter_swap_p95_ms"] = round(percentile(warm, 95), 3)
    figs["adapter_load_ms"] = round(percentile(cold[1:] or cold, 50), 1)
    figs["adapter_swap_evicting_ms"] = round(percentile(evict, 50), 1)
    (a.out / "figures.json").write_text(json.dumps({**done, **figs}, indent=2))

    # -- 3. Ray vs sequential ------------------------------------------------------------------
    if a.ray_users > 0:
        jobs = []
        for u in range(a.ray_users):
            w = dict(zip(DIMS, np_rng.dirichlet(np.ones(len(DIMS))).tolist(), strict=True))
            pairs = tuple(user_pairs(train_prompts, cands, w, 4 * a.ray_steps))
            jobs.append((u, w, pairs))

        def make(threads: int, tag: str) -> list[UserJob]:
            c = TrainConfig(
                base_model=str(base_dir),
                min_pairs=4,
                max_steps=a.ray_steps,
                threads=threads,
                save_steps=1000,
            )
            return [
                UserJob(f"r{u}", pairs, (), w, (), c, str(cache), str(work / tag))
                for u, w, pairs in jobs
            ]

        cores = os.cpu_count() or 1
        t1 = time.perf_counter()
        seq = list(run_local(make(cores, "seq"), 1, None))
        seq_s = time.perf_counter() - t1
        t1 = time.perf_counter()
        par = list(run_ray(make(1, "ray"), cores, None))
        ray_s = time.perf_counter() - t1
        ok = all(r.status == "trained" for r in seq + par)
        figs.update(
            {
                "ray_users": a.ray_users,
                "ray_steps_per_user": a.ray_steps,
                "sequential_seconds": round(seq_s, 1),
                "ray_seconds": round(ray_s, 1),
                f"ray_speedup_{a.ray_users}_users": round(seq_s / ray_s, 3),
                "ray_all_trained": int(ok),
            }
        )
    shutil.rmtree(work, ignore_errors=True)
    return figs


if __name__ == "__main__":
    main()
