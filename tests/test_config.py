"""Queue options are checked when a queue is defined: a ConfigError says what is wrong."""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

import pytest

from oqron_nats import ConfigError, queue, worker
from oqron_nats.core.config import LagMonitor, Reconciliation, StallScanner


async def handler(ctx: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurency": 3}, "unknown queue options"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"strategy": "random"}, "strategy"),
        ({"priority": 10}, "priority"),
        ({"heartbeat": 30, "lock_ttl": 30}, "shorter than lock_ttl"),
        ({"heartbeat": 0}, "heartbeat"),
        ({"lock_ttl": 0.5, "heartbeat": 0.1}, "at least 1 second"),
        ({"lock_ttl": "30s"}, "lock_ttl"),
        ({"lock_ttl": float("inf")}, "finite"),
        ({"heartbeat": float("nan")}, "heartbeat"),
        ({"tags": "mail"}, "tags"),
        ({"max_stalled_count": -1}, "max_stalled_count"),
        ({"max_payload_size": 0}, "max_payload_size"),
        ({"retries": 3}, "retries"),
        ({"cross_node_stall_scanner": "yes"}, "cross_node_stall_scanner"),
        ({"lag_monitor": 0.5}, "lag_monitor"),
    ],
)
def test_bad_options_raise_config_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        queue("q", handler, **options)


def test_bad_names_and_handlers_are_refused() -> None:
    with pytest.raises(ConfigError):
        queue("has.dot")
    with pytest.raises(ConfigError, match="callable"):
        queue("q", "not a function")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a handler"):
        worker("q", None)  # type: ignore[arg-type]


def test_durations_and_option_groups_resolve() -> None:
    q = queue(
        "q",
        handler,
        heartbeat=timedelta(seconds=2),
        lock_ttl=10,
        cross_node_stall_scanner=True,
        reconciliation=Reconciliation(interval=5),
        lag_monitor=LagMonitor(max_lag=timedelta(milliseconds=200)),
    )
    assert q.config.heartbeat == 2.0
    assert q.config.lock_ttl == 10.0
    assert q.config.ack_wait > q.config.lock_ttl
    assert q.config.stall_scanner == StallScanner()
    assert q.config.reconciliation == Reconciliation(interval=5)
    assert q.config.lag_monitor is not None
    plain = queue("q")
    assert plain.config.stall_scanner is None
    assert plain.config.max_stalled_count == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda: StallScanner(interval=0),
        lambda: Reconciliation(interval=-1),
        lambda: LagMonitor(max_lag=0),
        lambda: LagMonitor(window="1s"),
    ],
)
def test_bad_option_groups_raise_config_error(make: Any) -> None:
    with pytest.raises(ConfigError):
        make()


async def _async_gen(ctx: Any) -> Any:
    yield 1


def _sync_gen(ctx: Any) -> Any:
    yield 1


async def _no_context() -> None:
    return None


def _two(ctx: Any, extra: Any) -> None:
    return None


class _Callable:
    async def __call__(self, ctx: Any) -> None:
        return None


class _GenCallable:
    async def __call__(self, ctx: Any) -> Any:
        yield 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_async_gen, "generator"),
        (_sync_gen, "generator"),
        (_GenCallable(), "generator"),
        (_no_context, "one argument"),
        (_two, "one argument"),
        (lambda: None, "one argument"),
        ("handler", "callable"),
    ],
)
def test_a_handler_that_cannot_take_a_context_or_yields_is_refused_when_defined(
    bad: Any, message: str
) -> None:
    """Caught at definition, not when a job runs (a generator was reported as a result that
    cannot be encoded as JSON)."""
    with pytest.raises(ConfigError, match=message):
        queue("q", bad)
    with pytest.raises(ConfigError, match=message):
        worker("q", bad)


def test_handlers_of_every_good_kind_are_accepted() -> None:
    def plain(ctx: Any) -> None:
        return None

    for good in (handler, plain, _Callable(), lambda ctx: None, functools.partial(_two, extra=1),
                 print):  # fmt: skip
        queue("q", good)
