"""`ttr serve`: the HTTP API, thin over `retrieval.serving.Service`.

Settings come from the environment (`Settings`); the service loads in the app's lifespan. Every
route declares its responses: bad input is a 422 naming the field, an unknown item a 404, a full
queue a 503 with Retry-After; a failing online store degrades to popular items; nothing answers
500 for a known failure mode. Every answer names the bundle it came from.
"""
# no `from __future__ import annotations`: FastAPI reads the routes' annotations at definition,
# and a dependency defined inside `create_app` is only in scope there

import asyncio
import hmac
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retrieval import page, store
from retrieval.catalogue import INT64, read_meta
from retrieval.pipeline import STAGES, Pipeline, RequestError
from retrieval.serving import Overloaded, ServeConfig, Service

log = logging.getLogger("ttr.api")
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class Settings(BaseSettings):
    """What `ttr serve` hands each worker, as TTR_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="TTR_")
    repo: Path
    artifacts: Path
    online_store: str | None = None  # redis://HOST:PORT[/DB]; None: the repository's SQLite
    threads: int = ServeConfig.threads
    queue: int = ServeConfig.queue
    deadline: float = ServeConfig.deadline
    admin_token: str | None = None  # unset: no /admin routes
    store_timeout: float = store.SERVING_TIMEOUT  # seconds to connect to and read the store

    def service(self) -> Service:
        prof = store.profile(self.repo, self.online_store, timeout=self.store_timeout)
        cfg = ServeConfig(threads=self.threads, queue=self.queue, deadline=self.deadline)
        return Service(prof, self.artifacts, cfg)


class Item(BaseModel):
    item_id: int | str = Field(description="the item's id, as the data has it")
    title: str = Field(description="its title (its id where the dataset has no titles)")
    score: float | None = Field(
        description="the re-ranker's probability that the user picks this item, 0 to 1 (its"
        " logit, Platt-scaled on its training labels, through a sigmoid); personalized answers"
        " are ordered by it. null where no re-ranker scored the item: popular answers, /similar,"
        " a bundle without a re-ranker"
    )
    retrieval_score: float | None = Field(
        description="the cosine similarity of the towers' user embedding (in /similar: the"
        " item's) and this item's, -1 to 1: what FAISS ranks by, and the order of /similar and"
        " of a bundle without a re-ranker (for a user with no history, that order adds the"
        " version's popularity prior, weight x log(1 + popularity)). null for popular items"
    )
    popularity: int = Field(
        description="the item's interactions in the data, all of time as of the bundle's load;"
        " popular answers are ordered by it"
    )


class Versions(BaseModel):
    model_version: str = Field(description="the towers' version (one `ttr train`)")
    index_version: str = Field(description="that version's FAISS index")
    ranker_version: str | None = Field(description="its re-ranker; null: none, retrieval order")


class Recommended(Versions):
    user_id: int | str
    items: list[Item]
    source: Literal["personalized", "popular"] = Field(
        description="personalized; or popular, for a user the store does not know, or while the"
        " online store does not answer"
    )


class Similar(Versions):
    item_id: int | str
    items: list[Item]


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    online_store: str = Field(description="where the user features are read")


class Reloaded(BaseModel):
    reloaded: bool = Field(description="whether a new bundle now serves")
    reason: str
    serving: Versions | None


class Error(BaseModel):
    detail: str


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
        self.reloads = Counter("ttr_reloads", "Bundle reloads by outcome", ["outcome"],
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


def from_environment() -> FastAPI:
    """The app `ttr serve` starts in each uvicorn worker, configured through the environment."""
    settings = Settings()
    return create_app(settings.service(), settings.admin_token)


def id_parameter(kind: str, entity: str) -> object:
    """The path parameter of an id as the dataset has them, so that the OpenAPI document says
    what is valid and FastAPI answers 422 for the rest: an int64, or a non-empty string."""
    text = f"the {entity}'s id, as the data has it"
    if kind == "int64":
        return Annotated[int, PathParam(ge=INT64[0], le=INT64[1], description=text)]
    return Annotated[str, PathParam(min_length=1, max_length=512, pattern=r"^\S(.*\S)?$",
                                    description=text)]  # fmt: skip


def _invalid(field: str, text: str, err: Exception) -> RequestValidationError:
    return RequestValidationError(
        [{"loc": ("path", field), "msg": str(err), "type": "value_error", "input": text}]
    )


def _versions(pipeline: Pipeline) -> dict:
    return {"model_version": pipeline.model_version, "index_version": pipeline.index_version,
            "ranker_version": pipeline.ranker_version}  # fmt: skip


OVERLOADED = {503: {"model": Error, "description": "the queue is full: retry after a second"}}
NOT_FOUND = {404: {"model": Error, "description": "no such item in the catalogue"}}
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
               ".gif": "image/gif", ".webp": "image/webp"}  # fmt: skip
IMAGE = {200: {"content": {t: {} for t in {*IMAGE_TYPES.values(), "application/octet-stream"}},
               "description": "the image file the dataset names for the item"},
         404: {"model": Error, "description": "no such item, or it has no image"}}  # fmt: skip
PAGE = {404: {"content": {"text/html": {"schema": {"type": "string"}}},
              "description": "no such item: the page says so"}}  # fmt: skip


def create_app(service: Service, admin_token: str | None = None) -> FastAPI:
    """The app over `service`; `/admin/reload` exists only with an `admin_token`."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        loop = asyncio.get_running_loop()
        with suppress(NotImplementedError, RuntimeError, ValueError):  # no signals off main
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(
                reload_and_count("SIGHUP")))  # fmt: skip
        follower = asyncio.ensure_future(service.follow())
        yield
        follower.cancel()
        await service.stop()

    async def reload_and_count(why: str) -> Reloaded:
        done = await service.reload(why)
        metrics.reloads.labels("swapped" if done.reloaded else "kept").inc()
        serving = (
            dict(zip(Versions.model_fields, done.serving, strict=True)) if done.serving else None
        )
        return Reloaded(reloaded=done.reloaded, reason=done.reason, serving=serving)

    app = FastAPIOffline(title="two-tower retrieval", lifespan=lifespan)  # /docs: no CDN
    app.add_middleware(Counting, metrics=metrics)

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, err: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": f"overloaded: {err}"}, status_code=503,
                            headers={"Retry-After": "1"})  # fmt: skip

    async def serving() -> Pipeline:
        """The pipeline serving now: a request keeps it to the end, whatever swaps meanwhile.
        (async: FastAPI runs a plain function dependency on a worker thread, a thread hop per
        request.)"""
        if service.pipeline is None:
            raise HTTPException(503, "not ready")
        return service.pipeline

    Serving = Annotated[Pipeline, Depends(serving)]
    kinds = read_meta(service.prof.offline_dir)["schema"]
    UserId, ItemId = id_parameter(kinds["user_id"], "user"), id_parameter(kinds["item_id"], "item")

    @app.get("/recommend/{user_id}", response_model=Recommended, responses=OVERLOADED)
    async def recommend(
        pipeline: Serving,
        user_id: UserId,
        k: int = Query(10, ge=1, le=1000, description="how many items"),
        exclude_seen: bool = Query(True, description="drop items the user has interacted with"),
    ) -> dict:
        try:
            rec = await service.recommend(pipeline, user_id, k, exclude_seen)
        except RequestError as err:
            raise _invalid("user_id", user_id, err) from None
        for stage in STAGES:
            if stage in rec.seconds:
                metrics.stage.labels(stage).observe(rec.seconds[stage])
        metrics.source.labels(rec.source).inc()
        return {"user_id": user_id, "items": rec.items, "source": rec.source,
                **_versions(pipeline)}  # fmt: skip

    @app.get("/similar/{item_id}", response_model=Similar, responses={**NOT_FOUND, **OVERLOADED})
    async def similar(
        pipeline: Serving,
        item_id: ItemId,
        k: int = Query(10, ge=1, le=1000, description="how many items"),
    ) -> dict:
        try:
            items = await service.run(pipeline.similar, item_id, k)
        except KeyError:
            raise HTTPException(404, f"item {item_id!r} is not in the catalogue") from None
        return {"item_id": item_id, "items": items, **_versions(pipeline)}

    @app.get("/items/{item_id}/image", response_class=FileResponse, responses=IMAGE)
    async def item_image(pipeline: Serving, item_id: ItemId) -> FileResponse:
        """The item's image, out of the dataset's own files (only those the catalogue names)."""
        path = pipeline.image_of(item_id)
        if path is None or not path.is_file():
            raise HTTPException(404, f"item {item_id!r} has no image")
        media = IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return FileResponse(path, media_type=media,
                            headers={"Cache-Control": "public, max-age=86400"})  # fmt: skip

    @app.get("/", response_class=HTMLResponse, responses={**PAGE, **OVERLOADED})
    async def home(
        pipeline: Serving,
        user: str | None = Query(None, max_length=512, description="whose items to show"),
        item: str | None = Query(None, max_length=512, description="whose similar items"),
        k: int = Query(10, ge=1, le=100, description="how many items a row"),
    ) -> HTMLResponse:
        """A page: a user's recent items and recommendations, an item's similar items."""
        view = page.View(
            "two-tower retrieval",
            _versions(pipeline),
            user=user or "",
            examples=pipeline.vocab.users.values[:5].tolist(),
        )
        status = 200
        try:
            if user:
                await user_sections(pipeline, view, pipeline.parse_user(user), k)
            if item:
                await item_sections(pipeline, view, pipeline.parse_item(item), k)
        except ValueError as err:  # an id the dataset cannot have (a RequestError too): the
            view.error = str(err)  # page says why, beside the form to try again
        except KeyError:
            view.error, status = f"item {item!r} is not in the catalogue", 404
        return HTMLResponse(page.render(view), status_code=status)

    async def user_sections(pipeline: Pipeline, view: page.View, user_id: int | str,
                            k: int) -> None:  # fmt: skip
        rec = await service.recommend(pipeline, user_id, k, True)
        recent = await service.run(pipeline.history, user_id, k)
        shown = [pipeline.describe(i) for i in recent]
        view.heading, view.source = f"user {user_id}", rec.source
        view.sections += [
            (f"recent items of user {user_id}", page.tiles(shown, pipeline.image_of, ranked=False)),
            (f"top {k} recommended ({rec.source})", page.tiles(rec.items, pipeline.image_of)),
        ]

    async def item_sections(pipeline: Pipeline, view: page.View, item_id: int | str,
                            k: int) -> None:  # fmt: skip
        similar = await service.run(pipeline.similar, item_id, k)
        described = pipeline.describe(item_id)
        one = page.tiles([described], pipeline.image_of, ranked=False)
        if not view.source:  # an item's page of its own, not below a user's
            view.heading = f"items like {described['title']}"
        near = page.tiles(similar, pipeline.image_of)
        view.sections += [(f"item {item_id}", one), (f"{k} similar items", near)]

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
    async def readyz() -> JSONResponse:
        pipeline = service.pipeline
        ok = pipeline is not None and pipeline.ready()
        body = {"status": "ready" if ok else "not ready",
                "online_store": store.describe(service.prof)}  # fmt: skip
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/version", response_model=Versions)
    async def version(pipeline: Serving) -> dict:
        return _versions(pipeline)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition"}})  # fmt: skip
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if admin_token:

        async def authorised(authorization: str | None = Header(None)) -> None:
            if not authorization or not authorization.startswith("Bearer "):
                raise HTTPException(401, "an Authorization: Bearer token is required",
                                    headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
            if not hmac.compare_digest(authorization[7:].encode(), admin_token.encode()):
                raise HTTPException(403, "wrong token")

        errors = {401: {"model": Error}, 403: {"model": Error}}

        @app.post("/admin/reload", response_model=Reloaded, responses=errors,
                  dependencies=[Depends(authorised)])  # fmt: skip
        async def reload() -> Reloaded:
            """Load the newest complete bundle beside the serving one, check it, swap it in; a
            failure leaves the old one serving, and `reason` says why."""
            return await reload_and_count("POST /admin/reload")

    return app
