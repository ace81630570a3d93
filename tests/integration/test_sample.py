"""The offline sample city: layout, round trip, calibration, determinism, POI-blindness."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
from support import optional_shared_file, shared_file

from aether.core import aef
from aether.io import tiles as tile_io
from aether.sample.city import (
    SAMPLE_MANIFEST,
    ensure_sample,
    render_city,
    sample_place,
    sample_report,
    synthetic_tiles,
    synthetic_tiles_for_bbox,
)
from aether.sample.layers import (
    AREA_COVER,
    FUNCTIONAL_LANDUSE,
    LAYERS,
    LINE_WIDTH_M,
    PHYSICAL_KEYS,
    POI_KEYS,
    Grid,
    area_layer,
    osm_layers,
    physical_tags,
    read_osm_features,
    utm_grid,
)
from aether.sample.stats import (
    AREA_FIGURES,
    AREA_TOLERANCE,
    calibration,
    generator_area_stats,
    reference_stats,
)

MEDFORD = "alphaearth_2021_h3r8_means_medford.json"
REAL_H3_FILES = (MEDFORD, *(f"alphaearth_2021_h3r8_cascadia/alphaearth_2021_h3r8_means_{town}.json"
                            for town in ("chico_east", "chico_west", "eureka_arcata",
                                         "medford_west_centralpoint", "redding")))


@pytest.fixture(scope="module")
def tile(sample_city) -> str:
    idx = tile_io.read_index(sample_city.tiles)
    assert len(idx) == 1
    return str(idx.path.iloc[0])


@pytest.fixture(scope="module")
def block(tile):
    b = tile_io.read_block(tile)
    assert b is not None
    return b


def test_sample_place_lookup():
    place = sample_place("Helsinki")
    assert place is not None and place.slug == "helsinki" and place.crs == "EPSG:32635"
    assert sample_place("  HELSINKI ") == place
    w, s, e, n = place.bbox
    assert 24.935 <= w < 24.936 and 60.164 <= s < 60.165 and e > 24.953 and n > 60.179
    assert sample_place("Atlantis") is None


def test_tiles_in_public_layout_and_round_trip(sample_city, tile, block):
    idx = tile_io.read_index(sample_city.tiles)
    row = idx.iloc[0]
    assert row["crs"] == "EPSG:32635" and row["year"] == 2024 and row["utm_zone"] == "35N"
    rel = Path(tile).relative_to(sample_city.tiles).as_posix()
    assert re.fullmatch(r"2024/35N/[\w]+-\d{10}-\d{10}\.tiff", rel), rel
    with rasterio.open(tile) as ds:
        assert ds.count == 64 and ds.dtypes[0] == "int8" and ds.nodata == aef.NODATA
        assert list(ds.descriptions) == list(aef.BANDS)
        t = ds.transform
        assert t.a == 10.0 and t.e == 10.0  # south-up, like the public COGs
        assert t.c % 10 == 0 and t.f % 10 == 0  # aligned to multiples of 10 m
    # decoded unit vectors everywhere (int8 quantisation error only)
    norms = np.linalg.norm(block.values, axis=-1)
    assert not np.isnan(block.values).any()
    assert abs(float(norms.mean()) - 1) < 0.01 and norms.min() > 0.95 and norms.max() < 1.05
    # the grid covers the extract plus ≥ 300 m, so 200 m buffers of every POI are inside
    inner = utm_grid(sample_city.place.bbox, "EPSG:32635", 300.0)
    xmin, ymin, xmax, ymax = block.bounds()
    assert xmin <= inner.west and ymin <= inner.south and xmax >= inner.east
    assert ymax >= inner.north
    assert (row["utm_west"], row["utm_north"]) == (xmin, ymax)
    # a window read through the south-up transform equals the same part of the whole
    win = tile_io.read_block(tile, (xmin + 100, ymin + 200, xmin + 400, ymin + 300))
    assert win is not None and win.shape == (10, 30)
    r0 = int((block.y0 - (ymin + 200)) / -block.dy) if block.dy < 0 else int(200 / block.dy)
    np.testing.assert_array_equal(win.values, block.values[r0:r0 + 10, 10:40])


def test_calibration_matches_real_alphaearth(sample_city, block):
    cal = calibration(block)
    assert 0.93 <= cal["neighbour_cosine"] <= 0.97, cal
    assert 0.5 <= cal["random_pair_cosine"] <= 0.7, cal
    assert cal["areas"] > 100
    assert sample_report(sample_city)["calibration"] == pytest.approx(cal)
    # per pixel, as real AlphaEarth pixels (../shared/data/README.md): unit norm to the
    # quantisation, max |v| ~0.42, a per-dimension sd of ~0.08-0.09
    values = block.values[~np.isnan(block.values).any(axis=-1)]
    norms = np.linalg.norm(values, axis=1)
    assert norms.min() > 0.98 and norms.max() < 1.02
    assert 0.35 < np.abs(values).max() < 0.55
    assert 0.07 < values.std(axis=0).mean() < 0.1
    medford = optional_shared_file(MEDFORD)
    if medford is not None:  # real H3 res-8 (~0.74 km²) means of AlphaEarth 2021
        real = reference_stats(medford)
        assert real["areas"] == 394 and 0.85 < real["area_norm_median"] < 0.95
        # central Helsinki is denser than Medford's town and farmland, so its ~0.7 km²
        # means are less coherent; they stay within the real cells' range of norms
        assert real["area_norm_min"] - 0.05 < cal["area_norm_min"]
        assert real["area_norm_min"] < cal["area_norm_median"] <= 0.95


def test_real_h3_statistics_as_documented():
    """The figures below hold area_stats to what ../shared/data/README.md measured."""
    real = reference_stats(shared_file(MEDFORD))
    assert real["random_pair_cosine"] == pytest.approx(0.745, abs=0.002)
    assert real["neighbour_cosine"] == pytest.approx(0.92, abs=0.005)
    assert 0.87 <= real["area_norm_median"] <= 0.92


@pytest.mark.parametrize("seed", [0, 1])
def test_generator_matches_real_h3_statistics(seed):
    """H3-r8 means of a procedural city lie in the range of the six real files' figures,
    widened by the stated tolerance (docs/sample.md)."""
    real = [reference_stats(shared_file(name)) for name in REAL_H3_FILES]
    got = generator_area_stats(seed)
    assert got["areas"] >= 60
    for name in AREA_FIGURES:
        lo, hi = min(r[name] for r in real), max(r[name] for r in real)
        tol = AREA_TOLERANCE[name]
        assert lo - tol <= got[name] <= hi + tol, (name, got[name], (lo, hi), tol)


def test_generated_tiles_say_so(sample_city, tile, tmp_path):
    """The label is in the tile and the index, not guessed from the folder: copied
    anywhere, the tiles still label what is made from them."""
    with rasterio.open(tile) as ds:
        label = ds.tags()[aef.SYNTHETIC_TAG]
    assert "not real AlphaEarth" in label and "seed 0" in label
    idx = tile_io.read_index(sample_city.tiles)
    assert idx[aef.SYNTHETIC_COLUMN].tolist() == [label]
    moved = tmp_path / "elsewhere"
    copied = tile_io.tile_record(shutil.copy(tile, tmp_path / "t.tiff"), 2024)
    tile_io.write_index([copied], moved)
    assert tile_io.read_index(moved)[aef.SYNTHETIC_COLUMN].tolist() == [label]


def test_reused_then_rebuilt_identically_when_incomplete(sample_city, tile, tmp_path):
    manifest = sample_city.tiles.parent / SAMPLE_MANIFEST
    before = manifest.stat().st_mtime_ns
    assert ensure_sample(sample_city.tiles.parents[2]) == sample_city
    assert manifest.stat().st_mtime_ns == before  # reused, not rebuilt
    # a fresh build with the same seed gives the same bytes; a missing tile is rebuilt
    fresh = ensure_sample(tmp_path)
    fresh_tile = fresh.tiles / Path(tile).relative_to(sample_city.tiles)
    assert fresh_tile.read_bytes() == Path(tile).read_bytes()
    fresh_tile.unlink()
    # a build a killed process left behind goes; a link is removed, never followed
    with subprocess.Popen(["true"]) as gone:
        pass
    pid = gone.pid  # a process that has exited
    (tmp_path / "_sample" / f".helsinki.{pid}-abc.tmp" / "tiles").mkdir(parents=True)
    keep = tmp_path / "keep"
    (keep / "tiles").mkdir(parents=True)
    (tmp_path / "_sample" / f".helsinki.{pid}-link.tmp").symlink_to(keep)
    ensure_sample(tmp_path)
    assert fresh_tile.read_bytes() == Path(tile).read_bytes()
    assert not [p for p in (tmp_path / "_sample").iterdir() if p.name.startswith(".")]
    assert (keep / "tiles").is_dir()


def test_whitelist_excludes_poi_tags_and_functional_landuse():
    assert not PHYSICAL_KEYS & POI_KEYS
    pairs = set().union(*AREA_COVER.values()) | set(LINE_WIDTH_M)
    assert not {k for k, _ in pairs} & POI_KEYS
    assert not {v for k, v in pairs if k == "landuse"} & FUNCTIONAL_LANDUSE
    for value in FUNCTIONAL_LANDUSE:
        assert area_layer(physical_tags({"landuse": value}.items())) is None
    assert area_layer(physical_tags({"leisure": "park", "amenity": "school"}.items())) is None
    assert physical_tags({"building": "yes", "shop": "bakery"}.items()) == {"building": "yes"}
    assert area_layer({"landuse": "grass"}) == "green"


def _perturbed_pbf(src: Path, dst: Path) -> Counter:
    """Drop POI nodes and functional land-use polygons, strip POI tags, tag buildings as POIs.

    Objects that also carry physical form (a named tree, a land-use way that is the outline
    of a building relation) lose only their POI / land-use tags, not their geometry.
    """
    import osmium

    members = {n.ref for w in osmium.FileProcessor(str(src), osmium.osm.WAY) for n in w.nodes}
    members |= {m.ref for r in osmium.FileProcessor(str(src), osmium.osm.RELATION)
                for m in r.members}
    seen: Counter = Counter()
    with osmium.SimpleWriter(str(dst)) as writer:
        for o in osmium.FileProcessor(str(src)):
            tags = dict(o.tags)
            poi = any(k in POI_KEYS for k in tags)
            functional = tags.get("landuse") in FUNCTIONAL_LANDUSE
            physical = physical_tags({k: v for k, v in tags.items() if k != "landuse"}.items())
            if (poi or functional) and not physical and o.id not in members and not o.is_relation():
                seen[f"{'land-use' if functional else 'poi'} {o.type_str()} dropped"] += 1
                continue
            if poi or functional:
                tags = {k: v for k, v in tags.items() if k not in POI_KEYS
                        and not (k == "landuse" and v in FUNCTIONAL_LANDUSE)}
                seen["tags stripped"] += 1
            elif "building" in tags:
                tags.update(amenity="restaurant", shop="bakery", name="Fake")
                seen["buildings tagged"] += 1
            writer.add(o.replace(tags=tags))
    return seen


def test_raster_blind_to_pois_and_functional_landuse(sample_city, tmp_path):
    perturbed = tmp_path / "perturbed.osm.pbf"
    seen = _perturbed_pbf(sample_city.pbf, perturbed)
    assert seen["poi n dropped"] > 1000 and seen["land-use w dropped"] > 50
    assert seen["buildings tagged"] > 100 and seen["tags stripped"] > 50
    place = sample_city.place
    original, _ = render_city(sample_city.pbf, place, seed=0)
    changed, _ = render_city(perturbed, place, seed=0)
    assert aef.quantize(changed).tobytes() == aef.quantize(original).tobytes()


def test_raster_follows_physical_form(sample_city):
    """Control for the test above: the layers do move when physical form changes."""
    features = read_osm_features(sample_city.pbf)
    grid = utm_grid(sample_city.place.bbox, sample_city.place.crs, 320.0)
    layers = osm_layers(features, grid)
    no_buildings = osm_layers([f for f in features if f.layer != "building"], grid)
    b = LAYERS.index("building")
    assert layers[b].mean() > 0.05 and no_buildings[b].max() == 0
    assert 0.01 < layers[LAYERS.index("road")].mean() < 0.5
    fractions = np.delete(layers, LAYERS.index("height"), axis=0)
    assert layers.min() >= 0 and fractions.max() <= 1
    height_m = layers[LAYERS.index("height")] * 30
    assert 10 < height_m.max() < 200  # mean building height over the pixel, in metres


def test_synthetic_tiles_seamless_and_reused(tmp_path):
    kw = dict(crs="EPSG:32648", west=360_000.0, south=140_000.0, width_px=300, height_px=200,
              seed=3, year=2023)
    small = synthetic_tiles(tmp_path / "small", tile_px=128, **kw)
    whole = synthetic_tiles(tmp_path / "whole", tile_px=512, **kw)
    idx = tile_io.read_index(small)
    assert len(idx) == 6 and set(idx["year"]) == {2023} and set(idx["utm_zone"]) == {"48N"}
    assert (idx.utm_west.min(), idx.utm_south.min()) == (360_000.0, 140_000.0)
    assert (idx.utm_east.max(), idx.utm_north.max()) == (363_000.0, 142_000.0)
    ref = tile_io.read_block(str(tile_io.read_index(whole).path.iloc[0]))
    assert ref is not None and ref.shape == (200, 300)
    for path in idx.path:  # tiles made apart join without seams: same values as one tile
        part = tile_io.read_block(path)
        assert part is not None
        xmin, ymin, xmax, ymax = part.bounds()
        index = tile_io.read_index(whole)
        same = tile_io.read_block(str(index.path.iloc[0]), (xmin, ymin, xmax, ymax))
        np.testing.assert_array_equal(part.values, same.values)
    before = (small / "synthetic.json").stat().st_mtime_ns
    synthetic_tiles(tmp_path / "small", tile_px=128, **kw)
    assert (small / "synthetic.json").stat().st_mtime_ns == before
    cal = calibration(ref)
    assert 0.9 < cal["neighbour_cosine"] < 0.99


def test_synthetic_tiles_for_a_bbox(tmp_path):
    bbox = (103.80, 1.28, 103.81, 1.29)  # a corner of Singapore, in UTM 48N
    out = synthetic_tiles_for_bbox(tmp_path, bbox, margin_m=200.0, seed=1)
    idx = tile_io.read_index(out)
    assert list(idx["crs"]) == ["EPSG:32648"] and list(idx["year"]) == [2024]
    inner = utm_grid(bbox, "EPSG:32648", 200.0)
    assert (idx.utm_west[0], idx.utm_south[0]) == (inner.west, inner.south)
    assert (idx.utm_east[0], idx.utm_north[0]) == (inner.east, inner.north)
    w, s, e, n = bbox
    assert idx.wgs84_west[0] < w and idx.wgs84_south[0] < s
    assert idx.wgs84_east[0] > e and idx.wgs84_north[0] > n


def test_grid_keys_noise_by_global_index():
    g = Grid("EPSG:32648", 360_000.0, 142_000.0, 10, 10)
    assert (g.row0, g.col0) == (-14_200, 36_000) and g.south == 141_900.0


def test_cli_sample_build(cli, sample_city):
    data = sample_city.tiles.parents[2]
    res = cli("sample", "build", "--data-dir", str(data))
    assert res.returncode == 0, res.stderr
    assert str(sample_city.tiles) in res.stdout and str(sample_city.pbf) in res.stdout
    assert "aef_index.parquet" in res.stdout and "neighbour cosine 0.9" in res.stdout
    bad = cli("sample", "build", "--data-dir", str(data), "--year", "1999")
    assert bad.returncode == 2 and "year 1999" in bad.stderr
