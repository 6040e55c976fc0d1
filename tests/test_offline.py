"""Offline feature tables against brute force, and the all-or-nothing write."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from retrieval import adapt, offline, reader
from retrieval.synthetic import SyntheticConfig, load

DAY = pd.Timedelta(days=1)
RECENT = adapt.RECENT_ORDERED  # what the rule chooses on rows in time order


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = SyntheticConfig(users=60, items=40, interactions=3_000, groups=4, days=90)
    ds = load(cfg, tmp_path_factory.mktemp("synthetic"))
    return ds, offline.build(ds)


def expected_shares(seen: pd.DataFrame, ds, values: list[str]) -> np.ndarray:
    """By brute force: the share of `seen`'s genres on each of `values`."""
    genres = ds.items.set_index("item_id")["genres"]
    counts = pd.Series([g for i in seen["item_id"] for g in genres[i]]).value_counts()
    return (counts.reindex(values, fill_value=0) / max(counts.sum(), 1)).to_numpy()


@pytest.mark.parametrize("bucket", ["day", "hour"])
def test_activity_rows_hold_the_state_at_the_end_of_each_bucket(world, bucket):
    ds, _ = world
    tables = offline.build(ds, offline.FeatureConfig(activity_bucket=bucket))
    activity = tables.user_activity.to_pandas()
    values = tables.meta["shares"]["genres"]
    assert sorted(values) == sorted({g for gs in ds.items["genres"] for g in gs})
    assert activity.groupby("user_id").size().mean() > 1  # several buckets per user
    assert (activity["event_timestamp"].dt.hour != 0).any() == (bucket == "hour")
    inter = ds.interactions
    for row in activity.sample(40, random_state=0).itertuples():
        seen = inter[(inter["user_id"] == row.user_id) & (inter["timestamp"] < row.event_timestamp)]
        seen = seen.sort_values("timestamp", kind="stable")
        assert row.event_timestamp == row.event_timestamp.floor("D" if bucket == "day" else "h")
        assert row.interaction_count == len(seen)
        assert np.isclose(row.mean_rating, seen["rating"].mean())
        assert list(row.recent_items) == seen["item_id"].tolist()[::-1][:RECENT]
        assert np.allclose(row.genres_shares, expected_shares(seen, ds, values), atol=1e-6)


def test_activity_is_the_same_computed_in_chunks_of_users(world, monkeypatch):
    ds, tables = world
    monkeypatch.setattr(offline, "ACTIVITY_CHUNK", 97)  # many chunks, each ending with a user
    assert len(offline.user_chunks(reader.by_user_and_time(ds.interactions)["user_id"].to_numpy(),
                                   97)) > 10  # fmt: skip
    assert offline.build(ds).user_activity.equals(tables.user_activity)


def test_rows_sort_by_user_then_time_keeping_ties_in_order():
    at = pd.to_datetime([3, 1, 2, 1, 1], unit="s", utc=True)
    inter = pd.DataFrame({"user_id": ["b", "a", "b", "a", "a"], "item_id": [1, 2, 3, 4, 5],
                          "timestamp": at})  # fmt: skip
    assert reader.by_user_and_time(inter)["item_id"].tolist() == [2, 4, 5, 3, 1]


def test_history_holds_every_item_once_per_user_as_of_their_last_day(world):
    ds, tables = world
    history = tables.user_history.to_pandas().set_index("user_id")
    assert history.index.is_unique and len(history) == ds.interactions["user_id"].nunique()
    for user, row in history.sample(20, random_state=0).iterrows():
        mine = ds.interactions[ds.interactions["user_id"] == user].sort_values(
            "timestamp", kind="stable"
        )
        assert list(row["seen_items"]) == mine["item_id"].tolist()[::-1]
        assert row["event_timestamp"] == mine["timestamp"].max().floor("D") + DAY


def test_shares_pool_the_rare_values_of_a_wide_feature():
    """Past SHARE_VALUES values, the most frequent keep a slot each and the rest share one."""
    n = offline.SHARE_VALUES + 8
    items = pd.DataFrame({"item_id": np.arange(n), "brand": [f"b{i}" for i in range(n)]})
    rows = pd.DataFrame({"item_id": np.repeat(np.arange(n), np.arange(n, 0, -1))})
    shares = offline.Shares.fit(items, {"brand": "categorical"}, rows)
    values = shares.values["brand"]
    assert len(values) == offline.SHARE_VALUES and values[-1] == offline.OTHER
    assert values[:3] == ["b0", "b1", "b2"]  # the most picked first
    hot = shares.of(np.array([0, n - 1, 999])).get("brand").toarray()
    assert hot[0, 0] == 1 and hot[1, -1] == 1 and hot[2].sum() == 0  # rare: other; unknown: none


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


def test_test_split_never_feeds_features(tmp_path):
    ds = load(SyntheticConfig(users=30, items=20, interactions=600, groups=2), tmp_path)
    ds.interactions["split"] = np.where(np.arange(600) % 5 == 0, "test", "train")
    tables = offline.build(ds)
    last = tables.user_activity.to_pandas().groupby("user_id")["interaction_count"].max()
    train = ds.interactions[ds.interactions["split"] == "train"].groupby("user_id").size()
    pd.testing.assert_series_equal(last, train, check_names=False)


def test_a_failed_write_leaves_the_previous_files(world, tmp_path, monkeypatch):
    ds, tables = world
    offline_dir = tmp_path / "data" / "offline"
    offline.write(tables, offline_dir)
    assert offline_dir.is_symlink() and (offline_dir / "dataset.json").is_file()

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(tmp_path)): p.read_bytes()
                for p in sorted(tmp_path.rglob("*")) if p.is_file()}  # fmt: skip

    before = files()
    calls = []

    def failing_write(table, path, **options):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(table, path, **options)

    original = pq.write_table
    cfg = SyntheticConfig(users=5, items=5, interactions=50, groups=1)
    smaller = offline.build(load(cfg, tmp_path.parent / "smaller"))
    monkeypatch.setattr(pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        offline.write(smaller, offline_dir)
    assert files() == before  # no stray temp files, the old generation untouched


def test_a_new_generation_replaces_the_whole_set_at_once(world, tmp_path):
    """`data/offline` is a pointer: the tables of one `ttr data` are all swapped in together; a
    repository whose offline folder is a plain directory is taken over; two generations stay."""
    ds, tables = world
    offline_dir = tmp_path / "offline"
    offline_dir.mkdir()
    (offline_dir / "content.json").write_text("{}")  # what `ttr content` recorded
    for _ in range(3):
        offline.write(tables, offline_dir)
    assert offline_dir.is_symlink() and (offline_dir / "content.json").read_text() == "{}"
    generations = sorted(p.name for p in tmp_path.glob("offline-*"))
    assert len(generations) == 2 and offline_dir.resolve().name == generations[-1]
    assert set(p.name for p in offline_dir.iterdir()) == {
        *(f"{t}.parquet" for t in offline.TABLES),
        "dataset.json",
        "content.json",
    }


def test_leave_one_out_features_count_every_other_row_of_the_user(world):
    ds, _ = world
    rows = ds.interactions.sample(300, random_state=0)
    frame = pd.DataFrame({"user_id": rows["user_id"].to_numpy()})
    shares = offline.Shares(ds.items, {"genres": sorted({g for gs in ds.items["genres"]
                                                          for g in gs})})  # fmt: skip
    out = offline.leave_one_out(rows, frame, shares)
    for j, row in enumerate(rows.itertuples()):
        others = rows[(rows["user_id"] == row.user_id) & (rows.index != row.Index)]
        if others.empty:
            assert np.isnan(out["interaction_count"][j]) and np.isnan(out["mean_rating"][j])
            continue
        assert out["interaction_count"][j] == len(others)
        assert np.isclose(out["mean_rating"][j], others["rating"].mean())
        expected = expected_shares(others, ds, shares.values["genres"])
        assert np.allclose(out["genres_shares"][j], expected, atol=1e-6)


@pytest.mark.parametrize("bucket", ["day", "hour"])
def test_activity_from_rows_is_the_store_had_only_they_happened(world, bucket):
    """User activity computed afresh from a subset of the interactions, point in time: as of t,
    what the store's rows of that subset say (every bucket that ended by t); users with none of
    them yet have no history."""
    ds, _ = world
    cfg = offline.FeatureConfig(activity_bucket=bucket, recent_items=RECENT)
    kept = ds.interactions[ds.interactions["item_id"] % 3 != 0]  # a third of the items gone
    kept = kept.sort_values("timestamp", kind="stable")
    rows = kept.rename(columns={"timestamp": "event_timestamp"})
    rng = np.random.default_rng(0)
    at = ds.interactions["timestamp"].sample(50, random_state=0).to_numpy()
    frame = pd.DataFrame({
        "user_id": rng.choice(ds.users["user_id"].to_numpy(), size=len(at)), "event_timestamp": at,
        "interaction_count": -1, "recent_items": None, "genres_shares": None,
    })  # fmt: skip
    shares = offline.Shares(ds.items, {"genres": ["genre-0", "genre-1", "genre-2", "genre-3"]})
    out = offline.activity_from(rows, frame, shares, cfg)
    width = pd.Timedelta(days=1) if bucket == "day" else pd.Timedelta(hours=1)
    assert (out["event_timestamp"] == frame["event_timestamp"]).all()
    for row in out.itertuples():
        ended = kept["timestamp"].dt.floor(width) + width <= row.event_timestamp
        seen = kept[(kept["user_id"] == row.user_id) & ended]
        if seen.empty:
            assert np.isnan(row.interaction_count)
            continue
        assert row.interaction_count == len(seen)
        assert list(row.recent_items) == seen["item_id"].tolist()[::-1][:RECENT]
        expected = expected_shares(seen, ds, shares.values["genres"])
        assert np.allclose(row.genres_shares, expected, atol=1e-6)
    assert out["interaction_count"].notna().mean() > 0.5
