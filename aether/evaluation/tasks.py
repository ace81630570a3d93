"""Downstream tasks as data: a YAML file naming a label table, its column, and a spatial unit.

A task file looks like::

    name: landuse
    kind: classification        # classification | distribution | regression
    labels: labels/osm_landuse.parquet   # relative to the city dir, the task file, or absolute
    column: landuse
    classes: {commercial: commercial, retail: commercial, grass: green}   # optional renaming
    unit: grid                  # grid (cells of cell_m, or of cell: 100m / h3:9) or poi
    cell_m: 100
    radius_m: 0                 # point labels: 0 = points inside the cell, else within radius
    min_count: 1                # point labels: units need at least this many points
    min_class_units: 10         # classification: rarer classes are dropped
    holdout: false              # point labels from pois: only the trainer's held-out POIs

Polygon labels give each unit the value of the polygon under its centre (classification,
regression); point labels are aggregated per unit (majority class, class distribution, mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aether.core.cells import CellSpec, parse_cell
from aether.errors import ConfigError, InputError, TableError
from aether.evaluation.probes import KINDS

if TYPE_CHECKING:
    import geopandas as gpd

UNITS = ("grid", "poi")
TASKS_DIR = Path(__file__).parents[1] / "data" / "tasks"


@dataclass(frozen=True)
class ProbeTask:
    """A validated task file."""

    name: str
    kind: str
    labels: str
    column: str
    unit: str = "grid"
    cell_m: float = 100.0
    radius_m: float = 0.0
    min_count: int = 1
    min_class_units: int = 10
    holdout: bool = False
    block_m: float = 250.0
    classes: dict[str, str] = field(default_factory=dict)
    cell: str | None = None  # a cell spec (``100m``, ``h3:9``); overrides cell_m
    source: Path | None = None

    @property
    def grid_cell(self) -> CellSpec:
        """The grid the task's units are the cells of."""
        return parse_cell(self.cell if self.cell is not None else self.cell_m)


def load_task(path: str | Path, *, cell: str | None = None) -> ProbeTask:
    """Read and validate a task file; a packaged task may be named without its path.
    ``cell`` (``100m``, ``h3:9``) replaces the task's grid."""
    from aether.yamlfile import load_yaml

    p = Path(path)
    if not p.is_file() and (TASKS_DIR / f"{p.name}.yaml").is_file():
        p = TASKS_DIR / f"{p.name}.yaml"
    if not p.is_file():
        packaged = ", ".join(sorted(q.stem for q in TASKS_DIR.glob("*.yaml")))
        raise ConfigError(f"task file {p} not found", f"packaged tasks: {packaged}")
    raw, _ = load_yaml(p, what="task file")
    if not isinstance(raw, dict):
        raise ConfigError(f"task file {p} is not a mapping", "see aether/data/tasks/*.yaml")
    known = set(ProbeTask.__dataclass_fields__) - {"source"}
    bad = sorted(set(raw) - known)
    missing = [k for k in ("name", "kind", "labels", "column") if k not in raw]
    if bad or missing:
        what = f"unknown key(s) {', '.join(bad)}" if bad else f"missing {', '.join(missing)}"
        raise ConfigError(f"task file {p}: {what}", f"keys: {', '.join(sorted(known))}")
    try:
        if cell is not None:
            raw = {**raw, "cell": cell}
        task = ProbeTask(**{**raw, "classes": dict(raw.get("classes") or {})}, source=p)
        float(task.cell_m), float(task.radius_m), int(task.min_count)
        task.grid_cell  # noqa: B018  (a bad cell spec fails here, naming the file)
    except (TypeError, ValueError, InputError) as e:
        raise ConfigError(f"task file {p}: {e}", "see aether/data/tasks/*.yaml") from e
    if task.kind not in KINDS or task.unit not in UNITS:
        raise ConfigError(f"task file {p}: kind {task.kind!r} / unit {task.unit!r}",
                          f"kind is one of {', '.join(KINDS)}; unit one of {', '.join(UNITS)}")
    return task


def label_path(task: ProbeTask, city_dir: Path) -> Path:
    """The label table: absolute, else beside the city tables, else beside the task file."""
    p = Path(task.labels)
    for cand in (p, city_dir / p, (task.source.parent / p) if task.source else p):
        if cand.is_file():
            return cand
    raise TableError(f"label table {task.labels} of task {task.name} not found",
                     f"looked in {city_dir} and beside the task file")


def read_labels(task: ProbeTask, city_dir: Path) -> gpd.GeoDataFrame:
    """The label table with its class/value column checked (and classes renamed)."""
    import geopandas as gpd

    path = label_path(task, city_dir)
    try:
        df = gpd.read_parquet(path)
    except Exception as e:
        raise TableError(f"label table {path} is not GeoParquet: {type(e).__name__}",
                         "labels need a geometry column (points or polygons)") from e
    if task.column not in df.columns:
        raise TableError(f"label table {path.name} has no column {task.column!r}",
                         f"columns: {', '.join(c for c in df.columns if c != 'geometry')}")
    df = df[df[task.column].notna()]
    if task.classes:
        df = df.assign(**{task.column: df[task.column].map(task.classes)}).dropna(
            subset=[task.column])
    if df.empty:
        raise TableError(f"label table {path.name} has no usable rows for {task.name}",
                         "check the column and the classes mapping")
    return df.to_crs("EPSG:4326")


@dataclass
class Labels:
    """Targets per unit: ``index`` selects units; ``y`` class ids, distributions or values."""

    index: np.ndarray
    y: np.ndarray
    classes: list[str]


def assign(task: ProbeTask, units: gpd.GeoDataFrame, labels: gpd.GeoDataFrame, crs: str) -> Labels:
    """Targets for units (points in ``crs`` columns x, y; polygons for grid cells)."""
    import geopandas as gpd

    centres = gpd.GeoDataFrame({"u": np.arange(len(units))},
                               geometry=gpd.points_from_xy(units["x"], units["y"]), crs=crs)
    lab = labels.to_crs(crs)
    points = bool((lab.geom_type == "Point").all())
    if not points:
        if task.kind == "distribution":
            raise ConfigError(f"task {task.name}: distributions need point labels",
                              "use kind classification or regression for polygons")
        lab = lab.assign(_area=lab.area).sort_values("_area")  # the smallest polygon wins
        hit = gpd.sjoin(centres, lab[[task.column, "geometry"]], predicate="within")
        hit = hit[~hit.index.duplicated()]
        idx = hit["u"].to_numpy()
        values = hit[task.column]
        per_unit = pd.DataFrame({"u": idx, "v": values.to_numpy()})
    else:
        if task.unit == "grid" and task.radius_m <= 0:
            zones = gpd.GeoDataFrame({"u": np.arange(len(units))},
                                     geometry=units.geometry.to_crs(crs).values, crs=crs)
        else:
            zones = centres.assign(geometry=centres.buffer(max(task.radius_m, 1.0)))
        hit = gpd.sjoin(lab[[task.column, "geometry"]], zones, predicate="within")
        per_unit = pd.DataFrame({"u": hit["u"].to_numpy(), "v": hit[task.column].to_numpy()})
        counts = per_unit.groupby("u").size()
        per_unit = per_unit[per_unit["u"].isin(counts.index[counts >= task.min_count])]
    if per_unit.empty:
        raise TableError(f"task {task.name}: no unit has a label", "check the label table's area")
    if task.kind == "regression":
        agg = per_unit.groupby("u")["v"].mean()
        return Labels(agg.index.to_numpy(), agg.to_numpy(np.float64), [])
    if task.kind == "distribution":
        tab = pd.crosstab(per_unit["u"], per_unit["v"].astype(str))
        return Labels(tab.index.to_numpy(), (tab.to_numpy() / tab.to_numpy().sum(1,
                      keepdims=True)).astype(np.float64), [str(c) for c in tab.columns])
    major = per_unit.groupby("u")["v"].agg(lambda s: s.astype(str).value_counts().index[0])
    freq = major.value_counts()
    keep = freq.index[freq >= task.min_class_units]
    major = major[major.isin(keep)]
    classes = sorted(str(c) for c in keep)
    if len(classes) < 2:
        raise TableError(f"task {task.name}: fewer than two classes with "
                         f"{task.min_class_units} units", "lower min_class_units or the cell")
    ids = pd.Categorical(major.astype(str), categories=classes).codes
    return Labels(major.index.to_numpy(), ids.astype(np.int64), classes)
