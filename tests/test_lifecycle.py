"""A job's life: the legal changes of state are declared once (``job.TRANSITIONS``), every
change goes through ``moved()``, which refuses any other, and the operator's changes are
written by ``JobStore.transition()``: read, decide, compare-and-set, and decide again when
another writer won."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from oqron_nats import Client, InvalidState, JobState, queue
from oqron_nats.core.job import TERMINAL_STATES, TRANSITIONS, Job, moved

RawJob = Job[msgspec.Raw]


def job_in(state: JobState) -> RawJob:
    return Job(id="j1", queue="q", state=state, data=msgspec.Raw(b"1"),
               created_at=datetime.now(UTC), correlation_id="c")  # fmt: skip


def test_every_state_has_its_moves_declared() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for state in TERMINAL_STATES:  # finished: only an operator's retry or rerun
        assert TRANSITIONS[state] == {JobState.WAITING}
    unfinished = set(JobState) - TERMINAL_STATES
    assert all(JobState.CANCELLED in TRANSITIONS[state] for state in unfinished)
    assert all(JobState.ACTIVE not in TRANSITIONS[state] for state in TERMINAL_STATES)


@pytest.mark.parametrize(("was", "to"), list(itertools.product(JobState, JobState)))
def test_a_move_is_made_only_if_the_table_allows_it(was: JobState, to: JobState) -> None:
    job = job_in(was)
    if to in TRANSITIONS[was]:
        now = moved(job, to, "why")
        assert now.state == to and now.timeline[-1].state == to and now.timeline[-1].reason == "why"
    else:
        with pytest.raises(InvalidState, match=f"cannot move from {was} to {to}"):
            moved(job, to, "why")
    assert job.state == was and job.timeline == [], "the record itself is never changed"


async def test_racing_operator_changes_each_decide_on_what_the_job_is_now(
    client: Client,
) -> None:
    """cancel() and promote() race on delayed jobs: every job ends cancelled, with one
    'cancelled' entry, and a promote either came first or found it cancelled (InvalidState)."""
    q = queue("racing", client=client)
    jobs = [await q.add({"n": n}, delay=timedelta(hours=1)) for n in range(20)]
    outcomes = await asyncio.gather(
        *(call for job in jobs for call in (q.promote(job.id), q.cancel(job.id))),
        return_exceptions=True,
    )
    pairs = zip(outcomes[::2], outcomes[1::2], strict=True)
    for job, (promoted, cancelled) in zip(jobs, pairs, strict=True):
        assert cancelled is True
        assert promoted is None or isinstance(promoted, InvalidState), promoted
        stored = await q.get_job(job.id)
        assert stored is not None and stored.state == JobState.CANCELLED
        reasons = [entry.reason for entry in stored.timeline]
        assert reasons.count("cancelled") == 1
        assert reasons.count("promoted") == (1 if promoted is None else 0)


async def test_an_operator_change_the_table_refuses_leaves_the_job_as_it_was(
    client: Client,
) -> None:
    q = queue("refused", client=client)
    job = await q.add({"n": 1})
    with pytest.raises(InvalidState):
        await q.promote(job.id)  # waiting, not delayed
    with pytest.raises(InvalidState):
        await q.retry(job.id)  # not failed
    stored = await q.get_job(job.id)
    assert stored is not None and stored.state == JobState.WAITING
    assert [entry.reason for entry in stored.timeline] == ["added"]
