"""A local nats-server and a local 3-node cluster, for development, the demo and tests (yours too).

Not on the job path: nothing in a queue or a worker imports this package.
"""

from .cluster import LocalCluster
from .server import LocalServer, ServerError, find_binary

__all__ = ["LocalCluster", "LocalServer", "ServerError", "find_binary"]
