"""The built-in middlewares (tracing, the user's callbacks, background parts) and the chain that
runs a queue's middlewares in order (see :mod:`oqron_nats.core.middleware`). The job counters and
durations are not a middleware: the execution records them where each thing happens (a hook
run through the chain cost a job 2 % of the worker's instructions, with nothing listening)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ..core.job import Job, JobFailure
from ..core.middleware import HOOKS, Middleware
from ..observe.log import logger
from ..observe.tracing import mark_failed

if TYPE_CHECKING:
    from ..core.config import QueueConfig
    from ..core.encryption import Sealer
    from ..observe.tracing import Tracing
    from ..storage.backend import Backend

log = logger(__name__)

NOTHING: AbstractAsyncContextManager[object] = nullcontext()
"""An around_process that does nothing (reusable)."""


class Spans(Middleware):
    """The CONSUMER span ``process <queue>`` of every attempt, child of the publisher's context
    (see :mod:`oqron_nats.observe.tracing`); a failed attempt marks it failed."""

    def __init__(self, tracing: Tracing, queue: str, group: str, *, detail: bool) -> None:
        self.tracing = tracing
        self.queue = queue
        self.group = group
        """The consumer group the span names (``messaging.consumer.group.name``)."""
        self.detail = detail
        """Whether the span may hold the error's message (not on an encrypted queue)."""

    def around_process(
        self, job: Job[Any], headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[object]:
        """The attempt's span; the context the message (else the record) carries is its parent.
        Nothing when there is neither a span to record nor a context to pass on."""
        carrier = headers or job.trace
        if not self.tracing.processes(carrier):
            return NOTHING
        return self._span(job, carrier)

    @asynccontextmanager
    async def _span(self, job: Job[Any], carrier: Mapping[str, str]) -> AsyncIterator[None]:
        with self.tracing.processing(
            queue=self.queue,
            job_id=job.id,
            correlation_id=job.correlation_id,
            attempt=job.attempt,
            consumer=self.group,
            carrier=carrier,
        ) as span:
            try:
                yield
            except Exception as exc:  # kept inside the span: only mark_failed describes it
                mark_failed(span, exc, detail=self.detail)


class Background(Protocol):
    """A part that runs in the background while the worker runs."""

    def start(self) -> None:
        """Start running."""

    async def stop(self) -> None:
        """Stop, within a bound."""


class WhileRunning(Middleware):
    """Runs a background part of the worker (its presence key, its lag monitor) from the
    worker's start to its stop."""

    def __init__(self, part: Background) -> None:
        self.part = part

    def on_worker_start(self, queue: str) -> None:
        """Start the part."""
        self.part.start()

    async def on_worker_stop(self, queue: str) -> None:
        """Stop the part."""
        await self.part.stop()


class UserHooks(Middleware):
    """The queue's ``hooks=`` (on_success, on_fail) and ``dead_letter=`` (on_dead) callbacks;
    a plain function runs in a thread."""

    def __init__(self, config: QueueConfig) -> None:
        self.config = config

    @staticmethod
    def wanted(config: QueueConfig) -> bool:
        """Whether the queue has any such callback."""
        hooks = config.hooks
        return bool(hooks.on_success or hooks.on_fail or config.dead_letter.on_dead)

    async def on_complete(self, job: Job[Any], result: Any) -> None:
        """``hooks.on_success(job, result)``."""
        await _call(self.config.hooks.on_success, job, result)

    async def on_fail(self, job: Job[Any], failure: JobFailure) -> None:
        """``dead_letter.on_dead(job)`` where dead letters are on, then ``hooks.on_fail``."""
        if self.config.dead_letter.enabled:
            await _call(self.config.dead_letter.on_dead, job)
        await _call(self.config.hooks.on_fail, job, failure)


async def _call(hook: Callable[..., Any] | None, job: Job[Any], *args: Any) -> None:
    """Call a user callback; one that raises is logged."""
    if hook is None:
        return
    try:
        if inspect.iscoroutinefunction(hook):
            await hook(job, *args)
            return
        outcome = await asyncio.to_thread(hook, job, *args)  # a plain hook may block
        if inspect.isawaitable(outcome):
            await outcome
    except Exception:
        log.exception("hook failed", hook=getattr(hook, "__qualname__", repr(hook)), job_id=job.id)


def chain_of(
    config: QueueConfig, backend: Backend, *parts: Middleware, group: str, sealer: Sealer | None
) -> Chain:
    """The queue's middlewares: tracing, the user's callbacks, the worker's ``parts`` (presence,
    lag monitor), then ``middleware=``. ``group`` is the consumer the worker pulls
    from, ``sealer`` the queue's (error text stays out of spans unless it is inactive)."""
    detail = sealer is not None and not sealer.active
    built_in: list[Middleware] = [Spans(backend.tracing, config.name, group, detail=detail)]
    if UserHooks.wanted(config):
        built_in.append(UserHooks(config))
    return Chain([*built_in, *parts, *config.middleware])


class Chain:
    """A queue's middlewares, in order; each hook calls only those that override it."""

    def __init__(self, middlewares: Sequence[Middleware]) -> None:
        self.middlewares = tuple(middlewares)
        self._hooks: dict[str, tuple[Callable[..., Any], ...]] = {
            name: tuple(
                getattr(m, name)
                for m in self.middlewares
                if getattr(type(m), name) is not getattr(Middleware, name)
            )
            for name in HOOKS
        }

    def wants(self, hook: str) -> bool:
        """Whether some middleware has ``hook`` (else there is nothing to run, or to build)."""
        return bool(self._hooks[hook])

    async def run(self, hook: str, *args: Any, job_id: str | None = None) -> None:
        """Call ``hook`` on every middleware that has it; one that raises is logged."""
        for call in self._hooks[hook]:
            try:
                outcome = call(*args)
                if outcome is not None:
                    await outcome
            except Exception:
                log.exception("middleware failed", hook=hook, middleware=_name(call),
                              job_id=job_id)  # fmt: skip

    async def around(
        self, job: Job[Any], headers: Mapping[str, str], attempt: Callable[[], Awaitable[Ran]]
    ) -> Ran:
        """Await ``attempt`` inside every middleware's ``around_process``, the first outermost;
        its error is raised in each at the exit. What they do changes nothing: one that raises
        is logged, one that swallows the error does not change what ``attempt`` returned. One
        that returns :data:`NOTHING` is not entered (the tracing span with nothing to record)."""
        entered: list[tuple[Callable[..., Any], AbstractAsyncContextManager[object]]] = []
        for call in self._hooks["around_process"]:
            try:
                manager: AbstractAsyncContextManager[object] = call(job, headers)
                if manager is NOTHING:
                    continue
                await manager.__aenter__()
            except Exception:
                _around_failed(call, job.id)
            else:
                entered.append((call, manager))
        if not entered:
            return await attempt()
        try:
            ran = await attempt()
        except BaseException as exc:  # this task is cancelled: they see it, and it goes on
            await _exit(entered, exc, job.id)
            raise
        await _exit(entered, ran.error, job.id)
        return ran


async def _exit(
    entered: list[tuple[Callable[..., Any], AbstractAsyncContextManager[object]]],
    error: BaseException | None,
    job_id: str,
) -> None:
    """Exit the entered ``around_process`` managers, innermost first, each told of ``error``."""
    for call, manager in reversed(entered):
        try:
            if error is None:
                await manager.__aexit__(None, None, None)
            else:
                await manager.__aexit__(type(error), error, error.__traceback__)
        except Exception as exc:
            if exc is not error:  # the error raised again is not the middleware's
                _around_failed(call, job_id)


def _around_failed(call: Callable[..., Any], job_id: str) -> None:
    log.exception("middleware failed", hook="around_process", middleware=_name(call),
                  job_id=job_id)  # fmt: skip


class Ran(NamedTuple):
    """What a handler's run came to: the payload (decoded, if it could be), then the handler's
    result, or the exception that ended the run."""

    value: Any
    result: Any = None
    error: Exception | None = None


def _name(call: Callable[..., Any]) -> str:
    owner = getattr(call, "__self__", None)
    return type(owner).__qualname__ if owner is not None else repr(call)
