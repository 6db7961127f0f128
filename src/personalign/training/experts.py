"""Dimension experts: one LoRA per style pole, DPO-trained on pairs ranked by the measured style.

For each dimension of :mod:`personalign.rewards.dimensions` and each pole (``+``: more of
the dimension, ``-``: less), :func:`train_experts` trains one LoRA "expert" on the base model,
in three resumable stages under ``out_dir``:

1. **Samples** (``samples.jsonl``): the base model answers every prompt ``candidates`` times,
   once for all experts (batched; the ``i``-th candidate of the ``k``-th prompt gets the style
   hint ``STYLE_HINTS[(k * candidates + i) % 7]`` of :mod:`personalign.feedback.pairs` as a
   system prompt, to spread the candidates over the dimensions; batch ``b`` is sampled with
   seed ``seed + b``). The file's first line holds the sampling recipe's hash: a rerun with the
   same sampling recipe reuses it, and an interrupted sampling resumes from its finished
   batches (``.samples-<hash>.partial.jsonl``).
2. **Pairs** (``pairs/<folder>.jsonl``, one row per pair): for each prompt, the candidate
   with the highest signed score (``+1`` or ``-1`` times the dimension's measured score, never
   a reward model) over the one with the lowest, when they differ by ``min_margin``; the
   ``max_pairs`` pairs of largest margin are kept, in prompt order. :func:`load_pairs` reads
   them back (the steering vectors are computed from the same pairs).
3. **Experts** (``<folder>/``, e.g. ``conciseness-plus/``): TRL's ``DPOTrainer`` with a PEFT
   LoRA (:func:`personalign.feedback.train.train_pairs`), saved as a standard PEFT folder plus
   ``recipe.json`` (the pole, the recipe, its hash, the pairs' count and hash, the metrics).
   An expert whose ``recipe.json`` has the same hash is skipped; an interrupted one resumes
   from its checkpoints in ``.work/<folder>-<hash>/``.

Every file is written to a temporary name and renamed into place. The layout and the pole
names (``conciseness+`` in ``conciseness-plus/``) are :mod:`personalign.generation.soups`'s,
which lists the experts and merges them into a user's soup.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from personalign.errors import ConfigError, NotFoundError, ValidationError
from personalign.feedback.pairs import (
    STYLE_HINTS,
    PreferencePair,
    best_vs_worst,
    data_hash,
    hinted_conversations,
)
from personalign.generation.soups import (
    ADAPTER_FILES,
    RECIPE_FILE,
    SIGNS,
    parse_pole,
    pole_folder,
    pole_name,
    pole_of_folder,
)
from personalign.rewards.dimensions import DIMENSION_NAMES, DIMENSIONS
from personalign.training.recipe import library_versions
from personalign.types import utcnow

if TYPE_CHECKING:
    from personalign.backends.models.local import DType

RECIPE_VERSION = 1
"""Bumped when the sampling, the pairing or the training changes meaning: every hash changes."""
SAMPLES_FILE = "samples.jsonl"
PAIRS_DIR = "pairs"
WORK_DIR = ".work"

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: ``stage`` is ``sampling`` or a pole (``warmth-``) whose
DPO steps are counted."""

_SAMPLING_FIELDS = (
    "base_model",
    "candidates",
    "gen_max_new_tokens",
    "gen_temperature",
    "gen_top_p",
    "gen_batch_size",
    "gen_dtype",
    "seed",
)
_TRAINING_FIELDS = (
    "lora_r",
    "lora_alpha",
    "beta",
    "learning_rate",
    "epochs",
    "max_steps",
    "batch_size",
    "max_length",
    "seed",
)


def packaged_prompts() -> list[str]:
    """The shipped expert prompts (``training/data/expert_prompts.json``): 64 everyday,
    tutoring, shopping, travel and how-to questions."""
    text = resources.files("personalign.training").joinpath("data/expert_prompts.json")
    return list(json.loads(text.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class ExpertsConfig:
    """Everything the experts depend on (all of it is in :meth:`recipe` and its hash).

    Data: the first ``n_prompts`` (0: all) of ``prompts`` (a JSON file holding a list of
    strings; None: :func:`packaged_prompts`), ``candidates`` samples each of at most
    ``gen_max_new_tokens`` tokens at ``gen_temperature`` / ``gen_top_p``, ``gen_batch_size``
    conversations per batch. Pairs: ``min_margin`` between the chosen's and the rejected's
    score, at most ``max_pairs`` per expert, at least ``min_pairs`` to train one.
    LoRA: ``lora_r``, ``lora_alpha``. DPO: ``beta``, ``learning_rate``, ``epochs`` (or
    ``max_steps`` > 0), ``batch_size``, ``max_length`` tokens per example, a checkpoint
    every ``save_steps``. Runtime: ``threads`` torch threads, ``seed``.

    The defaults are sized for every expert of the embedded SmolLM2-135M (10 experts) on 2
    CPU cores within 45 minutes: 384 samples of <= 96 tokens in bfloat16 at batch 16, then
    per expert <= 48 pairs, two epochs at batch 4 (<= 24 steps). Measured on the
    ``conciseness+`` expert (37 pairs; its measured property on 8 held-out prompts of
    ``benchmarks/depths.py``, base 0.687): one epoch at 5e-4 moved it to 0.696 (too weak),
    three at 1e-3 to 0.945 with degenerate replies ("Bella, no."), two at 5e-4 to 0.762
    with fluent ones (7 of 8 prompts moved): the defaults.
    """

    base_model: str = "smollm2"
    """``smollm2`` (the embedded model's saved copy) or a local model directory."""
    dimensions: tuple[str, ...] = DIMENSION_NAMES
    poles: tuple[str, ...] = SIGNS
    """Which poles of each dimension: ``+`` (more of it) and/or ``-`` (less)."""
    prompts: str | None = None
    n_prompts: int = 0
    candidates: int = 6
    gen_max_new_tokens: int = 96
    gen_temperature: float = 0.9
    gen_top_p: float = 0.95
    gen_batch_size: int = 16
    gen_dtype: str = "bfloat16"
    steering_pairs: int = 32
    """Steering vectors from each pole's first (largest-margin) pairs; 0: none."""
    """The sampling model's dtype: ``bfloat16`` (3x faster on CPU than float32, measured:
    112 vs 9 tokens/s at batch 16/8 on 2 cores) or ``float32``. Training is float32."""
    min_margin: float = 0.05
    min_pairs: int = 4
    max_pairs: int = 48
    lora_r: int = 8
    lora_alpha: int = 16
    beta: float = 0.1
    learning_rate: float = 5e-4
    epochs: int = 2
    max_steps: int = -1
    batch_size: int = 4
    max_length: int = 192
    save_steps: int = 4
    threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dimensions", tuple(self.dimensions))
        object.__setattr__(self, "poles", tuple(self.poles))
        positive = [
            "candidates",
            "gen_max_new_tokens",
            "gen_batch_size",
            "min_pairs",
            "max_pairs",
            "lora_r",
            "lora_alpha",
            "epochs",
            "batch_size",
            "max_length",
            "save_steps",
            "threads",
        ]
        if self.gen_dtype not in ("bfloat16", "float32"):
            raise ConfigError(
                f"ExpertsConfig.gen_dtype must be bfloat16 or float32, not {self.gen_dtype!r}"
            )
        from personalign.feedback.train import check_ints

        check_ints(self, positive, minimum=1)
        check_ints(self, ("n_prompts", "seed", "steering_pairs"), minimum=0)
        unknown = [d for d in self.dimensions if d not in DIMENSION_NAMES]
        checks: list[tuple[str, bool, str]] = [
            ("dimensions", bool(self.dimensions) and not unknown, f"some of {DIMENSION_NAMES}"),
            ("dimensions", len(set(self.dimensions)) == len(self.dimensions), "distinct"),
            ("poles", bool(self.poles) and set(self.poles) <= set(SIGNS), "'+' and/or '-'"),
            ("poles", len(set(self.poles)) == len(self.poles), "distinct"),
            ("candidates", self.candidates >= 2, ">= 2"),
            ("max_pairs", self.max_pairs >= self.min_pairs, ">= min_pairs"),
            ("max_steps", self.max_steps == -1 or self.max_steps >= 1, "-1 or >= 1"),
            ("gen_temperature", _finite(self.gen_temperature) and self.gen_temperature > 0, "> 0"),
            ("gen_top_p", _finite(self.gen_top_p) and 0 < self.gen_top_p <= 1, "in (0, 1]"),
            ("min_margin", _finite(self.min_margin) and self.min_margin >= 0, ">= 0"),
            ("beta", _finite(self.beta) and self.beta > 0, "> 0"),
            ("learning_rate", _finite(self.learning_rate) and 0 < self.learning_rate < 1, "< 1"),
            ("base_model", bool(self.base_model.strip()), "'smollm2' or a model directory"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(
                    f"ExpertsConfig.{name} must be {what}, got {getattr(self, name)!r}"
                )
        if self.prompts is not None and not Path(self.prompts).expanduser().is_file():
            raise ConfigError(f"ExpertsConfig.prompts: no file at {self.prompts!r}")

    @property
    def pole_names(self) -> list[str]:
        """Every expert to train: ``conciseness+``, ``conciseness-``, ``readability+``, ..."""
        return [pole_name(d, s) for d in self.dimensions for s in self.poles]

    def load_prompts(self) -> list[str]:
        """The prompts to sample from (see the class doc); ConfigError for a bad file."""
        if self.prompts is None:
            found: Any = packaged_prompts()
        else:
            try:
                found = json.loads(Path(self.prompts).expanduser().read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ConfigError(f"ExpertsConfig.prompts: cannot read {self.prompts}: {e}") from e
        if not isinstance(found, list) or not all(isinstance(p, str) and p.strip() for p in found):
            raise ConfigError("ExpertsConfig.prompts must hold a JSON list of non-empty strings")
        found = list(dict.fromkeys(p.strip() for p in found))
        return found[: self.n_prompts] if self.n_prompts else found

    def sampling_recipe(self) -> dict[str, Any]:
        """What the samples depend on (the prompts by content, not by file)."""
        return {
            "version": RECIPE_VERSION,
            **{k: getattr(self, k) for k in _SAMPLING_FIELDS},
            "prompts_hash": data_hash(self.load_prompts()),
            "style_hints": list(STYLE_HINTS),
        }

    @property
    def sampling_hash(self) -> str:
        return data_hash(self.sampling_recipe())

    def training_recipe(self) -> dict[str, Any]:
        """What one expert's training depends on besides its pairs."""
        return {"version": RECIPE_VERSION, **{k: getattr(self, k) for k in _TRAINING_FIELDS}}

    def recipe(self) -> dict[str, Any]:
        """The whole recipe: its version, the config and the sampling hash."""
        return {
            "version": RECIPE_VERSION,
            "config": asdict(self),
            "sampling_hash": self.sampling_hash,
        }

    @property
    def hash(self) -> str:
        """A stable hash of :meth:`recipe` (16 hex digits)."""
        return data_hash(self.recipe())

    def train_config(self) -> Any:
        """The :class:`~personalign.feedback.train.TrainConfig` that ``train_pairs`` runs."""
        from personalign.feedback.train import TrainConfig

        return TrainConfig(
            base_model=self.base_model,
            min_pairs=self.min_pairs,
            max_pairs=self.max_pairs,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            beta=self.beta,
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            max_length=self.max_length,
            save_steps=self.save_steps,
            threads=self.threads,
            seed=self.seed,
        )


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class ExpertResult:
    """What happened to one expert: ``trained``, ``exists`` (up to date, skipped) or
    ``skipped`` (too few pairs; ``message`` says how many)."""

    pole: str
    status: str
    pairs: int = 0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    path: str | None = None


@dataclass
class ExpertsSummary:
    """What :func:`train_experts` did."""

    out_dir: str
    recipe_hash: str
    prompts: int
    samples: int
    sampled: bool
    """Whether the samples were drawn in this run (False: reused)."""
    sampling_seconds: float
    experts: list[ExpertResult]
    steering: str | None = None
    """The steering vectors' folder (computed from the same pairs), None when not made."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- files ----------------------------------------------------------------------------------


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _jsonl(rows: Sequence[Any]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# -- 1. samples -----------------------------------------------------------------------------


def _load_samples(path: Path, key: str, prompts: Sequence[str]) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    try:
        head, *rows = _read_jsonl(path)
    except ValueError:
        return None
    if head.get("sampling_hash") != key or [r.get("prompt") for r in rows] != list(prompts):
        return None
    return rows


def sample_all(
    config: ExpertsConfig,
    out_dir: Path,
    *,
    base_dir: Path,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Stage 1 (see the module doc): ``(rows, sampled)``, each row ``{"prompt",
    "candidates", "finish"}``; ``sampled`` is False when ``samples.jsonl`` was reused."""
    prompts = config.load_prompts()
    key = config.sampling_hash
    final = out_dir / SAMPLES_FILE
    rows = _load_samples(final, key, prompts)
    if rows is not None:
        return rows, False
    import torch

    from personalign.backends.models.base import GenerationOptions
    from personalign.backends.models.local import TransformersLM

    torch.set_num_threads(config.threads)
    n, bs = config.candidates, config.gen_batch_size
    convs = hinted_conversations(prompts, n)
    batches = math.ceil(len(convs) / bs)
    partial = out_dir / f".samples-{key}.partial.jsonl"
    done: dict[int, dict[str, Any]] = {}
    if partial.is_file():  # an interrupted sampling: keep its finished batches
        for line in partial.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                done[int(row["batch"])] = row
            except (ValueError, KeyError, TypeError):
                break  # a torn last line
    if progress:
        progress("sampling", len(done), batches)
    if len(done) < batches:
        lm = TransformersLM(
            base_dir, dtype=cast("DType", config.gen_dtype), name=config.base_model, batching=False
        )
        try:
            with partial.open("a", encoding="utf-8") as fh:
                for b in range(batches):
                    if b in done:
                        continue
                    options = GenerationOptions(
                        max_new_tokens=config.gen_max_new_tokens,
                        temperature=config.gen_temperature,
                        top_p=config.gen_top_p,
                        seed=config.seed + b,
                    )
                    gens = lm.generate_batch(convs[b * bs : (b + 1) * bs], options=options)
                    row = {
                        "batch": b,
                        "texts": [g.text.strip() for g in gens],
                        "finish": [g.finish_reason for g in gens],
                    }
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    fh.flush()
                    done[b] = row
                    if progress:
                        progress("sampling", len(done), batches)
        finally:
            lm.close()
    texts = [t for b in range(batches) for t in done[b]["texts"]]
    finish = [f for b in range(batches) for f in done[b]["finish"]]
    rows = [
        {
            "prompt": p,
            "candidates": texts[k * n : (k + 1) * n],
            "finish": finish[k * n : (k + 1) * n],
        }
        for k, p in enumerate(prompts)
    ]
    head = {"sampling_hash": key, "recipe": config.sampling_recipe()}
    _write_atomic(final, _jsonl([head, *rows]))
    partial.unlink(missing_ok=True)
    return rows, True


# -- 2. pairs -------------------------------------------------------------------------------


def pole_pairs(
    rows: Sequence[dict[str, Any]], pole: str, *, min_margin: float, max_pairs: int
) -> list[PreferencePair]:
    """Stage 2 for one pole (see the module doc): best-vs-worst pairs by the signed score."""
    dim, sign = parse_pole(pole)
    score = DIMENSIONS[dim]  # type: ignore[index]
    s = 1.0 if sign == "+" else -1.0
    import numpy as np

    found: list[tuple[int, PreferencePair]] = []
    for k, row in enumerate(rows):
        cands = list(dict.fromkeys(c for c in row["candidates"] if c))
        if len(cands) < 2:
            continue
        scores = np.array([s * score(c) for c in cands])  # (len(cands),)
        pair = best_vs_worst(row["prompt"], cands, scores, min_margin=min_margin)
        if pair is not None:
            found.append((k, pair))
    best = sorted(found, key=lambda kp: (-(kp[1].margin or 0.0), kp[0]))[:max_pairs]
    return [p for _, p in sorted(best, key=lambda kp: kp[0])]


def _pairs_file(out_dir: Path, pole: str) -> Path:
    return Path(out_dir) / PAIRS_DIR / f"{pole_folder(pole)}.jsonl"


def load_pairs(out_dir: str | Path) -> dict[str, list[PreferencePair]]:
    """``{pole: pairs}`` written by :func:`train_experts` under ``out_dir`` (chosen has more
    of the dimension than rejected for ``+`` poles, less for ``-`` poles)."""
    root = Path(out_dir).expanduser() / PAIRS_DIR
    if not root.is_dir():
        raise NotFoundError(f"no expert pairs under {out_dir}; run `personalign train experts`")
    out: dict[str, list[PreferencePair]] = {}
    for f in sorted(root.glob("*.jsonl")):
        pole = pole_of_folder(f.stem)
        out[pole] = []
        for r in _read_jsonl(f):
            if r.pop("pole") != pole:
                raise ValidationError(f"{f} holds a pair of another pole")
            out[pole].append(PreferencePair(**r))
    return out


# -- 3. experts -----------------------------------------------------------------------------


def expert_hash(config: ExpertsConfig, pole: str, pairs: Sequence[PreferencePair]) -> str:
    """The hash an up-to-date expert's ``recipe.json`` holds: of its pole, the training
    recipe and its pairs (which the sampling recipe and the pairing determine)."""
    return data_hash(
        {
            "pole": pole,
            "base_model": config.base_model,
            "training": config.training_recipe(),
            "pairs": data_hash(list(pairs)) if pairs else "",
        }
    )


def _current(folder: Path, h: str) -> bool:
    if not all((folder / f).is_file() for f in (*ADAPTER_FILES, RECIPE_FILE)):
        return False
    try:
        return bool(json.loads((folder / RECIPE_FILE).read_text()).get("hash") == h)
    except (OSError, ValueError):
        return False


def _step_progress(stage: str, progress: Progress) -> Any:
    """A ``transformers.TrainerCallback`` reporting the DPO steps to ``progress``."""
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            progress(stage, state.global_step, state.max_steps)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            progress(stage, state.global_step, state.max_steps)

    return StepProgress()


def _train_one(
    config: ExpertsConfig,
    out_dir: Path,
    pole: str,
    pairs: list[PreferencePair],
    *,
    base_dir: Path,
    progress: Progress | None,
) -> ExpertResult:
    from personalign.feedback.train import train_pairs

    t0 = time.perf_counter()
    folder = out_dir / pole_folder(pole)
    h = expert_hash(config, pole, pairs)
    if _current(folder, h):
        recipe = json.loads((folder / RECIPE_FILE).read_text())
        return ExpertResult(
            pole, "exists", len(pairs), "up to date", recipe.get("metrics", {}), 0.0, str(folder)
        )
    if len(pairs) < config.min_pairs:
        return ExpertResult(
            pole, "skipped", len(pairs), f"{len(pairs)} pair(s); {config.min_pairs} needed"
        )
    work = out_dir / WORK_DIR / f"{folder.name}-{h}"
    callbacks = [_step_progress(pole, progress)] if progress else []
    metrics = train_pairs(
        pairs, base_dir=base_dir, out_dir=work, config=config.train_config(), callbacks=callbacks
    )
    seconds = time.perf_counter() - t0
    dim, sign = parse_pole(pole)
    recipe = {
        "pole": pole,
        "dimension": dim,
        "sign": sign,
        "hash": h,
        "recipe_version": RECIPE_VERSION,
        "recipe_hash": config.hash,
        "base_model": config.base_model,
        "base_model_dir": str(base_dir.resolve()),
        "config": asdict(config),
        "training": config.training_recipe(),
        "sampling_hash": config.sampling_hash,
        "pairs": len(pairs),
        "pairs_hash": data_hash(list(pairs)),
        "metrics": metrics,
        "seconds": round(seconds, 2),
        "created_at": utcnow().isoformat(),
        "versions": library_versions(),
    }
    tmp = _tmp_name(folder)
    tmp.mkdir(parents=True)
    try:
        for f in ADAPTER_FILES:
            shutil.copy2(work / "final" / f, tmp / f)
        (tmp / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, default=str))
        if folder.exists():  # a stale expert (another recipe or other pairs)
            old = _tmp_name(folder)
            folder.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return ExpertResult(pole, "trained", len(pairs), "", metrics, seconds, str(folder))


def write_steering(
    config: ExpertsConfig,
    out: Path,
    all_pairs: Mapping[str, Sequence[PreferencePair]],
    *,
    base_dir: Path,
    progress: Progress | None = None,
) -> Path | None:
    """The steering vectors of every pole with pairs (CAA over the experts' own pairs, at
    most ``steering_pairs`` each, :func:`~personalign.generation.steering.compute_steering`)
    in ``out/steering``; kept when its recorded pairs hash matches. None without pairs."""
    from personalign.backends.models.local import TransformersLM
    from personalign.generation.soups import STEERING_FILE
    from personalign.generation.steering import compute_steering

    use = {p: list(v)[: config.steering_pairs] for p, v in all_pairs.items() if v}
    if not use or config.steering_pairs == 0:
        return None
    dest = out / STEERING_FILE
    h = data_hash(
        {"pairs": {p: [asdict(x) for x in v] for p, v in use.items()}, "dtype": config.gen_dtype}
    )
    stamp = dest / "pairs.hash"
    if stamp.is_file() and stamp.read_text().strip() == h:
        return dest
    if progress is not None:
        progress("steering", 0, 1)
    lm = TransformersLM(
        base_dir, dtype=cast("DType", config.gen_dtype), name=config.base_model, batching=False
    )
    try:
        vectors = compute_steering(lm, use)
    finally:
        lm.close()
    vectors.save(dest)
    _write_atomic(stamp, h)
    if progress is not None:
        progress("steering", 1, 1)
    return dest


def train_experts(
    config: ExpertsConfig,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> ExpertsSummary:
    """Sample, pair and train every expert of ``config`` under ``out_dir`` (see the module
    doc); resumable and reproducible. ``cache_dir`` holds the embedded model (default: the
    personalign cache) when ``config.base_model`` is ``smollm2``."""
    from personalign.config import default_cache
    from personalign.extras import require
    from personalign.feedback.train import resolve_base_model

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    prompts = config.load_prompts()
    base_dir = resolve_base_model(config.base_model, cache_dir or default_cache())
    t0 = time.perf_counter()
    rows, sampled = sample_all(config, out, base_dir=base_dir, progress=progress)
    sampling_seconds = time.perf_counter() - t0 if sampled else 0.0
    all_pairs = {
        pole: pole_pairs(rows, pole, min_margin=config.min_margin, max_pairs=config.max_pairs)
        for pole in config.pole_names
    }
    for pole, pairs in all_pairs.items():
        _write_atomic(_pairs_file(out, pole), _jsonl([{"pole": pole, **asdict(p)} for p in pairs]))
    todo = [
        p
        for p, pairs in all_pairs.items()
        if len(pairs) >= config.min_pairs
        and not _current(out / pole_folder(p), expert_hash(config, p, pairs))
    ]
    if todo:
        require("train", ["trl", "datasets", "peft", "torch", "transformers"], what="experts")
    results = [
        _train_one(config, out, pole, pairs, base_dir=base_dir, progress=progress)
        for pole, pairs in all_pairs.items()
    ]
    steering = write_steering(config, out, all_pairs, base_dir=base_dir, progress=progress)
    return ExpertsSummary(
        steering=None if steering is None else str(steering),
        out_dir=str(out),
        recipe_hash=config.hash,
        prompts=len(prompts),
        samples=sum(len(r["candidates"]) for r in rows),
        sampled=sampled,
        sampling_seconds=round(sampling_seconds, 2),
        experts=results,
    )
