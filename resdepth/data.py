"""Datasets as uint8 tensors on the training device, and the paper's augmentation applied to whole batches.

Datasets are a registry, DATASETS: data.kind -> loader, where a loader is a function of the data config (a dict)
that returns (train Split, test Split, class names). Registered here:
cifar10 / cifar100 / fashion_mnist (torchvision, md5-checked, downloaded when missing and the network allows;
Fashion-MNIST is 28x28 grayscale, so its nets take one input channel and crop 28x28),
image_folder (train/<class>/*, test/<class>/* as a folder or .tar/.tar.gz; decoded once, cached as uint8),
synthetic (generated, deterministic, learnable; no files).
A new dataset is one loader, registered with register_dataset(kind, loader), plus one conf/data/<name>.yaml that
extends _common and sets `kind: <kind>`; error messages list whatever is registered.

Preprocessing as in the paper: per-pixel mean (computed on the training images) subtracted; for training, data.pad
zero pixels (the paper's 4) padded on each side and a random crop of the image's size from the padded image or from
its horizontal flip, chosen per image.
The whole data path is tensor operations on the device that holds the data: batches are index slices of a
per-epoch permutation, with no DataLoader workers and no per-sample Python.

Imports only rundir (for the cache's atomic write); knows nothing of models or training.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import sys
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from .rundir import REPO_ROOT, atomic_write

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
CACHE_VERSION = 2  # 2: cache files named by their source as well, so a rebuilt one replaces the stale one
# An image folder's file (or archive member) above this many bytes, on disk or decoded, is skipped unread: an
# uncompressed 4096x4096 RGB bitmap is 48 MiB, far beyond the images these nets train on, while a stray video, disk
# image or decompression bomb is larger.
MAX_IMAGE_BYTES = 64 * 2**20
# The most decoded uint8 image bytes one image folder may hold: they stay in memory (briefly twice, while they are
# stacked) and then on the training device. 23x CIFAR-10's 184 MB; ImageNet at 32x32 (4.09e9 bytes) fits.
MAX_DATASET_BYTES = 4 * 2**30
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


Loaded = tuple[Split, Split, list[str]]  # (train, test, class names)
Loader = Callable[[Mapping[str, Any]], Loaded]  # data config -> Loaded


def resolve_path(path: str) -> Path:
    """A user path: ~ expanded; a relative path is taken from the cwd. In a source tree (a clone, or an editable
    install of one) a relative path that is not in the cwd is taken from the repository root, so a clone's data/
    serves every folder. An installed resdepth never resolves a path into its own installation."""
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or p.exists() or not in_source_tree():
        return p
    return REPO_ROOT / p


def in_source_tree() -> bool:
    """resdepth runs from its repository (pyproject.toml and conf/ beside the package), not from an installed
    wheel (whose parent folder is site-packages)."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "conf" / "config.yaml").is_file()


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

# One file of an image folder: (path parts inside it, name for messages, size in bytes, a function reading its bytes)
Entry = tuple[tuple[str, ...], str, int, Callable[[], bytes]]
Images = dict[str, list[tuple[str, torch.Tensor, str]]]  # split -> [(class, uint8 (3, H, W), name)]


def _decode(data: bytes) -> torch.Tensor:
    """Decode one image file's bytes to uint8 (3, H, W)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except Exception:
        from PIL import Image  # formats torchvision.io cannot read (e.g. BMP, TIFF)

        with Image.open(io.BytesIO(data)) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def _decoded_bytes(data: bytes) -> int:
    """Bytes of the uint8 RGB image that `data` decodes to, read from its header alone; 0 where PIL cannot tell."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return 3 * im.width * im.height
    except Image.DecompressionBombError:  # PIL's own refusal, at about 179M pixels
        return sys.maxsize
    except Exception:  # a format PIL does not know: decoding will tell
        return 0


def _place(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """('train'|'test', class) for a path .../train/<class>/<file>.<image ext>, else None."""
    if len(parts) < 3 or not parts[-1].lower().endswith(IMG_EXTENSIONS):
        return None
    split, cls = parts[-3], parts[-2]
    if split not in ("train", "test") or cls.startswith("."):
        return None
    return split, cls


def _folder_files(root: Path) -> list[tuple[str, int, int]]:
    """(POSIX path relative to root, size in bytes, mtime in ns) of every file under root, in reading order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if p.is_file():
                st = p.stat()
                files.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return files


def _folder_entries(root: Path, files: list[tuple[str, int, int]]) -> Iterator[Entry]:
    for rel, size, _ in files:
        path = root / rel
        yield PurePosixPath(rel).parts, str(path), size, path.read_bytes


def _tar_entries(path: Path) -> Iterator[Entry]:
    """Regular-file members, read only when asked; never extracts anything to disk (links, devices, '..', absolute:
    skipped)."""
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            parts = PurePosixPath(m.name).parts
            if not m.isfile() or m.name.startswith("/") or ".." in parts:
                continue
            yield tuple(p for p in parts if p != "."), f"{path}:{m.name}", m.size, tar.extractfile(m).read


def _warn_skipped(names: list[str], why: str) -> None:
    if names:
        warnings.warn(f"image_folder: skipped {len(names)} {why}: {', '.join(names[:3])}"
                      + (", ..." if len(names) > 3 else ""))


def _decode_all(src: Path, entries: Iterable[Entry]) -> Images:
    """The images of train/<class>/* and test/<class>/*, in reading order. A file over MAX_IMAGE_BYTES is skipped
    without being read (or decoded, if only its decoded size is over) and an unreadable one skipped, each named in
    a warning; DatasetError when the decoded images pass MAX_DATASET_BYTES."""
    images: Images = {"train": [], "test": []}
    too_large: list[str] = []
    unreadable: list[str] = []
    total = 0  # decoded bytes held
    for parts, name, size, read in entries:
        place = _place(parts)
        if place is None:
            continue
        if size > MAX_IMAGE_BYTES:  # known before reading: such a file must not reach memory
            too_large.append(name)
            continue
        data = read()
        if _decoded_bytes(data) > MAX_IMAGE_BYTES:
            too_large.append(name)
            continue
        try:
            img = _decode(data)
        except Exception:
            unreadable.append(name)
            continue
        total += img.numel()
        if total > MAX_DATASET_BYTES:
            raise DatasetError(f"image_folder: {src} holds more than {MAX_DATASET_BYTES:,} bytes "
                               f"({MAX_DATASET_BYTES / 2**30:g} GiB) of decoded images, the most resdepth holds in "
                               f"memory (data.MAX_DATASET_BYTES); passed at {name}")
        images[place[0]].append((place[1], img, name))
    _warn_skipped(too_large, f"file(s) over {MAX_IMAGE_BYTES >> 20} MiB on disk or decoded, far beyond any image "
                             f"these nets train on (data.MAX_IMAGE_BYTES), unread")
    _warn_skipped(unreadable, "unreadable image file(s)")
    return images


def _assemble(src: Path, images: Images) -> Loaded:
    """The stacked splits, labelled by the sorted training class folders; DatasetError for a missing split, fewer
    than 2 classes, a test class without training images, or images of different sizes."""
    for split in ("train", "test"):
        if not images[split]:
            raise DatasetError(f"image_folder: {src} has no {split}/<class>/<image> files; expected "
                               f"train/<class>/* and test/<class>/* (ImageFolder layout)")
    classes = sorted({c for c, _, _ in images["train"]})
    if len(classes) < 2:
        raise DatasetError(f"image_folder: {src} has 1 class in train/ ({classes[0]}); a classifier needs at least 2, "
                           f"one folder of images each (train/<class>/*)")
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
    return splits[0], splits[1], classes


def _cache_file(src: Path, files: list[tuple[str, int, int]] | None, cache_dir: str) -> Path:
    """Where src's decoded tensors are cached: named by src's resolved path and keyed by everything they are built
    from (a folder: every file's relative path, size and mtime; an archive, one file: its size and mtime)."""
    if files is None:
        st = src.stat()
        files = [(src.name, st.st_size, st.st_mtime_ns)]
    source = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:8]
    key = hashlib.sha256(json.dumps([CACHE_VERSION, str(src.resolve()), files]).encode()).hexdigest()[:16]
    return Path(os.path.expanduser(cache_dir)) / f"image_folder-{src.name}-{source}-{key}.pt"


def _read_cache(cache: Path) -> Loaded | None:
    if not cache.exists():
        return None
    try:
        d = torch.load(cache, weights_only=True)
        return Split(d["train_x"], d["train_y"]), Split(d["test_x"], d["test_y"]), list(d["classes"])
    except Exception as e:  # a truncated or foreign cache file is rebuilt, not trusted
        warnings.warn(f"ignoring unreadable cache {cache}: {e}")
        return None


def _write_cache(cache: Path, loaded: Loaded) -> None:
    """Write atomically, then remove the caches of the same source's earlier contents: one file per source stays."""
    train, test, classes = loaded
    cache.parent.mkdir(parents=True, exist_ok=True)
    data = {"train_x": train.images, "train_y": train.labels, "test_x": test.images, "test_y": test.labels,
            "classes": classes}
    atomic_write(cache, lambda tmp: torch.save(data, tmp))
    source = cache.name.rsplit("-", 1)[0]  # image_folder-<name>-<hash of its path>
    for old in cache.parent.glob(f"{glob.escape(source)}-{'[0-9a-f]' * 16}.pt"):
        if old != cache:
            old.unlink(missing_ok=True)


def load_image_folder(path: str, cache_dir: str) -> Loaded:
    """(train, test, class names) of train/<class>/*, test/<class>/* in a folder or a .tar/.tar.gz of one, decoded
    once and cached as uint8 tensors under cache_dir; any change to the files rebuilds the cache (see _cache_file).
    Memory stays bounded: see _decode_all. DatasetError, naming the file, for what cannot be used."""
    src = resolve_path(path)
    if not src.exists():
        raise DatasetError(f"image_folder: data.path={path!r} not found (looked for {src}); give a folder or "
                           f".tar/.tar.gz holding train/<class>/* and test/<class>/* images")
    files = None if src.is_file() else _folder_files(src)  # None: an archive
    cache = _cache_file(src, files, cache_dir)
    loaded = _read_cache(cache)
    if loaded is not None:
        return loaded
    if files is None and not tarfile.is_tarfile(src):
        raise DatasetError(f"image_folder: {src} is neither a folder nor a .tar/.tar.gz archive")
    print(f"decoding {src} once (cached afterwards in {cache.parent}) ...", file=sys.stderr, flush=True)
    try:
        images = _decode_all(src, _tar_entries(src) if files is None else _folder_entries(src, files))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"image_folder: cannot read {src}: {type(e).__name__}: {e}") from None
    loaded = _assemble(src, images)
    _write_cache(cache, loaded)
    return loaded


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


# ------------------------------------------------------------------------------------------------- registry


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


DATASETS: dict[str, Loader] = {"cifar10": _cifar10, "cifar100": _cifar100, "fashion_mnist": _fashion_mnist,
                               "image_folder": _image_folder, "synthetic": _synthetic}


def register_dataset(kind: str, loader: Loader) -> None:
    """Make data.kind=<kind> load with `loader` (data config -> (train, test, class names)); registering a kind
    again replaces its loader."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"a dataset kind is a non-empty string, not {kind!r}")
    if not callable(loader):
        raise TypeError(f"the loader of data.kind={kind!r} must be callable, not {loader!r}")
    DATASETS[kind] = loader


def check_kind(kind: str) -> str:
    """kind, when a loader is registered for it; else ValueError naming it and the registered kinds."""
    if kind not in DATASETS:
        raise ValueError(f"data.kind={kind!r} is not a registered dataset; registered: {', '.join(sorted(DATASETS))}")
    return kind


def load(cfg: Mapping[str, Any]) -> Loaded:
    """(train, test, class names) for a data config, from the loader registered for data.kind; DatasetError for an
    unknown kind or a dataset of fewer than 2 classes."""
    kind = str(cfg["kind"])
    try:
        check_kind(kind)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    train, test, classes = DATASETS[kind](cfg)
    if len(classes) < 2:
        raise DatasetError(f"data.kind={kind!r} gave {len(classes)} class(es) {classes}; a classifier needs at least 2")
    return train, test, classes


# ----------------------------------------------------------------------------------------------- augmentation


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, *, pad: int = 4
              ) -> torch.Tensor:
    """Zero-pad x (N, C, H, W) by `pad` pixels on each side (data.pad; the paper's 4) and take, per image, the HxW
    crop at (dy, dx), mirrored where flip.

    dy, dx in [0, 2*pad]; one gather for the whole batch, on x's device.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (N, H)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip_params(n: int, generator: torch.Generator, device, *, pad: int = 4) -> tuple[torch.Tensor, ...]:
    """Per-image crop offsets (dy, dx), uniform over the (2*pad+1)^2 positions of crop_flip with the same `pad`
    (pixels), and flips with probability 1/2."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return offsets[0], offsets[1], flip


class TrainBatches:
    """An endless stream of training batches starting at iteration `start`: batch k of epoch e is slice k of a
    permutation drawn from (seed, e), with crop/flip parameters from the same draw. A pure function of
    (seed, iteration), so a resumed run sees exactly the batches it would have seen. Crop offsets are for padding
    by `pad` pixels (data.pad): the `pad` that crop_flip is given."""

    def __init__(self, split: Split, batch_size: int, seed: int, start: int = 0, *, pad: int = 4) -> None:
        if len(split) < batch_size:
            raise DatasetError(f"optim.batch_size={batch_size} is larger than the training set ({len(split)})")
        self.split, self.batch_size, self.seed, self.start, self.pad = split, batch_size, seed, start, pad
        self.per_epoch = len(split) // batch_size  # the last incomplete batch of an epoch is dropped

    def _epoch(self, epoch: int) -> tuple[torch.Tensor, ...]:
        device = self.split.labels.device
        g = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.split)
        return (torch.randperm(n, generator=g, device=device), *random_crop_flip_params(n, g, device, pad=self.pad))

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
        self.pad = int(cfg.get("pad", 4))  # (4: records from before data.pad existed) pixels of zero padding on each side before the random crop
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
        return TrainBatches(self.train, self.batch_size, self.seed, start, pad=self.pad)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float with the per-pixel training mean subtracted (the paper's only preprocessing)."""
        return images.float().div_(255).sub_(self.mean)

    def augment(self, images: torch.Tensor, dy, dx, flip) -> torch.Tensor:
        return crop_flip(self.normalize(images), dy, dx, flip, pad=self.pad)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels, dy, dx, flip = batch
        return self.augment(images, dy, dx, flip), labels
