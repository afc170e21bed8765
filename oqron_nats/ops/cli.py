"""The ``oqron`` command (also ``python -m oqron_nats``): workers, admin commands, demo, server.

Exit codes: 0 done; 1 the job or queue is not there (a command that names a queue acts only on
one that exists: ``oqron provision`` creates queues), or refused the operation (a job in the wrong
state, or JetStream refused the request); 2 bad usage or configuration; 3 NATS cannot be
connected to (no server, refused credentials, a TLS failure: one line says why) or did not
answer within the retry deadline (a request is asked again meanwhile, as through a cluster's
leader election). ``--json`` prints what a script would parse, on one line per command.
Credentials and TLS come from flags (``--creds``, ``--tls-ca``, ...) or ``OQRON_NATS_*``.

Here: the parser, the exit codes, and the commands that need no connection (``worker`` hands
its workers to :mod:`.runner`; ``permissions``, ``server``, ``demo``). The admin commands are in
:mod:`.cli_admin`, and how their results read in :mod:`.cli_text`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._nats.permissions import ROLES, for_role
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
from ..core.naming import check_name, check_namespace
from ..dashboard.command import add_dashboard_command, run_dashboard
from ..observe.logconfig import configure_logging
from ..queue import Queue
from ..testing.cluster import LocalCluster
from ..testing.server import LocalServer, ServerError
from ..worker import Worker
from . import cli_admin, cli_schedules
from .runner import EXIT_UNREACHABLE, EXIT_USAGE, add_run_arguments, options_from, run

EXIT_REFUSED = 1


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

    cli_admin.add_queues_command(commands)
    cli_admin.add_jobs_command(commands)
    cli_admin.add_queue_command(commands)
    cli_admin.add_dlq_command(commands)
    commands.add_parser("demo", help="run the demo: its own local NATS server and real jobs")
    cli_admin.add_provision_command(commands)
    cli_schedules.add_schedules_command(commands)  # issue 16: repeating jobs
    add_dashboard_command(commands)  # the web dashboard (oqron_nats/dashboard/)

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
    command = _LOGGING_COMMANDS.get(args.command, _admin)
    return command(args)


def _server(args: argparse.Namespace) -> int:
    return run_cluster(args.store) if args.cluster else run_server(args.port, args.store)


def _schedules(args: argparse.Namespace) -> int:
    return asyncio.run(cli_schedules.run_schedules(args))


def _admin(args: argparse.Namespace) -> int:
    return asyncio.run(cli_admin.run_admin(args))


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


_LOGGING_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "server": _server,
    "permissions": _permissions,
    "schedules": _schedules,
    "dashboard": run_dashboard,
}
"""The commands that log to stderr, by name; every other one is an admin command."""
