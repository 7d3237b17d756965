"""`resdepth sweep`: the depth x block (x seed) grid as a Hydra multirun, resumable and crash-proof.

Before launching, the grid is expanded exactly as Hydra's basic sweeper does (hydra.sweeper.params from the
config, then the shell's overrides, later ones winning), every config is composed and validated, each distinct
dataset is loaded once (so a missing dataset stops the sweep at once and an image folder is decoded once, not
by every job), and the plan is printed: which runs are done (skipped), which resume, which are new. After the
launcher returns, the grid's statuses are read back from the result.json files (whatever launcher ran them),
the results table is printed and written, and the exit code is non-zero if any run failed.

Imports config, data, device, results, rundir and tables; it runs jobs through the CLI's launcher,
never train's internals.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import HydraException
from omegaconf import OmegaConf

from .config import CONF_DIR
from .config import compose as compose_configs
from .config import one_line_error, validate
from .analysis.results import format_table, write_tables
from .rundir import COMPLETE, append_jsonl, read_json, write_json
from .tables import fmt_time

SWEEP_USAGE = """usage: resdepth sweep [--plan] [KEY=VALUE ...]   (also --config-dir DIR: presets of your own)

The paper's grid (model.depth 110,56,44,32,20 x model.block plain,residual) as a Hydra multirun. A comma list
replaces an axis or adds one; anything else overrides every run. Finished runs are skipped, interrupted ones
resume; the results table is printed at the end.

  resdepth sweep                                         the paper's 10 runs (64k iterations each)
  resdepth sweep experiment=eighth data=cifar10_jpeg     1/8 of the schedule, on the JPEG copy of CIFAR-10
  resdepth sweep model.depth=20,56 seed=0,1,2            other depths, three seeds (mean and std in the table)
  resdepth sweep hydra/launcher=parallel hydra.launcher.n_jobs=4      4 runs at once on this machine
  resdepth sweep experiment=smoke                        a 2 x 2 grid on synthetic data, in seconds
  resdepth sweep --plan model.depth=20,56                check every config and print the plan; train nothing
  resdepth sweep --config-dir my_conf experiment=mine    your own preset, my_conf/experiment/mine.yaml

Every key: `resdepth train --help`; one run's composed config: `resdepth train KEY=VALUE ... --cfg job`."""
CPU_NOTE_STEPS = 10_000  # a sweep with runs this long on a CPU gets a note on what to expect
SWEEP_PLAN_ENV = "RESDEPTH_SWEEP_PLAN"  # the sweep.json whose "plan" each job reads for its progress header
SWEEP_PID_ENV = "RESDEPTH_SWEEP_PID"  # the sweep's process: its parallel workers stop when it is gone


def expand_grid(overrides: list[str]) -> list[list[str]]:
    """The override list of every job of `resdepth sweep overrides`, as Hydra's basic sweeper makes them."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose("config", overrides=fixed, return_hydra_config=True)
    params = OmegaConf.to_container(base.hydra.sweeper.params or {}, resolve=False)
    lines = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    axes: dict[str, list[str]] = {}  # key -> its values as overrides; a later line for a key replaces it in place
    for o in parser.parse_overrides(lines):
        key = o.get_key_element()
        if not o.is_sweep_override():
            axes[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in o.sweep_string_iterator()]
        else:
            raise HydraException(f"{o.input_line}: an interval sweep has no list of values to train; use a list "
                                 f"(a,b,c) or range(start,stop,step)")
    return [list(job) for job in itertools.product(*axes.values())]


CONFIG_DIR_FLAGS = ("--config-dir", "-cd")


def with_config_dirs(argv: list[str]) -> list[str]:
    """argv with each `--config-dir DIR` (`-cd DIR`, `--config-dir=DIR`) turned into an entry of one
    `hydra.searchpath` override, after the entries a given one names: a user's own configs, searched after
    conf/, so DIR/experiment/mine.yaml is `experiment=mine`. Planning and the launched jobs then compose from the
    same search path. ValueError (one line) for a folder that is not there."""
    dirs, rest = [], []
    args = iter(argv)
    for a in args:
        if a in CONFIG_DIR_FLAGS or a.startswith("--config-dir="):
            d = a.partition("=")[2] if "=" in a else next(args, "")
            if not d or not Path(d).expanduser().is_dir():
                raise ValueError(f"{a.partition('=')[0]} {d!r}: no such folder (it holds your own configs, e.g. "
                                 f"DIR/experiment/mine.yaml for experiment=mine)")
            dirs.append(f"file://{Path(d).expanduser().resolve()}")
        else:
            rest.append(a)
    if not dirs:
        return rest
    given = [o for o in rest if o.partition("=")[0] == "hydra.searchpath"]
    if given:  # Hydra reads the first one
        dirs = [*OverridesParser.create().parse_override(given[0]).value(), *dirs]
    quoted = ",".join("'" + d.replace("\\", "\\\\").replace("'", "\\'") + "'" for d in dirs)
    return [*(o for o in rest if o not in given), f"hydra.searchpath=[{quoted}]"]


def _run_overrides(job: list[str]) -> list[str]:
    """A job's overrides that shape its config: Hydra's own settings change no run, but its search path says
    where the configs are."""
    return [o for o in job if not o.startswith("hydra") or o.partition("=")[0] == "hydra.searchpath"]


def longest_first(overrides: list[str]) -> list[str]:
    """A shell depth axis (`model.depth=20,56`) in decreasing depth, as the presets list theirs: Hydra's launchers
    start jobs in grid order, so with fewer workers (or GPU slots) than runs the longest runs start first and the
    short ones fill in at the end, instead of one deep run finishing alone. Other overrides are left as given."""
    out = []
    for line, o in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        value = o.value() if o.key_or_group == "model.depth" and o.is_sweep_override() else None
        if isinstance(value, ChoiceSweep) and all(isinstance(v, int) for v in value.list):
            line = f"{line.split('=', 1)[0]}={','.join(str(v) for v in sorted(value.list, reverse=True))}"
        out.append(line)
    return out


def compose_jobs(grid: list[list[str]]) -> list[dict]:
    """The resolved config (plain dict) of each job (Hydra's own settings left out: they change no run)."""
    jobs = compose_configs(*(_run_overrides(job) for job in grid))
    GlobalHydra.instance().clear()
    return jobs


def run_state(run_dir: Path) -> str:
    """done / diverged (skipped), resume (a checkpoint exists), failed or running (will restart), new."""
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
        return int(read_json(run_dir / "result.json").get("steps") or 0)
    except (OSError, ValueError):
        return 0


def sweep_progress(plan_path: Path, now: dt.datetime | None = None) -> str:
    """'10 (3 finished, 1 failed so far; about 1h05m left)': the sweep's size and state, from its runs'
    result.json files. The time left scales the sweep's elapsed time by the iterations still to train over those
    trained since it started, each weighted by its net's depth (a step costs about that much)."""
    sweep = read_json(plan_path)
    done = failed = 0
    work_done = work_left = 0
    plan = [p for i, p in enumerate(sweep["plan"]) if p.get("same_as", i) == i]  # each run once
    for p in plan:
        result = Path(p["run_dir"]) / "result.json"
        r = read_json(result) if result.exists() else {}
        status, steps = r.get("status"), int(r.get("steps") or 0)
        failed_now = status == "failed" and (r.get("finished") or "") >= sweep["started"]  # not a retry to come
        done += status in COMPLETE
        failed += failed_now
        work_done += p["depth"] * max(steps - p["start_step"], 0)
        if status not in COMPLETE and not failed_now:
            work_left += p["depth"] * max(p["max_steps"] - steps, 0)
    text = f"{len(plan)} ({done} finished, {failed} failed so far"
    elapsed = ((now or dt.datetime.now()) - dt.datetime.fromisoformat(sweep["started"])).total_seconds()
    if work_done and work_left:
        text += f"; about {fmt_time(elapsed * work_left / work_done)} left"
    return text + ")"


def plan_notes(jobs: list[dict], overrides: list[str], devices: list[str], gpus: int) -> list[str]:
    """What to expect, and the faster way where there is one, for a sweep of long runs (`devices`: where each job
    trains, "cpu" or "gpu"; `gpus`: CUDA devices visible). Short sweeps (tests, smoke) get no note."""
    long = [d for j, d in zip(jobs, devices) if j["trainer"]["max_steps"] >= CPU_NOTE_STEPS]
    runs = len({j.get("run_dir", i) for i, j in enumerate(jobs)})  # a repeated run (plain under A,B) once
    notes = []
    if "cpu" in long:
        notes.append(f"no CUDA GPU is used, so these runs train on the CPU ({os.cpu_count()} cores). The paper's "
                     f"whole sweep takes about 70 h on 2 cores that compute bf16 natively (100 h in fp32); "
                     f"`resdepth bench` projects it for this machine, and `make demo` shows the degradation in "
                     f"20-30 min.")
    one_at_a_time = not any(o.split("=")[0].lstrip("+~") in ("hydra/launcher", "hydra.launcher.n_jobs")
                            for o in overrides)
    if "gpu" in long and runs > 1 and one_at_a_time:
        def parallel(k: int) -> str:
            return " ".join(["resdepth sweep", *map(shlex.quote, overrides), "hydra/launcher=parallel",
                             f"hydra.launcher.n_jobs={k}"])

        stop = "Ctrl-C stops this sweep and keeps what it trained; then"
        if gpus > 1:
            notes.append(f"these {runs} runs go one at a time, on one of the {gpus} GPUs here. {stop} "
                         f"`{parallel(gpus)}` trains {gpus} at once, each on its own GPU.")
        else:
            notes.append(f"these {runs} runs go one at a time, and one of these small nets keeps only part of a "
                         f"GPU's cores busy: on an H200, 4 runs at once under NVIDIA MPS had 1.9x the throughput of "
                         f"one (experiments/bench). {stop} `nvidia-cuda-mps-control -d` starts MPS and "
                         f"`{parallel(4)}` trains 4 at once.")
    return notes


def sweep(overrides: list[str], launch: Callable[[list[str]], None]) -> int:
    """Plan, launch and summarise a sweep; return the process exit code."""
    if any(o in ("-h", "--help", "help") for o in overrides):
        print(SWEEP_USAGE)
        return 0
    plan_only = "--plan" in overrides
    given = [o for o in overrides if o != "--plan"]
    try:
        searched = with_config_dirs(given)
    except ValueError as e:
        print(f"resdepth: error: {e}", file=sys.stderr)
        return 2
    flags = [o for o in searched if o.startswith("-")]
    if flags:
        print(f"resdepth: error: resdepth sweep takes KEY=VALUE overrides and --plan only, not {flags[0]!r} "
              f"(and --config-dir DIR for your own configs: resdepth sweep --help; `resdepth train ... --cfg job` "
              f"prints one run's config)", file=sys.stderr)
        return 2
    try:
        overrides = longest_first(searched)
        jobs = compose_jobs(expand_grid(overrides))
    except Exception as e:  # Hydra's own messages for bad keys, types and values
        GlobalHydra.instance().clear()
        print(f"resdepth: error: {one_line_error(e)}", file=sys.stderr)
        return 2
    try:
        states = check_jobs(jobs)
    except ValueError as e:
        print(f"resdepth: error: {e}", file=sys.stderr)
        return 2
    same_as = print_plan(jobs, states, given)
    if plan_only:  # checked and printed; nothing written, nothing trained
        return 0
    command = " ".join(["resdepth sweep", *map(shlex.quote, given)])
    started = record_sweep(jobs, same_as, command)
    try:
        launch(["--multirun", *overrides])
    except SystemExit as e:  # Hydra exits on its own errors (already printed)
        if e.code:
            return int(e.code) if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        print(f"sweep interrupted; finished runs are kept and the others resume from their checkpoints with: "
              f"{command}", file=sys.stderr, flush=True)
        raise
    finally:
        GlobalHydra.instance().clear()
    return summarise(jobs, same_as, started)


def check_jobs(jobs: list[dict]) -> list[str]:
    """Every job's config checked and each distinct dataset loaded once (a missing one stops the sweep before
    anything is written); the state of each job's run directory. ValueError (or DatasetError) with one line."""
    from .data import DataModule, DatasetError
    from .training.device import check

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
        return [run_state(Path(job["run_dir"])) for job in jobs]  # a damaged result.json stops it here
    except DatasetError as e:
        raise ValueError(str(e)) from None


def _one_directory_per_run(jobs: list[dict]) -> None:
    """ValueError when jobs of different configurations would share a run directory (a `run_dir=` override in a
    grid): the sweep would train the first and skip the others as done."""
    from .config import semantic_config

    runs: dict[str, str] = {}
    for job in jobs:
        semantic = json.dumps(semantic_config(job), sort_keys=True)
        if runs.setdefault(job["run_dir"], semantic) != semantic:
            raise ValueError(f"run_dir={job['run_dir']} would hold several configurations of this grid: a sweep "
                             f"trains each in its own directory; drop run_dir (or sweep over results_root)")


def print_plan(jobs: list[dict], states: list[str], given: list[str]) -> list[int]:
    """Print what the sweep will do, run by run, and its notes; return, per job, the job that trains its run."""
    from .training.device import resolve_device

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
        print(f"  {m['block']:>8}-{m['depth']:<4} shortcut {m['shortcut']} seed {job['seed']:<3} {state:<9} "
              f"{job['run_dir']}", flush=True)
    if len(unique) < len(jobs):
        k = len(jobs) - len(unique)
        print(f"note: {k} of these {len(jobs)} jobs {'repeats' if k == 1 else 'repeat'} another's run (a plain net "
              f"has no shortcuts, so model.shortcut does not change it): each run is trained once", flush=True)
    for note in plan_notes(jobs, given, [resolve_device(j["trainer"])[0] for j in jobs], torch.cuda.device_count()):
        print(f"note: {note}", flush=True)
    return same_as


def record_sweep(jobs: list[dict], same_as: list[int], command: str) -> str:
    """Write each root's sweep.json (the plan every job reads for its progress header) and append the command to
    its sweeps.jsonl; point the jobs at the plan; return the start time."""
    roots = sorted({job["results_root"] for job in jobs})
    started = dt.datetime.now().isoformat(timespec="seconds")
    plan = [{"run_dir": j["run_dir"], "depth": j["model"]["depth"], "max_steps": j["trainer"]["max_steps"],
             "start_step": _steps(Path(j["run_dir"])), "same_as": same_as[i],
             "number": sorted(set(same_as)).index(same_as[i]) + 1} for i, j in enumerate(jobs)]
    for root in roots:
        Path(root).mkdir(parents=True, exist_ok=True)
        write_json(Path(root) / "sweep.json", {"command": command, "started": started, "plan": plan,
                                               "runs": [j["run_dir"] for j in jobs if j["results_root"] == root]})
        append_jsonl(Path(root) / "sweeps.jsonl", {"command": command, "started": started})
    os.environ[SWEEP_PLAN_ENV] = str(Path(roots[0]) / "sweep.json")
    os.environ[SWEEP_PID_ENV] = str(os.getpid())
    return started


def watch_sweep(poll_s: float = 1.0) -> None:
    """In a worker process of a local parallel sweep: end this process within about poll_s seconds of the sweep's
    own process ending, even by SIGKILL, so no orphan keeps training and holding its run's lock (the kernel
    releases the lock; the last checkpoint resumes the run)."""
    import threading

    pid = int(os.environ.get(SWEEP_PID_ENV) or 0)
    if not pid or pid == os.getpid():
        return

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                print(f"resdepth: the sweep (process {pid}) is gone: this worker stops; the same sweep command "
                      f"resumes its run", file=sys.stderr, flush=True)
                os._exit(137)
            except PermissionError:  # alive, owned by someone else (a reused pid): keep going
                pass

    threading.Thread(target=watch, name="resdepth-sweep-watch", daemon=True).start()


def summarise(jobs: list[dict], same_as: list[int], started: str) -> int:
    """After the launcher: each root's results table, the sweep's statuses, and exit code 1 if a run did not
    finish (named, with the command that resumes it)."""
    roots = sorted({job["results_root"] for job in jobs})
    run_dirs = [job["run_dir"] for i, job in enumerate(jobs) if same_as[i] == i]
    final = [run_state(Path(d)) for d in run_dirs]
    for root in roots:
        rows = write_tables(Path(root))
        print(f"\nresults under {root} (results.csv, results.md):\n{format_table(rows)}", flush=True)
    summary = {s: final.count(s) for s in dict.fromkeys(final)}
    took = fmt_time((dt.datetime.now() - dt.datetime.fromisoformat(started)).total_seconds())
    print("sweep finished: " + ", ".join(f"{n} {s}" for s, n in summary.items()) + f" in {took}; figures and "
          f"Table 6: {'; '.join(f'resdepth plot {shlex.quote(r)}' for r in roots)}", flush=True)
    failed = [d for d, s in zip(run_dirs, final) if s not in COMPLETE]
    if failed:
        print(f"resdepth: {len(failed)} run(s) did not finish (failed, interrupted or not run); once what an error "
              f"names is fixed, the same command retries them and resumes the interrupted ones:", file=sys.stderr)
        for d in failed:
            error = _error(Path(d))
            print(f"  {d}: {'failed' + error if error else run_state(Path(d))}", file=sys.stderr)
        return 1
    return 0


def _error(run_dir: Path) -> str:
    """': <the error result.json records>' for a failed run, else ''."""
    try:
        error = read_json(run_dir / "result.json").get("error")
    except (OSError, ValueError, AttributeError):
        return ""
    return f": {error}" if error else ""
