"""NATS that does not answer for a while (issue 10): a stalled server, a dropped connection, a
cluster without quorum. Nothing is fatal before the retry deadline, every wait of the claim
loop ends, a reconnect sends no consumer update, and a claim slower than its lease runs nothing.

The leader kills of a real cluster under load are in the cluster chaos suite; these tests pin
down each mechanism on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from typing import Any

import pytest

from oqron_nats import Client, EnqueueError, JobContext, JobState, OqronError, Unavailable, queue
from oqron_nats._nats import Nats, stranded
from oqron_nats._nats.direct import new_client
from oqron_nats._nats.kv import Bucket
from oqron_nats._nats.replies import transient_error
from oqron_nats.storage.store import JobStore
from oqron_nats.testing.cluster import LocalCluster
from oqron_nats.testing.server import LocalServer

from .helpers import eventually, holds, wait_for_state
from .proxy import TcpProxy
from .support import Backstage
from .test_runner import WorkerCli


async def nothing(ctx: JobContext[Any]) -> None:
    return None


def test_only_what_a_cluster_answers_while_it_elects_is_asked_again() -> None:
    def error(code: int, err_code: int) -> bytes:
        return b'{"error":{"code":%d,"err_code":%d,"description":"x"}}' % (code, err_code)

    assert transient_error(b'{"stream":"S","seq":3}') is None
    assert transient_error(error(503, 10008)) is not None  # no meta leader
    assert transient_error(error(500, 10009)) is not None  # not the leader any more
    assert transient_error(error(503, 10163)) is not None  # a new leader, CAS not ready yet
    assert transient_error(error(404, 10059)) is None  # stream not found: an answer
    assert transient_error(error(503, 10077)) is None  # maximum messages exceeded: an answer
    assert transient_error(error(400, 10071)) is None  # wrong last sequence: a CAS conflict
    assert transient_error(error(400, 10164)) is not None  # a write to the key still in flight


class GuardedServer(LocalServer):
    """A server with an admin user and a worker user whose consumer creations can be denied
    (the config is rewritten and reloaded with SIGHUP)."""

    deny_consumer_create = False

    def _extra_config(self) -> str:
        deny = '"$JS.API.CONSUMER.CREATE.>"' if self.deny_consumer_create else '"nothing.denied"'
        return (
            "authorization {\n  users = [\n    {user: admin, password: admin}\n"
            "    {user: worker, password: worker, "
            f"permissions: {{publish: {{deny: [{deny}]}}}}}}\n"
            "  ]\n}\n"
        )

    def reload(self, *, deny_consumer_create: bool) -> None:
        """Change what the worker user may do, on the running server."""
        self.deny_consumer_create = deny_consumer_create
        self._write_config()
        os.kill(self.pid, signal.SIGHUP)

    def url_for(self, user: str) -> str:
        return f"nats://{user}:{user}@127.0.0.1:{self.port}"


def test_a_server_is_left_after_a_stretch_of_silence_then_twice_as_late() -> None:
    """The rule of _nats/stranded.py, on a clock of its own: leave after LEAVE_AFTER seconds of
    unanswered requests (a gap longer than GAP starts a new stretch), then wait twice as long
    before leaving again, up to MOST_PATIENCE; an answer, or a dropped connection, starts over."""
    now = [0.0]

    def silent_for(seconds: float, every: float = 1.0) -> list[float]:
        """Unanswered requests every ``every`` s for ``seconds``; when each said to leave."""
        left = []
        for _ in range(round(seconds / every)):
            now[0] += every
            if watch.unanswered():
                left.append(now[0])
        return left

    watch = stranded.Stranded(clock=lambda: now[0])
    assert silent_for(40) == [16.0]  # 15 s after the first unanswered request (at 1 s)
    assert silent_for(10) == [47.0]  # then 30 s after the next one (at 17 s)
    watch.answered()
    assert silent_for(20) == [66.0], "an answer gives back the first patience"
    silent_for(10)  # 67 s to 76 s: a stretch begins (30 s of patience)
    now[0] += stranded.GAP + 1  # a quiet moment ends it
    assert silent_for(20, every=5) == [], "a new stretch from 92 s, not from 67 s"
    watch.interrupted()
    assert silent_for(25) == [], "counted again from 108 s"
    leaves = silent_for(1000)
    patience = [b - a for a, b in itertools.pairwise(leaves)]
    assert patience[:2] == [61.0, 121.0] and set(patience[1:]) == {stranded.MOST_PATIENCE + 1}


async def test_a_client_that_leaves_its_server_always_reconnects_to_another_one() -> None:
    """nats-py's ``force_reconnect`` shuffles the pool and may pick the server it leaves (one
    time in three here: a worker that left a node cut off from its cluster was back on it in two
    of three chaos runs, idle until the heal); ``leave_server`` never picks it, and gives the
    choice back to nats-py afterwards."""
    with LocalServer() as a, LocalServer() as b, LocalServer() as c:
        nc = new_client()
        await nc.connect(servers=[a.url, b.url, c.url], reconnect_time_wait=0)
        try:
            for _ in range(12):
                was = nc.connected_url.netloc if nc.connected_url else None

                async def elsewhere(was: str | None = was) -> bool:
                    now = nc.connected_url.netloc if nc.connected_url else None
                    return nc.is_connected and now != was

                await nc.leave_server()
                await eventually(elsewhere, timeout=5, what=f"a server other than {was}")
                assert nc._reconnect_to_server_handler is None, "nats-py chooses again"
        finally:
            await nc.close()


async def test_a_worker_claims_again_after_its_consumer_was_lost_and_recreating_it_failed() -> None:
    """The issue's stuck worker: its consumer was gone (its pull request with it), making sure
    it exists failed, and no pull request was open any more: the loop must look again by itself
    (nothing else wakes a fifo worker for a new job)."""
    with GuardedServer() as server:
        admin = Client(server.url_for("admin"), namespace="lost")
        client = Client(server.url_for("worker"), namespace="lost", request_timeout=0.5)
        q = queue("lost", nothing, client=client)
        async with admin, client, q:
            await q.add({}, job_id="before")
            await wait_for_state(q, "before", JobState.COMPLETED)
            server.reload(deny_consumer_create=True)
            await asyncio.sleep(0.5)
            await Backstage(admin, "lost").delete_consumer("fifo")
            await asyncio.sleep(3.0)  # re-creating it fails (denied: no answer) meanwhile
            server.reload(deny_consumer_create=False)
            await queue("lost", client=admin).add({}, job_id="after")
            await wait_for_state(q, "after", JobState.COMPLETED, timeout=15)


async def test_calls_that_nats_does_not_answer_fail_as_unavailable_after_the_deadline() -> None:
    with LocalServer() as server:
        client = Client(server.url, namespace="mute", request_timeout=0.3, retry_deadline=1.5)
        async with client:
            q = queue("mute", client=client)
            job = await q.add({"n": 1})
            os.kill(server.pid, signal.SIGSTOP)
            try:
                for call in (q.pause(), q.get_job(job.id), q.get_jobs(), q.count()):
                    with pytest.raises(Unavailable) as info:
                        await call
                    assert isinstance(info.value, OqronError)
                    assert "retry deadline" in str(info.value)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert (await q.get_job(job.id)) is not None, "all is well once it answers"


async def test_an_add_whose_queue_nats_does_not_open_in_time_fails_as_not_added() -> None:
    """A queue's first add() looks its streams up (or creates them): when NATS does not answer
    within the deadline, add() raises EnqueueError like any add that failed before its record
    (nothing stored), and add_bulk() says so for each item; a bare Unavailable got out before
    (found with a publisher on a cluster node cut off from the others, tests/test_cluster.py)."""
    with LocalServer() as server:
        client = Client(server.url, namespace="unopened", request_timeout=0.3, retry_deadline=1.5)
        async with client:
            q = queue("unopened", client=client)
            os.kill(server.pid, signal.SIGSTOP)
            try:
                with pytest.raises(EnqueueError) as info:
                    await q.add({"n": 1}, job_id="one")
                assert info.value.job_id == "one" and not info.value.outcome_unknown
                assert "could not be opened" in str(info.value)
                bulk = await q.add_bulk([{"data": {"n": 2}, "opts": {"job_id": "two"}}])
                (error,) = bulk.errors.values()
                assert isinstance(error, EnqueueError) and error.job_id == "two"
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert (await q.add({"n": 1}, job_id="one")).id == "one"
            assert await q.count(JobState.WAITING) == 1


async def test_a_reconnect_sends_no_consumer_pause_or_resume(
    nats_server: LocalServer, namespace: str
) -> None:
    """After a reconnect the worker reads the queue state again; a state its consumers already
    have must not send a pause or resume (it would fight a failover for nothing)."""
    seen: list[str] = []

    async def spy(msg: Any) -> None:
        seen.append(msg.subject)

    assert nats_server.port is not None
    async with (
        TcpProxy(nats_server.port) as proxy,
        Client(nats_server.url, namespace=namespace) as admin,
    ):
        await Backstage(admin, "follow").watch_consumer_pauses(spy)
        worker_client = Client(proxy.url, namespace=namespace)
        q = queue("follow", nothing, client=worker_client, strategy="priority")
        async with worker_client, q:
            for n in range(3):
                connections = proxy.connections
                proxy.cut()

                async def reconnected(c: int = connections) -> bool:
                    return proxy.connections > c and worker_client.connected

                await eventually(reconnected, what="the worker to reconnect")
                await q.add({}, job_id=f"j{n}")
                await wait_for_state(q, f"j{n}", JobState.COMPLETED)
            await asyncio.sleep(0.5)
            assert seen == [], "a reconnect paused or resumed consumers"
            await queue("follow", client=admin).pause()
            await eventually(lambda: holds(len(seen) >= 1), what="the pause of the consumer")


async def test_a_pause_missed_while_disconnected_is_followed_after_the_reconnect(
    nats_server: LocalServer, namespace: str
) -> None:
    ran: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ran.append(ctx.id)

    assert nats_server.port is not None
    async with (
        TcpProxy(nats_server.port) as proxy,
        Client(nats_server.url, namespace=namespace) as admin,
    ):
        worker_client = Client(proxy.url, namespace=namespace)
        q = queue("missed", handler, client=worker_client)
        publisher = queue("missed", client=admin)
        async with worker_client, q:
            await publisher.add({}, job_id="first")
            await wait_for_state(publisher, "first", JobState.COMPLETED)
            proxy.refusing = True  # the worker stays cut off while the queue is paused
            proxy.cut()
            await publisher.pause()
            proxy.refusing = False
            await eventually(lambda: holds(worker_client.connected), what="the reconnect")
            behind = Backstage(admin, "missed")

            async def consumer_paused() -> bool:
                info = await behind.consumer_info("fifo")
                return bool(info.paused)

            await eventually(consumer_paused, what="the worker to pause its consumer")
            await publisher.add({}, job_id="held")
            await asyncio.sleep(1.0)
            assert ran == ["first"], "a job ran on a paused queue"
            await publisher.resume()
            await wait_for_state(publisher, "held", JobState.COMPLETED)


async def test_a_claim_slower_than_its_lease_runs_no_handler_without_the_lease(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record write of a claim waits out an election longer than lock_ttl: the job may be
    another worker's by then, so the claim takes the lease before the handler runs (the first
    heartbeat would be too late), and runs nothing without it."""
    lock_ttl, heartbeat = 2.0, 0.5
    update = JobStore.update
    held_back: list[str] = []

    async def slow_active_write(self: JobStore, job: Any, *args: Any, **kwargs: Any) -> int:
        if args[1] == "active" and not held_back:
            held_back.append(job.id)
            await asyncio.sleep(lock_ttl + 0.5)  # the lease's TTL runs out meanwhile
        return await update(self, job, *args, **kwargs)

    monkeypatch.setattr(JobStore, "update", slow_active_write)
    behind = Backstage(client, "slow-claim")
    lease_seen: list[int | None] = []

    async def handler(ctx: JobContext[Any]) -> None:
        entry = await behind.lease(ctx.id)
        lease_seen.append(entry.revision if entry else None)
        assert ctx.fencing_token == (await behind.record(ctx.id)).revision, "the claim's write"

    q = queue("slow-claim", handler, client=client, lock_ttl=lock_ttl, heartbeat=heartbeat)
    async with q:
        await q.add({}, job_id="j")
        done = await wait_for_state(q, "j", JobState.COMPLETED, timeout=20)
    assert held_back == ["j"]
    assert len(lease_seen) == 1, f"the handler ran {len(lease_seen)} times"
    assert lease_seen[0] is not None, "the handler ran without its lease"
    assert done.stalled_count == 0, "nobody else took the job meanwhile"


@pytest.mark.cluster
@pytest.mark.timeout(180)
async def test_a_worker_waits_for_a_cluster_without_quorum_and_gives_up_with_exit_3(
    namespace: str,
) -> None:
    with LocalCluster(3) as cluster:
        first, *others = cluster.nodes
        for node in others:
            cluster.kill(node.name)  # one node of three: no meta leader, JetStream cannot answer
        os.environ["OQRON_RETRY_DEADLINE"] = "4"
        try:
            impatient = WorkerCli(first.url, namespace, "quorum", "tests.cli_worker:plain")
        finally:
            del os.environ["OQRON_RETRY_DEADLINE"]
        assert await asyncio.to_thread(impatient.wait, 60) == 3
        output = "".join(impatient.lines)
        assert "NATS did not answer" in output
        assert "Traceback" not in output, output

        patient = WorkerCli(cluster.url, namespace, "quorum", "tests.cli_worker:plain")
        try:
            await asyncio.sleep(2.0)  # waiting, not exiting
            assert patient.process.poll() is None, "".join(patient.lines)
            for node in others:
                await asyncio.to_thread(cluster.restart, node.name)
            await patient.said("workers running", timeout=60)
            async with Client(cluster.urls, namespace=namespace) as client:
                job = await queue("quorum", client=client).add({"n": 1})
                await wait_for_state(queue("quorum", client=client), job.id, JobState.COMPLETED)
        finally:
            patient.signal(signal.SIGTERM)
            assert await asyncio.to_thread(patient.wait, 60) == 0


async def test_requests_lost_with_a_connection_are_asked_again_at_once(
    nats_server: LocalServer, namespace: str
) -> None:
    """A request whose connection dropped has lost its reply: it is asked again as soon as the
    client has reconnected, not after the request timeout (30 s here)."""
    assert nats_server.port is not None
    async with TcpProxy(nats_server.port) as proxy:
        client = Client(proxy.url, namespace=namespace, request_timeout=30.0)
        async with client:
            q = queue("lost-reply", client=client)
            job = await q.add({"n": 1})
            proxy.stall()  # the request goes out, its reply does not come back
            reading = asyncio.create_task(q.get_job(job.id))
            await asyncio.sleep(0.3)
            proxy.cut()
            proxy.flow()
            found = await asyncio.wait_for(reading, 10)
            assert found is not None and found.id == job.id


async def test_a_hung_connection_is_given_up_within_seconds(
    nats_server: LocalServer, namespace: str
) -> None:
    """A server that hangs (SIGSTOP, a dead link that sends no reset) keeps the TCP connection
    open; only the missing PONGs tell. A worker must give such a connection up and fail over
    within seconds (nats-py's default: 2 minutes between PINGs)."""
    assert nats_server.port is not None
    async with TcpProxy(nats_server.port) as proxy:
        client = Client(proxy.url, namespace=namespace)
        async with client:
            q = queue("hung", client=client)
            job = await q.add({"n": 1})
            proxy.stall()
            await eventually(lambda: holds(proxy.connections > 1), timeout=10,
                             what="the client to give the hung connection up")  # fmt: skip
            proxy.flow()
            assert (await q.get_job(job.id)) is not None


def dropped_key(key: str, *args: Any, **kwargs: Any) -> bool:
    """Whether a KV write is the record of the job with id ``dropped``."""
    return key.endswith("dropped")


async def test_an_add_whose_connection_drops_after_its_record_is_counted(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link hangs right after an add's record was created, as its index entry (sent
    without waiting) and its message go out, then the connection drops: both are lost. Once
    the client is back the add is finished as a repeated add would finish it: the job has its
    message, and a count includes it (before: the message was asked again, the entry lost)."""
    assert nats_server.port is not None
    proxy = TcpProxy(nats_server.port)
    hung = proxy.drop_after(
        monkeypatch, Bucket, "create", lambda key, *_, **__: key.endswith("dropped")
    )
    async with (
        proxy,
        Client(proxy.url, namespace=namespace, request_timeout=30.0) as client,
    ):
        q = queue("dropped-add", client=client)
        await q.add({"n": 0}, job_id="before")
        job = await asyncio.wait_for(q.add({"n": 1}, job_id="dropped"), 30)
        assert hung.is_set() and job.id == "dropped"
        assert await q.count("waiting") == 2
        assert await Backstage(client, "dropped-add").lane_subjects() == {
            client.names("dropped-add").lane(0, "before"): 1,
            client.names("dropped-add").lane(0, "dropped"): 1,
        }


async def test_a_batch_read_lost_with_its_connection_is_asked_again_at_once(
    nats_server: LocalServer, namespace: str
) -> None:
    """A batch read (counts, pages, the index's repair) whose connection drops while it waits
    is asked again on the next connection at once, not after its request timeout (20 s here):
    its messages come on an inbox of its own, which the lost connection's abandoned requests
    did not cover."""
    assert nats_server.port is not None
    async with Client(nats_server.url, namespace=namespace) as direct:
        await queue("lost-read", client=direct).add({"n": 1}, job_id="read-me")
        async with (
            TcpProxy(nats_server.port) as proxy,
            Client(proxy.url, namespace=namespace, request_timeout=20.0) as client,
        ):
            backstage = Backstage(client, "lost-read")
            assert await backstage.index_states("read-me") == [JobState.WAITING]
            proxy.hang_then_drop(0.3)
            started = asyncio.get_running_loop().time()
            states = await asyncio.wait_for(backstage.index_states("read-me"), 30)
            assert states == [JobState.WAITING]
            assert asyncio.get_running_loop().time() - started < 10, "waited out its timeout"


async def test_a_cancel_whose_connection_drops_after_its_record_is_counted(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's move (here: cancel a waiting job) whose connection hangs right after the
    record's write was answered, then drops, with the index entry and marker in flight: they
    are asked again on the next connection, so the counts say cancelled (no delivery comes
    later to repair an operator's move: the job's message is dropped unrun)."""
    assert nats_server.port is not None
    proxy = TcpProxy(nats_server.port)
    hung = proxy.drop_after(
        monkeypatch, Bucket, "update", lambda key, *_, **__: key.endswith("dropped")
    )
    async with (
        proxy,
        Client(proxy.url, namespace=namespace, request_timeout=30.0) as client,
    ):
        q = queue("dropped-cancel", client=client)
        await q.add({"n": 0}, job_id="kept")
        await q.add({"n": 1}, job_id="dropped")
        assert await asyncio.wait_for(q.cancel("dropped"), 30)
        assert hung.is_set()
        assert await q.count("waiting") == 1
        assert await q.count("cancelled") == 1


async def test_a_cancel_goes_on_when_the_index_refuses_its_writes(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A cancel's index writes wait for their answers; when they still fail (the index stream
    without a leader for longer than the retry deadline), the failure is logged and the cancel
    goes on: the record says cancelled and the job's message is removed, so it never runs (a
    raise there left the message, and a second cancel found the job finished)."""
    real_publish = Nats.publish

    async def publish(
        self: Nats, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Any:
        if ".idx." in subject:
            raise Unavailable("NATS did not answer (the index stream has no leader)")
        return await real_publish(self, subject, payload, headers)

    async with Client(nats_server.url, namespace=namespace) as client:
        q = queue("unindexed", client=client)
        await q.add({"n": 1}, job_id="stopped")
        monkeypatch.setattr(Nats, "publish", publish)
        assert await q.cancel("stopped")
        monkeypatch.setattr(Nats, "publish", real_publish)
        job = await q.get_job("stopped")
        assert job is not None and job.state == JobState.CANCELLED
        assert await Backstage(client, "unindexed").lane_subjects() == {}
        assert "the state index did not take a move" in caplog.text
