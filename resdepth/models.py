"""The CIFAR ResNet family of He et al. 2016, section 4.2: plain and residual nets of depth 6n + 2.

    depth   n   3x3 layers   params (option A)   paper
       20   3       19            269,722         0.27M
       32   5       31            464,154         0.46M
       44   7       43            658,586         0.66M
       56   9       55            853,018         0.85M
      110  18      109          1,727,962         1.7M
     1202 200     1201         19,421,274        19.4M

Stem: 3x3 conv, 16 filters. Three stages of n blocks (2n 3x3 convs) on 32x32, 16x16, 8x8 maps with 16, 32, 64
filters; the first conv of stages 2 and 3 has stride 2. Every conv is followed by BN. Global average pool, linear.
A plain net has exactly the same layers and parameters as its residual twin, without the shortcuts. Option A
shortcuts have no parameters; option B adds a 1x1 projection + BN where the shape changes (+2,752 parameters).

Block kinds live in the registry BLOCKS ("plain": PlainBlock, "residual": ResidualBlock); register_block adds one.
`bn_batch` > 0 makes every BN normalise a training batch in groups of that many images, as the paper's two GPUs did
(64 images each); evaluation is unchanged.

This module knows nothing of training; the counts above are checked by tests/test_models.py.

Imports nothing of resdepth (no Lightning, no files).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)


def valid_depths(limit: int = 1202) -> list[int]:
    """Depths 6n + 2 up to `limit`, for error messages."""
    return [6 * n + 2 for n in range(1, (limit - 2) // 6 + 1)]


def check_depth(depth: int) -> int:
    """Return n for depth = 6n + 2, or raise ValueError naming the valid depths."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"model.depth={depth!r} is not a CIFAR ResNet depth: it must be 6n+2 with n >= 1 "
            f"(8, 14, 20, 26, 32, 38, 44, 50, 56, ..., 110, ..., 1202; the paper uses 20, 32, 44, 56, 110, 1202)"
        )
    return (depth - 2) // 6


def check_bn_batch(bn_batch: int, batch_size: int) -> int:
    """Return bn_batch (images per BN group in training; 0: the whole batch), or raise ValueError naming both
    values when it is negative or does not divide the batch."""
    if bn_batch < 0 or (0 < bn_batch < batch_size and batch_size % bn_batch):
        raise ValueError(f"optim.bn_batch={bn_batch} must be 0 (the whole batch) or divide "
                         f"optim.batch_size={batch_size} (e.g. {batch_size // 2} for two groups)")
    return bn_batch


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class GroupBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises a batch in groups of `bn_batch` images: statistics per group, the
    running statistics updated from each group in turn. bn_batch=0, or evaluation: plain BatchNorm2d. Same
    parameters and state as BatchNorm2d, so weights load either way."""

    def __init__(self, num_features: int, bn_batch: int = 0) -> None:
        super().__init__(num_features)
        if bn_batch < 0:
            raise ValueError(f"optim.bn_batch={bn_batch} must be >= 0 (0: the whole batch)")
        self.bn_batch = bn_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.bn_batch or len(x) <= self.bn_batch:  # one group: the whole batch
            return super().forward(x)
        check_bn_batch(self.bn_batch, len(x))
        norm = super().forward
        # Slices along the batch keep the memory format (N is outermost in NCHW and NHWC) and have static shapes,
        # so channels-last inputs and captured CUDA graphs work unchanged.
        return torch.cat([norm(part) for part in x.split(self.bn_batch)])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bn_batch={self.bn_batch}"


class PadShortcut(nn.Module):
    """Option A: identity, subsampled by `stride` and zero-padded to `out_planes` channels. No parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # New channels split evenly before and after the old ones, as in the common CIFAR reproductions.
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


def projection(in_planes: int, out_planes: int, stride: int, bn_batch: int = 0) -> nn.Sequential:
    """Option B: 1x1 convolution + BN where the shape changes."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        GroupBatchNorm2d(out_planes, bn_batch),
    )


class PlainBlock(nn.Module):
    """Two 3x3 conv-BN layers, each followed by ReLU: a plain net's pair of layers (`shortcut` is not used)."""

    paper_name = "plain"

    def __init__(self, in_planes: int, planes: int, stride: int, *, shortcut: str = "A", bn_batch: int = 0) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = GroupBatchNorm2d(planes, bn_batch)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = GroupBatchNorm2d(planes, bn_batch)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The two layers up to the second BN: the paper's F(x)."""
        out = self.conv1(x)
        out = self.bn1(out)
        out = F.relu(out)
        out = self.conv2(out)
        return self.bn2(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.branch(x))

    def response_layers(self) -> list[nn.BatchNorm2d]:
        """The BN after each 3x3 conv, in order: where Figure 7 reads the responses."""
        return [self.bn1, self.bn2]


class ResidualBlock(PlainBlock):
    """A PlainBlock whose shortcut is added before the second ReLU: out = ReLU(F(x) + shortcut(x))."""

    paper_name = "ResNet"

    def __init__(self, in_planes: int, planes: int, stride: int, *, shortcut: str = "A", bn_batch: int = 0) -> None:
        super().__init__(in_planes, planes, stride, shortcut=shortcut, bn_batch=bn_batch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(in_planes, planes, stride) if shortcut == "A" else projection(
                in_planes, planes, stride, bn_batch
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        out = out + self.shortcut(x)
        return F.relu(out)


# model.block -> block class. A class is built as cls(in_planes, planes, stride, shortcut=..., bn_batch=...) and
# carries `paper_name` (net_name) and response_layers() (Figure 7): subclassing PlainBlock gives both.
BLOCKS: dict[str, type[nn.Module]] = {}


def register_block(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Add the block kind `name` (model.block=name); returns cls. The config schema's choices are read from BLOCKS
    when resdepth.config is first imported: register before that for Hydra to accept the name."""
    BLOCKS[name] = cls
    return cls


register_block("plain", PlainBlock)
register_block("residual", ResidualBlock)


def net_name(block: str, depth: int) -> str:
    """The paper's name of a net: plain-20, ResNet-56 (an unregistered kind: its own name, e.g. dense-20)."""
    return f"{getattr(BLOCKS.get(block), 'paper_name', block)}-{depth}"


class CifarResNet(nn.Module):
    """A CIFAR network of depth 6n + 2 made of one registered block kind (see the module docstring)."""

    def __init__(self, *, depth: int, block: str = "residual", shortcut: str = "A", in_channels: int = 3,
                 num_classes: int = 10, bn_batch: int = 0) -> None:
        super().__init__()
        n = check_depth(depth)
        if block not in BLOCKS:
            raise ValueError(f"model.block={block!r} is not one of {', '.join(BLOCKS)}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"model.shortcut={shortcut!r} is not one of {', '.join(SHORTCUTS)}")
        if in_channels < 1 or num_classes < 2:
            raise ValueError(f"need in_channels >= 1 and num_classes >= 2, got {in_channels} and {num_classes}")
        self.depth, self.block, self.shortcut, self.bn_batch = depth, block, shortcut, bn_batch
        self.conv1 = conv3x3(in_channels, STAGE_WIDTHS[0])
        self.bn1 = GroupBatchNorm2d(STAGE_WIDTHS[0], bn_batch)
        make_block = BLOCKS[block]
        layers: list[nn.Module] = []
        in_planes = STAGE_WIDTHS[0]
        for stage, planes in enumerate(STAGE_WIDTHS):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(make_block(in_planes, planes, stride, shortcut=shortcut, bn_batch=bn_batch))
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")  # He et al. 2015
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.bn1(out)
        out = F.relu(out)
        out = self.blocks(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)

    def response_layers(self) -> list[nn.BatchNorm2d]:
        """The BN after every 3x3 conv, in layer order (6n + 1 of them): where Figure 7 reads the responses."""
        layers = [self.bn1]
        for b in self.blocks:
            layers += b.response_layers()
        return layers


class ResponseStd:
    """Accumulates the standard deviation of every 3x3 layer's response (after BN, before ReLU/addition).

    Use as a context manager around forward passes (the paper's Figure 7 measurement, over a whole test set):
    the std of each layer is taken over all its output elements (images, channels, positions) seen so far.
    """

    def __init__(self, model: CifarResNet) -> None:
        self.layers = model.response_layers()
        device = next(model.parameters()).device  # sums stay there: read once, in std()
        self.sums = torch.zeros(len(self.layers), 3, dtype=torch.float64, device=device)  # count, sum, sum of squares
        self.handles: list = []

    def _hook(self, index: int):
        def hook(module, inputs, output):
            y = output.detach().double()
            self.sums[index, 0] += y.numel()
            self.sums[index, 1] += y.sum()
            self.sums[index, 2] += y.square().sum()

        return hook

    def __enter__(self) -> "ResponseStd":
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def std(self) -> list[float]:
        n, s, ss = self.sums.cpu().unbind(1)
        var = (ss - s * s / n) / (n - 1)
        return var.clamp_min(0).sqrt().tolist()


def cifar_resnet(*, depth: int, block: str = "residual", shortcut: str = "A", in_channels: int = 3,
                 num_classes: int = 10, bn_batch: int = 0) -> CifarResNet:
    """Build a CIFAR ResNet (or its plain twin, or another registered block kind) of depth 6n + 2, its BN
    normalising training batches in groups of bn_batch images (0: whole batches); raises ValueError on bad
    arguments."""
    return CifarResNet(depth=depth, block=block, shortcut=shortcut, in_channels=in_channels, num_classes=num_classes,
                       bn_batch=bn_batch)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
