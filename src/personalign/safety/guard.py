"""An optional guard model (Llama Guard style) behind an OpenAI-compatible server.

:class:`OpenAIGuardChecker` implements the :class:`~personalign.safety.checkers.Checker`
interface. Two prompt styles:

* ``"policy"`` (default): we write the Llama Guard prompt ourselves with *this* policy's
  categories (``S1`` = the first category of ``policy.toml``, ...) and send it as one user
  message. Works with Llama Guard served without its chat template and with general
  instruction models.
* ``"llama_guard_3"``: we send the text as the user turn and let the server's Llama Guard 3
  chat template add its stock taxonomy; its codes S1..S14 are mapped onto our categories by
  :data:`LLAMA_GUARD_3_MAP` (S6 "specialized advice" is outside our policy: admitted).

The answer format is Llama Guard's: ``safe``, or ``unsafe`` and a line of comma-separated codes.
:func:`parse_guard_output` parses it and raises :class:`BackendError` on anything else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from personalign.config import GuardPromptStyle, backend_auth
from personalign.errors import BackendError, ModelNotAvailableError, ValidationError
from personalign.safety.injection import neutralize
from personalign.safety.policy import Policy, load_policy
from personalign.safety.verdict import NONE, Verdict

if TYPE_CHECKING:
    from personalign.config import Settings

PromptStyle = GuardPromptStyle

#: Llama Guard 3's stock hazard codes -> this policy's categories (``None``: outside it).
LLAMA_GUARD_3_MAP: dict[str, str | None] = {
    "S1": "violence",
    "S2": "crime",
    "S3": "sexual_explicit",
    "S4": "sexual_minors",
    "S5": "harassment",
    "S6": None,
    "S7": "privacy",
    "S8": "crime",
    "S9": "weapons",
    "S10": "hate",
    "S11": "self_harm",
    "S12": "sexual_explicit",
    "S13": "misinformation",
    "S14": "malware",
}

_CODE = re.compile(r"\bS(\d{1,2})\b", re.IGNORECASE)


def policy_codes(policy: Policy) -> dict[str, str | None]:
    """``S1``.. codes for the policy's enabled categories, in file order."""
    return {f"S{i + 1}": c.name for i, c in enumerate(policy.enabled())}


def build_guard_prompt(text: str, policy: Policy) -> str:
    """The Llama Guard prompt for one candidate preference under ``policy``.

    The text is passed through :func:`neutralize`, so it cannot close the conversation block.
    """
    cats = "\n".join(
        f"S{i + 1}: {c.name}. Preferences that ask the assistant for {c.description}."
        for i, c in enumerate(policy.enabled())
    )
    return (
        "Task: Check if there is unsafe content in 'User' messages in conversations according "
        "to our safety policy with the below categories. The user message is a preference the "
        "user wants the assistant to remember.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{cats}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\nUser: {neutralize(text)}\n\n<END CONVERSATION>\n\n"
        "Provide your safety assessment for ONLY THE LAST User message in the above "
        "conversation:\n - First line must read 'safe' or 'unsafe'.\n - If unsafe, a second "
        "line must include a comma-separated list of violated categories."
    )


def parse_guard_output(output: str, codes: dict[str, str | None]) -> tuple[bool, list[str | None]]:
    """Parse a guard answer: (unsafe?, the categories named, in order).

    Accepts ``safe``; ``unsafe``; ``unsafe\\nS1,S3``; ``unsafe S2``; any case and stray
    whitespace or punctuation. A code missing from ``codes`` maps to ``"unknown"``; a mapped
    ``None`` means "outside the policy". Raises :class:`BackendError` when the first word is
    neither ``safe`` nor ``unsafe``.
    """
    if not isinstance(output, str):
        raise BackendError(f"guard model returned {type(output).__name__}, expected text")
    words = re.findall(r"[A-Za-z]+", output)
    if not words:
        raise BackendError(f"guard model returned an empty or unreadable answer: {output!r}")
    first = words[0].lower()
    if first == "safe":
        return False, []
    if first != "unsafe":
        raise BackendError(f"guard model answer does not start with safe/unsafe: {output[:80]!r}")
    found: list[str | None] = []
    seen: set[str] = set()
    for m in _CODE.finditer(output):
        code = f"S{int(m.group(1))}"
        if code in seen:
            continue
        seen.add(code)
        found.append(codes.get(code, "unknown"))
    return True, found


class OpenAIGuardChecker:
    """Asks a guard model on an OpenAI-compatible server; "unsafe" refuses (score 1.0).

    A guard answer naming only categories outside the policy (mapped to ``None``) admits.
    Server or parsing failures raise :class:`BackendError`: the caller decides whether a
    guard outage blocks writes.
    """

    name = "guard"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        policy: Policy | None = None,
        prompt_style: PromptStyle = "policy",
        client: Any = None,
        timeout_s: float = 10.0,
        band: float | None = None,
    ) -> None:
        """Use ``client`` (an ``openai.OpenAI``-like object) or build one for ``base_url``.
        ``band``: see :attr:`GuardConfig.band <personalign.config.GuardConfig.band>`."""
        if not model:
            raise ValidationError("OpenAIGuardChecker: model name is empty")
        if band is not None and not 0.0 < band <= 1.0:
            raise ValidationError(f"the guard's band must be in (0, 1], got {band}")
        self.model = model
        #: None: asked about every text the classifier admitted; a number: the second look
        #: of the boundary's two-stage gate, asked only about verdicts that close to the
        #: classifier's threshold, and deciding them both ways
        self.band = band
        self.policy = policy or load_policy()
        self.prompt_style: PromptStyle = prompt_style
        self.codes = (
            dict(LLAMA_GUARD_3_MAP)
            if prompt_style == "llama_guard_3"
            else policy_codes(self.policy)
        )
        if client is None:
            try:
                from openai import OpenAI
            except ImportError as e:
                raise ModelNotAvailableError(
                    "the guard checker needs the 'openai' package: pip install openai"
                ) from e
            from personalign.backends.models.credentials import server_and_key

            url, key = server_and_key(base_url, api_key, what="guard.api_key")
            client = OpenAI(base_url=url, api_key=key, timeout=timeout_s)
        self.client = client

    def _messages(self, text: str) -> list[dict[str, str]]:
        if self.prompt_style == "llama_guard_3":
            return [{"role": "user", "content": text}]
        return [{"role": "user", "content": build_guard_prompt(text, self.policy)}]

    def ask(self, text: str) -> str:
        """The guard model's raw answer for one text."""
        try:
            resp = self.client.chat.completions.create(
                model=self.model, messages=self._messages(text), temperature=0.0, max_tokens=24
            )
            content = resp.choices[0].message.content
        except Exception as e:  # the openai client raises many types
            raise BackendError(f"guard model {self.model!r} failed: {e}") from e
        return str(content or "")

    def verdict_from_output(self, output: str) -> Verdict:
        """Turn one raw guard answer into a :class:`Verdict`."""
        unsafe, cats = parse_guard_output(output, self.codes)
        in_policy = [c for c in cats if c is not None]
        if not unsafe or (cats and not in_policy):
            return Verdict(
                admitted=True,
                category=NONE,
                score=0.0,
                reason="guard model: safe" if not unsafe else "guard model: outside this policy",
                checker=self.name,
                policy_version=self.policy.version,
            )
        category = in_policy[0] if in_policy else "unknown"
        cat = self.policy.category(category)
        description = cat.description if cat else "content the guard model judged unsafe"
        return Verdict(
            admitted=False,
            category=category,
            score=1.0,
            reason=f"{description} (guard model {self.model})",
            checker=self.name,
            policy_version=self.policy.version,
            user_message=self.policy.message_for(category),
        )

    def check(self, texts: Sequence[str]) -> list[Verdict]:
        """One request per text (guard servers take one conversation at a time)."""
        if isinstance(texts, str):
            raise ValidationError("check() takes a sequence of texts, not a single string")
        return [self.verdict_from_output(self.ask(t)) for t in texts]


def guard_from_settings(
    settings: Settings, policy: Policy | None = None
) -> OpenAIGuardChecker | None:
    """The guard model ``settings.guard`` names (its server, key and prompt style; the
    settings' ``openai_base_url`` / ``openai_api_key`` by default), or None when none is set."""
    cfg = settings.guard
    if not cfg.model:
        return None
    base_url, api_key = backend_auth(settings, cfg.base_url, cfg.api_key)
    return OpenAIGuardChecker(
        cfg.model,
        base_url=base_url,
        api_key=api_key,
        policy=policy,
        prompt_style=cfg.prompt_style,
        timeout_s=cfg.timeout_s,
        band=cfg.band,
    )
