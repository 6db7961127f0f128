"""Language models: the :class:`LanguageModel` interface and its backends.

``load_model(settings)`` picks the backend from ``settings.model``:

* ``smollm2`` — the embedded SmolLM2-135M-Instruct (:meth:`TransformersLM.embedded`);
* a directory — any local causal LM through transformers (:class:`TransformersLM`);
* ``fake`` — :class:`~personalign.backends.models.fake.FakeLM`, for tests and dry runs;
* ``openai:<name>`` — an OpenAI-compatible server (:class:`OpenAICompatLM`) at
  ``settings.openai_base_url`` with ``settings.openai_api_key``.

Importing this package does not import torch, transformers or openai.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from personalign.backends.models.base import (
    Context,
    ContinuationScore,
    DecodeState,
    Generation,
    GenerationOptions,
    LanguageModel,
)
from personalign.backends.models.fake import FakeLM
from personalign.errors import ConfigError

if TYPE_CHECKING:
    from personalign.backends.models.local import DType
    from personalign.config import Settings

EMBEDDED_MODEL = "smollm2"
OPENAI_PREFIX = "openai:"
FAKE_MODEL = "fake"
"""The deterministic :class:`FakeLM` (echoes; for tests and dry runs)."""

__all__ = [
    "EMBEDDED_MODEL",
    "OPENAI_PREFIX",
    "Context",
    "ContinuationScore",
    "DecodeState",
    "Generation",
    "GenerationOptions",
    "LanguageModel",
    "load_model",
]


def load_model(
    settings: Settings, *, dtype: DType | None = None, device: str | None = None
) -> LanguageModel:
    """Build the language model that ``settings.model`` names (see the module doc)."""
    spec = (settings.model or "").strip()
    quantize: Literal["int8"] | None = "int8" if settings.model_quantize == "int8" else None
    if spec == EMBEDDED_MODEL:
        _require_ml(["torch", "transformers", "gguf"], "the embedded model")
        from personalign.backends.models.local import TransformersLM

        return TransformersLM.embedded(
            settings.cache_dir, dtype=dtype, device=device, quantize=quantize
        )
    if spec == FAKE_MODEL:
        return FakeLM()
    if spec.startswith(OPENAI_PREFIX):
        name = spec[len(OPENAI_PREFIX) :].strip()
        if not name:
            raise ConfigError("setting 'model': give a model name after 'openai:'")
        _require_ml(["openai"], "an OpenAI-compatible model")
        from personalign.backends.models.openai_compat import OpenAICompatLM

        return OpenAICompatLM(
            name,
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            lora_dir=settings.openai_lora_dir,
            experts_dir=settings.openai_experts_dir,
        )
    path = Path(spec).expanduser() if spec else None
    if path is not None and path.is_dir():
        _require_ml(["torch", "transformers"], "a local model")
        from personalign.backends.models.local import TransformersLM

        return TransformersLM(path, dtype=dtype, device=device, quantize=quantize)
    raise ConfigError(
        f"setting 'model': {settings.model!r} is not 'smollm2', 'fake', an existing model "
        "directory, or 'openai:<name>'"
    )


def _require_ml(modules: list[str], what: str) -> None:
    from personalign.errors import ModelNotAvailableError
    from personalign.extras import require

    require("ml", modules, what=what, error=ModelNotAvailableError)
