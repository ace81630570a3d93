"""One retry mechanism (tenacity) whose every retry is logged at debug level."""

from __future__ import annotations

import logging
import random

import pandas as pd

from aether.execution.jobs import RetryPolicy, Stats, Verdict, resilient_call


def test_each_retry_and_escalation_is_logged_at_debug(caplog) -> None:
    calls = []

    def fn(items, level):
        calls.append(level)
        if len(calls) <= 2:
            raise ConnectionError("connection reset by peer")
        if len(calls) == 3:
            raise MemoryError("User memory limit exceeded.")
        return pd.DataFrame({"level": [level]})

    def classify(e):
        return Verdict.ESCALATE if isinstance(e, MemoryError) else Verdict.RETRY

    stats = Stats()
    with caplog.at_level(logging.DEBUG, logger="aether.execution.jobs"):
        out = resilient_call(fn, [1], classify, RetryPolicy(base_s=0.01), stats=stats,
                             rng=random.Random(0), sleep=lambda s: None)
    assert out["level"].tolist() == [1]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum("retry" in m and "connection reset by peer" in m for m in lines) == 2
    assert sum("escalating to level 1" in m for m in lines) == 1
    assert (stats.retries, stats.escalations, stats.attempts) == (2, 1, 4)


def test_library_installs_no_handler() -> None:
    import aether.execution.jobs
    import aether.places.osm_http  # noqa: F401

    assert logging.getLogger("aether").handlers == []
