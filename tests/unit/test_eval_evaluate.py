"""The evaluation's bookkeeping on small inputs: relative change, paired tests and Holm per
table (against scipy and the definition), replicate pooling, the result table, the cache key
(every input changes it, model order does not), publishing, and ``evaluate`` end to end on
features given here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from support import require

from aether.errors import ConfigError
from aether.evaluation import evaluate as ev
from aether.evaluation import probes
from aether.evaluation.report import RAW
from aether.evaluation.tasks import Labels, ProbeTask
from aether.ml.encode import ModelRun


def _run(name, preset=None, city="helsinki", tmp=Path("/nonexistent"), **config):
    cfg = {"city": city, **({"preset": preset} if preset else {}), **config}
    return ModelRun(name, tmp / name, None, cfg)


def test_relative_change_is_positive_when_better():
    assert ev._relative(0.6, 0.5, True) == pytest.approx(0.2)
    assert ev._relative(0.4, 0.5, True) == pytest.approx(-0.2)
    assert ev._relative(0.4, 0.5, False) == pytest.approx(0.2)
    assert ev._relative(-0.3, -0.5, True) == pytest.approx(0.4)  # |base|
    assert ev._relative(-0.6, -0.5, False) == pytest.approx(0.2)
    assert ev._relative(0.3, 0.0, True) is None


def test_row_labels_and_run_sets():
    assert ev.aether_label(_run("a"), "helsinki") == "AETHER (a)"
    assert ev.aether_label(_run("a", "paper"), "helsinki") == "AETHER (a, paper)"
    assert ev.aether_label(_run("a", "a"), "helsinki") == "AETHER (a)"
    assert ev.aether_label(_run("a", city=None, cities=["oslo", "rome"]), "helsinki") == (
        "AETHER (a; transfer from oslo+rome)")
    assert ev.replicate_label([_run("a", "p"), _run("b", "p")], "helsinki") == (
        "AETHER (a, p) ×2 train seeds")
    assert ev.run_set([_run("b"), _run("a")]) == "a+b"
    assert ev.run_set([]) == "no-models"
    names = [_run(f"run-{i:02d}") for i in range(11)]  # 11 * 7 - 1 = 76 characters
    joined = "abc+" + "+".join(f"run-{i:02d}" for i in range(11))
    assert ev.run_set([*names, _run("abc")]) == joined  # 80: kept
    got = ev.run_set([*names, _run("abcd")])
    assert got.startswith(("abcd+" + joined[4:])[:60] + "+") and len(got) == 73
    assert got[61:] != ev.run_set([*names, _run("abce")])[61:]


def test_splits():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1000, 200), rng.uniform(0, 1000, 200)
    assert np.array_equal(ev._split("random", x, y, 3, 250.0), probes.random_split(200, 3))
    assert np.array_equal(ev._split("blocks10x10", x, y, 3, 250.0),
                          probes.grid_block_split(x, y, 10, 3))
    assert np.array_equal(ev._split("spatial", x, y, 3, 100.0),
                          probes.block_split(x, y, 100.0, 3))
    assert not np.array_equal(ev._split("spatial", x, y, 3, 100.0),
                              ev._split("spatial", x, y, 3, 300.0))


def test_paired_over_training_seeds():
    raw = [0.5, 0.52, 0.48]
    plain = [0.55, 0.56, 0.5]
    ref = stats.ttest_rel(plain, raw)
    assert ev._paired(plain, raw) == {"t": pytest.approx(ref.statistic),
                                      "p": pytest.approx(ref.pvalue)}
    # two training seeds (run-major): each seed's mean against raw's mean
    pooled = [0.55, 0.56, 0.5, 0.6, 0.62, 0.61]
    ref = stats.ttest_rel([np.mean(pooled[:3]), np.mean(pooled[3:])], [np.mean(raw)] * 2)
    assert ev._paired(pooled, raw) == {"t": pytest.approx(ref.statistic),
                                       "p": pytest.approx(ref.pvalue)}
    assert ev._paired([0.5], []) == {"t": None, "p": None}
    # one probe seed, two training seeds: two pairs
    ref = stats.ttest_rel([0.5, 0.7], [0.4, 0.4])
    assert ev._paired([0.5, 0.7], [0.4]) == {"t": pytest.approx(ref.statistic),
                                             "p": pytest.approx(ref.pvalue)}


def _scores(values):
    return [{"macro_f1": v, "accuracy": v / 2} for v in values]


METRICS = {"macro_f1": True, "accuracy": True}
TASK = ProbeTask("lu", "classification", "labels.parquet", "landuse", cell_m=50.0)


def test_the_result_table():
    scores = {
        (RAW, "mlp", "random"): _scores([0.5, 0.52, 0.47]),
        ("AETHER (a)", "mlp", "random"): _scores([0.6, 0.61, 0.55]),
        ("AETHER (b)", "mlp", "random"): _scores([0.51, 0.5, 0.49]),
        (ev.PRIOR, "-", "random"): _scores([0.2, 0.2, 0.2]),
        (RAW, "linear", "spatial"): _scores([0.4, 0.3, 0.35]),
        ("AETHER (a)", "linear", "spatial"): _scores([0.45, 0.3, 0.2]),
    }
    labels = Labels(np.arange(4), np.array([0, 1, 1, 0]), ["a", "b"])
    out = ev._table(TASK, scores, labels, (42, 24, 7), False, METRICS)
    assert {k: v for k, v in out.items() if k != "rows"} == {
        "task": "lu", "kind": "classification", "unit": "grid", "cell_m": 50.0, "cell": "50m",
        "n_units": 4, "classes": ["a", "b"], "seeds": [42, 24, 7], "shuffled_labels": False,
        "metrics": ["macro_f1", "accuracy"], "higher_is_better": METRICS}
    rows = {(r["method"], r["probe"], r["split"]): r for r in out["rows"]}
    assert list(rows) == list(scores)
    a = rows[("AETHER (a)", "mlp", "random")]
    vals = [0.6, 0.61, 0.55]
    assert a["metrics"]["macro_f1"] == {
        "mean": pytest.approx(np.mean(vals)), "std": pytest.approx(np.std(vals)),
        "sd": pytest.approx(stats.tstd(vals)), "values": vals}
    assert a["metrics"]["accuracy"]["values"] == [0.3, 0.305, 0.275]
    assert a["relative_to_raw"] == {
        "macro_f1": pytest.approx((np.mean(vals) - np.mean([0.5, 0.52, 0.47])) / 0.49666666),
        "accuracy": pytest.approx((np.mean(vals) - np.mean([0.5, 0.52, 0.47])) / 0.49666666)}
    raw_row = rows[(RAW, "mlp", "random")]
    assert raw_row["relative_to_raw"] == {"macro_f1": 0.0, "accuracy": 0.0}
    assert raw_row["paired_vs_raw"] == {}
    assert rows[(ev.PRIOR, "-", "random")]["relative_to_raw"] == {}
    assert rows[(ev.PRIOR, "-", "random")]["paired_vs_raw"] == {}
    # Holm within each split and metric over the rows with a p
    p_a = stats.ttest_rel(vals, [0.5, 0.52, 0.47]).pvalue
    p_b = stats.ttest_rel([0.51, 0.5, 0.49], [0.5, 0.52, 0.47]).pvalue
    for m in METRICS:
        ta = a["paired_vs_raw"][m]
        tb = rows[("AETHER (b)", "mlp", "random")]["paired_vs_raw"][m]
        assert ta["p"] == pytest.approx(p_a) and tb["p"] == pytest.approx(p_b)
        lo, hi = sorted([p_a, p_b])
        want = {p_a: min(1, 2 * p_a), p_b: max(min(1, 2 * lo), min(1, hi))}
        assert ta["p_holm"] == pytest.approx(want[p_a])
        assert tb["p_holm"] == pytest.approx(want[p_b])
        assert ta["family"] == tb["family"] == 2
        sp = rows[("AETHER (a)", "linear", "spatial")]["paired_vs_raw"][m]
        assert sp["family"] == 1 and sp["p_holm"] == pytest.approx(sp["p"])
    one = ev._table(TASK, {(RAW, "mlp", "random"): _scores([0.5])}, labels, (1,), True,
                    {"macro_f1": True})
    assert one["rows"][0]["metrics"]["macro_f1"]["sd"] == 0.0
    assert one["shuffled_labels"] is True and one["metrics"] == ["macro_f1"]


def test_a_lower_is_better_metric_and_an_untestable_row():
    scores = {(RAW, "mlp", "random"): [{"kl": 0.5}, {"kl": 0.7}],
              ("AETHER (a)", "mlp", "random"): [{"kl": 0.4}, {"kl": 0.6}]}  # same differences
    labels = Labels(np.arange(2), np.ones((2, 2)) / 2, ["a", "b"])
    out = ev._table(ProbeTask("d", "distribution", "l", "c"), scores, labels, (1, 2), False,
                    {"kl": False})
    row = out["rows"][1]
    assert row["relative_to_raw"]["kl"] == pytest.approx(0.1 / 0.6)
    assert row["paired_vs_raw"] == {"kl": {"t": None, "p": None}}  # no p_holm: not in a family
    assert row["metrics"]["kl"]["values"] == [0.4, 0.6]
    assert row["metrics"]["kl"]["sd"] == pytest.approx(stats.tstd([0.4, 0.6]))


def test_holm_per_table_ignores_rows_without_p():
    rows = [{"split": "s", "paired_vs_raw": {"m": {"p": 0.01}}},
            {"split": "s", "paired_vs_raw": {"m": {"p": None}}},
            {"split": "s", "paired_vs_raw": {}},
            {"split": "s", "paired_vs_raw": {"m": {"p": 0.04}}},
            {"split": "t", "paired_vs_raw": {"m": {"p": 0.3}}},
            {"split": "u", "paired_vs_raw": {"m": {"p": 0.2}}}]
    ev._holm_per_table(rows, {"m": True})
    assert rows[5]["paired_vs_raw"]["m"] == {"p": 0.2, "p_holm": 0.2, "family": 1}
    assert rows[0]["paired_vs_raw"]["m"] == {"p": 0.01, "p_holm": 0.02, "family": 2}
    assert rows[1]["paired_vs_raw"]["m"] == {"p": None}
    assert rows[3]["paired_vs_raw"]["m"] == {"p": 0.04, "p_holm": 0.04, "family": 2}
    assert rows[4]["paired_vs_raw"]["m"] == {"p": 0.3, "p_holm": 0.3, "family": 1}


def test_pool_makes_one_row_per_replicate_group():
    a1, a2, b = _run("a1", "p"), _run("a2", "p"), _run("b", "q")
    la1, la2, lb = (ev.aether_label(r, "helsinki") for r in (a1, a2, b))
    scores = {(RAW, "mlp", "s"): [1, 2], (la1, "mlp", "s"): [3, 4], (lb, "mlp", "s"): [5, 6],
              (la2, "mlp", "s"): [7, 8], (la1, "linear", "s"): [9, 10]}
    out = ev._pool(scores, [[a1, a2], [b]], "helsinki")
    ga = ev.replicate_label([a1, a2], "helsinki")
    gb = ev.replicate_label([b], "helsinki")
    assert out == {(RAW, "mlp", "s"): [1, 2], (ga, "mlp", "s"): [3, 4, 7, 8],
                   (gb, "mlp", "s"): [5, 6], (ga, "linear", "s"): [9, 10]}
    assert scores[(la1, "mlp", "s")] == [3, 4]  # not changed in place


# --- the cache key and publishing, in a city folder made here ---

def _city(tmp_path: Path) -> Path:
    city = tmp_path / "helsinki" / "2024"
    (city / "labels").mkdir(parents=True)
    (city / "pois.parquet").write_bytes(b"pois")
    (city / "labels.parquet").write_bytes(b"labels")
    (city / "grid_embeddings_50m.parquet").write_bytes(b"grid50")
    (city / "grid_embeddings_100m.parquet").write_bytes(b"grid100")
    (city / "poi_embeddings.parquet").write_bytes(b"poiemb")
    return city


def test_the_inputs_key_changes_with_every_input(tmp_path):
    from aether.io.store import MODEL_WEIGHTS

    city = _city(tmp_path)
    runs = [_run("a", tmp=tmp_path, config_hash="h1"), _run("b", tmp=tmp_path)]
    args = ((1, 2), ("mlp",), ("random",), False, probes.ProbeSettings())

    def key(task=TASK, rs=runs, *a):
        return ev._inputs_key(task, city, rs, *(a or args))

    base = key()
    assert len(base) >= 12 and base == key(TASK, runs[::-1])
    keys = {base}
    for changed in (
        key(ProbeTask("lu2", "classification", "labels.parquet", "landuse", cell_m=50.0)),
        key(ProbeTask("lu", "classification", "labels.parquet", "landuse", cell_m=100.0)),
        key(ProbeTask("lu", "classification", "labels.parquet", "landuse", cell_m=50.0,
                      min_class_units=3)),
        key(TASK, runs[:1]),
        key(TASK, [_run("c", tmp=tmp_path)]),  # no config hash: its name
        key(TASK, [_run("d", tmp=tmp_path)]),
        key(TASK, [_run("a", tmp=tmp_path, config_hash="h2"), runs[1]]),
        key(TASK, runs, (1, 3), ("mlp",), ("random",), False, probes.ProbeSettings()),
        key(TASK, runs, (1, 2), ("linear",), ("random",), False, probes.ProbeSettings()),
        key(TASK, runs, (1, 2), ("mlp",), ("spatial",), False, probes.ProbeSettings()),
        key(TASK, runs, (1, 2), ("mlp",), ("random",), True, probes.ProbeSettings()),
        key(TASK, runs, (1, 2), ("mlp",), ("random",), False, probes.ProbeSettings(lr=0.1)),
        key(TASK, runs, *args, [["a", "b"]]),
    ):
        assert changed not in keys
        keys.add(changed)
    # the source of a task is not an input; the tables it reads are
    assert key(ProbeTask(**{**TASK.__dict__, "source": tmp_path / "x.yaml"})) == base
    for name, data in (("pois.parquet", b"pois2"), ("labels.parquet", b"labels2"),
                       ("grid_embeddings_50m.parquet", b"grid2")):
        before = key()
        (city / name).write_bytes(data)
        assert key() != before
    before = key()
    (city / "grid_embeddings_100m.parquet").write_bytes(b"other grid")  # not this task's
    (city / "poi_embeddings.parquet").write_bytes(b"other")  # a grid task does not read it
    assert key() == before
    poi_task = ProbeTask("lu", "classification", "labels.parquet", "landuse", unit="poi")
    before = key(poi_task)
    (city / "poi_embeddings.parquet").write_bytes(b"other again")
    assert key(poi_task) != before
    # a run's weights
    before = key()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / MODEL_WEIGHTS).write_bytes(b"w1")
    with_weights = key()
    assert with_weights != before
    (tmp_path / "a" / MODEL_WEIGHTS).write_bytes(b"w2")
    assert key() != with_weights


def _result(key="k1", task="lu"):
    return {"task": task, "kind": "classification", "n_units": 3, "unit": "grid",
            "shuffled_labels": False, "seeds": [1], "metrics": ["macro_f1"], "rows": [],
            "inputs_key": key}


def test_publish_writes_json_and_markdown_once(tmp_path):
    from aether.evaluation.report import markdown
    from aether.io.store import CityStore

    city = _city(tmp_path)
    store = CityStore.at(city)
    paths = ev._publish(store, "lu", _result())
    assert paths == {"json": str(store.evaluation("lu", "json")),
                     "markdown": str(store.evaluation("lu", "md"))}
    assert json.loads(Path(paths["json"]).read_text())["inputs_key"] == "k1"
    assert Path(paths["markdown"]).read_text() == markdown(_result())
    # the same key: left alone; another key, or a missing Markdown file: rewritten
    Path(paths["markdown"]).write_text("kept")
    ev._publish(store, "lu", _result())
    assert Path(paths["markdown"]).read_text() == "kept"
    ev._publish(store, "lu", _result("k2"))
    assert Path(paths["markdown"]).read_text() == markdown(_result("k2"))
    Path(paths["markdown"]).unlink()
    ev._publish(store, "lu", _result("k2"))
    assert Path(paths["markdown"]).is_file()
    Path(paths["json"]).write_text("[1, 2]")  # not a result: rewritten
    ev._publish(store, "lu", _result("k2"))
    assert json.loads(Path(paths["json"]).read_text())["inputs_key"] == "k2"
    both = ev._publish_both(store, "lu", [_run("b"), _run("a")], _result("k3"))
    assert both == {**paths, "runs_json": str(store.evaluation("lu__a+b", "json")),
                    "runs_markdown": str(store.evaluation("lu__a+b", "md"))}
    assert json.loads(Path(both["runs_json"]).read_text())["inputs_key"] == "k3"
    assert json.loads(Path(both["json"]).read_text())["inputs_key"] == "k3"


# --- evaluate end to end on features given here ---

def _places(n=60, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 1000, n), rng.uniform(0, 1000, n)
    cls = (x > 500).astype(np.int64)
    feats = {RAW: np.stack([x / 1000 + rng.normal(0, 0.1, n), rng.normal(size=n)], 1),
             "AETHER (a)": np.stack([cls + rng.normal(0, 0.1, n), rng.normal(size=n)], 1)}
    labels = Labels(np.arange(n), cls, ["east", "west"])
    return feats, ev.UnitPlaces(labels, x, y, "EPSG:32635")


FAST = probes.ProbeSettings(lr=0.05, batch=32, max_epochs=5, patience=2, hidden=4)


class _Bars(list):
    """The progress bars ``evaluate`` opened: [description, total, steps advanced]."""

    def __call__(self, description, total=None):
        import contextlib
        from types import SimpleNamespace

        shown = [description, total, 0]
        self.append(shown)

        def advance(n=1):
            shown[2] += n

        return contextlib.nullcontext(SimpleNamespace(advance=advance))


class _Calls(list):
    bars: _Bars


@pytest.fixture
def given_features(monkeypatch):
    calls = _Calls()

    def features(task, city_dir, runs, text_methods=True):
        calls.append((task.name, [r.name for r in runs], text_methods))
        assert city_dir.name == "2024" and city_dir.is_dir()
        return _places()

    monkeypatch.setattr(ev, "features", features)
    bars = _Bars()
    monkeypatch.setattr(ev, "bar", bars)
    calls.bars = bars
    return calls


def test_evaluate_probes_every_split_seed_method_and_probe(tmp_path, given_features):
    require("torch")
    city = _city(tmp_path)
    runs = [_run("a", tmp=tmp_path, config_hash="h9", hyperparameters={"seed": 7})]
    res = ev.evaluate(city, TASK, runs, seeds=(3, 1), probe_kinds=("linear",),
                      splits=("random", "spatial"), settings=FAST)
    assert given_features == [("lu", ["a"], True)]
    # 2 splits x 2 seeds x 2 methods x 1 probe, a step each
    assert given_features.bars == [["evaluate lu: split × seed × method × probe", 8, 8]]
    keys = [(r["method"], r["probe"], r["split"]) for r in res["rows"]]
    assert keys == [(ev.PRIOR, "-", "random"), (RAW, "linear", "random"),
                    ("AETHER (a)", "linear", "random"), (ev.PRIOR, "-", "spatial"),
                    (RAW, "linear", "spatial"), ("AETHER (a)", "linear", "spatial")]
    assert res["seeds"] == [3, 1] and res["protocol"] == "default"
    assert res["probe_hidden"] == 4 and res["spread"] == "std" and res["note"] is None
    assert res["runs"] == [{"row": "AETHER (a)", "run": "a", "preset": "a",
                            "trained_on": ["helsinki"], "config_hash": "h9",
                            "train_seed": 7}]
    assert res["replicates"] == {}
    assert res["provenance"]["seeds"] == [3, 1]
    started, finished = res["provenance"]["started"], res["provenance"]["finished"]
    assert isinstance(started, str) and started[:4].isdigit() and started <= finished
    # each value is the probe's score on that split and seed, by hand
    feats, places = _places()
    for i, seed in enumerate((3, 1)):
        test = probes.block_split(places.x, places.y, TASK.block_m, seed)
        y = places.labels.y
        pred = probes.fit_predict("classification", "linear", feats["AETHER (a)"][~test],
                                  y[~test], feats["AETHER (a)"][test], seed, FAST, 2)
        want = probes.score("classification", y[test], pred)["macro_f1"]
        assert res["rows"][5]["metrics"]["macro_f1"]["values"][i] == round(want, 6)
        prior = probes.prior_predict("classification", y[~test], int(test.sum()))
        want = probes.score("classification", y[test], prior)["accuracy"]
        assert res["rows"][3]["metrics"]["accuracy"]["values"][i] == round(want, 6)
    assert res["inputs_key"] == ev._inputs_key(TASK, city, runs, [1, 3], ("linear",),
                                               ("random", "spatial"), False, FAST)
    from aether.io.store import CityStore

    assert json.loads(CityStore.at(city).evaluation_cache("lu", res["inputs_key"]).read_text(
        ))["rows"] == res["rows"]
    latest = Path(res["paths"]["json"])
    assert latest.name == "lu.json" and json.loads(latest.read_text())["inputs_key"] == (
        res["inputs_key"])
    assert Path(res["paths"]["runs_json"]).name == "lu__a.json"
    assert Path(res["paths"]["markdown"]).read_text().startswith("### lu (classification, 60")
    # the same inputs, the seeds in another order: from the cache, no probe runs
    again = ev.evaluate(city, TASK, runs, seeds=(1, 3), probe_kinds=("linear",),
                        splits=("random", "spatial"), settings=FAST)
    assert len(given_features) == 1
    assert again["rows"] == res["rows"] and again["paths"] == res["paths"]
    # not written: computed again, nothing kept
    fresh = ev.evaluate(city, TASK, runs, seeds=(3, 1), probe_kinds=("linear",),
                        splits=("random", "spatial"), settings=FAST, write=False)
    assert len(given_features) == 2 and "paths" not in fresh
    assert fresh["rows"] == res["rows"]


def test_evaluate_shuffled_and_the_protocols(tmp_path, given_features, monkeypatch):
    require("torch")
    city = _city(tmp_path)
    fit, asked = probes.fit_predict, []

    def spy(*a, **k):
        asked.append(k.get("n_classes"))
        return fit(*a, **k)

    monkeypatch.setattr(probes, "fit_predict", spy)
    res = ev.evaluate(city, TASK, [], seeds=(5,), probe_kinds=("linear",),
                      splits=("random",), settings=FAST, shuffle=True)
    assert asked == [2, 2]  # two methods; the task's classes, not only those in the training labels
    assert res["shuffled_labels"] is True
    assert Path(res["paths"]["json"]).name == "lu_shuffled.json"
    assert Path(res["paths"]["runs_json"]).name == "lu_shuffled__no-models.json"
    feats, places = _places()
    test = probes.random_split(60, 5)
    y_tr = places.labels.y[~test][np.random.default_rng(6).permutation(int((~test).sum()))]
    pred = probes.fit_predict("classification", "linear", feats[RAW][~test], y_tr,
                              feats[RAW][test], 5, FAST, 2)
    want = probes.score("classification", places.labels.y[test], pred)["macro_f1"]
    assert res["rows"][1]["metrics"]["macro_f1"]["values"] == [round(want, 6)]
    sb = ev.evaluate(city, TASK, [], protocol="spatial-blocks", seeds=(5,), settings=FAST)
    assert Path(sb["paths"]["json"]).name == "lu_spatial-blocks.json"
    assert given_features[-1] == ("lu", [], False)
    assert {r["split"] for r in sb["rows"]} == {"blocks10x10"}
    assert {r["probe"] for r in sb["rows"]} == {"-", "mlp"}
    assert sb["spread"] == "sd" and sb["protocol"] == "spatial-blocks"
    with pytest.raises(ConfigError) as e:
        ev.evaluate(city, TASK, [], protocol="nope")
    assert e.value.message == "unknown protocol 'nope'"
    assert e.value.hint == "use one of default, cityrep, spatial-blocks"
    for kw in ({"probe_kinds": ("mlp",)}, {"splits": ("random",)}, {"settings": FAST}):
        with pytest.raises(ConfigError) as e:
            ev.evaluate(city, TASK, [], protocol="cityrep", **kw)
        assert e.value.message == ("the cityrep protocol fixes its splits, probe and probe "
                                   "settings")
        assert e.value.hint == "leave them out, or use the default or spatial-blocks protocol"


def test_evaluate_by_the_cityrep_protocol(tmp_path, given_features, monkeypatch):
    require("sklearn")
    from aether.evaluation import cityrep

    def fake_fit(kind, x, y, fold, n_out, settings=None):
        """Predicts the training labels in their order (so shuffling shows), nudged by x."""
        seen = np.resize(y[fold.train], len(fold.test))
        return np.eye(n_out, dtype=np.float32)[seen] + x[fold.test][:, :n_out] * 0.01

    monkeypatch.setattr(cityrep, "fit_predict", fake_fit)
    city = _city(tmp_path)
    from aether.io.store import CityStore

    # tables from a generated raster, as the extract manifest says
    CityStore.at(city).manifest.write_text(json.dumps({"config": {"dataset": {
        "synthetic": True}}}))
    res = ev.evaluate(city, TASK, [_run("a", tmp=tmp_path)], protocol="cityrep", seeds=(42, 7))
    assert given_features[-1] == ("lu", ["a"], False)
    assert given_features.bars == [["evaluate lu: split × seed × method × probe", 4, 4]]
    assert [(r["method"], r["probe"], r["split"]) for r in res["rows"]] == [
        (ev.PRIOR, "-", "cityrep-blocks"), (RAW, "mlp", "cityrep-blocks"),
        ("AETHER (a)", "mlp", "cityrep-blocks")]
    assert res["metrics"] == ["F1_macro", "precision_macro", "recall_macro"]
    assert (res["protocol"], res["probe_hidden"], res["spread"]) == ("cityrep", 1024, "std")
    assert res["note"] == ev.SYNTHETIC_NOTE
    assert Path(res["paths"]["json"]).name == "lu_cityrep.json"
    feats, places = _places()
    want = cityrep.probe_methods("classification", feats, places.labels.y, *places.lonlat(),
                                 (42, 7), False, ev.PRIOR, lambda: None)
    for row in res["rows"]:
        for m in res["metrics"]:
            assert row["metrics"][m]["values"] == [round(v[m], 6) for v in want[row["method"]]]
    shuffled = ev.evaluate(city, TASK, [], protocol="cityrep", seeds=(42,), shuffle=True,
                           write=False)
    want = cityrep.probe_methods("classification", {RAW: feats[RAW]}, places.labels.y,
                                 *places.lonlat(), (42,), True, ev.PRIOR, lambda: None)
    got = shuffled["rows"][1]["metrics"]["F1_macro"]["values"]
    assert got == [round(want[RAW][0]["F1_macro"], 6)]
    assert got != res["rows"][1]["metrics"]["F1_macro"]["values"][:1]
    assert res["rows"][1]["paired_vs_raw"] == {}
    assert "p" in res["rows"][2]["paired_vs_raw"]["F1_macro"]


def test_the_protocols():
    d, c, s = (ev.PROTOCOLS[k] for k in ("default", "cityrep", "spatial-blocks"))
    assert (d.splits, d.probe_kinds, d.settings, d.text_methods, d.spread) == (
        ("random", "spatial"), ("linear", "mlp"), probes.ProbeSettings(), True, "std")
    assert (c.splits, c.probe_kinds, c.text_methods, c.spread) == (
        ("cityrep-blocks",), ("mlp",), False, "std")
    assert (c.settings.hidden, c.settings.batch, c.settings.max_epochs) == (1024, 512, 100)
    assert (s.splits, s.probe_kinds, s.settings.hidden, s.text_methods, s.spread) == (
        ("blocks10x10",), ("mlp",), 1024, False, "sd")
    assert s.settings.batch == 128


def test_evaluate_pools_replicates(tmp_path, monkeypatch):
    require("torch")
    a1, a2 = _run("a1", "p", tmp=tmp_path, seed_note=1), _run("a2", "p", tmp=tmp_path)
    feats, places = _places()
    feats = {RAW: feats[RAW], "AETHER (a1, p)": feats["AETHER (a)"],
             "AETHER (a2, p)": feats["AETHER (a)"] * 2}
    monkeypatch.setattr(ev, "features", lambda task, city_dir, runs, tm=True: (feats, places))
    city = _city(tmp_path)
    res = ev.evaluate(city, TASK, [], replicates=[[a2, a1]], seeds=(3, 4),
                      probe_kinds=("linear",), splits=("random",), settings=FAST)
    label = "AETHER (a2, p) ×2 train seeds"
    assert [r["method"] for r in res["rows"]] == [ev.PRIOR, RAW, label]
    assert len(res["rows"][2]["metrics"]["macro_f1"]["values"]) == 4
    assert res["replicates"] == {label: ["a2", "a1"]}
    assert [r["run"] for r in res["runs"]] == ["a1", "a2"]
    assert Path(res["paths"]["runs_json"]).name == "lu__a1+a2.json"
    plain = ev._inputs_key(TASK, city, [a1, a2], [3, 4], ("linear",), ("random",), False, FAST)
    assert res["inputs_key"] != plain
    assert res["inputs_key"] == ev._inputs_key(TASK, city, [a1, a2], [3, 4], ("linear",),
                                               ("random",), False, FAST, [["a2", "a1"]])


# --- the features of every method on the units they all cover ---

X0, Y0, UTM = 500000.0, 6670000.0, "EPSG:32635"


def _grid_units():
    """3 x 3 cells of 100 m (polygons in EPSG:4326, centres x, y in UTM), unit 3 * row + col."""
    import geopandas as gpd
    from shapely.geometry import box

    rows = [(i, j) for j in range(3) for i in range(3)]
    g = gpd.GeoDataFrame({"cell_id": [f"c{3 * j + i}" for i, j in rows],
                          "x": [X0 + 100 * i + 50 for i, _ in rows],
                          "y": [Y0 + 100 * j + 50 for _, j in rows]},
                         geometry=[box(X0 + 100 * i, Y0 + 100 * j, X0 + 100 * i + 100,
                                       Y0 + 100 * j + 100) for i, j in rows], crs=UTM)
    return g.to_crs("EPSG:4326")


def _pois():
    import geopandas as gpd

    # p0, p1 in unit 0; p2 in unit 4; p3 in unit 8; p4 in unit 4; p5 in unit 5
    xy = [(10, 10), (60, 80), (150, 150), (250, 250), (160, 120), (270, 140)]
    return gpd.GeoDataFrame({"poi_id": [f"p{i}" for i in range(6)],
                             "text": ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]},
                            geometry=gpd.points_from_xy([X0 + a for a, _ in xy],
                                                        [Y0 + b for _, b in xy]),
                            crs=UTM).to_crs("EPSG:4326")


def _vec(texts):
    return np.array([[len(t), 1.0] for t in texts], np.float32)


@pytest.fixture
def city_tables(tmp_path, monkeypatch):
    """A city whose grid, POIs, window means, text and AETHER vectors are given here."""
    from types import SimpleNamespace

    import geopandas as gpd
    from shapely.geometry import box

    from aether.io.store import CityStore

    city = _city(tmp_path)
    store = CityStore.at(city)
    calls = {}
    raw = np.arange(9 * 64, dtype=np.float32).reshape(9, 64) / 100
    raw[2, 5] = np.nan  # unit 2 has no AlphaEarth mean

    def read_table(path, columns, what):
        assert (Path(path), list(columns), what) == (store.pois, ["poi_id", "text", "geometry"],
                                                     "pois")
        return _pois()

    def read_grid(city_dir, cell):
        calls["grid"] = (city_dir, cell.label)
        return _grid_units().iloc[::-1]  # an index to reset

    def grid_window_means(grid, radius, cell):
        calls["means"] = (grid["cell_id"].tolist(), radius, cell.label)
        assert grid.index.tolist() == list(range(9))
        return SimpleNamespace(mean=raw[::-1])

    def base_poi_means(city_dir, radius):
        import pandas as pd

        from aether.core.aef import BANDS

        calls["poi_means"] = (city_dir, radius)
        ids = ["p5", "p3", "p1", "p0", "p9"]  # p2 and p4 have none; p9 is not a POI
        return pd.DataFrame({"poi_id": ids, **{b: [float(k) + i / 10 for i in range(5)]
                                               for k, b in enumerate(BANDS)}})

    def encode_texts(texts, cache_path, model_name):
        calls.setdefault("texts", []).append((texts, cache_path, model_name))
        return _vec(texts)

    def apply_ae(run, x):
        return x[:, :3] * (2 if run.name == "a" else 3)

    for name, fn in (("read_table", read_table), ("read_grid", read_grid),
                     ("grid_window_means", grid_window_means),
                     ("base_poi_means", base_poi_means), ("encode_texts", encode_texts),
                     ("apply_ae", apply_ae)):
        monkeypatch.setattr(ev, name, fn)
    labels = gpd.GeoDataFrame(
        {"landuse": ["green", "shop", "shop", "green"],
         "poi_id": ["p0", "p2", "p3", "p5"]},
        geometry=[box(X0, Y0, X0 + 300, Y0 + 100), box(X0, Y0 + 100, X0 + 300, Y0 + 200),
                  box(X0, Y0 + 200, X0 + 300, Y0 + 300), box(X0 + 200, Y0 + 100, X0 + 300,
                                                             Y0 + 200)], crs=UTM)
    labels.to_parquet(city / "labels.parquet")
    return city, raw, calls


GRID_TASK = ProbeTask("lu", "classification", "labels.parquet", "landuse", min_class_units=1)


def test_grid_features_of_every_method(city_tables):
    city, raw, calls = city_tables
    runs = [_run("a", base_radius_m=200.0, text_model="m1"),
            _run("b", base_radius_m=200.0, text_model="m2")]
    feats, places = ev.features(GRID_TASK, city, runs)
    assert calls["grid"] == (city, "100m")
    assert calls["means"] == ([f"c{i}" for i in range(8, -1, -1)], 200.0, "100m")
    assert calls["texts"] == [(["a", "bb", "ccc", "dddd", "eeeee", "ffffff"],
                               city / "text_embeddings.parquet", "m1")]
    assert list(feats) == [RAW, "AETHER (a)", "AETHER (b)", ev.TEXT, ev.CONCAT]
    # the frame runs backwards (row r is unit 8 - r); units 0, 1, 2: green; 3, 4: shop (5
    # is green: the smaller polygon); 6, 7, 8: shop; unit 2 (row 6) has no AlphaEarth mean
    keep = [0, 1, 2, 3, 4, 5, 7, 8]
    assert places.labels.index.tolist() == keep
    assert places.labels.y.tolist() == [1, 1, 1, 0, 1, 1, 0, 0]
    assert places.labels.classes == ["green", "shop"]
    rev = raw[::-1]
    np.testing.assert_array_equal(feats[RAW], rev[keep])
    np.testing.assert_array_equal(feats["AETHER (b)"], rev[keep][:, :3] * 3)
    text = np.zeros((9, 2), np.float32)
    text[8] = [(1 + 2) / 2, 1]  # unit 0: p0, p1
    text[4] = [(3 + 5) / 2, 1]  # unit 4: p2, p4
    text[0] = [4, 1]
    text[3] = [6, 1]
    np.testing.assert_allclose(feats[ev.TEXT], text[keep])
    np.testing.assert_allclose(feats[ev.CONCAT], np.concatenate([rev, text], 1)[keep])
    assert all(v.dtype == np.float32 for v in feats.values())
    frame = _grid_units().iloc[::-1].reset_index(drop=True)
    assert places.x.tolist() == frame["x"].to_numpy()[keep].tolist()
    assert places.y.tolist() == frame["y"].to_numpy()[keep].tolist()
    assert places.crs == UTM
    lon, lat = places.lonlat()
    pts = frame.iloc[keep].geometry.to_crs(UTM).centroid.to_crs("EPSG:4326")
    np.testing.assert_allclose(lon, pts.x, atol=1e-6)
    np.testing.assert_allclose(lat, pts.y, atol=1e-6)


def test_features_without_models_and_with_a_radius(city_tables):
    city, _, calls = city_tables
    task = ProbeTask("lu", "classification", "labels.parquet", "landuse", min_class_units=1,
                     radius_m=80.0)
    feats, places = ev.features(task, city, [], text_methods=False)
    assert calls["means"][1] == 100.0 and list(feats) == [RAW] and "texts" not in calls
    feats, places = ev.features(task, city, [])
    assert calls["texts"][0][2] is None
    # within 80 m of each centre (grid rows run backwards: row r is unit 8 - r)
    pois = _pois().to_crs(UTM)
    frame = _grid_units().iloc[::-1].reset_index(drop=True)
    want = np.zeros((9, 2), np.float32)
    for r in range(9):
        d = np.hypot(pois.geometry.x - frame["x"][r], pois.geometry.y - frame["y"][r])
        near = _vec(pois["text"][d < 80].tolist())
        if len(near):
            want[r] = near.mean(0)
    np.testing.assert_allclose(feats[ev.TEXT], want[places.labels.index])
    # half a metre: only p2 and p3, at the centres of units 4 and 8 (frame rows 4 and 0)
    half = ProbeTask("lu", "classification", "labels.parquet", "landuse", min_class_units=1,
                     radius_m=0.5)
    feats, places = ev.features(half, city, [])
    want = np.zeros((9, 2), np.float32)
    want[4], want[0] = [3, 1], [4, 1]
    np.testing.assert_allclose(feats[ev.TEXT], want[places.labels.index])
    with pytest.raises(ev.ModelError) as e:
        ev.features(task, city, [_run("a", base_radius_m=100.0), _run("b", base_radius_m=200.0)])
    assert e.value.message == "models trained at different base radii [100.0, 200.0]"
    assert e.value.hint == "compare runs trained at one base radius"


def test_poi_features(city_tables):
    from aether.core.aef import BANDS

    city, _, calls = city_tables
    task = ProbeTask("lu", "classification", "labels.parquet", "landuse", unit="poi",
                     min_class_units=1)
    feats, places = ev.features(task, city, [_run("a", base_radius_m=50.0)])
    assert calls["poi_means"] == (city, 50.0)
    # POIs with means, in the POI table's order: p0, p1, p3, p5; green, green, shop, green
    # (p5: the smaller polygon)
    assert places.labels.index.tolist() == [0, 1, 2, 3]
    assert places.labels.y.tolist() == [0, 0, 1, 0]
    means = {"p5": 0, "p3": 1, "p1": 2, "p0": 3}
    want = np.array([[k + means[p] / 10 for k in range(len(BANDS))]
                     for p in ("p0", "p1", "p3", "p5")], np.float32)
    np.testing.assert_allclose(feats[RAW], want)
    np.testing.assert_allclose(feats[ev.TEXT], _vec(["a", "bb", "dddd", "ffffff"]))
    pois = _pois().to_crs(UTM)
    np.testing.assert_allclose(places.x, pois.geometry.x.to_numpy()[[0, 1, 3, 5]], atol=1e-6)
    np.testing.assert_allclose(places.y, pois.geometry.y.to_numpy()[[0, 1, 3, 5]], atol=1e-6)
    assert places.crs == UTM


def _point_labels(city):
    """A label at each of p0 (green), p1 (shop), p3 (shop) and p5 (green)."""
    pois = _pois()
    pois.iloc[[0, 1, 3, 5]].assign(landuse=["green", "shop", "shop", "green"])[
        ["landuse", "poi_id", "geometry"]].to_parquet(city / "labels.parquet")


def test_held_out_pois_only(city_tables, monkeypatch):
    city = city_tables[0]
    _point_labels(city)
    task = ProbeTask("lu", "classification", "labels.parquet", "landuse", unit="poi",
                     min_class_units=1, holdout=True)
    masks = {"a": np.array([1, 1, 0, 1, 1, 1], bool), "b": np.array([1, 0, 1, 1, 0, 1], bool)}
    seen = []

    def heldout(pois, run, city_name):
        seen.append((run.name, city_name, len(pois)))
        return masks[run.name]

    monkeypatch.setattr(ev, "heldout_pois", heldout)
    runs = [_run("a", base_radius_m=50.0), _run("b", base_radius_m=50.0)]
    feats, places = ev.features(task, city, runs)
    assert seen == [("a", "helsinki", 6), ("b", "helsinki", 6)]
    # held out by both: p0, p3, p5; p1's label is not used (units: p0, p1, p3, p5)
    assert places.labels.index.tolist() == [0, 2, 3]
    assert places.labels.y.tolist() == [0, 1, 0]
    np.testing.assert_allclose(feats[ev.TEXT], _vec(["a", "dddd", "ffffff"]))
    _, places = ev.features(
        ProbeTask("lu", "classification", "labels.parquet", "landuse", unit="poi",
                  min_class_units=1), city, runs)
    assert places.labels.index.tolist() == [0, 1, 2, 3]  # without holdout: every label
    masks["b"] = np.zeros(6, bool)
    with pytest.raises(ev.TableError) as e:
        ev.features(task, city, runs)
    assert e.value.message == ("task lu needs held-out POIs, but run b trained on all of them "
                               "(test_fraction 0, as the paper preset does)")
    assert e.value.hint == ("leave that run out of this task, or train it with "
                            "--set test_fraction=0.1")
    masks["b"] = ~masks["a"]
    with pytest.raises(ev.TableError) as e:
        ev.features(task, city, runs)
    assert e.value.message == "task lu needs held-out POIs but the models hold none"
    assert e.value.hint == "train with a test_fraction above 0"
    with pytest.raises(ev.TableError):
        ev.features(task, city, [])  # no models: none holds any out


def test_held_out_pois_of_a_grid_task(city_tables, monkeypatch):
    city = city_tables[0]
    _point_labels(city)
    task = ProbeTask("lu", "classification", "labels.parquet", "landuse", min_class_units=1,
                     holdout=True)
    monkeypatch.setattr(ev, "heldout_pois",
                        lambda pois, run, c: np.array([1, 0, 0, 1, 0, 1], bool))
    feats, places = ev.features(task, city, [_run("a", base_radius_m=50.0)])
    # labels of p0 (unit 0, frame row 8), p3 (unit 8, row 0), p5 (unit 5, row 3)
    assert places.labels.index.tolist() == [0, 3, 8]
    assert places.labels.y.tolist() == [1, 0, 0]
    # texts of the POIs not held out: p1 (unit 0, row 8), p2 and p4 (unit 4, row 4)
    want = np.zeros((9, 2), np.float32)
    want[8], want[4] = [2, 1], [4, 1]
    np.testing.assert_allclose(feats[ev.TEXT], want[[0, 3, 8]])


def test_which_pois_a_run_held_out():
    import geopandas as gpd

    from aether.ml.config import TrainConfig
    from aether.ml.data import split_of

    rng = np.random.default_rng(0)
    pois = gpd.GeoDataFrame({"poi_id": [f"q{i}" for i in range(200)]},
                            geometry=gpd.points_from_xy(rng.uniform(24.9, 25.0, 200),
                                                        rng.uniform(60.1, 60.2, 200)),
                            crs="EPSG:4326")
    other = ev.heldout_pois(pois, _run("a", city="oslo"), "helsinki")
    assert other.dtype == bool and other.tolist() == [True] * 200
    with pytest.raises(ev.ModelError) as e:
        ev.heldout_pois(pois, _run("a", hyperparameters={"seed": "unknown"}), "helsinki")
    assert e.value.message == ("run a does not record how it held out POIs (an imported "
                               "checkpoint)")
    assert e.value.hint == "use a task without holdout, or a run of `aether train`"
    for hyper in ({"test_fraction": 0.3}, {"split": "blocks", "block_m": 500.0}):
        got = ev.heldout_pois(pois, _run("a", hyperparameters=hyper), "helsinki")
        xy = pois.to_crs("EPSG:32635").geometry
        want = split_of(pois["poi_id"].to_numpy(object), np.column_stack([xy.x, xy.y]),
                        TrainConfig(**hyper)) == "test"
        assert got.tolist() == want.tolist() and 0 < got.sum() < 200
