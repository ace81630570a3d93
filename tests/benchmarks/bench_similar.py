"""Top-k "more like this" search: the quantised index against exact float32 search.

Prints recall@10 of the approximate index (FAISS PQ fast scan + exact re-scoring) against
exact search, and the query time of both,
on N random unit vectors (no structure: the hardest case for a graph index), 128-d like the
AETHER vectors. Writes ``tests/benchmarks/results/similar.json`` for the docs page.

    python tests/benchmarks/bench_similar.py            # 1,000,000 vectors
    python tests/benchmarks/bench_similar.py --n 100000 # quicker
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from results import measured_at, write_results

from aether.query.similar import RERANK, VectorIndex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "similar.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    v = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    exact = VectorIndex(v, exact_max=args.n)
    t1 = time.perf_counter()
    approx = VectorIndex(v, exact_max=0)
    t2 = time.perf_counter()
    ex = [exact.top(x, 10)[0] for x in q]
    t3 = time.perf_counter()
    ap_ = [approx.top(x, 10)[0] for x in q]
    t4 = time.perf_counter()
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ap_, ex, strict=True)]))
    res = {"n": args.n, "dim": args.dim, "queries": args.queries, "recall_at_10": recall,
           "exact_ms_per_query": 1e3 * (t3 - t2) / args.queries,
           "approx_ms_per_query": 1e3 * (t4 - t3) / args.queries,
           "exact_setup_s": t1 - t0, "approx_build_s": t2 - t1, "load_avg": load,
           "index": approx.describe(), "rerank": RERANK, **measured_at()}
    res["speedup"] = res["exact_ms_per_query"] / res["approx_ms_per_query"]
    print(f"{args.n:,} random unit vectors, {args.dim}-d, {args.queries} queries (load {load:.1f})")
    print(f"  exact: {res['exact_ms_per_query']:.2f} ms/query")
    print(f"  {res['index']}: {res['approx_ms_per_query']:.3f} ms/query "
          f"({res['speedup']:.0f}x faster), recall@10 {recall:.3f}, built in "
          f"{res['approx_build_s']:.1f} s")
    write_results(args.out, res)


if __name__ == "__main__":
    main()
