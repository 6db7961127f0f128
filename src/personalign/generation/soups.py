"""Dimension experts and their soups: one LoRA per style pole, merged by a user's weights.

For each style dimension of :mod:`personalign.rewards.dimensions` there are two *experts*,
LoRA adapters DPO-trained on the base model (:mod:`personalign.training.experts`, ``personalign
train experts``): ``<dim>+`` (more of the dimension) and ``<dim>-`` (less). A *soup* is their
weighted sum for one user (Personalized Soups, Jang et al. 2023): signed weights over the
dimensions pick the ``+`` expert for a positive weight and the ``-`` expert for a negative one;
their absolute values, normalised to sum to 1 and rounded to two decimals, are the experts'
coefficients. The soup is merged with PEFT's ``add_weighted_adapter(combination_type="cat")``,
which stacks ``A' = [w_1 s_1 A_1; w_2 s_2 A_2; ...]`` and ``B' = [B_1, B_2, ...]`` with scaling
1 (``lora_alpha = r`` = the summed ranks), so ``B' A' = sum_k w_k s_k B_k A_k``: the weighted sum
of the experts' deltas, exactly (PEFT merges a single adapter with ``linear``,
``sqrt(w s) B . sqrt(w s) A``, exact too).

Layout under ``root``::

    <root>/conciseness-plus/adapter_model.safetensors    # an expert: a standard PEFT folder
    <root>/conciseness-plus/adapter_config.json
    <root>/conciseness-plus/recipe.json                  # pole, hash, base model, metrics
    <root>/conciseness-minus/...
    <root>/soups/conciseness-plus-0.60_warmth-minus-0.40/   # a cached soup (+ soup.json)

A soup is cached by its key (``conciseness+0.60,warmth-0.40``): the same weights give the same
folder without a merge. It is written to a temporary folder and renamed into place under a
file lock, so processes asking for the same soup get one complete folder; a soup whose experts
were retrained since (their recipe hashes differ) is merged again.

:class:`SoupAdapters` is an :class:`~personalign.backends.models.adapters.AdapterSource`: it
resolves ``expert:<pole>`` and ``soup:<key>`` (merging on first use) and hands every other
name to the source it wraps (the users' :class:`~personalign.feedback.AdapterStore`), so
``TransformersLM(..., adapters=SoupAdapters(ExpertSet(root), store))`` serves
``GenerationOptions(adapter=soup_name(weights))``.

Nothing here trains (that is :mod:`personalign.training.experts`, which writes this layout);
peft and torch are imported on the first merge.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from personalign.errors import NotFoundError, ValidationError
from personalign.rewards.dimensions import DIMENSION_NAMES

if TYPE_CHECKING:
    from personalign.backends.models.adapters import AdapterSource

Sign = Literal["+", "-"]
SIGNS: tuple[Sign, ...] = ("+", "-")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
RECIPE_FILE = "recipe.json"
SOUP_FILE = "soup.json"
SOUPS_DIR = "soups"
STEERING_FILE = "steering"
"""The folder of the steering vectors computed from the experts' pairs, beside them."""
EXPERT_PREFIX = "expert:"
SOUP_PREFIX = "soup:"
DECIMALS = 2
"""Soup weights are rounded to this many decimals: the cache key's resolution."""

_SIGN_WORD: dict[str, str] = {"+": "plus", "-": "minus"}
_POLE_RE = re.compile(r"^([a-z_]+)([+-])$")
_TERM_RE = re.compile(r"^([a-z_]+)([+-])(\d+(?:\.\d+)?)$")


def pole_name(dimension: str, sign: str) -> str:
    """``conciseness+`` / ``conciseness-``: the pole of ``dimension`` with ``sign``."""
    check_dimension(dimension)
    if sign not in SIGNS:
        raise ValidationError(f"a pole's sign is '+' or '-', got {sign!r}")
    return f"{dimension}{sign}"


def parse_pole(pole: str) -> tuple[str, Sign]:
    """``("conciseness", "+")`` of ``conciseness+``; ValidationError for anything else."""
    m = _POLE_RE.match(pole)
    if not m:
        raise ValidationError(f"a pole is a dimension and '+' or '-' (conciseness+), got {pole!r}")
    check_dimension(m.group(1))
    return m.group(1), "+" if m.group(2) == "+" else "-"


def pole_folder(pole: str) -> str:
    """The expert's folder name: ``conciseness-plus`` for ``conciseness+`` (no ``+`` in paths)."""
    dim, sign = parse_pole(pole)
    return f"{dim}-{_SIGN_WORD[sign]}"


def pole_of_folder(folder: str) -> str:
    """The pole of an expert folder name (inverse of :func:`pole_folder`)."""
    dim, _, word = folder.rpartition("-")
    sign = {w: s for s, w in _SIGN_WORD.items()}.get(word)
    if sign is None:
        raise ValidationError(f"{folder!r} is not an expert folder name (conciseness-plus)")
    return pole_name(dim, sign)


def check_dimension(name: str) -> str:
    """``name`` when it is one of :data:`~personalign.rewards.dimensions.DIMENSION_NAMES`."""
    if name not in DIMENSION_NAMES:
        raise ValidationError(
            f"unknown style dimension {name!r}; known: {', '.join(DIMENSION_NAMES)}"
        )
    return name


def soup_terms(weights: Mapping[str, float]) -> dict[str, float]:
    """``{pole: coefficient}`` of signed dimension ``weights``: the pole of each weight's sign,
    ``|w| / sum |w|`` rounded to :data:`DECIMALS` (terms that round to 0 dropped), in the order
    of ``DIMENSION_NAMES``. ``{}`` when every weight is 0 (the base model)."""
    clean: dict[str, float] = {}
    for name, w in weights.items():
        check_dimension(name)
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
            raise ValidationError(f"the weight of {name!r} must be a finite number, got {w!r}")
        clean[name] = float(w)
    total = sum(abs(w) for w in clean.values())
    if total == 0:
        return {}
    out: dict[str, float] = {}
    for dim in DIMENSION_NAMES:
        w = clean.get(dim, 0.0)
        coef = round(abs(w) / total, DECIMALS)
        if coef > 0:
            out[f"{dim}{'+' if w > 0 else '-'}"] = coef
    return out


def soup_key(weights: Mapping[str, float]) -> str | None:
    """The cache key of ``weights``' soup, ``conciseness+0.60,warmth-0.40``; None for the base
    model (every weight 0)."""
    terms = soup_terms(weights)
    return ",".join(f"{p}{c:.{DECIMALS}f}" for p, c in terms.items()) or None


def soup_name(weights: Mapping[str, float]) -> str | None:
    """The adapter name that serves ``weights``: ``soup:<key>`` (None: the base model)."""
    key = soup_key(weights)
    return None if key is None else SOUP_PREFIX + key


def parse_soup_key(key: str) -> dict[str, float]:
    """``{pole: coefficient}`` of a soup key (inverse of :func:`soup_key`)."""
    terms: dict[str, float] = {}
    for part in key.split(","):
        m = _TERM_RE.match(part.strip())
        if not m:
            raise ValidationError(f"bad soup key {key!r}: terms look like conciseness+0.60")
        pole = pole_name(m.group(1), m.group(2))
        if pole in terms or pole_name(m.group(1), "-" if m.group(2) == "+" else "+") in terms:
            raise ValidationError(f"bad soup key {key!r}: {m.group(1)} appears twice")
        coef = float(m.group(3))
        if coef > 0:
            terms[pole] = coef
    if not terms:
        raise ValidationError(f"bad soup key {key!r}: no positive term")
    return terms


def _pole_order(pole: str) -> tuple[int, int]:
    dim, sign = parse_pole(pole)
    return DIMENSION_NAMES.index(dim), SIGNS.index(sign)


def _soup_folder(terms: Mapping[str, float]) -> str:
    return "_".join(f"{pole_folder(p)}-{c:.{DECIMALS}f}" for p, c in terms.items())


@dataclass(frozen=True)
class Expert:
    """One trained expert: its pole (``warmth-``), folder and recipe."""

    pole: str
    path: Path
    recipe: dict[str, Any]

    @property
    def dimension(self) -> str:
        return parse_pole(self.pole)[0]

    @property
    def sign(self) -> Sign:
        return parse_pole(self.pole)[1]

    @property
    def hash(self) -> str:
        """The recipe hash it was trained with (what a soup records of it)."""
        return str(self.recipe.get("hash", ""))


class ExpertSet:
    """The experts under ``root`` (see the module doc) and their cached soups.

    ``base_dir`` is the base model's directory, needed to merge; by default the one the
    experts' recipes name (``base_model_dir``). Safe across threads and processes."""

    def __init__(self, root: str | Path, *, base_dir: str | Path | None = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise NotFoundError(
                f"no experts folder at {self.root}; train them with `personalign train experts`"
            )
        self._base_dir = Path(base_dir).expanduser() if base_dir is not None else None
        self._lock = threading.Lock()
        self._peft: Any = None  # a PeftModel holding every expert (loaded on the first merge)
        self._peft_names: dict[str, str] = {}  # "<expert folder>@<hash>" -> PEFT adapter name
        self._listed: tuple[int, dict[str, Expert]] | None = None  # (root's mtime, experts)
        self.merges = 0
        """Soups this instance merged (a cached soup is not merged again)."""

    # -- the experts ---------------------------------------------------------------------

    @property
    def experts(self) -> dict[str, Expert]:
        """``{pole: Expert}`` of every complete expert folder (adapter files and recipe), in
        the order of ``DIMENSION_NAMES``, ``+`` before ``-``."""
        stamp = self.root.stat().st_mtime_ns  # an expert is renamed into place: this changes
        if self._listed is not None and self._listed[0] == stamp:
            return dict(self._listed[1])
        found: dict[str, Expert] = {}
        for d in sorted(self.root.iterdir()):
            if not d.is_dir() or d.name.startswith(".") or d.name == SOUPS_DIR:
                continue
            if not all((d / f).is_file() for f in (*ADAPTER_FILES, RECIPE_FILE)):
                continue
            recipe = json.loads((d / RECIPE_FILE).read_text())
            pole = recipe.get("pole")
            if isinstance(pole, str) and _POLE_RE.match(pole) and pole_folder(pole) == d.name:
                found[pole] = Expert(pole, d, recipe)
        ordered = {p: found[p] for p in sorted(found, key=_pole_order)}
        self._listed = (stamp, ordered)
        return dict(ordered)

    @property
    def poles(self) -> list[str]:
        return list(self.experts)

    @property
    def dimensions(self) -> list[str]:
        """The dimensions with at least one expert, in ``DIMENSION_NAMES`` order."""
        have = {parse_pole(p)[0] for p in self.experts}
        return [d for d in DIMENSION_NAMES if d in have]

    def expert(self, pole: str) -> Expert:
        """The expert of ``pole``; NotFoundError when it was not trained."""
        parse_pole(pole)
        found = self.experts.get(pole)
        if found is None:
            raise NotFoundError(
                f"no expert {pole!r} in {self.root} (trained: {', '.join(self.poles) or 'none'})"
            )
        return found

    def recipe(self, pole: str) -> dict[str, Any]:
        return self.expert(pole).recipe

    def base_dir(self) -> Path:
        """The base model's directory (given, or from the experts' recipes)."""
        if self._base_dir is not None:
            return self._base_dir
        for e in self.experts.values():
            d = e.recipe.get("base_model_dir")
            if d and (Path(d) / "config.json").is_file():
                return Path(d)
        raise NotFoundError(
            f"the base model of the experts in {self.root} is not on disk; pass base_dir"
        )

    # -- soups ---------------------------------------------------------------------------

    def soup(self, weights: Mapping[str, float]) -> Path | None:
        """The soup folder of signed dimension ``weights`` (a standard PEFT folder), merged and
        cached on first use; None when every weight is 0 (the base model)."""
        terms = soup_terms(weights)
        return self._soup(terms) if terms else None

    def soup_path(self, key: str) -> Path:
        """The soup folder of a soup key (``conciseness+0.60,warmth-0.40``)."""
        return self._soup(parse_soup_key(key))

    def _soup(self, terms: Mapping[str, float]) -> Path:
        experts = [self.expert(p) for p in terms]  # NotFoundError before any lock or merge
        bases = {str(e.recipe.get("base_model_dir", "")) for e in experts}
        if len(bases) > 1:
            raise ValidationError(
                f"experts {', '.join(terms)} were trained on different base models: {bases}"
            )
        key = ",".join(f"{p}{c:.{DECIMALS}f}" for p, c in terms.items())
        meta = {
            "key": key,
            "terms": dict(terms),
            "experts": {e.pole: e.hash for e in experts},
            "combination_type": "cat",
        }
        soups = self.root / SOUPS_DIR
        target = soups / _soup_folder(terms)
        if self._fresh(target, meta):
            return target
        from filelock import FileLock

        soups.mkdir(parents=True, exist_ok=True)
        with self._lock, FileLock(str(soups / f".{target.name}.lock")):
            if self._fresh(target, meta):  # another process merged it meanwhile
                return target
            tmp = soups / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                self._merge(experts, [terms[e.pole] for e in experts], tmp)
                (tmp / SOUP_FILE).write_text(json.dumps(meta, indent=2))
                if target.exists():  # stale: its experts were retrained
                    old = soups / f".old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                    target.rename(old)
                    shutil.rmtree(old, ignore_errors=True)
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self.merges += 1
        return target

    @staticmethod
    def _fresh(target: Path, meta: Mapping[str, Any]) -> bool:
        if not all((target / f).is_file() for f in (*ADAPTER_FILES, SOUP_FILE)):
            return False
        try:
            have = json.loads((target / SOUP_FILE).read_text())
        except (OSError, ValueError):
            return False
        return bool(have.get("experts") == meta["experts"] and have.get("key") == meta["key"])

    def _merge(self, experts: list[Expert], coefs: list[float], dest: Path) -> None:
        """PEFT's ``add_weighted_adapter(combination_type="cat")`` of ``experts`` with
        ``coefs``, saved to ``dest`` as a standard PEFT folder."""
        from personalign.backends.models.embedded import _quiet_hf

        peft = self._load_experts(experts)
        names = [self._peft_names[f"{e.path}@{e.hash}"] for e in experts]
        with _quiet_hf():
            peft.add_weighted_adapter(names, coefs, "soup", combination_type="cat")
            try:
                peft.save_pretrained(str(dest), selected_adapters=["soup"])
            finally:
                peft.delete_adapter("soup")
        saved = dest / "soup"  # PEFT saves an adapter not named "default" in a subfolder
        for f in ADAPTER_FILES:
            (saved / f).rename(dest / f)
        shutil.rmtree(saved)

    def _load_experts(self, experts: list[Expert]) -> Any:
        """The PeftModel over the base model with ``experts`` loaded (kept for later merges;
        an expert retrained since it was loaded is loaded again)."""
        from personalign.backends.models.embedded import _quiet_hf

        with _quiet_hf():
            for e in experts:
                cfg = json.loads((e.path / ADAPTER_FILES[1]).read_text())
                if cfg.get("use_rslora") or cfg.get("use_dora"):
                    raise ValidationError(
                        f"expert {e.pole!r} uses rsLoRA or DoRA: its soup would not be a "
                        "weighted sum of deltas"
                    )
                key = f"{e.path}@{e.hash}"
                if key in self._peft_names:
                    continue
                name = f"e{len(self._peft_names)}"
                if self._peft is None:
                    import torch
                    from peft import PeftModel
                    from transformers import AutoModelForCausalLM

                    base = AutoModelForCausalLM.from_pretrained(
                        self.base_dir(), dtype=torch.float32, local_files_only=True
                    )
                    self._peft = PeftModel.from_pretrained(base, str(e.path), adapter_name=name)
                else:
                    self._peft.load_adapter(str(e.path), adapter_name=name)
                self._peft_names[key] = name
        return self._peft

    def close(self) -> None:
        """Drop the loaded base model and experts (the next merge loads them again)."""
        with self._lock:
            self._peft = None
            self._peft_names.clear()


class SoupAdapters:
    """An adapter source (:class:`~personalign.backends.models.adapters.AdapterSource`) over
    ``experts``: ``expert:<pole>`` is that expert's folder, ``soup:<key>`` the soup's (merged
    on first use); any other name goes to ``fallback`` (e.g. the users' AdapterStore)."""

    def __init__(self, experts: ExpertSet, fallback: AdapterSource | None = None) -> None:
        self.experts = experts
        self.fallback = fallback

    def experts_relative(self, name: str) -> str | None:
        """For an ``expert:``/``soup:`` name, its folder relative to the experts root (what a
        vLLM server that mounts the experts elsewhere is given); None for other names."""
        if not name.startswith((EXPERT_PREFIX, SOUP_PREFIX)):
            return None
        return self.adapter_path(name).relative_to(self.experts.root).as_posix()

    def adapter_path(self, name: str) -> Path:
        if name.startswith(EXPERT_PREFIX):
            return self.experts.expert(name[len(EXPERT_PREFIX) :]).path
        if name.startswith(SOUP_PREFIX):
            return self.experts.soup_path(name[len(SOUP_PREFIX) :])
        if self.fallback is None:
            raise NotFoundError(f"no adapter named {name!r} (no user adapter store configured)")
        return self.fallback.adapter_path(name)
