"""oqron_nats: durable job queues for Python, with NATS JetStream as the whole backend.

from oqron_nats import queue

async def send_email(ctx):
    ...

emails = queue("email-sender", send_email, concurrency=5)
async with emails:
    await emails.add({"to": "a@example.com"})
"""

from ._version import __version__
from .bulk import AddOutcome, BulkResult
from .client import Client
from .core.aesgcm import AesGcmCodec
from .core.config import (
    DeadLetter,
    Hooks,
    LagMonitor,
    OrphanSweep,
    QueueOptions,
    RateLimit,
    Reconciliation,
    RetryPolicy,
    StallScanner,
    Throttle,
)
from .core.credentials import TLS, Credentials
from .core.encryption import Codec, Sealed
from .core.errors import (
    CodecError,
    ConfigError,
    ConnectionFailed,
    ConsumerConflict,
    CorruptRecord,
    DecryptionFailed,
    EnqueueError,
    InvalidInput,
    InvalidName,
    InvalidOption,
    InvalidState,
    JetStreamError,
    JobNotFound,
    MissingKey,
    NotEncrypted,
    OqronError,
    PayloadError,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    QueueNotFound,
    QueuePaused,
    ServerVersionError,
    Unavailable,
)
from .core.job import TERMINAL_STATES, Job, JobFailure, JobState
from .core.middleware import Middleware
from .core.schedules import Schedule
from .observe.events import Event
from .observe.prometheus import serve_prometheus
from .ops.runner import run_main
from .queue import Queue, Skipped, queue
from .runtime.context import JobContext, Signal
from .worker import Worker, worker

__all__ = [
    "TERMINAL_STATES",
    "TLS",
    "AddOutcome",
    "AesGcmCodec",
    "BulkResult",
    "Client",
    "Codec",
    "CodecError",
    "ConfigError",
    "ConnectionFailed",
    "ConsumerConflict",
    "CorruptRecord",
    "Credentials",
    "DeadLetter",
    "DecryptionFailed",
    "EnqueueError",
    "Event",
    "Hooks",
    "InvalidInput",
    "InvalidName",
    "InvalidOption",
    "InvalidState",
    "JetStreamError",
    "Job",
    "JobContext",
    "JobFailure",
    "JobNotFound",
    "JobState",
    "LagMonitor",
    "Middleware",
    "MissingKey",
    "NotEncrypted",
    "OqronError",
    "OrphanSweep",
    "PayloadError",
    "PayloadTooLarge",
    "PermissionDenied",
    "Queue",
    "QueueFull",
    "QueueNotFound",
    "QueueOptions",
    "QueuePaused",
    "RateLimit",
    "Reconciliation",
    "RetryPolicy",
    "Schedule",
    "Sealed",
    "ServerVersionError",
    "Signal",
    "Skipped",
    "StallScanner",
    "Throttle",
    "Unavailable",
    "Worker",
    "__version__",
    "queue",
    "run_main",
    "serve_prometheus",
    "worker",
]
