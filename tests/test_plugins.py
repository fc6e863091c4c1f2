"""Methods and datasets from outside the package (README "Your own method", "Your own data"): import paths, entry
points, the one-line errors of bad plugins, user data with and without labels, and the DEC example swept on a
multi-node cluster from a folder that is not installed (only the working directory shipped to the workers has it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, ray_cluster, sweep_command

from tuneclust.cli import main
from tuneclust.plugins import PluginError

EXAMPLE = ROOT / "examples" / "dec"
DEC_SMALL = "{pretrain_epochs: 1, dims: [32, 8], batch_size: 100, kmeans_n_init: 2, kmeans_init_n_init: 2}"
LOADERS = """
import numpy as np
from sklearn.datasets import load_digits


def _digits(n=300):
    d = load_digits()
    return (d.images[:n, None] / 16.0).astype(np.float32), d.target[:n]


def labelled(cfg):
    return _digits()


def unlabelled(cfg):
    return _digits()[0], None


def flat(cfg):
    return _digits()[0][:, 0], None  # (N, 8, 8): neither images with a channel axis nor vectors
"""


def _spec(path: Path, method: str, data: str, body: str = "", name: str = "p") -> Path:
    path.write_text(
        f"name: {name}\nmethod: {method}\ndata: {data}\nbudget: {{epochs: 2, eval_every: 1}}\n"
        f"config: {DEC_SMALL}\nstorage: {path.parent / 'runs'}\n"
        f"tracking: {{mlflow: {{uri: 'sqlite:///{path.parent / 'mlflow.db'}'}}}}\n{body}"
    )
    return path


def _entry_point_site(site: Path) -> None:
    """An installed-looking distribution: the DEC example as module ``tinyplug`` and a dist-info whose
    entry_points.txt registers it as ``tinydec`` in the group tuneclust.methods (what pip writes)."""
    site.mkdir(parents=True)
    shutil.copy(EXAMPLE / "method.py", site / "tinyplug.py")
    info = site / "tinyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tuneclust.methods]\ntinydec = tinyplug:DEC\n")


BAD = {
    "module missing": ("nosuchmod_x:Mine", "", "no module named 'nosuchmod_x'"),
    "not a Method": (
        "notmethod_x:Mine",
        "class Mine:\n    pass\n",
        "Mine is not a subclass of tuneclust.methods.Method",
    ),
    "config without defaults": (
        "nodefault_x:Mine",
        "from tuneclust.methods import Evaluation, Method, MethodConfig\n\n"
        "class Cfg(MethodConfig):\n    depth: int\n\n"
        "class Mine(Method):\n    name, Config = 'mine', Cfg\n\n"
        "    def build(self):\n        pass\n\n    def step(self, idx):\n        return None\n\n"
        "    def evaluate(self):\n        return Evaluation()\n",
        "Cfg has keys without a valid default: depth",
    ),
    "import error inside": (
        "brokenmod_x:Mine",
        "import os\n\nvalue = 1 / 0\n",
        "importing 'brokenmod_x' failed: ZeroDivisionError: division by zero (brokenmod_x.py:3)",
    ),
    "missing dependency": (
        "needsdep_x:Mine",
        "import not_installed_dep_x\n",
        "importing 'needsdep_x' failed: ModuleNotFoundError: No module named 'not_installed_dep_x'",
    ),
}


@pytest.mark.parametrize("case", [*BAD, "loader wrong shape", "acc without labels"])
def test_bad_plugins_one_line_exit_2_nothing_written(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loaders_x.py").write_text(LOADERS)
    if case in BAD:
        ref, code, expected = BAD[case]
        if code:
            (tmp_path / f"{ref.split(':')[0]}.py").write_text(code)
        spec = _spec(tmp_path / "s.yaml", ref, "{name: digits, subsample: 100}")
        field = "method"
    elif case == "loader wrong shape":
        spec = _spec(tmp_path / "s.yaml", "idfd", "{name: 'loaders_x:flat', num_classes: 10}")
        field, expected = "data.name", "x has shape (300, 8, 8); expected images (N, C, H, W)"
    else:
        spec = _spec(tmp_path / "s.yaml", "idfd", "{name: 'loaders_x:unlabelled', num_classes: 10}")
        field, expected = "objective.metric", "acc needs labels and dataset 'loaders_x:unlabelled' has none"
    config = "{backbone: convnet}" if "idfd" in spec.read_text() else None
    if config:
        spec.write_text(spec.read_text().replace(DEC_SMALL, config))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"s.yaml: {field}: " in err[0] and expected in err[0], err
    assert main(["sweep", str(spec)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    after = sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__")
    assert after == before, "nothing written"


def test_import_path_method_gets_list_keys_validation_and_train(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    ref = "examples.dec.method:DEC"
    assert main(["list", "--keys", ref]) == 0
    table = capsys.readouterr().out
    assert f"### `{ref}` (DEC)" in table and "| `recon_weight` | float | `0.0` |" in table
    spec = _spec(
        tmp_path / "d.yaml", ref, "{name: digits, subsample: 200}", "search: {recon_wieght: {grid: [0.1]}}\n"
    )
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert (
        "search.recon_wieght: unknown examples.dec.method:DEC config key; did you mean 'recon_weight'" in err
    )
    spec.write_text(spec.read_text().replace("recon_wieght: {grid: [0.1]}", "recon_weight: {grid: [-1]}"))
    assert main(["validate", str(spec)]) == 2
    assert "search.recon_weight.grid: Input should be greater than or equal to 0" in capsys.readouterr().err
    spec.write_text(spec.read_text().replace("[-1]", "[0.1]"))
    assert main(["train", str(spec), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "epoch=2" in out and "clustering=1.0" in out and "acc=" in out


def test_entry_point_method_is_found_listed_validated_and_trained(tmp_path, monkeypatch, capsys):
    from tuneclust.methods import get_method, method_names

    _entry_point_site(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert "tinydec" in method_names() and get_method("tinydec").__name__ == "DEC"
    assert main(["list"]) == 0
    assert "tinydec" in capsys.readouterr().out
    assert main(["list", "--keys", "tinydec"]) == 0
    assert "| `kl_weight` |" in capsys.readouterr().out
    spec = _spec(
        tmp_path / "e.yaml",
        "tinydec",
        "{name: digits, subsample: 200}",
        "ablation: {DEC: {}, IDEC: {recon_weight: 0.1}}\n",
    )
    assert main(["validate", str(spec)]) == 0
    assert "ok: p (tinydec), 2 trials" in capsys.readouterr().out
    assert main(["train", str(spec), "--device", "cpu", "--arm", "IDEC"]) == 0
    assert "arm IDEC" in capsys.readouterr().out


def test_loader_contract_is_checked():
    from tuneclust.data.plugins import _images, _labels

    assert _images(np.full((3, 1, 4, 4), 255, np.uint8), "d").max() == 1.0
    assert _images(torch.rand(3, 5).numpy(), "d").shape == (3, 5)
    assert list(_labels(np.array([7, 3, 7]), 3, "d")) == [1, 0, 1]
    for bad, match in [
        (np.zeros((3, 2, 4, 4), np.float32), "expected images"),
        (np.zeros((3, 4), np.int32), "dtype int32"),
        (np.full((3, 1, 2, 2), 2.0), r"\[0, 1\]"),
        (np.full((3, 4), np.nan), "NaN"),
        ([[0.0]], "numpy array or a torch tensor"),
    ]:
        with pytest.raises(PluginError, match=match):
            _images(bad, "d") if not isinstance(bad, list) else _labels(bad, 1, "d")
    with pytest.raises(PluginError, match=r"y must be None or \(3,\) integers"):
        _labels(np.zeros(2, np.int64), 3, "d")


def test_user_data_with_and_without_labels_sweeps(ray_session, tmp_path, monkeypatch):
    """In-process on the session's Ray: the loaders run in the driver only (the data reaches the trials through
    the object store). The unlabelled dataset reports no ACC/NMI, the labelled one does; objective consensus."""
    from tuneclust.spec import load_spec
    from tuneclust.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cells_inproc.py").write_text(LOADERS)
    body = (
        "search: {data.name: {grid: ['cells_inproc:labelled', 'cells_inproc:unlabelled']}}\n"
        "objective: {metric: consensus}\nevaluation: {subset: 100}\n"
    )
    spec = _spec(
        tmp_path / "i.yaml", "idfd", "{name: 'cells_inproc:labelled', num_classes: 10}", body, name="i"
    )
    spec.write_text(
        spec.read_text().replace(DEC_SMALL, "{backbone: convnet, batch_size: 100, kmeans_n_init: 2}")
    )
    run_sweep(load_spec(spec), verbose=0)
    trials = pd.read_parquet(tmp_path / "runs" / "i" / "trials.parquet").set_index("data.name")
    assert (trials["status"] == "TERMINATED").all(), trials[["status", "error"]].to_string()
    assert trials.loc["cells_inproc:labelled", "final.acc"] > 0.1
    assert trials.loc["cells_inproc:labelled", "final.nmi"] > 0
    assert pd.isna(trials.loc["cells_inproc:unlabelled"].get("final.acc"))
    assert pd.isna(trials.loc["cells_inproc:unlabelled"].get("final.nmi"))
    assert trials["final.consensus"].notna().any()  # the first trial at an epoch has no peer yet (NaN)


@pytest.mark.slow  # a driver in a subprocess starting its own Ray: about a minute
def test_user_data_with_and_without_labels_sweeps_with_an_entry_point_method(tmp_path):
    """A driver in a subprocess (its own local Ray): the entry-point method is found on every worker through
    PYTHONPATH (installed, as on a cluster), the loaders module ``cells`` in the working directory is shipped by
    runtime_env. The unlabelled dataset reports no ACC/NMI, the labelled one does; the objective is consensus."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "cells.py").write_text(LOADERS)
    _entry_point_site(tmp_path / "site")
    body = (
        "search: {data.name: {grid: ['cells:labelled', 'cells:unlabelled']}}\n"
        "objective: {metric: consensus}\nevaluation: {subset: 100}\n"
    )
    spec = _spec(work / "u.yaml", "tinydec", "{name: 'cells:labelled', num_classes: 10}", body, name="u")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "tuneclust", "sweep", str(spec)]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"shipping {work} to the Ray workers" in r.stdout
    trials = pd.read_parquet(work / "runs" / "u" / "trials.parquet").set_index("data.name", drop=False)
    assert (trials["status"] == "TERMINATED").all(), trials[["status", "error"]].to_string()
    labelled, unlabelled = trials.loc["cells:labelled"], trials.loc["cells:unlabelled"]
    assert labelled["final.acc"] > 0.2 and labelled["final.nmi"] > 0.1
    assert pd.isna(unlabelled.get("final.acc")) and pd.isna(unlabelled.get("final.nmi"))
    assert trials["final.consensus"].notna().any()  # the first trial at an epoch has no peer yet (NaN)


# ---------------------------------------------------------------------------------------------- multi-node

PROBE = '''
"""The example's DEC, reporting where it runs: 1.0 if imported from Ray's copy of the shipped working directory,
and 1.0 if on the head node (the test writes the head's node id next to this file)."""
from pathlib import Path

import ray

from examples.dec.method import DEC


class ProbeDEC(DEC):
    def evaluate(self):
        ev = super().evaluate()
        head = Path(__file__).with_name("head_node.txt").read_text().strip()
        ev.scores["shipped"] = float("runtime_resources" in __file__)
        ev.scores["on_head"] = float(ray.get_runtime_context().get_node_id() == head)
        return ev
'''


@pytest.fixture
def two_node_cluster():
    """Head (0 CPUs: the driver only) + 2 worker nodes of 1 CPU (:func:`conftest.ray_cluster`)."""
    with ray_cluster("tp") as c:
        yield c


@pytest.mark.slow  # a 3-node cluster and a PBT sweep of 4 trials: about two minutes on 2 cores
def test_example_method_from_an_uninstalled_folder_sweeps_on_worker_nodes(two_node_cluster, tmp_path):
    import mlflow

    from tuneclust.tables import read_tables

    plug = tmp_path / "plug"  # the user's project: not installed, not on the workers' path
    shutil.copytree(EXAMPLE, plug / "examples" / "dec", ignore=shutil.ignore_patterns("__pycache__"))
    (plug / "examples" / "dec" / "probe.py").write_text(PROBE)
    (plug / "examples" / "dec" / "head_node.txt").write_text(two_node_cluster.head_node.node_id)
    body = (
        "ablation: {DEC: {recon_weight: 0.0}, IDEC: {recon_weight: 0.1}}\n"
        "search: {lr: {loguniform: [0.001, 0.1]}}\nsearcher: random\nnum_samples: 2\n"
        "scheduler: {type: pbt, perturbation_interval: 2, quantile_fraction: 0.5, resample_probability: 0.5}\n"
        "evaluation: {subset: 200}\n"
    )
    spec = _spec(
        plug / "dec.yaml", "examples.dec.probe:ProbeDEC", "{name: digits, subsample: 300}", body, "dec"
    )
    spec.write_text(spec.read_text().replace("epochs: 2,", "epochs: 8,"))
    env = {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH"
    }  # tuneclust is installed; examples/ is not
    env.update(HOME=str(tmp_path), TUNE_GLOBAL_CHECKPOINT_S="1")
    cmd = sweep_command(spec, "--address", two_node_cluster.address)
    r = subprocess.run(cmd, cwd=plug, env=env, capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    trials, epochs = read_tables(plug / "runs" / "dec")
    assert len(trials) == 4 and (trials["status"] == "TERMINATED").all(), trials[
        ["status", "error"]
    ].to_string()
    assert sorted(trials["arm"]) == ["DEC", "DEC", "IDEC", "IDEC"], "both ablation arms ran"
    assert "initial.arm" not in trials or trials["initial.arm"].isna().all(), "PBT exploits within an arm"
    assert (trials["config.recon_weight"] == trials["arm"].map({"DEC": 0.0, "IDEC": 0.1})).all()
    assert (epochs["shipped"] == 1).all(), (
        "every trial imported the method from the shipped working directory"
    )
    assert (epochs["on_head"] == 0).all(), "every trial ran on a worker node"
    assert (epochs.groupby("trial_id")["epoch"].apply(sorted).map(tuple) == tuple(range(1, 9))).all()
    mutated = epochs.groupby("trial_id")["config.lr"].nunique()
    assert (mutated > 1).any(), "PBT mutated the lr of at least one trial"
    clustering = epochs[epochs["epoch"] > 1]  # after pretraining the reported lr is the configured one
    assert clustering["lr"].to_numpy() == pytest.approx(clustering["config.lr"].to_numpy(), rel=1e-9)
    assert {"loss_kl", "loss_recon", "acc", "nmi", "consensus"} <= set(epochs)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{plug / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dec").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4 and all("acc" in r.data.metrics for r in children)
    assert main(["report", str(plug / "runs" / "dec"), "--out", str(tmp_path / "rep")]) == 0


# ---------------------------------------------------------------------------------------------- the DEC example


@pytest.fixture
def dec(monkeypatch):
    """The example's module, resolved as a spec names it (from the repository root)."""
    import importlib

    from tuneclust.methods import get_method

    monkeypatch.chdir(ROOT)
    cls = get_method("examples.dec.method:DEC")
    return importlib.import_module(cls.__module__)


def test_dec_loss_matches_numpy_equations(dec):
    """Eq. 1 (Student-t Q), Eq. 3 (target P), Eq. 2 (KL, mean over the batch) re-written in NumPy; + recon."""
    g = torch.Generator().manual_seed(0)
    z, mu = (
        torch.randn(16, 4, generator=g, dtype=torch.float64),
        torch.randn(3, 4, generator=g, dtype=torch.float64),
    )
    x, x_rec = (
        torch.rand(16, 9, generator=g, dtype=torch.float64),
        torch.rand(16, 9, generator=g, dtype=torch.float64),
    )
    zn, mun, alpha = z.numpy(), mu.numpy(), 2.0
    q = (1 + ((zn[:, None] - mun[None]) ** 2).sum(-1) / alpha) ** (-(alpha + 1) / 2)
    q /= q.sum(1, keepdims=True)
    p = q**2 / q.sum(0)
    p /= p.sum(1, keepdims=True)
    kl = (p * np.log(p / q)).sum(1).mean()
    mse = ((x_rec.numpy() - x.numpy()) ** 2).mean()
    from tuneclust.losses.dec import soft_assign, target_distribution

    p_t = target_distribution(soft_assign(z, mu, alpha))
    np.testing.assert_allclose(p_t.numpy(), p, rtol=1e-10)
    out = dec.dec_loss(z, x_rec, x, mu, p_t, alpha, {"kl": 1.0, "recon": 0.0})
    assert set(out.terms) == {"kl"} and out.total.item() == pytest.approx(kl, rel=1e-10)
    out = dec.dec_loss(z, x_rec, x, mu, p_t, alpha, {"kl": 1.0, "recon": 0.1})
    assert out.total.item() == pytest.approx(kl + 0.1 * mse, rel=1e-10)


@pytest.mark.parametrize("stop", [1, 2])  # at the phase boundary (no target yet), and inside clustering
def test_dec_resume_equals_uninterrupted(dec, stop):
    from tuneclust.data.registry import DataConfig, load_dataset

    data = load_dataset(DataConfig(name="digits", subsample=200))
    cfg = dec.DECConfig(
        pretrain_epochs=1, dims=[32, 8], batch_size=64, kmeans_init_n_init=2, recon_weight=0.1
    )

    def run(m, epochs):
        for _ in range(epochs):
            losses = m.train_epoch()
            m.epoch += 1
        return losses

    torch.manual_seed(0)
    straight = dec.DEC(cfg, data, torch.device("cpu"), 3)
    last = run(straight, 3)
    torch.manual_seed(0)
    first = dec.DEC(cfg, data, torch.device("cpu"), 3)
    run(first, stop)
    resumed = dec.DEC(cfg, data, torch.device("cpu"), 3)
    resumed.load_state_dict(first.state_dict())
    assert run(resumed, 3 - stop) == pytest.approx(last, rel=1e-6) and "loss_kl" in last
    np.testing.assert_allclose(resumed.evaluate().embedding, straight.evaluate().embedding, rtol=1e-5)


def test_example_study_validates_with_smoke(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["validate", "examples/dec/dec_digits.yaml", "--smoke"]) == 0, capsys.readouterr().err
    assert "ok: dec_digits (examples.dec.method:DEC), 8 trials; --smoke: 2 trials" in capsys.readouterr().out
    assert (ROOT / "examples" / "dec" / "dec_digits.yaml").read_text().startswith("#")


def test_validate_says_when_data_has_no_labels(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loaders_y.py").write_text(LOADERS)
    spec = _spec(
        tmp_path / "s.yaml",
        "idfd",
        "{name: 'loaders_y:unlabelled', num_classes: 10}",
        "objective: {metric: consensus}\n",
    )
    spec.write_text(spec.read_text().replace(DEC_SMALL, "{backbone: convnet}"))
    assert main(["validate", str(spec)]) == 0
    assert (
        "data loaders_y:unlabelled: no labels (label-free metrics only, no acc/nmi/ari)"
        in capsys.readouterr().out
    )
    assert main(["validate", str(spec), "--set", "data.num_classes=null"]) == 2
    assert (
        "data: dataset 'loaders_y:unlabelled' has no labels: set data.num_classes" in capsys.readouterr().err
    )
