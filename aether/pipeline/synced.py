"""A run's steps on a remote data directory (``aether run --data-dir s3://…``): each step
pulls its city-year into a local mirror, runs there as on a local disk, and pushes what it
wrote, commit records last (``io.remote``). The same wrapper serves a run here and a run on
Dask workers that share no disk with the client or with each other."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aether.io.remote import Lease, RemoteDir
from aether.io.store import RUNS_DIR, data_lock

if TYPE_CHECKING:
    from aether.pipeline.fleet import StepFn
    from aether.pipeline.plan import Step
    from aether.pipeline.runfile import City, RunFile


def city_rel(slug: str, year: int) -> str:
    """A city-year's folder below the data directory."""
    return f"{slug}/{year}"


@dataclass(frozen=True)
class SyncedStep:
    """``step`` (``scheduled.run_step``) around a pull and a push of its city-year (and of
    the other city-years it reads: a joint train's cities, the folder of the model an
    encode applies; ``plan.step_slugs``); the push commits only while the run still
    holds the lease named ``lease``, its own city-year last. Picklable: a Dask task
    carries it."""

    remote: RemoteDir
    lease: str
    step: StepFn

    def __call__(self, run: RunFile, city: City, task: Step, root: Path,
                 city_dir: Path | None, say: Callable[[str], None]) -> Path | None:
        from aether.pipeline.plan import step_slugs
        from aether.settings import use_settings

        rels = [city_rel(slug, task.year) for slug in step_slugs(run, task)]
        with self.remote.workspace() as local, use_settings(data_dir=local):
            for rel in rels:
                self.remote.pull(local, rel)
            out = self.step(run, city, task, local,
                            None if city_dir is None else local / rels[0], say)
            for rel in reversed(rels):  # its own records last
                self.remote.push(local, rel, self.lease)
        if task.out_dir:  # the report names the remote objects, not this machine's mirror
            task.out_dir = task.out_dir.replace(str(local), self.remote.url, 1)
        return out


@contextlib.contextmanager
def local_root(target: Path | RemoteDir) -> Iterator[Path]:
    """Where a run works: the data directory itself, or a mirror slot of a remote one."""
    if isinstance(target, RemoteDir):
        with target.workspace() as local:
            yield local
    else:
        yield target


@contextlib.contextmanager
def one_writer(target: Path | RemoteDir) -> Iterator[str | None]:
    """The run's one-writer lock: ``flock`` on a local directory (yields None), the lease
    object on a remote one (yields its token, which every step's push checks)."""
    if isinstance(target, RemoteDir):
        with Lease(target).held() as lease:
            yield lease.token
    else:
        with data_lock(target):
            yield None


def pull_for_reading(target: RemoteDir, local: Path, rels: list[str]) -> None:
    """What ``aether run status`` reads: the city-years' folders and the run reports."""
    for rel in [*rels, RUNS_DIR]:
        target.pull(local, rel)
