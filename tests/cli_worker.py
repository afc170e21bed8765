"""Workers that tests/test_runner.py runs with ``oqron worker tests.cli_worker:<name>``.

The queue names come from the environment, so each test uses its own.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import structlog

from oqron_nats import DeadLetter, JobContext, RetryPolicy, worker

log = structlog.get_logger("tests.cli_worker")


async def work(ctx: JobContext[Any]) -> Any:
    """Sleep for ``data["sleep"]`` seconds if asked (ignoring the signal), return the data."""
    log.info("working", n=ctx.data.get("n"))
    await asyncio.sleep(float(ctx.data.get("sleep", 0)))
    return ctx.data


async def leaky(ctx: JobContext[Any]) -> None:
    """A careless handler: logs its payload, keeps the secret in a local, puts it in its error."""
    customer = ctx.data["customer_ssn"]  # a local whose name does not look secret
    log.info("calling the registry", payload=ctx.data, attempt=ctx.attempt)
    ctx.log("info", "payload seen by ctx.log", payload=ctx.data)
    try:
        raise PermissionError(f"the registry refused {customer}")
    except PermissionError:
        log.exception("registry call failed")  # its traceback: no locals, message masked
        log.warning(f"will not retry {customer} today")  # the careless f-string
        raise


plain = worker(
    os.environ.get("CLI_TEST_QUEUE", "cli-run"),
    work,
    concurrency=4,
    shutdown_timeout=60.0,
    heartbeat=1.0,
    lock_ttl=3.0,
)

secretive = worker(
    os.environ.get("CLI_TEST_QUEUE", "cli-secret"),
    leaky,
    secret_fields=["customer_ssn"],
    retries=RetryPolicy(max=1, base_delay=0.05),
    dead_letter=DeadLetter(enabled=True),
)


if __name__ == "__main__":  # python -m tests.cli_worker [runner options]: as workers/video.py
    import sys

    from oqron_nats.ops.runner import run_main

    sys.exit(run_main(plain))
