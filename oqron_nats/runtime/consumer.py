"""The consuming side of a queue: start a worker's parts, run each claimed job in a free slot,
stop gracefully. Claiming itself (pull requests, lanes, the worker's consumers) is
``runtime/claiming.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import os
import secrets
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from .._nats import Delivery
from ..core.background import STOP_GRACE, finish
from ..core.codec import PayloadCodec
from ..core.config import QueueConfig, seconds
from ..core.job import JobState
from ..core.middleware import Middleware
from ..observe.log import logger
from ..storage.backend import Backend
from ..storage.control import QueueState
from . import retention
from .claiming import Claimer
from .context import JobContext
from .execution import CANCELLED, SHUTDOWN, Execution, Runtime
from .lag import LagWatch
from .maintenance import Maintenance, OrphanSweeper, reconcile, scan_stalls
from .middlewares import WhileRunning, chain_of
from .prefetch import Prefetch
from .ratelimit import ClusterRateLimit
from .schedules import watch_missed_ticks
from .throttle import StartWindow

log = logger(__name__)

ABORT_WAIT = 5.0
"""Seconds stop() waits for aborted attempts to hand their jobs back."""


def new_worker_id() -> str:
    """A unique id for one consumer in one process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def is_async_handler(handler: Callable[..., Any]) -> bool:
    """Whether ``handler`` is an ``async def`` function (or an object with one as __call__)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - we want the method, not callability
    )


class Consumer:
    """Runs one queue's handler in this process, up to ``concurrency`` handlers at a time."""

    def __init__(
        self,
        config: QueueConfig,
        backend: Backend,
        codec: PayloadCodec[Any],
        handler: Callable[[JobContext[Any]], Any],
    ) -> None:
        self.config = config
        self.backend = backend
        self.worker_id = new_worker_id()
        self.running = 0
        """Jobs holding a slot: claimed or claiming, their handler not yet returned."""
        self._codec = codec
        self._handler = handler
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: dict[asyncio.Task[None], Execution] = {}
        self._prefetch = Prefetch(config, self._hand_back)
        self._background: set[asyncio.Task[Any]] = set()
        self._parts = contextlib.AsyncExitStack()
        """What _start set up, undone in reverse order by _close (each part quietly: a closed
        connection has nothing left to undo)."""
        self._executor: ThreadPoolExecutor | None = None
        self._context = contextvars.Context()
        """The context start() was called in: each job runs in a copy of it (never in the one
        of the job whose slot it takes: a ready delivery starts from that job's task)."""
        self._runtime: Runtime | None = None
        self._lag: LagWatch | None = None
        self._throttle = StartWindow(config.throttle) if config.throttle else None
        self._claimer = Claimer(
            config, backend, room=self._room, may_claim=self._may_claim,
            deliver=self._on_delivery, stopping=self._stopping, throttle=self._throttle,
        )  # fmt: skip

    @property
    def free(self) -> int:
        """Slots with no handler running, while at most ``concurrency`` jobs settle behind.

        A job leaves its slot when its handler returns: the writes that settle it (the final
        record, the ack) are round trips that need no handler, and the next job starts
        meanwhile. The graceful stop waits for them as for running jobs.
        """
        concurrency = self.config.concurrency
        return min(concurrency - self.running, 2 * concurrency - self.in_flight)

    @property
    def ready(self) -> int:
        """Deliveries held ready for the next free slots (see runtime/prefetch.py)."""
        return len(self._prefetch)

    @property
    def in_flight(self) -> int:
        """Jobs delivered here and not yet settled (running, or writing their outcome)."""
        return len(self._tasks)

    def _room(self) -> int:
        """How many more deliveries to ask for: free slots and room to hold some ready while
        jobs are short, within the throttle's window."""
        room = self.free + self._prefetch.room
        return room if self._throttle is None else min(room, self._throttle.room())

    async def start(self) -> None:
        """Create the consumers, open the pull inboxes and start claiming."""
        try:
            await self._start()
        except BaseException:
            await self._close()
            raise
        log.info(
            "worker started",
            queue=self.config.name, strategy=self.config.strategy,
            concurrency=self.config.concurrency, worker_id=self.worker_id,
            keep_completed=retention.describe(self.config, JobState.COMPLETED),
            keep_failed=retention.describe(self.config, JobState.FAILED),
        )  # fmt: skip

    async def _start(self) -> None:
        self._context = contextvars.copy_context()
        # every line a job logs carries its queue: bound once here, each job runs in a copy
        self._context.run(structlog.contextvars.bind_contextvars, queue=self.config.name)
        consumers = self.backend.shared.consumers
        consumers.claim(self.config.name)
        self._undo(lambda: consumers.release(self.config.name))
        control = self.backend.control
        control.listeners.append(self._on_state)
        self._undo(lambda: control.listeners.remove(self._on_state))
        await self._claimer.prepare(self._undo)
        if not is_async_handler(self._handler):
            self._executor = ThreadPoolExecutor(
                self.config.concurrency, thread_name_prefix=f"oqron-{self.config.name}"
            )
        self._runtime = Runtime(
            config=self.config,
            backend=self.backend,
            codec=self._codec,
            handler=self._handler,
            worker_id=self.worker_id,
            executor=self._executor,
            limiter=(
                ClusterRateLimit(self.backend.rates, self.config.rate_limit)
                if self.config.rate_limit
                else None
            ),
            middleware=chain_of(
                self.config,
                self.backend,
                *self._worker_parts(),
                group=self._claimer.consumer,
                sealer=self._codec.sealer,
            ),
        )
        await self._claimer.open(self._undo)
        self._undo(watch_missed_ticks(self._runtime))  # the catch-up after a cluster outage
        self._undo(await self.backend.control.hear_cancels(self._on_cancel))
        self._start_maintenance()
        gauges = self.backend.metrics.watch(
            self.backend.store.gauges, self.backend.shared.metrics_interval
        )
        self._undo(gauges.stop)
        self._loop_task = asyncio.create_task(
            self._claimer.run(), name=f"oqron-claim-{self.config.name}"
        )
        chain = self._runtime.middleware
        await chain.run("on_worker_start", self.config.name)
        self._undo(lambda: chain.run("on_worker_stop", self.config.name))

    def _worker_parts(self) -> list[Middleware]:
        """The middlewares of this worker process: its presence key and its lag monitor."""
        parts: list[Middleware] = [WhileRunning(self.backend.presence(self.config.concurrency))]
        if self.config.lag_monitor is not None:
            self._lag = LagWatch(self.config.lag_monitor, self._on_lag)
            parts.append(WhileRunning(self._lag))
        return parts

    def _start_maintenance(self) -> None:
        scanner, reconciliation = self.config.cross_node_stall_scanner, self.config.reconciliation
        sweep = self.config.orphan_sweep
        if scanner is None and reconciliation is None and sweep is None:
            return
        backend = self.backend
        maintenance = Maintenance(backend, self.worker_id)
        self._undo(maintenance.stop)
        if sweep is not None:
            sweeper = OrphanSweeper(backend, sweep)
            maintenance.start("orphan-sweep", sweeper.interval, sweeper.sweep)
        if scanner is not None:
            interval = seconds(scanner.interval, "interval")
            maintenance.start("stall-scanner", interval, lambda: scan_stalls(backend))
        if reconciliation is not None:
            interval = seconds(reconciliation.interval, "interval")
            maintenance.start(
                "reconciliation", interval, lambda: reconcile(backend, reconciliation)
            )

    # -- running --------------------------------------------------------------------------

    def _on_delivery(self, delivery: Delivery) -> None:
        if self.free <= 0 and self._may_hold() and self._prefetch.hold(delivery):
            return
        self._run_delivery(delivery)

    def _may_hold(self) -> bool:
        """Whether a delivery may wait here for a slot: claiming, and not stopping."""
        return not self._stopping.is_set() and self._may_claim()

    def _run_delivery(self, delivery: Delivery) -> None:
        if self._stopping.is_set() or self.free <= 0 or not self._may_claim():
            self._hand_back(delivery)  # no room, paused, or the loop lags
            return
        assert self._runtime is not None
        execution = Execution(self._runtime, delivery, self._leave_slot)
        if self._throttle is not None:
            self._throttle.started()
        self.running += 1
        task = self._runtime.loop.create_task(
            self._execute(execution), context=self._context.copy()
        )
        self._tasks[task] = execution

    async def _execute(self, execution: Execution) -> None:
        try:
            await execution.run()
        finally:
            self._tasks.pop(asyncio.current_task(execution.rt.loop), None)  # type: ignore[arg-type]
            self._start_ready()
            self._claimer.wake.set()

    def _leave_slot(self, slot_time: float | None) -> None:
        """A job left its slot: its handler returned after ``slot_time`` seconds (None: it ran
        none; its settle goes on outside the slot)."""
        self.running -= 1
        if slot_time is not None:
            self._prefetch.ended(slot_time)
        self._start_ready()
        self._claimer.wake.set()

    def _start_ready(self) -> None:
        """Start the deliveries held ready while slots are free (paused: hand them back).

        It runs in the task of a job leaving its slot: a failure here is not that job's.
        """
        while self.free > 0 and (delivery := self._prefetch.take()) is not None:
            try:
                self._run_delivery(delivery)
            except Exception:
                log.exception("could not start a delivery held ready; handing it back")
                self._hand_back(delivery)

    def _on_state(self, state: QueueState) -> None:
        """The queue state was read: a paused queue keeps no delivery ready."""
        if state.paused:
            self._prefetch.hand_back_all()

    def _on_lag(self, lagging: bool) -> None:
        """The event loop started or stopped lagging: a lagging one keeps no delivery ready."""
        if lagging:
            self._prefetch.hand_back_all()
        self._claimer.wake.set()

    def _hand_back(self, delivery: Delivery) -> None:
        """Let any worker take this delivery now (unclaimed, it runs no attempt)."""
        self._spawn(delivery.nak())

    def _may_claim(self) -> bool:
        """Whether the queue is running and the event loop is not lagging."""
        lagging = self._lag is not None and self._lag.lagging
        return not lagging and not self.backend.control.state.paused

    def _on_cancel(self, job_id: str) -> None:
        """A job was cancelled (by any process): stop it if it runs here."""
        for execution in self._tasks.values():
            if execution.job_id == job_id:
                execution.abort(CANCELLED)

    def _spawn(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- stopping -------------------------------------------------------------------------

    async def stop(self, timeout: float = 25.0) -> None:
        """Stop claiming; running jobs get ``timeout`` seconds to finish, then are handed back."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._claimer.wake.set()
        # it may be waiting for an answer NATS does not give (none at all while disconnected)
        await finish(self._loop_task, grace=STOP_GRACE if self.backend.connected else 0)
        await self._claimer.stop_pulling()  # no open pull may catch the jobs handed back below
        self._prefetch.hand_back_all()
        if self._tasks:
            pending = await self._wait_for_jobs(timeout)
            if pending:
                log.warning("shutdown grace period over; handing jobs back", count=len(pending))
                for task in pending:
                    self._tasks[task].abort(SHUTDOWN)
                _, stuck = await asyncio.wait(pending, timeout=ABORT_WAIT)
                for task in stuck:  # sync handlers ignoring the signal: redelivered after ack_wait
                    task.cancel()
        if self._runtime is not None:  # the settles' removals, then their finished entries
            await self._runtime.retention.finished(STOP_GRACE)
        await self.backend.store.index.confirmed(STOP_GRACE)
        await self._close()
        log.info("worker stopped", queue=self.config.name, worker_id=self.worker_id)

    def hurry(self) -> None:
        """Cut a stop's grace period short: running jobs are handed back now."""
        self._hurry.set()

    async def _wait_for_jobs(self, timeout: float) -> set[asyncio.Task[None]]:
        """Wait until the running jobs end, ``timeout`` passes or :meth:`hurry` is called;
        return the jobs still running."""
        running = list(self._tasks)
        ended = asyncio.ensure_future(asyncio.wait(running))
        hurried = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait([ended, hurried], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        hurried.cancel()
        return {task for task in running if not task.done()}

    def _undo(self, cleanup: Callable[[], Any]) -> None:
        """Have _close call ``cleanup`` (awaited if it returns an awaitable), quietly."""

        async def quietly() -> None:
            with contextlib.suppress(Exception):  # a closed connection has nothing left to undo
                outcome = cleanup()
                if inspect.isawaitable(outcome):
                    await outcome

        self._parts.push_async_callback(quietly)

    async def _close(self) -> None:
        await self._claimer.close()
        await self._parts.aclose()
        if self._background:
            await asyncio.wait(list(self._background), timeout=ABORT_WAIT)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
