"""The JetStream API's replies, and the errors they carry, typed.

Every reply is decoded as one of the :class:`Reply` structs; one that carries an API error raises
it as :class:`~oqron_nats.core.errors.JetStreamError` with the server's ``err_code``
(:class:`CasConflict` for a failed compare-and-set). :func:`transient_error` tells the replies
of a cluster that refused for the moment (an election), which the request path asks again
(see :mod:`.conn`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

import msgspec
from nats.aio.msg import Msg

from ..core.errors import JetStreamError
from .retry import SUSPECTS, TRANSIENT_ERR_CODES

CAS_ERROR_CODES = frozenset({10071})
"""Server error code of a failed compare-and-set. (A replicated stream answers 10164 while an
earlier write to the same key is being replicated: that is asked again, see
:data:`.retry.TRANSIENT_ERR_CODES`; the answer after it is a success or this one.)"""
NOT_FOUND = frozenset({10014, 10059})
"""Consumer not found, stream not found."""
ALREADY_EXISTS = 10058
"""Stream name already in use (created meanwhile, or with another configuration)."""
NO_MESSAGE = frozenset({10037, 10043, 10057})
"""No message found (a get), sequence not found (a delete of a message deleted meanwhile)."""

S = TypeVar("S", bound="Reply")


class CasConflict(JetStreamError):
    """A compare-and-set write found another revision than the one it expected.

    ``after_timeout`` is set when an earlier try of the same write timed out: that try may have
    landed, so the conflict may be with our own write.
    """

    after_timeout = False


class ApiError(msgspec.Struct):
    """The error an API reply carries."""

    code: int = 0
    err_code: int = 0
    description: str = ""


class Reply(msgspec.Struct):
    """Any JetStream API reply: its error, if it is one."""

    error: ApiError | None = None


class PubAck(Reply):
    """The server's answer to a JetStream publish."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    val: str | None = None
    """The new total, for a counter stream."""


class Success(Reply):
    """The reply of a purge or a delete."""

    success: bool = False
    purged: int = 0
    """How many messages a purge removed."""


class StreamState(msgspec.Struct):
    """The message counts and sequence range of a stream."""

    messages: int = 0
    bytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    last_ts: str = ""
    """When the last message was stored (RFC 3339, the server's clock)."""
    subjects: dict[str, int] | None = None


class StreamLimits(msgspec.Struct):
    """What a stream's configuration says about discarding messages."""

    discard: str = "old"
    max_msgs: int = -1
    max_bytes: int = -1
    max_age: int = 0
    """Nanoseconds (0: none)."""
    max_msgs_per_subject: int = -1

    @property
    def drops_old(self) -> list[str]:
        """The limits under which the server removes old messages to make room (discard old)."""
        if self.discard != "old":
            return []
        limits = {
            "max_msgs": self.max_msgs,
            "max_bytes": self.max_bytes,
            "max_age": self.max_age,
            "max_msgs_per_subject": self.max_msgs_per_subject,
        }
        return [f"{name}={value}" for name, value in limits.items() if value > 0]


class StreamInfo(Reply):
    """A stream's state and configuration (a page of its subjects, if asked for)."""

    state: StreamState = msgspec.field(default_factory=StreamState)
    config: StreamLimits = msgspec.field(default_factory=StreamLimits)
    total: int = 0


class PeerInfo(msgspec.Struct):
    """A replica of a stream as its leader sees it."""

    name: str = ""
    lag: int = 0
    """Log entries the leader has committed that the replica has not stored yet."""
    offline: bool = False


class ClusterInfo(msgspec.Struct):
    """A replicated stream's leader and its other replicas."""

    leader: str = ""
    replicas: list[PeerInfo] | None = None


class ReplicaCount(msgspec.Struct):
    """How many replicas a stream's configuration asks for."""

    num_replicas: int = 1


class StreamReplicas(Reply):
    """A stream's last sequence, its leader and how far behind each other replica is."""

    state: StreamState = msgspec.field(default_factory=StreamState)
    config: ReplicaCount = msgspec.field(default_factory=ReplicaCount)
    cluster: ClusterInfo | None = None


class StreamNames(Reply):
    """A page of stream names."""

    streams: list[str] | None = None
    total: int = 0


class ConsumerNames(Reply):
    """A page of a stream's consumer names."""

    consumers: list[str] | None = None
    total: int = 0


class RawMessage(msgspec.Struct):
    """A stored message as the leader sends it (headers and data in base64)."""

    subject: str = ""
    seq: int = 0
    hdrs: str | None = None
    data: str | None = None


class MsgGet(Reply):
    """The leader's reply to a message get."""

    message: RawMessage | None = None


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_any_reply = msgspec.json.Decoder(Reply)


def decoded(data: bytes, kind: type[S]) -> S:
    """An API reply of ``kind``; the API error it carries is raised as an exception."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    reply: S = decoder.decode(data)
    if reply.error is not None:
        raise api_error(reply.error)
    return reply


def api_error(err: ApiError) -> JetStreamError:
    """The exception for an API error payload."""
    cls = CasConflict if err.err_code in CAS_ERROR_CODES else JetStreamError
    return cls(err.code, err.err_code, err.description)


def transient_error(data: bytes) -> str | None:
    """The description of a JetStream error to ask again about (an election), else None."""
    if b'"error"' not in data:  # the common case, without decoding
        return None
    try:
        error = _any_reply.decode(data).error
    except msgspec.DecodeError:
        return None
    if error is None or error.err_code not in TRANSIENT_ERR_CODES:
        return None
    suspect = SUSPECTS.get(error.err_code)
    return f"{error.description} (err_code {error.err_code}{f': {suspect}?' if suspect else ''})"


class StoredMsg(msgspec.Struct, frozen=True):
    """A message read straight from a stream (direct get)."""

    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


def parse_time(stamp: str) -> datetime | None:
    """An RFC 3339 server timestamp (nanoseconds cut to microseconds); None if there is none
    or it is not one."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    micros = (fraction + "000000")[:6]
    try:
        return datetime.fromisoformat(f"{head}.{micros}+00:00") if stamp else None
    except ValueError:
        return None


def stored_msg(msg: Msg) -> StoredMsg | None:
    """Translate a direct-get reply; None for 'no message'."""
    headers = dict(msg.headers or {})
    status = headers.get("Status")
    if status == "404":
        return None
    if status:
        raise JetStreamError(int(status), 0, headers.get("Description", "direct get failed"))
    return StoredMsg(
        subject=headers.get("Nats-Subject", ""),
        seq=int(headers.get("Nats-Sequence", "0")),
        data=msg.data,
        headers=headers,
    )
