"""`ttr serve`: the FastAPI app over `retrieval.pipeline.Pipeline`.

Artifacts load in the app's lifespan; every request's CPU work runs in a worker thread, so the
event loop only moves bytes. Errors in input are 422 with a message naming the field; a failing
online store degrades to popular items; nothing answers 500 for a known failure mode.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from retrieval import store
from retrieval.pipeline import STAGES, Pipeline, PipelineConfig

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


def from_environment() -> FastAPI:
    """The app `ttr serve` starts in each uvicorn worker, configured through the environment."""
    prof = store.profile(Path(os.environ["TTR_REPO"]), os.environ.get("TTR_ONLINE_STORE"))
    return create_app(prof, Path(os.environ["TTR_ARTIFACTS"]))


def create_app(prof: store.Profile, root: Path, cfg: PipelineConfig | None = None) -> FastAPI:
    metrics = Metrics()
    state: dict[str, Pipeline] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["pipeline"] = await asyncio.to_thread(Pipeline, prof, root, cfg)
        yield
        state.clear()

    app = FastAPI(title="two-tower retrieval", lifespan=lifespan)

    @app.middleware("http")
    async def count(request: Request, call_next):  # noqa: ANN001, ANN202 - FastAPI's signature
        began = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = route.path if route is not None else "unmatched"
        metrics.requests.labels(name, str(response.status_code)).inc()
        metrics.latency.labels(name).observe(time.perf_counter() - began)
        return response

    @app.get("/recommend/{user_id}")
    async def recommend(
        user_id: int = PathParam(description="the user's id"),
        k: int = Query(10, ge=1, le=1000, description="how many items"),
        exclude_seen: bool = Query(True, description="drop items the user has interacted with"),
    ) -> dict:
        pipeline = state["pipeline"]
        rec = await asyncio.to_thread(pipeline.recommend, user_id, k, exclude_seen)
        for stage in STAGES:
            if stage in rec.seconds:
                metrics.stage.labels(stage).observe(rec.seconds[stage])
        metrics.source.labels(rec.source).inc()
        return {"user_id": user_id, "items": rec.items, "source": rec.source,
                "model_version": pipeline.model_version,
                "index_version": pipeline.index_version}  # fmt: skip

    @app.get("/similar/{item_id}")
    async def similar(
        item_id: int = PathParam(description="the item's id"),
        k: int = Query(10, ge=1, le=1000, description="how many items"),
    ) -> dict:
        pipeline = state["pipeline"]
        try:
            items = await asyncio.to_thread(pipeline.similar, item_id, k)
        except KeyError:
            raise HTTPException(404, f"item {item_id} is not in the catalogue") from None
        except Exception as err:  # noqa: BLE001 - the online store is down or lacks the item
            raise HTTPException(503, f"item embeddings unavailable: {err}") from None
        return {"item_id": item_id, "items": items, "model_version": pipeline.model_version}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        pipeline = state.get("pipeline")
        ok = pipeline is not None and await asyncio.to_thread(pipeline.ready)
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
