"""docker-compose.yml, the Dockerfile and the collector config, checked by parsing them.

No Docker engine is needed; ``docker compose config`` also validates the file when a compose
client is installed, and is skipped otherwise.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
NATS_NODES = ("nats-1", "nats-2", "nats-3")
JS_HEALTHZ = "http://127.0.0.1:8222/healthz?js-enabled-only=true"
NATS_URL = "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


def argv(service: dict[str, Any], key: str = "command") -> list[str]:
    """A compose command (list, or string in shell syntax) as a list of arguments."""
    value = service[key]
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def flag(args: list[str], name: str) -> str:
    """The value following ``name`` in ``args``; fails the test if the flag is missing."""
    assert name in args, f"{name} missing from {args}"
    index = args.index(name)
    assert index + 1 < len(args), f"{name} has no value in {args}"
    return args[index + 1]


def env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose allows a mapping or a list of KEY=VALUE)."""
    value = service.get("environment") or {}
    if isinstance(value, list):
        value = dict(item.split("=", 1) for item in value)
    return {str(k): str(v) for k, v in value.items()}


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def ports(service: dict[str, Any]) -> set[str]:
    """Published container ports (short syntax "HOST:CONTAINER" or long syntax)."""
    found = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.add(str(port["target"]))
        else:
            found.add(str(port).split(":")[-1].split("/")[0])
    return found


DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(duration: str | int | float) -> float:
    """A compose duration ("40s", "1m30s", "1.5m", "500ms") in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    rebuilt = "".join(number + unit for number, unit in parts)
    assert parts and rebuilt == duration, f"not a compose duration: {duration!r}"
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)


def test_duration_parser() -> None:
    assert seconds("40s") == 40.0
    assert seconds("1m30s") == 90.0
    assert seconds("1.5m") == 90.0
    assert seconds("500ms") == 0.5
    with pytest.raises(AssertionError):
        seconds("40")
    with pytest.raises(AssertionError):
        seconds("forty seconds")


def test_nats_cluster_has_three_jetstream_nodes_with_health_checks(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    nats = {name: s for name, s in services.items() if str(s.get("image", "")).startswith("nats:")}
    assert set(nats) == set(NATS_NODES)

    data_volumes = []
    cluster_names = set()
    for name in NATS_NODES:
        node = services[name]
        match = re.fullmatch(r"nats:(\d+)\.(\d+)\.(\d+)-alpine", node["image"])
        assert match, f"{name}: want an exact nats X.Y.Z-alpine tag, got {node['image']}"
        assert tuple(map(int, match.groups())) >= (2, 12, 5), node["image"]

        args = argv(node)
        assert "-js" in args
        assert flag(args, "-sd") == "/data"
        assert flag(args, "-m") == "8222"
        assert flag(args, "--name") == name
        cluster_names.add(flag(args, "--cluster_name"))
        assert urlsplit(flag(args, "--cluster")).port == 6222
        routes = [urlsplit(r) for r in flag(args, "--routes").split(",")]
        assert all(r.scheme == "nats-route" and r.port == 6222 for r in routes), routes
        assert sorted(r.hostname or "" for r in routes) == [n for n in NATS_NODES if n != name]

        check = healthcheck_text(node)
        assert JS_HEALTHZ in check and "wget" in check, check

        volumes = [v for v in node["volumes"] if str(v).split(":")[1] == "/data"]
        assert len(volumes) == 1, node["volumes"]
        source = str(volumes[0]).split(":")[0]
        assert source in compose["volumes"], f"{source} is not a named volume"
        data_volumes.append(source)

    assert len(cluster_names) == 1, cluster_names
    assert len(set(data_volumes)) == 3, data_volumes
    assert ports(services["nats-1"]) == {"4222", "8222"}
    assert not ports(services["nats-2"]) and not ports(services["nats-3"])


def test_worker_service(services: dict[str, Any]) -> None:
    worker = services["worker-video"]
    build = worker["build"]
    assert (build if isinstance(build, str) else build.get("context", ".")) == "."
    assert argv(worker) == ["opentelemetry-instrument", "python", "-m", "workers.video"]
    assert worker["deploy"]["replicas"] == 2
    # Published ports would collide between replicas.
    assert not ports(worker)

    # Docker must wait longer than the worker's own graceful shutdown before SIGKILL.
    source = (ROOT / "workers" / "video.py").read_text()
    match = re.search(r"shutdown_timeout=(\d+(?:\.\d+)?)", source)
    assert match, "workers/video.py no longer sets shutdown_timeout"
    assert seconds(worker["stop_grace_period"]) > float(match.group(1))

    assert env(worker) == {
        "OQRON_NATS_URL": NATS_URL,
        "OQRON_REPLICAS": "3",
        "OQRON_HEALTH_PORT": "8080",
        "OQRON_LOG_FORMAT": "json",
        "OTEL_SERVICE_NAME": "worker-video",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_METRIC_EXPORT_INTERVAL": "10000",
        "OTEL_LOGS_EXPORTER": "none",
    }

    check = healthcheck_text(worker)
    assert "urllib" in check
    assert f"http://127.0.0.1:{env(worker)['OQRON_HEALTH_PORT']}/readyz" in check, check

    depends = worker["depends_on"]
    for node in NATS_NODES:
        assert depends[node]["condition"] == "service_healthy", node


def test_publisher_service(services: dict[str, Any]) -> None:
    publisher = services["publisher-video"]
    assert publisher["build"] == services["worker-video"]["build"]
    assert argv(publisher) == [
        "opentelemetry-instrument",
        *("python", "-m", "publishers.video", "--count", "20"),
    ]
    assert publisher["restart"] == "no"  # a YAML `no` unquoted would load as False
    variables = env(publisher)
    assert variables["OTEL_SERVICE_NAME"] == "publisher-video"
    # The publisher may create the stream first: it must ask for the same replicas as the worker.
    for key in ("OQRON_NATS_URL", "OQRON_REPLICAS", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        assert variables[key] == env(services["worker-video"])[key], key
    for key in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER"):
        assert variables[key] == "otlp", key
    for node in NATS_NODES:
        assert publisher["depends_on"][node]["condition"] == "service_healthy", node


def test_collector_sends_traces_to_jaeger_and_serves_prometheus(services: dict[str, Any]) -> None:
    collector = services["otel-collector"]
    assert re.fullmatch(r"otel/opentelemetry-collector-contrib:\d+\.\d+\.\d+", collector["image"])
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in collector["volumes"]}
    assert "./deploy/otel-collector.yaml" in mounts
    target = mounts["./deploy/otel-collector.yaml"]
    assert f"--config={target}" in argv(collector)
    assert {"4317", "8889"} <= ports(collector)
    # The apps export to the collector's service name, on its OTLP gRPC port.
    endpoint = urlsplit(env(services["worker-video"])["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert (endpoint.hostname, endpoint.port) == ("otel-collector", 4317)

    config = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"

    pipelines = config["service"]["pipelines"]
    assert set(pipelines) >= {"traces", "metrics"}
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{name} uses undefined {kind[:-1]} {component}"
        assert pipeline["receivers"] == ["otlp"], name
        assert "batch" in pipeline["processors"], name

    # otlp_grpc since collector 0.144; plain otlp is its deprecated alias.
    jaeger_exporters = [
        e
        for e in pipelines["traces"]["exporters"]
        if e.split("/")[0] in {"otlp_grpc", "otlp"}
        and config["exporters"][e]["endpoint"] == "jaeger:4317"
    ]
    assert len(jaeger_exporters) == 1, pipelines["traces"]
    assert config["exporters"][jaeger_exporters[0]]["tls"]["insecure"] is True
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert config["exporters"]["prometheus"]["endpoint"] == "0.0.0.0:8889"


def test_jaeger_v2_accepts_otlp_from_the_network(services: dict[str, Any]) -> None:
    jaeger = services["jaeger"]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger["image"]), jaeger["image"]
    args = argv(jaeger)
    assert "receivers.otlp.protocols.grpc.endpoint=0.0.0.0:4317" in args
    assert ports(jaeger) == {"16686"}


def test_dockerfile_and_dockerignore() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", dockerfile, re.MULTILINE)
    installs = [
        shlex.split(line.removeprefix("RUN "))
        for line in dockerfile.splitlines()
        if line.startswith("RUN pip install")
    ]
    assert len(installs) == 1, installs
    assert {".", "opentelemetry-distro", "opentelemetry-exporter-otlp"} <= set(installs[0])
    for module in ("oqron_nats", "payloads", "workers", "publishers"):
        assert re.search(rf"^COPY {module} ", dockerfile, re.MULTILINE), module

    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", ".cache", "**/__pycache__", "bench"} <= ignored
    # Nothing the Dockerfile copies may be excluded from the build context.
    assert not ignored & {"pyproject.toml", "README.md", "oqron_nats", "payloads", "workers"}
    assert "publishers" not in ignored


def compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose`` (standalone), whichever works."""
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_validates() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no compose client: `docker compose version` failed and no docker-compose")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
