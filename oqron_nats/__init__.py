"""oqron_nats: durable job queues for Python, with NATS JetStream as the whole backend.

from oqron_nats import queue

async def send_email(ctx):
    ...

emails = queue("email-sender", send_email, concurrency=5)
async with emails:
    await emails.add({"to": "a@example.com"})
"""

from ._version import __version__
from .aesgcm import AesGcmCodec
from .bulk import AddOutcome, BulkResult
from .client import Client
from .config import (
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
from .context import JobContext, Signal
from .credentials import TLS, Credentials
from .encryption import Codec, Sealed
from .errors import (
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
from .events import Event
from .job import TERMINAL_STATES, Job, JobFailure, JobState
from .middleware import Middleware
from .prometheus import serve_prometheus
from .queue import Queue, Skipped, queue
from .runner import run_main
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
