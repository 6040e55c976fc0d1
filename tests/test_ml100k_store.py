"""ml-100k through the real pipeline: data -> apply -> materialize, on SQLite and on Redis."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import (
    assert_online_equals_offline,
    copy_repo,
    need_data,
    online_snapshot,
    unique_project,
)

from retrieval import store
from retrieval.cli import run
from towers.features import training_frame


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory) -> store.Profile:
    raw = need_data("ml-100k")
    repo = copy_repo(tmp_path_factory.mktemp("ml100k"))
    for argv in (
        ["data", "--dataset", "ml-100k", "--data-dir", str(raw)],
        ["apply"],
        ["materialize"],
    ):
        assert run([*argv, "--repo", str(repo)]) == 0
    return store.profile(repo)


@pytest.fixture(scope="module")
def ml100k_redis(ml100k, redis_url, tmp_path_factory) -> store.Profile:
    repo = copy_repo(tmp_path_factory.mktemp("ml100k_redis"), project=unique_project())
    (repo / "data").symlink_to(ml100k.repo / "data")  # the same offline files, its own registry
    prof = store.profile(repo, redis_url)
    store.apply(prof)
    store.materialize(prof)
    yield prof
    store.open_store(prof).teardown()


def test_online_equals_latest_offline_on_sqlite(ml100k):
    assert_online_equals_offline(ml100k)


def test_online_equals_latest_offline_on_redis(ml100k_redis):
    assert_online_equals_offline(ml100k_redis)


@pytest.mark.parametrize("profile_fixture", ["ml100k", "ml100k_redis"])
def test_user_1_has_272_interactions_online(profile_fixture, request):
    prof = request.getfixturevalue(profile_fixture)
    row = store.entity_features(prof, "user", "1")
    raw = pd.read_csv(need_data("ml-100k") / "u.data", sep="\t", names=["u", "i", "r", "t"])
    assert row["interaction_count"] == (raw["u"] == 1).sum() == 272
    assert len(row["recent_items"]) == 20 and row["occupation"] == "technician"


@pytest.mark.parametrize("profile_fixture", ["ml100k", "ml100k_redis"])
def test_materializing_again_gives_the_same_online_state(profile_fixture, request):
    prof = request.getfixturevalue(profile_fixture)
    before = online_snapshot(prof)
    store.materialize(prof)
    done = store.materialize(prof, incremental=True)
    after = online_snapshot(prof)
    for view in before:
        pd.testing.assert_frame_equal(before[view], after[view])
    static = {m.view for m in done if m.start == min(d.start for d in done)}
    assert static >= {"user_profile", "item_content"}


def test_training_set_keeps_every_interaction(ml100k):
    inter = pq.read_table(ml100k.offline_dir / "interactions.parquet").to_pandas()
    assert len(inter) == 100_000
    assert len(inter[["user_id", "event_timestamp"]].drop_duplicates()) == 49_439
    frame = training_frame(
        store.open_store(ml100k),
        "two_tower_training",
        inter[["user_id", "item_id", "event_timestamp", "rating"]],
    )
    assert len(frame) == 100_000
    assert (
        frame[["user_id", "item_id", "rating"]].to_numpy()
        == inter[["user_id", "item_id", "rating"]].to_numpy()
    ).all()
    before_first_row = frame["interaction_count"].isna()
    assert before_first_row.sum() > 0  # a user's first day: no activity row yet, the row is kept
    assert frame["age"].notna().all() and frame["title"].notna().all()


def test_training_set_sees_no_future_activity(ml100k):
    """Each example's activity features count exactly the user's interactions on earlier days."""
    inter = pq.read_table(ml100k.offline_dir / "interactions.parquet").to_pandas()
    frame = training_frame(
        store.open_store(ml100k), "user_tower", inter[["user_id", "event_timestamp"]]
    )
    keys = pd.MultiIndex.from_arrays([inter["user_id"], inter["event_timestamp"].dt.floor("D")])
    daily = pd.Series(1, index=keys).groupby(level=[0, 1]).sum()
    before_day = daily.groupby(level=0).cumsum() - daily  # the user's interactions on earlier days
    expected = before_day.reindex(keys).to_numpy()
    got = frame["interaction_count"].fillna(0).astype(int).to_numpy()
    assert (got == expected).all(), f"{(got != expected).sum()} rows differ from the oracle"
    recent = frame["recent_items"].to_numpy()
    leaked = [
        i
        for i, (items, item) in enumerate(zip(recent, inter["item_id"], strict=True))
        if items is not None and item in items
    ]
    assert not leaked  # ml-100k has one rating per (user, item): the label never appears early
