"""The typed schema, run identity and its hash rules, the checks, and where Hydra composes."""

from .checks import (check_hydra, expand_paths, pack_size, repeated_keys, unsupported,
                     validate)
from .compose import compose, composed, one_line_error, register, to_plain
from .identity import (LEGACY, NON_SEMANTIC, config_hash, fill_legacy, run_name, semantic_config,
                       the_net, warms_up)
from .schema import (AUTO_BOOL, CONF_DIR, Accelerator, Block, CompileMode, Config, Precision,
                     Shortcut, choice)

__all__ = ["AUTO_BOOL", "Accelerator", "Block", "CONF_DIR", "CompileMode", "Config", "LEGACY",
           "NON_SEMANTIC", "Precision", "Shortcut", "check_hydra", "choice", "compose",
           "composed", "config_hash", "expand_paths", "fill_legacy", "one_line_error", "pack_size",
           "register",
           "repeated_keys", "run_name", "semantic_config", "the_net", "to_plain", "unsupported",
           "validate", "warms_up"]
