"""PURE's additions (inwind0212/PURE @ fddee25) as trainer options: the relational term
against numpy and autograd, the plain AETHER step untouched when it is off, the ring batches'
composition and rings measured here, the options' validation, and a ``pure`` run."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from support import require

torch = require("torch")

from train_data import write_synthetic_city  # noqa: E402

from aether.errors import ConfigError, InputError  # noqa: E402
from aether.ml.config import PRESETS, hyperparameters, parse_options  # noqa: E402
from aether.ml.heads import AetherModel, aether_losses, relational_loss  # noqa: E402
from aether.ml.rings import ring_epoch  # noqa: E402
from aether.ml.step import relational_grad, train_step  # noqa: E402
from aether.ml.train import METRICS_FILE, SUMMARY_FILE, resolve_config, train  # noqa: E402


def _numpy_relational(student: np.ndarray, teacher: np.ndarray, tau: float) -> float:
    """PURE's term from its definition, row by row in float64: KL(teacher ‖ student) of the
    softmax over the other rows' cosines / tau, averaged over rows."""
    def unit(v):
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    s, t = unit(student.astype(np.float64)), unit(teacher.astype(np.float64))
    total = 0.0
    for i in range(len(s)):
        others = [j for j in range(len(s)) if j != i]
        ls, lt = s[others] @ s[i] / tau, t[others] @ t[i] / tau
        p = np.exp(ls - ls.max()) / np.exp(ls - ls.max()).sum()
        q = np.exp(lt - lt.max()) / np.exp(lt - lt.max()).sum()
        total += float((q * np.log(q / p)).sum())
    return total / len(s)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_relational_term_equals_numpy(tau):
    g = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(9, 16, generator=g), torch.randn(9, 64, generator=g)
    expected = _numpy_relational(student.numpy(), teacher.numpy(), tau)
    assert float(relational_loss(student, teacher, tau)) == pytest.approx(expected, rel=1e-5)
    unit = torch.nn.functional.normalize(student, dim=1)
    assert float(relational_grad(unit, teacher, tau)[0]) == pytest.approx(expected, rel=1e-5)
    # a student that orders neighbours as the teacher does costs nothing
    assert float(relational_loss(teacher, teacher, tau)) == pytest.approx(0.0, abs=1e-6)


def _model(seed: int) -> AetherModel:
    torch.manual_seed(seed)
    model = AetherModel(text_dim=32, hidden_dim=48, out_dim=24, normalize_input=True)
    with torch.no_grad():  # off the initialisation, so the gate and every layer carry gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 64, generator=g)
    return base, base + 0.3 * torch.randn(n, 64, generator=g), torch.randn(n, 32, generator=g)


@pytest.mark.parametrize("rows", [0, 20])
def test_step_with_relational_term_equals_autograd(rows):
    """The written-out gradient of the relational term (all rows, and the first 20 of 48)."""
    base, aug, text = _batch(48, 1)
    ids = torch.arange(48) % 16
    masks = {"same_text": ids[:, None] == ids[None, :]}
    kw = {"multiscale_weight": 0.2, "relational_weight": 0.5, "relational_temperature": 0.1,
          "relational_rows": rows}
    step_model, ref = _model(2), _model(2)
    losses = train_step(step_model, torch.optim.SGD(step_model.parameters(), lr=0.0),
                        base, aug, text, **masks, **kw)
    expected = aether_losses(ref, base, aug, text, **masks, **kw)
    expected["loss"].backward()
    for k in ("loss", "multiscale", "crossmodal", "relational"):
        assert float(losses[k]) == pytest.approx(float(expected[k].detach()), rel=1e-5, abs=1e-6)
    assert float(expected["relational"].detach()) > 0
    for (name, p), q in zip(step_model.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def test_weight_zero_is_the_plain_aether_step():
    """relational_weight 0 (AETHER): the same losses and the same weights, bit for bit,
    whatever the term's other settings."""
    base, aug, text = _batch(40, 4)
    plain, off = _model(5), _model(5)
    runs = []
    for model, kw in ((plain, {}), (off, {"relational_weight": 0.0,
                                          "relational_temperature": 0.3, "relational_rows": 7})):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        runs.append([train_step(model, opt, base, aug, text, multiscale_weight=0.2, **kw)
                     for _ in range(3)])
    for a, b in zip(*runs, strict=True):
        assert a.keys() == b.keys() == {"loss", "multiscale", "crossmodal"}
        assert all(torch.equal(a[k], b[k]) for k in a)
    for p, q in zip(plain.parameters(), off.parameters(), strict=True):
        assert torch.equal(p, q)


def _rings_cfg(**kw):
    return dataclasses.replace(PRESETS["pure"], **kw)


SIDES = (600.0, 1500.0, 3000.0)  # on a 10 km square of 20,000 POIs every ring holds enough


def _uniform_city(n=20_000, seed=0):
    return np.random.default_rng(seed).uniform(0, 10_000, size=(n, 2))


def _per_ring(d: np.ndarray) -> list[int]:
    """How many distances fall in each ring of SIDES and beyond it (0 is in none)."""
    edges = (0.0, *SIDES, np.inf)
    return [int(((d > lo) & (d <= hi)).sum()) for lo, hi in itertools.pairwise(edges)]


def test_ring_batches_match_the_shares_and_fall_in_their_rings():
    xy = _uniform_city()
    rows = np.arange(0, len(xy), 2)  # the training rows: every other one
    cfg = _rings_cfg(batch_size=64, ring_half_sides_m=SIDES)
    epoch = ring_epoch(xy, rows, cfg, 1)
    assert len(epoch) == len(rows) // 64
    want = [32, 13, 13, 6]  # 0.5/0.2/0.2/0.1 of 64, the two remainders to the largest parts
    exact, inner_hits, inner_expected, inner_var = 0, 0, 0.0, 0.0
    for anchor, batch in epoch:
        assert len(batch) == 64 and len(set(batch.tolist())) == 64
        assert np.isin(batch, rows).all()
        d_all = np.abs(xy[rows] - xy[anchor]).max(1)  # distances measured here
        d = np.abs(xy[batch] - xy[anchor]).max(1)
        have, got = (_per_ring(d_all), _per_ring(d))
        if all(h >= w for h, w in zip(have, want, strict=True)):  # no ring short: exact
            assert got == want
            exact += 1
        # within ring 0 the draw is uniform: its share inside 300 m is the ring's own share
        p = ((d_all > 0) & (d_all <= 300)).sum() / have[0]
        inner_hits += int(((d > 0) & (d <= 300)).sum())
        inner_expected += 32 * p
        inner_var += 32 * p * (1 - p)  # binomial variance bounds the hypergeometric one
    assert exact >= 0.95 * len(epoch)
    # the statistical bound: within 4 standard deviations (a false alarm about 1 in 16,000)
    assert abs(inner_hits - inner_expected) <= 4 * np.sqrt(inner_var)


def test_short_rings_pass_their_share_outward():
    """PURE's radii on a 1 km town: every POI is in ring 0 and the shares of the empty rings
    and of beyond them fall back to any unused POI, still distinct."""
    xy = np.random.default_rng(1).uniform(0, 1000, size=(600, 2))
    cfg = _rings_cfg(batch_size=128)
    for anchor, batch in ring_epoch(xy, np.arange(600), cfg, 3):
        assert len(batch) == 128 and len(set(batch.tolist())) == 128
        assert (np.abs(xy[batch] - xy[anchor]).max(1) <= 10_000).all()


def test_ring_batches_are_a_function_of_seed_and_epoch():
    xy, rows = _uniform_city(3000), np.arange(3000)
    cfg = _rings_cfg(batch_size=100, ring_half_sides_m=SIDES)

    def flat(c, e):
        return np.concatenate([b for _, b in ring_epoch(xy, rows, c, e)])

    assert np.array_equal(flat(cfg, 2), flat(cfg, 2))
    assert not np.array_equal(flat(cfg, 2), flat(cfg, 3))
    assert not np.array_equal(flat(cfg, 2), flat(dataclasses.replace(cfg, seed=7), 2))


@pytest.mark.parametrize("bad", [
    {"relational_weight": -0.5}, {"relational_weight": float("nan")},
    {"relational_temperature": 0.0}, {"relational_temperature": float("inf")},
    {"relational_sample": 1}, {"ring_half_sides_m": (100.0, float("inf"))},
    {"relational_sample": -3}, {"batch_sampler": "grid"}, {"ring_shares": (0.5, 0.5)},
    {"ring_shares": (0.5, 0.2, 0.2, 0.2)}, {"ring_shares": (1.1, 0.1, -0.2, 0.0)},
    {"ring_half_sides_m": (1000.0, 100.0, 5000.0)}, {"ring_half_sides_m": (0.0, 1.0, 2.0)},
    {"ring_half_sides_m": ()},
])
def test_nonsense_pure_options_are_refused(bad):
    with pytest.raises(ConfigError):
        resolve_config("pure", None, 42, **bad)


def test_pure_options_on_the_command_line():
    assert parse_options(["ring_shares=0.4,0.3,0.2,0.1", "batch_sampler=rings"]) == {
        "ring_shares": (0.4, 0.3, 0.2, 0.1), "batch_sampler": "rings"}
    for item in ("ring_shares=0.5,,0.5", "ring_half_sides_m=nan,1,2", "relational_weight=x"):
        with pytest.raises(ConfigError):
            parse_options([item])


#: A run's hyper-parameters before PURE's options: existing runs keep their config hashes.
BEFORE_PURE = {"epochs", "batch_size", "batching", "lr", "lr_min_ratio", "weight_decay",
               "temperature", "learn_temperature", "multiscale_weight", "same_text_positive",
               "same_place_m", "normalize_input", "base_radius_m", "aug_radius_m",
               "hidden_dim", "out_dim", "test_fraction", "val_fraction", "split", "block_m",
               "patience", "min_epochs_fraction", "text_model", "tf32", "seed"}


def test_earlier_presets_record_what_they_did():
    for name in ("paper", "default"):
        assert set(hyperparameters(PRESETS[name])) == BEFORE_PURE
    # an option set to a non-default value, or switched on, is recorded with its settings
    on = hyperparameters(dataclasses.replace(PRESETS["default"], relational_weight=0.1))
    assert set(on) - BEFORE_PURE == {"relational_weight", "relational_temperature",
                                     "relational_sample"}


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return write_synthetic_city(tmp_path_factory.mktemp("pure"), 700)


def test_pure_preset_trains_and_records_its_options(city):
    run = train(city, preset="pure", epochs=2)
    config = json.loads((run / "config.json").read_text())
    hyper = config["hyperparameters"]
    assert config["preset"] == "pure" and (run / SUMMARY_FILE).is_file()
    assert (hyper["relational_weight"], hyper["relational_temperature"],
            hyper["relational_sample"]) == (0.5, 0.1, 512)
    assert hyper["batch_sampler"] == "rings"
    assert hyper["ring_shares"] == [0.5, 0.2, 0.2, 0.1]
    assert hyper["ring_half_sides_m"] == [10_000.0, 100_000.0, 1_000_000.0]
    assert (hyper["lr"], hyper["lr_min_ratio"], hyper["hidden_dim"]) == (1e-4, 1.0, 2048)
    rows = (run / METRICS_FILE).read_text().splitlines()
    assert rows[0].split(",")[:5] == ["epoch", "loss", "multiscale", "crossmodal",
                                      "relational"] and len(rows) == 3
    assert json.loads((run / SUMMARY_FILE).read_text())["epochs_run"] == 2


def test_rings_refuse_several_cities(city, tmp_path):
    other = write_synthetic_city(tmp_path, 100, slug="otherville", first_id=10_000)
    with pytest.raises(InputError):
        train(city, preset="pure", epochs=1, also=[other])
    with pytest.raises(InputError):
        train(city, preset="default", epochs=1, also=[other], batch_sampler="rings")


def test_the_relational_term_defaults_to_every_row_at_temperature_0_1() -> None:
    """With only a weight given, the term covers the whole batch at PURE's τ = 0.1 (the
    term itself is checked against numpy above)."""
    torch.manual_seed(1)
    m = AetherModel()
    base, aug, text = torch.randn(6, 64), torch.randn(6, 64), torch.randn(6, 384)
    with torch.no_grad():
        got = aether_losses(m, base, aug, text, relational_weight=0.5)
        want = relational_loss(m.encode_ae(base), base, 0.1)
    torch.testing.assert_close(got["relational"], want)
    torch.testing.assert_close(got["loss"],
                               0.2 * got["multiscale"] + 0.8 * got["crossmodal"] + 0.5 * want)
