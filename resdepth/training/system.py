"""The LightningModule: SGD, the paper's iteration schedule and warm-up, and the records of Figure 6.

No model code (models.py) and no file writing (train.py). Nothing in the training step waits for the GPU:
per-iteration losses and errors go into device buffers that are read once per record.

Imports config and models only.
"""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ..config import fill_legacy, warms_up
from ..models import ResponseStd, check_bn_batch, cifar_resnet
from .step import WholeStep

def lr_at(step: int, optim: dict, warming_up: bool = False) -> float:
    """Learning rate for iteration `step` (0-based): base lr times gamma per milestone passed; warmup_lr while
    warming up (never past the first milestone)."""
    milestones = sorted(optim["milestones"])
    if warming_up and (not milestones or step < milestones[0]):
        return float(optim["warmup_lr"])
    return float(optim["lr"]) * float(optim["gamma"]) ** sum(step >= m for m in milestones)


warmup_enabled = warms_up  # whether a run warms up: auto (depth >= optim.warmup_depth) | true | false


def warmup_bound(optim: dict) -> int | None:
    """The iteration at which a warm-up ends at the latest: optim.warmup_max_steps (0: none) or the first
    milestone, whichever comes first (the warm-up lr is never used past it); None when neither is set."""
    bounds = [int(m) for m in sorted(optim["milestones"])[:1]]
    if int(optim.get("warmup_max_steps") or 0) > 0:
        bounds.append(int(optim["warmup_max_steps"]))
    return min(bounds, default=None)


def warmup_end(step: int, optim: dict, window_error: float | None) -> str | None:
    """Why the warm-up ends before iteration `step` (0-based): "training error" when window_error (the mean
    training error, a fraction, of the last optim.warmup_window iterations; None: not measured at this step) is
    below optim.warmup_until_error, "bound" at warmup_bound; None while it goes on."""
    if window_error is not None and window_error < float(optim["warmup_until_error"]):
        return "training error"
    bound = warmup_bound(optim)
    return "bound" if bound is not None and step >= bound else None


class Window(nn.Module):
    """The training loss and error of every iteration since the last record, kept on the device and read once per
    record. A module only for its device buffer: it adds nothing to the state dict."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.start = 0  # iteration of values[0]
        self.register_buffer("values", torch.zeros(size, 2), persistent=False)

    def put(self, step: int, loss: torch.Tensor, error: torch.Tensor) -> None:
        """Keep iteration `step`'s loss and error (device scalars; error a fraction)."""
        i = (step - self.start) % len(self.values)
        self.values[i, 0] = loss.detach().float()
        self.values[i, 1] = error

    def take(self, step: int) -> tuple[float, float, int | None]:
        """(mean loss, mean error, the first 1-based iteration whose loss is not finite or None) of iterations
        start to step - 1; the next window starts at `step`."""
        values = self.values[:step - self.start].double().cpu()
        bad = (~torch.isfinite(values[:, 0])).nonzero()
        diverged_at = self.start + int(bad[0]) + 1 if len(bad) else None
        self.start = step
        return values[:, 0].mean().item(), values[:, 1].mean().item(), diverged_at

    def state(self) -> dict:
        return {"window": self.values.cpu(), "window_start": self.start}

    def load(self, state: dict) -> None:
        self.values.copy_(state["window"])
        self.start = state["window_start"]


def rng_state() -> dict:
    """The random state a resumed run restores (Lightning's checkpoints leave it out)."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


class Warmup(nn.Module):
    """The paper's warm-up (section 4.2): optim.warmup_lr until the mean training error of the last
    optim.warmup_window iterations is below optim.warmup_until_error, at the latest until warmup_bound.
    The per-iteration errors stay on the device, read once per window and only while warming up. A module only
    for its device buffer: it holds no parameters and adds nothing to the state dict."""

    def __init__(self, optim: dict, depth: int) -> None:
        super().__init__()
        self.optim = optim
        self.on = warmup_enabled(optim, depth)  # warming up now
        self.ended_at = 0  # the iteration at which it ended (0: it did not, or never began)
        self.ended_by: str | None = None  # "training error" | "bound" (see warmup_end), None until it ends
        self.register_buffer("errors", torch.ones(int(optim["warmup_window"])), persistent=False)

    def record(self, step: int, error: torch.Tensor) -> None:
        """Keep iteration `step`'s training error (a device scalar, fraction) while warming up."""
        if self.on:
            self.errors[step % len(self.errors)] = error

    def check(self, step: int) -> str | None:
        """Before iteration `step`: end the warm-up where warmup_end says so, returning a line that says why."""
        w = len(self.errors)
        err = self.errors.mean().item() if step > 0 and step % w == 0 else None
        self.ended_by = warmup_end(step, self.optim, err)
        if self.ended_by is None:
            return None
        self.on, self.ended_at = False, step
        limit = f"{100 * float(self.optim['warmup_until_error']):.0f}%"
        why = (f"training error {100 * err:.1f}% over the last {w} iterations < {limit}"
               if self.ended_by == "training error" else f"its bound (the earlier of optim.warmup_max_steps and "
               f"the first milestone), the training error not yet below {limit}")
        return f"warm-up over at iteration {step}: {why}; lr {lr_at(step, self.optim)} from here"

    def state(self) -> dict:
        return {"warming_up": self.on, "warmup_steps": self.ended_at, "warmup_ended_by": self.ended_by,
                "warm_window": self.errors.cpu()}

    def load(self, state: dict) -> None:
        """Restore state(); reads checkpoints written before the bound existed (no warmup_ended_by)."""
        self.on, self.ended_at = state["warming_up"], state["warmup_steps"]
        # Then only the training error could end a warm-up.
        self.ended_by = state.get("warmup_ended_by", "training error" if self.ended_at else None)
        if self.on:  # a net that does not warm up may have been saved with another window length
            self.errors.copy_(state["warm_window"])


class System(pl.LightningModule):
    """Trains a CIFAR ResNet with the paper's protocol. `cfg` is the plain-dict run config."""

    def __init__(self, cfg: dict, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()  # plain dicts only: torch >= 2.6 refuses to unpickle DictConfig
        self.cfg = cfg = fill_legacy(cfg)  # a checkpoint of an older version lacks the settings added since
        m, self.optim_cfg, t = cfg["model"], cfg["optim"], cfg["trainer"]
        bn_batch = check_bn_batch(int(self.optim_cfg.get("bn_batch", 0)), int(self.optim_cfg["batch_size"]))
        self.net = cifar_resnet(depth=m["depth"], block=m["block"], shortcut=m["shortcut"],
                                in_channels=in_channels, num_classes=num_classes, bn_batch=bn_batch)
        self.channels_last = bool(t["channels_last"])
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # Kept out of the module registry (plain __dict__ entry) so checkpoints hold the weights once.
        self.__dict__["forward_net"] = torch.compile(self.net, mode=t["compile_mode"]) if t["compile"] else self.net
        self.warmup = Warmup(self.optim_cfg, m["depth"])
        self.window = Window(int(t["eval_every"]))
        self.elapsed_before = 0.0  # training seconds of this run before it was resumed
        self.session_start = time.perf_counter()
        self.datamodule = None  # set by train.py; records evaluate on its test/val splits
        # True: each iteration is one WholeStep call (a CUDA graph on a GPU) instead of Lightning's
        # zero_grad/backward/step; set by train.build from trainer.cuda_graph.
        self.whole_step = False
        self._whole: WholeStep | None = None

    @property
    def warming_up(self) -> bool:
        return self.warmup.on

    @property
    def warmup_steps(self) -> int:
        """The iteration at which the warm-up ended (0: it did not, or never began)."""
        return self.warmup.ended_at

    @property
    def warmup_ended_by(self) -> str | None:
        """What ended the warm-up: "training error" or "bound"; None when it did not end, or never began."""
        return self.warmup.ended_by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch as training sees it (mean subtracted); for raw images, resdepth.load_run."""
        return self.forward_net(x)

    # ------------------------------------------------------------------------------------------ training
    def configure_optimizers(self):
        fused, o = self.device.type == "cuda", self.optim_cfg
        return torch.optim.SGD(self.net.parameters(), lr=o["lr"], momentum=o["momentum"],
                               weight_decay=o["weight_decay"], fused=fused, foreach=None if fused else True)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        if not self.whole_step:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer_closure()  # training_step: the whole iteration, update included

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer) -> None:
        if not self.whole_step:  # the whole step sets its own gradients
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def on_train_end(self) -> None:
        if self._whole is not None:
            self._whole.release()
            self._whole = None

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        step = self.trainer.global_step
        if self.warming_up and (line := self.warmup.check(step)):
            self.print(line)
        lr = lr_at(step, self.optim_cfg, self.warming_up)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        x, y = batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.whole_step:
            if self._whole is None:
                self._whole = WholeStep(self.forward_net, self.trainer.optimizers[0],
                                        bf16=self.trainer.precision == "bf16-mixed")
            loss, err = self._whole(x, y)
        else:
            logits = self.forward_net(x)
            loss = F.cross_entropy(logits, y)
            with torch.no_grad():
                err = (logits.argmax(1) != y).float().mean()
        with torch.no_grad():
            self.window.put(self.trainer.global_step, loss, err)
            self.warmup.record(self.trainer.global_step, err)
        return None if self.whole_step else loss  # None: Lightning has no backward/step left to do

    # ------------------------------------------------------------------------------------------- records
    def _inputs(self, split):
        """(normalised images, labels) of a Split in chunks of trainer.eval_batch_size, without augmentation."""
        n = int(self.cfg["trainer"]["eval_batch_size"])
        for s in range(0, len(split), n):
            x = self.datamodule.normalize(split.images[s:s + n])
            yield x.contiguous(memory_format=torch.channels_last) if self.channels_last else x, split.labels[s:s + n]

    @torch.no_grad()
    def evaluate(self, split) -> float:
        """Error (fraction) of the current network on a Split, in eval mode, in the trainer's precision."""
        was_training = self.net.training
        self.net.eval()
        wrong = torch.zeros((), device=split.labels.device)
        ctx = self.trainer.precision_plugin.forward_context if self._trainer is not None else torch.no_grad
        with ctx():
            for x, y in self._inputs(split):
                wrong += (self.forward_net(x).argmax(1) != y).sum()
        self.net.train(was_training)
        return wrong.item() / len(split)

    def take_record(self) -> dict:
        """One row of metrics.csv for the iterations since the last record (reads the device once)."""
        step = self.trainer.global_step
        loss, error, diverged_at = self.window.take(step)
        row = {"iteration": step, "lr": lr_at(step - 1, self.optim_cfg, self.warming_up), "train_loss": loss,
               "train_error": error, "val_error": math.nan, "test_error": math.nan,
               "elapsed_s": self.elapsed_before + time.perf_counter() - self.session_start, "diverged_at": diverged_at}
        if diverged_at is None:
            for name, split in self.datamodule.eval_splits.items():
                row[f"{name}_error"] = self.evaluate(split)
        return row

    @torch.no_grad()
    def layer_responses(self, split) -> list[float]:
        """Figure 7: std of every 3x3 layer's response (after BN, before ReLU/addition) over a whole split, fp32."""
        self.net.eval()
        with ResponseStd(self.net) as responses:
            for x, _ in self._inputs(split):
                self.net(x)
        return responses.std()

    # ------------------------------------------------------------------------------------------ resume
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["resdepth"] = {
            **self.warmup.state(), **self.window.state(),
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.session_start, "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["resdepth"]
        self.warmup.load(state)
        self.window.load(state)
        self.elapsed_before = state["elapsed_s"]
        self.session_start = time.perf_counter()
        if self._trainer is not None:  # resuming a run (load_from_checkpoint only wants the net: RNG left alone)
            restore_rng(state["rng"])
