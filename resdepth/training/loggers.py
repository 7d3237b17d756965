"""The run's Lightning logger (logger=csv|tensorboard|wandb), sent each record once across resumes."""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

from hydra.utils import instantiate

from ..rundir import read_json, read_metrics, write_json
from .records import label

LOGGED = ("lr", "train_loss", "train_error", "val_error", "test_error")  # metrics.csv's values, sent to the logger


class RunLogger:
    """The run's Lightning logger (`logger=csv|tensorboard|wandb`, conf/logger/) and which records it holds, so that
    each record reaches it once, however often the run is interrupted and resumed, and whichever logger an earlier
    part of the run used. <run_dir>/logs/logged.json keeps the last iteration sent to each logger.

    When a run resumes at its checkpoint, a logger holds what it was sent up to the interruption, less what it
    drops itself: CSVLogger starts its file afresh, TensorBoard is told to purge the steps after the checkpoint,
    wandb keeps everything. The records up to the checkpoint that it does not hold are sent again from the run's
    metrics.csv; the records the resumed run then recomputes are sent only if the logger does not hold them (wandb
    keeps the values it was first sent: the same, as a resumed run repeats its iterations)."""

    def __init__(self, cfg: dict, run_dir: Path, resume_step: int) -> None:
        """Made before the run's metrics.csv is cut back to its checkpoint. ValueError (before anything is written)
        when the logger's package is not installed or its arguments are wrong."""
        spec = dict(cfg["logger"])
        kind = spec["_target_"].rsplit(".", 1)[-1]
        self.name = kind.replace("Logger", "").lower()
        self.record = run_dir / "logs" / "logged.json"
        self.logged = self._logged()
        sent = self.logged.get(self.name, 0) if (run_dir / "logs" / self.name).exists() else 0
        keeps, arguments = LOGGERS.get(kind, (lambda sent, resume: sent, None))
        spec.update({"save_dir": str(run_dir), **(arguments(cfg, run_dir, resume_step) if arguments else {})})
        try:
            self.logger = instantiate(spec)
        except Exception as e:  # Hydra wraps the logger's own error (a missing package, an unknown argument)
            if isinstance(e.__cause__ or e, ImportError) or "No module named" in str(e):
                raise ValueError(f"logger={self.name} needs its package: pip install 'resdepth[{self.name}]'") from None
            raise ValueError(f"logger={self.name}: {type(e.__cause__ or e).__name__}: {e.__cause__ or e}") from None
        if kind == "CSVLogger":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
                self.logger.experiment  # noqa: B018 (the writer that clears the old file)
        self.held = keeps(sent, resume_step)
        for row in read_metrics(run_dir / "metrics.csv"):
            if self.held < row["iteration"] <= resume_step:
                self.send(row)

    def _logged(self) -> dict:
        """logged.json as {logger name: iteration}; empty when there is none (or it was edited into something else):
        the loggers are then taken to hold nothing."""
        try:
            logged = read_json(self.record)
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in logged.items() if isinstance(v, int)} if isinstance(logged, dict) else {}

    def send(self, row: dict) -> None:
        """The record's values to the logger at its iteration, unless it holds them already, written out at once (a
        killed run keeps every record it printed); then logged.json says so. A split not measured (nan) is left out."""
        if row["iteration"] <= self.held:
            return
        self.logger.log_metrics({k: float(row[k]) for k in LOGGED if not math.isnan(row[k])}, step=row["iteration"])
        self.logger.save()
        self.held = self.logged[self.name] = row["iteration"]
        self.record.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.record, self.logged)

    def close(self) -> None:
        """End the logger's session with its run: a sweep trains several runs in one process, each its own wandb
        run (wandb would otherwise go on logging the next run into this one)."""
        if self.name == "wandb":
            import wandb

            wandb.finish()


def _tensorboard_purge(cfg: dict, run_dir: Path, resume_step: int) -> dict:
    """SummaryWriter's purge_step: readers drop the events after the checkpoint (written by the interrupted part;
    with no checkpoint yet, every earlier event)."""
    return {"purge_step": resume_step + 1}


def _wandb_id(cfg: dict, run_dir: Path, resume_step: int) -> dict:
    """One wandb run per run directory: a fixed id (from the directory's path), resumed when it exists."""
    run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return {"save_dir": str(run_dir / "logs"), "id": run_id, "name": label(cfg), "resume": "allow"}


# Per logger class: which records it holds when its run resumes at resume_step, given the last one it was sent
# (see RunLogger), and the arguments it needs to continue the run's history. Other loggers are taken to keep all.
LOGGERS = {"CSVLogger": (lambda sent, resume: 0, None),
           "TensorBoardLogger": (min, _tensorboard_purge),
           "WandbLogger": (lambda sent, resume: sent, _wandb_id)}
