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
GRAPH_WARMUP = 3  # eager iterations (real ones) before a CUDA graph is captured: cuDNN autotuning, SGD state


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


class WholeStep:
    """One training iteration (forward, loss, backward, SGD update) as a single call returning (loss, error).

    On a CUDA device it runs GRAPH_WARMUP iterations eagerly on a side stream, then captures the iteration in a
    CUDA graph and replays it: one launch instead of several hundred kernels, so these thin networks stop waiting
    for the host. The learning rate is a constant of the captured update: a new lr (warm-up end, milestones)
    captures again. Elsewhere it runs eagerly. The returned loss and error are device tensors that the next call
    overwrites: copy them (on the device) before calling again.
    """

    def __init__(self, forward, optimizer: torch.optim.Optimizer, bf16: bool) -> None:
        self.forward, self.optimizer, self.bf16 = forward, optimizer, bf16
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_lr = None
        self.eager_steps = 0
        self.static: tuple[torch.Tensor, ...] = ()

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # cache_enabled=False: autocast's weight cache must not outlive a capture
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            logits = self.forward(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            return loss.detach().float(), (logits.argmax(1) != y).float().mean()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lr = self.optimizer.param_groups[0]["lr"]
        if self.graph is not None and lr != self.graph_lr:
            self.release()
        if x.device.type != "cuda" or (self.graph is None and self.eager_steps < GRAPH_WARMUP):
            self.eager_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            if x.device.type != "cuda":
                return self._step(x, y)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._step(x, y)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            static_x, static_y = x.clone(), y.clone()
            self.optimizer.zero_grad(set_to_none=True)  # the captured backward writes fresh gradients
            self.graph, self.graph_lr = torch.cuda.CUDAGraph(), lr
            with torch.cuda.graph(self.graph):
                loss, err = self._step(static_x, static_y)
            self.static = (static_x, static_y, loss, err)
        static_x, static_y, loss, err = self.static
        static_x.copy_(x)
        static_y.copy_(y)
        self.graph.replay()
        return loss, err

    def release(self) -> None:
        """Drop the graph and its memory (the gradients live in it): the next call captures again."""
        self.graph, self.static = None, ()
        self.optimizer.zero_grad(set_to_none=True)


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
        # True: each iteration is one WholeStep call (a CUDA graph on a GPU) instead of Lightning's
        # zero_grad/backward/step; set by train.build from trainer.cuda_graph.
        self.whole_step = False
        self._whole: WholeStep | None = None

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
            i = (self.trainer.global_step - self.window_start) % self.eval_every
            self.window[i, 0] = loss.detach().float()
            self.window[i, 1] = err
            if self.warming_up:
                self.warm_window[self.trainer.global_step % len(self.warm_window)] = err
        return None if self.whole_step else loss  # None: Lightning has no backward/step left to do

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
