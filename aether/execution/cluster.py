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
import contextvars
import itertools
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
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
    assert spec.address is not None
    probe_scheduler(spec.address)
    try:
        client = Client(spec.address, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError) as e:
        raise DaskError(f"cannot reach the Dask scheduler at {spec.address} "
                        f"({type(e).__name__} after {CONNECT_TIMEOUT_S} s)",
                        f"start it (`dask scheduler`) or unset --scheduler / {SCHEDULER_ENV}"
                        ) from None
    with client:
        yield client


#: Largest handshake a Dask scheduler sends on connect (it is a few hundred bytes).
_HANDSHAKE_MAX = 1 << 20


def probe_scheduler(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, within ``timeout_s``, an address that is not a Dask scheduler.

    A Dask TCP peer writes its handshake as soon as a connection opens: an 8-byte length,
    then a msgpack map naming the Python and pickle versions. Anything else (nothing, as an
    HTTP server that waits for a request; or bytes of another protocol, whose first eight
    read as a length of exabytes) is one line instead of a hang or a traceback. Only plain
    ``tcp://`` addresses are probed; TLS and others are left to the client.
    """
    import socket
    import struct
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme != "tcp" or parts.hostname is None or parts.port is None:
        return
    hint = f"start it (`dask scheduler`) or unset --scheduler / {SCHEDULER_ENV}"
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            head = _read_exactly(sock, 8)
            (size,) = struct.unpack("<Q", head)
            if not 0 < size <= _HANDSHAKE_MAX:
                raise DaskError(f"{address} is not a Dask scheduler (its first bytes are "
                                f"{head!r}, not a Dask handshake)", hint)
            body = _read_exactly(sock, size)
    except TimeoutError:
        raise DaskError(f"{address} is not a Dask scheduler: no Dask handshake within "
                        f"{timeout_s:g} s", hint) from None
    except OSError as e:
        raise DaskError(f"cannot reach the Dask scheduler at {address} ({e.strerror or e})",
                        hint) from None
    if b"pickle-protocol" not in body:
        raise DaskError(f"{address} is not a Dask scheduler (its handshake names no pickle "
                        "protocol)", hint)


def _read_exactly(sock: Any, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionResetError(0, "the connection closed during the handshake")
        out += chunk
    return out


def check_versions(client: Client) -> None:
    """Refuse a cluster whose workers run another aether than this one (one line naming both):
    a step computed by another version would not be the step this run records."""
    from aether._version import VERSION, installed_version

    found = client.run(installed_version)
    other = sorted({f"{v} (worker {w})" for w, v in found.items() if v != VERSION})
    if other:
        raise DaskError(f"the cluster's workers run aether {other[0]}"
                        + (f" and {len(other) - 1} more" if len(other) > 1 else "")
                        + f", this client aether {VERSION}",
                        "install the same aether on the client and every worker")


def cluster_slots(name: str, limit: int) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """Leases shared by the whole cluster: inside a task on a Dask worker, a distributed
    Semaphore of ``limit`` leases named ``name`` (every worker's requests together stay under
    it); elsewhere a no-op, where the caller's own thread pool is the cap. Call it in the
    task's thread (where the worker is known); the leases may be taken from any thread."""
    try:
        from distributed import Semaphore, get_worker

        get_worker()
    except (ImportError, ValueError):
        return contextlib.nullcontext
    semaphore = Semaphore(max_leases=limit, name=name)
    return lambda: semaphore


#: Set inside a task that runs on a Dask worker: its own Dask work stays on its threads.
_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("aether_local_dask", default=False)


@contextlib.contextmanager
def local_threads(n: int) -> Iterator[None]:
    """Run the block's Dask work on ``n`` local threads, even inside a distributed worker
    (a whole step is one cluster task; its pixel windows are that worker's threads' work)."""
    import dask

    token = _LOCAL.set(True)
    try:
        with dask.config.set(scheduler="threads", num_workers=max(1, n)):
            yield
    finally:
        _LOCAL.reset(token)


def as_completed(tasks: Sequence[Delayed]) -> Iterator[Any]:
    """Results of delayed tasks as they finish, so callers fold them in bounded memory.

    On a distributed Client (inside ``dask_scheduler``) in completion order; on the local
    threaded scheduler ``IN_FLIGHT`` tasks per worker thread at a time, each result handed
    on as soon as it is done (results held at once: about that many, whatever the task
    count); any other configured Dask scheduler runs in batches of ``LOCAL_BATCH``.
    """
    import dask

    client = None
    # a Client exists only where distributed was imported: a local run does not import it
    # (a third of a second of CPU) to learn that there is none
    if "distributed" in sys.modules and not _LOCAL.get():
        from distributed import as_completed as futures_completed
        from distributed import default_client

        try:
            client = default_client()
        except ValueError:  # no Client running
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
