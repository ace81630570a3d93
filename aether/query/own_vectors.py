"""Vectors a user already has, searched like an encoded grid: AlphaEarth means per H3 cell
exported elsewhere (the ``{cell: {"embedding": [...]}}`` JSON of ../shared/data), or any
table of one vector per area (GeoParquet with polygons, or Parquet keyed by H3 cell).

Several files make one table (``source`` says which file a row came from), so places in one
town can be compared with places in others. As given, "more like this" is the cosine of the
vectors themselves (``aether similar --vectors``). Raw vectors have no text space: for words
(``aether query --vectors --model RUN``) AlphaEarth means are encoded by a trained run's
image head (``encode_vectors``), through the path ``aether encode`` takes for a grid.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aether.errors import InputError, TableError
from aether.query.search import CityIndex

if TYPE_CHECKING:
    from aether.ml.encode import ModelRun

log = logging.getLogger(__name__)

#: JSON is parsed whole: larger files must come as Parquet.
MAX_JSON_BYTES = 512 * 2**20
#: Column names taken as the vector, in order of preference: AlphaEarth's bands, aether's.
VECTOR_COLUMNS = (re.compile(r"A\d{2}"), re.compile(r"E\d{3}"))
ID_COLUMNS = ("cell_id", "h3", "h3_cell", "h3_index", "id")
#: Columns taken as each area's valid pixel count (how much its mean weighs in a window).
WEIGHT_COLUMNS = ("pixel_count", "weight")
#: The name of a user's own vectors wherever a model's would stand (a panel, a table).
OWN = "your vectors"
HINT = ("give a JSON {h3_cell: {\"embedding\": [...]}} file, or a (Geo)Parquet table with a "
        "cell id or geometry and columns A00..A63 (or E000.., or an 'embedding' list)")


def read_vectors(paths: Sequence[str | os.PathLike[str]]) -> CityIndex:
    """One index over the rows of every file; a cell id met twice is kept once (the first)."""
    import geopandas as gpd
    import pandas as pd

    if not paths:
        raise InputError("no vector file given", "pass --vectors FILE (repeatable)")
    parts = [_read_one(Path(p)) for p in paths]
    dims = {v.shape[1] for _, v in parts}
    if len(dims) > 1:
        raise TableError(f"the vector files have {len(dims)} different widths "
                         f"({', '.join(map(str, sorted(dims)))})",
                         "give files of one kind of vector")
    frame = pd.concat([f for f, _ in parts], ignore_index=True)
    vectors = np.concatenate([v for _, v in parts])
    first = ~frame["cell_id"].duplicated().to_numpy()
    if not first.all():
        log.warning("%d cell(s) appear twice: the first is kept", int((~first).sum()))
        frame, vectors = frame[first].reset_index(drop=True), vectors[first]
    grid = gpd.GeoDataFrame(frame, geometry="geometry", crs="EPSG:4326")
    crs = _local_crs(grid)
    xy = grid.geometry.to_crs(crs).centroid
    grid = grid.assign(x=xy.x.to_numpy(), y=xy.y.to_numpy())
    no_pois = gpd.GeoDataFrame({"poi_id": [], "name": [], "category": [], "x": [], "y": []},
                               geometry=gpd.GeoSeries([], crs="EPSG:4326"))
    return CityIndex(grid, vectors, no_pois, crs)


def _local_crs(grid: Any) -> str:
    """The UTM zone of the table's middle (distances for the answer's x, y)."""
    from aether.core.aef import utm_epsg

    w, s, e, n = grid.total_bounds
    return f"EPSG:{utm_epsg((w + e) / 2, (s + n) / 2)}"


def _read_one(path: Path) -> tuple[Any, np.ndarray]:
    """(cell_id, source, geometry frame; float32 vectors) of one file."""
    if not path.is_file():
        raise InputError(f"no vector file {path}", "check the path")
    if path.suffix.lower() == ".json":
        ids, vectors, weight = _from_json(path)
        frame = _cells_frame(ids, path).assign(weight=weight)
    elif path.suffix.lower() in (".parquet", ".geoparquet"):
        frame, vectors = _from_parquet(path)
    else:
        raise InputError(f"{path.name}: not a .json or .parquet file", HINT)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.any():
        raise TableError(f"{path.name}: no row has a finite vector", HINT)
    return frame.assign(source=path.stem), vectors


def _from_json(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InputError(f"{path.name} is over {MAX_JSON_BYTES // 2**20} MB of JSON",
                         "convert it to Parquet")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise TableError(f"{path.name} is not JSON ({e})", HINT) from None
    if not isinstance(data, dict) or not data:
        raise TableError(f"{path.name} holds no {{cell: vector}} object", HINT)
    rows = [v.get("embedding") if isinstance(v, dict) else v for v in data.values()]
    try:
        vectors = np.array(rows, dtype=np.float32)
    except (ValueError, TypeError):
        raise TableError(f"{path.name}: the vectors are not lists of numbers of one length",
                         HINT) from None
    if vectors.ndim != 2 or vectors.shape[1] < 2:
        raise TableError(f"{path.name}: the vectors are not lists of numbers of one length",
                         HINT)
    return [str(k) for k in data], vectors, _weights([
        v.get("pixel_count") if isinstance(v, dict) else None for v in data.values()])


def _weights(counts: Sequence[Any]) -> np.ndarray:
    """Each area's pixel count as a float (1 where not given: the areas weigh alike)."""
    try:
        out = np.array([1.0 if c is None else c for c in counts], dtype=np.float64)
    except (ValueError, TypeError):
        return np.ones(len(counts))
    return np.where(np.isfinite(out), out, 0.0)


def _from_parquet(path: Path) -> tuple[Any, np.ndarray]:
    import geopandas as gpd
    import pandas as pd

    try:
        table = gpd.read_parquet(path)
    except Exception:  # plain Parquet (no geo metadata), or not Parquet at all
        try:
            table = pd.read_parquet(path)
        except Exception as e:
            raise TableError(f"{path.name} is not a Parquet table "
                             f"({' '.join(str(e).split())[:200]})", HINT) from None
    vectors = _vector_block(table, path)
    ids = next((c for c in ID_COLUMNS if c in table.columns), None)
    if isinstance(table, gpd.GeoDataFrame) and table.geometry.notna().all():
        if not table.geom_type.isin(["Polygon", "MultiPolygon"]).all():
            raise TableError(f"{path.name}: rows must be areas (polygons), so that a place "
                             "given with --at falls in one", HINT)
        cell_ids = (table[ids].astype(str) if ids else pd.Series(range(len(table))).astype(str))
        frame = gpd.GeoDataFrame({"cell_id": cell_ids.to_numpy()},
                                 geometry=table.geometry.to_crs("EPSG:4326").values)
    elif ids:
        frame = _cells_frame(table[ids].astype(str).tolist(), path)
    else:
        raise TableError(f"{path.name} says nowhere where its rows are (no polygon geometry "
                         "or H3 cell id)", HINT)
    counts = next((c for c in WEIGHT_COLUMNS if c in table.columns), None)
    weight = (_weights(table[counts].tolist()) if counts else np.ones(len(table)))
    return frame.assign(weight=weight), vectors


def _vector_block(table: Any, path: Path) -> np.ndarray:
    """The vector columns (A00.., E000..) or an ``embedding`` list column, as float32."""
    for pattern in VECTOR_COLUMNS:
        cols = [c for c in table.columns if pattern.fullmatch(str(c))]
        if cols:
            return table[cols].to_numpy(np.float32)
    if "embedding" in table.columns:
        try:
            return np.stack(table["embedding"].to_numpy()).astype(np.float32)
        except (ValueError, TypeError):
            raise TableError(f"{path.name}: 'embedding' is not lists of one length",
                             HINT) from None
    raise TableError(f"{path.name} has no vector columns", HINT)


def _cells_frame(ids: list[str], path: Path) -> Any:
    """H3 cells as polygons (EPSG:4326); an id that is not an H3 cell is refused."""
    import geopandas as gpd
    from shapely.geometry import Polygon

    try:
        import h3
    except ImportError:
        raise InputError("H3 cells need the h3 package", "pip install 'aether[grid]'") from None
    bad = next((c for c in ids if not h3.is_valid_cell(c)), None)
    if bad is not None:
        raise TableError(f"{path.name}: {bad[:40]!r} is not an H3 cell id",
                         "key rows by H3 cell, or give a GeoParquet table with geometry")
    polygons = [Polygon([(lon, lat) for lat, lon in h3.cell_to_boundary(c)]) for c in ids]
    return gpd.GeoDataFrame({"cell_id": ids}, geometry=polygons, crs="EPSG:4326")


def encode_vectors(index: CityIndex, run: ModelRun) -> CityIndex:
    """The index with every area's AlphaEarth mean through the run's image head: ``aether
    encode``'s own path (``ml.encode.encode_grid``), so each area is the mean over the run's
    window around its centre, weighted over the areas the window meets, then encoded. Rows
    keep their order, ids and files; an area without a finite mean stays NaN."""
    import pandas as pd

    from aether.core.aef import BANDS
    from aether.ml.encode import encode_grid

    width = index.vectors.shape[1]
    if width != run.in_dim or width != len(BANDS):
        raise InputError(f"your vectors are {width}-d; model {run.name} takes {run.in_dim}-d "
                         "AlphaEarth means",
                         "give AlphaEarth means (64 values per area, or columns A00..A63), "
                         "or search them as given with `aether similar --vectors`")
    _say_scale(index, run)
    bands = pd.DataFrame(index.vectors, columns=list(BANDS), index=index.grid.index)
    z, _ = encode_grid(run, pd.concat([index.grid, bands], axis=1), crs=index.crs)
    return CityIndex(index.grid, z, index.pois, index.crs)


def _say_scale(index: CityIndex, run: ModelRun) -> None:
    """Log when the areas are wider than the run's window: each is then encoded from its
    own mean alone, a coarser scale than the buffer means the head was trained on."""
    from aether.core import windows
    from aether.core.aef import PIXEL_SIZE_M

    area = float(np.median(index.grid.geometry.to_crs(index.crs).area))
    window = windows.area_px(run.base_radius_m, PIXEL_SIZE_M**2) * PIXEL_SIZE_M**2
    if area > 2 * window:
        log.warning("your areas (median %.2f km²) are wider than the %s window model %s was "
                    "trained on: each is encoded from its own mean, a coarser scale than "
                    "training saw", area / 1e6, windows.label(run.base_radius_m), run.name)
