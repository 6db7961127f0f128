"""Per-user DPO: train each user's LoRA adapter with TRL's ``DPOTrainer`` and PEFT, as jobs.

:func:`train_users` plans one :class:`UserJob` per user from the memory store (feedback pairs,
the user's prompts for ranked pairs, their weights and preferences), skips users whose job
hash already has an adapter (resumable), runs the rest on an executor, and saves each
adapter in the :class:`~personalign.feedback.adapters.AdapterStore` with its recipe.

Executors (``Executor``): ``local`` (in this process with ``workers=1``, else a process pool)
and ``ray`` (tasks on a Ray cluster: ``address=None`` starts a local one; a remote cluster's
workers need personalign installed and the base model at the same path, or ``smollm2``).
A job returns the adapter's bytes, so the driver alone writes the store. Inside a job,
checkpoints every ``save_steps`` steps under ``work_dir`` let an interrupted run resume.

Every knob is in :class:`TrainConfig`, validated on construction.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from personalign.errors import ConfigError
from personalign.extras import require
from personalign.feedback.adapters import ADAPTER_FILES, AdapterStore, adapter_name
from personalign.feedback.pairs import (
    PreferencePair,
    RewardScorer,
    data_hash,
    pairs_from_feedback,
    ranked_pairs,
    user_prompts,
)

if TYPE_CHECKING:
    from personalign.backends.stores.base import MemoryStore
    from personalign.safety.adapter_check import AdapterCheckConfig

log = logging.getLogger(__name__)

Executor = Literal["local", "ray"]
Status = Literal["trained", "rejected", "skipped", "exists", "failed"]
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def check_ints(config: object, names: Sequence[str], *, minimum: int) -> None:
    """Raise :class:`ConfigError` unless each field ``names`` of ``config`` is an int (not a
    bool) of at least ``minimum``."""
    for name in names:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ConfigError(f"{type(config).__name__}.{name} must be {what}, got {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a per-user DPO run depends on (all of it goes into the recipe and hash).

    Data: ``min_pairs`` preference pairs are needed to train (feedback pairs first, then
    ``ranked_prompts`` prompts each giving at most one ranked pair from ``candidates``
    samples of ``gen_max_new_tokens`` tokens at ``gen_temperature``; ``rm_weight`` mixes a
    preference reward model into the ranking when one is given; ``max_pairs`` caps the set).
    LoRA: rank ``lora_r``, ``lora_alpha``, ``lora_dropout`` on ``target_modules``.
    DPO: ``beta``, ``learning_rate``, ``epochs`` (or ``max_steps`` > 0), ``batch_size``,
    ``max_length`` tokens per example, checkpoints every ``save_steps``; see the two
    speed switches below.
    Runtime: ``threads`` torch threads per job, ``seed``.
    """

    base_model: str = "smollm2"
    """``smollm2`` (the embedded model's saved copy) or a local model directory."""
    min_pairs: int = 16
    max_pairs: int = 64
    ranked_prompts: int = 32
    candidates: int = 4
    gen_max_new_tokens: int = 96
    gen_temperature: float = 0.8
    rm_weight: float = 0.5
    min_margin: float = 0.03
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = TARGET_MODULES
    beta: float = 0.1
    learning_rate: float = 5e-4
    epochs: int = 3
    max_steps: int = -1
    batch_size: int = 4
    max_length: int = 256
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% slower (TRL's default is
    on; a 135M model does not need it)."""
    precompute_ref: bool = True
    """Compute the reference model's log-probabilities once, before training (one forward
    pass over the pairs instead of one per step)."""
    save_steps: int = 8
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        positive = [
            "min_pairs",
            "max_pairs",
            "candidates",
            "gen_max_new_tokens",
            "lora_r",
            "lora_alpha",
            "epochs",
            "batch_size",
            "max_length",
            "save_steps",
            "threads",
        ]
        check_ints(self, positive, minimum=1)
        checks: list[tuple[str, bool, str]] = [
            ("ranked_prompts", self.ranked_prompts >= 0, "an integer >= 0"),
            ("max_steps", self.max_steps == -1 or self.max_steps >= 1, "-1 or >= 1"),
            ("candidates", self.candidates >= 2, ">= 2"),
            ("max_pairs", self.max_pairs >= self.min_pairs, ">= min_pairs"),
            ("gen_temperature", self.gen_temperature > 0, "> 0"),
            ("rm_weight", 0 <= self.rm_weight <= 1, "in [0, 1]"),
            ("min_margin", self.min_margin >= 0, ">= 0"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)"),
            ("beta", self.beta > 0, "> 0"),
            ("learning_rate", 0 < self.learning_rate < 1, "in (0, 1)"),
            ("target_modules", bool(self.target_modules), "non-empty"),
            ("base_model", bool(self.base_model.strip()), "'smollm2' or a model directory"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(f"TrainConfig.{name} must be {what}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class UserJob:
    """One user's training job: everything it needs, picklable (for process pools and Ray)."""

    user: str
    pairs: tuple[PreferencePair, ...]
    prompts: tuple[str, ...]
    weights: dict[str, float]
    preferences: tuple[str, ...]
    config: TrainConfig
    cache_dir: str
    work_dir: str
    check: AdapterCheckConfig | None = None
    """The safety check the trained adapter must pass before it is saved as servable (None:
    not checked; :func:`train_users` always sets it). Not part of :attr:`data_hash`."""

    @property
    def data_hash(self) -> str:
        """Hash of the job's inputs and config: an adapter with this hash is up to date."""
        return data_hash(
            {
                "pairs": [asdict(p) for p in self.pairs],
                "prompts": list(self.prompts),
                "weights": self.weights,
                "preferences": list(self.preferences),
                "config": asdict(self.config),
            }
        )


@dataclass
class JobResult:
    """What a job did. ``files`` holds the adapter's bytes when ``status == 'trained'``."""

    user: str
    status: Status
    message: str = ""
    data_hash: str = ""
    pairs: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict, repr=False)
    recipe: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None
    """``<name>@v0003`` once saved in the store."""


class _OneAdapter:
    """An adapter source holding one directory (the trained adapter, before it is saved)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def adapter_path(self, name: str) -> Path:
        return self.path


def _default_checker(cache_dir: str) -> Any:
    """The default boundary (over MiniLM) whose reply check judges the probes' replies."""
    from personalign.backends.embedders import load_embedder
    from personalign.safety.checkers import load_boundary

    return load_boundary(load_embedder("minilm", Path(cache_dir)), cache_dir=Path(cache_dir))


def check_trained(job: UserJob, base_dir: Path, adapter_dir: Path) -> dict[str, Any]:
    """Run the safety check (:mod:`personalign.safety.adapter_check`) on the adapter in
    ``adapter_dir`` against the base model; return the recipe's ``safety_check``."""
    from personalign.backends.models.local import TransformersLM
    from personalign.safety.adapter_check import check_adapter, unchecked

    cfg = job.check
    if cfg is None or not cfg.enabled:
        return unchecked()
    lm = TransformersLM(
        base_dir, dtype="float32", name=job.config.base_model, adapters=_OneAdapter(adapter_dir)
    )
    try:
        checker = _default_checker(job.cache_dir) if cfg.reply_check else None
        verdict = check_adapter(
            lm, "candidate", config=cfg, checker=checker, cache_dir=job.cache_dir
        )
    finally:
        lm.close()
    return verdict.to_dict()


def resolve_base_model(spec: str, cache_dir: str | Path) -> Path:
    """The model directory of ``spec``: the embedded model's saved copy, or a directory."""
    if spec == "smollm2":
        from personalign.backends.models.local import ensure_embedded_model

        return ensure_embedded_model(Path(cache_dir), quiet=True)
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"TrainConfig.base_model: {spec!r} is not 'smollm2' or a model dir")
    return path


def plan_jobs(
    store: MemoryStore,
    *,
    users: Sequence[str],
    config: TrainConfig,
    cache_dir: str | Path,
    work_dir: str | Path,
) -> list[UserJob]:
    """One job per user from their stored feedback, prompts, weights and preferences."""
    jobs = []
    for user in users:
        profile = store.get_profile(user=user)
        prefs = [r.text for r in store.list(user=user, kinds=["explicit", "implicit"], limit=50)]
        jobs.append(
            UserJob(
                user=user,
                pairs=tuple(pairs_from_feedback(store, user=user)[: config.max_pairs]),
                prompts=tuple(user_prompts(store, user=user, n=config.ranked_prompts)),
                weights=dict(profile.weights) if profile else {},
                preferences=tuple(sorted(prefs)),
                config=config,
                cache_dir=str(cache_dir),
                work_dir=str(work_dir),
            )
        )
    return jobs


def _dataset(pairs: Sequence[PreferencePair]) -> Any:
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p.prompt}],
                "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}],
            }
            for p in pairs
        ]
    )


def _job_pairs(
    job: UserJob, base_dir: Path, work: Path, scorer: RewardScorer | None
) -> list[PreferencePair]:
    """Feedback pairs plus ranked pairs, generated once and kept in ``work`` for resuming."""
    cached = work / "pairs.json"
    if cached.is_file():
        return [PreferencePair(**p) for p in json.loads(cached.read_text())]
    cfg = job.config
    pairs = list(job.pairs)
    need = cfg.max_pairs - len(pairs)
    if job.prompts and job.weights and need > 0:
        from personalign.backends.models.base import GenerationOptions
        from personalign.backends.models.local import TransformersLM

        lm = TransformersLM(base_dir, dtype="float32", name=cfg.base_model)
        options = GenerationOptions(
            max_new_tokens=cfg.gen_max_new_tokens,
            temperature=cfg.gen_temperature,
            top_p=0.95,
            seed=cfg.seed,
        )
        pairs += ranked_pairs(
            lm,
            job.prompts,
            weights=job.weights,
            n=cfg.candidates,
            options=options,
            scorer=scorer,
            preferences=job.preferences,
            rm_weight=cfg.rm_weight,
            min_margin=cfg.min_margin,
        )[:need]
        lm.close()
    work.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps([asdict(p) for p in pairs]))
    return pairs


def train_pairs(
    pairs: Sequence[PreferencePair],
    *,
    base_dir: Path,
    out_dir: Path,
    config: TrainConfig,
    resume: bool = True,
    callbacks: Sequence[Any] = (),
) -> dict[str, float]:
    """DPO-train a LoRA adapter on ``pairs`` (TRL ``DPOTrainer``, PEFT; the reference model is
    the base with the adapter disabled) and save it to ``out_dir``; return the final metrics.
    Checkpoints go to ``out_dir/checkpoints`` and are resumed from when ``resume``.
    ``callbacks`` are ``transformers.TrainerCallback`` s added to the trainer (progress)."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOConfig, DPOTrainer

    from personalign.backends.models.local import _quiet_hf

    cfg = config
    torch.set_num_threads(cfg.threads)
    ckpt = out_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    with _quiet_hf():
        tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=torch.float32, local_files_only=True
        )
        args = DPOConfig(
            output_dir=str(ckpt),
            beta=cfg.beta,
            learning_rate=cfg.learning_rate,
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            gradient_checkpointing=cfg.gradient_checkpointing,
            precompute_ref_log_probs=cfg.precompute_ref,
            lr_scheduler_type="constant",
            save_strategy="steps",
            save_steps=cfg.save_steps,
            save_total_limit=1,
            logging_steps=1,
            report_to=[],
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            seed=cfg.seed,
            dataloader_num_workers=0,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=_dataset(pairs),
            processing_class=tok,
            peft_config=LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
        trainer.remove_callback(PrinterCallback)  # logs go to the recipe, not stdout
        for cb in callbacks:
            trainer.add_callback(cb)
        last = get_last_checkpoint(str(ckpt)) if resume else None
        trainer.train(resume_from_checkpoint=last)
        trained: Any = trainer.model
        trained.save_pretrained(out_dir / "final")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    tail = logs[-max(1, len(logs) // 4) :]  # the last quarter of the steps

    def mean(key: str) -> float:
        vals = [float(h[key]) for h in tail if key in h]
        return sum(vals) / len(vals) if vals else float("nan")

    return {
        "steps": float(trainer.state.global_step),
        "loss_first": float(logs[0]["loss"]) if logs else float("nan"),
        "loss_last": mean("loss"),
        "reward_accuracy": mean("rewards/accuracies"),
        "reward_margin": mean("rewards/margins"),
    }


def run_job(job: UserJob, scorer_factory: Callable[[], RewardScorer] | None = None) -> JobResult:
    """Run one job (in any process): build pairs, train, return the adapter bytes."""
    t0 = time.perf_counter()
    h = job.data_hash
    cfg = job.config
    work = Path(job.work_dir) / f"{adapter_name(job.user)}-{h}"
    try:
        base_dir = resolve_base_model(cfg.base_model, job.cache_dir)
        pairs = _job_pairs(job, base_dir, work, scorer_factory() if scorer_factory else None)
        if len(pairs) < cfg.min_pairs:
            shutil.rmtree(work, ignore_errors=True)
            return JobResult(
                job.user,
                "skipped",
                f"{len(pairs)} preference pair(s); {cfg.min_pairs} needed",
                h,
                len(pairs),
                time.perf_counter() - t0,
            )
        metrics = train_pairs(pairs, base_dir=base_dir, out_dir=work, config=cfg)
        files = {f: (work / "final" / f).read_bytes() for f in ADAPTER_FILES}
        # checked before it is saved, so no version is ever servable without its verdict
        safety = check_trained(job, base_dir, work / "final") if job.check is not None else None
    except Exception as e:  # reported per user; the other users' jobs go on
        return JobResult(job.user, "failed", f"{type(e).__name__}: {e}", h, 0, 0.0)
    sources: dict[str, int] = {}
    for p in pairs:
        sources[p.source] = sources.get(p.source, 0) + 1
    seconds = time.perf_counter() - t0
    recipe = {
        "base_model": cfg.base_model,
        "base_model_dir": str(base_dir),
        "data_hash": h,
        "pairs": len(pairs),
        "pair_sources": sources,
        "pairs_hash": data_hash(pairs),
        "config": asdict(cfg),
        "metrics": metrics,
        "seconds": round(seconds, 2),
    }
    if safety is not None:
        recipe["safety_check"] = safety
    shutil.rmtree(work, ignore_errors=True)
    return JobResult(job.user, "trained", "", h, len(pairs), seconds, metrics, files, recipe)


# -- executors ------------------------------------------------------------------------------

Runner = Callable[[Sequence[UserJob], int, str | None, Any], Iterator[JobResult]]


def run_local(
    jobs: Sequence[UserJob], workers: int, address: str | None, scorer_factory: Any = None
) -> Iterator[JobResult]:
    """In this process (``workers == 1``) or a spawn process pool; results as they finish."""
    if workers <= 1:
        for job in jobs:
            yield run_job(job, scorer_factory)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(run_job, job, scorer_factory) for job in jobs]
        for fut in as_completed(futures):
            yield fut.result()


def run_ray(
    jobs: Sequence[UserJob], workers: int, address: str | None, scorer_factory: Any = None
) -> Iterator[JobResult]:
    """As Ray tasks (``num_cpus`` = the config's ``threads``); ``address=None`` starts a local
    cluster of ``workers`` CPUs (no dashboard; its temp dir is ``<work_dir>/ray``, or a short
    one under the system temp dir when that path is too long for Ray's sockets)."""
    import ray

    if not jobs:
        return
    started = False
    scratch: Path | None = None
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            temp = (Path(jobs[0].work_dir) / "ray").resolve()
            if len(str(temp)) > 40:  # Ray's socket paths under it must stay within 107 bytes
                temp = Path(tempfile.mkdtemp(prefix="pal-ray-"))
                scratch = temp
            temp.mkdir(parents=True, exist_ok=True)
            ray.init(
                num_cpus=max(workers, 1),
                include_dashboard=False,
                _temp_dir=str(temp),
                log_to_driver=False,
            )
        started = True
    try:
        task: Any = ray.remote(num_cpus=jobs[0].config.threads, max_retries=0)(run_job)
        pending = [task.remote(job, scorer_factory) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


EXECUTORS: Mapping[Executor, Runner] = {"local": run_local, "ray": run_ray}


def train_users(
    store: MemoryStore,
    adapters: AdapterStore,
    *,
    users: Sequence[str] | None = None,
    config: TrainConfig | None = None,
    executor: Executor = "local",
    workers: int = 1,
    address: str | None = None,
    cache_dir: str | Path,
    work_dir: str | Path | None = None,
    scorer_factory: Callable[[], RewardScorer] | None = None,
    force: bool = False,
    progress: bool = True,
    check: AdapterCheckConfig | None = None,
) -> list[JobResult]:
    """Train (or skip) every user's adapter; see the module doc. ``users`` defaults to every
    user in ``store``; ``force`` retrains even when an adapter with the same hash exists.

    Each trained adapter passes the safety check ``check`` (None: the default
    :class:`~personalign.safety.adapter_check.AdapterCheckConfig`; ``enabled=False`` turns it
    off) before it is saved: a rejected one is saved marked rejected (never served), its
    result has status ``rejected`` and a warning is logged for the operator."""
    from personalign.safety.adapter_check import AdapterCheckConfig

    check = check or AdapterCheckConfig()
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {tuple(EXECUTORS)}, got {executor!r}")
    config = config or TrainConfig()
    work = Path(work_dir) if work_dir else adapters.root / ".work"
    jobs = plan_jobs(
        store, users=list(users or store.users()), config=config, cache_dir=cache_dir, work_dir=work
    )
    jobs = [replace(j, check=check) for j in jobs]
    results: list[JobResult] = []
    todo: list[UserJob] = []
    for job in jobs:
        found = None if force else adapters.find(job.user, job.data_hash)
        if found is not None:
            status: Status = "rejected" if found.rejected else "exists"
            note = "up to date" + (" but rejected by the safety check" if found.rejected else "")
            results.append(JobResult(job.user, status, note, job.data_hash, adapter=found.label))
        else:
            todo.append(job)
    if todo:
        needs = ["trl", "datasets", "peft", "torch", "transformers"]
        require("train", [*needs, "ray"] if executor == "ray" else needs, what="per-user DPO")
    with _progress(progress, len(todo), results) as advance:
        for res in EXECUTORS[executor](todo, workers, address, scorer_factory):
            if res.status == "trained":
                info = adapters.save(res.user, res.files, res.recipe)
                res.adapter, res.files = info.label, {}
                if info.rejected:
                    from personalign.safety.adapter_check import verdict_message

                    res.status = "rejected"
                    res.message = verdict_message(info.check or {})
                    log.warning(
                        "adapter %s of user %s is rejected and will not serve: %s",
                        info.label,
                        res.user,
                        res.message,
                    )
            results.append(res)
            advance(res)
    return results


class _progress:
    """A Rich progress bar over the jobs (a no-op when disabled), printing each outcome."""

    def __init__(self, enabled: bool, total: int, done: Iterable[JobResult]) -> None:
        self.enabled, self.total, self.done = enabled, total, list(done)

    def __enter__(self) -> Callable[[JobResult], None]:
        if not self.enabled:
            return lambda res: None
        import sys

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        console = Console(file=sys.stderr)
        for res in self.done:
            console.print(f"[dim]{res.user}: {res.status} ({res.adapter})[/]", highlight=False)
        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.bar.start()
        task = self.bar.add_task("training users", total=self.total)

        def advance(res: JobResult) -> None:
            detail = res.adapter if res.status == "trained" else res.message
            self.bar.console.print(
                f"{res.user}: {res.status} {detail} ({res.seconds:.0f} s)", highlight=False
            )
            self.bar.advance(task)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()
