"""Train the AETHER heads on one city-year's tables; checkpoints, resume, metrics log.

Reads only ``pois.parquet``, ``poi_embeddings.parquet`` and the text cache of a city
directory (never Earth Engine or OSM) and writes ``<city_dir>/models/<run>/``:
``config.json`` (everything that defines the run, with a data checksum), ``model.safetensors``
(the selected weights), ``checkpoint.pt`` (the last epoch's full state, for resume),
``metrics.csv`` (one row per epoch) and ``summary.json`` (held-out retrieval when done).

A stable hash of each POI id puts a fixed test split aside for every preset, so the presets
can be compared on the same held-out POIs; ``val_fraction`` (an option) also carves a
validation split for early stopping and best-checkpoint selection.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aether.core.aef import BANDS
from aether.errors import ConfigError, InputError, ModelError, TableError
from aether.io.tables import (
    MANIFEST_FILE,
    POI_EMBEDDINGS_FILE,
    POIS_FILE,
    atomic_path,
    config_hash,
    read_json,
    read_table,
    sha256_file,
    write_json,
)
from aether.ml.text import DEFAULT_TEXT_MODEL, TEXT_EMBEDDINGS_FILE, encode_texts
from aether.settings import check_slug

if TYPE_CHECKING:
    import torch

    from aether.ml.heads import AetherModel

SCHEMA_VERSION = 1
MODELS_DIR = "models"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a run. The defaults are the method's (the ``paper`` preset)."""

    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    lr_min: float = 1e-5
    weight_decay: float = 1e-4
    temperature: float = 0.07
    learn_temperature: bool = False
    multiscale_weight: float = 0.2
    same_text_positive: bool = False
    same_place_m: float = 0.0  # POIs closer than this are positives; 0 = off
    base_radius_m: float = 100.0
    aug_radius_m: float = 200.0
    test_fraction: float = 0.1  # held out from every preset, for comparison
    val_fraction: float = 0.0  # for early stopping / best checkpoint; 0 = keep last epoch
    split: str = "random"  # "random" (by POI) or "blocks" (square spatial blocks)
    block_m: float = 250.0
    patience: int = 20  # epochs without a better val MRR before stopping
    min_epochs_fraction: float = 0.5  # never stop in the first half of the cosine schedule
    text_model: str = DEFAULT_TEXT_MODEL
    seed: int = 42


PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    # Only what proved better on the sample city's held-out POIs: same-text and same-place
    # pairs as positives (recall@1/@10 and MRR equal or higher for every seed tried). A learnt
    # temperature (learn_temperature=true) and best-epoch selection with early stopping
    # (val_fraction=0.1) are options: on ~2k POIs both did worse (a noisy 200-POI validation
    # set, 10% less training data).
    "default": TrainConfig(same_text_positive=True, same_place_m=10.0),
}

#: Options that must be > 0 and >= 0 (a zero temperature divides by zero in the loss).
_POSITIVE = ("lr", "lr_min", "temperature", "base_radius_m", "aug_radius_m", "block_m")
_NON_NEGATIVE = ("weight_decay", "multiscale_weight", "same_place_m", "patience",
                 "min_epochs_fraction")

#: The architecture (AetherModel kwargs) beside the hyper-parameters that shape it.
_ARCH_KEYS = ("ae_dim", "text_dim", "hidden_dim", "out_dim", "gate_init")


@dataclass
class Pairs:
    """A city's training pairs as arrays; row i is one POI."""

    poi_id: np.ndarray  # (N,) str
    base: np.ndarray  # (N, 64) float32
    aug: np.ndarray  # (N, 64) float32
    text_id: np.ndarray  # (N,) int64 into text_vectors
    text_vectors: np.ndarray  # (U, D) float32
    xy: np.ndarray  # (N, 2) float64 metres in a local UTM crs
    counts: dict[str, int]
    checksums: dict[str, str] = dataclasses.field(default_factory=dict)


def _unit_hash(values: pd.Series) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per value (same on every machine)."""
    h = pd.util.hash_pandas_object(values, index=False, hash_key="aether-split-key")
    return h.to_numpy().astype(np.float64) / 2.0**64


def split_labels(pairs: Pairs, cfg: TrainConfig) -> np.ndarray:
    """'train' / 'val' / 'test' per row: random by POI id or by spatial block."""
    if cfg.split == "random":
        keys = pd.Series(pairs.poi_id, dtype="string")
    elif cfg.split == "blocks":
        cell = np.floor(pairs.xy / cfg.block_m).astype(np.int64)
        keys = pd.Series(cell[:, 0] * 1_000_003 + cell[:, 1])
    else:
        raise ConfigError(f"unknown split {cfg.split!r}", "use 'random' or 'blocks'")
    u = _unit_hash(keys)
    labels = np.full(len(u), "train", dtype=object)
    labels[u < cfg.test_fraction + cfg.val_fraction] = "val"
    labels[u < cfg.test_fraction] = "test"
    return labels


def _year_of(city_dir: Path) -> int | None:
    return int(city_dir.name) if city_dir.name.isdigit() else None


def _radius_rows(emb: pd.DataFrame, radius: float, radii: np.ndarray) -> pd.DataFrame:
    """The rows at one radius, indexed by poi_id; a missing radius is a clear error."""
    rows = emb[np.isclose(emb["radius_m"].to_numpy(np.float64), radius)]
    if rows.empty:
        have = ", ".join(f"{r:g}" for r in radii)
        raise TableError(
            f"poi_embeddings has no rows at radius {radius:g} m (it has {have} m)",
            f"re-run `aether extract` with --radius {radius:g}, or train with radii it has",
        )
    if rows["poi_id"].duplicated().any():
        raise TableError(f"poi_embeddings repeats POIs at radius {radius:g} m",
                         "re-create it with `aether extract`")
    return rows.set_index("poi_id")


def load_pairs(city_dir: Path, cfg: TrainConfig) -> Pairs:
    """Join POI texts with their base and augmented AlphaEarth means, column-wise.

    Rows with a NaN vector at either radius are skipped and counted, as are POIs without
    embedding rows; embedding rows naming unknown POIs mean the tables do not belong together.
    """
    pois = read_table(city_dir / POIS_FILE, ["poi_id", "text", "geometry"], POIS_FILE)
    checksums = _check_manifest(city_dir)
    emb = read_table(city_dir / POI_EMBEDDINGS_FILE, ["poi_id", "year", "radius_m", *BANDS],
                     POI_EMBEDDINGS_FILE)
    years = sorted(int(y) for y in emb["year"].unique())
    if len(years) > 1 or (_year_of(city_dir) not in (None, years[0])):
        raise TableError(
            f"poi_embeddings holds year(s) {', '.join(map(str, years))} in the directory for "
            f"{city_dir.name}: tables from different years are mixed",
            "re-run `aether extract` for this city and year",
        )
    foreign = ~emb["poi_id"].isin(pois["poi_id"])
    if foreign.any():
        raise TableError(
            f"{int(foreign.sum())} of {len(emb)} poi_embeddings rows name POIs missing from "
            "pois.parquet: tables from different cities or runs are mixed",
            "re-run `aether extract` so both tables come from one run",
        )
    radii = np.unique(emb["radius_m"].to_numpy(np.float64))
    base = _radius_rows(emb, cfg.base_radius_m, radii)
    aug = _radius_rows(emb, cfg.aug_radius_m, radii)
    pois = pois.drop_duplicates("poi_id").set_index("poi_id")
    ids = pois.index.intersection(base.index).intersection(aug.index)
    b = base.loc[ids, list(BANDS)].to_numpy(np.float32)
    a = aug.loc[ids, list(BANDS)].to_numpy(np.float32)
    ok = np.isfinite(b).all(1) & np.isfinite(a).all(1)
    counts = {
        "pois": len(pois),
        "missing_embeddings": len(pois) - len(ids),
        "skipped_nan": int((~ok).sum()),
        "pairs": int(ok.sum()),
    }
    if counts["pairs"] < 2:
        raise TableError(
            f"{city_dir} has {counts['pairs']} usable POI pairs "
            f"({counts['skipped_nan']} with NaN vectors)",
            "extract a larger area, or one inside the AlphaEarth coverage",
        )
    ids = ids[ok]
    kept = pois.loc[ids]
    texts, text_id = np.unique(kept["text"].astype(str).to_numpy(), return_inverse=True)
    vectors = encode_texts(list(texts), cache_path=city_dir / TEXT_EMBEDDINGS_FILE,
                           model_name=cfg.text_model)
    geom = kept.geometry
    if geom.crs is not None and geom.crs.is_geographic:
        geom = geom.to_crs(geom.estimate_utm_crs())
    xy = np.column_stack([geom.x.to_numpy(), geom.y.to_numpy()]).astype(np.float64)
    return Pairs(np.asarray(ids, dtype=object), b[ok], a[ok], text_id.astype(np.int64).ravel(),
                 vectors, xy, counts, checksums)


def _check_manifest(city_dir: Path) -> dict[str, str]:
    """Checksums of the two tables; they must be the ones this directory's extract wrote."""
    sums = {name: sha256_file(city_dir / name) for name in (POIS_FILE, POI_EMBEDDINGS_FILE)
            if (city_dir / name).is_file()}
    if not (city_dir / MANIFEST_FILE).is_file():
        return sums
    try:
        manifest = read_json(city_dir / MANIFEST_FILE)
    except ValueError as e:
        raise TableError(f"{city_dir / MANIFEST_FILE} is not valid JSON",
                         "re-run `aether extract`") from e
    place = manifest.get("config", {}).get("place")
    if place not in (None, city_dir.parent.name):
        raise TableError(f"{city_dir} holds the extract of {place!r}",
                         "tables from different cities are mixed; re-run `aether extract`")
    for name, out in manifest.get("outputs", {}).items():
        if name in sums and out.get("sha256") not in (None, sums[name]):
            raise TableError(
                f"{name} in {city_dir} is not the table its manifest recorded: tables from "
                "different cities or runs are mixed", "re-run `aether extract` for this city")
    return sums


def parse_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to typed TrainConfig overrides (``--set`` on the CLI)."""
    types = {f.name: type(getattr(TrainConfig(), f.name)) for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ConfigError(f"bad training option {item!r}",
                              f"use KEY=VALUE with KEY one of {', '.join(sorted(types))}")
        kind = types[key]
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1", "yes")
            else:
                out[key] = kind(value)
                if kind is float and not math.isfinite(out[key]):
                    raise ValueError(value)
        except ValueError as e:
            raise ConfigError(f"{key} wants a {kind.__name__}, not {value!r}",
                              f"e.g. --set {key}={getattr(TrainConfig(), key)}") from e
    return out


def resolve_config(preset: str, epochs: int | None, seed: int, **overrides: Any) -> TrainConfig:
    """A preset with explicit overrides applied; unknown names are ConfigErrors."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ConfigError(f"unknown training option(s) {', '.join(bad)}",
                          f"known: {', '.join(sorted(fields))}")
    if epochs is not None:
        overrides["epochs"] = epochs
    cfg = dataclasses.replace(PRESETS[preset], seed=seed, **overrides)
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise ConfigError("epochs must be >= 1 and batch_size >= 2", "e.g. --epochs 100")
    for name in _POSITIVE:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be > 0, not {getattr(cfg, name)}",
                              f"e.g. --set {name}={getattr(TrainConfig(), name)}")
    for name in _NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, not {getattr(cfg, name)}",
                              f"e.g. --set {name}={getattr(TrainConfig(), name)}")
    if cfg.base_radius_m >= cfg.aug_radius_m:
        raise ConfigError("the augmented radius must be larger than the base radius",
                          "e.g. base_radius_m=100, aug_radius_m=200")
    if not 0 <= cfg.test_fraction + cfg.val_fraction < 1:
        raise ConfigError("test_fraction + val_fraction must be in [0, 1)", "e.g. 0.1 + 0.1")
    return cfg


def _run_config(city_dir: Path, preset: str, cfg: TrainConfig, pairs: Pairs) -> dict[str, Any]:
    """What defines a run; equal configs may resume each other, others may not."""
    pois_sum, emb_sum = pairs.checksums[POIS_FILE], pairs.checksums[POI_EMBEDDINGS_FILE]
    return {
        "schema_version": SCHEMA_VERSION,
        "preset": preset,
        "hyperparameters": dataclasses.asdict(cfg),
        "model": {"ae_dim": len(BANDS), "text_dim": int(pairs.text_vectors.shape[1]),
                  "hidden_dim": 256, "out_dim": 128, "gate_init": -4.0,
                  "temperature": cfg.temperature, "learn_temperature": cfg.learn_temperature},
        "city": city_dir.parent.name,
        "year": _year_of(city_dir),
        "base_radius_m": cfg.base_radius_m,
        "aug_radius_m": cfg.aug_radius_m,
        "text_model": cfg.text_model,
        "input_schema": {"ae_columns": list(BANDS), "ae_dim": len(BANDS),
                         "text_dim": int(pairs.text_vectors.shape[1]),
                         "tables": [POIS_FILE, POI_EMBEDDINGS_FILE]},
        "data": {"pois_sha256": pois_sum, "poi_embeddings_sha256": emb_sum,
                 "checksum": config_hash({"pois": pois_sum, "emb": emb_sum}), **pairs.counts},
    }


def build_model(config: dict[str, Any]) -> AetherModel:
    """An untrained AetherModel with a run config's architecture."""
    from aether.ml.heads import AetherModel

    try:
        m = config["model"]
        return AetherModel(**{k: m[k] for k in _ARCH_KEYS}, temperature=float(m["temperature"]),
                           learn_temperature=bool(m["learn_temperature"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"run config has no usable model section ({e})",
                         "train the run again with `aether train`") from e


def load_model(run: Path) -> tuple[AetherModel, dict[str, Any]]:
    """The trained model of a run directory and its config; ModelError if they do not fit."""
    run = Path(run)
    try:
        config = read_json(run / CONFIG_FILE)
    except (OSError, ValueError) as e:
        raise ModelError(f"{run} has no readable {CONFIG_FILE}",
                         "point to a run directory made by `aether train`") from e
    if not isinstance(config, dict) or config.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(f"{run / CONFIG_FILE} is not a schema-{SCHEMA_VERSION} run config",
                         "re-train with this version of aether")
    model = build_model(config)
    _load_weights(model, run / WEIGHTS_FILE)
    model.eval()
    return model, config


def _load_weights(model: AetherModel, path: Path) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:
        raise ModelError(f"cannot read weights {path}: {type(e).__name__}",
                         "re-train the run; the file is missing or corrupt") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise ModelError(f"weights {path} do not fit the run config: {first[:120]}",
                         "the checkpoint comes from another configuration; re-train") from e


def _save_weights(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), meta)


def _masks(pairs_t: dict[str, torch.Tensor], idx: torch.Tensor, cfg: TrainConfig
           ) -> dict[str, torch.Tensor | None]:
    """False-negative masks for one batch (None where the preset keeps diagonal targets)."""
    import torch

    same_text = same_place = None
    if cfg.same_text_positive:
        t = pairs_t["text_id"][idx]
        same_text = t[:, None] == t[None, :]
    if cfg.same_place_m > 0:
        xy = pairs_t["xy"][idx]
        same_place = torch.cdist(xy, xy) <= cfg.same_place_m
    return {"same_text": same_text, "same_place": same_place}


def _evaluate(model: AetherModel, t: dict[str, torch.Tensor], idx: torch.Tensor
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


def _write_metrics(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


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
    device: str | None = None,
    threads: int | None = 1,
    overwrite: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> Path:
    """Train (or resume, or find finished) a run; returns ``<city_dir>/models/<run>/``.

    ``overrides`` set any ``TrainConfig`` field. A run directory holding another config is
    refused unless ``overwrite``; an unfinished one with the same config resumes. ``threads``
    caps torch's CPU threads: the heads are small, so one thread is about as fast on an idle
    machine, far faster on a busy one, and gives the same bytes on any core count.
    """
    city_dir = Path(city_dir)
    cfg = resolve_config(preset, epochs, seed, **overrides)
    check_device(device)
    run = city_dir / MODELS_DIR / _run_slug(run_name or preset)
    pairs = load_pairs(city_dir, cfg)
    labels = split_labels(pairs, cfg)
    if (labels == "train").sum() < 2:
        raise TableError(f"only {(labels == 'train').sum()} training pairs after the held-out "
                         "splits", "use a larger area or smaller test/val fractions")
    config = _run_config(city_dir, preset, cfg, pairs)
    config["config_hash"] = config_hash(config)
    state = _prepare_run(run, config, overwrite)
    if state == "done":
        return run

    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        _fit(run, config, cfg, pairs, labels, state, device, on_epoch)
    finally:
        torch.set_num_threads(previous)
    return run


def _fit(run: Path, config: dict[str, Any], cfg: TrainConfig, pairs: Pairs, labels: np.ndarray,
         state: str, device: str | None, on_epoch: Callable[[dict[str, Any]], None] | None
         ) -> None:
    """The training loop of ``train``, from a fresh start or the last checkpoint."""
    import torch

    from aether.ml.heads import aether_losses

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t = {
        "base": torch.from_numpy(pairs.base), "aug": torch.from_numpy(pairs.aug),
        "text_id": torch.from_numpy(pairs.text_id),
        "text_vectors": torch.from_numpy(pairs.text_vectors.astype(np.float32)),
        "xy": torch.from_numpy((pairs.xy - pairs.xy.mean(0)).astype(np.float32)),
    }
    t = {k: v.to(dev) for k, v in t.items()}
    split = {s: torch.from_numpy(np.flatnonzero(labels == s)).to(dev)
             for s in ("train", "val", "test")}
    n_train = len(split["train"])

    torch.manual_seed(cfg.seed)
    model = build_model(config).to(dev)
    decay = [p for n, p in model.named_parameters() if n != "log_scale"]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if cfg.learn_temperature:
        groups.append({"params": [model.log_scale], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    n_batches = math.ceil(n_train / cfg.batch_size)
    total = cfg.epochs * n_batches
    floor = cfg.lr_min / cfg.lr
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    ckpt: dict[str, Any] = {"epoch": 0, "history": [], "best_score": -1.0, "best_epoch": 0,
                            "best_model": None}
    if state == "resume":
        ckpt = _load_checkpoint(run / CHECKPOINT_FILE)
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ModelError(f"checkpoint {run / CHECKPOINT_FILE} does not fit the run config",
                             "train again with --overwrite") from e

    use_val = len(split["val"]) > 0
    for epoch in range(ckpt["epoch"] + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = split["train"][torch.randperm(n_train, generator=g).to(dev)]
        sums = {"loss": 0.0, "multiscale": 0.0, "crossmodal": 0.0}
        for idx in torch.tensor_split(order, n_batches):
            losses = aether_losses(
                model, t["base"][idx], t["aug"][idx], t["text_vectors"][t["text_id"][idx]],
                multiscale_weight=cfg.multiscale_weight, **_masks(t, idx, cfg))
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            sched.step()
            for k in sums:
                sums[k] += float(losses[k].detach()) * len(idx) / n_train
        row: dict[str, Any] = {"epoch": epoch, **{k: round(v, 6) for k, v in sums.items()},
                               "temperature": round(1 / model.logit_scale().item(), 6),
                               "lr": float(f"{sched.get_last_lr()[0]:.6g}")}
        if use_val:
            row.update({f"val_{k}": round(v, 6) for k, v in
                        _evaluate(model, t, split["val"]).items()})
            if row["val_mrr"] > ckpt["best_score"]:
                ckpt.update(best_score=row["val_mrr"], best_epoch=epoch,
                            best_model={k: v.detach().clone() for k, v in
                                        model.state_dict().items()})
        row["seconds"] = round(time.perf_counter() - t0, 3)
        ckpt["history"].append(row)
        ckpt.update(epoch=epoch, model=model.state_dict(), opt=opt.state_dict(),
                    sched=sched.state_dict())
        _save_checkpoint(ckpt, run / CHECKPOINT_FILE)
        _write_metrics(ckpt["history"], run / METRICS_FILE)
        if on_epoch:
            on_epoch(row)
        if (use_val and epoch >= cfg.min_epochs_fraction * cfg.epochs
                and epoch - ckpt["best_epoch"] >= cfg.patience):
            break

    final = ckpt["best_model"] if use_val else model.state_dict()
    model.load_state_dict(final)
    _save_weights(final, run / WEIGHTS_FILE, {"config_hash": config["config_hash"]})
    summary = {"epochs_run": ckpt["epoch"], "selected_epoch": ckpt["best_epoch"] if use_val
               else ckpt["epoch"], "pairs": {s: len(v) for s, v in split.items()},
               "final_train": ckpt["history"][-1]}
    if len(split["test"]):
        summary["test"] = _evaluate(model, t, split["test"])
        summary["test"]["n"] = len(split["test"])
    write_json(summary, run / SUMMARY_FILE)


def _run_slug(name: str) -> str:
    try:
        return check_slug(name)
    except InputError as e:
        raise InputError(f"{name!r} is not a usable run name",
                         "use lower-case letters, digits, '-' and '_'") from e


def _prepare_run(run: Path, config: dict[str, Any], overwrite: bool) -> str:
    """'fresh', 'resume' or 'done' for a run directory; refuse to mix configs."""
    cfg_path = run / CONFIG_FILE
    if cfg_path.exists() and not overwrite:
        try:
            old = read_json(cfg_path)
        except ValueError:
            old = {}
        if old.get("config_hash") != config["config_hash"]:
            raise ModelError(
                f"run {run.name!r} in {run.parent} was trained with another config or data",
                "pick another --run name, or pass --overwrite to replace it",
            )
        if (run / SUMMARY_FILE).exists() and (run / WEIGHTS_FILE).exists():
            return "done"
        if (run / CHECKPOINT_FILE).exists():
            return "resume"
    for name in (WEIGHTS_FILE, CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE):
        (run / name).unlink(missing_ok=True)
    write_json(config, cfg_path)
    return "fresh"


def _save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """Resume state, loaded with ``weights_only`` (no pickled code runs)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot resume from {path}: {type(e).__name__}",
                         "train again with --overwrite") from e
