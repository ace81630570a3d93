"""Import a checkpoint of the official AETHER code (``inwind0212/AETHER``) as an aether run.

The reference saves ``{"ae_state_dict", "txt_state_dict", "hyper_parameters", "epoch", ...}``
with ``torch.save``; it is read here with ``torch.load(weights_only=True)`` (tensors and plain
containers only: no pickled code runs). Its heads are aether's heads under other names; its
inputs are L2-normalised means of square pixel windows (``pix_radius`` / ``aug_pix_radius``,
9 × 9 and 19 × 19 px in the shipped config), and its texts come from the backend the
hyper-parameters name. The run directory records where the weights came from, so
``aether encode`` applies the head to the window means it was trained on.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether.core.aef import BANDS
from aether.core.windows import square_radius
from aether.errors import ModelError
from aether.io.store import CityStore
from aether.io.tables import config_hash, sha256_file, write_json
from aether.ml.checkpoints import (
    CONFIG_FILE,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
    build_model,
    model_section,
    publish_run,
    save_weights,
)
from aether.ml.checkpoints import (
    load_model as load_run_model,
)
from aether.ml.config import TrainConfig, hyperparameters
from aether.ml.data import year_of
from aether.ml.text import DEFAULT_TEXT_MODEL
from aether.provenance import now, software

if TYPE_CHECKING:
    from aether.ml.heads import AetherModel

log = logging.getLogger(__name__)

#: reference name -> aether name (the AE head's Dropout sits at post_mlp.2, so .3 is its last
#: layer); the gate is a (1,) tensor there and a scalar here.
AE_NAMES = {"proj.0": "ae_mlp.0", "proj.2": "ae_mlp.2", "shortcut": "ae_shortcut",
            "post_mlp.0": "ae_proj.0", "post_mlp.3": "ae_proj.2"}


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def reference_text_model(hp: dict[str, Any]) -> str:
    """The text model a reference run used, in aether's naming (``openai:MODEL:DIM``)."""
    text = _get(hp, "text", default={})
    text = text if isinstance(text, dict) else {}
    if str(text.get("backend", "hf")).lower() == "openai":
        dim = _hyper(hp, "text", "emb_dim", default=None, kind=int)
        return f"openai:{text.get('openai_model', 'text-embedding-3-large')}" + (
            f":{dim}" if dim else "")
    return str(text.get("hf_model") or DEFAULT_TEXT_MODEL)


def map_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    """aether's state dict from a reference checkpoint; ModelError when it is not one.

    Every entry is checked before it is used: present, a tensor of the right rank (a weight
    is a matrix, a bias a vector, the gate one number) and finite (a NaN weight would make
    every vector NaN without a word).
    """
    ae, txt = ckpt.get("ae_state_dict"), ckpt.get("txt_state_dict")
    if not isinstance(ae, dict) or not isinstance(txt, dict):
        raise ModelError("not an AETHER reference checkpoint (no ae_state_dict/txt_state_dict)",
                         "pass a .pth written by the official train.py")
    if "gate" not in ae:
        raise ModelError("the checkpoint's AE head has no gate (use_gate=False)",
                         "only the gated head of the shipped checkpoints is supported")
    gate = _tensor(ae, "gate", "ae_state_dict", ndim=None)
    if gate.numel() != 1:
        raise ModelError(f"the checkpoint's AE gate has {gate.numel()} values, not 1",
                         "pass a .pth written by the official train.py (AEProj.gate is (1,))")
    out: dict[str, Any] = {"ae_gate": gate.reshape(())}
    for src, dst in AE_NAMES.items():
        for w, ndim in (("weight", 2), ("bias", 1)):
            out[f"{dst}.{w}"] = _tensor(ae, f"{src}.{w}", "ae_state_dict", ndim=ndim)
    out["text_proj.weight"] = _tensor(txt, "proj.weight", "txt_state_dict", ndim=2)
    out["text_proj.bias"] = _tensor(txt, "proj.bias", "txt_state_dict", ndim=1)
    return out


def _tensor(state: dict[str, Any], key: str, where: str, *, ndim: int | None) -> Any:
    """``state[key]`` as a finite floating tensor of ``ndim`` dimensions, else ModelError."""
    import torch

    hint = "pass a .pth written by the official AETHER train.py"
    value = state.get(key)
    if value is None:
        raise ModelError(f"the checkpoint's {where} lacks {key}", hint)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ModelError(f"the checkpoint's {where}.{key} is not a floating-point tensor", hint)
    if ndim is not None and value.dim() != ndim:
        raise ModelError(f"the checkpoint's {where}.{key} has {value.dim()} dimensions, "
                         f"not {ndim}", hint)
    if value.numel() == 0 or not bool(torch.isfinite(value).all()):
        raise ModelError(f"the checkpoint's {where}.{key} is empty or holds NaN or infinite "
                         "values", "the training that wrote it diverged; use another epoch")
    return value


def _hyper(hp: Any, *keys: str, default: Any, kind: type) -> Any:
    """One hyper-parameter of the checkpoint, of ``kind``; ModelError when it is not one."""
    value = _get(hp, *keys, default=None)
    if value is None:
        return default
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(value)
        out = kind(value)
        if kind is float and not math.isfinite(out):
            raise ValueError(value)
    except (TypeError, ValueError):
        raise ModelError(f"the checkpoint's hyper_parameters.{'.'.join(keys)} is "
                         f"{str(value)[:40]!r}, not a {kind.__name__}",
                         "pass a .pth written by the official AETHER train.py") from None
    return out


#: TrainConfig field <- where the reference's hyper_parameters hold it, and its type
FROM_HYPER: dict[str, tuple[tuple[str, ...], type]] = {
    "epochs": (("train", "epochs"), int), "batch_size": (("train", "batch_size"), int),
    "lr": (("model", "lr"), float), "weight_decay": (("model", "weight_decay"), float),
    "lr_min_ratio": (("train", "eta_min_ratio"), float), "seed": (("data", "split_seed"), int),
    "test_fraction": (("data", "test_ratio"), float),
    "val_fraction": (("data", "val_ratio"), float)}
#: aether's own training settings, which a reference checkpoint cannot state
NOT_IN_REFERENCE = ("split", "block_m", "patience", "min_epochs_fraction")
UNKNOWN = "unknown"
#: a text model a checkpoint may name: an ``org/name`` hub id (no path), or an OpenAI model
_TEXT_NAME = re.compile(r"(openai:[A-Za-z0-9._-]+(:\d+)?|[A-Za-z0-9][A-Za-z0-9._-]*"
                        r"(/[A-Za-z0-9][A-Za-z0-9._-]*)?)")


def import_checkpoint(path: Path, city_dir: Path, run_name: str, *,
                      text_model: str | None = None, overwrite: bool = False) -> Path:
    """Write ``<city_dir>/models/<run_name>/`` from a reference checkpoint; returns it.

    Holds the data directory's lock; an existing run is replaced only with ``overwrite``
    (the new one is built beside it and renamed into place, as ``aether train`` does).
    """
    model, config = reference_model(path, city_dir, text_model=text_model)
    store = CityStore.at(city_dir)
    run, work = store.model(run_name), store.model_partial(run_name)
    with store.locked():
        if run.exists() and not overwrite:
            raise ModelError(f"run {run_name!r} already exists in {run.parent}",
                             "pick another --run name, or pass --overwrite to replace it")
        shutil.rmtree(work, ignore_errors=True)
        save_weights(model.state_dict(), work / WEIGHTS_FILE,
                     {"config_hash": config["config_hash"]})
        write_json(config, work / CONFIG_FILE)
        publish_run(work, run)
    _warn_if_not_final(config["provenance"], Path(path).name)
    log.info("imported %s (epoch %s) as %s", Path(path).name,
             config["provenance"]["epoch"], run)
    return run


def _warn_if_not_final(facts: dict[str, Any], name: str) -> None:
    epoch, epochs = facts["epoch"], facts["epochs"]
    if epoch == UNKNOWN or epochs == UNKNOWN:
        log.warning("%s does not say which epoch it is from (epoch %s of %s): it may not be "
                    "the final model", name, epoch, epochs)
    elif epoch < epochs:
        log.warning("%s is from epoch %d of %d, not the final epoch", name, epoch, epochs)


def checkpoint_facts(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What the checkpoint itself states about its training; ``unknown`` where it is silent
    (never aether's defaults in its place)."""
    hp = ckpt.get("hyper_parameters") or {}
    facts: dict[str, Any] = {
        field: _hyper(hp, *keys, default=UNKNOWN, kind=kind)
        for field, (keys, kind) in FROM_HYPER.items()}
    facts["epoch"] = _hyper(ckpt, "epoch", default=UNKNOWN, kind=int)
    for field in ("epochs", "batch_size", "epoch"):
        if facts[field] != UNKNOWN and facts[field] < 1:
            raise ModelError(f"the checkpoint's {field} is {facts[field]}, not a count",
                             "pass a .pth written by the official AETHER train.py")
    for field in ("lr", "weight_decay", "lr_min_ratio", "test_fraction", "val_fraction"):
        v = facts[field]
        if v != UNKNOWN and not (0 <= v < (math.inf if field == "lr" else 1.0 + 1e-9)
                                 and (field != "lr" or v > 0)):
            raise ModelError(f"the checkpoint's {field} is {v:g}, which no training uses",
                             "pass a .pth written by the official AETHER train.py")
    return facts


def _checked_text_model(name: str) -> str:
    """A text model named by the checkpoint (not by the user): a hub id or OpenAI model,
    never a path (``../x`` would load whatever lies there)."""
    if ".." in name or not _TEXT_NAME.fullmatch(name):
        raise ModelError(f"the checkpoint names the text model {name[:60]!r}, which is not a "
                         "model id", "pass --text-model NAME to say which text model it used")
    return name


def reference_model(path: Path, city_dir: Path | None = None, *,
                    text_model: str | None = None) -> tuple[AetherModel, dict[str, Any]]:
    """The model of a reference checkpoint and the run config that describes it."""
    import torch

    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, not a torch file, or pickled code (refused)
        raise ModelError(f"cannot read checkpoint {path}: {type(e).__name__}",
                         "pass a .pth written by the official AETHER train.py") from e
    if not isinstance(ckpt, dict):
        raise ModelError(f"{path} is not a checkpoint dictionary", "pass the .pth file itself")
    state = map_state(ckpt)
    hp = ckpt.get("hyper_parameters") or {}
    hidden, out_dim = (int(state["ae_proj.0.weight"].shape[0]),
                       int(state["ae_mlp.2.weight"].shape[0]))
    if int(state["ae_mlp.0.weight"].shape[0]) != hidden:
        raise ModelError("the checkpoint's two AE hidden layers differ in size",
                         "aether's head has one hidden size; this checkpoint does not fit")
    facts = checkpoint_facts(ckpt)
    tau = (_hyper(hp, "model", "tau_xt", default=None, kind=float)
           or _hyper(ckpt, "temps", "tau_xt", default=None, kind=float) or 0.07)
    pix, aug = (_hyper(hp, "data", "pix_radius", default=4, kind=int),
                _hyper(hp, "data", "aug_pix_radius", default=9, kind=int))
    lam = _hyper(hp, "model", "lambda", default=0.2, kind=float)
    if not (tau > 0 and lam >= 0 and 0 <= pix < aug <= 249):
        raise ModelError(f"the checkpoint's settings do not fit a model: tau_xt {tau:g}, "
                         f"lambda {lam:g}, pix_radius {pix}, aug_pix_radius {aug}",
                         "tau_xt > 0, lambda >= 0, 0 <= pix_radius < aug_pix_radius "
                         "(4 and 9 shipped)")
    cfg = TrainConfig(batching="drop_last", normalize_input=True,
                      base_radius_m=square_radius(pix), aug_radius_m=square_radius(aug),
                      hidden_dim=hidden, out_dim=out_dim, temperature=tau,
                      multiscale_weight=lam, tf32=True,  # the reference always asks for it
                      text_model=text_model or _checked_text_model(reference_text_model(hp)))
    text_dim = int(state["text_proj.weight"].shape[1])
    hyper = {**hyperparameters(cfg), **{k: facts[k] for k in FROM_HYPER},
             **dict.fromkeys(NOT_IN_REFERENCE, UNKNOWN)}
    config: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "preset": "reference",
        "hyperparameters": hyper,
        "model": model_section(cfg, text_dim),
        "city": city_dir.parent.name if city_dir else None,
        "year": year_of(city_dir) if city_dir else None,
        "base_radius_m": cfg.base_radius_m,
        "aug_radius_m": cfg.aug_radius_m,
        "text_model": cfg.text_model,
        "input_schema": {"ae_columns": list(BANDS), "ae_dim": len(BANDS), "text_dim": text_dim},
        "provenance": {"imported_from": "inwind0212/AETHER checkpoint", "file": path.name,
                       "sha256": sha256_file(path), "epoch": facts["epoch"],
                       "epochs": facts["epochs"], "imported": now(), **software(),
                       "cfg_hash": ckpt.get("cfg_hash"),
                       "pix_radius": pix, "aug_pix_radius": aug},
    }
    config["config_hash"] = config_hash(config)
    model = build_model(config)
    try:
        model.load_state_dict({**state, "log_scale": model.log_scale}, strict=True)
    except RuntimeError as e:
        raise ModelError(f"checkpoint {path.name} does not fit the AETHER heads: "
                         f"{str(e).splitlines()[-1][:120]}", "pass an AEProj/TextProj checkpoint"
                         ) from e
    model.eval()
    return model, config


def load_model(path: Path) -> tuple[AetherModel, dict[str, Any]]:
    """The model and config of a run directory made by ``aether train``, or of an official
    AETHER ``.pth`` checkpoint read as it is (the one place that tells them apart)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".pth":
        return reference_model(path)
    return load_run_model(path)
