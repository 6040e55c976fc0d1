"""A synthetic world with planted groups, through Feast, trained: the towers recover the groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from retrieval import offline, store
from retrieval.synthetic import SyntheticConfig, load
from towers.features import training_frame
from towers.inputs import Ids, fit_vocab, item_inputs, user_inputs
from towers.item_tower import ItemTower, ItemTowerConfig
from towers.train import Averaged, TrainConfig, Validation, embed, train, validate
from towers.user_tower import UserTower, UserTowerConfig

K = 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import copy_repo

    cfg = SyntheticConfig(users=400, items=120, interactions=24_000, groups=4, days=60)
    ds = load(cfg, tmp_path_factory.mktemp("synthetic"))
    prof = store.profile(copy_repo(tmp_path_factory.mktemp("train")))
    tables = offline.build(ds)
    offline.write(tables, prof.offline_dir)
    store.apply(prof)
    feast_store = store.open_store(prof)
    end = pd.Timestamp(tables.meta["end"])
    inter = ds.interactions.rename(columns={"timestamp": "event_timestamp"})
    is_val = np.random.default_rng(0).random(len(inter)) < 0.2
    train_rows, val_rows = inter[~is_val], inter[is_val]

    frame = training_frame(
        feast_store, "user_tower", train_rows[["user_id", "item_id", "event_timestamp"]]
    )
    items = pd.DataFrame({"item_id": ds.items["item_id"], "event_timestamp": end})
    features = training_frame(feast_store, "item_tower", items)
    row_of = {item: row for row, item in enumerate(ds.items["item_id"])}
    vocab = fit_vocab(
        Ids(ds.items["item_id"]), Ids(ds.users["user_id"]), frame,
        features.iloc[[row_of[i] for i in frame["item_id"]]], ds.schema.to_json(),
        tables.meta["shares"], train_rows["rating"].to_numpy(), ds.schema.title,
    )  # fmt: skip
    catalogue = item_inputs(features, vocab)
    val_users = sorted(val_rows["user_id"].unique())
    latest = training_frame(
        feast_store, "user_tower", pd.DataFrame({"user_id": val_users, "event_timestamp": end})
    )
    validation = Validation(
        users=user_inputs(latest, vocab),
        relevant=[
            {row_of[i] for i in val_rows.loc[val_rows.user_id == u, "item_id"]} for u in val_users
        ],
        seen=[
            {row_of[i] for i in train_rows.loc[train_rows.user_id == u, "item_id"]}
            for u in val_users
        ],
    )
    counts = np.bincount([row_of[i] for i in train_rows["item_id"]], minlength=len(row_of)) + 1
    user_tower = UserTower(UserTowerConfig(vocab.num_items, vocab.fields("user"),
                                           vocab.share_widths(), dim=32))  # fmt: skip
    item_tower = ItemTower(ItemTowerConfig(vocab.num_items, vocab.fields("item"), dim=32,
                                           modalities=("id", "categorical", "text")))  # fmt: skip
    result = train(
        user_tower, item_tower, user_inputs(frame, vocab),
        torch.tensor([row_of[i] for i in frame["item_id"]]),
        torch.log(torch.tensor(counts / counts.sum(), dtype=torch.float32)),
        catalogue, validation, TrainConfig(epochs=6, batch_size=256, k=K),
    )  # fmt: skip
    return ds, result, user_tower, item_tower, validation, catalogue, val_users


def test_validation_recall_far_above_random(trained):
    _, result, _, _, validation, catalogue, _ = trained
    torch.manual_seed(0)
    n_users, n_items = len(validation.relevant), len(catalogue["item"])
    random = validate(torch.randn(n_users, 8), torch.randn(n_items, 8), validation, K)
    assert result[f"val_recall@{K}"] > 2.5 * random["recall"]
    assert result[f"val_ndcg@{K}"] > 2.5 * random["ndcg"]


def test_top_items_share_the_users_group(trained):
    ds, _, user_tower, item_tower, validation, catalogue, val_users = trained
    scores = embed(user_tower, validation.users) @ embed(item_tower, catalogue).T
    top = scores.topk(K, dim=1).indices.numpy()  # catalogue rows = item_id - 1
    user_group = ds.truth["user_group"][np.array(val_users) - 1]
    share = (ds.truth["item_group"][top] == user_group[:, None]).mean()
    assert share > 0.8  # chance: 1 / 4 groups


def test_the_average_trails_the_weights_and_swaps_in_and_out():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Embedding(5, 2, sparse=True))
    averaged = Averaged(model, steps=2)
    start, table = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    for shift in (4.0, 8.0, 16.0):  # the weights after each of three steps
        with torch.no_grad():
            model[0].weight.copy_(start + shift)
            model[1].weight.copy_(table + shift)
        averaged.update()
    # the first two steps' mean (start + 6), then halfway to the third step's weights
    with averaged.swapped():
        assert torch.allclose(model[0].weight, start + 11.0)
        assert torch.equal(model[1].weight, table + 16.0)  # sparse tables are not averaged
    assert torch.allclose(model[0].weight, start + 16.0)


def test_no_average_leaves_the_weights_alone():
    model = torch.nn.Linear(2, 1)
    averaged = Averaged(model, steps=0)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    averaged.update()
    with averaged.swapped():
        assert torch.equal(model.weight, before + 1.0)
