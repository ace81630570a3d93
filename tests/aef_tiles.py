"""Tiny AlphaEarth-format tiles for tests: smooth unit vectors (they compress well) or a
constant vector, written by the product's ``write_tile`` (south-up, int8, nodata -128)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aether.core import aef
from aether.io import tiles as tile_io


def smooth_q(rows: int, cols: int, seed: int = 0, period_px: float = 300.0) -> np.ndarray:
    """int8 ``(64, rows, cols)``, row 0 north: slowly varying unit vectors."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (aef.N_BANDS, 2))
    freq = rng.uniform(0.5, 1.5, (aef.N_BANDS, 2)) * 2 * np.pi / period_px
    v = np.stack([np.sin(freq[b, 0] * r + phase[b, 0]) + np.cos(freq[b, 1] * c + phase[b, 1])
                  for b in range(aef.N_BANDS)], axis=-1)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return np.moveaxis(aef.quantize(v), -1, 0)


def constant_q(rows: int, cols: int, seed: int) -> np.ndarray:
    """int8 ``(64, rows, cols)`` holding one random unit vector everywhere."""
    v = np.random.default_rng(seed).normal(size=aef.N_BANDS)
    q = aef.quantize(v / np.linalg.norm(v)).astype(np.int8)
    return np.ascontiguousarray(np.broadcast_to(q[:, None, None], (aef.N_BANDS, rows, cols)))


def write(root: Path, name: str, q: np.ndarray, crs: str, west: float, north: float,
          year: int = 2024) -> dict[str, object]:
    """Write a tile in the public layout under ``root``; return its index record."""
    zone = aef.utm_zone_label(int(crs.split(":")[1]))
    path = root / str(year) / zone / f"{name}.tiff"
    tile_io.write_tile(path, q, crs, west, north)
    return tile_io.tile_record(path, year)
