"""Embedded model (SmolLM2-135M-Instruct) generation throughput: fp32 vs bf16, batch 1 vs 8,
and concurrent chats through the continuous batcher.

Greedy decoding of ``--new-tokens`` tokens with the KV cache; tokens/s counts the tokens
actually generated (all rows for batch 8) over wall-clock time, prefill included; each figure
is the best of ``--repeats`` runs after one warm-up. The first run converts the GGUF into the
cache (~15 s). ``--data`` is accepted for the benchmark convention and not used.

Keys of the serving path (``TransformersLM.embedded`` as shipped: bf16 on AVX-512 CPUs,
batching on): ``tokps_c1_bf16``, one chat (``generate`` through the batcher);
``tokps_c1_baseline``, the same chat on the old unbatched path (``batching=False``) in the
same run; ``tokps_c8_total``, 8 chats on 8 threads at once, all their tokens over the wall
time; ``local_tokps_c8_over_c1``. ``tokps_c1_int8`` / ``tokps_c8_total_int8``: the same with
``quantize="int8"`` (faster, not identical): ``int8_top1_agreement`` is the fraction of
positions of the bf16 greedy replies to 6 prompts where the int8 model's top token is the
bf16 one (teacher-forced, one chat at a time).

``--threads`` defaults to 1: on a shared 2-core machine, two OpenMP threads competing with
other processes run several times slower than one (``--threads 0`` keeps torch's default).

    python benchmarks/model_throughput.py [--json] [--new-tokens 32] [--threads N]
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from personalign.backends.models import GenerationOptions
from personalign.backends.models.local import DType, TransformersLM, ensure_embedded_model
from personalign.config import load_settings
from personalign.eval.bench import emit, parser
from personalign.types import Message

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how bread is made.",
    "Describe a walk through a busy city market.",
    "Write a letter to a friend about your holidays.",
    "Explain how rain forms, step by step.",
    "Describe your ideal house, room by room.",
    "Tell the history of the bicycle.",
    "Write a long poem about the sea.",
]


def measure(lm: TransformersLM, batch: int, new_tokens: int, repeats: int) -> float:
    """Best tokens/s over ``repeats`` runs of greedy generation for ``batch`` prompts."""
    convs = [[Message(role="user", content=p)] for p in PROMPTS[:batch]]
    opts = GenerationOptions(max_new_tokens=new_tokens)
    lm.generate_batch(convs, options=GenerationOptions(max_new_tokens=4))  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        out = lm.generate_batch(convs, options=opts)
        seconds = time.perf_counter() - start
        best = max(best, sum(g.completion_tokens for g in out) / seconds)
    return best


def measure_chats(lm: TransformersLM, n: int, new_tokens: int, repeats: int) -> float:
    """Best total tokens/s of ``n`` greedy chats sent at once from ``n`` threads (``generate``,
    so through the batcher when the model has one)."""
    convs = [[Message(role="user", content=p)] for p in PROMPTS[:n]]

    def round_(opts: GenerationOptions) -> tuple[int, float]:
        barrier = threading.Barrier(n + 1)
        tokens = [0] * n

        def chat(i: int) -> None:
            barrier.wait()
            tokens[i] = lm.generate(convs[i], options=opts).completion_tokens

        threads = [threading.Thread(target=chat, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        return sum(tokens), time.perf_counter() - start

    round_(GenerationOptions(max_new_tokens=4))  # warm-up
    best = 0.0
    for _ in range(repeats):
        tokens, seconds = round_(GenerationOptions(max_new_tokens=new_tokens))
        best = max(best, tokens / seconds)
    return best


def top1_agreement(ref: TransformersLM, lm: TransformersLM, new_tokens: int) -> float:
    """Teacher-forced, one chat at a time (as a lone chat decodes): along ``ref``'s greedy
    replies to 6 prompts, the fraction of positions where ``lm``'s top token is ``ref``'s."""
    convs = [[Message(role="user", content=p)] for p in PROMPTS[:6]]
    same = total = 0
    for conv in convs:
        reply = ref.generate(conv, options=GenerationOptions(max_new_tokens=new_tokens)).text
        tail = ref.encode(reply)
        picks: list[list[int]] = []
        for model in (ref, lm):
            logits, state = model.forward([ref.encode_chat(conv)])
            got = [int(logits[0].argmax())]
            for tok in tail[:-1]:
                logits, state = model.forward([[tok]], state)
                got.append(int(logits[0].argmax()))
            picks.append(got)
        same += sum(a == b for a, b in zip(*picks, strict=True))
        total += len(tail)
    return same / max(total, 1)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: the settings cache")
    args = p.parse_args()

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cache = args.cache_dir or load_settings().cache_dir
    start = time.perf_counter()
    ensure_embedded_model(cache, quiet=args.json)
    figures: dict[str, float | int | str] = {
        "prepare_s": round(time.perf_counter() - start, 2),
        "new_tokens": args.new_tokens,
        "torch_threads": torch.get_num_threads(),
    }
    dtypes: tuple[tuple[DType, str], ...] = (("float32", "fp32"), ("bfloat16", "bf16"))
    for dtype, short in dtypes:
        start = time.perf_counter()
        lm = TransformersLM.embedded(cache, dtype=dtype, quiet=True)
        figures[f"load_s_{short}"] = round(time.perf_counter() - start, 2)
        figures["device"] = lm.device
        for batch in (1, 8):
            rate = measure(lm, batch, args.new_tokens, args.repeats)
            figures[f"tok_per_s_b{batch}_{short}"] = round(rate, 2)
        del lm
    for b in (1, 8):
        figures[f"ratio_bf16_over_fp32_b{b}"] = round(
            float(figures[f"tok_per_s_b{b}_bf16"]) / float(figures[f"tok_per_s_b{b}_fp32"]), 3
        )
    for short in ("fp32", "bf16"):
        figures[f"ratio_b8_over_b1_{short}"] = round(
            float(figures[f"tok_per_s_b8_{short}"]) / float(figures[f"tok_per_s_b1_{short}"]), 3
        )
    # The serving path: the shipped default, against the old unbatched path, then int8.
    n, reps = args.new_tokens, args.repeats
    old = TransformersLM.embedded(cache, quiet=True, batching=False)
    figures["default_dtype"] = old.dtype
    figures["tokps_c1_baseline"] = round(measure(old, 1, n, reps), 2)
    lm = TransformersLM.embedded(cache, quiet=True)
    figures["tokps_c1_bf16"] = round(measure_chats(lm, 1, n, reps), 2)
    figures["tokps_c8_total"] = round(measure_chats(lm, 8, n, reps), 2)
    lm.close()
    del lm
    fast = TransformersLM.embedded(cache, quiet=True, quantize="int8")
    figures["tokps_c1_int8"] = round(measure_chats(fast, 1, n, reps), 2)
    figures["tokps_c8_total_int8"] = round(measure_chats(fast, 8, n, reps), 2)
    figures["int8_top1_agreement"] = round(top1_agreement(old, fast, min(n, 20)), 3)
    fast.close()
    c1 = float(figures["tokps_c1_bf16"])
    figures["local_tokps_c8_over_c1"] = round(float(figures["tokps_c8_total"]) / c1, 3)
    figures["ratio_c1_over_baseline"] = round(c1 / float(figures["tokps_c1_baseline"]), 3)
    figures["ratio_c1_int8_over_baseline"] = round(
        float(figures["tokps_c1_int8"]) / float(figures["tokps_c1_baseline"]), 3
    )
    emit(figures, title="embedded model throughput (SmolLM2-135M)", as_json=args.json)


if __name__ == "__main__":
    main()
