"""ONNX models exported once into a cache and run with onnxruntime (shared by the MiniLM
embedder and the fine-tuned classifiers).

The export needs torch and runs in a subprocess, so the calling process never imports torch.
:func:`cached_session` opens the cached file when its metadata stamp is current, else exports
under an advisory file lock (:class:`filelock.FileLock`; another process may be exporting the
same file) and opens the result; :func:`run_exporter` runs the exporter and turns its failures
into clear errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from personalign.errors import ModelNotAvailableError

SRC_ROOT = str(Path(__file__).resolve().parents[2])
"""The folder holding the ``personalign`` package, put on the exporter's PYTHONPATH."""


SPIN_ENV = "PERSONALIGN_ORT_SPIN"
"""``1``: onnxruntime's intra-op threads spin while waiting for work; anything else (the
default): they sleep. Spinning threads took the cores torch and other requests need on small
machines (the demo on 2 cores; the service with many concurrent requests: ``[service]
onnx_spinning`` sets this for ``serve``)."""


def session_options(threads: int) -> Any:
    """onnxruntime options: ``threads`` intra-op threads that sleep when idle (unless
    :data:`SPIN_ENV` is ``1``), full graph optimization, errors only in the log."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if os.environ.get(SPIN_ENV, "0") != "1":  # idle threads sleep instead of spinning
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def cached_session(
    path: Path, *, threads: int, stamp: tuple[str, str], export: Callable[[], None]
) -> Any:
    """An onnxruntime session on ``path``, running ``export`` first when the file is missing,
    unreadable or its metadata ``stamp`` (key, value) differs (a stale export)."""
    import onnxruntime as ort

    options = session_options(threads)
    key, value = stamp

    def open_current() -> Any:
        if not path.is_file():
            return None
        try:
            sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception:  # truncated or corrupt file: export again
            return None
        return sess if sess.get_modelmeta().custom_metadata_map.get(key) == value else None

    session = open_current()
    if session is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.with_name(".export.lock")):  # blocks until the lock is free
            session = open_current()  # another process may have exported meanwhile
            if session is None:
                export()
                session = open_current()
    if session is None:
        raise ModelNotAvailableError(f"could not load the exported model {path}")
    return session


def run_exporter(
    module_args: Sequence[str], *, what: str, timeout_s: float, needs: Sequence[str]
) -> None:
    """Run ``python -m <module_args...>`` offline; a missing package among ``needs`` or any
    other failure becomes a :class:`ModelNotAvailableError` that names ``what``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC_ROOT, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", *module_args]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise ModelNotAvailableError(f"exporting {what} to ONNX took over {timeout_s:.0f}s") from e
    if proc.returncode == 0:
        return
    tail = proc.stderr.strip()[-2000:]
    for module in needs:
        if f"No module named '{module}'" in tail or f'No module named "{module}"' in tail:
            raise ModelNotAvailableError(
                f"the first use of {what} exports it to ONNX, which needs {module!r}: "
                "pip install 'personalign[ml]'"
            )
    raise ModelNotAvailableError(
        f"exporting {what} to ONNX failed (exit {proc.returncode}):\n{tail}"
    )


def torch_to_onnx(
    model: Any, inputs: dict[str, Any], output: str, path: Path, *, stamp: tuple[str, str]
) -> None:
    """Export ``model(*inputs.values())`` to ``path`` (inputs dynamic in batch and sequence,
    the output in batch; opset 17, TorchScript exporter) and stamp its metadata. Exporter
    subprocesses only: imports torch and onnx."""
    import torch

    with torch.no_grad():
        torch.onnx.export(
            model,
            tuple(inputs.values()),
            str(path),
            dynamo=False,
            input_names=list(inputs),
            output_names=[output],
            dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in inputs}, output: {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
        )
    set_stamp(path, *stamp)


def set_stamp(path: Path, key: str, value: str) -> None:
    """Write metadata ``key = value`` into the ONNX file at ``path`` (kept if already there)."""
    import onnx

    proto = onnx.load(str(path))
    if not any(p.key == key for p in proto.metadata_props):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
        onnx.save(proto, str(path))


def quantize_int8(path: Path, *, stamp: tuple[str, str], per_channel: bool = False) -> None:
    """Replace the float32 ONNX model at ``path`` by its dynamically int8-quantized version
    (onnxruntime's ``quantize_dynamic``, int8 weights) and stamp its metadata. Exporter
    subprocesses only: imports onnx.

    ``per_channel``: one scale per output channel, with 7-bit weights (``reduce_range``, which
    avoids int16 saturation on CPUs without VNNI): much closer to the float32 model (MiniLM
    sentence vectors: cosine 0.99 instead of 0.96) at the same speed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_name(path.name + ".fp32")
    os.replace(path, fp32)
    try:
        quantize_dynamic(
            str(fp32),
            str(path),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=per_channel,
        )
    finally:
        fp32.unlink(missing_ok=True)
    set_stamp(path, *stamp)


def padded_batch() -> tuple[Any, Any]:
    """A fixed (ids, mask) batch of 3 x 17 BERT tokens, two rows padded: what an export is
    checked on."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(3, 17)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 3:] = 0
    ids[:, 0], ids[mask == 0] = 101, 0
    return ids, mask


def check_export(path: Path, model: Any, inputs: dict[str, Any], *, atol: float) -> None:
    """Exit (exporter subprocesses only) unless onnxruntime on ``path`` gives the torch
    ``model(*inputs.values())`` output within ``atol``."""
    import numpy as np
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        want = model(*(torch.from_numpy(a) for a in inputs.values())).numpy()
    sess = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    got = sess.run(None, inputs)[0]
    if not np.allclose(got, want, atol=atol):
        raise SystemExit(f"ONNX export check failed: max diff {np.abs(got - want).max():.2e}")
