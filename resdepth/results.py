"""Run directories and their records: atomic writes, metrics.csv, result.json, and the results table.

A run directory holds:
  config.json     the resolved config and its hash (a changed config is refused, never mixed)
  metrics.csv     one row per record: iteration, lr, train_loss, train_error, val_error, test_error, elapsed_s
  result.json     status (running | done | diverged | failed), final/best errors, params, wall time, device...
  last.ckpt       the latest checkpoint (model, optimizer, schedule, warm-up, iteration, RNG), written atomically
  model.pt        the final network weights;  responses.json  Figure 7's layer response stds on the test set
Errors are fractions in these files and percentages in the printed and Markdown tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from pathlib import Path
from typing import Iterable

METRICS = ("iteration", "lr", "train_loss", "train_error", "val_error", "test_error", "elapsed_s")
COMPLETE = ("done", "diverged")  # a run with one of these statuses is skipped by a sweep


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + os.replace: readers see the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=True) + "\n")


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.csv as dicts of floats (iteration as int); [] when the file is missing."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        rows = []
        for r in csv.DictReader(f):
            try:
                rows.append({k: (int(float(v)) if k == "iteration" else float(v)) for k, v in r.items() if k})
            except (TypeError, ValueError):  # a torn last line after power loss: ignore it
                continue
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
    new = not Path(path).exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRICS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def find_results(root: Path) -> list[tuple[Path, dict]]:
    """Every run directory under root with a readable result.json, sorted by path."""
    out = []
    for p in sorted(Path(root).rglob("result.json")):
        try:
            out.append((p.parent, read_json(p)))
        except (OSError, ValueError):
            continue
    return out
