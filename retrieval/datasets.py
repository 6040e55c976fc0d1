"""Raw MovieLens datasets read into one canonical shape, downloaded from GroupLens when missing.

A `Dataset` holds three frames:
  interactions: user_id, item_id, rating (NaN when implicit), timestamp (UTC), split ("" if none)
  users:        user_id, age, gender, occupation, zip_prefix (nulls where a dataset has none)
  items:        item_id, title, genres (list of names), year, plot, has_poster
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPResponse
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from retrieval.errors import TTRError

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
ML1M_FIXED_TIME = pd.Timestamp("2003-03-01", tz="UTC")  # ml-1m interactions.tsv has no times
ML1M_OCCUPATIONS = [
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
]


@dataclass
class Dataset:
    name: str
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    genres: list[str]  # the order of every genre vector
    truth: dict[str, np.ndarray] = field(default_factory=dict)  # planted structure (synthetic)
    source: Path | None = None  # the directory of the raw files (posters live under it)


@dataclass(frozen=True)
class Archive:
    zip_name: str  # file under GROUPLENS
    md5: str | None  # pinned checksum; None: verify against the published .md5 file
    required: tuple[str, ...]  # files that must exist after extraction


ARCHIVES = {
    "ml-100k": Archive(
        "ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", ("u.data", "u.item", "u.user")
    ),
    "ml-1m": Archive(
        "ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", ("ratings.dat", "movies.dat", "users.dat")
    ),
    "ml-latest": Archive("ml-latest-small.zip", None, ("ratings.csv", "movies.csv")),
}


def default_data_dir(name: str) -> Path:
    """`$TTR_DATA_DIR/<name>`, else the user cache directory."""
    root = os.environ.get("TTR_DATA_DIR")
    if root:
        return Path(root).expanduser() / name
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ttr" / name


def load(name: str, data_dir: Path | None = None) -> Dataset:
    """Read dataset `name` from `data_dir`, downloading a missing MovieLens archive first."""
    if name not in LOADERS:
        raise TTRError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    data_dir = Path(data_dir) if data_dir else default_data_dir(name)
    ensure_present(name, data_dir)
    try:
        return LOADERS[name](data_dir)
    except (ValueError, KeyError, IndexError, pd.errors.ParserError) as err:
        raise TTRError(f"{name}: malformed data in {data_dir}: {err}") from err


def ensure_present(name: str, data_dir: Path) -> None:
    """Check the raw files exist; download and verify the official archive if they do not."""
    missing = missing_files(name, data_dir)
    if not missing:
        return
    if os.environ.get("TTR_OFFLINE"):
        raise TTRError(
            f"{name}: missing {', '.join(missing)} in {data_dir} (TTR_OFFLINE is set: "
            "no download); pass --data-dir or set TTR_DATA_DIR"
        )
    try:
        download(ARCHIVES[name], data_dir)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise TTRError(
            f"{name}: missing {', '.join(missing)} in {data_dir}, and the download from "
            f"GroupLens failed ({err}); pass --data-dir or set TTR_DATA_DIR"
        ) from err
    if missing_files(name, data_dir):
        raise TTRError(f"{name}: the downloaded archive lacks {', '.join(missing)}")


def missing_files(name: str, data_dir: Path) -> list[str]:
    if name == "ml-1m":  # either the official ratings or the fixed-split interactions
        ratings = ["ratings.dat", "interactions.tsv"]
        have = any((data_dir / f).is_file() for f in ratings)
        rest = [f for f in ("movies.dat", "users.dat") if not (data_dir / f).is_file()]
        return rest + ([] if have else ["ratings.dat (or interactions.tsv)"])
    return [f for f in ARCHIVES[name].required if not (data_dir / f).is_file()]


def download(archive: Archive, data_dir: Path) -> None:
    """Fetch `archive` from GroupLens, verify its MD5, and extract it flat into `data_dir`."""
    url = f"{GROUPLENS}/{archive.zip_name}"
    with urllib.request.urlopen(url, timeout=60) as response:
        payload = _read_with_progress(response, archive.zip_name)
    expected = archive.md5 or published_md5(url)
    actual = hashlib.md5(payload).hexdigest()
    if actual != expected:
        raise TTRError(f"checksum mismatch for {url}: got {actual}, expected {expected}")
    data_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        for member in zf.infolist():
            if not member.is_dir():
                target = data_dir / Path(member.filename).name
                target.write_bytes(zf.read(member))


def _read_with_progress(response: HTTPResponse, name: str) -> bytes:
    size = int(response.headers.get("Content-Length") or 0) or None
    chunks = []
    with tqdm(total=size, desc=f"downloading {name}", unit="B", unit_scale=True) as bar:
        while chunk := response.read(1 << 20):
            chunks.append(chunk)
            bar.update(len(chunk))
    return b"".join(chunks)


def published_md5(url: str) -> str:
    with urllib.request.urlopen(url + ".md5", timeout=30) as response:
        text = response.read().decode("ascii")
    match = re.search(r"[0-9a-f]{32}", text)
    if not match:
        raise TTRError(f"no checksum found at {url}.md5")
    return match.group(0)


def _read(path: Path, sep: str, names: list[str], **kwargs) -> pd.DataFrame:
    """Read a delimited file strictly: a row with the wrong field count is an error."""
    try:
        engine = "c" if len(sep) == 1 else "python"
        frame = pd.read_csv(
            path, sep=sep, names=names, header=None, engine=engine, on_bad_lines="error", **kwargs
        )
    except FileNotFoundError as err:
        raise TTRError(f"missing file {path}") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise TTRError(f"malformed row in {path}: {err}") from err
    if frame.isna().all(axis=1).any():
        raise TTRError(f"malformed row in {path}: an empty line")
    return frame


def _table(path: Path, sep: str, names: list[str], ints: list[str], **kwargs) -> pd.DataFrame:
    """`_read`, then the `ints` columns checked and cast to int64."""
    return _ints(_read(path, sep, names, **kwargs), ints, path, 1 + kwargs.get("skiprows", 0))


def _ints(frame: pd.DataFrame, columns: list[str], path: Path, first_line: int) -> pd.DataFrame:
    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce")
        _reject(values.isna() | (values != values.round()), frame[col], path, first_line)
        frame[col] = values.astype("int64")
    return frame


def _reject(bad: pd.Series, column: pd.Series, path: Path, first_line: int) -> None:
    """An error naming the file, line, column and value of the first bad cell, if any."""
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise TTRError(
            f"malformed line {first_line + i} in {path}: {column.name}={column.iloc[i]!r}"
        )


def _year(titles: pd.Series) -> pd.Series:
    return titles.str.extract(r"\((\d{4})\)\s*$")[0].astype("Int64")


def _posters(items: pd.DataFrame, data_dir: Path) -> pd.Series:
    folder = data_dir / "posters"
    have = {p.stem for p in folder.glob("*.jpg")} if folder.is_dir() else set()
    return items["item_id"].astype(str).isin(have)


def _plots(items: pd.DataFrame, data_dir: Path) -> pd.Series:
    path = data_dir / "plots.tsv"
    if not path.is_file():
        return pd.Series(pd.NA, index=items.index, dtype="string")
    plots = pd.read_csv(
        path, sep="\t", quoting=3, dtype={"item_id": "int64", "description": "string"}
    )
    return items["item_id"].map(plots.set_index("item_id")["description"]).astype("string")


def _seconds(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, unit="s", utc=True).astype("datetime64[us, UTC]")


def _check_refs(inter: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, name: str) -> None:
    unknown_items = ~inter["item_id"].isin(items["item_id"])
    if unknown_items.any():
        raise TTRError(
            f"{name}: {int(unknown_items.sum())} interactions name items missing "
            f"from the catalogue (first: {int(inter['item_id'][unknown_items].iloc[0])})"
        )
    unknown_users = ~inter["user_id"].isin(users["user_id"])
    if unknown_users.any():
        raise TTRError(f"{name}: {int(unknown_users.sum())} interactions name unknown users")


def load_ml100k(data_dir: Path) -> Dataset:
    genres = (
        [g.split("|")[0] for g in (data_dir / "u.genre").read_text().split("\n") if g.strip()]
        if (data_dir / "u.genre").is_file()
        else ML100K_GENRES
    )
    columns = ["user_id", "item_id", "rating", "ts"]
    inter = _table(data_dir / "u.data", "\t", columns, ints=columns)
    columns = ["user_id", "age", "gender", "occupation", "zip"]
    users = _table(data_dir / "u.user", "|", columns, ints=["user_id", "age"], dtype=str)
    columns = ["item_id", "title", "release", "video", "url", *genres]
    items = _table(data_dir / "u.item", "|", columns, ints=["item_id", *genres],
                   encoding="latin-1", dtype=str)  # fmt: skip
    flags = items[genres].to_numpy(dtype=bool)
    out_items = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "title": items["title"].astype("string"),
            "genres": [[g for g, f in zip(genres, row, strict=True) if f] for row in flags],
            "year": _year(items["title"].fillna("")),
        }
    )
    return _finish("ml-100k", data_dir, inter, users, out_items, genres)


def _finish(
    name: str,
    data_dir: Path,
    inter: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    genres: list[str],
) -> Dataset:
    """The canonical frames, with plots and posters found beside the files, references checked."""
    items = items.assign(plot=_plots(items, data_dir), has_poster=_posters(items, data_dir))
    users = users.reindex(columns=["user_id", "age", "gender", "occupation", "zip"])
    users = pd.DataFrame(
        {
            "user_id": users["user_id"].astype("int64"),
            "age": users["age"].astype("Int64"),
            "gender": users["gender"].astype("string"),
            "occupation": users["occupation"].astype("string"),
            "zip_prefix": users["zip"].astype("string").str[:3],
        }
    )
    interactions = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype("int64"),
            "item_id": inter["item_id"].astype("int64"),
            "rating": inter["rating"].astype("float32") if "rating" in inter else np.float32("nan"),
            "timestamp": inter["timestamp"] if "timestamp" in inter else _seconds(inter["ts"]),
            "split": inter["split"].astype(str) if "split" in inter else "",
        }
    )
    _check_refs(interactions, users, items, name)
    return Dataset(
        name, interactions, users, items.reset_index(drop=True), list(genres),
        source=data_dir.resolve(),
    )  # fmt: skip


def load_ml1m(data_dir: Path) -> Dataset:
    columns = ["user_id", "gender", "age", "occ", "zip"]
    users = _table(data_dir / "users.dat", "::", columns, ints=["user_id", "age", "occ"], dtype=str)
    users["occupation"] = users["occ"].map(dict(enumerate(ML1M_OCCUPATIONS)))
    columns = ["item_id", "title", "genres"]
    movies = _table(data_dir / "movies.dat", "::", columns, ints=["item_id"],
                    encoding="latin-1", dtype=str)  # fmt: skip
    genres = sorted({g for gs in movies["genres"].fillna("") for g in gs.split("|") if g})
    items = pd.DataFrame(
        {
            "item_id": movies["item_id"],
            "title": movies["title"].astype("string"),
            "genres": [gs.split("|") if gs else [] for gs in movies["genres"].fillna("")],
            "year": _year(movies["title"].fillna("")),
        }
    )
    return _finish("ml-1m", data_dir, _ml1m_interactions(data_dir), users, items, genres)


def _ml1m_interactions(data_dir: Path) -> pd.DataFrame:
    path = data_dir / "ratings.dat"
    if path.is_file():
        columns = ["user_id", "item_id", "rating", "ts"]
        return _table(path, "::", columns, ints=columns)
    path = data_dir / "interactions.tsv"
    columns = ["user_id", "item_id", "split"]
    inter = _table(path, "\t", columns, ints=["user_id", "item_id"], skiprows=1, dtype=str)
    _reject(~inter["split"].isin(["train", "test"]), inter["split"], path, 2)
    return inter.assign(timestamp=ML1M_FIXED_TIME.as_unit("us"))


def load_ml_latest(data_dir: Path) -> Dataset:
    path = data_dir / "ratings.csv"
    columns = ["user_id", "item_id", "rating", "ts"]
    inter = _table(path, ",", columns, ints=["user_id", "item_id", "ts"], skiprows=1)
    rating = pd.to_numeric(inter["rating"], errors="coerce")
    _reject(rating.isna(), inter["rating"], path, 2)
    inter["rating"] = rating
    path = data_dir / "movies.csv"
    movies = pd.read_csv(path, dtype={"title": "string", "genres": "string"})
    if list(movies.columns[:3]) != ["movieId", "title", "genres"]:
        raise TTRError(f"malformed header in {path}: expected movieId,title,genres")
    movies = _ints(movies.rename(columns={"movieId": "item_id"}), ["item_id"], path, 2)
    split = (
        movies["genres"]
        .fillna("")
        .map(lambda s: [g for g in s.split("|") if g and g != "(no genres listed)"])
    )
    genres = sorted({g for gs in split for g in gs})
    items = pd.DataFrame(
        {
            "item_id": movies["item_id"],
            "title": movies["title"].str.strip(),
            "genres": split,
            "year": _year(movies["title"].fillna("")),
        }
    )
    users = pd.DataFrame({"user_id": np.unique(inter["user_id"])})
    return _finish("ml-latest", data_dir, inter, users, items, genres)


ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]

LOADERS: dict[str, Callable[[Path], Dataset]] = {
    "ml-100k": load_ml100k,
    "ml-1m": load_ml1m,
    "ml-latest": load_ml_latest,
}
DATASETS = [*LOADERS, "synthetic"]
