"""A live service: complete bundles, hot swaps under load, faults that stay local, a bounded
queue, the OpenAPI document fuzzed, and crashes that leave nothing half-written. Real uvicorn
servers and a real Redis of the test's own."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import copy_repo, unique_project
from servers import OwnRedis, get, request, serve, stop

from retrieval import artifacts, bundle, index, store
from retrieval.bundle import BundleError
from retrieval.cli import run

SMALL = ["--users", "300", "--items", "80", "--interactions", "12000", "--groups", "4"]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ttr(repo: Path, *argv: str) -> None:
    assert run([*argv, "--repo", str(repo)]) == 0, argv


def new_version(repo: Path, root: Path, *train: str, ranker: bool = True) -> Path:
    """Train, index and (with `ranker`) train a ranker: the new `latest`."""
    art = ["--artifacts", str(root)]
    ttr(repo, "train", "--epochs", "1", "--batch-size", "256", "--refit", "false", *train, *art)
    ttr(repo, "index", *art)
    if ranker:
        ttr(repo, "train-ranker", "--epochs", "1", "--refit", "false", *art)
    return artifacts.latest(root)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("live"), unique_project())
    root = repo.parent / "artifacts"
    for step in (["data", "--dataset", "synthetic", *SMALL], ["apply"], ["materialize"]):
        ttr(repo, *step)
    return repo, root, new_version(repo, root)


@pytest.fixture
def own(live, tmp_path) -> tuple[Path, Path, Path]:
    """The live world's artifacts copied: a test may add and break versions."""
    repo, root, first = live
    copy = tmp_path / "artifacts"
    shutil.copytree(root, copy, symlinks=True)
    return repo, copy, copy / first.name


def test_latest_names_only_a_version_that_can_serve(own):
    repo, root, first = own
    ttr(repo, "train", "--epochs", "1", "--refit", "false", "--artifacts", str(root))
    assert artifacts.trained(root) != first and artifacts.latest(root) == first
    assert bundle.newest(root).version == first  # a trained version without an index: not yet
    ttr(repo, "index", "--artifacts", str(root))
    assert artifacts.latest(root) == artifacts.trained(root) != first
    served = bundle.newest(root)
    assert served.version == artifacts.latest(root) and served.ranker is None  # retrieval order


def test_a_bundle_whose_parts_do_not_belong_together_is_refused(own, caplog):
    repo, root, first = own
    second = new_version(repo, root, "--dim", "16", ranker=False)
    foreign = shutil.copytree(artifacts.target(first, artifacts.RANKER), second / "ranker-x")
    artifacts.point(second, artifacts.RANKER, foreign.name)
    with pytest.raises(BundleError, match=f"its ranker was trained for {first.name}"):
        bundle.load(second)
    assert bundle.newest(root).version == first  # the last complete bundle serves
    assert f"version {second.name}: its ranker was trained for {first.name}" in caplog.text
    (second / artifacts.RANKER).unlink()
    good = index.load(second)
    n, rng = len(bundle.load(second).vocab.items), np.random.default_rng(0)
    cases = [
        (32, np.arange(n), "index width 32 differs from the user tower's"),
        (16, np.arange(n) + 5, "holds 5 ids outside the catalogue"),
    ]
    for width, ids, message in cases:
        vectors = rng.normal(size=(n, width)).astype(np.float32)
        built = index.build(vectors, ids, vectors[:5], index.IndexConfig(k=5))
        index.save(built, vectors, second, {"model_version": second.name})
        with pytest.raises(BundleError, match=message):
            bundle.load(second)
        assert bundle.newest(root).version == first
    ttr(repo, "index", "--artifacts", str(root))  # the index second's towers made: it serves
    assert bundle.newest(root).version == second and index.load(second)[1] == good[1]


class Load:
    """Requests for random users, back to back on `threads` threads, until stopped."""

    def __init__(self, base: str, threads: int = 4) -> None:
        self.base, self.answers, self.failures = base, [], []
        self.running = True
        self.threads = [threading.Thread(target=self.loop, args=(i,)) for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def loop(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running:
            status, body = get(self.base, f"/recommend/{rng.randint(1, 300)}?k=5")
            if status != 200:
                self.failures.append((status, body))
            else:
                self.answers.append((body["model_version"], body["index_version"],
                                     body["ranker_version"]))  # fmt: skip

    def stop(self) -> None:
        self.running = False
        for thread in self.threads:
            thread.join()


def key(version: Path) -> tuple[str, str, str | None]:
    return bundle.load(version).key


def test_a_reload_swaps_bundles_under_load_without_one_error(own):
    repo, root, first = own
    process, base = serve(repo, root, env={"TTR_ADMIN_TOKEN": TOKEN})
    try:
        assert request(base, "/admin/reload", "POST")[0] == 401
        assert request(base, "/admin/reload", "POST", {"Authorization": "Bearer nope"})[0] == 403
        second = new_version(repo, root)
        assert get(base, "/version")[1]["model_version"] == first.name  # until told
        load = Load(base)
        time.sleep(0.5)
        status, body, _ = request(base, "/admin/reload", "POST", AUTH)
        time.sleep(0.5)
        load.stop()
        assert status == 200 and body["reloaded"], body
        assert body["serving"]["model_version"] == second.name
        assert not load.failures and set(load.answers) == {key(first), key(second)}  # no mixes
        third = new_version(repo, root)
        (index.folder(third) / "index.faiss").write_bytes(b"not an index")
        status, body, _ = request(base, "/admin/reload", "POST", AUTH)
        assert status == 200 and not body["reloaded"] and "sha256" in body["reason"]
        assert body["serving"]["model_version"] == get(base, "/version")[1]["model_version"]
        assert body["serving"]["model_version"] == second.name  # the old one serves on
        ttr(repo, "index", "--artifacts", str(root))  # third indexed afresh
        os.kill(process.pid, signal.SIGHUP)
        until(lambda: get(base, "/version")[1]["model_version"] == third.name, 20)
    finally:
        stop(process)


def until(condition, seconds: float) -> float:
    """Waits for `condition` (polled every 50 ms); returns the seconds it took."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < seconds, "not within the time allowed"
        time.sleep(0.05)
    return time.monotonic() - began


def test_every_worker_follows_a_reload(own):
    repo, root, first = own
    process, base = serve(repo, root, None, "--workers", "2", env={"TTR_ADMIN_TOKEN": TOKEN})
    try:
        until(lambda: all(get(base, "/readyz")[0] == 200 for _ in range(10)), 60)  # both up
        second = new_version(repo, root)
        status, body, _ = request(base, "/admin/reload", "POST", AUTH)
        assert status == 200 and body["reloaded"]

        def everyone() -> bool:  # new connections land on either worker
            return all(get(base, "/version")[1]["model_version"] == second.name
                       for _ in range(12))  # fmt: skip

        assert until(everyone, 10) < 5
    finally:
        stop(process)


@pytest.fixture
def redis_world(live, tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    repo, root, _ = live
    server = OwnRedis(tmp_path)
    ttr(repo, "apply", "--online-store", server.url)
    ttr(repo, "materialize", "--online-store", server.url)
    yield repo, root, server
    server.close()


def timed(base: str, path: str) -> tuple[float, int, dict]:
    began = time.perf_counter()
    status, body = get(base, path)
    return time.perf_counter() - began, status, body


def test_store_faults_stay_local_and_within_the_deadline(redis_world):
    repo, root, redis = redis_world
    process, base = serve(repo, root, redis.url, "--deadline", "0.5")
    try:
        assert get(base, "/recommend/1180591620717411303424")[0] == 422  # 2^70: not an int64
        assert get(base, "/recommend/-5")[1]["source"] == "popular"  # no such user
        assert get(base, "/recommend/1")[1]["source"] == "personalized"  # the breaker is closed
        for fault, back in ((signal.SIGSTOP, signal.SIGCONT), (signal.SIGKILL, None)):
            redis.signal(fault)
            answers = [timed(base, f"/recommend/{u}?k=3") for u in range(1, 8)]
            assert all(status == 200 and body["source"] == "popular" and seconds < 1.0
                       for seconds, status, body in answers), answers  # fmt: skip
            redis.signal(back) if back else redis.start()
            personal = until(lambda: get(base, "/recommend/2")[1]["source"] == "personalized", 10)
            assert personal < 3
    finally:
        stop(process)


def test_a_full_queue_answers_503_with_retry_after_at_once(live):
    repo, root, _ = live
    process, base = serve(repo, root, None, "--queue", "1", "--threads", "1")
    try:

        def timed_request(u: int) -> tuple[float, int, dict | str, dict]:
            began = time.perf_counter()
            answer = request(base, f"/recommend/{u % 300 + 1}?k=50")
            return time.perf_counter() - began, *answer

        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(timed_request, range(400)))
        assert {status for _, status, _, _ in answers} == {200, 503}
        shed = [(seconds, body, headers) for seconds, status, body, headers in answers
                if status == 503]  # fmt: skip
        assert all(headers.get("retry-after") == "1" and "overloaded" in body["detail"]
                   for _, body, headers in shed)  # fmt: skip
        assert np.median([seconds for seconds, _, _ in shed]) < 0.1  # at once, not after a wait
    finally:
        stop(process)


@pytest.mark.slow
def test_the_openapi_document_holds_for_every_generated_request(live):
    """schemathesis, in process: for each route 300 valid and 300 invalid requests (where the
    route takes any input), every check: no server error, every answer as declared."""
    import schemathesis

    from retrieval.api import create_app
    from retrieval.serving import Service

    repo, root, _ = live
    service = Service(store.profile(repo), root)
    asyncio.run(service.start())
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(service, TOKEN))
    checked = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [schemathesis.GenerationMode.POSITIVE]
        if "{" in operation.path:
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            checked[(operation.label, mode.value)] = fuzz(operation, mode)
    assert len(checked) == 12  # 9 routes, 3 of them with a path parameter
    assert all(len(calls) >= 250 for (label, _), calls in checked.items() if "{" in label)
    assert {404, 422} <= set(checked[("GET /similar/{item_id}", "negative")]) | set(
        checked[("GET /similar/{item_id}", "positive")])  # fmt: skip


def fuzz(operation, mode) -> list[int]:
    """The statuses of 300 requests schemathesis generates for `operation` in `mode`, each one
    checked against the schema (raises at the first that breaks it)."""
    from hypothesis import HealthCheck, given, settings

    calls: list[int] = []

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case) -> None:
        calls.append(case.call_and_validate().status_code)

    check()
    return calls


# ---- crashes ---------------------------------------------------------------------------------


def stored_files_pass(prof: store.Profile, root: Path) -> None:
    """Every file a crash could have touched passes its check, and a bundle serves."""
    for path in prof.offline_dir.glob("*.parquet"):
        pq.read_table(path)
    json.loads((prof.offline_dir / "dataset.json").read_text())
    assert store.open_store(prof).list_feature_views()  # the registry reads
    with sqlite3.connect(prof.repo / "data" / "online_store.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    served = bundle.newest(root)
    assert served.version == artifacts.latest(root)


CRASHES = [
    ["data", "--dataset", "synthetic", *SMALL, "--seed", "1"],
    ["materialize"],
    ["train", "--epochs", "2", "--batch-size", "256"],
    ["index"],
    ["train-ranker", "--epochs", "1"],
]


@pytest.fixture
def crash_world(live, tmp_path) -> tuple[Path, Path]:
    """The live world copied whole (data, stores, artifacts): a crash may leave its mark."""
    repo, root, _ = live
    shutil.copytree(repo.parent, tmp_path / "world", symlinks=True)
    return tmp_path / "world" / repo.name, tmp_path / "world" / root.name


@pytest.mark.slow
@pytest.mark.parametrize("argv", CRASHES, ids=[a[0] for a in CRASHES])
def test_a_kill_at_any_point_leaves_a_servable_state(crash_world, argv):
    repo, root = crash_world
    prof = store.profile(repo)
    rng = random.Random(" ".join(argv))
    for _ in range(2):
        extra = ["--artifacts", str(root)] if argv[0] in ("train", "index", "train-ranker") else []
        child = subprocess.Popen([sys.executable, "-c", "from retrieval.cli import main; main()",
                                  *argv, *extra, "--repo", str(repo)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(2.0, 9.0))  # past feast's import, somewhere in the work
        child.send_signal(signal.SIGKILL)
        child.wait()
        stored_files_pass(prof, root)
