"""`sonotune <command>`: thin command-line wrappers over the stage functions.

Commands: phantom, prepare, inspect, params, finetune, svm, report, strategies, deploy, promote, predict, server,
queue. Option defaults that stand for a params key come from the params schema (`config.default`).
A user error (bad params, bad data) prints one line to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sonotune.config import PARAMS_FILE
from sonotune.errors import SonotuneError


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _deterministic() -> None:
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def cmd_phantom(args) -> None:
    from sonotune.data.phantom import sample_grid, write_phantom

    if args.grid:
        sample_grid(Path(args.out_dir), seed=args.seed)
        return
    paths = write_phantom(Path(args.out_dir), args.n_benign, args.n_malignant, args.size, args.seed)
    print(f"wrote {len(paths)} images under {args.out_dir}")


def cmd_prepare(args) -> None:
    from sonotune.config import load_params
    from sonotune.stages.prepare import prepare_dataset

    report = prepare_dataset(load_params(args.params), args.dataset, strict=args.strict or None)
    print(f"{args.dataset}: {report['n_images']} images {report['per_class']}, {report['n_excluded']} excluded, "
          f"digest {report['digest']}")


def cmd_inspect(args) -> None:
    import time

    from sonotune.data.inspection import inspect_dataset

    start = time.perf_counter()
    text = inspect_dataset(Path(args.path), kind=args.kind, manifest_out=args.manifest, strict=args.strict,
                           folds=args.folds, near_distance=args.near_distance, keep_normal=args.keep_normal,
                           classes=args.classes, closest=args.closest)
    print(text)
    print(f"inspected in {time.perf_counter() - start:.1f} s")


def _require_tracking() -> None:
    """Fail fast (one line naming the URI) when the tracking server is down, before data or models load."""
    from sonotune import team, tracking

    team.check_tracking(tracking.tracking_uri())


def cmd_finetune(args) -> None:
    _require_tracking()
    from sonotune.config import load_params
    from sonotune.stages.finetune import run_finetune

    params = load_params(args.params)
    _deterministic()
    summary = run_finetune(params, args.dataset, args.backbone, args.strategy)
    print(f"{args.dataset} {args.backbone} {args.strategy}% MLP: AUC {summary['auc_mean']:.3f} ± {summary['auc_sd']:.3f}")


def cmd_svm(args) -> None:
    _require_tracking()
    from sonotune.config import load_params
    from sonotune.stages.svm import run_svm

    summary = run_svm(load_params(args.params), args.dataset, args.backbone, args.strategy)
    print(f"{args.dataset} {args.backbone} {args.strategy}% SVM: AUC {summary['auc_mean']:.3f} ± {summary['auc_sd']:.3f}")


def cmd_report(args) -> None:
    from sonotune.config import load_params
    from sonotune.stages.report import run_report

    params = load_params(args.params)
    if params.report.log_to_mlflow:
        _require_tracking()
    print(run_report(params))


def cmd_strategies(args) -> None:
    from sonotune.models.strategies import strategy_table

    print(strategy_table(args.input_size))


def cmd_deploy(args) -> None:
    _require_tracking()
    from sonotune.config import load_params
    from sonotune.stages.deploy import deploy

    params = load_params(args.params)
    _deterministic()
    result = deploy(params, args.dataset, args.backbone, args.strategy, args.classifier)
    print(f"logged {result['model_uri']}, registered as {result['name']} version {result['version']}; "
          f"`sonotune promote {result['name']} {result['version']}` makes it models:/{result['name']}@"
          f"{params.deploy.alias}")


def cmd_promote(args) -> None:
    from sonotune.config import Deploy, load_params
    from sonotune.stages.deploy import promote

    alias = args.alias or (load_params(args.params).deploy if Path(args.params).is_file() else Deploy()).alias
    version = promote(args.name, args.version, alias)
    print(f"models:/{args.name}@{alias} -> version {version}")


def cmd_predict(args) -> None:
    from sonotune.config import Gradcam, load_params
    from sonotune.stages.predict import run_predict

    alpha = (load_params(args.params).gradcam if Path(args.params).is_file() else Gradcam()).alpha
    gradcam = Path(args.gradcam) if args.gradcam else None
    predictions, skipped = run_predict(args.model_uri, args.images, Path(args.out), gradcam, alpha)
    print(f"wrote {len(predictions)} predictions to {args.out}"
          + (f", Grad-CAM overlays to {gradcam}/" if gradcam else "")
          + (f"; skipped {len(skipped)} unreadable input(s)" if skipped else ""))
    for _, reason in skipped:
        print(f"sonotune predict: skipped {reason}", file=sys.stderr)
    if skipped:
        raise SystemExit(2)


def add_use_parsers(sub) -> None:
    """deploy, promote, predict: the commands that turn a configuration into a model and use it."""
    from sonotune.vocabulary import CLASSIFIERS

    deploy = sub.add_parser("deploy", help="refit a configuration on all its data, log and register the model")
    deploy.add_argument("--params", default=PARAMS_FILE)
    deploy.add_argument("--dataset", required=True)
    deploy.add_argument("--backbone", required=True)
    deploy.add_argument("--strategy", type=int, required=True)
    deploy.add_argument("--classifier", choices=CLASSIFIERS, default="mlp")
    deploy.set_defaults(func=cmd_deploy)

    promote = sub.add_parser("promote", help="point a registry alias (deploy.alias, e.g. champion) at a version")
    promote.add_argument("name", help="registered model name, e.g. sonotune-phantom")
    promote.add_argument("version", nargs="?", help="version (default: the one with the best cv_auc_mean tag)")
    promote.add_argument("--alias", help="alias to set (default: deploy.alias of --params)")
    promote.add_argument("--params", default=PARAMS_FILE, help="read deploy.alias from here, if the file exists")
    promote.set_defaults(func=cmd_promote)

    predict = sub.add_parser("predict", help="malignancy probabilities (and Grad-CAM overlays) for new images")
    predict.add_argument("model_uri", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, …")
    predict.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    predict.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    predict.add_argument("--gradcam", metavar="DIR", help="also write a Grad-CAM overlay PNG per image to DIR")
    predict.add_argument("--params", default=PARAMS_FILE, help="read gradcam.alpha from here, if the file exists")
    predict.set_defaults(func=cmd_predict)


def cmd_server(args) -> None:
    from sonotune import team

    store = Path(args.store)
    command = team.server_command(store, args.host, args.port, args.backend_store_uri, args.artifacts_destination,
                                  args.workers, args.basic_auth, args.allowed_hosts)
    os.environ.update(team.server_environment(store, args.basic_auth))
    if args.host != team.LOOPBACK and not args.basic_auth:
        print(f"warning: listening on {args.host} without authentication: anyone who reaches this port can read and "
              f"delete runs (README: Working as a team → Security)", file=sys.stderr)
    print(f"MLflow tracking server on http://{args.host}:{args.port} — teammates: "
          f"export MLFLOW_TRACKING_URI=http://<this host>:{args.port}", flush=True)
    os.execvp(command[0], command)  # the server replaces this process: signals reach it directly


def cmd_queue(args) -> None:
    import subprocess

    from sonotune import team, tracking
    from sonotune.config import load_params
    from sonotune.stages.queue import queue_commands

    team.require_server_for_queue(tracking.tracking_uri())
    commands = queue_commands(load_params(args.params), args.prefix)
    if args.jobs:
        commands.append(["dvc", "queue", "start", "--jobs", str(args.jobs)])
    for command in commands:
        if subprocess.run(command).returncode != 0:  # DVC has printed why
            raise SonotuneError(f"`{' '.join(command)}` failed")
    print("follow with: dvc queue status | dvc queue logs NAME | dvc exp show")


def add_team_parsers(sub) -> None:
    from sonotune import team

    server = sub.add_parser("server", help="run a local MLflow tracking server for the team (127.0.0.1 by default)")
    server.add_argument("--store", default="mlflow-server", help="folder of the SQLite store and artifacts")
    server.add_argument("--host", default=team.LOOPBACK,
                        help="interface to bind (default loopback; put authentication in front before 0.0.0.0)")
    server.add_argument("--port", type=int, default=team.DEFAULT_PORT)
    server.add_argument("--backend-store-uri", help="SQLAlchemy URL of the runs' store, e.g. postgresql://… "
                        "(default: SQLite in --store)")
    server.add_argument("--artifacts-destination", help="where the server keeps artifacts, e.g. s3://bucket/mlflow "
                        "(default: --store/artifacts)")
    server.add_argument("--workers", type=int, default=1)
    server.add_argument("--basic-auth", action="store_true",
                        help="MLflow's basic-auth app (first start needs MLFLOW_AUTH_ADMIN_PASSWORD)")
    server.add_argument("--allowed-hosts", help="Host headers to accept once exposed, e.g. mlflow.example.org")
    server.set_defaults(func=cmd_server)

    queue = sub.add_parser("queue", help="queue one DVC experiment per configuration of the study grid")
    queue.add_argument("--params", default=PARAMS_FILE)
    queue.add_argument("--jobs", "-j", type=int, default=0, help="also start N queue workers (dvc queue start -j N)")
    queue.add_argument("--prefix", default="", help="prefix of the experiment names <dataset>-<backbone>-<strategy>")
    queue.set_defaults(func=cmd_queue)


def add_inspect_parser(sub) -> None:
    from sonotune.config import CV, Prepare, default
    from sonotune.data.inspection import KINDS

    inspect = sub.add_parser("inspect", help="check a dataset folder or CSV manifest and print its data report")
    inspect.add_argument("path", help="dataset folder, or a .csv manifest (path,label[,group])")
    inspect.add_argument("--kind", choices=KINDS, help="source kind (default: detected from the layout)")
    inspect.add_argument("--manifest", metavar="FILE", help="also write the manifest CSV to FILE")
    inspect.add_argument("--strict", action="store_true", help="stop at the first bad image instead of excluding it")
    inspect.add_argument("--folds", type=int, default=default(CV, "n_splits"),
                         help="check each class has a group per fold (0: skip)")
    inspect.add_argument("--near-distance", type=int, default=default(Prepare, "near_duplicate_distance"),
                         help="perceptual-hash Hamming distance of near duplicates (-1: exact duplicates only)")
    inspect.add_argument("--closest", type=int, default=10, metavar="N",
                         help="audit: list the N closest pairs of images left in different groups (0: none)")
    inspect.add_argument("--keep-normal", action="store_true", help="BUSI: count normal images as benign")
    inspect.add_argument("--classes", metavar="DIR=LABEL,…",
                         help="folder/mendeley: class folder → label, e.g. benign=benign,pleomorphic=benign,malignant=malignant")
    inspect.set_defaults(func=cmd_inspect)


def cmd_params(args) -> None:
    from sonotune.config import write_merged

    out = write_merged(args.params, args.overrides, args.out)
    print(f"wrote {out}: {args.params} with {', '.join(args.overrides)} laid over it (validated)")


def add_params_parser(sub) -> None:
    params = sub.add_parser("params", help="lay overrides files (e.g. configs/paper.yaml) over params.yaml")
    params.add_argument("overrides", nargs="+", help="YAML files holding only the keys that change, applied in order")
    params.add_argument("--params", default=PARAMS_FILE, help="the params file to start from")
    params.add_argument("--out", help="where to write the result (default: --params itself, comments kept)")
    params.set_defaults(func=cmd_params)


def build_parser() -> argparse.ArgumentParser:
    from sonotune.config import Params, PhantomSource, default

    parser = argparse.ArgumentParser(prog="sonotune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    phantom = sub.add_parser("phantom", help="write synthetic B-mode images as <out>/<class>/*.png")
    phantom.add_argument("out_dir")
    phantom.add_argument("--n-benign", type=int, default=default(PhantomSource, "n_benign"))
    phantom.add_argument("--n-malignant", type=int, default=default(PhantomSource, "n_malignant"))
    phantom.add_argument("--size", type=int, default=default(PhantomSource, "image_size"))
    phantom.add_argument("--seed", type=int, default=default(Params, "seed"))
    phantom.add_argument("--grid", action="store_true", help="write a sample grid PNG to OUT_DIR instead")
    phantom.set_defaults(func=cmd_phantom)

    def stage(name: str, func, config: bool = True, help: str = ""):
        command = sub.add_parser(name, help=help)
        command.add_argument("--params", default=PARAMS_FILE)
        if config:
            command.add_argument("--dataset", required=True)
        command.set_defaults(func=func)
        return command

    prepare = stage("prepare", cmd_prepare, help="manifest and image cache of one dataset")
    prepare.add_argument("--strict", action="store_true", help="stop at the first bad image instead of excluding it")
    add_inspect_parser(sub)
    add_params_parser(sub)
    add_team_parsers(sub)
    for name, func in (("finetune", cmd_finetune), ("svm", cmd_svm)):
        command = stage(name, func, help=f"run the {name} stage for one configuration")
        command.add_argument("--backbone", required=True)
        command.add_argument("--strategy", type=int, required=True)
    stage("report", cmd_report, config=False, help="tables and summary of the whole study")
    strategies = sub.add_parser("strategies", help="frozen/trainable layer counts per backbone and strategy")
    strategies.add_argument("--input-size", type=int, default=None)
    strategies.set_defaults(func=cmd_strategies)
    add_use_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SonotuneError as exc:
        print(f"sonotune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
