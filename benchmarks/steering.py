"""Activation steering on the embedded SmolLM2-135M: where to steer, and what it costs.

Hand-written conciseness pairs (a short reply chosen over a long one, and the reverse for
``conciseness-``) give CAA vectors (:mod:`personalign.generation.steering`). Reported:

* per decoder layer, how consistent the pair differences are (mean cosine of each pair's
  difference to their mean) and the mean difference's norm over the layer's typical
  hidden-state norm (``--scan``), the basis of ``default_layers`` and ``MAX_STEER_FRACTION``;
* the per-token time of a KV-cached decoding step at batch 1, plain vs steered (same
  prefilled prompt, alternating rounds), and of ``generate`` (target: steered <= 1.05x);
* greedy replies at a few strengths (what steering does to this small model).

    python benchmarks/steering.py [--json] [--scan] [--tiny] [--steps 64] [--rounds 5]

The figures print as JSON (one line with ``--json``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from personalign.backends.models.base import GenerationOptions
from personalign.backends.models.local import TransformersLM
from personalign.config import load_settings
from personalign.eval.bench import parser
from personalign.feedback.pairs import PreferencePair
from personalign.generation.steering import compute_steering, default_layers
from personalign.types import Message

SHORT_LONG = [
    (
        "How do I make a good cup of coffee?",
        "Use fresh beans, grind them, brew at 93 °C.",
        "Making a good cup of coffee starts well before brewing: buy whole beans roasted in "
        "the last few weeks, grind them just before you brew, weigh about sixteen grams per "
        "two hundred and fifty millilitres of water, and brew at around ninety-three degrees.",
    ),
    (
        "How can I sleep better?",
        "Keep a fixed bedtime and skip late caffeine.",
        "Sleeping better usually comes down to several habits working together: going to bed "
        "and waking up at the same times every day, avoiding caffeine after lunch, keeping "
        "the bedroom dark, cool and quiet, and putting screens away an hour before bed.",
    ),
    (
        "Explain what a neural network is.",
        "A stack of weighted sums and nonlinearities fit to data.",
        "A neural network is a mathematical model loosely inspired by the brain: it is built "
        "from layers of simple units, each computing a weighted sum of its inputs followed by "
        "a nonlinearity, and its weights are adjusted by gradient descent to fit examples.",
    ),
    (
        "What should I pack for a weekend hike?",
        "Water, food, layers, map, first-aid kit.",
        "For a weekend hike you will want plenty of water and a way to purify more, enough "
        "food for every meal plus snacks, clothing layers for changing weather, a map and "
        "compass, a headlamp, a small first-aid kit, and a shelter and sleeping bag.",
    ),
    (
        "What is a healthy breakfast?",
        "Oats with fruit and yogurt.",
        "A healthy breakfast combines protein, fibre and some healthy fat, for example a bowl "
        "of oats cooked with milk, topped with berries, a spoon of nuts or seeds, and a side "
        "of plain yogurt, which keeps you full and steady until lunch.",
    ),
    (
        "How do I keep houseplants alive?",
        "Enough light, water only when the soil is dry.",
        "Keeping houseplants alive is mostly about matching their needs: put each plant where "
        "it gets the light its species likes, water thoroughly but only when the top of the "
        "soil has dried, make sure the pot drains, and feed it lightly in spring and summer.",
    ),
    (
        "Explain how compound interest works.",
        "Interest is earned on past interest too.",
        "Compound interest means that the interest you earn is added to your balance, so in "
        "the next period you earn interest on the original amount and on the interest already "
        "earned, which makes the balance grow faster and faster over long periods of time.",
    ),
    (
        "How should I prepare for a job interview?",
        "Research the company and rehearse answers.",
        "To prepare for a job interview, research the company and the role in depth, prepare "
        "concrete stories about your past work that show the skills they ask for, rehearse "
        "answers out loud, prepare questions of your own, and plan your route and clothes.",
    ),
]


def pairs() -> dict[str, list[PreferencePair]]:
    plus = [PreferencePair(q, s, lg, "ranked", 1.0) for q, s, lg in SHORT_LONG]
    minus = [PreferencePair(q, lg, s, "ranked", 1.0) for q, s, lg in SHORT_LONG]
    return {"conciseness+": plus, "conciseness-": minus}


def scan(lm: TransformersLM) -> list[dict[str, float]]:
    """Per layer: consistency of the pair differences and the mean difference's relative norm."""
    from personalign.generation.steering import pair_rows

    rows, starts = [], []
    for p in pairs()["conciseness+"]:
        c, r, s = pair_rows(lm, p)
        rows += [c, r]
        starts += [s, s]
    layers = list(range(lm.num_layers))
    means, norms = lm.reply_states(rows, starts, layers)
    diff = means[0::2] - means[1::2]  # (P, L, H)
    mean = diff.mean(axis=0)  # (L, H)
    typical = np.median(norms, axis=0)  # (L,)
    out = []
    for i, layer in enumerate(layers):
        d, m = diff[:, i], mean[i]
        cos = (d @ m) / (np.linalg.norm(d, axis=1) * np.linalg.norm(m) + 1e-12)
        out.append(
            {
                "layer": layer,
                "consistency": round(float(cos.mean()), 3),
                "relative_norm": round(float(np.linalg.norm(m) / typical[i]), 3),
                "typical_norm": round(float(typical[i]), 2),
            }
        )
    return out


def step_ms(lm: TransformersLM, prompt: list[int], steps: int, steering: Any) -> list[float]:
    """Median milliseconds of a KV-cached decoding step at batch 1 (token 13 fed each step),
    plain and steered, the two decodes interleaved step by step (alternating which goes
    first) so that a busy machine's drift hits both alike."""
    _, plain = lm.forward([prompt])
    _, steered = lm.forward([prompt], steering=steering)
    times: list[list[float]] = [[], []]
    for i in range(steps):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            if k == 0:
                _, plain = lm.forward([[13]], plain)
            else:
                _, steered = lm.forward([[13]], steered, steering=steering)
            times[k].append((time.perf_counter() - t0) * 1000)
    return [float(np.median(t)) for t in times]


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--scan", action="store_true", help="report every layer's measures")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="the tiny random test model instead")
    args = p.parse_args()
    if args.tiny:
        import tempfile
        from pathlib import Path

        from personalign.testing import tiny_model_dir

        tiny = tiny_model_dir(Path(tempfile.mkdtemp(prefix="steering-bench-")) / "tiny-llama")
        lm = TransformersLM(tiny, dtype="float32", batching=False)
    else:
        lm = TransformersLM.embedded(load_settings().cache_dir, quiet=True, batching=False)
    result: dict[str, object] = {"model": lm.name, "dtype": lm.dtype, "device": lm.device}
    if args.scan:
        result["layers"] = scan(lm)
    t0 = time.perf_counter()
    vectors = compute_steering(lm, pairs())
    result["compute_s"] = round(time.perf_counter() - t0, 2)
    result["default_layers"] = list(default_layers(lm.num_layers))
    rel = {
        pole: [round(float(x), 3) for x in np.linalg.norm(v, axis=1) / np.asarray(vectors.norms)]
        for pole, v in vectors.vectors.items()
    }
    result["vector_norm_over_typical"] = rel
    lm.steering = vectors
    steer = (("conciseness+", 2.0),)
    prompt = lm.encode_chat([Message(role="user", content="Tell me about the sea.")])
    step_ms(lm, prompt, 8, steer)  # warm up
    sp, ss = step_ms(lm, prompt, args.steps * 2, steer)
    result["step_ms_plain"] = round(sp, 3)
    result["step_ms_steered"] = round(ss, 3)
    result["step_ratio"] = round(ss / sp, 3)
    per_token: dict[str, list[float]] = {"plain": [], "steered": []}
    tokens: dict[str, int] = {}
    msgs = [Message(role="user", content="Tell me about the sea.")]
    for _ in range(args.rounds):
        for name, spec in (("plain", {}), ("steered", dict(steer))):
            opts = GenerationOptions(max_new_tokens=args.steps, steering=spec)
            g = lm.generate(msgs, options=opts)
            per_token[name].append(g.seconds / max(1, g.completion_tokens) * 1000)
            tokens[name] = g.completion_tokens
    gp, gs = (float(np.median(per_token[k])) for k in ("plain", "steered"))
    result["generate_ms_per_token_plain"] = round(gp, 3)
    result["generate_ms_per_token_steered"] = round(gs, 3)
    result["generate_ratio"] = round(gs / gp, 3)
    result["generate_tokens"] = tokens  # replies of other lengths amortize the prefill otherwise
    msgs = [Message(role="user", content="How do I learn to cook?")]
    replies = {}
    for s in (0.0, 4.0, -4.0, 100.0):
        opts = GenerationOptions(max_new_tokens=40, steering={"conciseness+": s} if s else {})
        replies[str(s)] = lm.generate(msgs, options=opts).text
    result["replies"] = replies
    print(json.dumps(result, ensure_ascii=False) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
