"""aether's CityRep protocol against the authors' own code: tests/fixtures/cityrep.json was
written by running inwind0212/CityRepFull (tests/fixtures/make_cityrep.py names the commit)
on fixed units, vectors and labels. The folds must be the same units, the metrics the same
numbers (exactly, with the library versions it was made with), the spread the population
std."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import require

from aether.evaluation import cityrep

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "cityrep.json").read_text())
INPUTS = FIXTURE["inputs"]
KINDS = tuple(FIXTURE["results"])


def _tolerance() -> float:
    """Exact with the library versions the fixture was made with (so a last-bit change of
    order shows); float rounding (1e-6) with others, whose kernels may sum differently."""
    import sklearn
    import torch

    made = FIXTURE["versions"]
    same = (made["torch"], made["numpy"], made["sklearn"]) == (
        torch.__version__, np.__version__, sklearn.__version__)
    return 0.0 if same else 1e-6


def _fold(seed: int) -> cityrep.Fold:
    blocks = cityrep.block_ids(np.asarray(INPUTS["lon"]), np.asarray(INPUTS["lat"]))
    return cityrep.block_fold(blocks, seed)


def test_the_folds_are_theirs_unit_for_unit():
    assert FIXTURE["source"].startswith("inwind0212/CityRepFull@")
    for want in FIXTURE["results"]["classification"]["folds"]:
        got = _fold(want["seed"])
        for part in ("train", "val", "test"):
            assert getattr(got, part).tolist() == want[part], (want["seed"], part)
    # the folds do not depend on the task
    assert len({json.dumps(r["folds"]) for r in FIXTURE["results"].values()}) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_the_probe_and_metrics_are_theirs(kind):
    require("torch")
    x = cityrep.l2_rows(np.asarray(INPUTS["vectors"]))
    y = cityrep.targets(kind, np.asarray(INPUTS["labels"][kind]))
    n_out = int(y.max()) + 1 if kind == "classification" else y.shape[1]
    theirs = FIXTURE["results"][kind]
    tol = _tolerance()
    values: dict[str, list[float]] = {}
    for want in theirs["per_seed"]:
        fold = _fold(want["seed"])
        out = cityrep.fit_predict(kind, x, y, fold, n_out)
        got = cityrep.score(kind, y[fold.test], cityrep.predictions(kind, out))
        for m, v in got.items():
            assert abs(v - want[m]) <= tol, (want["seed"], m, v, want[m])
            values.setdefault(m, []).append(v)
    for m, vs in values.items():
        assert np.mean(vs) == pytest.approx(theirs["mean"][m], abs=max(tol, 1e-12))
        assert np.std(vs) == pytest.approx(theirs["std"][m], abs=max(tol, 1e-12))  # population
