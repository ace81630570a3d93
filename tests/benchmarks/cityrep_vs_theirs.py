"""aether's ``--protocol cityrep`` against CityRepFull's own evaluate() on the sample city.

    .venv/bin/python tests/benchmarks/cityrep_vs_theirs.py --data-dir DIR [--cityrep GIT_DIR]

DIR is a data directory that ``tests/benchmarks/cityrep_sample.py --data-dir DIR`` filled
(the sample city, both presets trained and encoded, the land-use labels). For each packaged
task and each method (raw AlphaEarth, the ``paper`` run), the same units, vectors and labels
go through aether (``aether.evaluation.cityrep``) and through their code exported from the
commit tests/fixtures/make_cityrep.py names; prints both means ± std and the largest per-seed
difference over all metrics. Torch runs on one thread on both sides.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _maker():
    spec = importlib.util.spec_from_file_location("make_cityrep",
                                                  HERE.parent / "fixtures" / "make_cityrep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    maker = _maker()
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--cityrep", type=Path, default=maker.GIT_DIR)
    args = ap.parse_args()
    import pandas as pd
    import torch

    from aether.evaluation import cityrep, probes
    from aether.evaluation.evaluate import features
    from aether.evaluation.tasks import TASKS_DIR, load_task
    from aether.ml.encode import load_run
    from aether.pipeline.demo import TASKS

    city = args.data_dir / "helsinki" / "2024"
    run = load_run(city, "paper", slug="helsinki", year=2024)
    with maker.their_code(args.cityrep) as (src, work):
        sys.path.insert(0, str(src))
        from urban_benchmark.embeddings import PointEmbedding
        from urban_benchmark.evaluation import evaluate
        from urban_benchmark.protocols import load_protocol
        from urban_benchmark.tasks import build_task

        protocol = load_protocol(maker.PROTOCOL, src / "configs" / "release" / "protocols.json")
        for key in ("fixed_split_root", "fixed_split_suffix"):
            protocol["split"].pop(key, None)
        for name in TASKS:
            task = load_task(TASKS_DIR / f"{name}.yaml")
            feats, places = features(task, city, [run], text_methods=False)
            lon, lat = places.lonlat()
            y = places.labels.y
            ids = [f"u{i}" for i in range(len(lon))]
            cols = [f"p{i}" for i in range(y.shape[1])] if y.ndim == 2 else ["label"]
            pd.DataFrame(y.reshape(len(ids), -1), columns=cols).assign(
                sample_id=ids,
                geometry=[f"POINT ({float(a)!r} {float(b)!r})" for a, b in zip(lon, lat,
                                                                             strict=True)]
            ).to_parquet(work / f"{name}.parquet")
            theirs_task = build_task({"task_id": name, "task_type": task.kind,
                                      "source_type": "samples", "samples_path": f"{name}.parquet",
                                      "crs": "EPSG:4326", "label_cols": cols}, work)
            worst = 0.0
            for method, x in feats.items():
                ours = cityrep.probe_methods(task.kind, {method: x}, y, lon, lat, probes.SEEDS,
                                             False, "prior", lambda: None)[method]
                pd.DataFrame(x, columns=[f"e{i}" for i in range(x.shape[1])]).assign(
                    pid=ids, x=lon, y=lat).to_parquet(work / "vectors.parquet")
                torch.set_num_threads(1)
                res = evaluate(theirs_task, PointEmbedding(
                    "v", str(work / "vectors.parquet"), point_id_col="pid",
                    task_point_id_col="sample_id"), protocol=protocol, out_dir=work / "out")
                head = next(iter(cityrep.METRICS[task.kind]))
                for m in cityrep.METRICS[task.kind]:
                    a = np.array([s[m] for s in ours])
                    b = np.array([s[m] for s in res.per_seed])
                    worst = max(worst, float(np.abs(a - b).max()))
                print(f"{name} {method}: {head} aether {np.mean([s[head] for s in ours]):.6f} ± "
                      f"{np.std([s[head] for s in ours]):.6f} | CityRepFull "
                      f"{res.metrics[head]:.6f} ± {res.metrics_std[head]:.6f}")
            print(f"{name} ({len(ids)} units): largest per-seed difference, all metrics and "
                  f"methods: {worst:.1e}")


if __name__ == "__main__":
    main()
