"""Offline engines: `ttr data`, materialization and a training read on the Spark and PostgreSQL
profiles, against the embedded default (DuckDB in process over parquet) in the same run.

    python benchmarks/offline_engines.py [--dataset ml-100k] [--data-dir DIR]
        [--spark local[2]] [--postgres postgresql://postgres@127.0.0.1:5432/ttr_bench]
        [--out FILE]

Each engine gets a fresh copy of the feature repository (its own Feast project) and runs, in
this process: `ttr data` (on PostgreSQL, with the copy of its tables), `ttr apply`, `ttr
materialize` (SQLite online for all: rows/s per view; Spark's through Feast's `spark.engine`, the
others through the project's batch path), and the point-in-time training read of every
interaction through the `user_tower` service (`towers.features.training_frame`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq

from retrieval import store
from retrieval.cli import run
from towers.features import training_frame

ROOT = Path(__file__).resolve().parent.parent


def timed(argv: list[str]) -> float:
    began = time.perf_counter()
    if run(argv) != 0:
        raise SystemExit(f"failed: ttr {' '.join(argv)}")
    return time.perf_counter() - began


def engine(folder: Path, offline: str, data: list[str]) -> dict:
    repo = store.copy_repo(ROOT / "feature_repo", folder / "repo", f"bench_{uuid.uuid4().hex[:8]}")
    common = ["--repo", str(repo), "--offline-store", offline]
    out = {"data_s": timed(["data", *data, *common]), "apply_s": timed(["apply", *common])}
    prof = store.profile(repo, offline_store=offline)
    done = store.materialize(prof)
    out["materialize"] = {m.view: {"rows": m.rows, "seconds": m.seconds,
                                   "rows_per_s": m.rows / m.seconds} for m in done}  # fmt: skip
    rows, seconds = sum(m.rows for m in done), sum(m.seconds for m in done)
    out["materialize_rows_per_s"] = rows / seconds
    inter = pq.read_table(prof.offline_dir / "interactions.parquet").to_pandas()
    entities = inter[["user_id", "item_id", "event_timestamp"]]
    feast_store = store.open_store(prof)
    began = time.perf_counter()
    frame = training_frame(feast_store, "user_tower", entities)
    out["training_read"] = {"rows": len(frame), "seconds": time.perf_counter() - began}
    out["training_read"]["rows_per_s"] = len(frame) / out["training_read"]["seconds"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--spark", default="local[2]", help="the Spark master")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/ttr_bench")
    out = ROOT / "benchmarks" / "results" / "offline_engines.json"
    parser.add_argument("--out", default=str(out))
    args = parser.parse_args()
    _create_database(args.postgres)
    data = ["--dataset", args.dataset, "--data-dir", args.data_dir]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        stores = {"duckdb": "duckdb", "spark": f"spark:{args.spark}", "postgresql": args.postgres}
        for name, offline in stores.items():
            results[name] = engine(Path(folder) / name, offline, data)
    base = results["duckdb"]
    print(f"{'engine':12s} {'data s':>8s} {'materialize rows/s':>19s} {'x':>6s} "
          f"{'training read rows/s':>21s} {'x':>6s}")  # fmt: skip
    for name, r in results.items():
        m = r["materialize_rows_per_s"] / base["materialize_rows_per_s"]
        t = r["training_read"]["rows_per_s"] / base["training_read"]["rows_per_s"]
        print(f"{name:12s} {r['data_s']:>8.1f} {r['materialize_rows_per_s']:>19,.0f} {m:>6.2f} "
              f"{r['training_read']['rows_per_s']:>21,.0f} {t:>6.2f}")  # fmt: skip
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "dataset": args.dataset, "results": results,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


def _create_database(url: str) -> None:
    import psycopg

    server, name = url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


if __name__ == "__main__":
    main()
