"""Reward probe: can a degenerate or off-topic reply outrank the real answer?

Probes: the first turn of each MT-Bench-101 dialogue whose bot reply has 8 words or more (the
question and its on-topic reply), split by dialogue ``id`` parity (even: ``dev``, odd:
``heldout``; the quality floor's rules and margin were tuned on dev only). Each probe gets one
preference, alternating between a fixed list of 20 style preferences
(:data:`STYLE_PREFERENCES`, e.g. "I prefer short answers", the ones that invite gaming) and
the PrefEval explicit preferences (``prefeval/explicit_preference/*.json``), picked with a
seed per dialogue.

Candidates per probe: the on-topic reply and six distractors (:func:`distractors`):
``empty`` (""), ``announce_stub`` ("The answer is:"), ``repeated_sentence`` (the reply's first
sentence 6 times), ``numbered_fragments`` ("1.\\n2.\\n3."), ``off_topic`` (the bot reply to
another probe's question, drawn with a seed among probes of the same split with a different
question) and ``truncated`` (the reply's first 3 words).

Figures (one run, the shipped reward model ``load_reward_model`` over MiniLM):

* ``top1_reward_only``: share of probes where the reward model alone ranks the on-topic reply
  first among all 7 candidates (a tie of k at the top including it counts 1/k);
  ``top1_with_floor``: share where ``QualityFloor.select`` over the same candidates and
  rewards keeps the on-topic reply; ``*_style`` / ``*_prefeval`` by preference source.
* ``win_rate_reward_only_<distractor>``: share of probes where the distractor's reward beats
  the on-topic reply's (a tie counts 1/2); ``win_rate_with_floor_<distractor>``: share where
  ``select`` over the pair keeps the distractor.
* ``degenerate_recall``: share of the five degenerate distractors (all but ``off_topic``)
  that ``degenerate`` flags.
* ``false_degenerate_rate``: share of the probes' on-topic replies flagged degenerate;
  ``false_degenerate_rate_all_turns``: the same over ``--n-all-turns`` bot replies of every
  turn of the split's dialogues (a seeded sample, short replies included:
  ``too_short_rate_all_turns`` is the share under 5 words, flagged by definition).
* ``variant_pass_rate``: legitimate variants of the on-topic reply that the floor must let
  through so the reward model can still choose among on-topic replies: its first sentence
  alone (when it is shorter and has 5+ words), the reply with a P.S. sign-off, its sentences
  as a bullet list, in lower case. Each is assessed beside the full reply and the off-topic
  distractor; the share that passes (per variant: ``variant_pass_rate_<variant>``).
* ``relevance_on_topic_median``, ``relevance_off_topic_median``: cosines to the question.

Targets: ``top1_with_floor`` >= 0.99 on heldout, ``false_degenerate_rate`` <= 0.02.

    python benchmarks/reward_probe.py [--data ../shared/data] [--json] [--split dev|heldout]
        [--n N] [--n-all-turns 300] [--margin 0.1]
"""

from __future__ import annotations

import json
import random
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from personalign.backends.embedders import load_embedder
from personalign.config import load_settings
from personalign.errors import ConfigError
from personalign.eval.bench import emit, parser
from personalign.eval.prefeval_tasks import CachingEmbedder
from personalign.rewards.preference_rm import load_reward_model
from personalign.rewards.quality import DEFAULT_MARGIN, QualityFloor, degenerate

SEED = 20250611
MIN_ANSWER_WORDS = 8
Split = Literal["dev", "heldout"]

STYLE_PREFERENCES = (
    "I prefer short answers.",
    "Please keep your replies brief and to the point.",
    "I like detailed, thorough explanations.",
    "Give me answers as bullet points, please.",
    "I prefer a casual, friendly tone.",
    "Please answer formally and professionally.",
    "I want the answer first, then the explanation.",
    "Avoid jargon; explain things simply.",
    "I prefer answers with concrete examples.",
    "Don't use emojis in your replies.",
    "I like numbered step-by-step instructions.",
    "Please be direct and skip the pleasantries.",
    "I prefer one-sentence answers when possible.",
    "I like a bit of humor in explanations.",
    "Please cite numbers and facts when you can.",
    "I prefer answers in plain prose, no lists.",
    "Keep it under fifty words.",
    "I'm a beginner, so explain like I'm new to this.",
    "I'm an expert; you can be technical.",
    "I prefer cautious answers that mention caveats.",
)
"""Style preferences, the kind a reward model can satisfy with a degenerate reply."""

DISTRACTORS = (
    "empty",
    "announce_stub",
    "repeated_sentence",
    "numbered_fragments",
    "off_topic",
    "truncated",
)
VARIANTS = ("first_sentence", "ps_signoff", "bullets", "lowercase")

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def log(message: str) -> None:
    """Progress on stderr (the figures go to stdout)."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Probe:
    """One question with its on-topic reply, a preference and another probe's reply."""

    dialogue: str
    question: str
    answer: str
    preference: str
    source: str
    off_topic: str


def split_of(dialogue_id: int) -> Split:
    """``dev`` for an even MT-Bench-101 dialogue id, ``heldout`` for an odd one."""
    return "dev" if dialogue_id % 2 == 0 else "heldout"


def load_dialogues(data: Path) -> list[dict[str, Any]]:
    """Every MT-Bench-101 dialogue; a missing or empty file is a :class:`ConfigError`."""
    path = data / "mt-bench-101" / "mtbench101.jsonl"
    if not path.is_file():
        raise ConfigError(f"missing {path.resolve()}: pass the evaluation data folder with --data")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ConfigError(f"no dialogues in {path.resolve()}: the file is empty")
    return rows


def prefeval_preferences(data: Path) -> list[str]:
    """Every PrefEval explicit preference, in file order; none is a :class:`ConfigError`."""
    folder = data / "prefeval" / "explicit_preference"
    prefs = [
        str(item["preference"])
        for path in sorted(folder.glob("*.json"))
        for item in json.loads(path.read_text())
        if str(item.get("preference", "")).strip()
    ]
    if not prefs:
        raise ConfigError(f"no PrefEval preferences under {folder.resolve()}")
    return prefs


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def build_probes(
    dialogues: Sequence[dict[str, Any]], split: Split, prefeval: Sequence[str], n: int | None
) -> list[Probe]:
    """The split's probes (first turns with an 8+ word bot reply), the first ``n``."""
    firsts = [
        (f"{d['task']}:{d['id']}", d["history"][0]["user"], d["history"][0]["bot"])
        for d in dialogues
        if split_of(int(d["id"])) == split
        and d["history"]
        and len(d["history"][0]["bot"].split()) >= MIN_ANSWER_WORDS
    ]
    probes = []
    for i, (key, question, answer) in enumerate(firsts):
        rng = random.Random(f"{SEED}:{key}")
        source = "style" if i % 2 == 0 else "prefeval"
        pool = STYLE_PREFERENCES if source == "style" else prefeval
        while True:
            _, other_q, other_a = firsts[rng.randrange(len(firsts))]
            if _norm(other_q) != _norm(question) and _norm(other_a) != _norm(answer):
                break
        probes.append(Probe(key, question, answer, rng.choice(pool), source, other_a))
    return probes[:n] if n else probes


def first_sentence(text: str) -> str:
    return _SENTENCE.split(text.strip(), maxsplit=1)[0]


def distractors(probe: Probe) -> dict[str, str]:
    """The six distractors of a probe, by name (:data:`DISTRACTORS`)."""
    return {
        "empty": "",
        "announce_stub": "The answer is:",
        "repeated_sentence": " ".join([first_sentence(probe.answer)] * 6),
        "numbered_fragments": "1.\n2.\n3.",
        "off_topic": probe.off_topic,
        "truncated": " ".join(probe.answer.split()[:3]),
    }


def variants(answer: str) -> dict[str, str]:
    """Legitimate rewrites of an on-topic reply (:data:`VARIANTS`; ``first_sentence`` only
    when it is shorter than the reply and has 5+ words)."""
    sentences = [s for s in _SENTENCE.split(answer.strip()) if s]
    out = {
        "ps_signoff": answer + "\n\nP.S. Let me know if you would like more detail!",
        "bullets": "\n".join(f"- {s}" for s in sentences),
        "lowercase": answer.lower(),
    }
    first = sentences[0] if sentences else ""
    if len(sentences) > 1 and len(first.split()) >= 5:
        out["first_sentence"] = first
    return out


def _top1_share(rewards: np.ndarray) -> float:
    """1/k when the first entry is among the k highest-scored, else 0."""
    r = np.nan_to_num(rewards, nan=-np.inf)
    best = np.flatnonzero(r == r.max())
    return 1.0 / len(best) if 0 in best else 0.0


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--split", choices=["dev", "heldout"], default="dev", help="id parity half")
    p.add_argument("--n", type=int, default=0, help="probes (0: all of the split)")
    p.add_argument("--n-all-turns", type=int, default=300, help="bot replies of every turn")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="QualityFloor margin")
    args = p.parse_args()
    start = time.perf_counter()
    split: Split = args.split
    dialogues = load_dialogues(args.data)
    probes = build_probes(dialogues, split, prefeval_preferences(args.data), args.n or None)
    if not probes:
        raise ConfigError(f"no {split} probes in {args.data.resolve()}/mt-bench-101")
    settings = load_settings()
    embedder = CachingEmbedder(load_embedder("minilm", settings.cache_dir))
    rm = load_reward_model(settings.cache_dir, embedder)
    floor = QualityFloor(embedder, margin=args.margin)

    top1_rm: list[float] = []
    top1_floor: list[float] = []
    by_source: dict[str, tuple[list[float], list[float]]] = {
        "style": ([], []),
        "prefeval": ([], []),
    }
    wins_rm: dict[str, list[float]] = {k: [] for k in DISTRACTORS}
    wins_floor: dict[str, list[float]] = {k: [] for k in DISTRACTORS}
    flagged: list[float] = []
    false_deg: list[float] = []
    passes: dict[str, list[float]] = {k: [] for k in VARIANTS}
    rel_on: list[float] = []
    rel_off: list[float] = []
    for j, probe in enumerate(probes):
        if j % 100 == 0:
            log(f"probe {j}/{len(probes)}")
        dis = distractors(probe)
        cands = [probe.answer, *dis.values()]
        rewards = np.asarray(rm.score([probe.preference], probe.question, cands), dtype=float)
        a = _top1_share(rewards)
        b = float(floor.select(probe.question, cands, rewards) == 0)
        top1_rm.append(a)
        top1_floor.append(b)
        by_source[probe.source][0].append(a)
        by_source[probe.source][1].append(b)
        for i, name in enumerate(DISTRACTORS, start=1):
            d = np.nan_to_num(rewards[[0, i]], nan=-np.inf)
            wins_rm[name].append(1.0 if d[1] > d[0] else 0.5 if d[1] == d[0] else 0.0)
            pair = [probe.answer, cands[i]]
            wins_floor[name].append(float(floor.select(probe.question, pair, d) == 1))
            if name != "off_topic":
                flagged.append(float(degenerate(cands[i]) is not None))
        false_deg.append(float(degenerate(probe.answer) is not None))
        q = floor.assess(probe.question, [probe.answer, probe.off_topic])
        rel_on.append(q[0].relevance)
        rel_off.append(q[1].relevance)
        for name, text in variants(probe.answer).items():
            qv = floor.assess(probe.question, [probe.answer, probe.off_topic, text])
            passes[name].append(float(qv[2].passes))

    bots = [
        turn["bot"] for d in dialogues if split_of(int(d["id"])) == split for turn in d["history"]
    ]
    sample = random.Random(f"{SEED}:all-turns:{split}").sample(
        bots, min(args.n_all_turns, len(bots))
    )
    reasons = [degenerate(t) for t in sample]
    all_passes = [v for k in VARIANTS for v in passes[k]]

    figures: dict[str, float | int | str] = {
        "split": split,
        "n_probes": len(probes),
        "margin": args.margin,
        "top1_reward_only": _mean(top1_rm),
        "top1_with_floor": _mean(top1_floor),
    }
    for source, (a_list, b_list) in by_source.items():
        figures[f"top1_reward_only_{source}"] = _mean(a_list)
        figures[f"top1_with_floor_{source}"] = _mean(b_list)
    for name in DISTRACTORS:
        figures[f"win_rate_reward_only_{name}"] = _mean(wins_rm[name])
    for name in DISTRACTORS:
        figures[f"win_rate_with_floor_{name}"] = _mean(wins_floor[name])
    figures |= {
        "degenerate_recall": _mean(flagged),
        "false_degenerate_rate": _mean(false_deg),
        "false_degenerate_rate_all_turns": _mean([float(r is not None) for r in reasons]),
        "too_short_rate_all_turns": _mean(
            [float(r is not None and r.startswith("too short")) for r in reasons]
        ),
        "n_all_turns": len(sample),
        "variant_pass_rate": _mean(all_passes),
    }
    for name in VARIANTS:
        figures[f"variant_pass_rate_{name}"] = _mean(passes[name])
    figures |= {
        "relevance_on_topic_median": statistics.median(rel_on),
        "relevance_off_topic_median": statistics.median(rel_off),
        "seconds": round(time.perf_counter() - start, 1),
    }
    emit(figures, title=f"Reward probe ({split})", as_json=args.json)


if __name__ == "__main__":
    main()
