"""The ``oqron`` admin commands, over a :class:`~oqron_nats.client.Client`: ``queues`` (with
``--watch``), ``jobs`` (``add`` one, for scripts), ``queue``, ``dlq`` and ``provision``; their
arguments and what each does.

Each command returns its result, which is printed as JSON (``--json``) or as text for people
(see :mod:`.cli_text`); :mod:`.cli` turns their errors into exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeAlias

import msgspec

from ..client import Client
from ..core.credentials import add_security_arguments, security_from
from ..core.errors import InvalidInput, InvalidState
from ..core.job import JobState
from ..core.naming import PRIORITY_LEVELS
from . import admin, cli_text

WATCH_INTERVAL = 1.0
"""Seconds between two redraws of ``oqron queues --watch``."""

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``ArgumentParser.add_subparsers`` returns, to add a command to."""


def add_queues_command(commands: Commands) -> None:
    """``oqron queues``: every queue's summary, once or ``--watch``."""
    queues = commands.add_parser("queues", help="every queue: counts, oldest job, workers")
    queues.add_argument("--watch", action="store_true",
                        help="redraw every second until Ctrl-C or SIGTERM (with --json: one "
                        "line per refresh)")  # fmt: skip
    queues.add_argument("--interval", type=_seconds, metavar="S",
                        help=f"--watch: seconds between redraws ({WATCH_INTERVAL:g})")  # fmt: skip
    queues.add_argument("--count", type=_limit, metavar="N", help="--watch: stop after N redraws")
    _connection_arguments(queues)


def add_jobs_command(commands: Commands) -> None:
    """``oqron jobs add|list|show|retry|cancel|promote|remove``."""
    jobs = commands.add_parser(
        "jobs", help="add, list, show, retry, cancel, promote or remove jobs"
    )
    jobs_commands = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_jobs_add(jobs_commands)
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
    removing = jobs_commands.add_parser(
        "remove", help="remove a job that is not running (cancel a running one first)"
    )
    removing.add_argument("queue")
    removing.add_argument("job_id", metavar="ID")
    _connection_arguments(removing)


def _add_jobs_add(jobs_commands: Commands) -> None:
    """``oqron jobs add QUEUE --data JSON``: add one job, for scripts and operators."""
    adding = jobs_commands.add_parser("add", help="add a job to an existing queue")
    adding.add_argument("queue", metavar="QUEUE")
    adding.add_argument("--data", required=True, metavar="JSON",
                        help="the payload as JSON ('-': read it from stdin)")  # fmt: skip
    adding.add_argument("--delay", type=_seconds, metavar="S", help="run it S seconds from now")
    adding.add_argument("--priority", type=_priority, metavar="N",
                        help="0 (first) to 9 (default: the queue's)")  # fmt: skip
    adding.add_argument("--job-id", metavar="ID",
                        help="a job with this id is added once (default: a new id)")  # fmt: skip
    adding.add_argument("--correlation-id", metavar="ID",
                        help="followed through logs, spans and the jobs it adds")  # fmt: skip
    _connection_arguments(adding)


def add_queue_command(commands: Commands) -> None:
    """``oqron queue pause|resume|drain|obliterate``."""
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


def add_dlq_command(commands: Commands) -> None:
    """``oqron dlq list|replay|rejected``."""
    dlq = commands.add_parser(
        "dlq", help="the dead letters of a queue, and the messages it rejected (not its jobs)"
    )
    dlq.add_argument("action", choices=("list", "replay", "rejected"))
    dlq.add_argument("queue")
    dlq.add_argument("--limit", type=_limit, default=100, help="list: at most this many (100)")
    dlq.add_argument("--id", dest="ids", action="append", help="replay: only this job (repeat)")
    _connection_arguments(dlq)


def add_provision_command(commands: Commands) -> None:
    """``oqron provision``: create the streams and buckets of queues."""
    provision = commands.add_parser(
        "provision", help="create the streams and buckets of queues (an admin or worker step)"
    )
    provision.add_argument("queues", nargs="+", metavar="QUEUE")
    _connection_arguments(provision)


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


def _priority(text: str) -> int:
    """An argparse type: a job priority, 0 to 9."""
    value = _whole_number(text, 0)
    if value > PRIORITY_LEVELS - 1:
        raise argparse.ArgumentTypeError(f"must be 0 to {PRIORITY_LEVELS - 1}, not {value}")
    return value


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


async def run_admin(args: argparse.Namespace) -> int:
    """Run the admin command ``args`` names over a client, and print its result."""
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
        print(cli_text.text(args, result))
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
                print(f"{clear}{heading}\n\n{cli_text.queues_table(summaries)}\n", flush=True)
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


async def _jobs_add(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    text = sys.stdin.read() if args.data == "-" else args.data
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"--data is not JSON: {exc}") from None
    q = await admin.existing_queue(client, args.queue)
    existed = args.job_id is not None and await q.get_job(args.job_id) is not None
    job = await q.add(data, job_id=args.job_id, delay=args.delay, priority=args.priority,
                      correlation_id=args.correlation_id)  # fmt: skip
    return {"job_id": job.id, "queue": q.name, "state": str(job.state),
            "correlation_id": job.correlation_id, "created": not existed}  # fmt: skip


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


async def _jobs_remove(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    q = await admin.existing_queue(client, args.queue)
    await q.remove(args.job_id)
    return {"job_id": args.job_id, "queue": q.name, "done": "remove"}


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
    "jobs add": _jobs_add,
    "jobs list": _jobs_list,
    "jobs show": _jobs_show,
    "jobs retry": _job_action("retry"),
    "jobs cancel": _job_action("cancel"),
    "jobs promote": _job_action("promote"),
    "jobs remove": _jobs_remove,
    "queue": _queue,
    "dlq": _dlq,
}
