"""A finished run in a notebook: its trained net, ready for raw images, its config and metrics.

    from resdepth import load_run
    run = load_run("runs/cifar10/residual-56/seed0-1f3a9c2e")
    run                               # TrainedRun(ResNet-56 seed 0, cifar10, done, ...)
    logits = run.net(images)          # uint8 images (0-255) or floats in [0, 1], N x C x H x W
    run.config, run.metrics, run.result

A worked example, run by tests/test_load.py: docs/notebook.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from ..data import DataModule, DatasetError
from ..models import cifar_resnet, net_name
from ..rundir import load_tensors, read_json, read_metrics

EXPECTS = ("run.net expects uint8 images (0-255) or floats in [0, 1], N x C x H x W "
           "(it subtracts the training mean itself)")


class Classifier(nn.Module):
    """A trained net for raw images: uint8 (0-255) or float in [0, 1], N x C x H x W -> logits.

    The per-pixel training mean (in [0, 1], C x H x W) travels with the weights as a buffer and is
    subtracted here, so images after torchvision's Normalize (or floats in 0-255, or other integer
    types) are refused with a ValueError rather than classified wrongly.
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, classes: list[str]) -> None:
        super().__init__()
        self.net, self.classes = net, list(classes)
        self.register_buffer("mean", mean.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            x = images.float() / 255
        elif images.is_floating_point():
            x = images.float()
            lo, hi = (t.item() for t in x.aminmax()) if x.numel() else (0.0, 0.0)
            if lo < 0 or hi > 1:
                raise ValueError(f"{EXPECTS}; got floats from {lo:.3g} to {hi:.3g}: pass the "
                                 f"images before Normalize (uint8, or floats / 255)")
        else:
            raise ValueError(f"{EXPECTS}; got {images.dtype}: convert to uint8 or divide by 255")
        return self.net(x - self.mean)


@dataclass(repr=False)
class TrainedRun:
    """A run directory read back. `rows`: metrics.csv's rows, a list of dicts (errors are
    fractions); `metrics`: the same as a table, a pandas DataFrame when pandas is installed, else
    `rows` itself. Its repr is one line: net, seed, dataset, status, test error, iterations, path.
    """

    path: Path
    net: Classifier  # in eval mode, on the CPU
    config: dict  # the resolved config
    rows: list[dict]  # metrics.csv's rows
    result: dict  # result.json ({} when there is none)

    @cached_property
    def metrics(self):
        """metrics.csv as a table: a pandas DataFrame with pandas installed, else `rows`."""
        try:
            import pandas
        except ImportError:  # pandas is not a dependency
            return self.rows
        return pandas.DataFrame(self.rows)

    def __repr__(self) -> str:
        m, r = self.config["model"], self.result
        name = net_name(m["block"], m["depth"]) + ("-B" if m.get("shortcut") == "B" else "")
        parts = [f"{name} seed {self.config['seed']}", self.config["data"]["name"],
                 r.get("status", "no result.json")]
        if isinstance(r.get("final_test_error"), (int, float)):
            parts.append(f"test error {100 * r['final_test_error']:.2f}%")
        steps = r.get("steps") or (self.rows[-1]["iteration"] if self.rows else 0)
        return f"TrainedRun({', '.join(parts)}, {steps} iterations, {self.path})"


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
