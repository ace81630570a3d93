"""Incremental refresh: ``years: latest`` follows the data, and a new dataset version (a tile
index's content, an Earth Engine image's ``system:version``) redoes exactly its tables.

Real subprocess runs of ``aether run``; the COG route reads generated tiles (synthetic, in the
AlphaEarth format), the Earth Engine route the loopback emulator with the genuine ee client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import yaml

from aether.io.tables import read_json
from aether.testing.emulator import Emulator, running


@pytest.fixture(scope="module")
def pois(sample_extract: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("incr-pois")
    allp = gpd.read_parquet(sample_extract / "pois.parquet")
    allp.iloc[::11].head(20).reset_index(drop=True).to_parquet(d / "p.parquet")
    return d / "p.parquet"


def aether_run(rf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aether", "run", str(rf)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))


def tasks(rf: Path, proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    name = proc.stdout.split("report: ")[1].split()[0].rsplit("/", 1)[1]
    rep = json.loads((rf.parent / "data" / "runs" / name).read_text())
    return {f"{t['year']}/{t['step']}": t["status"] for t in rep["tasks"]}


def write_index(folder: Path, parts: list[Path]) -> Path:
    """One index over the tiles of several generated years (absolute tile paths)."""
    frames = []
    for p in parts:
        idx = gpd.read_parquet(p / "aef_index.parquet")
        idx["path"] = [str((p / str(v)).resolve()) for v in idx["path"]]
        frames.append(idx)
    folder.mkdir(exist_ok=True)
    gpd.GeoDataFrame(pd.concat(frames, ignore_index=True)).to_parquet(
        folder / "aef_index.parquet")
    return folder


def test_latest_follows_the_index_and_only_the_new_year_is_done(pois, tmp_path):
    from aether.sample.city import synthetic_tiles_for_bbox

    bbox = tuple(float(v) for v in gpd.read_parquet(pois).total_bounds)
    years = {y: synthetic_tiles_for_bbox(tmp_path / f"t{y}", bbox, seed=y, year=y, tile_px=256)
             for y in (2023, 2024)}
    tiles = write_index(tmp_path / "tiles", [years[2023]])
    rf = tmp_path / "r.yaml"
    rf.write_text(yaml.safe_dump({
        "data_dir": "data", "years": ["latest"], "radii": [100],
        "source": {"name": "cog", "options": {"tiles": str(tiles)}},
        "cities": [{"name": "Town", "pois": f"file:{pois}"}]}))
    assert tasks(rf, aether_run(rf)) == {"2023/extract": "done"}
    assert tasks(rf, aether_run(rf)) == {"2023/extract": "up to date"}

    write_index(tiles, [years[2023], years[2024]])  # a new annual layer is published
    assert tasks(rf, aether_run(rf)) == {"2024/extract": "done"}
    both = yaml.safe_load(rf.read_text()) | {"years": [2023, "latest"]}
    rf.write_text(yaml.safe_dump(both))
    # a year added to the index leaves the others' versions as they were
    assert tasks(rf, aether_run(rf)) == {"2023/extract": "up to date",
                                         "2024/extract": "up to date"}
    manifest = read_json(tmp_path / "data" / "town" / "2024" / "manifest.json")
    assert manifest["config"]["dataset"]["tiles"] == sorted(
        Path(p).name for p in gpd.read_parquet(years[2024] / "aef_index.parquet")["path"])


def test_a_new_image_version_on_earth_engine_redoes_the_city(pois, sample_city, tmp_path):
    tiles = Path(shutil.copytree(sample_city.tiles, tmp_path / "tiles"))
    rf = tmp_path / "r.yaml"

    def run_on(emu: Emulator) -> dict[str, str]:
        with running(emu) as url:
            rf.write_text(yaml.safe_dump({
                "data_dir": "data", "years": [2024], "radii": [100],
                "source": {"name": "ee", "options": {"ee_url": url, "ee_project": "p",
                                                     "ee_backoff": 0.01}},
                "cities": [{"name": "Town", "pois": f"file:{pois}"}]}))
            return tasks(rf, aether_run(rf))

    assert run_on(Emulator(tiles=tiles)) == {"2024/extract": "done"}
    before = read_json(tmp_path / "data" / "town" / "2024" / "manifest.json")
    images = before["config"]["dataset"]["images"]
    assert images and all("@" in i for i in images)

    unchanged = Emulator(tiles=tiles)
    assert run_on(unchanged) == {"2024/extract": "up to date"}
    asked = {e["route"] for e in unchanged.log if e.get("route", "").endswith(
        ("compute", "computeFeatures", "computePixels", "export"))}
    assert asked == {"value:compute"}  # the version question only: no pixel is reduced

    used = next(p for p in tiles.rglob("*") if p.is_file() and p.stem in images[0])
    os.utime(used, ns=(used.stat().st_atime_ns, used.stat().st_mtime_ns + 10**9))
    assert run_on(Emulator(tiles=tiles)) == {"2024/extract": "done"}
    after = read_json(tmp_path / "data" / "town" / "2024" / "manifest.json")
    changed = set(after["config"]["dataset"]["images"]) ^ set(images)
    assert len(changed) == 2 and {c.split("@")[0] for c in changed} == {images[0].split("@")[0]}
