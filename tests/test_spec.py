"""A user's own data through a spec: what is read, what is dropped and reported, and every way a
spec can be wrong (one line naming the key, the file and the line; nothing stored changes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shop

from retrieval import reader, recbole, spec
from retrieval.cli import run
from retrieval.errors import TTRError


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shop")
    shop.write(folder, customers=60, products=20, events=600)
    return folder


def read(path: Path) -> reader.Dataset:
    return reader.read(spec.load(path))


def test_the_shop_reads_with_string_ids_and_every_kind(shop_dir):
    ds = read(shop_dir / "shop.yaml")
    assert ds.schema.user_id == ds.schema.item_id == "string" and ds.schema.split == "temporal"
    assert ds.schema.items == {"category": "categorical", "tags": "multi_categorical",
                               "description": "text", "image": "image",
                               "price": "numeric"}  # fmt: skip
    items = ds.items.set_index("item_id")
    first = items.loc[shop.sku(1)]
    assert first["title"] == "Kitchen thing 1" and first["tags"] == ["kitchen", "gift"]
    assert Path(first["image"]).is_file() and Path(first["image"]).is_absolute()
    assert pd.isna(items.loc[shop.sku(3), "image"])  # no picture: missing, not an error
    assert isinstance(first["price"], float) and ds.users["age"].dtype == np.float64
    inter = ds.interactions
    assert inter["timestamp"].dt.tz is not None and inter["timestamp"].min().year == 2024
    assert set(inter["item_id"]) <= set(items.index) and inter["user_id"].str.startswith("C").all()


def test_what_cannot_be_used_is_counted_dropped_and_located(shop_dir):
    ds = read(shop_dir / "shop.yaml")
    report = "\n".join(ds.report.lines)
    assert len(ds.interactions) == 600  # the planted mistakes all dropped
    last = 600 + 1  # the header, then 600 rows: the planted mistakes follow
    assert f"malformed lines skipped (wrong number of fields): 1 (first: line {last + 4}" in report
    assert (
        f"unparsable 'ts' (interactions.timestamp), rows dropped: 1 (first: events.csv line "
        f"{last + 3}: 'yesterday')" in report
    )
    assert (
        f"not in products.csv, dropped: 1 (first: events.csv line {last + 1}: 'NOSUCHSKU')"
        in report
    )
    assert f"duplicate rows, dropped: 1 (first: events.csv line {last + 2})" in report


def test_bad_feature_values_are_left_missing_and_located_past_dropped_rows(tmp_path):
    (tmp_path / "e.csv").write_text("u,i\n1,A\n1,B\n2,C\n")
    (tmp_path / "p.csv").write_text("id,price,pic\nA,1.5,\nA,2.0,\n,3.0,\nB,cheap,\n"
                                    "C,4,nowhere.png\n")  # fmt: skip
    (tmp_path / "s.yaml").write_text(
        "name: t\ninteractions: {path: e.csv, user_id: u, item_id: i}\n"
        "items: {path: p.csv, id: id, features: {price: numeric, pic: image}}\n"
    )
    ds = read(tmp_path / "s.yaml")
    report = "\n".join(ds.report.lines)
    assert "rows repeating an id ('id'), the first kept: 1 (first: p.csv line 3: 'A')" in report
    assert "rows without an id ('id'), dropped: 1 (first: p.csv line 4)" in report
    assert "items.features.price values that are not a number, left missing: 1 (first: p.csv " \
           "line 5: 'cheap')" in report  # fmt: skip
    assert "items.features.pic values that are not a readable file, left missing: 1 (first: " \
           "p.csv line 6: 'nowhere.png')" in report  # fmt: skip
    prices = ds.items.set_index("item_id")["price"]
    assert prices["A"] == 1.5 and np.isnan(prices["B"]) and prices["C"] == 4.0


def test_leading_zeros_keep_ids_strings_and_plain_integers_become_integers(tmp_path):
    (tmp_path / "a.csv").write_text("u,i\n007,1\n8,2\n")
    (tmp_path / "s.yaml").write_text("name: t\ninteractions: {path: a.csv, user_id: u, "
                                     "item_id: i}\n")  # fmt: skip
    ds = read(tmp_path / "s.yaml")
    assert ds.schema.user_id == "string" and ds.schema.item_id == "int64"
    assert ds.interactions["user_id"].tolist() == ["007", "8"]
    assert ds.schema.split == "random" and ds.interactions["timestamp"].nunique() == 1  # no time


@pytest.mark.parametrize(
    ("column", "unit", "expected"),
    [
        (["2024-03-01T10:00:00Z", "2024-03-01 12:30:00+02:00"], "s", ["10:00", "10:30"]),
        ([1709287200, 1709289000], "s", ["10:00", "10:30"]),
        ([1709287200000, 1709289000000], "ms", ["10:00", "10:30"]),
        (pa.array([1709287200, 1709289000], pa.timestamp("s")), "s", ["10:00", "10:30"]),
    ],
)  # fmt: skip
def test_times_as_iso_text_unix_numbers_or_datetimes(tmp_path, column, unit, expected):
    table = pa.table({"u": ["a", "b"], "i": ["x", "y"], "t": column})
    pq.write_table(table, tmp_path / "e.parquet")
    (tmp_path / "s.yaml").write_text(
        "name: t\ninteractions: {path: e.parquet, user_id: u, item_id: i, timestamp: t, "
        f"timestamp_unit: {unit}}}\n"
    )
    times = read(tmp_path / "s.yaml").interactions["timestamp"]
    assert times.dt.strftime("%H:%M").tolist() == expected and str(times.dt.tz) == "UTC"


def test_a_feature_in_a_file_of_its_own_gathers_its_rows(tmp_path):
    """A multi-valued feature kept as (id, value) rows, as the amazon-hin files do."""
    (tmp_path / "e.tsv").write_text("u\ti\n1\t10\n1\t11\n2\t12\n")
    (tmp_path / "brand.dat").write_text("10,acme\n11,zeta\n12,acme\n")
    (tmp_path / "cat.dat").write_text("10,3\n10,5\n12,5\n99,1\n10,3\n")
    (tmp_path / "s.yaml").write_text("""\
name: t
interactions: {path: e.tsv, user_id: u, item_id: i}
items:
  path: brand.dat
  columns: [item, brand]
  separator: ","
  id: item
  features:
    brand: categorical
    cats: {kind: multi_categorical, path: cat.dat, columns: [item, cats], separator: ","}
""")
    ds = read(tmp_path / "s.yaml")
    cats = ds.items.set_index("item_id")["cats"]
    assert cats[10] == ["3", "5"] and cats[12] == ["5"] and cats[11] is None
    assert any("cat.dat: rows naming an id not in the table, dropped: 1" in line
               for line in ds.report.lines)  # fmt: skip


def test_recbole_atomic_files_read_without_a_spec(tmp_path):
    (tmp_path / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\ti1\t4\t1700000000\nu1\ti2\t5\t1700000100\nu2\ti1\t3\t1700000200\n"
    )
    (tmp_path / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\tgenre:token_seq\tprice:float\tv:float_seq\n"
        "i1\tThe Thing\tHorror Sci-Fi\t3.5\t1 2\ni2\tUp\tAnimation\t\t3 4\n"
    )
    ds = reader.read(recbole.spec(recbole.find(tmp_path)))
    assert ds.name == "toy" and ds.schema.item_id == "string" and ds.schema.rating
    assert ds.schema.items == {"genre": "multi_categorical", "price": "numeric"}  # no float_seq
    items = ds.items.set_index("item_id")
    assert items.at["i1", "title"] == "The Thing"
    assert items.at["i1", "genre"] == ["Horror", "Sci-Fi"]
    assert np.isnan(items.at["i2", "price"]) and ds.schema.split == "temporal"


# ---- every way a spec can be wrong: one line, naming key, file and line; nothing changes ------

GOOD = shop.SPEC


def broken(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD_SPECS = [
    # (the spec, what the message names, the spec line it names (None: a data file's line))
    (broken("tags: {kind: multi_categorical", "tags: {kind: multi_categorial"),
     ["items.features.tags.kind", "unknown kind 'multi_categorial'"], 20),
    (broken("    price: numeric", "    cost: numeric"),
     ["items.features.cost", "no column 'cost'", "products.csv"], 23),
    (broken("  id: sku", "  id: product_id"),
     ["items.id", "no column 'product_id'", "products.csv"], 16),
    (broken("  user_id: customer", "  user: customer"), ["interactions.user", "unknown key"], 4),
    (broken("  item_id: sku\n", ""), ["interactions", "missing key 'interactions.item_id'"], 2),
    (broken("path: events.csv", "path: nowhere.csv"), ["interactions.path", "no file"], 3),
    (broken("    price: numeric", "    price per unit: numeric"),
     ["items.features.price per unit", "not a feature name"], 23),
    (broken("    age: numeric", "    recent_items: numeric"),
     ["users.features.recent_items", "derived features use"], 12),
    (broken("path: products.csv", "path: products.dat"), ["items.path", "separator"], 15),
    (broken("    image: image", "    image: image\n    photo: image"),
     ["items.features.photo", "at most one image"], 23),
    (broken("  rating: stars", "  rating: stars\n  timestamp_unit: weeks"),
     ["interactions.timestamp_unit", "'weeks'"], 8),
    ("name: shop\ninteractions: [events.csv]\n", ["interactions", "expected a mapping"], 2),
    ("name: shop\ninteractions: {path: events.csv\n", ["not valid YAML", "line 3, column 1"],
     None),
]  # fmt: skip


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def stored(shop_dir, tmp_path_factory):
    """A repository already holding the shop's data."""
    from conftest import copy_repo

    repo = copy_repo(tmp_path_factory.mktemp("stored"))
    assert run(["data", "--spec", str(shop_dir / "shop.yaml"), "--repo", str(repo)]) == 0
    return repo


@pytest.mark.parametrize(("text", "fragments", "line"), BAD_SPECS)
def test_a_wrong_spec_is_one_line_naming_key_file_and_line(stored, shop_dir, capsys, text,
                                                           fragments, line):  # fmt: skip
    path = shop_dir / "bad.yaml"
    path.write_text(text)
    before = fingerprint(stored / "data")
    assert run(["data", "--spec", str(path), "--repo", str(stored)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ttr: error: "), err
    for fragment in [*fragments, str(path)]:
        assert fragment in err[0]
    if line is not None:
        assert f"{path} line {line}: " in err[0]
    assert fingerprint(stored / "data") == before


def test_a_spec_whose_rows_all_fail_says_why(shop_dir, tmp_path):
    (tmp_path / "e.csv").write_text("u,i\n1,nope\n2,never\n")
    (tmp_path / "items.csv").write_text("id\nA\n")
    (tmp_path / "s.yaml").write_text("name: t\ninteractions: {path: e.csv, user_id: u, item_id: "
                                     "i}\nitems: {path: items.csv, id: id}\n")  # fmt: skip
    with pytest.raises(TTRError, match="no interactions left.*not in items.csv, dropped: 2"):
        read(tmp_path / "s.yaml")
