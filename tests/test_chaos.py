"""Crash safety, proven by killing things (issue 3): the chaos scenarios, counted by the checker.

CI runs them at a reduced size; ``OQRON_CHAOS_FULL=1`` (or ``python -m tests.chaos --full``)
runs the full sizes quoted in the README.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from .chaos.harness import Outcome, run, scenarios

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]
FULL = os.environ.get("OQRON_CHAOS_FULL") == "1"


async def run_scenario(name: str, tmp_path: Path, strategy: str = "fifo") -> Outcome:
    scenario = dataclasses.replace(scenarios(FULL)[name], strategy=strategy)
    outcome = await run(scenario, tmp_path / f"{name}-{strategy}", seed=1)
    report = outcome.report
    assert report.ok, "\n".join(report.lines())
    assert not report.lost
    assert not report.double_completions
    assert report.unexplained == 0
    assert len(report.accepted) == outcome.scenario.jobs
    assert outcome.index_drift == {}, "the state index agrees with the records"
    return outcome


async def test_s1_under_the_priority_strategy_loses_nothing(tmp_path: Path) -> None:
    """Every job moves from its lane to the run lane before its claim (lifo does the same)."""
    outcome = await run_scenario("S1", tmp_path, strategy="priority")
    assert outcome.report.faults.get("kill_worker", 0) >= 5


async def test_s1_random_worker_kills_lose_nothing(tmp_path: Path) -> None:
    outcome = await run_scenario("S1", tmp_path)
    report = outcome.report
    assert report.faults.get("kill_worker", 0) >= 5
    assert all(d.cause == "worker_killed" for d in report.duplicates)
    scenario = outcome.scenario
    ack_wait = scenario.lock_ttl + scenario.heartbeat + 1.0
    assert report.recovery_latency.max is None or report.recovery_latency.max <= ack_wait + 2.0
    assert outcome.drain_seconds <= 2 * ack_wait + 5.0, "all done within the stated bound"


async def test_s2_server_restarts_lose_nothing_and_rerun_no_completed_job(tmp_path: Path) -> None:
    outcome = await run_scenario("S2", tmp_path)
    report = outcome.report
    assert report.faults.get("kill_server") == 2
    assert report.faults.get("restart_server") == 2
    assert not report.completed_again, "a completed job ran again"


async def test_s3_a_stopped_workers_late_results_are_rejected(tmp_path: Path) -> None:
    outcome = await run_scenario("S3", tmp_path)
    report = outcome.report
    stalled = report.duplicates_of("worker_stalled")
    assert stalled, "the stopped worker held jobs that were taken over"
    for duplicate in stalled:
        assert duplicate.previous.end is not None, "the stopped worker finished its job late"
        assert duplicate.previous.pid != duplicate.execution.pid
    assert not report.completed_again
    assert not report.double_completions, "each job completed exactly once, by the new holder"


async def test_s10_heartbeats_keep_long_jobs_from_redelivery(tmp_path: Path) -> None:
    outcome = await run_scenario("S10", tmp_path)
    scenario = outcome.scenario
    assert scenario.work[0] > scenario.lock_ttl + scenario.heartbeat + 1.0, "longer than ack_wait"
    assert outcome.redelivered == 0, "a heartbeating job was redelivered"
    assert not outcome.report.duplicates
    assert outcome.report.executions == scenario.jobs
