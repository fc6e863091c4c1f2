"""What compiling each step's pure part as one graph buys: every method's train step eager, with only its nets
compiled, and with the whole pure part compiled (augmentation applied with drawn parameters, nets, loss).

Each method trains on synthetic 32x32 RGB images (CIFAR-like sizes, offline) in the device's fast runtime: on a
GPU bf16 + channels_last + CUDA graphs, on the CPU fp32 + inductor (``--precision`` changes the dtype). Per
method and variant the table gives images/s of the timed epoch (the last of ``--epochs``; the first ones compile
and, for CDC and ICS, pre-train: the timed epoch is the main phase, fine-tuning or joint training) and the ratio
to eager. ``--record`` appends it to benchmarks/RESULTS_LOG.md with the machine, date and command.

Usage::

    python benchmarks/step_graph.py --device cuda --record     # a GPU machine
    python benchmarks/step_graph.py --device cpu --n 2048      # here (a few minutes: inductor compiles on the CPU)
    python benchmarks/step_graph.py --quick                    # CI: tiny sizes, IDFD only
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (benchmarks/throughput.py: synthetic data, machine lines, RESULTS_LOG.md)

METHODS = ("idfd", "dccs", "cdc", "ics")
VARIANTS = ("eager", "nets compiled", "step compiled")


def method_config(method: str, quick: bool) -> dict[str, Any]:
    """Each method's defaults (IDFD: ResNet18, batch 128), with the phase lengths that make the last epoch the
    main phase; ``quick``: the smoke overrides and a ConvNet."""
    from tuneclust.methods import get_method

    cfg: dict[str, Any] = dict(get_method(method).smoke_overrides) if quick else {}
    if method == "idfd":
        cfg.update(backbone="convnet" if quick else "resnet18", batch_size=128)
    elif method == "cdc":
        cfg.update(
            pretrain_epochs=1, finetune_iters=40 if quick else 400, update_interval=20 if quick else 200
        )
    elif method == "ics":
        cfg.update(pretrain_epochs=1, n_aug_neg=2 if quick else 10)
    return cfg


def images_per_s(method: str, variant: str, args: argparse.Namespace, device: torch.device) -> float:
    """images/s of the last of ``args.epochs`` epochs of ``method`` in ``variant``."""
    import torch._dynamo

    from tuneclust.methods import get_method
    from tuneclust.runtime import Runtime, compile_available

    gpu = device.type == "cuda"
    mode = "none" if variant == "eager" else ("cudagraphs" if gpu else "default")
    if mode != "none" and not compile_available():
        return float("nan")
    rt = Runtime(
        device=device,
        precision=args.precision or ("bf16" if gpu else "fp32"),
        channels_last=gpu,
        compile_mode=mode,
        tf32=gpu,
        cudnn_benchmark=gpu,
        static_shapes=True,  # the same full batches in every variant
        compile_step=variant == "step compiled",
    )
    rt.apply_global()
    torch._dynamo.reset()
    cls = get_method(method)
    data = throughput.synthetic_dataset(args.n, 0).to(device)
    m = cls(cls.Config(**method_config(method, args.quick)), data, device, args.epochs, rt)
    seconds, images = 0.0, 0
    for epoch in range(args.epochs):
        seen = m.images_seen
        t0 = time.perf_counter()
        m.train_epoch()  # ends with the epoch's one host sync
        seconds, images = time.perf_counter() - t0, m.images_seen - seen
        m.epoch = epoch + 1
    return images / seconds if seconds and images else float("nan")


def table(rows: Sequence[tuple[str, str, float, float]]) -> str:
    lines = ["| method | variant | images/s | vs eager |", "|---|---|---|---|"]
    lines += [f"| {m} | {v} | {ips:,.0f} | {ratio:.2f}x |" for m, v, ips, ratio in rows]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None, help="default: all (--quick: idfd)")
    p.add_argument("--n", type=int, default=None, help="synthetic images (default 8192; --quick 128)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the last is timed (default 3)")
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default=None, help="default: bf16 on a GPU, fp32 on the CPU"
    )
    p.add_argument("--quick", action="store_true", help="CI: tiny sizes, IDFD with a ConvNet")
    p.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS_LOG.md")
    args = p.parse_args(argv)
    args.methods = args.methods or (["idfd"] if args.quick else list(METHODS))
    args.n = args.n or (128 if args.quick else 8192)
    if args.epochs < 2 or args.n < 2:
        p.error("--epochs must be >= 2 (the first compiles) and --n >= 2")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible here")
    return args


def main(argv: Sequence[str] | None = None) -> list[tuple[str, str, float, float]]:
    args = parse_args(argv)
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    t0 = time.perf_counter()
    rows = []
    for method in args.methods:
        eager = None
        for variant in VARIANTS:
            ips = images_per_s(method, variant, args, device)
            eager = eager or ips
            rows.append((method, variant, ips, ips / eager))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print("\n" + text)
    if args.record:
        now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        throughput.append_results(
            [
                f"### benchmarks/step_graph.py, {device.type} ({now})",
                "",
                *throughput.machine_lines(device),
                f"- command: `{shlex.join(['python', 'benchmarks/step_graph.py', *(sys.argv[1:] if argv is None else argv)])}` "
                f"({time.perf_counter() - t0:.0f} s)",
                "",
                text,
                "",
            ]
        )
    return rows


if __name__ == "__main__":
    main()
