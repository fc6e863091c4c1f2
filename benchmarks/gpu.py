"""One GPU benchmark (issue 10): reference loop, each method in each runtime, packing, sweep overhead.

Prints, side by side in one table:

1. ``reference``: the PIL + DataLoader IDFD loop of ``benchmarks/throughput.py`` (imported, not copied).
2. Each method (IDFD ResNet18 batch 128, DCCS, CDC, ICS) driven through the real trial loop,
   ``TrialLoop(TrialPlan(..., runtime=...))``, in four runtimes: fp32 eager, bf16, bf16 + channels_last,
   bf16 + channels_last + compiled (``cudagraphs`` on a GPU, inductor ``default`` on the CPU). A trial runs one
   warm-up epoch (compilation, cuDNN autotuning) then one timed epoch; images/s is the loop's own
   ``images_per_s`` of the timed epoch (evaluation excluded). Ratio: to the reference. FLOP utilisation: FLOPs
   per image (``torch.utils.flop_counter.FlopCounterMode`` over one fp32 epoch of the method) x images/s over the
   GPU's dense bf16 tensor peak (``PEAK_TFLOPS``); ``n/a`` on the CPU or an unlisted GPU. The runtime rows
   differ from fp32 only once the method loop honours ``TrialPlan.runtime``; they are measured, never copied.
3. Packing: 1/4/8 IDFD trials (1/2 on the CPU) as separate processes sharing the device, each with its memory
   capped at 1/k of the GPU; aggregate images/s over a common timed window, with and without CUDA MPS (MPS rows
   only where ``nvidia-cuda-mps-control`` exists; the daemon is started for them and stopped after if it was off).
4. Sweep overhead: wall time of a small sweep through Ray Tune (``run_sweep``) over the same trials run back to
   back in one process. Needs Ray; skipped with a note when Ray is absent, and in ``--quick``.
5. Start-up: a fresh process's IDFD trial, eager and compiled, timed from process start to imports done, the
   loop built, the first epoch (compilation, CUDA-graph capture) and a second epoch. The compiled trial runs twice
   on one new ``TORCHINDUCTOR_CACHE_DIR``: cold (the first trial on a node) then warm (every later trial on that
   node, whose processes share torch's on-disk inductor and AOTAutograd caches). The compiled runtime is the
   fastest row's on a GPU (CUDA graphs) and fp32 + inductor on the CPU. Compiled rows are skipped in ``--quick``
   on the CPU.

Data: synthetic 32x32 RGB images in a temporary ``.npz`` (the registry's ``npz`` dataset), so it runs offline.

On the GPU machine only torch plus tuneclust's light dependencies are needed for parts 1-3 (pydantic, numpy,
scipy, scikit-learn, pillow, torchvision for the reference); carry missing ones as wheels
(see benchmarks/RESULTS_LOG.md). Usage::

    python benchmarks/gpu.py --device cuda --record          # < 8 min on one H100 (target)
    python benchmarks/gpu.py --device cpu --quick            # < 60 s, what the tests run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import throughput  # noqa: E402  (benchmarks/throughput.py: the reference loop)

RESULTS_MD = throughput.RESULTS_MD
METHODS = ("idfd", "dccs", "cdc", "ics")
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
"""Dense bf16 tensor-core peak (TFLOP/s) by a substring of the GPU name (SXM figures; PCIe parts are lower)."""
RUNTIMES = {
    "fp32 eager": {"precision": "fp32", "channels_last": False, "compile": "none"},
    "bf16": {"precision": "bf16", "channels_last": False, "compile": "none"},
    "bf16 + channels_last": {"precision": "bf16", "channels_last": True, "compile": "none"},
    "bf16 + cl + compiled": {"precision": "bf16", "channels_last": True, "compile": "auto-compiled"},
}


@dataclass
class Row:
    """One line of the table."""

    part: str
    what: str
    images_per_s: float | None
    ratio: str = ""
    flop_util: str = ""
    note: str = ""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true", help="tiny sizes for CI: < 60 s on a CPU")
    p.add_argument("--n", type=int, default=None, help="synthetic images (default 16384; --quick 64)")
    p.add_argument("--steps", type=int, default=None, help="IDFD steps per epoch (default 100; --quick 2)")
    p.add_argument(
        "--backbone", default=None, help="IDFD and reference backbone (default resnet18; --quick convnet)"
    )
    p.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS)
    )
    p.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="reference DataLoader workers"
    )
    p.add_argument(
        "--overhead-epochs",
        type=int,
        default=None,
        help="epochs of each sweep-overhead trial (default 2 on the CPU, 5 on a GPU); the target is for ~1-minute trials",
    )
    p.add_argument(
        "--only-overhead",
        action="store_true",
        help="run only the sweep-overhead part (no reference, methods, packing)",
    )
    p.add_argument(
        "--only-startup",
        action="store_true",
        help="run only the start-up part (fresh-process trial: cold and warm compile cache)",
    )
    p.add_argument("--record", action="store_true", help=f"append the table to {RESULTS_MD.name}")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one packed trial, JSON on stdout
    args = p.parse_args(argv)
    args.n = args.n or (64 if args.quick else 16384)
    args.steps = args.steps or (2 if args.quick else 100)
    args.backbone = args.backbone or ("convnet" if args.quick else "resnet18")
    args.methods = [m for m in args.methods.split(",") if m]
    if args.overhead_epochs is not None and args.overhead_epochs < 1:
        p.error("--overhead-epochs must be >= 1")
    if args.only_overhead and args.only_startup:
        p.error("--only-overhead and --only-startup exclude each other")
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; expected some of {list(METHODS)}")
    return args


def write_npz(n: int, path: Path) -> Path:
    """``n`` synthetic uint8 32x32 RGB images with 10 random labels, as the registry's npz layout."""
    data = throughput.synthetic_dataset(n, 0)
    x = (data.x * 255).round().to(torch.uint8).numpy()
    np.savez(path, X=x, y=data.y)
    return path


def method_config(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Each method's benchmark config: its defaults (IDFD: ResNet18, batch 128); --quick adds its smoke overrides."""
    from tuneclust.methods import get_method

    cfg: dict[str, Any] = dict(get_method(method).smoke_overrides) if args.quick else {}
    if method == "idfd":
        cfg.update(backbone=args.backbone, batch_size=128, max_steps_per_epoch=args.steps)
    cfg["kmeans_n_init"] = 1
    return cfg


def runtime_for(name: str, device: torch.device, quick: bool) -> dict[str, Any] | None:
    """The ``runtime:`` dict of a row; None where the row is skipped: in --quick on the CPU only fp32 eager runs
    (bf16 and compilation measure nothing there and take minutes)."""
    rt = dict(RUNTIMES[name])
    if device.type == "cpu" and quick and name != "fp32 eager":
        return None
    if rt["compile"] == "auto-compiled":
        rt["compile"] = "cudagraphs" if device.type == "cuda" else "default"
    return rt


def trial_images_per_s(
    method: str, cfg: dict[str, Any], npz: Path, device: torch.device, runtime: dict[str, Any]
) -> float:
    """images/s of the timed (second) epoch of a real trial loop."""
    from tuneclust.plan import TrialPlan
    from tuneclust.trainable import TrialLoop

    plan = TrialPlan(method, cfg, {"name": "npz", "root": str(npz)}, epochs=2, eval_every=1, cpu=1.0)
    plan.runtime = runtime
    reports = list(TrialLoop(plan, device).run())
    return float(reports[-1]["images_per_s"])


def flops_per_image(method: str, cfg: dict[str, Any], npz: Path, device: torch.device) -> float | None:
    """FLOPs per trained image of one fp32 epoch (FlopCounterMode); None if the method has no ``train_epoch``."""
    from torch.utils.flop_counter import FlopCounterMode

    from tuneclust.plan import TrialPlan
    from tuneclust.trainable import TrialLoop

    plan = TrialPlan(method, cfg, {"name": "npz", "root": str(npz)}, epochs=1, eval_every=1, cpu=1.0)
    loop = TrialLoop(plan, device)
    step = getattr(loop.method, "train_epoch", None)
    if step is None:
        return None
    before = loop.method.images_seen
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            step()
    except RuntimeError:  # e.g. DCCS's gradient penalty: double backward is not supported by the counter
        return None
    images = loop.method.images_seen - before
    return counter.get_total_flops() / images if images else None


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak FLOP/s from ``PEAK_TFLOPS``; None on the CPU or an unlisted GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def reference_images_per_s(npz: Path, args: argparse.Namespace, device: torch.device) -> float:
    """The PIL + DataLoader reference of throughput.py, one warm-up and one timed epoch."""
    from tuneclust.data.registry import DataConfig, load_dataset

    data = load_dataset(DataConfig(name="npz", root=str(npz)))
    targs = SimpleNamespace(
        backbone=args.backbone,
        batch_size=128,
        max_steps=args.steps,
        seed=0,
        workers=min(args.workers, 2) if args.quick else args.workers,
        epochs=1,
    )
    totals = throughput.time_interleaved(
        {"reference": throughput.reference_runner(data, targs, device)}, 1, device
    )
    images, seconds = totals["reference"]
    return images / seconds


# ---------------------------------------------------------------------------------------------- packing


def packed_worker(s: dict[str, Any]) -> None:
    """One packed trial (a subprocess): warm up, signal ready, wait for go, time one epoch; print JSON."""
    from tuneclust.plan import TrialPlan
    from tuneclust.trainable import TrialLoop

    device = torch.device(s["device"])
    if device.type == "cuda" and s["k"] > 1:
        torch.cuda.set_per_process_memory_fraction(1.0 / s["k"], device)
    plan = TrialPlan(
        "idfd", s["cfg"], {"name": "npz", "root": s["npz"]}, epochs=s["epochs"], eval_every=10**9
    )
    plan.runtime = s["runtime"]
    loop = TrialLoop(plan, device)
    m = loop.method
    m.train_epoch()  # warm-up
    m.epoch += 1
    Path(s["ready"]).touch()
    while not Path(s["go"]).exists():
        time.sleep(0.01)
    before = m.images_seen
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.time()
    for _ in range(s["epochs"] - 1):
        m.train_epoch()
        m.epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(json.dumps({"images": m.images_seen - before, "start": t0, "end": time.time()}))


def run_packed(
    k: int, npz: Path, cfg: dict[str, Any], args: argparse.Namespace, device: torch.device
) -> float:
    """Aggregate images/s of ``k`` trials in ``k`` processes over their common timed window."""
    with tempfile.TemporaryDirectory() as d:
        procs, go = [], Path(d) / "go"
        runtime = runtime_for("bf16 + cl + compiled", device, args.quick) or RUNTIMES["fp32 eager"]
        for i in range(k):
            spec = {
                "device": str(device),
                "k": k,
                "cfg": cfg,
                "npz": str(npz),
                "epochs": 2 if args.quick else 3,
                "runtime": runtime,
                "ready": str(Path(d) / f"ready{i}"),
                "go": str(go),
            }
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            procs.append(
                subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            )
        while not all((Path(d) / f"ready{i}").exists() for i in range(k)):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
        go.touch()
        outs = []
        for p in procs:
            out, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"packed trial failed: {err.strip().splitlines()[-1:]}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
    window = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    return sum(o["images"] for o in outs) / window


def mps_cycle() -> tuple[bool, bool]:
    """(MPS usable, started here). Starts the daemon when installed and off."""
    from tuneclust.runtime import mps_status, start_mps

    status = mps_status()
    if status == "running":
        return True, False
    if status == "unavailable":
        return False, False
    try:
        start_mps()
    except RuntimeError as e:
        print(f"note: {e}", file=sys.stderr)
        return False, False
    return True, True


def stop_mps() -> None:
    """Stop an MPS daemon this benchmark started."""
    subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, check=False)


# ---------------------------------------------------------------------------------------------- sweep overhead


def sweep_overhead(npz: Path, args: argparse.Namespace) -> tuple[float | None, str]:
    """(Ray sweep wall time / the same trials back to back in-process, note)."""
    if args.quick:
        return None, "skipped in --quick (a Ray start-up alone exceeds its budget)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return None, "skipped: Ray is not installed here"
    from tuneclust.spec import load_spec
    from tuneclust.sweep import run_sweep
    from tuneclust.trainable import TrialLoop

    trials = 4
    epochs = args.overhead_epochs or (2 if args.device == "cpu" else 5)
    with tempfile.TemporaryDirectory() as d:
        spec_file = Path(d) / "overhead.yaml"
        spec_file.write_text(
            "name: overhead\nmethod: idfd\n"
            f"data: {{name: npz, root: {npz}}}\nbudget: {{epochs: {epochs}, eval_every: {epochs}}}\n"
            f"config: {json.dumps(method_config('idfd', args))}\n"
            f"search: {{seed: {{grid: {list(range(trials))}}}}}\n"
            f"resources: {{cpu: 1, gpu: {1 if args.device == 'cuda' else 0}}}\nmax_concurrent: 1\n"
            "tracking: {mlflow: {enabled: false}}\n"
        )
        spec = load_spec(spec_file)
        t0 = time.perf_counter()
        sweep_plan = spec.sweep_plan()
        for seed in range(trials):
            plan = sweep_plan.trial({"seed": seed, "arm": spec.arms[0]})
            list(TrialLoop(plan, torch.device(args.device)).run())
        direct = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_sweep(spec, storage=str(Path(d) / "runs"), verbose=0)
        swept = time.perf_counter() - t0
    note = f"{trials} trials x {epochs} epochs one at a time: sweep {swept:.1f} s, in-process {direct:.1f} s"
    return swept / direct, note


# ---------------------------------------------------------------------------------------------- start-up


def startup_worker(s: dict[str, Any]) -> None:
    """A fresh process's trial (a subprocess): seconds to build the loop, then of a first and a second epoch."""
    from tuneclust.plan import TrialPlan
    from tuneclust.trainable import TrialLoop

    imported = time.time()
    device = torch.device(s["device"])
    plan = TrialPlan("idfd", s["cfg"], {"name": "npz", "root": s["npz"]}, epochs=2, eval_every=10**9)
    plan.runtime = s["runtime"]
    loop = TrialLoop(plan, device)
    built = time.time()
    epochs = []
    for _ in range(2):
        t0 = time.time()
        loop.method.train_epoch()
        loop.method.epoch += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epochs.append(time.time() - t0)
    print(json.dumps({"imports": imported - s["start"], "build": built - imported, "epochs": epochs}))


def run_startup(
    runtime: dict[str, Any], cache: Path, npz: Path, cfg: dict[str, Any], device: torch.device
) -> dict:
    """One fresh-process trial with ``cache`` as its inductor cache directory; the worker's timings."""
    spec = {"kind": "startup", "device": str(device), "cfg": cfg, "npz": str(npz), "runtime": runtime}
    spec["start"] = time.time()
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"start-up trial failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def startup_rows(npz: Path, args: argparse.Namespace, device: torch.device) -> list[Row]:
    """Eager, then compiled with a cold and a warm on-disk compile cache, each trial in a fresh process."""
    cfg = method_config("idfd", args)
    compiled = runtime_for("bf16 + cl + compiled", device, args.quick)
    if compiled is not None and device.type == "cpu":  # the CPU has no fast bf16: compile the fp32 step
        compiled = {**RUNTIMES["fp32 eager"], "compile": "default"}
    cases = [("eager (fp32)", RUNTIMES["fp32 eager"], "eager")]
    if compiled is not None:
        cases += [(f"compiled ({compiled['compile']}), cold cache", compiled, "compiled")]
        cases += [(f"compiled ({compiled['compile']}), warm cache", compiled, "compiled")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for what, runtime, cache in cases:
            t = run_startup(runtime, Path(d) / cache, npz, cfg, device)
            first, second = t["epochs"]
            note = (
                f"imports {t['imports']:.1f} s, loop built {t['build']:.1f} s, first epoch {first:.1f} s, "
                f"second {second:.1f} s: start-up cost {t['imports'] + t['build'] + first - second:.1f} s"
            )
            rows.append(
                Row("start-up", f"fresh-process IDFD trial, {what}", None, note=f"{note}; runtime {runtime}")
            )
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    if compiled is None:
        rows.append(Row("start-up", "compiled", None, note="skipped in --quick on the CPU"))
    return rows


# ---------------------------------------------------------------------------------------------- main


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table of every row."""
    lines = ["| part | what | img/s | ratio | FLOP util. | note |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r.part} | {r.what} | {_fmt(r.images_per_s)} | {r.ratio} | {r.flop_util} | {r.note} |"
        )
    return "\n".join(lines)


def method_rows(npz: Path, args: argparse.Namespace, device: torch.device, ref: float) -> list[Row]:
    """Each method in each runtime."""
    rows = []
    peak = peak_flops(device)
    for method in args.methods:
        cfg = method_config(method, args)
        count = not args.quick or method == "idfd"  # --quick: one counted epoch is enough to keep it working
        fpi = flops_per_image(method, cfg, npz, device) if count else None
        for name in RUNTIMES:
            rt = runtime_for(name, device, args.quick)
            label = f"{method} {name}"
            if rt is None:
                rows.append(
                    Row("method", label, None, note="skipped in --quick on the CPU (fp32 eager only)")
                )
                continue
            ips = trial_images_per_s(method, cfg, npz, device, rt)
            util = f"{ips * fpi / peak:.1%}" if peak and fpi else "n/a"
            gflop = f"{fpi / 1e9:.2f} GFLOP/img" if fpi else "FLOPs n/a"
            rows.append(Row("method", label, ips, f"{ips / ref:.2f}x", util, f"runtime {rt}; {gflop}"))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def packing_rows(npz: Path, args: argparse.Namespace, device: torch.device) -> list[Row]:
    """1/4/8 (CPU: 1/2) packed IDFD trials, without and (where installed) with MPS."""
    cfg = method_config("idfd", args)
    counts = (1, 4, 8) if device.type == "cuda" else (1, 2)
    rows, single = [], None
    from tuneclust.runtime import mps_status

    status = mps_status() if device.type == "cuda" else "unavailable"
    modes = {"running": [True], "off": [False, True], "unavailable": [False]}[status]
    for mps in modes:
        started = False
        if mps and status == "off":
            usable, started = mps_cycle()
            if not usable:
                rows.append(Row("packing", "MPS on", None, note="could not start the MPS daemon"))
                continue
        for k in counts:
            agg = run_packed(k, npz, cfg, args, device)
            single = agg if k == 1 and single is None else single
            ratio = f"{agg / single:.2f}x of 1" if single else ""
            rows.append(Row("packing", f"{k} IDFD trials, MPS {'on' if mps else 'off'}", agg, ratio))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        if started:
            stop_mps()
    if status == "running":
        rows.append(Row("packing", "MPS off", None, note="the MPS daemon was already running (not stopped)"))
    elif status == "unavailable":
        note = "no GPU" if device.type != "cuda" else "nvidia-cuda-mps-control not installed"
        rows.append(Row("packing", "MPS on", None, note=f"skipped: {note}"))
    return rows


def record(rows: Sequence[Row], argv: Sequence[str], device: torch.device, seconds: float) -> None:
    """Append a dated section (machine, command, table) to RESULTS_LOG.md."""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        f"### benchmarks/gpu.py, {device.type} ({now})",
        "",
        *throughput.machine_lines(device),
        f"- command: `{shlex.join(['python', 'benchmarks/gpu.py', *argv])}` ({seconds:.0f} s)",
        "",
        format_table(rows),
        "",
    ]
    throughput.append_results(lines)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run every part, print the table, optionally record it; returns the rows."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        startup_worker(spec) if spec.get("kind") == "startup" else packed_worker(spec)
        return []
    device = throughput.resolve_device(args.device)
    args.device = device.type
    torch.set_num_threads(1 if device.type == "cpu" else torch.get_num_threads())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        npz = write_npz(args.n, Path(d) / "synthetic32.npz")
        rows = []
        every = not (args.only_overhead or args.only_startup)
        if every:
            ref = reference_images_per_s(npz, args, device)
            rows = [
                Row("reference", "PIL + DataLoader IDFD loop", ref, "1.00x", "", f"{args.workers} workers")
            ]
            print(format_table(rows), flush=True)
            rows += method_rows(npz, args, device, ref)
            rows += packing_rows(npz, args, device)
        if every or args.only_startup:
            rows += startup_rows(npz, args, device)
        if every or args.only_overhead:
            ratio, note = sweep_overhead(npz, args)
            ratio_s = f"{ratio:.2f}x" if ratio else ""
            rows.append(Row("sweep", "overhead (Ray sweep / in-process)", None, ratio_s, "", note))
    seconds = time.perf_counter() - t0
    print()
    print(format_table(rows))
    print(f"({seconds:.0f} s)")
    if args.record:
        record(rows, argv, device, seconds)
        print(f"recorded in {RESULTS_MD}")
    return rows


if __name__ == "__main__":
    main()
