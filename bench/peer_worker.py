"""One peer's worker process for bench/peers.py: consume N pre-filled no-op jobs, time them.

``python -m bench.peer_worker {taskiq|faststream} --url URL --stream S --subject X --jobs N
--concurrency C [--mode pull|push] [--batch B]`` prints ``ready`` once its consumer is set up,
then, when it has handled N jobs, one JSON line ``{"count", "first", "last", "maxrss_kb"}``:
wall-clock times of the first handler start and the last handler end, and this process's peak
RSS (``VmHWM``, see ``peak_rss_kb``).
It stops its peer gracefully, so the acks of the last jobs reach the server before it exits (the
parent checks the consumer).

Settings (each peer's documented knobs for throughput, acking after the handler returns; the
benchmark runs each peer in its best configuration, see bench/peers.py):

- taskiq-nats (pull only): ``PullBasedJetStreamBroker`` with a durable pull consumer and
  ``pull_consume_batch=B`` (the default of 1 is one fetch round trip per job); taskiq's
  ``Receiver`` with ``max_async_tasks=C`` (the CLI's ``--max-async-tasks``) and the default
  ``ack_type=WHEN_SAVED`` (ack after the task and its no-op result save).
- FastStream, ``--mode pull``: a JetStream pull subscriber with a durable and
  ``PullSub(batch_size=B)``. With C >= B, each fetch of up to B messages is handled concurrently
  in a task group, then the next fetch goes out (``max_workers`` left at its default: fetching
  on while jobs run measured 1.8x slower with no-op jobs); with C < B, ``max_workers=C`` keeps
  at most C handlers running, fetching on meanwhile.
- FastStream, ``--mode push``: a JetStream push subscriber with a durable (the server pushes up
  to its default max_ack_pending of 1,000 unacked messages) and ``max_workers=C``.
- FastStream, both: default ``AckPolicy.REJECT_ON_ERROR``: ack after the handler.

Neither peer logs per job here: taskiq's loggers have no handler configured (its CLI would log a
line per task at INFO), and FastStream's broker gets ``logger=None`` (its default logs two lines
per message).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import TYPE_CHECKING

from .procs import peak_rss_kb

if TYPE_CHECKING:
    from taskiq_nats import PullBasedJetStreamBroker

TASK_NAME = "bench_noop"
DURABLE = "bench-worker"


class Tally:
    """Counts handled jobs and times the first start and the last end."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.count = 0
        self.first: float | None = None
        self.last = 0.0
        self.done = asyncio.Event()

    def start(self) -> None:
        """A handler starts."""
        if self.first is None:
            self.first = time.time()

    def end(self) -> None:
        """A handler ends."""
        self.last = time.time()
        self.count += 1
        if self.count >= self.jobs:
            self.done.set()

    def report(self) -> str:
        """The JSON result line."""
        return json.dumps(
            {
                "count": self.count,
                "first": self.first,
                "last": self.last,
                "maxrss_kb": peak_rss_kb(),
            }
        )


def taskiq_broker(url: str, stream: str, subject: str, batch: int) -> PullBasedJetStreamBroker:
    """The taskiq-nats JetStream pull broker both sides use."""
    from taskiq_nats import PullBasedJetStreamBroker

    return PullBasedJetStreamBroker(
        url, subject=subject, stream_name=stream, durable=DURABLE, pull_consume_batch=batch
    )


async def run_taskiq(args: argparse.Namespace, tally: Tally) -> None:
    """Consume with taskiq's own Receiver (what ``taskiq worker`` runs)."""
    from taskiq.receiver import Receiver

    broker = taskiq_broker(args.url, args.stream, args.subject, args.batch)
    broker.is_worker_process = True

    async def noop(n: int) -> None:
        tally.start()
        tally.end()

    broker.register_task(noop, task_name=TASK_NAME)
    receiver = Receiver(broker, max_async_tasks=args.concurrency, run_startup=False)
    await broker.startup()
    print("ready", flush=True)
    finish = asyncio.Event()
    listening = asyncio.create_task(receiver.listen(finish))
    await tally.done.wait()
    finish.set()  # the receiver stops fetching and waits for running tasks (and their acks)
    await listening
    await broker.shutdown()  # closing the connection flushes the last acks


async def run_faststream(args: argparse.Namespace, tally: Tally) -> None:
    """Consume with a FastStream JetStream pull or push subscriber."""
    from faststream.nats import JStream, NatsBroker, PullSub

    broker = NatsBroker(args.url, logger=None)
    stream = JStream(args.stream, declare=False)

    async def noop(n: int) -> None:
        tally.start()
        tally.end()

    if args.mode == "push":
        broker.subscriber(
            args.subject, stream=stream, durable=DURABLE, max_workers=args.concurrency
        )(noop)
    else:
        broker.subscriber(
            args.subject,
            stream=stream,
            durable=DURABLE,
            pull_sub=PullSub(batch_size=args.batch),
            max_workers=args.concurrency if args.concurrency < args.batch else None,
        )(noop)

    await broker.connect()
    print("ready", flush=True)
    await broker.start()
    await tally.done.wait()
    await broker.stop()  # waits for in-flight messages (and their acks), then closes


async def main() -> None:
    """Parse the arguments, consume the jobs, print the result line."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer_worker")
    parser.add_argument("peer", choices=["taskiq", "faststream"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--mode", choices=["pull", "push"], default="pull", help="FastStream")
    parser.add_argument("--batch", type=int, default=100, help="messages per pull")
    args = parser.parse_args()
    tally = Tally(args.jobs)
    run = run_taskiq if args.peer == "taskiq" else run_faststream
    await run(args, tally)
    print(tally.report(), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
