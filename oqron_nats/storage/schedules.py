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
"""

from __future__ import annotations

import msgspec

from .._nats import JetStreamError, Nats, StoredMsg
from .._nats.names import (
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


class Schedules:
    """Defines, lists and removes one queue's repeating schedules."""

    def __init__(self, conn: Nats, names: Names) -> None:
        self.conn = conn
        self.names = names

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


def _spec(stored: StoredMsg) -> ScheduleSpec | None:
    if SCHEDULE_HEADER not in stored.headers:  # removed: the empty message left in its place
        return None
    try:
        return msgspec.json.decode(stored.data, type=ScheduleSpec)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("a repeating schedule does not decode; left out", subject=stored.subject,
                    error=str(exc))  # fmt: skip
        return None
