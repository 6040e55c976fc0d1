"""The Feast stores behind the CLI: one repository, its online and offline profiles, apply,
materialize.

The embedded default is the repository's `feature_store.yaml` (SQLite online, DuckDB over parquet
offline, file registry). The Redis profile is the same repository with the online store swapped
for Redis and a registry file of its own, so each profile keeps its own materialization history.
The PostgreSQL offline profile keeps the offline tables in PostgreSQL (loaded by `ttr data` and
the commands after it from the parquet they write), lets Feast's PostgreSQL offline store do the
point-in-time joins, and keeps the registry on the same server (Feast's SQL registry), so that
several machines share one.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import yaml

from retrieval.errors import TTRError
from towers.progress import Progress

if TYPE_CHECKING:  # feast costs seconds to import: commands that need it import it late
    from feast import FeatureStore, RepoConfig
    from feast.repo_contents import RepoContents

ONLINE_STORE_ENV = "TTR_ONLINE_STORE"
OFFLINE_STORE_ENV = "TTR_OFFLINE_STORE"
DUCKDB_MEMORY_ENV = "TTR_DUCKDB_MEMORY"
REGISTRY_STORE = "retrieval.registry.AtomicFileRegistryStore"  # written whole or not at all
SERVING_TIMEOUT = 0.25  # seconds a serving worker waits to connect to, or hear from, Redis
DUCKDB_MEMORY = "3GB"  # DuckDB's cap in the embedded profile (DUCKDB_MEMORY_ENV sets it): its own
# default, 80% of RAM, let the point-in-time join of 2M rows (1M items) take 19.9 GiB here; under
# 3GB it took 3.7 GiB


@dataclass(frozen=True)
class Profile:
    repo: Path  # the feature repository (holds feature_store.yaml)
    online_store: str | None = None  # None: the yaml's default; else redis://HOST:PORT[/DB]
    timeout: float | None = None  # Redis: connect and read timeout, no retries (serving); None:
    # the client's defaults (batch commands: a 20,000-row write may take a while)
    offline_store: str | None = None  # None: DuckDB over parquet; else spark[:MASTER] or
    # postgresql://USER@HOST:PORT/DB

    @property
    def offline_dir(self) -> Path:
        return self.repo / "data" / "offline"

    @property
    def engine(self) -> str:
        """The offline engine: duckdb, spark or postgresql."""
        if not self.offline_store:
            return "duckdb"
        return "spark" if self.offline_store.split(":")[0] == "spark" else "postgresql"


def profile(repo: str | Path, online_store: str | None = None, timeout: float | None = None,
            offline_store: str | None = None) -> Profile:  # fmt: skip
    """Resolve the repository path, the online store (flag, else $TTR_ONLINE_STORE) and the
    offline store (flag, else $TTR_OFFLINE_STORE; `duckdb` is the default)."""
    path = Path(repo).expanduser().resolve()
    if not (path / "feature_store.yaml").is_file():
        raise TTRError(f"no feature repository at {path} (feature_store.yaml not found)")
    offline = offline_store or os.environ.get(OFFLINE_STORE_ENV) or None
    if offline == "duckdb":
        offline = None
    if offline is not None:  # a malformed value fails here, before anything runs
        check = spark_master if offline.split(":")[0] == "spark" else postgres_settings
        check(offline)
    return Profile(path, online_store or os.environ.get(ONLINE_STORE_ENV) or None, timeout, offline)


def copy_repo(source: Path, dest: Path, project: str) -> Path:
    """A copy of the repository's declarations (not its data) at `dest`, as Feast project
    `project`: a second store over the same definitions, for tests and benchmarks."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("data", "__pycache__"))
    yaml_path = dest / "feature_store.yaml"
    yaml_path.write_text(re.sub(r"(?m)^project: .*$", f"project: {project}", yaml_path.read_text()))
    return dest


def redis_settings(url: str) -> tuple[str, str]:
    """(connection string for Feast, a file-name-safe tag) from redis://HOST:PORT[/DB]."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "redis" or not parsed.hostname:
        raise TTRError(f"online store {url!r} is not of the form redis://HOST:PORT[/DB]")
    try:
        port = parsed.port or 6379
    except ValueError as err:
        raise TTRError(f"online store {url!r}: bad port") from err
    db = parsed.path.strip("/") or "0"
    if not db.isdigit():
        raise TTRError(f"online store {url!r}: database {db!r} is not a number")
    return f"{parsed.hostname}:{port},db={db}", f"redis-{parsed.hostname}-{port}-{db}"


SPARK_CONF = {  # beside the master: what Feast's Spark store needs to join correctly here
    "spark.sql.session.timeZone": "UTC",  # event times are UTC; Spark's default is the host's
    "spark.sql.execution.arrow.pyspark.enabled": "true",  # pandas <-> Spark through arrow
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.log.level": "ERROR",
    "spark.sql.shuffle.partitions": "8",  # small joins: the default 200 tasks cost seconds
}


def spark_master(value: str) -> str:
    """The Spark master of `spark` (local[*]) or `spark:MASTER` (local[2], spark://HOST:7077,
    yarn, k8s://...)."""
    name, _, master = value.partition(":")
    if name != "spark" or (_ and not master):
        raise TTRError(f"offline store {value!r} is not of the form spark[:MASTER]")
    return master or "local[*]"


def postgres_settings(url: str) -> dict:
    """Feast's PostgreSQL connection settings from postgresql://USER[:PASSWORD]@HOST[:PORT]/DB
    (no TLS unless `?sslmode=` asks for it: Feast's default, `require`, fails on a local server)."""
    parsed = urllib.parse.urlparse(url)
    form = "duckdb or postgresql://USER@HOST:PORT/DB"
    if parsed.scheme not in ("postgresql", "postgres") or not (parsed.hostname and parsed.username):
        raise TTRError(f"offline store {url!r} is not of the form {form}")
    database = parsed.path.strip("/")
    if not database:
        raise TTRError(f"offline store {url!r}: no database name (postgresql://USER@HOST:PORT/DB)")
    try:
        port = parsed.port or 5432
    except ValueError as err:
        raise TTRError(f"offline store {url!r}: bad port") from err
    sslmode = urllib.parse.parse_qs(parsed.query).get("sslmode", ["disable"])[0]
    return {"host": parsed.hostname, "port": port, "database": database, "sslmode": sslmode,
            "user": urllib.parse.unquote(parsed.username),
            "password": urllib.parse.unquote(parsed.password or "")}  # fmt: skip


def postgres_url(settings: dict, driver: str = "postgresql") -> str:
    user = urllib.parse.quote(settings["user"])
    password = f":{urllib.parse.quote(settings['password'])}" if settings["password"] else ""
    return (f"{driver}://{user}{password}@{settings['host']}:{settings['port']}/"
            f"{settings['database']}?sslmode={settings['sslmode']}")  # fmt: skip


def registry_schema(project: str) -> str:
    """The PostgreSQL schema holding a project's SQL registry: one a project, because Feast's SQL
    registry, refreshing, rebuilds every project it holds, opening each one's SQLite online store
    by its path, which fails where another project's repository is gone or on another machine."""
    return f"{project}__registry"


def ensure_registry_schema(prof: Profile) -> None:
    import psycopg

    from retrieval import postgres

    settings = postgres_settings(prof.offline_store)
    schema = registry_schema(project_of(prof))
    try:
        with psycopg.connect(postgres_url(settings), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    except psycopg.Error as err:
        raise postgres.failure(settings, err) from err


def repo_config(prof: Profile) -> RepoConfig:
    from feast.repo_config import RepoConfig

    raw = yaml.safe_load((prof.repo / "feature_store.yaml").read_text())
    if "://" not in str(raw["registry"].get("path", "")):  # a local file: written atomically
        raw["registry"] = {**raw["registry"], "registry_store_type": REGISTRY_STORE}
    if prof.online_store:
        connection, tag = redis_settings(prof.online_store)
        # skip_dedup: write what the offline store holds, as SQLite's upsert does; with Feast's
        # default a row older than the online one is dropped, so replacing a dataset by one with
        # older timestamps would leave the old values online
        raw["online_store"] = {"type": "redis", "connection_string": connection, "skip_dedup": True}
        raw["registry"] = {**raw["registry"], "path": f"data/registry-{tag}.db"}
    raw = _with_offline(raw, prof)
    config = RepoConfig(**raw)
    config.repo_path = prof.repo
    return config


def cap_duckdb(limit: str) -> None:
    """Feast's DuckDB offline store runs its joins on ibis's default backend: make that a DuckDB
    connection capped at `limit`, spilling what does not fit to the system's temporary folder
    (once a process; pinned by a test)."""
    import ibis

    backend = ibis.get_backend()
    if getattr(backend, "ttr_memory_limit", None) != limit:
        spill = Path(tempfile.gettempdir()) / "ttr-duckdb"  # not ./.tmp, DuckDB's default
        backend = ibis.duckdb.connect(memory_limit=limit, temp_directory=str(spill))
        backend.ttr_memory_limit = limit
        ibis.set_backend(backend)


def _with_offline(raw: dict, prof: Profile) -> dict:
    """The repository's settings with the profile's offline store (and the registry it keeps)."""
    if prof.engine == "spark":
        conf = {"spark.master": spark_master(prof.offline_store), **SPARK_CONF}
        path = raw["registry"]["path"].removesuffix(".db") + "-spark.db"  # its sources' own
        return {**raw, "offline_store": {"type": "spark", "spark_conf": conf},
                "batch_engine": {"type": "spark.engine", "partitions": 4},
                "registry": {**raw["registry"], "path": path}}  # fmt: skip
    if prof.engine == "postgresql":
        settings, schema = postgres_settings(prof.offline_store), registry_schema(raw["project"])
        path = postgres_url(settings, "postgresql+psycopg") + f"&options=-csearch_path%3D{schema}"
        registry = {"registry_type": "sql", "path": path, "cache_ttl_seconds": 0,
                    "sqlalchemy_config_kwargs": {"pool_pre_ping": True}}  # fmt: skip
        return {**raw, "offline_store": {"type": "postgres", **settings}, "registry": registry}
    return raw


def open_store(prof: Profile) -> FeatureStore:
    """A FeatureStore for the profile; a Redis profile is pinged first, so an unreachable server
    fails here, in one line, before anything is written."""
    from feast import FeatureStore

    if prof.online_store:
        ping_redis(prof.online_store)
    if prof.engine == "duckdb":
        cap_duckdb(os.environ.get(DUCKDB_MEMORY_ENV, DUCKDB_MEMORY))
    if prof.engine == "postgresql":
        ensure_registry_schema(prof)
    if prof.engine == "spark":  # Spark's Python workers run feast too: this interpreter's
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        # Feast warns each time it builds a Spark source; its Spark store, imported, resets the
        # RuntimeWarning filters: imported first, then silenced
        import feast.infra.offline_stores.contrib.spark_offline_store.spark  # noqa: F401

        warnings.filterwarnings(
            "ignore", "The spark data source API is an experimental", RuntimeWarning
        )
    store = FeatureStore(repo_path=str(prof.repo), config=repo_config(prof))
    if prof.online_store and prof.timeout:
        impatient_redis(store, prof.online_store, prof.timeout)
    # feast turns DeprecationWarning back on at import; its ibis calls then warn on every query
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="ibis")
    return store


def impatient_redis(store: FeatureStore, url: str, timeout: float) -> None:
    """Give Feast's Redis online store a client that waits at most `timeout` seconds to connect
    or for an answer, and never retries: redis-py's default retries a failed command three times
    with backoff, seconds a request cannot spend. Relies on Feast's RedisOnlineStore keeping its
    client in `_client` (pinned by a test)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    parsed = urllib.parse.urlparse(url)
    online = store._get_provider().online_store
    online._client = redis.Redis(
        host=parsed.hostname, port=parsed.port or 6379, db=int(parsed.path.strip("/") or 0),
        socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
    )  # fmt: skip


def ping_redis(url: str, timeout: float = 2.0) -> None:
    import redis

    parsed = urllib.parse.urlparse(url)
    redis_settings(url)
    client = redis.Redis(
        host=parsed.hostname,
        port=parsed.port or 6379,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    try:
        client.ping()
    except redis.RedisError as err:
        raise TTRError(f"cannot reach the Redis online store at {url}: {err}") from err
    finally:
        client.close()


def describe(prof: Profile) -> str:
    """Where the profile's online store lives, for summaries."""
    return prof.online_store or f"sqlite {prof.repo / 'data' / 'online_store.db'}"


ENTITY_KEYS = {"user": "user_id", "item": "item_id"}


def entity_features(prof: Profile, entity: str, entity_id: str) -> dict:
    """Every online feature of one user or item, by view; an error if the store has none."""
    from retrieval.catalogue import parse_id, read_meta
    from towers.features import online_rows

    if entity not in ENTITY_KEYS:
        raise TTRError(f"unknown entity {entity!r}; choose user or item")
    kind = read_meta(prof.offline_dir)["schema"][ENTITY_KEYS[entity]]
    try:
        key_value = parse_id(entity_id, kind, entity)
    except ValueError as err:
        raise TTRError(str(err)) from err
    store = open_store(prof)
    views = [v for v in store.list_feature_views() if ENTITY_KEYS[entity] in v.join_keys]
    if not views:
        raise TTRError(f"no {entity} feature views registered for {prof.repo}; run `ttr apply`")
    refs = [f"{v.name}:{f.name}" for v in sorted(views, key=lambda v: v.name) for f in v.features]
    (row,) = online_rows(store, refs, ENTITY_KEYS[entity], [key_value])
    if all(value is None for name, value in row.items() if name != ENTITY_KEYS[entity]):
        raise TTRError(f"{entity} {key_value!r} has no online features in {describe(prof)}")
    return row


def project_of(prof: Profile) -> str:
    return yaml.safe_load((prof.repo / "feature_store.yaml").read_text())["project"]


def sync_offline(prof: Profile, names: list[str]) -> dict[str, int]:
    """Where the offline store is PostgreSQL, the offline parquet tables `names` copied into it
    (each replaced whole); rows per table. Nothing to do for DuckDB, which reads the parquet."""
    if prof.engine != "postgresql":
        return {}
    from retrieval import postgres

    files = [prof.offline_dir / f"{name}.parquet" for name in names]
    settings = postgres_settings(prof.offline_store)
    return postgres.load(settings, project_of(prof), [f for f in files if f.exists()])


def apply(prof: Profile) -> list[str]:
    """Register the repository's declarations (feast apply, in process); returns the view names."""
    from feast.repo_operations import apply_total_with_repo_instance

    store = open_store(prof)
    contents = declarations(prof.repo)
    if prof.engine == "postgresql":
        contents = in_postgres(contents, project_of(prof))
    if prof.engine == "spark":
        contents = in_spark(contents)
    apply_total_with_repo_instance(
        store, store.project, store.registry, contents, skip_source_validation=True
    )
    return sorted(v.name for v in contents.feature_views)


def declarations(repo: Path) -> RepoContents:
    """Import each .py of the repository under a name unique to its path (two repositories in one
    process must not share a cached module, as `feast.repo_operations.parse_repo` would)."""
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource
    from feast.repo_contents import RepoContents

    found: dict[type, list] = {DataSource: [], Entity: [], FeatureView: [], FeatureService: []}
    for path in sorted(repo.glob("*.py")):
        for obj in vars(_import_file(path)).values():
            for kind, objs in found.items():
                if isinstance(obj, kind) and not any(obj is o for o in objs):
                    objs.append(obj)
    found[DataSource] += [
        v.batch_source for v in found[FeatureView] if v.batch_source not in found[DataSource]
    ]
    return RepoContents(
        projects=[],
        data_sources=found[DataSource],
        entities=found[Entity],
        feature_views=found[FeatureView],
        feature_services=found[FeatureService],
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        permissions=[],
    )


def in_postgres(contents: RepoContents, project: str) -> RepoContents:
    """The declarations with each view reading its table in PostgreSQL (`sync_offline`'s copy of
    the parquet its file source names) in place of the parquet."""
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
        PostgreSQLSource,
    )

    from retrieval import postgres

    sources = []
    for view in contents.feature_views:
        file = view.batch_source
        view.batch_source = PostgreSQLSource(
            name=file.name, table=postgres.table_name(project, file.name),
            timestamp_field=file.timestamp_field,
        )  # fmt: skip
        sources.append(view.batch_source)
    return contents._replace(data_sources=sources)


def in_spark(contents: RepoContents) -> RepoContents:
    """The declarations with each view reading its parquet through Spark."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    sources = []
    for view in contents.feature_views:
        file = view.batch_source
        view.batch_source = SparkSource(
            name=file.name, path=file.path, file_format="parquet",
            timestamp_field=file.timestamp_field,
        )  # fmt: skip
        sources.append(view.batch_source)
    return contents._replace(data_sources=sources)


def _import_file(path: Path) -> ModuleType:
    name = f"_ttr_repo_{abs(hash(str(path)))}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise TTRError(f"cannot import {path}: {err}") from err
    return module


@dataclass(frozen=True)
class Materialized:
    view: str
    start: datetime
    end: datetime
    rows: int  # entity rows written online
    seconds: float


def materialize(prof: Profile, incremental: bool = False,
                progress: Progress | None = None) -> list[Materialized]:  # fmt: skip
    """Every feature view over the whole time range of the data; with `incremental`, each
    time-series view from its last run's end (inclusive, so the last day's rows are refreshed)."""
    from retrieval.catalogue import read_meta
    from retrieval.materialize import materialize_view, materialize_with_engine

    meta = read_meta(prof.offline_dir)
    start, end = datetime.fromisoformat(meta["start"]), datetime.fromisoformat(meta["end"])
    store = open_store(prof)
    views = store.list_feature_views()
    if not views:
        raise TTRError(f"no feature views registered for {prof.repo}; run `ttr apply` first")
    store._get_provider().update_infra(  # idempotent: recreates tables of a deleted online store
        store.project, tables_to_delete=[], tables_to_keep=views, entities_to_delete=[],
        entities_to_keep=store.list_entities(), partial=True,
    )  # fmt: skip
    done = []
    for view in sorted(views, key=lambda v: v.name):
        if not (prof.offline_dir / f"{view.batch_source.name}.parquet").exists():  # e.g.
            # item_embedding before `ttr index`
            continue
        since = start
        if incremental and view.tags.get("kind") != "static":  # static rows carry old stamps
            since = min(view.most_recent_end_time or start, end)
        began = time.perf_counter()
        if prof.engine == "spark":
            parquet = prof.offline_dir / f"{view.batch_source.name}.parquet"
            rows = materialize_with_engine(store, view, since, end, parquet)
        else:
            rows = materialize_view(store, view, since, end, progress)
        done.append(Materialized(view.name, since, end, rows, time.perf_counter() - began))
    return done
