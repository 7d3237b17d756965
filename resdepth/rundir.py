"""A run directory's files (docs/outputs.md), each written atomically, and its lock.
Errors are fractions in these files."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import glob
import io
import json
import os
import pickle
import platform
import shutil
import socket
import stat
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


def _remove_stale_temps(path: Path) -> None:
    """Remove the temp files of `path` left by writers killed mid-write (their process is gone)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # raises when no such process: its writer was killed
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive, another user's process: not ours to touch
            pass


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through `write(tmp)`, fsync and rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _remove_stale_temps(path)
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


class UnsafeFile(ValueError):
    """A file holds more than tensors and plain values: unpickling it could run code."""


def load_tensors(path: Path, **kwargs):
    """torch.load of tensors and plain values only (weights_only): a file from elsewhere is data.

    UnsafeFile, naming the file, for anything else; nothing in it runs. ValueError for what is not
    a regular file within the size limit of its kind.
    """
    import torch  # here: the commands that only read tables must not wait for torch

    regular_file(path)
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        if not str(e).startswith("Weights only load failed"):
            raise
        raise UnsafeFile(f"{path} holds objects other than tensors and plain values, so resdepth "
                         f"does not load it (unpickling it could run code)") from None


def write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=True)
    atomic_write_text(path, text + "\n")


# The most bytes resdepth reads of each kind of file it finds in a run directory, a results root or
# a dataset cache: far above what it writes there (a result.json is kilobytes, a metrics.csv of
# 64,000 records 8 MB, a ResNet-110 checkpoint 7 MB, the CIFAR-10 image-folder cache 184 MB), far
# below what could exhaust a machine's memory.
SIZE_LIMITS = {".json": 16 * 2**20, ".jsonl": 16 * 2**20, ".yaml": 2**20, ".csv": 2**30,
               ".ckpt": 16 * 2**30, ".pt": 16 * 2**30}
MAX_RECORD_BYTES = 64 * 2**20  # any other kind


def regular_file(path: Path, limit: int | None = None) -> int:
    """The size of path, a regular file (a symlink followed) of at most `limit` bytes (default: its
    kind's, SIZE_LIMITS); ValueError naming it otherwise. A FIFO or a device is never opened: it
    could hang or never end."""
    limit = limit or SIZE_LIMITS.get(Path(path).suffix, MAX_RECORD_BYTES)
    info = os.stat(path)  # follows a symlink: what it points to must be a regular file
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file (a FIFO, device or folder), so it is not "
                         f"read")
    if info.st_size > limit:
        raise ValueError(f"{path} is {info.st_size:,} bytes, more than the {limit:,} a file of its "
                         f"kind from resdepth can hold, so it is not read")
    return info.st_size


def read_text(path: Path, limit: int | None = None) -> str:
    """A record's text as UTF-8, from a regular file within its kind's size limit (regular_file);
    ValueError naming the file otherwise. Bytes that are not UTF-8 are replaced, with a warning."""
    limit = limit or SIZE_LIMITS.get(Path(path).suffix, MAX_RECORD_BYTES)
    regular_file(path, limit)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        print(f"resdepth: warning: {path}: byte {e.start} is not UTF-8; read with such bytes "
              f"replaced", file=sys.stderr, flush=True)
        return data.decode(errors="replace")


def read_json(path: Path):
    """The JSON in path; ValueError naming the file when it is not valid JSON (damaged by hand)."""
    try:
        return json.loads(read_text(path))
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a record; fix it or move it away")
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path} is not valid JSON ({e}); fix it or move it away") from None


def append_synced(path: Path, text: str) -> None:
    """Append to a file whose earlier lines are never rewritten, and sync it to disk."""
    with open(path, "a", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def append_jsonl(path: Path, obj) -> None:
    """One JSON line appended and synced."""
    append_synced(path, json.dumps(obj, sort_keys=True) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv rows as floats (iteration an int), [] if missing; unreadable rows left out."""
    if not Path(path).exists():
        return []
    try:
        text = read_text(path)
    except ValueError as e:
        print(f"resdepth: warning: {e}; its curve is left out", file=sys.stderr, flush=True)
        return []
    lines = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    while True:
        try:
            lines.append(next(reader))
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a field longer than any number: the row is left out
            lines.append({"iteration": f"({e})"})
    rows = []
    for n, r in enumerate(lines):
        try:
            rows.append({k: (int(float(v)) if k == "iteration" else float(v))
                         for k, v in r.items() if k})
        except (TypeError, ValueError):
            if n < len(lines) - 1:  # a last line torn by a crash is expected; a damaged row is not
                print(f"resdepth: warning: {path}: row {n + 2} cannot be read and is left out "
                      f"(a gap in the curve): {','.join(str(v) for v in r.values())[:80]}",
                      file=sys.stderr, flush=True)
    return rows


def truncate_metrics(path: Path, last_iteration: int) -> None:
    """Drop rows after `last_iteration`, the checkpoint a resumed run starts from."""
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


def lock_run(run_dir: Path):
    """The run directory's lock, held while this process trains it; RunBusy if another holds it."""
    f = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunBusy(f"{run_dir} is being trained by another process right now") from None
    except OSError as e:  # e.g. Lustre mounted without -o flock, NFS without its lock service
        f.close()
        raise RunBusy(f"{run_dir} cannot be locked ({e.strerror}): its file system does not "
                      f"support flock, so two jobs could train this run at once; put "
                      f"results_root on one that does (docs/sweeps.md#shared-file-systems)"
                      ) from None
    return f


def before_writing(run_dir: Path) -> dict:
    """What exists of a run directory before a command writes there, for `remove_made`."""
    made_from = None  # the outermost folder of run_dir's path that does not exist yet
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            break
        made_from = folder
    names = lambda d: sorted(p.name for p in d.iterdir()) if d.is_dir() else []  # noqa: E731
    return {"made_from": str(made_from) if made_from else None, "entries": names(run_dir),
            "records": names(run_dir / ".hydra")}


def remove_made(run_dir: Path, before: dict | None, record: str | None) -> None:
    """Remove what this command made in and above run_dir, as `before` (before_writing) tells.

    With no `before`, only this command's own Hydra record (`record`, inside .hydra/) goes.
    Another process's lock on the run keeps everything but that record.
    """
    hydra, rec = run_dir / ".hydra", Path(record or ".")
    if rec.parent == Path(".hydra") and rec.name not in (before or {}).get("records", []):
        shutil.rmtree(run_dir / rec, ignore_errors=True)
    if before is None or not run_dir.is_dir():
        return
    try:
        lock = lock_run(run_dir)
    except RunBusy:  # it is starting that run right now
        return
    with lock:
        for p in sorted(hydra.iterdir()) if hydra.is_dir() else []:
            if p.name not in before["records"]:
                shutil.rmtree(p, ignore_errors=True)
        for p in sorted(run_dir.iterdir()):
            if p.name not in before["entries"] and not (p == hydra and any(hydra.iterdir())):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if before["made_from"]:
        for folder in (run_dir, *run_dir.parents):
            try:
                folder.rmdir()  # only if empty: never a folder that holds anything
            except OSError:
                break
            if folder == Path(before["made_from"]):
                break


def retire_error(run_dir: Path) -> None:
    """An earlier failure's error.txt becomes error-<its date>.txt once the run has finished."""
    error = run_dir / "error.txt"
    if error.is_file():
        stamp = dt.datetime.fromtimestamp(error.stat().st_mtime).strftime("%Y-%m-%d_%H-%M-%S")
        error.rename(run_dir / f"error-{stamp}.txt")


def flatten(node, prefix: str = "") -> dict:
    """A nested config as {dotted.key: value}."""
    if isinstance(node, dict):
        return {k: v for key, sub in node.items()
                for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def finished_result(run_dir: Path, semantic: dict) -> dict | None:
    """result.json of a finished run of this config, else None; RunConflict for another config."""
    config_path, result_path = run_dir / "config.json", run_dir / "result.json"
    if not config_path.exists():
        return None
    old = read_json(config_path).get("semantic", {})
    if old != semantic:
        fa, fb = flatten(old), flatten(semantic)
        changed = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
        raise RunConflict(f"{run_dir} holds a run of another config "
                          f"(differs in {', '.join(changed[:5])}); "
                          f"refusing to mix them: choose another run_dir or results_root")
    result = read_json(result_path) if result_path.exists() else {}
    return result if result.get("status") in COMPLETE else None


SEGMENT = ("device", "precision", "threads")  # what a segment of a run's iterations shared


def where_trained(previous: dict, resume_step: int, run: dict) -> list[dict]:
    """Segments [{from, device, precision, threads}]: where, in what precision and with how many
    CPU threads each part of the iterations was trained (a record older than threads has none)."""
    segments = list(previous.get("segments") or []) if resume_step else []
    if resume_step and not segments and previous.get("device"):  # a record older than segments
        segments = [{"from": 0, "device": previous["device"],
                     "precision": previous.get("precision")}]
    if len(segments) > 1 and segments[-1]["from"] == resume_step:  # it trained nothing kept
        segments.pop()
    here = {k: run[k] for k in SEGMENT}
    if not segments or {k: segments[-1].get(k) for k in SEGMENT} != here:
        segments.append({"from": resume_step, **here})
    return segments


CARRIED = ("final_test_error", "best_test_error", "best_test_iteration", "final_val_error",
           "best_val_error", "best_val_iteration", "final_train_error", "final_train_loss",
           "wall_time_s")  # a resume with no record left to take keeps the last one's


def start_result(run_dir: Path, cfg: dict, chash: str, resume_step: int, run: dict) -> dict:
    """result.json of a run starting (or resuming at resume_step), written; `run` adds to it."""
    previous = read_json(run_dir / "result.json") if (run_dir / "result.json").exists() else {}
    m = cfg["model"]
    result = {
        "status": "running", "run_dir": str(run_dir), "config_hash": chash, "config": cfg,
        "dataset": cfg["data"]["name"], "depth": m["depth"], "block": m["block"],
        "shortcut": m["shortcut"], "seed": cfg["seed"], "max_steps": cfg["trainer"]["max_steps"],
        "steps": resume_step, "started": previous.get("started") or now(),
        "resumed_from": resume_step or None, "diverged_at": None,
        "error": None, "versions": versions(), **run,
        "segments": where_trained(previous, resume_step, run),
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

    return {"resdepth": code_version(), "python": platform.python_version(),
            "torch": torch.__version__, "pytorch_lightning": pl.__version__,
            "cuda": torch.version.cuda, "host": socket.gethostname(),
            "platform": platform.platform()}


def code_version() -> str:
    """'0.1.0 (git 1a2b3c4d5e[ + local changes to resdepth/ or conf/])'; without git, '0.1.0'."""
    from . import __version__ as out
    git = ["git", "-C", str(REPO_ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short=10", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        changes = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--",
                                  "resdepth", "conf"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git here
        return out
    if head.returncode or changes.returncode:  # not a git checkout (an installed copy)
        return out
    local = " + local changes" if changes.stdout.strip() else ""
    return f"{out} (git {head.stdout.strip()}{local})"


# gradients.csv: one row per weighted layer at each record (training/gradients.probe)
GRADIENTS = ("iteration", "layer", "name", "weight_grad_norm", "input_grad_norm", "weight_norm")


def append_gradients(path: Path, iteration: int, rows: list[dict]) -> None:
    """One record's rows (gradients.probe) appended in one synced write."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=GRADIENTS, extrasaction="ignore")
    if not Path(path).exists():
        w.writeheader()
    w.writerows({**row, "iteration": iteration} for row in rows)
    append_synced(path, buf.getvalue())


def _gradient_row(r: dict) -> dict:
    """A gradients.csv row as values; ValueError or TypeError for a cell missing or no number."""
    if not r.get("name"):
        raise ValueError("no layer name")
    return {k: int(r[k]) if k in ("iteration", "layer") else r[k] if k == "name" else float(r[k])
            for k in GRADIENTS}


def read_gradients(path: Path) -> list[dict]:
    """gradients.csv rows (iteration and layer ints, name a string, norms floats), [] if missing;
    a last line without its newline (torn by a crash) is left out, a damaged row with a warning."""
    if not Path(path).exists():
        return []
    try:
        text = read_text(path)
    except ValueError as e:
        print(f"resdepth: warning: {e}; its gradients are left out", file=sys.stderr, flush=True)
        return []
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    reader, rows, n = csv.DictReader(lines), [], 1
    while True:
        n += 1
        try:
            rows.append(_gradient_row(next(reader)))
        except StopIteration:
            break
        except (csv.Error, KeyError, TypeError, ValueError) as e:
            print(f"resdepth: warning: {path}: row {n} cannot be read and is left out ({e})",
                  file=sys.stderr, flush=True)
    return rows


def truncate_gradients(path: Path, last_iteration: int) -> None:
    """Drop rows after `last_iteration`, the checkpoint a resumed run starts from (atomically); a
    run without gradients.csv (recorded before the probe) gets none."""
    if not Path(path).exists():
        return
    rows = [r for r in read_gradients(path) if r["iteration"] <= last_iteration]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=GRADIENTS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
