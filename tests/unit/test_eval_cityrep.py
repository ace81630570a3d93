"""The CityRep protocol's parts on small inputs, each against its definition: blocks of the
extent, folds of whole blocks drawn by scikit-learn's ``train_test_split``, row-L2 inputs,
targets, losses, outputs to predictions, their metrics by hand, and the per-seed loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from support import require

from aether.errors import TableError
from aether.evaluation import cityrep


def test_the_documented_settings():
    assert (cityrep.N_BLOCKS, cityrep.TEST_RATIO, cityrep.VAL_RATIO) == (10, 0.2, 0.1)
    assert cityrep.ProbeSettings() == cityrep.ProbeSettings(hidden=1024, lr=1e-3, batch=512,
                                                            epochs=100, patience=10)
    assert tuple(cityrep.ProbeSettings().__dict__.values()) == (1024, 1e-3, 512, 100, 10)
    assert {k: list(v) for k, v in cityrep.METRICS.items()} == {
        "classification": ["F1_macro", "precision_macro", "recall_macro"],
        "distribution": ["KL", "L1", "Chebyshev"],
        "regression": ["R2", "MSE", "MAE", "RMSE"]}
    assert cityrep.METRICS["classification"]["F1_macro"] is True
    assert not any(cityrep.METRICS["distribution"].values())
    assert [v for v in cityrep.METRICS["regression"].values()] == [True, False, False, False]


def test_blocks_cut_the_extent_row_major():
    lon = np.array([24.0, 24.09, 24.1, 24.55, 25.0, np.nan])
    lat = np.array([60.0, 60.5, 61.0, 60.0, 60.95, 60.2])
    with np.errstate(invalid="ignore"):  # the NaN unit's block is not defined
        got = cityrep.block_ids(lon, lat)
    # lon 24..25 and lat 60..61 in tenths; the maximum goes to the last block
    assert got[:5].tolist() == [0 * 10 + 0, 5 * 10 + 0, 9 * 10 + 1, 0 * 10 + 5, 9 * 10 + 9]
    assert got.dtype == np.int64
    assert cityrep.block_ids(lon[:5], lat[:5], n=2).tolist() == [0, 2, 2, 1, 3]
    # a line of units (no lat extent) is one row of blocks
    assert cityrep.block_ids(np.array([0.0, 0.5, 1.0]), np.full(3, 5.0)).tolist() == [0, 5, 9]


def test_folds_are_whole_blocks_drawn_by_train_test_split():
    train_test_split = require("sklearn.model_selection").train_test_split
    rng = np.random.default_rng(0)
    blocks = rng.choice([0, 3, 4, 11, 12, 20, 21, 22, 35, 36, 50, 77], size=200)
    for seed in (42, 0):
        fold = cityrep.block_fold(blocks, seed)
        ids = np.unique(blocks)
        tr, te = train_test_split(ids, test_size=0.2, random_state=seed)
        tr, va = train_test_split(tr, test_size=0.1, random_state=seed)
        assert fold.seed == seed
        assert fold.test.tolist() == np.flatnonzero(np.isin(blocks, te)).tolist()
        assert fold.val.tolist() == np.flatnonzero(np.isin(blocks, va)).tolist()
        assert fold.train.tolist() == np.flatnonzero(np.isin(blocks, tr)).tolist()
        assert len(te) == 3 and len(va) == 1 and len(tr) == 8
        parts = np.concatenate([fold.train, fold.val, fold.test])
        assert sorted(parts.tolist()) == list(range(200))
    other = cityrep.block_fold(blocks, 1, test_ratio=0.5, val_ratio=0.25)
    assert len(np.unique(blocks[other.test])) == 6 and len(np.unique(blocks[other.val])) == 2
    assert len(cityrep.block_fold(np.array([1, 2, 3, 3]), 0).test) >= 1
    with pytest.raises(TableError) as e:
        cityrep.block_fold(np.array([5, 5, 7]), 0)
    assert e.value.message == "the units fill 2 of the 10x10 blocks"
    assert e.value.hint == "CityRep needs at least 3 non-empty blocks: use more units"


def test_rows_are_l2_normalised_nan_as_zero():
    x = np.array([[3.0, 4.0], [np.nan, 2.0], [0.0, 0.0], [1e-8, 0.0]])
    got = cityrep.l2_rows(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 1.0], [0.0, 0.0], [1e-2, 0.0]],
                               rtol=1e-6)


def test_targets():
    got = cityrep.targets("classification", np.array([2.0, 0.0, 1.0]))
    assert got.tolist() == [2, 0, 1] and got.dtype == np.int64
    d = cityrep.targets("distribution", np.array([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]]))
    assert d.dtype == np.float32 and d.flags.c_contiguous
    np.testing.assert_allclose(d, [[0.25, 0.75], [0.0, 0.0], [0.5, 0.5]])
    v = np.array([1.0, 2.0, 3.0, 10.0])
    r = cityrep.targets("regression", v)
    assert r.shape == (4, 1) and r.dtype == np.float32
    np.testing.assert_allclose(r[:, 0], (v - v.mean()) / (v.std() + 1e-6), rtol=1e-6)
    const = cityrep.targets("regression", np.full(3, 5.0))
    assert const.tolist() == [[0.0], [0.0], [0.0]]


def test_losses():
    torch = require("torch")

    out = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
    y = torch.tensor([[0.2, 0.5, 0.3], [0.0, 0.5, 0.5]])
    logq = out.log_softmax(1)
    kl = sum(float(p * (math.log(p) - lq)) for row, lrow in zip(y, logq, strict=True)
             for p, lq in zip(row, lrow, strict=True) if p > 0) / 2
    assert float(cityrep._loss("distribution")(out, y)) == pytest.approx(kl, rel=1e-6)
    ids = torch.tensor([1, 2])
    ce = -(float(logq[0, 1]) + float(logq[1, 2])) / 2
    assert float(cityrep._loss("classification")(out, ids)) == pytest.approx(ce, rel=1e-6)
    mse = float(((out - 1.0) ** 2).mean())
    assert float(cityrep._loss("regression")(out, torch.ones_like(out))) == pytest.approx(mse)


def test_predictions_from_outputs():
    out = np.array([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]], np.float32)
    assert cityrep.predictions("classification", out).tolist() == [1, 0]
    e = np.exp(out.astype(np.float64))
    np.testing.assert_allclose(cityrep.predictions("distribution", out),
                               e / e.sum(1, keepdims=True), rtol=1e-6)
    big = cityrep.predictions("distribution", np.array([[1000.0, 0.0]]))
    np.testing.assert_allclose(big, [[1.0, 0.0]])  # no overflow: shifted by the row maximum
    assert cityrep.predictions("regression", np.array([[1.5], [2.5]])).tolist() == [1.5, 2.5]


def test_metrics_by_hand():
    require("sklearn")
    t = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 0, 0])  # class 2 never predicted
    prec = [1 / 3, 2 / 3, 0.0]
    rec = [0.5, 1.0, 0.0]
    f1 = [2 * a * b / (a + b) if a + b else 0.0 for a, b in zip(prec, rec, strict=True)]
    got = cityrep.score("classification", t, p)
    assert got == pytest.approx({"F1_macro": np.mean(f1), "precision_macro": np.mean(prec),
                                 "recall_macro": np.mean(rec)})
    tt = np.array([[0.5, 0.5, 0.0], [0.1, 0.6, 0.3]])
    pp = np.array([[0.25, 0.25, 0.5], [0.2, 0.4, 0.4]])
    tc = np.clip(tt, 1e-12, 1.0)
    tc = tc / tc.sum(1, keepdims=True)
    kl = np.mean([np.sum(tc[i] * np.log(tc[i] / pp[i])) for i in range(2)])
    got = cityrep.score("distribution", tt, pp)
    assert got["KL"] == pytest.approx(kl)
    assert got["L1"] == pytest.approx((1.0 + 0.4) / 2)
    assert got["Chebyshev"] == pytest.approx((0.5 + 0.2) / 2)
    zero = cityrep.score("distribution", tt, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert math.isfinite(zero["KL"]) and zero["KL"] > 5
    assert zero["KL"] == pytest.approx(np.mean([
        np.sum(tc[0] * (np.log(tc[0]) - np.log(np.clip([1.0, 0, 0], 1e-12, 1)))),
        np.sum(tc[1] * (np.log(tc[1]) - np.log(np.clip([0, 1.0, 0], 1e-12, 1))))]), rel=1e-4)
    v, q = np.array([[1.0], [2.0], [4.0]]), np.array([1.5, 2.0, 3.0])
    got = cityrep.score("regression", v, q)
    ss = 0.25 + 0 + 1
    assert got == pytest.approx({"R2": 1 - ss / np.sum((v - v.mean()) ** 2), "MSE": ss / 3,
                                 "MAE": 1.5 / 3, "RMSE": math.sqrt(ss / 3)})


def test_the_prior():
    assert cityrep.prior("classification", np.array([1, 2, 2, 0]), 2).tolist() == [2, 2]
    d = cityrep.prior("distribution", np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), 2)
    np.testing.assert_allclose(d, [[2 / 3, 1 / 3]] * 2)
    r = cityrep.prior("regression", np.array([[1.0], [3.0]]), 3)
    assert r.tolist() == [[2.0], [2.0], [2.0]]


def _units(n=80, seed=0):
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(24.0, 25.0, n), rng.uniform(60.0, 60.5, n)
    cls = (lon > 24.5).astype(int) + (lat > 60.25)
    feats = {"raw": np.stack([lon - 24.5, lat - 60.25, rng.normal(size=n)], 1),
             "noise": rng.normal(size=(n, 3))}
    return feats, cls, lon, lat


@pytest.mark.parametrize("kind", ["classification", "distribution", "regression"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_method_on_the_same_folds(kind, shuffle, monkeypatch):
    require("sklearn")
    feats, cls, lon, lat = _units()
    y_in = {"classification": cls, "regression": cls * 2.5 + lon,
            "distribution": np.eye(3)[cls] * 0.7 + 0.1}[kind]
    fits = []

    def fake_fit(kind_, x, y, fold, n_out, settings=None):
        fits.append((kind_, x, y.copy(), fold, n_out))
        return np.asarray(x[fold.test][:, :n_out] * 3, np.float32)

    monkeypatch.setattr(cityrep, "fit_predict", fake_fit)
    steps = []
    got = cityrep.probe_methods(kind, feats, y_in, lon, lat, (42, 7), shuffle, "prior",
                                lambda: steps.append(1))
    assert list(got) == ["prior", "raw", "noise"] and len(steps) == 4
    y = cityrep.targets(kind, y_in)
    n_out = 1 if kind == "regression" else 3
    blocks = cityrep.block_ids(lon, lat)
    for i, seed in enumerate((42, 7)):
        fold = cityrep.block_fold(blocks, seed)
        y_fit = y.copy()
        if shuffle:
            fit = np.concatenate([fold.train, fold.val])
            y_fit[fit] = y[fit][np.random.default_rng(seed + 1).permutation(len(fit))]
        for j, name in enumerate(("raw", "noise")):
            kind_, x, yy, fold_, n = fits[2 * i + j]
            assert (kind_, n) == (kind, n_out)
            np.testing.assert_array_equal(x, cityrep.l2_rows(feats[name]))
            np.testing.assert_array_equal(yy, y_fit)
            assert fold_.test.tolist() == fold.test.tolist() and fold_.seed == seed
            out = fake_fit(kind, x, y, fold, n_out)
            want = cityrep.score(kind, y[fold.test], cityrep.predictions(kind, out))
            assert got[name][i] == pytest.approx(want)
        want = cityrep.score(kind, y[fold.test], cityrep.prior(kind, y_fit[fold.train],
                                                               len(fold.test)))
        assert got["prior"][i] == pytest.approx(want)
        if shuffle:
            assert not np.array_equal(y_fit, y)
            np.testing.assert_array_equal(y_fit[fold.test], y[fold.test])


def test_the_probe_uses_its_settings():
    require("torch")
    from dataclasses import replace

    feats, cls, lon, lat = _units(60, seed=2)
    fold = cityrep.block_fold(cityrep.block_ids(lon, lat), 5)
    x = cityrep.l2_rows(feats["raw"])
    s = cityrep.ProbeSettings(hidden=8, lr=1e-3, batch=16, epochs=3, patience=2)
    out = cityrep.fit_predict("classification", x, cls, fold, 3, s)
    assert out.shape == (len(fold.test), 3)
    np.testing.assert_array_equal(out, cityrep.fit_predict("classification", x, cls, fold, 3, s))
    assert not np.allclose(out, cityrep.fit_predict("classification", x, cls, fold, 3,
                                                    replace(s, lr=0.05)))


def test_the_probe_stops_after_patience_epochs_without_a_better_loss(monkeypatch):
    torch = require("torch")
    steps = []
    step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step",
                        lambda self, *a, **k: (steps.append(1), step(self, *a, **k))[1])
    feats, cls, lon, lat = _units(60, seed=2)
    fold = cityrep.block_fold(cityrep.block_ids(lon, lat), 5)
    x = cityrep.l2_rows(feats["raw"])
    for patience in (1, 3):
        steps.clear()
        # lr 0: the validation loss never changes after the first epoch; one batch per epoch
        s = cityrep.ProbeSettings(hidden=4, lr=0.0, batch=512, epochs=40, patience=patience)
        cityrep.fit_predict("classification", x, cls, fold, 3, s)
        assert len(steps) == 1 + patience
    # no validation blocks: every epoch runs
    steps.clear()
    empty = cityrep.Fold(5, fold.train, np.array([], np.int64), fold.test)
    s = cityrep.ProbeSettings(hidden=4, lr=0.0, batch=512, epochs=7, patience=1)
    cityrep.fit_predict("classification", x, cls, empty, 3, s)
    assert len(steps) == 7
