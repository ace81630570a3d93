"""Overture Places as a POI source: a GeoParquet release in the real Overture schema, made
from the sample city's OSM POIs (tests/overture_release.py), read from a local folder and
from a loopback S3 server (moto) through the same pyarrow dataset code path that reads the
public release."""

from __future__ import annotations

import pandas as pd
import pytest
from overture_release import RELEASE, loopback_s3, write_release


@pytest.fixture(scope="module")
def release(sample_extract, tmp_path_factory):
    import geopandas as gpd

    osm = gpd.read_parquet(sample_extract / "pois.parquet")
    root = tmp_path_factory.mktemp("overture") / "release"
    write_release(root, osm)
    return root, osm


def test_overture_pois_have_the_contract_of_osm_pois(release, sample_city, monkeypatch) -> None:
    from aether.pois.load import load_pois

    root, osm = release
    monkeypatch.setenv("AETHER_OVERTURE_ROOT", str(root))
    ovt = load_pois(f"overture:{RELEASE}", sample_city.place)
    assert ovt.attrs["snapshot"] == {"as_of": RELEASE.split(".")[0],
                                     "from": f"the Overture release {RELEASE}"}
    assert list(ovt.columns) == [*osm.columns, "confidence"]
    assert dict(ovt.dtypes.drop("confidence")) == dict(osm.dtypes)
    assert ovt.crs == osm.crs and len(ovt) == len(osm)
    # categories map back through the same taxonomy: each place keeps its OSM category
    by_name = osm.assign(key=osm.geometry.to_wkb()).set_index("key")
    back = ovt.assign(key=ovt.geometry.to_wkb()).set_index("key")
    common = back.index.intersection(by_name.index)
    assert len(common) > 0.95 * len(osm)
    same = (back.loc[common, "category"] == by_name.loc[common, "category"]).mean()
    assert same > 0.99
    assert ovt["text"].str.startswith("A place of ").all()
    assert ovt["source"].iloc[0] == f"overture:{RELEASE}"
    assert ovt["confidence"].between(0.2, 1.0).all()


def test_bbox_and_confidence_filters(release, sample_city, monkeypatch) -> None:
    from shapely.geometry import box

    from aether.places.place import place_from_polygon
    from aether.pois.readers import overture

    root, osm = release
    monkeypatch.setenv("AETHER_OVERTURE_ROOT", str(root))
    w, s, e, n = sample_city.place.boundary.bounds
    west_half = place_from_polygon("west", box(w, s, (w + e) / 2, n))
    raw = overture.read(west_half, release=RELEASE, min_confidence=0.6)
    x = osm.geometry.x
    assert 0 < len(raw) < ((x <= (w + e) / 2).sum())
    assert (raw.geometry.x <= (w + e) / 2 + overture.PAD).all()  # the bbox filter, padded
    assert (raw["confidence"] >= 0.6).all()


def test_unknown_release_is_one_line(release, sample_city, monkeypatch) -> None:
    from aether.errors import PoiError
    from aether.pois.load import load_pois

    root, _ = release
    monkeypatch.setenv("AETHER_OVERTURE_ROOT", str(root))
    with pytest.raises(PoiError, match="cannot read Overture places"):
        load_pois("overture:1999-01-01.0", sample_city.place)


def test_extract_with_overture_pois_from_loopback_s3(release, sample_city, cli, tmp_path) -> None:
    """The CLI reads the release from an S3 service on 127.0.0.1 (moto, anonymous), as it
    reads the public one, and extracts embeddings for those POIs."""
    root, osm = release
    w, s, e, n = sample_city.place.boundary.bounds
    with loopback_s3(root) as env:
        r = cli("extract", "--bbox", f"{w},{s},{e},{n}", "--pois", f"overture:{RELEASE}",
                "--source", "cog", "--tiles", str(sample_city.tiles), "--radius", "100",
                "--data-dir", str(tmp_path / "data"), env=env)
    assert r.returncode == 0, r.stderr
    out = next((tmp_path / "data").glob("*/2024/poi_embeddings.parquet"))
    emb = pd.read_parquet(out)
    assert len(emb) == len(osm) and emb["poi_id"].str.startswith("overture:").all()
    assert (emb["valid_fraction"] > 0.99).mean() > 0.95


def test_rows_without_geometry_are_counted_in_one_log_line(sample_extract, sample_city,
                                                           tmp_path, monkeypatch,
                                                           caplog) -> None:
    """Half a release's rows with NaN (empty) points are dropped and said once, with their
    count: no GeoPandas warning reaches the user."""
    import warnings

    import geopandas as gpd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    from aether.pois.load import load_pois

    osm = gpd.read_parquet(sample_extract / "pois.parquet").head(100)
    root = tmp_path / "release"
    write_release(root, osm)
    nan_point = shapely.to_wkb(shapely.Point(float("nan"), float("nan")))
    emptied = 0
    for part in sorted((root / RELEASE).rglob("*.parquet")):
        table = pq.read_table(part)
        wkb = table.column("geometry").to_pylist()
        wkb = [nan_point if (emptied + i) % 2 else b for i, b in enumerate(wkb)]
        emptied += len(wkb)
        pq.write_table(table.set_column(table.schema.get_field_index("geometry"), "geometry",
                                        pa.array(wkb, pa.binary())), part)
    assert emptied == 100
    monkeypatch.setenv("AETHER_OVERTURE_ROOT", str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a library warning would fail here
        with caplog.at_level("WARNING", logger="aether"):
            got = load_pois(f"overture:{RELEASE}", sample_city.place)
    dropped = [r.getMessage() for r in caplog.records if "no usable geometry" in r.getMessage()]
    assert dropped == [f"overture:{RELEASE}: 50 of 100 row(s) have no usable geometry "
                       "(missing, empty or NaN coordinates); dropped"]
    assert 0 < len(got) <= 50
