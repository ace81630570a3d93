"""The in-memory Python API on the offline sample city: ``aether.pois`` and ``aether.embed``
return frames and write nothing; buffer means agree with exactextract (an independent
implementation) and with the tables ``extract`` writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from exactextract_ref import decoded_geotiff, ours_and_exactextract

import aether
from aether.errors import InputError
from aether.io import tiles as tile_io
from aether.io.tables import POI_COLUMNS, POI_EMBEDDING_COLUMNS


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def helsinki(sample_city, data_root):
    return aether.pois("Helsinki", offline=True, data_dir=data_root)


def test_pois_of_the_sample_city(helsinki, sample_city, sample_extract) -> None:
    import geopandas as gpd

    assert list(helsinki.columns) == list(POI_COLUMNS)
    assert helsinki.crs == "EPSG:4326" and (helsinki.geometry.geom_type == "Point").all()
    w, s, e, n = sample_city.place.bbox
    assert helsinki.geometry.x.between(w, e).all() and helsinki.geometry.y.between(s, n).all()
    assert len(helsinki) > 1000 and helsinki["poi_id"].is_unique
    # the same table `aether extract` writes for the same place
    written = gpd.read_parquet(sample_extract / "pois.parquet")
    assert helsinki["poi_id"].tolist() == written["poi_id"].tolist()


def test_embed_in_memory_matches_exactextract(helsinki, sample_city, data_root,
                                              tmp_path) -> None:
    some = helsinki.iloc[::97].reset_index(drop=True)
    before = _files(data_root)
    emb = aether.embed(some, source="cog", tiles=sample_city.tiles, radii=[200, 100])
    assert _files(data_root) == before  # nothing written

    assert emb.crs == "EPSG:4326" and len(emb) == 2 * len(some)
    assert list(emb.columns) == [*POI_COLUMNS[:-1], "geometry",
                                 *[c for c in POI_EMBEDDING_COLUMNS if c != "poi_id"]]
    assert sorted(set(emb["radius_m"])) == [100.0, 200.0]
    tile = tile_io.read_index(sample_city.tiles).iloc[0]
    raster = decoded_geotiff(tile.path, tmp_path / "decoded.tif")
    for radius in (100.0, 200.0):
        ours, ref = ours_and_exactextract(emb, some, tile, raster, radius)
        assert np.abs(ours - ref).max() <= 1e-4


def test_embed_equals_the_extracted_table(helsinki, sample_city, sample_extract) -> None:
    some = helsinki.iloc[:40]
    emb = aether.embed(some, tiles=sample_city.tiles, radii=[100])
    table = pd.read_parquet(sample_extract / "poi_embeddings.parquet")
    want = table[(table.radius_m == 100) & table.poi_id.isin(some.poi_id)].reset_index(drop=True)
    cols = list(POI_EMBEDDING_COLUMNS)
    # 40 POIs are cut into other windows than all of them: float32 sums in another order
    # (the means' parity with exactextract is 1e-6; rtol alone fails near zero)
    pd.testing.assert_frame_equal(pd.DataFrame(emb[cols]), want[cols], check_dtype=False,
                                  rtol=1e-5, atol=1e-6)


def test_embed_own_points_without_ids(sample_city) -> None:
    import geopandas as gpd
    import shapely

    c = sample_city.place.boundary.centroid
    pts = gpd.GeoDataFrame({"label": ["a", "b"]}, crs="EPSG:4326",
                           geometry=[c, shapely.Point(c.x + 20, c.y)])  # 2nd outside coverage
    emb = aether.embed(pts, tiles=sample_city.tiles)
    assert emb["poi_id"].tolist() == ["0", "1"] and emb["label"].tolist() == ["a", "b"]
    assert emb.loc[0, "valid_fraction"] == 1.0 and not np.isnan(emb.loc[0, "A00"])
    assert emb.loc[1, "valid_fraction"] == 0.0 and np.isnan(emb.loc[1, "A00"])


def test_embed_bad_input(helsinki, sample_city) -> None:
    with pytest.raises(InputError, match="point geometries"):
        discs = helsinki.head(2).geometry.apply(lambda p: p.buffer(1e-3))
        aether.embed(helsinki.head(2).assign(geometry=discs), tiles=sample_city.tiles)
    with pytest.raises(InputError, match="poi_id values repeat"):
        aether.embed(pd.concat([helsinki.head(1)] * 2), tiles=sample_city.tiles)
    with pytest.raises(InputError, match="unknown source"):
        aether.embed(helsinki.head(1), source="nope")
    with pytest.raises(InputError, match="radius"):
        aether.embed(helsinki.head(1), tiles=sample_city.tiles, radii=[-1])


def test_api_names_survive_submodule_imports() -> None:
    """``aether.pois``/``aether.query`` stay callable once their subpackages are imported."""
    import aether.pois.load
    import aether.query.search

    assert callable(aether.pois) and callable(aether.query)
    assert aether.pois.load.load_pois is not None and aether.query.search.search is not None
    assert aether.embed is aether.api.embed and aether.Model is aether.api.Model
    assert aether.similar is aether.api.similar
    with pytest.raises(AttributeError):
        _ = aether.no_such_name
