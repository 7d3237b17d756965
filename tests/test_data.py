import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms as T
from torchvision.datasets import CIFAR10, FashionMNIST

import resdepth.data as rdata
from resdepth.data import (DataModule, DatasetError, Split, TrainBatches, crop_flip,
                           random_crop_flip_params)

from .conftest import REPO, SHARED_JPEG, compose

# ------------------------------------------------------------------------------------- the registry


def _stripes(cfg) -> tuple[Split, Split, list[str]]:
    """A throwaway dataset: 40 16x16 images, class 1 striped."""
    y = torch.arange(40) % 2
    x = torch.zeros(40, 3, 16, 16, dtype=torch.uint8)
    x[y == 1, :, ::2] = 255
    return Split(x[:32], y[:32]), Split(x[32:], y[32:]), ["plain", "striped"]


def test_a_registered_dataset_loads_through_the_datamodule(monkeypatch):
    # the registration ends with this test
    monkeypatch.setattr(rdata.datasets, "DATASETS", dict(rdata.DATASETS))
    rdata.register_dataset("stripes", _stripes)
    assert rdata.check_kind("stripes") == "stripes"
    cfg = compose(["data=synthetic", "data.kind=stripes", "data.name=stripes"])["data"]
    dm = DataModule(cfg, batch_size=8, seed=0).load()
    assert dm.classes == ["plain", "striped"] and dm.num_classes == 2 and dm.in_channels == 3
    assert len(dm.train) == 32 and len(dm.eval_splits["test"]) == 8
    x, y = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape == (8, 3, 16, 16) and y.shape == (8,)


def test_an_unknown_kind_is_named_with_the_registered_kinds():
    with pytest.raises(ValueError) as e:
        rdata.check_kind("imagenet")
    msg = str(e.value)
    assert "'imagenet'" in msg and msg.endswith(
        "registered: cifar10, cifar100, fashion_mnist, image_folder, synthetic")
    cfg = {**compose(["data=synthetic"])["data"], "kind": "imagenet"}
    with pytest.raises(DatasetError) as e:
        DataModule(cfg, batch_size=8, seed=0).load()
    assert str(e.value) == msg


def test_a_dataset_of_one_class_is_refused(monkeypatch):
    monkeypatch.setattr(rdata.datasets, "DATASETS", dict(rdata.DATASETS))
    rdata.register_dataset("one", lambda cfg: (*_stripes(cfg)[:2], ["only"]))
    with pytest.raises(DatasetError,
                       match=r"data.kind='one' gave 1 class\(es\) \['only'\]; .* at least 2"):
        DataModule({**compose(["data=synthetic"])["data"], "kind": "one"}, batch_size=8,
                   seed=0).load()


# ----------------------------------------------------- cifar10 through torchvision's real code path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 10) -> dict:
    """Tiny files in the exact cifar-10-batches-py format; returns {file name: md5}."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, 0] = k  # first red pixel says which file a row came from
        data[:, 1024] = 200  # first green pixel (planes: R, then G, then B)
        labels = [int(x) for x in rng.integers(0, 10, n)]
        with open(base / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [""] * n}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"],
                     "num_vis": 3072, "num_cases_per_batch": per_batch}, f)
    return {p.name: _md5(p) for p in base.iterdir()}


@pytest.fixture
def cifar_md5s(monkeypatch):
    """Make torchvision expect the md5s of the test's own files (only the expected values change;
    the check runs)."""

    def install(md5s: dict):
        monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5s[f"data_batch_{i}"]]
                                                    for i in range(1, 6)])
        monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
        monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5s["batches.meta"]})

    return install


def cifar_cfg(root, **kw):
    cfg = compose(["data=cifar10", f"data.root={root}", "data.download=false"])["data"]
    cfg.update(kw)
    return cfg


def test_cifar10_loads_through_torchvision(tmp_path, cifar_md5s):
    cifar_md5s(write_cifar10(tmp_path))
    dm = DataModule(cifar_cfg(tmp_path), batch_size=8, seed=0).load()
    assert dm.train.images.shape == (100, 3, 32, 32) and dm.train.images.dtype == torch.uint8
    assert dm.eval_splits["test"].images.shape == (10, 3, 32, 32)
    assert dm.num_classes == 10 and dm.in_channels == 3
    # all five training files
    assert sorted(dm.train.images[:, 0, 0, 0].unique().tolist()) == [0, 1, 2, 3, 4]
    assert (dm.train.images[:, 1, 0, 0] == 200).all()  # row layout: R plane, then G plane
    assert (dm.eval_splits["test"].images[:, 0, 0, 0] == 5).all()


def test_cifar10_missing_file_names_it_and_the_fix(tmp_path, cifar_md5s):
    cifar_md5s(write_cifar10(tmp_path))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as e:
        DataModule(cifar_cfg(tmp_path), batch_size=8, seed=0).load()
    msg = str(e.value)
    assert ("data_batch_3 is missing" in msg and "cifar-10-python.tar.gz" in msg
            and str(tmp_path) in msg)
    assert "cifar10_jpeg" in msg and "\n" not in msg


def test_cifar10_corrupt_file_is_named(tmp_path, cifar_md5s):
    cifar_md5s(write_cifar10(tmp_path))
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    with pytest.raises(DatasetError, match=r"test_batch is corrupt \(md5 mismatch\)"):
        DataModule(cifar_cfg(tmp_path), batch_size=8, seed=0).load()


def test_cifar10_archive_placed_by_hand_is_used_offline(tmp_path, cifar_md5s, monkeypatch):
    src = tmp_path / "src"
    md5s = write_cifar10(src)
    cifar_md5s(md5s)
    archive = tmp_path / "root" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(CIFAR10, "tgz_md5", _md5(archive))
    monkeypatch.setattr(CIFAR10, "url", "http://0.0.0.0:9/unreachable")  # must not be needed
    dm = DataModule(cifar_cfg(tmp_path / "root", download=True), batch_size=8, seed=0).load()
    assert len(dm.train) == 100


# ----------------------------------------------- fashion_mnist through torchvision's real code path


def write_fashion_mnist(raw: Path, n_train: int = 40, n_test: int = 10, gz: bool = False) -> dict:
    """Tiny files in the exact idx format torchvision reads (big-endian header, then uint8 rows);
    with gz, the four .gz files as they are downloaded. Returns {file name: md5}."""
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = 7 if prefix == "train" else 9  # says which file a row came from
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, header, body in ((f"{prefix}-images-idx3-ubyte", (2051, n, 28, 28), images),
                                   (f"{prefix}-labels-idx1-ubyte", (2049, n), labels)):
            data = np.array(header, dtype=">i4").tobytes() + body.tobytes()
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (raw / name).write_bytes(data)
    return {p.name: _md5(p) for p in raw.iterdir()}


def test_fashion_mnist_loads_through_torchvision_with_one_channel(tmp_path):
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    cfg = compose(["data=fashion_mnist", f"data.root={tmp_path}", "data.download=false"])["data"]
    dm = DataModule(cfg, batch_size=8, seed=0).load()
    assert dm.train.images.shape == (40, 1, 28, 28) and dm.train.images.dtype == torch.uint8
    assert ((dm.train.images[:, 0, 0, 0] == 7).all()
            and (dm.eval_splits["test"].images[:, 0, 0, 0] == 9).all())
    assert dm.in_channels == 1 and dm.num_classes == 10 and dm.classes[0] == "T-shirt/top"
    assert dm.train.labels.tolist() == [i % 10 for i in range(40)]


def test_a_net_trains_on_fashion_mnist(tmp_path):
    from resdepth.training.train import train

    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    result = train(compose(["data=fashion_mnist", f"data.root={tmp_path}", "data.download=false",
                            "model.depth=8", "trainer.max_steps=4", "trainer.eval_every=2",
                            "optim.batch_size=8", f"results_root={tmp_path / 'runs'}"]))
    assert (result["status"] == "done" and result["steps"] == 4
            and result["dataset"] == "fashion_mnist")
    # ResNet-8: its 3x3 stem conv sees 1 channel, not 3
    assert result["params"] == 75_290 - (3 - 1) * 16 * 9


def test_fashion_mnist_placed_by_hand_is_md5_checked_offline(tmp_path, monkeypatch):
    md5s = write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    # must not be needed
    monkeypatch.setattr(FashionMNIST, "mirrors", ["http://0.0.0.0:9/unreachable/"])
    monkeypatch.setattr(FashionMNIST, "resources",
                        [(n, md5s[n]) for n, _ in FashionMNIST.resources])
    cfg = compose(["data=fashion_mnist", f"data.root={tmp_path}"])["data"]
    assert len(DataModule(cfg, batch_size=8, seed=0).load().train) == 40
    # unpacked again from its .gz
    (tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with open(tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", "r+b") as f:
        f.seek(20)
        f.write(b"garbage")
    with pytest.raises(DatasetError) as e:
        DataModule(cfg, batch_size=8, seed=0).load()
    msg = str(e.value)
    assert (msg.startswith(f"FashionMNIST not usable in {tmp_path / 'FashionMNIST' / 'raw'}: ")
            and "\n" not in msg)
    assert "put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in msg


# ------------------------------------------------------------------------------------ image folders


def test_cifar10_jpeg_archive_loads_and_its_cache_is_reused(tmp_cache, monkeypatch):
    if not SHARED_JPEG.exists():
        pytest.skip(f"{SHARED_JPEG} not present")
    cfg = compose(["data=cifar10_jpeg"])["data"]
    dm = DataModule(cfg, batch_size=128, seed=0).load()
    train, test = dm.train, dm.eval_splits["test"]
    assert train.images.shape == (50_000, 3, 32, 32) and test.images.shape == (10_000, 3, 32, 32)
    assert dm.classes[:3] == ["airplane", "automobile", "bird"] and dm.num_classes == 10
    assert (train.labels.bincount().tolist() == [5000] * 10
            and test.labels.bincount().tolist() == [1000] * 10)
    means = train.images.double().mean((0, 2, 3)) / 255
    # CIFAR-10's, as the README says
    assert means.tolist() == pytest.approx([0.4913, 0.4821, 0.4465], abs=2e-3)
    assert len(list(tmp_cache.rglob("*.pt"))) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(rdata.image_folder, "_decode", no_decoding)
    again = DataModule(cfg, batch_size=128, seed=0).load()
    assert (torch.equal(again.train.images, train.images)
            and torch.equal(again.train.labels, train.labels))


def test_a_cache_folder_that_cannot_be_written_is_skipped_with_a_warning(tmp_path):
    root = _folder(tmp_path / "imgs")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot cache the decoded images in .*a-file"):
        train, _, _ = rdata.load_image_folder(str(root), str(tmp_path / "a-file" / "cache"))
    assert len(train) == 2


def test_16_bit_images_are_scaled_to_8_bits_beside_8_bit_ones(tmp_path, tmp_cache):
    from PIL import Image

    root = _folder(tmp_path / "imgs")
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16)).save(buf, format="PNG")
    (root / "train" / "a" / "white16.png").write_bytes(buf.getvalue())
    train, _, _ = rdata.load_image_folder(str(root), str(tmp_cache))
    assert train.images.dtype == torch.uint8 and len(train) == 3
    assert int(train.images.max()) == 255  # white, not 65535 wrapped nor 257 after /255


def test_two_image_files_swapped_by_mv_are_read_again(tmp_path, tmp_cache):
    root = _folder(tmp_path / "imgs")
    a, b = root / "train" / "a" / "0.bmp", root / "train" / "b" / "0.bmp"  # one size, two colours
    first, _, _ = rdata.load_image_folder(str(root), str(tmp_cache))
    os.rename(a, tmp_path / "swap.bmp")
    os.rename(b, a)  # rename keeps each file's size and mtime
    os.rename(tmp_path / "swap.bmp", b)
    again, _, _ = rdata.load_image_folder(str(root), str(tmp_cache))
    assert torch.equal(again.images, first.images.flip(0))


def test_a_pickle_payload_as_the_dataset_cache_is_ignored_and_never_runs(tmp_path, tmp_cache):
    from .test_rundir import plant

    root, marker = _folder(tmp_path / "imgs"), tmp_path / "ran"
    first = rdata.load_image_folder(str(root), str(tmp_cache))
    cache, = tmp_cache.rglob("*.pt")
    plant(cache, marker)
    with pytest.warns(UserWarning, match="ignoring unreadable cache .* holds objects other than"):
        again = rdata.load_image_folder(str(root), str(tmp_cache))
    assert torch.equal(again[0].images, first[0].images) and not marker.exists()


def _png(colour) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **kw) -> None:
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_hostile_archive_never_writes_outside_and_never_crashes(tmp_path, tmp_cache, monkeypatch):
    archive = tmp_path / "hostile.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, "train/cat/a.png", _png((255, 0, 0)))
        _add(tar, "train/dog/b.png", _png((0, 255, 0)))
        _add(tar, "test/cat/c.png", _png((255, 0, 0)))
        _add(tar, "test/dog/d.png", _png((0, 255, 0)))
        _add(tar, "/abs/train/cat/x.png", _png((1, 1, 1)))
        _add(tar, "../evil/train/cat/y.png", _png((2, 2, 2)))
        _add(tar, "train/cat/link.png", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, "train/cat/hard.png", type=tarfile.LNKTYPE, linkname="train/cat/a.png")
        _add(tar, "train/cat/readme.txt", b"not an image")
        _add(tar, "train/cat/broken.png", b"\x89PNG definitely not")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = set(tmp_path.rglob("*"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, test, classes = rdata.load_image_folder(str(archive), str(tmp_cache))
    assert classes == ["cat", "dog"] and len(train) == 2 and len(test) == 2
    assert train.images[train.labels == 0][0, :, 0, 0].tolist() == [255, 0, 0]
    assert any("broken.png" in str(w.message) for w in caught)
    new = {p for p in set(tmp_path.rglob("*")) - before
           if tmp_cache not in p.parents and p != tmp_cache}
    assert new == set(), f"written outside the cache: {new}"
    assert not Path("/abs").exists() and not (tmp_path / "evil").exists()


def test_archive_without_train_or_test_says_so(tmp_path, tmp_cache):
    archive = tmp_path / "flat.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "images/cat/a.png", _png((255, 0, 0)))
    with pytest.raises(DatasetError, match="no train/<class>/<image> files"):
        rdata.load_image_folder(str(archive), str(tmp_cache))


def test_image_folder_from_a_directory(tmp_path, tmp_cache):
    for split in ("train", "test"):
        for cls, colour in (("a", (10, 20, 30)), ("b", (40, 50, 60))):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            (d / "0.png").write_bytes(_png(colour))
    train, test, classes = rdata.load_image_folder(str(tmp_path / "imgs"), str(tmp_cache))
    assert classes == ["a", "b"] and train.images[1, :, 5, 5].tolist() == [40, 50, 60]


def test_missing_image_folder_path(tmp_path, tmp_cache):
    with pytest.raises(DatasetError, match="not found"):
        rdata.load_image_folder(str(tmp_path / "nope.tar.gz"), str(tmp_cache))


def _image(colour, size: int = 32, fmt: str = "BMP") -> bytes:
    """One solid image; as BMP, its file size depends on its size alone, not on its pixels."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format=fmt)
    return buf.getvalue()


def _folder(root: Path, classes=("a", "b")) -> Path:
    """root/{train,test}/<class>/0.bmp, class k coloured (10k, 20, 30)."""
    for split in ("train", "test"):
        for k, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "0.bmp").write_bytes(_image((10 * k, 20, 30)))
    return root


def _later(path: Path, data: bytes) -> None:
    """Write data to path with an mtime 1 s after the old one, whatever the file system's clock
    resolution."""
    old = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(old + 10**9, old + 10**9))


def test_an_image_replaced_by_a_resized_one_is_seen(tmp_path, tmp_cache):
    root = _folder(tmp_path / "imgs")
    rdata.load_image_folder(str(root), str(tmp_cache))
    (root / "train" / "b" / "0.bmp").write_bytes(_image((1, 2, 3), size=40))
    with pytest.raises(DatasetError, match=r"b/0.bmp is \(40, 40\), the first image is \(32, 32\)"):
        rdata.load_image_folder(str(root), str(tmp_cache))


def test_an_image_edited_in_place_is_decoded_again(tmp_path, tmp_cache):
    rdata.load_image_folder(str(_folder(tmp_path / "other")), str(tmp_cache))
    root = _folder(tmp_path / "imgs")
    train, _, _ = rdata.load_image_folder(str(root), str(tmp_cache))
    assert train.images[0, :, 0, 0].tolist() == [0, 20, 30]
    path = root / "train" / "a" / "0.bmp"
    size = path.stat().st_size
    _later(path, _image((200, 100, 50)))
    assert path.stat().st_size == size  # same size, other pixels, a later mtime
    train, _, _ = rdata.load_image_folder(str(root), str(tmp_cache))
    assert train.images[0, :, 0, 0].tolist() == [200, 100, 50]
    # the stale cache was replaced; the other folder's stays
    assert len(list(tmp_cache.rglob("*.pt"))) == 2


def test_a_class_folder_added_appears(tmp_path, tmp_cache):
    root = _folder(tmp_path / "imgs")
    assert rdata.load_image_folder(str(root), str(tmp_cache))[2] == ["a", "b"]
    for split in ("train", "test"):
        (root / split / "c").mkdir()
        (root / split / "c" / "0.bmp").write_bytes(_image((90, 90, 90)))
    train, test, classes = rdata.load_image_folder(str(root), str(tmp_cache))
    assert classes == ["a", "b", "c"] and train.labels.tolist() == [0, 1, 2] and len(test) == 3


def test_an_archive_rewritten_is_decoded_again(tmp_path, tmp_cache):
    archive = tmp_path / "imgs.tar"
    for colour in ((255, 0, 0), (0, 0, 255)):
        with tarfile.open(tmp_path / "new.tar", "w") as tar:
            for name in ("train/a/0.png", "train/b/0.png", "test/a/0.png"):
                _add(tar, name, _png(colour))
        if archive.exists():
            _later(archive, (tmp_path / "new.tar").read_bytes())
        else:
            (tmp_path / "new.tar").rename(archive)
        train, _, _ = rdata.load_image_folder(str(archive), str(tmp_cache))
        assert train.images[0, :, 0, 0].tolist() == list(colour)
    assert len(list(tmp_cache.rglob("*.pt"))) == 1


def test_a_one_class_image_folder_is_refused_when_loaded(tmp_path, tmp_cache):
    root = _folder(tmp_path / "imgs", classes=("cat",))
    cfg = compose(["data=image_folder", f"data.path={root}"])["data"]
    with pytest.raises(DatasetError) as e:
        DataModule(cfg, batch_size=1, seed=0).load()
    msg = str(e.value)
    assert (str(root) in msg and "1 class in train/ (cat)" in msg and "at least 2" in msg
            and "\n" not in msg)
    assert not list(tmp_cache.rglob("*.pt"))


class _Zeros(io.RawIOBase):
    """n zero bytes, handed out piece by piece: a tar member far larger than what is ever held in
    memory."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        k = self.left if size < 0 else min(size, self.left)
        self.left -= k
        return bytes(k)


_LOAD_AND_MEASURE = """
import json, re, sys, warnings
from pathlib import Path

import PIL.Image, torchvision.io
from resdepth.data import load_image_folder

# this process's peak resident memory (ru_maxrss would count the parent's, from before exec)
def peak_mib():
    status = Path("/proc/self/status")
    found = re.search(r"VmHWM:\\s*(\\d+) kB", status.read_text()) if status.exists() else None
    return int(found.group(1)) / 1024 if found else None

before = peak_mib()  # the libraries alone: about 1 GB, most of it torch's shared libraries
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for src in sys.argv[1:3]:
        train, test, classes = load_image_folder(src, sys.argv[3])
        out[src] = [len(train), len(test), classes]
out["warnings"] = [str(w.message) for w in caught]
out["growth_mib"] = peak_mib() - before if before is not None else None
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_1_gib_member_or_file_is_skipped_unread(tmp_path):
    archive = tmp_path / "huge.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:  # about 5 MB
        _add(tar, "train/cat/a.png", _png((255, 0, 0)))
        info = tarfile.TarInfo("train/cat/huge.png")
        info.size = 2**30
        tar.addfile(info, _Zeros(2**30))
        for name, colour in (("train/dog/b.png", (0, 255, 0)), ("test/cat/c.png", (255, 0, 0))):
            _add(tar, name, _png(colour))
    folder = _folder(tmp_path / "imgs")
    with open(folder / "train" / "a" / "huge.bmp", "wb") as f:
        f.truncate(2**30)  # 1 GiB of zeros that take no disk space (a sparse file)
    run = subprocess.run([sys.executable, "-c", _LOAD_AND_MEASURE, str(archive), str(folder),
                          str(tmp_path / "c")],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    assert out[str(archive)] == [2, 1, ["cat", "dog"]] and out[str(folder)] == [2, 2, ["a", "b"]]
    assert any(f"{archive}:train/cat/huge.png" in w and "64 MiB" in w for w in out["warnings"])
    assert any(str(folder / "train" / "a" / "huge.bmp") in w for w in out["warnings"])
    if out["growth_mib"] is not None:  # Linux
        assert out["growth_mib"] < 256, out  # reading either 1 GiB file would have taken 1024 more


def test_an_image_that_decodes_too_large_is_skipped_undecoded(tmp_path, tmp_cache, monkeypatch):
    # a 32x32 image passes, a 64x64 one does not
    monkeypatch.setattr(rdata.image_folder, "MAX_IMAGE_BYTES", 3 * 40 * 40)
    root = _folder(tmp_path / "imgs")
    # 200 bytes on disk
    (root / "train" / "a" / "big.png").write_bytes(_image((1, 1, 1), size=64, fmt="PNG"))
    assert (root / "train" / "a" / "big.png").stat().st_size < rdata.image_folder.MAX_IMAGE_BYTES
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, _, _ = rdata.load_image_folder(str(root), str(tmp_cache))
    assert len(train) == 2 and any("big.png" in str(w.message) for w in caught)


def test_more_decoded_images_than_the_limit_is_an_error_naming_it(tmp_path, tmp_cache, monkeypatch):
    # three of the four 32x32 RGB images
    monkeypatch.setattr(rdata.image_folder, "MAX_DATASET_BYTES", 3 * 3 * 32 * 32)
    root = _folder(tmp_path / "imgs")
    with pytest.raises(DatasetError,
                       match=r"more than 9,216 bytes .* of decoded images.*MAX_DATASET_BYTES"):
        rdata.load_image_folder(str(root), str(tmp_cache))


# ------------------------------------------------------------------------------------- augmentation


def test_crop_flip_equals_pad_slice_and_mirror():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 32, 32, generator=g)
    dy, dx, flip = random_crop_flip_params(64, g, "cpu")
    out = crop_flip(x, dy, dx, flip)
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(64):
        ref = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)


@pytest.mark.parametrize("pad", [2, 0])
def test_crop_padding_comes_from_the_config(pad):
    dm = DataModule(compose(["data=synthetic", f"data.pad={pad}"])["data"], batch_size=2048,
                    seed=0).load()
    # one batch: the whole epoch
    images, _, dy, dx, flip = next(iter(dm.train_dataloader()))
    # every position, no other
    assert torch.cat([dy, dx]).unique().tolist() == list(range(2 * pad + 1))
    out = dm.on_after_batch_transfer((images, None, dy, dx, flip), 0)[0]
    padded = F.pad(dm.normalize(images), (pad, pad, pad, pad))
    for i in range(0, 2048, 97):
        ref = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)


def test_the_default_padding_is_the_papers_4_pixels():
    dm = DataModule(compose(["data=synthetic"])["data"], batch_size=2048, seed=0).load()
    images, _, dy, dx, flip = next(iter(dm.train_dataloader()))
    assert dm.pad == 4 and torch.cat([dy, dx]).unique().tolist() == list(range(9))
    assert torch.equal(dm.augment(images, dy, dx, flip),
                       crop_flip(dm.normalize(images), dy, dx, flip))


def test_each_image_gets_its_own_crop_and_flip_uniformly():
    g = torch.Generator().manual_seed(2)
    dy, dx, flip = random_crop_flip_params(81_000, g, "cpu")
    counts = torch.bincount(dy * 9 + dx, minlength=81).double()
    # uniform over the 9x9 positions
    assert counts.numel() == 81 and (counts - 1000).abs().max() < 150
    assert abs(flip.double().mean().item() - 0.5) < 0.01
    assert dy[:128].unique().numel() == 9 and flip[:128].any() and not flip[:128].all()


def _decode_params(out: torch.Tensor) -> tuple[int, int, bool]:
    """Recover (dy, dx, flip) from a crop of the code image (pixel (r, c) = 1 + r * 32 + c, zero
    padding)."""
    v = out[0]
    r, c = (v > 0).nonzero()[0].tolist()
    code = int(v[r, c].item()) - 1
    row, col = divmod(code, 32)
    flipped = v[r].gt(0).sum() > 1 and v[r, c + 1] < v[r, c] if c + 1 < 32 else False
    dy = 4 + row - r
    dx = 4 + (col - (31 - c)) if flipped else 4 + col - c
    return dy, dx, bool(flipped)


def test_same_augmentation_statistics_as_torchvision_transforms():
    code = (1 + torch.arange(32 * 32, dtype=torch.float32)).reshape(1, 1, 32, 32).repeat(1, 3, 1, 1)
    reference = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    torch.manual_seed(0)
    n = 8000
    ref = [_decode_params(reference(code[0])) for _ in range(n)]
    g = torch.Generator().manual_seed(3)
    dy, dx, flip = random_crop_flip_params(n, g, "cpu")
    ours_out = crop_flip(code.expand(n, -1, -1, -1), dy, dx, flip)
    ours = [_decode_params(o) for o in ours_out[:n]]
    # decoder is right
    assert ours[:50] == list(zip(dy[:50].tolist(), dx[:50].tolist(), flip[:50].tolist()))
    for i in (0, 1, 2):
        a = np.bincount([p[i] for p in ref], minlength=9) / n
        b = np.bincount([p[i] for p in ours], minlength=9) / n
        assert np.abs(a - b).max() < 0.03, (i, a, b)
    # and for the same parameters, the same pixels as torchvision's crop + flip
    for (py, px, pf), o in list(zip(ours, ours_out))[:20]:
        ref_img = T.functional.crop(F.pad(code[0], (4, 4, 4, 4)), py, px, 32, 32)
        assert torch.equal(o, ref_img.flip(-1) if pf else ref_img)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU on this machine"))])
def test_augmentation_runs_on_the_batch_device(device):
    dm = DataModule(compose(["data=synthetic"])["data"], batch_size=32,
                    seed=0).load().to(torch.device(device))
    batch = next(iter(dm.train_dataloader()))
    x, y = dm.on_after_batch_transfer(batch, 0)
    assert x.device.type == device and x.dtype == torch.float32 and x.shape == (32, 3, 32, 32)
    assert y.device.type == device


def test_train_batches_are_a_pure_function_of_seed_and_iteration():
    dm = DataModule(compose(["data=synthetic"])["data"], batch_size=100, seed=7).load()
    stream = iter(TrainBatches(dm.train, 100, seed=7))
    first = [next(stream) for _ in range(45)]  # crosses an epoch boundary (20 batches per epoch)
    resumed = next(iter(TrainBatches(dm.train, 100, seed=7, start=33)))
    assert all(torch.equal(a, b) for a, b in zip(first[33], resumed))
    epoch0 = torch.cat([b[0] for b in first[:20]])
    # each image at most once per epoch (last incomplete batch dropped)
    assert epoch0.shape[0] == 2000
    other_seed = next(iter(TrainBatches(dm.train, 100, seed=8)))
    assert not torch.equal(other_seed[1], first[0][1])


def test_validation_split_and_training_mean():
    cfg = compose(["data=synthetic", "data.val_size=100", "data.test_subset=64"])["data"]
    dm = DataModule(cfg, batch_size=32, seed=0).load()
    assert (len(dm.train) == 1948 and len(dm.eval_splits["val"]) == 100
            and len(dm.eval_splits["test"]) == 64)
    assert torch.allclose(dm.mean, dm.train.images.double().mean(0).div(255).float())
    x = dm.normalize(dm.train.images)
    assert x.mean(0).abs().max() < 1e-5  # per-pixel mean subtracted
    # the split does not depend on the run's seed
    other_seed = DataModule(cfg, batch_size=32, seed=5).load()
    assert torch.equal(other_seed.eval_splits["val"].images, dm.eval_splits["val"].images)


def test_bad_split_sizes(tmp_path):
    with pytest.raises(DatasetError, match="data.val_size=5000"):
        DataModule(compose(["data=synthetic", "data.val_size=5000"])["data"], batch_size=32,
                   seed=0).load()
