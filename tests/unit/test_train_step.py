"""The hand-written training step against autograd of the loss's definition.

``aether.ml.step.train_step`` writes its backward out; autograd of ``heads.aether_losses`` (a
separate forward, built from nn modules) is the oracle for its losses and every gradient.
"""

from __future__ import annotations

import copy
import math
import os
import platform

import pytest
from support import require

torch = require("torch")

from aether.ml.heads import AetherModel, aether_losses, info_nce_logits  # noqa: E402
from aether.ml.step import (  # noqa: E402
    _unit,
    _unit_grad,
    info_nce_blocks,
    kept_freed_memory,
    train_step,
)

N = 96


def _batch(seed: int, dup: bool):
    g = torch.Generator().manual_seed(seed)
    base, aug = torch.randn(N, 64, generator=g), torch.randn(N, 64, generator=g)
    text = torch.randn(N, 384, generator=g)
    if not dup:
        return base, aug, text, {}
    ids = torch.randint(0, N // 3, (N,), generator=g)
    xy = torch.rand(N, 2, generator=g) * 10
    return base, aug, text, {"same_text": ids[:, None] == ids[None, :],
                             "same_place": torch.cdist(xy, xy) <= 1.0}


def _autograd(model, base, aug, text, masks, w):
    model.zero_grad(set_to_none=True)
    losses = aether_losses(model, base, aug, text, multiscale_weight=w, **masks)
    losses["loss"].backward()
    return ({k: float(v.detach()) for k, v in losses.items()},
            {k: p.grad.clone() for k, p in model.named_parameters()})


@pytest.mark.parametrize("kind", ["paper", "false-negatives", "learnt-temperature", "raw-input",
                                  "sharp-temperature"])
def test_losses_and_every_gradient_equal_autograd(kind):
    torch.manual_seed(5)
    model = AetherModel(normalize_input=kind != "raw-input",
                        learn_temperature=kind.endswith("-temperature"))
    # weights moved off their initialisation, so the gate and all layers carry gradient
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if kind == "sharp-temperature":  # τ = 1/60: logits past ±40, each side its own shift
            model.log_scale.fill_(float(torch.log(torch.tensor(60.0))))
    base, aug, text, masks = _batch(7, dup=kind in ("false-negatives", "learnt-temperature"))
    if masks:
        assert int(masks["same_text"].sum()) > N and int(masks["same_place"].sum()) > N
    want_losses, want_grads = _autograd(model, base, aug, text, masks, 0.2)

    ours = copy.deepcopy(model)
    frozen = torch.optim.SGD(ours.parameters(), lr=0.0)  # step() leaves the weights as they are
    got = train_step(ours, frozen, base, aug, text, multiscale_weight=0.2, **masks)
    for k, v in want_losses.items():
        assert float(got[k]) == pytest.approx(v, rel=1e-6, abs=1e-6), k
    got_grads = {k: p.grad for k, p in ours.named_parameters()}
    assert got_grads.keys() == want_grads.keys()
    for k, want in want_grads.items():
        assert got_grads[k].shape == want.shape, k
        scale = float(want.abs().max())
        assert scale > 0, k
        assert float((got_grads[k] - want).abs().max()) <= 1e-5 * max(scale, 1e-2), k


@pytest.mark.parametrize("scale", [14.0, 100.0])
def test_info_nce_blocks_equal_autograd_where_every_logit_is_far_below_the_scale(scale):
    """Cosines in [-0.9, -0.8] (one row, one column in [0.8, 0.9]): at scale 100 (τ = 0.01,
    the cap) one shift by +scale for rows and columns alike, or by a whole block's maximum,
    would underflow every exp of some row or column (e⁻¹⁸⁰ is 0 in float32, its log -inf);
    each row's and column's own maximum keeps the losses and gradients finite. The oracle is
    autograd of ``heads.info_nce_logits`` (torch's log-softmax)."""
    n, weights = 16, (0.2, 0.8)
    g = torch.Generator().manual_seed(3)
    cos = -0.9 + 0.1 * torch.rand(2, n, n, generator=g)
    # one row of block 0 and one column of block 1 near +1: a single shift for the whole
    # block (its maximum) would underflow every other row's (column's) exp
    cos[0, 3] *= -1
    cos[1, :, 5] *= -1
    blocks = (scale * cos).requires_grad_()
    pos = (torch.rand(n, n, generator=g) < 0.2) | torch.eye(n, dtype=torch.bool)  # asymmetric
    want = torch.stack([info_nce_logits(blocks[0]), info_nce_logits(blocks[1], pos)])
    (weights[0] * want[0] + weights[1] * want[1]).backward()
    losses, grad = info_nce_blocks(blocks.detach(), scale, weights, (None, pos))
    want = want.detach()
    assert bool(torch.isfinite(want).all()) and float(want.min()) > 0
    torch.testing.assert_close(losses, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, blocks.grad, rtol=1e-5, atol=1e-7)


def test_unit_grad_equals_autograd_of_normalize_on_both_sides_of_eps():
    """A row shorter than eps is divided by eps (no radial part removed), as F.normalize's
    clamp does; a longer one is projected."""
    x = torch.tensor([[3e-13, 4e-13], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    dy = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    torch.nn.functional.normalize(x, dim=1, eps=1e-12).backward(dy)
    y, norm = _unit(x.detach(), 1e-12)
    torch.testing.assert_close(_unit_grad(dy, y, norm, 1e-12), x.grad, rtol=1e-12, atol=0.0)


def test_a_run_of_steps_follows_the_autograd_run():
    """60 AdamW steps: the per-step losses stay within 1e-5 of the autograd run's."""
    torch.manual_seed(2)
    a = AetherModel(normalize_input=True)
    b = copy.deepcopy(a)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-3, weight_decay=1e-4, foreach=True)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=1e-4, foreach=True)
    worst, curve = 0.0, []
    for s in range(60):
        base, aug, text, _ = _batch(100 + s % 4, dup=False)  # 4 batches, seen 15 times each
        loss_a, _ = _autograd(a, base, aug, text, {}, 0.2)
        opt_a.step()
        loss_b = float(train_step(b, opt_b, base, aug, text, multiscale_weight=0.2)["loss"])
        worst = max(worst, abs(loss_a["loss"] - loss_b))
        curve.append(loss_b)
    assert worst <= 1e-5
    assert curve[-1] < curve[0] - 0.5  # the loss fell: the steps did change the weights


def test_freed_memory_is_kept_while_training_and_handed_back_after():
    """48 MB freed inside the context stays mapped (the next step reuses it without page
    faults); on exit it goes back to the OS. Outside, glibc maps a block that large on its
    own and unmaps it on free, so the first assertion fails without the context. Where the
    C library is not glibc the context says it does nothing, and nothing is asserted of RSS."""
    def rss_mb() -> float:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    glibc = platform.libc_ver()[0] == "glibc"
    with kept_freed_memory() as applied:
        assert applied == glibc
        if not glibc:
            return
        block = torch.ones(12 << 20)  # 48 MB, every page touched
        held = rss_mb()
        del block
        freed = rss_mb()
    after = rss_mb()
    assert held - freed < 8
    assert freed - after > 30


@pytest.mark.parametrize("log_scale", [math.log(100.0) - 0.005, math.log(100.0) + 0.005])
def test_the_temperature_gradient_below_and_past_its_cap(log_scale):
    """Below the cap (1/τ = 100) the learnt temperature gets autograd's gradient; past it
    the clamp passes none."""
    torch.manual_seed(5)
    model = AetherModel(learn_temperature=True)
    with torch.no_grad():
        model.log_scale.fill_(log_scale)
    base, aug, text, _ = _batch(7, dup=False)
    _, want = _autograd(model, base, aug, text, {}, 0.2)
    ours = copy.deepcopy(model)
    train_step(ours, torch.optim.SGD(ours.parameters(), lr=0.0), base, aug, text,
               multiscale_weight=0.2)
    got = float(ours.log_scale.grad)
    assert got == pytest.approx(float(want["log_scale"]), rel=1e-5, abs=1e-9)
    assert (got != 0.0) == (log_scale < math.log(100.0))
