"""`aether extract` end to end through the real CLI, and every bad input the issue names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import LineString, Point

from aether.core import aef


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_offline_extract_writes_contract_tables_and_rerun_is_noop(cli, data_root) -> None:
    res = cli("extract", "--city", "Helsinki", "--offline", "--data-dir", str(data_root))
    assert res.returncode == 0, res.stderr
    out = data_root / "helsinki" / "2024"
    pois = gpd.read_parquet(out / "pois.parquet")
    emb = pd.read_parquet(out / "poi_embeddings.parquet")
    assert pois.crs.to_epsg() == 4326 and len(pois) > 1000
    assert list(emb.columns[:3]) == ["poi_id", "year", "radius_m"]
    assert len(emb) == 2 * len(pois)
    assert set(emb.radius_m) == {100.0, 200.0}
    assert emb[list(aef.BANDS)].dtypes.unique().tolist() == [np.dtype("float32")]
    assert emb.valid_fraction.min() > 0.99  # the sample covers every buffer
    assert 0.5 < emb.norm.median() < 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["poi_embeddings.parquet"]["rows"] == len(emb)
    before = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    again = cli("extract", "--city", "Helsinki", "--offline", "--data-dir", str(data_root))
    assert again.returncode == 0 and "up to date" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == before


def test_extra_radius_and_own_pois_file(cli, sample_city, sample_extract, tmp_path) -> None:
    pois = gpd.read_parquet(sample_extract / "pois.parquet").head(50)
    f = tmp_path / "mine.geojson"
    pois[["name", "category", "geometry"]].to_file(f, driver="GeoJSON")
    res = cli("extract", "--city", "My Town", "--offline", "--pois", str(f),
              "--tiles", str(sample_city.tiles), "--radius", "50", "--data-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    emb = pd.read_parquet(tmp_path / "my-town" / "2024" / "poi_embeddings.parquet")
    assert len(emb) == 50 and set(emb.radius_m) == {50.0}


def _bad_pois(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    nogeom = tmp_path / "nogeom.csv"
    nogeom.write_text("name,category\nA,cafe\n")
    lines = tmp_path / "lines.geojson"
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[LineString([(24.94, 60.17), (24.95, 60.17)])],
                     crs="EPSG:4326").to_file(lines, driver="GeoJSON")
    return {"missing": tmp_path / "nope.gpkg", "empty": empty, "nogeom": nogeom, "lines": lines}


@pytest.mark.parametrize("case", ["missing", "empty", "nogeom", "lines"])
def test_bad_pois_file(cli, sample_city, tmp_path, case: str) -> None:
    path = _bad_pois(tmp_path)[case]
    data = tmp_path / "data"
    res = cli("extract", "--city", "Town", "--offline", "--pois", str(path),
              "--tiles", str(sample_city.tiles), "--data-dir", str(data))
    _assert_one_line_error(res)
    assert not (data / "town").exists()


def _assert_one_line_error(res) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aether: error:"), res.stderr
    assert "Traceback" not in res.stderr


def _pois_file(tmp_path: Path, lon: float = 24.944, lat: float = 60.17) -> Path:
    f = tmp_path / "p.geojson"
    gpd.GeoDataFrame({"name": ["Cafe X"], "category": ["cafe"]}, geometry=[Point(lon, lat)],
                     crs="EPSG:4326").to_file(f, driver="GeoJSON")
    return f


def test_bad_tiles_year_radius_and_names(cli, sample_city, tmp_path) -> None:
    data = tmp_path / "data"
    pois = _pois_file(tmp_path)
    (tmp_path / "far").mkdir()
    far = _pois_file(tmp_path / "far", lon=-70.0, lat=-30.0)
    noindex = tmp_path / "noindex"
    noindex.mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(sample_city.tiles, corrupt)
    for tif in corrupt.rglob("*.tiff"):
        tif.write_bytes(tif.read_bytes()[:2000])
    base = ("extract", "--offline", "--data-dir", str(data))
    cases = {
        "unknown offline city": ("--city", "Atlantis"),
        "no index": ("--city", "T", "--pois", str(pois), "--tiles", str(noindex)),
        "no covering tile": ("--city", "T", "--pois", str(far), "--tiles",
                             str(sample_city.tiles)),
        "year without tiles": ("--city", "Helsinki", "--year", "2019"),
        "negative radius": ("--city", "Helsinki", "--radius", "-5"),
        "absurd radius": ("--city", "Helsinki", "--radius", "1e7"),
        "corrupt tile": ("--city", "T", "--pois", str(pois), "--tiles", str(corrupt)),
        "escaping name": ("--city", "../../etc", "--pois", str(pois), "--tiles",
                          str(sample_city.tiles)),
    }
    for label, args in cases.items():
        res = cli(*base, *args)
        assert res.returncode == 2, (label, res.stderr)
        _assert_one_line_error(res)
        written = [p for p in data.rglob("*.parquet") if "_sample" not in p.parts]
        assert not written, label
    assert not (tmp_path.parent / "etc").exists()
