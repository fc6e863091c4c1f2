"""Sweeps on real Ray and real MLflow (sqlite in a temp dir), IDFD on a slice of the bundled digits."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tuneclust import answer, partitions, results
from tuneclust.cli import main
from tuneclust.spec import load_spec
from tuneclust.sweep import run_sweep
from tuneclust.tables import read_tables

BASE = """
name: {name}
method: idfd
data: {{name: digits, subsample: 300}}
budget: {{epochs: {epochs}, eval_every: 1}}
config: {{backbone: convnet, batch_size: 100, kmeans_n_init: 2}}
storage: {storage}
tracking: {{mlflow: {{uri: "{uri}"}}}}
"""


def make_spec(tmp_path: Path, uri: str, body: str, name: str = "s", epochs: int = 2) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(BASE.format(name=name, epochs=epochs, storage=tmp_path / "runs", uri=uri) + body)
    return p


def child_runs(uri: str, experiment: str) -> list:
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags], client


def test_sweep_tracks_every_trial_and_survives_a_crashing_one(ray_session, tmp_path, mlflow_uri):
    body = """
search:
  lr: {grid: [0.03, 1.0e+30]}        # the second diverges: a NaN loss must fail that trial only
  seed: {grid: [0, 1]}
ablation: {ID: {variant: id, tau: 0.5}, IDFD: {variant: idfd}}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
"""
    spec = load_spec(make_spec(tmp_path, mlflow_uri, body))
    run_sweep(spec, verbose=0)
    out = tmp_path / "runs" / "s"
    trials = pd.read_parquet(out / "trials.parquet")
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert len(trials) == 8 and trials["trial_id"].is_unique
    bad = trials[trials["config.lr"] > 1]
    good = trials[trials["config.lr"] < 1]
    assert (bad["status"] == "ERROR").all() and bad["error"].str.contains("non-finite").all()
    assert (good["status"] == "TERMINATED").all() and good["error"].isna().all()
    assert set(trials["arm"]) == {"ID", "IDFD"} and set(trials["config.seed"]) == {0, 1}
    assert (
        good["final.acc"].between(0.1, 1).all()
        and (good["final.acc"] <= good["best_label_selected.acc"]).all()
    )
    assert {
        "acc",
        "nmi",
        "ari",
        "silhouette",
        "calinski_harabasz",
        "davies_bouldin",
        "images_per_s",
        "loss",
    } <= set(epochs)
    assert (epochs.groupby("trial_id")["epoch"].max() <= 2).all()
    children, client = child_runs(mlflow_uri, "s")
    assert len(children) == 8
    by_trial = {r.data.tags["tuneclust.trial_id"]: r for r in children}
    for _, row in trials.iterrows():
        run = by_trial[row["trial_id"]]
        assert run.data.tags["status"] == row["status"] and run.data.tags["arm"] == row["arm"]
        assert run.data.tags["seed"] == str(row["config.seed"]) and run.data.tags["dataset"] == "digits"
        assert float(run.data.params["config.lr"]) == row["config.lr"]
        assert run.data.params["config.variant"] == row["config.variant"]
        if row["status"] == "TERMINATED":  # the runtime the trial actually used (CPU: fp32, eager)
            assert row["runtime.device"] == "cpu" and run.data.tags["runtime.precision"] == "fp32"
            assert run.data.tags["runtime.compile"] == "none"
            history = client.get_metric_history(run.info.run_id, "acc")
            assert [m.step for m in history] == list(range(1, int(row["epochs_run"]) + 1))
            assert history[-1].value == pytest.approx(row["final.acc"])
        else:
            assert "non-finite" in run.data.tags["error"]
    parent = client.get_run(children[0].data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["trials_errored"] == 4
    assert "spec.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    # the report ranks, plots and tabulates from the tables alone
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "ranking.csv").exists() and (out / "report" / "ablation.md").exists()
    assert (out / "report" / "acc_vs_lr.png").exists() and (out / "report" / "chosen_trial.png").exists()
    assert (out / "report" / "settings.md").exists() and (out / "report" / "trust.md").exists()
    # every trial stored its partition of the shared subset at every evaluation, and reported the criteria
    assert {"seed_agreement", "consensus", "reference_silhouette"} <= set(epochs)
    subset = partitions.read_subset(out)
    assert len(subset["index"]) == 300 and len(subset["labels"]) == 300
    for _, row in good.iterrows():
        for e in range(1, int(row["epochs_run"]) + 1):
            part = partitions.read(out, e, trials=[row["trial_id"]])[row["trial_id"]]
            assert len(part.assignment) == 300 and part.embedding.shape[0] == 300
    # no ranked or plotted value mixes budgets: each is the value at the epoch every finished trial reached
    equal = int(good["epochs_run"].min())
    at = epochs[epochs["epoch"] == equal].set_index("trial_id")["acc"]
    ranked = answer.ranking(out)
    assert f"acc@{equal}" in ranked
    for _, r in ranked[ranked["status"] == "TERMINATED"].iterrows():
        assert r[f"acc@{equal}"] == pytest.approx(at[r["trial_id"]])
    ans = answer.sweep_answer(out)
    assert ans.view.epoch == equal and set(ans.view.trials["trial_id"]) == set(good["trial_id"])
    assert (ans.view.trials["acc"].to_numpy() == at[ans.view.trials["trial_id"]].to_numpy()).all()
    plotted = ans.view.trials.groupby("config.lr")["acc"].mean()  # what acc_vs_lr.png draws
    assert plotted.iloc[0] == pytest.approx(at[good["trial_id"]].mean())
    loaded = results.load_finished(out)  # what analysis/ reads
    assert (loaded["final.acc"].to_numpy() == at[loaded["trial_id"]].to_numpy()).all()
    # a second sweep into the same folder is refused without --resume/--overwrite, and nothing is touched
    assert main(["sweep", str(tmp_path / "s.yaml")]) == 2


def test_optuna_is_exhaustive_over_the_grid_and_adaptive_inside_cells(ray_session, tmp_path, mlflow_uri):
    body = """
search:
  tau: {loguniform: [0.1, 5.0]}
  seed: {grid: [0, 1]}
searcher: {type: optuna, seed: 3, n_startup_trials: 1}
num_samples: 2
"""
    spec = load_spec(make_spec(tmp_path, mlflow_uri, body, name="o", epochs=1))
    assert spec.num_trials() == 4
    run_sweep(spec, verbose=0)
    trials = pd.read_parquet(tmp_path / "runs" / "o" / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all()
    assert trials.groupby("config.seed").size().to_dict() == {0: 2, 1: 2}
    assert trials["config.tau"].between(0.1, 5.0).all() and trials["config.tau"].nunique() == 4


@pytest.mark.parametrize(
    "scheduler",
    [
        "{type: hyperband, reduction_factor: 2}",
        "{type: median, grace_period: 1, min_samples_required: 1}",
    ],
)
def test_each_scheduler_runs(ray_session, tmp_path, mlflow_uri, scheduler):
    body = f"""
search:
  tau: {{uniform: [0.5, 2.0]}}
searcher: random
num_samples: 2
scheduler: {scheduler}
"""
    spec = load_spec(make_spec(tmp_path, mlflow_uri, body, name="sch", epochs=2))
    run_sweep(spec, verbose=0)
    trials = pd.read_parquet(tmp_path / "runs" / "sch" / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()


def test_pbt_mutations_take_effect_and_are_recorded_per_epoch(ray_session, tmp_path, mlflow_uri):
    """PBT mutating lr and a loss weight (alpha): every trial finishes, each epoch trained at the config in
    force (reported lr == that epoch's config.lr; loss == L_I + config.alpha * L_F), every epoch recorded once."""
    body = """
search:
  lr: {loguniform: [0.001, 0.3]}
  alpha: {uniform: [0.1, 3.0]}
searcher: random
num_samples: 4
scheduler: {type: pbt, perturbation_interval: 2, quantile_fraction: 0.5, resample_probability: 0.5}
"""
    spec = load_spec(make_spec(tmp_path, mlflow_uri, body, name="pbt", epochs=8))
    run_sweep(spec, verbose=0)
    out = tmp_path / "runs" / "pbt"
    trials = pd.read_parquet(out / "trials.parquet")
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all(), trials[["status", "error"]]
    for _, rows in epochs.groupby("trial_id"):
        assert sorted(rows["epoch"]) == list(range(1, 9)), "every epoch recorded exactly once"
    assert epochs["lr"].to_numpy() == pytest.approx(epochs["config.lr"].to_numpy(), rel=1e-9)
    expected = epochs["loss_instance"] + epochs["config.alpha"] * epochs["loss_decorrelation"]
    assert epochs["loss"].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-4)
    mutated = epochs.groupby("trial_id")["config.lr"].nunique()
    assert (mutated > 1).any(), "PBT exploited at least once (a trial changed its lr mid-run)"
    changed = trials[trials["trial_id"].isin(mutated[mutated > 1].index)]
    assert "initial.config.lr" in trials and changed["initial.config.lr"].notna().all()
    assert (changed["initial.config.lr"] != changed["config.lr"]).all(), (
        "trials.parquet: final and initial config"
    )
    runs, client = child_runs(mlflow_uri, "pbt")
    run = next(r for r in runs if r.data.tags["tuneclust.trial_id"] == changed["trial_id"].iloc[0])
    history = client.get_metric_history(run.info.run_id, "config.lr")
    assert len({m.value for m in history}) > 1, "MLflow holds the lr in force at every evaluation"


def test_train_runs_one_trial_without_ray(tmp_path, capsys, mlflow_uri):
    p = make_spec(tmp_path, mlflow_uri, "search: {tau: {grid: [1.0, 2.0]}}\n", name="tr", epochs=1)
    assert main(["train", str(p), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "epoch=1" in out and "acc=" in out
    assert not (tmp_path / "runs").exists()


def _rows(sweep: Path) -> int:
    """Finished trials so far (the per-trial parts: the whole tables are written at the end)."""
    try:
        return len(read_tables(sweep)[0])
    except Exception:
        return 0


@pytest.mark.slow  # a driver in a subprocess, killed and resumed: over a minute (CI runs -m slow)
def test_resume_after_the_driver_is_killed_keeps_finished_trials(tmp_path, mlflow_uri):
    body = """
search:
  tau: {grid: [0.5, 1.0, 2.0, 4.0, 8.0]}
max_concurrent: 1
"""
    p = make_spec(tmp_path, mlflow_uri, body, name="k", epochs=12)  # ~0.25 s an epoch: a trial runs ~3 s
    out = tmp_path / "runs" / "k"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    cmd = [sys.executable, "-m", "tuneclust", "sweep", str(p), "--quiet"]
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def running_trial_epochs() -> int:
        """Epochs the driver recorded of the trial it is running (the one without a trials part)."""
        done = {p.stem for p in (out / "tables" / "trials").glob("*.parquet")}
        parts = [p for p in (out / "tables" / "epochs").glob("*.parquet") if p.stem not in done]
        return max((len(pd.read_parquet(p)) for p in parts), default=0)

    deadline = time.time() + 240
    while (_rows(out) < 2 or running_trial_epochs() < 3) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    time.sleep(1.2)  # let Ray's experiment state name a checkpoint of the running trial (period 1 s here)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "trials.parquet").exists()  # killed: only the per-trial parts are there
    before = read_tables(out)[0]
    assert 2 <= len(before) < 5
    # A driver can die after Ray deleted a trial's older checkpoint (on registering a newer one, whose epoch is
    # then in the tables) and before its saved state names the newer one. Recreate that: move the running trial's
    # newest registered checkpoint one index up, so the state names a checkpoint that is gone and the trial must
    # resume from the later one. Checkpoint n holds epoch n + 1 (one report per epoch). The trial's worker can
    # outlive the driver by an epoch: wait for it, and drop what the driver never recorded.
    time.sleep(3)
    moved = []
    for trial_dir in out.iterdir():
        part = out / "tables" / "epochs" / f"{trial_dir.name}.parquet"
        if trial_dir.name in set(before["trial_id"]) or not part.exists():
            continue
        recorded = set(pd.read_parquet(part)["epoch"])
        cks = []
        for ck in sorted(trial_dir.glob("checkpoint_*")):
            if int(ck.name.split("_")[1]) + 1 in recorded:
                cks.append(ck)
            else:
                shutil.rmtree(ck)
        if cks:
            n = int(cks[-1].name.split("_")[1])
            cks[-1].rename(trial_dir / f"checkpoint_{n + 1:06d}")
            moved.append(trial_dir.name)
    # resumed without --quiet: the progress line is this command's choice, not the interrupted one's
    r = subprocess.run([*cmd[:-1], "--resume"], env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "/5 done · " in r.stdout, r.stdout[-2000:]
    assert moved and "is gone from storage" in r.stderr, (moved, r.stderr[-2000:])
    after = pd.read_parquet(out / "trials.parquet")
    assert len(after) == 5 and after["trial_id"].is_unique and (after["status"] == "TERMINATED").all()
    kept = after.set_index("trial_id").loc[before["trial_id"], "wall_time_s"]
    assert (kept.values == before["wall_time_s"].values).all(), "a finished trial was run again"
    epochs = pd.read_parquet(out / "epochs.parquet")
    per_trial = epochs.groupby("trial_id")["epoch"].apply(sorted).map(tuple)
    assert (per_trial == tuple(range(1, 13))).all(), (
        per_trial.map(lambda t: ",".join(map(str, t))).to_dict(),
        moved,
        r.stderr[-2000:],
    )
    children, client = child_runs(mlflow_uri, "k")
    assert len(children) == 5
    for run in children:
        if run.data.tags["tuneclust.trial_id"] in set(before["trial_id"]):
            assert len(client.get_metric_history(run.info.run_id, "acc")) == 12
