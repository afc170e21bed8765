"""Least-privilege NATS permissions for the three roles, built from the names the code uses.

``oqron permissions --role publisher --queue video-encode`` prints a ``permissions`` block for
nats-server's configuration (or an account's user JWT). It comes from :class:`~.names.Names`,
which every part of oqron_nats builds its subjects with, so it cannot drift from what the code
needs; tests/test_roles.py runs each role against a server configured with these blocks.

* **publisher** of some queues: add jobs (and delayed, held, dependent ones), read their records,
  counts, pages, events and ``wait()`` (saying that it listens: a key of its own in the queues
  bucket). It never creates streams (an admin or a worker
  provisions a queue; a publisher gets QueueNotFound until then), consumes, takes leases,
  touches another queue, or purges a queue's work stream.
* **worker** of some queues: the publisher's rights on those queues, and provisioning them,
  consuming, leases, retries, dead letters, counters, presence and the maintenance passes.
* **admin** of a namespace: everything in it (the CLI's admin commands, ``oqron provision``,
  pause, resume, obliterate), and the JetStream API and KV subjects of the account.

What NATS permissions cannot express (they allow subjects, not operations or headers):

* a KV write is a publish on the key's subject, so whoever may create a queue's records may also
  overwrite, delete or purge them (``KV-Operation`` headers), and may write its state-index
  entries and events: a publisher can damage its own queue's records and listings, never
  another queue's;
* a read at a stream's leader (``STREAM.MSG.GET``) names the key in its body, not its subject,
  and the queue states share one bucket, so every role may read every queue's state key
  (paused or not) and presence keys (the hosts of its workers): a queue's state is followed at
  the leader (each queue's records have a bucket of their own, so record reads stay scoped);
* a read that no replica answered is asked of the stream's leader (a hung replica loses the
  direct gets routed to it); where a role may not read a stream at its leader (the locks bucket,
  shared by the namespace's queues), it keeps asking the replicas until the retry deadline;
* replies come back on the ``_INBOX.>`` subjects, which every role subscribes to; give each
  application its own prefix (``connect_options={"inbox_prefix": ...}``, and ``--inbox`` here)
  where users must not see each other's replies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..core.job import JobState
from ..core.naming import PRIORITY_LEVELS
from .names import Names

Role = Literal["publisher", "worker", "admin"]
ROLES: tuple[Role, ...] = ("publisher", "worker", "admin")
API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish to and subscribe to."""

    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)

    def config(self) -> str:
        """The nats-server configuration block."""

        def allow(subjects: list[str]) -> str:
            return "".join(f'      "{subject}"\n' for subject in subjects)

        return (
            "permissions: {\n"
            f"  publish: {{\n    allow: [\n{allow(self.publish)}    ]\n  }}\n"
            f"  subscribe: {{\n    allow: [\n{allow(self.subscribe)}    ]\n  }}\n"
            "}"
        )


def for_role(
    role: Role,
    namespace: str,
    queues: Sequence[str] = (),
    *,
    inbox: str = "_INBOX",
) -> Permissions:
    """The permissions of ``role`` on ``queues`` of ``namespace`` (admin: the whole namespace)."""
    if role == "admin":
        return _admin(namespace, inbox)
    publish: list[str] = []
    subscribe = [f"{inbox}.>"]
    for queue in queues:
        names = Names(namespace, queue)
        publish += _publisher_publish(names)
        subscribe += _publisher_subscribe(names)
        if role == "worker":
            publish += _worker_publish(names)
            subscribe += _worker_subscribe(names)
    return Permissions(_unique(publish), _unique(subscribe))


def _streams(names: Names) -> list[str]:
    """Every stream a queue uses, its own and its namespace's."""
    buckets = (names.jobs_bucket, names.locks_bucket, names.queues_bucket, names.deps_bucket)
    return [
        names.stream,
        names.index_stream,
        *(f"KV_{bucket}" for bucket in buckets),
        names.rate_stream,
        names.dlq_stream,
    ]


def _publisher_publish(names: Names) -> list[str]:
    jobs, queues, deps = names.jobs_bucket, names.queues_bucket, names.deps_bucket
    index = names.index_stream
    return [
        *(f"{API}.STREAM.INFO.{stream}" for stream in _streams(names)),  # exists? counts
        f"{API}.STREAM.INFO.KV_{names.shared_jobs_bucket}",  # records left by 0.1.0?
        f"{API}.STREAM.INFO.{names.legacy_index_stream(JobState.WAITING)}",  # 0.1's index?
        f"$KV.{jobs}.{names.keys}",  # records: create, and compare-and-set writes
        f"{API}.DIRECT.GET.KV_{jobs}.$KV.{jobs}.{names.keys}",  # record reads
        f"{API}.STREAM.MSG.GET.KV_{jobs}",  # ... at the leader (fresh reads, a hung replica)
        f"$KV.{queues}.{names.queue}",  # the queue's state (a flow marks it)
        f"$KV.{queues}.{names.listener_keys}",  # listening to events (wait(), events())
        f"{API}.DIRECT.GET.KV_{queues}.$KV.{queues}.{names.queue}",
        f"{API}.STREAM.MSG.GET.KV_{queues}",  # the state followed, read at the leader
        f"$KV.{deps}.{names.queue}.>",  # flows: edges to parents
        f"{API}.DIRECT.GET.KV_{deps}.$KV.{deps}.{names.queue}.>",
        f"{API}.DIRECT.GET.KV_{deps}",  # a parent's edges, read in batches
        f"{API}.DIRECT.GET.{index}",  # counts, pages, repairs
        f"{API}.STREAM.PURGE.{index}",  # a page repairs a stale finished entry
        names.index_entries_of_queue,
        names.events,
        names.lanes,
        names.schedules,
        names.helds,
        # repeating schedules (q.schedule): defined and removed by publishes on names.schedules
        # above, read back one by one (a delay's schedule message holds its job's id, and a
        # copy of the record, which this role may read anyway)
        f"{API}.DIRECT.GET.{names.stream}.{names.schedules}",
    ]


def _publisher_subscribe(names: Names) -> list[str]:
    queues = names.queues_bucket
    # the queue's state, who listens to its events (events are published only then), events
    return [f"$KV.{queues}.{names.queue}", f"$KV.{queues}.{names.listener_keys}", names.events]


def _worker_publish(names: Names) -> list[str]:
    jobs, locks, queues = names.jobs_bucket, names.locks_bucket, names.queues_bucket
    stream = names.stream
    return [
        *(f"{API}.STREAM.CREATE.{s}" for s in _streams(names)),  # provisioning
        # the per-state index streams of 0.1, migrated at start
        *(f"{API}.STREAM.INFO.{names.legacy_index_stream(s)}" for s in JobState),
        *(f"{API}.DIRECT.GET.{names.legacy_index_stream(s)}" for s in JobState),
        *(f"{API}.STREAM.DELETE.{names.legacy_index_stream(s)}" for s in JobState),
        f"{API}.CONSUMER.CREATE.{stream}.>",
        # the per-lane consumers of 0.1's priority queues, deleted at start
        *(f"{API}.CONSUMER.DELETE.{stream}.p{level}" for level in range(PRIORITY_LEVELS)),
        f"{API}.CONSUMER.NAMES.{stream}",
        f"{API}.CONSUMER.PAUSE.{stream}.*",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"{API}.DIRECT.GET.{stream}",  # lifo and priority moves, the orphan sweep
        f"{API}.DIRECT.GET.{stream}.{names.lanes}",  # a schedule's newest tick (missed ticks)
        f"{API}.STREAM.MSG.GET.{stream}",  # ... at the leader, while a replica hangs
        f"{API}.STREAM.MSG.DELETE.{stream}",  # lifo moves, foreign schedules
        f"{API}.STREAM.PURGE.{stream}",  # held jobs released, delays promoted, priority moves
        f"$KV.{locks}.{names.queue}.>",  # leases and roles
        f"{API}.DIRECT.GET.KV_{locks}.$KV.{locks}.{names.queue}.>",
        f"$KV.{queues}.{names.queue}.>",  # presence
        # a presence key left by an earlier process of the same host and pid (a container
        # restarted in its pod): read, then overwritten
        f"{API}.DIRECT.GET.KV_{queues}.$KV.{queues}.{names.queue}.>",
        f"{API}.DIRECT.GET.KV_{jobs}",  # the queue's records in batches (maintenance passes)
        names.run_lane,
        names.rate_of_queue,
        names.dlq_of_queue,
        names.controls,
    ]


def _worker_subscribe(names: Names) -> list[str]:
    return [
        names.controls,
        names.bell,
        f"$KV.{names.queues_bucket}.{names.queue}",
        names.consumers_elected,  # pull again at once when a consumer's leader changes
    ]


def _admin(namespace: str, inbox: str) -> Permissions:
    everything = f"oqron.{namespace}.>"
    kv = "$KV.>"  # every queue's records have their own bucket: no wildcard names them all
    return Permissions(
        publish=[f"{API}.>", "$JS.ACK.>", everything, kv],
        subscribe=[f"{inbox}.>", everything, kv],
    )


def _unique(subjects: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(subjects))
