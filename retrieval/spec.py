"""A dataset spec: the user's own tables described once, in YAML (the README documents every key).

    name: shop
    interactions: {path: events.parquet, user_id: customer, item_id: sku, timestamp: ts, ...}
    users: {path: customers.csv, id: customer, features: {age: numeric, country: categorical}}
    items: {path: products.csv, id: sku, title: name, features: {tags: {kind: ...}, ...}}

Parsing checks the spec alone (keys, kinds, names); `retrieval.reader` then reads the files it
names. Every error names the spec key and its line in the spec file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from retrieval.errors import TTRError

KINDS = ("categorical", "multi_categorical", "numeric", "text", "image")
SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}  # by file suffix; `separator:` otherwise
UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}  # timestamp_unit -> microseconds
SPLITS = ("temporal", "random")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # feature names become Feast and parquet columns
RESERVED = {  # names the derived feature views already use, per side
    "users": {"user_id", "interaction_count", "mean_rating", "recent_items", "seen_items"},
    "items": {"item_id", "title", "item_count", "item_count_30d", "item_mean_rating",
              "text_vector", "has_text", "image_vector", "has_image", "text_key", "image_key",
              "embedding", "model_version"},
}  # fmt: skip
TOP_KEYS = {"name", "split", "interactions", "users", "items"}
FILE_KEYS = {"path", "columns", "separator", "encoding"}
INTERACTION_KEYS = FILE_KEYS | {"user_id", "item_id", "timestamp", "timestamp_unit", "rating",
                                "split"}  # fmt: skip
ENTITY_KEYS = FILE_KEYS | {"id", "title", "features"}
FEATURE_KEYS = FILE_KEYS | {"kind", "separator", "column"}


@dataclass(frozen=True)
class Where:
    """A spec key and the file and line where it is written, for messages."""

    key: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file} line {self.line}: {self.key}"


@dataclass(frozen=True)
class Source:
    """A table's file and how to read it."""

    path: Path
    columns: tuple[str, ...] | None  # names of a headerless file's columns, in order
    separator: str | None  # of a delimited text file; None: parquet
    encoding: str
    where: Where  # the `path` key

    @property
    def parquet(self) -> bool:
        return self.separator is None


@dataclass(frozen=True)
class Feature:
    name: str  # its name in the feature views
    kind: str
    column: str  # the column holding it
    separator: str  # between a multi_categorical cell's values
    source: Source | None  # a file of its own: rows of (id, value); None: the table's file
    where: Where


@dataclass(frozen=True)
class Entities:
    """The users or items table."""

    source: Source
    id: str
    title: str | None  # items: the column of the name shown in answers
    features: tuple[Feature, ...]
    where: dict[str, Where]  # of the table ("") and of its keys ("id", "title")


@dataclass(frozen=True)
class Interactions:
    source: Source
    user_id: str
    item_id: str
    timestamp: str | None
    timestamp_unit: str  # unit of numeric timestamps
    rating: str | None
    split: str | None
    where: dict[str, Where]  # per key


@dataclass(frozen=True)
class Spec:
    name: str
    interactions: Interactions
    users: Entities | None
    items: Entities | None
    split: str | None  # "temporal" or "random"; None: temporal where rows carry times
    file: str  # the spec file (or what stood for it), for messages
    base: Path  # where relative paths (files, images) resolve

    def features(self, side: str) -> tuple[Feature, ...]:
        table = self.users if side == "users" else self.items
        return table.features if table else ()


class _Lines:
    """Plain values of a YAML document, with the line of every key path ("items.features.x")."""

    def __init__(self, text: str, file: str) -> None:
        self.file, self.lines = file, {}
        try:
            node = yaml.compose(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            context = getattr(err, "context", None)
            why = f"{problem} ({context})" if context else problem
            raise TTRError(f"{file}{where}: not valid YAML: {why}") from err
        self.value = self._plain(node, "") if node is not None else None

    def _plain(self, node: yaml.Node, path: str) -> object:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = str(yaml.safe_load(yaml.serialize(key_node)))
                sub = f"{path}.{key}" if path else key
                self.lines[sub] = key_node.start_mark.line + 1
                out[key] = self._plain(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._plain(v, f"{path}[{i}]") for i, v in enumerate(node.value)]
        return yaml.safe_load(yaml.serialize(node))

    def where(self, key: str) -> Where:
        probe = key
        while probe and probe not in self.lines:
            probe = probe.rpartition(".")[0]
        return Where(key, self.file, self.lines.get(probe, 1))


def load(path: Path, base: Path | None = None) -> Spec:
    """The spec in YAML file `path`; relative file paths resolve against `base` (default: the
    spec file's folder)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise TTRError(f"cannot read the spec {path}: {err.strerror or err}") from err
    return parse(text, str(path), base or path.resolve().parent)


def parse(text: str, file: str, base: Path) -> Spec:
    doc = _Lines(text, file)
    if not isinstance(doc.value, dict):
        raise TTRError(f"{file}: a spec is a mapping of keys (name, interactions, items, ...)")
    return _Parser(doc, base).spec(doc.value)


class _Parser:
    def __init__(self, doc: _Lines, base: Path) -> None:
        self.doc, self.base = doc, base

    def fail(self, key: str, problem: str) -> TTRError:
        return TTRError(f"{self.doc.where(key)}: {problem}")

    def spec(self, raw: dict) -> Spec:
        self.known(raw, "", TOP_KEYS)
        name = self.text(raw, "name", required=True)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise self.fail("name", f"{name!r}: use letters, digits, '-', '_' and '.'")
        split = self.text(raw, "split")
        if split is not None and split not in SPLITS:
            raise self.fail("split", f"{split!r}: choose temporal or random")
        users = self.entities(raw, "users") if raw.get("users") is not None else None
        items = self.entities(raw, "items") if raw.get("items") is not None else None
        interactions = self.interactions(self.mapping(raw, "interactions", required=True))
        return Spec(name, interactions, users, items, split, self.doc.file, self.base)

    def interactions(self, raw: dict) -> Interactions:
        self.known(raw, "interactions", INTERACTION_KEYS)
        keys = ("user_id", "item_id", "timestamp", "rating", "split")
        columns = {k: self.text(raw, f"interactions.{k}", k in ("user_id", "item_id"))
                   for k in keys}  # fmt: skip
        unit = self.text(raw, "interactions.timestamp_unit") or "s"
        if unit not in UNITS:
            raise self.fail("interactions.timestamp_unit", f"{unit!r}: choose {', '.join(UNITS)}")
        return Interactions(
            self.source(raw, "interactions"), **columns, timestamp_unit=unit,
            where={k: self.doc.where(f"interactions.{k}") for k in keys},
        )  # fmt: skip

    def entities(self, raw: dict, side: str) -> Entities:
        table = self.mapping(raw, side, required=True)
        self.known(table, side, ENTITY_KEYS)
        title = self.text(table, f"{side}.title")
        if title is not None and side == "users":
            raise self.fail(f"{side}.title", "a title names items, not users")
        features = self.mapping(table, f"{side}.features") or {}
        parsed = tuple(self.feature(side, name, value) for name, value in features.items())
        images = [f for f in parsed if f.kind == "image"]
        if images and side == "users":
            raise self.fail(f"{side}.features.{images[0].name}", "image features describe items")
        if len(images) > 1:
            raise self.fail(f"{side}.features.{images[1].name}", "at most one image feature")
        where = {k: self.doc.where(f"{side}.{k}" if k else side) for k in ("", "id", "title")}
        return Entities(self.source(table, side), self.text(table, f"{side}.id", True), title,
                        parsed, where)  # fmt: skip

    def feature(self, side: str, name: str, raw: object) -> Feature:
        key = f"{side}.features.{name}"
        if not NAME.fullmatch(name):
            raise self.fail(key, f"{name!r} is not a feature name: letters, digits and '_' "
                                 "(name the file's column with `column:`)")  # fmt: skip
        if name in RESERVED[side] or name.endswith("_shares"):
            raise self.fail(key, f"{name!r} is a name the derived features use; rename it "
                                 "(name the file's column with `column:`)")  # fmt: skip
        spec = {"kind": raw} if isinstance(raw, str) else raw
        if not isinstance(spec, dict):
            raise self.fail(key, "a kind, or a mapping with `kind:`")
        self.known(spec, key, FEATURE_KEYS)
        kind = self.text(spec, f"{key}.kind", required=True)
        if kind not in KINDS:
            raise self.fail(f"{key}.kind" if isinstance(raw, dict) else key,
                            f"unknown kind {kind!r}; choose {', '.join(KINDS)}")  # fmt: skip
        own = self.source(spec, key) if "path" in spec else None
        separator = self.text(spec, f"{key}.separator") if own is None else None
        if kind != "multi_categorical" and separator is not None:
            raise self.fail(f"{key}.separator", "a separator splits multi_categorical cells only")
        column = self.text(spec, f"{key}.column") or name
        return Feature(name, kind, column, separator or "|", own, self.doc.where(key))

    def source(self, raw: dict, key: str) -> Source:
        path_text = self.text(raw, f"{key}.path", required=True)
        path = (self.base / Path(path_text).expanduser()).resolve()
        columns = raw.get("columns")
        if columns is not None and (
            not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns)
        ):
            raise self.fail(f"{key}.columns", "a list of column names, in the file's order")
        separator = self.text(raw, f"{key}.separator")
        parquet = path.suffix.lower() == ".parquet"
        if separator is None and not parquet:
            separator = SEPARATORS.get(path.suffix.lower())
            if separator is None:
                raise self.fail(
                    f"{key}.path",
                    f"{path.name}: not .csv, .tsv or .parquet; "
                    "say how its fields are separated with `separator:`",
                )
        if separator is not None and (len(separator) != 1 or separator in '\n\r"'):
            raise self.fail(f"{key}.separator", f"{separator!r}: one character, not a quote")
        if parquet and columns is not None:
            raise self.fail(f"{key}.columns", "a parquet file names its own columns")
        encoding = self.text(raw, f"{key}.encoding") or "utf-8"
        return Source(path, tuple(columns) if columns else None, None if parquet else separator,
                      encoding, self.doc.where(f"{key}.path"))  # fmt: skip

    def mapping(self, raw: dict, key: str, required: bool = False) -> dict | None:
        value = raw.get(key.rpartition(".")[2])
        if value is None and required:
            raise self.fail(key.rpartition(".")[0] or key, f"missing key {key!r}")
        if value is not None and not isinstance(value, dict):
            raise self.fail(key, "expected a mapping of keys")
        return value

    def text(self, raw: dict, key: str, required: bool = False) -> str | None:
        value = raw.get(key.rpartition(".")[2])
        if value is None:
            if required:
                raise self.fail(key.rpartition(".")[0] or key, f"missing key {key!r}")
            return None
        if isinstance(value, (dict, list)) or isinstance(value, bool):
            raise self.fail(key, f"expected a name, got {value!r}")
        return str(value)

    def known(self, raw: dict, key: str, allowed: set[str]) -> None:
        for name in raw:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                raise self.fail(where, f"unknown key {name!r}; expected one of "
                                       f"{', '.join(sorted(allowed))}")  # fmt: skip
