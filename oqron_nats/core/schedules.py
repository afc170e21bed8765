"""A repeating job's definition, with no I/O: checked, as stored, and what one tick becomes.

A schedule is stored as the body of a server message schedule, and every tick the server fires
carries that body unchanged, plus the time of the *next* tick. A tick's job id is the
schedule's name and its tick's slot (``nightly-20250101T030000Z``): the tick is the next one
less the interval (``every``) or the cron's last tick before the next one, and its slot is
that on a grid that no server restart moves (see slot()).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from .checks import check_priority, check_retention
from .codec import PayloadCodec
from .config import QueueConfig
from .cron import Cron, parse
from .encryption import Sealer
from .errors import InvalidName, InvalidOption
from .job import Retention
from .naming import check_name

T = TypeVar("T")

MAX_NAME = 47
"""A schedule's name leaves room for ``-YYYYMMDDTHHMMSSZ`` in a job id (64 characters)."""
TICK_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_EVERY = 100 * 365.25 * 86400
MAX_SPEC_BYTES = 15 * 1024
"""A stored schedule (payload included) fits a message of the work stream (16 KiB, headers too)."""


class ScheduleSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A schedule as stored (the body of its server schedule, copied onto every tick)."""

    name: str
    queue: str
    data: msgspec.Raw
    """The payload's JSON, sealed with the queue's codec under the schedule (see seal_id)."""
    defined_at: datetime
    cron: str | None = None
    """Six fields (second first), or a predefined ``@name``, as the server takes it."""
    every: int | None = None
    """The interval in whole seconds."""
    tz: str | None = None
    priority: int | None = None
    attempts: int | None = None
    remove_on_complete: Retention | None = None
    remove_on_fail: Retention | None = None
    v: int = 1

    @property
    def pattern(self) -> str:
        """The ``Nats-Schedule`` value."""
        return f"@every {self.every}s" if self.every is not None else str(self.cron)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A repeating schedule of a queue, as ``q.schedules()`` lists it."""

    name: str
    queue: str
    data: Any
    """The payload each tick's job gets (decoded; the stored JSON if it does not decode)."""
    pattern: str
    """What the server runs: ``@every 5s``, six cron fields (second first) or ``@daily``..."""
    cron: str | None
    every: timedelta | None
    tz: str | None
    priority: int | None
    attempts: int | None
    defined_at: datetime


def new_spec(
    config: QueueConfig,
    codec: PayloadCodec[T],
    sealer: Sealer,
    name: str,
    data: object,
    *,
    cron: str | None,
    every: timedelta | float | None,
    tz: str | None,
    priority: int | None,
    attempts: int | None,
    remove_on_complete: Retention | None,
    remove_on_fail: Retention | None,
) -> ScheduleSpec:
    """A schedule checked and built (no I/O): InvalidOption for a bad option or cron,
    PayloadError for a payload the queue's type refuses."""
    check_schedule_name(name)
    cron_text, every_s, tz = check_timing(cron, every, tz)
    check_job_options(priority, attempts, (remove_on_complete, remove_on_fail))
    _value, raw = codec.encode(data)
    spec = ScheduleSpec(
        name=name,
        queue=config.name,
        data=msgspec.Raw(sealer.seal(seal_id(name), "data", raw)),
        defined_at=datetime.now(UTC),
        cron=cron_text,
        every=every_s,
        tz=tz,
        priority=priority,
        attempts=attempts,
        remove_on_complete=remove_on_complete,
        remove_on_fail=remove_on_fail,
    )
    size = len(msgspec.json.encode(spec))
    if size > MAX_SPEC_BYTES:
        raise InvalidOption(
            f"schedule {name!r} is {size} bytes with its payload; at most {MAX_SPEC_BYTES} fit "
            "(pass a reference to larger data)"
        )
    return spec


def described(spec: ScheduleSpec, codec: PayloadCodec[T], sealer: Sealer) -> Schedule:
    """The stored schedule for its reader, its payload decoded."""
    data: Any
    try:
        data = codec.decode(bytes(sealer.open(seal_id(spec.name), "data", spec.data)))
    except Exception:  # a payload this reader cannot open or decode: its stored JSON
        data = msgspec.json.decode(spec.data)
    return Schedule(
        name=spec.name,
        queue=spec.queue,
        data=data,
        pattern=spec.pattern,
        cron=spec.cron,
        every=None if spec.every is None else timedelta(seconds=spec.every),
        tz=spec.tz,
        priority=spec.priority,
        attempts=spec.attempts,
        defined_at=spec.defined_at,
    )


@functools.lru_cache(maxsize=256)
def cron_of(expression: str) -> Cron:
    """The parsed cron of a stored schedule (cached: every tick of it asks)."""
    return parse(expression)


def check_schedule_name(name: str) -> str:
    """A valid schedule name (a job-id-safe token of at most MAX_NAME characters)."""
    try:
        check_name(name, "schedule name")
    except InvalidName as exc:
        raise InvalidOption(str(exc)) from None
    if len(name) > MAX_NAME:
        raise InvalidOption(f"schedule name {name!r} is longer than {MAX_NAME} characters")
    return name


def check_timing(
    cron: str | None, every: timedelta | float | None, tz: str | None
) -> tuple[str | None, int | None, str | None]:
    """(cron as the server takes it, every in seconds, tz): exactly one of cron and every."""
    if (cron is None) == (every is None):
        raise InvalidOption("a schedule takes exactly one of cron=... and every=...")
    if every is not None:
        if tz is not None:
            raise InvalidOption("tz applies to cron schedules only, not to every=")
        return None, _every_seconds(every), None
    assert cron is not None
    expression = parse(cron).expression
    if tz is not None:
        zone(tz)
    return expression, None, tz


def zone(tz: str | None) -> ZoneInfo:
    """The time zone (UTC when None); InvalidOption for a name this host does not know."""
    if tz is None:
        return ZoneInfo("UTC")
    if not isinstance(tz, str) or not tz or tz == "Local" or tz.startswith(("+", "-")):
        raise InvalidOption(f"tz {tz!r} must be an IANA time zone name such as 'Europe/Berlin'")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidOption(
            f"unknown time zone {tz!r} (an IANA name such as 'Europe/Berlin')"
        ) from None


def check_job_options(
    priority: int | None, attempts: int | None, retention: tuple[Retention | None, ...]
) -> None:
    """The per-job options of a schedule's jobs, checked as add() checks them."""
    if priority is not None:
        check_priority(priority, InvalidOption)
    if attempts is not None and (not isinstance(attempts, int) or attempts < 1):
        raise InvalidOption(f"attempts must be at least 1, not {attempts!r}")
    for given in retention:
        if given is not None:
            check_retention(given, "remove_on_complete/remove_on_fail", InvalidOption)


def seal_id(name: str) -> str:
    """The id a schedule's payload is sealed under (never a job id: ``=`` is not allowed)."""
    return f"={name}"


def tick_time(spec: ScheduleSpec, next_tick: datetime) -> datetime:
    """The time of the tick whose fired message says the next one is at ``next_tick``."""
    if spec.every is not None:
        return next_tick - timedelta(seconds=spec.every)
    found = cron_of(str(spec.cron)).previous(next_tick, zone(spec.tz))
    return found if found is not None else next_tick


def slot(spec: ScheduleSpec, tick: datetime) -> datetime:
    """The tick's place on the schedule's fixed grid, which names its job: a cron tick is its
    own; an ``every`` tick is floored to a whole multiple of the interval since the Unix epoch
    (the server restarts its ``every`` clock from where it is after a restart; the grid does not
    move, so a tick keeps one id whoever makes it)."""
    if spec.every is None:
        return tick
    whole = int((tick.astimezone(UTC) + timedelta(microseconds=500_000)).timestamp())
    return datetime.fromtimestamp(whole - whole % spec.every, UTC)


def tick_id(spec: ScheduleSpec, tick: datetime) -> str:
    """The id of the job of the schedule's tick at ``tick`` (the tick's slot, see slot())."""
    return tick_job_id(spec.name, slot(spec, tick))


def missed(spec: ScheduleSpec, known: datetime, now: datetime, slack: float) -> bool:
    """Whether a tick due after ``known`` (the last tick made or fired) should have fired
    more than ``slack`` seconds before ``now`` (the server was down then)."""
    due_by = now - timedelta(seconds=slack)
    if spec.every is not None:
        return known + timedelta(seconds=spec.every) < due_by
    latest = cron_of(str(spec.cron)).previous(due_by, zone(spec.tz))
    return latest is not None and latest > known


def catch_up(spec: ScheduleSpec, now: datetime) -> tuple[datetime, datetime] | None:
    """(the tick, the next-tick time that names it in a fired message) that stands for every
    tick missed before ``now``: the latest tick due by ``now``; None if the cron has none."""
    if spec.every is not None:
        tick = now.astimezone(UTC).replace(microsecond=0)
        return tick, tick + timedelta(seconds=spec.every)
    latest = cron_of(str(spec.cron)).previous(now, zone(spec.tz))
    return None if latest is None else (latest, latest + timedelta(seconds=1))


def tick_job_id(name: str, tick: datetime) -> str:
    """The id of the job of ``name``'s tick at ``tick``."""
    whole = tick.astimezone(UTC) + timedelta(microseconds=500_000)  # the nearest second
    return f"{name}-{whole.strftime(TICK_FORMAT)}"


def _every_seconds(every: Any) -> int:
    if isinstance(every, timedelta):
        value = every.total_seconds()
    elif isinstance(every, int | float) and not isinstance(every, bool):
        value = float(every)
    else:
        raise InvalidOption(f"every must be a timedelta or seconds, not {type(every).__name__}")
    if value < 1 or value != int(value) or value > MAX_EVERY:
        raise InvalidOption(
            f"every must be whole seconds, at least 1 (the server's minimum), not {value:g}"
        )
    return int(value)
