"""A Prometheus scrape port for a worker process (``--metrics-port``): the one place that sets up
an OpenTelemetry SDK, and only when asked to. Needs ``pip install 'oqron-nats[prometheus]'``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider

INSTALL_HINT = "pip install 'oqron-nats[prometheus]'"


def serve_prometheus(port: int, addr: str = "0.0.0.0") -> MeterProvider:
    """Serve this process's metrics on ``addr:port`` and make that SDK the global meter provider.

    Builds an SDK MeterProvider that a PrometheusMetricReader collects at each scrape, starts
    prometheus_client's HTTP server, sets the provider as the global one (so every Client that
    was given no ``meter_provider`` reports to it) and returns it. Raises ConfigError if the
    packages are missing or the port cannot be bound.
    """
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import start_http_server
    except ImportError as exc:
        raise ConfigError(
            f"serving metrics to Prometheus needs the OpenTelemetry SDK and its Prometheus "
            f"exporter ({exc.name or exc} is missing): {INSTALL_HINT}"
        ) from exc
    try:
        start_http_server(port, addr)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from exc
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    metrics.set_meter_provider(provider)
    return provider
