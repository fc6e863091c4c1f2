"""tuneclust.runtime: resolution and fallbacks, and that each resolved setting computes what eager fp32 does.

CPU tests run everywhere; the compile test builds with inductor (needs gcc; ~30-60 s, marked slow); the CUDA
graph test runs only where a GPU is present.
"""

from __future__ import annotations

import warnings

import pydantic
import pytest
import torch
from torch import nn

from tuneclust import runtime
from tuneclust.runtime import RuntimeConfig, resolve

CPU = torch.device("cpu")


def _small_conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def test_auto_is_exact_on_cpu_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rt = resolve(RuntimeConfig(), CPU)
    assert (rt.precision, rt.channels_last, rt.compile_mode, rt.tf32, rt.cudnn_benchmark) == (
        "fp32",
        False,
        "none",
        False,
        False,
    )
    assert rt.tags() == {
        "runtime.device": "cpu",
        "runtime.precision": "fp32",
        "runtime.channels_last": "false",
        "runtime.compile": "none",
        "runtime.tf32": "false",
        "runtime.cudnn_benchmark": "false",
        "runtime.static_shapes": "false",
        "runtime.fused_optimizers": "false",
    }
    assert isinstance(rt.autocast(), type(__import__("contextlib").nullcontext()))


def test_fp16_on_cpu_falls_back_with_one_warning() -> None:
    with pytest.warns(RuntimeWarning, match="fp16 needs a GPU") as rec:
        rt = resolve({"precision": "fp16"}, "cpu")
    assert len(rec) == 1
    assert rt.precision == "fp32"
    assert not rt.scaler.is_enabled()


def test_cudagraphs_on_cpu_falls_back_to_inductor_with_one_warning() -> None:
    with pytest.warns(RuntimeWarning, match="cudagraphs needs a CUDA device") as rec:
        rt = resolve({"compile": "cudagraphs"}, CPU)
    assert len(rec) == 1
    assert rt.compile_mode == "default"


def test_compile_unavailable_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "compile_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="running eager"):
        rt = resolve({"compile": "default"}, CPU)
    assert rt.compile_mode == "none"
    fn = lambda x: x + 1  # noqa: E731
    assert rt.compile(fn) is fn


def test_bf16_on_an_old_gpu_becomes_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: False)
    with pytest.warns(RuntimeWarning, match="bf16 is not supported"):
        assert runtime._precision(RuntimeConfig(precision="bf16"), torch.device("cuda", 0)) == "fp16"
    assert runtime._precision(RuntimeConfig(), torch.device("cuda", 0)) == "fp16"


def test_config_is_strict() -> None:
    with pytest.raises(pydantic.ValidationError):
        RuntimeConfig.model_validate({"precision": "fp8"})
    with pytest.raises(pydantic.ValidationError):
        RuntimeConfig.model_validate({"channels_last": "yes"})
    with pytest.raises(pydantic.ValidationError):
        RuntimeConfig.model_validate({"tf32": 1})
    with pytest.raises(pydantic.ValidationError):
        RuntimeConfig.model_validate({"graphs": True})
    assert RuntimeConfig.model_validate({"channels_last": True}).channels_last is True


def test_channels_last_prepares_module_and_keeps_values() -> None:
    net = _small_conv().eval()
    x = torch.randn(4, 3, 8, 8)
    ref = net(x)
    rt = resolve({"channels_last": True}, CPU)
    rt.prepare_module(net)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert net[0](x).is_contiguous(memory_format=torch.channels_last)  # NCHW batches come out NHWC
    torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_on_cpu_is_close_to_fp32() -> None:
    net = _small_conv().eval()
    x = torch.randn(16, 3, 16, 16)
    ref = net(x)
    rt = resolve({"precision": "bf16"}, CPU)
    assert rt.precision == "bf16"
    with rt.autocast():
        out = net(x)
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits: relative error ~ 2^-8 per op, a few ops deep
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


def test_apply_global_is_a_noop_on_cpu() -> None:
    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32)
    resolve(RuntimeConfig(), CPU).apply_global()
    assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32) == before


def test_mps_status_without_the_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert runtime.mps_status() in ("off", "unavailable")
    (tmp_path / "control").touch()
    assert runtime.mps_status() == "running"
    assert runtime.start_mps() == "running"


def _train_steps(net: nn.Module, step_fn, steps: int = 3) -> list[float]:
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 3, 8, 8, generator=g)
        y = torch.randint(0, 4, (8,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss = step_fn(net, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(net(x), y)


@pytest.mark.slow
def test_compile_default_equals_eager_on_cpu() -> None:
    """Inductor on the CPU reorders float reductions: equal within rtol = atol = 1e-4 over 3 SGD steps."""
    rt = resolve({"compile": "default"}, CPU)
    if rt.compile_mode != "default":
        pytest.skip("torch.compile is unusable here (no C compiler)")
    eager = _small_conv()
    compiled = _small_conv()
    ref = _train_steps(eager, _loss)
    got = _train_steps(compiled, rt.compile(_loss))
    assert got == pytest.approx(ref, rel=1e-4, abs=1e-4)
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU; none is present"
)
def test_cudagraphs_step_equals_eager_on_gpu() -> None:
    dev = torch.device("cuda", 0)
    rt = resolve({"compile": "cudagraphs", "precision": "fp32", "channels_last": False, "tf32": False}, dev)
    rt.apply_global()
    eager = _small_conv().to(dev)
    graphed = _small_conv().to(dev)
    x = torch.randn(8, 3, 8, 8, device=dev)
    y = torch.randint(0, 4, (8,), device=dev)
    step = rt.compile(_loss)
    for _ in range(3):
        torch.testing.assert_close(step(graphed, x, y).clone(), _loss(eager, x, y), rtol=1e-4, atol=1e-4)


SMALL = {
    "idfd": {"backbone": "convnet", "batch_size": 32, "max_steps_per_epoch": 3},
    "dccs": {"batch_size": 32},
    "cdc": {"pretrain_epochs": 1, "finetune_iters": 10, "update_interval": 5, "kmeans_init_n_init": 1},
    "ics": {"pretrain_epochs": 1, "n_aug_neg": 2, "batch_size": 32},
}
"""Two epochs of each method that cover every phase (CDC: pre-training then fine-tuning; ICS: L_r then joint)."""
COMPILED = {
    "idfd": {"net": ("forward",)},
    "dccs": {"encoder": ("forward",), "disc": ("forward",), "critic": ()},
    "cdc": {"ae": ("encode", "decode")},
    "ics": {"net": ("encode", "decode")},
}
"""The entry points each method's step calls on each net: what compilation must reach (DCCS's critic stays eager:
the gradient penalty differentiates it twice)."""


def _is_compiled(fn) -> bool:
    """A torch.compile'd callable, possibly inside the CUDA-graph output-cloning wrapper."""
    return hasattr(fn, "_torchdynamo_orig_callable") or (
        hasattr(fn, "__wrapped__") and _is_compiled(fn.__wrapped__)
    )


def test_cuda_graph_entry_points_clone_their_outputs() -> None:
    """Under CUDA graphs a replay overwrites the last replay's outputs: entry points hand out clones (gradients
    still flow). Checked on the wrapper itself (no graphs on the CPU)."""
    net = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    raw = net.forward
    kept: list[torch.Tensor] = []

    def spy(t: torch.Tensor) -> tuple[torch.Tensor, int]:
        kept.append(raw(t))
        return kept[-1], 7

    wrapped = runtime._cloning(spy)
    out, n = wrapped(x)
    assert n == 7 and out.data_ptr() != kept[-1].data_ptr() and torch.equal(out, kept[-1])
    out.sum().backward()
    assert net.weight.grad is not None and torch.equal(net.weight.grad, x.sum(0).expand(2, 3))
    rt = runtime.Runtime(device=CPU, compile_mode="cudagraphs")
    rt.compile_net(net, ("forward",))
    assert _is_compiled(net.forward) and net.forward.__wrapped__ is not raw


def test_compile_watch_reports_graph_breaks_and_cudagraph_skips_and_warns_once() -> None:
    """A trial's result counts the graph breaks of its compiled step and the graphs inductor ran without CUDA
    graphs (forced on the CPU, where inductor declines every capture), and warns once per kind with the reason."""
    import torch._dynamo

    torch._dynamo.reset()
    assert runtime.Runtime(device=CPU).watch_compile() is None  # eager: nothing to watch, nothing reported
    rt = runtime.Runtime(device=CPU, compile_mode="cudagraphs")
    watch = rt.watch_compile()
    assert watch.report() == {"compile_graph_breaks": 0.0, "compile_cudagraph_skips": 0.0}

    def step(x):
        y = x.sin()
        torch._dynamo.graph_break()
        return y.cos()

    x = torch.randn(8)
    with pytest.warns(RuntimeWarning) as caught:
        assert torch.allclose(rt.compile_fn(step)(x), x.sin().cos())
        got = watch.report()
    assert got["compile_graph_breaks"] == 1 and got["compile_cudagraph_skips"] >= 1, got
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert "broke the train step 1 time(s) (Call to `torch._dynamo.graph_break()`)" in messages[0]
    assert "run without CUDA graphs" in messages[1] and "TORCH_LOGS=cudagraphs" in messages[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: later reports are silent
        assert watch.report() == got
    later = runtime.Runtime(device=CPU, compile_mode="default").watch_compile()
    assert later.report() == {
        "compile_graph_breaks": 0.0,
        "compile_cudagraph_skips": 0.0,
    }  # its own trial only
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("runtime_cfg", "static"),
    [
        ({"precision": "fp32"}, False),  # eager: every sample every epoch
        ({"compile": "default"}, True),  # auto: a compiled step gets one shape
        ({"static_shapes": True}, True),  # eager with a compiled run's batches
        ({"compile": "default", "static_shapes": False}, False),  # compiled, keeping the ragged batch
    ],
)
def test_static_shapes_decides_the_ragged_last_batch(runtime_cfg, static) -> None:
    """``runtime.static_shapes`` drops (or keeps) each epoch's ragged last batch, in the base loop and in CDC's
    fine-tuning batches, and the trial reports which. Construction only (no compilation runs)."""
    from tuneclust.plan import TrialPlan
    from tuneclust.trainable import TrialLoop

    data = {"name": "digits", "subsample": 200}  # 200 = 3 x 64 + 8
    plan = TrialPlan("idfd", {"backbone": "convnet", "batch_size": 64}, data, 1)
    plan.runtime = runtime_cfg
    loop = TrialLoop(plan, CPU)
    assert loop.runtime_tags["runtime.static_shapes"] == str(static).lower()
    assert [len(b) for b in loop.method.batches()] == ([64, 64, 64] if static else [64, 64, 64, 8])
    plan = TrialPlan("cdc", {"batch_size": 64, "pretrain_epochs": 1}, data, 2)
    plan.runtime = runtime_cfg
    cdc = TrialLoop(plan, CPU).method
    sizes = [len(cdc._next_batch()) for _ in range(8)]  # fine-tuning: batches across passes
    assert sizes == ([64] * 8 if static else [64, 64, 64, 8] * 2)


@pytest.mark.slow
def test_a_compiled_step_keeping_the_ragged_batch_trains_as_eager() -> None:
    """``static_shapes: false`` under compile: the last batch of 8 gets a static graph of its own (no break, no
    dynamic recompile of the full-batch graph), and the epoch's losses are eager fp32's (rel 1e-3)."""
    import torch._dynamo

    from tuneclust.plan import TrialPlan
    from tuneclust.trainable import TrialLoop

    runs = {}
    for mode in ("none", "default"):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        plan = TrialPlan(
            "idfd", {"backbone": "convnet", "batch_size": 64}, {"name": "digits", "subsample": 200}, 1
        )
        plan.runtime = {"compile": mode, "static_shapes": False}
        loop = TrialLoop(plan, CPU)
        runs[mode] = list(loop.run())[-1]
        assert loop.method.steps == 4  # 3 full batches and the ragged one
    got, ref = runs["default"], runs["none"]
    assert got["compile_graph_breaks"] == 0
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-3)
    assert got["runtime.static_shapes"] == "false" and got["runtime.compile"] == "default"
    torch._dynamo.reset()


@pytest.mark.parametrize("method", sorted(COMPILED))
def test_compile_reaches_the_entry_points_each_step_calls(method) -> None:
    """A compiled runtime compiles what the step calls (an autoencoder's encode/decode, not only forward), and
    nothing where compilation cannot apply; fp32 eager compiles nothing. Construction only (no compilation runs)."""
    from tuneclust.plan import TrialPlan
    from tuneclust.trainable import TrialLoop

    for mode in ("default", "none"):
        plan = TrialPlan(method, SMALL[method], {"name": "digits", "subsample": 64}, 2)
        plan.runtime = {"compile": mode}
        nets = TrialLoop(plan, CPU).method.nets
        assert set(nets) == set(COMPILED[method])
        for name, net in nets.items():
            for entry in ("forward", "encode", "decode"):
                if hasattr(net, entry):
                    want = mode == "default" and entry in COMPILED[method][name]
                    assert _is_compiled(getattr(net, entry)) is want, (name, entry, mode)
            assert not any(k.startswith("_orig_mod") for k in net.state_dict())  # checkpoints keep their keys


@pytest.mark.parametrize("channels", [1, 3])
def test_idfd_forward_is_one_graph(channels) -> None:
    """IDFD's whole forward (augmentation applied with drawn parameters, normalisation, backbone, loss against
    the bank) traces as one graph without a break, so a compiled step fuses it and CUDA graphs replay it as one;
    3 channels include saturation jitter and grayscale. The runtime compiles it (with the CUDA-graph output
    clones where that is the mode), and eager leaves it the plain method."""
    import torch._dynamo

    from tuneclust.data.registry import Dataset
    from tuneclust.methods import get_method

    g = torch.Generator().manual_seed(0)
    data = Dataset(
        "syn", torch.rand(64, channels, 16, 16, generator=g), None, 4, (0.5,) * channels, (0.25,) * channels
    )
    idfd = get_method("idfd")
    cfg = idfd.Config(backbone="convnet", batch_size=32, aug_flip=True)
    m = idfd(cfg, data, CPU, 1)
    assert m._forward == m.forward_loss  # eager: the method itself
    idx = torch.arange(32)
    params = m.draw_augment(32)
    assert list(params) == ["crop", "jitter", "gray", "flip"]  # drawn, and applied, in this order
    hp = {"tau": cfg.tau, "tau2": cfg.tau2, "weights": cfg.weights()}
    torch._dynamo.reset()
    explained = torch._dynamo.explain(m.forward_loss)(m.x[idx], params, m.bank, idx, hp)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    for mode in ("default", "cudagraphs"):
        compiled = idfd(cfg, data, CPU, 1, runtime.Runtime(device=CPU, compile_mode=mode))
        assert _is_compiled(compiled._forward)
        cloned = not hasattr(compiled._forward, "_torchdynamo_orig_callable")  # the output-cloning wrapper
        assert cloned is (mode == "cudagraphs")


def test_idfd_draw_then_apply_is_its_augmentation() -> None:
    """IDFD draws its whole pipeline, then applies it: the images (and the generator after) equal those of each op
    drawn just before it is applied, in the public code's order (crop, jitter, grayscale, flip)."""
    from tuneclust.data import augment as A
    from tuneclust.data.registry import Dataset
    from tuneclust.methods import get_method

    x = torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    m = get_method("idfd")(
        get_method("idfd").Config(backbone="convnet", aug_flip=True),
        Dataset("syn", x, None, 2, (0.5,) * 3, (0.25,) * 3),
        CPU,
        1,
    )
    state = m.generator.get_state()
    got = m.augment(x)
    g = torch.Generator().manual_seed(0)
    g.set_state(state)
    c = m.cfg
    n, s = len(x), c.aug_color_strength  # each op drawn just before it is applied
    want = A.crop_resize(
        x, A.sample_boxes(n, 12, 12, scale=(c.aug_crop_scale, 1.0), ratio=(3 / 4, 4 / 3), generator=g)
    )
    jitter = A.draw_color_jitter(n, channels=3, brightness=s, contrast=s, saturation=s, generator=g)
    want = A.apply_color_jitter(want, jitter)
    want = A.grayscale_where(want, A.coin(n, c.aug_gray_p, g))
    want = A.flip_where(want, A.coin(n, 0.5, g))
    assert torch.equal(got, want) and not torch.equal(got, x)
    assert torch.equal(m.generator.get_state(), g.get_state())


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(COMPILED))
@pytest.mark.parametrize(
    ("device", "mode"),
    [
        ("cpu", "default"),
        pytest.param(
            "cuda",
            "cudagraphs",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU; none is present"
            ),
        ),
    ],
)
def test_every_method_trains_compiled_as_eager(method, device, mode) -> None:
    """Each method's two epochs (every phase), compiled (inductor on the CPU, CUDA graphs on a GPU), give eager
    fp32's losses (rel 1e-3; ICS's joint epoch 1e-2, its negatives are discrete choices), and dynamo captured
    graphs (compilation ran) without a graph break. TF32 off on the GPU so that eager and compiled compute in fp32 alike."""
    import torch._dynamo

    from tuneclust.plan import TrialPlan
    from tuneclust.trainable import TrialLoop

    runs = {}
    for compile_mode in ("none", mode):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        plan = TrialPlan(method, SMALL[method], {"name": "digits", "subsample": 256}, 2, eval_every=1)
        plan.runtime = {"compile": compile_mode, "precision": "fp32", "channels_last": False, "tf32": False}
        runs[compile_mode] = list(TrialLoop(plan, torch.device(device)).run())
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0) is (compile_mode != "none"), graphs
        breaks = dict(torch._dynamo.utils.counters["graph_break"])
        assert not breaks, breaks  # each step's pure part (augmentation, nets, loss) is whole graphs
    for epoch, (ref, got) in enumerate(zip(runs["none"], runs[mode], strict=True)):
        rel = 1e-2 if method == "ics" and epoch else 1e-3
        for key in [k for k in ref if k.startswith("loss")]:
            assert got[key] == pytest.approx(ref[key], rel=rel, abs=1e-6), (epoch, key)
        assert got["runtime.compile"] == mode
        # the trial's own account: no graph break, and (CUDA graphs) every compiled graph captured
        assert got["compile_graph_breaks"] == 0 and got["compile_cudagraph_skips"] == 0, (epoch, got)
        assert "compile_graph_breaks" not in ref


LOSS_BLIND = {
    "ics": r"net\.((encoder\.\d+\.0|to_latent|from_latent\.0|deconvs\.[01])\.bias|.*running_mean)",
}
"""State the loss cannot see, per method: in ICS's pre-training (L_r only) a bias whose output goes straight (or
through a linear layer) into a batch norm over the batch cancels out, so its gradient is float noise (~1e-5 against
~1e1 for the weights) that Adam's per-coordinate scaling turns into lr-sized steps: it wanders apart between any
two runs that differ by rounding, as do the running means that track it."""


@pytest.mark.parametrize(
    ("method", "config"),
    [
        ("idfd", {"backbone": "convnet", "batch_size": 32, "max_steps_per_epoch": 3}),  # SGD with momentum
        # Adam; pre-training only: the joint phase's discrete choices (k-means centres, negatives) would
        # amplify float rounding into different trajectories
        ("ics", {"pretrain_epochs": 2, "batch_size": 32}),
    ],
)
def test_fused_optimizers_train_as_the_reference(monkeypatch: pytest.MonkeyPatch, method, config) -> None:
    """A GPU runtime builds its optimisers with fused=True; forced on the CPU (where torch has fused SGD and
    Adam too), two epochs train to the reference implementation's losses (every epoch, every term) and
    parameters, buffers and tensor state (rel 1e-4). Not the clustering metrics: k-means on an embedding that
    differs by rounding may settle on another partition (CPU-dependent)."""
    import re

    from tuneclust.plan import TrialPlan
    from tuneclust.trainable import TrialLoop

    def run() -> tuple[TrialLoop, list[dict]]:
        plan = TrialPlan(method, {**config, "seed": 1}, {"name": "digits", "subsample": 128}, 2)
        plan.runtime = {"precision": "fp32"}
        loop = TrialLoop(plan, CPU)
        return loop, list(loop.run())

    def tensors(loop: TrialLoop) -> dict[str, torch.Tensor]:
        state = loop.method.state_dict()
        out = {f"{n}.{k}": v for n, sd in state["nets"].items() for k, v in sd.items()}
        out.update({f"attrs.{k}": v for k, v in state["attrs"].items() if isinstance(v, torch.Tensor)})
        return out

    ref_loop, ref = run()
    monkeypatch.setattr(runtime.Runtime, "fused_optimizers", property(lambda self: True))
    loop, got = run()
    assert all(o.optimizer.defaults.get("fused") for o in loop.method.optimizers.values())
    assert not any(o.optimizer.defaults.get("fused") for o in ref_loop.method.optimizers.values())
    assert got[-1]["runtime.fused_optimizers"] == "true"
    assert len(got) == len(ref) == 2
    for epoch, (r, g) in enumerate(zip(ref, got, strict=True)):
        keys = [k for k in r if k.startswith("loss")]
        assert keys and keys == [k for k in g if k.startswith("loss")], (epoch, keys)
        for key in keys:
            assert g[key] == pytest.approx(r[key], rel=1e-4, abs=1e-6), (epoch, key)
    want, have = tensors(ref_loop), tensors(loop)
    assert want.keys() == have.keys()
    compared = [k for k in want if not re.fullmatch(LOSS_BLIND.get(method, "$^"), k)]
    assert all(k in compared for k in want if k.endswith("weight"))  # every weight is compared
    for key in compared:
        torch.testing.assert_close(
            have[key], want[key], rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}"
        )


def test_spec_runtime_section_reaches_the_trial_plan(tmp_path) -> None:
    from tuneclust.spec import SpecError, load_spec

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: rt\nmethod: idfd\nbudget: {epochs: 1}\nruntime: {precision: bf16, channels_last: false}\n"
    )
    spec = load_spec(path)
    assert spec.runtime.precision == "bf16" and spec.runtime.channels_last is False
    assert resolve(spec.runtime.model_dump(), CPU).precision == "bf16"
    path.write_text("name: rt\nmethod: idfd\nbudget: {epochs: 1}\nruntime: {precision: fp8}\n")
    with pytest.raises(SpecError, match="runtime"):
        load_spec(path)


def test_mps_line_names_the_status_and_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    monkeypatch.setattr(runtime.shutil, "which", lambda name: "/usr/bin/" + name)
    assert runtime.mps_line("detect", 0.25).startswith(
        "CUDA MPS: off (trials share a GPU: set runtime.mps: start"
    )
    assert runtime.mps_line("detect", 1.0) == "CUDA MPS: off"
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    assert runtime.mps_line("detect", 0.25) == "CUDA MPS: unavailable"
    with pytest.raises(RuntimeError, match="not installed"):
        runtime.mps_line("start", 0.25)


def _bf16_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """bf16-representable tensors (rounded once), so fp32 and bf16 calls see the same values."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, fn=torch.randn) -> torch.Tensor:
        return fn(*shape, generator=g).bfloat16()

    q = torch.softmax(r(32, 4).float(), 1).bfloat16()
    return {
        "x": r(32, 64, fn=torch.rand), "x_rec": r(32, 64, fn=torch.rand), "z": r(32, 10), "z2": r(32, 10),
        "z3": r(32, 10), "f": torch.nn.functional.normalize(r(32, 16).float(), dim=1).bfloat16(),
        "bank": torch.nn.functional.normalize(r(100, 16).float(), dim=1).bfloat16(), "q": q,
        "p": torch.softmax(r(32, 4).float() * 3, 1).bfloat16(), "logits": r(32, 4), "logits2": r(32, 4),
        "c": r(32, 1), "c2": r(32, 1),
    }  # fmt: skip


def _every_loss(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each method's combined loss on ``t``; name -> its terms and total."""
    from tuneclust.losses.cdc import cdc_loss
    from tuneclust.losses.dccs import dccs_critic_loss, dccs_loss
    from tuneclust.losses.ics import ics_loss
    from tuneclust.losses.idfd import idfd_loss

    out = {
        "idfd": idfd_loss(t["f"], t["bank"], torch.arange(32), tau=0.07, tau2=2.0,
                          weights={"instance": 1.0, "decorrelation": 1.0, "orthogonal": 0.0}),
        "cdc": cdc_loss({"r": 1.0, "cr_x": 0.5, "cr_xrec": 0.5, "c": 1.0, "a": 0.3}, x=t["x"], z=t["z"],
                        x_rec=t["x_rec"], q=t["q"], p=t["p"], sharpen_z=True),
        "ics": ics_loss({"r": 1.0, "c": 0.8, "b": 0.01, "t": 0.1}, x=t["x"], x_rec=t["x_rec"], q=t["q"], p=t["p"],
                        z=t["z"], z_pos=t["z2"], z_neg=t["z3"], margin=0.24, reduction="sum"),
        "dccs": dccs_loss({"mi": 0.5, "aug": 2.0, "adv": 1.0}, pos_logits=t["c"], neg_logits=t["c2"],
                          zc_logits=t["logits"], zc_logits_aug=t["logits2"], c_fake=t["c"]),
        "dccs_critic": dccs_critic_loss(t["c"], t["c2"], t["c"][0, 0].abs(), lambda_gp=10.0, weight=1.0),
    }  # fmt: skip
    return {k: torch.stack([v.total, *v.terms.values()]) for k, v in out.items()}


def test_losses_run_in_fp32_under_autocast() -> None:
    """Under bf16 autocast every method's loss takes its inputs to fp32 and computes with autocast off: the same
    values as an fp32 call on the same (bf16-rounded) inputs, to the bit, and fp32 results (the runtime's rule:
    low-precision networks, fp32 losses: pairwise distances and logits lose digits in bf16)."""
    t = _bf16_inputs()
    ref = _every_loss({k: v.float() for k, v in t.items()})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _every_loss(t)
    for name in ref:
        assert got[name].dtype == torch.float32, name
        assert torch.equal(got[name], ref[name]), (name, got[name], ref[name])
