"""The README demo: a local NATS server, a thumbnail queue, real jobs, printed as they happen.

Run it with ``python -m oqron_nats demo``. It shows progress, a delayed job, a retry that
succeeds, and a job that fails for good and lands in the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from ..client import Client
from ..core.config import DeadLetter, Hooks, RetryPolicy
from ..core.job import TERMINAL_STATES, Job, JobFailure
from ..observe.logconfig import configure_logging
from ..queue import queue
from ..runtime.context import JobContext
from ..testing.server import LocalServer

STEPS = ("download", "resize 256px", "resize 1024px", "upload")
IMAGES = ["cat.jpg", "beach.png", "flaky.png", "corrupt.png", "receipt.pdf", "team.jpg"]


class Image(msgspec.Struct, frozen=True):
    """One image to make thumbnails of."""

    name: str
    size_kb: int


class Demo:
    """Prints what happens, relative to the start of the demo."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        """Print one line of the story."""
        print(f"[{time.monotonic() - self.started:5.1f}s] {text}", flush=True)

    async def make_thumbnails(self, ctx: JobContext[Image]) -> dict[str, Any]:
        """The handler: four steps with progress; flaky.png fails once, corrupt.png always."""
        image = ctx.data
        self.say(f"{image.name:<12} attempt {ctx.attempt}/{ctx.max_attempts} started")
        try:
            for done, step in enumerate(STEPS, start=1):
                await asyncio.sleep(0.15)
                if image.name == "flaky.png" and ctx.attempt == 1 and step == "download":
                    raise ConnectionError("storage timed out")
                if image.name == "corrupt.png" and step == "resize 256px":
                    raise ValueError("not an image: bad PNG header")
                await ctx.progress(100 * done / len(STEPS), step)
                self.say(f"{image.name:<12} {100 * done // len(STEPS):3d}%  {step}")
        except Exception as exc:
            later = "will retry" if ctx.attempt < ctx.max_attempts else "no attempts left"
            self.say(f"{image.name:<12} attempt {ctx.attempt} failed: {exc} ({later})")
            raise
        return {"thumbnails": [f"{image.name}@256", f"{image.name}@1024"]}

    async def on_success(self, job: Job[Image], result: Any) -> None:
        """Hook: a job completed."""
        self.say(f"{job.data.name:<12} completed -> {result['thumbnails']}")

    async def on_fail(self, job: Job[Image], failure: JobFailure) -> None:
        """Hook: a job failed for good."""
        self.say(f"{job.data.name:<12} FAILED after {job.attempt} attempts: {failure.message}")

    async def on_dead(self, job: Job[Image]) -> None:
        """Dead-letter hook: the failed job was copied to the dead-letter stream."""
        self.say(f"{job.data.name:<12} copied to the dead-letter stream (alert the on-call here)")


async def run_demo() -> int:
    """Run the whole demo; returns the process exit code."""
    configure_logging(level="critical")  # the story is the output: log lines only if all fails
    demo = Demo()
    with LocalServer() as server:
        demo.say(f"started a local nats-server with JetStream at {server.url}")
        async with Client(server.url, namespace="demo") as client:
            thumbnails = queue(
                "thumbnails",
                demo.make_thumbnails,
                payload=Image,
                concurrency=3,
                retries=RetryPolicy(max=2, strategy="fixed", base_delay=1.0),
                dead_letter=DeadLetter(enabled=True, on_dead=demo.on_dead),
                hooks=Hooks(on_success=demo.on_success, on_fail=demo.on_fail),
                client=client,
            )
            async with thumbnails:
                jobs = []
                for n, name in enumerate(IMAGES):
                    job = await thumbnails.add(Image(name, 100 + 37 * n), job_id=f"thumb-{n}")
                    jobs.append(job)
                delayed = await thumbnails.add(
                    Image("scheduled.jpg", 80), job_id="thumb-later", delay=2.0
                )
                jobs.append(delayed)
                demo.say(f"added {len(jobs)} jobs; scheduled.jpg waits until {delayed.run_at:%X}")
                while True:
                    states = [await thumbnails.get_job(j.id) for j in jobs]
                    if all(s is not None and s.state in TERMINAL_STATES for s in states):
                        break
                    await asyncio.sleep(0.1)
                await summary(demo, thumbnails, client)
    demo.say("demo finished; the server and its temporary store are gone")
    return 0


async def summary(demo: Demo, thumbnails: Any, client: Client) -> None:
    """Print every job's final record and the dead-letter stream's size."""
    demo.say("final state of every job (read back from the KV job store):")
    for job in sorted(await thumbnails.get_jobs(limit=100), key=lambda j: j.id):
        outcome = (
            job.result["thumbnails"][0] if job.result else (job.error.message if job.error else "")
        )
        name, state = job.data.name, str(job.state)
        print(f"{'':9}{job.id:<12} {name:<14} {state:<10} attempts={job.attempt}  {outcome}")
    conn = await client._connection()
    dead = await conn.stream_state(client.names("thumbnails").dlq_stream)
    demo.say(f"dead-letter stream holds {dead.messages} job(s)")
