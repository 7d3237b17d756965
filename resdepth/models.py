"""The CIFAR ResNets of He et al. 2016, section 4.2: plain and residual nets of depth 6n + 2.

    depth   n   3x3 layers   params (option A)   paper
       20   3       19            269,722         0.27M
       32   5       31            464,154         0.46M
       44   7       43            658,586         0.66M
       56   9       55            853,018         0.85M
      110  18      109          1,727,962         1.7M
     1202 200     1201         19,421,274        19.4M

A plain net has the same layers and parameters as its residual twin; option B's projections
(1x1 conv + BN where the shape changes) add 2,752. tests/test_models.py checks these counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)


def check_depth(depth: int) -> int:
    """n for depth = 6n + 2, or ValueError naming the valid depths."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"model.depth={depth!r} is not a CIFAR ResNet depth: it must be 6n+2 with n >= 1 "
            f"(8, 14, 20, 26, 32, 38, 44, 50, 56, ..., 110, ..., 1202; "
            f"the paper uses 20, 32, 44, 56, 110, 1202)"
        )
    return (depth - 2) // 6


def check_bn_batch(bn_batch: int, batch_size: int) -> int:
    """bn_batch (images per BN group; 0: whole batch), or ValueError unless it divides the batch."""
    if bn_batch < 0 or (0 < bn_batch < batch_size and batch_size % bn_batch):
        raise ValueError(f"optim.bn_batch={bn_batch} must be 0 (the whole batch) or divide "
                         f"optim.batch_size={batch_size} (e.g. {batch_size // 2} for two groups)")
    return bn_batch


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class GroupBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over groups of `bn_batch` training images (0: all), as on the paper's 2 GPUs."""

    def __init__(self, num_features: int, bn_batch: int = 0) -> None:
        super().__init__(num_features)
        if bn_batch < 0:
            raise ValueError(f"optim.bn_batch={bn_batch} must be >= 0 (0: the whole batch)")
        self.bn_batch = bn_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.bn_batch or len(x) <= self.bn_batch:
            return super().forward(x)
        check_bn_batch(self.bn_batch, len(x))
        norm = super().forward
        # slices along N keep the memory format and static shapes: channels-last, CUDA graphs work
        return torch.cat([norm(part) for part in x.split(self.bn_batch)])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bn_batch={self.bn_batch}"


class PadShortcut(nn.Module):
    """Option A: identity, subsampled by `stride`, zero-padded to `out_planes` channels."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # zero channels split before and after the old ones, as the common CIFAR reproductions do
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


def projection(in_planes: int, out_planes: int, stride: int, bn_batch: int = 0) -> nn.Sequential:
    """Option B: 1x1 convolution + BN where the shape changes."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        GroupBatchNorm2d(out_planes, bn_batch),
    )


class PlainBlock(nn.Module):
    """Two 3x3 conv-BN layers, each followed by ReLU (`shortcut` is not used)."""

    paper_name = "plain"

    def __init__(self, in_planes: int, planes: int, stride: int, *, shortcut: str = "A",
                 bn_batch: int = 0) -> None:
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
    """A PlainBlock whose shortcut is added before the second ReLU: ReLU(F(x) + shortcut(x))."""

    paper_name = "ResNet"

    def __init__(self, in_planes: int, planes: int, stride: int, *, shortcut: str = "A",
                 bn_batch: int = 0) -> None:
        super().__init__(in_planes, planes, stride, shortcut=shortcut, bn_batch=bn_batch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = (PadShortcut(in_planes, planes, stride) if shortcut == "A"
                             else projection(in_planes, planes, stride, bn_batch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        out = out + self.shortcut(x)
        return F.relu(out)


# model.block -> cls(in_planes, planes, stride, shortcut=..., bn_batch=...), with `paper_name` and
# response_layers(): subclassing PlainBlock gives both.
BLOCKS: dict[str, type[nn.Module]] = {}


def register_block(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Add model.block=name, before resdepth.config is imported (its schema reads BLOCKS then)."""
    BLOCKS[name] = cls
    return cls


register_block("plain", PlainBlock)
register_block("residual", ResidualBlock)


def net_name(block: str, depth: int) -> str:
    """The paper's name of a net: plain-20, ResNet-56 (an unregistered kind keeps its own: x-20)."""
    return f"{getattr(BLOCKS.get(block), 'paper_name', block)}-{depth}"


class CifarResNet(nn.Module):
    """A CIFAR network of depth 6n + 2 made of one registered block kind."""

    def __init__(self, *, depth: int, block: str = "residual", shortcut: str = "A",
                 in_channels: int = 3, num_classes: int = 10, bn_batch: int = 0) -> None:
        super().__init__()
        n = check_depth(depth)
        if block not in BLOCKS:
            raise ValueError(f"model.block={block!r} is not one of {', '.join(BLOCKS)}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"model.shortcut={shortcut!r} is not one of {', '.join(SHORTCUTS)}")
        if in_channels < 1 or num_classes < 2:
            raise ValueError(f"need in_channels >= 1 and num_classes >= 2, "
                             f"got {in_channels} and {num_classes}")
        self.depth, self.block, self.shortcut, self.bn_batch = depth, block, shortcut, bn_batch
        self.conv1 = conv3x3(in_channels, STAGE_WIDTHS[0])
        self.bn1 = GroupBatchNorm2d(STAGE_WIDTHS[0], bn_batch)
        make_block = BLOCKS[block]
        layers: list[nn.Module] = []
        in_planes = STAGE_WIDTHS[0]
        for stage, planes in enumerate(STAGE_WIDTHS):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(make_block(in_planes, planes, stride, shortcut=shortcut,
                                         bn_batch=bn_batch))
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # the paper's initialisation (He et al. 2015)
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
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
        """The BN after every 3x3 conv, in layer order (6n + 1 of them): Figure 7's layers."""
        layers = [self.bn1]
        for b in self.blocks:
            layers += b.response_layers()
        return layers


class ResponseStd:
    """Figure 7: each 3x3 layer's response std (after BN, before ReLU/addition) inside `with`."""

    def __init__(self, model: CifarResNet) -> None:
        self.layers = model.response_layers()
        device = next(model.parameters()).device  # sums stay there: read once, in std()
        # per layer: count, sum, sum of squares
        self.sums = torch.zeros(len(self.layers), 3, dtype=torch.float64, device=device)
        self.handles: list = []

    def _hook(self, index: int):
        def hook(module, inputs, output):
            y = output.detach().double()
            self.sums[index, 0] += y.numel()
            self.sums[index, 1] += y.sum()
            self.sums[index, 2] += y.square().sum()

        return hook

    def __enter__(self) -> "ResponseStd":
        self.handles = [layer.register_forward_hook(self._hook(i))
                        for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def std(self) -> list[float]:
        n, s, ss = self.sums.cpu().unbind(1)
        var = (ss - s * s / n) / (n - 1)
        return var.clamp_min(0).sqrt().tolist()


def cifar_resnet(*, depth: int, block: str = "residual", shortcut: str = "A",
                 in_channels: int = 3, num_classes: int = 10, bn_batch: int = 0) -> CifarResNet:
    """A CIFAR net of depth 6n + 2 of a registered block kind; ValueError on bad arguments."""
    return CifarResNet(depth=depth, block=block, shortcut=shortcut, in_channels=in_channels,
                       num_classes=num_classes, bn_batch=bn_batch)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
