"""The LightningModule: SGD, the paper's iteration schedule and warm-up, the records of Figure 6.

Nothing in the training step waits for the GPU: per-iteration losses and errors go into device
buffers that are read once per record.
"""

from __future__ import annotations

import copy
import math
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ..config import fill_legacy, warms_up
from ..models import ResponseStd, check_bn_batch, cifar_resnet
from .gradients import probe
from .step import WholeStep


def lr_at(step: int, optim: dict, warming_up: bool = False) -> float:
    """Learning rate of iteration `step` (0-based): lr times gamma per milestone passed; warmup_lr
    while warming up, but never past the first milestone."""
    milestones = sorted(optim["milestones"])
    if warming_up and (not milestones or step < milestones[0]):
        return float(optim["warmup_lr"])
    return float(optim["lr"]) * float(optim["gamma"]) ** sum(step >= m for m in milestones)


def warmup_bound(optim: dict) -> int | None:
    """The iteration a warm-up ends by at the latest: the earlier of optim.warmup_max_steps
    (0: none) and the first milestone; None when neither is set."""
    bounds = [int(m) for m in sorted(optim["milestones"])[:1]]
    if int(optim.get("warmup_max_steps") or 0) > 0:
        bounds.append(int(optim["warmup_max_steps"]))
    return min(bounds, default=None)


def warmup_ends_by(step: int, optim: dict, window_error: float | None) -> str | None:
    """Why the warm-up ends before iteration `step` (0-based), None while it goes on.

    "training error" when window_error (the mean training error, a fraction, of the last
    optim.warmup_window iterations; None: not measured at this step) is below
    optim.warmup_until_error; "bound" from warmup_bound on.
    """
    if window_error is not None and window_error < float(optim["warmup_until_error"]):
        return "training error"
    bound = warmup_bound(optim)
    return "bound" if bound is not None and step >= bound else None


class Window(nn.Module):
    """The training loss and error of each iteration since the last record, on the device.

    A module only for its device buffer: it adds nothing to the state dict.
    """

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
        """(mean loss, mean error, first 1-based iteration whose loss is not finite, or None) of
        iterations start to step - 1; the next window starts at `step`."""
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
    """The random state a resumed run restores."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


class Warmup(nn.Module):
    """The paper's warm-up (section 4.2): optim.warmup_lr until the mean training error of the
    last optim.warmup_window iterations is below optim.warmup_until_error, at most to warmup_bound.

    The errors stay on the device, read once per window while warming up. A module only for its
    device buffer: it adds nothing to the state dict.
    """

    def __init__(self, optim: dict, depth: int) -> None:
        super().__init__()
        self.optim = optim
        self.on = warms_up(optim, depth)  # warming up now
        self.ended_at = 0  # the iteration at which it ended (0: it did not, or never began)
        self.ended_by: str | None = None  # "training error" | "bound" (warmup_ends_by), or None
        self.register_buffer("errors", torch.ones(int(optim["warmup_window"])), persistent=False)

    def record(self, step: int, error: torch.Tensor) -> None:
        """Keep iteration `step`'s training error (a device scalar, fraction) while warming up."""
        if self.on:
            self.errors[step % len(self.errors)] = error

    def check(self, step: int) -> str | None:
        """Before iteration `step`: end the warm-up if warmup_ends_by says so; a line saying why."""
        w = len(self.errors)
        err = self.errors.mean().item() if step > 0 and step % w == 0 else None
        self.ended_by = warmup_ends_by(step, self.optim, err)
        if self.ended_by is None:
            return None
        self.on, self.ended_at = False, step
        limit = f"{100 * float(self.optim['warmup_until_error']):.0f}%"
        why = (f"training error {100 * err:.1f}% over the last {w} iterations < {limit}"
               if self.ended_by == "training error" else
               f"its bound (the earlier of optim.warmup_max_steps and "
               f"the first milestone), the training error not yet below {limit}")
        return f"warm-up over at iteration {step}: {why}; lr {lr_at(step, self.optim)} from here"

    def state(self) -> dict:
        return {"warming_up": self.on, "warmup_steps": self.ended_at,
                "warmup_ended_by": self.ended_by, "warm_window": self.errors.cpu()}

    def load(self, state: dict) -> None:
        """Restore state(), also from checkpoints older than the bound (no warmup_ended_by)."""
        self.on, self.ended_at = state["warming_up"], state["warmup_steps"]
        # Then only the training error could end a warm-up.
        self.ended_by = state.get("warmup_ended_by", "training error" if self.ended_at else None)
        if self.on:  # a net that does not warm up may have been saved with another window
            self.errors.copy_(state["warm_window"])


class System(pl.LightningModule):
    """Trains a CIFAR ResNet with the paper's protocol. `cfg` is the plain-dict run config."""

    def __init__(self, cfg: dict, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()  # plain dicts only: torch >= 2.6 refuses to unpickle DictConfig
        self.cfg = cfg = fill_legacy(cfg)  # an older version's checkpoint lacks the later settings
        m, self.optim_cfg, t = cfg["model"], cfg["optim"], cfg["trainer"]
        bn_batch = check_bn_batch(int(self.optim_cfg.get("bn_batch", 0)),
                                  int(self.optim_cfg["batch_size"]))
        self.net = cifar_resnet(depth=m["depth"], block=m["block"], shortcut=m["shortcut"],
                                in_channels=in_channels, num_classes=num_classes, bn_batch=bn_batch)
        self.channels_last = bool(t["channels_last"])
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        forward = torch.compile(self.net, mode=t["compile_mode"]) if t["compile"] else self.net
        # Out of the module registry (a plain __dict__ entry): checkpoints hold the weights once.
        self.__dict__["forward_net"] = forward
        self.warmup = Warmup(self.optim_cfg, m["depth"])
        self.window = Window(int(t["eval_every"]))
        self.elapsed_before = 0.0  # training seconds of this run before it was resumed
        self.session_start = time.perf_counter()
        self.datamodule = None  # set by train.py; records evaluate on its test/val splits
        # Manual: a CUDA graph's replay computes the gradients; Lightning must not zero or backprop.
        self.automatic_optimization = False
        # True: each iteration's gradients come from a WholeStep (a CUDA graph on a GPU); set by
        # train.build from trainer.cuda_graph.
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
        """What ended the warm-up: "training error" or "bound"; None if it has not ended."""
        return self.warmup.ended_by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch as training sees it (mean subtracted); for raw images, load_run."""
        return self.forward_net(x)

    # ------------------------------------------------------------------------------------ training
    def configure_optimizers(self):
        fused, o = self.device.type == "cuda", self.optim_cfg
        return torch.optim.SGD(self.net.parameters(), lr=o["lr"], momentum=o["momentum"],
                               weight_decay=o["weight_decay"], fused=fused,
                               foreach=None if fused else True)

    def on_train_end(self) -> None:
        if self._whole is not None:
            self._whole.release()
            self._whole = None

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        step = self.trainer.global_step
        if self.warming_up and (line := self.warmup.check(step)):
            self.print(line)
        # not an LR scheduler: the warm-up ends on a measured error, and lr_at needs no state
        lr = lr_at(step, self.optim_cfg, self.warming_up)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr

    def training_step(self, batch, batch_idx: int) -> None:
        step, (x, y) = self.trainer.global_step, batch  # opt.step() below counts the iteration
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt = self.optimizers()
        if self.whole_step:
            if self._whole is None:
                bf16 = self.trainer.precision == "bf16-mixed"
                self._whole = WholeStep(self.forward_net, opt, bf16=bf16)
            # no zero_grad here: a replay overwrites the gradients the captured backward wrote
            loss, err = self._whole.backward(x, y)
        else:
            opt.zero_grad()
            logits = self.forward_net(x)
            loss = F.cross_entropy(logits, y)
            with torch.no_grad():
                err = (logits.argmax(1) != y).float().mean()
            self.manual_backward(loss)
        opt.step()
        with torch.no_grad():
            self.window.put(step, loss, err)
            self.warmup.record(step, err)

    # ------------------------------------------------------------------------------------- records
    def _inputs(self, split):
        """(normalised images, labels) of a Split in chunks of eval_batch_size, not augmented."""
        n = int(self.cfg["trainer"]["eval_batch_size"])
        for s in range(0, len(split), n):
            x = self.datamodule.normalize(split.images[s:s + n])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, split.labels[s:s + n]

    @torch.no_grad()
    def evaluate(self, split) -> float:
        """Error (fraction) of the network on a Split, in eval mode, in the trainer's precision."""
        was_training = self.net.training
        self.net.eval()
        wrong = torch.zeros((), device=split.labels.device)
        trainer = self._trainer
        with trainer.precision_plugin.forward_context() if trainer is not None else torch.no_grad():
            for x, y in self._inputs(split):
                wrong += (self.forward_net(x).argmax(1) != y).sum()
        self.net.train(was_training)
        return wrong.item() / len(split)

    def take_record(self) -> dict:
        """One row of metrics.csv for the iterations since the last record (one device read)."""
        step = self.trainer.global_step
        loss, error, diverged_at = self.window.take(step)
        elapsed = self.elapsed_before + time.perf_counter() - self.session_start
        row = {"iteration": step, "lr": lr_at(step - 1, self.optim_cfg, self.warming_up),
               "train_loss": loss, "train_error": error, "val_error": math.nan,
               "test_error": math.nan, "elapsed_s": elapsed, "diverged_at": diverged_at}
        if diverged_at is None:
            for name, split in self.datamodule.eval_splits.items():
                row[f"{name}_error"] = self.evaluate(split)
        return row

    def gradients(self) -> list[dict]:
        """gradients.csv's rows of this record: each weighted layer's norms on the probe batch."""
        return probe(self.net, *probe_batch(self.datamodule, self.optim_cfg))

    @torch.no_grad()
    def layer_responses(self, split) -> list[float]:
        """Figure 7: std of each 3x3 layer's response (after BN, before ReLU/addition), fp32."""
        self.net.eval()
        with ResponseStd(self.net) as responses:
            for x, _ in self._inputs(split):
                self.net(x)
        return responses.std()

    # -------------------------------------------------------------------------------------- resume
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the RNG state too: Lightning's checkpoints leave it out
        checkpoint["resdepth"] = {
            **self.warmup.state(), **self.window.state(), "rng": rng_state(),
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.session_start,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["resdepth"]
        self.warmup.load(state)
        self.window.load(state)
        self.elapsed_before = state["elapsed_s"]
        self.session_start = time.perf_counter()
        if self._trainer is not None:  # resuming (load_from_checkpoint only wants the net)
            restore_rng(state["rng"])
            count_steps_manually(checkpoint)


def probe_batch(data, optim: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed batch the gradient records are taken on: the first optim.batch_size training
    images, normalised, not augmented (the same at every record and for every seed)."""
    n = int(optim["batch_size"])
    return data.normalize(data.train.images[:n]), data.train.labels[:n]


def count_steps_manually(checkpoint: dict) -> None:
    """Copy the iteration count of a checkpoint written under automatic optimisation (by resdepth
    before training_step stepped itself) to where manual optimisation reads trainer.global_step."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    automatic = loops.get("epoch_loop.automatic_optimization.optim_progress")
    manual = "epoch_loop.manual_optimization.optim_step_progress"
    if automatic and not loops.get(manual, {}).get("total", {}).get("completed"):
        loops[manual] = copy.deepcopy(automatic["optimizer"]["step"])
