"""Payload encryption (issue 11, item 7): with a codec, job records, dead letters, events, logs
and traces never hold the plaintext of a payload, result or error, read as raw bytes; a process
without the key, or with the wrong one, fails the job with a typed error and never runs it."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from oqron_nats import (
    AesGcmCodec,
    Client,
    ConfigError,
    DeadLetter,
    DecryptionFailed,
    Hooks,
    Job,
    JobContext,
    JobFailure,
    JobState,
    MissingKey,
    NotEncrypted,
    PayloadError,
    PayloadTooLarge,
    RetryPolicy,
    Sealed,
    queue,
)
from oqron_nats.core.encryption import Sealer
from oqron_nats.testing.server import LocalServer

from .helpers import eventually, holds, wait_for_state
from .support import Backstage, max_payload
from .test_cli import oqron, oqron_json
from .test_runner import WorkerCli

KEY1 = AesGcmCodec.generate_key()
KEY2 = AesGcmCodec.generate_key()


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def codec(*kids: str, accept_plaintext: bool = False) -> AesGcmCodec:
    """A codec holding these of the test keys (k1, k2), the first current."""
    keys = {"k1": KEY1, "k2": KEY2}
    return AesGcmCodec({k: keys[k] for k in kids}, accept_plaintext=accept_plaintext)


async def raw_record(client: Client, name: str, job_id: str) -> bytes:
    """The job's record exactly as KV stores it."""
    return (await Backstage(client, name).record(job_id)).value


async def rewrite(
    client: Client, name: str, job_id: str, change: Callable[[dict[str, Any]], None]
) -> None:
    """Change a stored record behind the library's back (compare-and-set on its revision)."""
    await Backstage(client, name).rewrite_record(job_id, change)


async def raw_dead_letter(client: Client, name: str, job_id: str) -> bytes:
    letter = await Backstage(client, name).dead_letter(job_id)
    assert letter is not None
    return letter.data


async def record_events(
    client: Client, name: str, into: list[bytes]
) -> Callable[[], Awaitable[None]]:
    """Collect the raw bytes of every event of the queue; returns the unsubscribe."""

    async def received(msg: Any) -> None:
        into.append(msg.data)

    sub = await Backstage(client, name).watch_events(received)
    return sub.unsubscribe


async def test_an_encrypted_job_holds_no_plaintext_in_its_record(
    client: Client, namespace: str
) -> None:
    canary = f"4111-CANARY-{namespace}"
    seen: list[Any] = []

    async def charge(ctx: JobContext[Any]) -> dict[str, Any]:
        seen.append(ctx.data)
        return {"charged": ctx.data["card"], "cents": 1250}

    q = queue("pay", charge, client=client, codec=codec("k1"))
    async with q:
        job = await q.add({"card": canary, "cents": 1250})
        assert job.data == {"card": canary, "cents": 1250}, "add returns the plaintext"
        waiting = await raw_record(client, "pay", job.id)
        done = await wait_for_state(q, job.id, JobState.COMPLETED)
    assert canary.encode() not in waiting
    assert json.loads(waiting)["data"]["$oqron_codec"] == "aes-gcm"
    stored = await raw_record(client, "pay", job.id)
    assert canary.encode() not in stored, "neither the payload nor the result"
    record = json.loads(stored)
    for field in ("data", "result"):
        assert list(record[field]) == ["$oqron_codec", "kid", "ct"]
        assert record[field]["kid"] == "k1"
    assert seen == [{"card": canary, "cents": 1250}], "the handler gets the plaintext"
    assert done.data == {"card": canary, "cents": 1250}
    assert done.result == {"charged": canary, "cents": 1250}
    assert done.data_error is None and done.result_error is None


async def test_a_failure_leaves_no_plaintext_in_records_dead_letters_events_logs_or_traces(
    nats_server: LocalServer, namespace: str
) -> None:
    canary = f"CANARY-{namespace}-ssn"
    hooked: list[tuple[Any, JobFailure]] = []
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def verify(ctx: JobContext[Any]) -> None:
        raise ValueError(f"the registry refused {ctx.data['ssn']}")

    def on_fail(job: Job[Any], failure: JobFailure) -> None:
        hooked.append((job.data, failure))

    events: list[bytes] = []
    async with Client(nats_server.url, namespace=namespace, tracer_provider=provider) as client:
        retries = RetryPolicy(max=1, base_delay=0.05)
        q = queue("kyc", verify, client=client, codec=codec("k1"), dead_letter=DeadLetter(),
                  retries=retries, hooks=Hooks(on_fail=on_fail))  # fmt: skip
        await q._open()  # provisioned: the queues bucket, where the listener says it listens
        stop_events = await record_events(client, "kyc", events)
        opened: list[str] = []

        async def listen() -> None:
            async for event in q.events():
                if event.error is not None:
                    opened.append(event.error.message)

        with structlog.testing.capture_logs() as logs:
            async with q:
                listener = asyncio.create_task(listen())
                await asyncio.sleep(0.1)
                job = await q.add({"ssn": canary})
                failed = await wait_for_state(q, job.id, JobState.FAILED)
                await eventually(lambda: holds(len(opened) >= 2), 5, "the events")
                listener.cancel()
        await stop_events()
        record = await raw_record(client, "kyc", job.id)
        letter = await raw_dead_letter(client, "kyc", job.id)

    assert failed.attempt == 2 and failed.error is not None
    assert failed.error.type == "ValueError"
    assert canary in failed.error.message, "read with the key, the error is whole"
    assert canary in failed.error.traceback
    assert hooked and hooked[0][0] == {"ssn": canary} and canary in hooked[0][1].message
    assert all(canary in message for message in opened), "q.events() opens the errors"
    assert canary.encode() not in record
    stored_error = json.loads(record)["error"]
    assert stored_error["type"] == "ValueError" and stored_error["message"] == "(encrypted)"
    assert stored_error["traceback"] == "" and stored_error["sealed"]["kid"] == "k1"
    assert canary.encode() not in letter and b'"$oqron_codec"' in letter
    failures = [json.loads(e) for e in events if b'"error"' in e]
    assert {e["name"] for e in failures} == {"retried", "failed"}
    assert all(canary.encode() not in e for e in events), "events"
    assert logs and canary not in repr(logs), "the worker's log lines"
    failed_logs = [
        entry for entry in logs if entry["event"] in ("job failed", "job failed; will retry")
    ]
    assert len(failed_logs) == 2 and all(e["error"] == "(encrypted)" for e in failed_logs)
    spans = exporter.get_finished_spans()
    assert spans and canary not in repr(
        [(s.attributes, s.events, s.status.description) for s in spans]
    )


async def test_key_rotation_old_jobs_still_open_new_jobs_use_the_new_key(client: Client) -> None:
    seen: dict[str, Any] = {}

    async def handler(ctx: JobContext[Any]) -> str:
        seen[ctx.id] = ctx.data
        return f"done {ctx.data['n']}"

    before = queue("rotate", client=client, codec=codec("k1"))
    old = await before.add({"n": "old"})
    after = queue("rotate", handler, client=client, codec=codec("k2", "k1"))  # k2 current
    new = await after.add({"n": "new"})
    assert json.loads(await raw_record(client, "rotate", old.id))["data"]["kid"] == "k1"
    assert json.loads(await raw_record(client, "rotate", new.id))["data"]["kid"] == "k2"
    async with after:
        for job in (old, new):
            done = await wait_for_state(after, job.id, JobState.COMPLETED)
            assert done.result == f"done {done.data['n']}"
    assert seen == {old.id: {"n": "old"}, new.id: {"n": "new"}}
    assert json.loads(await raw_record(client, "rotate", old.id))["result"]["kid"] == "k2"
    k1_only = queue("rotate", client=client, codec=codec("k1"))
    shown = await k1_only.get_job(new.id)
    assert shown is not None and shown.data_error is not None and "'k2'" in shown.data_error


@pytest.mark.parametrize(
    ("worker_codec", "error", "says"),
    [
        (None, MissingKey, "encrypted (codec 'aes-gcm', key id 'k1') and this process has no"),
        ("k2 only", MissingKey, "key id 'k1', which this codec does not hold (it holds 'k2')"),
        ("another k1", DecryptionFailed, "does not authenticate with key 'k1'"),
    ],
)
async def test_a_worker_without_the_key_fails_the_job_typed_and_never_runs_it(
    client: Client, namespace: str, worker_codec: str | None, error: type[Exception], says: str
) -> None:
    canary = f"CANARY-{namespace}"
    ran: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ran.append(ctx.id)

    publisher = queue("keyless", client=client, codec=codec("k1"))
    job = await publisher.add({"secret": canary})
    given = {
        None: None,
        "k2 only": codec("k2"),
        "another k1": AesGcmCodec({"k1": AesGcmCodec.generate_key()}),
    }[worker_codec]
    options: dict[str, Any] = {} if given is None else {"codec": given}
    q = queue("keyless", handler, client=client, retries=RetryPolicy(max=3, base_delay=0.05),
              dead_letter=DeadLetter(), **options)  # fmt: skip
    async with q:
        failed = await wait_for_state(publisher, job.id, JobState.FAILED)
    assert ran == [], "the handler never ran"
    assert failed.attempt == 1, "failed for good: not retried"
    assert failed.error is not None and failed.error.type == error.__name__
    assert says in failed.error.message, failed.error.message
    record = await raw_record(client, "keyless", job.id)
    assert says.encode() in record, "the reason is stored readable: it holds no payload"
    for secret in (canary, b64(KEY1), b64(KEY2)):
        assert secret.encode() not in record
        assert secret.encode() not in await raw_dead_letter(client, "keyless", job.id)
    assert failed.data == {"secret": canary}, "the publisher, holding the key, still reads it"


async def seal_two(client: Client, name: str) -> tuple[Job[Any], Job[Any]]:
    publisher = queue(name, client=client, codec=codec("k1"))
    return await publisher.add({"n": 1}), await publisher.add({"n": 2})


def flip_a_byte(record: dict[str, Any]) -> None:
    ct = bytearray(base64.b64decode(record["data"]["ct"]))
    ct[len(ct) // 2] ^= 0x01
    record["data"]["ct"] = base64.b64encode(bytes(ct)).decode()


@pytest.mark.parametrize(
    "tampering", ["a flipped ciphertext byte", "another job's payload", "a plaintext payload"]
)
async def test_tampering_with_a_sealed_record_is_detected_and_the_job_not_run(
    client: Client, tampering: str
) -> None:
    ran: list[Any] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ran.append(ctx.data)

    other, victim = await seal_two(client, "tamper")
    other_data = json.loads(await raw_record(client, "tamper", other.id))["data"]
    change, error = {
        "a flipped ciphertext byte": (flip_a_byte, DecryptionFailed),
        "another job's payload": (lambda r: r.__setitem__("data", other_data), DecryptionFailed),
        "a plaintext payload": (lambda r: r.__setitem__("data", {"n": "forged"}), NotEncrypted),
    }[tampering]
    await rewrite(client, "tamper", victim.id, change)
    q = queue("tamper", handler, client=client, codec=codec("k1"), retries=RetryPolicy(max=3))
    async with q:
        await wait_for_state(q, other.id, JobState.COMPLETED)
        failed = await wait_for_state(q, victim.id, JobState.FAILED)
    assert ran == [{"n": 1}], "only the untouched job ran"
    assert failed.attempt == 1 and failed.error is not None
    assert failed.error.type == error.__name__
    assert failed.data_error is not None and failed.data_error == failed.error.message


async def test_a_strict_codec_refuses_plaintext_jobs_and_accept_plaintext_runs_them(
    client: Client,
) -> None:
    ran: list[Any] = []

    async def handler(ctx: JobContext[Any]) -> str:
        ran.append(ctx.data)
        return "sealed result"

    plain = queue("migrate", client=client)  # a publisher not yet given the key
    first = await plain.add({"n": 1})
    strict = queue("migrate", handler, client=client, codec=codec("k1"))
    async with strict:
        failed = await wait_for_state(plain, first.id, JobState.FAILED)
    assert ran == [] and failed.error is not None and failed.error.type == "NotEncrypted"
    second = await plain.add({"n": 2})
    lenient = queue("migrate", handler, client=client, codec=codec("k1", accept_plaintext=True))
    async with lenient:
        done = await wait_for_state(lenient, second.id, JobState.COMPLETED)
    assert ran == [{"n": 2}] and done.result == "sealed result"
    assert b"sealed result" not in await raw_record(client, "migrate", second.id)


async def test_a_childs_parent_results_are_decrypted_for_it_and_stay_sealed(
    client: Client, namespace: str
) -> None:
    canary = f"CANARY-{namespace}-token"
    given: list[dict[str, Any]] = []

    async def handler(ctx: JobContext[Any]) -> Any:
        if ctx.data["role"] == "parent":
            return {"token": canary}
        given.append(ctx.parent_results)
        return "child done"

    q = queue("flow", handler, client=client, codec=codec("k1"))
    async with q:
        parent = await q.add({"role": "parent"})
        child = await q.add({"role": "child"}, depends_on=[parent.id])
        await wait_for_state(q, child.id, JobState.COMPLETED)
    assert given == [{parent.id: {"token": canary}}]
    assert canary.encode() not in await raw_record(client, "flow", parent.id)

    def flip_result(record: dict[str, Any]) -> None:
        ct = bytearray(base64.b64decode(record["result"]["ct"]))
        ct[-1] ^= 0x01
        record["result"]["ct"] = base64.b64encode(bytes(ct)).decode()

    await rewrite(client, "flow", parent.id, flip_result)  # q stopped: the child waits unrun
    orphan = await q.add({"role": "child"}, depends_on=[parent.id])
    async with q:
        failed = await wait_for_state(q, orphan.id, JobState.FAILED)
    assert len(given) == 1, "the child with a tampered parent result did not run"
    assert failed.error is not None and failed.error.type == "DecryptionFailed"
    assert failed.error.message.startswith(f"parent job {parent.id}: the result: it does not")


class Card(msgspec.Struct):
    number: str
    holder: str


async def test_listings_and_the_cli_with_and_without_the_key(
    nats_server: LocalServer,
    client: Client,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    canary = f"CANARY-{namespace}-card"

    async def handler(ctx: JobContext[Card]) -> str:
        if ctx.data.holder == "fails":
            raise RuntimeError(f"declined {ctx.data.number}")
        return f"ok {ctx.data.number}"

    keyed = queue("cards", handler, payload=Card, client=client, codec=codec("k1"),
                  retries=RetryPolicy(max=0), dead_letter=DeadLetter())  # fmt: skip
    async with keyed:
        good = await keyed.add(Card(canary, "ann"))
        bad = await keyed.add(Card(canary, "fails"))
        await wait_for_state(keyed, good.id, JobState.COMPLETED)
        await wait_for_state(keyed, bad.id, JobState.FAILED)
    listed = {job.id: job for job in await keyed.get_jobs()}
    assert listed[good.id].data == Card(canary, "ann") and listed[good.id].result == f"ok {canary}"
    failed = listed[bad.id]
    assert failed.error is not None and canary in failed.error.message

    keyless = queue("cards", payload=Card, client=client)  # the client has no codec
    jobs = {job.id: job for job in await keyless.get_jobs()}
    assert set(jobs) == {good.id, bad.id}, "listed, not left out and not crashing"
    for job in jobs.values():
        assert job.data_error is not None and "key id 'k1'" in job.data_error
        assert isinstance(job.data, dict) and job.data["$oqron_codec"] == "aes-gcm"
    good_job, bad_job = jobs[good.id], jobs[bad.id]
    assert good_job.result_error is not None and "no codec" in good_job.result_error
    assert bad_job.error is not None and bad_job.error.message == "(encrypted)"
    shown = await keyless.get_job(good.id)
    assert shown is not None and shown.data_error == jobs[good.id].data_error

    rows = await oqron_json(capsys, nats_server, namespace, "jobs", "list", "cards")
    assert {row["id"] for row in rows} == {good.id, bad.id}
    assert all("key id 'k1'" in row["data_error"] for row in rows)
    code, out, err = await oqron(capsys, nats_server, namespace, "jobs", "show", good.id)
    assert code == 0 and canary not in out and "no codec" in out, err
    [letter] = await oqron_json(capsys, nats_server, namespace, "dlq", "list", "cards")
    assert letter["error"] == {"type": "RuntimeError", "message": "(encrypted)", "traceback": "",
                               "sealed": letter["error"]["sealed"]}  # fmt: skip

    monkeypatch.setenv("OQRON_PAYLOAD_KEYS", f"k1:{b64(KEY1)}")
    shown_json = await oqron_json(capsys, nats_server, namespace, "jobs", "show", good.id)
    assert shown_json["data"] == {"number": canary, "holder": "ann"}
    assert shown_json["result"] == f"ok {canary}" and "data_error" not in shown_json
    code, out, _ = await oqron(capsys, nats_server, namespace, "dlq", "list", "cards")
    assert code == 0 and f"RuntimeError: declined {canary}" in out
    code, out, _ = await oqron(capsys, nats_server, namespace, "jobs", "list", "cards")
    assert code == 0 and good.id in out and bad.id in out


async def test_the_size_limit_applies_to_the_plaintext_and_the_sealed_value_must_fit_the_server(
    client: Client,
) -> None:
    q = queue("sizes", client=client, codec=codec("k1"), max_payload_size=1000)
    near = {"blob": "x" * 980}  # 991 bytes of JSON; sealed, about 1.4 KB
    job = await q.add(near)
    assert len(json.loads(await raw_record(client, "sizes", job.id))["data"]["ct"]) > 1000
    with pytest.raises(PayloadTooLarge, match="payload is 1002 bytes, over the limit of 1000"):
        await q.add({"blob": "x" * 991})
    limit = await max_payload(client)
    big = queue("sizes", client=client, codec=codec("k1"), max_payload_size=limit)
    plaintext = limit - 100 * 1024  # fits the server unsealed, not sealed
    with pytest.raises(PayloadTooLarge, match="the encrypted payload is"):
        await big.add({"blob": "x" * plaintext})
    assert await q.count() == 1


async def test_a_payload_shaped_like_an_envelope_is_refused_with_or_without_a_codec(
    client: Client,
) -> None:
    forged = {"$oqron_codec": "aes-gcm", "kid": "k1", "ct": "AAAA"}
    for q in (queue("shape", client=client), queue("shape", client=client, codec=codec("k1"))):
        with pytest.raises(PayloadError, match="marks encrypted values"):
            await q.add(forged)
        await q.add({"kid": "k1", "$oqron_codec": "not first: an ordinary key"})
    assert await queue("shape", client=client).count() == 2


async def test_a_custom_codec_is_used_through_the_protocol(client: Client) -> None:
    class Reverse:  # a toy: what matters is that the library calls it, bound to the job
        name = "reverse"
        accept_plaintext = False
        contexts: ClassVar[list[bytes]] = []

        def encode(self, data: bytes, context: bytes) -> Sealed:
            self.contexts.append(context)
            return Sealed("r1", data[::-1])

        def decode(self, sealed: Sealed, context: bytes) -> bytes:
            return sealed.data[::-1]

    async def handler(ctx: JobContext[Any]) -> str:
        return "fine"

    custom = Reverse()
    q = queue("custom", handler, client=client, codec=custom)
    async with q:
        job = await q.add({"hello": "world"})
        done = await wait_for_state(q, job.id, JobState.COMPLETED)
    record = json.loads(await raw_record(client, "custom", job.id))
    reversed_json = base64.b64encode(b'{"hello":"world"}'[::-1]).decode()
    assert record["data"] == {"$oqron_codec": "reverse", "kid": "r1", "ct": reversed_json}
    assert done.data == {"hello": "world"} and done.result == "fine"
    bound = b"oqron-nats/1\0" + client.namespace.encode() + b"\0custom\0" + job.id.encode()
    assert custom.contexts == [bound + b"\0data", bound + b"\0result"]


async def test_oqron_worker_takes_its_keys_from_the_keys_file_variable(
    nats_server: LocalServer,
    client: Client,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = tmp_path / "payload-keys"
    short = base64.b64encode(KEY1[:20]).decode()
    keys.write_text(f"k1:{short}\n")
    monkeypatch.setenv("OQRON_PAYLOAD_KEYS_FILE", str(keys))
    bad = WorkerCli(nats_server.url, namespace, "cli-keys", "tests.cli_worker:plain")
    try:
        assert bad.wait(30) == 2, "a bad keys file is a configuration error"
    finally:
        bad.close()
    output = "".join(bad.lines)
    assert "payload key 'k1' is 20 bytes" in output and short not in output

    keys.write_text(f"# rotated\nk1:{b64(KEY1)}\n")
    canary = f"CANARY-{namespace}-cli"
    cli = WorkerCli(nats_server.url, namespace, "cli-keys", "tests.cli_worker:plain")
    try:
        await cli.said("workers running", timeout=20)
        q = queue("cli-keys", client=client, codec=codec("k1"))
        job = await q.add({"n": 1, "secret": canary})
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=20)
        assert done.result == {"n": 1, "secret": canary}, "the worker decrypted and echoed it"
        assert canary.encode() not in await raw_record(client, "cli-keys", job.id)
        cli.signal(signal.SIGTERM)
        assert cli.wait(30) == 0
    finally:
        cli.close()
    assert canary not in "".join(cli.lines) and b64(KEY1) not in "".join(cli.lines)


# -- no server: the codec itself ---------------------------------------------------------------


def test_seals_use_fresh_nonces_and_are_bound_to_their_job_and_field() -> None:
    sealer = Sealer(codec("k1"), "ns", "q")
    sealed = {sealer.seal("job1", "data", b'{"same":1}') for _ in range(1000)}
    assert len(sealed) == 1000, "a new nonce for every seal"
    one = sealed.pop()
    assert sealer.open("job1", "data", one) == b'{"same":1}'
    elsewhere: Callable[[], object]
    for elsewhere in (
        lambda: sealer.open("job2", "data", one),
        lambda: sealer.open("job1", "result", one),
        lambda: Sealer(codec("k1"), "ns", "other").open("job1", "data", one),
        lambda: Sealer(codec("k1"), "ns2", "q").open("job1", "data", one),
    ):
        with pytest.raises(DecryptionFailed):
            elsewhere()


def test_keys_never_show_in_reprs_or_errors(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    key_text = b64(KEY1)
    held = codec("k2", "k1")
    assert repr(held) == "AesGcmCodec(key_ids=['k2', 'k1'], current='k2')"
    assert held.key_ids == ("k2", "k1")
    assert key_text not in repr(vars(held)), "only cipher objects are kept"
    short = base64.b64encode(KEY1[:20]).decode()
    for text, says in (
        (f"k1:{short}", "payload key 'k1' is 20 bytes; AES-GCM takes 16, 24 or 32"),
        (f"k1:{key_text[:-3]}!!", "payload key 'k1' is not valid base64"),
        (f"k1:{key_text}\nk1:{key_text}", "payload key id 'k1' is given twice"),
        (f"{key_text}", "payload key entry 1 is not KEY_ID:BASE64"),
    ):
        with pytest.raises(ConfigError, match=says) as info:
            AesGcmCodec.from_text(text)
        assert key_text not in str(info.value) and short not in str(info.value)
    assert (
        AesGcmCodec.from_text(f"# rotated 2026-01\nk2:{b64(KEY2)}\nk1:{key_text}\n").current == "k2"
    )
    keys = tmp_path / "payload-keys"
    keys.write_text(f"k1:{key_text}\n")
    monkeypatch.setenv("OQRON_PAYLOAD_KEYS_FILE", str(keys))
    from_env = Client("nats://127.0.0.1:1").codec
    assert isinstance(from_env, AesGcmCodec) and from_env.key_ids == ("k1",)
    monkeypatch.setenv("OQRON_PAYLOAD_KEYS", f"k1:{key_text}")
    with pytest.raises(ConfigError, match="not both"):
        _ = Client("nats://127.0.0.1:1").codec
    monkeypatch.delenv("OQRON_PAYLOAD_KEYS")
    monkeypatch.setenv("OQRON_PAYLOAD_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot read the payload keys file"):
        _ = Client("nats://127.0.0.1:1").codec


def test_a_missing_cryptography_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ConfigError, match=r"pip install 'oqron-nats\[crypto\]'"):
        AesGcmCodec({"k1": KEY1})


def test_a_codec_option_must_be_a_codec() -> None:
    with pytest.raises(ConfigError, match="codec must be a Codec"):
        queue("q", codec=KEY1)  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match="Client codec must be a Codec"):
        Client(codec="k1:secret")  # type: ignore[arg-type]
