"""The ``oqron`` command (also ``python -m oqron_nats``): workers, admin commands, demo, server.

Exit codes: 0 done; 1 the job or queue is not there (a command that names a queue acts only on
one that exists: ``oqron provision`` creates queues), or refused the operation (a job in the wrong
state, or JetStream refused the request); 2 bad usage or configuration; 3 NATS cannot be
connected to (no server, refused credentials, a TLS failure: one line says why) or did not
answer within the retry deadline (a request is asked again meanwhile, as through a cluster's
leader election). ``--json`` prints what a script would parse, on one line per command.
Credentials and TLS come from flags (``--creds``, ``--tls-ca``, ...) or ``OQRON_NATS_*``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from .._nats.permissions import ROLES, for_role
from ..client import Client
from ..core.credentials import add_security_arguments, security_from
from ..core.errors import (
    ConfigError,
    CorruptRecord,
    InvalidInput,
    InvalidState,
    JetStreamError,
    JobNotFound,
    OqronError,
    QueueNotFound,
    ServerVersionError,
    Unavailable,
)
from ..core.job import Job, JobState
from ..core.naming import check_name, check_namespace
from ..observe.logconfig import configure_logging
from ..queue import Queue
from ..storage.rejects import RejectedSample
from ..testing.cluster import LocalCluster
from ..testing.server import LocalServer, ServerError
from ..worker import Worker
from . import admin
from .runner import EXIT_UNREACHABLE, EXIT_USAGE, add_run_arguments, options_from, run

EXIT_REFUSED = 1
WATCH_INTERVAL = 1.0
"""Seconds between two redraws of ``oqron queues --watch``."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="oqron", description="oqron_nats: job queues on NATS JetStream"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run the workers or queues defined in modules")
    worker.add_argument("targets", nargs="+", metavar="MODULE:ATTR",
                        help="e.g. workers.video:video (a worker, a queue with a handler, "
                        "or a list of them)")  # fmt: skip
    add_run_arguments(worker)

    queues = commands.add_parser("queues", help="every queue: counts, oldest job, workers")
    queues.add_argument("--watch", action="store_true",
                        help="redraw every second until Ctrl-C or SIGTERM (with --json: one "
                        "line per refresh)")  # fmt: skip
    queues.add_argument("--interval", type=_seconds, metavar="S",
                        help=f"--watch: seconds between redraws ({WATCH_INTERVAL:g})")  # fmt: skip
    queues.add_argument("--count", type=_limit, metavar="N", help="--watch: stop after N redraws")
    _connection_arguments(queues)

    jobs = commands.add_parser("jobs", help="list, show, retry, cancel or promote jobs")
    jobs_commands = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = jobs_commands.add_parser("list", help="the most recent jobs of a queue")
    listing.add_argument("queue")
    listing.add_argument("--status", help="only jobs in this state (waiting, active, failed, ...)")
    listing.add_argument("--limit", type=_limit, default=20, help="at most this many (20)")
    listing.add_argument("--offset", type=_offset, default=0,
                         help="skip this many of the most recent first (0)")  # fmt: skip
    _connection_arguments(listing)
    for action, text in (
        ("show", "one job's record"),
        ("retry", "run a failed or cancelled job again"),
        ("cancel", "cancel a job (a running one is stopped)"),
        ("promote", "run a delayed job now"),
    ):
        one = jobs_commands.add_parser(action, help=text)
        one.add_argument("job_id", metavar="ID")
        _connection_arguments(one)

    queue = commands.add_parser("queue", help="pause, resume, drain or obliterate a queue")
    queue_commands = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("pause", "pause the queue in the whole cluster (running jobs finish)"),
        ("resume", "resume it (jobs held while paused are released)"),
        ("drain", "pause it, then wait until no job is active"),
        ("obliterate", "remove every job, message, schedule and dead letter of the queue"),
    ):
        one = queue_commands.add_parser(action, help=text)
        one.add_argument("name", metavar="QUEUE")
        if action == "drain":
            one.add_argument(
                "--timeout", type=_seconds, metavar="S",
                help="give up after S seconds (exit 1; the queue stays paused)",
            )  # fmt: skip
        if action == "obliterate":
            one.add_argument(
                "--force", action="store_true",
                help="also while jobs run (their handlers are told to stop); without it, "
                "nothing is removed while a job is active",
            )  # fmt: skip
        _connection_arguments(one)

    dlq = commands.add_parser(
        "dlq", help="the dead letters of a queue, and the messages it rejected (not its jobs)"
    )
    dlq.add_argument("action", choices=("list", "replay", "rejected"))
    dlq.add_argument("queue")
    dlq.add_argument("--limit", type=_limit, default=100, help="list: at most this many (100)")
    dlq.add_argument("--id", dest="ids", action="append", help="replay: only this job (repeat)")
    _connection_arguments(dlq)

    commands.add_parser("demo", help="run the demo: its own local NATS server and real jobs")
    provision = commands.add_parser(
        "provision", help="create the streams and buckets of queues (an admin or worker step)"
    )
    provision.add_argument("queues", nargs="+", metavar="QUEUE")
    _connection_arguments(provision)

    permissions = commands.add_parser(
        "permissions", help="print the nats-server permissions block of a role"
    )
    permissions.add_argument("--role", choices=ROLES, required=True)
    permissions.add_argument("--queue", dest="queues", action="append", default=[],
                             help="a queue of the role (repeat); not for admin")  # fmt: skip
    permissions.add_argument("--namespace", help="default: OQRON_NAMESPACE or 'default'")
    permissions.add_argument("--inbox", default="_INBOX", help="the user's inbox prefix")

    server = commands.add_parser("server", help="run a local JetStream server for development")
    server.add_argument("--port", type=int, default=4222, help="client port (default 4222)")
    server.add_argument("--store", type=Path, help="JetStream store directory (default: temporary)")
    server.add_argument(
        "--cluster",
        action="store_true",
        help="three clustered nodes on free ports instead (try OQRON_REPLICAS=3)",
    )
    return parser


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {value}")
    return value


def _limit(text: str) -> int:
    """An argparse type: how many at most (1 or more); every --limit takes it."""
    return _whole_number(text, 1)


def _offset(text: str) -> int:
    """An argparse type: how many to skip (0 or more); every --offset takes it."""
    return _whole_number(text, 0)


def _seconds(text: str) -> float:
    """An argparse type: a duration in seconds, more than 0 and finite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds, and finite")
    return value


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="NATS URL(s), comma-separated (default: OQRON_NATS_URL)")
    parser.add_argument("--namespace", help="default: OQRON_NAMESPACE or 'default'")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_security_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "queues" and not args.watch and (args.interval or args.count):
        parser.error("--interval and --count go with --watch")
    try:
        return _dispatch(args)
    except (JobNotFound, QueueNotFound, InvalidState, JetStreamError, CorruptRecord) as exc:
        return _fail(exc, EXIT_REFUSED)
    except (Unavailable, ServerVersionError) as exc:
        return _fail(exc, EXIT_UNREACHABLE)
    except (ConfigError, InvalidInput, ServerError, OqronError) as exc:
        return _fail(exc, EXIT_USAGE)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "worker":
        return run(load_workers(args.targets), options_from(args))
    if args.command == "demo":
        from .demo import run_demo

        return asyncio.run(run_demo())
    _log_to_stderr()
    if args.command == "server":
        return run_cluster(args.store) if args.cluster else run_server(args.port, args.store)
    if args.command == "permissions":
        return _permissions(args)
    return asyncio.run(_admin(args))


def _permissions(args: argparse.Namespace) -> int:
    if args.role != "admin" and not args.queues:
        raise ConfigError(f"a {args.role} needs at least one --queue")
    namespace = check_namespace(args.namespace or os.environ.get("OQRON_NAMESPACE") or "default")
    queues = [check_name(q) for q in args.queues]
    block = for_role(args.role, namespace, queues, inbox=args.inbox)
    print(block.config())
    return 0


def _log_to_stderr() -> None:
    """Warnings and errors as log lines on stderr, so that stdout holds only the command's
    output (``--json`` stays parseable); left alone if the process has set up logging already
    (``main`` called by an application, or in a test)."""
    if not logging.getLogger().handlers:
        configure_logging(level="warning")


def _fail(problem: Exception | str, code: int) -> int:
    print(f"oqron: {problem}", file=sys.stderr)
    return code


# -- worker ---------------------------------------------------------------------------------


def load_workers(targets: Sequence[str]) -> list[Worker[Any]]:
    """The workers named by ``MODULE:ATTR`` targets (a queue with a handler becomes a worker)."""
    sys.path.insert(0, str(Path.cwd()))  # as `python -m` does: workers.video from the project
    found: list[Worker[Any]] = []
    for target in targets:
        module_name, _, attr = target.partition(":")
        if not module_name or not attr:
            raise ConfigError(f"{target!r} is not MODULE:ATTR (e.g. workers.video:video)")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
        if not hasattr(module, attr):
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}")
        value = getattr(module, attr)
        for item in value if isinstance(value, list | tuple) else [value]:
            found.append(_as_worker(item, target))
    return found


def _as_worker(item: object, target: str) -> Worker[Any]:
    if isinstance(item, Worker):
        return item
    if isinstance(item, Queue) and item.handler is not None:
        return Worker(item)
    raise ConfigError(f"{target} is not a worker, nor a queue with a handler: {item!r}")


# -- admin ----------------------------------------------------------------------------------


async def _admin(args: argparse.Namespace) -> int:
    credentials, tls = security_from(args)
    connection = Client(args.url, namespace=args.namespace, credentials=credentials, tls=tls)
    async with connection as client:
        if args.command == "queues" and args.watch:
            await _watch(client, args)
            return 0
        command = _ADMIN[args.command if args.command != "jobs" else f"jobs {args.action}"]
        result = await command(client, args)
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        print(_text(args, result))
    return 0


async def _queues(client: Client, _args: argparse.Namespace) -> list[admin.QueueSummary]:
    return [await admin.summary(client, name) for name in await admin.queue_names(client)]


async def _watch(client: Client, args: argparse.Namespace) -> None:
    """``oqron queues --watch``: a fresh summary every interval until Ctrl-C or SIGTERM (or
    ``--count`` redraws); a redraw that is slow to answer is cut short by the signal too."""
    interval: float = args.interval or WATCH_INTERVAL
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            task.cancel()

    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread: --count ends
            loop.add_signal_handler(sig, stop)
            handled.append(sig)
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""  # a terminal: redraw in place
    try:
        for shown in itertools.count(1):
            started = loop.time()
            summaries = await _queues(client, args)
            if args.json:
                print(msgspec.json.encode(summaries).decode(), flush=True)
            else:
                heading = (f"{datetime.now():%H:%M:%S}  namespace {client.namespace}, every "
                           f"{interval:g}s (Ctrl-C stops)")  # fmt: skip
                print(f"{clear}{heading}\n\n{_queues_table(summaries)}\n", flush=True)
            if args.count is not None and shown >= args.count:
                return
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
    except asyncio.CancelledError:
        if not stopped:
            raise
        task.uncancel()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


async def _jobs_list(client: Client, args: argparse.Namespace) -> list[Any]:
    return await admin.list_jobs(client, args.queue, args.status, args.limit, args.offset)


async def _jobs_show(client: Client, args: argparse.Namespace) -> Any:
    _, job = await admin.find_job(client, args.job_id)
    return job


def _job_action(name: str) -> Callable[[Client, argparse.Namespace], Awaitable[dict[str, Any]]]:
    async def act(client: Client, args: argparse.Namespace) -> dict[str, Any]:
        q, _ = await admin.find_job(client, args.job_id)
        outcome = await getattr(q, name)(args.job_id)
        if outcome is False:  # cancel of a job that had finished
            raise InvalidState(f"job {args.job_id!r} had already finished")
        return {"job_id": args.job_id, "queue": q.name, "done": name}

    return act


async def _queue(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    q = await admin.existing_queue(client, args.name)
    result: dict[str, Any] = {"queue": q.name, "done": args.action}
    if args.action == "pause":
        await q.pause()
    elif args.action == "resume":
        result["released"] = await q.resume()
    elif args.action == "drain":
        try:
            await q.drain(args.timeout)
        except TimeoutError:
            raise InvalidState(
                f"queue {q.name!r} still has active jobs after {args.timeout:g} s; it stays "
                f"paused (`oqron queue resume {q.name}` resumes it)"
            ) from None
    else:
        active = await q.count(JobState.ACTIVE)
        if active and not args.force:  # obliterate() refuses too; this says how from here
            raise InvalidState(
                f"queue {q.name!r} has {active} active job(s), so nothing was removed: stop its "
                f"workers or `oqron queue drain {q.name}` first, or --force (their handlers are "
                "told to stop)"
            )
        result["removed"] = await q.obliterate(force=args.force)
    return result


async def _dlq(client: Client, args: argparse.Namespace) -> Any:
    if args.action == "list":
        return await admin.dead_letters(client, args.queue, args.limit)
    if args.action == "rejected":
        return await admin.rejected(client, args.queue)
    return {"queue": args.queue, "replayed": await admin.replay(client, args.queue, args.ids)}


async def _provision(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    for name in args.queues:
        await admin.provision(client, name)
    return {"provisioned": args.queues}


_ADMIN: dict[str, Callable[[Client, argparse.Namespace], Awaitable[Any]]] = {
    "provision": _provision,
    "queues": _queues,
    "jobs list": _jobs_list,
    "jobs show": _jobs_show,
    "jobs retry": _job_action("retry"),
    "jobs cancel": _job_action("cancel"),
    "jobs promote": _job_action("promote"),
    "queue": _queue,
    "dlq": _dlq,
}


def _text(args: argparse.Namespace, result: Any) -> str:
    """The human-readable form of a command's result."""
    key = f"{args.command} {getattr(args, 'action', '')}".strip()
    return _PLAIN[key](result)


def _queues_table(summaries: list[admin.QueueSummary]) -> str:
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


_JOB_DONE = {"retry": "will run again", "cancel": "cancelled", "promote": "promoted: it runs now"}


def _job_done(result: dict[str, Any]) -> str:
    return f"job {result['job_id']} of queue {result['queue']} {_JOB_DONE[result['done']]}"


def _replayed(result: dict[str, Any]) -> str:
    ids = result["replayed"]
    if not ids:
        return f"queue {result['queue']} has no dead letters to replay"
    return f"{len(ids)} dead letter(s) of queue {result['queue']} run again: {', '.join(ids)}"


def _provisioned(result: dict[str, Any]) -> str:
    return f"provisioned (its streams and buckets exist): {', '.join(result['provisioned'])}"


_PLAIN: dict[str, Callable[[Any], str]] = {
    "provision": _provisioned,
    "queues": _queues_table,
    "jobs list": _jobs_table,
    "jobs show": _job_listing,
    "jobs retry": _job_done,
    "jobs cancel": _job_done,
    "jobs promote": _job_done,
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


# -- development server ----------------------------------------------------------------------


def run_server(port: int, store: Path | None) -> int:
    """Run a local nats-server in the foreground until Ctrl-C or SIGTERM."""
    with LocalServer(port=port, store_dir=store) as server:
        asyncio.run(
            _until_signal(f"nats-server with JetStream at {server.url} (store {server.store_dir})")
        )
    return 0


def run_cluster(store: Path | None) -> int:
    """Run a local 3-node JetStream cluster in the foreground until Ctrl-C or SIGTERM."""
    with LocalCluster(store_dir=store) as cluster:
        urls = ",".join(cluster.urls)
        asyncio.run(
            _until_signal(
                f"3-node JetStream cluster {cluster.name} at {urls}",
                f"export OQRON_NATS_URL={urls} OQRON_REPLICAS=3",
            )
        )
    return 0


async def _until_signal(*lines: str) -> None:
    """Print ``lines`` once Ctrl-C and SIGTERM are handled, then wait for one of them."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(*lines, "Ctrl-C stops it", sep="\n", flush=True)
    await stop.wait()


if __name__ == "__main__":
    sys.exit(main())
