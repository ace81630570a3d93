"""Square pixel windows (the reference's 9 × 9 / 19 × 19 px) against two oracles: the
reference's own definition (nanmean of the pixel block around the POI's pixel, cut at the
raster's edges) and exactextract on the same squares as polygons."""

from __future__ import annotations

import numpy as np
import pytest
from exactextract_ref import exactextract_means

from aether.core import windows, zonal
from aether.errors import InputError

X0, Y0, PX = 385_000.0, 6_673_000.0, 10.0  # north-up, UTM 35N


@pytest.fixture(scope="module")
def raster():
    rng = np.random.default_rng(4)
    vals = rng.normal(size=(60, 70, 64)).astype(np.float32)
    vals[rng.random((60, 70)) < 0.08] = np.nan
    vals[20:26, 30:36] = np.nan  # a nodata patch
    return vals


def _points(n: int = 60):
    rng = np.random.default_rng(5)
    x = X0 + rng.uniform(0, 700, n)
    y = Y0 - rng.uniform(0, 600, n)
    x[:4] = X0 + np.array([3.0, 697.0, 350.0, 12.0])  # at the raster's edges
    y[:4] = Y0 - np.array([300.0, 598.0, 2.0, 591.0])
    return x, y


def _ours(vals, x, y, p):
    block = zonal.PixelBlock(vals, X0, Y0, PX, -PX)
    r = windows.square_radius(p)
    return windows.finalize(windows.partial_sums(block, x, y, r), r, PX * PX)


def test_parse_window_spec():
    assert windows.parse_window("square:4,9") == (-45.0, -95.0)
    assert windows.parse_window("circle:100,200") == (100.0, 200.0)
    for bad in ("square:", "square:1.5", "hex:3", "circle:-5", "square:a", "square:4,,9",
                "square:4,", "circle:,100"):
        with pytest.raises(InputError):
            windows.parse_window(bad)


def test_extract_option_names_the_window_a_hint_asks_for():
    """A hint's remedy for a missing window is the option that makes it: a square is
    ``--window square:P``, never a negative ``--radius``."""
    assert windows.extract_option(-45.0) == "--window square:4"
    assert windows.extract_option(-95.0) == "--window square:9"
    assert windows.extract_option(windows.square_radius(0)) == "--window square:0"
    assert windows.extract_option(100.0) == "--radius 100"


@pytest.mark.parametrize("p", [4, 9])
def test_squares_are_the_reference_pixel_windows(raster, p):
    x, y = _points()
    got = _ours(raster, x, y, p)
    h, w, _ = raster.shape
    for i in range(len(x)):
        r, c = int((Y0 - y[i]) // PX), int((x[i] - X0) // PX)
        win = raster[max(0, r - p):min(h, r + p + 1), max(0, c - p):min(w, c + p + 1)]
        with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            want = np.nanmean(win.reshape(-1, 64), axis=0)
        np.testing.assert_allclose(got.mean[i], want, atol=1e-5)
        side = 2 * p + 1
        n_valid = np.isfinite(win[..., 0]).sum()
        assert got.valid_fraction[i] == pytest.approx(n_valid / side**2, abs=1e-6)


@pytest.mark.parametrize("p", [4, 9])
def test_squares_match_exactextract(raster, tmp_path, p):
    import rasterio
    from rasterio.transform import Affine

    path = tmp_path / "r.tif"
    with rasterio.open(path, "w", driver="GTiff", width=70, height=60, count=64,
                       dtype="float32", crs="EPSG:32635", nodata=np.nan,
                       transform=Affine(PX, 0, X0, 0, -PX, Y0)) as ds:
        ds.write(np.moveaxis(raster, -1, 0))
    x, y = _points()
    got = _ours(raster, x, y, p)
    # the squares as polygons, centred on the POI's pixel centre, given to exactextract
    cx = X0 + (np.floor((x - X0) / PX) + 0.5) * PX
    cy = Y0 - (np.floor((Y0 - y) / PX) + 0.5) * PX
    want = exactextract_squares(path, cx, cy, (p + 0.5) * PX)
    ok = np.isfinite(want[:, 0])
    assert ok.sum() == len(x)
    np.testing.assert_allclose(got.mean[ok], want[ok], atol=1e-5)


def exactextract_squares(raster, cx, cy, half):
    import geopandas as gpd
    from exactextract import exact_extract
    from shapely.geometry import box

    squares = [box(a - half, b - half, a + half, b + half) for a, b in zip(cx, cy, strict=True)]
    gdf = gpd.GeoDataFrame({"i": np.arange(len(cx))}, geometry=squares, crs="EPSG:32635")
    df = exact_extract(str(raster), gdf, "mean", output="pandas", strategy="raster-sequential")
    cols = [c for c in df.columns if c.endswith("_mean") or c == "mean"]
    return df[cols].to_numpy(dtype=np.float64)


def test_circles_still_go_to_the_circle_kernel(raster, tmp_path):
    x, y = _points(10)
    block = zonal.PixelBlock(raster, X0, Y0, PX, -PX)
    a = windows.partial_sums(block, x, y, 100.0)
    b = zonal.partial_sums(block, x, y, 100.0)
    assert np.array_equal(a.weighted_sum, b.weighted_sum)
    assert exactextract_means  # the circle oracle lives in the shared parity test


def test_window_specs_at_their_limits():
    assert windows.parse_window("square:0") == (-5.0,)
    assert windows.parse_window("square:4.0") == (-45.0,)
    assert windows.parse_window("circle:100.5,12,0.5") == (100.5, 12.0, 0.5)
    for bad in ("circle:0", "square:-1", "circle", "square", "", "circle:100:200"):
        with pytest.raises(InputError, match="bad window") as e:
            windows.parse_window(bad)
        assert e.value.hint == ("use square:P,... (pixel half-widths, e.g. square:4,9) or "
                                "circle:R,... (metres, e.g. circle:100,200)")
    # the Python API's spelling of a --window, for hints
    assert errors_python_value("window", "square:4,9") == "[-45, -95]"
    assert errors_python_value("window", "circle:100,200") == "[100, 200]"


def errors_python_value(option: str, value: str) -> str:
    from aether import errors

    return errors.PYTHON_VALUES[option](value)


def test_reach_label_and_area_of_each_shape():
    assert windows.reach(100.0) == 100.0
    assert windows.reach(-45.0) == pytest.approx(45.0 * 2**0.5 + 10.0)
    assert [windows.label(r) for r in (-45.0, -95.0, -5.0, 100.0, 12.5)] == [
        "9×9 px square", "19×19 px square", "1×1 px square", "100 m", "12.5 m"]
    assert windows.area_px(100.0, 100.0) == pytest.approx(np.pi * 100.0)
    assert windows.area_px(-45.0, 100.0) == pytest.approx(81.0)
    assert windows.area_px(-45.0, 25.0) == pytest.approx(324.0)
    assert windows.is_square(-5.0) and not windows.is_square(5.0)
    assert not windows.is_square(0.5)


def test_a_point_on_a_pixel_edge_takes_the_pixel_after_it():
    # north-up grid from (0, 100), 10 m pixels: x = 20 starts column 2, y = 80 starts row 2
    boxes = windows.snapped_squares(np.array([20.0, 19.99]), np.array([80.0, 80.01]), 5.0,
                                    0.0, 100.0, 10.0, -10.0)
    assert boxes.tolist() == [[20.0, 70.0, 30.0, 80.0], [10.0, 80.0, 20.0, 90.0]]


def test_mixed_windows_come_back_in_the_order_asked(raster):
    block = zonal.PixelBlock(raster, X0, Y0, PX, -PX)
    x, y = _points(20)
    radii = [-45.0, 100.0, -95.0, 50.0, 100.0]
    mixed = windows.radii_partial_sums(block, x, y, radii)
    assert len(mixed) == len(radii)
    for r, part in zip(radii, mixed, strict=True):
        alone = windows.partial_sums(block, x, y, r)
        np.testing.assert_allclose(part.weighted_sum, alone.weighted_sum, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(part.valid_weight, alone.valid_weight, rtol=1e-12)
    assert not np.allclose(mixed[0].valid_weight, mixed[2].valid_weight)
