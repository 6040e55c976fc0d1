"""Feature-store benchmark: materialization throughput and online read latency, against Feast.

    python benchmarks/feature_store.py [--scales ml-1m synthetic-1m] [--out FILE]

For each scale and each online store (SQLite, Redis) it materializes every view with
`retrieval.store.materialize` and, as the baseline in the same run, with Feast's own
`FeatureStore.materialize` into a fresh store over the same offline files (at the 1M-user scale the
baseline covers the two static views only: Feast alone would take most of an hour). Then it reads
one user (the `user_tower` service) and 500 items in one call (`item_tower`) through
`towers.features.online_rows`, with the two sources of tail latency found here shown apart:
`store.get_feature_service(name)` in the call (it re-reads the registry file every time), and
full garbage collections over the process's startup heap (`gc.freeze()` after loading).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from retrieval import datasets, offline, store
from retrieval.materialize import latest_rows
from retrieval.synthetic import SyntheticConfig, generate
from towers.features import online_rows

ROOT = Path(__file__).resolve().parent.parent
SCALES = {
    "ml-1m": None,  # the real ml-1m files (6,040 users, 3,883 items)
    "synthetic-1m": SyntheticConfig(users=1_000_000, items=100_000, interactions=10_000_000),
}
STATIC_VIEWS = ["item_content", "user_profile"]


@dataclass(frozen=True)
class BenchConfig:
    scales: tuple[str, ...] = ("ml-1m", "synthetic-1m")
    ml1m_dir: str = str(ROOT.parent / "shared" / "data" / "ml-1m")
    redis: str = "redis://127.0.0.1:6379/0"
    reads: int = 5_000  # single-user reads per variant
    batch_reads: int = 300  # 500-item reads per variant
    batch_items: int = 500
    out: str = str(ROOT / "benchmarks" / "results" / "feature_store.json")
    seed: int = 0


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "n": len(ms)}  # fmt: skip


def timed(call, n: int, warmup: int = 50) -> dict[str, float]:
    for _ in range(warmup):
        call()
    lat = []
    for _ in range(n):
        began = time.perf_counter()
        call()
        lat.append(time.perf_counter() - began)
    return percentiles(lat)


def make_repo(dest: Path, offline_dir: Path | None, project: str) -> Path:
    """A copy of feature_repo/ under its own project; offline files shared by symlink."""
    repo = store.copy_repo(ROOT / "feature_repo", dest / project, project)
    (repo / "data").mkdir()
    if offline_dir is not None:
        (repo / "data" / "offline").symlink_to(offline_dir)
    return repo


def write_scale(scale: str, cfg: BenchConfig, repo: Path) -> dict:
    began = time.perf_counter()
    ds = datasets.load("ml-1m", Path(cfg.ml1m_dir)) if scale == "ml-1m" else generate(SCALES[scale])
    tables = offline.build(ds)
    offline.write(tables, repo / "data" / "offline")
    print(
        f"[{scale}] offline tables in {time.perf_counter() - began:.0f} s: {tables.meta['counts']}"
    )
    return tables.meta


def warm_up(prof: store.Profile, meta: dict) -> None:
    """One throwaway offline query, so the first view timed does not pay DuckDB's start-up."""
    feast_store = store.open_store(prof)
    start, end = datetime.fromisoformat(meta["start"]), datetime.fromisoformat(meta["end"])
    latest_rows(feast_store, feast_store.get_feature_view("item_content"), start, end)


def ours(prof: store.Profile, meta: dict) -> dict[str, dict]:
    with contextlib.redirect_stdout(io.StringIO()):  # feast's apply echoes every object
        store.apply(prof)
    warm_up(prof, meta)
    return {m.view: {"rows": m.rows, "seconds": m.seconds} for m in store.materialize(prof)}


def feast_baseline(prof: store.Profile, meta: dict, views: list[str]) -> dict[str, dict]:
    start, end = datetime.fromisoformat(meta["start"]), datetime.fromisoformat(meta["end"])
    result = {}
    with contextlib.redirect_stdout(io.StringIO()):
        store.apply(prof)
        warm_up(prof, meta)
        feast_store = store.open_store(prof)
        for view in views:
            began = time.perf_counter()
            feast_store.materialize(start, end, feature_views=[view])
            result[view] = {"seconds": time.perf_counter() - began}
    return result


def reads(prof: store.Profile, meta: dict, cfg: BenchConfig) -> dict[str, dict]:
    feast_store = store.open_store(prof)
    rng = np.random.default_rng(cfg.seed)
    users = iter(rng.integers(1, meta["counts"]["users"] + 1, 10 * cfg.reads).tolist())
    n_items = meta["counts"]["items"]
    item_batches = iter(
        [rng.choice(np.arange(1, n_items + 1), cfg.batch_items, replace=False).tolist()
         for _ in range(3 * cfg.batch_reads + 200)]
    )  # fmt: skip

    def plain(service: str, key: str, ids: list[int]):
        rows = [{key: i} for i in ids]
        return feast_store.get_online_features(
            features=feast_store.get_feature_service(service), entity_rows=rows
        ).to_dict()

    def user() -> list:
        return online_rows(feast_store, "user_tower", "user_id", [next(users)])

    def items() -> list:
        return online_rows(feast_store, "item_tower", "item_id", next(item_batches))

    result = {
        "one user, plain (service resolved per call)": timed(
            lambda: plain("user_tower", "user_id", [next(users)]), min(cfg.reads, 2_000)
        ),
        "one user, gc not frozen": timed(user, cfg.reads),
        f"{cfg.batch_items} items, gc not frozen": timed(items, cfg.batch_reads),
    }
    gc.freeze()  # what a serving process does once loaded: full collections skip the startup heap
    result["one user"] = timed(user, cfg.reads)
    result[f"{cfg.batch_items} items"] = timed(items, cfg.batch_reads)
    gc.unfreeze()
    return result


def bench_scale(scale: str, cfg: BenchConfig, work: Path) -> dict:
    tag = uuid.uuid4().hex[:6]
    main = make_repo(work, None, f"bench_{tag}_sqlite")
    meta = write_scale(scale, cfg, main)
    offline_dir = main / "data" / "offline"
    baseline_views = STATIC_VIEWS if scale == "synthetic-1m" else None
    result = {"scale": scale, "counts": meta["counts"], "stores": {}}
    for name, url in (("sqlite", None), ("redis", cfg.redis)):
        repo = main if url is None else make_repo(work, offline_dir, f"bench_{tag}_redis")
        prof = store.profile(repo, url)
        mine = ours(prof, meta)
        views = baseline_views or sorted(mine)
        base_prof = store.profile(make_repo(work, offline_dir, f"bench_{tag}_{name}_feast"), url)
        base = feast_baseline(base_prof, meta, views)
        for view, m in mine.items():
            m["rows_per_s"] = m["rows"] / m["seconds"]
            if view in base:
                m["feast_seconds"] = base[view]["seconds"]
                m["feast_rows_per_s"] = m["rows"] / base[view]["seconds"]
                m["speedup"] = base[view]["seconds"] / m["seconds"]
        result["stores"][name] = {"materialize": mine, "reads": reads(prof, meta, cfg)}
        if url is not None:
            for p in (prof, base_prof):
                store.open_store(p).teardown()
        print_store(scale, name, result["stores"][name])
    return result


def print_store(scale: str, name: str, res: dict) -> None:
    print(f"\n[{scale} / {name}] materialize   rows      s   rows/s   feast rows/s  speedup")
    for view, m in sorted(res["materialize"].items()):
        base = f"{m['feast_rows_per_s']:>12,.0f}  {m['speedup']:>6.1f}x" if "speedup" in m else ""
        print(f"  {view:22s} {m['rows']:>9,} {m['seconds']:>6.1f} {m['rows_per_s']:>8,.0f} {base}")
    total = sum(m["rows"] for m in res["materialize"].values())
    seconds = sum(m["seconds"] for m in res["materialize"].values())
    print(f"  {'all views':22s} {total:>9,} {seconds:>6.1f} {total / seconds:>8,.0f}")
    print(f"[{scale} / {name}] online reads            p50 ms   p99 ms   max ms")
    for what, r in res["reads"].items():
        print(f"  {what:36s} {r['p50_ms']:>7.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scales", nargs="+", default=list(BenchConfig.scales), choices=list(SCALES)
    )
    parser.add_argument("--ml1m-dir", default=BenchConfig.ml1m_dir)
    parser.add_argument("--redis", default=BenchConfig.redis)
    parser.add_argument("--reads", type=int, default=BenchConfig.reads)
    parser.add_argument("--out", default=BenchConfig.out)
    args = parser.parse_args()
    cfg = BenchConfig(scales=tuple(args.scales), ml1m_dir=args.ml1m_dir, redis=args.redis,
                      reads=args.reads, out=args.out)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="ttr-bench-"))
    try:
        results = [bench_scale(scale, cfg, work) for scale in cfg.scales]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpus_used": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
        },
        "config": asdict(cfg),
        "results": results,
    }
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {cfg.out}")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (duckdb's bindings print spurious leak reports there)


if __name__ == "__main__":
    main()
