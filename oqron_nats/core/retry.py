"""Backoff: how long a failed job waits before its next attempt."""

from __future__ import annotations

import random

from .config import RetryPolicy, seconds


def retry_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed ``attempt`` (1-based) before the next, capped at max_delay."""
    base = seconds(policy.base_delay, "retries.base_delay")
    cap = seconds(policy.max_delay, "retries.max_delay")
    if policy.strategy == "fixed":
        delay = base
    elif policy.strategy == "custom":
        assert policy.backoff is not None  # checked by RetryPolicy
        delay = seconds(policy.backoff(attempt, base), "the custom backoff's result")
    else:
        spread = (rng or random).uniform(1 - policy.jitter, 1 + policy.jitter)
        delay = base * 2 ** min(attempt - 1, 62) * spread
    return min(delay, cap)
