"""Splits as uint8 tensors, the dataset error, and where a user's path points."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..rundir import REPO_ROOT


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or malformed; the message says which file and what to do."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return len(self.labels)


Loaded = tuple[Split, Split, list[str]]  # (train, test, class names)
Loader = Callable[[Mapping[str, Any]], Loaded]  # data config -> Loaded


def resolve_path(path: str) -> Path:
    """A user path, ~ expanded, relative to the cwd; in a source tree, one missing there is taken
    from the repository root, so a clone's data/ serves every folder."""
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or p.exists() or not in_source_tree():
        return p
    return REPO_ROOT / p


def in_source_tree() -> bool:
    """resdepth runs from its repository (a clone or an editable install), not from a wheel."""
    return ((REPO_ROOT / "pyproject.toml").is_file()
            and (REPO_ROOT / "conf" / "config.yaml").is_file())
