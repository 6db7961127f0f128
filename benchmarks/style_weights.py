"""Style weights: does moving one weight from 0 to 1 move its dimension's measured property?

For each style dimension the pipeline plans for (conciseness, structure, formality, warmth,
readability) and each prompt (first user turns of MT-Bench-101 dialogues under ``--data``, a
seeded sample), a fresh user gets that one weight at 0, answers the prompt, then the weight
at 1, and answers again (``--method``, greedy, ``ingest=False``, same seed). The property of
each reply is measured by this file's own functions (not the dimension scores or reward
models the pipeline selects with):

* conciseness: word count (lower at 1);
* structure: lines that start a list item (more at 1);
* formality: contractions per 100 words (fewer at 1);
* warmth: friendly words and exclamation marks per 100 words (more at 1);
* readability: mean words per sentence (lower at 1).

``direction_<dim>``: share of prompts where the weight-1 reply's property differs from the
weight-0 reply's in the expected direction (a tie fails). The baseline in the same run,
``direction_told_<dim>``, asks the model itself: the plain reply with the dimension's
requirement line (what the pipeline writes into the prompt) in the system prompt at each
pole, nothing enforced. Target: ``direction_min`` >= 0.90.

    python benchmarks/style_weights.py [--data ../shared/data] [--prompts 12] [--json]
"""

from __future__ import annotations

import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import verifiable_preferences as vp
from personalign.eval.bench import emit, parser

DIMENSIONS = ("conciseness", "structure", "formality", "warmth", "readability")
_WORD = re.compile(r"[A-Za-z0-9']+")
_LIST_LINE = re.compile(r"^\s*(?:[*\-•]|\d+[.)])\s+\S", re.M)
# a possessive ("the user's") is not a contraction: 's counts only after the words it shortens
_CONTRACTION = re.compile(
    r"\b\w+n't\b|\b\w+'(?:re|ll|ve|d|m)\b|"
    r"\b(?:it|that|there|what|here|who|he|she|let|where|how)'s\b",
    re.I,
)
_FRIENDLY = re.compile(
    r"\b(?:happy|glad|hope|enjoy|great|wonderful|love|delighted|pleasure|thanks?|welcome|"
    r"lovely|fun|awesome|cheers)\b|!",
    re.I,
)


def _words(text: str) -> int:
    return len(_WORD.findall(text))


def _per100(n: int, text: str) -> float:
    return 100.0 * n / max(_words(text), 1)


def _sentence_length(text: str) -> float:
    parts = [p for p in re.split(r"(?<=[.!?])\s+|\n+", text) if _words(p)]
    return sum(_words(p) for p in parts) / max(len(parts), 1)


PROPERTIES: dict[str, tuple[Callable[[str], float], int]] = {
    # dimension -> (measure, expected sign of (weight 1 - weight 0))
    "conciseness": (lambda t: float(_words(t)), -1),
    "structure": (lambda t: float(len(_LIST_LINE.findall(t))), +1),
    "formality": (lambda t: _per100(len(_CONTRACTION.findall(t)), t), -1),
    "warmth": (lambda t: _per100(len(_FRIENDLY.findall(t)), t), +1),
    "readability": (_sentence_length, -1),
}


def moved(dim: str, low: str, high: str) -> bool:
    """Whether the property moved from the weight-0 reply to the weight-1 reply as expected."""
    measure, sign = PROPERTIES[dim]
    return (measure(high) - measure(low)) * sign > 0


def prompts(data: Path, n: int, seed: int) -> list[str]:
    pool = sorted({u for u, _ in vp.filler_pairs(data) if 3 <= len(u.split()) <= 40})
    if len(pool) < n:
        raise SystemExit(f"only {len(pool)} prompts under {data}, need {n}")
    return random.Random(seed).sample(pool, n)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__ or "")
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--method", default="prompt", help="the pipeline method answering")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument(
        "--dimensions", default=",".join(DIMENSIONS), help="comma-separated subset to measure"
    )
    args = p.parse_args(argv)
    dims = [d.strip() for d in args.dimensions.split(",") if d.strip()]
    unknown = sorted(set(dims) - set(DIMENSIONS))
    if unknown or not dims:
        raise SystemExit(f"unknown dimensions {unknown}; choose from {', '.join(DIMENSIONS)}")

    from personalign.backends.models.base import GenerationOptions
    from personalign.config import load_settings
    from personalign.generation.enforce import style_plan
    from personalign.pipeline import SYSTEM_PROMPT, PersonalizeOptions, Personalizer
    from personalign.types import Message

    qs = prompts(args.data, args.prompts, args.seed)
    t0 = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="style-weights-"))
    pz = Personalizer.open(load_settings(home=home))
    out: dict[str, float | int | str] = {"prompts": len(qs), "method": args.method}
    samples: list[dict[str, str]] = []
    try:
        for dim in dims:
            ours: list[bool] = []
            told: list[bool] = []
            for i, q in enumerate(qs):
                gen = GenerationOptions(max_new_tokens=args.max_new_tokens, seed=args.seed + i)
                opts = PersonalizeOptions(method=args.method, ingest=False, generation=gen)
                replies, asked = [], []
                for w in (0.0, 1.0):
                    user = f"{dim}-{i}-{int(w)}"
                    pz.memory.store.set_profile({dim: w}, user=user)
                    replies.append(pz.respond(q, user=user, options=opts).text)
                    lines = style_plan({dim: w}).requirements
                    system = " ".join([SYSTEM_PROMPT, *lines])
                    msgs = [Message(role="system", content=system), Message(role="user", content=q)]
                    asked.append(pz.model.generate(msgs, options=gen).text)
                ours.append(moved(dim, *replies))
                told.append(moved(dim, *asked))
                if i == 0:
                    low, high = replies
                    samples.append({"dimension": dim, "prompt": q, "w0": low, "w1": high})
                print(
                    f"[{dim} {i + 1}/{len(qs)}] ours={int(ours[-1])} told={int(told[-1])}",
                    file=sys.stderr,
                )
            out[f"direction_{dim}"] = round(sum(ours) / len(ours), 3)
            out[f"direction_told_{dim}"] = round(sum(told) / len(told), 3)
    finally:
        pz.close()
    out["direction_min"] = min(float(out[f"direction_{d}"]) for d in dims)
    out["direction_mean"] = round(sum(float(out[f"direction_{d}"]) for d in dims) / len(dims), 3)
    out["direction_told_mean"] = round(
        sum(float(out[f"direction_told_{d}"]) for d in dims) / len(dims), 3
    )
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if not args.json:
        for s in samples:
            print(f"\n== {s['dimension']}: {s['prompt']}")
            print(f"-- weight 0:\n{s['w0']}\n-- weight 1:\n{s['w1']}")
    emit(out, title="style weights: share of prompts moved as expected", as_json=args.json)


if __name__ == "__main__":
    main()
