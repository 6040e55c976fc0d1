"""`ttr serve`: the FastAPI app over `retrieval.pipeline.Pipeline`.

Artifacts load in the app's lifespan; every request's CPU work runs on a dedicated pipeline
thread, so the event loop only moves bytes. Errors in input are 422 with a message naming the
field; a failing online store degrades to popular items; nothing answers 500 for a known failure
mode.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import faiss
import torch
from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retrieval import store
from retrieval.pipeline import STAGES, Pipeline, PipelineConfig

T = TypeVar("T")

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """Prometheus counters and histograms of one app (its own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("ttr_requests", "Requests by route and status",
                                ["route", "status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("ttr_request_seconds", "Request latency by route", ["route"],
                                 buckets=BUCKETS, registry=self.registry)  # fmt: skip
        self.stage = Histogram("ttr_stage_seconds", "Recommendation latency per stage",
                               ["stage"], buckets=BUCKETS, registry=self.registry)  # fmt: skip
        self.source = Counter("ttr_recommendations", "Recommendations by source", ["source"],
                              registry=self.registry)  # fmt: skip


class Counting:
    """Pure ASGI middleware counting and timing every request by route and status (Starlette's
    `BaseHTTPMiddleware` costs more per request than a whole online read)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, sending)
        route = scope.get("route")  # set by the router on the shared scope
        name = route.path if route is not None else "unmatched"
        self.metrics.requests.labels(name, str(status[0])).inc()
        self.metrics.latency.labels(name).observe(time.perf_counter() - began)


def _parsed(parse: Callable[[str], T], text: str, field: str) -> T:
    """An id parsed as the dataset's ids are; a 422 naming the field where it cannot be one."""
    try:
        return parse(text)
    except ValueError as err:
        raise RequestValidationError(
            [{"loc": ("path", field), "msg": str(err), "type": "value_error", "input": text}]
        ) from None


def _one_thread_each() -> None:
    """A pipeline thread's FAISS and torch run single-threaded: one query's work is too small
    for a thread team, and OpenMP settings are per thread."""
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)


def from_environment() -> FastAPI:
    """The app `ttr serve` starts in each uvicorn worker, configured through the environment."""
    prof = store.profile(Path(os.environ["TTR_REPO"]), os.environ.get("TTR_ONLINE_STORE"))
    threads = int(os.environ.get("TTR_THREADS", "1"))
    return create_app(prof, Path(os.environ["TTR_ARTIFACTS"]), threads=threads)


def create_app(
    prof: store.Profile, root: Path, cfg: PipelineConfig | None = None, threads: int = 1
) -> FastAPI:
    """The app; the pipeline's CPU work runs on `threads` dedicated threads (the same ones every
    request: a thread pool that hands requests around costs a third more per request)."""
    metrics = Metrics()
    state: dict = {}

    async def work(fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(state["executor"], fn, *args)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["executor"] = ThreadPoolExecutor(
            threads, thread_name_prefix="pipeline", initializer=_one_thread_each
        )
        state["pipeline"] = await work(Pipeline, prof, root, cfg)
        yield
        state.pop("pipeline")
        state.pop("executor").shutdown(wait=False)

    app = FastAPI(title="two-tower retrieval", lifespan=lifespan)
    app.add_middleware(Counting, metrics=metrics)

    @app.get("/recommend/{user_id}")
    async def recommend(
        user_id: str = PathParam(description="the user's id (an integer or a string, as the data)"),
        k: int = Query(10, ge=1, le=1000, description="how many items"),
        exclude_seen: bool = Query(True, description="drop items the user has interacted with"),
    ) -> JSONResponse:
        pipeline = state["pipeline"]
        user = _parsed(pipeline.parse_user, user_id, "user_id")
        rec = await work(pipeline.recommend, user, k, exclude_seen)
        for stage in STAGES:
            if stage in rec.seconds:
                metrics.stage.labels(stage).observe(rec.seconds[stage])
        metrics.source.labels(rec.source).inc()
        return JSONResponse({"user_id": user, "items": rec.items, "source": rec.source,
                             "model_version": pipeline.model_version,
                             "index_version": pipeline.index_version})  # fmt: skip

    @app.get("/similar/{item_id}")
    async def similar(
        item_id: str = PathParam(description="the item's id (an integer or a string, as the data)"),
        k: int = Query(10, ge=1, le=1000, description="how many items"),
    ) -> dict:
        pipeline = state["pipeline"]
        item = _parsed(pipeline.parse_item, item_id, "item_id")
        try:
            items = await work(pipeline.similar, item, k)
        except KeyError:
            raise HTTPException(404, f"item {item!r} is not in the catalogue") from None
        return {"item_id": item, "items": items, "model_version": pipeline.model_version}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        pipeline = state.get("pipeline")
        ok = pipeline is not None and await work(pipeline.ready)
        return PlainTextResponse("ready" if ok else "not ready", status_code=200 if ok else 503)

    @app.get("/version")
    async def version() -> dict:
        pipeline = state["pipeline"]
        return {"model_version": pipeline.model_version, "index_version": pipeline.index_version,
                "ranker_version": pipeline.ranker_version}  # fmt: skip

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
