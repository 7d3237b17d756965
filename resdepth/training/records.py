"""The callback that turns training into records, and run_log: what a run prints, in its folder."""

from __future__ import annotations

import contextlib
import io
import math
import sys
import threading
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..models import net_name
from ..tables import fmt_time
from ..rundir import append_gradients, append_metrics, atomic_write, write_json

PACE_AFTER_S = 30.0  # seconds: a run with no record by then says its pace once (in logs)
_side = threading.local()  # .on: a thread of packs side by side (train_side_by_side)
SIDE_STOP = threading.Event()  # set: every run side by side stops at a checkpoint


def side_thread() -> bool:
    """Whether this thread trains a pack side by side with others: the process's pack_log routes
    what it prints, and SIDE_STOP stops it."""
    return getattr(_side, "on", False)


@contextlib.contextmanager
def beside_others():
    """This thread's runs train side by side with others' (see side_thread)."""
    _side.on = True
    try:
        yield
    finally:
        _side.on = False


def label(cfg: dict) -> str:
    """'plain-20', 'ResNet-56' (the paper's names), with the seed and option B when used."""
    m = cfg["model"]
    option = "-B" if m["shortcut"] == "B" else ""
    return f"{net_name(m['block'], m['depth'])}{option} seed {cfg['seed']}"


class CheckpointIO(TorchCheckpointIO):
    """Saves where it is told: the Recorder's atomic_write stages last.ckpt beside its target,
    while Lightning's own save stages it in $TMPDIR (a small one failed runs with disk to spare)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        torch.save(checkpoint, path)


class Recorder(pl.Callback):
    """Every eval_every iterations a record: a metrics.csv row, the same to the run's logger,
    result.json and a progress line; every checkpoint_every last.ckpt. Stops a diverged run."""

    def __init__(self, run_dir: Path, cfg: dict, result: dict, logger=None,
                 deadline: float | None = None) -> None:
        self.run_dir, self.cfg, self.result, self.logger = run_dir, cfg, result, logger
        self.deadline = deadline  # time.time() at which the sweep's time limit is spent
        self.out_of_time = None  # the iteration the run stopped at for the time limit
        self.side_stopped = None  # the iteration it stopped at for SIDE_STOP
        t = cfg["trainer"]
        self.max_steps, self.eval_every = t["max_steps"], t["eval_every"]
        self.checkpoint_every = t["checkpoint_every"] or t["eval_every"]
        self.progress = t["progress"]
        # Not Lightning's bar: on a terminal one line redrawn in place; in logs, only whole lines.
        self.live = self.progress and sys.stdout.isatty() and not side_thread()
        self.last_draw, self.last_row = 0.0, None
        self.t0, self.step0 = time.perf_counter(), None
        self.checkpoint_step = None  # the iteration of last.ckpt, once this process has written one
        self.paced = False  # whether the early pace line (slow runs only) has been printed
        self.stop = None  # set by a signal: called with the iteration, once its checkpoint is saved

    def on_train_start(self, trainer, pl_module) -> None:
        self.step0 = trainer.global_step
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.iteration_end(trainer, pl_module, trainer.global_step):
            trainer.should_stop = True  # diverged

    def iteration_end(self, trainer, run, step: int, save=None, stopping: bool = False) -> bool:
        """After iteration `step`: the record, the checkpoint (`save(path)`, default the
        trainer's), the stops. `run` gives take_record() and the warm-up; True once it diverged.
        `stopping`: a stop of the whole pack this run trains in, which checkpoints here too."""
        if self.live:  # a terminal: the live line shows the pace
            if time.perf_counter() - self.last_draw > 1.0:
                self._draw(step)
        elif self.progress and not self.paced and time.perf_counter() - self.t0 > PACE_AFTER_S:
            self._pace(step)
        if step % self.eval_every == 0 or step >= self.max_steps:
            # Evaluated here, not in Lightning's validation loop: that runs after this hook (which
            # writes the row, then its checkpoint) and skips a last iteration off its grid.
            row = run.take_record()
            if row["diverged_at"] is None:
                append_gradients(self.run_dir / "gradients.csv", step, run.gradients())
            append_metrics(self.run_dir / "metrics.csv", row)
            if self.logger:
                self.logger.send(row)
            # where the warm-up ended is known from then on, also to a run that never finishes
            self.result.update(warmup_ended_at=run.warmup_steps or None,
                               warmup_ended_by=run.warmup_ended_by)
            self._update_result(row)
            if self.progress:
                self._print(step, row)
            if row["diverged_at"] is not None:
                return True
        # A stop that waits for this iteration's end (SIGTERM under a launcher that lets the run
        # finish its step, a SLURM job's time-limit signal) checkpoints here, whatever the interval.
        if self.deadline is not None and step < self.max_steps and time.time() >= self.deadline:
            self.out_of_time, trainer.should_stop = step, True  # fit ends after this iteration
        if SIDE_STOP.is_set() and side_thread() and step < self.max_steps:
            self.side_stopped, trainer.should_stop = step, True
        stopping = (stopping or self.stop is not None or trainer.received_sigterm
                    or self.out_of_time is not None or self.side_stopped is not None)
        if step % self.checkpoint_every == 0 or step >= self.max_steps or stopping:
            # Not ModelCheckpoint: an atomic rename beside the target, so a kill mid-write keeps
            # the last checkpoint (Lightning's save moves a $TMPDIR copy, in place across disks).
            if self.checkpoint_step != step:
                atomic_write(self.run_dir / "last.ckpt", save or trainer.save_checkpoint)
                self.checkpoint_step = step
        if self.stop is not None:
            stop, self.stop = self.stop, None
            stop(step)
        return False

    def _update_result(self, row: dict) -> None:
        r = self.result
        r["steps"] = row["iteration"]
        r["wall_time_s"] = row["elapsed_s"]
        if row["diverged_at"] is not None:
            r["status"], r["diverged_at"] = "diverged", row["diverged_at"]
        else:
            r["final_train_error"], r["final_train_loss"] = row["train_error"], row["train_loss"]
            for split in ("test", "val"):
                e = row[f"{split}_error"]
                if not math.isnan(e):
                    r[f"final_{split}_error"] = e
                    if r.get(f"best_{split}_error") is None or e < r[f"best_{split}_error"]:
                        r[f"best_{split}_error"], r[f"best_{split}_iteration"] = e, row["iteration"]
        write_json(self.run_dir / "result.json", r)

    def _rate_left(self, step: int) -> tuple[float, float]:
        rate = (step - (self.step0 or 0)) / max(time.perf_counter() - self.t0, 1e-9)
        return rate, (self.max_steps - step) / rate if rate else float("nan")

    def _draw(self, step: int) -> None:
        """The live line: iteration, the last record's errors, speed, time left (no device sync)."""
        rate, left = self._rate_left(step)
        last = self.last_row
        first = "first record at it " + str(self.eval_every)
        errs = (f"train {100 * last['train_error']:.2f}% test {100 * last['test_error']:.2f}% "
                f"(it {last['iteration']})" if last else first)
        sys.stdout.write(f"\r\033[K  [{label(self.cfg)}] it {step}/{self.max_steps}  {errs}  "
                         f"{rate:.1f} it/s  left {fmt_time(left)}")
        sys.stdout.flush()
        self.last_draw = time.perf_counter()

    def _pace(self, step: int) -> None:
        """Once, in logs, when the first record is far off: the speed so far, the time left."""
        self.paced = True
        rate, left = self._rate_left(step)
        next_record = min(self.max_steps, (step // self.eval_every + 1) * self.eval_every)
        if rate and (next_record - step) / rate > PACE_AFTER_S:
            print(f"  [{label(self.cfg)}] it {step:>6}/{self.max_steps}  {rate:.2f} it/s: "
                  f"first record at it {next_record} in about "
                  f"{fmt_time((next_record - step) / rate)}, the run needs about "
                  f"{fmt_time(left)} more", flush=True)

    def _print(self, step: int, row: dict) -> None:
        self.last_row = row
        rate, left = self._rate_left(step)
        if self.live:
            sys.stdout.write("\r\033[K")
        errs = f"train {100 * row['train_error']:5.2f}%"
        if not math.isnan(row["val_error"]):
            errs += f"  val {100 * row['val_error']:5.2f}%"
        if not math.isnan(row["test_error"]):
            errs += f"  test {100 * row['test_error']:5.2f}%"
        if row["diverged_at"] is not None:
            errs = f"DIVERGED at iteration {row['diverged_at']} (loss not finite)"
        print(f"  [{label(self.cfg)}] it {step:>6}/{self.max_steps} "
              f"({100 * step / self.max_steps:3.0f}%)  {errs}"
              f"  lr {row['lr']:<6.4g} {rate:6.1f} it/s  left {fmt_time(left)}", flush=True)


# -------------------------------------------------------------------------------------- run log

class _Tee(io.TextIOBase):
    """Writes to the console and the run's log; the live line (redrawn with '\\r'): console only."""

    def __init__(self, console, log) -> None:
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.console.write(text)
        if not text.startswith("\r"):
            self.log.write(text)
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.console.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()


@contextlib.contextmanager
def _teed(tee):
    """sys.stdout and sys.stderr through tee(stream) for the block; in a thread side by side with
    others, as they are: the process's pack_log routes its lines."""
    if side_thread():
        yield
        return
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = tee(out), tee(err)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


@contextlib.contextmanager
def run_log(path: Path):
    """What the run prints (stdout and stderr) is also appended to `path` (<run_dir>/resdepth.log,
    which Hydra's job logging opens too), so each run's folder keeps its own progress lines."""
    with open(path, "a") as log, _teed(lambda stream: _Tee(stream, log)):
        yield


class PackRecorder(pl.Callback):
    """The Recorders of a pack's runs: each writes its own run's records and last.ckpt (the solo
    format); a diverged run stops recording while the others train on; a stop of the pack
    (SIGTERM, the time limit, a SLURM signal) checkpoints every run at the same iteration."""

    def __init__(self, recorders: list[Recorder], members: list) -> None:
        self.recorders, self.members = recorders, members
        self.ended = [False] * len(recorders)  # diverged
        self.stop = None  # as Recorder.stop, for the whole pack
        for r in recorders:
            r.live = False  # whole lines: K runs cannot share one redrawn line

    def on_train_start(self, trainer, pl_module) -> None:
        for r in self.recorders:
            r.on_train_start(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step, stopping = trainer.global_step, self.stop is not None
        for k, (r, member) in enumerate(zip(self.recorders, self.members)):
            if not self.ended[k]:
                def save(path, k=k):
                    torch.save(pl_module.member_checkpoint(k, trainer), path)

                self.ended[k] = r.iteration_end(trainer, member, step, save, stopping)
        if all(self.ended):
            trainer.should_stop = True
        if self.stop is not None:
            stop, self.stop = self.stop, None
            stop(step)

    @property
    def out_of_time(self) -> int | None:
        return next((r.out_of_time for r in self.recorders if r.out_of_time is not None), None)

    @property
    def side_stopped(self) -> int | None:
        return next((r.side_stopped for r in self.recorders if r.side_stopped is not None), None)


class _RunLogs:
    """The resdepth.log of each run by its label, each opened once its folder exists."""

    def __init__(self, cfgs: list[dict]) -> None:
        self.paths = {label(c): Path(c["run_dir"]) / "resdepth.log" for c in cfgs}
        self.open: dict = {}
        self.lock = threading.Lock()

    def write(self, line: str) -> None:
        """`line` to the logs of the runs it names ([label]), or to all when it names none."""
        with self.lock:
            names = [n for n in self.paths if f"[{n}]" in line] or list(self.paths)
            for name in names:
                if name not in self.open and self.paths[name].parent.is_dir():
                    self.open[name] = open(self.paths[name], "a")
                if name in self.open:
                    self.open[name].write(line)
                    self.open[name].flush()

    def close(self) -> None:
        for log in self.open.values():
            log.close()


class _PackTee(io.TextIOBase):
    """Writes each whole line to the console and to the logs of the runs it names ([label]), or
    to all of them when it names none; the lines of each thread (packs side by side) whole."""

    def __init__(self, console, logs: _RunLogs) -> None:
        self.console, self.logs, self.pending = console, logs, {}
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        if text.startswith("\r"):
            self.console.write(text)
            return len(text)
        with self.lock:
            me = threading.get_ident()
            pending = self.pending.pop(me, "") + text
            while "\n" in pending:
                line, pending = pending.split("\n", 1)
                self.console.write(line + "\n")
                self.logs.write(line + "\n")
            if pending:
                self.pending[me] = pending
        return len(text)

    def flush(self) -> None:
        self.console.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()


@contextlib.contextmanager
def pack_log(cfgs: list[dict]):
    """run_log for a pack (or packs side by side): each run's resdepth.log gets its own lines
    and the pack's."""
    logs = _RunLogs(cfgs)
    try:
        with _teed(lambda stream: _PackTee(stream, logs)):
            yield
    finally:
        logs.close()
