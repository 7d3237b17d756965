"""Where Hydra composes: the schema registered, override lists composed, errors in one line."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from .identity import run_name
from .schema import CONF_DIR, Config


def register() -> None:
    """Store the schema and the `rd.run_name` resolver; idempotent."""
    ConfigStore.instance().store(name="resdepth_schema", node=Config)
    if not OmegaConf.has_resolver("rd.run_name"):
        OmegaConf.register_new_resolver("rd.run_name", run_name)


register()


def composed(override_lists: Iterable[list[str]], read: Callable[[DictConfig], Any] | None = None,
             *, hydra_settings: bool = False) -> list:
    """read(cfg) (default: to_plain) of each override list's config, composed from conf/ and any
    hydra.searchpath the list names; with `hydra_settings`, cfg keeps its `hydra` node."""
    read = read or to_plain
    GlobalHydra.instance().clear()  # a Hydra app (or a job calling this) may still hold it
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return [read(hydra_compose("config", overrides=list(o), return_hydra_config=hydra_settings))
                for o in override_lists]


def compose(*override_lists: list[str]) -> list[dict]:
    """The resolved config (plain dict) of each override list, as `resdepth train` would see it."""
    return composed(override_lists)


_NOISE = ("full_key:", "object_type=", "reference_type=", "Config search path", "provider=",
          "To append")


def one_line_error(e: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages (the error and its causes) as one line.

    `Available options in 'experiment':` and its indented list become `available: a, b`.
    """
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
                if not text.startswith("_"):  # a shared base (data/_common.yaml), not a choice
                    options.append(text)
            else:
                options = None
                parts.append(text)
        e = e.__cause__
    words = [f"available: {', '.join(p)}" if isinstance(p, list) else p.rstrip(".:") for p in parts]
    return "; ".join(dict.fromkeys(w for w in words if w)) or "invalid configuration"


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a plain, JSON-able dict without the `hydra` node."""
    keys = [k for k in cfg.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, enum_to_str=True)
