"""Fidelity benchmark: do the papers' headline ablations show their effects on the data at hand?

For each method the paper's headline finding is a set of arms (config overrides) and claimed orderings between
them (``better > worse``). Every arm is trained with the same seeds, in-process (no Ray), through the one trial
loop (:class:`tuneclust.trainable.TrialLoop`), and scored at its final evaluation (no selection by label):

- IDFD (Table 1, Fig. 3): ID tau=1 > ID tau=0.07; IDFD > ID (tau=1).
- DCCS (Table 5): M4 (all losses) > M1 (L_Adv only); M1-M4 are all printed.
- CDC (Table 3): the five rows; AE*+L_DC > AE*+L_c.
- ICS (Fig. 5): full > without L_t > L_r only.

Per arm the table gives mean ± std of ACC and NMI over seeds; per claim the mean paired-seed gap with a Student-t
95% confidence interval and a verdict: ``holds`` (CI above 0), ``not shown`` (CI spans 0), ``reversed`` (CI below 0).

``--vs-eager`` checks a fast runtime's quality instead: every selected arm and seed is trained three times, with
the ``--runtime``/``--device`` given (``fast``), in fp32 eager on the same device and the same batches (``eager``:
a compiled step drops each epoch's ragged last batch, so its eager twin does too), and in fp32 eager on
inputs nudged by one fp32 ulp (``nudged``: every nonzero input value replaced by the next float away from zero). A third
table gives per arm the paired gap fast - eager with its CI, the eager arm's seed-to-seed standard deviation, and
the root-mean-square of the paired nudged - eager differences: how far fp32 rounding alone moves one seed's result
(a method whose outcome hangs on the last bit of its inputs cannot be reproduced closer than that by any other
arithmetic). Verdict: ``within spread`` when the mean gap is no larger than the seed std, ``within rounding``
when it is larger than that but no larger than the rounding RMS, else ``below``/``above``.

Usage (``--help`` lists every option)::

    nice -n 10 python benchmarks/fidelity.py                      # every method, 5 seeds, digits (15-22 min, 2 idle cores)
    python benchmarks/fidelity.py --methods ics --set ics.reduction=sum
    python benchmarks/fidelity.py --quick                         # CI: 2 seeds, tiny budget
    python benchmarks/fidelity.py --methods cdc dccs --data mnist5k --record   # real 28x28 MNIST digits, offline
    python benchmarks/fidelity.py --data mnist --scale 10 --workers 8 --device cuda --record   # a GPU machine
    python benchmarks/fidelity.py --device cuda --runtime precision=bf16 --runtime compile=default  # GPU fast path
    python benchmarks/fidelity.py --arms IDFD M1 AEs_LDC full --vs-eager --runtime precision=bf16   # fast vs fp32 eager

``--record`` appends the tables, the machine, the date and the command to benchmarks/RESULTS_LOG.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import math
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

RESULTS = Path(__file__).resolve().parent / "RESULTS_LOG.md"
METRICS = ("acc", "nmi")
EAGER = {"precision": "fp32", "channels_last": False, "compile": "none", "tf32": False}
"""The reference runtime of ``--vs-eager``: fp32 eager without TF32 (what the defaults resolve to on the CPU), with
the fast runtime's batches (:func:`eager_twin`)."""


def eager_twin(runtime: dict[str, Any], device: str) -> dict[str, Any]:
    """:data:`EAGER` with the batches ``runtime`` trains on: its resolved ``static_shapes`` (a compiled step drops
    each epoch's ragged last batch), so that fast - eager measures the arithmetic, not a different batch
    schedule (``--runtime static_shapes=false`` compares a fast path keeping that batch)."""
    from tuneclust.runtime import no_warnings, resolve

    with no_warnings():
        static = resolve(runtime, device).static_shapes
    return {**EAGER, "static_shapes": static}


@dataclass(frozen=True)
class Claim:
    """A claimed ordering: arm ``better`` scores higher than arm ``worse``."""

    better: str
    worse: str


@dataclass(frozen=True)
class Study:
    """One paper's headline ablation at a CPU-sized budget.

    Attributes:
        method: registry name of the method.
        source: where the finding is in the paper.
        config: fixed config of every arm (the digits-sized settings).
        spec: the shipped ablation study (``search_spaces/<spec>.yaml``) whose arms (config overrides) are trained.
        arms: the names of the arms trained here, as the YAML's ``ablation`` names them (the YAML is their only
            home: :meth:`overrides`).
        claims: the orderings the paper reports.
        epochs: default training epochs (``--scale`` multiplies, ``--epochs`` replaces).
        budget: config the epoch count implies (e.g. CDC's pre-training/fine-tuning split), or None.
        quick: config and epochs of ``--quick``.
    """

    method: str
    source: str
    config: dict[str, Any]
    spec: str
    arms: tuple[str, ...]
    claims: tuple[Claim, ...]
    epochs: int
    budget: Callable[[int], dict[str, Any]] | None = None
    quick: dict[str, Any] = field(default_factory=dict)
    quick_epochs: int = 1

    def overrides(self) -> dict[str, dict[str, Any]]:
        """Arm name -> config overrides, read from the study's YAML."""
        from tuneclust.spec import load_spec

        ablation = load_spec(SPECS / f"{self.spec}.yaml").ablation
        return {arm: dict(ablation[arm]) for arm in self.arms}


SPECS = Path(__file__).resolve().parents[1] / "search_spaces"
CDC_ITERS_PER_EPOCH = 50
"""CDC fine-tuning iterations per epoch (one DEC target update each, h = 50)."""


def cdc_budget(epochs: int) -> dict[str, Any]:
    """CDC at ``epochs`` epochs: the first 60% pre-train, the rest fine-tune with 50 iterations (h) each."""
    pre = max(1, round(0.6 * epochs))
    return {"pretrain_epochs": pre, "finetune_iters": max(1, epochs - pre) * CDC_ITERS_PER_EPOCH}


STUDIES: dict[str, Study] = {
    "idfd": Study(
        method="idfd",
        source="IDFD Table 1 / Fig. 3",
        config={"backbone": "convnet", "batch_size": 128},
        spec="idfd_ablation",
        arms=("ID_original", "ID_tuned", "IDFD"),  # ID at tau 0.07 and at tau 1; IDFD (tau 1)
        claims=(Claim("ID_tuned", "ID_original"), Claim("IDFD", "ID_tuned")),
        epochs=30,
        quick={"max_steps_per_epoch": 2, "batch_size": 32},
    ),
    "dccs": Study(
        method="dccs",
        source="DCCS Table 5",
        # The paper's MNIST setting (Sec. 4.1.3, appendix B): beta_Aug 2, crop area 0.4-1, no horizontal flip
        # ("direction sensitive nature of the digits"); critic/D hidden 256 for the 8x8 encoder.
        config={"beta_aug": 2.0, "hflip": False, "mlp_hidden": 256},
        spec="dccs_ablation",
        arms=("M1", "M2", "M3", "M4"),
        claims=(Claim("M4", "M1"), Claim("M3", "M1")),
        epochs=60,
        quick={"batch_size": 32},
    ),
    "cdc": Study(
        method="cdc",
        source="CDC Table 3",
        config={"update_interval": CDC_ITERS_PER_EPOCH, "kmeans_init_n_init": 5},
        spec="cdc_ablation",
        arms=("AE_Lr", "AE_LAE", "AEs_Lc", "AEs_Lc_La", "AEs_LDC"),
        claims=(Claim("AEs_LDC", "AEs_Lc"),),
        epochs=75,
        budget=cdc_budget,
        quick={"pretrain_epochs": 1, "finetune_iters": 10, "update_interval": 5, "kmeans_init_n_init": 1},
        quick_epochs=2,
    ),
    "ics": Study(
        method="ics",
        source="ICS Fig. 5a",
        config={"arch": "shallow"},
        spec="ics_ablation",
        arms=("full", "no_Lt", "Lr_only"),
        claims=(Claim("full", "no_Lt"), Claim("no_Lt", "Lr_only")),
        epochs=50,
        quick={"pretrain_epochs": 1, "n_aug_neg": 3, "neg_tries": 8, "batch_size": 64},
        quick_epochs=2,
    ),
}


# ---------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Gap:
    """Paired-seed gap ``better - worse`` of one metric."""

    n: int
    mean: float
    low: float
    high: float
    verdict: str


def verdict(low: float, high: float) -> str:
    """``holds`` when the whole CI is above 0, ``reversed`` when below 0, else ``not shown``."""
    if low > 0:
        return "holds"
    if high < 0:
        return "reversed"
    return "not shown"


def spread_verdict(gap_mean: float, eager_std: float, rounding: float = math.nan) -> str:
    """``within spread`` when ``|gap_mean|`` is at most the eager arm's seed std; else ``within rounding`` when it
    is at most ``rounding`` (the RMS of one seed's nudged - eager change); else ``below``/``above``."""
    if not math.isfinite(gap_mean) or not math.isfinite(eager_std):
        return "n/a"
    if abs(gap_mean) <= eager_std:
        return "within spread"
    if math.isfinite(rounding) and abs(gap_mean) <= rounding:
        return "within rounding"
    return "below" if gap_mean < 0 else "above"


def rms(values: Sequence[float]) -> float:
    """Root-mean-square of the finite values (NaN when there are none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.sqrt(np.mean(v**2))) if len(v) else math.nan


def paired_gap(better: Sequence[float], worse: Sequence[float], level: float = 0.95) -> Gap:
    """Mean of the paired differences with a Student-t CI (n - 1 degrees of freedom) and its verdict.

    Pairs with a NaN on either side are dropped. Fewer than two pairs give an infinite CI (``not shown``).
    """
    from scipy import stats

    d = np.asarray(better, dtype=float) - np.asarray(worse, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n == 0:
        return Gap(0, math.nan, -math.inf, math.inf, "not shown")
    mean = float(d.mean())
    if n < 2:
        return Gap(n, mean, -math.inf, math.inf, "not shown")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return Gap(n, mean, mean - half, mean + half, verdict(mean - half, mean + half))


# ---------------------------------------------------------------------------------------------- trials
@dataclass(frozen=True)
class Job:
    """One trial: a study's arm at one seed."""

    method: str
    arm: str
    seed: int
    config: dict[str, Any]
    data: dict[str, Any]
    epochs: int
    device: str = "cpu"
    runtime: dict[str, Any] = field(default_factory=dict)
    variant: str = ""
    """``fast``, ``eager`` or ``nudged`` under ``--vs-eager``; empty otherwise."""

    @property
    def nudge(self) -> bool:
        """Train on the inputs nudged one fp32 ulp away from zero (the ``nudged`` variant)."""
        return self.variant == "nudged"


@dataclass
class Outcome:
    """Final evaluation of one trial (NaN and ``error`` set when it failed)."""

    job: Job
    acc: float
    nmi: float
    seconds: float
    error: str = ""
    runtime_tags: dict[str, str] = field(default_factory=dict)
    """What the trial ran with after fallbacks (``runtime.*`` of its last report; empty if it failed)."""


def run_job(job: Job) -> Outcome:
    """Train one trial in this process on ``job.device`` (``job.runtime``) and return its final evaluation."""
    import torch

    from tuneclust.plan import TrialPlan
    from tuneclust.trainable import TrialLoop

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    plan = TrialPlan(
        job.method, {**job.config, "seed": job.seed}, job.data, job.epochs, eval_every=job.epochs
    )
    plan.runtime = job.runtime
    last: dict[str, float] = {}
    try:
        dataset = nudged_dataset(job.data) if job.nudge else None
        for result in TrialLoop(plan, torch.device(job.device), dataset=dataset).run():
            last = result
    except Exception as e:  # a diverged trial is a result (NaN), not a crash of the benchmark
        return Outcome(job, math.nan, math.nan, time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:200])
    tags = {k: str(v) for k, v in last.items() if k.startswith("runtime.")}
    return Outcome(job, float(last["acc"]), float(last["nmi"]), time.perf_counter() - t0, runtime_tags=tags)


def nudged_dataset(data: dict[str, Any]) -> Any:
    """The dataset of ``data`` (a data: section) with every nonzero input one fp32 ulp larger in magnitude."""
    import torch

    from tuneclust.data.registry import DataConfig, load_dataset

    ds = load_dataset(DataConfig.model_validate(data))
    x = ds.x.float()
    away = torch.where(x > 0, math.inf, -math.inf).to(x)
    return dataclasses.replace(ds, x=torch.where(x != 0, torch.nextafter(x, away), x))


def _worker_init(parent: int) -> None:
    """Each pool worker: one torch thread, and it exits when the benchmark process is gone (killed with any
    signal: a worker left behind would go on training and skew whatever runs next on the machine)."""
    import threading

    import torch

    torch.set_num_threads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="fidelity-parent-watch").start()


def run_jobs(jobs: list[Job], workers: int, log: Callable[[str], None]) -> list[Outcome]:
    """Run ``jobs`` in a process pool of ``workers`` (in this process when 1), longest studies first."""
    if workers <= 1:
        outs = []
        for job in jobs:
            outs.append(run_job(job))
            log(_line(outs[-1]))
        return outs
    ctx = mp.get_context("spawn")
    outs: list[Outcome] = []
    pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        for fut in cf.as_completed([pool.submit(run_job, j) for j in jobs]):
            outs.append(fut.result())
            log(_line(outs[-1]))
    except BaseException:  # Ctrl-C or SIGTERM (see main): end the running trials too, not only the queue
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return outs


def _line(o: Outcome) -> str:
    j = o.job
    tail = f"  FAILED {o.error}" if o.error else ""
    arm = f"{j.arm} [{j.variant}]" if j.variant else j.arm
    return (
        f"  {j.method:5s} {arm:11s} seed {j.seed}: acc {o.acc:.3f} nmi {o.nmi:.3f} ({o.seconds:.0f} s){tail}"
    )


# ---------------------------------------------------------------------------------------------- plan
def data_config(spec: str, image_size: int | None, subsample: int | None) -> dict[str, Any]:
    """``--data``: a registry name, or a path to an .npz/.npy/.pkl file."""
    from tuneclust.data.registry import DATASETS

    if spec in DATASETS:
        data: dict[str, Any] = {"name": spec}
    elif Path(spec).suffix in (".npz", ".npy", ".pkl") or Path(spec).exists():
        data = {"name": "npz", "root": str(Path(spec).expanduser())}
    else:
        raise SystemExit(
            f"fidelity.py: --data {spec!r}: expected a registry name {sorted(DATASETS)} or a file path"
        )
    if image_size:
        data["image_size"] = image_size
    if subsample:
        data["subsample"] = subsample
    return data


def parse_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--set METHOD.KEY=VALUE`` (VALUE parsed as YAML) -> {method: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or method not in STUDIES:
            raise SystemExit(
                f"fidelity.py: --set {item!r}: expected METHOD.KEY=VALUE with METHOD in {sorted(STUDIES)}"
            )
        out.setdefault(method, {})[name] = yaml.safe_load(value)
    return out


def parse_runtime(items: Sequence[str]) -> dict[str, Any]:
    """``--runtime KEY=VALUE`` (VALUE parsed as YAML) -> the spec's ``runtime:`` section, validated."""
    from pydantic import ValidationError

    from tuneclust.runtime import RuntimeConfig

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in RuntimeConfig.model_fields:
            raise SystemExit(
                f"fidelity.py: --runtime {item!r}: expected KEY=VALUE with KEY in {sorted(RuntimeConfig.model_fields)}"
            )
        out[key] = yaml.safe_load(value)
    try:
        RuntimeConfig.model_validate(out)
    except ValidationError as e:
        err = e.errors()[0]
        raise SystemExit(f"fidelity.py: --runtime {err['loc'][0]}: {err['msg']}") from None
    return out


def build_jobs(args: argparse.Namespace) -> list[Job]:
    """Every (method, arm, seed) trial of the selected studies, biggest budgets first."""
    sets = parse_sets(args.set)
    runtime = parse_runtime(args.runtime)
    data = data_config(args.data, args.image_size, args.subsample)
    twins: list[tuple[str, dict[str, Any]]] = []  # --vs-eager: (variant, runtime) of each seed's trials
    if args.vs_eager:
        eager = eager_twin(runtime, args.device)
        twins = [("fast", runtime), ("eager", eager), ("nudged", eager)]
    jobs: list[Job] = []
    for name in args.methods:
        st = STUDIES[name]
        if args.quick:
            epochs, cfg = st.quick_epochs, {**st.config, **st.quick}
        else:
            epochs = args.epochs or max(1, round(st.epochs * args.scale))
            cfg = {**st.config, **(st.budget(epochs) if st.budget else {})}
        cfg.update(sets.get(name, {}))
        for arm, over in st.overrides().items():
            if args.arms and arm not in args.arms:
                continue
            for seed in range(args.seeds):
                job = Job(name, arm, seed, {**cfg, **over}, data, epochs, args.device, runtime)
                if not twins:
                    jobs.append(job)
                jobs += [dataclasses.replace(job, runtime=rt, variant=v) for v, rt in twins]
    return jobs


# ---------------------------------------------------------------------------------------------- report
def _fmt(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def tables(outcomes: list[Outcome], methods: Sequence[str]) -> str:
    """Markdown: per arm mean ± std of ACC/NMI; per claim the paired gaps, CIs and verdicts; under
    ``--vs-eager`` (jobs with a variant) each arm and claim per variant, and the fast - eager table (with the
    nudged - eager rounding RMS where the nudged variant ran)."""
    by: dict[tuple[str, str, str], dict[int, Outcome]] = {}
    for o in outcomes:
        by.setdefault((o.job.method, o.job.arm, o.job.variant), {})[o.job.seed] = o
    variants = sorted({o.job.variant for o in outcomes})
    arm_rows = [
        "| method | arm | seeds | ACC mean ± std | NMI mean ± std | failed | s/trial |",
        "|---|---|---|---|---|---|---|",
    ]
    claim_rows = [
        "| method | claim | metric | pairs | gap mean | 95% CI | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    vs_rows = [
        "| method | arm | metric | pairs | fast - eager | 95% CI | eager seed std | nudged - eager RMS | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, variant in ((n, v) for n in methods for v in variants):
        st = STUDIES[name]
        tag = f" [{variant}]" if variant else ""
        for arm in st.arms:
            runs = by.get((name, arm, variant), {})
            if not runs:
                continue
            accs = [o.acc for o in runs.values()]
            nmis = [o.nmi for o in runs.values()]
            secs = np.mean([o.seconds for o in runs.values()]) if runs else math.nan
            failed = sum(bool(o.error) for o in runs.values())
            arm_rows.append(
                f"| {name} | {arm}{tag} | {len(runs)} | {_fmt(accs)} | {_fmt(nmis)} | {failed} | {secs:.0f} |"
            )
            eager = by.get((name, arm, "eager"), {})
            nudged = by.get((name, arm, "nudged"), {})
            if variant == "fast" and eager:
                seeds = sorted(set(runs) & set(eager))
                for metric in METRICS:
                    f_ = [getattr(runs[s], metric) for s in seeds]
                    e_ = np.asarray([getattr(eager[s], metric) for s in seeds], dtype=float)
                    g = paired_gap(f_, e_)
                    e_ = e_[np.isfinite(e_)]
                    std = float(e_.std(ddof=1)) if len(e_) > 1 else math.nan
                    rnd = rms(
                        [getattr(nudged[s], metric) - getattr(eager[s], metric) for s in eager if s in nudged]
                    )
                    rnd_cell = f"{rnd:.3f}" if math.isfinite(rnd) else "n/a"
                    vs_rows.append(
                        f"| {name} | {arm} | {metric.upper()} | {g.n} | {g.mean:+.3f} | [{g.low:+.3f}, {g.high:+.3f}] "
                        f"| {std:.3f} | {rnd_cell} | {spread_verdict(g.mean, std, rnd)} |"
                    )
        for claim in st.claims:
            b, w = by.get((name, claim.better, variant), {}), by.get((name, claim.worse, variant), {})
            seeds = sorted(set(b) & set(w))
            if not seeds:
                continue
            for metric in METRICS:
                g = paired_gap([getattr(b[s], metric) for s in seeds], [getattr(w[s], metric) for s in seeds])
                claim_rows.append(
                    f"| {name} | {claim.better} > {claim.worse}{tag} | {metric.upper()} | {g.n} | {g.mean:+.3f} "
                    f"| [{g.low:+.3f}, {g.high:+.3f}] | {g.verdict} |"
                )
    text = "\n".join(arm_rows) + "\n"
    if len(claim_rows) > 2:  # some claim had both of its arms
        text += "\n" + "\n".join(claim_rows) + "\n"
    if len(vs_rows) > 2:
        text += "\n" + "\n".join(vs_rows) + "\n"
    return text


def runtimes_line(outcomes: Sequence[Outcome]) -> str:
    """The runtimes the trials actually used, e.g. ``runtime.device=cpu, runtime.precision=fp32, ...``."""
    seen = sorted({tuple(sorted(o.runtime_tags.items())) for o in outcomes if o.runtime_tags})
    return "; ".join(", ".join(f"{k}={v}" for k, v in tags) for tags in seen) or "n/a (no trial finished)"


def record(text: str, args: argparse.Namespace, wall: float, runtimes: str) -> None:
    """Append a section with the tables, machine, date, command and runtimes to benchmarks/RESULTS_LOG.md."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import throughput  # the machine line and the one layout of --record sections

    title = f"Fidelity{' (fast path vs fp32 eager)' if args.vs_eager else ''}: {', '.join(args.methods)} on {args.data}"
    facts = [f"{args.workers} worker processes, 1 torch thread each.", f"Runtime: {runtimes}.",
             f"Wall time: {wall / 60:.1f} min."]  # fmt: skip
    throughput.record_section("fidelity.py", title, facts, text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--methods", nargs="+", choices=sorted(STUDIES), default=list(STUDIES), help="studies to run"
    )
    p.add_argument(
        "--data",
        default="digits",
        help="registry dataset name (digits; mnist5k: 5,000 real 28x28 MNIST digits, offline) or .npz/.npy/.pkl path (default digits)",
    )
    p.add_argument("--image-size", type=int, default=None, help="resize images to this square size")
    p.add_argument("--subsample", type=int, default=None, help="keep a seeded subset of this many samples")
    p.add_argument(
        "--arms", nargs="+", default=None, help="run only these arms (claims need both of their arms)"
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 5; --quick 2)")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs of every selected study (replaces the default)"
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply every study's default epochs (GPU runs)"
    )
    p.add_argument("--workers", type=int, default=2, help="trial processes (1 torch thread each; default 2)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="override a config key of one study",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where the trials run (default cpu)"
    )
    p.add_argument(
        "--runtime",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a runtime: key of every trial (precision, channels_last, compile, ...; default fp32 eager)",
    )
    p.add_argument(
        "--vs-eager",
        action="store_true",
        help="train every arm also in fp32 eager, and in fp32 eager on inputs nudged one ulp (how far rounding"
        " alone moves a result), and report fast - eager per arm (the fast path's quality)",
    )
    p.add_argument("--quick", action="store_true", help="CI: 2 seeds, tiny budget, 400 samples")
    p.add_argument("--record", action="store_true", help="append the tables to benchmarks/RESULTS_LOG.md")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = 2 if args.quick else 5
    if args.quick and args.subsample is None:
        args.subsample = 400
    if args.seeds < 1 or args.workers < 1 or args.scale <= 0 or (args.epochs is not None and args.epochs < 1):
        p.error("--seeds, --workers and --epochs must be >= 1 and --scale > 0")
    if args.vs_eager and args.device == "cpu" and not args.runtime:
        p.error("--vs-eager: on the CPU the default runtime is fp32 eager; name the fast one with --runtime")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device is visible here")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    jobs = build_jobs(args)
    # kill/pkill: raise SystemExit, so that run_jobs ends the pool's running trials too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"fidelity: {len(jobs)} trials ({', '.join(args.methods)}), {args.seeds} seeds, {args.workers} workers",
        flush=True,
    )
    t0 = time.perf_counter()
    outcomes = run_jobs(jobs, args.workers, lambda s: print(s, flush=True))
    wall = time.perf_counter() - t0
    text = tables(outcomes, args.methods)
    runtimes = runtimes_line(outcomes)
    print(f"\n{text}\nruntime: {runtimes}\nwall time {wall / 60:.1f} min")
    if args.record:
        record(text, args, wall, runtimes)
        print(f"recorded in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
