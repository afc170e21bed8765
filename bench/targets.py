"""Issue 14's targets: each measured figure turned into a table row that says whether it holds.

Throughputs are judged against figures of the same run (the raw nats-py floor, the fastest
peer at the same concurrency); CPU, round trips, latency and assets against absolute limits.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from . import assets, many_queues, peers
from .ours import ProcessRun
from .report import Row, rate, ratio_row

ADD_SHARE = 0.50
"""add() one at a time: at least this share of raw ``js.publish``."""
BULK_SHARE = 0.60
"""add_bulk(): at least this share of raw ``publish_async``."""
AHEAD = {True: 1.0, False: 1.3}
"""Processing, by guaranteed_worker: at least this many times the fastest peer."""
SERVER_CPU_US = 60.0
WORKER_CPU_US = 130.0
INSTRUCTIONS_M = 0.7
ROUND_TRIPS = 3.0
LATENCY_MS = {"p50": 1.5, "p99": 5.0}
SCALE_CPU = 0.10
"""Two worker processes: total CPU per job (workers + server) at most this share above one's
(less is no failure)."""
CORES = (4, 8, 16)
INSTRUCTIONS_HINT = "python -m bench.profile --instructions"


def micros(seconds: float) -> str:
    """Seconds shown as microseconds."""
    return f"{seconds * 1e6:.0f} µs"


def enqueue_rows(raw: dict[str, float], one: float, bulk: float, bulk_size: int) -> list[Row]:
    """add() one at a time and add_bulk(), as shares of their raw floors."""
    return [
        ratio_row("add() one at a time", one, "raw js.publish", raw["raw_publish"], ADD_SHARE),
        ratio_row(f"add_bulk() of {bulk_size:,}", bulk, "raw publish_async",
                  raw["raw_publish_async"], BULK_SHARE),
    ]  # fmt: skip


def floor_rows(raw: dict[str, float], bulk_size: int) -> list[Row]:
    """The raw nats-py figures, as context."""
    cpu = f"client CPU {micros(raw['raw_fetch_ack_cpu'])} per message"
    return [
        Row("raw nats-py: js.publish one at a time", rate(raw["raw_publish"]), "context"),
        Row(f"raw nats-py: publish_async of {bulk_size:,}", rate(raw["raw_publish_async"]),
            "context"),
        Row("raw nats-py: fetch(100)+ack", rate(raw["raw_fetch_ack"]), f"context; {cpu}"),
    ]  # fmt: skip


def critical_text(run: ProcessRun) -> str:
    """The round trips on the critical path per job, or n/a."""
    critical = run.critical_per_job
    return "n/a" if critical is None else f"{critical:.1f}"


def process_row(
    run: ProcessRun,
    concurrency: int,
    guaranteed: bool,
    fastest: peers.ProcessFigures | None,
    raw_fetch_ack: float,
) -> Row:
    """One processing run against the fastest peer at the same concurrency (and the floor)."""
    figure = f"process, concurrency {concurrency}, guaranteed_worker={guaranteed}"
    details = (
        f"{run.per_s / raw_fetch_ack:.0%} of raw fetch(100)+ack ({rate(raw_fetch_ack)}); "
        f"CPU per job: worker {micros(run.cpu_per_job)}, server {micros(run.server_cpu_per_job)}; "
        f"requests per job: {run.requests_per_job:.1f}; "
        f"round trips on the critical path: {critical_text(run)}"
    )
    target = f">= {AHEAD[guaranteed]:.1f}x the fastest peer"
    if fastest is None:
        return Row(figure, rate(run.per_s), f"no peer measured; {details}", target)
    factor = run.per_s / fastest.per_s
    peer = f"{peers.peer_name(fastest.setup.peer)} {fastest.setup.label}, {rate(fastest.per_s)}"
    compared = f"{factor:.2f}x the fastest peer ({peer}); {details}"
    return Row(figure, rate(run.per_s), compared, target, factor >= AHEAD[guaranteed])


def server_cpu_row(one: ProcessRun, ten: ProcessRun) -> Row:
    """Server CPU per guaranteed job at concurrency 100 (``one``); at 10 (``ten``) as context."""
    per_job = one.server_cpu_per_job
    return Row("server CPU per guaranteed job, concurrency 100", micros(per_job),
               f"concurrency 10: {micros(ten.server_cpu_per_job)}; nats-server utime+stime "
               "from the resume to the last completion", f"<= {SERVER_CPU_US:.0f} µs",
               per_job * 1e6 <= SERVER_CPU_US)  # fmt: skip


def worker_cpu_row(one: ProcessRun, ten: ProcessRun, instructions: str) -> Row:
    """Worker CPU per guaranteed job at concurrency 100 (``one``); at 10 (``ten``) as context."""
    per_job = one.cpu_per_job
    return Row("worker CPU per guaranteed job, concurrency 100", micros(per_job),
               f"concurrency 10: {micros(ten.cpu_per_job)}; {instructions}",
               f"<= {WORKER_CPU_US:.0f} µs", per_job * 1e6 <= WORKER_CPU_US)  # fmt: skip


def instructions_row(runs: list[float], jobs: int) -> Row:
    """The worker's instructions per guaranteed job, counted under callgrind: the median of
    ``runs`` (a run's count moves by about 2 %: how many jobs a loop turn serves varies)."""
    per_job = statistics.median(runs)
    spread = ", ".join(f"{r / 1e6:.3f}" for r in sorted(runs))
    return Row("worker instructions per guaranteed job, concurrency 100",
               f"{per_job / 1e6:.3f} M",
               f"callgrind, median of {len(runs)} runs of {jobs:,} jobs ({spread} M; "
               f"{INSTRUCTIONS_HINT})",
               f"<= {INSTRUCTIONS_M} M", per_job <= INSTRUCTIONS_M * 1e6)  # fmt: skip


def round_trips_row(run: ProcessRun) -> Row:
    """Requests awaited on a guaranteed job's critical path."""
    critical = run.critical_per_job
    holds = None if critical is None else round(critical, 1) <= ROUND_TRIPS
    return Row("round trips on the critical path per guaranteed job, concurrency 100",
               critical_text(run), f"all requests per job, background ones too: "
               f"{run.requests_per_job:.1f}", f"<= {ROUND_TRIPS:.0f}", holds)  # fmt: skip


def latency_row(cuts: dict[str, float], at: float) -> Row:
    """Enqueue to handler start."""
    p50, p99 = cuts["p50"] * 1000, cuts["p99"] * 1000
    return Row(f"latency add() to handler start at {at:.0f} jobs/s",
               f"p50 {p50:.1f} ms, p99 {p99:.1f} ms", f"{cuts['n']} jobs",
               f"p50 <= {LATENCY_MS['p50']} ms, p99 <= {LATENCY_MS['p99']:.0f} ms",
               p50 <= LATENCY_MS["p50"] and p99 <= LATENCY_MS["p99"])  # fmt: skip


def assets_row(found: assets.Assets) -> Row:
    """A queue's own streams and consumers, for one strategy."""
    return Row(f"JetStream assets of a {found.strategy} queue",
               assets.summary(found), assets.describe(found),
               f"<= {assets.MAX_STREAMS} streams, <= {assets.MAX_CONSUMERS} consumers",
               found.holds)  # fmt: skip


def two_processes_row(one: ProcessRun, two: ProcessRun) -> Row:
    """Two worker processes against one: throughput, and total CPU per job."""
    factor = two.per_s / one.per_s
    cpu = two.total_cpu_per_job / one.total_cpu_per_job - 1
    return Row("process, 2 worker processes", rate(two.per_s),
               f"{factor:.2f}x one process ({rate(one.per_s)}); CPU per job, workers + server: "
               f"{micros(two.total_cpu_per_job)} against {micros(one.total_cpu_per_job)} "
               f"({cpu:+.0%})", f">= 1.0x, CPU per job at most +{SCALE_CPU:.0%}",
               factor >= 1.0 and cpu <= SCALE_CPU)  # fmt: skip


def strategy_row(strategy: str, run: ProcessRun, fifo: ProcessRun) -> Row:
    """A lifo or priority queue's processing (every job moved to the run lane first) against
    fifo's, guaranteed, concurrency 100 (no verdict: the cost of the order)."""
    return Row(f"process, concurrency 100, guaranteed, strategy {strategy} (jobs on 10 lanes)",
               rate(run.per_s), f"{run.per_s / fifo.per_s:.2f}x fifo ({rate(fifo.per_s)}); CPU "
               f"per job: worker {micros(run.cpu_per_job)}, server "
               f"{micros(run.server_cpu_per_job)}; requests per job: "
               f"{run.requests_per_job:.1f}")  # fmt: skip


def capacity_row(two: ProcessRun) -> Row:
    """What more cores would carry, from the measured CPU per job (no verdict)."""
    per_job = two.total_cpu_per_job
    carried = ", ".join(f"{cores} cores {rate(cores / per_job)}" for cores in CORES)
    return Row("what more cores would carry, guaranteed", carried,
               f"cores / (worker {micros(two.cpu_per_job)} + server "
               f"{micros(two.server_cpu_per_job)} per job, from the 2-process run)")  # fmt: skip


def peer_rows(
    peer: str, enqueue_per_s: float, best: dict[int, list[peers.ProcessFigures]]
) -> list[Row]:
    """One peer's enqueue rate and, at each concurrency, its best configuration (no verdict)."""
    name = peers.peer_name(peer)
    rows = [Row(f"{name}: enqueue one at a time", rate(enqueue_per_s))]
    for concurrency, runs in best.items():
        tried = ", ".join(f"{run.setup.label} {rate(run.per_s)}" for run in runs)
        rows.append(Row(f"{name}: process, concurrency {concurrency}", rate(runs[0].per_s),
                        f"best configuration: {runs[0].setup.label} (tried: {tried}); worker "
                        f"peak RSS {runs[0].peak_rss_mb:.0f} MB"))  # fmt: skip
    return rows


def fastest_peer(
    best: dict[str, dict[int, list[peers.ProcessFigures]]], concurrency: int
) -> peers.ProcessFigures | None:
    """The fastest peer run at ``concurrency``, if any peer was measured."""
    runs = [by_concurrency[concurrency][0] for by_concurrency in best.values()]
    return max(runs, key=lambda run: run.per_s, default=None)


def scale_rows(where: str, footprints: Sequence[many_queues.Footprint]) -> list[Row]:
    """Queues on one server or a cluster: per-queue figures; the most against the fewest."""
    fewest = footprints[0]
    rows = []
    for f in footprints:
        row = Row(f"{f.queues} queues on {where}", many_queues.describe(f),
                  many_queues.describe_total(f))  # fmt: skip
        if f is not fewest:
            ratios = many_queues.ratios(fewest, f)
            against = ", ".join(f"{key} {value:.2f}x" for key, value in ratios.items())
            row = Row(row.figure, row.value, f"{row.compared}; per queue against "
                      f"{fewest.queues} queues: {against}",
                      f"per queue within {many_queues.WITHIN:.0f}x of {fewest.queues} queues",
                      many_queues.within(fewest, f))  # fmt: skip
        rows.append(row)
    return rows


def worker_rss_row(run: ProcessRun) -> Row:
    """The worker's peak RSS at concurrency 100."""
    rss_mb = run.workers[0]["maxrss_kb"] / 1024
    return Row("worker peak RSS, concurrency 100", f"{rss_mb:.0f} MB", "", "< 80 MB", rss_mb < 80)


def idle_row(idle_cpu: float) -> Row:
    """A worker's CPU on an empty queue."""
    return Row("idle worker CPU", f"{idle_cpu:.2%} of a core", "", "< 1 %", idle_cpu < 0.01)
