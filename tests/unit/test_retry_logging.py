"""One retry mechanism (tenacity) whose every retry is logged at debug level."""

from __future__ import annotations

import logging
import random

import pandas as pd

from aether.execution.jobs import RetryPolicy, Stats, Verdict, resilient_call


def test_each_retry_and_escalation_is_logged_at_debug(caplog) -> None:
    """One line each, naming the error by its type and its first line cut at 120 characters
    (an error without a message by its type alone)."""
    errors = [ConnectionError("connection reset by peer\nsecond line"), ConnectionError(),
              MemoryError("User memory limit exceeded. " + "x" * 200)]
    calls = []

    def fn(items, level):
        calls.append(level)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return pd.DataFrame({"level": [level]})

    def classify(e):
        return Verdict.ESCALATE if isinstance(e, MemoryError) else Verdict.RETRY

    stats = Stats()
    with caplog.at_level(logging.DEBUG, logger="aether.execution.jobs"):
        out = resilient_call(fn, [1], classify, RetryPolicy(base_s=0.01), stats=stats,
                             rng=random.Random(0), sleep=lambda s: None)
    assert out["level"].tolist() == [1]
    lines = [r.getMessage() for r in caplog.records
             if r.levelno == logging.DEBUG and r.name == "aether.execution.jobs"]
    assert lines == [
        "retry 1 of 7 in a moment after: ConnectionError: connection reset by peer",
        "retry 2 of 7 in a moment after: ConnectionError: ",
        "escalating to level 1 after: MemoryError: "
        + ("User memory limit exceeded. " + "x" * 200)[:120],
    ]
    assert (stats.retries, stats.escalations, stats.attempts) == (2, 1, 4)


def test_a_split_is_logged_at_debug(caplog) -> None:
    def fn(items, level):
        if len(items) > 2:
            raise TimeoutError("Computation timed out.")
        return pd.DataFrame({"item": list(items)})

    with caplog.at_level(logging.DEBUG, logger="aether.execution.jobs"):
        out = resilient_call(fn, [1, 2, 3, 4], lambda e: Verdict.SPLIT, RetryPolicy(),
                             sleep=lambda s: None)
    assert out["item"].tolist() == [1, 2, 3, 4]
    assert [r.getMessage() for r in caplog.records if r.name == "aether.execution.jobs"] == [
        "splitting 4 items in two"]


def test_library_installs_no_handler() -> None:
    import aether.execution.jobs
    import aether.places.osm_http  # noqa: F401

    assert logging.getLogger("aether").handlers == []
