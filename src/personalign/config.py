"""One settings object for the Python API, the CLI and the config file.

Precedence, highest first: explicit arguments (CLI flags), environment variables
(``PERSONALIGN_*``), the TOML config file (``$PERSONALIGN_CONFIG`` or ``<home>/config.toml``),
then the defaults below. Subsystem configs (:class:`RetrievalConfig`, ...) are nested models
validated on construction; a bad value raises :class:`~personalign.errors.ConfigError` that
names the setting.
"""

from __future__ import annotations

import errno
import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from personalign.errors import ConfigError

Fusion = Literal["rrf", "linear"]
GuardPromptStyle = Literal["policy", "llama_guard_3"]


def default_home() -> Path:
    env = os.environ.get("PERSONALIGN_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "personalign"


def default_cache() -> Path:
    env = os.environ.get("PERSONALIGN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "personalign"


class RetrievalConfig(BaseModel):
    """How :meth:`MemoryStore.search` fuses its signals (see ``backends.stores.fusion``).

    ``entity_weight``: bonus for records tagged ``speaker:<name>`` or ``entity:<name>`` when the
    query names them (the name is then left out of the dense and full-text queries).
    ``preference_weight``: bonus for extracted preferences (kinds ``explicit``/``implicit``)
    over raw ``episode`` turns, raised to ``advice_preference_weight`` when the query asks for
    advice or recommendations (where personal preferences matter most) and dropped to 0
    when the query names a tagged entity (a lookup about that person); the best
    preferences are always among the candidates.
    ``dedupe_sources``: drop a hit whose source turns are all covered by better hits.
    Defaults were chosen on the dev data (PrefEval surfacing, LoCoMo recall) in round steps.
    """

    fusion: Fusion = "linear"
    dense_weight: float = Field(default=0.6, ge=0.0)
    bm25_weight: float = Field(default=0.4, ge=0.0)
    recency_weight: float = Field(default=0.1, ge=0.0)
    entity_weight: float = Field(default=0.2, ge=0.0)
    preference_weight: float = Field(default=0.1, ge=0.0)
    advice_preference_weight: float = Field(default=0.8, ge=0.0)
    recency_half_life_days: float = Field(default=180.0, gt=0.0)
    candidates: int = Field(default=100, ge=1, le=1000)
    rrf_k: float = Field(default=60.0, gt=0.0)
    dedupe_sources: bool = True


class ContextConfig(BaseModel):
    """How a message is matched to the context a preference is scoped to ("when I cook for my
    kids"; :mod:`personalign.memory.scope`): ``keyword`` (a word of the context in the
    message), ``embedding`` (cosine to the context's prototypes at least ``context_cosine``)
    or ``either``. Measured by ``benchmarks/conflicts.py``."""

    mode: Literal["keyword", "embedding", "either"] = "either"
    context_cosine: float = Field(default=0.4, ge=-1.0, le=1.0)


class GuardConfig(BaseModel):
    """An optional guard model (Llama Guard style) on an OpenAI-compatible server, asked after
    the embedded classifier about every candidate preference and every request
    (:class:`~personalign.safety.guard.OpenAIGuardChecker`). ``model`` unset: no guard.

    ``base_url`` and ``api_key`` default to the settings' ``openai_base_url`` and
    ``openai_api_key`` (the key only for that same server: :func:`backend_auth`; ``env:NAME``
    reads a variable, :mod:`personalign.backends.models.credentials`). ``prompt_style``:
    ``policy`` (the prompt carries this policy's categories) or ``llama_guard_3`` (the
    server's Llama Guard 3 chat template and taxonomy).
    A guard that cannot be reached fails the write or the request with a clear error; nothing
    is stored unchecked.

    ``band`` makes the guard the second look of a two-stage gate: the embedded classifier
    decides the clear cases alone, and the guard decides, both ways, every text whose
    classifier harm score lies within ``band`` of the decision's threshold (a refusal by a
    small margin can be overturned; a policy pattern's refusal never is). Unset: the guard is
    asked about every text the classifier admitted (one guard call per write and request).
    """

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    prompt_style: GuardPromptStyle = "policy"
    timeout_s: float = Field(default=10.0, gt=0.0)
    band: float | None = Field(default=None, gt=0.0, le=1.0)


class JudgeConfig(BaseModel):
    """An optional LLM judge as the preference reward model that best-of-N and reward-guided
    decoding rank by (:class:`~personalign.rewards.preference_rm.JudgeRewardModel`), instead of
    the shipped embedded one. ``model`` is named like the settings' ``model``:
    ``openai:<name>`` (served at ``base_url``, default ``openai_base_url``), a local
    transformers directory, or ``smollm2``. ``prompt``: a template file with the fields
    ``{preference}``, ``{question}`` and ``{end_generation}`` answering
    ``<answer>Yes</answer>`` for a violation (PrefEval's ``judge_prompts/check_violation.txt``
    fits); default: :data:`~personalign.rewards.preference_rm.JUDGE_TEMPLATE`.
    """

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    prompt: Path | None = None
    max_new_tokens: int = Field(default=96, ge=8, le=2048)

    @field_validator("prompt", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return Path(v).expanduser() if isinstance(v, str | Path) else v


class RetentionConfig(BaseModel):
    """How long raw records are kept. ``turns_days``: raw turns (``episode`` records) recorded
    more than this many days ago are hard-deleted by ``personalign memory prune`` (and
    :func:`personalign.memory.timeline.prune`); unset: kept until the user is erased.
    Preferences are never pruned."""

    turns_days: float | None = Field(default=None, gt=0.0)


class ExtractorConfig(BaseModel):
    """An optional LLM extractor (:func:`~personalign.memory.llm_extract.extractor_from_settings`)
    that reads preferences out of conversations instead of the offline embedded classifier and
    rules. ``model`` is named like the settings' ``model``: ``openai:<name>`` (served at
    ``base_url``, default ``openai_base_url``; ``api_key`` default ``openai_api_key``), a
    local transformers directory, or ``smollm2``. ``model`` unset: the offline extractor.
    A reply that is not valid JSON of the expected shape after ``max_attempts`` tries, or a
    server that cannot be reached, falls back to the offline extractor for that conversation
    (logged, and noted in the ingestion result). Everything extracted passes the boundary.
    """

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = Field(default=30.0, gt=0.0)
    max_attempts: int = Field(default=2, ge=1, le=5)
    max_new_tokens: int = Field(default=512, ge=32, le=4096)


class IngestionConfig(BaseModel):
    """Background ingestion of chat turns (:mod:`personalign.memory.queue`). ``journal``: each
    acknowledged turn is fsync'd to ``<home>/journal/`` before the reply and replayed after a
    crash. A failing ingestion is tried ``max_attempts`` times, waiting ``backoff_s`` and then
    twice as long each time, before it is recorded as failed."""

    journal: bool = True
    max_attempts: int = Field(default=3, ge=1, le=10)
    backoff_s: float = Field(default=0.5, ge=0.0, le=60.0)


class ColdStartConfig(BaseModel):
    """What a user with no history starts from (:mod:`personalign.feedback.coldstart`).

    The population prior: the precision-weighted mean of every user's estimated style
    weights (numbers only), used once at least ``min_users`` users have weights; it is the
    effective weights of a user without any, and the centre of the Bayesian prior their
    estimate starts from. It is recomputed by ``personalign profile prior --refresh``, and
    automatically (in the background, after a reply) when it is older than ``refresh_hours``.
    ``ask``: a new user (no preferences, no weights) is offered one most-informative
    question (two short answers to choose between) with a reply, at most once every
    ``ask_every`` of their turns; ``false`` never asks.
    """

    prior: bool = True
    min_users: int = Field(default=3, ge=1)
    refresh_hours: float = Field(default=24.0, gt=0.0)
    ask: bool = True
    ask_every: int = Field(default=5, ge=1)


class AdapterCheckSettings(BaseModel):
    """The safety check every per-user adapter passes before it serves
    (:mod:`personalign.safety.adapter_check`): it answers a fixed set of harmful probes and is
    rejected when its refusal rate falls more than ``margin`` below the base model's.
    ``enabled: false`` turns it off: only on purpose (the adapter's recipe then records that it
    was not checked)."""

    enabled: bool = True
    margin: float = Field(default=0.25, ge=0.0, le=1.0)


class ServiceConfig(BaseModel):
    """The HTTP service (``personalign serve``; :mod:`personalign.service`).

    ``max_concurrent_chats``: chats answered at once by a model that can run several
    (``LanguageModel.concurrent``: an OpenAI-compatible server, a batching local model);
    more wait their turn. A model that cannot answers one chat at a time whatever this says.
    ``embed_cache_size``: query embeddings kept (least recently used dropped; 0: none), so
    the same text is embedded once for search, topic and context matching, and repeated
    queries not at all. ``embed_batch``: embed the queries of concurrent requests together,
    each waiting at most ``embed_batch_window_ms`` for others, at most ``embed_batch_max``
    texts a batch (off by default: on a 2-core machine it did not pay; it pays where one
    embedding call is much cheaper per text in a batch, e.g. on a GPU or many cores).
    ``workers``: processes ``personalign serve`` starts over the one store (SQLite in WAL
    mode or PostgreSQL); ``--workers`` overrides it. ``onnx_spinning``: let onnxruntime's
    threads spin while idle in the service (off: on 2 shared cores, 16 concurrent chats
    served 11-13 chats/s without spinning, 7-11 with it; one at a time 4-9 vs 1.5-2)."""

    max_concurrent_chats: int = Field(default=32, ge=1, le=1024)
    embed_cache_size: int = Field(default=2048, ge=0)
    embed_batch: bool = False
    embed_batch_window_ms: float = Field(default=2.0, ge=0.0, le=100.0)
    embed_batch_max: int = Field(default=32, ge=1, le=1024)
    workers: int = Field(default=1, ge=1, le=64)
    onnx_spinning: bool = False


_config_file: ContextVar[Path | None] = ContextVar("personalign_config_file", default=None)
"""Set by :func:`load_settings` while it builds :class:`Settings`: the config file to read.
Unset (``Settings(...)`` directly): no config file."""


class Settings(BaseSettings):
    """personalign's settings. Every field can be set as ``PERSONALIGN_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="PERSONALIGN_", env_nested_delimiter="__", extra="forbid"
    )

    home: Path = Field(default_factory=default_home)
    cache_dir: Path = Field(default_factory=default_cache)
    """Converted models and exported embedders: shared by every data folder on the machine."""
    database_url: str | None = None
    """``None``: the embedded SQLite file ``<home>/memory.db``. ``postgresql://...``: PostgreSQL."""
    embedder: Literal["minilm", "hashing"] = "minilm"
    model: str = "smollm2"
    """``smollm2`` (the embedded model), a local transformers directory, or ``openai:<name>``."""
    model_quantize: Literal["none", "int8"] = "none"
    """A local model on the CPU: ``int8`` runs its linear layers on int8 weights (per output
    channel) for one or two rows at a time: about 2x the tokens/s of one chat on 2 cores, with
    the same top token as bf16 on ~96% of positions (``benchmarks/model_throughput.py``)."""
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    """The key for ``openai_base_url`` (``env:NAME``: read from that variable). Unset: the
    environment's ``OPENAI_API_KEY`` is sent only when the server is OpenAI's own."""
    eval_data: Path | None = None
    """The evaluation data folder of ``personalign eval`` (``--data`` overrides it). Unset:
    ``../shared/data`` beside a source checkout; an installed package runs only the suites
    whose data it ships (``supersession``) and names this setting for the others."""
    openai_lora_dir: str | None = None
    """Where the OpenAI-compatible (vLLM) server sees the adapter store (``<home>/adapters``):
    users' adapters are loaded from ``<openai_lora_dir>/<name>/<version>``. Unset: the local
    path (the server runs on this machine)."""
    openai_experts_dir: str | None = None
    """Where the OpenAI-compatible (vLLM) server sees the experts folder (``experts_dir``):
    experts and soups are loaded from ``<openai_experts_dir>/<folder>``. Unset: the local
    path."""
    experts_dir: Path | None = None
    """The dimension experts (``personalign train experts``) that serve the ``soup`` method, the
    expert rows of ``mod`` and (with the ``steering`` folder beside them) the ``steering`` method.
    Unset: ``<home>/experts`` when it holds experts, else none."""
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    contexts: ContextConfig = Field(default_factory=ContextConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    extractor: ExtractorConfig = Field(default_factory=ExtractorConfig)
    coldstart: ColdStartConfig = Field(default_factory=ColdStartConfig)
    adapter_check: AdapterCheckSettings = Field(default_factory=AdapterCheckSettings)
    ingestion: IngestionConfig = Field(default_factory=IngestionConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)

    @field_validator("home", "cache_dir", "eval_data", "experts_dir", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return Path(v).expanduser() if isinstance(v, str | Path) else v

    @property
    def db_path(self) -> Path:
        return self.home / "memory.db"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Highest first: arguments (CLI flags), ``PERSONALIGN_*`` variables, the config file.
        Sources are merged key by key, nested tables included: ``PERSONALIGN_GUARD__MODEL``
        overrides ``[guard] model`` and keeps the file's other ``[guard]`` keys."""
        path = _config_file.get()
        if path is None:
            return init_settings, env_settings, dotenv_settings, file_secret_settings
        file_settings = TomlConfigSettingsSource(settings_cls, toml_file=path)
        return init_settings, env_settings, file_settings, dotenv_settings, file_secret_settings


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from overrides, environment, and the TOML config file.

    The file is ``config_file``, else ``$PERSONALIGN_CONFIG``, else ``<home>/config.toml`` with
    ``home`` from the overrides or :func:`default_home` (never from the file itself). Each
    setting, nested ones included, comes from the first of: the overrides, the
    ``PERSONALIGN_*`` environment (``PERSONALIGN_GUARD__MODEL`` for ``[guard] model``), the file,
    the defaults. An override given as a config object (``guard=GuardConfig(...)``) replaces the
    whole table; one given as a dict is merged key by key. ``None`` overrides are ignored.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    home = Path(overrides.get("home") or default_home()).expanduser()
    path = config_file or (
        Path(os.environ["PERSONALIGN_CONFIG"]) if "PERSONALIGN_CONFIG" in os.environ else None
    )
    path = path or home / "config.toml"
    if path.is_dir():  # the file source skips what is not a file; this was always an error
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    token = _config_file.set(path)
    try:
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    except PydanticValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"setting {loc!r}: {first['msg']} (got {first.get('input')!r})") from e
    finally:
        _config_file.reset(token)


def backend_auth(
    settings: Settings, base_url: str | None, api_key: str | None
) -> tuple[str | None, str | None]:
    """The server and key of a backend configured with its own ``base_url`` and ``api_key``
    (``[guard]``, ``[judge]``, ``[extractor]``): the server defaults to ``openai_base_url``;
    the key is its own, else ``openai_api_key`` only when it talks to that same server (its
    ``base_url`` unset or equal), so a key never follows a backend to another server.
    :mod:`personalign.backends.models.credentials` then decides about ``$OPENAI_API_KEY``."""
    url = base_url or settings.openai_base_url
    if api_key:
        return url, api_key
    same = base_url is None or base_url.rstrip("/") == (settings.openai_base_url or "").rstrip("/")
    return url, settings.openai_api_key if same else None
