"""What tests do behind the library's back: read and change a queue's state in NATS directly.

A test that proves a guarantee sometimes has to look where the library keeps its state (the
stored record, the lease, the messages on the work stream) or to break it (a corrupt record, a
foreign message on a lane, a lost message). It does so here, never with raw subjects: every
name comes from ``Names`` (``client.names(queue)``), and the state is read and written through
the domain objects (``Broker``, ``StateIndex``, ``Bucket``, the rejected-message reads) or, where
none fits, the seam's ``Nats``. Only this module, and the tests whose subject is the seam itself
(listed in tests/test_layout.py), call ``client._connection()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from oqron_nats import Client
from oqron_nats._nats import (
    Bucket,
    Entry,
    Msg,
    Nats,
    PubAck,
    StoredMsg,
    StreamState,
    ensure_bucket,
    ensure_stream,
    stream_of,
)
from oqron_nats._nats.names import (
    LISTENER_TTL,
    MSG_ID_HEADER,
    SCHEDULE_HEADER,
    SCHEDULE_TARGET_HEADER,
    TTL_HEADER,
    Names,
)
from oqron_nats.core.job import JobState
from oqron_nats.observe.events import Event
from oqron_nats.storage.broker import Broker
from oqron_nats.storage.index import StateIndex, state_of
from oqron_nats.storage.rejects import RejectedSample, rejected_count, rejected_samples

Received = Callable[[Msg], Awaitable[None]]
"""A callback of a subscription: called with each message."""


class Backstage:
    """One queue's state in NATS, reached behind the library's back (tests only)."""

    def __init__(self, client: Client, queue: str) -> None:
        self.client = client
        self.names: Names = client.names(queue)

    async def _conn(self) -> Nats:
        return await self.client._connection()

    async def _records(self) -> Bucket:
        return Bucket(await self._conn(), self.names.jobs_bucket)

    async def _leases(self) -> Bucket:
        return Bucket(await self._conn(), self.names.locks_bucket)

    async def _broker(self) -> Broker:
        return Broker(await self._conn(), self.names)

    async def critical_requests(self) -> int:
        """The requests the jobs' own tasks awaited on this client's connection so far."""
        return (await self._conn()).critical_requests_sent

    async def _conn_state(self, stream: str) -> StreamState:
        return await (await self._conn()).stream_state(stream)

    async def _watch(self, subject: str, received: Received) -> Subscription:
        conn = await self._conn()
        sub = await conn.subscribe(subject, received)
        await conn.nc.flush()  # the server has the subscription before anything it should see
        return sub

    # -- job records ----------------------------------------------------------------------------

    async def record(self, job_id: str) -> Entry:
        """The job's record exactly as the jobs bucket stores it, with its revision."""
        entry = await (await self._records()).get(self.names.key(job_id))
        assert entry is not None, f"job {job_id} has a record"
        return entry

    async def create_record(self, job_id: str, value: bytes) -> int:
        """Store ``value`` as the record of a new job (any bytes); returns its revision."""
        return await (await self._records()).create(self.names.key(job_id), value)

    async def overwrite_record(self, job_id: str, value: bytes, *, last: int | None = None) -> int:
        """Replace the job's record with ``value`` by compare-and-set on ``last`` (default: the
        revision stored now); returns the new revision."""
        if last is None:
            last = (await self.record(job_id)).revision
        return await (await self._records()).update(self.names.key(job_id), value, last=last)

    async def rewrite_record(self, job_id: str, change: Callable[[dict[str, Any]], None]) -> int:
        """Change the job's record as JSON (compare-and-set on its revision); the new revision."""
        entry = await self.record(job_id)
        fields = msgspec.json.decode(entry.value)
        change(fields)
        return await self.overwrite_record(job_id, msgspec.json.encode(fields), last=entry.revision)

    async def delete_record(self, job_id: str) -> None:
        """Delete the job's record (compare-and-set on its revision), as an operator could."""
        entry = await self.record(job_id)
        await (await self._records()).delete(self.names.key(job_id), last=entry.revision)

    async def record_ttl(self, job_id: str) -> str | None:
        """The Nats-TTL the job's record was last written with (None: kept until removed)."""
        records = await self._records()
        key = records.subject(self.names.key(job_id))
        stored = await (await self._conn()).direct_get_subject(records.stream, key)
        assert stored is not None, f"job {job_id} has a record"
        return stored.headers.get(TTL_HEADER)

    async def records_bytes(self) -> int:
        """How many bytes the queue's jobs bucket holds."""
        return (await self._conn_state((await self._records()).stream)).bytes

    async def watch_record(self, job_id: str, received: Received) -> Subscription:
        """Subscribe to every write of the job's record (core NATS: each attempt, stored or
        refused by its compare-and-set)."""
        records = await self._records()
        return await self._watch(records.subject(self.names.key(job_id)), received)

    async def watch_stored_record(self, job_id: str, received: Received) -> Subscription:
        """Subscribe to the stored writes of the job's record from now on (an ordered consumer:
        a write its compare-and-set refused is not stored, so not seen; a core subscription,
        :meth:`watch_record`, sees every attempt, in the order it was sent)."""
        records = await self._records()
        js = (await self._conn()).nc.jetstream()
        return await js.subscribe(
            records.subject(self.names.key(job_id)),
            cb=received,
            stream=stream_of(self.names.jobs_bucket),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )

    # -- leases ---------------------------------------------------------------------------------

    async def lease(self, job_id: str) -> Entry | None:
        """The job's lease as stored, or None if nobody holds it."""
        return await (await self._leases()).get(self.names.key(job_id))

    async def overwrite_lease(self, job_id: str, value: bytes, *, last: int, ttl: float) -> int:
        """Replace the job's lease if it is still at revision ``last`` (as a new holder would);
        returns the new revision."""
        leases = await self._leases()
        return await leases.update(self.names.key(job_id), value, last=last, ttl=ttl)

    async def delete_lease(self, job_id: str, *, last: int) -> None:
        """Delete the job's lease if it is still at revision ``last`` (as if its TTL ran out)."""
        await (await self._leases()).delete(self.names.key(job_id), last=last)

    async def lease_history(self) -> StreamState:
        """The namespace's lease bucket: leases held now (messages), ever written (last_seq)."""
        return await self._conn_state((await self._leases()).stream)

    # -- the work stream ------------------------------------------------------------------------

    async def work_messages(self) -> int:
        """How many messages the queue's work stream holds (lanes, schedules, held jobs)."""
        return (await self._conn_state(self.names.stream)).messages

    async def work_subjects(self) -> dict[str, int]:
        """Every subject of the work stream that holds messages, with their counts."""
        return await (await self._conn()).subjects(self.names.stream, ">")

    async def lane_subjects(self) -> dict[str, int]:
        """The lane subjects that hold messages, with their counts."""
        return await (await self._conn()).subjects(self.names.stream, self.names.lanes)

    async def schedule_subjects(self) -> dict[str, int]:
        """The schedule subjects that hold messages, with their counts."""
        return await (await self._conn()).subjects(self.names.stream, self.names.schedules)

    async def held_subjects(self) -> dict[str, int]:
        """The subjects of held jobs that hold messages, with their counts."""
        return await (await self._conn()).subjects(self.names.stream, self.names.helds)

    async def lane_message(self, job_id: str, priority: int = 0) -> StoredMsg | None:
        """The newest message on the job's lane subject of ``priority``, or None."""
        subject = self.names.lane(priority, job_id)
        return await (await self._conn()).direct_get(self.names.stream, last_by_subject=subject)

    async def schedule_message(self, job_id: str) -> StoredMsg | None:
        """The job's message schedule, or None."""
        subject = self.names.schedule(job_id)
        return await (await self._conn()).direct_get(self.names.stream, last_by_subject=subject)

    async def publish_on_lane(
        self,
        job_id: str,
        body: bytes | None = None,
        *,
        priority: int = 0,
        msg_id: str = "",
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        """Publish a message the library did not send on the lane subject of ``job_id`` (a stray
        copy, another client's message, a foreign or malformed body; default: the id)."""
        headers = {**(headers or {}), **({MSG_ID_HEADER: msg_id} if msg_id else {})}
        body = job_id.encode() if body is None else body
        subject = self.names.lane(priority, job_id)
        return await (await self._conn()).publish(subject, body, headers or None)

    async def publish_on_index(
        self, subject_tail: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        """Store a message the library did not send on the queue's state index, on
        ``<index entries of the queue>.<subject_tail>`` (e.g. ``waiting.<id>``)."""
        subject = self.names.index_entries_of_queue.removesuffix(">") + subject_tail
        await (await self._conn()).publish(subject, body, headers)

    async def publish_schedule(self, job_id: str, body: bytes, schedule: str, target: str) -> None:
        """Publish a schedule the library did not make on the schedule subject of ``job_id``,
        firing (``Nats-Schedule``: ``schedule``) into the lane-0 subject of job ``target``."""
        headers = {SCHEDULE_HEADER: schedule, SCHEDULE_TARGET_HEADER: self.names.lane(0, target)}
        await (await self._conn()).publish(self.names.schedule(job_id), body, headers)

    async def purge_lanes(self) -> None:
        """Remove every lane message of the queue (an operator, or a bounded stream)."""
        await (await self._broker()).remove(self.names.lanes)

    async def purge_lane(self, job_id: str, priority: int = 0) -> None:
        """Remove the job's messages on its lane of ``priority`` (a lost message)."""
        await (await self._broker()).remove(self.names.lane(priority, job_id))

    async def purge_schedule(self, job_id: str) -> None:
        """Remove the job's message schedule (a lost schedule)."""
        await (await self._broker()).unschedule(job_id)

    async def limit_work_stream(self, max_msgs: int) -> None:
        """Give the work stream a max_msgs limit, as an operator might (``nats stream edit``)."""
        js = (await self._conn()).js
        config = (await js.stream_info(self.names.stream)).config
        config.max_msgs = max_msgs
        await js.update_stream(config)

    async def watch_acks(self, received: Received) -> Subscription:
        """Subscribe to the acks of the work stream's messages."""
        return await self._watch(f"$JS.ACK.{self.names.stream}.>", received)

    # -- the state index ------------------------------------------------------------------------

    async def file_in_index(self, job_id: str, state: JobState) -> None:
        """File the job under ``state`` in the state index, whatever its record says (the stale
        entry a crash that cut a move short leaves); returns once it is stored."""
        await StateIndex(await self._conn(), self.names).settle(job_id, state)

    async def watch_index_requests(self, received: Received) -> Subscription:
        """Subscribe to the JetStream API requests naming the queue's index stream (a purge, a
        message delete, ...)."""
        return await self._watch(f"$JS.API.*.*.{self.names.index_stream}", received)

    async def index_entry(self, job_id: str, state: JobState) -> StoredMsg | None:
        """The job's stored index entry in ``state`` (its headers: the TTL), or None."""
        conn, names = await self._conn(), self.names
        return await conn.direct_get_subject(names.index_stream, names.index_entry(state, job_id))

    async def index_states(self, job_id: str) -> list[JobState | None]:
        """The states the job's stored index messages name, in order (one batch read)."""
        stored, _ = await (await self._conn()).direct_batch(
            self.names.index_stream, start=1, batch=100,
            subject=self.names.index_entries_of_job(job_id),
        )  # fmt: skip
        return [state_of(msg) for msg in stored]

    async def index_messages(self) -> int:
        """How many messages the index stream holds (entries and standing delete markers)."""
        return (await self._conn_state(self.names.index_stream)).messages

    async def index_writes(self) -> int:
        """How many messages were ever stored in the index stream (its last sequence)."""
        return (await self._conn_state(self.names.index_stream)).last_seq

    async def make_legacy_index(self, filed: dict[JobState, list[str]]) -> None:
        """Give the queue the state index of oqron_nats 0.1 instead of today's: a stream per
        state, holding ``filed``'s entries (in that order)."""
        conn, names = await self._conn(), self.names
        await conn.delete_stream(names.index_stream)
        for state in JobState:
            await ensure_stream(
                conn, name=names.legacy_index_stream(state),
                subjects=[names.legacy_index_entry(state, "*")], replicas=1, work_queue=False,
                max_msgs_per_subject=1, ttl=True,
            )  # fmt: skip
        for state, job_ids in filed.items():
            for job_id in job_ids:
                await conn.publish(names.legacy_index_entry(state, job_id), b"")

    async def legacy_index_streams(self) -> list[str]:
        """The per-state index streams of 0.1 the queue still has."""
        conn = await self._conn()
        streams = [self.names.legacy_index_stream(state) for state in JobState]
        return [s for s in streams if await conn.stream_exists(s)]

    # -- consumers ------------------------------------------------------------------------------

    async def watch_pulls(self, consumer: str, received: Received) -> Subscription:
        """Subscribe to the pull requests workers send to ``consumer``."""
        return await self._watch(
            f"$JS.API.CONSUMER.MSG.NEXT.{self.names.stream}.{consumer}", received
        )

    async def answer_pull(self, reply: str, status: str, description: str) -> None:
        """Answer a worker's pull request with a status, as the server does (a 409 "Leadership
        Change" from a consumer's new leader, ...)."""
        headers = {"Status": status, "Description": description}
        await (await self._conn()).publish_core(reply, headers=headers)

    async def announce_new_leader(self, consumer: str) -> None:
        """Publish the server's advisory that ``consumer`` has a new leader (as a cluster does
        after an election; a single server never sends it)."""
        await (await self._conn()).publish_core(self.names.consumer_elected(consumer), b"{}")

    async def consumer_names(self) -> list[str]:
        """The names of the work stream's consumers."""
        return await (await self._conn()).consumer_names(self.names.stream)

    async def set_ack_wait(self, seconds: float, consumer: str = "fifo") -> None:
        """Change a consumer's ack_wait (as an operator, or a server that lost its acks, could
        redeliver a message early)."""
        js = (await self._conn()).js
        info = await js.consumer_info(self.names.stream, consumer)
        await js.add_consumer(self.names.stream, dataclasses.replace(info.config, ack_wait=seconds))

    async def consumer_info(self, consumer: str = "fifo") -> Any:
        """nats-py's ConsumerInfo of one consumer of the work stream."""
        return await (await self._conn()).js.consumer_info(self.names.stream, consumer)

    async def consumer_infos(self) -> list[Any]:
        """nats-py's ConsumerInfo of every consumer of the work stream."""
        return list(await (await self._conn()).js.consumers_info(self.names.stream))

    async def delete_consumer(self, consumer: str = "fifo") -> None:
        """Delete a consumer of the work stream, as an operator could."""
        await (await self._conn()).js.delete_consumer(self.names.stream, consumer)

    async def work_stream_info(self) -> Any:
        """nats-py's StreamInfo of the work stream (configuration, cluster placement)."""
        return await (await self._conn()).js.stream_info(self.names.stream)

    async def watch_consumer_pauses(self, received: Received) -> Subscription:
        """Subscribe to the pause and resume requests of the work stream's consumers."""
        return await self._watch(f"$JS.API.CONSUMER.PAUSE.{self.names.stream}.>", received)

    # -- dead letters, rejected messages, events ------------------------------------------------

    async def dead_letter(self, job_id: str) -> StoredMsg | None:
        """The job's dead letter, or None."""
        subject = self.names.dead_letter(job_id)
        return await (await self._conn()).direct_get(self.names.dlq_stream, last_by_subject=subject)

    async def dead_letter_ids(self) -> set[str]:
        """The ids of the queue's jobs that have a dead letter."""
        conn = await self._conn()
        subjects = await conn.subjects(self.names.dlq_stream, self.names.dead_letter("*"))
        return {subject.rsplit(".", 1)[1] for subject in subjects}

    async def dead_letter_messages(self) -> int:
        """How many messages the namespace's dead-letter stream holds (every queue's dead
        letters and rejected-message samples)."""
        return (await self._conn_state(self.names.dlq_stream)).messages

    async def forge_dead_letter(self, job_id: str, body: bytes) -> None:
        """Store ``body`` as the dead letter of ``job_id`` (not a record, say)."""
        await (await self._conn()).publish(self.names.dead_letter(job_id), body)

    async def rejected_count(self) -> int:
        """How many foreign messages the queue has rejected (the counter in NATS)."""
        return await rejected_count(await self._conn(), self.names)

    async def rejected_samples(self) -> list[RejectedSample]:
        """The latest rejected message of each reason."""
        return await rejected_samples(await self._conn(), self.names)

    async def delete_queues_bucket(self) -> None:
        """Delete the namespace's queues bucket (nothing answers its writes after)."""
        await (await self._conn()).delete_stream(stream_of(self.names.queues_bucket))

    async def subscriptions(self, fragment: str) -> int:
        """How many subscriptions of this client's connection have ``fragment`` in their
        subject."""
        conn = await self._conn()
        return sum(1 for sub in conn.nc._subs.values() if fragment in sub.subject)

    async def listener_keys(self) -> list[str]:
        """The keys of the processes that say they listen to the queue's events."""
        queues = Bucket(await self._conn(), self.names.queues_bucket)
        return await queues.keys(self.names.listener_keys)

    async def watch_events(self, received: Received, *, say_so: bool = True) -> Subscription:
        """Subscribe to every lifecycle event of the queue, as sent; ``say_so``: write a
        listener key first, as a foreign listener would (events are published only then)."""
        if say_so:
            queues = Bucket(await self._conn(), self.names.queues_bucket)
            await queues.put(self.names.listener_key("backstage"), b"{}", ttl=LISTENER_TTL)
        return await self._watch(self.names.events, received)


class Heard:
    """The events of a queue seen by a subscription that does not say it listens."""

    def __init__(self) -> None:
        self.names: list[tuple[str, str]] = []

    async def receive(self, msg: Any) -> None:
        event = msgspec.json.decode(msg.data, type=Event)
        self.names.append((event.job_id, event.name))

    def of(self, job_id: str) -> list[str]:
        return [name for job, name in self.names if job == job_id]


async def overhear(client: Client, name: str) -> Heard:
    """Watch the queue's events without a listener key (a process that follows the keys
    publishes nothing for this subscription alone)."""
    heard = Heard()
    await Backstage(client, name).watch_events(heard.receive, say_so=False)
    return heard


async def listening(q: Any) -> asyncio.Task[None]:
    """A task that listens to the queue's events (``q.events()``), its listener key stored."""
    await q._open()  # provisioned: the queues bucket, where the key goes
    keys = Backstage(q.client, q.name)
    before = set(await keys.listener_keys())

    async def listen() -> None:
        async for _ in q.events():
            pass

    task = asyncio.create_task(listen())

    async def joined() -> bool:
        return bool(set(await keys.listener_keys()) - before)

    deadline = time.monotonic() + 10
    while not await joined():
        assert time.monotonic() < deadline, "the listener key was never stored"
        await asyncio.sleep(0.02)
    return task


async def server_name(client: Client) -> str:
    """The name of the server the client is connected to."""
    return (await client._connection()).server_name


async def replicas_behind(client: Client, stream: str) -> frozenset[str]:
    """The replicas of ``stream`` the client's connection found behind their leader at its
    last look (see oqron_nats/_nats/lagging.py)."""
    return (await client._connection()).replicas_behind(stream)


async def server_version(client: Client) -> tuple[int, int, int]:
    """The version of the server the client is connected to."""
    return (await client._connection()).server_version


async def max_payload(client: Client) -> int:
    """The largest message the connected server takes."""
    return (await client._connection()).max_payload


async def namespace_streams(client: Client) -> set[str]:
    """The names of the client's namespace's streams, KV buckets' included (namespaces have no
    ``_``, so ``_<namespace>_`` in a stream's name is unambiguous: see ``Names``)."""
    found = await (await client._connection()).stream_names(subject=">")
    return {name for name in found if f"_{client.namespace}_" in name}


async def namespace_stream_infos(client: Client) -> list[Any]:
    """nats-py's StreamInfo of each stream of the client's namespace."""
    mine = await namespace_streams(client)
    infos = await (await client._connection()).js.streams_info()
    return [info for info in infos if info.config.name in mine]


async def leave_record_in_shared_bucket(client: Client, queue: str, job_id: str) -> None:
    """Put a record of ``queue`` where oqron_nats 0.1.0 kept them: the namespace's shared
    jobs bucket."""
    conn, names = await client._connection(), client.names(queue)
    await ensure_bucket(conn, bucket=names.shared_jobs_bucket, replicas=1, max_value_size=1024)
    await Bucket(conn, names.shared_jobs_bucket).create(names.key(job_id), b"{}")


async def inbox_and_pending_size(client: Client, queue: str) -> tuple[str, int]:
    """A new inbox of the connection ``queue`` uses (once prepared), and nats-py's limit of
    bytes pending on it: what the client's connect options set."""
    conn = await client._prepare_queue(client.names(queue))
    return conn.new_inbox(), int(conn.nc._max_pending_size)
