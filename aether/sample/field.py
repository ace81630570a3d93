"""Physical layers → AlphaEarth-like 64-d unit vectors (the synthetic embedding field).

Per pixel: the layers and blurred copies of them at a few scales (neighbourhood context)
pass through a fixed random non-linear map to 64-d; spatially correlated noise (hashed
value noise at several scales, so any window of a grid is reproducible on its own) and a
shared direction are added; the sum is normalised to unit length. Everything random is
drawn from the seed, so one seed gives identical bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aether.core.aef import N_BANDS
from aether.sample.layers import LAYERS, value_noise

#: Blur scales (pixels, ~Gaussian sigma) of the neighbourhood copies of each layer.
SIGMAS_PX: tuple[float, ...] = (2.0, 6.0, 18.0, 45.0)
BOX_PASSES = 3  # three box filters ≈ a Gaussian, at a cost independent of its width


def _box_width(sigma: float) -> int:
    """Odd box width whose ``BOX_PASSES``-fold repeat has variance ~sigma²."""
    return int(np.sqrt(12 * sigma**2 / BOX_PASSES + 1)) // 2 * 2 + 1


#: Context a window needs around it so its blurs equal those of the whole extent.
HALO_PX = BOX_PASSES * (_box_width(max(SIGMAS_PX)) // 2)


def blur(layer: np.ndarray, sigma: float) -> np.ndarray:
    """Near-Gaussian blur with zeros outside (nothing mapped beyond the data)."""
    from scipy.ndimage import uniform_filter

    out = layer
    for _ in range(BOX_PASSES):
        out = uniform_filter(out, _box_width(sigma), mode="constant")
    return out


@dataclass(frozen=True)
class FieldParams:
    """The calibrated knobs: amplitudes of the signal, the shared direction and noise.

    Fitted so that H3-r8 means of a procedural city fall in the range of real AlphaEarth
    H3-r8 means (``stats.AREA_TOLERANCE``, tested; docs/sample.md): neighbouring cells agree
    (~0.9), cells across a town differ (random pairs ~0.6), area means keep norm ~0.9.
    Context (the wide blurs) weighs most and the 600 m octave is faint, or neighbouring
    cells differ more than real ones; the 200 m octave lowers area norms while neighbouring
    pixels still agree (~0.95), which the 10 m octave sets.
    """

    signal: float = 1.0
    shared: float = 0.6
    #: (lattice spacing in px, amplitude) of each noise octave
    noise: tuple[tuple[int, float], ...] = ((1, 0.15), (20, 0.5), (60, 0.05), (400, 0.7))
    hidden: int = 64
    noise_channels: int = 8
    gain: float = 5.0
    bias: float = 0.5
    #: weight of the raw layers and of each blur scale in the non-linear map
    scale_weights: tuple[float, ...] = (0.3, 0.4, 0.6, 1.5, 2.5)


class Field:
    """The fixed random map of one seed."""

    def __init__(self, seed: int, params: FieldParams | None = None) -> None:
        p = params or FieldParams()
        self.seed, self.params = seed, p
        rng = np.random.default_rng([int(seed), 0xAE7E])
        n_feat = len(LAYERS) * (1 + len(SIGMAS_PX))
        scale = np.repeat(np.asarray(p.scale_weights, np.float64), len(LAYERS))[:, None]
        self.w1 = (rng.normal(0, p.gain / np.sqrt(n_feat), (n_feat, p.hidden)) * scale
                   ).astype(np.float32)
        self.b1 = rng.normal(0, p.bias, p.hidden).astype(np.float32)
        self.w2 = (rng.normal(0, 1 / np.sqrt(p.hidden), (p.hidden, N_BANDS)) * p.signal
                   ).astype(np.float32)
        # uniform noise has variance 1/3: sqrt(3) makes each octave's variance amp²
        self.w_noise = np.concatenate([
            rng.normal(0, amp * np.sqrt(3.0 / p.noise_channels), (p.noise_channels, N_BANDS))
            for _, amp in p.noise]).astype(np.float32)
        shared = rng.normal(0, 1, N_BANDS)
        self.shared = (p.shared * shared / np.linalg.norm(shared)).astype(np.float32)

    def features(self, layers: np.ndarray, halo: int) -> np.ndarray:
        """Layers and their blurs inside ``halo``: ``(n_features, rows, cols)``.

        Each blur only reads the context it needs, so a wide halo costs little.
        """
        n, h, w = layers.shape
        rows, cols = h - 2 * halo, w - 2 * halo
        out = np.empty((n * (1 + len(SIGMAS_PX)), rows, cols), np.float32)
        out[:n] = layers[:, halo:halo + rows, halo:halo + cols]
        for k, sigma in enumerate(SIGMAS_PX, start=1):
            extra = max(halo - BOX_PASSES * (_box_width(sigma) // 2), 0)
            inner = halo - extra
            for i, layer in enumerate(layers[:, extra:h - extra, extra:w - extra]):
                out[k * n + i] = blur(layer, sigma)[inner:inner + rows, inner:inner + cols]
        return out

    def vectors(self, layers: np.ndarray, *, halo: int, row0: int, col0: int) -> np.ndarray:
        """Unit vectors ``(rows, cols, 64)`` float32 for the window inside ``halo``.

        ``row0``/``col0`` are the global pixel indices of the window's first pixel; they key
        the noise, so adjacent windows join without seams.
        """
        p = self.params
        f = self.features(np.asarray(layers, np.float32), halo)
        rows, cols = f.shape[1:]
        hidden = f.reshape(len(f), -1).T @ self.w1  # a transposed view: BLAS, no copy
        hidden += self.b1
        np.tanh(hidden, out=hidden)
        v = hidden @ self.w2
        v += self.shared
        c = p.noise_channels
        noise = np.empty((rows * cols, c * len(p.noise)), np.float32)
        for k, (spacing, _) in enumerate(p.noise):
            key = (self.seed * 1_000_003 + k) * 0x9E3779B1
            noise[:, k * c:(k + 1) * c] = value_noise(
                key, spacing, row0, col0, rows, cols, c).reshape(-1, c)
        v += noise @ self.w_noise
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
        return v.reshape(rows, cols, N_BANDS)
