"""Run identity: what defines a run's result, its hash, and the rules that keep run names stable."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from .schema import AUTO_BOOL, choice

# Keys that change how a run is shown or executed, never what it computes: left out of the hash.
# (trainer.cuda_graph replays the very same operations; trainer.threads, like the device, can
# change the last bits of the arithmetic, so result.json's segments record it.)
NON_SEMANTIC = ("results_root", "run_dir", "experiment_name", "trainer.progress",
                "trainer.checkpoint_every", "trainer.cuda_graph", "trainer.eval_batch_size",
                "trainer.threads", "trainer.pack", "trainer.streams", "data.cache_dir",
                "data.download", "data.root", "logger")

# How a run directory keeps its name when settings are added:
# 1. A setting added after runs exist is hashed only where it differs from LEGACY, the value that
#    does what resdepth did before it existed: a new default that keeps today's behaviour renames
#    nothing, and old runs are still found to skip or resume. Every new setting gets an entry.
# 2. What cannot change a run is hashed at one value: a plain net's shortcut as A, and the warm-up
#    settings of a net that does not warm up at LEGACY values, so a new warm-up default renames
#    only the runs that warm up.
# tests/test_config.py pins the names of the paper's and the demo's run directories.
LEGACY = {
    "optim.warmup_depth": 110,
    "optim.warmup_max_steps": 0,
    "optim.bn_batch": 0,
    "data.pad": 4,
}
# Added later; no result depends on them (trainer.threads: result.json's segments record it).
LATER_DEFAULTS = {"trainer.eval_batch_size": 1000, "trainer.threads": 1,
                  "trainer.pack": "auto", "trainer.streams": 1}


def fill_legacy(cfg: dict) -> dict:
    """A copy of cfg with settings added since at their LEGACY values: it loads as it trained."""
    out = json.loads(json.dumps(cfg))
    for dotted, value in {**LEGACY, **LATER_DEFAULTS}.items():
        *parents, last = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.setdefault(last, value)
    return out


WARMUP_LEGACY = {"optim.warmup_lr": 0.01, "optim.warmup_until_error": 0.8,
                 "optim.warmup_window": 20}


def warms_up(optim: dict, depth: int) -> bool:
    """optim.warmup: auto (depth >= optim.warmup_depth: the paper's ResNet-110) | true | false."""
    value = choice("optim.warmup", optim["warmup"], AUTO_BOOL)
    if value == "auto":
        return depth >= int(optim.get("warmup_depth", LEGACY["optim.warmup_depth"]))
    return value == "true"


def _warms_up_or_unknown(cfg: dict) -> bool:
    """warms_up for the hash; a bad optim.warmup (which validate refuses) hashes everything."""
    try:
        return warms_up(cfg["optim"], cfg["model"]["depth"])
    except (ValueError, TypeError, KeyError):
        return True


def _parent(node: dict, dotted: str) -> tuple[dict, str]:
    """(the dict holding a dotted key, its last part); an empty dict where a parent is missing."""
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
    """What a run's hash covers: the resolved config minus NON_SEMANTIC, by the rules above."""
    if isinstance(cfg, DictConfig):
        keys = [k for k in cfg.keys() if k not in ("hydra", "run_dir")]
        cfg = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True,
                                     enum_to_str=True)
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
    """The model config with a plain net's shortcut as A: it has none, so A or B is the same net."""
    if model.get("block") == "plain" and "shortcut" in model:
        return {**model, "shortcut": "A"}
    return model


def config_hash(cfg: DictConfig | dict, without: tuple[str, ...] = ("seed",)) -> str:
    """8 hex digits naming the semantic config minus the top-level keys in `without`."""
    sem = semantic_config(cfg)
    for key in without:
        sem.pop(key, None)
    return hashlib.sha256(json.dumps(sem, sort_keys=True).encode()).hexdigest()[:8]


def run_name(*, _root_: DictConfig) -> str:
    """`<dataset>/<block>-<depth>/seed<k>-<hash of the rest>`: a pure function of the config."""
    block = getattr(_root_.model.block, "value", _root_.model.block)
    return (f"{_root_.data.name}/{block}-{_root_.model.depth}"
            f"/seed{_root_.seed}-{config_hash(_root_)}")
