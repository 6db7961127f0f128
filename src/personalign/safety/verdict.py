"""The typed result of a boundary check."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: ``Verdict.category`` of an admitted text.
NONE = "none"


class Verdict(BaseModel):
    """Whether one candidate preference is admitted, and why.

    ``score`` is the harm score in [0, 1] (1 - p(benign) for the classifier, 1.0 for a pattern
    match or a guard model's "unsafe"). ``category`` is the policy category of a refusal, or
    ``"none"`` for an admitted text. ``flags`` carries extra findings, e.g. ``"injection"``
    (admitted but injection-like: store it flagged, render it neutralized).
    """

    model_config = ConfigDict(frozen=True)

    admitted: bool
    category: str = NONE
    score: float = Field(ge=0.0, le=1.0)
    reason: str
    checker: str
    policy_version: str
    flags: tuple[str, ...] = ()
    user_message: str | None = None
    """What to tell the user after a refusal (``None`` when admitted)."""
    threshold: float | None = None
    """The threshold a classifier compared ``score`` with (``None``: no threshold, e.g. a
    pattern or a guard model); how close the two are tells an uncertain verdict."""

    @property
    def refused(self) -> bool:
        """The opposite of :attr:`admitted`."""
        return not self.admitted

    def summary(self) -> str:
        """One line: ``admitted|refused<TAB>category<TAB>score<TAB>reason``."""
        state = "admitted" if self.admitted else "refused"
        flags = f" [{','.join(self.flags)}]" if self.flags else ""
        return f"{state}\t{self.category}\t{self.score:.3f}\t{self.reason}{flags}"
