"""Each attempt's error in the job record (``Job.errors``): written with the failure itself,
bounded, secret values masked, sealed on an encrypted queue, kept when an admin runs it again."""

from __future__ import annotations

import json
from typing import Any, Literal, TypedDict

from oqron_nats import AesGcmCodec, Client, JobState, RetryPolicy, queue
from oqron_nats.core.job import ATTEMPT_ERRORS_LIMIT, ATTEMPT_MESSAGE, ATTEMPT_TRACEBACK

from .helpers import wait_for_state
from .support import Backstage

SECRET = "4111-1111-1111-1111"


class Fixed(TypedDict):
    """Fast fixed-delay retries, as RetryPolicy's keyword arguments."""

    strategy: Literal["fixed"]
    base_delay: float
    jitter: float


FAST = Fixed(strategy="fixed", base_delay=0.01, jitter=0.0)


def deep(n: int, message: str) -> None:
    """Raise from ``n`` frames down (a long traceback)."""
    if n:
        deep(n - 1, message)
    raise ValueError(message)


async def handler(ctx: Any) -> None:
    deep(60, f"attempt {ctx.attempt} refused card {ctx.data['card']} " + "x" * 3000)


async def test_every_attempt_keeps_its_error_bounded_and_masked(client: Client) -> None:
    q = queue("attempts", handler, client=client, secret_fields=["card"],
              retries=RetryPolicy(max=ATTEMPT_ERRORS_LIMIT + 1, **FAST))  # fmt: skip
    async with q:
        job = await q.add({"card": SECRET})
        failed = await wait_for_state(q, job.id, JobState.FAILED, timeout=20)
    attempts = ATTEMPT_ERRORS_LIMIT + 2
    assert failed.attempt == attempts
    assert [e.attempt for e in failed.errors] == list(range(3, attempts + 1)), "the newest kept"
    for entry in failed.errors:
        assert entry.error.type == "ValueError"
        assert entry.error.message.startswith(f"attempt {entry.attempt} refused card ")
        assert len(entry.error.message) <= ATTEMPT_MESSAGE
        assert len(entry.error.traceback) <= ATTEMPT_TRACEBACK
        assert entry.error.traceback.rstrip().endswith("x"), "the end of the traceback is kept"
    assert [e.at for e in failed.errors] == sorted(e.at for e in failed.errors)
    assert failed.error is not None and len(failed.error.traceback) > ATTEMPT_TRACEBACK
    stored = (await Backstage(client, "attempts").record(job.id)).value
    history = json.dumps(json.loads(stored)["errors"])
    assert SECRET not in history, "a secret value is masked in every attempt's error"
    assert "card ***" in history
    assert len(history) < 25_000, "bounded: ten shortened errors"

    await q.retry(job.id)  # an admin runs it again: the history stays, then grows
    async with q:
        again = await wait_for_state(q, job.id, JobState.FAILED, timeout=20)
    assert len(again.errors) == ATTEMPT_ERRORS_LIMIT
    assert again.errors[-1].at > failed.errors[-1].at


async def test_an_encrypted_queue_seals_each_attempts_error(client: Client) -> None:
    codec = AesGcmCodec({"k1": AesGcmCodec.generate_key()})
    q = queue("sealed-attempts", handler, client=client, codec=codec,
              retries=RetryPolicy(max=2, **FAST))  # fmt: skip
    async with q:
        job = await q.add({"card": "canary-0042"})
        failed = await wait_for_state(q, job.id, JobState.FAILED, timeout=20)
    stored = (await Backstage(client, "sealed-attempts").record(job.id)).value
    assert b"canary-0042" not in stored and b"refused" not in stored
    history = json.loads(stored)["errors"]
    assert [e["attempt"] for e in history] == [1, 2, 3]
    assert all(e["error"]["message"] == "(encrypted)" and e["error"]["sealed"] for e in history)
    assert all(e["error"]["type"] == "ValueError" for e in history), "the type stays readable"
    # read with the key, each opens
    assert [e.error.message.split(" card ")[0] for e in failed.errors] == [
        "attempt 1 refused",
        "attempt 2 refused",
        "attempt 3 refused",
    ]
    assert all("canary-0042" in e.error.message for e in failed.errors)
    # read without it, they stay "(encrypted)"
    blind = queue("sealed-attempts", client=client)
    seen = await blind.get_job(job.id)
    assert seen is not None and {e.error.message for e in seen.errors} == {"(encrypted)"}
