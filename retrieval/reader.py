"""The files a spec names, read into one canonical `Dataset`, vectorized (pyarrow), with a report.

    interactions: user_id, item_id, rating (NaN: none), timestamp (UTC, us), split ("", train,
                  test), sorted by user, then time
    users:        user_id, then one column per user feature
    items:        item_id, title (where the spec names one), then one column per item feature

Ids are integers where every value in every file is one (no leading zeros), else strings, and
stay so. Rows naming an unknown user or item, duplicates and unparsable values are dropped and
counted in the `Report`; what cannot be read at all (a missing file or column) is a `TTRError`
naming the spec key, the file and the line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from retrieval.errors import TTRError
from retrieval.spec import UNITS, Entities, Feature, Source, Spec, Where

FIXED_TIME = pd.Timestamp("2000-01-01", tz="UTC")  # every row's time where the data has none
INTEGER = r"^-?(0|[1-9][0-9]{0,17})$"  # an id read as an integer (no leading zeros, fits int64)
NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
SPLIT_VALUES = ("train", "test")


@dataclass(frozen=True)
class Schema:
    """What a dataset holds, as the feature repository and the towers need to know it."""

    user_id: str  # "int64" or "string"
    item_id: str
    users: dict[str, str]  # user feature -> kind, in spec order
    items: dict[str, str]  # item feature -> kind
    title: bool  # items carry a title
    rating: bool  # interactions carry a strength
    timestamp: bool  # interactions carry times
    split: str  # "given", "temporal" or "random"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> Schema:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


@dataclass
class Report:
    """What reading dropped or left missing: one line per cause, with its first example."""

    lines: list[str] = field(default_factory=list)

    def add(self, what: str, count: int, example: str = "") -> None:
        if count:
            self.lines.append(f"{what}: {count:,}" + (f" (first: {example})" if example else ""))


@dataclass
class Dataset:
    name: str
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    schema: Schema
    report: Report = field(default_factory=Report)
    truth: dict[str, np.ndarray] = field(default_factory=dict)  # planted structure (synthetic)


@dataclass
class Read:
    """Columns of one file, as read, and where each row came from."""

    table: pa.Table
    source: Source
    first_line: int  # the file line of row 0 (parquet: 1, as a row number)
    skipped: np.ndarray  # sorted file lines of malformed rows, left out
    kept: np.ndarray | None = None  # after `take`: each row's row as read

    def at(self, row: int) -> str:
        """`file line N` of a row (parquet: `file row N`)."""
        row = int(self.kept[row]) if self.kept is not None else row
        if self.source.parquet:
            return f"{self.source.path.name} row {row + 1}"
        line = row + self.first_line
        for bad in self.skipped:  # each malformed line before this row pushes it down
            if bad <= line:
                line += 1
        return f"{self.source.path.name} line {line}"

    def example(self, mask: np.ndarray, column: str | None = None) -> str:
        rows = np.flatnonzero(mask)
        if not len(rows):
            return ""
        value = f": {self.table[column][int(rows[0])].as_py()!r}" if column else ""
        return self.at(int(rows[0])) + value

    def take(self, keep: np.ndarray) -> Read:
        """The rows `keep` (a mask) picks, each still knowing its line."""
        rows = np.flatnonzero(keep)
        kept = rows if self.kept is None else self.kept[rows]
        return Read(self.table.filter(pa.array(keep)), self.source, self.first_line,
                    self.skipped, kept)  # fmt: skip


def read_file(source: Source, columns: dict[str, Where], report: Report) -> Read:
    """The `columns` of `source` (name -> the spec key naming it); text files as strings."""
    if not source.path.is_file():
        raise TTRError(f"{source.where}: no file {source.path}")
    if source.parquet:
        return _read_parquet(source, columns)
    bad: list[tuple[int, str]] = []

    def malformed(row: pcsv.InvalidRow) -> str:
        bad.append((row.number, row.text))
        return "skip"

    names = list(source.columns) if source.columns else None
    try:
        table = pcsv.read_csv(
            source.path,
            read_options=pcsv.ReadOptions(use_threads=False, column_names=names,
                                          encoding=source.encoding, block_size=1 << 24),
            parse_options=pcsv.ParseOptions(
                delimiter=source.separator, quote_char='"' if source.separator == "," else False,
                ignore_empty_lines=False, invalid_row_handler=malformed),
            convert_options=pcsv.ConvertOptions(
                include_columns=_present(source, columns), column_types=dict.fromkeys(columns,
                pa.string()), strings_can_be_null=True, null_values=[""]),
        )  # fmt: skip
    except (pa.ArrowInvalid, UnicodeDecodeError, LookupError) as err:
        raise TTRError(f"{source.where}: cannot read {source.path}: {err}") from err
    if bad:
        report.add(f"{source.path.name}: malformed lines skipped (wrong number of fields)",
                   len(bad), f"line {bad[0][0]}: {bad[0][1][:60]!r}")  # fmt: skip
    skipped = np.sort(np.array([n for n, _ in bad if n is not None], dtype=np.int64))
    return Read(table, source, 1 if names else 2, skipped)


def _header(source: Source) -> list[str]:
    """The column names of a text file: its first line, or the spec's `columns`."""
    if source.columns:
        return list(source.columns)
    try:
        with open(source.path, encoding=source.encoding, newline="") as f:
            first = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError, LookupError) as err:
        raise TTRError(f"{source.where}: cannot read {source.path}: {err}") from err
    return [name.strip().strip('"') for name in first.split(source.separator)]


def _present(source: Source, columns: dict[str, Where]) -> list[str]:
    """The wanted columns, each checked to exist in the file's header."""
    header = _header(source)
    _check_columns(source, header, columns)
    return list(columns)


def _check_columns(source: Source, header: list[str], columns: dict[str, Where]) -> None:
    for name, where in columns.items():
        if name not in header:
            shown = ", ".join(header[:12]) + (" ..." if len(header) > 12 else "")
            hint = "" if source.columns or source.parquet else " (line 1 is read as the header)"
            raise TTRError(f"{where}: no column {name!r} in {source.path}{hint}; its columns: "
                           f"{shown}")  # fmt: skip


def _read_parquet(source: Source, columns: dict[str, Where]) -> Read:
    try:
        header = pq.read_schema(source.path).names
    except (pa.ArrowInvalid, OSError) as err:
        raise TTRError(f"{source.where}: cannot read {source.path}: {err}") from err
    _check_columns(source, header, columns)
    table = pq.read_table(source.path, columns=list(columns))
    return Read(table, source, 1, np.zeros(0, dtype=np.int64))


# ---- values by type -------------------------------------------------------------------------


def _strings(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text with surrounding blanks removed; an empty cell is null."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(_integral(column), pa.string())
    column = pc.utf8_trim_whitespace(column)
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def _integral(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Floats that are whole numbers as integers (a parquet id column of 1.0, 2.0)."""
    if pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False)
        if np.all(np.isnan(values) | (values == np.round(values))):
            return pc.cast(column, pa.int64(), safe=False)
    return column


def id_type(columns: Iterable[pa.ChunkedArray]) -> str:
    """ "int64" where every value of every column is an integer, else "string"."""
    for column in columns:
        column = _integral(column)
        if pa.types.is_integer(column.type):
            continue
        valid = pc.drop_null(_strings(column))
        if len(valid) and not pc.all(pc.match_substring_regex(valid, INTEGER)).as_py():
            return "string"
    return "int64"


def ids_as(column: pa.ChunkedArray, kind: str) -> pa.ChunkedArray:
    """Ids as `kind` ("int64" or "string"), null where a cell is empty."""
    column = _integral(column)
    if kind == "int64":
        return column if pa.types.is_integer(column.type) and column.type == pa.int64() else (
            pc.cast(_strings(column) if not pa.types.is_integer(column.type) else column,
                    pa.int64()))  # fmt: skip
    return _strings(column)


def numbers(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN where missing, mask of cells present but not a finite number)."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        return values, ~np.isfinite(values) & ~pc.is_null(column, nan_is_null=True).to_numpy(
            zero_copy_only=False)  # fmt: skip
    text = _strings(column)
    ok = pc.fill_null(pc.match_substring_regex(text, NUMBER), True).to_numpy(zero_copy_only=False)
    cleaned = pc.if_else(pa.array(ok), text, pa.scalar(None, pa.string()))
    values = pc.cast(pc.utf8_trim_whitespace(cleaned), pa.float64()).to_numpy(zero_copy_only=False)
    values = np.where(np.isfinite(values), values, np.nan)
    bad = ~ok | (np.isnan(values) & ~pc.is_null(text).to_numpy(zero_copy_only=False))
    return values, bad


def timestamps(column: pa.ChunkedArray, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """(int64 microseconds since the epoch, UTC; mask of missing or unparsable cells): a datetime
    column (naive means UTC), unix time in `unit`, or ISO-8601 text."""
    if pa.types.is_date(column.type):
        column = pc.cast(column, pa.timestamp("s"))
    if pa.types.is_timestamp(column.type):
        us = pc.cast(pc.cast(column, pa.timestamp("us", tz=column.type.tz)), pa.int64())
        missing = _null(column)
        return np.where(missing, 0, us.to_numpy(zero_copy_only=False)).astype(np.int64), missing
    values, bad = numbers(column)
    bad |= np.isnan(values)
    us = np.where(bad, 0, np.round(np.nan_to_num(values) * UNITS[unit])).astype(np.int64)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or not bad.any():
        return us, bad
    text = _strings(column).to_numpy(zero_copy_only=False)[bad]  # not numbers: ISO-8601 text
    parsed = pd.to_datetime(pd.Series(text, dtype=object), utc=True, format="ISO8601",
                            errors="coerce")  # fmt: skip
    ok = parsed.notna().to_numpy()
    rows = np.flatnonzero(bad)
    us[rows[ok]] = parsed[ok].dt.as_unit("us").astype("int64").to_numpy()
    bad[rows[ok]] = False
    return us, bad


# ---- the three tables -----------------------------------------------------------------------


def read(spec: Spec) -> Dataset:
    """Every file of `spec`, checked, cleaned and joined; see the module docstring."""
    report = Report()
    inter = _interactions_file(spec, report)
    users = _entities_file(spec.users, report)
    items = _entities_file(spec.items, report)
    kinds = {
        "user": id_type([inter.table["user_id"], *([users.table["id"]] if users else [])]),
        "item": id_type([inter.table["item_id"], *([items.table["id"]] if items else [])]),
    }
    frame, rows = _clean_interactions(spec, inter, kinds, report)
    user_frame = _entity_frame(spec.users, users, kinds["user"], "user_id", report,
                               frame["user_id"], spec.base)  # fmt: skip
    item_frame = _entity_frame(spec.items, items, kinds["item"], "item_id", report,
                               frame["item_id"], spec.base)  # fmt: skip
    frame = _known_only(frame, rows, inter, user_frame, item_frame, spec, report)
    if frame.empty:
        raise TTRError(f"{spec.interactions.source.where}: no interactions left to read "
                       f"({'; '.join(report.lines) or 'the file is empty'})")  # fmt: skip
    split = ("given" if spec.interactions.split else spec.split
             or ("temporal" if spec.interactions.timestamp else "random"))  # fmt: skip
    schema = Schema(
        kinds["user"], kinds["item"],
        {f.name: f.kind for f in spec.features("users")},
        {f.name: f.kind for f in spec.features("items")},
        bool(spec.items and spec.items.title), spec.interactions.rating is not None,
        spec.interactions.timestamp is not None, split,
    )  # fmt: skip
    return Dataset(spec.name, by_user_and_time(frame), user_frame, item_frame, schema, report)


def by_user_and_time(inter: pd.DataFrame) -> pd.DataFrame:
    """`inter` sorted by user, then time (stable): one argsort of a combined int64 key (the
    user's rank, then the time, or the time's rank where the two would overflow), where sorting
    by the two columns took 16 s for 10M rows; `inter` itself where already so sorted."""
    users, us = inter["user_id"].to_numpy(), inter["timestamp"].array.asi8
    if _sorted(users, us):
        return inter if isinstance(inter.index, pd.RangeIndex) else inter.reset_index(drop=True)
    user_rank = pd.factorize(users, sort=True)[0].astype(np.int64)
    when = us - us.min()
    span = int(when.max()) + 1
    if int(user_rank.max()) + 1 > (2**63 - 1) // span:
        when, times = pd.factorize(us, sort=True)
        span = len(times)
    order = np.argsort(user_rank * span + when, kind="stable")
    return inter.take(order).reset_index(drop=True)


def _sorted(users: np.ndarray, us: np.ndarray) -> bool:
    if len(users) < 2:
        return True
    same = users[1:] == users[:-1]
    if np.issubdtype(users.dtype, np.integer):
        ordered = bool(np.all(users[1:] >= users[:-1]))
    else:
        ordered = pd.Series(users).is_monotonic_increasing
    return ordered and bool(np.all(~same | (us[1:] >= us[:-1])))


def _interactions_file(spec: Spec, report: Report) -> Read:
    it = spec.interactions
    wanted = {"user_id": it.user_id, "item_id": it.item_id, "timestamp": it.timestamp,
              "rating": it.rating, "split": it.split}  # fmt: skip
    columns = {col: it.where[key] for key, col in wanted.items() if col is not None}
    read_ = read_file(it.source, columns, report)
    renamed = {col: key for key, col in reversed(list(wanted.items())) if col is not None}
    table = pa.table({renamed[c]: read_.table[c] for c in columns})
    for key, col in wanted.items():  # two keys may name one column
        if col is not None and key not in table.column_names:
            table = table.append_column(key, read_.table[col])
    return Read(table, read_.source, read_.first_line, read_.skipped)


def _clean_interactions(spec: Spec, read_: Read, kinds: dict[str, str],
                        report: Report) -> tuple[pd.DataFrame, np.ndarray]:  # fmt: skip
    """Typed interaction rows, rows without ids or with unparsable values dropped; and each
    kept row's row in the file (for messages)."""
    it, table, name = spec.interactions, read_.table, read_.source.path.name
    n = table.num_rows
    users = ids_as(table["user_id"], kinds["user"])
    items = ids_as(table["item_id"], kinds["item"])
    drop = _null(users) | _null(items)
    report.add(f"{name}: rows without a user or item id, dropped", int(drop.sum()),
               read_.example(drop))  # fmt: skip
    us = np.full(n, FIXED_TIME.value // 1000, dtype=np.int64)
    if it.timestamp:
        us, bad = timestamps(table["timestamp"], it.timestamp_unit)
        bad &= ~drop
        report.add(f"{name}: unparsable {it.timestamp!r} (interactions.timestamp), rows dropped",
                   int(bad.sum()), read_.example(bad, "timestamp"))  # fmt: skip
        drop |= bad
    rating = np.full(n, np.nan)
    if it.rating:
        rating, bad = numbers(table["rating"])
        bad = (bad | np.isnan(rating)) & ~drop
        report.add(f"{name}: unparsable {it.rating!r} (interactions.rating), rows dropped",
                   int(bad.sum()), read_.example(bad, "rating"))  # fmt: skip
        drop |= bad
    split = np.zeros(n, dtype=np.int8)  # codes of ("", *SPLIT_VALUES)
    if it.split:
        text = pc.utf8_lower(_strings(table["split"]))
        split = pc.fill_null(pc.index_in(text, pa.array(SPLIT_VALUES)), -1).to_numpy() + 1
        bad = (split == 0) & ~drop
        report.add(f"{name}: {it.split!r} (interactions.split) neither train nor test, rows "
                   "dropped", int(bad.sum()), read_.example(bad, "split"))  # fmt: skip
        drop |= bad
    keep = ~drop
    frame = pd.DataFrame({
        "user_id": _column(users, keep), "item_id": _column(items, keep),
        "rating": rating[keep].astype(np.float32),
        "timestamp": pd.Series(us[keep].astype("datetime64[us]")).dt.tz_localize("UTC"),
        "split": pd.Categorical.from_codes(split[keep].astype(np.int8), ["", *SPLIT_VALUES]),
    })  # fmt: skip
    return frame, np.flatnonzero(keep)


def duplicated(frame: pd.DataFrame) -> np.ndarray:
    """Rows equal in every column to an earlier row: candidates by a 64-bit hash of each row
    (a hash table, where comparing the columns themselves took 6 s for 10M rows), each one then
    checked against the first row of its hash."""
    columns = [_raw(frame[name]) for name in frame.columns]
    h = np.zeros(len(frame), dtype=np.uint64)
    for values in columns:
        h = h * np.uint64(0x100000001B3) ^ pd.util.hash_array(values)
    candidate = pd.Series(h).duplicated().to_numpy()
    rows = np.flatnonzero(candidate)
    originals = np.flatnonzero(~candidate & np.isin(h, h[rows]))  # first rows of those hashes
    firsts = pd.Series(originals, index=h[originals]).reindex(h[rows]).to_numpy()
    same = np.ones(len(rows), dtype=bool)
    for values in columns:
        a, b = values[rows], values[firsts]
        same &= (a == b) | (pd.isna(a) & pd.isna(b))
    candidate[rows[~same]] = False  # a hash collision, not a duplicate
    return candidate


def _raw(column: pd.Series) -> np.ndarray:
    """A column's values as plain numbers where it has them (category codes, datetime ints)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy()
    if pd.api.types.is_datetime64_any_dtype(column):
        return column.array.asi8
    return column.to_numpy()


def _null(column: pa.ChunkedArray) -> np.ndarray:
    return pc.is_null(column).to_numpy(zero_copy_only=False)


def _column(column: pa.ChunkedArray, keep: np.ndarray) -> np.ndarray:
    values = column.filter(pa.array(keep))
    return values.to_numpy(zero_copy_only=False)


def _entities_file(entities: Entities | None, report: Report) -> Read | None:
    if entities is None:
        return None
    columns = {entities.id: entities.where["id"]}
    if entities.title:
        columns[entities.title] = entities.where["title"]
    for f in entities.features:
        if f.source is None:
            columns[f.column] = f.where
    read_ = read_file(entities.source, columns, report)
    table = pa.table({"id": read_.table[entities.id]})
    for name, col in [("title", entities.title)] + [(f.name, f.column) for f in entities.features
                                                    if f.source is None]:  # fmt: skip
        if col is not None:
            table = table.append_column(name, read_.table[col])
    return Read(table, read_.source, read_.first_line, read_.skipped)


def _entity_frame(entities: Entities | None, read_: Read | None, kind: str, key: str,
                  report: Report, referenced: np.ndarray, base: Path) -> pd.DataFrame:  # fmt: skip
    """One row per id with typed features; without a table, the ids the interactions name."""
    if entities is None or read_ is None:
        return pd.DataFrame({key: np.unique(referenced)})
    name = read_.source.path.name
    ids = ids_as(read_.table["id"], kind)
    missing = _null(ids)
    report.add(f"{name}: rows without an id ({entities.id!r}), dropped", int(missing.sum()),
               read_.example(missing))  # fmt: skip
    values = ids.to_numpy(zero_copy_only=False)
    first = ~pd.Series(values).duplicated().to_numpy() & ~missing
    dup = ~first & ~missing
    report.add(f"{name}: rows repeating an id ({entities.id!r}), the first kept", int(dup.sum()),
               read_.example(dup, "id"))  # fmt: skip
    read_ = read_.take(first)
    out = {key: values[first]}
    if entities.title:
        out["title"] = _strings(read_.table["title"]).to_numpy(zero_copy_only=False)
    for f in entities.features:
        if f.source is None:
            out[f.name] = _feature(f, read_.table[f.name], read_, report, base)
        else:
            out[f.name] = _own_file(f, entities.id, kind, out[key], report, base)
    frame = pd.DataFrame(out)
    texts = [f.name for f in entities.features if f.kind in ("categorical", "text", "image")]
    for name in texts + ["title"] * bool(entities.title):  # a missing value is NA, not None
        frame[name] = frame[name].astype("string")
    return frame


def _feature(f: Feature, column: pa.ChunkedArray, read_: Read, report: Report,
             base: Path) -> object:  # fmt: skip
    """One feature's cells as its kind holds them (see `typed`), bad ones counted and missing."""
    values, bad = typed(f, column, base)
    report.add(f"{read_.source.path.name}: {f.where.key} values that are not a "
               f"{'number' if f.kind == 'numeric' else 'readable file'}, left missing",
               int(bad.sum()), read_.example(bad, f.name))  # fmt: skip
    return values


def typed(f: Feature, column: pa.ChunkedArray, base: Path) -> tuple[object, np.ndarray]:
    """(values, mask of bad cells): categorical and text as strings, multi_categorical as lists
    of strings (a list column as it is, else cells split at the separator), numeric as float64
    (NaN missing), image as absolute paths of files that exist."""
    n = len(column)
    if f.kind == "numeric":
        return numbers(column)
    if f.kind == "multi_categorical":
        return _lists(column, f.separator), np.zeros(n, dtype=bool)
    text = _strings(column).to_numpy(zero_copy_only=False)
    if f.kind != "image":
        return text, np.zeros(n, dtype=bool)
    return images(text, base)


def images(paths: np.ndarray, base: Path) -> tuple[np.ndarray, np.ndarray]:
    """(absolute paths, None where missing or not a file; mask of paths naming no file):
    relative paths resolve against `base`."""
    out = np.full(len(paths), None, dtype=object)
    bad = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(paths):
        if isinstance(p, str) and p:
            path = os.path.join(base, os.path.expanduser(p))
            if os.path.isfile(path):
                out[i] = os.path.abspath(path)
            else:
                bad[i] = True
    return out, bad


def _lists(column: pa.ChunkedArray, separator: str) -> np.ndarray:
    """Each cell's distinct non-empty values, in order; None where it has none."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        cells = column.to_pylist()
        parts = [[str(v).strip() for v in c if v is not None] if c else [] for c in cells]
    else:
        cells = _strings(column).to_pylist()
        parts = [c.split(separator) if c else [] for c in cells]
    out = np.empty(len(parts), dtype=object)
    for i, values in enumerate(parts):
        clean = list(dict.fromkeys(v.strip() for v in values if v.strip()))
        out[i] = clean or None
    return out


def _own_file(f: Feature, id_name: str, kind: str, ids: np.ndarray, report: Report,
              base: Path) -> object:  # fmt: skip
    """A feature kept in a file of its own, as rows of (id, value): the id in the column named
    like the table's id (else the first other column), the value in the feature's column;
    gathered per id (a multi_categorical's values into one list; otherwise the first kept)."""
    assert f.source is not None
    source = f.source
    header = f.source.columns or (None if source.parquet else _header(source))
    names = header or pq.read_schema(source.path).names
    if len(names) < 2:
        raise TTRError(f"{source.where}: {source.path} needs two columns, (id, {f.column})")
    id_col = id_name if id_name in names else next(c for c in names if c != f.column)
    read_ = read_file(source, {id_col: source.where, f.column: f.where}, report)
    key = ids_as(read_.table[id_col], kind).to_numpy(zero_copy_only=False)
    frame = pd.DataFrame(
        {
            "id": key,
            "value": _strings(read_.table[f.column]).to_numpy(zero_copy_only=False)
            if f.kind != "numeric"
            else numbers(read_.table[f.column])[0],
        }
    )
    unknown = ~frame["id"].isin(ids).to_numpy()
    report.add(f"{source.path.name}: rows naming an id not in the table, dropped",
               int(unknown.sum()), read_.example(unknown, id_col))  # fmt: skip
    frame = frame[~unknown].dropna()
    if f.kind == "multi_categorical":
        grouped = frame.drop_duplicates().groupby("id", sort=False)["value"].agg(list)
    else:
        dup = frame["id"].duplicated()
        report.add(f"{source.path.name}: more than one {f.column!r} per id, the first kept",
                   int(dup.sum()))  # fmt: skip
        grouped = frame[~dup].set_index("id")["value"]
    values = pd.Series(ids).map(grouped)
    if f.kind == "image":
        return images(values.to_numpy(dtype=object), base)[0]
    if f.kind == "multi_categorical":
        return np.array([v if isinstance(v, list) else None for v in values], dtype=object)
    return values.to_numpy()


def _known_only(frame: pd.DataFrame, rows: np.ndarray, read_: Read, users: pd.DataFrame,
                items: pd.DataFrame, spec: Spec, report: Report) -> pd.DataFrame:  # fmt: skip
    """Interactions whose user and item the tables hold, once each (`rows`: each one's row in
    the file)."""
    name = read_.source.path.name
    checks = [("user", spec.users, users["user_id"]), ("item", spec.items, items["item_id"])]
    keep = np.ones(len(frame), dtype=bool)
    for side, table, known in checks:
        if table is None:
            continue
        unknown = ~frame[f"{side}_id"].isin(known).to_numpy()
        example = (
            read_.at(int(rows[np.argmax(unknown)]))
            + (f": {frame[f'{side}_id'].iloc[int(np.argmax(unknown))]!r}")
            if unknown.any()
            else ""
        )
        report.add(f"{name}: rows naming a{'n' * (side == 'item')} {side} not in "
                   f"{table.source.path.name}, dropped", int(unknown.sum()), example)  # fmt: skip
        keep &= ~unknown
    dup = duplicated(frame) & keep
    example = read_.at(int(rows[np.argmax(dup)])) if dup.any() else ""
    report.add(f"{name}: duplicate rows, dropped", int(dup.sum()), example)
    keep &= ~dup
    out = frame[keep].reset_index(drop=True)
    return out
