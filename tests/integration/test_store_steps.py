"""Steps that find each other's outputs through the store and remember what came before
(issues 12, 14, 15): H3 grids through train → encode → query → evaluate, the manifest reused
by later steps, hashes that do not depend on how a path is spelt, one lock for every writer,
half-made models skipped, POI files in folders of their own, --force, evaluate's cache."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest

from aether.io.store import CityStore, data_lock

#: A Nominatim that cannot be reached: any geocoding attempt fails at once.
NO_NETWORK = {"AETHER_NOMINATIM_URL": "http://127.0.0.1:9/", "AETHER_OVERPASS_URL":
              "http://127.0.0.1:9/"}


@pytest.fixture
def data(sample_extract: Path, data_root: Path, tmp_path: Path) -> Path:
    """A data directory of its own holding the sample's extract (and the sample tiles)."""
    root = tmp_path / "data"
    shutil.copytree(data_root / "_sample", root / "_sample")
    shutil.copytree(sample_extract, root / "helsinki" / "2024",
                    ignore=shutil.ignore_patterns("models", "aether", "evaluation", "maps",
                                                  "grid_embeddings_*", "labels"))
    return root


def _one_line_exit_2(r) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_h3_grid_through_train_encode_query_evaluate(data: Path, sample_city, cli) -> None:
    from aether.pipeline.demo import write_landuse_labels

    store = CityStore.of(data, "helsinki", 2024)
    d = ("--city", "Helsinki", "--data-dir", str(data))
    r = cli("grid", *d, "--cell", "h3:10", env=NO_NETWORK)  # no --offline: the manifest says
    assert r.returncode == 0, r.stderr
    assert "reused place Helsinki, source cog, tiles" in r.stderr
    n_cells = len(pd.read_parquet(store.grid("h3:10")))
    assert n_cells > 100

    r = cli("train", *d, "--epochs", "2", "--run", "tiny")
    assert r.returncode == 0, r.stderr
    broken = store.model("broken")  # what an interrupted training of an older aether left
    broken.mkdir()
    (broken / "config.json").write_text("{}")

    r = cli("encode", *d)
    assert r.returncode == 0, r.stderr
    assert "broken" in r.stderr  # named, and skipped
    enc = pd.read_parquet(store.encoded("tiny", "h3:10"))
    assert len(enc) == n_cells and enc["E000"].notna().mean() > 0.9
    assert not store.encoded_dir("broken").exists()

    r = cli("query", "coffee shop", *d, "--model", "tiny", "--cell", "h3:10",
            "--out", str(data / "q"))
    assert r.returncode == 0, r.stderr
    ranks = [int(m.group(1)) for m in re.finditer(r"^\s*(\d+)\. ", r.stdout, re.M)]
    assert ranks == list(range(1, 11))

    write_landuse_labels(sample_city.pbf, store.labels("osm_landuse"))
    r = cli("evaluate", *d, "--task", "helsinki_landuse", "--cell", "h3:10", "--seeds", "1")
    assert r.returncode == 0, r.stderr
    result = json.loads(store.evaluation("helsinki_landuse", "json").read_text())
    assert result["cell"] == "h3r10" and 0 < result["n_units"] <= n_cells
    assert {row["method"] for row in result["rows"]} >= {"AETHER (tiny, default)",
                                                           "AlphaEarth (raw)"}


def test_query_takes_the_cell_spec_grid_takes(sample_runs, cli, tmp_path: Path) -> None:
    _, names, data_root = sample_runs
    r = cli("query", "hotel", "--city", "Helsinki", "--model", names[1], "--cell", "50m",
            "--data-dir", str(data_root), "--out", str(tmp_path / "q"), "--no-tiles")
    assert r.returncode == 0, r.stderr
    assert f"(model {names[1]})" in r.stdout


@pytest.mark.parametrize("step", [
    ("extract", "--city", "Helsinki", "--offline"),
    ("grid", "--city", "Helsinki", "--cell", "100m"),
    ("train", "--city", "Helsinki", "--epochs", "1"),
])
def test_every_writer_takes_the_data_lock(data: Path, cli, step) -> None:
    with data_lock(data):  # e.g. a scheduled run in progress
        before = sorted(p.relative_to(data) for p in data.rglob("*"))
        r = cli(*step, "--data-dir", str(data))
        after = sorted(p.relative_to(data) for p in data.rglob("*"))
    _one_line_exit_2(r)
    assert "another aether run" in r.stderr
    assert after == before


def test_encode_takes_the_data_lock(sample_runs, cli) -> None:
    city_dir, names, data_root = sample_runs
    before = {p: p.stat().st_mtime_ns for p in (city_dir / "aether").rglob("*")}
    with data_lock(data_root):
        r = cli("encode", "--city", "Helsinki", "--model", names[0], "--data-dir",
                str(data_root))
    _one_line_exit_2(r)
    assert "another aether run" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in (city_dir / "aether").rglob("*")} == before


def test_no_redo_from_another_folder_or_from_a_run_file(data_root: Path, sample_extract,
                                                       tmp_path: Path, cli) -> None:
    work, other = tmp_path / "work", tmp_path / "other"
    other.mkdir()
    shutil.copytree(data_root / "_sample", work / "aether-data" / "_sample")
    r = cli("extract", "--city", "Helsinki", "--offline", "--data-dir", "aether-data", cwd=work)
    assert r.returncode == 0 and "done in" in r.stdout, r.stderr
    r = cli("extract", "--city", "Helsinki", "--offline", "--data-dir", "../work/aether-data",
            cwd=other)
    assert r.returncode == 0 and "up to date" in r.stdout, (r.stdout, r.stderr)
    (work / "sample.yaml").write_text(
        "data_dir: ./aether-data\nradii: [100, 200]\nsteps: [extract]\n"
        "cities:\n  - name: Helsinki\n    sample: true\n    source: {name: cog}\n")
    r = cli("run", str(work / "sample.yaml"), cwd=other)
    assert r.returncode == 0, r.stderr
    assert "nothing to do: all 1 tasks up to date" in r.stdout


def _poi_file(sample_extract: Path, path: Path, part: slice) -> Path:
    pois = gpd.read_parquet(sample_extract / "pois.parquet").iloc[part]
    path.parent.mkdir(parents=True, exist_ok=True)
    pois[["poi_id", "name", "category", "top_category", "geometry"]].to_file(path)
    return path


def test_poi_files_without_a_city_get_folders_of_their_own(data: Path, sample_extract,
                                                           sample_city, tmp_path, cli) -> None:
    north = _poi_file(sample_extract, tmp_path / "north" / "shops.geojson", slice(0, 60))
    south = _poi_file(sample_extract, tmp_path / "south" / "shops.geojson", slice(60, 100))
    dirs = []
    for f, n in ((north, 60), (south, 40)):
        r = cli("extract", "--pois", str(f), "--source", "cog", "--tiles", str(sample_city.tiles),
                "--data-dir", str(data), env=NO_NETWORK)
        assert r.returncode == 0, r.stderr
        where = Path(r.stdout.strip().splitlines()[-1].strip())
        assert where.parent.name.startswith("shops-") and (where / "pois.parquet").is_file()
        assert len(pd.read_parquet(where / "pois.parquet")) == n
        dirs.append(where)
    assert dirs[0] != dirs[1]
    assert len(pd.read_parquet(dirs[0] / "pois.parquet")) == 60  # not overwritten


@pytest.mark.parametrize("flag", [["--no-geocode"], []])
def test_a_poi_file_and_tiles_need_no_geocoding(data: Path, sample_extract, sample_city,
                                                tmp_path, cli, flag) -> None:
    f = _poi_file(sample_extract, tmp_path / "sg.geojson", slice(0, 50))
    r = cli("extract", "--city", "Singapore", "--pois", str(f), "--source", "cog", "--tiles",
            str(sample_city.tiles), *flag, "--data-dir", str(data), env=NO_NETWORK)
    assert r.returncode == 0, r.stderr
    emb = pd.read_parquet(data / "singapore" / "2024" / "poi_embeddings.parquet")
    assert len(emb) == 2 * 50
    manifest = json.loads((data / "singapore" / "2024" / "manifest.json").read_text())
    assert manifest["place"]["name"] == "Singapore"


def test_force_recomputes_instead_of_reusing_checkpoints(ee_server, emulator, sample_extract,
                                                         tmp_path, cli) -> None:
    f = _poi_file(sample_extract, tmp_path / "few.geojson", slice(0, 40))
    args = ("extract", "--city", "Few", "--pois", str(f), "--no-geocode", "--source", "ee",
            "--ee-url", ee_server, "--ee-project", "demo", "--data-dir", str(tmp_path / "d"))

    def computed() -> int:
        return sum(1 for e in emulator.log if e["route"] == "table:computeFeatures")

    assert cli(*args).returncode == 0
    first = computed()
    assert first >= 1
    r = cli(*args, "--force")
    assert r.returncode == 0, r.stderr
    assert computed() - first == first  # every batch asked for again


def test_evaluate_cache_is_keyed_by_the_set_of_models(sample_runs, sample_city) -> None:
    from aether.evaluation.evaluate import evaluate
    from aether.evaluation.tasks import TASKS_DIR, load_task
    from aether.ml.encode import load_run
    from aether.pipeline.demo import LABELS_FILE, write_landuse_labels

    city_dir, names, _ = sample_runs
    store = CityStore.at(city_dir)
    if not (city_dir / LABELS_FILE).is_file():
        write_landuse_labels(sample_city.pbf, city_dir / LABELS_FILE)
    runs = [load_run(city_dir, n, slug="helsinki", year=2024) for n in names]
    task = load_task(TASKS_DIR / "helsinki_landuse.yaml")
    kw = {"probe_kinds": ("linear",), "splits": ("random",)}
    a = evaluate(city_dir, task, runs, seeds=(42, 24), **kw)
    cache = store.evaluation_dir / ".cache"
    cached = sorted(cache.glob("helsinki_landuse-*.json"))
    assert cached == [cache / f"helsinki_landuse-{a['inputs_key']}.json"]
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    b = evaluate(city_dir, task, runs[::-1], seeds=(24, 42), **kw)  # same set, other order
    assert sorted(cache.glob("helsinki_landuse-*.json")) == cached
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps  # nothing recomputed
    assert a["inputs_key"] == b["inputs_key"] and a["rows"] == b["rows"]
    # another set of models is another key, another file, another result
    c = evaluate(city_dir, task, runs[:1], seeds=(42, 24), **kw)
    assert c["inputs_key"] != a["inputs_key"]
    assert sorted(cache.glob("helsinki_landuse-*.json")) == sorted(
        [*cached, cache / f"helsinki_landuse-{c['inputs_key']}.json"])
    assert {r["method"] for r in c["rows"]} < {r["method"] for r in a["rows"]}
    # and the first set is still read from its own file
    again = evaluate(city_dir, task, runs, seeds=(42, 24), **kw)
    assert again["rows"] == a["rows"] and cached[0].stat().st_mtime_ns == stamps[cached[0]]
