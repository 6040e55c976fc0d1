"""Feature declarations for two-tower retrieval: entities, sources, views, services.

Sources are parquet files under `data/` beside this file, written by `ttr data`. Time-varying
features are stored as a time series (one row per entity per active day, stamped at the end of
that day), so the point-in-time join decides what a training example may see.
"""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Bool, Float32, Int64, String

DATA = Path(__file__).resolve().parent / "data" / "offline"

# The two entities: every feature hangs off one of them.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)


def _source(name: str) -> FileSource:
    return FileSource(
        name=name, path=str(DATA / f"{name}.parquet"), timestamp_field="event_timestamp"
    )


# Demographics, static: stamped once, before the first interaction (nulls where a dataset has none).
user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="age", dtype=Int64),
        Field(name="gender", dtype=String),
        Field(name="occupation", dtype=String),
        Field(name="zip_prefix", dtype=String),
    ],
    source=_source("user_profile"),
    tags={"kind": "static"},  # `ttr materialize --incremental` reloads static views whole
)

# Cumulative activity, one row per user per active day, stamped at the end of that day.
user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="interaction_count", dtype=Int64),
        Field(name="mean_rating", dtype=Float32),  # null where the dataset is implicit
        Field(name="genre_shares", dtype=Array(Float32)),  # order: the dataset's genre list
        Field(name="recent_items", dtype=Array(Int64)),  # most recent first
    ],
    source=_source("user_activity"),
)

# Every item the user has interacted with so far (capped, most recent first), per active day:
# what serving drops from the candidates. Its own view, so training sets never carry it.
user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name="seen_items", dtype=Array(Int64))],
    source=_source("user_history"),
)

# Catalogue content, static.
item_content = FeatureView(
    name="item_content",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="title", dtype=String),
        Field(name="genres", dtype=Array(String)),
        Field(name="year", dtype=Int64),
        Field(name="plot", dtype=String),
        Field(name="has_poster", dtype=Bool),
    ],
    source=_source("item_content"),
    tags={"kind": "static"},
)

# Pretrained content vectors (`ttr content`): text over title, genres and plot; image over the
# poster. A null vector with its flag false where the item has no such content or none is computed.
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

# What the user tower reads, in training (point in time) and in serving (online).
user_tower = FeatureService(name="user_tower", features=[user_profile, user_activity])

# What the item tower reads.
item_tower = FeatureService(name="item_tower", features=[item_content, item_vectors])

# A training set for the two towers: user and item features joined at each interaction's time.
two_tower_training = FeatureService(
    name="two_tower_training",
    features=[user_profile, user_activity, item_content, item_popularity],
)

# The re-ranker's item side: content and popularity (its user side is the user_tower service).
ranker = FeatureService(name="ranker", features=[item_content, item_popularity])

# What one recommendation request reads online: the user tower's features and the user's history.
recommend = FeatureService(name="recommend", features=[user_profile, user_activity, user_history])
