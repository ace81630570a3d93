"""The CityRep protocol (inwind0212/CityRepFull, ``block10_5seed_mlp1024``) as its code runs it.

Written from the protocol's definition so that, for the same units, vectors and labels, the
split indices are identical and the metrics agree to float rounding (tests/fixtures/cityrep
holds what their code gives): the units' lon/lat extent cut into 10 × 10 blocks, 20% of the
non-empty *blocks* to test and 10% of the remaining blocks to validation, both drawn by
scikit-learn's ``train_test_split`` with the fold's seed; row-L2 inputs; regression targets
z-scored over all units; an MLP (d → 1,024 → out) trained with Adam (lr 1e-3) in shuffled
batches of 512 for at most 100 epochs, stopped after 10 epochs without a better validation
loss and restored to its best; metrics on the test blocks, mean ± population std over seeds.
docs/cityrep.md lists what still differs from their pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from aether.errors import TableError

N_BLOCKS = 10
TEST_RATIO = 0.2
VAL_RATIO = 0.1
#: metric -> True when larger is better; the first of a kind is the headline (as in their tables)
METRICS: dict[str, dict[str, bool]] = {
    "classification": {"F1_macro": True, "precision_macro": True, "recall_macro": True},
    "distribution": {"KL": False, "L1": False, "Chebyshev": False},
    "regression": {"R2": True, "MSE": False, "MAE": False, "RMSE": False},
}


@dataclass(frozen=True)
class ProbeSettings:
    """Their ``predictor`` block."""

    hidden: int = 1024
    lr: float = 1e-3
    batch: int = 512
    epochs: int = 100
    patience: int = 10


@dataclass(frozen=True)
class Fold:
    """Unit indices of one seed's train / validation / test blocks (each sorted)."""

    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def block_ids(lon: np.ndarray, lat: np.ndarray, n: int = N_BLOCKS) -> np.ndarray:
    """Block of each unit: its extent (in the units' own lon/lat) cut into n × n, row-major."""
    def index(v: np.ndarray) -> np.ndarray:
        lo = float(np.nanmin(v))
        span = max(float(np.nanmax(v)) - lo, 1e-12)
        return np.clip(np.floor((v - lo) / span * n).astype(np.int64), 0, n - 1)

    return index(lat) * n + index(lon)


def block_fold(blocks: np.ndarray, seed: int, test_ratio: float = TEST_RATIO,
               val_ratio: float = VAL_RATIO) -> Fold:
    """Whole blocks to test, then whole blocks of the rest to validation, by the seed."""
    from sklearn.model_selection import train_test_split

    ids = np.unique(blocks)
    if len(ids) < 3:
        raise TableError(f"the units fill {len(ids)} of the {N_BLOCKS}x{N_BLOCKS} blocks",
                         "CityRep needs at least 3 non-empty blocks: use more units")
    train_b, test_b = train_test_split(ids, test_size=test_ratio, random_state=seed)
    train_b, val_b = train_test_split(train_b, test_size=val_ratio, random_state=seed)
    return Fold(seed, *(np.flatnonzero(np.isin(blocks, b)) for b in (train_b, val_b, test_b)))


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Row-L2 inputs; NaN becomes 0 first (their alignment's rule)."""
    x = np.nan_to_num(np.asarray(x, np.float32), nan=0.0)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.clip(norm, 1e-6, None)).astype(np.float32)


def targets(kind: str, y: np.ndarray) -> np.ndarray:
    """Targets as the probe sees them: class ids; rows renormalised to sum 1; regression
    values z-scored in float32 over *all* units (population std + 1e-6)."""
    if kind == "classification":
        return np.asarray(y, np.int64)
    v = np.asarray(y, np.float32)
    if kind == "distribution":
        return v / np.clip(v.sum(axis=1, keepdims=True), 1e-12, None)
    v = v.reshape(-1)
    mean, std = float(v.mean()), float(v.std() + 1e-6)
    return ((v - mean) / std).astype(np.float32).reshape(-1, 1)


def fit_predict(kind: str, x: np.ndarray, y: np.ndarray, fold: Fold, n_out: int,
                settings: ProbeSettings = ProbeSettings()) -> np.ndarray:
    """Train the probe on ``fold``; its raw test outputs (logits, or normalised values)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same sums in every run (tests/fixtures/cityrep)
    try:
        return _fit_predict(kind, x, y, fold, n_out, settings)
    finally:
        torch.set_num_threads(threads)


def _loss(kind: str) -> Callable[[Any, Any], Any]:
    import torch.nn.functional as F

    if kind == "classification":
        return F.cross_entropy
    if kind == "distribution":
        return lambda out, y: F.kl_div(F.log_softmax(out, dim=1), y, reduction="batchmean")
    return F.mse_loss


def _fit_predict(kind: str, x: np.ndarray, y: np.ndarray, fold: Fold, n_out: int,
                 cfg: ProbeSettings) -> np.ndarray:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(fold.seed)  # before the layers: it draws their initial weights
    net = nn.Sequential(nn.Linear(x.shape[1], cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, n_out))
    loss_fn = _loss(kind)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y)

    def loader(idx: np.ndarray, shuffle: bool) -> DataLoader[Any]:
        i = torch.from_numpy(np.asarray(idx, np.int64))
        return DataLoader(TensorDataset(xt[i], yt[i]), batch_size=cfg.batch, shuffle=shuffle)

    train, val = loader(fold.train, True), loader(fold.val, False) if len(fold.val) else None
    best, best_state, wait = float("inf"), None, 0
    for _ in range(cfg.epochs):
        net.train()
        for xb, yb in train:
            loss = loss_fn(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if val is None:
            continue
        net.eval()
        with torch.no_grad():  # the mean of the batch losses, as theirs
            v = sum(float(loss_fn(net(xb), yb).item()) for xb, yb in val) / max(1, len(val))
        if v + 1e-8 < best:
            best, wait = v, 0
            best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
        else:
            wait += 1
            if wait >= cfg.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():  # in batches, as theirs: a row's sums may depend on its batch
        return np.vstack([net(xb).numpy() for xb, _ in loader(fold.test, False)])


def predictions(kind: str, out: np.ndarray) -> np.ndarray:
    """Class ids, softmax distributions or values from the probe's raw outputs."""
    if kind == "classification":
        return out.argmax(axis=1)
    if kind == "distribution":
        z = np.exp(out - out.max(axis=1, keepdims=True))
        return z / np.clip(z.sum(axis=1, keepdims=True), 1e-12, None)
    return out.reshape(-1)


def score(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Their metrics of a kind (see METRICS) on predictions (see ``predictions``)."""
    from sklearn import metrics as m

    if kind == "classification":
        kw: dict[str, Any] = {"average": "macro", "zero_division": 0}
        return {"F1_macro": float(m.f1_score(y_true, y_pred, **kw)),
                "precision_macro": float(m.precision_score(y_true, y_pred, **kw)),
                "recall_macro": float(m.recall_score(y_true, y_pred, **kw))}
    if kind == "distribution":
        def norm(p: np.ndarray) -> np.ndarray:
            p = np.clip(np.asarray(p, np.float64), 1e-12, 1.0)
            return p / p.sum(axis=1, keepdims=True)

        t, p = norm(y_true), norm(y_pred)
        return {"KL": float(np.mean(np.sum(t * (np.log(t) - np.log(p)), axis=1))),
                "L1": float(np.mean(np.sum(np.abs(t - p), axis=1))),
                "Chebyshev": float(np.mean(np.max(np.abs(t - p), axis=1)))}
    t, p = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    mse = float(m.mean_squared_error(t, p))
    return {"R2": float(m.r2_score(t, p)), "MSE": mse,
            "MAE": float(m.mean_absolute_error(t, p)), "RMSE": float(np.sqrt(mse))}


def prior(kind: str, y_train: np.ndarray, n_test: int) -> np.ndarray:
    """The feature-free row (not in CityRep, kept as aether's floor): majority class, mean
    distribution, mean (normalised) value."""
    if kind == "classification":
        return np.full(n_test, np.bincount(y_train).argmax())
    return np.repeat(y_train.mean(0, keepdims=True), n_test, axis=0)


def probe_methods(kind: str, feats: dict[str, np.ndarray], y: np.ndarray, lon: np.ndarray,
                  lat: np.ndarray, seeds: tuple[int, ...], shuffle: bool, prior_name: str,
                  step: Callable[[], None]) -> dict[str, list[dict[str, float]]]:
    """Every method's per-seed metrics on the same folds (``step`` after each probe);
    ``shuffle`` permutes the training and validation labels within the fold."""
    y = targets(kind, y)
    x_all = {name: l2_rows(x) for name, x in feats.items()}
    n_out = int(y.max()) + 1 if kind == "classification" else y.shape[1]
    blocks = block_ids(lon, lat)
    scores: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        fold = block_fold(blocks, seed)
        y_fit = y.copy()
        if shuffle:
            fit = np.concatenate([fold.train, fold.val])
            y_fit[fit] = y[fit][np.random.default_rng(seed + 1).permutation(len(fit))]
        y_te = y[fold.test]
        scores.setdefault(prior_name, []).append(
            score(kind, y_te, prior(kind, y_fit[fold.train], len(fold.test))))
        for name, x in x_all.items():
            out = fit_predict(kind, x, y_fit, fold, n_out)
            scores.setdefault(name, []).append(score(kind, y_te, predictions(kind, out)))
            step()
    return scores
