"""The run directory and the files resdepth writes: atomic writes that leave nothing behind,
failures recorded before training too, file-system trouble as one line in every command."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from resdepth import load_run, rundir
from resdepth.training.train import RunFailed, train

from .conftest import compose, run_cli


def _smoke(tmp_path, *extra):
    return compose(["experiment=smoke", "model.depth=8", f"results_root={tmp_path}",
                    "trainer.progress=false", *extra])


def _as_if_killed(run_dir: Path) -> None:
    """A finished run's result.json marked running again: as if killed before its end."""
    result = json.loads((run_dir / "result.json").read_text())
    rundir.write_json(run_dir / "result.json", {**result, "status": "running"})


def _trained_then_killed(root: Path) -> tuple[dict, Path]:
    """(config, run directory) of a 20-iteration smoke run trained, then marked running."""
    cfg = _smoke(root, "trainer.max_steps=20", "trainer.eval_every=10")
    train(cfg)
    _as_if_killed(Path(cfg["run_dir"]))
    return cfg, Path(cfg["run_dir"])


def test_atomic_write_leaves_no_temp_file_when_writing_fails(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("the old one")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        rundir.atomic_write(target, fail)
    assert (target.read_text() == "the old one"
            and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"])


def test_a_temp_file_left_by_a_killed_writer_goes_at_the_next_write(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names no process now
    left = tmp_path / f".last.ckpt.tmp{dead.pid}"
    busy = tmp_path / f".last.ckpt.tmp{os.getppid()}"  # a writer still alive
    other = tmp_path / f".model.pt.tmp{dead.pid}"  # another target's: not this write's business
    for p in (left, busy, other):
        p.write_text("half")
    rundir.atomic_write_text(tmp_path / "last.ckpt", "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last.ckpt", busy.name, other.name])


def test_checkpoints_are_staged_beside_the_run_never_in_tmpdir(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    cfg = _smoke(tmp_path, "trainer.max_steps=20", "trainer.eval_every=10")
    assert train(cfg)["status"] == "done" and (Path(cfg["run_dir"]) / "last.ckpt").exists()
    assert not (tmp_path / "no-such-tmpdir").exists()


def test_a_damaged_metrics_row_is_named_and_a_torn_last_line_is_not(tmp_path, capsys):
    path = tmp_path / "metrics.csv"
    for it in (10, 20, 30, 40):
        rundir.append_metrics(path, {k: 0.5 for k in rundir.METRICS} | {"iteration": it})
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], "20,zz,garbled", lines[3], lines[4][:9]]) + "\n")
    rows = rundir.read_metrics(path)
    assert [r["iteration"] for r in rows] == [10, 30]
    err = capsys.readouterr().err
    assert f"{path}: row 3 cannot be read" in err and err.count("warning") == 1


def test_a_damaged_checkpoint_is_named_recorded_and_kept(tmp_path):
    cfg, run_dir = _trained_then_killed(tmp_path)
    ckpt = run_dir / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated by a full disk
    with pytest.raises(RunFailed, match="last.ckpt is damaged .* mv "):
        train(cfg)
    result = json.loads((run_dir / "result.json").read_text())
    assert (result["status"] == "failed" and "CorruptCheckpoint" in result["error"]
            and "mv " in result["error"])
    assert ("CorruptCheckpoint" in (run_dir / "error.txt").read_text()
            and ckpt.stat().st_size == 1000)
    proc = run_cli("train", "experiment=smoke", "model.depth=8", f"results_root={tmp_path}",
                   "trainer.max_steps=20", "trainer.eval_every=10")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith(
        "resdepth: error: run failed: CorruptCheckpoint: ")
    assert "Traceback" not in proc.stderr and f"traceback in {run_dir / 'error.txt'}" in lines[-1]
    # what the message says to do: the run then restarts and finishes
    os.rename(ckpt, f"{ckpt}.damaged")
    proc = run_cli("train", "experiment=smoke", "model.depth=8", f"results_root={tmp_path}",
                   "trainer.max_steps=20", "trainer.eval_every=10")
    assert (proc.returncode == 0
            and json.loads((run_dir / "result.json").read_text())["status"] == "done")
    # the old failure's traceback is kept under its date, no longer as the run's error
    retired = [p.name for p in run_dir.glob("error*.txt")]
    assert len(retired) == 1 and retired[0].startswith("error-"), retired


def test_a_checkpoint_or_model_that_is_no_regular_file_is_one_line_and_never_hangs(tmp_path):
    cfg, run_dir = _trained_then_killed(tmp_path)
    (run_dir / "last.ckpt").unlink()
    os.mkfifo(run_dir / "last.ckpt")  # opening it would wait for a writer forever
    (run_dir / "model.pt").unlink()
    (run_dir / "model.pt").symlink_to("/dev/zero")  # reading it would never end

    def hung(*_):
        raise TimeoutError("reading the run directory hangs")

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(300)  # a hang fails the test instead of stopping the suite
    try:
        with pytest.raises(RunFailed, match=r"last.ckpt is damaged \(ValueError: .* is not a "
                                            r"regular file .* mv "):
            train(cfg)
        with pytest.raises(ValueError, match=f"{run_dir / 'model.pt'} is not a regular file"):
            load_run(run_dir)
    finally:
        signal.alarm(0)
    # a file far larger than any of its kind resdepth writes is not read either
    os.truncate(run_dir / "result.json", 17 * 2**20)  # sparse: no disk used
    with pytest.raises(ValueError, match="result.json is 17,825,792 bytes, more than the "
                                         "16,777,216 a file of its kind"):
        rundir.read_json(run_dir / "result.json")


class Payload:
    """Unpickled, it creates `marker`: what a hostile file in someone else's results root does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path: Path, marker: Path, **values) -> None:
    import torch

    torch.save({**values, "payload": Payload(marker)}, path)


def test_a_pickle_payload_in_a_run_directory_is_refused_and_never_runs(tmp_path):
    root = tmp_path / "given"
    _, run_dir = _trained_then_killed(root)  # resumable
    marker = tmp_path / "ran"
    plant(run_dir / "last.ckpt", marker, global_step=10)
    plant(run_dir / "model.pt", marker)
    args = ("experiment=smoke", "model.depth=8", f"results_root={root}", "trainer.max_steps=20",
            "trainer.eval_every=10")
    for command in ("train", "sweep"):
        proc = run_cli(command, *args, "model.block=residual")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert (f"{run_dir / 'last.ckpt'} holds objects other than tensors and plain values"
                in proc.stderr + proc.stdout)
    for command in ("results", "plot"):
        assert run_cli(command, str(root)).returncode == 0
    with pytest.raises(rundir.UnsafeFile, match=f"{run_dir / 'model.pt'} holds objects"):
        load_run(run_dir)
    assert not marker.exists()


def test_a_cache_folder_that_cannot_be_made_never_fails_the_run(tmp_path, tmp_cache):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "images" / split / cls).mkdir(parents=True)
            for i in range(40 if split == "train" else 4):
                Image.new("RGB", (32, 32), (i * 5, 100 if cls == "a" else 200, 0)).save(
                    tmp_path / "images" / split / cls / f"{i}.png")
    (tmp_path / "not-a-folder").write_text("a file where the cache folder should be")
    args = ["experiment=smoke", "model.depth=8", "data=image_folder",
            f"data.path={tmp_path / 'images'}", f"data.cache_dir={tmp_path / 'not-a-folder'}",
            f"results_root={tmp_path / 'runs'}"]
    proc = run_cli("train", *args)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot cache the decoded images in" in proc.stderr and "not-a-folder" in proc.stderr
    result = next((tmp_path / "runs").rglob("result.json"))
    assert json.loads(result.read_text())["status"] == "done"


@pytest.mark.parametrize("command", ["train", "sweep", "results", "plot"])
def test_a_file_where_the_results_folder_should_be_is_one_line(tmp_path, command):
    (tmp_path / "runs").write_text("a file")
    args = [f"{tmp_path / 'runs'}"] if command in ("results", "plot") else \
        ["experiment=smoke", f"results_root={tmp_path / 'runs'}"]
    proc = run_cli(command, *args)
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode != 0 and len(lines) == 1
            and lines[0].startswith("resdepth: error: ")), proc.stderr
    assert str(tmp_path / "runs") in lines[0] and (tmp_path / "runs").read_text() == "a file"


def test_a_path_too_long_is_one_line(tmp_path):
    proc = run_cli("train", "experiment=smoke", f"results_root={tmp_path / ('x' * 300)}")
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode != 0 and len(lines) == 1
            and "File name too long" in lines[0]), proc.stderr


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only file system (a tmpfs mounted read-only), where this machine allows mounting;
    else skip."""
    path = tmp_path / "ro"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a read-only file system here")
    yield path
    subprocess.run(["umount", str(path)], capture_output=True)


def test_a_read_only_file_system_is_one_line_in_every_command(read_only_dir, tmp_path):
    for args in (["train", "experiment=smoke", f"results_root={read_only_dir}/runs"],
                 ["sweep", "experiment=smoke", f"results_root={read_only_dir}/runs"],
                 ["bench", "--out", f"{read_only_dir}/bench.json", "--data", "synthetic"]):
        proc = run_cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert (proc.returncode != 0 and len(lines) == 1
                and lines[0].startswith("resdepth: error: ")), (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert list(read_only_dir.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["train", "results_root="], "results_root='' is empty"),
    (["train", "data.name=../elsewhere"], "data.name='../elsewhere' must be one folder name"),
    (["train", "data.name=a/b"], "data.name='a/b' must be one folder name"),
    (["train", "optim.lr=inf"], "optim.lr=inf must be > 0 and finite"),
    (["train", "-m", "model.depth=8,14"],
     "resdepth train runs one configuration; for a grid use `resdepth sweep`"),
    (["train", "hydra.job.chdir=true"], "hydra.job.chdir=true is not supported"),
    (["sweep", "hydra.job.chdir=true"], "hydra.job.chdir=true is not supported"),
    (["sweep", "model.block=plain,residual", "run_dir={tmp}/one"],
     "would hold several configurations"),
])
def test_writes_stay_contained_and_a_grid_trains_every_point_or_refuses(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    root = [] if any(a.startswith("results_root=") for a in args) else [
        f"results_root={tmp_path / 'runs'}"]
    proc = run_cli(args[0], "experiment=smoke", *root, *args[1:], cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing written"


def test_results_and_plot_print_the_table_when_they_cannot_save_it(tmp_path):
    from .conftest import REPO

    path = tmp_path / "ro"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a file system here")
    try:
        subprocess.run(["cp", "-r", str(REPO / "experiments/cifar10-jpeg-cpu-demo/runs"),
                        str(path)], check=True)
        subprocess.run(["rm", "-r", str(path / "runs/figures"), str(path / "runs/results.md")],
                       check=True)
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        for command, shown in (("results", "ResNet-56"), ("plot", "| 56 |")):
            proc = run_cli(command, str(path / "runs"))
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 1 and shown in proc.stdout, (command, proc.stdout,
                                                                   proc.stderr)
            assert (len(lines) == 1 and "Read-only file system" in lines[0]
                    and ".tmp" not in lines[0]), proc.stderr
        assert not (path / "runs/figures").exists() and not (path / "runs/results.md").exists()
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_the_sweep_summary_names_a_failed_run_and_what_to_do(tmp_path):
    overrides = ["experiment=smoke", "model.depth=8", f"results_root={tmp_path}",
                 "trainer.max_steps=10", "trainer.eval_every=5"]
    assert run_cli("sweep", *overrides).returncode == 0
    run_dir = Path(compose([*overrides, "model.block=plain"])["run_dir"])
    _as_if_killed(run_dir)
    (run_dir / "last.ckpt").write_bytes(b"not a checkpoint")
    proc = run_cli("sweep", *overrides)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "1 run(s) did not finish" in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith(f"  {run_dir}: failed: "))
    assert "last.ckpt is damaged" in line and f"mv '{run_dir / 'last.ckpt'}'" in line


def test_a_sweep_with_a_refused_job_fails_and_names_it(tmp_path):
    overrides = ["experiment=smoke", "model.depth=8", f"results_root={tmp_path}",
                 "trainer.max_steps=10", "trainer.eval_every=5"]
    assert run_cli("sweep", *overrides).returncode == 0
    run_dir = Path(compose([*overrides, "model.block=plain"])["run_dir"])
    record = json.loads((run_dir / "config.json").read_text())
    record["semantic"]["optim"]["lr"] = 0.5  # edited by hand: another config now
    rundir.write_json(run_dir / "config.json", record)
    proc = run_cli("sweep", *overrides)
    assert proc.returncode == 1 and "sweep finished: 1 refused, 1 done" in proc.stdout
    assert f"  {run_dir}: refused: {run_dir} holds a run of another config" in proc.stderr


def test_clean_up_removes_only_what_appeared_since_it_looked(tmp_path):
    run_dir, keep = tmp_path / "root" / "run", tmp_path / "root" / "keep"
    (run_dir / ".hydra" / "old").mkdir(parents=True)
    (run_dir / "notes.log").write_text("the user's")
    keep.mkdir()
    before = rundir.before_writing(run_dir)
    (run_dir / ".hydra" / "new").mkdir()
    (run_dir / "resdepth.log").write_text("this command's")
    for record in ("../keep", str(keep), ".hydra/new"):  # a hostile record path deletes nothing
        rundir.remove_made(run_dir, before, record)
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "notes.log"]
    assert [p.name for p in (run_dir / ".hydra").iterdir()] == ["old"] and keep.is_dir()
    fresh = tmp_path / "made" / "by" / "us"
    before = rundir.before_writing(fresh)
    (fresh / ".hydra" / "x").mkdir(parents=True)
    rundir.remove_made(fresh, before, ".hydra/x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_a_run_killed_after_its_last_checkpoint_keeps_its_wall_time(tmp_path):
    cfg = _smoke(tmp_path, "trainer.max_steps=20", "trainer.eval_every=10")
    run_dir = Path(cfg["run_dir"])
    wall = train(cfg)["wall_time_s"]
    _as_if_killed(run_dir)  # after the last checkpoint, before model.pt: nothing left to train
    (run_dir / "model.pt").unlink()
    again = train(cfg)
    assert again["status"] == "done" and again["wall_time_s"] == wall > 0
    assert (run_dir / "model.pt").exists()


def test_a_checkpoint_of_another_net_is_one_line_with_what_to_do(tmp_path):
    runs = {depth: _smoke(tmp_path, f"model.depth={depth}", "trainer.max_steps=10",
                          "trainer.eval_every=10") for depth in (8, 14)}
    for cfg in runs.values():
        train(cfg)
    run_dir = Path(runs[14]["run_dir"])
    _as_if_killed(run_dir)
    (run_dir / "last.ckpt").write_bytes((Path(runs[8]["run_dir"]) / "last.ckpt").read_bytes())
    proc = run_cli("train", "experiment=smoke", "model.depth=14", f"results_root={tmp_path}",
                   "trainer.progress=false", "trainer.max_steps=10", "trainer.eval_every=10")
    failed = [line for line in proc.stderr.splitlines() if "FAILED" in line or "error:" in line]
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 2, proc.stderr
    assert all("holds another net" in line and "mv '" in line for line in failed)


@pytest.mark.parametrize("when", ["in training", "after training"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_run_as_documented_at_any_moment(tmp_path, monkeypatch, capsys,
                                                                  when, signum):
    from resdepth.training import system
    from resdepth.training.train import Interrupted

    cfg = _smoke(tmp_path, "trainer.max_steps=20", "trainer.eval_every=10")
    hook = "take_record" if when == "in training" else "layer_responses"
    original = getattr(system.System, hook)

    def signalled(self, *args):
        os.kill(os.getpid(), signum)  # as `kill` or a closed terminal would, mid-run
        return original(self, *args)

    monkeypatch.setattr(system.System, hook, signalled)
    with pytest.raises(Interrupted) as stopped:
        train(cfg)
    assert stopped.value.exit_code == 128 + signum
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGHUP"
    assert f"stopped by {name}" in capsys.readouterr().err
    monkeypatch.setattr(system.System, hook, original)
    assert train(cfg)["status"] == "done"  # the same command finishes it
