"""What the analysis/ scripts share (tuneclust.results, render, papers): loading finished trials with a dataset
column, the per-group metrics table, ordering, the panels plot and the scripts' command line. Small tables, numbers by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tuneclust import papers, render, results

NAN = float("nan")


def _sweep(folder: Path, trials: list[dict], data: dict | None = None) -> Path:
    """A sweep folder with a trials table and, if ``data``, a stored spec with that data section."""
    folder.mkdir(parents=True)
    if data is not None:
        (folder / "spec.yaml").write_text(f"name: {folder.name}\nmethod: idfd\ndata: {data!r}\n")
    pd.DataFrame(trials).to_parquet(folder / "trials.parquet")
    return folder


def _row(tid: str, status: str = "TERMINATED", acc: float = 0.5, **kw) -> dict:
    return {"trial_id": tid, "arm": "default", "status": status, "final.acc": acc, **kw}


# --------------------------------------------------------------------------------------------- loading
def test_load_trials_names_the_dataset_from_the_trial_or_the_spec(tmp_path):
    a = _sweep(tmp_path / "a", [_row("a0"), _row("a1")], {"name": "cifar10"})  # no data.name column
    b = _sweep(
        tmp_path / "b",
        [_row("b0", **{"data.name": "fmnist"}), _row("b1", **{"data.name": None})],  # searched; one missing
        {"name": "stl10"},
    )
    c = _sweep(tmp_path / "c_folder", [_row("c0")])  # no spec.yaml: the folder's name
    df = results.load_trials([a, str(b), c])
    assert df["trial_id"].tolist() == ["a0", "a1", "b0", "b1", "c0"]
    assert df["dataset"].tolist() == ["cifar10", "cifar10", "fmnist", "stl10", "c_folder"]
    assert list(df.index) == [0, 1, 2, 3, 4]
    assert results.load_trials(a)["dataset"].tolist() == ["cifar10", "cifar10"]  # one folder, not a list


def test_imagefolder_and_npz_are_named_by_their_root(tmp_path):
    img = _sweep(
        tmp_path / "img",
        [_row("i0", **{"data.name": "imagefolder"}), _row("i1", **{"data.name": "cifar10"})],
        {"name": "imagefolder", "root": "/data/imagenet10"},
    )
    npz = _sweep(tmp_path / "npz", [_row("n0")], {"name": "npz", "root": "/feat/cifar10_r50.npz"})
    assert results.load_trials([img, npz])["dataset"].tolist() == ["imagenet10", "cifar10", "cifar10_r50"]
    assert results.dataset_name(img) == "imagenet10"
    assert results.dataset_name(npz) == "cifar10_r50"
    assert results.dataset_name(_sweep(tmp_path / "plain", [_row("p")], {"name": "mnist"})) == "mnist"
    assert results.dataset_name(_sweep(tmp_path / "nospec", [_row("q")])) == "nospec"


def test_load_finished_keeps_terminated_trials_with_the_metric(tmp_path):
    a = _sweep(
        tmp_path / "a",
        [
            _row("ok", acc=0.7),
            _row("errored_but_evaluated", status="ERROR", acc=0.4),
            _row("no_acc", acc=NAN),
            _row("running", status="RUNNING", acc=0.9),
        ],
        {"name": "cifar10"},
    )
    b = _sweep(tmp_path / "b", [_row("ok_b", acc=0.2, **{"data.name": "fmnist"})], {"name": "fmnist"})
    done = results.load_finished([a, b])
    assert done["trial_id"].tolist() == ["ok", "ok_b"]
    assert done["dataset"].tolist() == ["cifar10", "fmnist"]
    assert done["final.acc"].tolist() == [0.7, 0.2]
    assert list(done.index) == [0, 1]
    assert results.load_finished(a, metric=None)["trial_id"].tolist() == ["ok", "no_acc"]
    assert results.load_finished(a, metric="final.nmi").empty  # no such column: nothing finished with it
    assert "dataset" in results.load_finished(a, metric="final.nmi").columns


def test_finished_or_exit_names_what_is_missing(tmp_path):
    a = _sweep(tmp_path / "a", [_row("ok", **{"config.p": 1})], {"name": "cifar10"})
    bad = _sweep(tmp_path / "bad", [_row("e", status="ERROR")], {"name": "cifar10"})
    assert papers.finished_or_exit([a], ["config.p"])["trial_id"].tolist() == ["ok"]
    with pytest.raises(SystemExit, match=f"^{bad}: no finished trial with final.acc$"):
        papers.finished_or_exit([bad])
    with pytest.raises(SystemExit, match=f"^{a} {bad}: no finished trial with final.acc and config.q$"):
        papers.finished_or_exit([a, bad], ["config.q"])


# --------------------------------------------------------------------------------------------- tables
def test_metrics_table_by_hand():
    df = pd.DataFrame(
        {
            "g": ["b", "a", "a", "a"],
            "final.acc": [0.5, 0.2, 0.4, 0.9],
            "final.nmi": [0.6, 0.1, NAN, 0.3],
            "other": [1, 2, 3, 4],
        }
    )
    t = render.metrics_table(df, ["g"], ["final.acc", "final.nmi", "final.ari"])  # ari: not there, skipped
    assert list(t.columns) == [
        "g",
        *("acc_mean", "acc_std", "acc_median", "count"),
        *("nmi_mean", "nmi_std", "nmi_median"),
    ]
    a, b = t.iloc[0], t.iloc[1]
    assert (a["g"], b["g"]) == ("a", "b")  # sorted by the group
    # a: acc 0.2, 0.4, 0.9 -> mean 0.5, deviations -0.3, -0.1, 0.4 -> var (0.09 + 0.01 + 0.16) / 2 = 0.13
    assert a["acc_mean"] == pytest.approx(0.5)
    assert a["acc_std"] == pytest.approx(math.sqrt(0.13))
    assert a["acc_median"] == pytest.approx(0.4)
    assert a["count"] == 3  # of the first metric
    # a: nmi 0.1, 0.3 (NaN dropped) -> mean 0.2, var (0.01 + 0.01) / 1
    assert a["nmi_mean"] == pytest.approx(0.2)
    assert a["nmi_std"] == pytest.approx(math.sqrt(0.02))
    assert a["nmi_median"] == pytest.approx(0.2)
    assert (b["acc_mean"], b["count"], b["nmi_median"]) == (pytest.approx(0.5), 1, pytest.approx(0.6))
    assert math.isnan(b["acc_std"])  # one trial: no spread


def test_metrics_table_two_keys_and_other_prefixes():
    df = pd.DataFrame(
        {
            "dataset": ["x", "x", "x", "w"],
            "config.p": [2, 1, 2, 1],
            "best_label_selected.acc": [0.3, 0.8, 0.5, 0.1],
        }
    )
    t = render.metrics_table(df, ["dataset", "config.p"], ["best_label_selected.acc"])
    assert t[["dataset", "config.p"]].values.tolist() == [["w", 1], ["x", 1], ["x", 2]]
    assert t["best_label_selected.acc_mean"].tolist() == pytest.approx([0.1, 0.8, 0.4])
    assert t["count"].tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match="final.nmi"):
        render.metrics_table(df, ["dataset"], ["final.nmi"])


def test_sort_in_order_puts_unknown_values_last_as_found():
    df = pd.DataFrame({"arm": ["x", "M1", "y", "M2", "M1"], "v": [0, 1, 2, 3, 4]})
    out = render.sort_in_order(df, "arm", ["M2", "M1", "M9"])
    assert out["arm"].tolist() == ["M2", "M1", "M1", "x", "y"]
    assert out["v"].tolist() == [3, 1, 4, 0, 2]  # ties keep their order
    assert list(out.index) == [0, 1, 2, 3, 4]


def test_ablation_table_uses_the_arm_order():
    df = pd.DataFrame({"arm": ["b", "a", "b", "c"], "final.acc": [0.2, 0.5, 0.4, 0.1]})
    t = render.ablation_table(df, "final.acc", arm_order=["c", "b"])
    assert t["arm"].tolist() == ["c", "b", "a"]
    assert t["final.acc"].tolist() == ["0.1000", "0.3000 ± 0.1414", "0.5000"]  # b: std of 0.2, 0.4
    assert t["trials"].tolist() == [1, 2, 1]


# ---------------------------------------------------------------------------------------------- plots
def test_errorbar_vs_param_draws_the_means():
    plt = render.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2)
    df = pd.DataFrame({"p": [2, 1, 1], "s": ["b", "a", "a"], "m": [0.9, 0.2, 0.4]})
    render.errorbar_vs_param(ax1, df, "p", "m", label="M")
    (bars,) = ax1.containers
    line, _, (yerr,) = bars  # the line, its caps, the error bars
    np.testing.assert_allclose(np.asarray(line.get_xdata(), float), [1, 2])
    np.testing.assert_allclose(np.asarray(line.get_ydata(), float), [0.3, 0.9])
    # p = 1: std of 0.2, 0.4 = sqrt(0.02); p = 2: one value, drawn as 0
    np.testing.assert_allclose([np.ptp(seg[:, 1]) / 2 for seg in yerr.get_segments()], [math.sqrt(0.02), 0])
    assert bars.get_label() == "M"
    render.errorbar_vs_param(ax2, df, "s", "m")  # not numeric: at 0, 1 with the values as ticks
    np.testing.assert_allclose(np.asarray(ax2.containers[0].lines[0].get_xdata(), float), [0, 1])
    assert [t.get_text() for t in ax2.get_xticklabels()] == ["a", "b"]
    plt.close(fig)


def test_plot_metrics_panels_one_panel_per_dataset(tmp_path, monkeypatch):
    df = pd.DataFrame(
        {
            "dataset": ["fm", "fm", "c10", "c10"],
            "config.beta": [1.0, 2.0, 1.0, 2.0],
            "final.acc": [0.5, 0.6, 0.7, 0.8],
            "final.nmi": [0.1, 0.2, 0.3, 0.4],
        }
    )
    seen, save = {}, render.save_figure

    def capture(fig, path):
        seen["axes"] = fig.axes
        return save(fig, path)

    monkeypatch.setattr(render, "save_figure", capture)
    path = render.plot_metrics_panels(
        df,
        "config.beta",
        ["final.acc", "final.nmi", "final.ari"],
        tmp_path / "sub" / "panels.png",
        title="Fig: {}",
        marks={"fm": 1.5},
    )
    assert path == tmp_path / "sub" / "panels.png" and path.stat().st_size > 0
    c10, fm = seen["axes"]
    assert (c10.get_title(), fm.get_title()) == ("Fig: c10", "Fig: fm")  # sorted
    assert c10.get_xlabel() == "beta" and c10.get_ylim() == (0.0, 1.0)
    assert c10.get_legend_handles_labels()[1] == ["ACC", "NMI"]  # ari: not there
    np.testing.assert_allclose(np.asarray(c10.containers[0].lines[0].get_ydata(), float), [0.7, 0.8])
    np.testing.assert_allclose(np.asarray(fm.containers[1].lines[0].get_ydata(), float), [0.1, 0.2])
    handles = dict(zip(*reversed(fm.get_legend_handles_labels())))
    assert sorted(handles) == ["ACC", "NMI", "paper's choice"]
    mark = handles["paper's choice"]
    np.testing.assert_allclose(np.asarray(mark.get_xdata(), float), [1.5, 1.5])


def test_save_figure_creates_the_folder_and_closes(tmp_path):
    plt = render.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = render.save_figure(fig, tmp_path / "a" / "b" / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)


# ------------------------------------------------------------------------------------- command line
def _recorder(calls: list, files: list[str]):
    def build(dirs: list[Path], out: Path) -> list[Path]:
        calls.append((dirs, out, out.is_dir()))
        return [out / f for f in files]

    return build


def test_analysis_cli_default_out_is_first_folder_analysis(tmp_path, capsys):
    calls: list = []
    a, b = tmp_path / "a", tmp_path / "b"
    rc = papers.analysis_cli("Title line.\n\nMore.", _recorder(calls, ["x.png", "t.md"]), [str(a), str(b)])
    assert rc == 0
    assert calls == [([a, b], a / "analysis", True)]  # out created before build runs
    assert capsys.readouterr().out.splitlines() == [
        str(a / "analysis" / "x.png"),
        str(a / "analysis" / "t.md"),
    ]


def test_analysis_cli_out_and_single_folder(tmp_path, capsys):
    calls: list = []
    out = tmp_path / "deep" / "out"
    rc = papers.analysis_cli("T", _recorder(calls, []), [str(tmp_path / "s"), "--out", str(out)], multi=False)
    assert rc == 0 and calls == [([tmp_path / "s"], out, True)]
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit) as e:  # one folder only
        papers.analysis_cli("T", _recorder(calls, []), ["a", "b"], multi=False)
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:  # at least one
        papers.analysis_cli("T", _recorder(calls, []), [])
    assert e.value.code == 2
    assert len(calls) == 1


def test_analysis_cli_help_is_the_first_docstring_line(capsys):
    with pytest.raises(SystemExit):
        papers.analysis_cli("\nFirst line.\nSecond line.\n", _recorder([], []), ["--help"])
    text = capsys.readouterr().out
    assert "First line." in text and "Second line." not in text and "--out" in text


# ------------------------------------------------------------------------------ paper-ready figures and tables
def test_readable_names_and_statistic():
    assert render.readable("final.acc") == "ACC (last evaluation)"
    assert render.readable("best_label_selected.nmi") == "NMI (best evaluation, chosen with labels)"
    assert (render.readable("config.tau"), render.readable("data.r_min"), render.readable("arm")) == (
        "tau",
        "r_min",
        "arm",
    )
    df = pd.DataFrame({"p": [1, 1, 2, 2, 2], "config.seed": [0, 1, 0, 1, 2]})
    assert render.statistic(df, ["p"]) == "mean ± std over 2-3 seeds"
    assert render.statistic(df.assign(**{"config.seed": 0}), ["p"]) == "mean ± std over 2-3 trials"
    assert render.statistic(df.head(1), ["p"]) == "mean ± std over 1 seed"


def test_markdown_table_is_real_markdown():
    df = pd.DataFrame({"a|b": ["x", "y|z"], "v": [0.123456, float("nan")], "n": [1, 2]})
    assert (
        render.markdown_table(df) == "| a|b | v | n |\n|---|---|---|\n| x | 0.1235 | 1 |\n| y\\|z |  | 2 |\n"
    )


def test_save_figure_writes_png_and_svg(tmp_path):
    fig, ax = render.pyplot().subplots()
    ax.plot([0, 1], [1, 0])
    path = render.save_figure(fig, tmp_path / "f.png")
    assert path.with_suffix(".svg").read_text().lstrip().startswith("<?xml")


def test_paper_one_form_scores_and_table():
    paper = papers.Paper("T. 1", ("ACC", "NMI"), {"A": {"c10": (0.5, 0.25)}}, choice={"tau": 1.0})
    assert paper.score("A", "c10", "final.acc") == 0.5 and paper.score("A", "c10", "nmi") == 0.25
    assert paper.score("A", "c10", "ARI") is None and paper.score("B", "c10", "ACC") is None
    assert paper.table("arm").to_dict("records") == [
        {"arm": "A", "c10 ACC": 50.0, "c10 NMI": 25.0, "source": "T. 1"}
    ]


def test_bar_chart_marks_the_paper_and_names_the_statistic(tmp_path, monkeypatch):
    df = pd.DataFrame(
        {
            "arm": ["b", "b", "a", "a"],
            "dataset": ["c10"] * 4,
            "config.seed": [0, 1, 0, 1],
            "final.acc": [0.4, 0.6, 0.2, 0.2],
        }
    )
    paper = papers.Paper("T", ("ACC",), {"a": {"c10": (0.3,)}}, choice={"arm": "b"})
    seen, save = {}, render.save_figure
    monkeypatch.setattr(
        render, "save_figure", lambda fig, path: seen.setdefault("ax", fig.axes[0]) and save(fig, path)
    )
    papers.bar_chart(df, "arm", "final.acc", tmp_path / "b.png", order=["a", "b"], paper=paper)
    ax = seen["ax"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert [round(p.get_height(), 6) for p in ax.patches if p.get_width() < 0.85][:2] == [0.2, 0.5]
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["paper", "paper's setting", "ACC"]
    assert np.asarray(handles[0].get_ydata(), float).tolist() == [0.3, 0.3]  # a's paper value, on bar a
    assert ax.get_legend().get_title().get_text() == "mean ± std over 2 seeds"
    assert (tmp_path / "b.svg").exists()


def test_arm_order_comes_from_the_stored_spec(tmp_path):
    (tmp_path / "spec.yaml").write_text("ablation: {M2: {}, M1: {}, M3: {}}\n")
    assert results.arm_order([tmp_path / "missing", tmp_path]) == ["M2", "M1", "M3"]
    assert results.arm_order(tmp_path / "missing") == []


def test_the_stored_spec_reads_typed_and_tolerates_old_or_partial_ones(tmp_path):
    from tuneclust.spec import SpecError

    assert results.read_stored_spec(tmp_path) is None
    assert results.spec_or_defaults(tmp_path).objective.metric == "acc"
    (tmp_path / "spec.yaml").write_text(
        "name: s\nmethod: idfd\nbudget: {epochs: 4}\nobjective: {metric: loss}\n"
        "search: {lr: {loguniform: [0.001, 0.1]}, tau: {grid: [0.1, 1.0]}}\n"
    )
    spec = results.read_stored_spec(tmp_path)
    assert (spec.budget.epochs, spec.mode, results.objective(spec), results.objective(spec, "acc")) == (
        4,
        "min",
        ("loss", "min"),
        ("acc", "max"),
    )
    assert spec.search["lr"].kind == "loguniform"
    # an older spec: a key the model no longer has, a section that no longer validates, no budget
    (tmp_path / "spec.yaml").write_text(
        "name: s\nmethod: idfd\nretired_key: 1\nobjective: {metric: acc, x: 1}\n"
    )
    old = results.read_stored_spec(tmp_path)
    assert (old.name, old.budget.epochs, old.mode) == ("s", 0, "max")
    with pytest.raises(SpecError, match="spec.yaml"):
        results.read_stored_spec(tmp_path, validate=True)  # --resume validates in full
    (tmp_path / "spec.yaml").write_text("name: s\nname: t\n")
    with pytest.raises(SpecError, match="duplicate"):
        results.read_stored_spec(tmp_path)  # through yamlsafe: a duplicate key is refused
