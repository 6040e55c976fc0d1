"""Feature tables for the offline store, computed vectorized from a `Dataset`, written atomically.

Which tables and columns exist follows the dataset's schema (its spec): the users' and items'
own features, static; and what every dataset has, derived from the interactions:

    user_activity    count, mean rating, recent items, and the user's shares over each
                     categorical item feature (which genres, brands, ... the user picks)
    user_history     every item the user has had (serving drops them)
    item_popularity  all-time and trailing-window counts, mean rating

Time-varying tables are time series: a row per entity per active day (user activity: per active
day or hour, `FeatureConfig.activity_bucket`), stamped at the end of that day or hour (UTC),
holding the state after all of its interactions. A training example at time t therefore sees only
buckets that ended by t: no label leaks into its own features. Static tables (profile, content)
are stamped a day before the first interaction.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sparse

from retrieval import adapt, artifacts, atomic, content
from retrieval.catalogue import META
from retrieval.errors import TTRError
from retrieval.reader import Dataset, Schema, by_user_and_time
from towers.inputs import OTHER

POPULARITY_WINDOW_DAYS = 30
DAY_US = 86_400_000_000
BUCKETS = {"day": DAY_US, "hour": DAY_US // 24}
ACTIVITY_CHUNK = 1 << 21  # rows of users whose activity features are computed at once
SHARE_VALUES = 32  # a user's shares over one item feature: its most frequent values, the rest
# pooled in one last slot (OTHER)
ARROW_TYPES = {
    "categorical": pa.string(), "multi_categorical": pa.list_(pa.string()),
    "numeric": pa.float64(), "text": pa.string(), "image": pa.string(),
}  # fmt: skip
ID_TYPES = {"int64": pa.int64(), "string": pa.string()}


@dataclass(frozen=True)
class FeatureConfig:
    activity_bucket: Literal["day", "hour"] = "day"  # one user_activity row per active bucket
    recent_items: int = 0  # length of the user's recent-items list (most recent first); 0:
    # chosen from the data (retrieval/adapt.py: 20 where rows have a time order, else most users'
    # whole history), the choice and its reason in dataset.json
    seen_items: int = 2000  # cap on user_history's list of every item so far (serving drops them)

    def __post_init__(self) -> None:
        if self.activity_bucket not in BUCKETS:
            raise TTRError(f"activity bucket {self.activity_bucket!r}: choose day or hour")
        if self.recent_items < 0 or self.seen_items < 1:
            raise TTRError("recent items must be at least 0 (chosen), seen items at least 1")


TS = pa.timestamp("us", tz="UTC")  # DuckDB's offline store wants microseconds


def positions(keys: np.ndarray, values: np.ndarray | pd.Series) -> np.ndarray:
    """Each value's position in `keys` (distinct), -1 where absent; any id type, hashed."""
    return pd.Index(keys).get_indexer(np.asarray(values))


class Shares:
    """The values a user's shares count, per categorical item feature (the most frequent first;
    past SHARE_VALUES, the rest pooled in a last OTHER slot), and each item's multi-hot over them.
    The order is fitted once (`fit`, on the rows that feed features) and kept in dataset.json."""

    def __init__(self, items: pd.DataFrame, values: dict[str, list[str]]) -> None:
        self.values = values
        self.item_ids = items["item_id"].to_numpy()
        self.hot = {name: self._hot(items[name], vals) for name, vals in values.items()}

    @classmethod
    def fit(cls, items: pd.DataFrame, kinds: dict[str, str], rows: pd.DataFrame) -> Shares:
        counts = rows["item_id"].value_counts()
        weight = counts.reindex(items["item_id"], fill_value=0).to_numpy()
        values = {}
        for name, kind in kinds.items():
            if kind in ("categorical", "multi_categorical"):
                ranked = _by_weight(_cells(items[name]), weight)
                pooled = len(ranked) > SHARE_VALUES
                values[name] = ranked[: SHARE_VALUES - 1] + [OTHER] if pooled else ranked
        return cls(items, values)

    def _hot(self, column: pd.Series, values: list[str]) -> sparse.csr_matrix:
        """(items, width) 0/1: which of `values` each item holds (OTHER for the rest)."""
        index = {v: j for j, v in enumerate(values)}
        other = index.get(OTHER, -1)
        cells = _cells(column)
        rows = np.repeat(np.arange(len(cells)), [len(c) for c in cells])
        cols = np.array([index.get(v, other) for c in cells for v in c], dtype=np.int64)
        keep = cols >= 0
        hot = sparse.csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])),
                                shape=(len(cells), len(values)))  # fmt: skip
        hot.data[:] = 1.0  # an item counts once per slot
        return hot

    def of(self, item_ids: np.ndarray) -> dict[str, sparse.csr_matrix]:
        """Each feature's multi-hot rows for `item_ids` (a row of zeros for an unknown item)."""
        at = positions(self.item_ids, item_ids)
        known = at >= 0
        pick = sparse.csr_matrix((np.ones(int(known.sum())), (np.flatnonzero(known), at[known])),
                                 shape=(len(at), len(self.item_ids)))  # fmt: skip
        return {name: pick @ hot for name, hot in self.hot.items()}

    def counts(self, name: str, item_rows: np.ndarray, group: np.ndarray,
               groups: int) -> np.ndarray:  # fmt: skip
        """(width, groups): per group, how many of its rows' items hold each value
        (`item_rows`: catalogue rows, -1 unknown; `group`: each row's group). A bincount over
        the (value, row) pairs: a sparse product of the same took 3x as long at 10M rows."""
        hot = self.hot[name]
        rows = np.where(item_rows >= 0, item_rows, 0)
        lengths = np.where(item_rows >= 0, np.diff(hot.indptr)[rows], 0)
        starts = np.repeat(hot.indptr[rows] - np.cumsum(lengths) + lengths, lengths)
        cols = hot.indices[starts + np.arange(len(starts))].astype(np.int64)
        flat = cols * groups + np.repeat(group, lengths)
        width = hot.shape[1]
        return np.bincount(flat, minlength=width * groups).reshape(width, groups)


def _by_weight(cells: list[list[str]], weight: np.ndarray) -> list[str]:
    """The distinct values of `cells`, by the summed `weight` of the cells holding them (most
    first, ties by value)."""
    values = [v for c in cells for v in c]
    total = pd.Series(np.repeat(weight, [len(c) for c in cells]), index=values, dtype=float)
    total = total.groupby(level=0).sum()
    return sorted(total.index, key=lambda v: (-total[v], v))


def _chosen(cfg: FeatureConfig, feat: pd.DataFrame) -> tuple[FeatureConfig, dict]:
    """`cfg` with what it leaves to the data chosen by its rule (the choice and reason beside)."""

    def recent() -> adapt.Choice:
        per_user = feat["user_id"].value_counts().to_numpy()
        return adapt.recent_items(per_user, ordered=feat["timestamp"].nunique() > 1)

    return adapt.settle(cfg, {"recent_items": recent})


def _cells(column: pd.Series) -> list[list[str]]:
    """Each cell as a list of values: a categorical's one value, a multi-categorical's list."""
    return [[] if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
            else [str(x) for x in v] if isinstance(v, (list, np.ndarray)) else [str(v)]
            for v in column]  # fmt: skip


def build(ds: Dataset, cfg: FeatureConfig | None = None, vectors: pa.Table | None = None) -> Tables:
    """The offline tables of `ds`, each made when it is asked for (`Tables`); activity features
    come from non-test rows only; content `vectors` computed before are carried over where their
    item's content is unchanged."""
    cfg = cfg or FeatureConfig()
    inter = by_user_and_time(ds.interactions)
    test = (inter["split"] == "test").to_numpy()
    feat = inter[~test].reset_index(drop=True) if test.any() else inter
    us = micros(inter["timestamp"])
    start_us = _day_floor(int(us.min())) - DAY_US
    end_us = _day_floor(int(us.max())) + DAY_US  # the last end-of-day stamp
    items = ds.items.sort_values("item_id", kind="stable").reset_index(drop=True)
    users = ds.users.sort_values("user_id", kind="stable").reset_index(drop=True)
    shares = Shares.fit(items, ds.schema.items, feat)
    cfg, choices = _chosen(cfg, feat)
    meta = {
        "dataset": ds.name,
        "schema": ds.schema.to_json(),
        "shares": shares.values,
        "start": pd.Timestamp(start_us, unit="us", tz="UTC").isoformat(),
        "end": pd.Timestamp(end_us, unit="us", tz="UTC").isoformat(),
        "counts": {"users": len(users), "items": len(items), "interactions": len(inter)},
        "recent_items": cfg.recent_items,
        "activity_bucket": cfg.activity_bucket,
        "choices": choices,
        "report": ds.report.lines,
    }
    schema = ds.schema
    makers = {  # each made while the one before is written; the two largest never at once
        "item_popularity": lambda: item_popularity(feat),
        "user_activity": lambda: user_activity(
            feat, shares, BUCKETS[cfg.activity_bucket], cfg.recent_items
        ),
        "user_history": lambda: user_history(feat, cfg.seen_items),
        "interactions": lambda: _interactions(inter, schema),
        "user_profile": lambda: _static(users, "user_id", schema.user_id, schema.users, start_us),
        "item_content": lambda: _static(
            items, "item_id", schema.item_id, _content_kinds(ds), start_us
        ),
        "item_vectors": lambda: content.vectors_table(
            content.keys(items, schema.items, schema.title),
            vectors,
            _ts(np.full(len(items), start_us)),
        ),  # fmt: skip
    }
    return Tables(makers, meta)


@dataclass
class Tables:
    """The offline tables of a dataset, each made on demand: `write` makes and writes them one
    at a time (10M interactions' tables never coexist in memory); reading an attribute makes
    that table and keeps it."""

    makers: dict[str, Callable[[], pa.Table]]  # name -> its maker, in the order written
    meta: dict  # dataset.json
    made: dict[str, pa.Table] = field(default_factory=dict)

    def __getattr__(self, name: str) -> pa.Table:
        if name not in self.__dict__.get("makers", {}):
            raise AttributeError(name)
        if name not in self.made:
            self.made[name] = self.makers[name]()
        return self.made[name]

    def __iter__(self) -> Iterator[tuple[str, pa.Table]]:
        for name, make in self.makers.items():
            yield name, self.made[name] if name in self.made else make()


def _content_kinds(ds: Dataset) -> dict[str, str]:
    return {**({"title": "text"} if ds.schema.title else {}), **ds.schema.items}


def _day_floor(us: np.ndarray | int, unit: int = DAY_US) -> np.ndarray | int:
    return us - us % unit


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64), type=pa.int64()).cast(TS)


def _ids(values: np.ndarray | pd.Series, kind: str) -> pa.Array:
    return pa.array(np.asarray(values), type=ID_TYPES[kind])


def _static(frame: pd.DataFrame, key: str, id_kind: str, kinds: dict[str, str],
            at_us: int) -> pa.Table:  # fmt: skip
    """The entity's own features, typed by kind, stamped once at `at_us`."""
    columns = {key: _ids(frame[key], id_kind)}
    for name, kind in kinds.items():
        values = frame[name]
        if kind == "numeric":
            numbers = values.to_numpy(dtype=np.float64)
            columns[name] = pa.array(numbers, mask=np.isnan(numbers))
        else:
            cells = [None if v is None or v is pd.NA else list(v) if kind == "multi_categorical"
                     else str(v) for v in values]  # fmt: skip
            columns[name] = pa.array(cells, type=ARROW_TYPES[kind])
    columns["event_timestamp"] = _ts(np.full(len(frame), at_us))
    return pa.table(columns)


def _interactions(inter: pd.DataFrame, schema: Schema) -> pa.Table:
    split = inter["split"].astype("category")
    return pa.table({
        "user_id": _ids(inter["user_id"], schema.user_id),
        "item_id": _ids(inter["item_id"], schema.item_id),
        "rating": pa.array(inter["rating"].to_numpy(np.float32)),
        "event_timestamp": _ts(micros(inter["timestamp"])),
        "split": pa.DictionaryArray.from_arrays(
            pa.array(split.cat.codes.to_numpy(np.int32)),
            pa.array(split.cat.categories.astype(str).tolist(), pa.string()),
        ),
    })  # fmt: skip


def _runs(keys: np.ndarray, buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each run of equal (key, bucket) in rows sorted by both."""
    if not len(keys):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    change = np.flatnonzero((keys[1:] != keys[:-1]) | (np.diff(buckets) != 0)) + 1
    starts = np.concatenate([[0], change]).astype(np.int64)
    return starts, np.append(change, len(keys))


def _user_runs(users: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per run, the index of its user's first run (runs sorted by user)."""
    change = np.flatnonzero(users[starts][1:] != users[starts][:-1]) + 1
    first = np.concatenate([[0], change])
    return np.repeat(first, np.diff(np.append(first, len(starts))))


def user_chunks(users: np.ndarray, rows: int) -> list[tuple[int, int]]:
    """(start, end) row ranges of about `rows` rows that split no user's rows (rows sorted by
    user): activity features are computed a chunk at a time, so that the temporaries of 10M
    interactions never coexist."""
    starts = np.flatnonzero(users[1:] != users[:-1]) + 1  # where each user but the first begins
    at = np.searchsorted(starts, np.arange(rows, len(users), rows))  # the next user start
    cuts = np.unique(starts[at[at < len(starts)]])
    bounds = [0, *cuts.tolist(), len(users)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def user_activity(
    inter: pd.DataFrame, shares: Shares, bucket_us: int = DAY_US, recent: int = 20
) -> pa.Table:
    """Cumulative count, mean rating, recent items and the shares over each categorical item
    feature, per user per active bucket (a day or an hour), stamped at the bucket's end.
    `inter` is sorted by user, then time."""
    users = inter["user_id"].to_numpy()
    item_rows = positions(shares.item_ids, inter["item_id"].to_numpy())
    parts = [_activity(inter.iloc[lo:hi], item_rows[lo:hi], shares, bucket_us, recent)
             for lo, hi in user_chunks(users, ACTIVITY_CHUNK)]  # fmt: skip
    return pa.concat_tables(parts)


def _activity(inter: pd.DataFrame, item_rows: np.ndarray, shares: Shares, bucket_us: int,
              recent: int) -> pa.Table:  # fmt: skip
    """`user_activity` of rows holding every row of their users."""
    users = inter["user_id"].to_numpy()
    us = micros(inter["timestamp"])
    starts, ends = _runs(users, _day_floor(us, bucket_us))
    owner = _user_runs(users, starts)
    first = starts[owner]  # the user's first row, per run
    ratings = inter["rating"].to_numpy(dtype=np.float64)
    mean = _ratio(
        _range_sum(np.nan_to_num(ratings), first, ends), _range_sum(~np.isnan(ratings), first, ends)
    )
    columns = {
        "user_id": _ids(users[starts], id_kind(inter, "user_id")),
        "event_timestamp": _ts(_day_floor(us[starts], bucket_us) + bucket_us),
        "interaction_count": pa.array((ends - first).astype(np.int64)),
        "mean_rating": pa.array(mean, mask=np.isnan(mean)),
        "recent_items": _recent(inter, first, ends, recent),
    }
    run = np.repeat(np.arange(len(starts)), ends - starts)
    for name in shares.values:
        counts = shares.counts(name, item_rows, run, len(starts))
        columns[f"{name}_shares"] = _lists(_cumulative_shares(counts, owner))
    return pa.table(columns)


def id_kind(frame: pd.DataFrame, column: str) -> str:
    """ "int64" or "string": how an id column is stored."""
    return "int64" if pd.api.types.is_integer_dtype(frame[column]) else "string"


def _cumulative_shares(counts: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """(runs, width) float32: each run's counts (`counts`: width x runs) summed over its user's
    runs so far, as shares (`owner`: per run, its user's first run). In float32 (exact to 2^24
    interactions a user) along contiguous rows, each user's total before their first run taken
    away by a repeat: down the columns of (runs, width) in int64 it took 3 s for 8.5M runs."""
    total = counts.astype(np.float32)
    np.cumsum(total, axis=1, out=total)  # in place: 5x faster than cumsum(dtype=float32)
    firsts, runs = np.unique(owner, return_counts=True)  # owner is sorted
    base = np.zeros((len(total), len(firsts)), dtype=np.float32)
    later = firsts > 0
    base[:, later] = total[:, firsts[later] - 1]
    total -= np.repeat(base, runs, axis=1)
    total /= np.maximum(total.sum(axis=0), 1.0)
    return np.ascontiguousarray(total.T)


def feature_config(meta: dict) -> FeatureConfig:
    """The recipe of a store's activity features, from its `dataset.json`."""
    return FeatureConfig(activity_bucket=meta["activity_bucket"], recent_items=meta["recent_items"])


def activity_from(
    rows: pd.DataFrame, frame: pd.DataFrame, shares: Shares, features: FeatureConfig,
) -> pd.DataFrame:  # fmt: skip
    """`frame` (`user_activity` features of `user_id` as of `event_timestamp`, one row per entity
    row) with those features computed afresh from the interactions in `rows` alone, point in time
    and in the store's buckets: what the store would hold had the others never happened (a
    timeless split's validation rows, a cold start's held-out items)."""
    inter = rows.rename(columns={"event_timestamp": "timestamp"})
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    fresh = user_activity(
        inter, shares, BUCKETS[features.activity_bucket], features.recent_items
    ).to_pandas()
    fresh["at"] = micros(fresh.pop("event_timestamp"))
    wanted = pd.DataFrame({
        "user_id": frame["user_id"].to_numpy(), "at": micros(frame["event_timestamp"]),
        "row": np.arange(len(frame)),
    })  # fmt: skip
    joined = pd.merge_asof(
        wanted.sort_values("at", kind="stable"), fresh.sort_values("at", kind="stable"),
        on="at", by="user_id",
    ).sort_values("row")  # fmt: skip
    columns = [c for c in fresh.columns if c in frame.columns and c != "user_id"]
    return frame.assign(**{c: joined[c].to_numpy() for c in columns})


def leave_one_out(rows: pd.DataFrame, frame: pd.DataFrame, shares: Shares) -> pd.DataFrame:
    """`frame` (`user_activity` features, one row per row of `rows`) with the count, mean rating
    and shares computed from each user's other rows in `rows`: where rows carry no time, what a
    row's features would be without it, so its own item does not leak into them."""
    _, user = np.unique(rows["user_id"].to_numpy(), return_inverse=True)
    ratings = rows["rating"].to_numpy(dtype=np.float64)
    rated = ~np.isnan(ratings)
    by_user = sparse.csr_matrix((np.ones(len(rows)), (user, np.arange(len(rows)))))

    def others(values: np.ndarray | sparse.csr_matrix) -> np.ndarray:
        total = by_user @ values
        total = total.toarray() if sparse.issparse(total) else total
        own = values.toarray() if sparse.issparse(values) else values
        return total[user] - own

    count = others(np.ones(len(rows)))
    out = {
        "interaction_count": np.where(count > 0, count, np.nan),  # no other rows: no history
        "mean_rating": _ratio(others(np.nan_to_num(ratings)), others(rated.astype(np.float64))),
    }
    for name, hot in shares.of(rows["item_id"].to_numpy()).items():
        counts = others(hot)
        out[f"{name}_shares"] = list(
            (counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)).astype(np.float32)
        )
    return frame.assign(**out)


def user_history(inter: pd.DataFrame, keep: int) -> pa.Table:
    """Every item each user has interacted with (the last `keep`, most recent first), one row
    per user stamped at the end of the day of their last interaction: what serving drops from
    a user's candidates (a time series of it would grow with the square of a user's days)."""
    users = inter["user_id"].to_numpy()
    us = micros(inter["timestamp"])
    starts, ends = _runs(users, np.zeros(len(users), dtype=np.int64))
    return pa.table({
        "user_id": _ids(users[starts], id_kind(inter, "user_id")),
        "event_timestamp": _ts(_day_floor(us[ends - 1]) + DAY_US),
        "seen_items": _recent(inter, starts, ends, keep),
    })  # fmt: skip


def _distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values (np.unique hashes where it need not: 17 s for 13M ints)."""
    values = np.sort(values, kind="stable")  # timsort: sorted runs merge in linear time
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


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


def _recent(inter: pd.DataFrame, first: np.ndarray, ends: np.ndarray, keep: int) -> pa.Array:
    """The last `keep` items before each end, most recent first, within the user's rows: entry
    j of list r is row (ends[r] - 1 + offsets[r]) - j."""
    items = inter["item_id"].to_numpy()
    lengths = np.minimum(ends - first, keep)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    small = np.int32 if len(items) < 2**31 - 1 and offsets[-1] < 2**31 - 1 else np.int64
    last = (ends - 1 + offsets[:-1]).astype(small)  # half the memory traffic in int32
    index = np.repeat(last, lengths) - np.arange(offsets[-1], dtype=small)
    return pa.ListArray.from_arrays(offsets, _ids(items[index], id_kind(inter, "item_id")))


def item_popularity(inter: pd.DataFrame) -> pa.Table:
    """Cumulative and trailing-window counts per item, at each active day and each window expiry.
    Rows are grouped by one sort of an (item, day) key and summed with reduceat (pandas' groupby
    took 17 s for 10M rows)."""
    codes, item_ids = pd.factorize(inter["item_id"], sort=True)
    day = _day_floor(micros(inter["timestamp"])) // DAY_US
    first_day = int(day.min()) if len(day) else 0
    span = int(day.max(initial=0)) - first_day + 2 + POPULARITY_WINDOW_DAYS  # (item, day): 1 int
    key = codes.astype(np.int64) * span + (day - first_day)
    order = np.argsort(key)
    key = key[order]
    starts = np.flatnonzero(np.diff(key, prepend=key[:1] - 1) != 0)
    ratings = inter["rating"].to_numpy(dtype=np.float64)[order]
    n = np.diff(np.append(starts, len(key))).astype(np.float64)
    rated = np.add.reduceat(~np.isnan(ratings), starts).astype(np.float64)
    total = np.add.reduceat(np.nan_to_num(ratings), starts)
    return _popularity_table(key[starts], np.asarray(item_ids), span, first_day, n, rated, total)


def _popularity_table(key: np.ndarray, item_ids: np.ndarray, span: int, first_day: int,
                      n: np.ndarray, rated: np.ndarray, total: np.ndarray) -> pa.Table:  # fmt: skip
    """The rows of `item_popularity` from the sorted (item, day) keys with interactions and
    their day's count, rated count and rating total."""
    last_day = int(key.max() % span) if len(key) else 0
    expiry = key + POPULARITY_WINDOW_DAYS
    events = np.concatenate([key, expiry[expiry % span <= last_day]])
    events = _distinct(events)  # two sorted runs: merged in linear time
    base = np.searchsorted(key, events - events % span)  # the item's first day
    upto = np.searchsorted(key, events, side="right")  # days up to the event's day
    before = np.maximum(np.searchsorted(key, events - POPULARITY_WINDOW_DAYS, side="right"), base)
    mean = _ratio(_range_sum(total, base, upto), _range_sum(rated, base, upto))
    integer = np.issubdtype(item_ids.dtype, np.integer)
    return pa.table(
        {
            "item_id": _ids(item_ids[events // span], "int64" if integer else "string"),
            "event_timestamp": _ts((events % span + first_day + 1) * DAY_US),
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


def write(tables: Tables, offline_dir: Path, done: Callable[[str], object] | None = None,
          ) -> dict[str, int]:  # fmt: skip
    """Make every table, one at a time, into a new generation directory beside `offline_dir`
    (`offline-<stamp>`), then point `offline_dir` (a symlink) at it in one step: a reader sees
    the whole old set of files or the whole new one, and a failure or a crash before the swap
    leaves the old set. What `ttr content` and `ttr index` added to the old generation (the
    content record, the item embeddings) is carried over. Calls `done(name)` as each table is
    made; returns each table's rows."""
    rows: dict[str, int] = {}
    parent = offline_dir.parent
    with artifacts.staging(parent) as staged:

        def made() -> Iterator[tuple[Path, atomic.Payload]]:
            for name, table in tables:
                rows[name] = table.num_rows
                yield staged / f"{name}.parquet", table
                if done:
                    done(name)
            for kept in (content.INFO, "item_embedding.parquet"):
                if (offline_dir / kept).is_file():
                    yield staged / kept, (offline_dir / kept).read_bytes()
            yield staged / META, json.dumps(tables.meta, indent=2)

        atomic.write_stream(made(), last=staged / META)
        generation = parent / f"{offline_dir.name}-{artifacts.stamp()}"
        os.rename(staged, generation)
    if offline_dir.is_dir() and not offline_dir.is_symlink():  # a repository from before
        os.rename(offline_dir, parent / f"{offline_dir.name}-{artifacts.stamp()}-legacy")
    artifacts.point(parent, offline_dir.name, generation.name)
    _prune(parent, offline_dir.name, keep=2)
    return rows


def _prune(parent: Path, name: str, keep: int) -> None:
    """Remove all but the `keep` newest generations of `name` (the current one always kept)."""
    current = (parent / name).resolve()
    generations = sorted((p for p in parent.glob(f"{name}-*") if p.is_dir()), reverse=True)
    for old in generations[keep:]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)


def shares_of(meta: dict, items: pd.DataFrame) -> Shares:
    """The store's shares (their order from dataset.json) over the catalogue `items`."""
    return Shares(items, meta["shares"])
