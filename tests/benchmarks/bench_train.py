"""Training throughput: aether's ``paper`` preset beside the official AETHER code, same pairs.

    .venv/bin/python tests/benchmarks/bench_train.py [--pairs 100000] [--epochs 4] [--repeat 3]
        [--reference /work/.mirror/inwind0212+AETHER/repo]

The reference (``inwind0212/AETHER``, a bare git directory fetched beside the project, never
committed) is exported to a temporary directory and its own ``train.py`` runs with its shipped
settings (batch 512, ``num_workers`` 4, torch's default threads) on the same synthetic pairs:
its caches are filled through its own cache-key functions with the L2-normalised 64-d means
and the text vectors, so it trains without reading a raster. aether trains the same pairs
with the paper preset, ``threads=0`` (measured at start) and one checkpoint at the end.
Printed: pairs/s of each (fastest epoch after the first of the fastest of ``--repeat`` runs,
interleaved, as other load only adds time), their ratio, both loss curves, and the machine's
load average (8 engineers share 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import measured_at, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_data import write_synthetic_city

MIRROR = Path("/work/.mirror/inwind0212+AETHER/repo")
FILES = ("train.py", "model.py", "dataio.py", "config.yaml")


def _export_reference(git_dir: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        blob = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{name}"],
                              capture_output=True, check=True).stdout
        (out / name).write_bytes(blob)
    return out


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-6, None)).astype(np.float32)


def _prepare_reference(ref: Path, work: Path, pairs: object, epochs: int) -> Path:
    """The reference's config and filled caches (through its own key functions)."""
    import geopandas as gpd
    import yaml

    sys.path.insert(0, str(ref))
    import train as ref_train  # the reference's train.py (not aether's)

    cfg = yaml.safe_load((ref / "config.yaml").read_text())
    work.mkdir(parents=True, exist_ok=True)
    poi_path, aef_tif = work / "pois.geojson", work / "aef.tif"
    poi_path.write_text("{}")  # stat()-ed for its cache keys only
    aef_tif.write_bytes(b"")
    crs = "EPSG:32635"
    cfg["data"].update(poi_path=str(poi_path), aef_tif=str(aef_tif), crs=crs,
                       val_ratio=0.0, test_ratio=0.0)
    cfg["text"].update(backend="hf", emb_dim=int(pairs.text_vectors.shape[1]))
    cfg["train"].update(device="cpu", epochs=epochs, batch_size=512, num_workers=4)
    cfg["logging"].update(cache_dir=str(work / "cache"))
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    from omegaconf import OmegaConf

    c = OmegaConf.load(cfg_path)
    sig = ref_train._sig_file(c.data.poi_path)
    poi = ref_train.get_poi_cache_paths(c.logging.cache_dir, {"poi_sig": sig, "crs": crs})
    text = ref_train.get_text_cache_paths(c.logging.cache_dir, {
        "poi_sig": sig, "text_backend": c.text.backend, "hf_model": c.text.hf_model,
        "openai_model": c.text.openai_model, "text_dim": int(c.text.emb_dim)})
    area_key = {"aef_sig": ref_train._sig_file(c.data.aef_tif), "crs": crs,
                "feat_mode": c.data.feat_mode, "pix_radius": int(c.data.pix_radius)}
    area = ref_train.get_area_cache_paths(c.logging.cache_dir, area_key)
    area_aug = ref_train.get_area_cache_paths(
        c.logging.cache_dir, {**area_key, "pix_radius": int(c.data.aug_pix_radius)})
    n = len(pairs.base)
    gpd.GeoDataFrame({"name": ["p"] * n, "description": ["d"] * n},
                     geometry=gpd.points_from_xy(pairs.xy[:, 0], pairs.xy[:, 1]),
                     crs=crs).to_parquet(poi["parquet"], index=False)
    np.save(text["npy"], pairs.text_vectors[pairs.text_id].astype(np.float32))
    np.save(area["npy"], _unit(pairs.base))
    np.save(area_aug["npy"], _unit(pairs.aug))
    return cfg_path


def run_reference(ref: Path, cfg_path: Path, n: int) -> dict:
    """Its train.py as shipped; epochs timed by the moments its epoch lines appear."""
    proc = subprocess.Popen([sys.executable, "train.py", "--cfg", str(cfg_path)], cwd=ref,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    t0 = time.perf_counter()
    marks, losses = [t0], []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("[RUN]"):
            marks = [time.perf_counter()]
        if line.startswith("Epoch ") and "train loss" in line:
            marks.append(time.perf_counter())
            losses.append(float(line.split("train loss")[1].split("|")[0]))
    if proc.wait() != 0:
        raise SystemExit("the reference run failed")
    secs = np.diff(marks)
    seen = (n // 512) * 512
    return {"epoch_s": float(min(secs[1:]) if len(secs) > 1 else secs[0]),
            "pairs_per_s": seen / float(min(secs[1:]) if len(secs) > 1 else secs[0]),
            "losses": losses}


def run_aether(city: Path, epochs: int, n: int) -> dict:
    from aether.io.tables import read_json
    from aether.ml.train import METRICS_FILE, SUMMARY_FILE, RunOptions, train

    run = train(city, preset="paper", run_name="bench", epochs=epochs, test_fraction=0.0,
                options=RunOptions(overwrite=True, threads=0, checkpoint_every=epochs))
    with open(run / METRICS_FILE) as f:
        rows = list(csv.DictReader(f))
    secs = [float(r["seconds"]) for r in rows]
    steady = min(secs[1:]) if len(secs) > 1 else secs[0]
    return {"epoch_s": steady, "pairs_per_s": (n // 512) * 512 / steady,
            "losses": [float(r["loss"]) for r in rows],
            "threads": read_json(run / SUMMARY_FILE)["threads"]}


# (m, k, n) of the 16 matrix products of one paper-preset step at batch 512, as
# aether.ml.step.train_step runs them: 6 forward, 10 backward
STEP_PRODUCTS = (
    (1024, 64, 384), (1024, 256, 128), (1024, 128, 256), (1024, 256, 128), (512, 384, 128),
    (1024, 128, 512),
    (512, 1024, 128), (1024, 512, 128), (128, 512, 384), (128, 1024, 256), (1024, 128, 256),
    (256, 1024, 128), (1024, 256, 128), (128, 1024, 256), (1024, 128, 256), (384, 1024, 64))


def products_floor(threads: int, repeat: int = 200) -> dict:
    """The step's matrix products alone, on contiguous operands (the fastest of ``repeat``):
    no training loop on this machine can take a step in less."""
    import torch

    torch.set_num_threads(threads)
    ops = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in STEP_PRODUCTS]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for a, b in ops:
            torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    flop = 2 * sum(m * k * n for m, k, n in STEP_PRODUCTS)
    return {"step_ms": best * 1e3, "pairs_per_s": 512 / best, "gflop": flop / 1e9,
            "gflop_per_s": flop / best / 1e9, "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=4,
                    help="the fastest epoch after the first counts, for both")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each, interleaved; the fastest counts")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train.json")
    ap.add_argument("--reference", type=Path, default=MIRROR,
                    help="bare git dir of inwind0212/AETHER (fetched beside the project)")
    args = ap.parse_args()
    if not (args.reference / "HEAD").is_file():
        raise SystemExit(f"no reference at {args.reference}: fetch inwind0212/AETHER first")
    from aether.ml.train import load_pairs, resolve_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    city = write_synthetic_city(tmp, args.pairs, seed=1)
    pairs = load_pairs(city, resolve_config("paper", args.epochs, 42, test_fraction=0.0))
    ref = _export_reference(args.reference, tmp / "reference")
    cfg = _prepare_reference(ref, tmp / "ref-work", pairs, args.epochs)
    load0 = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {"aether": [], "reference": []}
    for _ in range(args.repeat):  # interleaved: a burst of other load hits both alike
        runs["aether"].append(run_aether(city, args.epochs, len(pairs.base)))
        runs["reference"].append(run_reference(ref, cfg, len(pairs.base)))
    a, r = (max(runs[k], key=lambda m: m["pairs_per_s"]) for k in ("aether", "reference"))
    floor = products_floor(a["threads"])
    load1 = os.getloadavg()[0]
    print(f"{len(pairs.base)} pairs, batch 512 drop_last, {args.epochs} epochs, best of "
          f"{args.repeat} interleaved runs; load average {load0:.1f} -> {load1:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"{'loop':<34}{'pairs/s':>10}{'s/epoch':>10}  epoch losses")
    for label, m in ((f"aether paper preset ({a['threads']} threads)", a),
                     ("reference train.py (4 workers)", r)):
        curve = " ".join(f"{x:.4f}" for x in m["losses"])
        print(f"{label:<34}{m['pairs_per_s']:>10.0f}{m['epoch_s']:>10.2f}  {curve}")
    for k, v in runs.items():
        print(f"  {k} runs, pairs/s: " + ", ".join(f"{m['pairs_per_s']:.0f}" for m in v))
    epoch_s = floor["step_ms"] * (len(pairs.base) // 512) / 1e3
    print(f"{'floor: the step products alone':<34}{floor['pairs_per_s']:>10.0f}{epoch_s:>10.2f}"
          f"  ({floor['gflop']:.2f} GFLOP a step in {floor['step_ms']:.2f} ms = "
          f"{floor['gflop_per_s']:.0f} GFLOP/s)")
    print(f"ratio aether / reference: {a['pairs_per_s'] / r['pairs_per_s']:.2f}x; "
          f"aether / floor: {a['pairs_per_s'] / floor['pairs_per_s']:.2f}; "
          f"floor / reference: {floor['pairs_per_s'] / r['pairs_per_s']:.2f}x")
    diff = np.abs(np.array(a["losses"]) - np.array(r["losses"][:len(a["losses"])]))
    print(f"loss curves: max |diff| {diff.max():.4f} (same initial weights for the seed; the "
          "shuffles differ, so equal within batch noise, not bit-equal)")
    write_results(args.out, {
        "pairs": len(pairs.base), "epochs": args.epochs, "load_start": round(load0, 1),
        "repeat": args.repeat, "aether": a, "reference": r,
        "runs": {k: [round(m["pairs_per_s"]) for m in v] for k, v in runs.items()},
        "ratio": a["pairs_per_s"] / r["pairs_per_s"], "floor": floor,
        "max_loss_diff": float(diff.max()), **measured_at()})


if __name__ == "__main__":
    main()
