"""FAISS index benchmark: a catalogue of clustered vectors, approximate indexes against exact Flat.

    python benchmarks/index.py [--items 1000000] [--dim 64] [--budgets 4 ...]
        [--recall-target 0.95] [--out FILE]

Vectors are unit-norm and clustered (not uniform, still hard to index). Each approximate index is
what `ttr index --memory-gb B` builds for one budget B (`retrieval.index.build`: an inverted file
holding vectors, SQ8 or PQ codes, whichever fits B; nprobe raised until recall@10 against exact
search on held-out queries reaches the target); it is measured on other queries, one at a time,
its memory as its serialized size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import faiss
import numpy as np

from retrieval import index
from retrieval.errors import TTRError

ROOT = Path(__file__).resolve().parent.parent


def clustered(n: int, d: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    x = centres[rng.integers(clusters, size=n)] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def single_query_qps(
    idx: faiss.Index, params: dict, queries: np.ndarray, k: int
) -> tuple[float, np.ndarray]:
    """Queries one at a time on one OpenMP thread, as a serving worker answers them (OpenMP's
    thread team costs more than one query's work, and spins against other processes)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    found = []
    began = time.perf_counter()
    for q in queries:
        found.append(index.search(idx, params, q[None, :], k)[1][0])
    elapsed = time.perf_counter() - began
    faiss.omp_set_num_threads(threads)
    return len(queries) / elapsed, np.array(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--budgets", type=float, nargs="+", default=[4.0], metavar="GB",
                        help="memory budgets, one index each (default: 4)")  # fmt: skip
    parser.add_argument("--recall-target", type=float, default=0.95)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "index.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = clustered(args.items, args.dim, 1_000, rng)
    held_out, fresh = (
        clustered(1_000, args.dim, 1_000, rng),
        clustered(args.queries, args.dim, 1_000, rng),
    )
    k, rows, failed = 10, {}, {}

    began = time.perf_counter()
    flat = index.build(
        vectors, np.arange(args.items), held_out[:10], index.IndexConfig(factory="IDMap,Flat", k=k)
    )
    rows["exact IDMap,Flat"] = {"build_s": time.perf_counter() - began}
    qps, _ = single_query_qps(flat.index, flat.params, fresh[:200], k)
    rows["exact IDMap,Flat"] |= {"qps": qps, "recall@10": 1.0,
                                 "bytes": len(faiss.serialize_index(flat.index))}  # fmt: skip
    del flat

    truth = index.exact_top_k(vectors, fresh, k)
    for budget in args.budgets:
        began = time.perf_counter()
        cfg = index.IndexConfig(k=k, recall_target=args.recall_target, memory_gb=budget)
        try:
            built = index.build(vectors, np.arange(args.items), held_out, cfg)
        except TTRError as e:  # the codes cannot reach the target: what `ttr index` says
            seconds = time.perf_counter() - began
            failed[f"{budget:g} GB budget"] = {"build_s": seconds, "error": str(e)}
            continue
        seconds = time.perf_counter() - began
        qps, found = single_query_qps(built.index, built.params, fresh, k)
        rows[f"{built.factory} nprobe={built.params['nprobe']} ({budget:g} GB budget)"] = {
            "build_s": seconds, "qps": qps, "recall@10": index.recall(found, truth),
            "bytes": len(faiss.serialize_index(built.index)),
        }  # fmt: skip
        del built

    print(f"{'index':44s} {'build s':>8s} {'MB':>8s} {'queries/s':>10s} {'x exact':>8s} "
          f"{'recall@10':>10s}")  # fmt: skip
    base = rows["exact IDMap,Flat"]["qps"]
    for name, r in rows.items():
        print(f"{name:44s} {r['build_s']:>8.1f} {r['bytes'] / 1e6:>8,.0f} {r['qps']:>10,.0f} "
              f"{r['qps'] / base:>8.0f} {r['recall@10']:>10.3f}")  # fmt: skip
    for name, r in failed.items():
        print(f"{name}: {r['error']} ({r['build_s']:.0f} s)")
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpus_used": len(os.sched_getaffinity(0)),
                    "python": platform.python_version(), "faiss": faiss.__version__},
        "items": args.items, "dim": args.dim, "recall_target": args.recall_target,
        "results": rows, "failed": failed,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
