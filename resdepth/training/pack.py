"""Packed runs: K compatible runs of one depth trained as one wide net, each still its own run.

Every conv of the K nets is one grouped conv (groups=K; net k owns output channels k*C..(k+1)*C-1),
every BN one GroupBatchNorm2d(K*C) (per-channel statistics: K independent BNs), the classifier K
slices, one cross entropy per net (summed: each net's gradient is its own loss's); a plain net in
a mixed pack adds its shortcut times 0. Net k's state is the dim-0 slice k of every packed tensor
under CifarResNet's names, so a pack writes each run's last.ckpt in the solo format, a packed run
resumes alone and solo runs resume as a pack. These nets are so thin that one of them leaves most
of a GPU idle inside every kernel; K of them fill it. On a CPU, which they already keep busy, a
pack is slower (measured, docs/sweeps.md): trainer.pack=auto packs on CUDA GPUs only.
"""

from __future__ import annotations

import json
import math
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.sgd import sgd as sgd_update

from ..config import fill_legacy, semantic_config
from ..data import DataModule
from ..data.module import TrainBatches
from ..models import (STAGE_WIDTHS, GroupBatchNorm2d, ResponseStd, check_bn_batch, check_depth,
                      cifar_resnet)
from .. import rundir
from .step import WholeStep
from .gradients import probe
from .system import Warmup, count_steps_manually, lr_at, probe_batch, restore_rng, rng_state

PACKABLE = ("plain", "residual")  # block kinds a pack can hold (a registered kind trains alone)


def pack_key(cfg: dict) -> str | None:
    """Runs with equal keys can train in one pack (all but the seed and the block kind equal);
    None: this run trains alone."""
    if cfg["model"]["block"] not in PACKABLE:
        return None
    same = {k: v for k, v in semantic_config(cfg).items() if k not in ("seed",)}
    model = dict(same.get("model", {}))
    if model.get("shortcut") == "A":  # plain and residual nets of option A share every tensor
        model.pop("block", None)
    return json.dumps({**same, "model": model, "trainer": cfg["trainer"]}, sort_keys=True)


def plan_packs(cfgs: list[dict], most: int | list[int], starts: list) -> list[list[int]]:
    """Indices of `cfgs` grouped into packs of at most `most` runs (per run: config.pack_size;
    sizes as equal as they can be), in the order of each pack's first run. `starts`: each run's
    checkpoint iteration; a pack starts its runs together."""
    most = most if isinstance(most, list) else [most] * len(cfgs)
    groups: dict = {}
    for i, cfg in enumerate(cfgs):
        key = pack_key(cfg) if most[i] > 1 else None
        groups.setdefault((key, starts[i]) if key is not None else ("alone", i), []).append(i)
    packs = []
    for members in groups.values():
        n = -(-len(members) // most[members[0]])
        size = -(-len(members) // n)
        packs += [members[s:s + size] for s in range(0, len(members), size)]
    return sorted(packs, key=lambda p: p[0])


# ------------------------------------------------------------------------------------ the net
class PackedConv(nn.Conv2d):
    """K convs without bias: weight (K*out, in, k, k). On CUDA one grouped conv, the point of
    packing; elsewhere (or with `grouped` False) each net's conv is the solo op on the solo
    shapes, so that a pack on a CPU trains bitwise as its runs alone on every CPU (oneDNN's
    grouped conv sums in another order than the conv alone on some CPUs). `grouped` True forces
    the grouped conv anywhere."""

    grouped: bool | None = None  # None: grouped on CUDA only

    def __init__(self, K: int, in_planes: int, planes: int, kernel: int, stride: int) -> None:
        super().__init__(K * in_planes, K * planes, kernel, stride, kernel // 2, bias=False,
                         groups=K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grouped or (self.grouped is None and x.is_cuda):
            return super().forward(x)
        fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
               else torch.contiguous_format)  # each slice as the solo conv would get it
        i, o = self.in_channels // self.groups, self.out_channels // self.groups
        return torch.cat([F.conv2d(x[:, k * i:(k + 1) * i].contiguous(memory_format=fmt),
                                   self.weight[k * o:(k + 1) * o], None, self.stride,
                                   self.padding) for k in range(self.groups)], 1)


class PackedPadShortcut(nn.Module):
    """Option A for K nets: each net's identity subsampled and zero-padded in its own channels."""

    def __init__(self, K: int, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.K, self.in_planes, self.planes, self.stride = K, in_planes, planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        n, _, h, w = x.shape
        extra = self.planes - self.in_planes
        x = F.pad(x.reshape(n, self.K, self.in_planes, h, w),
                  (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x.reshape(n, self.K * self.planes, h, w)


class PackedBlock(nn.Module):
    """K blocks (plain or residual): the names of PlainBlock and ResidualBlock."""

    def __init__(self, K: int, in_planes: int, planes: int, stride: int, residual: list[bool],
                 shortcut: str, bn_batch: int) -> None:
        super().__init__()
        self.conv1 = PackedConv(K, in_planes, planes, 3, stride)
        self.bn1 = GroupBatchNorm2d(K * planes, bn_batch)
        self.conv2 = PackedConv(K, planes, planes, 3, 1)
        self.bn2 = GroupBatchNorm2d(K * planes, bn_batch)
        self.all_residual, self.any_residual = all(residual), any(residual)
        if self.any_residual:
            self.shortcut: nn.Module = nn.Identity()
            if stride != 1 or in_planes != planes:
                self.shortcut = (PackedPadShortcut(K, in_planes, planes, stride)
                                 if shortcut == "A" else nn.Sequential(
                                     PackedConv(K, in_planes, planes, 1, stride),
                                     GroupBatchNorm2d(K * planes, bn_batch)))
        mask = torch.tensor(residual, dtype=torch.float32).repeat_interleave(planes)
        self.register_buffer("mask", mask.view(1, K * planes, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.all_residual:
            out = out + self.shortcut(x)
        elif self.any_residual:  # x * 0 + out == out exactly: the plain nets add nothing
            s = self.shortcut(x)
            out = out + s * self.mask.to(s.dtype)
        return F.relu(out)


class PackedLinear(nn.Module):
    """K classifiers: weight (K*out, in); (N, K*in) features -> (K, N, out) logits."""

    def __init__(self, K: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.K, self.i, self.o = K, in_features, out_features
        self.weight = nn.Parameter(torch.empty(K * out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(K * out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i, o = self.i, self.o  # per net F.linear: the solo op on the solo shapes
        return torch.stack([F.linear(x[:, k * i:(k + 1) * i], self.weight[k * o:(k + 1) * o],
                                     self.bias[k * o:(k + 1) * o]) for k in range(self.K)])


class PackedResNet(nn.Module):
    """K CifarResNets of one depth and shortcut (plain, residual or both, option A) as one net."""

    def __init__(self, *, depth: int, blocks: list[str], shortcut: str = "A",
                 in_channels: int = 3, num_classes: int = 10, bn_batch: int = 0) -> None:
        super().__init__()
        n, K = check_depth(depth), len(blocks)
        residual = [b == "residual" for b in blocks]
        if shortcut != "A" and any(residual) and not all(residual):
            raise ValueError("a pack mixes plain and residual nets of option A only")
        self.K, self.in_channels = K, in_channels
        self.conv1 = PackedConv(K, in_channels, STAGE_WIDTHS[0], 3, 1)
        self.bn1 = GroupBatchNorm2d(K * STAGE_WIDTHS[0], bn_batch)
        layers, in_planes = [], STAGE_WIDTHS[0]
        for stage, planes in enumerate(STAGE_WIDTHS):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(PackedBlock(K, in_planes, planes, stride, residual, shortcut,
                                          bn_batch))
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.fc = PackedLinear(K, in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, K*C, H, W), net k's images in channels k*C..; the logits (K, N, classes)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.blocks(out)
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def pack_state(states: list[dict]) -> dict:
    """Solo state dicts (CifarResNet's names) -> the pack's: each tensor concatenated along dim
    0; a scalar (BN's num_batches_tracked) taken from the first."""
    return {key: torch.cat([s[key] for s in states]) if states[0][key].dim() else
            states[0][key].clone() for key in states[0]}


def unpack_state(state: dict, K: int, k: int) -> dict:
    """Net k's solo state dict from the pack's."""
    return {key: (v.chunk(K)[k] if v.dim() else v).clone() for key, v in state.items()}


def pack_loss(logits: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Each net's mean cross entropy (K,)."""
    return torch.stack([F.cross_entropy(l, y) for l, y in zip(logits, ys)])


def pack_error(logits: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Each net's top-1 error on its batch, a fraction (K,)."""
    return torch.stack([(l.argmax(1) != y).float().mean() for l, y in zip(logits, ys)])


class PackedSGD(torch.optim.Optimizer):
    """torch.optim.SGD's update for a pack, with each net's own lr (`lrs`): one call on the whole
    tensors while they agree, else one per lr on the nets' slices (dim-0 views). Momentum buffers
    start at zero: 0 * momentum + g == g, what SGD's first step gives."""

    def __init__(self, params, K: int, *, lr: float, momentum: float, weight_decay: float,
                 fused: bool) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.K, self.fused, self.lrs = K, fused, [lr] * K

    def _update(self, params, grads, bufs, lr: float) -> None:
        g = self.param_groups[0]  # as torch.optim.SGD calls it (resdepth: foreach on a CPU)
        sgd_update(params, grads, bufs, foreach=None if self.fused else True,
                   fused=self.fused or None, weight_decay=g["weight_decay"],
                   momentum=g["momentum"], lr=lr, dampening=0.0, nesterov=False, maximize=False)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            with torch.enable_grad():
                closure()
        params = self.param_groups[0]["params"]
        bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
        grads = [p.grad for p in params]
        if len(set(self.lrs)) == 1:
            return self._update(params, grads, bufs, self.lrs[0])
        for lr in sorted(set(self.lrs)):
            ks = [k for k in range(self.K) if self.lrs[k] == lr]
            self._update(*([t.chunk(self.K)[k] for t in ts for k in ks]
                           for ts in (params, grads, bufs)), lr)


# ------------------------------------------------------------------------------- the module
class PackWindow(nn.Module):
    """Each net's training loss and error of every iteration since the last record (device)."""

    def __init__(self, size: int, K: int) -> None:
        super().__init__()
        self.start = 0
        self.register_buffer("values", torch.zeros(size, 2, K), persistent=False)

    def put(self, step: int, losses: torch.Tensor, errors: torch.Tensor) -> None:
        self.values[(step - self.start) % len(self.values)] = torch.stack([losses, errors])

    def take(self, step: int) -> list[tuple[float, float, int | None]]:
        """Per net: (mean loss, mean error, first 1-based iteration of a loss not finite)."""
        values = self.values[:step - self.start].double().cpu()
        out = []
        for k in range(values.shape[2]):
            bad = (~torch.isfinite(values[:, 0, k])).nonzero()
            out.append((values[:, 0, k].mean().item(), values[:, 1, k].mean().item(),
                        self.start + int(bad[0]) + 1 if len(bad) else None))
        self.start = step
        return out


class PackSystem(pl.LightningModule):
    """Trains the runs `cfgs` (pack_key equal) as one PackedResNet with the paper's protocol.

    Everything per run that System keeps (warm-up, records, elapsed time) is kept per net; the
    checkpoint Lightning writes is never used: each run's last.ckpt is member_checkpoint(k).
    """

    def __init__(self, cfgs: list[dict], in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.cfgs = cfgs = [fill_legacy(c) for c in cfgs]
        self.K, first = len(cfgs), cfgs[0]
        m, self.optim_cfg, t = first["model"], first["optim"], first["trainer"]
        self.in_channels, self.num_classes = in_channels, num_classes
        bn_batch = check_bn_batch(int(self.optim_cfg.get("bn_batch", 0)),
                                  int(self.optim_cfg["batch_size"]))
        self.solo_args = dict(depth=m["depth"], shortcut=m["shortcut"], in_channels=in_channels,
                              num_classes=num_classes, bn_batch=bn_batch)
        nets = []
        for cfg in cfgs:  # each net initialised as its solo run initialises it
            pl.seed_everything(cfg["seed"], workers=False, verbose=False)
            nets.append(cifar_resnet(block=cfg["model"]["block"], **self.solo_args))
        self.net = PackedResNet(blocks=[c["model"]["block"] for c in cfgs], **self.solo_args)
        self.net.load_state_dict(pack_state([n.state_dict() for n in nets]))
        self.channels_last = bool(t["channels_last"])
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        forward = torch.compile(self.net, mode=t["compile_mode"]) if t["compile"] else self.net
        self.__dict__["forward_net"] = forward  # out of the registry: checkpoints hold it once
        self.warmups = nn.ModuleList(Warmup(c["optim"], m["depth"]) for c in cfgs)
        self.window = PackWindow(int(t["eval_every"]), self.K)
        self.elapsed_before = [0.0] * self.K
        self.session_start = time.perf_counter()
        self.datamodule = None
        self.automatic_optimization = False
        self.whole_step = False
        self._whole: WholeStep | None = None
        self._records: tuple[int, list[dict]] | None = None
        self._dumped: tuple[int, dict] | None = None
        self.resume_from: list = []  # each net's last.ckpt when the pack resumes (train_pack)

    # ------------------------------------------------------------------------------- training
    def configure_optimizers(self):
        o = self.optim_cfg
        return PackedSGD(self.net.parameters(), self.K, lr=o["lr"], momentum=o["momentum"],
                         weight_decay=o["weight_decay"], fused=self.device.type == "cuda")

    def on_train_end(self) -> None:
        if self._whole is not None:
            self._whole.release()
            self._whole = None

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        step = self.trainer.global_step
        for cfg, warmup in zip(self.cfgs, self.warmups):
            if warmup.on and (line := warmup.check(step)):
                print(f"[{member_label(cfg)}] {line}", flush=True)
        self.optimizers().optimizer.lrs = [lr_at(step, self.optim_cfg, w.on)
                                           for w in self.warmups]

    def training_step(self, batch, batch_idx: int) -> None:
        step, (x, ys) = self.trainer.global_step, batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt = self.optimizers()
        if self.whole_step:
            if self._whole is None:
                bf16 = self.trainer.precision == "bf16-mixed"
                self._whole = WholeStep(self.forward_net, opt, bf16=bf16, loss=pack_loss,
                                        error=pack_error)
            losses, errors = self._whole.backward(x, ys)
        else:
            opt.zero_grad()
            logits = self.forward_net(x)
            losses = pack_loss(logits, ys)
            with torch.no_grad():
                errors = pack_error(logits, ys)
            self.manual_backward(losses.sum())
        opt.step()
        with torch.no_grad():
            self.window.put(step, losses.detach().float(), errors)
            for k, warmup in enumerate(self.warmups):
                warmup.record(step, errors[k])

    # -------------------------------------------------------------------------------- records
    @torch.no_grad()
    def evaluate(self, split) -> list[float]:
        """Each net's error (fraction) on a Split: one packed forward per chunk, eval mode."""
        was_training = self.net.training
        self.net.eval()
        wrong = torch.zeros(self.K, device=split.labels.device)
        n = int(self.cfgs[0]["trainer"]["eval_batch_size"])
        with self.trainer.precision_plugin.forward_context():
            for s in range(0, len(split), n):
                x = self.datamodule.normalize(split.images[s:s + n]).repeat(1, self.K, 1, 1)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = split.labels[s:s + n]
                wrong += (self.forward_net(x).argmax(2) != y).sum(1)
        self.net.train(was_training)
        return (wrong.double().cpu() / len(split)).tolist()

    def take_record(self, k: int) -> dict:
        """Net k's metrics.csv row for the iterations since the last record; the records of all
        nets are taken together, once per step (one device read, one evaluation)."""
        step = self.trainer.global_step
        if self._records is None or self._records[0] != step:
            self._records = (step, self._take_records(step))
        return self._records[1][k]

    def _take_records(self, step: int) -> list[dict]:
        taken = self.window.take(step)
        now = time.perf_counter() - self.session_start
        evals = {name: self.evaluate(split) for name, split in self.datamodule.eval_splits.items()}
        rows = []
        for k, (loss, error, diverged_at) in enumerate(taken):
            row = {"iteration": step,
                   "lr": lr_at(step - 1, self.optim_cfg, self.warmups[k].on),
                   "train_loss": loss, "train_error": error, "val_error": math.nan,
                   "test_error": math.nan, "elapsed_s": self.elapsed_before[k] + now,
                   "diverged_at": diverged_at}
            if diverged_at is None:
                for name, errors in evals.items():
                    row[f"{name}_error"] = errors[k]
            rows.append(row)
        return rows

    def solo_net(self, k: int) -> nn.Module:
        """Net k as the CifarResNet its solo run trains, with its weights and BN statistics."""
        net = cifar_resnet(block=self.cfgs[k]["model"]["block"], **self.solo_args)
        state = unpack_state(self.net.state_dict(), self.K, k)
        net.load_state_dict(state)  # the same names: a mixed pack's shortcuts hold no tensors
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net.to(self.device)

    # ---------------------------------------------------------------------- checkpoints
    def member_checkpoint(self, k: int, trainer: pl.Trainer) -> dict:
        """Net k's last.ckpt in the solo format: what `resdepth train` of that run resumes."""
        step = trainer.global_step
        if self._dumped is None or self._dumped[0] != step:
            self._dumped = (step, trainer._checkpoint_connector.dump_checkpoint())
        pack = self._dumped[1]
        ckpt = {key: v for key, v in pack.items()
                if key not in ("state_dict", "optimizer_states", "resdepth")}
        ckpt["state_dict"] = {f"net.{key}": v for key, v in unpack_state(
            {key[4:]: v for key, v in pack["state_dict"].items()}, self.K, k).items()}
        ckpt["optimizer_states"] = [self._solo_optimizer_state(k, pack["optimizer_states"][0])]
        ckpt["hparams_name"] = "kwargs"
        ckpt["hyper_parameters"] = {"cfg": self.cfgs[k], "in_channels": self.in_channels,
                                    "num_classes": self.num_classes}
        values, start = self.window.values[:, :, k].cpu(), self.window.start
        ckpt["resdepth"] = {**self.warmups[k].state(), "window": values, "window_start": start,
                            "rng": rng_state(), "elapsed_s": self.elapsed_before[k]
                            + time.perf_counter() - self.session_start}
        return ckpt

    def _solo_optimizer_state(self, k: int, state: dict) -> dict:
        """torch.optim.SGD's state_dict for net k, as its solo run's optimizer writes it."""
        fused = self.device.type == "cuda"
        group = torch.optim.SGD([torch.zeros(1)], lr=self.optimizers().optimizer.lrs[k],
                                momentum=self.optim_cfg["momentum"],
                                weight_decay=self.optim_cfg["weight_decay"],
                                foreach=None if fused else True, fused=fused or None,
                                ).state_dict()["param_groups"][0]
        group["params"] = list(range(len(state["param_groups"][0]["params"])))
        return {"state": {i: {"momentum_buffer": s["momentum_buffer"].chunk(self.K)[k].clone()}
                          for i, s in state["state"].items()}, "param_groups": [group]}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Lightning loads net 0's last.ckpt; the pack's state is made of every net's."""
        ckpts = [checkpoint] + [rundir.load_tensors(path, map_location="cpu")
                                for path in self.resume_from[1:]]
        states = [{key[4:]: v for key, v in c["state_dict"].items()} for c in ckpts]
        checkpoint["state_dict"] = {f"net.{key}": v for key, v in pack_state(states).items()}
        solo = [c["optimizer_states"][0] for c in ckpts]
        checkpoint["optimizer_states"] = [{
            "state": {i: {"momentum_buffer": torch.cat([s["state"][i]["momentum_buffer"]
                                                        for s in solo])}
                      for i in solo[0]["state"]},
            "param_groups": [{**solo[0]["param_groups"][0], "lr": self.optim_cfg["lr"]}]}]
        windows = []
        for k, c in enumerate(ckpts):
            state = c["resdepth"]
            self.warmups[k].load(state)
            self.elapsed_before[k] = state["elapsed_s"]
            windows.append(state["window"])
        self.window.values.copy_(torch.stack(windows, 2))
        self.window.start = ckpts[0]["resdepth"]["window_start"]
        self.session_start = time.perf_counter()
        if self._trainer is not None:
            restore_rng(ckpts[0]["resdepth"]["rng"])
            count_steps_manually(checkpoint)


def member_label(cfg: dict) -> str:
    from .records import label  # the run's own name in every line it prints

    return label(cfg)


# -------------------------------------------------------------------------------- the data
class PackBatches:
    """Each run's own training batches (its seed's order and augmentation), side by side."""

    def __init__(self, batches: list[TrainBatches]) -> None:
        self.batches = batches

    def __iter__(self):
        return zip(*self.batches)


class PackData(pl.LightningDataModule):
    """The runs' one dataset (same splits for every seed) and each run's batches: a pack's batch
    is its nets' augmented images along channels (N, K*C, H, W) and their labels (K, N)."""

    def __init__(self, data: DataModule, seeds: list[int]) -> None:
        super().__init__()
        self.data, self.seeds = data, seeds

    def setup(self, stage: str) -> None:
        self.data.to(self.trainer.strategy.root_device)

    def train_dataloader(self) -> PackBatches:
        d, start = self.data, self.trainer.global_step
        return PackBatches([TrainBatches(d.train, d.batch_size, seed, start, pad=d.pad)
                            for seed in self.seeds])

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        xs, ys = zip(*(self.data.on_after_batch_transfer(b, dataloader_idx) for b in batch))
        return torch.cat(xs, 1), torch.stack(ys)


class Member:
    """Run k of a pack, as train.py's set-up and records see a run's System."""

    def __init__(self, system: PackSystem, k: int) -> None:
        self.system, self.k = system, k

    @property
    def net(self) -> nn.Module:
        return self.system.solo_net(self.k)

    @property
    def whole_step(self) -> bool:
        return self.system.whole_step

    @property
    def warming_up(self) -> bool:
        return self.system.warmups[self.k].on

    @property
    def warmup_steps(self) -> int:
        return self.system.warmups[self.k].ended_at

    @property
    def warmup_ended_by(self) -> str | None:
        return self.system.warmups[self.k].ended_by

    def take_record(self) -> dict:
        return self.system.take_record(self.k)

    def gradients(self) -> list[dict]:
        """This run's gradient records, on its net alone, as its solo run takes them."""
        return probe(self.net, *probe_batch(self.system.datamodule, self.system.optim_cfg))

    @torch.no_grad()
    def layer_responses(self, split) -> list[float]:
        """Figure 7's responses of this run's net alone, as its solo run measures them."""
        system, net = self.system, self.net.eval()
        n = int(system.cfgs[self.k]["trainer"]["eval_batch_size"])
        with ResponseStd(net) as responses:
            for s in range(0, len(split), n):
                x = system.datamodule.normalize(split.images[s:s + n])
                net(x.contiguous(memory_format=torch.channels_last) if system.channels_last
                    else x)
        return responses.std()
