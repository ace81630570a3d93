"""Training throughput: aether's ``paper`` preset beside the official AETHER code, same pairs.

    .venv/bin/python tests/benchmarks/bench_train.py [--pairs 100000] [--epochs 4] [--repeat 3]
        [--threads 1] [--reference /work/.mirror/inwind0212+AETHER/repo]

The reference part needs the ``bench-reference`` extra (``pip install -e
'.[bench-reference]'``: omegaconf and rioxarray, which the reference imports) and the
reference's git directory; without either it is skipped with a line saying so, and aether and
the floor are measured alone.

The reference (``inwind0212/AETHER``, a bare git directory fetched beside the project, never
committed) is exported to a temporary directory and its own ``train.py`` runs with its shipped
settings (batch 512, ``num_workers`` 4, torch's default threads) on the same synthetic pairs:
its caches are filled through its own cache-key functions with the L2-normalised 64-d means
and the text vectors, so it trains without reading a raster. aether trains the same pairs
with the paper preset on ``--threads`` torch threads (pinned, printed: never picked by
itself under load) and one checkpoint at the end; the reference gets the same count through
``OMP_NUM_THREADS``. Measured in CPU time, which other load does not inflate the way it does
wall time: aether's is this process's (``time.process_time``, all threads) between epoch
ends, the reference's that of its process tree (its loader workers included: ``psutil``,
live and reaped children) between its epoch lines. Printed: pairs per CPU-second of each (the
mean over the epochs after the first, of the least-CPU of ``--repeat`` interleaved runs), wall
pairs/s beside it, their ratio, both loss curves, and the machine's load average.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from results import load_now, measured_at, write_results

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


def _tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of a process and all its children, live or already reaped."""
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            c = child.cpu_times()
            total += c.user + c.system
    return total


def _steady(marks: list[tuple[float, float]], n: int) -> dict:
    """Per-epoch figures from (wall, CPU) at the start and at each epoch's end: the mean over
    the epochs after the first (the first pays for warm-up), in CPU and wall time."""
    wall, cpu = np.diff([m[0] for m in marks]), np.diff([m[1] for m in marks])
    steady = slice(1, None) if len(cpu) > 1 else slice(0, None)
    epoch_cpu, epoch_s = float(cpu[steady].mean()), float(wall[steady].mean())
    seen = (n // 512) * 512
    return {"epoch_cpu_s": epoch_cpu, "pairs_per_cpu_s": seen / epoch_cpu,
            "epoch_s": epoch_s, "pairs_per_s": seen / epoch_s}


def run_reference(ref: Path, cfg_path: Path, n: int, threads: int) -> dict:
    """Its train.py as shipped; epochs marked by the moments its epoch lines appear."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "train.py", "--cfg", str(cfg_path)], cwd=ref,
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1",
                                     "OMP_NUM_THREADS": str(threads)})
        tree = psutil.Process(proc.pid)
        marks: list[tuple[float, float]] = []
        losses = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("[RUN]"):
                marks = [(time.perf_counter(), _tree_cpu(tree))]
            if line.startswith("Epoch ") and "train loss" in line:
                marks.append((time.perf_counter(), _tree_cpu(tree)))
                losses.append(float(line.split("train loss")[1].split("|")[0]))
        if proc.wait() != 0:
            err.seek(0)
            raise SystemExit(f"the reference run failed ({proc.returncode}):\n{err.read()}")
    return {**_steady(marks, n), "losses": losses, "threads": threads}


def run_aether(city: Path, epochs: int, n: int, threads: int) -> dict:
    from aether.io.tables import read_json
    from aether.ml.train import METRICS_FILE, SUMMARY_FILE, RunOptions, train

    marks = [(time.perf_counter(), time.process_time())]
    run = train(city, preset="paper", run_name="bench", epochs=epochs, test_fraction=0.0,
                options=RunOptions(overwrite=True, threads=threads, checkpoint_every=epochs,
                                   on_epoch=lambda _row: marks.append(
                                       (time.perf_counter(), time.process_time()))))
    with open(run / METRICS_FILE) as f:
        rows = list(csv.DictReader(f))
    return {**_steady(marks, n), "losses": [float(r["loss"]) for r in rows],
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

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    ops = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in STEP_PRODUCTS]
    best = best_cpu = float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        for a, b in ops:
            torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    torch.set_num_threads(previous)
    flop = 2 * sum(m * k * n for m, k, n in STEP_PRODUCTS)
    return {"step_ms": best * 1e3, "step_cpu_ms": best_cpu * 1e3, "pairs_per_s": 512 / best,
            "pairs_per_cpu_s": 512 / best_cpu, "gflop": flop / 1e9,
            "gflop_per_s": flop / best / 1e9, "threads": threads}


def reference_missing(path: Path) -> str | None:
    """Why the reference cannot run here (None: it can)."""
    if not (path / "HEAD").is_file():
        return f"no reference at {path}: fetch inwind0212/AETHER first"
    missing = [m for m in ("omegaconf", "rioxarray") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"{', '.join(missing)} not installed: pip install -e '.[bench-reference]' "
                "(the reference's own imports)")
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=4,
                    help="the mean of the epochs after the first counts, for both")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each, interleaved; the least CPU counts")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of both (pinned, not picked at start; 1: on a shared "
                         "machine a second thread spins for a core that is not free)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train.json")
    ap.add_argument("--reference", type=Path, default=MIRROR,
                    help="bare git dir of inwind0212/AETHER (fetched beside the project)")
    args = ap.parse_args()
    skip = reference_missing(args.reference)
    if skip:
        print(f"reference skipped: {skip}")
    from aether.ml.train import load_pairs, resolve_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    city = write_synthetic_city(tmp, args.pairs, seed=1)
    pairs = load_pairs(city, resolve_config("paper", args.epochs, 42, test_fraction=0.0))
    cfg = None
    if not skip:
        ref = _export_reference(args.reference, tmp / "reference")
        cfg = _prepare_reference(ref, tmp / "ref-work", pairs, args.epochs)
    load0 = load_now()
    print(f"torch threads: {args.threads} for aether and the floor (OMP_NUM_THREADS for the "
          "reference)")
    runs: dict[str, list[dict]] = {"aether": []} if skip else {"aether": [], "reference": []}
    for _ in range(args.repeat):  # interleaved: a burst of other load hits both alike
        runs["aether"].append(run_aether(city, args.epochs, len(pairs.base), args.threads))
        if cfg is not None:
            runs["reference"].append(run_reference(ref, cfg, len(pairs.base), args.threads))
    best = {k: max(v, key=lambda m: m["pairs_per_cpu_s"]) for k, v in runs.items()}
    a, r = best["aether"], best.get("reference")
    floor = products_floor(args.threads)
    print(f"{len(pairs.base)} pairs, batch 512 drop_last, {args.epochs} epochs, least CPU of "
          f"{args.repeat} interleaved runs; load average {load0:.1f} -> {load_now():.1f} on "
          f"{os.cpu_count()} cores; CPU time of each process (the reference's with its loader "
          "workers)")
    print(f"{'loop':<36}{'pairs/CPU-s':>12}{'CPU s/epoch':>12}{'pairs/s':>9}  epoch losses")
    shown = [(f"aether paper preset ({a['threads']} threads)", a)]
    if r is not None:
        shown.append((f"reference train.py (4 workers, {r['threads']} threads)", r))
    for label, m in shown:
        curve = " ".join(f"{x:.4f}" for x in m["losses"])
        print(f"{label:<36}{m['pairs_per_cpu_s']:>12.0f}{m['epoch_cpu_s']:>12.2f}"
              f"{m['pairs_per_s']:>9.0f}  {curve}")
    for k, v in runs.items():
        print(f"  {k} runs, pairs per CPU-s: " + ", ".join(f"{m['pairs_per_cpu_s']:.0f}"
                                                          for m in v))
    epoch_cpu = floor["step_cpu_ms"] * (len(pairs.base) // 512) / 1e3
    print(f"{'floor: the step products alone':<36}{floor['pairs_per_cpu_s']:>12.0f}"
          f"{epoch_cpu:>12.2f}{floor['pairs_per_s']:>9.0f}  ({floor['gflop']:.2f} GFLOP a step "
          f"in {floor['step_cpu_ms']:.2f} ms CPU, {floor['step_ms']:.2f} ms wall)")
    res: dict[str, object] = {
        "pairs": len(pairs.base), "epochs": args.epochs, "load_start": load0,
        "repeat": args.repeat, "threads": args.threads, "aether": a, "reference": r,
        "reference_skipped": skip, "floor": floor,
        "runs": {k: [round(m["pairs_per_cpu_s"]) for m in v] for k, v in runs.items()}}
    if r is not None:
        diff = np.abs(np.array(a["losses"]) - np.array(r["losses"][:len(a["losses"])]))
        res.update(ratio=a["pairs_per_cpu_s"] / r["pairs_per_cpu_s"],
                   max_loss_diff=float(diff.max()))
        print(f"ratio aether / reference (pairs per CPU-s): {res['ratio']:.2f}x; aether / "
              f"floor: {a['pairs_per_cpu_s'] / floor['pairs_per_cpu_s']:.2f}")
        print(f"loss curves: max |diff| {diff.max():.4f} (same initial weights for the seed; "
              "the shuffles differ, so equal within batch noise, not bit-equal)")
    write_results(args.out, {**res, **measured_at()})


if __name__ == "__main__":
    main()
