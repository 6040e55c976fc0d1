"""Feature declarations for two-tower retrieval: entities, sources, views, services.

Which features exist follows the dataset the repository was built with: `ttr data` writes its
schema into `data/offline/dataset.json` beside the parquet sources, and the loops below declare
one field per feature of the spec. Time-varying features are stored as a time series (one row per
entity per active day, stamped at the end of that day), so the point-in-time join decides what a
training example may see.
"""

import json
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Bool, Float32, Float64, Int64, String

DATA = Path(__file__).resolve().parent / "data" / "offline"
if not (DATA / "dataset.json").is_file():
    raise FileNotFoundError(f"no dataset in {DATA}: run `ttr data` before `ttr apply`")
DATASET = json.loads((DATA / "dataset.json").read_text())
SCHEMA = DATASET["schema"]
KINDS = {"categorical": String, "multi_categorical": Array(String), "numeric": Float64,
         "text": String, "image": String}  # fmt: skip
ID = {"int64": (ValueType.INT64, Int64), "string": (ValueType.STRING, String)}
USER_KEY, USER_ID = ID[SCHEMA["user_id"]]
ITEM_KEY, ITEM_ID = ID[SCHEMA["item_id"]]

# The two entities: every feature hangs off one of them. Ids are integers or strings, as the data.
user = Entity(name="user", join_keys=["user_id"], value_type=USER_KEY)
item = Entity(name="item", join_keys=["item_id"], value_type=ITEM_KEY)


def _source(name: str) -> FileSource:
    return FileSource(
        name=name, path=str(DATA / f"{name}.parquet"), timestamp_field="event_timestamp"
    )


def _fields(kinds: dict) -> list[Field]:
    return [Field(name=name, dtype=KINDS[kind]) for name, kind in kinds.items()]


# The user's own features (the spec's users table), static: stamped before the first interaction.
# None where the dataset has no user features.
user_profile = (
    FeatureView(
        name="user_profile",
        entities=[user],
        ttl=timedelta(0),
        schema=_fields(SCHEMA["users"]),
        source=_source("user_profile"),
        tags={"kind": "static"},  # `ttr materialize --incremental` reloads static views whole
    )
    if SCHEMA["users"]
    else None
)

# Cumulative activity, one row per user per active day, stamped at the end of that day.
user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="interaction_count", dtype=Int64),
        Field(name="mean_rating", dtype=Float32),  # null where the dataset has no strength
        Field(name="recent_items", dtype=Array(ITEM_ID)),  # most recent first
        # the share of the user's interactions on each value of each categorical item feature
        *[Field(name=f"{name}_shares", dtype=Array(Float32)) for name in DATASET["shares"]],
    ],
    source=_source("user_activity"),
)

# Every item the user has interacted with (capped, most recent first), one row per user: what
# serving drops from the candidates. Its own view, so training sets never carry it.
user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name="seen_items", dtype=Array(ITEM_ID))],
    source=_source("user_history"),
)

# The item's own features (the spec's items table) and its title, static; None where it has none.
item_content = (
    FeatureView(
        name="item_content",
        entities=[item],
        ttl=timedelta(0),
        schema=[Field(name="title", dtype=String)] * SCHEMA["title"] + _fields(SCHEMA["items"]),
        source=_source("item_content"),
        tags={"kind": "static"},
    )
    if SCHEMA["title"] or SCHEMA["items"]
    else None
)

# Pretrained content vectors (`ttr content`): text over the title, categorical values and text
# features; image over the image file. A null vector with its flag false where there is none.
item_vectors = FeatureView(
    name="item_vectors",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="text_vector", dtype=Array(Float32)),  # all-MiniLM-L6-v2, 384 wide
        Field(name="has_text", dtype=Bool),
        Field(name="image_vector", dtype=Array(Float32)),  # EfficientNet-Lite0 pooled, 1280 wide
        Field(name="has_image", dtype=Bool),
    ],
    source=_source("item_vectors"),
    tags={"kind": "static"},
)

# Popularity over time: a row per item per active day, and one more when a day leaves the window.
item_popularity = FeatureView(
    name="item_popularity",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="item_count", dtype=Int64),  # all interactions so far
        Field(name="item_count_30d", dtype=Int64),  # interactions in the trailing 30 days
        Field(name="item_mean_rating", dtype=Float32),
    ],
    source=_source("item_popularity"),
)

# The item tower's output for the indexed model version, written by `ttr index` (stamped at the
# data's end so that materialization covers it).
item_embedding = FeatureView(
    name="item_embedding",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="embedding", dtype=Array(Float32)),
        Field(name="model_version", dtype=String),
    ],
    source=_source("item_embedding"),
    tags={"kind": "static"},
)

USER_VIEWS = [v for v in (user_profile, user_activity) if v is not None]
ITEM_VIEWS = [v for v in (item_content,) if v is not None]

# What the user tower reads, in training (point in time) and in serving (online).
user_tower = FeatureService(name="user_tower", features=USER_VIEWS)

# What the item tower reads.
item_tower = FeatureService(name="item_tower", features=[*ITEM_VIEWS, item_vectors])

# A training set for the two towers: user and item features joined at each interaction's time.
two_tower_training = FeatureService(
    name="two_tower_training", features=[*USER_VIEWS, *ITEM_VIEWS, item_popularity]
)

# The re-ranker's item side: content and popularity (its user side is the user_tower service).
ranker = FeatureService(name="ranker", features=[*ITEM_VIEWS, item_popularity])

# What one recommendation request reads online: the user tower's features and the user's history.
recommend = FeatureService(name="recommend", features=[*USER_VIEWS, user_history])
