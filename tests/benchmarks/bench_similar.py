"""Top-k "more like this" search: the quantised index against exact float32 search.

Prints recall@10 of the approximate index (FAISS PQ fast scan + exact re-scoring) against
exact search, and the query time of both in CPU time (``time.process_time``: this process,
all threads) with wall time beside it, on N random unit vectors (no structure: the hardest
case for a graph index), 128-d like the AETHER vectors. BLAS and FAISS run on ``--threads``
threads (pinned and printed; 1 by default, as the server answers each query on one). Writes
``tests/benchmarks/results/similar.json`` for the docs page.

    python tests/benchmarks/bench_similar.py            # 1,000,000 vectors
    python tests/benchmarks/bench_similar.py --n 100000 # quicker
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from results import load_now, measured_at, write_results
from threadpoolctl import threadpool_limits

from aether.query.similar import RERANK, VectorIndex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="BLAS and FAISS threads (pinned)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "similar.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    v = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    load = load_now()
    with threadpool_limits(args.threads):
        marks = [(time.perf_counter(), time.process_time())]
        exact = VectorIndex(v, exact_max=args.n)
        marks.append((time.perf_counter(), time.process_time()))
        approx = VectorIndex(v, exact_max=0)
        marks.append((time.perf_counter(), time.process_time()))
        ex = [exact.top(x, 10)[0] for x in q]
        marks.append((time.perf_counter(), time.process_time()))
        ap_ = [approx.top(x, 10)[0] for x in q]
        marks.append((time.perf_counter(), time.process_time()))
    wall, cpu = np.diff([m[0] for m in marks]), np.diff([m[1] for m in marks])
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ap_, ex, strict=True)]))
    res = {"n": args.n, "dim": args.dim, "queries": args.queries, "recall_at_10": recall,
           "threads": args.threads,
           "exact_cpu_ms_per_query": 1e3 * cpu[2] / args.queries,
           "approx_cpu_ms_per_query": 1e3 * cpu[3] / args.queries,
           "exact_ms_per_query": 1e3 * wall[2] / args.queries,
           "approx_ms_per_query": 1e3 * wall[3] / args.queries,
           "exact_setup_cpu_s": cpu[0], "approx_build_cpu_s": cpu[1],
           "approx_build_s": wall[1], "load_avg": load,
           "index": approx.describe(), "rerank": RERANK, **measured_at()}
    res["speedup"] = res["exact_cpu_ms_per_query"] / res["approx_cpu_ms_per_query"]
    print(f"{args.n:,} random unit vectors, {args.dim}-d, {args.queries} queries (load {load:.1f},"
          f" {args.threads} BLAS/FAISS thread(s)); CPU time of this process, wall in brackets")
    print(f"  exact: {res['exact_cpu_ms_per_query']:.2f} ms CPU/query "
          f"({res['exact_ms_per_query']:.2f} ms)")
    print(f"  {res['index']}: {res['approx_cpu_ms_per_query']:.3f} ms CPU/query "
          f"({res['approx_ms_per_query']:.3f} ms; {res['speedup']:.0f}x less CPU), recall@10 "
          f"{recall:.3f}, built in {res['approx_build_cpu_s']:.1f} s CPU")
    write_results(args.out, res)


if __name__ == "__main__":
    main()
