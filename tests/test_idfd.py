"""IDFD (Tao, Takagi, Nakata, ICLR 2021): losses against hand computations, the bank rules, and the method on
the bundled digits (learning, determinism, resume). CPU-only, offline, a few seconds."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from tuneclust.data.registry import DataConfig, Dataset, load_dataset
from tuneclust.losses.idfd import (
    feature_decorrelation_loss,
    feature_orthogonal_loss,
    idfd_loss,
    init_bank,
    instance_loss,
    update_bank,
    variant_weights,
)
from tuneclust.methods.base import NonFiniteError
from tuneclust.methods.idfd import IDFD, IDFDConfig

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# --- losses vs hand computations ------------------------------------------------------------------------
def test_instance_loss_closed_form() -> None:
    # one feature (1, 0); bank rows (1,0), (0,1), (-1,0); target 0; tau 1: -1 + log(e + 1 + 1/e)
    loss = instance_loss(
        t([[1.0, 0.0]]), t([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), torch.tensor([0]), tau=1.0
    )
    assert loss.item() == pytest.approx(-1.0 + math.log(math.e + 1.0 + 1.0 / math.e), rel=1e-12)


def test_instance_loss_matches_loops() -> None:
    f = [[0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [1.0, 0.0, 0.0]]
    bank = [[0.2, -0.5, 0.1], [0.9, 0.1, 0.3], [-0.4, 0.4, 0.8], [0.0, 0.0, 1.0], [0.5, 0.5, -0.5]]
    idx, tau = [3, 0, 1], 0.3
    expected = 0.0
    for b, i in enumerate(idx):
        s = [sum(f[b][k] * bank[j][k] for k in range(3)) / tau for j in range(len(bank))]
        expected += -s[i] + math.log(sum(math.exp(v) for v in s))
    got = instance_loss(t(f), t(bank), torch.tensor(idx), tau=tau)
    assert got.item() == pytest.approx(expected / len(idx), rel=1e-10)


def _column_normalised_loops(f: list[list[float]]) -> list[list[float]]:
    n, d = len(f), len(f[0])
    norms = [math.sqrt(sum(f[b][l] ** 2 for b in range(n))) for l in range(d)]  # noqa: E741
    return [[f[b][l] / norms[l] for l in range(d)] for b in range(n)]  # noqa: E741


def test_feature_decorrelation_matches_loops() -> None:
    f = [[0.3, -1.2, 0.5, 2.0], [1.1, 0.4, -0.7, 0.1], [-0.2, 0.9, 0.6, 1.5]]
    tau2 = 0.7
    fn = _column_normalised_loops(f)
    d = 4
    expected = 0.0
    for l in range(d):  # noqa: E741
        c = [sum(fn[b][l] * fn[b][m] for b in range(3)) / tau2 for m in range(d)]
        expected += -c[l] + math.log(sum(math.exp(v) for v in c))
    assert feature_decorrelation_loss(t(f), tau2).item() == pytest.approx(expected / d, rel=1e-10)


def test_feature_decorrelation_orthogonal_columns_closed_form() -> None:
    # orthogonal columns: C = I / tau2, each row gives -1/tau2 + log(e^{1/tau2} + (d - 1))
    f = t([[3.0, 0.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    tau2 = 2.0
    expected = -1 / tau2 + math.log(math.exp(1 / tau2) + 2)
    assert feature_decorrelation_loss(f, tau2).item() == pytest.approx(expected, rel=1e-12)


def test_feature_losses_invariant_to_column_scaling_and_grow_with_correlation() -> None:
    torch.manual_seed(0)
    f = torch.randn(16, 6, dtype=torch.float64)
    scaled = f * torch.tensor([0.1, 3.0, 7.0, 0.5, 1.0, 100.0], dtype=torch.float64)
    assert feature_decorrelation_loss(scaled, 2.0).item() == pytest.approx(
        feature_decorrelation_loss(f, 2.0).item(), rel=1e-10
    )
    assert feature_orthogonal_loss(scaled).item() == pytest.approx(
        feature_orthogonal_loss(f).item(), rel=1e-10
    )
    # Sec. 3.2: dL_F / d(f_j^T f_l) >= 0 for j != l, so correlating two columns raises L_F
    correlated = f.clone()
    correlated[:, 1] = f[:, 0] + 0.1 * f[:, 1]
    assert feature_decorrelation_loss(correlated, 2.0) > feature_decorrelation_loss(f, 2.0)


def test_feature_orthogonal_matches_hand_value() -> None:
    # columns (1,0) and (1,1)/sqrt2: G = [[1, 1/sqrt2], [1/sqrt2, 1]], ||G - I||^2 = 1, / d = 0.5
    assert feature_orthogonal_loss(t([[1.0, 1.0], [0.0, 1.0]])).item() == pytest.approx(0.5, rel=1e-12)
    f = [[0.3, -1.2, 0.5], [1.1, 0.4, -0.7], [-0.2, 0.9, 0.6], [0.5, 0.5, 0.5]]
    fn = _column_normalised_loops(f)
    expected = 0.0
    for l in range(3):  # noqa: E741
        for m in range(3):
            g = sum(fn[b][l] * fn[b][m] for b in range(4))
            expected += (g - (1.0 if l == m else 0.0)) ** 2
    assert feature_orthogonal_loss(t(f)).item() == pytest.approx(expected / 3, rel=1e-10)


def test_feature_orthogonal_lower_bound_when_batch_smaller_than_d() -> None:
    # F^T F is PSD with unit diagonal and rank <= B: ||F^T F - I||^2 >= d^2 / B - d, so L_FO >= d / B - 1
    torch.manual_seed(0)
    for b, d in ((3, 6), (4, 12), (8, 16)):
        assert feature_orthogonal_loss(torch.randn(b, d, dtype=torch.float64)).item() >= d / b - 1 - 1e-9
    assert feature_orthogonal_loss(torch.eye(5, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-12)


# --- memory bank ------------------------------------------------------------------------------------------
def test_update_bank_rule() -> None:
    bank = t([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    update_bank(bank, t([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 2]), momentum=0.5)
    r = 1 / math.sqrt(2)
    # row 2: 0.5 (0.6, 0.8) + 0.5 (1, 0) = (0.8, 0.4), normalised by sqrt(0.8)
    expected = [[r, r], [0.0, 1.0], [0.8 / math.sqrt(0.8), 0.4 / math.sqrt(0.8)]]
    assert torch.allclose(bank, t(expected), atol=1e-12)
    bank = t([[1.0, 0.0]])
    update_bank(bank, t([[0.0, 1.0]]), torch.tensor([0]), momentum=0.25)  # (0.25, 0.75) / sqrt(0.625)
    assert torch.allclose(bank, t([[0.25 / math.sqrt(0.625), 0.75 / math.sqrt(0.625)]]), atol=1e-12)


def test_update_bank_keeps_graph_out() -> None:
    f = torch.tensor([[0.0, 1.0]], requires_grad=True)
    bank = torch.tensor([[1.0, 0.0]])
    update_bank(bank, f * 2, torch.tensor([0]))
    assert not bank.requires_grad


def test_init_bank_range_and_determinism() -> None:
    d = 12
    bank = init_bank(3000, d, torch.Generator().manual_seed(0))
    bound = 1 / math.sqrt(d / 3)  # 0.5
    assert bank.shape == (3000, d) and bank.min() >= -bound and bank.max() <= bound
    assert bank.min() < -0.49 and bank.max() > 0.49
    assert bank.pow(2).sum(1).mean().item() == pytest.approx(1.0, abs=0.03)  # variance 1/d: rows of norm ~1
    assert torch.equal(bank, init_bank(3000, d, torch.Generator().manual_seed(0)))
    assert not torch.equal(bank, init_bank(3000, d, torch.Generator().manual_seed(1)))


# --- combining --------------------------------------------------------------------------------------------
def test_idfd_loss_combines_terms_with_alpha() -> None:
    torch.manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(8, 5, dtype=torch.float64), dim=1).requires_grad_()
    bank = torch.nn.functional.normalize(torch.randn(20, 5, dtype=torch.float64), dim=1)
    idx = torch.randperm(20)[:8]
    l_i = instance_loss(f, bank, idx, 0.5)
    l_f = feature_decorrelation_loss(f, 3.0)
    l_fo = feature_orthogonal_loss(f)

    def loss(variant: str, alpha: float):
        return idfd_loss(f, bank, idx, tau=0.5, tau2=3.0, weights=variant_weights(variant, alpha))

    out = loss("idfd", 2.5)
    assert torch.allclose(out.terms["instance"], l_i) and torch.allclose(out.terms["decorrelation"], l_f)
    assert set(out.terms) == {"instance", "decorrelation"}
    assert out.total.item() == pytest.approx(l_i.item() + 2.5 * l_f.item(), rel=1e-12)
    out = loss("idfo", 10.0)
    assert set(out.terms) == {"instance", "orthogonal"}
    assert out.total.item() == pytest.approx(l_i.item() + 10.0 * l_fo.item(), rel=1e-12)
    out = loss("id", 2.5)
    assert set(out.terms) == {"instance"} and out.total.item() == pytest.approx(l_i.item(), rel=1e-12)
    out = loss("idfd", 0.0)  # a weight of 0 switches the term off: not computed, not logged
    assert set(out.terms) == {"instance"} and out.total.item() == pytest.approx(l_i.item(), rel=1e-12)
    assert set(out.logged()) == {"loss", "loss_instance"}
    out.total.backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()
    with pytest.raises(ValueError, match="variant"):
        variant_weights("idx", 1.0)  # type: ignore[arg-type]


# --- the method on the digits -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataConfig(name="digits"))


def _subset(data: Dataset, n: int) -> Dataset:
    return replace(data, x=data.x[:n].contiguous(), y=data.y[:n])


def _method(data: Dataset, seed: int = 0, epochs: int = 10, **kw: object) -> IDFD:
    cfg = IDFDConfig(backbone="convnet", batch_size=50, aug_flip=False, aug_crop_scale=0.5, seed=seed, **kw)
    torch.manual_seed(seed)  # the trainable seeds the global RNGs before building (network init)
    return IDFD(cfg, data, CPU, epochs)


def _epoch(m: IDFD) -> dict[str, float]:
    out = m.train_epoch()
    m.epoch += 1  # the trainable's job
    return out


def _kmeans_acc(emb: np.ndarray, y: np.ndarray, k: int) -> float:
    pred = KMeans(n_clusters=k, n_init=3, random_state=0).fit_predict(emb)
    w = np.zeros((k, k), dtype=np.int64)
    np.add.at(w, (pred, y), 1)
    rows, cols = linear_sum_assignment(-w)
    return float(w[rows, cols].sum() / len(y))


def test_method_learns_on_digits(digits: Dataset) -> None:
    data = _subset(digits, 400)
    m = _method(data, epochs=6)
    losses = [_epoch(m) for _ in range(6)]
    assert all(math.isfinite(v) for out in losses for v in out.values())
    assert losses[-1]["loss"] < losses[0]["loss"] and losses[-1]["loss_instance"] < losses[0]["loss_instance"]
    assert set(losses[0]) == {"loss", "loss_instance", "loss_decorrelation"}
    assert m.steps == 6 * 8 and m.images_seen == 6 * 400
    ev = m.evaluate()
    assert ev.assignment is None and ev.embedding.shape == (400, 128) and ev.embedding.dtype == np.float32
    assert np.allclose(np.linalg.norm(ev.embedding, axis=1), 1.0, atol=1e-5)
    assert _kmeans_acc(ev.embedding, data.y, 10) > 0.6  # chance is ~0.1-0.2
    mem = _method(data, epochs=1, embed="memory")
    assert np.array_equal(mem.evaluate().embedding, mem.bank.numpy())


def test_same_seed_same_losses_and_bank(digits: Dataset) -> None:
    data = _subset(digits, 200)
    runs = []
    for _ in range(2):
        m = _method(data, seed=3)
        runs.append(([_epoch(m) for _ in range(2)], m.bank.clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    other = _method(data, seed=4)
    assert [_epoch(other) for _ in range(2)] != runs[0][0]


def test_resume_equals_straight_run(digits: Dataset) -> None:
    data = _subset(digits, 200)
    straight = _method(
        data, seed=1, lr_milestones=[1], epochs=2
    )  # milestone at 1: the scheduler state matters
    expected = [_epoch(straight) for _ in range(2)]
    first = _method(data, seed=1, lr_milestones=[1], epochs=2)
    got = [_epoch(first)]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = _method(
        data, seed=99, lr_milestones=[1], epochs=2
    )  # different init: all must come from the state
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    got.append(_epoch(resumed))
    assert got == expected
    assert torch.equal(resumed.bank, straight.bank)
    lr = resumed.optimizers["sgd"].optimizer.param_groups[0]["lr"]
    assert resumed.steps == straight.steps and lr == pytest.approx(0.003)


def test_id_variant_logs_no_feature_term_and_nonfinite_raises(digits: Dataset) -> None:
    data = _subset(digits, 100)
    out = _epoch(_method(data, variant="id", max_steps_per_epoch=1))
    assert set(out) == {"loss", "loss_instance"} and out["loss"] == out["loss_instance"]
    with pytest.raises(NonFiniteError, match="non-finite"):
        _method(data, tau=1e-38, max_steps_per_epoch=1).train_epoch()


def test_last_single_image_batch_dropped_and_config_checks(digits: Dataset) -> None:
    m = _method(_subset(digits, 101))  # 2 batches of 50 + one of 1 (dropped)
    _epoch(m)
    assert m.steps == 2 and m.images_seen == 100
    IDFDConfig(**IDFD.smoke_overrides)
    with pytest.raises(ValueError):
        IDFDConfig(backbone="resnet50")
    with pytest.raises(ValueError):
        IDFDConfig(tau=0.0)
    with pytest.raises(ValueError, match="images"):
        IDFD(IDFDConfig(), replace(digits, x=digits.x.flatten(1)), CPU, 1)
