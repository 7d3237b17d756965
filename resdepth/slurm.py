"""A sweep on SLURM: the job array submitted by submitit, then waited on as a whole.

Every job is watched at once with squeue, which needs no accounting database: a job that SLURM
ends without a result (cancelled, timed out for good, its node lost) is noticed within seconds and
recorded for the sweep's summary, which names each unfinished run and the command that resumes it.
The driver prints a line when the jobs' states change; Ctrl-C says the jobs keep running.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from .rundir import COMPLETE, read_json
from .tables import plural
from .sweep import SWEEP_PLAN_ENV, job_packs, record_refusal, run_state, sweep_progress

# states of a job that may still write its result (squeue --states=all)
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"}
ENDED = {"CANCELLED": "cancelled", "TIMEOUT": "timed out", "PREEMPTED": "pre-empted",
         "NODE_FAIL": "node failure", "BOOT_FAIL": "node failure", "OUT_OF_MEMORY": "out of memory",
         "DEADLINE": "deadline", "FAILED": "failed", "COMPLETED": "ended"}
PROGRESS_EVERY_S = 300.0  # the driver's progress line, at least this often while jobs run


class DriverStopped(KeyboardInterrupt):
    """Ctrl-C of a SLURM sweep's driver, once it has said what becomes of the jobs."""

    said = True


def launch(launcher, job_overrides, initial_job_idx: int) -> list[JobReturn]:
    """Submit the jobs as one array (as hydra-submitit-launcher does), wait for all of them, and
    return a JobReturn each, also for a job that ended without one (the sweep's summary says)."""
    logging.getLogger("submitit").addFilter(_once)
    plan = _plan()
    # a finished run, or a job that repeats another's run, would only queue to say so
    skip = {i: JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=state)
            for i, o in enumerate(job_overrides)
            if (state := _settled(plan, initial_job_idx + i))}
    todo = [i for i in range(len(job_overrides)) if i not in skip]
    if skip:
        rest = f"submitting the other {len(todo)}" if todo else "nothing to submit"
        print(f"slurm: {len(skip)} of the {len(job_overrides)} jobs have nothing to train (their "
              f"runs are done, or another job trains them): {rest}", flush=True)
    if not todo:
        return list(skip.values())
    jobs = _submit(launcher, [job_overrides[i] for i in todo],
                   [initial_job_idx + i for i in todo])
    root = Path(os.environ.get(SWEEP_PLAN_ENV, "ROOT/sweep.json")).parent
    print(f"slurm: submitted job array {_arrays(jobs)} ({plural(len(jobs), 'job')}); `squeue -j "
          f"{_arrays(jobs)}` lists them, `resdepth results {shlex.quote(str(root))}` tables what "
          f"they have trained", flush=True)
    try:
        ended = wait(jobs)
    except KeyboardInterrupt:
        raise _stopped(jobs, plan) from None
    returns = dict(skip)
    for i, job in enumerate(jobs):
        num = initial_job_idx + todo[i]
        run_dir = plan[num]["run_dir"] if num < len(plan) else f"job {num}"
        if i in ended:
            state, error = ended[i]
        else:
            try:
                returns[todo[i]] = job.results()[0]
                continue
            except Exception as e:  # the job raised: submitit's errors, e.g. too many time-outs
                lines = [x for x in str(e).splitlines() if x.strip()] or [type(e).__name__]
                state, error = "failed", f"SLURM job {job.job_id}: {lines[-1].strip()}"
        error += f" (its log: {job.paths.stderr})"
        record_refusal(run_dir, error, state)
        returns[todo[i]] = JobReturn(overrides=list(job_overrides[todo[i]]),
                                     status=JobStatus.COMPLETED,
                                     _return_value={"status": state, "error": error})
    return [returns[i] for i in range(len(job_overrides))]


def _settled(plan: list[dict], num: int) -> dict | None:
    """What job `num` would return without training: its run is done or diverged, or an earlier
    job trains its run; None when it has work (or the plan is not this sweep's)."""
    if num >= len(plan):
        return None
    entry = plan[num]
    if entry.get("same_as", num) != num:
        return {"status": "same run", "same_as": entry["same_as"]}
    try:  # a pack's job has work while one of its runs has
        states = [run_state(Path(e["run_dir"])) for e in [entry, *entry.get("others", [])]]
    except ValueError:  # a damaged result.json: the job itself says so
        return None
    return {"status": states[0]} if all(s in COMPLETE for s in states) else None


def _submit(launcher, job_overrides, nums: list[int]) -> list:
    """The job array, as hydra-submitit-launcher's launch submits it (before it waits); `nums`:
    each job's number in the sweep (Hydra's job.num)."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(launcher.params)
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    common = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in common else f"slurm_{k}": v
                                  for k, v in params.items()})
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    job_params = [(list(o), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())
                  for num, o in zip(nums, job_overrides)]
    return executor.map_array(launcher, *zip(*job_params))


def wait(jobs: list) -> dict[int, tuple[str, str]]:
    """Until every job has written its result or left SLURM's queue without one; return, for each
    job that did not write one, (state, one-line error)."""
    pending, ended, gone = dict(enumerate(jobs)), {}, {}
    start, last_poll = time.monotonic(), -math.inf
    last_line, last_print, states = "", 0.0, {}
    while pending:
        now = time.monotonic()
        # squeue: every 2 s at first, then a tenth of the time waited so far, at most every 30 s
        if now - last_poll >= min(30.0, max(2.0, (now - start) / 10)):
            states, last_poll = queue_states({_array(j) for j in pending.values()}), now
            for i, job in list(pending.items()):
                state = states.get(job.job_id, ("", ""))[0] if states is not None else "?"
                gone[i] = 0 if state in ACTIVE or state == "?" else gone.get(i, 0) + 1
                if gone[i] >= 2 and not job.paths.result_pickle.exists():  # twice: it is over
                    ended[i] = _ended(job, state)
                    del pending[i]
        for i, job in list(pending.items()):
            if job.paths.result_pickle.exists():
                del pending[i]
        line = _counts(jobs, pending, ended, states)
        if pending and (line != last_line or now - last_print >= PROGRESS_EVERY_S):
            progress = _progress()
            print(f"slurm: {line}" + (f"; runs: {progress}" if progress else ""), flush=True)
            last_line, last_print = line, now
        if pending:
            time.sleep(1.0)
    return ended


def queue_states(arrays: set[str]) -> dict[str, tuple[str, str]] | None:
    """job id ('12_3') -> (state, reason) of each task SLURM's controller still holds; None when
    squeue cannot answer now (the controller busy or restarting: ask again)."""
    if not arrays:
        return {}
    cmd = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r",
           "--jobs", ",".join(sorted(arrays))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:  # an array the controller has forgotten makes the whole call fail
        return {} if "Invalid job id" in out.stderr else None
    states = {}
    for line in out.stdout.splitlines():
        job, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        states[job] = (state, reason)
    return states


def _ended(job, state: str) -> tuple[str, str]:
    """(the run's state word, one line) for a job that left the queue without a result."""
    if not state:  # forgotten by the controller already: accounting may know
        try:
            state = job.watcher.get_state(job.job_id, mode="force")
        except Exception:
            state = ""
        state = "" if state == "UNKNOWN" else state
    word = ENDED.get(state.split()[0] if state else "", "gone")
    how = f"ended {state}" if state else "left SLURM's queue without a result"
    return word, f"SLURM job {job.job_id} {how} before its run finished"


def _counts(jobs: list, pending: dict, ended: dict, states: dict | None) -> str:
    """'job array 12: 1 running, 2 pending (Resources), 1 ended'."""
    counts: dict[str, int] = {}
    for job in pending.values():
        state, reason = (states or {}).get(job.job_id, ("", ""))
        key = state.lower() or "unknown"
        if state == "PENDING" and reason and reason != "None":
            key += f" ({reason})"
        counts[key] = counts.get(key, 0) + 1
    finished = len(jobs) - len(pending) - len(ended)
    parts = [f"{n} {k}" for k, n in counts.items()] + [f"{finished} returned"] * bool(finished)
    parts += [f"{len(ended)} ended without a result"] * bool(ended)
    return f"job array {_arrays(jobs)}: " + ", ".join(parts)


def _progress() -> str:
    try:
        return sweep_progress(Path(os.environ[SWEEP_PLAN_ENV]))
    except (KeyError, OSError, ValueError):
        return ""


def _plan() -> list[dict]:
    """The plan entry of each job Hydra launches (with packs: each pack's first run)."""
    try:
        sweep = read_json(Path(os.environ[SWEEP_PLAN_ENV]))
        plan = sweep["plan"]
        if "launched" not in sweep:
            return plan
        return [{**plan[i], "same_as": n,
                 "others": [plan[k] for p in job_packs(plan, i) for k in p if k != i]}
                for n, i in enumerate(sweep["launched"])]
    except (KeyError, OSError, ValueError, TypeError, IndexError):
        return []


def _stopped(jobs: list, plan: list[dict]) -> DriverStopped:
    """Ctrl-C while waiting: say that the jobs go on, how to see and cancel them, how to resume."""
    arrays = _arrays(jobs)
    try:
        path = Path(os.environ[SWEEP_PLAN_ENV])
        command, root = read_json(path)["command"], str(path.parent)
    except (KeyError, OSError, ValueError, TypeError):
        command, root = "the same `resdepth sweep` command", "ROOT"
    results = f"resdepth results {shlex.quote(root)}"
    print(f"\nsweep interrupted; its SLURM jobs keep running (job array {arrays}: `squeue -j "
          f"{arrays}` lists them, `scancel {arrays}` cancels them); `{results}` shows what they "
          f"trained, and once they have ended `{command}` resumes what did not finish",
          flush=True)
    return DriverStopped()


def _array(job) -> str:
    return job.job_id.split("_")[0]


def _arrays(jobs: list) -> str:
    return ",".join(sorted({_array(j) for j in jobs}))


class _Once(logging.Filter):
    """submitit's warnings, each kind once (without accounting it warns at every sacct call)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())[:80]
        first = key not in self.seen
        self.seen.add(key)
        return first


_once = _Once()
