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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from retrieval import store
from retrieval.content import ContentConfig
from retrieval.errors import TTRError
from retrieval.index import IndexConfig
from retrieval.offline import FeatureConfig
from retrieval.ranking import RankerTrainConfig
from retrieval.reader import Dataset
from retrieval.serving import ServeConfig
from retrieval.synthetic import SyntheticConfig
from retrieval.training import SplitConfig
from towers.progress import Step
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


def artifacts_root(args: argparse.Namespace) -> Path:
    """--artifacts, else $TTR_ARTIFACTS, else `artifacts/` beside the feature repository (this
    checkout's `artifacts/` for its own repository), whatever the working directory."""
    chosen = args.artifacts or os.environ.get("TTR_ARTIFACTS")
    if chosen:
        return Path(chosen).expanduser().resolve()
    return Path(args.repo).expanduser().resolve().parent / "artifacts"


class Bars:
    """Draws what library code reports (`towers.progress.Step`): a bar per task, and its messages
    as lines."""

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}

    def __call__(self, step: Step) -> None:
        if step.message is not None:
            tqdm.write(step.message)
            return
        bar = self.bars.get(step.task)
        if bar is None:
            unit = f" {step.unit}" if step.unit else "it"
            bar = self.bars[step.task] = tqdm(total=step.total, desc=step.task, unit=unit,
                                              leave=False)  # fmt: skip
        bar.update(step.done - bar.n)
        if step.total is not None and step.done >= step.total:
            self.bars.pop(step.task).close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


@contextlib.contextmanager
def bars() -> Iterator[Bars]:
    drawn = Bars()
    try:
        yield drawn
    finally:
        drawn.close()


def read_dataset(args: argparse.Namespace, prof: store.Profile, progress: Bars) -> Dataset:
    """The dataset `ttr data` was pointed at: a spec (or RecBole atomic files), or a name."""
    from retrieval import datasets, reader, recbole, spec, synthetic

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else None
    if args.spec and args.dataset:
        raise TTRError("give --spec or --dataset, not both")
    if args.spec:
        path = Path(args.spec).expanduser()
        inter = recbole.find(path)
        if inter is not None:
            return reader.read(recbole.spec(inter))
        if not path.is_file():
            raise TTRError(f"no spec at {path} (a YAML file, or RecBole atomic files)")
        return reader.read(spec.load(path, data_dir))
    if not args.dataset:
        raise TTRError("say what to read: --spec FILE (your own data) or --dataset NAME")
    out_dir = prof.repo / "data" / "sources" / args.dataset
    if args.dataset == "synthetic":
        return synthetic.load(_config_from(SyntheticConfig, args), out_dir)
    return datasets.load(args.dataset, data_dir, out_dir, _downloads(progress))


def _downloads(progress: Bars) -> Callable[[int], object]:
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        progress(Step("downloading", done[0], None, "B"))

    return advance


def cmd_data(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from retrieval import content, offline

    prof = _profile(args)
    if prof.engine == "postgresql":
        store.ensure_registry_schema(prof)  # an unreachable server fails before any file changes
    features = _config_from(FeatureConfig, args)
    began = time.perf_counter()
    with bars() as progress:
        ds = read_dataset(args, prof, progress)
        before = prof.offline_dir / content.TABLE
        vectors = pq.read_table(before) if before.exists() else None
        tables = offline.build(ds, features, vectors)
        total, built = len(offline.TABLES), []

        def done(name: str) -> None:
            built.append(name)
            progress(Step("feature tables", len(built), total, "tables"))

        rows = offline.write(tables, prof.offline_dir, done)
        loaded = store.sync_offline(prof, [t for t in offline.TABLES if t != "interactions"])
    counts, meta = tables.meta["counts"], tables.meta
    for line in ds.report.lines:
        print(f"  dropped or missing: {line}")
    print(
        f"{ds.name}: {counts['interactions']:,} interactions, {counts['users']:,} users, "
        f"{counts['items']:,} items ({ds.schema.split} split); feature rows: activity "
        f"{rows['user_activity']:,}, popularity {rows['item_popularity']:,}; "
        f"{meta['start'][:10]} to {meta['end'][:10]} -> {prof.offline_dir} "
        f"({time.perf_counter() - began:.1f} s)"
    )
    if loaded:
        print(f"loaded {sum(loaded.values()):,} rows in {len(loaded)} tables into PostgreSQL "
              f"({prof.offline_store})")  # fmt: skip


def cmd_content(args: argparse.Namespace) -> None:
    from retrieval import content

    prof = _profile(args)
    with bars() as progress:
        done = content.compute(prof.offline_dir, _config_from(ContentConfig, args), progress)
    store.sync_offline(prof, ["item_vectors"])
    if done.missing:
        print(content.absent_message(done.missing))
    print(f"{content.summary(done)} -> {prof.offline_dir / content.TABLE}")


def cmd_apply(args: argparse.Namespace) -> None:
    prof = _profile(args)
    with contextlib.redirect_stdout(io.StringIO()):  # feast echoes every object; we summarise
        views = store.apply(prof)
    print(
        f"applied {len(views)} feature views ({', '.join(views)}) to {prof.repo} "
        f"[{store.describe(prof)}]"
    )


def cmd_materialize(args: argparse.Namespace) -> None:
    prof = _profile(args)
    with bars() as progress:
        done = store.materialize(prof, args.incremental, progress)
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
    prof = _profile(args)
    row = store.entity_features(prof, args.entity, args.id)
    lines = [f"  {json.dumps(k)}: {json.dumps(v, default=str)}" for k, v in row.items()]
    print("{\n" + ",\n".join(lines) + "\n}")


def cmd_train(args: argparse.Namespace) -> None:
    from towers import distributed

    if distributed.join_from_env():  # one of the processes torchrun started
        _train(args)
    elif args.nproc > 1:
        distributed.launch(_train, args.nproc, args)
    else:
        _train(args)


def _train(args: argparse.Namespace) -> None:
    """`ttr train` in this process (one of several where they train together: process 0 draws
    the bars, publishes and reports)."""
    from retrieval import artifacts, training
    from towers import distributed

    prof = _profile(args)
    cfg, split_cfg = _config_from(TrainConfig, args), _config_from(SplitConfig, args)
    with bars() if distributed.main() else contextlib.nullcontext() as progress:
        version = training.run(prof, artifacts_root(args), cfg, split_cfg, progress)
    if version is None:
        return
    manifest = artifacts.manifest(version)
    metrics, k = manifest["metrics"], cfg.k
    text = "pretrained text" if manifest["content"].get("text", {}).get("items") else "hashed words"
    print(f"trained: best epoch {metrics['best_epoch']}, validation recall@{k} "
          f"{metrics[f'val_recall@{k}']:.4f}, NDCG@{k} {metrics[f'val_ndcg@{k}']:.4f}; "
          f"item inputs {'+'.join(manifest['item_inputs'])} (text: {text}), "
          f"{manifest['processes']} process(es) -> {version} "
          "(now latest)")  # fmt: skip


def cmd_index(args: argparse.Namespace) -> None:
    from retrieval import indexing

    prof = _profile(args)
    info = indexing.run(prof, artifacts_root(args), _config_from(IndexConfig, args))
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items()) or "exact"
    print(
        f"indexed {info['count']:,} items x {info['dimension']} in {info['factory']} ({params}); "
        f"recall@{info['k']} vs exact {info['recall']:.3f}; model {info['model_version']}"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from retrieval import evaluate
    from retrieval.plots import recall_curves

    prof = _profile(args)
    root = artifacts_root(args)
    draws = {} if args.cold_draws is None else {"cold_draws": args.cold_draws}
    cfg = evaluate.EvalConfig(retrain=not args.no_retrain, ablation=not args.no_ablation, **draws)
    with bars() as progress:
        result = evaluate.run(prof, root, cfg, progress)
    print(evaluate.table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    default = Path(args.json).with_suffix(".png") if args.json else root / "recall_at_k.png"
    print(f"wrote {recall_curves(result, Path(args.plot or default), evaluate.K_VALUES)}")


def cmd_train_ranker(args: argparse.Namespace) -> None:
    from retrieval import artifacts, ranking

    prof = _profile(args)
    with bars() as progress:
        cfg = _config_from(RankerTrainConfig, args)
        version = ranking.run(prof, artifacts_root(args), cfg, progress)
    made = artifacts.manifest(version)
    metrics, chosen = made["metrics"], made["neighbours"]
    start = metrics["retrieval_order"]
    kept = (
        "the first-stage order (no epoch beat it)"
        if metrics["best_epoch"] == 0
        else (f"epoch {metrics['best_epoch']}")
    )
    first = (f"the cosine + {chosen['weight']:g} x the neighbours (lambda {chosen['lambda']:g})"
             if chosen["weight"] else "the cosine alone")  # fmt: skip
    print(f"trained ranker: first stage {first}; kept {kept}; validation recall@20 "
          f"{start['recall@20']:.4f} -> "
          f"{metrics['val_recall@20']:.4f}, NDCG@20 {start['ndcg@20']:.4f} -> "
          f"{metrics['val_ndcg@20']:.4f} -> {version}")  # fmt: skip


def cmd_recommend(args: argparse.Namespace) -> None:
    from retrieval.pipeline import Pipeline

    _check_k(args.k)
    pipeline = Pipeline.open(_profile(args), artifacts_root(args))
    user = _id(pipeline.parse_user, args.user_id)
    rec = pipeline.recommend(user, args.k, exclude_seen=not args.include_seen)
    print(f"user {user}: {rec.source}, model {pipeline.model_version}")
    print(f"{'#':>3s} {'item':>10s} {'chance':>7s} {'cosine':>7s} {'count':>7s}  title")
    for n, item in enumerate(rec.items, 1):
        chance, cosine = ("" if item[name] is None else f"{item[name]:.4f}"
                          for name in ("score", "retrieval_score"))  # fmt: skip
        print(f"{n:>3d} {item['item_id']!s:>10s} {chance:>7s} {cosine:>7s} "
              f"{item['popularity']:>7d}  {item['title']}")  # fmt: skip


def _id(parse: Callable[[str], object], text: str) -> object:
    try:
        return parse(text)
    except ValueError as err:
        raise TTRError(str(err)) from err


def cmd_explain(args: argparse.Namespace) -> None:
    from retrieval.explain import explain
    from retrieval.pipeline import Pipeline

    _check_k(args.k)
    prof = _profile(args)
    pipeline = Pipeline.open(prof, artifacts_root(args))
    user = _id(pipeline.parse_user, args.user_id)
    out = Path(args.out or artifacts_root(args) / f"explain_{user}.png")
    shown = explain(pipeline, prof.offline_dir, user, out, args.k)
    print(f"user {user}: {len(shown['history'])} recent items, "
          f"{len(shown['recommended'])} recommended ({shown['source']}) -> {out}")  # fmt: skip


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    settings = {
        "REPO": str(Path(args.repo).resolve()),
        "ARTIFACTS": str(artifacts_root(args)),
        "THREADS": args.threads,
        "QUEUE": args.queue,
        "DEADLINE": args.deadline,
    }
    if args.online_store:
        settings["ONLINE_STORE"] = args.online_store
    if args.offline_store:
        settings["OFFLINE_STORE"] = args.offline_store  # serving reads the registry there
    os.environ.update({f"TTR_{k}": str(v) for k, v in settings.items()})
    prof = _profile(args)
    admin = "on (TTR_ADMIN_TOKEN)" if os.environ.get("TTR_ADMIN_TOKEN") else "off"
    print(f"serving {settings['ARTIFACTS']} on http://{args.host}:{args.port} from "
          f"{store.describe(prof)} ({args.workers} worker{'s' * (args.workers > 1)}, "
          f"{args.threads} pipeline thread{'s' * (args.threads > 1)} each; /admin/reload "
          f"{admin})")  # fmt: skip
    uvicorn.run("retrieval.api:from_environment", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="info", access_log=True)  # fmt: skip


def cmd_quickstart(args: argparse.Namespace) -> None:
    """The whole path on the embedded default: data, features, towers, index, ranker, metrics,
    one user's recommendations, and the command that serves them."""
    began = time.perf_counter()
    for step in quickstart_steps(args):
        print(f"$ ttr {' '.join(step)}")
        start = time.perf_counter()
        _dispatch(build_parser().parse_args([*step, "--repo", str(args.repo)]))
        print(f"  ({time.perf_counter() - start:.0f} s)")
    print(f"\nthe whole path: {(time.perf_counter() - began) / 60:.1f} min")
    served = f" --online-store {args.online_store}" if args.online_store else ""
    print(f"\nserve it: ttr serve --repo {args.repo} --artifacts {artifacts_root(args)}{served} "
          "--port 8000\n"
          f"then:     open http://127.0.0.1:8000/?user={args.user} in a browser, or\n"
          f"          curl 'http://127.0.0.1:8000/recommend/{args.user}?k=10'")  # fmt: skip


def quickstart_steps(args: argparse.Namespace) -> list[list[str]]:
    """The commands `ttr quickstart` runs, in order, each with the stores it was given."""
    art = ["--artifacts", str(artifacts_root(args))]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    source = ["--spec", args.spec] if args.spec else ["--dataset", args.dataset]
    steps = [
        ["data", *source, *data],
        ["content"],
        ["apply"],
        ["materialize"],
        ["train", *art],
        ["index", *art],
        ["train-ranker", *art],
        ["evaluate", "--no-retrain", *art],
        ["recommend", str(args.user), *art],
    ]
    online = ["--online-store", args.online_store] if args.online_store else []
    offline = ["--offline-store", args.offline_store] if args.offline_store else []
    return [[*step, *offline] if step[0] in ("data", "content") else [*step, *online, *offline]
            for step in steps]  # fmt: skip


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
        "--artifacts", default=None, metavar="DIR",
        help="the artifact root (default: $TTR_ARTIFACTS, else artifacts/ beside the repository)",
    )  # fmt: skip


def _profile(args: argparse.Namespace) -> store.Profile:
    """The stores a command's flags (else the environment) choose."""
    return store.profile(args.repo, getattr(args, "online_store", None),
                         offline_store=args.offline_store)  # fmt: skip


def _common(parser: argparse.ArgumentParser, online: bool = True) -> None:
    parser.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="the feature repository (default: ./feature_repo, else $TTR_REPO)",
    )
    parser.add_argument(
        "--offline-store", default=None,
        metavar="duckdb|spark[:MASTER]|postgresql://USER@HOST:PORT/DB",
        help="where the offline tables, the point-in-time joins and the registry live (default: "
        "$TTR_OFFLINE_STORE, else duckdb: DuckDB over parquet, a registry file; spark: Spark "
        "over the same parquet, e.g. spark:local[2])",
    )  # fmt: skip
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
    p.add_argument("--spec", default=None, metavar="FILE",
                   help="your own data: a dataset spec (YAML), or RecBole atomic files (a .inter "
                   "file or its folder)")  # fmt: skip
    names = "ml-100k, ml-1m, ml-latest, amazon-hin or synthetic"
    p.add_argument("--dataset", default=None, metavar="NAME", help=f"a named dataset: {names}")
    p.add_argument(
        "--data-dir", default=None, metavar="DIR",
        help="where a named dataset's raw files are (default: $TTR_DATA_DIR/NAME, else a cache "
        "it is downloaded to); with --spec, where its relative paths resolve (default: the "
        "spec's folder)",
    )  # fmt: skip
    _add_config_flags(p, FeatureConfig, "features")
    _add_config_flags(p, SyntheticConfig, "synthetic dataset")
    _common(p, online=False)
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("content", help="text and image vectors from pretrained encoders")
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
    p.add_argument("id", help="the entity's id (an integer or a string, as the data's)")
    _common(p)
    p.set_defaults(func=cmd_features)
    p = sub.add_parser("train", help="train both towers on point-in-time features; new version")
    _artifacts(p)
    _add_config_flags(p, TrainConfig, "training")
    p.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="train in N processes on this machine (DistributedDataParallel over gloo; on "
        "several machines start `ttr train` with torchrun instead: see README)",
    )  # fmt: skip
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
    p.add_argument("user_id", help="the user's id (an integer or a string, as the data's)")
    p.add_argument("--k", type=int, default=10, help="how many items (1-1000; default: 10)")
    p.add_argument("--include-seen", action="store_true", help="keep items the user has seen")
    _artifacts(p)
    _common(p)
    p.set_defaults(func=cmd_recommend)
    p = sub.add_parser("explain", help="a PNG of one user's recent items and top k, as tiles")
    p.add_argument("user_id", help="the user's id (an integer or a string, as the data's)")
    p.add_argument("--k", type=int, default=10, help="how many items (1-1000; default: 10)")
    p.add_argument("--out", default=None,
                   help="the PNG (default: explain_USER_ID.png in --artifacts)")  # fmt: skip
    _artifacts(p)
    _common(p)
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("serve", help="the recommendation API (FastAPI under uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8000, help="the port to listen on")
    p.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    p.add_argument(
        "--threads",
        type=int,
        default=ServeConfig.threads,
        help="pipeline threads per process (more only for a slow remote store)",
    )
    p.add_argument(
        "--queue",
        type=int,
        default=ServeConfig.queue,
        help="requests a process lets wait; past them, 503 with Retry-After",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=ServeConfig.deadline,
        help="seconds a recommendation may take; past them, popular items",
    )
    _artifacts(p)
    _common(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("quickstart", help="the whole path on one dataset, end to end")
    p.add_argument("--dataset", default="ml-100k", help="a named dataset (default: ml-100k)")
    p.add_argument("--spec", default=None, metavar="FILE", help="or your own data's spec")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="as for `ttr data`")
    p.add_argument("--user", default="1", help="whose recommendations to show (default: 1)")
    _artifacts(p)
    _common(p)
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
