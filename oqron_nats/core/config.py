"""Queue configuration: typed option groups, validated when a queue is defined (no I/O).

Durations are accepted as seconds (int or float) or ``timedelta`` and converted by
:func:`seconds`, the one place where units change.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypeAlias, TypedDict, TypeVar

from .encryption import Codec, check_codec
from .errors import ConfigError, InvalidName
from .job import Job, JobFailure, Retention, Strategy
from .middleware import Middleware
from .naming import PRIORITY_LEVELS, check_name

Duration: TypeAlias = float | int | timedelta
"""Seconds as a number, or a timedelta."""

DisabledBehavior: TypeAlias = Literal["hold", "reject", "skip"]

BackoffFn: TypeAlias = Callable[[int, float], Duration]
"""Custom backoff: ``(attempt, base_delay_seconds) -> delay`` for the retry after ``attempt``."""

HookResult: TypeAlias = Awaitable[None] | None
G = TypeVar("G")
DEFAULT_MAX_PAYLOAD = 256 * 1024


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


class QueueOptions(TypedDict, total=False):
    """The keyword options of ``queue()`` and ``worker()``; defaults are QueueConfig's."""

    concurrency: int
    strategy: Strategy
    priority: int
    retries: RetryPolicy
    dead_letter: DeadLetter
    hooks: Hooks
    guaranteed_worker: bool
    heartbeat: Duration
    lock_ttl: Duration
    max_stalled_count: int
    tags: Sequence[str]
    max_payload_size: int
    max_jobs: int
    max_bytes: int
    cross_node_stall_scanner: bool | StallScanner
    orphan_sweep: bool | OrphanSweep
    reconciliation: bool | Reconciliation
    lag_monitor: bool | LagMonitor
    remove_on_complete: Retention
    remove_on_fail: Retention
    throttle: Throttle
    rate_limit: RateLimit
    secret_fields: Sequence[str]
    codec: Codec
    middleware: Sequence[Middleware]


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """A queue's resolved, validated configuration. Durations are in seconds."""

    name: str
    concurrency: int = 5
    strategy: Strategy = "fifo"
    priority: int = 0
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    retries_given: bool = False
    """Whether ``retries=`` was given (then the jobs this queue adds carry its attempts)."""
    dead_letter: DeadLetter = field(default_factory=DeadLetter)
    hooks: Hooks = field(default_factory=Hooks)
    guaranteed_worker: bool = True
    heartbeat: float = 5.0
    lock_ttl: float = 30.0
    max_stalled_count: int = 3
    """A job that stalls more often than this (its worker dies, or loses the lease) fails."""
    tags: tuple[str, ...] = ()
    payload: type[Any] | None = None
    max_payload_size: int = DEFAULT_MAX_PAYLOAD
    max_jobs: int | None = None
    """At most this many unfinished jobs; add() beyond raises QueueFull (None: no bound)."""
    max_bytes: int | None = None
    """At most this many bytes of job records; add() beyond raises QueueFull (None: no bound)."""
    stall_scanner: StallScanner | None = None
    orphan_sweep: OrphanSweep | None = field(default_factory=OrphanSweep)
    """On by default: waiting jobs whose message is gone are published again."""
    reconciliation: Reconciliation | None = None
    lag_monitor: LagMonitor | None = None
    disabled_behavior: DisabledBehavior = "hold"
    """What add() does while the queue is paused: hold the job, reject it, or skip it."""
    remove_on_complete: Retention | None = None
    """Retention of completed jobs (None: the default, a day; False keeps them all)."""
    remove_on_fail: Retention | None = None
    """Retention of failed jobs (None: the default, 14 days; False keeps them all)."""
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    secret_fields: frozenset[str] = frozenset()
    """Payload fields whose values are masked in logs, stored errors and dead letters."""
    codec: Codec | None = None
    """Encrypts payloads, results and errors (None: the client's codec, if any)."""
    middleware: tuple[Middleware, ...] = ()
    """The user's middlewares, run after the built-in ones (see :mod:`.middleware`)."""

    @property
    def ack_wait(self) -> float:
        """The consumer's ack_wait: longer than the lease, so a live lease is never redelivered."""
        return self.lock_ttl + self.heartbeat + 1.0

    @property
    def max_attempts(self) -> int:
        """Total attempts of a job that does not say otherwise (its worker's policy)."""
        return self.retries.max + 1

    def attempts_of(self, job_max_attempts: int | None) -> int:
        """The total attempts of a job on this worker: its own, else this queue's policy."""
        return job_max_attempts if job_max_attempts is not None else self.max_attempts

    @property
    def stamped_attempts(self) -> int | None:
        """What a job this queue adds records as its total attempts: only a policy given with
        ``retries=`` (a publisher decides only what it sets; the worker decides the rest)."""
        return self.max_attempts if self.retries_given else None


def _positive_int(options: QueueOptions, key: str, default: int, minimum: int) -> int:
    value = options.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an int >= {minimum}, not {value!r}")
    return value


def _group(value: object, cls: type[G], key: str) -> G | None:
    """An optional option group: False/None is off, True is the defaults, else an instance."""
    if value is None or value is False:
        return None
    if value is True:
        return cls()
    if isinstance(value, cls):
        return value
    raise ConfigError(f"{key} must be True, False or a {cls.__name__}, not {value!r}")


def _instance(value: object, cls: type[G], key: str) -> G | None:
    """An optional option group that has no defaults: None, or an instance."""
    if value is None or isinstance(value, cls):
        return value
    raise ConfigError(f"{key} must be a {cls.__name__}, not {value!r}")


def make_config(
    name: str,
    payload: type[Any] | None,
    options: QueueOptions,
    disabled_behavior: DisabledBehavior = "hold",
) -> QueueConfig:
    """Validate the options of ``queue()``/``worker()`` and resolve them into a QueueConfig."""
    try:
        check_name(name)
    except InvalidName as exc:
        raise ConfigError(str(exc)) from None
    unknown = set(options) - QueueOptions.__optional_keys__
    if unknown:
        raise ConfigError(f"unknown queue options: {sorted(unknown)}")
    strategy = options.get("strategy", "fifo")
    if strategy not in ("fifo", "lifo", "priority"):
        raise ConfigError(f"strategy must be 'fifo', 'lifo' or 'priority', not {strategy!r}")
    heartbeat = seconds(options.get("heartbeat", 5.0), "heartbeat")
    lock_ttl = seconds(options.get("lock_ttl", 30.0), "lock_ttl")
    if lock_ttl < 1.0:
        raise ConfigError("lock_ttl must be at least 1 second (the NATS per-message TTL minimum)")
    if not 0 < heartbeat < lock_ttl:
        raise ConfigError(
            f"heartbeat ({heartbeat}s) must be positive and shorter than lock_ttl ({lock_ttl}s)"
        )
    if disabled_behavior not in ("hold", "reject", "skip"):
        raise ConfigError(
            f"disabled_behavior must be 'hold', 'reject' or 'skip', not {disabled_behavior!r}"
        )
    tags = options.get("tags", ())
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise ConfigError("tags must be a list of strings")
    secret_fields = options.get("secret_fields", ())
    if isinstance(secret_fields, str) or not all(isinstance(f, str) and f for f in secret_fields):
        raise ConfigError("secret_fields must be a list of payload field names")
    return QueueConfig(
        name=name,
        concurrency=_positive_int(options, "concurrency", 5, 1),
        strategy=strategy,
        priority=check_priority(options.get("priority", 0), ConfigError),
        retries=_group(options.get("retries"), RetryPolicy, "retries") or RetryPolicy(),
        retries_given=options.get("retries") is not None,
        dead_letter=_group(options.get("dead_letter"), DeadLetter, "dead_letter") or DeadLetter(),
        hooks=_group(options.get("hooks"), Hooks, "hooks") or Hooks(),
        guaranteed_worker=bool(options.get("guaranteed_worker", True)),
        heartbeat=heartbeat,
        lock_ttl=lock_ttl,
        max_stalled_count=_positive_int(options, "max_stalled_count", 3, 0),
        tags=tuple(tags),
        payload=payload,
        max_payload_size=_positive_int(options, "max_payload_size", DEFAULT_MAX_PAYLOAD, 1),
        max_jobs=_positive_int(options, "max_jobs", 1, 1) if "max_jobs" in options else None,
        max_bytes=_positive_int(options, "max_bytes", 1, 1) if "max_bytes" in options else None,
        stall_scanner=_group(
            options.get("cross_node_stall_scanner"), StallScanner, "cross_node_stall_scanner"
        ),
        orphan_sweep=_group(options.get("orphan_sweep", True), OrphanSweep, "orphan_sweep"),
        reconciliation=_group(options.get("reconciliation"), Reconciliation, "reconciliation"),
        lag_monitor=_group(options.get("lag_monitor"), LagMonitor, "lag_monitor"),
        disabled_behavior=disabled_behavior,
        remove_on_complete=check_retention(options.get("remove_on_complete"), "remove_on_complete"),
        remove_on_fail=check_retention(options.get("remove_on_fail"), "remove_on_fail"),
        throttle=_instance(options.get("throttle"), Throttle, "throttle"),
        rate_limit=_instance(options.get("rate_limit"), RateLimit, "rate_limit"),
        secret_fields=frozenset(secret_fields),
        codec=check_codec(options.get("codec"), "codec"),
        middleware=_middlewares(options.get("middleware", ())),
    )


def _middlewares(value: object) -> tuple[Middleware, ...]:
    if isinstance(value, Middleware) or not isinstance(value, Sequence | set | frozenset):
        raise ConfigError(f"middleware must be a list of Middleware instances, not {value!r}")
    wrong = [m for m in value if not isinstance(m, Middleware)]
    if wrong:
        raise ConfigError(
            f"middleware must be instances of oqron_nats.Middleware (subclass it): {wrong[0]!r}"
        )
    return tuple(value)


def check_retention(
    value: object, what: str, error: type[Exception] = ConfigError
) -> Retention | None:
    """Return a valid retention setting (bool, count >= 0, positive timedelta) or raise."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, timedelta) and value.total_seconds() >= 1:
        return value
    raise error(
        f"{what} must be True, False, a count (int >= 0) or an age (timedelta of 1 s or more), "
        f"not {value!r}"
    )


def check_priority(priority: object, error: type[Exception]) -> int:
    """Return ``priority`` if it is an int lane number (0 = first), else raise ``error``."""
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise error(f"priority must be an int, not {priority!r}")
    if not 0 <= priority < PRIORITY_LEVELS:
        raise error(f"priority must be between 0 and {PRIORITY_LEVELS - 1}, not {priority}")
    return priority


def check_handler(handler: object) -> None:
    """ConfigError unless ``handler`` can be called with the job's context and return a
    result: a function (``async def`` or plain) or callable object taking one argument."""
    if not callable(handler):
        raise ConfigError(f"handler must be callable, not {handler!r}")
    plain = inspect.isfunction(handler) or inspect.ismethod(handler)
    call: Any = handler if plain else getattr(handler, "__call__", handler)  # noqa: B004
    if inspect.isasyncgenfunction(call) or inspect.isgeneratorfunction(call):
        raise ConfigError(
            f"handler {_name(handler)} is a generator: it must return (or await) its result, "
            "not yield it"
        )
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # a builtin without a signature: it is called and seen
        return
    try:
        signature.bind(object())
    except TypeError:
        raise ConfigError(
            f"handler {_name(handler)}{signature} must take one argument, the job's context "
            "(def handler(ctx): ...)"
        ) from None


def _name(handler: object) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
