"""The chaos harness: a real nats-server, worker processes, a paced producer and a nemesis.

``run(scenario, workdir, seed)`` starts nats-server with ``sync_interval: always`` and its store
in ``workdir``, starts the worker processes (``tests.chaos.worker``), adds the scenario's jobs
at a steady pace while the nemesis injects its faults (kill -9 of workers, kill -9 and restart of
the server, SIGSTOP/SIGCONT of a worker), waits until every accepted job is terminal, reads
every record and the dead-letter stream, and hands the whole history to the checker.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oqron_nats import Client, ConnectionFailed, EnqueueError, JobState, Queue, queue
from oqron_nats.core.job import TERMINAL_STATES
from oqron_nats.core.naming import PRIORITY_LEVELS
from oqron_nats.testing.server import LocalServer

from ..helpers import start_process
from ..support import Backstage
from . import checker

QUEUE = "chaos"
NAMESPACE = "chaos"


@dataclass(frozen=True)
class Scenario:
    """One fault scenario and its size."""

    name: str
    description: str
    jobs: int
    duration: float
    """Seconds over which the producer spreads its adds (the nemesis acts meanwhile)."""
    workers: int = 3
    concurrency: int = 4
    lock_ttl: float = 3.0
    heartbeat: float = 1.0
    work: tuple[float, float] = (0.005, 0.03)
    kill_every: float | None = None
    server_kills: int = 0
    stalls: int = 0
    drain_timeout: float = 120.0
    strategy: str = "fifo"
    """The queue's strategy: lifo and priority move every job to the run lane before its claim."""


def scenarios(full: bool) -> dict[str, Scenario]:
    """The scenarios at CI size, or at full size."""
    return {
        "S1": Scenario(
            "S1", "3 workers (c=4), a random worker kill -9'd every 2 s",
            jobs=10_000 if full else 2_000, duration=60 if full else 14, kill_every=2.0,
        ),
        "S2": Scenario(
            "S2", "S1 plus nats-server kill -9'd and restarted twice on the same store",
            jobs=10_000 if full else 2_000, duration=60 if full else 16, kill_every=2.0,
            server_kills=2,
        ),
        "S3": Scenario(
            "S3", "long jobs; a busy worker SIGSTOP'd for 2 x lock_ttl, then SIGCONT'd",
            jobs=200 if full else 40, duration=40 if full else 8, workers=2,
            lock_ttl=2.0, heartbeat=0.5, work=(2.0, 3.0), stalls=10 if full else 2,
        ),
        "S10": Scenario(
            "S10", "handlers run longer than ack_wait (3.5 s), heartbeating",
            jobs=200 if full else 24, duration=20 if full else 3, workers=2, concurrency=8,
            lock_ttl=2.0, heartbeat=0.5, work=(5.0, 6.0),
        ),
    }  # fmt: skip


@dataclass
class Outcome:
    """A scenario's report and the figures around it."""

    scenario: Scenario
    report: checker.Report
    seed: int
    wall_seconds: float
    drain_seconds: float
    redelivered: int
    faults: dict[str, int] = field(default_factory=dict)
    index_drift: dict[str, int] = field(default_factory=dict)
    """Per state, the state index's count minus the records' after the run (0 when healed)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for report.json."""
        return {
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "seed": self.seed,
            "jobs": self.scenario.jobs,
            "wall_seconds": round(self.wall_seconds, 1),
            "drain_seconds": round(self.drain_seconds, 1),
            "redelivered_peak": self.redelivered,
            "index_drift": self.index_drift,
            "report": self.report.to_dict(),
        }


class Files:
    """The history files of one run."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.handler = workdir / "handler.jsonl"
        self.enqueues = workdir / "enqueues.jsonl"
        self.faults = workdir / "faults.jsonl"
        for path in (self.handler, self.enqueues, self.faults):
            path.write_text("")

    @staticmethod
    def append(path: Path, record: dict[str, Any]) -> None:
        """Append one JSON line."""
        with path.open("a") as out:
            out.write(json.dumps(record) + "\n")


class Workers:
    """The worker processes of a run, replaceable after a kill."""

    def __init__(self, scenario: Scenario, url: str, log: Path) -> None:
        self.scenario = scenario
        self.url = url
        self.log = log
        self.processes: list[subprocess.Popen[str]] = []

    def spawn(self) -> subprocess.Popen[str]:
        """Start one worker and wait until its consumers are bound."""
        args = worker_args(self.scenario, self.log)
        env = {**os.environ, "OQRON_NATS_URL": self.url, "OQRON_NAMESPACE": NAMESPACE}
        output = self.log.with_name(f"worker-{len(self.processes)}.out")
        process = start_process(args, env, output)
        self.processes.append(process)
        return process

    def alive(self) -> list[subprocess.Popen[str]]:
        """The workers still running."""
        return [p for p in self.processes if p.poll() is None]

    def stop_all(self) -> None:
        """SIGTERM every worker (SIGCONT first, in case one is stopped) and wait."""
        for process in self.alive():
            process.send_signal(signal.SIGCONT)
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def worker_args(scenario: Scenario, log: Path, *extra: str) -> list[str]:
    """The command line of a chaos worker process for a scenario."""
    return [
        sys.executable, "-m", "tests.chaos.worker", "--queue", QUEUE, "--log", str(log),
        "--concurrency", str(scenario.concurrency), "--lock-ttl", str(scenario.lock_ttl),
        "--heartbeat", str(scenario.heartbeat), "--strategy", scenario.strategy, *extra,
    ]  # fmt: skip


async def run(scenario: Scenario, workdir: Path, seed: int = 1) -> Outcome:
    """Run one scenario and check its history."""
    rng = random.Random(seed)
    files = Files(workdir)
    server = LocalServer(store_dir=workdir / "store", sync_always=True).start()
    workers = Workers(scenario, server.url, files.handler)
    started = time.monotonic()
    try:
        for _ in range(scenario.workers):
            await asyncio.to_thread(workers.spawn)
        client = Client(server.url, namespace=NAMESPACE)
        async with client:
            watch = RedeliveryWatch(client)
            watching = asyncio.create_task(watch.run())
            q = queue(QUEUE, client=client)
            producing = asyncio.create_task(produce(scenario, q, files, rng))
            nemesis = asyncio.create_task(inject(scenario, server, workers, files, rng, producing))
            await producing
            await nemesis
            drain_started = time.monotonic()
            await drain(q, files, scenario.drain_timeout)
            drain_seconds = time.monotonic() - drain_started
            watch.stop()
            await watching
            await asyncio.to_thread(workers.stop_all)
            finals, dead = await read_final_state(q)
            redelivered = watch.peak
            drift = await index_drift(q)
    finally:
        await asyncio.to_thread(workers.stop_all)
        server.close()
    report = checker.check(
        checker.enqueues_from_lines(checker.load_jsonl(files.enqueues)),
        *checker.parse_handler_log(checker.load_jsonl(files.handler)),
        checker.faults_from_lines(checker.load_jsonl(files.faults)),
        finals,
        dead,
    )
    outcome = Outcome(
        scenario, report, seed, time.monotonic() - started, drain_seconds, redelivered,
        faults=report.faults, index_drift=drift,
    )  # fmt: skip
    (workdir / "report.json").write_text(json.dumps(outcome.to_dict(), indent=2))
    return outcome


async def produce(
    scenario: Scenario,
    q: Queue[Any, Any],
    files: Files,
    rng: random.Random,
    stop: asyncio.Event | None = None,
) -> None:
    """Add the jobs at a steady pace; log every attempt's outcome; retry unknown ones.

    An error add() is not documented to raise (anything but EnqueueError and ConnectionFailed)
    is logged as outcome "unknown" (it may have landed) with an ``error`` field naming it, and
    the add is tried again. With ``stop``, adding ends early once it is set (``scenario.jobs``
    is then a ceiling).
    """
    gap = scenario.duration / scenario.jobs
    start = time.monotonic()
    in_flight: set[asyncio.Task[None]] = set()
    limit = asyncio.Semaphore(256)

    async def add(n: int, work: float) -> None:
        job_id = f"j{n:06d}"
        async with limit:
            for _ in range(5):
                line: dict[str, Any] = {"job": job_id}
                try:
                    await q.add({"work": work}, job_id=job_id, priority=n % PRIORITY_LEVELS)
                except EnqueueError as exc:
                    line["outcome"] = "unknown" if exc.outcome_unknown else "fail"
                except ConnectionFailed:
                    line["outcome"] = "fail"
                except Exception as exc:  # not an error add() documents: named in the log
                    line |= {"outcome": "unknown", "error": f"{type(exc).__name__}: {exc}"}
                else:
                    line["outcome"] = "ok"
                Files.append(files.enqueues, {**line, "t": time.time()})
                if line["outcome"] == "ok":
                    return

    for n in range(scenario.jobs):
        if stop is not None and stop.is_set():
            break
        delay = start + n * gap - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing, not synchronisation
        task = asyncio.create_task(add(n, rng.uniform(*scenario.work)))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)


async def inject(  # noqa: PLR0917 - the parts of one run, passed once
    scenario: Scenario,
    server: LocalServer,
    workers: Workers,
    files: Files,
    rng: random.Random,
    producing: asyncio.Task[None],
) -> None:
    """The nemesis: the scenario's faults, spread over the producer's run."""

    def fault(kind: str, pid: int | None) -> None:
        Files.append(files.faults, {"t": time.time(), "kind": kind, "pid": pid})

    events: list[tuple[float, str]] = []
    if scenario.kill_every:
        events += [(t, "kill") for t in _ticks(scenario.kill_every, scenario.duration)]
    events += [(scenario.duration * (k + 1) / (scenario.server_kills + 1), "server")
               for k in range(scenario.server_kills)]  # fmt: skip
    events += [(scenario.duration * (k + 0.5) / max(scenario.stalls, 1), "stall")
               for k in range(scenario.stalls)]  # fmt: skip
    start = time.monotonic()
    for at, kind in sorted(events):
        delay = start + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if kind == "kill":
            victim = rng.choice(workers.alive())
            victim.kill()
            fault("kill_worker", victim.pid)
            await asyncio.to_thread(victim.wait)
            await asyncio.to_thread(workers.spawn)
        elif kind == "server":
            old = server.pid
            server.kill()
            fault("kill_server", old)
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            await asyncio.to_thread(server.start)
            fault("restart_server", server.pid)
        else:
            victim = busiest(workers.alive(), files.handler)
            victim.send_signal(signal.SIGSTOP)
            fault("stop_worker", victim.pid)
            await asyncio.sleep(2 * scenario.lock_ttl)
            victim.send_signal(signal.SIGCONT)
            fault("cont_worker", victim.pid)
    await producing


def busiest(processes: list[subprocess.Popen[str]], handler_log: Path) -> subprocess.Popen[str]:
    """The worker with the most executions running (started, not ended) right now."""
    executions, _ = checker.parse_handler_log(checker.load_jsonl(handler_log))
    running = Counter(e.pid for e in executions if e.end is None)
    return max(processes, key=lambda p: running[p.pid])


def _ticks(every: float, duration: float) -> list[float]:
    count = int(duration / every)
    return [every * (k + 1) for k in range(count)]


async def records(q: Queue[Any, Any]) -> list[Any]:
    """Every job record of the chaos queue, read from KV (the truth, not the state index).

    Any replica answers the scan, and one may be far behind: a node that led the bucket while
    cut off from the others failed to catch up for over a minute after it joined again, and
    answered with records minutes old (cluster scenario 9). An unfinished record is therefore
    read again at the bucket's leader, which has every acknowledged write."""
    backend = await q._open()
    found = []
    async for record in backend.store.scan():
        job = record.job
        if job.state not in TERMINAL_STATES and backend.store.replicated:
            fresh = await backend.store.get(job.id, fresh=True)
            job = fresh.job if fresh is not None else job
        found.append(job)
    return found


async def drain(q: Queue[Any, Any], files: Files, timeout: float) -> None:
    """Wait until every job the producer got an answer for is terminal and the queue's stream
    is empty (every message acked, including redeliveries of jobs whose ack a kill lost)."""
    wanted = {row["job"] for row in checker.load_jsonl(files.enqueues) if row["outcome"] == "ok"}
    behind = Backstage(q.client, q.name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = {job.id for job in await records(q) if job.state in TERMINAL_STATES}
        if wanted <= done and await behind.work_messages() == 0:
            return
        await asyncio.sleep(1.0)


async def index_drift(q: Queue[Any, Any]) -> dict[str, int]:
    """Per state, how far the state index's count is from the records' once healed (0).

    A crash can cut an index update short; listing a state repairs its settled stale entries
    (as any get_jobs() call does), so the lists are read until the counts agree or 15 s pass.
    """
    truth = Counter(str(job.state) for job in await records(q))
    drift: dict[str, int] = {}
    for _ in range(30):
        drift = {s: n for s in JobState if (n := await q.count(s) - truth[str(s)])}
        if not drift:
            break
        for state in drift:
            await q.get_jobs(state, limit=10_000)  # read-repair
        await asyncio.sleep(0.5)
    return drift


async def read_final_state(q: Queue[Any, Any]) -> tuple[list[checker.FinalRecord], set[str]]:
    """Every job record, and the ids in the dead-letter stream."""
    finals = [
        checker.FinalRecord(
            job=job.id,
            state=str(job.state),
            attempt=job.attempt,
            stalled_count=job.stalled_count,
            completed_by=job.result.get("pid") if isinstance(job.result, dict) else None,
        )
        for job in await records(q)
    ]
    return finals, await Backstage(q.client, q.name).dead_letter_ids()


class RedeliveryWatch:
    """Samples the consumer's count of redelivered messages still pending, keeping the peak.

    A message redelivered (ack_wait expired, or handed back) counts until it is acked, so
    sampling twice a second sees every redelivery of a job that runs for seconds (S10).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.peak = 0
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        """End ``run`` (not a cancel: Python 3.11's wait_for can swallow one)."""
        self._stopped.set()

    async def run(self) -> None:
        """Sample until stopped."""
        behind = Backstage(self.client, QUEUE)
        while not self._stopped.is_set():
            await asyncio.sleep(0.5)
            try:
                info = await behind.consumer_info("fifo")
            except Exception:  # the consumer may not exist yet, or the server is restarting
                continue
            self.peak = max(self.peak, int(info.num_redelivered or 0))
