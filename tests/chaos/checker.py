"""A pure, deterministic checker for chaos-test histories (notes §5, after Jepsen's queue checker).

The harness collects the history, converts it with the ``*_from_lines`` helpers and calls
``check()``, which returns a ``Report``. Nothing here touches NATS, a clock or a file, except
``load_jsonl()``, which reads the one file it is given.

JSON line formats (one JSON object per line; ``t`` is wall-clock seconds, ``time.time()``;
unknown extra fields are ignored, missing or mistyped fields raise ``ValueError``)::

    enqueues.jsonl   one line per add() attempt by the producer:
        {"job": "j1", "outcome": "ok", "t": 1700000000.1}
        outcome: "ok" (PubAck), "unknown" (timed out, may have landed), "fail" (error).
        An id may appear on several lines (retries); it is accepted if any line is "ok".

    handler log      lines the test handler appends (one O_APPEND write per line):
        {"kind": "start", "job": "j1", "pid": 4242, "attempt": 1, "token": 17, "t": ...}
        {"kind": "end", "job": "j1", "pid": 4242, "token": 17, "t": ..., "fenced": false}
        {"kind": "completed", "job": "j1", "pid": 4242, "t": ...}
        "start" is written when the handler begins, "end" when it returns or raises
        ("fenced": true if it saw its lease lost first), "completed" by the success hook,
        which runs after the terminal write and the ack. An "end" is paired with the
        earliest open "start" of the same (job, pid, token); a "start" without an "end"
        means the process died. ``pid`` must be the worker process's pid (the one the
        nemesis signals), and ``token`` the attempt's fencing token.

    faults.jsonl     one line per injected fault, logged right after the signal is sent:
        {"t": ..., "kind": "kill_worker", "pid": 4242}
        {"t": ..., "kind": "kill_server", "pid": 77, "node": "c1-2"}
        kind: kill_worker, stop_worker, cont_worker, term_worker (pid = worker pid),
        kill_server (SIGKILL), term_server (graceful stop), restart_server (started again),
        stop_server (SIGSTOP), cont_server (SIGCONT), part_server (cut off from the other
        nodes), heal_server (joined again) (pid = server pid, or null).
        node names a cluster node (its server_name); null for the single server.

    finals.jsonl     the job records read from KV after the drain, one per job id:
        {"job": "j1", "state": "completed", "attempt": 1, "stalled_count": 0,
         "completed_by": 4242}
        state is a JobState value; completed_by is the pid the stored result names
        (null if not completed); attempt and stalled_count default to 0.

    dead_letters.jsonl   one line per dead-letter stream entry: {"job": "j1"}

Duplicate executions are explained by the fault timeline (``classify``): a worker kill or
SIGSTOP of the previous run's own worker between the two starts, a server kill between them
(``broker_restart``), or a node outage that overlapped the time between the two starts
(``node_outage``): the outage lasts from a node's kill, graceful stop, SIGSTOP or partition
until it is started again, continued or joined again, plus ``node_grace`` seconds for what it
set off (leader elections, expired leases, redeliveries) to play out. Anything else is
``unexplained``.

``resumption()`` measures how the workers came back after a fault: from the completions, when
the first job completed after it, and when every worker had completed one again.

Percentiles use the nearest-rank method, so they are always observed values.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import msgspec

from oqron_nats.core.job import TERMINAL_STATES

Outcome = Literal["ok", "unknown", "fail"]
FaultKind = Literal[
    "kill_worker", "stop_worker", "cont_worker", "term_worker",
    "kill_server", "term_server", "restart_server", "stop_server", "cont_server",
    "part_server", "heal_server",
]  # fmt: skip
Cause = Literal["worker_killed", "worker_stalled", "broker_restart", "node_outage", "unexplained"]
CAUSES: tuple[Cause, ...] = (
    "worker_killed", "worker_stalled", "broker_restart", "node_outage", "unexplained"
)  # fmt: skip
"""Duplicate causes, in classification priority order (``unexplained`` last)."""
NODE_GRACE = 10.0
"""Seconds after a node is back during which its outage still explains a duplicate."""

_KILLS = frozenset({"kill_worker", "term_worker"})
_OUTAGE_ENDS: dict[str, str] = {
    "kill_server": "restart_server", "term_server": "restart_server", "stop_server": "cont_server",
    "part_server": "heal_server",
}  # fmt: skip
"""The fault kinds that start a node outage, and the kind that ends each."""
_S = TypeVar("_S", bound=msgspec.Struct)


class Enqueue(msgspec.Struct, frozen=True, kw_only=True):
    """One add() attempt by the producer."""

    job: str
    outcome: Outcome
    t: float


class Execution(msgspec.Struct, frozen=True, kw_only=True):
    """One run of the handler: a start line and, unless the process died, its end line."""

    job: str
    pid: int
    attempt: int
    token: int
    start: float
    end: float | None = None
    fenced: bool = False


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """One call of the success hook (after the terminal write and the ack)."""

    job: str
    pid: int
    t: float


class Fault(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One fault injected by the nemesis."""

    t: float
    kind: FaultKind
    pid: int | None = None
    node: str | None = None


class FinalRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A job record as read from KV at the end of the run."""

    job: str
    state: str
    attempt: int = 0
    stalled_count: int = 0
    completed_by: int | None = None


class Duplicate(msgspec.Struct, frozen=True, kw_only=True):
    """An extra execution, the execution before it, and the fault that explains it."""

    execution: Execution
    previous: Execution
    cause: Cause
    fault: Fault | None = None
    latency: float | None = None
    """Seconds from a worker fault to this execution's start (killed or stalled only)."""


class Resumption(msgspec.Struct, frozen=True, kw_only=True):
    """How the workers came back after one fault (see ``resumption``); seconds, None if never."""

    fault: float
    """When the fault struck (wall clock)."""
    ready: float
    """From when the workers could resume: new leaders elected, a node continued, a queue
    resumed; at least ``fault``."""
    first: float | None
    """From the fault to the first completion after it, by any worker."""
    every: float | None
    """From the fault until every worker had completed a job after ``ready``."""
    after_ready: float | None
    """From ``ready`` until every worker had completed a job after it."""
    stuck: tuple[int, ...]
    """The workers (pids) with no completion after ``ready``."""
    last: int | None = None
    """The worker (pid) that came back last, when every worker did."""


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Nearest-rank percentiles of a set of durations, in seconds (None when empty)."""

    count: int
    p50: float | None
    p99: float | None
    max: float | None


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """The checker's verdict on one history."""

    accepted: tuple[str, ...]
    unknown: tuple[str, ...]
    recovered: tuple[str, ...]
    lost: tuple[str, ...]
    unexpected: tuple[str, ...]
    double_completions: tuple[str, ...]
    unrecorded_completions: tuple[str, ...]
    """Jobs with a Completion whose final record is missing or not "completed"."""
    completed_again: tuple[Execution, ...]
    duplicates: tuple[Duplicate, ...]
    retries: int
    dead_letter_problems: tuple[str, ...]
    recovery_latency: Latency
    executions: int
    faults: dict[str, int]

    @property
    def by_cause(self) -> dict[str, int]:
        """The number of duplicates per cause, every cause present."""
        counts = Counter(d.cause for d in self.duplicates)
        return {cause: counts[cause] for cause in CAUSES}

    @property
    def unexplained(self) -> int:
        """How many duplicates no fault explains."""
        return self.by_cause["unexplained"]

    @property
    def ok(self) -> bool:
        """Whether every invariant with a target of zero holds."""
        problems = (
            self.lost,
            self.unexpected,
            self.double_completions,
            self.unrecorded_completions,
            self.completed_again,
            self.dead_letter_problems,
        )
        return self.unexplained == 0 and not any(problems)

    def lines(self) -> list[str]:
        """A few human-readable lines, naming up to ten ids per problem."""
        causes = ", ".join(f"{c} {n}" for c, n in self.by_cause.items())
        out = [
            f"ok: {self.ok}",
            f"jobs: {len(self.accepted)} accepted, {len(self.unknown)} unknown"
            f" ({len(self.recovered)} recovered), {self.executions} executions",
            f"lost {len(self.lost)}, unexpected {len(self.unexpected)}, double completions"
            f" {len(self.double_completions)}, unrecorded completions"
            f" {len(self.unrecorded_completions)}, completed again {len(self.completed_again)},"
            f" dead-letter problems {len(self.dead_letter_problems)}",
            f"duplicates {len(self.duplicates)} ({causes}); retries {self.retries}",
            f"recovery latency: {_latency_text(self.recovery_latency)}",
        ]
        out.extend(_problem_lines(self.problem_ids()))
        return out

    def problem_ids(self) -> dict[str, list[str]]:
        """The ids behind each problem count, sorted."""
        return {
            "lost": list(self.lost),
            "unexpected": list(self.unexpected),
            "double_completions": list(self.double_completions),
            "unrecorded_completions": list(self.unrecorded_completions),
            "completed_again": sorted({e.job for e in self.completed_again}),
            "unexplained": sorted({d.execution.job for d in self.duplicates_of("unexplained")}),
            "dead_letter_problems": list(self.dead_letter_problems),
        }

    def duplicates_of(self, cause: Cause) -> list[Duplicate]:
        """The duplicates with one cause."""
        return [d for d in self.duplicates if d.cause == cause]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: counts, latency, and the details (accepted ids only counted)."""
        counts = {
            "accepted": len(self.accepted),
            "unknown": len(self.unknown),
            "recovered": len(self.recovered),
            "executions": self.executions,
            "lost": len(self.lost),
            "unexpected": len(self.unexpected),
            "double_completions": len(self.double_completions),
            "unrecorded_completions": len(self.unrecorded_completions),
            "completed_again": len(self.completed_again),
            "duplicates": len(self.duplicates),
            "unexplained": self.unexplained,
            "retries": self.retries,
            "dead_letter_problems": len(self.dead_letter_problems),
        }
        return {
            "ok": self.ok,
            "counts": counts,
            "duplicates_by_cause": self.by_cause,
            "recovery_latency": msgspec.to_builtins(self.recovery_latency),
            "faults": dict(self.faults),
            "unknown": list(self.unknown),
            "recovered": list(self.recovered),
            "problems": self.problem_ids(),
            "completed_again": msgspec.to_builtins(self.completed_again),
            "duplicates": msgspec.to_builtins(self.duplicates),
        }


# ---------------------------------------------------------------------------------------------
# Loading and converting


def load_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, skipping blank lines."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                rows.append(_parse_line(line, f"{path}:{number}"))
    return rows


def _parse_line(line: str, where: str) -> dict[str, Any]:
    """One line as a JSON object, or ValueError naming where it came from."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: not a JSON object")
    return value


def _convert(row: Mapping[str, Any], kind: type[_S]) -> _S:
    """One dict as a struct, or ValueError saying what is wrong."""
    try:
        return msgspec.convert(row, kind)
    except msgspec.ValidationError as exc:
        raise ValueError(f"bad {kind.__name__} line {dict(row)!r}: {exc}") from None


def enqueues_from_lines(rows: Iterable[Mapping[str, Any]]) -> list[Enqueue]:
    """Enqueue attempts from the producer's lines."""
    return [_convert(row, Enqueue) for row in rows]


def faults_from_lines(rows: Iterable[Mapping[str, Any]]) -> list[Fault]:
    """Faults from the nemesis's lines."""
    return [_convert(row, Fault) for row in rows]


def finals_from_lines(rows: Iterable[Mapping[str, Any]]) -> list[FinalRecord]:
    """Final job records from the harness's KV dump."""
    return [_convert(row, FinalRecord) for row in rows]


def dead_letters_from_lines(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """Job ids from the dead-letter dump."""
    return {_convert(row, _JobLine).job for row in rows}


class _JobLine(msgspec.Struct, frozen=True):
    """A line that names a job."""

    job: str


class _StartLine(msgspec.Struct, frozen=True):
    """A handler's "start" line."""

    job: str
    pid: int
    attempt: int
    token: int
    t: float


class _EndLine(msgspec.Struct, frozen=True):
    """A handler's "end" line."""

    job: str
    pid: int
    token: int
    t: float
    fenced: bool = False


def parse_handler_log(
    rows: Iterable[Mapping[str, Any]], ignore_kinds: Collection[str] = ()
) -> tuple[list[Execution], list[Completion]]:
    """Executions (start and end lines paired) and completions from the handler's lines.

    Lines of a kind in ``ignore_kinds`` (e.g. ack logs) are skipped; any other kind raises.
    """
    starts: list[_StartLine] = []
    ends: dict[int, _EndLine] = {}
    open_starts: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    completions: list[Completion] = []
    for row in rows:
        kind = row.get("kind")
        if kind == "start":
            start = _convert(row, _StartLine)
            open_starts[start.job, start.pid, start.token].append(len(starts))
            starts.append(start)
        elif kind == "end":
            end = _convert(row, _EndLine)
            ends[_pop_open_start(open_starts, end)] = end
        elif kind == "completed":
            completions.append(_convert(row, Completion))
        elif kind not in ignore_kinds:
            raise ValueError(f"unknown handler log kind {kind!r} in {dict(row)!r}")
    return [_execution(s, ends.get(i)) for i, s in enumerate(starts)], completions


def _pop_open_start(open_starts: dict[tuple[str, int, int], list[int]], end: _EndLine) -> int:
    """The index of the earliest unended start matching an end line."""
    pending = open_starts.get((end.job, end.pid, end.token))
    if not pending:
        raise ValueError(f"end line without a start: {end!r}")
    return pending.pop(0)


def _execution(start: _StartLine, end: _EndLine | None) -> Execution:
    """An Execution from its start line and, if any, its end line."""
    return Execution(
        job=start.job,
        pid=start.pid,
        attempt=start.attempt,
        token=start.token,
        start=start.t,
        end=None if end is None else end.t,
        fenced=end is not None and end.fenced,
    )


# ---------------------------------------------------------------------------------------------
# Checking


def check(  # noqa: PLR0917 - the harness's contract: one argument per history part
    enqueues: Iterable[Enqueue],
    executions: Iterable[Execution],
    completions: Iterable[Completion],
    faults: Iterable[Fault],
    finals: Iterable[FinalRecord],
    dead_letters: Collection[str],
    *,
    node_grace: float = NODE_GRACE,
) -> Report:
    """Check a history against the delivery promise and classify every extra execution."""
    enqueues, executions, completions = list(enqueues), list(executions), list(completions)
    timeline = sorted(faults, key=lambda f: (f.t, f.kind, f.pid or 0))
    final_by_job = _index_finals(finals)
    runs = _group_executions(executions)
    done = _group(completions)
    accepted = {e.job for e in enqueues if e.outcome == "ok"}
    unknown = {e.job for e in enqueues} - accepted
    recovered = unknown & runs.keys()
    extras = [d for job in sorted(runs) for d in _extras(runs[job], timeline, node_grace)]
    duplicates = tuple(d for d in extras if d is not None)
    return Report(
        accepted=tuple(sorted(accepted)),
        unknown=tuple(sorted(unknown)),
        recovered=tuple(sorted(recovered)),
        lost=_lost(accepted | recovered, final_by_job, dead_letters),
        unexpected=_unexpected(accepted | unknown, runs, done, final_by_job),
        double_completions=_double_completions(done, runs, final_by_job),
        unrecorded_completions=_unrecorded(done, final_by_job),
        completed_again=_completed_again(runs, done),
        duplicates=duplicates,
        retries=len(extras) - len(duplicates),
        dead_letter_problems=_dead_letter_problems(dead_letters, final_by_job),
        recovery_latency=latency_stats([d.latency for d in duplicates if d.latency is not None]),
        executions=len(executions),
        faults=dict(sorted(Counter(f.kind for f in timeline).items())),
    )


def _index_finals(finals: Iterable[FinalRecord]) -> dict[str, FinalRecord]:
    """Final records by job id; two records for one id is a harness bug."""
    by_job: dict[str, FinalRecord] = {}
    for record in finals:
        if record.job in by_job:
            raise ValueError(f"two final records for job {record.job!r}")
        by_job[record.job] = record
    return by_job


def _group(completions: Iterable[Completion]) -> dict[str, list[Completion]]:
    """Completions by job id, in time order."""
    by_job: dict[str, list[Completion]] = defaultdict(list)
    for c in sorted(completions, key=lambda c: (c.t, c.pid)):
        by_job[c.job].append(c)
    return dict(by_job)


def _group_executions(executions: Iterable[Execution]) -> dict[str, list[Execution]]:
    """Executions by job id, in start order (ties broken by token, then pid)."""
    by_job: dict[str, list[Execution]] = defaultdict(list)
    for e in sorted(executions, key=lambda e: (e.start, e.token, e.pid)):
        by_job[e.job].append(e)
    return dict(by_job)


def _lost(
    expected: set[str], finals: Mapping[str, FinalRecord], dead_letters: Collection[str]
) -> tuple[str, ...]:
    """Jobs that should have finished but have no terminal record and no dead letter."""
    return tuple(
        job
        for job in sorted(expected)
        if not _terminal(finals.get(job)) and job not in dead_letters
    )


def _terminal(record: FinalRecord | None) -> bool:
    """Whether a record exists and is completed, failed or cancelled."""
    return record is not None and record.state in TERMINAL_STATES


def _unexpected(
    attempted: set[str],
    runs: Mapping[str, object],
    done: Mapping[str, object],
    finals: Mapping[str, object],
) -> tuple[str, ...]:
    """Ids that executed, completed or have a record but were never enqueued."""
    seen = set(runs) | set(done) | set(finals)
    return tuple(sorted(seen - attempted))


def _double_completions(
    done: Mapping[str, list[Completion]],
    runs: Mapping[str, list[Execution]],
    finals: Mapping[str, FinalRecord],
) -> tuple[str, ...]:
    """Jobs completed twice, or whose record names a pid that did not complete them."""
    jobs = {job for job, cs in done.items() if len(cs) > 1}
    for job, record in finals.items():
        if record.state == "completed" and not _rightful(record, done.get(job), runs.get(job)):
            jobs.add(job)
    return tuple(sorted(jobs))


def _rightful(
    record: FinalRecord, completions: list[Completion] | None, runs: list[Execution] | None
) -> bool:
    """Whether ``completed_by`` is a completing pid (or, with no completion, an executing one)."""
    if completions:
        return record.completed_by in {c.pid for c in completions}
    return record.completed_by is None or record.completed_by in {e.pid for e in runs or ()}


def _unrecorded(
    done: Mapping[str, list[Completion]], finals: Mapping[str, FinalRecord]
) -> tuple[str, ...]:
    """Jobs whose success hook ran but whose final record is not completed."""
    return tuple(
        sorted(job for job in done if (r := finals.get(job)) is None or r.state != "completed")
    )


def _completed_again(
    runs: Mapping[str, list[Execution]], done: Mapping[str, list[Completion]]
) -> tuple[Execution, ...]:
    """Executions that started after their job's first completion."""
    return tuple(
        e for job in sorted(runs) if job in done for e in runs[job] if e.start > done[job][0].t
    )


def _dead_letter_problems(
    dead_letters: Collection[str], finals: Mapping[str, FinalRecord]
) -> tuple[str, ...]:
    """Dead-lettered jobs whose final record is missing or not failed."""
    return tuple(
        sorted(j for j in dead_letters if (r := finals.get(j)) is None or r.state != "failed")
    )


# ---------------------------------------------------------------------------------------------
# Duplicate classification


def _extras(
    runs: Sequence[Execution], timeline: Sequence[Fault], node_grace: float
) -> list[Duplicate | None]:
    """Each execution after a job's first, classified (None for an ordinary retry)."""
    return [classify(prev, cur, timeline, node_grace) for prev, cur in itertools.pairwise(runs)]


def classify(
    previous: Execution,
    current: Execution,
    timeline: Sequence[Fault],
    node_grace: float = NODE_GRACE,
) -> Duplicate | None:
    """Why ``current`` ran after ``previous``: None for a retry, else a classified Duplicate."""
    if _is_retry(previous, current):
        return None
    for cause in CAUSES[:-1]:
        if cause == "node_outage":
            fault = _overlapping_outage(previous, current, timeline, node_grace)
        else:
            fault = _first_fault(cause, previous, current, timeline)
        if fault is not None:
            worker_fault = cause in ("worker_killed", "worker_stalled")
            latency = current.start - fault.t if worker_fault else None
            return Duplicate(
                execution=current, previous=previous, cause=cause, fault=fault, latency=latency
            )
    return Duplicate(execution=current, previous=previous, cause="unexplained")


def _is_retry(previous: Execution, current: Execution) -> bool:
    """Whether the previous run ended normally and this one is a later attempt."""
    ended = previous.end is not None and not previous.fenced
    return ended and current.attempt > previous.attempt


def _first_fault(
    cause: Cause, previous: Execution, current: Execution, timeline: Sequence[Fault]
) -> Fault | None:
    """The earliest fault of a cause between the two starts that hit the previous run."""
    for fault in timeline:
        if previous.start <= fault.t <= current.start and _fault_matches(cause, fault, previous):
            return fault
    return None


def _overlapping_outage(
    previous: Execution, current: Execution, timeline: Sequence[Fault], grace: float
) -> Fault | None:
    """The earliest node fault whose outage (until the node is back, plus ``grace``) overlaps
    the time from the previous run's start to this one's."""
    for index, fault in enumerate(timeline):
        end_kind = _OUTAGE_ENDS.get(fault.kind)
        if end_kind is None or fault.t > current.start:
            continue
        back = next(
            (f.t for f in timeline[index + 1 :] if f.kind == end_kind and f.node == fault.node),
            math.inf,
        )
        if previous.start <= back + grace:
            return fault
    return None


def _fault_matches(cause: Cause, fault: Fault, previous: Execution) -> bool:
    """Whether a fault is of a cause and, for worker faults, hit the previous run's pid."""
    if cause == "broker_restart":
        return fault.kind == "kill_server"
    kinds = _KILLS if cause == "worker_killed" else {"stop_worker"}
    return fault.kind in kinds and fault.pid == previous.pid


# ---------------------------------------------------------------------------------------------
# Resumption after a fault


def resumption(
    completions: Iterable[Completion], pids: Iterable[int], fault: float, ready: float
) -> Resumption:
    """How the workers ``pids`` came back after a fault at ``fault``: the first completion after
    it (any worker), and each worker's first completion at or after ``ready`` (when the fault's
    effects had passed: a completion before that may be a job the worker had already claimed)."""
    ready = max(ready, fault)
    ordered = sorted(completions, key=lambda c: c.t)
    first = next((c.t for c in ordered if c.t >= fault), None)
    again: dict[int, float] = {}
    for c in ordered:
        if c.t >= ready:
            again.setdefault(c.pid, c.t)
    wanted = sorted(set(pids))
    stuck = tuple(pid for pid in wanted if pid not in again)
    last = None if stuck or not wanted else max(wanted, key=lambda pid: again[pid])
    back = None if last is None else again[last]
    return Resumption(
        fault=fault,
        ready=ready,
        first=None if first is None else first - fault,
        every=None if back is None else back - fault,
        after_ready=None if back is None else back - ready,
        stuck=stuck,
        last=last,
    )


# ---------------------------------------------------------------------------------------------
# Latency


def latency_stats(values: Iterable[float]) -> Latency:
    """Count, nearest-rank p50 and p99, and max of some durations."""
    ordered = sorted(values)
    if not ordered:
        return Latency(count=0, p50=None, p99=None, max=None)
    return Latency(
        count=len(ordered),
        p50=percentile(ordered, 50),
        p99=percentile(ordered, 99),
        max=ordered[-1],
    )


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of sorted, non-empty values."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _latency_text(latency: Latency) -> str:
    """A latency summary for the report lines."""
    if latency.count == 0:
        return "none"
    return (
        f"n={latency.count} p50 {latency.p50:.2f} s,"
        f" p99 {latency.p99:.2f} s, max {latency.max:.2f} s"
    )


def _problem_lines(problems: Mapping[str, list[str]], limit: int = 10) -> list[str]:
    """One line per non-empty problem, naming up to ``limit`` ids."""
    lines = []
    for name, ids in problems.items():
        if ids:
            more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
            lines.append(f"  {name}: {', '.join(ids[:limit])}{more}")
    return lines
