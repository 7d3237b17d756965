"""Typed schema of the Hydra config. Types only: every default value lives in conf/*.yaml, nowhere else.

The schema is stored in Hydra's ConfigStore as `resdepth_schema` and named first in conf/config.yaml's defaults,
so a misspelt key (`model.dept=5`) or a wrong type (`model.depth=abc`, `optim.lr=fast`, `model.block=foo`) fails
in Hydra before anything is trained (the CLI turns the message into one line: `one_line_error`).

Imports models (the block kinds), rundir (the repository root) and, to check data.kind, data; never
training, device or output code.
"""

from __future__ import annotations

import hashlib
import math
import json
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .models import BLOCKS
from .rundir import REPO_ROOT



def _conf_dir() -> Path:
    """The folder of the Hydra configs: resdepth/conf in an installed wheel (built from the top-level conf/),
    else conf/ at the root of the source tree (a clone, or an editable install of one)."""
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if (packaged / "config.yaml").is_file() else REPO_ROOT / "conf"


CONF_DIR = _conf_dir()


# model.block's choices are the block kinds registered in models.BLOCKS, so Hydra's error lists what is registered.
Block = Enum("Block", [(name, name) for name in BLOCKS], type=str)


class Shortcut(str, Enum):
    A = "A"
    B = "B"


# Choices that are not identifiers ("32-true") use Enum's functional form; OmegaConf matches a value by name
# (and an int such as precision 32 by value), so Hydra itself rejects anything else with the allowed list.
Precision = Enum("Precision", [("auto", "auto"), ("32-true", "32-true"), ("32", 32), ("bf16-mixed", "bf16-mixed"),
                               ("16-mixed", "16-mixed")])
Accelerator = Enum("Accelerator", [(name, name) for name in ("auto", "cpu", "gpu", "cuda")])
CompileMode = Enum("CompileMode", [(name, name) for name in
                                   ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")])
# auto | true | false settings (trainer.cuda_graph, optim.warmup) stay strings in the schema: OmegaConf refuses a
# bool for an Enum field, and `trainer.cuda_graph=false` on the shell is a bool. AUTO_BOOL is their allowed list,
# checked by choice() when a config is composed (train, sweep and --cfg alike).
AUTO_BOOL = ("auto", "true", "false")


@dataclass
class ModelConfig:
    depth: int = MISSING
    block: Block = MISSING
    shortcut: Shortcut = MISSING


@dataclass
class DataConfig:
    name: str = MISSING  # label used in run directories and tables
    kind: str = MISSING  # a loader registered in data.DATASETS
    root: str = MISSING  # cifar10/cifar100/fashion_mnist: folder holding cifar-10-batches-py, FashionMNIST/raw
    path: Optional[str] = MISSING  # image_folder: a folder or .tar/.tar.gz with train/<class>/*, test/<class>/*
    download: bool = MISSING
    cache_dir: str = MISSING
    val_size: int = MISSING  # images held out of the training set for validation
    test_subset: int = MISSING  # 0: the whole test set; k: a fixed subset of k test images
    train_size: int = MISSING  # synthetic only
    test_size: int = MISSING  # synthetic only
    num_classes: int = MISSING  # synthetic only
    pad: int = MISSING  # pixels of zero padding on each side before the random crop (the paper: 4)


@dataclass
class OptimConfig:
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    batch_size: int = MISSING
    milestones: List[int] = MISSING
    gamma: float = MISSING
    warmup: str = MISSING  # auto | true | false (AUTO_BOOL)
    warmup_depth: int = MISSING  # warmup=auto warms up nets of this depth and deeper
    warmup_lr: float = MISSING
    warmup_until_error: float = MISSING  # fraction
    warmup_window: int = MISSING  # steps averaged for the warm-up test
    warmup_max_steps: int = MISSING  # the warm-up ends here at the latest (0: at the first milestone)
    bn_batch: int = MISSING  # images per batch-norm group in training (0: the whole batch)


@dataclass
class TrainerConfig:
    max_steps: int = MISSING
    eval_every: int = MISSING
    checkpoint_every: int = MISSING  # 0: same as eval_every
    accelerator: Accelerator = MISSING
    precision: Precision = MISSING  # auto: bf16-mixed where the device computes in bf16 natively, else 32-true
    channels_last: bool = MISSING
    compile: bool = MISSING
    compile_mode: CompileMode = MISSING
    cuda_graph: str = MISSING  # auto | true | false (AUTO_BOOL)
    progress: bool = MISSING
    eval_batch_size: int = MISSING  # images per forward pass when a record evaluates (memory, not results)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = MISSING
    results_root: str = MISSING
    run_dir: str = MISSING
    experiment_name: str = MISSING
    logger: Any = None  # conf/logger/<name>.yaml: a Lightning logger's _target_ and arguments; None: none


# Keys that change where and how a run is shown or executed, never what it computes: left out of the run's hash.
# (trainer.cuda_graph replays the very same operations.)
NON_SEMANTIC = ("results_root", "run_dir", "experiment_name", "trainer.progress", "trainer.checkpoint_every",
                "trainer.cuda_graph", "trainer.eval_batch_size",
                "data.cache_dir", "data.download", "data.root", "logger")

# How a run directory keeps its name (<dataset>/<block>-<depth>/seed<k>-<hash>) when settings are added:
# 1. A setting added after runs exist is hashed only where it differs from LEGACY, the value that does what resdepth
#    did before the setting existed. So a new setting whose default keeps today's behaviour renames nothing, and
#    old runs are still found to skip or resume. Every new setting gets an entry here.
# 2. What cannot change a run is hashed at one canonical value: a plain net's shortcut (it has none) as A, and the
#    warm-up settings of a net that does not warm up at their LEGACY values. So changing a warm-up default renames
#    only the runs that warm up.
# tests/test_config.py pins the names of the paper's and the demo's run directories.
LEGACY = {
    "optim.warmup_depth": 110,
    "optim.warmup_max_steps": 0,
    "optim.bn_batch": 0,
    "data.pad": 4,
}
LATER_DEFAULTS = {"trainer.eval_batch_size": 1000}  # settings added later that a result never depended on


def fill_legacy(cfg: dict) -> dict:
    """A copy of a run's config with every setting added after it was recorded filled in at its LEGACY value (what
    resdepth did then), so a run from an older version loads, resumes and re-plots as it trained."""
    out = json.loads(json.dumps(cfg))
    for dotted, value in {**LEGACY, **LATER_DEFAULTS}.items():
        *parents, last = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.setdefault(last, value)
    return out


WARMUP_LEGACY = {"optim.warmup_lr": 0.01, "optim.warmup_until_error": 0.8, "optim.warmup_window": 20}


def choice(key: str, value, allowed: tuple[str, ...]) -> str:
    """value as one of `allowed` (lower-cased: `true` on the shell is a bool); ValueError naming key and choices."""
    text = str(getattr(value, "name", value)).lower()
    if text not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    return text


def warms_up(optim: dict, depth: int) -> bool:
    """optim.warmup: auto (on for depth >= optim.warmup_depth, the paper's ResNet-110) | true | false."""
    value = choice("optim.warmup", optim["warmup"], AUTO_BOOL)
    return depth >= int(optim.get("warmup_depth", LEGACY["optim.warmup_depth"])) if value == "auto" else \
        value == "true"


def _warms_up_or_unknown(cfg: dict) -> bool:
    """warms_up for the hash: a bad optim.warmup (validate refuses it with its message) hashes everything."""
    try:
        return warms_up(cfg["optim"], cfg["model"]["depth"])
    except (ValueError, TypeError, KeyError):
        return True


def _parent(node: dict, dotted: str) -> tuple[dict, str]:
    """(the dict holding a dotted key, the key's last part); an empty dict where a parent is missing."""
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.get(p, {})
    return node, last


def _pop(node: dict, dotted: str):
    parent, last = _parent(node, dotted)
    return parent.pop(last, None)


def _put(node: dict, dotted: str, value) -> None:
    parent, last = _parent(node, dotted)
    if last in parent:
        parent[last] = value


def semantic_config(cfg: DictConfig | dict) -> dict:
    """What defines a run's result, as hashed into its directory's name: the resolved config minus the Hydra node
    and NON_SEMANTIC, with the rules above (LEGACY values left out, unusable settings made canonical)."""
    if isinstance(cfg, DictConfig):
        keys = [k for k in cfg.keys() if k not in ("hydra", "run_dir")]
        cfg = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, enum_to_str=True)
    out = json.loads(json.dumps(cfg, default=str))
    out.pop("hydra", None)
    for dotted in NON_SEMANTIC:
        _pop(out, dotted)
    if "optim" in out and "model" in out and not _warms_up_or_unknown(out):
        for dotted, value in WARMUP_LEGACY.items():
            _put(out, dotted, value)
        _pop(out, "optim.warmup_max_steps")
        _pop(out, "optim.warmup_depth")
    elif "optim" in out and str(out["optim"].get("warmup")).lower() != "auto":
        _pop(out, "optim.warmup_depth")  # only auto reads it
    for dotted, value in LEGACY.items():
        parent, last = _parent(out, dotted)
        if last in parent and parent[last] == value:
            del parent[last]
    if "model" in out:
        out["model"] = the_net(out["model"])
    return out


def the_net(model: dict) -> dict:
    """The model config with what cannot change the net made canonical: a plain net has no shortcuts, so under
    shortcut A or B it is the very same net (and the same run)."""
    return {**model, "shortcut": "A"} if model.get("block") == "plain" and "shortcut" in model else model


def validate(cfg: dict) -> None:
    """Raise ValueError with a one-line message naming the bad value and what is allowed (what Hydra's schema
    cannot check: ranges, auto|true|false choices, the depth)."""
    from .data import check_kind
    from .models import check_bn_batch, check_depth

    _check_keys(cfg, Config)
    _check_paths(cfg)
    check_depth(cfg["model"]["depth"])
    check_bn_batch(cfg["optim"]["bn_batch"], cfg["optim"]["batch_size"])
    warms_up(cfg["optim"], cfg["model"]["depth"])
    choice("trainer.cuda_graph", cfg["trainer"]["cuda_graph"], AUTO_BOOL)
    if not 0 <= cfg["seed"] < 2**32:  # what numpy and Lightning accept (their own message does not name the key)
        raise ValueError(f"seed={cfg['seed']} must be in [0, {2**32 - 1}]")
    for key, value, ok, allowed in _ranges(cfg):
        if not ok:  # `not ok` also catches nan
            raise ValueError(f"{key}={value} must be {allowed}")
    m = cfg["optim"]["milestones"]
    if any(s < 0 for s in m) or any(a >= b for a, b in zip(m, m[1:])):
        raise ValueError(f"optim.milestones={m} must be increasing iterations >= 0")
    d = cfg["data"]
    check_kind(d["kind"])
    if d["kind"] == "synthetic":  # sizes the generator is given; real datasets take theirs from the files
        for key, least in (("train_size", 2), ("test_size", 1), ("num_classes", 2)):
            if d[key] < least:
                raise ValueError(f"data.{key}={d[key]} must be >= {least} for data=synthetic")


# Top-level nodes that hold another library's arguments (a Lightning logger's): that library checks them.
FREE_FORM = ("logger",)


def _check_keys(node: dict, schema: type, prefix: str = "") -> None:
    """ValueError naming the first key, at any depth, that no field of the schema has: `+key=value`
    (`+trainer.deterministic=true`, `+model.width=32`) adds a key that nothing reads but the run's hash."""
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


def _check_paths(cfg: dict) -> None:
    """Every file a run writes stays under results_root (or the run_dir the user names): no empty root, and the
    dataset's name is one folder name."""
    if not str(cfg["results_root"]).strip():
        raise ValueError("results_root='' is empty: name the folder that holds the results (default: runs)")
    if Path(str(cfg["results_root"])).expanduser().is_file():
        raise ValueError(f"results_root={cfg['results_root']} is a file, not a folder: name a folder for the results")
    name = str(cfg["data"]["name"])
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"data.name={name!r} must be one folder name (it names the dataset's folder under "
                         f"results_root): letters, digits, '-', '_' or '.', without '/' and not '..'")


def unsupported(overrides: list[str]) -> str | None:
    """Why an argument cannot be honoured (one line), or None. hydra.job.chdir=true would move each run into its
    own directory, where relative paths (results_root, data) would nest runs inside runs. Hydra's run and sweep
    directories are the run's own directory, a function of its config, so they are set by run_dir and
    results_root. Hydra's completion installer knows nothing of resdepth's commands."""
    for i, o in enumerate(overrides):
        key, _, value = o.lstrip("+~").partition("=")
        if key == "hydra.job.chdir" and value.strip().lower() == "true":
            return ("hydra.job.chdir=true is not supported: resdepth keeps every path relative to where it is run "
                    "and writes each run into its own run_dir already; leave it false")
        if key in ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir"):
            return (f"{key} is not supported: a run's directory is run_dir (by default "
                    f"results_root/<dataset>/<block>-<depth>/seed<k>-<hash>); set results_root=DIR or run_dir=DIR")
        if o in ("-sc", "--shell-completion") and overrides[i + 1:i + 2] and "install" in overrides[i + 1]:
            return ("Hydra's -sc install=bash completes the program name only, not resdepth's commands: "
                    'eval "$(resdepth completion bash)" completes both')
    return None


def _ranges(cfg: dict) -> list[tuple]:
    """(key, value, whether it is allowed, what is allowed) of every setting with a range."""
    o, t, d = cfg["optim"], cfg["trainer"], cfg["data"]
    positive = "a positive integer"
    return [
        ("trainer.max_steps", t["max_steps"], t["max_steps"] >= 1, positive),
        ("trainer.eval_every", t["eval_every"], t["eval_every"] >= 1, positive),
        ("optim.batch_size", o["batch_size"], o["batch_size"] >= 1, positive),
        ("optim.warmup_window", o["warmup_window"], o["warmup_window"] >= 1, positive),
        ("trainer.checkpoint_every", t["checkpoint_every"], t["checkpoint_every"] >= 0,
         ">= 0 (0: same as eval_every)"),
        ("optim.lr", o["lr"], 0 < o["lr"] < math.inf, "> 0 and finite"),
        ("optim.momentum", o["momentum"], 0 <= o["momentum"] < 1, "in [0, 1)"),
        ("optim.weight_decay", o["weight_decay"], o["weight_decay"] >= 0, ">= 0"),
        ("optim.gamma", o["gamma"], 0 < o["gamma"] <= 1, "in (0, 1]: the lr is multiplied by it at each milestone"),
        ("optim.warmup_lr", o["warmup_lr"], o["warmup_lr"] > 0, "> 0"),
        ("optim.warmup_until_error", o["warmup_until_error"], 0 <= o["warmup_until_error"] <= 1,
         "a fraction in [0, 1] (0: warm up until optim.warmup_max_steps or the first milestone)"),
        ("optim.warmup_max_steps", o["warmup_max_steps"], o["warmup_max_steps"] >= 0, ">= 0 (0: the first milestone)"),
        ("optim.bn_batch", o["bn_batch"], o["bn_batch"] >= 0, ">= 0 (0: the whole batch)"),
        ("data.val_size", d["val_size"], d["val_size"] >= 0, ">= 0 (0: no validation split)"),
        ("data.test_subset", d["test_subset"], d["test_subset"] >= 0, ">= 0 (0: the whole test set)"),
        ("data.pad", d["pad"], d["pad"] >= 0, ">= 0 (pixels)"),
        ("trainer.eval_batch_size", t["eval_batch_size"], t["eval_batch_size"] >= 1, positive),
    ]


def config_hash(cfg: DictConfig | dict, without: tuple[str, ...] = ("seed",)) -> str:
    """8 hex digits naming the semantic config minus the top-level keys in `without`."""
    sem = semantic_config(cfg)
    for key in without:
        sem.pop(key, None)
    return hashlib.sha256(json.dumps(sem, sort_keys=True).encode()).hexdigest()[:8]


def run_name(*, _root_: DictConfig) -> str:
    """`<dataset>/<block>-<depth>/seed<k>-<hash of everything else>`: a pure function of the config."""
    block = getattr(_root_.model.block, "value", _root_.model.block)
    return (f"{_root_.data.name}/{block}-{_root_.model.depth}"
            f"/seed{_root_.seed}-{config_hash(_root_)}")


def register() -> None:
    """Store the schema and the `rd.run_name` resolver; idempotent."""
    ConfigStore.instance().store(name="resdepth_schema", node=Config)
    if not OmegaConf.has_resolver("rd.run_name"):
        OmegaConf.register_new_resolver("rd.run_name", run_name)


register()


def compose(*override_lists: list[str]) -> list[dict]:
    """The resolved config (plain dict) of each override list, as `resdepth train` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return [to_plain(hydra_compose("config", overrides=list(o))) for o in override_lists]


_NOISE = ("full_key:", "object_type=", "reference_type=", "Config search path", "provider=", "To append")


def one_line_error(e: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages (the error and its cause) as one line: what was wrong, why,
    and what is allowed. `Available options in 'experiment':` + an indented list becomes `available: a, b`."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        options = None
        for line in str(e).splitlines():
            text = line.strip()
            if not text or text.startswith(_NOISE):
                continue
            if text.startswith("Available options"):
                options = []
                parts.append(options)
            elif options is not None and line[:1].isspace():
                if not text.startswith("_"):  # a shared base such as data/_common.yaml, not a choice
                    options.append(text)
            else:
                options = None
                parts.append(text)
        e = e.__cause__
    words = [f"available: {', '.join(p)}" if isinstance(p, list) else p.rstrip(".:") for p in parts]
    return "; ".join(dict.fromkeys(w for w in words if w)) or "invalid configuration"


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """A plain, JSON-able dict of the resolved config (no Hydra node): what goes into checkpoints and results."""
    keys = [k for k in cfg.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, enum_to_str=True)


def repeated_keys(overrides: list[str]) -> list[str]:
    """A note for each key given more than once on the shell (`model.depth=8 model.depth=14`). Hydra takes the
    last value, as most command lines do (so `make reproduce ARGS=experiment=eighth` and a command from the
    history with one more override still work), but silently training something other than what was typed would
    be worse than a line saying so. Flags and their values (`--cfg job`) are not overrides; lines that do not
    parse are left for Hydra's own error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if "=" in o and o[:1] != "-"])
    except Exception:
        return []
    given: dict[str, list[str]] = {}
    for o in parsed:
        given.setdefault(o.get_key_element().lstrip("+~"), []).append(o.input_line)
    return [f"{key} is given {len(lines)} times ({', '.join(lines)}): the last one is used, {lines[-1]}"
            for key, lines in given.items() if len(lines) > 1]
