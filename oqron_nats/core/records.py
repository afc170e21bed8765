"""A queue's jobs to and from their stored form, with no I/O: a new job's record built from
add()'s data and per-job options (checked, encoded, sealed), and a stored record opened and
decoded for the caller.

Errors in what add() was given are ``InvalidOption`` (``PayloadError`` for the payload).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec

from .checks import check_priority, check_retention
from .codec import PayloadCodec
from .config import QueueConfig
from .correlation import current_correlation_id
from .encryption import Sealer, unreadable
from .errors import ConfigError, InvalidOption
from .groups import seconds
from .job import AddOptions, AttemptError, Job, JobState, Retention, Transition, with_data
from .naming import check_name
from .randomness import random_hex

T = TypeVar("T")

MAX_CORRELATION_ID = 128
MAX_DELAY = 100 * 365.25 * 86400
"""The longest delay add() takes, in seconds: a run time far inside what a schedule can name."""


def new_job_id() -> str:
    """A unique, time-ordered job id: 12 hex digits of milliseconds, 20 of randomness."""
    return f"{int(time.time() * 1000):012x}{random_hex(10)}"


def parse_options(options: Mapping[str, Any] | None) -> AddOptions:
    """Typed add() options from a mapping (unknown keys and wrong types are InvalidOption)."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    try:
        return msgspec.convert(given, AddOptions)
    except msgspec.ValidationError as exc:
        raise InvalidOption(f"invalid add option: {exc}") from None


def parse_status(status: JobState | str | None) -> JobState | None:
    """A JobState from a state or its value; None means every state."""
    if status is None:
        return None
    try:
        return JobState(status)
    except ValueError:
        states = ", ".join(s.value for s in JobState)
        raise InvalidOption(f"unknown status {status!r}; expected one of: {states}") from None


def job_ids(ids: Sequence[str] | None) -> list[str] | None:
    """add()'s ``depends_on`` as a list (InvalidOption for a single string)."""
    if isinstance(ids, str):
        raise InvalidOption("depends_on must be a list of job ids, not a string")
    return None if ids is None else list(ids)


def new_job(
    config: QueueConfig, codec: PayloadCodec[T], sealer: Sealer, data: object, options: AddOptions
) -> tuple[T, Job[msgspec.Raw]]:
    """The payload as stored (decoded back) and the new job's record: checked, encoded within
    the size limit, sealed with the queue's codec, with its options or the queue's defaults."""
    job_id = check_name(options.job_id, "job id") if options.job_id is not None else new_job_id()
    value, raw = codec.encode(data)  # the size limit applies to this plaintext
    raw = sealer.seal(job_id, "data", raw)
    now = datetime.now(UTC)
    delay = 0.0 if options.delay is None else _delay_seconds(options.delay)
    priority = (
        config.priority
        if options.priority is None
        else check_priority(options.priority, InvalidOption)
    )
    if options.attempts is not None and options.attempts < 1:
        raise InvalidOption(f"attempts must be at least 1, not {options.attempts}")
    parents = [check_name(p, "parent job id") for p in dict.fromkeys(options.depends_on or [])]
    state = (
        JobState.WAITING_CHILDREN
        if parents
        else (JobState.DELAYED if delay > 0 else JobState.WAITING)
    )
    job: Job[msgspec.Raw] = Job(
        id=job_id,
        queue=config.name,
        state=state,
        data=msgspec.Raw(raw),
        created_at=now,
        run_at=now + timedelta(seconds=delay) if delay > 0 else None,
        correlation_id=_correlation_id(options.correlation_id),
        max_attempts=options.attempts or config.stamped_attempts,
        priority=priority,
        tags=list(config.tags),
        remove_on_complete=_retention(options.remove_on_complete, config.remove_on_complete),
        remove_on_fail=_retention(options.remove_on_fail, config.remove_on_fail),
        depends_on=parents,
        parent_failure_policy=options.parent_failure_policy or "block",
        timeline=[Transition(at=now, state=state, reason="added")],
    )
    return value, job


def opened(job: Job[msgspec.Raw], codec: PayloadCodec[T], sealer: Sealer) -> Job[T]:
    """The job with its payload decoded (and its result and error decrypted); a payload
    that does not match the payload type (it failed for that) or cannot be decrypted keeps
    its raw JSON value, with ``data_error`` saying why (a result: ``result_error``)."""
    changes: dict[str, Any] = {}
    raw: bytes | msgspec.Raw = job.data
    try:
        raw = sealer.open(job.id, "data", job.data)
        data = codec.decode(raw)
    except Exception as exc:  # CodecError, PayloadError, or whatever a codec raised
        changes["data_error"] = unreadable(exc)
        try:
            data = msgspec.json.decode(raw)
        except msgspec.DecodeError:  # a codec that opened it into something else
            data = msgspec.json.decode(job.data)
    if job.result is not None:
        try:
            changes["result"] = sealer.open_value(job.id, "result", job.result)
        except Exception as exc:
            changes["result_error"] = unreadable(exc)
    if job.error is not None and job.error.sealed is not msgspec.UNSET:
        with contextlib.suppress(Exception):  # unopened, it reads "(encrypted)"
            changes["error"] = sealer.open_failure(job.id, job.error)
    if any(e.error.sealed is not msgspec.UNSET for e in job.errors):
        changes["errors"] = [_opened_attempt(sealer, job.id, e) for e in job.errors]
    return with_data(job, data, **changes)


def _opened_attempt(sealer: Sealer, job_id: str, entry: AttemptError) -> AttemptError:
    """An attempt's error decrypted; unopened, it reads "(encrypted)"."""
    if entry.error.sealed is msgspec.UNSET:
        return entry
    try:
        return msgspec.structs.replace(entry, error=sealer.open_failure(job_id, entry.error))
    except Exception:
        return entry


def _retention(given: Retention | None, queue_wide: Retention | None) -> Retention | None:
    """A job's retention: its own option, else the adding queue's setting (None: the worker's)."""
    if given is None:
        return queue_wide
    return check_retention(given, "remove_on_complete/remove_on_fail", InvalidOption)


def _delay_seconds(value: float | timedelta) -> float:
    try:
        delay = seconds(value, "delay")
    except ConfigError as exc:
        raise InvalidOption(str(exc)) from None
    if delay > MAX_DELAY:
        raise InvalidOption(
            f"delay must be at most {MAX_DELAY:.0f} seconds (100 years), not {value!r}"
        )
    return delay


def _correlation_id(given: str | None) -> str:
    value = given if given is not None else current_correlation_id.get() or random_hex(16)
    if not (
        0 < len(value) <= MAX_CORRELATION_ID
        and value.isascii()
        and value.isprintable()
        and " " not in value
    ):
        raise InvalidOption(
            f"correlation_id must be 1-{MAX_CORRELATION_ID} printable ASCII characters, no spaces"
        )
    return value
