"""A live service under faults: hot swaps under load, Redis killed and hung under load, bad ids
beside good ones, and kill -9 at random points of every stage. All traffic on loopback, bounded
in count and time.

    python benchmarks/live.py [--rate 200] [--swaps 20] [--trials 20] [--out FILE]

Builds its own world in a temporary folder (a synthetic dataset, two trained and indexed
versions with rankers, the features in SQLite and in a Redis of its own that appends every
write to its log), then:

1. swaps: `ttr serve --workers 2` under an open-loop load of `--rate` requests/s over 32
   connections; `--swaps` reloads alternating between the two versions, each 3 s after the
   last one's window; failed requests, answers whose versions are not one bundle's, seconds
   until every worker serves the new version, p99 in the 3 s after each reload against p99 in
   the 3 s before it (the baseline);
2. redis: the same load against the Redis profile; Redis killed (SIGKILL) for 10 s and
   restarted from its log, then hung (SIGSTOP) for 10 s and resumed: failed requests, requests
   over the deadline, seconds from the restart (resume) to the first personalized answer;
3. bad ids: the load, and one request a second for an id no user can have (2^70): the share of
   personalized answers among the others, against the same load without them;
4. crashes: `--trials` runs of data, materialize, train, index and train-ranker killed (-9) at
   a random point of their work, each followed by the checks every stored file must pass and a
   server start: the states that cannot serve.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import OwnRedis, free_port, request  # noqa: E402

TOKEN = "bench-token"
WORLD = ["--users", "2000", "--items", "1000", "--interactions", "100000", "--groups", "8"]
TTR = [sys.executable, "-c", "from retrieval.cli import main; main()"]
BAD_ID = 2**70


def ttr(*argv: str) -> None:
    subprocess.run([*TTR, *argv], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip


def world(folder: Path, redis_url: str) -> tuple[Path, Path]:
    from retrieval import store

    repo = store.copy_repo(ROOT / "feature_repo", folder / "feature_repo", "live")
    root = folder / "artifacts"
    common = ["--repo", str(repo)]
    ttr("data", "--dataset", "synthetic", *WORLD, *common)
    for online in ([], ["--online-store", redis_url]):
        ttr("apply", *common, *online)
        ttr("materialize", *common, *online)
    for seed in ("0", "1"):
        art = ["--artifacts", str(root), *common]
        ttr("train", "--epochs", "3", "--seed", seed, *art)
        ttr("index", *art)
        ttr("train-ranker", "--epochs", "1", *art)
    return repo, root


class Server:
    def __init__(self, repo: Path, root: Path, *extra: str) -> None:
        self.port = free_port()
        argv = ["serve", "--port", str(self.port), "--repo", str(repo), "--artifacts", str(root),
                *extra]  # fmt: skip
        self.process = subprocess.Popen([*TTR, *argv], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL,
                                        env={**os.environ, "TTR_ADMIN_TOKEN": TOKEN})  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            try:
                if request(self.base, "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("the server did not become ready")

    def reload(self) -> dict:
        return request(self.base, "/admin/reload", "POST", {"Authorization": f"Bearer {TOKEN}"})[1]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)


class Load:
    """Open-loop requests at `rate` per second from `clients` keep-alive connections until
    stopped; each answer's send time, latency (from its scheduled time), status, source and
    versions."""

    def __init__(self, port: int, users: np.ndarray, rate: float, clients: int = 8) -> None:
        self.records: list[tuple] = []
        self.running = True
        self.began = time.perf_counter()
        pace = clients / rate
        self.threads = [threading.Thread(target=self.client, args=(port, users, pace,
                                                                   i * pace / clients))
                        for i in range(clients)]  # fmt: skip
        for thread in self.threads:
            thread.start()

    def client(self, port: int, users: np.ndarray, pace: float, phase: float) -> None:
        rng = np.random.default_rng(int(phase * 1e6))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        scheduled = time.perf_counter() + phase
        while self.running:
            time.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                connection.request("GET", f"/recommend/{int(rng.choice(users))}?k=10")
                response = connection.getresponse()
                body = json.loads(response.read() or b"{}")
                status = response.status
            except (OSError, http.client.HTTPException, json.JSONDecodeError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status, body = -1, {}
            versions = (body.get("model_version"), body.get("index_version"),
                        body.get("ranker_version"))  # fmt: skip
            self.records.append((scheduled, time.perf_counter() - scheduled, status,
                                 body.get("source"), versions))  # fmt: skip
            scheduled += pace

    def stop(self) -> list[tuple]:
        self.running = False
        for thread in self.threads:
            thread.join()
        return self.records

    def between(self, start: float, end: float) -> list[tuple]:
        return [r for r in self.records if start <= r[0] < end]


def p99(records: list[tuple]) -> float:
    return float(np.percentile([r[1] for r in records], 99) * 1000) if records else float("nan")


def swaps(repo: Path, root: Path, users: np.ndarray, rate: float, count: int,
          workers: int) -> dict:  # fmt: skip
    """`count` reloads under the load, alternating between two versions: each moves `latest`
    and asks one worker; the others follow. Quiet and swapping windows interleave (3 s without,
    then a reload and the 3 s after it), so a slow spell of the machine weighs on both alike.
    Per swap, the seconds from the reload until no answer comes from the version it replaced."""
    from retrieval import artifacts, bundle

    versions = artifacts.versions(root)[:2]  # [0] is `latest`: it serves first
    keys = [bundle.load(v).key for v in versions]
    server = Server(repo, root, "--workers", str(workers))
    load = Load(server.port, users, rate, clients=32)
    time.sleep(5)  # warm
    quiet, moves = [], []  # (start, end) of the windows without swaps; (reload time, its key)
    for n in range(count):
        began = time.perf_counter()
        time.sleep(3)
        quiet.append((began, time.perf_counter()))
        target = (n + 1) % 2
        artifacts.point(root, artifacts.LATEST, versions[target].name)
        moves.append((time.perf_counter(), keys[target]))
        server.reload()
        time.sleep(3)
    records = load.stop()
    server.stop()
    baseline = [r for start, end in quiet for r in load.between(start, end)]
    during = [r for at, _ in moves for r in load.between(at, at + 3)]
    converged = []
    for at, key in moves:
        window = [r for r in load.between(at, at + 3) if r[2] == 200]
        last_old = max((r[0] for r in window if r[4] != key), default=at)
        converged.append(last_old - at if last_old < at + 2.5 else None)
    done = [c for c in converged if c is not None]
    return {
        "rate": rate, "workers": workers, "clients": 32, "swaps": count,
        "swaps_converged": len(done), "max_seconds_to_converge": max(done, default=None),
        "requests": len(records), "failed": sum(r[2] != 200 for r in records),
        "mixed_versions": sum(r[2] == 200 and r[4] not in keys for r in records),
        "versions_seen": len({r[4] for r in records if r[2] == 200}),
        "achieved_rps": len(baseline) / sum(end - start for start, end in quiet),
        "p99_ms_baseline": p99(baseline), "p99_ms_during_swaps": p99(during),
        "p99_ratio": p99(during) / p99(baseline),
    }  # fmt: skip


def redis_faults(repo: Path, root: Path, users: np.ndarray, rate: float, redis: OwnRedis,
                 deadline: float) -> dict:  # fmt: skip
    server = Server(repo, root, "--online-store", redis.url, "--deadline", str(deadline))
    load = Load(server.port, users, rate)
    out = {}
    for fault, recover in (("kill", "restart"), ("hang", "resume")):
        time.sleep(5)
        redis.signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        down = time.perf_counter()
        time.sleep(10)
        redis.start() if fault == "kill" else redis.signal(signal.SIGCONT)
        back = time.perf_counter()
        time.sleep(5)
        window = load.between(down - 5, back + 5)
        personal = [r[0] for r in window if r[0] >= back and r[3] == "personalized"]
        out[fault] = {
            "requests": len(window), "failed": sum(r[2] != 200 for r in window),
            "over_deadline": sum(r[1] > deadline for r in window),
            "max_latency_ms": max(r[1] for r in window) * 1000,
            "popular_while_down": sum(r[3] == "popular" for r in window if down <= r[0] < back),
            f"seconds_to_personalized_after_{recover}": (min(personal) - back) if personal
            else None,
        }  # fmt: skip
    load.stop()
    server.stop()
    return {"deadline_s": deadline, **out}


def bad_ids(repo: Path, root: Path, users: np.ndarray, rate: float) -> dict:
    server = Server(repo, root)
    out = {}
    for label, bad in (("without", False), ("with", True)):
        load = Load(server.port, users, rate)
        statuses = []
        began = time.perf_counter()
        while time.perf_counter() - began < 10:
            if bad:
                statuses.append(request(server.base, f"/recommend/{BAD_ID}")[0])
            time.sleep(1)
        records = load.stop()
        ok = [r for r in records if r[2] == 200]
        out[label] = {"requests": len(records), "personalized_share":
                      sum(r[3] == "personalized" for r in ok) / max(len(ok), 1),
                      "bad_id_statuses": sorted(set(statuses))}  # fmt: skip
    server.stop()
    return out


def servable(repo: Path, root: Path) -> tuple[bool, str]:
    """Every stored file passes its check and the server's start-up (the newest bundle that
    loads, its pipeline, a canary request) succeeds."""
    import pyarrow.parquet as pq

    from retrieval import bundle, store
    from retrieval.catalogue import read_meta
    from retrieval.pipeline import Pipeline

    try:
        prof = store.profile(repo)
        for path in prof.offline_dir.glob("*.parquet"):
            pq.read_table(path)
        json.loads((prof.offline_dir / "dataset.json").read_text())
        feast_store = store.open_store(prof)
        assert feast_store.list_feature_views(), "the registry lists no views"
        with sqlite3.connect(repo / "data" / "online_store.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        pipeline = Pipeline(feast_store, bundle.newest(root), read_meta(prof.offline_dir)["schema"])
        pipeline.canary()
        return True, pipeline.model_version
    except Exception as err:  # noqa: BLE001 - any failure is an unservable state, recorded
        return False, f"{type(err).__name__}: {err}"


STAGES = {
    "data": ["data", "--dataset", "synthetic", *WORLD, "--seed", "7"],
    "materialize": ["materialize"],
    "train": ["train", "--epochs", "3"],
    "index": ["index"],
    "train-ranker": ["train-ranker", "--epochs", "1"],
}


def stage_flags(name: str, repo: Path, root: Path) -> list[str]:
    artifacts = ["--artifacts", str(root)] if name in ("train", "index", "train-ranker") else []
    return ["--repo", str(repo), *artifacts]


def crashes(folder: Path, repo: Path, root: Path, trials: int) -> dict:
    rng = random.Random(0)
    durations = {}
    for name, argv in STAGES.items():  # how long each stage takes, on a copy
        copy = folder / f"timing-{name}"
        shutil.copytree(repo.parent, copy, symlinks=True)
        began = time.perf_counter()
        ttr(*argv, *stage_flags(name, copy / repo.name, copy / root.name))
        durations[name] = time.perf_counter() - began
        shutil.rmtree(copy)
    results = []
    for trial in range(trials):
        name = list(STAGES)[trial % len(STAGES)]
        copy = folder / f"trial-{trial}"
        shutil.copytree(repo.parent, copy, symlinks=True)
        at = rng.uniform(0.1, 0.95) * durations[name]
        child = subprocess.Popen(
            [*TTR, *STAGES[name], *stage_flags(name, copy / repo.name, copy / root.name)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(at)
        finished = child.poll() is not None
        child.send_signal(signal.SIGKILL)
        child.wait()
        ok, detail = servable(copy / repo.name, copy / root.name)
        results.append({"stage": name, "killed_at_s": round(at, 2), "had_finished": finished,
                        "servable": ok, "detail": detail})  # fmt: skip
        print(f"  crash {trial + 1:>2d}: {name:12s} at {at:5.1f} s -> "
              f"{'servable' if ok else 'UNSERVABLE ' + detail}", flush=True)  # fmt: skip
        shutil.rmtree(copy)
    return {"trials": trials, "stage_seconds": durations,
            "unservable": sum(not r["servable"] for r in results),
            "killed_mid_work": sum(not r["had_finished"] for r in results),
            "runs": results}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="server processes in the swaps")
    parser.add_argument("--deadline", type=float, default=1.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "live.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis = OwnRedis(folder)
        try:
            repo, root = world(folder, redis.url)
            users = np.arange(1, 2001)
            print("world built", flush=True)
            report = {"swaps": swaps(repo, root, users, args.rate, args.swaps, args.workers)}
            print(json.dumps(report["swaps"]), flush=True)
            report["redis"] = redis_faults(repo, root, users, args.rate, redis, args.deadline)
            print(json.dumps(report["redis"]), flush=True)
            report["bad_ids"] = bad_ids(repo, root, users, args.rate)
            print(json.dumps(report["bad_ids"]), flush=True)
            report["crashes"] = crashes(folder, repo, root, args.trials)
        finally:
            redis.close()
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **report,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    s, r, c = report["swaps"], report["redis"], report["crashes"]
    print(f"swaps: {s['swaps_converged']}/{s['swaps']} converged (max "
          f"{s['max_seconds_to_converge']:.2f} s) at {s['achieved_rps']:.0f} req/s, "
          f"{s['failed']} failed, {s['mixed_versions']} mixed; p99 {s['p99_ms_baseline']:.1f} ->"
          f" {s['p99_ms_during_swaps']:.1f} ms ({s['p99_ratio']:.2f}x)")  # fmt: skip
    for fault in ("kill", "hang"):
        f = r[fault]
        print(f"redis {fault}: {f['failed']} failed, {f['over_deadline']} over the deadline, "
              f"max {f['max_latency_ms']:.0f} ms, personalized again after "
              f"{list(f.values())[-1]}")  # fmt: skip
    b = report["bad_ids"]
    print(f"bad ids: personalized share {b['without']['personalized_share']:.3f} without, "
          f"{b['with']['personalized_share']:.3f} with")  # fmt: skip
    print(f"crashes: {c['unservable']} unservable of {c['trials']} "
          f"({c['killed_mid_work']} killed mid-work)")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
