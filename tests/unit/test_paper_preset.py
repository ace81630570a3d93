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
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from train_data import write_synthetic_city  # noqa: E402

from aether.ml.train import METRICS_FILE, load_model, load_pairs, resolve_config, train  # noqa: E402

EPOCHS, SEED = 10, 3


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


def test_paper_preset_equals_the_reference_step(tmp_path):
    city = write_synthetic_city(tmp_path, 1100)  # 1,100 pairs -> 2 batches of 512 per epoch
    torch.set_num_threads(1)
    run = train(city, preset="paper", run_name="p", epochs=EPOCHS, seed=SEED, test_fraction=0.0)
    cfg = resolve_config("paper", EPOCHS, SEED, test_fraction=0.0)
    pairs = load_pairs(city, cfg)

    def unit(a):
        a = torch.from_numpy(a)
        return a / a.norm(dim=1, keepdim=True).clamp_min(1e-6)

    base, aug = unit(pairs.base), unit(pairs.aug)
    text = torch.from_numpy(pairs.text_vectors[pairs.text_id])
    n = len(base)
    torch.manual_seed(SEED)
    ae, tx = RefAE(), nn.Linear(384, 128)
    params = [*ae.parameters(), *tx.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    steps = EPOCHS * (n // 512)
    assert steps == 20
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

    with open(run / METRICS_FILE) as f:
        logged = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(logged) == EPOCHS
    assert np.max(np.abs(np.array(logged) - epoch_means)) <= 1e-5

    model, _ = load_model(run)
    ours = model.state_dict()
    ref = {"ae_mlp.0": ae.l1, "ae_mlp.2": ae.l2, "ae_shortcut": ae.short, "ae_proj.0": ae.p1,
           "ae_proj.2": ae.p2, "text_proj": tx}
    worst = max(float((ours[f"{k}.{w}"] - getattr(m, w).detach()).abs().max())
                for k, m in ref.items() for w in ("weight", "bias"))
    worst = max(worst, abs(float(ours["ae_gate"]) - float(ae.g)))
    assert worst <= 1e-4
    # and the weights did move (the comparison is not between two initialisations)
    torch.manual_seed(SEED)
    assert float((RefAE().l1.weight - ae.l1.weight).abs().max()) > 1e-3
