"""Scheduled runs: read a run file and do each (city, year, step) once (``aether run``).

Why it can run unattended on a timer:

* **Idempotent.** ``extract`` is skipped when its manifest's config hash (POI content, tiles
  index, radii, year, source options) and output checksums still match; ``train`` and
  ``encode`` keep a step record (hash of their inputs + checksums of their outputs) in
  ``<city>/<year>/.aether-steps/``. A new POI snapshot or a new year changes a hash, so only
  that work is redone.
* **One writer at a time.** ``<data>/.aether-run.lock`` is held with ``fcntl.flock`` for the
  whole run (the kernel frees it when the process dies, even by SIGKILL); a second run, or a
  standalone ``extract``/``grid``/``train``/``encode`` on the same data directory, is refused
  with one line (exit 2). See ``aether.io.store.data_lock``.
* **Failures stay local.** A city that fails (geocoding, POIs, the source) is reported and
  the others go on; its later steps are skipped (and a train it shares with other cities,
  ``train: {cities}``: see ``pipeline.plan``). The run ends with a table and exit 1 if
  anything failed.
* **Resumable.** Every write is atomic and sources checkpoint their batches, so a killed run
  is finished by the next one. Earth Engine export tasks live in the source's task book
  (``<city>/<year>/.work/ee/export_tasks.json``): a later run adopts them instead of
  starting duplicates; their ids are copied into the run report.
* **A report per run**: ``<data>/runs/<run_id>.json``.

``AETHER_RUN_KILL_AT=<point>[,<point>...]`` makes the process SIGKILL itself at a named point
(``locked``, ``before:<slug>/<year>/<step>``, ``after:<slug>/<year>/<step>``, ``report``):
the crash-safety tests use it to kill a run at exact places.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether.errors import AetherError, BudgetError, ConfigError
from aether.io.store import CityStore, new_run_id, runs_dir
from aether.pipeline.plan import (
    BUDGET,
    DONE,
    FAILED,
    KEPT,
    SKIPPED,
    UP_TO_DATE,
    Planned,
    Step,
    StepState,
    model_home,
    plan,
    step_input,
    step_slugs,
)
from aether.pipeline.runfile import City, RunFile, Year, load_run_file
from aether.pipeline.steps import step_fresh, step_record
from aether.settings import DEFAULT_YEAR

if TYPE_CHECKING:
    from aether.io.remote import RemoteDir
    from aether.pipeline.extract import ExtractRequest
    from aether.pipeline.fleet import StepFn

KILL_ENV = "AETHER_RUN_KILL_AT"


@dataclass
class RunReport:
    """What a run did; written to ``<data>/runs/<run_id>.json``."""

    run_id: str
    run_file: str
    data_dir: str
    started: str
    finished: str = ""
    steps: list[Step] = field(default_factory=list)
    eecu_hours: float = 0.0  # Earth Engine usage counted in the run's ledger
    path: Path | None = None

    def count(self, status: StepState) -> int:
        return sum(t.status == status for t in self.steps)

    @property
    def failed(self) -> bool:
        return self.count(FAILED) > 0

    @property
    def cities_left(self) -> list[str]:
        """Cities the Earth Engine budget (or quota) stopped: the next run's work."""
        return list(dict.fromkeys(t.city for t in self.steps if t.status == BUDGET))

    @property
    def nothing_to_do(self) -> bool:
        return all(t.status == UP_TO_DATE for t in self.steps)


def _hook(point: str) -> None:
    """Die here, hard, if the crash tests asked for it (see the module doc)."""
    if point in os.environ.get(KILL_ENV, "").split(","):
        os.kill(os.getpid(), signal.SIGKILL)


def resolve_latest(run: RunFile, root: Path) -> RunFile:
    """``latest`` among a city's years becomes the newest year its source holds (the tile
    index, or the Earth Engine collection: asked once per source): a new annual layer is
    picked up by the next run, and only its work is done."""
    from aether.pipeline.runfile import LATEST

    newest: dict[str, int] = {}

    def years(city: City) -> list[Year]:
        given: list[Year] = list(city.years or run.years)
        if LATEST not in given:
            return given
        from aether.errors import CoverageError
        from aether.pipeline.extract import source_for  # pandas: only when a year is latest

        source = source_for(extract_request(run, city, DEFAULT_YEAR, root).chosen_source)
        key = repr((source.name, sorted(source.settings.items())))
        if key not in newest:
            year = source.create(runs_dir(root)).latest_year()
            if year is None:
                raise CoverageError(f"{city.name}: the {source.name} source holds no year",
                                    "check the source's tiles or endpoint")
            newest[key] = year
        return sorted({newest[key] if y == LATEST else int(y) for y in given})

    if all(LATEST not in (c.years or run.years) for c in run.cities):
        return run
    return run.model_copy(update={"cities": [c.model_copy(update={"years": years(c)})
                                             for c in run.cities]})


def run_root(run: RunFile, data_dir: str | os.PathLike[str] | None) -> Path | RemoteDir:
    """The run's data directory: ``--data-dir``, then the settings' ``data_dir``
    (``AETHER_DATA_DIR``, a settings file), then the run file's ``data_dir``; a URL other
    than ``file://`` is a remote one (``io.remote``)."""
    from aether.io.remote import RemoteDir
    from aether.settings import as_url, current, is_url, local_path

    settings = current()
    given = "data_dir" in settings.model_fields_set or not run.data_dir
    chosen = data_dir if data_dir else settings.data_dir if given else str(run.data_dir)
    return RemoteDir.of(as_url(chosen)) if is_url(chosen) else local_path(chosen)


def check_requests(run: RunFile, planned: list[Planned], root: Path) -> None:
    """Every city's request checked (place, POI source, embedding source and its options),
    before any work starts: a mistake in the tenth city stops the run before the first."""
    checked: set[str] = set()
    for p in planned:
        if p.task.step == "extract" and p.city.name not in checked:
            checked.add(p.city.name)
            extract_request(run, p.city, p.task.year, root)


def execute(run_file: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None,
            say: Callable[[str], None] = lambda s: None, *,
            scheduler: str | None = None, max_eecu_hours: float | None = None) -> RunReport:
    """Run a run file (see the module doc); returns the report (also written to disk).

    ``scheduler`` (else the run file's ``scheduler:``, else the ``dask_scheduler`` setting):
    ``threads`` runs the cities one after another here; a Dask cluster (``cluster[:N]``,
    ``tcp://host:port``) runs them in parallel on its workers (``pipeline.fleet``).
    ``max_eecu_hours`` overrides the file's ``ee: {max_eecu_hours}``: the Earth Engine budget
    of the whole run (``execution.budget``); what it stops is reported, status "budget
    reached".
    """
    from aether.execution.budget import EecuBudget
    from aether.execution.cluster import parse_scheduler
    from aether.io.remote import RemoteDir
    from aether.io.store import RUNS_DIR, run_ledger
    from aether.pipeline.synced import SyncedStep, local_root, one_writer
    from aether.settings import current, is_url, use_settings

    run = load_run_file(run_file, strict=True)
    settings = current()
    target = run_root(run, data_dir)
    remote = target if isinstance(target, RemoteDir) else None
    where = scheduler or run.scheduler or settings.dask_scheduler
    spread = parse_scheduler(where).kind != "threads"
    if (remote is not None and spread and run.ee.budget_file is not None
            and not is_url(run.ee.budget_file)):
        raise ConfigError(f"ee.budget_file {run.ee.budget_file} is on this machine, but the "
                          f"cluster's workers share only {remote.url}",
                          "leave budget_file out (the run's ledger goes beside its report), "
                          "or name a URL")
    run_id = new_run_id()
    with local_root(target) as root:
        # the ledger goes beside the report: in the store itself when that is remote, so
        # every worker counts into one (execution.budget.RemoteLedger)
        ledger = (f"{remote.url}/{RUNS_DIR}/{run_id}.eecu" if remote is not None
                  else str(run_ledger(root, run_id).resolve()))
        ee = run.ee.model_copy(update={
            k: v for k, v in (("max_eecu_hours", max_eecu_hours),
                              ("budget_file", run.ee.budget_file or ledger)) if v is not None})
        run = resolve_latest(run.model_copy(update={"ee": ee}), root)
        planned = plan(run)
        check_requests(run, planned, root)
        with one_writer(target) as lease, \
                use_settings(settings, data_dir=root) as chosen:  # osmnx cache there
            _hook("locked")
            report = RunReport(
                run_id=run_id, run_file=str(Path(run_file).resolve()),
                data_dir=remote.url if remote else str(root.resolve()),
                started=_now(), steps=[p.task for p in planned])
            step: StepFn = (run_step if remote is None or lease is None
                            else SyncedStep(remote, lease, run_step))
            if spread:
                from aether.pipeline.fleet import run_on_cluster

                run_on_cluster(run, planned, root, chosen, where, step, say,
                               lend=remote is None)
            else:
                _run_here(planned, root, say, step, run)
            report.eecu_hours = EecuBudget(ee.budget_file).spent() / 3600
            report.finished = _now()
            _hook("report")
            report.path = _write_report(report, root)
            if remote is not None:
                remote.push(root, RUNS_DIR, lease)  # report.path: its local copy
    return report


def _run_here(planned: list[Planned], root: Path, say: Callable[[str], None], step: StepFn,
              run: RunFile) -> None:
    """The steps one after another, in the plan's order; a failure skips the steps that
    run after it (that city-year's later steps, a joint train), nothing else."""
    outputs: dict[str, Path | None] = {}
    for p in planned:
        given = step_input([outputs[k] for k in p.after])
        outputs[p.task.key] = step(run, p.city, p.task, root, given, say)


def run_step(run: RunFile, city: City, task: Step, root: Path, city_dir: Path | None,
             say: Callable[[str], None]) -> Path | None:
    """One step of a city-year, after the one before it (``city_dir``: where that one left
    the tables, None when it failed). Returns the folder for the next step, None on failure.
    The same function runs here and, for a cluster run, on a Dask worker."""
    if task.step != "extract" and city_dir is None:
        task.status, task.error = SKIPPED, "an earlier step did not finish"
        return None
    _hook(f"before:{task.key}")
    t0 = time.perf_counter()
    try:
        if task.step == "extract":
            city_dir = _extract(run, city, task, root)
        elif task.step == "train":
            _train(run, task, _given(city_dir), root)
        else:
            _encode(run, city, task, _given(city_dir), root)
    except BudgetError as e:  # the run's Earth Engine budget: the city is left for later
        task.status, task.error = BUDGET, e.message
        city_dir = None
    except Exception as e:  # one city's failure (or bug) must not stop the others
        task.status = FAILED
        text = str(e) if isinstance(e, AetherError) else f"{type(e).__name__}: {e}"
        task.error = text.strip().split("\n")[0]
        if not isinstance(e, AetherError):
            say(traceback.format_exc().rstrip())
        city_dir = None
    task.seconds = round(time.perf_counter() - t0, 3)
    say(f"{task.key}: {task.status}" + (f" — {task.error}" if task.error else "")
        + (f" ({task.seconds:.1f} s)" if task.status == DONE else ""))
    _hook(f"after:{task.key}")
    return city_dir


def extract_request(run: RunFile, city: City, year: int, root: Path) -> ExtractRequest:
    """The typed ``ExtractRequest`` of one city and year (city keys override the run's)."""
    from aether.embeddings.base import SourceRequest
    from aether.pipeline.extract import ExtractRequest
    from aether.places.query import PlaceQuery
    from aether.pois.load import PoiSpec

    source = city.source or run.source
    pois = city.pois if (city.pois or city.sample) else run.pois
    place = PlaceQuery.of(**city.model_dump(
        include={"osm_id", "bbox", "boundary", "which_result", "yes"}))
    offline = city.sample or (not place.given and pois is not None
                              and pois.startswith(("file:", "pbf:")))
    # the run's Earth Engine limits are the run's: they win over a source's own options
    options = ({**source.options, **run.ee.source_options()} if source.name == "ee"
               else source.options)
    return ExtractRequest(
        city=city.name, data_dir=root, offline=offline,
        pois=PoiSpec(pois, city.poi_options or run.poi_options),
        source=SourceRequest.of(source.name, options), radii=tuple(city.radii or run.radii),
        year=year, place=place)


def _extract(run: RunFile, city: City, task: Step, root: Path) -> Path:
    from aether.io.tables import read_json
    from aether.pipeline.extract import run_extract

    req = extract_request(run, city, task.year, root)
    res = run_extract(req)
    store = CityStore.at(res.out_dir)
    task.status = UP_TO_DATE if res.up_to_date else DONE
    task.rows, task.out_dir = res.n_rows, str(res.out_dir)
    task.config_hash = read_json(store.manifest)["config_hash"]
    book = store.work(req.chosen_source.name) / "export_tasks.json"
    if book.is_file():
        recs = read_json(book).values()
        task.export_tasks = sorted(str(r["operation"]) for r in recs if r.get("operation"))
        task.eecu_s = sum(float(r.get("eecu_s") or 0) for r in recs)
    return res.out_dir


# --- train and encode: step records ---------------------------------------------------------

def _step_outputs_hash(city_dir: Path, step: str) -> str:
    from aether.io.tables import config_hash, read_json

    return config_hash(read_json(CityStore.at(city_dir).step(step))["outputs"])


def _given(city_dir: Path | None) -> Path:
    """The folder the step before left (``run_step`` skips a step whose input is missing)."""
    if city_dir is None:
        raise RuntimeError("a step ran without its input")
    return city_dir


def _train(run: RunFile, task: Step, city_dir: Path, root: Path) -> None:
    """``aether train`` on the city-year's tables; a joint train (``train: {cities}``) on
    every one of its cities' tables too, as ``aether train --city A --city B`` does."""
    from aether.errors import ModelError
    from aether.io.tables import config_hash, read_json
    from aether.ml.train import RunOptions, train

    spec = run.train
    also = [CityStore.of(root, slug, task.year).dir for slug in step_slugs(run, task)[1:]]
    if also:  # every city's tables and the cities themselves
        tables = {d.parent.name: read_json(CityStore.at(d).manifest)["outputs"]
                  for d in [city_dir, *also]}
        inputs = config_hash({"tables": tables, "train": spec.model_dump()})
    else:  # the hash a per-city train always had (no cities key)
        inputs = config_hash({"tables": read_json(CityStore.at(city_dir).manifest)["outputs"],
                              "train": spec.model_dump(exclude={"cities"})})
    store = CityStore.at(city_dir)
    task.out_dir = str(city_dir)
    if step_fresh(city_dir, "train", inputs):
        task.status = UP_TO_DATE
        return
    kwargs: dict[str, Any] = {"preset": spec.preset, "run_name": spec.run,
                              "epochs": spec.epochs, "seed": spec.seed, "also": also}
    epochs: list[dict[str, Any]] = []  # none: the model of this config was there, and kept
    try:  # resumes an interrupted run of the same config
        path = train(city_dir, options=RunOptions(on_epoch=epochs.append), **kwargs)
    except ModelError as e:
        if not store.step("train").is_file():
            # a model someone trained by hand: never replaced behind their back
            raise ModelError(e.message, "name the run file's model: train: {run: NAME}") from None
        # ours, on older tables: replace it
        path = train(city_dir, options=RunOptions(overwrite=True, on_epoch=epochs.append),
                     **kwargs)
    step_record(city_dir, "train", inputs, [p for p in path.iterdir() if p.is_file()])
    task.status, task.out_dir = DONE if epochs else KEPT, str(path)


def _encode(run: RunFile, city: City, task: Step, city_dir: Path, root: Path) -> None:
    """The city's grid and AETHER vectors from its model: its own, or the joint one in the
    first folder of the cities it was trained with."""
    from aether.core.cells import parse_cell
    from aether.io.tables import config_hash
    from aether.ml.encode import encode_city, load_run
    from aether.pipeline.extract import run_grid

    spec = parse_cell(run.encode.cell)
    # a square cell keeps the key it always had (its size), so old step records still hold
    cell: float | str = spec.size if spec.kind == "square" else spec.label
    home = model_home(run, task)
    model_dir = city_dir if home == task.slug else CityStore.of(root, home, task.year).dir
    inputs = config_hash({"model": _step_outputs_hash(model_dir, "train"), "cell": cell})
    task.out_dir = str(city_dir)
    if step_fresh(city_dir, "encode", inputs):
        task.status = UP_TO_DATE
        return
    grid_path = run_grid(extract_request(run, city, task.year, root), spec).path
    name = run.train.run or run.train.preset
    model = load_run(city_dir, CityStore.at(model_dir).model(name) if home != task.slug
                     else name, slug=city_dir.parent.name, year=task.year)
    res = encode_city(city_dir, model, [spec])
    step_record(city_dir, "encode", inputs, [grid_path, res.pois_path, *res.grid_paths])
    task.status, task.rows = DONE, res.n_pois


# --- the report -----------------------------------------------------------------------------

def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_report(report: RunReport, root: Path) -> Path:
    from aether.io.tables import write_json

    body = {("tasks" if k == "steps" else k): v for k, v in asdict(report).items()
            if k != "path"}  # the report format keeps its "tasks" key
    body["counts"] = {s: report.count(s) for s in (DONE, KEPT, UP_TO_DATE, FAILED, SKIPPED,
                                                   BUDGET)}
    body["cities_left"] = report.cities_left
    return write_json(body, runs_dir(root) / f"{report.run_id}.json")


#: Up to this many steps the run's table has a row per step; above it (a fleet), each step's
#: statuses are counted and only the steps that did not finish get a row of their own.
SUMMARY_ROWS = 40
_COLOUR = {DONE: "green", KEPT: "dim", UP_TO_DATE: "dim", FAILED: "bold red",
           SKIPPED: "yellow", BUDGET: "magenta"}


def summary_table(report: RunReport) -> Any:
    """What ``aether run`` prints: a rich table of the run's steps, one row each; for a run of
    more than ``SUMMARY_ROWS`` steps, the counts per step and status, then a row for each
    step that failed, was skipped or was left by the budget (every step is in the report
    and in ``aether run status``)."""
    from rich.console import Group
    from rich.table import Table

    if len(report.steps) <= SUMMARY_ROWS:
        return _step_rows(f"aether run {report.run_id}", report.steps)
    counts = Table(title=f"aether run {report.run_id}: {len(report.steps)} steps",
                   caption="one row per step: the report, or `aether run status RUNFILE`")
    statuses = [s for s in _COLOUR if report.count(s)]
    counts.add_column("step")
    for s in statuses:
        counts.add_column(f"[{_COLOUR[s]}]{s}", justify="right")
    counts.add_column("rows", justify="right")
    counts.add_column("seconds", justify="right")
    for name in dict.fromkeys(t.step for t in report.steps):
        mine = [t for t in report.steps if t.step == name]
        counts.add_row(name, *(str(sum(t.status == s for t in mine)) for s in statuses),
                       str(sum(t.rows or 0 for t in mine)), f"{sum(t.seconds for t in mine):.1f}")
    unfinished = [t for t in report.steps if t.status in (FAILED, SKIPPED, BUDGET)]
    if not unfinished:
        return counts
    return Group(counts, _step_rows("steps that did not finish", unfinished))


def _step_rows(title: str, steps: list[Step]) -> Any:
    """One row per step: city, year, step, status, rows, seconds, error or exports."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("city", "year", "step", "status", "rows", "seconds", "error or exports"):
        table.add_column(col, justify="right" if col in ("year", "rows", "seconds") else "left")
    for t in steps:
        note = t.error or (f"{len(t.export_tasks)} export tasks" if t.export_tasks else "")
        if t.eecu_s:
            note += f", {t.eecu_s / 3600:.3g} EECU-h"
        table.add_row(t.city, str(t.year), t.step, f"[{_COLOUR.get(t.status, '')}]{t.status}",
                      "" if t.rows is None else str(t.rows), f"{t.seconds:.1f}", note)
    return table
