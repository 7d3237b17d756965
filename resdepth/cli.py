"""The `resdepth` command: train | sweep | results | plot | bench.

  resdepth train [KEY=VALUE ...]      one run (Hydra overrides; --cfg job prints the composed config)
  resdepth sweep [KEY=VALUE ...]      the depth x block (x seed) grid as a Hydra multirun; resumable
                                      (--plan: check every config and print the plan, train nothing)
  resdepth results [ROOT]             rebuild the results table from ROOT's result.json files
  resdepth plot [ROOT]                Figure 6, Figure 7, depth vs error, Table 6 and report.md into ROOT/figures
  resdepth bench [OPTIONS]            speed of the training path against a minimal loop and the usual pipeline
  resdepth completion bash            a bash completion script: eval "$(resdepth completion bash)"
  resdepth --version                  resdepth's version

train and sweep take --config-dir DIR (or hydra.searchpath=[file://DIR]): your own configs, searched after
resdepth's, e.g. DIR/experiment/mine.yaml as experiment=mine.

The only room that imports every other; nothing imports it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from . import config as _config  # noqa: F401  (registers the schema and the run-name resolver)

USAGE = __doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0]
COMMANDS = ("train", "sweep", "results", "plot", "bench", "completion")


def _fail(message: str, code: int = 2):
    print(f"resdepth: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _clean_up_refused(run_dir: Path, *, record_only: bool = False) -> None:
    """Hydra makes the run directory and writes this command's record (.hydra/<date>_<time>/) into it before our
    checks. A refused command trained nothing there: its record goes (the run's earlier records stay), and a
    directory left with nothing else goes too (not with `record_only`), unless another process holds its lock
    (it is starting that run right now)."""
    from .rundir import RunBusy, lock_run

    subdir = HydraConfig.get().output_subdir  # the same time stamp as Hydra's: ${now:} is resolved once
    if subdir:
        shutil.rmtree(run_dir / subdir, ignore_errors=True)
        try:
            (run_dir / subdir).parent.rmdir()  # .hydra/, if that was the only record
        except OSError:
            pass
    if record_only or not run_dir.is_dir():
        return
    if not all(p.name in (".hydra", ".lock") or p.suffix == ".log" for p in run_dir.iterdir()):
        return
    try:
        lock = lock_run(run_dir)
    except RunBusy:
        return
    with lock:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in (run_dir.parent, run_dir.parent.parent):  # <block>-<depth>/, <dataset>/ if now empty
            try:
                parent.rmdir()
            except OSError:
                break


@hydra.main(version_base="1.3", config_path=str(_config.CONF_DIR), config_name="config")
def hydra_task(cfg: DictConfig):
    from .data import DatasetError
    from .rundir import read_json
    from .sweep import SWEEP_PLAN_ENV, sweep_progress, watch_sweep
    from .training.train import RunBusy, RunConflict, RunFailed, train

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and "joblib" in str(HydraConfig.get().launcher.get("_target_", "")):
        watch_sweep()  # a local parallel worker: it stops when the sweep's process is gone
    if multirun and os.environ.get(SWEEP_PLAN_ENV):
        num = HydraConfig.get().job.num
        try:
            plan = read_json(Path(os.environ[SWEEP_PLAN_ENV]))["plan"]
            number, same_as = plan[num].get("number", num + 1), plan[num].get("same_as", num)
            if not plan[num]["run_dir"] == plan[same_as]["run_dir"] == cfg.run_dir:  # another sweep's plan
                number, same_as = num + 1, num
            state = sweep_progress(Path(os.environ[SWEEP_PLAN_ENV]))
        except (OSError, ValueError, KeyError, IndexError) as e:  # progress is a courtesy: never stop a run for it
            number, same_as, state = num + 1, num, f"progress unknown: {e}"
        if same_as != num:  # e.g. a plain net under model.shortcut=A,B: one run, trained by the earlier job
            _clean_up_refused(Path(cfg.run_dir), record_only=True)  # the other job may be making the directory
            print(f"=== run {number} again (sweep job {num + 1}): the same run as job {same_as + 1}, trained "
                  f"once there ===", flush=True)
            return {"status": "same run", "same_as": same_as}
        print(f"=== run {number}/{state} ===", flush=True)
    try:
        return train(cfg)
    except (ValueError, DatasetError, RunConflict, RunBusy) as e:  # nothing trained, nothing overwritten
        _clean_up_refused(Path(cfg.run_dir))
        if multirun:
            print(f"resdepth: error: {e}", file=sys.stderr, flush=True)
            return {"status": "error", "error": str(e)}
        _fail(str(e))
    except RunFailed as e:  # recorded in result.json as failed by train(), which printed it
        if multirun:
            return {"status": "failed", "error": str(e)}
        _fail(f"run failed: {e}", 1)


def _check_first(argv: list[str]) -> None:
    """Check one run's config before Hydra acts on it, as the run would: `--cfg job` prints the config without
    running the task, and Hydra makes the run's directory before the task starts (Hydra's schema checks types and
    most choices; auto|true|false choices, ranges and paths are resdepth's own). A sweep checks its own grid."""
    if {"--multirun", "-m", "-sc", "--shell-completion"} & set(argv):  # a completion query must never fail
        return
    from .sweep import with_config_dirs

    try:
        argv = with_config_dirs(argv)  # compose from the same configs as Hydra will
    except ValueError as e:
        _fail(str(e))
    flags = {i for i, a in enumerate(argv) if a.startswith("-")}
    flags |= {i + 1 for i in flags if argv[i] in ("--cfg", "-c", "--package", "-p", "--config-name", "-cn",
                                                     "--config-path", "-cp", "--config-dir", "-cd")}
    overrides = [a for i, a in enumerate(argv) if i not in flags and (not a.startswith("hydra")
                                                                      or a.startswith("hydra.searchpath="))]
    try:
        cfg = _config.compose(overrides)[0]
    except Exception:  # Hydra's own errors: Hydra reports them below, as for any command
        return
    try:
        _config.validate(cfg)
    except ValueError as e:
        _fail(str(e))


def _hydra(argv: list[str]) -> None:
    """Run the Hydra app. Hydra prints its own errors (a bad key, type or group option) over several lines; here
    Hydra raises them instead (HYDRA_FULL_ERROR) and they become one line, exit 2. A user who sets
    HYDRA_FULL_ERROR=1 gets Hydra's full traceback as usual."""
    _check_first(argv)
    sys.argv = ["resdepth", *argv]
    if os.environ.get("HYDRA_FULL_ERROR"):
        return hydra_task()
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_task()
    except (HydraException, OmegaConfBaseException) as e:  # a bad key, type, value or group option
        _fail(_config.one_line_error(e).replace("add --multirun to your command line", "use `resdepth sweep`"))
    except OSError as e:  # the run directory cannot be made: a read-only disk, a file in the way, too long a path
        _fail(os_error(e), 1)
    except Exception as e:  # anything else (a launcher's own failure): say how to see the traceback
        _fail(f"{type(e).__name__}: {_config.one_line_error(e)} (HYDRA_FULL_ERROR=1 shows the traceback)")
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


def main(argv: list[str] | None = None) -> None:
    try:
        _main(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt as e:  # each run interrupted has said where it stopped; results stay resumable
        print("resdepth: interrupted", file=sys.stderr, flush=True)
        sys.exit(getattr(e, "exit_code", 130))  # 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM
    except OSError as e:  # a read-only or full disk, a file where a folder should be, a path too long
        _fail(os_error(e), 1)


def os_error(e: OSError) -> str:
    """One line for file-system trouble: what went wrong, on which path."""
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    return f"{e.strerror or type(e).__name__}{': ' + paths if paths else ''}" if e.strerror or paths else str(e)


def _main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] in ("--version", "-V"):
        from . import __version__

        print(f"resdepth {__version__}")
        return
    cmd, rest = argv[0], argv[1:]
    if cmd in ("train", "sweep"):
        for note in _config.repeated_keys(rest):
            print(f"resdepth: note: {note}", file=sys.stderr, flush=True)
        why = _config.unsupported(rest)
        if why:
            _fail(why)
    if cmd == "train" and {"-m", "--multirun"} & set(rest):
        _fail("resdepth train runs one configuration; for a grid use `resdepth sweep` with the same overrides "
              "(it checks every run first, skips finished ones and tables the results)")
    if cmd == "train":
        _hydra(rest)
    elif cmd == "sweep":
        from .sweep import sweep

        sys.exit(sweep(rest, launch=_hydra))
    elif cmd == "results":
        from .analysis.results import results_cli

        sys.exit(results_cli(rest))
    elif cmd == "plot":
        from .analysis.plots import plot_cli

        sys.exit(plot_cli(rest))
    elif cmd == "bench":
        from .bench import bench_cli

        sys.exit(bench_cli(rest))
    elif cmd == "completion":
        print(completion_script(rest))
    else:
        _fail(f"unknown command {cmd!r}; commands: {', '.join(COMMANDS)} (resdepth --help)")


def completion_script(shells: list[str]) -> str:
    """The bash script that completes resdepth's commands and, for train and sweep, Hydra's keys, groups and
    presets (Hydra's own `-sc install=bash` completes the program name only, without the commands)."""
    if shells != ["bash"]:
        _fail(f"resdepth completion takes one shell, bash, not {' '.join(shells) or 'nothing'}: "
              f'eval "$(resdepth completion bash)"')
    script = (Path(__file__).parent / "completion.bash").read_text()
    return script.replace("__COMMANDS__", " ".join(COMMANDS))


if __name__ == "__main__":
    main()
