"""FAISS: exact search equals brute force; an approximate index meets its recall floor."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import index
from retrieval.errors import TTRError
from towers import metrics


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around random centres: not uniform, still hard to index (faiss's
    SyntheticDataset idea)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(clusters, size=n)] + 0.6 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_search_equals_brute_force():
    vectors, queries = clustered(2_000, 16, 20, 0), clustered(50, 16, 20, 1)
    ids = np.arange(2_000) * 10 + 7  # item ids, not row numbers
    built = index.build(vectors, ids, queries, index.IndexConfig(k=10))
    assert built.factory == "IDMap,Flat" and built.recall == 1.0
    scores, found = index.search(built.index, built.params, queries, 10)
    brute = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert (found == ids[brute]).all()
    assert np.allclose(scores, np.take_along_axis(queries @ vectors.T, brute, axis=1), atol=1e-5)


def test_search_excluding_is_the_exact_top_k_of_what_is_left():
    """The index's ids are catalogue rows: leaving a user's seen rows out gives the brute-force
    top k of the rest (`towers.metrics.top_k`, the one full-ranking top k)."""
    vectors, queries = clustered(500, 16, 10, 0), clustered(20, 16, 10, 1)
    built = index.build(vectors, np.arange(500), queries, index.IndexConfig(k=10))
    rng = np.random.default_rng(0)
    exclude = [set(rng.choice(500, size=int(rng.integers(0, 40)), replace=False).tolist())
               for _ in range(20)]  # fmt: skip
    found = index.search_excluding(built.index, built.params, queries, 10, exclude)
    exact = metrics.top_k(queries, vectors, exclude, 10)
    for (rows, scores), truth, done, query in zip(found, exact, exclude, queries, strict=True):
        assert rows.tolist() == truth.tolist() and not set(rows.tolist()) & done
        assert np.allclose(scores, vectors[rows] @ query, atol=1e-5)


def test_ivf_meets_its_recall_floor_on_held_out_queries():
    vectors = clustered(60_000, 32, 200, 2)
    held_out, fresh = clustered(300, 32, 200, 3), clustered(300, 32, 200, 4)
    cfg = index.IndexConfig(k=20, recall_target=0.95)
    built = index.build(vectors, np.arange(60_000), held_out, cfg)
    assert built.factory.startswith("IVF") and built.params["nprobe"] > 1
    found = index.search(built.index, built.params, fresh, 20)[1]
    assert (
        index.recall(found, index.exact_top_k(vectors, fresh, 20)) >= 0.93
    )  # holds on new queries


def test_the_memory_budget_picks_the_least_compressed_codes_that_fit():
    n, d = 10_000_000, 64  # vectors 2.56 GB, SQ8 0.64 GB, PQ32 0.32 GB, ids 0.08 GB
    assert index.choose_factory(40_000, d, 0.001) == "IDMap,Flat"  # exact, whatever the budget
    assert index.choose_factory(n, d, 4.0) == "IVF16384,Flat"
    assert index.choose_factory(n, d, 1.0) == "IVF16384,SQ8"
    assert index.choose_factory(n, d, 0.5) == "IVF16384,PQ32"
    assert index.choose_factory(n, d, 0.2) == "IVF16384,PQ8"
    with pytest.raises(TTRError, match=r"at least 0.12 GB as PQ4 codes.*0.1 GB \(--memory-gb\)"):
        index.choose_factory(n, d, 0.1)


@pytest.mark.parametrize(
    ("d", "budget_gb", "factory", "floor"),
    [(32, 0.003, "IVF1024,SQ8", 0.95), (16, 0.0012, "IVF1024,PQ8", 0.75)],
)
def test_compressed_codes_meet_their_recall_target(d, budget_gb, factory, floor):
    """60k vectors: of 32, 8.2 MB as vectors and ids, 2.4 MB as SQ8; of 16, 4.3 MB as vectors
    and ids, 1.0 MB as PQ8 (16 wide: faiss trains a PQ's 2-wide sub-quantizers in ~2.5 s each
    here, 37 s for PQ16 over 32)."""
    vectors = clustered(60_000, d, 200, 2)
    held_out, fresh = clustered(300, d, 200, 3), clustered(300, d, 200, 4)
    cfg = index.IndexConfig(k=10, recall_target=floor, memory_gb=budget_gb)
    built = index.build(vectors, np.arange(60_000), held_out, cfg)
    assert built.factory == factory and built.recall >= floor
    found = index.search(built.index, built.params, fresh, 10)[1]
    assert index.recall(found, index.exact_top_k(vectors, fresh, 10)) >= floor - 0.03


@pytest.mark.parametrize(
    ("bad", "message"),
    [(np.full((3, 8), np.nan, dtype=np.float32), "NaN"), (np.ones((3, 8, 1)), "shape")],
)
def test_bad_vectors_stop_the_build(bad, message):
    with pytest.raises(TTRError, match=message):
        index.build(bad, np.arange(3), np.ones((1, 8), dtype=np.float32), index.IndexConfig())


def test_save_load_round_trip_checks_the_digest(tmp_path):
    vectors = clustered(500, 8, 5, 5)
    built = index.build(vectors, np.arange(500), vectors[:10], index.IndexConfig(k=5))
    info = index.save(built, vectors, tmp_path, {"model_version": "v1"})
    loaded, meta = index.load(tmp_path)
    assert meta == info and loaded.ntotal == 500 and meta["dimension"] == 8
    assert (index.search(loaded, meta["params"], vectors[:3], 5)[1][:, 0] == [0, 1, 2]).all()
    assert np.array_equal(index.embeddings(tmp_path), vectors)
    assert sorted(index.stored_ids(loaded).tolist()) == list(range(500))
    folder = index.folder(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["embeddings.npy", "index.faiss",
                                                        "index.json"]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", folder.name]  # nothing staged
    (folder / "index.faiss").write_bytes(b"corrupt")
    with pytest.raises(TTRError, match="sha256"):
        index.load(tmp_path)
    (folder / "embeddings.npy").write_bytes(b"corrupt")
    with pytest.raises(TTRError, match="sha256"):
        index.embeddings(tmp_path)


def test_a_new_index_replaces_the_old_in_one_step(tmp_path):
    """`index` is a pointer swapped at once: a reader sees the old index or the new one, and the
    old directory goes once nothing points at it."""
    vectors = clustered(300, 8, 5, 5)
    first = index.build(vectors, np.arange(300), vectors[:10], index.IndexConfig(k=5))
    index.save(first, vectors, tmp_path, {"model_version": "v1"})
    old = index.folder(tmp_path)
    ivf = index.build(vectors, np.arange(300), vectors[:10],
                      index.IndexConfig(factory="IVF4,Flat", k=5))  # fmt: skip
    index.save(ivf, vectors, tmp_path, {"model_version": "v1"})
    assert index.folder(tmp_path) != old and not old.exists()
    assert index.load(tmp_path)[1]["factory"] == "IVF4,Flat"
    assert sorted(index.stored_ids(index.load(tmp_path)[0]).tolist()) == list(range(300))
