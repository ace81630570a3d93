"""A run file's cities on a Dask cluster: every (city, year, step) one task, on the workers.

The client plans, sends and watches; it computes and writes no table. Each city-year is a
chain of tasks (extract, then train, then encode), each taking the one before it as its
input, so cities and years run in parallel and a step starts as soon as its input exists.
A joint train (``train: {cities}``) takes every one of its cities' extracts of that year,
and each of their encodes takes it.
A task runs ``scheduled.run_step`` on a worker, which writes that step's tables into the
shared data directory atomically (as every writer does), under the lock the client holds
(``io.store.lent_lock``): a task whose run has ended or died writes nothing. The client then
writes the run report. A worker that dies mid-task has its task run again elsewhere by Dask;
every step is idempotent, so the outputs are those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether.pipeline.runfile import City, RunFile

if TYPE_CHECKING:
    from aether.pipeline.plan import Planned, Step
    from aether.settings import Settings

#: ``scheduled.run_step``'s signature: the one step function, handed in by the caller (so
#: this module does not import the one that imports it).
StepFn = Callable[[RunFile, City, "Step", Path, Path | None, Callable[[str], None]],
                  Path | None]

log = logging.getLogger(__name__)


def run_on_cluster(run: RunFile, planned: list[Planned], root: Path,
                   settings: Settings, scheduler: str | None, step: StepFn,
                   say: Callable[[str], None], *, lend: bool = True) -> None:
    """Do every planned step as a task on the cluster ``scheduler`` names, after the tasks
    of the steps it runs after; fills in the ``Step`` records in place (the report's rows).

    ``lend``: the tasks write into ``root`` under the lock this process holds on it; else
    (a remote data directory) ``step`` syncs its own mirror and checks the run's lease."""
    from distributed import as_completed

    from aether.execution.cluster import check_versions, dask_scheduler
    from aether.io.store import lock_token

    token = lock_token(root) if lend else None
    with dask_scheduler(scheduler) as client:
        assert client is not None
        check_versions(client)
        info = client.scheduler_info()
        link = client.dashboard_link if info.get("services", {}).get("dashboard") else None
        say(f"cluster {info.get('address')}: {len(info.get('workers', {}))} workers"
            + (f", dashboard {link}" if link else ""))
        futures: dict[Any, Step] = {}
        by_key: dict[str, Any] = {}
        run_key = token or uuid.uuid4().hex
        for p in planned:  # the plan's order: what a step runs after is already sent
            future = client.submit(
                _remote_step, step, run, p.city, p.task, root, settings, token,
                [by_key[k] for k in p.after], key=f"aether-{p.task.key}-{run_key}",
                pure=False)
            by_key[p.task.key] = future
            futures[future] = p.task
        total: dict[str, int] = {}
        for t in futures.values():
            total[t.step] = total.get(t.step, 0) + 1
        done: dict[str, int] = dict.fromkeys(total, 0)
        for future in as_completed(futures):
            result, _, lines = future.result()
            row = futures[future]
            row.__dict__.update(result.__dict__)
            done[row.step] += 1
            for line in lines:
                say(line)
            say("  ".join(f"{s} {done[s]}/{total[s]}" for s in total))


def _remote_step(step: StepFn, run: RunFile, city: City, task: Step, root: Path,
                 settings: Settings, token: str | None,
                 before: list[tuple[Step, Path | None, list[str]]]
                 ) -> tuple[Step, Path | None, list[str]]:
    """One step on a worker: (its record, the folder for the next step, what it said).
    ``before``: the results of the steps it runs after (Dask passes them once done)."""
    from aether.execution.cluster import local_threads
    from aether.io.store import lent_lock
    from aether.pipeline.plan import step_input
    from aether.settings import use_settings

    lines: list[str] = []
    city_dir = step_input([b[1] for b in before])
    from distributed import get_worker

    worker = get_worker()
    task.worker = str(worker.address)
    lent = lent_lock(root, token) if token else contextlib.nullcontext(root)
    with lent, use_settings(settings), local_threads(worker.state.nthreads):
        out = step(run, city, task, root, city_dir, lines.append)
    return task, out, lines
