"""The image-folder reader: train/<class>/*, test/<class>/* in a folder or a .tar/.tar.gz, decoded once."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import sys
import tarfile
import warnings
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..rundir import atomic_write
from .splits import DatasetError, Loaded, Split, resolve_path

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
