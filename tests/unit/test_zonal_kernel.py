"""The fast kernel's pieces: float32 decode, cut-pixel (ring) coverage, all radii at once."""

from __future__ import annotations

import numpy as np
import pytest

from aether.core import aef
from aether.core.zonal import PixelBlock, coverage, partial_sums, radii_partial_sums


def test_float32_decode_is_bit_identical_to_the_lut() -> None:
    q = np.arange(-127, 128, dtype=np.int16).astype(np.int8)
    q = np.broadcast_to(q[:, None], (255, aef.N_BANDS)).copy()  # a pixel per value
    values, valid = aef.decode(q)
    lut = aef.DEQUANT_LUT[q.astype(np.int16) + 128]
    assert values.dtype == np.float32 and values.flags.c_contiguous
    np.testing.assert_array_equal(values.view(np.uint32), lut.view(np.uint32))
    assert valid.all()


def test_decode_nodata_is_zero_and_invalid() -> None:
    q = np.full((2, 3, aef.N_BANDS), 100, dtype=np.int8)
    q[1, 2] = aef.NODATA
    values, valid = aef.decode(q)
    assert valid.tolist() == [[True] * 3, [True, True, False]]
    assert (values[1, 2] == 0).all()
    assert values[0, 0, 0] == np.float32(100 * 100 / 16256.25)
    with pytest.raises(TypeError):
        aef.decode(q.astype(np.int16))


def _one_hot_block(h: int, w: int, dy: float) -> PixelBlock:
    """A block whose band k is 1 at pixel k only: its weighted sums are the pixel weights."""
    vals = np.eye(h * w, dtype=np.float32).reshape(h, w, h * w)
    y0 = 0.0 if dy > 0 else h * abs(dy)
    return PixelBlock(vals, 0.0, y0, 10.0, dy)


def _shapely_fractions(block: PixelBlock, x: float, y: float, r: float) -> np.ndarray:
    """Oracle: pixel boxes ∩ an 8,192-gon of the circle (within 1e-6 px of the disc)."""
    import shapely

    h, w = block.shape
    circle = shapely.Point(x, y).buffer(r, quad_segs=2048)
    xe = block.x0 + np.arange(w + 1) * block.dx
    ye = block.y0 + np.arange(h + 1) * block.dy
    boxes = shapely.box(xe[None, :-1], np.minimum(ye[:-1], ye[1:])[:, None],
                        xe[None, 1:], np.maximum(ye[:-1], ye[1:])[:, None])
    return shapely.area(shapely.intersection(boxes, circle)) / block.pixel_area


@pytest.mark.parametrize("dy", [-10.0, 10.0])
def test_cut_pixel_coverage_matches_exact_areas_on_random_circles(dy: float) -> None:
    rng = np.random.default_rng(3)
    block = _one_hot_block(14, 16, dy)
    xmin, ymin, xmax, ymax = block.bounds()
    for _ in range(6):  # some circles reach past the block's edges
        r = rng.uniform(8, 90)
        x, y = rng.uniform(xmin - 20, xmax + 20), rng.uniform(ymin - 20, ymax + 20)
        part = partial_sums(block, np.array([x]), np.array([y]), r)
        got = part.weighted_sum[0].reshape(block.shape)
        want = _shapely_fractions(block, x, y, r)
        np.testing.assert_allclose(got, want, atol=2e-6)
        assert abs(part.valid_weight[0] - want.sum()) < 1e-5


def _dense_reference(block: PixelBlock, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Weighted sums with the analytic coverage of every pixel of the block (no ring, no
    prefix sums, no parts)."""
    h, w = block.shape
    xe = block.x0 + np.arange(w + 1) * block.dx
    ye = block.y0 + np.arange(h + 1) * block.dy
    wts = coverage(x, y, r, np.tile(xe, (len(x), 1)), np.tile(ye, (len(x), 1)))
    return np.einsum("pij,ijb->pb", wts / block.pixel_area, block.values.astype(np.float64))


def test_all_radii_in_one_product_equal_each_radius_and_the_dense_sums() -> None:
    rng = np.random.default_rng(5)
    h, w = 50, 560  # wider than a 256 px part: circles cross the parts' edges
    vals = rng.uniform(-0.3, 0.3, (h, w, 4)).astype(np.float32)
    block = PixelBlock(vals, 500_000.0, 100_000.0 + h * 10, 10.0, -10.0)
    x = rng.uniform(500_000 - 150, 500_000 + w * 10 + 150, 24)
    y = rng.uniform(100_000 - 150, 100_000 + h * 10 + 150, 24)
    x[:5] = 500_000 + 2560 + rng.uniform(-3, 3, 5)  # right on a part boundary
    both = radii_partial_sums(block, x, y, [100.0, 200.0])
    # the float32 row sums start where the call's largest circle reaches, so another set of
    # radii rounds them differently (by ~1e-6 on sums of ~300); the mean moves by ~1e-9
    for r, got in zip((100.0, 200.0), both, strict=True):
        alone = partial_sums(block, x, y, r)
        np.testing.assert_allclose(got.weighted_sum, alone.weighted_sum, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.valid_weight, alone.valid_weight, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.weighted_sum, _dense_reference(block, x, y, r),
                                   atol=2e-4)  # sums of ≤ 1,257 px: 2e-7 in the mean
    zero = radii_partial_sums(block, x, y, [0.0, 100.0])[0]
    assert not zero.weighted_sum.any() and not zero.valid_weight.any()


@pytest.mark.parametrize("dy", [-10.0, 10.0])
def test_many_random_circles_match_the_dense_analytic_coverage(dy: float) -> None:
    """Chords shorter than a pixel, circles past every edge, radii of a few pixels."""
    rng = np.random.default_rng(11)
    vals = rng.uniform(-0.3, 0.3, (30, 40, 3)).astype(np.float32)
    block = PixelBlock(vals, 0.0, 0.0 if dy > 0 else 300.0, 10.0, dy)
    x, y = rng.uniform(-60, 460, 400), rng.uniform(-60, 360, 400)
    for r in (7.0, 23.0, 100.0):
        got = partial_sums(block, x, y, r).weighted_sum
        np.testing.assert_allclose(got, _dense_reference(block, x, y, r), atol=1e-5)


def _float64_means(q: np.ndarray, block: PixelBlock, x: np.ndarray, y: np.ndarray,
                   r: float) -> np.ndarray:
    """Reference means: every pixel dequantised in float64 with plain numpy, nodata masked,
    weighted by its area inside an 8,192-gon of the circle; NaN where no valid pixel."""
    v = np.sign(q) * (q.astype(np.float64) / 127.5) ** 2
    valid = q[..., 0] != aef.NODATA
    out = np.full((len(x), q.shape[-1]), np.nan)
    for i in range(len(x)):
        wts = _shapely_fractions(block, x[i], y[i], r) * valid
        if wts.sum() > 0:
            out[i] = np.tensordot(wts, v, axes=([0, 1], [0, 1])) / wts.sum()
    return out


@pytest.mark.parametrize("dy", [-10.0, 10.0])
def test_int8_integer_sums_give_the_float64_means(dy: float) -> None:
    """Stored int8 values summed as integers give the means of float64 dequantisation, on
    random values with nodata pixels, a nodata patch, cut pixels, circles past the block's
    edges and across a 256 px part edge."""
    from aether.core.zonal import finalize

    rng = np.random.default_rng(17)
    h, w = 24, 300
    q = rng.integers(-127, 128, (h, w, aef.N_BANDS)).astype(np.int8)
    q[rng.random((h, w)) < 0.1] = aef.NODATA
    q[:, 100:130] = aef.NODATA  # a circle inside it has no valid pixel
    block = PixelBlock.from_int8(q, _transform(0.0, 0.0 if dy > 0 else h * 10.0, dy))
    x = np.r_[rng.uniform(-40, w * 10 + 40, 9), 1150.0, 2560.0 + 3.3]
    y = np.r_[rng.uniform(-40, h * 10 + 40, 9), 120.0, 117.0]
    for r, got in zip((37.0, 110.0), radii_partial_sums(block, x, y, [37.0, 110.0]),
                      strict=True):
        mean = finalize(got, r, block.pixel_area).mean
        want = _float64_means(q, block, x, y, r)
        assert np.isnan(mean[9]).all()  # inside the nodata patch
        np.testing.assert_array_equal(np.isnan(mean), np.isnan(want))
        np.testing.assert_allclose(mean, want, rtol=0, atol=1e-6)


def test_int8_blocks_are_summed_as_exact_integers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The circle kernel never decodes an int8 window (``aef.decode``): its row prefix sums
    are the integers q·|q| (0 at nodata) summed exactly, up to the largest a 256 px part
    holds (256 × 127² < 2^24, exact in float32)."""
    from aether.core import zonal

    def refuse(q: np.ndarray) -> None:
        raise AssertionError("an int8 window was decoded to floats")

    made = []
    row_prefix = zonal._row_prefix

    def spy(*args: object) -> tuple[np.ndarray, np.ndarray]:
        out = row_prefix(*args)
        made.append(out[0].copy())
        return out

    monkeypatch.setattr(aef, "decode", refuse)
    monkeypatch.setattr(zonal, "_row_prefix", spy)
    q = np.full((6, zonal.PART_PX, aef.N_BANDS), 127, np.int8)  # the largest sums a part has
    q[..., 1::2] = -127
    q[2, 7] = aef.NODATA
    block = PixelBlock.from_int8(q, _transform(0.0, 60.0, -10.0))
    radii_partial_sums(block, np.array([1280.0]), np.array([30.0]), [1300.0])
    qq = q.astype(np.int64) * np.abs(q.astype(np.int64))
    qq[2, 7] = 0
    want = np.concatenate([np.zeros((6, 1, aef.N_BANDS)), np.cumsum(qq, axis=1)], axis=1)
    assert len(made) == 1 and np.abs(want).max() == zonal.PART_PX * 127**2
    np.testing.assert_array_equal(made[0], want)


def _transform(x0: float, y0: float, dy: float) -> object:
    from affine import Affine

    return Affine(10.0, 0.0, x0, 0.0, dy, y0)


@pytest.mark.parametrize("dy", [-10.0, 10.0])
def test_blocks_taller_and_wider_than_a_part_match_the_dense_sums(dy: float) -> None:
    """Four parts (256 + 44 rows, 256 + 34 columns): circles on the parts' corner and edges,
    inside each part and past the block."""
    rng = np.random.default_rng(8)
    h, w = 300, 290
    vals = rng.uniform(-0.3, 0.3, (h, w, 3)).astype(np.float32)
    block = PixelBlock(vals, 0.0, 0.0 if dy > 0 else h * 10.0, 10.0, dy)
    row_edge = 2560.0 if dy > 0 else h * 10.0 - 2560.0  # where part row 1 starts
    x = np.r_[2560 + rng.uniform(-5, 5, 6), rng.uniform(-100, 3000, 30)]
    y = np.r_[row_edge + rng.uniform(-5, 5, 6), rng.uniform(-100, 3100, 30)]
    for r, part in zip((60.0, 150.0), radii_partial_sums(block, x, y, [60.0, 150.0]),
                       strict=True):
        np.testing.assert_allclose(part.weighted_sum, _dense_reference(block, x, y, r),
                                   atol=1e-4)


def test_circles_only_in_the_later_parts_are_summed() -> None:
    """The first part (top-left) holds no circle: the parts after it are still reduced."""
    rng = np.random.default_rng(9)
    vals = rng.uniform(-0.3, 0.3, (280, 300, 2)).astype(np.float32)
    block = PixelBlock(vals, 0.0, 2800.0, 10.0, -10.0)
    x = rng.uniform(2560 + 200, 2950, 12)
    y = rng.uniform(50, 2750, 12)
    got = radii_partial_sums(block, x, y, [120.0])[0]
    np.testing.assert_allclose(got.weighted_sum, _dense_reference(block, x, y, 120.0),
                               atol=1e-4)
    assert (got.valid_weight > 100).all()


def test_radii_at_and_below_zero_are_empty_and_tiny_ones_are_not() -> None:
    vals = np.ones((20, 20, 2), np.float32)
    block = PixelBlock(vals, 0.0, 200.0, 10.0, -10.0)
    x, y = np.array([103.0, 57.0]), np.array([96.0, 150.0])
    zero, tiny, neg = radii_partial_sums(block, x, y, [0.0, 0.5, -3.0])
    assert not zero.valid_weight.any() and not neg.valid_weight.any()
    np.testing.assert_allclose(tiny.valid_weight, np.pi * 0.25 / 100.0, rtol=1e-9)
    empty = radii_partial_sums(block, np.zeros(0), np.zeros(0), [50.0])[0]
    assert empty.weighted_sum.shape == (0, 2) and empty.valid_weight.shape == (0,)


def test_columns_running_west_match_the_dense_sums() -> None:
    """A raster whose x pixel size is negative: whole rows of prefix sums, same sums."""
    rng = np.random.default_rng(12)
    vals = rng.uniform(-0.3, 0.3, (30, 40, 3)).astype(np.float32)
    block = PixelBlock(vals, 400.0, 300.0, -10.0, -10.0)
    x, y = rng.uniform(-30, 430, 60), rng.uniform(-30, 330, 60)
    for r in (9.0, 45.0):
        got = partial_sums(block, x, y, r)
        np.testing.assert_allclose(got.weighted_sum, _dense_reference(block, x, y, r), atol=1e-5)
        assert (got.valid_weight > 0).sum() > 40
