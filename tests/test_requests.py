"""Request/reply through one inbox and one timer, against the real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import nats.errors
import pytest

from oqron_nats import Client, queue
from oqron_nats._nats import CasConflict, Msg, PubAck
from oqron_nats._nats.direct import DirectClient, parse_headers
from oqron_nats._nats.requests import Requests
from oqron_nats.testing.server import LocalServer

TIMEOUT = 0.3


@asynccontextmanager
async def requests_on(url: str, timeout: float) -> AsyncIterator[tuple[DirectClient, Requests]]:
    """A connected DirectClient and its started Requests, closed afterwards."""
    nc = DirectClient()
    await nc.connect(url)
    try:
        requests = Requests(nc, timeout)
        await requests.start()
        yield nc, requests
    finally:
        await nc.close()


async def echo_and_silence(nc: DirectClient, namespace: str) -> None:
    """``<namespace>.echo`` answers ``re:<data>``; ``<namespace>.silent`` listens, never answers."""

    async def echo(msg: Msg) -> None:
        await msg.respond(b"re:" + msg.data)

    await nc.subscribe(f"{namespace}.echo", cb=echo)
    await nc.subscribe(f"{namespace}.silent", cb=_ignore)


async def test_replies_come_back_and_silence_times_out(
    nats_server: LocalServer, namespace: str
) -> None:
    async with requests_on(nats_server.url, TIMEOUT) as (nc, requests):
        await echo_and_silence(nc, namespace)
        silent = asyncio.create_task(requests.request(f"{namespace}.silent", b"?"))
        answered = [requests.request(f"{namespace}.echo", b"%d" % n) for n in range(50)]
        replies = await asyncio.gather(*answered)
        assert [m.data for m in replies] == [b"re:%d" % n for n in range(50)]
        with pytest.raises(TimeoutError):
            await silent
        # the timer is armed again for requests sent after it fired
        with pytest.raises(TimeoutError):
            await requests.request(f"{namespace}.silent", b"?")
        assert (await requests.request(f"{namespace}.echo", b"x")).data == b"re:x"
        with pytest.raises(nats.errors.NoRespondersError):
            await requests.request(f"{namespace}.nobody", b"?")


async def test_a_late_request_outlives_an_earlier_timeout(
    nats_server: LocalServer, namespace: str
) -> None:
    async with requests_on(nats_server.url, 1.0) as (nc, requests):
        release = asyncio.Event()

        async def slow(msg: Msg) -> None:  # answers once released, within the later request's time
            await release.wait()
            await msg.respond(b"late")

        await nc.subscribe(f"{namespace}.silent", cb=_ignore)
        await nc.subscribe(f"{namespace}.slow", cb=slow)
        first = asyncio.create_task(requests.request(f"{namespace}.silent", b"?"))
        await asyncio.sleep(0.8)  # the second request's deadline is 0.8 s after the first's
        second = asyncio.create_task(requests.request(f"{namespace}.slow", b"?"))
        with pytest.raises(TimeoutError):
            await first
        assert not second.done()  # the first's expiry left it waiting
        release.set()
        assert (await second).data == b"late"


async def _ignore(msg: Msg) -> None:
    return None


async def test_a_failing_direct_handler_does_not_stop_the_connection(
    nats_server: LocalServer, namespace: str
) -> None:
    nc = DirectClient()
    await nc.connect(nats_server.url)
    try:
        seen: list[bytes] = []
        got_two = asyncio.Event()

        def handler(msg: Msg) -> None:
            seen.append(msg.data)
            if len(seen) == 2:
                got_two.set()
            if msg.data == b"boom":
                raise RuntimeError("handler bug")

        sub = await nc.subscribe_direct(f"{namespace}.direct", handler)
        await nc.publish(f"{namespace}.direct", b"boom", headers={"A": "1"})
        await nc.publish(f"{namespace}.direct", b"fine")
        await asyncio.wait_for(got_two.wait(), 5)
        assert seen == [b"boom", b"fine"]
        await sub.unsubscribe()
        assert not nc._direct  # the handler is forgotten with its subscription
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (b"NATS/1.0\r\n\r\n", None),
        (b"NATS/1.0 503\r\n\r\n", {"Status": "503"}),
        (b"NATS/1.0 404 No Messages\r\n\r\n", {"Status": "404", "Description": "No Messages"}),
        (
            b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 16\r\n\r\n",
            {"Status": "100", "Description": "Idle Heartbeat", "Nats-Last-Consumer": "16"},
        ),
        (
            b"NATS/1.0\r\nNats-Time-Stamp: 2026-11-28T19:20:00Z\r\nbad key: x\r\nnocolon\r\n\r\n",
            {"Nats-Time-Stamp": "2026-11-28T19:20:00Z"},
        ),
    ],
)
def test_headers_are_parsed_like_nats_py_does(
    raw: bytes | None, expected: dict[str, str] | None
) -> None:
    assert parse_headers(raw) == expected


async def test_the_short_publish_path_sends_what_nats_py_sends(
    nats_server: LocalServer, namespace: str
) -> None:
    nc = DirectClient()
    await nc.connect(nats_server.url)
    try:
        got: asyncio.Queue[Msg] = asyncio.Queue()
        await nc.subscribe_direct(f"{namespace}.pub", got.put_nowait)
        await nc.publish(f"{namespace}.pub", b"plain")
        await nc.publish(f"{namespace}.pub", b"", reply="r.1", headers={" A-B ": " x\ny ", "": "e"})
        plain, with_headers = await got.get(), await got.get()
        assert (plain.data, plain.reply, plain.headers) == (b"plain", "", None)
        assert (with_headers.data, with_headers.reply) == (b"", "r.1")
        assert with_headers.headers == {"A-B": "x y"}
        for value in ("p\rq", "p\nq", " p q\t"):  # a known name now: values still made one line
            await nc.publish(f"{namespace}.pub", b"", headers={"A-B": value})
            assert (await got.get()).headers == {
                "A-B": value.replace("\r", " ").replace("\n", " ").strip()
            }
        with pytest.raises(nats.errors.BadHeaderError):
            await nc.publish(f"{namespace}.pub", b"", headers={"bad key": "1"})
        with pytest.raises(nats.errors.MaxPayloadError):  # the checks of nats-py's own path
            await nc.publish(f"{namespace}.pub", b"x" * (nc.max_payload + 1))
    finally:
        await nc.close()


async def test_a_leader_read_returns_what_a_direct_read_returns(client: Client) -> None:
    """leader_get (STREAM.MSG.GET, base64 in JSON) and direct_get_subject (DIRECT.GET, headers)
    decode to the same stored message: a value with headers, a delete marker, a missing key."""
    from oqron_nats._nats import Bucket, ensure_bucket

    conn = await client._connection()
    bucket = Bucket(conn, f"{client.namespace}_reads")
    await ensure_bucket(conn, bucket=bucket.name, replicas=1, max_value_size=1024)
    revision = await bucket.create("live", b'{"v": "\\u00e9"}', ttl=60)
    gone = await bucket.create("gone", b"x")
    await bucket.delete("gone", last=gone, epitaph=b"last words")
    for key in ("live", "gone", "never"):
        subject = f"$KV.{bucket.name}.{key}"
        direct = await conn.direct_get_subject(bucket.stream, subject)
        leader = await conn.leader_get(bucket.stream, subject)
        if direct is None:
            assert leader is None
            continue
        assert leader is not None
        assert (leader.subject, leader.seq) == (direct.subject, direct.seq)
        assert leader.data == direct.data
        stored = {k: v for k, v in direct.headers.items() if not k.startswith("Nats-") or
                  k in ("Nats-TTL", "Nats-Expected-Last-Subject-Sequence")}  # fmt: skip
        assert stored, direct.headers  # the stored headers, not only the direct get's own
        assert {k: leader.headers[k] for k in stored} == stored
    assert (await bucket.get("live", fresh=True)).revision == revision  # type: ignore[union-attr]
    assert (await bucket.tombstone("gone")).value == b"last words"  # type: ignore[union-attr]


async def test_many_requests_are_answered_each_in_order_with_one_wait(
    nats_server: LocalServer, namespace: str
) -> None:
    async with requests_on(nats_server.url, TIMEOUT) as (nc, requests):
        await echo_and_silence(nc, namespace)
        asks = [(f"{namespace}.echo", b"%d" % n, None) for n in range(20)]
        asks[5] = (f"{namespace}.silent", b"?", None)
        asks[9] = (f"{namespace}.nobody", b"?", None)
        answers = await requests.request_many(asks)
        assert isinstance(answers[5], TimeoutError)
        assert isinstance(answers[9], nats.errors.NoRespondersError)
        echoed = [a for n, a in enumerate(answers) if n not in (5, 9)]
        assert [a.data for a in echoed if isinstance(a, Msg)] == [
            b"re:%d" % n for n in range(20) if n not in (5, 9)
        ]
        assert requests.sent == 20
        assert await requests.request_many([]) == []


async def test_first_tries_say_which_were_refused_and_which_to_ask_again(client: Client) -> None:
    q = queue("tries", client=client)
    await q.add({"n": 0}, job_id="taken")
    conn = await client._connection()
    names = client.names("tries")
    record = f"$KV.{names.jobs_bucket}.{names.key('fresh')}"
    answers = await conn.publish_at_once(
        [
            (record, b"{}", {"Nats-Expected-Last-Subject-Sequence": "0"}),  # stored
            (f"$KV.{names.jobs_bucket}.{names.key('taken')}", b"{}",
             {"Nats-Expected-Last-Subject-Sequence": "0"}),  # refused: the key exists
            ("oqron.nobody.listens.here", b"", None),  # no stream: no responders
        ]
    )  # fmt: skip
    assert isinstance(answers[0], PubAck) and answers[0].seq > 0
    assert isinstance(answers[1], CasConflict)
    assert answers[2] is None
