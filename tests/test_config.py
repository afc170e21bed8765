"""Queue options are checked when a queue is defined: a ConfigError says what is wrong."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from datetime import timedelta
from typing import Any

import pytest

from oqron_nats import ConfigError, queue, worker
from oqron_nats.core.config import (
    OPTIONS,
    DeadLetter,
    LagMonitor,
    QueueConfig,
    QueueOptions,
    Reconciliation,
    RetryPolicy,
    StallScanner,
)
from oqron_nats.core.job import AddKeywords, AddOptions


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
        queue("q", "not a function")  # type: ignore[call-overload]
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
    assert q.config.cross_node_stall_scanner == StallScanner()
    assert q.config.reconciliation == Reconciliation(interval=5)
    assert q.config.lag_monitor is not None
    plain = queue("q")
    assert plain.config.cross_node_stall_scanner is None
    assert plain.config.max_stalled_count == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda: StallScanner(interval=0),
        lambda: Reconciliation(interval=-1),
        lambda: LagMonitor(max_lag=0),
        lambda: LagMonitor(window="1s"),  # type: ignore[arg-type]
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


# -- the one source of the queue options -----------------------------------------------------

NOT_OPTIONS = {"name", "payload", "disabled_behavior", "retries_given"}
"""QueueConfig's fields that are not options (queue()'s own parameters, and what is derived)."""


def test_the_config_has_a_field_for_every_option_and_no_other() -> None:
    """QueueConfig is declared for the code that reads it; it must name exactly the options."""
    fields = {f.name for f in dataclasses.fields(QueueConfig)}
    assert fields - NOT_OPTIONS == set(QueueOptions.__annotations__)
    assert fields >= NOT_OPTIONS


def test_every_option_has_a_doc_and_a_default_that_resolves() -> None:
    assert list(OPTIONS) == list(QueueOptions.__annotations__)
    for key, option in OPTIONS.items():
        assert option.doc and "\n" not in option.doc, key
        option.resolve(option.default, key)  # raises if the default is not a valid value
    config = queue("q").config
    assert config.concurrency == OPTIONS["concurrency"].default
    assert config.heartbeat == OPTIONS["heartbeat"].default


def test_queue_and_worker_take_the_same_options() -> None:
    """Both take ``**options: Unpack[QueueOptions]``: the one source, not a list of their own."""
    for define in (queue, worker):
        options = inspect.signature(define).parameters["options"]
        assert options.kind is inspect.Parameter.VAR_KEYWORD
        assert "Unpack[QueueOptions]" in str(options.annotation)


def test_none_means_the_default_where_the_type_allows_it() -> None:
    """The README shows ``max_jobs=None`` and ``codec=None``: unbounded, and the client's codec."""
    q = queue("q", max_jobs=None, max_bytes=None, codec=None, throttle=None, retries=None)
    assert q.config.max_jobs is None and q.config.max_bytes is None and q.config.codec is None
    assert q.config.throttle is None and not q.config.retries_given


def test_false_turns_a_group_off() -> None:
    """``dead_letter=False`` copies no dead letter and ``retries=False`` retries nothing (both
    once resolved to the defaults, as None does)."""
    q = queue("q", dead_letter=False, retries=False)
    assert q.config.dead_letter == DeadLetter(enabled=False)
    assert q.config.retries == RetryPolicy(max=0) and q.config.attempts_of(None) == 1
    plain = queue("q", dead_letter=None)
    assert plain.config.dead_letter.enabled and plain.config.retries.max == 3


def test_the_add_keywords_are_the_add_options() -> None:
    assert set(AddKeywords.__annotations__) == set(AddOptions.__struct_fields__)
