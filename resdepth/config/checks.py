"""Checks of a composed config and of shell overrides, beyond what the schema can say."""

from __future__ import annotations

import math
import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import get_type_hints

from .identity import warms_up
from .schema import AUTO_BOOL, Config, choice


MOST_STREAMS = 16  # trainer.streams: packs side by side in one process
AUTO_PACK = 8  # trainer.pack=auto on a CUDA GPU: at most this many runs in one wide net


def pack_size(trainer: dict, accelerator: str = "cpu") -> int:
    """The most runs trainer.pack lets a sweep train as one net on `accelerator`; ValueError."""
    value = str(trainer.get("pack", "auto")).lower()
    if value == "auto":  # measured: a pack is slower on a CPU (docs/sweeps.md)
        return AUTO_PACK if accelerator == "gpu" else 1
    if value in ("off", "false", "1"):
        return 1
    if value.isdigit() and 1 <= int(value) <= 64:
        return int(value)
    raise ValueError(f"trainer.pack={trainer.get('pack')!r} is not one of auto, off or a number "
                     f"of runs from 1 to 64")


def validate(cfg: dict) -> None:
    """A one-line ValueError for what Hydra's schema cannot check: ranges, choices, the depth."""
    from ..data import check_kind  # data loads Lightning, models torch: only when a config is
    from ..models import check_bn_batch, check_depth  # checked (`resdepth --version` needs neither)

    _check_keys(cfg, Config)
    _check_paths(cfg)
    check_depth(cfg["model"]["depth"])
    check_bn_batch(cfg["optim"]["bn_batch"], cfg["optim"]["batch_size"])
    warms_up(cfg["optim"], cfg["model"]["depth"])
    choice("trainer.cuda_graph", cfg["trainer"]["cuda_graph"], AUTO_BOOL)
    pack_size(cfg["trainer"])
    if not 0 <= cfg["seed"] < 2**32:  # what numpy and Lightning accept; their error names no key
        raise ValueError(f"seed={cfg['seed']} must be in [0, {2**32 - 1}]")
    for key, value, ok, allowed in _ranges(cfg):
        if not ok:  # `not ok` also catches nan
            raise ValueError(f"{key}={value} must be {allowed}")
    m = cfg["optim"]["milestones"]
    if any(s < 0 for s in m) or any(a >= b for a, b in zip(m, m[1:])):
        raise ValueError(f"optim.milestones={m} must be increasing iterations >= 0")
    d = cfg["data"]
    check_kind(d["kind"])
    if d["kind"] == "synthetic":  # real datasets take their sizes from the files
        for key, least in (("train_size", 2), ("test_size", 1), ("num_classes", 2)):
            if d[key] < least:
                raise ValueError(f"data.{key}={d[key]} must be >= {least} for data=synthetic")


# Top-level nodes holding another library's arguments (a Lightning logger's): it checks them.
FREE_FORM = ("logger",)


def _check_keys(node: dict, schema: type, prefix: str = "") -> None:
    """ValueError for a key the schema lacks: `+model.width=32` would change only the hash."""
    known = get_type_hints(schema)
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if not prefix and key in FREE_FORM:
            continue
        if key not in known:
            where = f"{prefix[:-1]} has" if prefix else "the config has"
            raise ValueError(f"unknown setting {dotted!r} (added with +{dotted}=...); {where} "
                             f"{', '.join(f.name for f in fields(schema))}")
        if isinstance(value, dict) and isinstance(known[key], type) and is_dataclass(known[key]):
            _check_keys(value, known[key], f"{dotted}.")


PATH_KEYS = ("results_root", "run_dir", "data.root", "data.path", "data.cache_dir")
_ENV_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")  # $HOME, not Hydra's ${...} interpolation
_HYDRA_SAFE = re.compile(r"[\w/.:+@%=-]*")  # characters Hydra's grammar reads unquoted


def expand_paths(overrides: list[str]) -> list[str]:
    """The shell's words with `~` and `$VAR` expanded in the values of PATH_KEYS, as a shell does
    in an assignment: bash leaves `data.root=~/datasets` alone in an argument, Hydra's grammar
    cannot read an unquoted `~`, and a quoted `$HOME` would name a folder called `$HOME`."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and key.lstrip("+") in PATH_KEYS and (value.startswith("~") or "$" in value):
            value = _ENV_VAR.sub(lambda m: os.environ.get(m[1], m[0]), os.path.expanduser(value))
            if not _HYDRA_SAFE.fullmatch(value) and "${" not in value:
                value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        out.append(key + eq + value)
    return out


def _check_paths(cfg: dict) -> None:
    """ValueError unless results_root is a folder and data.name one folder name under it."""
    for key in ("results_root", "run_dir"):  # data paths expand ~ where they are read
        value = str(cfg[key])
        if value.startswith("~") or _ENV_VAR.search(value):
            raise ValueError(f"{key}={value!r}: ~ and $VARIABLES are expanded on the shell "
                             f"({key}=~/runs works there), not in a preset or a quoted value; "
                             f"write the full path")
    if not str(cfg["results_root"]).strip():
        raise ValueError("results_root='' is empty: "
                         "name the folder that holds the results (default: runs)")
    if Path(str(cfg["results_root"])).expanduser().is_file():
        raise ValueError(f"results_root={cfg['results_root']} is a file, not a folder: "
                         f"name a folder for the results")
    name = str(cfg["data"]["name"])
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"data.name={name!r} must be one folder name "
                         f"(it names the dataset's folder under results_root): "
                         f"letters, digits, '-', '_' or '.', without '/' and not '..'")


def unsupported(overrides: list[str]) -> str | None:
    """Why an argument cannot be honoured (one line), or None.

    hydra.job.chdir=true would nest runs inside runs (relative paths move with each run); a run's
    directory is a function of its config, so Hydra's run and sweep dirs are not the user's to set.
    """
    for i, o in enumerate(overrides):
        key, _, value = o.lstrip("+~").partition("=")
        if key == "hydra.job.chdir" and value.strip().lower() == "true":
            return ("hydra.job.chdir=true is not supported: resdepth keeps every path relative to "
                    "where it is run and writes each run into its own run_dir already; "
                    "leave it false")
        if key in ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir"):
            return (f"{key} is not supported: a run's directory is run_dir (by default "
                    f"results_root/<dataset>/<block>-<depth>/seed<k>-<hash>); "
                    f"set results_root=DIR or run_dir=DIR")
        completion = o in ("-sc", "--shell-completion")
        if completion and overrides[i + 1:i + 2] and "install" in overrides[i + 1]:
            return ("Hydra's -sc install=bash completes the program name only, "
                    "not resdepth's commands: "
                    'eval "$(resdepth completion bash)" completes both')
    return None


HYDRA_DIRS = {("run", "dir"): "${run_dir}", ("sweep", "dir"): "${results_root}",
              ("sweep", "subdir"): "${rd.run_name:}"}  # conf/config.yaml's: runs stay in run_dir


def check_hydra(hydra: dict) -> None:
    """ValueError (one line) for a Hydra setting that would write outside the run's directory,
    whether the shell, a preset or --config-dir set it (`hydra` unresolved, as composed)."""
    job, subdir = hydra["job"], hydra["output_subdir"]
    if job.get("chdir") not in (None, False):
        raise ValueError(f"hydra.job.chdir={job['chdir']} is not supported: resdepth keeps every "
                         f"path relative to where it is run and writes each run into its own "
                         f"run_dir already; leave it false")
    name = str(job.get("name"))
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"hydra.job.name={name!r} must be one file name (it names the run's "
                         f"log), without '/' and not '..'")
    if subdir is not None and (Path(subdir).is_absolute() or ".." in Path(subdir).parts):
        raise ValueError(f"hydra.output_subdir={subdir!r} must stay inside the run directory: a "
                         f"relative path without '..' (default .hydra/<date>_<time>)")
    for (section, key), default in HYDRA_DIRS.items():
        if hydra[section][key] != default:
            raise ValueError(f"hydra.{section}.{key} is not supported: a run's directory is "
                             f"run_dir (by default results_root/<dataset>/<block>-<depth>/"
                             f"seed<k>-<hash>); set results_root=DIR or run_dir=DIR")


def _ranges(cfg: dict) -> list[tuple]:
    """(key, value, whether it is allowed, what is allowed) of every setting with a range."""
    o, t, d = cfg["optim"], cfg["trainer"], cfg["data"]
    positive = "a positive integer"
    return [
        ("trainer.max_steps", t["max_steps"], t["max_steps"] >= 1, positive),
        ("trainer.eval_every", t["eval_every"], t["eval_every"] >= 1, positive),
        ("optim.batch_size", o["batch_size"], o["batch_size"] >= 1, positive),
        ("optim.warmup_window", o["warmup_window"], o["warmup_window"] >= 1, positive),
        ("trainer.streams", t["streams"], 1 <= t["streams"] <= MOST_STREAMS,
         f"from 1 to {MOST_STREAMS} (packs side by side in one process; 1: one after another)"),
        ("trainer.checkpoint_every", t["checkpoint_every"], t["checkpoint_every"] >= 0,
         ">= 0 (0: same as eval_every)"),
        ("optim.lr", o["lr"], 0 < o["lr"] < math.inf, "> 0 and finite"),
        ("optim.momentum", o["momentum"], 0 <= o["momentum"] < 1, "in [0, 1)"),
        ("optim.weight_decay", o["weight_decay"], o["weight_decay"] >= 0, ">= 0"),
        ("optim.gamma", o["gamma"], 0 < o["gamma"] <= 1,
         "in (0, 1]: the lr is multiplied by it at each milestone"),
        ("optim.warmup_lr", o["warmup_lr"], o["warmup_lr"] > 0, "> 0"),
        ("optim.warmup_until_error", o["warmup_until_error"], 0 <= o["warmup_until_error"] <= 1,
         "a fraction in [0, 1] (0: warm up until optim.warmup_max_steps or the first milestone)"),
        ("optim.warmup_max_steps", o["warmup_max_steps"], o["warmup_max_steps"] >= 0,
         ">= 0 (0: the first milestone)"),
        ("optim.bn_batch", o["bn_batch"], o["bn_batch"] >= 0, ">= 0 (0: the whole batch)"),
        ("data.val_size", d["val_size"], d["val_size"] >= 0, ">= 0 (0: no validation split)"),
        ("data.test_subset", d["test_subset"], d["test_subset"] >= 0,
         ">= 0 (0: the whole test set)"),
        ("data.pad", d["pad"], d["pad"] >= 0, ">= 0 (pixels)"),
        ("trainer.eval_batch_size", t["eval_batch_size"], t["eval_batch_size"] >= 1, positive),
        ("trainer.threads", t["threads"], t["threads"] >= 0,
         ">= 0 (0: all of this machine's cores)"),
    ]


def repeated_keys(overrides: list[str]) -> list[str]:
    """A note for each key given more than once on the shell (`model.depth=8 model.depth=14`).

    Hydra takes the last, as most command lines do, but silently training something other than
    what was typed is worse than a line saying so. Lines that do not parse are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        assignments = [o for o in overrides if "=" in o and o[:1] != "-"]  # not flags
        parsed = OverridesParser.create().parse_overrides(assignments)
    except Exception:
        return []
    given: dict[str, list[str]] = {}
    for o in parsed:
        given.setdefault(o.get_key_element().lstrip("+~"), []).append(o.input_line)
    return [f"{key} is given {len(lines)} times ({', '.join(lines)}): "
            f"the last one is used, {lines[-1]}"
            for key, lines in given.items() if len(lines) > 1]
