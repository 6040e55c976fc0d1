"""The same answers on every offline engine: ml-100k through the CLI on the embedded default
(DuckDB over parquet, a registry file), on the Spark profile (Feast's Spark offline store in local
mode over the same parquet, its `spark.engine` materialization) and on the PostgreSQL profile (the
offline tables in PostgreSQL, Feast's PostgreSQL offline store, the SQL registry on the same
server): the online features of every user and item, and the training sets row for row and value
for value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from retrieval import store
from retrieval.cli import run
from towers.features import training_frame

pytestmark = pytest.mark.slow


OTHERS = ("spark", "postgres")


@pytest.fixture(scope="module")
def engines(tmp_path_factory, postgres_url, java):
    from conftest import copy_repo, need_data, unique_project

    data = ["--dataset", "ml-100k", "--data-dir", str(need_data("ml-100k"))]
    profiles = {}
    stores = {"duckdb": "duckdb", "spark": "spark:local[2]", "postgres": postgres_url}
    for name, offline in stores.items():
        repo = copy_repo(tmp_path_factory.mktemp(name), unique_project())
        common = ["--repo", str(repo), "--offline-store", offline]
        for step in (["data", *data], ["apply"], ["materialize"]):
            assert run([*step, *common]) == 0
        profiles[name] = store.profile(repo, offline_store=offline)
    return profiles


def as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as its text: lists and arrays compare elementwise, floats to the bit."""
    return frame.map(lambda v: str(list(v)) if isinstance(v, (list, np.ndarray)) else str(v))


def test_the_postgres_profile_keeps_its_tables_and_registry_in_postgres(engines):
    import psycopg

    prof = engines["postgres"]
    assert store.repo_config(prof).registry.registry_type == "sql"
    project = store.project_of(prof)
    with psycopg.connect(store.postgres_url(store.postgres_settings(prof.offline_store))) as conn:
        found = conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s",
                             (f"{project}__%",))  # fmt: skip
        tables = {row[0] for row in found}
        rows = conn.execute(f'SELECT count(*) FROM "{project}__user_activity"').fetchone()[0]
    names = {"user_profile", "user_activity", "user_history", "item_content", "item_popularity"}
    assert {f"{project}__{name}" for name in names} <= tables
    parquet = pq.read_metadata(prof.offline_dir / "user_activity.parquet").num_rows
    assert rows == parquet > 0
    views = store.open_store(prof).list_feature_views()
    assert {type(v.batch_source).__name__ for v in views} == {"PostgreSQLSource"}


@pytest.mark.parametrize("other", OTHERS)
def test_online_features_equal_duckdbs_for_every_user_and_item(engines, other):
    from conftest import online_snapshot

    duck, them = (online_snapshot(engines[name]) for name in ("duckdb", other))
    assert duck.keys() == them.keys() and len(duck) >= 5
    for view in duck:
        assert len(duck[view]) == len(them[view]) > 0, view
        expected = as_text(duck[view])
        pd.testing.assert_frame_equal(expected, as_text(them[view].loc[duck[view].index]))


def training_sets(engines: dict, other: str, service: str,
                  entities: pd.DataFrame) -> list[pd.DataFrame]:  # fmt: skip
    return [training_frame(store.open_store(engines[name]), service, entities)
            for name in ("duckdb", other)]  # fmt: skip


@pytest.mark.parametrize("other", OTHERS)
def test_training_sets_equal_duckdbs_row_for_row_on_all_of_ml100k(engines, other):
    prof = engines["duckdb"]
    inter = pq.read_table(prof.offline_dir / "interactions.parquet").to_pandas()
    entities = inter[["user_id", "item_id", "event_timestamp"]]
    duck, them = training_sets(engines, other, "user_tower", entities)
    assert len(duck) == len(them) == len(entities) == 100_000
    assert (duck.dtypes == them.dtypes).all()
    pd.testing.assert_frame_equal(as_text(duck), as_text(them))
    items = pd.DataFrame({"item_id": np.arange(1, 1683), "event_timestamp": entities.iloc[-1, 2]})
    duck, them = training_sets(engines, other, "item_tower", items)
    pd.testing.assert_frame_equal(as_text(duck), as_text(them))


@pytest.mark.parametrize("other", OTHERS)
def test_rows_sharing_key_and_time_and_unknown_keys_keep_one_row_each(engines, other):
    """Entity rows that share (user, time) each get their row; a user the tables never saw gets
    one row of nulls; a time before the user's first activity sees none of it."""
    prof = engines["duckdb"]
    inter = pq.read_table(prof.offline_dir / "interactions.parquet").to_pandas()
    rows = inter.sort_values("event_timestamp")[["user_id", "item_id", "event_timestamp"]][-500:]
    first = inter["event_timestamp"].min() - pd.Timedelta(days=1)
    entities = pd.concat([
        rows, rows.iloc[:200],  # 200 rows twice: the same (user, time) and item
        rows.iloc[:50].assign(user_id=10_000 + np.arange(50)),  # users with no features
        rows.iloc[:50].assign(event_timestamp=first),  # before any activity
    ], ignore_index=True)  # fmt: skip
    duck, them = training_sets(engines, other, "user_tower", entities)
    assert len(duck) == len(them) == len(entities) == 800
    pd.testing.assert_frame_equal(as_text(duck), as_text(them))
    assert as_text(duck.iloc[500:700]).reset_index(drop=True).equals(
        as_text(duck.iloc[:200]).reset_index(drop=True))  # fmt: skip
    assert duck["interaction_count"].iloc[700:].isna().all()
    first_day_end = inter.groupby("user_id")["event_timestamp"].min().dt.floor("D") + pd.Timedelta(
        days=1
    )  # a user's activity shows from the end of their first day
    active = (first_day_end.loc[rows["user_id"]].to_numpy() <= rows["event_timestamp"]).to_numpy()
    assert (duck["interaction_count"].iloc[:500].notna().to_numpy() == active).all()
    assert 0 < active.mean() < 1


def test_the_spark_profile_reads_the_parquet_through_spark_sources(engines):
    prof = engines["spark"]
    config = store.repo_config(prof)
    assert config.offline_store.spark_conf["spark.sql.session.timeZone"] == "UTC"
    assert config.batch_engine_config["type"] == "spark.engine"
    views = store.open_store(prof).list_feature_views()
    assert {type(v.batch_source).__name__ for v in views} == {"SparkSource"}


@pytest.mark.parametrize(("url", "fragment"), [
    ("spark:", "spark[:MASTER]"),
    ("postgresql://127.0.0.1:5432/db", "is not of the form"),
    ("postgresql://postgres@127.0.0.1:5432", "no database name"),
    ("mysql://postgres@127.0.0.1/db", "is not of the form"),
])  # fmt: skip
def test_a_malformed_offline_store_is_one_line_naming_it(tmp_path, capsys, url, fragment):
    from conftest import copy_repo
    from test_cli import one_line_error

    repo = copy_repo(tmp_path)
    one_line_error(capsys, ["apply", "--repo", str(repo), "--offline-store", url], url, fragment)


def test_an_unreachable_postgres_fails_in_one_line_before_anything_is_loaded(tmp_path, capsys):
    from conftest import copy_repo
    from test_cli import one_line_error

    repo = copy_repo(tmp_path)
    url = "postgresql://postgres@127.0.0.1:1/ttr"
    argv = ["data", "--dataset", "synthetic", "--users", "50", "--items", "20", "--interactions",
            "500", "--repo", str(repo), "--offline-store", url]  # fmt: skip
    one_line_error(capsys, argv, "PostgreSQL offline store postgres@127.0.0.1:1/ttr")
    assert not (repo / "data" / "offline").exists()
