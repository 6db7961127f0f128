"""User weights over objectives, normalized so that fixed objectives keep a floor.

Every mixing method (MOD's weighted policies, the weighted dimension reward) takes its weights
through :func:`normalize_weights`. A fixed objective (the safety objective, later) is given a
``floor``: whatever the user's weights, its normalized weight is at least that floor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from personalign.errors import ValidationError


def normalize_weights(
    weights: Mapping[str, float], floors: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Non-negative weights over ``weights | floors`` keys, summing to 1, floors guaranteed.

    ``w[k] = floors[k] + (1 - F) * u[k] / sum(u)`` where ``F = sum(floors)`` and ``u`` are the
    user weights clipped at 0 (objectives named only in ``floors`` have ``u = 0``); when every
    ``u`` is 0 the remaining mass ``1 - F`` is split evenly over the user-weighted keys (or the
    floor keys when there are none). Hence ``w[k] >= floors[k]`` for every floor, whatever the
    user weights. Raises :class:`ValidationError` for non-finite weights, a floor outside
    [0, 1], floors summing above 1, or no objective at all.
    """
    floors = dict(floors or {})
    for k, f in floors.items():
        if not (math.isfinite(f) and 0.0 <= f <= 1.0):
            raise ValidationError(f"floor of {k!r} must be in [0, 1], got {f}")
    total_floor = sum(floors.values())
    if total_floor > 1.0 + 1e-9:
        raise ValidationError(f"floors sum to {total_floor:.3f}; they must sum to at most 1")
    for k, w in weights.items():
        if not math.isfinite(w):
            raise ValidationError(f"weight of {k!r} must be finite, got {w}")
    keys = list(dict.fromkeys([*weights, *floors]))
    if not keys:
        raise ValidationError("no objectives: give at least one weight")
    user = {k: max(0.0, float(weights.get(k, 0.0))) for k in keys}
    top = max(user.values())
    if top > 0.0:  # scale to [0, 1] first: no overflow or underflow in the sum
        user = {k: v / top for k, v in user.items()}
    mass = sum(user.values())
    if mass == 0.0:  # no usable user weight: spread the free mass evenly
        spread = [k for k in keys if k in weights] or keys
        user = {k: (1.0 if k in spread else 0.0) for k in keys}
        mass = float(len(spread))
    free = max(0.0, 1.0 - total_floor)
    return {k: floors.get(k, 0.0) + free * (user[k] / mass) for k in keys}
