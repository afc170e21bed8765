"""Running workers as a process: what ``oqron worker`` and ``python -m workers.<name>`` share.

start      configure logging (unless told not to), serve the health port, start every worker
           (connect with the credentials and TLS of the flags, else of OQRON_NATS_*), then
           set the garbage collector for work until they stop (:mod:`.collector`)
SIGTERM    (or SIGINT) stop claiming; running jobs get the shutdown timeout to finish, then
           are handed back (record back to waiting, lease released, message nak'ed); while
           starting (connecting), the start stops at once
2nd signal stop at once: running jobs are handed back now
exit code  0 after a stop; 3 when NATS cannot be connected to (refused credentials, a TLS
           failure, no server) or does not answer at start within the retry deadline (every
           request is asked again meanwhile: a cluster electing leaders, a node restarting);
           2 for a bad configuration
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from ..core.background import unless_stopped
from ..core.credentials import TLS, Credentials, add_security_arguments, security_from
from ..core.errors import ConfigError, ConnectionFailed, OqronError, Unavailable
from ..observe.log import logger
from ..observe.logconfig import LEVELS, LogFormat, configure_logging
from ..worker import Worker
from .collector import settled_for_work
from .health import HealthServer

log = logger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a worker process runs; ``None`` keeps what the worker definition says."""

    concurrency: int | None = None
    shutdown_timeout: float | None = None
    log_level: str = "info"
    log_format: LogFormat = "auto"
    configure_logging: bool = True
    health_port: int | None = None
    metrics_port: int | None = None
    credentials: Credentials | None = None
    tls: TLS | None = None


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker options, with defaults from ``OQRON_*`` environment variables (argparse
    converts and checks a default given as a string like any argument)."""
    env = os.environ.get
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=env("OQRON_CONCURRENCY"),
        help="jobs run at once per queue (default: as defined; OQRON_CONCURRENCY)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=non_negative_float,
        default=env("OQRON_SHUTDOWN_TIMEOUT"),
        help="seconds running jobs get after SIGTERM (default: as defined; OQRON_SHUTDOWN_TIMEOUT)",
    )
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default=env("OQRON_LOG_LEVEL", "info"),
        help="default info (OQRON_LOG_LEVEL)",
    )
    parser.add_argument(
        "--log-format",
        choices=get_args(LogFormat),
        default=env("OQRON_LOG_FORMAT", "auto"),
        help="json, console, or auto: console on a terminal (OQRON_LOG_FORMAT)",
    )
    parser.add_argument(
        "--no-configure-logging",
        dest="configure_logging",
        action="store_false",
        help="leave logging as the application set it up",
    )
    parser.add_argument(
        "--health-port",
        type=port_number,
        default=env("OQRON_HEALTH_PORT"),
        help="serve /livez and /readyz on this port (OQRON_HEALTH_PORT)",
    )
    parser.add_argument("--metrics-port", type=port_number, default=env("OQRON_METRICS_PORT"),
                        help="serve Prometheus metrics on this port; needs oqron-nats[prometheus] "
                        "(OQRON_METRICS_PORT)")  # fmt: skip
    add_security_arguments(parser)


def options_from(args: argparse.Namespace) -> RunOptions:
    """The run options parsed by :func:`add_run_arguments` (ConfigError if a credential file
    given cannot be read)."""
    credentials, tls = security_from(args)
    return RunOptions(
        concurrency=args.concurrency,
        shutdown_timeout=args.shutdown_timeout,
        log_level=args.log_level,
        log_format=args.log_format,
        configure_logging=args.configure_logging,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        credentials=credentials,
        tls=tls,
    )


def run_main(*workers: Worker[Any], argv: Sequence[str] | None = None) -> int:
    """The ``__main__`` of a worker module: parse the worker options from argv, run, exit code."""
    parser = argparse.ArgumentParser(description=f"run {', '.join(w.name for w in workers)}")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options = options_from(args)
    except ConfigError as exc:
        parser.exit(EXIT_USAGE, f"{parser.prog}: {exc}\n")
    return run(list(workers), options)


def run(workers: Sequence[Worker[Any]], options: RunOptions) -> int:
    """Run ``workers`` in this process until told to stop; returns the exit code."""
    if options.configure_logging:
        configure_logging(
            level=options.log_level,
            fmt=options.log_format,
            secret_fields={f for w in workers for f in w.queue.config.secret_fields},
        )
    try:
        for w in workers:
            w.override(
                concurrency=options.concurrency,
                shutdown_timeout=options.shutdown_timeout,
                credentials=options.credentials,
                tls=options.tls,
            )
        return asyncio.run(Process(workers, options).serve())
    except ConnectionFailed as exc:  # its message says why, credentials masked
        log.error("cannot connect to NATS; giving up", error=str(exc))
        return EXIT_UNREACHABLE
    except Unavailable as exc:
        log.error("NATS did not answer; giving up", error=str(exc))
        return EXIT_UNREACHABLE
    except OqronError as exc:  # a bad configuration: ConfigError, InvalidName, ...
        log.error("cannot start the workers", error=str(exc), error_type=type(exc).__name__)
        return EXIT_USAGE


class Process:
    """One worker process: its workers, signals and health endpoints."""

    def __init__(self, workers: Sequence[Worker[Any]], options: RunOptions) -> None:
        self.workers = list(workers)
        self.options = options
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self._serving = False

    def ready(self) -> bool:
        """Connected, with every worker's consumers bound and claiming."""
        return self._serving and all(w.is_ready for w in self.workers)

    def on_signal(self, name: str) -> None:
        """The first signal stops gracefully, a second one at once."""
        if self._stop.is_set():
            log.warning("second signal: handing running jobs back now", signal=name)
            self._hurry.set()
        else:
            log.info("stopping: running jobs get the shutdown timeout", signal=name)
            self._stop.set()

    async def serve(self) -> int:
        """Start everything, wait for a signal, stop everything."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig.name)
        health = (
            HealthServer(self.options.health_port, self.ready)
            if self.options.health_port is not None
            else None
        )
        try:
            if health is not None:
                try:
                    await health.start()
                except OSError as exc:
                    raise ConfigError(f"cannot serve the health port {health.port}: {exc}") from exc
                log.info("health endpoints up", port=health.port, paths="/livez /readyz")
            self._install_metrics()
            try:
                if await unless_stopped(self._start_workers(), self._stop):
                    self._serving = True
                    with settled_for_work() as collector:
                        log.info(
                            "workers running",
                            queues=[w.name for w in self.workers],
                            pid=os.getpid(),
                            collector=collector,
                        )
                        await self._stop.wait()
                else:
                    log.info("stopped while starting")
            finally:
                self._serving = False
                await self._stop_workers()
        finally:
            if health is not None:
                await health.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return EXIT_OK

    async def _start_workers(self) -> None:
        for w in self.workers:
            await w.start()

    async def _stop_workers(self) -> None:
        stopping = asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
        hurry = asyncio.ensure_future(self._hurry.wait())
        either: list[asyncio.Future[Any]] = [stopping, hurry]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if hurry.done():
            for w in self.workers:
                w.hurry()
        hurry.cancel()
        for w, outcome in zip(self.workers, await stopping, strict=True):
            if isinstance(outcome, Exception):
                log.error("worker did not stop cleanly", queue=w.name, error=repr(outcome))

    def _install_metrics(self) -> None:
        if self.options.metrics_port is None:
            return
        from ..observe.prometheus import serve_prometheus

        serve_prometheus(self.options.metrics_port)
        log.info("metrics served for Prometheus", port=self.options.metrics_port)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: seconds, at least 0."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port (0 picks a free one)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {value}")
    return value
