"""The depth x block (x seed) grid as a Hydra multirun: planned, checked, launched, tabled.

Before launching, every job's config is composed and checked and each distinct dataset is loaded
once, so a bad value or a missing dataset stops the sweep before anything is written. After the
launcher returns, the statuses are read back from the result.json files, whatever launcher ran them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from .analysis.results import format_table, write_tables
from .config import (check_hydra, compose, composed, one_line_error, pack_size, semantic_config,
                     validate)
from .data import DataModule, DatasetError
from .rundir import COMPLETE, append_jsonl, before_writing, read_json, read_text, write_json
from .tables import fmt_time
from .training.device import check, resolve_device
from .training.pack import plan_packs
from .training.train import DEADLINE_ENV, CorruptCheckpoint, checkpoint_step

CPU_NOTE_STEPS = 10_000  # a sweep with runs this long on a CPU gets a note on what to expect
SWEEP_PLAN_ENV = "RESDEPTH_SWEEP_PLAN"  # the sweep.json whose "plan" each job reads for its header
SWEEP_PID_ENV = "RESDEPTH_SWEEP_PID"  # the sweep's process: its parallel workers stop with it


def _sweeper_params(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.hydra.sweeper.params or {}, resolve=False)


def expand_grid(overrides: list[str]) -> list[list[str]]:
    """The override list of every job of `resdepth sweep overrides`, as Hydra's basic sweeper makes
    them: hydra.sweeper.params first, then the shell's overrides, a later line for a key winning."""
    # By hand from Hydra's override parser, not BasicSweeper: every job is planned and checked
    # before the launch, and BasicSweeper yields its jobs only while it launches them.
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    params = composed([fixed], _sweeper_params, hydra_settings=True)[0]
    lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    axes: dict[str, list[str]] = {}  # key -> its values as overrides; a later line replaces it
    for o in parser.parse_overrides(lines):
        key = o.get_key_element()
        if not o.is_sweep_override():
            axes[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in o.sweep_string_iterator()]
        else:
            raise HydraException(f"{o.input_line}: an interval sweep has no list of values to "
                                 f"train; use a list (a,b,c) or range(start,stop,step)")
    return [list(job) for job in itertools.product(*axes.values())]


def _run_overrides(job: list[str]) -> list[str]:
    """A job's overrides that shape its config: Hydra's settings change no run; its search path
    does."""
    return [o for o in job
            if not o.startswith("hydra") or o.partition("=")[0] == "hydra.searchpath"]


def longest_first(overrides: list[str]) -> list[str]:
    """A shell depth axis (`model.depth=20,56`) in decreasing depth; other overrides as given.

    Hydra's launchers start jobs in grid order, so with fewer workers than runs the longest runs
    start first and the short ones fill in at the end, instead of one deep run finishing alone.
    """
    out = []
    for line, o in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        value = o.value() if o.key_or_group == "model.depth" and o.is_sweep_override() else None
        if isinstance(value, ChoiceSweep) and all(isinstance(v, int) for v in value.list):
            depths = ",".join(str(v) for v in sorted(value.list, reverse=True))
            line = f"{line.split('=', 1)[0]}={depths}"
        out.append(line)
    return out


def compose_jobs(grid: list[list[str]]) -> list[dict]:
    """The resolved config (plain dict) of each job, without Hydra's own settings."""
    return compose(*(_run_overrides(job) for job in grid))


def run_state(run_dir: Path) -> str:
    """done / diverged (skipped), resume (a checkpoint), failed or running (restarts), new."""
    result = run_dir / "result.json"
    record = read_json(result) if result.exists() else {}
    if not isinstance(record, dict):
        raise ValueError(f"{result} is not a run record (a JSON object); fix it or move it away")
    status = record.get("status")
    if status in COMPLETE:
        return status
    if (run_dir / "last.ckpt").exists():
        return "resume"
    return status or "new"


def _steps(run_dir: Path) -> int:
    try:
        return int(_record(run_dir).get("steps") or 0)
    except ValueError:
        return 0


def sweep_progress(plan_path: Path, now: dt.datetime | None = None) -> str:
    """'10 (3 finished, 1 failed so far; about 1h05m left)', from the runs' result.json files.

    The time left scales the elapsed time by the iterations still to train over those trained since
    the start, each weighted by its net's depth (a step costs about that much).
    """
    sweep = read_json(plan_path)
    done = failed = 0
    work_done = work_left = 0
    plan = [p for i, p in enumerate(sweep["plan"]) if p.get("same_as", i) == i]  # each run once
    for p in plan:
        result = Path(p["run_dir"]) / "result.json"
        r = read_json(result) if result.exists() else {}
        status, steps = r.get("status"), int(r.get("steps") or 0)
        # a run that failed before this sweep started is a retry to come
        failed_now = status == "failed" and (r.get("finished") or "") >= sweep["started"]
        done += status in COMPLETE
        failed += failed_now
        work_done += p["depth"] * max(steps - p["start_step"], 0)
        if status not in COMPLETE and not failed_now:
            work_left += p["depth"] * max(p["max_steps"] - steps, 0)
    text = f"{len(plan)} ({done} finished, {failed} failed so far"
    started = dt.datetime.fromisoformat(sweep["started"])
    elapsed = ((now or dt.datetime.now()) - started).total_seconds()
    if work_done and work_left:
        text += f"; about {fmt_time(elapsed * work_left / work_done)} left"
    return text + ")"


def launched_jobs(plan_path: Path) -> list[list[str]]:
    """The override lists of the jobs a sweep with packs launches: one per pack."""
    sweep = read_json(plan_path)
    return [sweep["plan"][i]["overrides"] for i in sweep["launched"]]


def plan_entries(plan_path: Path, num: int) -> tuple[list[dict], int]:
    """The plan and the index in it of Hydra's job `num` (with packs, only some are launched)."""
    sweep = read_json(plan_path)
    return sweep["plan"], sweep["launched"][num] if "launched" in sweep else num


def job_header(plan_path: Path, num: int, run_dir: str) -> tuple[str, int, list[list[dict]]]:
    """The line sweep job `num` prints first, the job that trains its run (num, or an earlier
    job's when both are the same run), and the packs it trains side by side (plan entries): its
    own pack first, without its own run."""
    try:
        plan, i = plan_entries(plan_path, num)
        number, same_as = plan[i].get("number", i + 1), plan[i].get("same_as", i)
        if not plan[i]["run_dir"] == plan[same_as]["run_dir"] == run_dir:  # another sweep's plan
            number, same_as, i = num + 1, num, num
        else:
            packs = job_packs(plan, i)
            group = [[plan[k] for k in p if k != i] for p in packs]
            number = ", ".join("+".join(str(plan[k]["number"]) for k in p) for p in packs)
        state = sweep_progress(plan_path)
    except (OSError, ValueError, KeyError, IndexError) as e:  # a courtesy: never stop a run for it
        number, same_as, i, state = num + 1, num, num, f"progress unknown: {e}"
        group = [[]]
    if same_as != i:  # e.g. a plain net under model.shortcut=A,B: one run, trained once
        return (f"=== run {number} again (sweep job {num + 1}): the same run as job {same_as + 1}, "
                f"trained once there ===", same_as, [[]])
    what = (f"runs {number} side by side" if len(group) > 1 else
            f"runs {number} as one pack" if group[0] else f"run {number}")
    return f"=== {what}/{state} ===", num, group


def job_packs(plan: list[dict], i: int) -> list[list[int]]:
    """The packs (plan indices) that the job launched for plan entry `i` trains side by side."""
    return plan[i].get("job") or [plan[i].get("pack", [i])]


def _parallel_note(runs: int, gpus: int, overrides: list[str]) -> str:
    def parallel(k: int) -> str:
        return " ".join(["resdepth sweep", *map(shlex.quote, overrides), "hydra/launcher=parallel",
                         f"hydra.launcher.n_jobs={k}"])

    stop = "Ctrl-C stops this sweep and keeps what it trained; then"
    if gpus > 1:
        return (f"these {runs} runs go one at a time, on one of the {gpus} GPUs here. {stop} "
                f"`{parallel(gpus)}` trains {gpus} at once, each on its own GPU.")
    return (f"these {runs} runs go one at a time, and one of these small nets keeps only part of "
            f"a GPU's cores busy: on an H200, 4 runs at once under NVIDIA MPS had 1.9x the "
            f"throughput of one (experiments/bench). {stop} `nvidia-cuda-mps-control -d` starts "
            f"MPS and `{parallel(4)}` trains 4 at once.")


def plan_notes(jobs: list[dict], overrides: list[str], devices: list[str], gpus: int) -> list[str]:
    """What to expect, and the faster way where there is one, for a sweep of long runs.

    `devices`: where each job trains ("cpu" or "gpu"); `gpus`: CUDA devices visible. Short sweeps
    (tests, smoke) get no note.
    """
    long = [d for j, d in zip(jobs, devices) if j["trainer"]["max_steps"] >= CPU_NOTE_STEPS]
    runs = len({j.get("run_dir", i) for i, j in enumerate(jobs)})  # a repeated run counts once
    notes = []
    launcher_keys = ("hydra/launcher", "hydra.launcher.n_jobs")
    one_at_a_time = not any(o.split("=")[0].lstrip("+~") in launcher_keys for o in overrides)
    if "cpu" in long:
        k = min(os.cpu_count() or 1, runs, 4)
        faster = (f" One CPU thread per run is the default (trainer.threads): `resdepth sweep "
                  f"{' '.join(overrides)} hydra/launcher=parallel hydra.launcher.n_jobs={k}` "
                  f"trains {k} at once (on 2 cores, 2 at once gave 1.86x the images/s of one; "
                  f"docs/sweeps.md)." if one_at_a_time and k > 1 else "")
        notes.append(f"no CUDA GPU is used, so these runs train on the CPU ({os.cpu_count()} "
                     f"cores). The paper's whole sweep takes about 72 h on 2 cores that compute "
                     f"bf16 natively, 2 runs at once (133 h one at a time); `resdepth bench` "
                     f"projects it for this machine, and `make demo` shows the degradation in "
                     f"about 23 min on 2 cores." + faster)
    if "gpu" in long and runs > 1 and one_at_a_time:
        notes.append(_parallel_note(runs, gpus, overrides))
    return notes


def sweep(overrides: list[str], launch: Callable[[list[str]], None], *, plan: bool = False,
          command: list[str] | None = None, time_limit: float | None = None) -> int:
    """Plan, launch (unless `plan`) and table the grid of `overrides`; return the exit code.

    `command`: the arguments as the user typed them (default: overrides), recorded in sweep.json.
    `time_limit`: seconds from now after which every run stops at a checkpoint (exit 143).
    """
    if time_limit is None:
        return _sweep(overrides, launch, plan, command, None)
    os.environ[DEADLINE_ENV] = str(time.time() + time_limit)  # every job reads it, in any process
    try:
        return _sweep(overrides, launch, plan, command, time_limit)
    finally:
        os.environ.pop(DEADLINE_ENV, None)


def _sweep(overrides: list[str], launch: Callable[[list[str]], None], plan: bool,
           command: list[str] | None, time_limit: float | None) -> int:
    given = list(overrides if command is None else command)
    try:
        overrides, jobs, states = plan_sweep(overrides)
    except ValueError as e:
        print(f"resdepth: error: {e}", file=sys.stderr)
        return 2
    same_as = print_plan(jobs, states, given)
    packs = sweep_packs(jobs, same_as, states)
    if note := pack_note(jobs, packs):
        print(f"note: {note}", flush=True)
    groups = side_by_side(jobs, packs, states)
    if note := side_by_side_note(jobs, packs, groups):
        print(f"note: {note}", flush=True)
    if time_limit is not None:
        note = budget_note(jobs, same_as, time_limit, packs)
        if any(len(g) > 1 for g in groups):
            note += " (packs side by side counted one after another: they may get further)"
        print(f"note: {note}", flush=True)
    if plan:  # checked and printed; nothing written, nothing trained
        return 0
    command_line = " ".join(["resdepth sweep", *map(shlex.quote, given)])
    started = record_sweep(jobs, same_as, command_line, groups, expand_grid(overrides))
    # a pack, or packs side by side, is one job, whatever the launcher: the plan's sweeper
    # launches the planned jobs
    sweeper = ["hydra/sweeper=plan"] if any(sum(map(len, g)) > 1 for g in groups) else []
    try:
        launch(["--multirun", *sweeper, *overrides])
    except SystemExit as e:  # Hydra exits on its own errors (already printed)
        if e.code:
            return int(e.code) if isinstance(e.code, int) else 1
    except KeyboardInterrupt as e:
        if not getattr(e, "said", False):  # a cluster's driver says what its jobs do
            print(f"sweep interrupted; finished runs are kept and the others resume from their "
                  f"checkpoints with: {command_line}", file=sys.stderr, flush=True)
        raise
    code = print_summary(jobs, same_as, started, command_line)
    if code and time_limit is not None and time.time() >= float(os.environ[DEADLINE_ENV]):
        print(f"resdepth: the sweep's time limit ({fmt_time(time_limit)}) is spent: the runs above "
              f"stopped at a checkpoint or did not start; `{command_line}` goes on from there",
              file=sys.stderr, flush=True)
        return 143  # as for SIGTERM
    return code


def plan_sweep(overrides: list[str]) -> tuple[list[str], list[dict], list[str]]:
    """The grid's overrides (deepest first), its jobs' configs, all checked, and the state of each
    job's run directory. ValueError with one line."""
    try:
        overrides = longest_first(overrides)
        grid = expand_grid(overrides)
        jobs = compose_jobs(grid)
        settings = composed(grid, hydra_settings=True,
                            read=lambda c: OmegaConf.to_container(c.hydra, resolve=False))
    except Exception as e:  # Hydra's own messages for bad keys, types and values
        raise ValueError(one_line_error(e)) from None
    for hydra, job in zip(settings, jobs):
        check_hydra(hydra)
        check_time_limit(hydra["launcher"], job)
    return overrides, jobs, check_jobs(jobs)


SIGNAL_EARLY_S = 60  # SLURM sends a job's --signal up to a minute before the time asked (sbatch)
JOB_START_S = 30  # from a job's start to its run's first iteration: imports, dataset, first step
STOP_S = 10  # after the signal: the iteration in progress, a checkpoint, submitit's requeue


def check_time_limit(launcher: dict, job: dict) -> None:
    """For a SLURM job: ValueError (one line) when SLURM could send the signal that precedes its
    time limit before its run has trained, or too late to write a checkpoint. Every requeue would
    then start from the same checkpoint, with nothing trained: a loop, max_num_timeout times."""
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return
    limit, delay = 60 * int(launcher["timeout_min"]), int(launcher["signal_delay_s"])
    first = limit - delay - SIGNAL_EARLY_S  # the earliest the signal may come
    if delay < STOP_S:
        raise ValueError(f"hydra.launcher.signal_delay_s={delay}: after SLURM's signal a job "
                         f"needs about {STOP_S} s to finish its iteration and write its "
                         f"checkpoint before the time limit; use {STOP_S} or more")
    if first < JOB_START_S:
        fits = limit - SIGNAL_EARLY_S - JOB_START_S
        other = f", or signal_delay_s={fits} or less" if fits >= STOP_S else ""
        raise ValueError(
            f"hydra.launcher.timeout_min={limit // 60} with signal_delay_s={delay}: SLURM may "
            f"signal a job {max(first, 0)} s after it starts (signal_delay_s before the limit, "
            f"and up to {SIGNAL_EARLY_S} s earlier still), before its run has trained (a job "
            f"takes about {JOB_START_S} s to start); each requeue would start over with nothing "
            f"trained. Use timeout_min={-(-(delay + SIGNAL_EARLY_S + JOB_START_S) // 60)} or "
            f"more{other}")
    record = _record(Path(job["run_dir"]))  # a run that trained before: its pace is known
    steps, seconds = int(record.get("steps") or 0), float(record.get("wall_time_s") or 0)
    if steps and seconds and record.get("status") not in COMPLETE:
        per_job = max(int((limit - delay - JOB_START_S) * steps / seconds), 1)
        jobs = -(-(job["trainer"]["max_steps"] - steps) // per_job)
        if jobs - 1 > int(launcher["max_num_timeout"]):
            raise ValueError(
                f"{job['run_dir']}: at its pace so far ({steps / seconds:.3g} it/s) a job of "
                f"timeout_min={limit // 60} trains about {per_job} iterations, so the "
                f"{job['trainer']['max_steps'] - steps} left need {jobs} jobs, more than "
                f"hydra.launcher.max_num_timeout={launcher['max_num_timeout']} requeues allow; "
                f"raise timeout_min or max_num_timeout")


def budget_note(jobs: list[dict], same_as: list[int], limit_s: float,
                packs: list[list[int]] | None = None) -> str:
    """Which runs finish inside a time limit, one pack (or run) after another in the plan's
    order, by the pace each run has shown (or, for one not trained yet, the median pace per layer
    of those that have: a step costs about its depth); a pack's runs advance together."""
    runs = [i for i in range(len(jobs)) if same_as[i] == i]
    number = {i: n for n, i in enumerate(runs, 1)}
    records = {i: _record(Path(jobs[i]["run_dir"])) for i in runs}
    paces = {i: float(r.get("wall_time_s") or 0) / int(r["steps"]) if r.get("steps") else 0.0
             for i, r in records.items()}
    per_layer = [paces[i] / jobs[i]["model"]["depth"] for i in runs if paces[i] > 0]
    head = f"time limit {fmt_time(limit_s)}"
    if not per_layer:
        return (f"{head}: no run of this sweep has trained yet, so none has a pace; when the "
                f"limit is spent every run stops at a checkpoint and the same command goes on")
    unit, spent, finish = statistics.median(per_layer), 0.0, []
    for pack in packs or [[i] for i in runs]:
        todo = [i for i in pack if records[i].get("status") not in COMPLETE]
        if not todo:
            continue
        pace = max(paces[i] or unit * jobs[i]["model"]["depth"] for i in todo)
        steps = {i: int(records[i].get("steps") or 0) for i in todo}
        left = max(jobs[i]["trainer"]["max_steps"] - steps[i] for i in todo)
        if spent + left * pace > limit_s:
            names = ", ".join(map(str, finish))
            done = ("" if not finish else f"run {names} finishes inside it, and "
                    if len(finish) == 1 else f"runs {names} finish inside it, and ")
            i = todo[0]
            who = f"run {number[i]}" if len(todo) == 1 else (
                f"runs {'+'.join(str(number[k]) for k in todo)} (one pack)")
            reach = steps[i] + int((limit_s - spent) / pace)
            verb = "reaches" if len(todo) == 1 else "reach"
            return (f"{head}: by the pace of this sweep's runs so far, {done}{who} {verb} "
                    f"about iteration {reach} of {jobs[i]['trainer']['max_steps']}; the rest "
                    f"waits for the next call of the same command")
        spent += left * pace
        finish += [number[i] for i in todo]
    return f"{head}: by the pace of this sweep's runs so far, every run finishes inside it"


def _record(run_dir: Path) -> dict:
    """A run's result.json, or {} where there is none, or none that can be read."""
    try:
        record = read_json(run_dir / "result.json")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_jobs(jobs: list[dict]) -> list[str]:
    """Every job's config checked and each distinct dataset loaded once; each run directory's state.

    ValueError (one line) for a bad config, a missing dataset or a damaged result.json.
    """
    try:
        for job in jobs:
            validate(job)
            check(job["trainer"])
        _one_directory_per_run(jobs)
        seen = set()
        for job in jobs:
            key = json.dumps(job["data"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                DataModule(job["data"], batch_size=job["optim"]["batch_size"], seed=0).load()
        return [run_state(Path(job["run_dir"])) for job in jobs]
    except DatasetError as e:
        raise ValueError(str(e)) from None


def _one_directory_per_run(jobs: list[dict]) -> None:
    """ValueError when jobs of different configs would share a run directory (a `run_dir=`
    override): the sweep would train the first and skip the others as done."""
    runs: dict[str, str] = {}
    for job in jobs:
        semantic = json.dumps(semantic_config(job), sort_keys=True)
        if runs.setdefault(job["run_dir"], semantic) != semantic:
            raise ValueError(f"run_dir={job['run_dir']} would hold several configurations of this "
                             f"grid: a sweep trains each in its own directory; drop run_dir (or "
                             f"sweep over results_root)")


def print_plan(jobs: list[dict], states: list[str], given: list[str]) -> list[int]:
    """Print what the sweep will do, run by run, and its notes; return, per job, the job that trains
    its run."""
    roots = sorted({job["results_root"] for job in jobs})
    first = {}  # run_dir -> the index of the first job that trains it
    same_as = [first.setdefault(job["run_dir"], i) for i, job in enumerate(jobs)]
    unique = [s for i, s in enumerate(states) if same_as[i] == i]
    counts = {s: unique.count(s) for s in dict.fromkeys(unique)}
    print(f"sweep: {len(unique)} runs under {', '.join(roots)}: "
          + ", ".join(f"{n} {s}" for s, n in counts.items()), flush=True)
    for i, (job, state) in enumerate(zip(jobs, states)):
        m = job["model"]
        state = state if same_as[i] == i else f"the same run as run {same_as[i] + 1}"
        print(f"  {m['block']:>8}-{m['depth']:<4} shortcut {m['shortcut']} seed {job['seed']:<3} "
              f"{state:<9} {job['run_dir']}", flush=True)
    if len(unique) < len(jobs):
        k = len(jobs) - len(unique)
        verb = "repeats" if k == 1 else "repeat"
        print(f"note: {k} of these {len(jobs)} jobs {verb} another's run (a plain net has no "
              f"shortcuts, so model.shortcut does not change it): each run is trained once",
              flush=True)
    devices = [resolve_device(j["trainer"])[0] for j in jobs]
    for note in plan_notes(jobs, given, devices, torch.cuda.device_count()):
        print(f"note: {note}", flush=True)
    return same_as


def job_before(plan_path: Path, num: int, run_dir: str) -> dict | None:
    """What job `num`'s run directory held before the sweep (rundir.before_writing), or None when
    the plan is not this sweep's or cannot be read."""
    try:
        plan, i = plan_entries(plan_path, num)
        entry = plan[i]
        return entry["before"] if entry["run_dir"] == run_dir else None
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def sweep_packs(jobs: list[dict], same_as: list[int], states: list[str]) -> list[list[int]]:
    """The jobs (indices) that train together, one pack each (trainer.pack; a run done, or one
    whose checkpoint is damaged, alone), over the jobs that train a run of their own."""
    runs = [i for i in range(len(jobs)) if same_as[i] == i]
    most = [1 if states[i] in COMPLETE else
            pack_size(jobs[i]["trainer"], resolve_device(jobs[i]["trainer"])[0]) for i in runs]
    starts = []
    for i in runs:
        try:
            starts.append(checkpoint_step(Path(jobs[i]["run_dir"]) / "last.ckpt"))
        except CorruptCheckpoint:
            starts.append(("damaged", i))
    return [[runs[k] for k in p] for p in plan_packs([jobs[i] for i in runs], most, starts)]


def side_by_side(jobs: list[dict], packs: list[list[int]],
                 states: list[str]) -> list[list[list[int]]]:
    """The packs grouped into jobs, in the plan's order (the deepest nets first): up to
    trainer.streams packs on one device side by side in one process, each on its own CUDA stream
    (on a CPU, its own thread); a pack whose runs are all done, in a job of its own."""
    groups: list[list[list[int]]] = []
    last_open = False
    for p in packs:
        done = all(states[i] in COMPLETE for i in p)
        first = groups[-1][0][0] if groups else None
        if (last_open and not done and len(groups[-1]) < jobs[first]["trainer"]["streams"]
                and resolve_device(jobs[p[0]]["trainer"])[0]
                == resolve_device(jobs[first]["trainer"])[0]):
            groups[-1].append(p)
        else:
            groups.append([p])
            last_open = not done
    return groups


def _numbers(packs: list[list[int]]) -> dict[int, int]:
    """Each job's run number, as the plan prints it."""
    return {i: n + 1 for n, i in enumerate(sorted(i for p in packs for i in p))}


def side_by_side_note(jobs: list[dict], packs: list[list[int]],
                      groups: list[list[list[int]]]) -> str | None:
    """Which packs train side by side, or None when none do."""
    shared = [g for g in groups if len(g) > 1]
    if not shared:
        return None
    number = _numbers(packs)
    which = "; ".join(", ".join("+".join(str(number[i]) for i in p) for p in g) for g in shared)
    cfg = jobs[shared[0][0][0]]
    how = ("each on its own CUDA stream" if resolve_device(cfg["trainer"])[0] == "gpu" else
           "each in its own thread, sharing this CPU's cores")
    return (f"side by side in one process (trainer.streams={cfg['trainer']['streams']}), {how}: "
            f"{which}; each trains as it would alone (docs/sweeps.md#packs-side-by-side)")


def pack_note(jobs: list[dict], packs: list[list[int]]) -> str | None:
    """What trains as one net, or None when no run shares a pack."""
    shared = [p for p in packs if len(p) > 1]
    if not shared:
        return None
    number = _numbers(packs)
    which = ", ".join("+".join(str(number[i]) for i in p) for p in shared)
    size = jobs[shared[0][0]]["trainer"]["pack"]
    return (f"runs {which} train as one wide net per pack (trainer.pack={size}), one job per "
            f"pack; each run keeps its own directory, records and checkpoint, and trains as it "
            f"would alone (docs/sweeps.md#packed-runs-several-runs-as-one-wide-net)")


def record_sweep(jobs: list[dict], same_as: list[int], command: str,
                 groups: list[list[list[int]]] | None = None,
                 grid: list[list[str]] | None = None) -> str:
    """Write each root's sweep.json (the plan each job reads for its header; with packs, the jobs
    to launch), append the command to its sweeps.jsonl, point the jobs at the plan; return the
    start time."""
    roots = sorted({job["results_root"] for job in jobs})
    started = dt.datetime.now().isoformat(timespec="seconds")
    numbers = sorted(set(same_as))
    plan = [{"run_dir": j["run_dir"], "depth": j["model"]["depth"],
             "max_steps": j["trainer"]["max_steps"], "start_step": _steps(Path(j["run_dir"])),
             "same_as": same_as[i], "number": numbers.index(same_as[i]) + 1,
             "before": before_writing(Path(j["run_dir"]))}
            for i, j in enumerate(jobs)]
    extra = {}
    if groups and grid and any(sum(map(len, g)) > 1 for g in groups):
        for group in groups:
            for p in group:
                for i in p:
                    plan[i]["pack"] = p
                    if len(p) > 1 or len(group) > 1:
                        plan[i]["config"] = jobs[i]
            first = group[0][0]
            plan[first]["overrides"] = grid[first]
            if len(group) > 1:
                plan[first]["job"] = group
        extra["launched"] = [g[0][0] for g in groups]  # Hydra's job.num -> its plan entry
    for root in roots:
        Path(root).mkdir(parents=True, exist_ok=True)
        runs = [j["run_dir"] for j in jobs if j["results_root"] == root]
        write_json(Path(root) / "sweep.json", {"command": command, "started": started,
                                               "plan": plan, "runs": runs, **extra})
        append_jsonl(Path(root) / "sweeps.jsonl", {"command": command, "started": started})
    os.environ[SWEEP_PLAN_ENV] = str(Path(roots[0]) / "sweep.json")
    os.environ[SWEEP_PID_ENV] = str(os.getpid())
    return started


def watch_sweep(poll_s: float = 1.0) -> None:
    """In a worker of a local parallel sweep: end this process within about poll_s seconds of the
    sweep's process ending, even by SIGKILL, so no orphan keeps training and holding its run's lock
    (the kernel releases the lock; the last checkpoint resumes the run)."""
    pid = int(os.environ.get(SWEEP_PID_ENV) or 0)
    if not pid or pid == os.getpid():
        return

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"resdepth: the sweep (process {pid}) is gone: this worker stops; the same "
                      f"sweep command resumes its run", file=sys.stderr, flush=True)
                os._exit(137)
            except PermissionError:  # alive, owned by someone else (a reused pid): keep going
                pass

    threading.Thread(target=watch, name="resdepth-sweep-watch", daemon=True).start()


REFUSED = "sweep-refused.jsonl"  # beside sweep.json: each job refused, with its sweep's start


def record_refusal(run_dir: str, error: str, state: str = "refused") -> None:
    """Note a job refused (or, on a cluster, ended without finishing its run: `state` says how)
    beside its sweep's plan, so the summary names it and the sweep fails."""
    plan = Path(os.environ.get(SWEEP_PLAN_ENV, ""))
    try:
        started = read_json(plan)["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a sweep of ours: the job's own line on stderr is all there is
    append_jsonl(plan.with_name(REFUSED), {"started": started, "run_dir": run_dir, "error": error,
                                           "state": state})


def _refusals(started: str) -> dict[str, tuple[str, str]]:
    """run_dir -> (state, error) of the jobs of the sweep started at `started` that were refused
    or ended without finishing their run."""
    path = Path(os.environ.get(SWEEP_PLAN_ENV, "")).with_name(REFUSED)
    try:
        lines = read_text(path).splitlines()
    except (OSError, ValueError):
        return {}
    found = {}
    for line in lines:
        try:
            entry = json.loads(line)
            if entry["started"] == started:
                found[entry["run_dir"]] = (str(entry.get("state", "refused")), entry["error"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn or foreign line
    return found


def print_summary(jobs: list[dict], same_as: list[int], started: str, command: str) -> int:
    """After the launcher: print each root's results table and the sweep's statuses; return 1 (the
    unfinished runs named, with how to resume them) if a run did not finish, else 0."""
    roots = sorted({job["results_root"] for job in jobs})
    run_dirs = [job["run_dir"] for i, job in enumerate(jobs) if same_as[i] == i]
    refused = _refusals(started)
    final = [run_state(Path(d)) for d in run_dirs]
    # a refused job trained nothing; a cluster job that ended after its run finished did its work
    final = [refused[d][0] if d in refused and (refused[d][0] == "refused" or s not in COMPLETE)
             else s for d, s in zip(run_dirs, final)]
    for root in roots:
        rows = write_tables(Path(root))
        print(f"\nresults under {root} (results.csv, results.md):\n{format_table(rows)}",
              flush=True)
    summary = {s: final.count(s) for s in dict.fromkeys(final)}
    took = fmt_time((dt.datetime.now() - dt.datetime.fromisoformat(started)).total_seconds())
    plots = "; ".join(f"resdepth plot {shlex.quote(r)}" for r in roots)
    print("sweep finished: " + ", ".join(f"{n} {s}" for s, n in summary.items())
          + f" in {took}; figures and Table 6: {plots}", flush=True)
    failed = [d for d, s in zip(run_dirs, final) if s not in COMPLETE]
    steps = {job["run_dir"]: job["trainer"]["max_steps"] for job in jobs}
    if not failed:
        return 0
    print(f"resdepth: {len(failed)} run(s) did not finish (failed, interrupted or not run); once "
          f"what an error names is fixed, `{command}` retries them and resumes each from its "
          f"checkpoint:", file=sys.stderr)
    for d, state in zip(run_dirs, final):
        if state in COMPLETE:
            continue
        error = f": {refused[d][1]}" if d in refused else _error(Path(d))
        state = "failed" if error and d not in refused else state
        print(f"  {d}: {state + error}{_at(Path(d), steps[d])}", file=sys.stderr)
    return 1


def _at(run_dir: Path, max_steps: int) -> str:
    """'; checkpoint at iteration 220 of 3000' for a run with a checkpoint, else ''."""
    try:
        step = checkpoint_step(run_dir / "last.ckpt")
    except CorruptCheckpoint:
        return ""
    return f"; checkpoint at iteration {step} of {max_steps}" if step else ""


def _error(run_dir: Path) -> str:
    """': <the error result.json records>' for a failed run, else ''."""
    error = _record(run_dir).get("error")
    return f": {error}" if error else ""
