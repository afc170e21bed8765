"""Reading single messages and batches straight from a stream, with the leader detour.

A direct get is answered by any replica; a hung replica (stopped, not crashed) loses the
requests the cluster routes to it until its routes time out. So after a direct get of a stream
went unanswered, that stream's single-message reads go to its leader for :data:`DETOUR` seconds
(a leader is re-elected within seconds, and answers). A user whose permissions allow only direct
gets keeps reading through them.

A replica can also answer from data minutes old (:mod:`.lagging`): while the leader of a
replicated stream being read says one of its replicas stays behind, single-message reads of it
take the same detour.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time

import msgspec
import nats.errors
from nats.aio.msg import Msg

from ..core.errors import JetStreamError, PermissionDenied, Unavailable
from ..observe.log import logger
from .conn import Connection
from .direct import DirectClient, parse_headers
from .lagging import LOOK_EVERY, Lagging, Look
from .replies import NO_MESSAGE, MsgGet, RawMessage, StoredMsg, StreamReplicas, stored_msg
from .retry import Backoff

log = logger(__name__)

DETOUR = 30.0
"""Seconds that single-message reads of a stream go to its leader after a direct get of it went
unanswered. Every replica answers direct gets, and a hung one (stopped, not crashed) keeps its
place among them until its routes time out, minutes later: the requests the cluster routes to
it are lost. The leader is re-elected within seconds, and answers."""


class Reads(Connection):
    """The connection's reads of stored messages: direct gets, leader reads and batches."""

    def __init__(self, nc: DirectClient, *, request_timeout: float, retry_deadline: float) -> None:
        super().__init__(nc, request_timeout=request_timeout, retry_deadline=retry_deadline)
        self._detours: dict[str, float] = {}
        """Stream -> until when (monotonic) its single-message reads go to its leader."""
        self._lagging = Lagging()
        self._looks: dict[str, asyncio.Task[None]] = {}
        """Stream -> the look at its replicas under way (one at a time, see :meth:`_watch`)."""

    async def direct_get(self, stream: str, *, last_by_subject: str) -> StoredMsg | None:
        """The newest message on ``last_by_subject`` (wildcards allowed), or None."""
        return await self._read_one(stream, {"last_by_subj": last_by_subject})

    async def has_message(self, stream: str, seq: int) -> bool:
        """Whether the message with sequence ``seq`` is still in the stream."""
        return await self._read_one(stream, {"seq": seq}) is not None

    async def direct_get_subject(self, stream: str, subject: str) -> StoredMsg | None:
        """The newest message on one exact subject, or None (the fast KV read path: the
        subject is in the request's subject, which permissions can scope)."""
        return await self._read_one(stream, {"last_by_subj": subject}, in_subject=True)

    async def leader_get(self, stream: str, subject: str) -> StoredMsg | None:
        """The newest message on one exact subject, or None, as the stream's leader has it.

        A direct get is answered by any replica, and a replica of a replicated stream may not
        have the last acknowledged writes yet; the leader has every one of them. Slower (one
        server answers, through the JetStream API): for the reads a decision must not be
        taken on alone.
        """
        return await self._leader_read(stream, {"last_by_subj": subject})

    async def _read_one(
        self, stream: str, query: dict[str, object], *, in_subject: bool = False
    ) -> StoredMsg | None:
        """One message by ``query``: a direct get (the query's subject in the request's subject
        if ``in_subject``, else the query in its body), or at the leader while the stream is on
        a detour (see :data:`DETOUR`)."""
        self._watch(stream)
        direct = f"$JS.API.DIRECT.GET.{stream}"
        if in_subject:
            direct, body = f"{direct}.{query['last_by_subj']}", b""
        else:
            body = msgspec.json.encode(query)
        if self._detours.get(stream, 0.0) <= time.monotonic():
            try:
                return stored_msg(await self._requests.request(direct, body))
            except (TimeoutError, nats.errors.NoRespondersError) as exc:
                if (refusal := self._refused.get(direct.lower())) is not None:
                    raise refusal from None
                log.debug("no replica answered a direct get; asking the leader",
                          stream=stream, cause=type(exc).__name__)  # fmt: skip
                self._detours[stream] = time.monotonic() + DETOUR
            except nats.errors.ConnectionClosedError:
                raise Unavailable("the NATS connection is closed") from None
        if f"$js.api.stream.msg.get.{stream}".lower() not in self._refused:
            with contextlib.suppress(PermissionDenied):
                return await self._leader_read(stream, query)
        msg, _ = await self._ask(direct, body)  # this user may read through direct gets only
        return stored_msg(msg)

    async def _leader_read(self, stream: str, query: dict[str, object]) -> StoredMsg | None:
        try:
            reply = await self._api(f"$JS.API.STREAM.MSG.GET.{stream}", query, MsgGet)
        except JetStreamError as exc:
            if exc.err_code in NO_MESSAGE:
                return None
            raise
        raw = reply.message or RawMessage()
        head = base64.b64decode(raw.hdrs) if raw.hdrs else None
        return StoredMsg(
            subject=raw.subject or str(query.get("last_by_subj", "")),
            seq=raw.seq,
            data=base64.b64decode(raw.data) if raw.data else b"",
            headers=parse_headers(head) or {},
        )

    async def direct_batch(
        self,
        stream: str,
        *,
        start: int,
        batch: int,
        subject: str | None = None,
        start_time: str | None = None,
    ) -> tuple[list[StoredMsg], int]:
        """Up to ``batch`` messages (matching ``subject``, if given) from sequence ``start`` on
        (or from the first stored at ``start_time``, RFC 3339, on), in order, and how many more
        there are after them; asked again while no replica answers."""
        request: dict[str, object] = {"batch": batch}
        if start_time is None:
            request["seq"] = start
        else:
            request["start_time"] = start_time
        if subject is not None:
            request["next_by_subj"] = subject
        self._watch(stream)
        backoff = Backoff(self.retry_deadline)
        subject = f"$JS.API.DIRECT.GET.{stream}"
        while True:
            try:
                return await self._direct_batch_once(subject, msgspec.json.encode(request), batch)
            except (TimeoutError, nats.errors.NoRespondersError) as exc:
                if (refusal := self._refused.get(subject.lower())) is not None:
                    raise refusal from None
                if not await backoff.pause():
                    raise Unavailable(
                        f"no replica of stream {stream} answered a batch read within the retry "
                        f"deadline ({exc!r})"
                    ) from None

    async def _direct_batch_once(
        self, subject: str, request: bytes, batch: int
    ) -> tuple[list[StoredMsg], int]:
        inbox = self.new_inbox()
        found: list[StoredMsg] = []
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def received(msg: Msg) -> None:
            if done.done():
                return
            headers = msg.headers or {}
            status = headers.get("Status")
            if status in ("204", "404"):  # end of batch; nothing (more) matches
                done.set_result(0)
                return
            if status:  # 503: no replica answers (an election); 408: the request timed out
                done.set_exception(nats.errors.NoRespondersError())
                return
            stored = stored_msg(msg)
            if stored is not None:
                found.append(stored)
            pending = int(headers.get("Nats-Num-Pending", "0"))
            if len(found) >= batch or pending == 0:
                done.set_result(pending)

        sub = await self.nc.subscribe(inbox, cb=received)
        self._batches.add(done)
        try:
            await self.nc.publish(subject, request, reply=inbox)
            more = await asyncio.wait_for(done, self.request_timeout)
        finally:
            self._batches.discard(done)
            await sub.unsubscribe()
        return found, more

    # -- replicas that stay behind (see .lagging) ----------------------------------------------

    def _watch(self, stream: str) -> None:
        """Look at ``stream``'s replicas in the background when a look is due (a dict lookup
        otherwise: this is on every read's path)."""
        if stream in self._looks or not self._lagging.due(stream, time.monotonic()):
            return
        if self.closing or not self.nc.is_connected:
            return
        look = asyncio.create_task(self._look(stream), name=f"oqron-look-{stream}")
        look.add_done_callback(lambda _: self._looks.pop(stream, None))
        self._looks[stream] = look

    async def _look(self, stream: str) -> None:
        """Ask ``stream``'s leader how far behind its replicas are, and act on the verdict."""
        try:
            info = await self._api(
                f"$JS.API.STREAM.INFO.{stream}", None, StreamReplicas, deadline=0.0
            )
        except PermissionDenied:  # a user allowed direct gets but no STREAM.INFO
            self._lagging.refused(stream)
            return
        except Exception as exc:  # no answer now (an election, a partition): the next look
            log.debug("could not look at a stream's replicas", stream=stream, error=repr(exc))
            return
        cluster = info.cluster
        look = Look(
            at=time.monotonic(),
            leader=cluster.leader if cluster else "",
            last_seq=info.state.last_seq,
            replicas=(cluster and cluster.replicas) or [],
            replicated=info.config.num_replicas > 1,
        )
        before = self._lagging.behind(stream)
        behind = self._lagging.judge(stream, look)
        if behind != before:
            (log.warning if behind else log.info)(
                "replicas of a stream stay behind its leader; reading single messages of it at "
                "the leader (batches may miss what they missed)"
                if behind else "every replica of a stream keeps up again",
                stream=stream, behind=sorted(behind),
            )  # fmt: skip
        if behind:  # until the look after next, at least
            self._detours[stream] = time.monotonic() + 2 * LOOK_EVERY

    def replicas_behind(self, stream: str) -> frozenset[str]:
        """The replicas of ``stream`` found behind its leader at the last look."""
        return self._lagging.behind(stream)

    async def close(self) -> None:
        """Stop looking at replicas, then close (see :meth:`Connection.close`)."""
        for task in list(self._looks.values()):
            task.cancel()
        await super().close()
