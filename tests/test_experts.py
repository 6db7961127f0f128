"""Dimension experts (``personalign.training.experts``) and their soups
(``personalign.generation.soups``), on the tiny random Llama: samples, pairs ranked by the
measured dimension, DPO experts with recipes, resumable reruns, exact cached soups served by
``TransformersLM``, and ``personalign train experts``."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from personalign.errors import ConfigError, NotFoundError, ValidationError
from personalign.generation.soups import (
    ExpertSet,
    SoupAdapters,
    parse_pole,
    parse_soup_key,
    pole_folder,
    pole_of_folder,
    soup_key,
    soup_name,
    soup_terms,
)
from personalign.rewards.dimensions import DIMENSIONS
from personalign.training.experts import ExpertsConfig, packaged_prompts

PROMPTS = ["How do I boil an egg?", "What is rain?", "How do I tie a tie?", "Why sleep?"]

# -- pure: configs, soup keys ----------------------------------------------------------------


def test_experts_config_validates_and_hashes_stably() -> None:
    cfg = ExpertsConfig()
    assert cfg.pole_names[:2] == ["conciseness+", "conciseness-"] and len(cfg.pole_names) == 10
    assert cfg.recipe()["version"] >= 1 and cfg.hash == ExpertsConfig().hash
    assert ExpertsConfig(seed=1).hash != cfg.hash
    assert ExpertsConfig(seed=1).sampling_hash != cfg.sampling_hash
    assert ExpertsConfig(beta=0.2).sampling_hash == cfg.sampling_hash  # training only
    bad: list[dict[str, Any]] = [
        {"dimensions": ("kindness",)},
        {"dimensions": ()},
        {"poles": ("*",)},
        {"candidates": 1},
        {"max_steps": 0},
        {"gen_temperature": math.nan},
        {"learning_rate": 2.0},
        {"epochs": True},
        {"min_pairs": 8, "max_pairs": 4},
        {"prompts": "/no/such/prompts.json"},
    ]
    for kw in bad:
        with pytest.raises(ConfigError, match=next(iter(kw))):
            ExpertsConfig(**kw)


def test_packaged_prompts_are_varied_questions() -> None:
    prompts = packaged_prompts()
    assert len(prompts) == 64 and len(set(prompts)) == 64
    assert all(p.strip() and len(p) < 200 for p in prompts)
    assert ExpertsConfig(n_prompts=5).load_prompts() == prompts[:5]


def test_soup_keys_normalise_round_and_pick_the_pole_by_sign() -> None:
    assert soup_terms({"warmth": -2.0, "conciseness": 3.0}) == {
        "conciseness+": 0.6,
        "warmth-": 0.4,
    }
    assert soup_key({"warmth": -2.0, "conciseness": 3.0}) == "conciseness+0.60,warmth-0.40"
    assert soup_name({"conciseness": 0.3}) == "soup:conciseness+1.00"
    assert soup_key({"conciseness": 0.5, "warmth": 0.5}) == soup_key(
        {"warmth": 1, "conciseness": 1}
    )
    assert soup_terms({"conciseness": 1.0, "formality": 1e-4}) == {"conciseness+": 1.0}
    assert soup_name({}) is None and soup_name({"warmth": 0.0, "formality": -0.0}) is None
    assert parse_soup_key("conciseness+0.60,warmth-0.40") == {"conciseness+": 0.6, "warmth-": 0.4}
    with pytest.raises(ValidationError, match="unknown style dimension 'kindness'"):
        soup_key({"kindness": 1.0})
    for w in (math.nan, math.inf, "1", True):
        with pytest.raises(ValidationError, match="finite number"):
            soup_key({"warmth": w})  # type: ignore[dict-item]
    for key in ("warmth", "warmth+0.5,warmth-0.5", "warmth*1", "kindness+1.00", "warmth+0"):
        with pytest.raises(ValidationError):
            parse_soup_key(key)
    assert parse_pole("structure-") == ("structure", "-")
    assert pole_folder("structure-") == "structure-minus"
    assert pole_of_folder("structure-minus") == "structure-"
    with pytest.raises(ValidationError):
        parse_pole("structure")


def test_a_missing_experts_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="personalign train experts"):
        ExpertSet(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    es = ExpertSet(tmp_path / "empty")
    assert es.poles == [] and es.soup({}) is None
    with pytest.raises(NotFoundError, match="no expert 'warmth\\+'"):
        es.soup({"warmth": 1.0})
    from personalign.training.experts import load_pairs

    with pytest.raises(NotFoundError, match="no expert pairs"):
        load_pairs(tmp_path / "empty")


# -- trained on the tiny model (slow: torch, TRL, PEFT) ------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny: Path) -> Path:
    pytest.importorskip("trl")
    return tiny


def _config(tiny: Path, prompts: Path, **kw: Any) -> ExpertsConfig:
    base: dict[str, Any] = {
        "base_model": str(tiny),
        "dimensions": ("conciseness", "formality"),
        "prompts": str(prompts),
        "candidates": 4,
        "gen_max_new_tokens": 16,
        "gen_batch_size": 6,
        "min_margin": 0.001,
        "min_pairs": 1,
        "max_pairs": 4,
        "max_steps": 2,
        "batch_size": 2,
        "max_length": 96,
        "learning_rate": 0.05,
        "save_steps": 1,
        "threads": 1,
    }
    return ExpertsConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from personalign.training.experts import train_experts

    root = tmp_path_factory.mktemp("experts")
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    cfg = _config(tiny, prompts)
    events: list[tuple[str, int, int]] = []
    summary = train_experts(cfg, root / "out", progress=lambda *e: events.append(e))
    return {"cfg": cfg, "out": root / "out", "summary": summary, "events": events}


@pytest.mark.slow
def test_train_experts_writes_samples_pairs_and_peft_experts(trained: dict[str, Any]) -> None:
    from personalign.training.experts import load_pairs

    out, summary, cfg = trained["out"], trained["summary"], trained["cfg"]
    assert summary.sampled and summary.samples == 4 * 4 and summary.prompts == 4
    by_pole = {r.pole: r for r in summary.experts}
    assert list(by_pole) == ["conciseness+", "conciseness-", "formality+", "formality-"]
    head, *rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert head["sampling_hash"] == cfg.sampling_hash and [r["prompt"] for r in rows] == PROMPTS
    pairs = load_pairs(out)
    assert set(pairs) == set(by_pole)
    for pole, res in by_pole.items():
        assert res.status == "trained", res
        folder = out / pole_folder(pole)
        assert {"adapter_config.json", "adapter_model.safetensors", "recipe.json"} <= {
            f.name for f in folder.iterdir()
        }
        recipe = json.loads((folder / "recipe.json").read_text())
        assert recipe["pole"] == pole and recipe["pairs"] == len(pairs[pole]) == res.pairs >= 1
        assert recipe["metrics"]["steps"] == 2 and recipe["recipe_version"] == 1
        assert recipe["config"]["lora_r"] == 8 and recipe["sampling_hash"] == cfg.sampling_hash
        assert len(recipe["hash"]) == 16 and recipe["pairs_hash"]
    assert not (out / ".work").exists() or not any((out / ".work").iterdir())  # cleaned up
    stages = {e[0] for e in trained["events"]}
    assert {"sampling", "conciseness+", "formality-"} <= stages
    assert ("conciseness+", 2, 2) in trained["events"]
    es = ExpertSet(out)
    assert es.poles == list(by_pole) and es.dimensions == ["conciseness", "formality"]
    assert es.recipe("formality-")["dimension"] == "formality"
    # the steering vectors of the same pairs, beside the experts
    from personalign.generation.soups import STEERING_FILE
    from personalign.generation.steering import SteeringVectors

    assert summary.steering == str(out / STEERING_FILE)
    vectors = SteeringVectors.load(out / STEERING_FILE)
    assert set(vectors.poles) == {p for p, v in pairs.items() if v}


@pytest.mark.slow
def test_pairs_are_ordered_by_the_measured_dimension(trained: dict[str, Any]) -> None:
    from personalign.training.experts import load_pairs

    margin = trained["cfg"].min_margin
    for pole, pairs in load_pairs(trained["out"]).items():
        dim, sign = parse_pole(pole)
        score = DIMENSIONS[dim]  # type: ignore[index]
        assert pairs, pole
        for p in pairs:
            hi, lo = score(p.chosen), score(p.rejected)
            if sign == "+":
                assert hi >= lo + margin, (pole, p)
            else:
                assert hi <= lo - margin, (pole, p)
            assert p.source == "ranked" and p.margin == pytest.approx(abs(hi - lo), abs=1e-6)


@pytest.mark.slow
def test_a_rerun_skips_everything_and_sampling_is_reproducible(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    from personalign.training.experts import sample_all, train_experts

    out, cfg = trained["out"], trained["cfg"]
    stamps = {f: f.stat().st_mtime_ns for f in out.glob("*/adapter_model.safetensors")}
    steering = out / "steering" / "vectors.npz"
    stamps[steering] = steering.stat().st_mtime_ns
    again = train_experts(cfg, out)
    assert not again.sampled and {r.status for r in again.experts} == {"exists"}
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # steering kept too
    # the same seed samples the same texts, in a fresh folder
    first = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()[1:]]
    rows, sampled = sample_all(cfg, tmp_path, base_dir=Path(cfg.base_model))
    assert sampled and rows == first
    # an interrupted sampling keeps its finished batches
    (tmp_path / "samples.jsonl").unlink()
    marked = {"batch": 0, "texts": [f"kept {i}" for i in range(6)], "finish": ["stop"] * 6}
    (tmp_path / f".samples-{cfg.sampling_hash}.partial.jsonl").write_text(json.dumps(marked) + "\n")
    rows, _ = sample_all(cfg, tmp_path, base_dir=Path(cfg.base_model))
    assert rows[0]["candidates"] == ["kept 0", "kept 1", "kept 2", "kept 3"]
    assert rows[1]["candidates"][:2] == ["kept 4", "kept 5"]
    assert rows[1]["candidates"][2:] == first[1]["candidates"][2:]


def _delta(path: Path, module: str, scale: float | None = None) -> np.ndarray:
    """``scaling * B @ A`` of the LoRA on ``module`` in the PEFT folder ``path``."""
    from safetensors.numpy import load_file

    cfg = json.loads((path / "adapter_config.json").read_text())
    tensors = load_file(str(path / "adapter_model.safetensors"))
    a = next(v for k, v in tensors.items() if module in k and "lora_A" in k)  # (r, in)
    b = next(v for k, v in tensors.items() if module in k and "lora_B" in k)  # (out, r)
    return (cfg["lora_alpha"] / cfg["r"]) * (b @ a)  # (out, in)


@pytest.mark.slow
def test_a_soup_is_the_exact_weighted_sum_of_expert_deltas_and_is_cached(
    trained: dict[str, Any],
) -> None:
    out = trained["out"]
    es = ExpertSet(out)
    weights = {"conciseness": -0.3, "formality": 0.7}
    path = es.soup(weights)
    assert path is not None and path == out / "soups" / "conciseness-minus-0.30_formality-plus-0.70"
    assert es.merges == 1
    assert json.loads((path / "soup.json").read_text())["key"] == "conciseness-0.30,formality+0.70"
    layer = "layers.1.self_attn.v_proj"
    want = 0.3 * _delta(out / "conciseness-minus", layer) + 0.7 * _delta(
        out / "formality-plus", layer
    )
    got = _delta(path, layer)
    assert np.abs(want).max() > 1e-4  # the experts moved
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    # cached: the same weights (scaled) give the same folder, without a merge
    stamp = (path / "adapter_model.safetensors").stat().st_mtime_ns
    assert es.soup({"conciseness": -3, "formality": 7}) == path and es.merges == 1
    other = ExpertSet(out)
    assert other.soup_path("conciseness-0.30,formality+0.70") == path and other.merges == 0
    assert (path / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    # a single expert (PEFT merges it linearly) is exact too
    one = es.soup({"formality": 2.0})
    assert one is not None
    np.testing.assert_allclose(
        _delta(one, layer), _delta(out / "formality-plus", layer), rtol=1e-4, atol=1e-7
    )
    assert es.soup({"formality": 0.0}) is None
    # experts of different base models do not mix
    recipe_file = out / "formality-minus" / "recipe.json"
    recipe = json.loads(recipe_file.read_text())
    recipe_file.write_text(json.dumps({**recipe, "base_model_dir": "/elsewhere"}))
    try:
        with pytest.raises(ValidationError, match="different base models"):
            ExpertSet(out).soup({"formality": -1.0, "conciseness": 1.0})
    finally:
        recipe_file.write_text(json.dumps(recipe))
    with pytest.raises(NotFoundError, match="no expert 'warmth-'"):
        es.soup({"warmth": -1.0})


@pytest.mark.slow
def test_two_askers_of_one_soup_get_one_merge(trained: dict[str, Any]) -> None:
    sets = [ExpertSet(trained["out"]) for _ in range(2)]
    paths: list[Path | None] = []
    weights = {"conciseness": 0.55, "formality": -0.45}

    def ask(es: ExpertSet) -> None:
        paths.append(es.soup(weights))

    threads = [threading.Thread(target=ask, args=(es,)) for es in sets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 2 and paths[0] == paths[1] is not None
    assert sum(es.merges for es in sets) == 1
    assert not [p for p in (trained["out"] / "soups").iterdir() if ".tmp-" in p.name]


class _Users:
    def adapter_path(self, name: str) -> Path:
        if name == "ann":
            return Path("/adapters/ann/v0001")
        raise NotFoundError(f"no adapter named {name!r}")


@pytest.mark.slow
def test_soup_adapters_resolve_experts_and_soups_and_delegate(
    trained: dict[str, Any], tiny: Path
) -> None:
    from personalign.backends.models.base import GenerationOptions
    from personalign.backends.models.local import TransformersLM
    from personalign.types import Message

    out = trained["out"]
    es = ExpertSet(out)
    src = SoupAdapters(es, _Users())
    assert src.adapter_path("expert:formality-") == out / "formality-minus"
    name = soup_name({"conciseness": 1.0, "formality": 1.0})
    assert name == "soup:conciseness+0.50,formality+0.50"
    assert src.adapter_path(name) == out / "soups" / "conciseness-plus-0.50_formality-plus-0.50"
    assert src.adapter_path("ann") == Path("/adapters/ann/v0001")
    with pytest.raises(NotFoundError):
        src.adapter_path("bob")
    with pytest.raises(NotFoundError):
        src.adapter_path("expert:warmth+")
    with pytest.raises(ValidationError):
        src.adapter_path("soup:kindness+1.00")
    with pytest.raises(NotFoundError, match="no user adapter store"):
        SoupAdapters(es).adapter_path("ann")
    # the local backend serves the soup by name; its logits differ from the base model's
    lm = TransformersLM(tiny, dtype="float32", adapters=src, batching=False)
    msgs = [Message(role="user", content="How do I boil an egg?")]
    ids = [lm.encode_chat(msgs)]
    base, _ = lm.forward(ids)
    souped, _ = lm.forward(ids, adapter=name)
    expert, _ = lm.forward(ids, adapter="expert:conciseness+")
    assert np.abs(souped - base).max() > 1e-4 and np.abs(souped - expert).max() > 1e-5
    assert np.allclose(base, lm.forward(ids)[0])  # the base model is untouched
    gen = lm.generate(msgs, options=GenerationOptions(max_new_tokens=6, adapter=name))
    assert gen.completion_tokens >= 1


@pytest.mark.slow
def test_train_experts_cli_end_to_end(tiny: Path, tmp_path: Path, monkeypatch: Any) -> None:
    from personalign.cli.main import app

    monkeypatch.setenv("PERSONALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PERSONALIGN_MODEL", "fake")
    monkeypatch.setenv("PERSONALIGN_EMBEDDER", "hashing")
    args = ["train", "experts", "--base-model", str(tiny), "-d", "conciseness", "--prompts", "4"]
    args += ["--candidates", "6", "--min-pairs", "1", "--max-steps", "1", "--threads", "1"]
    args += ["--gen-dtype", "float32"]  # the tiny random model's bfloat16 samples all tie
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["out_dir"] == str(tmp_path / "home" / "experts")
    assert [e["pole"] for e in summary["experts"]] == ["conciseness+", "conciseness-"]
    assert all(e["status"] == "trained" and e["metrics"]["steps"] == 1 for e in summary["experts"])
    assert ExpertSet(tmp_path / "home" / "experts").poles == ["conciseness+", "conciseness-"]
    r = CliRunner().invoke(app, [*args, "--no-progress"])  # resumable: all up to date
    assert r.exit_code == 0, r.output
    assert r.stdout.count("exists") == 2 and "reused samples" in r.stdout
    r = CliRunner().invoke(app, [*args[:4], "-d", "kindness", "--json"])
    assert r.exit_code == 1 and "dimensions" in r.output
    r = CliRunner().invoke(app, [*args, "--gen-dtype", "int4", "--json"])
    assert r.exit_code == 1 and "gen_dtype must be bfloat16 or float32" in r.output
