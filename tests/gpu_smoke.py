"""CUDA smoke check: both presets, 20 steps on CUDA and on CPU from one seed, compared.

    PYTHONPATH=. python tests/gpu_smoke.py [--data-dir DIR] [--steps 20] [--seed 42]

Not collected by pytest (the name does not start with ``test_``) and not run by CI: run it by
hand on any machine with a CUDA GPU. It builds the offline sample city (real Helsinki OSM, a
generated AlphaEarth-format raster) in a temporary directory unless ``--data-dir`` names
one, extracts it, and trains each run twice, ``--device cpu`` and ``--device cuda``, with
the same seed, data and batch order:

* ``default``: float32 on both devices;
* ``paper`` with ``tf32=false``: float32 on both devices;
* ``paper`` as shipped: TF32 matmuls on CUDA (as the reference code), float32 on CPU.

For each it prints the largest difference of the logged epoch losses and of any weight,
and the smallest cosine between the POI vectors the two models give, then checks them
against ``TOLERANCES`` (float32 runs differ only by the order of sums on each device; TF32
keeps 10 bits of mantissa in the matmul products, so its bounds are looser). Exit codes: 0
all within tolerance; 1 a mismatch (the figures above it say which); 77 no usable CUDA
device (one line saying so; the automake/ctest convention for "skipped"). ``--against cpu``
runs the same comparison CPU against CPU, a check of the script itself without a GPU.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

SKIPPED = 77
#: (largest |Δ epoch loss|, largest |Δ weight|, smallest cosine of the POI vectors)
TOLERANCES = {"float32": (1e-3, 1e-3, 0.999), "tf32": (2e-2, 2e-2, 0.99)}
#: name -> (preset, overrides, which tolerance)
RUNS = {"default": ("default", {}, "float32"),
        "paper-fp32": ("paper", {"tf32": False}, "float32"),
        "paper": ("paper", {}, "tf32")}


def _cuda_missing() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only build)"
        return f"no usable CUDA device (torch {torch.__version__}, CUDA build {build})"
    return None


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, help="where to build the sample (default: a temp dir)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--against", default="cuda",
                    help="the device compared with the CPU; 'cpu' checks this script itself "
                    "on a machine without a GPU (CPU against CPU)")
    args = ap.parse_args(argv)
    missing = _cuda_missing() if args.against != "cpu" else None
    if missing:
        print(f"gpu_smoke: skipped: {missing}")
        return SKIPPED

    import numpy as np
    import torch

    from aether.ml.config import RunOptions, resolve_config
    from aether.ml.data import load_pairs, split_labels
    from aether.ml.encode import apply_ae, load_run
    from aether.ml.fit import steps_per_epoch
    from aether.ml.train import train
    from aether.pipeline.extract import ExtractRequest, run_extract
    from aether.sample.city import ensure_sample

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data_dir or Path(tmp)
        t0 = time.perf_counter()
        ensure_sample(data)
        city = run_extract(ExtractRequest(city="Helsinki", data_dir=data, offline=True)).out_dir
        print(f"sample extracted in {time.perf_counter() - t0:.0f} s: {city}")
        gpu_name = torch.cuda.get_device_name(0) if args.against != "cpu" else "none"
        print(f"compared with cpu: {args.against} (CUDA device: {gpu_name}); "
              f"torch {torch.__version__}")
        failed = []
        for name, (preset, overrides, kind) in RUNS.items():
            cfg = resolve_config(preset, None, args.seed, **overrides)
            pairs = load_pairs(city, cfg)
            n_train = int((split_labels(pairs, cfg) == "train").sum())
            per_epoch = steps_per_epoch(n_train, cfg)
            epochs = max(1, round(args.steps / per_epoch))
            runs = {}
            for dev, label in (("cpu", "cpu"), (args.against, "other")):
                t1 = time.perf_counter()
                path = train(city, preset=preset, run_name=f"smoke-{name}-{label}", epochs=epochs,
                             seed=args.seed, options=RunOptions(device=dev, overwrite=True),
                             **overrides)
                runs[label] = (path, time.perf_counter() - t1)
            (cpu, t_cpu), (gpu, t_gpu) = runs["cpu"], runs["other"]
            d_loss = float(np.max(np.abs(np.subtract(_losses(cpu), _losses(gpu)))))
            a, b = (load_run(city, p, slug=None, year=None) for p in (cpu, gpu))
            sa, sb = a.model.state_dict(), b.model.state_dict()
            d_w = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
            va, vb = apply_ae(a, pairs.base), apply_ae(b, pairs.base)
            ok = np.isfinite(va).all(1) & np.isfinite(vb).all(1)
            cos = (va[ok] * vb[ok]).sum(1) / (np.linalg.norm(va[ok], axis=1)
                                               * np.linalg.norm(vb[ok], axis=1))
            tol_loss, tol_w, tol_cos = TOLERANCES[kind]
            good = d_loss <= tol_loss and d_w <= tol_w and float(cos.min()) >= tol_cos
            print(f"{name:<11} {kind:<7} {epochs} epochs x {per_epoch} = {epochs * per_epoch} "
                  f"steps, {n_train} training POIs; |d loss| {d_loss:.2e} (<= "
                  f"{tol_loss:g}), |d weight| {d_w:.2e} (<= {tol_w:g}), POI vector cosine min "
                  f"{cos.min():.6f} mean {cos.mean():.6f} (>= {tol_cos:g}); cpu {t_cpu:.1f} s, "
                  f"{args.against} {t_gpu:.1f} s: {'ok' if good else 'MISMATCH'}")
            if not good:
                failed.append(name)
    if failed:
        print(f"gpu_smoke: {args.against} and cpu differ beyond tolerance for "
              f"{', '.join(failed)}")
        return 1
    print(f"gpu_smoke: ok: {args.against} and cpu agree within tolerance for every run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
