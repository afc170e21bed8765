"""A replica that stays behind its stream's leader (oqron_nats/_nats/lagging.py): the rule on
looks of its own here; on a real cluster in tests/test_cluster.py."""

from __future__ import annotations

from oqron_nats._nats.lagging import BEHIND_FOR, GROWTH, LOOK_EVERY, Lagging, Look
from oqron_nats._nats.replies import PeerInfo

STREAM = "records"


def look(at: float, last_seq: int, leader: str = "n1", **lags: int) -> Look:
    """What leader ``leader`` says at ``at`` s: the stream's last sequence and each lag."""
    return Look(at, leader, last_seq, [PeerInfo(name, lag) for name, lag in lags.items()])


def test_a_replica_whose_lag_grows_for_a_while_is_behind_and_one_that_keeps_up_is_not() -> None:
    lagging = Lagging()
    assert not lagging.judge(STREAM, look(0, 1000, n2=0, n3=3))
    assert not lagging.judge(STREAM, look(5, 2000, n2=2, n3=900))
    assert lagging.judge(STREAM, look(BEHIND_FOR, 3000, n2=0, n3=1900)) == {"n3"}
    assert lagging.judge(STREAM, look(15, 4000, n2=5, n3=2900)) == {"n3"}, "n2 keeps up"
    assert lagging.behind(STREAM) == {"n3"} and not lagging.behind("another stream")
    assert not lagging.judge(STREAM, look(20, 5000, n2=0, n3=0)), "caught up"


def test_a_busy_replica_whose_lag_stays_small_is_never_behind() -> None:
    lagging = Lagging()
    lags = [3, 7, 2, 9, 40, 12, 60, 1, 5, 80, 30, 99]  # in flight, never zero, never growing far
    verdicts = [
        lagging.judge(STREAM, look(i * LOOK_EVERY, 1000 * i, n2=lag)) for i, lag in enumerate(lags)
    ]
    assert not any(verdicts)
    assert max(lags) - min(lags) < GROWTH


def test_a_replica_behind_an_idle_stream_is_behind_without_growing() -> None:
    lagging = Lagging()
    lagging.judge(STREAM, look(0, 500, n2=4))
    assert not lagging.judge(STREAM, look(5, 500, n2=4))
    assert lagging.judge(STREAM, look(10, 500, n2=4)) == {"n2"}


def test_a_new_leader_starts_the_count_over_and_offline_replicas_are_left_out() -> None:
    lagging = Lagging()
    lagging.judge(STREAM, look(0, 0, n2=10))
    assert not lagging.judge(STREAM, look(10, 1000, leader="n3", n2=500))
    assert lagging.judge(STREAM, look(20, 2000, leader="n3", n2=1500)) == {"n2"}
    stopped = Look(40, "n3", 9000, [PeerInfo("n2", 8000, offline=True)])
    assert not lagging.judge(STREAM, stopped), "an offline one answers no reads"


def test_looks_are_due_every_few_seconds_and_rarely_at_a_stream_with_one_replica() -> None:
    lagging = Lagging()
    assert lagging.due(STREAM, 0.0) and not lagging.due(STREAM, 1.0)
    assert lagging.due(STREAM, LOOK_EVERY)
    single = Look(LOOK_EVERY, "", 10, [], replicated=False)
    assert not lagging.judge(STREAM, single)
    assert not lagging.due(STREAM, 100.0) and lagging.due(STREAM, 400.0)


def test_a_stream_this_user_may_not_look_at_is_never_looked_at_again() -> None:
    lagging = Lagging()
    assert lagging.due(STREAM, 0.0)
    lagging.refused(STREAM)
    assert not lagging.due(STREAM, 1e9)
