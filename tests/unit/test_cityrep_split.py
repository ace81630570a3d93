"""The CityRep split: the units' extent in 10 x 10 blocks, whole blocks held out per seed;
and the paired test against raw AlphaEarth, checked against the t formula by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from aether.evaluation import probes


def test_ten_by_ten_blocks_are_held_out_whole():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 3000, 2000), rng.uniform(0, 2000, 2000)
    bx = np.minimum((x - x.min()) / np.ptp(x) * 10, 9).astype(int)
    by = np.minimum((y - y.min()) / np.ptp(y) * 10, 9).astype(int)
    masks = []
    for seed in (42, 24, 7, 0, 100):
        test = probes.grid_block_split(x, y, 10, seed)
        for b in np.unique(bx * 10 + by):
            assert len(set(test[bx * 10 + by == b])) == 1
        assert 0.18 < test.mean() < 0.3
        masks.append(test)
    assert len({m.tobytes() for m in masks}) == 5  # seeds give different folds


def test_paired_test_is_the_paired_t():
    a, b = [0.52, 0.55, 0.49, 0.58, 0.51], [0.50, 0.50, 0.47, 0.55, 0.52]
    d = np.subtract(a, b)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    got = probes.paired_test(a, b)
    assert got["t"] == pytest.approx(t)
    assert got["p"] == pytest.approx(2 * stats.t.sf(abs(t), len(d) - 1))
    assert probes.paired_test([0.5], [0.4]) == {"t": None, "p": None}
    assert probes.paired_test([0.5, 0.6], [0.4, 0.5]) == {"t": None, "p": None}


def test_holm_is_the_step_down_adjustment():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    assert probes.holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert probes.holm([0.4, 0.9]) == pytest.approx([0.8, 0.9])
    assert probes.holm([0.7, 0.6]) == pytest.approx([1.0, 1.0])
    assert probes.holm([]) == []
