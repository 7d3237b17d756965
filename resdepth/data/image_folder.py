"""The image-folder reader: train/<class>/*, test/<class>/* in a folder or a .tar/.tar.gz."""

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

from ..rundir import atomic_write, load_tensors
from .splits import DatasetError, Loaded, Split, resolve_path

# One file of an image folder: (path parts inside it, name for messages, size in bytes, its reader)
Entry = tuple[tuple[str, ...], str, int, Callable[[], bytes]]
Images = dict[str, list[tuple[str, torch.Tensor, str]]]  # split -> [(class, uint8 (3, H, W), name)]

# torchvision 0.29 deprecates its decoders for TorchCodec; they are still the fastest here, and PIL
# is the fallback for when they go (or fail on a format).
warnings.filterwarnings("ignore", category=DeprecationWarning,
                        message="The image decoding and encoding capabilities of TorchVision")


def _decode(data: bytes) -> torch.Tensor:
    """Decode one image file's bytes to uint8 (3, H, W)."""
    from torchvision.io import ImageReadMode, decode_image

    from torchvision.transforms.v2.functional import to_dtype

    try:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        # a 16-bit PNG decodes to uint16: scaled to 8 bits, as every other image
        return to_dtype(decode_image(raw, mode=ImageReadMode.RGB), torch.uint8, scale=True)
    except Exception:
        from PIL import Image  # formats torchvision.io cannot read (e.g. BMP, TIFF)

        with Image.open(io.BytesIO(data)) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def _decoded_bytes(data: bytes) -> int:
    """Bytes of the uint8 RGB image `data` decodes to, from its header; 0 where PIL cannot tell."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return 3 * im.width * im.height
    except Image.DecompressionBombError:  # PIL's own refusal, at about 179M pixels
        return sys.maxsize
    except Exception:  # a format PIL does not know: decoding will tell
        return 0


# torchvision's IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _place(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """('train'|'test', class) for a path .../train/<class>/<file>.<image ext>, else None."""
    if len(parts) < 3 or not parts[-1].lower().endswith(IMG_EXTENSIONS):
        return None
    split, cls = parts[-3], parts[-2]
    if split not in ("train", "test") or cls.startswith("."):
        return None
    return split, cls


def _folder_files(root: Path) -> list[tuple[str, int, int, int]]:
    """(POSIX path relative to root, bytes, mtime in ns) of every file under root, sorted."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if p.is_file():
                st = p.stat()
                # ctime too: `mv` of two files of one size keeps their mtimes, not ctimes
                files.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns,
                              st.st_ctime_ns))
    return files


def _folder_entries(root: Path, files: list[tuple[str, int, int, int]]) -> Iterator[Entry]:
    for rel, size, *_ in files:
        path = root / rel
        yield PurePosixPath(rel).parts, str(path), size, path.read_bytes


def _tar_entries(path: Path) -> Iterator[Entry]:
    """Regular-file members, read only when asked; nothing is extracted to disk."""
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            parts = PurePosixPath(m.name).parts
            if not m.isfile() or m.name.startswith("/") or ".." in parts:
                continue
            name = f"{path}:{m.name}"
            yield tuple(p for p in parts if p != "."), name, m.size, tar.extractfile(m).read


def _warn_skipped(names: list[str], why: str) -> None:
    if names:
        warnings.warn(f"image_folder: skipped {len(names)} {why}: {', '.join(names[:3])}"
                      + (", ..." if len(names) > 3 else ""))


# A file above this, on disk or decoded, is skipped unread: a 4096x4096 RGB bitmap is 48 MiB, while
# a stray video, disk image or decompression bomb is larger.
MAX_IMAGE_BYTES = 64 * 2**20
# Decoded bytes one image folder may hold, in memory (briefly twice, while stacked), then on the
# device: 23x CIFAR-10's 184 MB; ImageNet at 32x32 (4.09e9 bytes) fits.
MAX_DATASET_BYTES = 4 * 2**30


def _decode_all(src: Path, entries: Iterable[Entry]) -> Images:
    """The train/ and test/ images in reading order; too large or unreadable: skipped, warned."""
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
                               f"({MAX_DATASET_BYTES / 2**30:g} GiB) of decoded images, "
                               f"the most resdepth holds in memory (data.MAX_DATASET_BYTES); "
                               f"passed at {name}")
        images[place[0]].append((place[1], img, name))
    _warn_skipped(too_large, f"file(s) over {MAX_IMAGE_BYTES >> 20} MiB on disk or decoded, "
                             f"far beyond any image these nets train on (data.MAX_IMAGE_BYTES), "
                             f"unread")
    _warn_skipped(unreadable, "unreadable image file(s)")
    return images


def _assemble(src: Path, images: Images) -> Loaded:
    """The stacked splits, labelled by the sorted train/ class folders; DatasetError if unusable."""
    for split in ("train", "test"):
        if not images[split]:
            raise DatasetError(f"image_folder: {src} has no {split}/<class>/<image> files; "
                               f"expected train/<class>/* and test/<class>/* (ImageFolder layout)")
    classes = sorted({c for c, _, _ in images["train"]})
    if len(classes) < 2:
        raise DatasetError(f"image_folder: {src} has 1 class in train/ ({classes[0]}); "
                           f"a classifier needs at least 2, one folder of images each "
                           f"(train/<class>/*)")
    extra = sorted({c for c, _, _ in images["test"]} - set(classes))
    if extra:
        raise DatasetError(f"image_folder: test classes {extra} in {src} have no training images")
    shape = images["train"][0][1].shape
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for split in ("train", "test"):
        for _, img, name in images[split]:
            if img.shape != shape:
                raise DatasetError(f"image_folder: {name} is {tuple(img.shape[1:])}, "
                                   f"the first image is {tuple(shape[1:])}; "
                                   f"all images must have one size")
        x = torch.stack([img for _, img, _ in images[split]])
        y = torch.tensor([index[c] for c, _, _ in images[split]])
        splits.append(Split(x, y))
    return splits[0], splits[1], classes


CACHE_VERSION = 2  # 2: cache files are named by their source too, so a rebuilt one replaces the old


def _cache_file(src: Path, files: list[tuple[str, int, int, int]] | None,
                cache_dir: str) -> Path:
    """The cache of src: named by its path, keyed by each file's relative path, size and mtime."""
    if files is None:
        st = src.stat()
        files = [(src.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns)]
    source = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:8]
    key_text = json.dumps([CACHE_VERSION, str(src.resolve()), files])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    return Path(os.path.expanduser(cache_dir)) / f"image_folder-{src.name}-{source}-{key}.pt"


def _read_cache(cache: Path) -> Loaded | None:
    if not cache.exists():
        return None
    try:
        d = load_tensors(cache)
        return (Split(d["train_x"], d["train_y"]), Split(d["test_x"], d["test_y"]),
                list(d["classes"]))
    except Exception as e:  # a truncated or foreign cache file is rebuilt, not trusted
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        warnings.warn(f"ignoring unreadable cache {cache}: {first}")
        return None


def _write_cache(cache: Path, loaded: Loaded) -> None:
    """Write atomically, then remove the caches of the source's earlier contents."""
    train, test, classes = loaded
    cache.parent.mkdir(parents=True, exist_ok=True)
    data = {"train_x": train.images, "train_y": train.labels,
            "test_x": test.images, "test_y": test.labels, "classes": classes}
    atomic_write(cache, lambda tmp: torch.save(data, tmp))
    source = cache.name.rsplit("-", 1)[0]  # image_folder-<name>-<hash of its path>
    for old in cache.parent.glob(f"{glob.escape(source)}-{'[0-9a-f]' * 16}.pt"):
        if old != cache:
            old.unlink(missing_ok=True)


# By hand, not torchvision's ImageFolder: it reads .tar archives too, decodes once into cached
# uint8 tensors, and bounds memory.
def load_image_folder(path: str, cache_dir: str) -> Loaded:
    """(train, test, class names) of a folder or .tar/.tar.gz, decoded once, cached in cache_dir."""
    src = resolve_path(path)
    if not src.exists():
        raise DatasetError(f"image_folder: data.path={path!r} not found (looked for {src}); "
                           f"give a folder or .tar/.tar.gz holding train/<class>/* and "
                           f"test/<class>/* images")
    files = None if src.is_file() else _folder_files(src)  # None: an archive
    cache = _cache_file(src, files, cache_dir)
    loaded = _read_cache(cache)
    if loaded is not None:
        return loaded
    if files is None and not tarfile.is_tarfile(src):
        raise DatasetError(f"image_folder: {src} is neither a folder nor a .tar/.tar.gz archive")
    print(f"decoding {src} once (cached afterwards in {cache.parent}) ...",
          file=sys.stderr, flush=True)
    entries = _tar_entries(src) if files is None else _folder_entries(src, files)
    try:
        images = _decode_all(src, entries)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"image_folder: cannot read {src}: {type(e).__name__}: {e}") from None
    loaded = _assemble(src, images)
    try:
        _write_cache(cache, loaded)
    except OSError as e:  # a read-only or full cache folder: the cache is a courtesy, not the run
        warnings.warn(f"image_folder: cannot cache the decoded images in {cache.parent} "
                      f"({e.strerror or e}); they are decoded again next time (data.cache_dir)")
    return loaded
