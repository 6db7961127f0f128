"""The LLM extractor as a user configures it: ``[extractor]`` in the settings.

:func:`extractor_from_settings` builds, when ``settings.extractor.model`` is set, a
:class:`FallbackExtractor`: the :class:`~personalign.memory.extract.LLMExtractor` over that
model (an OpenAI-compatible server, with the setting's ``timeout_s``, or a local model), with
the offline extractor behind it (the embedded classifier and rules; the rule-only
:class:`~personalign.memory.extract.CueExtractor` beside the hashing test embedder).

The LLM sees the conversation as a quoted, neutralized data block (one inert line per turn),
and its JSON reply is validated with pydantic. When the reply stays malformed after
``max_attempts`` tries, or the server cannot be reached, that conversation is read by the
offline extractor instead: the fallback is logged as a warning and reported in
:attr:`FallbackExtractor.failures` (which :func:`~personalign.memory.ingest.add_messages`
copies into its notes), and each fallback candidate's ``reason`` says so. Nothing here writes:
every candidate is reconciled and stored through the memory's store, so it passes the
boundary (admission check) like every other write.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from personalign.memory.extract import Candidate, Extractor, LLMExtractor
from personalign.types import Message

if TYPE_CHECKING:
    from personalign.backends.embedders import Embedder
    from personalign.backends.models.base import LanguageModel
    from personalign.config import Settings

log = logging.getLogger(__name__)


class FallbackExtractor:
    """``primary`` (an :class:`LLMExtractor`); ``fallback`` for a conversation it failed on.

    ``name`` is the primary's (``llm``); ``failures`` lists each failure with the fallback
    that answered instead; ``fallbacks`` counts them."""

    def __init__(self, primary: LLMExtractor, fallback: Extractor) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.failures: list[str] = []
        self.fallbacks = 0

    def extract(self, messages: Sequence[Message]) -> list[Candidate]:
        """The LLM's candidates, or the offline extractor's when the LLM failed."""
        seen = len(self.primary.failures)
        found = self.primary.extract(messages)
        if len(self.primary.failures) == seen:
            return found
        why = "; ".join(self.primary.failures[seen:])
        self.fallbacks += 1
        self.failures.append(f"{why}; fell back to the {self.fallback.name} extractor")
        log.warning("LLM extractor failed (%s); falling back to %s", why, self.fallback.name)
        return [
            c.model_copy(update={"reason": f"{self.fallback.name} (LLM fallback): {c.reason}"})
            for c in self.fallback.extract(messages)
        ]


def offline_extractor(settings: Settings, embedder: Embedder) -> Extractor:
    """The offline extractor for ``embedder``: the embedded classifier and rules, or the
    rule-only cue extractor beside the hashing test embedder."""
    from personalign.backends.embed_batch import unwrap
    from personalign.backends.embedders import HashingEmbedder
    from personalign.memory.extract import CueExtractor, EmbeddedExtractor

    if settings.embedder == "hashing" or isinstance(unwrap(embedder), HashingEmbedder):
        return CueExtractor()
    return EmbeddedExtractor(embedder)


def extractor_model(settings: Settings) -> LanguageModel:
    """The language model ``settings.extractor.model`` names (:class:`ConfigError` if unset).

    ``openai:<name>``: at ``extractor.base_url`` (default ``openai_base_url``) with
    ``extractor.api_key`` (default ``openai_api_key``), waiting at most ``timeout_s`` and
    retrying nothing (a failure falls back at once). Otherwise loaded like ``settings.model``.
    """
    from personalign.backends.models import OPENAI_PREFIX, load_model
    from personalign.errors import ConfigError

    cfg = settings.extractor
    spec = (cfg.model or "").strip()
    if not spec:
        raise ConfigError("setting 'extractor.model' is not set")
    if spec.startswith(OPENAI_PREFIX):
        name = spec[len(OPENAI_PREFIX) :].strip()
        if not name:
            raise ConfigError("setting 'extractor.model': give a model name after 'openai:'")
        from personalign.backends.models.openai_compat import OpenAICompatLM
        from personalign.config import backend_auth

        base_url, api_key = backend_auth(settings, cfg.base_url, cfg.api_key)
        return OpenAICompatLM(
            name,
            base_url=base_url,
            api_key=api_key,
            timeout=cfg.timeout_s,
            max_retries=0,
        )
    return load_model(settings.model_copy(update={"model": spec}))


def extractor_from_settings(
    settings: Settings, embedder: Embedder, *, model: LanguageModel | None = None
) -> FallbackExtractor | None:
    """The configured LLM extractor with its offline fallback (see the module doc), or None
    when ``settings.extractor.model`` is not set. ``model`` replaces the configured one."""
    cfg = settings.extractor
    if model is None and not cfg.model:
        return None
    llm = LLMExtractor(
        model or extractor_model(settings),
        max_attempts=cfg.max_attempts,
        max_new_tokens=cfg.max_new_tokens,
    )
    return FallbackExtractor(llm, offline_extractor(settings, embedder))
