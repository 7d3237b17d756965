"""Figures and tables of a results root: `resdepth plot [ROOT]` writes them into ROOT/figures/.

  fig6_curves.{png,pdf}     Figure 6: error vs iterations; plain | ResNet (| ResNet-110 vs ResNet-1202)
  depth_vs_error.{png,pdf}  final training and test error against depth, plain vs ResNet, the paper's Table 6
  fig7_responses.{png,pdf}  Figure 7: std of each 3x3 layer's response, in layer order and sorted
  table6.md, table6.csv     per depth: our ResNet and plain errors against the paper's, params, the verdict
  report.md                 one page: the figures, the table, sweep command, data, hardware, versions, time

One dataset under ROOT: the files go to ROOT/figures/. Several: to ROOT/figures/<dataset>/, one set each.
Runs are grouped by (dataset, block, depth, shortcut, every other setting but the seed): seeds are averaged
(mean, sample std, min-max band), different protocols never. Runs that are running (or were interrupted),
diverged or failed are drawn and tabled with their status, never dropped. Errors are fractions in the run files
and percentages here. The paper's numbers appear only for cifar10 / cifar10_jpeg runs on the paper's protocol.

Pure: result records in, matplotlib Figure objects out (built without pyplot, so rendered by Agg and never
touching the global backend); nothing here knows of training. Re-running on the same runs gives the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from .config import config_hash
from .results import (atomic_write_bytes, atomic_write_text, differing_settings, find_results, fmt_time, mean_std,
                      net_name, no_runs, read_json, read_metrics)

# Table 6 of the paper: ResNet test error (%) on CIFAR-10; parameter counts as the paper prints them.
# Table 6's test errors (%). For ResNet-110 the paper gives the best of 5 runs (6.43) and their mean ± std
# (6.61 ± 0.16); our numbers are means over seeds (or one run), so they are compared with the paper's mean.
PAPER_TEST_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.61, 1202: 7.93}
PAPER_TEST_STD = {110: 0.16}
PAPER_TEST_CELL = {110: "6.61 ± 0.16 (mean of 5; best 6.43)"}
PAPER_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 1202: "19.4M"}
PAPER_DATASETS = ("cifar10", "cifar10_jpeg")
PAPER_PROTOCOL = {"max_steps": 64000, "milestones": [32000, 48000], "lr": 0.1, "batch_size": 128}
NA = "n/a (different protocol)"
OFF_SCALE = 85.0  # %: nets ending near chance (never learned, like the paper's plain-110) do not set the y-limit
FIGURES = ("fig6_curves", "depth_vs_error", "fig7_responses")


@dataclass
class Run:
    """One run directory: its result.json, metrics.csv rows and layer response stds (None when missing)."""

    dir: Path
    result: dict
    metrics: list[dict]
    responses: list[float] | None

    @property
    def status(self) -> str:
        return self.result.get("status", "unknown")

    @property
    def seed(self):
        return self.result.get("seed")


@dataclass
class Group:
    """The seeds of one net under one protocol. `variant` tells apart groups of the same net ("-B", " (40 it)")."""

    dataset: str
    block: str
    depth: int
    shortcut: str
    protocol: str  # hash of every setting but the model and the seed
    runs: list[Run] = field(default_factory=list)
    variant: str = ""

    @property
    def name(self) -> str:
        return net_name(self.block, self.depth) + self.variant

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.status == "done"]

    @property
    def config(self) -> dict:
        return self.runs[0].result.get("config", {})

    @property
    def max_steps(self) -> int:
        return self.runs[0].result.get("max_steps") or 0


def load_runs(root: Path) -> list[Run]:
    """Every run under root with a readable result.json, sorted by path."""
    runs = []
    for run_dir, result in find_results(root):
        resp = run_dir / "responses.json"
        try:
            responses = read_json(resp)["layer_std"] if resp.exists() else None
        except (OSError, ValueError, KeyError):
            responses = None
        runs.append(Run(run_dir, result, read_metrics(run_dir / "metrics.csv"), responses))
    return runs


def protocol_hash(config: dict) -> str:
    """8 hex digits naming every setting of a run except the model and the seed."""
    return config_hash(config or {}, without=("seed", "model"))


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by (dataset, block, depth, shortcut, protocol), sorted, with variants named where needed."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        r = run.result
        key = (r.get("dataset", "?"), r.get("block", "?"), r.get("depth", 0), r.get("shortcut", "A"),
               protocol_hash(r.get("config", {})))
        groups.setdefault(key, Group(*key)).runs.append(run)
    out = sorted(groups.values(), key=lambda g: (g.dataset, g.max_steps, g.protocol, g.shortcut,
                                                 g.block != "plain", g.depth))
    for dataset in {g.dataset for g in out}:
        mine = [g for g in out if g.dataset == dataset]
        steps = {g.protocol: g.max_steps for g in mine}
        unique = len(set(steps.values())) == len(steps)
        settings = differing_settings([g.config for g in mine])
        for g, differ in zip(mine, settings):
            g.variant = "-B" if g.shortcut == "B" else ""
            if len(steps) > 1:  # several protocols: say which (by iterations when that tells them apart)
                g.variant += f" ({g.max_steps} it)" if unique else f" ({differ or g.protocol})"
    return out


def by_dataset(groups: list[Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(g.dataset, []).append(g)
    return dict(sorted(out.items()))


def paper_reference(group: Group) -> bool:
    """The paper's numbers apply: CIFAR-10 (or its JPEG copy) trained on the paper's protocol."""
    o, t = group.config.get("optim", {}), group.config.get("trainer", {})
    ours = {"max_steps": t.get("max_steps"), "milestones": list(o.get("milestones", [])), "lr": o.get("lr"),
            "batch_size": o.get("batch_size")}
    return group.dataset in PAPER_DATASETS and ours == PAPER_PROTOCOL


def last_iteration(run: Run) -> int:
    return run.metrics[-1]["iteration"] if run.metrics else (run.result.get("steps") or 0)


def status_note(run: Run) -> str:
    """'' for a done run, else 'running, it N', 'diverged at N', 'failed at it N'."""
    s = run.status
    if s == "done":
        return ""
    if s == "running":
        return f"running, it {last_iteration(run)}"
    if s == "diverged":
        return f"diverged at {run.result.get('diverged_at') or last_iteration(run)}"
    return f"{s} at it {last_iteration(run)}"


def final_errors(group: Group, key: str) -> tuple[float, float, int]:
    """Mean, std, n of result[key] (a fraction) over the group's done runs, in %."""
    m, s, n = mean_std([r.result[key] for r in group.done if r.result.get(key) is not None])
    return 100 * m, 100 * s, n


# ------------------------------------------------------------------------------------------------- figures

def _colors(groups: list[Group]) -> dict[tuple, tuple]:
    """One colour per (depth, variant), the same in every panel and figure."""
    keys = sorted({(g.depth, g.variant) for g in groups})
    palette = colormaps["tab10" if len(keys) <= 10 else "tab20"].colors
    return {k: palette[i % len(palette)] for i, k in enumerate(keys)}


def _last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else math.nan


def _curves(runs: list[Run]) -> dict:
    """Iterations and train/test error (%) of these runs on their common iterations: mean, min, max."""
    iters = sorted(set.intersection(*({row["iteration"] for row in r.metrics} for r in runs)))
    out = {"x": np.array(iters, dtype=float) / 1e4}
    for key in ("train_error", "test_error"):
        rows = [{row["iteration"]: row[key] for row in r.metrics} for r in runs]
        v = 100 * np.array([[row[i] for i in iters] for row in rows], dtype=float).reshape(len(runs), len(iters))
        out[key] = v.mean(axis=0)
        out[key + "_lo"], out[key + "_hi"] = v.min(axis=0), v.max(axis=0)
    return out


def curve_entries(group: Group) -> list[dict]:
    """What Figure 6 draws for a group: the mean of its done seeds, then each run that is not done, labelled."""
    entries = []
    if group.done:
        n = len(group.done)
        label = group.name + (f" (mean of {n} seeds)" if n > 1 else
                              f" seed {group.done[0].seed}" if len(group.runs) > 1 else "")
        entries.append({"label": label, "done": True, "band": n > 1, **_curves(group.done)})
    for run in group.runs:
        if run.status != "done":
            seed = f" seed {run.seed}" if len(group.runs) > 1 else ""
            entries.append({"label": f"{group.name}{seed} ({status_note(run)})", "done": False, "band": False,
                            **_curves([run])})
    for e in entries:
        finals = [v for v in (_last_finite(e["train_error"]), _last_finite(e["test_error"])) if not math.isnan(v)]
        e["final"] = max(finals, default=math.nan)
    return entries


def error_top(values: list[float]) -> float:
    """Top of an error axis (%): 1.5 x the largest value below OFF_SCALE + 5, up to a multiple of 5, at most 100.

    So a net stuck at 90% shows as off scale instead of squashing the differences of a few % that matter."""
    usable = [v for v in values if v < OFF_SCALE]
    return min(100.0, 5 * math.ceil((1.5 * max(usable) + 5) / 5)) if usable else 100.0


def curves_figure(groups: list[Group]) -> Figure:
    """Figure 6 for one dataset: training (dashed) and test (bold) error (%) against iterations (1e4)."""
    colors = _colors(groups)
    residual = [g for g in groups if g.block == "residual"]
    big = any(g.depth == 1202 for g in residual)
    panels = [("plain nets", [g for g in groups if g.block == "plain"]),
              ("residual nets (ResNet)", [g for g in residual if not (big and g.depth == 1202)])]
    if big:
        panels.append(("ResNet-110 vs ResNet-1202", [g for g in residual if g.depth in (110, 1202)]))
    drawn = [[(g, e) for g in gs for e in curve_entries(g)] for _, gs in panels]
    entries = [e for panel in drawn for _, e in panel if not math.isnan(e["final"])]
    done = [e["final"] for e in entries if e["done"] and e["final"] < OFF_SCALE]
    top = error_top(done or [e["final"] for e in entries])  # unfinished runs count only when nothing finished
    right = max(g.max_steps for g in groups) / 1e4 or None

    fig = Figure(figsize=(5.2 * len(panels), 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (title, _), panel in zip(axes, panels, drawn):
        for g, e in panel:
            color, alpha = colors[(g.depth, g.variant)], 1.0 if e["done"] else 0.6
            label = e["label"]
            if e["final"] > top:
                note = f"off scale: ends at {e['final']:.0f}%"
                label = label[:-1] + f"; {note})" if label.endswith(")") else f"{label} ({note})"
            ax.plot(e["x"], e["train_error"], "--", color=color, lw=1.0, alpha=alpha)
            ax.plot(e["x"], e["test_error"], "-", color=color, lw=2.0, alpha=alpha, label=label)
            if e["band"]:
                for key in ("train_error", "test_error"):
                    ax.fill_between(e["x"], e[key + "_lo"], e[key + "_hi"], color=color, alpha=0.2, lw=0)
        ax.set(title=title, xlabel="iter. (1e4)", xlim=(0, right), ylim=(0, top))
        ax.xaxis.set_major_locator(MaxNLocator(7, steps=[1, 2, 5, 10]))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.grid(alpha=0.3)
        if panel:
            labels = ax.get_legend_handles_labels()[1]
            ncols = 2 if max(map(len, labels)) <= 24 else 1  # long notes (running, off scale) would overlap
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=ncols, fontsize="small", frameon=False)
        else:
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="gray")
    axes[0].set_ylabel("error (%)")
    fig.suptitle(f"{groups[0].dataset}: error vs iterations (dashed: training error, bold: test error)")
    return fig


def excluded_runs(groups: list[Group]) -> list[str]:
    """'plain-20 seed 1 (diverged at 1200)' for every run that is not done (so not in the means)."""
    return [f"{g.name} seed {r.seed} ({status_note(r)})" for g in groups for r in g.runs if r.status != "done"]


def depth_figure(groups: list[Group]) -> Figure:
    """Final training and test error (%) against depth: mean ± sample std over done seeds, plain vs ResNet,
    with the paper's Table 6 ResNet test errors where they apply."""
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    ax_train, ax_test = fig.subplots(1, 2, sharex=True)
    series: dict[tuple, list[Group]] = {}
    for g in groups:
        if g.done:
            series.setdefault((g.block != "plain", g.variant), []).append(g)
    variants = sorted({v for _, v in series})
    points = {ax_train: [], ax_test: []}  # (depth, mean, std, colour, net name) per panel
    for (is_res, variant), gs in sorted(series.items()):
        style = {"color": "tab:blue" if is_res else "tab:red", "marker": "osD^v<>"[variants.index(variant) % 7],
                 "capsize": 3, "ls": "-" if is_res else "--", "label": ("ResNet" if is_res else "plain") + variant}
        for ax, key in ((ax_train, "final_train_error"), (ax_test, "final_test_error")):
            stats = [final_errors(g, key) for g in gs]
            ax.errorbar([g.depth for g in gs], [s[0] for s in stats], yerr=[s[1] for s in stats], **style)
            points[ax] += [(g.depth, m, sd, style["color"], g.name) for g, (m, sd, _) in zip(gs, stats)]
    ref = sorted({g.depth for g in groups if g.block == "residual" and paper_reference(g)} & set(PAPER_TEST_ERROR))
    if ref:
        jpeg = "; ours: JPEG copy" if groups[0].dataset == "cifar10_jpeg" else ""
        mean_of_5 = "; 110: mean ± std of 5" if 110 in ref else ""
        ax_test.errorbar(ref, [PAPER_TEST_ERROR[d] for d in ref], yerr=[PAPER_TEST_STD.get(d, 0) for d in ref],
                         fmt="x", color="black", ms=9, mew=2, capsize=3,
                         label=f"paper (ResNet, Table 6{jpeg}{mean_of_5})")
        points[ax_test] += [(d, PAPER_TEST_ERROR[d], PAPER_TEST_STD.get(d, 0.0), "black", "paper") for d in ref]
    depths = sorted({g.depth for g in groups})
    for ax, what in ((ax_train, "training"), (ax_test, "test")):
        if depths[-1] >= 10 * depths[0]:
            ax.set_xscale("log")
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.minorticks_off()
        top = error_top([m + sd for _, m, sd, _, _ in points[ax]])
        off = [(d, m, c, name) for d, m, _, c, name in points[ax] if m > top]
        title = f"final {what} error" + ("\noff scale: " + ", ".join(f"{n} {m:.0f}%" for _, m, _, n in off)
                                          if off else "")
        ax.set(title=title, xlabel="depth (layers)", ylabel=f"{what} error (%)", ylim=(0, top))
        for d, _, c, _ in off:
            ax.plot([d], [top], "^", color=c, ms=8, clip_on=False)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize="small")
    left_out = excluded_runs(groups)
    if left_out:
        more = f" and {len(left_out) - 6} more" if len(left_out) > 6 else ""
        fig.supxlabel("not in the means: " + "; ".join(left_out[:6]) + more, fontsize=8)
    fig.suptitle(f"{groups[0].dataset}: error vs depth (mean ± std over seeds)")
    return fig


def responses_figure(groups: list[Group]) -> Figure:
    """Figure 7: std of the layer responses (after BN, before the addition/ReLU) per 3x3 layer, in layer order
    (top) and sorted in descending order (bottom); one line per net, the mean over its seeds."""
    colors = _colors(groups)
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    nets = [(g, [r.responses for r in g.runs if r.responses]) for g in groups]
    nets = [(g, stds) for g, stds in nets if stds]
    dots = max((len(stds[0]) for _, stds in nets), default=0) <= 60  # dots only where they stay readable
    for g, stds in nets:
        mean = np.mean(np.array(stds, dtype=float), axis=0)
        idx = np.arange(1, len(mean) + 1)
        style = {"color": colors[(g.depth, g.variant)], "ls": "--" if g.block == "plain" else "-", "lw": 1.5,
                 "marker": "o" if dots else None, "ms": 2.5}
        label = g.name + (f" (mean of {len(stds)} seeds)" if len(stds) > 1 else "")
        top.plot(idx, mean, label=label, **style)
        bottom.plot(idx, np.sort(mean)[::-1], label=label, **style)
    top.set(xlabel="layer index (original)", ylabel="std")
    bottom.set(xlabel="layer index (sorted by magnitude)", ylabel="std")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    if top.lines:
        fig.legend(*top.get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    else:
        top.text(0.5, 0.5, "no responses.json yet", transform=top.transAxes, ha="center", color="gray")
    top.set_title(f"{groups[0].dataset}: std of layer responses on the test set (dashed: plain, solid: ResNet)")
    return fig


def missing_responses(groups: list[Group]) -> list[str]:
    """Nets left out of Figure 7 for want of a responses.json, with why."""
    out = []
    for g in groups:
        if not any(r.responses for r in g.runs):
            why = ", ".join(status_note(r) or "done, no responses.json" for r in g.runs)
            out.append(f"{g.name} ({why})")
    return out


# -------------------------------------------------------------------------------------------------- tables

def table_rows(groups: list[Group]) -> list[dict]:
    """One row per (protocol, shortcut, depth): ResNet and plain final errors (%) and params against the paper."""
    keys: dict[tuple, dict] = {}
    for g in groups:
        row = keys.setdefault((g.protocol, g.shortcut, g.depth), {"dataset": g.dataset, "depth": g.depth,
                                                                  "variant": g.variant, "reference": False})
        row[g.block] = g
        row["reference"] = row["reference"] or paper_reference(g)
    order = list(dict.fromkeys(g.protocol for g in groups))  # groups come sorted by iterations, then protocol
    rows = []
    for _, row in sorted(keys.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1], kv[0][2])):
        res, plain = row.pop("residual", None), row.pop("plain", None)
        for name, g in (("resnet", res), ("plain", plain)):
            for split in ("test", "train"):
                row[f"{name}_{split}"] = final_errors(g, f"final_{split}_error") if g else (math.nan, math.nan, 0)
            tests = [r.result["final_test_error"] for r in g.done] if g else []
            row[f"{name}_test_best"] = 100 * min(tests) if tests else math.nan  # as the paper gives for 110
        ours = next((r.result.get("params") for g in (res, plain) if g for r in g.runs), None)
        paper = PAPER_TEST_ERROR.get(row["depth"]) if row["reference"] else None
        row.update(params=ours, paper_params=PAPER_PARAMS.get(row["depth"], "-") if row["reference"] else NA,
                   paper_test=paper, diff=row["resnet_test"][0] - paper if paper is not None else math.nan)
        notes = [f"{'ResNet' if g is res else 'plain'} seed {r.seed}: {status_note(r)}"
                 for g in (res, plain) if g for r in g.runs if r.status != "done"]
        notes += [f"no {b} run" for b, g in (("ResNet", res), ("plain", plain)) if g is None]
        row["status"] = "; ".join(notes) or "done"
        rows.append(row)
    return rows


def _pct(stats: tuple[float, float, int], best: float = math.nan) -> str:
    m, s, n = stats
    if n == 0:
        return "-"
    best = "" if math.isnan(best) else f"; best {best:.2f}"
    return f"{m:.2f} ± {s:.2f} (n={n}{best})" if n > 1 else f"{m:.2f} (n=1)"


def _paper(row: dict) -> str:
    if not row["reference"]:
        return NA
    if row["paper_test"] is None:
        return "-"
    return PAPER_TEST_CELL.get(row["depth"], f"{row['paper_test']:.2f}")


def _diff(row: dict) -> str:
    if not row["reference"]:
        return NA
    return "-" if math.isnan(row["diff"]) else f"{row['diff']:+.2f}"


def table_markdown(rows: list[dict]) -> str:
    """Table 6 as Markdown (errors in %); the paper's columns only when its numbers apply to some row."""
    paper = any(r["reference"] for r in rows)
    head = ["depth", "ResNet test", *(["paper ResNet test", "ours − paper"] if paper else []), "plain test",
            "ResNet train", "plain train", "params (ours)", *(["params (paper)"] if paper else []), "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        params = "-" if r["params"] is None else f"{r['params'] / 1e6:.2f}M ({r['params']:,})"
        cells = [f"{r['depth']}{r['variant']}", _pct(r["resnet_test"], r["resnet_test_best"]),
                 *([_paper(r), _diff(r)] if paper else []), _pct(r["plain_test"], r["plain_test_best"]),
                 _pct(r["resnet_train"]), _pct(r["plain_train"]), params,
                 *([r["paper_params"]] if paper else []), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("dataset", "depth", "variant", "resnet_test_mean", "resnet_test_std", "resnet_n", "resnet_test_best",
               "plain_test_mean", "plain_test_std", "plain_n", "plain_test_best", "paper_resnet_test",
               "ours_minus_paper", "resnet_train_mean", "resnet_train_std", "plain_train_mean", "plain_train_std",
               "params", "paper_params", "status")


def table_csv(rows: list[dict]) -> str:
    """Table 6 as CSV: errors in %, 4 decimals; empty where there is no number."""
    num = lambda v: "" if v is None or math.isnan(v) else f"{v:.4f}"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        (rm, rs, rn), (pm, ps, pn) = r["resnet_test"], r["plain_test"]
        w.writerow([r["dataset"], r["depth"], r["variant"].strip(), num(rm), num(rs), rn, num(r["resnet_test_best"]),
                    num(pm), num(ps), pn, num(r["plain_test_best"]),
                    num(r["paper_test"]) if r["reference"] else NA, num(r["diff"]) if r["reference"] else NA,
                    num(r["resnet_train"][0]), num(r["resnet_train"][1]), num(r["plain_train"][0]),
                    num(r["plain_train"][1]), "" if r["params"] is None else r["params"], r["paper_params"],
                    r["status"]])
    return buf.getvalue()


def degradation_sentence(rows: list[dict]) -> str:
    """One sentence, from the mean final training errors, saying whether the degradation was reproduced and
    which comparisons held: deepest vs shallowest plain, monotonic plain, deepest vs shallowest ResNet,
    ResNet below plain at each depth. Uses the variant with the most rows (the default one on a tie)."""
    variants = [r["variant"] for r in rows]
    variant = max(dict.fromkeys(variants), key=lambda v: (variants.count(v), v == ""))
    rows = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["depth"])
    plain = {r["depth"]: r["plain_train"][0] for r in rows if r["plain_train"][2]}
    res = {r["depth"]: r["resnet_train"][0] for r in rows if r["resnet_train"][2]}
    if len(plain) < 2:
        return ("Degradation not judged: it needs finished plain runs at two or more depths "
                f"(finished plain depths: {', '.join(map(str, plain)) or 'none'}).")
    yes = lambda held: "yes" if held else "no"
    v = variant
    d = sorted(plain)
    plain_worse = plain[d[-1]] > plain[d[0]]
    monotonic = all(plain[a] < plain[b] for a, b in zip(d, d[1:]))
    parts = [f"plain-{d[-1]}{v} {plain[d[-1]]:.2f}% > plain-{d[0]}{v} {plain[d[0]]:.2f}%: {yes(plain_worse)}",
             f"rising at every step of depth {'/'.join(map(str, d))}: {yes(monotonic)}"]
    res_flat = res_below = None
    if len(res) >= 2:
        r = sorted(res)
        res_flat = res[r[-1]] <= res[r[0]]
        parts.append(f"ResNet-{r[-1]}{v} {res[r[-1]]:.2f}% <= ResNet-{r[0]}{v} {res[r[0]]:.2f}%: {yes(res_flat)}")
    both = sorted(set(plain) & set(res))
    if both:
        below = [x for x in both if res[x] < plain[x]]
        res_below = len(below) == len(both)
        parts.append(f"ResNet below plain at {len(below)} of {len(both)} depths "
                     f"({', '.join(map(str, below)) or 'none'}): {yes(res_below)}")
    if res_flat is None and res_below is None:
        verdict, tail = "not judged for residual nets", "residual nets: no finished runs to compare"
    else:
        # The degradation is about plain nets getting worse with depth while their residual twins do not fall
        # behind; whether deeper ResNets are also *better* (the paper's second finding) is said separately.
        verdict = "reproduced" if plain_worse and (res_below or (res_below is None and res_flat)) else \
            "not reproduced"
        tail = ("residual nets are below plain at every depth" if res_below else
                "residual nets are not below plain at every depth" if res_below is not None else "")
        if res_flat is not None:
            tail += ("; " if tail else "") + ("deeper residual nets also reach lower training error"
                                              if res_flat else "deeper residual nets do not (yet) reach lower "
                                              "training error than shallower ones")
    return (f"Degradation {verdict} (final training error, mean over finished seeds): deeper plain nets "
            f"{'reach' if plain_worse else 'do not reach'} higher training error than shallower ones; "
            f"{tail} ({'; '.join(parts)}).")


# ------------------------------------------------------------------------------------------------- report

def sweep_commands(root: Path) -> list[str]:
    """Every sweep command run into ROOT, first use first (sweeps.jsonl, one line per `resdepth sweep`); else
    the one of sweep_command()."""
    commands = []
    try:
        for line in (Path(root) / "sweeps.jsonl").read_text().splitlines():
            try:
                commands.append(json.loads(line)["command"])
            except (ValueError, KeyError, TypeError):  # a line torn by a crash: the others still count
                continue
    except OSError:
        pass
    return list(dict.fromkeys(commands)) or [sweep_command(root)]


def sweep_command(root: Path) -> str:
    """The latest command that wrote ROOT: from sweep.json, else Hydra's multirun.yaml, else 'unknown'."""
    root = Path(root)
    try:
        return read_json(root / "sweep.json")["command"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        import yaml

        with open(root / "multirun.yaml") as f:
            task = yaml.safe_load(f)["hydra"]["overrides"]["task"]
        return " ".join(["resdepth sweep", *task]).strip()
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        return "unknown"


def _protocols(groups: list[Group]) -> list[str]:
    out = []
    for g in groups:
        c = g.config
        o, t, d = c.get("optim", {}), c.get("trainer", {}), c.get("data", {})
        text = (f"{t.get('max_steps')} iterations of {o.get('batch_size')} images, lr {o.get('lr')} "
                f"x{o.get('gamma')} at {o.get('milestones')}, weight decay {o.get('weight_decay')}, "
                f"validation images {d.get('val_size')}; paper protocol: {'yes' if paper_reference(g) else 'no'}")
        if text not in out:
            out.append(text)
    return out


def report_markdown(root: Path, groups: list[Group], table_md: str, sentence: str) -> str:
    """report.md for one dataset; it lives beside the figures it embeds."""
    runs = [r for g in groups for r in g.runs]
    dataset = groups[0].dataset
    statuses = [r.status for r in runs]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))

    def parts(r: Run) -> list[dict]:  # where the run's iterations were trained (one part unless resumed elsewhere)
        return r.result.get("segments") or [r.result]

    hardware = sorted({f"{p.get('device')} ({p.get('precision')}, host {r.result.get('versions', {}).get('host')})"
                       for r in runs for p in parts(r)})
    mixed = [f"{g.name} seed {r.seed} (" + ", ".join(f"from it {p['from']}: {p['device']}, {p['precision']}"
                                                      for p in parts(r)) + ")"
             for g in groups for r in g.runs if len(parts(r)) > 1]
    software = sorted({", ".join(f"{k} {v}" for k, v in sorted(r.result.get("versions", {}).items())
                                 if k not in ("host", "platform")) for r in runs})
    platforms = sorted({str(r.result.get("versions", {}).get("platform")) for r in runs})
    total = sum(r.result.get("wall_time_s") or 0 for r in runs)
    commands = sweep_commands(root)
    note = ""
    if dataset == "cifar10_jpeg":
        note = (" (the JPEG copy of CIFAR-10: not bit-identical, expect somewhat higher errors than the paper's, "
                "which are on the original images)")
    lines = [f"# resdepth: {dataset}", "",
             f"Runs under `{root}`, drawn by `resdepth plot {root}`. Errors in %; mean ± sample std over the seeds "
             "that finished (status done).", "",
             *(f"- sweep command: `{c}`" if len(commands) == 1 else f"- sweep command {i} of {len(commands)}: `{c}`"
               for i, c in enumerate(commands, 1)),
             f"- dataset: {dataset}{note}",
             *[f"- protocol: {p}" for p in _protocols(groups)],
             f"- hardware: {'; '.join(hardware)}",
             *([f"- resumed on another device or precision: {'; '.join(mixed)}"] if mixed else []),
             f"- software: {'; '.join(software)}; platform {'; '.join(platforms)}",
             f"- compute: {fmt_time(total)} ({total:.0f} s, the sum of wall_time_s over {len(runs)} runs)",
             f"- runs by status: {counts}", ""]
    left_out = excluded_runs(groups)
    if left_out:
        lines += ["Not finished (drawn up to where they are, not in the means): " + "; ".join(left_out) + ".", ""]
    lines += ["## Figure 6: error vs iterations", "", "![Figure 6](fig6_curves.png)", "",
              "## Table 6", "", table_md, sentence, "",
              "## Final error vs depth", "", "![error vs depth](depth_vs_error.png)", "",
              "## Figure 7: std of layer responses", "", "![Figure 7](fig7_responses.png)", ""]
    missing = missing_responses(groups)
    if missing:
        lines += ["Left out of Figure 7 (no responses.json): " + "; ".join(missing) + ".", ""]
    return "\n".join(lines)


def table_note(groups: list[Group]) -> str:
    if any(paper_reference(g) for g in groups):
        jpeg = (" Ours are on the JPEG copy of CIFAR-10: expect somewhat higher errors."
                if groups[0].dataset == "cifar10_jpeg" else "")
        return f"Paper: Table 6 of He et al. 2016 (ResNet, CIFAR-10 test error, 64k iterations).{jpeg}"
    return ("No paper reference: it applies to cifar10 / cifar10_jpeg runs on the paper's protocol "
            "(64000 iterations, lr 0.1, batch 128, milestones 32000, 48000) only.")


def _save(fig: Figure, stem: Path) -> list[Path]:
    """PNG (150 dpi) and PDF without timestamps or version stamps, each written atomically."""
    out = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, metadata=meta)
        path = stem.with_suffix(f".{ext}")
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    return out


def write_outputs(root: Path) -> list[Path]:
    """Every figure, table and report of ROOT into ROOT/figures (ROOT/figures/<dataset> when several)."""
    root = Path(root)
    datasets = by_dataset(group_runs(load_runs(root)))
    written = []
    for dataset, groups in datasets.items():
        out = root / "figures" / (dataset if len(datasets) > 1 else "")
        out.mkdir(parents=True, exist_ok=True)
        for name, build in zip(FIGURES, (curves_figure, depth_figure, responses_figure)):
            written += _save(build(groups), out / name)
        rows = table_rows(groups)
        table_md, sentence = table_markdown(rows), degradation_sentence(rows)
        texts = {"table6.md": f"# Table 6: {dataset}\n\nErrors in %, mean ± sample std over finished seeds (n; "
                              f"best: the lowest test error among them). "
                              f"{table_note(groups)}\n\n{table_md}\n{sentence}\n",
                 "table6.csv": table_csv(rows),
                 "report.md": report_markdown(root, groups, f"{table_note(groups)}\n\n{table_md}", sentence)}
        for name, text in texts.items():
            atomic_write_text(out / name, text)
            written.append(out / name)
    return written


def plot_cli(argv: list[str]) -> int:
    """`resdepth plot [ROOT]`: 0 when written; 2 (nothing created) when ROOT holds no runs."""
    p = argparse.ArgumentParser(prog="resdepth plot", description="Figures 6 and 7, error vs depth, Table 6 and "
                                "report.md of the runs under ROOT, into ROOT/figures.")
    p.add_argument("root", nargs="?", default="runs", help="results root (default: runs)")
    root = Path(p.parse_args(argv).root)
    why = no_runs(root)
    if why:
        print(f"resdepth: error: {why}", file=sys.stderr)
        return 2
    written = write_outputs(root)
    print(f"wrote {len(written)} files to {root / 'figures'}:")
    for path in written:
        print(f"  {path}")
    return 0
