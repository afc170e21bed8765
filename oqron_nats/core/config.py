"""Queue options: one typed source, checked when a queue is defined (no I/O).

:class:`QueueOptions` is the one place where a queue option is declared: its key is the option's
name and its annotation, ``Annotated[type, Option(default, doc, resolve)]``, holds the type users
pass, the default, a one-line doc and how a given value is checked and resolved.

Why a TypedDict: it is the only thing that types ``**options`` (PEP 692, ``Unpack``), so
``queue()`` and ``worker()`` take it as it is and a user's mypy reports a misspelt or wrongly
typed option; ``Annotated`` keeps the default and the doc on the option's own line, where a
TypedDict could not hold them otherwise. A dataclass or msgspec Struct as the source would need
the keyword API written out again for mypy, which is what this design replaced.

:func:`make_config` walks :data:`OPTIONS` (no option is named there) and builds
:class:`QueueConfig`, the resolved form the worker reads: durations in seconds, an option group
or None, sequences as tuples. Its fields are typed for the code that reads them, so they are
declared, without defaults: they are the options' names plus the few that are not options, and
tests/test_config.py checks that the two agree.

``payload``, ``disabled_behavior`` and ``client`` are parameters of ``queue()`` itself rather than
options: the first two decide the type of the Queue it returns, the third is a connection.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias, TypedDict, get_type_hints

from .checks import (
    Resolve,
    at_least,
    check_priority,
    check_retention,
    group,
    instance,
    middlewares,
    one_of,
    strings,
)
from .encryption import Codec, check_codec
from .errors import ConfigError, InvalidName
from .groups import (
    DeadLetter,
    Duration,
    Hooks,
    LagMonitor,
    OrphanSweep,
    RateLimit,
    Reconciliation,
    RetryPolicy,
    StallScanner,
    Throttle,
    seconds,
)
from .job import Retention, Strategy
from .middleware import Middleware
from .naming import check_name

__all__ = [
    "DEFAULT_MAX_PAYLOAD", "OPTIONS", "DeadLetter", "DisabledBehavior", "Duration", "Hooks",
    "LagMonitor", "Option", "OrphanSweep", "QueueConfig", "QueueOptions", "RateLimit",
    "Reconciliation", "RetryPolicy", "StallScanner", "Throttle", "make_config", "seconds",
]  # fmt: skip
"""The option groups (``groups.py``) and ``seconds`` are imported from here too."""

DisabledBehavior: TypeAlias = Literal["hold", "reject", "skip"]
"""What add() does while the queue is paused: hold the job, reject it, or skip it."""

DEFAULT_MAX_PAYLOAD = 256 * 1024


@dataclass(frozen=True, slots=True)
class Option:
    """One queue option's default, its one-line doc, and how a given value is resolved."""

    default: object
    doc: str
    resolve: Resolve


# -- the one source -------------------------------------------------------------------------


class QueueOptions(TypedDict, total=False):
    """The keyword options of ``queue()`` and ``worker()``: each is declared here, once, with
    its type, default and doc (see the module's docstring)."""

    concurrency: Annotated[int, Option(5, "parallel handlers per process", at_least(1))]
    strategy: Annotated[
        Strategy,
        Option("fifo", "the order of equal jobs: fifo, lifo, or priority lanes",
               one_of("fifo", "lifo", "priority")),
    ]  # fmt: skip
    priority: Annotated[
        int,
        Option(0, "the jobs' default priority, 0 (first) to 9",
               lambda value, _: check_priority(value, ConfigError)),
    ]  # fmt: skip
    retries: Annotated[
        bool | RetryPolicy | None,
        Option(None, "how failed jobs are retried; given, the added jobs carry its attempts",
               group(RetryPolicy, off=RetryPolicy(), false=RetryPolicy(max=0))),
    ]  # fmt: skip
    dead_letter: Annotated[
        bool | DeadLetter | None,
        Option(DeadLetter(), "final failures are copied to the dead-letter stream",
               group(DeadLetter, off=DeadLetter(), false=DeadLetter(enabled=False))),
    ]  # fmt: skip
    hooks: Annotated[
        Hooks,
        Option(Hooks(), "on_success and on_fail callbacks", group(Hooks, off=Hooks())),
    ]
    guaranteed_worker: Annotated[
        bool,
        Option(True, "a heartbeat lease per running job", lambda value, _: bool(value)),
    ]
    heartbeat: Annotated[Duration, Option(5.0, "seconds between lease renewals", seconds)]
    lock_ttl: Annotated[
        Duration, Option(30.0, "a lease not renewed for this long is lost", seconds)
    ]
    max_stalled_count: Annotated[
        int,
        Option(3, "a job whose worker died (or lost its lease) more often than this fails",
               at_least(0)),
    ]  # fmt: skip
    tags: Annotated[
        Sequence[str],
        Option((), "copied onto every job", strings("a list of strings")),
    ]
    max_payload_size: Annotated[
        int,
        Option(DEFAULT_MAX_PAYLOAD, "bytes of a payload; also capped by the server",
               at_least(1)),
    ]  # fmt: skip
    max_jobs: Annotated[
        int | None,
        Option(None, "at most this many unfinished jobs: add() beyond raises QueueFull",
               at_least(1, none=True)),
    ]  # fmt: skip
    max_bytes: Annotated[
        int | None,
        Option(None, "at most this many bytes of job records: add() beyond raises QueueFull",
               at_least(1, none=True)),
    ]  # fmt: skip
    cross_node_stall_scanner: Annotated[
        bool | StallScanner,
        Option(False, "re-enqueue active jobs that nothing will run again", group(StallScanner)),
    ]
    orphan_sweep: Annotated[
        bool | OrphanSweep,
        Option(True, "publish again waiting jobs whose message is gone", group(OrphanSweep)),
    ]
    reconciliation: Annotated[
        bool | Reconciliation,
        Option(False, "repair records and messages that disagree", group(Reconciliation)),
    ]
    lag_monitor: Annotated[
        bool | LagMonitor,
        Option(False, "claim nothing while the event loop lags", group(LagMonitor)),
    ]
    remove_on_complete: Annotated[
        Retention | None,
        Option(None, "retention of completed jobs (None: a day; False keeps them all)",
               check_retention),
    ]  # fmt: skip
    remove_on_fail: Annotated[
        Retention | None,
        Option(None, "retention of failed jobs (None: 14 days; False keeps them all)",
               check_retention),
    ]  # fmt: skip
    throttle: Annotated[
        Throttle | None,
        Option(None, "per process: starts per sliding window", instance(Throttle)),
    ]
    rate_limit: Annotated[
        RateLimit | None,
        Option(None, "cluster-wide: starts per window", instance(RateLimit)),
    ]
    secret_fields: Annotated[
        Sequence[str],
        Option(frozenset(), "payload fields masked in logs, stored errors and dead letters",
               strings("a list of payload field names", named=True)),
    ]  # fmt: skip
    codec: Annotated[
        Codec | None,
        Option(None, "encrypts payloads, results and errors (None: the client's codec)",
               check_codec),
    ]  # fmt: skip
    middleware: Annotated[
        Sequence[Middleware],
        Option((), "the user's middlewares, run after the built-in ones", middlewares),
    ]


OPTIONS: Mapping[str, Option] = {
    key: hint.__metadata__[0]
    for key, hint in get_type_hints(QueueOptions, include_extras=True).items()
}
"""Every queue option by name, in declaration order: its default, doc and resolver."""


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """A queue's resolved, validated configuration, built by :func:`make_config`.

    The first four fields are not options; each other field is the option of the same name in
    :class:`QueueOptions` (see its doc there), resolved: durations in seconds, an option group or
    None, sequences as tuples or a frozenset.
    """

    name: str
    payload: type[Any] | None
    disabled_behavior: DisabledBehavior
    retries_given: bool
    """Whether ``retries=`` was given (then the jobs this queue adds carry its attempts)."""
    concurrency: int
    strategy: Strategy
    priority: int
    retries: RetryPolicy
    dead_letter: DeadLetter
    hooks: Hooks
    guaranteed_worker: bool
    heartbeat: float
    lock_ttl: float
    max_stalled_count: int
    tags: tuple[str, ...]
    max_payload_size: int
    max_jobs: int | None
    max_bytes: int | None
    cross_node_stall_scanner: StallScanner | None
    orphan_sweep: OrphanSweep | None
    reconciliation: Reconciliation | None
    lag_monitor: LagMonitor | None
    remove_on_complete: Retention | None
    remove_on_fail: Retention | None
    throttle: Throttle | None
    rate_limit: RateLimit | None
    secret_fields: frozenset[str]
    codec: Codec | None
    middleware: tuple[Middleware, ...]

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


def make_config(
    name: str,
    payload: type[Any] | None,
    options: QueueOptions,
    disabled_behavior: DisabledBehavior,
) -> QueueConfig:
    """Validate the options of ``queue()``/``worker()`` and resolve them into a QueueConfig."""
    try:
        check_name(name)
    except InvalidName as exc:
        raise ConfigError(str(exc)) from None
    given: Mapping[str, object] = options
    unknown = set(given) - set(OPTIONS)
    if unknown:
        raise ConfigError(f"unknown queue options: {sorted(unknown)}")
    resolved = {
        key: option.resolve(given.get(key, option.default), key) for key, option in OPTIONS.items()
    }
    _check_lease(resolved["heartbeat"], resolved["lock_ttl"])
    return QueueConfig(
        name=name,
        payload=payload,
        disabled_behavior=one_of("hold", "reject", "skip")(disabled_behavior, "disabled_behavior"),
        retries_given=given.get("retries") is not None,
        **resolved,
    )


def _check_lease(heartbeat: float, lock_ttl: float) -> None:
    if lock_ttl < 1.0:
        raise ConfigError("lock_ttl must be at least 1 second (the NATS per-message TTL minimum)")
    if not 0 < heartbeat < lock_ttl:
        raise ConfigError(
            f"heartbeat ({heartbeat}s) must be positive and shorter than lock_ttl ({lock_ttl}s)"
        )
