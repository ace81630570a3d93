"""Checkpoints in the official AETHER code's format (``ae_state_dict``/``txt_state_dict``),
made from aether's own heads: what ``aether import-checkpoint`` tests feed it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: aether's head names -> the reference's (model.py: AEProj.proj / shortcut / gate / post_mlp
#: with a Dropout at post_mlp.2; TextProj.proj)
TO_REFERENCE = {"ae_mlp.0": "proj.0", "ae_mlp.2": "proj.2", "ae_shortcut": "shortcut",
                "ae_proj.0": "post_mlp.0", "ae_proj.2": "post_mlp.3"}


def reference_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ae_state_dict, txt_state_dict) of an ``AetherModel`` state dict."""
    ae = {f"{TO_REFERENCE[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v
          for k, v in state.items() if k.rsplit(".", 1)[0] in TO_REFERENCE}
    ae["gate"] = state["ae_gate"].reshape(1)
    txt = {"proj.weight": state["text_proj.weight"], "proj.bias": state["text_proj.bias"]}
    return ae, txt


def small_state() -> dict[str, Any]:
    """The state of small random heads (seed 0): 64 → 32 → 16, text 384 → 16."""
    import torch

    from aether.ml.heads import AetherModel

    torch.manual_seed(0)
    return AetherModel(ae_dim=64, text_dim=384, hidden_dim=32, out_dim=16,
                       gate_init=-4.0).state_dict()


def save(path: Path, ae: dict[str, Any], txt: dict[str, Any], **extra: Any) -> None:
    """Write the checkpoint, with ``extra`` top-level entries (epoch, hyper_parameters…)."""
    import torch

    torch.save({"ae_state_dict": ae, "txt_state_dict": txt, **extra}, path)
