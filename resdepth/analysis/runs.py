"""The runs under a results root, read once and grouped (seeds averaged, protocols never): the model
that the results table, Table 6, the figures and the report share. Errors are fractions."""

from __future__ import annotations

import functools
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..models import net_name
from ..rundir import flatten, read_gradients, read_json, read_metrics
from .paper import PAPER_DATASETS

CURVE_KEYS = ("iteration", "train_error", "test_error")  # what Figure 6 reads of a metrics.csv row
INT, NUMBER = (int,), (int, float)
TYPE_NAMES = {INT: "an integer", NUMBER: "a number", (str,): "a string", (dict,): "an object",
              (list,): "a list"}
# The keys of result.json a table or figure reads, and their types; OPTIONAL ones may be missing
# or null.
REQUIRED = {"status": (str,), "dataset": (str,), "block": (str,), "depth": INT, "shortcut": (str,),
            "seed": INT, "config": (dict,)}
OPTIONAL = {"final_test_error": NUMBER, "final_train_error": NUMBER, "params": INT, "steps": INT,
            "max_steps": INT, "wall_time_s": NUMBER, "diverged_at": INT, "warmup_ended_at": INT,
            "warmup_ended_by": (str,), "versions": (dict,), "segments": (list,)}
CONFIG_SECTIONS = ("model", "data", "optim", "trainer")
NO_USABLE = ("no usable runs under {root}: every result.json was left out "
             "(see the warnings above)")


def warn(text: str) -> None:
    print(f"resdepth: warning: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Stats:
    """Mean, sample std (0.0 for one value), count and lowest: (nan, nan, 0, nan) for no values."""

    mean: float
    std: float
    n: int
    best: float

    @classmethod
    def of(cls, values: list[float]) -> "Stats":
        if not values:
            return cls(math.nan, math.nan, 0, math.nan)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values), min(values))

    def pct(self) -> tuple[float, float, int]:
        """(mean, std, n) with the errors in %."""
        return 100 * self.mean, 100 * self.std, self.n


@dataclass
class Run:
    """One run directory: result.json, metrics.csv rows, layer response stds (None when missing),
    gradients.csv rows (None for a run recorded before the gradient probe)."""

    dir: Path
    result: dict
    metrics: list[dict]
    responses: list[float] | None
    gradients: list[dict] | None = None

    @property
    def status(self) -> str:
        return self.result.get("status", "unknown")

    @property
    def seed(self):
        return self.result.get("seed")


@dataclass
class Group:
    """The seeds of one net under one protocol."""

    dataset: str
    block: str
    depth: int
    shortcut: str
    protocol: str  # hash of every setting but the model and the seed
    runs: list[Run] = field(default_factory=list)
    variant: str = ""  # tells apart groups of one net: "-B", " (40 it)"
    settings: str = ""  # the settings that differ within the dataset: "optim.lr=0.05"

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

    def stats(self, key: str) -> Stats:
        """Stats of result[key] (a fraction) over the done runs that have it."""
        return Stats.of([r.result[key] for r in self.done if r.result.get(key) is not None])


# ------------------------------------------------------------------------------ block kinds

def kind_label(block: str) -> str:
    """What a block kind's nets are called: 'plain', 'ResNet'."""
    return net_name(block, 0).rsplit("-", 1)[0]


def block_kinds(groups: list[Group] = ()) -> list[str]:
    """The registered block kinds in registration order, then any other kind the groups hold, so no
    run vanishes from a table or figure."""
    from ..models import BLOCKS

    registered = list(BLOCKS)
    return registered + sorted({g.block for g in groups} - set(registered))


# ------------------------------------------------------------------------------ reading

def unusable(result) -> str | None:
    """Why a result.json's content cannot be tabled or drawn, or None."""
    if not isinstance(result, dict):
        held = type(result).__name__ if result is not None else "null"
        return f"it holds {held}, not a run's record"
    for key, types in {**REQUIRED, **OPTIONAL}.items():
        value = result.get(key)
        if value is None and key in OPTIONAL:
            continue
        if value is None or isinstance(value, bool) or not isinstance(value, types):
            if key not in result:
                return f"{key} is missing"
            return f"{key} is {json.dumps(value)[:40]}, not {TYPE_NAMES[types]}"
    missing = [s for s in CONFIG_SECTIONS if not isinstance(result["config"].get(s), dict)]
    if missing:
        return f"its config has no {', '.join(missing)} section"
    if result["depth"] < 1:
        return f"depth is {result['depth']}"
    if not all(isinstance(s, dict) and "from" in s for s in result.get("segments") or []):
        return "segments is not a list of {from, device, precision, threads}"
    try:
        config_key(result)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return f"its config cannot be read ({type(e).__name__}: {e})"
    return None


def config_key(result: dict) -> tuple:
    """What makes a run the same run: its dataset, net, configuration (hashed) and seed."""
    from ..config import config_hash

    return (result["dataset"], result["block"], result["depth"], result["shortcut"], result["seed"],
            config_hash(result["config"]))


def _curve_rows(path: Path) -> list[dict]:
    """metrics.csv rows that hold the iteration and both errors."""
    return [row for row in read_metrics(path) if all(k in row for k in CURVE_KEYS)]


def _responses(path: Path, depth: int) -> list[float] | None:
    """responses.json's std per 3x3 layer (depth - 1 of them), else None (warned if it exists)."""
    if not path.exists():
        return None
    try:
        stds = read_json(path)["layer_std"]
        numbers = all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in stds)
        if len(stds) == depth - 1 and numbers:
            return [float(s) for s in stds]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    warn(f"{path} left out of Figure 7: it does not hold {depth - 1} layer stds")
    return None


def canonical(run: Run) -> bool:
    """The run directory sits where training puts it: <dataset>/<block>-<depth>/seed<k>-<hash>."""
    r, d = run.result, run.dir
    where = (d.parent.parent.name, d.parent.name) == (r["dataset"], f"{r['block']}-{r['depth']}")
    return where and d.name.startswith(f"seed{r['seed']}-")


def dedupe(runs: list[Run]) -> list[Run]:
    """Runs with one (configuration, seed, status) counted once: the canonical one, else the first
    by path; each copy is named in a warning."""
    kept: dict[tuple, Run] = {}
    for run in sorted(runs, key=lambda r: not canonical(r)):  # stable: path order within each
        key = (*config_key(run.result), run.status)
        if key in kept:
            warn(f"{run.dir / 'result.json'} left out: it repeats {kept[key].dir} (the same "
                 f"configuration, seed {run.seed} and status {run.status}), so it is counted once")
            continue
        kept[key] = run
    ids = {id(k) for k in kept.values()}
    return [r for r in runs if id(r) in ids]


def find_results(root: Path) -> list[tuple[Path, dict]]:
    """(run directory, result.json) of every readable result.json under root, sorted by path; an
    unreadable one is named in a warning."""
    out = []
    for p in sorted(Path(root).rglob("result.json")):
        try:
            out.append((p.parent, read_json(p)))
        except (OSError, ValueError) as e:
            warn(f"run left out: {e}")
    return out


def no_runs(root: Path) -> str | None:
    """Why ROOT holds no runs to table or plot, or None when it holds some."""
    if Path(root).is_dir() and any(Path(root).rglob("result.json")):
        return None
    why = "no such folder" if not Path(root).is_dir() else "no */result.json"
    return (f"no runs found under {root} ({why}); run `resdepth sweep` or `resdepth train` first, "
            "or name the results root")


def load_runs(root: Path) -> list[Run]:
    """Every usable run under root, once, sorted by path; the rest is left out with a warning."""
    runs = []
    for run_dir, result in find_results(root):
        why = unusable(result)
        if why:
            warn(f"{run_dir / 'result.json'} left out: {why}")
            continue
        runs.append(Run(run_dir, result, _curve_rows(run_dir / "metrics.csv"),
                        _responses(run_dir / "responses.json", result["depth"]),
                        read_gradients(run_dir / "gradients.csv") or None))
    return dedupe(runs)


# ------------------------------------------------------------------------------ grouping

def protocol_hash(config: dict) -> str:
    """8 hex digits naming every setting of a run except the model and the seed."""
    from ..config import config_hash

    return config_hash(config or {}, without=("seed", "model"))


def _setting(key: str, value) -> str:
    return f"{key}={json.dumps(value).replace(' ', '')}".replace('"', "")


def differing_settings(configs: list[dict],
                       shown: tuple[str, ...] = ("seed", "model.", "data.name")) -> list[str]:
    """For each config, `key=value ...` of the semantic settings that differ among them, leaving out
    the `shown` ones (a table or legend already names the net, the dataset, the seed)."""
    from ..config import semantic_config

    flat = [flatten(semantic_config(c or {})) for c in configs]
    keys = sorted({k for f in flat for k in f if not k.startswith(shown)})
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    return [" ".join(_setting(k, f[k]) for k in differ if k in f) for f in flat]


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by (dataset, block, depth, shortcut, protocol), sorted by dataset, iterations,
    protocol, shortcut, block kind and depth; variants and settings named where needed."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        r = run.result
        key = (r.get("dataset", "?"), r.get("block", "?"), r.get("depth", 0),
               r.get("shortcut", "A"), protocol_hash(r.get("config", {})))
        groups.setdefault(key, Group(*key)).runs.append(run)
    kinds = block_kinds(list(groups.values()))
    out = sorted(groups.values(), key=lambda g: (g.dataset, g.max_steps, g.protocol, g.shortcut,
                                                 kinds.index(g.block), g.depth))
    for dataset in {g.dataset for g in out}:
        mine = [g for g in out if g.dataset == dataset]
        steps = {g.protocol: g.max_steps for g in mine}
        unique = len(set(steps.values())) == len(steps)
        for g, differ in zip(mine, differing_settings([g.config for g in mine])):
            g.settings = differ
            g.variant = "-B" if g.shortcut == "B" else ""
            if len(steps) > 1:  # say which protocol: by iterations where they tell them apart
                g.variant += f" ({g.max_steps} it)" if unique else f" ({differ or g.protocol})"
    return out


def by_dataset(groups: list[Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(g.dataset, []).append(g)
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------ the paper

@functools.cache
def paper_protocol() -> dict:
    """The paper's schedule (conf/experiment/paper.yaml): max_steps, milestones, lr, batch_size."""
    from ..config import compose

    cfg, = compose(["experiment=paper"])
    return protocol_of(cfg)


def protocol_of(config: dict) -> dict:
    o, t = config.get("optim", {}), config.get("trainer", {})
    return {"max_steps": t.get("max_steps"), "milestones": o.get("milestones"), "lr": o.get("lr"),
            "batch_size": o.get("batch_size")}


def paper_reference(group: Group) -> bool:
    """The paper's numbers apply: CIFAR-10 (or its JPEG copy) trained on the paper's protocol."""
    return group.dataset in PAPER_DATASETS and protocol_of(group.config) == paper_protocol()


# ------------------------------------------------------------------------------ statuses

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


@dataclass(frozen=True)
class WarmupMarker:
    """Where a run's warm-up ended, as Figure 6 marks it and the report tells it."""

    iteration: int
    by: str  # "training error", "bound", or "" when not recorded
    # True: result.json records it. False: the first metrics.csv record at the lr after the warm-up,
    # the warm-up having ended at or before it (a run that has not finished)
    exact: bool


def warmup_marker(run: Run) -> WarmupMarker | None:
    """Where the run's warm-up ended, or None: no warm-up, or one not ended (or not to be told)."""
    r = run.result
    if r.get("warmup_ended_at"):
        return WarmupMarker(r["warmup_ended_at"], r.get("warmup_ended_by") or "", True)
    if r.get("warmup") is not True or r.get("finished"):  # no warm-up, or finished with no end
        return None
    optim = r["config"]["optim"]
    milestones = [m for m in optim.get("milestones") or [] if isinstance(m, (int, float))] \
        if isinstance(optim.get("milestones"), list) else []
    first = min(milestones, default=math.inf)  # from there the lr may equal the warm-up lr again
    after = [row["iteration"] for row in run.metrics
             if "lr" in row and row["lr"] != optim.get("warmup_lr") and row["iteration"] < first]
    if after:
        return WarmupMarker(after[0], "", False)
    if run.metrics and run.metrics[-1]["iteration"] >= first:  # at the warm-up lr up to the bound
        return WarmupMarker(int(first), "bound", False)
    return None


def warmup_note(group: Group, run: Run) -> str | None:
    """'ResNet-110 seed 0: ended at iteration 400 (training error below 80%)', or None."""
    end, r = warmup_marker(run), run.result
    name = f"{group.name} seed {run.seed}"
    if end is None:
        if r.get("warmup") is True and not r.get("finished"):
            return f"{name}: not ended by its last record (iteration {last_iteration(run)})"
        return None
    limit = r["config"]["optim"].get("warmup_until_error")
    number = isinstance(limit, (int, float))
    below = f"below {100 * limit:.0f}%" if number else "below its threshold"
    why = {"training error": f"training error {below}",
           "bound": f"its bound, the training error not yet {below}"}
    if end.exact:
        return f"{name}: ended at iteration {end.iteration}" + (
            f" ({why[end.by]})" if end.by in why else "")
    if end.by == "bound":
        return (f"{name}: ended at its bound, the first milestone (iteration {end.iteration}): "
                "metrics.csv shows the warm-up lr up to there (result.json records the end only "
                "when a run finishes)")
    return (f"{name}: ended by iteration {end.iteration}, the first record at the lr after the "
            "warm-up (result.json records the end only when a run finishes)")


def warmup_notes(groups: list[Group]) -> list[str]:
    """warmup_note of every run that warms up."""
    return [n for g in groups for r in g.runs if (n := warmup_note(g, r))]


def excluded_runs(groups: list[Group]) -> list[str]:
    """'plain-20 seed 1 (diverged at 1200)' for every run that is not done (so not in the means)."""
    return [f"{g.name} seed {r.seed} ({status_note(r)})" for g in groups for r in g.runs
            if r.status != "done"]


def missing_responses(groups: list[Group]) -> list[str]:
    """Nets left out of Figure 7 for want of a responses.json, with why."""
    out = []
    for g in groups:
        if not any(r.responses for r in g.runs):
            why = ", ".join(status_note(r) or "done, no responses.json" for r in g.runs)
            out.append(f"{g.name} ({why})")
    return out


# ------------------------------------------------------------------------------ gradient norms

def gradient_records(run: Run, key: str) -> dict[int, list[float]]:
    """{iteration: [`key` of layer 0, 1, ...]} of the run's gradients.csv, complete records only (a
    record cut short by a crash is left out); a repeated row counts with its last value."""
    by_iteration: dict[int, dict[int, float]] = {}
    for row in run.gradients or []:
        by_iteration.setdefault(row["iteration"], {})[row["layer"]] = row[key]
    n = max(map(len, by_iteration.values()), default=0)
    return {it: [layers[i] for i in range(n)] for it, layers in sorted(by_iteration.items())
            if sorted(layers) == list(range(n))}


def gradient_runs(group: Group) -> list[Run]:
    """What the gradient figures show of a group: its done runs with gradients.csv, else the
    others with one (a sweep under way)."""
    runs = [r for r in group.runs if r.gradients]
    return [r for r in runs if r.status == "done"] or runs


def mean_gradients(runs: list[Run], key: str) -> dict[int, list[float]]:
    """Each layer's `key`, the mean over runs, at the iterations all of them recorded."""
    records = [gradient_records(r, key) for r in runs]
    common = set.intersection(*map(set, records)) if records else set()
    return {it: [statistics.fmean(v) for v in zip(*(rec[it] for rec in records))]
            for it in sorted(common)}


def missing_gradients(groups: list[Group]) -> list[str]:
    """Nets left out of the gradient figures for want of a gradients.csv, with why."""
    return [f"{g.name} ({', '.join(status_note(r) or 'done' for r in g.runs)})" for g in groups
            if not gradient_runs(g)]
