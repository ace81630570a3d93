"""PURE's distance-ring batches: each batch drawn around one anchor POI, near and far.

After PURE (inwind0212/PURE @ fddee25, code/spatial_sampling.py ``JointGridRingBatchSampler``
with code/configs/train_pure.yaml): random batches of a city hold mostly far-apart pairs, so
the contrastive loss rarely has to tell neighbours apart; a ring batch takes fixed shares
from square rings around an anchor (Chebyshev distance: ring k holds the POIs with
``half_side[k-1] < d <= half_side[k]``, ring 0 from just above 0, so not the anchor's own
spot) and the last share from beyond the outermost ring. A ring with too few unused POIs
passes its shortfall outward, ring by ring, then beyond, then to any unused POI (PURE's
``outward_then_global``). A POI appears at most once in a batch; an epoch is
``n // batch_size`` batches, each from a fresh anchor, so across batches POIs repeat or are
missed (PURE's epoch). Written from that description; no code of theirs is used.

Left out, as they do nothing on one city (docs/training.md says what differs): PURE's
anchor weighting (1,000 km cells weighted by √count, then regions weighted by hand), its
"clustered" draw of the beyond share, and its 100 m pixel grid (distances here are metres).
"""

from __future__ import annotations

import numpy as np

from aether.ml.config import TrainConfig


def bin_counts(size: int, shares: tuple[float, ...]) -> list[int]:
    """Rows per bin: each share's floor, the rest one each to the largest remainders (ties to
    the inner bin)."""
    raw = np.asarray(shares, dtype=np.float64) * size
    counts = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - counts), kind="stable")[: size - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


def ring_of(d: np.ndarray, half_sides: tuple[float, ...]) -> np.ndarray:
    """The bin of each Chebyshev distance: 0.. for the rings, ``len(half_sides)`` beyond them,
    -1 at distance 0 (the anchor's own spot, in no ring)."""
    out = np.searchsorted(np.asarray(half_sides), d, side="left")
    return np.where(d > 0, out, -1)


def ring_epoch(xy: np.ndarray, rows: np.ndarray, cfg: TrainConfig, epoch: int
               ) -> list[tuple[int, np.ndarray]]:
    """One epoch's (anchor, batch) pairs over the table rows ``rows`` with positions ``xy``
    (metres, a function of seed and epoch): ``max(1, n // batch_size)`` batches of
    ``min(batch_size, n)`` distinct rows each, in shuffled order."""
    rng = np.random.default_rng([cfg.seed, epoch])
    n = len(rows)
    size = min(cfg.batch_size, n)
    counts = bin_counts(size, cfg.ring_shares)
    pos = xy[rows]
    out = []
    for _ in range(max(1, n // cfg.batch_size)):
        a = int(rng.integers(n))
        d = np.abs(pos - pos[a]).max(1)
        ring = ring_of(d, cfg.ring_half_sides_m)
        free = np.ones(n, dtype=bool)
        parts = []
        for b, want in enumerate(counts):
            # this bin, then the ones further out, then any POI left
            for source in (*(ring == j for j in range(b, len(counts))), np.ones(n, bool)):
                pool = np.flatnonzero(source & free)
                take = rng.choice(pool, size=min(want, len(pool)), replace=False)
                free[take] = False
                parts.append(take)
                want -= len(take)
                if not want:
                    break
        batch = np.concatenate(parts)
        rng.shuffle(batch)
        out.append((int(rows[a]), rows[batch]))
    return out
