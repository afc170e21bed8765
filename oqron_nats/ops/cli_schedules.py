"""``oqron schedules list|add|remove``: a queue's repeating schedules (``q.schedule()``).

oqron schedules add reports nightly --cron "0 3 * * *" --tz Europe/Berlin --data '{"k": 1}'
oqron schedules add reports beat --every 300
oqron schedules list reports
oqron schedules remove reports nightly
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import msgspec

from ..client import Client
from ..core.credentials import security_from
from ..core.errors import InvalidOption
from ..core.schedules import Schedule
from ..queue import queue
from .cli_admin import Commands, _connection_arguments


def add_schedules_command(commands: Commands) -> None:
    """Register ``oqron schedules``."""
    schedules = commands.add_parser("schedules", help="list, add or remove repeating jobs")
    actions = schedules.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the repeating schedules of a queue")
    listing.add_argument("queue")
    _connection_arguments(listing)
    add = actions.add_parser("add", help="define a repeating job (replaces one of that name)")
    add.add_argument("queue")
    add.add_argument("name")
    timing = add.add_mutually_exclusive_group(required=True)
    timing.add_argument("--cron", help="5 fields (minute first) or 6 (second first), or @daily..")
    timing.add_argument("--every", type=int, metavar="SECONDS", help="an interval, at least 1")
    add.add_argument("--tz", help="the cron's time zone, an IANA name (default UTC)")
    add.add_argument("--data", default="null", help="each job's payload, as JSON (null)")
    add.add_argument("--priority", type=int, help="the jobs' priority lane (the queue's)")
    add.add_argument("--attempts", type=int, help="the jobs' attempts (the worker's policy)")
    _connection_arguments(add)
    remove = actions.add_parser("remove", help="stop a repeating schedule")
    remove.add_argument("queue")
    remove.add_argument("name")
    _connection_arguments(remove)


async def run_schedules(args: argparse.Namespace) -> int:
    """Run ``oqron schedules ACTION`` and print its result; 1 if ``remove`` found nothing."""
    credentials, tls = security_from(args)
    connection = Client(args.url, namespace=args.namespace, credentials=credentials, tls=tls)
    async with connection as client:
        q = queue(args.queue, client=client)
        if args.action == "list":
            _print(args, [_row(s) for s in await q.schedules()])
            return 0
        if args.action == "add":
            added = await q.schedule(
                args.name, _data(args.data), cron=args.cron, every=args.every, tz=args.tz,
                priority=args.priority, attempts=args.attempts,
            )  # fmt: skip
            _print(args, [_row(added)])
            return 0
        removed = await q.unschedule(args.name)
    _print(args, {"removed": removed, "name": args.name})
    return 0 if removed else 1


def _data(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidOption(f"--data is not JSON: {exc}") from None


def _row(schedule: Schedule) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "pattern": schedule.pattern,
        "tz": schedule.tz,
        "priority": schedule.priority,
        "attempts": schedule.attempts,
        "data": schedule.data,
        "defined_at": schedule.defined_at.isoformat(),
    }


def _print(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        print(msgspec.json.encode(result).decode())
    elif isinstance(result, dict):
        word = "removed" if result["removed"] else "no such schedule:"
        print(f"{word} {result['name']}")
    elif not result:
        print(f"no repeating schedules on {args.queue}")
    else:
        for row in result:
            tz = f" ({row['tz']})" if row["tz"] else ""
            print(f"{row['name']}  {row['pattern']}{tz}  data={json.dumps(row['data'])}")
