"""OpenTelemetry spans through the API only, and trace context in NATS headers.

``add()`` opens a PRODUCER span ``publish <queue>`` and injects its context into the job (stored
on the record, sent as message headers). Each attempt opens a CONSUMER span ``process <queue>``
whose parent is that context, with a link to it as the messaging conventions ask; both carry the
correlation id as ``messaging.message.conversation_id``. Without an SDK every span is a cheap
no-op, and the trace context still passes through.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TracerProvider

from .._version import __version__

SYSTEM = "messaging.system"
OPERATION_NAME = "messaging.operation.name"
OPERATION_TYPE = "messaging.operation.type"
DESTINATION = "messaging.destination.name"
MESSAGE_ID = "messaging.message.id"
CONVERSATION_ID = "messaging.message.conversation_id"
CONSUMER_GROUP = "messaging.consumer.group.name"
ATTEMPT = "oqron.job.attempt"
ERROR_TYPE = "error.type"
RECHECK_EVERY = 1.0
"""Seconds between two looks for a global tracer provider while none is set: a look reads the
environment (1.5 % of a no-op job's CPU when made for every job)."""


class Tracing:
    """Spans for publishing and processing jobs."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("oqron_nats", __version__, tracer_provider=tracer_provider)
        self._recording = tracer_provider is not None
        self._looked_at = -math.inf
        self._textmap: TextMapPropagator | None = None
        self._fields: frozenset[str] = frozenset()

    @property
    def recording(self) -> bool:
        """Whether spans can be recorded: a provider was given, or an SDK set the global one.

        The global one is looked for at most every RECHECK_EVERY seconds while none is set
        (it reads the environment), and never again once set (it can be set only once).
        """
        if not self._recording:
            now = time.monotonic()
            if now - self._looked_at >= RECHECK_EVERY:
                self._looked_at = now
                provider = trace.get_tracer_provider()
                self._recording = not isinstance(provider, trace.ProxyTracerProvider)
        return self._recording

    def _context_fields(self) -> frozenset[str]:
        """The header names the global propagator reads (asked again only once it changed)."""
        textmap = propagate.get_global_textmap()
        if textmap is not self._textmap:
            self._textmap, self._fields = textmap, frozenset(textmap.fields)
        return self._fields

    def start_publish(
        self, queue: str, job_id: str, correlation_id: str
    ) -> tuple[Span, dict[str, str]]:
        """Start the PRODUCER span of one job; return it with the headers that carry it.

        With nothing to record, the span is the current one (as the API's no-op tracer would
        make it, without building its attributes), and its context passes on."""
        if not self.recording:
            carrier: dict[str, str] = {}
            if not context.get_current():  # no span, no baggage: nothing to pass on
                return trace.INVALID_SPAN, carrier
            propagate.inject(carrier)
            return trace.get_current_span(), carrier
        span = self._tracer.start_span(
            f"publish {queue}",
            kind=SpanKind.PRODUCER,
            attributes={
                SYSTEM: "nats",
                OPERATION_NAME: "publish",
                OPERATION_TYPE: "send",
                DESTINATION: queue,
                MESSAGE_ID: job_id,
                CONVERSATION_ID: correlation_id,
            },
        )
        carrier = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return span, carrier

    def processes(self, carrier: Mapping[str, str]) -> bool:
        """Whether an attempt whose message carries ``carrier`` needs :meth:`processing`: a span
        to record, or a context to make current (else it is skipped: about 4 % of a no-op job's
        worker instructions)."""
        if self.recording:
            return True
        fields = self._context_fields()
        # header names in lower case: Go and .NET clients send ``Traceparent``
        return any(key.lower() in fields for key in carrier)

    @contextmanager
    def processing(
        self,
        *,
        queue: str,
        job_id: str,
        correlation_id: str,
        attempt: int,
        consumer: str,
        carrier: Mapping[str, str],
    ) -> Iterator[Span]:
        """The CONSUMER span of one attempt, child of the publisher's context in ``carrier``
        (ask :meth:`processes` first: with neither, it is not needed).

        With nothing to record it, no span is made: the publisher's context is only made
        current, so the trace still passes through to the jobs the handler adds.
        """
        # header names in lower case: Go and .NET clients send ``Traceparent``
        headers = {key.lower(): value for key, value in carrier.items()}
        parent = propagate.extract(headers)
        if not self.recording:
            token = context.attach(parent)
            try:
                yield trace.INVALID_SPAN
            finally:
                context.detach(token)
            return
        creation = trace.get_current_span(parent).get_span_context()
        links = [Link(creation)] if creation.is_valid else []
        token = context.attach(parent)  # makes the publisher's baggage current as well
        try:
            with self._tracer.start_as_current_span(
                f"process {queue}",
                context=parent,
                kind=SpanKind.CONSUMER,
                links=links,
                attributes={
                    SYSTEM: "nats",
                    OPERATION_NAME: "process",
                    OPERATION_TYPE: "process",
                    DESTINATION: queue,
                    MESSAGE_ID: job_id,
                    CONVERSATION_ID: correlation_id,
                    CONSUMER_GROUP: consumer,
                    ATTEMPT: attempt,
                },
            ) as span:
                yield span
        finally:
            context.detach(token)


def mark_failed(span: Span, exc: BaseException, *, detail: bool = True) -> None:
    """Record a failed attempt on its span; without ``detail`` only the exception's type (its
    message and traceback may hold payload values of an encrypted queue)."""
    if detail:
        span.record_exception(exc)
    description = str(exc)[:200] if detail else type(exc).__name__
    span.set_status(Status(StatusCode.ERROR, description))
    span.set_attribute(ERROR_TYPE, type(exc).__name__)
