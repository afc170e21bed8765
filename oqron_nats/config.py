"""Queue configuration: typed option groups, validated when a queue is defined (no I/O).

Durations are accepted as seconds (int or float) or ``timedelta`` and converted by
:func:`seconds`, the one place where units change.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypeAlias

from .errors import ConfigError
from .job import Job, JobFailure, Strategy
from .names import PRIORITY_LEVELS, check_name

Duration: TypeAlias = float | int | timedelta
"""Seconds as a number, or a timedelta."""

BackoffFn: TypeAlias = Callable[[int, float], Duration]
"""Custom backoff: ``(attempt, base_delay_seconds) -> delay`` for the retry after ``attempt``."""

HookResult: TypeAlias = Awaitable[None] | None
DEFAULT_MAX_PAYLOAD = 256 * 1024


def seconds(value: Duration, what: str) -> float:
    """Convert a duration to seconds; reject negatives and non-durations with a ConfigError."""
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    else:
        raise ConfigError(f"{what} must be seconds (int or float) or a timedelta, not {value!r}")
    if result < 0 or math.isnan(result):
        raise ConfigError(f"{what} must be zero or positive, not {value!r}")
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
class QueueConfig:
    """A queue's resolved, validated configuration. Durations are in seconds."""

    name: str
    concurrency: int = 5
    strategy: Strategy = "fifo"
    priority: int = 0
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letter: DeadLetter = field(default_factory=DeadLetter)
    hooks: Hooks = field(default_factory=Hooks)
    guaranteed_worker: bool = True
    heartbeat: float = 5.0
    lock_ttl: float = 30.0
    tags: tuple[str, ...] = ()
    payload: type[Any] | None = None
    max_payload_size: int = DEFAULT_MAX_PAYLOAD

    @property
    def ack_wait(self) -> float:
        """The consumer's ack_wait: longer than the lease, so a live lease is never redelivered."""
        return self.lock_ttl + self.heartbeat + 1.0

    @property
    def max_attempts(self) -> int:
        """Total attempts of a job that does not override them."""
        return self.retries.max + 1


def make_config(
    name: str,
    *,
    concurrency: int,
    strategy: Strategy,
    priority: int,
    retries: RetryPolicy | None,
    dead_letter: DeadLetter | None,
    hooks: Hooks | None,
    guaranteed_worker: bool,
    heartbeat: Duration,
    lock_ttl: Duration,
    tags: Sequence[str],
    payload: type[Any] | None,
    max_payload_size: int,
) -> QueueConfig:
    """Validate the options of ``queue()``/``worker()`` and resolve them into a QueueConfig."""
    check_name(name)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigError(f"concurrency must be an int >= 1, not {concurrency!r}")
    if strategy not in ("fifo", "lifo", "priority"):
        raise ConfigError(f"strategy must be 'fifo', 'lifo' or 'priority', not {strategy!r}")
    check_priority(priority, ConfigError)
    heartbeat_s = seconds(heartbeat, "heartbeat")
    lock_ttl_s = seconds(lock_ttl, "lock_ttl")
    if lock_ttl_s < 1.0:
        raise ConfigError("lock_ttl must be at least 1 second (the NATS per-message TTL minimum)")
    if not 0 < heartbeat_s < lock_ttl_s:
        raise ConfigError(
            f"heartbeat ({heartbeat_s}s) must be positive and shorter than lock_ttl ({lock_ttl_s}s)"
        )
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise ConfigError("tags must be a list of strings")
    if not isinstance(max_payload_size, int) or max_payload_size < 1:
        raise ConfigError(f"max_payload_size must be a positive int, not {max_payload_size!r}")
    return QueueConfig(
        name=name,
        concurrency=concurrency,
        strategy=strategy,
        priority=priority,
        retries=retries if retries is not None else RetryPolicy(),
        dead_letter=dead_letter if dead_letter is not None else DeadLetter(),
        hooks=hooks if hooks is not None else Hooks(),
        guaranteed_worker=bool(guaranteed_worker),
        heartbeat=heartbeat_s,
        lock_ttl=lock_ttl_s,
        tags=tuple(tags),
        payload=payload,
        max_payload_size=max_payload_size,
    )


def check_priority(priority: object, error: type[Exception]) -> int:
    """Return ``priority`` if it is an int lane number (0 = first), else raise ``error``."""
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise error(f"priority must be an int, not {priority!r}")
    if not 0 <= priority < PRIORITY_LEVELS:
        raise error(f"priority must be between 0 and {PRIORITY_LEVELS - 1}, not {priority}")
    return priority
