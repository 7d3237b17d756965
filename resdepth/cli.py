"""The `resdepth` command: every command's arguments are parsed here, the work is done below."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import config as _config  # registers the schema and the run-name resolver
from .rundir import before_writing, remove_made
from .tables import parse_time

# Each command imports what it runs only when it runs: `resdepth --help` and `--version` must not
# wait for Lightning, matplotlib or the data code.

USAGE = "\n".join([
    "usage: resdepth COMMAND [ARGS ...]",
    "",
    "resdepth reproduces the central experiment of the ResNet paper (He et al., 2016): plain and "
    "residual",
    "nets of depth 20-110 on CIFAR-10, trained with the paper's protocol, ending in its Figure 6 "
    "and Table 6.",
    "",
    "commands:",
    "  resdepth train [KEY=VALUE ...]      one run (Hydra overrides; --cfg job prints the composed "
    "config)",
    "  resdepth sweep [KEY=VALUE ...]      the depth x block (x seed) grid as a Hydra multirun; "
    "resumable",
    "                                      (--plan: check every config and print the plan, train "
    "nothing)",
    "  resdepth results [ROOT]             rebuild the results table from ROOT's result.json files",
    "  resdepth plot [ROOT]                Figure 6, Figure 7, depth vs error, Table 6 and "
    "report.md into ROOT/figures",
    "  resdepth log [ROOT] logger=NAME     send the records of ROOT's runs to a logger (csv, "
    "tensorboard, wandb), once",
    "  resdepth bench [OPTIONS]            speed of the training path against a minimal loop and "
    "the usual pipeline",
    '  resdepth completion bash            a bash completion script: eval "$(resdepth completion '
    'bash)"',
    "  resdepth --version                  resdepth's version",
    "",
    "train and sweep take --config-dir DIR (or hydra.searchpath=[file://DIR]): your own configs, "
    "searched after",
    "resdepth's, e.g. DIR/experiment/mine.yaml as experiment=mine.",
])
SWEEP_USAGE = "\n".join([
    "usage: resdepth sweep [--plan] [--time-limit 8m] [KEY=VALUE ...]   (also --config-dir DIR)",
    "",
    "The paper's grid (model.depth 110,56,44,32,20 x model.block plain,residual) as a Hydra "
    "multirun. A comma list",
    "replaces an axis or adds one; anything else overrides every run. Finished runs are skipped, "
    "interrupted ones",
    "resume; the results table is printed at the end.",
    "",
    "  resdepth sweep                                         the paper's 10 runs (64k iterations "
    "each)",
    "  resdepth sweep experiment=eighth data=cifar10_jpeg     1/8 of the schedule, on the JPEG "
    "copy of CIFAR-10",
    "  resdepth sweep model.depth=20,56 seed=0,1,2            other depths, three seeds (mean and "
    "std in the table)",
    "  resdepth sweep hydra/launcher=parallel hydra.launcher.n_jobs=4      4 runs at once on this "
    "machine",
    "  resdepth sweep experiment=smoke                        a 2 x 2 grid on synthetic data, "
    "40 s on 2 cores",
    "  resdepth sweep --plan model.depth=20,56                check every config and print the "
    "plan; train nothing",
    "  resdepth sweep --time-limit 8m                         stop every run at a checkpoint after "
    "8 minutes (exit 143);",
    "                                                         the same command goes on from there",
    "  resdepth sweep --config-dir my_conf experiment=mine    your own preset, "
    "my_conf/experiment/mine.yaml",
    "",
    "Every key: `resdepth train --help`; one run's composed config: `resdepth train KEY=VALUE ... "
    "--cfg job`.",
])
COMMANDS = ("train", "sweep", "results", "plot", "log", "bench", "completion")
_BEFORE: dict[str, dict] = {}  # run_dir -> what was there before this command (before_writing)
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")
HYDRA_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path",
                     "-cp", "--config-dir", "-cd")  # Hydra's flags that take the next word


def _fail(message: str, code: int = 2):
    print(f"resdepth: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def os_error(e: OSError) -> str:
    """One line for file-system trouble: what went wrong, on which path."""
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    if not (e.strerror or paths):
        return str(e)
    return f"{e.strerror or type(e).__name__}{': ' + paths if paths else ''}"


def with_config_dirs(argv: list[str]) -> list[str]:
    """argv with each `--config-dir DIR` (`-cd DIR`, `--config-dir=DIR`) made an entry of one
    `hydra.searchpath` override, after the entries a given one names, so planning and the launched
    jobs compose from the same search path. ValueError (one line) for a folder that is not there."""
    # By hand, not Hydra's own --config-dir: the planning's compose takes overrides only.
    dirs, rest = [], []
    args = iter(argv)
    for a in args:
        if a in CONFIG_DIR_FLAGS or a.startswith("--config-dir="):
            d = a.partition("=")[2] if "=" in a else next(args, "")
            if not d or not Path(d).expanduser().is_dir():
                raise ValueError(f"{a.partition('=')[0]} {d!r}: no such folder (it holds your own "
                                 f"configs, e.g. DIR/experiment/mine.yaml for experiment=mine)")
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


def _clean_up_refused(run_dir: Path, *, record_only: bool = False) -> None:
    """Undo what this command made for a run it trained nothing in: its Hydra record, and what
    was not there before Hydra made the run directory (never what the folder held already)."""
    from .sweep import SWEEP_PLAN_ENV, job_before

    before = None if record_only else _BEFORE.get(str(run_dir))
    if before is None and not record_only and os.environ.get(SWEEP_PLAN_ENV):
        before = job_before(Path(os.environ[SWEEP_PLAN_ENV]), HydraConfig.get().job.num,
                            str(run_dir))
    remove_made(run_dir, before, HydraConfig.get().output_subdir)


@hydra.main(version_base="1.3", config_path=str(_config.CONF_DIR), config_name="config")
def hydra_task(cfg: DictConfig):
    from .sweep import SWEEP_PLAN_ENV, job_header, watch_sweep

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and "joblib" in str(HydraConfig.get().launcher.get("_target_", "")):
        watch_sweep()  # a local parallel worker: it stops when the sweep's process is gone
    if multirun and os.environ.get(SWEEP_PLAN_ENV):
        num = HydraConfig.get().job.num
        header, same_as, group = job_header(Path(os.environ[SWEEP_PLAN_ENV]), num, cfg.run_dir)
        if same_as != num:  # an earlier job trains this run
            _clean_up_refused(Path(cfg.run_dir), record_only=True)  # it may be making the folder
            print(header, flush=True)
            return {"status": "same run", "same_as": same_as}
        print(header, flush=True)
        if len(group) > 1 or group[0]:
            return _train_packs(cfg, group)
    return _train(cfg, multirun)


def _train_packs(cfg: DictConfig, group: list[list[dict]]):
    """train_pack of this job's run and the others of its pack (their sweep plan entries), side
    by side with the job's other packs (train_side_by_side); a run refused is recorded for the
    sweep's summary, as _train records it."""
    from .training.train import OutOfTime, train_side_by_side

    packs = [[None, *group[0]], *group[1:]]  # None: this job's own run
    try:
        outcomes = train_side_by_side(
            [[cfg if e is None else e["config"] for e in pack] for pack in packs])
    except OutOfTime as e:
        if e.step is None:
            _clean_up_refused(Path(cfg.run_dir))
        return {"status": "not started" if e.step is None else "stopped"}
    except Exception as e:  # not a run's failure (those are recorded): say it, not only Hydra
        print(f"resdepth: error: this sweep job ({sum(map(len, packs))} runs) failed: "
              f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise
    return {"status": "pack", "runs": [
        status for pack, outs in zip(packs, outcomes) for status in _statuses(cfg, pack, outs)]}


def _statuses(cfg: DictConfig, entries: list, outcomes: list) -> list:
    """Each run's status for the sweep's summary; a refused run's error printed and recorded."""
    from .sweep import record_refusal
    from .training.train import RunFailed

    statuses = []
    for entry, outcome in zip(entries, outcomes):
        run_dir = Path(entry["run_dir"] if entry else cfg.run_dir)
        if isinstance(outcome, dict):
            statuses.append(outcome.get("status"))
        elif isinstance(outcome, RunFailed):  # recorded in result.json by train_pack
            statuses.append("failed")
        else:  # refused: nothing trained or overwritten
            if entry:
                remove_made(run_dir, entry.get("before"), None)
            else:
                _clean_up_refused(run_dir)
            print(f"resdepth: error: {outcome}", file=sys.stderr, flush=True)
            record_refusal(str(run_dir), str(outcome))
            statuses.append("error")
    return statuses


def _train(cfg: DictConfig, multirun: bool):
    """train(cfg); a refused or failed run is one line and exit 2 or 1 (in a sweep: a status)."""
    from .data import DatasetError
    from .training.train import OutOfTime, RunBusy, RunConflict, RunFailed, train

    try:
        return train(cfg)
    except OutOfTime as e:  # the sweep's time limit: the sweep says what is left
        if not multirun:
            raise
        if e.step is None:
            _clean_up_refused(Path(cfg.run_dir))  # Hydra made its folder; nothing was trained
        return {"status": "not started" if e.step is None else "stopped"}
    except (ValueError, DatasetError, RunConflict, RunBusy) as e:  # nothing trained or overwritten
        _clean_up_refused(Path(cfg.run_dir))
        if multirun:
            from .sweep import record_refusal

            print(f"resdepth: error: {e}", file=sys.stderr, flush=True)
            record_refusal(str(cfg.run_dir), str(e))
            return {"status": "error", "error": str(e)}
        _fail(str(e))
    except RunFailed as e:  # recorded in result.json as failed by train(), which printed it
        if multirun:
            return {"status": "failed", "error": str(e)}
        _fail(f"run failed: {e}", 1)


def _check_first(argv: list[str]) -> None:
    """Check one run's config before Hydra acts on it, as the run would.

    `--cfg job` prints the config without running the task, and Hydra makes the run's directory
    before the task starts (Hydra's schema checks types and most choices; auto|true|false choices,
    ranges and paths are resdepth's own). A sweep checks its own grid.
    """
    if {"--multirun", "-m", "-sc", "--shell-completion"} & set(argv):  # completion must never fail
        return
    try:
        argv = with_config_dirs(argv)  # compose from the same configs as Hydra will
    except ValueError as e:
        _fail(str(e))
    flags = {i for i, a in enumerate(argv) if a.startswith("-")}
    flags |= {i + 1 for i in flags if argv[i] in HYDRA_VALUE_FLAGS}
    overrides = [a for i, a in enumerate(argv) if i not in flags
                 and (not a.startswith("hydra") or a.startswith("hydra.searchpath="))]
    try:
        cfg = _config.compose(overrides)[0]
    except Exception:  # Hydra's own errors: Hydra reports them below, as for any command
        return
    try:
        _config.validate(cfg)
        _config.check_hydra(_hydra_settings([a for i, a in enumerate(argv) if i not in flags]))
    except ValueError as e:
        _fail(str(e))
    _BEFORE[str(Path(cfg["run_dir"]))] = before_writing(Path(cfg["run_dir"]))


def _hydra_settings(overrides: list[str]) -> dict:
    """The composed `hydra` node of one run's overrides, unresolved."""
    return _config.composed([overrides], hydra_settings=True,
                            read=lambda c: OmegaConf.to_container(c.hydra, resolve=False))[0]


def _hydra(argv: list[str]) -> None:
    """Run the Hydra app; its errors (a bad key, type or group option) become one line, exit 2.

    Hydra prints its own errors over several lines; here it raises them (HYDRA_FULL_ERROR). A user
    who sets HYDRA_FULL_ERROR=1 gets Hydra's full traceback as usual.
    """
    _check_first(argv)
    sys.argv = ["resdepth", *argv]
    if os.environ.get("HYDRA_FULL_ERROR"):
        return hydra_task()
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_task()
    except (HydraException, OmegaConfBaseException) as e:  # a bad key, type, value or group option
        _fail(_config.one_line_error(e).replace("add --multirun to your command line",
                                                "use `resdepth sweep`"))
    except OSError as e:  # the run directory cannot be made: a read-only disk, a file in the way
        _fail(os_error(e), 1)
    except Exception as e:  # anything else (a launcher's own failure): say how to see the traceback
        _fail(f"{type(e).__name__}: {_config.one_line_error(e)} "
              f"(HYDRA_FULL_ERROR=1 shows the traceback)")
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


def sweep_cli(argv: list[str]) -> int:
    """`resdepth sweep [--plan] [--config-dir DIR] [KEY=VALUE ...]`; returns the exit code."""
    if any(o in ("-h", "--help", "help") for o in argv):
        print(SWEEP_USAGE)
        return 0
    given = [o for o in argv if o != "--plan"]
    try:
        rest, limit = _time_limit(given)
        searched = with_config_dirs(rest)
    except ValueError as e:
        print(f"resdepth: error: {e}", file=sys.stderr)
        return 2
    flags = [o for o in searched if o.startswith("-")]
    if flags:
        print(f"resdepth: error: resdepth sweep takes KEY=VALUE overrides, --plan and --time-limit "
              f"only, not {flags[0]!r} (and --config-dir DIR for your own configs: resdepth sweep "
              f"--help; `resdepth train ... --cfg job` prints one run's config)", file=sys.stderr)
        return 2
    from .sweep import sweep

    return sweep(searched, launch=_hydra, plan="--plan" in argv, command=given, time_limit=limit)


def _time_limit(argv: list[str]) -> tuple[list[str], float | None]:
    """argv without `--time-limit D` (or `--time-limit=D`), and D in seconds (None: not given).
    ValueError (one line) for a duration that is not one."""
    rest, limit, args = [], None, iter(argv)
    for a in args:
        if a == "--time-limit" or a.startswith("--time-limit="):
            text = a.partition("=")[2] if "=" in a else next(args, "")
            try:
                limit = parse_time(text)
            except ValueError:
                limit = 0.0
            if not limit > 0:
                raise ValueError(f"--time-limit {text!r}: a duration such as 90s, 8m or 1h30m (a "
                                 f"bare number is minutes), more than 0")
        else:
            rest.append(a)
    return rest, limit


def _root_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("root", nargs="?", default="runs", help="results root (default: runs)")
    return p


def results_cli(argv: list[str]) -> int:
    """`resdepth results [ROOT]`: 0 when written; 2 (nothing written) when ROOT holds no usable
    runs."""
    from .analysis.results import format_table, summarize, write_tables
    from .analysis.runs import NO_USABLE, no_runs

    p = _root_parser("resdepth results", "Rebuild the results table of a sweep.")
    root = Path(p.parse_args(argv).root)
    why = no_runs(root)
    if why:
        print(f"resdepth: error: {why}", file=sys.stderr)
        return 2
    rows = summarize(root)
    if not rows:
        print(f"resdepth: error: {NO_USABLE.format(root=root)}", file=sys.stderr)
        return 2
    print(format_table(rows))
    try:
        write_tables(root, rows)
    except OSError as e:  # a read-only or full disk: the table above is all there is
        print(f"resdepth: error: cannot save the table: {e.strerror or e}: {e.filename or root}",
              file=sys.stderr)
        return 1
    print(f"\nwrote {root / 'results.csv'} and {root / 'results.md'}")
    return 0


def plot_cli(argv: list[str]) -> int:
    """`resdepth plot [ROOT]`: 0 when written; 2 (nothing created) when ROOT holds no runs."""
    from .analysis.report import tables_text, write_outputs
    from .analysis.runs import NO_USABLE, no_runs

    p = _root_parser("resdepth plot", "Figures 6 and 7, error vs depth, Table 6 and report.md of "
                     "the runs under ROOT, into ROOT/figures.")
    root = Path(p.parse_args(argv).root)
    why = no_runs(root)
    if why:
        print(f"resdepth: error: {why}", file=sys.stderr)
        return 2
    try:
        written = write_outputs(root)
    except OSError as e:  # a read-only or full disk: the numbers are still worth seeing
        print(tables_text(root))
        print(f"resdepth: error: cannot save the figures and tables: {e.strerror or e}: "
              f"{e.filename or root}", file=sys.stderr)
        return 1
    if not written:
        print(f"resdepth: error: {NO_USABLE.format(root=root)}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {root / 'figures'}:")
    for path in written:
        print(f"  {path}")
    return 0


LOG_USAGE = ("usage: resdepth log [ROOT] logger=NAME [logger.KEY=VALUE ...]: the records of the "
             "runs under ROOT (default: runs) to a logger (csv, tensorboard, wandb), each once, "
             "as a resumed run sends them")


def log_cli(argv: list[str]) -> int:
    """`resdepth log [ROOT] logger=NAME`: 0 when every run's records were sent (or held already);
    2 for bad arguments or no runs, 1 when a run could not be sent."""
    from .analysis.runs import find_results, no_runs
    from .rundir import RunBusy
    from .training.loggers import send_records

    if {"-h", "--help"} & set(argv):
        print(LOG_USAGE)
        return 0
    roots = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    wrong = [o for o in overrides if o.partition("=")[0].lstrip("+") != "logger"
             and not o.lstrip("+").startswith("logger.")]
    if len(roots) > 1 or wrong or not any(o.startswith("logger=") for o in overrides):
        print(f"resdepth: error: {' '.join(wrong or roots[1:]) or 'no logger='}: {LOG_USAGE}",
              file=sys.stderr)
        return 2
    root = Path(roots[0] if roots else "runs")
    try:
        logger = _config.compose(overrides)[0]["logger"]
    except (HydraException, OmegaConfBaseException) as e:
        print(f"resdepth: error: {_config.one_line_error(e)}", file=sys.stderr)
        return 2
    why = no_runs(root) or (None if logger else "logger=none sends nothing: name a logger "
                                                 "(csv, tensorboard, wandb)")
    if why:
        print(f"resdepth: error: {why}", file=sys.stderr)
        return 2
    failed = 0
    for run_dir, _ in find_results(root):
        try:
            name, sent, rows = send_records(run_dir, logger)
        except ValueError as e:  # the logger's package or arguments: the same for every run
            print(f"resdepth: error: {e}", file=sys.stderr)
            return 2 if not failed else 1
        except (RunBusy, OSError, KeyError) as e:
            failed += 1
            print(f"resdepth: warning: {run_dir} not sent: {e}", file=sys.stderr, flush=True)
            continue
        held = f"{rows - sent} held already" if rows - sent else "none held before"
        print(f"[{name}] sent {sent} of {rows} records to logger={overrides[0].split('=')[1]} "
              f"({held}) -> {run_dir / 'logs'}", flush=True)
    return 1 if failed else 0


def _bench_parser(cuda: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resdepth bench", description=(
        "`resdepth bench`: how fast the training path is, measured three ways on the current "
        "device, in one process."))
    add = p.add_argument
    add("--depths", default="20,56,110" if cuda else "20,56", help="comma list of depths 6n+2")
    add("--blocks", default="residual", help="comma list: plain,residual")
    add("--pipelines", default="ours,minimal,conventional", help="comma list of those to time")
    add("--batch-size", type=int, default=128, help="images per step (the paper: 128)")
    add("--bn-batch", type=int, default=0,
        help="images per batch-norm group in training, optim.bn_batch (default 0: the whole "
             "batch, as earlier measurements; experiment=paper trains with 64)")
    add("--steps", type=int, default=200 if cuda else 20, help="timed iterations per measurement")
    add("--warmup", type=int, default=30 if cuda else 5, help="untimed iterations first")
    add("--precision", default="auto", help="auto | 32-true | bf16-mixed")
    add("--compile", default="false", choices=["true", "false"])
    add("--compile-mode", default="default", help="torch.compile mode, with --compile true")
    add("--cuda-graph", default="auto", choices=["auto", "true", "false"],
        help="trainer.cuda_graph for ours and minimal (auto: on a CUDA GPU)")
    add("--accelerator", default="auto", help="auto | cpu | gpu")
    add("--data", default="cifar10_jpeg",
        help="data preset (default cifar10_jpeg; synthetic needs no files)")
    add("--workers", type=int, default=min(4, os.cpu_count() or 1),
        help="conventional DataLoader workers")
    add("--concurrent", default="1,2,4" if cuda else "0",
        help="k runs at once on this device; 0: skip")
    add("--pack", default="1,2,4,6,8" if cuda else "1",
        help="comma list of pack sizes K: K runs of each depth trained as one wide net "
             "(trainer.pack), timed in ours; 2 and 6 project the paper's sweep with 1 and 3 "
             "seeds; 1 alone: skip")
    add("--threads", default="1",
        help="comma list of CPU threads per run (trainer.threads; 0: all cores): the rows are "
             "timed with the first, --concurrent with each (threads per run against runs at once)")
    add("--out", default="bench.json",
        help="the JSON written (an earlier one there is kept, renamed)")
    add("--logger", default="none",
        help="none | csv | tensorboard | wandb: also time ours with this logger attached, as in "
             "`resdepth train logger=...`")
    add("--quiet", action="store_true", help="print nothing but errors")
    add("--barrier", default=None, help=argparse.SUPPRESS)  # DIR:K, for the concurrent children
    return p


def bench_cli(argv: list[str]) -> int:
    """`resdepth bench [OPTIONS]`: 0 when measured; 2 (nothing measured or written) for a bad
    option."""
    import torch

    from . import bench

    cuda = torch.cuda.is_available()
    args = _bench_parser(cuda).parse_args(argv)
    args.compile = args.compile == "true"
    try:
        depths, blocks, pipelines, ks = _bench_options(args, cuda)
        bench.check_config(args, depths[0], blocks[0])
    except ValueError as e:
        print(f"resdepth: error: {e}", file=sys.stderr)
        return 2
    bench.run_bench(args, argv, depths, blocks, pipelines, ks)
    return 0


def _int_list(option: str, value: str, allowed: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"{option}={value!r}: must be a comma list of {allowed}") from None


def _bench_options(args, cuda: bool) -> tuple[list[int], list[str], list[str], list[int]]:
    """bench's options checked, before anything is measured or written: (depths, blocks,
    pipelines, run counts at once). ValueError with a one-line message."""
    for option, value, enum in (("--precision", args.precision, _config.Precision),
                                ("--accelerator", args.accelerator, _config.Accelerator),
                                ("--compile-mode", args.compile_mode, _config.CompileMode)):
        _config.choice(option, value, tuple(enum.__members__))
    loggers = tuple(sorted(p.stem for p in (_config.CONF_DIR / "logger").glob("*.yaml")))
    _config.choice("--logger", args.logger, loggers)
    from .models import check_depth

    depths = _int_list("--depths", args.depths, "depths 6n+2 (20,56,110)")
    for d in depths:
        check_depth(d)
    blocks = args.blocks.split(",")
    if any(b not in ("plain", "residual") for b in blocks):
        raise ValueError(f"--blocks={args.blocks!r}: each must be plain or residual")
    pipelines = args.pipelines.split(",")
    if any(x not in ("ours", "minimal", "conventional") for x in pipelines):
        raise ValueError(f"--pipelines={args.pipelines!r}: each must be ours, minimal or "
                         f"conventional")
    ks = _int_list("--concurrent", args.concurrent, "run counts >= 0 (1,2,4; 0: skip)")
    if any(k < 0 for k in ks):
        raise ValueError(f"--concurrent={args.concurrent!r}: run counts must be >= 0 (0: skip)")
    if args.cuda_graph == "true" and not (cuda and args.accelerator != "cpu"):
        raise ValueError("--cuda-graph=true needs a CUDA GPU; none is used here "
                         "(use auto or false)")
    for option, value in (("--steps", args.steps), ("--warmup", args.warmup),
                          ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{option}={value} must be a positive integer")
    args.packs = _int_list("--pack", args.pack, "pack sizes from 1 to 64 (1,2,4,8)")
    if any(not 1 <= k <= 64 for k in args.packs):
        raise ValueError(f"--pack={args.pack!r}: pack sizes must be from 1 to 64")
    args.thread_counts = _int_list("--threads", args.threads, "CPU thread counts >= 0 (1,2)")
    if any(t < 0 for t in args.thread_counts):
        raise ValueError(f"--threads={args.threads!r}: thread counts must be >= 0 (0: all cores)")
    if args.workers < 0:
        raise ValueError(f"--workers={args.workers}: must be >= 0 (0: load in the main process)")
    return depths, blocks, pipelines, [k for k in ks if k > 0]


def completion_script(shells: list[str]) -> str:
    """The bash script that completes resdepth's commands and, for train and sweep, Hydra's keys,
    groups and presets (Hydra's own `-sc install=bash` completes the program name only)."""
    if shells != ["bash"]:
        _fail(f"resdepth completion takes one shell, bash, not {' '.join(shells) or 'nothing'}: "
              f'eval "$(resdepth completion bash)"')
    script = (Path(__file__).parent / "completion.bash").read_text()
    return script.replace("__COMMANDS__", " ".join(COMMANDS))


def _check_overrides(cmd: str, overrides: list[str]) -> None:
    """train's and sweep's overrides: a key given twice noted; one that nothing reads refused."""
    for note in _config.repeated_keys(overrides):
        print(f"resdepth: note: {note}", file=sys.stderr, flush=True)
    why = _config.unsupported(overrides)
    if why:
        _fail(why)
    if cmd == "train" and {"-m", "--multirun"} & set(overrides):
        _fail("resdepth train runs one configuration; for a grid use `resdepth sweep` with the "
              "same overrides (it checks every run first, skips finished ones and tables the "
              "results)")


RUNS = {"sweep": sweep_cli, "results": results_cli, "plot": plot_cli, "log": log_cli,
        "bench": bench_cli}


def _main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] in ("--version", "-V"):
        from . import __version__

        print(f"resdepth {__version__}")
        return
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        _fail(f"unknown command {cmd!r}; commands: {', '.join(COMMANDS)} (resdepth --help)")
    if cmd in ("train", "sweep"):
        rest = _config.expand_paths(rest)
        _check_overrides(cmd, rest)
    if cmd == "train":
        _hydra(rest)
    elif cmd == "completion" and rest[:1] == ["query"]:
        from .completion import query

        query(rest[1:])
    elif cmd == "completion":
        print(completion_script(rest))
    else:
        sys.exit(RUNS[cmd](rest))


def main(argv: list[str] | None = None) -> None:
    try:
        _main(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt as e:  # each run interrupted has said where it stopped; all resumable
        print("resdepth: interrupted", file=sys.stderr, flush=True)
        sys.exit(getattr(e, "exit_code", 130))  # 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM
    except OSError as e:  # a read-only or full disk, a file in the way, too long a path
        _fail(os_error(e), 1)


if __name__ == "__main__":
    main()
