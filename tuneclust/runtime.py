"""How a trial runs on its device: precision, memory layout, compilation and global backend flags.

The spec's ``runtime:`` section is a :class:`RuntimeConfig`. :func:`resolve` turns it into a :class:`Runtime`
for one device: ``auto`` is fast on a GPU (bf16 autocast where the GPU supports it, else fp16 with a grad scaler;
channels_last for conv nets; the train step captured in CUDA graphs through ``torch.compile(mode=
"reduce-overhead")``) and exact on the CPU (fp32, contiguous, eager). A setting asked for explicitly that
cannot apply falls back with one clear :class:`RuntimeWarning` each (the CPU has no CUDA graphs, an old GPU has
no bf16, ``torch.compile`` is missing). :meth:`Runtime.tags` says what was actually used, for MLflow.

This module needs torch and pydantic only (no Ray, no MLflow).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

MPS_PIPE_DIR = "/tmp/nvidia-mps"
"""The MPS control daemon's default pipe directory (``CUDA_MPS_PIPE_DIRECTORY`` overrides it)."""


class RuntimeConfig(BaseModel):
    """The spec's ``runtime:`` section. Defaults are fast on a GPU and exact on the CPU."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast dtype of the forward pass (master weights and optimiser stay fp32). ``auto``: bf16 on a GPU that
    supports it, else fp16 (with a grad scaler) on a GPU; fp32 on the CPU."""
    channels_last: Literal["auto"] | bool = "auto"
    """NHWC memory layout for conv nets and their 4-d inputs. ``auto``: on a GPU, off on the CPU."""
    compile: Literal["auto", "none", "default", "cudagraphs"] = "auto"
    """``torch.compile`` of the train step: ``none`` (eager), ``default`` (inductor), ``cudagraphs``
    (``mode="reduce-overhead"``: kernels captured in CUDA graphs, GPU only). ``auto``: cudagraphs on a GPU,
    none on the CPU."""
    static_shapes: Literal["auto"] | bool = "auto"
    """Every training batch full-sized: the last, smaller batch of an epoch is dropped (a compiled step then
    has one shape to compile and capture). ``false`` keeps it (every sample every epoch, as eager fp32 does;
    a compiled step compiles, and captures, a second graph for its size). ``true`` drops it in eager too (the
    eager reference of a compiled run). ``auto``: on when the step is compiled."""
    tf32: bool = True
    """Allow TF32 matmuls and convolutions on Ampere and newer GPUs (no effect on the CPU)."""
    cudnn_benchmark: bool = True
    """Let cuDNN pick the fastest convolution algorithm for the (static) shapes (no effect on the CPU)."""
    mps: Literal["detect", "start"] = "detect"
    """CUDA MPS (several trials sharing one GPU): ``detect`` only reports whether the daemon runs; ``start``
    starts it with ``nvidia-cuda-mps-control -d`` before the sweep if it is not running (you must own the GPU)."""


def _warn(message: str) -> None:
    warnings.warn(f"runtime: {message}", RuntimeWarning, stacklevel=3)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 autocast natively (CPU: yes; CUDA: compute capability >= 8.0)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu"


class NoScaler:
    """Stands in for :class:`torch.amp.GradScaler` when no loss scaling is needed (fp32, bf16)."""

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def update(self) -> None:
        return None

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        return None

    def is_enabled(self) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@dataclass
class Runtime:
    """A :class:`RuntimeConfig` resolved for one device: only settings that apply there.

    Attributes:
        device: the trial's device.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        channels_last: whether conv modules use NHWC (a convolution with NHWC weights gives NHWC outputs from NCHW
            inputs, so batches are not converted).
        compile_mode: ``none``, ``default`` or ``cudagraphs`` (applied by :meth:`compile`).
        tf32: TF32 allowed (CUDA only; False on the CPU).
        cudnn_benchmark: cuDNN autotuning (CUDA only; False on the CPU).
        static_shapes: every training batch full-sized (the ragged last batch of an epoch dropped).
        compile_step: compile each step's pure part (augmentation applied, nets, loss) as one graph
            (:meth:`compile_fn`); False leaves it eager around the compiled nets' entry points (not a spec key:
            benchmarks/step_graph.py compares the two).
    """

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    compile_mode: str = "none"
    tf32: bool = False
    cudnn_benchmark: bool = False
    static_shapes: bool = False
    compile_step: bool = True

    @property
    def fused_optimizers(self) -> bool:
        """Whether optimisers use their fused kernels (one launch per step for all parameters): on a GPU. The CPU
        keeps torch's reference implementation (exact)."""
        return self.device.type == "cuda"

    def __post_init__(self) -> None:
        if self.precision == "fp16":
            self.scaler: Any = torch.amp.GradScaler(self.device.type)
        else:
            self.scaler = NoScaler()

    @property
    def dtype(self) -> torch.dtype:
        """The autocast dtype (float32 when autocast is off)."""
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """A context manager for the forward pass and loss: autocast to :attr:`dtype`, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare_module(self, net: torch.nn.Module) -> torch.nn.Module:
        """Move ``net`` to channels_last if that is on (in place; returned for chaining)."""
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        return net

    def compile(self, fn: T, dynamic: bool | None = None) -> T:
        """``fn`` (a function or module) compiled as configured; ``fn`` itself for ``none``. ``dynamic``:
        ``torch.compile``'s (None: a second input shape recompiles with that dimension dynamic)."""
        if self.compile_mode == "none":
            return fn
        mode = "reduce-overhead" if self.compile_mode == "cudagraphs" else "default"
        return torch.compile(fn, mode=mode, dynamic=dynamic)  # type: ignore[return-value]

    def compile_net(self, net: torch.nn.Module, entry_points: tuple[str, ...]) -> torch.nn.Module:
        """Compile, in place, the methods of ``net`` that a training step calls (``forward``, or e.g. an
        autoencoder's ``encode``/``decode``, which a compiled ``forward`` alone would leave eager).

        Each becomes an instance attribute holding the compiled bound method, so the module, its parameters and
        its ``state_dict`` keys stay the original ones. Under CUDA graphs the outputs are cloned: a replay
        overwrites the previous replay's outputs, and callers keep them (evaluation concatenates chunks, ICS
        compares an anchor's code with its augmentations'). Returns ``net``.
        """
        if self.compile_mode != "none":
            for name in entry_points:
                setattr(net, name, self._compiled(getattr(net, name)))
        return net

    def _compiled(self, fn: T, dynamic: bool | None = None) -> T:
        """``fn`` compiled, with its outputs cloned out of graph memory under CUDA graphs."""
        compiled = self.compile(fn, dynamic)
        return _cloning(compiled) if self.compile_mode == "cudagraphs" else compiled  # type: ignore[return-value]

    def compile_fn(self, fn: T) -> T:
        """Compile a pure tensor function of the train step (e.g. augmentation applied with drawn parameters,
        the networks and the loss) as one graph, so that its kernels fuse and, under CUDA graphs, launch as one
        replay; ``fn`` itself when compilation is off. Under CUDA graphs the outputs are cloned (see
        :meth:`compile_net`). Shapes stay static: without :attr:`static_shapes` the ragged last batch gets a
        graph of its own, rather than turning every batch's graph dynamic (slower kernels, one capture per size
        under CUDA graphs anyway)."""
        if self.compile_mode == "none" or not self.compile_step:
            return fn
        return self._compiled(fn, dynamic=False)

    def step_begin(self) -> None:
        """Mark a new training iteration for CUDA graph trees (their documented call in a training loop)."""
        if self.compile_mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()

    def apply_global(self) -> None:
        """Set the process-wide backend flags (TF32, cudnn.benchmark). A no-op on the CPU."""
        if self.device.type != "cuda":
            return
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def watch_compile(self) -> CompileWatch | None:
        """A :class:`CompileWatch` counting from now (a trial's start); None when compilation is off."""
        return CompileWatch(self.compile_mode) if self.compile_mode != "none" else None

    def tags(self) -> dict[str, str]:
        """What this trial actually runs with, as ``runtime.<key>`` strings (MLflow tags/params)."""
        return {
            "runtime.device": str(self.device),
            "runtime.precision": self.precision,
            "runtime.channels_last": str(self.channels_last).lower(),
            "runtime.compile": self.compile_mode,
            "runtime.tf32": str(self.tf32).lower(),
            "runtime.cudnn_benchmark": str(self.cudnn_benchmark).lower(),
            "runtime.static_shapes": str(self.static_shapes).lower(),
            "runtime.fused_optimizers": str(self.fused_optimizers).lower(),
        }


def _compile_counts() -> tuple[dict[str, int], int]:
    """torch.compile's process-wide counts so far: graph breaks by reason, and CUDA-graph skips."""
    from torch._dynamo.utils import counters

    return dict(counters["graph_break"]), int(counters["inductor"]["cudagraph_skips"])


class CompileWatch:
    """What ``torch.compile`` did to one trial's step, since the watch began (its counts are process-wide; a
    reused worker's earlier trials are not counted).

    A compiled step that breaks into several graphs, or a graph that inductor declines to capture in a CUDA graph
    (a dynamic shape, a CPU tensor, an in-place update of an input), still trains correctly, only slower: without
    this it would show only in ``images_per_s``. :meth:`report` gives the counts for a trial's result and warns
    once per kind, with the reasons torch gives.
    """

    def __init__(self, compile_mode: str) -> None:
        self.compile_mode = compile_mode
        self._breaks0, self._skips0 = _compile_counts()
        self._warned: set[str] = set()

    def report(self) -> dict[str, float]:
        """``compile_graph_breaks`` (graph breaks met while compiling this trial's steps) and
        ``compile_cudagraph_skips`` (compiled graphs run without CUDA graphs; 0 unless compile is
        ``cudagraphs``), counted since the watch began; one :class:`RuntimeWarning` the first time either is
        nonzero."""
        breaks, skips = _compile_counts()
        new = {r: n - self._breaks0.get(r, 0) for r, n in breaks.items() if n > self._breaks0.get(r, 0)}
        n_breaks, n_skips = sum(new.values()), skips - self._skips0
        if n_breaks and "breaks" not in self._warned:
            self._warned.add("breaks")
            reasons = "; ".join(sorted({r.strip().splitlines()[0] for r in new}))[:300]
            _warn(
                f"torch.compile broke the train step {n_breaks} time(s) ({reasons}): it trains correctly but not"
                " as one graph (slower); TORCH_LOGS=graph_breaks shows where"
            )
        if n_skips and self.compile_mode == "cudagraphs" and "skips" not in self._warned:
            self._warned.add("skips")
            _warn(
                f"{n_skips} compiled graph(s) run without CUDA graphs (inductor declined to capture them): their"
                " kernels launch one by one (slower); TORCH_LOGS=cudagraphs shows why"
            )
        return {"compile_graph_breaks": float(n_breaks), "compile_cudagraph_skips": float(n_skips)}


def _cloning(fn: Any) -> Any:
    """``fn`` whose tensor outputs are cloned (differentiably) out of CUDA-graph memory."""
    from torch.utils._pytree import tree_map

    def call(*args: Any, **kwargs: Any) -> Any:
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, fn(*args, **kwargs))

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def compile_available() -> bool:
    """Whether ``torch.compile`` exists and its default inductor backend can build (needs a C compiler on CPU)."""
    if not hasattr(torch, "compile"):
        return False
    return any(shutil.which(cc) for cc in (os.environ.get("CC", "gcc"), "gcc", "cc", "clang"))


def _precision(cfg: RuntimeConfig, device: torch.device) -> str:
    gpu = device.type == "cuda"
    if cfg.precision == "auto":
        if not gpu:
            return "fp32"
        return "bf16" if bf16_supported(device) else "fp16"
    if cfg.precision == "bf16" and gpu and not bf16_supported(device):
        _warn(f"precision bf16 is not supported by {device} (compute capability < 8.0): using fp16")
        return "fp16"
    if cfg.precision == "fp16" and not gpu:
        _warn(f"precision fp16 needs a GPU (a grad scaler on {device} is not supported): using fp32")
        return "fp32"
    return cfg.precision


def _compile(cfg: RuntimeConfig, device: torch.device) -> str:
    if cfg.compile == "none" or (cfg.compile == "auto" and device.type != "cuda"):
        return "none"
    want = "cudagraphs" if cfg.compile == "auto" else cfg.compile
    if not compile_available():
        _warn(
            f"compile {cfg.compile} needs torch.compile and a C compiler, neither usable here: running eager"
        )
        return "none"
    if want == "cudagraphs" and device.type != "cuda":
        _warn(f"compile cudagraphs needs a CUDA device, not {device}: using compile default (inductor)")
        return "default"
    return want


def resolve(cfg: RuntimeConfig | dict[str, Any] | None, device: torch.device | str) -> Runtime:
    """The settings of ``cfg`` that apply on ``device``; one :class:`RuntimeWarning` per explicit fallback."""
    device = torch.device(device)
    if cfg is None:
        cfg = RuntimeConfig()
    elif isinstance(cfg, dict):
        cfg = RuntimeConfig.model_validate(cfg)
    gpu = device.type == "cuda"
    channels_last = gpu if cfg.channels_last == "auto" else bool(cfg.channels_last)
    compile_mode = _compile(cfg, device)
    static = compile_mode != "none" if cfg.static_shapes == "auto" else bool(cfg.static_shapes)
    return Runtime(
        device=device,
        precision=_precision(cfg, device),
        channels_last=channels_last,
        compile_mode=compile_mode,
        tf32=cfg.tf32 and gpu,
        cudnn_benchmark=cfg.cudnn_benchmark and gpu,
        static_shapes=static,
    )


# CUDA MPS -----------------------------------------------------------------------------------------------------
def mps_pipe_dir() -> Path:
    """The MPS pipe directory this process would use."""
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", MPS_PIPE_DIR))


def mps_status() -> str:
    """``running`` if the MPS control daemon's pipe exists, ``off`` if MPS is installed but not running,
    ``unavailable`` where ``nvidia-cuda-mps-control`` is not installed."""
    if (mps_pipe_dir() / "control").exists():
        return "running"
    if shutil.which("nvidia-cuda-mps-control") is None:
        return "unavailable"
    return "off"


def start_mps() -> str:
    """Start the MPS daemon (``nvidia-cuda-mps-control -d``) unless it runs; return :func:`mps_status` after.

    Raises:
        RuntimeError: MPS is not installed, or the daemon could not be started (e.g. the GPU is not yours).
    """
    status = mps_status()
    if status == "running":
        return status
    if status == "unavailable":
        raise RuntimeError("runtime.mps start: nvidia-cuda-mps-control is not installed on this machine")
    done = subprocess.run(["nvidia-cuda-mps-control", "-d"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"runtime.mps start: nvidia-cuda-mps-control -d failed: {done.stderr.strip()}")
    return mps_status()


def mps_line(mode: str = "detect", gpu_share: float = 1.0) -> str:
    """The sweep's one line about CUDA MPS; with ``mode == "start"`` the daemon is started first if needed.

    Raises:
        RuntimeError: ``start`` was asked for and the daemon cannot be started.
    """
    status = start_mps() if mode == "start" else mps_status()
    packed = 0 < gpu_share < 1
    hint = ""
    if packed and status == "off":
        hint = " (trials share a GPU: set runtime.mps: start, or run `nvidia-cuda-mps-control -d`, to overlap them)"
    return f"CUDA MPS: {status}{hint}"


@contextlib.contextmanager
def no_warnings() -> Iterator[None]:
    """Silence runtime fallback warnings (for callers that already reported them once)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def describe(rt: Runtime) -> str:
    """One line: the runtime actually used, e.g. ``cuda:0 bf16 channels_last cudagraphs``."""
    parts = [str(rt.device), rt.precision]
    if rt.channels_last:
        parts.append("channels_last")
    parts.append("eager" if rt.compile_mode == "none" else f"compile={rt.compile_mode}")
    return " ".join(parts)
