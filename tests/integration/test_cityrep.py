"""`aether evaluate --protocol cityrep` on the sample city: CityRep's folds, probe and metrics
(checked number for number against their code in tests/unit/test_cityrep_fixture.py), one
row per run, AETHER against raw AlphaEarth with a paired test, the synthetic label; and the
earlier approximation under its own name, ``spatial-blocks``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support import require

require("torch")

from aether.evaluation.evaluate import CITYREP_SPLIT, PRIOR, RAW, SYNTHETIC_NOTE, evaluate  # noqa: E402
from aether.evaluation.tasks import TASKS_DIR, load_task  # noqa: E402
from aether.io.tables import read_json  # noqa: E402


def test_cityrep_protocol_on_the_sample(sample_runs, cli):
    from aether.ml.encode import load_run
    from aether.pipeline.demo import LABELS_FILE, write_landuse_labels
    from aether.sample.city import ensure_sample

    city_dir, names, data_root = sample_runs
    write_landuse_labels(ensure_sample(data_root).pbf, city_dir / LABELS_FILE)
    runs = [load_run(city_dir, n, slug="helsinki", year=2024) for n in names]
    task = load_task(TASKS_DIR / "helsinki_landuse.yaml")
    res = evaluate(city_dir, task, runs, protocol="cityrep", seeds=(42, 24, 7))
    assert res["protocol"] == "cityrep" and res["probe_hidden"] == 1024
    assert res["note"] == SYNTHETIC_NOTE
    assert res["metrics"] == ["F1_macro", "precision_macro", "recall_macro"]
    rows = {(r["method"], r["probe"], r["split"]) for r in res["rows"]}
    assert rows == {(PRIOR, "-", CITYREP_SPLIT), (RAW, "mlp", CITYREP_SPLIT),
                    *{(f"AETHER (t7_{p}, {p})", "mlp", CITYREP_SPLIT)
                      for p in ("paper", "default")}}
    for r in res["rows"]:
        f1 = r["metrics"]["F1_macro"]
        assert len(f1["values"]) == 3 and 0 <= f1["mean"] <= 1
        assert f1["std"] == pytest.approx(float(__import__("numpy").std(f1["values"])),
                                          abs=1e-6)
        if r["method"].startswith("AETHER"):
            p = r["paired_vs_raw"]["F1_macro"]["p"]
            assert p is None or 0 <= p <= 1
    md = (city_dir / "evaluation" / "helsinki_landuse_cityrep.md").read_text()
    assert SYNTHETIC_NOTE in md and "p (paired t vs raw)" in md and "± std" in md
    # provenance, and a result kept per set of runs beside the task's latest
    prov = res["provenance"]
    assert prov["aether"] and prov["torch"] and prov["numpy"] and prov["python"]
    assert prov["seeds"] == [42, 24, 7] and prov["started"] <= prov["finished"]
    index = Path(read_json(city_dir / "manifest.json")["inputs"]["tiles"]) / "aef_index.parquet"
    assert prov["dataset"]["tiles_index_sha256"] == hashlib.sha256(
        index.read_bytes()).hexdigest()
    kept = city_dir / "evaluation" / f"helsinki_landuse_cityrep__{'+'.join(sorted(names))}.json"
    assert read_json(kept)["inputs_key"] == res["inputs_key"]
    assert "tiles index " + prov["dataset"]["tiles_index_sha256"][:12] in md
    for r in runs:
        run_prov = r.config["provenance"]
        assert run_prov["seeds"] == {"train": 42} and run_prov["started"] <= run_prov["finished"]
        assert run_prov["dataset"]["tiles_index_sha256"] == prov["dataset"]["tiles_index_sha256"]
    # the earlier approximation keeps its own name, file and sample sd
    old = evaluate(city_dir, task, runs[:1], protocol="spatial-blocks", seeds=(42, 24))
    assert {r["split"] for r in old["rows"]} == {"blocks10x10"} and old["spread"] == "sd"
    assert (city_dir / "evaluation" / "helsinki_landuse_spatial-blocks.md").is_file()
    assert read_json(kept)["inputs_key"] == res["inputs_key"]  # not overwritten by it
    # the CLI names the protocol; the same inputs reuse the written result
    r = cli("evaluate", "--city", "Helsinki", "--task", "helsinki_landuse", "--protocol",
            "cityrep", "--seeds", "3", *[a for n in names for a in ("--model", n)],
            "--data-dir", str(data_root))
    assert r.returncode == 0, r.stderr
    assert SYNTHETIC_NOTE in r.stdout and "cityrep protocol" in r.stdout
    r = cli("evaluate", "--city", "Helsinki", "--task", "helsinki_landuse", "--protocol",
            "nope", "--data-dir", str(data_root))
    assert r.returncode == 2 and "unknown protocol" in r.stderr


def test_two_runs_of_one_preset_are_two_rows(sample_runs):
    """Rows are runs: a second run of the paper preset is its own row, not merged."""
    import shutil

    from aether.ml.encode import load_run
    from aether.pipeline.demo import LABELS_FILE, write_landuse_labels
    from aether.sample.city import ensure_sample

    city_dir, names, data_root = sample_runs
    write_landuse_labels(ensure_sample(data_root).pbf, city_dir / LABELS_FILE)
    twin = city_dir / "models" / "t7_paper_twin"
    shutil.copytree(city_dir / "models" / names[0], twin)
    try:
        runs = [load_run(city_dir, n, slug="helsinki", year=2024)
                for n in (names[0], "t7_paper_twin")]
        res = evaluate(city_dir, load_task(TASKS_DIR / "helsinki_landuse.yaml"), runs,
                       protocol="cityrep", seeds=(42,), write=False)
    finally:
        shutil.rmtree(twin)
    aether_rows = [r["method"] for r in res["rows"] if r["method"].startswith("AETHER")]
    assert sorted(aether_rows) == ["AETHER (t7_paper, paper)", "AETHER (t7_paper_twin, paper)"]
    assert [r["run"] for r in res["runs"]] == ["t7_paper", "t7_paper_twin"]


def test_training_seed_replicates_are_one_row_with_holm(sample_runs, cli):
    """--train-seeds 2 trains the second seed of a run's config and reports the run over
    2 training seeds × 2 probe seeds, paired with raw AlphaEarth, Holm-corrected."""
    import json
    import shutil

    from aether.pipeline.demo import LABELS_FILE, write_landuse_labels
    from aether.sample.city import ensure_sample

    city_dir, names, data_root = sample_runs
    write_landuse_labels(ensure_sample(data_root).pbf, city_dir / LABELS_FILE)
    twin = city_dir / "models" / f"{names[1]}-seed43"
    try:
        r = cli("evaluate", "--city", "Helsinki", "--task", "helsinki_landuse", "--protocol",
                "cityrep", "--seeds", "2", "--train-seeds", "2", "--model", names[1],
                "--data-dir", str(data_root))
        assert r.returncode == 0, r.stderr
        config = read_json(twin / "config.json")
        assert config["hyperparameters"]["seed"] == 43 and config["preset"] == "default"
        assert config["hyperparameters"]["epochs"] == 5  # the run's config, not the preset's
        kept = city_dir / "evaluation" / (
            f"helsinki_landuse_cityrep__{names[1]}+{names[1]}-seed43.json")
        res = json.loads(kept.read_text())
        row = next(r for r in res["rows"] if r["method"].endswith("×2 train seeds"))
        raw = next(r for r in res["rows"] if r["method"] == RAW)
        assert len(row["metrics"]["F1_macro"]["values"]) == 4
        assert len(raw["metrics"]["F1_macro"]["values"]) == 2
        test = row["paired_vs_raw"]["F1_macro"]
        # the test is over the 2 training seeds: each seed's mean vs raw's mean
        vals = row["metrics"]["F1_macro"]["values"]
        raw_mean = sum(raw["metrics"]["F1_macro"]["values"]) / 2
        diffs = [(vals[0] + vals[1]) / 2 - raw_mean, (vals[2] + vals[3]) / 2 - raw_mean]
        if abs(diffs[0] - diffs[1]) > 1e-9:
            from scipy import stats

            assert test["p"] == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue, rel=1e-4)
            assert test["p"] <= test["p_holm"] <= 1 and test["family"] == 1
        assert res["replicates"] == {row["method"]: [names[1], f"{names[1]}-seed43"]}
        assert "train seeds" in " ".join(r.stdout.split()) and "p Holm" in r.stdout
    finally:
        shutil.rmtree(twin, ignore_errors=True)
