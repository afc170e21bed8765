"""What every execution of one consumer shares (:class:`Runtime`), built once by the consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..core.codec import PayloadCodec
from ..core.config import QueueConfig
from ..core.encryption import Sealer
from ..core.errors import CodecError, PayloadError
from ..storage.backend import Backend
from ..storage.store import RawJob
from .context import JobContext
from .fixed_delay import FixedDelay
from .late_entry import LIST_AFTER
from .middlewares import Chain
from .ratelimit import ClusterRateLimit
from .retention import Retainer


@dataclass(frozen=True, slots=True)
class Runtime:
    """What every execution of one consumer shares."""

    config: QueueConfig
    backend: Backend
    codec: PayloadCodec[Any]
    handler: Callable[[JobContext[Any]], Any]
    worker_id: str
    executor: ThreadPoolExecutor | None
    limiter: ClusterRateLimit | None = None
    middleware: Chain = field(default_factory=lambda: Chain([]))
    """Tracing, the user's callbacks and middlewares (see :mod:`oqron_nats.core.middleware`)."""
    sealer: Sealer = field(init=False)
    """Seals and opens the queue's stored values (the codec's, set by the queue)."""
    loop: asyncio.AbstractEventLoop = field(init=False)
    """The event loop the consumer runs on (built on it): asked for once, not per job (Python
    3.11's ``get_running_loop()`` makes a ``getpid`` system call each time)."""
    first_beats: FixedDelay = field(init=False)
    """The running jobs' first heartbeats, ``heartbeat`` seconds after their handlers start."""
    retention: Retainer = field(init=False)
    """The retention step of every settle (:mod:`.retention`)."""
    late_entries: FixedDelay = field(init=False)
    """The claims' late index entries (:mod:`.late_entry`)."""

    def __post_init__(self) -> None:
        if self.codec.sealer is None:  # never write a result unsealed by a wiring mistake
            raise RuntimeError("the queue's sealer was not set before consuming")
        object.__setattr__(self, "sealer", self.codec.sealer)
        loop = asyncio.get_running_loop()
        object.__setattr__(self, "loop", loop)
        object.__setattr__(self, "first_beats", FixedDelay(self.config.heartbeat, loop))
        object.__setattr__(self, "late_entries", FixedDelay(LIST_AFTER, loop))
        object.__setattr__(self, "retention", Retainer(self.backend, self.config))

    @property
    def is_async(self) -> bool:
        """Whether the handler is a coroutine function (else it runs in a thread)."""
        return self.executor is None

    def decoded(self, job: RawJob) -> Any:
        """The payload, decrypted and decoded (CodecError or PayloadError if it cannot be)."""
        return self.codec.decode(self.sealer.open(job.id, "data", job.data))

    def payload(self, job: RawJob) -> Any:
        """The decoded payload for hooks, or the raw bytes if it does not decode."""
        try:
            return self.decoded(job)
        except (PayloadError, CodecError):
            return job.data
