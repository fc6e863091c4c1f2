"""The method contract (issue: one loop, one loss form, PBT works).

- Each ``<m>_loss(..., weights)``: setting one term's weight to 0 removes exactly that term's gradient.
- Each method: after restoring a checkpoint into a trial whose config changed (a PBT exploit with a mutated lr,
  a ``--set``, a resume), every optimiser trains at the *configured* values.
- Method files stay small and never restore an optimiser themselves (the base does, then re-applies the config).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tuneclust.losses.cdc import cdc_loss
from tuneclust.losses.dccs import dccs_loss
from tuneclust.losses.ics import ics_loss
from tuneclust.losses.idfd import idfd_loss
from tuneclust.plan import TrialPlan
from tuneclust.trainable import TrialLoop

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _leaf(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(
        *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).requires_grad_()


def _softmax_leaf(b: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits = _leaf(b, k, seed=seed)
    return logits, torch.softmax(logits, dim=1)


def _idfd():
    f_raw = _leaf(8, 6, seed=1)
    f = torch.nn.functional.normalize(f_raw, dim=1)
    bank = torch.nn.functional.normalize(torch.randn(20, 6, dtype=torch.float64), dim=1)
    idx = torch.arange(8)
    weights = {"instance": 1.0, "decorrelation": 0.7, "orthogonal": 2.0}
    return (lambda w: idfd_loss(f, bank, idx, tau=0.5, tau2=2.0, weights=w)), weights, [f_raw]


def _dccs():
    leaves = {k: _leaf(*s, seed=i) for i, (k, s) in enumerate(
        [("pos_logits", (8,)), ("neg_logits", (8,)), ("zc_logits", (8, 4)), ("zc_logits_aug", (8, 4)), ("c_fake", (8,))]
    )}  # fmt: skip
    weights = {"mi": 0.5, "aug": 4.0, "adv": 1.0}
    return (lambda w: dccs_loss(w, **leaves)), weights, list(leaves.values())


def _cdc(finetuning: bool):
    x = torch.rand(10, 12, dtype=torch.float64)
    z, x_rec = _leaf(10, 3, seed=2), _leaf(10, 12, seed=3)
    logits, q = _softmax_leaf(10, 4, seed=4)
    p = torch.softmax(torch.randn(10, 4, dtype=torch.float64), dim=1)
    if finetuning:
        weights = {"c": 1.0, "a": 0.75, "cr_x": 0.1, "cr_xrec": 0.1}
    else:
        weights = {"r": 1.0, "cr_x": 0.5, "cr_xrec": 0.5}
    return (
        (lambda w: cdc_loss(w, x=x, z=z, x_rec=x_rec, q=q, p=p, sharpen_z=True)),
        weights,
        [z, x_rec, logits],
    )


def _ics():
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    x_rec = _leaf(6, 1, 4, 4, seed=5)
    logits, q = _softmax_leaf(6, 3, seed=6)
    p = torch.softmax(torch.randn(6, 3, dtype=torch.float64), dim=1)
    z, z_pos, z_neg = _leaf(6, 2, seed=7), _leaf(6, 2, seed=8), _leaf(6, 2, seed=9)
    weights = {"r": 1.0, "c": 0.8, "b": 0.01, "t": 0.1}
    kw = dict(x=x, x_rec=x_rec, q=q, p=p, z=z, z_pos=z_pos, z_neg=z_neg, margin=5.0)
    return (lambda w: ics_loss(w, **kw)), weights, [x_rec, logits, z, z_pos, z_neg]


def _grads(value: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(value, leaves, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]


@pytest.mark.parametrize(
    "make",
    [_idfd, _dccs, lambda: _cdc(False), lambda: _cdc(True), _ics],
    ids=["idfd", "dccs", "cdc-pretrain", "cdc-finetune", "ics"],
)
def test_zero_weight_removes_exactly_that_terms_gradient(make) -> None:
    loss, weights, leaves = make()
    full = loss(weights)
    assert set(full.terms) == set(weights), "every weighted term is computed"
    g_full = _grads(full.total, leaves)
    for term, w in weights.items():
        off = loss({**weights, term: 0.0})
        assert term not in off.terms and f"loss_{term}" not in off.logged(), (
            "an off term is not computed or logged"
        )
        g_off = _grads(off.total, leaves)
        g_term = _grads(full.terms[term], leaves)
        assert any(g.abs().sum() > 0 for g in g_term), f"{term} has a gradient to remove"
        for a, b, t in zip(g_full, g_off, g_term):
            torch.testing.assert_close(a - b, w * t, rtol=1e-9, atol=1e-12)
        assert off.total.item() == pytest.approx(full.total.item() - w * full.terms[term].item(), rel=1e-9)


DIGITS = {"name": "digits", "subsample": 240}
CASES = {
    "idfd": ({"backbone": "convnet", "batch_size": 60, "max_steps_per_epoch": 2}, {"lr": 0.05}, 1),
    "dccs": ({"mlp_hidden": 32, "batch_size": 40, "n_critic": 1}, {"lr": 3e-4}, 1),
    "cdc": (
        {
            "dims": [16, 16, 4],
            "batch_size": 60,
            "pretrain_epochs": 1,
            "finetune_iters": 4,
            "kmeans_init_n_init": 1,
        },
        {"finetune_lr": 0.002, "finetune_momentum": 0.5},
        2,
    ),
    "ics": (
        {"batch_size": 120, "pretrain_epochs": 1, "n_aug_neg": 2, "neg_tries": 2, "latent_dim": 4},
        {"lr": 5e-3},
        2,
    ),
}


def _loop(method: str, config: dict, epochs: int) -> TrialLoop:
    cfg = {**config, "kmeans_n_init": 1}
    return TrialLoop(TrialPlan(method, cfg, DIGITS, epochs=epochs), torch.device("cpu"))


@pytest.mark.parametrize("method", sorted(CASES))
def test_a_restored_trial_trains_at_its_configured_hyperparameters(method: str) -> None:
    """What a PBT exploit does: the donor's checkpoint into a trial whose config has a mutated value."""
    base, mutated, warm = CASES[method]
    donor = _loop(method, base, epochs=warm + 1)
    for _ in range(warm):
        donor.method.train_epoch()
        donor.method.epoch += 1
    state = donor.state()
    trial = _loop(method, {**base, **mutated}, epochs=warm + 1)
    trial.load(state)
    opts = trial.method.optimizers
    groups = [
        g for name in opts for g in opts[name].optimizer.param_groups if name != "pre" or method != "cdc"
    ]
    for key, value in mutated.items():
        param = key.removeprefix("finetune_")
        assert groups and all(g[param] == pytest.approx(value) for g in groups), (key, groups[0][param])
    result = next(trial.run())
    assert result["lr"] == pytest.approx(mutated.get("lr", mutated.get("finetune_lr")))
    assert all(g[param] == pytest.approx(value) for g in groups for param, value in
               ((k.removeprefix("finetune_"), v) for k, v in mutated.items())), "the config holds through the epoch"  # fmt: skip


def test_method_files_are_small_and_never_restore_an_optimiser() -> None:
    for name in ("idfd", "dccs", "cdc", "ics"):
        text = (ROOT / "tuneclust" / "methods" / f"{name}.py").read_text()
        assert len(text.splitlines()) <= 250, name
        assert not re.search(r"load_state_dict|optim\.\w+\(", text), (
            f"{name} builds or restores an optimiser itself"
        )
