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
import sys
from pathlib import Path

METRICS = ("iteration", "lr", "train_loss", "train_error", "val_error", "test_error", "elapsed_s")
COMPLETE = ("done", "diverged")  # a run with one of these statuses is skipped by a sweep


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + os.replace: readers see the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def _append_synced(path: Path, text: str) -> None:
    """Append to a log whose earlier lines are never rewritten, and sync it to disk."""
    with open(path, "a", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def append_metrics(path: Path, row: dict) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS, extrasaction="ignore")
    if not Path(path).exists():
        w.writeheader()
    w.writerow(row)
    _append_synced(path, buf.getvalue())


def append_jsonl(path: Path, obj) -> None:
    """One JSON line appended and synced."""
    _append_synced(path, json.dumps(obj, sort_keys=True) + "\n")


def find_results(root: Path) -> list[tuple[Path, dict]]:
    """Every run directory under root with a readable result.json, sorted by path. An unreadable one is named
    in a warning on stderr, never dropped in silence."""
    out = []
    for p in sorted(Path(root).rglob("result.json")):
        try:
            out.append((p.parent, read_json(p)))
        except (OSError, ValueError) as e:
            print(f"resdepth: warning: run left out: {e}", file=sys.stderr, flush=True)
    return out


def no_runs(root: Path) -> str | None:
    """Why ROOT holds no runs to table or plot, or None when it holds some."""
    if Path(root).is_dir() and any(Path(root).rglob("result.json")):
        return None
    why = "no such folder" if not Path(root).is_dir() else "no */result.json"
    return (f"no runs found under {root} ({why}); run `resdepth sweep` or `resdepth train` first, or name the "
            "results root")


# ------------------------------------------------------------------------------------------ results table

TABLE_COLUMNS = ("dataset", "net", "depth", "block", "shortcut", "seeds", "test_error_mean", "test_error_std",
                 "train_error_mean", "train_error_std", "params", "steps", "wall_time_s", "status", "settings",
                 "config_hash")


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std (0 for one value), n); (nan, nan, 0) for none."""
    if not values:
        return math.nan, math.nan, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def fmt_time(seconds: float) -> str:
    """'4m05s', '1h12m': a duration for people ('?' when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    h, r = divmod(max(0, round(seconds)), 3600)
    return f"{h}h{r // 60:02d}m" if h else f"{r // 60}m{r % 60:02d}s"


def net_name(block: str, depth: int) -> str:
    """The paper's names: plain-20, ResNet-56."""
    return f"{'ResNet' if block == 'residual' else 'plain'}-{depth}"


def flatten(node, prefix: str = "") -> dict:
    """A nested config as {dotted.key: value}."""
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def differing_settings(configs: list[dict], shown: tuple[str, ...] = ("seed", "model.", "data.name")) -> list[str]:
    """For each config, `key=value ...` of the settings (those that define a result) whose values are not the
    same in all of them, leaving out what a table or legend already shows (the net, the dataset, the seed)."""
    from .config import semantic_config

    flat = [flatten(semantic_config(c or {})) for c in configs]
    keys = sorted({k for f in flat for k in f if not k.startswith(shown)})
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    return [" ".join(f"{k}={json.dumps(f[k]).replace(' ', '')}".replace('"', "") for k in differ if k in f)
            for f in flat]


def summarize(root: Path) -> list[dict]:
    """One row per configuration (all seeds of it) under root, from result.json files only.

    Errors are fractions; means and sample stds are over the seeds whose status is done. Runs that are running,
    interrupted, diverged or failed are counted in `status` and never silently dropped.
    """
    from .config import config_hash

    groups: dict[tuple, list[dict]] = {}
    for _, r in find_results(root):
        if "config" not in r:
            continue
        key = (r["dataset"], r["block"], r["depth"], r["shortcut"], config_hash(r["config"]))
        groups.setdefault(key, []).append(r)
    rows = []
    for (dataset, block, depth, shortcut, chash), runs in sorted(groups.items(), key=lambda kv: kv[0]):
        done = [r for r in runs if r.get("status") == "done"]
        statuses = [r.get("status", "?") for r in runs]
        test_m, test_s, _ = mean_std([r["final_test_error"] for r in done if r.get("final_test_error") is not None])
        train_m, train_s, _ = mean_std([r["final_train_error"] for r in done
                                        if r.get("final_train_error") is not None])
        rows.append({
            "dataset": dataset, "net": net_name(block, depth), "depth": depth, "block": block, "shortcut": shortcut,
            "seeds": len(done), "test_error_mean": test_m, "test_error_std": test_s, "train_error_mean": train_m,
            "train_error_std": train_s, "params": runs[0].get("params"),
            "steps": max(r.get("steps") or 0 for r in runs), "max_steps": runs[0].get("max_steps"),
            "wall_time_s": sum(r.get("wall_time_s") or 0 for r in runs),
            "status": ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)),
            "config_hash": chash, "seed_list": sorted(r.get("seed") for r in runs), "config": runs[0]["config"],
        })
    for dataset in {r["dataset"] for r in rows}:  # what tells apart configs of the same net: shown, not hashed
        mine = [r for r in rows if r["dataset"] == dataset]
        for row, settings in zip(mine, differing_settings([r["config"] for r in mine])):
            row["settings"] = settings
    return rows


def _pct(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if n > 1 else f"{100 * mean:.2f}"


def _display(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["dataset", "net", "shortcut", "seeds", "test err %", "train err %", "params", "iterations",
            "wall time", "status"]
    body = [[r["dataset"], r["net"], r["shortcut"], str(r["seeds"]),
             _pct(r["test_error_mean"], r["test_error_std"], r["seeds"]),
             _pct(r["train_error_mean"], r["train_error_std"], r["seeds"]), f"{r['params']:,}",
             f"{r['steps']}/{r['max_steps']}", fmt_time(r["wall_time_s"]), r["status"]] for r in rows]
    if any(r.get("settings") for r in rows):  # only where configs of a dataset differ beyond the net and seed
        head.append("settings")
        for cells, r in zip(body, rows):
            cells.append(r.get("settings", ""))
    return head, body


def format_table(rows: list[dict]) -> str:
    """The table aligned for a terminal (errors in %, mean ± sample std over the done seeds)."""
    if not rows:
        return "(no runs)"
    head, body = _display(rows)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    right = range(3, 10)  # the numbers and the status; names and settings stay left
    line = lambda cells: "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def format_markdown(rows: list[dict]) -> str:
    head, body = _display(rows)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(out) + "\n"


def write_tables(root: Path) -> list[dict]:
    """Rebuild ROOT/results.csv and ROOT/results.md (atomically) from the result.json files; return the rows."""
    rows = summarize(root)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*TABLE_COLUMNS, "max_steps"], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(Path(root) / "results.csv", buf.getvalue())
    md = (f"# Results under {root}\n\nErrors in %, mean ± sample std over the seeds that finished "
          f"(status done); rebuilt from the result.json files by `resdepth results {root}`.\n\n"
          + format_markdown(rows))
    atomic_write_text(Path(root) / "results.md", md)
    return rows


def results_cli(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="resdepth results", description="Rebuild the results table of a sweep.")
    p.add_argument("root", nargs="?", default="runs", help="results root (default: runs)")
    args = p.parse_args(argv)
    root = Path(args.root)
    why = no_runs(root)
    if why:
        print(f"resdepth: error: {why}", file=sys.stderr)
        return 2
    rows = write_tables(root)
    print(format_table(rows))
    print(f"\nwrote {root / 'results.csv'} and {root / 'results.md'}")
    return 0
