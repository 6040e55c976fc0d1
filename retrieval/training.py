"""The `ttr train` stage: split the interactions, read point-in-time features from Feast, fit both
towers, and publish them as a new artifact version."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.compute as pa_compute
import pyarrow.parquet as pq
import torch

from retrieval import artifacts, content, store
from retrieval.errors import TTRError
from retrieval.offline import (
    FeatureConfig,
    activity_from,
    feature_config,
    leave_one_out,
    micros,
    read_meta,
)
from towers import nn as tnn
from towers.features import training_frame
from towers.inputs import Vocab, item_inputs, user_inputs
from towers.item_tower import ItemTower, ItemTowerConfig
from towers.train import Inputs, TrainConfig, Validation, embed, train
from towers.user_tower import UserTower, UserTowerConfig

if TYPE_CHECKING:
    from collections.abc import Iterable

    from feast import FeatureStore

SERVICES = {"user": "user_tower", "item": "item_tower"}
BEFORE_REFIT = "before_refit"  # the early-stopped towers of a version that refit after them


@dataclass(frozen=True)
class SplitConfig:
    cutoff: float = 0.8  # temporal splits: the time quantile where test begins
    validation: float = 0.1  # share before the cut-off (temporal) or of training rows held out


@dataclass(frozen=True)
class Split:
    kind: str  # "given", "temporal" or "random"
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    validation_time: pd.Timestamp  # user features for validation are read as of this time
    test_time: pd.Timestamp


def split(inter: pd.DataFrame, dataset: str, cfg: SplitConfig, seed: int = 0) -> Split:
    """ml-1m's given split; synthetic at random; otherwise temporal at a global cut-off (train
    before the `cutoff - validation` quantile, validation up to `cutoff`, test after)."""
    ts = inter["event_timestamp"]
    rng = np.random.default_rng(seed)
    if (inter["split"] == "test").any() or dataset == "synthetic":
        kind = "given" if (inter["split"] == "test").any() else "random"
        test = (
            inter["split"] == "test" if kind == "given" else rng.random(len(inter)) < 1 - cfg.cutoff
        )
        val = ~test & (rng.random(len(inter)) < cfg.validation)
        end = ts.max() + pd.Timedelta(days=1)  # no time order: features as of the end
        return Split(kind, inter[~test & ~val], inter[val], inter[test], end, end)
    test_time = ts.quantile(cfg.cutoff)
    val_time = ts.quantile(cfg.cutoff - cfg.validation)
    train_rows, test = ts < val_time, ts >= test_time
    return Split(
        "temporal", inter[train_rows], inter[~train_rows & ~test], inter[test], val_time, test_time
    )


def catalogue_frame(
    feast_store: FeatureStore, offline_dir: Path, at: pd.Timestamp, service: str = SERVICES["item"]
) -> pd.DataFrame:
    """Every item's features in `service` as of `at`, one row per item in id order."""
    ids = pq.read_table(offline_dir / "item_content.parquet", columns=["item_id"])[
        "item_id"
    ].to_numpy()
    entities = pd.DataFrame({"item_id": np.sort(ids), "event_timestamp": at})
    return training_frame(feast_store, service, entities)


def rows_of(item_ids: Iterable[int]) -> dict[int, int]:
    """Item id -> its row in a catalogue listed in `item_ids` order."""
    return {int(item): row for row, item in enumerate(item_ids)}


def num_users(offline_dir: Path) -> int:
    """One past the largest user id in the user table: the size of a user-id embedding."""
    ids = pq.read_table(offline_dir / "user_profile.parquet", columns=["user_id"])["user_id"]
    return int(pa_compute.max(ids).as_py()) + 1


def held_out(sp: Split, items: frozenset[int]) -> Split:
    """The split with `items` removed from training and validation entirely."""

    def keep(f: pd.DataFrame) -> pd.DataFrame:
        return f[~f["item_id"].isin(items)]

    return dataclasses.replace(sp, train=keep(sp.train), validation=keep(sp.validation))


def validation_set(
    feast_store: FeatureStore, sp: Split, vocab: Vocab, catalogue: pd.DataFrame,
    features: FeatureConfig, afresh: bool = False,
) -> Validation:  # fmt: skip
    """Validation users with their features as of the validation time, and their items."""
    users, row_of = np.sort(sp.validation["user_id"].unique()), rows_of(catalogue["item_id"])
    relevant = sp.validation.groupby("user_id")["item_id"].apply(lambda s: {row_of[i] for i in s})
    seen = sp.train.groupby("user_id")["item_id"].apply(lambda s: {row_of[i] for i in s})
    return Validation(
        validation_users(feast_store, sp, vocab, users, catalogue, features, afresh),
        [relevant[u] for u in users], [seen.get(u, set()) for u in users],
    )  # fmt: skip


def validation_users(
    feast_store: FeatureStore, sp: Split, vocab: Vocab, user_ids: np.ndarray,
    catalogue: pd.DataFrame, features: FeatureConfig, afresh: bool = False,
) -> Inputs:  # fmt: skip
    """User-tower inputs of `user_ids` as of the validation time. Where the split is not in time
    order (given, random), that is the end of training, and the store's activity features then
    count the validation rows themselves: those (count, genre shares, recent items) are computed
    afresh from the training rows alone (with the store's `features` recipe), so validation
    rewards neither finding its answers among the inputs nor their genres in the shares.
    `afresh`: so too on a temporal split (the training rows lack a cold start's held-out items;
    the store has them)."""
    frame = user_frame(feast_store, user_ids, sp.validation_time)
    if sp.kind != "temporal" or afresh:
        frame = activity_from(sp.train, frame, catalogue, vocab.genres, features)
    return user_inputs(frame, vocab)


def vocab_of(manifest: dict) -> Vocab:
    """The vocabulary a trained version was built with, from its manifest."""
    return Vocab(**{**manifest["vocab"], "genres": tuple(manifest["vocab"]["genres"])})


def user_frame(feast_store: FeatureStore, user_ids: np.ndarray, at: pd.Timestamp) -> pd.DataFrame:
    """The user tower's features of `user_ids` as of `at`, one row per id in order."""
    entities = pd.DataFrame({"user_id": user_ids, "event_timestamp": at})
    return training_frame(feast_store, SERVICES["user"], entities)


def embed_users(feast_store: FeatureStore, tower: UserTower, vocab: Vocab, user_ids: np.ndarray,
                at: pd.Timestamp) -> np.ndarray:  # fmt: skip
    """User-tower embeddings of `user_ids`, features as of `at`."""
    return embed(tower, user_inputs(user_frame(feast_store, user_ids, at), vocab)).numpy()


def embed_items(tower: ItemTower, vocab: Vocab, catalogue: pd.DataFrame) -> np.ndarray:
    """Item-tower embeddings of every catalogue row."""
    return embed(tower, item_inputs(catalogue, vocab)).numpy()


def load_towers(version: Path) -> tuple[UserTower, ItemTower]:
    return tnn.load(UserTower, version, "user_tower"), tnn.load(ItemTower, version, "item_tower")


def save_towers(folder: Path, user_tower: UserTower, item_tower: ItemTower) -> None:
    tnn.save(user_tower, folder, "user_tower")
    tnn.save(item_tower, folder, "item_tower")


def validation_towers(version: Path) -> Path:
    """Where the version's towers trained on training rows alone are (they never saw the
    validation rows: the ranker validates against them): `BEFORE_REFIT`, else the version."""
    return version / BEFORE_REFIT if (version / BEFORE_REFIT).is_dir() else version


def timeless(sp: Split) -> bool:
    """The training rows carry no order in time (ml-1m's fixed split: one stamp for all)."""
    return sp.train["event_timestamp"].nunique() == 1


def training_users(
    feast_store: FeatureStore, rows: pd.DataFrame, vocab: Vocab, catalogue: pd.DataFrame,
    features: FeatureConfig, as_of: pd.Timestamp | None, afresh: bool = False,
) -> tuple[pd.DataFrame, Inputs]:  # fmt: skip
    """The training rows' user features and tensors. Point in time where the rows have an order;
    where they have none, `as_of` the end of training (the only time the history exists), computed
    from `rows` alone (with the store's `features` recipe), the row's own item left out of its
    activity features and blanked from its recent items, so the label sits neither among the
    inputs nor in their counts and genre shares. `afresh`: from `rows` alone where they have an
    order too (they lack a cold start's held-out items; the store has them)."""
    entities = rows[["user_id", "item_id", "event_timestamp"]]
    if as_of is not None:
        entities = entities.assign(event_timestamp=as_of)
    frame = training_frame(feast_store, SERVICES["user"], entities)
    if as_of is not None or afresh:
        frame = activity_from(rows, frame, catalogue, vocab.genres, features)
    if as_of is not None:
        frame = leave_one_out(rows, frame, catalogue, vocab.genres)
    users = user_inputs(frame, vocab)
    if as_of is not None:
        label = torch.tensor(frame["item_id"].to_numpy())[:, None]
        users["recent_items"] = users["recent_items"].masked_fill(users["recent_items"] == label, 0)
    return frame, users


@dataclass(frozen=True)
class Shapes:
    """Overrides of the towers' configs (field name -> value), beside what the data fixes."""

    user: dict = dataclasses.field(default_factory=dict)
    item: dict = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class World:
    """What every training run on one split shares: the store, the vocabulary, the catalogue."""

    feast_store: FeatureStore
    vocab: Vocab
    catalogue: pd.DataFrame  # item_tower features, one row per item in id order
    items: Inputs  # the catalogue as item-tower inputs
    row_of: dict[int, int]  # item id -> catalogue row
    hidden: frozenset[int]  # items held out of training entirely
    as_of: pd.Timestamp | None  # where the rows carry no time: user features as of this time
    features: FeatureConfig  # the store's recipe of activity features, to compute them afresh
    shapes: Shapes


@dataclass
class Fitted:
    user_tower: UserTower
    item_tower: ItemTower
    result: dict  # best epoch, validation recall, history
    vocab: Vocab
    split: Split
    meta: dict  # the offline store's dataset.json
    seconds: float
    before_refit: tuple[UserTower, ItemTower] | None  # the early-stopped towers, if refit after


def modalities_of(vocab: Vocab) -> tuple[str, ...]:
    """Every item-tower input the catalogue has: the image only where posters have vectors."""
    return ("id", "categorical", "text", *(("image",) if vocab.image_dim else ()))


def fit(prof: store.Profile, cfg: TrainConfig, split_cfg: SplitConfig,
        modalities: tuple[str, ...] | None = None, hidden: frozenset[int] = frozenset(),
        shapes: Shapes | None = None) -> Fitted:  # fmt: skip
    """Both towers trained on the repository's offline data (the item tower on `modalities`,
    default every input the catalogue has; `shapes` overrides the towers' configs),
    the `hidden` items kept out of training, validation and the users' features: early
    stopping on validation, then (`cfg.refit`) afresh on training and validation rows for the
    best number of epochs."""
    meta = read_meta(prof.offline_dir)
    inter = pq.read_table(prof.offline_dir / "interactions.parquet").to_pandas()
    sp = held_out(split(inter, meta["dataset"], split_cfg, cfg.seed), hidden)
    if sp.train.empty or sp.validation.empty:
        raise TTRError(f"{meta['dataset']}: the split leaves no training or validation rows")
    feast_store = store.open_store(prof)
    catalogue = catalogue_frame(feast_store, prof.offline_dir, sp.test_time)
    vocab = Vocab(
        genres=tuple(meta["genres"]),
        num_items=int(catalogue["item_id"].max()) + 1,
        num_users=num_users(prof.offline_dir) if cfg.user_ids else 0,
        **{f"{kind}_dim": width for kind, width in content.dims(prof.offline_dir).items()},
    )
    modalities = modalities or modalities_of(vocab)
    row_of = rows_of(catalogue["item_id"])
    as_of = sp.test_time if timeless(sp) else None
    items = item_inputs(catalogue, vocab)
    features = feature_config(meta)
    world = World(
        feast_store, vocab, catalogue, items, row_of, hidden, as_of, features, shapes or Shapes()
    )
    began = time.perf_counter()
    validation = validation_set(feast_store, sp, vocab, catalogue, features, bool(hidden))
    user_tower, item_tower, result = _towers(world, sp.train, validation, cfg, modalities)
    before_refit = (user_tower, item_tower) if cfg.refit else None
    if cfg.refit:
        again = dataclasses.replace(cfg, epochs=result["best_epoch"])
        print(f"refit: training + validation rows, {again.epochs} epochs")
        rows = pd.concat([sp.train, sp.validation])
        user_tower, item_tower, result["refit"] = _towers(world, rows, None, again, modalities)
    seconds = time.perf_counter() - began
    return Fitted(user_tower, item_tower, result, vocab, sp, meta, seconds, before_refit)


def _towers(
    world: World, rows: pd.DataFrame, validation: Validation | None, cfg: TrainConfig,
    modalities: tuple[str, ...],
) -> tuple[UserTower, ItemTower, dict]:  # fmt: skip
    """Both towers trained on `rows`; ids that never occur in them are forgotten afterwards, so
    those items and users embed from their features alone."""
    vocab, row_of = world.vocab, world.row_of
    frame, users = training_users(
        world.feast_store, rows, vocab, world.catalogue, world.features, world.as_of,
        bool(world.hidden),
    )  # fmt: skip
    counts = np.bincount([row_of[i] for i in rows["item_id"]], minlength=len(row_of)) + 1.0
    torch.manual_seed(cfg.seed)  # the initial weights too: the same run whatever ran before
    user_tower = UserTower(UserTowerConfig(
        vocab.num_items, len(vocab.genres), dim=cfg.dim, num_users=vocab.num_users,
        **world.shapes.user,
    ))  # fmt: skip
    item_tower = ItemTower(ItemTowerConfig(
        vocab.num_items, len(vocab.genres), dim=cfg.dim, modalities=modalities,
        text_dim=vocab.text_dim if "text" in modalities else 0,
        image_dim=vocab.image_dim if "image" in modalities else 0, **world.shapes.item,
    ))  # fmt: skip
    times = None if world.as_of is not None else torch.from_numpy(micros(frame["event_timestamp"]))
    result = train(
        user_tower, item_tower, users, torch.tensor([row_of[i] for i in frame["item_id"]]),
        torch.log(torch.tensor(counts / counts.sum(), dtype=torch.float32)), world.items,
        validation, cfg, times,
    )  # fmt: skip
    untrained = torch.tensor(
        sorted(set(world.catalogue["item_id"]) - set(rows["item_id"])), dtype=torch.long
    )
    item_tower.forget(untrained)
    strangers = np.setdiff1d(np.arange(vocab.num_users), rows["user_id"].unique())
    user_tower.forget(untrained, torch.from_numpy(strangers))
    return user_tower, item_tower, result


def run(prof: store.Profile, root: Path, cfg: TrainConfig, split_cfg: SplitConfig) -> Path:
    """Train on the repository's offline data; returns the published version directory."""
    f = fit(prof, cfg, split_cfg)
    info = {
        "dataset": f.meta["dataset"], "data_time_range": [f.meta["start"], f.meta["end"]],
        "vocab": asdict(f.vocab), "split": _split_info(f.split, split_cfg), "train": asdict(cfg),
        "item_inputs": list(f.item_tower.config.modalities),
        "content": content.info(prof.offline_dir),
        "seconds": f.seconds, "metrics": f.result,
    }  # fmt: skip
    with artifacts.staging(root) as staged:
        save_towers(staged, f.user_tower, f.item_tower)
        if f.before_refit is not None:
            save_towers(staged / BEFORE_REFIT, *f.before_refit)
        return artifacts.publish(
            root, staged, {"stage": "train", "feature_services": SERVICES, **info}
        )


def _split_info(sp: Split, cfg: SplitConfig) -> dict:
    rows = {"train": len(sp.train), "validation": len(sp.validation), "test": len(sp.test)}
    times = {
        "validation_time": sp.validation_time.isoformat(),
        "test_time": sp.test_time.isoformat(),
    }
    features = "as of test_time (no time order)" if timeless(sp) else "point in time"
    return {"kind": sp.kind, **asdict(cfg), "rows": rows, **times, "train_features": features}
