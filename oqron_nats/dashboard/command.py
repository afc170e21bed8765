"""``oqron dashboard``: serve the dashboard with uvicorn, on 127.0.0.1 unless told otherwise,
and never on another address without ``--auth`` or ``--read-only``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from ..client import Client
from ..core.credentials import add_security_arguments, security_from
from ..core.errors import ConfigError
from .settings import LOOPBACK, check_bind, parse_auth, settings

DEFAULT_PORT = 8000


STARTUP_LIMIT = 30.0
"""Seconds uvicorn gets to bind its address before the banner is given up."""


def add_dashboard_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``oqron dashboard``: its arguments."""
    dash = commands.add_parser(
        "dashboard", help="serve the web dashboard (needs the 'dashboard' extra)"
    )
    dash.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"({DEFAULT_PORT})")
    dash.add_argument(
        "--host", default=LOOPBACK,
        help=f"address to bind ({LOOPBACK}); another needs --auth or --read-only",
    )  # fmt: skip
    dash.add_argument("--auth", metavar="SPEC", help="basic:USER:PASSWORD_FILE, bearer:TOKEN_FILE")
    dash.add_argument("--read-only", action="store_true", help="show everything, act on nothing")
    dash.add_argument(
        "--secret-field", dest="secret_fields", action="append", default=[], metavar="FIELD",
        help="a payload field to mask in every queue (repeat)",
    )  # fmt: skip
    dash.add_argument(
        "--trace-url", metavar="TEMPLATE",
        help="link to a job's trace, e.g. http://jaeger:16686/trace/{trace_id}",
    )  # fmt: skip
    dash.add_argument(
        "--public-url", metavar="URL",
        help="the URL browsers use, behind a reverse proxy that rewrites Host "
        "(e.g. https://ops.example.com/queues): actions from it pass the origin check",
    )  # fmt: skip
    dash.add_argument("--url", help="NATS URL(s), comma-separated (default: OQRON_NATS_URL)")
    dash.add_argument("--namespace", help="default: OQRON_NAMESPACE or 'default'")
    add_security_arguments(dash)


def run_dashboard(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; ConfigError before serving if the bind is unsafe."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError(
            "the dashboard needs its extra: pip install 'oqron-nats[dashboard]'"
        ) from None
    from . import app

    auth = parse_auth(args.auth) if args.auth else None
    checked = settings(read_only=args.read_only, auth=auth, secret_fields=args.secret_fields,
                       trace_url=args.trace_url, public_url=args.public_url)  # fmt: skip
    check_bind(args.host, checked)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be from 1 to 65535, not {args.port}")
    credentials, tls = security_from(args)
    client = Client(args.url, namespace=args.namespace, credentials=credentials, tls=tls)
    web = app(client=client, read_only=args.read_only, auth=auth,
              secret_fields=args.secret_fields, trace_url=args.trace_url,
              public_url=args.public_url)  # fmt: skip
    config = uvicorn.Config(
        web, host=args.host, port=args.port, log_level="warning", lifespan="on",
        access_log=False, timeout_graceful_shutdown=5,
    )  # fmt: skip
    dashboard = web.state.dashboard

    class Server(uvicorn.Server):
        listening = asyncio.Event()

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            self.listening.set()

        def handle_exit(self, sig: int, frame: Any) -> None:
            dashboard.hub.end_pages()  # open event streams end, so the shutdown does not wait
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            """Ctrl-C and SIGTERM stop the server (a second one at once), and exit 0: not
            re-raised after the shutdown as uvicorn does, which would cut the client's close."""
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

    server = Server(config)
    where = f"http://{_shown_host(args.host)}:{args.port}/"
    asyncio.run(_serve(server, client, where))
    return 0


async def _serve(server: Any, client: Client, where: str) -> None:
    try:
        await client.connect()  # a bad URL or credentials fail here, before serving
        serving = asyncio.create_task(server.serve())
        if await _listening(server, serving):  # the address is shown once it answers
            print(f"oqron dashboard of namespace {client.namespace!r} at {where} "
                  "(Ctrl-C stops it)", flush=True)  # fmt: skip
        await serving
    finally:
        await client.close()


async def _listening(server: Any, serving: asyncio.Task[None]) -> bool:
    """Whether uvicorn listens within STARTUP_LIMIT seconds (False: it ended or is still
    starting)."""
    started = asyncio.ensure_future(server.listening.wait())
    try:
        await asyncio.wait({started, serving}, timeout=STARTUP_LIMIT,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    finally:
        started.cancel()
    return bool(server.listening.is_set())


def _shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
