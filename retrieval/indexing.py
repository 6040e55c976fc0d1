"""The `ttr index` stage: embed the catalogue with the latest item tower and index it in FAISS."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
from feast.errors import FeatureViewNotFoundException

from retrieval import artifacts, index, store
from retrieval.errors import TTRError
from retrieval.materialize import materialize_view
from retrieval.offline import read_meta, write_table
from retrieval.training import SERVICES, catalogue_frame
from towers import nn as tnn
from towers.features import training_frame
from towers.inputs import Vocab, item_inputs, user_inputs
from towers.item_tower import ItemTower
from towers.train import embed
from towers.user_tower import UserTower

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView


def run(prof: store.Profile, root: Path, cfg: index.IndexConfig) -> dict:
    """Index the latest version's catalogue; returns the index manifest written beside it."""
    version = artifacts.latest(root)
    manifest = artifacts.manifest(version)
    if manifest.get("stage") != "train":
        raise TTRError(f"{version} holds no trained towers")
    vocab = Vocab(
        genres=tuple(manifest["vocab"]["genres"]), num_items=manifest["vocab"]["num_items"]
    )
    at = pd.Timestamp(manifest["split"]["test_time"])
    feast_store = store.open_store(prof)
    view = embedding_view(feast_store)  # before anything is written
    catalogue = catalogue_frame(feast_store, prof.offline_dir, at)
    items = embed(tnn.load(ItemTower, version, "item_tower"), item_inputs(catalogue, vocab)).numpy()
    queries = query_sample(feast_store, prof, version, vocab, at, cfg.queries)
    built = index.build(items, catalogue["item_id"].to_numpy(), queries, cfg)
    info = index.save(built, version, {"model_version": manifest["version"], "k": cfg.k})
    info["online_rows"] = publish_embeddings(
        feast_store, view, prof, catalogue["item_id"], items, info
    )
    return info


def embedding_view(feast_store: FeatureStore) -> FeatureView:
    try:
        return feast_store.get_feature_view("item_embedding")
    except FeatureViewNotFoundException as err:
        raise TTRError("the registry lacks the item_embedding view: run `ttr apply`") from err


def publish_embeddings(feast_store: FeatureStore, view: FeatureView, prof: store.Profile,
                       item_ids: pd.Series, vectors: np.ndarray, info: dict) -> int:  # fmt: skip
    """The item embeddings as the `item_embedding` feature: offline parquet, then online."""
    end = datetime.fromisoformat(read_meta(prof.offline_dir)["end"])
    table = pa.table({
        "item_id": pa.array(item_ids.to_numpy(), pa.int64()),
        "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
        "model_version": pa.array([info["model_version"]] * len(vectors), pa.string()),
        "event_timestamp": pa.array([end] * len(vectors), pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    write_table(table, prof.offline_dir / "item_embedding.parquet")

    return materialize_view(feast_store, view, end, end)


def query_sample(
    feast_store: FeatureStore, prof: store.Profile, version: Path, vocab: Vocab, at: pd.Timestamp,
    n: int,
) -> np.ndarray:  # fmt: skip
    """User-tower embeddings of up to `n` users: the queries the index will answer."""
    users = pd.read_parquet(prof.offline_dir / "user_profile.parquet", columns=["user_id"])
    sample = users["user_id"].sample(min(n, len(users)), random_state=0).sort_values()
    entities = pd.DataFrame({"user_id": sample, "event_timestamp": at})
    frame = training_frame(feast_store, SERVICES["user"], entities)
    return embed(tnn.load(UserTower, version, "user_tower"), user_inputs(frame, vocab)).numpy()
