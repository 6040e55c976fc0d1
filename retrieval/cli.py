"""`ttr`: each command parses its flags into a stage's inputs and calls one function."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from retrieval.content import ContentConfig
from retrieval.errors import TTRError
from retrieval.index import IndexConfig
from retrieval.offline import FeatureConfig
from retrieval.ranking import RankerTrainConfig
from retrieval.synthetic import SyntheticConfig
from retrieval.training import SplitConfig
from towers.train import TrainConfig

T = TypeVar("T")
CHECKOUT_REPO = Path(__file__).resolve().parent.parent / "feature_repo"


def default_repo() -> Path:
    """$TTR_REPO, else ./feature_repo, else the feature_repo of this checkout."""
    env = os.environ.get("TTR_REPO")
    if env:
        return Path(env)
    local = Path("feature_repo")
    return local if (local / "feature_store.yaml").is_file() else CHECKOUT_REPO


def cmd_data(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from retrieval import content, datasets, offline, store
    from retrieval.synthetic import generate

    prof = store.profile(args.repo)
    features = _config_from(FeatureConfig, args)
    began = time.perf_counter()
    if args.dataset == "synthetic":
        ds = generate(_config_from(SyntheticConfig, args))
    else:
        ds = datasets.load(args.dataset, Path(args.data_dir) if args.data_dir else None)
    before = prof.offline_dir / content.TABLE
    vectors = pq.read_table(before) if before.exists() else None
    with tqdm(total=len(offline.TABLES), desc="feature tables", unit=" tables") as bar:
        tables = offline.build(
            ds, features, lambda name: (bar.set_postfix_str(name), bar.update()), vectors
        )
    offline.write(tables, prof.offline_dir)
    counts = tables.meta["counts"]
    print(
        f"{ds.name}: {counts['interactions']:,} interactions, {counts['users']:,} users, "
        f"{counts['items']:,} items; feature rows: activity {tables.user_activity.num_rows:,}, "
        f"popularity {tables.item_popularity.num_rows:,}; {tables.meta['start'][:10]} to "
        f"{tables.meta['end'][:10]} -> {prof.offline_dir} ({time.perf_counter() - began:.1f} s)"
    )


def cmd_content(args: argparse.Namespace) -> None:
    from retrieval import content, store

    prof = store.profile(args.repo)
    source = Path(args.data_dir).expanduser().resolve() if args.data_dir else None
    done = content.compute(prof.offline_dir, _config_from(content.ContentConfig, args), source)
    if done.missing:
        print(content.absent_message(done.missing))
    print(f"{content.summary(done)} -> {prof.offline_dir / content.TABLE}")


def cmd_apply(args: argparse.Namespace) -> None:
    from retrieval import store

    prof = store.profile(args.repo, args.online_store)
    with contextlib.redirect_stdout(io.StringIO()):  # feast echoes every object; we summarise
        views = store.apply(prof)
    print(
        f"applied {len(views)} feature views ({', '.join(views)}) to {prof.repo} "
        f"[{store.describe(prof)}]"
    )


def cmd_materialize(args: argparse.Namespace) -> None:
    from retrieval import store

    prof = store.profile(args.repo, args.online_store)
    done = store.materialize(prof, incremental=args.incremental)
    for m in done:
        rate = m.rows / m.seconds if m.seconds else 0.0
        print(
            f"{m.view:16s} {m.rows:>10,} rows  {m.start:%Y-%m-%d} to {m.end:%Y-%m-%d}  "
            f"{rate:>9,.0f} rows/s"
        )
    total = sum(m.rows for m in done)
    print(
        f"materialized {total:,} entity rows into {store.describe(prof)} "
        f"in {sum(m.seconds for m in done):.1f} s"
    )


def cmd_features(args: argparse.Namespace) -> None:
    from retrieval import store

    prof = store.profile(args.repo, args.online_store)
    row = store.entity_features(prof, args.entity, args.id)
    lines = [f"  {json.dumps(k)}: {json.dumps(v, default=str)}" for k, v in row.items()]
    print("{\n" + ",\n".join(lines) + "\n}")


def cmd_train(args: argparse.Namespace) -> None:
    from retrieval import artifacts, store, training
    from towers.train import TrainConfig

    prof = store.profile(args.repo, args.online_store)
    cfg, split_cfg = _config_from(TrainConfig, args), _config_from(training.SplitConfig, args)
    version = training.run(prof, Path(args.artifacts), cfg, split_cfg)
    manifest = artifacts.manifest(version)
    metrics, k = manifest["metrics"], cfg.k
    text = "pretrained text" if manifest["vocab"]["text_dim"] else "hashed words"
    print(f"trained: best epoch {metrics['best_epoch']}, validation recall@{k} "
          f"{metrics[f'val_recall@{k}']:.4f}, NDCG@{k} {metrics[f'val_ndcg@{k}']:.4f}; "
          f"item inputs {'+'.join(manifest['item_inputs'])} (text: {text}) -> {version} "
          "(now latest)")  # fmt: skip


def cmd_index(args: argparse.Namespace) -> None:
    from retrieval import indexing, store

    prof = store.profile(args.repo, args.online_store)
    info = indexing.run(prof, Path(args.artifacts), _config_from(IndexConfig, args))
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items()) or "exact"
    print(
        f"indexed {info['count']:,} items x {info['dimension']} in {info['factory']} ({params}); "
        f"recall@{info['k']} vs exact {info['recall']:.3f}; model {info['model_version']}"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from retrieval import evaluate, store
    from retrieval.plots import recall_curves

    prof = store.profile(args.repo, args.online_store)
    root = Path(args.artifacts)
    draws = {} if args.cold_draws is None else {"cold_draws": args.cold_draws}
    cfg = evaluate.EvalConfig(retrain=not args.no_retrain, ablation=not args.no_ablation, **draws)
    result = evaluate.run(prof, root, cfg)
    print(evaluate.table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    default = Path(args.json).with_suffix(".png") if args.json else root / "recall_at_k.png"
    print(f"wrote {recall_curves(result, Path(args.plot or default), evaluate.K_VALUES)}")


def cmd_train_ranker(args: argparse.Namespace) -> None:
    from retrieval import artifacts, ranking, store

    prof = store.profile(args.repo, args.online_store)
    version = ranking.run(prof, Path(args.artifacts), _config_from(RankerTrainConfig, args))
    metrics = artifacts.manifest(version)["metrics"]
    print(f"trained ranker: best epoch {metrics['best_epoch']}, validation HR@10 "
          f"{metrics['val_hr@10']:.4f} -> {version} (now latest)")  # fmt: skip


def cmd_recommend(args: argparse.Namespace) -> None:
    from retrieval import store
    from retrieval.pipeline import Pipeline

    _check_k(args.k)
    pipeline = Pipeline(store.profile(args.repo, args.online_store), Path(args.artifacts))
    rec = pipeline.recommend(args.user_id, args.k, exclude_seen=not args.include_seen)
    print(f"user {args.user_id}: {rec.source}, model {pipeline.model_version}")
    print(f"{'#':>3s} {'item':>7s} {'score':>8s} {'retrieval':>9s}  title")
    for n, item in enumerate(rec.items, 1):
        retrieval = "" if item["retrieval_score"] is None else f"{item['retrieval_score']:.4f}"
        print(f"{n:>3d} {item['item_id']:>7d} {item['score']:>8.4f} {retrieval:>9s}  "
              f"{item['title']}")  # fmt: skip


def cmd_explain(args: argparse.Namespace) -> None:
    from retrieval import store
    from retrieval.explain import explain
    from retrieval.pipeline import Pipeline

    _check_k(args.k)
    prof = store.profile(args.repo, args.online_store)
    pipeline = Pipeline(prof, Path(args.artifacts))
    out = Path(args.out or f"explain_{args.user_id}.png")
    shown = explain(pipeline, prof.offline_dir, args.user_id, out, args.k)
    print(f"user {args.user_id}: {len(shown['history'])} recent items, "
          f"{len(shown['recommended'])} recommended ({shown['source']}) -> {out}")  # fmt: skip


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    os.environ["TTR_REPO"] = str(Path(args.repo).resolve())
    os.environ["TTR_ARTIFACTS"] = str(Path(args.artifacts).resolve())
    os.environ["TTR_THREADS"] = str(args.threads)
    if args.online_store:
        os.environ["TTR_ONLINE_STORE"] = args.online_store
    print(f"serving {args.artifacts} on http://{args.host}:{args.port} ({args.workers} workers, "
          f"{args.threads} pipeline thread{'s' if args.threads > 1 else ''} each)")  # fmt: skip
    uvicorn.run("retrieval.api:from_environment", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="warning")  # fmt: skip


def cmd_quickstart(args: argparse.Namespace) -> None:
    """The whole path on the embedded default: data, features, towers, index, ranker, metrics,
    one user's recommendations, and the command that serves them."""
    art = ["--artifacts", args.artifacts]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    steps = [
        ["data", "--dataset", args.dataset, *data],
        ["content"],
        ["apply"],
        ["materialize"],
        ["train", *art],
        ["index", *art],
        ["train-ranker", *art],
        ["evaluate", "--no-retrain", *art],
        ["recommend", str(args.user), *art],
    ]
    for step in steps:
        print(f"$ ttr {' '.join(step)}")
        _dispatch(build_parser().parse_args([*step, "--repo", str(args.repo)]))
    print(f"\nserve it: ttr serve --repo {args.repo} --artifacts {args.artifacts} --port 8000\n"
          f"then:     curl 'http://127.0.0.1:8000/recommend/{args.user}?k=10'")  # fmt: skip


def _check_k(k: int) -> None:
    if not 1 <= k <= 1000:
        raise TTRError(f"--k {k}: choose between 1 and 1000")


def _config_from(cls: type[T], args: argparse.Namespace) -> T:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag per field of a config dataclass; the dataclass holds the only copy of defaults."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        group.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=_boolean if isinstance(f.default, bool) else type(f.default),
            default=f.default,
            help=f"default: {f.default}",
        )


def _boolean(text: str) -> bool:
    """`--refit false` means false (argparse's `bool` would call any non-empty string true)."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use true or false")
    return value[text.lower()]


def _artifacts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifacts", default="artifacts", help="artifact root (default: artifacts/)"
    )


def _common(parser: argparse.ArgumentParser, online: bool = True) -> None:
    parser.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="the feature repository (default: ./feature_repo, else $TTR_REPO)",
    )
    if online:
        parser.add_argument(
            "--online-store",
            default=None,
            metavar="redis://HOST:PORT[/DB]",
            help="use Redis online (default: $TTR_ONLINE_STORE, else SQLite)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttr", description="Feature-store-backed two-tower retrieval."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("data", help="read a dataset into the offline store (parquet)")
    p.add_argument("--dataset", required=True, help="ml-100k, ml-1m, ml-latest or synthetic")
    p.add_argument(
        "--data-dir", default=None, help="raw files (default: $TTR_DATA_DIR/NAME, else a cache)"
    )
    _add_config_flags(p, FeatureConfig, "features")
    _add_config_flags(p, SyntheticConfig, "synthetic dataset")
    _common(p, online=False)
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("content", help="text and poster vectors from pretrained encoders")
    p.add_argument("--data-dir", default=None, help="raw files (default: where `ttr data` read)")
    _add_config_flags(p, ContentConfig, "content encoders")
    _common(p, online=False)
    p.set_defaults(func=cmd_content)
    p = sub.add_parser("apply", help="register the feature repository (feast apply, in process)")
    _common(p)
    p.set_defaults(func=cmd_apply)
    p = sub.add_parser("materialize", help="load the latest features into the online store")
    p.add_argument("--incremental", action="store_true", help="continue from each view's last run")
    _common(p)
    p.set_defaults(func=cmd_materialize)
    p = sub.add_parser("features", help="print one entity's online features as JSON")
    p.add_argument("entity", help="user or item")
    p.add_argument("id", help="the entity's integer id")
    _common(p)
    p.set_defaults(func=cmd_features)
    p = sub.add_parser("train", help="train both towers on point-in-time features; new version")
    _artifacts(p)
    _add_config_flags(p, TrainConfig, "training")
    _add_config_flags(p, SplitConfig, "split")
    _common(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("index", help="embed the catalogue with the latest item tower; FAISS index")
    _artifacts(p)
    _add_config_flags(p, IndexConfig, "index")
    _common(p)
    p.set_defaults(func=cmd_index)
    p = sub.add_parser("evaluate", help="full-ranking metrics on the test split, with baselines")
    _artifacts(p)
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument(
        "--plot",
        default=None,
        help="Recall@K curves as PNG (default: beside --json, else in --artifacts)",
    )
    p.add_argument(
        "--no-retrain",
        action="store_true",
        help="skip the ablation and the cold start (they retrain)",
    )
    p.add_argument(
        "--no-ablation",
        action="store_true",
        help="skip the ablation only (it retrains the towers once per set of item-tower inputs)",
    )
    p.add_argument(
        "--cold-draws",
        type=int,
        default=None,
        help="draws of held-out items the cold start averages over, each retraining the towers "
        "(default: 3)",
    )
    _common(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("train-ranker", help="train the NCF re-ranker on the towers' split")
    _artifacts(p)
    _add_config_flags(p, RankerTrainConfig, "ranker training")
    _common(p)
    p.set_defaults(func=cmd_train_ranker)
    p = sub.add_parser("recommend", help="one user's top k through the whole pipeline")
    p.add_argument("user_id", type=int, help="the user's integer id")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--include-seen", action="store_true", help="keep items the user has seen")
    _artifacts(p)
    _common(p)
    p.set_defaults(func=cmd_recommend)
    p = sub.add_parser("explain", help="a PNG of one user's recent items and top k, as posters")
    p.add_argument("user_id", type=int, help="the user's integer id")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", default=None, help="the PNG (default: explain_USER_ID.png)")
    _artifacts(p)
    _common(p)
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("serve", help="the recommendation API (FastAPI under uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument(
        "--threads", type=int, default=1, help="pipeline threads per process (more: a slow store)"
    )
    _artifacts(p)
    _common(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("quickstart", help="the whole path on one dataset, end to end")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--user", type=int, default=1)
    _artifacts(p)
    _common(p, online=False)
    p.set_defaults(func=cmd_quickstart)
    return parser


def _dispatch(args: argparse.Namespace) -> None:
    if getattr(args, "repo", None) is None:
        args.repo = default_repo()
    args.func(args)


def run(argv: list[str] | None = None) -> int:
    """Run one command; bad input becomes one line on stderr and exit status 1."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = build_parser().parse_args(argv)
    try:
        _dispatch(args)
    except TTRError as err:
        print(f"ttr: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ttr: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the last line of defence: one line, not a traceback
        if os.environ.get("TTR_DEBUG"):
            traceback.print_exc()
        print(
            f"ttr: error: {type(err).__name__}: {err} (TTR_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0


def main() -> None:
    code = run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown, where duckdb's bindings print spurious leak reports
