"""The live service behind the HTTP API, with no HTTP in it: which pipeline serves, hot swaps,
bounded queues and deadlines.

    requests -> at most `queue` waiting for the pipeline threads (past it: Overloaded, at once)
             -> the pipeline, on its dedicated threads; past `deadline`: popular items instead
    reload   -> the newest complete bundle loaded and checked beside the serving one (bundle
                checks, then a canary request), then swapped in by one assignment; a request in
                flight finishes on the pipeline it started with; a failure leaves the old one
                serving and says why. Other workers of the same server see the swap in a marker
                file and follow within `poll` seconds.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import faiss
import torch

from retrieval import artifacts, atomic, bundle, store
from retrieval.catalogue import read_meta
from retrieval.errors import TTRError
from retrieval.pipeline import Pipeline, PipelineConfig, Recommendation, item_features

log = logging.getLogger("ttr.serving")
T = TypeVar("T")
MARKER = ".serving.json"  # under the artifact root: the bundle the workers should serve


@dataclass(frozen=True)
class ServeConfig:
    threads: int = 1  # pipeline threads per worker (more pays off only for a slow remote store)
    queue: int = 64  # requests a worker lets wait for a pipeline thread; past it, 503 at once
    deadline: float = 1.0  # seconds a recommendation may take; past it, popular items instead
    poll: float = 1.0  # seconds between a worker's looks at the marker other workers leave
    pipeline: PipelineConfig = PipelineConfig()


class Overloaded(Exception):
    """More requests wait than the queue holds: answer 503 at once."""


@dataclass(frozen=True)
class Reload:
    reloaded: bool  # a new bundle now serves
    serving: tuple[str, str, str | None]  # (model, index, ranker) versions serving now
    reason: str  # what happened, in a line


def _one_thread_each() -> None:
    """A pipeline thread's FAISS and torch run single-threaded: one query's work is too small
    for a thread team, and OpenMP settings are per thread."""
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)


class Service:
    def __init__(self, prof: store.Profile, root: Path, cfg: ServeConfig | None = None) -> None:
        self.prof, self.root, self.cfg = prof, root, cfg or ServeConfig()
        self.pipeline: Pipeline | None = None
        self.waiting = 0
        self.executor: ThreadPoolExecutor | None = None
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="loader")
        self.lock = asyncio.Lock()
        self.marker_seen = 0.0
        self.feast_store = None
        self.catalogues: dict[tuple, object] = {}  # (data generation, items) -> their features

    async def start(self) -> None:
        """Open the store and serve the newest bundle that loads (an older one where the newest
        fails its checks)."""
        self.executor = ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="pipeline",
                                           initializer=_one_thread_each)  # fmt: skip
        self.feast_store = await self._load(store.open_store, self.prof)
        found = await self._load(bundle.newest, self.root)
        self.pipeline = await self._load(self._pipeline, found)
        await self.run(self.pipeline.canary)  # checked, and warm before the first request
        self.marker_seen = self._marker_time()
        _settle()
        log.info("serving version %s (index %s, ranker %s) against %s", *found.key,
                 store.describe(self.prof))  # fmt: skip

    async def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False)
        self.loader.shutdown(wait=False)

    def _pipeline(self, found: bundle.Bundle) -> Pipeline:
        """A pipeline over `found`. The items' features are read once per generation of the
        offline data and catalogue: most reloads swap towers over the same items, and reading
        them took most of a reload (0.1-0.5 s of a busy interpreter)."""
        schema = read_meta(self.prof.offline_dir)["schema"]
        key = (str(self.prof.offline_dir.resolve()), hash(found.vocab.items.values.tobytes()))
        if key not in self.catalogues:
            self.catalogues = {key: item_features(self.feast_store, found)}
        return Pipeline(self.feast_store, found, schema, self.cfg.pipeline, self.catalogues[key])

    async def _load(self, fn: Callable[..., T], *args: object) -> T:
        """Loading work, on its own thread: the pipeline threads keep serving meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.loader, fn, *args)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on a pipeline thread; Overloaded where the queue is full."""
        if self.waiting >= self.cfg.queue:
            raise Overloaded(f"{self.waiting} requests are waiting")
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.waiting -= 1

    async def recommend(self, pipeline: Pipeline, user: int | str, k: int,
                        exclude_seen: bool) -> Recommendation:  # fmt: skip
        """The pipeline's answer, or its popular items where it is not done by the deadline;
        Overloaded where the queue is full."""
        task = asyncio.ensure_future(self.run(pipeline.recommend, user, k, exclude_seen))
        done, _ = await asyncio.wait({task}, timeout=self.cfg.deadline)
        if task in done:
            return task.result()
        task.add_done_callback(_quietly)  # it finishes on its thread; its answer is dropped
        log.warning("user %r: no answer within the %.2f s deadline: popular items", user,
                    self.cfg.deadline)  # fmt: skip
        return pipeline.popular_items(user, k, set())

    async def reload(self, why: str) -> Reload:
        """Load `latest` beside the serving bundle, check it, and swap it in; else keep serving
        what serves and say why."""
        async with self.lock:
            current = self.pipeline
            version = artifacts.target(self.root, artifacts.LATEST)
            try:
                if version is None:
                    raise TTRError(f"no servable version in {self.root}")
                found = await self._load(bundle.load, version)
                if current is not None and found.key == current.bundle.key:
                    return Reload(False, found.key, "already serving the newest bundle")
                fresh = await self._load(self._pipeline, found)
                await self.run(fresh.canary)
            except (TTRError, OSError, ValueError, Overloaded) as err:
                log.error("reload (%s) refused: %s", why, err)
                return Reload(False, current.bundle.key if current else None, str(err))
            self.pipeline = fresh  # the swap: requests already holding `current` finish on it
            self._leave_marker(found.key)
            log.info("reload (%s): now serving version %s (index %s, ranker %s)", why, *found.key)
        gc.freeze()  # the new bundle joins the frozen heap; see `_settle`
        return Reload(True, found.key, f"now serving version {found.key[0]}")

    def _leave_marker(self, key: tuple) -> None:
        """Tell this server's other workers which bundle now serves."""
        atomic.write(json.dumps({"serving": list(key), "at": time.time()}), self.root / MARKER)
        self.marker_seen = self._marker_time()

    def _marker_time(self) -> float:
        path = self.root / MARKER
        return path.stat().st_mtime if path.exists() else 0.0

    async def follow(self) -> None:
        """Forever: when another worker has swapped bundles, swap too."""
        while True:
            await asyncio.sleep(self.cfg.poll)
            seen = self._marker_time()
            if seen > self.marker_seen:
                self.marker_seen = seen
                wanted = json.loads((self.root / MARKER).read_text())["serving"]
                if self.pipeline is None or list(self.pipeline.bundle.key) != wanted:
                    await self.reload("another worker swapped")


def _quietly(task: asyncio.Future) -> None:
    """Consume a dropped task's outcome (an exception no one awaits is logged as lost)."""
    if not task.cancelled():
        task.exception()


def _settle() -> None:
    """Collect, then freeze what is left: the loaded bundle never becomes garbage, and full
    collections over it cost 200 ms once in about a hundred requests. At start only: a full
    collection holds the interpreter for 0.17 s, which under load is a stall; a swap freezes
    the new bundle without one (what the old leaves is freed by reference counting)."""
    gc.collect()
    gc.freeze()
