"""Point-in-time joins against a brute-force oracle, on hypothesis-generated timelines.

A feature row may be joined to a label at time t only if it is the latest row of that user with
t - ttl <= stamp <= t (Feast's definition, both ends inclusive). Timelines are drawn on a coarse
grid plus or minus one microsecond, so rows stamped exactly at the label time, duplicate stamps,
duplicate label rows and rows just inside or just outside the TTL come up in most examples.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval import store
from towers.features import training_frame

HOUR = 3_600_000_000  # microseconds
TTL_HOURS = 5
BASE = pd.Timestamp("2021-01-01", tz="UTC")

DECLARATIONS = f"""
from datetime import timedelta
from pathlib import Path
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Int64

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
source = FileSource(name="timeline", path=str(Path(__file__).parent / "data" / "timeline.parquet"),
                    timestamp_field="event_timestamp")
timeline = FeatureView(name="timeline", entities=[user], ttl=timedelta(hours={TTL_HOURS}),
                       schema=[Field(name="row_id", dtype=Int64), Field(name="stamp", dtype=Int64)],
                       source=source)
pit = FeatureService(name="pit", features=[timeline])
"""


@pytest.fixture(scope="module")
def pit_store(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pit")
    shipped = Path(__file__).resolve().parent.parent / "feature_repo" / "feature_store.yaml"
    (repo / "feature_store.yaml").write_text(shipped.read_text())
    (repo / "timeline.py").write_text(DECLARATIONS)
    (repo / "data").mkdir()
    write_timeline(repo, [(1, 0)])
    prof = store.profile(repo)
    store.apply(prof)
    return repo, store.open_store(prof)


def write_timeline(repo: Path, rows: list[tuple[int, int]]) -> None:
    stamps = [BASE.value // 1000 + us for _, us in rows]
    table = pa.table({
        "user_id": pa.array([u for u, _ in rows], pa.int64()),
        "row_id": pa.array(range(len(rows)), pa.int64()),
        "stamp": pa.array(stamps, pa.int64()),
        "event_timestamp": pa.array(stamps, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    pq.write_table(table, repo / "data" / "timeline.parquet")


def oracle(rows: list[tuple[int, int]], user: int, t: int) -> set[int | None]:
    """Row ids a correct join may return for (user, t): the latest rows inside the TTL."""
    live = [
        (us, i) for i, (u, us) in enumerate(rows) if u == user and t - TTL_HOURS * HOUR <= us <= t
    ]
    if not live:
        return {None}
    latest = max(us for us, _ in live)
    return {i for us, i in live if us == latest}


stamp = st.tuples(st.integers(0, 12), st.sampled_from([-1, 0, 1])).map(lambda h: h[0] * HOUR + h[1])
events = st.lists(st.tuples(st.integers(1, 3), stamp), min_size=1, max_size=20)


EDGES = [-1, 0, 1, TTL_HOURS * HOUR - 1, TTL_HOURS * HOUR, TTL_HOURS * HOUR + 1]


@st.composite
def timelines(draw) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Feature rows, and labels that are either free or anchored on a row at an edge offset
    (at its stamp, a microsecond either side, or at the TTL's end and a microsecond either side)."""
    rows = draw(events)
    anchored = st.tuples(st.sampled_from(rows), st.sampled_from(EDGES)).map(
        lambda pair: (pair[0][0], pair[0][1] + pair[1])
    )
    labels = draw(st.lists(st.one_of(anchored, st.tuples(st.integers(1, 3), stamp)), min_size=1,
                           max_size=30))  # fmt: skip
    return rows, labels


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timeline=timelines())
def test_point_in_time_join_matches_oracle(pit_store, timeline):
    rows, labels = timeline
    repo, feast_store = pit_store
    write_timeline(repo, rows)
    entity = pd.DataFrame({
        "user_id": [u for u, _ in labels],
        "event_timestamp": [BASE + timedelta(microseconds=us) for _, us in labels],
    })  # fmt: skip
    frame = training_frame(feast_store, "pit", entity)
    assert len(frame) == len(labels)
    for (user, t), got, stamp_us in zip(labels, frame["row_id"], frame["stamp"], strict=True):
        got = None if pd.isna(got) else int(got)
        assert got in oracle(rows, user, t), f"user {user} at {t}: row {got}"
        if got is not None:
            assert stamp_us <= BASE.value // 1000 + t  # never a value from the label's future
