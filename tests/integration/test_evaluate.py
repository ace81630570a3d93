"""evaluate: probes learn what is there and nothing else; the sample table has every row;
bad task files are one line, exit 2."""

from __future__ import annotations

import numpy as np
import pytest

from aether.errors import TableError
from aether.evaluation import probes
from aether.evaluation.evaluate import CONCAT, PRIOR, RAW, TEXT, evaluate
from aether.evaluation.tasks import TASKS_DIR, load_task


def _blobs(n: int, d: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    centres = rng.normal(scale=2.0, size=(c, d))
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


@pytest.mark.parametrize("probe", probes.PROBES)
def test_probe_learns_signal_and_scores_chance_on_shuffled_labels(probe: str) -> None:
    x, y = _blobs(600, 16, 4, seed=1)
    real, shuffled, chance = [], [], []
    for seed in (*probes.SEEDS, 1, 2, 3, 4, 5):
        test = probes.random_split(len(x), seed)
        pred = probes.fit_predict("classification", probe, x[~test], y[~test], x[test], seed)
        real.append(probes.score("classification", y[test], pred)["macro_f1"])
        y_perm = np.random.default_rng(seed).permutation(y[~test])
        pred = probes.fit_predict("classification", probe, x[~test], y_perm, x[test], seed,
                                  n_classes=4)
        shuffled.append(probes.score("classification", y[test], pred)["macro_f1"])
        chance.append(probes.independent_chance(y[test], pred)["macro_f1"])
    assert np.mean(real) > 0.9
    # a probe trained on permuted labels scores what an independent guess with its own
    # predicted class shares scores: chance (within the noise of ten permutations; one
    # permutation can happen to line clusters up with classes, so single seeds vary widely)
    assert abs(np.mean(shuffled) - np.mean(chance)) < 0.1
    assert np.mean(shuffled) < 0.4


def test_distribution_and_regression_probes() -> None:
    x, y = _blobs(500, 8, 3, seed=2)
    dist = np.eye(3)[y] * 0.8 + 0.2 / 3
    test = probes.random_split(len(x), 0)
    pred = probes.fit_predict("distribution", "mlp", x[~test], dist[~test], x[test], 0)
    prior = probes.prior_predict("distribution", dist[~test], int(test.sum()))
    s, p = probes.score("distribution", dist[test], pred), probes.score(
        "distribution", dist[test], prior)
    assert s["kl"] < 0.3 * p["kl"] and s["l1"] < p["l1"]
    value = x[:, 0] * 2.0 + 1.0
    pred = probes.fit_predict("regression", "linear", x[~test], value[~test], x[test], 0)
    assert probes.score("regression", value[test], pred)["r2"] > 0.85


def test_block_split_keeps_blocks_whole() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 2000, 800), rng.uniform(0, 2000, 800)
    test = probes.block_split(x, y, 250.0, seed=7)
    assert 0.15 < test.mean() < 0.35
    blocks = np.floor(x / 250).astype(int) * 100 + np.floor(y / 250).astype(int)
    for b in np.unique(blocks):
        assert len(set(test[blocks == b])) == 1


@pytest.fixture(scope="module")
def landuse_table(sample_runs):
    from aether.ml.encode import load_run
    from aether.pipeline.demo import LABELS_FILE, write_landuse_labels
    from aether.sample.city import ensure_sample

    city_dir, names, data_root = sample_runs
    write_landuse_labels(ensure_sample(data_root).pbf, city_dir / LABELS_FILE)
    runs = [load_run(city_dir, n, slug="helsinki", year=2024) for n in names]
    return city_dir, runs


def test_landuse_table_has_every_row(landuse_table) -> None:
    city_dir, runs = landuse_table
    task = load_task(TASKS_DIR / "helsinki_landuse.yaml")
    res = evaluate(city_dir, task, runs, seeds=(42, 24))
    methods = {RAW, "AETHER (t7_paper, paper)", "AETHER (t7_default, default)", TEXT,
               CONCAT}
    rows = {(r["method"], r["probe"], r["split"]) for r in res["rows"]}
    for split in ("random", "spatial"):
        assert (PRIOR, "-", split) in rows
        for m in methods:
            for p in probes.PROBES:
                assert (m, p, split) in rows
    assert len(rows) == 2 * (1 + len(methods) * 2)
    assert {"commercial", "civil"} <= set(res["classes"]) and res["n_units"] > 150
    for r in res["rows"]:
        assert len(r["metrics"]["macro_f1"]["values"]) == 2
        if r["method"] not in (RAW, PRIOR):
            assert r["relative_to_raw"]["macro_f1"] is not None
    md = (city_dir / "evaluation" / "helsinki_landuse.md").read_text()
    assert md.count("| AETHER (t7_paper, paper) |") == 4 and "±" in md
    raw = next(r for r in res["rows"] if r["method"] == RAW and r["probe"] == "linear"
               and r["split"] == "random")
    prior = next(r for r in res["rows"] if r["method"] == PRIOR and r["split"] == "random")
    assert raw["metrics"]["macro_f1"]["mean"] > prior["metrics"]["macro_f1"]["mean"] + 0.1


def test_shuffled_labels_score_at_chance_on_the_sample(landuse_table) -> None:
    city_dir, runs = landuse_table
    task = load_task(TASKS_DIR / "helsinki_landuse.yaml")
    res = evaluate(city_dir, task, runs, seeds=(42, 24, 7), probe_kinds=("linear",),
                   splits=("random",), shuffle=True, write=False)
    prior = next(r for r in res["rows"] if r["method"] == PRIOR)["metrics"]
    for r in res["rows"]:
        if r["method"] == PRIOR:
            continue
        m = r["metrics"]
        # no better than always answering the majority class, and macro-F1 near 1/C level
        assert m["accuracy"]["mean"] <= prior["accuracy"]["mean"] + 0.05, r["method"]
        assert m["macro_f1"]["mean"] < 1.5 / len(res["classes"]) + 0.05, r["method"]


def test_poi_mix_uses_heldout_pois(landuse_table) -> None:
    city_dir, runs = landuse_table
    task = load_task(TASKS_DIR / "helsinki_poi_mix.yaml")
    # the paper preset trains on every POI, as the reference does: it has none held out
    with pytest.raises(TableError, match="run t7_paper trained on all of them"):
        evaluate(city_dir, task, runs, seeds=(42,), probe_kinds=("linear",), write=False)
    res = evaluate(city_dir, task, runs[1:], seeds=(42,), probe_kinds=("linear",), write=False)
    assert res["kind"] == "distribution" and res["n_units"] > 100
    assert all(np.isfinite(r["metrics"]["kl"]["mean"]) for r in res["rows"])


@pytest.mark.parametrize(("text", "needle"), [
    ("name: x\nkind: [unclosed\n", "does not parse"),
    ("name: x\nkind: classification\nlabels: labels/osm_landuse.parquet\ncolumn: nope\n"
     "cell_m: 50\n", "has no column 'nope'"),
    ("name: x\nkind: classification\nlabels: missing.parquet\ncolumn: landuse\ncell_m: 50\n",
     "not found"),
    ("name: x\nkind: clustering\nlabels: pois.parquet\ncolumn: landuse\n", "kind"),
])
def test_bad_task_file_is_one_line_exit_2(landuse_table, cli, tmp_path, text, needle) -> None:
    city_dir, _ = landuse_table
    path = tmp_path / "task.yaml"
    path.write_text(text)
    r = cli("evaluate", "--city", "Helsinki", "--task", str(path), "--seeds", "1",
            "--data-dir", str(city_dir.parents[1]))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
