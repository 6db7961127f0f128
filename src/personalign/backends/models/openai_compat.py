"""Any OpenAI-compatible chat server (OpenAI, vLLM, llama.cpp, ...) through the ``openai`` client.

Per-user adapters, the vLLM multi-LoRA way: with an adapter store (``adapters``, attached by
:meth:`~personalign.pipeline.Personalizer.open`), :attr:`GenerationOptions.adapter` names a
user's adapter; its newest version is served as ``<name>@v0003`` (the store's label, so a new
version is a new served adapter) and sent as the request's ``model``. Before its first use the
backend asks ``GET /models`` whether the server lists it and, when not, loads it with
``POST /load_lora_adapter {lora_name, lora_path}``; ``lora_path`` is the version's directory
(a standard PEFT folder) as the *server* sees it: ``<lora_dir>/<name>/<version>`` when
``lora_dir`` (the store's root on the server, setting ``openai_lora_dir``) is set, else the
local path. Runtime loading needs vLLM started with ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true``; a server without it answers HTTP 404 there, and the
request fails with a :class:`BackendError` that says so: a user with an adapter is never
silently answered by the base model. Erasing a user unloads their adapters from the server
(:meth:`OpenAICompatLM.unload_missing_adapters`). Without a store, ``adapter`` is sent as
the model name as given (an adapter the server already serves under that name).
Dimension experts and soups (an adapter source with ``experts_relative``, e.g.
:class:`~personalign.generation.soups.SoupAdapters`) load the same way from
``<experts_dir>/<folder>`` (setting ``openai_experts_dir``: the experts folder as the server
sees it; unset: the local path), so a vLLM server serves a user's soup as one adapter.

``logprobs`` needs a server whose ``/v1/completions`` returns correct prompt log-probabilities
with ``echo`` (vLLM does); the chat API cannot score a given reply. It is therefore opt-in
(``echo_logprobs=True``) and renders the chat with ``prompt_format`` (ChatML by default).
llama-cpp-python's server answers, but its echo log-probabilities are shifted by one token
(abetlen/llama-cpp-python#1983) and it does not parse special tokens in raw prompts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from personalign.backends.models.adapters import AdapterSource
from personalign.backends.models.base import (
    ContinuationScore,
    Generation,
    GenerationOptions,
    LanguageModel,
    check_messages,
    refuse_steering,
)
from personalign.backends.models.credentials import server_and_key
from personalign.errors import BackendError, ValidationError
from personalign.types import Message

PromptFormat = Callable[[Sequence[Message]], str]


def chatml_prompt(messages: Sequence[Message]) -> str:
    """Render ``messages`` in ChatML with the assistant generation prompt (SmolLM2, Qwen)."""
    turns = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def _server_message(e: Exception) -> str:
    """The server's own error text, from the JSON body when there is one."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, dict) and "message" in value:
                value = value["message"]
            if value:
                return value if isinstance(value, str) else json.dumps(value)
    return str(getattr(e, "message", None) or e)


BATCH_PARALLEL = 16
"""The most requests one :meth:`OpenAICompatLM.generate_batch` keeps in flight."""


class OpenAICompatLM(LanguageModel):
    """A chat model behind an OpenAI-compatible HTTP API. The client is thread-safe, so
    chats run concurrently (``concurrent``) and :meth:`generate_batch` sends its
    conversations at once."""

    concurrent = True

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 1,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
        echo_logprobs: bool = False,
        prompt_format: PromptFormat = chatml_prompt,
        adapters: AdapterSource | None = None,
        lora_dir: str | None = None,
        experts_dir: str | None = None,
    ) -> None:
        if not model or not model.strip():
            raise ValidationError("OpenAICompatLM needs a model name")
        import openai

        self.model = model
        self.name = model
        self.base_url = base_url
        self.max_tokens_param = max_tokens_param
        self.echo_logprobs = echo_logprobs
        self.prompt_format = prompt_format
        self.adapters = adapters
        self.lora_dir = lora_dir
        self.experts_dir = experts_dir
        self._served: dict[str, Path] = {}  # adapters known loaded on the server -> local dir
        self._lora_lock = threading.Lock()
        # the key configured for this server, or $OPENAI_API_KEY for OpenAI's own only
        url, key = server_and_key(base_url, api_key, what="openai_api_key")
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=url, api_key=key, timeout=timeout, max_retries=max_retries
        )

    def _where(self) -> str:
        return self.base_url or "the OpenAI API"

    def _error(self, e: Exception) -> BackendError:
        oa = self._openai
        if isinstance(e, oa.APIStatusError):
            return BackendError(
                f"{self._where()} answered HTTP {e.status_code}: {_server_message(e)}"
            )
        if isinstance(e, oa.APIConnectionError):
            return BackendError(f"cannot reach {self._where()}: {e}")
        return BackendError(f"{self._where()}: {e}")

    def _request(
        self, messages: Sequence[Message], options: GenerationOptions
    ) -> tuple[str, dict[str, Any]]:
        msgs = check_messages(messages)
        refuse_steering(self, options.steering)  # a server cannot add vectors to activations
        model = self.served_model(options.adapter)
        kw: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in msgs],
            self.max_tokens_param: options.max_new_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
        }
        if options.seed is not None:
            kw["seed"] = options.seed
        if options.stop:
            kw["stop"] = list(options.stop)
        if options.json_schema is not None:
            schema = json.loads(options.json_schema)
            kw["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema, "strict": True},
            }
        return model, kw

    def served_model(self, adapter: str | None) -> str:
        """The ``model`` a request with ``adapter`` sends, its LoRA loaded on the server
        first when it is not yet (see the module doc)."""
        if adapter is None:
            return self.model
        if self.adapters is None:
            return adapter
        path = self.adapters.adapter_path(adapter)  # NotFoundError: no such adapter
        served = f"{adapter}@{path.name}"
        relative = getattr(self.adapters, "experts_relative", None)
        expert = relative(adapter) if callable(relative) else None  # an expert or a soup
        with self._lora_lock:
            if served not in self._served:
                if expert is not None:
                    root = self.experts_dir.rstrip("/") if self.experts_dir else None
                    self._post_lora(served, f"{root}/{expert}" if root else str(path))
                else:
                    self._load_lora(served, path.parent.name, path)
                self._served[served] = path
        return served

    def unload_missing_adapters(self) -> int:
        """Unload from the server (``POST /unload_lora_adapter``) every adapter this backend
        loaded whose directory is gone from the store (an erased user's); return how many."""
        import httpx

        with self._lora_lock:
            gone = [s for s, path in self._served.items() if not path.is_dir()]
            for served in gone:
                del self._served[served]
                try:
                    body = {"lora_name": served}
                    self._client.post("/unload_lora_adapter", body=body, cast_to=httpx.Response)
                except self._openai.NotFoundError:
                    pass  # no runtime LoRA updating, or already unloaded
                except self._openai.OpenAIError as e:
                    raise self._error(e) from e
        return len(gone)

    def _load_lora(self, served: str, name: str, path: Path) -> None:
        root = self.lora_dir.rstrip("/") if self.lora_dir else None
        self._post_lora(served, f"{root}/{name}/{path.name}" if root else str(path))

    def _post_lora(self, served: str, where: str) -> None:
        """Load the LoRA at ``where`` (as the server sees it) as ``served``, unless served."""
        import httpx

        try:
            if served in {m.id for m in self._client.models.list()}:
                return
            body = {"lora_name": served, "lora_path": where}
            self._client.post("/load_lora_adapter", body=body, cast_to=httpx.Response)
        except self._openai.NotFoundError as e:
            raise BackendError(
                f"{self._where()} cannot load LoRA adapter {served!r} at runtime (HTTP 404 "
                "from /load_lora_adapter): start vLLM with --enable-lora and "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true, or serve the adapter with "
                "--lora-modules (AdapterStore.export_vllm)"
            ) from e
        except self._openai.BadRequestError as e:
            if "already" not in _server_message(e):  # loaded meanwhile by another process
                raise self._error(e) from e
        except self._openai.OpenAIError as e:
            raise self._error(e) from e

    def generate(self, messages: Sequence[Message], *, options: GenerationOptions) -> Generation:
        model, kw = self._request(messages, options)
        start = time.perf_counter()
        try:
            resp = self._client.chat.completions.create(**kw)
        except self._openai.OpenAIError as e:
            raise self._error(e) from e
        if not resp.choices:
            raise BackendError(f"{self._where()} returned no choices")
        choice = resp.choices[0]
        usage = resp.usage
        return Generation(
            text=choice.message.content or "",
            model=resp.model or model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason or "stop",
            seconds=time.perf_counter() - start,
        )

    def generate_batch(
        self, conversations: Sequence[Sequence[Message]], *, options: GenerationOptions
    ) -> list[Generation]:
        """One reply per conversation, the requests sent at once (at most
        :data:`BATCH_PARALLEL` in flight), in input order."""
        convs = list(conversations)
        if len(convs) <= 1:
            return [self.generate(c, options=options) for c in convs]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(convs), BATCH_PARALLEL)) as pool:
            return list(pool.map(lambda c: self.generate(c, options=options), convs))

    def stream(
        self,
        messages: Sequence[Message],
        *,
        options: GenerationOptions,
        on_done: Callable[[Generation], None] | None = None,
    ) -> Iterator[str]:
        """The server's stream; ``on_done`` gets the server's usage when it sent one (else
        zero counts) and its finish reason."""
        model, kw = self._request(messages, options)
        start, reason, usage = time.perf_counter(), "stop", None
        parts: list[str] = []
        try:
            chunks = self._client.chat.completions.create(**kw, stream=True)
        except self._openai.OpenAIError as e:
            raise self._error(e) from e
        finished = False
        try:
            for chunk in chunks:
                usage = getattr(chunk, "usage", None) or usage
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                        yield choice.delta.content
                    finished = finished or choice.finish_reason is not None
                    reason = choice.finish_reason or reason
        except self._openai.OpenAIError as e:
            raise self._error(e) from e
        finally:
            chunks.close()  # also when the caller stops early
        if not finished:  # some servers fail mid-request with an empty 200 stream
            raise BackendError(
                f"{self._where()} ended the stream without a finish_reason: the request failed "
                "on the server (see its log; e.g. the prompt exceeds the context length)"
            )
        if on_done is not None:
            on_done(
                Generation(
                    text="".join(parts),
                    model=model,
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=usage.completion_tokens if usage else 0,
                    finish_reason=reason,
                    seconds=time.perf_counter() - start,
                )
            )

    def logprobs(
        self, messages: Sequence[Message], continuations: Sequence[str]
    ) -> list[ContinuationScore]:
        """Score continuations with ``/v1/completions`` ``echo`` (opt-in, see the module doc)."""
        if not self.echo_logprobs:
            raise BackendError(
                "logprobs is not supported by this OpenAI-compatible backend: the chat API "
                "cannot score a given reply. Pass echo_logprobs=True for a server whose "
                "/v1/completions returns prompt log-probabilities with echo (e.g. vLLM)."
            )
        prompt = self.prompt_format(check_messages(messages))
        conts = list(continuations)
        if not conts:
            return []
        for c in conts:
            if not c:
                raise ValidationError("a continuation is empty")
        scores = []
        for cont in conts:  # one request each: not every server accepts a list of prompts
            try:
                resp = self._client.completions.create(
                    model=self.model,
                    prompt=prompt + cont,
                    max_tokens=1,
                    echo=True,
                    logprobs=1,
                    temperature=0,
                )
            except self._openai.OpenAIError as e:
                raise self._error(e) from e
            choice = resp.choices[0] if resp.choices else None
            lp = choice.logprobs if choice is not None else None
            if choice is None or lp is None or not lp.token_logprobs or not lp.tokens:
                raise BackendError(
                    f"{self._where()} returned no echo log-probabilities: logprobs unsupported"
                )
            # Drop the generated token(s), then take the echoed tokens that cover the
            # continuation, from the end (text offsets are not reliable across servers).
            usage = resp.usage
            n_gen = usage.completion_tokens if usage else int(choice.finish_reason == "length")
            pairs = list(zip(lp.tokens, lp.token_logprobs, strict=False))
            pairs = pairs[: len(pairs) - n_gen] if n_gen else pairs
            values: list[float] = []
            covered = 0
            for token, value in reversed(pairs):
                if covered >= len(cont) or value is None:
                    break
                values.append(float(value))
                covered += len(token)
            if not values:
                raise BackendError(f"{self._where()} returned no log-probabilities for {cont!r}")
            total = sum(values)
            scores.append(ContinuationScore(cont, total, total / len(values), len(values)))
        return scores

    def close(self) -> None:
        self._client.close()
