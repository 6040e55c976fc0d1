"""Dataset readers: real MovieLens files, a hand-written ml-latest fixture, the synthetic world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import need_data

from retrieval import datasets
from retrieval.synthetic import SyntheticConfig, generate


def test_ml100k_reads_every_file():
    ds = datasets.load("ml-100k", need_data("ml-100k"))
    assert (len(ds.interactions), len(ds.users), len(ds.items)) == (100_000, 943, 1_682)
    assert ds.interactions["timestamp"].min() == pd.Timestamp("1997-09-20 03:05:10", tz="UTC")
    assert len(ds.genres) == 19 and ds.items.loc[0, "genres"] == [
        "Animation",
        "Children's",
        "Comedy",
    ]
    assert ds.items["has_poster"].sum() == 1_620 and ds.items["plot"].notna().sum() == 1_540
    assert ds.users.loc[0, ["age", "gender", "occupation", "zip_prefix"]].tolist() == [
        24,
        "M",
        "technician",
        "857",
    ]


def test_ml1m_fixed_split_is_stamped_with_one_time():
    ds = datasets.load("ml-1m", need_data("ml-1m"))
    inter = ds.interactions
    assert len(inter) == 998_539 and (len(ds.users), len(ds.items)) == (6_040, 3_883)
    assert inter["split"].value_counts().to_dict() == {"train": 801_218, "test": 197_321}
    assert inter["timestamp"].nunique() == 1 and inter["rating"].isna().all()
    assert ds.users.loc[0, "occupation"] == "K-12 student" and len(ds.genres) == 18


def write_ml_latest(folder: Path) -> Path:
    """A tiny dataset in the MovieLens latest CSV layout, with quoting and a genre-less movie."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Untitled,(no genres listed)\n"
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n1,2,3.5,964982931\n2,1,5.0,964983000\n2,3,0.5,1000000000\n"
    )
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,pixar,964982703\n")
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n")
    return folder


def test_ml_latest_layout(tmp_path):
    ds = datasets.load("ml-latest", write_ml_latest(tmp_path / "ml-latest"))
    assert len(ds.interactions) == 4 and ds.users["user_id"].tolist() == [1, 2]
    assert ds.users["age"].isna().all() and ds.users["gender"].isna().all()
    items = ds.items.set_index("item_id")
    assert items.at[2, "title"] == "American President, The (1995)" and items.at[2, "year"] == 1995
    assert items.at[3, "genres"] == [] and pd.isna(items.at[3, "year"])
    assert "(no genres listed)" not in ds.genres and ds.interactions["rating"].tolist()[-1] == 0.5


def test_synthetic_plants_its_groups():
    cfg = SyntheticConfig(users=500, items=200, interactions=20_000, groups=4, affinity=0.8)
    ds = generate(cfg)
    inter = ds.interactions
    same = (
        ds.truth["user_group"][inter["user_id"] - 1] == ds.truth["item_group"][inter["item_id"] - 1]
    )
    expected = cfg.affinity + (1 - cfg.affinity) / cfg.groups
    assert abs(same.mean() - expected) < 0.02
    assert inter["rating"][same].mean() > 4 > 2 > inter["rating"][~same].mean()
    titles_word = ds.items["title"].str.split().str[1]
    assert titles_word.groupby(ds.truth["item_group"]).nunique().eq(1).all()  # content knows
    again = generate(cfg)
    pd.testing.assert_frame_equal(inter, again.interactions)
    assert not generate(SyntheticConfig(**{**cfg.__dict__, "seed": 1})).interactions.equals(inter)


def test_synthetic_at_full_size_is_vectorized():
    ds = generate(SyntheticConfig(users=1_000, items=1_000_000, interactions=200_000))
    assert len(ds.items) == 1_000_000 and ds.interactions["item_id"].max() <= 1_000_000
    assert np.isin(ds.interactions["user_id"], ds.users["user_id"]).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"items": 2, "groups": 4}, "cannot fill"),
        ({"affinity": 1.5}, "affinity"),
        ({"interactions": 10_000_001}, "at most"),
        ({"users": 0}, "positive"),
    ],
)
def test_synthetic_rejects_bad_sizes(kwargs, message):
    with pytest.raises(datasets.TTRError, match=message):
        generate(SyntheticConfig(**kwargs))
