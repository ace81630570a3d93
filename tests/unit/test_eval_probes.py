"""The default protocol's probes, splits, metrics and tests, each against an independent
oracle: scikit-learn / scipy or the formula by hand, exactly independent samples for the
chance level, and a probe loop written here from the module's stated protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from support import require

from aether.evaluation import probes


def _macro_f1(t, p):
    f1 = []
    for c in np.union1d(t, p):
        tp = np.sum((t == c) & (p == c))
        prec = tp / max(np.sum(p == c), 1)
        rec = tp / max(np.sum(t == c), 1)
        f1.append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
    return float(np.mean(f1))


def test_classification_scores():
    require("sklearn")
    t = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    p = np.array([0, 1, 1, 1, 2, 2, 0, 4])  # class 3 never predicted, 4 never true
    got = probes.score("classification", t, p)
    assert set(got) == set(probes.METRICS["classification"])
    assert got["macro_f1"] == pytest.approx(_macro_f1(t, p))
    assert got["accuracy"] == pytest.approx(4 / 8)
    assert isinstance(got["macro_f1"], float)


def test_distribution_scores():
    t = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    p = np.array([[0.25, 0.25, 0.5], [0.0, 0.5, 0.5]])
    kl0 = 0.5 * math.log(0.5 / 0.25) * 2  # the zero of t adds nothing
    kl1 = 0.2 * (math.log(0.2) - math.log(1e-8)) + 0.3 * math.log(0.3 / 0.5)
    got = probes.score("distribution", t, p)
    assert got["kl"] == pytest.approx((kl0 + kl1) / 2)
    assert got["l1"] == pytest.approx((1.0 + 0.4) / 2)
    assert probes.score("distribution", t, t) == pytest.approx({"kl": 0.0, "l1": 0.0})


def test_regression_score_is_r2():
    r2_score = require("sklearn.metrics").r2_score
    t, p = np.array([1.0, 2.0, 4.0, 7.0]), np.array([1.5, 2.0, 3.0, 8.0])
    assert probes.score("regression", t, p) == {"r2": pytest.approx(r2_score(t, p))}
    assert probes.score("regression", np.ones(3), np.array([1.0, 2.0, 0.0])) == {"r2": 0.0}
    small, guess = np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.25, 0.3])  # total SS 0.02
    assert probes.score("regression", small, guess)["r2"] == pytest.approx(
        r2_score(small, guess))


def test_independent_chance_is_the_score_of_an_exactly_independent_guess():
    metrics = require("sklearn.metrics")
    f1_score, accuracy_score = metrics.f1_score, metrics.accuracy_score
    # truth shares p = (.5, .3, .2), guess shares q = (.2, .2, .6) over an extra class 3:
    # every (truth, guess) pair appears n * p * q times, so truth and guess are independent
    p, q = {0: 5, 1: 3, 2: 2}, {1: 1, 2: 1, 3: 3}
    t = np.array([a for a, na in p.items() for b, nb in q.items() for _ in range(na * nb)])
    g = np.array([b for a, na in p.items() for b, nb in q.items() for _ in range(na * nb)])
    got = probes.independent_chance(t, g)
    assert got["macro_f1"] == pytest.approx(f1_score(t, g, average="macro", zero_division=0))
    assert got["accuracy"] == pytest.approx(accuracy_score(t, g))
    # a guess with the truth's shares, permuted
    t2 = np.repeat([0, 1], [6, 4])
    got2 = probes.independent_chance(t2, t2[::-1])
    assert got2["macro_f1"] == pytest.approx(0.5 * (0.6 + 0.4))
    assert got2["accuracy"] == pytest.approx(0.6**2 + 0.4**2)


def test_prior_predictions():
    assert probes.prior_predict("classification", np.array([2, 1, 2, 0, 1]), 3).tolist() == [
        1, 1, 1]  # a tie goes to the lower class
    d = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert probes.prior_predict("distribution", d, 2).tolist() == [[0.75, 0.25]] * 2
    assert probes.prior_predict("regression", np.array([1.0, 2.0, 6.0]), 2).tolist() == [3.0, 3.0]


def test_random_split():
    test = probes.random_split(101, seed=3)
    assert test.dtype == bool and test.shape == (101,) and test.sum() == 20
    assert probes.random_split(10, seed=3, test_fraction=0.5).sum() == 5
    assert np.array_equal(test, probes.random_split(101, seed=3))
    assert not np.array_equal(test, probes.random_split(101, seed=4))
    rng = np.random.default_rng(3)
    assert set(np.flatnonzero(test)) == set(rng.permutation(101)[:20])


def test_equal_blocks_go_whole_until_the_fraction_is_reached():
    # 10 x 10 blocks of 250 m, three units in each: 20 blocks make exactly a fifth
    gx, gy = np.meshgrid(np.arange(10), np.arange(10))
    x = np.repeat(gx.ravel() * 250.0, 3) + np.tile([10.0, 100.0, 240.0], 100)
    y = np.repeat(gy.ravel() * 250.0, 3) + np.tile([5.0, 125.0, 249.0], 100)
    for seed in (0, 1):
        test = probes.block_split(x, y, 250.0, seed)
        assert test.sum() == 60
        blocks = (np.floor(x / 250) * 10 + np.floor(y / 250)).astype(int)
        assert all(len(set(test[blocks == b])) == 1 for b in range(100))
        assert probes.block_split(x, y, 250.0, seed, test_fraction=0.1).sum() == 30
        assert np.array_equal(probes.block_split(x, y, 250.0, seed), test)
    assert not np.array_equal(probes.block_split(x, y, 250.0, 0),
                              probes.block_split(x, y, 250.0, 1))
    # a fraction that is not a whole number of blocks: one block more
    assert probes.block_split(x, y, 250.0, 0, test_fraction=0.105).sum() == 33


def test_block_split_floors_negative_coordinates():
    # -10 and 10 are in different 100 m blocks (floor, not truncation towards zero)
    x = np.array([-10.0, 10.0, -10.0, 10.0])
    y = np.array([5.0, 5.0, 50.0, 50.0])
    for seed in range(6):
        test = probes.block_split(x, y, 100.0, seed, test_fraction=0.5)
        assert test.sum() == 2 and test[0] == test[2] and test[1] == test[3] != test[0]


def test_grid_block_split_cuts_the_extent():
    # x spans 0..10 in 5 blocks of 2 (the maximum in the last); y constant (one row)
    x = np.array([0.0, 1.9, 2.0, 3.9, 4.0, 5.9, 6.0, 7.9, 8.0, 10.0])
    y = np.full(10, 7.0)
    seen = set()
    for seed in range(8):
        test = probes.grid_block_split(x, y, 5, seed, test_fraction=0.2)
        assert test.sum() == 2
        pair = tuple(np.flatnonzero(test))
        assert pair in {(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)}
        seen.add(pair)
        assert np.array_equal(test, probes.grid_block_split(x, y, 5, seed, test_fraction=0.2))
    assert len(seen) > 1
    # shifted and scaled coordinates give the same blocks
    assert np.array_equal(probes.grid_block_split(x * 3 - 100, y, 5, 2),
                          probes.grid_block_split(x, y, 5, 2))
    assert probes.grid_block_split(x, y, 5, 2).sum() == 2  # default fraction 0.2
    # a unit per block: exactly a fifth, block by block
    assert probes.grid_block_split(np.arange(10.0), np.zeros(10), 10, 0).sum() == 2


def test_paired_test_against_scipy():
    a, b = [0.61, 0.58, 0.66, 0.6], [0.55, 0.57, 0.6, 0.52]
    ref = stats.ttest_rel(a, b)
    got = probes.paired_test(a, b)
    assert got == {"t": pytest.approx(ref.statistic), "p": pytest.approx(ref.pvalue)}
    assert isinstance(got["t"], float) and isinstance(got["p"], float)
    assert probes.paired_test([0.3, 0.5, 0.4], [0.2, 0.4, 0.3]) == {"t": None, "p": None}
    assert probes.paired_test([], []) == {"t": None, "p": None}
    # differences that vary only slightly are still tested
    assert probes.paired_test([0.3, 0.5001], [0.2, 0.4])["p"] is not None


def test_holm_against_the_definition():
    ps = [0.04, 0.001, 0.03, 0.2, 0.01]
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    want, running = [0.0] * m, 0.0
    for k, i in enumerate(order, start=1):
        running = max(running, min(1.0, (m - k + 1) * ps[i]))
        want[i] = running
    assert probes.holm(ps) == pytest.approx(want)
    assert probes.holm([0.02]) == [0.02]


# --- the probe, against a loop written from the module's stated protocol ---

def _reference(kind, probe, x_train, y_train, x_test, seed, s, n_classes=None):
    """Standardised inputs (train mean, std + 1e-6); a validation fraction drawn first from
    a numpy generator of the seed, then the training part shuffled each epoch; Adam; early
    stop after ``patience`` epochs without a validation loss lower by 1e-6; the best
    weights restored."""
    import torch
    from torch import nn

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    xt = torch.tensor((x_train - mu) / sd, dtype=torch.float32)
    xs = torch.tensor((x_test - mu) / sd, dtype=torch.float32)
    if kind == "classification":
        n_out = n_classes or int(y_train.max()) + 1
        yt = torch.tensor(y_train, dtype=torch.int64)
        loss_fn = nn.functional.cross_entropy
    elif kind == "distribution":
        n_out = y_train.shape[1]
        yt = torch.tensor(y_train, dtype=torch.float32)

        def loss_fn(out, t):
            return (t * (torch.log(t + 1e-8) - torch.log_softmax(out, dim=1))).sum(1).mean()
    else:
        n_out = 1
        y_mu, y_sd = y_train.mean(), y_train.std() + 1e-9
        yt = torch.tensor((y_train - y_mu) / y_sd, dtype=torch.float32).reshape(-1, 1)
        loss_fn = nn.functional.mse_loss
    d = xt.shape[1]
    if probe == "linear":
        net = nn.Linear(d, n_out)
    else:
        net = nn.Sequential(nn.Linear(d, s.hidden), nn.ReLU(), nn.Linear(s.hidden, n_out))
    opt = torch.optim.Adam(net.parameters(), lr=s.lr)
    order = rng.permutation(len(xt))
    n_val = max(1, round(s.val_fraction * len(xt)))
    val, tr = order[:n_val], order[n_val:]
    best, state, bad = math.inf, None, 0
    for _ in range(s.max_epochs):
        perm = tr[rng.permutation(len(tr))]
        for i in range(0, len(perm), s.batch):
            b = torch.tensor(perm[i:i + s.batch])
            opt.zero_grad()
            loss_fn(net(xt[b]), yt[b]).backward()
            opt.step()
        with torch.no_grad():
            v = float(loss_fn(net(xt[val]), yt[val]))
        if v < best - 1e-6:
            best, bad = v, 0
            state = {k: t.clone() for k, t in net.state_dict().items()}
        else:
            bad += 1
            if bad >= s.patience:
                break
    if state is not None:
        net.load_state_dict(state)
    with torch.no_grad():
        out = net(xs)
    if kind == "classification":
        return out.argmax(1).numpy()
    if kind == "distribution":
        return torch.softmax(out, 1).numpy()
    return out[:, 0].numpy() * y_sd + y_mu


def _data(n=48, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -3.0]
    return x, rng.normal(size=(5, d)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -3.0]


CASES = [
    ("regression", "linear", probes.ProbeSettings(lr=0.05, batch=8, max_epochs=30, patience=3,
                                                  val_fraction=0.25)),
    ("regression", "mlp", probes.ProbeSettings(lr=0.02, batch=16, max_epochs=12, patience=2,
                                               val_fraction=0.15, hidden=5)),
    ("classification", "mlp", probes.ProbeSettings(lr=0.03, batch=10, max_epochs=15,
                                                   patience=4, hidden=6)),
    ("distribution", "linear", probes.ProbeSettings(lr=0.05, batch=12, max_epochs=10,
                                                    patience=2)),
]


@pytest.mark.parametrize(("kind", "probe", "s"), CASES)
def test_the_probe_is_the_stated_protocol(kind, probe, s):
    torch = require("torch")
    x, x_test = _data()
    if kind == "regression":
        y = 3.0 * x[:, 0] - 0.2 * x[:, 1] + 40.0 + np.random.default_rng(1).normal(size=len(x))
    elif kind == "classification":
        y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 5) * 2  # four classes
    else:
        z = np.exp(np.stack([x[:, 0], -x[:, 0], 0.1 * x[:, 1]], 1))
        y = z / z.sum(1, keepdims=True)
        y[:4] = [1.0, 0.0, 0.0]  # zeros in the target
    threads = torch.get_num_threads()
    got = probes.fit_predict(kind, probe, x, y, x_test, seed=5, settings=s)
    assert torch.get_num_threads() == threads
    want = _reference(kind, probe, x, y, x_test, 5, s)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    other = probes.fit_predict(kind, probe, x, y, x_test, seed=6, settings=s)
    if kind != "classification":
        assert not np.allclose(got, other)


def test_classification_probe_with_more_classes_than_seen():
    require("torch")
    rng = np.random.default_rng(0)
    x, x_test = rng.normal(size=(40, 3)), rng.normal(size=(300, 3))
    y = (x[:, 0] > 0).astype(int)
    s = probes.ProbeSettings(lr=0.05, batch=8, max_epochs=6, patience=2)
    got = probes.fit_predict("classification", "linear", x, y, x_test, 2, s, n_classes=3)
    assert np.array_equal(got, _reference("classification", "linear", x, y, x_test, 2, s, 3))
    # a third output unit (never a target) changes the initial weights, so some of the 300
    # test points near the boundary fall the other way than with two outputs
    assert not np.array_equal(got, _reference("classification", "linear", x, y, x_test, 2, s))


def test_a_probe_that_stops_learning_stops_after_patience_epochs(monkeypatch):
    torch = require("torch")
    steps = []
    step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step",
                        lambda self, *a, **k: (steps.append(1), step(self, *a, **k))[1])
    x, x_test = _data(n=20)
    y = x[:, 0] * 2
    for patience in (1, 3):
        steps.clear()
        # lr 0: the validation loss never changes after the first epoch; one batch per epoch
        s = probes.ProbeSettings(lr=0.0, batch=64, max_epochs=50, patience=patience)
        probes.fit_predict("regression", "linear", x, y, x_test, 0, s)
        assert len(steps) == 1 + patience
    steps.clear()
    probes.fit_predict("regression", "linear", x, y, x_test, 0,
                       probes.ProbeSettings(lr=0.0, batch=5, max_epochs=50, patience=2))
    assert len(steps) == 3 * 4  # 18 training rows (2 held for validation) in batches of 5


def test_distribution_targets_with_a_zero_in_every_row():
    require("torch")
    x, x_test = _data(n=40, seed=2)
    z = np.exp(np.stack([x[:, 0], -x[:, 0]], 1))
    y = np.concatenate([z / z.sum(1, keepdims=True), np.zeros((40, 1))], 1)
    s = probes.ProbeSettings(lr=0.05, batch=8, max_epochs=8, patience=2)
    got = probes.fit_predict("distribution", "mlp", x, y, x_test, 1, s)
    np.testing.assert_allclose(got, _reference("distribution", "mlp", x, y, x_test, 1, s),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)


def test_one_validation_unit_of_a_small_set():
    require("torch")
    x, x_test = _data(n=12, seed=5)  # round(0.1 * 12) = 1 validation unit
    y = x[:, 0] + 0.5 * x[:, 1]
    s = probes.ProbeSettings(lr=0.05, batch=4, max_epochs=10, patience=3)
    got = probes.fit_predict("regression", "mlp", x, y, x_test, 3, s)
    np.testing.assert_allclose(got, _reference("regression", "mlp", x, y, x_test, 3, s),
                               rtol=1e-5, atol=1e-5)


def test_the_default_settings_are_the_documented_protocol():
    # the module docstring: lr 1e-3, batch 128, at most 300 epochs, patience 10, a
    # validation tenth, 64 hidden units
    assert probes.ProbeSettings() == probes.ProbeSettings(
        lr=1e-3, batch=128, max_epochs=300, patience=10, val_fraction=0.1, hidden=64)
    assert tuple(probes.ProbeSettings().__dict__.values()) == (1e-3, 128, 300, 10, 0.1, 64)
    require("torch")
    x, x_test = _data(n=30, seed=4)
    y = (x[:, 1] > 5).astype(int)
    got = probes.fit_predict("classification", "linear", x, y, x_test, seed=0)
    want = _reference("classification", "linear", x, y, x_test, 0, probes.ProbeSettings())
    assert np.array_equal(got, want)
