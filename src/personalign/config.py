"""One settings object for the Python API, the CLI and the config file.

Precedence, highest first: explicit arguments (CLI flags), environment variables
(``PERSONALIGN_*``), the TOML config file (``$PERSONALIGN_CONFIG`` or ``<home>/config.toml``),
then the defaults below. Subsystem configs (:class:`RetrievalConfig`, ...) are nested models
validated on construction; a bad value raises :class:`~personalign.errors.ConfigError` that
names the setting.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from personalign.errors import ConfigError

Fusion = Literal["rrf", "linear"]


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
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)

    @field_validator("home", "cache_dir", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return Path(v).expanduser() if isinstance(v, str | Path) else v

    @property
    def db_path(self) -> Path:
        return self.home / "memory.db"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from overrides, environment, and the TOML config file."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    home = Path(overrides.get("home") or default_home()).expanduser()
    path = config_file or (
        Path(os.environ["PERSONALIGN_CONFIG"]) if "PERSONALIGN_CONFIG" in os.environ else None
    )
    path = path or home / "config.toml"
    file_values: dict[str, Any] = {}
    if path.exists():
        try:
            file_values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    env_keys = {
        k[len("PERSONALIGN_") :].lower() for k in os.environ if k.startswith("PERSONALIGN_")
    }
    merged = {k: v for k, v in file_values.items() if k not in env_keys}
    merged.update(overrides)
    try:
        return Settings(**merged)
    except PydanticValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"setting {loc!r}: {first['msg']} (got {first.get('input')!r})") from e
