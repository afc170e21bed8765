"""A tick of a repeating schedule becomes one job, in the worker that received it.

The server fires each tick as a copy of the schedule's body onto a lane, with
``Nats-Scheduler`` (the schedule's subject) and ``Nats-Schedule-Next`` (the next tick's time).
The worker that receives it creates the tick's record with a KV create under the id
``<name>-<tick time>`` (:func:`~..core.schedules.tick_job_id`), then runs it like any job:

* a redelivery of the tick, to this worker or any other, finds the id taken and runs (or skips)
  the job already made: one job per tick, whatever the number of workers;
* a tick fired twice by a server that restarted before it saved its schedule's progress carries
  the same next time, so the same id: still one job;
* after the whole cluster was down, the server fires the schedule once for all the ticks it
  missed, and goes on from there (see the README's "Repeating jobs").
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import msgspec

from .._nats import CasConflict, Delivery
from .._nats.names import (
    KEPT_SCHEDULE_NEXT_HEADER,
    KEPT_SCHEDULER_HEADER,
    SCHEDULE_NEXT_HEADER,
    SCHEDULER_HEADER,
    Names,
)
from ..core.job import Job, JobState, moved
from ..core.schedules import ScheduleSpec, seal_id, tick_job_id, tick_time
from ..observe.log import logger
from ..storage.rejects import BAD_TICK
from .shared import Runtime

log = logger(__name__)


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
    job = _job(rt, spec, tick_job_id(spec.name, tick), delivery.subject)
    with contextlib.suppress(CasConflict):  # another delivery of this tick made it: run that
        await rt.backend.store.create(job)
        log.info("a repeating schedule ticked", schedule=spec.name, job_id=job.id,
                 tick=tick.isoformat())  # fmt: skip
    return job.id


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
