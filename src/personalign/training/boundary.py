"""The safety boundary's recipes: its training sets and classifiers.

* :func:`harm_training_set`, :func:`injection_training_set`, :func:`finetune_training_set`
  — the training sets (read from :mod:`personalign.training.safety_data`).
* :func:`fit` trains an :class:`~personalign.safety.classifier.EmbeddingClassifier`
  (scikit-learn's logistic regression, L2-regularized); :func:`fit_embedded` fits one
  over an embedder's vectors with the hyper-parameters of :class:`BoundaryConfig`;
  :func:`save_artifact` writes several named classifiers plus a JSON metadata dict to one
  ``.npz`` file (float16 weights), which the runtime reads with
  :func:`personalign.safety.classifier.load_artifact`.
* :func:`train_finetuned` — the one fine-tuned MiniLM boundary classifier (LoRA), with the
  hyper-parameters of :class:`FinetuneConfig`.

``scripts/train_boundary.py`` is the command line that builds the shipped artifacts.
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from personalign.safety.classifier import EmbeddingClassifier
from personalign.safety.injection import segments
from personalign.training import safety_data as D
from personalign.training.recipe import recipe_meta

if TYPE_CHECKING:
    from personalign.training.finetune import TrainReport


@dataclass(frozen=True)
class BoundaryConfig:
    """Hyper-parameters of the classifiers of ``boundary_minilm.npz`` (:func:`fit`).

    The shipped file predates the scikit-learn solver: it was trained by full-batch Adam (500
    epochs, lr 0.05) on the same objective, which L-BFGS now solves to convergence."""

    embedder: str = "minilm"
    """the vectors of the harm and injection models"""
    fast_injection_embedder: str = "minilm-int8"
    """the vectors of ``injection_fast`` (``"none"``: not trained)"""
    l2: float = 1e-4
    max_iter: int = 500
    seed: int = 0
    """the choice of training templates and of the rows of sources above the cap"""
    max_per_source: int = 2500
    """big sources (PHTest, HH helpful, personas, chat turns, conversation) are subsampled to
    this many requests or texts (PHTest's controversial prompts to half of it)"""
    train_templates: int = 2
    """TRAIN templates per request besides the request as written"""
    eval_templates: int = 2
    """EVAL templates per request of a held-out source"""
    source_power: float = 0.5
    """a source's total weight grows as (its rows) ** source_power"""
    loso_max_iter: int = 100
    """solver iterations of each leave-one-source-out model (the shipped one: ``max_iter``)"""
    target_harmful_admission: float = 0.02
    target_benign_preference_refusal: float = 0.02
    target_harmful_request_pass: float = 0.05
    target_benign_request_refusal: float = 0.05
    target_reply_miss: float = 0.10
    target_reply_false_flag: float = 0.02
    """calibration targets (each decision's threshold minimizes its larger relative miss on
    the held-out sources' scores)"""


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of ``boundary_minilm_lora.safetensors`` (:func:`train_finetuned`)."""

    max_length: int = 64
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 8e-4
    lora_r: int = 8
    lora_alpha: int = 16
    seed: int = 0


CONTRAST_REPEAT = 3
"""Generated contrast pairs are few; they are repeated to weigh as much as a mid-size source."""


def _some_templates(reqs: list[D.Request], k: int, rng: random.Random) -> list[D.Example]:
    """Each request raw plus ``k`` random training templates (keeps benign chat turns cheap)."""
    names = [n for n in D.TRAIN_TEMPLATES if n != "raw"]
    out: list[D.Example] = []
    for r in reqs:
        pick = ["raw", *rng.sample(names, k)]
        out += D.as_preferences([r], {n: D.TRAIN_TEMPLATES[n] for n in pick})
    return out


def harm_training_set(data: Path, seed: int) -> tuple[list[D.Example], list[str]]:
    """(training examples, keys of the requests they were built from)."""
    rng = random.Random(seed)
    harmful = D.load_advbench(data)
    dna_harm, dna_sensitive = D.load_donotanswer(data)
    harmful += dna_harm
    contrast = D.contrast_requests()
    edgy_train, _ = D.edgy_split()
    examples = D.as_preferences(contrast, D.TRAIN_TEMPLATES) * CONTRAST_REPEAT
    examples += D.as_preferences(harmful, D.TRAIN_TEMPLATES)
    examples += D.as_preferences(dna_sensitive, D.TRAIN_TEMPLATES)
    examples += _some_templates(D.load_chat_turns(data), 2, rng)
    examples += D.as_is(D.load_personas(data))
    examples += D.as_is(edgy_train) + _some_templates(edgy_train, 2, rng)
    examples += D.as_is(D.load_conversation_turns(data))  # small talk and replies, as is
    # Prompt injections are flagged, not refused (unless they also ask for harm): the
    # CyberSecEval attacks of the training variants count as benign for the harm model.
    samples = D.load_injections(data)
    test = D.injection_test_variants(samples)
    examples += D.as_is(
        D.Request(x.text, D.BENIGN, "cyberseceval")
        for x in samples
        if x.source == "cyberseceval" and not D.is_injection_test(x, test)
    )
    keys = sorted({D.text_key(e.request) for e in examples})
    return examples, keys


def injection_training_set(data: Path) -> tuple[list[str], list[str], list[str]]:
    """(positive texts, negative texts, keys of the positives' attack texts)."""
    samples = D.load_injections(data)
    test = D.injection_test_variants(samples)
    pos = [
        s.text
        for s in samples
        if not D.is_injection_test(s, test) and not s.source.startswith("bipia_in_email")
    ]
    emails = D.load_benign_content(data)
    edgy_train, _ = D.edgy_split()
    _, dna_sensitive = D.load_donotanswer(data)
    neg = [r.text for r in D.load_personas(data, 2000) + D.load_chat_turns(data) + dna_sensitive]
    neg += [r.text for r in edgy_train]
    neg += [r.text for r in D.load_conversation_turns(data)]
    neg += [seg for e in emails[::2] for seg in segments(e.text)]
    neg += [e.text for e in emails[::2]]
    keys = sorted({D.text_key(t) for t in pos} | {D.text_key(e.text) for e in emails[::2]})
    return pos, neg, keys


INJECTION = "injection"
#: Share of the total loss weight of each side in the fine-tuned model's training set.
GROUP_WEIGHTS = {D.BENIGN: 0.45, "harm": 0.35, INJECTION: 0.20}


#: The fine-tuned classifier's whole-source hold-out: two folds of sources, each holding
#: harmful and benign sources of every decision (one LoRA per source would cost 17 trainings).
FINETUNE_FOLDS: tuple[tuple[str, ...], ...] = (
    (
        "advbench",
        "xstest",
        "prefeval",
        "conversation",
        "hh_helpful",
        "msc_personas",
        "cyberseceval",
        "edgy",
        "locomo_heldout",
        "style_wishes",
    ),
    (
        "donotanswer",
        "simplesafetytests",
        "openai_moderation",
        "phtest",
        "contrast",
        "mt-bench-101",
        "bipia_email",
    ),
)


def _with_injection(
    rows: Sequence[Any], pos: Sequence[str], neg: Sequence[str]
) -> tuple[list[str], list[str], np.ndarray]:
    """(texts, labels, weights) of the fine-tuned classifier: the broad harm rows
    (CyberSecEval's attacks relabelled ``injection``) plus the injection texts they lack
    (``pos`` as ``injection``, ``neg`` as ``benign``). Weights keep each row's source weight
    and give benign, harmful and injection texts :data:`GROUP_WEIGHTS` of the total each."""
    pos_set = set(pos)
    texts = [r.text for r in rows]
    labels = [
        INJECTION if r.text in pos_set or r.source == "cyberseceval" else r.label for r in rows
    ]
    raw = [r.weight for r in rows]
    seen = set(texts)
    for text, label in [(t, INJECTION) for t in pos] + [(t, D.BENIGN) for t in neg]:
        if text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(label)
            raw.append(1.0)
    group = [lab if lab in (D.BENIGN, INJECTION) else "harm" for lab in labels]
    totals: dict[str, float] = {}
    for g, w in zip(group, raw, strict=True):
        totals[g] = totals.get(g, 0.0) + w
    weights = np.array(
        [GROUP_WEIGHTS[g] * w / totals[g] for g, w in zip(group, raw, strict=True)],
        dtype=np.float64,
    )
    weights *= len(texts) / weights.sum()  # mean weight 1
    return texts, labels, weights


def finetune_sources(data: Path, config: BoundaryConfig) -> list[Any]:
    """The fine-tuned classifier's sources: the broad model's
    (:func:`~personalign.training.boundary_sources.harm_sources`) plus users' own answer-style
    wishes (the trained half of :func:`~personalign.training.safety_data.style_wishes_split`),
    so that "be blunt", "roast my code" or "no bullet points" read as the wishes they are."""
    from personalign.training import boundary_sources as S

    wishes = S.SourceSet(
        "style_wishes", texts=D.style_wishes_split()[0], texts_are_preferences=True
    )
    return [*S.harm_sources(data, config.max_per_source, config.seed), wishes]


def finetune_training_set(
    data: Path, seed: int
) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """(texts, labels, weights, train keys) of the one fine-tuned boundary classifier: the
    rows of :func:`finetune_sources` (:func:`~personalign.training.boundary_sources.
    training_rows`, weighted by source) plus the texts of :func:`injection_training_set`
    (see :func:`_with_injection`)."""
    from personalign.training import boundary_sources as S

    config = BoundaryConfig(seed=seed)
    sets = finetune_sources(data, config)
    rows = S.training_rows(
        sets, templates=config.train_templates, source_power=config.source_power, seed=seed
    )
    pos, neg, inj_keys = injection_training_set(data)
    texts, labels, weights = _with_injection(rows, pos, neg)
    keys = sorted({D.text_key(r.text) for s in sets for r in s.requests + s.texts} | set(inj_keys))
    return texts, labels, weights, keys


def calibrate_decisions(
    heldout: Sequence[Any], config: BoundaryConfig, *, reply_at_false_flags: bool = False
) -> dict[str, float]:
    """Each decision's threshold calibrated on held-out scores against ``config``'s targets
    (the smallest larger relative miss). ``reply_at_false_flags``: the reply check's
    threshold is instead the lowest whose false flags on replies to benign prompts
    (:data:`~personalign.training.boundary_sources.REPLY_BENIGN_GROUPS`) stay within its
    target (a benign answer refused is lost to the user; its target is a detection rate *at*
    that rate)."""
    from personalign.training import boundary_sources as S

    targets = {
        S.PREFERENCE: (config.target_harmful_admission, config.target_benign_preference_refusal),
        S.REQUEST: (config.target_harmful_request_pass, config.target_benign_request_refusal),
        S.REPLY: (config.target_reply_miss, config.target_reply_false_flag),
    }
    out = {
        decision: S.calibrate(heldout, decision, harm_target=harm, benign_target=benign)
        for decision, (harm, benign) in targets.items()
    }
    if reply_at_false_flags:
        out[S.REPLY] = S.calibrate_at_false_flags(
            heldout,
            S.REPLY,
            benign_target=config.target_reply_false_flag,
            benign_groups=S.REPLY_BENIGN_GROUPS,
        )
    return out


def fit(
    x: np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str],
    *,
    l2: float = 1e-4,
    max_iter: int = 1000,
    sample_weight: np.ndarray | None = None,
    tol: float = 1e-8,
) -> EmbeddingClassifier:
    """Train a classifier on rows ``x`` with string ``labels`` (each one of ``classes``).

    scikit-learn's :class:`~sklearn.linear_model.LogisticRegression` (L-BFGS, softmax over
    the classes; a binary problem is one logistic regression) minimizing the weighted mean
    cross-entropy (``sample_weight`` normalized to sum 1) plus ``l2`` times the squared
    weights (``C = 1 / (2 * l2)``). Deterministic: a convex objective solved from zeros.
    """
    from personalign.extras import require

    require("train", ["sklearn"], what="fitting a logistic regression")
    from sklearn.linear_model import LogisticRegression

    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in labels], dtype=np.int64)
    x = np.asarray(x, dtype=np.float64)
    k = len(classes)
    present = sorted(set(y.tolist()))
    if len(present) < 2:
        raise ValueError(f"fit needs at least two classes among the labels, got {present}")
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    model = LogisticRegression(C=1.0 / (2.0 * l2), max_iter=max_iter, tol=tol)
    model.fit(x, y, sample_weight=w / w.sum())
    w2 = np.zeros((x.shape[1], k), dtype=np.float32)
    b2 = np.zeros(k, dtype=np.float32)
    if len(present) == 2:  # one logit: softmax([0, z]) == sigmoid(z)
        w2[:, present[1]] = model.coef_[0]
        b2[present[1]] = model.intercept_[0]
    else:
        w2[:, present] = model.coef_.T
        b2[present] = model.intercept_
    return EmbeddingClassifier(classes=tuple(classes), w2=w2, b2=b2)


def save_artifact(
    path: Path, models: Mapping[str, EmbeddingClassifier], meta: Mapping[str, Any]
) -> None:
    """Write ``models`` (float16 weights) and ``meta`` (JSON) to one ``.npz`` file."""
    arrays: dict[str, np.ndarray] = {}
    model_meta: dict[str, Any] = {}
    for name, model in models.items():
        arrays[f"{name}.w2"] = model.w2.astype(np.float16)
        arrays[f"{name}.b2"] = model.b2.astype(np.float32)
        if model.w1 is not None and model.b1 is not None:
            arrays[f"{name}.w1"] = model.w1.astype(np.float16)
            arrays[f"{name}.b1"] = model.b1.astype(np.float32)
        model_meta[name] = {"classes": list(model.classes), **model.meta}
    payload = {"models": model_meta, **meta}
    arrays["meta"] = np.frombuffer(json.dumps(payload, sort_keys=True).encode("utf-8"), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A zip with fixed timestamps and sorted members: the same weights give the same bytes.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def _balanced(labels: list[str], positive: object) -> np.ndarray:
    """Weights that give the positive and the negative side half the total each."""
    is_pos = np.array([lab != positive for lab in labels])
    w = np.where(is_pos, 0.5 / max(1, is_pos.sum()), 0.5 / max(1, (~is_pos).sum()))
    return w.astype(np.float32)


def embed(embedder: object, texts: list[str]) -> np.ndarray:
    """``embedder``'s float32 vectors of ``texts`` (each distinct text embedded once)."""
    unique = list(dict.fromkeys(texts))
    vectors = embedder.embed(unique)  # type: ignore[attr-defined]
    index = {t: i for i, t in enumerate(unique)}
    return np.asarray(vectors[[index[t] for t in texts]], dtype=np.float32)


def fit_embedded(
    embedder: Any,
    texts: list[str],
    labels: list[str],
    classes: list[str],
    config: BoundaryConfig = BoundaryConfig(),
    *,
    cache: Path | None = None,
) -> EmbeddingClassifier:
    """A softmax regression over ``embedder``'s vectors of ``texts`` (:func:`fit` with
    ``config``'s hyper-parameters); ``classes[0]`` (the negative class) and the rest weigh
    half the total each; records the embedder's name."""
    model = fit(
        embed_cached(embedder, texts, cache),
        labels,
        classes,
        l2=config.l2,
        max_iter=config.max_iter,
        sample_weight=_balanced(labels, classes[0]),
    )
    model.meta = {"embedder": embedder.name}
    return model


def _fit_finetuned(
    texts: list[str],
    labels: list[str],
    weights: np.ndarray,
    out: Path,
    config: FinetuneConfig,
    *,
    threads: int,
    log: Callable[[str], None] | None,
    extra_meta: Mapping[str, Any],
) -> TrainReport:
    from personalign.training.finetune import train_classifier

    if log is not None:
        log(
            f"fine-tuning MiniLM (LoRA) on {len(texts)} texts {dict(Counter(labels).most_common())}"
        )
    return train_classifier(
        texts,
        labels,
        out,
        label_names=[D.BENIGN, INJECTION, *D.GOLD_CATEGORIES],
        sample_weight=weights,
        max_length=config.max_length,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        seed=config.seed,
        threads=threads,
        log=log,
        log_every=100,
        extra_meta=extra_meta,
    )


def load_fold_model(artifact: Path, cache_dir: Path) -> Any:
    """A fine-tuned boundary artifact, run as the boundary runs it (int8 ONNX)."""
    from personalign.backends.finetuned import FinetunedClassifier

    return FinetunedClassifier.load(artifact, cache_dir, quantize=True)


def harm_scores(model: Any, texts: list[str]) -> np.ndarray:
    """The summed probability of the harm categories per text (``model``: a fine-tuned
    boundary classifier)."""
    harm = [model.labels.index(c) for c in D.GOLD_CATEGORIES if c in model.labels]
    out: np.ndarray = model.predict_proba(texts)[:, harm].sum(axis=1).astype(np.float64)
    return out


def finetune_heldout(
    data: Path,
    workdir: Path,
    config: FinetuneConfig = FinetuneConfig(),
    *,
    folds: Sequence[Sequence[str]] = FINETUNE_FOLDS,
    threads: int = 1,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """The fine-tuned classifier's whole-source hold-out: per fold of :data:`FINETUNE_FOLDS`,
    a classifier trained by the same recipe on the other sources (their injection texts
    too) scores the fold's evaluation rows; each decision's threshold is calibrated on those
    scores (the reply check's at its false-flag target). Returns the artifact metadata it
    adds: ``thresholds``, ``heldout_source_figures``
    (:func:`~personalign.training.boundary_sources.heldout_figures`, and
    :func:`heldout_injection`'s) and the folds. The fold models and the scored rows
    (``heldout_scores.jsonl``) are written under ``workdir``."""
    from personalign.training import boundary_sources as S

    bconf = BoundaryConfig(seed=config.seed)
    sets = finetune_sources(data, bconf)
    pos, neg, _ = injection_training_set(data)
    done: list[tuple[frozenset[str], Any]] = []  # (the groups it never saw, the fold model)

    def fit_rows(rows: list[S.Row]) -> Callable[[list[str]], np.ndarray]:
        trained = {r.group for r in rows}
        unseen = frozenset(s.group for s in sets if s.group not in trained)
        held = {D.text_key(r.text) for s in sets if s.group in unseen for r in s.requests + s.texts}
        texts, labels, weights = _with_injection(
            rows,
            [t for t in pos if D.text_key(t) not in held],
            [t for t in neg if D.text_key(t) not in held],
        )
        out = workdir / f"fold{len(done)}.safetensors"
        _fit_finetuned(
            texts,
            labels,
            weights,
            out,
            config,
            threads=threads,
            log=log,
            extra_meta={"purpose": "hold-out fold of the boundary classifier"},
        )
        model = load_fold_model(out, workdir / "cache")
        done.append((unseen, model))
        return lambda texts: harm_scores(model, texts)

    heldout = S.leave_groups_out(
        sets,
        fit_rows,
        folds=folds,
        templates=bconf.train_templates,
        eval_templates=bconf.eval_templates,
        source_power=bconf.source_power,
        seed=config.seed,
        log=log,
    )
    thresholds = calibrate_decisions(heldout, bconf, reply_at_false_flags=True)
    with (workdir / "heldout_scores.jsonl").open("w", encoding="utf-8") as f:
        for row, sc in heldout:
            f.write(json.dumps({**vars(row), "score": sc}) + "\n")
    figures = S.heldout_figures(heldout, thresholds)
    figures.update(heldout_injection(data, sets, done))
    return {
        "thresholds": thresholds,
        "heldout_source_figures": figures,
        "heldout_folds": [list(f) for f in folds],
    }


def heldout_injection(
    data: Path,
    sets: Sequence[Any],
    fold_models: Sequence[tuple[Collection[str], Any]],
    threshold: float = 0.5,
) -> dict[str, float | int]:
    """The fold models' injection flags (p(``injection``) >= ``threshold``, the classifier
    alone) on text none of them trained on: CyberSecEval's attacks and PrefEval's preferences
    by the model that never saw their source, BIPIA's clean emails likewise, BIPIA's held-out
    attack variants (alone and inside emails) by every fold model. ``fold_models``: (the
    groups a model never saw, the model). Empty when a side is absent."""
    from personalign.training.boundary_sources import wilson

    samples = D.load_injections(data)
    test = D.injection_test_variants(samples)
    bipia_test = [
        x.text for x in samples if x.source != "cyberseceval" and D.is_injection_test(x, test)
    ]
    flagged = {"attack": [0, 0], "benign": [0, 0]}
    for unseen, clf in fold_models:
        if D.BENIGN not in clf.labels or INJECTION not in clf.labels:
            return {}
        mine = [s for s in sets if s.group in unseen]
        attacks = [r.text for s in mine if s.group == "cyberseceval" for r in s.texts]
        benign = [r.text for s in mine if s.group in ("prefeval", "bipia_email") for r in s.texts]
        col = clf.labels.index(INJECTION)
        for side, texts in (("attack", attacks + bipia_test), ("benign", benign)):
            if texts:
                p = clf.predict_proba(texts)[:, col]
                flagged[side][0] += int((p >= threshold).sum())
                flagged[side][1] += len(texts)
    out: dict[str, float | int] = {}
    for side, key in (
        ("attack", "injection_detection_rate"),
        ("benign", "injection_false_flag_rate"),
    ):
        k, n = flagged[side]
        if n:
            lo, hi = wilson(k, n)
            out[key] = round(k / n, 4)
            out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = round(lo, 4), round(hi, 4)
            out[f"{key}_n"] = n
    return out


def train_finetuned(
    data: Path,
    out: Path,
    config: FinetuneConfig = FinetuneConfig(),
    *,
    threads: int = 1,
    heldout: bool = True,
    workdir: Path | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = print,
) -> TrainReport:
    """Fine-tune the one MiniLM boundary classifier (LoRA) on :func:`finetune_training_set`
    and write its artifact to ``out`` (needs torch and PEFT); records the recipe. With
    ``heldout`` (default) it first runs :func:`finetune_heldout` (two more trainings, on half
    the sources each, in ``workdir``, default a temporary folder) and records its calibrated
    thresholds, which the boundary then uses per decision."""
    import tempfile

    calibration: dict[str, Any] = {}
    if heldout:
        with tempfile.TemporaryDirectory(prefix="boundary-folds-") as tmp:
            calibration = finetune_heldout(
                data, workdir or Path(tmp), config, threads=threads, log=log
            )
    texts, labels, weights, keys = finetune_training_set(data, config.seed)
    protocol = (
        f"thresholds calibrated on whole-source hold-out ({len(FINETUNE_FOLDS)} folds of "
        "sources, each scored by a model trained on the others); the shipped model trains on "
        "every source"
        if heldout
        else "trained on every source (no source held out)"
    )
    return _fit_finetuned(
        texts,
        labels,
        weights,
        out,
        config,
        threads=threads,
        log=log,
        extra_meta={
            "purpose": "personalign safety boundary: harm categories + prompt injection",
            "heldout_protocol": f"{protocol}; {D.HELDOUT_PROTOCOL}",
            "train_keys": " ".join(keys),
            "group_weights": GROUP_WEIGHTS,
            "recipe": recipe_meta(train_finetuned, config),
            **calibration,
            **dict(extra_meta or {}),
        },
    )


# --------------------------------------------------------------------------------------------
# the broad harm model: every source, weighted by source, thresholds calibrated held-out
# --------------------------------------------------------------------------------------------


def embed_cached(embedder: Any, texts: list[str], cache: Path | None) -> np.ndarray:
    """:func:`embed` with an on-disk cache of vectors by text (``cache``: a folder; None: no
    cache). A development aid: training the same texts again costs no embedding."""
    if cache is None:
        return embed(embedder, texts)
    cache.mkdir(parents=True, exist_ok=True)
    base = cache / f"{embedder.name}"
    known: dict[str, np.ndarray] = {}
    if base.with_suffix(".npy").is_file() and base.with_suffix(".json").is_file():
        vecs = np.load(base.with_suffix(".npy"))
        keys = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
        known = dict(zip(keys, vecs, strict=True))
    missing = list(dict.fromkeys(t for t in texts if t not in known))
    if missing:
        new = embed(embedder, missing)
        known.update(zip(missing, new, strict=True))
        keys = list(known)
        np.save(base.with_suffix(".npy"), np.stack([known[k] for k in keys]).astype(np.float32))
        base.with_suffix(".json").write_text(json.dumps(keys), encoding="utf-8")
    return np.stack([known[t] for t in texts]).astype(np.float32)


@dataclass
class BroadHarm:
    """The result of :func:`train_broad_harm`."""

    model: EmbeddingClassifier
    thresholds: dict[str, float]
    heldout: list[tuple[Any, float]]
    """(row, harm score) of every source's evaluation rows, by a model that never saw it"""
    rows: list[Any]
    data_sha256: str
    keys: list[str]
    """:func:`~personalign.training.safety_data.text_key` of every request and text trained on"""


def _harm_scores(model: EmbeddingClassifier, x: np.ndarray) -> np.ndarray:
    p = model.predict_proba(x)
    out: np.ndarray = 1.0 - p[:, model.classes.index(D.BENIGN)]
    return out


def train_broad_harm(
    embedder: Any,
    data: Path,
    config: BoundaryConfig = BoundaryConfig(),
    *,
    cache: Path | None = None,
    log: Callable[[str], None] | None = print,
) -> BroadHarm:
    """The boundary's harm model over ``embedder``'s vectors, trained on every source of
    :func:`~personalign.training.boundary_sources.harm_sources` (weighted by source), with
    each decision's threshold calibrated on leave-one-source-out scores; records the recipe."""
    from personalign.training import boundary_sources as S

    classes = [D.BENIGN, *D.GOLD_CATEGORIES]
    sets = S.harm_sources(data, config.max_per_source, config.seed)

    def fit_rows(rows: list[S.Row], max_iter: int, tol: float) -> EmbeddingClassifier:
        x = embed_cached(embedder, [r.text for r in rows], cache)
        w = np.array([r.weight for r in rows])
        return fit(
            x,
            [r.label for r in rows],
            classes,
            l2=config.l2,
            max_iter=max_iter,
            sample_weight=w,
            tol=tol,
        )

    def loso_fit(rows: list[S.Row]) -> Callable[[list[str]], np.ndarray]:
        model = fit_rows(rows, config.loso_max_iter, 1e-4)
        return lambda texts: _harm_scores(model, embed_cached(embedder, texts, cache))

    heldout = S.leave_source_out(
        sets,
        loso_fit,
        templates=config.train_templates,
        eval_templates=config.eval_templates,
        source_power=config.source_power,
        seed=config.seed,
        log=log,
    )
    thresholds = calibrate_decisions(heldout, config)
    rows = S.training_rows(
        sets, templates=config.train_templates, source_power=config.source_power, seed=config.seed
    )
    digest = broad_data_sha256(rows)
    keys = sorted({D.text_key(r.text) for s in sets for r in s.requests + s.texts})
    model = fit_rows(rows, config.max_iter, 1e-8)
    model.meta = {
        "embedder": embedder.name,
        "thresholds": thresholds,
        "sources": sorted({s.group for s in sets}),
        "recipe": recipe_meta(train_broad_harm, config, data=digest),
    }
    if log is not None:
        log(f"broad harm model: {len(rows)} rows, thresholds {thresholds}")
    return BroadHarm(model, thresholds, heldout, rows, digest, keys)


def broad_data_sha256(rows: Sequence[Any]) -> str:
    """The recorded hash of :func:`train_broad_harm`'s training rows (text, label, weight)."""
    from personalign.training.recipe import data_sha256

    return data_sha256([[r.text, r.label, round(r.weight, 9)] for r in rows])
