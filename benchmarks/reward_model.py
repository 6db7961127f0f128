"""Preference reward model: PrefEval MCQ accuracy (pick the option it scores highest).

``mcq_accuracy``: the shipped model (the MiniLM cross-encoder) on every topic under
``--data`` (split into ``mcq_accuracy_unseen`` / ``mcq_accuracy_seen`` by the topics it was
trained on); ``mcq_accuracy_embedded``: the earlier embedded feature model, as a baseline;
``mcq_accuracy_ensemble``: both together (``EnsembleRewardModel``, mean log-odds).
``--cross-validate``: train on 3/4 of the topics under ``--data`` and test on the other 1/4,
all four folds (``mcq_accuracy_cv``, ``mcq_accuracy_cv_fold<i>``; the fold models are
trained once and cached, ``train_seconds`` is what this run spent training), and the
embedded model's folds in the same run (``mcq_accuracy_cv_embedded``) and the ensemble of
the two fold models (``mcq_accuracy_cv_ensemble``, ``mcq_accuracy_cv_ensemble_fold<i>``);
``binary_accuracy_cv``: share of options on the right side of 0.5 (compliant >= 0.5,
violating < 0.5), balanced. Target: ``mcq_accuracy_cv`` >= 0.90.

    python benchmarks/reward_model.py [--data DIR] [--json] [--cross-validate]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np

from personalign.backends.embedders import load_embedder
from personalign.config import load_settings
from personalign.eval.bench import emit, parser
from personalign.eval.prefeval_tasks import (
    McqItem,
    cv_folds,
    load_mcq,
    reward_items,
    topics,
    trained_reward_model,
)
from personalign.rewards.preference_rm import (
    FEATURE_NAMES,
    CrossEncoderRewardModel,
    EmbeddedRewardModel,
    EnsembleRewardModel,
    PreferenceRewardModel,
    train,
)


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


def binary_accuracy(items: Sequence[McqItem], scores: Sequence[np.ndarray]) -> float:
    good = [s[it.answer] >= 0.5 for it, s in zip(items, scores, strict=True)]
    bad = [
        s[j] < 0.5
        for it, s in zip(items, scores, strict=True)
        for j in range(len(s))
        if j != it.answer
    ]
    return float((np.mean(good) + np.mean(bad)) / 2)


def _mean_log_odds(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What :class:`EnsembleRewardModel` gives for two members' scores ``a`` and ``b``."""
    members = [_Fixed(a), _Fixed(b)]
    return EnsembleRewardModel(members).score(["p"], "q", [""] * len(a))


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
    args = p.parse_args()
    start = time.perf_counter()
    settings = load_settings()
    embedder = load_embedder("minilm", settings.cache_dir)
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
    if args.cross_validate:
        base = EmbeddedRewardModel(embedder, np.zeros(len(FEATURE_NAMES)))
        cv_items: list[McqItem] = []
        cv_scores: list[np.ndarray] = []
        old_scores: list[np.ndarray] = []
        ens_scores: list[np.ndarray] = []
        t_train = time.perf_counter()
        for i, fold in enumerate(cv_folds(names)):
            rest = [t for t in names if t not in fold]
            rm = trained_reward_model(args.data, rest, settings.cache_dir, log=log)
            test = [it for it in items if it.topic in fold]
            s = mcq_scores(rm, test)
            figures[f"mcq_accuracy_cv_fold{i}"] = accuracy(test, s)
            cv_items += test
            cv_scores += s
            o = mcq_scores(train(base, reward_items(args.data, rest)), test)
            e = [_mean_log_odds(a, b) for a, b in zip(s, o, strict=True)]
            figures[f"mcq_accuracy_cv_ensemble_fold{i}"] = accuracy(test, e)
            old_scores += o
            ens_scores += e
        figures["mcq_accuracy_cv"] = accuracy(cv_items, cv_scores)
        figures["binary_accuracy_cv"] = binary_accuracy(cv_items, cv_scores)
        figures["mcq_accuracy_cv_embedded"] = accuracy(cv_items, old_scores)
        figures["mcq_accuracy_cv_ensemble"] = accuracy(cv_items, ens_scores)
        figures["cv_seconds"] = round(time.perf_counter() - t_train, 1)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    emit(figures, title="preference reward model (PrefEval MCQ)", as_json=args.json)


if __name__ == "__main__":
    main()
