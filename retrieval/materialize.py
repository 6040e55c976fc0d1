"""Materialization: the latest offline row per entity into the online store, at batch speed.

Feast's own `materialize` pulls every row of a view, deduplicates in pandas and converts each value
through its generic type map (about 10k rows/s here). This path asks the offline store for the
latest row per entity (`pull_latest_from_table_or_query`), builds the value protos column by
column, writes them through the provider's `online_write_batch`, and records the interval in the
registry as Feast does, so `feast materialize-incremental` and this agree on what was done.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.infra.online_stores.sqlite import _table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import FloatList, Int64List, StringList, Value
from feast.types import Array, Bool, FeastType, Float32, Float64, Int64, String
from feast.utils import to_naive_utc

from retrieval.errors import TTRError
from towers.progress import Progress, Step, report

CHUNK = 20_000  # entity rows converted and written per call
SCALAR = {
    Int64: "int64_val",
    Float32: "float_val",
    Float64: "double_val",
    String: "string_val",
    Bool: "bool_val",
}
LISTS = {
    Int64: ("int64_list_val", Int64List),
    Float32: ("float_list_val", FloatList),
    String: ("string_list_val", StringList),
}
EMPTY = Value()


def _proto_maker(dtype: FeastType) -> Callable[[object], Value]:
    if isinstance(dtype, Array):
        field, wrapper = LISTS[dtype.base_type]
        return lambda v: Value(**{field: wrapper(val=v)})
    field = SCALAR[dtype]
    return lambda v: Value(**{field: v})


def column_protos(column: pa.ChunkedArray, dtype: FeastType) -> list[Value]:
    """One Value proto per cell; a null cell is the empty Value, as Feast stores it."""
    make = _proto_maker(dtype)
    return [EMPTY if v is None else make(v) for v in column.to_pylist()]


def entity_keys(column: pa.ChunkedArray, join_key: str) -> list[EntityKey]:
    """One key per cell: integer ids as int64 values, any other as strings."""
    field = "int64_val" if pa.types.is_integer(column.type) else "string_val"
    return [
        EntityKey(join_keys=[join_key], entity_values=[Value(**{field: v})])
        for v in column.to_pylist()
    ]


def _key_order(column: pa.ChunkedArray) -> np.ndarray:
    """The rows in the order of their serialized keys (an int64 key is stored little-endian)."""
    if pa.types.is_integer(column.type):
        return np.argsort(column.to_numpy().astype("<u8").byteswap(), kind="stable")
    return np.argsort(np.asarray(column.to_pylist(), dtype=object), kind="stable")


def latest_rows(store: FeatureStore, view: FeatureView, start: datetime, end: datetime) -> pa.Table:
    """The offline store's latest row per entity with start <= event_timestamp < end."""
    source = view.batch_source
    job = store._get_provider().offline_store.pull_latest_from_table_or_query(
        config=store.config,
        data_source=source,
        join_key_columns=view.join_keys,
        feature_name_columns=[f.name for f in view.features],
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column or None,
        start_date=start,
        end_date=end,
    )
    return job.to_arrow()


def write_rows(
    store: FeatureStore,
    view: FeatureView,
    table: pa.Table,
    progress: Progress | None = None,
) -> None:
    """Convert `table` (join key, features, timestamp) to protos and write it online in chunks,
    in the order of the stored keys so that a B-tree store appends instead of seeking."""
    (join_key,) = view.join_keys
    table = table.take(_key_order(table[join_key]))
    write = _sqlite_writer(store, view) or partial(
        store._get_provider().online_write_batch, store.config, view, progress=None
    )
    ts_field = view.batch_source.timestamp_field
    for offset in range(0, table.num_rows, CHUNK):
        chunk = table.slice(offset, CHUNK)
        values = {f.name: column_protos(chunk[f.name], f.dtype) for f in view.features}
        names = list(values)
        keys = entity_keys(chunk[join_key], join_key)
        stamps = chunk[ts_field].to_pylist()
        cells = zip(*values.values(), strict=True)
        write(
            [
                (k, dict(zip(names, c, strict=True)), t, None)
                for k, t, c in zip(keys, stamps, cells, strict=True)
            ]
        )
        report(progress, Step(view.name, offset + chunk.num_rows, table.num_rows, "rows"))


def _sqlite_writer(store: FeatureStore, view: FeatureView) -> Callable[[list], None] | None:
    """A bulk writer for Feast's SQLite table layout (one `executemany` per chunk where Feast runs
    one `execute` per value), or None where the store or its options differ from that layout."""
    config = store.config
    online = config.online_store
    if online.type != "sqlite" or online.vector_enabled:
        return None
    if getattr(online, "enable_openai_compatible_store", False):
        return None
    conn = store._get_provider().online_store._get_conn(config)
    table = _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
    columns = "entity_key, feature_name, value, value_text, event_ts, created_ts"
    sql = (
        f'INSERT INTO "{table}" ({columns}) VALUES (?, ?, ?, ?, ?, ?) '
        "ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
        "value = excluded.value, value_text = excluded.value_text, "
        "event_ts = excluded.event_ts, created_ts = excluded.created_ts"
    )
    version = config.entity_key_serialization_version

    def write(rows: list) -> None:
        params = [
            (key_bin, name, value.SerializeToString(), extract_text_and_num(value, False)[0],
             to_naive_utc(ts), None)
            for key, values, ts, _ in rows
            for key_bin in (serialize_entity_key(key, version),)
            for name, value in values.items()
        ]  # fmt: skip
        with conn:
            conn.executemany(sql, params)

    return write


def materialize_view(
    store: FeatureStore,
    view: FeatureView,
    start: datetime,
    end: datetime,
    progress: Progress | None = None,
) -> int:
    """Latest rows in [start, end) online, interval recorded; returns the entity rows written."""
    if len(view.join_keys) != 1:
        raise TTRError(f"feature view {view.name}: one join key expected, got {view.join_keys}")
    table = latest_rows(store, view, start, end)
    write_rows(store, view, table, progress)
    store.registry.apply_materialization(view, store.project, start, end)
    return table.num_rows


def materialize_with_engine(store: FeatureStore, view: FeatureView, start: datetime,
                            end: datetime, parquet: Path) -> int:  # fmt: skip
    """Feast's own materialization of `view` through the repository's batch engine (the Spark
    profile's `spark.engine`: Spark reads, Spark's workers write online), the interval recorded
    by Feast; returns the entity rows it covered (counted in the view's parquet)."""
    with contextlib.redirect_stdout(io.StringIO()):
        store.materialize(start, end, feature_views=[view.name])  # prints its own banner
    (key,) = view.join_keys
    stamp = view.batch_source.timestamp_field
    frame = pq.read_table(parquet, columns=[key, stamp]).to_pandas()
    return frame.loc[frame[stamp].between(start, end), key].nunique()
