"""Incremental materialization: new days arrive, `--incremental` continues from the last run."""

from __future__ import annotations

import pandas as pd
from conftest import assert_online_equals_offline

from retrieval import offline, store
from retrieval.cli import run
from retrieval.synthetic import SyntheticConfig, generate


def test_incremental_run_catches_up_with_new_days(repo, capsys):
    ds = generate(SyntheticConfig(users=80, items=30, interactions=4_000, groups=3, days=60))
    prof = store.profile(repo)
    cut = pd.Timestamp("2020-01-31 15:00", tz="UTC")  # mid-day: the last day changes later
    early = ds.interactions[ds.interactions["timestamp"] < cut]
    partial = type(ds)(ds.name, early, ds.users, ds.items, ds.genres)
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
