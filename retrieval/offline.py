"""Feature tables for the offline store, computed vectorized from a `Dataset`, written atomically.

Time-varying tables are time series: a row per entity per active day (user activity: per active
day or hour, `FeatureConfig.activity_bucket`), stamped at the end of that day or hour (UTC),
holding the state after all of its interactions. A training example at time t therefore sees only
buckets that ended by t: no label leaks into its own features.
Static tables (profile, content) are stamped at EPOCH_OFFSET before the first interaction.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval import content
from retrieval.datasets import Dataset
from retrieval.errors import TTRError

POPULARITY_WINDOW_DAYS = 30
DAY_US = 86_400_000_000
BUCKETS = {"day": DAY_US, "hour": DAY_US // 24}


@dataclass(frozen=True)
class FeatureConfig:
    activity_bucket: Literal["day", "hour"] = "day"  # one user_activity row per active bucket
    recent_items: int = 20  # length of the user's recent-items list (most recent first)
    seen_items: int = 2000  # cap on user_history's list of every item so far (serving drops them)

    def __post_init__(self) -> None:
        if self.activity_bucket not in BUCKETS:
            raise TTRError(f"activity bucket {self.activity_bucket!r}: choose day or hour")
        if min(self.recent_items, self.seen_items) < 1:
            raise TTRError("recent items and seen items must be at least 1")


TS = pa.timestamp("us", tz="UTC")  # DuckDB's offline store wants microseconds


@dataclass(frozen=True)
class Tables:
    user_profile: pa.Table
    user_activity: pa.Table
    user_history: pa.Table
    item_content: pa.Table
    item_popularity: pa.Table
    item_vectors: pa.Table
    interactions: pa.Table
    meta: dict


def build(
    ds: Dataset,
    cfg: FeatureConfig | None = None,
    done: Callable[[str], object] | None = None,
    vectors: pa.Table | None = None,
) -> Tables:
    """All offline tables for `ds`, calling `done(name)` as each is ready; activity features are
    computed from non-test rows only; content `vectors` computed before are carried over where
    their item's content is unchanged."""
    cfg = cfg or FeatureConfig()
    inter = ds.interactions.sort_values(["user_id", "timestamp"], kind="stable").reset_index(
        drop=True
    )
    feat = inter[inter["split"] != "test"].reset_index(drop=True)
    us = micros(inter["timestamp"])
    start_us = _day_floor(int(us.min())) - DAY_US
    end_us = _day_floor(int(us.max())) + DAY_US  # the last end-of-day stamp
    genre_matrix = _genre_matrix(ds.items, ds.genres)
    meta = {
        "dataset": ds.name,
        "genres": ds.genres,
        "start": pd.Timestamp(start_us, unit="us", tz="UTC").isoformat(),
        "end": pd.Timestamp(end_us, unit="us", tz="UTC").isoformat(),
        "counts": {"users": len(ds.users), "items": len(ds.items), "interactions": len(inter)},
        "recent_items": cfg.recent_items,
        "activity_bucket": cfg.activity_bucket,
        "source": str(ds.source) if ds.source else None,  # raw files: posters for `ttr content`
    }
    makers = {
        "user_profile": lambda: _static(ds.users, start_us),
        "user_activity": lambda: user_activity(
            feat, genre_matrix, BUCKETS[cfg.activity_bucket], cfg.recent_items
        ),
        "user_history": lambda: user_history(feat, BUCKETS[cfg.activity_bucket], cfg.seen_items),
        "item_content": lambda: _static(ds.items, start_us),
        "item_popularity": lambda: item_popularity(feat),
        "item_vectors": lambda: content.vectors_table(
            content.keys(ds.items, ds.source), vectors, _ts(np.full(len(ds.items), start_us))
        ),
        "interactions": lambda: _interactions(inter),
    }
    tables = {}
    for name, make in makers.items():
        tables[name] = make()
        if done:
            done(name)
    return Tables(**tables, meta=meta)


def _day_floor(us: np.ndarray | int, unit: int = DAY_US) -> np.ndarray | int:
    return us - us % unit


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64), type=pa.int64()).cast(TS)


def _static(frame: pd.DataFrame, at_us: int) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return table.append_column("event_timestamp", _ts(np.full(len(frame), at_us)))


def _interactions(inter: pd.DataFrame) -> pa.Table:
    table = pa.Table.from_pandas(
        inter.rename(columns={"timestamp": "event_timestamp"}), preserve_index=False
    )
    return table.set_column(
        table.schema.get_field_index("event_timestamp"),
        "event_timestamp",
        table["event_timestamp"].cast(TS),
    )


def _genre_matrix(items: pd.DataFrame, genres: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(item ids sorted, multi-hot genres per item in that order)."""
    index = {g: i for i, g in enumerate(genres)}
    items = items.sort_values("item_id")
    hot = np.zeros((len(items), len(genres)), dtype=np.float32)
    rows = np.repeat(np.arange(len(items)), [len(g) for g in items["genres"]])
    cols = [index[g] for gs in items["genres"] for g in gs]
    hot[rows, cols] = 1.0
    return items["item_id"].to_numpy(), hot


def _runs(keys: np.ndarray, buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each run of equal (key, bucket) in rows sorted by both."""
    change = np.flatnonzero((np.diff(keys) != 0) | (np.diff(buckets) != 0)) + 1
    starts = np.concatenate([[0], change])
    return starts, np.append(change, len(keys))


def user_activity(
    inter: pd.DataFrame,
    genres: tuple[np.ndarray, np.ndarray],
    bucket_us: int = DAY_US,
    recent: int = 20,
) -> pa.Table:
    """Cumulative count, mean rating, genre shares and recent items per user per active bucket
    (a day or an hour), stamped at the bucket's end."""
    users = inter["user_id"].to_numpy()
    us = micros(inter["timestamp"])
    starts, ends = _runs(users, _day_floor(us, bucket_us))
    first = np.searchsorted(users, users[starts])  # the user's first row, per group
    ratings = inter["rating"].to_numpy(dtype=np.float64)
    mean = _ratio(
        _range_sum(np.nan_to_num(ratings), first, ends), _range_sum(~np.isnan(ratings), first, ends)
    )
    item_ids, hot = genres
    hot_rows = hot[np.searchsorted(item_ids, inter["item_id"].to_numpy())]  # (n, genres)
    shares = _range_sum(hot_rows, first, ends)
    shares = shares / np.maximum(shares.sum(axis=1, keepdims=True), 1.0)
    return pa.table(
        {
            "user_id": users[starts],
            "event_timestamp": _ts(_day_floor(us[starts], bucket_us) + bucket_us),
            "interaction_count": (ends - first).astype(np.int64),
            "mean_rating": pa.array(mean, mask=np.isnan(mean)),
            "genre_shares": _lists(shares.astype(np.float32)),
            "recent_items": _recent(inter["item_id"].to_numpy(), first, ends, recent),
        }
    )


def feature_config(meta: dict) -> FeatureConfig:
    """The recipe of a store's activity features, from its `dataset.json`."""
    return FeatureConfig(activity_bucket=meta["activity_bucket"], recent_items=meta["recent_items"])


def activity_from(
    rows: pd.DataFrame, frame: pd.DataFrame, items: pd.DataFrame, genres: tuple[str, ...],
    features: FeatureConfig,
) -> pd.DataFrame:  # fmt: skip
    """`frame` (`user_activity` features of `user_id` as of `event_timestamp`, one row per entity
    row) with those features computed afresh from the interactions in `rows` alone, point in time
    and in the store's buckets: what the store would hold had the others never happened (a
    timeless split's validation rows, a cold start's held-out items)."""
    inter = rows.rename(columns={"event_timestamp": "timestamp"})
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    fresh = user_activity(
        inter, _genre_matrix(items, genres), BUCKETS[features.activity_bucket],
        features.recent_items,
    ).to_pandas()  # fmt: skip
    fresh["at"] = micros(fresh.pop("event_timestamp"))
    wanted = pd.DataFrame({
        "user_id": frame["user_id"].to_numpy(np.int64), "at": micros(frame["event_timestamp"]),
        "row": np.arange(len(frame)),
    })  # fmt: skip
    joined = pd.merge_asof(
        wanted.sort_values("at", kind="stable"), fresh.sort_values("at", kind="stable"),
        on="at", by="user_id",
    ).sort_values("row")  # fmt: skip
    columns = [c for c in fresh.columns if c in frame.columns and c != "user_id"]
    return frame.assign(**{c: joined[c].to_numpy() for c in columns})


def leave_one_out(
    rows: pd.DataFrame, frame: pd.DataFrame, items: pd.DataFrame, genres: tuple[str, ...]
) -> pd.DataFrame:
    """`frame` (`user_activity` features, one row per row of `rows`) with the count, mean rating
    and genre shares computed from each user's other rows in `rows`: where rows carry no time,
    what a row's features would be without it, so its own item does not leak into them."""
    users = rows["user_id"].to_numpy()
    _, user = np.unique(users, return_inverse=True)
    ratings = rows["rating"].to_numpy(dtype=np.float64)
    rated = ~np.isnan(ratings)
    item_ids, hot = _genre_matrix(items, genres)
    own = hot[np.searchsorted(item_ids, rows["item_id"].to_numpy())].astype(np.float64)

    def others(values: np.ndarray) -> np.ndarray:
        total = np.zeros((user.max() + 1, *values.shape[1:]))
        np.add.at(total, user, values)
        return total[user] - values

    shares = others(own)
    shares = shares / np.maximum(shares.sum(axis=1, keepdims=True), 1.0)
    count = others(np.ones(len(rows)))
    return frame.assign(
        interaction_count=np.where(count > 0, count, np.nan),  # no other rows: no history
        mean_rating=_ratio(others(np.nan_to_num(ratings)), others(rated.astype(np.float64))),
        genre_shares=list(shares.astype(np.float32)),
    )


def user_history(inter: pd.DataFrame, bucket_us: int, keep: int) -> pa.Table:
    """Every item each user has interacted with (the last `keep`, most recent first), per active
    bucket, stamped at the bucket's end: what serving drops from a user's candidates."""
    users = inter["user_id"].to_numpy()
    us = micros(inter["timestamp"])
    starts, ends = _runs(users, _day_floor(us, bucket_us))
    first = np.searchsorted(users, users[starts])
    return pa.table(
        {
            "user_id": users[starts],
            "event_timestamp": _ts(_day_floor(us[starts], bucket_us) + bucket_us),
            "seen_items": _recent(inter["item_id"].to_numpy(), first, ends, keep),
        }
    )


def _range_sum(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """values[lo:hi].sum(axis=0) for each pair (lo, hi), through one prefix sum."""
    values = np.asarray(values, dtype=np.float64)
    prefix = np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(values, axis=0)])
    return prefix[hi] - prefix[lo]


def _ratio(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """total / count as float32, NaN where count is 0."""
    return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def micros(timestamps: pd.Series) -> np.ndarray:
    """Timestamps as int64 microseconds since the epoch (the offline store's unit)."""
    return timestamps.dt.as_unit("us").astype("int64").to_numpy()


def _lists(matrix: np.ndarray) -> pa.Array:
    n, width = matrix.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))


def _recent(items: np.ndarray, first: np.ndarray, ends: np.ndarray, keep: int) -> pa.Array:
    """The last `keep` items before each end, most recent first, within the user's rows."""
    lengths = np.minimum(ends - first, keep)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    owner = np.repeat(np.arange(len(ends)), lengths)
    rank = np.arange(offsets[-1]) - offsets[owner]  # 0 = most recent
    return pa.ListArray.from_arrays(offsets, pa.array(items[ends[owner] - 1 - rank]))


def item_popularity(inter: pd.DataFrame) -> pa.Table:
    """Cumulative and trailing-window counts per item, at each active day and each window expiry."""
    frame = pd.DataFrame(
        {
            "item_id": inter["item_id"].to_numpy(),
            "day": _day_floor(micros(inter["timestamp"])),
            "rating": inter["rating"].to_numpy(dtype=np.float64),
        }
    )
    daily = (
        frame.groupby(["item_id", "day"], sort=True)
        .agg(n=("rating", "size"), rated=("rating", "count"), total=("rating", "sum"))
        .reset_index()
    )
    days = daily[["item_id", "day"]]
    events = pd.concat([days, days.assign(day=days["day"] + POPULARITY_WINDOW_DAYS * DAY_US)])
    events = events[events["day"] <= days["day"].max()]  # no rows past the end of the data
    events = events.drop_duplicates().sort_values(["item_id", "day"]).reset_index(drop=True)
    span = int(events["day"].max() // DAY_US) + 2  # encodes (item, day) as one sortable int
    key = daily["item_id"].to_numpy() * span + daily["day"].to_numpy() // DAY_US
    event_key = events["item_id"].to_numpy() * span + events["day"].to_numpy() // DAY_US
    base = np.searchsorted(key, events["item_id"].to_numpy() * span)  # the item's first day
    upto = np.searchsorted(key, event_key, side="right")  # days up to the event's day
    before = np.maximum(
        np.searchsorted(key, event_key - POPULARITY_WINDOW_DAYS, side="right"), base
    )
    n, rated, total = (daily[c].to_numpy() for c in ("n", "rated", "total"))
    mean = _ratio(_range_sum(total, base, upto), _range_sum(rated, base, upto))
    return pa.table(
        {
            "item_id": events["item_id"].to_numpy(),
            "event_timestamp": _ts(events["day"].to_numpy() + DAY_US),
            "item_count": _range_sum(n, base, upto).astype(np.int64),
            "item_count_30d": _range_sum(n, before, upto).astype(np.int64),
            "item_mean_rating": pa.array(mean, mask=np.isnan(mean)),
        }
    )


TABLES = (
    "user_profile",
    "user_activity",
    "user_history",
    "item_content",
    "item_popularity",
    "item_vectors",
    "interactions",
)


def write(tables: Tables, offline_dir: Path) -> list[Path]:
    """Write every file under a temporary name, then rename all (dataset.json last): a failure
    before the renames leaves the previous files as they were."""
    offline_dir.mkdir(parents=True, exist_ok=True)
    files = {f"{name}.parquet": getattr(tables, name) for name in TABLES}
    files["dataset.json"] = json.dumps(tables.meta, indent=2)
    staged: dict[str, Path] = {}
    try:
        for name, payload in files.items():
            staged[name] = _stage(offline_dir, payload)
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    for name, tmp in staged.items():
        os.replace(tmp, offline_dir / name)
    return [offline_dir / name for name in staged]


def write_table(table: pa.Table, path: Path) -> None:
    """One parquet file, written under a temporary name and renamed."""
    os.replace(_stage(path.parent, table), path)


def write_text(text: str, path: Path) -> None:
    """One text file, written under a temporary name and renamed."""
    os.replace(_stage(path.parent, text), path)


def _stage(folder: Path, payload: pa.Table | str) -> Path:
    fd, name = tempfile.mkstemp(dir=folder, prefix=".staging-")
    os.close(fd)
    path = Path(name)
    try:
        if isinstance(payload, str):
            path.write_text(payload)
        else:
            pq.write_table(payload, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def read_meta(offline_dir: Path) -> dict:
    """The dataset description `ttr data` wrote beside the tables."""
    return json.loads((offline_dir / "dataset.json").read_text())
