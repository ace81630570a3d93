"""An official-format AETHER checkpoint (written here, in the reference's layout and names)
imported with the real CLI, encoding the sample city exactly as the same weights trained in
aether do; a checkpoint carrying pickled code is refused."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from support import require

torch = require("torch")

from reference_checkpoint import reference_state, save, small_state  # noqa: E402

from aether.embeddings import get_source  # noqa: E402
from aether.io.store import CityStore  # noqa: E402
from aether.io.tables import read_json, sort_poi_embeddings, write_parquet  # noqa: E402
from aether.ml.train import load_model, train  # noqa: E402


@pytest.fixture(scope="module")
def square_city(sample_city, sample_extract, tmp_path_factory):
    """The sample city's POIs with 9 x 9 and 19 x 19 px windows, and a 100 m grid."""
    root = tmp_path_factory.mktemp("sq")
    city = root / "helsinki" / "2024"
    pois = pd.read_parquet(sample_extract / "pois.parquet")
    import geopandas as gpd

    pois = gpd.read_parquet(sample_extract / "pois.parquet")
    src = get_source("cog", tiles=sample_city.tiles)
    write_parquet(pois, city / "pois.parquet")
    write_parquet(sort_poi_embeddings(src.point_means(pois, [-45.0, -95.0], 2024)),
                  city / "poi_embeddings.parquet")
    write_parquet(src.grid(sample_city.place, 2024, "100m"), CityStore.at(city).grid("100m"))
    return root, city


def _reference_checkpoint(state: dict, path) -> None:
    ae, txt = reference_state(state)
    save(path, ae, txt, epoch=2, cfg_hash="0123456789ab",
         temps={"tau_xt": 0.07, "tau_ii": 0.07},
         hyper_parameters={
             "data": {"pix_radius": 4, "aug_pix_radius": 9, "feat_mode": "pixel"},
             "model": {"hidden_dim": 256, "out_dim": 128, "lambda": 0.2,
                       "tau_xt": 0.07, "tau_img": 0.07},
             "text": {"backend": "hf", "emb_dim": 384,
                      "hf_model": "sentence-transformers/all-MiniLM-L6-v2"}})


def test_import_round_trip_encodes_like_aether(square_city, cli, tmp_path):
    root, city = square_city
    run = train(city, preset="paper", run_name="native", epochs=2)
    config = read_json(run / "config.json")
    assert (config["base_radius_m"], config["aug_radius_m"]) == (-45.0, -95.0)  # the squares
    model, _ = load_model(run)
    ckpt = tmp_path / "singapore_last.pth"
    _reference_checkpoint(model.state_dict(), ckpt)

    r = cli("import-checkpoint", str(ckpt), "--city", "Helsinki", "--run", "imported",
            "--data-dir", str(root))
    assert r.returncode == 0, r.stderr
    imported = read_json(city / "models" / "imported" / "config.json")
    assert imported["provenance"]["file"] == ckpt.name and imported["provenance"]["epoch"] == 2
    assert imported["base_radius_m"] == -45.0 and imported["model"]["normalize_input"]
    for name in ("native", "imported"):
        r = cli("encode", "--city", "Helsinki", "--model", name, "--data-dir", str(root))
        assert r.returncode == 0, r.stderr
    cols = [f"E{i:03d}" for i in range(128)]
    for table in ("pois.parquet", "grid_100m.parquet"):
        a = pd.read_parquet(city / "aether" / "native" / table)
        b = pd.read_parquet(city / "aether" / "imported" / table)
        assert len(a) == len(b) > 100
        va, vb = a[cols].to_numpy(), b[cols].to_numpy()
        assert np.isfinite(va).any() and np.array_equal(va, vb, equal_nan=True)
    # Model loading straight from the .pth (no import) is the same head
    direct, cfg = load_model(ckpt)
    x = torch.randn(9, 64)
    assert torch.equal(direct.encode_ae(x), model.encode_ae(x))
    assert cfg["text_model"] == "sentence-transformers/all-MiniLM-L6-v2"


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoint_with_pickled_code_is_refused(square_city, cli, tmp_path):
    root, city = square_city
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        torch.save({"ae_state_dict": _Payload()}, f, pickle_module=pickle)
    r = cli("import-checkpoint", str(bad), "--city", "Helsinki", "--run", "evil",
            "--data-dir", str(root))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot read checkpoint" in r.stderr
    assert "pickled code ran" not in r.stdout + r.stderr
    assert not (city / "models" / "evil").exists()


def _small_checkpoint(path, **extra) -> None:
    """A reference-format checkpoint of random heads, with ``extra`` top-level entries."""
    save(path, *reference_state(small_state()), **extra)


LONDON_HP = {"data": {"pix_radius": 4, "aug_pix_radius": 9, "split_seed": 42,
                      "val_ratio": 0.0, "test_ratio": 0.0},
             "model": {"lr": 1e-3, "weight_decay": 1e-4, "lambda": 0.2, "tau_xt": 0.07},
             "train": {"batch_size": 512, "epochs": 100, "eta_min_ratio": 0.01}}


def test_import_states_the_checkpoints_facts_not_aethers_defaults(tmp_path, cli):
    """london_last.pth's case: epoch 9 of 100 imports with a warning, and the run's config
    holds the checkpoint's epochs, seed and fractions; where it is silent, ``unknown``."""
    data = tmp_path / "data"
    _small_checkpoint(tmp_path / "london_last.pth", epoch=9, hyper_parameters=LONDON_HP)
    r = cli("import-checkpoint", str(tmp_path / "london_last.pth"), "--city", "Helsinki",
            "--run", "london", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert "london_last.pth is from epoch 9 of 100, not the final epoch" in r.stderr
    config = read_json(data / "helsinki" / "2024" / "models" / "london" / "config.json")
    hyper, facts = config["hyperparameters"], config["provenance"]
    assert (facts["epoch"], facts["epochs"]) == (9, 100)
    assert (hyper["epochs"], hyper["seed"], hyper["test_fraction"], hyper["batch_size"]) == (
        100, 42, 0.0, 512)
    assert hyper["patience"] == "unknown" and hyper["split"] == "unknown"
    assert facts["aether"] and facts["torch"] == torch.__version__ and facts["imported"]

    # silent checkpoint: unknown, never 100 epochs / seed 42 / test_fraction 0.1
    _small_checkpoint(tmp_path / "bare.pth", hyper_parameters={"data": {"pix_radius": 4}})
    r = cli("import-checkpoint", str(tmp_path / "bare.pth"), "--city", "Helsinki",
            "--run", "bare", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert "does not say which epoch it is from" in r.stderr
    hyper = read_json(data / "helsinki" / "2024" / "models" / "bare" / "config.json")[
        "hyperparameters"]
    for key in ("epochs", "seed", "test_fraction", "lr", "batch_size"):
        assert hyper[key] == "unknown", key


def test_import_refuses_to_replace_a_run_and_waits_for_no_one(tmp_path, cli):
    """An existing run is replaced only with --overwrite; another process's data lock
    stops the import at once, with one line."""
    from aether.io.store import data_lock

    data = tmp_path / "data"
    ckpt = tmp_path / "a.pth"
    _small_checkpoint(ckpt, epoch=100, hyper_parameters=LONDON_HP)
    args = ("import-checkpoint", str(ckpt), "--city", "Helsinki", "--run", "ref",
            "--data-dir", str(data))
    assert cli(*args).returncode == 0
    weights = data / "helsinki" / "2024" / "models" / "ref" / "model.safetensors"
    first = weights.read_bytes()
    _small_checkpoint(ckpt, epoch=100, hyper_parameters={**LONDON_HP, "model": {
        **LONDON_HP["model"], "tau_xt": 0.05}})
    r = cli(*args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "run 'ref' already exists" in r.stderr and "--overwrite" in r.stderr
    assert weights.read_bytes() == first
    with data_lock(data):
        r = cli(*args, "--overwrite")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert weights.read_bytes() == first
    r = cli(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    config = read_json(weights.parent / "config.json")
    assert config["hyperparameters"]["temperature"] == 0.05
