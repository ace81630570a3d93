"""Train the AETHER heads on one city-year's tables: the run directory, resume, or reuse.

The pieces: ``config`` (TrainConfig, presets, ``--set``), ``data`` (pairs and the fixed
held-out split), ``fit`` (the loop), ``checkpoints`` (what a run directory holds).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aether import provenance
from aether.errors import InputError, ModelError, TableError
from aether.execution.progress import bar
from aether.io.store import CityStore, model_complete
from aether.io.tables import config_hash, read_json, write_json
from aether.ml.checkpoints import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    WEIGHTS_FILE,
    publish_run,
    run_config,
)
from aether.ml.config import PRESETS, RunOptions, TrainConfig, parse_options, resolve_config
from aether.ml.data import Pairs, load_pairs, merge_pairs, split_labels
from aether.ml.reference import load_model
from aether.settings import check_slug

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "METRICS_FILE",
    "PRESETS",
    "SUMMARY_FILE",
    "WEIGHTS_FILE",
    "Pairs",
    "RunOptions",
    "TrainConfig",
    "check_run_name",
    "load_model",
    "load_pairs",
    "parse_options",
    "resolve_config",
    "split_labels",
    "train",
]

log = logging.getLogger(__name__)


def warn_if_few(n_train: int, cfg: TrainConfig) -> None:
    """Warn when the training POIs do not fill one batch: every POI's contrastive loss is
    measured against the others in its batch, so fewer than ``batch_size`` of them give too
    few negatives for the model to learn more than noise."""
    if n_train >= cfg.batch_size:
        return
    need = math.ceil(cfg.batch_size / (1 - cfg.test_fraction - cfg.val_fraction))
    log.warning("only %d training POIs: a meaningful model needs at least one full batch "
                "(%d) of them, i.e. about %d POIs extracted (a larger area)",
                n_train, cfg.batch_size, need)


def check_device(device: str | None) -> None:
    """A device torch can use here, checked before anything is written."""
    if device is None or device == "cpu":
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a torch device",
                         "use cpu or cuda (cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: this torch has no usable CUDA GPU",
                         "use --device cpu, or install a CUDA build of torch")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r} is not supported", "use cpu or cuda")


def train(
    city_dir: Path,
    *,
    preset: str = "default",
    run_name: str | None = None,
    epochs: int | None = None,
    seed: int = 42,
    options: RunOptions | None = None,
    also: Sequence[Path] = (),
    **overrides: Any,
) -> Path:
    """Train (or resume, or find finished) a run; returns ``<city_dir>/models/<run>/``.

    ``overrides`` set any ``TrainConfig`` field; ``options`` say how to run it (device,
    threads, checkpoints, progress: ``RunOptions``). ``also``: more city directories (of
    the same year) whose tables join the training set; the run lives in the first city's
    folder and names every city it saw. A run directory holding another config
    is refused unless ``options.overwrite``. The run is built in ``models/.<run>.partial/``
    and renamed into place when complete, so readers never see half a model; an unfinished
    build with the same config resumes. Holds the data directory's lock.
    """
    city_dir = Path(city_dir)
    options = options or RunOptions()
    cfg = resolve_config(preset, epochs, seed, **overrides)
    check_device(options.device)
    store = CityStore.at(city_dir)
    name = check_run_name(run_name or preset)
    others = [Path(d) for d in also if Path(d).resolve() != city_dir.resolve()]
    with store.locked():
        return _train(store, name, preset, cfg, options, others)


def _train(store: CityStore, name: str, preset: str, cfg: TrainConfig, options: RunOptions,
           others: list[Path]) -> Path:
    city_dir, run, work = store.dir, store.model(name), store.model_partial(name)
    dirs = [city_dir, *others]
    cities = [d.parent.name for d in dirs] if others else []
    if len(set(cities)) < len(cities) or len({d.name for d in dirs}) > 1:
        raise InputError("train on several cities of one year, each named once",
                         "e.g. aether train --city Alpha --city Beta --year 2024")
    if others and cfg.batch_sampler == "rings":
        raise InputError("batch_sampler=rings measures distances within one city's metres",
                         "train several cities with batch_sampler=random")
    pairs = (load_pairs(city_dir, cfg) if not others else
             merge_pairs({d.parent.name: load_pairs(d, cfg) for d in dirs}))
    cfg = dataclasses.replace(cfg, base_radius_m=pairs.radii[0], aug_radius_m=pairs.radii[1])
    labels = split_labels(pairs, cfg)
    if (labels == "train").sum() < 2:
        raise TableError(f"only {(labels == 'train').sum()} training pairs after the held-out "
                         "splits", "use a larger area or smaller test/val fractions")
    warn_if_few(int((labels == "train").sum()), cfg)
    config = run_config(city_dir, preset, cfg, pairs, cities)
    config["config_hash"] = config_hash(config)
    # after the hash: when and with what it ran does not decide whether runs may resume
    dataset = (provenance.dataset(city_dir) if not others else
               {d.parent.name: provenance.dataset(d) for d in dirs})
    config["provenance"] = {**provenance.software(), "dataset": dataset,
                            "seeds": {"train": cfg.seed}, "started": provenance.now()}
    state = _prepare_run(run, work, config, options.overwrite)
    if state == "done":
        return run

    import torch

    from aether.ml.fit import FitJob, fit
    from aether.ml.step import kept_freed_memory

    previous = torch.get_num_threads()
    try:
        with bar(f"train {run.name}: epochs", cfg.epochs) as shown, kept_freed_memory():
            def step(row: dict[str, Any]) -> None:
                shown.update(completed=row["epoch"], note=f"loss {row['loss']:.4f}")
                if options.on_epoch:
                    options.on_epoch(row)

            fit(FitJob(work, config, pairs, labels, state),
                dataclasses.replace(options, on_epoch=step))
    finally:
        torch.set_num_threads(previous)
    _stamp_finished(work / CONFIG_FILE)
    publish_run(work, run)
    return run


def _stamp_finished(path: Path) -> None:
    """The end time in the run's provenance (its start stays that of the first attempt)."""
    config = dict(read_json(path))
    config["provenance"] = {**config.get("provenance", {}), "finished": provenance.now()}
    write_json(config, path)


def replicates(city_dir: Path, run_dir: Path, config: dict[str, Any], n: int,
               options: RunOptions | None = None) -> list[Path]:
    """``run_dir`` and ``n - 1`` runs of its exact config with the next seeds, each trained
    when missing: ``<run>-seed<s>`` (training-seed replicates for ``aether evaluate``)."""
    hyper = dict(config["hyperparameters"])
    if "unknown" in hyper.values() or config.get("preset") not in PRESETS:
        raise ModelError(f"run {run_dir.name} cannot be replicated: its training settings "
                         "are not all known (an imported checkpoint)",
                         "replicate a run of `aether train`")
    # every field, those a run leaves out at their default too: the preset may set them
    hyper = dataclasses.asdict(TrainConfig(**hyper))
    seed, epochs = int(hyper.pop("seed")), int(hyper.pop("epochs"))
    also = [city_dir.parent.parent / c / city_dir.name for c in config.get("cities", [])[1:]]
    return [run_dir, *(train(city_dir, preset=config["preset"],
                             run_name=check_run_name(f"{run_dir.name}-seed{s}"), epochs=epochs,
                             seed=s, options=options, also=also, **hyper)
                       for s in range(seed + 1, seed + n))]


def check_run_name(name: str) -> str:
    try:
        return check_slug(name)
    except InputError as e:
        raise InputError(f"{name!r} is not a usable run name",
                         "use lower-case letters, digits, '-' and '_'") from e


def _config_hash_in(folder: Path) -> str | None:
    try:
        return dict(read_json(folder / CONFIG_FILE)).get("config_hash")
    except (OSError, ValueError, TypeError):
        return None


def _prepare_run(run: Path, work: Path, config: dict[str, Any], overwrite: bool) -> str:
    """'fresh', 'resume' (in ``work``) or 'done' (``run`` is it); refuse to mix configs."""
    trained = model_complete(run) and (run / SUMMARY_FILE).is_file()
    if run.is_dir() and not trained and not work.exists():
        os.rename(run, work)  # half a model left visible by an older aether: finish it
    elif run.is_dir() and not trained:
        shutil.rmtree(run)
    if run.is_dir() and not overwrite:
        if _config_hash_in(run) != config["config_hash"]:
            raise ModelError(
                f"run {run.name!r} in {run.parent} was trained with another config or data",
                "pick another --run name, or pass --overwrite to replace it",
            )
        return "done"
    if (not overwrite and _config_hash_in(work) == config["config_hash"]
            and (work / CHECKPOINT_FILE).exists()):
        return "resume"
    shutil.rmtree(work, ignore_errors=True)
    write_json(config, work / CONFIG_FILE)
    return "fresh"
