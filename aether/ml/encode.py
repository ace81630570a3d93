"""Apply a trained AE head to a city's tables: AETHER vectors for POIs and grid cells.

The head was trained on buffer means at the run's base radius, so it is applied at that
scale, never to single pixels or cells: POIs use their ``poi_embeddings`` row at the base
radius, and each grid cell uses the area-weighted mean of the cells inside a circle of the
base radius around its centre (computed by the one zonal kernel, over the grid as a raster).
Cells or POIs with no valid pixel keep their row with a NaN vector (never zero-filled).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aether.core import windows, zonal
from aether.core.aef import BANDS, PIXEL_SIZE_M, utm_epsg
from aether.core.cells import CellSpec, parse_cell
from aether.errors import InputError, ModelError, TableError
from aether.io.store import CityStore, model_complete
from aether.io.tables import POI_EMBEDDING_COLUMNS, read_table, write_parquet
from aether.ml.config import TrainConfig
from aether.ml.reference import load_model

if TYPE_CHECKING:
    import geopandas as gpd



def aether_columns(dim: int) -> tuple[str, ...]:
    """Names of the AETHER vector columns of a head with ``dim`` outputs: E000, E001, …"""
    return tuple(f"E{i:03d}" for i in range(dim))


#: The columns of the default architecture's output.
AETHER_COLUMNS: tuple[str, ...] = aether_columns(TrainConfig().out_dim)
GRID_COLUMNS: tuple[str, ...] = ("cell_id", *BANDS, "weight", "valid_fraction", "x", "y")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRun:
    """A trained model and the facts about its training data it must be used with."""

    name: str
    path: Path
    model: Any  # aether.ml.heads.AetherModel (torch is imported lazily)
    config: dict[str, Any]

    def __repr__(self) -> str:  # not the dataclass's: the torch module and the whole config
        return (f"ModelRun({self.name!r}: {self.out_dim}-d, preset {self.preset}, "
                f"base radius {self.base_radius_m:g} m, {self.path})")

    @property
    def base_radius_m(self) -> float:
        return float(self.config["base_radius_m"])

    @property
    def text_model(self) -> str | None:
        return self.config.get("text_model")

    @property
    def out_dim(self) -> int:
        """The head's output size, as its config records it."""
        return int(self.config["model"]["out_dim"])

    @property
    def in_dim(self) -> int:
        """The image head's input size: 64 for AlphaEarth means (A00..A63)."""
        return int(self.config["model"].get("ae_dim", len(BANDS)))

    @property
    def columns(self) -> tuple[str, ...]:
        return aether_columns(self.out_dim)

    @property
    def preset(self) -> str:
        return str(self.config.get("preset", self.name))


    @property
    def cities(self) -> list[str]:
        """The cities (slugs) whose tables it trained on: one, or several (``cities``)."""
        return [str(c) for c in self.config.get("cities") or [self.config.get("city")] if c]


def run_path(city_dir: Path, model: str | Path) -> Path:
    """A run directory: a path as given, else a run name under ``<city>/models/``."""
    p = Path(model)
    if p.is_dir():
        return p
    store = CityStore.at(city_dir)
    named = store.model(str(model))
    if named.is_dir():
        if not model_complete(named):
            raise ModelError(f"model {str(model)!r} in {store.models_dir} is incomplete "
                             "(its training did not finish)",
                             f"re-run `aether train --run {model}` to finish it")
        return named
    raise ModelError(
        f"no trained model {str(model)!r} for {city_dir}",
        f"train one with `aether train` (runs here: {', '.join(store.models()) or 'none'})",
    )


def list_runs(city_dir: Path) -> list[str]:
    """Names of the complete trained runs of a city, sorted (incomplete ones are named in
    a warning and skipped)."""
    return CityStore.at(city_dir).models()


def load_run(city_dir: Path, model: str | Path, *, slug: str | None, year: int | None,
             transfer: bool = False) -> ModelRun:
    """Load a run and check it was trained for this city (one of its cities) and year, when
    given; ``transfer`` lets a run of other cities be applied here (held-out-city transfer,
    labelled so by the evaluation)."""
    path = run_path(city_dir, model)
    net, config = load_model(path)
    cities = [str(c) for c in config.get("cities") or [config.get("city")] if c]
    if slug is not None and cities and slug not in cities and not transfer:
        raise ModelError(f"model {path.name} was trained for {'+'.join(cities)}, not {slug}",
                         f"train a model for {slug}, or pass --transfer to evaluate a model "
                         "of other cities here")
    have = config.get("year")
    if year is not None and have is not None and str(have) != str(year):
        raise ModelError(f"model {path.name} was trained for year {have}, not {year}",
                         f"train a model for {slug} {year} or pass --year of the model")
    if "base_radius_m" not in config:
        raise ModelError(f"model {path.name} has no base_radius_m in its config",
                         "re-train it with `aether train`")
    net.eval()
    return ModelRun(path.name, path, net, dict(config))


def apply_ae(run: ModelRun, x: np.ndarray) -> np.ndarray:
    """AE head on (N, 64) means; rows with any NaN stay NaN (masked, not zero-filled)."""
    import torch

    x = np.asarray(x, dtype=np.float32)
    out = np.full((len(x), run.out_dim), np.nan, np.float32)
    ok = ~np.isnan(x).any(axis=1)
    if ok.any():
        with torch.no_grad():
            out[ok] = run.model.encode_ae(torch.from_numpy(x[ok])).numpy()
    return out


def apply_text(run: ModelRun, texts: list[str], cache_path: Path | None = None) -> np.ndarray:
    """Text head on texts, with the run's own frozen text encoder."""
    import torch

    from aether.ml.text import encode_texts

    emb = encode_texts(texts, cache_path=cache_path, model_name=run.text_model)
    with torch.no_grad():
        return run.model.encode_text(torch.from_numpy(emb)).numpy()


def base_poi_means(city_dir: Path, radius_m: float) -> pd.DataFrame:
    """poi_embeddings rows at one radius (the scale a head was trained on)."""
    emb = read_table(CityStore.at(city_dir).poi_embeddings, POI_EMBEDDING_COLUMNS,
                     "poi_embeddings")
    rows = emb[np.isclose(emb["radius_m"].astype(float), radius_m)]
    if rows.empty:
        radii = ", ".join(windows.label(r) for r in sorted(emb["radius_m"].unique()))
        raise ModelError(
            f"the model needs {windows.label(radius_m)} buffer means; poi_embeddings has {radii}",
            f"re-run `aether extract {windows.extract_option(radius_m)}` or use a model "
            "trained on these windows",
        )
    return rows.reset_index(drop=True)


def read_grid(city_dir: Path, cell: str | float | CellSpec) -> gpd.GeoDataFrame:
    """The grid_embeddings table of one cell spec (``100m``, ``h3:9``)."""
    spec = parse_cell(cell)
    path = CityStore.at(city_dir).grid(spec)
    if not path.is_file():
        raise TableError(f"no {spec.label} grid at {path}",
                         f"run `aether grid --cell {cell_arg(spec)}` first")
    return read_table(path, GRID_COLUMNS, "grid_embeddings")


def cell_arg(spec: CellSpec) -> str:
    """The ``--cell`` value of a spec: ``100m``, ``h3:9``."""
    return spec.label if spec.kind == "square" else f"h3:{int(spec.size)}"


def encode_grid(run: ModelRun, grid: pd.DataFrame, cell: str | float | CellSpec | None = None,
                *, crs: str | None = None) -> tuple[np.ndarray, zonal.Means]:
    """AETHER vectors of grid cells (and the window means they come from): each cell's mean
    over the run's window around its centre (``grid_window_means``), through the image head.
    The one path of ``aether encode``, ``Model.encode`` and a user's own area means
    (``query.own_vectors``), so a cell is encoded the same whichever way it came."""
    means = grid_window_means(grid, run.base_radius_m, cell, crs=crs)
    return apply_ae(run, means.mean), means


def grid_window_means(grid: pd.DataFrame, radius_m: float,
                      cell: str | float | CellSpec | None = None, *,
                      crs: str | None = None) -> zonal.Means:
    """Means over the window of ``radius_m`` (a circle, or a square when negative, see
    ``aether.core.windows``) around each cell centre, from the cell means.

    A square grid is turned into a raster whose pixels are the cells and whose last band is
    each cell's valid pixel count, so the kernel's coverage weights times that count give
    the exact pixel-area weighting; H3 cells, and any areas given with ``crs`` (the metric
    crs their ``x``, ``y`` are in: a user's own polygons), are weighted by the area of each
    polygon the window covers. Masked cells (NaN) contribute nothing.
    """
    if crs is not None or (cell is not None and parse_cell(cell).kind == "h3"):
        return _polygon_window_means(grid, radius_m, crs)
    x = grid["x"].to_numpy(float)
    y = grid["y"].to_numpy(float)
    xs, ys = np.unique(x), np.unique(y)
    cell = float(np.min(np.diff(xs))) if len(xs) > 1 else float(np.min(np.diff(ys)))
    col = np.rint((x - xs[0]) / cell).astype(int)
    row = np.rint((ys[-1] - y) / cell).astype(int)
    h, w = row.max() + 1, col.max() + 1
    vals = np.full((h, w, len(BANDS) + 1), np.nan, np.float32)
    a = grid[list(BANDS)].to_numpy(np.float32)
    wt = grid["weight"].to_numpy(np.float32)[:, None]
    vals[row, col] = np.concatenate([a * wt, wt], axis=1)
    vals[(vals[..., -1] <= 0) | np.isnan(vals[..., -1])] = np.nan
    block = zonal.PixelBlock(vals, xs[0] - cell / 2, ys[-1] + cell / 2, cell, -cell)
    part = windows.partial_sums(block, x, y, radius_m)
    sums = part.weighted_sum  # in cell areas; last band: Σ coverage·pixel count
    px = sums[:, -1]
    summed = zonal.Partial(sums[:, :-1], px, len(BANDS))
    return windows.finalize(summed, radius_m, PIXEL_SIZE_M**2)


def _polygon_window_means(grid: Any, radius_m: float, crs: str | None = None) -> zonal.Means:
    """Window means over cells that are polygons (H3): each cell weighted by the share of it
    the window covers times its valid pixel count, as the raster path does for squares.
    ``crs``: the one ``x``, ``y`` are in (default: the UTM zone of the grid's middle)."""
    import shapely

    x, y = grid["x"].to_numpy(float), grid["y"].to_numpy(float)
    if crs is None:
        c = grid.geometry.union_all().centroid
        crs = f"EPSG:{utm_epsg(c.x, c.y)}"
    polys = np.asarray(grid.geometry.to_crs(crs).values, dtype=object)
    r = abs(radius_m)
    shapes = (shapely.box(x - r, y - r, x + r, y + r) if windows.is_square(radius_m)
              else shapely.buffer(shapely.points(x, y), r, quad_segs=32))
    ci, pj = shapely.STRtree(polys).query(shapes, predicate="intersects")
    share = shapely.area(shapely.intersection(shapes[ci], polys[pj])) / shapely.area(polys[pj])
    vals = grid[list(BANDS)].to_numpy(np.float64)
    wt = grid["weight"].to_numpy(np.float64)
    ok = np.isfinite(vals[pj]).all(1) & (wt[pj] > 0)
    ci, pj, w = ci[ok], pj[ok], share[ok] * wt[pj[ok]]
    sums = np.zeros((len(grid), len(BANDS)))
    np.add.at(sums, ci, vals[pj] * w[:, None])
    valid = np.bincount(ci, weights=w, minlength=len(grid))
    return windows.finalize(zonal.Partial(sums, valid, len(BANDS)), radius_m, PIXEL_SIZE_M**2)


def aether_frame(vectors: np.ndarray) -> pd.DataFrame:
    """AETHER vector columns E000, E001, … (one per output of the head)."""
    vectors = np.asarray(vectors, np.float32)
    return pd.DataFrame(vectors, columns=list(aether_columns(vectors.shape[1])))


@dataclass(frozen=True)
class EncodeResult:
    """What ``encode_city`` wrote, with row counts (masked rows keep NaN vectors)."""

    pois_path: Path
    grid_paths: list[Path]
    n_pois: int
    n_cells: int
    n_masked: int


def encode_city(city_dir: Path, run: ModelRun,
                cells: list[str | float | CellSpec] | None = None, *,
                pois_only: bool = False) -> EncodeResult:
    """Write ``aether/<run>/pois.parquet`` and one ``grid_<cell>.parquet`` per grid (every
    grid of the city when ``cells`` is None); with ``pois_only`` the POIs alone (no grid
    needed, none read or written). Holds the data directory's lock."""
    if pois_only and cells:
        raise InputError("encoding the POIs only takes no grid cells",
                         "drop --cell, or drop --pois to encode grids too")
    store = CityStore.at(city_dir)
    with store.locked():
        return _encode(store, run, [] if pois_only else cells, pois_only)


def _encode(store: CityStore, run: ModelRun, cells: list[str | float | CellSpec] | None,
            pois_only: bool = False) -> EncodeResult:
    city_dir = store.dir
    r = run.base_radius_m
    pois = base_poi_means(city_dir, r)
    z = apply_ae(run, pois[list(BANDS)].to_numpy())
    poi_df = pd.concat([pois[["poi_id", "year", "radius_m", "valid_fraction"]], aether_frame(z)],
                       axis=1)
    poi_df.insert(3, "run", run.name)
    specs = store.grids() if cells is None else [parse_cell(c) for c in cells]
    if not specs and not pois_only:
        raise TableError(f"no grid_embeddings table in {city_dir}",
                         "run `aether grid` first, or `aether encode --pois` for the POIs only")
    grids = {c: read_grid(city_dir, c) for c in specs}
    pois_path = write_parquet(poi_df, store.encoded_pois(run.name))
    grid_paths, n_cells, n_masked = [], 0, int(np.isnan(z[:, 0]).sum())
    for spec, grid in grids.items():
        zg, means = encode_grid(run, grid, spec)
        df = pd.concat([grid[["cell_id", "x", "y"]].reset_index(drop=True), aether_frame(zg)],
                       axis=1)
        df.insert(3, "valid_fraction", means.valid_fraction.astype(np.float32))
        df.insert(3, "run", run.name)
        import geopandas as gpd

        gdf = gpd.GeoDataFrame(df, geometry=grid.geometry.values, crs=grid.crs)
        grid_paths.append(write_parquet(gdf, store.encoded(run.name, spec)))
        n_cells += len(df)
        n_masked += int(np.isnan(zg[:, 0]).sum())
    return EncodeResult(pois_path, grid_paths, len(poi_df), n_cells, n_masked)


def read_aether_grid(city_dir: Path, run: ModelRun, cell: str | float | CellSpec
                     ) -> gpd.GeoDataFrame:
    """An encoded grid; raises with the command to run when it is missing."""
    spec = parse_cell(cell)
    store = CityStore.at(city_dir)
    path = store.encoded(run.name, spec)
    if not path.is_file():
        have = ", ".join(cell_arg(c) for c in store.encoded_cells(run.name)) or "none"
        raise TableError(f"no encoded {spec.label} grid for model {run.name} (encoded: {have})",
                         f"run `aether grid --cell {cell_arg(spec)}` and then "
                         f"`aether encode --model {run.name}`")
    return read_table(path, ("cell_id", "x", "y", *run.columns), "aether grid")


def load_runs(city_dir: Path, models: list[str] | None, *, slug: str, year: int,
              transfer: bool = False) -> list[ModelRun]:
    """The named runs, or every trained run of the city when none is named."""
    names: list[str | Path] = list(models or list_runs(city_dir))
    if not names:
        raise ModelError(f"no trained model in {CityStore.at(city_dir).models_dir}",
                         "run `aether train` first")
    return [load_run(city_dir, m, slug=slug, year=year, transfer=transfer) for m in names]


def encoded_cells(city_dir: Path, run_name: str) -> list[CellSpec]:
    """Cell specs of a run's encoded grids, smallest cells first."""
    return CityStore.at(city_dir).encoded_cells(run_name)
