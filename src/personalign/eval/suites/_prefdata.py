"""Shared data access for the memory-quality suites and ``scripts/train_extractor.py``.

PrefEval (``prefeval/``) is read per topic and variant; MT-Bench-101 (``mt-bench-101/``)
dialogues are split once, by a hash of their id, into a *train* half (negatives for the
extractor classifier) and a *filler* half (the unrelated turns placed between a preference and
its question), so the junk figure is never measured on turns the classifier was trained on.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from personalign.backends.embedders import Embedder
from personalign.memory.extract import (
    SELF_PREF_RE,
    SentenceClassifier,
    content_words,
    cue_features,
    split_sentences,
    train_logreg,
)
from personalign.types import Message

Variant = Literal["explicit", "choice", "persona"]
VARIANTS: tuple[Variant, ...] = ("explicit", "choice", "persona")
_VARIANT_DIRS: dict[Variant, str] = {
    "explicit": "explicit_preference",
    "choice": "implicit_preference/choice-based",
    "persona": "implicit_preference/persona-driven",
}
Split = Literal["train", "filler"]
SEED = 20250101

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


class CachingEmbedder:
    """Wraps an :class:`Embedder`, remembering each text's vector (benchmarks repeat texts)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.dim: int = inner.dim
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts``, embedding only those not seen before (in one batch)."""
        items = list(texts)
        missing = list(dict.fromkeys(t for t in items if t not in self._cache))
        if missing:
            for t, v in zip(missing, self.inner.embed(missing), strict=True):
                self._cache[t] = v
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in items])


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"missing {path}: pass the evaluation data folder with --data")
    return path


def topics(data_dir: Path) -> list[str]:
    """The PrefEval topics present under ``data_dir``, sorted."""
    folder = _require(data_dir / "prefeval" / _VARIANT_DIRS["explicit"])
    return sorted(p.stem for p in folder.glob("*.json"))


def load_items(data_dir: Path, variant: Variant, topic: str) -> list[dict[str, Any]]:
    """The items of one PrefEval variant and topic."""
    path = _require(data_dir / "prefeval" / _VARIANT_DIRS[variant] / f"{topic}.json")
    items: list[dict[str, Any]] = json.loads(path.read_text())
    return items


def persona_gold(item: dict[str, Any]) -> tuple[int, str]:
    """The persona conversation's user turn (index) and sentence that state the preference:
    the user sentence sharing the most content words with the item's ``preference``."""
    pref = content_words(item["preference"])
    best: tuple[float, int, str] = (-1.0, 0, "")
    for key, turn in sorted(item["conversation"].items(), key=lambda kv: int(kv[0])):
        for sent in split_sentences(turn["user"]):
            words = content_words(sent)
            score = len(pref & words) / (len(pref) or 1)
            if score > best[0]:
                best = (score, int(key), sent)
    return best[1], best[2]


def preference_conversation(
    item: dict[str, Any], variant: Variant, prefix: str
) -> tuple[list[Message], set[str]]:
    """The messages that reveal the item's preference, and the ids of its gold user turns.

    explicit: the preference as one user turn. choice: the user's request, the assistant's
    options, the user's pick, the acknowledgment (gold: both user turns). persona: the whole
    persona conversation (gold: the user turn that states the preference, see
    :func:`persona_gold`).
    """
    if variant == "explicit":
        mid = f"{prefix}:pref"
        return [Message(role="user", content=item["preference"], id=mid)], {mid}
    if variant == "choice":
        c = item["conversation"]
        q, s = f"{prefix}:query", f"{prefix}:select"
        msgs = [
            Message(role="user", content=c["query"], id=q),
            Message(role="assistant", content=c["assistant_options"], id=f"{prefix}:options"),
            Message(role="user", content=c["user_selection"], id=s),
            Message(role="assistant", content=c["assistant_acknowledgment"], id=f"{prefix}:ack"),
        ]
        return msgs, {q, s}
    gold_turn, _ = persona_gold(item)
    msgs = []
    for key, turn in sorted(item["conversation"].items(), key=lambda kv: int(kv[0])):
        msgs.append(Message(role="user", content=turn["user"], id=f"{prefix}:u{key}"))
        msgs.append(Message(role="assistant", content=turn["assistant"], id=f"{prefix}:a{key}"))
    return msgs, {f"{prefix}:u{gold_turn}"}


def _split_of(dialogue_id: Any) -> Split:
    h = hashlib.blake2b(str(dialogue_id).encode(), digest_size=4).digest()
    return "train" if h[0] % 2 == 0 else "filler"


def mtbench_dialogues(data_dir: Path, split: Split) -> list[list[tuple[str, str]]]:
    """MT-Bench-101 dialogues of one half, each a list of ``(user, assistant)`` turns."""
    path = _require(data_dir / "mt-bench-101" / "mtbench101.jsonl")
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        if _split_of(f"{d['task']}:{d['id']}") == split:
            out.append([(h["user"], h["bot"]) for h in d["history"]])
    return out


def filler_messages(
    dialogues: Sequence[Sequence[tuple[str, str]]], n_user_turns: int, *, seed: int, prefix: str
) -> list[Message]:
    """``n_user_turns`` user turns (with their assistant replies) from whole dialogues drawn in
    a seeded random order."""
    rng = random.Random(seed)
    order = list(range(len(dialogues)))
    rng.shuffle(order)
    msgs: list[Message] = []
    n = 0
    for d in order:
        for user, bot in dialogues[d]:
            if n >= n_user_turns:
                return msgs
            msgs.append(Message(role="user", content=user, id=f"{prefix}:f{n}"))
            msgs.append(Message(role="assistant", content=bot, id=f"{prefix}:fa{n}"))
            n += 1
    return msgs


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
    max_negative_rate: float = 0.01,
    l2: float = 1.0,
) -> SentenceClassifier:
    """Train the extractor classifier on ``train_topics``.

    The threshold is the lowest probability at which at most ``max_negative_rate`` of the
    MT-Bench training sentences (ordinary chat) would be kept, clipped to [0.5, 0.95].
    """
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
    }
    return SentenceClassifier(
        weights=w, bias=b, threshold=threshold, embedder=embedder.name, meta=meta
    )
