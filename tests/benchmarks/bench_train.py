"""Training throughput on CPU: the sample city and 100k synthetic pairs, with peak memory.

    .venv/bin/python tests/benchmarks/bench_train.py [--sample-dir DIR] [--epochs 5] [--full]

Each case runs in its own process (so peak RSS is its own). ``aether.ml.train`` (whole tables as
tensors, batches by index) is printed beside a baseline in the reference code's style: a
per-row ``Dataset`` through a ``DataLoader`` (drop_last, default collate), same model, loss
and optimiser. Without ``--full`` the wall time for 100 epochs is extrapolated from
``--epochs`` measured epochs: start-up + first epoch + 99 x the fastest later epoch (other load
on a shared machine only adds time).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_data import write_synthetic_city


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _steady(secs: list[float]) -> float:
    """Per-epoch cost after the first: the fastest epoch, as other load only adds time."""
    return min(secs[1:]) if len(secs) > 1 else secs[0]


def run_aether(city: Path, epochs: int, threads: int) -> dict:
    import csv

    from aether.io.tables import read_json
    from aether.ml.train import METRICS_FILE, SUMMARY_FILE, train

    t0 = time.perf_counter()
    run = train(city, preset="paper", run_name=f"bench-{threads}t", epochs=epochs,
                overwrite=True, threads=threads)
    wall = time.perf_counter() - t0
    with open(run / METRICS_FILE) as f:
        secs = [float(r["seconds"]) for r in csv.DictReader(f)]
    n = read_json(run / SUMMARY_FILE)["pairs"]["train"]
    steady = _steady(secs)
    return {"pairs": n, "epochs": epochs, "wall_s": wall, "first_epoch_s": secs[0],
            "epoch_s": steady, "pairs_per_s": n / steady,
            "est_100_epochs_s": wall - sum(secs) + secs[0] + 99 * steady,
            "peak_mb": _peak_mb()}


def run_baseline(city: Path, epochs: int, threads: int) -> dict:
    """The reference code's loop: per-row Dataset + DataLoader, fixed batches, drop_last."""
    import torch

    from aether.ml.heads import AetherModel, aether_losses
    from aether.ml.train import load_pairs, resolve_config

    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    pairs = load_pairs(city, resolve_config("paper", epochs, 42))
    base, aug = torch.from_numpy(pairs.base), torch.from_numpy(pairs.aug)
    text = torch.from_numpy(pairs.text_vectors[pairs.text_id])

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(base)

        def __getitem__(self, i: int):
            return base[i], aug[i], text[i]

    loader = torch.utils.data.DataLoader(Rows(), batch_size=512, shuffle=True, drop_last=True)
    torch.manual_seed(42)
    model = AetherModel()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    secs, seen = [], 0
    for _ in range(epochs):
        t0 = time.perf_counter()
        for b, a, t in loader:
            loss = aether_losses(model, b, a, t)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(b)
        secs.append(time.perf_counter() - t0)
    steady = _steady(secs)
    per_epoch = seen / epochs
    wall = time.perf_counter() - t_start
    return {"pairs": len(base), "epochs": epochs, "epoch_s": steady,
            "pairs_per_s": per_epoch / steady,
            "est_100_epochs_s": wall - sum(secs) + secs[0] + 99 * steady,
            "peak_mb": _peak_mb()}


def _child(case: str, city: Path, epochs: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", case, "--city", str(city),
                          "--epochs", str(epochs), "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample-dir", type=Path, help="extracted sample city (aether extract "
                    "--city Helsinki --offline); built in a temp dir if omitted")
    ap.add_argument("--pairs", type=int, default=100_000, help="synthetic pairs (0: skip)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--full", action="store_true", help="run all 100 epochs")
    ap.add_argument("--child")
    ap.add_argument("--city", type=Path)
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="torch CPU thread counts to compare (e.g. 1 2)")
    args = ap.parse_args()
    if args.child:
        fn = run_aether if args.child == "aether" else run_baseline
        print(json.dumps(fn(args.city, args.epochs, args.threads[0])))
        return

    epochs = 100 if args.full else args.epochs
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    sample = args.sample_dir
    if sample is None:
        from aether.pipeline.extract import ExtractRequest, run_extract

        sample = run_extract(ExtractRequest(city="Helsinki", data_dir=tmp, offline=True)).out_dir
    cases = [("sample (Helsinki)", sample)]
    if args.pairs:
        cases.append((f"synthetic {args.pairs}", write_synthetic_city(tmp, args.pairs, seed=1)))
    print(f"CPU training, paper preset (batch 512), {epochs} measured epochs; "
          "'100 ep' is measured with --full, else extrapolated")
    print(f"{'data':<22}{'loop':<22}{'thr':>4}{'pairs':>8}{'pairs/s':>10}{'s/epoch':>9}"
          f"{'100 ep s':>10}{'peak MB':>9}{'vs base':>9}", flush=True)
    for label, city in cases:
        base = _child("baseline", city, epochs, 1)
        rows = [("DataLoader per row", 1, lambda b=base: b)]
        rows += [("aether.ml.train", t, lambda t=t, c=city: _child("aether", c, epochs, t))
                 for t in args.threads]
        for loop, thr, measure in rows:
            r = measure()
            print(f"{label:<22}{loop:<22}{thr:>4}{r['pairs']:>8}{r['pairs_per_s']:>10.0f}"
                  f"{r['epoch_s']:>9.3f}{r['est_100_epochs_s']:>10.1f}{r['peak_mb']:>9.0f}"
                  f"{r['pairs_per_s'] / base['pairs_per_s']:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
