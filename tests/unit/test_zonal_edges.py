"""The zonal kernel's edges: polygons and points (``polygon_partial_sums``) against pixel
areas computed here with shapely, finalising (NaN, clipping, chunks, in place), block
geometry, and which prefix rows the circles read."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import shapely
import shapely.affinity
from affine import Affine

from aether.core import zonal
from aether.core.zonal import Partial, PixelBlock, finalize_area, polygon_partial_sums


def _pixel_areas(block: PixelBlock, g: object) -> np.ndarray:
    """Each pixel's area inside ``g``, in pixels, box by box."""
    h, w = block.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            xs = sorted((block.x0 + j * block.dx, block.x0 + (j + 1) * block.dx))
            ys = sorted((block.y0 + i * block.dy, block.y0 + (i + 1) * block.dy))
            out[i, j] = shapely.box(xs[0], ys[0], xs[1], ys[1]).intersection(g).area
    return out / block.pixel_area


@pytest.mark.parametrize("x0", [1000.0, -1090.0])  # west of the origin: negative columns
@pytest.mark.parametrize("dy", [-10.0, 10.0])
def test_polygons_and_points_against_pixel_areas(dy: float, x0: float) -> None:
    rng = np.random.default_rng(2)
    vals = rng.normal(size=(8, 9, 3)).astype(np.float32)
    vals[2, 3] = np.nan
    block = PixelBlock(vals, x0, 1000.0 if dy > 0 else 1080.0, 10.0, dy)
    shapes = [
        shapely.box(500.0, 500.0, 600.0, 600.0),  # outside the block, before the others
        shapely.Polygon([(1012, 1013), (1067, 1021), (1044, 1071)]),
        shapely.box(1070.0, 1050.0, 1150.0, 1120.0),  # past two edges
        shapely.Point(1033.0, 1047.0),
        shapely.box(1020.0, 1020.0, 1040.0, 1040.0),  # on pixel edges
    ]
    shapes = [shapely.affinity.translate(g, x0 - 1000.0) for g in shapes]
    got = polygon_partial_sums(block, shapes)
    valid = ~np.isnan(vals).any(-1)
    filled = np.where(valid[..., None], vals, 0).astype(np.float64)
    for k, g in enumerate(shapes[:3] + shapes[4:]):
        i = k if k < 3 else 4
        wts = _pixel_areas(block, g) * valid
        assert got.valid_weight[i] == pytest.approx(wts.sum(), abs=1e-9)
        np.testing.assert_allclose(got.weighted_sum[i],
                                   np.tensordot(wts, filled, axes=([0, 1], [0, 1])), atol=1e-5)
    assert got.valid_weight[0] == 0 and got.valid_weight[2] > 0
    # a bare point takes the one pixel it falls in, whole
    row = int((1047.0 - block.y0) // dy)
    assert got.valid_weight[3] == 1.0
    np.testing.assert_allclose(got.weighted_sum[3], vals[row, 3], rtol=1e-6)


def test_finalize_marks_empty_clips_and_measures_norms() -> None:
    ws = np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [1.0, 0.0]])
    vw = np.array([1.0, 0.0, 2.0, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 is expected: no warning may escape
        m = finalize_area(Partial(ws, vw, 2), np.array([2.0, 4.0, 1.5, 1.0]))
    assert m.mean.dtype == np.float32 and m.weight.dtype == np.float64
    np.testing.assert_array_equal(m.mean[[0, 2, 3]], [[3, 4], [3, 4], [2, 0]])
    assert np.isnan(m.mean[1]).all()
    np.testing.assert_allclose(m.norm[[0, 2, 3]], [5.0, 5.0, 2.0])
    assert np.isnan(m.norm[1])
    np.testing.assert_array_equal(m.valid_fraction, [0.5, 0.0, 1.0, 0.5])  # 2/1.5 clips
    np.testing.assert_array_equal(m.weight, vw)
    assert not np.shares_memory(m.mean, ws)


def test_finalize_in_chunks_and_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    ws = rng.normal(size=(10, 3))
    vw = rng.uniform(0.5, 2, 10)
    vw[[2, 7]] = 0
    whole = finalize_area(Partial(ws.copy(), vw.copy(), 3), 2.0)
    monkeypatch.setattr(zonal, "FINALIZE_ROWS", 3)
    chunked = finalize_area(Partial(ws.copy(), vw.copy(), 3), 2.0)
    for a, b in ((whole.mean, chunked.mean), (whole.norm, chunked.norm)):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(chunked.mean[[2, 7]]).all() and not np.isnan(chunked.mean[9]).any()
    ws32 = ws.astype(np.float32)
    kept = ws32.copy()
    finalize_area(Partial(ws32, vw, 3), 2.0)
    np.testing.assert_array_equal(ws32, kept)  # not in place unless asked
    over = finalize_area(Partial(ws32, vw, 3), 2.0, in_place=True)
    assert over.mean is ws32
    np.testing.assert_array_equal(np.isnan(over.mean), np.isnan(whole.mean))
    np.testing.assert_allclose(over.mean[vw > 0], whole.mean[vw > 0], rtol=1e-6)
    ws64 = ws.copy()
    assert finalize_area(Partial(ws64, vw, 3), 2.0, in_place=True).mean is not ws64


def test_block_geometry() -> None:
    north_up = PixelBlock.from_transform(np.zeros((4, 5, 1)), Affine(10, 0, 100, 0, -10, 900))
    assert (north_up.x0, north_up.y0, north_up.dx, north_up.dy) == (100, 900, 10, -10)
    assert north_up.bounds() == (100, 860, 150, 900) and north_up.pixel_area == 100
    south_up = PixelBlock(np.zeros((4, 5, 1)), 100.0, 860.0, 10.0, 10.0)
    assert south_up.bounds() == (100, 860, 150, 900)
    west = PixelBlock(np.zeros((4, 5, 1)), 150.0, 860.0, -10.0, 10.0)
    assert west.bounds() == (100, 860, 150, 900)
    for b, d in ((0.5, 0), (0, 0.5), (0.5, 0.5)):
        with pytest.raises(ValueError, match=r"^rotated rasters are not supported$"):
            PixelBlock.from_transform(np.zeros((2, 2, 1)), Affine(10, b, 0, d, -10, 0))


def test_partials_add_up_and_keep_their_width() -> None:
    a = Partial(np.ones((2, 3)), np.array([1.0, 2.0]), 3)
    b = Partial(np.full((2, 3), 2.0), np.array([0.5, 0.0]), 0)
    s = a.add(b)
    np.testing.assert_array_equal(s.weighted_sum, np.full((2, 3), 3.0))
    np.testing.assert_array_equal(s.valid_weight, [1.5, 2.0])
    assert s.n_bands == 3 and b.add(a).n_bands == 3
    assert Partial.zeros(4, 2).weighted_sum.shape == (4, 2)


def test_only_rows_some_circle_reads_get_prefix_sums() -> None:
    touched = zonal._touched_rows
    assert touched(np.array([2, 4]), 3, 20) == [(2, 7)]  # overlapping windows: one run
    assert touched(np.array([0, 10]), 3, 20) == [(0, 3), (10, 13)]
    assert touched(np.array([-5, 18]), 4, 20) == [(18, 20)]  # a window above the part
    assert touched(np.array([-2, 18]), 4, 20) == [(0, 2), (18, 20)]  # clipped at both ends
    assert touched(np.array([25, 5]), 3, 20) == [(5, 8)]  # a window below the part
    assert touched(np.array([7, 7, 7]), 2, 20) == [(7, 9)]


def test_integer_centres_radii_and_edges_give_the_float_results() -> None:
    """The compiled loops take float64 arrays: integer inputs are converted where they come
    in, not refused."""
    rng = np.random.default_rng(4)
    block = PixelBlock(rng.normal(size=(30, 40, 3)).astype(np.float32), 0.0, 300.0, 10.0, -10.0)
    xi, yi = np.array([105, 250, 333]), np.array([150, 77, 201])
    got = zonal.radii_partial_sums(block, xi, yi, [50, 80])
    want = zonal.radii_partial_sums(block, xi.astype(float), yi.astype(float), [50.0, 80.0])
    for g, w in zip(got, want, strict=True):
        assert w.valid_weight.min() > 0
        np.testing.assert_array_equal(g.weighted_sum, w.weighted_sum)
        np.testing.assert_array_equal(g.valid_weight, w.valid_weight)
    xe, ye = np.arange(-60, 71, 10)[None, :], np.arange(-70, 61, 10)[None, :]
    areas = zonal.coverage(np.array([3]), np.array([-1]), 47, xe, ye)
    assert areas.sum() == pytest.approx(np.pi * 47**2, abs=1e-6)
    np.testing.assert_array_equal(areas, zonal.coverage(np.array([3.0]), np.array([-1.0]), 47.0,
                                                        xe.astype(float), ye.astype(float)))


def test_radii_of_zero_give_zero_sums_for_every_point() -> None:
    block = PixelBlock(np.ones((10, 10, 2), np.float32), 0.0, 100.0, 10.0, -10.0)
    out = zonal.radii_partial_sums(block, np.array([50.0, 20.0]), np.array([50.0, 20.0]),
                                   [0.0, 0.0])
    assert len(out) == 2
    for part in out:
        assert part.weighted_sum.shape == (2, 2)
        assert not part.weighted_sum.any() and not part.valid_weight.any()
