"""ICS (Das, Ghosh, Bhowmick): losses against hand computations, negative mining on known codes, the
autoencoder's shapes, the weight toggles, training on the digits and checkpoint/resume."""

from __future__ import annotations

import ast
import importlib.util
import io
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tuneclust.data.registry import DataConfig, load_dataset
from tuneclust.losses import ics as L
from tuneclust.methods import NonFiniteError, get_method
from tuneclust.methods import ics as M
from tuneclust.metrics import labelled_scores
from tuneclust.nets.conv_autoencoders import ConvAutoencoder

CPU = torch.device("cpu")
FAST = {"batch_size": 64, "n_aug_neg": 3, "neg_tries": 8, "pretrain_epochs": 1, "latent_dim": 8}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


def small(data, n: int):
    return replace(data, x=data.x[:n].clone(), y=data.y[:n].copy())


def make(data, epochs: int = 4, seed: int = 0, **over):
    torch.manual_seed(seed)
    return M.ICS(M.ICSConfig(**{**FAST, **over}), data, CPU, epochs)


def run_epochs(method, n: int) -> list[dict[str, float]]:
    """What the trainable does: train_epoch, then count the epoch."""
    out = []
    for _ in range(n):
        out.append(method.train_epoch())
        method.epoch += 1
    return out


# ---------------------------------------------------------------------------------------------- L_b
def _entropy(row) -> float:
    return -sum(p * math.log(p) for p in row if p > 0)


def test_balance_loss_matches_hand_computation():
    rows = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]
    qbar = [(a + b) / 2 for a, b in zip(*rows)]  # [0.4, 0.4, 0.2]
    h = [_entropy(r) for r in rows]
    got = L.balance_loss(torch.tensor(rows, dtype=torch.float64))
    assert got.entropy.item() == pytest.approx((h[0] + h[1]) / 2, abs=1e-9)
    assert got.marginal_entropy.item() == pytest.approx(_entropy(qbar), abs=1e-9)
    assert got.total.item() == pytest.approx((h[0] + h[1]) / 2 - _entropy(qbar), abs=1e-9)
    summed = L.balance_loss(torch.tensor(rows, dtype=torch.float64), reduction="sum")
    assert summed.total.item() == pytest.approx(h[0] + h[1] - _entropy(qbar), abs=1e-9)


def test_balance_loss_minimised_by_confident_balanced_assignments():
    k = 3
    balanced = L.balance_loss(torch.eye(k)).total.item()
    assert balanced == pytest.approx(-math.log(k), abs=1e-6)  # the lower bound: 0 - log K
    assert L.balance_loss(torch.eye(k)[[0, 0, 0]]).total.item() == pytest.approx(0.0, abs=1e-6)  # collapsed
    assert L.balance_loss(torch.full((3, k), 1 / k)).total.item() == pytest.approx(0.0, abs=1e-6)  # unsure
    torch.manual_seed(0)
    random_q = torch.softmax(torch.randn(50, 6, k), dim=2)
    assert all(L.balance_loss(q).total.item() > -math.log(k) for q in random_q)
    # gradient descent on free logits ends confident and balanced
    logits = torch.randn(6, k, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.2)
    for _ in range(100):
        opt.zero_grad()
        L.balance_loss(torch.softmax(logits, dim=1)).total.backward()
        opt.step()
    q = torch.softmax(logits, dim=1).detach()
    assert q.max(dim=1).values.min() > 0.95
    assert torch.bincount(q.argmax(dim=1), minlength=k).tolist() == [2, 2, 2]


# ---------------------------------------------------------------------------------------------- L_t, L_r
def test_triplet_loss_matches_hand_numbers_with_hinge():
    z_a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    z_p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # squared distances 1, 0
    z_n = torch.tensor([[0.0, 2.0], [1.0, 1.1]])  # squared distances 4, 0.01
    # hinge: max(0, 1 - 4 + 0.5) = 0 ; max(0, 0 - 0.01 + 0.5) = 0.49
    got = L.triplet_loss(z_a, z_p, z_n, margin=0.5)
    assert got.total.item() == pytest.approx(0.245, abs=1e-6)
    assert got.pos_dist.item() == pytest.approx(0.5, abs=1e-6)
    assert got.neg_dist.item() == pytest.approx(2.005, abs=1e-6)
    assert L.triplet_loss(z_a, z_p, z_n, margin=0.5, reduction="sum").total.item() == pytest.approx(
        0.49, abs=1e-6
    )
    assert L.triplet_loss(z_a, z_p, z_n, margin=0.0).total.item() == 0.0  # both hinges closed


def test_every_config_key_has_a_meaning():
    """The README's generated key table takes each key's attribute docstring (python -m tuneclust list --keys)."""
    missing = [k for k, f in M.ICSConfig.model_fields.items() if not (f.description or "").strip()]
    assert not missing


def test_reconstruction_loss_is_elementwise_mse():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    assert L.reconstruction_loss(torch.zeros_like(x), x).item() == pytest.approx((0 + 1 + 4 + 9) / 4)


def test_reconstruction_loss_sum_is_eq1_pixel_sum_over_batch_mean():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])  # (2, 1, 2, 2)
    # Eq. 1: 1/n sum_i ||x'_i - x_i||^2 = (14 + 4) / 2 ; mean: 18 / 8 elements
    assert L.reconstruction_loss(torch.zeros_like(x), x, "sum").item() == pytest.approx(9.0)
    assert L.reconstruction_loss(torch.zeros_like(x), x, "mean").item() == pytest.approx(18 / 8)


def test_clustering_loss_sums_or_averages_rows_of_kl():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = 1.0 * math.log(1.0 / 0.5)  # p = 0 adds nothing
    assert L.clustering_loss(p, q, "sum").item() == pytest.approx(row0 + row1, abs=1e-12)
    assert L.clustering_loss(p, q, "mean").item() == pytest.approx((row0 + row1) / 2, abs=1e-12)


def test_sum_reduction_reaches_every_term_of_the_method(digits):
    """With reduction=sum the logged terms are the printed equations' scale: B (or C*H*W) times the means."""
    data = small(digits, 128)
    logs = {}
    for red in ("mean", "sum"):
        m = make(data, reduction=red, batch_size=128, seed=3)
        logs[red] = run_epochs(m, 2)  # 1 pre-training epoch, 1 joint epoch (one batch of 128)
    pre_mean, pre_sum = logs["mean"][0]["loss_r"], logs["sum"][0]["loss_r"]
    assert pre_sum == pytest.approx(
        64 * pre_mean, rel=1e-4
    )  # 8x8 pixels: pre-training uses the same reduction
    joint_mean, joint_sum = logs["mean"][1], logs["sum"][1]
    assert (
        joint_sum["loss_c"] > 20 * joint_mean["loss_c"] > 0
    )  # summed over 128 rows (trajectories differ a bit)
    assert joint_sum["loss_t"] > 20 * joint_mean["loss_t"] > 0


# ---------------------------------------------------------------------------------------------- negatives
def _codes():
    anchors = torch.zeros(2, 2)
    # anchor 0's augmentations lie within radius 1; anchor 1's reach radius 10
    aug = torch.tensor([[[1.0, 0.0], [0.0, -0.5], [0.3, 0.3]], [[10.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    # only candidate 1 (distance 3) is farther than 1; candidate 3 sits exactly on the radius (not farther)
    cands = torch.tensor([[0.5, 0.0], [3.0, 0.0], [0.0, 0.9], [1.0, 0.0]])
    return anchors, aug, cands


def test_select_negatives_finds_the_only_proper_negative_and_reports_misses():
    anchors, aug, cands = _codes()
    g = torch.Generator().manual_seed(0)
    sel = L.select_negatives(anchors, aug, cands, tries=64, generator=g)
    assert sel.found.tolist() == [True, False]  # nothing is farther than 10 from anchor 1
    assert sel.index.tolist() == [1, 1]  # anchor 1 falls back to the farthest candidate tried
    assert sel.found.float().mean().item() == 0.5


def test_select_negatives_never_picks_the_anchor_itself():
    anchors, aug, cands = _codes()
    g = torch.Generator().manual_seed(0)
    sel = L.select_negatives(
        anchors[:1], aug[:1], cands, tries=64, generator=g, anchor_index=torch.tensor([1])
    )
    assert not sel.found.item() and sel.index.item() != 1


def test_select_negatives_picks_randomly_among_qualifying_candidates():
    n = 200
    anchors, aug = torch.zeros(n, 2), torch.tensor([[[1.0, 0.0]]]).expand(n, 1, 2)
    cands = torch.tensor([[0.2, 0.0], [2.0, 0.0], [0.0, 0.5], [0.0, 5.0]])  # 1 and 3 qualify
    sel = L.select_negatives(anchors, aug, cands, tries=32, generator=torch.Generator().manual_seed(1))
    assert sel.found.all()
    assert set(sel.index.tolist()) == {1, 3}  # the first qualifying draw, not always the farthest


# ---------------------------------------------------------------------------------------------- network, config
@pytest.mark.parametrize(
    ("arch", "size", "channels"),
    [
        ("shallow", 8, 1),
        ("shallow", 16, 1),
        ("shallow", 28, 1),
        ("shallow", 32, 3),
        ("deep", 32, 3),
        ("deep", 96, 3),
    ],
)
def test_autoencoder_adapts_to_size_and_channels(arch, size, channels):
    torch.manual_seed(0)
    net = ConvAutoencoder(channels, size, latent_dim=7, arch=arch)
    z, rec = net(torch.rand(2, channels, size, size))
    assert z.shape == (2, 7) and rec.shape == (2, channels, size, size)
    assert net.sizes[-1] >= 2 and sum(net.pools) >= 2


def test_config_fills_the_architecture_defaults_of_the_paper():
    shallow, deep = M.ICSConfig(), M.ICSConfig(arch="deep")
    assert (shallow.beta, shallow.gamma, shallow.omega, shallow.margin, shallow.latent_dim) == (
        0.8,
        0.01,
        0.1,
        0.24,
        64,
    )
    assert (deep.beta, deep.gamma, deep.omega, deep.margin, deep.latent_dim) == (0.7, 0.01, 0.3, 0.3, 10)
    assert M.ICSConfig(arch="deep", omega=0.0).omega == 0.0
    assert M.ICSConfig.model_validate(deep.model_dump()) == deep
    with pytest.raises(ValueError):
        M.ICSConfig(bogus=1)
    assert get_method("ics") is M.ICS


def test_losses_module_needs_torch_only():
    """``import tuneclust.losses.ics`` pulls in torch alone: no ray, mlflow or yaml along its import chain."""
    root = Path(M.__file__).parents[1]
    chain = [
        root / "__init__.py",
        *(root / "losses" / f for f in ("__init__.py", "ics.py", "dec.py", "terms.py")),
    ]
    imported = set()
    for path in chain:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "typing", "collections", "functools", "torch", "tuneclust"}, imported


# ---------------------------------------------------------------------------------------------- method
def _forbid(monkeypatch, name: str) -> None:
    def boom(*a, **k):
        raise AssertionError(f"{name} computed although its weight is 0")

    monkeypatch.setattr(M if hasattr(M, name) else L, name, boom)


@pytest.mark.parametrize(
    ("weight", "term", "forbidden"),
    [
        ("beta", "c", ["clustering_loss"]),
        ("gamma", "b", ["balance_loss"]),
        ("omega", "t", ["select_negatives", "triplet_loss"]),
        ("alpha", "r", ["reconstruction_loss"]),
    ],
)
def test_zero_weight_removes_exactly_its_term(digits, monkeypatch, weight, term, forbidden):
    m = make(small(digits, 256), **{weight: 0.0})
    run_epochs(m, 1)  # pre-training (L_r only)
    for name in forbidden:
        _forbid(monkeypatch, name)
    out = run_epochs(m, 1)[0]
    assert f"loss_{term}" not in out, "a term with weight 0 is neither computed nor logged"
    others = [t for t in M.TERMS if t != term]
    assert all(out[f"loss_{t}"] != 0.0 for t in others)
    c = m.cfg
    weighted = sum(
        getattr(c, w) * out.get(f"loss_{t}", 0.0)
        for w, t in zip(("alpha", "beta", "gamma", "omega"), M.TERMS)
    )
    assert out["loss"] == pytest.approx(weighted, rel=1e-5, abs=1e-7)
    assert ("neg_found_rate" in out) == (weight != "omega")


def test_target_and_bank_refresh_schedule(digits, monkeypatch):
    calls = []
    m = make(small(digits, 320), target_update_every=2)  # 5 batches of 64
    run_epochs(m, 1)
    real = m._refresh
    monkeypatch.setattr(m, "_refresh", lambda: (calls.append(m.joint_steps), real()))
    run_epochs(m, 1)
    assert calls == [0, 2, 4]
    m.cfg.target_update_every = 0
    calls.clear()
    run_epochs(m, 1)
    assert calls == [5]  # once, at the start of the epoch


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_trains_stably_on_digits(digits, reduction):
    data = small(digits, 600)
    m = make(data, batch_size=128, n_aug_neg=4, neg_tries=20, latent_dim=10, reduction=reduction)
    ev0 = m.evaluate()
    assert ev0.assignment is None and ev0.embedding.shape == (600, 10)  # before the centres: k-means
    logs = run_epochs(m, 3)  # 1 pre-training + 2 joint epochs
    assert m.progress() == {"phase": 1.0, "lr": m.cfg.lr}
    for log in logs:
        assert all(np.isfinite(v) for v in log.values()), log
    assert logs[-1]["loss_r"] < logs[0]["loss_r"]
    assert 0.5 < logs[-1]["neg_found_rate"] <= 1.0
    ev = m.evaluate()
    counts = np.bincount(ev.assignment, minlength=10)
    assert (counts > 10).sum() >= 5 and counts.max() < 0.6 * len(data), counts  # not collapsed
    # chance is about 0.1-0.2; after 2 joint epochs on 600 images `sum` scored 0.29 and `mean` above 0.3 (seed 0)
    assert labelled_scores(data.y, ev.assignment)["acc"] > 0.25
    assert m.images_seen == 3 * 600 and m.steps == 3 * 5


def test_non_finite_loss_raises(digits, monkeypatch):
    m = make(small(digits, 128))
    monkeypatch.setattr(L, "reconstruction_loss", lambda a, b, r="mean": ((a - b) ** 2).mean() * float("nan"))
    with pytest.raises(NonFiniteError, match="loss_r"):
        run_epochs(m, 1)


def test_resume_matches_uninterrupted_training(digits):
    data = small(digits, 256)
    over = {"target_update_every": 3}
    straight = make(data, **over)
    logs = run_epochs(straight, 3)

    first = make(data, **over)
    run_epochs(first, 2)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = make(data, seed=123, **over)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    log = run_epochs(resumed, 1)[0]

    assert log == pytest.approx(logs[-1], rel=1e-6)
    for a, b in zip(straight.net.state_dict().values(), resumed.net.state_dict().values()):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(straight.centers, resumed.centers)
    np.testing.assert_array_equal(straight.evaluate().assignment, resumed.evaluate().assignment)
    assert (resumed.steps, resumed.images_seen, resumed.phase) == (straight.steps, straight.images_seen, 1)


# ---------------------------------------------------------------------------------------------- analysis
def _script(name: str):
    path = Path(M.__file__).parents[2] / "analysis" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_analysis_scripts_write_their_figure_and_table(tmp_path):
    rows = []
    for i, (arm, r_min, seed) in enumerate(
        [("full", 0.1, 0), ("full", 0.1, 1), ("no_Lt", 0.5, 0), ("no_Lt", 0.5, 1)]
    ):
        rows.append(
            {
                "trial_id": f"t{i}",
                "arm": arm,
                "status": "TERMINATED",
                "config.seed": seed,
                "config.beta": 0.2 * i,
                "config.gamma": 0.1 + 0.2 * i,
                "config.omega": 0.9 - 0.2 * i,
                "config.margin": 0.24 if i < 2 else 0.3,
                "data.imbalance_r_min": r_min,
                "final.acc": 0.5 + 0.1 * i,
                "final.nmi": 0.4 + 0.1 * i,
                "final.ari": 0.3,
            }
        )
    rows.append({**rows[0], "trial_id": "bad", "status": "ERROR", "final.acc": float("nan")})
    pd.DataFrame(rows).to_parquet(tmp_path / "trials.parquet")
    for name, expect in [
        ("ics_random", ["fig6_acc_vs_weights.png", "top_trials.md", "weight_correlation.csv"]),
        ("ics_ablation", ["fig5_ablation.png", "ablation.md", "ablation.tex"]),
        ("ics_margin", ["acc_vs_margin.png", "nmi_vs_margin.png", "margin.csv"]),
        ("ics_imbalance", ["table2_acc_vs_rmin.png", "table2_imbalance.csv"]),
    ]:
        _script(name).main([str(tmp_path), "--out", str(tmp_path / name)])
        assert all((tmp_path / name / f).stat().st_size > 0 for f in expect), name
    table2 = pd.read_csv(tmp_path / "ics_imbalance" / "table2_imbalance.csv")
    assert table2["acc_mean"].tolist() == pytest.approx(
        [0.55, 0.75]
    )  # (0.5+0.6)/2, (0.7+0.8)/2; error row dropped
    assert table2["paper_acc"].tolist() == pytest.approx([0.8802, 0.9612])
    corr = pd.read_csv(tmp_path / "ics_random" / "weight_correlation.csv").set_index("weight")[
        "spearman_vs_acc"
    ]
    assert corr["beta"] == pytest.approx(1.0) and corr["omega"] == pytest.approx(-1.0)
    margin = pd.read_csv(tmp_path / "ics_margin" / "margin.csv")
    assert margin["acc_mean"].tolist() == pytest.approx([0.55, 0.75]) and margin["trials"].tolist() == [2, 2]
