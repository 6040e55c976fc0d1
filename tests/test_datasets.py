"""Named datasets through their shipped specs: real MovieLens files and amazon-hin, a hand-written
ml-latest fixture, the synthetic world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import need_data

from retrieval import datasets
from retrieval.synthetic import SyntheticConfig, generate, load


def test_ml100k_reads_every_file(tmp_path):
    ds = datasets.load("ml-100k", need_data("ml-100k"), tmp_path)
    assert (len(ds.interactions), len(ds.users), len(ds.items)) == (100_000, 943, 1_682)
    assert ds.interactions["timestamp"].min() == pd.Timestamp("1997-09-20 03:05:10", tz="UTC")
    assert ds.items.loc[0, "genres"] == ["Animation", "Children's", "Comedy"]
    assert ds.items["poster"].notna().sum() == 1_620 and ds.items["plot"].notna().sum() == 1_540
    assert ds.users.loc[0, ["age", "gender", "occupation", "zip_prefix"]].tolist() == [
        24, "M", "technician", "857",
    ]  # fmt: skip
    assert ds.schema.split == "temporal" and ds.schema.user_id == ds.schema.item_id == "int64"
    assert ds.schema.items == {"genres": "multi_categorical", "year": "numeric", "plot": "text",
                               "poster": "image"} and not ds.report.lines  # fmt: skip


def test_ml1m_fixed_split_is_stamped_with_one_time(tmp_path):
    ds = datasets.load("ml-1m", need_data("ml-1m"), tmp_path)
    inter = ds.interactions
    assert len(inter) == 998_539 and (len(ds.users), len(ds.items)) == (6_040, 3_883)
    assert inter["split"].value_counts().to_dict() == {"train": 801_218, "test": 197_321, "": 0}
    assert inter["timestamp"].nunique() == 1 and inter["rating"].isna().all()
    assert ds.users.loc[0, "occupation"] == "K-12 student" and ds.schema.split == "given"


def test_amazon_hin_reads_its_raw_files_through_its_spec(tmp_path):
    ds = datasets.load("amazon-hin", need_data("amazon-hin"), tmp_path)
    assert (len(ds.interactions), len(ds.items)) == (195_791, 2_753)
    assert ds.interactions["user_id"].nunique() == len(ds.users) == 6_170
    assert ds.schema.users == {} and ds.schema.items == {
        "brand": "categorical", "category": "multi_categorical",
        "also_viewed": "multi_categorical",
    }  # fmt: skip
    categories = ds.items["category"].dropna()
    assert categories.map(len).sum() == 5_508 and (categories.map(len) > 1).any()
    assert ds.items["brand"].nunique() == 334 and not ds.report.lines


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
    ds = datasets.load("ml-latest", write_ml_latest(tmp_path / "ml-latest"), tmp_path / "out")
    assert len(ds.interactions) == 4 and ds.users["user_id"].tolist() == [1, 2]
    assert list(ds.users.columns) == ["user_id"] and ds.schema.users == {}  # no users table
    items = ds.items.set_index("item_id")
    assert items.at[2, "title"] == "American President, The (1995)" and items.at[2, "year"] == 1995
    assert items.at[3, "genres"] is None and pd.isna(items.at[3, "year"])
    assert ds.interactions["rating"].tolist()[-1] == 0.5


def test_synthetic_plants_its_groups(tmp_path):
    cfg = SyntheticConfig(users=500, items=200, interactions=20_000, groups=4, affinity=0.8)
    ds = load(cfg, tmp_path)
    inter = ds.interactions
    same = (
        ds.truth["user_group"][inter["user_id"] - 1] == ds.truth["item_group"][inter["item_id"] - 1]
    )
    expected = cfg.affinity + (1 - cfg.affinity) / cfg.groups
    assert abs(same.mean() - expected) < 0.02
    assert inter["rating"][same].mean() > 4 > 2 > inter["rating"][~same].mean()
    titles_word = ds.items["title"].str.split().str[1]
    assert titles_word.groupby(ds.truth["item_group"]).nunique().eq(1).all()  # content knows
    again = load(cfg, tmp_path / "again")
    pd.testing.assert_frame_equal(inter, again.interactions)
    other = generate(SyntheticConfig(**{**cfg.__dict__, "seed": 1}))[0]["interactions"]
    assert not other["item_id"].equals(inter["item_id"])


def test_synthetic_at_full_size_is_vectorized():
    tables, _ = generate(SyntheticConfig(users=1_000, items=1_000_000, interactions=200_000))
    assert len(tables["items"]) == 1_000_000 and tables["interactions"]["item_id"].max() <= 10**6
    assert np.isin(tables["interactions"]["user_id"], tables["users"]["user_id"]).all()


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
