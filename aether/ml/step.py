"""One training step of :class:`~aether.ml.heads.AetherModel`, its backward written out.

Why not autograd: at batch 512 on a CPU a step is ~1.2 GFLOP of small matrix products (~8 ms
on two cores) plus many passes over small tensors. Autograd doubled that: slice and transpose
copies of the similarity matrix, two log-softmax passes and a zero-filled gradient per loss,
one kernel launch per weight. Here the forward keeps what the backward needs, both losses'
gradients come from one exp over the shared similarity matrix, every weight gradient is one
matrix product written once, and the first layer and its shortcut run forward as one product.

``heads.aether_losses`` stays the definition: the tests check these losses and gradients
against autograd of it (and against an independent re-implementation of the method's step).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from aether.ml.heads import AetherModel

NORM_EPS = 1e-12  # F.normalize's default, as in encode_ae / encode_text
INPUT_EPS = 1e-6  # encode_ae's input normalisation


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


@contextlib.contextmanager
def kept_freed_memory() -> Iterator[bool]:
    """While training, ask glibc to keep freed blocks instead of handing them back to the OS.

    A step allocates a few 2 MB temporaries; by default glibc trims them back to the OS when
    they are freed, so the next step page-faults them in again: on a VM that was half of the
    step (20 ms against 11). On exit the thresholds are left where glibc's own adaptive ones
    end up (32 MB, trim at twice that) and the kept memory is handed back. Yields whether it
    applies: it is a no-op (False) where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        yield False
        return
    mallopt(M_MMAP_THRESHOLD, 64 << 20)
    mallopt(M_TRIM_THRESHOLD, 512 << 20)
    try:
        yield True
    finally:
        mallopt(M_MMAP_THRESHOLD, 32 << 20)
        mallopt(M_TRIM_THRESHOLD, 64 << 20)
        malloc_trim(0)


def _unit(x: Tensor, eps: float, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``F.normalize(x, dim=1, eps=eps)`` (into ``out`` if given) and the clamped norms its
    backward needs."""
    import torch

    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(eps)
    return torch.div(x, norm, out=out), norm


def _unit_grad(dy: Tensor, y: Tensor, norm: Tensor, eps: float) -> Tensor:
    """Backward of ``y = x / max(‖x‖, eps)``: the radial part is removed where ‖x‖ > eps."""
    dot = (y * dy).sum(1, keepdim=True).mul_(norm > eps)
    return (dy - y * dot).div_(norm)


def info_nce_blocks(blocks: Tensor, scale: float, weights: tuple[float, ...],
                    positives: tuple[Tensor | None, ...]) -> tuple[Tensor, Tensor]:
    """Symmetric InfoNCE of each of k stacked (n, n) logit blocks, and the gradient of
    ``Σ_b weights[b]·loss_b`` with respect to the blocks.

    Block b's positives are an (n, n) bool mask (diagonal true), spreading each row's and each
    column's target evenly over its positives, or None for the diagonal, as in
    ``heads.info_nce_logits``. The loss of a block equals that of its transpose (with its
    positives transposed), so a caller may pass whichever orientation is cheaper to make.
    The logits are cosines times ``scale``, so they lie in ±scale: shifted by ``scale``, one
    exp serves rows and columns and nothing underflows while 2·scale ≤ 80 (τ ≥ 0.025). Past
    that (a learnt temperature near its cap) rows and columns are shifted by their own
    maxima, one exp each.
    """
    import torch

    k, n, _ = blocks.shape
    if 2 * scale <= 80:
        rmax = cmax = torch.tensor(scale, dtype=blocks.dtype, device=blocks.device)
        er = ec = torch.exp(blocks - rmax)
    else:
        rmax, cmax = blocks.amax(2, keepdim=True), blocks.amax(1, keepdim=True)
        er, ec = torch.exp(blocks - rmax), torch.exp(blocks - cmax)
    rsum, csum = er.sum(2, keepdim=True), ec.sum(1, keepdim=True)
    lse_r, lse_c = (rsum.log() + rmax)[:, :, 0], (csum.log() + cmax)[:, 0]  # (k, n) each
    w = torch.tensor(weights, dtype=blocks.dtype, device=blocks.device).view(k, 1, 1) * (0.5 / n)
    grad = (er * (w / rsum)).addcmul_(ec, w / csum)  # w_b·½(softmax_row + softmax_col)/n
    losses = []
    for b, pos in enumerate(positives):
        vb, gb, wb = blocks[b], grad[b], 0.5 * weights[b] / n
        if pos is None:
            pos_r = pos_c = torch.diagonal(vb)
            torch.diagonal(gb).sub_(2 * wb)
        else:
            p = pos.to(blocks.dtype)
            p_r, p_c = p / p.sum(1, keepdim=True), p / p.sum(0, keepdim=True)
            pos_r, pos_c = (p_r * vb).sum(1), (p_c * vb).sum(0)
            gb.sub_((p_r + p_c).mul_(wb))
        losses.append(0.5 * ((lse_r[b] - pos_r).mean() + (lse_c[b] - pos_c).mean()))
    return torch.stack(losses), grad


def relational_grad(s: Tensor, x: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """``heads.relational_loss(s, x, temperature)`` for unit rows ``s`` and its gradient with
    respect to ``s``. With P, Q the student's and teacher's row softmaxes (diagonal 0), the
    loss's gradient with respect to the logits is G = (P − Q) / k, and the logits are
    s sᵀ / T, so ds = (G + Gᵀ) s / T."""
    import torch

    k = len(s)
    diag = torch.eye(k, dtype=torch.bool, device=s.device)
    log_p = torch.log_softmax(torch.mm(s, s.T).div_(temperature).masked_fill_(diag, -math.inf), 1)
    xn = _unit(x, NORM_EPS)[0]
    log_q = torch.log_softmax(torch.mm(xn, xn.T).div_(temperature).masked_fill_(diag, -math.inf),
                              1)
    p, q = log_p.exp(), log_q.exp()
    loss = torch.where(diag, 0.0, q * (log_q - log_p)).sum() / k
    g = (p - q).div_(k)
    return loss, torch.mm(g.add_(g.T.clone()), s).div_(temperature)


def train_step(model: AetherModel, opt: torch.optim.Optimizer, base: Tensor, aug: Tensor,
               text: Tensor, *, multiscale_weight: float, same_text: Tensor | None = None,
               same_place: Tensor | None = None, relational_weight: float = 0.0,
               relational_temperature: float = 0.1, relational_rows: int = 0
               ) -> dict[str, Tensor]:
    """Forward, backward (into each weight's ``.grad``) and ``opt.step()`` for one batch.

    The same objective, targets and arguments as ``heads.aether_losses``; returns its losses
    (detached). With ``relational_weight`` 0 (AETHER) the relational term is not computed.
    """
    import torch
    import torch.nn.functional as F

    from aether.ml.heads import positives

    m, n = model, len(base)
    l1, l2 = cast("nn.Linear", m.ae_mlp[0]), cast("nn.Linear", m.ae_mlp[2])
    p1, p2 = cast("nn.Linear", m.ae_proj[0]), cast("nn.Linear", m.ae_proj[2])
    short, tp = m.ae_shortcut, m.text_proj
    hid = l1.out_features
    with torch.no_grad():
        x = torch.cat([base, aug])
        if m.normalize_input:
            x = _unit(x, INPUT_EPS)[0]
        a = torch.addmm(torch.cat([l1.bias, short.bias]), x, torch.cat([l1.weight, short.weight]).T)
        a1, s = a[:, :hid], a[:, hid:]
        h1 = torch.relu(a1)
        g = torch.sigmoid(m.ae_gate)
        h = torch.addmm(l2.bias, h1, l2.weight.T).add_(s * g)
        hn, h_norm = _unit(h, NORM_EPS)
        u = torch.addmm(p1.bias, hn, p1.weight.T)
        q = F.gelu(u)
        # z = [z_base; z_aug; z_text] in one buffer, so [z_aug; z_text] is one contiguous slice
        zp = torch.addmm(p2.bias, q, p2.weight.T)
        tt = torch.addmm(tp.bias, text, tp.weight.T)
        z = torch.empty(3 * n, zp.shape[1], dtype=zp.dtype, device=zp.device)
        z_norm = _unit(zp, NORM_EPS, out=z[: 2 * n])[1]
        t_norm = _unit(tt, NORM_EPS, out=z[2 * n:])[1]
        zb, zc = z[:n], z[n:]
        scale = float(m.logit_scale())
        # the similarities transposed, [z_aug; z_text] @ z_baseᵀ: two contiguous (n, n) blocks,
        # and the larger gradient product below runs on contiguous operands
        logits_t = torch.mm(zc, zb.T).mul_(scale).view(2, n, n)
        w = multiscale_weight
        ii_pos, xt_pos = positives(n, same_text, same_place, base.device)
        losses, g_t = info_nce_blocks(
            logits_t, scale, (w, 1.0 - w),
            tuple(None if p is None else p.T for p in (ii_pos, xt_pos)))
        grads: dict[Tensor, Tensor] = {}
        if m.log_scale.requires_grad:
            free = float(m.log_scale) <= math.log(100.0)  # clamp passes its bound
            grads[m.log_scale] = (g_t * logits_t).sum() * free
        g_t = g_t.view(2 * n, n)
        dz = torch.empty_like(z)
        torch.mm(g_t.T, zc, out=dz[:n])
        torch.mm(g_t, zb, out=dz[n:])
        dz.mul_(scale)
        if relational_weight:
            k = relational_rows if 0 < relational_rows < n else n
            l_rel, d_s = relational_grad(zb[:k], base[:k], relational_temperature)
            dz[:k].add_(d_s, alpha=relational_weight)

        d_tt = _unit_grad(dz[2 * n:], z[2 * n:], t_norm, NORM_EPS)
        grads[tp.weight], grads[tp.bias] = d_tt.T @ text, d_tt.sum(0)
        d_zp = _unit_grad(dz[: 2 * n], z[: 2 * n], z_norm, NORM_EPS)
        grads[p2.weight], grads[p2.bias] = d_zp.T @ q, d_zp.sum(0)
        d_u = torch.ops.aten.gelu_backward(d_zp @ p2.weight, u)
        grads[p1.weight], grads[p1.bias] = d_u.T @ hn, d_u.sum(0)
        d_h = _unit_grad(d_u @ p1.weight, hn, h_norm, NORM_EPS)
        grads[l2.weight], grads[l2.bias] = d_h.T @ h1, d_h.sum(0)
        grads[m.ae_gate] = (d_h * s).sum() * (g * (1 - g))
        d_a1 = torch.ops.aten.threshold_backward(d_h @ l2.weight, h1, 0.0)
        d_s = d_h * g
        grads[l1.weight], grads[l1.bias] = d_a1.T @ x, d_a1.sum(0)
        grads[short.weight], grads[short.bias] = d_s.T @ x, d_s.sum(0)
        for p in m.parameters():
            p.grad = grads[p]
    opt.step()
    total = w * losses[0] + (1.0 - w) * losses[1]
    if not relational_weight:
        return {"loss": total, "multiscale": losses[0], "crossmodal": losses[1]}
    return {"loss": total + relational_weight * l_rel, "multiscale": losses[0],
            "crossmodal": losses[1], "relational": l_rel}
