"""A queue's repeating schedules, kept by the server itself as message schedules.

Each schedule is one message on ``oqron.<ns>.s.<q>.=<name>`` in the queue's work stream, with
``Nats-Schedule`` (``@every 5s``, or six cron fields), ``Nats-Schedule-Target`` (a subject of
the lane of its jobs' priority) and, for a cron in a time zone, ``Nats-Schedule-Time-Zone``.
Its body is the :class:`~..core.schedules.ScheduleSpec`. The server fires a copy of the body
onto the lane at every tick, with no process of ours alive; a worker makes the tick's job
(:mod:`..runtime.schedules`).

One subject per name: defining a name again replaces its schedule (the server keeps the last
message of a schedule subject). Removing one replaces it with an empty message that is no
schedule and expires after a second: a publisher may not purge the work stream.

The last tick each schedule made is kept under ``<q>.=<name>`` in the jobs bucket (a key no
job has): a worker that finds it older than the schedule allows after a crash of the whole
cluster makes the one catch-up tick (:mod:`..runtime.schedules`).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from .._nats import Bucket, CasConflict, JetStreamError, Nats, StoredMsg
from .._nats.names import (
    KEPT_SCHEDULE_NEXT_HEADER,
    KEPT_SCHEDULER_HEADER,
    MSG_ID_HEADER,
    ROLLUP_HEADER,
    SCHEDULE_HEADER,
    SCHEDULE_TARGET_HEADER,
    SCHEDULE_TIME_ZONE_HEADER,
    TTL_HEADER,
    Names,
)
from ..core.errors import InvalidOption
from ..core.schedules import ScheduleSpec
from ..observe.log import logger

log = logger(__name__)

REFUSED = frozenset({10188, 10189, 10190, 10191, 10192, 10223})
"""The server's error codes for a schedule it refuses (pattern, target, time zone, disabled)."""
MARK_TRIES = 8
"""Compare-and-set tries to move a last tick forward (each loser reads the winner's tick)."""


class LastTick(msgspec.Struct, frozen=True):
    """The last tick a schedule made (its own time, not its slot)."""

    tick: datetime


class Schedules:
    """Defines, lists and removes one queue's repeating schedules."""

    def __init__(self, conn: Nats, names: Names) -> None:
        self.conn = conn
        self.names = names
        self.marks = Bucket(conn, names.jobs_bucket)

    async def define(self, spec: ScheduleSpec, priority: int) -> None:
        """Store the schedule, replacing one of the same name (InvalidOption if the server
        refuses it, e.g. a pattern or time zone it does not take)."""
        headers = {
            SCHEDULE_HEADER: spec.pattern,
            SCHEDULE_TARGET_HEADER: self.names.tick(priority, spec.name),
        }
        if spec.tz is not None:
            headers[SCHEDULE_TIME_ZONE_HEADER] = spec.tz
        try:
            await self.conn.publish(
                self.names.repeat(spec.name), msgspec.json.encode(spec), headers
            )
        except JetStreamError as exc:
            if exc.err_code in REFUSED:
                raise InvalidOption(
                    f"the server refused schedule {spec.name!r} ({spec.pattern}"
                    f"{', tz ' + spec.tz if spec.tz else ''}): {exc}; repeating schedules need "
                    "nats-server 2.14 or later"
                ) from None
            raise

    async def remove(self, name: str) -> bool:
        """Stop the schedule; False if there was none of that name."""
        if await self.get(name) is None:
            return False
        # an empty message replaces the schedule (the server keeps one per subject) and goes
        await self.conn.publish(
            self.names.repeat(name), b"", {ROLLUP_HEADER: "sub", TTL_HEADER: "1s"}
        )
        return True

    async def get(self, name: str) -> ScheduleSpec | None:
        """The schedule of that name, or None."""
        stored = await self.conn.direct_get_subject(self.names.stream, self.names.repeat(name))
        return None if stored is None else _spec(stored)

    async def list(self) -> list[ScheduleSpec]:
        """Every schedule of the queue, by name."""
        subjects = await self.conn.subjects(self.names.stream, self.names.schedules)
        specs = []
        for subject in sorted(subjects):
            name = self.names.repeat_name(subject)
            if name is not None and (spec := await self.get(name)) is not None:
                specs.append(spec)
        return specs

    async def last_tick(self, name: str) -> datetime | None:
        """The last tick the schedule made, or None (never, or not known)."""
        entry = await self.marks.get(self.names.last_tick(name))
        return None if entry is None else _last(entry.value)

    async def note_tick(self, name: str, tick: datetime) -> None:
        """Remember ``tick`` as the schedule's last one unless a later one is noted already."""
        key, value = self.names.last_tick(name), msgspec.json.encode(LastTick(tick=tick))
        for _ in range(MARK_TRIES):
            entry = await self.marks.get(key, fresh=True)
            known = None if entry is None else _last(entry.value)
            if known is not None and known >= tick:
                return
            try:
                if entry is None:
                    await self.marks.create(key, value)
                else:
                    await self.marks.update(key, value, last=entry.revision)
                return
            except CasConflict:
                continue  # another worker noted a tick meanwhile: compare with it
        log.warning("the last tick of a schedule could not be noted", schedule=name)

    async def targeted(self) -> tuple[tuple[ScheduleSpec, str], ...]:
        """Every schedule of the queue with the subject its ticks land on."""
        found: list[tuple[ScheduleSpec, str]] = []
        for spec in await self.list():
            stored = await self.conn.direct_get_subject(
                self.names.stream, self.names.repeat(spec.name)
            )
            target = None if stored is None else stored.headers.get(SCHEDULE_TARGET_HEADER)
            if target is not None and self.names.is_repeating(target):
                found.append((spec, target))
        return tuple(found)

    async def pending_tick(self, target: str) -> StoredMsg | None:
        """The newest tick on a schedule's lane subject (fired, its job not finished)."""
        return await self.conn.direct_get_subject(self.names.stream, target)

    async def fire(self, spec: ScheduleSpec, target: str, next_tick: datetime, job_id: str) -> None:
        """Put a tick on the schedule's lane as the server fires one (its body, its subject and
        the next tick's time, under our own header names, which the server does not act on)."""
        headers = {
            KEPT_SCHEDULER_HEADER: self.names.repeat(spec.name),
            KEPT_SCHEDULE_NEXT_HEADER: next_tick.isoformat(),
            MSG_ID_HEADER: f"catch-up-{job_id}",  # two workers at once: stored once
        }
        await self.conn.publish(target, msgspec.json.encode(spec), headers)


def _last(value: bytes) -> datetime | None:
    try:
        return msgspec.json.decode(value, type=LastTick).tick
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # not ours to judge: no catch-up is made from it


def _spec(stored: StoredMsg) -> ScheduleSpec | None:
    if SCHEDULE_HEADER not in stored.headers:  # removed: the empty message left in its place
        return None
    try:
        return msgspec.json.decode(stored.data, type=ScheduleSpec)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("a repeating schedule does not decode; left out", subject=stored.subject,
                    error=str(exc))  # fmt: skip
        return None
