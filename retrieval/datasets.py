"""Named datasets: each is a spec shipped in `retrieval/specs/`, plus the step that gets its files.

    ml-100k, ml-1m, ml-latest  raw MovieLens files (downloaded from GroupLens when missing,
                               checked against their MD5), converted into the spec's parquet
                               tables: genre flags into lists, poster files into paths
    amazon-hin                 the raw files read as they are, by their spec
    synthetic                  generated with planted structure, written as the spec's tables

Everything after this step is the path any user's own spec takes (`retrieval.reader`).
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
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from retrieval import atomic, spec
from retrieval.errors import TTRError
from retrieval.reader import Dataset, read

SPECS = Path(__file__).resolve().parent / "specs"
GROUPLENS = "https://files.grouplens.org/datasets/movielens"
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip
POSTER_SUFFIXES = (".jpg", ".jpeg", ".png")
Tables = dict[str, pd.DataFrame]  # "interactions", "users", "items" as the spec names them


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
RAW = {"amazon-hin": ("user_item.dat", "item_brand.dat", "item_category.dat", "item_view.dat")}


def default_data_dir(name: str) -> Path:
    """`$TTR_DATA_DIR/<name>`, else the user cache directory."""
    root = os.environ.get("TTR_DATA_DIR")
    if root:
        return Path(root).expanduser() / name
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ttr" / name


def load(name: str, data_dir: Path | None, out_dir: Path,
         progress: Callable[[int], object] | None = None) -> Dataset:  # fmt: skip
    """Named dataset `name` read through its spec; MovieLens files are found in `data_dir`
    (downloaded there when missing, `progress` called with each chunk's bytes) and converted
    into `out_dir`."""
    if name not in CONVERTERS and name not in RAW:
        raise TTRError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, "
                       "or describe your own with --spec")  # fmt: skip
    data_dir = Path(data_dir) if data_dir else default_data_dir(name)
    if name in RAW:
        missing = [f for f in RAW[name] if not (data_dir / f).is_file()]
        if missing:
            raise TTRError(f"{name}: missing {', '.join(missing)} in {data_dir}; pass --data-dir "
                           "or set TTR_DATA_DIR (this dataset is not downloaded)")  # fmt: skip
        return read(spec.load(SPECS / f"{name}.yaml", data_dir))
    ensure_present(name, data_dir, progress)
    try:
        tables = CONVERTERS[name](data_dir)
    except (ValueError, KeyError, IndexError, pd.errors.ParserError) as err:
        raise TTRError(f"{name}: malformed data in {data_dir}: {err}") from err
    return read_tables(tables, spec_file(name, tables), out_dir)


def spec_file(name: str, tables: Tables) -> Path:
    """The shipped spec of a converted dataset (ml-1m's official ratings carry times and no
    split, unlike its fixed benchmark split)."""
    if name == "ml-1m" and "timestamp" in tables["interactions"]:
        return SPECS / "ml-1m-ratings.yaml"
    return SPECS / f"{name}.yaml"


def read_tables(tables: Tables, spec_path: Path, out_dir: Path) -> Dataset:
    """`tables` written as parquet into `out_dir` (atomically), then read through the spec."""
    atomic.write_all({out_dir / f"{name}.parquet": pa.Table.from_pandas(frame, preserve_index=False)
                      for name, frame in tables.items()})  # fmt: skip
    return read(spec.load(spec_path, out_dir))


def ensure_present(name: str, data_dir: Path,
                   progress: Callable[[int], object] | None = None) -> None:  # fmt: skip
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
        download(ARCHIVES[name], data_dir, progress)
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


def download(archive: Archive, data_dir: Path, progress: Callable[[int], object] | None = None,
             ) -> None:  # fmt: skip
    """Fetch `archive` from GroupLens, verify its MD5, and extract it flat into `data_dir`."""
    url = f"{GROUPLENS}/{archive.zip_name}"
    with urllib.request.urlopen(url, timeout=60) as response:
        payload = _read_all(response, progress)
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


def _read_all(response: HTTPResponse, progress: Callable[[int], object] | None) -> bytes:
    chunks = []
    while chunk := response.read(1 << 20):
        chunks.append(chunk)
        if progress:
            progress(len(chunk))
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
    return titles.str.extract(r"\((\d{4})\)\s*$")[0].astype("float64")


def _posters(items: pd.DataFrame, data_dir: Path) -> list[str | None]:
    """Each item's poster file under `<data_dir>/posters/` (`<item_id>.jpg`, .jpeg or .png)."""
    folder = data_dir / "posters"
    found = {p.stem: str(p.resolve()) for suffix in reversed(POSTER_SUFFIXES)
             for p in (folder.glob(f"*{suffix}") if folder.is_dir() else [])}  # fmt: skip
    return [found.get(str(i)) for i in items["item_id"]]


def _plots(items: pd.DataFrame, data_dir: Path) -> pd.Series:
    path = data_dir / "plots.tsv"
    if not path.is_file():
        return pd.Series(pd.NA, index=items.index, dtype="string")
    plots = pd.read_csv(
        path, sep="\t", quoting=3, dtype={"item_id": "int64", "description": "string"}
    )
    return items["item_id"].map(plots.set_index("item_id")["description"]).astype("string")


def _movies(items: pd.DataFrame, data_dir: Path) -> pd.DataFrame:
    """The items table of a MovieLens spec: plots and posters found beside the files."""
    return items.assign(plot=_plots(items, data_dir), poster=_posters(items, data_dir))


def _ratings(inter: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": inter["user_id"], "item_id": inter["item_id"],
        "rating": inter["rating"].astype("float32"),
        "timestamp": pd.to_datetime(inter["ts"], unit="s", utc=True).dt.as_unit("us"),
    })  # fmt: skip


def convert_ml100k(data_dir: Path) -> Tables:
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
    movies = pd.DataFrame({
        "item_id": items["item_id"], "title": items["title"].astype("string"),
        "genres": [[g for g, f in zip(genres, row, strict=True) if f] for row in flags],
        "year": _year(items["title"].fillna("")),
    })  # fmt: skip
    return {"interactions": _ratings(inter), "users": _people(users), "items": _movies(movies,
            data_dir)}  # fmt: skip


def _people(users: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": users["user_id"].astype("int64"), "age": users["age"].astype("float64"),
        "gender": users["gender"].astype("string"),
        "occupation": users["occupation"].astype("string"),
        "zip_prefix": users["zip"].astype("string").str[:3],
    })  # fmt: skip


def convert_ml1m(data_dir: Path) -> Tables:
    columns = ["user_id", "gender", "age", "occ", "zip"]
    users = _table(data_dir / "users.dat", "::", columns, ints=["user_id", "age", "occ"], dtype=str)
    users["occupation"] = users["occ"].map(dict(enumerate(ML1M_OCCUPATIONS)))
    columns = ["item_id", "title", "genres"]
    movies = _table(data_dir / "movies.dat", "::", columns, ints=["item_id"],
                    encoding="latin-1", dtype=str)  # fmt: skip
    items = pd.DataFrame({
        "item_id": movies["item_id"], "title": movies["title"].astype("string"),
        "genres": [gs.split("|") if gs else [] for gs in movies["genres"].fillna("")],
        "year": _year(movies["title"].fillna("")),
    })  # fmt: skip
    return {"interactions": _ml1m_interactions(data_dir), "users": _people(users),
            "items": _movies(items, data_dir)}  # fmt: skip


def _ml1m_interactions(data_dir: Path) -> pd.DataFrame:
    path = data_dir / "ratings.dat"
    if path.is_file():
        columns = ["user_id", "item_id", "rating", "ts"]
        return _ratings(_table(path, "::", columns, ints=columns))
    path = data_dir / "interactions.tsv"
    columns = ["user_id", "item_id", "split"]
    inter = _table(path, "\t", columns, ints=["user_id", "item_id"], skiprows=1, dtype=str)
    _reject(~inter["split"].isin(["train", "test"]), inter["split"], path, 2)
    return inter


def convert_ml_latest(data_dir: Path) -> Tables:
    path = data_dir / "ratings.csv"
    columns = ["user_id", "item_id", "rating", "ts"]
    inter = _table(path, ",", columns, ints=["user_id", "item_id", "ts"], skiprows=1)
    rating = pd.to_numeric(inter["rating"], errors="coerce")
    _reject(rating.isna(), inter["rating"], path, 2)
    inter["rating"] = rating
    path = data_dir / "movies.csv"
    if not path.is_file():
        raise TTRError(f"missing file {path}")
    movies = pd.read_csv(path, dtype={"title": "string", "genres": "string"})
    if list(movies.columns[:3]) != ["movieId", "title", "genres"]:
        raise TTRError(f"malformed header in {path}: expected movieId,title,genres")
    movies = _ints(movies.rename(columns={"movieId": "item_id"}), ["item_id"], path, 2)
    genres = (
        movies["genres"]
        .fillna("")
        .map(lambda s: [g for g in s.split("|") if g and g != "(no genres listed)"])
    )
    items = pd.DataFrame({
        "item_id": movies["item_id"], "title": movies["title"].str.strip(), "genres": genres,
        "year": _year(movies["title"].fillna("")),
    })  # fmt: skip
    return {"interactions": _ratings(inter), "items": items}


CONVERTERS: dict[str, Callable[[Path], Tables]] = {
    "ml-100k": convert_ml100k,
    "ml-1m": convert_ml1m,
    "ml-latest": convert_ml_latest,
}
DATASETS = [*CONVERTERS, *RAW, "synthetic"]
