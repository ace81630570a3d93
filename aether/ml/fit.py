"""The training loop: batches, AdamW with a per-batch cosine schedule, metrics, checkpoints.

Whole tables live as tensors and batches are index slices (no per-row ``Dataset``). Each
epoch's order comes from a generator seeded by (seed, epoch), so a resumed run repeats the
batches of an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aether.errors import ModelError
from aether.io.tables import write_json
from aether.ml.checkpoints import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    WEIGHTS_FILE,
    build_model,
    load_checkpoint,
    save_checkpoint,
    save_weights,
    write_metrics,
)
from aether.ml.config import RunOptions, TrainConfig
from aether.ml.data import Pairs

if TYPE_CHECKING:
    import torch

    from aether.ml.heads import AetherModel

log = logging.getLogger(__name__)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffled order of the training rows in one epoch (a function of seed and epoch)."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batches(order: torch.Tensor, cfg: TrainConfig) -> list[torch.Tensor]:
    """The batches of one epoch: near-equal ones, or exactly ``batch_size`` with the rest dropped.

    With ``drop_last`` and fewer rows than a batch, all rows form one batch.
    """
    import torch

    if cfg.batching == "drop_last":
        k = max(1, len(order) // cfg.batch_size)
        size = min(cfg.batch_size, len(order))
        return list(torch.split(order[: k * size], size))
    return list(torch.tensor_split(order, math.ceil(len(order) / cfg.batch_size)))


def steps_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    if cfg.batching == "drop_last" or cfg.batch_sampler == "rings":  # rings: PURE's epoch
        return max(1, n_train // cfg.batch_size)
    return math.ceil(n_train / cfg.batch_size)


def _masks(t: dict[str, torch.Tensor], idx: torch.Tensor, cfg: TrainConfig
           ) -> dict[str, torch.Tensor | None]:
    """False-negative masks for one batch (None where the preset keeps diagonal targets)."""
    import torch

    same_text = same_place = None
    if cfg.same_text_positive:
        ti = t["text_id"][idx]
        same_text = ti[:, None] == ti[None, :]
    if cfg.same_place_m > 0:
        xy = t["xy"][idx]
        same_place = torch.cdist(xy, xy) <= cfg.same_place_m
    return {"same_text": same_text, "same_place": same_place}


def evaluate_retrieval(model: AetherModel, t: dict[str, torch.Tensor], idx: torch.Tensor
                       ) -> dict[str, float]:
    """Text -> POI retrieval among the POIs of a split: the POI itself (chance recall@k is
    k / n) and, as ``text_*``, any POI with the same text (what a text query asks for)."""
    import torch

    from aether.ml.heads import recall_at, retrieval_ranks

    model.eval()
    with torch.no_grad():
        z_ae = model.encode_ae(t["base"][idx])
        z_text = model.encode_text(t["text_vectors"][t["text_id"][idx]])
        out = recall_at(retrieval_ranks(z_text, z_ae))
        same = recall_at(retrieval_ranks(z_text, z_ae, t["text_id"][idx]))
    model.train()
    return {**out, **{f"text_{k}": v for k, v in same.items()}}


def optimiser(model: AetherModel, cfg: TrainConfig, total_steps: int
              ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over every weight (the temperature undecayed) and a per-batch cosine schedule
    from ``lr`` to ``lr_min``. ``fused``: one kernel over all weights (0.17 ms a step against
    0.55 for ``foreach``), equal to the per-tensor loop within an ulp."""
    import torch

    decay = [p for n, p in model.named_parameters() if n != "log_scale"]
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if cfg.learn_temperature:
        groups.append({"params": [model.log_scale], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    floor = cfg.lr_min_ratio
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: floor + (1 - floor) * 0.5 * (
        1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    return opt, sched


def _step(model: AetherModel, opt: torch.optim.Optimizer, t: dict[str, torch.Tensor],
          idx: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    from aether.ml.step import train_step

    rows = t["text_id"].index_select(0, idx)  # index_select: 4x faster than [idx] here
    return train_step(model, opt, t["base"].index_select(0, idx), t["aug"].index_select(0, idx),
                      t["text_vectors"].index_select(0, rows),
                      multiscale_weight=cfg.multiscale_weight, **_masks(t, idx, cfg),
                      relational_weight=cfg.relational_weight,
                      relational_temperature=cfg.relational_temperature,
                      relational_rows=cfg.relational_sample)


def pick_threads(model: AetherModel, cfg: TrainConfig, t: dict[str, torch.Tensor],
                 idx: torch.Tensor, candidates: tuple[int, ...] = (1, 2), rounds: int = 3) -> int:
    """The fastest thread count for real steps on copies of the model (the run itself is
    untouched): two threads win on an idle machine and lose badly on a loaded one. The
    candidates take turns, two steps a round, and each keeps its fastest step, so a burst
    of other load does not decide the run's threads."""
    import torch

    trials = {}
    for n in candidates:
        torch.set_num_threads(n)
        m = copy.deepcopy(model)
        opt, _ = optimiser(m, cfg, 1)
        _step(m, opt, t, idx, cfg)  # warm-up
        trials[n] = (m, opt)
    fastest = dict.fromkeys(candidates, math.inf)
    for _ in range(rounds):
        for n, (m, opt) in trials.items():
            torch.set_num_threads(n)
            for _ in range(2):
                t0 = time.perf_counter()
                _step(m, opt, t, idx, cfg)
                fastest[n] = min(fastest[n], time.perf_counter() - t0)
    best = min(candidates, key=fastest.__getitem__)
    log.debug("threads: %d (%.1f ms a step)", best, 1000 * fastest[best])
    return best


@dataclass(frozen=True)
class FitJob:
    """What one run fits: its build folder, its run config (hyper-parameters, architecture,
    data checksums and ``config_hash``: the one statement of what it learns), the pairs, their
    split labels, and whether it starts ``fresh`` or ``resume``s from the checkpoint."""

    work: Path
    config: dict[str, Any]
    pairs: Pairs
    labels: np.ndarray
    state: str

    @property
    def cfg(self) -> TrainConfig:
        """The hyper-parameters, read back from the run config."""
        return TrainConfig(**self.config["hyperparameters"])


def fit(job: FitJob, options: RunOptions) -> None:
    """Train from a fresh start or the last checkpoint; write weights, metrics and summary.

    Parameters
    ----------
    job
        The run to fit (``FitJob``).
    options
        Device, threads (0 = measured at start, None = torch's own choice), checkpoint
        interval (and after the last epoch) and the per-epoch callback (``RunOptions``).
    """
    import torch

    cfg = job.cfg
    dev = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with matmul_precision(dev, cfg.tf32):
        _fit(job, options, cfg, dev)


@contextmanager
def matmul_precision(dev: torch.device, tf32: bool) -> Iterator[None]:
    """TF32 matmuls on CUDA while the block runs when ``tf32`` (the reference sets
    ``torch.set_float32_matmul_precision("high")`` for its whole process); the previous
    setting comes back after, so nothing else in the process changes. CPU: unchanged."""
    import torch

    if dev.type != "cuda" or not tf32:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _fit(job: FitJob, options: RunOptions, cfg: TrainConfig, dev: torch.device) -> None:
    import torch

    t = _tensors(job.pairs, dev)
    split = {s: torch.from_numpy(np.flatnonzero(job.labels == s)).to(dev)
             for s in ("train", "val", "test")}
    n_train = len(split["train"])

    torch.manual_seed(cfg.seed)
    model = build_model(job.config).to(dev)
    opt, sched = optimiser(model, cfg, cfg.epochs * steps_per_epoch(n_train, cfg))
    threads = options.threads
    if threads == 0:
        threads = pick_threads(model, cfg, t, split["train"][: cfg.batch_size])
    if threads:
        torch.set_num_threads(threads)
    ckpt = _restore(job, model, opt, sched)

    use_val = len(split["val"]) > 0
    for epoch in range(ckpt["epoch"] + 1, cfg.epochs + 1):
        parts = _epoch_batches(job, split, cfg, epoch)
        row = _epoch(model, opt, sched, t, split, cfg, epoch, parts)
        if use_val and row["val_mrr"] > ckpt["best_score"]:
            ckpt.update(best_score=row["val_mrr"], best_epoch=epoch,
                        best_model={k: v.detach().clone() for k, v in
                                    model.state_dict().items()})
        ckpt["history"].append(row)
        ckpt.update(epoch=epoch, model=model.state_dict(), opt=opt.state_dict(),
                    sched=sched.state_dict())
        stop = (use_val and epoch >= cfg.min_epochs_fraction * cfg.epochs
                and epoch - ckpt["best_epoch"] >= cfg.patience)
        if stop or epoch == cfg.epochs or epoch % options.checkpoint_every == 0:
            save_checkpoint(ckpt, job.work / CHECKPOINT_FILE)
            write_metrics(ckpt["history"], job.work / METRICS_FILE)
        if options.on_epoch:
            options.on_epoch(row)
        if stop:
            break
    _finish(job, model, ckpt, t, split, use_val)


def _tensors(pairs: Pairs, dev: torch.device) -> dict[str, torch.Tensor]:
    """The whole tables as tensors on the device (batches are index slices of them)."""
    import torch

    t = {
        "base": torch.from_numpy(pairs.base), "aug": torch.from_numpy(pairs.aug),
        "text_id": torch.from_numpy(pairs.text_id),
        "text_vectors": torch.from_numpy(pairs.text_vectors.astype(np.float32)),
        "xy": torch.from_numpy((pairs.xy - pairs.xy.mean(0)).astype(np.float32)),
    }
    return {k: v.to(dev) for k, v in t.items()}


def _restore(job: FitJob, model: AetherModel, opt: torch.optim.Optimizer, sched: Any
             ) -> dict[str, Any]:
    """The checkpoint to go on from: a fresh one, or the saved one loaded into the model,
    optimiser and schedule (ModelError when it does not fit the run config)."""
    if job.state != "resume":
        return {"epoch": 0, "history": [], "best_score": -1.0, "best_epoch": 0,
                "best_model": None}
    ckpt = load_checkpoint(job.work / CHECKPOINT_FILE)
    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelError(f"checkpoint {job.work / CHECKPOINT_FILE} does not fit the run config",
                         "train again with --overwrite") from e
    return ckpt


def _epoch_batches(job: FitJob, split: dict[str, torch.Tensor], cfg: TrainConfig,
                   epoch: int) -> list[torch.Tensor]:
    """The epoch's batches of row indices: the seeded order cut into batches, or PURE's
    distance rings around anchors (``aether.ml.rings``)."""
    import torch

    train = split["train"]
    if cfg.batch_sampler == "rings":
        from aether.ml.rings import ring_epoch

        return [torch.from_numpy(b).to(train.device) for _, b in
                ring_epoch(job.pairs.xy, train.cpu().numpy(), cfg, epoch)]
    return batches(train[epoch_order(cfg.seed, epoch, len(train)).to(train.device)], cfg)


def _epoch(model: AetherModel, opt: torch.optim.Optimizer, sched: Any,
           t: dict[str, torch.Tensor], split: dict[str, torch.Tensor], cfg: TrainConfig,
           epoch: int, parts: list[torch.Tensor]) -> dict[str, Any]:
    """One epoch's steps over its batches; its metrics row (losses, temperature, lr,
    validation, seconds)."""
    import torch

    t0 = time.perf_counter()
    seen = sum(len(b) for b in parts)
    keys = ("loss", "multiscale", "crossmodal") + (("relational",) if cfg.relational_weight
                                                   else ())
    sums = {k: torch.zeros((), device=split["train"].device) for k in keys}
    for idx in parts:
        losses = _step(model, opt, t, idx, cfg)
        sched.step()
        for k in sums:
            sums[k] += losses[k].detach() * (len(idx) / seen)
    row: dict[str, Any] = {"epoch": epoch,
                           **{k: round(float(v), 6) for k, v in sums.items()},
                           "temperature": round(1 / model.logit_scale().item(), 6),
                           "lr": float(f"{sched.get_last_lr()[0]:.6g}")}
    if len(split["val"]) > 0:
        row.update({f"val_{k}": round(v, 6) for k, v in
                    evaluate_retrieval(model, t, split["val"]).items()})
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def _finish(job: FitJob, model: AetherModel, ckpt: dict[str, Any], t: dict[str, torch.Tensor],
            split: dict[str, torch.Tensor], use_val: bool) -> None:
    """Keep the selected epoch's weights (the best validation one, else the last) and write
    them with the summary (held-out test retrieval when there is a test split)."""
    import torch

    final = ckpt["best_model"] if use_val else model.state_dict()
    model.load_state_dict(final)
    save_weights(final, job.work / WEIGHTS_FILE, {"config_hash": job.config["config_hash"]})
    summary = {"epochs_run": ckpt["epoch"], "selected_epoch": ckpt["best_epoch"] if use_val
               else ckpt["epoch"], "pairs": {s: len(v) for s, v in split.items()},
               "final_train": ckpt["history"][-1], "threads": torch.get_num_threads()}
    if len(split["test"]):
        summary["test"] = evaluate_retrieval(model, t, split["test"])
        summary["test"]["n"] = len(split["test"])
    write_json(summary, job.work / SUMMARY_FILE)
