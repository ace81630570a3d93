"""Rich progress bars that follow Dask's work, whatever the scheduler.

On the local scheduler a Dask callback counts finished tasks. On a distributed cluster the
tasks run elsewhere, so a small scheduler plugin counts tasks entering the graph and tasks
finishing, and a thread here polls those counts (``follow_cluster``).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

#: Seconds between two polls of the cluster's counts.
POLL_S = 0.25


@contextlib.contextmanager
def dask_progress(description: str) -> Iterator[None]:
    """Show a progress bar of finished Dask tasks on stderr while the block runs.

    Follows the current distributed Client when there is one (``aether.execution.cluster``), the
    local scheduler otherwise. Silent when stderr is not a terminal, so logs and tests
    stay clean.
    """
    if not sys.stderr.isatty():
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
    task = progress.add_task(description, total=None)
    client = _current_client()
    if client is not None:
        with progress, follow_cluster(
                client, lambda total, done: progress.update(task, total=total, completed=done)):
            yield
        return
    from dask.callbacks import Callback

    class _Bar(Callback):
        def _start_state(self, dsk: Any, state: Any) -> None:
            progress.update(task, total=len(dsk), completed=0)

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
            progress.advance(task)

    with progress, _Bar():
        yield


def _current_client() -> Any:
    """The default distributed Client, if distributed is in use at all."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


@contextlib.contextmanager
def follow_cluster(client: Any, update: Callable[[int, int], None]) -> Iterator[None]:
    """Call ``update(total, done)`` with the cluster's task counts while the block runs."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class _Counter(SchedulerPlugin):
        """Tasks that entered the graph / finished since the plugin was added."""

        def __init__(self) -> None:
            self.total = 0
            self.done = 0

        def transition(self, key: Any, start: str, finish: str, *args: Any, **kw: Any) -> None:
            if start == "released" and finish == "waiting":
                self.total += 1
            elif finish in ("memory", "erred") and start == "processing":
                self.done += 1

    name = f"aether-progress-{uuid.uuid4().hex[:8]}"

    def counts(dask_scheduler: Any) -> tuple[int, int]:
        p = dask_scheduler.plugins[name]
        return p.total, p.done

    client.register_plugin(_Counter(), name=name)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_S):
            with contextlib.suppress(Exception):  # a poll lost at shutdown is harmless
                update(*client.run_on_scheduler(counts))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(Exception):
            update(*client.run_on_scheduler(counts))
            client.unregister_scheduler_plugin(name)
