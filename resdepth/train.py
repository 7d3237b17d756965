"""One run: config -> data + model + Lightning trainer -> metrics.csv + result.json in the run directory.

`train(cfg)` is a plain function (the CLI, the sweep and the tests call it). It skips a finished run, resumes an
interrupted one from its last checkpoint, refuses a run directory that holds another config, records a diverged
run as such, and writes every file atomically. It wires things together and computes nothing itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import itertools
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from . import results as rec
from .config import REPO_ROOT, Config, config_hash, semantic_config, the_net, to_plain
from .data import DataModule
from .models import check_depth, count_parameters
from .system import System, warmup_enabled

PACE_AFTER_S = 30.0  # seconds: a run that has not reached a record by then says its pace once (in logs)
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPHING_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # these capture CUDA graphs themselves


class RunConflict(RuntimeError):
    """The run directory holds a run of a different configuration."""


class RunBusy(RuntimeError):
    """Another process is training this run right now."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (exit code 130) or SIGTERM (143) stopped a run; its last checkpoint resumes it."""

    def __init__(self, exit_code: int = 130) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


def validate(cfg: dict) -> None:
    """Raise ValueError with a one-line message naming the bad value and what is allowed."""
    m, o, t, d = cfg["model"], cfg["optim"], cfg["trainer"], cfg["data"]
    known = [f.name for f in dataclasses.fields(Config)]
    for key in cfg:
        if key not in known:  # `+key=value` adds a top-level key that nothing reads but the run's hash
            raise ValueError(f"unknown setting {key!r} (added with +{key}=...); the config has {', '.join(known)}")
    check_depth(m["depth"])
    warmup_enabled(o, m["depth"])
    if not 0 <= cfg["seed"] < 2**32:  # what numpy and Lightning accept (their own message does not name the key)
        raise ValueError(f"seed={cfg['seed']} must be in [0, {2**32 - 1}]")
    for key, value in (("trainer.max_steps", t["max_steps"]), ("trainer.eval_every", t["eval_every"]),
                       ("optim.batch_size", o["batch_size"]), ("optim.warmup_window", o["warmup_window"])):
        if value < 1:
            raise ValueError(f"{key}={value} must be a positive integer")
    if t["checkpoint_every"] < 0:
        raise ValueError(f"trainer.checkpoint_every={t['checkpoint_every']} must be >= 0 (0: same as eval_every)")
    if not o["lr"] > 0:
        raise ValueError(f"optim.lr={o['lr']} must be > 0")
    if any(s < 0 for s in o["milestones"]) or any(a >= b for a, b in zip(o["milestones"], o["milestones"][1:])):
        raise ValueError(f"optim.milestones={o['milestones']} must be increasing iterations >= 0")
    for key, value, ok, allowed in (
            ("optim.momentum", o["momentum"], 0 <= o["momentum"] < 1, "in [0, 1)"),
            ("optim.weight_decay", o["weight_decay"], o["weight_decay"] >= 0, ">= 0"),
            ("optim.gamma", o["gamma"], 0 < o["gamma"] <= 1, "in (0, 1]: the lr is multiplied by it at each milestone"),
            ("optim.warmup_lr", o["warmup_lr"], o["warmup_lr"] > 0, "> 0"),
            ("optim.warmup_until_error", o["warmup_until_error"], 0 <= o["warmup_until_error"] <= 1,
             "a fraction in [0, 1] (0: warm up until the first milestone)")):
        if not ok:  # `not ok` also catches nan
            raise ValueError(f"{key}={value} must be {allowed}")
    for key, value, allowed in (("trainer.precision", t["precision"], PRECISIONS),
                                ("trainer.accelerator", t["accelerator"], ACCELERATORS),
                                ("trainer.compile_mode", t["compile_mode"], COMPILE_MODES),
                                ("trainer.cuda_graph", str(t["cuda_graph"]).lower(), ("auto", "true", "false"))):
        if str(value) not in allowed:
            raise ValueError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    for key, zero in (("val_size", "no validation split"), ("test_subset", "the whole test set")):
        if d[key] < 0:
            raise ValueError(f"data.{key}={d[key]} must be >= 0 (0: {zero})")
    if d["kind"] == "synthetic":  # sizes the generator is given; real datasets take theirs from the files
        for key, least in (("train_size", 2), ("test_size", 1), ("num_classes", 2)):
            if d[key] < least:
                raise ValueError(f"data.{key}={d[key]} must be >= {least} for data=synthetic")
    use_cuda_graph(t, *resolve_device(t))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (x86 with AVX512-BF16 or AMX). There bf16 convolutions are
    1.4-1.7x faster than fp32 (experiments/bench/README.md); elsewhere bf16 is emulated and slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own checks, x86 only
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_device(t: dict) -> tuple[str, str]:
    """(accelerator, precision) actually used: a GPU when there is one, else the CPU; precision auto is
    bf16-mixed where the device computes in bf16 natively (as the GPU runs), else fp32."""
    accelerator = t["accelerator"]
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use auto or cpu")
    use_gpu = accelerator != "cpu" and torch.cuda.is_available()
    precision = t["precision"]
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if use_gpu else cpu_has_native_bf16()
        precision = "bf16-mixed" if native else "32-true"
    return ("gpu" if use_gpu else "cpu"), precision


def use_cuda_graph(t: dict, accelerator: str, precision: str) -> bool:
    """trainer.cuda_graph: auto (on for a CUDA GPU in bf16-mixed or fp32, unless torch.compile captures graphs
    itself) | true (the same, but an error where it cannot) | false."""
    value = str(t["cuda_graph"]).lower()
    graphing_compile = bool(t["compile"]) and t["compile_mode"] in GRAPHING_COMPILE_MODES
    problem = ("no CUDA GPU is used" if accelerator != "gpu" else
               f"trainer.precision={precision} scales the loss (use bf16-mixed or 32-true)"
               if precision == "16-mixed" else
               f"trainer.compile_mode={t['compile_mode']} captures CUDA graphs itself" if graphing_compile else None)
    if value == "true" and problem:
        raise ValueError(f"trainer.cuda_graph=true cannot be used: {problem}; use trainer.cuda_graph=auto or false")
    return value != "false" and problem is None


def claim_gpu(n: int, slots: Path | None = None):
    """(index, lock) of the GPU with the fewest runs on it right now, out of this machine's n. A run holds a lock on
    one slot file (gpu<i>.<k>.lock) of its GPU while it trains; the lock goes when it is closed or its process
    ends, so a crashed run never leaves a GPU marked busy. One process picks at a time (pick.lock)."""
    slots = Path(slots or Path(tempfile.gettempdir()) / f"resdepth-gpus-{os.getuid()}")
    slots.mkdir(parents=True, exist_ok=True)
    with open(slots / "pick.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        busy, free = [0] * n, [None] * n
        for gpu in range(n):
            for k in itertools.count():  # every slot file so far, and one new one
                path = slots / f"gpu{gpu}.{k}.lock"
                existed = path.exists()
                f = open(path, "a")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    f.close()
                    busy[gpu] += 1
                    continue
                if free[gpu] is None:
                    free[gpu] = f
                else:
                    f.close()
                if not existed:
                    break
        best = min(range(n), key=busy.__getitem__)
        for gpu, f in enumerate(free):
            if gpu != best:
                f.close()
        return best, free[best]


def label(cfg: dict) -> str:
    """'plain-20', 'ResNet-56' (the paper's names), with the seed and option B when used."""
    m = cfg["model"]
    return f"{rec.net_name(m['block'], m['depth'])}{'-B' if m['shortcut'] == 'B' else ''} seed {cfg['seed']}"


class Recorder(pl.Callback):
    """Every eval_every iterations: take a record, append it to metrics.csv, print progress, update result.json;
    every checkpoint_every iterations: write last.ckpt atomically. Stops a diverged run."""

    def __init__(self, run_dir: Path, cfg: dict, result: dict) -> None:
        self.run_dir, self.cfg, self.result = run_dir, cfg, result
        t = cfg["trainer"]
        self.max_steps, self.eval_every = t["max_steps"], t["eval_every"]
        self.checkpoint_every = t["checkpoint_every"] or t["eval_every"]
        self.progress = t["progress"]
        # On a terminal, one line redrawn in place between records; in logs and CI, only whole lines.
        self.live = self.progress and sys.stdout.isatty()
        self.last_draw, self.last_row = 0.0, None
        self.t0, self.step0 = time.perf_counter(), None
        self.checkpoint_step = None  # the iteration of last.ckpt, once this session has written one
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
            rec.append_metrics(self.run_dir / "metrics.csv", row)
            self._update_result(row)
            if self.progress:
                self._print(step, row)
            if row["diverged_at"] is not None:
                trainer.should_stop = True
                return
        if step % self.checkpoint_every == 0 or step >= self.max_steps:
            tmp = self.run_dir / ".last.ckpt.tmp"
            trainer.save_checkpoint(tmp)
            os.replace(tmp, self.run_dir / "last.ckpt")
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
        rec.write_json(self.run_dir / "result.json", r)

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
                         f"left {rec.fmt_time(left)}")
        sys.stdout.flush()
        self.last_draw = time.perf_counter()

    def _pace(self, step: int) -> None:
        """Once, in logs, when the first record is still far off: the speed so far and the run's time left."""
        self.paced = True
        rate, left = self._rate_left(step)
        next_record = min(self.max_steps, (step // self.eval_every + 1) * self.eval_every)
        if rate and (next_record - step) / rate > PACE_AFTER_S:
            print(f"  [{label(self.cfg)}] it {step:>6}/{self.max_steps}  {rate:.2f} it/s: first record at it "
                  f"{next_record} in about {rec.fmt_time((next_record - step) / rate)}, the run needs about "
                  f"{rec.fmt_time(left)} more", flush=True)

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
              f"  lr {row['lr']:<6.4g} {rate:6.1f} it/s  left {rec.fmt_time(left)}", flush=True)


def lock_run(run_dir: Path):
    """The run directory's lock, held while this process trains it; RunBusy when another process holds it."""
    f = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RunBusy(f"{run_dir} is being trained by another process right now") from None
    return f


def versions() -> dict:
    return {"resdepth": code_version(), "python": platform.python_version(), "torch": torch.__version__,
            "pytorch_lightning": pl.__version__, "cuda": torch.version.cuda, "host": socket.gethostname(),
            "platform": platform.platform()}


def code_version() -> str:
    """Which code trains a run: '0.1.0 (git 1a2b3c4d5e)', with ' + local changes' where resdepth/ or conf/ differ
    from that commit; the package version alone outside a git checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        out = version("resdepth")
    except PackageNotFoundError:
        out = "unknown"
    git = ["git", "-C", str(REPO_ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, timeout=10)
        changes = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "resdepth", "conf"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git here
        return out
    if head.returncode or changes.returncode:  # not a git checkout (an installed copy, a bare working tree)
        return out
    return f"{out} (git {head.stdout.strip()}{' + local changes' if changes.stdout.strip() else ''})"


def train(cfg: DictConfig | dict) -> dict:
    """Train (or resume, or skip) the run that `cfg` describes; return its result.json contents.

    Raises ValueError (bad config), RunConflict, RunBusy, DatasetError before writing anything; an error during
    training is recorded in result.json (status "failed") and raised again.
    """
    cfg = to_plain(cfg) if isinstance(cfg, DictConfig) else cfg
    validate(cfg)
    if the_net(cfg["model"]) != cfg["model"]:
        cfg = {**cfg, "model": the_net(cfg["model"])}
        print(f"[{label(cfg)}] note: a plain net has no shortcuts, so model.shortcut does not change it: "
              f"this is the same run as shortcut A", flush=True)
    run_dir = Path(cfg["run_dir"])
    semantic, chash = semantic_config(cfg), config_hash(cfg, without=())
    result_path, config_path = run_dir / "result.json", run_dir / "config.json"
    if config_path.exists():
        old = rec.read_json(config_path)
        if old.get("semantic") != semantic:
            changed = sorted(_diff(old.get("semantic", {}), semantic))
            raise RunConflict(f"{run_dir} holds a run of another config (differs in {', '.join(changed[:5])}); "
                              f"refusing to mix them: choose another run_dir or results_root")
        if result_path.exists():
            old_result = rec.read_json(result_path)
            if old_result.get("status") in rec.COMPLETE:
                print(f"[{label(cfg)}] done, skipped ({run_dir}: {old_result['status']})", flush=True)
                return old_result
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run(run_dir)
    gpu, gpu_lock = None, None
    if resolve_device(cfg["trainer"])[0] == "gpu" and torch.cuda.device_count() > 1:
        gpu, gpu_lock = claim_gpu(torch.cuda.device_count())  # parallel jobs on a machine with several GPUs
    try:
        return _train_locked(cfg, run_dir, semantic, chash, gpu)
    finally:
        lock.close()
        if gpu_lock is not None:
            gpu_lock.close()


def _diff(a: dict, b: dict) -> set[str]:
    """The dotted keys whose values differ between two nested configs."""
    fa, fb = rec.flatten(a), rec.flatten(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def quiet_lightning() -> None:
    """Our progress lines say what matters; Lightning's banners and tips would drown them."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message="`training_step` returned `None`")  # the whole-step path's update


def build(cfg: dict, gpu: int | None = None) -> tuple[DataModule, System, dict]:
    """The data, the LightningModule and the Trainer arguments of a run: shared by train() and the benchmark.
    `gpu`: which CUDA device, where there are several (default: the first)."""
    quiet_lightning()
    accelerator, precision = resolve_device(cfg["trainer"])
    data = DataModule(cfg["data"], batch_size=cfg["optim"]["batch_size"], seed=cfg["seed"]).load()
    pl.seed_everything(cfg["seed"], workers=False, verbose=False)
    system = System(cfg, in_channels=data.in_channels, num_classes=data.num_classes)
    system.datamodule = data
    system.whole_step = use_cuda_graph(cfg["trainer"], accelerator, precision)
    devices = [gpu] if accelerator == "gpu" and gpu is not None else 1
    trainer_kwargs = dict(
        accelerator=accelerator, devices=devices, precision=precision, max_steps=cfg["trainer"]["max_steps"],
        max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, benchmark=accelerator == "gpu",
    )
    return data, system, trainer_kwargs


def where_trained(previous: dict, resume_step: int, device: str, precision: str) -> list[dict]:
    """Which device and precision trained which iterations: one segment, unless a resumed run goes on elsewhere
    (another machine of a cluster, a GPU after a CPU, or `trainer.precision=auto` resolving otherwise there)."""
    segments = list(previous.get("segments") or []) if resume_step else []
    if resume_step and not segments and previous.get("device"):  # a record from before segments were kept
        segments = [{"from": 0, "device": previous["device"], "precision": previous.get("precision")}]
    if len(segments) > 1 and segments[-1]["from"] == resume_step:  # that part trained nothing that was kept
        segments.pop()
    if not segments or (segments[-1]["device"], segments[-1]["precision"]) != (device, precision):
        segments.append({"from": resume_step, "device": device, "precision": precision})
    return segments


def _train_locked(cfg: dict, run_dir: Path, semantic: dict, chash: str, gpu: int | None) -> dict:
    data, system, trainer_kwargs = build(cfg, gpu)
    accelerator, precision, devices = (trainer_kwargs[k] for k in ("accelerator", "precision", "devices"))
    ckpt = run_dir / "last.ckpt"
    # mmap: read the iteration without loading the whole checkpoint (Lightning loads it in fit).
    resume_step = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["global_step"] \
        if ckpt.exists() else 0
    if not (run_dir / "config.json").exists():
        rec.write_json(run_dir / "config.json", {"hash": chash, "semantic": semantic, "config": cfg})
    previous = rec.read_json(run_dir / "result.json") if (run_dir / "result.json").exists() else {}
    rec.truncate_metrics(run_dir / "metrics.csv", resume_step)

    device_name = torch.cuda.get_device_name(devices[0] if isinstance(devices, list) else 0) \
        if accelerator == "gpu" else (platform.processor() or platform.machine()) + f" ({os.cpu_count()} cores)"
    m = cfg["model"]
    result = {
        "status": "running", "run_dir": str(run_dir), "config_hash": chash, "config": cfg,
        "dataset": cfg["data"]["name"], "depth": m["depth"], "block": m["block"], "shortcut": m["shortcut"],
        "seed": cfg["seed"], "params": count_parameters(system.net), "max_steps": cfg["trainer"]["max_steps"],
        "steps": resume_step, "device": device_name, "accelerator": accelerator, "precision": precision,
        "cuda_graph": system.whole_step,
        "started": previous.get("started") or dt.datetime.now().isoformat(timespec="seconds"),
        "resumed_from": resume_step or None, "diverged_at": None, "error": None, "versions": versions(),
        "classes": data.num_classes, "train_images": len(data.train), "warmup": system.warming_up,
        "segments": where_trained(previous, resume_step, device_name, precision),
    }
    for key in ("final_test_error", "best_test_error", "best_test_iteration", "final_val_error", "best_val_error",
                "best_val_iteration", "final_train_error", "final_train_loss"):
        result[key] = previous.get(key) if resume_step else None
    rec.write_json(run_dir / "result.json", result)

    what = f"resuming at iteration {resume_step}" if resume_step else "starting"
    if len(result["segments"]) > 1 and result["segments"][-1]["from"] == resume_step:
        before = result["segments"][-2]
        print(f"[{label(cfg)}] note: iterations {before['from']}-{resume_step} were trained on {before['device']} in "
              f"{before['precision']}; it now continues on {device_name} in {precision} (both are kept in "
              f"result.json's segments)", flush=True)
    print(f"[{label(cfg)}] {what}: {cfg['data']['name']}, {result['params']:,} params, "
          f"{cfg['trainer']['max_steps']} iterations of {cfg['optim']['batch_size']}, {device_name}, {precision}"
          f"{', CUDA graph' if system.whole_step else ''} -> {run_dir}", flush=True)
    recorder = Recorder(run_dir, cfg, result)
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[recorder], default_root_dir=str(run_dir))
    t0 = time.perf_counter()
    try:
        trainer.fit(system, datamodule=data, ckpt_path=str(ckpt) if resume_step else None)
    except (KeyboardInterrupt, SystemExit) as e:  # Lightning turns Ctrl-C into SystemExit(1) after its shutdown
        if not (isinstance(e, KeyboardInterrupt) or trainer.interrupted):
            raise
        sigterm = isinstance(e, SIGTERMException)
        kept = recorder.checkpoint_step if recorder.checkpoint_step is not None else resume_step
        print(f"\n[{label(cfg)}] {'stopped by SIGTERM' if sigterm else 'interrupted'} at iteration "
              f"{trainer.global_step}; " + (f"its checkpoint is at iteration {kept}" if kept else "no checkpoint yet")
              + ": run the same command again to resume", file=sys.stderr, flush=True)
        raise Interrupted(143 if sigterm else 130) from None
    except Exception as e:
        result.update(status="failed", error=f"{type(e).__name__}: {e}",
                      finished=dt.datetime.now().isoformat(timespec="seconds"))
        rec.atomic_write_text(run_dir / "error.txt", traceback.format_exc())
        rec.write_json(run_dir / "result.json", result)
        print(f"[{label(cfg)}] FAILED: {result['error']}", file=sys.stderr, flush=True)
        raise

    if result["status"] != "diverged":
        device = torch.device("cuda", devices[0] if isinstance(devices, list) else 0) \
            if accelerator == "gpu" else torch.device("cpu")
        system.to(device)  # Lightning's teardown may have moved it to the CPU
        data.to(device)
        result["status"] = "done"
        responses = system.layer_responses(data.eval_splits["test"])
        rec.write_json(run_dir / "responses.json", {"layer_std": responses, "split": "test",
                                                     "depth": m["depth"], "block": m["block"]})
    tmp = run_dir / ".model.pt.tmp"
    torch.save(system.net.state_dict(), tmp)
    os.replace(tmp, run_dir / "model.pt")
    result["warmup_ended_at"] = system.warmup_steps or None
    result["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    result["session_s"] = time.perf_counter() - t0
    rec.write_json(run_dir / "result.json", result)
    final = (f"test {100 * result['final_test_error']:.2f}%  train {100 * result['final_train_error']:.2f}%"
             if result["status"] == "done" else f"diverged at iteration {result['diverged_at']}")
    print(f"[{label(cfg)}] {result['status']}: {final}  ({rec.fmt_time(result.get('wall_time_s') or 0)}) -> {run_dir}",
          flush=True)
    return result
