"""A 3-node JetStream cluster (issue 6): kill -9 a leader mid-load, and no job is lost.

Every stream, bucket and consumer is created with three replicas. The test adds jobs at a steady
pace from this process (a client given all three URLs) while two worker processes
(``tests.chaos.worker``) run them; mid-load it kills -9 the node leading the queue's work stream,
keeps adding, and starts the node again on its store a few seconds later, still under load: so
the test also covers a node rejoining and catching up, and a later kill always finds a full
cluster (two nodes down would leave R3 groups without a quorum). The chaos checker
(``tests/chaos/checker.py``) then counts lost jobs and double completions from the handlers'
log and every final record. CI runs a small load; ``OQRON_CLUSTER_FULL=1`` runs 3,000 jobs and
kills four times, alternately the leader of the work stream and of the jobs bucket.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from oqron_nats import Client, JobContext, JobState, queue
from oqron_nats.cluster import LocalCluster

from .chaos import checker
from .chaos.harness import (
    NAMESPACE,
    QUEUE,
    Files,
    Scenario,
    Workers,
    drain,
    index_drift,
    produce,
    read_final_state,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]
FULL = os.environ.get("OQRON_CLUSTER_FULL") == "1"
T = TypeVar("T")
REPLICAS = 3


@dataclass(frozen=True)
class Plan:
    """A load and the leaders to kill during it."""

    jobs: int
    duration: float
    """Seconds over which the jobs are added."""
    kills: tuple[tuple[float, str], ...]
    """(when, as a fraction of the duration; whose leader: "stream" or "kv") per kill."""
    down: float
    """Seconds a killed node stays down before it is started again."""


PLAN = (
    Plan(jobs=3000, duration=60.0, down=4.0,
         kills=((0.15, "stream"), (0.35, "kv"), (0.55, "stream"), (0.75, "kv")))
    if FULL
    else Plan(jobs=300, duration=8.0, down=3.0, kills=((0.3, "stream"),))
)  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Three nats-server nodes on loopback, each with its own ports and temporary store."""
    with LocalCluster(REPLICAS) as nodes:
        yield nodes


async def leaders(client: Client, streams: list[str]) -> dict[str, str]:
    """The server_name of each stream's leader."""
    conn = await client.connect()
    found = {}
    for stream in streams:
        info = await conn.js.stream_info(stream)
        assert info.cluster is not None and info.cluster.leader, f"{stream} has no leader"
        found[stream] = info.cluster.leader
    return found


async def settled(read: Callable[[], Awaitable[T]], tries: int = 3) -> T:
    """A read of the final state, tried again if it timed out.

    A stream answers no JetStream API request (STREAM.INFO, as count() makes) while it elects a
    leader, and a restarted node can set off another election a moment after it is back; the
    reads are idempotent, so a timed-out one is simply made again.
    """
    for _ in range(tries - 1):
        try:
            return await read()
        except TimeoutError:
            continue
    return await read()


async def test_every_stream_bucket_and_consumer_has_three_replicas(
    cluster: LocalCluster, namespace: str
) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        return None

    async with Client(cluster.urls, namespace=namespace, replicas=REPLICAS) as client:
        q = queue(QUEUE, handler, client=client, strategy="priority")
        await q.add({"n": 1})
        await q.start()  # binds the consumers, one per priority lane
        try:
            conn = await client.connect()
            streams = [
                info
                for info in await conn.js.streams_info()
                if f"_{namespace}_" in (info.config.name or "")
            ]
            names = client.names(QUEUE)
            buckets = (names.jobs_bucket, names.locks_bucket, names.queues_bucket,
                       names.deps_bucket)  # fmt: skip
            expected = {names.stream, names.dlq_stream, names.rate_stream,
                        *(names.index_stream(state) for state in JobState),
                        *(f"KV_{bucket}" for bucket in buckets)}  # fmt: skip
            assert expected <= {info.config.name for info in streams}
            for info in streams:
                assert info.config.num_replicas == REPLICAS, info.config.name
                assert info.cluster is not None
                assert len(info.cluster.replicas or []) == REPLICAS - 1, info.config.name
            consumers = await conn.js.consumers_info(names.stream)
            assert len(consumers) == 10
            for consumer in consumers:
                assert consumer.config.num_replicas == REPLICAS, consumer.name
                assert consumer.cluster is not None
                assert len(consumer.cluster.replicas or []) == REPLICAS - 1, consumer.name
        finally:
            await q.stop()


async def test_the_cluster_says_who_leads_what_and_who_is_connected_where(
    cluster: LocalCluster, namespace: str
) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        return None

    async with Client(cluster.urls, namespace=namespace, replicas=REPLICAS) as client:
        q = queue(QUEUE, handler, client=client)
        await q.add({"n": 1})
        await q.start()
        try:
            conn = await client.connect()
            names = client.names(QUEUE)
            stream = await conn.js.stream_info(names.stream)
            consumer = await conn.js.consumer_info(names.stream, "fifo")
            assert stream.cluster is not None and consumer.cluster is not None
            assert cluster.stream_leader(names.stream) == stream.cluster.leader
            assert cluster.consumer_leader(names.stream, "fifo") == consumer.cluster.leader
            assert cluster.stream_leader("NO_SUCH_STREAM") is None
            assert cluster.meta_leader() in {node.name for node in cluster.nodes}
            assert cluster.connected_node(client.name) == conn.server_name
            assert cluster.connected_node("nobody") is None
        finally:
            await q.stop()


def test_a_suspended_node_answers_nothing_until_resumed(cluster: LocalCluster) -> None:
    node = cluster.nodes[0]
    cluster.suspend(node.name)
    try:
        assert node.is_running() and not node.answering
        assert not node.healthy()
        assert node.monitor("/varz") is None
        assert node not in cluster.answering()
        cluster.wait_healthy()  # the others; a suspended node is not waited for
    finally:
        cluster.resume(node.name)
    cluster.wait_healthy([node])
    assert node.monitor("/varz") is not None


async def test_killing_a_leader_mid_load_loses_no_job_and_completes_none_twice(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = Files(tmp_path)
    scenario = Scenario(
        "cluster", "3-node R3 cluster, leaders killed mid-load", jobs=PLAN.jobs,
        duration=PLAN.duration, workers=2,
    )  # fmt: skip
    monkeypatch.setenv("OQRON_REPLICAS", str(REPLICAS))  # the workers' streams and consumers
    workers = Workers(scenario, cluster.url, files.handler)  # given every node's URL
    killed: list[dict[str, Any]] = []
    try:
        for _ in range(scenario.workers):
            await asyncio.to_thread(workers.spawn)
        async with Client(cluster.urls, namespace=NAMESPACE, replicas=REPLICAS) as client:
            q = queue(QUEUE, client=client)
            names = client.names(QUEUE)
            watched = [names.stream, f"KV_{names.jobs_bucket}", f"KV_{names.locks_bucket}",
                       *(names.index_stream(state) for state in JobState)]  # fmt: skip
            producing = asyncio.create_task(produce(scenario, q, files, random.Random(1)))
            start = time.monotonic()
            for at, whose in PLAN.kills:
                await asyncio.sleep(max(0.0, start + at * PLAN.duration - time.monotonic()))
                led = await settled(lambda: leaders(client, watched))
                node = cluster.node(led[watched[0] if whose == "stream" else watched[1]])
                pid = node.pid
                cluster.kill(node.name)
                Files.append(files.faults, {"t": time.time(), "kind": "kill_server", "pid": pid})
                held = [stream for stream in watched if led[stream] == node.name]
                killed.append({"node": node.name, "leader of": held})
                await asyncio.sleep(PLAN.down)
                await asyncio.to_thread(cluster.restart, node.name)
                Files.append(
                    files.faults, {"t": time.time(), "kind": "restart_server", "pid": node.pid}
                )
            await producing
            await settled(lambda: drain(q, files, timeout=120.0))
            await asyncio.to_thread(workers.stop_all)
            finals, dead = await settled(lambda: read_final_state(q))
            drift = await settled(lambda: index_drift(q))
    finally:
        await asyncio.to_thread(workers.stop_all)
        await asyncio.to_thread(cluster.start)  # every node up again for the next test
    report = checker.check(
        checker.enqueues_from_lines(checker.load_jsonl(files.enqueues)),
        *checker.parse_handler_log(checker.load_jsonl(files.handler)),
        checker.faults_from_lines(checker.load_jsonl(files.faults)),
        finals,
        dead,
    )
    summary = "\n".join([f"killed: {killed}", *report.lines(), f"index drift: {drift}"])
    print(summary)
    assert len(killed) == len(PLAN.kills)
    assert len(report.accepted) == PLAN.jobs, summary
    assert not report.lost, summary
    assert not report.double_completions, summary
    assert not report.unrecorded_completions, summary
    assert not report.completed_again, summary
    assert not report.dead_letter_problems, summary
    # Duplicate executions are allowed (a job may run again after a fault; it completes once).
    # The checker blames a broker kill only when it falls between the two starts, so a claim
    # held up by an election before both starts counts as "unexplained": not asserted here.
    # a finished job's index entry is an acked publish on replicated streams (retried through
    # the election); stale unfinished entries are repaired by listing (index_drift lists)
    assert not drift, summary
