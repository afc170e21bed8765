"""The benchmark suite runs end to end (small sizes); it asserts no timings, only that every
figure is measured and judged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import Row, ratio_row, render

ROOT = Path(__file__).resolve().parent.parent

PROCESS = [
    f"process, concurrency {c}, guaranteed_worker={g}" for c in (10, 100) for g in (True, False)
]
ORDERED = ("priority", "lifo")
"""The strategies whose processing is measured against fifo's (no target)."""
CRITICAL = "round trips on the critical path per guaranteed job, concurrency 100"
CONTEXT = [
    "what more cores would carry, guaranteed",
    *(f"process, concurrency 100, guaranteed, strategy {s} (jobs on 10 lanes)" for s in ORDERED),
    "raw nats-py: js.publish one at a time",
    "raw nats-py: publish_async of 1,000",
    "raw nats-py: fetch(100)+ack",
]
FIGURES = [
    "add() one at a time",
    "add_bulk() of 1,000",
    *PROCESS,
    "server CPU per guaranteed job, concurrency 100",
    "worker CPU per guaranteed job, concurrency 100",
    CRITICAL,
    "process, 2 worker processes",
    "worker peak RSS, concurrency 100",
    "latency add() to handler start at 500 jobs/s",
    "idle worker CPU",
    "JetStream assets of a fifo queue",
    "JetStream assets of a lifo queue",
    "JetStream assets of a priority queue",
    *CONTEXT,
]
UNJUDGED = {*PROCESS, *CONTEXT}
"""Without peers the processing rows have nothing to be judged against; context has no target."""


@pytest.mark.timeout(300)
def test_a_quick_run_prints_every_figure_with_a_verdict() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-peers"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    header, _, table = run.stdout.partition("\n\n")
    assert "nats-server" in header and "nats-py" in header and "CPUs" in header
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    assert sorted(rows) == sorted(FIGURES)
    for figure, line in rows.items():
        verdict = line.split("|")[-2].strip()
        if figure in UNJUDGED:
            assert not verdict, f"{figure} is judged without its reference: {line}"
        else:
            assert verdict in ("yes", "**no**"), f"{figure} has no verdict: {line}"


def test_a_ratio_row_compares_with_the_floor() -> None:
    row = ratio_row("add_bulk", 4_000.0, "raw publish_async", 10_000.0, 0.40)
    assert row == Row("add_bulk", "4,000/s", "40% of raw publish_async (10,000/s)", ">= 40%", True)
    assert not ratio_row("x", 3_999.0, "floor", 10_000.0, 0.40).holds
    assert render([row]).splitlines()[2] == (
        "| add_bulk | 4,000/s | 40% of raw publish_async (10,000/s) | >= 40% | yes |"
    )
