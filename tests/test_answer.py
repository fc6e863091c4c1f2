"""The sweep's answer: equal budgets, settings with seed intervals, cross-trial label-free criteria, trust."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tuneclust import answer, criteria, partitions
from tuneclust.results import typed_spec
from tuneclust.spec import SpecError, validate_spec


def _tables(curves: dict[tuple[float, int], list[float]], stopped_at: dict[tuple[float, int], int]):
    """trials/epochs tables of a tau x seed sweep evaluated every epoch, some trials stopped early."""
    trials, epochs = [], []
    for i, ((tau, seed), accs) in enumerate(curves.items()):
        tid = f"t{i}"
        last = stopped_at.get((tau, seed), len(accs))
        for e in range(1, last + 1):
            epochs.append(
                {
                    "trial_id": tid,
                    "arm": "",
                    "config.tau": tau,
                    "config.seed": seed,
                    "epoch": e,
                    "acc": accs[e - 1],
                    "silhouette": -accs[e - 1],
                }
            )
        trials.append(
            {
                "trial_id": tid,
                "arm": "",
                "config.tau": tau,
                "config.seed": seed,
                "status": "TERMINATED",
                "epochs_run": last,
                "final.acc": accs[last - 1],
            }
        )
    return pd.DataFrame(trials), pd.DataFrame(epochs)


SPEC = {
    "budget": {"epochs": 3},
    "search": {"tau": {"grid": [0.1, 1.0]}, "seed": {"grid": [0, 1, 2]}},
    "objective": {"metric": "acc"},
}


def test_early_stopped_trials_are_compared_at_the_epoch_all_reached():
    curves = {(1.0, s): [0.5 + s / 100, 0.6, 0.9] for s in range(3)}
    curves.update({(0.1, s): [0.6 + s / 100, 0.65, 0.7] for s in range(3)})
    trials, epochs = _tables(curves, {(1.0, 0): 1, (1.0, 1): 1})
    ans = answer.answer(trials, epochs, typed_spec(SPEC))
    assert ans.view.epoch == 1 and ans.view.what == "equal budget"
    # every compared value is the epoch-1 value: tau=0.1 leads there (a mean over mixed budgets would say 1.0)
    assert list(ans.settings["setting"]) == ["tau=0.1", "tau=1"]
    assert ans.settings["mean"][0] == pytest.approx(0.61) and ans.settings["mean"][1] == pytest.approx(0.51)
    assert ans.settings["stopped"].tolist() == [0, 2]
    full = ans.views[1]
    assert full.epoch == 3 and set(full.trials["trial_id"]) == {"t2", "t3", "t4", "t5"}
    assert (full.trials["acc"] == full.trials["final.acc"]).all()
    text = answer.answer_text(ans)
    assert "equal budget: epoch 1, 6 trials" in text and "survivors at full budget: epoch 3, 4 trials" in text


def test_settings_interval_and_paired_gap_by_hand():
    curves = {(1.0, s): [v] for s, v in enumerate([0.80, 0.84, 0.82])}
    curves.update({(0.1, s): [v] for s, v in enumerate([0.70, 0.75, 0.74])})
    trials, epochs = _tables(curves, {})
    ans = answer.answer(trials, epochs, typed_spec({**SPEC, "budget": {"epochs": 1}}))
    best = ans.settings.iloc[0]
    t975 = 4.302652729911275  # Student t, 2 degrees of freedom
    assert best["mean"] == pytest.approx(0.82) and best["std"] == pytest.approx(0.02)
    assert best["ci_high"] - best["mean"] == pytest.approx(t975 * 0.02 / math.sqrt(3))
    d = np.array([0.10, 0.09, 0.08])  # paired by seed
    assert ans.gap["diff"] == pytest.approx(d.mean()) and ans.gap["pairs"] == 3
    assert ans.gap["ci_low"] == pytest.approx(d.mean() - t975 * d.std(ddof=1) / math.sqrt(3))
    assert ans.gap["distinguishable"] is True
    # silhouette is -acc here: the trust table must say it ranks settings in reverse and picks the worse one
    trust = ans.trust.set_index("criterion")
    assert trust.loc["silhouette", "spearman_trials"] == pytest.approx(-1.0)
    assert trust.loc["silhouette", "selects"] == "tau=0.1"
    assert trust.loc["silhouette", "regret"] == pytest.approx(0.82 - 0.73)
    assert set(ans.importance) == {"config.tau", "config.seed"}
    assert ans.importance["config.tau"] > ans.importance["config.seed"]
    assert answer.answer_metrics(ans)["answer.best_minus_runner_up.diff"] == pytest.approx(0.09)


def test_an_indistinguishable_best_is_said_so():
    gap = answer.paired_gap(
        pd.DataFrame(
            {
                "setting": ["a"] * 3 + ["b"] * 3,
                "config.seed": [0, 1, 2] * 2,
                "acc": [0.8, 0.7, 0.9, 0.75, 0.8, 0.78],
            }
        ),
        "acc",
        "max",
        "a",
        "b",
    )
    assert gap["distinguishable"] is False and gap["ci_low"] < 0 < gap["ci_high"]
    assert "NOT distinguishable" in answer.gap_text(gap, "acc")


def _part(tid, labels, setting, seed, emb=None):
    return partitions.Partition(tid, 5, np.asarray(labels), emb, setting, seed)


def test_agreement_is_ari_within_setting_and_across_all():
    a = [0, 0, 1, 1, 2, 2]
    relabelled = [2, 2, 0, 0, 1, 1]  # the same partition: ARI 1
    other = [0, 1, 0, 1, 0, 1]
    parts = {
        "x0": _part("x0", a, "s", 0),
        "x1": _part("x1", relabelled, "s", 1),
        "y0": _part("y0", other, "r", 0),
    }
    crit = criteria.agreement(parts, {t: p.setting for t, p in parts.items()})
    from sklearn.metrics import adjusted_rand_score as ari

    assert crit.loc["x0", "seed_agreement"] == pytest.approx(1.0)
    assert math.isnan(crit.loc["y0", "seed_agreement"])  # no other seed of its setting
    assert crit.loc["x0", "consensus"] == pytest.approx((1.0 + ari(a, other)) / 2)
    online = criteria.online(parts["x1"], {"x0": parts["x0"]})
    assert online == {"seed_agreement": pytest.approx(1.0), "consensus": pytest.approx(1.0)}
    assert all(math.isnan(v) for v in criteria.online(parts["x0"], {}).values())  # first at its epoch: NaN


def test_pooled_silhouette_scores_in_the_other_trials_spaces():
    rng = np.random.default_rng(0)
    centres = np.repeat(np.eye(3) * 10, 20, axis=0)
    space = (centres + rng.normal(size=centres.shape)).astype(np.float16)
    truth = np.repeat(np.arange(3), 20)
    parts = {
        "good": _part("good", truth, "a", 0, space),
        "bad": _part("bad", rng.permutation(truth), "b", 0, space),
        "judge": _part("judge", truth, "c", 0, space),
    }
    pooled = criteria.pooled_silhouette(parts)
    assert pooled["good"] > 0.8 > 0.1 > pooled["bad"]


def test_partitions_round_trip_on_storage(tmp_path):
    idx = partitions.subset_index(100, 30, seed=0)
    assert len(idx) == 30 and (np.diff(idx) > 0).all()
    assert (partitions.subset_index(100, 30, seed=0) == idx).all()  # the same in every trial
    assert len(partitions.subset_index(20, 30, seed=0)) == 20
    partitions.write_subset(tmp_path, idx, np.arange(100) % 3, 100)
    sub = partitions.read_subset(tmp_path)
    assert (sub["labels"] == idx % 3).all() and int(sub["n"]) == 100
    p = _part(
        "t1",
        np.arange(30) % 4,
        partitions.setting_key({"tau": 1.0, "seed": 2}),
        2,
        np.ones((5, 3), np.float16),
    )
    partitions.write(tmp_path, p)
    got = partitions.read(tmp_path, 5)["t1"]
    assert (got.assignment == p.assignment).all() and got.embedding.shape == (5, 3)
    assert got.setting == '{"tau": 1.0}' and got.seed == 2 and partitions.epochs(tmp_path) == [5]


def test_cross_trial_objectives_are_checked_at_validation():
    base = {"name": "s", "method": "idfd", "budget": {"epochs": 2}, "search": {"tau": {"grid": [1.0, 2.0]}}}
    with pytest.raises(SpecError, match="seed_agreement compares the seeds"):
        validate_spec({**base, "objective": {"metric": "seed_agreement"}})
    ok = {
        **base,
        "search": {**base["search"], "seed": {"grid": [0, 1]}},
        "objective": {"metric": "seed_agreement"},
    }
    assert validate_spec(ok).mode == "max"
    with pytest.raises(SpecError, match="final selection only"):
        validate_spec({**base, "objective": {"metric": "pooled_silhouette"}, "scheduler": {"type": "asha"}})
    assert validate_spec({**base, "objective": {"metric": "pooled_silhouette"}}).objective.metric


def test_analysis_tables_hold_values_at_the_equal_budget_and_figures_say_so():
    from tuneclust import render, results

    curves = {(1.0, s): [0.5, 0.6, 0.9] for s in range(2)}
    curves.update({(0.1, s): [0.6, 0.65, 0.7] for s in range(2)})
    trials, epochs = _tables(curves, {(1.0, 0): 1})
    at = results.at_equal_budget(trials, epochs)
    assert (at["final.acc"] == [0.5, 0.5, 0.6, 0.6]).all()  # epoch 1 for every trial, not 0.9 for survivors
    assert at["stopped"].tolist() == [True, False, False, False] and at.attrs["budget_epoch"] == 1
    assert render.statistic(at, ["config.tau"]) == "mean ± std over 2 seeds, at epoch 1 (equal budget)"
    full, _ = _tables(curves, {})
    assert results.at_equal_budget(full, epochs) is full  # no early stopping: unchanged


def test_label_free_criteria_that_disagree_are_said_to():
    # consensus and the reference silhouette favour tau=1, seed agreement tau=5, davies_bouldin (min) tau=5 too;
    # without labels the answer says the criteria disagree, and which selects what
    df = pd.DataFrame(
        {
            "setting": ["tau=1"] * 2 + ["tau=5"] * 2,
            "consensus": [0.8, 0.7, 0.5, 0.6],
            "reference_silhouette": [0.3, 0.2, 0.1, 0.1],
            "seed_agreement": [0.4, 0.5, 0.9, 0.8],
            "pooled_silhouette": [float("nan")] * 4,  # not computed: left out
            "davies_bouldin": [2.0, 2.0, 1.0, 1.2],
        }
    )
    picks = answer.selections(df)
    assert picks == {"seed_agreement": "tau=5", "consensus": "tau=1", "reference_silhouette": "tau=1"}
    assert answer.selections(df, ("davies_bouldin",)) == {"davies_bouldin": "tau=5"}  # lower is better
    assert answer.agreement_text(picks, settings=2) == (
        "label-free criteria disagree: seed_agreement select tau=5; consensus, reference_silhouette select "
        "tau=1; without labels, treat the choice as uncertain"
    )
    same = {"seed_agreement": "tau=5", "consensus": "tau=5"}
    assert (
        answer.agreement_text(same, 2)
        == "label-free criteria agree: seed_agreement, consensus all select tau=5"
    )
    assert answer.agreement_text(same, 1) == "" and answer.agreement_text({"consensus": "tau=5"}, 2) == ""
    # the trust table's selections are the same picks
    trust = answer.trust_table(df.assign(acc=[0.9, 0.8, 0.5, 0.6])).set_index("criterion")
    assert trust["selects"].to_dict() == {**picks, "davies_bouldin": "tau=5"}
    assert trust.loc["seed_agreement", "regret"] == pytest.approx(0.85 - 0.55)
