"""A finished run in a notebook: its trained net, ready for raw images, its config and metrics.

    from resdepth import load_run
    run = load_run("runs/cifar10/residual-56/seed0-1f3a9c2e")
    logits = run.net(images)          # uint8 images (0-255) or floats in [0, 1], N x C x H x W
    run.config, run.metrics, run.result
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data import DataModule, DatasetError
from ..models import cifar_resnet
from ..rundir import load_tensors, read_json, read_metrics


class Classifier(nn.Module):
    """A trained net for raw images: uint8 (0-255) or float in [0, 1], N x C x H x W -> logits.

    The per-pixel training mean (in [0, 1], C x H x W) travels with the weights as a buffer.
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, classes: list[str]) -> None:
        super().__init__()
        self.net, self.classes = net, list(classes)
        self.register_buffer("mean", mean.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return self.net(x - self.mean)


@dataclass
class TrainedRun:
    """A run directory read back; `metrics` holds metrics.csv's rows (errors are fractions)."""

    path: Path
    net: Classifier  # in eval mode, on the CPU
    config: dict  # the resolved config
    metrics: list[dict]
    result: dict  # result.json


def model_file(net: nn.Module, mean: torch.Tensor, cfg: dict, classes: list[str]) -> dict:
    """What model.pt holds: the weights, the training mean, the net's shape and the class names.

    Plain tensors, numbers and strings only, so `torch.load(weights_only=True)` reads it.
    """
    m = cfg["model"]
    return {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "mean": mean.detach().cpu(), "depth": m["depth"], "block": m["block"],
            "shortcut": m["shortcut"], "classes": list(classes)}


def load_run(path: str | Path) -> TrainedRun:
    """The run in directory `path`; FileNotFoundError when it holds no model.pt (not finished)."""
    path = Path(path)
    if not (path / "model.pt").exists():
        raise FileNotFoundError(f"{path} holds no model.pt: the run has not finished "
                                f"(resdepth train resumes it)")
    config = read_json(path / "config.json")["config"]
    saved = load_tensors(path / "model.pt", map_location="cpu")
    if "state_dict" not in saved:  # written before model.pt held the mean: the weights alone
        saved = {"state_dict": saved, "mean": _mean_from_dataset(path, config), "classes": [],
                 **config["model"]}
    weights = saved["state_dict"]
    num_classes = weights["fc.bias"].numel()
    classes = saved["classes"] or [str(i) for i in range(num_classes)]
    net = cifar_resnet(depth=saved["depth"], block=saved["block"], shortcut=saved["shortcut"],
                       in_channels=weights["conv1.weight"].shape[1], num_classes=num_classes)
    net.load_state_dict(weights)
    result = read_json(path / "result.json") if (path / "result.json").exists() else {}
    return TrainedRun(path, Classifier(net, saved["mean"], classes).eval(), config,
                      read_metrics(path / "metrics.csv"), result)


def _mean_from_dataset(path: Path, config: dict) -> torch.Tensor:
    """The training mean of an older run (its model.pt lacks it), from the run's dataset."""
    try:
        data = DataModule(config["data"], batch_size=config["optim"]["batch_size"],
                          seed=config["seed"]).load()
    except (DatasetError, OSError) as e:
        raise DatasetError(f"{path / 'model.pt'} was written before model.pt held the training "
                           f"mean, and the run's dataset ({config['data']['name']}) that gives "
                           f"it cannot be read here: {e}") from None
    return data.mean
