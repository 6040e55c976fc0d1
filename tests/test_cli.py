"""The `ttr` CLI: bad input is one line on stderr, a non-zero exit, and nothing stored changes."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import need_data
from test_datasets import write_ml_latest

from retrieval.cli import run


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("TTR_OFFLINE", "1")  # a missing file must not turn into a download here


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def stored(repo, tmp_path) -> Path:
    """A repository already holding a small dataset, applied and materialized."""
    raw = write_ml_latest(tmp_path / "raw")
    for argv in (
        ["data", "--dataset", "ml-latest", "--data-dir", str(raw)],
        ["apply"],
        ["materialize"],
    ):
        assert run([*argv, "--repo", str(repo)]) == 0
    return repo


def one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    assert run(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "rows/s" not in line]  # progress bars also use stderr
    assert len(err) == 1 and err[0].startswith("ttr: error: "), err
    for fragment in fragments:
        assert fragment in err[0]
    return err[0]


def corrupt(src: Path, dest: Path, name: str, line: int, text: str) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("posters"))
    lines = (dest / name).read_bytes().split(b"\n")
    lines[line] = text.encode()
    (dest / name).write_bytes(b"\n".join(lines))
    return dest


def test_unknown_dataset(stored, capsys):
    before = fingerprint(stored / "data")
    one_line_error(
        capsys, ["data", "--dataset", "ml-5m", "--repo", str(stored)], "ml-5m", "ml-100k"
    )
    assert fingerprint(stored / "data") == before


def test_missing_file_names_it_and_where_it_looked(stored, tmp_path, capsys):
    raw = write_ml_latest(tmp_path / "broken")
    (raw / "movies.csv").unlink()
    before = fingerprint(stored / "data")
    argv = ["data", "--dataset", "ml-latest", "--data-dir", str(raw), "--repo", str(stored)]
    one_line_error(capsys, argv, "movies.csv", str(raw))
    assert fingerprint(stored / "data") == before


def test_malformed_row_names_file_and_row(stored, tmp_path, capsys):
    raw = corrupt(
        need_data("ml-100k"), tmp_path / "bad", "u.data", 41, "196\t242\tthree\t881250949"
    )
    before = fingerprint(stored / "data")
    argv = ["data", "--dataset", "ml-100k", "--data-dir", str(raw), "--repo", str(stored)]
    one_line_error(capsys, argv, "u.data", "line 42", "rating")
    assert fingerprint(stored / "data") == before


def test_malformed_split_in_ml1m(tmp_path, repo, capsys):
    raw = tmp_path / "ml-1m"
    raw.mkdir()
    src = need_data("ml-1m")
    for name in ("users.dat", "movies.dat"):
        shutil.copy(src / name, raw / name)
    (raw / "interactions.tsv").write_text(
        "user_id\tmovie_id\tsplit\n1\t1193\ttrain\n1\t661\tvalid\n"
    )
    argv = ["data", "--dataset", "ml-1m", "--data-dir", str(raw), "--repo", str(repo)]
    one_line_error(capsys, argv, "interactions.tsv", "line 3", "valid")


def test_an_item_outside_the_catalogue_is_counted_and_dropped(tmp_path, repo, capsys):
    raw = write_ml_latest(tmp_path / "raw")
    with (raw / "ratings.csv").open("a") as f:
        f.write("3,999,4.0,1000000001\n")
    argv = ["data", "--dataset", "ml-latest", "--data-dir", str(raw), "--repo", str(repo)]
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "rows naming an item not in items.parquet, dropped: 1" in out and "999" in out
    inter = pd.read_parquet(repo / "data" / "offline" / "interactions.parquet")
    assert len(inter) == 4 and 999 not in set(inter["item_id"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [["apply"], ["materialize"], ["features", "user", "1"]])
def test_unreachable_redis(stored, capsys, command):
    before = fingerprint(stored / "data")
    url = f"redis://127.0.0.1:{free_port()}"
    one_line_error(capsys, [*command, "--online-store", url, "--repo", str(stored)], url)
    assert fingerprint(stored / "data") == before


def test_features_of_unknown_entity_and_bad_id(stored, capsys):
    one_line_error(
        capsys, ["features", "user", "12345", "--repo", str(stored)], "no online features"
    )
    one_line_error(capsys, ["features", "user", "abc", "--repo", str(stored)], "not an integer")
    one_line_error(capsys, ["features", "movie", "1", "--repo", str(stored)], "user or item")


def test_features_print_json(stored, capsys):
    import json

    assert run(["features", "item", "2", "--repo", str(stored)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["title"] == "American President, The (1995)" and row["item_count"] == 1


def test_materialize_before_data_or_apply(repo, capsys):
    one_line_error(capsys, ["materialize", "--repo", str(repo)], "ttr data")


def test_no_repository(tmp_path, capsys):
    one_line_error(capsys, ["apply", "--repo", str(tmp_path / "nowhere")], "feature_store.yaml")


def test_installed_command_speaks_one_line(repo):
    """The console script itself: help lists every stage; an error is one line, no traceback."""
    ttr = Path(sys.executable).parent / "ttr"
    shown = subprocess.run([ttr, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("data", "apply", "materialize", "train", "train-ranker", "serve", "quickstart"):
        assert command in shown
    done = subprocess.run([ttr, "data", "--dataset", "nope", "--repo", str(repo)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_materialize_recreates_a_deleted_online_store(stored, capsys):
    (stored / "data" / "online_store.db").unlink()
    assert run(["materialize", "--repo", str(stored)]) == 0
    assert run(["features", "item", "1", "--repo", str(stored)]) == 0
    assert '"title": "Toy Story (1995)"' in capsys.readouterr().out


def test_boolean_flags_read_false_as_false(capsys):
    from retrieval.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "--refit", "false"]).refit is False
    assert parser.parse_args(["train", "--refit", "True"]).refit is True
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--refit", "maybe"])
    assert "'maybe' is not a boolean" in capsys.readouterr().err


def test_quickstart_hands_its_online_store_to_every_step_that_uses_one(tmp_path):
    from retrieval.cli import build_parser, quickstart_steps

    repo = ["--repo", str(tmp_path)]
    args = build_parser().parse_args(["quickstart", *repo, "--online-store", "redis://h:6379"])
    steps = quickstart_steps(args)
    assert [s[0] for s in steps] == ["data", "content", "apply", "materialize", "train", "index",
                                     "train-ranker", "evaluate", "recommend"]  # fmt: skip
    for step in steps:
        assert ("redis://h:6379" in step) == (step[0] not in ("data", "content"))
        build_parser().parse_args(step)  # every step takes the flags it is given
    plain = quickstart_steps(build_parser().parse_args(["quickstart", *repo]))
    assert not any("--online-store" in step for step in plain)
