"""Offline feature tables against brute force, and the all-or-nothing write."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from retrieval import offline
from retrieval.synthetic import SyntheticConfig, generate

DAY = pd.Timedelta(days=1)
RECENT = offline.FeatureConfig().recent_items


@pytest.fixture(scope="module")
def world():
    ds = generate(SyntheticConfig(users=60, items=40, interactions=3_000, groups=4, days=90))
    return ds, offline.build(ds)


@pytest.mark.parametrize("bucket", ["day", "hour"])
def test_activity_rows_hold_the_state_at_the_end_of_each_bucket(world, bucket):
    ds, _ = world
    tables = offline.build(ds, offline.FeatureConfig(activity_bucket=bucket))
    activity = tables.user_activity.to_pandas()
    history = tables.user_history.to_pandas().set_index(["user_id", "event_timestamp"])
    assert len(history) == len(activity)  # the same (user, bucket) rows
    assert activity.groupby("user_id").size().mean() > 1  # several buckets per user
    assert (activity["event_timestamp"].dt.hour != 0).any() == (bucket == "hour")
    inter = ds.interactions
    genres = ds.items.set_index("item_id")["genres"]
    for row in activity.sample(40, random_state=0).itertuples():
        seen = inter[(inter["user_id"] == row.user_id) & (inter["timestamp"] < row.event_timestamp)]
        seen = seen.sort_values("timestamp", kind="stable")
        assert row.event_timestamp == row.event_timestamp.floor("D" if bucket == "day" else "h")
        assert row.interaction_count == len(seen)
        assert np.isclose(row.mean_rating, seen["rating"].mean())
        assert list(row.recent_items) == seen["item_id"].tolist()[::-1][:RECENT]
        everything = history.loc[(row.user_id, row.event_timestamp), "seen_items"]
        assert list(everything) == seen["item_id"].tolist()[::-1]
        counts = pd.Series([g for i in seen["item_id"] for g in genres[i]]).value_counts()
        shares = counts.reindex(ds.genres, fill_value=0) / counts.sum()
        assert np.allclose(row.genre_shares, shares.to_numpy(), atol=1e-6)


def test_popularity_windows_match_brute_force(world):
    ds, tables = world
    pop = tables.item_popularity.to_pandas()
    inter = ds.interactions
    window = offline.POPULARITY_WINDOW_DAYS * DAY
    for row in pop.sample(60, random_state=1).itertuples():
        mine = inter[(inter["item_id"] == row.item_id) & (inter["timestamp"] < row.event_timestamp)]
        assert row.item_count == len(mine)
        assert row.item_count_30d == (mine["timestamp"] >= row.event_timestamp - window).sum()
    last = pop.sort_values("event_timestamp").groupby("item_id").tail(1)
    assert last["event_timestamp"].max() <= pd.Timestamp(tables.meta["end"])


def test_every_stamp_lies_in_the_materialized_range(world):
    _, tables = world
    start, end = pd.Timestamp(tables.meta["start"]), pd.Timestamp(tables.meta["end"])
    for name in offline.TABLES[:-1]:  # every feature table
        stamps = getattr(tables, name)["event_timestamp"].to_pandas()
        assert stamps.min() >= start and stamps.max() <= end, name


def test_test_split_never_feeds_features():
    ds = generate(SyntheticConfig(users=30, items=20, interactions=600, groups=2))
    ds.interactions["split"] = np.where(np.arange(600) % 5 == 0, "test", "train")
    tables = offline.build(ds)
    last = tables.user_activity.to_pandas().groupby("user_id")["interaction_count"].max()
    train = ds.interactions[ds.interactions["split"] == "train"].groupby("user_id").size()
    pd.testing.assert_series_equal(last, train, check_names=False)


def test_a_failed_write_leaves_the_previous_files(world, tmp_path, monkeypatch):
    ds, tables = world
    offline.write(tables, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = []

    def failing_write(table, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(table, path)

    original = pq.write_table
    monkeypatch.setattr(pq, "write_table", failing_write)
    smaller = offline.build(generate(SyntheticConfig(users=5, items=5, interactions=50, groups=1)))
    with pytest.raises(OSError, match="disk full"):
        offline.write(smaller, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no stray temp files


def test_leave_one_out_features_count_every_other_row_of_the_user(world):
    ds, _ = world
    rows = ds.interactions.sample(300, random_state=0)
    frame = pd.DataFrame({"user_id": rows["user_id"].to_numpy()})
    out = offline.leave_one_out(rows, frame, ds.items, ds.genres)
    genres = ds.items.set_index("item_id")["genres"]
    for j, row in enumerate(rows.itertuples()):
        others = rows[(rows["user_id"] == row.user_id) & (rows.index != row.Index)]
        if others.empty:
            assert np.isnan(out["interaction_count"][j]) and np.isnan(out["mean_rating"][j])
            continue
        assert out["interaction_count"][j] == len(others)
        assert np.isclose(out["mean_rating"][j], others["rating"].mean())
        counts = pd.Series([g for i in others["item_id"] for g in genres[i]]).value_counts()
        shares = counts.reindex(ds.genres, fill_value=0) / max(counts.sum(), 1)
        assert np.allclose(out["genre_shares"][j], shares.to_numpy(), atol=1e-6)


@pytest.mark.parametrize("bucket", ["day", "hour"])
def test_activity_from_rows_is_the_store_had_only_they_happened(world, bucket):
    """User activity computed afresh from a subset of the interactions, point in time: as of t,
    what the store's rows of that subset say (every bucket that ended by t); users with none of
    them yet have no history."""
    ds, _ = world
    cfg = offline.FeatureConfig(activity_bucket=bucket)
    kept = ds.interactions[ds.interactions["item_id"] % 3 != 0]  # a third of the items gone
    kept = kept.sort_values("timestamp", kind="stable")
    rows = kept.rename(columns={"timestamp": "event_timestamp"})
    rng = np.random.default_rng(0)
    at = ds.interactions["timestamp"].sample(50, random_state=0).to_numpy()
    frame = pd.DataFrame({
        "user_id": rng.choice(ds.users["user_id"].to_numpy(), size=len(at)), "event_timestamp": at,
        "interaction_count": -1, "recent_items": None, "genre_shares": None,
    })  # fmt: skip
    out = offline.activity_from(rows, frame, ds.items, ds.genres, cfg)
    width = pd.Timedelta(days=1) if bucket == "day" else pd.Timedelta(hours=1)
    genres = ds.items.set_index("item_id")["genres"]
    assert (out["event_timestamp"] == frame["event_timestamp"]).all()
    for row in out.itertuples():
        ended = kept["timestamp"].dt.floor(width) + width <= row.event_timestamp
        seen = kept[(kept["user_id"] == row.user_id) & ended]
        if seen.empty:
            assert np.isnan(row.interaction_count)
            continue
        assert row.interaction_count == len(seen)
        assert list(row.recent_items) == seen["item_id"].tolist()[::-1][:RECENT]
        counts = pd.Series([g for i in seen["item_id"] for g in genres[i]]).value_counts()
        shares = counts.reindex(ds.genres, fill_value=0) / counts.sum()
        assert np.allclose(row.genre_shares, shares.to_numpy(), atol=1e-6)
    assert out["interaction_count"].notna().mean() > 0.5
