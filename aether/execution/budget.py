"""An Earth Engine compute budget shared by every process of a run: a ledger file.

Earth Engine bills batch work in EECU-seconds, reported per export task when it ends
(``batchEecuUsageSeconds`` in the operation's metadata). A run's budget (``max_eecu_hours``)
is checked before each new task starts: when what the run has spent plus the mean cost of
its tasks so far would pass it, no new task starts (running ones finish, their tables are
kept) and ``BudgetError`` says so. A quota error Earth Engine itself raises (a monthly cap)
is written to the ledger too, so every other city and worker stops before its next task.

The ledger is a JSON-lines file in the data directory (the one state a cluster shares):
one line per finished task, appended under ``flock``; a task's cost is counted once however
often it is read back. On a data directory in object storage (``aether run --data-dir
s3://…``, whose workers share no disk) the ledger is a folder of objects instead, one per
finished task named by the task (written once, never changed: a second write of the same
task writes the same value) and one for the halt, so every worker reads what all have
spent. Interactive requests (``computeFeatures``) report no usage, so only export tasks are
counted (``ee`` refuses a budget without ``--export``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aether.errors import BudgetError
from aether.io.store import file_lock

log = logging.getLogger(__name__)

#: The key of the ledger line that stops every later task (Earth Engine's own quota).
HALT = "halt"


@dataclass
class EecuBudget:
    """At most ``max_eecu_s`` EECU-seconds (None: no limit, the ledger only counts), counted
    in ``ledger`` (None: in this process only; a URL: a folder of objects, ``RemoteLedger``)."""

    ledger: Path | str | None
    max_eecu_s: float | None = None
    _memory: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _remote: RemoteLedger | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from aether.settings import as_url, is_url

        if self.ledger is not None and is_url(self.ledger):
            self._remote = RemoteLedger(as_url(self.ledger))
        elif self.ledger is not None:
            self.ledger = Path(self.ledger)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        if self._remote is not None or self.ledger is None:
            return contextlib.nullcontext()  # objects are written whole, once per task
        return file_lock(Path(self.ledger))

    def _entries(self) -> tuple[dict[str, float], str | None]:
        """Cost per task and the halt message, if any (a torn last line is skipped)."""
        costs: dict[str, float] = {}
        halt = None
        for rec in self._records():
            if HALT in rec:
                halt = str(rec[HALT])
            else:
                costs[str(rec["task"])] = float(rec["eecu_s"])
        return costs, halt

    def _records(self) -> list[dict[str, Any]]:
        if self._remote is not None:
            return self._remote.records()
        if self.ledger is None:
            return list(self._memory)
        try:
            lines = Path(self.ledger).read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def spent(self) -> float:
        """EECU-seconds of the tasks counted so far."""
        return sum(self._entries()[0].values())

    def check(self, new_task: bool = True) -> None:
        """BudgetError when the run was halted or, before a ``new_task``, when it would
        (at the mean cost of the tasks so far) pass the budget."""
        costs, halt = self._entries()
        if halt is not None:
            raise _exhausted(halt)
        if self.max_eecu_s is None or not new_task:
            return
        spent = sum(costs.values())
        estimate = spent / len(costs) if costs else 0.0
        if spent + estimate > self.max_eecu_s:
            raise BudgetError(
                f"Earth Engine budget reached: {spent / 3600:.4g} of "
                f"{self.max_eecu_s / 3600:.4g} EECU-hours spent, the next task would pass it",
                "re-run (with a larger max_eecu_hours) to go on; finished batches are kept")

    def charge(self, task: str, eecu_s: float | None) -> None:
        """Count a finished task (once, however often it is read)."""
        if eecu_s is None:
            log.warning("Earth Engine reported no batchEecuUsageSeconds for %s: the budget "
                        "counts it as 0", task)
            eecu_s = 0.0
        with self._locked():
            if task in self._entries()[0]:
                return
            self._append({"task": task, "eecu_s": float(eecu_s)})

    def halt(self, message: str) -> BudgetError:
        """Stop every later task of the run (Earth Engine's own quota is exhausted); the
        error to raise here."""
        with self._locked():
            self._append({HALT: message})
        return _exhausted(message)

    def _append(self, rec: dict[str, Any]) -> None:
        if self._remote is not None:
            self._remote.put(rec)
            return
        if self.ledger is None:
            self._memory.append(rec)
            return
        fd = os.open(Path(self.ledger), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                     0o644)
        try:
            os.write(fd, (json.dumps(rec) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _exhausted(message: str) -> BudgetError:
    return BudgetError(f"Earth Engine quota exhausted: {message}",
                       "no new task starts this run; re-run when the quota resets "
                       "(finished batches are kept)")


class RemoteLedger:
    """A ledger as a folder of objects (fsspec): ``<task hash>.json`` per finished task and
    ``halt.json``. Objects never change once written, so each is read once per process."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self._seen: dict[str, dict[str, Any]] = {}

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far, by anyone (a torn or foreign object is skipped)."""
        try:
            names = sorted(self.fs.ls(self.root, detail=False, refresh=True))
        except FileNotFoundError:
            return []
        for name in names:
            if name.endswith(".json") and name not in self._seen:
                try:
                    self._seen[name] = json.loads(self.fs.cat_file(name))
                except (FileNotFoundError, ValueError):
                    continue
        return [self._seen[n] for n in names if n in self._seen]

    def put(self, rec: dict[str, Any]) -> None:
        """One object per task (named by its hash: task names hold slashes), or the halt."""
        import hashlib

        key = (HALT if HALT in rec
               else hashlib.sha256(str(rec["task"]).encode()).hexdigest()[:32])
        self.fs.pipe_file(f"{self.root}/{key}.json", json.dumps(rec).encode())
