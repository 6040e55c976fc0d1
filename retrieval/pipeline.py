"""One recommendation request, with no HTTP in it: the object `ttr recommend` and `ttr serve` share.

    user id -> online features (one read: the user tower's features and the user's history)
      -> user embedding -> FAISS top-N -> drop the items the user has seen
      -> (a user with no history: the popularity prior, `retrieval.prior`)
      -> the NCF ranker re-scores (the towers' cosine and, where the ranker chose them, the
         item-to-item neighbours of the user's items: `towers.neighbours`) -> top k with both scores

Everything per item (titles, the ranker's item inputs, popularity) is read once at load, so a
request reads the online store for one entity only. A user the store does not know, a user with
no features, or an online store that does not answer (the breaker open) gets the most popular
items instead. A pipeline serves one bundle; the server swaps pipelines, never mutates one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import pandas as pd
import torch

from retrieval import bundle, index, prior, ranking, store
from retrieval.bundle import Bundle
from retrieval.catalogue import catalogue_frame, parse_id, read_meta
from retrieval.errors import TTRError
from towers.features import online_rows
from towers.inputs import user_inputs
from towers.train import take

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger("ttr.pipeline")
SERVICE = "recommend"
STAGES = ("features", "user_tower", "ann", "rerank")


@dataclass(frozen=True)
class PipelineConfig:
    candidates: int = 200  # FAISS top-N handed to the ranker
    retry_after: float = 1.0  # seconds a failed online store is left alone (popular meanwhile)


@dataclass
class Recommendation:
    user_id: int | str
    items: list[dict]  # item_id, title, score, retrieval_score, popularity (`retrieval.api.Item`)
    source: str  # "personalized" or "popular"
    seconds: dict[str, float] = field(default_factory=dict)  # per stage


class RequestError(ValueError):
    """A failure that belongs to one request (a value the store cannot take): that request
    fails, with a 4xx, and no other is affected."""


STORE_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, sqlite3.Error)
try:  # the Redis client's own failures, where it is installed
    import redis

    STORE_ERRORS += (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                     redis.exceptions.BusyLoadingError)  # fmt: skip
except ImportError:  # pragma: no cover - redis comes with feast[redis]
    pass


class Breaker:
    """Whether the online store is asked. Closed: every request asks. After a store failure it
    opens for `retry_after` seconds (requests get popular items without waiting on the store);
    then one request probes, and its outcome closes or reopens it. Failures of one request's own
    making never open it."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after, self.open_until, self.probing = retry_after, 0.0, False
        self.lock = threading.Lock()

    def allow(self) -> bool:
        with self.lock:
            if time.monotonic() < self.open_until or self.probing:
                return False
            if self.open_until:  # half open: this request is the probe
                self.probing = True
            return True

    def succeeded(self) -> None:
        with self.lock:
            self.open_until, self.probing = 0.0, False

    def failed(self) -> None:
        with self.lock:
            self.open_until, self.probing = time.monotonic() + self.retry_after, False

    @property
    def closed(self) -> bool:
        return not self.open_until


class Pipeline:
    """One bundle (`retrieval.bundle.Bundle`) answering requests against the online store."""

    def __init__(self, feast_store: FeatureStore, bundle: Bundle, schema: dict,
                 cfg: PipelineConfig | None = None,
                 catalogue: pd.DataFrame | None = None) -> None:  # fmt: skip
        """`catalogue`: the bundle's items' `ranker` features, where the caller holds them
        (read as of now otherwise)."""
        self.cfg = cfg or PipelineConfig()
        self.store, self.bundle, self.schema = feast_store, bundle, schema
        self.vocab, self.user_tower = bundle.vocab, bundle.user_tower
        self.index, self.index_params = bundle.index, bundle.index_info["params"]
        self.embeddings, self.ranker = bundle.embeddings, bundle.ranker
        if catalogue is None:
            catalogue = item_features(feast_store, bundle)
        self.item_ids = self.vocab.items.values.tolist()  # plain ints or strings, as the data
        titles = catalogue["title"] if "title" in catalogue else catalogue["item_id"]
        self.titles = titles.fillna("").astype(str).tolist()
        image = [n for n, kind in schema["items"].items() if kind == "image"]
        self.images = catalogue[image[0]].tolist() if image else [None] * len(catalogue)
        self.items = ranking.ranker_inputs(catalogue, self.vocab)
        self.log_counts = self.items["popularity"][:, 0].numpy()  # log1p(interactions)
        self.counts = np.rint(np.expm1(self.log_counts)).astype(np.int64).tolist()
        self.popular = np.argsort(-self.log_counts, kind="stable")
        self.cold_prior = prior.weight(bundle.manifest)
        self.breaker = Breaker(self.cfg.retry_after)
        faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead
        torch.set_num_threads(1)

    @classmethod
    def open(cls, prof: store.Profile, root: Path, cfg: PipelineConfig | None = None) -> Pipeline:
        """The newest servable bundle under `root` against the profile's online store."""
        feast_store = store.open_store(prof)
        return cls(feast_store, bundle.newest(root), read_meta(prof.offline_dir)["schema"], cfg)

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    @property
    def index_version(self) -> str:
        return self.bundle.index_version

    @property
    def ranker_version(self) -> str | None:
        return self.bundle.ranker_version

    def parse_user(self, text: str | int) -> int | str:
        """A user id as this dataset's ids are; ValueError if it cannot be one."""
        return parse_id(text, self.schema["user_id"], "user")

    def parse_item(self, text: str | int) -> int | str:
        return parse_id(text, self.schema["item_id"], "item")

    def recommend(self, user_id: int | str, k: int = 10, exclude_seen: bool = True,
                  ) -> Recommendation:  # fmt: skip
        seconds: dict[str, float] = {}
        row = self._features(user_id, seconds)
        if row is None:
            return self.popular_items(user_id, k, set(), seconds)
        history = self.vocab.items.rows(row.get("seen_items") or [])
        history = history[history >= 0]  # catalogue rows
        seen = history if exclude_seen else history[:0]
        if not _known(row):
            return self.popular_items(user_id, k, set(seen.tolist()), seconds)
        with _timed(seconds, "user_tower"), torch.inference_mode():
            x = user_inputs({name: [value] for name, value in row.items()}, self.vocab)
            query = self.user_tower(x).numpy()
        cold = bool(prior.cold(x)[0])
        with _timed(seconds, "ann"):
            rows, scores = self._retrieved(query, seen, cold)
        if not len(rows):
            return self.popular_items(user_id, k, set(seen.tolist()), seconds)
        with _timed(seconds, "rerank"):
            served = scores + self.cold_prior * self.log_counts[rows] if cold else scores
            chances = self._rerank(x, rows, served, history)
        best = (np.arange(min(k, len(rows))) if chances is None
                else np.argsort(-chances, kind="stable")[:k])  # fmt: skip
        items = [self._item(int(rows[j]), None if chances is None else float(chances[j]),
                            float(scores[j])) for j in best]  # fmt: skip
        return Recommendation(user_id, items, "personalized", seconds)

    def _retrieved(self, query: np.ndarray, seen: np.ndarray,
                   cold: bool) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """The candidates, best first, and their cosines: FAISS's top N of the unseen items; for
        a user with no history, ordered with the popularity prior (`retrieval.prior`)."""
        ((rows, scores),) = index.search_excluding(
            self.index, self.index_params, query, self.cfg.candidates, [seen]
        )
        if not cold or not self.cold_prior:
            return rows, scores
        return prior.rerank(rows, query[0], self.embeddings, self.log_counts, self.popular,
                            set(seen.tolist()), self.cold_prior, self.cfg.candidates)  # fmt: skip

    def _features(self, user_id: int | str, seconds: dict[str, float]) -> dict | None:
        """The user's online row; None while the store is deemed down (or fails now: the breaker
        opens). A failure of this request's own making is a RequestError."""
        if not self.breaker.allow():
            return None
        try:
            with _timed(seconds, "features"):
                row = online_rows(self.store, SERVICE, "user_id", [user_id])[0]
        except STORE_ERRORS as err:
            log.warning("online store unavailable, serving popular items: %s", err)
            self.breaker.failed()
            return None
        except (ValueError, TypeError, OverflowError) as err:
            raise RequestError(f"user {user_id!r}: {err}") from err
        self.breaker.succeeded()
        return row

    def _rerank(self, x: dict, rows: np.ndarray, retrieval: np.ndarray,
                history: np.ndarray) -> np.ndarray | None:  # fmt: skip
        """The ranker's probability of each candidate (catalogue `rows`, with their retrieval
        stage's scores `retrieval`; the sigmoid of its Platt-scaled logit) for a user who had the
        rows `history`; None without a ranker."""
        if self.ranker is None:
            return None
        with torch.inference_mode():
            item = take(self.items, torch.from_numpy(rows))
            first = self.ranker.first_stage(torch.from_numpy(retrieval), history, rows)
            return torch.sigmoid(self.ranker.score(x, item, first)).numpy()

    def popular_items(
        self, user_id: int | str, k: int, seen: set[int], seconds: dict[str, float] | None = None
    ) -> Recommendation:
        """The k most popular items the user has not seen (`seen`: catalogue rows)."""
        picked = [r for r in self.popular[: k + len(seen)] if int(r) not in seen]
        items = [self._item(int(r), None, None) for r in picked[:k]]
        return Recommendation(user_id, items, "popular", seconds or {})

    def similar(self, item_id: int | str, k: int = 10) -> list[dict]:
        """The k items nearest to `item_id` in the embedding space (its embedding as this
        version indexed it), the item itself left out; a KeyError for an unknown item."""
        row = self.row(item_id)
        if row < 0:
            raise KeyError(item_id)
        query = self.embeddings[row : row + 1]
        ((rows, scores),) = index.search_excluding(self.index, self.index_params, query, k,
                                                   [np.array([row])])  # fmt: skip
        return [self._item(int(r), None, float(s)) for r, s in zip(rows, scores, strict=True)]

    def canary(self) -> None:
        """One request through every stage, checked: a bundle that cannot answer is refused
        before it serves."""
        user = self.vocab.users.values[:1].tolist()[0] if len(self.vocab.users) else 0
        rec = self.recommend(user, 5)
        rows = self.vocab.items.rows([item["item_id"] for item in rec.items])
        if len(rec.items) != min(5, len(self.item_ids)) or (rows < 0).any():
            raise TTRError(f"version {self.model_version}: its canary request answered "
                           f"{len(rec.items)} items, some outside the catalogue")  # fmt: skip
        named = ("score", "retrieval_score")
        scores = [it[n] for it in rec.items for n in named if it[n] is not None]
        if not np.isfinite(scores).all():
            raise TTRError(f"version {self.model_version}: its canary request scored NaN")

    def history(self, user_id: int | str, k: int) -> list[int | str]:
        """The user's most recent items (the online `recent_items` feature), newest first; none
        where the store does not know the user or does not answer."""
        row = self._features(user_id, {})
        return list((row or {}).get("recent_items") or [])[:k]

    def describe(self, item_id: int | str) -> dict:
        """The item's id and title (its id where the catalogue lacks it or has no title)."""
        row = self.row(item_id)
        return {"item_id": item_id, "title": (self.titles[row] if row >= 0 else "") or
                str(item_id)}  # fmt: skip

    def image_of(self, item_id: int | str) -> Path | None:
        """The image file the dataset names for the item, if it has one."""
        row = self.row(item_id)
        path = self.images[row] if row >= 0 else None
        return Path(path) if isinstance(path, str) and path else None

    def row(self, item_id: int | str) -> int:
        """The item's catalogue row; -1 for an id the catalogue lacks."""
        return int(self.vocab.items.rows([item_id])[0])

    def ready(self) -> bool:
        """Whether the online store answers (the breaker is closed)."""
        return self.breaker.closed

    def _item(self, row: int, score: float | None, retrieval: float | None) -> dict:
        return {"item_id": self.item_ids[row], "title": self.titles[row], "score": score,
                "retrieval_score": retrieval, "popularity": self.counts[row]}  # fmt: skip


def item_features(feast_store: FeatureStore, bundle: Bundle) -> pd.DataFrame:
    """The features the ranker reads of every item of the bundle's catalogue, as of now."""
    now = pd.Timestamp.now(tz="UTC")
    return catalogue_frame(feast_store, bundle.vocab.items, now, ranking.SERVICE)


def _known(row: dict) -> bool:
    """The store holds some feature of this user (else Feast answers None for every one)."""
    return any(v is not None for name, v in row.items() if name != "user_id")


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    began = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = time.perf_counter() - began
