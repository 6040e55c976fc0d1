"""FAISS behind one small module: an index is a factory string plus its search parameters.

Inner product over unit vectors is cosine. Small catalogues get exact `IDMap,Flat`; large ones an
inverted file, `IVF{nlist},Flat` where the vectors fit the memory budget, else their codes:
`SQ8` (a byte a dimension), else `PQ{m}` (m bytes a vector). Its `nprobe` is raised at build
time until recall@k against exact search on held-out queries reaches the target.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from retrieval import artifacts, atomic
from retrieval.errors import TTRError

INDEX, EMBEDDINGS, INFO = "index.faiss", "embeddings.npy", "index.json"
EXACT_UP_TO = 50_000  # catalogue size served by exact search
ID_BYTES = 8  # an inverted list stores each vector's int64 id beside its code
TRAIN_PER_LIST = 64  # k-means sample per inverted list (faiss warns below 39)


@dataclass(frozen=True)
class IndexConfig:
    factory: str = ""  # empty: chosen from the catalogue's size and the memory budget
    memory_gb: float = 4.0  # the most the index's vectors and ids may take; above it they are
    # compressed (SQ8, then PQ)
    recall_target: float = 0.95  # recall@k against exact search the index must reach
    k: int = 100
    queries: int = 1_000  # held-out queries for the recall check
    max_nprobe: int = 1_024


@dataclass(frozen=True)
class Built:
    index: faiss.Index
    factory: str
    params: dict  # search parameters, e.g. {"nprobe": 32}
    recall: float  # measured recall@k against exact search (1.0 for exact)


def choose_factory(n: int, d: int = 64, budget_gb: float = IndexConfig.memory_gb) -> str:
    """Exact search up to EXACT_UP_TO vectors; above, an inverted file with about 4 sqrt(n)
    lists, holding the least compressed codes whose n codes and ids fit in `budget_gb`: the
    vectors (4 d bytes each), SQ8 (d bytes) or PQ{m} (m bytes, m dividing d, at least 4)."""
    if n <= EXACT_UP_TO:
        return "IDMap,Flat"
    lists = f"IVF{2 ** round(math.log2(4 * math.sqrt(n)))}"
    budget = budget_gb * 1e9
    codes = [("Flat", 4 * d), ("SQ8", d)] + [(f"PQ{m}", m) for m in range(d // 2, 3, -1)
                                             if d % m == 0]  # fmt: skip
    for name, size in codes:
        if n * (size + ID_BYTES) <= budget:
            return f"{lists},{name}"
    least = n * (codes[-1][1] + ID_BYTES) / 1e9
    raise TTRError(f"{n:,} vectors of {d} need at least {least:.2f} GB as {codes[-1][0]} codes; "
                   f"the index memory budget is {budget_gb:g} GB (--memory-gb)")  # fmt: skip


def check_vectors(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """float32, C-contiguous (n, d); NaN/Inf or a wrong width is an error naming the row."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim):
        raise TTRError(f"embeddings of shape {vectors.shape}, expected (n, {dim or 'd'})")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise TTRError(
            f"{int(bad.sum())} embeddings hold NaN or Inf (first at row {int(np.argmax(bad))})"
        )
    return vectors


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    return exact.search(queries, k)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top-k that the index found."""
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def build(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, cfg: IndexConfig) -> Built:
    vectors = check_vectors(vectors)
    queries = check_vectors(queries, vectors.shape[1])
    factory = cfg.factory or choose_factory(len(vectors), vectors.shape[1], cfg.memory_gb)
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        size = min(len(vectors), TRAIN_PER_LIST * faiss.extract_index_ivf(index).nlist)
        index.train(vectors[rng.choice(len(vectors), size, replace=False)])
    index.add_with_ids(vectors, ids.astype(np.int64))
    if "IVF" not in factory:
        return Built(index, factory, {}, 1.0)
    return _calibrate(index, factory, vectors, ids, queries, cfg)


def _calibrate(index: faiss.Index, factory: str, vectors: np.ndarray, ids: np.ndarray,
               queries: np.ndarray, cfg: IndexConfig) -> Built:  # fmt: skip
    """Double nprobe until recall@k against exact search reaches the target."""
    k = min(cfg.k, len(vectors))
    truth = ids[exact_top_k(vectors, queries, k)]
    ivf = faiss.extract_index_ivf(index)
    nprobe = 1
    while True:
        ivf.nprobe = nprobe
        measured = recall(index.search(queries, k)[1], truth)
        if measured >= cfg.recall_target or nprobe >= min(cfg.max_nprobe, ivf.nlist):
            break
        nprobe *= 2
    if measured < cfg.recall_target:
        raise TTRError(
            f"{factory}: recall@{k} {measured:.3f} < {cfg.recall_target} at nprobe {nprobe}"
        )
    return Built(index, factory, {"nprobe": nprobe}, measured)


def search(
    index: faiss.Index, params: dict, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the top k for each query, with the index's search parameters."""
    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def search_excluding(
    index: faiss.Index, params: dict, queries: np.ndarray, k: int,
    exclude: list[np.ndarray | set[int]],
) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Per query, (ids, scores) of its top k with the ids in `exclude[q]` left out: the index is
    asked for k plus the longest exclusion list, so that k remain."""
    depth = min(k + max((len(e) for e in exclude), default=0), index.ntotal)
    scores, ids = search(index, params, queries, depth)
    out = []
    for row_ids, row_scores, done in zip(ids, scores, exclude, strict=True):
        banned = np.fromiter(done, dtype=np.int64) if isinstance(done, set) else done
        keep = np.flatnonzero((row_ids >= 0) & ~np.isin(row_ids, banned))[:k]
        out.append((row_ids[keep], row_scores[keep]))
    return out


def save(built: Built, vectors: np.ndarray, version: Path, extra: dict) -> dict:
    """The index, the embeddings it was built from (`embeddings.npy`, row r for index id r) and
    `index.json` (their digests) in a new directory `<version>/index-<digest>-<stamp>`, whole,
    then `<version>/index` pointed at it in one step; the replaced index directory is removed."""
    payload = bytes(faiss.serialize_index(built.index))
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float32))
    info = {
        "factory": built.factory, "params": built.params, "recall": built.recall,
        "dimension": built.index.d, "count": built.index.ntotal,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "embeddings_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(), **extra,
    }  # fmt: skip
    name = f"index-{info['sha256'][:12]}-{artifacts.stamp()}"
    before = artifacts.target(version, artifacts.INDEX)
    with artifacts.staging(version) as staged:
        for file, data in ((INDEX, payload), (EMBEDDINGS, buffer.getvalue()),
                           (INFO, json.dumps(info, indent=2).encode())):  # fmt: skip
            atomic.write(data, staged / file)
        os.rename(staged, version / name)
    artifacts.point(version, artifacts.INDEX, name)
    if before is not None and before.name != name:
        shutil.rmtree(before, ignore_errors=True)
    return info


def folder(version: Path) -> Path:
    """The version's current index directory; an error naming the command that makes one."""
    found = artifacts.target(version, artifacts.INDEX)
    if found is None:
        raise TTRError(f"{version} has no index; run `ttr index`")
    return found


def load(version: Path) -> tuple[faiss.Index, dict]:
    """The version's index, checked against the digest in its index.json."""
    where = folder(version)
    info = json.loads((where / INFO).read_text())
    payload = (where / INDEX).read_bytes()
    if hashlib.sha256(payload).hexdigest() != info["sha256"]:
        raise TTRError(f"{where / INDEX} does not match the sha256 in {INFO}")
    return faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8)), info


def embeddings(version: Path) -> np.ndarray:
    """The item embeddings the version's index was built from, row r for index id r."""
    where = folder(version)
    payload = (where / EMBEDDINGS).read_bytes()
    expected = json.loads((where / INFO).read_text()).get("embeddings_sha256")
    if hashlib.sha256(payload).hexdigest() != expected:
        raise TTRError(f"{where / EMBEDDINGS} does not match the sha256 in {INFO}")
    return np.load(io.BytesIO(payload))


def stored_ids(index: faiss.Index) -> np.ndarray:
    """Every id the index holds (IDMap or IVF)."""
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map)
    invlists = faiss.extract_index_ivf(index).invlists
    parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
             for i in range(invlists.nlist) if invlists.list_size(i)]  # fmt: skip
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
