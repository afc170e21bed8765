"""The option groups of a queue (retries, dead letters, hooks, the background sweeps, throttle
and rate limit), each checked when it is built; and :func:`seconds`, the one place where
durations change units.

Durations are accepted as seconds (int or float) or ``timedelta``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeAlias

from .errors import ConfigError
from .job import Job, JobFailure
from .middleware import HookResult

Duration: TypeAlias = float | int | timedelta
"""Seconds as a number, or a timedelta."""

BackoffFn: TypeAlias = Callable[[int, float], Duration]
"""Custom backoff: ``(attempt, base_delay_seconds) -> delay`` for the retry after ``attempt``."""


def seconds(value: Duration, what: str) -> float:
    """Convert a duration to seconds; reject negatives and non-durations with a ConfigError."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    else:
        raise ConfigError(f"{what} must be seconds (int or float) or a timedelta, not {value!r}")
    if not math.isfinite(result) or result < 0:
        raise ConfigError(f"{what} must be zero or positive and finite, not {value!r}")
    return result


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how late a failed job is tried again.

    ``max`` is the number of retries (attempts = max + 1). ``exponential`` waits
    ``base_delay * 2**(attempt-1)`` with ±``jitter`` (a fraction), ``fixed`` waits ``base_delay``,
    ``custom`` calls ``backoff(attempt, base_delay)``; every delay is capped at ``max_delay``.
    """

    max: int = 3
    strategy: Literal["fixed", "exponential", "custom"] = "exponential"
    base_delay: Duration = 2.0
    max_delay: Duration = 60.0
    backoff: BackoffFn | None = None
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.max, int) or isinstance(self.max, bool) or self.max < 0:
            raise ConfigError(f"retries.max must be an int >= 0, not {self.max!r}")
        if self.strategy not in ("fixed", "exponential", "custom"):
            raise ConfigError(
                f"retries.strategy must be fixed, exponential or custom, not {self.strategy!r}"
            )
        if self.strategy == "custom" and self.backoff is None:
            raise ConfigError("retries.strategy='custom' needs a backoff function")
        if self.backoff is not None and not callable(self.backoff):
            raise ConfigError(f"retries.backoff must be callable, not {self.backoff!r}")
        if (
            not isinstance(self.jitter, int | float)
            or isinstance(self.jitter, bool)
            or not 0 <= self.jitter < 1
        ):
            raise ConfigError(f"retries.jitter must be a number in [0, 1), not {self.jitter!r}")
        base = seconds(self.base_delay, "retries.base_delay")
        cap = seconds(self.max_delay, "retries.max_delay")
        if base > cap:
            raise ConfigError(
                f"retries.base_delay ({base}s) is longer than retries.max_delay ({cap}s), "
                "which caps every delay; raise max_delay too"
            )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Final failures: copy the job to the dead-letter stream and call ``on_dead(job)``."""

    enabled: bool = True
    on_dead: Callable[[Job[Any]], HookResult] | None = None


@dataclass(frozen=True, slots=True)
class Hooks:
    """Callbacks after a job's terminal state is stored. Their errors are logged, never raised.

    ``on_success(job, result)`` after a completion; ``on_fail(job, failure)`` after a final
    failure. Both may be ``async def`` or plain functions; they run after the ack, at most once.
    """

    on_success: Callable[[Job[Any], Any], HookResult] | None = None
    on_fail: Callable[[Job[Any], JobFailure], HookResult] | None = None


@dataclass(frozen=True, slots=True)
class StallScanner:
    """Cluster-wide sweep for jobs that are active on record but that nothing will run again.

    Every ``interval`` seconds one worker of the queue (the leader, elected through a KV lease)
    looks for records that are active, held a lease that is now gone, and whose message is no
    longer in the stream (so no redelivery will come); it marks them stalled and re-enqueues
    them. It never touches a job with a live lease, nor one that never took a lease.
    """

    interval: Duration = 30.0

    def __post_init__(self) -> None:
        if seconds(self.interval, "cross_node_stall_scanner.interval") <= 0:
            raise ConfigError("cross_node_stall_scanner.interval must be positive")


@dataclass(frozen=True, slots=True)
class OrphanSweep:
    """Re-publishes waiting jobs whose message is gone (on by default).

    A job's record is stored before its message is published; if the publish never landed (the
    adding process died, or its caller ignored an EnqueueError), or a message was removed
    behind the library's back, the record waits for nothing. Every ``interval`` seconds one
    worker of the queue (the leader, by a KV lease) checks up to ``batch`` waiting jobs, oldest
    first and moving on through the backlog pass by pass, and publishes again each one that has
    waited ``waiting_for`` seconds with no message. A backlog within ``batch`` jobs is thus
    healed within ``waiting_for + interval`` seconds.
    """

    interval: Duration = 30.0
    waiting_for: Duration = 60.0
    batch: int = 1000

    def __post_init__(self) -> None:
        if seconds(self.interval, "orphan_sweep.interval") <= 0:
            raise ConfigError("orphan_sweep.interval must be positive")
        seconds(self.waiting_for, "orphan_sweep.waiting_for")
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 1:
            raise ConfigError(f"orphan_sweep.batch must be an int >= 1, not {self.batch!r}")


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """Periodic repair of the split-brain cases between job records and stream messages.

    Heals (1) a record waiting for longer than ``waiting_threshold``, or delayed past its
    ``run_at`` by ``delayed_grace``, that has no message or schedule in the stream (re-enqueued),
    and (2) a message whose record is missing or already terminal (removed). A healthy system
    has nothing to heal. One worker of the queue runs it at a time (KV lease).
    """

    interval: Duration = 120.0
    waiting_threshold: Duration = 300.0
    delayed_grace: Duration = 120.0

    def __post_init__(self) -> None:
        for name in ("interval", "waiting_threshold", "delayed_grace"):
            seconds(getattr(self, name), f"reconciliation.{name}")
        if seconds(self.interval, "reconciliation.interval") <= 0:
            raise ConfigError("reconciliation.interval must be positive")


@dataclass(frozen=True, slots=True)
class LagMonitor:
    """Back-pressure from a busy event loop: claim nothing while the loop lags.

    The loop's lag is sampled every ``sample_interval``; the worker counts as lagging while the
    worst lag of the last ``window`` seconds is at least ``max_lag``, so one blocked stretch
    keeps it from claiming for a whole window and sustained lag keeps it from claiming at all.
    """

    max_lag: Duration = 0.5
    sample_interval: Duration = 0.05
    window: Duration = 2.0

    def __post_init__(self) -> None:
        for name in ("max_lag", "sample_interval", "window"):
            if seconds(getattr(self, name), f"lag_monitor.{name}") <= 0:
                raise ConfigError(f"lag_monitor.{name} must be positive")


@dataclass(frozen=True, slots=True)
class Throttle:
    """Per process: at most ``max`` jobs start in any ``duration`` (a sliding window).

    The worker asks the server for no more jobs than the window allows, so nothing is fetched
    only to be handed back.
    """

    max: int
    duration: Duration

    def __post_init__(self) -> None:
        if not isinstance(self.max, int) or isinstance(self.max, bool) or self.max < 1:
            raise ConfigError(f"throttle.max must be an int >= 1, not {self.max!r}")
        if seconds(self.duration, "throttle.duration") <= 0:
            raise ConfigError("throttle.duration must be positive")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Across the whole cluster: at most ``max`` jobs start per ``duration`` window.

    With ``key`` (a function of the job's data, e.g. the tenant id) each group has its own
    limit. Windows are aligned to the epoch and counted by the server (atomic counters), so
    every process shares them. A job over the limit goes back to the queue until its window
    ends. ``fail_open`` lets jobs start when the counter cannot be reached (default: wait).
    """

    max: int
    duration: Duration
    key: Callable[[Any], str] | None = None
    fail_open: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max, int) or isinstance(self.max, bool) or self.max < 1:
            raise ConfigError(f"rate_limit.max must be an int >= 1, not {self.max!r}")
        if seconds(self.duration, "rate_limit.duration") < 1:
            raise ConfigError("rate_limit.duration must be at least 1 second")
        if self.key is not None and not callable(self.key):
            raise ConfigError("rate_limit.key must be a function of the job's data")
