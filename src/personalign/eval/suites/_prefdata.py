"""Shared data access for the memory-quality suites and the extractor's recipe
(:mod:`personalign.training.extractor`).

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
from personalign.memory.extract import content_words, split_sentences
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
