"""The run's Lightning logger (logger=csv|tensorboard|wandb): each record once across resumes."""

from __future__ import annotations

import contextlib
import hashlib
import math
import warnings
from pathlib import Path

from hydra.utils import instantiate

from ..rundir import lock_run, read_json, read_metrics, write_json
from .records import label

LOGGED = ("lr", "train_loss", "train_error", "val_error", "test_error")  # metrics.csv's, sent


class RunLogger:
    """The run's Lightning logger and the records it holds: each record reaches it once, however
    often the run is resumed (Lightning's self.log would lose or repeat records across resumes).
    <run_dir>/logs/logged.json keeps the last iteration sent to each logger.

    A resumed run's logger holds what it was sent, less what it drops itself (CSVLogger starts
    its file afresh, TensorBoard purges the steps after the checkpoint, wandb keeps all); the
    records up to the checkpoint that it lacks are sent again from metrics.csv.
    """

    def __init__(self, cfg: dict, run_dir: Path, resume_step: int) -> None:
        """Made before metrics.csv is cut back to the checkpoint; ValueError (nothing written) when
        the logger's package is not installed or its arguments are wrong."""
        spec = dict(cfg["logger"])
        kind = spec["_target_"].rsplit(".", 1)[-1]
        self.name = kind.replace("Logger", "").lower()
        self.record = run_dir / "logs" / "logged.json"
        self.logged = self._logged()
        sent = self.logged.get(self.name, 0) if (run_dir / "logs" / self.name).exists() else 0
        keeps, arguments = LOGGERS.get(kind, (lambda sent, resume: sent, None))
        extra = arguments(cfg, run_dir, resume_step) if arguments else {}
        spec.update({"save_dir": str(run_dir), **extra})
        try:
            self.logger = instantiate(spec)
        except Exception as e:  # Hydra wraps the logger's own error (missing package, bad argument)
            cause = e.__cause__ or e
            if isinstance(cause, ImportError) or "No module named" in str(e):
                raise ValueError(f"logger={self.name} needs its package: "
                                 f"pip install 'resdepth[{self.name}]'") from None
            raise ValueError(f"logger={self.name}: {type(cause).__name__}: {cause}") from None
        if kind == "CSVLogger":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
                self.logger.experiment  # noqa: B018 (the writer that clears the old file)
        self.held, self.sent = keeps(sent, resume_step), 0
        for row in read_metrics(run_dir / "metrics.csv"):
            if self.held < row["iteration"] <= resume_step:
                self.send(row)

    def _logged(self) -> dict:
        """logged.json as {logger name: iteration}; empty (the loggers hold nothing) when there is
        none, or it was edited into something else."""
        try:
            logged = read_json(self.record)
        except (OSError, ValueError):
            return {}
        if not isinstance(logged, dict):
            return {}
        return {k: v for k, v in logged.items() if isinstance(v, int)}

    def send(self, row: dict) -> None:
        """The record to the logger at its iteration unless it holds it, written out at once (a
        killed run keeps each record it printed), then logged.json; unmeasured (nan) left out."""
        if row["iteration"] <= self.held:
            return
        values = {k: float(row[k]) for k in LOGGED if not math.isnan(row[k])}
        self.logger.log_metrics(values, step=row["iteration"])
        self.logger.save()
        self.held = self.logged[self.name] = row["iteration"]
        self.sent += 1
        self.record.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.record, self.logged)

    def close(self) -> None:
        """End the logger's session: a sweep trains several runs in one process, each its own wandb
        run (wandb would otherwise log the next run into this one)."""
        if self.name == "wandb":
            import wandb

            wandb.finish()


def send_records(run_dir: Path, logger: dict) -> tuple[str, int, int]:
    """A trained run's records (metrics.csv) to `logger` (a composed logger config), each once, as
    the run itself sends them when it resumes: (label, records sent now, records in all).

    The logger comes from the command line, never from the run's own config.json (a results root
    from elsewhere is data: its `_target_` is not instantiated). RunBusy while it trains.
    """
    with contextlib.closing(lock_run(run_dir)):
        cfg = {**read_json(run_dir / "config.json")["config"], "logger": logger}
        rows = read_metrics(run_dir / "metrics.csv")
        last = max((r["iteration"] for r in rows), default=0)
        run_logger = RunLogger(cfg, run_dir, last)
        run_logger.close()
        return label(cfg), run_logger.sent, len(rows)


def _tensorboard_purge(cfg: dict, run_dir: Path, resume_step: int) -> dict:
    """SummaryWriter's purge_step: readers drop the events after the checkpoint (all of them when
    there is no checkpoint yet)."""
    return {"purge_step": resume_step + 1}


def _wandb_id(cfg: dict, run_dir: Path, resume_step: int) -> dict:
    """One wandb run per run directory: a fixed id (from its path), resumed when it exists."""
    run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return {"save_dir": str(run_dir / "logs"), "id": run_id, "name": label(cfg), "resume": "allow"}


# Per logger class: which records it holds when its run resumes at resume_step, given the last one
# sent, and the arguments that continue the run's history. Other loggers are taken to keep all.
LOGGERS = {"CSVLogger": (lambda sent, resume: 0, None),
           "TensorBoardLogger": (min, _tensorboard_purge),
           "WandbLogger": (lambda sent, resume: sent, _wandb_id)}
