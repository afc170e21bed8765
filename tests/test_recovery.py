"""Crash recovery against a real server: stalls, poison jobs, the stall scanner, reconciliation.

Worker processes are killed with ``kill -9``; every check reads what NATS holds (records, stream
messages, leases, dead letters), never a mock.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import msgspec

from oqron_nats import Client, Job, JobContext, JobState, Queue, queue
from oqron_nats._nats import Msg
from oqron_nats.core.config import Reconciliation
from oqron_nats.queue import parse_options
from oqron_nats.runtime.maintenance import Maintenance, Reconciled, reconcile, scan_stalls
from oqron_nats.testing.server import LocalServer

from .helpers import WorkerProcess, eventually, read_log, wait_for_state
from .support import Backstage

WAIT = 20.0
"""Generous bound for anything that should happen within a redelivery or two."""


class Leases(TypedDict):
    """The lease options of queue() (and of a worker process)."""

    lock_ttl: float
    heartbeat: float


FAST = Leases(lock_ttl=2, heartbeat=0.5)
"""Short leases: ack_wait = lock_ttl + heartbeat + 1 = 3.5 s."""
HEAL_NOW = Reconciliation(waiting_threshold=0, delayed_grace=0)


# -- helpers ----------------------------------------------------------------------------------


async def spawn(server: LocalServer, namespace: str, log: Path, **options: Any) -> WorkerProcess:
    """Start a worker process without blocking the event loop while it boots."""
    return await asyncio.to_thread(WorkerProcess, server.url, namespace, log, **options)


async def spawn_may_die(
    server: LocalServer, namespace: str, log: Path, **options: Any
) -> WorkerProcess | None:
    """A worker process, or None if it died as it became ready (it took a poison job at once)."""
    try:
        return await spawn(server, namespace, log, **options)
    except AssertionError:
        return None


def starts(log: Path, job_id: str) -> list[dict[str, Any]]:
    """The start lines a worker process logged for ``job_id``."""
    return [e for e in read_log(log) if e["event"] == "start" and e["job"] == job_id]


async def started(log: Path, job_id: str, n: int = 1) -> bool:
    return len(starts(log, job_id)) >= n


async def current(q: Queue[Any], job_id: str) -> Job[Any]:
    job = await q.get_job(job_id)
    assert job is not None, f"job {job_id} has a record"
    return job


async def lane_subjects(client: Client, name: str) -> dict[str, int]:
    """The subjects holding messages in the queue's stream, with their counts."""
    return await Backstage(client, name).work_subjects()


async def completes(q: Queue[Any], job_id: str) -> Job[Any]:
    """The job once completed; on timeout the failure says where the job was left."""
    try:
        return await wait_for_state(q, job_id, JobState.COMPLETED, timeout=WAIT)
    except AssertionError:
        job = await current(q, job_id)
        names = q.client.names(q.name)
        left = await lane_subjects(q.client, q.name)
        raise AssertionError(
            f"job {job_id} never completed: it was left {job.state} (msg_seq={job.msg_seq}, "
            f"stalled_count={job.stalled_count}) with its messages in the stream: "
            f"{ {s: n for s, n in left.items() if s.endswith(job_id)} } "
            f"(stream {names.stream})"
        ) from None


async def set_within(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), WAIT)
    except TimeoutError:
        raise AssertionError(f"timed out after {WAIT}s waiting for {what}") from None


def blocking_handler(runs: list[str], started_event: asyncio.Event, release: asyncio.Event) -> Any:
    """A handler that records each run and waits for ``release`` before it returns."""

    async def handler(ctx: JobContext[Any]) -> str:
        runs.append(ctx.id)
        started_event.set()
        await release.wait()
        return "done"

    return handler


# -- 1. a stall shows up between the two runs -------------------------------------------------


async def test_stall_recovery_writes_stalled_between_the_two_runs(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    name, job_id = "stall-seq", "stall-me"
    log = tmp_path / "executions.jsonl"
    q = queue(name, client=client, **FAST)
    await q.count()  # provisions the buckets and the stream
    writes: list[dict[str, Any]] = []

    async def on_write(msg: Msg) -> None:
        writes.append(msgspec.json.decode(msg.data))

    sub = await Backstage(client, name).watch_stored_record(job_id, on_write)
    doomed = await spawn(nats_server, namespace, log, queue=name, sleep=60, **FAST)
    survivor = None
    try:
        await q.add({"n": 1}, job_id=job_id)
        await eventually(lambda: started(log, job_id), WAIT, "the first worker to start the job")
        doomed.kill()
        killed_at = time.time()
        survivor = await spawn(nats_server, namespace, log, queue=name, sleep=0, **FAST)
        done = await wait_for_state(q, job_id, JobState.COMPLETED, timeout=WAIT)

        async def five_writes() -> bool:
            return len(writes) >= 5

        await eventually(five_writes, WAIT, "every write of the record to arrive")
        await asyncio.sleep(0.3)  # nothing more may follow
    finally:
        await sub.unsubscribe()
        doomed.close()
        if survivor is not None:
            survivor.close()

    assert [w["state"] for w in writes] == ["waiting", "active", "stalled", "active", "completed"]
    assert [w.get("stalled_count", 0) for w in writes] == [0, 0, 1, 1, 1]
    assert [w.get("attempt", 0) for w in writes] == [0, 1, 1, 1, 1], "a stall is not an attempt"
    assert writes[1].get("leased") is True and writes[3].get("leased") is True
    assert writes[2].get("leased", False) is False, "the stalled write drops the dead lease"
    assert writes[1]["worker"] != writes[3]["worker"], "the second run is another worker's"
    assert done.stalled_count == 1 and done.attempt == 1
    assert done.result == {"pid": survivor.pid}
    first, rerun = starts(log, job_id)
    assert (first["pid"], rerun["pid"]) == (doomed.pid, survivor.pid)
    assert rerun["t"] - killed_at < FAST["lock_ttl"] + 5, "rerun within lock_ttl + a few seconds"


# -- 2. poison jobs ---------------------------------------------------------------------------


async def test_a_job_that_kills_its_workers_fails_as_stalled_and_is_dead_lettered(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    name = "poison"
    log = tmp_path / "executions.jsonl"
    options = {"queue": name, "lock_ttl": 1, "heartbeat": 0.2, "max_stalled_count": 1}
    q = queue(name, client=client, lock_ttl=1, heartbeat=0.2)
    healthy = [await q.add({"n": i}) for i in range(3)]
    poison = await q.add({"crash": True})
    healthy += [await q.add({"n": i}) for i in range(3, 6)]
    workers: list[WorkerProcess | None] = []
    try:
        deadline = time.monotonic() + 60
        while not (await current(q, poison.id)).is_terminal:
            assert time.monotonic() < deadline, "the poison job never became terminal"
            last = workers[-1] if workers else None
            if last is None or last.process.poll() is not None:
                assert len(workers) < 6, f"the poison job kept killing workers: {workers}"
                workers.append(await spawn_may_die(nats_server, namespace, log, **options))
            await asyncio.sleep(0.05)
        for job in healthy:
            await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
    finally:
        for w in workers:
            if w is not None:
                w.close()

    failed = await current(q, poison.id)
    assert failed.state == JobState.FAILED
    assert failed.error is not None and failed.error.type == "Stalled"
    assert failed.stalled_count == 2
    assert failed.attempt == 1, "stalls are not attempts"
    runs = starts(log, poison.id)
    assert len(runs) == 2, "max_stalled_count=1: one first run and one rerun, then it fails"
    killed = {r["pid"] for r in runs}
    assert len(killed) == 2, "each run was in another process"
    for w in workers:
        if w is not None and w.pid in killed:
            assert w.process.returncode == 3, "the job killed the process that ran it"
    survivor = workers[-1]
    assert survivor is not None and survivor.pid not in killed, "the last worker did not run it"
    for job in healthy:
        assert len(starts(log, job.id)) == 1, "a healthy job ran once"
    dead = await Backstage(client, name).dead_letter(poison.id)
    assert dead is not None, "the poison job is in the dead-letter stream"
    letter = msgspec.json.decode(dead.data)
    assert letter["state"] == "failed"
    assert letter["error"]["type"] == "Stalled"


# -- 3. the cross-node stall scanner heals an orphan --------------------------------------------


async def test_the_stall_scanner_heals_an_active_job_whose_lease_and_message_are_gone(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    name = "orphan"
    log = tmp_path / "executions.jsonl"
    q = queue(name, client=client, **FAST)
    behind = Backstage(client, name)
    doomed = await spawn(nats_server, namespace, log, queue=name, sleep=60, **FAST)
    plain = scanner = None
    try:
        job = await q.add({"n": 1})
        await eventually(lambda: started(log, job.id), WAIT, "worker A to start the job")
        running = await current(q, job.id)
        assert running.state == JobState.ACTIVE and running.leased
        doomed.kill()
        await behind.purge_lane(job.id, job.priority)
        assert await behind.work_messages() == 0, "no redelivery can come"

        plain = await spawn(nats_server, namespace, log, queue=name, sleep=0, **FAST)
        await asyncio.sleep(q.config.ack_wait + 2)
        stuck = await current(q, job.id)
        assert stuck.state == JobState.ACTIVE, "without the scanner nothing heals the job"
        assert stuck.stalled_count == 0

        scanner = await spawn(nats_server, namespace, log, queue=name, sleep=0, scanner=0.5, **FAST)
        done = await completes(q, job.id)
    finally:
        for w in (doomed, plain, scanner):
            if w is not None:
                w.close()
    assert done.stalled_count >= 1
    assert done.attempt == 1
    runs = starts(log, job.id)
    assert len(runs) == 2 and runs[0]["pid"] == doomed.pid


async def test_scan_stalls_re_enqueues_an_orphan_once_and_it_then_runs(client: Client) -> None:
    name = "orphan-pass"
    names = client.names(name)
    publisher = queue(name, client=client, **FAST)
    backend = await client._open_queue(publisher.config)
    behind = Backstage(client, name)
    job = await publisher.add({"n": 1})
    message = await behind.lane_message(job.id)
    assert message is not None
    # the state a worker that died mid-job leaves behind, after its message was lost too
    record = await backend.store.get(job.id)
    assert record is not None
    orphan = msgspec.structs.replace(
        record.job,
        state=JobState.ACTIVE,
        attempt=1,
        worker="dead",
        leased=True,
        msg_seq=message.seq,
    )
    await backend.store.update(orphan, record.revision, "active", record.job.state)
    await behind.purge_lane(job.id)
    assert await backend.leases.is_held(job.id) is False

    assert await scan_stalls(backend) == 1
    healed = await current(publisher, job.id)
    assert healed.state == JobState.STALLED
    assert healed.stalled_count == 1
    assert healed.leased is False and healed.worker is None
    assert await lane_subjects(client, name) == {names.lane(0, job.id): 1}, "re-enqueued"
    assert await scan_stalls(backend) == 0, "a healed job is not healed twice"

    runs: list[int] = []

    async def handler(ctx: JobContext[Any]) -> str:
        runs.append(ctx.attempt)
        return "rerun"

    q = queue(name, handler, client=client, **FAST)
    async with q:
        done = await completes(q, job.id)
    assert done.result == "rerun"
    assert done.stalled_count == 1
    assert runs == [1], "the stalled attempt runs again, as attempt 1"


# -- 4. the scanner leaves live and lease-less jobs alone ---------------------------------------


async def test_the_scanner_never_touches_a_job_with_a_live_lease(client: Client) -> None:
    name = "live"
    runs: list[str] = []
    running, release = asyncio.Event(), asyncio.Event()
    q = queue(name, blocking_handler(runs, running, release), client=client, **FAST)
    backend = await client._open_queue(q.config)
    async with q:
        job = await q.add({"n": 1})
        await set_within(running, "the handler to start")
        await Backstage(client, name).purge_lane(job.id, job.priority)
        before = await backend.store.get(job.id)
        assert before is not None and before.job.state == JobState.ACTIVE and before.job.leased
        for _ in range(6):  # 3 s: longer than lock_ttl, so the lease lives by its renewals
            assert await scan_stalls(backend) == 0
            await asyncio.sleep(0.5)
        after = await backend.store.get(job.id)
        assert after is not None
        assert after.revision == before.revision, "the record was not written"
        assert after.job == before.job
        release.set()
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
        await asyncio.sleep(0.5)
    assert runs == [job.id], "it ran exactly once"
    assert done.stalled_count == 0 and done.attempt == 1
    assert done.result == "done"


async def test_the_scanner_never_touches_a_job_that_took_no_lease(client: Client) -> None:
    name = "no-lease"
    runs: list[str] = []
    running, release = asyncio.Event(), asyncio.Event()
    q = queue(
        name,
        blocking_handler(runs, running, release),
        client=client,
        guaranteed_worker=False,
        **FAST,
    )
    backend = await client._open_queue(q.config)
    async with q:
        job = await q.add({"n": 1})
        await set_within(running, "the handler to start")
        await Backstage(client, name).purge_lane(job.id, job.priority)
        before = await backend.store.get(job.id)
        assert before is not None and before.job.state == JobState.ACTIVE
        assert before.job.leased is False
        assert await backend.leases.is_held(job.id) is False, "there is no lease to judge by"
        for _ in range(4):
            assert await scan_stalls(backend) == 0
            await asyncio.sleep(0.2)
        after = await backend.store.get(job.id)
        assert after is not None and after.revision == before.revision
        release.set()
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
    assert runs == [job.id]
    assert done.stalled_count == 0


# -- 5. one scanner at a time -----------------------------------------------------------------


async def test_only_one_maintenance_instance_runs_a_role_until_it_stops(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    name = "leader"
    config = queue(name, client=client).config
    ran: list[str] = []

    def recording(who: str) -> Any:
        async def one_pass() -> None:
            ran.append(who)

        return one_pass

    async with Client(nats_server.url, namespace=namespace) as other_client:
        first = Maintenance(await client._open_queue(config), "worker-1")
        second = Maintenance(await other_client._open_queue(config), "worker-2")
        try:
            first.start("stall-scanner", 0.2, recording("worker-1"))
            second.start("stall-scanner", 0.2, recording("worker-2"))
            await asyncio.sleep(2.0)
            assert len(set(ran)) == 1, f"two instances ran passes: {ran}"
            assert len(ran) >= 5, "the leader runs a pass every interval"
            leader, follower = (first, second) if ran[0] == "worker-1" else (second, first)
            await leader.stop()
            handed_over = len(ran)
            stopped_at = time.monotonic()

            async def follower_leads() -> bool:
                return ran[handed_over:].count(follower.worker_id) >= 3

            await eventually(follower_leads, 5.0, "the other instance to take the role over")
            assert time.monotonic() - stopped_at < 3.0, "released at stop(), not left to expire"
            assert set(ran[handed_over:]) == {follower.worker_id}
        finally:
            await first.stop()
            await second.stop()


# -- 6. reconciliation ------------------------------------------------------------------------


async def test_reconciliation_finds_nothing_to_heal_in_a_healthy_queue(client: Client) -> None:
    name = "healthy"
    running, release = asyncio.Event(), asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> str:
        if ctx.data.get("block"):
            running.set()
            await release.wait()
        return "ok"

    q = queue(name, handler, client=client, concurrency=1, **FAST)
    backend = await client._open_queue(q.config)
    async with q:
        completed = await q.add({"n": 1})
        await wait_for_state(q, completed.id, JobState.COMPLETED, timeout=WAIT)
        active = await q.add({"block": True})
        await set_within(running, "the blocking job to start")
        waiting = await q.add({"n": 2})  # the only slot is busy: it waits
        delayed = await q.add({"n": 3}, delay=60)
        lane = backend.names.lane(0, completed.id)
        await eventually(
            lambda: _lacks(client, name, lane), WAIT, "the completed job's ack to land"
        )
        assert (await current(q, waiting.id)).state == JobState.WAITING
        assert (await current(q, delayed.id)).state == JobState.DELAYED
        assert (await current(q, active.id)).state == JobState.ACTIVE
        assert await reconcile(backend, HEAL_NOW) == Reconciled(requeued=0, removed=0)
        release.set()
        await wait_for_state(q, active.id, JobState.COMPLETED, timeout=WAIT)
        await wait_for_state(q, waiting.id, JobState.COMPLETED, timeout=WAIT)
    assert (await current(q, delayed.id)).state == JobState.DELAYED


async def _lacks(client: Client, name: str, subject: str) -> bool:
    return subject not in await lane_subjects(client, name)


async def test_reconciliation_re_enqueues_a_waiting_record_without_message(
    client: Client,
) -> None:
    name = "no-message"
    publisher = queue(name, client=client, **FAST)
    backend = await client._open_queue(publisher.config)
    # an add that stopped between the record and the publish
    _, record = publisher._new_job({"n": 1}, parse_options({"job_id": "half-added"}))
    await backend.store.create(record)
    behind = Backstage(client, name)
    assert await behind.work_messages() == 0
    assert await reconcile(backend, HEAL_NOW) == Reconciled(requeued=1, removed=0)
    assert await behind.work_messages() == 1
    assert await reconcile(backend, HEAL_NOW) == Reconciled(requeued=0, removed=0)

    q = queue(name, _ok, client=client, **FAST)
    async with q:
        done = await wait_for_state(q, "half-added", JobState.COMPLETED, timeout=WAIT)
    assert done.result == "ok" and done.attempt == 1


async def _ok(ctx: JobContext[Any]) -> str:
    return "ok"


async def test_reconciliation_re_enqueues_an_overdue_delayed_job_whose_schedule_is_gone(
    client: Client,
) -> None:
    name = "lost-schedule"
    publisher = queue(name, client=client, **FAST)
    backend = await client._open_queue(publisher.config)
    names = backend.names
    job = await publisher.add({"n": 1}, delay=1.5)
    assert await lane_subjects(client, name) == {names.schedule(job.id): 1}
    behind = Backstage(client, name)
    await behind.purge_schedule(job.id)
    assert await behind.work_messages() == 0
    assert await reconcile(backend, HEAL_NOW) == Reconciled(requeued=0, removed=0), "not due yet"
    assert job.run_at is not None
    await asyncio.sleep(max(0.0, (job.run_at - datetime.now(UTC)).total_seconds()) + 0.3)
    assert await reconcile(backend, HEAL_NOW) == Reconciled(requeued=1, removed=0)
    assert await lane_subjects(client, name) == {names.lane(0, job.id): 1}

    q = queue(name, _ok, client=client, **FAST)
    async with q:
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
    assert done.attempt == 1


async def test_reconciliation_removes_a_message_whose_record_was_deleted(client: Client) -> None:
    name = "no-record"
    publisher = queue(name, client=client, **FAST)
    backend = await client._open_queue(publisher.config)
    names = backend.names
    kept = await publisher.add({"n": 1})
    gone = await publisher.add({"n": 2})
    await Backstage(client, name).delete_record(gone.id)
    assert await publisher.get_job(gone.id) is None
    assert await reconcile(backend, HEAL_NOW) == Reconciled(requeued=0, removed=1, reindexed=1)
    assert await lane_subjects(client, name) == {names.lane(0, kept.id): 1}, "only its own"
    assert await reconcile(backend, HEAL_NOW) == Reconciled(requeued=0, removed=0)


async def test_reconciliation_removes_a_message_of_a_completed_job(client: Client) -> None:
    name = "done-copy"
    q = queue(name, _ok, client=client, **FAST)
    backend = await client._open_queue(q.config)
    names = backend.names
    async with q:
        job = await q.add({"n": 1})
        await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
    await eventually(lambda: _lacks(client, name, names.lane(0, job.id)), WAIT, "the ack")
    # a stray copy nobody will consume (no consumer is running now)
    behind = Backstage(client, name)
    await behind.publish_on_lane(job.id, msg_id="copy")
    assert await lane_subjects(client, name) == {names.lane(0, job.id): 1}
    assert await reconcile(backend, HEAL_NOW) == Reconciled(requeued=0, removed=1)
    assert await behind.work_messages() == 0
    assert (await current(q, job.id)).state == JobState.COMPLETED, "the record is untouched"


async def test_a_worker_with_reconciliation_heals_a_half_added_job_by_itself(
    client: Client,
) -> None:
    name = "self-heal"
    reconciliation = Reconciliation(interval=0.3, waiting_threshold=0, delayed_grace=0)
    q = queue(name, _ok, client=client, reconciliation=reconciliation, **FAST)
    backend = await client._open_queue(q.config)
    _, record = q._new_job({"n": 1}, parse_options({"job_id": "half-added"}))
    await backend.store.create(record)
    assert await Backstage(client, name).work_messages() == 0
    async with q:
        done = await wait_for_state(q, "half-added", JobState.COMPLETED, timeout=WAIT)
    assert done.result == "ok"
    assert done.enqueued == 2, "published once, by the reconciliation"


# -- 7. guaranteed_worker=False ---------------------------------------------------------------


async def test_without_guaranteed_worker_jobs_complete_with_no_lease_traffic(
    client: Client,
) -> None:
    name = "leaseless"
    q = queue(name, _ok, client=client, guaranteed_worker=False, **FAST)
    async with q:
        jobs = [await q.add({"n": i}) for i in range(5)]
        done = [await wait_for_state(q, j.id, JobState.COMPLETED, timeout=WAIT) for j in jobs]
    assert all(j.result == "ok" and j.leased is False for j in done)
    leases = await Backstage(client, name).lease_history()
    assert leases.messages == 0
    assert leases.last_seq == 0, "no lease was ever written"


async def test_without_guaranteed_worker_a_killed_workers_job_still_runs_again(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    name = "leaseless-crash"
    log = tmp_path / "executions.jsonl"
    options = {"queue": name, "guaranteed": 0, **FAST}
    q = queue(name, client=client, guaranteed_worker=False, **FAST)
    doomed = await spawn(nats_server, namespace, log, sleep=60, **options)
    survivor = None
    try:
        job = await q.add({"n": 1})
        await eventually(lambda: started(log, job.id), WAIT, "the first worker to start the job")
        running = await current(q, job.id)
        assert running.state == JobState.ACTIVE and running.leased is False
        doomed.kill()
        killed_at = time.time()
        survivor = await spawn(nats_server, namespace, log, sleep=0, **options)
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
    finally:
        doomed.close()
        if survivor is not None:
            survivor.close()
    assert done.result == {"pid": survivor.pid}
    assert done.stalled_count == 1 and done.attempt == 1
    first, rerun = starts(log, job.id)
    assert (first["pid"], rerun["pid"]) == (doomed.pid, survivor.pid)
    assert rerun["t"] - killed_at >= q.config.ack_wait - 1.0, "it came back through ack_wait"
    leases = await Backstage(client, name).lease_history()
    assert leases.last_seq == 0, "no lease was written by either worker"
