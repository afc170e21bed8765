"""The only package that imports nats-py: connection, KV, raw pulls and provisioning."""

from nats.aio.msg import Msg

from ..core.errors import JetStreamError
from .conn import CasConflict, Nats, PubAck, StoredMsg, StreamLimits, StreamState
from .kv import Bucket, Entry, stream_of
from .provision import ConsumerSpec, ensure_bucket, ensure_consumer, ensure_stream
from .pull import Delivery, Puller
from .retry import jittered

__all__ = [
    "Bucket",
    "CasConflict",
    "ConsumerSpec",
    "Delivery",
    "Entry",
    "JetStreamError",
    "Msg",
    "Nats",
    "PubAck",
    "Puller",
    "StoredMsg",
    "StreamLimits",
    "StreamState",
    "ensure_bucket",
    "ensure_consumer",
    "ensure_stream",
    "jittered",
    "stream_of",
]
