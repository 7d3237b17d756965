"""The LightningDataModule: a dataset held on the training device, augmented in whole batches."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from .datasets import load
from .splits import DatasetError, Split


# By hand, not torchvision transforms per sample: one gather augments a whole batch on the device.
def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, *,
              pad: int = 4) -> torch.Tensor:
    """x (N, C, H, W) zero-padded by `pad`, each image cropped at (dy, dx), mirrored where flip."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (N, H)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip_params(n: int, generator: torch.Generator, device, *,
                            pad: int = 4) -> tuple[torch.Tensor, ...]:
    """(dy, dx, flip) per image: uniform over crop_flip's (2*pad+1)^2 crops, flips with p = 1/2."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return offsets[0], offsets[1], flip


class TrainBatches:
    """Endless training batches from iteration `start`, a pure function of (seed, iteration), so a
    resumed run sees the batches it would have seen."""

    def __init__(self, split: Split, batch_size: int, seed: int, start: int = 0, *,
                 pad: int = 4) -> None:
        if len(split) < batch_size:
            raise DatasetError(f"optim.batch_size={batch_size} is larger than the training set "
                               f"({len(split)})")
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.start, self.pad = start, pad
        self.per_epoch = len(split) // batch_size  # an epoch's last incomplete batch is dropped

    def _epoch(self, epoch: int) -> tuple[torch.Tensor, ...]:
        device = self.split.labels.device
        g = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.split)
        perm = torch.randperm(n, generator=g, device=device)
        return (perm, *random_crop_flip_params(n, g, device, pad=self.pad))

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
    """A dataset loaded once, held on the training device as uint8, augmented in whole batches."""

    def __init__(self, cfg, *, batch_size: int, seed: int) -> None:
        super().__init__()
        self.cfg, self.batch_size, self.seed = cfg, batch_size, seed
        self.pad = int(cfg.get("pad", 4))  # pixels a side; 4 for records older than data.pad
        self.train: Split | None = None
        self.eval_splits: dict[str, Split] = {}
        self.classes: list[str] = []
        self.mean: torch.Tensor | None = None  # per-pixel mean of the training images, in [0, 1]

    def load(self) -> "DataModule":
        """Read (or generate) the data, split off val, take the test subset; idempotent, on CPU."""
        if self.train is not None:
            return self
        train, test, self.classes = load(self.cfg)
        val_size, test_subset = int(self.cfg["val_size"]), int(self.cfg["test_subset"])
        if not 0 <= val_size < len(train):
            raise DatasetError(f"data.val_size={val_size} must be in [0, {len(train) - 1}] "
                               f"for this training set")
        if not 0 <= test_subset <= len(test):
            raise DatasetError(f"data.test_subset={test_subset} must be in [0, {len(test)}] "
                               f"(0: whole test set)")
        # seed 0, not the run's: every seed and depth is judged on the same images
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
        if len(train) < self.batch_size:  # here, before a run directory or record is written
            after = " after data.val_size" if val_size else ""
            raise DatasetError(f"optim.batch_size={self.batch_size} is larger than the "
                               f"training set ({len(train)} images{after}); "
                               f"allowed: 1 to {len(train)}")
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
        device = (self.trainer.strategy.root_device if self.trainer is not None
                  else torch.device("cpu"))
        self.to(device)

    def train_dataloader(self) -> TrainBatches:
        start = self.trainer.global_step if self.trainer is not None else 0
        return TrainBatches(self.train, self.batch_size, self.seed, start, pad=self.pad)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images / 255 minus the per-pixel training mean (the paper's only preprocessing)."""
        return images.float().div_(255).sub_(self.mean)

    def augment(self, images: torch.Tensor, dy, dx, flip) -> torch.Tensor:
        return crop_flip(self.normalize(images), dy, dx, flip, pad=self.pad)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels, dy, dx, flip = batch
        return self.augment(images, dy, dx, flip), labels
