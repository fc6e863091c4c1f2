"""The spec layer: strict validation with one clear line per error (file + field), exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tuneclust.cli import main
from tuneclust.spec import SpecError, load_spec, smoke_spec

GOOD = """
name: t
method: idfd
data: {name: digits}
budget: {epochs: 4, eval_every: 2}
config: {backbone: convnet, alpha: 1.0}
search:
  tau: {grid: [0.5, 1.0, 2.0]}
  seed: {grid: [0, 1]}
ablation: {ID: {variant: id}, IDFD: {variant: idfd}}
scheduler: {type: asha, grace_period: 2}
storage: STORAGE
"""


def spec_file(tmp_path: Path, text: str = GOOD, **replace: str) -> Path:
    text = text.replace("STORAGE", str(tmp_path / "runs"))
    for old, new in replace.items():
        text = text.replace(old, new)
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_good_spec_counts_trials(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    assert spec.num_trials() == 3 * 2 * 2
    assert spec.mode == "max" and spec.arms == ["ID", "IDFD"]
    cfg, data = spec.sweep_plan().configs_at({"tau": 2.0, "seed": 1, "arm": "ID"})
    assert cfg == {"backbone": "convnet", "alpha": 1.0, "variant": "id", "tau": 2.0, "seed": 1}
    assert data["name"] == "digits"


def test_optuna_counts_cells_times_samples(tmp_path):
    p = spec_file(
        tmp_path,
        **{
            "tau: {grid: [0.5, 1.0, 2.0]}": "tau: {loguniform: [0.05, 10]}",
            "scheduler: {type: asha, grace_period: 2}": "searcher: optuna\nnum_samples: 5",
        },
    )
    spec = load_spec(p)
    assert spec.num_trials() == 2 * 2 * 5  # seeds x arms cells, 5 TPE trials each
    assert len(spec.space.cells()) == 4


def test_set_overrides_are_type_checked(tmp_path):
    p = spec_file(tmp_path)
    spec = load_spec(p, ["budget.epochs=6", "config.tau2=0.5", "search.tau.grid=[1, 2]"])
    assert spec.budget.epochs == 6 and spec.config["tau2"] == 0.5 and spec.num_trials() == 2 * 2 * 2
    with pytest.raises(SpecError, match=r"s\.yaml: budget\.epochs: .*integer"):
        load_spec(p, ["budget.epochs=many"])
    with pytest.raises(SpecError, match=r"--set nonsense"):
        load_spec(p, ["nonsense"])


BAD = [
    # (replacement, expected field in the message)
    ({"name: t": "name: t\nbogus: 1"}, "bogus: unknown key"),
    ({"method: idfd": "method: kmeans"}, "method: unknown method 'kmeans'"),
    ({"{name: digits}": "{name: imagenet}"}, "data.name: unknown dataset"),
    ({"alpha: 1.0": "alhpa: 1.0"}, "config.alhpa: unknown idfd config key"),
    ({"alpha: 1.0": "alpha: lots"}, "config.alpha"),
    ({"[0.5, 1.0, 2.0]": "[0.5, hot, 2.0]"}, "search.tau.grid"),
    (
        {"tau: {grid: [0.5, 1.0, 2.0]}": "tau: {uniform: [2.0, 1.0]}"},
        "search.tau: uniform range must have low < high",
    ),
    ({"tau: {grid: [0.5, 1.0, 2.0]}": "tau: {loguniform: [0, 1.0]}"}, "positive low bound"),
    ({"tau: {grid: [0.5, 1.0, 2.0]}": "tau: {grid: []}"}, "at least one value"),
    ({"tau: {grid: [0.5, 1.0, 2.0]}": "tau: {uniform: [0.1, 1.0]}"}, "searcher grid needs grid/choice"),
    ({"{variant: id}": "{variant: idx}"}, "ablation.ID.variant"),
    ({"{variant: id}": "{variant: id, tau: 1.0}"}, "must not fix a searched key"),
    ({"epochs: 4": "epochs: 0"}, "budget.epochs"),
    ({"type: asha": "type: annealing"}, "scheduler"),
    ({"scheduler:": "objective: {metric: accuracy}\nscheduler:"}, "objective.metric: unknown metric"),
    ({"{name: digits}": "{name: npz, root: /nonexistent/feats.npz}"}, "/nonexistent/feats.npz"),
    ({"budget:": "budget: [1, 2]\nx:"}, "budget"),
    ({"ablation:": "ablation: {ID: {variant: id}\nx:"}, "malformed YAML"),
]


@pytest.mark.parametrize("replace,expected", BAD, ids=[e for _, e in BAD])
def test_bad_specs_one_line_exit_2_nothing_written(tmp_path, capsys, replace, expected):
    p = spec_file(tmp_path, **replace)
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(p) in err[0] and expected in err[0], err[0]
    assert main(["sweep", str(p)]) == 2
    assert not (tmp_path / "runs").exists()


def test_bad_input_through_the_real_cli_has_no_traceback(tmp_path):
    p = spec_file(tmp_path, **{"epochs: 4": "epochs: -3"})
    r = subprocess.run([sys.executable, "-m", "tuneclust", "sweep", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert "budget.epochs" in r.stderr and str(p) in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "tuneclust", "validate", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "missing.yaml" in r.stderr and "Traceback" not in r.stderr


def test_yaml_is_loaded_safely(tmp_path):
    p = spec_file(tmp_path, **{"name: t": "name: !!python/object/apply:os.system ['echo pwned']"})
    with pytest.raises(SpecError, match="line 2: tag .* is not allowed"):
        load_spec(p)


WRONG = [
    # issue 13: accepted although wrong; each must be one line naming the field
    ({"name: t": "name: t\nname: u"}, "duplicate key 'name'"),
    ({"epochs: 4": "epochs: '15'"}, "budget.epochs"),
    ({"epochs: 4": "epochs: true"}, "budget.epochs"),
    ({"name: t": "name: !!binary dA=="}, "tag"),
    ({"name: t": "name: t\nnum_samples: 1000000000000000"}, "num_samples"),
    ({"name: t": "name: t\nnum_samples: 5000"}, "max_trials"),
    ({"epochs: 4": "epochs: 1000000000000000000000000000000"}, "budget.epochs"),
    ({"alpha: 1.0": "alpha: 1.0, batch_size: 9223372036854775808"}, "config.batch_size"),
    ({"alpha: 1.0": "alpha: .inf"}, "config.alpha: must be a finite number"),
    ({"alpha: 1.0": "alpha: .nan"}, "config.alpha: must be a finite number"),
    ({"name: t": "name: t\nresources: {gpu: .inf}"}, "resources.gpu"),
    ({"name: t": "name: t\nresources: {cpu: 100000}"}, "resources.cpu"),
    ({"[0.5, 1.0, 2.0]": "[0.5, .nan]"}, "search.tau.grid.1"),
    ({"tau: {grid: [0.5, 1.0, 2.0]}": "tau: {quniform: [0, .inf, 1]}"}, "search.tau.quniform.1"),
    ({"grace_period: 2": "grace_period: 2, time_attr: bogus"}, "scheduler.time_attr"),
    ({"name: t": "name: t\ntracking: {mlflow: {uri: 'bogus://x'}}"}, "unknown scheme"),
    ({"name: t": "name: t\ntracking: {mlflow: {uri: 'file:///tmp/m'}}"}, "refuses file stores"),
    ({"name: t": "name: " + "t" * 5000}, "name"),
    ({"name: t": "name: t\nx: " + "[" * 2000}, "nested deeper than 32"),
]


@pytest.mark.parametrize("replace,expected", WRONG, ids=[e for _, e in WRONG])
def test_plainly_wrong_specs_are_rejected(tmp_path, capsys, replace, expected):
    p = spec_file(tmp_path, **replace)
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) <= 300 and expected in err[0], err


def test_encoding_errors_name_the_byte(tmp_path, capsys):
    p = spec_file(tmp_path)
    data = p.read_bytes()
    p.write_bytes(b"\xef\xbb\xbf" + data)  # a BOM is fine
    assert main(["validate", str(p)]) == 0
    p.write_bytes(data.replace(b"method", b"meth\xffod"))
    assert main(["validate", str(p)]) == 2
    assert "byte 0xff at offset" in capsys.readouterr().err
    p.write_bytes(data.decode().encode("utf-16"))
    assert main(["validate", str(p)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_alias_bomb_is_cheap_and_short(tmp_path, capsys):
    lines = ["a0: [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "\n".join(lines[1:]) + "\nname: t\n"
    p = tmp_path / "bomb.yaml"
    p.write_text(bomb)
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expands to more than" in err[0] and len(err[0]) <= 300, err


def test_set_values_are_strict_too(tmp_path, capsys):
    p = spec_file(tmp_path)
    for item, expected in [
        ("config.alpha=.inf", "finite"),
        ("budget.epochs='3'", "budget.epochs"),
        ("resources.gpu=.nan", "finite"),
        ("config.alpha=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", "nested"),
    ]:
        assert main(["validate", str(p), "--set", item]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (item, err)


def test_smoke_spec_shrinks_everything_but_arms(tmp_path):
    p = spec_file(tmp_path, **{"{name: digits}": "{name: cifar10}"})
    spec = smoke_spec(load_spec(p))
    assert spec.data.name == "digits" and spec.budget.epochs == 2 and spec.budget.eval_every == 1
    assert spec.num_trials() == 2 and spec.arms == ["ID", "IDFD"]
    assert spec.search["tau"].grid == [0.5] and spec.resources.gpu == 0
    assert spec.name == "t-smoke"
