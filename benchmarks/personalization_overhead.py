"""Personalization overhead: retrieval + prompt building as a fraction of generation time.

A user with PrefEval preferences (explicit topics under ``--data``) plus MT-Bench-101 turns
as episodic memory asks PrefEval questions; for each, the pipeline's ``prepare`` (search, topic
tag, relevance filter, rendering) is timed against the model's generation of the reply (the
embedded SmolLM2-135M unless ``--model``), same run. Target: overhead <= 5%.

    python benchmarks/personalization_overhead.py [--json] [--questions 10] [--max-tokens 64]
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from personalign.backends.models import load_model
from personalign.backends.models.base import GenerationOptions
from personalign.config import load_settings
from personalign.eval.bench import emit, parser, percentile
from personalign.memory import open_memory
from personalign.pipeline import PersonalizeOptions, Personalizer
from personalign.types import Message, PreferenceIn


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--questions", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--filler", type=int, default=300, help="episodic turns for the user")
    p.add_argument("--model", default="smollm2")
    args = p.parse_args()

    rng = random.Random(0)
    items = []
    for f in sorted((args.data / "prefeval" / "explicit_preference").glob("*.json")):
        items += json.loads(f.read_text())
    rng.shuffle(items)
    filler = []
    with (args.data / "mt-bench-101" / "mtbench101.jsonl").open() as fh:
        for line in fh:
            filler += [t["user"] for t in json.loads(line)["history"]]
    home = Path(tempfile.mkdtemp(prefix="personalign-overhead-"))
    settings = load_settings(home=home, model=args.model)
    memory = open_memory(settings)
    user = "bench"
    memory.add_many([PreferenceIn(text=it["preference"]) for it in items[:100]], user=user)
    memory.add_many(
        [PreferenceIn(text=t[:2000], kind="episode") for t in rng.sample(filler, args.filler)],
        user=user,
    )
    pz = Personalizer(memory, load_model(settings))
    opts = PersonalizeOptions(
        ingest=False, generation=GenerationOptions(max_new_tokens=args.max_tokens)
    )
    pz.respond("warm up", user=user, options=opts)
    prep_ms, gen_ms, tokens = [], [], 0
    for it in items[: args.questions]:
        history = [Message(role="user", content=it["question"])]
        t0 = time.perf_counter()
        messages, _, _ = pz.prepare(history, user=user, options=opts)
        t1 = time.perf_counter()
        gen = pz.model.generate(messages, options=opts.generation)
        t2 = time.perf_counter()
        prep_ms.append((t1 - t0) * 1000)
        gen_ms.append((t2 - t1) * 1000)
        tokens += gen.completion_tokens
    pz.close()
    emit(
        {
            "questions": len(prep_ms),
            "memories_per_user": 100 + args.filler,
            "prepare_p50_ms": percentile(prep_ms, 50),
            "prepare_p95_ms": percentile(prep_ms, 95),
            "generation_p50_ms": percentile(gen_ms, 50),
            "overhead_fraction": sum(prep_ms) / sum(gen_ms),
            "gen_tok_per_s": tokens / (sum(gen_ms) / 1000),
        },
        title="personalization overhead (retrieval + prompt vs generation)",
        as_json=args.json,
    )


if __name__ == "__main__":
    main()
