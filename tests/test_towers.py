"""The towers: inputs from feature rows with gaps, shapes, unit norm, checkpoint round trips."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from towers import nn as tnn
from towers.inputs import (
    CATEGORIES,
    Encoding,
    Ids,
    Vocab,
    categorical_inputs,
    fit_vocab,
    item_inputs,
    user_inputs,
)
from towers.item_tower import ItemTower, ItemTowerConfig
from towers.ranker import Ranker, RankerConfig, popularity_inputs
from towers.train import take
from towers.user_tower import UserTower, UserTowerConfig

KINDS = {
    "users": {"age": "numeric", "gender": "categorical", "occupation": "categorical"},
    "items": {"genres": "multi_categorical", "year": "numeric", "plot": "text"},
}
USERS = pd.DataFrame({
    "user_id": [1, 2, 3],
    "age": [24, None, 61],
    "gender": ["M", None, "F"],
    "occupation": ["technician", None, "writer"],
    "interaction_count": [12, None, 3],
    "mean_rating": [3.5, None, None],
    "genres_shares": [[0.5, 0.25, 0.25], None, [0.0, 1.0, 0.0]],
    "recent_items": [[3, 4, 99], None, [1]],  # 99 is outside the catalogue: unknown
})  # fmt: skip
ITEMS = pd.DataFrame({
    "item_id": [1, 2, 42],  # 42 is outside the catalogue
    "title": ["Toy Story (1995)", None, "Heat (1995)"],
    "genres": [["Comedy"], None, ["Action", "Drama", "Noir"]],
    "year": [1995, None, 1995],
    "plot": [None, None, "A cop and a thief."],
})  # fmt: skip
TRAINING_USERS = USERS.loc[[0, 0, 2, 2, 2]]  # one row per training interaction
TRAINING_ITEMS = ITEMS.loc[[0, 2, 2, 0, 1]].assign(
    genres=[["Comedy"], ["Action", "Drama"], ["Action"], ["Comedy"], None]
)


def vocab(**dims) -> Vocab:
    return fit_vocab(
        Ids(np.arange(1, 10)), Ids([1, 2, 3]), TRAINING_USERS, TRAINING_ITEMS, KINDS,
        {"genres": ["Action", "Comedy", "Drama"]}, np.array([4.0, 2.0, np.nan]), True, **dims,
    )  # fmt: skip


VOCAB = vocab()


def user_tower(**config) -> UserTower:
    return UserTower(UserTowerConfig(VOCAB.num_items, VOCAB.fields("user"),
                                     VOCAB.share_widths(), **config))  # fmt: skip


def item_tower(**config) -> ItemTower:
    config = {"modalities": ("id", "categorical", "text"), **config}
    return ItemTower(ItemTowerConfig(VOCAB.num_items, VOCAB.fields("item"), **config))


def test_online_rows_as_lists_give_the_same_tensors_as_a_frame():
    rows = USERS.astype(object).where(USERS.notna(), None).to_dict("records")
    for row, expected in zip(rows, [USERS.iloc[[i]] for i in range(3)], strict=True):
        lists = user_inputs({name: [value] for name, value in row.items()}, VOCAB)
        framed = user_inputs(expected.reset_index(drop=True), VOCAB)
        assert lists.keys() == framed.keys()
        assert all(torch.equal(lists[k], framed[k]) for k in lists), row


def test_user_inputs_encode_gaps_as_missing():
    x = user_inputs(USERS, VOCAB)
    assert x["user"].tolist() == [1, 2, 3]  # the index of each id among the users
    assert x["gender"].tolist() == [2, 0, 1]  # F (3 training rows) first, M second; 0 missing
    assert x["age"][1].tolist() == [0.0, 0.0] and x["age:bucket"][1] == 0  # missing
    assert x["age"][0, 1] == 1.0 and x["age:bucket"][0] > 0
    assert x["activity"][1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert x["activity"][0, 1] == 1.0 and x["activity"][2, 3] == 0.0  # count yes, rating no
    assert x["activity"][0, 2] == pytest.approx((3.5 - 3.0) / 1.0)  # rating standardised
    assert x["recent_items"][0].tolist() == [3, 4, 0]  # as wide as the longest list
    assert x["genres_shares"].shape == (3, 3) and x["recent_items"].shape == (3, 3)
    empty = user_inputs(USERS.assign(recent_items=None), VOCAB)["recent_items"]
    assert empty.shape == (3, 1) and (empty == 0).all()


def test_encodings_are_fitted_on_training_rows_only():
    gender, occupation = VOCAB.user_features[1], VOCAB.user_features[2]
    assert gender.values == ("F", "M")  # F: three training rows, M: two
    assert occupation.code("technician") > 0 and occupation.code("astronaut") == 0  # unseen
    age = VOCAB.user_features[0]
    assert age.mean == pytest.approx((24 * 2 + 61 * 3) / 5)  # over rows, not over users
    genres = VOCAB.item_features[0]
    assert set(genres.values) == {"Comedy", "Action", "Drama"}  # not Noir: no training row has it


def test_a_wide_categorical_is_hashed_into_a_fixed_table():
    many = pd.Series([f"v{i}" for i in range(CATEGORIES + 5)])
    encoding = Encoding.fit("sku", "categorical", many)
    assert encoding.hashed == CATEGORIES == encoding.rows and not encoding.values
    codes = encoding.encode(pd.Series(["v1", "v1", None, "never seen"]))["sku"].tolist()
    assert codes[0] == codes[1] > 0 and codes[2] == 0 and 0 < codes[3] < CATEGORIES


def test_item_inputs_encode_gaps_and_unknown_ids():
    x = item_inputs(ITEMS, VOCAB)
    assert x["item"].tolist() == [1, 2, 0]  # 42 is outside the catalogue: unknown
    genres = VOCAB.item_features[0]
    action, comedy, drama = (genres.code(g) for g in ("Action", "Comedy", "Drama"))
    assert x["genres"].tolist() == [[comedy, 0, 0], [0, 0, 0], [action, drama, 0]]  # Noir: 0
    assert x["genres:share"].tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 1]]
    assert x["year"][1].tolist() == [0.0, 0.0] and (x["words"][1] == 0).all()
    assert (x["words"][2] > 0).sum() == 7  # heat 1995 a cop and a thief


def test_numeric_buckets_tell_apart_what_training_rows_tell_apart():
    years = pd.Series(np.repeat([1990, 1995, 1996, 1997, 1998], [1, 20, 20, 20, 20]))
    encoding = Encoding.fit("year", "numeric", years)
    buckets = encoding.encode(pd.Series([1995, 1996, 1997, 1998, 1960]))["year:bucket"].tolist()
    assert len(set(buckets[:4])) == 4 and buckets[4] == 1  # the dense years apart, old ones low
    z = encoding.encode(pd.Series([years.mean()]))["year"]
    assert z[0].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)


def test_item_inputs_standardise_each_content_vector_and_keep_a_missing_one_zero():
    vectors = [[1.0, 2.0, 3.0, 6.0], None, [0.0, 10.0, 20.0, 50.0]]  # the third: 10 x 1st - 10
    x = item_inputs(ITEMS.assign(text_vector=vectors, has_text=[True, None, True]),
                    vocab(text_dim=4))  # fmt: skip
    first, missing, third = x["text_vector"]
    assert first.mean().item() == pytest.approx(0, abs=1e-6)
    assert first.var(unbiased=False).item() == pytest.approx(1, abs=1e-4)
    assert torch.allclose(first, third, atol=1e-4)  # scale and shift are gone
    assert x["has_text"].tolist() == [1.0, 0.0, 1.0] and (missing == 0).all()


def test_vocab_round_trip(tmp_path):
    VOCAB.save(tmp_path)
    again = Vocab.load(tmp_path)
    assert again.user_features == VOCAB.user_features and again.shares == VOCAB.shares
    assert list(again.items.values) == list(VOCAB.items.values) and again.rating == VOCAB.rating
    for x, y in ((user_inputs(USERS, again), user_inputs(USERS, VOCAB)),
                 (item_inputs(ITEMS, again), item_inputs(ITEMS, VOCAB))):  # fmt: skip
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_string_ids_index_as_integers_do():
    ids = Ids(np.array(["B00X4WHP5E", "B00Y", "A1"], dtype=object))
    assert ids.kind == "string" and ids.index(["B00Y", "nope", "A1"]).tolist() == [2, 0, 3]
    assert Ids(np.array([3, 7])).index([7, "7", 99]).tolist() == [2, 2, 0]


def test_towers_give_unit_vectors_of_one_width():
    torch.manual_seed(0)
    users, items = user_tower(dim=8).eval(), item_tower(dim=8).eval()
    u, v = users(user_inputs(USERS, VOCAB)), items(item_inputs(ITEMS, VOCAB))
    assert u.shape == v.shape == (3, 8)
    assert torch.allclose(u.norm(dim=1), torch.ones(3)) and torch.allclose(
        v.norm(dim=1), torch.ones(3)
    )


@pytest.mark.parametrize("kind", ["text", "image"])
def test_a_content_slot_uses_the_missing_vector_where_an_item_has_none(kind):
    cfg = ItemTowerConfig(num_items=10, dim=8, modalities=(kind,), **{f"{kind}_dim": 4})
    tower = ItemTower(cfg).eval()
    x = {f"{kind}_vector": torch.randn(2, 4), f"has_{kind}": torch.tensor([1.0, 0.0])}
    with torch.no_grad():
        getattr(tower, f"missing_{kind}").copy_(torch.randn(8))
        absent = tower({f"{kind}_vector": torch.randn(2, 4), f"has_{kind}": torch.zeros(2)})
        present = tower({**x, f"has_{kind}": torch.ones(2)})
    assert torch.allclose(absent[0], absent[1])  # both rows fall back to the same vector
    assert not torch.allclose(present[0], present[1])
    assert torch.allclose(tower(x)[1], absent[0])  # a flagged-missing row ignores its zeros
    with pytest.raises(ValueError):
        ItemTower(ItemTowerConfig(num_items=10, modalities=("image",)))
    with pytest.raises(ValueError):
        ItemTower(ItemTowerConfig(num_items=10, modalities=("categorical",)))  # no fields


def test_id_dropout_only_in_training():
    tower = ItemTower(ItemTowerConfig(num_items=10, dim=8, id_dropout=1.0, modalities=("id",)))
    x = item_inputs(ITEMS, VOCAB)
    tower.train()
    dropped = tower(x)
    assert torch.allclose(dropped[0], dropped[1])  # every id replaced by "unknown"
    tower.eval()
    assert not torch.allclose(tower(x)[0], tower(x)[1])


def test_training_rows_pool_a_sample_of_their_own_history_and_serving_pools_all():
    torch.manual_seed(0)
    tower = UserTower(UserTowerConfig(num_items=500, history_sample=8, history_dropout=0.25))
    recent = torch.zeros(200, 40, dtype=torch.long)
    recent[:, :30] = torch.arange(1, 31) + 30 * torch.arange(200)[:, None] % 450
    recent[0, 5:] = 0  # a short history: all five stay eligible
    tower.train()
    pooled = tower._history(recent)
    assert pooled.shape == (200, 8)
    for row, shown in zip(recent.tolist(), pooled.tolist(), strict=True):
        assert set(shown) - {0} <= set(row) - {0}  # only the row's own items
    assert abs(float((pooled[1:] == 0).float().mean()) - 0.25) < 0.05  # hidden at the rate
    assert len({tuple(r) for r in pooled[1:].tolist()}) > 150  # a draw per row
    assert torch.equal(tower.eval()._history(recent), recent)


def test_mean_pool_and_its_gradient_match_an_embedding_bag():
    torch.manual_seed(0)
    bag = torch.nn.EmbeddingBag(50, 4, mode="mean", padding_idx=0)
    table = torch.nn.Embedding(50, 4, padding_idx=0)
    table.weight.data.copy_(bag.weight.data)
    ids = torch.randint(0, 50, (30, 12))
    ids[ids % 3 == 0] = 0  # padding between and after the items
    ids[0] = 0  # a row of padding alone
    grad = torch.randn(30, 4)
    bag(ids).backward(grad)
    pooled = tnn.mean_pool(table, ids)
    pooled.backward(grad)
    assert torch.allclose(pooled, bag(ids), atol=1e-6) and not pooled[0].any()
    assert torch.allclose(table.weight.grad, bag.weight.grad, atol=1e-6)
    assert not table.weight.grad[0].any()  # padding learns nothing


def test_the_pool_of_a_sampled_history_estimates_the_pool_of_all_of_it():
    torch.manual_seed(0)
    tower = UserTower(UserTowerConfig(num_items=100, history_sample=8, history_dropout=0.0))
    row = torch.zeros(1, 40, dtype=torch.long)
    row[0, :30] = torch.arange(1, 31)
    row[0, [3, 17]] = 0  # items blanked mid-list (a training row's own item, held-out items)
    table = tower.recent.weight.detach()
    everything = table[row[0][row[0] != 0]].mean(0)
    assert torch.allclose(tower.eval()._pooled(row)[0], everything, atol=1e-6)
    tower.train()
    draws = torch.cat([tower._pooled(row) for _ in range(4000)]).detach()
    z = (draws.mean(0) - everything) / (draws.std(0) / len(draws) ** 0.5)  # in standard errors
    assert z.abs().max() < 4.5  # over 32 components: unbiased
    assert draws.std(0).mean() > 0.05  # each draw a different sample


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_zeroes_its_share_and_keeps_the_mean_only_in_training(p: float):
    torch.manual_seed(0)
    drop, x = tnn.Dropout(p), torch.ones(256, 301)
    out = drop(x)
    assert abs(float((out == 0).float().mean()) - p) < 0.01
    assert abs(float(out.mean()) - 1.0) < 0.02 and len(out.unique()) == 2
    assert not torch.equal(out[0], out[1])  # a mask per row
    assert torch.equal(drop.eval()(x), x)


def test_a_forgotten_id_embeds_like_an_unknown_one():
    """Ids never trained on hold their random initialisation until forgotten; then the towers
    embed them from features and content alone."""
    torch.manual_seed(0)
    items = item_tower(dim=8).eval()
    users = user_tower(dim=8, num_users=VOCAB.num_users).eval()
    x, u = item_inputs(ITEMS, VOCAB), user_inputs(USERS, VOCAB)
    unknown = {**x, "item": torch.zeros(3, dtype=torch.long)}
    stranger = {**u, "user": torch.zeros(3, dtype=torch.long)}
    assert not torch.allclose(items(x)[0], items(unknown)[0])
    items.forget(torch.tensor([1]))
    users.forget(torch.tensor([3, 4]), torch.tensor([1]))
    assert torch.allclose(items(x)[0], items(unknown)[0])
    assert not torch.allclose(items(x)[1], items(unknown)[1])  # item 2 is remembered
    no_recent = {**stranger, "recent_items": torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0]])}
    assert torch.allclose(users(u)[0], users(no_recent)[0])  # user 1 and items 3, 4 forgotten


@pytest.mark.parametrize("cls", ["user", "item"])
def test_checkpoint_round_trip_gives_equal_outputs(cls, tmp_path):
    torch.manual_seed(1)
    if cls == "user":
        model, x = user_tower(num_users=VOCAB.num_users), user_inputs(USERS, VOCAB)
    else:
        model, x = item_tower(), item_inputs(ITEMS, VOCAB)
    model.eval()
    tnn.save(model, tmp_path, cls)
    loaded = tnn.load(type(model), tmp_path, cls)
    assert loaded.config == model.config
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="not a"):
        tnn.load(ItemTower if cls == "user" else UserTower, tmp_path, cls)
    weights = tmp_path / f"{cls}.safetensors"
    state = load_file(weights)
    save_file({f"old.{k}": v for k, v in state.items()}, weights)  # a layer renamed since
    with pytest.raises(ValueError, match="another version of .*retrain"):
        tnn.load(type(model), tmp_path, cls)
    first = next(iter(state))
    save_file({**state, first: torch.cat([state[first], state[first]])}, weights)  # resized since
    with pytest.raises(ValueError, match=f"another version of .*{first}.*retrain"):
        tnn.load(type(model), tmp_path, cls)


def ranker() -> Ranker:
    return Ranker(RankerConfig(VOCAB.num_users, VOCAB.num_items, VOCAB.fields("user"),
                               VOCAB.fields("item"), VOCAB.share_widths()))  # fmt: skip


def test_an_untrained_ranker_ranks_as_the_retrieval_stage():
    torch.manual_seed(0)
    model = ranker().eval()
    frame = ITEMS.assign(
        item_count=[5, None, 2], item_count_30d=[1, None, 0], item_mean_rating=[4.0, None, 3.0]
    )
    items = categorical_inputs(frame, VOCAB) | {"popularity": popularity_inputs(frame, (3, 1))}
    users, retrieval = user_inputs(USERS, VOCAB), torch.tensor([0.1, 0.7, -0.2])
    for row in range(3):  # whatever the user's features
        scores = model.score(take(users, torch.tensor([row])), items, retrieval)
        assert torch.allclose(scores, retrieval * model.config.retrieval_scale)


def test_a_ranker_scores_one_user_against_items_as_it_scores_pairs():
    torch.manual_seed(0)
    model = ranker().eval()
    for p in model.parameters():  # away from the start, where only the retrieval score counts
        torch.nn.init.normal_(p, std=0.3)
    items = categorical_inputs(ITEMS, VOCAB) | {"popularity": torch.randn(3, 4)}
    users, retrieval = user_inputs(USERS, VOCAB), torch.tensor([0.1, 0.7, -0.2])
    with torch.no_grad():
        for row in range(3):
            one = take(users, torch.tensor([row]))
            pairs = model(take(users, torch.tensor([row] * 3)), items, retrieval)
            assert torch.allclose(model.score(one, items, retrieval), pairs, atol=1e-6)
            assert pairs.std() > 0  # the items are told apart


def test_a_ranker_step_moves_only_the_id_rows_its_batch_touched():
    torch.manual_seed(0)
    model = ranker()
    steppers = tnn.optimizers(model, lr=0.1, weight_decay=0.0)
    assert [type(o).__name__ for o in steppers] == ["AdamW", "SparseAdam"]
    items = categorical_inputs(ITEMS, VOCAB) | {"popularity": torch.ones(3, 4)}
    users = user_inputs(USERS, VOCAB)

    def moved(ids: list[int]) -> list[int]:
        before = model.gmf_item.weight.clone()
        for optimizer in steppers:
            optimizer.zero_grad()
        batch = {**items, "item": torch.tensor(ids)}
        model(users, batch, torch.tensor([0.1, 0.7, -0.2])).sum().backward()
        for optimizer in steppers:
            optimizer.step()
        return (model.gmf_item.weight != before).any(dim=1).nonzero().flatten().tolist()

    moved([2, 5, 5])  # opens the output layer, zero but for the retrieval score at the start
    assert moved([2, 5, 5]) == [2, 5]
    assert moved([7, 7, 7]) == [7]  # rows 2 and 5 keep still: no momentum without a gradient


def test_the_towers_id_tables_turn_sparse_at_a_large_catalogue():
    assert not tnn.table(tnn.SPARSE_FROM - 1, 4).sparse and tnn.table(tnn.SPARSE_FROM, 4).sparse
    assert not item_tower().ids.sparse and not user_tower().recent.sparse  # small: dense AdamW


def test_mean_pool_over_a_sparse_table_gives_the_dense_gradient_at_touched_rows():
    torch.manual_seed(0)
    dense = torch.nn.Embedding(50, 4, padding_idx=0)
    sparse = torch.nn.Embedding(50, 4, padding_idx=0, sparse=True)
    sparse.weight.data.copy_(dense.weight.data)
    ids = torch.randint(0, 50, (30, 12))
    ids[ids % 3 == 0] = 0
    grad = torch.randn(30, 4)
    tnn.mean_pool(dense, ids).backward(grad)
    tnn.mean_pool(sparse, ids).backward(grad)
    assert sparse.weight.grad.is_sparse
    assert torch.allclose(sparse.weight.grad.to_dense(), dense.weight.grad, atol=1e-6)


def test_a_tower_step_on_a_large_catalogue_moves_only_the_id_rows_its_batch_touched():
    """At SPARSE_FROM items both towers' id tables are sparse and stepped by lazy Adam: the rows
    of the items a batch embeds or pools move, every other row keeps still."""
    torch.manual_seed(0)
    users_t = UserTower(UserTowerConfig(tnn.SPARSE_FROM, VOCAB.fields("user"),
                                        VOCAB.share_widths()))  # fmt: skip
    items_t = ItemTower(ItemTowerConfig(tnn.SPARSE_FROM, modalities=("id",)))
    both = torch.nn.ModuleList([users_t, items_t])
    steppers = tnn.optimizers(both, lr=0.1, weight_decay=0.0, fused=True)
    assert [type(o).__name__ for o in steppers] == ["AdamW", "SparseAdam"]
    users = user_inputs(USERS, VOCAB) | {"recent_items": torch.tensor([[3, 4], [0, 0], [9, 0]])}
    users_t.eval()  # every recent item pooled (no sampling, no dropout): the touched rows known
    items_t.eval()
    before = (users_t.recent.weight.clone(), items_t.ids.weight.clone())
    for optimizer in steppers:
        optimizer.zero_grad()
    loss = -(users_t(users) * items_t({"item": torch.tensor([5, 70_000, 5])})).sum()
    loss.backward()
    for optimizer in steppers:
        optimizer.step()
    tables = (users_t.recent.weight, items_t.ids.weight)
    moved = [(after != was).any(dim=1).nonzero().flatten().tolist()
             for after, was in zip(tables, before, strict=True)]  # fmt: skip
    assert moved == [[3, 4, 9], [5, 70_000]]


def test_the_user_tower_pools_its_history_from_the_item_towers_id_table():
    from retrieval.training import Shapes, towers_for
    from towers.train import TrainConfig

    cfg = TrainConfig(dim=16, shared_history=True)
    users_t, items_t = towers_for(VOCAB, cfg, ("id", "categorical"), Shapes())
    assert users_t.recent.weight is items_t.ids.weight  # one table, trained by both towers
    assert users_t.config.item_embed == items_t.config.embed and users_t.config.skip
    alone, _ = towers_for(VOCAB, cfg, ("categorical",), Shapes())  # no id input: its own table
    assert alone.config.item_embed == UserTowerConfig.item_embed
    apart, items_apart = towers_for(VOCAB, replace(cfg, shared_history=False), ("id",), Shapes())
    assert apart.recent.weight is not items_apart.ids.weight and not apart.config.skip


def test_a_shared_sparse_table_is_stepped_once_at_the_rows_either_tower_touched():
    torch.manual_seed(0)
    items_t = ItemTower(ItemTowerConfig(tnn.SPARSE_FROM, modalities=("id",)))
    width = items_t.config.embed
    users_t = UserTower(UserTowerConfig(tnn.SPARSE_FROM, VOCAB.fields("user"),
                                        VOCAB.share_widths(), item_embed=width))  # fmt: skip
    users_t.recent.weight = items_t.ids.weight
    both = torch.nn.ModuleList([users_t, items_t])
    assert len(tnn.sparse_tables(both)) == 1
    steppers = tnn.optimizers(both, lr=0.1, weight_decay=0.0, fused=True)
    users_t.eval()
    items_t.eval()
    before = items_t.ids.weight.clone()
    users = user_inputs(USERS, VOCAB) | {"recent_items": torch.tensor([[3, 4], [0, 0], [9, 0]])}
    loss = -(users_t(users) * items_t({"item": torch.tensor([5, 70_000, 5])})).sum()
    loss.backward()
    for optimizer in steppers:
        optimizer.step()
    moved = (items_t.ids.weight != before).any(dim=1).nonzero().flatten().tolist()
    assert moved == [3, 4, 5, 9, 70_000]


def test_item_ids_are_dropped_out_only_where_validation_brings_new_items():
    from retrieval.training import Shapes, Split, chosen, towers_for
    from towers.train import TrainConfig

    at = pd.Timestamp("2003-03-01", tz="UTC")
    train = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [10, 11, 12], "event_timestamp": at})

    def split_with(validation_items: list[int]) -> Split:
        validation = pd.DataFrame({"user_id": 1, "item_id": validation_items,
                                   "event_timestamp": at})  # fmt: skip
        return Split("given", train, validation, validation, at, at)

    known, _ = chosen(TrainConfig(dim=16, epochs=1), split_with([10, 11] * 100))
    new, choices = chosen(TrainConfig(dim=16, epochs=1), split_with([10, 11] * 99 + [13, 14]))
    assert known.id_dropout == 0.0 and new.id_dropout == 0.2
    assert (
        choices["id_dropout"]["value"] == 0.2
        and "1.0% of validation rows" in (choices["id_dropout"]["reason"])
    )
    given, choices = chosen(TrainConfig(dim=16, epochs=1, id_dropout=0.5), split_with([13]))
    assert given.id_dropout == 0.5 and choices["id_dropout"]["reason"] == "given"
    _, items_t = towers_for(VOCAB, known, ("id",), Shapes())
    assert items_t.config.id_dropout == 0.0
    _, items_t = towers_for(VOCAB, TrainConfig(dim=16), ("id",), Shapes())
    assert items_t.config.id_dropout == ItemTowerConfig.id_dropout  # none chosen: the tower's


def test_the_batch_follows_the_training_rows_unless_given():
    from retrieval import adapt
    from retrieval.training import Split, chosen
    from towers import train as tt

    at = pd.Timestamp("2003-03-01", tz="UTC")
    rows = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [10, 11, 12], "event_timestamp": at})
    sp = Split("given", rows, rows, rows, at, at)
    small, choices = chosen(tt.TrainConfig(dim=16, epochs=1), sp)
    assert small.batch_size == adapt.SMALL_BATCH < adapt.BATCH
    assert "fewer than" in choices["batch_size"]["reason"]
    assert adapt.batch_size(adapt.WIDE_FROM).value == adapt.BATCH
    given, choices = chosen(tt.TrainConfig(dim=16, epochs=1, batch_size=64), sp)
    assert given.batch_size == 64 and choices["batch_size"]["reason"] == "given"
    with pytest.raises(ValueError, match="batch_size 0: both must be positive"):  # none chosen
        tt.train(None, None, {}, torch.zeros(0), torch.zeros(0), {}, None, tt.TrainConfig(epochs=1))


def test_early_stopping_waits_out_a_dip_below_the_first_epoch(monkeypatch):
    """Validation that sinks under epoch 1's recall, then climbs (amazon-hin's start): patience
    alone keeps epoch 1; with half the epochs run first, the climb is found and kept."""
    from towers import train as tt

    curve = [0.5, 0.4, 0.4, 0.4, 0.6, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55]
    g = torch.Generator().manual_seed(0)
    users = {"user": torch.arange(1, 65), "activity": torch.randn(64, 4, generator=g),
             "recent_items": torch.randint(0, 20, (64, 5), generator=g)}  # fmt: skip
    catalogue = {"item": torch.arange(20)}
    validation = tt.Validation(users, [{1}] * 64, [set()] * 64)

    def run(**cfg) -> dict:
        scores = iter(curve)
        monkeypatch.setattr(tt, "scored", lambda *args: {"recall": next(scores), "ndcg": 0.0})
        torch.manual_seed(0)
        return tt.train(
            UserTower(UserTowerConfig(num_items=20, dim=8)),
            ItemTower(ItemTowerConfig(num_items=20, dim=8)),
            users, torch.randint(1, 20, (64,), generator=g), torch.zeros(20), catalogue,
            validation, tt.TrainConfig(epochs=12, batch_size=32, patience=2, **cfg),
        )  # fmt: skip

    patient = run(min_epochs=1)
    assert (patient["best_epoch"], len(patient["history"])) == (1, 3)
    waited = run()  # min_epochs 0: 6 of the 12 first
    assert (waited["best_epoch"], len(waited["history"])) == (5, 7)
    assert waited["stopped"] == "patience"
