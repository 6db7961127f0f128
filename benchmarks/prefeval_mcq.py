"""PrefEval MCQ with the language model alone: which option does it find most likely?

For each question, the 4 options (shuffled with a fixed seed; the data lists the compliant one
first) are scored by their mean log-probability as the assistant's reply
(``LanguageModel.logprobs``); the highest wins. ``mcq_accuracy_none``: the question alone.
``mcq_accuracy_memory``: the preference stored among 100 unrelated MT-Bench-101 turns in a
SQLite memory, retrieved for the question and rendered into the system prompt, as the
pipeline does. Chance is 0.25. ``--per-topic N`` takes the first N questions of each topic.

    python benchmarks/prefeval_mcq.py [--data DIR] [--json] [--per-topic N]
"""

from __future__ import annotations

import time

import numpy as np

from personalign.backends.embedders import load_embedder
from personalign.backends.models.local import TransformersLM
from personalign.config import load_settings
from personalign.eval.bench import emit, parser
from personalign.eval.prefeval_tasks import MemoryHarness, load_mcq, option_logprobs


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--per-topic", type=int, default=0, help="questions per topic (0: all)")
    args = p.parse_args()
    start = time.perf_counter()
    settings = load_settings()
    lm = TransformersLM.embedded(settings.cache_dir, dtype="float32", quiet=True)
    items = load_mcq(args.data)
    if args.per_topic:
        items = [it for it in items if it.index < args.per_topic]
    memory = MemoryHarness(args.data, load_embedder("minilm", settings.cache_dir))
    hits_none, hits_memory, recalled = [], [], []
    try:
        for it in items:
            ctx = memory.contexts(it.key, it.preference, it.question)
            none = option_logprobs(lm, ctx.plain, it.options)  # (4, 2)
            mem = option_logprobs(lm, ctx.personal, it.options)
            hits_none.append(int(np.argmax(none[:, 0] / none[:, 1])) == it.answer)
            hits_memory.append(int(np.argmax(mem[:, 0] / mem[:, 1])) == it.answer)
            recalled.append(it.preference in ctx.retrieved)
    finally:
        memory.close()
    figures: dict[str, float | int | str] = {
        "mcq_accuracy_none": float(np.mean(hits_none)),
        "mcq_accuracy_memory": float(np.mean(hits_memory)),
        "memory_recall": float(np.mean(recalled)),
        "questions": len(items),
        "model": lm.name,
        "seconds": round(time.perf_counter() - start, 1),
    }
    emit(figures, title="PrefEval MCQ, language model log-probabilities", as_json=args.json)


if __name__ == "__main__":
    main()
