"""A tick of a repeating schedule becomes one job, in the worker that received it.

The server fires each tick as a copy of the schedule's body onto a lane, with
``Nats-Scheduler`` (the schedule's subject) and ``Nats-Schedule-Next`` (the next tick's time).
The worker that receives it creates the tick's record with a KV create under the id
``<name>-<slot>`` (:func:`~..core.schedules.tick_id`), notes the tick as the schedule's last
one, then runs it like any job:

* a redelivery of the tick, to this worker or any other, finds the id taken and runs (or skips)
  the job already made: one job per tick, whatever the number of workers;
* a tick fired twice by a server that restarted before it saved its schedule's progress carries
  the same next time, so the same id: still one job;
* a tick fired again after its job was made and removed (its slot is the last one noted, its
  record is gone) is dropped.

Missed ticks (the whole cluster down) become exactly one catch-up job, whichever way the
server stopped. After a clean stop the server fires once at once (its saved progress is
late); after a crash it waits for the next tick. So every worker, at its start and after
every reconnect, compares each schedule's last tick (noted, or still on its lane) with the
time: if a tick is overdue, it fires one catch-up tick for the latest tick due now. Both
name the same slot, so the server's catch-up and ours are one job, and any number of workers
make one (see the README's "Repeating jobs").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec

from .._nats import CasConflict, Delivery, StoredMsg
from .._nats.names import (
    KEPT_SCHEDULE_NEXT_HEADER,
    KEPT_SCHEDULER_HEADER,
    SCHEDULE_NEXT_HEADER,
    SCHEDULER_HEADER,
    Names,
)
from ..core.job import Job, JobState, moved
from ..core.schedules import ScheduleSpec, catch_up, missed, seal_id, slot, tick_id, tick_time
from ..observe.log import logger
from ..storage.rejects import BAD_TICK
from ..storage.schedules import Schedules
from .shared import Runtime

log = logger(__name__)

LATE = 3.0
"""Seconds a tick may be late (the server's timer, a worker's read) before it counts as missed."""
CATCH_UP_DEADLINE = 60.0
"""How long a worker keeps trying to look for missed ticks after a start or a reconnect (the
server may still be recovering its streams)."""


def _fired(delivery: Delivery) -> tuple[str, str] | None:
    """(the schedule's subject, the next tick's time) of a fired message (or of a tick a lifo
    worker moved to the run lane), else None."""
    headers = delivery.raw_headers or {}
    for scheduler, next_tick in (
        (SCHEDULER_HEADER, SCHEDULE_NEXT_HEADER),
        (KEPT_SCHEDULER_HEADER, KEPT_SCHEDULE_NEXT_HEADER),
    ):
        if scheduler in headers:
            return headers[scheduler], headers.get(next_tick, "purge")
    return None


def is_tick(delivery: Delivery, names: Names) -> bool:
    """Whether the message was fired by one of this queue's repeating schedules."""
    fired = _fired(delivery)
    return fired is not None and names.repeat_name(fired[0]) is not None and fired[1] != "purge"


async def materialize(rt: Runtime, delivery: Delivery) -> str | None:
    """The id of the tick's job, created if no delivery of this tick made it yet; None if the
    message is no valid tick (it is rejected, and its schedule deleted)."""
    names = rt.backend.names
    scheduler, next_text = _fired(delivery) or ("", "")
    name = names.repeat_name(scheduler)
    try:
        spec = msgspec.json.decode(delivery.body, type=ScheduleSpec)
        next_tick = datetime.fromisoformat(next_text)
        if spec.name != name or spec.queue != names.queue:
            raise ValueError(f"the body is schedule {spec.queue}/{spec.name}")
        if next_tick.tzinfo is None:
            raise ValueError("the next tick's time has no time zone")
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        log.error("a tick of a repeating schedule is not valid", schedule=name, error=str(exc))
        await rt.backend.rejects.reject(delivery, BAD_TICK)
        return None
    tick = tick_time(spec, next_tick)
    job_id = tick_id(spec, tick)
    schedules = rt.backend.schedules
    last = await schedules.last_tick(spec.name)
    made = last is not None and slot(spec, last) == slot(spec, tick)
    if made and await rt.backend.store.get(job_id) is None:  # made, run, removed: fired again
        log.info("a tick whose job was made already is dropped", schedule=spec.name,
                 job_id=job_id)  # fmt: skip
        await delivery.ack()
        return None
    job = _job(rt, spec, job_id, delivery.subject)
    with contextlib.suppress(CasConflict):  # another delivery of this tick made it: run that
        await rt.backend.store.create(job)
        log.info("a repeating schedule ticked", schedule=spec.name, job_id=job.id,
                 tick=tick.isoformat())  # fmt: skip
    await schedules.note_tick(spec.name, tick)
    return job.id


def watch_missed_ticks(rt: Runtime) -> Callable[[], Awaitable[None]]:
    """Look for missed ticks now and after every reconnect; returns the stop call."""
    tasks: set[asyncio.Task[None]] = set()

    def look() -> None:
        task = asyncio.get_running_loop().create_task(
            _look_until_answered(rt), name=f"oqron-ticks-{rt.config.name}"
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    look()
    forget = rt.backend.on_reconnect(look)

    async def stop() -> None:
        forget()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return stop


async def _look_until_answered(rt: Runtime) -> None:
    deadline = time.monotonic() + CATCH_UP_DEADLINE
    while True:
        try:
            await catch_up_missed(rt.backend.schedules)
            return
        except Exception as exc:  # told in the log; the next reconnect looks again
            if time.monotonic() >= deadline:
                log.warning("missed ticks could not be looked for", queue=rt.config.name,
                            error=str(exc))  # fmt: skip
                return
            await asyncio.sleep(1.0)


async def catch_up_missed(schedules: Schedules) -> list[str]:
    """Fire one catch-up tick for each schedule of the queue whose ticks were missed (the
    server was down); returns the catch-up jobs' ids."""
    fired = []
    for spec, target in await schedules.targeted():
        pending = _tick_of(spec, await schedules.pending_tick(target))  # before the last tick:
        last = await schedules.last_tick(spec.name)  # a tick made meanwhile is in one of them
        # no tick is missed before the schedule was defined (a name defined again keeps the
        # last tick of its old definition)
        known = max(t for t in (pending, last, spec.defined_at) if t is not None)
        now = datetime.now(UTC)
        if not missed(spec, known, now, LATE):
            continue
        found = catch_up(spec, now)
        if found is None:
            continue
        tick, next_tick = found
        job_id = tick_id(spec, tick)
        await schedules.fire(spec, target, next_tick, job_id)
        log.warning("ticks of a repeating schedule were missed; one catch-up tick fired",
                    schedule=spec.name, last_tick=known.isoformat(), job_id=job_id)  # fmt: skip
        fired.append(job_id)
    return fired


def _tick_of(spec: ScheduleSpec, stored: StoredMsg | None) -> datetime | None:
    """The tick of a fired message read from its lane, or None."""
    if stored is None:
        return None
    for header in (SCHEDULE_NEXT_HEADER, KEPT_SCHEDULE_NEXT_HEADER):
        if header in stored.headers:
            try:
                next_tick = datetime.fromisoformat(stored.headers[header])
            except ValueError:
                return None
            return tick_time(spec, next_tick) if next_tick.tzinfo is not None else None
    return None


def _job(rt: Runtime, spec: ScheduleSpec, job_id: str, subject: str) -> Job[msgspec.Raw]:
    """The tick's record: the schedule's payload (sealed again under the job's id)."""
    data: bytes | msgspec.Raw = spec.data
    try:
        plain = bytes(rt.sealer.open(seal_id(spec.name), "data", data))
        data = rt.sealer.seal(job_id, "data", plain)
    except Exception as exc:  # the run fails it, saying why (the payload cannot be opened)
        log.warning("a tick's payload could not be sealed for its job", schedule=spec.name,
                    error=type(exc).__name__)  # fmt: skip
    lane = subject.rsplit(".", 2)[-2]
    job: Job[msgspec.Raw] = Job(
        id=job_id,
        queue=spec.queue,
        state=JobState.WAITING,
        data=msgspec.Raw(bytes(data)),
        created_at=datetime.now(UTC),
        correlation_id=job_id,
        max_attempts=spec.attempts,
        priority=int(lane[1:]) if lane[1:].isdigit() else rt.config.priority,
        tags=list(rt.config.tags),
        remove_on_complete=spec.remove_on_complete,
        remove_on_fail=spec.remove_on_fail,
        triggered_by=f"schedule:{spec.name}",
    )
    return moved(job, JobState.WAITING, f"tick of schedule {spec.name}")
