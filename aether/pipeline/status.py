"""``aether run status``: where each (city, year, step) of a run file stands — the last
report's word on it, the data it was made from, the Earth Engine usage, and what the next
run would redo. Reads only; takes no lock."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aether.io.store import CityStore, runs_dir
from aether.pipeline.plan import plan
from aether.pipeline.runfile import load_run_file
from aether.pipeline.scheduled import check_requests, resolve_latest, run_root


@dataclass
class StepStatus:
    """One (city, year, step) as the data directory has it now."""

    city: str
    year: int
    step: str
    last: str  # its status in the newest report that ran it, or "never run"
    finished: str  # when that run finished
    rows: int | None
    version: str | None  # what its input data was: the source and its dataset (extract)
    eecu_s: float | None  # the Earth Engine usage its export tasks reported
    redo: str  # what the next run would do with it, and why


def run_status(run_file: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None, *,
               strict: bool = False) -> list[StepStatus]:
    """Per planned step: the last report's word on it, and whether its outputs still stand
    (missing or changed outputs are redone; inputs are compared when the run starts).

    ``strict`` (``aether run --dry-run``) checks the run file as ``aether run`` does before
    any work: unset variables, options of another source, every city's request."""
    from aether.io.remote import RemoteDir
    from aether.pipeline.synced import city_rel, local_root, pull_for_reading

    run = load_run_file(run_file, strict=strict)
    target = run_root(run, data_dir)
    with local_root(target) as root:  # a remote directory is read from a fresh mirror
        run = resolve_latest(run, root)
        planned = plan(run)
        if strict:
            check_requests(run, planned, root)
        if isinstance(target, RemoteDir):
            pull_for_reading(target, root, sorted({city_rel(p.task.slug, p.task.year)
                                                   for p in planned}))
        last = _last_reports(root)
        out = []
        for task in (p.task for p in planned):
            row, finished = last.get(task.key, ({}, ""))
            store = CityStore.of(root, task.slug, task.year)
            out.append(StepStatus(
                task.city, task.year, task.step, str(row.get("status", "never run")),
                finished, row.get("rows"),
                _version(store) if task.step == "extract" else None,
                row.get("eecu_s"), _redo(store, task.step)))
    return out


def _last_reports(root: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """Each step's row in the newest report that has it, and that report's end time."""
    from aether.io.tables import read_json

    seen: dict[str, tuple[dict[str, Any], str]] = {}
    for path in sorted(runs_dir(root).glob("*.json"), reverse=True):
        try:
            report = read_json(path)
        except (OSError, ValueError):
            continue
        for row in report.get("tasks", []):
            key = f"{row.get('slug')}/{row.get('year')}/{row.get('step')}"
            seen.setdefault(key, (row, str(report.get("finished", ""))))
    return seen


def _version(store: CityStore) -> str | None:
    """The source and tiles an extract's manifest records (the data it was made from)."""
    from aether.io.tables import read_json

    try:
        m = read_json(store.manifest)
    except (OSError, ValueError):
        return None
    data = m.get("config", {}).get("dataset") or {}
    made = (f", {len(data['tiles'])} tiles" if "tiles" in data
            else f", {len(data['images'])} images" if "images" in data else "")
    snapshot = (m.get("inputs", {}).get("pois_snapshot") or {}).get("as_of")
    return f"{m.get('inputs', {}).get('source')}{made}" + (
        f", POIs as of {snapshot[:10]}" if snapshot else "")


def _redo(store: CityStore, step: str) -> str:
    """'redo: ...' when the step's outputs are missing or changed, else what stands."""
    from aether.io.tables import read_json, sha256_file

    record = store.manifest if step == "extract" else store.step(step)
    try:
        rec = read_json(record)
    except (OSError, ValueError):
        return "redo: never completed"
    outputs = rec.get("outputs", {})
    for name, want in outputs.items():
        digest = want["sha256"] if isinstance(want, dict) else want
        path = store.dir / name
        if not path.is_file() or sha256_file(path) != digest:
            return f"redo: {name} missing or changed"
    return "keep, unless its inputs changed"


def status_table(rows: list[StepStatus]) -> Any:
    """A rich table of ``run_status``."""
    from rich.table import Table

    cols = ("city", "year", "step", "last run", "finished", "rows", "data", "EECU-h",
            "next run")
    cells = [(r.city, str(r.year), r.step, r.last, r.finished,
              "" if r.rows is None else str(r.rows), r.version or "",
              f"{r.eecu_s / 3600:.3g}" if r.eecu_s else "", r.redo) for r in rows]
    # a column no row fills is left out: at 80 columns the others keep their words whole
    keep = [i for i, c in enumerate(cols) if c in ("city", "year", "step", "last run",
                                                   "next run") or any(r[i] for r in cells)]
    table = Table(title="aether run status")
    for i in keep:
        table.add_column(cols[i], justify="right" if cols[i] in ("year", "rows", "EECU-h")
                         else "left")
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    return table


def plan_table(rows: list[StepStatus]) -> Any:
    """A rich table of what ``aether run`` would do with each step (``--dry-run``)."""
    from rich.table import Table

    table = Table(title="aether run --dry-run: nothing is written")
    for col in ("city", "year", "step", "next run"):
        table.add_column(col, justify="right" if col == "year" else "left")
    for r in rows:
        table.add_row(r.city, str(r.year), r.step, r.redo)
    return table
