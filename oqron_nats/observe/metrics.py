"""OpenTelemetry metrics through the API only: messaging conventions, job outcomes, queue gauges.

Without an SDK every instrument is the API's no-op (a proxy that starts recording once the
application sets a global MeterProvider); the library installs none. Attribute dicts are built
once per queue, so a job costs a few no-op calls. The instruments, per meter provider:

=================================  =========  =========  =========================================
name                               kind       unit       counts
=================================  =========  =========  =========================================
messaging.client.sent.messages     counter    {message}  jobs given to add()/add_bulk(), and
                                                         retries re-enqueued by a worker
messaging.client.consumed.messages counter    {message}  deliveries handed to the handler
messaging.process.duration         histogram  s          handler run time, one per attempt
oqron.jobs.completed               counter    {job}      jobs completed
oqron.jobs.failed                  counter    {job}      jobs failed for good (attempts spent,
                                                         discarded, or stalled too often)
oqron.jobs.retried                 counter    {job}      failed attempts scheduled to run again
oqron.jobs.stalled                 counter    {job}      attempts found orphaned (worker died)
oqron.jobs.dead_lettered           counter    {job}      failed jobs copied to the dead letters
oqron.queue.jobs                   gauge      {job}      jobs per ``state``: waiting, active,
                                                         delayed, paused
oqron.queue.oldest_waiting_age     gauge      s          age of the oldest waiting job (0: none)
=================================  =========  =========  =========================================

The naming scheme: ``messaging.*`` are the OpenTelemetry messaging conventions, with attributes
``messaging.system`` ("nats"), ``messaging.operation.name`` ("publish" or "process"),
``messaging.destination.name`` (the queue), ``messaging.consumer.group.name`` (the worker's
durable consumer: fifo, lifo or priority) where it applies, and ``error.type`` on failure (the
exception's class name; cancelled, shutdown or lease_lost for an attempt stopped by its signal).
``oqron.jobs.*`` count what happened to jobs, ``oqron.queue.*`` describe a queue now; both carry
the attribute ``queue`` (and ``state`` for the job counts). Never a job id.

The gauges cover the queues whose worker runs in this process: OTel calls gauge callbacks
synchronously, so each running consumer keeps a snapshot, refreshed by a task at most every
``Client(metrics_interval=...)`` seconds (15 by default), and only while something collects the
gauges: four state counts and one index read checked against its records. The first collection
finds no values yet (and starts the refreshes); later ones find those of the last refresh. A
worker whose metrics nobody reads (no OpenTelemetry SDK) never reads the counts: at thousands of
jobs a second, a count of an unfinished state reads the moves of its last seconds.
Every worker of a queue reports the same queue-wide values: aggregate them with max, not sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.util.types import Attributes

from .._version import __version__
from ..core.background import finish
from ..core.job import JobState
from .log import logger
from .tracing import CONSUMER_GROUP, DESTINATION, ERROR_TYPE, OPERATION_NAME, SYSTEM

log = logger(__name__)

PROCESS_DURATION = "messaging.process.duration"
CONSUMED = "messaging.client.consumed.messages"
SENT = "messaging.client.sent.messages"
COMPLETED = "oqron.jobs.completed"
FAILED = "oqron.jobs.failed"
RETRIED = "oqron.jobs.retried"
STALLED = "oqron.jobs.stalled"
DEAD_LETTERED = "oqron.jobs.dead_lettered"
REJECTED = "oqron.messages.rejected"
REASON = "reason"
QUEUE_JOBS = "oqron.queue.jobs"
OLDEST_WAITING_AGE = "oqron.queue.oldest_waiting_age"
QUEUE = "queue"
STATE = "state"

DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
"""Seconds: jobs run from milliseconds to an hour (the SDK's default buckets are for ms)."""
GAUGED_STATES = (JobState.WAITING, JobState.ACTIVE, JobState.DELAYED, JobState.PAUSED)
DEFAULT_INTERVAL = 15.0
"""Seconds between two refreshes of a running queue's gauges."""


class Metrics:
    """The instruments of one meter provider; get it with :func:`metrics_for`."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        meter = metrics.get_meter("oqron_nats", __version__, meter_provider=meter_provider)
        self.process_duration = duration_histogram(meter)
        self.consumed = meter.create_counter(
            CONSUMED, unit="{message}", description="Deliveries handed to a job handler."
        )
        self.sent = meter.create_counter(
            SENT, unit="{message}", description="Jobs published: added, or re-enqueued to retry."
        )

        def outcome(name: str, what: str) -> metrics.Counter:
            return meter.create_counter(name, unit="{job}", description=what)

        self.completed = outcome(COMPLETED, "Jobs completed.")
        self.failed = outcome(FAILED, "Jobs failed for good.")
        self.retried = outcome(RETRIED, "Failed attempts scheduled to run again.")
        self.stalled = outcome(STALLED, "Attempts whose worker died or lost the lease.")
        self.dead_lettered = outcome(DEAD_LETTERED, "Failed jobs copied to the dead letters.")
        self.rejected = meter.create_counter(
            REJECTED,
            unit="{message}",
            description="Messages on a queue's subjects that were not its jobs, removed unrun.",
        )
        self.watches: set[QueueWatch] = set()
        """The running queues whose gauges are reported."""
        meter.create_observable_gauge(
            QUEUE_JOBS,
            callbacks=[self._observe_jobs],
            unit="{job}",
            description="Jobs of a queue in a state (waiting, active, delayed, paused).",
        )
        meter.create_observable_gauge(
            OLDEST_WAITING_AGE,
            callbacks=[self._observe_age],
            unit="s",
            description="Seconds the oldest waiting job of a queue has waited (0 when none).",
        )

    def queue(self, name: str, consumer_group: str) -> QueueMetrics:
        """The instruments of one queue, with its attribute sets built once."""
        return QueueMetrics(self, name, consumer_group)

    def _observe_jobs(self, _options: CallbackOptions) -> Iterable[Observation]:
        for watch in tuple(self.watches):  # a copy: the event loop's thread may change the set
            yield from watch.observe_jobs()

    def _observe_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        for watch in tuple(self.watches):
            yield from watch.observe_age()


def duration_histogram(meter: metrics.Meter) -> metrics.Histogram:
    """The process-duration histogram, with DURATION_BUCKETS where the API can advise them."""
    name, unit = PROCESS_DURATION, "s"
    description = "Duration of processing a job (one attempt of the handler)."
    try:
        return meter.create_histogram(
            name, unit, description, explicit_bucket_boundaries_advisory=DURATION_BUCKETS
        )
    except TypeError:  # opentelemetry-api < 1.30 has no advisory: the SDK's (or a View's) buckets
        return meter.create_histogram(name, unit, description)


_by_provider: weakref.WeakKeyDictionary[MeterProvider, Metrics] = weakref.WeakKeyDictionary()
_global: list[Metrics] = []


def metrics_for(meter_provider: MeterProvider | None = None) -> Metrics:
    """The instruments of ``meter_provider`` (None: the global one), created once per provider.

    Shared, because a provider registers an instrument once: the gauge callbacks of a second
    set of instruments would be dropped.
    """
    if meter_provider is None:
        if not _global:
            _global.append(Metrics())
        return _global[0]
    found = _by_provider.get(meter_provider)
    if found is None:
        found = _by_provider[meter_provider] = Metrics(meter_provider)
    return found


class QueueMetrics:
    """One queue's measurements: what the job path calls, each a few no-op calls without SDK."""

    def __init__(self, metrics: Metrics, queue: str, consumer_group: str) -> None:
        self.metrics = metrics
        self.name = queue
        self._published: dict[str, str] = {
            SYSTEM: "nats",
            OPERATION_NAME: "publish",
            DESTINATION: queue,
        }
        self._processed: dict[str, str] = {
            SYSTEM: "nats",
            OPERATION_NAME: "process",
            DESTINATION: queue,
            CONSUMER_GROUP: consumer_group,
        }
        self._queue: Attributes = {QUEUE: queue}

    def sent(self, error: BaseException | None = None) -> None:
        """A job was published (or publishing it failed with ``error``)."""
        attributes = self._published
        if error is not None:
            attributes = {**self._published, ERROR_TYPE: type(error).__name__}
        self.metrics.sent.add(1, attributes)

    def consumed(self) -> None:
        """A delivery is handed to the handler."""
        self.metrics.consumed.add(1, self._processed)

    def processed(self, seconds: float, error_type: str | None = None) -> None:
        """The handler ran for ``seconds``; ``error_type`` names why it failed, if it did."""
        attributes = self._processed
        if error_type is not None:
            attributes = {**self._processed, ERROR_TYPE: error_type}
        self.metrics.process_duration.record(seconds, attributes)

    def completed(self) -> None:
        """A job completed."""
        self.metrics.completed.add(1, self._queue)

    def failed(self) -> None:
        """A job failed for good."""
        self.metrics.failed.add(1, self._queue)

    def retried(self) -> None:
        """A failed attempt was scheduled to run again."""
        self.metrics.retried.add(1, self._queue)

    def stalled(self) -> None:
        """An attempt was found orphaned by its worker."""
        self.metrics.stalled.add(1, self._queue)

    def dead_lettered(self) -> None:
        """A failed job was copied to the dead letters."""
        self.metrics.dead_lettered.add(1, self._queue)

    def rejected(self, reason: str) -> None:
        """A message that was not a job of the queue was removed (``reason`` says why)."""
        self.metrics.rejected.add(1, {QUEUE: self.name, REASON: reason})

    def watch(self, read: Reader, interval: float = DEFAULT_INTERVAL) -> QueueWatch:
        """Start reporting the queue's gauges from a snapshot ``read`` every ``interval``."""
        watch = QueueWatch(self, read, interval)
        watch.start()
        return watch


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A queue's gauge values as last read."""

    counts: tuple[int, ...]
    """Jobs in each of GAUGED_STATES, in that order."""
    oldest_waiting: datetime | None
    """When the oldest waiting job entered the state; None if none waits."""


Reader = Callable[[], Awaitable[Snapshot]]
"""Reads a queue's gauge values now (the job store's ``gauges``)."""


class QueueWatch:
    """Keeps one queue's gauge snapshot fresh while its worker runs in this process."""

    def __init__(self, queue: QueueMetrics, read: Reader, interval: float) -> None:
        self.queue = queue
        self.read = read
        self.interval = interval
        self.snapshot: Snapshot | None = None
        self._by_state = [{QUEUE: queue.name, STATE: str(state)} for state in GAUGED_STATES]
        self._age: Attributes = {QUEUE: queue.name}
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._collected = False
        """Whether the gauges were collected since the last refresh (set from any thread)."""

    def start(self) -> None:
        """Report the snapshot, refreshed every ``interval`` seconds while it is collected."""
        self._task = asyncio.create_task(self._run(), name=f"oqron-metrics-{self.queue.name}")
        self.queue.metrics.watches.add(self)

    async def stop(self) -> None:
        """Stop refreshing and reporting."""
        self.queue.metrics.watches.discard(self)
        self._stopping.set()
        await finish(self._task, grace=0)  # informational: a read under way is dropped

    async def _run(self) -> None:
        while not self._stopping.is_set():
            if self._collected:
                self._collected = False
                try:
                    await self.refresh()
                except Exception as exc:  # reports nothing rather than stale values; tries again
                    self.snapshot = None
                    log.warning(
                        "queue gauges not refreshed", queue=self.queue.name, error=repr(exc)
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    async def refresh(self) -> None:
        """Read the state counts and the oldest waiting job now."""
        self.snapshot = await self.read()

    def observe_jobs(self) -> Iterator[Observation]:
        """The job count of each gauged state."""
        self._collected = True
        snapshot = self.snapshot
        if snapshot is not None:
            for count, attributes in zip(snapshot.counts, self._by_state, strict=True):
                yield Observation(count, attributes)

    def observe_age(self) -> Iterator[Observation]:
        """The oldest waiting job's age now (it keeps growing between two refreshes)."""
        self._collected = True
        snapshot = self.snapshot
        if snapshot is None:
            return
        age = 0.0
        if snapshot.oldest_waiting is not None:
            age = max(0.0, time.time() - snapshot.oldest_waiting.timestamp())
        yield Observation(age, self._age)
