"""The registered datasets: data.kind -> a loader of (train Split, test Split, class names)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from .image_folder import load_image_folder
from .splits import DatasetError, Loaded, Loader, Split, resolve_path


def load_cifar(kind: str, root: str, download: bool) -> Loaded:
    """CIFAR-10/100 through torchvision, md5-checked; DatasetError naming the bad file and fix."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import check_integrity

    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    folder = resolve_path(root)
    base = folder / cls.base_folder

    def problems() -> list[str]:
        files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
        return [f"{base / name} is "
                f"{'corrupt (md5 mismatch)' if (base / name).exists() else 'missing'}"
                for name, md5 in files if not check_integrity(str(base / name), md5)]

    why = problems()
    if why and download:
        try:
            cls(str(folder), train=True, download=True)  # uses folder/<archive> if it is there
        except Exception as e:  # no network, bad archive, ...
            first = str(e).splitlines()[0] if str(e) else ""
            why.append(f"download failed: {type(e).__name__}: {first}")
        else:
            why = problems()
    if why:
        raise DatasetError(_cifar_fix(cls, folder, why))
    out = []
    for train in (True, False):
        ds = cls(str(folder), train=train, download=False)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        out.append(Split(images, torch.tensor(ds.targets)))
    return out[0], out[1], list(ds.classes)


def _cifar_fix(cls, folder, why: list[str]) -> str:
    """The one-line message for an unusable CIFAR folder: the first problem and what to do."""
    return (f"{cls.__name__} not usable: {why[0]}"
            + (f"; {why[-1]}" if len(why) > 1 and why[-1].startswith("download") else "")
            + f". Fix: put {cls.filename} (from {cls.url}) in {folder} and run again "
            f"(it is md5-checked and unpacked), "
            f"or pass data.root=<folder holding {cls.base_folder}>; "
            f"offline, DATA=cifar10_jpeg / data=cifar10_jpeg "
            f"uses the JPEG copy of CIFAR-10")


def load_fashion_mnist(root: str, download: bool) -> Loaded:
    """Fashion-MNIST through torchvision, (N, 1, 28, 28) uint8; DatasetError naming the fix."""
    from torchvision.datasets import FashionMNIST

    folder = resolve_path(root)
    raw = folder / FashionMNIST.__name__ / "raw"
    try:
        splits = [FashionMNIST(str(folder), train=train, download=download)
                  for train in (True, False)]
    except Exception as e:  # missing files and no network, a bad archive, a malformed idx file
        files = ", ".join(name for name, _ in FashionMNIST.resources)
        why = str(e).splitlines()[0].rstrip(" :") if str(e) else ""
        raise DatasetError(
            f"FashionMNIST not usable in {raw}: {type(e).__name__}: {why}. "
            f"Fix: put {files} (from {FashionMNIST.mirrors[0]}) in {raw} and run again "
            f"(they are md5-checked and unpacked), "
            f"or pass data.root=<folder holding FashionMNIST/raw>") from None
    out = [Split(ds.data.unsqueeze(1).contiguous(), ds.targets.clone()) for ds in splits]
    return out[0], out[1], list(FashionMNIST.classes)


def make_synthetic(train_size: int, test_size: int, num_classes: int) -> Loaded:
    """Smooth random class templates plus per-image noise and shifts: learnable in ~100 steps."""
    g = torch.Generator().manual_seed(20160612)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=32, mode="bilinear")

    def split(n: int) -> Split:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = templates[y] * 0.7 + 0.3 * torch.rand(n, 3, 32, 32, generator=g)
        shift = torch.randint(-3, 4, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=shift, dims=(2, 3))
        return Split((x * 255).round().clamp(0, 255).to(torch.uint8), y)

    return split(train_size), split(test_size), [f"class{i}" for i in range(num_classes)]


def _cifar10(cfg: Mapping[str, Any]) -> Loaded:
    return load_cifar("cifar10", cfg["root"], cfg["download"])


def _cifar100(cfg: Mapping[str, Any]) -> Loaded:
    return load_cifar("cifar100", cfg["root"], cfg["download"])


def _fashion_mnist(cfg: Mapping[str, Any]) -> Loaded:
    return load_fashion_mnist(cfg["root"], cfg["download"])


def _image_folder(cfg: Mapping[str, Any]) -> Loaded:
    if not cfg["path"]:
        raise DatasetError("image_folder needs data.path=<folder or .tar/.tar.gz>")
    return load_image_folder(cfg["path"], cfg["cache_dir"])


def _synthetic(cfg: Mapping[str, Any]) -> Loaded:
    return make_synthetic(cfg["train_size"], cfg["test_size"], cfg["num_classes"])


DATASETS: dict[str, Loader] = {"cifar10": _cifar10, "cifar100": _cifar100,
                               "fashion_mnist": _fashion_mnist, "image_folder": _image_folder,
                               "synthetic": _synthetic}


def register_dataset(kind: str, loader: Loader) -> None:
    """Make data.kind=<kind> load with `loader`, replacing any loader it had."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"a dataset kind is a non-empty string, not {kind!r}")
    if not callable(loader):
        raise TypeError(f"the loader of data.kind={kind!r} must be callable, not {loader!r}")
    DATASETS[kind] = loader


def check_kind(kind: str) -> str:
    """kind, when a loader is registered for it; else ValueError naming the registered kinds."""
    if kind not in DATASETS:
        raise ValueError(f"data.kind={kind!r} is not a registered dataset; "
                         f"registered: {', '.join(sorted(DATASETS))}")
    return kind


def load(cfg: Mapping[str, Any]) -> Loaded:
    """(train, test, class names) from data.kind's loader; DatasetError if it gives < 2 classes."""
    kind = str(cfg["kind"])
    try:
        check_kind(kind)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    train, test, classes = DATASETS[kind](cfg)
    if len(classes) < 2:
        raise DatasetError(f"data.kind={kind!r} gave {len(classes)} class(es) {classes}; "
                           f"a classifier needs at least 2")
    return train, test, classes
