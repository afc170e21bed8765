"""The only package that imports nats-py: connection, KV, raw pulls and provisioning."""

from .conn import CasConflict, JetStreamError, Nats, NoStream, PubAck, StoredMsg, StreamState
from .kv import Bucket, Entry
from .provision import ConsumerSpec, consumer_names, ensure_bucket, ensure_consumer, ensure_stream
from .pull import Delivery, Puller

__all__ = [
    "Bucket",
    "CasConflict",
    "ConsumerSpec",
    "Delivery",
    "Entry",
    "JetStreamError",
    "Nats",
    "NoStream",
    "PubAck",
    "Puller",
    "StoredMsg",
    "StreamState",
    "consumer_names",
    "ensure_bucket",
    "ensure_consumer",
    "ensure_stream",
]
