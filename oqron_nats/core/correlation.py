"""The correlation id of the job running in the current task or thread.

``add()`` called from inside a handler inherits it, so one request can be followed through every
job it fans out to.
"""

from __future__ import annotations

from contextvars import ContextVar

current_correlation_id: ContextVar[str | None] = ContextVar("oqron_correlation_id", default=None)
