"""The chaos checker on synthetic histories: each verdict, each duplicate cause, JSONL formats."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import pytest

from tests.chaos.checker import (
    Completion,
    Enqueue,
    Execution,
    Fault,
    FinalRecord,
    Report,
    check,
    dead_letters_from_lines,
    enqueues_from_lines,
    faults_from_lines,
    finals_from_lines,
    latency_stats,
    load_jsonl,
    parse_handler_log,
    percentile,
    resumption,
)


def ok(*jobs: str) -> list[Enqueue]:
    """One acknowledged enqueue per job."""
    return [Enqueue(job=j, outcome="ok", t=0.0) for j in jobs]


def run(
    job: str,
    pid: int,
    start: float,
    end: float | None = None,
    *,
    attempt: int = 1,
    token: int = 1,
    fenced: bool = False,
) -> Execution:
    """An execution (end None: the process died before the end line)."""
    return Execution(
        job=job, pid=pid, attempt=attempt, token=token, start=start, end=end, fenced=fenced
    )


def done(job: str, pid: int, t: float) -> Completion:
    """A success-hook call."""
    return Completion(job=job, pid=pid, t=t)


def final(job: str, state: str = "completed", by: int | None = None) -> FinalRecord:
    """A final record (completed_by only for completed ones)."""
    return FinalRecord(job=job, state=state, attempt=1, completed_by=by)


def fault(t: float, kind: Any, pid: int | None = None, node: str | None = None) -> Fault:
    """A nemesis fault."""
    return Fault(t=t, kind=kind, pid=pid, node=node)


def verdict(
    enqueues: Iterable[Enqueue] = (),
    *,
    executions: Iterable[Execution] = (),
    completions: Iterable[Completion] = (),
    faults: Iterable[Fault] = (),
    finals: Iterable[FinalRecord] = (),
    dead_letters: Iterable[str] = (),
    node_grace: float = 10.0,
) -> Report:
    """``check()`` with empty defaults."""
    return check(
        enqueues, executions, completions, faults, finals, set(dead_letters), node_grace=node_grace
    )


class History(TypedDict, total=False):
    """Parts of a history, as verdict()'s keyword arguments."""

    executions: list[Execution]
    completions: list[Completion]
    finals: list[FinalRecord]


def completed_job(job: str, pid: int, start: float) -> History:
    """The history parts of a job that ran once and completed."""
    return {
        "executions": [run(job, pid, start, start + 1)],
        "completions": [done(job, pid, start + 1.1)],
        "finals": [final(job, by=pid)],
    }


def merge(*parts: History) -> History:
    """Concatenate history parts key by key."""
    return {
        "executions": [e for part in parts for e in part.get("executions", [])],
        "completions": [c for part in parts for c in part.get("completions", [])],
        "finals": [f for part in parts for f in part.get("finals", [])],
    }


def causes(report: Report) -> list[str]:
    """The cause of each duplicate, in report order."""
    return [d.cause for d in report.duplicates]


def test_clean_history_is_ok() -> None:
    history = merge(completed_job("a", 10, 1.0), completed_job("b", 11, 2.0))
    report = verdict(ok("a", "b"), **history)
    assert report.ok
    assert report.accepted == ("a", "b")
    assert report.executions == 2
    assert not report.duplicates and report.retries == 0
    assert report.recovery_latency.count == 0 and report.recovery_latency.p99 is None
    assert report.lines()[0] == "ok: True"
    assert report.to_dict()["counts"]["lost"] == 0


def test_lost_jobs_lack_a_terminal_record_and_a_dead_letter() -> None:
    report = verdict(
        ok("waiting", "missing", "dead", "cancelled"),
        finals=[
            final("waiting", "waiting"),
            final("dead", "failed"),
            final("cancelled", "cancelled"),
        ],
        dead_letters=["dead"],
    )
    assert report.lost == ("missing", "waiting")
    assert not report.ok
    assert "  lost: missing, waiting" in report.lines()


def test_a_dead_letter_counts_as_done_even_without_a_record() -> None:
    report = verdict(ok("a"), dead_letters=["a"])
    assert report.lost == ()
    assert report.dead_letter_problems == ("a",)


def test_ids_never_enqueued_are_unexpected() -> None:
    report = verdict(
        ok("a"),
        executions=[run("a", 10, 1, 2), run("ghost", 10, 3, 4)],
        completions=[done("a", 10, 2.1), done("phantom", 10, 5)],
        finals=[final("a", by=10), final("stray", "waiting")],
    )
    assert report.unexpected == ("ghost", "phantom", "stray")
    assert not report.ok


def test_two_completions_are_a_double_completion() -> None:
    report = verdict(
        ok("a"),
        executions=[run("a", 10, 1, 2), run("a", 11, 3, 4)],
        completions=[done("a", 10, 2.1), done("a", 11, 4.1)],
        faults=[fault(2.5, "kill_server")],
        finals=[final("a", by=11)],
    )
    assert report.double_completions == ("a",)
    assert not report.ok


def test_a_record_naming_a_pid_that_did_not_complete_is_a_double_completion() -> None:
    report = verdict(
        ok("a", "b", "c", "d"),
        **merge(
            {"executions": [run("a", 10, 1, 2), run("a", 11, 3, 4, attempt=2)]},
            {"completions": [done("a", 10, 2.1)], "finals": [final("a", by=11)]},
            # no completion (the hook was lost to a kill): completed_by must have run the job
            {"executions": [run("b", 12, 1, 2)], "finals": [final("b", by=99)]},
            {"executions": [run("c", 13, 1, 2)], "finals": [final("c", by=13)]},
            # a completion, but the stored result names no pid
            {"executions": [run("d", 14, 1, 2)], "completions": [done("d", 14, 2.1)]},
            {"finals": [final("d", by=None)]},
        ),
    )
    assert report.double_completions == ("a", "b", "d")
    assert report.to_dict()["problems"]["double_completions"] == ["a", "b", "d"]
    assert not report.ok


def test_a_completion_without_a_completed_record_is_unrecorded() -> None:
    report = verdict(
        ok("a", "b"),
        executions=[run("a", 10, 1, 2), run("b", 10, 3, 4)],
        completions=[done("a", 10, 2.1), done("b", 10, 4.1)],
        finals=[final("a", "waiting"), final("b", by=10)],
    )
    assert report.unrecorded_completions == ("a",)
    assert report.double_completions == ()
    assert not report.ok


def test_a_run_starting_after_the_first_completion_is_completed_again() -> None:
    again = run("a", 11, 5, 6)
    report = verdict(
        ok("a"),
        executions=[run("a", 10, 1, 2), again],
        completions=[done("a", 10, 2.1)],
        faults=[fault(3, "kill_server")],
        finals=[final("a", by=10)],
    )
    assert report.completed_again == (again,)
    assert causes(report) == ["broker_restart"]
    assert report.unexplained == 0 and not report.ok
    assert report.to_dict()["problems"]["completed_again"] == ["a"]


@pytest.mark.parametrize(
    ("faults", "cause"),
    [
        ([fault(1.5, "kill_worker", 10)], "worker_killed"),
        ([fault(1.5, "term_worker", 10)], "worker_killed"),
        ([fault(1.5, "stop_worker", 10), fault(9, "cont_worker", 10)], "worker_stalled"),
        ([fault(1.5, "kill_server", 1), fault(2, "restart_server", 2)], "broker_restart"),
        ([], "unexplained"),
        ([fault(1.5, "kill_worker", 99)], "unexplained"),  # another worker
        ([fault(0.5, "kill_worker", 10)], "unexplained"),  # before the run started
        ([fault(5.5, "kill_worker", 10)], "unexplained"),  # after the next run started
        ([fault(1.5, "cont_worker", 10), fault(1.6, "restart_server")], "unexplained"),
    ],
)
def test_each_duplicate_is_classified_by_the_fault_timeline(
    faults: list[Fault], cause: str
) -> None:
    report = verdict(
        ok("a"),
        executions=[run("a", 10, 1), run("a", 11, 5, 6)],
        faults=faults,
        finals=[final("a", by=11)],
    )
    assert causes(report) == [cause]
    assert report.by_cause[cause] == 1
    assert report.ok == (cause != "unexplained")


@pytest.mark.parametrize(
    ("kinds", "cause"),
    [
        (["kill_server", "stop_worker", "kill_worker"], "worker_killed"),
        (["kill_server", "term_worker", "stop_worker"], "worker_killed"),
        (["stop_worker", "kill_server"], "worker_stalled"),
        (["kill_server", "stop_worker"], "worker_stalled"),
    ],
)
def test_worker_killed_beats_stalled_beats_broker_restart(kinds: list[str], cause: str) -> None:
    timeline = [fault(1.5 + i, kind, 10) for i, kind in enumerate(kinds)]
    report = verdict(ok("a"), executions=[run("a", 10, 1), run("a", 11, 9, 10)], faults=timeline)
    assert causes(report) == [cause]
    assert report.duplicates[0].fault is not None
    assert report.duplicates[0].fault.kind in {"kill_worker", "term_worker", "stop_worker"}


@pytest.mark.parametrize(
    ("faults", "cause"),
    [
        # the outage (fault until the node is back, plus the grace) overlaps the two starts
        ([fault(0.2, "kill_server", 1, "n1"), fault(0.5, "restart_server", 2, "n1")],
         "node_outage"),  # back at 0.5, + grace 1 reaches the first start (1)
        ([fault(0.2, "term_server", 1, "n1"), fault(0.5, "restart_server", 2, "n1")],
         "node_outage"),
        ([fault(0.2, "stop_server", 1, "n1"), fault(0.9, "cont_server", 1, "n1")],
         "node_outage"),
        ([fault(3, "stop_server", 1, "n1"), fault(9, "cont_server", 1, "n1")], "node_outage"),
        ([fault(0.2, "part_server", 1, "n1"), fault(0.9, "heal_server", 1, "n1")],
         "node_outage"),  # cut off from the other nodes, then joined again
        ([fault(3, "term_server", 1, "n1")], "node_outage"),  # between the starts
        ([fault(0.2, "kill_server", 1, "n1"), fault(0.3, "restart_server", 2, "n2")],
         "node_outage"),  # another node came back: n1 is still down
        ([fault(3, "kill_server", 1, "n1")], "broker_restart"),  # kept for a kill in between
        # too early (back and settled before the first start), too late, or no outage at all
        ([fault(-2, "kill_server", 1, "n1"), fault(-0.5, "restart_server", 2, "n1")],
         "unexplained"),  # back at -0.5, + grace 1 ends before the first start (1)
        ([fault(-2, "stop_server", 1, "n1"), fault(-0.1, "cont_server", 1, "n1")],
         "unexplained"),
        ([fault(-2, "part_server", 1, "n1"), fault(-0.1, "heal_server", 1, "n1")],
         "unexplained"),
        ([fault(5.5, "stop_server", 1, "n1")], "unexplained"),  # after the second start
        ([fault(3, "cont_server", 1, "n1"), fault(3.5, "restart_server", 2, "n2")],
         "unexplained"),  # a node coming back is not an outage
    ],
)  # fmt: skip
def test_a_node_outage_explains_duplicates_whose_starts_it_overlaps(
    faults: list[Fault], cause: str
) -> None:
    report = verdict(
        ok("a"),
        executions=[run("a", 10, 1), run("a", 11, 5, 6)],
        faults=faults,
        finals=[final("a", by=11)],
        node_grace=1.0,
    )
    assert causes(report) == [cause]
    assert report.ok == (cause != "unexplained")
    duplicate = report.duplicates[0]
    assert duplicate.latency is None, "only worker faults have a recovery latency"
    if cause != "unexplained":
        assert duplicate.fault is not None and duplicate.fault.kind.endswith("_server")


def test_a_node_outage_far_from_a_duplicate_does_not_explain_it() -> None:
    outage = [fault(0, "kill_server", 1, "n1"), fault(3, "restart_server", 2, "n1")]
    report = verdict(
        ok("a"),
        executions=[run("a", 10, 13.5), run("a", 11, 20, 21)],  # 10.5 s after the restart
        faults=outage,
        finals=[final("a", by=11)],
    )
    assert causes(report) == ["unexplained"]
    assert not report.ok
    near = verdict(
        ok("a"),
        executions=[run("a", 10, 12.5), run("a", 11, 20, 21)],  # within the default grace
        faults=outage,
        finals=[final("a", by=11)],
    )
    assert causes(near) == ["node_outage"]
    assert near.by_cause["node_outage"] == 1


@pytest.mark.parametrize(
    ("start", "other_end"),
    [("stop_server", "restart_server"),  # a SIGSTOP is ended by SIGCONT, not by a restart
     ("part_server", "cont_server")],  # a partition is ended by a heal, not by a SIGCONT
)  # fmt: skip
def test_a_node_outage_is_ended_by_its_own_kind_of_recovery(start: str, other_end: str) -> None:
    report = verdict(
        ok("a"),
        executions=[run("a", 10, 50), run("a", 11, 60, 61)],
        faults=[fault(0, start, 1, "n1"), fault(1, other_end, 1, "n1")],
        finals=[final("a", by=11)],
        node_grace=1.0,
    )
    assert causes(report) == ["node_outage"], "never ended: the outage lasts"


def test_resumption_times_the_first_completion_and_every_workers_return() -> None:
    completions = [
        done("a", 1, 9.0),  # before the fault
        done("b", 1, 10.5),  # a job worker 1 had claimed before the fault
        done("c", 2, 12.0),
        done("d", 1, 17.0),
        done("e", 3, 19.0),
        done("f", 2, 20.0),
    ]
    back = resumption(completions, [1, 2, 3], fault=10.0, ready=16.0)
    assert back.first == 0.5
    assert back.every == 10.0  # worker 2 at 20.0: its completion at 12.0 came before ready
    assert back.after_ready == 4.0
    assert back.stuck == ()
    assert back.last == 2
    stuck = resumption(completions, [1, 2, 3, 4], fault=10.0, ready=16.0)
    assert (stuck.every, stuck.after_ready, stuck.stuck, stuck.last) == (None, None, (4,), None)
    assert stuck.first == 0.5
    assert resumption([], [1], fault=10.0, ready=12.0).first is None
    early = resumption(completions, [2], fault=10.0, ready=5.0)  # ready is never before it
    assert (early.ready, early.every, early.after_ready) == (10.0, 2.0, 2.0)


def test_each_extra_run_is_matched_against_the_run_before_it() -> None:
    report = verdict(
        ok("a"),
        executions=[run("a", 10, 1), run("a", 11, 5), run("a", 12, 9, 10), run("a", 13, 20, 21)],
        faults=[fault(2, "kill_worker", 10), fault(6, "stop_worker", 11)],
    )
    assert causes(report) == ["worker_killed", "worker_stalled", "unexplained"]
    assert [d.previous.pid for d in report.duplicates] == [10, 11, 12]


def test_retries_after_a_normal_end_are_not_duplicates() -> None:
    report = verdict(
        ok("a"),
        executions=[
            run("a", 10, 1, 2, attempt=1),
            run("a", 11, 3, 4, attempt=2),
            run("a", 10, 5, 6, attempt=3),
        ],
        completions=[done("a", 10, 6.1)],
        faults=[fault(2.5, "kill_worker", 10)],  # irrelevant: the run had ended normally
        finals=[final("a", by=10)],
    )
    assert report.retries == 2
    assert report.duplicates == ()
    assert report.ok


@pytest.mark.parametrize(
    "previous",
    [
        run("a", 10, 1, 2, attempt=1, fenced=True),  # lost its lease: not a normal end
        run("a", 10, 1, None, attempt=1),  # died
        run("a", 10, 1, 2, attempt=2),  # ended normally, same attempt
    ],
)
def test_not_a_retry_unless_ended_normally_with_a_later_attempt(previous: Execution) -> None:
    report = verdict(ok("a"), executions=[previous, run("a", 11, 3, 4, attempt=2)])
    assert report.retries == 0
    assert causes(report) == ["unexplained"]


def test_unknown_enqueues_that_executed_are_recovered_and_others_are_not_lost() -> None:
    enqueues = [
        Enqueue(job="landed", outcome="unknown", t=0),
        Enqueue(job="landed", outcome="fail", t=0.5),
        Enqueue(job="vanished", outcome="unknown", t=0),
        Enqueue(job="stuck", outcome="unknown", t=0),
        Enqueue(job="retried", outcome="unknown", t=0),
        Enqueue(job="retried", outcome="ok", t=1),
    ]
    report = verdict(
        enqueues,
        **merge(
            completed_job("landed", 10, 1.0),
            completed_job("retried", 10, 3.0),
            {"executions": [run("stuck", 11, 5)], "finals": [final("stuck", "active")]},
        ),
    )
    assert report.accepted == ("retried",)
    assert report.unknown == ("landed", "stuck", "vanished")
    assert report.recovered == ("landed", "stuck")
    assert report.lost == ("stuck",)  # it landed, ran, and never finished
    assert report.unexpected == ()


def test_dead_letters_must_have_a_failed_record() -> None:
    report = verdict(
        ok("a", "b"),
        finals=[final("a", "failed"), final("b", "completed", by=None)],
        dead_letters=["a", "b"],
    )
    assert report.dead_letter_problems == ("b",)
    assert not report.ok


def test_recovery_latency_is_measured_from_the_worker_fault() -> None:
    jobs = [f"j{i}" for i in range(4)]
    executions, faults = [], []
    for i, (job, delay) in enumerate(zip(jobs, [3.0, 1.0, 4.0, 2.0], strict=True)):
        base = 100.0 * i
        executions += [run(job, i, base), run(job, 50, base + 1 + delay, base + 20)]
        faults.append(fault(base + 1, "kill_worker" if i % 2 else "stop_worker", i))
    executions += [run("k", 7, 900), run("k", 8, 905, 906)]
    faults.append(fault(901, "kill_server"))  # broker restarts get no latency
    report = verdict(ok(*jobs, "k"), executions=executions, faults=faults)
    assert causes(report) == ["worker_stalled", "worker_killed"] * 2 + ["broker_restart"]
    latency = report.recovery_latency
    assert (latency.count, latency.p50, latency.p99, latency.max) == (4, 2.0, 4.0, 4.0)
    assert "n=4 p50 2.00 s, p99 4.00 s, max 4.00 s" in report.lines()[4]


def test_percentiles_use_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 0) == 7.0
    single = latency_stats([7.0])
    assert (single.p50, single.p99, single.max) == (7.0, 7.0, 7.0)
    assert latency_stats([]).max is None


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows as JSON lines (with a blank line, which loading skips)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    return path


def test_jsonl_round_trip(tmp_path: Path) -> None:
    enqueues = write_jsonl(
        tmp_path / "enqueues.jsonl",
        [
            {"job": "a", "outcome": "ok", "t": 0.1},
            {"job": "b", "outcome": "unknown", "t": 0.2},
            {"job": "b", "outcome": "unknown", "t": 0.3},
        ],
    )
    handler = write_jsonl(
        tmp_path / "handler.jsonl",
        [
            {"kind": "start", "job": "a", "pid": 10, "attempt": 1, "token": 5, "t": 1.0},
            {"kind": "start", "job": "b", "pid": 10, "attempt": 1, "token": 6, "t": 1.1},
            {"kind": "ack_ok", "job": "x"},
            {"kind": "start", "job": "a", "pid": 11, "attempt": 1, "token": 9, "t": 4.0},
            {"kind": "end", "job": "a", "pid": 11, "token": 9, "t": 4.5, "fenced": False},
            {"kind": "completed", "job": "a", "pid": 11, "t": 4.6},
            {"kind": "start", "job": "b", "pid": 11, "attempt": 1, "token": 10, "t": 4.7},
            {"kind": "end", "job": "b", "pid": 11, "token": 10, "t": 5, "fenced": False},
            {"kind": "completed", "job": "b", "pid": 11, "t": 5.1},
        ],
    )
    faults = write_jsonl(
        tmp_path / "faults.jsonl",
        [
            {"t": 2.0, "kind": "kill_worker", "pid": 10},
            {"t": 3.0, "kind": "restart_server", "node": "c1-2"},
        ],
    )
    finals = write_jsonl(
        tmp_path / "finals.jsonl",
        [
            {"job": "a", "state": "completed", "attempt": 1, "stalled_count": 1,
             "completed_by": 11},
            {"job": "b", "state": "completed", "completed_by": 11},
        ],
    )  # fmt: skip
    dead = write_jsonl(tmp_path / "dead_letters.jsonl", [])

    executions, completions = parse_handler_log(load_jsonl(handler), ignore_kinds={"ack_ok"})
    report = check(
        enqueues_from_lines(load_jsonl(enqueues)),
        executions,
        completions,
        faults_from_lines(load_jsonl(faults)),
        finals_from_lines(load_jsonl(finals)),
        dead_letters_from_lines(load_jsonl(dead)),
    )
    assert executions[0] == run("a", 10, 1.0, token=5)
    assert executions[2] == run("a", 11, 4.0, 4.5, token=9)
    assert report.ok, report.lines()
    assert report.recovered == ("b",)
    assert causes(report) == ["worker_killed", "worker_killed"]
    assert report.recovery_latency.max == pytest.approx(2.7)
    dumped = json.loads(json.dumps(report.to_dict()))
    assert dumped["ok"] is True
    assert dumped["counts"]["accepted"] == 1 and dumped["counts"]["duplicates"] == 2
    assert dumped["faults"] == {"kill_worker": 1, "restart_server": 1}
    assert dumped["duplicates"][0]["fault"] == {"t": 2.0, "kind": "kill_worker", "pid": 10}
    assert faults_from_lines(load_jsonl(faults))[1].node == "c1-2"


def test_ends_pair_with_the_earliest_open_start_of_their_key() -> None:
    rows = [
        {"kind": "start", "job": "a", "pid": 1, "attempt": 1, "token": 3, "t": 1},
        {"kind": "start", "job": "a", "pid": 1, "attempt": 2, "token": 4, "t": 2},
        {"kind": "end", "job": "a", "pid": 1, "token": 4, "t": 3, "fenced": True},
    ]
    executions, completions = parse_handler_log(rows)
    assert executions == [
        run("a", 1, 1, token=3),
        run("a", 1, 2, 3, attempt=2, token=4, fenced=True),
    ]
    assert completions == []


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"kind": "end", "job": "a", "pid": 1, "token": 1, "t": 1}], "without a start"),
        ([{"kind": "ack_ok", "job": "a"}], "unknown handler log kind"),
        ([{"kind": "start", "job": "a", "pid": 1, "token": 1, "t": 1}], "bad _StartLine"),
    ],
)
def test_malformed_handler_logs_raise(rows: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_handler_log(rows)


def test_malformed_lines_and_records_raise(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"job": "a"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a JSON object"):
        load_jsonl(bad)
    bad.write_text('{"job": "a"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not JSON"):
        load_jsonl(bad)
    with pytest.raises(ValueError, match="bad Enqueue"):
        enqueues_from_lines([{"job": "a", "outcome": "maybe", "t": 1}])
    with pytest.raises(ValueError, match="bad Fault"):
        faults_from_lines([{"t": 1, "kind": "pause_server"}])
    with pytest.raises(ValueError, match="two final records"):
        verdict(finals=[final("a"), final("a")])
