"""`resdepth` in a real subprocess: the smoke run end to end, and every bad input's one-line
message."""

import csv
import os
import re
import time
from pathlib import Path
import json

import pytest
import torch

from .conftest import REPO, compose, run_cli


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    proc = run_cli("train", "experiment=smoke", f"results_root={root}")
    assert proc.returncode == 0, proc.stderr
    run_dir = compose(["experiment=smoke", f"results_root={root}"])["run_dir"]
    return root, run_dir, proc


def test_smoke_train_end_to_end(smoke_run):
    root, run_dir, proc = smoke_run
    assert run_dir.startswith(f"{root}/synthetic/residual-20/seed0-")
    with open(f"{run_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [10, 20, 30, 40]
    assert set(rows[0]) == {"iteration", "lr", "train_loss", "train_error", "val_error",
                            "test_error", "elapsed_s"}
    result = json.load(open(f"{run_dir}/result.json"))
    assert result["status"] == "done" and result["steps"] == 40 and result["params"] == 269_722
    assert result["final_test_error"] == float(rows[-1]["test_error"])
    assert result["config"]["model"] == {"depth": 20, "block": "residual", "shortcut": "A"}
    assert result["device"] and result["wall_time_s"] > 0 and result["versions"]["torch"]
    # which code made the run: the package, and the commit in a checkout
    code = result["versions"]["resdepth"]
    assert re.fullmatch(r"0\.1\.0( \(git [0-9a-f]{10}( \+ local changes)?\))?", code), code
    assert ("(git " in code) is (REPO / ".git").exists()
    for name in ("model.pt", "last.ckpt", "responses.json", "config.json"):
        assert (root / run_dir[len(str(root)) + 1:] / name).exists(), name
    # Hydra's record of the invocation
    assert len(list(Path(run_dir).glob(".hydra/*/config.yaml"))) >= 1
    assert "it     40/40" in proc.stdout and "done: test" in proc.stdout


def test_second_run_is_skipped_and_keeps_the_first_invocations_record(smoke_run):
    root, run_dir, _ = smoke_run
    before = {p: p.read_bytes() for p in Path(run_dir).rglob("*") if p.is_file()}
    # the same run (trainer.cuda_graph does not change what is computed), invoked again in
    # another way
    proc = run_cli("train", "experiment=smoke", f"results_root={root}", "trainer.cuda_graph=false")
    assert proc.returncode == 0 and "done, skipped" in proc.stdout
    # nothing rewritten, Hydra's records included
    assert {p: p.read_bytes() for p in before} == before
    new = [p for p in Path(run_dir).glob(".hydra/*/overrides.yaml") if p not in before]
    assert len(new) == 1 and "trainer.cuda_graph=false" in new[0].read_text()


def test_cfg_job_prints_the_composed_config():
    proc = run_cli("train", "model.depth=110", "model.block=plain", "--cfg", "job")
    assert proc.returncode == 0
    assert ("depth: 110" in proc.stdout and "block: plain" in proc.stdout
            and "milestones:" in proc.stdout)


def test_a_key_given_twice_is_named_and_the_last_value_is_used():
    proc = run_cli("train", "model.depth=8", "model.block=plain", "++model.depth=14", "--cfg",
                   "job")
    assert proc.returncode == 0 and "depth: 14" in proc.stdout, proc.stderr
    assert proc.stderr.strip() == ("resdepth: note: model.depth is given 2 times "
                                   "(model.depth=8, ++model.depth=14): "
                                   "the last one is used, ++model.depth=14")
    proc = run_cli("sweep", "model.depth=8,14", "model.depth=21", "seed=0", "seed=1",
                   "model.block=plain")
    assert proc.returncode == 2 and proc.stderr.splitlines()[:2] == [
        "resdepth: note: model.depth is given 2 times (model.depth=8,14, model.depth=21): "
        "the last one is used, model.depth=21",
        "resdepth: note: seed is given 2 times (seed=0, seed=1): the last one is used, seed=1"]
    assert proc.stderr.splitlines()[2].startswith(
        "resdepth: error: model.depth=21 is not a CIFAR ResNet depth")


@pytest.mark.parametrize("override,message", [
    ("model.block=foo", "Invalid value 'foo', expected one of [plain, residual]"),
    ("model.depth=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("optim.lr=fast", "Value 'fast' of type 'str' could not be converted to Float"),
    ("model.dept=5", "Key 'dept' not in 'ModelConfig'"),
    ("model.shortcut=C", "Invalid value 'C', expected one of [A, B]"),
    ("model.depth=21", "model.depth=21 is not a CIFAR ResNet depth: it must be 6n+2"),
    ("model.depth=-4", "model.depth=-4 is not a CIFAR ResNet depth"),
    ("optim.warmup=maybe", "optim.warmup='maybe' is not one of auto, true, false"),
    ("trainer.max_steps=0", "trainer.max_steps=0 must be a positive integer"),
    ("trainer.streams=0", "trainer.streams=0 must be from 1 to 16 (packs side by side in one "
                          "process; 1: one after another)"),
    ("trainer.streams=two", "Value 'two' of type 'str' could not be converted to Integer"),
    ("trainer.precision=fp8",
     "Invalid value 'fp8', expected one of [auto, 32-true, 32, bf16-mixed, bf16, 16-mixed, 16]"),
    ("trainer.cuda_graph=maybe", "trainer.cuda_graph='maybe' is not one of auto, true, false"),
    pytest.param("trainer.cuda_graph=true",
                 "trainer.cuda_graph=true cannot be used: no CUDA GPU is used",
                 marks=pytest.mark.skipif(torch.cuda.is_available(),
                                          reason="a CUDA GPU is used here")),
    # the whole list: the shared base data/_common.yaml is not offered as a dataset
    ("data=imagenet",
     "Could not find 'data/imagenet'; available: cifar10, cifar100, cifar10_jpeg, fashion_mnist, "
     "image_folder, synthetic"),
    ("experiment=nope",
     "Could not find 'experiment/nope'; available: demo, eighth, paper, sixteenth, smoke"),
    ("seed=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("model.depth=[", "no viable alternative at input '['"),
    ("model.depth=20,56", "To sweep over it, use `resdepth sweep`"),
    ("+foo=1", "unknown setting 'foo' (added with +foo=...)"),
    ("optim.momentum=1.5", "optim.momentum=1.5 must be in [0, 1)"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1.0 must be >= 0"),
    ("optim.gamma=0", "optim.gamma=0.0 must be in (0, 1]"),
    ("optim.warmup_lr=0", "optim.warmup_lr=0.0 must be > 0"),
    ("optim.warmup_until_error=2", "optim.warmup_until_error=2.0 must be a fraction in [0, 1]"),
    ("optim.milestones=[30,10]", "optim.milestones=[30, 10] must be increasing iterations >= 0"),
    ("seed=-1", "seed=-1 must be in [0, 4294967295]"),
    ("data.test_subset=100000", "data.test_subset=100000 must be in [0, 512] (0: whole test set)"),
    ("data.val_size=60000", "data.val_size=60000 must be in [0, 2047] for this training set"),
    ("data.test_subset=-1", "data.test_subset=-1 must be >= 0 (0: the whole test set)"),
    ("data.train_size=0", "data.train_size=0 must be >= 2 for data=synthetic"),
    ("data.num_classes=1", "data.num_classes=1 must be >= 2 for data=synthetic"),
    ("data.train_size=5",  # found before the run directory is made, not recorded as a failed run
     "optim.batch_size=32 is larger than the training set (5 images); allowed: 1 to 5"),
])
def test_bad_input_fails_clearly_and_keeps_earlier_results(smoke_run, override, message):
    root, run_dir, _ = smoke_run
    before = {p: open(f"{run_dir}/{p}").read()
              for p in ("result.json", "metrics.csv", "config.json")}
    # a key given twice gets a note
    preset = [] if override.startswith("experiment=") else ["experiment=smoke"]
    proc = run_cli("train", *preset, f"results_root={root}", override)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()  # one line, Hydra's own errors included
    assert (len(lines) == 1 and lines[0].startswith("resdepth: error: ")
            and message in lines[0]), proc.stderr
    assert {p: open(f"{run_dir}/{p}").read() for p in before} == before
    # no run directory left by the rejected config
    assert [str(p) for p in root.glob("*/*/*")] == [run_dir]


def test_hydra_errors_keep_their_traceback_on_request(tmp_path):
    proc = run_cli("train", "experiment=smoke", f"results_root={tmp_path}", "model.block=foo",
                   env={"HYDRA_FULL_ERROR": "1"})
    assert (proc.returncode != 0 and "Traceback" in proc.stderr
            and "expected one of [plain, residual]" in proc.stderr)


def test_missing_image_folder_is_a_clear_error(tmp_path):
    proc = run_cli("train", "experiment=smoke", f"results_root={tmp_path}", "data=image_folder",
                   f"data.path={tmp_path}/nowhere.tar.gz")
    assert proc.returncode == 2
    assert f"data.path='{tmp_path}/nowhere.tar.gz' not found" in proc.stderr


def test_a_refusal_deletes_only_what_this_command_made(tmp_path):
    refused = ("train", "experiment=smoke", "data=image_folder", f"data.path={tmp_path / 'nope'}")
    mine = tmp_path / "mine"  # a folder of the user's, named as the run directory
    mine.mkdir()
    (mine / "notes.log").write_text("the user's")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "a.txt").write_text("the user's")
    for hostile in ([], ["hydra.output_subdir=../keep"], [f"hydra.output_subdir={tmp_path}/keep"]):
        proc = run_cli(*refused, f"run_dir={mine}", *hostile)
        why = "must stay inside the run directory" if hostile else "not found"
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
        assert sorted(p.name for p in mine.iterdir()) == ["notes.log"]
        assert (tmp_path / "keep" / "a.txt").read_text() == "the user's"
    root = tmp_path / "runs" / "new"  # made by the command: it goes again, with its parents
    proc = run_cli(*refused, f"results_root={root}")
    assert proc.returncode == 2 and not (tmp_path / "runs").exists()


def test_run_directory_is_a_pure_function_of_the_config(tmp_path):
    a = compose(["experiment=smoke", f"results_root={tmp_path}"])["run_dir"]
    assert compose(["experiment=smoke", f"results_root={tmp_path}"])["run_dir"] == a
    seed1 = compose(["experiment=smoke", f"results_root={tmp_path}", "seed=1"])["run_dir"]
    lr = compose(["experiment=smoke", f"results_root={tmp_path}", "optim.lr=0.05"])["run_dir"]
    assert seed1.replace("seed1-", "seed0-") == a  # seeds of one config share the hash
    assert lr.rsplit("-", 1)[1] != a.rsplit("-", 1)[1]
    quiet = compose(["experiment=smoke", f"results_root={tmp_path}",
                     "trainer.progress=false"])["run_dir"]
    assert quiet == a  # display settings do not change the run


def test_usage_and_unknown_command():
    assert "resdepth train" in run_cli("--help").stdout
    proc = run_cli("fly")
    assert proc.returncode == 2 and "unknown command 'fly'" in proc.stderr


def test_a_changed_config_is_refused_in_an_existing_run_directory(smoke_run):
    root, run_dir, _ = smoke_run
    before = {p: open(f"{run_dir}/{p}").read()
              for p in ("result.json", "metrics.csv", "config.json")}
    records = sorted(Path(run_dir, ".hydra").iterdir())
    proc = run_cli("train", "experiment=smoke", f"results_root={root}", f"run_dir={run_dir}",
                   "optim.lr=0.05")
    assert proc.returncode == 2
    assert ("holds a run of another config (differs in optim.lr)" in proc.stderr
            and "refusing to mix" in proc.stderr)
    assert {p: open(f"{run_dir}/{p}").read() for p in before} == before
    # the refused command left no record of its own
    assert sorted(Path(run_dir, ".hydra").iterdir()) == records


def test_a_run_being_trained_elsewhere_is_left_alone(tmp_path):
    import fcntl

    run_dir = compose(["experiment=smoke", f"results_root={tmp_path}"])["run_dir"]
    Path(run_dir).mkdir(parents=True)
    with open(f"{run_dir}/.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run_cli("train", "experiment=smoke", f"results_root={tmp_path}")
    assert proc.returncode == 2 and "is being trained by another process right now" in proc.stderr
    assert not Path(f"{run_dir}/result.json").exists()


def test_a_file_system_without_locks_is_named_not_taken_for_a_busy_run(tmp_path, monkeypatch):
    import errno
    import fcntl

    from resdepth.rundir import RunBusy, lock_run

    def no_locks(f, how):  # Lustre without -o flock answers so
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunBusy, match=r"cannot be locked \(Function not implemented\): its file "
                                      r"system does not support flock.*results_root on one"):
        lock_run(tmp_path)


def test_a_slow_run_says_its_pace_before_its_first_record(tmp_path, capsys):
    from types import SimpleNamespace

    from resdepth.training.records import PACE_AFTER_S, Recorder

    # the paper's run: first record at iteration 1000
    cfg = compose(["model.depth=56", "model.block=plain"])
    recorder = Recorder(tmp_path, cfg, {})
    recorder.progress, recorder.live = True, False  # as in a log file
    recorder.on_train_start(SimpleNamespace(global_step=0), None)

    def at(step):  # the trainer at an iteration, as the hook sees it
        recorder.on_train_batch_end(SimpleNamespace(global_step=step, received_sigterm=False),
                                    None, None, None, step - 1)

    at(5)
    assert capsys.readouterr().out == ""  # too early to say
    recorder.t0 -= PACE_AFTER_S + 10  # as if 40 s had passed by iteration 20: 0.5 it/s
    at(20)
    line = capsys.readouterr().out
    # 20 iterations in 40 s: 0.50 it/s, so 980 iterations (32m40s) to the first record and 63,980
    # (35h32m) in all
    assert re.fullmatch(r"  \[plain-56 seed 0\] it     20/64000  0\.50 it/s: "
                        r"first record at it 1000 in about "
                        r"32m[34]\ds, the run needs about 35h3[12]m more\n", line), line
    at(21)
    assert capsys.readouterr().out == ""  # once
    # a terminal
    recorder.paced, recorder.live, recorder.last_draw = False, True, time.perf_counter()
    at(22)
    assert capsys.readouterr().out == ""  # its live line shows the pace instead


@pytest.mark.parametrize("override", ["+trainer.deterministic=true", "+trainer.strategy=ddp",
                                      "+model.width=32", "+data.foo=1", "+optim.nesterov=true",
                                      "++model.width=32"])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_key_that_nothing_reads_is_refused_in_every_group(tmp_path, command, override):
    key = override.lstrip("+").split("=")[0]
    proc = run_cli(command, "experiment=smoke", f"results_root={tmp_path}", override)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"resdepth: error: unknown setting '{key}' (added with +{key}=...); "
        f"{key.split('.')[0]} has "), proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("override", ["hydra.run.dir=elsewhere", "hydra.sweep.dir=elsewhere"])
def test_hydras_own_run_directory_is_refused(tmp_path, command, override):
    proc = run_cli(command, "experiment=smoke", f"results_root={tmp_path}", override, cwd=tmp_path)
    key = override.split("=")[0]
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"resdepth: error: {key} is not supported: a run's "
        f"directory is run_dir"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("where", ["shell", "preset"])
@pytest.mark.parametrize("setting, message", [
    ("hydra.job.chdir=yes", "hydra.job.chdir=True is not supported"),
    ("hydra.output_subdir=../../x", "hydra.output_subdir='../../x' must stay inside the run"),
    ("hydra.output_subdir=/tmp/x", "hydra.output_subdir='/tmp/x' must stay inside the run"),
    ("hydra.job.name=../x", "hydra.job.name='../x' must be one file name"),
    ("hydra.run.dir=/tmp/x", "hydra.run.dir is not supported: a run's directory is run_dir"),
])
def test_hydra_settings_that_write_outside_are_refused_from_a_preset_too(
        tmp_path, command, where, setting, message):
    key, _, value = setting.partition("=")
    if where == "shell":
        given = [setting]
    else:  # a preset of the user's sets it, not the shell
        (tmp_path / "conf" / "experiment").mkdir(parents=True)
        *parents, leaf = key.split(".")
        yaml = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parents)) + \
            f"{'  ' * len(parents)}{leaf}: {value}\n"
        (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(
            "# @package _global_\ndefaults:\n  - smoke\n" + yaml)
        given = ["--config-dir", str(tmp_path / "conf"), "experiment=mine"]
    root = tmp_path / "runs"
    proc = run_cli(command, *([] if where == "preset" else ["experiment=smoke"]), *given,
                   f"results_root={root}", cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if where == "shell" else ["conf"])


@pytest.fixture
def my_conf(tmp_path):
    """A user's own preset outside resdepth: DIR/experiment/mine.yaml, a grid of its own."""
    (tmp_path / "my_conf" / "experiment").mkdir(parents=True)
    (tmp_path / "my_conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /data: synthetic\n"
        "experiment_name: mine\nmodel:\n  depth: 8\n"
        "optim:\n  batch_size: 32\ndata:\n  train_size: 256\n  test_size: 64\n"
        "trainer:\n  max_steps: 4\n  eval_every: 2\n"
        "hydra:\n  sweeper:\n    params:\n"
        "      model.depth: 8\n      model.block: plain,residual\n")
    return tmp_path / "my_conf"


def test_train_finds_a_users_preset_by_config_dir_or_searchpath(tmp_path, my_conf):
    for where in (["--config-dir", str(my_conf)], [f"--config-dir={my_conf}"],
                  [f"hydra.searchpath=[file://{my_conf}]"]):
        proc = run_cli("train", *where, "experiment=mine", f"results_root={tmp_path}", "--cfg",
                       "job")
        assert (proc.returncode == 0 and "experiment_name: mine" in proc.stdout
                and "max_steps: 4" in proc.stdout), proc.stderr
    proc = run_cli("train", "--config-dir", str(my_conf), "experiment=mine", "model.depth=21")
    # checked first
    assert proc.returncode == 2 and "model.depth=21 is not a CIFAR ResNet depth" in proc.stderr
    proc = run_cli("train", "--config-dir", str(tmp_path / "nowhere"), "experiment=mine")
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"resdepth: error: --config-dir '{tmp_path / 'nowhere'}'"
        f": no such folder")
    proc = run_cli("sweep", "--plan", f"hydra.searchpath=[file://{my_conf}]", "experiment=mine",
                   f"results_root={tmp_path}")
    assert (proc.returncode == 0 and "sweep: 2 runs" in proc.stdout
            and "plain-8" in proc.stdout), proc.stderr


@pytest.mark.slow
def test_sweep_plans_and_launches_a_users_preset_from_config_dir(tmp_path, my_conf):
    root = tmp_path / "runs"
    proc = run_cli("sweep", "--config-dir", str(my_conf), "experiment=mine", f"results_root={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 2 runs" in proc.stdout and "2 new" in proc.stdout
    results = [json.loads(p.read_text())
               for p in sorted(root.glob("synthetic/*-8/seed0-*/result.json"))]
    # the launched jobs composed the user's preset too
    assert [(r["config"]["model"]["block"], r["status"], r["steps"]) for r in results] == [
        ("plain", "done", 4), ("residual", "done", 4)]
    assert all(r["config"]["experiment_name"] == "mine" for r in results)


def test_a_path_with_a_tilde_or_home_works_as_on_the_shell_and_a_preset_one_is_refused(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    env = {"HOME": str(home)}
    # as bash passes them: `data.root=~/datasets` is not expanded in an argument; a quoted $HOME
    proc = run_cli("train", "experiment=smoke", "data.root=~/datasets", "data.path=~/images",
                   "data.cache_dir=$HOME/cache", "--cfg", "job", cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    for key, value in (("root", "datasets"), ("path", "images"), ("cache_dir", "cache")):
        assert f"  {key}: {home / value}\n" in proc.stdout
    proc = run_cli("train", "experiment=smoke", "model.depth=8", "trainer.max_steps=2",
                   "trainer.eval_every=1", "results_root=~/my runs", cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (home / "my runs" / "synthetic").iterdir()] == ["residual-8"]
    assert not (work / "~").exists() and sorted(p.name for p in work.iterdir()) == []
    # where no shell expands it (a preset, a quoted value): refused, saying what works
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nresults_root: ~/runs\n")
    proc = run_cli("train", "--config-dir", str(tmp_path / "conf"), "experiment=mine", cwd=work,
                   env=env)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "resdepth: error: results_root='~/runs': ~ and $VARIABLES are expanded on the shell "
        "(results_root=~/runs works there), not in a preset or a quoted value; write the full path")
    assert not (work / "~").exists()


def test_a_machine_with_srun_trains_without_lightnings_srun_hint(tmp_path):
    """On a SLURM login or compute node `srun` exists: Lightning's hint to prepend it is wrong for
    resdepth (one run, one device, one process) and is not printed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    proc = run_cli("train", "experiment=smoke", "model.depth=8", "trainer.max_steps=2",
                   "trainer.eval_every=1", f"results_root={tmp_path}",
                   env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert "`srun` command" not in proc.stderr and "HINT" not in proc.stderr, proc.stderr
