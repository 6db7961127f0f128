"""PrefEval tasks shared by ``benchmarks/prefeval_mcq.py``, ``benchmarks/decoding.py``,
``benchmarks/reward_model.py`` and ``scripts/train_reward_model.py``.

* MCQ items with their options shuffled by a fixed seed (the data lists the compliant option
  first) and cross-validation folds by topic; reward-model training groups and the fold
  reward models (each trained without the topics it scores, cached).
* The memory step of the PrefEval protocol: the preference is stored among 100 unrelated
  MT-Bench-101 user turns (episodes) in a SQLite memory, retrieved for the question as the
  pipeline's defaults do (``PersonalizeOptions``: top ``k`` = 8; preferences with cosine >=
  0.15, raw turns >= 0.5; the topic-tag rule is left out), and rendered into the system
  prompt with the safety layer's quoted block. Extraction is skipped: the preference is
  stored as stated.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from personalign.backends.embedders import Embedder
from personalign.generation.prompt import build_messages
from personalign.types import Message, PreferenceIn

if TYPE_CHECKING:
    from personalign.backends.models.local import TransformersLM
    from personalign.rewards.lm_probe import LMProbeRewardModel, Triple
    from personalign.rewards.preference_rm import CrossEncoderRewardModel, PreferenceRewardModel

SEED = 20250611
FILLER_TURNS = 100


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"missing {path}: pass the evaluation data folder with --data")
    return path


def topics(data_dir: Path) -> list[str]:
    """PrefEval topics with MCQ options under ``data_dir``, sorted."""
    folder = _require(data_dir / "prefeval" / "mcq_options")
    return sorted(p.stem for p in folder.glob("*.json"))


def cv_folds(names: Sequence[str], n_folds: int = 4) -> list[list[str]]:
    """``n_folds`` disjoint folds of the sorted topics (fold ``i`` takes every n-th from i)."""
    ordered = sorted(names)
    return [ordered[i::n_folds] for i in range(n_folds)]


@dataclass(frozen=True)
class McqItem:
    """One PrefEval MCQ question; ``options`` are shuffled, ``answer`` indexes the compliant."""

    topic: str
    index: int
    preference: str
    question: str
    options: tuple[str, ...]
    answer: int

    @property
    def key(self) -> str:
        return f"{self.topic}/{self.index}"


def load_mcq(data_dir: Path, names: Sequence[str] | None = None, seed: int = SEED) -> list[McqItem]:
    """MCQ items of ``names`` (default: every topic), options shuffled with ``seed``."""
    items: list[McqItem] = []
    for topic in names if names is not None else topics(data_dir):
        path = _require(data_dir / "prefeval" / "mcq_options" / f"{topic}.json")
        for i, raw in enumerate(json.loads(path.read_text())):
            options = list(raw["classification_task_options"])
            order = list(range(len(options)))
            random.Random(f"{seed}:{topic}:{i}").shuffle(order)
            items.append(
                McqItem(
                    topic=topic,
                    index=i,
                    preference=raw["preference"],
                    question=raw["question"],
                    options=tuple(options[j] for j in order),
                    answer=order.index(0),
                )
            )
    return items


def load_choice_items(data_dir: Path, topic: str) -> list[dict[str, Any]]:
    """The implicit choice-based items of ``topic`` (options with the ``aligned_op``)."""
    folder = data_dir / "prefeval" / "implicit_preference" / "choice-based"
    path = folder / f"{topic}.json"
    if not path.is_file():
        return []
    items: list[dict[str, Any]] = json.loads(path.read_text())
    return items


def filler_turns(data_dir: Path) -> list[str]:
    """Every user turn of MT-Bench-101 (the unrelated turns between preference and question)."""
    path = _require(data_dir / "mt-bench-101" / "mtbench101.jsonl")
    turns: list[str] = []
    for line in path.read_text().splitlines():
        if line.strip():
            turns += [t["user"] for t in json.loads(line)["history"] if t["user"].strip()]
    return turns


def mtbench_first_turns(data_dir: Path) -> list[str]:
    """The first user turn of each MT-Bench-101 dialogue."""
    path = _require(data_dir / "mt-bench-101" / "mtbench101.jsonl")
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line)["history"][0]["user"])
    return out


class CachingEmbedder:
    """Remembers each text's vector: the filler turns repeat across users."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.dim: int = inner.dim
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` unit rows; only unseen texts reach the inner embedder."""
        items = list(texts)
        missing = list(dict.fromkeys(t for t in items if t not in self._cache))
        if missing:
            for t, v in zip(missing, self.inner.embed(missing), strict=True):
                self._cache[t] = v
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in items])


def render_block(texts: Sequence[str]) -> str:
    """The memory block as the pipeline renders it (the safety layer's quoted data block)."""
    from personalign.safety.injection import render_memories_block

    return render_memories_block(list(texts))


@dataclass(frozen=True)
class Contexts:
    """The plain and the personal conversation for one question, and what memory gave:
    ``retrieved`` every memory shown (preferences first, then raw turns), ``preferences`` the
    preferences among them (what the pipeline hands a reward model)."""

    plain: list[Message]
    personal: list[Message]
    retrieved: list[str]
    preferences: list[str]


class MemoryHarness:
    """The PrefEval memory step on a temporary SQLite memory (one user per question)."""

    def __init__(
        self,
        data_dir: Path,
        embedder: Embedder,
        *,
        fillers: int = FILLER_TURNS,
        k: int | None = None,
        min_score: float | None = None,
        episode_min_score: float | None = None,
        seed: int = SEED,
    ) -> None:
        from personalign.backends.stores.sqlite import SQLiteStore
        from personalign.config import Settings

        self._dir = tempfile.TemporaryDirectory(prefix="personalign-bench-")
        self.embedder = CachingEmbedder(embedder)
        self.store = SQLiteStore(Path(self._dir.name) / "memory.db", self.embedder)
        self.retrieval = Settings(home=Path(self._dir.name)).retrieval
        # Fillers come from a fixed sample of 300 turns (embedded once, reused across users).
        self.pool = random.Random(seed).sample(filler_turns(data_dir), 300)
        from personalign.pipeline import PersonalizeOptions

        defaults = PersonalizeOptions()  # retrieval as the pipeline does it
        self.fillers, self.seed = fillers, seed
        self.k = defaults.k if k is None else k
        self.min_score = defaults.min_score if min_score is None else min_score
        self.episode_min_score = (
            defaults.episode_min_score if episode_min_score is None else episode_min_score
        )

    def contexts(self, key: str, preference: str, question: str) -> Contexts:
        """Store ``preference`` then the filler turns for a fresh user, retrieve for
        ``question``; return the plain and the personal conversation."""
        user = "u" + "".join(c if c.isalnum() else "_" for c in key)
        rng = random.Random(f"{self.seed}:{key}")
        turns = rng.sample(self.pool, self.fillers)
        items = [PreferenceIn(text=preference, kind="explicit")]
        items += [PreferenceIn(text=t[:3900], kind="episode") for t in turns]
        if not self.store.has_user(user=user):
            self.store.add_many(items, user=user)
        hits = self.store.search(question, user=user, k=self.k, config=self.retrieval)
        kept = [
            h
            for h in hits
            if h.signals.get("dense", 0.0)
            >= (self.episode_min_score if h.record.kind == "episode" else self.min_score)
        ]
        kept.sort(key=lambda h: h.record.kind == "episode")
        texts = [h.record.text for h in kept]
        prefs = [h.record.text for h in kept if h.record.kind != "episode"]
        history = [Message(role="user", content=question)]
        block = render_block(texts) if texts else None
        personal = build_messages(history, block)
        return Contexts(build_messages(history, None), personal, texts, prefs)

    def close(self) -> None:
        self.store.close()
        self._dir.cleanup()


RewardItem = tuple[str, str, list[str]]
"""(preference, prompt, options): the first option respects the preference, the rest do not."""


def reward_items(
    data_dir: Path, names: Sequence[str], *, hard_negatives: bool = True
) -> list[RewardItem]:
    """Training groups for the reward model from the topics ``names``.

    MCQ: the compliant option and the three violating ones. Choice-based: the aligned option
    and the other three. Hard negatives (ours): for each MCQ item, the compliant option
    followed by a violating one (a reply that also recommends something the user avoids)
    against the compliant option alone.
    """
    items: list[RewardItem] = []
    for topic in names:
        path = _require(data_dir / "prefeval" / "mcq_options" / f"{topic}.json")
        for raw in json.loads(path.read_text()):
            good, *bad = raw["classification_task_options"]
            items.append((raw["preference"], raw["question"], [good, *bad]))
            if hard_negatives and bad:
                items.append(
                    (raw["preference"], raw["question"], [good, f"{good} {bad[0]}", *bad[1:]])
                )
        for raw in load_choice_items(data_dir, topic):
            options = list(raw["options"])
            if raw.get("aligned_op") in options and len(options) == 4:
                aligned = options.index(raw["aligned_op"])
                rest = [o for i, o in enumerate(options) if i != aligned]
                items.append((raw["preference"], raw["implicit_query"], [options[aligned], *rest]))
    return [it for it in items if len(it[2]) == 4]


def trained_reward_model(
    data_dir: Path,
    names: Sequence[str],
    cache_dir: Path,
    *,
    quantize: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> CrossEncoderRewardModel:
    """The cross-encoder reward model trained on the topics ``names`` only (the shipped
    recipe), trained once and kept under ``<cache_dir>/reward_folds/`` by the hash of its
    training data and recipe (training is seeded, so a cached model is the one training
    would give). ``quantize``: run its int8 export (default: as the shipped model runs)."""
    import hashlib

    from personalign.rewards.preference_rm import QUANTIZE_CROSS_ENCODER, CrossEncoderRewardModel
    from personalign.training.finetune import data_hash
    from personalign.training.reward_model import (
        CROSS_ENCODER_RECIPE,
        cross_encoder_examples,
        train_cross_encoder,
    )

    items = reward_items(data_dir, names)
    texts, pairs, labels, weights = cross_encoder_examples(items)
    key = hashlib.sha256(
        (data_hash(texts, labels, pairs, weights) + json.dumps(CROSS_ENCODER_RECIPE)).encode()
    ).hexdigest()[:20]
    path = Path(cache_dir) / "reward_folds" / f"{key}.safetensors"
    if not path.is_file():
        if log is not None:
            log(f"training the reward model on {len(names)} topics ({len(items)} groups)")
        train_cross_encoder(items, path, extra_meta={"topics": sorted(names)}, log=log)
    if quantize is None:
        quantize = QUANTIZE_CROSS_ENCODER
    return CrossEncoderRewardModel.load(cache_dir, path, quantize=quantize)


def trained_probe(
    data_dir: Path,
    names: Sequence[str],
    cache_dir: Path,
    lm: TransformersLM,
    *,
    memo: dict[Triple, np.ndarray] | None = None,
    log: Callable[[str], None] | None = None,
) -> LMProbeRewardModel:
    """The LM probe (:mod:`personalign.rewards.lm_probe`) trained on the topics ``names``
    only, kept under ``<cache_dir>/reward_folds/`` by the hash of its training data, recipe
    and model (training is deterministic). ``memo`` shares features between folds."""
    import hashlib

    from personalign.rewards.lm_probe import FEATURES_VERSION, PROBE_LAYERS, LMProbeRewardModel
    from personalign.training.reward_model import PROBE_RECIPE, train_probe

    items = reward_items(data_dir, names)
    blob = json.dumps([items, PROBE_RECIPE, PROBE_LAYERS, FEATURES_VERSION, lm.name, lm.dtype])
    key = hashlib.sha256(blob.encode()).hexdigest()[:20]
    path = Path(cache_dir) / "reward_folds" / f"probe-{key}.npz"
    if path.is_file():
        return LMProbeRewardModel.load(lm, path)
    if log is not None:
        log(f"training the LM probe on {len(names)} topics ({len(items)} groups)")
    probe = train_probe(lm, items, memo=memo, extra_meta={"topics": sorted(names)}, log=log)
    probe.save(path)
    return probe


def fold_reward_models(
    data_dir: Path,
    names: Sequence[str],
    cache_dir: Path,
    *,
    kind: str = "ensemble",
    embedder: Embedder | None = None,
    lm: TransformersLM | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, PreferenceRewardModel]:
    """For each topic of ``names``, the reward model trained on the topics outside its
    fold (:func:`cv_folds`): it never saw the topic it scores. ``kind``: ``cross_encoder``
    (:func:`trained_reward_model`), ``embedded`` (the feature model over ``embedder``) or
    ``ensemble`` (both, as :func:`personalign.rewards.preference_rm.load_reward_model`,
    with the LM probe over ``lm`` when it is given)."""
    from personalign.errors import ConfigError
    from personalign.rewards.preference_rm import (
        FEATURE_NAMES,
        EmbeddedRewardModel,
        EnsembleRewardModel,
    )
    from personalign.training.reward_model import train

    if kind not in ("cross_encoder", "embedded", "ensemble"):
        raise ConfigError(f"unknown reward model kind {kind!r}")
    if kind != "cross_encoder" and embedder is None:
        raise ConfigError(f"the {kind} reward model needs the MiniLM embedder")
    out: dict[str, PreferenceRewardModel] = {}
    memo: dict[Triple, np.ndarray] = {}
    for fold in cv_folds(names):
        rest = [t for t in names if t not in fold]
        models: list[PreferenceRewardModel] = []
        if kind != "embedded":
            models.append(trained_reward_model(data_dir, rest, cache_dir, log=log))
        if kind != "cross_encoder":
            assert embedder is not None
            base = EmbeddedRewardModel(embedder, np.zeros(len(FEATURE_NAMES)))
            models.append(train(base, reward_items(data_dir, rest)))
        if kind == "ensemble" and lm is not None:
            models.append(trained_probe(data_dir, rest, cache_dir, lm, memo=memo, log=log))
        rm = models[0] if len(models) == 1 else EnsembleRewardModel(models)
        out.update(dict.fromkeys(fold, rm))
    return out


def option_logprobs(lm: Any, messages: Sequence[Message], options: Sequence[str]) -> np.ndarray:
    """``(len(options), 2)``: each option's summed log-probability as the assistant's reply
    to ``messages`` and its token count (``LanguageModel.logprobs``)."""
    scores = lm.logprobs(messages, list(options))
    return np.array([[s.sum_logprob, s.num_tokens] for s in scores], dtype=np.float64)
