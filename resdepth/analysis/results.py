"""Reading run directories and the results table: find_results, and results.csv / results.md of a results root.

A run directory holds:
  config.json     the resolved config and its hash (a changed config is refused, never mixed)
  metrics.csv     one row per record: iteration, lr, train_loss, train_error, val_error, test_error, elapsed_s
  result.json     status (running | done | diverged | failed), final/best errors, params, wall time, device...
  last.ckpt       the latest checkpoint (model, optimizer, schedule, warm-up, iteration, RNG), written atomically
  model.pt        the final network weights;  responses.json  Figure 7's layer response stds on the test set
Errors are fractions in these files and percentages in the printed and Markdown tables.

Imports the run model (runs), tables and rundir; never training code or figures.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

# rundir writes and reads a run directory's files; read_metrics, truncate_metrics and write_json are named here too
# for callers that read runs through this module.
from ..models import net_name
from .runs import NO_USABLE, block_kinds, find_results, group_runs, load_runs, no_runs  # noqa: F401
from ..rundir import atomic_write_text, read_json, read_metrics, truncate_metrics, write_json  # noqa: F401
from ..tables import aligned, csv_text, error_cell, fmt_time, markdown  # noqa: F401 (fmt_time: for callers)


CSV_COLUMNS = {"dataset": "dataset", "net": "net", "depth": "depth", "block": "block", "shortcut": "shortcut",
               "seeds": "seeds", "test_error_mean": "test_error_fraction_mean",
               "test_error_std": "test_error_fraction_std", "train_error_mean": "train_error_fraction_mean",
               "train_error_std": "train_error_fraction_std", "params": "params", "steps": "steps",
               "max_steps": "max_steps", "wall_time_s": "wall_time_s", "status": "status", "settings": "settings",
               "config_hash": "config_hash"}


def table_rows(groups: list) -> list[dict]:
    """One row per configuration (all seeds of it), from runs.Group objects: errors are fractions, means and
    sample stds over the seeds whose status is done; the other runs are counted in `status`, never dropped."""
    from ..config import config_hash

    kinds = block_kinds(groups)
    rows = []
    for g in groups:
        test, train = g.stats("final_test_error"), g.stats("final_train_error")
        statuses = [r.status for r in g.runs]
        results = [r.result for r in g.runs]
        rows.append({
            "dataset": g.dataset, "net": net_name(g.block, g.depth), "depth": g.depth, "block": g.block,
            "shortcut": g.shortcut, "seeds": len(g.done), "test_error_mean": test.mean,
            "test_error_std": test.std, "train_error_mean": train.mean, "train_error_std": train.std,
            "params": results[0].get("params"), "steps": max(r.get("steps") or 0 for r in results),
            "max_steps": results[0].get("max_steps"), "wall_time_s": sum(r.get("wall_time_s") or 0 for r in results),
            "status": ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)),
            "settings": g.settings, "config_hash": config_hash(g.config), "seed_list": sorted(r.seed for r in g.runs),
            "config": g.config})
    return sorted(rows, key=lambda r: (r["dataset"], kinds.index(r["block"]), r["depth"], r["shortcut"],
                                       r["config_hash"]))


def summarize(root: Path) -> list[dict]:
    """The results table of root's runs (runs.load_runs: unusable files and copies left out, with a warning):
    one row per configuration, errors as fractions (see table_rows)."""

    return table_rows(group_runs(load_runs(root)))


def _display(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["dataset", "net", "shortcut", "seeds", "test err %", "train err %", "params", "iterations",
            "wall time", "status"]
    err = lambda r, key: error_cell(100 * r[f"{key}_mean"], 100 * r[f"{key}_std"], r["seeds"])
    body = [[r["dataset"], r["net"], r["shortcut"], str(r["seeds"]), err(r, "test_error"), err(r, "train_error"),
             "-" if r["params"] is None else f"{r['params']:,}", f"{r['steps']}/{r['max_steps']}",
             fmt_time(r["wall_time_s"]), r["status"]] for r in rows]
    if any(r.get("settings") for r in rows):  # only where configs of a dataset differ beyond the net and seed
        head.append("settings")
        for cells, r in zip(body, rows):
            cells.append(r.get("settings", ""))
    return head, body


def format_table(rows: list[dict]) -> str:
    """The table aligned for a terminal (errors in %, mean ± sample std over the done seeds)."""
    if not rows:
        return "(no runs)"
    return aligned(*_display(rows), right=range(3, 10))  # the numbers and the status; names and settings left


def format_markdown(rows: list[dict]) -> str:
    """The table as Markdown (errors in %)."""
    return markdown(*_display(rows))


def _csv_row(row: dict) -> list:
    """A row of results.csv: numbers only in numeric columns, empty where there is none (no finished seed; a std
    of one seed, which is undefined)."""
    cells = []
    for key in CSV_COLUMNS:
        value = row.get(key)
        if isinstance(value, float) and (math.isnan(value) or (key.endswith("_std") and row["seeds"] < 2)):
            value = None
        cells.append(value)
    return cells


def write_tables(root: Path, rows: list[dict] | None = None) -> list[dict]:
    """Rebuild ROOT/results.csv (errors as fractions, in columns named so) and ROOT/results.md (errors in %)
    atomically from the result.json files (or from `rows` of summarize(root)); return the rows."""
    rows = summarize(root) if rows is None else rows
    atomic_write_text(Path(root) / "results.csv", csv_text(list(CSV_COLUMNS.values()), [_csv_row(r) for r in rows]))
    md = (f"# Results under {root}\n\nErrors in %, mean ± sample std over the seeds that finished "
          f"(status done); rebuilt from the result.json files by `resdepth results {root}`.\n\n"
          + format_markdown(rows))
    atomic_write_text(Path(root) / "results.md", md)
    return rows




def results_cli(argv: list[str]) -> int:
    """`resdepth results [ROOT]`: 0 when written; 2 (nothing written) when ROOT holds no usable runs."""
    import argparse

    p = argparse.ArgumentParser(prog="resdepth results", description="Rebuild the results table of a sweep.")
    p.add_argument("root", nargs="?", default="runs", help="results root (default: runs)")
    args = p.parse_args(argv)
    root = Path(args.root)
    why = no_runs(root)
    if why:
        print(f"resdepth: error: {why}", file=sys.stderr)
        return 2
    rows = summarize(root)
    if not rows:
        print(f"resdepth: error: {NO_USABLE.format(root=root)}", file=sys.stderr)
        return 2
    print(format_table(rows))
    try:
        write_tables(root, rows)
    except OSError as e:  # a read-only or full disk: the table above is all there is
        print(f"resdepth: error: cannot save the table: {e.strerror or e}: {e.filename or root}", file=sys.stderr)
        return 1
    print(f"\nwrote {root / 'results.csv'} and {root / 'results.md'}")
    return 0
