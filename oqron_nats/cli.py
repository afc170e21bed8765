"""The ``oqron`` command (also ``python -m oqron_nats``): the demo and a development server."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .server import LocalServer, ServerError


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="oqron", description="oqron_nats: job queues on NATS JetStream"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("demo", help="run the demo: its own local NATS server and real jobs")
    server = commands.add_parser("server", help="run a local JetStream server for development")
    server.add_argument("--port", type=int, default=4222, help="client port (default 4222)")
    server.add_argument("--store", type=Path, help="JetStream store directory (default: temporary)")
    return parser


def run_server(port: int, store: Path | None) -> int:
    """Run a local nats-server in the foreground until Ctrl-C or SIGTERM."""
    with LocalServer(port=port, store_dir=store) as server:
        print(f"nats-server with JetStream at {server.url} (store {server.store_dir})")
        print("Ctrl-C stops it", flush=True)
        stop = asyncio.Event()

        async def wait() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()

        asyncio.run(wait())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            return asyncio.run(run_demo())
        return run_server(args.port, args.store)
    except ServerError as exc:
        print(f"oqron: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
