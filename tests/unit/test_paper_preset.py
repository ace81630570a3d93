"""The ``paper`` preset against the method as its reference code describes it, re-written
here step by step from that description (nothing is shared with aether.ml but the rows):

* AE head: Linear(64→256) → ReLU → Linear(256→128), plus sigmoid(g)·Linear(64→128) with the
  gate g starting at −4; L2-normalised; then Linear(128→256) → GELU → Linear(256→128),
  L2-normalised. Text head: Linear(384→128), L2-normalised. Built in that order after
  ``torch.manual_seed(seed)``.
* Inputs: each pooled 64-d mean divided by max(‖x‖, 1e-6).
* Batches: a shuffled permutation each epoch cut into batches of exactly 512, the rest dropped.
* Loss: 0.2 · InfoNCE(base, aug) + 0.8 · InfoNCE(base, text), both symmetric, τ = 0.07.
* AdamW (lr 1e-3, weight decay 1e-4 on every weight), CosineAnnealingLR over all steps down
  to 0.01 × lr, stepped per batch.
* Every POI trains (the reference's ``test_ratio`` 0): no hold-out.

The tolerance is not a fixed number: the test runs that reference step twice, in float32 and
in float64 from the same initial weights, rows and batch order, and takes the distance
between the two (float32 rounding alone, grown over the same steps) as the noise floor.
aether's float32 run must lie within ``FLOOR_FACTOR`` floors of the float64 one: two float32
computations that each sit one floor from the exact result can be two apart.
"""

from __future__ import annotations

import csv
import json

import numpy as np
from support import require

torch = require("torch")
nn, F = torch.nn, torch.nn.functional

from train_data import write_synthetic_city  # noqa: E402

from aether.ml.train import (  # noqa: E402
    METRICS_FILE,
    SUMMARY_FILE,
    load_model,
    load_pairs,
    resolve_config,
    train,
)

EPOCHS, SEED = 10, 3
#: aether's distance to the float64 reference, in float32 noise floors (see the docstring)
FLOOR_FACTOR = 2.0
#: metrics.csv keeps 6 decimals: its losses are rounded by up to half of 1e-6 on top
CSV_ROUNDING = 0.5e-6


class RefAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(64, 256), nn.Linear(256, 128)
        self.short = nn.Linear(64, 128)
        self.g = nn.Parameter(torch.tensor(-4.0))
        self.p1, self.p2 = nn.Linear(128, 256), nn.Linear(256, 128)

    def forward(self, x):
        h = self.l2(torch.relu(self.l1(x))) + torch.sigmoid(self.g) * self.short(x)
        h = h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)
        z = self.p2(F.gelu(self.p1(h)))
        return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _sym_ce(a, b, tau=0.07):
    logits = a @ b.T / tau
    target = torch.arange(len(a))
    return 0.5 * F.cross_entropy(logits, target) + 0.5 * F.cross_entropy(logits.T, target)


def _reference_run(base, aug, text, dtype):
    """The reference's EPOCHS epochs in ``dtype``: (epoch mean losses, final modules)."""
    torch.manual_seed(SEED)
    ae, tx = RefAE(), nn.Linear(384, 128)  # initialised in float32, as the reference does
    ae, tx = ae.to(dtype), tx.to(dtype)
    base, aug, text = base.to(dtype), aug.to(dtype), text.to(dtype)
    params = [*ae.parameters(), *tx.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    n = len(base)
    steps = EPOCHS * (n // 512)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-5)
    epoch_means = []
    for epoch in range(1, EPOCHS + 1):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(SEED * 100_003 + epoch))
        losses = []
        for b in range(n // 512):
            idx = perm[b * 512:(b + 1) * 512]
            zb, za = ae(base[idx]), ae(aug[idx])
            zt = F.normalize(tx(text[idx]), dim=1)
            loss = 0.2 * _sym_ce(zb, za) + 0.8 * _sym_ce(zb, zt)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        epoch_means.append(np.mean(losses))
    return np.array(epoch_means), ae, tx


def _weights(ae, tx) -> dict[str, np.ndarray]:
    """The reference modules' weights under aether's names, as float64 arrays."""
    ref = {"ae_mlp.0": ae.l1, "ae_mlp.2": ae.l2, "ae_shortcut": ae.short, "ae_proj.0": ae.p1,
           "ae_proj.2": ae.p2, "text_proj": tx}
    out = {f"{k}.{w}": getattr(m, w).detach().double().numpy()
           for k, m in ref.items() for w in ("weight", "bias")}
    out["ae_gate"] = ae.g.detach().double().numpy().reshape(())
    return out


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_paper_preset_equals_the_reference_step(tmp_path):
    city = write_synthetic_city(tmp_path, 1100)  # 1,100 pairs -> 2 batches of 512 per epoch
    torch.set_num_threads(1)
    # the preset as shipped (only the epoch count and seed are the test's)
    run = train(city, preset="paper", run_name="p", epochs=EPOCHS, seed=SEED)
    cfg = resolve_config("paper", EPOCHS, SEED)
    assert cfg.test_fraction == 0.0 and cfg.tf32  # TF32: CUDA only, this runs on CPU
    pairs = load_pairs(city, cfg)
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["pairs"]["train"] == len(pairs.base) == 1100 and "test" not in summary

    def unit(a):
        a = torch.from_numpy(a)
        return a / a.norm(dim=1, keepdim=True).clamp_min(1e-6)

    base, aug = unit(pairs.base), unit(pairs.aug)
    text = torch.from_numpy(pairs.text_vectors[pairs.text_id])
    assert EPOCHS * (len(base) // 512) == 20
    loss32, ae32, tx32 = _reference_run(base, aug, text, torch.float32)
    loss64, ae64, tx64 = _reference_run(base, aug, text, torch.float64)
    w32, w64 = _weights(ae32, tx32), _weights(ae64, tx64)
    floor_loss = float(np.abs(loss32 - loss64).max())
    floor_w = _max_diff(w32, w64)
    assert 0 < floor_w < 1e-3 and 0 < floor_loss < 1e-3  # a float32 floor, not a bug

    with open(run / METRICS_FILE) as f:
        logged = np.array([float(r["loss"]) for r in csv.DictReader(f)])
    assert len(logged) == EPOCHS
    model, _ = load_model(run)
    ours = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    ours = {k: ours[k].reshape(w64[k].shape) for k in w64}
    loss_gap = float(np.abs(logged - loss64).max())
    w_gap = _max_diff(ours, w64)
    print(f"float32 floor: weights {floor_w:.2e}, losses {floor_loss:.2e}; aether vs float64 "
          f"reference: weights {w_gap:.2e}, losses {loss_gap:.2e}; aether vs float32 "
          f"reference: weights {_max_diff(ours, w32):.2e}")
    assert w_gap <= FLOOR_FACTOR * floor_w
    assert loss_gap <= FLOOR_FACTOR * floor_loss + CSV_ROUNDING
    # and the weights did move (the comparison is not between two initialisations)
    torch.manual_seed(SEED)
    assert float((RefAE().l1.weight - ae32.l1.weight).detach().abs().max()) > 1e-3
