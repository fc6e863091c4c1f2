"""CDC: losses against hand/numpy computations, toggles, epoch plan, resume across the phase boundary, a small
accuracy claim on the digits, and the ResNet50 feature command (offline, random weights)."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch

from tuneclust.data.registry import DataConfig, load_dataset
from tuneclust.losses import cdc as L
from tuneclust.losses.dec import kl_divergence, soft_assign, target_distribution
from tuneclust.methods.base import NonFiniteError
from tuneclust.methods.cdc import CDC, CDCConfig
from tuneclust.metrics import labelled_scores
from tuneclust.nets.autoencoders import DenseAutoencoder

CPU = torch.device("cpu")
TINY = {"dims": [16, 16, 32, 4], "batch_size": 32, "kmeans_init_n_init": 2, "pretrain_optimizer": "adam",
        "pretrain_lr": 1e-3}  # fmt: skip
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------------ numpy references
def np_kernel(x: np.ndarray, alpha: float, norm: str) -> np.ndarray:
    n = len(x)
    k = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            k[i, j] = (1.0 + np.sum((x[i] - x[j]) ** 2) / alpha) ** (-(alpha + 1.0) / 2.0)
    if norm == "row":
        return k / k.sum(axis=1, keepdims=True)
    np.fill_diagonal(k, 0.0)
    return k / k.sum()


def np_sharpen(c: np.ndarray, norm: str) -> np.ndarray:
    f = c.sum(axis=0)
    w = np.array([[c[i, j] ** 2 / f[j] for j in range(len(c))] for i in range(len(c))])
    return w / (w.sum(axis=1, keepdims=True) if norm == "row" else w.sum())


def np_kl(p: np.ndarray, q: np.ndarray, norm: str) -> float:
    total = sum(
        p[i, j] * math.log(p[i, j] / q[i, j]) for i in range(len(p)) for j in range(len(p)) if p[i, j] > 0
    )
    return total / len(p) if norm == "row" else total


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits", subsample=300))


def _t(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_kernel_row_and_global_normalisation(alpha):
    x = np.random.default_rng(0).normal(size=(5, 3))
    row = L.pairwise_kernel(_t(x), alpha, "row").numpy()
    glob = L.pairwise_kernel(_t(x), alpha, "global").numpy()
    np.testing.assert_allclose(row.sum(axis=1), np.ones(5), atol=1e-12)
    off = ~np.eye(5, dtype=bool)
    assert glob[off].sum() == pytest.approx(1.0) and np.all(np.diag(glob) == 0)
    np.testing.assert_allclose(row, np_kernel(x, alpha, "row"), rtol=1e-9)
    np.testing.assert_allclose(glob, np_kernel(x, alpha, "global"), rtol=1e-9)


def test_correlation_two_points_by_hand():
    # |z0-z1|^2 = 1 -> k = 1/2, rows (2/3, 1/3); |x0-x1|^2 = 3 -> k = 1/4, rows (4/5, 1/5)
    z, x = _t([[0.0], [1.0]]), _t([[0.0, 0.0], [1.0, math.sqrt(2.0)]])
    expected = 2 / 3 * math.log((2 / 3) / (4 / 5)) + 1 / 3 * math.log((1 / 3) / (1 / 5))
    assert float(L.correlation_loss(z, x, norm="row")) == pytest.approx(expected, rel=1e-9)
    # global mode: two points have one pair (both orders), probability 1/2 each in any space -> KL 0
    assert float(L.correlation_loss(z, x, norm="global")) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("norm", ["row", "global"])
@pytest.mark.parametrize("sharpen", [False, True])
def test_correlation_loss_vs_numpy(norm, sharpen):
    rng = np.random.default_rng(1)
    z, x, x_rec = rng.normal(size=(4, 2)), rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    cz = np_kernel(z, 1.0, norm)
    cz = np_sharpen(cz, norm) if sharpen else cz
    exp_x, exp_rec = np_kl(cz, np_kernel(x, 1.0, norm), norm), np_kl(cz, np_kernel(x_rec, 1.0, norm), norm)
    got = L.correlation_loss(_t(z), _t(x), norm=norm, sharpen_z=sharpen)
    assert float(got) == pytest.approx(exp_x, rel=1e-9)
    re = L.regularization_loss(_t(z), _t(x), _t(x_rec), norm=norm, sharpen_z=sharpen)
    assert (float(re.latent), float(re.output)) == pytest.approx((exp_x, exp_rec), rel=1e-9)
    assert float(re.total) == pytest.approx(exp_x + exp_rec, rel=1e-9)


def test_correlation_loss_zero_when_same_geometry():
    z = torch.randn(6, 3, dtype=torch.float64)
    assert (
        float(L.correlation_loss(z, z @ torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0])) < 1e-12
    )


@pytest.mark.parametrize("norm", ["row", "global"])
def test_affinity_loss_vs_numpy(norm):
    rng = np.random.default_rng(2)
    q = rng.random((4, 3))
    q /= q.sum(axis=1, keepdims=True)
    z = rng.normal(size=(4, 2))
    cq = np_sharpen(np_kernel(q, 1.0, norm), norm)  # C_Q is sharpened like P (Sec. 3.3)
    expected = np_kl(cq, np_kernel(z, 1.0, norm), norm)
    assert float(L.affinity_loss(_t(q), _t(z), norm=norm)) == pytest.approx(expected, rel=1e-9)
    plain = np_kl(np_kernel(q, 1.0, norm), np_kernel(z, 1.0, norm), norm)
    assert float(L.affinity_loss(_t(q), _t(z), norm=norm, sharpen_q=False)) == pytest.approx(plain, rel=1e-9)


def test_affinity_gradient_reaches_centres_unless_detached():
    z = torch.randn(6, 2, requires_grad=True)
    for detach, moves in [(False, True), (True, False)]:
        mu = torch.randn(3, 2, requires_grad=True)
        L.affinity_loss(soft_assign(z, mu), z, detach_target=detach).backward()
        assert (mu.grad is not None and bool(mu.grad.abs().sum() > 0)) == moves  # Algorithm 1 line 12


def test_clustering_loss_by_hand():
    # z on the centres, |z0 - mu1|^2 = 4: q rows (5/6, 1/6) and (1/6, 5/6); f = (1, 1); p rows (25/26, 1/26)...
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    q = soft_assign(z, z.clone())
    np.testing.assert_allclose(q.numpy(), [[5 / 6, 1 / 6], [1 / 6, 5 / 6]], rtol=1e-6)
    p = target_distribution(q)
    np.testing.assert_allclose(p.numpy(), [[25 / 26, 1 / 26], [1 / 26, 25 / 26]], rtol=1e-6)
    expected = 25 / 26 * math.log((25 / 26) / (5 / 6)) + 1 / 26 * math.log((1 / 26) / (1 / 6))
    assert float(kl_divergence(p, q)) == pytest.approx(expected, rel=1e-5)


def test_reconstruction_loss_is_mse():
    x, r = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert float(L.reconstruction_loss(r, x)) == pytest.approx((0 + 4 + 1 + 1) / 4)


# --------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (5, 3, 32, 32), (5, 2048)])
def test_autoencoder_adapts_to_input(shape):
    d_in = int(np.prod(shape[1:]))
    ae = DenseAutoencoder(d_in, [20, 20, 40, 10])
    z, x_rec = ae(torch.rand(shape))
    assert z.shape == (5, 10) and x_rec.shape == (5, d_in)
    first = ae.encoder[0]
    assert first.weight.abs().max() <= math.sqrt(1.0 / d_in) and torch.all(
        first.bias == 0
    )  # DEC's uniform init


# ---------------------------------------------------------------------------------------- method
def _epoch(m: CDC) -> dict[str, float]:
    """One epoch as the trainable runs it: it increments ``m.epoch`` after ``train_epoch`` returns."""
    out = m.train_epoch()
    m.epoch += 1
    return out


def _method(data, epochs, **kw) -> CDC:
    torch.manual_seed(0)
    return CDC(CDCConfig(**{**TINY, **kw}), data, CPU, epochs)


def test_config_defaults_and_strictness():
    cfg = CDCConfig()
    assert (cfg.eta, cfg.beta, cfg.lam, cfg.batch_size, cfg.finetune_iters, cfg.update_interval) == (
        0.75, 1e-3, 1e-3, 64, 5000, 50)  # fmt: skip
    assert cfg.dims == [500, 500, 2000, 10] and cfg.kernel_norm == "row" and cfg.finetune_lr == 0.01
    assert CDC.recommended_epochs(cfg) == cfg.pretrain_epochs + 100
    with pytest.raises(ValueError):
        CDCConfig(gamma=1.0)
    with pytest.raises(ValueError):
        CDCConfig(kernel_norm="col")
    with pytest.raises(ValueError):
        CDCConfig(dims=[500, 0, 10])
    CDCConfig(**CDC.smoke_overrides)


def test_epoch_plan_phases_and_evaluation(digits):
    m = _method(digits, epochs=5, pretrain_epochs=2, finetune_iters=10, update_interval=4)
    assert m.evaluate().assignment is None
    assert m.progress() == {"phase": 0.0, "finetune_iter": 0.0, "lr": m.cfg.pretrain_lr}
    pre = [_epoch(m) for _ in range(2)]
    assert set(pre[0]) == {"loss", "loss_r", "loss_cr_x", "loss_cr_xrec"}
    assert m.progress()["phase"] == 1.0 and m.steps == 2 * math.ceil(300 / 32)  # centres set at the boundary
    ev = m.evaluate()
    assert (
        ev.embedding.shape == (300, 4) and ev.assignment.shape == (300,) and ev.assignment.dtype == np.int64
    )
    steps0 = m.steps
    iters = []
    for _ in range(3):
        before = m.ft_iter
        out = _epoch(m)
        iters.append(m.ft_iter - before)
    assert iters == [4, 3, 3] and m.steps == steps0 + 10  # T = 10 spread over the 3 epochs left
    assert set(out) == {"loss", "loss_c", "loss_a", "loss_cr_x", "loss_cr_xrec", "delta_label"}
    assert 0.0 <= out["delta_label"] <= 1.0


def test_short_budget_and_no_finetune(digits):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = _method(digits, epochs=2, pretrain_epochs=5, finetune_iters=3)
    assert m.n_pretrain == 1 and any("shortened" in str(x.message) for x in w)
    m = _method(digits, epochs=3, pretrain_epochs=1, finetune=False)
    assert _epoch(m) and _epoch(m) == {} and m.evaluate().assignment is None
    assert m.progress()["phase"] == 0.0


@pytest.mark.parametrize("affinity", [True, False])
@pytest.mark.parametrize("regularize", [True, False])
def test_toggles_remove_exactly_their_terms(digits, monkeypatch, affinity, regularize):
    cfg = {"pretrain_epochs": 1, "finetune_iters": 6, "update_interval": 3, "eta": 0.5, "beta": 0.25}
    m = _method(digits, epochs=2, affinity=affinity, regularize=regularize, **cfg)
    _epoch(m)

    def forbidden(*a, **k):
        raise AssertionError("a switched-off term was computed")

    if not affinity:
        monkeypatch.setattr(L, "affinity_loss", forbidden)
    if not regularize:
        monkeypatch.setattr(L, "regularization_loss", forbidden)
    out = _epoch(m)
    assert ("loss_a" in out) == affinity and ("loss_cr_x" in out) == ("loss_cr_xrec" in out) == regularize
    expected = (
        out["loss_c"]
        + 0.5 * out.get("loss_a", 0.0)
        + 0.25 * (out.get("loss_cr_x", 0) + out.get("loss_cr_xrec", 0))
    )
    assert out["loss"] == pytest.approx(expected, rel=1e-5)


def test_pretrain_corr_toggle(digits):
    on = _epoch(_method(digits, epochs=3, pretrain_epochs=2, lam=0.5))
    assert on["loss"] == pytest.approx(on["loss_r"] + 0.5 * (on["loss_cr_x"] + on["loss_cr_xrec"]), rel=1e-5)
    off = _epoch(_method(digits, epochs=3, pretrain_epochs=2, pretrain_corr=False))
    assert set(off) == {"loss", "loss_r"} and off["loss"] == pytest.approx(off["loss_r"])


def test_non_finite_loss_raises(digits):
    bad = load_dataset(DataConfig(name="digits", subsample=64))
    bad.x[3, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite"):
        _epoch(_method(bad, epochs=2, pretrain_epochs=1))


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _same(a: CDC, b: CDC) -> None:
    for (ka, va), (_, vb) in zip(a.ae.state_dict().items(), b.ae.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert torch.equal(a.centers, b.centers) and torch.equal(a.p, b.p)
    assert (a.ft_iter, a.steps, a.images_seen, a.epoch) == (b.ft_iter, b.steps, b.images_seen, b.epoch)


def test_resume_across_phase_boundary(digits):
    kw = {"pretrain_epochs": 2, "finetune_iters": 14, "update_interval": 5}
    straight = _method(digits, epochs=4, **kw)
    logs = [_epoch(straight) for _ in range(4)]
    resumed = _method(digits, epochs=4, **kw)
    _epoch(resumed), _epoch(resumed)  # pre-training, then k-means at the boundary
    state = _roundtrip(resumed.state_dict())
    for _ in range(2):  # resume at the boundary, then once more in the middle of fine-tuning (P mid-interval)
        torch.manual_seed(123)  # a different initialisation: everything must come from the checkpoint
        fresh = CDC(CDCConfig(**{**TINY, **kw}), digits, CPU, 4)
        fresh.load_state_dict(state)
        out = _epoch(fresh)
        assert out == logs[fresh.epoch - 1]
        state = _roundtrip(fresh.state_dict())
    _same(straight, fresh)


def test_finetuning_improves_accuracy_on_digits():
    """Paper Fig. 4 / Table 3: fine-tuning raises ACC over the pre-trained AE's k-means.

    Small net and short schedule so it runs in seconds; lam=1, beta=0.1 and lr 0.05 make the claim hold on the
    digits for each of seeds 0-7 (+0.03 to +0.07 ACC); with the paper's small lam/beta and 300-800 iterations it
    holds for only about half of the seeds on the digits.
    """
    data = load_dataset(DataConfig(name="digits"))
    cfg = {"dims": [64, 64, 128, 10], "pretrain_optimizer": "adam", "pretrain_lr": 3e-3, "pretrain_epochs": 14,
           "kmeans_init_n_init": 5, "lam": 1.0, "finetune_iters": 500, "update_interval": 50, "beta": 0.1,
           "finetune_lr": 0.05}  # fmt: skip
    torch.manual_seed(0)
    m = CDC(CDCConfig(**cfg), data, CPU, epochs=15)
    for _ in range(14):
        _epoch(m)
    acc_ae = labelled_scores(data.y, m.evaluate().assignment)["acc"]
    _epoch(m)
    acc_dc = labelled_scores(data.y, m.evaluate().assignment)["acc"]
    assert acc_ae > 0.6 and acc_dc > acc_ae + 0.01, (acc_ae, acc_dc)


# --------------------------------------------------------------------------------------- features
def test_features_command_offline(tmp_path, capsys):
    from torchvision.models import resnet50

    from tuneclust.features import main

    weights = tmp_path / "r50.pt"
    torch.manual_seed(0)
    torch.save(resnet50(weights=None).state_dict(), weights)
    out = tmp_path / "digits_r50.npz"
    args = ["--data", "digits", "--subsample", "16", "--out", str(out), "--weights", str(weights), "--batch-size", "8",
            "--resize", "64", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    f = np.load(out)
    assert f["X"].shape == (16, 2048) and f["X"].dtype == np.float32 and f["y"].shape == (16,)
    assert (
        f["X"].min() >= 0 and f["X"].max() <= 1 and np.isclose(f["X"].max(axis=0), 1).sum() > 1000
    )  # min-max
    assert main([*args[:-6], "--weights", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pt" in err[0]
