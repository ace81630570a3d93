"""The zonal kernel: exact coverage, NaN handling, tiles that split a buffer."""

from __future__ import annotations

import numpy as np

from aether.core.zonal import (
    Partial,
    PixelBlock,
    buffer_means,
    coverage,
    finalize,
    partial_sums,
)


def test_coverage_sums_to_circle_area() -> None:
    cx, cy, r = np.array([3.7]), np.array([-1.2]), 47.0
    xe = np.arange(-60, 71, 10.0)[None, :]
    ye = np.arange(-70, 61, 10.0)[None, :]
    w = coverage(cx, cy, r, xe, ye)
    assert abs(w.sum() - np.pi * r * r) < 1e-6
    assert w.max() <= 100 + 1e-9 and w.min() >= 0


def test_constant_field_gives_constant_mean_and_full_fraction() -> None:
    vals = np.full((50, 60, 4), 0.25, dtype=np.float32)
    block = PixelBlock(vals, 0.0, 500.0, 10.0, -10.0)
    m = buffer_means(block, np.array([300.0]), np.array([250.0]), 100.0)
    np.testing.assert_allclose(m.mean[0], 0.25, rtol=1e-6)
    assert abs(m.valid_fraction[0] - 1.0) < 1e-12
    assert abs(m.weight[0] - np.pi * 100) < 1e-6  # π r² in pixels of 100 m²
    assert abs(m.norm[0] - 0.5) < 1e-6


def test_linear_field_mean_is_value_at_centre() -> None:
    """A linear field's area-weighted mean over a disc is its value at the centre."""
    h, w = 80, 80
    cols = np.arange(w) * 10 + 5.0
    rows_y = 800 - (np.arange(h) * 10 + 5.0)
    field = (0.001 * cols[None, :] + 0.002 * rows_y[:, None]).astype(np.float32)[..., None]
    block = PixelBlock(field, 0.0, 800.0, 10.0, -10.0)
    x, y = np.array([401.3]), np.array([377.9])
    m = buffer_means(block, x, y, 150.0)
    assert abs(m.mean[0, 0] - (0.001 * x[0] + 0.002 * y[0])) < 2e-4


def test_nodata_pixels_are_excluded_and_counted() -> None:
    vals = np.ones((40, 40, 2), dtype=np.float32)
    vals[:, :20] = np.nan  # west half is nodata
    block = PixelBlock(vals, 0.0, 400.0, 10.0, -10.0)
    m = buffer_means(block, np.array([200.0]), np.array([200.0]), 100.0)
    np.testing.assert_allclose(m.mean[0], 1.0)
    assert abs(m.valid_fraction[0] - 0.5) < 1e-9
    outside = buffer_means(block, np.array([100.0]), np.array([200.0]), 50.0)
    assert np.isnan(outside.mean).all() and outside.valid_fraction[0] == 0


def test_buffer_split_across_blocks_equals_whole() -> None:
    rng = np.random.default_rng(7)
    vals = rng.normal(size=(60, 60, 3)).astype(np.float32)
    whole = PixelBlock(vals, 0.0, 600.0, 10.0, -10.0)
    west = PixelBlock(vals[:, :31], 0.0, 600.0, 10.0, -10.0)
    east = PixelBlock(vals[:, 31:], 310.0, 600.0, 10.0, -10.0)
    x, y = rng.uniform(150, 450, 20), rng.uniform(150, 450, 20)
    ref = buffer_means(whole, x, y, 120.0)
    parts = partial_sums(west, x, y, 120.0).add(partial_sums(east, x, y, 120.0))
    got = finalize(parts, 120.0, 100.0)
    np.testing.assert_allclose(got.mean, ref.mean, atol=1e-6)
    np.testing.assert_allclose(got.valid_fraction, ref.valid_fraction, atol=1e-12)


def test_south_up_block_equals_north_up() -> None:
    rng = np.random.default_rng(8)
    vals = rng.normal(size=(30, 30, 2)).astype(np.float32)
    north = PixelBlock(vals, 0.0, 300.0, 10.0, -10.0)
    south = PixelBlock(vals[::-1].copy(), 0.0, 0.0, 10.0, 10.0)
    x, y = rng.uniform(0, 300, 15), rng.uniform(0, 300, 15)
    a = buffer_means(north, x, y, 55.0)
    b = buffer_means(south, x, y, 55.0)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-6)
    assert isinstance(partial_sums(north, x[:0], y[:0], 55.0), Partial)
