"""Queue-wide state shared by every process: whether the queue is paused.

The state lives in the namespace's ``oqron_<ns>_queues`` bucket under the queue's name and
changes by compare-and-set. Pausing also pauses the queue's consumers on the server, so no
worker receives a job within moments, even one that has not seen the new state yet; workers
watch the key and stop claiming, and a worker that starts while the queue is paused creates its
consumers paused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

import msgspec

from .._nats import Bucket, CasConflict, Msg, Nats, jittered
from .._nats.names import EXPECTED_LAST_SUBJECT_SEQ_HEADER, Names
from ..core.background import finish
from ..observe.log import logger

log = logger(__name__)

PAUSED_FOREVER = "2999-01-01T00:00:00Z"
"""A consumer's pause_until for a queue paused until someone resumes it."""
RECHECK_PAUSED = 5.0
RECHECK_RUNNING = 30.0
"""Seconds after which the state is read again though no change was heard, while the queue is
paused or running (a missed pause is also on the consumers, paused on the server)."""
WRITE_SETTLE = 2.0
WRITE_SETTLE_POLL = 0.05
"""Seconds a heard write is waited for at the leader (read again every poll), before it is
taken as a compare-and-set that lost."""
FIRST_REREAD_PAUSE = 0.2
MAX_REREAD_PAUSE = 5.0
"""Seconds between the tries of a state read that failed: doubling up to the cap."""
APPLY_ROUNDS = 5
"""How often apply_to_consumers follows a state that keeps changing under it."""


class QueueState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The persisted state of a queue."""

    paused: bool = False
    changed_at: datetime | None = None
    flows: bool = False
    """Whether any job of the queue ever had parents (finishing jobs then look for children)."""
    v: int = 1


_decoder = msgspec.json.Decoder(QueueState)


def decode_state(value: bytes | None) -> QueueState:
    """A stored state; an absent or undecodable one is the default (running)."""
    if not value:
        return QueueState()
    try:
        return _decoder.decode(value)
    except msgspec.DecodeError:
        log.warning("undecodable queue state ignored")
        return QueueState()


class Control:
    """Reads, changes and watches one queue's state."""

    def __init__(self, conn: Nats, names: Names) -> None:
        self.conn = conn
        self.names = names
        self.bucket = Bucket(conn, names.queues_bucket)
        self.state = QueueState()
        """The last state seen (kept fresh by ``follow``)."""
        self.listeners: list[Callable[[QueueState], None]] = []
        """Called with every new state that ``follow`` sees."""

    async def read(self) -> QueueState:
        """The current state, as the bucket's leader has it.

        Always at the leader: any replica answers a direct read, and one behind it showed a
        resume the state before it (the workers stayed paused), or a resume() a queue that
        looked running already, so that it changed nothing. State reads are rare (a change, a
        reconnect, an admin call), never on the job path.
        """
        return (await self._read_at_revision())[0]

    async def _read_at_revision(self) -> tuple[QueueState, int]:
        """The current state and its revision (0: never written), as the leader has it."""
        entry = await self.bucket.get(self.names.queue, fresh=True)
        self.state = decode_state(entry.value if entry else None)
        return self.state, entry.revision if entry else 0

    async def set_paused(self, paused: bool) -> bool:
        """Pause or resume; True if this call changed the state."""
        return await self._change(paused=paused)

    async def note_flows(self) -> None:
        """Remember (for good) that the queue has jobs with parents."""
        if not self.state.flows:
            await self._change(flows=True)

    async def _change(self, **fields: bool) -> bool:
        key = self.names.queue
        while True:
            entry = await self.bucket.get(key, fresh=True)  # see read()
            current = decode_state(entry.value if entry else None)
            if all(getattr(current, name) == value for name, value in fields.items()):
                self.state = current
                return False
            new = msgspec.structs.replace(current, changed_at=datetime.now(UTC), **fields)
            try:
                if entry is None:
                    await self.bucket.create(key, msgspec.json.encode(new))
                else:
                    await self.bucket.update(key, msgspec.json.encode(new), last=entry.revision)
            except CasConflict:
                continue  # someone changed it meanwhile: look again
            self.state = new
            return True

    async def tell_cancel(self, job_id: str) -> None:
        """Tell every worker of the queue that a job was cancelled (its holder stops it)."""
        await self.conn.publish_core(self.names.control("cancel", job_id))

    async def hear_cancels(self, cancelled: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        """Call ``cancelled`` with the id of every job that ``tell_cancel`` announces, from any
        process; returns the stop call."""

        async def heard(msg: Msg) -> None:
            command, job_id = msg.subject.rsplit(".", 2)[-2:]
            if command == "cancel":
                cancelled(job_id)

        sub = await self.conn.subscribe(self.names.controls, heard)
        return sub.unsubscribe

    async def apply_to_consumers(self) -> None:
        """Pause or resume every consumer of the queue's stream as the queue state is now.

        The state is read again after applying it: a pause and a resume from two processes
        can reach the consumers in the other order than the state, and the last one to look
        sets them as the state ended.
        """
        applied: bool | None = None
        for _ in range(APPLY_ROUNDS):
            paused = (await self.read()).paused
            if paused == applied:
                return
            await self.set_consumers(paused, await self.conn.consumer_names(self.names.stream))
            applied = paused

    async def set_consumers(self, paused: bool, consumers: Iterable[str]) -> None:
        """Pause (until the far future) or resume the named consumers of the queue's stream;
        one that does not exist is skipped."""
        until = PAUSED_FOREVER if paused else None
        for name in consumers:
            await self.conn.pause_consumer(self.names.stream, name, until)

    async def follow(self) -> Callable[[], Awaitable[None]]:
        """Keep ``state`` fresh and tell the listeners of every change; returns the stop call.

        Every write of a KV key is also published on its subject, so a core subscription hears
        each write attempt as it happens; the key is then read again, because an attempt that
        lost its compare-and-set is heard too. After a reconnect (changes may have been missed
        meanwhile) the key is read again as well, and every RECHECK_PAUSED (RECHECK_RUNNING)
        seconds regardless: a change can be missed while the cluster moves (a resume missed so
        held every worker in the cluster chaos suite). One task does the reading, at the
        bucket's leader, and waits for a heard write to be stored (its core copy can come
        first): what it is told while it reads makes it read once more, and a read that fails
        is tried again.
        """
        subject = self.bucket.subject(self.names.queue)
        stale = asyncio.Event()
        awaited = [0]
        """The revision a heard write will have once stored: the core copy of a write can reach
        us before the stream has stored it, and a read then shows the state before it."""

        async def read_heard() -> None:
            settle_until = asyncio.get_running_loop().time() + WRITE_SETTLE
            while True:
                state, revision = await self._read_at_revision()
                if revision >= awaited[0] or asyncio.get_running_loop().time() > settle_until:
                    break  # stored (or its compare-and-set lost: nothing more will come)
                await asyncio.sleep(WRITE_SETTLE_POLL)
            self._set(state)

        async def keep_reading() -> None:
            pause = FIRST_REREAD_PAUSE
            while True:
                # a change is heard at most once (core NATS), and one can be missed while the
                # cluster moves: the state is read again now and then regardless, soon while
                # paused (a missed resume would hold every worker)
                recheck = RECHECK_PAUSED if self.state.paused else RECHECK_RUNNING
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(recheck):
                        await stale.wait()
                stale.clear()
                try:
                    await read_heard()
                except Exception as exc:
                    if self.conn.is_closed:  # its client was closed: nothing more to follow
                        return
                    log.warning("queue state not read; trying again", queue=self.names.queue,
                                error=repr(exc))  # fmt: skip
                    stale.set()
                    await asyncio.sleep(jittered(pause))
                    pause = min(2 * pause, MAX_REREAD_PAUSE)
                else:
                    pause = FIRST_REREAD_PAUSE

        async def heard(msg: Msg) -> None:
            expected = (msg.headers or {}).get(EXPECTED_LAST_SUBJECT_SEQ_HEADER, "")
            if expected.isdigit():  # a compare-and-set write: stored, it is past that revision
                awaited[0] = max(awaited[0], int(expected) + 1)
            stale.set()

        reader = asyncio.create_task(keep_reading(), name=f"oqron-state-{self.names.queue}")
        sub = await self.conn.subscribe(subject, heard)
        forget = self.conn.on_reconnect(stale.set)

        async def stop() -> None:
            forget()
            await finish(reader, grace=0)
            with contextlib.suppress(Exception):  # a closed connection has nothing to undo
                await sub.unsubscribe()

        return stop

    def _set(self, state: QueueState) -> None:
        self.state = state
        for listener in list(self.listeners):
            listener(state)
