"""Table 6 (a column pair per block kind, the paper's where it applies), the degradation verdict and
report.md of a results root; write_outputs writes them beside the figures. Errors in %."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from . import plots
from ..rundir import atomic_write_text, read_json, read_text
from .paper import PAPER_PARAMS, PAPER_TEST_CELL, PAPER_TEST_ERROR, REFERENCE_KIND
from .runs import (Group, Run, block_kinds, by_dataset, excluded_runs, gradient_runs, group_runs,
                   kind_label, load_runs, mean_gradients, missing_gradients, missing_responses,
                   paper_protocol, paper_reference, status_note, warn, warmup_notes)
from ..tables import csv_text, error_cell, fmt_time, markdown, number, where

NA = "n/a (different protocol)"
FIG7_CAPTION = ("Each point is the std of one 3x3 layer's output (after BN, before the addition "
                "and ReLU), pooled over all its elements (images, channels and positions) on the "
                "test set; a net with several seeds shows the mean of that std over them.")


def table_kinds(groups: list[Group]) -> list[str]:
    """Table 6's block kinds: the paper's (residual) first, then the rest in registration order."""
    return sorted(block_kinds(groups), key=lambda kind: kind != REFERENCE_KIND)


def prefix(kind: str) -> str:
    """A kind's name in Table 6's row keys and CSV columns: 'resnet', 'plain'."""
    return re.sub(r"\W+", "_", kind_label(kind).lower())


def _fill(row: dict, found: dict[str, Group]) -> None:
    """Fill in each kind's final errors (% mean, std, n), params, the paper's and the status."""
    for kind in row["kinds"]:
        g, p = found.get(kind), prefix(kind)
        for split in ("test", "train"):
            stats = g.stats(f"final_{split}_error").pct() if g else (math.nan, math.nan, 0)
            row[f"{p}_{split}"] = stats
        # the best of the seeds: what the paper gives for 110 beside the mean
        row[f"{p}_test_best"] = 100 * g.stats("final_test_error").best if g else math.nan
    groups = [found[k] for k in row["kinds"] if k in found]
    ref = prefix(REFERENCE_KIND)
    paper = PAPER_TEST_ERROR.get(row["depth"]) if row["reference"] else None
    row.update(params=next((r.result.get("params") for g in groups for r in g.runs), None),
               paper_params=PAPER_PARAMS.get(row["depth"], "-") if row["reference"] else NA,
               paper_test=paper,
               diff=math.nan if paper is None else row.get(f"{ref}_test", (math.nan,))[0] - paper)
    notes = [f"{kind_label(g.block)} seed {r.seed}: {status_note(r)}" for g in groups
             for r in g.runs if r.status != "done"]
    notes += [f"no {kind_label(k)} run" for k in row["kinds"] if k not in found]
    row["status"] = "; ".join(notes) or "done"


def table6_rows(groups: list[Group]) -> list[dict]:
    """Table 6's rows, one per (protocol, shortcut, depth): each kind's final errors (%), params and
    the paper's."""
    kinds = table_kinds(groups)
    keys: dict[tuple, dict] = {}
    found: dict[tuple, dict[str, Group]] = {}
    for g in groups:
        key = (g.protocol, g.shortcut, g.depth)
        row = keys.setdefault(key, {"dataset": g.dataset, "depth": g.depth, "variant": g.variant,
                                    "reference": False, "kinds": kinds, "max_steps": g.max_steps})
        found.setdefault(key, {})[g.block] = g
        row["reference"] = row["reference"] or paper_reference(g)
    order = list(dict.fromkeys(g.protocol for g in groups))  # groups come sorted by iterations
    rows = []
    for key, row in sorted(keys.items(), key=lambda kv: (order.index(kv[0][0]), *kv[0][1:])):
        _fill(row, found[key])
        rows.append(row)
    return rows


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


def _kinds(rows: list[dict]) -> list[str]:
    return rows[0]["kinds"] if rows else table_kinds([])


def table_markdown(rows: list[dict]) -> str:
    """Table 6 as Markdown (errors in %); the paper's columns only where they apply to some row."""
    paper = any(r["reference"] for r in rows)
    first, *others = _kinds(rows)
    kinds, name = (first, *others), kind_label
    head = ["depth", f"{name(first)} test",
            *(["paper ResNet test", "ours − paper"] if paper else []),
            *(f"{name(k)} test" for k in others), *(f"{name(k)} train" for k in kinds),
            "params (ours)", *(["params (paper)"] if paper else []), "status"]
    body = []
    for r in rows:
        test = lambda k: error_cell(*r[f"{prefix(k)}_test"], counts=True,
                                    best=r[f"{prefix(k)}_test_best"])
        train = lambda k: error_cell(*r[f"{prefix(k)}_train"], counts=True)
        params = "-" if r["params"] is None else f"{r['params'] / 1e6:.2f}M ({r['params']:,})"
        body.append([f"{r['depth']}{r['variant']}", test(first),
                     *([_paper(r), _diff(r)] if paper else []), *map(test, others),
                     *map(train, kinds),
                     params, *([r["paper_params"]] if paper else []), r["status"]])
    return markdown(head, body)


def csv_columns(kinds: list[str]) -> list[str]:
    """Table 6's CSV columns, errors in % (named _pct)."""
    test = ("seeds", "test_error_pct_mean", "test_error_pct_std", "test_error_pct_best")
    cols = ["dataset", "depth", "variant"]
    cols += [f"{prefix(k)}_{c}" for k in kinds for c in test]
    cols += ["paper_reference", "paper_resnet_test_error_pct", "ours_minus_paper_pct"]
    train = ("train_error_pct_mean", "train_error_pct_std")
    cols += [f"{prefix(k)}_{c}" for k in kinds for c in train]
    return cols + ["params", "paper_params", "status"]


def _paper_params(row: dict) -> int | None:
    """The paper's parameter count ('0.27M' -> 270000), None where it does not apply."""
    text = PAPER_PARAMS.get(row["depth"]) if row["reference"] else None
    return round(float(text[:-1]) * 1e6) if text else None


def table_csv(rows: list[dict]) -> str:
    """Table 6 as CSV: errors in %, 4 decimals; empty where there is no number (the std of one seed;
    the paper's columns where paper_reference is false)."""
    kinds = _kinds(rows)
    body = []
    for r in rows:
        cells = [r["dataset"], r["depth"], r["variant"].strip()]
        for k in kinds:
            (m, s, n), p = r[f"{prefix(k)}_test"], prefix(k)
            cells += [n, number(m), number(s) if n > 1 else "", number(r[f"{p}_test_best"])]
        cells += ["true" if r["reference"] else "false", number(r["paper_test"]), number(r["diff"])]
        for k in kinds:
            m, s, n = r[f"{prefix(k)}_train"]
            cells += [number(m), number(s) if n > 1 else ""]
        body.append(cells + [r["params"], _paper_params(r), r["status"]])
    return csv_text(csv_columns(kinds), body)


# ------------------------------------------------------------------------------ the verdict

SPREAD_TEST = "a difference counts only where it exceeds the sum of the two sample stds"
WITHIN = "within the seed spread"


def _above(a: tuple, b: tuple, or_equal: bool = False) -> str:
    """Whether error a (mean %, std %, n) is above b: 'yes', 'no', or WITHIN where seeds on both
    sides say the difference is within the sum of their sample stds."""
    diff = a[0] - b[0]
    if a[2] < 2 or b[2] < 2:  # no spread to set the difference against: the means decide
        return "yes" if diff > 0 or (or_equal and diff == 0) else "no"
    spread = a[1] + b[1]
    return "yes" if diff > spread else "no" if -diff > spread else WITHIN


def _all(outcomes: list[str]) -> str:
    return "yes" if all(o == "yes" for o in outcomes) else "no" if "no" in outcomes else WITHIN


def _err(name: str, e: tuple) -> str:
    return f"{name} {e[0]:.2f}%" if e[2] < 2 else f"{name} {e[0]:.2f} ± {e[1]:.2f}%"


def _comparisons(rows: list[dict]) -> tuple[list[dict], dict, dict]:
    """The rows of the variant judged (the most rows; the default one on a tie) and the final
    training errors (% mean, std, n) of its plain and residual nets by depth."""
    variants = [r["variant"] for r in rows]
    variant = max(dict.fromkeys(variants), key=lambda v: (variants.count(v), v == ""))
    rows = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["depth"])
    plain = {r["depth"]: r["plain_train"] for r in rows if r["plain_train"][2]}
    res = {r["depth"]: r["resnet_train"] for r in rows if r["resnet_train"][2]}
    return rows, plain, res


def verdict_basis(rows: list[dict], nets: list[tuple], what: str = "final training error",
                  spread: bool = True) -> tuple[str, list[str]]:
    """What a verdict rests on ('final training error, 1 seed per net, ...'; with `spread`, the
    seed-spread rule) and why it is only indicative ([] when it is not)."""
    paper = paper_protocol()["max_steps"]
    seeds = sorted({e[2] for e in nets})
    steps = sorted({r.get("max_steps") for r in rows if r.get("max_steps")})
    dataset = ", ".join(sorted({r.get("dataset") or "unknown dataset" for r in rows}))
    count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    if not steps:
        length = "iterations not recorded"
    elif steps[0] >= paper:
        length = f"{steps[-1]} iterations (the paper's schedule)"
    else:
        length = f"{'/'.join(map(str, steps))} of the paper's {paper} iterations"
    why = []
    if seeds[0] < 2:
        why.append("one seed per net gives no seed spread to set a difference against"
                   if seeds[-1] < 2 else
                   "nets with one seed have no spread, so their differences rest on the means "
                   "alone")
    if not steps or steps[0] < paper:
        why.append("the schedule is shorter than the paper's" if steps
                   else "the schedule's length is unknown")
    plural = "s" if seeds[-1] > 1 else ""
    basis = f"{what}, {count} seed{plural} per net, {length}, {dataset}"
    return basis + ("; " + SPREAD_TEST if spread and seeds[-1] > 1 else ""), why


def _residual_parts(plain: dict, res: dict, v: str) -> tuple[list[str], str | None, str | None]:
    """The residual comparisons: deepest vs shallowest ResNet, ResNet below plain at each depth."""
    parts, res_flat, res_below = [], None, None
    if len(res) >= 2:
        r = sorted(res)
        res_flat = _above(res[r[0]], res[r[-1]], or_equal=True)
        deep, shallow = _err(f"ResNet-{r[-1]}{v}", res[r[-1]]), _err(f"ResNet-{r[0]}{v}", res[r[0]])
        parts.append(f"{deep} <= {shallow}: {res_flat}")
    both = sorted(set(plain) & set(res))
    if both:
        outcomes = {x: _above(plain[x], res[x]) for x in both}
        below = [x for x in both if outcomes[x] == "yes"]
        res_below = _all(list(outcomes.values()))
        parts.append(f"ResNet below plain at {len(below)} of {len(both)} depths "
                     f"({', '.join(map(str, below)) or 'none'}): {res_below}")
    return parts, res_flat, res_below


TAILS = {  # what each outcome lets the sentence say
    "plain": {"yes": "deeper plain nets reach higher training error than shallower ones",
              "no": "deeper plain nets do not reach higher training error than shallower ones",
              WITHIN: "deeper plain nets are not clearly above shallower ones "
                      "(within the seed spread)"},
    "below": {"yes": "residual nets are below plain at every depth",
              "no": "residual nets are not below plain at every depth",
              WITHIN: "residual nets are not below plain beyond the seed spread at every depth"},
    "flat": {"yes": "deeper residual nets also reach lower training error",
             "no": "deeper residual nets do not (yet) reach lower training error than shallower "
                   "ones",
             WITHIN: "deeper residual nets are not clearly lower than shallower ones "
                     "(within the seed spread)"},
}


def _verdict(plain_worse: str, res_flat: str | None, res_below: str | None) -> str:
    """reproduced | not reproduced | not resolved (a deciding difference within the seed spread)."""
    deciding = [plain_worse, res_below if res_below is not None else res_flat]
    if all(o == "yes" for o in deciding):
        return "reproduced"
    return "not reproduced" if "no" in deciding else "not resolved"


def degradation_sentence(rows: list[dict]) -> str:
    """Whether the final training errors reproduce the degradation, on what basis and by which
    comparisons: 'indicative only' on one seed or a short schedule; synthetic data judges none."""
    rows, plain, res = _comparisons(rows)
    v = rows[0]["variant"] if rows else ""
    if len(plain) < 2:
        return ("Degradation not judged: it needs finished plain runs at two or more depths "
                f"(finished plain depths: {', '.join(map(str, plain)) or 'none'}).")
    d = sorted(plain)
    plain_worse = _above(plain[d[-1]], plain[d[0]])
    rising = _all([_above(plain[b], plain[a]) for a, b in zip(d, d[1:])])
    deep, shallow = _err(f"plain-{d[-1]}{v}", plain[d[-1]]), _err(f"plain-{d[0]}{v}", plain[d[0]])
    parts = [f"{deep} > {shallow}: {plain_worse}",
             f"rising at every step of depth {'/'.join(map(str, d))}: {rising}"]
    more, res_flat, res_below = _residual_parts(plain, res, v)
    basis, why = verdict_basis(rows, [*plain.values(), *res.values()])
    comparisons = f"({'; '.join(parts + more)})"
    if any(r.get("dataset") == "synthetic" for r in rows):
        return (f"Degradation not judged: synthetic data, so this is a software check that says "
                f"nothing about the paper (basis: {basis}). Its comparisons: "
                f"{'; '.join(parts + more)}.")
    if res_flat is None and res_below is None:
        verdict = "not judged for residual nets"
        tails = ["residual nets: no finished runs to compare"]
    else:
        verdict = _verdict(plain_worse, res_flat, res_below)
        tails = [TAILS["below"][res_below]] if res_below is not None else []
        tails += [TAILS["flat"][res_flat]] if res_flat is not None else []
    qualifier = f", indicative only ({' and '.join(why)})" if why else ""
    return (f"Degradation {verdict}{qualifier}. Basis: {basis}. "
            f"Found: {TAILS['plain'][plain_worse]}; {'; '.join(tails)} {comparisons}.")


# ------------------------------------------------------------------------------ gradient norms

ORDER = 10.0  # "within an order of magnitude": plain / ResNet between 1/ORDER and ORDER
GRADIENT_BASIS = ("the L2 norm of the gradient of the mean cross-entropy wrt the images (the first "
                  "layer's input) on the fixed probe batch, fp32, BN in training mode, at the "
                  "last record both nets of a depth have")
GRADIENTS_NOT_DRAWN = "no run has gradients.csv (runs recorded before the gradient probe)"


def _done_probed(group: Group) -> list[Run]:
    return [r for r in group.done if r.gradients]


def _first_layer_pairs(groups: list[Group]) -> list[tuple[Group, Group, int, float, float]]:
    """(plain, ResNet, iteration, plain's, ResNet's first-layer input-gradient norm) per depth and
    variant, the mean over their done runs, at the last iteration both recorded."""
    nets = {(g.depth, g.variant, g.block): g for g in groups if _done_probed(g)}
    pairs = []
    for (depth, variant, block), plain in nets.items():
        res = nets.get((depth, variant, REFERENCE_KIND))
        if block != "plain" or res is None:
            continue
        a, b = (mean_gradients(_done_probed(g), "input_grad_norm") for g in (plain, res))
        common = sorted(set(a) & set(b))
        if common:
            pairs.append((plain, res, common[-1], a[common[-1]][0], b[common[-1]][0]))
    return sorted(pairs, key=lambda p: (p[0].variant, p[0].depth))


def gradient_sentence(groups: list[Group]) -> str:
    """Whether the plain nets' backward signal at the first layer is within an order of magnitude
    of the residual nets' at each depth (the paper's "healthy norms"), on what basis."""
    if not any(gradient_runs(g) for g in groups):
        return f"Gradient norms not drawn: {GRADIENTS_NOT_DRAWN}."
    pairs = _first_layer_pairs(groups)
    if not pairs:
        return ("Gradient norms not judged: it needs a finished plain and residual net of one "
                "depth, both with gradients.csv.")
    parts = [f"{plain.depth}{plain.variant}: plain {p:.3g} vs ResNet {r:.3g} at it {it}"
             + (f" (ratio {p / r:.2g})" if r > 0 else "") for plain, _, it, p, r in pairs]
    outside = [f"{plain.depth}{plain.variant}" for plain, _, _, p, r in pairs
               if not (r > 0 and 1 / ORDER <= p / r <= ORDER)]
    compared = [g for pair in pairs for g in pair[:2]]
    basis, why = verdict_basis([{"max_steps": g.max_steps, "dataset": g.dataset} for g in compared],
                               [(0.0, 0.0, len(_done_probed(g))) for g in compared],
                               what=GRADIENT_BASIS, spread=False)
    if any(g.dataset == "synthetic" for g, *_ in pairs):
        return (f"Gradient norms not judged: synthetic data, so this is a software check that says "
                f"nothing about the paper (basis: {basis}). Its comparisons: {'; '.join(parts)}.")
    found = ("within an order of magnitude of the residual nets' at every depth (the paper: "
             "\"healthy norms\")" if not outside else
             f"not within an order of magnitude of the residual nets' at depth "
             f"{', '.join(outside)} (against the paper's \"healthy norms\")")
    qualifier = f", indicative only ({' and '.join(why)})" if why else ""
    return (f"Backward signal at the first layer{qualifier}: the plain nets' is {found}. "
            f"Basis: {basis}. Found: {'; '.join(parts)}.")


# ------------------------------------------------------------------------------ report

def sweep_commands(root: Path) -> list[str]:
    """Every sweep command run into ROOT, first use first (sweeps.jsonl); else sweep_command()'s."""
    commands = []
    try:
        for line in read_text(Path(root) / "sweeps.jsonl").splitlines():
            try:
                commands.append(json.loads(line)["command"])
            except (ValueError, KeyError, TypeError):  # a line torn by a crash: the others count
                continue
    except (OSError, ValueError):  # missing, or not a regular file within its size limit
        pass
    return list(dict.fromkeys(commands)) or [sweep_command(root)]


def sweep_command(root: Path) -> str:
    """The latest command that wrote ROOT (sweep.json, else Hydra's multirun.yaml), or 'unknown'."""
    root = Path(root)
    try:
        return read_json(root / "sweep.json")["command"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        import yaml

        task = yaml.safe_load(read_text(root / "multirun.yaml"))["hydra"]["overrides"]["task"]
        return " ".join(["resdepth sweep", *task]).strip()
    except Exception:  # missing, damaged (a YAMLError is no ValueError) or not Hydra's
        return "unknown"


def _protocols(groups: list[Group]) -> list[str]:
    out = []
    for g in groups:
        c = g.config
        o, t, d = c.get("optim", {}), c.get("trainer", {}), c.get("data", {})
        paper = "yes" if paper_reference(g) else "no"
        text = (f"{t.get('max_steps')} iterations of {o.get('batch_size')} images, "
                f"lr {o.get('lr')} x{o.get('gamma')} at {o.get('milestones')}, "
                f"weight decay {o.get('weight_decay')}, validation images {d.get('val_size')}; "
                f"paper protocol: {paper}")
        if text not in out:
            out.append(text)
    return out


def _parts(r: Run) -> list[dict]:
    """Where a run's iterations were trained: one part unless it was resumed elsewhere."""
    return r.result.get("segments") or [r.result]


def _machines(groups: list[Group]) -> list[str]:
    """The report's hardware, resumed-elsewhere, software and compute lines."""
    runs = [r for g in groups for r in g.runs]
    versions = lambda r: r.result.get("versions") or {}
    hardware = sorted({f"{where(p)} (host {versions(r).get('host')})"
                       for r in runs for p in _parts(r)})
    mixed = [f"{g.name} seed {r.seed} ("
             + "; ".join(f"from it {p['from']}: {where(p)}" for p in _parts(r)) + ")"
             for g in groups for r in g.runs if len(_parts(r)) > 1]
    # torch's CUDA build is named only where a run trained on a GPU (it means nothing on a CPU)
    gpu = lambda r: r.result.get("accelerator") == "gpu"
    software = sorted({", ".join(f"{k} {v}" for k, v in sorted(versions(r).items())
                                 if k not in ("host", "platform") and (k != "cuda" or gpu(r)))
                       for r in runs})
    platforms = sorted({str(versions(r).get("platform")) for r in runs})
    total = sum(r.result.get("wall_time_s") or 0 for r in runs)
    return [f"- hardware: {'; '.join(hardware)}",
            *([f"- resumed with another device, precision or CPU thread count: "
               f"{'; '.join(mixed)}"] if mixed else []),
            f"- software: {'; '.join(software)}; platform {'; '.join(platforms)}",
            f"- compute: {fmt_time(total)} ({total:.0f} s, the sum of wall_time_s over "
            f"{len(runs)} runs)"]


def _sweep_lines(root: Path) -> list[str]:
    commands = sweep_commands(root)
    if len(commands) == 1:
        return [f"- sweep command: `{commands[0]}`"]
    return [f"- sweep command {i} of {len(commands)}: `{c}`" for i, c in enumerate(commands, 1)]


def report_markdown(root: Path, groups: list[Group], table_md: str, sentence: str) -> str:
    """report.md for one dataset (errors in %); it lives beside the figures it embeds."""
    runs = [r for g in groups for r in g.runs]
    dataset = groups[0].dataset
    statuses = [r.status for r in runs]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    note = ""
    if dataset == "cifar10_jpeg":
        note = (" (the JPEG copy of CIFAR-10: not bit-identical, expect somewhat higher errors "
                "than the paper's, which are on the original images)")
    lines = [f"# resdepth: {dataset}", "",
             f"Runs under `{root}`, drawn by `resdepth plot {root}`. Errors in %; mean ± sample "
             "std over the seeds that finished (status done).", "",
             *_sweep_lines(root),
             f"- dataset: {dataset}{note}",
             *[f"- protocol: {p}" for p in _protocols(groups)],
             *_machines(groups),
             f"- runs by status: {counts}",
             *[f"- warm-up: {n}" for n in warmup_notes(groups)], ""]
    left_out = excluded_runs(groups)
    if left_out:
        lines += ["Not finished (drawn up to where they are, not in the means): "
                  + "; ".join(left_out) + ".", ""]
    lines += ["## Figure 6: error vs iterations", "", "![Figure 6](fig6_curves.png)", "",
              "## Table 6", "", table_md, sentence, "",
              "## Final error vs depth", "", "![error vs depth](depth_vs_error.png)", "",
              "## Figure 7: std of layer responses", "", "![Figure 7](fig7_responses.png)", "",
              FIG7_CAPTION, ""]
    missing = missing_responses(groups)
    if missing:
        lines += ["Left out of Figure 7 (no responses.json): " + "; ".join(missing) + ".", ""]
    return "\n".join(lines + _gradient_lines(groups))


def _gradient_lines(groups: list[Group]) -> list[str]:
    """report.md's section on the gradient norms: the figures, their reading, what is left out."""
    lines = ["## Gradient norms: the backward side of Figure 7", ""]
    if not any(gradient_runs(g) for g in groups):
        return lines + [gradient_sentence(groups), ""]
    lines += ["![gradients by layer](gradients_by_layer.png)", "",
              "![weight gradients by layer](weight_gradients_by_layer.png)", "",
              "![first layer's gradients](gradients_first_layer.png)", "",
              plots.GRADIENT_CAPTION.replace("\n", " ") + ".", "", gradient_sentence(groups), ""]
    missing = missing_gradients(groups)
    if missing:
        lines += ["Left out of the gradient figures (no gradients.csv): " + "; ".join(missing)
                  + ".", ""]
    return lines


def table_note(groups: list[Group]) -> str:
    p = paper_protocol()
    if any(paper_reference(g) for g in groups):
        jpeg = (" Ours are on the JPEG copy of CIFAR-10: expect somewhat higher errors."
                if groups[0].dataset == "cifar10_jpeg" else "")
        steps = f"{p['max_steps'] // 1000}k" if p["max_steps"] % 1000 == 0 else f"{p['max_steps']}"
        return (f"Paper: Table 6 of He et al. 2016 (ResNet, CIFAR-10 test error, {steps} "
                f"iterations).{jpeg}")
    return (f"No paper reference: it applies to cifar10 / cifar10_jpeg runs on the paper's "
            f"protocol ({p['max_steps']} iterations, lr {p['lr']}, batch {p['batch_size']}, "
            f"milestones {', '.join(map(str, p['milestones']))}) only.")


def write_outputs(root: Path) -> list[Path]:
    """The figures, tables and report of ROOT into ROOT/figures (a folder per dataset if many)."""
    root = Path(root)
    datasets = by_dataset(group_runs(load_runs(root)))
    written, undrawn = [], []
    for dataset, groups in datasets.items():
        out = root / "figures" / (dataset if len(datasets) > 1 else "")
        out.mkdir(parents=True, exist_ok=True)
        for name, build in plots.FIGURES.items():
            fig = build(groups)
            if fig is not None:  # None: nothing to draw it from (no run has gradients.csv)
                written += plots.save_figure(fig, out / name)
        if not any(gradient_runs(g) for g in groups):
            undrawn.append(dataset)
        rows = table6_rows(groups)
        table_md, sentence = table_markdown(rows), degradation_sentence(rows)
        notes = warmup_notes(groups)
        warm = "\nWarm-up:\n" + "".join(f"- {n}\n" for n in notes) if notes else ""
        note = table_note(groups)
        texts = {"table6.md": f"# Table 6: {dataset}\n\nErrors in %, mean ± sample std over "
                              f"finished seeds (n; best: the lowest test error among them). "
                              f"{note}\n\n{table_md}\n{sentence}\n{warm}",
                 "table6.csv": table_csv(rows),
                 "report.md": report_markdown(root, groups, f"{note}\n\n{table_md}", sentence)}
        for name, text in texts.items():
            atomic_write_text(out / name, text)
            written.append(out / name)
    if undrawn:
        which = f" ({', '.join(undrawn)})" if len(datasets) > 1 else ""
        warn(f"gradient figures not drawn{which}: {GRADIENTS_NOT_DRAWN}")
    return written


def tables_text(root: Path) -> str:
    """Table 6 and its verdict for each dataset under ROOT, as text (what `resdepth plot` prints
    when it cannot save its files)."""
    parts = []
    for dataset, groups in by_dataset(group_runs(load_runs(Path(root)))).items():
        rows = table6_rows(groups)
        sentence = degradation_sentence(rows)
        parts.append(f"Table 6: {dataset}\n\n{table_markdown(rows)}\n{sentence}\n")
    return "\n".join(parts)
