"""Training the embedded extractor's sentence classifier (scikit-learn, deterministic).

:func:`fit_classifier` trains the :class:`~personalign.memory.extract.SentenceClassifier`
(class-balanced L2 logistic regression, scikit-learn's, :func:`train_logreg`) on the
labelled sentences of :func:`training_sentences`: PrefEval topics, the hand-written seed
sentences below and the MT-Bench-101 *train* half (read through
:mod:`personalign.eval.suites._prefdata`), with the hyper-parameters of
:class:`ExtractorConfig`. ``scripts/train_extractor.py`` builds the shipped
artifact with it; the PrefEval surfacing suite trains its cross-validation folds with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personalign.backends.embedders import Embedder
from personalign.eval.suites._prefdata import SEED, load_items, mtbench_dialogues, persona_gold
from personalign.memory.extract import (
    SELF_PREF_RE,
    SentenceClassifier,
    cue_features,
    split_sentences,
)
from personalign.training.recipe import data_sha256, recipe_meta


@dataclass(frozen=True)
class ExtractorConfig:
    """Hyper-parameters of :func:`fit_classifier` (the shipped ``extractor_minilm.json``)."""

    embedder: str = "minilm"
    max_negative_rate: float = 0.01
    l2: float = 1.0


# Hand-written seed sentences that widen the classifier beyond PrefEval's phrasing: short,
# everyday first-person preferences (positive) and reactions, requests and facts that look
# similar but state no lasting preference (negative). Not drawn from any evaluation data.
SEED_POSITIVES: tuple[str, ...] = (
    "I love jazz music.",
    "I prefer tea over coffee.",
    "I'm a vegetarian.",
    "I'm vegan.",
    "My favorite color is green.",
    "I like my answers short and to the point.",
    "I prefer bullet points over long paragraphs.",
    "I don't eat pork.",
    "I'm lactose intolerant.",
    "I enjoy hiking on weekends.",
    "I can't stand country music.",
    "I prefer window seats on planes.",
    "I like spicy food.",
    "I'm not a fan of horror movies.",
    "I always travel with carry-on luggage only.",
    "I prefer Python to Java.",
    "I only buy second-hand clothes.",
    "I'd rather take the train than fly.",
    "My favourite cuisine is Japanese.",
    "I love reading science fiction.",
    "I prefer to work out in the morning.",
    "I dislike crowded places.",
    "I'm into board games.",
    "I prefer dark mode in every app.",
    "I avoid caffeine after noon.",
    "I like formal language in emails.",
    "Please always answer me in Spanish.",
    "I prefer metric units.",
    "I love cats but I'm allergic to dogs.",
    "I'm trying to eat low-carb.",
    "I never drink alcohol.",
    "I prefer Android phones.",
    "I like minimalist furniture.",
    "I enjoy cooking Italian food at home.",
    "I prefer podcasts to audiobooks.",
    "I'm a big fan of basketball.",
    "I like to learn by doing rather than by reading.",
    "I prefer aisle seats.",
    "I only eat halal food.",
    "I keep kosher.",
    "I hate waking up early.",
    "I love beach holidays.",
    "I prefer budget hotels.",
    "I'd like recipes without nuts.",
    "I prefer examples in code rather than prose.",
    "I'm gluten-free.",
    "I like warm colors in my home.",
    "I prefer paperbacks over e-books.",
    "I don't like sweet drinks.",
    "I prefer quiet restaurants.",
    "I'm really into indie rock.",
    "I love strategy games.",
    "I usually cycle to work.",
    "I prefer electric cars.",
    "I enjoy documentaries more than dramas.",
    "My go-to breakfast is oatmeal with berries.",
    "I prefer natural skincare products.",
    "I'm afraid of heights, so no climbing activities for me.",
    "I like detailed explanations with sources.",
    "I prefer video calls to phone calls.",
)
SEED_REPEATS = 3
SEED_NEGATIVES: tuple[str, ...] = (
    "I love that idea!",
    "I like this answer, thanks.",
    "That sounds great!",
    "I love the way you explained it.",
    "Thanks, that's really helpful.",
    "I like the second paragraph, can you expand it?",
    "Can you recommend a good book?",
    "What's the weather like in Paris?",
    "Write a haiku about autumn.",
    "I need a recipe for dinner tonight.",
    "I went to the store yesterday.",
    "My sister is visiting next week.",
    "I have a meeting at 3 pm.",
    "I'm working on a report about climate change.",
    "Please summarize this article.",
    "I just finished the first chapter.",
    "We are planning a team event.",
    "I love how clear this is.",
    "I'm curious how this works.",
    "Let me think about it.",
    "I'm not sure I understand.",
    "Could you give me another example?",
    "I liked your previous suggestion better.",
    "My computer is running slowly.",
    "I have two kids and a dog.",
    "I'm preparing for an exam next month.",
    "I really appreciate your help!",
    "I'd like to know more about black holes.",
    "I want to write a cover letter.",
    "I'm looking for ideas for a birthday party.",
    "How do I fix a flat tire?",
    "I read an article about that yesterday.",
    "I would like a summary in three sentences.",
    "I think the answer is 42.",
    "I enjoyed our conversation.",
    "Great, that works.",
    "I'm from Canada.",
    "I love it, thank you!",
    "I see what you mean.",
    "I'd like to try that.",
)


def train_logreg(
    x: np.ndarray, y: np.ndarray, *, l2: float = 1.0, iters: int = 30
) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression by Newton's method: deterministic, no seed needed.

    scikit-learn's :class:`~sklearn.linear_model.LogisticRegression` (``newton-cholesky``)
    minimising ``sum(balanced_weight * log_loss) + l2 / 2 * |w|^2`` (``C = 1 / l2``; the bias
    is not penalised). ``x``: ``(n, d)``, ``y``: ``(n,)`` in {0, 1}, both classes present;
    ``iters``: the most Newton steps. Returns ``(weights (d,), bias)``.
    """
    from personalign.extras import require

    require("train", ["sklearn"], what="fitting a logistic regression")
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(
        C=1.0 / l2, class_weight="balanced", solver="newton-cholesky", tol=1e-10, max_iter=iters
    )
    model.fit(x, y)
    return np.asarray(model.coef_[0], dtype=np.float64), float(model.intercept_[0])


def training_sentences(data_dir: Path, train_topics: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Labelled sentences for the extractor classifier.

    Sources: ``train_topics`` of PrefEval, the seed sentences above, the MT-Bench train half.
    Positive: each explicit preference, the persona sentence that states the preference,
    the seed positives. Negative: the other persona-conversation sentences, PrefEval
    questions and choice requests, the seed negatives, and MT-Bench user sentences, except
    those where the user says something about themselves with a preference word
    (``SELF_PREF_RE``: "I'm a vegetarian", "I prefer Windows"): those are real preferences,
    so they are left out rather than taught as negatives.
    """
    texts: list[str] = []
    labels: list[int] = []

    def add(t: str, y: int) -> None:
        t = t.strip()
        if t:
            texts.append(t)
            labels.append(y)

    for topic in train_topics:
        for item in load_items(data_dir, "explicit", topic):
            add(item["preference"], 1)
            add(item["question"], 0)
        for item in load_items(data_dir, "choice", topic):
            add(item["conversation"]["query"], 0)
        for item in load_items(data_dir, "persona", topic):
            _, gold = persona_gold(item)
            for turn in item["conversation"].values():
                for sent in split_sentences(turn["user"]):
                    add(sent, 1 if sent == gold else 0)
    for _ in range(SEED_REPEATS):  # few but varied: repeated so they weigh against PrefEval's
        for t in SEED_POSITIVES:
            add(t, 1)
        for t in SEED_NEGATIVES:
            add(t, 0)
    for dialogue in mtbench_dialogues(data_dir, "train"):
        for user, _ in dialogue:
            for sent in split_sentences(user):
                if not SELF_PREF_RE.search(sent):  # a real preference in chat: unlabelled
                    add(sent, 0)
    return texts, np.asarray(labels, dtype=np.float64)


def fit_classifier(
    embedder: Embedder,
    data_dir: Path,
    train_topics: Sequence[str],
    *,
    max_negative_rate: float | None = None,
    l2: float | None = None,
    config: ExtractorConfig | None = None,
) -> SentenceClassifier:
    """Train the extractor classifier on ``train_topics``.

    Hyper-parameters: ``config`` (default :class:`ExtractorConfig`; its ``embedder`` is the
    name ``embedder`` was loaded by), ``max_negative_rate`` and ``l2`` override it; the
    classifier's meta records them and the recipe.

    The threshold is the lowest probability at which at most ``max_negative_rate`` of the
    MT-Bench training sentences (ordinary chat) would be kept, clipped to [0.5, 0.95].
    """
    cfg = config or ExtractorConfig()
    if max_negative_rate is not None:
        cfg = dataclasses.replace(cfg, max_negative_rate=max_negative_rate)
    if l2 is not None:
        cfg = dataclasses.replace(cfg, l2=l2)
    max_negative_rate, l2 = cfg.max_negative_rate, cfg.l2
    texts, y = training_sentences(data_dir, train_topics)
    vectors = embedder.embed(texts).astype(np.float64)
    x = np.hstack([vectors, cue_features(texts).astype(np.float64)])
    w, b = train_logreg(x, y, l2=l2)
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    neg = np.sort(p[y == 0])[::-1]
    cut = int(np.floor(max_negative_rate * len(neg)))
    threshold = float(np.clip(neg[cut] + 1e-6 if len(neg) else 0.5, 0.5, 0.95))
    pos = p[y == 1]
    meta = {
        "trained_on_topics": list(train_topics),
        "sentences": len(texts),
        "positives": int(y.sum()),
        "train_recall": round(float((pos >= threshold).mean()), 4),
        "train_negative_rate": round(float((p[y == 0] >= threshold).mean()), 5),
        "l2": l2,
        "max_negative_rate": max_negative_rate,
        "seed": SEED,
        "recipe": recipe_meta(fit_classifier, cfg, data=data_sha256([texts, y.tolist()])),
    }
    return SentenceClassifier(
        weights=w, bias=b, threshold=threshold, embedder=embedder.name, meta=meta
    )
