"""Least-privilege roles (issue 11, item 3), against a nats-server whose users have exactly the
permission blocks ``oqron permissions`` prints: each role can do its job, and nothing outside it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from oqron_nats import (
    Client,
    Credentials,
    DeadLetter,
    JobContext,
    JobState,
    OrphanSweep,
    PermissionDenied,
    QueueNotFound,
    Reconciliation,
    RetryPolicy,
    StallScanner,
    queue,
)
from oqron_nats._nats import PubAck
from oqron_nats._nats.names import LISTENER_ROLE
from oqron_nats._nats.permissions import Permissions, for_role
from oqron_nats.ops.cli import main
from oqron_nats.runtime.schedules import catch_up_missed

from .helpers import eventually, holds, wait_for_state
from .secured import SecuredServer
from .support import Backstage

NS = "roles"
QUEUES = ("orders", "stack", "ranked")
"""The publisher's and the worker's queues; "billing" belongs to nobody here."""
FAST = {"retry_deadline": 3.0, "request_timeout": 1.0}


def user(name: str, role: str, queues: tuple[str, ...] = ()) -> str:
    block = for_role(role, NS, list(queues)).config()  # type: ignore[arg-type]
    return f"{{user: {name}, password: {name}-pw\n{block}}}\n"


def user_before_listener_keys(name: str, role: str) -> str:
    """A user whose permission block was printed before listener keys existed."""
    allowed = for_role(role, NS, list(QUEUES))  # type: ignore[arg-type]
    block = Permissions(
        [s for s in allowed.publish if LISTENER_ROLE not in s],
        [s for s in allowed.subscribe if LISTENER_ROLE not in s],
    ).config()
    return f"{{user: {name}, password: {name}-pw\n{block}}}\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    users = (
        user("admin", "admin")
        + user("publisher", "publisher", QUEUES)
        + user("worker", "worker", QUEUES)
        + user_before_listener_keys("older-publisher", "publisher")
        + user_before_listener_keys("older-worker", "worker")
    )
    config = f"authorization {{\n  users = [\n{users}  ]\n}}\n"
    store: Path = tmp_path_factory.mktemp("roles")
    with SecuredServer(config, store) as running:
        yield running


def client_of(server: SecuredServer, name: str) -> Client:
    return Client(server.url, namespace=NS, credentials=Credentials(user=name,
                  password=f"{name}-pw"), **FAST)  # type: ignore[arg-type]  # fmt: skip


def admin_cli(server: SecuredServer, *argv: str) -> int:
    return main([*argv, "--url", f"nats://admin:admin-pw@127.0.0.1:{server.port}",
                 "--namespace", NS])  # fmt: skip


async def test_each_role_does_its_job(server: SecuredServer) -> None:
    with capture_logs() as logs:
        await _do_each_role_s_job(server)
    violations = [e["error"] for e in logs if "permissions violation" in str(e.get("error", ""))]
    # a fire-and-forget publish (an index entry, an ack, an event) refused would fail silently:
    # the only refusal allowed is the publisher's create of the unprovisioned queue
    assert violations, "the publisher's create was refused"
    assert all(".stream.create." in v for v in violations), [
        v for v in violations if ".stream.create." not in v
    ]


async def _do_each_role_s_job(server: SecuredServer) -> None:
    publisher = client_of(server, "publisher")
    async with publisher:
        orders = queue("orders", client=publisher)
        started = time.monotonic()
        with pytest.raises(QueueNotFound, match="orders") as missing:
            await orders.add({"n": 0})  # nothing provisioned the queue yet
        assert "oqron provision orders" in str(missing.value)
        assert time.monotonic() - started < 3.0, "refused at once, not after the deadline"

        assert await asyncio.to_thread(admin_cli, server, "provision", *QUEUES) == 0
        orders = queue("orders", client=publisher)  # opened anew, now that the queue exists
        parent = await orders.add({"n": 1})
        child = await orders.add({"n": 2}, depends_on=[parent.id])
        later = await orders.add({"n": 3}, delay=0.5)
        flaky = await orders.add({"fail": 1})
        doomed = await orders.add({"fail": 99})
        assert await orders.count() == 5
        assert (await orders.get_job(parent.id)) is not None
        stacked = await queue("stack", client=publisher).add({"n": 4})
        ranked = await queue("ranked", client=publisher).add({"n": 6}, priority=2)

        worker = client_of(server, "worker")
        seen: list[str] = []

        async def handle(ctx: JobContext[Any]) -> str:
            seen.append(ctx.id)
            if ctx.attempt <= int(ctx.data.get("fail", 0)):
                raise RuntimeError("not yet")
            return "done"

        retries = RetryPolicy(max=1, strategy="fixed", base_delay=0.2)
        async with (
            worker,
            queue(
                "orders", handle, client=worker, retries=retries, dead_letter=DeadLetter()
            ) as consumer,  # fmt: skip
            queue("stack", handle, client=worker, strategy="lifo"),
            queue("ranked", handle, client=worker, strategy="priority"),
        ):
            for job in (parent, child, later, flaky):
                await wait_for_state(consumer, job.id, JobState.COMPLETED, timeout=15)
            await wait_for_state(consumer, doomed.id, JobState.FAILED, timeout=15)
            await eventually(
                lambda: _state(queue("stack", client=publisher), stacked.id, JobState.COMPLETED),
                timeout=15,
                what="the lifo job",
            )
            await eventually(
                lambda: _state(queue("ranked", client=publisher), ranked.id, JobState.COMPLETED),
                timeout=15,
                what="the priority job",
            )
            assert (await orders.wait(parent.id, timeout=5)).state == JobState.COMPLETED
            awaited = await orders.add({"n": 8})  # waited on as it runs: says it listens
            assert (await orders.wait(awaited.id, timeout=10)).state == JobState.COMPLETED
            assert [j.id for j in await orders.get_jobs(JobState.FAILED)] == [doomed.id]

            assert await asyncio.to_thread(admin_cli, server, "queue", "pause", "orders") == 0
            held = await orders.add({"n": 5})
            assert held.state == JobState.PAUSED
            assert await asyncio.to_thread(admin_cli, server, "queue", "resume", "orders") == 0
            await wait_for_state(consumer, held.id, JobState.COMPLETED, timeout=15)

            # repeating jobs (issue 16): the publisher defines, lists and removes them
            await orders.schedule("beat", {"n": 6}, every=1)
            await orders.schedule("beat", {"n": 7}, every=1)  # replaced, not added
            assert [(s.name, s.data) for s in await orders.schedules()] == [("beat", {"n": 7})]
            # the worker looks for missed ticks (at start and on reconnect) with its own rights
            await catch_up_missed((await consumer._open()).schedules)
            ticked = await eventually(
                lambda: _tick_done(orders), timeout=15, what="a tick's job"
            )  # fmt: skip
            assert ticked.data == {"n": 7}
            assert await orders.unschedule("beat") is True
            assert await orders.schedules() == []
        for command in (("queues",), ("jobs", "list", "orders"), ("dlq", "list", "orders")):
            assert await asyncio.to_thread(admin_cli, server, *command) == 0


async def _tick_done(q: Any) -> Any:
    jobs = await q.get_jobs(JobState.COMPLETED, limit=100)
    return next((job for job in jobs if job.id.startswith("beat-")), None)


async def _state(q: Any, job_id: str, state: JobState) -> bool:
    job = await q.get_job(job_id)
    return job is not None and job.state == state


async def test_wait_returns_where_the_user_may_not_say_it_listens(server: SecuredServer) -> None:
    """Events are published only to processes that say they listen (a key in the queues
    bucket); a publisher whose permissions predate that still gets wait()'s answer, by reading
    the record again, and is told why events may not reach it."""
    assert await asyncio.to_thread(admin_cli, server, "provision", "orders") == 0

    async def slow(ctx: JobContext[Any]) -> str:
        await asyncio.sleep(0.3)
        return "done"

    async with (
        client_of(server, "older-publisher") as older,
        client_of(server, "worker") as worker,
        queue("orders", slow, client=worker),
    ):
        orders = queue("orders", client=older)
        job = await orders.add({"n": 1})
        with capture_logs() as logs:
            finished = await orders.wait(job.id, timeout=10)
        assert finished.state == JobState.COMPLETED and finished.result == "done"
        [refused] = [e for e in logs if e["event"].startswith("listener key not written")]
        assert "ermission" in refused["error"]


async def test_a_worker_that_may_not_follow_listener_keys_announces_always(
    server: SecuredServer,
) -> None:
    """A worker whose permission block predates listener keys may list them but not subscribe
    to their writes (the server refuses that after the fact): it must not take the listeners
    it listed for all there are, but publish every event, and say why."""
    assert await asyncio.to_thread(admin_cli, server, "provision", "orders") == 0

    async def handle(ctx: JobContext[Any]) -> None:
        return None

    async with (
        client_of(server, "publisher") as publisher,
        client_of(server, "older-worker") as older,
    ):
        with capture_logs() as logs:
            async with queue("orders", handle, client=older) as worker:  # before any listener
                orders = queue("orders", client=publisher)
                events: list[tuple[str, str]] = []

                async def listen() -> None:
                    async for event in orders.events():
                        events.append((event.job_id, event.name))

                listener = asyncio.create_task(listen())
                try:
                    await asyncio.sleep(0.3)  # its key written
                    job = await orders.add({"n": 1})
                    await wait_for_state(worker, job.id, JobState.COMPLETED)
                    await eventually(
                        lambda: holds([n for j, n in events if j == job.id][-1:] == ["completed"]),
                        what="the worker's events",
                    )  # fmt: skip
                finally:
                    listener.cancel()
        assert [n for j, n in events if j == job.id] == ["added", "active", "completed"]
        [said] = [e for e in logs if e["event"].startswith("listener keys not followed")]
        assert "subscribe" in said["error"]


async def test_a_publisher_cannot_consume_or_touch_what_is_not_its_own(
    server: SecuredServer,
) -> None:
    assert await asyncio.to_thread(admin_cli, server, "provision", "orders", "billing") == 0

    async def handle(ctx: JobContext[Any]) -> None:
        return None

    async with client_of(server, "publisher") as publisher:
        conn = await publisher._connection()
        names, billing = publisher.names("orders"), publisher.names("billing")
        job = await queue("orders", client=publisher).add({"n": 1})
        refusals = {
            "consume": queue("orders", handle, client=publisher).start(),
            "read another queue": queue("billing", client=publisher).get_job("x"),
            "add to another queue": queue("billing", client=publisher).add({"n": 1}),
            "write another queue's record": conn.publish(
                f"$KV.{names.jobs_bucket}.billing.x", b"{}"
            ),
            "take a lease": conn.publish(f"$KV.{names.locks_bucket}.{names.key(job.id)}", b"x"),
            "purge the work stream": conn.purge_subject(names.stream, names.lanes),
            "delete a message": conn.delete_msg(names.stream, 1),
            "read another queue's records at the leader": conn.leader_get(
                f"KV_{billing.jobs_bucket}", f"$KV.{billing.jobs_bucket}.billing.x"
            ),
        }
        for what, attempt in refusals.items():
            started = time.monotonic()
            with pytest.raises(PermissionDenied):
                await attempt
            assert time.monotonic() - started < 2.0, f"{what}: refused at once"
        assert (await queue("orders", client=publisher).get_job(job.id)) is not None
        # its own records, at the leader (where reads go while a replica hangs)
        own = f"$KV.{names.jobs_bucket}.{names.key(job.id)}"
        assert await conn.leader_get(f"KV_{names.jobs_bucket}", own) is not None


async def test_a_worker_cannot_touch_other_queues(server: SecuredServer) -> None:
    assert await asyncio.to_thread(admin_cli, server, "provision", "billing") == 0

    async def handle(ctx: JobContext[Any]) -> None:
        return None

    async with client_of(server, "worker") as worker:
        conn = await worker._connection()
        names = worker.names("billing")
        for attempt in (
            queue("billing", handle, client=worker).start(),
            queue("billing", client=worker).add({"n": 1}),
            conn.publish(f"$KV.{names.locks_bucket}.{names.key('x')}", b"x"),
            conn.purge_subject(names.stream, names.lanes),
        ):
            with pytest.raises(PermissionDenied):
                await attempt


async def test_writes_sent_at_once_are_each_refused_at_once(server: SecuredServer) -> None:
    """add_bulk's first tries (Publishing.publish_at_once) on a user's permissions: a refused
    write is answered at once (to be asked again on its own, which raises PermissionDenied),
    and the permitted writes sent with it are stored."""
    async with client_of(server, "publisher") as publisher:
        conn = await publisher._connection()
        await queue("orders", client=publisher).add({"n": 0})  # opened: its bucket exists
        names = publisher.names("orders")
        create = {"Nats-Expected-Last-Subject-Sequence": "0"}
        started = time.monotonic()
        answers = await conn.publish_at_once(
            [
                (f"$KV.{names.jobs_bucket}.{names.key('at-once-1')}", b"{}", create),
                (f"$KV.{names.jobs_bucket}.billing.x", b"{}", None),  # another queue's key
                (f"$KV.{names.jobs_bucket}.{names.key('at-once-2')}", b"{}", create),
            ]
        )
        assert time.monotonic() - started < 2.0, "the refusal was not answered at once"
        assert isinstance(answers[0], PubAck) and isinstance(answers[2], PubAck)
        assert answers[1] is None
        result = await queue("orders", client=publisher).add_bulk(
            [{"data": {"n": n}} for n in range(100)]
        )
        assert result.ok


async def test_removals_and_finished_moves_wait_for_their_index_writes_within_each_role(
    server: SecuredServer,
) -> None:
    """The index writes that wait for their answers (a removal at completion, a cancel, a
    rerun) are each role's to make: the worker removes its completed jobs, the admin cancels and
    reruns, and no write is refused (a refused one would only be logged)."""
    assert await asyncio.to_thread(admin_cli, server, "provision", "orders") == 0

    async def handle(ctx: JobContext[Any]) -> None:
        return None

    with capture_logs() as logs:
        async with client_of(server, "publisher") as publisher, client_of(
            server, "worker"
        ) as worker, client_of(server, "admin") as admin:  # fmt: skip
            orders = queue("orders", client=publisher)
            completed = await orders.count(JobState.COMPLETED)  # other tests' jobs are kept
            cancelled = await orders.count(JobState.CANCELLED)
            async with queue("orders", handle, client=worker, remove_on_complete=True):
                gone = await orders.add({"n": 1})
                await eventually(lambda: _removed(orders, gone.id), timeout=15,
                                 what="the completed job removed")  # fmt: skip
            assert await orders.count(JobState.COMPLETED) == completed
            managed = queue("orders", client=admin)
            stopped = await orders.add({"n": 2})
            assert await managed.cancel(stopped.id)
            assert await orders.count(JobState.CANCELLED) == cancelled + 1
            await managed.retry(stopped.id)
            assert (await orders.get_job(stopped.id)).state == JobState.WAITING  # type: ignore[union-attr]
    refused = [e for e in logs if "did not take a move" in str(e.get("event", ""))]
    refused += [e for e in logs if "permissions violation" in str(e.get("error", ""))]
    assert refused == []


async def _removed(q: Any, job_id: str) -> bool:
    return await q.get_job(job_id) is None


async def test_a_worker_restarted_with_the_same_host_and_pid_takes_its_presence_key_back(
    server: SecuredServer,
) -> None:
    """A worker that finds the presence key of an earlier process with its host and pid (a
    container restarted in its pod; here: the same process, right after a stop) reads it and
    writes over it, with the worker role's rights (the read was refused before)."""
    assert await asyncio.to_thread(admin_cli, server, "provision", "stack") == 0

    async def handle(ctx: JobContext[Any]) -> None:
        return None

    with capture_logs() as logs:
        async with client_of(server, "worker") as worker:
            async with queue("stack", handle, client=worker, strategy="lifo"):
                pass
            async with queue("stack", handle, client=worker, strategy="lifo"):
                await asyncio.sleep(0.5)  # its presence written
    refused = [e for e in logs if "permissions violation" in str(e.get("error", ""))]
    assert refused == []


async def test_the_maintenance_passes_heal_within_the_worker_roles_rights(
    server: SecuredServer,
) -> None:
    """A worker with every maintenance pass on, often (orphan sweep, reconciliation, stall
    scanner), under the worker role: a waiting job whose message was removed is published again
    and runs, and no pass is refused a read or a write (each would only be logged)."""
    assert await asyncio.to_thread(admin_cli, server, "provision", "ranked") == 0
    ran: list[str] = []

    async def handle(ctx: JobContext[Any]) -> None:
        ran.append(ctx.id)

    often = {"interval": 0.5}
    with capture_logs() as logs:
        async with client_of(server, "publisher") as publisher, client_of(
            server, "admin"
        ) as admin, client_of(server, "worker") as worker:  # fmt: skip
            orphan = await queue("ranked", client=publisher).add({"n": 1})
            await Backstage(admin, "ranked").purge_lanes()  # its message is gone
            async with queue(
                "ranked", handle, client=worker, strategy="priority",
                orphan_sweep=OrphanSweep(waiting_for=0.5, interval=0.5),
                reconciliation=Reconciliation(waiting_threshold=0.5, delayed_grace=0.5, **often),
                cross_node_stall_scanner=StallScanner(**often),
            ):  # fmt: skip
                await eventually(lambda: holds(orphan.id in ran), timeout=15,
                                 what="the orphan published again and run")  # fmt: skip
                await asyncio.sleep(1.5)  # a few more passes of each
    refused = [e for e in logs if "permission" in str(e).lower()]
    assert refused == []
