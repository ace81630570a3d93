"""Several cities: one run trained on two cities' tables (real Parquet, the real CLI), and a
run of another city evaluated on the sample city as held-out-city transfer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from train_data import write_synthetic_city

from aether.ml.train import train


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(r) -> bool:
    return (r.returncode == 2 and r.stderr.startswith("aether: error:")
            and len(r.stderr.strip().splitlines()) == 1)


def test_one_run_trains_on_two_cities(tmp_path, cli):
    alpha = write_synthetic_city(tmp_path, 200, seed=0, slug="alpha")
    beta = write_synthetic_city(tmp_path, 240, seed=1, slug="beta", first_id=10_000)
    r = cli("train", "--city", "Alpha", "--city", "Beta", "--preset", "default", "--epochs",
            "2", "--data-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    run = alpha / "models" / "default"
    config = json.loads((run / "config.json").read_text())
    assert config["cities"] == ["alpha", "beta"] and config["city"] == "alpha"
    assert config["data"]["pairs"] == 440  # both cities' POIs, every one with its two means
    assert config["data"]["tables_sha256"] == {
        f"{c}/{name}": _sha(d / name) for c, d in (("alpha", alpha), ("beta", beta))
        for name in ("pois.parquet", "poi_embeddings.parquet")}
    assert set(config["provenance"]["dataset"]) == {"alpha", "beta"}
    summary = json.loads((run / "summary.json").read_text())
    assert sum(summary["pairs"].values()) == 440
    assert not (beta / "models").exists()  # the run lives in the first city only
    # alpha alone is another run, on its 200 pairs
    alone = train(alpha, preset="default", run_name="alone", epochs=2)
    assert json.loads((alone / "config.json").read_text())["data"]["pairs"] == 200
    # the same cities again: nothing to do
    again = cli("train", "--city", "Alpha", "--city", "Beta", "--preset", "default",
                "--epochs", "2", "--data-dir", str(tmp_path))
    assert again.returncode == 0 and "already trained" in again.stdout


def test_cities_sharing_poi_ids_are_refused(tmp_path, cli):
    write_synthetic_city(tmp_path, 120, seed=0, slug="alpha")
    write_synthetic_city(tmp_path, 120, seed=2, slug="gamma")  # ids 0..119 again
    r = cli("train", "--city", "Alpha", "--city", "Gamma", "--epochs", "1", "--data-dir",
            str(tmp_path))
    assert _one_line(r) and "share POI ids" in r.stderr
    assert not (tmp_path / "alpha" / "2024" / "models").exists()


def test_a_run_of_another_city_is_evaluated_as_transfer(sample_runs, cli, tmp_path):
    """Refused without --transfer; with it, a row labelled as transfer from the run's
    city, whose probe scores a model the evaluated city never trained."""
    from aether.pipeline.demo import LABELS_FILE, write_landuse_labels
    from aether.sample.city import ensure_sample

    city_dir, _, data_root = sample_runs
    write_landuse_labels(ensure_sample(data_root).pbf, city_dir / LABELS_FILE)
    other = write_synthetic_city(tmp_path, 300, slug="synthville")
    run = train(other, preset="default", run_name="elsewhere", epochs=2)
    base = ["evaluate", "--city", "Helsinki", "--task", "helsinki_landuse", "--model",
            str(run), "--seeds", "1", "--data-dir", str(data_root)]
    r = cli(*base)
    assert _one_line(r) and "trained for synthville, not helsinki" in r.stderr
    r = cli(*base, "--transfer")
    assert r.returncode == 0, r.stderr
    result = json.loads(Path(r.stdout.strip().splitlines()[-1].strip()).read_text())
    label = "AETHER (elsewhere, default; transfer from synthville)"
    assert [row["row"] for row in result["runs"]] == [label]
    assert result["runs"][0]["trained_on"] == ["synthville"]
    scores = [row for row in result["rows"] if row["method"] == label]
    assert scores and all(np.isfinite(row["metrics"]["macro_f1"]["mean"]) for row in scores)
    # a task on held-out POIs: every POI of a city the run never saw is held out from it
    import geopandas as gpd

    from aether.evaluation.evaluate import heldout_pois
    from aether.ml.encode import load_run

    model = load_run(city_dir, run, slug="helsinki", year=2024, transfer=True)
    assert heldout_pois(gpd.read_parquet(city_dir / "pois.parquet"), model, "helsinki").all()
    own = heldout_pois(gpd.read_parquet(other / "pois.parquet"), model, "synthville")
    assert 0.02 < own.mean() < 0.25  # its own test split (10%) only
