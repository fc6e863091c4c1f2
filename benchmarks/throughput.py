"""Images/s of an IDFD training epoch: the tuneclust data path versus the usual PIL + DataLoader pipeline.

Both paths train the same network (``tuneclust.nets``) with the same IDFD loss, memory bank and SGD step
(``tuneclust.losses.idfd``, hyperparameters from ``IDFDConfig``), at the same batch size on the same device.
Only the data path differs:

- ``tuneclust``: the method as a trial runs it. The dataset is one float tensor on the device; each batch is
  augmented there, batched with per-sample parameters (``tuneclust.data.augment``), inside ``IDFD.train_epoch``.
- ``reference``: the public-code pipeline. A torch ``Dataset`` returns PIL images through torchvision transforms
  (RandomResizedCrop(size, scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.4), RandomGrayscale(0.2),
  RandomHorizontalFlip, ToTensor, Normalize), a ``DataLoader`` with ``--workers`` processes (persistent, so
  worker start-up is paid in the warm-up epoch only; ``pin_memory`` on a GPU) feeds the training step.

Each path runs one untimed warm-up epoch, then ``--epochs`` timed epochs (synchronising the GPU around each);
the paths' timed epochs are interleaved, in alternating order, so a drifting machine load hits both alike.
``--max-steps`` caps the steps per epoch; both paths then see the same number of images per epoch.

Usage::

    python benchmarks/throughput.py --data synthetic32 --device cuda --record
    python benchmarks/throughput.py --data digits --backbone convnet --max-steps 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data import Dataset as TorchDataset
from torchvision import transforms as T

from tuneclust.data.registry import DataConfig, DataError, Dataset, load_dataset
from tuneclust.losses.idfd import idfd_loss, init_bank, update_bank
from tuneclust.methods import get_method
from tuneclust.methods.idfd import IDFDConfig
from tuneclust.nets.backbones import BACKBONES, build_backbone

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS_LOG.md"
DATASETS = ("digits", "synthetic32", "cifar10")


@dataclass
class Result:
    """The timed epochs of one path."""

    path: str
    device: str
    data: str
    backbone: str
    batch: int
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        """Images trained on per wall-clock second of the timed epochs."""
        return self.images / self.seconds if self.seconds > 0 else float("nan")


# ---------------------------------------------------------------------------------------------- arguments


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an int >= ``low``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=DATASETS, default="synthetic32")
    p.add_argument("--n", type=_at_least(2), default=60000, help="synthetic32: images (CIFAR-10 all: 60000)")
    p.add_argument("--root", default=None, help="cifar10: folder holding cifar-10-batches-py (no download)")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet18")
    p.add_argument("--batch-size", type=_at_least(2), default=128)
    p.add_argument("--epochs", type=_at_least(1), default=2, help="timed epochs (after one warm-up epoch)")
    p.add_argument(
        "--max-steps", type=_at_least(1), default=None, help="cap on steps per epoch (default: all)"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--workers",
        type=_at_least(0),
        default=min(4, os.cpu_count() or 1),
        help="reference DataLoader workers",
    )
    p.add_argument(
        "--threads", type=_at_least(1), default=None, help="torch intra-op threads (default: torch's own)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", action="store_true", help=f"append the results to {RESULTS_MD.name}")
    return p.parse_args(argv)


def fail(message: str) -> NoReturn:
    """Bad input (no GPU, missing files): one line on stderr, exit code 2 (as ``tuneclust`` does)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but torch.cuda.is_available() is False")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------- data


def synthetic_dataset(n: int, seed: int) -> Dataset:
    """``n`` random uint8 32x32 RGB images as a tuneclust Dataset (CIFAR-like sizes, offline)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)).float().div_(255.0)
    mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
    std = tuple(x.std(dim=(0, 2, 3)).tolist())
    y = rng.integers(0, 10, size=n).astype(np.int64)
    return Dataset(name="synthetic32", x=x, y=y, num_classes=10, mean=mean, std=std)


def load_data(args: argparse.Namespace) -> Dataset:
    """The benchmark's dataset on the CPU: synthetic, or a registry dataset (never downloaded)."""
    if args.data == "synthetic32":
        return synthetic_dataset(args.n, args.seed)
    try:
        return load_dataset(DataConfig(name=args.data, root=args.root, download=False))
    except DataError as e:
        fail(str(e))


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """Float (N, C, H, W) in [0, 1] -> uint8 (N, H, W) for one channel or (N, H, W, C), as PIL wants them."""
    a = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(a[..., 0] if a.shape[-1] == 1 else a)


def epoch_size(n: int, batch: int, max_steps: int | None) -> int:
    """Images per epoch of ``IDFD.train_epoch``: capped at ``max_steps`` batches; a trailing batch of one dropped."""
    if max_steps is not None and max_steps * batch < n:
        return max_steps * batch
    return n - 1 if n > batch and n % batch == 1 else n


# ---------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Runner = Callable[[], int]
"""Trains one epoch of a path; returns the images it trained on."""


def _timed(run_epoch: Runner, device: torch.device) -> tuple[int, float]:
    """(images, seconds) of one epoch."""
    sync(device)
    t0 = time.perf_counter()
    images = run_epoch()
    sync(device)
    return images, time.perf_counter() - t0


def time_interleaved(
    runners: dict[str, Runner], epochs: int, device: torch.device
) -> dict[str, tuple[int, float]]:
    """One untimed warm-up epoch per path, then ``epochs`` timed epochs of each, interleaved.

    The order alternates (A B, B A, ...), so a load that drifts during the run (a shared machine) hits every
    path alike instead of whichever ran last.

    Returns:
        Per path: (images, seconds) summed over its timed epochs.
    """
    for run_epoch in runners.values():
        run_epoch()
    totals = {name: (0, 0.0) for name in runners}
    for e in range(epochs):
        for name in list(runners)[:: 1 if e % 2 == 0 else -1]:
            images, seconds = _timed(runners[name], device)
            totals[name] = (totals[name][0] + images, totals[name][1] + seconds)
    return totals


def idfd_config(args: argparse.Namespace) -> IDFDConfig:
    """The method config both paths share (paper defaults, plus backbone, batch size, step cap, seed)."""
    cls = get_method("idfd")
    raw = {
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "max_steps_per_epoch": args.max_steps,
        "seed": args.seed,
    }
    return cls.Config.model_validate(raw)


# ---------------------------------------------------------------------------------------------- tuneclust path


def tuneclust_runner(data: Dataset, args: argparse.Namespace, device: torch.device) -> Runner:
    """``IDFD.train_epoch`` as a trial runs it (data on the device, batched on-device augmentation)."""
    torch.manual_seed(args.seed)
    cls = get_method("idfd")
    method = cls(idfd_config(args), data.to(device), device, args.epochs + 1)

    def run_epoch() -> int:
        before = method.images_seen
        method.train_epoch()
        method.epoch += 1
        return method.images_seen - before

    return run_epoch


def _result(
    path: str, data: Dataset, args: argparse.Namespace, device: torch.device, images: int, seconds: float
) -> Result:
    """A :class:`Result` of ``path`` with the run's settings."""
    return Result(path, device.type, data.name, args.backbone, args.batch_size, images, seconds)


# ---------------------------------------------------------------------------------------------- reference path


class PILImages(TorchDataset):
    """uint8 images served as PIL images through a torchvision transform, with their index (for the bank)."""

    def __init__(self, images: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), i


def reference_transform(cfg: IDFDConfig, size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """The public IDFD code's training transform (plus the flip, as the tuneclust default has it)."""
    s = cfg.aug_color_strength
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(cfg.aug_crop_scale, 1.0)),
            T.ColorJitter(s, s, s),
            T.RandomGrayscale(p=cfg.aug_gray_p),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def reference_loader(
    data: Dataset, cfg: IDFDConfig, args: argparse.Namespace, device: torch.device
) -> DataLoader:
    """Shuffled DataLoader over PIL images, drawing as many images per epoch as ``IDFD.train_epoch`` does."""
    dataset = PILImages(to_uint8_hwc(data.x), reference_transform(cfg, data.image_size, data.mean, data.std))
    g = torch.Generator().manual_seed(args.seed)
    sampler = RandomSampler(
        dataset, num_samples=epoch_size(len(data), cfg.batch_size, args.max_steps), generator=g
    )
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )


class ReferenceTrainer:
    """The IDFD training step of the public code: network, memory bank, IDFD loss, SGD (as ``IDFD`` builds them)."""

    def __init__(self, cfg: IDFDConfig, data: Dataset, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.net = build_backbone(cfg.backbone, data.channels, cfg.feature_dim).to(device)
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        self.bank = init_bank(len(data), cfg.feature_dim, g)
        self.optimizer = torch.optim.SGD(
            self.net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=cfg.lr_milestones, gamma=cfg.lr_gamma
        )

    def step(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """One SGD step on a normalised, augmented batch; returns the (detached) total loss."""
        c = self.cfg
        x = x.to(self.device, non_blocking=True)
        idx = idx.to(self.device, non_blocking=True)
        f = F.normalize(self.net(x), dim=1)
        out = idfd_loss(f, self.bank, idx, tau=c.tau, tau2=c.tau2, weights=c.weights())
        self.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        self.optimizer.step()
        update_bank(self.bank, f.detach(), idx, momentum=c.bank_momentum)
        return out.total.detach()

    def epoch(self, loader: DataLoader) -> int:
        """One pass over ``loader``; returns the images trained on."""
        self.net.train()
        images, total = 0, torch.zeros((), device=self.device)
        for x, idx in loader:
            total += self.step(x, idx)
            images += int(idx.numel())
        self.scheduler.step()
        return images


def reference_runner(data: Dataset, args: argparse.Namespace, device: torch.device) -> Runner:
    """The PIL + torchvision transforms + DataLoader pipeline feeding the same IDFD step.

    The DataLoader's persistent workers live as long as the returned function.
    """
    cfg = idfd_config(args)
    torch.manual_seed(args.seed)
    trainer = ReferenceTrainer(cfg, data, device)
    loader = reference_loader(data, cfg, args, device)
    return lambda: trainer.epoch(loader)


# ---------------------------------------------------------------------------------------------- output


def format_table(results: Sequence[Result]) -> str:
    """A Markdown table; speed-up is relative to the reference path."""
    ref = next((r.images_per_s for r in results if r.path == "reference"), float("nan"))
    lines = [
        "| path | device | data | backbone | batch | images/s | speed-up |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.path} | {r.device} | {r.data} | {r.backbone} | {r.batch} | "
            f"{r.images_per_s:,.1f} | {r.images_per_s / ref:.2f}x |"
        )
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    """One line describing where a benchmark ran (host, cores, CPU model, OS, Python, torch)."""
    return (
        f"{platform.node()}: {os.cpu_count()} CPU cores ({cpu_model()}, {platform.machine()}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
    )


def machine_lines(device: torch.device) -> list[str]:
    """Markdown bullet lines describing where the numbers were taken."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none used"
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores visible; torch intra-op threads: {torch.get_num_threads()}",
        f"- GPU: {gpu}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- load average (1 min) at the end: {os.getloadavg()[0]:.2f}",
    ]


def record(
    results: Sequence[Result], args: argparse.Namespace, argv: Sequence[str], device: torch.device
) -> None:
    """Append a dated section (machine, exact command, settings, table) to ``RESULTS_LOG.md``."""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    steps = "full-pass epochs" if args.max_steps is None else f"at most {args.max_steps} steps/epoch"
    lines = [
        f"### {args.data}, {args.backbone}, {device.type} ({now})",
        "",
        *machine_lines(device),
        f"- command: `{shlex.join(['python', 'benchmarks/throughput.py', *argv])}`",
        f"- settings: {args.epochs} timed epoch(s) after 1 warm-up, {steps}, "
        f"{results[0].images} images timed per path, reference workers: {args.workers}",
        "",
        format_table(results),
        "",
    ]
    append_results(lines)


def record_section(script: str, title: str, facts: Sequence[str], body: str) -> None:
    """Append ``## title (UTC time)`` with the machine, the exact command of ``script``, ``facts`` (bullet texts)
    and ``body`` to benchmarks/RESULTS_LOG.md: the one layout of the scripts' ``--record`` sections."""
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = shlex.join(["python", f"benchmarks/{script}", *sys.argv[1:]])
    bullets = [f"- Machine: {machine()}", f"- Command: `{cmd}`", *(f"- {f}" for f in facts)]
    append_results([f"## {title} ({when})", "", *bullets, "", body])


def append_results(lines: list[str]) -> None:
    """Append one benchmark's section (its lines) to benchmarks/RESULTS_LOG.md."""
    with RESULTS_MD.open("a") as f:
        f.write("\n" + "\n".join(lines))


def main(argv: Sequence[str] | None = None) -> list[Result]:
    """Run both paths, print the table, optionally record it; returns the results (tuneclust first)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_data(args)
    print(f"{args.data}: {len(data)} images {tuple(data.x.shape[1:])}, {args.backbone}, device {device}")
    if device.type == "cpu" and args.max_steps is None and len(data) > 10 * args.batch_size:
        print("note: full-pass epochs on the CPU can take hours; --max-steps caps them", file=sys.stderr)
    runners = {
        "tuneclust": tuneclust_runner(data, args, device),
        "reference": reference_runner(data, args, device),
    }
    totals = time_interleaved(runners, args.epochs, device)
    del runners  # stops the reference's DataLoader workers
    results = [_result(path, data, args, device, *totals[path]) for path in ("tuneclust", "reference")]
    print(format_table(results))
    if args.record:
        record(results, args, argv, device)
        print(f"recorded in {RESULTS_MD}")
    return results


if __name__ == "__main__":
    main()
