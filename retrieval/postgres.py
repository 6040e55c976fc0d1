"""The offline tables in PostgreSQL, for the PostgreSQL offline profile: each parquet table the
project writes (`ttr data`, `ttr content`, `ttr index`) copied into a table of the same name,
prefixed by the Feast project, and swapped in whole in one transaction, so a reader sees the old
table or the new one, never half of either."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.errors import TTRError

BATCH = 50_000  # rows converted to Python at a time
KEYS = ("user_id", "item_id")  # indexed with the timestamp: the point-in-time join's lookups


def table_name(project: str, name: str) -> str:
    return f"{project}__{name}"


def pg_type(dtype: pa.DataType) -> str:
    """The PostgreSQL column type of an arrow column type; an error naming it otherwise."""
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return pg_type(dtype.value_type) + "[]"
    for test, name in ((pa.types.is_boolean, "bool"), (pa.types.is_integer, "int8"),
                       (pa.types.is_float32, "float4"), (pa.types.is_floating, "float8"),
                       (pa.types.is_string, "text"), (pa.types.is_large_string, "text"),
                       (pa.types.is_timestamp, "timestamptz")):  # fmt: skip
        if test(dtype):
            return name
    raise TTRError(f"no PostgreSQL column type for arrow type {dtype}")


def load(settings: dict, project: str, files: list[Path]) -> dict[str, int]:
    """Each parquet file into table `<project>__<stem>`, replaced whole; returns rows per table."""
    import psycopg

    from retrieval.store import postgres_url

    done = {}
    try:
        with psycopg.connect(postgres_url(settings), autocommit=False) as conn:
            for path in files:
                done[path.stem] = _replace(conn, table_name(project, path.stem), path)
    except psycopg.Error as err:
        raise failure(settings, err) from err
    return done


def failure(settings: dict, err: Exception) -> TTRError:
    """A PostgreSQL error as one line naming the server."""
    where = f"{settings['user']}@{settings['host']}:{settings['port']}/{settings['database']}"
    return TTRError(f"PostgreSQL offline store {where}: {' '.join(str(err).split())}")


def _replace(conn: object, table: str, path: Path) -> int:
    """`path`'s rows in a new table, indexed, renamed over `table` in the same transaction."""
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    types = [pg_type(f.type) for f in schema]
    staged = f"{table}__new"
    columns = ", ".join(f'"{f.name}" {t}' for f, t in zip(schema, types, strict=True))
    rows = 0
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS "{staged}"')
        cur.execute(f'CREATE TABLE "{staged}" ({columns})')
        names = ", ".join(f'"{name}"' for name in schema.names)
        with cur.copy(f'COPY "{staged}" ({names}) FROM STDIN') as copy:
            copy.set_types(types)
            for row in _rows(parquet):
                copy.write_row(row)
                rows += 1
        keys = [k for k in KEYS if k in schema.names]
        if keys and "event_timestamp" in schema.names:
            cur.execute(f'CREATE INDEX ON "{staged}" ("{keys[0]}", event_timestamp)')
        cur.execute(f'DROP TABLE IF EXISTS "{table}"')
        cur.execute(f'ALTER TABLE "{staged}" RENAME TO "{table}"')
    return rows


def _rows(parquet: pq.ParquetFile) -> Iterator[tuple]:
    for batch in parquet.iter_batches(BATCH):
        yield from zip(*(column.to_pylist() for column in batch.columns), strict=True)
