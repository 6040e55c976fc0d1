"""`ttr data --spec` at scale: rows/s and peak memory on synthetic parquet tables of 1M and 10M
interactions, against reading the same files alone (the floor) in the same run.

    python benchmarks/data.py [--sizes 1000000 10000000] [--out FILE]

Each size is written once as a user's own files would be (interactions, customers and products
as parquet, with a spec), then read by `ttr data --spec` in a fresh process whose peak resident
memory (ru_maxrss) is recorded; the baseline process only reads the three files into pandas.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = """\
name: bench
split: random
interactions: {path: interactions.parquet, user_id: user_id, item_id: item_id, rating: rating,
               timestamp: timestamp}
users: {path: users.parquet, id: user_id, features: {age: numeric, gender: categorical,
        occupation: categorical, zip_prefix: categorical}}
items: {path: items.parquet, id: item_id, title: title, features: {genres: multi_categorical,
        year: numeric, plot: text}}
"""
READ = """
import sys, pyarrow.parquet as pq
for name in ("interactions", "users", "items"):
    pq.read_table(f"{sys.argv[1]}/{name}.parquet").to_pandas()
"""


def world(n: int, folder: Path) -> Path:
    """The synthetic world of `n` interactions as a user's parquet files and spec."""
    from retrieval.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(users=n // 50, items=n // 100, interactions=n, groups=16, days=365)
    tables, _ = generate(cfg)
    for name, frame in tables.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    (folder / "spec.yaml").write_text(SPEC)
    return folder / "spec.yaml"


def timed(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak resident GiB) of one child process (its own rusage, from wait4)."""
    began = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv} failed: {child.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 2**20  # KiB -> GiB


def one_size(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "raw").mkdir()
        spec = world(n, folder / "raw")
        repo = folder / "feature_repo"
        from retrieval import store

        store.copy_repo(ROOT / "feature_repo", repo, "bench")
        read_s, read_gib = timed([sys.executable, "-c", READ, str(folder / "raw")])
        ttr = [sys.executable, "-c", "from retrieval.cli import main; main()"]
        data_s, data_gib = timed([*ttr, "data", "--spec", str(spec), "--repo", str(repo)])
    return {"interactions": n, "read_only_seconds": read_s, "ttr_data_seconds": data_s,
            "rows_per_s": n / data_s, "read_rows_per_s": n / read_s,
            "time_vs_read": data_s / read_s, "peak_gib": data_gib,
            "read_peak_gib": read_gib}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    args = parser.parse_args()
    rows = []
    print(f"{'interactions':>12s} {'ttr data s':>10s} {'rows/s':>10s} {'peak GiB':>8s} "
          f"{'read s':>7s} {'x read':>7s}")  # fmt: skip
    for n in args.sizes:
        row = one_size(n)
        rows.append(row)
        print(f"{n:>12,d} {row['ttr_data_seconds']:>10.1f} {row['rows_per_s']:>10,.0f} "
              f"{row['peak_gib']:>8.2f} {row['read_only_seconds']:>7.1f} "
              f"{row['time_vs_read']:>7.1f}", flush=True)  # fmt: skip
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "peak_gib: the `ttr data` process's own ru_maxrss (wait4)",
        "sizes": rows,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
