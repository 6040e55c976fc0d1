"""The one module that reads features from Feast: point-in-time training frames and online rows.

Everything else names a feature service (`user_tower`, `item_tower`, `two_tower_training`,
`ranker`, `recommend`) and gets plain frames or dicts back. Labels ride along in the entity frame.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd

ROW = "__row__"  # a column added to the entity frame to prove every row came back exactly once


class MissingRowsError(RuntimeError):
    """A point-in-time join returned other than exactly one row per entity row."""


@functools.lru_cache(maxsize=64)
def feature_service(store: Any, name: str) -> Any:
    """The named FeatureService, resolved once per store. Feast's `get_feature_service` re-reads
    and parses the registry file on every call by default (allow_cache=False): 4-5 ms, and the
    tail of a request that resolves it per call."""
    return store.get_feature_service(name, allow_cache=True)


def training_frame(store: Any, service: str, entities: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time join of `service` onto `entities` (join keys, `event_timestamp`, labels),
    in the entity frame's order, with exactly one output row per entity row."""
    frame = entities.reset_index(drop=True).assign(**{ROW: np.arange(len(entities))})
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).dt.as_unit("us")
    job = store.get_historical_features(
        entity_df=frame, features=store.get_feature_service(service)
    )
    out = job.to_df()
    rows = np.sort(out[ROW].to_numpy())
    if len(out) != len(frame) or not np.array_equal(rows, np.arange(len(frame))):
        raise MissingRowsError(
            f"{service}: the point-in-time join returned {len(out)} rows for {len(frame)} entity "
            f"rows ({len(frame) - len(np.unique(rows))} missing)"
        )
    out = out.sort_values(ROW).drop(columns=ROW).reset_index(drop=True)
    # the PostgreSQL store returns the entity frame's stamps without their zone (they are UTC)
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True).dt.as_unit("us")
    return out


def online_rows(
    store: Any, features: str | list[str], key: str, ids: list[int | str]
) -> list[dict[str, Any]]:
    """Online features for each id in `ids` (integers or strings, as the data's), one dict per
    id, in order. `features` is a feature service's name or a list of `view:feature` refs."""
    refs = feature_service(store, features) if isinstance(features, str) else features
    rows = [{key: i.item() if isinstance(i, np.generic) else i} for i in ids]
    response = store.get_online_features(features=refs, entity_rows=rows)
    columns = response.to_dict()
    return [{name: values[i] for name, values in columns.items()} for i in range(len(ids))]
