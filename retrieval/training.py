"""The `ttr train` stage: split the interactions, read point-in-time features from Feast, fit both
towers, and publish them, with the vocabulary they read their inputs through, as a new version."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from retrieval import adapt, artifacts, content, prior, store
from retrieval.catalogue import catalogue_frame, read_meta, stored_ids
from retrieval.errors import TTRError
from retrieval.offline import (
    FeatureConfig,
    Shares,
    activity_from,
    feature_config,
    leave_one_out,
    micros,
)
from towers import distributed
from towers import nn as tnn
from towers.features import training_frame
from towers.inputs import Ids, Vocab, activity_inputs, fit_vocab, item_inputs, user_inputs
from towers.item_tower import ItemTower, ItemTowerConfig
from towers.progress import Progress, say
from towers.train import Inputs, TrainConfig, Validation, embed, train
from towers.user_tower import UserTower, UserTowerConfig

if TYPE_CHECKING:
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


def split(inter: pd.DataFrame, kind: str, cfg: SplitConfig, seed: int = 0) -> Split:
    """The dataset's split (dataset.json's schema): "given" by its split column, "random", or
    "temporal" at a global cut-off (train before the `cutoff - validation` quantile, validation
    up to `cutoff`, test after)."""
    ts = inter["event_timestamp"]
    rng = np.random.default_rng(seed)
    if kind in ("given", "random"):
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


def read_split(offline_dir: Path, manifest_split: dict, seed: int) -> Split:
    """The split a version was trained on, drawn again from the offline interactions."""
    inter = pq.read_table(offline_dir / "interactions.parquet").to_pandas()
    cfg = SplitConfig(manifest_split["cutoff"], manifest_split["validation"])
    return split(inter, manifest_split["kind"], cfg, seed)


def held_out(sp: Split, items: frozenset) -> Split:
    """The split with `items` removed from training and validation entirely."""

    def keep(f: pd.DataFrame) -> pd.DataFrame:
        return f[~f["item_id"].isin(items)]

    return dataclasses.replace(sp, train=keep(sp.train), validation=keep(sp.validation))


def sets_of_rows(rows: pd.DataFrame, vocab: Vocab) -> pd.Series:
    """Per user, the set of catalogue rows of their items in `rows`."""
    at = pd.Series(vocab.items.rows(rows["item_id"]), index=rows.index)
    return at.groupby(rows["user_id"]).apply(set)


def validation_set(world: World, sp: Split) -> Validation:
    """Validation users with their features as of the validation time, and their items."""
    users = np.sort(sp.validation["user_id"].unique())
    relevant, seen = sets_of_rows(sp.validation, world.vocab), sets_of_rows(sp.train, world.vocab)
    return Validation(
        validation_users(world, sp, users, afresh=bool(world.hidden)),
        [relevant[u] for u in users], [seen.get(u, set()) for u in users],
    )  # fmt: skip


def validation_users(world: World, sp: Split, user_ids: np.ndarray, afresh: bool = False) -> Inputs:
    """User-tower inputs of `user_ids` as of the validation time. Where the split is not in time
    order (given, random), that is the end of training, and the store's activity features then
    count the validation rows themselves: those (count, shares, recent items) are computed
    afresh from the training rows alone (with the store's recipe), so validation rewards neither
    finding its answers among the inputs nor their categories in the shares. `afresh`: so too on
    a temporal split (the training rows lack a cold start's held-out items; the store has them)."""
    frame = user_frame(world.feast_store, user_ids, sp.validation_time)
    if sp.kind != "temporal" or afresh:
        frame = activity_from(sp.train, frame, world.shares, world.features)
    return user_inputs(frame, world.vocab)


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


def training_users(world: World, rows: pd.DataFrame, afresh: bool = False,
                   ) -> tuple[pd.DataFrame, Inputs]:  # fmt: skip
    """The training rows' user features and tensors. Point in time where the rows have an order
    (`afresh`: computed from `rows` alone, with the store's recipe: they lack a cold start's
    held-out items; the store has them); where they have none, `timeless_users`."""
    if world.as_of is not None:
        return timeless_users(world, rows)
    frame = training_frame(world.feast_store, SERVICES["user"],
                           rows[["user_id", "item_id", "event_timestamp"]])  # fmt: skip
    if afresh:
        frame = activity_from(rows, frame, world.shares, world.features)
    return frame, user_inputs(frame, world.vocab)


def timeless_users(world: World, rows: pd.DataFrame) -> tuple[pd.DataFrame, Inputs]:
    """`training_users` where the rows carry no time: every row reads its user's features as of
    the end of training (`world.as_of`: the only time the history exists), computed from `rows`
    alone, then the row's own item is left out of its activity features and blanked from its
    recent items, so the label sits neither among the inputs nor in their counts and shares.
    Each user's features are read, computed and encoded once and spread over their rows: ml-1m's
    720k rows share 6,040 users (encoding every row's 200 recent items took a minute)."""
    user_ids, inverse = np.unique(rows["user_id"].to_numpy(), return_inverse=True)
    once = user_frame(world.feast_store, user_ids, world.as_of)
    once = activity_from(rows, once, world.shares, world.features)
    spread = torch.from_numpy(inverse)
    users = {name: t[spread] for name, t in user_inputs(once, world.vocab).items()}
    frame = once.iloc[inverse].reset_index(drop=True).assign(item_id=rows["item_id"].to_numpy())
    frame = leave_one_out(rows, frame, world.shares)
    users |= activity_inputs(frame, world.vocab)
    label = torch.from_numpy(world.vocab.items.index(frame["item_id"]))[:, None]
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
    catalogue: pd.DataFrame  # item_tower features, one row per item in catalogue order
    items: Inputs  # the catalogue as item-tower inputs
    shares: Shares  # the store's activity shares over the catalogue
    hidden: frozenset  # items held out of training entirely
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
    world: World
    cfg: TrainConfig  # as run: what it left to the data chosen
    choices: dict  # every choice the data made (the dataset's and training's), with its reason


def modalities_of(vocab: Vocab) -> tuple[str, ...]:
    """Every item-tower input the catalogue has: categorical where items have such features,
    text where they have a title or text (pretrained vectors or hashed words), image where images
    have vectors."""
    out = ["id"]
    if vocab.fields("item"):
        out.append("categorical")
    if vocab.text_dim or vocab.item_text:
        out.append("text")
    if vocab.image_dim:
        out.append("image")
    return tuple(out)


def world_of(prof: store.Profile, sp: Split, meta: dict, hidden: frozenset = frozenset(),
             shapes: Shapes | None = None, vocab: Vocab | None = None) -> World:  # fmt: skip
    """The store, catalogue and vocabulary of a training run: `vocab` (a trained version's), else
    one fitted on `sp`'s training rows."""
    feast_store = store.open_store(prof)
    items = vocab.items if vocab else stored_ids(prof.offline_dir, "item")
    catalogue = catalogue_frame(feast_store, items, sp.test_time)
    vocab = vocab or new_vocab(prof.offline_dir, sp, meta, items, catalogue)
    as_of = sp.test_time if timeless(sp) else None
    return World(
        feast_store, vocab, catalogue, item_inputs(catalogue, vocab), Shares(catalogue,
        meta["shares"]), hidden, as_of, feature_config(meta), shapes or Shapes(),
    )  # fmt: skip


def new_vocab(offline_dir: Path, sp: Split, meta: dict, items: Ids,
              catalogue: pd.DataFrame) -> Vocab:  # fmt: skip
    """Every input's encoding fitted on the training rows of `sp`: their users' features (the
    profile table's), their items' (the `catalogue`'s rows) and their ratings."""
    schema = meta["schema"]
    profiles = pq.read_table(offline_dir / "user_profile.parquet").to_pandas()
    user_rows = profiles.set_index("user_id").reindex(sp.train["user_id"].to_numpy())
    item_rows = catalogue.iloc[items.rows(sp.train["item_id"])]
    return fit_vocab(
        items, stored_ids(offline_dir, "user"), user_rows, item_rows, schema, meta["shares"],
        sp.train["rating"].to_numpy(dtype=np.float64), schema["title"],
        **{f"{kind}_dim": width for kind, width in content.dims(offline_dir).items()},
    )  # fmt: skip


def fit(prof: store.Profile, cfg: TrainConfig, split_cfg: SplitConfig,
        modalities: tuple[str, ...] | None = None, hidden: frozenset = frozenset(),
        shapes: Shapes | None = None, progress: Progress | None = None) -> Fitted:  # fmt: skip
    """Both towers trained on the repository's offline data (the item tower on `modalities`,
    default every input the catalogue has; `shapes` overrides the towers' configs),
    the `hidden` items kept out of training, validation and the users' features: early
    stopping on validation, then (`cfg.refit`) afresh on training and validation rows for the
    best number of epochs."""
    meta = read_meta(prof.offline_dir)
    inter = pq.read_table(prof.offline_dir / "interactions.parquet").to_pandas()
    sp = held_out(split(inter, meta["schema"]["split"], split_cfg, cfg.seed), hidden)
    if sp.train.empty or sp.validation.empty:
        raise TTRError(f"{meta['dataset']}: the split leaves no training or validation rows")
    world = world_of(prof, sp, meta, hidden, shapes)
    modalities = modalities or modalities_of(world.vocab)
    cfg, choices = chosen(cfg, sp)
    began = time.perf_counter()
    validation = validation_set(world, sp)
    user_tower, item_tower, result = _towers(world, sp.train, validation, cfg, modalities,
                                             progress)  # fmt: skip
    choices["cold_prior"] = cold_prior(
        world, sp, validation, user_tower, item_tower, cfg.k
    ).to_json()
    before_refit = (user_tower, item_tower) if cfg.refit else None
    if cfg.refit:
        again = dataclasses.replace(cfg, epochs=result["best_epoch"])
        say(progress, f"refit: training + validation rows, {again.epochs} epochs")
        rows = pd.concat([sp.train, sp.validation])
        user_tower, item_tower, result["refit"] = _towers(world, rows, None, again, modalities,
                                                          progress)  # fmt: skip
    seconds = time.perf_counter() - began
    return Fitted(user_tower, item_tower, result, world.vocab, sp, meta, seconds, before_refit,
                  world, cfg, {**meta.get("choices", {}), **choices})  # fmt: skip


def cold_prior(world: World, sp: Split, validation: Validation, user_tower: UserTower,
               item_tower: ItemTower, k: int) -> adapt.Choice:  # fmt: skip
    """The popularity prior's weight for users without history (`retrieval.prior`), chosen with
    the early-stopped towers on the validation users."""
    users = embed(user_tower, validation.users).numpy()
    items = embed_items(item_tower, world.vocab, world.catalogue)
    cold = prior.cold(validation.users)
    counts = prior.log_counts(world.vocab.items.rows(sp.train["item_id"]), len(world.vocab.items))
    return prior.choose(users, items, cold, counts, validation.relevant, validation.seen, k)


def chosen(cfg: TrainConfig, sp: Split) -> tuple[TrainConfig, dict]:
    """`cfg` with what it leaves to the data chosen by its rule (the choices and reasons beside)."""
    rows = len(sp.train)
    rules = {"dim": lambda: adapt.width(rows), "batch_size": lambda: adapt.batch_size(rows),
             "epochs": lambda: adapt.epochs(rows, cfg.refit)}  # fmt: skip
    cfg, choices = adapt.settle(cfg, rules)
    shared = adapt.given_or(cfg.shared_history, lambda: adapt.shared_history(not timeless(sp)))
    choices["shared_history"] = shared.to_json()
    dropout = adapt.given_or(cfg.id_dropout, lambda: adapt.id_dropout(new_items_share(sp)))
    choices["id_dropout"] = dropout.to_json()
    return dataclasses.replace(cfg, shared_history=bool(shared.value),
                               id_dropout=float(dropout.value)), choices  # fmt: skip


def new_items_share(sp: Split) -> float:
    """The share of validation rows whose item has no training row."""
    return float((~sp.validation["item_id"].isin(sp.train["item_id"])).mean())


def towers_for(vocab: Vocab, cfg: TrainConfig, modalities: tuple[str, ...],
               shapes: Shapes) -> tuple[UserTower, ItemTower]:  # fmt: skip
    """Fresh towers shaped by the vocabulary (seeded by `cfg.seed`), the item ids embedded as wide
    as the towers' output (ml-1m, 128 wide, shared history: validation Recall@20 / NDCG@20
    0.2523 / 0.2073 against 0.2502 / 0.2052 at 64, ahead at every epoch) and dropped out of
    `cfg.id_dropout` of the training rows where it is set (None: the item tower's default); with
    `cfg.shared_history` (and an item id input), the user tower's recent-items table is the item
    tower's id table, and its pool also reaches its output through a linear map."""
    torch.manual_seed(cfg.seed)  # the initial weights too: the same run whatever ran before
    dropout = {} if cfg.id_dropout is None else {"id_dropout": cfg.id_dropout}
    item = {"embed": cfg.dim, **dropout, **shapes.item}
    shared = cfg.shared_history and "id" in modalities
    tied = {"item_embed": item["embed"], "skip": True} if shared else {}
    user_tower = UserTower(UserTowerConfig(
        vocab.num_items, vocab.fields("user"), vocab.share_widths(), dim=cfg.dim,
        num_users=vocab.num_users if cfg.user_ids else 0, **{**shapes.user, **tied},
    ))  # fmt: skip
    item_tower = ItemTower(ItemTowerConfig(
        vocab.num_items, vocab.fields("item") if "categorical" in modalities else (),
        dim=cfg.dim, modalities=modalities,
        text_dim=vocab.text_dim if "text" in modalities else 0,
        image_dim=vocab.image_dim if "image" in modalities else 0, **item,
    ))  # fmt: skip
    if shared:
        user_tower.recent.weight = item_tower.ids.weight
    return user_tower, item_tower


def _towers(
    world: World, rows: pd.DataFrame, validation: Validation | None, cfg: TrainConfig,
    modalities: tuple[str, ...], progress: Progress | None = None,
) -> tuple[UserTower, ItemTower, dict]:  # fmt: skip
    """Both towers trained on `rows`; ids that never occur in them are forgotten afterwards, so
    those items and users embed from their features alone."""
    vocab = world.vocab
    frame, users = training_users(world, rows, bool(world.hidden))
    item_rows = vocab.items.rows(frame["item_id"])
    counts = np.bincount(item_rows, minlength=len(vocab.items)) + 1.0
    user_tower, item_tower = towers_for(vocab, cfg, modalities, world.shapes)
    times = None if world.as_of is not None else torch.from_numpy(micros(frame["event_timestamp"]))
    result = train(
        user_tower, item_tower, users, torch.from_numpy(item_rows),
        torch.log(torch.tensor(counts / counts.sum(), dtype=torch.float32)), world.items,
        validation, cfg, times, progress,
    )  # fmt: skip
    untrained = np.setdiff1d(np.arange(1, vocab.num_items), vocab.items.index(rows["item_id"]))
    item_tower.forget(torch.from_numpy(untrained))
    strangers = np.setdiff1d(np.arange(1, vocab.num_users), vocab.users.index(rows["user_id"]))
    user_tower.forget(torch.from_numpy(untrained), torch.from_numpy(strangers))
    return user_tower, item_tower, result


def run(prof: store.Profile, root: Path, cfg: TrainConfig, split_cfg: SplitConfig,
        progress: Progress | None = None) -> Path | None:  # fmt: skip
    """Train on the repository's offline data; returns the published version directory (where
    several processes train together, process 0 publishes, and the others return None)."""
    f = fit(prof, cfg, split_cfg, progress=progress)
    if not distributed.main():
        return None
    info = {
        "dataset": f.meta["dataset"], "data_time_range": [f.meta["start"], f.meta["end"]],
        "split": _split_info(f.split, split_cfg), "train": asdict(f.cfg), "choices": f.choices,
        "item_inputs": list(f.item_tower.config.modalities),
        "content": content.info(prof.offline_dir),
        "seconds": f.seconds, "metrics": f.result, "processes": distributed.world(),
    }  # fmt: skip
    with artifacts.staging(root) as staged:
        save_towers(staged, f.user_tower, f.item_tower)
        f.vocab.save(staged)
        if f.before_refit is not None:
            save_towers(staged / BEFORE_REFIT, *f.before_refit)
        return artifacts.publish(  # `trained` moves; `latest` waits for `ttr index`
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
