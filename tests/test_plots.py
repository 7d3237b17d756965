"""resdepth plot: the figures, tables and report of a small real sweep (smoke preset, synthetic
data, 5 runs)."""

import csv
import io
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from resdepth.analysis import plots
from resdepth.analysis.report import (degradation_sentence, sweep_command, sweep_commands,
                                      table6_rows, table_csv, table_markdown, write_outputs)
from resdepth.analysis.runs import Run, find_results, group_runs, load_runs, paper_reference
from resdepth.cli import plot_cli
from resdepth.rundir import read_json, truncate_metrics, write_json
from resdepth.training.train import train

from .conftest import compose

# (block, depth, seed): plain-14 has two seeds, so its curve is a mean with a band.
NETS = [("plain", 8, 0), ("plain", 14, 0), ("plain", 14, 1), ("residual", 8, 0),
        ("residual", 14, 0)]
OUTPUTS = ["fig6_curves.png", "fig6_curves.pdf", "depth_vs_error.png", "depth_vs_error.pdf",
           "fig7_responses.png", "fig7_responses.pdf", "table6.md", "table6.csv", "report.md"]
GRADIENT_OUTPUTS = [f"{name}.{ext}" for name in ("gradients_by_layer", "weight_gradients_by_layer",
                                                 "gradients_first_layer") for ext in ("png", "pdf")]


def outputs(root: Path) -> list[str]:
    """What `resdepth plot` writes: the gradient figures too where runs wrote gradients.csv."""
    return OUTPUTS + (GRADIENT_OUTPUTS if any(root.rglob("gradients.csv")) else [])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    for block, depth, seed in NETS:
        train(compose(["experiment=smoke", f"results_root={root}", f"model.block={block}",
                       f"model.depth={depth}", f"seed={seed}", "trainer.progress=false"]))
    return root


@pytest.fixture(scope="module")
def plotted(sweep):
    assert plot_cli([str(sweep)]) == 0
    return sweep


def copy_of(root: Path, dest: Path) -> Path:
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns("*.ckpt", "model.pt", "figures"))
    return dest


def run_dir(root: Path, block: str, depth: int, seed: int = 0) -> Path:
    return next((root / "synthetic" / f"{block}-{depth}").glob(f"seed{seed}-*"))


def finals(root: Path, block: str, depth: int, key: str) -> list[float]:
    """The final errors (%) of the done runs of one net, straight from result.json."""
    return [100 * r[key] for _, r in find_results(root)
            if r["block"] == block and r["depth"] == depth and r["status"] == "done"]


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def figures(root: Path):
    return group_runs(load_runs(root))


# these share a module fixture that trains 5 small nets (about 15 s on 2 cores)
slow = pytest.mark.slow


@slow
def test_cli_writes_png_pdf_tables_and_report(plotted):
    out = plotted / "figures"
    assert sorted(p.name for p in out.iterdir()) == sorted(outputs(plotted))
    for name in outputs(plotted):
        data = (out / name).read_bytes()
        if name.endswith(".png"):
            assert data.startswith(b"\x89PNG")
        elif name.endswith(".pdf"):
            assert data.startswith(b"%PDF")


@slow
def test_rerun_gives_identical_bytes(plotted):
    before = {p.name: p.read_bytes() for p in (plotted / "figures").iterdir()}
    assert plot_cli([str(plotted)]) == 0
    after = {p.name: p.read_bytes() for p in (plotted / "figures").iterdir()}
    assert before == after


@slow
def test_fig6_panels_styles_legend_and_mean_curve(sweep):
    fig = plots.curves_figure(figures(sweep))
    plain, residual = fig.axes
    assert [plain.get_title(), residual.get_title()] == ["plain nets", "residual nets (ResNet)"]
    assert plain.get_xlabel() == residual.get_xlabel() == "iterations"  # 40 of them
    assert plain.get_ylabel() == "error (%)"
    for ax in (plain, residual):
        assert len(ax.lines) == 4  # two nets, a dashed training and a bold solid test line each
        assert sorted(line.get_linestyle() for line in ax.lines) == ["-", "-", "--", "--"]
        assert all(line.get_linewidth() >= 2 for line in ax.lines if line.get_linestyle() == "-")
        bottom, top = ax.get_ylim()
        assert bottom == 0 and top <= 100
    assert legend_texts(plain) == ["plain-8", "plain-14 (mean of 2 seeds)"]
    assert legend_texts(residual) == ["ResNet-8", "ResNet-14"]
    # min-max bands only for 2 seeds
    assert len(plain.collections) == 2 and len(residual.collections) == 0
    colour = lambda ax, label: next(l.get_color() for l in ax.lines if l.get_label() == label)
    assert colour(plain, "plain-14 (mean of 2 seeds)") == colour(residual, "ResNet-14")
    test_line = next(l for l in plain.lines if l.get_label().startswith("plain-14"))
    assert test_line.get_xdata()[-1] == pytest.approx(40 / 1e4)
    assert test_line.get_ydata()[-1] == pytest.approx(statistics.fmean(finals(sweep, "plain", 14,
                                                                              "final_test_error")))


@slow
def test_depth_figure_means_and_stds_come_from_result_json(sweep):
    fig = plots.depth_figure(figures(sweep))
    ax_train, ax_test = fig.axes
    assert "training" in ax_train.get_title() and "test" in ax_test.get_title()
    for ax, key in ((ax_train, "final_train_error"), (ax_test, "final_test_error")):
        assert legend_texts(ax) == ["plain", "ResNet"]  # synthetic data: no paper markers
        for bars, block in zip(ax.containers, ("plain", "residual")):
            line = bars.lines[0]
            assert list(line.get_xdata()) == [8, 14]
            assert list(line.get_ydata()) == pytest.approx(
                [statistics.fmean(finals(sweep, block, d, key)) for d in (8, 14)])
        plain14 = finals(sweep, "plain", 14, key)
        segments = ax.containers[0].lines[2][0].get_segments()  # the error bars of plain: 8, 14
        assert segments[1][1][1] - segments[1][0][1] == pytest.approx(2 * statistics.stdev(plain14))


@slow
def test_fig7_one_line_per_net_in_layer_order_and_sorted(sweep):
    fig = plots.responses_figure(figures(sweep))
    top, bottom = fig.axes
    assert len(top.lines) == len(bottom.lines) == 4
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "plain-8", "plain-14 (mean of 2 seeds)", "ResNet-8", "ResNet-14"]
    stds = [read_json(run_dir(sweep, "plain", 14, s) / "responses.json")["layer_std"]
            for s in (0, 1)]
    line = next(l for l in top.lines if l.get_label().startswith("plain-14"))
    assert len(line.get_ydata()) == 13  # 3x3 layers of a depth-14 net
    assert list(line.get_ydata()) == pytest.approx(list(np.mean(stds, axis=0)))
    sorted_line = next(l for l in bottom.lines if l.get_label().startswith("plain-14"))
    assert list(sorted_line.get_ydata()) == pytest.approx(sorted(np.mean(stds, axis=0),
                                                                 reverse=True))


@slow
def test_table_numbers_equal_result_json(plotted):
    with open(plotted / "figures" / "table6.csv") as f:
        rows = {int(r["depth"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == [8, 14]
    for depth, row in rows.items():
        for block, col in (("residual", "resnet"), ("plain", "plain")):
            test = finals(plotted, block, depth, "final_test_error")
            train_ = finals(plotted, block, depth, "final_train_error")
            assert float(row[f"{col}_test_error_pct_mean"]) == pytest.approx(
                statistics.fmean(test), abs=1e-4)
            assert float(row[f"{col}_train_error_pct_mean"]) == pytest.approx(
                statistics.fmean(train_), abs=1e-4)
            assert int(row[f"{col}_seeds"]) == len(test)
        assert row["paper_reference"] == "false" and row["paper_resnet_test_error_pct"] == ""
        assert row["status"] == "done"
    assert float(rows[14]["plain_test_error_pct_std"]) == pytest.approx(
        statistics.stdev(finals(plotted, "plain", 14, "final_test_error")), abs=1e-4)
    params = read_json(run_dir(plotted, "plain", 14) / "result.json")["params"]
    assert int(rows[14]["params"]) == params
    md = (plotted / "figures" / "table6.md").read_text()
    assert f"{statistics.fmean(finals(plotted, 'plain', 14, 'final_test_error')):.2f} ± " in md
    assert "paper ResNet test" not in md  # synthetic data: the paper's columns are left out
    assert "Degradation " in md and "plain-14" in md


@slow
def test_report_states_command_data_hardware_versions_compute_and_statuses(plotted, tmp_path):
    report = (plotted / "figures" / "report.md").read_text()
    results = [r for _, r in find_results(plotted)]
    for embedded in ("](fig6_curves.png)", "](depth_vs_error.png)", "](fig7_responses.png)"):
        assert embedded in report
    assert "sweep command: `unknown`" in report
    assert "dataset: synthetic" in report and "40 iterations" in report
    assert results[0]["device"] in report and results[0]["versions"]["torch"] in report
    total = sum(r["wall_time_s"] for r in results)
    assert f"({total:.0f} s, the sum of wall_time_s over 5 runs)" in report
    assert "runs by status: 5 done" in report
    assert "| depth |" in report and "Degradation " in report

    root = copy_of(plotted, tmp_path / "hydra")
    (root / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - experiment=smoke\n"
                                        "    - seed=0,1\n")
    assert sweep_command(root) == "resdepth sweep experiment=smoke seed=0,1"
    write_json(root / "sweep.json", {"command": "resdepth sweep experiment=smoke model.depth=8,14"})
    assert sweep_command(root) == "resdepth sweep experiment=smoke model.depth=8,14"
    assert sweep_commands(root) == ["resdepth sweep experiment=smoke model.depth=8,14"]
    # every sweep into the root is listed, first use first, each once; a torn line is skipped
    (root / "sweeps.jsonl").write_text('{"command": "resdepth sweep seed=0"}\n'
                                       '{"command": "resdepth sweep seed=1"}\n'
                                       '{"command": "resdepth sweep seed=0"}\n{"comm')
    assert sweep_commands(root) == ["resdepth sweep seed=0", "resdepth sweep seed=1"]
    write_outputs(root)
    report = (root / "figures" / "report.md").read_text()
    assert ("- sweep command 1 of 2: `resdepth sweep seed=0`\n"
            "- sweep command 2 of 2: `resdepth sweep seed=1`" in report)
    assert "resumed with another device" not in report
    # no GPU trained these runs, so torch's CUDA build is not named (it would mean nothing)
    assert "cuda" not in report.split("- software:")[1].splitlines()[0]
    # a run resumed on another machine: both are named, and the run is listed
    plain8 = run_dir(root, "plain", 8)
    record = read_json(plain8 / "result.json")
    here = {"device": record["device"], "precision": record["precision"], "threads": 1}
    write_json(plain8 / "result.json", {**record, "segments": [
        {"from": 0, "device": "Other GPU", "precision": "bf16-mixed"}, {"from": 20, **here}]})
    write_outputs(root)
    report = (root / "figures" / "report.md").read_text()
    assert ("Other GPU in bf16-mixed with an unrecorded number of CPU threads (host " in report
            and f"{here['device']} in {here['precision']} with 1 CPU thread (host " in report)
    assert ("- resumed with another device, precision or CPU thread count: plain-8 seed 0 "
            "(from it 0: Other GPU in bf16-mixed with an unrecorded number of CPU threads; "
            f"from it 20: {here['device']} in {here['precision']} with 1 CPU thread)") in report


@slow
def test_partial_sweep_shows_running_and_diverged_runs(sweep, tmp_path):
    root = copy_of(sweep, tmp_path / "partial")
    running, diverged = run_dir(root, "plain", 8), run_dir(root, "residual", 14)
    write_json(running / "result.json", {**read_json(running / "result.json"), "status": "running",
                                         "steps": 20})
    truncate_metrics(running / "metrics.csv", 20)
    write_json(diverged / "result.json", {**read_json(diverged / "result.json"),
                                          "status": "diverged", "diverged_at": 30})
    truncate_metrics(diverged / "metrics.csv", 30)
    for d in (running, diverged):
        (d / "responses.json").unlink()
    assert plot_cli([str(root)]) == 0

    groups = figures(root)
    plain, residual = plots.curves_figure(groups).axes
    assert "plain-8 (running, it 20)" in legend_texts(plain)
    assert any(t.startswith("ResNet-14 (diverged at 30") for t in legend_texts(residual))
    running_line = next(l for l in plain.lines if l.get_label().startswith("plain-8"))
    assert running_line.get_xdata()[-1] == pytest.approx(20 / 1e4)
    assert len(plots.responses_figure(groups).axes[0].lines) == 2
    assert "not in the means" in plots.depth_figure(groups).get_supxlabel()

    with open(root / "figures" / "table6.csv") as f:
        rows = {int(r["depth"]): r for r in csv.DictReader(f)}
    assert rows[8]["status"] == "plain seed 0: running, it 20" and rows[8]["plain_seeds"] == "0"
    assert rows[14]["status"] == "ResNet seed 0: diverged at 30" and rows[14]["resnet_seeds"] == "0"
    report = (root / "figures" / "report.md").read_text()
    assert "1 diverged, 3 done, 1 running" in report
    assert ("Left out of Figure 7 (no responses.json): plain-8 (running, it 20); "
            "ResNet-14 (diverged at 30)" in report)


@slow
def test_protocols_and_datasets_are_never_averaged_together(sweep, tmp_path):
    root = copy_of(sweep, tmp_path / "mixed")
    other = run_dir(root, "plain", 14, seed=1)  # relabel one run as a 80-iteration protocol
    r = read_json(other / "result.json")
    r["config"]["trainer"]["max_steps"], r["max_steps"] = 80, 80
    write_json(other / "result.json", r)
    labels = legend_texts(plots.curves_figure(figures(root)).axes[0])
    assert "plain-14 (40 it)" in labels and "plain-14 (80 it)" in labels
    # same length, another lr: named by the setting
    r["config"]["trainer"]["max_steps"], r["max_steps"] = 40, 40
    r["config"]["optim"]["lr"] = 0.05
    write_json(other / "result.json", r)
    labels = legend_texts(plots.curves_figure(figures(root)).axes[0])
    assert "plain-14 (optim.lr=0.1)" in labels and "plain-14 (optim.lr=0.05)" in labels

    moved = run_dir(root, "residual", 8)
    write_json(moved / "result.json", {**read_json(moved / "result.json"), "dataset": "cifar100"})
    assert plot_cli([str(root)]) == 0
    assert sorted(p.name for p in (root / "figures").iterdir()) == ["cifar100", "synthetic"]
    assert sorted(p.name for p in (root / "figures" / "cifar100").iterdir()) == sorted(
        outputs(moved))


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_no_runs_is_an_error_and_creates_nothing(tmp_path, capsys, make):
    root = tmp_path / "runs"
    if make == "empty":
        root.mkdir()
    assert plot_cli([str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"resdepth: error: no runs found under {root} (") and err.count("\n") == 1
    assert (sorted(root.iterdir()) == []) if make == "empty" else not root.exists()


# ----------------------------------------------------------- rules on composed configs, no training


def _group(overrides, depth, **result):
    cfg = compose(["model.block=residual", f"model.depth={depth}", *overrides])
    r = {"config": cfg, "dataset": cfg["data"]["name"], "block": "residual", "depth": depth,
         "shortcut": "A", "seed": 0, "status": "done", "max_steps": cfg["trainer"]["max_steps"],
         **result}
    return group_runs([Run(Path("."), r, [], None)])


@pytest.mark.parametrize("overrides,applies", [
    (["experiment=paper"], True), (["experiment=paper", "data=cifar10_jpeg"], True),
    (["experiment=paper", "data=cifar100"], False), (["experiment=smoke"], False),
    (["experiment=paper", "trainer.max_steps=32000"], False),
    (["experiment=paper", "optim.lr=0.05"], False),
])
def test_paper_reference_only_for_cifar10_on_the_paper_protocol(overrides, applies):
    groups = _group(overrides, 20, final_test_error=0.09, final_train_error=0.01, params=269722)
    assert paper_reference(groups[0]) is applies
    row = table6_rows(groups)[0]
    assert row["paper_test"] == (8.75 if applies else None)
    if applies:
        assert row["diff"] == pytest.approx(9.0 - 8.75)
        assert row["paper_params"] == "0.27M"
    labels = [t.get_text() for t in plots.depth_figure(groups).axes[1].get_legend().get_texts()]
    assert any(t.startswith("paper (ResNet, Table 6") for t in labels) is applies


def test_resnet110_is_compared_with_the_papers_mean_and_seeds_show_their_best():
    cfg = compose(["experiment=paper", "model.depth=110"])
    runs = [Run(Path("."), {"config": cfg, "dataset": "cifar10", "block": "residual", "depth": 110,
                            "shortcut": "A", "seed": seed, "status": "done", "max_steps": 64000,
                            "final_test_error": err, "final_train_error": 0.001,
                            "params": 1727962}, [], None)
            for seed, err in enumerate((0.070, 0.064, 0.067))]
    groups = group_runs(runs)
    row = table6_rows(groups)[0]
    # ours is a mean over seeds, so it is set against the paper's mean of 5 runs (6.61), not its
    # best (6.43)
    assert row["paper_test"] == 6.61 and row["diff"] == pytest.approx(6.7 - 6.61)
    md = table_markdown([row])
    assert "| 6.70 ± 0.30 (n=3; best 6.40) | 6.61 ± 0.16 (mean of 5; best 6.43) | +0.09 |" in md
    best = next(csv.DictReader(io.StringIO(table_csv([row]))))["resnet_test_error_pct_best"]
    assert float(best) == pytest.approx(6.4)


def _row(depth, plain_train, res_train):
    return {"depth": depth, "variant": "", "plain_train": (plain_train, 0.0, 1),
            "resnet_train": (res_train, 0.0, 1)}


def test_degradation_sentence_says_which_comparisons_held():
    yes = degradation_sentence([_row(20, 1.0, 0.5), _row(32, 1.5, 0.3), _row(56, 4.0, 0.1)])
    assert yes.startswith("Degradation reproduced")
    assert ("plain-56 4.00% > plain-20 1.00%: yes" in yes
            and "every step of depth 20/32/56: yes" in yes)
    assert ("ResNet-56 0.10% <= ResNet-20 0.50%: yes" in yes
            and "below plain at 3 of 3 depths" in yes)
    no = degradation_sentence([_row(20, 3.0, 0.5), _row(56, 1.0, 2.0)])
    assert (no.startswith("Degradation not reproduced")
            and "plain-56 1.00% > plain-20 3.00%: no" in no)
    assert degradation_sentence([_row(20, 1.0, 0.5)]).startswith("Degradation not judged")


# ----------------------------------------------- Figure 6 and 7 axes at any budget, no training


def budget_runs(root: Path, overrides: list[str], iterations: list[int], first: float = 0.9,
                depth: int = 8):
    """plain and ResNet directories of DEPTH as training leaves them (result.json, metrics.csv,
    responses.json), recorded at ITERATIONS: error FIRST at the first record, falling to 10%."""
    cfg = compose(overrides)
    errors = np.linspace(first, 0.1, len(iterations))
    rows = "".join(f"{i},0.1,1.0,{e},nan,{e},1\n" for i, e in zip(iterations, errors))
    for block in ("plain", "residual"):
        d = root / cfg["data"]["name"] / f"{block}-{depth}" / "seed0-x"
        d.mkdir(parents=True)
        write_json(d / "result.json", {
            "config": {**cfg, "model": {**cfg["model"], "block": block, "depth": depth}},
            "dataset": cfg["data"]["name"], "block": block, "depth": depth, "shortcut": "A",
            "seed": 0, "status": "done", "max_steps": iterations[-1], "steps": iterations[-1],
            "final_train_error": errors[-1], "final_test_error": errors[-1]})
        (d / "metrics.csv").write_text(
            "iteration,lr,train_loss,train_error,val_error,test_error,elapsed_s\n" + rows)
        write_json(d / "responses.json", {"layer_std": [1.0 + i / 10 for i in range(depth - 1)]})
    assert cfg["trainer"]["max_steps"] == iterations[-1]
    return group_runs(load_runs(root))


def tick_labels(axis) -> list[str]:
    """The labels of the major ticks inside the axis' limits, as drawn."""
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * (hi - lo)
    ticks = [t for t in axis.get_majorticklocs() if lo - eps <= t <= hi + eps]
    return axis.get_major_formatter().format_ticks(ticks)


@pytest.mark.parametrize("overrides,iterations,xlabel,ticks", [
    (["experiment=smoke"], list(range(10, 41, 10)), "iterations", ["0", "10", "20", "30", "40"]),
    (["experiment=paper"], list(range(1000, 64001, 1000)), "iter. (1e4)",
     ["0", "1", "2", "3", "4", "5", "6"]),
])
def test_fig6_counts_iterations_plainly_below_10k_and_in_1e4_from_there(tmp_path, overrides,
                                                                       iterations, xlabel, ticks):
    for ax in plots.curves_figure(budget_runs(tmp_path, overrides, iterations)).axes:
        assert ax.get_xlabel() == xlabel
        assert tick_labels(ax.xaxis) == ticks
        assert ax.get_xlim() == pytest.approx((0, iterations[-1] / 1e4))


@pytest.mark.parametrize("first,top", [(0.9, 95), (0.15, 20)])
def test_fig6_y_limits_hold_every_recorded_point(tmp_path, first, top):
    """The usual top is 1.5 x the final 10% + 5, to a multiple of 5: 20%. An early point at 90%
    raises it (to 95%, a margin above); with every point under it (the first at 15%), it stays."""
    groups = budget_runs(tmp_path, ["experiment=smoke"], list(range(10, 41, 10)), first=first)
    for ax in plots.curves_figure(groups).axes:
        bottom, upper = ax.get_ylim()
        assert (bottom, upper) == (0, top)
        ys = np.concatenate([line.get_ydata() for line in ax.lines if len(line.get_ydata())])
        assert ys.max() == pytest.approx(100 * first) and bottom <= ys.min() and ys.max() < upper


def test_fig6_y_limits_hold_every_seed_of_a_band_and_stop_at_100(tmp_path):
    """The top is set by the highest seed of a mean, not by the mean; never above 100%."""
    budget_runs(tmp_path, ["experiment=smoke"], list(range(10, 41, 10)), first=0.5)
    seed0 = next((tmp_path / "synthetic" / "plain-8").glob("seed0-*"))
    other = copy_of(seed0, seed0.with_name("seed1-x"))
    write_json(other / "result.json", {**read_json(seed0 / "result.json"), "seed": 1})
    (other / "metrics.csv").write_text(
        "iteration,lr,train_loss,train_error,val_error,test_error,elapsed_s\n"
        "10,0.1,1,1.0,nan,0.99,1\n20,0.1,1,0.5,nan,0.5,1\n30,0.1,1,0.3,nan,0.3,1\n"
        "40,0.1,1,0.1,nan,0.1,1\n")
    plain = plots.curves_figure(figures(tmp_path)).axes[0]
    assert legend_texts(plain) == ["plain-8 (mean of 2 seeds)"]
    assert plain.get_ylim() == (0, 100)


def test_fig7_layer_ticks_are_whole_numbers(tmp_path):
    """19 layers (depth 20): matplotlib's default ticks would be 2.5, 5, 7.5, ..."""
    groups = budget_runs(tmp_path, ["experiment=smoke"], list(range(10, 41, 10)), depth=20)
    for ax in plots.responses_figure(groups).axes:
        labels = tick_labels(ax.xaxis)
        assert labels and all(t.lstrip("−-").isdigit() for t in labels), labels
