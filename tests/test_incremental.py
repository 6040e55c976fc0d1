"""Materializing changed data: new days (`--incremental`), and a dataset replaced by another."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from conftest import assert_online_equals_offline, copy_repo, unique_project
from test_datasets import write_ml_latest

from retrieval import datasets, offline, store
from retrieval.cli import run
from retrieval.synthetic import SyntheticConfig, load


def test_incremental_run_catches_up_with_new_days(repo, tmp_path, capsys):
    cfg = SyntheticConfig(users=80, items=30, interactions=4_000, groups=3, days=60)
    ds = load(cfg, tmp_path / "raw")
    prof = store.profile(repo)
    cut = pd.Timestamp("2020-01-31 15:00", tz="UTC")  # mid-day: the last day changes later
    early = ds.interactions[ds.interactions["timestamp"] < cut]
    partial = dataclasses.replace(ds, interactions=early)
    offline.write(offline.build(partial), prof.offline_dir)
    assert run(["apply", "--repo", str(repo)]) == 0
    assert run(["materialize", "--repo", str(repo)]) == 0
    first_end = store.open_store(prof).get_feature_view("user_activity").most_recent_end_time

    tables = offline.build(ds)
    offline.write(tables, prof.offline_dir)
    starts = {m.view: m.start for m in store.materialize(prof, incremental=True)}
    data_start = pd.Timestamp(tables.meta["start"])
    assert starts["user_activity"] == starts["item_popularity"] == first_end > data_start
    assert starts["user_profile"] == starts["item_content"] == data_start  # static: reloaded whole
    assert_online_equals_offline(prof)
    assert run(["materialize", "--incremental", "--repo", str(repo)]) == 0
    assert tables.meta["end"][:10] in capsys.readouterr().out


@pytest.mark.parametrize("online", ["sqlite", "redis"])
def test_online_store_mirrors_a_replaced_dataset(online, tmp_path, request):
    """Replacing 2020 data by a dataset from 2000 leaves the 2000 values online, not the newer
    ones (Feast's Redis writer drops rows older than what is online unless told otherwise)."""
    url = request.getfixturevalue("redis_url") if online == "redis" else None
    prof = store.profile(copy_repo(tmp_path, project=unique_project()), url)
    newer = load(SyntheticConfig(users=5, items=5, interactions=100, groups=1), tmp_path / "new")
    offline.write(offline.build(newer), prof.offline_dir)
    store.apply(prof)
    store.materialize(prof)
    older = datasets.load("ml-latest", write_ml_latest(tmp_path / "raw"), tmp_path / "old")
    offline.write(offline.build(older), prof.offline_dir)
    store.apply(prof)  # another dataset: its own feature views
    store.materialize(prof)
    try:
        assert store.entity_features(prof, "item", "1")["title"] == "Toy Story (1995)"
        assert store.entity_features(prof, "user", "2")["interaction_count"] == 2
    finally:
        if url:
            store.open_store(prof).teardown()
