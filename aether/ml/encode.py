"""Apply a trained AE head to a city's tables: AETHER vectors for POIs and grid cells.

The head was trained on buffer means at the run's base radius, so it is applied at that
scale, never to single pixels or cells: POIs use their ``poi_embeddings`` row at the base
radius, and each grid cell uses the area-weighted mean of the cells inside a circle of the
base radius around its centre (computed by the one zonal kernel, over the grid as a raster).
Cells or POIs with no valid pixel keep their row with a NaN vector (never zero-filled).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aether.core import windows, zonal
from aether.core.aef import BANDS, PIXEL_SIZE_M
from aether.core.cells import grid_file
from aether.errors import ModelError, TableError
from aether.io.tables import (
    POI_EMBEDDING_COLUMNS,
    POI_EMBEDDINGS_FILE,
    read_table,
    write_parquet,
)
from aether.ml.checkpoints import CONFIG_FILE, MODELS_DIR, load_model
from aether.ml.config import TrainConfig

if TYPE_CHECKING:
    import geopandas as gpd



def aether_columns(dim: int) -> tuple[str, ...]:
    """Names of the AETHER vector columns of a head with ``dim`` outputs: E000, E001, …"""
    return tuple(f"E{i:03d}" for i in range(dim))


#: The columns of the default architecture's output.
AETHER_COLUMNS: tuple[str, ...] = aether_columns(TrainConfig().out_dim)
AETHER_DIR = "aether"
AETHER_POIS_FILE = "pois.parquet"
GRID_COLUMNS: tuple[str, ...] = ("cell_id", *BANDS, "weight", "valid_fraction", "x", "y")
_GRID_FILE = re.compile(r"^grid_embeddings_(\d+(?:\.\d+)?)m\.parquet$")


def grid_sizes(city_dir: Path) -> list[float]:
    """Cell sizes of the grid tables present in a city directory, smallest first."""
    found = (_GRID_FILE.match(p.name) for p in city_dir.glob("grid_embeddings_*m.parquet"))
    return sorted(float(m.group(1)) for m in found if m)


@dataclass(frozen=True)
class Run:
    """A trained model and the facts about its training data it must be used with."""

    name: str
    path: Path
    model: Any  # aether.ml.heads.AetherModel (torch is imported lazily)
    config: dict[str, Any]

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
    def columns(self) -> tuple[str, ...]:
        return aether_columns(self.out_dim)

    @property
    def preset(self) -> str:
        return str(self.config.get("preset", self.name))


def run_path(city_dir: Path, model: str | Path) -> Path:
    """A run directory: a path as given, else a run name under ``<city>/models/``."""
    p = Path(model)
    if p.is_dir():
        return p
    named = city_dir / MODELS_DIR / str(model)
    if named.is_dir():
        return named
    have = sorted(d.name for d in (city_dir / MODELS_DIR).glob("*") if d.is_dir())
    raise ModelError(
        f"no trained model {str(model)!r} for {city_dir}",
        f"train one with `aether train` (runs here: {', '.join(have) or 'none'})",
    )


def list_runs(city_dir: Path) -> list[str]:
    """Names of the trained runs of a city, sorted."""
    return sorted(d.name for d in (city_dir / MODELS_DIR).glob("*")
                  if (d / CONFIG_FILE).is_file())


def load_run(city_dir: Path, model: str | Path, *, slug: str | None, year: int | None) -> Run:
    """Load a run and check it was trained for this city and year (when given)."""
    path = run_path(city_dir, model)
    net, config = load_model(path)
    for key, want in (("city", slug), ("year", year)):
        have = config.get(key)
        if want is not None and have is not None and str(have) != str(want):
            raise ModelError(
                f"model {path.name} was trained for {key} {have}, not {want}",
                f"train a model for {slug} {year} or pass --city/--year of the model",
            )
    if "base_radius_m" not in config:
        raise ModelError(f"model {path.name} has no base_radius_m in its config",
                         "re-train it with `aether train`")
    net.eval()
    return Run(path.name, path, net, dict(config))


def apply_ae(run: Run, x: np.ndarray) -> np.ndarray:
    """AE head on (N, 64) means; rows with any NaN stay NaN (masked, not zero-filled)."""
    import torch

    x = np.asarray(x, dtype=np.float32)
    out = np.full((len(x), run.out_dim), np.nan, np.float32)
    ok = ~np.isnan(x).any(axis=1)
    if ok.any():
        with torch.no_grad():
            out[ok] = run.model.encode_ae(torch.from_numpy(x[ok])).numpy()
    return out


def apply_text(run: Run, texts: list[str], cache_path: Path | None = None) -> np.ndarray:
    """Text head on texts, with the run's own frozen text encoder."""
    import torch

    from aether.ml.text import encode_texts

    emb = encode_texts(texts, cache_path=cache_path, model_name=run.text_model)
    with torch.no_grad():
        return run.model.encode_text(torch.from_numpy(emb)).numpy()


def base_poi_means(city_dir: Path, radius_m: float) -> pd.DataFrame:
    """poi_embeddings rows at one radius (the scale a head was trained on)."""
    emb = read_table(city_dir / POI_EMBEDDINGS_FILE, POI_EMBEDDING_COLUMNS, "poi_embeddings")
    rows = emb[np.isclose(emb["radius_m"].astype(float), radius_m)]
    if rows.empty:
        radii = ", ".join(f"{r:g}" for r in sorted(emb["radius_m"].unique()))
        raise ModelError(
            f"the model needs {radius_m:g} m buffer means; poi_embeddings has radii {radii}",
            f"re-run `aether extract --radius {radius_m:g}` or use a model trained on these radii",
        )
    return rows.reset_index(drop=True)


def read_grid(city_dir: Path, cell_m: float) -> gpd.GeoDataFrame:
    """The grid_embeddings table of one cell size."""
    path = city_dir / grid_file(cell_m)
    if not path.is_file():
        raise TableError(f"no {cell_m:g} m grid at {path}",
                         f"run `aether grid --cell {cell_m:g}` first")
    return read_table(path, GRID_COLUMNS, "grid_embeddings")


def grid_window_means(grid: pd.DataFrame, radius_m: float) -> zonal.Means:
    """Means over the window of ``radius_m`` (a circle, or a square when negative, see
    ``aether.core.windows``) around each cell centre, from the cell means.

    The grid is turned into a raster whose pixels are the cells and whose last band is each
    cell's valid pixel count, so the kernel's coverage weights times that count give the
    exact pixel-area weighting; masked cells (NaN) contribute nothing.
    """
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


def aether_frame(vectors: np.ndarray) -> pd.DataFrame:
    """AETHER vector columns E000, E001, … (one per output of the head)."""
    vectors = np.asarray(vectors, np.float32)
    return pd.DataFrame(vectors, columns=list(aether_columns(vectors.shape[1])))


def aether_dir(city_dir: Path, run_name: str) -> Path:
    return city_dir / AETHER_DIR / run_name


def aether_grid_file(cell_m: float) -> str:
    return f"grid_{cell_m:g}m.parquet"


@dataclass(frozen=True)
class EncodeResult:
    """What ``encode_city`` wrote, with row counts (masked rows keep NaN vectors)."""

    pois_path: Path
    grid_paths: list[Path]
    n_pois: int
    n_cells: int
    n_masked: int


def encode_city(city_dir: Path, run: Run, cell_sizes: list[float] | None = None) -> EncodeResult:
    """Write ``aether/<run>/pois.parquet`` and one ``grid_<cell>m.parquet`` per grid."""
    out = aether_dir(city_dir, run.name)
    r = run.base_radius_m
    pois = base_poi_means(city_dir, r)
    z = apply_ae(run, pois[list(BANDS)].to_numpy())
    poi_df = pd.concat([pois[["poi_id", "year", "radius_m", "valid_fraction"]], aether_frame(z)],
                       axis=1)
    poi_df.insert(3, "run", run.name)
    sizes = grid_sizes(city_dir) if cell_sizes is None else cell_sizes
    if not sizes:
        raise TableError(f"no grid_embeddings table in {city_dir}", "run `aether grid` first")
    grids = {c: read_grid(city_dir, c) for c in sizes}
    pois_path = write_parquet(poi_df, out / AETHER_POIS_FILE)
    grid_paths, n_cells, n_masked = [], 0, int(np.isnan(z[:, 0]).sum())
    for cell_m, grid in grids.items():
        means = grid_window_means(grid, r)
        zg = apply_ae(run, means.mean)
        df = pd.concat([grid[["cell_id", "x", "y"]].reset_index(drop=True), aether_frame(zg)],
                       axis=1)
        df.insert(3, "valid_fraction", means.valid_fraction.astype(np.float32))
        df.insert(3, "run", run.name)
        import geopandas as gpd

        gdf = gpd.GeoDataFrame(df, geometry=grid.geometry.values, crs=grid.crs)
        grid_paths.append(write_parquet(gdf, out / aether_grid_file(cell_m)))
        n_cells += len(df)
        n_masked += int(np.isnan(zg[:, 0]).sum())
    return EncodeResult(pois_path, grid_paths, len(poi_df), n_cells, n_masked)


def read_aether_grid(city_dir: Path, run: Run, cell_m: float) -> gpd.GeoDataFrame:
    """An encoded grid; raises with the command to run when it is missing."""
    path = aether_dir(city_dir, run.name) / aether_grid_file(cell_m)
    if not path.is_file():
        raise TableError(f"no encoded {cell_m:g} m grid for model {run.name}",
                         f"run `aether encode --model {run.name}` first")
    return read_table(path, ("cell_id", "x", "y", *run.columns), "aether grid")



def load_runs(city_dir: Path, models: list[str] | None, *, slug: str, year: int) -> list[Run]:
    """The named runs, or every trained run of the city when none is named."""
    names: list[str | Path] = list(models or list_runs(city_dir))
    if not names:
        raise ModelError(f"no trained model in {city_dir / MODELS_DIR}",
                         "run `aether train` first")
    return [load_run(city_dir, m, slug=slug, year=year) for m in names]


def encoded_cells(city_dir: Path, run_name: str) -> list[float]:
    """Cell sizes of a run's encoded grids, smallest first."""
    found = (re.match(r"^grid_(\d+(?:\.\d+)?)m\.parquet$", p.name)
             for p in aether_dir(city_dir, run_name).glob("grid_*m.parquet"))
    return sorted(float(m.group(1)) for m in found if m)
