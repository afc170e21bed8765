"""How the results of the ``oqron`` admin commands read for people: tables, one job's listing,
and a sentence for each action (``--json`` prints the results themselves; see :mod:`.cli_admin`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from ..core.job import Job
from ..storage.rejects import RejectedSample
from . import admin


def text(args: argparse.Namespace, result: Any) -> str:
    """The human-readable form of a command's result."""
    key = f"{args.command} {getattr(args, 'action', '')}".strip()
    return _PLAIN[key](result)


def queues_table(summaries: list[admin.QueueSummary]) -> str:
    header = ("QUEUE", "WAITING", "ACTIVE", "DELAYED", "COMPLETED", "FAILED", "PAUSED", "OLDEST",
              "WORKERS", "REJECTED")  # fmt: skip
    rows = [
        (s.name, s.waiting, s.active, s.delayed, s.completed, s.failed,
         f"yes ({s.paused_jobs} held)" if s.paused else "no",
         "-" if s.oldest_waiting_seconds is None else f"{s.oldest_waiting_seconds:.1f}s",
         s.workers, s.rejected)
        for s in summaries
    ]  # fmt: skip
    return _table(header, rows) if rows else "no queues in this namespace"


def _jobs_table(jobs: list[Any]) -> str:
    header = ("ID", "STATE", "ATTEMPT", "PROGRESS", "CREATED", "CORRELATION ID")
    rows = [
        (j.id, j.state, j.attempt, _progress(j)[:30] or "-", f"{j.created_at:%Y-%m-%d %H:%M:%S}",
         j.correlation_id)
        if isinstance(j, Job)
        else (j.id, "CORRUPT", "-", "-", "-", f"{j.size} bytes: {j.error}"[:80])
        for j in jobs
    ]  # fmt: skip
    return _table(header, rows) if rows else "no jobs"


def _dlq_table(letters: list[admin.DeadLetter]) -> str:
    header = ("ID", "ATTEMPTS", "FAILED AT", "ERROR")
    rows = [(d.id, d.attempts, f"{d.failed_at:%Y-%m-%d %H:%M:%S}" if d.failed_at else "-",
             f"{d.error.type}: {d.error.message}"[:80] if d.error else "-")
            for d in letters]  # fmt: skip
    return _table(header, rows) if rows else "no dead letters"


def _rejected_table(samples: list[RejectedSample]) -> str:
    header = ("REASON", "AT", "SUBJECT", "SIZE", "BODY")
    rows = [(s.reason, f"{s.at:%Y-%m-%d %H:%M:%S}", s.subject, s.size, repr(s.body[:40]))
            for s in samples]  # fmt: skip
    return _table(header, rows) if rows else "no rejected messages"


def _job_listing(job: Job[Any]) -> str:
    """One job for people: the important fields, the error and the timeline, aligned."""
    rows: list[tuple[str, object]] = [
        ("job", job.id),
        ("queue", job.queue),
        ("state", job.state),
        ("attempt", _attempts(job)),
        ("priority", job.priority),
        ("progress", _progress(job)),
        ("created", _when(job.created_at)),
        ("run at", job.run_at and _when(job.run_at)),
        ("started", job.started_at and _when(job.started_at)),
        ("finished", job.finished_at and _when(job.finished_at)),
        ("correlation id", job.correlation_id),
        ("tags", ", ".join(job.tags)),
        ("depends on", ", ".join(job.depends_on)),
        ("worker", job.worker),
        ("data", _json_text(job.data)),
        ("data error", job.data_error),
        ("result", None if job.result is None else _json_text(job.result)),
        ("result error", job.result_error),
    ]  # fmt: skip
    if job.error is not None:
        rows.append(("error", f"{job.error.type}: {job.error.message}"))
        rows += [("", line) for line in job.error.traceback.rstrip().splitlines()]
    for n, failed in enumerate(job.errors):  # each attempt's, shortened (the last is above)
        first_line = failed.error.message.splitlines()[0] if failed.error.message else ""
        said = f"{failed.attempt}  {_when(failed.at)}  {failed.error.type}: {first_line}"
        rows.append(("attempts" if n == 0 else "", said))
    state_width = max((len(step.state) for step in job.timeline), default=0)
    for n, step in enumerate(job.timeline):
        change = f"{_when(step.at)}  {step.state.ljust(state_width)}  {step.reason or ''}"
        rows.append(("timeline" if n == 0 else "", change))
    shown = [(key, str(value)) for key, value in rows if value not in (None, "")]
    width = max(len(key) for key, _ in shown)
    return "\n".join(f"{key.ljust(width)}  {value}".rstrip() for key, value in shown)


def _attempts(job: Job[Any]) -> str:
    total = job.max_attempts
    of = f" of {total}" if total is not None else " (the worker's retry policy says how many)"
    stalled = f", stalled {job.stalled_count}x" if job.stalled_count else ""
    return f"{job.attempt}{of}{stalled}"


def _progress(job: Job[Any]) -> str:
    """What the handler last reported ("" if it reported nothing)."""
    if not job.progress and not job.progress_label:
        return ""
    label = f" {job.progress_label}" if job.progress_label else ""
    return f"{job.progress:g}%{label}"


def _when(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S}.{at.microsecond // 1000:03d} UTC"


def _json_text(value: Any, limit: int = 500) -> str:
    text = msgspec.json.encode(value).decode()
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} bytes; --json shows it all)"


def _queue_done(result: dict[str, Any]) -> str:
    name, done = result["queue"], result["done"]
    if done == "pause":
        return f"queue {name} paused: running jobs finish, no job starts until it is resumed"
    if done == "resume":
        held = result["released"]
        return f"queue {name} resumed; {held} held job{'s' if held != 1 else ''} released"
    if done == "drain":
        return f"queue {name} drained: it is paused and no job is active"
    removed = result["removed"]
    return f"queue {name} obliterated: {removed} job{'s' if removed != 1 else ''} removed"


_JOB_DONE = {
    "retry": "will run again",
    "cancel": "cancelled",
    "promote": "promoted: it runs now",
    "remove": "removed (record, index entry, messages and dead letter)",
}


def _job_done(result: dict[str, Any]) -> str:
    return f"job {result['job_id']} of queue {result['queue']} {_JOB_DONE[result['done']]}"


def _replayed(result: dict[str, Any]) -> str:
    ids = result["replayed"]
    if not ids:
        return f"queue {result['queue']} has no dead letters to replay"
    return f"{len(ids)} dead letter(s) of queue {result['queue']} run again: {', '.join(ids)}"


def _provisioned(result: dict[str, Any]) -> str:
    return f"provisioned (its streams and buckets exist): {', '.join(result['provisioned'])}"


def _job_added(result: dict[str, Any]) -> str:
    added = "added" if result["created"] else "already there (added once)"
    return (f"job {result['job_id']} {added} to queue {result['queue']}: {result['state']}, "
            f"correlation id {result['correlation_id']}")  # fmt: skip


_PLAIN: dict[str, Callable[[Any], str]] = {
    "provision": _provisioned,
    "queues": queues_table,
    "jobs add": _job_added,
    "jobs list": _jobs_table,
    "jobs show": _job_listing,
    "jobs retry": _job_done,
    "jobs cancel": _job_done,
    "jobs promote": _job_done,
    "jobs remove": _job_done,
    "queue pause": _queue_done,
    "queue resume": _queue_done,
    "queue drain": _queue_done,
    "queue obliterate": _queue_done,
    "dlq list": _dlq_table,
    "dlq replay": _replayed,
    "dlq rejected": _rejected_table,
}
"""The text of every admin command's result, for people (``--json`` prints the result)."""


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)  # fmt: skip
