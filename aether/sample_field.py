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

from aether.aef import N_BANDS
from aether.sample_layers import LAYERS, value_noise

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
    """The calibrated knobs: amplitudes of the signal, the shared direction and noise."""

    signal: float = 1.0
    shared: float = 2.5
    #: (lattice spacing in px, amplitude) of each noise octave
    noise: tuple[tuple[int, float], ...] = ((1, 0.3), (6, 0.2), (40, 0.3), (160, 1.5))
    hidden: int = 96
    noise_channels: int = 16
    gain: float = 2.5


class Field:
    """The fixed random map of one seed."""

    def __init__(self, seed: int, params: FieldParams | None = None) -> None:
        p = params or FieldParams()
        self.seed, self.params = seed, p
        rng = np.random.default_rng([int(seed), 0xAE7E])
        n_feat = len(LAYERS) * (1 + len(SIGMAS_PX))
        self.w1 = rng.normal(0, p.gain / np.sqrt(n_feat), (n_feat, p.hidden)).astype(np.float32)
        self.b1 = rng.normal(0, 1.0, p.hidden).astype(np.float32)
        self.w2 = rng.normal(0, 1 / np.sqrt(p.hidden), (p.hidden, N_BANDS)).astype(np.float32)
        self.noise_maps = [
            rng.normal(0, 1 / np.sqrt(p.noise_channels), (p.noise_channels, N_BANDS)
                       ).astype(np.float32) for _ in p.noise]
        shared = rng.normal(0, 1, N_BANDS)
        self.shared = (shared / np.linalg.norm(shared)).astype(np.float32)

    def features(self, layers: np.ndarray, halo: int) -> np.ndarray:
        """Layers and their blurs, cropped by ``halo``: ``(rows, cols, n_features)``."""
        crop = (slice(halo, layers.shape[1] - halo), slice(halo, layers.shape[2] - halo))
        feats = [layers[:, crop[0], crop[1]]]
        for sigma in SIGMAS_PX:
            blurred = np.stack([blur(layer, sigma) for layer in layers])
            feats.append(blurred[:, crop[0], crop[1]])
        return np.moveaxis(np.concatenate(feats), 0, -1)

    def vectors(self, layers: np.ndarray, *, halo: int, row0: int, col0: int) -> np.ndarray:
        """Unit vectors ``(rows, cols, 64)`` float32 for the window inside ``halo``.

        ``row0``/``col0`` are the global pixel indices of the window's first pixel; they key
        the noise, so adjacent windows join without seams.
        """
        p = self.params
        f = self.features(np.asarray(layers, np.float32), halo)
        rows, cols = f.shape[:2]
        hidden = np.tanh(f.reshape(-1, f.shape[-1]) @ self.w1 + self.b1)
        v = (hidden @ self.w2).reshape(rows, cols, N_BANDS) * np.float32(p.signal)
        v += np.float32(p.shared) * self.shared
        for k, ((spacing, amp), m) in enumerate(zip(p.noise, self.noise_maps, strict=True)):
            key = (self.seed * 1_000_003 + k) * 0x9E3779B1
            noise = value_noise(key, spacing, row0, col0, rows, cols, p.noise_channels)
            v += np.float32(amp * np.sqrt(3.0)) * (noise @ m)  # uniform noise has var 1/3
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
        return v
