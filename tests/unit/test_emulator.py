"""The Earth Engine emulator driven by the genuine earthengine-api client (in-process).

The emulator computes from the polygons Earth Engine builds and EE's 8-bit coverage weights
(shapely), never from aether's zonal kernel: its buffer means must agree with that exact
kernel to the tolerance real EE implies (<= 1e-3 on means, weight within 0.2%) when the
buffer is sent with a small maxError in the UTM projection, and must show EE's ~1.3% area
deficit when it is not. Paging, limits, band naming and default projections must behave as
Earth Engine's do.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import require

from aether.core import aef, zonal
from aether.io import tiles as tile_io

ee = require("ee")

YEAR = 2024
CRS = "EPSG:32635"
#: Tolerances real EE implies for buffers sent as buffer(r, maxError=r/1e4, proj=UTM).
MEAN_TOL, WEIGHT_RTOL = 1e-3, 2e-3


def _block(sample_city):
    """The sample tile of YEAR, decoded (what the COG source reads)."""
    index = tile_io.read_index(sample_city.tiles)
    return tile_io.read_block(str(index[index.year == YEAR].iloc[0].path))


def _points(block, n: int, seed: int = 0, margin: float = 0.0) -> tuple[np.ndarray, ...]:
    """Random UTM points inside the tile, and their lon/lat."""
    from pyproj import Transformer

    xmin, ymin, xmax, ymax = block.bounds()
    rng = np.random.default_rng(seed)
    x = rng.uniform(xmin + margin, xmax - margin, n)
    y = rng.uniform(ymin + margin, ymax - margin, n)
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)
    return x, y, lon, lat


def _buffer(lon: float, lat: float, radius: float, exact: bool):
    """A buffered point: EE's default (1% error, geodesic) or near-exact in the UTM crs."""
    point = ee.Geometry.Point([float(lon), float(lat)])
    return point.buffer(radius, radius / 1e4, CRS) if exact else point.buffer(radius)


def _poi_graph(lon, lat, radius: float, year: int = YEAR, exact: bool = True, **reduce_kw):
    """The POI pipeline as the EE source builds it: buffers, filterDate, filterBounds, mosaic."""
    pois = ee.FeatureCollection([
        ee.Feature(_buffer(a, b, radius, exact), {"poi_id": f"p{i}"})
        for i, (a, b) in enumerate(zip(lon, lat, strict=True))])
    img = (ee.ImageCollection(aef.COLLECTION_ID).filterDate(f"{year}-01-01", f"{year + 1}-01-01")
           .filterBounds(pois.geometry().bounds()).mosaic())
    return img.reduceRegions(collection=pois, reducer=ee.Reducer.mean(), **reduce_kw)


def _means(features: list[dict], bands=aef.BANDS) -> np.ndarray:
    return np.array([[np.nan if f["properties"].get(b) is None else f["properties"][b]
                      for b in bands] for f in features], dtype=np.float64)


@pytest.mark.parametrize("radius", [100, 200])
def test_reduce_regions_agrees_with_the_exact_kernel(ee_emulator, sample_city, radius) -> None:
    block = _block(sample_city)
    x, y, lon, lat = _points(block, 40, seed=radius)
    # one buffer straddles the tile edge: partial coverage must weigh the same way
    x[0], y[0] = block.bounds()[0] + 30, (block.bounds()[1] + block.bounds()[3]) / 2
    from pyproj import Transformer

    lon[0], lat[0] = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x[0], y[0])
    x, y = Transformer.from_crs("EPSG:4326", CRS, always_xy=True).transform(lon, lat)
    want = zonal.buffer_means(block, np.asarray(x), np.asarray(y), radius).mean

    fc = _poi_graph(lon, lat, radius, scale=10, crs=CRS, tileScale=4)
    info = fc.getInfo()
    assert [f["properties"]["poi_id"] for f in info["features"]] == [f"p{i}" for i in range(40)]
    assert info["columns"]["A00"] == "Float"
    got = _means(info["features"])
    diff = np.nanmax(np.abs(got - want))
    assert 1e-7 < diff <= MEAN_TOL  # two independent computations: close, never identical
    assert np.array_equal(np.isnan(got), np.isnan(want))

    df = ee.data.computeFeatures({"expression": fc, "fileFormat": "PANDAS_DATAFRAME"})
    assert len(df) == 40 and {"geo", "poi_id", "A63"} <= set(df.columns)
    assert np.nanmax(np.abs(df[list(aef.BANDS)].to_numpy(float) - want)) <= MEAN_TOL
    routes = [e["route"] for e in ee_emulator.log]
    assert routes.count("value:compute") == 1 and routes.count("table:computeFeatures") == 1


def test_mosaic_default_projection_is_one_degree_wgs84(ee_emulator, sample_city) -> None:
    """Without crs the reduction runs on EE's default EPSG:4326 grid, not the UTM tiles."""
    block = _block(sample_city)
    lon, lat = _points(block, 5, seed=7, margin=300)[2:]
    mosaic = ee.ImageCollection(aef.COLLECTION_ID).filterDate("2024-01-01", "2025-01-01").mosaic()
    proj = mosaic.projection().getInfo()
    assert proj["crs"] == "EPSG:4326" and proj["transform"][0] == 1.0
    native = ee.ImageCollection(aef.COLLECTION_ID).first().projection().getInfo()
    assert native["crs"] == CRS and native["transform"][0] == 10.0
    utm = _means(_poi_graph(lon, lat, 100, scale=10, crs=CRS).getInfo()["features"])
    wgs = _means(_poi_graph(lon, lat, 100, scale=10).getInfo()["features"])
    diff = np.abs(utm - wgs)
    assert 0 < diff.max() < 0.05  # same place, different pixel lattice


def test_band_naming_and_weighted_sum(ee_emulator, sample_city) -> None:
    block = _block(sample_city)
    x, y, lon, lat = _points(block, 3, seed=3, margin=300)
    img = ee.ImageCollection(aef.COLLECTION_ID).first()
    pois = ee.FeatureCollection([ee.Feature(ee.Geometry.Point([float(a), float(b)]).buffer(100))
                                 for a, b in zip(lon, lat, strict=True)])
    one = img.select("A05").reduceRegions(pois, ee.Reducer.mean(), 10, CRS).getInfo()
    assert set(one["features"][0]["properties"]) == {"mean"}
    two = img.select(["A00", "A01"]).reduceRegions(
        pois, ee.Reducer.mean().combine(ee.Reducer.sum(), sharedInputs=True), 10, CRS).getInfo()
    assert set(two["features"][0]["properties"]) == {"A00_mean", "A01_mean", "A00_sum",
                                                     "A01_sum"}
    # the valid-pixel weight as the EE source can ask for it: sum of the mask
    exact = ee.FeatureCollection([ee.Feature(_buffer(a, b, 100, True))
                                  for a, b in zip(lon, lat, strict=True)])
    weight = img.select("A00").mask().rename("w").reduceRegions(
        exact, ee.Reducer.sum(), 10, CRS).getInfo()
    want = zonal.buffer_means(block, x, y, 100)
    got = [f["properties"]["sum"] for f in weight["features"]]
    np.testing.assert_allclose(got, want.weight, rtol=WEIGHT_RTOL)
    # EE's default buffer (maxError 1% of r) is an inscribed 23-gon: ~1.3% of the area short
    default = img.select("A00").mask().reduceRegions(pois, ee.Reducer.sum(), 10, CRS).getInfo()
    short = 1 - np.array([f["properties"]["sum"] for f in default["features"]]) / want.weight
    assert ((short > 0.010) & (short < 0.016)).all(), short
    p0 = one["features"][0]["properties"]["mean"]
    assert p0 == pytest.approx(float(want.mean[0, 5]), abs=3e-3)
    with pytest.raises(ee.EEException, match="did not match any bands"):
        img.select("B4").bandNames().getInfo()


def test_filter_date_selects_the_year(ee_emulator) -> None:
    coll = ee.ImageCollection(aef.COLLECTION_ID)
    assert coll.filterDate("2024-01-01", "2025-01-01").size().getInfo() == 1
    assert coll.filterDate("2023-01-01", "2024-01-01").size().getInfo() == 0
    info = coll.first().getInfo()
    assert [b["id"] for b in info["bands"]] == list(aef.BANDS)
    start, end = aef.year_range_ms(YEAR)
    assert info["properties"]["system:time_start"] == start
    assert info["properties"]["system:time_end"] == end
    with pytest.raises(ee.EEException, match="not found"):
        ee.ImageCollection("NOPE/NOT/HERE").size().getInfo()
    with pytest.raises(ee.EEException, match=r"unsupported algorithm 'Image\.normalizedDiff"):
        coll.first().normalizedDifference(["A00", "A01"]).getInfo()


def test_compute_features_pages(ee_emulator, sample_city) -> None:
    block = _block(sample_city)
    lon, lat = _points(block, 1100, seed=11)[2:]
    fc = ee.FeatureCollection([ee.Feature(ee.Geometry.Point([float(a), float(b)]),
                                          {"poi_id": i})
                               for i, (a, b) in enumerate(zip(lon, lat, strict=True))])
    first = ee.data.computeFeatures({"expression": fc, "pageSize": 500})
    assert len(first["features"]) == 500 and "nextPageToken" in first
    ids = [f["properties"]["poi_id"] for f in first["features"]]
    token = first["nextPageToken"]
    while token:
        page = ee.data.computeFeatures({"expression": fc, "pageSize": 500, "pageToken": token})
        ids += [f["properties"]["poi_id"] for f in page["features"]]
        token = page.get("nextPageToken")
    assert ids == list(range(1100))
    df = ee.data.computeFeatures({"expression": fc, "fileFormat": "PANDAS_DATAFRAME"})
    assert sorted(df["poi_id"]) == list(range(1100))  # the client pages by itself (1000 max)
    pages = [e for e in ee_emulator.log if e["route"] == "table:computeFeatures"]
    assert len(pages) == 3 + 2
    with pytest.raises(ee.EEException, match="Invalid page token"):
        ee.data.computeFeatures({"expression": fc, "pageToken": "nope:5"})


def test_getinfo_refuses_more_than_5000_elements(ee_emulator) -> None:
    fc = ee.FeatureCollection([ee.Feature(ee.Geometry.Point([24.94, 60.17]), {"i": i})
                               for i in range(5001)])
    with pytest.raises(ee.EEException, match="accumulating over 5000 elements"):
        fc.getInfo()
    assert len(fc.limit(5000).getInfo()["features"]) == 5000


def test_compute_pixels_npy_and_48_mib_limit(ee_emulator, sample_city) -> None:
    block = _block(sample_city)
    xmin, _, _, ymax = block.bounds()
    grid = {"dimensions": {"width": 20, "height": 15},
            "affineTransform": {"scaleX": 10, "shearX": 0, "translateX": xmin + 100,
                                "shearY": 0, "scaleY": -10, "translateY": ymax - 50},
            "crsCode": CRS}
    img = ee.ImageCollection(aef.COLLECTION_ID).first().select(["A00", "A07"])
    arr = ee.data.computePixels({"expression": img, "fileFormat": "NUMPY_NDARRAY", "grid": grid})
    assert arr.shape == (15, 20) and arr.dtype.names == ("A00", "A07")
    north_up = block.values if block.dy < 0 else block.values[::-1]
    np.testing.assert_array_equal(arr["A07"], north_up[5:20, 10:30, 7])
    tif = ee.data.computePixels({"expression": img, "fileFormat": "GEO_TIFF", "grid": grid})
    from rasterio.io import MemoryFile

    with MemoryFile(tif) as mem, mem.open() as ds:
        assert ds.crs.to_string() == CRS and ds.descriptions == ("A00", "A07")
        np.testing.assert_array_equal(ds.read(2), arr["A07"])
    big = {**grid, "dimensions": {"width": 1000, "height": 800}}
    with pytest.raises(ee.EEException, match="must be less than or equal to 50331648 bytes"):
        ee.data.computePixels({"expression": ee.ImageCollection(aef.COLLECTION_ID).first(),
                               "fileFormat": "NUMPY_NDARRAY", "grid": big})


def test_compute_pixels_answers_and_counts_the_real_pixel_types(ee_emulator, sample_city
                                                                ) -> None:
    """(bytes per value + 1 mask byte) per band-pixel of the output's types, as EE counts."""
    block = _block(sample_city)
    xmin, _, _, ymax = block.bounds()

    def grid(w: int, h: int) -> dict:
        return {"dimensions": {"width": w, "height": h}, "crsCode": CRS,
                "affineTransform": {"scaleX": 10, "shearX": 0, "translateX": xmin,
                                    "shearY": 0, "scaleY": -10, "translateY": ymax}}

    first = ee.ImageCollection(aef.COLLECTION_ID).first()
    # 64 float bands on 512 x 384 px: 4 bytes a value would be exactly the limit; 5 are not
    with pytest.raises(ee.EEException, match=r"Total request size \(62914560 bytes\)"):
        ee.data.computePixels({"expression": first, "fileFormat": "NUMPY_NDARRAY",
                               "grid": grid(512, 384)})
    filled = first.select("A00").unmask(ee.Image.constant(2147483647), False)  # as xee does
    arr = ee.data.computePixels({"expression": filled, "fileFormat": "NUMPY_NDARRAY",
                                 "grid": grid(4, 3)})
    assert arr.dtype["A00"] == np.float64  # float ∪ int32 needs a double
    arr = ee.data.computePixels({"expression": filled.toFloat(), "fileFormat": "NUMPY_NDARRAY",
                                 "grid": grid(4, 3)})
    assert arr.dtype["A00"] == np.float32
    const = ee.data.computePixels({"expression": ee.Image.constant(7), "fileFormat":
                                   "NUMPY_NDARRAY", "grid": grid(4, 3)})
    assert const.dtype["constant"] == np.uint8 and (const["constant"] == 7).all()
    # 4096 x 2048 px of one band: 41,943,040 bytes as float fit, 75,497,472 as double do not
    with pytest.raises(ee.EEException, match=r"Total request size \(75497472 bytes\)"):
        ee.data.computePixels({"expression": filled, "fileFormat": "NUMPY_NDARRAY",
                               "grid": grid(4096, 2048)})
    info = filled.getInfo()["bands"][0]["data_type"]
    assert info == {"type": "PixelType", "precision": "double"}


def test_xee_opens_the_collection(ee_emulator, sample_city) -> None:
    xr = require("xarray")
    xee = require("xee")
    import shapely

    block = _block(sample_city)
    xmin, ymin, _, ymax = block.bounds()
    from pyproj import Transformer

    lon0, lat0, lon1, lat1 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True
                                                  ).transform_bounds(xmin + 200, ymin + 200,
                                                                     xmin + 600, ymin + 500)
    grid = xee.helpers.fit_geometry(shapely.box(lon0, lat0, lon1, lat1), grid_crs=CRS,
                                    grid_scale=(10, -10))
    ic = ee.ImageCollection(aef.COLLECTION_ID).filterDate("2024-01-01", "2025-01-01")
    ds = xr.open_dataset(ic, engine="ee", **grid)
    a03 = ds["A03"].isel(time=0).values  # (x, y) or (y, x) per xee's layout
    assert a03.size == grid["shape_2d"][0] * grid["shape_2d"][1]
    assert np.isfinite(a03).all()
    north_up = block.values if block.dy < 0 else block.values[::-1]
    t = grid["crs_transform"]
    c0, r0 = round((t[2] - xmin) / 10), round((ymax - t[5]) / 10)
    w, h = grid["shape_2d"]
    want = north_up[r0 : r0 + h, c0 : c0 + w, 3]
    got = a03 if a03.shape == want.shape else a03.T
    np.testing.assert_array_equal(got, want)


def test_masked_regions_and_polygons(ee_emulator, sample_city) -> None:
    """Outside the data: mean is left out by reduceRegions, null in reduceRegion, sum is 0.
    A pixel-aligned rectangle averages exactly the pixels it covers."""
    from pyproj import Transformer

    block = _block(sample_city)
    xmin, _, xmax, ymax = block.bounds()
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    far = to_ll.transform(xmax + 5000, ymax + 5000)
    img = ee.ImageCollection(aef.COLLECTION_ID).first()
    fc = ee.FeatureCollection([ee.Feature(ee.Geometry.Point(list(far)).buffer(100), {"k": 1})])
    props = img.reduceRegions(fc, ee.Reducer.mean(), 10, CRS).getInfo()["features"][0][
        "properties"]
    assert props == {"k": 1}
    one = img.select("A00").reduceRegion(ee.Reducer.mean(), ee.Geometry.Point(list(far)).buffer(
        100), 10, CRS).getInfo()
    assert one == {"mean": None}  # one band: named after the reducer
    assert img.select("A00").mask().reduceRegion(
        ee.Reducer.sum(), ee.Geometry.Point(list(far)).buffer(100), 10, CRS).getInfo() == {
        "sum": 0.0}
    x0, y1 = xmin + 200, ymax - 300  # a 12 x 7 pixel rectangle on the tile's lattice
    rect = ee.Geometry.Rectangle([x0, y1 - 70, x0 + 120, y1], CRS, False)
    got = img.select(["A01", "A02"]).reduceRegion(ee.Reducer.mean(), rect, 10, CRS).getInfo()
    north_up = block.values if block.dy < 0 else block.values[::-1]
    want = np.nanmean(north_up[30:37, 20:32, 1:3].reshape(-1, 2), axis=0)
    assert [got["A01"], got["A02"]] == pytest.approx(want.tolist(), abs=1e-6)


def test_graph_variants_the_tool_may_emit(ee_emulator, sample_city) -> None:
    """map + Feature.buffer, lambdas, filters, lists and element properties."""
    block = _block(sample_city)
    lon, lat = _points(block, 4, seed=5, margin=300)[2:]
    pts = ee.FeatureCollection([ee.Feature(ee.Geometry.Point([float(a), float(b)]),
                                           {"k": i, "name": f"n{i}"})
                                for i, (a, b) in enumerate(zip(lon, lat, strict=True))])
    img = ee.ImageCollection(aef.COLLECTION_ID).filterDate("2024-01-01", "2025-01-01").mosaic()
    mapped = img.reduceRegions(pts.map(lambda f: f.buffer(100)), ee.Reducer.mean(), 10, CRS)
    direct = _poi_graph(lon, lat, 100, exact=False, scale=10, crs=CRS)
    np.testing.assert_array_equal(_means(mapped.getInfo()["features"]),
                                  _means(direct.getInfo()["features"]))
    assert pts.filter(ee.Filter.inList("k", [1, 3])).aggregate_array("k").getInfo() == [1, 3]
    either = ee.Filter.Or(ee.Filter.eq("k", 0), ee.Filter.eq("name", "n2"))
    assert pts.filter(either).aggregate_array("name").getInfo() == ["n0", "n2"]
    both = ee.Filter.And(ee.Filter.eq("k", 0), ee.Filter.eq("name", "n2"))
    assert pts.filter(both).size().getInfo() == 0
    assert pts.limit(2, "k", False).aggregate_array("k").getInfo() == [3, 2]
    tagged = pts.map(lambda f: f.set("z", ee.Number(f.get("k")).multiply(10)))
    assert tagged.aggregate_array("z").getInfo() == [0, 10, 20, 30]
    first = ee.Feature(tagged.first())
    assert first.toDictionary(["k", "z"]).getInfo() == {"k": 0, "z": 0}
    assert first.setMulti({"a": 1}).toDictionary().getInfo() == {"k": 0, "name": "n0",
                                                                 "z": 0, "a": 1}
    assert ee.List([5, 6, 7]).get(1).getInfo() == 6 and ee.List([5, 6]).size().getInfo() == 2
    c = ee.Geometry.Rectangle([24.0, 60.0, 24.2, 60.1]).centroid().getInfo()["coordinates"]
    assert c == pytest.approx([24.1, 60.05])
    coll = ee.ImageCollection(aef.COLLECTION_ID)
    assert coll.filter(ee.Filter.calendarRange(2024, 2024, "year")).size().getInfo() == 1
    assert coll.filter(ee.Filter.calendarRange(2020, 2023, "year")).size().getInfo() == 0
    assert ee.Date("2024-03-01").getInfo()["value"] == 1709251200000


def test_mosaic_across_tiles_and_years(tmp_path) -> None:
    """Two adjacent tiles per year: a buffer on the seam averages both tiles' pixels once
    (the mosaic), and filterDate picks the year's tiles."""
    from pyproj import Transformer

    from aether.testing.emulator import Emulator, connect

    rng = np.random.default_rng(1)
    records, blocks = [], {}
    for year in (2023, 2024):
        for i, west in enumerate((385_000, 385_600)):
            q = rng.integers(-127, 128, size=(64, 60, 60), dtype=np.int16).astype(np.int8)
            q[:, 20:24, 50:60] = aef.NODATA  # a nodata patch next to the seam
            path = tmp_path / str(year) / f"t{i}.tiff"
            tile_io.write_tile(path, q, CRS, west, 6_676_000)
            records.append(tile_io.tile_record(path, year))
            blocks.setdefault(year, []).append(tile_io.read_block(str(path)))
    tile_io.write_index(records, tmp_path)
    x = np.array([385_600.0, 385_580.0, 385_300.0])
    y = np.array([6_675_700.0, 6_675_780.0, 6_675_500.0])
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)
    connect(Emulator(tiles=tmp_path))
    try:
        for year in (2023, 2024):
            parts = [zonal.partial_sums(b, x, y, 150) for b in blocks[year]]
            want = zonal.finalize(parts[0].add(parts[1]), 150, 100.0).mean
            fc = _poi_graph(lon, lat, 150, year, scale=10, crs=CRS)
            assert np.abs(_means(fc.getInfo()["features"]) - want).max() <= MEAN_TOL
    finally:
        ee.Reset()


def test_overlapping_and_duplicate_tiles_count_each_pixel_once(tmp_path) -> None:
    """mosaic(): the last image is on top and a pixel under two tiles (or a tile indexed
    twice) is counted once, so the weight of a buffer is its area, not twice it."""
    from pyproj import Transformer

    from aether.testing.emulator import Emulator, connect

    records = []
    for name, west, q in (("t0", 385_000, 50), ("t1", 385_300, -30)):  # 300 m of overlap
        path = tmp_path / f"{name}.tiff"
        tile_io.write_tile(path, np.full((64, 60, 60), q, dtype=np.int8), CRS, west, 6_676_000)
        records.append(tile_io.tile_record(path, YEAR))
    records.append(records[1])  # a duplicate index row
    tile_io.write_index(records, tmp_path)
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(
        [385_450.0], [6_675_700.0])  # a 100 m buffer inside the overlap
    connect(Emulator(tiles=tmp_path))
    try:
        assert ee.ImageCollection(aef.COLLECTION_ID).size().getInfo() == 3
        img = ee.ImageCollection(aef.COLLECTION_ID).mosaic()
        pois = ee.FeatureCollection([ee.Feature(_buffer(lon[0], lat[0], 100, True))])
        mean = img.select("A07").reduceRegions(pois, ee.Reducer.mean(), 10, CRS).getInfo()
        assert mean["features"][0]["properties"]["mean"] == pytest.approx(-(30 / 127.5) ** 2,
                                                                          rel=1e-6)
        weight = img.select("A07").mask().reduceRegions(pois, ee.Reducer.sum(), 10, CRS
                                                        ).getInfo()
        area_px = np.pi * 100**2 / 100
        assert weight["features"][0]["properties"]["sum"] == pytest.approx(area_px,
                                                                           rel=WEIGHT_RTOL)
    finally:
        ee.Reset()
