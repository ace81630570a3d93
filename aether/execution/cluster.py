"""Where Dask work runs: the local threaded scheduler, a LocalCluster, or an existing cluster.

``aether extract`` and ``aether grid`` take ``--scheduler`` (env ``AETHER_DASK_SCHEDULER``):

- ``threads`` (default): Dask's local threaded scheduler, nothing to start;
- ``cluster`` or ``cluster:N``: a ``distributed.LocalCluster`` of N worker processes
  (default 2, one thread each) started for the run and closed after it;
- ``tcp://host:port`` (or ``tls://``, ``ws://``...): an existing Dask scheduler.

Inside ``dask_scheduler`` a distributed ``Client`` is the default, so the sources' plain
``dask.compute`` calls run there unchanged. Tasks that talk to Earth Engine initialise it on
whatever process runs them (``earthengine.session.ensure``), from picklable settings.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aether.errors import DaskError, InputError

if TYPE_CHECKING:
    from dask.delayed import Delayed
    from distributed import Client

SCHEDULER_ENV = "AETHER_DASK_SCHEDULER"
#: How long to wait for an existing scheduler to answer before giving up.
CONNECT_TIMEOUT_S = 5
DEFAULT_WORKERS = 2
#: Tasks per batch on a local scheduler other than threads (results held at once: this many).
LOCAL_BATCH = 16
#: Tasks submitted per worker thread on the local threaded scheduler, so none waits for work.
IN_FLIGHT = 2
_ADDRESS = re.compile(r"^(tcp|tls|ws|wss|inproc|ucx)://[^\s/]+$")


@dataclass(frozen=True)
class Scheduler:
    """A parsed ``--scheduler`` value."""

    kind: str  # "threads" | "cluster" | "address"
    workers: int = DEFAULT_WORKERS
    address: str | None = None


def parse_scheduler(text: str | None) -> Scheduler:
    """``threads`` / ``cluster[:N]`` / ``tcp://host:port``; anything else is an InputError."""
    spec = (text or "threads").strip()
    if spec in ("threads", "local"):
        return Scheduler("threads")
    m = re.fullmatch(r"cluster(?::(\d+))?", spec)
    if m:
        n = int(m.group(1) or DEFAULT_WORKERS)
        if not 1 <= n <= 256:
            raise InputError(f"cannot start a LocalCluster of {n} workers", "use cluster:1..256")
        return Scheduler("cluster", workers=n)
    if _ADDRESS.match(spec):
        return Scheduler("address", address=spec)
    raise InputError(f"cannot read scheduler {spec!r}",
                     "use threads, cluster, cluster:N or tcp://host:port")


@contextlib.contextmanager
def dask_scheduler(text: str | None = None) -> Iterator[Client | None]:
    """Run the block on the scheduler ``text`` names (default: the ``dask_scheduler``
    setting); yields the Client (None for threads)."""
    from aether.settings import current

    text = text or current().dask_scheduler
    spec = parse_scheduler(text)
    if spec.kind == "threads":
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DaskError(f"--scheduler {text} needs dask.distributed",
                        "pip install 'aether[ee]', or use --scheduler threads") from None
    if spec.kind == "cluster":
        with LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster, \
                Client(cluster) as client:
            yield client
        return
    try:
        client = Client(spec.address, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError) as e:
        raise DaskError(f"cannot reach the Dask scheduler at {spec.address} "
                        f"({type(e).__name__} after {CONNECT_TIMEOUT_S} s)",
                        f"start it (`dask scheduler`) or unset --scheduler / {SCHEDULER_ENV}"
                        ) from None
    with client:
        yield client


def as_completed(tasks: Sequence[Delayed]) -> Iterator[Any]:
    """Results of delayed tasks as they finish, so callers fold them in bounded memory.

    On a distributed Client (inside ``dask_scheduler``) in completion order; on the local
    threaded scheduler ``IN_FLIGHT`` tasks per worker thread at a time, each result handed
    on as soon as it is done (results held at once: about that many, whatever the task
    count); any other configured Dask scheduler runs in batches of ``LOCAL_BATCH``.
    """
    import dask

    try:
        from distributed import as_completed as futures_completed
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):  # no distributed, or no Client running
        client = None
    if client is not None:
        for future in futures_completed(client.compute(list(tasks))):
            yield future.result()
            future.release()
        return
    if dask.config.get("scheduler", None) in (None, "threads", "threading"):
        yield from _threads_completed(tasks, int(dask.config.get("num_workers", None)
                                                 or os.cpu_count() or 1))
        return
    for s in range(0, len(tasks), LOCAL_BATCH):
        yield from dask.compute(*tasks[s : s + LOCAL_BATCH])


def _threads_completed(tasks: Sequence[Delayed], workers: int) -> Iterator[Any]:
    """``tasks`` on ``workers`` threads (each task's own graph run in its thread), results
    in completion order with at most ``IN_FLIGHT * workers`` submitted and not yet taken."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    todo = iter(tasks)
    with ThreadPoolExecutor(workers, thread_name_prefix="aether-task") as pool:
        pending: set[Future[Any]] = set()
        for task in itertools.islice(todo, IN_FLIGHT * workers):
            pending.add(pool.submit(task.compute, scheduler="sync"))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                for task in itertools.islice(todo, 1):
                    pending.add(pool.submit(task.compute, scheduler="sync"))
                yield future.result()
