"""DCCS (Zhao et al., ECCV 2020): losses against hand computations, the loss toggles, the networks' shapes and
the method on the bundled digits (stable training, style_dim 0, resume). CPU-only, offline, seconds."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from tuneclust.data.registry import DataConfig, Dataset, load_dataset
from tuneclust.losses.dccs import (
    aug_loss,
    critic_loss,
    encoder_adv_loss,
    gradient_penalty,
    interpolate,
    mi_loss,
    sample_prior,
)
from tuneclust.methods.dccs import DCCS, DCCSConfig
from tuneclust.nets.dccs_nets import activation_dim, build_encoder, resolve_encoder

CPU = torch.device("cpu")
FAST = {"mlp_hidden": 64, "style_dim": 8, "hflip": False}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataConfig(name="digits"))


def small(digits: Dataset, n: int = 256) -> Dataset:
    idx = np.random.default_rng(0).permutation(len(digits))[:n]
    return Dataset("digits", digits.x[idx], digits.y[idx], digits.num_classes, digits.mean, digits.std)


def make(data: Dataset, seed: int = 0, **over) -> DCCS:
    torch.manual_seed(seed)
    return DCCS(DCCSConfig(**{**FAST, **over}), data, CPU, epochs=10)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# --- gradient penalty and critic loss -------------------------------------------------------------------
def test_gradient_penalty_linear_critic_is_norm_of_w() -> None:
    # C(z) = w.z + b has gradient w everywhere: GP = (||w|| - 1)^2 = (5 - 1)^2 = 16 for w = (3, 4)
    lin = nn.Linear(2, 1).double()
    with torch.no_grad():
        lin.weight.copy_(t([[3.0, 4.0]]))
        lin.bias.fill_(0.7)
    torch.manual_seed(0)
    zp, zf, eps = torch.randn(5, 2).double(), torch.randn(5, 2).double(), torch.rand(5).double()
    gp = gradient_penalty(lambda z: lin(z).squeeze(1), zp, zf, eps)
    assert gp.item() == pytest.approx(16.0, rel=1e-9)
    gp.backward()  # differentiable w.r.t. the critic: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    np.testing.assert_allclose(lin.weight.grad.numpy(), [[2 * 4 * 3 / 5, 2 * 4 * 4 / 5]], rtol=1e-7)


def test_gradient_penalty_quadratic_critic_by_hand() -> None:
    # C(z) = z^T M z has gradient (M + M^T) z, evaluated at z_hat_i = eps_i z_prior_i + (1 - eps_i) z_fake_i
    m = np.array([[1.0, 2.0], [0.0, -1.0]])
    zp = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]])
    zf = np.array([[0.0, 2.0], [1.0, 1.0], [0.5, 0.5]])
    eps = np.array([0.25, 1.0, 0.0])
    expected = 0.0
    for i in range(3):
        z_hat = [eps[i] * zp[i][k] + (1 - eps[i]) * zf[i][k] for k in range(2)]
        grad = [sum((m[k][j] + m[j][k]) * z_hat[j] for j in range(2)) for k in range(2)]
        expected += (math.sqrt(grad[0] ** 2 + grad[1] ** 2) - 1.0) ** 2 / 3
    mt = torch.from_numpy(m)
    gp = gradient_penalty(lambda z: ((z @ mt) * z).sum(1), t(zp), t(zf), torch.from_numpy(eps))
    assert gp.item() == pytest.approx(expected, rel=1e-9)
    # eps weights the prior sample (Algorithm 1 line 5 / public code): eps = 1 gives z_prior
    np.testing.assert_allclose(interpolate(t(zp), t(zf), torch.from_numpy(eps))[1].numpy(), zp[1])


def test_critic_loss_and_encoder_adv_loss_by_hand() -> None:
    c_fake, c_prior = t([1.0, 2.0, 3.0]), t([4.0, 6.0, 8.0])
    out = critic_loss(c_fake, c_prior, gp=torch.tensor(0.5, dtype=torch.float64), lambda_gp=10.0)
    assert out.wasserstein.item() == pytest.approx(6.0 - 2.0)
    assert out.total.item() == pytest.approx(2.0 - 6.0 + 10.0 * 0.5)
    assert out.gp.item() == 0.5
    assert encoder_adv_loss(c_fake).item() == pytest.approx(-2.0)


# --- L_Aug and L_MI -------------------------------------------------------------------------------------
def test_aug_loss_matches_numpy_kl() -> None:
    rng = np.random.default_rng(0)
    clean, aug = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    p = np.exp(clean) / np.exp(clean).sum(1, keepdims=True)
    q = np.exp(aug) / np.exp(aug).sum(1, keepdims=True)
    expected = (p * np.log(p / q)).sum(1).mean()  # KL(Q(zc|x) || Q(zc|T(x))), batch mean
    assert aug_loss(t(clean), t(aug)).item() == pytest.approx(expected, rel=1e-10)
    assert aug_loss(t(clean), t(clean)).item() == pytest.approx(0.0, abs=1e-12)


def test_aug_loss_target_detach() -> None:
    clean = torch.tensor([[1.0, -1.0, 0.5]], requires_grad=True)
    aug = torch.tensor([[0.0, 0.3, -0.2]], requires_grad=True)
    aug_loss(clean, aug).backward()
    assert clean.grad.abs().sum() > 0  # public code: the clean target is trained too
    clean.grad, aug.grad = None, None
    aug_loss(clean, aug, detach_target=True).backward()
    assert clean.grad is None and aug.grad.abs().sum() > 0


def test_mi_loss_hand_numbers_with_a_fixed_tiny_discriminator() -> None:
    # D(a, z) = a . z ; a = I, z = [[2, 0], [0, -1]]; negatives pair a_i with z_perm(i), perm = (1, 0)
    a, z = t([[1.0, 0.0], [0.0, 1.0]]), t([[2.0, 0.0], [0.0, -1.0]])
    pos, neg = (a * z).sum(1), (a * z[[1, 0]]).sum(1)  # (2, -1) and (0, 0)
    softplus = lambda v: math.log(1 + math.exp(v))  # noqa: E731  -log sigmoid(x) = softplus(-x)
    expected = (softplus(-2.0) + softplus(1.0) + softplus(0.0) + softplus(0.0)) / 4
    assert mi_loss(pos, neg).item() == pytest.approx(expected, rel=1e-12)
    # JSD bound: a discriminator that cannot tell pairs apart gives log 2; a perfect one gives 0
    assert mi_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
    assert mi_loss(torch.full((3,), 50.0), torch.full((3,), -50.0)).item() == pytest.approx(0.0, abs=1e-12)


def test_sample_prior() -> None:
    g = torch.Generator().manual_seed(0)
    z = sample_prior(4000, 4, 3, 0.1, generator=g, device=CPU)
    zc, zs = z[:, :4], z[:, 4:]
    assert z.shape == (4000, 7) and torch.all(zc.sum(1) == 1) and torch.all((zc == 0) | (zc == 1))
    assert torch.allclose(zc.mean(0), torch.full((4,), 0.25), atol=0.03)
    assert zs.std().item() == pytest.approx(0.1, rel=0.05) and abs(zs.mean().item()) < 0.01
    assert sample_prior(5, 3, 0, 0.1, generator=g, device=CPU).shape == (5, 3)


# --- networks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("channels", "size", "width", "arch", "a_dim"),
    [
        (1, 8, None, "small", 64 * 4 * 4),
        (1, 28, None, "conv", 128 * 5 * 5),
        (1, 32, 8, "resnet32", 32 * 4 * 4),
        (3, 32, 8, "resnet32", 32 * 4 * 4),
        (1, 96, 4, "resnet96", 32 * 6 * 6),
    ],
)
def test_encoders_adapt_to_size_and_channels(channels, size, width, arch, a_dim) -> None:
    assert resolve_encoder("auto", size) == arch
    enc = build_encoder("auto", channels, size, num_clusters=10, style_dim=7, width=width)
    zc, zs, a = enc(torch.rand(3, channels, size, size))
    assert zc.shape == (3, 10) and zs.shape == (3, 7) and a.shape == (3, a_dim)
    assert activation_dim(enc, channels, size) == a_dim and enc.training


# --- toggles --------------------------------------------------------------------------------------------
def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("off", ["mi", "aug", "adv"])
def test_toggle_off_removes_exactly_that_term(digits: Dataset, off: str) -> None:
    data = small(digits, 128)
    betas = {"beta_mi": 0.7, "beta_aug": 3.0, "beta_adv": 1.3}
    full, part = make(data, **betas), make(data, **betas, **{off: False})
    part.load_state_dict(full.state_dict())  # same networks and generator state
    x = data.x[:32]
    enc_calls, disc_calls, critic_calls = (_count_calls(m) for m in (part.encoder, part.disc, part.critic))
    on, lo = full.encoder_losses(x), part.encoder_losses(x)
    assert set(lo.terms) == {"mi", "aug", "adv"} - {off}, "an off term is neither computed nor logged"
    weights = {"mi": 0.7, "aug": 3.0, "adv": 1.3}
    expected = sum(weights[k] * lo.terms[k] for k in ("mi", "aug", "adv") if k != off)
    assert lo.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert enc_calls[0] == (1 if off == "aug" else 2)  # T(x) is not encoded when aug is off
    assert disc_calls[0] == (0 if off == "mi" else 1) and critic_calls[0] == (0 if off == "adv" else 1)
    if off in ("mi", "adv"):  # augmentation draws come first, so aug and the other term are identical
        assert lo.total.item() == pytest.approx((on.total - weights[off] * on.terms[off]).item(), rel=1e-5)
    part.optimizers["q"].optimizer.zero_grad(set_to_none=True)
    part.critic.zero_grad(set_to_none=True)
    lo.total.backward()
    if off == "mi":
        assert all(p.grad is None for p in part.disc.parameters())
    if off == "adv":
        assert all(p.grad is None for p in part.critic.parameters())


def test_adv_off_makes_no_critic_steps(digits: Dataset) -> None:
    m = make(small(digits, 200), adv=False, batch_size=20)
    before = [p.detach().clone() for p in m.critic.parameters()]
    calls = _count_calls(m.critic)
    out = m.train_epoch()
    assert calls[0] == 0 and all(torch.equal(a, b) for a, b in zip(before, m.critic.parameters()))
    assert not {"loss_critic", "loss_gp", "loss_adv"} & set(out), "off terms are not logged"
    assert m.steps == 2  # 10 batches: the cadence still gives 2 encoder steps (batches 5 and 10)
    ev = m.evaluate()
    assert "critic_loss" not in ev.scores and "w_distance" not in ev.scores


def test_schedule_is_n_critic_critic_steps_then_one_encoder_step_across_epochs(digits: Dataset) -> None:
    # Algorithm 1 with n_critic 2: C, C, Q, C, C, Q, ... over 7 batches per epoch, the cycle carried into the
    # next epoch (batch 8 is the second of a cycle), each batch a fresh slice of the epoch's permutation
    m = make(small(digits, 140), batch_size=20, n_critic=2)
    turns: list[str] = []
    for _ in range(2):
        seen = []
        for step, idx in m.schedule():
            turns.append({m.step: "Q", m.critic_step: "C"}[step])
            seen.append(idx)
        assert torch.equal(torch.cat(seen).sort().values, torch.arange(140))
    assert "".join(turns) == "CCQCCQC" + "CQCCQCC"
    assert m.batch_count == 14


def test_all_terms_off_is_rejected() -> None:
    with pytest.raises(ValidationError):
        DCCSConfig(mi=False, aug=False, adv=False)
    with pytest.raises(ValidationError):
        DCCSConfig(unknown_key=1)
    with pytest.raises(ValidationError):
        DCCSConfig(image_mode="sobel")


# --- the method on the digits ---------------------------------------------------------------------------
def test_digits_trains_stably(digits: Dataset) -> None:
    # the paper's optimisation settings on 1024 digits, 6 epochs of 16 batches (4 critic : 1 encoder)
    m = make(small(digits, 1024))
    hist = [m.train_epoch() for _ in range(6)]
    assert all(math.isfinite(v) for h in hist for v in h.values())
    assert m.steps == 6 * 16 and m.images_seen == m.steps * 64
    # the critic learns to tell z from the prior: its loss (which starts at ~lambda * GP of a random critic)
    # falls, early vs late epochs
    crit = [h["loss_critic"] for h in hist]
    assert np.mean(crit[-2:]) < np.mean(crit[:2])
    ev = m.evaluate()
    assert len(np.unique(ev.assignment)) >= 3  # the prior keeps the argmax assignment from collapsing
    assert ev.embedding.shape == (1024, 10 + 8) and set(ev.views) == {"kmeans_z", "kmeans_zc", "kmeans_zs"}
    assert np.isfinite(ev.scores["w_distance"]) and ev.scores["critic_loss"] == hist[-1]["loss_critic"]
    np.testing.assert_array_equal(ev.assignment, ev.views["kmeans_zc"].argmax(1))


def test_style_dim_zero(digits: Dataset) -> None:
    m = make(small(digits), style_dim=0)
    out = m.train_epoch()
    assert all(math.isfinite(v) for v in out.values())
    ev = m.evaluate()
    assert ev.embedding.shape == (256, 10) and set(ev.views) == {"kmeans_z", "kmeans_zc"}
    np.testing.assert_allclose(ev.embedding.sum(1), 1.0, rtol=1e-5)  # z is zc alone: softmax rows


def test_evaluate_is_deterministic_and_leaves_training_rng_alone(digits: Dataset) -> None:
    m = make(small(digits))
    m.train_epoch()
    state = m.generator.get_state()
    a, b = m.evaluate(), m.evaluate()
    assert torch.equal(state, m.generator.get_state())
    np.testing.assert_array_equal(a.embedding, b.embedding)
    assert a.scores == b.scores
    assert m.encoder.training and m.critic.training


def test_rgb_images_are_grayed_after_augmentation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g)
    data = Dataset("rgb", x, np.arange(64) % 4, 4, (0.5,) * 3, (0.25,) * 3)
    gray, rgb = make(data, batch_size=8), make(data, batch_size=8, image_mode="rgb")
    assert gray.encoder.features[0].in_channels == 1 and rgb.encoder.features[0].in_channels == 3
    seen = []
    gray.encoder.register_forward_pre_hook(lambda _, inp: seen.append(inp[0].shape[1]))
    gray.train_epoch()
    assert seen and set(seen) == {1}
    assert make(data, normalize="dataset").mean[0] == pytest.approx(
        float((0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean()), rel=1e-5
    )


def test_resume_two_epochs_equal_one_plus_save_load_plus_one(digits: Dataset) -> None:
    data = small(digits, 320)
    a = make(data, batch_size=32)
    straight = [a.train_epoch(), a.train_epoch()]
    b = make(data, batch_size=32)
    first = b.train_epoch()
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    c = make(data, seed=123, batch_size=32)  # different init: everything must come from the checkpoint
    c.load_state_dict(torch.load(buf, weights_only=False))
    assert first == straight[0]
    assert c.train_epoch() == straight[1]
    np.testing.assert_array_equal(c.evaluate().embedding, a.evaluate().embedding)


# --- analysis scripts -----------------------------------------------------------------------------------
def _script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "analysis" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trials(folder, dataset: str, rows: list[dict], with_name_column: bool) -> str:
    import pandas as pd

    folder.mkdir()
    (folder / "spec.yaml").write_text(f"name: {folder.name}\nmethod: dccs\ndata: {{name: {dataset}}}\n")
    base = {"status": "TERMINATED", "config.mi": True, "config.aug": True, "config.adv": True}
    df = pd.DataFrame([{"trial_id": f"t{i}", **base, **r} for i, r in enumerate(rows)])
    if with_name_column:
        df["data.name"] = dataset
    df.to_parquet(folder / "trials.parquet")
    return str(folder)


def test_analysis_scripts_pool_datasets_and_write_figure_and_table(tmp_path) -> None:
    import pandas as pd

    def row(acc: float, **kw) -> dict:
        return {
            "final.acc": acc,
            "final.nmi": acc - 0.1,
            "final.ari": acc - 0.2,
            "final.kmeans_zs_acc": 0.3,
            **kw,
        }

    arms = {"M1": {"config.mi": False, "config.aug": False}, "M4": {}}
    abl = [
        _trials(
            tmp_path / name,
            name,
            [row(a + s / 100, arm=arm, **arms[arm]) for arm, a in (("M1", 0.2), ("M4", 0.6)) for s in (0, 2)],
            with_name_column=False,
        )
        for name in ("cifar10", "fmnist")
    ]
    abl_out = tmp_path / "abl"
    _script("dccs_ablation").main([*abl, "--out", str(abl_out)])
    t5 = pd.read_csv(abl_out / "table5_ablation.csv").set_index("arm")
    assert list(t5.index) == ["M1", "M4"] and t5.loc["M1", "L_MI"] != "x" and t5.loc["M4", "L_Aug"] == "x"
    assert t5.loc["M4", "cifar10 ACC"].startswith("0.6100 ±") and t5.loc["M1", "fmnist ACC (paper)"] == 0.618
    t4 = pd.read_csv(abl_out / "table4_assignment.csv")
    assert len(t4) == 4 and t4["k-means zs"].tolist() == pytest.approx([0.3] * 4)
    assert (abl_out / "fig_ablation.png").stat().st_size > 0

    style = _trials(
        tmp_path / "style",
        "cifar10",
        [
            row(0.2 + d / 200, **{"config.style_dim": d, "config.seed": s})
            for d in (0, 10, 50)
            for s in (0, 1)
        ],
        with_name_column=False,
    )
    _script("dccs_style_dim").main([style, "--out", str(tmp_path / "style_out")])
    sd = pd.read_csv(tmp_path / "style_out" / "style_dim.csv")
    assert sd["style_dim"].tolist() == [0, 10, 50] and sd["acc_mean"].tolist() == pytest.approx(
        [0.2, 0.25, 0.45]
    )
    assert (tmp_path / "style_out" / "fig6_style_dim.png").stat().st_size > 0

    beta_rows = [
        row(0.5 + b / 10, **{"config.beta_aug": b, "data.name": n})
        for n in ("fmnist", "cifar10")
        for b in (1.0, 4.0)
    ]
    beta = _trials(tmp_path / "beta", "cifar10", beta_rows, with_name_column=False)
    _script("dccs_beta_aug").main([beta, "--out", str(tmp_path / "beta_out")])
    ba = pd.read_csv(tmp_path / "beta_out" / "beta_aug.csv")
    assert ba["dataset"].tolist() == ["cifar10", "cifar10", "fmnist", "fmnist"]
    assert ba["acc_mean"].tolist() == pytest.approx([0.6, 0.9, 0.6, 0.9])
    assert (tmp_path / "beta_out" / "fig5_beta_aug.png").stat().st_size > 0
