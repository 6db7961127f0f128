"""Preference reward model: PrefEval MCQ accuracy (pick the option it scores highest).

``mcq_accuracy``: the shipped MiniLM cross-encoder on every topic under ``--data`` (split
into ``mcq_accuracy_unseen`` / ``mcq_accuracy_seen`` by the topics it was trained on);
``mcq_accuracy_embedded``: the embedded feature model; ``mcq_accuracy_ensemble``:
cross-encoder + feature model (``EnsembleRewardModel``, mean log-odds: the shipped model);
``mcq_accuracy_probe``: the opt-in LM probe over SmolLM2's hidden states;
``mcq_accuracy_ensemble_probe``: the three together. On the dev topics the shipped artifacts
saw every topic: these are fit figures.

``--cross-validate``: every member trained on 3/4 of the topics under ``--data`` and tested
on the other 1/4, all four folds (fold models trained once and cached under the cache
directory; ``cv_seconds`` is what this run spent), for each member and both ensembles
(``mcq_accuracy_cv_<kind>``, ``mcq_accuracy_cv_<kind>_fold<i>``; ``cross_encoder_int8`` is
the cross-encoder's int8 export, the shipped one runs in float32).
``mcq_accuracy_cv`` and ``binary_accuracy_cv`` (share of options on the right side of 0.5,
balanced) are the shipped ensemble's. Target: ``mcq_accuracy_cv`` >= 0.90. ``--no-probe``
leaves the LM probe out (no SmolLM2 load).

``--judge-model SPEC``: also an LLM judge (:class:`JudgeRewardModel`; SPEC as the settings'
``model``: ``openai:<name>`` served at ``--judge-url``, a local transformers directory, or
``smollm2``) with the default judge prompt or ``--judge-prompt FILE`` (PrefEval's
``check_violation.txt`` fits), on ``--judge-per-topic`` questions of every topic (0: all). Its
verdicts are binary, so options tie: ``mcq_accuracy_judge`` counts a tie among k options
including the right one as 1/k (the accuracy of breaking ties at random); an unreadable
verdict counts as undecided (0.5). ``mcq_accuracy_shipped_same_items`` is the shipped
ensemble on the same questions (it saw these topics in training: a fit figure), and
``judge_unreadable_rate`` the share of verdicts that could not be read.

    python benchmarks/reward_model.py [--data DIR] [--json] [--cross-validate] [--no-probe]
        [--judge-model SPEC [--judge-url URL] [--judge-prompt FILE] [--judge-per-topic N]]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from personalign.backends.embedders import Embedder, load_embedder
from personalign.config import JudgeConfig, Settings, load_settings
from personalign.eval.bench import emit, parser
from personalign.eval.prefeval_tasks import (
    McqItem,
    cv_folds,
    load_mcq,
    reward_items,
    topics,
    trained_probe,
    trained_reward_model,
)
from personalign.generation.decoding import UNDECIDED_REWARD
from personalign.rewards.preference_rm import (
    FEATURE_NAMES,
    CrossEncoderRewardModel,
    EmbeddedRewardModel,
    EnsembleRewardModel,
    PreferenceRewardModel,
    judge_from_settings,
)
from personalign.training.reward_model import train

if TYPE_CHECKING:
    from personalign.backends.models.local import TransformersLM
    from personalign.rewards.lm_probe import Triple


def log(message: str) -> None:
    """Progress on stderr (the figures go to stdout)."""
    print(message, file=sys.stderr, flush=True)


def mcq_scores(rm: PreferenceRewardModel, items: Sequence[McqItem]) -> list[np.ndarray]:
    """The model's scores of each item's options."""
    return [rm.score([it.preference], it.question, it.options) for it in items]


def accuracy(items: Sequence[McqItem], scores: Sequence[np.ndarray]) -> float:
    if not items:
        return float("nan")
    return float(
        np.mean([int(np.argmax(s)) == it.answer for it, s in zip(items, scores, strict=True)])
    )


def tie_accuracy(items: Sequence[McqItem], scores: Sequence[np.ndarray]) -> float:
    """MCQ accuracy when ties among the top-scored options are broken at random (a tie of k
    options including the right one counts 1/k); NaN scores count as undecided."""
    if not items:
        return float("nan")
    out = []
    for it, raw in zip(items, scores, strict=True):
        s = np.nan_to_num(np.asarray(raw, dtype=np.float64), nan=UNDECIDED_REWARD)
        best = np.flatnonzero(s == s.max())
        out.append(float(it.answer in best) / len(best))
    return float(np.mean(out))


def binary_accuracy(items: Sequence[McqItem], scores: Sequence[np.ndarray]) -> float:
    good = [s[it.answer] >= 0.5 for it, s in zip(items, scores, strict=True)]
    bad = [
        s[j] < 0.5
        for it, s in zip(items, scores, strict=True)
        for j in range(len(s))
        if j != it.answer
    ]
    return float((np.mean(good) + np.mean(bad)) / 2)


def _mean_log_odds(*members: np.ndarray) -> np.ndarray:
    """What :class:`EnsembleRewardModel` gives for its members' scores (one array each)."""
    fixed = [_Fixed(m) for m in members]
    return EnsembleRewardModel(fixed).score(["p"], "q", [""] * len(members[0]))


class _Fixed:
    """A reward model that returns given scores (to combine scores computed once)."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def score(
        self, preferences: Sequence[str], prompt: str, responses: Sequence[str]
    ) -> np.ndarray:
        return self.scores


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--cross-validate", action="store_true", help="by-topic 4-fold CV")
    p.add_argument(
        "--no-probe", action="store_true", help="leave out the LM probe (no SmolLM2 load)"
    )
    p.add_argument("--judge-model", help="also an LLM judge: openai:<name>, a model dir, smollm2")
    p.add_argument("--judge-url", help="the judge's OpenAI-compatible base URL")
    p.add_argument("--judge-prompt", type=Path, help="judge template file (default: ours)")
    p.add_argument("--judge-per-topic", type=int, default=0, help="judge questions per topic")
    p.add_argument("--judge-max-new-tokens", type=int, default=96)
    args = p.parse_args()
    start = time.perf_counter()
    settings = load_settings()
    embedder = load_embedder("minilm", settings.cache_dir)
    lm = None
    if not args.no_probe:
        from personalign.backends.models.local import TransformersLM

        lm = TransformersLM.embedded(settings.cache_dir, quiet=True)
    names = topics(args.data)
    items = load_mcq(args.data, names)
    shipped = CrossEncoderRewardModel.load(settings.cache_dir)
    trained_on = set(map(str, shipped.meta.get("topics", [])))  # type: ignore[call-overload]
    scores = mcq_scores(shipped, items)
    seen = [i for i, it in enumerate(items) if it.topic in trained_on]
    unseen = [i for i, it in enumerate(items) if it.topic not in trained_on]
    baseline = EmbeddedRewardModel.load(embedder)
    old = mcq_scores(baseline, items)
    both = [_mean_log_odds(a, b) for a, b in zip(scores, old, strict=True)]
    figures: dict[str, float | int | str] = {
        "mcq_accuracy": accuracy(items, scores),
        "mcq_accuracy_unseen": accuracy([items[i] for i in unseen], [scores[i] for i in unseen]),
        "mcq_accuracy_seen": accuracy([items[i] for i in seen], [scores[i] for i in seen]),
        "binary_accuracy": binary_accuracy(items, scores),
        "mcq_accuracy_embedded": accuracy(items, old),
        "mcq_accuracy_ensemble": accuracy(items, both),
        "questions": len(items),
        "unseen_topics": len({items[i].topic for i in unseen}),
    }
    if lm is not None:
        from personalign.rewards.lm_probe import LMProbeRewardModel

        probe = mcq_scores(LMProbeRewardModel.load(lm), items)
        figures["mcq_accuracy_probe"] = accuracy(items, probe)
        three = [_mean_log_odds(a, b, c) for a, b, c in zip(scores, old, probe, strict=True)]
        figures["mcq_accuracy_ensemble_probe"] = accuracy(items, three)
    if args.judge_model:
        figures.update(judge_figures(args, settings, items, both))
    if args.cross_validate:
        figures.update(cross_validate(args.data, names, items, embedder, lm, settings.cache_dir))
    figures["seconds"] = round(time.perf_counter() - start, 1)
    emit(figures, title="preference reward model (PrefEval MCQ)", as_json=args.json)


def judge_figures(
    args: argparse.Namespace,
    settings: Settings,
    items: Sequence[McqItem],
    shipped: Sequence[np.ndarray],
) -> dict[str, float | int | str]:
    """The LLM judge's MCQ figures, beside the shipped ensemble's on the same questions."""
    judge_cfg = {
        "model": args.judge_model,
        "base_url": args.judge_url,
        "prompt": args.judge_prompt,
        "max_new_tokens": args.judge_max_new_tokens,
    }
    judge = judge_from_settings(settings.model_copy(update={"judge": JudgeConfig(**judge_cfg)}))
    assert judge is not None
    per_topic: dict[str, int] = {}
    picked = []
    for i, it in enumerate(items):
        per_topic[it.topic] = per_topic.get(it.topic, 0) + 1
        if not args.judge_per_topic or per_topic[it.topic] <= args.judge_per_topic:
            picked.append(i)
    t = time.perf_counter()
    scores = []
    for n, i in enumerate(picked):
        scores.append(judge.score([items[i].preference], items[i].question, items[i].options))
        if n % 10 == 9:
            log(f"judge: {n + 1}/{len(picked)} questions")
    chosen = [items[i] for i in picked]
    verdicts = np.concatenate(scores) if scores else np.zeros(0)
    return {
        "mcq_accuracy_judge": tie_accuracy(chosen, scores),
        "mcq_accuracy_shipped_same_items": tie_accuracy(chosen, [shipped[i] for i in picked]),
        "judge_unreadable_rate": float(np.isnan(verdicts).mean()) if len(verdicts) else 0.0,
        "judge_questions": len(chosen),
        "judge_model": args.judge_model,
        "judge_seconds": round(time.perf_counter() - t, 1),
    }


def cross_validate(
    data: Path,
    names: Sequence[str],
    items: Sequence[McqItem],
    embedder: Embedder,
    lm: TransformersLM | None,
    cache_dir: Path,
) -> dict[str, float | int | str]:
    """By-topic 4-fold CV of each member and of the ensembles (fold models cached)."""
    figures: dict[str, float | int | str] = {}
    base = EmbeddedRewardModel(embedder, np.zeros(len(FEATURE_NAMES)))
    kinds = ["cross_encoder", "cross_encoder_int8", "embedded", "ensemble"]
    if lm is not None:
        kinds += ["probe", "ensemble_probe"]
    cv_items: list[McqItem] = []
    cv: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    memo: dict[Triple, np.ndarray] = {}
    t_train = time.perf_counter()
    for i, fold in enumerate(cv_folds(names)):
        rest = [t for t in names if t not in fold]
        test = [it for it in items if it.topic in fold]
        cv_items += test
        s = {
            "cross_encoder": mcq_scores(trained_reward_model(data, rest, cache_dir, log=log), test),
            "cross_encoder_int8": mcq_scores(
                trained_reward_model(data, rest, cache_dir, quantize=True), test
            ),
            "embedded": mcq_scores(train(base, reward_items(data, rest)), test),
        }
        pair = (s["cross_encoder"], s["embedded"])
        s["ensemble"] = [_mean_log_odds(*m) for m in zip(*pair, strict=True)]
        if lm is not None:
            probe = trained_probe(data, rest, cache_dir, lm, memo=memo, log=log)
            s["probe"] = mcq_scores(probe, test)
            members = (s["cross_encoder"], s["embedded"], s["probe"])
            s["ensemble_probe"] = [_mean_log_odds(*m) for m in zip(*members, strict=True)]
        for k in kinds:
            figures[f"mcq_accuracy_cv_{k}_fold{i}"] = accuracy(test, s[k])
            cv[k] += s[k]
    figures["mcq_accuracy_cv"] = accuracy(cv_items, cv["ensemble"])
    figures["binary_accuracy_cv"] = binary_accuracy(cv_items, cv["ensemble"])
    for k in kinds:
        figures[f"mcq_accuracy_cv_{k}"] = accuracy(cv_items, cv[k])
    figures["cv_seconds"] = round(time.perf_counter() - t_train, 1)
    return figures


if __name__ == "__main__":
    main()
