"""The garbage collector while a worker process runs (ops/collector.py): start-up's objects
frozen and young scans less often, then everything as it was."""

from __future__ import annotations

import gc

from oqron_nats.ops.collector import YOUNG_SCAN_EVERY, settled_for_work


def test_the_collector_is_set_for_work_and_restored_after() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with settled_for_work() as collector:
        assert gc.get_threshold() == (YOUNG_SCAN_EVERY, *before[1:])
        assert collector["frozen_objects"] > 1000 and gc.get_freeze_count() > 1000
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0, "a process that runs workers again freezes nothing twice"
