"""Serving benchmark: `ttr serve` under load from this process, against the pipeline in process.

    python benchmarks/serve.py --repo REPO --artifacts DIR [--seconds 10] [--out FILE]

The repository must be materialized and DIR must hold trained towers, an index and a ranker (the
quickstart leaves both). Steps, all in one run:

1. in process (the baseline): `Pipeline.recommend` for known users, one at a time: p50/p99 per
   stage (features, user_tower, ann, rerank) and in all;
2. over HTTP on loopback, closed loop with 1..8 concurrent keep-alive clients for `--seconds`
   each: throughput and p50/p99 per level; the best is the peak;
3. open loop at half the peak rate: p50/p99 (requests are sent on schedule; latency counts from
   the scheduled time, so queueing shows).

Prints a table and writes JSON with the command that produced it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
LEVELS = (1, 2, 4, 8)


def pct(values: list[float]) -> dict:
    ms = np.asarray(values) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "n": len(ms)}  # fmt: skip


def in_process(repo: Path, artifacts: Path, users: np.ndarray) -> dict:
    from retrieval import store
    from retrieval.pipeline import STAGES, Pipeline

    pipeline = Pipeline.open(store.profile(repo), artifacts)
    for user in users[:50]:
        pipeline.recommend(int(user))
    stages: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
    for user in users:
        began = time.perf_counter()
        rec = pipeline.recommend(int(user))
        stages["total"].append(time.perf_counter() - began)
        for stage, seconds in rec.seconds.items():
            stages[stage].append(seconds)
    return {stage: pct(v) for stage, v in stages.items() if v}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(repo: Path, artifacts: Path, port: int, workers: int) -> subprocess.Popen:
    argv = ["serve", "--port", str(port), "--repo", str(repo), "--artifacts", str(artifacts),
            "--workers", str(workers)]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", "from retrieval.cli import main; main()",
                                *argv], stdout=subprocess.DEVNULL)  # fmt: skip
    for _ in range(600):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become ready")


def client(port: int, users: np.ndarray, until: float, pace: float | None, phase: float,
           out: list[float], errors: list[int]) -> None:  # fmt: skip
    """Requests until `until`: back to back (closed loop) or every `pace` seconds from `phase`
    seconds on (open loop, latency counted from the scheduled send time)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    rng = np.random.default_rng(threading.get_ident() % 2**32)
    scheduled = time.perf_counter() + phase
    while scheduled < until:
        if pace is not None:
            time.sleep(max(0.0, scheduled - time.perf_counter()))
        began = scheduled if pace is not None else time.perf_counter()
        connection.request("GET", f"/recommend/{int(rng.choice(users))}?k=10")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            errors.append(response.status)
        out.append(time.perf_counter() - began)
        scheduled = scheduled + pace if pace is not None else time.perf_counter()


def load(port: int, users: np.ndarray, clients: int, seconds: float,
         rate: float | None = None) -> dict:  # fmt: skip
    latencies: list[float] = []
    errors: list[int] = []
    until = time.perf_counter() + seconds
    pace = clients / rate if rate else None
    threads = [threading.Thread(target=client, args=(port, users, until, pace,
                                                     i * pace / clients if pace else 0.0,
                                                     latencies, errors))
               for i in range(clients)]  # clients staggered evenly: no bursts  # fmt: skip
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"clients": clients, "rps": len(latencies) / (time.perf_counter() - began),
            "errors": len(errors), **pct(latencies)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = parser.parse_args()
    ids = pd.read_parquet(args.repo / "data" / "offline" / "user_profile.parquet")["user_id"]
    users = np.sort(ids.sample(min(args.users, len(ids)), random_state=0).to_numpy())
    port = free_port()
    server = start_server(args.repo, args.artifacts, port, args.workers)
    try:
        load(port, users, 2, 2.0)  # warm up
        levels = [load(port, users, c, args.seconds) for c in LEVELS]
        peak = max(levels, key=lambda r: r["rps"])
        half = load(port, users, 4, args.seconds, rate=peak["rps"] / 2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    stages = in_process(args.repo, args.artifacts, users)
    print(
        f"{'in process':14s} "
        + "  ".join(
            f"{s} p50 {v['p50_ms']:.2f} p99 {v['p99_ms']:.2f} ms" for s, v in stages.items()
        )
    )
    print(f"{'clients':>8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s}")
    for r in [*levels, {**half, "clients": "half"}]:
        print(f"{r['clients']!s:>8s} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['errors']:>7d}")  # fmt: skip
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "workers": args.workers,
        "in_process": stages, "closed_loop": levels, "peak_rps": peak["rps"],
        "half_peak": half,
        "http_over_in_process_p50": half["p50_ms"] / stages["total"]["p50_ms"],
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
