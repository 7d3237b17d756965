"""`resdepth sweep` and `resdepth results`: the grid end to end in real subprocesses, skip,
resume after SIGKILL, divergence and failure isolation, the results table, and the joblib and
submitit_local launchers."""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resdepth.analysis import results as rec
from resdepth.analysis.runs import find_results
from resdepth.rundir import read_metrics, write_json
from resdepth.training.train import checkpoint_step
from resdepth.cli import results_cli

from .conftest import REPO, compose, run_cli, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    proc = run_cli("sweep", "experiment=smoke", f"results_root={root}")
    return root, proc


def test_smoke_sweep_runs_the_grid(smoke_sweep):
    root, proc = smoke_sweep
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = {(r["block"], r["depth"]): r for _, r in find_results(root)}
    assert set(found) == {("plain", 8), ("plain", 14), ("residual", 8), ("residual", 14)}
    assert all(r["status"] == "done" and r["steps"] == 40 for r in found.values())
    assert "sweep: 4 runs" in proc.stdout and "4 new" in proc.stdout
    # basic launcher: one after the other, so run i starts with i - 1 finished
    for i in range(1, 5):
        assert f"=== run {i}/4 ({i - 1} finished, 0 failed so far" in proc.stdout
    assert "left) ===" in proc.stdout.split("=== run 2/4")[1].splitlines()[0]
    # how long it took is printed, never asserted: a busy machine may take minutes
    assert re.search(rf"sweep finished: 4 done in \d+[hm]\d\d[ms]; "
                     rf"figures and Table 6: resdepth plot {root}\n", proc.stdout)
    table = (root / "results.md").read_text()
    assert all(net in table for net in ("plain-8", "plain-14", "ResNet-8", "ResNet-14"))
    command = f"resdepth sweep experiment=smoke results_root={root}"
    assert json.loads((root / "sweep.json").read_text())["command"] == command
    assert [json.loads(line)["command"]
            for line in (root / "sweeps.jsonl").read_text().splitlines()] == [command]
    assert "\r" not in proc.stdout  # line-based output when not on a terminal


def test_running_it_again_skips_everything(smoke_sweep):
    root, _ = smoke_sweep
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("result.json")}
    proc = run_cli("sweep", "experiment=smoke", f"results_root={root}")
    assert proc.returncode == 0
    assert "4 done" in proc.stdout.splitlines()[0] and proc.stdout.count("done, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in root.rglob("result.json")} == stamps


def test_a_damaged_run_record_is_named_never_dropped_in_silence_or_overwritten(smoke_sweep,
                                                                               tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(smoke_sweep[0], root)
    damaged = next(root.glob("synthetic/plain-8/*/result.json"))
    damaged.write_text("{edited by hand")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.parent != root}
    table = run_cli("results", str(root))
    assert table.returncode == 0 and "plain-14" in table.stdout and "plain-8 " not in table.stdout
    assert table.stderr.strip() == (
        f"resdepth: warning: run left out: {damaged} is not valid JSON (Expecting "
        "property name enclosed in double quotes: line 1 column 2 (char 1)); "
        "fix it or move it away")
    for command in (["sweep", "experiment=smoke"],
                    ["train", "experiment=smoke", "model.depth=8", "model.block=plain"]):
        proc = run_cli(*command, f"results_root={root}")
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            f"resdepth: error: {damaged} is not valid JSON "
            "(Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)); fix it or move it away"], proc.stderr
    # no new file
    assert {p: p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.parent != root} == before


def test_changing_an_axis_from_the_shell(smoke_sweep, tmp_path):
    proc = run_cli("sweep", "experiment=smoke", f"results_root={tmp_path}", "model.depth=8",
                   "seed=0,1", "model.block=plain", "trainer.max_steps=10", "trainer.eval_every=5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [r for _, r in find_results(tmp_path)]
    assert sorted((r["block"], r["depth"], r["seed"]) for r in runs) == [("plain", 8, 0),
                                                                         ("plain", 8, 1)]
    rows = rec.summarize(tmp_path)
    assert len(rows) == 1 and rows[0]["seeds"] == 2  # two seeds of one configuration, aggregated


@pytest.mark.parametrize("axis,message", [
    ("model.depth=8,21", "model.depth=21 is not a CIFAR ResNet depth"),
    ("model.block=plain,foo", "Invalid value 'foo', expected one of [plain, residual]"),
    ("optim.momentum=0.9,1.5", "optim.momentum=1.5 must be in [0, 1)"),
    ("model.depth=[", "no viable alternative at input '['"),
    ("--cfg", "sweep takes KEY=VALUE overrides, --plan and --time-limit only, not '--cfg'"),
])
def test_bad_grid_is_refused_before_anything_runs(tmp_path, axis, message):
    proc = run_cli("sweep", "experiment=smoke", f"results_root={tmp_path}", axis)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not list(tmp_path.rglob("result.json"))


def test_sweep_plan_checks_and_prints_without_writing(tmp_path):
    root = tmp_path / "runs"
    proc = run_cli("sweep", "--plan", "experiment=smoke", f"results_root={root}", "model.depth=8")
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout.startswith(f"sweep: 2 runs under {root}: 2 new\n")
            and "starting" not in proc.stdout)
    assert not root.exists()  # no sweep.json, no sweeps.jsonl, no run directory
    proc = run_cli("sweep", "--plan", "experiment=smoke", f"results_root={root}",
                   "model.depth=8,21")
    assert proc.returncode == 2 and "model.depth=21 is not a CIFAR ResNet depth" in proc.stderr


def test_sweep_help_shows_its_usage():
    proc = run_cli("sweep", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith(
        "usage: resdepth sweep [--plan] [--time-limit 8m] [KEY=VALUE ...]")
    assert "resdepth sweep model.depth=20,56 seed=0,1,2" in proc.stdout and not proc.stderr


def test_grids_start_with_the_deepest_nets():
    from resdepth.sweep import expand_grid, longest_first

    def depths(overrides):
        return [int(dict(o.split("=", 1) for o in job)["model.depth"])
                for job in expand_grid(overrides)]

    assert depths([]) == [110, 110, 56, 56, 44, 44, 32, 32, 20, 20]  # the paper's grid
    assert depths(["experiment=demo"]) == [56, 56, 20, 20]
    assert depths(longest_first(["model.depth=20,56,32", "seed=0,1"])) == (
        [56] * 4 + [32] * 4 + [20] * 4)
    kept = ["model.depth=20", "seed=1,0", "model.depth=range(20,60,12)"]
    assert longest_first(kept) == kept  # only a list of depths is reordered


def test_sigkill_mid_training_resumes_exactly(tmp_path):
    args = ["experiment=smoke", "model.depth=8", "trainer.max_steps=120", "trainer.eval_every=10",
            "optim.milestones=[60,90]", "trainer.progress=false"]
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    run_dir = Path(compose([*args, f"results_root={killed_root}"])["run_dir"])
    proc = subprocess.Popen([sys.executable, "-m", "resdepth.cli", "train", *args,
                             f"results_root={killed_root}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = run_dir / "metrics.csv"
    assert wait_for(lambda: checkpoint_step(run_dir / "last.ckpt") >= 40)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(read_metrics(metrics))
    assert 4 <= killed_at < 12 and json.loads(
        (run_dir / "result.json").read_text())["status"] == "running"
    # as if the first part ran on another machine
    record = json.loads((run_dir / "result.json").read_text())
    here = record["segments"][0]
    write_json(run_dir / "result.json",
               {**record, "segments": [{**here, "device": "Elsewhere (2 cores)"}]})

    again = run_cli("train", *args, f"results_root={killed_root}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming at iteration" in again.stdout
    resumed_at = json.loads((run_dir / "result.json").read_text())["resumed_from"]
    assert json.loads((run_dir / "result.json").read_text())["segments"] == [
        {**here, "device": "Elsewhere (2 cores)"}, {**here, "from": resumed_at}]
    assert here["threads"] == 1  # trainer.threads' default, whatever the launcher
    assert (f"note: iterations 0-{resumed_at} were trained on Elsewhere (2 cores) in "
            f"{here['precision']} with 1 CPU thread; it now continues on {here['device']} in "
            f"{here['precision']} with 1 CPU thread") in again.stdout
    rows = read_metrics(metrics)
    assert [r["iteration"] for r in rows] == list(range(10, 121, 10))  # no gap, no duplicate
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "done" and result["steps"] == 120 and result["resumed_from"] >= 40

    clean = run_cli("train", *args, f"results_root={clean_root}")
    assert clean.returncode == 0
    clean_rows = read_metrics(
        Path(compose([*args, f"results_root={clean_root}"])["run_dir"]) / "metrics.csv")
    # the resumed run saw the same batches, lr and state as an uninterrupted one
    for a, b in zip(rows, clean_rows):
        assert a["lr"] == b["lr"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)
        assert a["test_error"] == pytest.approx(b["test_error"], abs=0.01)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "stopped by SIGTERM"),
                                              (signal.SIGHUP, 129, "stopped by SIGHUP")])
def test_ctrl_c_says_where_each_run_stopped_and_how_to_resume(tmp_path, sig, code, word):
    args = ["experiment=smoke", "model.depth=8", "model.block=plain", "trainer.max_steps=100000",
            "trainer.eval_every=10", f"results_root={tmp_path}"]
    run_dir = Path(compose(args)["run_dir"])
    proc = subprocess.Popen([sys.executable, "-m", "resdepth.cli", "sweep", *args], cwd=REPO,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # as in a terminal
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert wait_for(lambda: checkpoint_step(run_dir / "last.ckpt") >= 20)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == code, err
    kept = checkpoint_step(run_dir / "last.ckpt")
    assert kept >= 20 and f"[plain-8 seed 0] {word} at iteration " in err
    assert f"its checkpoint is at iteration {kept}: run the same command again to resume" in err
    assert ("resume from their checkpoints with: resdepth sweep experiment=smoke model.depth=8"
            in err)
    assert err.strip().endswith("resdepth: interrupted") and "Traceback" not in err
    # resumable, not done
    assert json.loads((run_dir / "result.json").read_text())["status"] == "running"


def test_divergence_is_recorded_and_the_sweep_goes_on(tmp_path):
    proc = run_cli("sweep", "experiment=smoke", f"results_root={tmp_path}", "model.depth=8",
                   "model.block=plain", "optim.lr=0.05,1e12")
    assert proc.returncode == 0, proc.stderr[-2000:]  # diverged is a result, not a failure
    runs = {r["config"]["optim"]["lr"]: r for _, r in find_results(tmp_path)}
    assert runs[0.05]["status"] == "done"
    bad = runs[1e12]
    assert bad["status"] == "diverged" and 1 <= bad["diverged_at"] <= 10 and bad["steps"] == 10
    assert "DIVERGED at iteration" in proc.stdout
    assert "1 diverged" in rec.format_table(rec.summarize(tmp_path))


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    from resdepth import cli
    from resdepth.training import system
    from resdepth.sweep import sweep

    original = system.System.training_step

    def flaky(self, batch, batch_idx):
        if self.cfg["model"]["depth"] == 14 and self.trainer.global_step == 3:
            raise RuntimeError("simulated CUDA error")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(system.System, "training_step", flaky)
    monkeypatch.chdir(tmp_path)
    code = sweep(["experiment=smoke", f"results_root={tmp_path}", "model.block=plain",
                  "trainer.max_steps=10", "trainer.eval_every=5"], launch=cli._hydra)
    out = capsys.readouterr()
    assert code == 1
    runs = {r["depth"]: r for _, r in find_results(tmp_path)}
    assert runs[8]["status"] == "done"
    assert runs[14]["status"] == "failed" and "simulated CUDA error" in runs[14]["error"]
    d14 = Path(compose(["experiment=smoke", f"results_root={tmp_path}", "model.block=plain",
                        "model.depth=14", "trainer.max_steps=10",
                        "trainer.eval_every=5"])["run_dir"])
    assert "simulated CUDA error" in (d14 / "error.txt").read_text()
    assert "1 run(s) did not finish" in out.err


def test_results_table_mean_and_std_on_known_files(tmp_path, capsys):
    base = compose(["experiment=smoke", f"results_root={tmp_path}", "model.depth=20"])
    for seed, (test, train) in enumerate([(0.07, 0.01), (0.08, 0.02), (0.09, 0.06)]):
        d = tmp_path / f"synthetic/residual-20/seed{seed}-x"
        d.mkdir(parents=True)
        write_json(d / "result.json", {
            "status": "done", "dataset": "synthetic", "depth": 20, "block": "residual",
            "shortcut": "A", "seed": seed, "params": 269_722, "steps": 40, "max_steps": 40,
            "wall_time_s": 60.0,
            "final_test_error": test, "final_train_error": train, "config": {**base, "seed": seed}})
    d = tmp_path / "synthetic/residual-20/seed3-x"
    d.mkdir()
    write_json(d / "result.json", {
        **json.loads((tmp_path / "synthetic/residual-20/seed2-x/result.json").read_text()),
        "status": "running", "final_test_error": 0.5})
    assert results_cli([str(tmp_path)]) == 0
    row, = rec.summarize(tmp_path)
    assert row["seeds"] == 3 and row["test_error_mean"] == pytest.approx(0.08)
    assert row["test_error_std"] == pytest.approx(statistics.stdev([0.07, 0.08, 0.09]))
    assert row["train_error_mean"] == pytest.approx(0.03) and row["status"] == "3 done, 1 running"
    out = capsys.readouterr().out
    assert "8.00 ± 1.00" in out and "3.00 ± 2.65" in out and "4m00s" in out
    assert "8.00 ± 1.00" in (tmp_path / "results.md").read_text()
    assert "0.08" in (tmp_path / "results.csv").read_text()


def test_results_table_names_the_settings_that_tell_configs_apart(tmp_path, capsys):
    for lr, momentum, test in [(0.1, 0.9, 0.07), (0.05, 0.9, 0.08), (0.1, 0.8, 0.09)]:
        cfg = compose(["experiment=smoke", f"results_root={tmp_path}", f"optim.lr={lr}",
                       f"optim.momentum={momentum}"])
        d = tmp_path / f"synthetic/residual-20/seed0-{lr}-{momentum}"
        d.mkdir(parents=True)
        write_json(d / "result.json", {
            "status": "done", "dataset": "synthetic", "depth": 20, "block": "residual",
            "shortcut": "A", "seed": 0, "params": 269_722, "steps": 40, "max_steps": 40,
            "wall_time_s": 6.0, "final_test_error": test, "final_train_error": 0.01,
            "config": cfg})
    assert results_cli([str(tmp_path)]) == 0
    settings = {round(r["test_error_mean"], 2): r["settings"] for r in rec.summarize(tmp_path)}
    assert settings == {0.07: "optim.lr=0.1 optim.momentum=0.9",
                        0.08: "optim.lr=0.05 optim.momentum=0.9",
                        0.09: "optim.lr=0.1 optim.momentum=0.8"}
    out = capsys.readouterr().out
    assert "settings" in out.splitlines()[0] and "optim.lr=0.05 optim.momentum=0.9" in out
    assert "optim.lr=0.05 optim.momentum=0.9" in (tmp_path / "results.md").read_text()
    # one configuration per net: no settings column
    one = tmp_path / "one"
    (one / "a").mkdir(parents=True)
    shutil.copy(next(tmp_path.rglob("result.json")), one / "a" / "result.json")
    assert rec.summarize(one)[0]["settings"] == "" and "settings" not in rec.format_table(
        rec.summarize(one))


def test_sweep_progress_counts_runs_and_scales_the_time_left(tmp_path):
    import datetime as dt

    from resdepth.sweep import sweep_progress

    plan = [{"run_dir": str(tmp_path / name), "depth": depth, "max_steps": 100, "start_step": start}
            for name, depth, start in [("a", 20, 0), ("b", 20, 50), ("c", 110, 0), ("d", 56, 0),
                                       ("e", 56, 0)]]
    for name, status, steps in [("a", "done", 100), ("b", "running", 60), ("c", "failed", 30),
                                ("d", "done", 100), ("e", "failed", 0)]:
        (tmp_path / name).mkdir()
        # e failed before: a retry to come
        finished = "2026-01-01T00:05:00" if name == "c" else "2025-12-31T23:00:00"
        write_json(tmp_path / name / "result.json",
                   {"status": status, "steps": steps, "finished": finished})
    write_json(tmp_path / "sweep.json", {"started": "2026-01-01T00:00:00", "plan": plan})
    now = dt.datetime(2026, 1, 1, 0, 10)  # 600 s after the start
    # depth x iterations since the start: 20*100 + 20*10 + 110*30 + 56*100 = 11,100 in 600 s;
    # left: 20*40 (b) + 56*100 (e) = 6,400, so 600 * 6400 / 11100 = 345.9 s
    assert sweep_progress(tmp_path / "sweep.json", now) == (
        "5 (2 finished, 1 failed so far; about 5m46s left)")


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="the note is for sweeps that train on the CPU")
def test_a_long_sweep_on_the_cpu_says_what_to_expect(tmp_path, monkeypatch, capsys):
    from resdepth import sweep as sw

    args = ["experiment=smoke", f"results_root={tmp_path}"]
    assert sw.sweep(args, launch=lambda argv: None) == 1  # nothing launched: runs "not finished"
    assert "note: no CUDA GPU" not in capsys.readouterr().out  # 40 iterations: no note
    monkeypatch.setattr(sw, "CPU_NOTE_STEPS", 40)
    sw.sweep(args, launch=lambda argv: None)
    out = capsys.readouterr().out
    assert "note: no CUDA GPU is used, so these runs train on the CPU" in out
    k = min(os.cpu_count(), 4)  # the smoke grid has 4 runs
    assert (f"hydra/launcher=parallel hydra.launcher.n_jobs={k}` trains {k} at once" in out) == (
        k > 1)
    sw.sweep([*args, "hydra/launcher=parallel"], launch=lambda argv: None)  # already parallel
    assert "hydra.launcher.n_jobs=" not in capsys.readouterr().out


def test_a_long_sweep_on_one_gpu_names_the_faster_way():
    from resdepth.sweep import plan_notes

    jobs = [{"trainer": {"max_steps": 64000}}] * 10
    given = ["data=cifar10_jpeg"]
    [note] = plan_notes(jobs, given, ["gpu"] * 10, gpus=1)
    assert (note.startswith("these 10 runs go one at a time")
            and "nvidia-cuda-mps-control -d" in note)
    assert ("`resdepth sweep data=cifar10_jpeg hydra/launcher=parallel hydra.launcher.n_jobs=4`"
            in note)
    [note] = plan_notes(jobs, given, ["gpu"] * 10, gpus=8)
    assert "on one of the 8 GPUs here" in note and "hydra.launcher.n_jobs=8`" in note
    # already parallel
    assert plan_notes(jobs, [*given, "hydra/launcher=parallel"], ["gpu"] * 10, gpus=1) == []
    assert plan_notes(jobs[:1], given, ["gpu"], gpus=1) == []  # one run
    # short runs
    assert plan_notes([{"trainer": {"max_steps": 400}}] * 4, given, ["gpu"] * 4, gpus=1) == []
    [note] = plan_notes(jobs, given, ["cpu"] * 10, gpus=0)
    assert note.startswith("no CUDA GPU is used")


def test_a_slurm_time_limit_that_would_requeue_jobs_without_progress_is_refused(tmp_path):
    plan = ["sweep", "--plan", "experiment=smoke", f"results_root={tmp_path}",
            "hydra/launcher=slurm"]
    proc = run_cli(*plan, "hydra.launcher.timeout_min=1")  # signal_delay_s: 120 by default
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert ("hydra.launcher.timeout_min=1 with signal_delay_s=120: SLURM may signal a job 0 s "
            "after it starts") in proc.stderr and "Use timeout_min=4 or more" in proc.stderr
    proc = run_cli(*plan, "hydra.launcher.timeout_min=2")
    assert proc.returncode == 2 and "or signal_delay_s=30 or less" in proc.stderr
    proc = run_cli(*plan, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=5")
    assert proc.returncode == 2 and "signal_delay_s=5: after SLURM's signal" in proc.stderr
    assert run_cli(*plan, "hydra.launcher.timeout_min=2",
                   "hydra.launcher.signal_delay_s=30").returncode == 0
    # a run that trained before has a pace: 10 iterations in 100 s leave 6 per 2-minute job
    run_dir = Path(compose(["experiment=smoke", f"results_root={tmp_path}", "model.depth=8",
                            "model.block=plain"])["run_dir"])
    run_dir.mkdir(parents=True)
    record = {"status": "running", "steps": 10, "wall_time_s": 100.0}
    write_json(run_dir / "result.json", record)
    limits = ["model.depth=8", "model.block=plain", "hydra.launcher.timeout_min=2",
              "hydra.launcher.signal_delay_s=30"]
    proc = run_cli(*plan, *limits, "hydra.launcher.max_num_timeout=3")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"{run_dir}: at its pace so far (0.1 it/s) a job of timeout_min=2 trains about 6 "
            f"iterations, so the 30 left need 5 jobs, more than hydra.launcher.max_num_timeout=3 "
            f"requeues allow") in proc.stderr
    assert run_cli(*plan, *limits, "hydra.launcher.max_num_timeout=4").returncode == 0
    assert json.loads((run_dir / "result.json").read_text()) == record
    assert not (tmp_path / "sweep.json").exists()


def test_results_of_an_empty_root_is_a_clear_error(tmp_path):
    proc = run_cli("results", str(tmp_path / "none"))
    assert proc.returncode == 2 and "no runs found under" in proc.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("launcher", [["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local",
                                       "hydra.launcher.timeout_min=10"]])
def test_launchers_run_a_tiny_sweep_with_the_numbers_of_the_basic_launcher(tmp_path, launcher):
    args = ["experiment=smoke", "model.depth=8", "trainer.max_steps=10", "trainer.eval_every=5"]
    proc = run_cli("sweep", *args, f"results_root={tmp_path / 'launched'}", *launcher)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = [r for _, r in find_results(tmp_path / "launched")]
    assert sorted(r["block"] for r in runs) == ["plain", "residual"]
    assert all(r["status"] == "done" and r["steps"] == 10 for r in runs)
    assert "sweep finished: 2 done" in proc.stdout
    # joblib's workers start on one thread, a plain process on every core: the run sets its own
    # (trainer.threads), so one run directory means one numerics under every launcher
    assert run_cli("sweep", *args, f"results_root={tmp_path / 'basic'}").returncode == 0
    for block in ("plain", "residual"):
        dirs = [Path(compose([*args, f"model.block={block}", f"results_root={tmp_path / r}"])[
            "run_dir"]) for r in ("launched", "basic")]
        results = [json.loads((d / "result.json").read_text()) for d in dirs]
        assert [s["threads"] for r in results for s in r["segments"]] == [1, 1]
        launched, basic = [repr([{k: v for k, v in row.items() if k != "elapsed_s"}  # nan too
                                 for row in read_metrics(d / "metrics.csv")]) for d in dirs]
        assert launched == basic


def test_a_plain_net_under_both_shortcuts_is_one_run_trained_once(tmp_path):
    a, b, res_b = (
        compose(["experiment=smoke", f"results_root={tmp_path}", "model.block=plain"]),
        compose(["experiment=smoke", f"results_root={tmp_path}", "model.block=plain",
                 "model.shortcut=B"]),
        compose(["experiment=smoke", f"results_root={tmp_path}", "model.block=residual",
                 "model.shortcut=B"]))
    # no shortcuts: A and B build the same plain net
    assert a["run_dir"] == b["run_dir"] != res_b["run_dir"]
    # two jobs of one run at once (parallel launcher): one trains it, the other says so and trains
    # nothing
    proc = run_cli("sweep", "experiment=smoke", f"results_root={tmp_path}", "model.depth=8",
                   "model.block=plain", "model.shortcut=A,B", "trainer.max_steps=10",
                   "trainer.eval_every=5", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert ("sweep: 1 runs under" in proc.stdout
            and "note: 1 of these 2 jobs repeats another's run" in proc.stdout)
    assert ("=== run 1 again (sweep job 2): the same run as job 1, trained once there ==="
            in proc.stdout)
    assert proc.stdout.count("] starting:") == 1 and "sweep finished: 1 done" in proc.stdout
    [(run_dir, result)] = find_results(tmp_path)
    assert result["shortcut"] == "A" and result["status"] == "done" and result["steps"] == 10
    # the repeating job left no record of its own
    assert len(list((run_dir / ".hydra").iterdir())) == 1
    proc = run_cli("train", "experiment=smoke", f"results_root={tmp_path}", "model.depth=8",
                   "model.block=plain", "model.shortcut=B", "trainer.max_steps=10",
                   "trainer.eval_every=5")
    assert proc.returncode == 0 and "this is the same run as shortcut A" in proc.stdout
    assert f"done, skipped ({run_dir}: done)" in proc.stdout


def test_slurm_launcher_config_composes():
    proc = run_cli("train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg",
                   "hydra")
    assert proc.returncode == 0, proc.stderr
    assert "SlurmLauncher" in proc.stdout and "max_num_timeout: 20" in proc.stdout
    assert "partition: gpu" in proc.stdout and "gpus_per_node: 1" in proc.stdout


def _locked(run_dir: Path) -> bool:
    """Whether a process holds the run's lock (is training it) right now."""
    from resdepth.rundir import RunBusy, lock_run

    try:
        lock_run(run_dir).close()
    except RunBusy:
        return True
    return False


def test_parallel_workers_stop_when_the_sweep_is_killed(tmp_path):
    overrides = ["experiment=smoke", f"results_root={tmp_path}", "model.depth=8",
                 "trainer.max_steps=3000", "trainer.eval_every=5"]
    proc = subprocess.Popen([sys.executable, "-m", "resdepth.cli", "sweep", *overrides,
                             "hydra/launcher=parallel", "hydra.launcher.n_jobs=2"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    run_dirs = [Path(compose([*overrides, f"model.block={b}"])["run_dir"])
                for b in ("plain", "residual")]
    try:  # both workers are training: each holds its run's lock and has written a record
        assert wait_for(lambda: all((d / "metrics.csv").exists() and _locked(d) for d in run_dirs))
    finally:
        proc.kill()  # SIGKILL: the sweep cannot tell its workers anything
        proc.wait()
    assert wait_for(lambda: not any(_locked(d) for d in run_dirs))
    steps = [json.loads((d / "result.json").read_text())["steps"] for d in run_dirs]
    time.sleep(3)
    # nobody trains them any more
    assert [json.loads((d / "result.json").read_text())["steps"] for d in run_dirs] == steps


def test_a_time_limit_stops_the_sweep_at_a_checkpoint_and_says_what_goes_on(tmp_path):
    args = ["experiment=smoke", "model.depth=8", "trainer.max_steps=100000",
            "trainer.eval_every=1000", f"results_root={tmp_path}"]
    proc = run_cli("sweep", *args, "--time-limit", "25s")
    assert proc.returncode == 143, proc.stdout[-3000:] + proc.stderr[-3000:]  # as for SIGTERM
    assert proc.stderr.splitlines()[-1] == (
        f"resdepth: the sweep's time limit (0m25s) is spent: the runs above stopped at a "
        f"checkpoint or did not start; `resdepth sweep {' '.join(args)} --time-limit 25s` goes on "
        f"from there")
    plain, residual = (Path(compose([*args, f"model.block={b}"])["run_dir"])
                       for b in ("plain", "residual"))
    stopped = re.search(r"\[plain-8 seed 0\] stopped at iteration (\d+), its checkpoint: the "
                        r"sweep's time limit is spent", proc.stdout)
    if stopped:  # on a machine slow enough, its start-up alone can spend 25 s
        assert checkpoint_step(plain / "last.ckpt") == int(stopped.group(1)) > 0
    else:
        assert "[plain-8 seed 0] not started: the sweep's time limit is spent" in proc.stdout
    # the limit was spent: the next run does not start, and leaves no folder
    assert "[ResNet-8 seed 0] not started: the sweep's time limit is spent" in proc.stdout
    assert not residual.exists()
    assert json.loads((tmp_path / "sweep.json").read_text())["command"].endswith("25s")


def test_a_time_limit_plan_says_which_runs_finish_inside_it_by_their_pace(tmp_path):
    args = ["experiment=smoke", "trainer.max_steps=1000", f"results_root={tmp_path}"]
    dirs = {(b, d): Path(compose([*args, f"model.block={b}", f"model.depth={d}"])["run_dir"])
            for b in ("plain", "residual") for d in (14, 8)}
    records = {("plain", 14): {"status": "done", "steps": 1000, "wall_time_s": 1000.0},
               ("residual", 14): {"status": "running", "steps": 100, "wall_time_s": 100.0}}
    for key, record in records.items():
        dirs[key].mkdir(parents=True)
        write_json(dirs[key] / "result.json", record)
    proc = run_cli("sweep", "--plan", *args, "--time-limit", "20m")
    assert proc.returncode == 0, proc.stderr
    # run 2 needs 900 s at its 1 s/it; run 3 has no pace: the median per layer of runs 1 and 2,
    # 1/14 s/it, makes 8/14 s/it for a net of 8 layers, so the 300 s left reach iteration 525
    assert ("note: time limit 20m00s: by the pace of this sweep's runs so far, run 2 finishes "
            "inside it, and run 3 reaches about iteration 525 of 1000; the rest waits for the next "
            "call of the same command") in proc.stdout
    assert "every run finishes inside it" in run_cli("sweep", "--plan", *args, "--time-limit",
                                                     "2h").stdout
    # packed, runs 3 and 4 advance together: the same 300 s take both to iteration 525
    packed = run_cli("sweep", "--plan", *args, "trainer.pack=2", "--time-limit", "20m")
    assert ("run 2 finishes inside it, and runs 3+4 (one pack) reach about iteration 525 of "
            "1000;") in packed.stdout
    assert "note: runs 3+4 train as one wide net per pack" in packed.stdout
    assert not (tmp_path / "sweep.json").exists()
    for bad in ("0", "8x", "-1m"):
        proc = run_cli("sweep", "--plan", *args, "--time-limit", bad)
        assert proc.returncode == 2 and proc.stderr == (
            f"resdepth: error: --time-limit '{bad}': a duration such as 90s, 8m or 1h30m (a bare "
            f"number is minutes), more than 0\n")


PACKED = ["experiment=smoke", "trainer.max_steps=10", "trainer.eval_every=5"]


def _rows_of(root, *args):
    """Each run's metrics.csv rows (without the wall clock), by (block, depth)."""
    out = {}
    for run_dir, r in find_results(root):
        rows = read_metrics(run_dir / "metrics.csv")
        out[r["block"], r["depth"]] = repr([{k: v for k, v in row.items() if k != "elapsed_s"}
                                            for row in rows])
    return out


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]])
def test_a_packed_sweep_launches_one_job_per_pack_and_trains_each_run_as_alone(tmp_path,
                                                                              launcher):
    proc = run_cli("sweep", *PACKED, "trainer.pack=2", f"results_root={tmp_path / 'packed'}",
                   *launcher)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert ("note: runs 1+2, 3+4 train as one wide net per pack (trainer.pack=2), one job per "
            "pack") in proc.stdout
    assert re.search(r"[Ll]aunching 2 jobs", proc.stdout)  # not 4: a pack is one job
    assert proc.stdout.count(" as one pack/4 (") == 2 and "sweep finished: 4 done" in proc.stdout
    found = find_results(tmp_path / "packed")
    assert sorted(r["pack"][0] for _, r in found) == (["plain-14 seed 0"] * 2
                                                       + ["plain-8 seed 0"] * 2)
    assert run_cli("sweep", *PACKED, "trainer.pack=off",
                   f"results_root={tmp_path / 'alone'}").returncode == 0
    assert not any("pack" in r for _, r in find_results(tmp_path / "alone"))
    assert _rows_of(tmp_path / "packed") == _rows_of(tmp_path / "alone")
    again = run_cli("sweep", *PACKED, "trainer.pack=2", f"results_root={tmp_path / 'packed'}")
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 4
    assert "as one pack" not in again.stdout  # done runs are not packed again


def test_a_packed_sweep_killed_at_any_moment_resumes_exactly(tmp_path):
    args = ["experiment=smoke", "model.depth=8", "trainer.max_steps=120", "trainer.eval_every=10",
            "optim.milestones=[60,90]", "trainer.progress=false", "trainer.pack=2"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    run_dirs = [Path(compose([*args, f"model.block={b}", f"results_root={killed}"])["run_dir"])
                for b in ("plain", "residual")]
    proc = subprocess.Popen([sys.executable, "-m", "resdepth.cli", "sweep", *args,
                             f"results_root={killed}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: all(checkpoint_step(d / "last.ckpt") >= 40 for d in run_dirs))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = run_cli("sweep", *args, f"results_root={killed}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("] resuming at iteration") == 2
    for d in run_dirs:
        assert [r["iteration"] for r in read_metrics(d / "metrics.csv")] == list(
            range(10, 121, 10))  # no gap, no duplicate
    assert run_cli("sweep", *args, f"results_root={clean}").returncode == 0
    assert _rows_of(killed) == _rows_of(clean)


@pytest.mark.parametrize("pack", ["2", "off"])
def test_packs_side_by_side_train_each_run_as_one_after_another(tmp_path, pack):
    """trainer.streams=2: the sweep's packs (or, unpacked, its runs) two at a time in one
    process, each in its own thread (on a GPU, its own CUDA stream); the same rows as one after
    another, and each run's own lines in its own log."""
    args = [*PACKED, f"trainer.pack={pack}"]
    proc = run_cli("sweep", *args, "trainer.streams=2", f"results_root={tmp_path / 'side'}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    which = "1+2, 3+4" if pack == "2" else "1, 2; 3, 4"
    assert (f"note: side by side in one process (trainer.streams=2), each in its own thread, "
            f"sharing this CPU's cores: {which}; each trains as it would alone") in proc.stdout
    jobs = 1 if pack == "2" else 2
    assert re.search(rf"[Ll]aunching {jobs} jobs", proc.stdout)
    assert proc.stdout.count(" side by side/4 (") == jobs
    assert "sweep finished: 4 done" in proc.stdout
    assert run_cli("sweep", *args, f"results_root={tmp_path / 'after'}").returncode == 0
    assert _rows_of(tmp_path / "side") == _rows_of(tmp_path / "after")
    for run_dir, r in find_results(tmp_path / "side"):
        log = (run_dir / "resdepth.log").read_text()
        names = set(re.findall(r"\[((?:plain|ResNet)-\d+ seed \d)\]", log))
        assert names == {f"{'plain' if r['block'] == 'plain' else 'ResNet'}-{r['depth']} seed 0"}
        assert f"-{r['depth']} seed 0] done: test " in log


def test_packs_side_by_side_stopped_by_sigterm_stop_at_a_checkpoint_and_resume_exactly(
        tmp_path):
    args = ["experiment=smoke", "trainer.max_steps=60", "trainer.eval_every=10",
            "optim.milestones=[30,45]", "trainer.progress=false", "trainer.pack=2",
            "trainer.streams=2"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    run_dirs = [Path(compose([*args, f"model.block={b}", f"model.depth={d}",
                              f"results_root={killed}"])["run_dir"])
                for b in ("plain", "residual") for d in (8, 14)]
    proc = subprocess.Popen([sys.executable, "-m", "resdepth.cli", "sweep", *args,
                             f"results_root={killed}"],
                            cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: all(checkpoint_step(d / "last.ckpt") >= 20 for d in run_dirs))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-3000:]
    stopped = 0
    for d in run_dirs:  # each stopped after its iteration, with a checkpoint there
        kept = checkpoint_step(d / "last.ckpt")
        if json.loads((d / "result.json").read_text())["status"] == "done":
            assert kept == 60  # the shallow pack may finish first on a busy machine
            continue
        stopped += 1
        assert 20 <= kept < 60
        assert re.search(rf"stopped by SIGTERM at iteration {kept}; its checkpoint is at "
                         rf"iteration {kept}: run the same command again to resume", err)
    assert stopped >= 2 and err.count("stopped by SIGTERM at iteration") == stopped
    assert "Traceback" not in err and "terminate called" not in err
    assert err.strip().endswith("resdepth: interrupted")
    again = run_cli("sweep", *args, f"results_root={killed}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("] resuming at iteration") == stopped
    for d in run_dirs:
        assert [r["iteration"] for r in read_metrics(d / "metrics.csv")] == list(
            range(10, 61, 10))  # no gap, no duplicate
    assert run_cli("sweep", *args, f"results_root={clean}").returncode == 0
    assert _rows_of(killed) == _rows_of(clean)
