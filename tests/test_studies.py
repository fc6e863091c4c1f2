"""Every shipped study: it validates, and its --smoke version runs end to end on real Ray + MLflow."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pandas as pd
import pytest
from conftest import ROOT, SPECS

from tuneclust.cli import main
from tuneclust.spec import load_spec, smoke_spec
from tuneclust.sweep import run_sweep


def test_there_are_studies():
    names = {p.stem for p in SPECS}
    assert {"quickstart", "idfd_tau", "idfd_tau2", "idfd_ablation", "idfd_backbones", "idfd_augment"} <= names


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_study_validates(path, capsys):
    assert main(["validate", str(path), "--smoke"]) == 0, capsys.readouterr().err
    text = path.read_text()
    assert text.lstrip().startswith("#"), "each study opens with a comment citing what it reproduces"


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_study_smoke_run(path, ray_session, tmp_path, mlflow_uri):
    spec = smoke_spec(load_spec(path, [f"storage={tmp_path}", f"tracking.mlflow.uri={mlflow_uri}"]))
    run_sweep(spec, verbose=0)
    trials = pd.read_parquet(tmp_path / spec.name / "trials.parquet")
    assert len(trials) == spec.num_trials()
    assert (trials["status"] == "TERMINATED").all(), trials[["arm", "status", "error"]].to_string()
    assert trials["final.acc"].notna().all()
    if spec.ablation:
        assert set(trials["arm"]) == set(spec.ablation)
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(spec.tracking.mlflow.experiment or spec.name)
    runs = client.search_runs([exp.experiment_id])
    children = {r.data.tags["tuneclust.trial_id"] for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert children == set(trials["trial_id"]), "one MLflow child run per trial"
    script = ROOT / "analysis" / f"{path.stem}.py"
    if script.exists():  # the paper's figure/table is redrawn from the smoke run's tables
        out = tmp_path / "analysis-out"
        r = subprocess.run(
            [sys.executable, str(script), str(tmp_path / spec.name), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert any(out.iterdir()), f"{script.name} wrote nothing"
