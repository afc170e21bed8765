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
    add: Callable[[T, RawJob], Awaitable[Job[T] | None]],
) -> None:
    """Add the prepared jobs, at most BULK_WINDOW at once, with ``add(value, job)`` (the job,
    or None if the queue skipped it); each outcome says what happened to its item.

    BULK_WINDOW adders take the next job from one shared iterator (no task per job)."""
    pending = iter(prepared)

    async def adder() -> None:
        for index, value, job in pending:
            try:
                added = await add(value, job)
            except OqronError as exc:
                outcomes[index] = AddOutcome(index, error=exc)
                continue
            if added is None:
                outcomes[index] = AddOutcome(index, skipped=True)
            else:
                outcomes[index] = AddOutcome(index, job=added)

    await asyncio.gather(*(adder() for _ in range(min(BULK_WINDOW, len(prepared)))))
