"""Chunked, resumable, retrying work: what makes long extractions and scheduled runs restartable.

Work is cut into batches with stable keys. Each finished batch is written as one Parquet
checkpoint (atomically: temp file then rename), so a process killed at any moment leaves
only whole checkpoints behind; a re-run skips them and no batch is ever counted twice.

A batch call can fail three ways, and ``Verdict`` says which:

- ``RETRY``: transient (quota 429, 5xx, dropped connection) — sleep with exponential
  backoff and full jitter, then try again;
- ``ESCALATE``: the request is too heavy for the server as posed (memory) — try again at a
  higher ``level`` (for Earth Engine: a larger ``tileScale``);
- ``SPLIT``: the batch is too big (timeouts, aggregation limits) — run it as two halves.

When one remedy is exhausted the next is tried (escalate → split → retry), so every path
terminates after a bounded number of attempts.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:  # pandas is imported where a frame is made: a run's client never needs it
    import pandas as pd

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    """What to do about a failed attempt."""

    RETRY = "retry"
    ESCALATE = "escalate"
    SPLIT = "split"
    FAIL = "fail"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the recovery loop. Delays grow as ``base_s * 2**n`` up to ``cap_s``."""

    attempts: int = 8  # transient failures tolerated per (sub-)batch
    base_s: float = 0.5
    cap_s: float = 30.0
    max_level: int = 4  # escalation steps (tileScale 1, 2, 4, 8, 16)
    min_items: int = 1  # never split below this

    def delay(self, n: int, rng: random.Random) -> float:
        """Full-jitter backoff: uniform in [0, min(cap, base·2ⁿ)] (spreads synchronized retries)."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2.0**n))


@dataclass
class Batch(Generic[T]):
    """A unit of work with a stable key (its checkpoint name)."""

    key: str
    items: Sequence[T]


@dataclass
class Stats:
    """Counters of one run, shared by the worker threads."""

    attempts: int = 0
    retries: int = 0
    escalations: int = 0
    splits: int = 0
    batches_done: int = 0
    batches_skipped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


class _Transient(Exception):
    """A failed attempt worth retrying after a back-off (the original error is its cause)."""


class _Escalated(Exception):
    """A failed attempt retried at once at a higher level."""


def resilient_call(
    fn: Callable[[Sequence[T], int], R],
    items: Sequence[T],
    classify: Callable[[BaseException], Verdict],
    policy: RetryPolicy,
    *,
    stats: Stats | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
    level: int = 0,
) -> R:
    """``fn(items, level)`` with retries, escalation and splitting; halves are concatenated
    (splitting is for calls returning frames; a ``classify`` that never says SPLIT may
    return anything).

    The retry loop is tenacity's: transient failures back off (``policy.delay``), escalations
    go again at once one level up, and each retry is logged at debug level. Halves start at
    the level their parent reached. Raises the last error when a failure is fatal or the
    attempts are used up.
    """
    import tenacity

    stats = stats or Stats()
    rng = rng or random.Random()
    state = {"level": level, "transient": 0}

    def attempt() -> R:
        stats.bump("attempts")
        try:
            return fn(items, state["level"])
        except Exception as e:
            verdict = _remedy(classify(e), state["level"], len(items), policy)
            if verdict is Verdict.ESCALATE:
                stats.bump("escalations")
                state["level"] += 1
                log.debug("escalating to level %d after: %s", state["level"], _short(e))
                raise _Escalated() from e
            if verdict is Verdict.RETRY:
                state["transient"] += 1
                raise _Transient() from e
            raise  # FAIL, or SPLIT (done below, outside the retry loop)

    def wait(retry: tenacity.RetryCallState) -> float:
        if _last(retry, _Escalated):
            return 0.0
        return policy.delay(state["transient"] - 1, rng)

    def before_sleep(retry: tenacity.RetryCallState) -> None:
        if _last(retry, _Transient):
            stats.bump("retries")
            log.debug("retry %d of %d in a moment after: %s", state["transient"],
                      policy.attempts - 1, _short(_cause(retry)))

    def pause(seconds: float) -> None:
        if state.pop("sleeping", 0):
            sleep(seconds)

    def stop(retry: tenacity.RetryCallState) -> bool:
        transient = _last(retry, _Transient)
        state["sleeping"] = int(transient)
        return transient and state["transient"] >= policy.attempts

    def give_up(retry: tenacity.RetryCallState) -> R:
        raise _cause(retry)

    try:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((_Transient, _Escalated)), stop=stop,
            wait=wait, before_sleep=before_sleep, sleep=pause, retry_error_callback=give_up,
        )(attempt)
    except Exception as e:
        if _remedy(classify(e), state["level"], len(items), policy) is not Verdict.SPLIT:
            raise
    stats.bump("splits")
    mid = len(items) // 2
    log.debug("splitting %d items in two", len(items))
    halves = [resilient_call(fn, part, classify, policy, stats=stats, rng=rng, sleep=sleep,
                             level=state["level"])
              for part in (items[:mid], items[mid:])]
    import pandas as pd

    return cast(R, pd.concat(halves, ignore_index=True))


def _remedy(verdict: Verdict, level: int, n_items: int, policy: RetryPolicy) -> Verdict:
    """The verdict, moved on to the next remedy when its own is exhausted."""
    if verdict is Verdict.ESCALATE and level >= policy.max_level:
        verdict = Verdict.SPLIT
    if verdict is Verdict.SPLIT and n_items <= policy.min_items:
        verdict = Verdict.ESCALATE if level < policy.max_level else Verdict.RETRY
    return verdict


def _last(retry: Any, kind: type[BaseException]) -> bool:
    return retry.outcome is not None and isinstance(retry.outcome.exception(), kind)


def _cause(retry: Any) -> BaseException:
    """The original error behind the last attempt's wrapper."""
    err = retry.outcome.exception()
    return err.__cause__ or err


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


class CheckpointStore:
    """One Parquet file per finished batch in ``directory``: ``<key>.parquet``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.parquet"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def save(self, key: str, df: pd.DataFrame) -> Path:
        from aether.io.tables import write_parquet

        return write_parquet(df, self.path(key))


def run_batches(
    batches: Sequence[Batch[T]],
    work: Callable[[Batch[T]], pd.DataFrame],
    store: CheckpointStore,
    *,
    concurrency: int = 8,
    stats: Stats | None = None,
    on_done: Callable[[Batch[T]], None] | None = None,
) -> list[Path]:
    """Run ``work`` on every batch without a checkpoint, ``concurrency`` at a time.

    Returns the checkpoint paths of all batches, in batch order. On the first failure the
    batches not yet started are cancelled, the running ones finish (their checkpoints are
    kept for the next run), and the error is raised.
    """
    stats = stats or Stats()
    keys = [b.key for b in batches]
    if len(set(keys)) != len(keys):
        raise ValueError("batch keys must be unique")
    todo = [b for b in batches if not store.has(b.key)]
    stats.bump("batches_skipped", len(batches) - len(todo))

    stop = threading.Event()

    def one(batch: Batch[T]) -> None:
        if stop.is_set():
            return
        try:
            df = work(batch)
        except BaseException:
            stop.set()
            raise
        store.save(batch.key, df)
        stats.bump("batches_done")
        if on_done is not None:
            on_done(batch)

    if todo:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = [pool.submit(one, b) for b in todo]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                for f in futures:
                    f.cancel()
                raise failed[0].exception()  # type: ignore[misc]
    return [store.path(k) for k in keys]


def read_checkpoints(paths: Sequence[Path]) -> pd.DataFrame:
    """All checkpoints as one pandas frame: one ``dask.delayed`` read per batch, in parallel.

    (``dask.delayed`` rather than ``dask.dataframe``: the latter costs seconds to import.)
    """
    import dask
    import pandas as pd

    if not paths:
        return pd.DataFrame()
    parts = dask.compute(*[dask.delayed(pd.read_parquet)(p) for p in paths])
    return pd.concat(parts, ignore_index=True)
