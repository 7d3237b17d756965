"""Figure 6, error vs depth and Figure 7 of grouped runs, errors in %: Figures built without pyplot
(Agg; the global backend untouched), so the same runs give the same bytes."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, FuncFormatter, MaxNLocator

from ..rundir import atomic_write_bytes
from .paper import PAPER_TEST_ERROR, PAPER_TEST_STD, REFERENCE_KIND
from .runs import (Group, Run, WarmupMarker, block_kinds, excluded_runs, gradient_runs,
                   kind_label, mean_gradients, paper_reference, status_note, warmup_marker)

OFF_SCALE = 85.0  # %: nets near chance (like the paper's plain-110) do not set the y-limit
PAPER_SCALE = 10_000  # Figure 6 counts iterations in 1e4 (the paper's scale) from this many on
# Colour and line style of a block kind (depth figure, Figure 7); kinds without their own take the
# next of EXTRA_STYLES in registration order.
KIND_STYLES = {"plain": ("tab:red", "--"), "residual": ("tab:blue", "-")}
EXTRA_STYLES = [("tab:green", "-."), ("tab:purple", ":"), ("tab:brown", "-."), ("tab:olive", ":")]
WARMUP_MARKER = "v"
LINE_NAMES = {"-": "solid", "--": "dashed", "-.": "dash-dot", ":": "dotted"}


def kind_style(kind: str, kinds: list[str]) -> tuple[str, str]:
    """(colour, line style) of a block kind."""
    if kind in KIND_STYLES:
        return KIND_STYLES[kind]
    others = [k for k in kinds if k not in KIND_STYLES]
    return EXTRA_STYLES[others.index(kind) % len(EXTRA_STYLES)]


def _colors(groups: list[Group]) -> dict[tuple, tuple]:
    """One colour per (depth, variant), the same in every panel and figure."""
    keys = sorted({(g.depth, g.variant) for g in groups})
    palette = colormaps["tab10" if len(keys) <= 10 else "tab20"].colors
    return {k: palette[i % len(palette)] for i, k in enumerate(keys)}


# ------------------------------------------------------------------------------ Figure 6

def _last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else math.nan


def _curves(runs: list[Run]) -> dict:
    """x (iterations / 1e4) and the runs' train/test error (%) there: mean, min, max."""
    iters = sorted(set.intersection(*({row["iteration"] for row in r.metrics} for r in runs)))
    out = {"x": np.array(iters, dtype=float) / 1e4}
    for key in ("train_error", "test_error"):
        rows = [{row["iteration"]: row[key] for row in r.metrics} for r in runs]
        v = np.array([[row[i] for i in iters] for row in rows], dtype=float)
        v = 100 * v.reshape(len(runs), len(iters))
        out[key] = v.mean(axis=0)
        out[key + "_lo"], out[key + "_hi"] = v.min(axis=0), v.max(axis=0)
    return out


def _warmups(runs: list[Run]) -> list[WarmupMarker]:
    return [end for r in runs if (end := warmup_marker(r))]


def curve_entries(group: Group) -> list[dict]:
    """What Figure 6 draws of a group: the mean of its done seeds, then each run not done."""
    entries = []
    if group.done:
        n = len(group.done)
        label = group.name + (f" (mean of {n} seeds)" if n > 1 else
                              f" seed {group.done[0].seed}" if len(group.runs) > 1 else "")
        entries.append({"label": label, "done": True, "band": n > 1,
                        "warmups": _warmups(group.done), **_curves(group.done)})
    for run in group.runs:
        if run.status != "done":
            seed = f" seed {run.seed}" if len(group.runs) > 1 else ""
            entries.append({"label": f"{group.name}{seed} ({status_note(run)})", "done": False,
                            "band": False, "warmups": _warmups([run]), **_curves([run])})
    for e in entries:
        lasts = (_last_finite(e["train_error"]), _last_finite(e["test_error"]))
        e["final"] = max([v for v in lasts if not math.isnan(v)], default=math.nan)
    return entries


def error_top(values: list[float]) -> float:
    """Top of an error axis (%): 1.5 x the largest value below OFF_SCALE, + 5, rounded up to a
    multiple of 5, at most 100; so a net stuck at 90% shows off scale, not squashing the few %."""
    usable = [v for v in values if v < OFF_SCALE]
    return min(100.0, 5 * math.ceil((1.5 * max(usable) + 5) / 5)) if usable else 100.0


def curve_panels(groups: list[Group]) -> list[tuple[str, list[Group]]]:
    """Figure 6's panels, (title, groups): one per block kind ('residual nets (ResNet)'), then
    '<kind>-110 vs <kind>-1202' for each kind with a 1202 (which its own panel then leaves out)."""
    kinds = block_kinds(groups)
    big = [k for k in kinds if any(g.block == k and g.depth == 1202 for g in groups)]
    title = lambda k: f"{k} nets" + (f" ({kind_label(k)})" if kind_label(k) != k else "")
    own = lambda k: [g for g in groups if g.block == k and not (k in big and g.depth == 1202)]
    panels = [(title(k), own(k)) for k in kinds]
    return panels + [(f"{kind_label(k)}-110 vs {kind_label(k)}-1202",
                      [g for g in groups if g.block == k and g.depth in (110, 1202)]) for k in big]


def curves_top(entries: list[dict]) -> float:
    """Top of Figure 6's error axis (%): error_top of the final errors (of the done runs if any),
    raised where needed to show every recorded point with a margin, to a multiple of 5."""
    done = [e["final"] for e in entries if e["done"] and e["final"] < OFF_SCALE]
    top = error_top(done or [e["final"] for e in entries])  # unfinished ones count if none finished
    points = [e[k] for e in entries for k in ("train_error_hi", "test_error_hi") if e[k].size]
    peak = max((np.nanmax(v) for v in points if np.isfinite(v).any()), default=0.0)
    return max(top, min(100.0, 5 * math.ceil((peak + 2) / 5)))


def _draw_curves(ax, panel: list[tuple[Group, dict]], colors: dict) -> None:
    for g, e in panel:
        color, alpha = colors[(g.depth, g.variant)], 1.0 if e["done"] else 0.6
        ax.plot(e["x"], e["train_error"], "--", color=color, lw=1.0, alpha=alpha)
        ax.plot(e["x"], e["test_error"], "-", color=color, lw=2.0, alpha=alpha, label=e["label"])
        if e["band"]:
            for key in ("train_error", "test_error"):
                ax.fill_between(e["x"], e[key + "_lo"], e[key + "_hi"], color=color, alpha=0.2,
                                lw=0)
        for end in e["warmups"] if e["x"].size else []:  # on the training error
            x = end.iteration / 1e4
            y = np.interp(x, e["x"], e["train_error"])
            ax.plot([x], [y], WARMUP_MARKER, color=color, mec="black", mew=0.8, ms=7, alpha=alpha,
                    zorder=3, clip_on=False)
    ends = [end for _, e in panel for end in e["warmups"]]
    if ends:  # one legend entry for the markers
        inexact = "" if all(end.exact for end in ends) else " (at or before the marker)"
        ax.plot([], [], WARMUP_MARKER, color="lightgray", mec="black", mew=0.8, ms=7,
                label="end of warm-up" + inexact)


def _finish_panel(ax, title: str, right: float | None, top: float, empty: bool) -> None:
    """x in units of 1e4 iterations; labelled in iterations below PAPER_SCALE, else in 1e4."""
    paper = right is not None and right * 1e4 >= PAPER_SCALE
    ax.set(title=title, xlabel="iter. (1e4)" if paper else "iterations", xlim=(0, right),
           ylim=(0, top))
    ax.xaxis.set_major_locator(MaxNLocator(7, steps=[1, 2, 5, 10]))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g") if paper else
                                 FuncFormatter(lambda x, _: f"{x * 1e4:g}"))
    ax.grid(alpha=0.3)
    if empty:
        ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="gray")
        return
    labels = ax.get_legend_handles_labels()[1]
    ncols = 2 if max(map(len, labels)) <= 24 else 1  # long notes (running, diverged) would overlap
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=ncols, fontsize="small",
              frameon=False)


def curves_figure(groups: list[Group]) -> Figure:
    """Figure 6 of one dataset: training (dashed) and test (bold) error (%) vs iterations (in 1e4
    from PAPER_SCALE on)."""
    colors = _colors(groups)
    panels = curve_panels(groups)
    drawn = [[(g, e) for g in gs for e in curve_entries(g)] for _, gs in panels]
    entries = [e for panel in drawn for _, e in panel if not math.isnan(e["final"])]
    top = curves_top(entries)
    right = max(g.max_steps for g in groups) / 1e4 or None

    fig = Figure(figsize=(5.2 * len(panels), 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (title, _), panel in zip(axes, panels, drawn):
        _draw_curves(ax, panel, colors)
        _finish_panel(ax, title, right, top, empty=not panel)
    axes[0].set_ylabel("error (%)")
    warm = any(e["warmups"] for panel in drawn for _, e in panel)
    marker = "; ▼ on the training error: end of warm-up" if warm else ""
    fig.suptitle(f"{groups[0].dataset}: error vs iterations (dashed: training error, "
                 f"bold: test error{marker})")
    return fig


# ------------------------------------------------------------------------------ error vs depth

def _depth_series(ax_train, ax_test, groups: list[Group]) -> dict:
    """One errorbar series per (block kind, variant) on each panel; the points drawn, per panel:
    (depth, mean %, std %, colour, net name)."""
    kinds = block_kinds(groups)
    series: dict[tuple, list[Group]] = {}
    for g in groups:
        if g.done:
            series.setdefault((kinds.index(g.block), g.variant), []).append(g)
    variants = sorted({v for _, v in series})
    points = {ax_train: [], ax_test: []}
    for (kind, variant), gs in sorted(series.items()):
        color, ls = kind_style(kinds[kind], kinds)
        style = {"color": color, "marker": "osD^v<>"[variants.index(variant) % 7], "capsize": 3,
                 "ls": ls, "label": kind_label(kinds[kind]) + variant}
        for ax, key in ((ax_train, "final_train_error"), (ax_test, "final_test_error")):
            stats = [g.stats(key).pct() for g in gs]
            ax.errorbar([g.depth for g in gs], [s[0] for s in stats], yerr=[s[1] for s in stats],
                        **style)
            points[ax] += [(g.depth, m, sd, color, g.name) for g, (m, sd, _) in zip(gs, stats)]
    return points


def _paper_markers(ax_test, groups: list[Group]) -> list[tuple]:
    """The paper's Table 6 test errors at the depths where they apply; the points drawn."""
    ours = {g.depth for g in groups if g.block == REFERENCE_KIND and paper_reference(g)}
    ref = sorted(ours & set(PAPER_TEST_ERROR))
    if not ref:
        return []
    jpeg = "; ours: JPEG copy" if groups[0].dataset == "cifar10_jpeg" else ""
    mean_of_5 = "; 110: mean ± std of 5" if 110 in ref else ""
    ax_test.errorbar(ref, [PAPER_TEST_ERROR[d] for d in ref],
                     yerr=[PAPER_TEST_STD.get(d, 0) for d in ref], fmt="x", color="black", ms=9,
                     mew=2, capsize=3,
                     label=f"paper ({kind_label(REFERENCE_KIND)}, Table 6{jpeg}{mean_of_5})")
    return [(d, PAPER_TEST_ERROR[d], PAPER_TEST_STD.get(d, 0.0), "black", "paper") for d in ref]


def _depth_axes(ax, what: str, depths: list[int], points: list[tuple]) -> None:
    if depths[-1] >= 10 * depths[0]:
        ax.set_xscale("log")
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.minorticks_off()
    top = error_top([m + sd for _, m, sd, _, _ in points])
    off = [(d, m, c, name) for d, m, _, c, name in points if m > top]
    names = ", ".join(f"{n} {m:.0f}%" for _, m, _, n in off)
    title = f"final {what} error" + ("\noff scale: " + names if off else "")
    ax.set(title=title, xlabel="depth (layers)", ylabel=f"{what} error (%)", ylim=(0, top))
    for d, _, c, _ in off:
        ax.plot([d], [top], "^", color=c, ms=8, clip_on=False)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize="small")


def depth_figure(groups: list[Group]) -> Figure:
    """Final training and test error (%) vs depth: mean ± sample std over done seeds, a series per
    block kind, with the paper's Table 6 ResNet test errors where they apply."""
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    ax_train, ax_test = fig.subplots(1, 2, sharex=True)
    points = _depth_series(ax_train, ax_test, groups)
    points[ax_test] += _paper_markers(ax_test, groups)
    depths = sorted({g.depth for g in groups})
    for ax, what in ((ax_train, "training"), (ax_test, "test")):
        _depth_axes(ax, what, depths, points[ax])
    left_out = excluded_runs(groups)
    if left_out:
        more = f" and {len(left_out) - 6} more" if len(left_out) > 6 else ""
        fig.supxlabel("not in the means: " + "; ".join(left_out[:6]) + more, fontsize=8)
    seeds = sorted({len(g.done) for g in groups if g.done})
    counts = (f"{seeds[0]}" + ("" if len(seeds) == 1 else f"-{seeds[-1]}")) if seeds else ""
    spread = ("one seed per net: no spread to show" if seeds[-1:] == [1] else
              f"mean ± sample std over {counts} seeds" if seeds else "no finished runs")
    fig.suptitle(f"{groups[0].dataset}: error vs depth ({spread})")
    return fig


# ------------------------------------------------------------------------------ Figure 7

def responses_figure(groups: list[Group]) -> Figure:
    """Figure 7: each 3x3 layer's response std on the test set (models.ResponseStd), in layer order
    (top) and sorted in descending order (bottom); one line per net, the mean over its seeds."""
    colors, kinds = _colors(groups), block_kinds(groups)
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    nets = [(g, [r.responses for r in g.runs if r.responses]) for g in groups]
    nets = [(g, stds) for g, stds in nets if stds]
    dots = max((len(stds[0]) for _, stds in nets), default=0) <= 60  # dots while readable
    for g, stds in nets:
        mean = np.mean(np.array(stds, dtype=float), axis=0)
        idx = np.arange(1, len(mean) + 1)
        style = {"color": colors[(g.depth, g.variant)], "ls": kind_style(g.block, kinds)[1],
                 "lw": 1.5, "marker": "o" if dots else None, "ms": 2.5}
        label = g.name + (f" (mean of {len(stds)} seeds)" if len(stds) > 1 else "")
        top.plot(idx, mean, label=label, **style)
        bottom.plot(idx, np.sort(mean)[::-1], label=label, **style)
    top.set(xlabel="layer index (original)", ylabel="std")
    bottom.set(xlabel="layer index (sorted by magnitude)", ylabel="std")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # layer numbers
    if top.lines:
        fig.legend(*top.get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    else:
        top.text(0.5, 0.5, "no responses.json yet", transform=top.transAxes, ha="center",
                 color="gray")
    styles = ", ".join(f"{LINE_NAMES[kind_style(k, kinds)[1]]}: {kind_label(k)}" for k in kinds)
    top.set_title(f"{groups[0].dataset}: std of layer responses on the test set ({styles})")
    fig.supxlabel("std of each 3x3 layer's output after BN, before the addition and ReLU, pooled "
                  "over all its elements (images, channels, positions)\nof the test set; one line "
                  "per net, the mean of that std over its seeds", fontsize=8)
    return fig


# ------------------------------------------------------------------------------ gradient norms

GRADIENT_CAPTION = ("L2 norms of the gradient of the mean cross-entropy on a fixed probe batch "
                    "(the same normalised, un-augmented images at every record),\nin fp32 with BN "
                    "in training mode (batch statistics); input: wrt the tensor the layer reads "
                    "(the first conv: the images),\nweight: wrt its weight; a net with several "
                    "seeds shows the mean over them")
GRADIENT_WHAT = {"input_grad_norm": "gradient wrt each layer's input (the backward signal)",
                 "weight_grad_norm": "gradient wrt each layer's weight"}


def _milestones(group: Group) -> list[int]:
    m = group.config.get("optim", {}).get("milestones")
    return sorted(x for x in m if isinstance(x, (int, float))) if isinstance(m, list) else []


def probe_points(iterations: list[int], milestones: list[int]) -> dict[int, str]:
    """{iteration: label} of the records drawn by layer: the first, the last before and the first
    after each lr drop (a record at a milestone precedes its drop), the last."""
    if not iterations:
        return {}
    before: dict[int, list[int]] = {}
    after: dict[int, list[int]] = {}
    for m in milestones:
        if (pre := [i for i in iterations if i <= m]) and m <= iterations[-1]:
            before.setdefault(pre[-1], []).append(m)
        if post := [i for i in iterations if i > m]:
            after.setdefault(post[0], []).append(m)
    points = {}
    for i in sorted({iterations[0], *before, *after, iterations[-1]}):
        drops = lambda ms: f"the lr drop{'s' if len(ms) > 1 else ''} at {', '.join(map(str, ms))}"
        parts = (["first"] if i == iterations[0] else []) + \
            ([f"before {drops(before[i])}"] if i in before else []) + \
            ([f"after {drops(after[i])}"] if i in after else []) + \
            (["last"] if i == iterations[-1] else [])
        points[i] = f"it {i} ({'; '.join(parts)})"
    return points


def _gradient_label(group: Group, runs: list[Run]) -> str:
    """'plain-20', 'plain-20 (mean of 2 seeds)', 'plain-20 (running, it 300)'."""
    notes = [f"mean of {len(runs)} seeds"] if len(runs) > 1 else []
    notes += sorted({status_note(r) for r in runs if r.status != "done"})
    return group.name + (f" ({'; '.join(notes)})" if notes else "")


def _legend_row(fig: Figure, entries: int, ncols: int, body_height: float):
    """(head, body): a row above the panels for one legend of `entries` in `ncols` columns (with
    constrained layout a figure legend 'outside' the panels overlaps the suptitle)."""
    head = 0.25 + 0.2 * math.ceil(entries / ncols)
    fig.set_figheight(fig.get_figheight() + head)
    return fig.subfigures(2, 1, height_ratios=[head, body_height])


def gradient_layers_figure(groups: list[Group], key: str = "input_grad_norm") -> Figure | None:
    """Per (depth, variant) a row, per block kind a panel: each layer's gradient norm (`key`) in
    forward order at probe_points, log scale; None when no run has gradients.csv."""
    nets = [(g, runs, mean_gradients(runs, key)) for g in groups if (runs := gradient_runs(g))]
    if not nets:
        return None
    kinds = [k for k in block_kinds(groups) if any(g.block == k for g, _, _ in nets)]
    rows = list(dict.fromkeys((g.depth, g.variant) for g, _, _ in nets))
    points = [probe_points(list(records), _milestones(g)) for g, _, records in nets]
    labels = {tuple(p.values()) for p in points if p}
    shared = len(labels) == 1  # every net probed at the same points: one legend
    height = 0.9 + 2.7 * len(rows)
    fig = Figure(figsize=(4.8 * len(kinds), height), layout="constrained")
    head, body = _legend_row(fig, len(next(iter(labels))), 3, height) if shared else (None, fig)
    axes = body.subplots(len(rows), len(kinds), sharey=True, squeeze=False)
    for (g, runs, records), marks in zip(nets, points):
        ax = axes[rows.index((g.depth, g.variant)), kinds.index(g.block)]
        shades = colormaps["viridis"](np.linspace(0, 0.85, len(marks)))
        for shade, (it, label) in zip(shades, marks.items()):
            idx = np.arange(1, len(records[it]) + 1)
            ax.plot(idx, records[it], color=shade, lw=1.3, marker="o" if len(idx) <= 60 else None,
                    ms=2.5, label=label)
        ax.set_title(textwrap.fill(_gradient_label(g, runs), 60), fontsize="medium")
        if not shared and ax.lines:
            ax.legend(fontsize="x-small")
    for ax in axes.flat:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        if not ax.lines:
            ax.text(0.5, 0.5, "no gradients.csv", transform=ax.transAxes, ha="center",
                    va="center", color="gray")
    for ax in axes[-1]:
        ax.set_xlabel("layer (forward order; 1: first conv, last: fc)")
    for ax in axes[:, 0]:
        ax.set_ylabel("L2 norm")
    if head is not None:
        handles, labels = next(ax for ax in axes.flat if ax.lines).get_legend_handles_labels()
        head.legend(handles, labels, loc="center", ncols=3, fontsize="small", frameon=False)
    fig.suptitle(f"{groups[0].dataset}: {GRADIENT_WHAT[key]}, by layer at points of training")
    fig.supxlabel(GRADIENT_CAPTION, fontsize=8)
    return fig


def gradient_weights_figure(groups: list[Group]) -> Figure | None:
    """gradient_layers_figure of the weight gradients."""
    return gradient_layers_figure(groups, "weight_grad_norm")


def first_layer_figure(groups: list[Group]) -> Figure | None:
    """The first conv's input (the images) and weight gradient norms vs iterations, one line per
    net, log scale; None when no run has gradients.csv."""
    nets = [(g, runs) for g in groups if (runs := gradient_runs(g))]
    if not nets:
        return None
    colors, kinds = _colors(groups), block_kinds(groups)
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    longest = max(len(_gradient_label(g, runs)) for g, runs in nets)
    ncols = 4 if longest <= 28 else 2 if longest <= 64 else 1  # as wide as the figure at most
    head, body = _legend_row(fig, len(nets), ncols, 4.6)
    panels = body.subplots(1, 2, sharex=True)
    right = max(max(mean_gradients(runs, "input_grad_norm"), default=0) for _, runs in nets)
    scale = 1e4 if right >= PAPER_SCALE else 1  # as Figure 6: in 1e4 from PAPER_SCALE on
    # the lr drops the records reach (a short run of the paper's schedule reaches none)
    drops = sorted({m for g, _ in nets for m in _milestones(g) if m <= right})
    for ax, key, what in zip(panels, GRADIENT_WHAT, ("input (the images)", "weight")):
        for g, runs in nets:
            records = mean_gradients(runs, key)
            ax.plot(np.array(list(records), dtype=float) / scale, [v[0] for v in records.values()],
                    color=colors[(g.depth, g.variant)], ls=kind_style(g.block, kinds)[1], lw=1.5,
                    label=_gradient_label(g, runs))
        for m in drops:
            ax.axvline(m / scale, color="gray", ls=":", lw=1)
        ax.set(yscale="log", title=f"first conv: gradient wrt its {what}",
               xlabel="iter. (1e4)" if scale > 1 else "iterations", ylabel="L2 norm")
        ax.grid(alpha=0.3)
    head.legend(*panels[0].get_legend_handles_labels(), loc="center", ncols=ncols,
                fontsize="small", frameon=False)
    styles = ", ".join(f"{LINE_NAMES[kind_style(k, kinds)[1]]}: {kind_label(k)}"
                       for k in kinds if any(g.block == k for g, _ in nets))
    fig.suptitle(f"{groups[0].dataset}: the first layer's gradient norms vs iterations "
                 f"({styles}{'; dotted: lr drops' if drops else ''})")
    fig.supxlabel(GRADIENT_CAPTION, fontsize=8)
    return fig


# ------------------------------------------------------------------------------ files

# A builder may return None: nothing to draw from (no run has gradients.csv), so no file.
FIGURES = {"fig6_curves": curves_figure, "depth_vs_error": depth_figure,
           "fig7_responses": responses_figure, "gradients_by_layer": gradient_layers_figure,
           "weight_gradients_by_layer": gradient_weights_figure,
           "gradients_first_layer": first_layer_figure}


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """PNG (150 dpi) and PDF without timestamps or version stamps, each written atomically."""
    out = []
    for ext, meta in (("png", {"Software": None}),
                      ("pdf", {"CreationDate": None, "Producer": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, metadata=meta)
        path = stem.with_suffix(f".{ext}")
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    return out
