"""The results table of a results root: one row per configuration, printed and written as
results.csv (errors as fractions) and results.md (errors in %)."""

from __future__ import annotations

import math
from pathlib import Path

from ..models import net_name
from .runs import block_kinds, group_runs, load_runs
from ..rundir import atomic_write_text
from ..tables import aligned, csv_text, error_cell, fmt_time, markdown

# results.csv: its column for each key of a row; errors are fractions there, and named so.
CSV_COLUMNS = {"dataset": "dataset", "net": "net", "depth": "depth", "block": "block",
               "shortcut": "shortcut", "seeds": "seeds",
               "test_error_mean": "test_error_fraction_mean",
               "test_error_std": "test_error_fraction_std",
               "train_error_mean": "train_error_fraction_mean",
               "train_error_std": "train_error_fraction_std", "params": "params", "steps": "steps",
               "max_steps": "max_steps", "wall_time_s": "wall_time_s", "status": "status",
               "settings": "settings", "config_hash": "config_hash"}


def result_rows(groups: list) -> list[dict]:
    """The results table's rows, one per runs.Group: errors are fractions, mean and sample std over
    its done seeds; the other runs are counted in `status`."""
    from ..config import config_hash

    kinds = block_kinds(groups)
    rows = []
    for g in groups:
        test, train = g.stats("final_test_error"), g.stats("final_train_error")
        statuses = [r.status for r in g.runs]
        results = [r.result for r in g.runs]
        rows.append({
            "dataset": g.dataset, "net": net_name(g.block, g.depth), "depth": g.depth,
            "block": g.block, "shortcut": g.shortcut, "seeds": len(g.done),
            "test_error_mean": test.mean, "test_error_std": test.std,
            "train_error_mean": train.mean, "train_error_std": train.std,
            "params": results[0].get("params"), "steps": max(r.get("steps") or 0 for r in results),
            "max_steps": results[0].get("max_steps"),
            "wall_time_s": sum(r.get("wall_time_s") or 0 for r in results),
            "status": ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)),
            "settings": g.settings, "config_hash": config_hash(g.config),
            "seed_list": sorted(r.seed for r in g.runs), "config": g.config})
    return sorted(rows, key=lambda r: (r["dataset"], kinds.index(r["block"]), r["depth"],
                                       r["shortcut"], r["config_hash"]))


def summarize(root: Path) -> list[dict]:
    """The results table of root's usable runs (see result_rows)."""
    return result_rows(group_runs(load_runs(root)))


def _display(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["dataset", "net", "shortcut", "seeds", "test err %", "train err %", "params",
            "iterations", "wall time", "status"]
    err = lambda r, key: error_cell(100 * r[f"{key}_mean"], 100 * r[f"{key}_std"], r["seeds"])
    body = [[r["dataset"], r["net"], r["shortcut"], str(r["seeds"]), err(r, "test_error"),
             err(r, "train_error"), "-" if r["params"] is None else f"{r['params']:,}",
             f"{r['steps']}/{r['max_steps']}", fmt_time(r["wall_time_s"]), r["status"]]
            for r in rows]
    if any(r.get("settings") for r in rows):  # configs of a dataset differ beyond net and seed
        head.append("settings")
        for cells, r in zip(body, rows):
            cells.append(r.get("settings", ""))
    return head, body


def format_table(rows: list[dict]) -> str:
    """The table aligned for a terminal (errors in %, mean ± sample std over the done seeds)."""
    if not rows:
        return "(no runs)"
    return aligned(*_display(rows), right=range(3, 10))  # numbers and status right, names left


def format_markdown(rows: list[dict]) -> str:
    """The table as Markdown (errors in %)."""
    return markdown(*_display(rows))


def _csv_row(row: dict) -> list:
    """A row of results.csv: empty where there is no number (no finished seed; the std of one)."""
    cells = []
    for key in CSV_COLUMNS:
        value = row.get(key)
        undefined = key.endswith("_std") and row["seeds"] < 2
        if isinstance(value, float) and (math.isnan(value) or undefined):
            value = None
        cells.append(value)
    return cells


def write_tables(root: Path, rows: list[dict] | None = None) -> list[dict]:
    """Rebuild ROOT/results.csv and ROOT/results.md atomically from summarize(root) (or `rows` of
    it); return the rows."""
    rows = summarize(root) if rows is None else rows
    csv = csv_text(list(CSV_COLUMNS.values()), [_csv_row(r) for r in rows])
    atomic_write_text(Path(root) / "results.csv", csv)
    md = (f"# Results under {root}\n\nErrors in %, mean ± sample std over the seeds that finished "
          f"(status done); rebuilt from the result.json files by `resdepth results {root}`.\n\n"
          + format_markdown(rows))
    atomic_write_text(Path(root) / "results.md", md)
    return rows
