"""One run, wired: config -> data + system + Lightning trainer + records, in the run's directory."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .. import rundir
from ..config import config_hash, semantic_config, the_net, to_plain, validate
from ..data import DataModule, DatasetError
from .device import check, claim, device_name, resolve_device, set_threads, use_cuda_graph
from .load import model_file
from ..models import count_parameters
from .loggers import RunLogger
from .records import (SIDE_STOP, CheckpointIO, PackRecorder, Recorder, beside_others, label,
                      pack_log, run_log, side_thread)
from ..tables import fmt_time, plural, where
from ..rundir import RunBusy, RunConflict  # noqa: F401 (the CLI and sweep catch them from here)
from .pack import Member, PackData, PackSystem
from .system import System


class RunFailed(RuntimeError):
    """A run failed after its directory was set up (result.json: failed; error.txt: traceback)."""


class CorruptCheckpoint(RuntimeError):
    """last.ckpt cannot be read: the run cannot resume from it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (exit 130), SIGTERM (143) or SIGHUP (129) stopped a run; its checkpoint resumes it."""

    def __init__(self, exit_code: int = 130, announced: bool = True) -> None:
        super().__init__(exit_code)
        self.exit_code, self.announced = exit_code, announced


class OutOfTime(Interrupted):
    """The sweep's time limit (`resdepth sweep --time-limit`) stopped a run at a checkpoint, or
    came before it started; exit 143, as for SIGTERM."""

    def __init__(self, step: int | None) -> None:
        super().__init__(143, announced=True)
        self.step = step  # None: not started


DEADLINE_ENV = "RESDEPTH_DEADLINE"  # time.time() at which the sweep's time limit is spent


def deadline() -> float | None:
    try:
        return float(os.environ[DEADLINE_ENV])
    except (KeyError, ValueError):
        return None


STOP_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
_BUILDING = threading.Lock()  # one net initialised at a time: the seeds it draws from are global
_received: list[int] = []  # the stop signals this process got
_requeued: list[int] = []  # the iteration this SLURM job was requeued at, once it was


def slurm_job() -> str | None:
    """This process's SLURM job ('12_3' for task 3 of array 12), or None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def resume_hint() -> str:
    """How an interrupted run resumes: in a SLURM job, what SLURM and the sweep do."""
    job = slurm_job()
    if job is None:
        return "run the same command again to resume"
    return (f"SLURM job {job}: if SLURM requeues it, it resumes from there; if it was cancelled, "
            f"the sweep's command resumes it")


@contextlib.contextmanager
def stop_signals(cfg: dict, announce: bool = True):
    """SIGTERM and SIGHUP at any moment stop the run as Ctrl-C does: exit 128 + the signal, with
    the line that says how to resume (Lightning catches SIGTERM only inside fit; `announce`
    False: the caller says it)."""
    if threading.current_thread() is not threading.main_thread():  # signals reach it alone
        yield
        return

    def stop(signum, frame):
        _received.append(signum)
        raise Interrupted(128 + signum, announced=False)

    # only where nothing else handles them (submitit, in a SLURM job, does)
    free = [s for s in STOP_SIGNALS if signal.getsignal(s) in (signal.SIG_DFL, None)]
    previous = {s: signal.signal(s, stop) for s in free}
    try:
        yield
    except Interrupted as e:
        if not e.announced and announce:
            print(f"\n[{label(cfg)}] stopped by {STOP_SIGNALS.get(e.exit_code - 128)} after "
                  f"training, before its last files were written: "
                  f"{resume_hint().replace('resume', 'finish')}", file=sys.stderr, flush=True)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train(cfg: DictConfig | dict) -> dict:
    """Train, resume or skip (when finished) the run `cfg` describes; return its result.json.

    Raises ValueError (bad config), RunConflict, RunBusy, DatasetError before writing anything;
    an error during training is recorded in result.json (status "failed") and raised again.
    """
    cfg = to_plain(cfg) if isinstance(cfg, DictConfig) else cfg
    validate(cfg)
    check(cfg["trainer"])
    if the_net(cfg["model"]) != cfg["model"]:
        cfg = {**cfg, "model": the_net(cfg["model"])}
        print(f"[{label(cfg)}] note: a plain net has no shortcuts, so model.shortcut does not "
              f"change it: this is the same run as shortcut A", flush=True)
    run_dir = Path(cfg["run_dir"])
    done = rundir.finished_result(run_dir, semantic_config(cfg))
    if done:
        print(f"[{label(cfg)}] done, skipped ({run_dir}: {done['status']})", flush=True)
        return done
    if (deadline() or math.inf) <= time.time():
        print(f"[{label(cfg)}] not started: the sweep's time limit is spent", flush=True)
        raise OutOfTime(None)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = rundir.lock_run(run_dir)
    gpu, gpu_lock = claim(cfg["trainer"])  # parallel jobs on a machine with several GPUs
    try:
        with (run_log(run_dir / "resdepth.log"), stop_signals(cfg),
              failures_recorded(cfg, run_dir), own_stream(cfg["trainer"], gpu)):
            return _run(cfg, run_dir, gpu)
    finally:
        lock.close()
        if gpu_lock is not None:
            gpu_lock.close()


def quiet_lightning() -> None:
    """Our progress lines say what matters; Lightning's banners and tips would drown them."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Wherever SLURM's srun exists: resdepth trains one run on one device per process (a SLURM
    # sweep is a job array), so Lightning's hint to prepend srun would only mislead.
    warnings.filterwarnings("ignore", message="The `srun` command is available")


def build(cfg: dict, gpu: int | None = None,
          pack: list[dict] | None = None) -> tuple[DataModule, System | PackSystem, dict]:
    """The data, the LightningModule and the Trainer arguments of a run (train and bench).

    `gpu`: which CUDA device, where there are several (default: the first). `pack`: the runs
    (pack_key equal, cfg among them) to train as one PackSystem.
    """
    quiet_lightning()
    set_threads(cfg["trainer"])
    accelerator, precision = resolve_device(cfg["trainer"])
    data = DataModule(cfg["data"], batch_size=cfg["optim"]["batch_size"], seed=cfg["seed"]).load()
    if pack:
        system = PackSystem(pack, in_channels=data.in_channels, num_classes=data.num_classes)
    else:
        pl.seed_everything(cfg["seed"], workers=False, verbose=False)
        system = System(cfg, in_channels=data.in_channels, num_classes=data.num_classes)
    system.datamodule = data
    system.whole_step = use_cuda_graph(cfg["trainer"], accelerator, precision)
    devices = [gpu] if accelerator == "gpu" and gpu is not None else 1
    trainer_kwargs = dict(
        accelerator=accelerator, devices=devices, precision=precision,
        max_steps=cfg["trainer"]["max_steps"], max_epochs=-1, logger=False,
        # checkpoints, evaluation and progress lines are the Recorder's (records.py says why)
        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
        enable_progress_bar=False, enable_model_summary=False, benchmark=accelerator == "gpu",
        plugins=[CheckpointIO()],
    )
    return data, system, trainer_kwargs


def checkpoint_step(ckpt: Path) -> int:
    """The iteration of a run's last checkpoint (0: none), read before fit to set up the run.

    CorruptCheckpoint, with what to do, when it cannot be read (nothing is deleted unasked).
    """
    if not ckpt.exists():
        return 0
    try:  # mmap: without loading the whole checkpoint
        return int(rundir.load_tensors(ckpt, map_location="cpu", mmap=True)["global_step"])
    except rundir.UnsafeFile as e:
        raise CorruptCheckpoint(
            f"{e}, so the run cannot resume from it; to restart it from iteration 0, move it away "
            f"and run the same command again: mv '{ckpt}' '{ckpt}.refused'") from None
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else "unreadable"
        raise CorruptCheckpoint(
            f"{ckpt} is damaged ({type(e).__name__}: {first}), so the "
            f"run cannot resume from it; to restart it from iteration 0, move it away and run "
            f"the same command again: mv '{ckpt}' '{ckpt}.damaged'") from None


@contextlib.contextmanager
def failures_recorded(cfg: dict, run_dir: Path):
    """A failure at any point of a run (a refusal before anything is written aside) is recorded:
    result.json says failed, error.txt holds the traceback, RunFailed says so in one line."""
    try:
        yield
    except (DatasetError, ValueError) as e:
        if (run_dir / "result.json").exists() and _status(run_dir) == "running":
            raise RunFailed(_record_failure(cfg, run_dir, e)) from e
        raise  # refused before anything was written: the CLI says why, removes the empty directory
    except (RunFailed, KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        raise RunFailed(_record_failure(cfg, run_dir, e)) from e


def _status(run_dir: Path):
    try:
        return rundir.read_json(run_dir / "result.json").get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _record_failure(cfg: dict, run_dir: Path, e: BaseException) -> str:
    """Mark the run failed in result.json, the traceback in error.txt; the one-line message."""
    lines = str(e).strip().splitlines() or [""]
    error = f"{type(e).__name__}: {lines[0]}" + (" ..." if len(lines) > 1 else "")
    if "Error(s) in loading state_dict" in lines[0]:  # e.g. a checkpoint of another depth
        ckpt = run_dir / "last.ckpt"
        error += (f" ({ckpt} holds another net, so the run cannot resume from it; to restart it "
                  f"from iteration 0, move it away: mv '{ckpt}' '{ckpt}.other')")
    message = f"{error} (traceback in {run_dir / 'error.txt'})"
    try:
        rundir.atomic_write_text(run_dir / "error.txt", traceback.format_exc())
        exists = (run_dir / "result.json").exists()
        previous = rundir.read_json(run_dir / "result.json") if exists else {}
        result = previous if isinstance(previous, dict) else {}
        result.update(status="failed", error=error, finished=rundir.now(), run_dir=str(run_dir))
        result.setdefault("config", cfg)
        rundir.write_json(run_dir / "result.json", result)
    except OSError as write_error:  # a read-only or full disk: say so, not a missing file
        message = (f"{error} (it could not be recorded in {run_dir}: "
                   f"{write_error.strerror or write_error})")
    print(f"[{label(cfg)}] FAILED: {message}", file=sys.stderr, flush=True)
    return message


def _run(cfg: dict, run_dir: Path, gpu: int | None) -> dict:
    with _BUILDING:
        data, system, trainer_kwargs = build(cfg, gpu)
    resume_step = checkpoint_step(run_dir / "last.ckpt")
    logger = RunLogger(cfg, run_dir, resume_step) if cfg.get("logger") else None
    trainer_kwargs["logger"] = logger.logger if logger else False
    result = _start(cfg, run_dir, data, system, trainer_kwargs, gpu, resume_step)
    recorder = Recorder(run_dir, cfg, result, logger, deadline())
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[recorder], default_root_dir=str(run_dir))
    t0 = time.perf_counter()
    try:
        with requeue_after_a_checkpoint(cfg, recorder):
            _fit([(cfg, recorder)], trainer, system, data, resume_step)
    finally:
        if logger:
            logger.close()
    if recorder.out_of_time is not None:
        print(f"[{label(cfg)}] stopped at iteration {recorder.out_of_time}, its checkpoint: the "
              f"sweep's time limit is spent; the same command resumes it", flush=True)
        raise OutOfTime(recorder.out_of_time)
    if recorder.side_stopped is not None:
        _side_stopped([cfg], recorder.side_stopped)
    if result["status"] != "diverged":
        accelerator = trainer_kwargs["accelerator"]
        system.to(torch.device("cuda", gpu or 0) if accelerator == "gpu" else torch.device("cpu"))
        data.to(system.device)  # Lightning's teardown may have moved the module to the CPU
        result["status"] = "done"
        rundir.write_json(run_dir / "responses.json", {
            "layer_std": system.layer_responses(data.eval_splits["test"]), "split": "test",
            "depth": cfg["model"]["depth"], "block": cfg["model"]["block"]})
    _finish(cfg, run_dir, data, system, result, time.perf_counter() - t0)
    return result


def _start(cfg: dict, run_dir: Path, data: DataModule, system: System, trainer_kwargs: dict,
           gpu: int | None, resume_step: int, extra: dict | None = None) -> dict:
    """config.json, metrics.csv cut back to the checkpoint, result.json running; the first line.

    `system`: what .net, .whole_step and .warming_up are read from; `extra` adds to result.json."""
    accelerator, precision = trainer_kwargs["accelerator"], trainer_kwargs["precision"]
    chash = config_hash(cfg, without=())
    if not (run_dir / "config.json").exists():
        rundir.write_json(run_dir / "config.json",
                          {"hash": chash, "semantic": semantic_config(cfg), "config": cfg})
    rundir.truncate_metrics(run_dir / "metrics.csv", resume_step)
    rundir.truncate_gradients(run_dir / "gradients.csv", resume_step)
    result = rundir.start_result(run_dir, cfg, chash, resume_step, {
        "params": count_parameters(system.net), "device": device_name(accelerator, gpu),
        "accelerator": accelerator, "precision": precision, "threads": torch.get_num_threads(),
        "cuda_graph": system.whole_step,
        "classes": data.num_classes, "train_images": len(data.train),
        "warmup": system.warming_up, **(extra or {})})
    _announce(cfg, result, resume_step, system.whole_step)
    return result


def _finish(cfg: dict, run_dir: Path, data: DataModule, system: System, result: dict,
            session_s: float) -> None:
    """model.pt and the final result.json of a done or diverged run; its last line."""
    # with the mean: ready for raw images (load.py)
    weights = model_file(system.net, data.mean, cfg, data.classes)
    rundir.atomic_write(run_dir / "model.pt", lambda tmp: torch.save(weights, tmp))
    result.update(warmup_ended_at=system.warmup_steps or None,
                  warmup_ended_by=system.warmup_ended_by, finished=rundir.now(),
                  session_s=session_s)
    rundir.write_json(run_dir / "result.json", result)
    rundir.retire_error(run_dir)
    final = (f"test {100 * result['final_test_error']:.2f}%  "
             f"train {100 * result['final_train_error']:.2f}%"
             if result["status"] == "done" else f"diverged at iteration {result['diverged_at']}")
    print(f"[{label(cfg)}] {result['status']}: {final}  "
          f"({fmt_time(result.get('wall_time_s') or 0)}) -> {run_dir}", flush=True)


def _announce(cfg: dict, result: dict, resume_step: int, cuda_graph: bool) -> None:
    """The run's first line: what it trains, where, whether it resumes (elsewhere: it says so)."""
    segments, device, precision = result["segments"], result["device"], result["precision"]
    if len(segments) > 1 and segments[-1]["from"] == resume_step:
        before = segments[-2]
        print(f"[{label(cfg)}] note: iterations {before['from']}-{resume_step} were trained on "
              f"{where(before)}; it now continues on {where(segments[-1])} "
              f"(both are kept in result.json's segments)", flush=True)
    what = f"resuming at iteration {resume_step}" if resume_step else "starting"
    print(f"[{label(cfg)}] {what}: {cfg['data']['name']}, {result['params']:,} params, "
          f"{cfg['trainer']['max_steps']} iterations of {cfg['optim']['batch_size']}, "
          f"{device}, {precision}, {plural(result['threads'], 'CPU thread')}"
          f"{', CUDA graph' if cuda_graph else ''} -> {result['run_dir']}", flush=True)


def _fit(runs: list[tuple[dict, Recorder]], trainer: pl.Trainer, system, data,
         resume_step: int) -> None:
    """trainer.fit, resuming from (the first) run's last.ckpt; an interruption says where each
    run can resume."""
    ckpt_path = str(runs[0][1].run_dir / "last.ckpt") if resume_step else None
    try:
        trainer.fit(system, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except (KeyboardInterrupt, SystemExit) as e:  # Lightning turns Ctrl-C into SystemExit(1)
        if _requeued or not (isinstance(e, KeyboardInterrupt) or trainer.interrupted):
            raise  # a SLURM job requeued by submitit (it said so) exits as submitit wants
        signum = _received[-1] if _received else signal.SIGTERM if isinstance(
            e, SIGTERMException) else None
        how = f"stopped by {STOP_SIGNALS[signum]}" if signum else "interrupted"
        print(file=sys.stderr)
        for cfg, recorder in runs:
            kept = (recorder.checkpoint_step if recorder.checkpoint_step is not None
                    else resume_step)
            where = f"its checkpoint is at iteration {kept}" if kept else "no checkpoint yet"
            print(f"[{label(cfg)}] {how} at iteration {trainer.global_step}; {where}: "
                  f"{resume_hint()}", file=sys.stderr, flush=True)
        raise Interrupted(128 + signum if signum else 130) from None


def _submitit_handler(signum: int):
    """submitit's handler of `signum` in this process (the requeue on a time limit or a
    pre-emption), or None: resdepth runs outside submitit, or submitit uses another signal."""
    handler = signal.getsignal(signum)
    owner = getattr(handler, "__self__", None)
    return handler if type(owner).__module__.startswith("submitit.") else None


@contextlib.contextmanager
def requeue_after_a_checkpoint(cfg: dict, recorder: Recorder):
    """In a SLURM job under submitit: the signal that SLURM sends before the time limit (or a
    pre-emption) writes a checkpoint at the end of the iteration it arrives in, and only then lets
    submitit requeue the job, saying what happens next. submitit alone would requeue at once and
    lose every iteration since the last checkpoint."""
    handlers = {s: h for s in (signal.SIGUSR1, signal.SIGUSR2) if (h := _submitit_handler(s))}
    if not handlers or threading.current_thread() is not threading.main_thread():
        yield
        return

    def deferred(signum, frame):
        def requeue(step: int) -> None:
            owner = handlers[signum].__self__
            try:  # submitit's own reckoning, for the message only
                timed_out, delayed = owner.has_timed_out(), owner._delayed
                n = max(delayed._timeout_countdown - timed_out, 0)
                left = (f"; {n} more time-outs allowed (hydra.launcher.max_num_timeout)"
                        if timed_out else "")
                short = delayed._timeout_min < 50  # submitit's rule: 80% or 10 min before it
            except Exception:
                timed_out, left, short = None, "", False
            why = {True: "its time limit is near", False: "it is pre-empted"}.get(
                timed_out, f"it got {signal.Signals(signum).name}")
            if timed_out and short:
                why += (" or it is pre-empted (in a job this short submitit counts either as a "
                        "time-out)")
            print(f"[{label(cfg)}] SLURM job {slurm_job()}: {why}; checkpoint written at "
                  f"iteration {step}; submitit requeues the job, which resumes from there{left}",
                  flush=True)
            _requeued.append(step)
            handlers[signum](signum, None)  # requeues and exits

        recorder.stop = requeue

    previous = {s: signal.signal(s, deferred) for s in handlers}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def own_stream(t: dict, gpu: int | None):
    """On a GPU, side by side with other packs: this thread's work on a CUDA stream of its own."""
    if not side_thread() or resolve_device(t)[0] != "gpu":
        yield
        return
    with torch.cuda.stream(torch.cuda.Stream(device=gpu or 0)):
        yield


def _side_stopped(cfgs: list[dict], step: int) -> None:
    signum = _received[-1] if _received else None
    how = f"stopped by {STOP_SIGNALS[signum]}" if signum else "interrupted"
    for cfg in cfgs:
        print(f"[{label(cfg)}] {how} at iteration {step}; its checkpoint is at iteration {step}: "
              f"{resume_hint()}", file=sys.stderr, flush=True)
    raise Interrupted(128 + signum if signum else 130)


@contextlib.contextmanager
def _stops_side_by_side():
    """Ctrl-C, SIGTERM and SIGHUP set SIDE_STOP (and add 128 + the signal to the list this
    yields) rather than raise: an exception in Thread.join or is_alive can mark a running thread
    as ended (Python 3.11). In a SLURM job under submitit, its requeue signal does the same, and
    submitit requeues the job once every run has written its checkpoint."""
    stopped: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    submitit = {s: h for s in (signal.SIGUSR1, signal.SIGUSR2) if (h := _submitit_handler(s))}
    requeue: list[int] = []

    def stop(signum, frame):
        if signum in submitit:
            requeue.append(signum)
        elif signum != signal.SIGINT:
            _received.append(signum)
        stopped.append(128 + signum)
        SIDE_STOP.set()

    # only where nothing else handles them (submitit, in a SLURM job, does)
    free = [s for s in (signal.SIGINT, *STOP_SIGNALS) if main and signal.getsignal(s) in (
        signal.SIG_DFL, signal.default_int_handler)] + [s for s in submitit if main]
    previous = {s: signal.signal(s, stop) for s in free}
    try:
        yield stopped
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        SIDE_STOP.clear()
    if requeue:
        print(f"SLURM job {slurm_job()}: every run side by side wrote a checkpoint; submitit "
              f"requeues the job, which resumes from there", flush=True)
        _requeued.append(requeue[0])
        submitit[requeue[0]](requeue[0], None)  # requeues and exits


def train_side_by_side(groups: list[list[DictConfig | dict]]) -> list[list]:
    """train_pack of each group of runs, side by side in this process: each in a thread of its
    own, on a GPU on a CUDA stream of its own (trainer.streams). Per group, its outcomes. A stop
    (Ctrl-C, SIGTERM, SIGHUP) ends every run at a checkpoint after its iteration; Interrupted
    and OutOfTime are raised once every group has stopped."""
    if len(groups) == 1:
        return [train_pack(groups[0])]
    groups = [[to_plain(c) if isinstance(c, DictConfig) else c for c in g] for g in groups]
    outcomes: list = [None] * len(groups)
    errors: list = [None] * len(groups)

    def work(k: int) -> None:
        with beside_others():
            try:
                outcomes[k] = train_pack(groups[k])
            except BaseException as e:  # raised in the main thread, once all have stopped
                errors[k] = e

    threads = [threading.Thread(target=work, args=(k,), name=f"pack-{k}", daemon=True)
               for k in range(len(groups))]
    SIDE_STOP.clear()
    with pack_log([c for g in groups for c in g]), _stops_side_by_side() as stopped:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.1)
    if stopped:
        raise Interrupted(stopped[0])
    late = [e for e in errors if isinstance(e, OutOfTime)]
    if late:  # every group stopped for the time limit, or came after it
        raise max(late, key=lambda e: -1 if e.step is None else e.step)
    for e in errors:
        if e is not None:
            raise e
    return outcomes


def train_pack(cfgs: list[DictConfig | dict]) -> list:
    """Train the runs `cfgs` (pack_key equal) together as one wide net: those that start from
    the same iteration as one pack, each other alone (train). Per run, its result.json, or the
    error that refused or failed it (as train raises it); Interrupted and OutOfTime are raised."""
    outcomes: list = [None] * len(cfgs)
    starts: dict = {}  # the iteration a group starts from -> [(index, cfg)]
    for i, cfg in enumerate(cfgs):
        cfg = to_plain(cfg) if isinstance(cfg, DictConfig) else cfg
        try:
            validate(cfg)
            check(cfg["trainer"])
            cfg = {**cfg, "model": the_net(cfg["model"])}
            run_dir = Path(cfg["run_dir"])
            if done := rundir.finished_result(run_dir, semantic_config(cfg)):
                print(f"[{label(cfg)}] done, skipped ({run_dir}: {done['status']})", flush=True)
                outcomes[i] = done
                continue
            start = checkpoint_step(run_dir / "last.ckpt")
        except CorruptCheckpoint:
            start = ("alone", i)  # train() records why it cannot resume
        except (ValueError, RunConflict) as e:
            outcomes[i] = e
            continue
        starts.setdefault(start, []).append((i, cfg))
    for start, members in starts.items():
        if len(members) > 1:
            members = _locked(members, outcomes)
        if len(members) > 1:
            for (i, _, _), outcome in zip(members, _train_packed(members, start)):
                outcomes[i] = outcome
        elif members:
            i, cfg, *lock = members[0]
            if lock:
                lock[0].close()
            outcomes[i] = _outcome(cfg)
    return outcomes


def _outcome(cfg: dict):
    """train(cfg), or the error that refused or failed the run."""
    try:
        return train(cfg)
    except (ValueError, DatasetError, RunConflict, RunBusy, RunFailed) as e:
        return e


def _locked(members: list, outcomes: list) -> list:
    """[(index, cfg, lock)] of the runs this process could lock (the others' outcome: RunBusy)."""
    out = []
    for i, cfg in members:
        run_dir = Path(cfg["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            out.append((i, cfg, rundir.lock_run(run_dir)))
        except RunBusy as e:
            outcomes[i] = e
    return out


def _train_packed(members: list, resume_step: int) -> list:
    """The outcome of each run of a pack trained from `resume_step`; the locks are released."""
    cfgs = [cfg for _, cfg, _ in members]
    gpu_lock = None
    try:
        if (deadline() or math.inf) <= time.time():
            for cfg in cfgs:
                print(f"[{label(cfg)}] not started: the sweep's time limit is spent", flush=True)
            raise OutOfTime(None)
        gpu, gpu_lock = claim(cfgs[0]["trainer"])
        with pack_log(cfgs), stop_signals(cfgs[0]), own_stream(cfgs[0]["trainer"], gpu):
            try:
                return _run_pack(cfgs, gpu, resume_step)
            except (RunFailed, KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # the pack's failure is each of its runs'
                return [_pack_failure(cfg, e) for cfg in cfgs]
    finally:
        for _, _, lock in members:
            lock.close()
        if gpu_lock is not None:
            gpu_lock.close()


def _pack_failure(cfg: dict, e: Exception):
    run_dir = Path(cfg["run_dir"])
    if isinstance(e, (DatasetError, ValueError)) and _status(run_dir) != "running":
        return e  # refused before anything was written
    return RunFailed(_record_failure(cfg, run_dir, e))


def _run_pack(cfgs: list[dict], gpu: int | None, resume_step: int) -> list[dict]:
    with _BUILDING:
        data, system, trainer_kwargs = build(cfgs[0], gpu, pack=cfgs)
    run_dirs = [Path(c["run_dir"]) for c in cfgs]
    system.resume_from = [d / "last.ckpt" for d in run_dirs]
    members = [Member(system, k) for k in range(len(cfgs))]
    names = [label(c) for c in cfgs]
    loggers = [RunLogger(c, d, resume_step) if c.get("logger") else None
               for c, d in zip(cfgs, run_dirs)]
    results = [_start(c, d, data, m, trainer_kwargs, gpu, resume_step, {"pack": names})
               for c, d, m in zip(cfgs, run_dirs, members)]
    recorders = [Recorder(d, c, r, lg, deadline())
                 for c, d, r, lg in zip(cfgs, run_dirs, results, loggers)]
    pack = PackRecorder(recorders, members)
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[pack], default_root_dir=str(run_dirs[0]))
    t0 = time.perf_counter()
    try:
        with requeue_after_a_checkpoint(cfgs[0], pack):
            _fit(list(zip(cfgs, recorders)), trainer, system,
                 PackData(data, [c["seed"] for c in cfgs]), resume_step)
    finally:
        for lg in loggers:
            if lg:
                lg.close()
    if pack.out_of_time is not None:
        for cfg in cfgs:
            print(f"[{label(cfg)}] stopped at iteration {pack.out_of_time}, its checkpoint: the "
                  f"sweep's time limit is spent; the same command resumes it", flush=True)
        raise OutOfTime(pack.out_of_time)
    if pack.side_stopped is not None:
        _side_stopped(cfgs, pack.side_stopped)
    accelerator = trainer_kwargs["accelerator"]
    system.to(torch.device("cuda", gpu or 0) if accelerator == "gpu" else torch.device("cpu"))
    data.to(system.device)  # Lightning's teardown may have moved the module to the CPU
    for cfg, run_dir, member, result in zip(cfgs, run_dirs, members, results):
        if result["status"] != "diverged":
            result["status"] = "done"
            rundir.write_json(run_dir / "responses.json", {
                "layer_std": member.layer_responses(data.eval_splits["test"]), "split": "test",
                "depth": cfg["model"]["depth"], "block": cfg["model"]["block"]})
        _finish(cfg, run_dir, data, member, result, time.perf_counter() - t0)
    return results
