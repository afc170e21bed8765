"""The cluster chaos suite (issue 10): node faults on a 3-node R3 JetStream cluster under load.

Each run starts its own :class:`~oqron_nats.testing.cluster.LocalCluster`, a publisher in this
process (a Client given every URL, ``replicas=3``) adding jobs at a steady pace, and three
worker processes (``tests.chaos.worker``, ``OQRON_REPLICAS=3``), each given the URL list rotated
so that its first URL is another node, and told not to shuffle it: one worker per node, checked
on the nodes' ``/connz``. The scenario's nemesis then injects node faults; for each it records

* when every role the node held (meta leader, leader of the queue's stream, of its consumer, of
  the jobs and locks buckets' streams, of the state index stream) had a new leader, polled from
  a separate client (STREAM.INFO, CONSUMER.INFO; ``/jsz`` for the meta leader) until it names
  another node (or the node itself once it is back): the fault's *election*;
* from the handler log: the time from the fault to the first completion after it, and until
  every worker had completed a job after the election (``ready``; for a paused queue, after it
  was also resumed; a hung node gets no such grace: a worker connected to it has to notice). A
  worker that has not within ``resume_limit`` seconds of ``ready`` is *stuck*.

Workers that exit are recorded and replaced (a second later, as a supervisor would), so the run
goes on. After the last fault the load runs ``tail`` seconds more, in which every worker must
complete a job; then adding stops, every accepted job must become terminal and the workers get
SIGTERM. A run passes if: the chaos checker finds 0 lost, 0 double completions and every
duplicate explained (a node outage explains a duplicate whose starts it overlapped, see
``checker``); no worker exited before the SIGTERM, each exited 0 after it; no worker was stuck;
every worker completed a job again within ``RESUME_TARGET`` seconds of ``ready``; the state
index agrees with the records; and the scenario's own checks hold (the node hit held the roles
meant, the pause state on the server matches the queue's).

``SCENARIOS`` lists the nine scenarios; ``CI`` and ``FULL`` are the two sizes
(``OQRON_CLUSTER_FULL=1`` for pytest, ``python -m tests.chaos --cluster --full``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import nats
import nats.aio.client
import nats.errors

from oqron_nats import Client, Queue, queue
from oqron_nats.testing.cluster import LocalCluster

from ..helpers import ROOT
from ..support import namespace_stream_infos
from . import checker
from .harness import (
    NAMESPACE,
    QUEUE,
    Files,
    Scenario,
    drain,
    index_drift,
    produce,
    read_final_state,
    worker_args,
)

T = TypeVar("T")
How = Literal["kill", "term", "hang", "partition"]
REPLICAS = 3
RESUME_TARGET = 10.0
"""Seconds from ``ready`` (the new leaders elected) within which every worker must have
completed a job again: the issue's target."""
ELECTION_LIMIT = 30.0
"""Seconds after a fault within which every role the node held must have a new leader."""
INFO_TIMEOUT = 0.5
"""Seconds an observer's STREAM.INFO or CONSUMER.INFO may take before it is asked again."""
READY_LIMIT = 60.0
"""Seconds a worker process may take to say ``ready``."""
STOP_LIMIT = 30.0
"""Seconds a worker may take to exit after SIGTERM."""
RESTART_DELAY = 1.0
"""Seconds before a worker that exited is replaced."""
ROLES = ("meta", "stream", "consumer", "jobs bucket", "locks bucket", "index")
"""The roles a node can hold that the job path depends on."""


@dataclass(frozen=True)
class Size:
    """How big each run of a scenario is."""

    rate: float
    """Jobs added per second, from before the first fault until after the last."""
    down: float
    """Seconds a killed node stays down before it is started again."""
    hang: float
    """Seconds a node stays stopped (SIGSTOP) before it is continued."""
    apart: float
    """Seconds a node stays cut off from the others (its routes held) before it joins again:
    at full size long enough for its worker to leave it (after 15 s of unanswered requests, the
    first of them a request timeout after the cut), in CI not."""
    hold: float
    """Seconds the queue stays paused in the meta-leader scenario."""
    runs: int
    """Runs of each scenario, each on a fresh cluster (the figures are p50 and max over all)."""
    resume_limit: float
    """Seconds after ``ready`` before a worker that has completed nothing since counts as stuck."""
    warm: float
    """Seconds of load before the first fault (at least; every worker must complete a job)."""
    tail: float
    """Seconds of load after the last fault's recovery, in which every worker must complete a
    job (one that finished a job it had claimed before a fault, then claimed nothing, fails).
    Longer than a request's timeout (5 s): a node that rejoins (continued after SIGSTOP, or
    restarted) may call elections, and the writes in flight then wait out their timeout."""
    max_jobs: int
    """A ceiling on the jobs one run adds."""


CI = Size(rate=15.0, down=3.0, hang=20.0, apart=10.0, hold=2.0, runs=1, resume_limit=20.0, warm=2.0,
          tail=10.0, max_jobs=2_000)  # fmt: skip
"""The size CI runs: one run of each scenario, 20-45 s each."""
FULL = Size(rate=30.0, down=5.0, hang=20.0, apart=30.0, hold=5.0, runs=3, resume_limit=30.0,
            warm=5.0, tail=10.0, max_jobs=20_000)  # fmt: skip
"""The full size: three runs of each scenario, longer outages, twice the load."""


SHORT_WORK = (0.005, 0.03)
"""Seconds a job's handler takes (uniform): the load of most scenarios, a job's writes longer
than its handler."""


def load_of(size: Size, strategy: str = "fifo", work: tuple[float, float] = SHORT_WORK) -> Scenario:
    """The worker settings and the load ceiling of a run (ack_wait = 3 + 1 + 1 = 5 s)."""
    return Scenario(
        "cluster", "3-node R3 cluster, node faults under load", jobs=size.max_jobs,
        duration=size.max_jobs / size.rate, workers=3, concurrency=4, lock_ttl=3.0,
        heartbeat=1.0, strategy=strategy, work=work,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Worker processes


class WorkerProcess:
    """One chaos worker process, its first URL on ``node``; its output is copied to a file."""

    def __init__(self, args: list[str], env: dict[str, str], output: Path, node: str) -> None:
        self.node = node
        self.output = output
        self.started = time.time()
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.said_ready = False
        self.stopping = False
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True, name=f"output-{self.pid}").start()

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    @property
    def client_name(self) -> str:
        """The NATS connection name its Client uses (``oqron-<hostname>-<pid>``)."""
        return f"oqron-{socket.gethostname()}-{self.pid}"

    def running(self) -> bool:
        """Whether the process has not exited."""
        return self.popen.poll() is None

    def wait_ready(self, timeout: float = READY_LIMIT) -> bool:
        """Wait until the worker said ``ready`` (True) or exited or ``timeout`` passed (False)."""
        self._ready.wait(timeout)
        return self.said_ready

    def tail(self, lines: int = 40) -> str:
        """The last lines of its output."""
        return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout, self.output.open("a") as out:
            for line in self.popen.stdout:
                out.write(line)
                out.flush()
                if line.strip() == "ready":
                    self.said_ready = True
                    self._ready.set()
                if "reconnecting to another server" in line:  # what it does once moved
                    for after in LEFT_DUMPS:
                        threading.Timer(after, self.dump).start()
        self._ready.set()

    def dump(self) -> None:
        """Ask the worker to print what it is doing (SIGUSR1), if it still runs."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGUSR1)


@dataclass(frozen=True)
class Exit:
    """A worker that exited on its own, or not with 0 after SIGTERM."""

    pid: int
    node: str
    rc: int | None
    t: float
    phase: str
    """"at start-up" (before it said ready), "while running", or "after SIGTERM"."""
    tail: str

    @property
    def how(self) -> str:
        """When and how it ended, and why (its traceback's last line and innermost frame)."""
        code = "did not exit" if self.rc is None else f"rc {self.rc}"
        return f"{self.phase}: {code}; {_summary(self)}"


def exit_lines(exits: list[Exit]) -> list[str]:
    """One line per kind of exit, naming the workers."""
    kinds: dict[str, list[int]] = {}
    for exit_ in exits:
        kinds.setdefault(exit_.how, []).append(exit_.pid)
    return [f"{len(pids)} worker(s) {how} (pids {pids})" for how, pids in kinds.items()]


def _summary(exit_: Exit) -> str:
    """The last line naming an error in a worker's output (else its last line), and the
    innermost oqron_nats frame of its traceback."""
    lines = [line.strip() for line in exit_.tail.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    frames = [line for line in lines if line.startswith("File ") and "/oqron_nats/" in line]
    where = ""
    if frames:
        path, _, rest = frames[-1].partition('", line ')
        where = f" at {path.rsplit('/oqron_nats/', 1)[1]}:{rest.replace(', in ', ' ')}"
    return (errors or lines or ["no output"])[-1][:200] + where


class NodeWorkers:
    """The worker processes of a run, each pinned to a first node; exits are recorded and the
    worker replaced, so the run goes on and its other checks still count."""

    def __init__(self, cluster: LocalCluster, load: Scenario, log: Path) -> None:
        self.cluster = cluster
        self.load = load
        self.log = log
        self.processes: list[WorkerProcess] = []
        self.exits: list[Exit] = []
        self._seen: set[int] = set()

    def start(self, first: int) -> WorkerProcess:
        """Start a worker whose first URL is node ``first`` (an index); do not wait for it."""
        urls = self.cluster.urls
        rotated = urls[first:] + urls[:first]
        env = {
            **os.environ,
            "OQRON_NATS_URL": ",".join(rotated),
            "OQRON_NAMESPACE": NAMESPACE,
            "OQRON_REPLICAS": str(REPLICAS),
            "PYTHONUNBUFFERED": "1",
        }
        args = worker_args(self.load, self.log, "--dont-randomize")
        output = self.log.with_name(f"worker-{len(self.processes)}.out")
        process = WorkerProcess(args, env, output, self.cluster.nodes[first].name)
        self.processes.append(process)
        return process

    async def spawn(self, first: int) -> WorkerProcess:
        """Start a worker and wait until it is ready (or has exited: see ``exits``)."""
        process = self.start(first)
        await asyncio.to_thread(process.wait_ready)
        return process

    def alive(self) -> list[WorkerProcess]:
        """The workers running and not being stopped."""
        return [p for p in self.processes if p.running() and not p.stopping]

    def exited(self) -> set[int]:
        """The pids of the workers that exited on their own."""
        return {e.pid for e in self.exits}

    def check(self) -> list[WorkerProcess]:
        """Record the workers that exited on their own since the last check; return them."""
        gone = []
        for process in self.processes:
            rc = process.popen.poll()
            if rc is None or process.stopping or process.pid in self._seen:
                continue
            self._seen.add(process.pid)
            phase = "while running" if process.said_ready else "at start-up"
            self.exits.append(
                Exit(process.pid, process.node, rc, time.time(), f"exited {phase}", process.tail())
            )
            gone.append(process)
        return gone

    async def supervise(self, stop: asyncio.Event) -> None:
        """Until ``stop``: record every worker that exits, and start another in its place a
        second later (as a process supervisor would)."""
        nodes = [n.name for n in self.cluster.nodes]
        while not stop.is_set():
            gone = self.check()
            await asyncio.sleep(RESTART_DELAY if gone else 0.25)
            for process in gone:
                if not stop.is_set():
                    self.start(nodes.index(process.node))

    async def stop_all(self) -> None:
        """SIGTERM every running worker; record any that does not exit 0 within STOP_LIMIT."""
        self.check()
        running = self.alive()
        for process in running:
            process.stopping = True
            process.popen.terminate()
        for process in running:
            try:
                rc: int | None = await asyncio.to_thread(process.popen.wait, STOP_LIMIT)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                await asyncio.to_thread(process.popen.wait)
                rc = None
            if rc != 0:
                self.exits.append(
                    Exit(process.pid, process.node, rc, time.time(), "after SIGTERM",
                         process.tail())
                )  # fmt: skip

    def kill_all(self) -> None:
        """Kill whatever still runs (cleanup after a failed run)."""
        for process in self.processes:
            if process.running():
                process.stopping = True
                process.popen.kill()
                process.popen.wait()


class Completions:
    """The handler log's ``completed`` lines, read as they are appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[checker.Completion] = []
        self._offset = 0

    def read(self) -> list[checker.Completion]:
        """Every completion so far (the new whole lines are parsed)."""
        with self.path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(whole)
        rows = [json.loads(line) for line in whole.splitlines() if line.strip()]
        _, new = checker.parse_handler_log(
            [r for r in rows if r.get("kind") == "completed"], ignore_kinds=()
        )
        self.seen.extend(new)
        return self.seen

    def done_since(self, pids: set[int], since: float) -> set[int]:
        """Which of ``pids`` completed a job at or after ``since``."""
        return {c.pid for c in self.read() if c.t >= since and c.pid in pids}


# ---------------------------------------------------------------------------------------------
# A run


@dataclass
class Mark:
    """One node fault and what followed it."""

    how: How
    node: str
    held: tuple[str, ...]
    """The roles (``ROLES``) the node held just before."""
    pids: list[int]
    """The workers expected to complete jobs again afterwards (those running at the fault;
    ``wait_resumed`` adds the ones started since, to replace a worker or on purpose)."""
    placement: dict[int, str | None]
    """Worker pid -> the node it was connected to just before."""
    t: float = 0.0
    """When it struck (wall clock)."""
    elections: dict[str, float] = field(default_factory=dict)
    """Role -> seconds from the fault until it had a new leader."""
    elected: float | None = None
    """When every role it held had another leader (``t`` if it held none); None if not within
    ELECTION_LIMIT."""
    back: float | None = None
    """When it was healthy again (restarted or continued)."""
    ready: float = 0.0
    """From when every worker is expected to complete jobs again: ``elected`` (for a hung node
    too: a worker connected to it has to notice), for a node cut off, when it joined again (it
    still answers its clients, which leave it only after 15 s of unanswered requests), or, for a
    paused queue, when it was resumed."""
    ready_after: str = "the new leaders"
    """What ``ready`` waited for last."""
    electing: asyncio.Task[float | None] | None = None

    def label(self) -> str:
        """E.g. ``kill -9 c-2 (meta, stream)``."""
        verbs = {"kill": "kill -9", "term": "restart", "hang": "SIGSTOP", "partition": "cut off"}
        verb = verbs[self.how]
        return f"{verb} {self.node} ({', '.join(self.held) or 'no leader role'})"


@dataclass
class RunResult:
    """One run of a scenario: the checker's report and the figures around it."""

    scenario: str
    report: checker.Report
    marks: list[Mark]
    resumptions: list[checker.Resumption]
    exits: list[Exit]
    problems: list[str]
    """The scenario's own failed checks, found during the run."""
    notes: list[str]
    """What happened, for the reader (placement, which add was in flight, ...)."""
    drift: dict[str, int]
    wall: float
    resume_limit: float

    def failures(self) -> list[str]:
        """Every failed check, one line each (empty: the run passed)."""
        out = []
        if not self.report.ok:  # its counts, then the ids behind each problem
            verdict = self.report.lines()
            out += ["checker: " + "; ".join(verdict[2:4]), *verdict[5:]]
        out += exit_lines(self.exits)
        for mark, back in zip(self.marks, self.resumptions, strict=True):
            if mark.elected is None:
                out.append(f"{mark.label()}: no new leader within {ELECTION_LIMIT:.0f} s")
            if back.stuck:
                on = {pid: mark.placement.get(pid, "not running yet") for pid in back.stuck}
                out.append(
                    f"{mark.label()}: workers {list(back.stuck)} completed nothing within "
                    f"{self.resume_limit:.0f} s after {mark.ready_after} (stuck; connected "
                    f"before the fault to {on})"
                )
            elif back.after_ready is not None and back.after_ready > RESUME_TARGET:
                out.append(
                    f"{mark.label()}: every worker completed a job again only "
                    f"{back.after_ready:.1f} s after {mark.ready_after} "
                    f"(target {RESUME_TARGET:.0f} s); the last was worker {back.last}, "
                    f"connected to {mark.placement.get(back.last or 0)} before the fault"
                )
        out += self.problems
        if self.drift:
            out.append(f"state index drift: {self.drift}")
        return out

    def lines(self) -> list[str]:
        """A readable account of the run."""
        out = [f"{self.scenario}: {len(self.report.accepted)} jobs, {self.wall:.0f} s"]
        out += [f"  note: {note}" for note in self.notes]
        for mark, back in zip(self.marks, self.resumptions, strict=True):
            elected = ", ".join(f"{r} {t:.1f} s" for r, t in mark.elections.items()) or "-"
            out.append(
                f"  {mark.label()}: new leaders after {elected}; first completion "
                f"{_s(back.first)}, every worker again {_s(back.every, back)} after the fault, "
                f"{_s(back.after_ready, back)} after {mark.ready_after}; stuck {list(back.stuck)}"
                + _after_back(mark, back)
            )
        out += [f"  {line}" for line in self.report.lines()]
        failures = self.failures()
        out += [f"  FAILED: {line}" for line in failures] or ["  passed"]
        return out


def _after_back(mark: Mark, back: checker.Resumption) -> str:
    """For a hung or cut off node: how long after SIGCONT or the heal every worker was back."""
    if mark.how not in ("hang", "partition") or mark.back is None or back.every is None:
        return ""
    since = "SIGCONT" if mark.how == "hang" else "the heal"
    return f" ({mark.t + back.every - mark.back:+.1f} s from {since})"


def _s(value: float | None, back: checker.Resumption | None = None) -> str:
    """Seconds, or why there are none: never, or no worker left to wait for (all exited)."""
    if value is not None:
        return f"{value:.1f} s"
    return "- (no worker left)" if back is not None and not back.stuck else "never"


class ClusterRun:
    """The parts of one run, and the nemesis's moves."""

    def __init__(
        self,
        cluster: LocalCluster,
        client: Client,
        files: Files,
        size: Size,
        seed: int,
        *,
        strategy: str = "fifo",
        work: tuple[float, float] = SHORT_WORK,
    ) -> None:
        self.cluster = cluster
        self.client = client
        self.q: Queue[Any, Any] = queue(QUEUE, client=client)
        self.names = client.names(QUEUE)
        self.files = files
        self.size = size
        self.load = load_of(size, strategy, work)
        self.rng = random.Random(seed)
        self.workers = NodeWorkers(cluster, self.load, files.handler)
        self.completions = Completions(files.handler)
        self.marks: list[Mark] = []
        self.problems: list[str] = []
        self.notes: list[str] = []
        self._stop_load = asyncio.Event()
        self._stop_watch = asyncio.Event()
        self._producing: asyncio.Task[None] | None = None
        self._supervising = asyncio.create_task(self.workers.supervise(self._stop_watch))

    # -- setting up ---------------------------------------------------------------------------

    async def provision(self) -> None:
        """Create the queue's streams and buckets (as the publisher's first add would)."""
        await settled(lambda: self.client._prepare_queue(self.names))

    async def setup(self) -> None:
        """Provision the queue, start a worker on each node and check where each is connected."""
        await self.provision()
        await asyncio.gather(*(self.workers.spawn(n) for n in range(len(self.cluster.nodes))))
        await self.check_placement()

    async def check_placement(self) -> None:
        """Every worker is connected to its own first node (polled for up to 5 s)."""
        deadline = time.monotonic() + 5.0
        while True:
            placement = await self.placement()
            wrong = {p.pid: (p.node, placement.get(p.pid)) for p in self.workers.alive()
                     if placement.get(p.pid) != p.node}  # fmt: skip
            if not wrong or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        if wrong:
            self.problems.append(f"workers not on their first node (pid: wanted, found): {wrong}")
        self.notes.append(
            "workers on nodes: " + ", ".join(f"{pid} {node}" for pid, node in placement.items())
        )

    async def start_load(self) -> None:
        """Start adding jobs at the size's pace (until ``finish``)."""
        self._producing = asyncio.create_task(
            produce(self.load, self.q, self.files, self.rng, self._stop_load)
        )

    async def go(self) -> None:
        """Start the load and wait until every worker has completed a job."""
        await self.start_load()
        await asyncio.sleep(self.size.warm)
        pids = {p.pid for p in self.workers.alive()}
        deadline = time.monotonic() + self.size.resume_limit
        while True:
            idle = pids - self.completions.done_since(pids, 0.0)
            if not idle or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)  # the handler log is a file: read it again
        if idle:
            self.problems.append(f"workers {sorted(idle)} completed nothing before any fault")

    # -- looking ------------------------------------------------------------------------------

    async def placement(self) -> dict[int, str | None]:
        """Worker pid -> the node its connection is on (``/connz``)."""
        alive = self.workers.alive()
        found = await asyncio.gather(
            *(asyncio.to_thread(self.cluster.connected_node, p.client_name) for p in alive)
        )
        return {p.pid: node for p, node in zip(alive, found, strict=True)}

    def _leader_of(self, role: str) -> str | None:
        if role == "meta":
            return self.cluster.meta_leader()
        if role == "consumer":
            return self.cluster.consumer_leader(self.names.stream, self.consumer)
        return self.cluster.stream_leader(self.stream_of(role))

    @property
    def consumer(self) -> str:
        """The queue's one consumer (named after its strategy)."""
        return self.load.strategy

    def stream_of(self, role: str) -> str:
        """The stream behind a role other than meta and consumer."""
        streams = {
            "stream": self.names.stream,
            "jobs bucket": f"KV_{self.names.jobs_bucket}",
            "locks bucket": f"KV_{self.names.locks_bucket}",
            "index": self.names.index_stream,
        }
        return streams[role]

    async def leader(self, role: str) -> str:
        """The node holding ``role`` (polled for up to 15 s while there is none)."""
        deadline = time.monotonic() + 15.0
        while (node := await asyncio.to_thread(self._leader_of, role)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no node leads the {role} after 15 s")
            await asyncio.sleep(0.2)
        return node

    async def roles(self) -> dict[str, str | None]:
        """Role -> the node holding it now."""
        held = await asyncio.gather(*(asyncio.to_thread(self._leader_of, r) for r in ROLES))
        return dict(zip(ROLES, held, strict=True))

    async def held_by(self, node: str) -> tuple[str, ...]:
        """The roles ``node`` holds now."""
        return tuple(role for role, leader in (await self.roles()).items() if leader == node)

    async def arrange(self, role: Literal["stream", "consumer", "jobs bucket"], node: str) -> None:
        """Move the leadership of the queue's stream, consumer or jobs bucket to ``node`` (a
        step-down with a preferred server), unless it is there already; a problem if it does not
        get there."""
        if await self.leader(role) == node:
            return
        subject = (
            f"$JS.API.CONSUMER.LEADER.STEPDOWN.{self.names.stream}.{self.consumer}"
            if role == "consumer"
            else f"$JS.API.STREAM.LEADER.STEPDOWN.{self.stream_of(role)}"
        )
        body = json.dumps({"placement": {"preferred": node}}).encode()
        nc = await self.observer([])
        try:
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline:
                if await asyncio.to_thread(self._leader_of, role) == node:
                    self.notes.append(f"moved the {role}'s leadership to {node} before the load")
                    return
                with contextlib.suppress(nats.errors.Error):  # no leader to ask: ask again
                    await nc.request(subject, body, timeout=2.0)
                await asyncio.sleep(0.5)
        finally:
            await nc.close()
        self.problems.append(f"could not move the {role}'s leadership to {node}")

    async def observer(self, avoid: list[str]) -> nats.aio.client.Client:
        """A separate connection (not a worker's, not the publisher's), on a node not in
        ``avoid`` (a hung node would hold its requests)."""
        urls = [n.url for n in self.cluster.nodes if n.name not in avoid and n.answering]
        connecting = nats.connect(
            servers=urls, dont_randomize=True, name="chaos-observer", connect_timeout=2,
            reconnect_time_wait=0.1, max_reconnect_attempts=10,
        )  # fmt: skip
        return await asyncio.wait_for(connecting, 15.0)

    # -- faults -------------------------------------------------------------------------------

    def fault(self, kind: checker.FaultKind, node: str, pid: int, t: float) -> None:
        """Log a fault for the checker."""
        Files.append(self.files.faults, {"t": t, "kind": kind, "pid": pid, "node": node})

    async def aim(self, node: str, how: How) -> Mark:
        """A fault about to hit ``node``: the roles it holds, where the workers are."""
        held = await self.held_by(node)
        placement = await self.placement()
        return Mark(how, node, held, [p.pid for p in self.workers.alive()], placement)

    async def strike(self, mark: Mark) -> Mark:
        """Kill (-9), stop gracefully or hang (SIGSTOP) the node; start timing its election."""
        victim = self.cluster.node(mark.node)
        pid = victim.pid
        mark.t = time.time()
        if mark.how == "kill":
            self.cluster.kill(mark.node)
            self.fault("kill_server", mark.node, pid, mark.t)
        elif mark.how == "hang":
            self.cluster.suspend(mark.node)
            self.fault("stop_server", mark.node, pid, mark.t)
        elif mark.how == "partition":
            self.cluster.partition(mark.node)
            self.fault("part_server", mark.node, pid, mark.t)
        else:
            stopping = asyncio.create_task(asyncio.to_thread(victim.stop, 30.0))
            self.fault("term_server", mark.node, pid, mark.t)
            await stopping
        mark.electing = asyncio.create_task(self.wait_elected(mark))
        self.marks.append(mark)
        return mark

    async def recover(self, mark: Mark) -> None:
        """Bring the node back (after ``down``, ``hang`` or ``apart`` seconds) and wait for its
        election."""
        size = self.size
        pause = {"kill": size.down, "hang": size.hang, "partition": size.apart, "term": 0.0}
        await asyncio.sleep(max(0.0, mark.t + pause[mark.how] - time.time()))
        node = self.cluster.node(mark.node)
        if mark.how == "hang":
            self.cluster.resume(mark.node)
            self.fault("cont_server", mark.node, node.pid, time.time())
            await asyncio.to_thread(self.cluster.wait_healthy, [node])
        elif mark.how == "partition":
            self.cluster.heal(mark.node)
            self.fault("heal_server", mark.node, node.pid, time.time())
            await asyncio.to_thread(self.cluster.wait_healthy, [node])
        else:
            await asyncio.to_thread(self.cluster.restart, mark.node)
            self.fault("restart_server", mark.node, node.pid, time.time())
        mark.back = time.time()
        assert mark.electing is not None
        mark.elected = await mark.electing
        mark.ready = mark.elected if mark.elected is not None else mark.t + ELECTION_LIMIT
        if mark.how == "partition":
            mark.ready = max(mark.ready, mark.back)
            mark.ready_after = "the new leaders and the heal"

    async def wait_elected(self, mark: Mark) -> float | None:
        """When every role the node held had a new leader, polled from a separate client: one
        other than the node, or the node itself once it is back (it may win the election after
        its restart); None if one had none within ELECTION_LIMIT. Each role's time is kept in
        ``mark.elections``."""
        victim, start = mark.node, mark.t
        if not mark.held:
            return start
        nc = await self.observer([victim])
        js = nc.jetstream(timeout=INFO_TIMEOUT)

        async def leader(role: str) -> str | None:
            if role == "meta":
                return await asyncio.to_thread(self.cluster.meta_leader)
            try:
                if role == "consumer":
                    info: Any = await js.consumer_info(self.names.stream, self.consumer)
                else:
                    info = await js.stream_info(self.stream_of(role))
            except (nats.errors.Error, TimeoutError):  # no leader yet: no answer, or a 503
                return None
            return info.cluster.leader if info.cluster is not None else None

        def joined() -> list[str]:
            return [node.name for node in self.cluster.joined()]

        async def elected(role: str) -> float | None:
            while time.time() < start + ELECTION_LIMIT:
                now = await leader(role)
                if now and (now != victim or victim in joined()):
                    mark.elections[role] = time.time() - start
                    return time.time()
                await asyncio.sleep(0.1)
            return None

        try:
            times = await asyncio.gather(*(elected(role) for role in mark.held))
        finally:
            await nc.close()
        return None if None in times else max(t for t in times if t is not None)

    async def wait_resumed(self, mark: Mark) -> None:
        """Wait until every worker of the mark completed a job after ``ready``, or
        ``resume_limit`` passed (the load goes on meanwhile)."""
        deadline = mark.ready + self.size.resume_limit
        while time.time() < deadline:
            started = [p.pid for p in self.workers.processes if p.started > mark.t]
            mark.pids = sorted(set(mark.pids) | set(started))
            wanted = set(mark.pids) - self.workers.exited()
            if not wanted - self.completions.done_since(wanted, mark.ready):
                return
            await asyncio.sleep(0.25)
        for pid in wanted - self.completions.done_since(wanted, mark.ready):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)  # a stuck worker prints what it is doing

    async def outage(self, node: str, how: How) -> Mark:
        """One whole node fault: strike, recover, and wait for the workers to resume."""
        mark = await self.strike(await self.aim(node, how))
        await self.recover(mark)
        await self.wait_resumed(mark)
        return mark

    def expect(self, mark: Mark, roles: set[str], absent: set[str] | None = None) -> None:
        """A problem unless the node held ``roles`` and none of ``absent`` when it was hit."""
        if not roles <= set(mark.held) or (absent or set()) & set(mark.held):
            self.problems.append(
                f"{mark.label()}: the scenario needs a node holding {sorted(roles)}"
                + (f" and not {sorted(absent)}" if absent else "")
            )

    # -- the pause state ----------------------------------------------------------------------

    async def paused_state(self) -> tuple[bool, dict[str, bool]]:
        """The queue's paused flag (KV) and each consumer's paused flag on the server."""
        paused = await settled(self.q.is_paused)
        nc = await self.observer([])
        try:
            infos = await nc.jetstream(timeout=2.0).consumers_info(self.names.stream)
        finally:
            await nc.close()
        return paused, {info.name: bool(info.paused) for info in infos}

    async def check_paused_state(self, when: str, expected: bool | None) -> None:
        """A problem unless, within 15 s, every consumer on the server agrees with the queue's
        paused state, and that is ``expected`` (None: whichever it is)."""
        deadline = time.monotonic() + 15.0
        seen: Any = "no answer"
        while time.monotonic() < deadline:
            try:
                seen = await self.paused_state()
            except (nats.errors.Error, TimeoutError) as exc:
                seen = f"no answer ({type(exc).__name__})"
            else:
                paused, consumers = seen
                agree = bool(consumers) and set(consumers.values()) == {paused}
                if agree and expected in (None, paused):
                    self.notes.append(f"{when}: queue paused={paused}, consumers {consumers}")
                    return
            await asyncio.sleep(0.5)
        self.problems.append(
            f"{when}: the consumers' paused state on the server does not match the queue's"
            + ("" if expected is None else f" (paused={expected} expected)")
            + f" after 15 s: (queue paused, consumers) = {seen}"
        )

    # -- finishing ----------------------------------------------------------------------------

    async def finish(self) -> tuple[list[checker.FinalRecord], set[str], dict[str, int]]:
        """Stop adding, wait until every accepted job is terminal, SIGTERM the workers, read
        the final records and the index drift."""
        since = time.time()
        await asyncio.sleep(self.size.tail)
        alive = {p.pid for p in self.workers.alive()}
        if idle := alive - self.completions.done_since(alive, since):
            self.problems.append(
                f"workers {sorted(idle)} completed nothing in the last {self.size.tail:.0f} s of "
                "load (after every fault had passed)"
            )
        self._stop_load.set()
        if self._producing is not None:
            await self._producing
        errors = Counter(row["error"] for row in checker.load_jsonl(self.files.enqueues)
                         if "error" in row)  # fmt: skip
        for error, n in errors.items():
            self.problems.append(f"add() raised {error} {n} time(s) (not an EnqueueError)")
        await settled(lambda: drain(self.q, self.files, timeout=90.0))
        self._stop_watch.set()
        await self._supervising
        await self.workers.stop_all()
        await self.replicas_caught_up()
        finals, dead = await settled(lambda: read_final_state(self.q))
        drift = await settled(lambda: index_drift(self.q))
        return finals, dead, drift

    async def replicas_caught_up(self) -> None:
        """Wait until every replica of the namespace's streams has caught up with its leader,
        as the leaders say, so that the final reads (any replica answers them) see every write;
        a problem if one has not after CATCH_UP_LIMIT seconds. A node cut off while it led a
        bucket can fail its catch-up for a minute or more after it joined again (nats-server
        2.15, README Reliability)."""
        started = time.monotonic()
        behind: list[str] = []
        while time.monotonic() - started < CATCH_UP_LIMIT:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                behind = [
                    f"{info.config.name}@{peer.name} (lag {peer.lag})"
                    for info in await namespace_stream_infos(self.q.client)
                    for peer in (info.cluster.replicas if info.cluster else None) or []
                    if not peer.current and not peer.offline
                ]
                if not behind:
                    took = time.monotonic() - started
                    if took > 1.0:
                        self.notes.append(
                            f"replicas caught up {took:.0f} s after the workers' stop"
                        )
                    return
            await asyncio.sleep(1.0)
        self.problems.append(f"replicas still behind after {CATCH_UP_LIMIT:.0f} s: {behind}")

    async def abort(self) -> None:
        """Cleanup after a run that raised: stop the tasks and the workers."""
        self._stop_load.set()
        self._stop_watch.set()
        for task in (self._producing, self._supervising):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.to_thread(self.workers.kill_all)


LEFT_DUMPS = (1.0, 4.0, 8.0)
"""Seconds after a worker left its server (a node cut off) when it is asked what it is doing."""
CATCH_UP_LIMIT = 240.0
"""Seconds the final reads wait for replicas still behind (a stuck one is caught up by the
leader's forced snapshot, about 80 s after the heal: README Reliability)."""


async def settled(read: Callable[[], Awaitable[T]], tries: int = 3) -> T:
    """A read tried again if it timed out (a stream answers nothing while it elects a leader,
    and a restarted node can set off another election); the reads are idempotent."""
    for _ in range(tries - 1):
        try:
            return await read()
        except TimeoutError:
            continue
    return await read()


# ---------------------------------------------------------------------------------------------
# The scenarios


async def leader_kill(run: ClusterRun) -> None:
    """kill -9 the node leading the queue's stream, its consumer and its jobs bucket (and the
    meta group: the consumer's re-creation then waits for two elections), then restart it."""
    await leaders_hit(run, "kill")


async def leaders_hit(run: ClusterRun, how: How) -> None:
    """Start the workers, move the leadership of the queue's stream, its consumer and its jobs
    bucket to the meta leader, start the load, and hit that node ``how``: every role the job
    path needs at once."""
    await run.setup()
    node = await run.leader("meta")
    for role in ROLES_HIT:
        await run.arrange(role, node)
    await run.go()
    run.expect(await run.outage(node, how), set(ROLES_HIT))


ROLES_HIT: tuple[Literal["stream", "consumer", "jobs bucket"], ...] = (
    "stream", "consumer", "jobs bucket",
)  # fmt: skip


async def consumer_leader_kill(run: ClusterRun) -> None:
    """kill -9 the consumer's leader while it is not the stream's leader, then restart it."""
    await run.setup()
    stream = await run.leader("stream")
    if await run.leader("consumer") == stream:
        await run.arrange("consumer", next(n.name for n in run.cluster.nodes if n.name != stream))
    await run.go()
    mark = await run.outage(await run.leader("consumer"), "kill")
    run.expect(mark, {"consumer"}, absent={"stream"})


async def bucket_leader_kills(run: ClusterRun) -> None:
    """kill -9 the jobs bucket's leader and restart it; then the same for the locks bucket."""
    await run.setup()
    await run.go()
    for role in ("jobs bucket", "locks bucket"):
        run.expect(await run.outage(await run.leader(role), "kill"), {role})


async def worker_node_kill(run: ClusterRun) -> None:
    """kill -9 the node a worker is connected to (the one holding the fewest roles)."""
    await run.setup()
    await run.go()
    placement = await run.placement()
    roles = await run.roles()
    nodes = sorted({n for n in placement.values() if n is not None})
    node = min(nodes, key=lambda n: (sum(leader == n for leader in roles.values()), n))
    mark = await run.outage(node, "kill")
    on_it = [pid for pid, n in mark.placement.items() if n == node]
    run.notes.append(f"workers connected to {node} when it was killed: {on_it}")
    if not on_it:
        run.problems.append(f"{mark.label()}: no worker was connected to it")


async def startup_kill(run: ClusterRun) -> None:
    """kill -9 the meta leader (moved to lead the queue's stream too) while the workers start;
    then kill the stream's leader and start a worker whose first URL is that dead node."""
    await run.provision()
    meta = await run.leader("meta")
    await run.arrange("stream", meta)
    await run.start_load()  # the jobs wait for the workers
    mark = await run.aim(meta, "kill")
    # the starting workers create the queue's consumer just before the kill: its first leader
    # may be elected only after the new meta leader (seconds later), and no worker can claim
    # before, so the consumer's election counts too (at once if it has a leader elsewhere)
    mark.held = (*mark.held, "consumer") if "consumer" not in mark.held else mark.held
    starting = [run.workers.start(n) for n in range(len(run.cluster.nodes))]
    mark.pids = [p.pid for p in starting]
    await until_connected(run, starting)
    await run.strike(mark)
    ready = await asyncio.gather(*(asyncio.to_thread(p.wait_ready) for p in starting))
    run.notes.append(
        f"workers started {[round(mark.t - p.started, 2) for p in starting]} s before the kill; "
        f"ready: {ready}"
    )
    await run.recover(mark)
    await run.wait_resumed(mark)
    run.expect(mark, {"meta", "stream"})

    node = await run.leader("stream")
    second = await run.strike(await run.aim(node, "kill"))
    late = run.workers.start([n.name for n in run.cluster.nodes].index(node))
    recovering = asyncio.create_task(run.recover(second))
    if await asyncio.to_thread(late.wait_ready):
        found = await asyncio.to_thread(run.cluster.connected_node, late.client_name)
        run.notes.append(f"the worker started while {node} was down connected to {found}")
    await recovering
    await run.wait_resumed(second)


async def until_connected(run: ClusterRun, starting: list[WorkerProcess]) -> None:
    """Wait (up to READY_LIMIT) until one of the starting workers is connected to a node."""
    deadline = time.monotonic() + READY_LIMIT
    while time.monotonic() < deadline:
        for process in starting:
            if await asyncio.to_thread(run.cluster.connected_node, process.client_name):
                return
        await asyncio.sleep(0.05)
    run.problems.append("no starting worker connected to any node")


async def rolling_restart(run: ClusterRun) -> None:
    """Restart every node in turn (SIGTERM, start, healthy), under load, as an upgrade does."""
    await run.setup()
    await run.go()
    for node in [n.name for n in run.cluster.nodes]:
        await run.outage(node, "term")


async def hung_node(run: ClusterRun) -> None:
    """SIGSTOP the node leading the queue's stream, consumer and jobs bucket (and the meta
    group), SIGCONT it ``hang`` s later."""
    await leaders_hit(run, "hang")


async def partitioned_node(run: ClusterRun) -> None:
    """Cut the node leading the queue's stream, consumer and jobs bucket (and the meta group)
    off from the other two, its worker still connected to it; join it again ``apart`` s later.
    Its jobs run up to 1.2 s (a heartbeat is 1 s), so the worker there has some running when it
    is cut off: claimed on the node that loses its leaders, settled through a node that cannot
    reach them."""
    await leaders_hit(run, "partition")


async def meta_leader_kill(run: ClusterRun) -> None:
    """kill -9 the meta leader while the queue is created (the publisher's first add, the
    workers' consumers), and again while pause() is in flight; then resume()."""
    mark = await run.aim(await run.leader("meta"), "kill")
    # the queue's stream and consumer are created during the election: no worker can claim
    # before they first have a leader, so that is when their election counts as over
    mark.held = (*mark.held, "stream", "consumer")
    starting = [run.workers.start(n) for n in range(len(run.cluster.nodes))]
    mark.pids = [p.pid for p in starting]
    await until_connected(run, starting)
    await run.start_load()  # its first add() provisions the queue
    await asyncio.sleep(0.1)
    await run.strike(mark)
    ready = await asyncio.gather(*(asyncio.to_thread(p.wait_ready) for p in starting))
    await run.recover(mark)
    await run.wait_resumed(mark)
    run.expect(mark, {"meta"})
    accepted = [row["t"] for row in checker.load_jsonl(run.files.enqueues)
                if row["outcome"] == "ok"]  # fmt: skip
    first = f"{min(accepted) - mark.t:+.1f} s" if accepted else "never"
    run.notes.append(f"creation: workers ready {ready}; the first add was accepted {first} "
                     "from the kill; the queue's stream and consumer, created during the "
                     "election, count as elected once they first have a leader")  # fmt: skip

    second = await run.aim(await run.leader("meta"), "kill")
    called = time.time()
    pausing = asyncio.create_task(run.q.pause())
    await asyncio.sleep(0)  # pause() sends its first request; it takes a few ms in all
    await run.strike(second)
    paused: bool | None = True
    try:
        await asyncio.wait_for(pausing, 60.0)
    except Exception as exc:  # the report names what pause() raised
        run.problems.append(f"pause() during the meta leader's election raised {exc!r}")
        paused = None  # the state may or may not have changed: the consumers must agree
    run.notes.append(
        f"pause() was called {second.t - called:.2f} s before the kill and ended "
        f"{time.time() - second.t:.1f} s after it"
    )
    await run.check_paused_state("after pause()", expected=paused)
    await asyncio.sleep(run.size.hold)
    await run.recover(second)
    resumed: bool | None = False
    try:
        await asyncio.wait_for(run.q.resume(), 60.0)
    except Exception as exc:
        run.problems.append(f"resume() raised {exc!r}")
        resumed = None
    second.ready, second.ready_after = max(second.ready, time.time()), "resume()"
    await run.check_paused_state("after resume()", expected=resumed)
    await run.wait_resumed(second)
    run.expect(second, {"meta"})


@dataclass(frozen=True)
class Spec:
    """A scenario: its number in the issue, a title, and its nemesis."""

    number: int
    title: str
    nemesis: Callable[[ClusterRun], Awaitable[None]] = field(repr=False)
    partitionable: bool = False
    """Whether its cluster routes through links that can be held (``partition``)."""
    work: tuple[float, float] = SHORT_WORK
    """Seconds a job's handler takes (uniform)."""


SCENARIOS: dict[str, Spec] = {
    "leader": Spec(
        1,
        "kill -9 the leader of the stream, consumer, jobs bucket and meta group; restart it",
        leader_kill,
    ),
    "consumer-leader": Spec(
        2, "kill -9 the consumer's leader (not the stream's), restart it", consumer_leader_kill
    ),
    "bucket-leaders": Spec(
        3, "kill -9 the jobs bucket's leader, then the locks bucket's", bucket_leader_kills
    ),
    "worker-node": Spec(4, "kill -9 the node a worker is connected to", worker_node_kill),
    "startup": Spec(
        5, "kill -9 a node while workers start; start a worker while a node is down", startup_kill
    ),
    "rolling": Spec(6, "rolling restart of all three nodes under load", rolling_restart),
    "hung-node": Spec(
        7,
        "SIGSTOP the leader of the stream, consumer, jobs bucket and meta group; SIGCONT",
        hung_node,
    ),
    "meta-leader": Spec(
        8, "kill -9 the meta leader during queue creation and during pause()", meta_leader_kill
    ),
    "partition": Spec(
        9,
        "cut the leader of the stream, consumer, jobs bucket and meta group off, then join it",
        partitioned_node,
        partitionable=True,
        work=(0.05, 1.2),
    ),
}


async def run_once(
    name: str, workdir: Path, size: Size, seed: int = 1, strategy: str = "fifo"
) -> RunResult:
    """One run of a scenario on a fresh cluster."""
    files = Files(workdir)
    started = time.monotonic()
    spec = SCENARIOS[name]
    cluster = LocalCluster(REPLICAS, store_dir=workdir / "nodes", partitionable=spec.partitionable)
    await asyncio.to_thread(cluster.start)
    try:
        async with Client(cluster.urls, namespace=NAMESPACE, replicas=REPLICAS) as client:
            run = ClusterRun(cluster, client, files, size, seed, strategy=strategy, work=spec.work)
            try:
                await SCENARIOS[name].nemesis(run)
                finals, dead, drift = await run.finish()
            except BaseException:
                await run.abort()
                raise
    finally:
        await asyncio.to_thread(cluster.close)
        for node in cluster.nodes:  # for a failure's post-mortem: elections, stalls, restarts
            (workdir / "nodes" / f"{node.name}.log").write_text("\n".join(node.log) + "\n")
    report = checker.check(
        checker.enqueues_from_lines(checker.load_jsonl(files.enqueues)),
        *checker.parse_handler_log(checker.load_jsonl(files.handler)),
        checker.faults_from_lines(checker.load_jsonl(files.faults)),
        finals,
        dead,
    )
    _, completions = checker.parse_handler_log(checker.load_jsonl(files.handler))
    exited = run.workers.exited()
    resumptions = [
        checker.resumption(completions, set(m.pids) - exited, m.t, m.ready) for m in run.marks
    ]
    result = RunResult(
        name, report, run.marks, resumptions, run.workers.exits, run.problems, run.notes, drift,
        time.monotonic() - started, size.resume_limit,
    )  # fmt: skip
    (workdir / "result.txt").write_text("\n".join(result.lines()) + "\n")
    return result


@dataclass
class ClusterOutcome:
    """Every run of one scenario."""

    name: str
    runs: list[RunResult]

    @property
    def spec(self) -> Spec:
        """The scenario."""
        return SCENARIOS[self.name]

    @property
    def ok(self) -> bool:
        """Whether every run passed."""
        return not any(run.failures() for run in self.runs)

    def lines(self) -> list[str]:
        """Every run's account."""
        return [line for run in self.runs for line in run.lines()]

    def figure(self, pick: Callable[[checker.Resumption], float | None]) -> str:
        """``p50 / max`` of one resume time over every fault of every run (``never`` counts)."""
        values = [pick(r) for run in self.runs for r in run.resumptions]
        if not values:
            return "-"
        seen = checker.latency_stats(v for v in values if v is not None)
        never = sum(v is None for v in values)
        if seen.count == 0:
            return "never"
        text = f"{seen.p50:.1f} / {seen.max:.1f} s"
        return text + (f" ({never} never)" if never else "")


async def run_scenario(
    name: str, workdir: Path, full: bool, seed: int = 1, strategy: str = "fifo"
) -> ClusterOutcome:
    """Every run of one scenario at CI or full size (the workers' queue of ``strategy``)."""
    size = FULL if full else CI
    runs = [
        await run_once(name, workdir / f"{name}-run{k + 1}", size, seed + k, strategy)
        for k in range(size.runs)
    ]
    return ClusterOutcome(name, runs)


def table_header() -> list[str]:
    """The markdown table header of ``table_row``."""
    return [
        "| # | scenario | jobs | faults | lost | double completions | duplicates (by cause) "
        "| unexplained | worker exits | stuck | fault → first completion p50 / max "
        "| fault → every worker p50 / max | new leaders → every worker p50 / max | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]


TABLE_NOTE = (
    "Times per fault, p50 / max over every fault of every run: from the fault to the first "
    "completion after it; from the fault, and from the new leaders' election (after resume() "
    f"for the paused queue), until every worker had completed a job again (target: "
    f"{RESUME_TARGET:.0f} s from the new leaders). Stuck: a worker that completed nothing "
    "within the resume limit."
)


def table_row(outcome: ClusterOutcome) -> str:
    """One markdown table row: one scenario, summed or summarised over its runs."""
    runs = outcome.runs
    reports = [run.report for run in runs]
    causes = sum((Counter(r.by_cause) for r in reports), Counter[str]())
    duplicates = sum(causes.values())
    by_cause = ", ".join(f"{c} {n}" for c, n in causes.items() if n) or "none"
    faults = ", ".join(
        f"{kind} {n}"
        for kind, n in sorted(sum((Counter(r.faults) for r in reports), Counter()).items())
    )
    stuck = sum(len(r.stuck) for run in runs for r in run.resumptions)
    return (
        f"| {outcome.spec.number} | {outcome.spec.title} | "
        f"{sum(len(r.accepted) for r in reports)} | {faults or 'none'} | "
        f"{sum(len(r.lost) for r in reports)} | "
        f"{sum(len(r.double_completions) for r in reports)} | {duplicates} ({by_cause}) | "
        f"{causes.get('unexplained', 0)} | {sum(len(run.exits) for run in runs)} | {stuck} | "
        f"{outcome.figure(lambda r: r.first)} | {outcome.figure(lambda r: r.every)} | "
        f"{outcome.figure(lambda r: r.after_ready)} | {'ok' if outcome.ok else 'FAILED'} |"
    )
