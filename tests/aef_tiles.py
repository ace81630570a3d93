"""Tiny AlphaEarth-format tiles for tests: smooth unit vectors (they compress well) or a
constant vector, written by the product's ``write_tile`` (south-up, int8, nodata -128)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aether.core import aef
from aether.io import tiles as tile_io


def smooth_q(rows: int, cols: int, seed: int = 0, patch_px: int = 4) -> np.ndarray:
    """int8 ``(64, rows, cols)``, row 0 north: slowly varying unit vectors, constant over
    ``patch_px`` squares (cheap to make, and deflate shrinks them well)."""
    rng = np.random.default_rng(seed)
    pr, pc = -(-rows // patch_px), -(-cols // patch_px)
    phase = rng.uniform(0, 2 * np.pi, (2, aef.N_BANDS))
    freq = rng.uniform(0.5, 1.5, (2, aef.N_BANDS)) * 2 * np.pi / 60.0
    r = np.sin(np.arange(pr)[:, None] * freq[0] + phase[0])
    c = np.cos(np.arange(pc)[:, None] * freq[1] + phase[1])
    v = r[:, None, :] + c[None, :, :]  # (pr, pc, 64)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    q = np.moveaxis(aef.quantize(v), -1, 0)
    q = np.repeat(np.repeat(q, patch_px, axis=1), patch_px, axis=2)
    return np.ascontiguousarray(q[:, :rows, :cols])


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
