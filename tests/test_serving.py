"""The recommendation API end to end: a real uvicorn process on a free port over a synthetic world
with planted groups, on SQLite and on Redis; bad input, unknown users, and a Redis that dies and
comes back."""

from __future__ import annotations

import shutil
import signal
import time

import pandas as pd
import pytest
from servers import OwnRedis, get, serve, stop

from retrieval import artifacts
from retrieval.cli import run

SMALL = ["--users", "300", "--items", "80", "--interactions", "12000", "--groups", "4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import copy_repo, unique_project

    repo = copy_repo(tmp_path_factory.mktemp("serve"), unique_project())
    root = repo.parent / "artifacts"
    common = ["--repo", str(repo)]
    steps = [
        ["data", "--dataset", "synthetic", *SMALL],
        ["apply"],
        ["materialize"],
        ["train", "--epochs", "3", "--batch-size", "256", "--artifacts", str(root)],
        ["index", "--artifacts", str(root)],
        # 300 users cannot vouch for the neighbours' gain by two standard errors (z 0.9 at the
        # best weight): the tests serve what validation chose, so let it choose on the figures
        ["train-ranker", "--epochs", "2", "--gain-z", "0", "--artifacts", str(root)],
    ]
    for step in steps:
        assert run([*step, *common]) == 0, step
    inter = pd.read_parquet(repo / "data" / "offline" / "interactions.parquet")
    return repo, root, inter


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def server(request, world, tmp_path_factory):
    repo, root, inter = world
    online = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        online = url
        assert run(["apply", "--repo", str(repo), "--online-store", online]) == 0
        assert run(["materialize", "--repo", str(repo), "--online-store", online]) == 0
    process, base = serve(repo, root, online)
    yield base, inter
    stop(process)


def history(inter: pd.DataFrame, user: int) -> set[int]:
    rows = inter[(inter["user_id"] == user) & (inter["split"] != "test")]
    return set(rows["item_id"].tolist())


def test_recommend_returns_k_distinct_unseen_known_items(server):
    base, inter = server
    catalogue = set(inter["item_id"].unique())
    for user in (1, 17, 42):
        status, body = get(base, f"/recommend/{user}?k=7")
        assert status == 200 and body["source"] == "personalized" and body["user_id"] == user
        ids = [item["item_id"] for item in body["items"]]
        assert len(ids) == 7 == len(set(ids)) and set(ids) <= catalogue
        assert not set(ids) & history(inter, user)
        assert all(item["retrieval_score"] is not None and item["title"] for item in body["items"])
        scores = [item["score"] for item in body["items"]]  # the ranker's chances
        assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    status, body = get(base, "/recommend/1?k=50&exclude_seen=false")
    assert status == 200 and set(i["item_id"] for i in body["items"]) & history(inter, 1)


def test_unknown_user_gets_popular_items(server):
    base, inter = server
    status, body = get(base, "/recommend/987654?k=5")
    assert status == 200 and body["source"] == "popular" and len(body["items"]) == 5
    top = inter[inter["split"] != "test"]["item_id"].value_counts().index[:5].tolist()
    assert [item["item_id"] for item in body["items"]] == top
    counts = inter[inter["split"] != "test"]["item_id"].value_counts()
    assert [item["popularity"] for item in body["items"]] == counts.iloc[:5].tolist()
    assert all(item["score"] is None is item["retrieval_score"] for item in body["items"])


@pytest.mark.parametrize(
    ("path", "field"),
    [("/recommend/1?k=0", "k"), ("/recommend/1?k=1001", "k"), ("/recommend/abc", "user_id"),
     ("/recommend/1?exclude_seen=maybe", "exclude_seen"), ("/similar/x", "item_id")],
)  # fmt: skip
def test_bad_input_is_a_422_naming_the_field(server, path, field):
    status, body = get(server[0], path)
    assert status == 422 and body["detail"][0]["loc"][-1] == field and body["detail"][0]["msg"]


def test_similar_items_share_the_query_items_genre(server, world):
    """Synthetic items carry their planted group as their genre."""
    base, repo = server[0], world[0]
    items = pd.read_parquet(repo / "data" / "offline" / "item_content.parquet")
    genre = items.set_index("item_id")["genres"].map(lambda g: g[0])
    shared = []
    for item in (3, 10, 25):
        status, body = get(base, f"/similar/{item}?k=5")
        ids = [i["item_id"] for i in body["items"]]
        assert status == 200 and len(ids) == 5 and item not in ids
        shared += [genre[i] == genre[item] for i in ids]
    assert sum(shared) / len(shared) > 0.6  # chance: 1 in 4
    assert get(base, "/similar/999999")[0] == 404


def test_version_readyz_and_metrics_count_what_was_served(server):
    base, _ = server
    assert get(base, "/healthz") == (200, {"status": "ok"})
    status, ready = get(base, "/readyz")
    assert status == 200 and ready["status"] == "ready" and ready["online_store"]
    status, version = get(base, "/version")
    assert status == 200 and version["model_version"] and version["ranker_version"]
    answer = get(base, "/recommend/1")[1]
    assert {k: answer[k] for k in version} == version  # every answer names its bundle
    before = _counter(get(base, "/metrics")[1], '/recommend/{user_id}",status="200"')
    for user in range(1, 6):
        assert get(base, f"/recommend/{user}")[0] == 200
    text = get(base, "/metrics")[1]
    assert _counter(text, '/recommend/{user_id}",status="200"') == before + 5
    assert 'ttr_stage_seconds_count{stage="rerank"}' in text


def _counter(text: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("ttr_requests_total") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def own_redis(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    yield server
    server.close()


def test_a_redis_outage_degrades_to_popular_and_recovers(world, own_redis):
    repo, root, _ = world
    url = own_redis.url
    assert run(["apply", "--repo", str(repo), "--online-store", url]) == 0
    assert run(["materialize", "--repo", str(repo), "--online-store", url]) == 0
    process, base = serve(repo, root, url)
    try:
        assert get(base, "/recommend/1")[1]["source"] == "personalized"
        own_redis.signal(signal.SIGTERM)  # redis exits; its append-only file keeps the data
        down = [get(base, f"/recommend/{u}?k=3") for u in range(1, 9)]
        assert all(status == 200 and len(body["items"]) == 3 for status, body in down)
        assert {body["source"] for _, body in down} == {"popular"}
        assert get(base, "/readyz")[0] == 503
        own_redis.start()  # the same data comes back
        deadline = time.monotonic() + 30
        while get(base, "/recommend/1")[1]["source"] != "personalized":
            assert time.monotonic() < deadline, "personalized answers did not return"
            time.sleep(0.2)
        assert get(base, "/readyz")[0] == 200
    finally:
        stop(process)


def test_the_ranker_refits_on_training_and_validation_rows(world):
    _, root, _ = world
    version = artifacts.latest(root)
    metrics = artifacts.manifest(artifacts.target(version, artifacts.RANKER))["metrics"]
    assert 0 <= metrics["best_epoch"] <= 2
    start = metrics["retrieval_order"]  # the kept epoch loses nothing against the towers' order
    assert metrics["val_recall@20"] >= start["recall@20"] > 0
    assert metrics["val_ndcg@20"] >= start["ndcg@20"] > 0
    assert metrics["history"][0]["epoch"] == 0  # the untrained ranker: the retrieval order
    before = version / "before_refit"  # the towers the ranker validated with
    assert {p.name for p in before.iterdir()} >= {"user_tower.safetensors", "item_tower.json"}
    assert metrics["refit"]["epochs"] == metrics["best_epoch"] == len(metrics["refit"]["history"])


def test_a_user_without_history_is_ranked_with_the_popularity_prior(world, monkeypatch):
    import copy
    import dataclasses

    import numpy as np
    import torch

    from retrieval import bundle, prior, store
    from retrieval.catalogue import read_meta
    from retrieval.pipeline import Pipeline

    repo, root, inter = world
    served = bundle.newest(root)
    choices = served.manifest["choices"]
    assert 0 <= choices["cold_prior"]["value"] <= max(prior.GRID)  # training chose one
    heavy = {**served.manifest, "choices": {**choices, "cold_prior": {"value": 1000.0}}}
    b = dataclasses.replace(served, manifest=heavy, ranker=None, ranker_version=None)
    prof = store.profile(repo)
    pipeline = Pipeline(store.open_store(prof), b, read_meta(prof.offline_dir)["schema"])
    user = int(inter["user_id"].iloc[0])
    seen = history(inter, user)
    warm = pipeline.recommend(user, 5)
    assert [it["retrieval_score"] for it in warm.items] == sorted(
        (it["retrieval_score"] for it in warm.items), reverse=True
    )  # a user with history: the cosine's order
    monkeypatch.setattr(prior, "cold", lambda x: np.ones(len(x["activity"]), bool))
    cold = pipeline.recommend(user, 5)
    unseen = [pipeline.item_ids[r] for r in pipeline.popular if pipeline.item_ids[r] not in seen]
    assert [it["item_id"] for it in cold.items] == unseen[:5]  # popularity's order at weight 1000
    assert cold.source == "personalized" and all(-1 <= it["retrieval_score"] <= 1
                                                  for it in cold.items)  # fmt: skip
    first_stage = copy.deepcopy(served.ranker)  # ranks by its first-stage score alone
    with torch.no_grad():
        first_stage.out.weight.zero_()
        first_stage.out.weight[0, -1] = 1.0
    ranked = Pipeline(pipeline.store, dataclasses.replace(b, ranker=first_stage), pipeline.schema)
    reranked = [it["item_id"] for it in ranked.recommend(user, 5).items]
    assert reranked == unseen[:5]  # the ranker starts from the served order, the prior in it


def test_the_ranker_adds_the_neighbours_of_the_users_whole_history_as_chosen(world):
    """In the planted groups a user's items predict the next: the validation users choose the
    neighbours, and `/recommend` scores each candidate from the cosine plus their weighted score
    over everything the user had, whether or not the seen items are excluded."""
    import numpy as np
    import torch

    from retrieval import bundle, store
    from retrieval.catalogue import read_meta
    from retrieval.pipeline import Pipeline
    from towers import neighbours
    from towers.inputs import user_inputs

    repo, root, inter = world
    served = bundle.newest(root)
    chosen = artifacts.manifest(artifacts.target(served.version, artifacts.RANKER))["neighbours"]
    assert chosen["weight"] > 0 and chosen["validation"]["ndcg@20"] > chosen["retrieval_order"][
        "ndcg@20"]  # fmt: skip
    ranker = served.ranker
    assert ranker.config.neighbour_weight == chosen["weight"]
    assert ranker.neighbour_matrix.abs().sum() > 0  # the refit's matrix, saved and loaded
    prof = store.profile(repo)
    pipeline = Pipeline(store.open_store(prof), served, read_meta(prof.offline_dir)["schema"])
    user = int(inter["user_id"].iloc[0])
    row = pipeline._features(user, {})  # the online row a request reads
    had = served.vocab.items.rows(row["seen_items"])  # all the user had, as the store holds it
    rec = pipeline.recommend(user, 10)
    rows = served.vocab.items.rows([it["item_id"] for it in rec.items])
    cosine = torch.tensor([it["retrieval_score"] for it in rec.items])
    added = neighbours.scores(ranker.neighbour_matrix.numpy(), set(had.tolist()), rows)
    assert np.ptp(added) > 0  # the neighbours tell these candidates apart
    first = cosine + chosen["weight"] * torch.from_numpy(added)
    item = {name: t[torch.from_numpy(rows)] for name, t in pipeline.items.items()}
    x = user_inputs({name: [value] for name, value in row.items()}, served.vocab)
    with torch.inference_mode():
        logits = ranker.score(x, item, first)
    assert np.allclose(torch.sigmoid(logits).numpy(), [it["score"] for it in rec.items], atol=1e-5)
    everything = {it["item_id"]: it["score"] for it in pipeline.recommend(user, 80, False).items}
    assert all(everything[it["item_id"]] == pytest.approx(it["score"]) for it in rec.items)
