"""Middleware: cross-cutting behaviour around a worker's jobs, in dramatiq's style.

A middleware overrides the hooks it needs; every hook of :class:`Middleware` does nothing. A
hook may be a plain ``def`` or an ``async def``. A queue runs its built-in middlewares (tracing,
the user's ``hooks=`` and ``dead_letter=`` callbacks, the worker's presence key and its lag
monitor) and then those given with ``middleware=[...]``, in that order; the job counters and
durations (OpenTelemetry metrics) are recorded by the worker before them. A hook that raises
is logged and does not change the job: its state is decided and stored by the worker, never by
a hook (retention, which writes the record, is a step of settling it, not a middleware).

When each hook runs, in a worker process:

``on_worker_start(queue)`` / ``on_worker_stop(queue)``
    once the consumers are bound / once the worker has stopped.
``before_process(job)``
    the job was claimed (its record says active) and its handler is about to run.
``around_process(job, headers)``
    wraps the handler's run: a plain method that returns an async context manager (an
    ``async def`` decorated with ``contextlib.asynccontextmanager``), entered after
    ``before_process`` and exited before ``after_process``. The payload is decoded and the
    handler runs inside it, in the context it entered: context variables it sets (a span made
    current, say) are seen by the handler. ``headers`` are the message's headers (trace
    context, correlation id). The handler's exception is raised at the exit (an attempt stopped
    by its signal exits without one); whatever the context manager does then (re-raise,
    swallow, raise another), the job's outcome is the handler's. The middlewares' context
    managers nest in the chain's order, the first outermost: the built-in tracing span wraps
    the others.
``after_process(job, seconds, outcome)``
    the handler returned, raised or was stopped; ``outcome`` is None for a success, else the
    exception's type name, or ``cancelled``, ``shutdown``, ``lease_lost``.
``on_complete(job, result)``
    the completed record is stored and the message acked.
``on_retry(job, failure)``
    the failed attempt is stored as a retry (its next run is scheduled, or, if that publish
    failed, comes with the message's redelivery).
``on_fail(job, failure)``
    the job failed for good (stored, dead letter written where enabled, acked).
``on_dead_letter(job)``
    the job's dead letter was written (before ``on_fail``), with its data as the dead letter
    stores it.
``on_stall(job)``
    a job whose worker died or lost its lease was recorded stalled by the worker claiming it.

``before_process``, ``around_process``, ``after_process`` and ``on_stall`` get the record as
claimed (its data still encoded); ``on_complete``, ``on_retry`` and ``on_fail`` get the job with
its decoded data, as ``hooks=`` callbacks do (secret fields are not masked there: a middleware
that logs data should mask them itself, see :class:`~oqron_nats.observe.logconfig.Redactor`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

from .job import Job, JobFailure

HookResult = Awaitable[None] | None
HOOKS = (
    "on_worker_start",
    "on_worker_stop",
    "before_process",
    "around_process",
    "after_process",
    "on_complete",
    "on_retry",
    "on_fail",
    "on_dead_letter",
    "on_stall",
)


class Middleware:
    """Base class of middlewares: override the hooks you need (plain or ``async def``)."""

    def on_worker_start(self, queue: str) -> HookResult:
        """The worker's consumers are bound."""

    def on_worker_stop(self, queue: str) -> HookResult:
        """The worker has stopped."""

    def before_process(self, job: Job[Any]) -> HookResult:
        """The job was claimed; its handler runs next."""

    def around_process(
        self, job: Job[Any], headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[object]:
        """An async context manager around the handler's run (this one does nothing)."""
        return nullcontext()

    def after_process(self, job: Job[Any], seconds: float, outcome: str | None) -> HookResult:
        """The handler ended: ``outcome`` None for a success, else why it did not succeed."""

    def on_complete(self, job: Job[Any], result: Any) -> HookResult:
        """The job completed (stored and acked)."""

    def on_retry(self, job: Job[Any], failure: JobFailure) -> HookResult:
        """The attempt failed and the next one is scheduled."""

    def on_fail(self, job: Job[Any], failure: JobFailure) -> HookResult:
        """The job failed for good."""

    def on_dead_letter(self, job: Job[Any]) -> HookResult:
        """The job's dead letter was written."""

    def on_stall(self, job: Job[Any]) -> HookResult:
        """A job was found stalled (its worker died or lost the lease)."""
