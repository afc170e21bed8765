"""The only package that imports nats-py: connection, KV, raw pulls and provisioning.

:class:`Nats` is the facade the rest of oqron_nats calls (``conn.direct_get(...)``,
``conn.publish(...)``): the connection and its one retried request path (``conn.py``) with the
calls of one concept per module mixed in: stream and consumer administration (``streams.py``),
reading stored messages with the leader detour (``reads.py``) and publishing (``publish.py``);
see ``facade.py``. The API's replies and their typed errors are in ``replies.py``.
"""

from nats.aio.msg import Msg

from ..core.errors import JetStreamError
from .facade import Nats
from .kv import Bucket, Entry, stream_of
from .provision import ConsumerSpec, ensure_bucket, ensure_consumer, ensure_stream
from .pull import Delivery, Puller
from .replies import CasConflict, PubAck, StoredMsg, StreamLimits, StreamState
from .requests import on_critical_path
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
    "on_critical_path",
    "stream_of",
]
