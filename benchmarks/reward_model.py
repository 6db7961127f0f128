"""Preference reward model: PrefEval MCQ accuracy (pick the option it scores highest).

``mcq_accuracy``: the shipped model on every topic under ``--data`` (split into
``mcq_accuracy_unseen`` / ``mcq_accuracy_seen`` by the topics it was trained on).
``--cross-validate``: train on 3/4 of the topics under ``--data`` and test on the other 1/4,
all four folds (``mcq_accuracy_cv``, ``mcq_accuracy_cv_fold<i>``); ``binary_accuracy_cv``:
share of options on the right side of 0.5 (compliant >= 0.5, violating < 0.5), balanced.
Target: ``mcq_accuracy_cv`` >= 0.90.

    python benchmarks/reward_model.py [--data DIR] [--json] [--cross-validate]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from personalign.backends.embedders import load_embedder
from personalign.config import load_settings
from personalign.eval.bench import emit, parser
from personalign.eval.prefeval_tasks import McqItem, cv_folds, load_mcq, reward_items, topics
from personalign.rewards.preference_rm import FEATURE_NAMES, EmbeddedRewardModel, train


def mcq_scores(rm: EmbeddedRewardModel, items: Sequence[McqItem]) -> list[np.ndarray]:
    """The model's scores of each item's options."""
    return [rm.score([it.preference], it.question, it.options) for it in items]


def accuracy(items: Sequence[McqItem], scores: Sequence[np.ndarray]) -> float:
    if not items:
        return float("nan")
    return float(
        np.mean([int(np.argmax(s)) == it.answer for it, s in zip(items, scores, strict=True)])
    )


def binary_accuracy(items: Sequence[McqItem], scores: Sequence[np.ndarray]) -> float:
    good = [s[it.answer] >= 0.5 for it, s in zip(items, scores, strict=True)]
    bad = [
        s[j] < 0.5
        for it, s in zip(items, scores, strict=True)
        for j in range(len(s))
        if j != it.answer
    ]
    return float((np.mean(good) + np.mean(bad)) / 2)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--cross-validate", action="store_true", help="by-topic 4-fold CV")
    args = p.parse_args()
    start = time.perf_counter()
    embedder = load_embedder("minilm", load_settings().cache_dir)
    names = topics(args.data)
    items = load_mcq(args.data, names)
    shipped = EmbeddedRewardModel.load(embedder)
    trained_on = set(map(str, shipped.meta.get("topics", [])))  # type: ignore[call-overload]
    scores = mcq_scores(shipped, items)
    seen = [i for i, it in enumerate(items) if it.topic in trained_on]
    unseen = [i for i, it in enumerate(items) if it.topic not in trained_on]
    figures: dict[str, float | int | str] = {
        "mcq_accuracy": accuracy(items, scores),
        "mcq_accuracy_unseen": accuracy([items[i] for i in unseen], [scores[i] for i in unseen]),
        "mcq_accuracy_seen": accuracy([items[i] for i in seen], [scores[i] for i in seen]),
        "binary_accuracy": binary_accuracy(items, scores),
        "questions": len(items),
        "unseen_topics": len({items[i].topic for i in unseen}),
    }
    if args.cross_validate:
        base = EmbeddedRewardModel(embedder, np.zeros(len(FEATURE_NAMES)))
        all_scores: list[np.ndarray] = []
        all_items: list[McqItem] = []
        for i, fold in enumerate(cv_folds(names)):
            rest = [t for t in names if t not in fold]
            rm = train(base, reward_items(args.data, rest))
            test = [it for it in items if it.topic in fold]
            s = mcq_scores(rm, test)
            figures[f"mcq_accuracy_cv_fold{i}"] = accuracy(test, s)
            all_scores += s
            all_items += test
        figures["mcq_accuracy_cv"] = accuracy(all_items, all_scores)
        figures["binary_accuracy_cv"] = binary_accuracy(all_items, all_scores)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    emit(figures, title="preference reward model (PrefEval MCQ)", as_json=args.json)


if __name__ == "__main__":
    main()
