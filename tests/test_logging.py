"""logger=csv|tensorboard|wandb: each record's row and the resolved config reach the logger under
the run directory, a resumed run's logger history has no duplicate steps, the choice never changes
the run directory; and each run's resdepth.log holds what the run printed."""

import csv
import json
import struct
from pathlib import Path

import pytest
import yaml

from resdepth.rundir import read_metrics
from resdepth.training.system import System
from resdepth.training.train import RunFailed, train

from .conftest import compose

pytestmark = pytest.mark.slow

# val_error: no validation split in these runs
METRICS = ("lr", "train_loss", "train_error", "test_error")


def _tiny(root, *extra):
    return compose(["experiment=smoke", f"results_root={root}", "model.depth=8",
                    "data.train_size=256", "data.test_size=128", "trainer.precision=32-true",
                    *extra])


class Stop(RuntimeError):
    """Stands for an interruption after iteration 35: its checkpoint is at 20, and the record at 30
    is logged."""


def _stop_at_35(self, outputs, batch, batch_idx):
    if self.trainer.global_step == 35:
        raise Stop("stopped at iteration 35")


def _interrupted_then_resumed(cfg, monkeypatch) -> dict:
    """Train `cfg` (records every 10 iterations, a checkpoint every 20), stopped at iteration 35,
    then resumed."""
    with monkeypatch.context() as m:
        m.setattr(System, "on_train_batch_end", _stop_at_35)
        with pytest.raises(RunFailed, match="stopped at iteration 35"):
            train(cfg)
    result = train(cfg)
    assert result["status"] == "done" and result["resumed_from"] == 20
    return result


def test_the_logger_does_not_change_the_run_directory():
    dirs = {compose(["experiment=smoke", f"logger={name}"])["run_dir"]
            for name in ("none", "csv", "tensorboard")}
    assert dirs == {compose(["experiment=smoke"])["run_dir"]}


def _tensorboard_scalars(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def _csv_scalars(log_dir) -> dict:
    with open(log_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [(int(r["step"]), float(r[k])) for r in rows if r.get(k)]
            for k in rows[0] if k != "step"}


def _wandb_records(path):
    """The records of a wandb offline file (.wandb): a 7-byte header, then LevelDB's log format
    (32 KiB blocks of chunks, each with a 7-byte header: crc, length, type 1 whole / 2 first /
    3 middle / 4 last), each record a wandb protobuf Record. wandb's Python package no longer ships
    a reader (its service, in Go, reads them)."""
    from wandb.proto import wandb_internal_pb2

    raw, block, pos, chunks = path.read_bytes(), 32768, 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at a block's end
            pos += left
            continue
        chunks, pos = chunks + raw[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _wandb_scalars(log_dir) -> dict:
    """Every history row of the run's offline wandb sessions, in order, at Lightning's step
    (trainer/global_step); the sessions of one run directory share one run id (a resumed run
    continues its wandb run)."""
    sessions = sorted(log_dir.glob("offline-run-*"))
    assert len({p.name.rsplit("-", 1)[1] for p in sessions}) == 1
    scalars = {}
    for session in sessions:
        for record in _wandb_records(next(session.glob("*.wandb"))):
            if record.WhichOneof("record_type") == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                for key, value in row.items():
                    if not key.startswith("_") and key != "trainer/global_step":
                        scalars.setdefault(key, []).append((row["trainer/global_step"], value))
    return scalars


def _hparams(log_dir) -> dict:
    """The hyperparameters the logger recorded (the LightningModule's: the resolved config as
    `cfg`)."""
    if log_dir.name != "wandb":
        return yaml.safe_load((log_dir / "hparams.yaml").read_text())
    hparams = {}
    for session in sorted(log_dir.glob("offline-run-*")):
        for record in _wandb_records(next(session.glob("*.wandb"))):
            if record.WhichOneof("record_type") == "config":
                hparams.update({item.key: json.loads(item.value_json)
                                for item in record.config.update})
    return hparams


READERS = {"csv": _csv_scalars, "tensorboard": _tensorboard_scalars, "wandb": _wandb_scalars}


def _needs(kind, monkeypatch):
    if kind != "csv":
        pytest.importorskip(kind)
    monkeypatch.setenv("WANDB_SILENT", "true")


def _every_record_once(run_dir, kind):
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["iteration"] for r in rows] == [10, 20, 30, 40]
    scalars = READERS[kind](run_dir / "logs" / kind)
    assert set(scalars) == set(METRICS)  # the record's values and nothing per iteration
    # every record once (no second 30 from the interrupted part), the values of metrics.csv
    for key in METRICS:
        assert [step for step, _ in scalars[key]] == [10, 20, 30, 40]
        assert [value for _, value in scalars[key]] == pytest.approx([r[key] for r in rows],
                                                                     rel=1e-6)


@pytest.mark.parametrize("kind", READERS)
def test_the_logger_holds_every_record_once_after_a_resume(tmp_path, monkeypatch, kind):
    _needs(kind, monkeypatch)
    cfg = _tiny(tmp_path, f"logger={kind}", "trainer.checkpoint_every=20")
    _interrupted_then_resumed(cfg, monkeypatch)
    run_dir = Path(cfg["run_dir"])
    _every_record_once(run_dir, kind)
    hparams = _hparams(run_dir / "logs" / kind)["cfg"]  # the resolved config
    assert hparams["model"]["depth"] == 8 and hparams["trainer"]["checkpoint_every"] == 20
    if kind == "wandb":  # two offline sessions of one wandb run: `wandb sync` uploads them as one
        assert len(list((run_dir / "logs" / kind).glob("offline-run-*"))) == 2


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
def test_a_logger_turned_on_when_a_run_resumes_gets_the_earlier_records(tmp_path, monkeypatch,
                                                                         kind):
    """The logger is not part of the run's configuration, so a run can resume with one it did not
    have."""
    _needs(kind, monkeypatch)
    first = _tiny(tmp_path, "trainer.checkpoint_every=20")
    with monkeypatch.context() as m:
        m.setattr(System, "on_train_batch_end", _stop_at_35)
        with pytest.raises(RunFailed, match="stopped at iteration 35"):
            train(first)
    assert not (Path(first["run_dir"]) / "logs").exists()
    cfg = _tiny(tmp_path, f"logger={kind}", "trainer.checkpoint_every=20")
    assert cfg["run_dir"] == first["run_dir"] and train(cfg)["resumed_from"] == 20
    _every_record_once(Path(cfg["run_dir"]), kind)


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
    with pytest.raises(ValueError,
                       match="logger=csv: TypeError: .*unexpected keyword argument 'bogus'"):
        train(cfg)
    assert not list(tmp_path.rglob("config.json")) and not list(tmp_path.rglob("result.json"))


@pytest.mark.parametrize("kind", ["csv", "tensorboard"])
def test_resdepth_log_sends_the_records_of_finished_runs_once(tmp_path, monkeypatch, kind):
    """A finished run trained without a logger: `resdepth log ROOT logger=...` sends its records
    as a resumed run would, and a second call sends nothing again."""
    from resdepth.cli import log_cli
    from resdepth.rundir import write_json

    _needs(kind, monkeypatch)
    cfg = _tiny(tmp_path, "trainer.max_steps=40")
    train(cfg)
    run_dir = Path(cfg["run_dir"])
    assert not (run_dir / "logs").exists()
    # a results root is data: a logger named in the run's own config.json is never made
    config = json.loads((run_dir / "config.json").read_text())
    config["config"]["logger"] = {"_target_": "os.system", "command": f"touch {tmp_path}/ran"}
    write_json(run_dir / "config.json", config)
    assert log_cli([str(tmp_path), f"logger={kind}"]) == 0
    _every_record_once(run_dir, kind)
    assert log_cli([str(tmp_path), f"logger={kind}"]) == 0  # held already: nothing again
    _every_record_once(run_dir, kind)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("args, message", [
    (["logger=csv", "model.depth=8"], "model.depth=8: usage: resdepth log [ROOT] logger=NAME"),
    (["ROOT"], "no logger=: usage: resdepth log"),
    (["ROOT", "other", "logger=csv"], "other: usage: resdepth log"),
    (["ROOT", "logger=mlflow"], "Could not find 'logger/mlflow'"),
    (["ROOT", "logger=none"], "logger=none sends nothing: name a logger"),
    (["nowhere", "logger=csv"], "no runs found under nowhere"),
])
def test_resdepth_log_refuses_bad_arguments_in_one_line(tmp_path, monkeypatch, capsys, args,
                                                       message):
    from resdepth.cli import log_cli

    cfg = _tiny(tmp_path / "ROOT", "trainer.max_steps=10", "trainer.eval_every=5")
    train(cfg)
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert log_cli(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (Path(cfg["run_dir"]) / "logs").exists()
