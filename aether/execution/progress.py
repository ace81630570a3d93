"""The one place progress is shown: rich bars on stderr, one live display for all of them.

``bar`` is a counted step (features, epochs, seeds, texts; no total: a step of unknown
length, such as loading a model); bars opened while another is open stack in the same
display. Bars are shown when stderr is a terminal or the code runs in a Jupyter notebook
(rich draws them there as a widget), and the ``aether`` logger lets warnings through
(``--quiet`` raises it to errors), so logs, pipes and tests stay clean. Libraries' own bars
(sentence-transformers, transformers) are turned off: this is the one owner.

``dask_progress`` follows Dask's work, whatever the scheduler. On the local scheduler a Dask
callback counts finished tasks (its bar appears when a graph starts, not before). On a
distributed cluster the tasks run elsewhere, so a small scheduler plugin counts tasks entering
the graph and tasks finishing, and a thread here polls those counts (``follow_cluster``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

#: Seconds between two polls of the cluster's counts.
POLL_S = 0.25


_live: Any = None  # the rich Progress shown while any bar is open
_open = 0  # bars open in it


def enabled() -> bool:
    """Whether bars are shown: stderr is a terminal or a notebook's, and aether is not told to
    be quiet."""
    return (sys.stderr.isatty() or in_notebook()) and logging.getLogger(
        "aether").isEnabledFor(logging.WARNING)


@functools.cache
def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's, already imported by it: a plain
    script never imports IPython for this)."""
    if "IPython" not in sys.modules:
        return False
    from rich.console import Console

    return bool(Console().is_jupyter)


class Bar:
    """One counted step; every method is a no-op when bars are not shown."""

    def __init__(self, task: Any = None) -> None:
        self._task = task

    def advance(self, n: float = 1) -> None:
        if self._task is not None:
            _live.advance(self._task, n)

    def update(self, *, total: float | None = None, completed: float | None = None,
               note: str | None = None) -> None:
        """Set the total, the count, or the note shown after the count (e.g. the loss)."""
        if self._task is None:
            return
        fields = {} if note is None else {"note": note}
        _live.update(self._task, total=total, completed=completed, **fields)


@contextlib.contextmanager
def bar(description: str, total: float | None = None) -> Iterator[Bar]:
    """A bar for the block (``total`` None: unknown until ``update(total=...)``)."""
    global _live, _open
    if not enabled():
        yield Bar()
        return
    if _live is None:
        _live = _progress()
        _live.start()
    _open += 1
    task = _live.add_task(description, total=total, note="")
    try:
        yield Bar(task)
    finally:
        _live.refresh()  # its last count is drawn once, however short the step
        _live.remove_task(task)
        _open -= 1
        if _open == 0:
            _live.stop()
            _live = None


#: Columns a bar's count, time and bar itself always get; description and note share the
#: rest of the terminal's width, cut with an ellipsis (never the count: no "0/…" at 80).
_COUNT_W, _TIME_W, _NOTE_W = 13, 7, 18


def _progress() -> Any:
    """The one rich Progress display: description, bar, count, time, note on one line that
    fits the terminal (80 columns and up: the bar narrows, then the texts are cut)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Column

    console = Console(stderr=True)
    width = console.width
    bar_w = 40 if width >= 120 else 20 if width >= 90 else 10
    text_w = max(12, width - bar_w - _COUNT_W - _TIME_W - _NOTE_W - 5)  # 5: the gaps
    return Progress(
        TextColumn("{task.description}", style="progress.description", markup=False,
                   table_column=Column(max_width=text_w, no_wrap=True, overflow="ellipsis")),
        BarColumn(bar_width=bar_w),
        MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=3)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[note]}", markup=False,
                   table_column=Column(max_width=_NOTE_W, no_wrap=True, overflow="ellipsis")),
        console=console, transient=True,
        # a notebook shows the bars as a widget of their own: print() is left to the cell
        redirect_stdout=not in_notebook(), redirect_stderr=not in_notebook())


@contextlib.contextmanager
def dask_progress(description: str) -> Iterator[None]:
    """Show a bar of finished Dask tasks while the block runs (see the module doc).

    Follows the current distributed Client when there is one (``aether.execution.cluster``),
    the local scheduler otherwise.
    """
    if not enabled():
        yield
        return
    client = _current_client()
    if client is not None:
        with bar(description) as b, follow_cluster(
                client, lambda total, done: b.update(total=total, completed=done)):
            yield
        return
    from dask.callbacks import Callback

    with contextlib.ExitStack() as stack:

        class _Bar(Callback):
            current: Bar | None = None

            def _start_state(self, dsk: Any, state: Any) -> None:
                if self.current is None:
                    self.current = stack.enter_context(bar(description))
                self.current.update(total=len(dsk), completed=0)

            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
                if self.current is not None:
                    self.current.advance()

        with _Bar():
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
