"""One recommendation request, with no HTTP in it: the object `ttr recommend` and `ttr serve` share.

    user id -> online features (one read: the user tower's features and the user's history)
      -> user embedding -> FAISS top-N -> drop the items the user has seen
      -> the NCF ranker re-scores -> top k with both scores

Everything per item (titles, the ranker's item inputs, popularity) is read once at load, so a
request reads the online store for one entity only. A user the store does not know, a user with
no features, or an online store that does not answer gets the most popular items instead.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

from retrieval import artifacts, index, ranking, store
from retrieval.catalogue import catalogue_frame, parse_id, read_meta
from retrieval.errors import TTRError
from towers import nn as tnn
from towers.features import online_rows
from towers.inputs import Vocab, user_inputs
from towers.ranker import Ranker
from towers.train import take
from towers.user_tower import UserTower

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
    items: list[dict]  # item_id, title, score, retrieval_score
    source: str  # "personalized" or "popular"
    seconds: dict[str, float] = field(default_factory=dict)  # per stage


class Pipeline:
    def __init__(self, prof: store.Profile, root: Path, cfg: PipelineConfig | None = None) -> None:
        self.cfg = cfg or PipelineConfig()
        self.store = store.open_store(prof)
        version = artifacts.latest(root)
        manifest = artifacts.manifest(version)
        if not (version / "index.json").exists():
            raise TTRError(f"{version} has no index; run `ttr index` first")
        self.model_version = manifest["version"]
        self.vocab = Vocab.load(version)
        self.schema = read_meta(prof.offline_dir)["schema"]
        self.user_tower = tnn.load(UserTower, version, "user_tower")
        self.index, info = index.load(version)
        self.index_params = info["params"]
        self.index_version = f"{self.model_version}/{info['sha256'][:12]}"
        self.embeddings = index.embeddings(version)  # the catalogue's, as indexed
        self.ranker, self.ranker_version = _ranker(root)
        now = pd.Timestamp.now(tz="UTC")
        catalogue = catalogue_frame(self.store, self.vocab.items, now, ranking.SERVICE)
        self.item_ids = self.vocab.items.values.tolist()  # plain ints or strings, as the data
        titles = catalogue["title"] if "title" in catalogue else catalogue["item_id"]
        self.titles = titles.fillna("").astype(str).tolist()
        image = [n for n, kind in self.schema["items"].items() if kind == "image"]
        self.images = catalogue[image[0]].tolist() if image else [None] * len(catalogue)
        self.items = ranking.ranker_inputs(catalogue, self.vocab)
        self.popular = np.argsort(-self.items["popularity"][:, 0].numpy(), kind="stable")
        self.down_until = 0.0  # while the online store is deemed down: no request waits on it
        faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead
        torch.set_num_threads(1)
        gc.freeze()  # the loaded state never becomes garbage: keep full collections off it

    def parse_user(self, text: str | int) -> int | str:
        """A user id as this dataset's ids are; ValueError if it cannot be one."""
        return parse_id(text, self.schema["user_id"], "user")

    def parse_item(self, text: str | int) -> int | str:
        return parse_id(text, self.schema["item_id"], "item")

    def recommend(self, user_id: int | str, k: int = 10, exclude_seen: bool = True,
                  ) -> Recommendation:  # fmt: skip
        seconds: dict[str, float] = {}
        if time.monotonic() < self.down_until:
            return self.popular_items(user_id, k, set(), seconds)
        try:
            with _timed(seconds, "features"):
                row = online_rows(self.store, SERVICE, "user_id", [user_id])[0]
        except Exception as err:  # noqa: BLE001 - any online-store failure degrades, never fails
            log.warning("online store unavailable, serving popular items: %s", err)
            self.down_until = time.monotonic() + self.cfg.retry_after
            return self.popular_items(user_id, k, set(), seconds)
        seen = self.vocab.items.rows(row.get("seen_items") or [] if exclude_seen else [])
        seen = seen[seen >= 0]  # catalogue rows
        if not _known(row):
            return self.popular_items(user_id, k, set(seen.tolist()), seconds)
        with _timed(seconds, "user_tower"), torch.no_grad():
            x = user_inputs({name: [value] for name, value in row.items()}, self.vocab)
            query = self.user_tower(x).numpy()
        with _timed(seconds, "ann"):
            ((rows, scores),) = index.search_excluding(
                self.index, self.index_params, query, self.cfg.candidates, [seen]
            )
        if not len(rows):
            return self.popular_items(user_id, k, set(seen.tolist()), seconds)
        with _timed(seconds, "rerank"):
            final = self._rerank(x, torch.from_numpy(rows), scores)
        best = np.argsort(-final, kind="stable")[:k]
        items = [self._item(int(rows[j]), float(final[j]), float(scores[j])) for j in best]
        return Recommendation(user_id, items, "personalized", seconds)

    def _rerank(self, x: dict, rows: torch.Tensor, retrieval: np.ndarray) -> np.ndarray:
        if self.ranker is None:
            return retrieval
        with torch.no_grad():
            item = take(self.items, rows)
            return self.ranker.score(x, item, torch.from_numpy(retrieval)).numpy()

    def popular_items(
        self, user_id: int | str, k: int, seen: set[int], seconds: dict[str, float] | None = None
    ) -> Recommendation:
        """The k most popular items the user has not seen (`seen`: catalogue rows; scores: log
        counts)."""
        picked = [r for r in self.popular[: k + len(seen)] if int(r) not in seen]
        pop = self.items["popularity"][:, 0]
        items = [self._item(int(r), float(pop[r]), None) for r in picked[:k]]
        return Recommendation(user_id, items, "popular", seconds or {})

    def similar(self, item_id: int | str, k: int = 10) -> list[dict]:
        """The k items nearest to `item_id` in the embedding space (its embedding as this
        version indexed it), the item itself left out; a KeyError for an unknown item."""
        row = self.row(item_id)
        if row < 0:
            raise KeyError(item_id)
        query = self.embeddings[row : row + 1]
        scores, rows = index.search(self.index, self.index_params, query, k + 1)
        pairs = [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True)
                 if r >= 0 and r != row][:k]  # fmt: skip
        return [self._item(r, s, s) for r, s in pairs]

    def image(self, row: int) -> Path | None:
        """The image file of the item at catalogue row `row`, if it has one."""
        path = self.images[row]
        return Path(path) if isinstance(path, str) and path else None

    def row(self, item_id: int | str) -> int:
        """The item's catalogue row; -1 for an id the catalogue lacks."""
        return int(self.vocab.items.rows([item_id])[0])

    def ready(self) -> bool:
        """Whether the online store answers."""
        try:
            online_rows(self.store, SERVICE, "user_id", [self.vocab.users.values[0]])
        except Exception:  # noqa: BLE001 - readiness is a yes or no
            return False
        return True

    def _item(self, row: int, score: float, retrieval: float | None) -> dict:
        return {"item_id": self.item_ids[row], "title": self.titles[row], "score": score,
                "retrieval_score": retrieval}  # fmt: skip


def _known(row: dict) -> bool:
    """The store holds some feature of this user (else Feast answers None for every one)."""
    return any(v is not None for name, v in row.items() if name != "user_id")


def _ranker(root: Path) -> tuple[Ranker | None, str | None]:
    folder = root / "ranker"
    if not (folder / artifacts.LATEST).exists():
        log.warning("no ranker under %s: candidates keep their retrieval order", folder)
        return None, None
    version = artifacts.latest(folder)
    return tnn.load(Ranker, version, "ranker"), artifacts.manifest(version)["version"]


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    began = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = time.perf_counter() - began
