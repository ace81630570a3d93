"""Grid cells (``core.cells``) and AlphaEarth's storage facts (``core.aef``) against oracles
written here: sub-pixel sampling for cell coverage, the quantisation formula in float64, and
UTM zones and epochs known from outside (not from the module under test)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from aether.core import aef, cells, zonal
from aether.errors import InputError

SUB = 10  # sub-pixels a side: 1 m on a 10 m pixel, so integer-metre edges split none


# --- aef -----------------------------------------------------------------------------------

def test_lookup_table_is_the_formula_for_every_stored_value() -> None:
    # the table as loaded and as built (a mutant of the builder would not show in the
    # constant, which is made once at import)
    for lut in (aef.DEQUANT_LUT, aef._dequant_lut()):
        for q in range(-127, 128):
            want = np.float32((1 if q > 0 else -1 if q < 0 else 0) * (q / 127.5) ** 2)
            assert lut[q + 128] == want, q
        assert np.isnan(lut[0]) and lut.dtype == np.float32 and lut.shape == (256,)
        assert lut[255] == np.float32((127 / 127.5) ** 2)


def test_decode_and_dequantize_agree_with_the_formula() -> None:
    rng = np.random.default_rng(3)
    q = rng.integers(-127, 128, size=(3, 4, 64)).astype(np.int8)
    q[1, 2, :] = aef.NODATA
    want = np.sign(q.astype(np.float64)) * (q / 127.5) ** 2
    deq = aef.dequantize(q)
    assert deq.dtype == np.float32 and np.isnan(deq[1, 2]).all()
    np.testing.assert_array_equal(np.delete(deq.reshape(12, 64), 6, 0),
                                  np.delete(want.reshape(12, 64), 6, 0).astype(np.float32))
    v, valid = aef.decode(q)
    assert v.flags.c_contiguous and v.dtype == np.float32
    assert valid.tolist() == [[True] * 4, [True, True, False, True], [True] * 4]
    assert (v[1, 2] == 0).all()
    np.testing.assert_array_equal(v[valid], deq[valid])
    for fn in (aef.dequantize, aef.decode):
        with pytest.raises(TypeError, match="int8"):
            fn(q.astype(np.int16))


def test_quantize_rounds_the_square_root_and_marks_nan() -> None:
    v = np.array([1.0, -1.0, 0.0, np.nan, 4.0, -4.0, (10 / 127.5) ** 2, -(10.4 / 127.5) ** 2,
                  (10.6 / 127.5) ** 2])
    assert aef.quantize(v).tolist() == [127, -127, 0, -128, 127, -127, 10, -10, 11]
    assert aef.quantize(v).dtype == np.int8
    grid = np.linspace(-1, 1, 2001)
    back = aef.dequantize(aef.quantize(grid)).astype(np.float64)
    # half a quantisation step of the square root, at most (1.0 clips to 127: exactly half;
    # 1e-7: the float32 table)
    assert np.abs(np.sqrt(np.abs(back)) - np.sqrt(np.abs(grid))).max() <= 0.5 / 127.5 + 1e-7


@pytest.mark.parametrize(("lon", "lat", "epsg"), [
    (24.94, 60.17, 32635),    # Helsinki
    (103.82, 1.35, 32648),    # Singapore
    (151.21, -33.87, 32756),  # Sydney
    (-122.87, 42.33, 32610),  # Medford
    (-180.0, 10.0, 32601), (180.0, 10.0, 32601), (179.99, -10.0, 32760),
    (6.0, 0.0, 32632), (5.999, -0.001, 32731),
])
def test_utm_zone_of_known_places(lon: float, lat: float, epsg: int) -> None:
    assert aef.utm_epsg(lon, lat) == epsg
    assert aef.utm_epsgs(np.array([lon, 0.5]), np.array([lat, -1.0])).tolist() == [epsg, 32731]


def test_zone_labels_and_year_ranges() -> None:
    assert [aef.utm_zone_label(e) for e in (32635, 32756, 32601, 32760)] == [
        "35N", "56S", "1N", "60S"]
    # 2024-01-01 and 2025-01-01 at 00:00 UTC, in ms since the epoch (a leap year: 366 days)
    assert aef.year_range_ms(2024) == (1_704_067_200_000, 1_735_689_600_000)
    start, end = aef.year_range_ms(2017)
    assert (end - start) == 365 * 86_400_000 and start == 1_483_228_800_000


def test_year_ranges_do_not_depend_on_the_machine_time_zone(monkeypatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert aef.year_range_ms(2024) == (1_704_067_200_000, 1_735_689_600_000)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_decode_gives_a_c_ordered_block_from_any_layout() -> None:
    q = (np.arange(2 * 3 * 64) % 255 - 127).reshape(2, 3, 64).astype(np.int8).transpose(1, 0, 2)
    assert not q.flags.c_contiguous
    v, _ = aef.decode(q)
    assert v.flags.c_contiguous
    np.testing.assert_array_equal(v, aef.dequantize(q))


# --- cell specs ----------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "kind", "size", "label"), [
    ("100m", "square", 100.0, "100m"), (100, "square", 100.0, "100m"),
    ("0.5km", "square", 500.0, "500m"), (" 10M ", "square", 10.0, "10m"),
    ("100000", "square", 100_000.0, "100000m"), ("h3:9", "h3", 9.0, "h3r9"),
    ("H3r5", "h3", 5.0, "h3r5"), ("h312", "h3", 12.0, "h3r12"),
])
def test_cell_specs_read(spec: object, kind: str, size: float, label: str) -> None:
    parsed = cells.parse_cell(spec)  # type: ignore[arg-type]
    assert (parsed.kind, parsed.size, parsed.label) == (kind, size, label)
    assert cells.parse_cell(parsed) is parsed


@pytest.mark.parametrize(("spec", "message"), [
    ("9.99m", "out of range"), ("100001", "out of range"), ("0", "out of range"),
    ("h3:4", "out of range"), ("h3:13", "out of range"), ("h3:16", "out of range"),
    ("big", "cannot read"), ("h3:", "cannot read"), ("1e3km", "out of range"),
])
def test_cell_specs_refused(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as e:
        cells.parse_cell(spec)
    assert e.value.hint


# --- square cells ---------------------------------------------------------------------------

BOX = shapely.box(24.930, 60.165, 24.940, 60.170)  # lon/lat, central Helsinki
CRS = "EPSG:32635"


def _projected_bounds() -> tuple[float, ...]:
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    lon, lat = np.meshgrid(np.linspace(24.930, 24.940, 101), np.linspace(60.165, 60.170, 101))
    x, y = tr.transform(lon.ravel(), lat.ravel())
    return x.min(), y.min(), x.max(), y.max()


def test_square_cells_are_aligned_and_cover_the_place() -> None:
    size = 50.0
    c = cells.make_cells(BOX, CRS, cells.parse_cell("50m"))
    xmin, ymin, xmax, ymax = _projected_bounds()
    assert c.x_edges is not None and c.y_edges is not None
    assert np.all(np.diff(c.x_edges) == size) and np.all(np.diff(c.y_edges) == -size)
    assert np.all(c.x_edges % size == 0) and np.all(c.y_edges % size == 0)
    assert c.x_edges[0] <= xmin < c.x_edges[0] + size and c.x_edges[-1] - size < xmax
    assert xmax <= c.x_edges[-1]
    assert c.y_edges[0] >= ymax > c.y_edges[0] - size and c.y_edges[-1] <= ymin
    assert ymin < c.y_edges[-1] + size
    nx, ny = len(c.x_edges) - 1, len(c.y_edges) - 1
    assert len(c) == nx * ny == len(c.ids)
    # row-major from the north-west corner; ids are the centres in metres
    assert c.x[0] == c.x_edges[0] + 25 and c.y[0] == c.y_edges[0] - 25
    assert c.x[1] == c.x[0] + size and c.y[nx] == c.y[0] - size
    assert c.ids[nx + 1] == f"{int(c.x[nx + 1])}_{int(c.y[nx + 1])}"
    np.testing.assert_array_equal(c.area_px, np.full(len(c), 25.0))
    assert c.bounds() == (c.x_edges[0], c.y_edges[-1], c.x_edges[-1], c.y_edges[0])


def _oracle(values: np.ndarray, x0: float, y0: float, xe: np.ndarray, ye: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Sums of the pixel vectors and of the valid area (in pixels) per square cell, by
    assigning each 1 m sub-pixel to the cell its centre lies in."""
    h, w, nb = values.shape
    valid = ~np.isnan(values).any(-1)
    filled = np.where(valid[..., None], values, 0.0)
    xs = x0 + (np.arange(w * SUB) + 0.5) * 10.0 / SUB
    ys = y0 - (np.arange(h * SUB) + 0.5) * 10.0 / SUB
    col = np.searchsorted(xe, xs) - 1
    row = np.searchsorted(-ye, -ys) - 1
    ncol, nrow = len(xe) - 1, len(ye) - 1
    sums, area = np.zeros((ncol * nrow, nb)), np.zeros(ncol * nrow)
    for i in range(h * SUB):
        if not 0 <= row[i] < nrow:
            continue
        for j in range(w * SUB):
            if 0 <= col[j] < ncol and valid[i // SUB, j // SUB]:
                sums[row[i] * ncol + col[j]] += filled[i // SUB, j // SUB] / SUB**2
                area[row[i] * ncol + col[j]] += 1 / SUB**2
    return sums, area


def test_square_cell_means_equal_sub_pixel_sampling_over_split_blocks() -> None:
    c = cells.make_cells(BOX, CRS, cells.parse_cell("50m"))
    assert c.x_edges is not None and c.y_edges is not None
    rng = np.random.default_rng(7)
    x0, y0 = c.x_edges[1] - 35.0, c.y_edges[0] - 15.0  # pixels cut the cells' edges
    vals = rng.normal(size=(12, 15, 64)).astype(np.float32)
    vals[4, 6] = np.nan  # one pixel without data
    block = zonal.PixelBlock(vals, x0, y0, 10.0, -10.0)
    halves = [zonal.PixelBlock(vals[:, :7], x0, y0, 10.0, -10.0),
              zonal.PixelBlock(vals[:, 7:], x0 + 70.0, y0, 10.0, -10.0)]
    whole = cells.accumulate(len(c), [c.sums(block)])
    split = cells.accumulate(len(c), [c.sums(b) for b in halves])
    sums, area = _oracle(vals.astype(np.float64), x0, y0, c.x_edges, c.y_edges)
    for total in (whole, split):
        np.testing.assert_allclose(total.valid_weight, area, atol=1e-9)
        np.testing.assert_allclose(total.weighted_sum, sums, atol=2e-5)
    frame = c.frame(whole)
    touched = area > 0
    assert 0 < touched.sum() < len(c)
    got = frame[list(aef.BANDS)].to_numpy()
    np.testing.assert_allclose(got[touched], sums[touched] / area[touched, None], atol=2e-5)
    assert np.isnan(got[~touched]).all()
    np.testing.assert_allclose(frame["weight"], area, atol=1e-6)
    np.testing.assert_allclose(frame["valid_fraction"], np.clip(area / 25.0, 0, 1), atol=1e-6)
    np.testing.assert_allclose(frame["norm"][touched],
                               np.linalg.norm(sums[touched] / area[touched, None], axis=1),
                               rtol=1e-5)
    assert frame["cell_id"].tolist() == c.ids and frame.attrs["crs"] == CRS
    assert frame.crs.to_epsg() == 4326
    # each cell's polygon is its 50 m square, back in lon/lat
    square = frame.geometry.to_crs(CRS).iloc[touched.argmax()]
    assert square.area == pytest.approx(2500.0, rel=1e-6)
    assert square.centroid.x == pytest.approx(c.x[touched.argmax()], abs=1e-3)


def test_square_cells_from_stored_int8_and_a_block_that_misses() -> None:
    c = cells.make_cells(BOX, CRS, cells.parse_cell("100m"))
    assert c.x_edges is not None and c.y_edges is not None
    rng = np.random.default_rng(1)
    q = rng.integers(-127, 128, size=(10, 10, 64)).astype(np.int8)
    q[0, 0] = aef.NODATA
    x0, y0 = c.x_edges[2] + 20.0, c.y_edges[1] - 40.0
    from affine import Affine

    idx, part = c.sums(zonal.PixelBlock.from_int8(q, Affine(10, 0, x0, 0, -10, y0)))
    decoded = np.sign(q.astype(np.float64)) * (q / 127.5) ** 2
    decoded[0, 0] = np.nan
    sums, area = _oracle(decoded, x0, y0, c.x_edges, c.y_edges)
    total = cells.accumulate(len(c), [(idx, part)])
    np.testing.assert_allclose(total.weighted_sum, sums, atol=1e-5)
    np.testing.assert_allclose(total.valid_weight, area, atol=1e-9)
    far = zonal.PixelBlock(np.ones((4, 4, 64), np.float32), c.x_edges[-1] + 500.0,
                           c.y_edges[0], 10.0, -10.0)
    idx, part = c.sums(far)
    assert len(idx) == 0 and part.weighted_sum.shape == (0, 64)


# --- H3 cells -------------------------------------------------------------------------------

def test_h3_cells_are_those_centred_in_the_place_with_sampled_coverage() -> None:
    import h3

    c = cells.make_cells(BOX, CRS, cells.parse_cell("h3:10"))
    want = sorted(h3.geo_to_cells(BOX, 10))
    assert c.ids == want and c.x_edges is None and len(c.polygons) == len(want)
    for cid in want:  # every centre lies in the place
        lat, lon = h3.cell_to_latlng(cid)
        assert BOX.contains(shapely.Point(lon, lat))
    np.testing.assert_allclose(c.area_px, [p.area / 100.0 for p in c.polygons])
    xb = [p.bounds for p in c.polygons]
    assert c.bounds() == (min(b[0] for b in xb), min(b[1] for b in xb),
                          max(b[2] for b in xb), max(b[3] for b in xb))
    xmin, ymin, xmax, ymax = c.bounds()
    x0, y0 = np.floor(xmin / 10) * 10 + 200, np.ceil(ymax / 10) * 10
    h, w = int((y0 - ymin) // 10) + 2, int((xmax - x0) // 10) - 10
    rng = np.random.default_rng(5)
    vals = rng.normal(size=(h, w, 64)).astype(np.float32)
    idx, part = c.sums(zonal.PixelBlock(vals, x0, y0, 10.0, -10.0))
    inside_block = [i for i, p in enumerate(c.polygons) if p.bounds[2] > x0 + 1]
    assert sorted(idx.tolist()) == inside_block and 0 < len(idx) < len(c)
    # the oracle: 20 x 20 sample points per pixel, each in a polygon or not
    n = 20
    sx = x0 + (np.arange(w * n) + 0.5) * 10.0 / n
    sy = y0 - (np.arange(h * n) + 0.5) * 10.0 / n
    gx, gy = np.meshgrid(sx, sy)
    for k, i in enumerate(idx):
        hit = shapely.contains_xy(c.polygons[i], gx, gy)
        per_px = hit.reshape(h, n, w, n).sum(axis=(1, 3)) / n**2
        want_sum = np.tensordot(per_px, vals.astype(np.float64), axes=([0, 1], [0, 1]))
        assert part.valid_weight[k] == pytest.approx(per_px.sum(), rel=0.002, abs=0.01)
        np.testing.assert_allclose(part.weighted_sum[k] / part.valid_weight[k],
                                   want_sum / per_px.sum(), atol=0.01)


def test_h3_cells_sit_where_h3_puts_them_and_make_a_table() -> None:
    import h3
    from pyproj import Transformer

    c = cells.make_cells(BOX, CRS, cells.parse_cell("h3:10"))
    assert c.spec == cells.CellSpec("h3", 10.0) and c.spec.label == "h3r10"
    back = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    lon, lat = back.transform(c.x, c.y)
    for i, cid in enumerate(c.ids):  # centres and areas from h3 itself, not from the module
        want_lat, want_lon = h3.cell_to_latlng(cid)
        assert (lon[i], lat[i]) == (pytest.approx(want_lon, abs=2e-6),
                                    pytest.approx(want_lat, abs=2e-6))
        # h3 measures on a sphere, the UTM plane on WGS84's ellipsoid: ~0.5% apart at 60° N
        assert c.area_px[i] * 100.0 == pytest.approx(h3.cell_area(cid, "m^2"), rel=1e-2)
        assert c.polygons[i].centroid.x == pytest.approx(c.x[i])
    total = zonal.Partial(np.repeat(c.area_px[:, None], 64, 1), c.area_px.copy(), 64)
    frame = c.frame(total)
    assert list(frame.columns[:3]) == ["cell_id", "A00", "A01"]
    assert frame.columns[-1] == "geometry"
    assert {"weight", "valid_fraction", "norm", "x", "y"} <= set(frame.columns)
    for col in ("weight", "valid_fraction", "norm", "A00"):
        assert frame[col].dtype == np.float32, col
    np.testing.assert_allclose(frame["valid_fraction"], 1.0)
    np.testing.assert_allclose(frame["norm"], 8.0, rtol=1e-6)  # |(1, …, 1)| in 64-d
    np.testing.assert_array_equal(frame["x"], c.x)
    np.testing.assert_array_equal(frame["y"], c.y)
    # the hexagons themselves, back in lon/lat
    for cid, g in zip(frame["cell_id"], frame.geometry, strict=True):
        lat0, lon0 = h3.cell_to_latlng(cid)
        assert g.contains(shapely.Point(lon0, lat0)) and len(g.exterior.coords) == 7


def test_a_place_with_no_h3_centre_and_h3_missing_are_one_line() -> None:
    import sys

    tiny = shapely.box(24.9300, 60.1650, 24.9301, 60.1651)
    with pytest.raises(InputError, match="no H3 cell of resolution 5 has its centre in Tiny"
                       ) as e:
        cells.make_cells(tiny, CRS, cells.parse_cell("h3:5"), name="Tiny")
    assert e.value.hint == "use a finer resolution, e.g. --cell h3:9"
    saved = sys.modules.get("h3")
    sys.modules["h3"] = None  # type: ignore[assignment]  # as if not installed
    try:
        with pytest.raises(InputError, match="H3 cells need the h3 package") as e:
            cells.parse_cell("h3:9")
        assert e.value.hint == "pip install 'aether[grid]'"
        assert cells.parse_cell("100m").size == 100.0  # squares need no h3
    finally:
        sys.modules["h3"] = saved  # type: ignore[assignment]
    with pytest.raises(InputError) as e:
        cells.parse_cell("lots")
    assert e.value.hint == "use e.g. --cell 100m, --cell 0.5km or --cell h3:9"


def test_a_block_on_the_cells_edges_touches_only_the_cells_it_covers() -> None:
    c = cells.make_cells(BOX, CRS, cells.parse_cell("50m"))
    assert c.x_edges is not None and c.y_edges is not None
    ncol = len(c.x_edges) - 1
    # exactly cells (row 1..2, column 2..4): a 150 x 100 m block on their edges
    block = zonal.PixelBlock(np.ones((10, 15, 64), np.float32), c.x_edges[2], c.y_edges[1],
                             10.0, -10.0)
    idx, part = c.sums(block)
    want = sorted(r * ncol + col for r in (1, 2) for col in (2, 3, 4))
    assert sorted(idx.tolist()) == want and idx.dtype == np.int64
    np.testing.assert_allclose(part.valid_weight, 25.0)


def test_a_block_past_the_whole_grid_touches_every_cell() -> None:
    c = cells.make_cells(BOX, CRS, cells.parse_cell("100m"))
    assert c.x_edges is not None and c.y_edges is not None
    w = int((c.x_edges[-1] - c.x_edges[0]) / 10) + 8
    h = int((c.y_edges[0] - c.y_edges[-1]) / 10) + 8
    block = zonal.PixelBlock(np.ones((h, w, 64), np.float32), c.x_edges[0] - 40.0,
                             c.y_edges[0] + 40.0, 10.0, -10.0)
    idx, part = c.sums(block)
    assert sorted(idx.tolist()) == list(range(len(c)))
    np.testing.assert_allclose(part.valid_weight, 100.0)
