"""`ttr train` end to end on a small synthetic world: versions, manifest, atomic `latest`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from retrieval import artifacts, evaluate, index, indexing, store, training
from retrieval.cli import run
from retrieval.evaluate import Protocol, by_activity
from retrieval.offline import micros
from retrieval.synthetic import SyntheticConfig, load
from towers import nn as tnn
from towers.inputs import Ids, Vocab
from towers.item_tower import ItemTower
from towers.train import TrainConfig
from towers.user_tower import UserTower, UserTowerConfig

SMALL = ["--users", "300", "--items", "80", "--interactions", "12000", "--groups", "4"]
DIM = 32  # the towers' output width, --dim (not the default)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import copy_repo

    repo = copy_repo(tmp_path_factory.mktemp("stage"))
    assert run(["data", "--dataset", "synthetic", *SMALL, "--repo", str(repo)]) == 0
    assert run(["apply", "--repo", str(repo)]) == 0
    root = repo.parent / "artifacts"
    argv = [
        "train",
        "--epochs",
        "2",
        "--batch-size",
        "256",
        "--dim",
        str(DIM),
        "--repo",
        str(repo),
        "--artifacts",
        str(root),
    ]
    assert run(argv) == 0
    return repo, root


def test_train_publishes_a_complete_version(world):
    _, root = world
    version = artifacts.trained(root)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["dataset"] == "synthetic" and manifest["split"]["kind"] == "random"
    assert manifest["metrics"]["val_recall@20"] > 0 and manifest["train"]["epochs"] == 2
    assert manifest["train"]["dim"] == DIM != UserTowerConfig.dim
    refit = manifest["metrics"]["refit"]  # afresh on training + validation rows, best epochs
    assert refit["epochs"] == manifest["metrics"]["best_epoch"] == len(refit["history"])
    user, item = (
        tnn.load(UserTower, version, "user_tower"),
        tnn.load(ItemTower, version, "item_tower"),
    )
    assert user.config.dim == item.config.dim == DIM
    assert not list(root.glob(".incomplete-*"))


def test_a_failed_run_never_becomes_latest(world, monkeypatch, capsys):
    repo, root = world
    before = artifacts.trained(root)

    save = tnn.save

    def crash_on_second_tower(model, folder, name):
        if name == "item_tower":
            raise OSError("disk full")
        save(model, folder, name)

    monkeypatch.setattr(training.tnn, "save", crash_on_second_tower)
    assert run(["train", "--epochs", "1", "--repo", str(repo), "--artifacts", str(root)]) == 1
    assert "disk full" in capsys.readouterr().err
    assert artifacts.trained(root) == before and not list(root.glob(".incomplete-*"))


def test_temporal_split_cuts_at_global_times():
    ts = pd.date_range("2020-01-01", periods=100, freq="D", tz="UTC")
    inter = pd.DataFrame({"user_id": 1, "item_id": range(100), "event_timestamp": ts, "split": ""})
    sp = training.split(inter, "temporal", training.SplitConfig(cutoff=0.8, validation=0.1))
    assert sp.kind == "temporal" and (len(sp.train), len(sp.validation), len(sp.test)) == (
        70,
        10,
        20,
    )
    assert (
        sp.train["event_timestamp"].max()
        < sp.validation_time
        <= sp.validation["event_timestamp"].min()
    )
    assert sp.validation["event_timestamp"].max() < sp.test_time <= sp.test["event_timestamp"].min()


def test_index_stage_indexes_the_catalogue_exactly(world):
    repo, root = world
    assert run(["index", "--repo", str(repo), "--artifacts", str(root), "--k", "20"]) == 0
    version = artifacts.trained(root)
    info = json.loads((index.folder(version) / "index.json").read_text())
    assert (info["count"], info["dimension"], info["factory"], info["recall"]) == (
        80,
        DIM,
        "IDMap,Flat",
        1.0,
    )
    assert info["model_version"] == version.name == artifacts.latest(root).name  # now servable
    online = store.entity_features(store.profile(repo), "item", "1")  # the embedding, served
    assert len(online["embedding"]) == DIM and online["model_version"] == info["model_version"]
    assert abs(sum(x * x for x in online["embedding"]) - 1.0) < 1e-4


def test_nan_embeddings_stop_the_build_and_keep_the_previous_index(world, monkeypatch, capsys):
    repo, root = world
    assert run(["index", "--repo", str(repo), "--artifacts", str(root)]) == 0
    before = (index.folder(artifacts.latest(root)) / "index.faiss").read_bytes()

    def nan_items(version, vocab, catalogue):
        return np.full((len(catalogue), DIM), np.nan)

    monkeypatch.setattr(indexing, "embed_items", nan_items)
    assert run(["index", "--repo", str(repo), "--artifacts", str(root)]) == 1
    assert "NaN" in capsys.readouterr().err
    assert (index.folder(artifacts.latest(root)) / "index.faiss").read_bytes() == before


def test_evaluate_writes_every_model_and_ann_agrees_with_exact(world, tmp_path):
    repo, root = world
    assert run(["index", "--repo", str(repo), "--artifacts", str(root)]) == 0
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--repo", str(repo), "--artifacts", str(root), "--json", str(out),
            "--cold-draws", "2"]  # fmt: skip
    assert run(argv) == 0
    result = json.loads(out.read_text())
    assert result["dataset"] == "synthetic" and result["split"]["kind"] == "random"
    models = result["models"]
    assert set(models) == {"popularity", "ials", "two_tower", "two_tower_ann"}
    for values in models.values():
        assert set(values) >= {
            f"{m}@{k}" for m in ("recall", "ndcg", "precision", "f1") for k in (10, 20, 50, 100)
        }
    assert models["two_tower_ann"] == models["two_tower"]  # a Flat index is exact
    for values in models.values():  # activity groups split the test users; their mean is the whole
        groups = values["by_activity"].values()
        assert len(groups) > 1 and sum(g["users"] for g in groups) == result["split"]["test_users"]
        mean = sum(g["users"] * g["recall@20"] for g in groups) / result["split"]["test_users"]
        assert mean == pytest.approx(values["recall@20"])
    assert models["two_tower"]["recall@20"] > models["popularity"]["recall@20"]  # planted groups
    ablation = result["ablation"]  # the towers retrained on each subset of item-tower inputs
    assert list(ablation) == ["id", "id+categorical", "id+categorical+text"]
    assert all(0 < variant["recall@20"] <= 1 for variant in ablation.values())
    assert len({variant["recall@20"] for variant in ablation.values()}) == 3  # distinct models
    assert ablation["id+categorical+text"] == models["two_tower"]  # same inputs, same seed
    cold = result["cold_start"]  # 8 of 80 items never trained on: genre and group from content
    draws = cold["draws"]  # other items held out at each seed, the metrics their mean
    assert [d["seed"] for d in draws] == [0, 1] and cold["items"] == 8
    assert cold["users"] == sum(d["users"] for d in draws) and min(d["users"] for d in draws) > 20
    popular = "popularity_within_genres"
    for name in ("two_tower", "categorical+text", "id+categorical", popular, "user_genres"):
        mean = np.mean([d[name]["recall@20"] for d in draws])
        assert cold[name]["recall@20"] == pytest.approx(mean)
    assert draws[0]["two_tower"] != draws[1]["two_tower"]
    assert cold["two_tower"]["ndcg@10"] > cold[popular]["ndcg@10"]
    assert cold["categorical+text"]["ndcg@10"] > cold[popular]["ndcg@10"]  # no id input
    assert cold["user_genres"]["ndcg@10"] > cold[popular]["ndcg@10"]  # the group is a genre
    similar = result["similar"]  # the planted group is each item's genre
    assert similar["feature"] == "genres"
    assert similar["two_tower"]["shared_value@10"] > similar["popularity"]["shared_value@10"]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_no_ablation_runs_the_cold_start_alone(world, tmp_path):
    repo, root = world
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--repo", str(repo), "--artifacts", str(root), "--json", str(out),
            "--no-ablation", "--cold-draws", "1"]  # fmt: skip
    assert run(argv) == 0
    result = json.loads(out.read_text())
    assert "ablation" not in result
    (draw,) = result["cold_start"]["draws"]
    assert draw["seed"] == 0 and result["cold_start"]["two_tower"] == draw["two_tower"]


def test_evaluate_refuses_zero_cold_draws(world, capsys):
    repo, root = world
    argv = ["evaluate", "--repo", str(repo), "--artifacts", str(root), "--cold-draws", "0"]
    assert run(argv) == 1
    assert "cold draws 0" in capsys.readouterr().err


def test_user_shares_spread_over_the_items_holding_each_value():
    """The personalised baseline of the cold start: a user's share of earlier interactions on
    each value, spread evenly over the held-out items holding it; popularity within the values
    breaks ties and alone ranks a user without history."""
    catalogue = pd.DataFrame({"item_id": [1, 2, 3, 4, 5],
                              "genres": [["a"], ["b"], ["a"], ["a", "b"], None]})  # fmt: skip
    vocab = Vocab(Ids(catalogue["item_id"]), Ids([7, 8, 9]), shares={"genres": ["a", "b"]})
    world = SimpleNamespace(catalogue=catalogue, vocab=vocab)
    before = pd.DataFrame({"user_id": [7, 7, 7, 7, 8], "item_id": [1, 1, 1, 2, 2]})
    rows = np.array([2, 3, 4])  # items 3, 4, 5 held out: "a" in two of them, "b" in one
    vectors = evaluate.group_baselines(before, world, "genres", rows, np.array([7, 8, 9]),
                                       np.random.default_rng(0))  # fmt: skip
    users, items = vectors["user_genres"]
    scores = users @ items.T
    assert scores[0] == pytest.approx([0.75 / 2, 0.75 / 2 + 0.25, 0.0], abs=1e-6)
    assert scores[1] == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)  # user 8: all "b"
    # popularity within genre ("a": 3 interactions, "b": 2): 5 (none) < 4 (a, b) < 3 (a)
    users, items = vectors["popularity_within_genres"]
    assert (users @ items.T)[0].argsort().tolist() == [2, 1, 0]
    assert scores[2].argsort().tolist() == [2, 1, 0]  # no history: popularity within genre


def test_untied_ranks_keep_the_order_and_break_ties_at_random():
    scores = np.array([3.0, 1.0, 3.0, 2.0, 3.0])
    ranks = evaluate.untied(scores, np.random.default_rng(0))
    assert ranks[1] == 0 and ranks[3] == 1 and sorted(ranks[[0, 2, 4]]) == [2, 3, 4]
    firsts = {int(evaluate.untied(scores, np.random.default_rng(s)).argmax()) for s in range(30)}
    assert firsts == {0, 2, 4}  # each tied item comes first in some draw


def test_evaluate_no_retrain_leaves_out_ablation_and_cold_start(world, tmp_path):
    repo, root = world
    out, plot = tmp_path / "eval.json", tmp_path / "curves.png"
    argv = ["evaluate", "--no-retrain", "--repo", str(repo), "--artifacts", str(root),
            "--json", str(out), "--plot", str(plot)]  # fmt: skip
    assert run(argv) == 0
    assert not {"ablation", "cold_start"} & set(json.loads(out.read_text()))
    assert plot.stat().st_size > 0 and not out.with_suffix(".png").exists()


def _captured(ds, tmp_path, monkeypatch) -> tuple[store.Profile, Path, dict]:
    """`ds` through `ttr train`'s stage with the training loop replaced by a capture of what it
    is handed: the profile, the published version and the captured inputs."""
    prof, seen = _capturing(ds, tmp_path, monkeypatch)
    version = training.run(
        prof, tmp_path / "art", TrainConfig(epochs=1, refit=False), training.SplitConfig()
    )
    return prof, version, seen


def with_split(ds, kind: str):
    """`ds` as if its spec had named a split of `kind` ("given": its split column)."""
    return dataclasses.replace(ds, schema=dataclasses.replace(ds.schema, split=kind))


def _capturing(ds, tmp_path, monkeypatch) -> tuple[store.Profile, dict]:
    """A store of `ds`, and training's loop replaced by a capture of what it is handed."""
    from conftest import copy_repo

    from retrieval import offline

    prof = store.profile(copy_repo(tmp_path))
    offline.write(offline.build(ds), prof.offline_dir)
    store.apply(prof)
    seen = {}

    def capture(user_tower, item_tower, users, item_rows, log_q, catalogue, validation, cfg,
                times, progress):  # fmt: skip
        seen.update(users=users, items=item_rows, validation=validation, times=times)
        return {"best_epoch": 1, "val_recall@20": 0.0, "val_ndcg@20": 0.0, "history": []}

    monkeypatch.setattr(training, "train", capture)
    return prof, seen


def string_ids(ds):
    """`ds` with its user and item ids as strings ("u7", "i12"), as a shop's own tables have."""

    def named(frame: pd.DataFrame, column: str, prefix: str) -> pd.DataFrame:
        return frame.assign(**{column: prefix + frame[column].astype(str)})

    inter = named(named(ds.interactions, "user_id", "u"), "item_id", "i")
    schema = dataclasses.replace(ds.schema, user_id="string", item_id="string")
    return dataclasses.replace(ds, interactions=inter, users=named(ds.users, "user_id", "u"),
                               items=named(ds.items, "item_id", "i"), schema=schema)  # fmt: skip


@pytest.mark.parametrize("ids", ["int64", "string"])
def test_timeless_split_trains_on_the_history_without_the_label(tmp_path, monkeypatch, ids):
    """ml-1m's fixed split has one stamp for every row: features come from the end of training,
    a row's own item is left out of its activity features and blanked from its recent items; a
    validation user's activity features (count, genre shares, recent items) come from their
    training rows alone; masks count every training item of a row's user as had (no times).
    With integer ids (ml-1m's) and string ids (a shop's)."""
    ds = load(SyntheticConfig(users=60, items=30, interactions=1_500, groups=3), tmp_path / "raw")
    ds = string_ids(ds) if ids == "string" else ds
    ds.interactions["timestamp"] = pd.Timestamp("2003-03-01", tz="UTC")
    ds.interactions["split"] = ["test" if i % 5 == 0 else "train" for i in range(1_500)]
    prof, version, seen = _captured(with_split(ds, "given"), tmp_path, monkeypatch)
    assert Vocab.load(version).users.kind == Vocab.load(version).items.kind == ids
    manifest = artifacts.manifest(version)
    assert manifest["split"]["train_features"].startswith("as of test_time")
    assert (
        manifest["choices"]["shared_history"]["value"] == 1 and manifest["train"]["shared_history"]
    )
    assert seen["times"] is None
    _, inverse, per_user = torch.unique(
        seen["users"]["user"], return_inverse=True, return_counts=True
    )
    others = (per_user[inverse] - 1).float()  # each row's user's other training rows
    assert (others == 0).any() and (others > 0).any()
    activity = seen["users"]["activity"]
    assert torch.equal(activity[:, 1], (others > 0).float())  # history: the others
    assert torch.allclose(activity[:, 0], torch.log1p(others))  # not the row
    labels = seen["items"] + 1  # catalogue row r is item index r + 1
    assert not (seen["users"]["recent_items"] == labels[:, None]).any()
    had: dict[int, list[int]] = {}  # each user's training items, a row each
    for user, item in zip(seen["users"]["user"].tolist(), labels.tolist(), strict=True):
        had.setdefault(user, []).append(item)
    width = seen["users"]["recent_items"].shape[1]
    rows_of = zip(seen["users"]["user"].tolist(), labels.tolist(),
                  seen["users"]["recent_items"].tolist(), strict=True)  # fmt: skip
    for user, item, recent in rows_of:  # the rest of the user's history, all of it where it fits
        shown, others = set(recent) - {0}, set(had[user]) - {item}
        assert shown <= others and (shown == others or len(had[user]) > width)
    val = seen["validation"]
    shown = [set(recent.tolist()) - {0} for recent in val.users["recent_items"]]
    assert sum(map(bool, shown)) > len(shown) / 2  # the rest of the history stays
    for items, answers, known in zip(shown, val.relevant, val.seen, strict=True):
        assert not items & {row + 1 for row in answers - known}  # unless also picked in training
    sp = training.split(
        pq.read_table(prof.offline_dir / "interactions.parquet").to_pandas(), "given",
        training.SplitConfig(),
    )  # fmt: skip
    vocab = Vocab.load(version)
    users = vocab.users.values[val.users["user"].numpy() - 1].tolist()
    rows = sp.train[sp.train["user_id"].isin(users)]
    genres = rows.merge(ds.items[["item_id", "genres"]], on="item_id").explode("genres")
    shares = pd.crosstab(genres["user_id"], genres["genres"], normalize="index")
    shares = shares.reindex(columns=vocab.shares["genres"], fill_value=0.0)
    count = rows.groupby("user_id").size().reindex(users, fill_value=0).to_numpy()
    assert val.users["activity"][:, 0].numpy() == pytest.approx(np.log1p(count))
    assert val.users["genres_shares"].numpy() == pytest.approx(
        shares.reindex(users, fill_value=0.0).to_numpy()
    )


def test_timed_rows_pass_their_own_times(tmp_path, monkeypatch):
    """Where rows carry times, training hands each row's own time to the masks, aligned with the
    row's user, item and point-in-time features: the captured (user, item, time) triples are the
    training rows, and a user's history count never falls as their rows' times rise."""
    cfg = SyntheticConfig(users=40, items=30, interactions=800, groups=3, days=20)
    ds = load(cfg, tmp_path / "raw")
    prof, version, seen = _captured(ds, tmp_path, monkeypatch)
    vocab = Vocab.load(version)
    users, times = vocab.users.values[seen["users"]["user"].numpy() - 1], seen["times"]
    assert times is not None and len(times) == len(users) == len(seen["items"])
    sp = training.split(
        pq.read_table(prof.offline_dir / "interactions.parquet").to_pandas(), ds.schema.split,
        training.SplitConfig(),
    )  # fmt: skip
    expected = sorted(zip(sp.train["user_id"], sp.train["item_id"],
                          micros(sp.train["event_timestamp"]).tolist(), strict=True))  # fmt: skip
    items = vocab.items.values[seen["items"].numpy()]  # catalogue rows back to ids
    got = zip(users.tolist(), items.tolist(), times.tolist(), strict=True)
    assert sorted(got) == expected
    count = seen["users"]["activity"][:, 0]
    frame = pd.DataFrame({"user": users, "time": times, "count": count})
    rising = frame.sort_values(["user", "time"]).groupby("user")["count"].diff().dropna()
    assert (rising >= 0).all() and (rising > 0).any()


def test_activity_groups_split_users_by_their_earlier_items():
    earlier = [0, 0, 0, 1, 2, 3, 9, 40]  # counts of items each user had before the test
    proto = Protocol(
        users=np.arange(8), relevant=[{100 + u} for u in range(8)],
        exclude=[set(range(n)) for n in earlier], warm=np.array(earlier) > 0,
    )  # fmt: skip
    top = [[100 + u] if u >= 5 else [7] for u in range(8)]  # users with 3+ items get their hit
    groups = by_activity(top, proto, parts=4)  # quartile edges 0, 0, 1.5, 4.5, 40 -> 0, 1, 4, 40
    assert {span: g["users"] for span, g in groups.items()} == {"0-0": 3, "1-3": 3, "4-40": 2}
    assert [g["recall@10"] for g in groups.values()] == [0.0, 1 / 3, 1.0]


def test_held_out_items_leave_no_trace_in_the_user_features(tmp_path, monkeypatch):
    """A cold start's held-out items never happened, as far as the towers see: each training
    row's activity features count the user's earlier rows of the other items only (the store
    holds them all), and the validation users' too; no recent-items list holds one."""
    cfg = SyntheticConfig(users=40, items=30, interactions=1_200, groups=3, days=20)
    ds = load(cfg, tmp_path / "raw")
    prof, seen = _capturing(with_split(ds, "temporal"), tmp_path, monkeypatch)
    hidden = frozenset(range(1, 31, 5))
    cfg = TrainConfig(epochs=1, refit=False)
    f = training.fit(prof, cfg, training.SplitConfig(), hidden=hidden)
    assert f.split.kind == "temporal" and not f.split.train["item_id"].isin(hidden).any()
    inter = pq.read_table(prof.offline_dir / "interactions.parquet").to_pandas()
    ended = inter["event_timestamp"].dt.floor("D") + pd.Timedelta(days=1)  # its bucket's end

    def earlier(user: int, at: pd.Timestamp, items: pd.Series) -> np.ndarray:
        mine = (inter["user_id"] == user) & (ended <= at)
        return np.array([(mine & items).sum(), mine.sum()])

    others = ~inter["item_id"].isin(hidden)
    users, times = seen["users"], pd.to_datetime(seen["times"].numpy(), unit="us", utc=True)
    ids = f.vocab.users.values[users["user"].numpy() - 1]
    counts = np.array([earlier(u, t, others) for u, t in zip(ids, times, strict=True)])
    assert users["activity"][:, 0].numpy() == pytest.approx(np.log1p(counts[:, 0]))
    assert (counts[:, 0] < counts[:, 1]).mean() > 0.3  # the store's counts hold the held-out items
    val = seen["validation"].users
    at = f.split.validation_time
    val_ids = f.vocab.users.values[val["user"].numpy() - 1]
    val_counts = np.array([earlier(u, at, others)[0] for u in val_ids])
    assert val["activity"][:, 0].numpy() == pytest.approx(np.log1p(val_counts))
    hidden_index = torch.from_numpy(f.vocab.items.index(sorted(hidden)))
    for recent in (users["recent_items"], val["recent_items"]):
        assert not torch.isin(recent, hidden_index).any()
        assert (recent > 0).any()


def test_random_split_test_features_hold_no_test_rows(world):
    """A random split is drawn after the store was built, which counts every row: the test users'
    activity features come from the rows before the test alone, so no answer sits among them."""
    repo, root = world
    prof, version = store.profile(repo), artifacts.trained(root)
    manifest = artifacts.manifest(version)
    sp = training.read_split(prof.offline_dir, manifest["split"], manifest["train"]["seed"])
    meta = json.loads((prof.offline_dir / "dataset.json").read_text())
    world_ = training.world_of(prof, sp, meta, vocab=Vocab.load(version))
    users = np.sort(sp.test["user_id"].unique())
    x = evaluate.users_at_test(world_, sp, users)
    before = evaluate.before_test(sp).groupby("user_id")["item_id"]
    count = before.size().reindex(users, fill_value=0)
    assert sp.kind == "random"
    inter = pq.read_table(prof.offline_dir / "interactions.parquet").to_pandas()
    assert x["activity"][:, 0].numpy() == pytest.approx(np.log1p(count.to_numpy()))
    assert (inter.groupby("user_id").size()[users] > count).all()  # the store's count
    had = before.apply(lambda s: set(world_.vocab.items.index(s).tolist()))
    for user, recent in zip(users, x["recent_items"].tolist(), strict=True):
        assert set(recent) - {0} <= had.get(user, set())
