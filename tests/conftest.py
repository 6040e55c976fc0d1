"""Shared fixtures: a temporary copy of the feature repository, the real data, a real Redis."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from retrieval import store
from towers.features import online_rows

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
EXIT = pytest.StashKey[int]()
REDIS = os.environ.get("TTR_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES = os.environ.get("TTR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/ttr_test")


def data_root() -> Path | None:
    root = Path(os.environ.get("TTR_DATA_DIR", SHARED_DATA))
    return root if root.is_dir() else None


def unavailable(message: str) -> None:
    """A test's real service or data is missing: skipped locally, a failure in CI."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def need_data(name: str) -> Path:
    """The raw files of a real dataset; skipped locally when absent, a failure in CI."""
    root = data_root()
    if root is None or not (root / name).is_dir():
        unavailable(f"real data {name} not found (TTR_DATA_DIR, or shared/data beside the repo)")
    return root / name


def copy_repo(dest: Path, project: str = "ttr") -> Path:
    """A copy of feature_repo/ without its data, under its own Feast project name."""
    return store.copy_repo(ROOT / "feature_repo", dest / "feature_repo", project)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_repo(tmp_path)


def redis_up(url: str = REDIS) -> bool:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not redis_up():
        unavailable(f"no Redis at {REDIS}")
    return REDIS


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL database for the offline profile's tests (created where missing); each test
    keeps to its own Feast project, so tables and registry rows never meet."""
    from urllib.parse import urlparse

    import psycopg

    parsed = urlparse(POSTGRES)
    server = POSTGRES.rsplit("/", 1)[0] + "/postgres"
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=2) as conn:
            name = parsed.path.strip("/")
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as err:
        unavailable(f"no PostgreSQL at {server}: {err}")
    return POSTGRES


@pytest.fixture(scope="session")
def java() -> str:
    """The java that Spark's local mode runs on."""
    import shutil

    found = shutil.which("java")
    if found is None:
        unavailable("no java for Spark (Debian: openjdk-17-jre-headless)")
    return found


def unique_project() -> str:
    return f"ttr_test_{uuid.uuid4().hex[:10]}"


VIEWS = {
    "user_profile": "user_id",
    "user_activity": "user_id",
    "user_history": "user_id",
    "item_content": "item_id",
    "item_popularity": "item_id",
    "item_vectors": "item_id",
}


def views(prof: store.Profile) -> dict[str, str]:
    """The feature views (view -> join key) the repository declares for its dataset."""
    feast_store = store.open_store(prof)
    names = {v.name for v in feast_store.list_feature_views()}
    return {view: key for view, key in VIEWS.items() if view in names}


def latest_offline(prof: store.Profile, view: str) -> pd.DataFrame:
    frame = pq.read_table(prof.offline_dir / f"{view}.parquet").to_pandas()
    key = VIEWS[view]
    return frame.sort_values([key, "event_timestamp"]).groupby(key).tail(1).set_index(key)


def online_snapshot(prof: store.Profile) -> dict[str, pd.DataFrame]:
    """Every online feature of every user and item, one frame per view."""
    feast_store = store.open_store(prof)
    snapshot = {}
    for view, key in views(prof).items():
        ids = latest_offline(prof, view).index.tolist()
        refs = [f"{view}:{f.name}" for f in feast_store.get_feature_view(view).features]
        snapshot[view] = pd.DataFrame(online_rows(feast_store, refs, key, ids)).set_index(key)
    return snapshot


def same(a: object, b: object) -> bool:
    """Parquet value vs online value: null ~ None, lists elementwise, floats as float32."""
    if isinstance(a, (list, np.ndarray)):
        return (
            b is not None
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    if a is None or a is pd.NA or (isinstance(a, float) and np.isnan(a)):
        return b is None or (isinstance(b, float) and np.isnan(b))
    if isinstance(a, (float, np.floating)):
        return b is not None and np.float32(a) == np.float32(b)
    return a == b


def assert_online_equals_offline(prof: store.Profile) -> None:
    snapshot = online_snapshot(prof)
    for view, online in snapshot.items():
        offline = latest_offline(prof, view)
        assert len(online) == len(offline) > 0
        for column in online.columns:
            mismatched = [
                k for k in offline.index if not same(offline.at[k, column], online.at[k, column])
            ]
            assert not mismatched, (
                f"{view}.{column}: {len(mismatched)} entities differ, e.g. {mismatched[:3]}"
            )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[EXIT] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without interpreter teardown, where duckdb's nanobind bindings print pages of
    spurious leak reports after pytest's summary; the exit status is pytest's own."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash.get(EXIT, 0))
