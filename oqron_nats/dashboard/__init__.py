"""The web dashboard: every queue of a namespace, live, in a browser (``pip install
'oqron-nats[dashboard]'``).

``app(client=...)`` is an ASGI app to mount in a FastAPI or Starlette service behind its own
auth; ``oqron dashboard`` serves it on 127.0.0.1 (see :mod:`.command`). Pages read NATS through
the same code as the ``oqron`` command, actions are POSTs through the same methods, and live
updates come from the queue events the library publishes, never from polling per browser.
Starlette and Jinja2 are imported when the app is built, so the ``oqron`` command works without
the extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

from ..client import Client
from .settings import Auth, BasicAuth, BearerAuth, Options, settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["Auth", "BasicAuth", "BearerAuth", "app"]


def app(*, client: Client, **options: Unpack[Options]) -> Starlette:
    """The dashboard as an ASGI app over ``client``'s namespace.

    ``read_only`` hides and refuses every action; ``auth`` (:class:`BasicAuth` or
    :class:`BearerAuth`) guards every request; ``secret_fields`` are masked in every queue's
    payloads and results, besides the ``secret_fields`` of the ``queues`` handed; ``trace_url``
    links a job to its trace (``{trace_id}``, ``{correlation_id}``, ``{job_id}``, ``{queue}``);
    ``refresh`` is how often, in seconds, the overview is re-read without events;
    ``public_url`` is the URL browsers reach it at behind a reverse proxy that rewrites ``Host``
    (an action's ``Origin`` may then be that one). The client is the caller's: the app never
    closes it.
    """
    from .web import build

    return build(client, settings(**options))
