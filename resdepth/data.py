"""Datasets as uint8 tensors on the training device, and the paper's augmentation applied to whole batches.

kinds: cifar10 / cifar100 / fashion_mnist (torchvision, md5-checked, downloaded when missing and the network
allows; Fashion-MNIST is 28x28 grayscale, so its nets take one input channel and crop 28x28),
image_folder (train/<class>/*, test/<class>/* as a folder or .tar/.tar.gz; decoded once, cached as uint8),
synthetic (generated, deterministic, learnable; no files).

Preprocessing as in the paper: per-pixel mean (computed on the training images) subtracted; for training, 4 zero
pixels padded on each side and a random 32x32 crop of the padded image or of its horizontal flip, chosen per image.
The whole data path is tensor operations on the device that holds the data: batches are index slices of a
per-epoch permutation, with no DataLoader workers and no per-sample Python.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from .config import REPO_ROOT

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
PAD = 4  # pixels of zero padding on each side before the random crop
CACHE_VERSION = 1
# torchvision 0.29 deprecates its decoders in favour of TorchCodec; they are still the fastest here, and PIL is the
# fallback for when they go (or fail on a format).
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


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


def resolve_path(path: str) -> Path:
    """A user path: ~ expanded; relative paths are taken from the cwd if they exist there, else the repo root."""
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


# ---------------------------------------------------------------------------------------------------- cifar


def load_cifar(kind: str, root: str, download: bool) -> tuple[Split, Split, list[str]]:
    """CIFAR-10/100 through torchvision, md5-checked; raises DatasetError naming the bad file and the fix."""
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import check_integrity

    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    folder = resolve_path(root)
    base = folder / cls.base_folder

    def problems() -> list[str]:
        files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
        return [f"{base / name} is {'corrupt (md5 mismatch)' if (base / name).exists() else 'missing'}"
                for name, md5 in files if not check_integrity(str(base / name), md5)]

    why = problems()
    if why and download:
        try:
            cls(str(folder), train=True, download=True)  # uses folder/<archive> if it is already there
        except Exception as e:  # no network, bad archive, ...
            why.append(f"download failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        else:
            why = problems()
    if why:
        archive = cls.filename
        raise DatasetError(
            f"{cls.__name__} not usable: {why[0]}"
            + (f"; {why[-1]}" if len(why) > 1 and why[-1].startswith("download") else "")
            + f". Fix: put {archive} (from {cls.url}) in {folder} and run again (it is md5-checked and unpacked), "
            f"or pass data.root=<folder holding {cls.base_folder}>; offline, DATA=cifar10_jpeg / data=cifar10_jpeg "
            f"uses the JPEG copy of CIFAR-10"
        )
    out = []
    for train in (True, False):
        ds = cls(str(folder), train=train, download=False)
        out.append(Split(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)))
    return out[0], out[1], list(ds.classes)


def load_fashion_mnist(root: str, download: bool) -> tuple[Split, Split, list[str]]:
    """Fashion-MNIST through torchvision: (N, 1, 28, 28) uint8. Its four .gz files are md5-checked when they are
    downloaded or put in <root>/FashionMNIST/raw by hand; raises DatasetError naming the folder and the fix."""
    from torchvision.datasets import FashionMNIST

    folder = resolve_path(root)
    raw = folder / FashionMNIST.__name__ / "raw"
    try:
        splits = [FashionMNIST(str(folder), train=train, download=download) for train in (True, False)]
    except Exception as e:  # missing files and no network, a bad archive, a malformed idx file
        files = ", ".join(name for name, _ in FashionMNIST.resources)
        why = str(e).splitlines()[0].rstrip(" :") if str(e) else ""
        raise DatasetError(
            f"FashionMNIST not usable in {raw}: {type(e).__name__}: {why}. "
            f"Fix: put {files} (from {FashionMNIST.mirrors[0]}) in {raw} and run again (they are md5-checked and "
            f"unpacked), or pass data.root=<folder holding FashionMNIST/raw>") from None
    out = [Split(ds.data.unsqueeze(1).contiguous(), ds.targets.clone()) for ds in splits]
    return out[0], out[1], list(FashionMNIST.classes)


# --------------------------------------------------------------------------------------------- image folder


def _decode(data: bytes) -> torch.Tensor:
    """Decode one image file's bytes to uint8 (3, H, W)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except Exception:
        from PIL import Image  # formats torchvision.io cannot read (e.g. BMP, TIFF)

        with Image.open(io.BytesIO(data)) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def _place(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """('train'|'test', class) for a path .../train/<class>/<file>.<image ext>, else None."""
    if len(parts) < 3 or not parts[-1].lower().endswith(IMG_EXTENSIONS):
        return None
    split, cls = parts[-3], parts[-2]
    if split not in ("train", "test") or cls.startswith("."):
        return None
    return split, cls


def _iter_folder(root: Path) -> Iterator[tuple[tuple[str, ...], str, bytes | None]]:
    """(path parts, name, bytes) of the files under root; bytes only for those that could be images."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if p.is_file():
                parts = p.relative_to(root).parts
                yield parts, str(p), p.read_bytes() if _place(parts) else None


def _iter_tar(path: Path) -> Iterator[tuple[tuple[str, ...], str, bytes | None]]:
    """Members that could be images; never extracts anything to disk (links, devices, '..', absolute: skipped)."""
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            parts = PurePosixPath(m.name).parts
            if not m.isfile() or m.name.startswith("/") or ".." in parts:
                continue
            parts = tuple(p for p in parts if p != ".")
            data = tar.extractfile(m).read() if _place(parts) else None
            yield parts, f"{path}:{m.name}", data


def load_image_folder(path: str, cache_dir: str) -> tuple[Split, Split, list[str]]:
    """Decode train/<class>/*, test/<class>/* once and cache the uint8 tensors (keyed by path, size, mtime)."""
    src = resolve_path(path)
    if not src.exists():
        raise DatasetError(f"image_folder: data.path={path!r} not found (looked for {src}); give a folder or "
                           f".tar/.tar.gz holding train/<class>/* and test/<class>/* images")
    st = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CACHE_VERSION}".encode()).hexdigest()[:16]
    cache = Path(os.path.expanduser(cache_dir)) / f"image_folder-{src.name}-{key}.pt"
    if cache.exists():
        try:
            d = torch.load(cache, weights_only=True)
            return Split(d["train_x"], d["train_y"]), Split(d["test_x"], d["test_y"]), list(d["classes"])
        except Exception as e:  # a truncated or foreign cache file is rebuilt, not trusted
            warnings.warn(f"ignoring unreadable cache {cache}: {e}")

    is_archive = src.is_file()
    if is_archive and not tarfile.is_tarfile(src):
        raise DatasetError(f"image_folder: {src} is neither a folder nor a .tar/.tar.gz archive")
    print(f"decoding {src} once (cached afterwards in {cache.parent}) ...", file=sys.stderr, flush=True)
    images: dict[str, list[tuple[str, torch.Tensor, str]]] = {"train": [], "test": []}  # (class, image, name)
    skipped: list[str] = []
    try:
        items = _iter_tar(src) if is_archive else _iter_folder(src)
        for parts, name, data in items:
            place = _place(parts)
            if place is None:
                continue
            try:
                img = _decode(data)
            except Exception:
                skipped.append(name)
                continue
            images[place[0]].append((place[1], img, name))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"image_folder: cannot read {src}: {type(e).__name__}: {e}") from None
    if skipped:
        warnings.warn(f"image_folder: skipped {len(skipped)} unreadable image file(s), first: {skipped[0]}")
    for split in ("train", "test"):
        if not images[split]:
            raise DatasetError(f"image_folder: {src} has no {split}/<class>/<image> files; expected "
                               f"train/<class>/* and test/<class>/* (ImageFolder layout)")
    classes = sorted({c for c, _, _ in images["train"]})
    extra = sorted({c for c, _, _ in images["test"]} - set(classes))
    if extra:
        raise DatasetError(f"image_folder: test classes {extra} in {src} have no training images")
    shape = images["train"][0][1].shape
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for split in ("train", "test"):
        for _, img, name in images[split]:
            if img.shape != shape:
                raise DatasetError(f"image_folder: {name} is {tuple(img.shape[1:])}, the first image is "
                                   f"{tuple(shape[1:])}; all images must have one size")
        x = torch.stack([img for _, img, _ in images[split]])
        y = torch.tensor([index[c] for c, _, _ in images[split]])
        splits.append(Split(x, y))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save({"train_x": splits[0].images, "train_y": splits[0].labels, "test_x": splits[1].images,
                "test_y": splits[1].labels, "classes": classes}, tmp)
    os.replace(tmp, cache)
    return splits[0], splits[1], classes


# ------------------------------------------------------------------------------------------------ synthetic


def make_synthetic(train_size: int, test_size: int, num_classes: int) -> tuple[Split, Split, list[str]]:
    """Class templates (smooth random colour patterns) plus per-image noise and shifts: learnable in ~100 steps."""
    g = torch.Generator().manual_seed(20160612)
    templates = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=32, mode="bilinear")

    def split(n: int) -> Split:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        x = templates[y] * 0.7 + 0.3 * torch.rand(n, 3, 32, 32, generator=g)
        shift = torch.randint(-3, 4, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=shift, dims=(2, 3))
        return Split((x * 255).round().clamp(0, 255).to(torch.uint8), y)

    return split(train_size), split(test_size), [f"class{i}" for i in range(num_classes)]


def load(cfg) -> tuple[Split, Split, list[str]]:
    """(train, test, class names) for a DataConfig."""
    kind = getattr(cfg["kind"], "value", cfg["kind"])
    if kind in ("cifar10", "cifar100"):
        return load_cifar(kind, cfg["root"], cfg["download"])
    if kind == "fashion_mnist":
        return load_fashion_mnist(cfg["root"], cfg["download"])
    if kind == "image_folder":
        if not cfg["path"]:
            raise DatasetError("image_folder needs data.path=<folder or .tar/.tar.gz>")
        return load_image_folder(cfg["path"], cfg["cache_dir"])
    if kind == "synthetic":
        return make_synthetic(cfg["train_size"], cfg["test_size"], cfg["num_classes"])
    raise DatasetError(f"data.kind={kind!r} is not one of cifar10, cifar100, fashion_mnist, image_folder, synthetic")


# ----------------------------------------------------------------------------------------------- augmentation


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Zero-pad x (N, C, H, W) by PAD and take, per image, the HxW crop at (dy, dx), mirrored where flip.

    dy, dx in [0, 2*PAD]; one gather for the whole batch, on x's device.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (N, H)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip_params(n: int, generator: torch.Generator, device) -> tuple[torch.Tensor, ...]:
    """Per-image crop offsets, uniform over the (2*PAD+1)^2 positions, and flips with probability 1/2."""
    offsets = torch.randint(0, 2 * PAD + 1, (2, n), generator=generator, device=device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return offsets[0], offsets[1], flip


class TrainBatches:
    """An endless stream of training batches starting at iteration `start`: batch k of epoch e is slice k of a
    permutation drawn from (seed, e), with crop/flip parameters from the same draw. A pure function of
    (seed, iteration), so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, split: Split, batch_size: int, seed: int, start: int = 0) -> None:
        if len(split) < batch_size:
            raise DatasetError(f"optim.batch_size={batch_size} is larger than the training set ({len(split)})")
        self.split, self.batch_size, self.seed, self.start = split, batch_size, seed, start
        self.per_epoch = len(split) // batch_size  # the last incomplete batch of an epoch is dropped

    def _epoch(self, epoch: int) -> tuple[torch.Tensor, ...]:
        device = self.split.labels.device
        g = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.split)
        return (torch.randperm(n, generator=g, device=device), *random_crop_flip_params(n, g, device))

    def __iter__(self):
        step = self.start
        epoch, draws = -1, None
        while True:
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, draws = e, self._epoch(e)
            s = slice(k * self.batch_size, (k + 1) * self.batch_size)
            perm, dy, dx, flip = (d[s] for d in draws)
            yield self.split.images[perm], self.split.labels[perm], dy, dx, flip
            step += 1


class DataModule(pl.LightningDataModule):
    """Loads a dataset once, holds it on the training device as uint8, and augments whole batches there."""

    def __init__(self, cfg, *, batch_size: int, seed: int) -> None:
        super().__init__()
        self.cfg, self.batch_size, self.seed = cfg, batch_size, seed
        self.train: Split | None = None
        self.eval_splits: dict[str, Split] = {}
        self.classes: list[str] = []
        self.mean: torch.Tensor | None = None  # per-pixel mean of the training images, in [0, 1]

    def load(self) -> "DataModule":
        """Read (or generate) the data and make the val split and the test subset; idempotent, on the CPU."""
        if self.train is not None:
            return self
        train, test, self.classes = load(self.cfg)
        val_size, test_subset = int(self.cfg["val_size"]), int(self.cfg["test_subset"])
        if not 0 <= val_size < len(train):
            raise DatasetError(f"data.val_size={val_size} must be in [0, {len(train) - 1}] for this training set")
        if not 0 <= test_subset <= len(test):
            raise DatasetError(f"data.test_subset={test_subset} must be in [0, {len(test)}] (0: whole test set)")
        # Fixed split, independent of the run's seed, so every seed and depth is judged on the same images.
        g = torch.Generator().manual_seed(0)
        if val_size:
            perm = torch.randperm(len(train), generator=g)
            val = Split(train.images[perm[:val_size]], train.labels[perm[:val_size]])
            train = Split(train.images[perm[val_size:]], train.labels[perm[val_size:]])
            self.eval_splits["val"] = val
        if test_subset:
            idx = torch.randperm(len(test), generator=g)[:test_subset].sort().values
            test = Split(test.images[idx], test.labels[idx])
        self.eval_splits["test"] = test
        if len(train) < self.batch_size:  # found here, before a run directory or a record is written
            raise DatasetError(f"optim.batch_size={self.batch_size} is larger than the training set ({len(train)} "
                               f"images{' after data.val_size' if val_size else ''}); allowed: 1 to {len(train)}")
        self.train = train
        self.mean = train.images.double().mean(0).div(255).float()
        return self

    @property
    def in_channels(self) -> int:
        return self.load().train.images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.load().classes)

    def to(self, device: torch.device) -> "DataModule":
        self.load()
        self.train = self.train.to(device)
        self.eval_splits = {k: v.to(device) for k, v in self.eval_splits.items()}
        self.mean = self.mean.to(device)
        return self

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.to(device)

    def train_dataloader(self) -> TrainBatches:
        start = self.trainer.global_step if self.trainer is not None else 0
        return TrainBatches(self.train, self.batch_size, self.seed, start)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float with the per-pixel training mean subtracted (the paper's only preprocessing)."""
        return images.float().div_(255).sub_(self.mean)

    def augment(self, images: torch.Tensor, dy, dx, flip) -> torch.Tensor:
        return crop_flip(self.normalize(images), dy, dx, flip)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels, dy, dx, flip = batch
        return self.augment(images, dy, dx, flip), labels
