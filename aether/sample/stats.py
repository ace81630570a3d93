"""Calibration statistics of an embedding raster, comparable with real AlphaEarth figures.

Real targets (docs/sample.md): neighbouring-pixel cosine ≈ 0.95, random-pair cosine ≈ 0.6
within a city, norm of ~0.7 km² means ≈ 0.9 (real AlphaEarth 2021 H3 res-8 means of
Medford, read by ``reference_stats``, give a median of 0.891, min 0.80).
"""

from __future__ import annotations

import json
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


def reference_stats(path: str | Path) -> dict[str, float]:
    """The same figures from real AlphaEarth H3 res-8 means (``{cell: {"embedding": [...]}}``)."""
    cells = json.loads(Path(path).read_text())
    means = np.array([c["embedding"] for c in cells.values()], dtype=np.float64)
    norms = np.linalg.norm(means, axis=1)
    u = _unit(means)
    cos = u @ u.T
    off = cos[~np.eye(len(u), dtype=bool)]
    return {"area_norm_median": float(np.median(norms)), "area_norm_min": float(norms.min()),
            "area_mean_pair_cosine": float(off.mean()), "areas": len(norms)}
