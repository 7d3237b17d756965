"""logger=csv|tensorboard|wandb: each record's row and the resolved config reach the logger under the run directory,
a resumed run's logger history has no duplicate steps, the choice never changes the run directory; and each run's
resdepth.log holds what the run printed."""

import csv
import json
from pathlib import Path

import pytest

from resdepth.rundir import read_metrics
from resdepth.system import System
from resdepth.train import RunFailed, train

from .conftest import compose

pytestmark = pytest.mark.slow

METRICS = ("lr", "train_loss", "train_error", "test_error")  # val_error: no validation split in these runs


def _tiny(root, *extra):
    return compose(["experiment=smoke", f"results_root={root}", "model.depth=8", "data.train_size=256",
                    "data.test_size=128", "trainer.precision=32-true", *extra])


class Stop(RuntimeError):
    """Stands for an interruption after iteration 35: its checkpoint is at 20, and the record at 30 is logged."""


def _interrupted_then_resumed(cfg, monkeypatch) -> dict:
    """Train `cfg` (records every 10 iterations, a checkpoint every 20), stopped at iteration 35, then resumed."""
    def stop_at_35(self, outputs, batch, batch_idx):
        if self.trainer.global_step == 35:
            raise Stop("stopped at iteration 35")

    with monkeypatch.context() as m:
        m.setattr(System, "on_train_batch_end", stop_at_35)
        with pytest.raises(RunFailed, match="stopped at iteration 35"):
            train(cfg)
    result = train(cfg)
    assert result["status"] == "done" and result["resumed_from"] == 20
    return result


def test_the_logger_does_not_change_the_run_directory():
    dirs = {compose(["experiment=smoke", f"logger={name}"])["run_dir"] for name in ("none", "csv", "tensorboard")}
    assert dirs == {compose(["experiment=smoke"])["run_dir"]}


def _tensorboard_scalars(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _csv_scalars(log_dir) -> dict:
    with open(log_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [(int(r["step"]), float(r[k])) for r in rows if r.get(k)] for k in rows[0] if k != "step"}


@pytest.mark.parametrize("kind,read", [("csv", _csv_scalars), ("tensorboard", _tensorboard_scalars)])
def test_the_logger_holds_every_record_once_after_a_resume(tmp_path, monkeypatch, kind, read):
    if kind == "tensorboard":
        pytest.importorskip("tensorboard")
    cfg = _tiny(tmp_path, f"logger={kind}", "trainer.checkpoint_every=20")
    _interrupted_then_resumed(cfg, monkeypatch)
    run_dir = Path(cfg["run_dir"])
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["iteration"] for r in rows] == [10, 20, 30, 40]
    scalars = read(run_dir / "logs" / kind)
    assert set(scalars) == set(METRICS)  # the record's values and nothing per iteration
    for key in METRICS:  # every record once (no second 30 from the interrupted part), the values of metrics.csv
        assert [step for step, _ in scalars[key]] == [10, 20, 30, 40]
        assert [value for _, value in scalars[key]] == pytest.approx([r[key] for r in rows], rel=1e-6)
    hparams = (run_dir / "logs" / kind / "hparams.yaml").read_text()
    assert "depth: 8" in hparams and "checkpoint_every: 20" in hparams  # the resolved config


def test_wandb_offline_run_is_one_run_continued(tmp_path, monkeypatch):
    """Offline files only: wandb's Python package has no reader for them, so their rows are not read back."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _tiny(tmp_path, "logger=wandb", "trainer.checkpoint_every=20")
    result = _interrupted_then_resumed(cfg, monkeypatch)
    runs = sorted(Path(result["run_dir"]).glob("logs/wandb/offline-run-*"))
    assert len(runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in runs}) == 1  # two sessions, one run id
    files = [list(p.glob("*.wandb")) for p in runs]
    assert all(len(f) == 1 and f[0].stat().st_size > 0 for f in files)  # each session's records


def test_the_run_log_holds_what_the_run_printed(tmp_path, capsys):
    cfg = _tiny(tmp_path, "trainer.max_steps=20")
    train(cfg)
    printed = capsys.readouterr()
    log = (Path(cfg["run_dir"]) / "resdepth.log").read_text()
    lines = [line for line in (printed.out + printed.err).splitlines() if line.strip()]
    assert len(lines) >= 4 and all(line in log for line in lines)  # start, two records, the end
    assert "it     20/20" in log and "done: test" in log
    assert json.loads((Path(cfg["run_dir"]) / "result.json").read_text())["status"] == "done"


def test_a_logger_that_cannot_be_made_is_refused_before_anything_is_written(tmp_path):
    cfg = _tiny(tmp_path, "logger=csv", "+logger.bogus=1")
    with pytest.raises(ValueError, match="logger=csv: TypeError: .*unexpected keyword argument 'bogus'"):
        train(cfg)
    assert not list(tmp_path.rglob("config.json")) and not list(tmp_path.rglob("result.json"))
