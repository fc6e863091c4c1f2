"""How far rounding moves the evaluation's k-means, by number of restarts (``kmeans_n_init``).

Trains the quickstart's IDFD trials (digits, ConvNet, tau in {5, 1, 0.5, 0.1} x seeds, 15 epochs) in-process,
then clusters each trial's final embedding with k-means (sklearn, as every CPU evaluation does) at each
``--n-init``: with two k-means seeds, each on the embedding as trained and on the embedding nudged one ulp (every
value moved to the next float away from zero, as ``fidelity.py --vs-eager``'s nudged twin does to the inputs). The
spread of ACC over these four runs is what rounding and the restart draw alone do to one trial's reported ACC:
the table gives its mean and largest std over trials, and how many trials' ACC ranges over more than .01.

Usage:
    python benchmarks/kmeans_restarts.py                 # 12 trials, n_init 10 and 30 (about 8 min on 2 cores)
    python benchmarks/kmeans_restarts.py --quick         # CI: 2 trials, 2 epochs, 300 images
    python benchmarks/kmeans_restarts.py --record        # append the table to benchmarks/RESULTS_LOG.md
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "RESULTS_LOG.md"
CONFIG = {"variant": "idfd", "backbone": "convnet", "aug_flip": False, "aug_crop_scale": 0.5}


def train(job: tuple[float, int, int, int]) -> tuple[float, int, np.ndarray, np.ndarray]:
    """(tau, seed, final embedding, labels) of one quickstart trial."""
    import torch

    from tuneclust.plan import TrialPlan
    from tuneclust.trainable import TrialLoop

    tau, seed, epochs, subsample = job
    torch.set_num_threads(1)
    data = {"name": "digits", **({"subsample": subsample} if subsample else {})}
    plan = TrialPlan("idfd", {**CONFIG, "tau": tau, "seed": seed}, data, epochs=epochs, eval_every=epochs)
    loop = TrialLoop(plan, torch.device("cpu"))
    for _ in loop.run():
        pass
    return tau, seed, loop.method.evaluate().embedding, loop.labels


def nudge(x: np.ndarray) -> np.ndarray:
    """Every nonzero value moved one ulp away from zero."""
    return np.where(x != 0, np.nextafter(x, np.sign(x) * np.inf), x).astype(x.dtype)


def spread(emb: np.ndarray, labels: np.ndarray, n_init: int) -> list[float]:
    from sklearn.cluster import KMeans

    from tuneclust.metrics import cluster_accuracy

    k = len(np.unique(labels))
    accs = []
    for km_seed, x in itertools.product((0, 1), (emb, nudge(emb))):
        pred = KMeans(n_clusters=k, n_init=n_init, random_state=km_seed).fit_predict(x.astype(np.float64))
        accs.append(cluster_accuracy(labels, pred))
    return accs


def run(args: argparse.Namespace) -> str:
    taus = [5.0, 0.1] if args.quick else [5.0, 1.0, 0.5, 0.1]
    seeds = [0] if args.quick else list(range(args.seeds))
    epochs, sub = (2, 300) if args.quick else (args.epochs, 0)
    jobs = [(t, s, epochs, sub) for t in taus for s in seeds]
    with get_context("spawn").Pool(args.workers) as pool:
        trained = pool.map(train, jobs, chunksize=1)
    lines = [
        "| n_init | trials | mean ACC std | max ACC std | trials with ACC range > .01 | k-means s |",
        "|---|---|---|---|---|---|",
    ]
    for n_init in args.n_init:
        t0 = time.perf_counter()
        stds, wide = [], 0
        for _, _, emb, labels in trained:
            accs = spread(emb, labels, n_init)
            stds.append(float(np.std(accs)))
            wide += (max(accs) - min(accs)) > 0.01
        lines.append(
            f"| {n_init} | {len(trained)} | {np.mean(stds):.4f} | {np.max(stds):.4f} | {wide} | "
            f"{time.perf_counter() - t0:.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--n-init", type=int, nargs="+", default=[10, 30], help="restarts to compare (default 10 30)"
    )
    p.add_argument("--seeds", type=int, default=3, help="training seeds per tau (default 3)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    p.add_argument("--workers", type=int, default=2, help="trials trained at once (default 2)")
    p.add_argument("--quick", action="store_true", help="CI: 2 trials, 2 epochs, 300 images")
    p.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS_LOG.md")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    table = run(args)
    print(table)
    if args.record:
        from throughput import cpu_model  # benchmarks/throughput.py: the one /proc/cpuinfo reader

        cmd = "python benchmarks/kmeans_restarts.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as f:
            f.write(
                f"\n## k-means restarts vs rounding ({when})\n\n"
                f"- Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}.\n"
                f"- Command: `{cmd}`\n- Wall time: {(time.perf_counter() - t0) / 60:.1f} min.\n\n{table}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
