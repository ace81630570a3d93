"""Calibration statistics of an embedding raster, comparable with real AlphaEarth figures.

Two scales. Pixels (``calibration``): neighbouring-pixel and random-pair cosines and the
norm of ~0.7 km² circle means, on the sample city's own tile. Areas (``area_stats``): what
the real files in ``../shared/data`` hold — AlphaEarth 2021 means over H3 resolution-8
cells — as random-pair cosine, neighbouring-cell cosine, mean norm and per-dimension
spread; ``generator_area_stats`` renders a procedural city large enough to hold ~75 such
cells and measures it the same way, so a test can hold the generator to the real range.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aether.core.zonal import PixelBlock, buffer_means

AREA_KM2 = 0.7


def _unit(values: np.ndarray) -> np.ndarray:
    return values / np.linalg.norm(values, axis=-1, keepdims=True)


def calibration(block: PixelBlock, *, n_pairs: int = 20_000, n_areas: int = 200,
                seed: int = 0) -> dict[str, float]:
    """Neighbour and random-pair cosines of pixels, and norms of ~0.7 km² circle means.

    Area means go through the zonal kernel (exact coverage), like every buffer mean.
    """
    rng = np.random.default_rng(seed)
    u = _unit(block.values.astype(np.float64))
    valid = ~np.isnan(u).any(axis=-1)
    dots = [np.einsum("ijk,ijk->ij", u[:, :-1], u[:, 1:]), np.einsum("ijk,ijk->ij", u[:-1], u[1:])]
    neighbour = np.concatenate([d[~np.isnan(d)] for d in dots])
    flat = u[valid]
    i, j = rng.integers(0, len(flat), (2, n_pairs))
    pair = np.einsum("ij,ij->i", flat[i], flat[j])[i != j]
    radius = float(np.sqrt(AREA_KM2 * 1e6 / np.pi))
    xmin, ymin, xmax, ymax = block.bounds()
    stats = {
        "neighbour_cosine": float(neighbour.mean()),
        "random_pair_cosine": float(pair.mean()),
        "pixels": int(valid.sum()),
    }
    if xmax - xmin > 2 * radius and ymax - ymin > 2 * radius:
        x = rng.uniform(xmin + radius, xmax - radius, n_areas)
        y = rng.uniform(ymin + radius, ymax - radius, n_areas)
        m = buffer_means(block, x, y, radius)
        norms = np.asarray(m.norm)[np.asarray(m.valid_fraction) > 0.99]
        stats.update(area_norm_median=float(np.median(norms)), area_norm_min=float(norms.min()),
                     areas=len(norms))
    return stats


#: The figures ``area_stats`` gives, in the order docs/sample.md lists them.
AREA_FIGURES = ("random_pair_cosine", "neighbour_cosine", "mean_norm", "dim_std")
#: How far outside the range of the real files a generated city's figure may lie.
AREA_TOLERANCE = {"random_pair_cosine": 0.05, "neighbour_cosine": 0.03, "mean_norm": 0.02,
                  "dim_std": 0.01}
H3_RES = 8
FULL_CELL = 0.9  # a cell counts when it holds ≥ 90% of the fullest cell's pixels


def area_stats(means: np.ndarray, cells: Sequence[str]) -> dict[str, float]:
    """Figures of H3 cell means ``(n, 64)``: the mean cosine of all pairs and of neighbouring
    cells (sharing an edge), the mean norm, and the mean over dimensions of the spread
    (population sd) across cells."""
    import h3

    means = np.asarray(means, np.float64)
    norms = np.linalg.norm(means, axis=1)
    u = means / norms[:, None]
    cos = u @ u.T
    at = {c: i for i, c in enumerate(cells)}
    neighbours = [cos[i, at[o]] for c, i in at.items() for o in h3.grid_disk(c, 1)
                  if o != c and o in at]
    return {"random_pair_cosine": float(cos[~np.eye(len(u), dtype=bool)].mean()),
            "neighbour_cosine": float(np.mean(neighbours)), "mean_norm": float(norms.mean()),
            "dim_std": float(means.std(axis=0).mean()), "areas": len(cells)}


def reference_stats(path: str | Path) -> dict[str, float]:
    """``area_stats`` of real AlphaEarth H3 means (``{cell: {"embedding": [...]}}``), with the
    norm's median and minimum."""
    cells = json.loads(Path(path).read_text())
    means = np.array([c["embedding"] for c in cells.values()], dtype=np.float64)
    norms = np.linalg.norm(means, axis=1)
    return {**area_stats(means, list(cells)), "area_norm_median": float(np.median(norms)),
            "area_norm_min": float(norms.min())}


def h3_means(vectors: np.ndarray, crs: str, west: float, north: float, *,
             res: int = H3_RES, pixel: float = 10.0) -> tuple[np.ndarray, list[str]]:
    """Means of a north-up pixel grid ``(rows, cols, 64)`` over the H3 cells that hold its
    pixel centres, for the cells the grid covers (nearly) whole, as the real files' are."""
    import h3
    from pyproj import Transformer

    rows, cols = vectors.shape[:2]
    x = west + pixel * (np.arange(cols) + 0.5)
    y = north - pixel * (np.arange(rows) + 0.5)
    xx, yy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
        xx.ravel(), yy.ravel())
    ids = np.array([h3.latlng_to_cell(b, a, res) for a, b in zip(lon, lat, strict=True)])
    cells, inv, count = np.unique(ids, return_inverse=True, return_counts=True)
    sums = np.zeros((len(cells), vectors.shape[-1]))
    np.add.at(sums, inv, vectors.reshape(-1, vectors.shape[-1]))
    full = count >= FULL_CELL * count.max()
    return sums[full] / count[full, None], cells[full].tolist()


def generator_area_stats(seed: int = 0, size_px: int = 800, *, crs: str = "EPSG:32610",
                         west: float = 500_000.0, north: float = 4_700_000.0
                         ) -> dict[str, float]:
    """``area_stats`` of a procedural city ``size_px`` pixels square (8 km: ~75 H3-r8 cells)
    as the sample's generator makes it, stored and read back through the int8 quantisation."""
    from aether.core import aef
    from aether.sample.field import HALO_PX, Field
    from aether.sample.layers import Grid, procedural_layers

    grid = Grid(crs, west, north, size_px, size_px)
    span = size_px + 2 * HALO_PX
    layers = procedural_layers(seed, grid.row0 - HALO_PX, grid.col0 - HALO_PX, span, span)
    v = Field(seed).vectors(layers, halo=HALO_PX, row0=grid.row0, col0=grid.col0)
    return area_stats(*h3_means(aef.dequantize(aef.quantize(v)), crs, west, north))
