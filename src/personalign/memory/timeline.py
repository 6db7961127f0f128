"""Time for the memory's users: reading an ``as_of`` moment, and the retention of raw turns.

``as_of`` as the CLI, the HTTP API and the dashboard take it (:func:`parse_as_of`): an ISO 8601
date or date and time. A date alone means the end of that day (UTC), so "as of 2026-03-01" is
what the memory held on 1 March, everything said that day included; a time without a zone is
UTC.

Retention (:func:`prune`): raw turns (``episode`` records, the user's own words kept as
episodic memory) recorded more than ``[retention] turns_days`` days ago are hard-deleted, with
the log entries that carried their text (refusals of turns included), as completely as an erasure
(:meth:`~personalign.backends.stores.base.RetentionStore.prune`). Preferences are never
pruned: they are what the user asked to be remembered, and they are superseded or forgotten,
not aged out. The exchange log (full prompts and replies) is not pruned here: feedback on an
exchange refers to it; erase the user to remove it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from personalign.backends.stores.base import RetentionStore
from personalign.config import RetentionConfig
from personalign.errors import ValidationError
from personalign.types import Preference, check_user, utcnow

_EXAMPLES = "e.g. 2026-03-01, 2026-03-01T12:00 or 2026-03-01T12:00:00+01:00"


def parse_as_of(value: str | date | datetime) -> datetime:
    """A timezone-aware moment from an ISO 8601 date or date and time (see the module doc),
    or :class:`ValidationError` naming what was wrong."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        try:
            return aware.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValidationError(f"as_of {value.isoformat()} is out of range") from None
    if isinstance(value, date):
        return datetime.combine(value, time.max, tzinfo=UTC)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"as_of must be an ISO 8601 date or time ({_EXAMPLES})")
    text = value.strip()
    try:
        if len(text) == 10:  # YYYY-MM-DD
            return parse_as_of(date.fromisoformat(text))
        return parse_as_of(datetime.fromisoformat(text))
    except ValueError:
        raise ValidationError(
            f"as_of {value!r} is not an ISO 8601 date or time ({_EXAMPLES})"
        ) from None


def cutoff(
    config: RetentionConfig, *, days: float | None = None, now: datetime | None = None
) -> datetime:
    """The moment before which raw turns are pruned: ``now`` minus ``days`` (default:
    ``config.turns_days``); :class:`ValidationError` when neither sets a period."""
    period = config.turns_days if days is None else days
    if period is None:
        raise ValidationError(
            "no retention period: set [retention] turns_days in the config "
            "(or PERSONALIGN_RETENTION__TURNS_DAYS), or pass days"
        )
    if period < 0:
        raise ValidationError(f"days must be 0 or more, got {period}")
    return (now or utcnow()) - timedelta(days=period)


def prune(
    store: RetentionStore,
    config: RetentionConfig,
    *,
    user: str,
    days: float | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[Preference]:
    """Prune the user's raw turns older than the retention period (see the module doc).
    Returns the records deleted (with ``dry_run``: that would be)."""
    check_user(user)
    before = cutoff(config, days=days, now=now)
    return store.prune(user=user, before=before, dry_run=dry_run)
