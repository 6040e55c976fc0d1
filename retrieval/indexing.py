"""The `ttr index` stage: embed the catalogue with the latest item tower and index it in FAISS.

The index's ids are catalogue rows of the version (its `items.parquet`), whatever the item ids
are (integers or strings)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
from feast.errors import FeatureViewNotFoundException

from retrieval import artifacts, atomic, index, store
from retrieval.catalogue import catalogue_frame, read_meta, stored_ids
from retrieval.errors import TTRError
from retrieval.materialize import materialize_view
from retrieval.training import embed_items, embed_users, load_towers
from towers.inputs import Vocab

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView


def run(prof: store.Profile, root: Path, cfg: index.IndexConfig) -> dict:
    """Index the newest trained version's catalogue, then make that version `latest` (it can
    serve now); returns the index manifest written beside it."""
    version = artifacts.trained(root)
    manifest = artifacts.manifest(version)
    if manifest.get("stage") != "train":
        raise TTRError(f"{version} holds no trained towers")
    vocab, at = Vocab.load(version), pd.Timestamp(manifest["split"]["test_time"])
    feast_store = store.open_store(prof)
    view = embedding_view(feast_store)  # before anything is written
    catalogue = catalogue_frame(feast_store, vocab.items, at)
    user_tower, item_tower = load_towers(version)
    items = embed_items(item_tower, vocab, catalogue)
    users = stored_ids(prof.offline_dir, "user").values
    rng = np.random.default_rng(0)
    sample = np.sort(users[rng.choice(len(users), min(cfg.queries, len(users)), replace=False)])
    queries = embed_users(feast_store, user_tower, vocab, sample, at)  # what the index will answer
    built = index.build(items, np.arange(len(items)), queries, cfg)
    info = index.save(built, items, version, {"model_version": manifest["version"], "k": cfg.k})
    artifacts.point(root, artifacts.LATEST, version.name)
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
    integer = pd.api.types.is_integer_dtype(item_ids)
    table = pa.table({
        "item_id": pa.array(item_ids.to_numpy(), pa.int64() if integer else pa.string()),
        "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
        "model_version": pa.array([info["model_version"]] * len(vectors), pa.string()),
        "event_timestamp": pa.array([end] * len(vectors), pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    atomic.write(table, prof.offline_dir / "item_embedding.parquet")
    store.sync_offline(prof, ["item_embedding"])

    return materialize_view(feast_store, view, end, end)
