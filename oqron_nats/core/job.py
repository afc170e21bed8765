"""The job record stored in KV, its states, and the options of ``add()``.

The record is a msgspec Struct encoded as JSON, so ``nats kv get oqron_<ns>_jobs <queue>.<id>``
shows it as it is. New fields always get defaults (msgspec's schema-evolution rules), and ``v``
marks the record layout.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, Protocol, TypedDict, TypeVar, cast

import msgspec

from .encryption import Envelope
from .errors import InvalidState

T = TypeVar("T")
J = TypeVar("J", bound="Job[Any]")

Strategy = Literal["fifo", "lifo", "priority"]
Retention = bool | int | timedelta
"""What to keep of finished jobs: True removes at once, False keeps, an int keeps the newest N
(per queue and state), a timedelta keeps each for that long."""
ParentFailurePolicy = Literal["block", "cascade-fail", "ignore"]

WAITER = "_queue"
"""The key in a job's ``__dict__`` of the queue it waits through (see :func:`bind`). msgspec
encodes, compares and shows every field, the instance dict never: the link stays out of the
stored record, ``==`` and repr. It must name no attribute of Job (the entry would hide it)."""


class JobState(enum.StrEnum):
    """Where a job is in its life. The values are OqronKit's."""

    WAITING = "waiting"
    DELAYED = "delayed"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    STALLED = "stalled"
    PAUSED = "paused"
    WAITING_CHILDREN = "waiting-children"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
"""A job in one of these states never runs again (unless an admin retries it)."""


def _to(*states: str) -> frozenset[JobState]:
    return frozenset(JobState(state) for state in states)


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # a record is added in its first state, and written in it again with the "added" entry
    JobState.WAITING: _to("waiting", "active", "paused", "failed", "cancelled"),
    JobState.DELAYED: _to("delayed", "waiting", "active", "paused", "failed", "cancelled"),
    JobState.WAITING_CHILDREN: _to("waiting-children", "waiting", "delayed", "failed", "cancelled"),
    JobState.PAUSED: _to("waiting", "delayed", "cancelled"),
    JobState.ACTIVE: _to("completed", "failed", "delayed", "waiting", "stalled", "cancelled"),
    JobState.STALLED: _to("active", "waiting", "failed", "cancelled"),
    JobState.COMPLETED: _to("waiting"),
    JobState.FAILED: _to("waiting"),
    JobState.CANCELLED: _to("waiting"),
}
"""Every legal change of a job's state, the one place that declares them. Pending jobs run,
are held while their queue is paused, or fail before they run (a poison job, stalled too
often); a running job settles (completed, failed, a retry now or later), is handed back at
shutdown, or stalls when its worker dies; a stalled job runs again; children wait for their
parents; anything unfinished can be cancelled; a finished job only goes back to waiting (an
operator's retry or rerun). :func:`moved` refuses any other change with InvalidState."""

CLAIMABLE_STATES = frozenset(
    {JobState.WAITING, JobState.DELAYED, JobState.STALLED, JobState.ACTIVE}
)
"""States a delivered job may be claimed from (active: only when its lease is gone)."""


class JobFailure(msgspec.Struct, frozen=True, kw_only=True):
    """Why an attempt failed: the exception's type, message and (truncated) traceback.

    On a queue with a codec the stored message reads ``(encrypted)`` and ``sealed`` holds the
    message and traceback encrypted; reading the job with the key opens them.
    """

    type: str
    message: str
    traceback: str = ""
    sealed: Envelope | msgspec.UnsetType = msgspec.UNSET
    """The encrypted message and traceback, as stored (unset when they are readable)."""


class AttemptError(msgspec.Struct, frozen=True, kw_only=True):
    """One failed attempt in a job's history: its number, when it failed, and why (shortened
    to :data:`ATTEMPT_MESSAGE` and :data:`ATTEMPT_TRACEBACK` characters; sealed as ``error``)."""

    attempt: int
    at: datetime
    error: JobFailure


ATTEMPT_ERRORS_LIMIT = 10
"""How many failed attempts a record keeps the error of (the oldest are dropped first)."""
ATTEMPT_MESSAGE = 500
"""Characters of an attempt's error message kept in the history (the start)."""
ATTEMPT_TRACEBACK = 1500
"""Characters of an attempt's traceback kept in the history (the end: where it was raised)."""


def shortened(failure: JobFailure) -> JobFailure:
    """A failure cut to what the attempt history keeps of it."""
    return msgspec.structs.replace(
        failure,
        message=failure.message[:ATTEMPT_MESSAGE],
        traceback=failure.traceback[-ATTEMPT_TRACEBACK:],
    )


def with_attempt_error(
    errors: list[AttemptError], attempt: int, failure: JobFailure
) -> list[AttemptError]:
    """The attempt history with one more failed attempt (``failure`` as stored), bounded."""
    entry = AttemptError(attempt=attempt, at=datetime.now(UTC), error=failure)
    return [*errors[-(ATTEMPT_ERRORS_LIMIT - 1) :], entry]


class Transition(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One state change in a job's timeline."""

    at: datetime
    state: JobState
    reason: str | None = None


TIMELINE_LIMIT = 50
"""How many state changes a record keeps (the oldest are dropped first)."""


class Job(msgspec.Struct, Generic[T], kw_only=True, omit_defaults=True, dict=True):
    """A job record: the payload, its state and what happened to it.

    Timestamps are UTC. ``attempt`` counts the attempts started so far; a stall recovery runs the
    same attempt again and counts in ``stalled_count`` instead. ``timeline`` lists the latest
    state changes. A job returned by a queue can be waited for: ``await job.wait(timeout)``.
    """

    id: str
    queue: str
    state: JobState
    data: T
    created_at: datetime
    correlation_id: str
    max_attempts: int | None = None
    """Total attempts, when the job or the queue that added it said (``attempts=`` on add, or
    the adding queue's own ``retries=``); None: the retry policy of the worker that runs it."""
    priority: int = 0
    attempt: int = 0
    run_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: float = 0.0
    progress_label: str | None = None
    result: Any = None
    error: JobFailure | None = None
    """The last attempt's error, in full (None once it completes or runs again by an admin)."""
    errors: list[AttemptError] = msgspec.field(default_factory=list)
    """Every failed attempt's error, shortened, oldest first, the last
    :data:`ATTEMPT_ERRORS_LIMIT`; written with the failure itself (no write of its own) and kept
    when an admin runs the job again."""
    tags: list[str] = msgspec.field(default_factory=list)
    stalled_count: int = 0
    enqueued: int = 1
    """How many times the job's message has been published: the generation in its message id."""
    worker: str | None = None
    leased: bool = False
    """Whether the running attempt holds a heartbeat lease (guaranteed_worker)."""
    msg_seq: int = 0
    """The stream sequence of the message the running attempt claimed; other copies are skipped."""
    trace: dict[str, str] = msgspec.field(default_factory=dict)
    """The trace context of the add() that created the job, re-sent on every re-publish."""
    depends_on: list[str] = msgspec.field(default_factory=list)
    parent_failure_policy: ParentFailurePolicy = "block"
    remove_on_complete: Retention | None = None
    """This job's retention once completed (None: the worker's queue setting)."""
    remove_on_fail: Retention | None = None
    """This job's retention once failed (None: the worker's queue setting)."""
    triggered_by: str = "api"
    timeline: list[Transition] = msgspec.field(default_factory=list)
    v: int = 1
    data_error: str | None = None
    """Set when the stored payload does not match the reading queue's payload type (a job that
    failed with PayloadError), or cannot be decrypted by its codec (no key, an unknown key id,
    tampered): ``data`` then holds the raw JSON value (the envelope, if encrypted), and this says
    why. Never stored."""
    result_error: str | None = None
    """Set when the stored result cannot be decrypted by the reading queue's codec: ``result``
    then holds the envelope, and this says why. Never stored."""

    @property
    def is_terminal(self) -> bool:
        """Whether the job is completed, failed or cancelled."""
        return self.state in TERMINAL_STATES

    async def wait(self, timeout: float | None = None) -> Job[T]:
        """Wait (without polling) until the job is completed, failed or cancelled; return it.

        Raises TimeoutError after ``timeout`` seconds, and InvalidState for a job that no queue
        returned (decoded or built by hand: use ``queue.wait(job_id)``).
        """
        waiter = self._waiter()
        if waiter is None:
            raise InvalidState("only a job returned by a queue can wait; use queue.wait(job_id)")
        return await waiter.wait(self.id, timeout)

    def _waiter(self) -> Waiter[T] | None:
        """The queue this job waits through (the one that returned it); None if none did."""
        waiter: Waiter[T] | None = self.__dict__.get(WAITER)
        return waiter


class Waiter(Protocol[T]):
    """What a job waits through: the queue that returned it (a ``Queue[T]``)."""

    async def wait(self, job_id: str, timeout: float | None = None) -> Job[T]:
        """Wait until the job is completed, failed or cancelled, and return it."""
        ...


def bind(job: Job[T], waiter: Waiter[T]) -> Job[T]:
    """The job, able to ``wait()`` through ``waiter`` from now on."""
    job.__dict__[WAITER] = waiter
    return job


def moved(job: J, state: JobState, reason: str | None = None, **changes: Any) -> J:
    """The record in ``state``, its timeline extended; ``changes`` replace other fields.
    InvalidState if :data:`TRANSITIONS` does not allow the change."""
    if state not in TRANSITIONS[job.state]:
        raise InvalidState(f"job {job.id!r} cannot move from {job.state} to {state}")
    entry = Transition(at=datetime.now(UTC), state=state, reason=reason)
    timeline = [*job.timeline[-(TIMELINE_LIMIT - 1) :], entry]
    return msgspec.structs.replace(job, state=state, timeline=timeline, **changes)


def with_data(job: Job[Any], data: T, **changes: Any) -> Job[T]:
    """The same record carrying ``data`` (e.g. the decoded payload) and any other ``changes``."""
    copy = cast("Job[T]", msgspec.structs.replace(job, data=data, **changes))
    waiter = job._waiter()
    return copy if waiter is None else bind(copy, waiter)


class AddOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-job options of ``add()`` and of each ``add_bulk()`` item's ``opts``."""

    job_id: str | None = None
    delay: float | timedelta | None = None
    priority: int | None = None
    attempts: int | None = None
    correlation_id: str | None = None
    remove_on_complete: Retention | None = None
    remove_on_fail: Retention | None = None
    depends_on: list[str] | None = None
    parent_failure_policy: ParentFailurePolicy | None = None


class AddKeywords(TypedDict, total=False):
    """The keyword arguments of ``add()``: the fields of :class:`AddOptions` (a test keeps the
    two alike), typed for callers (``**options: Unpack[AddKeywords]``)."""

    job_id: str | None
    delay: float | timedelta | None
    priority: int | None
    attempts: int | None
    correlation_id: str | None
    remove_on_complete: Retention | None
    remove_on_fail: Retention | None
    depends_on: Sequence[str] | None
    parent_failure_policy: ParentFailurePolicy | None
