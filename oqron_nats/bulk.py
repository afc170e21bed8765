"""add_bulk(): its items built one by one, then added in a window; its outcomes, one per item,
in order, saying which were added."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, overload

from typing_extensions import TypeVar

from .core.errors import InvalidInput, InvalidOption, OqronError
from .core.job import AddOptions, Job
from .core.records import parse_options
from .storage.store import RawJob

T = TypeVar("T", default=Any)

BULK_WINDOW = 512
"""How many add_bulk() jobs are in flight at once."""
BULK_CHUNK = 64
"""How many add_bulk() jobs make their writes at once (their records, then their messages):
one wait for a chunk's answers, where a task per job would wake once per answer."""

ItemResult = Job[T] | OqronError | None
"""What adding one job of add_bulk() came to: the job, why it was not added, or None if the
queue skipped it (paused, with ``disabled_behavior="skip"``)."""


@dataclass(frozen=True, slots=True)
class AddOutcome(Generic[T]):
    """What happened to one item of add_bulk(): the job, or why it was not added."""

    index: int
    job: Job[T] | None = None
    error: OqronError | None = None
    skipped: bool = False
    """The queue was paused and skips new jobs: nothing was stored for this item."""

    @property
    def ok(self) -> bool:
        """Whether the item was added (or already existed)."""
        return self.job is not None


class BulkResult(Sequence[AddOutcome[T]]):
    """The outcomes of add_bulk(), in the order of the items."""

    def __init__(self, outcomes: list[AddOutcome[T]]) -> None:
        self.outcomes = outcomes

    @overload
    def __getitem__(self, index: int) -> AddOutcome[T]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[AddOutcome[T]]: ...
    def __getitem__(self, index: int | slice) -> AddOutcome[T] | Sequence[AddOutcome[T]]:
        return self.outcomes[index]

    def __len__(self) -> int:
        return len(self.outcomes)

    def __iter__(self) -> Iterator[AddOutcome[T]]:
        return iter(self.outcomes)

    @property
    def ok(self) -> bool:
        """Whether every item was added."""
        return all(o.ok for o in self.outcomes)

    @property
    def jobs(self) -> list[Job[T]]:
        """The jobs that were added, in order."""
        return [o.job for o in self.outcomes if o.job is not None]

    @property
    def errors(self) -> dict[int, OqronError]:
        """Why each failed item (by index) was not added."""
        return {o.index: o.error for o in self.outcomes if o.error is not None}


def split_item(item: Mapping[str, Any]) -> tuple[Any, Mapping[str, Any] | None]:
    """The data and options of one add_bulk() item."""
    if not isinstance(item, Mapping) or "data" not in item:
        raise InvalidOption("each add_bulk() item must be a mapping with a 'data' key")
    extra = set(item) - {"data", "opts"}
    if extra:
        raise InvalidOption(f"unknown add_bulk() item keys: {sorted(extra)}")
    opts = item.get("opts")
    if opts is not None and not isinstance(opts, Mapping):
        raise InvalidOption("an add_bulk() item's 'opts' must be a mapping")
    return item["data"], opts


def prepare(
    items: Iterable[Mapping[str, Any]], build: Callable[[Any, AddOptions], tuple[T, RawJob]]
) -> tuple[list[AddOutcome[T]], list[tuple[int, T, RawJob]]]:
    """Build each item's job with ``build(data, options)`` (no I/O): an outcome per item (the
    error of a bad one), and the jobs to add with their index and payload."""
    outcomes: list[AddOutcome[T]] = []
    prepared: list[tuple[int, T, RawJob]] = []
    for index, item in enumerate(items):
        try:
            data, opts = split_item(item)
            value, job = build(data, parse_options(opts))
        except InvalidInput as exc:
            outcomes.append(AddOutcome(index, error=exc))
            continue
        outcomes.append(AddOutcome(index))
        prepared.append((index, value, job))
    return outcomes, prepared


async def add_prepared(
    outcomes: list[AddOutcome[T]],
    prepared: list[tuple[int, T, RawJob]],
    add_many: Callable[[list[tuple[T, RawJob]]], Awaitable[list[ItemResult[T]]]],
) -> None:
    """Add the prepared jobs, BULK_CHUNK at a time with ``add_many(chunk)`` (for each job, in
    order: the job, None if the queue skipped it, or why it was not added), with at most
    BULK_WINDOW jobs in flight; each outcome says what happened to its item."""
    pending = iter(range(0, len(prepared), BULK_CHUNK))

    async def adder() -> None:
        for start in pending:
            chunk = prepared[start : start + BULK_CHUNK]
            added = await add_many([(value, job) for _, value, job in chunk])
            for (index, _, _), result in zip(chunk, added, strict=True):
                outcomes[index] = outcome_of(index, result)

    chunks = -(-len(prepared) // BULK_CHUNK)
    await asyncio.gather(*(adder() for _ in range(min(BULK_WINDOW // BULK_CHUNK, chunks))))


def outcome_of(index: int, added: ItemResult[T]) -> AddOutcome[T]:
    """The outcome of item ``index`` from what adding its job came to."""
    if isinstance(added, OqronError):
        return AddOutcome(index, error=added)
    if added is None:
        return AddOutcome(index, skipped=True)
    return AddOutcome(index, job=added)
