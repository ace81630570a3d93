"""Overture Places as a POI source: a GeoParquet release in the real Overture schema, made
here from the sample city's OSM POIs, read from a local folder and from a loopback S3 server
(moto) through the same pyarrow dataset code path that reads the public release."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

RELEASE = "2099-01-01.0"


def _overture_table(pois: pd.DataFrame):
    """The places of ``pois`` as an Overture Places table (id, geometry WKB, bbox, names,
    categories, taxonomy, confidence, ...), the schema of the public releases."""
    import pyarrow as pa
    import shapely

    rng = np.random.default_rng(0)
    codes = [c.replace(" ", "_") for c in pois["category"]]
    tops = [t.replace(" ", "_") for t in pois["top_category"]]
    xy = shapely.get_coordinates(pois.geometry.values)
    n = len(pois)
    names = pa.array([{"primary": None if pd.isna(nm) else nm, "common": None, "rules": None}
                      for nm in pois["name"]],
                     pa.struct([("primary", pa.string()),
                                ("common", pa.map_(pa.string(), pa.string())),
                                ("rules", pa.list_(pa.struct([("variant", pa.string()),
                                                              ("value", pa.string())])))]))
    return pa.table({
        "id": pa.array([f"08f{i:012x}" for i in range(n)]),
        "geometry": pa.array(shapely.to_wkb(pois.geometry.values), pa.binary()),
        "bbox": pa.array([{"xmin": x, "xmax": x, "ymin": y, "ymax": y} for x, y in xy],
                         pa.struct([(k, pa.float32()) for k in ("xmin", "xmax", "ymin", "ymax")])),
        "version": pa.array([0] * n, pa.int32()),
        "names": names,
        "categories": pa.array([{"primary": c, "alternate": None} for c in codes],
                               pa.struct([("primary", pa.string()),
                                          ("alternate", pa.list_(pa.string()))])),
        "basic_category": pa.array(codes),
        "taxonomy": pa.array([{"primary": c, "hierarchy": [t, c], "alternates": None}
                              for c, t in zip(codes, tops, strict=True)],
                             pa.struct([("primary", pa.string()),
                                        ("hierarchy", pa.list_(pa.string())),
                                        ("alternates", pa.list_(pa.string()))])),
        "confidence": pa.array(rng.uniform(0.2, 1.0, n)),
        "operating_status": pa.array(["open"] * n),
    })


def _write_release(root, pois: pd.DataFrame) -> None:
    import pyarrow.parquet as pq

    part = root / RELEASE / "theme=places" / "type=place"
    part.mkdir(parents=True)
    table = _overture_table(pois)
    half = table.num_rows // 2  # two files, row groups of 500: the bbox filter has to work
    pq.write_table(table.slice(0, half), part / "part-00000.parquet", row_group_size=500)
    pq.write_table(table.slice(half), part / "part-00001.parquet", row_group_size=500)


@pytest.fixture(scope="module")
def release(sample_extract, tmp_path_factory):
    import geopandas as gpd

    osm = gpd.read_parquet(sample_extract / "pois.parquet")
    root = tmp_path_factory.mktemp("overture") / "release"
    _write_release(root, osm)
    return root, osm


def test_overture_pois_have_the_contract_of_osm_pois(release, sample_city, monkeypatch) -> None:
    from aether.pois.load import load_pois

    root, osm = release
    monkeypatch.setenv("AETHER_OVERTURE_ROOT", str(root))
    ovt = load_pois(f"overture:{RELEASE}", sample_city.place)
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
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    root, osm = release
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-west-2",
                          aws_access_key_id="test", aws_secret_access_key="test")
        s3.create_bucket(Bucket="overture-test",
                         CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        # public and anonymous, like Overture's own bucket
        s3.put_bucket_policy(Bucket="overture-test", Policy=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": ["arn:aws:s3:::overture-test", "arn:aws:s3:::overture-test/*"]}]}))
        for f in root.rglob("*.parquet"):
            s3.upload_file(str(f), "overture-test", f"release/{f.relative_to(root)}")
        w, s, e, n = sample_city.place.boundary.bounds
        r = cli("extract", "--bbox", f"{w},{s},{e},{n}", "--pois", f"overture:{RELEASE}",
                "--source", "cog", "--tiles", str(sample_city.tiles), "--radius", "100",
                "--data-dir", str(tmp_path / "data"),
                env={"AETHER_OVERTURE_ROOT": "s3://overture-test/release",
                     "AETHER_OVERTURE_ENDPOINT": endpoint})
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr
    out = next((tmp_path / "data").glob("*/2024/poi_embeddings.parquet"))
    emb = pd.read_parquet(out)
    assert len(emb) == len(osm) and emb["poi_id"].str.startswith("overture:").all()
    assert (emb["valid_fraction"] > 0.99).mean() > 0.95
