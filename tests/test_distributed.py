"""`ttr train --nproc 2`: two processes under DDP (gloo) train what one process trains, within
noise, and only one of them publishes."""

from __future__ import annotations

import pytest

from retrieval import artifacts
from retrieval.cli import run

WORLD = ["--users", "600", "--items", "300", "--interactions", "30000", "--groups", "6",
         "--affinity", "0.7"]  # fmt: skip
TRAIN = ["--epochs", "5", "--refit", "false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import copy_repo

    repo = copy_repo(tmp_path_factory.mktemp("ddp"))
    common = ["--repo", str(repo)]
    assert run(["data", "--dataset", "synthetic", *WORLD, *common]) == 0
    assert run(["apply", *common]) == 0
    out = {}
    for nproc in (1, 2):
        root = repo.parent / f"artifacts-{nproc}"
        argv = ["train", *TRAIN, "--nproc", str(nproc), "--artifacts", str(root), *common]
        assert run(argv) == 0
        out[nproc] = (root, artifacts.manifest(artifacts.trained(root)))
    return out


def test_two_processes_train_what_one_trains_within_noise(trained):
    (_, one), (_, two) = trained[1], trained[2]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["metrics"]["val_recall@20"] > 0.2  # popularity on this world: about 0.1
    assert two["metrics"]["val_recall@20"] == pytest.approx(one["metrics"]["val_recall@20"],
                                                            abs=0.03)  # fmt: skip
    losses = [[step["loss"] for step in m["metrics"]["history"]] for m in (one, two)]
    assert all(run[-1] < run[0] for run in losses)  # both learn, every process its share


def test_only_process_zero_publishes(trained):
    root, manifest = trained[2]
    versions = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    assert [v.name for v in versions] == [manifest["version"]]
