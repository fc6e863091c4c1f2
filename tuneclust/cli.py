"""``python -m tuneclust {sweep,validate,train,estimate,report,list,features}``: the command line.

Bad input (a spec, an override, a path) gets one line on stderr naming the file and the field, and exit code 2;
nothing is written before the input has been validated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
"""Ctrl-C: the shell's convention (128 + SIGINT)."""
DESCRIPTION = """Hyperparameter studies of deep-clustering methods (IDFD, DCCS, CDC, ICS) on Ray Tune.

A study is a YAML file (search_spaces/*.yaml): method, data, search space, searcher, scheduler, budget.
`sweep` runs it and writes STORAGE/NAME/{trials,epochs}.parquet plus one MLflow run per trial;
`report` ranks the trials and plots them; `validate` checks a study without running it."""
EPILOG = """examples:
  python -m tuneclust sweep search_spaces/quickstart.yaml          # 12 small trials on the bundled digits
  python -m tuneclust sweep search_spaces/idfd_tau.yaml --smoke    # any study, shrunk to a quick check
  python -m tuneclust report runs/quickstart                       # ranking, plots, tables
run `python -m tuneclust COMMAND --help` for a command's options."""


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _add_set(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key (dotted path, value parsed as YAML), e.g. --set budget.epochs=10",
    )


def _add_sweep(s: argparse.ArgumentParser) -> None:
    s.add_argument("spec", help="the study's YAML file")
    _add_set(s)
    s.add_argument(
        "--storage", help="results root (default: the spec's storage, ./runs); results go to STORAGE/NAME"
    )
    s.add_argument("--smoke", action="store_true", help="run it on the bundled digits: <=2 epochs, one value per "
                   "search dimension, every arm, CPU only (results under NAME-smoke)")  # fmt: skip
    s.add_argument(
        "--resume", action="store_true", help="continue an interrupted sweep; finished trials are kept"
    )
    s.add_argument("--retry-errored", action="store_true", help="with --resume: also run the trials that ended "
                   "ERROR again, each from its last checkpoint (after an outage, or once their cause is fixed)")  # fmt: skip
    s.add_argument(
        "--overwrite", action="store_true", help="delete earlier results of this sweep and start over"
    )
    s.add_argument("--takeover", action="store_true", help="run even if another driver holds this sweep's lease "
                   "(it is still running, or died on another host less than a minute ago); that driver is named")  # fmt: skip
    s.add_argument(
        "--address", help="Ray cluster address (e.g. 'auto' on a `ray up` head node); default: local Ray"
    )
    talk = s.add_mutually_exclusive_group()
    talk.add_argument(
        "--quiet", action="store_true", help="no progress line; print only the summary at the end"
    )
    talk.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's own status tables and worker logs instead of the one progress line",
    )


def _add_small(sub: Any) -> None:
    """validate, train, report and list."""
    v = sub.add_parser("validate", help="parse and check specs, print the trial count of each; runs nothing")
    v.add_argument("specs", nargs="+")
    _add_set(v)
    v.add_argument("--smoke", action="store_true", help="also validate the --smoke version of each spec")

    t = sub.add_parser("train", help="run one trial in-process without Ray (debug a method)")
    t.add_argument("spec")
    _add_set(t)
    t.add_argument("--arm", help="ablation arm to run (default: the first)")
    t.add_argument(
        "--smoke", action="store_true", help="apply the --smoke reductions (digits, <=2 epochs, CPU)"
    )
    t.add_argument("--device", default="auto", help="auto (a GPU if there is one) | cpu | cuda | cuda:N")

    r = sub.add_parser("report", help="rank trials, plot metrics against parameters, tabulate arms")
    r.add_argument("sweep_dir", help="a sweep's results folder or URI, STORAGE/NAME")
    r.add_argument("--metric", help="metric to rank and plot (default: the sweep's objective)")
    r.add_argument(
        "--out", help="where plots and tables go (default: SWEEP_DIR/report; ./NAME-report for a URI)"
    )
    r.add_argument("--top", type=int, default=20, help="rows of the ranking to print")

    ls = sub.add_parser("list", help="methods, datasets, searchers, schedulers, metrics")
    ls.add_argument("--keys", metavar="METHOD", nargs="?", const="all",
                    help="print the config keys of METHOD (or all) as Markdown tables: type, default, meaning")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuneclust",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_sweep(sub.add_parser("sweep", help="run a study on Ray Tune"))
    _add_small(sub)
    _add_estimate(sub.add_parser("estimate", help="time one trial here and predict the study's wall time and "
                                 "GPU-hours"), _add_set)  # fmt: skip
    f = sub.add_parser("features", help="extract ImageNet ResNet50 features of a dataset into an .npz (for CDC)",
                       add_help=False)  # fmt: skip
    f.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _add_estimate(e: argparse.ArgumentParser, add_set: Any) -> None:
    e.add_argument("spec")
    add_set(e)
    e.add_argument(
        "--device", default="auto", help="where to time the trial: auto (a GPU if any) | cpu | cuda"
    )
    e.add_argument("--epochs", type=_positive(int), default=2, help="timed epochs after one warm-up epoch")
    e.add_argument("--images", type=_positive(int), default=2048,
                   help="time on a seeded subsample of at most this many images (scaled to the dataset)")  # fmt: skip
    e.add_argument("--gpus", type=_positive(int), help="GPUs the study will use (default: this machine's)")
    e.add_argument(
        "--cpus", type=_positive(int), help="CPU cores the study will use (default: this machine's)"
    )
    e.add_argument("--pack-gain", type=_positive(float), default=1.0,
                   help="packed trials on one GPU together run this many times as fast as one alone "
                   "(default 1: no gain; measure it with benchmarks/gpu.py)")  # fmt: skip


def cmd_estimate(args: argparse.Namespace) -> int:
    from tuneclust.data.registry import DataError
    from tuneclust.estimate import main_args
    from tuneclust.spec import SpecError

    try:
        spec = _load(args.spec, args.overrides)
    except SpecError as e:
        return _fail(str(e))
    try:
        print(main_args(spec, args))
    except DataError as e:
        return _fail(f"data: {e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["features"]:
        from tuneclust.features import main as features_main

        return features_main(argv[1:])
    args = _parser().parse_args(argv)
    return {
        "sweep": cmd_sweep,
        "validate": cmd_validate,
        "train": cmd_train,
        "estimate": cmd_estimate,
        "report": cmd_report,
        "list": cmd_list,
    }[args.command](args)


def _load(path: str, overrides: list[str], smoke: bool = False):
    from tuneclust.spec import load_spec, smoke_spec

    spec = load_spec(path, overrides)
    return smoke_spec(spec) if smoke else spec


def cmd_validate(args: argparse.Namespace) -> int:
    from tuneclust.rules import unlabelled_data
    from tuneclust.spec import SpecError

    failed = 0
    for path in args.specs:
        try:
            spec = _load(path, args.overrides)
            line = f"{path}: ok: {spec.name} ({spec.method}), {spec.num_trials()} trials"
            for name in unlabelled_data(spec):
                line += f"; data {name}: no labels (label-free metrics only, no acc/nmi/ari)"
            if args.smoke:
                line += f"; --smoke: {_load(path, args.overrides, smoke=True).num_trials()} trials"
            print(line)
        except SpecError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
        except (
            ValueError,
            TypeError,
            OverflowError,
            RecursionError,
        ) as e:  # a gap in validation: still one line
            print(
                f"error: {path}: unexpected {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                file=sys.stderr,
            )
            failed += 1
    return EXIT_BAD_INPUT if failed else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from tuneclust.spec import SpecError
    from tuneclust.sweep import SweepError

    if args.retry_errored and not args.resume:
        return _fail("--retry-errored needs --resume (it reruns the errored trials of an earlier sweep)")
    try:
        spec = with_header_description(_load(args.spec, args.overrides, args.smoke), args.spec)
        if args.resume:
            from tuneclust.results import read_stored_spec
            from tuneclust.sweep import sweep_dir

            stored = sweep_dir(spec, args.storage) / "spec.yaml"
            if stored.exists():  # the sweep's own spec (maybe on object storage), written by run_sweep
                spec = read_stored_spec(sweep_dir(spec, args.storage), validate=True)
    except (SpecError, SweepError) as e:
        return _fail(str(e))
    except OSError as e:  # a results path the filesystem refuses (name too long, ...)
        return _fail(f"{args.spec}: storage: {e.strerror or type(e).__name__}")
    from tuneclust.callback import trial_total
    from tuneclust.sweep import SweepError, run_sweep, sweep_dir

    try:
        results = run_sweep(
            spec,
            storage=args.storage,
            resume=args.resume,
            retry_errored=args.retry_errored,
            overwrite=args.overwrite,
            address=args.address,
            verbose=0 if args.quiet else 2 if args.verbose else 1,
            takeover=args.takeover,
        )
    except SweepError as e:
        return _fail(str(e))
    except KeyboardInterrupt:  # before Ray Tune took over Ctrl-C (data preparation, Ray start-up)
        print(
            f"interrupted before the sweep started — rerun: {resume_command(args, resume=False)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    out = sweep_dir(spec, args.storage)
    counts = _end_summary(spec, out, trial_total(spec, len(results)))
    if counts["unfinished"]:
        done = counts["terminated"] + counts["errored"]
        print(
            f"interrupted: {done} finished, {counts['unfinished']} unfinished — resume with: {resume_command(args)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if counts["errored"]:
        print(
            f"errored trials (the error column says why) run again with: {resume_command(args)} --retry-errored"
        )
    return 0 if counts["terminated"] else 1


def _end_summary(spec: Any, out: Any, total: int) -> dict[str, int]:
    """The lines a sweep ends with: trial counts, the answer, where the results are; returns the counts."""
    from tuneclust.answer import answer_text, sweep_answer
    from tuneclust.callback import sweep_outcome

    counts = sweep_outcome(out, total)
    print(
        f"\n{spec.name}: {total} trials: {counts['terminated']} finished, {counts['errored']} errored, "
        f"{counts['unfinished']} unfinished"
    )
    if spec.resources.gpu > 0:
        from tuneclust.runtime import mps_line

        print(mps_line("detect", spec.resources.gpu))
    try:
        ans = sweep_answer(out)
        if ans is not None:
            print(answer_text(ans, compact=True))
    except FileNotFoundError:
        pass
    print(f"results: {out / 'trials.parquet'}, {out / 'epochs.parquet'}")
    print(f"report:  python -m tuneclust report {out}")
    ui = mlflow_ui_command(spec, out)
    if ui:
        print(ui)
    return counts


def resume_command(args: argparse.Namespace, resume: bool = True) -> str:
    """The command line that continues this sweep (the same spec, overrides and options, plus ``--resume``)."""
    import shlex

    parts = ["python", "-m", "tuneclust", "sweep", args.spec]
    for item in args.overrides:
        parts += ["--set", item]
    if args.storage:
        parts += ["--storage", args.storage]
    if args.smoke:
        parts.append("--smoke")
    if args.address:
        parts += ["--address", args.address]
    if args.quiet:
        parts.append("--quiet")
    if getattr(args, "verbose", False):
        parts.append("--verbose")
    if resume:
        parts.append("--resume")
    return " ".join(shlex.quote(p) for p in parts)


def with_header_description(spec, path: str):
    """The spec with ``description`` set from its file's opening comment (the study and the paper it
    reproduces) when it has none: MLflow shows it on the sweep's run."""
    if spec.description:
        return spec
    lines = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.removeprefix("#").strip())
    text = " ".join(ln for ln in lines if ln)
    return spec.model_copy(update={"description": text}) if text else spec


def mlflow_ui_command(spec, sweep: Any = None) -> str | None:
    """The sweep's closing ``MLflow:`` line, the ``mlflow ui`` command that opens its tracking store, and a second
    line with the URL of its experiment's runs where the sweep's folder ``sweep`` tells the experiment (MLflow 3
    opens on a GenAI overview). None if MLflow tracking is off."""
    if not spec.tracking.mlflow.enabled:
        return None
    from tuneclust.tracking import MLFLOW_UI, default_tracking_uri, runs_url, sweep_experiment_id

    uri = spec.tracking.mlflow.uri or default_tracking_uri()
    line = f"MLflow:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1   (then open {MLFLOW_UI})"
    name = spec.tracking.mlflow.experiment or spec.name
    experiment_id = sweep_experiment_id(sweep, uri, name) if sweep is not None else None
    return f"{line}\n         this sweep's runs: {runs_url(experiment_id)}" if experiment_id else line


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from tuneclust.data.registry import DataError
    from tuneclust.spec import SpecError
    from tuneclust.trainable import TrialLoop

    try:
        spec = _load(args.spec, args.overrides, args.smoke)
    except SpecError as e:
        return _fail(str(e))
    arm = args.arm if args.arm is not None else spec.arms[0]
    if arm not in spec.arms:
        return _fail(f"{args.spec}: --arm: unknown arm {arm!r}; expected one of {spec.arms}")
    point = spec.representative_point(arm)
    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    plan = spec.sweep_plan().trial(point)
    print(f"train {spec.name}: method {spec.method}, arm {arm or '-'}, point {point}, device {device_name}")
    try:
        loop = TrialLoop(plan, torch.device(device_name))
    except DataError as e:
        return _fail(f"data: {e}")
    for result in loop.run():
        shown = {
            k: round(v, 4)
            for k, v in result.items()
            if not k.startswith("loss_") and isinstance(v, int | float)
        }
        print(" ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tuneclust import report
    from tuneclust.storage import StorageError
    from tuneclust.tables import has_tables

    path = args.sweep_dir
    try:
        if not has_tables(path):
            return _fail(f"{path}: no trials.parquet here (expected a sweep's results folder, STORAGE/NAME)")
    except StorageError as e:
        return _fail(str(e))
    written = report.write_report(path, metric=args.metric, out=args.out)
    print(report.ranking_text(path, metric=args.metric, top=args.top))
    for f in written:
        print(f"wrote {f}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tuneclust import criteria, metrics
    from tuneclust.data.plugins import plugin_names
    from tuneclust.data.registry import DATASETS
    from tuneclust.methods import config_reference, get_method, method_names
    from tuneclust.plugins import PluginError
    from tuneclust.spec import DISTRIBUTIONS, SCHEDULERS, SEARCHERS

    if args.keys:
        names = method_names() if args.keys == "all" else [args.keys]
        try:
            print("\n".join(config_reference(m) for m in names))
        except PluginError as e:  # an unknown name, an import error, a class breaking the contract
            return _fail(f"--keys: {e}")
        return 0
    print("methods:")
    for name in method_names():
        try:
            cls = get_method(name)
            extra = f"  extra metrics: {', '.join(cls.extra_metrics)}" if cls.extra_metrics else ""
            print(f"  {name:<6} config keys: {', '.join(cls.Config.model_fields)}{extra}")
        except (ImportError, PluginError) as e:
            print(f"  {name:<6} (unavailable: {e})")
    print(f"datasets: {', '.join([*DATASETS, *plugin_names()])}")
    print(f"searchers: {', '.join(SEARCHERS)}")
    print(f"schedulers: {', '.join(SCHEDULERS)}")
    print(f"search distributions: {', '.join(DISTRIBUTIONS)}")
    print(
        f"metrics: {', '.join(metrics.LABELLED + metrics.LABEL_FREE)}, loss, and each method's extra metrics"
    )
    print(
        f"label-free criteria across trials: {', '.join(criteria.SELECTION)} "
        f"(default label-free objective: {criteria.DEFAULT})"
    )
    return 0
