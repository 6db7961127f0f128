"""Typed feedback records: one constructor per kind, each linked to a logged exchange.

Every constructor returns a :class:`~personalign.types.FeedbackIn`, validated on construction
(:class:`~personalign.errors.ValidationError` names the bad field); a store's
``add_feedback`` appends it for a user. The kinds:

========  ==========================================================================
rating    thumbs (:func:`thumbs`: up 1, down -1) or stars (:func:`stars`: 1-5) on a reply
pairwise  :func:`pairwise`: ``chosen`` was preferred over ``rejected``, both answering ``prompt``
edit      :func:`edit`: the user's corrected version of a reply
critique  :func:`critique`: what the user says was wrong with a reply
override  :func:`override`: the user set their dimension weights by hand
========  ==========================================================================
"""

from __future__ import annotations

from typing import Any

from personalign.types import FeedbackIn


def thumbs(
    up: bool,
    *,
    exchange_id: str | None = None,
    response: str | None = None,
    source: str = "user",
) -> FeedbackIn:
    """Thumbs up (``up=True``) or down on the reply of ``exchange_id`` (or ``response``)."""
    return FeedbackIn(
        kind="rating",
        scale="thumbs",
        value=1.0 if up else -1.0,
        exchange_id=exchange_id,
        response=response,
        source=source,
    )


def stars(
    value: int,
    *,
    exchange_id: str | None = None,
    response: str | None = None,
    source: str = "user",
) -> FeedbackIn:
    """A 1-5 star rating of the reply of ``exchange_id`` (or ``response``)."""
    return FeedbackIn(
        kind="rating",
        scale="stars",
        value=value,
        exchange_id=exchange_id,
        response=response,
        source=source,
    )


def pairwise(
    chosen: str,
    rejected: str,
    *,
    prompt: str | None = None,
    exchange_id: str | None = None,
    source: str = "user",
    meta: dict[str, Any] | None = None,
) -> FeedbackIn:
    """The user preferred ``chosen`` over ``rejected`` (two answers to ``prompt``)."""
    return FeedbackIn(
        kind="pairwise",
        chosen=chosen,
        rejected=rejected,
        prompt=prompt,
        exchange_id=exchange_id,
        source=source,
        meta=meta or {},
    )


def edit(
    corrected: str,
    *,
    exchange_id: str | None = None,
    response: str | None = None,
    source: str = "user",
) -> FeedbackIn:
    """The user's corrected version of the reply of ``exchange_id`` (or ``response``)."""
    return FeedbackIn(
        kind="edit", text=corrected, exchange_id=exchange_id, response=response, source=source
    )


def critique(
    text: str,
    *,
    exchange_id: str | None = None,
    response: str | None = None,
    source: str = "user",
) -> FeedbackIn:
    """What the user says was wrong (or right) with the reply of ``exchange_id``."""
    return FeedbackIn(
        kind="critique", text=text, exchange_id=exchange_id, response=response, source=source
    )


def override(weights: dict[str, float], *, reason: str | None = None) -> FeedbackIn:
    """The user set their dimension weights (each in [0, 1]) by hand."""
    return FeedbackIn(
        kind="override", weights=weights, source="user", meta={"reason": reason} if reason else {}
    )
