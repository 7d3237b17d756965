"""The callback that turns training into records: every eval_every iterations a metrics.csv row, a result.json
update, a progress line and the same row to the run's logger (RunLogger: `logger=csv|tensorboard|wandb`, Lightning's
own classes, writing under <run_dir>/logs); every checkpoint_every iterations last.ckpt. Stops a diverged run.
What a run prints also goes to <run_dir>/resdepth.log (run_log).

Reads the LightningModule's records (System.take_record); writes only through rundir and the logger.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import time
from pathlib import Path

import pytorch_lightning as pl

from ..models import net_name
from ..tables import fmt_time
from ..rundir import append_metrics, atomic_write, write_json

PACE_AFTER_S = 30.0  # seconds: a run that has not reached a record by then says its pace once (in logs)


def label(cfg: dict) -> str:
    """'plain-20', 'ResNet-56' (the paper's names), with the seed and option B when used."""
    m = cfg["model"]
    return f"{net_name(m['block'], m['depth'])}{'-B' if m['shortcut'] == 'B' else ''} seed {cfg['seed']}"


class Recorder(pl.Callback):
    """Every eval_every iterations: take a record, append it to metrics.csv, print progress, update result.json;
    every checkpoint_every iterations: write last.ckpt atomically. Stops a diverged run."""

    def __init__(self, run_dir: Path, cfg: dict, result: dict, logger=None) -> None:
        self.run_dir, self.cfg, self.result, self.logger = run_dir, cfg, result, logger
        t = cfg["trainer"]
        self.max_steps, self.eval_every = t["max_steps"], t["eval_every"]
        self.checkpoint_every = t["checkpoint_every"] or t["eval_every"]
        self.progress = t["progress"]
        # On a terminal, one line redrawn in place between records; in logs and CI, only whole lines.
        self.live = self.progress and sys.stdout.isatty()
        self.last_draw, self.last_row = 0.0, None
        self.t0, self.step0 = time.perf_counter(), None
        self.checkpoint_step = None  # the iteration of last.ckpt, once this process has written one
        self.paced = False  # whether the early pace line (slow runs only) has been printed

    def on_train_start(self, trainer, pl_module) -> None:
        self.step0 = trainer.global_step
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.live:  # a terminal: the live line shows the pace
            if time.perf_counter() - self.last_draw > 1.0:
                self._draw(step)
        elif self.progress and not self.paced and time.perf_counter() - self.t0 > PACE_AFTER_S:
            self._pace(step)
        if step % self.eval_every == 0 or step >= self.max_steps:
            row = pl_module.take_record()
            append_metrics(self.run_dir / "metrics.csv", row)
            if self.logger:
                self.logger.send(row)
            # where the warm-up ended is known from then on, also to a run that never finishes
            self.result.update(warmup_ended_at=pl_module.warmup_steps or None,
                               warmup_ended_by=getattr(pl_module, "warmup_ended_by", None))
            self._update_result(row)
            if self.progress:
                self._print(step, row)
            if row["diverged_at"] is not None:
                trainer.should_stop = True
                return
        if step % self.checkpoint_every == 0 or step >= self.max_steps:
            atomic_write(self.run_dir / "last.ckpt", trainer.save_checkpoint)
            self.checkpoint_step = step

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
        errs = (f"train {100 * last['train_error']:.2f}% test {100 * last['test_error']:.2f}% (it {last['iteration']})"
                if last else "first record at it " + str(self.eval_every))
        sys.stdout.write(f"\r\033[K  [{label(self.cfg)}] it {step}/{self.max_steps}  {errs}  {rate:.1f} it/s  "
                         f"left {fmt_time(left)}")
        sys.stdout.flush()
        self.last_draw = time.perf_counter()

    def _pace(self, step: int) -> None:
        """Once, in logs, when the first record is still far off: the speed so far and the run's time left."""
        self.paced = True
        rate, left = self._rate_left(step)
        next_record = min(self.max_steps, (step // self.eval_every + 1) * self.eval_every)
        if rate and (next_record - step) / rate > PACE_AFTER_S:
            print(f"  [{label(self.cfg)}] it {step:>6}/{self.max_steps}  {rate:.2f} it/s: first record at it "
                  f"{next_record} in about {fmt_time((next_record - step) / rate)}, the run needs about "
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
        print(f"  [{label(self.cfg)}] it {step:>6}/{self.max_steps} ({100 * step / self.max_steps:3.0f}%)  {errs}"
              f"  lr {row['lr']:<6.4g} {rate:6.1f} it/s  left {fmt_time(left)}", flush=True)


# ------------------------------------------------------------------------------------------------ run log

class _Tee(io.TextIOBase):
    """A stream that writes to the console and to the run's log; the live line (redrawn with '\\r') stays on the
    terminal only."""

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
def run_log(path: Path):
    """What the run prints (stdout and stderr) is also appended to `path` (<run_dir>/resdepth.log, the file
    Hydra's job logging opens there too), so each run's folder keeps its own progress lines."""
    with open(path, "a") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err
