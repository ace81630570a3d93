"""A run directory on disk: its config, weights, resume checkpoint and metrics log.

``<city_dir>/models/<run>/`` holds ``config.json`` (everything that defines the run, with a
data checksum; the model section is the one place the head's sizes are read from),
``model.safetensors`` (the selected weights), ``checkpoint.pt`` (the full state, for resume),
``metrics.csv`` (one row per epoch) and ``summary.json`` (held-out retrieval when done).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether.core.aef import BANDS
from aether.errors import ModelError
from aether.io.store import MODEL_CONFIG, MODEL_WEIGHTS
from aether.io.tables import (
    POI_EMBEDDINGS_FILE,
    POIS_FILE,
    atomic_path,
    config_hash,
    read_json,
)
from aether.ml.config import TrainConfig, hyperparameters
from aether.ml.data import Pairs, year_of

if TYPE_CHECKING:
    import torch

    from aether.ml.heads import AetherModel

SCHEMA_VERSION = 1
CONFIG_FILE = MODEL_CONFIG  # the layout's names (aether.io.store)
WEIGHTS_FILE = MODEL_WEIGHTS
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"

#: The architecture (AetherModel kwargs) beside the hyper-parameters that shape it.
_ARCH_KEYS = ("ae_dim", "text_dim", "hidden_dim", "out_dim", "gate_init")


def model_section(cfg: TrainConfig, text_dim: int) -> dict[str, Any]:
    """The architecture a run config records (and ``build_model`` rebuilds)."""
    return {"ae_dim": len(BANDS), "text_dim": int(text_dim), "hidden_dim": cfg.hidden_dim,
            "out_dim": cfg.out_dim, "gate_init": -4.0, "temperature": cfg.temperature,
            "learn_temperature": cfg.learn_temperature, "normalize_input": cfg.normalize_input}


def run_config(city_dir: Path, preset: str, cfg: TrainConfig, pairs: Pairs,
               cities: Sequence[str] = ()) -> dict[str, Any]:
    """What defines a run; equal configs may resume each other, others may not. ``cities``
    (slugs, the home city first) when the run trains on several cities' tables."""
    text_dim = int(pairs.text_vectors.shape[1])
    if cities:
        data = {"tables_sha256": dict(sorted(pairs.checksums.items())),
                "checksum": config_hash(pairs.checksums), **pairs.counts}
    else:
        pois_sum, emb_sum = pairs.checksums[POIS_FILE], pairs.checksums[POI_EMBEDDINGS_FILE]
        data = {"pois_sha256": pois_sum, "poi_embeddings_sha256": emb_sum,
                "checksum": config_hash({"pois": pois_sum, "emb": emb_sum}), **pairs.counts}
    return {
        "schema_version": SCHEMA_VERSION,
        "preset": preset,
        "hyperparameters": hyperparameters(cfg),
        "model": model_section(cfg, text_dim),
        "city": city_dir.parent.name,
        **({"cities": list(cities)} if cities else {}),
        "year": year_of(city_dir),
        "base_radius_m": cfg.base_radius_m,
        "aug_radius_m": cfg.aug_radius_m,
        "text_model": cfg.text_model,
        "input_schema": {"ae_columns": list(BANDS), "ae_dim": len(BANDS), "text_dim": text_dim,
                         "tables": [POIS_FILE, POI_EMBEDDINGS_FILE]},
        "data": data,
    }


def build_model(config: dict[str, Any]) -> AetherModel:
    """An untrained AetherModel with a run config's architecture."""
    from aether.ml.heads import AetherModel

    try:
        m = config["model"]
        return AetherModel(**{k: m[k] for k in _ARCH_KEYS}, temperature=float(m["temperature"]),
                           learn_temperature=bool(m["learn_temperature"]),
                           normalize_input=bool(m.get("normalize_input", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"run config has no usable model section ({e})",
                         "train the run again with `aether train`") from e


def load_model(run: Path) -> tuple[AetherModel, dict[str, Any]]:
    """The trained model of a run directory and its config; ModelError if they do not fit.
    (An official AETHER ``.pth`` is read by ``aether.ml.reference``.)"""
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
    load_weights(model, run / WEIGHTS_FILE)
    model.eval()
    return model, config


def load_weights(model: AetherModel, path: Path) -> None:
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


def save_weights(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), meta)


def write_metrics(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Resume state, loaded with ``weights_only`` (no pickled code runs)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot resume from {path}: {type(e).__name__}",
                         "train again with --overwrite") from e


def publish_run(work: Path, run: Path) -> None:
    """Rename a complete build onto the run directory (replacing an older model), so a
    reader never sees half a model."""
    old = run.with_name(f".{run.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if run.exists():
        os.rename(run, old)
    os.rename(work, run)
    shutil.rmtree(old, ignore_errors=True)
