"""Every subject, stream, bucket, consumer and header name, built in one place.

Layout for namespace ``ns`` and queue ``q``::

    stream  OQRON_<ns>_Q_<q>     WorkQueue stream of the queue, holding:
      oqron.<ns>.q.<q>.p<0-9>.<id>   lanes: one per priority level; every job is published here
      oqron.<ns>.s.<q>.<id>          message schedules (delays and retry backoff), one per job
      oqron.<ns>.run.<q>.<id>        lifo, priority: jobs moved from the lanes, ready to run
      oqron.<ns>.held.<q>.<id>       jobs added while the queue was paused (hold), until resume
      oqron.<ns>.s.<q>.=<name>       repeating schedules (``q.schedule()``), one per name
      oqron.<ns>.q.<q>.p<0-9>.=<name>  where a repeating schedule's ticks land (a lane)
    The job id ends every job subject, so one job's messages can be found (reconciliation) and
    removed (cancel) without reading the others.
    oqron.<ns>.bell.<q>.>        headers-only republish of every lane message (wakes lifo and
                                 priority workers)
    oqron.<ns>.ev.<q>.<id>.<event>   job lifecycle events (core NATS: for listeners on any node)
    oqron.<ns>.ctl.<q>.<cmd>.<id>    commands to the queue's workers (core NATS), e.g. cancel
    stream  OQRON_<ns>_DLQ       dead letters, subject oqron.<ns>.dlq.<q>.<job_id>
    stream  OQRON_<ns>_RATE      rate-limit counters, oqron.<ns>.rate.<q>.<group>.<window>
    stream  OQRON_<ns>_X_<q>     the queue's state index, subject
                                 oqron.<ns>.idx.<q>.<state>.<job_id>, one per job and state
                                 (oqron_nats up to 0.1 kept one stream per state,
                                 OQRON_<ns>_X<c>_<q> on oqron.<ns>.ix.<q>.<state>.<job_id>)
    bucket  oqron_<ns>_jobs_<q>  the queue's job records, key <q>.<job_id>; and key <q>.=<name>,
                                 the last tick a repeating schedule made
    bucket  oqron_<ns>_locks     heartbeat leases, key <q>.<job_id>
    bucket  oqron_<ns>_queues    queue state (paused or not), key <q>; workers online, keys
                                 <q>.=worker.<host>-<pid>; listeners of the queue's events, keys
                                 <q>.=listener.<id>
    bucket  oqron_<ns>_deps      flow edges, key <q>.<parent_id>.<child_id>

``resources()`` lists them for people: the README's "What is in NATS" table is
``markdown_table()`` (printed by
``python -c 'from oqron_nats._nats.names import markdown_table as t; print(t())'``),
and tests/test_readme.py compares the two.

Names are validated before they reach a subject or key: a ``.``, ``*``, ``>`` or space would
change what a subject matches. Namespaces may not contain ``_`` so that stream and bucket names
stay unambiguous.
"""

from __future__ import annotations

from typing import Final

from ..core.naming import PRIORITY_LEVELS, check_name, check_namespace

STATE_CODES: Final = {
    "waiting": "W", "delayed": "D", "active": "A", "completed": "C", "failed": "F",
    "stalled": "S", "paused": "P", "waiting-children": "K", "cancelled": "X",
}  # fmt: skip
"""A letter per job state, in the names of the per-state index streams of oqron_nats 0.1."""

# Headers written by oqron_nats on job messages.
CORRELATION_HEADER: Final = "Oqron-Correlation-Id"
MSG_ID_HEADER: Final = "Nats-Msg-Id"
SCHEDULE_HEADER: Final = "Nats-Schedule"
SCHEDULE_TARGET_HEADER: Final = "Nats-Schedule-Target"
TTL_HEADER: Final = "Nats-TTL"
EXPECTED_LAST_SUBJECT_SEQ_HEADER: Final = "Nats-Expected-Last-Subject-Sequence"
KV_OPERATION_HEADER: Final = "KV-Operation"
SCHEDULE_TIME_ZONE_HEADER: Final = "Nats-Schedule-Time-Zone"
ROLLUP_HEADER: Final = "Nats-Rollup"
INDEX_ENTERED_HEADER: Final = "Oqron-Entered"
"""On a state-index entry copied from the layout of 0.1: when the job entered the state."""
SCHEDULER_HEADER: Final = "Nats-Scheduler"
"""The schedule subject that fired a message (set by the server on every fired copy)."""
SCHEDULE_NEXT_HEADER: Final = "Nats-Schedule-Next"
"""On a fired copy: when its schedule fires next, or "purge" for a one-shot schedule."""
RECORD_HEADER: Final = "Oqron-Record"
RECORD_REVISION_HEADER: Final = "Oqron-Record-Revision"
"""On a job message: a copy of the job's record (JSON) and the revision it was stored at, so a
worker can claim the job by compare-and-set without reading the record first (a copy that is
not the record at that revision any more fails the compare-and-set, and the worker reads it)."""
KEPT_SCHEDULER_HEADER: Final = "Oqron-Scheduler"
KEPT_SCHEDULE_NEXT_HEADER: Final = "Oqron-Schedule-Next"
"""A tick moved to the lifo run lane keeps its two headers above under these names (a message
published with the server's own ones would be taken as a command to its schedule)."""
WORKER_ROLE: Final = "=worker"
"""The key token under which consuming workers announce themselves (presence)."""
PRESENCE_TTL: Final = 30.0
"""Seconds a worker's presence key lives unless renewed (a killed worker's key expires)."""
LISTENER_ROLE: Final = "=listener"
"""The key token under which processes listening to a queue's events say so."""
LISTENER_TTL: Final = 30.0
"""Seconds a listener key lives unless written again (a killed listener's key expires)."""
REPEAT_MARK: Final = "="
"""Begins the last token of a repeating schedule's subjects: never a job id's first character."""
REJECTED: Final = "=rejected"
"""A subject token no queue name or job id can be: where rejected messages are counted."""


class Names:
    """The names of one queue's NATS resources."""

    __slots__ = ("namespace", "queue")

    def __init__(self, namespace: str, queue: str) -> None:
        self.namespace = check_namespace(namespace)
        self.queue = check_name(queue)

    @property
    def stream(self) -> str:
        """The queue's WorkQueue stream."""
        return f"OQRON_{self.namespace}_Q_{self.queue}"

    @classmethod
    def placeholders(cls) -> Names:
        """The names of queue ``<q>`` in namespace ``<ns>``: not valid names, for documentation
        (see ``resources``)."""
        names = cls.__new__(cls)
        names.namespace, names.queue = "<ns>", "<q>"
        return names

    @property
    def index_stream(self) -> str:
        """The stream of the queue's state index."""
        return f"OQRON_{self.namespace}_X_{self.queue}"

    def index_entry(self, state: str, job_id: str) -> str:
        """The subject of a job's entry in the index of ``state``."""
        return f"oqron.{self.namespace}.idx.{self.queue}.{state}.{job_id}"

    @property
    def index_entries_of_queue(self) -> str:
        """Every state-index entry of the queue, in any state."""
        return f"oqron.{self.namespace}.idx.{self.queue}.>"

    def index_entries(self, state: str) -> str:
        """A wildcard over the index of ``state``."""
        return f"oqron.{self.namespace}.idx.{self.queue}.{state}.*"

    def index_entries_of_job(self, job_id: str) -> str:
        """A wildcard over one job's entries, in every state."""
        return f"oqron.{self.namespace}.idx.{self.queue}.*.{job_id}"

    def legacy_index_stream(self, state: str) -> str:
        """The per-state index stream of oqron_nats 0.1 (migrated at start, then deleted)."""
        return self._legacy_index_stream(STATE_CODES[state])

    def _legacy_index_stream(self, code: str) -> str:
        return f"OQRON_{self.namespace}_X{code}_{self.queue}"

    @property
    def legacy_index_entries(self) -> str:
        """Every entry of the per-state index streams of oqron_nats 0.1."""
        return f"oqron.{self.namespace}.ix.{self.queue}.>"

    def legacy_index_entry(self, state: str, job_id: str) -> str:
        """A job's entry in the per-state index of oqron_nats 0.1 (tests build the old layout)."""
        return f"oqron.{self.namespace}.ix.{self.queue}.{state}.{job_id}"

    def lane(self, priority: int, job_id: str) -> str:
        """The subject of a job's message on the lane of ``priority``."""
        return f"oqron.{self.namespace}.q.{self.queue}.p{priority}.{job_id}"

    def lane_filter(self, priority: int) -> str:
        """A wildcard over the lane of ``priority``."""
        return f"oqron.{self.namespace}.q.{self.queue}.p{priority}.*"

    @property
    def lanes(self) -> str:
        """A wildcard over every lane of the queue."""
        return f"oqron.{self.namespace}.q.{self.queue}.>"

    def schedule(self, job_id: str) -> str:
        """The subject of a job's message schedule."""
        return f"oqron.{self.namespace}.s.{self.queue}.{job_id}"

    @property
    def schedules(self) -> str:
        """A wildcard over every schedule of the queue."""
        return f"oqron.{self.namespace}.s.{self.queue}.*"

    # -- repeating schedules (q.schedule()) ---------------------------------------------------

    def repeat(self, name: str) -> str:
        """The subject of a repeating schedule (beside the delays: the stream already has it)."""
        return f"oqron.{self.namespace}.s.{self.queue}.{REPEAT_MARK}{name}"

    def tick(self, priority: int, name: str) -> str:
        """Where a repeating schedule's ticks land: a subject of the lane of ``priority``."""
        return f"oqron.{self.namespace}.q.{self.queue}.p{priority}.{REPEAT_MARK}{name}"

    def last_tick(self, name: str) -> str:
        """The key, in the jobs bucket, of the last tick a repeating schedule made (``=`` can
        begin no job id, so it is no record's key, and scans skip it)."""
        return f"{self.queue}.{REPEAT_MARK}{name}"

    def repeat_name(self, subject: str) -> str | None:
        """The schedule's name if ``subject`` is one of this queue's repeating schedules."""
        prefix = f"oqron.{self.namespace}.s.{self.queue}.{REPEAT_MARK}"
        return subject[len(prefix) :] if subject.startswith(prefix) else None

    @staticmethod
    def is_repeating(subject: str) -> bool:
        """Whether ``subject`` is a repeating schedule or its ticks' lane subject (no job's)."""
        return subject.rsplit(".", 1)[-1].startswith(REPEAT_MARK)

    def lane_of(self, job_id: str) -> str:
        """A wildcard over a job's messages on every lane."""
        return f"oqron.{self.namespace}.q.{self.queue}.*.{job_id}"

    def control(self, command: str, job_id: str) -> str:
        """A command to the queue's workers about one job (core NATS), e.g. cancel."""
        return f"oqron.{self.namespace}.ctl.{self.queue}.{command}.{job_id}"

    @property
    def controls(self) -> str:
        """A wildcard over every command to the queue's workers."""
        return f"oqron.{self.namespace}.ctl.{self.queue}.>"

    def run(self, job_id: str) -> str:
        """Where a lifo or priority worker moves a job from its lane, to claim it through the
        run lane's consumer."""
        return f"oqron.{self.namespace}.run.{self.queue}.{job_id}"

    @property
    def run_lane(self) -> str:
        """A wildcard over the run lane (lifo, priority)."""
        return f"oqron.{self.namespace}.run.{self.queue}.*"

    def held(self, job_id: str) -> str:
        """The marker of a job held while the queue is paused."""
        return f"oqron.{self.namespace}.held.{self.queue}.{job_id}"

    @property
    def helds(self) -> str:
        """A wildcard over the queue's held jobs."""
        return f"oqron.{self.namespace}.held.{self.queue}.*"

    @property
    def bell(self) -> str:
        """Headers-only copies of every lane message (wildcard): wake idle lifo and priority
        workers."""
        return f"oqron.{self.namespace}.bell.{self.queue}.>"

    def consumer_elected(self, durable: str) -> str:
        """The server's advisory that the queue's consumer ``durable`` has a new leader."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{self.stream}.{durable}"

    @property
    def consumers_elected(self) -> str:
        """The advisories of a new leader of any of the queue's consumers (wildcard)."""
        return self.consumer_elected("*")

    def bell_lane(self, subject: str) -> int | None:
        """The priority of the lane a bell message rang for (its subject), or None."""
        prefix = f"oqron.{self.namespace}.bell.{self.queue}.p"
        level = subject[len(prefix) :].split(".", 1)[0] if subject.startswith(prefix) else ""
        return int(level) if level.isdigit() else None

    def event(self, job_id: str, name: str) -> str:
        """The subject of one job's lifecycle event ``name``."""
        return f"oqron.{self.namespace}.ev.{self.queue}.{job_id}.{name}"

    def job_events(self, job_id: str) -> str:
        """A wildcard over one job's events."""
        return f"oqron.{self.namespace}.ev.{self.queue}.{job_id}.*"

    @property
    def events(self) -> str:
        """A wildcard over every event of the queue."""
        return f"oqron.{self.namespace}.ev.{self.queue}.>"

    @property
    def rate_stream(self) -> str:
        """The namespace's stream of rate-limit counters."""
        return f"OQRON_{self.namespace}_RATE"

    @property
    def rate_subjects(self) -> str:
        """Every rate-limit counter of the namespace."""
        return f"oqron.{self.namespace}.rate.>"

    @property
    def rate_of_queue(self) -> str:
        """Every counter of the queue (rate-limit windows, rejected messages)."""
        return f"oqron.{self.namespace}.rate.{self.queue}.>"

    def rate(self, group: str, window: int) -> str:
        """The counter of one group's starts in one window."""
        return f"oqron.{self.namespace}.rate.{self.queue}.{group}.{window}"

    @property
    def dlq_stream(self) -> str:
        """The namespace's dead-letter stream."""
        return f"OQRON_{self.namespace}_DLQ"

    @property
    def dlq_subjects(self) -> str:
        """Every dead-letter subject of the namespace."""
        return f"oqron.{self.namespace}.dlq.>"

    @property
    def dlq_of_queue(self) -> str:
        """Every dead letter and rejected-message sample of the queue."""
        return f"oqron.{self.namespace}.dlq.{self.queue}.>"

    def dead_letter(self, job_id: str) -> str:
        """The subject holding a job's dead letter (one per job)."""
        return f"oqron.{self.namespace}.dlq.{self.queue}.{job_id}"

    def rejected(self, reason: str) -> str:
        """The subject holding the latest sample of a message rejected for ``reason`` (in the
        dead-letter stream, beside the dead letters but not among them)."""
        return f"oqron.{self.namespace}.dlq.{self.queue}.{REJECTED}.{reason}"

    @property
    def rejected_samples(self) -> str:
        """Every rejected-message sample of the queue."""
        return f"oqron.{self.namespace}.dlq.{self.queue}.{REJECTED}.*"

    @property
    def rejections(self) -> str:
        """The counter of the queue's rejected messages (in the counter stream)."""
        return f"oqron.{self.namespace}.rate.{self.queue}.{REJECTED}"

    @property
    def jobs_bucket(self) -> str:
        """The KV bucket of the queue's job records (one per queue: its size is the queue's
        storage, and permissions scope to it)."""
        return f"oqron_{self.namespace}_jobs_{self.queue}"

    @property
    def shared_jobs_bucket(self) -> str:
        """Where oqron_nats 0.1.0 kept every queue's records (one bucket per namespace)."""
        return f"oqron_{self.namespace}_jobs"

    @property
    def deps_bucket(self) -> str:
        """The KV bucket of parent -> child edges (flows)."""
        return f"oqron_{self.namespace}_deps"

    def edge(self, parent_id: str, child_id: str) -> str:
        """The key of one parent -> child edge."""
        return f"{self.queue}.{parent_id}.{child_id}"

    def edges_of(self, parent_id: str) -> str:
        """A key filter over a parent's edges."""
        return f"{self.queue}.{parent_id}.*"

    @property
    def all_edges(self) -> str:
        """A key filter over every edge of the queue's flows."""
        return f"{self.queue}.>"

    @property
    def queues_bucket(self) -> str:
        """The KV bucket of queue states."""
        return f"oqron_{self.namespace}_queues"

    @property
    def locks_bucket(self) -> str:
        """The KV bucket of heartbeat leases."""
        return f"oqron_{self.namespace}_locks"

    def key(self, job_id: str) -> str:
        """The KV key of a job, in both the jobs and the locks bucket."""
        return f"{self.queue}.{job_id}"

    def role_key(self, role: str) -> str:
        """The lease key of a cluster-wide role (``=`` cannot occur in a job id)."""
        return f"{self.queue}.={role}"

    def presence_key(self, worker: str) -> str:
        """The key (queues bucket) that says ``worker`` (``<host>-<pid>``) consumes the queue."""
        return f"{self.queue}.{WORKER_ROLE}.{worker}"

    @property
    def presence_keys(self) -> str:
        """A key filter over the presence keys of the queue's workers."""
        return f"{self.queue}.{WORKER_ROLE}.>"

    def listener_key(self, listener: str) -> str:
        """The key (queues bucket) that says ``listener`` listens to the queue's events."""
        return f"{self.queue}.{LISTENER_ROLE}.{listener}"

    @property
    def listener_keys(self) -> str:
        """A key filter over the listener keys of the queue."""
        return f"{self.queue}.{LISTENER_ROLE}.*"

    @property
    def keys(self) -> str:
        """A KV key filter over every job of the queue."""
        return f"{self.queue}.*"


def resources() -> list[tuple[str, str]]:
    """What oqron_nats keeps in NATS for a queue ``<q>`` of namespace ``<ns>``, for people: rows
    of (what, where), every name built by the methods above."""
    n, job = Names.placeholders(), "<id>"
    top = PRIORITY_LEVELS - 1
    return [
        (
            "work-queue stream of the queue",
            f"`{n.stream}`: lanes `{n.lane(0, job)}`..`{n.lane(top, job)}`, schedules "
            f"`{n.schedule(job)}`, repeating schedules `{n.repeat('<name>')}` and their ticks "
            f"`{n.tick(0, '<name>')}`..., run lane (lifo, priority) `{n.run(job)}`, jobs held "
            f"while paused `{n.held(job)}` (the job id ends every subject, so `nats stream view` "
            "shows which jobs are queued)",
        ),
        (
            "consumers",
            "on the queue's stream, one: `fifo` (over the lanes), or `lifo` or `priority` (over "
            f"the run lane); oqron_nats up to 0.1 kept `p0`..`p{top}` for priority, removed when "
            "a worker opens the queue",
        ),
        (
            "state index (counts, `oqron jobs list`)",
            f"stream `{n.index_stream}` (one per queue), subject "
            f"`{n.index_entry('<state>', job)}`, one per job and state; a job that left a state "
            f"leaves a delete marker there for a second (header `{KV_OPERATION_HEADER}: DEL`); "
            f"the per-state streams of oqron_nats 0.1 (`{n._legacy_index_stream('<c>')}`) are "
            "copied in and deleted when a worker opens the queue",
        ),
        (
            "job records",
            f"KV bucket `{n.jobs_bucket}` (one per queue), key `{n.key(job)}` (JSON: `nats kv "
            f"get {n.jobs_bucket} {n.key(job)}`); oqron_nats 0.1.0 kept them in "
            f"`{n.shared_jobs_bucket}` (a queue with records left there is refused at start: "
            "drain it with 0.1.0 before upgrading)",
        ),
        (
            "leases",
            f"KV bucket `{n.locks_bucket}` (one per namespace), key `{n.key(job)}` per running "
            f"job, per-key TTL; `{n.role_key('<role>')}` while a worker leads a maintenance pass "
            "(stall-scanner, orphan-sweep, ...)",
        ),
        (
            "queue state, workers online, event listeners",
            f"KV bucket `{n.queues_bucket}` (one per namespace): key `{n.queue}` (paused or "
            f"not), keys `{n.presence_key('<host>-<pid>')}` (one per consuming process, TTL "
            f"{PRESENCE_TTL:g} s), keys `{n.listener_key('<id>')}` (one per process listening to "
            f"the queue's events, TTL {LISTENER_TTL:g} s: events are published only while one "
            "lives)",
        ),
        (
            "flow edges (`depends_on`)",
            f"KV bucket `{n.deps_bucket}` (one per namespace), key "
            f"`{n.edge('<parent_id>', '<child_id>')}`",
        ),
        (
            "dead letters",
            f"stream `{n.dlq_stream}` (one per namespace), subject `{n.dead_letter(job)}` (one "
            f"per job); the latest message rejected for each reason at `{n.rejected('<reason>')}`",
        ),
        (
            "rate-limit counters",
            f"stream `{n.rate_stream}` (one per namespace), subjects `{n.rate_of_queue}` (a "
            f"counter per group and window) and `{n.rejections}` (messages rejected)",
        ),
        (
            "core NATS, not stored",
            f"events `{n.event(job, '<event>')}`, commands to the workers "
            f"`{n.control('<command>', job)}` (cancel), wake-ups of lifo and priority workers "
            f"`{n.bell}`; workers listen to the server's advisories of a new leader of their "
            f"consumer, `{n.consumers_elected}`",
        ),
    ]


def markdown_table() -> str:
    """``resources()`` as the markdown table of the README's "What is in NATS"."""
    lines = ["| what | name |", "| --- | --- |"]
    lines += [f"| {what} | {where} |" for what, where in resources()]
    return "\n".join(lines)
