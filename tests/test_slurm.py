"""`resdepth sweep hydra/launcher=slurm` against a real SLURM cluster: a sweep, a cancelled job, a
requeue, a pre-emption, a killed or interrupted driver, and a real time limit.

They need SLURM's daemons with accounting (`scripts/slurm.sh up`, as root, starts a single-node
cluster; CI does) and the shared /tmp a single node has; without them they skip, saying why.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from resdepth.analysis.runs import find_results
from resdepth.rundir import read_metrics
from resdepth.training.train import checkpoint_step

from .conftest import REPO, compose, run_cli, wait_for

pytestmark = pytest.mark.slow


def _partition() -> str | None:
    """The default partition of a SLURM cluster with an idle node and accounting, else None."""
    if not shutil.which("sbatch"):
        return None
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True,
                               timeout=20).stdout.split("\n")
        accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True,
                                    timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return None
    usable = [n.split()[0] for n in nodes if re.search(r" (idle|mix)", n)]
    default = [p.rstrip("*") for p in usable if p.endswith("*")]
    return (default or [p.rstrip("*") for p in usable] or [None])[0] if accounting else None


PARTITION = _partition()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    PARTITION is None, reason="no SLURM cluster with accounting here (`scripts/slurm.sh up`, as "
                              "root on Debian, starts one)")]

TINY = ["experiment=smoke", "model.depth=8"]


def _slurm(root: Path, *more: str) -> list[str]:
    """A CPU partition's launcher settings (docs/sweeps.md): no GPU, one core, 1 GB."""
    return [f"results_root={root}", "hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}",
            "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", *more]


def _sweep(args: list[str]) -> subprocess.Popen:
    """`resdepth sweep ARGS` in the background, as a user would leave it running."""
    return subprocess.Popen([sys.executable, "-m", "resdepth.cli", "sweep", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _jobs(root: Path) -> list[str]:
    """The SLURM job ids ('12_0', or '12' for a one-job array) of the sweep under root, in order."""
    folders = sorted((root / ".submitit").glob("*"), key=lambda p: p.stat().st_mtime)
    ids = []
    for f in folders:
        script = f / f"{f.name}_submission.sh"
        array = f.name.split("_")[0]
        if script.exists():
            many = re.search(r"--array=0-(\d+)", script.read_text())
            ids += [f"{array}_{i}" for i in range(int(many.group(1)) + 1)] if many else [array]
    return ids


def _queued(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%T", "-j", job],
                         capture_output=True, text=True).stdout.split()
    return out[0] if out else ""


def _runs(root: Path, *args: str) -> list[Path]:
    """The run directories of TINY's plain and residual net with these overrides."""
    return [Path(compose([*TINY, f"results_root={root}", f"model.block={b}", *args])["run_dir"])
            for b in ("plain", "residual")]


def _rows(run_dir: Path) -> str:
    return repr([{k: v for k, v in row.items() if k != "elapsed_s"}
                 for row in read_metrics(run_dir / "metrics.csv")])


@pytest.fixture(scope="module", autouse=True)
def begin_now():
    """SLURM holds a requeued job for about two minutes (its BeginTime) before it may start again;
    the tests release each one at once, as `scontrol update JobId=J StartTime=now` does."""
    stop = threading.Event()

    def release():
        while not stop.wait(0.5):
            out = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i %r"],
                                 capture_output=True, text=True).stdout
            for job in [line.split()[0] for line in out.splitlines() if "BeginTime" in line]:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"],
                               capture_output=True)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    yield
    stop.set()


@pytest.fixture(scope="module")
def time_limited(tmp_path_factory):
    """A run with a 2-minute time limit, started first and checked last: it trains beside the
    other tests (the node has a core for it), while SLURM signals its jobs and submitit requeues
    them."""
    root = tmp_path_factory.mktemp("time-limited")
    args = [*TINY, "model.block=plain", "optim.milestones=[1000000]", "trainer.max_steps=1000000",
            "trainer.eval_every=100000", *_slurm(root, "hydra.launcher.timeout_min=2",
                                                 "hydra.launcher.signal_delay_s=30")]
    proc = _sweep(args)
    yield root, proc
    if proc.poll() is None:
        for job in _jobs(root):
            subprocess.run(["scancel", job])
        proc.communicate(timeout=600)


def test_a_sweep_on_slurm_has_the_numbers_of_the_local_launcher_and_its_figures(tmp_path,
                                                                                time_limited):
    args = [*TINY, "trainer.max_steps=10", "trainer.eval_every=5"]
    proc = run_cli("sweep", *args, *_slurm(tmp_path / "slurm", "hydra.launcher.timeout_min=5"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sweep finished: 2 done" in proc.stdout
    assert re.search(r"slurm: submitted job array \d+ \(2 jobs\)", proc.stdout)
    # no noise: Lightning's srun hint, or one warning per status call, never reaches the user
    assert "srun" not in proc.stdout + proc.stderr
    assert len(set(proc.stdout.splitlines())) == len(proc.stdout.splitlines())
    assert run_cli("sweep", *args, f"results_root={tmp_path / 'basic'}").returncode == 0
    for on_slurm, basic in zip(_runs(tmp_path / "slurm", "trainer.max_steps=10",
                                     "trainer.eval_every=5"),
                               _runs(tmp_path / "basic", "trainer.max_steps=10",
                                     "trainer.eval_every=5")):
        assert _rows(on_slurm) == _rows(basic)
    plot = run_cli("plot", str(tmp_path / "slurm"))
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert (tmp_path / "slurm" / "figures").is_dir() and list(
        (tmp_path / "slurm" / "figures").glob("*.png"))
    # packed: the array holds one job per pack, and each run trains as it does alone
    packed = run_cli("sweep", *args, "trainer.pack=2",
                     *_slurm(tmp_path / "packed", "hydra.launcher.timeout_min=5"))
    assert packed.returncode == 0, packed.stdout[-3000:] + packed.stderr[-3000:]
    assert re.search(r"slurm: submitted job array \d+ \(1 job\)", packed.stdout)
    # side by side (trainer.streams): one job trains both runs, each in a thread of its own
    side = run_cli("sweep", *args, "trainer.pack=off", "trainer.streams=2",
                   *_slurm(tmp_path / "side", "hydra.launcher.timeout_min=5"))
    assert side.returncode == 0, side.stdout[-3000:] + side.stderr[-3000:]
    assert re.search(r"slurm: submitted job array \d+ \(1 job\)", side.stdout)
    for name in ("packed", "side"):
        for on_slurm, basic in zip(_runs(tmp_path / name, "trainer.max_steps=10",
                                         "trainer.eval_every=5"),
                                   _runs(tmp_path / "basic", "trainer.max_steps=10",
                                         "trainer.eval_every=5")):
            assert _rows(on_slurm) == _rows(basic)


def test_scancel_of_a_job_ends_the_sweep_naming_the_run_and_the_command_that_resumes_it(tmp_path):
    args = [*TINY, "trainer.max_steps=600", "trainer.eval_every=20",
            *_slurm(tmp_path, "hydra.launcher.timeout_min=5")]
    plain, residual = _runs(tmp_path, "trainer.max_steps=600", "trainer.eval_every=20")
    proc = _sweep(args)
    assert wait_for(lambda: checkpoint_step(plain / "last.ckpt") >= 20, timeout=300)
    subprocess.run(["scancel", _jobs(tmp_path)[0]], check=True)  # job 0 trains the plain net
    out, err = proc.communicate(timeout=300)  # bounded: no wait on an empty queue
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    table = out[out.index("results under"):]
    assert re.search(r"ResNet-8 .* 600/600 .* 1 done", table)  # what finished is tabled
    command = "resdepth sweep " + " ".join(args)
    assert f"`{command}` retries them" in err
    line = [x for x in err.splitlines() if x.startswith(f"  {plain}")]
    assert len(line) == 1 and "cancelled: SLURM job" in line[0] and "CANCELLED" in line[0]
    assert re.search(r"checkpoint at iteration \d+ of 600", line[0])
    assert "Traceback" not in err and len(err.splitlines()) == 2  # one line per failure
    again = run_cli("sweep", *args)  # the one command resumes it
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert ": 1 resume, 1 done" in again.stdout and "sweep finished: 2 done" in again.stdout
    assert "1 of the 2 jobs have nothing to train" in again.stdout  # only the cancelled one goes
    assert re.search(r"submitted job array \d+ \(1 job\)", again.stdout)
    assert json.loads((plain / "result.json").read_text())["steps"] == 600
    assert json.loads((residual / "result.json").read_text())["status"] == "done"


def test_requeue_and_preemption_resume_from_a_checkpoint_with_identical_metrics(tmp_path):
    base = [*TINY, "trainer.max_steps=400", "trainer.eval_every=20"]
    proc = _sweep([*base, *_slurm(tmp_path / "slurm", "hydra.launcher.timeout_min=5")])
    plain, residual = _runs(tmp_path / "slurm", "trainer.max_steps=400", "trainer.eval_every=20")
    assert wait_for(lambda: checkpoint_step(plain / "last.ckpt") >= 40, timeout=300)
    requeued, preempted = _jobs(tmp_path / "slurm")
    subprocess.run(["scontrol", "requeue", requeued], check=True)  # an admin's requeue
    assert wait_for(lambda: checkpoint_step(residual / "last.ckpt") >= 40, timeout=300)
    # a pre-emption, as SLURM sends it to a job submitted with --signal (submitit's)
    subprocess.run(["scancel", "--signal=USR2", preempted], check=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "sweep finished: 2 done" in out
    for run_dir in (plain, residual):
        log = (run_dir / "resdepth.log").read_text()
        assert re.search(r"resuming at iteration [1-9]\d*", log), log[-2000:]
        assert "run the same command again" not in log  # SLURM requeues it: no laptop advice
    log = (residual / "resdepth.log").read_text()
    said = re.search(rf"SLURM job {preempted}: .*pre-empted.*; checkpoint written at iteration "
                     rf"(\d+); submitit requeues the job, which resumes from there", log)
    assert said and f"resuming at iteration {said.group(1)}:" in log
    assert run_cli("sweep", *base, f"results_root={tmp_path / 'basic'}").returncode == 0
    for on_slurm, basic in zip((plain, residual), _runs(tmp_path / "basic", "trainer.max_steps=400",
                                                        "trainer.eval_every=20")):
        assert _rows(on_slurm) == _rows(basic)


def test_a_killed_driver_leaves_jobs_that_finish_and_a_rerun_skips_them(tmp_path):
    args = [*TINY, "trainer.max_steps=100", "trainer.eval_every=20",
            *_slurm(tmp_path, "hydra.launcher.timeout_min=5")]
    proc = _sweep(args)
    assert wait_for(lambda: len(_jobs(tmp_path)) == 2, timeout=300)
    proc.kill()
    proc.communicate()
    jobs = _jobs(tmp_path)
    assert wait_for(lambda: all(_queued(j) in ("COMPLETED", "") for j in jobs), timeout=300)
    assert all(r["status"] == "done" for _, r in find_results(tmp_path))
    again = run_cli("sweep", *args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 runs under" in again.stdout and ": 2 done" in again.stdout.splitlines()[0]
    # nothing left to train, so nothing waits in SLURM's queue only to say so
    assert "slurm: 2 of the 2 jobs have nothing to train" in again.stdout
    assert "nothing to submit" in again.stdout and "submitted job array" not in again.stdout


def test_ctrl_c_of_the_driver_says_its_jobs_keep_running_and_how_to_cancel_them(tmp_path):
    args = [*TINY, "trainer.max_steps=100000", "trainer.eval_every=1000",
            *_slurm(tmp_path, "hydra.launcher.timeout_min=5")]
    proc = _sweep(args)
    assert wait_for(lambda: len(_jobs(tmp_path)) == 2 and _queued(_jobs(tmp_path)[0]) == "RUNNING",
                    timeout=300)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    array = _jobs(tmp_path)[0].split("_")[0]
    try:
        assert proc.returncode == 130, out[-2000:] + err[-2000:]
        assert (f"its SLURM jobs keep running (job array {array}: `squeue -j {array}` lists "
                f"them, `scancel {array}` cancels them)") in out
        assert f"resdepth results {tmp_path}" in out and "resumes what did not finish" in out
        assert "sweep interrupted; finished runs are kept" not in err  # said once, for SLURM
        assert _queued(_jobs(tmp_path)[0]) == "RUNNING"  # it keeps running indeed
    finally:
        subprocess.run(["scancel", array])


def test_a_short_time_limit_requeues_jobs_that_each_make_progress(time_limited):
    root, proc = time_limited
    run_dir = Path(compose([*TINY, "model.block=plain", "optim.milestones=[1000000]",
                            "trainer.max_steps=1000000", "trainer.eval_every=100000",
                            f"results_root={root}"])["run_dir"])

    def resumed() -> list[int]:
        log = run_dir / "resdepth.log"
        text = log.read_text() if log.exists() else ""
        return [int(n) for n in re.findall(r"resuming at iteration (\d+)", text)]

    # each job is signalled 30-90 s before its 2-minute limit; the second requeue comes within
    # about 3 minutes of the start, later on a busy machine
    assert wait_for(lambda: len(resumed()) >= 2, timeout=600), proc.poll()
    first, second = resumed()[:2]
    assert 0 < first < second  # every job trained, and the next one went on from there
    log = (run_dir / "resdepth.log").read_text()
    assert log.count("its time limit is near or it is pre-empted (in a job this short submitit "
                     "counts either as a time-out); checkpoint written at iteration") >= 2
    assert re.search(r"submitit requeues the job, which resumes from there; 1[0-9] more "
                     r"time-outs allowed \(hydra.launcher.max_num_timeout\)", log)
