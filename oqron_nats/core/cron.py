"""Cron expressions as nats-server's message schedules read them, with no I/O.

The server takes six fields, seconds first (``0 0 3 * * *``), and the predefined ``@yearly``,
``@monthly``, ``@weekly``, ``@daily``/``@midnight`` and ``@hourly``; the usual five fields
(``0 3 * * *``) are turned into six here (second 0). Each field is a comma list of ``*`` (or
``?``), ``n``, ``a-b``, each with an optional ``/step`` (``n/step`` means ``n-max/step``);
months and weekdays also by their first three letters; weekday 0 is Sunday. When both the
day-of-month and the day-of-week are restricted, a day matching either one fires (the server's
rule, from crontab(5)).

:func:`parse` checks an expression before anything is written (``InvalidOption``);
:meth:`Cron.previous` finds the tick before a time: a fired tick carries only the time of the
next one, and a job's id is made of its own tick's time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

from .errors import InvalidOption

PREDEFINED = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MONTHS = {m: i + 1 for i, m in enumerate(MONTH_NAMES)}
WEEKDAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
FIELDS = (
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 6, WEEKDAYS),
)
SEARCH_DAYS = 5 * 366 + 1
"""How far back a tick is looked for: the server refuses an expression with no tick in 5 years."""


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed cron expression: the values each field matches."""

    expression: str
    """As the server takes it: six fields, or a predefined ``@name``."""
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    either_day: bool
    """Both day fields restricted: a day matching either one fires."""

    def day_matches(self, day: date) -> bool:
        """Whether ``day`` is a day this expression fires on."""
        if day.month not in self.months:
            return False
        dom, dow = day.day in self.days, (day.isoweekday() % 7) in self.weekdays
        return (dom or dow) if self.either_day else (dom and dow)

    def previous(self, before: datetime, tz: tzinfo = UTC) -> datetime | None:
        """The latest tick strictly before ``before`` (aware), in UTC; None if none in 5 years.

        Wall times are read in ``tz``; a wall time that a daylight-saving change skips or
        repeats is taken at its first reading (the server may differ there, see the README).
        """
        local = before.astimezone(tz).replace(tzinfo=None)
        day = local.date()
        for _ in range(SEARCH_DAYS):
            if self.day_matches(day):
                found = self._last_on(day, local, before, tz)
                if found is not None:
                    return found
            day -= timedelta(days=1)
        return None

    def _last_on(self, day: date, local: datetime, before: datetime, tz: tzinfo) -> datetime | None:
        today = day == local.date()
        for hour in sorted(self.hours, reverse=True):
            if today and hour > local.hour:
                continue
            for minute in sorted(self.minutes, reverse=True):
                if today and (hour, minute) > (local.hour, local.minute):
                    continue
                for second in sorted(self.seconds, reverse=True):
                    wall = datetime(day.year, day.month, day.day, hour, minute, second)
                    at = wall.replace(tzinfo=tz).astimezone(UTC)
                    if at < before:
                        return at
        return None


def parse(expression: str) -> Cron:
    """The expression parsed (five fields get second 0); InvalidOption saying what is wrong."""
    if not isinstance(expression, str):
        raise InvalidOption(f"cron must be a string, not {type(expression).__name__}")
    text = " ".join(expression.split())
    fields = PREDEFINED.get(text.lower(), text).split()
    if len(fields) == 5:
        fields.insert(0, "0")
    if len(fields) != 6:
        raise InvalidOption(
            f"cron {expression!r} must have 5 fields (minute hour day month weekday), 6 "
            f"(second first) or be one of {', '.join(PREDEFINED)}"
        )
    sets, stars = [], []
    for text_field, bounds in zip(fields, FIELDS, strict=True):
        values, star = _field(text_field, bounds, expression)
        sets.append(values)
        stars.append(star)
    server = text.lower() if text.lower() in PREDEFINED else " ".join(fields)
    second, minute, hour, day, month, weekday = sets
    return Cron(
        server, second, minute, hour, day, month, weekday, either_day=not (stars[3] or stars[5])
    )


def _field(
    text: str, bounds: tuple[str, int, int, dict[str, int] | None], expression: str
) -> tuple[frozenset[int], bool]:
    what, low, high, names = bounds
    values: set[int] = set()
    star = False
    for part in text.split(","):
        try:
            found, part_star = _range(part, low, high, names)
        except ValueError as exc:
            raise InvalidOption(f"cron {expression!r}: {what} {part!r}: {exc}") from None
        values |= found
        star = star or part_star
    return frozenset(values), star


def _range(part: str, low: int, high: int, names: dict[str, int] | None) -> tuple[set[int], bool]:
    span, _, step_text = part.partition("/")
    if "/" in step_text:
        raise ValueError("more than one '/'")
    step = _number(step_text, None) if step_text else 1
    if step < 1:
        raise ValueError("the step must be at least 1")
    star = span in ("*", "?")
    if star:
        start, end = low, high
    else:
        first, dash, last = span.partition("-")
        start = _number(first, names)
        end = _number(last, names) if dash else (high if step_text else start)
    if start < low or end > high:
        raise ValueError(f"out of range {low}-{high}")
    if start > end:
        raise ValueError("the range starts after it ends")
    return set(range(start, end + 1, step)), star and step == 1


def _number(text: str, names: dict[str, int] | None) -> int:
    if names is not None and text.lower() in names:
        return names[text.lower()]
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{text!r} is not a number" + (" or a name" if names else ""))
    return int(text)
