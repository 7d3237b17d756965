"""What the bash completion offers for `train` and `sweep`: every key, the allowed values of each
choice, and each group's presets (never a private `_` file), answered from a table cached in the
user's cache folder, so a TAB waits neither for torch nor for Hydra once the table exists.

The table is rebuilt, from the composed config and the schema, whenever resdepth's version or a
file under conf/ changes; a user's --config-dir adds its own presets, read from the folder itself.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import __version__
from .rundir import atomic_write_text

FLAGS = {"train": ["--config-dir"], "sweep": ["--plan", "--config-dir"]}
LAUNCHERS = ["basic"]  # Hydra's own, beside resdepth's conf/hydra/launcher presets


def _conf_dir() -> Path:
    """The configs' folder, found as config.schema finds it, without importing it (torch)."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if (packaged / "config.yaml").is_file() else here.parent / "conf"


def _groups(folder: Path) -> dict[str, list[str]]:
    """{group: presets} of a config folder: data, experiment, hydra/launcher, ..."""
    out: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.yaml")):
        group = path.parent.relative_to(folder).as_posix()
        if group != "." and not path.stem.startswith("_"):
            out.setdefault(group, []).append(path.stem)
    return out


def _fingerprint(conf: Path) -> str:
    stamps = [(str(p.relative_to(conf)), p.stat().st_mtime_ns) for p in sorted(conf.rglob("*"))]
    return json.dumps([__version__, str(conf), stamps])


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(root) / "resdepth" / "completion.json"


def build_table(conf: Path) -> dict:
    """{keys, choices, groups}: composed from conf/ and the schema (imports torch: once)."""
    from dataclasses import fields, is_dataclass
    from enum import Enum
    from typing import get_type_hints

    from .config import AUTO_BOOL, Config, compose

    choices: dict[str, list[str]] = {}

    def walk(cls, prefix: str) -> None:
        hints = get_type_hints(cls)
        for f in fields(cls):
            kind, key = hints[f.name], prefix + f.name
            if is_dataclass(kind):
                walk(kind, key + ".")
            elif isinstance(kind, type) and issubclass(kind, Enum):
                choices[key] = list(kind.__members__)
            elif kind is bool:
                choices[key] = ["true", "false"]

    walk(Config, "")
    for key in ("trainer.cuda_graph", "optim.warmup"):  # strings checked against AUTO_BOOL
        choices[key] = list(AUTO_BOOL)

    def flat(node: dict, prefix: str = "") -> list[str]:
        return [k for name, value in node.items() for k in (
            flat(value, f"{prefix}{name}.") if isinstance(value, dict) and value
            else [prefix + name])]

    keys = [k for k in flat(compose([])[0]) if not k.startswith("hydra")]
    groups = _groups(conf)
    groups["hydra/launcher"] = sorted({*groups.get("hydra/launcher", []), *LAUNCHERS})
    return {"keys": keys, "choices": choices, "groups": groups}


def table() -> dict:
    """The cached table, rebuilt (and cached where the cache folder can be written) when stale."""
    conf, cache = _conf_dir(), _cache_file()
    stamp = _fingerprint(conf)
    try:
        cached = json.loads(cache.read_text())
        if cached.get("fingerprint") == stamp:
            return cached
    except (OSError, ValueError, AttributeError):
        pass
    fresh = {"fingerprint": stamp, **build_table(conf)}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(fresh) + "\n")
    except OSError:  # a read-only cache: completion still works, only slower
        pass
    return fresh


def candidates(command: str, word: str, config_dirs: list[str]) -> list[str]:
    """Every whole word that could replace `word` (the one under the cursor)."""
    t = table()
    groups = {g: list(options) for g, options in t["groups"].items()}
    for folder in config_dirs:
        if Path(folder).is_dir():
            for g, options in _groups(Path(folder)).items():
                groups[g] = sorted({*groups.get(g, []), *options})
    if "=" in word:
        key, _, _ = word.partition("=")
        name = key.lstrip("+~")
        values = groups.get(name) or t["choices"].get(name) or []
        return [f"{key}={v}" for v in values]
    return [*FLAGS.get(command, []), *(f"{g}=" for g in groups), *(f"{k}=" for k in t["keys"])]


def query(argv: list[str]) -> None:
    """`resdepth completion query COMMAND [--config-dir DIR ...] -- WORD`: the candidates for WORD,
    one per line, that start with it (what the bash script asks at each TAB)."""
    command, rest = argv[0], argv[1:]
    split = rest.index("--") if "--" in rest else len(rest)
    options, word = rest[:split], (rest[split + 1:] or [""])[-1]
    dirs = [options[i + 1] for i, o in enumerate(options[:-1]) if o in ("--config-dir", "-cd")]
    found = [c for c in candidates(command, word, dirs) if c.startswith(word)]
    sys.stdout.write("".join(f"{c}\n" for c in found))
