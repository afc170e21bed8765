"""JetStream assets per queue, for each strategy: ``python -m bench.assets``.

For each strategy (fifo, lifo, priority), in a fresh namespace: define a queue with that
strategy, add one job, start a worker on it in this process and let it complete the job, so that
every stream and consumer the queue uses exists; then, while the worker still runs, list the
streams and their consumers on a plain nats-py connection (``streams_info``,
``consumers_info``). The queue's own streams are those whose name ends in ``_<queue>`` (its
work stream, state index and job-record bucket), with the consumers on them; the namespace's
shared ones (the lease, queue-state and flow-edge buckets, the dead-letter and rate streams) and
the consumers on them (KV watchers, for one) are counted apart: every queue of the namespace
shares them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import nats
from nats.js import JetStreamContext

from oqron_nats import JobContext, queue, worker
from oqron_nats.core.job import Strategy
from oqron_nats.testing.server import LocalServer

from . import ours

QUEUE = "assets"
STRATEGIES: tuple[Strategy, ...] = ("fifo", "lifo", "priority")
MAX_STREAMS = 3
MAX_CONSUMERS = 2


@dataclass(frozen=True)
class Assets:
    """What one queue of one strategy has in JetStream, and what its namespace shares."""

    strategy: Strategy
    namespace: str
    streams: dict[str, int]
    """The queue's own streams, each with its number of consumers."""
    shared: dict[str, int]
    """The namespace's shared streams, each with its number of consumers."""

    @property
    def consumers(self) -> int:
        """Consumers on the queue's own streams."""
        return sum(self.streams.values())

    @property
    def holds(self) -> bool:
        """At most MAX_STREAMS streams and MAX_CONSUMERS consumers of the queue's own."""
        return len(self.streams) <= MAX_STREAMS and self.consumers <= MAX_CONSUMERS


async def noop(ctx: JobContext[Any]) -> None:
    """The job does nothing."""


async def measure(url: str, strategy: Strategy) -> Assets:
    """Create a queue of ``strategy`` with a job and a running worker; count its assets."""
    async with (
        ours.fresh_client(url) as client,
        queue(QUEUE, strategy=strategy, client=client) as q,
    ):
        await q.add({"n": 0})
        consumer = worker(QUEUE, noop, strategy=strategy, client=client)
        await consumer.start()
        try:
            await ours.until_completed(q, 1)
            streams = await consumers_by_stream(url, client.namespace)
        finally:
            await consumer.stop(5.0)
    own = {name: n for name, n in streams.items() if name.endswith(f"_{QUEUE}")}
    shared = {name: n for name, n in streams.items() if name not in own}
    return Assets(strategy, client.namespace, own, shared)


async def consumers_by_stream(url: str, namespace: str) -> dict[str, int]:
    """Every stream whose name holds ``namespace``, with its number of consumers."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        names = [name for name in await stream_names(js) if namespace in name]
        return {name: len(await js.consumers_info(name)) for name in names}
    finally:
        await nc.close()


async def stream_names(js: JetStreamContext) -> list[str]:
    """The names of every stream on the server, page after page."""
    names: list[str] = []
    while page := await js.streams_info(offset=len(names)):
        names += [info.config.name for info in page if info.config.name]
    return names


async def measure_all(url: str) -> list[Assets]:
    """The assets of a queue of each strategy."""
    return [await measure(url, strategy) for strategy in STRATEGIES]


def plural(count: int, thing: str) -> str:
    """``1 stream``, ``3 streams``."""
    return f"{count} {thing}" if count == 1 else f"{count} {thing}s"


def summary(assets: Assets) -> str:
    """The queue's own streams and consumers, counted."""
    return f"{plural(len(assets.streams), 'stream')}, {plural(assets.consumers, 'consumer')}"


def describe(assets: Assets) -> str:
    """The queue's own streams with their consumers, and the namespace's shared ones."""
    own = ", ".join(
        f"{name.replace(assets.namespace, '<ns>')} ({n})"
        for name, n in sorted(assets.streams.items())
    )
    shared = plural(sum(assets.shared.values()), "consumer")
    return (
        f"consumers per stream: {own}; shared by the namespace's queues: "
        f"{plural(len(assets.shared), 'stream')}, {shared}"
    )


def main() -> None:
    """Count on a server of its own; print one line per strategy."""
    with LocalServer() as server:
        for assets in asyncio.run(measure_all(server.url)):
            print(f"{assets.strategy}: {summary(assets)}; {describe(assets)}")


if __name__ == "__main__":
    main()
