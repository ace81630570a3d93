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

import dataclasses
import logging
import math
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
    save_weights,
)
from aether.ml.checkpoints import (
    load_model as load_run_model,
)
from aether.ml.config import TrainConfig
from aether.ml.data import year_of
from aether.ml.text import DEFAULT_TEXT_MODEL

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


def import_checkpoint(path: Path, city_dir: Path, run_name: str, *,
                      text_model: str | None = None) -> Path:
    """Write ``<city_dir>/models/<run_name>/`` from a reference checkpoint; returns it."""
    model, config = reference_model(path, city_dir, text_model=text_model)
    run = CityStore.at(city_dir).model(run_name)
    save_weights(model.state_dict(), run / WEIGHTS_FILE, {"config_hash": config["config_hash"]})
    write_json(config, run / CONFIG_FILE)
    log.info("imported %s (epoch %s) as %s", Path(path).name,
             config["provenance"]["epoch"], run)
    return run


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
                      multiscale_weight=lam,
                      text_model=text_model or reference_text_model(hp))
    text_dim = int(state["text_proj.weight"].shape[1])
    config: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "preset": "reference",
        "hyperparameters": dataclasses.asdict(cfg),
        "model": model_section(cfg, text_dim),
        "city": city_dir.parent.name if city_dir else None,
        "year": year_of(city_dir) if city_dir else None,
        "base_radius_m": cfg.base_radius_m,
        "aug_radius_m": cfg.aug_radius_m,
        "text_model": cfg.text_model,
        "input_schema": {"ae_columns": list(BANDS), "ae_dim": len(BANDS), "text_dim": text_dim},
        "provenance": {"imported_from": "inwind0212/AETHER checkpoint", "file": path.name,
                       "sha256": sha256_file(path), "epoch": ckpt.get("epoch"),
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
