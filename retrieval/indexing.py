"""The `ttr index` stage: embed the catalogue with the latest item tower and index it in FAISS."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from retrieval import artifacts, index, store
from retrieval.errors import TTRError
from retrieval.training import SERVICES, catalogue_frame
from towers import nn as tnn
from towers.features import training_frame
from towers.inputs import Vocab, item_inputs, user_inputs
from towers.item_tower import ItemTower
from towers.train import embed
from towers.user_tower import UserTower

if TYPE_CHECKING:
    from feast import FeatureStore


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
    catalogue = catalogue_frame(feast_store, prof.offline_dir, at)
    items = embed(tnn.load(ItemTower, version, "item_tower"), item_inputs(catalogue, vocab)).numpy()
    queries = query_sample(feast_store, prof, version, vocab, at, cfg.queries)
    built = index.build(items, catalogue["item_id"].to_numpy(), queries, cfg)
    return index.save(built, version, {"model_version": manifest["version"], "k": cfg.k})


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
