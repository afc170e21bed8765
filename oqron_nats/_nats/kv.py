"""KV buckets through raw JetStream calls: compare-and-set writes with optional per-key TTL.

nats-py's ``KeyValue.update`` cannot set a TTL, and its CAS errors come in two classes; here every
write is a publish with ``Nats-Expected-Last-Subject-Sequence`` and every failed CAS is a
:class:`CasConflict`. A write whose first try timed out is retried; if the retry then conflicts,
the key is read back: finding our own value means the first try landed (README, Reliability).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from .facade import Nats
from .names import EXPECTED_LAST_SUBJECT_SEQ_HEADER, KV_OPERATION_HEADER, TTL_HEADER
from .replies import CasConflict, PubAck, StoredMsg, parse_time

GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@functools.lru_cache(maxsize=64)  # a queue's retention gives the same few, once per job
def ttl_header(seconds: float) -> str:
    """A Nats-TTL value (the server's minimum is one second)."""
    return f"{max(1000, round(seconds * 1000))}ms"


def ttl_seconds(value: str) -> float | None:
    """A Nats-TTL value in seconds: whole seconds or a Go duration ("1h30m", "500ms"); None
    for "never" or anything else."""
    if value.isdigit():
        return float(value)
    parts = GO_DURATION.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        return None
    return sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)


def expires_in(msg: StoredMsg) -> float | None:
    """Seconds until a stored message's Nats-TTL runs out, from the server's time stamp of it
    and this host's clock (its whole TTL if the stamp is missing); None if it never expires."""
    header = msg.headers.get(TTL_HEADER)
    ttl = None if header is None else ttl_seconds(header)
    if ttl is None:
        return None
    stored = parse_time(msg.headers.get("Nats-Time-Stamp", ""))
    return ttl if stored is None else ttl - (datetime.now(UTC) - stored).total_seconds()


class Entry:
    """A KV value with its revision (the stream sequence of the write), and the seconds
    until it expires (None: never, or not read)."""

    __slots__ = ("expires_in", "key", "revision", "value")

    def __init__(
        self, key: str, value: bytes, revision: int, expires_in: float | None = None
    ) -> None:
        self.key = key
        self.value = value
        self.revision = revision
        self.expires_in = expires_in


def stream_of(bucket: str) -> str:
    """The stream that holds a KV bucket."""
    return f"KV_{bucket}"


class Bucket:
    """One KV bucket."""

    def __init__(self, conn: Nats, name: str) -> None:
        self.conn = conn
        self.name = name
        self.stream = stream_of(name)
        self._prefix = f"$KV.{name}."

    def subject(self, key: str) -> str:
        """The subject a key's writes are published on (a filter, for a key filter)."""
        return self._prefix + key

    async def keys(self, key_filter: str) -> list[str]:
        """The keys matching ``key_filter`` that hold a message (a delete marker counts)."""
        subjects = await self.conn.subjects(self.stream, self.subject(key_filter))
        return [subject.removeprefix(self._prefix) for subject in subjects]

    async def purge(self, key_filter: str) -> None:
        """Remove every message of the keys matching ``key_filter``."""
        await self.conn.purge_subject(self.stream, self.subject(key_filter))

    async def get(self, key: str, *, fresh: bool = False) -> Entry | None:
        """The current value of ``key``, or None if it is missing, deleted or expired.

        Any replica of the bucket may answer, and one that lags behind can miss the newest
        writes; ``fresh`` asks the bucket's leader, which has every acknowledged write.
        """
        return await self._newest(key, deleted=False, fresh=fresh)

    async def tombstone(self, key: str) -> Entry | None:
        """The delete marker of a deleted ``key`` (with what the delete left in it), or None."""
        return await self._newest(key, deleted=True)

    async def _newest(self, key: str, *, deleted: bool, fresh: bool = False) -> Entry | None:
        subject = self._prefix + key
        if fresh:
            msg = await self.conn.leader_get(self.stream, subject)
        else:
            msg = await self.conn.direct_get_subject(self.stream, subject)
        if msg is None or _is_delete(msg) != deleted:
            return None
        return Entry(key, msg.data, msg.seq, expires_in(msg))

    async def create(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Write ``key`` only if it does not exist (or was deleted); return the revision."""
        try:
            return await self._write(key, value, last=0, ttl=ttl)
        except CasConflict:
            stone = await self.tombstone(key)
            if stone is None:
                raise
            # A tombstone is there: create on top of it, as nats-py does.
            return await self._write(key, value, last=stone.revision, ttl=ttl)

    async def create_many(self, items: Sequence[tuple[str, bytes]]) -> list[int | Exception]:
        """:meth:`create` of each ``(key, value)``, their first tries sent at once: for each,
        in order, its revision or what its create raised. A key that was not plainly created
        at once (it exists, or NATS did not answer) goes through :meth:`create` on its own,
        side by side with the others (each may take up to the retry deadline); a first try
        that landed though its answer was lost is then a CasConflict (the caller finds the
        record as it is, see ``runtime/adding.py``)."""
        first = {EXPECTED_LAST_SUBJECT_SEQ_HEADER: "0"}
        created = await self.conn.publish_at_once(
            [(self._prefix + key, value, first) for key, value in items]
        )
        results: list[int | Exception] = [
            answer.seq if isinstance(answer, PubAck) else 0 for answer in created
        ]
        again = [n for n, answer in enumerate(created) if not isinstance(answer, PubAck)]
        if again:
            retried = await asyncio.gather(*(self._create_again(*items[n]) for n in again))
            for n, result in zip(again, retried, strict=True):
                results[n] = result
        return results

    async def _create_again(self, key: str, value: bytes) -> int | Exception:
        """:meth:`create` after a first try that did not plainly create ``key``: the revision,
        or what it raised (CasConflict also when the unanswered try landed after all)."""
        try:
            return await self.create(key, value)
        except Exception as exc:
            return exc

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Write ``key`` whatever it holds; return the revision."""
        headers = {TTL_HEADER: ttl_header(ttl)} if ttl is not None else None
        return (await self.conn.publish(self._prefix + key, value, headers)).seq

    def update(
        self, key: str, value: bytes, *, last: int, ttl: float | None = None
    ) -> Coroutine[Any, Any, int]:
        """Write ``key`` only if its revision is still ``last``; return the new revision (a
        plain function returning the write: one coroutine less on every job's two writes)."""
        return self._write(key, value, last=last, ttl=ttl)

    async def delete(
        self, key: str, *, last: int, ttl: float | None = None, epitaph: bytes = b""
    ) -> None:
        """Delete ``key`` if its revision is still ``last``; the tombstone keeps ``epitaph``
        (see :meth:`tombstone`) and expires after ``ttl``."""
        await self.conn.publish(self._prefix + key, epitaph, _delete_headers(last, ttl))

    async def delete_later(self, key: str, *, last: int, ttl: float | None = None) -> None:
        """Like :meth:`delete`, without waiting for the answer (a conflict goes unnoticed)."""
        await self.conn.publish_core(self._prefix + key, headers=_delete_headers(last, ttl))

    async def _write(self, key: str, value: bytes, *, last: int, ttl: float | None) -> int:
        headers = {EXPECTED_LAST_SUBJECT_SEQ_HEADER: str(last)}
        if ttl is not None:
            headers[TTL_HEADER] = ttl_header(ttl)
        subject = self._prefix + key
        try:
            return (await self.conn.publish(subject, value, headers)).seq
        except CasConflict as conflict:
            if not conflict.after_timeout:
                raise
            current = await self.get(key, fresh=True)  # a lagging replica may miss it
            if current is not None and current.value == value:
                return current.revision  # our own write landed on an earlier try
            raise

    async def scan(self, key_filter: str, batch: int = 512) -> AsyncIterator[Entry]:
        """Every live entry whose key matches ``key_filter``, read in batches of messages."""
        start = 1
        while True:
            messages, more = await self.conn.direct_batch(
                self.stream, start=start, subject=self._prefix + key_filter, batch=batch
            )
            for msg in messages:
                if not _is_delete(msg):
                    yield Entry(msg.subject[len(self._prefix) :], msg.data, msg.seq)
            if not messages or more == 0:
                return
            start = messages[-1].seq + 1


def _delete_headers(last: int, ttl: float | None) -> dict[str, str]:
    headers = {KV_OPERATION_HEADER: "DEL", EXPECTED_LAST_SUBJECT_SEQ_HEADER: str(last)}
    if ttl is not None:
        headers[TTL_HEADER] = ttl_header(ttl)
    return headers


def _is_delete(msg: StoredMsg) -> bool:
    return msg.headers.get(KV_OPERATION_HEADER) in ("DEL", "PURGE")
