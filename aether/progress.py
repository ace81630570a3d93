"""Rich progress bars that follow Dask's work, whatever the scheduler."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def dask_progress(description: str) -> Iterator[None]:
    """Show a progress bar of finished Dask tasks on stderr while the block runs.

    Silent when stderr is not a terminal, so logs and tests stay clean.
    """
    if not sys.stderr.isatty():
        yield
        return
    from dask.callbacks import Callback
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
    task = progress.add_task(description, total=None)

    class _Bar(Callback):  # type: ignore[misc]
        def _start_state(self, dsk: Any, state: Any) -> None:
            progress.update(task, total=len(dsk), completed=0)

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
            progress.advance(task)

    with progress, _Bar():
        yield
