"""The AETHER heads and losses (torch only, no I/O).

AE branch, shared by the base and the augmented view: an MLP with a gated linear shortcut,
L2-normalised, then a projector, L2-normalised again. Text branch: one linear layer over a
frozen sentence embedding, L2-normalised. The loss is symmetric in-batch InfoNCE, cross-modal
(AE base view vs text) plus multi-scale (base vs augmented view). The paper preset uses the
method's one-positive targets; the default preset also counts pairs with the same text or at
the same location as positives, so true duplicates are not pushed apart.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AetherModel(nn.Module):
    """Two projection heads into a shared 128-d space (173,057 weights with the defaults)."""

    def __init__(
        self,
        ae_dim: int = 64,
        text_dim: int = 384,
        hidden_dim: int = 256,
        out_dim: int = 128,
        gate_init: float = -4.0,
        temperature: float = 0.07,
        learn_temperature: bool = False,
        normalize_input: bool = False,
    ) -> None:
        super().__init__()
        self.normalize_input = normalize_input
        self.ae_mlp = nn.Sequential(
            nn.Linear(ae_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim)
        )
        self.ae_shortcut = nn.Linear(ae_dim, out_dim)
        self.ae_gate = nn.Parameter(torch.tensor(float(gate_init)))
        self.ae_proj = nn.Sequential(
            nn.Linear(out_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )
        self.text_proj = nn.Linear(text_dim, out_dim)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def encode_ae(self, x: Tensor) -> Tensor:
        """(N, 64) AlphaEarth means -> (N, out_dim) unit vectors (both stages).

        With ``normalize_input`` each mean is L2-normalised first (the reference's input), in
        the model so that inference sees what training saw.
        """
        if self.normalize_input:
            x = F.normalize(x, dim=-1, eps=1e-6)
        h = self.ae_mlp(x) + torch.sigmoid(self.ae_gate) * self.ae_shortcut(x)
        return F.normalize(self.ae_proj(F.normalize(h, dim=-1)), dim=-1)

    def encode_text(self, t: Tensor) -> Tensor:
        """(N, text_dim) frozen text embeddings -> (N, out_dim) unit vectors."""
        return F.normalize(self.text_proj(t), dim=-1)

    def logit_scale(self) -> Tensor:
        """1/τ, capped at 100 as in CLIP so a learnt temperature cannot collapse."""
        return self.log_scale.clamp(max=math.log(100.0)).exp()


def info_nce(
    a: Tensor, b: Tensor, scale: Tensor | float, positives: Tensor | None = None
) -> Tensor:
    """Symmetric InfoNCE between rows of ``a`` and ``b`` (unit vectors).

    ``positives`` (N, N, bool, diagonal true) spreads each row's target evenly over all its
    positives; without it the target is the diagonal, as in the method.
    """
    return info_nce_logits(scale * (a @ b.T), positives)


def info_nce_logits(logits: Tensor, positives: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE of an (N, N) logit matrix (rows and columns both as queries)."""
    if positives is None:
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    p = positives.to(logits.dtype)
    row = -(p / p.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    col = -(p.T / p.T.sum(1, keepdim=True) * F.log_softmax(logits.T, 1)).sum(1).mean()
    return 0.5 * (row + col)


def positives(n: int, same_text: Tensor | None, same_place: Tensor | None,
              device: torch.device | None = None) -> tuple[Tensor | None, Tensor | None]:
    """The (multi-scale, cross-modal) positive masks of a batch, None for diagonal targets.

    The same place is a positive for both losses, the same text for the cross-modal one.
    """
    if same_text is None and same_place is None:
        return None, None
    eye = torch.eye(n, dtype=torch.bool, device=device)
    ii = None if same_place is None else same_place | eye
    xt = eye | (eye if same_text is None else same_text) | (
        eye if same_place is None else same_place)
    return ii, xt


def aether_losses(
    model: AetherModel,
    base: Tensor,
    aug: Tensor,
    text: Tensor,
    *,
    multiscale_weight: float = 0.2,
    same_text: Tensor | None = None,
    same_place: Tensor | None = None,
    relational_weight: float = 0.0,
    relational_temperature: float = 0.1,
    relational_rows: int = 0,
) -> dict[str, Tensor]:
    """The training objective: ``w·L_multiscale + (1-w)·L_crossmodal``, plus
    ``relational_weight·L_relational`` (PURE's ``relational_loss`` of the base view against
    the base input, over the first ``relational_rows`` rows; 0: all) when that weight is
    not 0.

    ``same_text`` / ``same_place`` are (N, N) bool masks of false negatives to treat as
    positives (None: the method's diagonal targets). Both views go through the AE head in one
    forward, and both losses' similarities come from one matmul ``z_base @ [z_aug; z_text]ᵀ``.
    This is the definition; training runs ``step.train_step``, its backward written out and
    tested against autograd of this.
    """
    n = len(base)
    z_ae = model.encode_ae(torch.cat([base, aug]))
    z_base, z_aug = z_ae[:n], z_ae[n:]
    logits = model.logit_scale() * (z_base @ torch.cat([z_aug, model.encode_text(text)]).T)
    ii_pos, xt_pos = positives(n, same_text, same_place, base.device)
    l_ii = info_nce_logits(logits[:, :n], ii_pos)
    l_xt = info_nce_logits(logits[:, n:], xt_pos)
    total = multiscale_weight * l_ii + (1.0 - multiscale_weight) * l_xt
    if not relational_weight:
        return {"loss": total, "multiscale": l_ii, "crossmodal": l_xt}
    k = relational_rows if 0 < relational_rows < n else n
    l_rel = relational_loss(z_base[:k], base[:k], relational_temperature)
    return {"loss": total + relational_weight * l_rel, "multiscale": l_ii, "crossmodal": l_xt,
            "relational": l_rel}


def relational_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """PURE's relational distillation (inwind0212/PURE @ fddee25,
    code/training/train_global_aether.py, ``relational_preservation_loss``): each row's
    softmax over its cosines to the other rows of the batch, divided by ``temperature``, in
    the frozen ``teacher`` (the AlphaEarth input) and in the ``student`` (the base view's
    vectors); the loss is KL(teacher ‖ student) summed over a row, averaged over the rows.
    It keeps the head from reordering places that AlphaEarth finds alike; the teacher gets
    no gradient. A row is not its own neighbour (the diagonal is left out of both)."""
    off = ~torch.eye(len(student), dtype=torch.bool, device=student.device)

    def log_p(v: Tensor) -> Tensor:
        u = F.normalize(v, dim=-1)
        return F.log_softmax((u @ u.T / temperature).masked_fill(~off, -math.inf), 1)

    ls, lt = log_p(student), log_p(teacher.detach())
    return torch.where(off, lt.exp() * (lt - ls), 0.0).sum() / len(student)


@torch.no_grad()
def retrieval_ranks(
    queries: Tensor, keys: Tensor, groups: Tensor | None = None, chunk: int = 2048
) -> Tensor:
    """Rank (1 = best) of key i for query i by cosine, in chunks so N×N never materialises.

    With ``groups`` any key of query i's group counts as a hit (e.g. the same text). Ties with
    the true key count in its favour (identical vectors are indistinguishable).
    """
    ranks = torch.empty(len(queries), dtype=torch.long)
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        sims = q @ keys.T
        if groups is None:
            true = (q * keys[s:s + chunk]).sum(1, keepdim=True)
        else:
            hit = groups[s:s + chunk, None] == groups[None, :]
            true = sims.masked_fill(~hit, -2.0).amax(1, keepdim=True)
        ranks[s:s + chunk] = (sims > true + 1e-6).sum(1).cpu() + 1
    return ranks


def recall_at(ranks: Tensor, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """recall@k and mean reciprocal rank from ranks."""
    out = {f"recall@{k}": float((ranks <= k).float().mean()) for k in ks}
    out["mrr"] = float((1.0 / ranks.float()).mean())
    return out
