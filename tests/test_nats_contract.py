"""The contract with nats-py's private members, which oqron_nats/_nats/direct.py and conn.py use.

Direct subscriptions and the short publish path (direct.py) override and call nats-py's
internals; conn.py reads a few more. The pin is ``nats-py~=2.16.0``: a release that changed one of
them must fail here, not time out every request and pull in production. Each member is checked
by name and signature, and by a round trip through a real nats-server; a nats-py whose internals
differ gets plain subscriptions instead, with a warning (tested by changing one of them).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from importlib.metadata import version
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header
from nats.protocol.parser import Parser
from structlog.testing import capture_logs

from oqron_nats import Client, ConfigError, JobState, queue
from oqron_nats._nats import Nats, direct
from oqron_nats._nats.conn import _abandon
from oqron_nats._nats.direct import DirectClient, PlainClient, new_client
from oqron_nats._nats.pull import Delivery
from oqron_nats._nats.requests import Requests
from oqron_nats.testing.server import LocalServer

from .helpers import wait_for_state
from .proxy import TcpProxy

WAIT = 5.0


def names_in(function: Any) -> set[str]:
    """Attribute and global names, and constants, of a function and the functions nested in it."""
    found: set[str] = set()
    stack = [function.__code__]
    while stack:
        code = stack.pop()
        found.update(code.co_names)
        found.update(c for c in code.co_consts if isinstance(c, str))
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return found


def parameters(function: Any) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)


def test_the_installed_nats_py_is_the_pinned_release() -> None:
    assert version("nats-py").startswith("2.16."), "check this file against the new release"


def test_the_start_up_check_finds_nats_py_as_expected() -> None:
    assert direct.problems() == []
    assert not direct._problems_once()


def test_every_private_method_used_has_the_signature_we_call() -> None:
    # direct.py: DirectClient overrides _process_msg and _remove_sub and calls the others
    # positionally; nats-py's parser calls _process_msg(sid, subject, reply, payload, hdr)
    assert parameters(NatsClient._process_msg) == (
        "self", "sid", "subject", "reply", "data", "headers",
    )  # fmt: skip
    assert parameters(NatsClient._build_message) == (
        "self", "sid", "subject", "reply", "data", "headers",
    )  # fmt: skip
    assert parameters(NatsClient._send_command) == ("self", "cmd", "priority")
    assert parameters(NatsClient._flush_pending) == ("self", "force_flush")
    assert parameters(NatsClient._remove_sub) == ("self", "sid", "max_msgs")
    # DirectClient._process_info (require_tls) is called with initial_connection=True
    assert parameters(NatsClient._process_info) == ("self", "info", "initial_connection")
    for awaited in ("_process_msg", "_send_command", "_flush_pending", "_process_info"):
        assert inspect.iscoroutinefunction(getattr(NatsClient, awaited)), awaited
    for called in ("_build_message", "_remove_sub"):
        assert not inspect.iscoroutinefunction(getattr(NatsClient, called)), called
    # our overrides take what nats-py passes
    for name in ("_process_msg", "_remove_sub", "_process_info"):
        assert parameters(getattr(DirectClient, name)) == parameters(getattr(NatsClient, name))
    assert parameters(DirectClient.publish) == parameters(NatsClient.publish)


def test_nats_py_still_calls_and_sets_what_we_rely_on() -> None:
    assert "_process_msg" in names_in(Parser.parse)
    assert "_process_info" in names_in(Parser.parse)
    assert "_process_info" in names_in(NatsClient._process_connect_init)
    assert "_remove_sub" in names_in(Subscription.unsubscribe)
    assert "_remove_sub" in names_in(Subscription._drain)
    assert "_id" in names_in(Subscription.__init__)
    for attribute in ("_flush_queue", "_status", "_max_payload", "_server_info", "_transport"):
        assert attribute in names_in(NatsClient.__init__), attribute
    # conn.py connects with allow_reconnect off and max_reconnect_attempts low, then rewrites
    # both in nc.options: nats-py must read them there when the connection is lost
    assert {"options", "allow_reconnect"} <= names_in(NatsClient._process_op_err)
    assert {"options", "max_reconnect_attempts"} <= names_in(NatsClient._select_next_server)
    # the inline status header names parse_headers writes, as nats-py's own parsing does
    assert (Header.STATUS, Header.DESCRIPTION) == ("Status", "Description")


async def test_the_parser_hands_messages_to_the_overridden_process_msg(
    nats_server: LocalServer, namespace: str
) -> None:
    """A direct subscription has no callback: only DirectClient._process_msg, called by nats-py's
    parser, can hand its messages to the handler."""
    nc = DirectClient()
    await nc.connect(nats_server.url)
    try:
        assert nc._status == NatsClient.CONNECTED
        assert isinstance(nc._flush_queue, asyncio.Queue)
        assert nc._max_payload == nc.max_payload > 0
        assert nc._server_info["server_name"] == nats_server.name
        assert nc._server_info["jetstream"] is True
        assert nc._transport is not None
        got: asyncio.Queue[Msg] = asyncio.Queue()
        sub = await nc.subscribe_direct(f"{namespace}.direct", got.put_nowait)
        assert sub._id in nc._direct and sub._cb is None
        await nc.publish(f"{namespace}.direct", b"hello", reply="r.1", headers={"K": "v"})
        msg = await asyncio.wait_for(got.get(), WAIT)
        assert (msg.subject, msg.reply, msg.data, msg.headers) == (
            f"{namespace}.direct", "r.1", b"hello", {"K": "v"},
        )  # fmt: skip
        assert msg._client is nc and msg.sid == sub._id
        assert nc.stats["in_msgs"] >= 1
        await sub.drain()  # type: ignore[no-untyped-call]
        assert sub._id not in nc._direct  # nats-py's drain removed it through _remove_sub
    finally:
        await nc.close()


async def test_a_plaintext_server_is_refused_when_tls_is_required(nats_server: LocalServer) -> None:
    """DirectClient._process_info must see the first INFO: the fixture's server offers no TLS."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = DirectClient(require_tls=True)
    try:
        with pytest.raises(nats.errors.SecureConnWantedError):
            await nc.connect(nats_server.url, allow_reconnect=False, error_cb=on_error)
        assert not nc.is_connected
    finally:
        _abandon(nc)


async def test_requests_work_again_after_a_reconnect(
    nats_server: LocalServer, namespace: str
) -> None:
    """conn.py's rewritten options make nats-py reconnect, and nats-py subscribes again with the
    same sids, so the direct reply subscription keeps answering."""
    assert nats_server.port is not None
    async with TcpProxy(nats_server.port) as proxy:
        conn = await Nats.connect([proxy.url], name="contract")
        try:
            assert type(conn.nc) is DirectClient
            await conn.nc.subscribe(f"{namespace}.echo", cb=_echo)
            assert (await conn._requests.request(f"{namespace}.echo", b"1")).data == b"1"
            reconnected = asyncio.Event()
            conn.on_reconnect(reconnected.set)
            proxy.cut()
            await asyncio.wait_for(reconnected.wait(), WAIT)
            assert (await conn._requests.request(f"{namespace}.echo", b"2")).data == b"2"
        finally:
            await conn.close()


async def _echo(msg: Msg) -> None:
    await msg.respond(msg.data)


@pytest.fixture
def changed_nats_py(monkeypatch: pytest.MonkeyPatch) -> Any:
    """nats-py with one internal changed: _flush_pending takes a new parameter (it still works,
    so nats-py's own paths do; DirectClient's expectations do not hold)."""
    original = NatsClient._flush_pending

    async def _flush_pending(self: NatsClient, force_flush: bool = False, *, new: int = 0) -> Any:
        return await original(self, force_flush)

    monkeypatch.setattr(NatsClient, "_flush_pending", _flush_pending)
    direct._problems_once.cache_clear()
    yield
    direct._problems_once.cache_clear()


@pytest.mark.usefixtures("changed_nats_py")
async def test_changed_internals_fall_back_to_plain_subscriptions_with_a_warning(
    nats_server: LocalServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="oqron_nats")
    with capture_logs() as logs:
        nc = new_client()
        assert type(new_client()) is PlainClient
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert "fall back to plain nats-py subscriptions" in warning["event"]
    assert "_flush_pending(self, force_flush, new)" in warning["problems"]
    assert type(nc) is PlainClient
    await nc.connect(nats_server.url)
    try:
        requests = Requests(nc, 1.0)
        await requests.start()
        await nc.subscribe(f"{namespace}.echo", cb=_echo)
        asked = [requests.request(f"{namespace}.echo", b"%d" % n, headers={"N": str(n)})
                 for n in range(20)]  # fmt: skip
        replies = await asyncio.gather(*asked)
        assert [m.data for m in replies] == [b"%d" % n for n in range(20)]
        with pytest.raises(nats.errors.NoRespondersError):  # a status header, parsed by nats-py
            await requests.request(f"{namespace}.nobody", b"?")

        seen: list[bytes] = []
        both = asyncio.Event()

        def handler(msg: Msg) -> None:
            seen.append(msg.data)
            if len(seen) == 2:
                both.set()
            if msg.data == b"boom":
                raise RuntimeError("handler bug")

        with capture_logs() as logs:
            sub = await nc.subscribe_direct(f"{namespace}.plain", handler)
            assert sub._cb is not None and not nc._direct  # a plain nats-py subscription
            await nc.publish(f"{namespace}.plain", b"boom")
            await nc.publish(f"{namespace}.plain", b"fine")
            await asyncio.wait_for(both.wait(), WAIT)
        assert seen == [b"boom", b"fine"]
        assert [e["event"] for e in logs if e["log_level"] == "error"] == [
            "a message handler failed; the message is dropped"
        ]
    finally:
        await nc.close()


@pytest.mark.usefixtures("changed_nats_py")
async def test_jobs_run_on_the_fallback(nats_server: LocalServer, namespace: str) -> None:
    """The whole job path (pulls, requests, publishes) on plain nats-py subscriptions."""
    done: list[int] = []

    async def handler(ctx: Any) -> None:
        done.append(ctx.data["n"])

    async with Client(nats_server.url, namespace=namespace) as client:
        conn = await client._connection()
        assert type(conn.nc) is PlainClient
        q = queue("fallback", handler, client=client)
        async with q:
            jobs = [await q.add({"n": n}) for n in range(5)]
            for job in jobs:
                await wait_for_state(q, job.id, JobState.COMPLETED)
    assert sorted(done) == list(range(5))


def test_the_require_tls_check_is_in_place_and_a_nats_py_without_it_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """require_tls keeps credentials off a plaintext connection through DirectClient's
    _process_info: with a nats-py that would skip it, a client wanting TLS is not made."""
    assert direct.tls_problems() == []

    class Renamed(NatsClient):
        async def _process_connect_init(self) -> None:  # INFO handled without _process_info
            return None

    assert direct.tls_problems(Renamed) == [
        "Client._process_connect_init does not call _process_info"
    ]
    monkeypatch.setattr(direct, "tls_problems", lambda: ["changed"])
    with pytest.raises(ConfigError, match="cannot make sure the server speaks TLS"):
        direct.new_client(require_tls=True)
    assert isinstance(direct.new_client(require_tls=False), direct.DirectClient)


async def test_a_deliverys_numbers_are_those_of_nats_py_metadata(nats_server: LocalServer) -> None:
    """Delivery reads the stream sequence and the delivery count from the ack subject itself."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="ACKSUBJECT", subjects=["acksubject.>"])
        for n in range(3):
            await js.publish(f"acksubject.{n}", b"x")
        pull = await js.pull_subscribe("acksubject.>", durable="reader")
        first = await pull.fetch(3, timeout=WAIT)
        await first[2].nak()
        (again,) = await pull.fetch(1, timeout=WAIT)
        for msg in [*first, again]:
            delivery = Delivery(msg)
            assert delivery.stream_seq == msg.metadata.sequence.stream
            assert delivery.num_delivered == msg.metadata.num_delivered
        assert Delivery(again).num_delivered == 2 and Delivery(again).stream_seq == 3
    finally:
        await nc.close()


def test_the_long_ack_subject_form_is_read_as_nats_py_reads_it() -> None:
    """The form with a domain and an account hash (12 tokens), and subjects that are none."""
    reply = "$JS.ACK.hub.ACCHASH.JOBS.workers.4.812.77.1733520000000000000.9.rnd"
    delivery = Delivery(Msg(_client=None, subject="s", reply=reply))  # type: ignore[arg-type]
    metadata = Msg.Metadata._from_reply(reply)
    assert delivery.stream_seq == metadata.sequence.stream == 812
    assert delivery.num_delivered == metadata.num_delivered == 4
    ten_tokens = "$JS.ACK.hub.ACCHASH.JOBS.workers.4.812.77.1733520000000000000"
    for foreign in ("", "_INBOX.abc.1", "$JS.ACK.too.short", ten_tokens):
        with pytest.raises(nats.errors.NotJSMessageError):
            _ = Delivery(Msg(_client=None, subject="s", reply=foreign)).stream_seq  # type: ignore[arg-type]
