"""The grouped runs behind every table and figure: each registered block kind reaches the results
table, Table 6 and the figures; unusable result.json files and copies of run directories are left
out with a warning."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from resdepth import models
from resdepth.analysis import plots
from resdepth.analysis.report import degradation_sentence
from resdepth.analysis.results import summarize
from resdepth.analysis.runs import group_runs, load_runs
from resdepth.cli import plot_cli, results_cli
from resdepth.rundir import write_json

from .conftest import compose


@pytest.fixture(scope="module")
def base_config():
    return compose(["experiment=smoke"])


def fake_run(root: Path, config: dict, block: str, depth: int, seed: int = 0, test: float = 0.2,
             train: float = 0.1, status: str = "done", **extra) -> Path:
    """A run directory as training leaves it: result.json, metrics.csv (3 records),
    responses.json."""
    cfg = json.loads(json.dumps(config))
    cfg["model"].update(block=block, depth=depth)
    cfg["seed"] = seed
    d = root / cfg["data"]["name"] / f"{block}-{depth}" / f"seed{seed}-x"
    d.mkdir(parents=True)
    write_json(d / "result.json", {
        "status": status, "dataset": cfg["data"]["name"], "block": block, "depth": depth,
        "shortcut": "A", "seed": seed, "params": 1000 * depth, "steps": 40, "max_steps": 40,
        "wall_time_s": 5.0, "device": "cpu", "precision": "32-true", "versions": {"torch": "2"},
        "final_test_error": test, "final_train_error": train, "config": cfg, **extra})
    (d / "metrics.csv").write_text(
        "iteration,lr,train_loss,train_error,val_error,test_error,elapsed_s\n"
        "10,0.1,2.0,0.9,nan,0.9,1\n20,0.1,1.0,0.5,nan,0.5,2\n"
        f"40,0.1,0.5,{train},nan,{test},4\n")
    write_json(d / "responses.json", {"layer_std": [1.0 + i / 10 for i in range(depth - 1)]})
    return d


@pytest.fixture
def gated(monkeypatch):
    """A throwaway block kind, registered after plain and residual."""
    monkeypatch.setitem(models.BLOCKS, "gated",
                        type("GatedBlock", (models.PlainBlock,), {"paper_name": "GatedNet"}))
    return "gated"


def legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_a_third_block_kind_reaches_every_table_and_figure(tmp_path, base_config, gated, capsys):
    for block, test in (("plain", 0.30), ("residual", 0.20), (gated, 0.25)):
        for depth in (8, 14):
            fake_run(tmp_path, base_config, block, depth, test=test + depth / 1000)
    assert results_cli([str(tmp_path)]) == 0
    nets = [r["net"] for r in summarize(tmp_path)]
    assert nets == ["plain-8", "plain-14", "ResNet-8", "ResNet-14", "GatedNet-8", "GatedNet-14"]
    assert ("| GatedNet-14 |" in (tmp_path / "results.md").read_text()
            and "GatedNet-14" in capsys.readouterr().out)

    assert plot_cli([str(tmp_path)]) == 0
    table = (tmp_path / "figures" / "table6.md").read_text()
    assert "| GatedNet test |" in table and "| GatedNet train |" in table
    with open(tmp_path / "figures" / "table6.csv") as f:
        rows = {int(r["depth"]): r for r in csv.DictReader(f)}
    assert float(rows[14]["gatednet_test_error_pct_mean"]) == pytest.approx(100 * (0.25 + 0.014))
    assert rows[8]["gatednet_seeds"] == "1" and rows[8]["status"] == "done"

    groups = group_runs(load_runs(tmp_path))
    fig6 = plots.curves_figure(groups)
    assert [ax.get_title() for ax in fig6.axes] == ["plain nets", "residual nets (ResNet)",
                                                    "gated nets (GatedNet)"]
    assert legend(fig6.axes[2]) == ["GatedNet-8", "GatedNet-14"]
    assert legend(plots.depth_figure(groups).axes[1]) == ["plain", "ResNet", "GatedNet"]
    fig7 = plots.responses_figure(groups)
    assert "GatedNet-14" in [t.get_text() for t in fig7.legends[0].get_texts()]
    assert "dash-dot: GatedNet" in fig7.axes[0].get_title()


BAD = {
    "null": "null",
    "a list": "[1, 2]",
    "no dataset": json.dumps({"status": "done", "config": {}}),
    "not JSON": "{",
    "depth a string": None,  # built from a good record below
    "error a string": None,
    "versions a list": None,
    "config without optim": None,
}


def bad_record(kind: str, good: dict) -> str:
    if BAD[kind] is not None:
        return BAD[kind]
    r = json.loads(json.dumps(good))
    if kind == "depth a string":
        r["depth"] = "14"
    elif kind == "error a string":
        r["final_test_error"] = "0.2"
    elif kind == "versions a list":
        r["versions"] = ["torch"]
    else:
        del r["config"]["optim"]
    return json.dumps(r)


@pytest.mark.parametrize("kind", list(BAD))
def test_an_unusable_result_json_is_named_and_left_out(tmp_path, base_config, capsys, kind):
    good = fake_run(tmp_path, base_config, "plain", 8)
    bad = fake_run(tmp_path, base_config, "residual", 14)
    (bad / "result.json").write_text(bad_record(kind,
                                                json.loads((good / "result.json").read_text())))

    assert results_cli([str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert ("resdepth: warning: " in out.err and str(bad / "result.json") in out.err
            and "Traceback" not in out.err)
    assert [r["net"] for r in summarize(tmp_path)] == ["plain-8"]
    capsys.readouterr()
    assert plot_cli([str(tmp_path)]) == 0
    assert str(bad / "result.json") in capsys.readouterr().err
    assert "| 8 |" in (tmp_path / "figures" / "table6.md").read_text()


def test_only_unusable_files_is_an_error_that_writes_nothing(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "result.json").write_text("null")
    assert results_cli([str(tmp_path)]) == 2
    assert plot_cli([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no usable runs under" in err and str(tmp_path / "a" / "result.json") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_copy_of_a_run_directory_is_one_seed_not_two(tmp_path, base_config, capsys):
    run = fake_run(tmp_path, base_config, "plain", 8, test=0.3)
    fake_run(tmp_path, base_config, "plain", 8, seed=1, test=0.4)
    copy = tmp_path / "backup" / "seed0-x"
    shutil.copytree(run, copy)
    row, = summarize(tmp_path)
    assert row["seeds"] == 2 and row["test_error_mean"] == pytest.approx(0.35)
    err = capsys.readouterr().err
    assert str(copy / "result.json") in err and "counted once" in err
    assert plot_cli([str(tmp_path)]) == 0
    with open(tmp_path / "figures" / "table6.csv") as f:
        assert next(csv.DictReader(f))["plain_seeds"] == "2"
    assert legend(plots.curves_figure(group_runs(load_runs(tmp_path))).axes[0]) == [
        "plain-8 (mean of 2 seeds)"]


def test_damaged_responses_and_metrics_are_left_out_not_fatal(tmp_path, base_config, capsys):
    fake_run(tmp_path, base_config, "plain", 8)
    other = fake_run(tmp_path, base_config, "residual", 8)
    write_json(other / "responses.json", {"layer_std": [1.0, "x"]})
    (other / "metrics.csv").write_text("step,loss\n1,2\n")
    assert plot_cli([str(tmp_path)]) == 0
    assert str(other / "responses.json") in capsys.readouterr().err
    groups = group_runs(load_runs(tmp_path))
    assert [t.get_text()
            for t in plots.responses_figure(groups).legends[0].get_texts()] == ["plain-8"]
    assert "ResNet-8 (done, no responses.json)" in (tmp_path / "figures" / "report.md").read_text()


def test_hostile_files_in_a_root_are_named_and_left_out_never_hang(tmp_path, base_config, capsys):
    import os
    import signal

    plain = fake_run(tmp_path, base_config, "plain", 8)
    res = fake_run(tmp_path, base_config, "residual", 8)
    lines = (plain / "metrics.csv").read_text().splitlines()
    long_row = lines[1].split(",")[0] + "," + "9" * 200_000  # a field longer than csv allows
    (plain / "metrics.csv").write_bytes(
        "\n".join([lines[0], lines[1], long_row, *lines[2:]]).encode() + b"\n\xff,\xfe\n")
    (res / "metrics.csv").unlink()
    os.mkfifo(res / "metrics.csv")  # opening it would wait for a writer forever
    (res / "responses.json").unlink()
    (res / "responses.json").symlink_to("/dev/zero")  # reading it would never end
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "result.json").symlink_to("/dev/urandom")
    for record in ("sweeps.jsonl", "multirun.yaml"):  # what report.md's sweep command comes from
        os.mkfifo(tmp_path / record)

    def hung(*_):
        raise TimeoutError("reading the root hangs")

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(300)  # a hang fails the test instead of stopping the suite
    try:
        assert results_cli([str(tmp_path)]) == 0 and plot_cli([str(tmp_path)]) == 0
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err
    assert f"{tmp_path / 'x' / 'result.json'} is not a regular file" in err
    assert f"{res / 'metrics.csv'} is not a regular file" in err
    assert f"{plain / 'metrics.csv'}: row 3 cannot be read" in err
    assert f"{plain / 'metrics.csv'}: byte " in err and "is not UTF-8" in err
    assert f"{res / 'responses.json'} left out of Figure 7" in err
    assert "- sweep command: `unknown`" in (tmp_path / "figures" / "report.md").read_text()


# ---------------------------------------------------------------- verdicts say what they rest on


def _row(depth, plain, res, n=1, std=0.0, steps=64000, dataset="cifar10"):
    return {"depth": depth, "variant": "", "plain_train": (plain, std, n),
            "resnet_train": (res, std, n), "max_steps": steps, "dataset": dataset}


def test_with_one_seed_or_a_short_schedule_the_verdict_is_indicative_and_says_why():
    one = degradation_sentence([_row(20, 1.0, 0.5), _row(56, 4.0, 0.1)])
    assert one.startswith(
        "Degradation reproduced, indicative only (one seed per net gives no seed spread")
    assert ("Basis: final training error, 1 seed per net, 64000 iterations (the paper's schedule), "
            "cifar10." in one)
    short = degradation_sentence([_row(20, 1.0, 0.5, 3, 0.1, 4000),
                                  _row(56, 4.0, 0.1, 3, 0.1, 4000)])
    assert short.startswith(
        "Degradation reproduced, indicative only (the schedule is shorter than the paper's)")
    assert "3 seeds per net, 4000 of the paper's 64000 iterations" in short


def test_with_several_seeds_a_difference_counts_only_beyond_the_spread():
    clear = degradation_sentence([_row(20, 1.0, 0.5, 3, 0.2), _row(56, 4.0, 0.1, 3, 0.2)])
    assert clear.startswith("Degradation reproduced. Basis: final training error, 3 seeds per net")
    assert "a difference counts only where it exceeds the sum of the two sample stds" in clear
    assert "plain-56 4.00 ± 0.20% > plain-20 1.00 ± 0.20%: yes" in clear
    # 4.0 - 1.0 = 3.0 is less than 1.6 + 1.6: not resolved, though the means are ordered as in the
    # paper
    noisy = degradation_sentence([_row(20, 1.0, 0.5, 3, 1.6), _row(56, 4.0, 0.1, 3, 1.6)])
    assert noisy.startswith("Degradation not resolved.")
    assert "plain-56 4.00 ± 1.60% > plain-20 1.00 ± 1.60%: within the seed spread" in noisy


def test_on_synthetic_data_the_verdict_is_a_software_check():
    text = degradation_sentence([_row(8, 1.0, 0.5, dataset="synthetic", steps=40),
                                 _row(14, 4.0, 0.1, dataset="synthetic", steps=40)])
    assert text.startswith("Degradation not judged: synthetic data, so this is a software check")
    assert "says nothing about the paper" in text and "reproduced" not in text


# ---------------------------------------------------------- warm-up and Figure 7 say what they show


def test_the_end_of_a_warm_up_is_marked_in_figure_6_and_listed(tmp_path, base_config):
    fake_run(tmp_path, base_config, "residual", 8, warmup=True, warmup_ended_at=20,
             warmup_ended_by="training error", finished="2026-01-01T00:00:00")
    running = fake_run(tmp_path, base_config, "residual", 14, status="running", warmup=True)
    (running / "metrics.csv").write_text(
        "iteration,lr,train_loss,train_error,val_error,test_error,elapsed_s\n"
        "10,0.01,2.0,0.9,nan,0.9,1\n20,0.01,1.5,0.8,nan,0.8,2\n"
        "25,0.1,1.0,0.5,nan,0.5,3\n")  # before the first milestone (30)
    fake_run(tmp_path, base_config, "plain", 8)
    assert plot_cli([str(tmp_path)]) == 0
    residual = plots.curves_figure(group_runs(load_runs(tmp_path))).axes[1]
    marks = [line for line in residual.lines if line.get_marker() == "v" and len(line.get_xdata())]
    assert sorted(line.get_xdata()[0] for line in marks) == pytest.approx([20 / 1e4, 25 / 1e4])
    # on the training error curve at iteration 20 (50%), or on the top edge where that is off scale
    assert marks[0].get_ydata()[0] == pytest.approx(min(50.0, residual.get_ylim()[1]))
    assert "end of warm-up (at or before the marker)" in legend(residual)
    report = (tmp_path / "figures" / "report.md").read_text()
    assert "- warm-up: ResNet-8 seed 0: ended at iteration 20 (training error below 80%)" in report
    assert ("- warm-up: ResNet-14 seed 0: ended by iteration 25, the first record at the lr after "
            "the warm-up" in report)
    assert ("Warm-up:\n- ResNet-8 seed 0: ended at iteration 20"
            in (tmp_path / "figures" / "table6.md").read_text())


def test_figure_7_says_the_std_is_pooled_over_the_test_set(tmp_path, base_config):
    fake_run(tmp_path, base_config, "plain", 8)
    fig = plots.responses_figure(group_runs(load_runs(tmp_path)))
    assert "pooled over all its elements (images, channels, positions)" in fig.get_supxlabel()
    assert "on the test set" in fig.axes[0].get_title()


# ---------------------------------------------------------------- CSV files say their unit


def test_csv_columns_name_their_unit_and_hold_numbers_only(tmp_path, base_config, capsys):
    fake_run(tmp_path, base_config, "plain", 8, test=0.3)
    fake_run(tmp_path, base_config, "plain", 8, seed=1, test=0.4)
    fake_run(tmp_path, base_config, "residual", 8, test=0.2)
    fake_run(tmp_path, base_config, "residual", 14, status="running")
    assert results_cli([str(tmp_path)]) == 0 and plot_cli([str(tmp_path)]) == 0
    with open(tmp_path / "results.csv", newline="") as f:
        rows = {r["net"]: r for r in csv.DictReader(f)}
    assert float(rows["plain-8"]["test_error_fraction_mean"]) == pytest.approx(0.35)
    assert float(rows["plain-8"]["test_error_fraction_std"]) == pytest.approx(0.0707107)
    assert rows["ResNet-8"]["test_error_fraction_std"] == ""  # one seed: no std, not 0
    # no finished seed: no number, not nan
    assert rows["ResNet-14"]["test_error_fraction_mean"] == ""
    with open(tmp_path / "figures" / "table6.csv", newline="") as f:
        table = list(csv.DictReader(f))
    numeric = [c for c in table[0] if "_pct" in c or c.endswith(("_seeds", "params"))]
    for row in table:
        for column in numeric:
            assert row[column] == "" or float(row[column]) == float(row[column]), (column,
                                                                                   row[column])
    depth8 = next(r for r in table if r["depth"] == "8")
    assert float(depth8["plain_test_error_pct_mean"]) == pytest.approx(35.0)
    assert depth8["plain_test_error_pct_std"] != "" and depth8["resnet_test_error_pct_std"] == ""
