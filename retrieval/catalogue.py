"""What training, indexing and serving share about the offline store's dataset: its description
(dataset.json), the catalogue of items and the users in a fixed order, and ids as the data has
them (integers or strings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from retrieval.errors import TTRError
from towers.features import training_frame
from towers.inputs import Ids

if TYPE_CHECKING:
    from feast import FeatureStore

META = "dataset.json"
INT64 = (-(2**63), 2**63 - 1)


def read_meta(offline_dir: Path) -> dict:
    """The dataset description `ttr data` wrote beside the tables."""
    path = offline_dir / META
    if not path.is_file():
        raise TTRError(f"no offline data in {offline_dir}; run `ttr data` first")
    return json.loads(path.read_text())


def stored_ids(offline_dir: Path, entity: str) -> Ids:
    """Every item (the catalogue) or every user of the offline store, sorted."""
    table = "item_content" if entity == "item" else "user_profile"
    key = f"{entity}_id"
    ids = pq.read_table(offline_dir / f"{table}.parquet", columns=[key])[key]
    return Ids(np.sort(ids.to_numpy(zero_copy_only=False)))


def catalogue_frame(
    feast_store: FeatureStore, items: Ids, at: pd.Timestamp, service: str = "item_tower"
) -> pd.DataFrame:
    """The features in `service` of every item of `items` as of `at`, one row per item, in order."""
    entities = pd.DataFrame({"item_id": items.values, "event_timestamp": at})
    return training_frame(feast_store, service, entities)


def parse_id(text: str | int, kind: str, entity: str = "id") -> int | str:
    """An id from the command line or a URL, as the dataset's ids are (`kind`: "int64" or
    "string"); a ValueError naming the problem if it cannot be one."""
    if kind == "string":
        value = str(text)
        if not value or value != value.strip():
            raise ValueError(f"{entity} {text!r}: an id is a non-empty string without blanks")
        return value
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ValueError(
            f"{entity} {text!r} is not an integer, as this dataset's ids are"
        ) from None
    if not INT64[0] <= value <= INT64[1]:
        raise ValueError(f"{entity} {text!r} is outside the range of this dataset's ids (int64)")
    return value
