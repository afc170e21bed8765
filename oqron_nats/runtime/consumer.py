"""The consuming side of a queue: claim jobs into free slots, run them, stop gracefully.

There is no poll tick. The claim loop sleeps on one event, woken when a slot frees up, when a
pull request ends, when a lifo lane rings its bell or after a reconnect; it keeps exactly enough
pull requests open at the server to fill the free slots (several lanes may ask for a little more;
an extra delivery is handed straight back). An idle worker holds one long pull per lane, renewed
every ``PULL_EXPIRES`` seconds.

No sleep of the loop is unbounded: while claiming fails (a cluster electing the consumer's
leader answers nothing for seconds) it looks again after a jittered pause that grows up to
``MAX_BACKOFF``, and otherwise at least every ``LOOK_AGAIN`` seconds, so a lost wake-up can
never stop a worker from claiming.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import secrets
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .._nats import ConsumerSpec, Delivery, JetStreamError, Msg, Puller, ensure_consumer, jittered
from ..core.background import STOP_GRACE, finish
from ..core.codec import PayloadCodec
from ..core.config import QueueConfig, seconds
from ..core.errors import ConsumerConflict
from ..core.job import JobState
from ..core.middleware import Middleware
from ..observe.log import logger
from ..storage.backend import Backend
from ..storage.control import PAUSED_FOREVER, QueueState
from ..storage.presence import Presence
from . import retention
from .context import JobContext
from .execution import CANCELLED, SHUTDOWN, Execution, Runtime
from .lag import LagWatch
from .lanes import PriorityPlan, StackPopper, consumer_specs, strategy_of
from .maintenance import Maintenance, OrphanSweeper, reconcile, scan_stalls
from .middlewares import WhileRunning, chain_of
from .ratelimit import ClusterRateLimit
from .throttle import StartWindow

log = logger(__name__)

PULL_EXPIRES = 10.0
"""Seconds a lingering pull request stays open at the server."""
ABORT_WAIT = 5.0
"""Seconds stop() waits for aborted attempts to hand their jobs back."""
LOOK_AGAIN = PULL_EXPIRES
"""The longest the claim loop sleeps when nothing wakes it."""
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 2.0
"""Seconds the claim loop pauses while claiming fails: doubling from the first, up to the cap."""


def backoff(trouble: int) -> float:
    """The jittered pause after ``trouble`` failed rounds of claiming in a row."""
    return jittered(min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(trouble, 16)))


def new_worker_id() -> str:
    """A unique id for one consumer in one process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def is_async_handler(handler: Callable[..., Any]) -> bool:
    """Whether ``handler`` is an ``async def`` function (or an object with one as __call__)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - we want the method, not callability
    )


class Consumer:
    """Runs one queue's handler in this process, up to ``concurrency`` jobs at a time."""

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
        self._codec = codec
        self._handler = handler
        self._pullers: list[Puller] = []
        self._plan = PriorityPlan()
        self._popper: StackPopper | None = None
        self._in_transit = 0
        self._trouble = 0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: dict[asyncio.Task[None], Execution] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._parts = contextlib.AsyncExitStack()
        """What _start set up, undone in reverse order by _close (each part quietly: a closed
        connection has nothing left to undo)."""
        self._executor: ThreadPoolExecutor | None = None
        self._runtime: Runtime | None = None
        self._specs = consumer_specs(config, backend.names, backend.shared.replicas)
        self._lag: LagWatch | None = None
        self._throttle = StartWindow(config.throttle) if config.throttle else None
        self._refill_at = max(1, config.concurrency // 4)
        self._paused_on_server: bool | None = None
        """Whether this worker last created or set its consumers paused (None: not yet)."""
        self._pausing: asyncio.Task[None] | None = None

    @property
    def free(self) -> int:
        """Slots with no job running."""
        return self.config.concurrency - self.running

    def _room(self) -> int:
        """How many more jobs may start now: free slots, within the throttle's window."""
        if self._throttle is None:
            return self.free
        return min(self.free, self._throttle.room())

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
        conn, names = self.backend.conn, self.backend.names
        consumers = self.backend.shared.consumers
        consumers.claim(self.config.name)
        self._undo(lambda: consumers.release(self.config.name))
        specs = self._specs
        await self._check_strategy()
        control = self.backend.control
        control.listeners.append(self._on_state)
        self._undo(lambda: control.listeners.remove(self._on_state))
        await self._ensure_consumers(specs)
        if not is_async_handler(self._handler):
            self._executor = ThreadPoolExecutor(
                self.config.concurrency, thread_name_prefix=f"oqron-{self.config.name}"
            )
        group = specs[0].durable if len(specs) == 1 else "priority"
        self._runtime = Runtime(
            config=self.config,
            backend=self.backend,
            codec=self._codec,
            handler=self._handler,
            worker_id=self.worker_id,
            executor=self._executor,
            limiter=(
                ClusterRateLimit(conn, names, self.config.rate_limit)
                if self.config.rate_limit
                else None
            ),
            middleware=chain_of(
                self.config,
                self.backend,
                *self._worker_parts(),
                group=group,
                sealer=self._codec.sealer,
            ),
        )
        for spec in specs:
            puller = Puller(
                conn,
                spec.stream,
                spec.durable,
                on_delivery=self._on_delivery,
                on_change=self._wake.set,
                on_alive=self._on_alive,
            )
            await puller.start()
            self._pullers.append(puller)
            self._undo(puller.stop)
        commands = await conn.subscribe(names.controls, self._on_command)
        self._undo(commands.unsubscribe)
        if self.config.strategy == "lifo":
            self._popper = StackPopper(conn, names)
            bell = await conn.subscribe(names.bell, self._on_bell)
            self._undo(bell.unsubscribe)
        self._undo(conn.on_reconnect(self._on_reconnect))
        self._start_maintenance()
        gauges = self.backend.metrics.watch(
            self.backend.store.gauges, self.backend.shared.metrics_interval
        )
        self._undo(gauges.stop)
        self._loop_task = asyncio.create_task(
            self._claim_loop(), name=f"oqron-claim-{self.config.name}"
        )
        chain = self._runtime.middleware
        await chain.run("on_worker_start", self.config.name)
        self._undo(lambda: chain.run("on_worker_stop", self.config.name))

    def _worker_parts(self) -> list[Middleware]:
        """The middlewares of this worker process: its presence key and its lag monitor."""
        backend = self.backend
        parts: list[Middleware] = [
            WhileRunning(Presence(backend.conn, backend.names, self.config.concurrency))
        ]
        if self.config.lag_monitor is not None:
            self._lag = LagWatch(self.config.lag_monitor, lambda _lagging: self._wake.set())
            parts.append(WhileRunning(self._lag))
        return parts

    def _start_maintenance(self) -> None:
        scanner, reconciliation = self.config.stall_scanner, self.config.reconciliation
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

    async def _ensure_consumers(
        self, specs: list[ConsumerSpec], *, deadline: float | None = None
    ) -> None:
        """Create (or update) the consumers, paused if the queue is paused right now."""
        paused = self.backend.control.state.paused
        for spec in specs:
            try:
                await ensure_consumer(
                    self.backend.conn, spec, PAUSED_FOREVER if paused else None, deadline=deadline
                )
            except JetStreamError as exc:
                raise ConsumerConflict(
                    f"cannot consume queue {self.config.name!r} with strategy "
                    f"{self.config.strategy!r}: {exc.description}"
                ) from exc
        self._paused_on_server = paused

    async def _check_strategy(self) -> None:
        existing = await self.backend.conn.consumer_names(self.backend.names.stream)
        others = sorted(
            {s for name in existing if (s := strategy_of(name)) and s != self.config.strategy}
        )
        if others:
            raise ConsumerConflict(
                f"queue {self.config.name!r} is already consumed with strategy {others[0]!r}, "
                f"not {self.config.strategy!r}; stop those workers and delete their consumers "
                f"(stream {self.backend.names.stream}) before changing the strategy"
            )

    # -- claiming -------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                if await self._recreate_lost_consumers():
                    self._trouble += 1
                if self._room() > 0 and self._may_claim():
                    await self._refill()
            except Exception as exc:
                self._trouble += 1
                log.warning("claiming failed; retrying", queue=self.config.name, error=repr(exc))
            look_again = self._look_again_in()
            if self._trouble:  # back off while things go wrong: a delivery or heartbeat resets it
                await _wait(self._stopping, min(look_again, backoff(self._trouble)))
            else:
                await _wait(self._wake, look_again)

    def _look_again_in(self) -> float:
        """Seconds until the loop must look again though nothing woke it: the throttle's next
        room, the next pull request to give up, at most LOOK_AGAIN."""
        timeout = LOOK_AGAIN
        if self._throttle is not None:
            room_in = self._throttle.next_room_in()
            if room_in is not None:
                timeout = min(timeout, room_in)
        for puller in self._pullers:
            check = puller.expire_stale()
            if check is not None:
                timeout = min(timeout, check)
        return timeout

    def _on_alive(self) -> None:
        """A pull request is served (a heartbeat came): claiming works again."""
        self._trouble = 0

    async def _refill(self) -> None:
        if len(self._pullers) == 1:
            await self._refill_single(self._pullers[0])
            return
        for lane in self._plan.order():  # priority: sweep ready jobs, best lane first
            puller = self._pullers[lane]
            if self._room() <= 0 or self._stopping.is_set():
                return
            if not puller.has_open_request:
                await puller.request_now(self._room())
        idle = [p for p in self._pullers if not p.has_open_request]
        room = self._room()
        if room > 0 and idle:  # nothing ready: wait on every lane at once
            if self._throttle is not None:  # never ask for more than the window allows
                idle = idle[:room]
            per = max(1, room // len(idle))
            for puller in idle:
                await puller.request(per, expires=PULL_EXPIRES)

    async def _refill_single(self, puller: Puller) -> None:
        want = self._room() - puller.outstanding
        # while jobs are still owed, ask again once a quarter of the slots is free, not per job
        if want > 0 and (want >= self._refill_at or not puller.outstanding):
            await puller.request(want, expires=PULL_EXPIRES)
        if self._popper is not None:  # lifo: move the newest lane jobs to the run lane
            self._in_transit = min(self._in_transit, puller.outstanding)
            while self._room() - self._in_transit > 0 and self._popper.maybe_nonempty:
                self._in_transit += 1  # before the move: its delivery may come back at once
                if not await self._popper.pop_one():
                    self._in_transit -= 1

    async def _recreate_lost_consumers(self) -> bool:
        """Re-create consumers that pulls suggest are gone; True if any looked gone.

        One try each (the loop backs off and tries again): a consumer whose leader is being
        elected answers nothing for seconds, and the loop must stay free to stop meanwhile.
        """
        suspects = [(p, s) for p, s in zip(self._pullers, self._specs, strict=True) if p.suspect]
        for puller, spec in suspects:
            log.warning("consumer may be gone; making sure it exists", consumer=spec.durable)
            await self._ensure_consumers([spec], deadline=0)
            puller.reset()
        return bool(suspects)

    def _on_delivery(self, delivery: Delivery) -> None:
        self._trouble = 0
        if self._popper is not None and self._in_transit > 0:
            self._in_transit -= 1
        if self._stopping.is_set() or self.free <= 0 or not self._may_claim():
            self._spawn(delivery.nak())  # no room, paused, or the loop lags: hand it back
            return
        assert self._runtime is not None
        execution = Execution(self._runtime, delivery)
        if self._throttle is not None:
            self._throttle.started()
        self.running += 1
        task = asyncio.create_task(self._execute(execution))
        self._tasks[task] = execution

    async def _execute(self, execution: Execution) -> None:
        try:
            await execution.run()
        finally:
            self.running -= 1
            self._tasks.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self._wake.set()

    def _may_claim(self) -> bool:
        """Whether the queue is running and the event loop is not lagging."""
        lagging = self._lag is not None and self._lag.lagging
        return not lagging and not self.backend.control.state.paused

    def _on_state(self, state: QueueState) -> None:
        """The queue state was read (a change, or a re-read after a reconnect): follow a pause
        or resume on this worker's consumers; a state they already have sends nothing."""
        self._wake.set()
        if self._paused_on_server is None or self._stopping.is_set():
            return  # the consumers are being created with the state as it is then
        idle = self._pausing is None or self._pausing.done()
        if state.paused != self._paused_on_server and idle:
            self._pausing = asyncio.create_task(self._follow_pause())

    async def _follow_pause(self) -> None:
        """Pause or resume the consumers until they match the queue state (it may change
        meanwhile), trying again after a failure until it works or the worker stops: a
        consumer left paused on a running queue would deliver nothing."""
        failures = 0
        while (paused := self.backend.control.state.paused) != self._paused_on_server:
            if self._stopping.is_set():
                return
            try:
                await self.backend.control.set_consumers(paused, [s.durable for s in self._specs])
            except Exception as exc:
                failures += 1
                log.warning("could not (un)pause the consumers; trying again",
                            queue=self.config.name, error=repr(exc))  # fmt: skip
                await _wait(self._stopping, backoff(failures))
                continue
            self._paused_on_server = paused

    async def _on_command(self, msg: Msg) -> None:
        """A command from any process about one job, e.g. cancel it if it runs here."""
        command, job_id = msg.subject.rsplit(".", 2)[-2:]
        if command == "cancel":
            for execution in self._tasks.values():
                if execution.job_id == job_id:
                    execution.abort(CANCELLED)

    async def _on_bell(self, _msg: Msg) -> None:
        if self._popper is not None and not self._popper.maybe_nonempty:
            self._popper.maybe_nonempty = True
            self._wake.set()

    def _on_reconnect(self) -> None:
        for puller in self._pullers:
            puller.reset()  # requests may have died with the old connection
        if self._popper is not None:
            self._popper.maybe_nonempty = True
        self._wake.set()

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
        self._wake.set()
        # it may be waiting for an answer NATS does not give (none at all while disconnected)
        await finish(self._loop_task, grace=STOP_GRACE if self.backend.conn.is_connected else 0)
        for puller in self._pullers:  # no open pull may catch the jobs handed back below
            await puller.stop()
        if self._tasks:
            pending = await self._wait_for_jobs(timeout)
            if pending:
                log.warning("shutdown grace period over; handing jobs back", count=len(pending))
                for task in pending:
                    self._tasks[task].abort(SHUTDOWN)
                _, stuck = await asyncio.wait(pending, timeout=ABORT_WAIT)
                for task in stuck:  # sync handlers ignoring the signal: redelivered after ack_wait
                    task.cancel()
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
        await finish(self._pausing, grace=0)
        await self._parts.aclose()
        if self._background:
            await asyncio.wait(list(self._background), timeout=ABORT_WAIT)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` seconds have passed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
