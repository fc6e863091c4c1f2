"""Early stopping measured: what ASHA, HyperBand and the median stopping rule save on IDFD's temperature study,
and what they cost in the choice of setting.

The study is ``search_spaces/quickstart.yaml`` (IDFD, tau in {5, 1, 0.5, 0.1} x seeds {0, 1, 2}, 15 epochs, the
bundled 8x8 digits), evaluated every epoch (``budget.eval_every=1``), MLflow off. First the complete grid runs
(FIFO: every trial to the full budget); then, per objective (``acc``, which needs labels, and the label-free
default ``consensus``; ``seed_agreement`` on request), each scheduler on the same grid and seeds:

- ASHA ``{type: asha, grace_period: 3, reduction_factor: 3}``;
- HyperBand ``{type: hyperband, reduction_factor: 3}`` (max_t = the budget);
- median ``{type: median, grace_period: 3, min_samples_required: 3}``.

Per sweep: the **epochs share** (sum of the trials' ``epochs_run`` / (trials x budget epochs)); the **selected
setting**, the top row of the answer's full-budget ranking of the survivors (``Answer.full_settings``), or of
its equal-budget ranking (``Answer.settings``) when every trial ran the full budget; that setting's **full-grid
ACC** (mean over seeds at the full budget in the FIFO sweep); and its **regret = best - selected >= 0**, the
best setting's full-grid ACC minus the selected one's (0: the best was chosen). The grid rows are that FIFO
sweep ranked by each objective (both rows are the same sweep): the regret of a label-free choice without early
stopping, against which the schedulers' regrets under the label-free objective compare.

Online, a trial's ``consensus`` is NaN until another trial has stored its partition at that epoch, and its
``seed_agreement`` until a sibling seed has (Ray's schedulers read NaN as "continue"); ``NaN evals`` counts such
reports. At the full budget the survivors are re-scored among themselves: a setting with a single surviving seed
has no seed_agreement there (NaN ranks last; a selection made on NaN scores is marked ``*``).

The quickstart lists tau from large (the best) to small, so the best setting's trials start first, which favours
it under ASHA and HyperBand (whose first bracket stops nothing); ``--reverse`` lists tau from small to large.

Usage::

    nice -n 5 python benchmarks/early_stopping.py --record         # digits, 3 seeds, 15 epochs (10-15 min, 2 cores)
    python benchmarks/early_stopping.py --reverse --record         # tau listed worst first: no head start
    python benchmarks/early_stopping.py --schedulers asha --objectives seed_agreement
    python benchmarks/early_stopping.py --data mnist5k --cpus 16   # real MNIST, ~47 s per epoch per trial-core
    python benchmarks/early_stopping.py --quick                    # CI: 300 digits, 2 tau x 2 seeds, 4 epochs

``--cpus N`` runs N trials at once (1 CPU each; Ray is started with N CPUs unless it is already running).
``--keep DIR`` keeps the sweeps in DIR (``es_grid``, ``es_<scheduler>_<objective>``; existing ones are
overwritten) instead of a temporary folder. ``--record`` appends the tables to benchmarks/RESULTS_LOG.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "quickstart.yaml"
RESULTS = Path(__file__).resolve().parent / "RESULTS_LOG.md"
OBJECTIVES = ("acc", "consensus", "seed_agreement")
"""Objectives it can run; by default ``acc`` and the label-free default (``tuneclust.criteria.DEFAULT``)."""
SCHEDULERS: dict[str, str] = {
    "asha": "{type: asha, grace_period: 3, reduction_factor: 3}",
    "hyperband": "{type: hyperband, reduction_factor: 3}",
    "median": "{type: median, grace_period: 3, min_samples_required: 3}",
}
QUICK_SCHEDULERS: dict[str, str] = {
    "asha": "{type: asha, grace_period: 1, reduction_factor: 2}",
    "hyperband": "{type: hyperband, reduction_factor: 4}",
    "median": "{type: median, grace_period: 1, min_samples_required: 2}",
}
"""``--quick`` (4 trials, 4 epochs). HyperBand's factor is 4, not 2: Ray fills its brackets in trial order from
the one that stops nothing (s=0, n0 = s_max + 1 trials), which at factor 2 takes 3 of the 4 trials and leaves one
alone in the next bracket; at factor 4 the last two share a bracket that keeps one after epoch 1."""
QUICK = [
    "data.subsample=300",
    "search.tau.grid=[5.0, 0.1]",
    "config.batch_size=100",
    "config.kmeans_n_init=2",
]
GRID = "grid"
"""The scheduler name of the complete grid (FIFO) rows."""


def overrides(args: argparse.Namespace, name: str, scheduler: str, objective: str) -> list[str]:
    """The ``--set`` overrides of one sweep of the study."""
    out = [
        f"name={name}",
        f"data.name={args.data}",
        f"budget.epochs={args.epochs}",
        "budget.eval_every=1",
        f"search.seed.grid=[{', '.join(str(s) for s in range(args.seeds))}]",
        f"scheduler={scheduler}",
        f"objective.metric={objective}",
        "resources.cpu=1",
        "tracking.mlflow.enabled=false",
    ]
    if args.reverse and not args.quick:
        out.append("search.tau.grid=[0.1, 0.5, 1.0, 5.0]")
    return out + (QUICK if args.quick else [])


def run_one(args: argparse.Namespace, storage: str, name: str, scheduler: str, objective: str) -> float:
    """Run one sweep into ``storage/name``; returns its wall time in seconds."""
    from tuneclust.spec import load_spec
    from tuneclust.sweep import run_sweep

    spec = load_spec(SPEC, overrides(args, name, scheduler, objective))
    t0 = time.perf_counter()
    run_sweep(spec, storage=storage, overwrite=True, verbose=0)
    return time.perf_counter() - t0


def selection(sweep_dir: Path, metric: str) -> tuple[str, float, int]:
    """The sweep's selected setting under ``metric``: (setting, its score, the epoch it was compared at)."""
    from tuneclust.answer import sweep_answer

    ans = sweep_answer(sweep_dir, metric)
    if ans is None:
        return "n/a (no trial finished)", math.nan, 0
    table, view = ans.settings, ans.views[0]
    if ans.full_settings is not None:
        table, view = ans.full_settings, ans.views[1]
    if table.empty:
        return "n/a (no score)", math.nan, view.epoch
    top = table.iloc[0]
    return str(top["setting"]), float(top["mean"]), int(view.epoch)


def grid_acc(sweep_dir: Path) -> dict[str, dict[str, float]]:
    """Per setting of the complete grid: mean, std and n of ACC over seeds at the full budget, best first."""
    from tuneclust.answer import sweep_answer

    ans = sweep_answer(sweep_dir, "acc")
    if ans is None or ans.full_settings is not None:
        raise SystemExit(
            f"early_stopping.py: the grid sweep {sweep_dir} did not run every trial to the budget"
        )
    return {
        str(r["setting"]): {"mean": float(r["mean"]), "std": float(r["std"]), "n": int(r["n"])}
        for _, r in ans.settings.iterrows()
    }


def measure(
    sweep_dir: Path, args: argparse.Namespace, scheduler: str, objective: str, acc: dict[str, float]
) -> dict[str, Any]:
    """One row: trials, epochs share, NaN reports of the objective, selected setting, its ACC and regret."""
    from tuneclust.results import load_results

    trials, epochs = load_results(sweep_dir)
    run = trials["epochs_run"].fillna(0).astype(int) if "epochs_run" in trials else None
    spent = int(run.sum()) if run is not None else 0
    nan_evals = int(epochs[objective].isna().sum()) if objective in epochs else 0
    selected, score, at = selection(sweep_dir, objective)
    best = max(acc.values())
    sel_acc = acc.get(selected, math.nan)
    return {
        "data": args.data,
        "objective": objective,
        "scheduler": scheduler,
        "trials": len(trials),
        "errored": int((trials["status"] == "ERROR").sum()) if "status" in trials else 0,
        "epochs_run": spent,
        "epochs_share": spent / (len(trials) * args.epochs) if len(trials) else math.nan,
        "evals": len(epochs),
        "nan_evals": nan_evals,
        "selected": selected,
        "selected_score": score,
        "selected_at": at,
        "selected_acc": sel_acc,
        "regret": best - sel_acc,
    }


def sweeps(args: argparse.Namespace, storage: Path, log: Any) -> dict[str, Any]:
    """The grid, then every scheduler x objective, into ``storage`` (Ray already running)."""
    scheds = QUICK_SCHEDULERS if args.quick else SCHEDULERS
    log(f"grid (fifo) on {args.data}: {args.seeds} seeds, {args.epochs} epochs ...")
    grid_wall = run_one(args, str(storage), "es_grid", "{type: fifo}", "acc")
    acc = grid_acc(storage / "es_grid")
    acc_means = {s: v["mean"] for s, v in acc.items()}
    rows = []
    for objective in args.objectives:
        rows.append({**measure(storage / "es_grid", args, GRID, objective, acc_means), "wall_s": grid_wall})
        for name in args.schedulers:
            sweep = f"es_{name}_{objective}"
            log(f"{name} ({objective}) ...")
            wall = run_one(args, str(storage), sweep, scheds[name], objective)
            rows.append({**measure(storage / sweep, args, name, objective, acc_means), "wall_s": wall})
            r = rows[-1]
            log(
                f"  {r['trials']} trials, epochs share {r['epochs_share']:.2f}, selected {r['selected']}, "
                f"regret {r['regret']:.3f} ({wall:.0f} s)"
            )
    return {"rows": rows, "grid_acc": acc}


def run(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    """:func:`sweeps` in a temporary folder (or ``--keep``), starting Ray unless it runs already (and then only
    shutting it down). Returns ``rows`` (one dict per table row, per objective the grid's first), ``grid_acc``
    (setting -> {mean, std, n} of full-budget ACC, best first) and ``wall_s``."""
    import ray

    from tuneclust import progress

    progress.silence_ray(0)
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="early_stopping-")
    storage = Path(args.keep or tmp.name).resolve()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # ASHA's cutoff at a rung whose recorded objectives are all NaN (seed_agreement before siblings report)
            warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
            result = sweeps(args, storage, log)
    finally:
        if tmp is not None:
            tmp.cleanup()
        if started:
            ray.shutdown()
    return {**result, "wall_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- report
def _aligned(header: list[str], body: list[list[str]]) -> str:
    """A Markdown table padded to aligned columns (readable as text, renders as a table)."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def table(rows: list[dict[str, Any]]) -> str:
    """The results table: one row per objective x scheduler, the grid's first."""
    header = [
        "data",
        "objective",
        "scheduler",
        "trials",
        "epochs share",
        "NaN evals",
        "selected",
        "sel. score",
        "full-grid ACC",
        "regret",
        "wall",
    ]
    body = []
    for r in rows:
        flag = "*" if not math.isfinite(r["selected_score"]) else ""
        trials = f"{r['trials']}" + (f" ({r['errored']} errored)" if r["errored"] else "")
        body.append(
            [
                r["data"],
                r["objective"],
                "grid (fifo)" if r["scheduler"] == GRID else r["scheduler"],
                trials,
                f"{r['epochs_share']:.2f}",
                f"{r['nan_evals']}/{r['evals']}",
                f"{r['selected']}{flag}",
                f"{r['selected_score']:.3f} @{r['selected_at']}",
                f"{r['selected_acc']:.3f}",
                f"{r['regret']:.3f}",
                f"{r['wall_s'] / 60:.1f} min",
            ]
        )
    return _aligned(header, body)


def grid_table(acc: dict[str, dict[str, float]]) -> str:
    """The complete grid's full-budget ACC per setting (mean ± std over seeds), best first."""
    body = [[s, str(v["n"]), f"{v['mean']:.3f} ± {v['std']:.3f}"] for s, v in acc.items()]
    return _aligned(["setting", "seeds", "ACC mean ± std"], body)


def report(result: dict[str, Any]) -> str:
    rows = result["rows"]
    text = table(rows) + "\n\n"
    text += (
        "regret = best - selected full-grid ACC (>= 0; 0: the best setting was chosen). epochs share = epochs"
        " run / (trials x budget). NaN evals: reports of the objective without a value. sel. score: the"
        " objective of the selected setting at the epoch it was compared (* NaN). Both grid rows are one FIFO"
        " sweep.\n\n"
    )
    return text + "Complete grid (FIFO), ACC at the full budget:\n\n" + grid_table(result["grid_acc"]) + "\n"


def _throughput():
    """benchmarks/throughput.py: the machine line and the one layout of ``--record`` sections."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import throughput

    return throughput


def record(text: str, args: argparse.Namespace, wall: float) -> None:
    """Append a section with the tables, machine, date and command to benchmarks/RESULTS_LOG.md."""
    sched = QUICK_SCHEDULERS if args.quick else SCHEDULERS
    facts = [
        f"{args.cpus} trials at once, 1 CPU each.",
        f"Study: search_spaces/quickstart.yaml{' (tau listed small to large)' if args.reverse else ''}, "
        f"{args.seeds} seeds, {args.epochs} epochs, eval every epoch; "
        + "; ".join(f"{n} `{sched[n]}`" for n in args.schedulers)
        + ".",
        f"Wall time: {wall / 60:.1f} min.",
    ]
    _throughput().record_section(
        "early_stopping.py", f"Early stopping: IDFD tau study on {args.data}", facts, text
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--schedulers",
        nargs="+",
        choices=list(SCHEDULERS),
        default=list(SCHEDULERS),
        help="schedulers to run",
    )
    p.add_argument(
        "--reverse", action="store_true", help="list tau from small to large (the best setting starts last)"
    )
    p.add_argument(
        "--objectives",
        nargs="+",
        choices=OBJECTIVES,
        default=["acc", "consensus"],
        help="objectives (default: acc and the label-free default, consensus)",
    )
    p.add_argument(
        "--data",
        choices=("digits", "mnist5k"),
        default="digits",
        help="digits (bundled 8x8) or mnist5k (5,000 real MNIST digits; ~47 s per epoch per trial on one core)",
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 3; --quick 2)")
    p.add_argument("--epochs", type=int, default=None, help="budget epochs (default 15; --quick 4)")
    p.add_argument("--cpus", type=int, default=2, help="trials at once (1 CPU each; default 2)")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep the sweeps in DIR (default: a temp dir)")
    p.add_argument(
        "--quick", action="store_true", help="CI: 300 digits, tau 5 and 0.1, 2 seeds, 4 epochs, batch 100"
    )
    p.add_argument("--record", action="store_true", help="append the tables to benchmarks/RESULTS_LOG.md")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = 2 if args.quick else 3
    if args.epochs is None:
        args.epochs = 4 if args.quick else 15
    if args.seeds < 2 or args.cpus < 1:
        p.error("--seeds must be >= 2 (seed_agreement compares seeds) and --cpus >= 1")
    grace = 1 if args.quick else 3
    if args.epochs < grace:
        p.error(f"--epochs must be >= the schedulers' grace period ({grace})")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print (and with ``--record`` append) the tables; returns :func:`run`'s result."""
    args = parse_args(argv)
    result = run(args, lambda s: print(s, flush=True))
    text = report(result)
    print(f"\n{text}\nwall time {result['wall_s'] / 60:.1f} min", flush=True)
    if args.record:
        record(text, args, result["wall_s"])
        print(f"recorded in {RESULTS}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
