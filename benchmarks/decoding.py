"""Decoding-time personalization on the embedded model: MCQ, compliance, simulated users, cost.

One run, four parts (subsets by default on a small CPU; the sizes are flags):

1. ``mcq_e2e_<method>``: PrefEval MCQ end to end: the preference is stored among 100 unrelated
   MT-Bench-101 turns, retrieved for the question (memory), then each method picks one of the
   4 shuffled options: ``plain``/``prompt``/``contrastive``/``mod`` by their sequence score
   under the method's rule (mean over the option's tokens), ``best_of_n`` by the reward
   model, ``reward_guided`` by mean log-probability + ``--reward-weight`` x reward.
2. ``compliance_<method>``: PrefEval generation: the plain answer and each method's answer to
   the question after the memory step, judged compliant when the reward model scores it
   >= 0.5. The judge for a topic is trained on the other topics under ``--data`` only (4 folds
   by topic). Only methods that do not select or steer by a reward model are judged here
   (plain, prompt, contrastive, MOD): best-of-N would be judged by the very model that
   picked its reply, so its compliance is measured by ``benchmarks/verifiable_preferences.py``
   with independent rule-based verifiers instead.
   ``--reward`` picks the kind (default the shipped one: the cross-encoder + feature-model
   ensemble; ``--probe`` adds the opt-in LM probe over this model's hidden states); the
   retrieved preferences (not the raw turns) are what the methods' reward models condition
   on, as in the pipeline.
   10 sampled pairs (plain vs prompt) are printed.
3. ``user_reward_<method>``: simulated users (PersonalLLM protocol): random Dirichlet weights
   over the style dimensions, prompts from MT-Bench-101 first turns and PrefEval questions;
   the user-weighted dimension reward of each method's answer. ``prompt`` puts the user's
   style instructions in the system prompt; ``mod`` mixes one context per dimension by the
   user's weights. (Best-of-N reranked by the same weighted reward would be judged by its own
   selector, so it is not reported; ``tests/test_constraints.py`` and
   ``benchmarks/verifiable_preferences.py`` measure how weights move replies.)
4. ``cost_ratio_<method>``: seconds per generated token relative to plain decoding
   (``lm.generate`` on the same personal prompt), measured interleaved in this run.

    OMP_NUM_THREADS=1 python benchmarks/decoding.py [--data DIR] [--json] [--mcq-per-topic N]
        [--gen-per-topic N] [--users N] [--cost-prompts N] [--max-new-tokens N]

On a shared CPU set ``OMP_NUM_THREADS=1``: with 2 threads on busy cores, torch's batched
steps (2+ rows) ran 10x slower than single-row steps (thread oversubscription), which
falsifies every cost ratio.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from personalign.backends.embedders import load_embedder
from personalign.backends.models.base import GenerationOptions, LanguageModel
from personalign.backends.models.local import TransformersLM
from personalign.config import load_settings
from personalign.eval.bench import emit, parser
from personalign.eval.prefeval_tasks import (
    Contexts,
    McqItem,
    MemoryHarness,
    fold_reward_models,
    load_mcq,
    mtbench_first_turns,
    option_logprobs,
    render_block,
    topics,
)
from personalign.generation.decoding import (
    DecodingConfig,
    DecodingMethod,
    best_of_n,
    decode,
    make_rule,
    personalized_generate,
    reward_guided,
)
from personalign.generation.prompt import build_messages
from personalign.pipeline import PersonalizeOptions
from personalign.rewards.dimensions import DIMENSION_NAMES, weighted_reward
from personalign.rewards.preference_rm import PreferenceRewardModel
from personalign.rewards.weights import normalize_weights
from personalign.types import Message

SEED = 7
DEFAULT_METHOD = PersonalizeOptions().method
"""The pipeline's default method: its compliance is ``compliance_personalized``."""
STYLE_INSTRUCTIONS = {
    "conciseness": "Keep the answer short.",
    "readability": "Use simple words and short sentences.",
    "warmth": "Be warm, friendly and encouraging.",
    "structure": "Organize the answer as a bulleted list under a heading.",
    "formality": "Use a formal, professional tone.",
}


_T0 = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr (the figures go to stdout)."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def memory_contexts(ctx: Contexts, question: str, k: int = 3) -> dict[str, list[Message]]:
    """MOD objectives: one personal context per retrieved memory (top ``k``)."""
    history = [Message(role="user", content=question)]
    return {
        f"memory{i}": build_messages(history, render_block([t]))
        for i, t in enumerate(ctx.retrieved[:k])
    } or {"personal": ctx.personal}


# -- 1. MCQ end to end ---------------------------------------------------------------------------


def mcq_e2e(
    lm: LanguageModel,
    items: Sequence[McqItem],
    memory: MemoryHarness,
    rms: Mapping[str, PreferenceRewardModel],
    *,
    strength: float,
    reward_weight: float,
) -> dict[str, float]:
    hits: dict[str, list[bool]] = {}
    for it in items:
        ctx = memory.contexts(it.key, it.preference, it.question)
        plain = option_logprobs(lm, ctx.plain, it.options)  # (4, 2): sum, tokens
        personal = option_logprobs(lm, ctx.personal, it.options)
        n = personal[:, 1]
        objectives = memory_contexts(ctx, it.question)
        mix = normalize_weights(dict.fromkeys(objectives, 1.0))
        sums = np.stack([option_logprobs(lm, c, it.options)[:, 0] for c in objectives.values()])
        rewards = rms[it.topic].score(ctx.preferences, it.question, it.options)  # (4,)
        scores = {
            "plain": plain[:, 0] / n,
            "prompt": personal[:, 0] / n,
            "contrastive": ((1 + strength) * personal[:, 0] - strength * plain[:, 0]) / n,
            "mod": np.array(list(mix.values())) @ sums / n,
            "best_of_n": rewards,
            "reward_guided": personal[:, 0] / n + reward_weight * rewards,
        }
        for name, s in scores.items():
            hits.setdefault(name, []).append(int(np.argmax(s)) == it.answer)
    return {f"mcq_e2e_{k}": float(np.mean(v)) for k, v in hits.items()}


# -- 2. compliance of generated answers ----------------------------------------------------------


def compliance(
    lm: LanguageModel,
    items: Sequence[McqItem],
    memory: MemoryHarness,
    rms: Mapping[str, PreferenceRewardModel],
    *,
    methods: Sequence[DecodingMethod],
    options: GenerationOptions,
    strength: float,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    judged: dict[str, list[bool]] = {}
    pairs: list[dict[str, Any]] = []
    for it in items:
        ctx = memory.contexts(it.key, it.preference, it.question)
        judge = rms[it.topic]
        plain = lm.generate(ctx.plain, options=options).text
        answers = {"plain": plain}
        for method in methods:
            out = personalized_generate(
                lm,
                ctx.plain,
                ctx.personal,
                config=DecodingConfig(method=method, strength=strength),
                options=options,
                preferences=ctx.preferences,
                reward=judge,
                objectives=memory_contexts(ctx, it.question) if method == "mod" else None,
            )
            answers[method] = out.text
        scores = judge.score([it.preference], it.question, list(answers.values()))
        for (name, _), s in zip(answers.items(), scores, strict=True):
            judged.setdefault(name, []).append(bool(s >= 0.5))
        score = dict(zip(answers, scores, strict=True))
        pairs.append(
            {
                "preference": it.preference,
                "question": it.question,
                "plain": plain,
                "plain_score": round(float(score["plain"]), 3),
                "personalized": answers.get("prompt", ""),
                "personalized_score": round(float(score.get("prompt", np.nan)), 3),
            }
        )
    return {f"compliance_{k}": float(np.mean(v)) for k, v in judged.items()}, pairs


# -- 3. simulated users ------------------------------------------------------------------------


def simulated_users(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    options: GenerationOptions,
    strength: float,
    seed: int = SEED,
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    rewards: dict[str, list[float]] = {}
    for prompt in prompts:
        w = dict(zip(DIMENSION_NAMES, rng.dirichlet(np.ones(len(DIMENSION_NAMES))), strict=True))
        user = [Message(role="user", content=prompt)]
        top = [d for d, x in sorted(w.items(), key=lambda kv: -kv[1]) if x >= 0.15]
        styled = build_messages(user, None, system_prompt=_styled(top))
        plain = build_messages(user, None)
        per_dim = [build_messages(user, None, system_prompt=_styled([d])) for d in w]

        def score(texts: Sequence[str], w: dict[str, float] = w) -> np.ndarray:
            return np.array([weighted_reward(t, w) for t in texts])

        texts = {
            "plain": lm.generate(plain, options=options).text,
            "prompt": lm.generate(styled, options=options).text,
            "contrastive": decode(
                lm, [styled, plain], make_rule("contrastive", strength=strength), options
            ).text,
            "mod": decode(
                lm, per_dim, make_rule("mod", strength=0.0, weights=list(w.values())), options
            ).text,
        }
        for name, text in texts.items():
            rewards.setdefault(name, []).append(float(score([text])[0]))
    return {f"user_reward_{k}": float(np.mean(v)) for k, v in rewards.items()}


def _styled(dims: Sequence[str]) -> str:
    from personalign.generation.prompt import SYSTEM_PROMPT

    return " ".join([SYSTEM_PROMPT, *(STYLE_INSTRUCTIONS[d] for d in dims)])


# -- 4. cost -----------------------------------------------------------------------------------


def cost(
    lm: LanguageModel,
    contexts: Sequence[Contexts],
    questions: Sequence[str],
    rm: PreferenceRewardModel,
    *,
    options: GenerationOptions,
) -> dict[str, float]:
    spent: dict[str, list[float]] = {}
    made: dict[str, list[int]] = {}

    def timed(name: str, run: Callable[[], int]) -> None:
        t0 = time.perf_counter()
        tokens = run()
        spent.setdefault(name, []).append(time.perf_counter() - t0)
        made.setdefault(name, []).append(max(1, tokens))

    for ctx, q in zip(contexts, questions, strict=True):
        objectives = list(memory_contexts(ctx, q).values())
        three = [ctx.personal, *objectives, ctx.plain][:3]

        def scorer(texts: Sequence[str], ctx: Contexts = ctx, q: str = q) -> np.ndarray:
            return rm.score(ctx.preferences, q, texts)

        timed("plain", lambda ctx=ctx: lm.generate(ctx.personal, options=options).completion_tokens)
        timed(
            "contrastive",
            lambda ctx=ctx: len(
                decode(
                    lm, [ctx.personal, ctx.plain], make_rule("contrastive", strength=1.0), options
                ).token_ids
            ),
        )
        timed(
            "mod_k3",
            lambda three=three: len(
                decode(
                    lm, three, make_rule("mod", strength=0.0, weights=[1 / 3] * 3), options
                ).token_ids
            ),
        )
        timed(
            "best_of_4",
            lambda ctx=ctx, scorer=scorer: (
                best_of_n(lm, ctx.personal, scorer, n=4, options=options)[0].completion_tokens
            ),
        )
        timed(
            "reward_guided",
            lambda ctx=ctx, scorer=scorer: len(
                reward_guided(
                    lm, ctx.personal, scorer, strength=2.0, top_k=4, every=8, options=options
                ).token_ids
            ),
        )
    per_token = {k: sum(spent[k]) / sum(made[k]) for k in spent}
    out = {f"cost_ratio_{k}": per_token[k] / per_token["plain"] for k in per_token if k != "plain"}
    out["plain_tokens_per_s"] = 1.0 / per_token["plain"]
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--mcq-per-topic", type=int, default=5)
    p.add_argument("--gen-per-topic", type=int, default=2)
    p.add_argument("--users", type=int, default=20, help="simulated-user prompts")
    p.add_argument("--cost-prompts", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--strength", type=float, default=1.0, help="contrastive alpha")
    p.add_argument("--reward-weight", type=float, default=2.0, help="reward-guided weight")
    p.add_argument("--parts", default="mcq,compliance,users,cost")
    p.add_argument(
        "--probe",
        action="store_true",
        help="add the LM probe over this model's hidden states to the reward ensemble",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["bfloat16", "float32"],
        help="model precision (default: the pipeline's: bfloat16 on AVX-512 CPUs, else float32)",
    )
    p.add_argument(
        "--reward",
        default="ensemble",
        choices=["ensemble", "cross_encoder", "embedded"],
        help="reward model kind (fold models, each trained without the topics it judges)",
    )
    args = p.parse_args()
    parts = set(args.parts.split(","))
    start = time.perf_counter()
    settings = load_settings()
    lm = TransformersLM.embedded(settings.cache_dir, dtype=args.dtype, quiet=True)
    embedder = load_embedder("minilm", settings.cache_dir)
    names = topics(args.data)
    items = load_mcq(args.data, names)
    rms = fold_reward_models(
        args.data,
        names,
        settings.cache_dir,
        kind=args.reward,
        embedder=embedder,
        lm=lm if args.probe else None,
        log=log,
    )
    log("reward models ready (4 folds by topic, each trained without the topics it scores)")
    memory = MemoryHarness(args.data, embedder)
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, seed=SEED)
    figures: dict[str, float | int | str] = {
        "model": lm.name,
        "dtype": lm.dtype,
        "reward_model": args.reward,
    }
    pairs: list[dict[str, Any]] = []
    try:
        if "mcq" in parts:
            log("MCQ end to end")
            subset = [it for it in items if it.index < args.mcq_per_topic]
            figures.update(
                mcq_e2e(
                    lm,
                    subset,
                    memory,
                    rms,
                    strength=args.strength,
                    reward_weight=args.reward_weight,
                )
            )
            figures["mcq_questions"] = len(subset)
        gen_items = [it for it in items if it.index < args.gen_per_topic]
        if "compliance" in parts:
            log("compliance")
            comp, pairs = compliance(
                lm,
                gen_items,
                memory,
                rms,
                methods=["prompt", "contrastive", "mod"],
                options=options,
                strength=args.strength,
            )
            figures.update(comp)
            figures["compliance_questions"] = len(gen_items)
        if "users" in parts:
            log("simulated users")
            rng = random.Random(SEED)
            half = args.users // 2
            prompts = rng.sample(mtbench_first_turns(args.data), half)
            prompts += [it.question for it in rng.sample(items, args.users - half)]
            figures.update(simulated_users(lm, prompts, options=options, strength=args.strength))
            figures["user_prompts"] = len(prompts)
        if "cost" in parts:
            log("cost")
            chosen = gen_items[: args.cost_prompts]
            ctxs = [memory.contexts(it.key, it.preference, it.question) for it in chosen]
            figures.update(
                cost(
                    lm,
                    ctxs,
                    [it.question for it in chosen],
                    rms[chosen[0].topic],
                    options=options,
                )
            )
            figures["cost_prompts"] = len(chosen)
    finally:
        memory.close()
    figures["default_method"] = DEFAULT_METHOD
    figures["seconds"] = round(time.perf_counter() - start, 1)
    if pairs:
        sample = random.Random(SEED).sample(pairs, min(10, len(pairs)))
        for i, pair in enumerate(sample, 1):
            print(f"--- pair {i}: {pair['preference']}\nQ: {pair['question']}")
            print(f"[plain, judge {pair['plain_score']}] {pair['plain']!r}")
            print(f"[prompt, judge {pair['personalized_score']}] {pair['personalized']!r}")
    emit(figures, title="decoding-time personalization", as_json=args.json)


if __name__ == "__main__":
    main()
