"""The AETHER heads and losses, checked against the method's formulas written out in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from support import require

torch = require("torch")

from aether.ml.heads import AetherModel, aether_losses, info_nce, recall_at, retrieval_ranks  # noqa: E402
from aether.ml.train import PRESETS  # noqa: E402


def _w(model, name):
    return model.state_dict()[name].double().numpy()


def _unit(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _gelu(v):
    return 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))


def _ae(model, x):
    """The method's AE branch, by hand in float64."""
    lin = lambda v, n: v @ _w(model, f"{n}.weight").T + _w(model, f"{n}.bias")  # noqa: E731
    gate = 1 / (1 + math.exp(-model.ae_gate.item()))
    h = lin(np.maximum(lin(x, "ae_mlp.0"), 0), "ae_mlp.2") + gate * lin(x, "ae_shortcut")
    h = _unit(h)
    return _unit(lin(_gelu(lin(h, "ae_proj.0")), "ae_proj.2"))


def _nce(a, b, tau, pos=None):
    """Symmetric InfoNCE: mean over rows of -Σ_j target_ij log softmax_j(a_i·b_j / τ)."""
    logits = a @ b.T / tau
    pos = np.eye(len(a), dtype=bool) if pos is None else pos

    def one_side(lg, p):
        logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
        return -((p / p.sum(1, keepdims=True)) * logp).sum(1).mean()
    return 0.5 * (one_side(logits, pos) + one_side(logits.T, pos.T))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    x, xa = torch.randn(7, 64, generator=g), torch.randn(7, 64, generator=g)
    t = torch.nn.functional.normalize(torch.randn(7, 384, generator=g), dim=1)
    return x, xa, t


def test_paper_architecture_has_173057_weights():
    assert sum(p.numel() for p in AetherModel().parameters()) == 173_057
    # a learnt temperature is the only extra weight of the default preset
    assert sum(p.numel() for p in AetherModel(learn_temperature=True).parameters()) == 173_058
    assert AetherModel().ae_gate.item() == -4.0


def test_paper_preset_settings():
    p = PRESETS["paper"]
    assert (p.lr, p.weight_decay, p.lr_min, p.batch_size, p.epochs, p.seed) == (
        1e-3, 1e-4, 1e-5, 512, 100, 42)
    assert (p.temperature, p.learn_temperature, p.multiscale_weight) == (0.07, False, 0.2)
    assert (p.same_text_positive, p.same_place_m, p.val_fraction) == (False, 0.0, 0.0)


def test_encoders_give_unit_vectors(batch):
    x, _, t = batch
    m = AetherModel()
    za, zt = m.encode_ae(x), m.encode_text(t)
    assert za.shape == zt.shape == (7, 128)
    assert torch.allclose(za.norm(dim=1), torch.ones(7), atol=1e-5)
    assert torch.allclose(zt.norm(dim=1), torch.ones(7), atol=1e-5)


def test_paper_losses_match_the_formulas(batch):
    torch.manual_seed(0)
    x, xa, t = batch
    m = AetherModel()
    got = {k: v.item() for k, v in aether_losses(m, x, xa, t).items()}
    a, aa = _ae(m, x.double().numpy()), _ae(m, xa.double().numpy())
    tt = _unit(t.double().numpy() @ _w(m, "text_proj.weight").T + _w(m, "text_proj.bias"))
    l_ii, l_xt = _nce(a, aa, 0.07), _nce(a, tt, 0.07)
    assert (got["multiscale"]) == pytest.approx(l_ii, rel=1e-5)
    assert (got["crossmodal"]) == pytest.approx(l_xt, rel=1e-5)
    assert (got["loss"]) == pytest.approx(0.2 * l_ii + 0.8 * l_xt, rel=1e-5)
    assert np.allclose(m.encode_ae(x).detach().numpy(), a, atol=1e-5)


def test_false_negative_targets(batch):
    """Same text or same place: positives share the target mass instead of being pushed apart."""
    x, xa, t = batch
    m = AetherModel()
    same_text = torch.zeros(7, 7, dtype=torch.bool)
    same_text[0, 1] = same_text[1, 0] = True
    same_place = torch.zeros(7, 7, dtype=torch.bool)
    same_place[2, 5] = same_place[5, 2] = True
    got = aether_losses(m, x, xa, t, same_text=same_text, same_place=same_place)
    got = {k: v.item() for k, v in got.items()}
    a, aa = _ae(m, x.double().numpy()), _ae(m, xa.double().numpy())
    tt = _unit(t.double().numpy() @ _w(m, "text_proj.weight").T + _w(m, "text_proj.bias"))
    eye = np.eye(7, dtype=bool)
    xt_pos = eye | same_text.numpy() | same_place.numpy()
    assert (got["crossmodal"]) == pytest.approx(_nce(a, tt, 0.07, xt_pos), rel=1e-5)
    assert (got["multiscale"]) == pytest.approx(
        _nce(a, aa, 0.07, eye | same_place.numpy()), rel=1e-5)
    # with no off-diagonal positives the mask form is the method's loss
    za, zt = m.encode_ae(x).detach(), m.encode_text(t).detach()
    assert float(info_nce(za, zt, 1 / 0.07, torch.eye(7, dtype=torch.bool))) == pytest.approx(
        float(info_nce(za, zt, 1 / 0.07)), rel=1e-6)
    # and with them, the formula's value
    assert float(info_nce(za, zt, 1 / 0.07, torch.from_numpy(xt_pos))) == pytest.approx(
        _nce(za.double().numpy(), zt.double().numpy(), 0.07, xt_pos), rel=1e-5)


def test_positives_of_either_mask_alone():
    """Same place: a positive of both losses; same text: of the cross-modal one only."""
    from aether.ml.heads import positives

    eye = torch.eye(3, dtype=torch.bool)
    pair = torch.zeros(3, 3, dtype=torch.bool)
    pair[0, 1] = pair[1, 0] = True
    assert positives(3, None, None) == (None, None)
    ii, xt = positives(3, pair, None)
    assert ii is None and torch.equal(xt, eye | pair)
    ii, xt = positives(3, None, pair)
    assert torch.equal(ii, eye | pair) and torch.equal(xt, eye | pair)


def test_learnt_temperature_is_capped():
    m = AetherModel(learn_temperature=True)
    assert m.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        m.log_scale.fill_(10.0)
    assert m.logit_scale().item() == pytest.approx(100.0, rel=1e-5)


def test_retrieval_ranks():
    keys = torch.eye(4)
    queries = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0], [0, 0.2, 0.1, 0]])
    queries = torch.nn.functional.normalize(queries, dim=1)
    ranks = retrieval_ranks(queries, keys, chunk=3)
    assert retrieval_ranks(queries, keys, torch.tensor([0, 1, 2, 1])).tolist() == [1, 2, 1, 1]
    assert ranks.tolist() == [1, 2, 1, 3]  # the tie with key 0 counts for the true key
    r = recall_at(ranks, (1, 2))
    assert r == {"recall@1": 0.5, "recall@2": 0.75, "mrr": pytest.approx((1 + 0.5 + 1 + 1 / 3) / 4)}


def test_a_head_that_normalises_its_input_ignores_the_input_scale() -> None:
    torch.manual_seed(0)
    m = AetherModel(normalize_input=True)
    x = torch.nn.functional.normalize(torch.randn(5, 64), dim=-1)
    with torch.no_grad():
        for s in (0.3, 3.0):  # shorter and longer than unit: each mean is made unit first
            torch.testing.assert_close(m.encode_ae(s * x), m.encode_ae(x), atol=1e-6, rtol=1e-5)
        m.normalize_input = False  # the same weights without it see the scale
        assert not torch.allclose(m.encode_ae(0.3 * x), m.encode_ae(x), atol=1e-4)
