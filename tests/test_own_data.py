"""A user's own data end to end, driven by a spec alone: the shop world (string ids, every feature
kind, pictures) and amazon-hin (real products, a second domain) through data, content, apply,
materialize, train, index, evaluate and a real HTTP server; and each feature kind reaching the
towers."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shop
import torch
from conftest import copy_repo, need_data, unique_project
from servers import get, serve, stop

from retrieval import artifacts, store
from retrieval.catalogue import catalogue_frame
from retrieval.cli import run
from retrieval.training import load_towers, user_frame
from towers.inputs import Vocab, item_inputs, user_inputs
from towers.train import embed

TRAIN = ["train", "--epochs", "4", "--batch-size", "256"]


@pytest.fixture(scope="module")
def shop_world(tmp_path_factory):
    base = tmp_path_factory.mktemp("own")
    spec = shop.write(base / "shop", customers=200, products=160, events=8_000, mistakes=False)
    repo = copy_repo(base, unique_project())
    root, common = base / "artifacts", ["--repo", str(repo)]
    steps = [["data", "--spec", str(spec)], ["content"], ["apply"], ["materialize"],
             [*TRAIN, "--artifacts", str(root)], ["index", "--artifacts", str(root)],
             ["train-ranker", "--epochs", "1", "--artifacts", str(root)]]  # fmt: skip
    for step in steps:
        assert run([*step, *common]) == 0, step
    return repo, root, base / "shop"


def test_the_shop_serves_string_ids_end_to_end(shop_world, tmp_path, capsys):
    repo, root, folder = shop_world
    user_line, item_line = shop.planted(folder)
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--no-retrain", "--json", str(out), "--repo", str(repo),
            "--artifacts", str(root)]  # fmt: skip
    assert run(argv) == 0
    result = json.loads(out.read_text())
    models = result["models"]
    assert models["two_tower"]["recall@20"] > 1.5 * models["popularity"]["recall@20"]
    assert result["similar"]["feature"] == "category"  # the first categorical item feature
    process, base = serve(repo, root)
    try:
        status, body = get(base, "/recommend/C0007?k=5")
        assert status == 200 and body["user_id"] == "C0007" and body["source"] == "personalized"
        ids = [item["item_id"] for item in body["items"]]
        assert all(isinstance(i, str) and i in item_line for i in ids) and len(set(ids)) == 5
        assert sum(item_line[i] == user_line["C0007"] for i in ids) >= 4  # the planted line
        first = shop.sku(0)
        status, body = get(base, f"/similar/{first}?k=5")
        assert status == 200 and all(isinstance(i["item_id"], str) for i in body["items"])
        assert get(base, "/similar/NOSUCH")[0] == 404
        assert get(base, "/recommend/UNKNOWN")[1]["source"] == "popular"
    finally:
        stop(process)
    capsys.readouterr()
    assert run(["recommend", "C0007", "--k", "3", "--repo", str(repo), "--artifacts",
                str(root)]) == 0  # fmt: skip
    assert "personalized" in capsys.readouterr().out
    assert run(["features", "item", first, "--repo", str(repo)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["item_id"] == first and row["category"] == "garden" and row["has_image"]


def test_each_feature_kind_reaches_the_towers(shop_world):
    """Change one value of one feature, as the store serves it: the embedding changes."""
    from retrieval import content

    repo, root, folder = shop_world
    prof = store.profile(repo)
    version = artifacts.latest(root)
    vocab, (user_tower, item_tower) = Vocab.load(version), load_towers(version)
    assert item_tower.config.modalities == ("id", "categorical", "text", "image")
    at = pd.Timestamp("2024-04-01", tz="UTC")
    items = catalogue_frame(store.open_store(prof), vocab.items, at).iloc[[1]].reset_index()
    text, image = content.TextEncoder(), content.ImageEncoder(240, 160)
    shop.picture(folder / "other.png", 3, seed=99)
    changes = {
        "category": {"category": "music"},
        "tags": {"tags": [["sport", "gift"]]},
        "price": {"price": 999.0},
        "description": {"text_vector": list(text(["A fine sport product, for runners."]))},
        "image": {"image_vector": list(image([folder / "other.png"]))},
    }
    before = embed(item_tower, item_inputs(items, vocab))
    for name, change in changes.items():
        after = embed(item_tower, item_inputs(items.assign(**change), vocab))
        assert not torch.allclose(before, after, atol=1e-4), name
    users = user_frame(store.open_store(prof), np.array(["C0007"]), at)
    before = embed(user_tower, user_inputs(users, vocab))
    for name, value in {"age": 77.0, "country": "JP"}.items():
        after = embed(user_tower, user_inputs(users.assign(**{name: value}), vocab))
        assert not torch.allclose(before, after, atol=1e-4), name


@pytest.mark.slow
def test_amazon_hin_end_to_end(tmp_path):
    """Real products from another domain, through its committed spec: no text, no images, no
    user table; every stage runs and one request is served."""
    raw = need_data("amazon-hin")
    repo = copy_repo(tmp_path, unique_project())
    root, common = tmp_path / "artifacts", ["--repo", str(repo)]
    out = tmp_path / "eval.json"
    art = ["--artifacts", str(root)]
    steps = [["data", "--dataset", "amazon-hin", "--data-dir", str(raw)], ["apply"],
             ["materialize"], ["train", "--epochs", "1", *art], ["index", *art],
             ["evaluate", "--no-retrain", "--json", str(out), *art]]  # fmt: skip
    for step in steps:
        assert run([*step, *common]) == 0, step
    manifest = artifacts.manifest(artifacts.latest(root))
    assert manifest["item_inputs"] == ["id", "categorical"] and manifest["split"]["kind"] == (
        "temporal"
    )
    result = json.loads(out.read_text())
    assert result["models"]["two_tower"]["recall@20"] > 0 and result["similar"]["feature"] == (
        "brand"
    )
    inter = pd.read_parquet(repo / "data" / "offline" / "interactions.parquet")
    user = int(inter["user_id"].value_counts().index[0])
    process, base = serve(repo, root)
    try:
        status, body = get(base, f"/recommend/{user}?k=10")
        assert status == 200 and body["source"] == "personalized" and len(body["items"]) == 10
        assert all(item["title"] == str(item["item_id"]) for item in body["items"])  # no titles
    finally:
        stop(process)


def test_the_committed_example_spec_is_the_one_the_readme_shows():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    shipped = Path(__file__).resolve().parent.parent / "retrieval" / "specs" / "amazon-hin.yaml"
    assert "retrieval/specs/amazon-hin.yaml" in readme and shipped.is_file()


def page_titles(html: str, heading: str) -> list[str]:
    """The tiles' titles (rank prefix dropped) in the section under `heading` of the page."""
    section = html.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]
    titles = re.findall(r'<div class="title">(?:\d+\. )?(.*?)</div>', section)
    return [unescape(t) for t in titles]


def fetch(base: str, path: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(base + path, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_the_page_shows_recommendations_and_similar_items_as_tiles(shop_world):
    """The page over the shop (string ids, titles, pictures for three items in four): the tiles
    are the API's answers, pictures come from the dataset's files, the rest are title tiles."""
    repo, root, folder = shop_world
    process, base = serve(repo, root)
    try:
        status, body, headers = fetch(base, "/?user=C0007&k=5")
        html = body.decode()
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert len(body) < 100_000 and "<script" not in html and "http" not in html
        answer = get(base, "/recommend/C0007?k=5")[1]
        assert page_titles(html, "top 5 recommended (personalized)") == [
            item["title"] for item in answer["items"]
        ]
        assert 'id="source">personalized<' in html and answer["model_version"] in html
        shown = re.findall(r'data-item="(\w+)"><(img|div)', html)
        assert shown and all((tag == "img") == (int(sku[1:6]) % 4 != 3) for sku, tag in shown)
        pictured = next(sku for sku, tag in shown if tag == "img")
        status, image, headers = fetch(base, f"/items/{pictured}/image")
        assert status == 200 and headers["content-type"] == "image/png"
        assert image == (folder / "images" / f"{pictured}.png").read_bytes()
        assert "max-age" in headers["cache-control"]
        assert fetch(base, f"/items/{shop.sku(3)}/image")[0] == 404  # no picture
        assert fetch(base, "/items/..%2F..%2Fspec.yaml/image")[0] in (404, 422)
        html = fetch(base, f"/?item={shop.sku(0)}")[1].decode()
        similar = get(base, f"/similar/{shop.sku(0)}?k=10")[1]
        assert page_titles(html, "10 similar items") == [i["title"] for i in similar["items"]]
        status, body, _ = fetch(base, "/?user=NOSUCH")
        assert status == 200 and 'id="source">popular<' in body.decode()
        status, body, _ = fetch(base, "/?item=NOSUCH")
        assert status == 404 and "not in the catalogue" in body.decode()
    finally:
        stop(process)
