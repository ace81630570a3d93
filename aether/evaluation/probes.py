"""Frozen-embedding probes and their metrics (the CaLLiPer protocol the method is judged by).

A probe is a linear layer or a small MLP (d → 64 → C) on standardised frozen features,
trained with Adam (lr 1e-3, batch 128) for at most 300 epochs with early stopping (patience
10) on a validation tenth of the training units. Classification uses cross-entropy,
distributions KL(true ‖ softmax), regression mean squared error on a standardised target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

KINDS = ("classification", "distribution", "regression")
PROBES = ("linear", "mlp")
SEEDS: tuple[int, ...] = (42, 24, 7, 0, 100)
EPS = 1e-8
#: metric -> True when larger is better; the first metric of a kind is its headline.
METRICS: dict[str, dict[str, bool]] = {
    "classification": {"macro_f1": True, "accuracy": True},
    "distribution": {"kl": False, "l1": False},
    "regression": {"r2": True},
}


@dataclass(frozen=True)
class ProbeSettings:
    lr: float = 1e-3
    batch: int = 128
    max_epochs: int = 300
    patience: int = 10
    val_fraction: float = 0.1
    hidden: int = 64


def fit_predict(
    kind: str,
    probe: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    seed: int,
    settings: ProbeSettings = ProbeSettings(),
    n_classes: int | None = None,
) -> np.ndarray:
    """Train one probe; return test predictions (class ids, distributions or values)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: thread hand-offs cost more than they save
    try:
        return _fit_predict(kind, probe, x_train, y_train, x_test, seed, settings, n_classes)
    finally:
        torch.set_num_threads(threads)


def _fit_predict(kind: str, probe: str, x_train: np.ndarray, y_train: np.ndarray,
                 x_test: np.ndarray, seed: int, settings: ProbeSettings,
                 n_classes: int | None) -> np.ndarray:
    import torch
    from torch import nn

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.from_numpy(((x_train - mu) / sd).astype(np.float32))
    xs = torch.from_numpy(((x_test - mu) / sd).astype(np.float32))
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    if kind == "classification":
        n_out = n_classes or int(y_train.max()) + 1
        yt = torch.from_numpy(y_train.astype(np.int64))
        loss_fn = nn.CrossEntropyLoss()
    elif kind == "distribution":
        n_out = y_train.shape[1]
        yt = torch.from_numpy(y_train.astype(np.float32))

        def _kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return (target * (torch.log(target + EPS) - logits.log_softmax(1))).sum(1).mean()

        loss_fn = _kl
    else:
        n_out = 1
        y_mu, y_sd = float(y_train.mean()), float(y_train.std() + 1e-9)
        yt = torch.from_numpy(((y_train - y_mu) / y_sd).astype(np.float32)[:, None])
        loss_fn = nn.MSELoss()
    d = xt.shape[1]
    net: nn.Module = (nn.Linear(d, n_out) if probe == "linear" else nn.Sequential(
        nn.Linear(d, settings.hidden), nn.ReLU(), nn.Linear(settings.hidden, n_out)))
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    order = rng.permutation(len(xt))
    n_val = max(1, round(settings.val_fraction * len(xt)))
    val, tr = order[:n_val], order[n_val:]
    best, best_state, bad = np.inf, None, 0
    for _ in range(settings.max_epochs):
        net.train()
        perm = tr[rng.permutation(len(tr))]
        for s in range(0, len(perm), settings.batch):
            b = torch.from_numpy(perm[s:s + settings.batch])
            opt.zero_grad()
            loss_fn(net(xt[b]), yt[b]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            v = float(loss_fn(net(xt[val]), yt[val]))
        if v < best - 1e-6:
            best, bad = v, 0
            best_state = {k: t.clone() for k, t in net.state_dict().items()}
        else:
            bad += 1
            if bad >= settings.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    with torch.no_grad():
        out = net(xs)
    if kind == "classification":
        return out.argmax(1).numpy()
    if kind == "distribution":
        return out.softmax(1).numpy()
    return out[:, 0].numpy() * y_sd + y_mu


def prior_predict(kind: str, y_train: np.ndarray, n_test: int) -> np.ndarray:
    """The feature-free baseline: majority class, mean distribution, mean value."""
    if kind == "classification":
        return np.full(n_test, np.bincount(y_train).argmax())
    if kind == "distribution":
        return np.repeat(y_train.mean(0, keepdims=True), n_test, axis=0)
    return np.full(n_test, float(y_train.mean()))


def score(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """The metrics of a kind (see METRICS)."""
    if kind == "classification":
        from sklearn.metrics import accuracy_score, f1_score

        return {"macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
                "accuracy": float(accuracy_score(y_true, y_pred))}
    if kind == "distribution":
        p, q = y_true, np.clip(y_pred, EPS, None)
        kl = np.where(p > 0, p * (np.log(np.clip(p, EPS, None)) - np.log(q)), 0.0).sum(1)
        return {"kl": float(kl.mean()), "l1": float(np.abs(p - y_pred).sum(1).mean())}
    ss_res = float(((y_true - y_pred) ** 2).sum())
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    return {"r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0}


def independent_chance(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Expected macro-F1 / accuracy of a predictor with the same predicted class shares as
    ``y_pred`` but independent of the truth: what a probe that learnt nothing scores."""
    classes = np.union1d(np.unique(y_true), np.unique(y_pred))
    p = np.array([(y_true == c).mean() for c in classes])
    q = np.array([(y_pred == c).mean() for c in classes])
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + q > 0, 2 * p * q / (p + q), 0.0)
    # like sklearn's macro average: over the labels seen in the truth or the predictions
    return {"macro_f1": float(f1.mean()), "accuracy": float((p * q).sum())}


def random_split(n: int, seed: int, test_fraction: float = 0.2) -> np.ndarray:
    """Boolean test mask of a random split."""
    rng = np.random.default_rng(seed)
    test = np.zeros(n, bool)
    test[rng.permutation(n)[: round(test_fraction * n)]] = True
    return test


def block_split(x: np.ndarray, y: np.ndarray, block_m: float, seed: int,
                test_fraction: float = 0.2) -> np.ndarray:
    """Boolean test mask of a spatial-block split: whole square blocks go to the test side
    until it holds about ``test_fraction`` of the units (so neighbours cannot leak)."""
    bx = np.floor(x / block_m).astype(np.int64)
    by = np.floor(y / block_m).astype(np.int64)
    return _blocks_to_test(bx, by, seed, test_fraction)


def grid_block_split(x: np.ndarray, y: np.ndarray, n: int, seed: int,
                     test_fraction: float = 0.2) -> np.ndarray:
    """Like ``block_split`` with the units' extent cut into n × n blocks (CityRep: 10 × 10)."""
    def index(v: np.ndarray) -> np.ndarray:
        span = float(v.max() - v.min()) or 1.0
        return np.clip(np.floor((v - v.min()) / span * n), 0, n - 1).astype(np.int64)

    return _blocks_to_test(index(x), index(y), seed, test_fraction)


def _blocks_to_test(bx: np.ndarray, by: np.ndarray, seed: int, test_fraction: float
                    ) -> np.ndarray:
    """Whole blocks, in a seeded random order, to the test side until it holds
    ``test_fraction`` of the units."""
    blocks, inverse = np.unique(np.stack([bx, by], 1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    sizes = np.bincount(inverse, minlength=len(blocks))
    rng = np.random.default_rng(seed)
    chosen, total = [], 0
    for b in rng.permutation(len(blocks)):
        if total >= test_fraction * len(bx):
            break
        chosen.append(b)
        total += sizes[b]
    return np.isin(inverse, chosen)


def paired_test(values: list[float], baseline: list[float]) -> dict[str, float | None]:
    """Paired t-test of a method against the baseline over the same seeds and folds; None
    where it is undefined (one seed, or identical differences)."""
    from scipy import stats

    d = np.asarray(values, float) - np.asarray(baseline, float)
    if len(d) < 2 or np.allclose(d, d[0]):
        return {"t": None, "p": None}
    res = stats.ttest_rel(values, baseline)
    return {"t": float(res.statistic), "p": float(res.pvalue)}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given): the k-th
    smallest is multiplied by (m - k + 1), kept monotone and capped at 1."""
    order = np.argsort(p_values, kind="stable")
    m, out, running = len(p_values), [0.0] * len(p_values), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * float(p_values[i])))
        out[i] = running
    return out
