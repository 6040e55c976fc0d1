"""The private parts of Feast 0.67 this project relies on, pinned: if an upgrade moves one, a test
here says which, before a store or a server misbehaves."""

from __future__ import annotations

import sqlite3
import time

import pytest
from conftest import copy_repo, unique_project
from servers import free_port

from retrieval import offline, store
from retrieval.registry import AtomicFileRegistryStore
from retrieval.synthetic import SyntheticConfig, load


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> store.Profile:
    base = tmp_path_factory.mktemp("seams")
    prof = store.profile(copy_repo(base, unique_project()))
    ds = load(SyntheticConfig(users=20, items=10, interactions=200, groups=2), base / "raw")
    offline.write(offline.build(ds), prof.offline_dir)
    store.apply(prof)
    store.materialize(prof)
    return prof


def test_the_registry_is_written_by_our_atomic_store(small):
    """`registry_store_type` picks `retrieval.registry.AtomicFileRegistryStore`, which overrides
    `FileRegistryStore._write_registry` and writes to `_filepath`."""
    registry = store.open_store(small).registry
    assert isinstance(registry._registry_store, AtomicFileRegistryStore)
    assert registry._registry_store._filepath == small.repo / "data" / "registry.db"
    before = registry._registry_store._filepath.stat().st_ino
    store.apply(small)  # rewritten: a new file renamed over the old one
    assert registry._registry_store._filepath.stat().st_ino != before


def test_materialization_reaches_the_provider_and_the_sqlite_layout(small):
    """`materialize` asks `_get_provider().offline_store.pull_latest_from_table_or_query`, writes
    into the table `feast.infra.online_stores.sqlite._table_id` names through `_get_conn`, and
    records the interval with `registry.apply_materialization`."""
    from feast.infra.online_stores.sqlite import _table_id

    feast_store = store.open_store(small)
    provider = feast_store._get_provider()
    assert callable(provider.offline_store.pull_latest_from_table_or_query)
    assert callable(provider.update_infra) and callable(feast_store.registry.apply_materialization)
    view = feast_store.get_feature_view("user_activity")
    conn = provider.online_store._get_conn(feast_store.config)
    assert isinstance(conn, sqlite3.Connection)
    versioned = feast_store.config.registry.enable_online_feature_view_versioning
    table = _table_id(feast_store.config.project, view, versioned)
    rows = conn.execute(f'SELECT COUNT(DISTINCT entity_key) FROM "{table}"').fetchone()[0]
    assert rows == 20 and view.most_recent_end_time is not None


def test_the_redis_store_uses_the_client_we_give_it(small, redis_url):
    """`impatient_redis` replaces the Redis online store's `_client`: pointed at a port nothing
    listens on, a read fails within its timeout instead of retrying for seconds."""
    import redis

    prof = store.Profile(small.repo, redis_url, timeout=0.2)
    store.apply(prof)  # the Redis profile's own registry
    feast_store = store.open_store(prof)
    online = feast_store._get_provider().online_store
    assert online._get_client(feast_store.config) is online._client
    store.impatient_redis(feast_store, f"redis://127.0.0.1:{free_port()}/0", 0.2)
    began = time.perf_counter()
    with pytest.raises(redis.exceptions.ConnectionError):
        feast_store.get_online_features(features=["user_activity:interaction_count"],
                                        entity_rows=[{"user_id": 1}])  # fmt: skip
    assert time.perf_counter() - began < 1.0


def test_the_duckdb_store_joins_on_ibis_default_backend_which_we_cap(small, monkeypatch):
    """Feast's DuckDB offline store runs its point-in-time joins on ibis's default backend; the
    project caps that backend's memory (`store.cap_duckdb`). A cap too small for the join makes
    the join fail: so the join ran there."""
    import ibis
    import pandas as pd
    import pyarrow.parquet as pq

    from towers.features import training_frame

    feast_store = store.open_store(small)
    limit = ibis.get_backend().raw_sql("SELECT current_setting('memory_limit')").fetchone()[0]
    assert limit == "2.7 GiB"  # store.DUCKDB_MEMORY, 3GB
    spill = ibis.get_backend().raw_sql("SELECT current_setting('temp_directory')").fetchone()[0]
    assert spill.endswith("ttr-duckdb")  # never a .tmp folder in the user's working directory
    inter = pq.read_table(small.offline_dir / "interactions.parquet").to_pandas()
    entities = inter[["user_id", "item_id", "event_timestamp"]]
    assert len(training_frame(feast_store, "user_tower", entities)) == len(entities)
    monkeypatch.setenv("TTR_DUCKDB_MEMORY", "1KB")
    feast_store = store.open_store(small)
    with pytest.raises(Exception, match="(?i)memory"):
        training_frame(feast_store, "user_tower", pd.concat([entities] * 50))
    monkeypatch.delenv("TTR_DUCKDB_MEMORY")
    store.open_store(small)  # the cap back for the tests after this one
