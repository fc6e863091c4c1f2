"""What a researcher sees: MLflow (through its client, as the UI reads it), the progress line, the CLI's ending.

One small sweep (IDFD on 300 digits, 2 arms x 2 tau, 2 epochs) is run once through the command line and shared
by the MLflow tests; the quickstart is run once as a user would, in a subprocess, to count its lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import ROOT, write_spec

from tuneclust.cli import main, mlflow_ui_command
from tuneclust.progress import Progress, ProgressCallback, duration, trial_label
from tuneclust.spec import load_spec
from tuneclust.tracking import BOOKKEEPING, EXPERIMENT_KIND, MLFLOW_STATE, NOTE, is_bookkeeping, runs_url

SPEC = """# A tiny study for the view tests (Smith & Doe, Journal 2031, Table 9): ID against IDFD over tau.
# Second line of the header.
name: view
method: idfd
data: {{name: digits, subsample: 300}}
budget: {{epochs: 2, eval_every: 1}}
config: {{backbone: convnet, batch_size: 100, kmeans_n_init: 2}}
search:
  tau: {{grid: [0.5, 2.0]}}
ablation: {{ID: {{variant: id}}, IDFD: {{variant: idfd}}}}
storage: ./not-used
tracking: {{mlflow: {{uri: "{uri}", experiment: view}}}}
"""


@pytest.fixture(scope="module")
def swept(ray_session, tmp_path_factory):
    """(client, experiment, parent run, child runs, sweep folder, printed output) of one CLI sweep."""
    tmp = tmp_path_factory.mktemp("view")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    path = tmp / "view.yaml"
    path.write_text(SPEC.format(uri=uri))
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["sweep", str(path), "--storage", str(tmp / "results")]) == 0
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("view")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, exp, parent, children, tmp / "results" / "view", buf.getvalue(), uri


def test_experiment_opens_on_runs(swept):
    _, exp, *_ = swept
    assert exp.tags.get(EXPERIMENT_KIND[0]) == "custom_model_development"


def test_child_names_show_arm_and_searched_values(swept):
    children = swept[3]
    names = sorted(r.info.run_name for r in children)
    assert names == ["ID · tau=0.5", "ID · tau=2", "IDFD · tau=0.5", "IDFD · tau=2"]
    assert all(len(n) <= 40 for n in names)


def test_parent_holds_config_search_space_and_description(swept):
    client, _, parent, _, out, _, _ = swept
    params = parent.data.params
    assert params["config.backbone"] == "convnet" and params["config.batch_size"] == "100"
    assert params["search.tau"] == "grid [0.5, 2.0]"
    assert params["arms"] == "ID, IDFD" and params["budget.epochs"] == "2" and params["trials"] == "4"
    note = client.get_run(parent.info.run_id).data.tags[NOTE]
    assert "**view**: idfd on digits, 4 trials" in note
    assert "Smith & Doe, Journal 2031, Table 9" in note and "Second line of the header." in note
    answer = note.split("## Answer", 1)[1].split("## Ranking", 1)[0]  # settings at equal budget, then trials
    assert "Settings ranked by `acc` at **full budget: epoch 2, 4 trials**" in answer
    assert (
        parent.data.metrics["answer.budget_epoch"] == 2
    )  # the answer's numbers, logged when the sweep ended
    assert {"trust.consensus.spearman", "trust.silhouette.regret"} <= set(parent.data.metrics)
    ranking = note.split("## Ranking", 1)[1].strip().splitlines()
    assert ranking[0].startswith("| trial_id | arm | tau |") and ranking[1].startswith("|---|")
    assert len(ranking) == 2 + 4  # header, rule, one row per trial
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {
        "report/ranking.md",
        "report/acc_vs_tau.png",
        "report/acc_vs_tau.svg",
        "report/ablation.md",
    } <= report


TIMINGS = ("eval_time_s", "eval_embed_s", "eval_kmeans_s")
"""What each evaluation reports of its own duration: the trainable's total, its embedding and k-means shares."""


def test_children_have_scores_by_epoch_and_bookkeeping_as_tags(swept):
    client, _, _, children, out, _, _ = swept
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert set(TIMINGS) <= set(
        epochs.columns
    )  # reported by every trial (so the checks below are not vacuous)
    for run in children:
        metrics = set(run.data.metrics)
        assert {"acc", "nmi", "ari", "loss"} <= metrics
        assert not metrics & BOOKKEEPING, metrics & BOOKKEEPING
        assert not [m for m in metrics if m.endswith("_s")], metrics  # no timing is a metric
        for name in TIMINGS:
            assert float(run.data.tags[f"final.{name}"]) >= 0, name  # the last evaluation's, as a tag
        history = client.get_metric_history(run.info.run_id, "acc")
        assert sorted(m.step for m in history) == [1, 2]  # the step is the epoch
        assert float(run.data.tags["final.time_total_s"]) > 0 and "final.lr" in run.data.tags
        assert run.data.params["config.tau"] in ("0.5", "2.0") and run.data.tags["arm"] in ("ID", "IDFD")
        files = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
        assert files == [f"figures/{run.data.tags['tuneclust.trial_id']}_curves.png"]
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["figures"]


def test_stored_spec_records_the_storage_used(swept):
    out = swept[4]
    stored = yaml.safe_load((out / "spec.yaml").read_text())
    assert stored["storage"] == str(out.parent)
    assert stored["description"].startswith("A tiny study for the view tests")


def test_sweep_ends_with_report_and_mlflow_commands(swept):
    exp, text, uri = swept[1], swept[5], swept[6]
    lines = text.strip().splitlines()
    assert lines[-2] == (
        f"MLflow:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1   (then open http://127.0.0.1:5000)"
    )
    assert (
        lines[-1] == f"         this sweep's runs: {runs_url(exp.experiment_id)}"
    )  # this sweep's experiment
    assert lines[-3] == f"report:  python -m tuneclust report {swept[4]}"
    assert "view: 4 trials: 4 finished, 0 errored, 0 unfinished" in text
    assert text.count("4/4 done · 0 running · 0 pending · 0 errored") == 1  # the final progress line, once


def test_runs_url_opens_the_experiments_runs_in_the_model_training_view():
    assert runs_url("7") == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert runs_url("12", ui="http://localhost:8080").startswith(
        "http://localhost:8080/#/experiments/12/runs?"
    )
    assert runs_url("a/b").startswith("http://127.0.0.1:5000/#/experiments/a%2Fb/runs?")  # one path segment


def test_timings_are_bookkeeping_and_scores_are_not():
    assert all(is_bookkeeping(k) for k in (*TIMINGS, "time_total_s", "images_per_s", "epoch", "lr"))
    assert not any(is_bookkeeping(k) for k in ("acc", "loss", "loss_instance", "silhouette", "config.max_s"))


def test_mlflow_line_finds_the_experiment_or_stays_one_line(swept, tmp_path):
    """The sweep folder's mlflow.json names the experiment; a state written before it did is looked up by name in
    the store; without one (MLflow never started) the old line alone; tracking off: nothing."""
    _, exp, parent, _, _, _, uri = swept
    spec = load_spec(write_spec(tmp_path, SPEC.format(uri=uri)))
    folder = tmp_path / "sweep"
    folder.mkdir()
    alone = (
        f"MLflow:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1   (then open http://127.0.0.1:5000)"
    )
    assert mlflow_ui_command(spec, folder) == mlflow_ui_command(spec) == alone
    state = {"parent_run_id": parent.info.run_id, "tracking_uri": uri}
    (folder / MLFLOW_STATE).write_text(json.dumps(state))  # an older sweep's state: looked up by name
    want = f"{alone}\n         this sweep's runs: {runs_url(exp.experiment_id)}"
    assert mlflow_ui_command(spec, folder) == want
    (folder / MLFLOW_STATE).write_text(json.dumps({**state, "experiment_id": "42"}))  # stored: taken as is
    assert mlflow_ui_command(spec, folder).splitlines()[1].endswith(runs_url("42"))
    off = load_spec(tmp_path / "spec.yaml", ["tracking.mlflow.enabled=false"])
    assert mlflow_ui_command(off, folder) is None


# ------------------------------------------------------------------------------------------- progress
def test_progress_line_counts_best_and_eta():
    p = Progress(total=4, epochs=10, metric="acc", mode="max", start=0.0)
    assert p.line(now=5.0) == "[5s] 0/4 done · 0 running · 4 pending · 0 errored"
    p.started("a", "tau=1 · seed=0")
    p.started("b", "tau=2 · seed=0")
    p.result("a", {"epoch": 5, "acc": 0.5})
    p.result("b", {"epoch": 5, "acc": 0.7})
    p.result("a", {"epoch": 10, "acc": 0.6})
    p.finished("a", error=False)
    p.result("b", {"epoch": 10, "acc": float("nan")})  # not a best
    p.finished("b", error=True)
    p.started("c", "tau=3 · seed=0")
    # done: a, errored: b, running c at epoch 0, pending 1: fraction 2/4, elapsed 60 s -> 60 s left
    assert p.line(now=60.0) == (
        "[1m00s] 1/4 done · 1 running · 1 pending · 1 errored | best acc 0.7000 (tau=2 · seed=0) | ETA 1m00s"
    )
    q = Progress(total=1, epochs=1, metric="loss", mode="min", start=0.0)
    q.started("x", "x")
    q.result("x", {"epoch": 1, "loss": 2.0})
    q.result("x", {"epoch": 1, "loss": 1.0})
    assert "best loss 1.0000 (x)" in q.line(now=1.0)


def test_trial_label_and_duration():
    assert trial_label({"arm": "IDFD", "tau": 0.5, "seed": 1}) == "IDFD · tau=0.5 · seed=1"
    assert trial_label({"data.name": "cifar10", "lr": 0.0300001}) == "name=cifar10 · lr=0.03"
    long = trial_label({"arm": "AE_star_plus_Lc", "data.name": "imagefolder_long_name", "seed": 2})
    assert long.endswith("seed=2") and len(long) <= 60
    assert trial_label({"arm": ""}) == ""
    assert (duration(42), duration(75), duration(3700)) == ("42s", "1m15s", "1h01m")


def test_quickstart_prints_at_most_40_lines(tmp_path):
    """The quickstart as a user runs it (shortened to 2 epochs): a progress line, not Ray's tables."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    cmd = [sys.executable, "-m", "tuneclust", "sweep", str(ROOT / "search_spaces" / "quickstart.yaml")]
    cmd += ["--set", "budget.epochs=2", "--set", "budget.eval_every=1", "--set", "scheduler.grace_period=1"]
    cmd += ["--storage", str(tmp_path / "runs")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=500, cwd=tmp_path, env=env)
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 0, "\n".join(out[-30:])
    assert len(out) <= 40, "\n".join(out)
    assert not any("Token authentication" in ln or "tensorboard" in ln.lower() or "╭" in ln for ln in out)
    assert out[-2].startswith("MLflow:  mlflow ui --backend-store-uri sqlite:///")
    assert out[-1].startswith("         this sweep's runs: http://127.0.0.1:5000/#/experiments/")
    assert any(ln.startswith("[") and "12/12 done" in ln for ln in out)
    assert any(ln.startswith("settings ranked by acc (max) at ") for ln in out)  # the answer, seeds pooled
    assert Path(tmp_path / "runs" / "quickstart" / "trials.parquet").exists()


def test_help_is_written_for_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "Hyperparameter studies of deep-clustering methods" in text and "examples:" in text
    assert "wiring only" not in text
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    assert "--verbose" in text and "--quiet" in text


class _Trial:
    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config = trial_id, config


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.text, self.tty = "", tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_progress_callback_rewrites_on_a_terminal_and_appends_otherwise(tty, monkeypatch):
    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stdout", stream)
    cb = ProgressCallback(total=2, epochs=2, metric="acc", mode="max", interval_s=3600)
    cb.setup()
    a, b = _Trial("a", {"tau": 1.0}), _Trial("b", {"tau": 2.0})
    cb.on_trial_start(0, [], a)
    cb.on_trial_start(0, [], b)
    cb.on_trial_result(0, [], a, {"epoch": 1, "acc": 0.5})
    cb.on_step_end(0, [])  # not due: nothing new off a terminal
    cb.on_trial_complete(0, [], a)
    cb.on_trial_complete(0, [], b)
    cb.on_experiment_end([])
    if tty:  # one line, rewritten in place, ended by a newline
        assert stream.text.count("\n") == 1 and stream.text.endswith("\n") and stream.text.count("\r") >= 3
        assert "2/2 done" in stream.text.rsplit("\r", 1)[-1]
    else:  # the first line, then one per trial end; the same final state not repeated
        lines = stream.text.splitlines()
        assert len(lines) == 3 and "\r" not in stream.text and "0/2 done · 1 running · 1 pending" in lines[0]
        assert "1/2 done · 1 running · 0 pending" in lines[1] and "best acc 0.5000 (tau=1)" in lines[1]
        assert "2/2 done · 0 running" in lines[2]
