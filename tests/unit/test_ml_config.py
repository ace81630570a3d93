"""Training options added with the train.py split: the schedule floor follows lr, the head's
sizes come from the run config, the reference's batching, resume checkpoints every k epochs,
and threads measured at start without touching the run."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from support import require

torch = require("torch")

from train_data import write_synthetic_city  # noqa: E402

from aether.io.tables import sha256_file  # noqa: E402
from aether.ml.encode import ModelRun, apply_ae  # noqa: E402
from aether.ml.fit import batches, matmul_precision, pick_threads  # noqa: E402
from aether.ml.heads import AetherModel  # noqa: E402
from aether.ml.train import (  # noqa: E402
    CHECKPOINT_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    RunOptions,
    load_model,
    resolve_config,
    train,
)

FAST = {"epochs": 3, "batch_size": 64}


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return write_synthetic_city(tmp_path_factory.mktemp("data"), 300)


def _metrics(run):
    with open(run / METRICS_FILE) as f:
        return list(csv.DictReader(f))


def test_schedule_floor_is_one_percent_of_lr(city):
    assert resolve_config("paper", None, 42, lr=1e-2).lr_min == pytest.approx(1e-4)
    run = train(city, preset="paper", run_name="lr", lr=1e-2, **FAST)
    assert float(_metrics(run)[-1]["lr"]) == pytest.approx(1e-4, rel=1e-6)


def test_head_sizes_come_from_the_run_config(city):
    run = train(city, preset="default", run_name="small", hidden_dim=32, out_dim=16, **FAST)
    model, config = load_model(run)
    assert (config["model"]["hidden_dim"], config["model"]["out_dim"]) == (32, 16)
    z = apply_ae(ModelRun("small", run, model, config),
                 np.vstack([np.full((1, 64), np.nan), np.ones((2, 64))]))
    assert z.shape == (3, 16) and np.isnan(z[0]).all()
    assert np.allclose(np.linalg.norm(z[1:], axis=1), 1, atol=1e-5)


def test_reference_batching_drops_the_remainder():
    cfg = resolve_config("paper", None, 42)
    sizes = [len(b) for b in batches(torch.randperm(1938), cfg)]
    assert sizes == [512, 512, 512]  # the reference: 1,938 pairs -> 3 x 512
    even = resolve_config("default", None, 42)
    assert [len(b) for b in batches(torch.randperm(1938), even)] == [485, 485, 484, 484]


def test_checkpoint_every_k_epochs_resumes_to_the_same_bytes(city):
    whole = train(city, preset="paper", run_name="k-whole", seed=5, epochs=4, batch_size=64)

    def stop_after_three(row):
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(city, preset="paper", run_name="k-cut", seed=5, epochs=4, batch_size=64,
              options=RunOptions(checkpoint_every=2, on_epoch=stop_after_three))
    cut = city / "models" / "k-cut"
    building = city / "models" / ".k-cut.partial"  # a model is visible only when complete
    ckpt = torch.load(building / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["epoch"] == 2  # epoch 3 was not checkpointed
    seen = []
    train(city, preset="paper", run_name="k-cut", seed=5, epochs=4, batch_size=64,
          options=RunOptions(checkpoint_every=2, on_epoch=seen.append))
    assert [r["epoch"] for r in seen] == [3, 4]
    assert sha256_file(cut / WEIGHTS_FILE) == sha256_file(whole / WEIGHTS_FILE)


def test_measured_threads_leave_the_model_alone():
    torch.manual_seed(0)
    model = AetherModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = {"base": torch.randn(64, 64), "aug": torch.randn(64, 64),
         "text_id": torch.arange(64), "text_vectors": torch.randn(64, 384),
         "xy": torch.zeros(64, 2)}
    n = pick_threads(model, resolve_config("paper", None, 42), t, torch.arange(64))
    assert n in (1, 2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_presets_resolve_with_windows_from_the_extract() -> None:
    """No window set (None: read from the extract) is valid; a 0 m window is refused."""
    import pytest

    from aether.errors import ConfigError
    from aether.ml.config import resolve_config

    for preset in ("paper", "default"):
        assert resolve_config(preset, 5, 42).epochs == 5
    with pytest.raises(ConfigError, match="0 m is empty"):
        resolve_config("default", 5, 42, base_radius_m=0.0, aug_radius_m=200.0)


def test_paper_preset_trains_on_every_poi_with_tf32_on_cuda():
    paper, default = resolve_config("paper", None, 42), resolve_config("default", None, 42)
    assert (paper.test_fraction, paper.tf32) == (0.0, True)  # as the reference's config.yaml
    assert (default.test_fraction, default.tf32) == (0.1, False)
    assert resolve_config("paper", None, 42, test_fraction=0.1).test_fraction == 0.1


def test_tf32_is_set_on_cuda_only_and_restored():
    before = torch.get_float32_matmul_precision()
    with matmul_precision(torch.device("cuda"), True):
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    for dev, tf32 in ((torch.device("cpu"), True), (torch.device("cuda"), False)):
        with matmul_precision(dev, tf32):
            assert torch.get_float32_matmul_precision() == before
