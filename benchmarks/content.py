"""Content-encoding benchmark: `ttr content` on a real catalogue, against the work it cannot avoid.

    python benchmarks/content.py --dataset ml-1m --data-dir ../shared/data/ml-1m [--out FILE]

Steps, in one run: the dataset's offline tables are written to a temporary store; then
1. baselines: the hashed bag of words the text encoder replaces (title, genres, plot), and reading,
   decoding and resizing every poster (the floor under any image encoder);
2. each encoder alone over the whole catalogue (items/s);
3. `ttr content`'s own path (`content.compute`): both encoders, stored, timed end to end.
Prints a table and writes JSON with the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch

from retrieval import content, datasets, offline
from towers.inputs import tokens

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, *args) -> float:
    began = time.perf_counter()
    fn(*args)
    return time.perf_counter() - began


def batched(encoder, inputs: list, size: int) -> None:
    for start in range(0, len(inputs), size):
        encoder(inputs[start : start + size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=content.ContentConfig.batch)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "content.json"))
    args = parser.parse_args()
    ds = datasets.load(args.dataset, args.data_dir)
    texts = content.item_text(ds.items).tolist()
    posters = [p for p in (content.poster_path(ds.source, int(i)) for i in ds.items["item_id"])
               if p is not None]  # fmt: skip
    cfg = content.ContentConfig(batch=args.batch)
    text_encoder = content.TextEncoder()
    image_encoder = content.ImageEncoder(cfg.image_height, cfg.image_width)
    rows = {
        "text: hashed words (baseline)": (len(texts), timed(tokens, ds.items["title"])),
        "text: all-MiniLM-L6-v2": (len(texts), timed(batched, text_encoder, texts, args.batch)),
        "image: decode + resize (baseline)": (
            len(posters),
            timed(lambda: [image_encoder.pixels(p) for p in posters]),
        ),
        "image: EfficientNet-Lite0": (
            len(posters),
            timed(batched, image_encoder, posters, args.batch),
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        offline_dir = Path(tmp)
        offline.write(offline.build(ds), offline_dir)
        began = time.perf_counter()
        done = content.compute(offline_dir, cfg)
        end_to_end = time.perf_counter() - began
    print(f"{'step':36s} {'items':>7s} {'seconds':>9s} {'items/s':>9s}")
    for name, (n, seconds) in rows.items():
        print(f"{name:36s} {n:>7,d} {seconds:>9.2f} {n / seconds:>9,.0f}")
    print(f"{'ttr content (both, stored)':36s} {done.text + done.image:>7,d} {end_to_end:>9.2f}")
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version()},
        "dataset": args.dataset, "items": len(ds.items), "posters": len(posters),
        "steps": {name: {"items": n, "seconds": s, "items_per_s": n / s}
                  for name, (n, s) in rows.items()},
        "ttr_content_seconds": end_to_end,
        "computed": {"text": done.text, "image": done.image},
        "image_network_over_decode": rows["image: EfficientNet-Lite0"][1]
        / rows["image: decode + resize (baseline)"][1],
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
