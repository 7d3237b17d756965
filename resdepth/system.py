"""The LightningModule: SGD, the paper's iteration schedule and warm-up, and the records of Figure 6.

No model code (models.py) and no file writing (train.py). Nothing in the training step waits for the GPU:
per-iteration losses and errors go into device buffers that are read once per record.
"""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from .models import ResponseStd, cifar_resnet

WARMUP_DEPTH = 110  # optim.warmup=auto turns the warm-up on from this depth (the paper's ResNet-110)


def lr_at(step: int, optim: dict, warming_up: bool = False) -> float:
    """Learning rate for iteration `step` (0-based): base lr times gamma per milestone passed; warmup_lr while
    warming up (never past the first milestone)."""
    milestones = sorted(optim["milestones"])
    if warming_up and (not milestones or step < milestones[0]):
        return float(optim["warmup_lr"])
    return float(optim["lr"]) * float(optim["gamma"]) ** sum(step >= m for m in milestones)


def warmup_enabled(optim: dict, depth: int) -> bool:
    """optim.warmup: auto (on for depth >= 110) | true | false; raises ValueError otherwise."""
    value = str(optim["warmup"]).lower()
    if value not in ("auto", "true", "false"):
        raise ValueError(f"optim.warmup={optim['warmup']!r} is not one of auto, true, false")
    return depth >= WARMUP_DEPTH if value == "auto" else value == "true"


class System(pl.LightningModule):
    """Trains a CIFAR ResNet with the paper's protocol. `cfg` is the plain-dict run config."""

    def __init__(self, cfg: dict, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()  # plain dicts only: torch >= 2.6 refuses to unpickle DictConfig
        self.cfg = cfg
        m, self.optim_cfg, t = cfg["model"], cfg["optim"], cfg["trainer"]
        self.net = cifar_resnet(depth=m["depth"], block=m["block"], shortcut=m["shortcut"],
                                in_channels=in_channels, num_classes=num_classes)
        self.channels_last = bool(t["channels_last"])
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # Kept out of the module registry (plain __dict__ entry) so checkpoints hold the weights once.
        self.__dict__["forward_net"] = torch.compile(self.net, mode=t["compile_mode"]) if t["compile"] else self.net
        self.eval_every = int(t["eval_every"])
        self.warming_up = warmup_enabled(self.optim_cfg, m["depth"])
        self.warmup_steps = 0  # iterations spent warming up
        # Per-iteration values since the last record, on the device: [loss, error] x eval_every.
        self.register_buffer("window", torch.zeros(self.eval_every, 2), persistent=False)
        self.register_buffer("warm_window", torch.ones(int(self.optim_cfg["warmup_window"])), persistent=False)
        self.window_start = 0  # iteration of window[0]
        self.elapsed_before = 0.0  # training seconds of earlier sessions of this run (resume)
        self.session_start = time.perf_counter()
        self.datamodule = None  # set by train.py; records evaluate on its test/val splits

    # ------------------------------------------------------------------------------------------ training
    def configure_optimizers(self):
        fused = self.device.type == "cuda"
        return torch.optim.SGD(self.net.parameters(), lr=self.optim_cfg["lr"], momentum=self.optim_cfg["momentum"],
                               weight_decay=self.optim_cfg["weight_decay"], fused=fused, foreach=None if fused else True)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        step = self.trainer.global_step
        if self.warming_up:
            self._check_warmup(step)
        lr = lr_at(step, self.optim_cfg, self.warming_up)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr

    def _check_warmup(self, step: int) -> None:
        """Warm-up ends once the mean training error of the last `warmup_window` iterations is below the limit.
        Reads the device once per window, and only while warming up."""
        w = len(self.warm_window)
        if step > 0 and step % w == 0:
            err = self.warm_window.mean().item()
            if err < float(self.optim_cfg["warmup_until_error"]):
                self.warming_up = False
                self.warmup_steps = step
                self.print(f"warm-up over at iteration {step}: training error {100 * err:.1f}% "
                           f"< {100 * float(self.optim_cfg['warmup_until_error']):.0f}%, lr back to "
                           f"{self.optim_cfg['lr']}")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.forward_net(x)
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():
            i = (self.trainer.global_step - self.window_start) % self.eval_every
            self.window[i, 0] = loss.detach().float()
            self.window[i, 1] = (logits.argmax(1) != y).float().mean()
            if self.warming_up:
                self.warm_window[self.trainer.global_step % len(self.warm_window)] = self.window[i, 1]
        return loss

    # ------------------------------------------------------------------------------------------- records
    def _inputs(self, split, batch_size: int):
        """(normalised images, labels) of a Split in chunks, without augmentation."""
        for s in range(0, len(split), batch_size):
            x = self.datamodule.normalize(split.images[s:s + batch_size])
            yield x.contiguous(memory_format=torch.channels_last) if self.channels_last else x, \
                split.labels[s:s + batch_size]

    @torch.no_grad()
    def evaluate(self, split, batch_size: int = 1000) -> float:
        """Error (fraction) of the current network on a Split, in eval mode, in the trainer's precision."""
        was_training = self.net.training
        self.net.eval()
        wrong = torch.zeros((), device=split.labels.device)
        ctx = self.trainer.precision_plugin.forward_context if self._trainer is not None else torch.no_grad
        with ctx():
            for x, y in self._inputs(split, batch_size):
                wrong += (self.forward_net(x).argmax(1) != y).sum()
        self.net.train(was_training)
        return wrong.item() / len(split)

    def take_record(self) -> dict:
        """One row of metrics.csv for the iterations since the last record (reads the device once)."""
        step = self.trainer.global_step
        n = step - self.window_start
        window = self.window[:n].double().cpu()
        bad = (~torch.isfinite(window[:, 0])).nonzero()
        row = {
            "iteration": step,
            "lr": lr_at(step - 1, self.optim_cfg, self.warming_up),
            "train_loss": window[:, 0].mean().item(),
            "train_error": window[:, 1].mean().item(),
            "val_error": math.nan,
            "test_error": math.nan,
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.session_start,
            "diverged_at": self.window_start + int(bad[0]) + 1 if len(bad) else None,
        }
        if row["diverged_at"] is None:
            for name, split in self.datamodule.eval_splits.items():
                row[f"{name}_error"] = self.evaluate(split)
        self.window_start = step
        return row

    @torch.no_grad()
    def layer_responses(self, split, batch_size: int = 1000) -> list[float]:
        """Figure 7: std of every 3x3 layer's response (after BN, before ReLU/addition) over a whole split, fp32."""
        self.net.eval()
        with ResponseStd(self.net) as responses:
            for x, _ in self._inputs(split, batch_size):
                self.net(x)
        return responses.std()

    # ------------------------------------------------------------------------------------------ resume
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["resdepth"] = {
            "warming_up": self.warming_up,
            "warmup_steps": self.warmup_steps,
            "window": self.window.cpu(),
            "warm_window": self.warm_window.cpu(),
            "window_start": self.window_start,
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.session_start,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["resdepth"]
        self.warming_up, self.warmup_steps = state["warming_up"], state["warmup_steps"]
        self.window.copy_(state["window"])
        self.warm_window.copy_(state["warm_window"])
        self.window_start = state["window_start"]
        self.elapsed_before = state["elapsed_s"]
        self.session_start = time.perf_counter()
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
