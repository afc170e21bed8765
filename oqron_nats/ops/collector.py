"""Python's garbage collector in a worker process, set by the runner while its workers run.

A job's objects are freed by reference counting as soon as it ends (tests/test_garbage.py), so
the cycle collector finds next to nothing on the job path; with Python's defaults its scans still
cost a busy worker 20-25 µs per job (a scan of the young objects every 700 allocations, and full
scans over every object start-up made: modules, classes, functions). Frozen start-up objects and
young scans every 5,000 allocations brought that to 4-9 µs (20,000 no-op jobs at concurrency
100, time inside the collector measured with ``gc.callbacks``: 88-113 young scans), and every
YOUNG_SCAN_EVERY to next to nothing (one young scan in 20,000 jobs; 741k -> 714k worker
instructions per job under callgrind). The count that triggers a scan is allocations *less*
deallocations, and a worker's jobs free what they allocate: it rises only with the objects alive
at once (jobs in flight), so a scan still comes after that many objects outlived their job, and
cyclic garbage (a user handler's) waits for at most that many allocations.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_SCAN_EVERY = 20_000
"""Allocations (less deallocations) between two scans of the youngest generation (Python: 700)."""


@contextmanager
def settled_for_work() -> Iterator[dict[str, int]]:
    """While inside: what exists on entry hidden from the collector (``gc.freeze``, after a
    collection: no garbage is frozen) and young objects scanned less often; yields what was set,
    for the log. On exit the collector is as it was (a process may run workers again)."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_SCAN_EVERY, *before[1:])
    try:
        yield {"frozen_objects": gc.get_freeze_count(), "young_scan_every": YOUNG_SCAN_EVERY}
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
