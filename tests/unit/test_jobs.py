"""execution.jobs: retries with backoff, escalation, splitting, checkpoints and resumption."""

from __future__ import annotations

import random
import threading
import time

import pandas as pd
import pytest

from aether.execution.jobs import (
    Batch,
    CheckpointStore,
    RetryPolicy,
    Stats,
    Verdict,
    read_checkpoints,
    resilient_call,
    run_batches,
)


class Heavy(Exception):
    """Stands for a server error that needs a lighter request."""


class TooBig(Exception):
    """Stands for a server error that needs a smaller batch."""


def classify(e: BaseException) -> Verdict:
    if isinstance(e, ConnectionError):
        return Verdict.RETRY
    if isinstance(e, Heavy):
        return Verdict.ESCALATE
    if isinstance(e, TooBig):
        return Verdict.SPLIT
    return Verdict.FAIL


def frame(items, level=0):
    return pd.DataFrame({"item": list(items), "level": level})


def test_backoff_is_bounded_full_jitter():
    p = RetryPolicy(base_s=0.5, cap_s=4.0)
    rng = random.Random(0)
    delays = [[p.delay(n, rng) for _ in range(200)] for n in range(6)]
    assert all(0 <= d <= min(4.0, 0.5 * 2**n) for n, ds in enumerate(delays) for d in ds)
    assert max(delays[0]) < 0.5 < max(delays[3])  # grows, then capped
    assert max(delays[5]) <= 4.0


def test_retry_escalate_split_recover_every_item_once():
    slept: list[float] = []
    calls: list[tuple[list[int], int]] = []

    def fn(items, level):
        calls.append((list(items), level))
        n = len(calls)
        if n in (1, 2):
            raise ConnectionError("connection reset")
        if n == 3:
            raise Heavy("User memory limit exceeded.")
        if len(items) > 3:
            raise TooBig("Computation timed out.")
        return frame(items, level)

    stats = Stats()
    out = resilient_call(fn, list(range(10)), classify, RetryPolicy(base_s=0.01), stats=stats,
                         rng=random.Random(1), sleep=slept.append)
    assert out["item"].tolist() == list(range(10))  # none lost, none twice, in order
    assert out.index.tolist() == list(range(10))  # one frame, not the halves' indexes
    assert (stats.retries, stats.escalations, stats.splits) == (2, 1, 3)
    assert len(slept) == 2
    whole = list(range(10))
    # halves of halves until a batch fits, each at the escalated level
    assert calls == [(whole, 0), (whole, 0), (whole, 0), (whole, 1), (whole[:5], 1),
                     ([0, 1], 1), ([2, 3, 4], 1), (whole[5:], 1), ([5, 6], 1), ([7, 8, 9], 1)]
    assert set(out["level"]) == {1}  # halves keep the escalated level


def test_backoff_waits_follow_the_documented_schedule():
    """Transient failure n waits uniform(0, min(cap_s, base_s·2ⁿ)); escalations do not wait."""
    bounds: list[tuple[float, float]] = []

    class Top:  # a jitter source that always draws the top of its range, and records it
        def uniform(self, a: float, b: float) -> float:
            bounds.append((a, b))
            return b

    calls: list[int] = []

    def fn(items, level):
        calls.append(level)
        if len(calls) == 3:
            raise Heavy("User memory limit exceeded.")
        if len(calls) <= 7:
            raise ConnectionError("connection reset")
        return frame(items, level)

    slept: list[float] = []
    out = resilient_call(fn, [1], classify, RetryPolicy(base_s=0.5, cap_s=4.0), rng=Top(),
                         sleep=slept.append)
    assert out["item"].tolist() == [1] and calls == [0, 0, 0, 1, 1, 1, 1, 1]
    assert slept == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]  # 0.5·2ⁿ, capped at 4
    assert bounds == [(0.0, s) for s in slept]  # full jitter: from zero


def test_halves_wait_with_the_callers_jitter_and_sleep():
    draws: list[float] = []

    class Top:
        def uniform(self, a: float, b: float) -> float:
            draws.append(b)
            return b

    calls: list[list[int]] = []

    def fn(items, level):
        calls.append(list(items))
        if len(items) > 1:
            raise TooBig("Computation timed out.")
        if calls.count(list(items)) == 1:
            raise ConnectionError("connection reset")
        return frame(items, level)

    slept: list[float] = []
    out = resilient_call(fn, [1, 2], classify, RetryPolicy(base_s=0.25), rng=Top(),
                         sleep=slept.append)
    assert out["item"].tolist() == [1, 2]
    assert calls == [[1, 2], [1], [1], [2], [2]]
    assert slept == draws == [0.25, 0.25]  # each half's first retry, through the given hooks


def test_a_transient_error_at_the_top_level_is_retried_not_split():
    calls: list[tuple[list[int], int]] = []

    def fn(items, level):
        calls.append((list(items), level))
        if len(calls) == 1:
            raise Heavy("User memory limit exceeded.")
        if len(calls) == 2:
            raise ConnectionError("connection reset")
        return frame(items, level)

    stats = Stats()
    resilient_call(fn, [1, 2], classify, RetryPolicy(max_level=1), stats=stats,
                   sleep=lambda s: None)
    assert calls == [([1, 2], 0), ([1, 2], 1), ([1, 2], 1)]
    assert (stats.escalations, stats.retries, stats.splits) == (1, 1, 0)


def test_escalation_stops_at_max_level_then_splits():
    calls: list[tuple[list[int], int]] = []

    def fn(items, level):
        calls.append((list(items), level))
        if len(calls) > 8:  # escalating without end: stop it (a fatal error)
            raise RuntimeError("runaway escalation")
        if len(items) > 1:
            raise Heavy("User memory limit exceeded.")
        return frame(items, level)

    out = resilient_call(fn, [1, 2], classify, RetryPolicy(max_level=1), sleep=lambda s: None)
    assert out["item"].tolist() == [1, 2]
    assert calls == [([1, 2], 0), ([1, 2], 1), ([1], 1), ([2], 1)]


def test_split_falls_back_to_escalation_then_gives_up():
    calls: list[tuple[list[int], int]] = []

    def fn(items, level):
        calls.append((list(items), level))
        raise TooBig("Too many concurrent aggregations")

    stats = Stats()
    with pytest.raises(TooBig):
        resilient_call(fn, [1], classify, RetryPolicy(attempts=3, max_level=2), stats=stats,
                       sleep=lambda s: None)
    assert stats.escalations == 2 and stats.retries == 2
    # one item cannot be split: levels 0, 1, 2, then two retries at the top level
    assert calls == [([1], 0), ([1], 1), ([1], 2), ([1], 2), ([1], 2)]


def test_fatal_error_is_raised_at_once():
    stats = Stats()
    with pytest.raises(ValueError):
        resilient_call(lambda i, lv: (_ for _ in ()).throw(ValueError("bad")), [1, 2], classify,
                       RetryPolicy(), stats=stats)
    assert stats.attempts == 1


def test_checkpoints_resume_without_redoing_work(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    batches = [Batch(f"b{i}", list(range(i * 3, i * 3 + 3))) for i in range(6)]
    seen: list[str] = []
    lock = threading.Lock()

    def failing(batch):
        with lock:
            seen.append(batch.key)
        if batch.key == "b3":
            raise RuntimeError("killed")
        return frame(batch.items)

    with pytest.raises(RuntimeError):
        run_batches(batches, failing, store, concurrency=1)
    done_first = {p.stem for p in (tmp_path / "ck").glob("*.parquet")}
    assert done_first == {"b0", "b1", "b2"}
    assert not list((tmp_path / "ck").glob("*.tmp"))  # nothing half-written

    seen.clear()
    stats = Stats()
    paths = run_batches(batches, lambda b: (seen.append(b.key), frame(b.items))[1], store,
                        concurrency=3, stats=stats)
    assert sorted(seen) == ["b3", "b4", "b5"]
    assert stats.batches_skipped == 3 and stats.batches_done == 3
    out = read_checkpoints(paths)
    assert sorted(out["item"]) == list(range(18))
    assert out.index.tolist() == list(range(18))  # one frame's index, not the parts'


def test_one_batch_at_a_time_with_concurrency_one_and_each_reported(tmp_path):
    active, most, reported = [0], [0], []
    lock = threading.Lock()

    def work(batch):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return frame(batch.items)

    batches = [Batch(f"b{i}", [i]) for i in range(5)]
    run_batches(batches, work, CheckpointStore(tmp_path), concurrency=1,
                on_done=lambda b: reported.append(b.key))
    assert most[0] == 1
    assert reported == ["b0", "b1", "b2", "b3", "b4"]


def test_duplicate_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^batch keys must be unique$"):
        run_batches([Batch("a", [1]), Batch("a", [2])], lambda b: frame(b.items),
                    CheckpointStore(tmp_path))
