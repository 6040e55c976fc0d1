"""A small shop world with planted structure, written as a user's own files with a spec: string
ids (customers C0001.., SKUs like B00X4WHP5E), ISO-8601 times, every feature kind.

Customers and products fall in hidden product lines. A customer mostly buys their own line; the
line shows in the product's category, tags, price band, the words of its description and the
colour of its picture, and in the customer's country. Planted mistakes (an unknown product, a
duplicate row, an unparsable time, a short line) test what reading drops and reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

LINES = ("garden", "kitchen", "music", "sport")
COUNTRIES = ("DE", "FR", "JP", "BR")
COLOURS = ((60, 160, 60), (200, 120, 40), (120, 60, 200), (40, 120, 220))
SPEC = """\
name: shop
interactions:
  path: events.csv
  user_id: customer
  item_id: sku
  timestamp: ts
  rating: stars
users:
  path: customers.csv
  id: customer
  features:
    age: numeric
    country: categorical
items:
  path: products.csv
  id: sku
  title: name
  features:
    category: categorical
    tags: {kind: multi_categorical, separator: "|"}
    description: text
    image: image
    price: numeric
"""


def sku(i: int) -> str:
    return f"B{i:05d}X{(i * 7919) % 97:02d}"  # leading letters: never an integer


def write(folder: Path, customers: int = 120, products: int = 40, events: int = 3_000,
          seed: int = 0, mistakes: bool = True) -> Path:  # fmt: skip
    """The shop's files and spec under `folder`; returns the spec's path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    user_line = rng.integers(len(LINES), size=customers)
    item_line = np.arange(products) % len(LINES)
    _customers(folder, user_line, rng)
    _products(folder, item_line, rng)
    _events(folder, user_line, item_line, events, rng, mistakes)
    (folder / "shop.yaml").write_text(SPEC)
    return folder / "shop.yaml"


def planted(folder: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Each customer's and each product's hidden line, from the files written."""
    customers = pd.read_csv(folder / "customers.csv")
    products = pd.read_csv(folder / "products.csv")
    user = dict(zip(customers["customer"], customers["country"].map(COUNTRIES.index), strict=True))
    item = dict(zip(products["sku"], products["category"].map(LINES.index), strict=True))
    return user, item


def _customers(folder: Path, line: np.ndarray, rng: np.random.Generator) -> None:
    frame = pd.DataFrame({
        "customer": [f"C{u:04d}" for u in range(len(line))],
        "age": 20 + 10 * line + rng.integers(0, 8, len(line)),
        "country": [COUNTRIES[g] for g in line],
    })  # fmt: skip
    frame.to_csv(folder / "customers.csv", index=False)


def _products(folder: Path, line: np.ndarray, rng: np.random.Generator) -> None:
    rows = []
    for i, g in enumerate(line):
        image = f"images/{sku(i)}.png" if i % 4 != 3 else ""  # every fourth has no picture
        if image:
            picture(folder / image, int(g), i)
        rows.append({
            "sku": sku(i), "name": f"{LINES[g].title()} thing {i}", "category": LINES[g],
            "tags": f"{LINES[g]}|gift" if i % 2 else LINES[g],
            "description": f"A fine {LINES[g]} product, good for {LINES[g]} lovers.",
            "image": image, "price": round(5 + 20 * g + rng.random() * 5, 2),
        })  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "products.csv", index=False)


def picture(path: Path, line: int, seed: int) -> None:
    """Discs of the line's colour on a pale ground, at positions that vary per product."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (96, 96), (240, 240, 235))
    draw = ImageDraw.Draw(im)
    for _ in range(5):
        x, y = rng.integers(0, 70), rng.integers(0, 70)
        draw.ellipse([x, y, x + 24, y + 24], fill=COLOURS[line])
    im.save(path)


def _events(folder: Path, user_line: np.ndarray, item_line: np.ndarray, n: int,
            rng: np.random.Generator, mistakes: bool) -> None:  # fmt: skip
    users = rng.integers(len(user_line), size=n)
    own = rng.random(n) < 0.85
    same = [np.flatnonzero(item_line == g) for g in range(len(LINES))]
    items = np.where(own, [rng.choice(same[user_line[u]]) for u in users],
                     rng.integers(len(item_line), size=n))  # fmt: skip
    start = pd.Timestamp("2024-01-01", tz="UTC")
    times = start + pd.to_timedelta(np.sort(rng.integers(0, 90 * 86_400, size=n)), unit="s")
    lines = ["customer,sku,ts,stars"]
    for u, i, t in zip(users, items, times, strict=True):
        stars = 5 if item_line[i] == user_line[u] else 2
        lines.append(f"C{u:04d},{sku(int(i))},{t.isoformat()},{stars}")
    if mistakes:
        lines += [
            f"C0001,NOSUCHSKU,{start.isoformat()},4",  # an unknown product
            lines[1],  # a duplicate row
            f"C0002,{sku(1)},yesterday,4",  # an unparsable time
            f"C0003,{sku(2)}",  # a short line
        ]
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
