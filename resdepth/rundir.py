"""A run's directory and the files resdepth writes: one atomic write for all of them, the lock, config.json and its
conflict check, result.json, metrics.csv, where each part of a run was trained (segments) and which code did it.

A run directory holds:
  config.json     the resolved config and its hash (a changed config is refused, never mixed)
  metrics.csv     one row per record: iteration, lr, train_loss, train_error, val_error, test_error, elapsed_s
  result.json     status (running | done | diverged | failed), final/best errors, params, wall time, device...
  last.ckpt       the latest checkpoint (model, optimizer, schedule, warm-up, iteration, RNG)
  model.pt        the final network weights;  responses.json  Figure 7's layer response stds on the test set
Errors are fractions in these files. Imports nothing of resdepth: every other room may use it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import io
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

METRICS = ("iteration", "lr", "train_loss", "train_error", "val_error", "test_error", "elapsed_s")
COMPLETE = ("done", "diverged")  # a run with one of these statuses is skipped by a sweep
REPO_ROOT = Path(__file__).resolve().parent.parent


class RunConflict(RuntimeError):
    """The run directory holds a run of a different configuration."""


class RunBusy(RuntimeError):
    """Another process is training this run right now."""


# ------------------------------------------------------------------------------------------------- files

def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` writes a temp file beside `path`; it is synced to disk and renamed over `path`, so readers see
    the old file or the new one, never half of one. The temp file is removed if writing fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename in (str(tmp), tmp):  # name the file the user knows, not our temp file
            e.filename = str(path)
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=True) + "\n")


def read_json(path: Path):
    """The JSON in path; ValueError naming the file when it is not valid JSON (edited or damaged by hand: resdepth
    itself writes every file atomically)."""
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); fix it or move it away") from None


def append_synced(path: Path, text: str) -> None:
    """Append to a log whose earlier lines are never rewritten, and sync it to disk."""
    with open(path, "a", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def append_jsonl(path: Path, obj) -> None:
    """One JSON line appended and synced."""
    append_synced(path, json.dumps(obj, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------ metrics

def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.csv as dicts of floats (iteration as int); [] when the file is missing. A row that cannot be
    read is left out: silently when it is the last (torn by a crash), with a warning naming it otherwise."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        lines = list(csv.DictReader(f))
    rows = []
    for n, r in enumerate(lines):
        try:
            rows.append({k: (int(float(v)) if k == "iteration" else float(v)) for k, v in r.items() if k})
        except (TypeError, ValueError):
            if n < len(lines) - 1:  # a torn last line after power loss is expected; a damaged row is not
                print(f"resdepth: warning: {path}: row {n + 2} cannot be read and is left out (a gap in the "
                      f"curve): {','.join(str(v) for v in r.values())[:80]}", file=sys.stderr, flush=True)
    return rows


def truncate_metrics(path: Path, last_iteration: int) -> None:
    """Drop rows after `last_iteration` (written after the checkpoint a resumed run starts from)."""
    rows = [r for r in read_metrics(path) if r["iteration"] <= last_iteration]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def append_metrics(path: Path, row: dict) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS, extrasaction="ignore")
    if not Path(path).exists():
        w.writeheader()
    w.writerow(row)
    append_synced(path, buf.getvalue())


# ------------------------------------------------------------------------------------------- the run's state

def lock_run(run_dir: Path):
    """The run directory's lock, held while this process trains it; RunBusy when another process holds it."""
    f = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RunBusy(f"{run_dir} is being trained by another process right now") from None
    return f


def flatten(node, prefix: str = "") -> dict:
    """A nested config as {dotted.key: value}."""
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def finished_result(run_dir: Path, semantic: dict) -> dict | None:
    """result.json of a finished run of this config in run_dir (to skip), None when there is none; RunConflict
    when run_dir holds a run of another config, ValueError when one of its records is damaged."""
    config_path, result_path = run_dir / "config.json", run_dir / "result.json"
    if not config_path.exists():
        return None
    old = read_json(config_path).get("semantic", {})
    if old != semantic:
        fa, fb = flatten(old), flatten(semantic)
        changed = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
        raise RunConflict(f"{run_dir} holds a run of another config (differs in {', '.join(changed[:5])}); "
                          f"refusing to mix them: choose another run_dir or results_root")
    result = read_json(result_path) if result_path.exists() else {}
    return result if result.get("status") in COMPLETE else None


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


CARRIED = ("final_test_error", "best_test_error", "best_test_iteration", "final_val_error", "best_val_error",
           "best_val_iteration", "final_train_error", "final_train_loss")


def start_result(run_dir: Path, cfg: dict, chash: str, resume_step: int, run: dict) -> dict:
    """result.json of a run that starts (or resumes at resume_step), written; `run` adds what the wiring knows
    (params, device, accelerator, precision, cuda_graph, classes, train_images, warmup)."""
    previous = read_json(run_dir / "result.json") if (run_dir / "result.json").exists() else {}
    m = cfg["model"]
    result = {
        "status": "running", "run_dir": str(run_dir), "config_hash": chash, "config": cfg,
        "dataset": cfg["data"]["name"], "depth": m["depth"], "block": m["block"], "shortcut": m["shortcut"],
        "seed": cfg["seed"], "max_steps": cfg["trainer"]["max_steps"], "steps": resume_step,
        "started": previous.get("started") or now(), "resumed_from": resume_step or None, "diverged_at": None,
        "error": None, "versions": versions(), **run,
        "segments": where_trained(previous, resume_step, run["device"], run["precision"]),
    }
    for key in CARRIED:
        result[key] = previous.get(key) if resume_step else None
    write_json(run_dir / "result.json", result)
    return result


def now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def versions() -> dict:
    import pytorch_lightning as pl
    import torch

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
