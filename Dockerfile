# The image for the compose stack's worker and publisher (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The library first, so editing the example modules does not reinstall dependencies. The library
# depends on the OTel API only; opentelemetry-distro (the SDK and `opentelemetry-instrument`) and
# the OTLP exporter are this deployment's choice, configured from OTEL_* variables at start.
COPY pyproject.toml README.md ./
COPY oqron_nats ./oqron_nats
RUN pip install . opentelemetry-distro opentelemetry-exporter-otlp

# The deployable modules, run from /app: python -m workers.video, python -m publishers.video.
COPY payloads ./payloads
COPY workers ./workers
COPY publishers ./publishers

RUN useradd --system --no-create-home --uid 10001 app
USER app

CMD ["opentelemetry-instrument", "python", "-m", "workers.video"]
