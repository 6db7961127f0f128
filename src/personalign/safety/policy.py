"""The boundary policy: categories, thresholds and judgement notes from ``policy.toml``."""

from __future__ import annotations

import re
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import cast

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic import ValidationError as PydanticValidationError

from personalign.errors import ConfigError

DEFAULT_POLICY_PATH = Path(__file__).with_name("policy.toml")
#: Categories that a policy file may not disable.
ALWAYS_ON = frozenset({"sexual_minors"})


class Category(BaseModel):
    """One refusal category."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    threshold: float = Field(ge=0.0, le=1.0)
    """harm score at or above which a candidate preference is refused"""
    request_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    """the same for a request to answer (``None``: the policy's ``request_threshold``)"""
    enabled: bool = True
    patterns: list[str] = Field(default_factory=list)
    user_message: str | None = None
    _compiled: list[re.Pattern[str]] = PrivateAttr(default_factory=list)

    def model_post_init(self, __context: object) -> None:
        """Compile the patterns once (a bad one raises :class:`ConfigError`)."""
        compiled = []
        for p in self.patterns:
            try:
                compiled.append(re.compile(p, re.IGNORECASE | re.DOTALL))
            except re.error as e:
                raise ConfigError(f"policy category {self.name!r}: bad pattern {p!r}: {e}") from e
        self._compiled = compiled

    def match(self, text: str) -> str | None:
        """The first pattern that matches ``text``, or ``None``."""
        for rx in self._compiled:
            m = rx.search(text)
            if m:
                return m.group(0)
        return None


class Policy(BaseModel):
    """The whole policy. ``categories`` keeps the file's order (guard prompts number them)."""

    model_config = ConfigDict(extra="forbid")

    version: str
    name: str = "personalign boundary"
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    request_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    reply_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    injection_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    user_message: str = (
        "I can't remember that as a preference: it asks me to help with {description}."
    )
    judgement: str = ""
    categories: dict[str, Category]

    def category(self, name: str) -> Category | None:
        """The category called ``name``, or ``None``."""
        return self.categories.get(name)

    def enabled(self) -> list[Category]:
        """The enabled categories, in file order."""
        return [c for c in self.categories.values() if c.enabled]

    def threshold_for(self, name: str, decision: str = "preference") -> float:
        """The refusal threshold of ``name`` (the default for an unknown category) for a
        ``decision``: ``"preference"`` (storing a preference: the category's ``threshold``),
        ``"request"`` (answering a request: the category's ``request_threshold``, else the
        policy's; a request that only mentions a sensitive subject is answered) or
        ``"reply"`` (a reply about to be returned: the policy's ``reply_threshold``). An
        always-on category never gets a laxer threshold than its own."""
        cat = self.categories.get(name)
        if decision == "preference":
            return cat.threshold if cat else self.threshold
        value = self.reply_threshold if decision == "reply" else self.request_threshold
        if decision == "request" and cat is not None and cat.request_threshold is not None:
            value = cat.request_threshold
        if cat is not None and cat.name in ALWAYS_ON:
            value = min(value, cat.threshold)
        return value

    def message_for(self, name: str) -> str:
        """What to tell the user when a text is refused under ``name``."""
        cat = self.categories.get(name)
        if cat and cat.user_message:
            return cat.user_message
        description = cat.description if cat else "something this assistant does not help with"
        return self.user_message.format(description=description)


def parse_policy(raw: dict[str, object], *, source: str = "policy") -> Policy:
    """Build a :class:`Policy` from the parsed TOML, with errors that name the setting."""
    defaults = raw.get("defaults", {})
    judgement = raw.get("judgement", {})
    cats = raw.get("categories", {})
    if not isinstance(defaults, dict) or not isinstance(cats, dict) or not cats:
        raise ConfigError(f"{source}: needs a [defaults] table and at least one [categories.X]")
    default_threshold = defaults.get("threshold", 0.5)
    categories: dict[str, Category] = {}
    try:
        for name, body in cats.items():
            if not isinstance(body, dict):
                raise ConfigError(f"{source}: [categories.{name}] must be a table")
            body = {"threshold": default_threshold, **body, "name": name}
            categories[name] = Category(**body)
        policy = Policy(
            version=str(raw.get("version", "")),
            name=str(raw.get("name", "personalign boundary")),
            threshold=default_threshold,
            request_threshold=cast(float, defaults.get("request_threshold", default_threshold)),
            reply_threshold=cast(float, defaults.get("reply_threshold", default_threshold)),
            injection_threshold=defaults.get("injection_threshold", 0.5),
            user_message=defaults.get("user_message", Policy.model_fields["user_message"].default),
            judgement=str(judgement.get("text", "")) if isinstance(judgement, dict) else "",
            categories=categories,
        )
    except PydanticValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{source}: {loc}: {first['msg']}") from e
    if not policy.version:
        raise ConfigError(f"{source}: 'version' is required (bump it on every change)")
    for name in ALWAYS_ON:
        cat = policy.categories.get(name)
        if cat is not None and not cat.enabled:
            raise ConfigError(f"{source}: category {name!r} cannot be disabled")
    return policy


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> Policy:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read policy file {p}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"policy file {p} is not valid TOML: {e}") from e
    return parse_policy(raw, source=str(p))


def load_policy(path: Path | None = None) -> Policy:
    """Load the policy file (the packaged ``policy.toml`` by default); cached per file version."""
    p = Path(path) if path is not None else DEFAULT_POLICY_PATH
    if not p.is_file():
        raise ConfigError(f"policy file {p} does not exist")
    return _load_cached(str(p.resolve()), p.stat().st_mtime)
