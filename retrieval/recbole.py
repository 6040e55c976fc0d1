"""RecBole atomic files read as a dataset, no spec written: many public datasets ship this way.

    NAME.inter   user_id:token  item_id:token  rating:float  timestamp:float  ...
    NAME.user    user_id:token  age:token  gender:token  ...          (optional)
    NAME.item    item_id:token  movie_title:token_seq  genre:token_seq  ...   (optional)

Tab-separated, a header of `field:type` (token, token_seq, float, float_seq). The header becomes
a `Spec`: RecBole's default field names pick the ids, the rating and the timestamp (else the
first two token fields are the user and the item); a token is categorical, a token_seq
multi-categorical (values split at spaces) or, named like a title, the items' title; a float
numeric; float_seq has no kind here and is left out.
"""

from __future__ import annotations

import re
from pathlib import Path

from retrieval.errors import TTRError
from retrieval.spec import NAME, RESERVED, Entities, Feature, Interactions, Source, Spec, Where

KINDS = {"token": "categorical", "token_seq": "multi_categorical", "float": "numeric"}
TITLES = ("title", "movie_title", "name", "item_name")


def find(path: Path) -> Path | None:
    """The `.inter` file of a RecBole dataset at `path` (the file, or a folder holding one)."""
    if path.is_file() and path.suffix == ".inter":
        return path
    if path.is_dir():
        found = sorted(path.glob("*.inter"))
        if len(found) > 1:
            raise TTRError(f"{path}: {len(found)} .inter files; name one of them")
        return found[0] if found else None
    return None


def header(path: Path) -> list[tuple[str, str]]:
    """(field, type) of each column of an atomic file."""
    with open(path, encoding="utf-8") as f:
        first = f.readline().rstrip("\r\n")
    fields = []
    for n, column in enumerate(first.split("\t"), 1):
        name, _, kind = column.partition(":")
        if not name or kind not in (*KINDS, "float_seq"):
            raise TTRError(f"{path} line 1, column {n}: {column!r} is not a RecBole field:type "
                           "(types: token, token_seq, float, float_seq)")  # fmt: skip
        fields.append((name, kind))
    return fields


def spec(inter: Path) -> Spec:
    """The spec the atomic files beside `inter` describe."""
    name, folder = inter.stem, inter.parent
    fields = header(inter)
    kinds = dict(fields)
    tokens = [f for f, k in fields if k == "token"] + [None, None]
    user = "user_id" if kinds.get("user_id") == "token" else tokens[0]
    item = "item_id" if kinds.get("item_id") == "token" else tokens[1]
    if user is None or item is None:
        raise TTRError(f"{inter} line 1: no user and item token fields (user_id:token, "
                       "item_id:token)")  # fmt: skip
    where = Where("header", str(inter), 1)
    columns = {"user_id": user, "item_id": item, "rating": None, "timestamp": None, "split": None}
    for key in ("rating", "timestamp"):
        if kinds.get(key) == "float":
            columns[key] = key
    interactions = Interactions(
        _source(inter, where), **{k: _header_name(v, kinds) for k, v in columns.items()},
        timestamp_unit="s", where=dict.fromkeys(columns, where),
    )  # fmt: skip
    users = _entities(folder / f"{name}.user", user, "users")
    items = _entities(folder / f"{name}.item", item, "items")
    return Spec(name, interactions, users, items, None, str(inter), folder)


def _header_name(field: str | None, kinds: dict[str, str]) -> str | None:
    return None if field is None else f"{field}:{kinds[field]}"


def _source(path: Path, where: Where) -> Source:
    return Source(path, None, "\t", "utf-8", where)


def _entities(path: Path, id_field: str, side: str) -> Entities | None:
    if not path.is_file():
        return None
    fields = header(path)
    kinds = dict(fields)
    if kinds.get(id_field) != "token":
        raise TTRError(f"{path} line 1: no {id_field}:token field to join on")
    where = Where("header", str(path), 1)
    title = next((f for f in TITLES if f in kinds and side == "items"), None)
    features = []
    for field, kind in fields:
        if field in (id_field, title) or kind not in KINDS:
            continue
        name = _feature_name(field, side)
        features.append(Feature(name, KINDS[kind], f"{field}:{kind}", " ", None, where))
    title_column = f"{title}:{kinds[title]}" if title else None
    return Entities(_source(path, where), f"{id_field}:token", title_column, tuple(features),
                    dict.fromkeys(("", "id", "title"), where))  # fmt: skip


def _feature_name(field: str, side: str) -> str:
    """A feature name for a field: letters, digits and '_', clear of the derived features'."""
    name = re.sub(r"\W", "_", field)
    name = name if NAME.fullmatch(name) else f"f_{name}"
    return f"{name}_" if name in RESERVED[side] or name.endswith("_shares") else name
