"""ResNets as in RepDistiller.

* ``resnet8 ... resnet110, resnet8x4, resnet32x4``: the CIFAR ResNet (``resnet.py``):
  16-channel 3x3 stem, three stages of BasicBlocks, shortcut named ``downsample``, head ``fc``.
* ``ResNet18 ... ResNet152``: RepDistiller's ``resnetv2.py`` (a CIFAR-stem torchvision-like
  ResNet): 64-channel 3x3 stride-1 stem, no max-pool, four stages, shortcut named
  ``shortcut``, head ``linear``.

Both are post-activation ResNets; each stage output is post-ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdx.models.base import ZooModel, conv1x1, conv3x3
from kdx.models.registry import register_model
from kdx.models.taps import Tap


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential:
    if stride == 1 and cin == cout:
        return nn.Sequential()  # identity; holds no state, like RepDistiller's ``None``
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: str = "downsample"):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self._sc = shortcut
        setattr(self, shortcut, _shortcut(cin, planes, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + getattr(self, self._sc)(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: str = "shortcut"):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self._sc = shortcut
        setattr(self, shortcut, _shortcut(cin, cout, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + getattr(self, self._sc)(x))


class ResNet(ZooModel):
    """(RepDistiller resnet.py / resnetv2.py) features: f0 = ReLU(bn1), f1..fk the stage outputs
    (post-ReLU); final map the last stage; ``get_feat_modules``: conv1, bn1, the stages."""

    def feature_taps(self):
        return Tap("bn1", relu=True), [Tap(s) for s in self.stage_names]

    def final_tap(self):
        return Tap(self.stage_names[-1])

    def feat_modules(self):
        return [self.conv1, self.bn1] + [self.get_submodule(s) for s in self.stage_names]

    """conv3x3 stem + BN + ReLU, then ``layer1..layerK`` (first stride 1, then 2), GAP, Linear."""

    def __init__(self, block, depths, widths, stem: int, num_classes: int = 100, in_channels: int = 3,
                 shortcut: str = "downsample", classifier: str = "fc"):
        super().__init__(num_classes, in_channels)
        self.conv1 = conv3x3(in_channels, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        cin = stem
        self.stage_names, self.stage_channels = [], []
        for i, (depth, planes) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1, shortcut))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_names.append(f"layer{i + 1}")
            self.stage_channels.append(cin)
        self.num_features = cin
        self.classifier_name = classifier
        setattr(self, classifier, nn.Linear(cin, num_classes))
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


# ---------------------------------------------------------------- CIFAR ResNets (resnet.py)

def _cifar(depth: int, filters, num_classes: int, in_channels: int, **kw) -> ResNet:
    assert (depth - 2) % 6 == 0, depth
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n] * 3, filters[1:], filters[0], num_classes, in_channels,
                  shortcut="downsample", classifier="fc", **kw)


_F16 = (16, 16, 32, 64)
_F32 = (32, 64, 128, 256)


@register_model(family="resnet_cifar")
def resnet8(num_classes=100, in_channels=3, **kw):
    """CIFAR ResNet-8 (1 BasicBlock per stage, widths 16/32/64)."""
    return _cifar(8, _F16, num_classes, in_channels, **kw)


@register_model(family="resnet_cifar")
def resnet14(num_classes=100, in_channels=3, **kw):
    """CIFAR ResNet-14 (2 BasicBlocks per stage, widths 16/32/64)."""
    return _cifar(14, _F16, num_classes, in_channels, **kw)


@register_model(family="resnet_cifar")
def resnet20(num_classes=100, in_channels=3, **kw):
    """CIFAR ResNet-20 (3 BasicBlocks per stage, widths 16/32/64)."""
    return _cifar(20, _F16, num_classes, in_channels, **kw)


@register_model(family="resnet_cifar")
def resnet32(num_classes=100, in_channels=3, **kw):
    """CIFAR ResNet-32 (5 BasicBlocks per stage, widths 16/32/64)."""
    return _cifar(32, _F16, num_classes, in_channels, **kw)


@register_model(family="resnet_cifar")
def resnet44(num_classes=100, in_channels=3, **kw):
    """CIFAR ResNet-44 (7 BasicBlocks per stage, widths 16/32/64)."""
    return _cifar(44, _F16, num_classes, in_channels, **kw)


@register_model(family="resnet_cifar")
def resnet56(num_classes=100, in_channels=3, **kw):
    """CIFAR ResNet-56 (9 BasicBlocks per stage, widths 16/32/64)."""
    return _cifar(56, _F16, num_classes, in_channels, **kw)


@register_model(family="resnet_cifar")
def resnet110(num_classes=100, in_channels=3, **kw):
    """CIFAR ResNet-110 (18 BasicBlocks per stage, widths 16/32/64)."""
    return _cifar(110, _F16, num_classes, in_channels, **kw)


@register_model(family="resnet_cifar")
def resnet8x4(num_classes=100, in_channels=3, **kw):
    """CIFAR ResNet-8, 4x wider (1 BasicBlock per stage, widths 64/128/256)."""
    return _cifar(8, _F32, num_classes, in_channels, **kw)


@register_model(family="resnet_cifar")
def resnet32x4(num_classes=100, in_channels=3, **kw):
    """CIFAR ResNet-32, 4x wider (5 BasicBlocks per stage, widths 64/128/256)."""
    return _cifar(32, _F32, num_classes, in_channels, **kw)


# ---------------------------------------------------------------- ResNet18+ (resnetv2.py)

def _v2(block, depths, num_classes: int, in_channels: int, **kw) -> ResNet:
    return ResNet(block, depths, (64, 128, 256, 512), 64, num_classes, in_channels,
                  shortcut="shortcut", classifier="linear", **kw)


@register_model(family="resnet")
def ResNet18(num_classes=100, in_channels=3, **kw):
    """ResNet-18 with a CIFAR stem (BasicBlocks 2-2-2-2, widths 64..512)."""
    return _v2(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, **kw)


@register_model(family="resnet")
def ResNet34(num_classes=100, in_channels=3, **kw):
    """ResNet-34 with a CIFAR stem (BasicBlocks 3-4-6-3, widths 64..512)."""
    return _v2(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, **kw)


@register_model(family="resnet")
def ResNet50(num_classes=100, in_channels=3, **kw):
    """ResNet-50 with a CIFAR stem (Bottlenecks 3-4-6-3, 2048-d features)."""
    return _v2(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, **kw)


@register_model(family="resnet")
def ResNet101(num_classes=100, in_channels=3, **kw):
    """ResNet-101 with a CIFAR stem (Bottlenecks 3-4-23-3, 2048-d features)."""
    return _v2(Bottleneck, (3, 4, 23, 3), num_classes, in_channels, **kw)


@register_model(family="resnet")
def ResNet152(num_classes=100, in_channels=3, **kw):
    """ResNet-152 with a CIFAR stem (Bottlenecks 3-8-36-3, 2048-d features)."""
    return _v2(Bottleneck, (3, 8, 36, 3), num_classes, in_channels, **kw)
