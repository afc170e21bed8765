"""Errors raised by oqron_nats: one root, a shallow tree.

    OqronError
    ├── ConfigError              a queue or worker was configured wrongly (raised when defined)
    ├── InvalidInput             bad input to add()/get_job(); nothing was stored or published
    │   ├── InvalidName          a queue name, namespace or job id that is not a safe subject token
    │   ├── InvalidOption        an add() option of the wrong type or out of range
    │   └── PayloadError         a payload (or result) that does not match its type or encode
    │       └── PayloadTooLarge  an encoded payload (or result) over the size limit
    ├── Unavailable              NATS did not answer within the retry deadline (every server down,
    │   │                        a cluster electing leaders for longer than the deadline), or
    │   │                        cannot (a server without JetStream); trying again is safe
    │   └── ConnectionFailed     no NATS server could be reached when first connecting
    ├── PermissionDenied         the NATS user may not publish to (or subscribe to) a subject the
    │                            operation needs (see ``oqron permissions``); the subject is named
    ├── JetStreamError           the JetStream API refused a request for good (not a passing
    │                            election); carries the server's code, err_code and description
    ├── ServerVersionError       the NATS server is too old for the features oqron_nats needs
    ├── QueuePaused              add() on a paused queue whose disabled_behavior is "reject"
    ├── QueueFull                add() on a queue that holds max_jobs unfinished jobs
    ├── JobNotFound              no job with that id in the queue
    ├── QueueNotFound            the queue's streams do not exist, and this user may not create
    │                            them (a publisher: an admin or a worker provisions a queue)
    ├── CorruptRecord            a stored record that does not decode (written by something else,
    │                            or damaged); listings show it as such and go on
    ├── CodecError               an encrypted payload, result or error cannot be opened (a job
    │   │                        failing with one is failed for good, never run)
    │   ├── MissingKey           sealed with a codec or key id this process does not hold
    │   ├── DecryptionFailed     the ciphertext does not authenticate: tampered, moved from
    │   │                        another job, or another key under the same id
    │   └── NotEncrypted         stored in plaintext where the queue's codec requires encryption
    ├── InvalidState             the job's state does not allow the operation (e.g. promote a
    │                            job that is not delayed)
    ├── ConsumerConflict         the queue is already consumed in another way (strategy mismatch,
    │                            or a second consumer of the same queue on one client)
    └── EnqueueError             the job could not be published; ``outcome_unknown`` tells whether
                                 it may still have landed (retrying the same job_id is always safe)

Control flow inside handlers is not an error: use ``ctx.discard()`` to fail a job for good.
"""

from __future__ import annotations


class OqronError(Exception):
    """Root of every error raised by oqron_nats."""


class ConfigError(OqronError, ValueError):
    """A queue or worker was configured wrongly."""


class InvalidInput(OqronError, ValueError):
    """Bad input: nothing was stored or published."""


class InvalidName(InvalidInput):
    """A name or id that is not a safe NATS subject token."""


class InvalidOption(InvalidInput):
    """An add() option of the wrong type or out of range."""


class PayloadError(InvalidInput):
    """The payload does not match the queue's payload type or cannot be encoded."""


class PayloadTooLarge(PayloadError):
    """The encoded payload is larger than the queue's limit."""

    def __init__(self, size: int, limit: int, what: str = "payload") -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class Unavailable(OqronError):
    """NATS did not answer within the retry deadline, or cannot answer (no JetStream).

    Every request is asked again while a cluster elects leaders, a node restarts or the
    connection fails over, and this is raised only once the deadline has passed.
    ``outcome_unknown`` is set when a write may still have landed (a try timed out).
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class ConnectionFailed(Unavailable):
    """No NATS server answered the first connection (later losses are reconnected forever)."""


class PermissionDenied(OqronError):
    """The NATS user's permissions do not allow a subject this operation needs."""

    def __init__(self, message: str, *, subject: str) -> None:
        super().__init__(message)
        self.subject = subject


class JetStreamError(OqronError):
    """The JetStream API refused a request (an answer, not a passing election)."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


class ServerVersionError(OqronError):
    """The NATS server is older than oqron_nats needs."""


class QueuePaused(OqronError):
    """The queue is paused and refuses new jobs (disabled_behavior="reject"); nothing was stored."""


class QueueFull(OqronError):
    """The queue holds ``max_jobs`` unfinished jobs; nothing was stored."""


class QueueNotFound(OqronError, LookupError):
    """The queue is not provisioned, and this NATS user may not create it."""


class JobNotFound(OqronError, LookupError):
    """There is no job with that id in the queue."""


class CorruptRecord(OqronError):
    """A stored job record (or dead letter) that does not decode.

    ``key`` names it, ``size`` is its length in bytes and ``reason`` the decode error; the
    stored bytes themselves are never repeated (they may hold anything).
    """

    def __init__(self, key: str, size: int, reason: str) -> None:
        super().__init__(f"record {key} ({size} bytes) does not decode: {reason}")
        self.key = key
        self.size = size
        self.reason = reason


class CodecError(OqronError):
    """An encrypted value (payload, result or error) cannot be opened, or a value sealed.

    Its message names the codec and key id, never a key or the plaintext. A worker fails a job
    whose payload raises one for good, without running the handler (it is not transient).
    """


class MissingKey(CodecError):
    """The value is sealed with a codec or key id that this process does not hold."""


class DecryptionFailed(CodecError):
    """The ciphertext does not authenticate: tampered with, moved from another job or field, or
    sealed with another key under the same key id."""


class NotEncrypted(CodecError):
    """A plaintext value where the queue's codec requires encryption (``accept_plaintext``)."""


class InvalidState(OqronError):
    """The job's state does not allow the operation."""


class ConsumerConflict(OqronError):
    """The queue is already consumed in a way that conflicts with this consumer."""


class EnqueueError(OqronError):
    """The job's message could not be published.

    The job record exists; adding the same ``job_id`` again is safe and finishes the enqueue.
    """

    def __init__(self, message: str, *, job_id: str, outcome_unknown: bool) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.outcome_unknown = outcome_unknown
