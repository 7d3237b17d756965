"""The typed schema of the Hydra config: types and choices only; every default lives in conf/."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING

from ..models import BLOCKS
from ..rundir import REPO_ROOT


def _conf_dir() -> Path:
    """The Hydra configs' folder: resdepth/conf in a wheel, else conf/ in the source tree."""
    packaged = Path(__file__).resolve().parent.parent / "conf"
    return packaged if (packaged / "config.yaml").is_file() else REPO_ROOT / "conf"


CONF_DIR = _conf_dir()


# read from models.BLOCKS, so Hydra's error lists the registered block kinds
Block = Enum("Block", [(name, name) for name in BLOCKS], type=str)


class Shortcut(str, Enum):
    A = "A"
    B = "B"


# Enum's functional form allows names like "32-true"; OmegaConf matches a string by name and an int
# (precision 32 on the shell) by value, so Hydra itself rejects anything else with the allowed list.
# Lightning's other spellings of the same precisions are aliases (same value): a config holds the
# canonical member, so `trainer.precision=bf16` is recorded, hashed and named as bf16-mixed.
Precision = Enum("Precision", [("auto", "auto"), ("32-true", 32), ("32", 32),
                               ("bf16-mixed", "bf16-mixed"), ("bf16", "bf16-mixed"),
                               ("16-mixed", 16), ("16", 16)])
Accelerator = Enum("Accelerator", [(name, name) for name in ("auto", "cpu", "gpu", "cuda")])
CompileMode = Enum("CompileMode", [(name, name) for name in
                                   ("default", "reduce-overhead", "max-autotune",
                                    "max-autotune-no-cudagraphs")])
# auto | true | false settings stay strings, checked by choice(): OmegaConf refuses a bool for an
# Enum field, and `trainer.cuda_graph=false` on the shell is a bool.
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
    root: str = MISSING  # cifar10/cifar100/fashion_mnist: the folder holding their files
    path: Optional[str] = MISSING  # image_folder: a folder or .tar/.tar.gz
    download: bool = MISSING
    cache_dir: str = MISSING
    val_size: int = MISSING  # images held out of the training set for validation
    test_subset: int = MISSING  # 0: the whole test set; k: a fixed subset of k test images
    train_size: int = MISSING  # synthetic only
    test_size: int = MISSING  # synthetic only
    num_classes: int = MISSING  # synthetic only
    pad: int = MISSING  # pixels of zero padding a side before the random crop (the paper: 4)


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
    warmup_max_steps: int = MISSING  # the warm-up ends here at the latest (0: first milestone)
    bn_batch: int = MISSING  # images per batch-norm group in training (0: the whole batch)


@dataclass
class TrainerConfig:
    max_steps: int = MISSING
    eval_every: int = MISSING
    checkpoint_every: int = MISSING  # 0: same as eval_every
    accelerator: Accelerator = MISSING
    precision: Precision = MISSING  # auto: bf16-mixed on devices with native bf16, else 32-true
    channels_last: bool = MISSING
    compile: bool = MISSING
    compile_mode: CompileMode = MISSING
    cuda_graph: str = MISSING  # auto | true | false (AUTO_BOOL)
    progress: bool = MISSING
    eval_batch_size: int = MISSING  # images per evaluation forward pass (memory, not results)
    threads: int = MISSING  # CPU threads a run computes with (0: all cores); recorded, not hashed
    pack: str = MISSING  # auto | off | K: a sweep trains up to K compatible runs as one wide net
    streams: int = MISSING  # a sweep trains up to this many packs side by side in one process


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
    logger: Any = None  # conf/logger/<name>.yaml: a Lightning logger's _target_ and arguments


def choice(key: str, value, allowed: tuple[str, ...]) -> str:
    """value as one of `allowed`, lower-cased (`true` on the shell is a bool); else ValueError."""
    text = str(getattr(value, "name", value)).lower()
    if text not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    return text
