"""The Ray-free parts of the trainable: config resolution, device choice, the loop's reports and resume."""

from __future__ import annotations

import os

import pytest
import torch

from tuneclust.methods import NonFiniteError
from tuneclust.plan import SweepPlan, TrialPlan, merge
from tuneclust.trainable import (
    STATE_FILE,
    TrialLoop,
    available_checkpoint,
    select_device,
    superseded_line,
)


def test_merge_layers_config_arm_then_search():
    cfg, data = merge(
        {"tau": 1.0, "variant": "idfd", "alpha": 1.0},
        {"variant": "idfo", "alpha": 10.0},
        {"name": "digits", "subsample": None},
        {"arm": "IDFO", "tau": 0.5, "data.subsample": 100},
    )
    assert cfg == {"tau": 0.5, "variant": "idfo", "alpha": 10.0}
    assert data == {"name": "digits", "subsample": 100}


def test_sweep_plan_gives_the_worker_and_the_tables_the_same_trial():
    plan = SweepPlan(
        method="idfd",
        config={"tau": 1.0, "backbone": "convnet"},
        ablation={"ID": {"variant": "id", "tau": 0.07}},
        data={"name": "digits", "subsample": None},
        epochs=3,
        eval_every=1,
        cpu=1,
        gpu=0,
    )
    point = {"arm": "ID", "seed": 2, "data.subsample": 50}
    trial = plan.trial(point)
    assert trial.config == {"tau": 0.07, "backbone": "convnet", "variant": "id", "seed": 2}
    assert trial.data["subsample"] == 50 and trial.epochs == 3
    ident = plan.identity(point)
    assert ident["arm"] == "ID" and ident["config.tau"] == 0.07 and ident["config.seed"] == 2
    assert ident["config.lr"] == 0.03, "identity holds every resolved key, defaults included"
    assert ident["data.subsample"] == 50 and ident["data.name"] == "digits"


def test_cpu_trial_hides_the_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert select_device(0.0, []) == torch.device("cpu")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert select_device(0.5, []) == torch.device("cpu"), "no GPU assigned by Ray -> CPU"


PLAN = dict(method="idfd", data={"name": "digits", "subsample": 200}, eval_every=2)
CFG = {"backbone": "convnet", "batch_size": 100, "kmeans_n_init": 2}


def test_loop_reports_at_eval_every_and_the_last_epoch():
    loop = TrialLoop(TrialPlan(config=CFG, epochs=3, **PLAN), torch.device("cpu"))
    reports = list(loop.run())
    assert [r["epoch"] for r in reports] == [2, 3]
    assert reports[-1]["step"] == 3 * 2 and reports[-1]["images_per_s"] > 0
    assert {"acc", "nmi", "ari", "silhouette", "loss", "loss_instance", "clusters_used"} <= set(reports[-1])


def test_loop_state_resumes_to_the_same_numbers():
    straight = [
        r["loss"] for r in TrialLoop(TrialPlan(config=CFG, epochs=4, **PLAN), torch.device("cpu")).run()
    ]
    first = TrialLoop(TrialPlan(config=CFG, epochs=4, **PLAN), torch.device("cpu"))
    runner = first.run()
    head = [next(runner)["loss"]]
    state = first.state()
    torch.manual_seed(123)  # a resumed trial starts in a fresh process: nothing else may carry over
    second = TrialLoop(TrialPlan(config=CFG, epochs=4, **PLAN), torch.device("cpu"))
    second.load(state)
    tail = [r["loss"] for r in second.run()]
    assert head + tail == pytest.approx(straight, rel=1e-5)


def test_a_diverging_trial_raises_a_clear_error():
    loop = TrialLoop(TrialPlan(config={**CFG, "lr": 1e30}, epochs=2, **PLAN), torch.device("cpu"))
    with pytest.raises(NonFiniteError, match="non-finite"):
        list(loop.run())


def test_restore_finds_the_registered_checkpoint_when_the_named_one_was_deleted(tmp_path):
    """A driver killed between Ray deleting checkpoint 1 (on registering 2) and saving its experiment state
    resumes the trial from checkpoint 1: the trial must restore from 2 (the registered one, whose epoch is in the
    tables), not from 3 (uploaded, never processed), and leave a note where 1 was so Ray can delete it later."""
    import pyarrow.fs as pafs

    fs, trial = pafs.LocalFileSystem(), tmp_path / "trial_0"
    for i in (2, 3):
        (trial / f"checkpoint_00000{i}").mkdir(parents=True)
        (trial / f"checkpoint_00000{i}" / STATE_FILE).write_bytes(b"state %d" % i)
    (trial / "checkpoint_000010").mkdir()  # an upload that never finished: no state file
    kept = str(trial / "checkpoint_000002")
    assert available_checkpoint(fs, kept) == kept  # present: used as named, nothing written
    assert sorted(p.name for p in trial.iterdir()) == [
        "checkpoint_000002",
        "checkpoint_000003",
        "checkpoint_000010",
    ]

    gone = str(trial / "checkpoint_000001")
    assert available_checkpoint(fs, gone) == kept
    line = superseded_line(gone, kept)
    assert (
        line.startswith("warning: checkpoint_000001 of trial trial_0 is gone")
        and "from checkpoint_000002" in line
    )
    assert (
        (trial / "checkpoint_000001" / "superseded.txt")
        .read_text()
        .startswith("restored from checkpoint_000002")
    )
    # a note is not a state: asked again (a second kill before Ray saved), it still resolves to checkpoint 2
    assert available_checkpoint(fs, gone) == kept

    for i in (2, 3):
        (trial / f"checkpoint_00000{i}" / STATE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no other checkpoint of this trial"):
        available_checkpoint(fs, gone)


def test_out_of_memory_fails_the_trial_with_one_line_naming_the_cap():
    """torch's OOM (a trial over its capped share of the GPU) becomes one line: which trial, which epoch, the
    share, and what to change. Injected on the CPU by making the method's epoch raise torch's error."""
    from tuneclust.trainable import TrialOutOfMemoryError

    plan = TrialPlan(config={**CFG, "batch_size": 64}, epochs=2, gpu=0.25, **PLAN)
    loop = TrialLoop(plan, torch.device("cpu"), label="trial t1")

    def oom() -> dict:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    loop.method.train_epoch = oom
    with pytest.raises(TrialOutOfMemoryError) as e:
        next(loop.run())
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("trial t1: out of GPU memory in epoch 1")
    assert "resources.gpu: 0.25" in msg and "config.batch_size (now 64)" in msg
    assert isinstance(e.value.__cause__, torch.OutOfMemoryError)
