"""MobileNetV2 as RepDistiller's ``mobile_half`` (T=6, width 0.5, CIFAR strides).

Stages follow RepDistiller's feature taps: ``blocks.1`` (12 ch), ``blocks.2`` (16),
``blocks.4`` (48), ``blocks.6`` (160); ``forward_features`` is the 1280-channel ``conv2`` map.
"""

from __future__ import annotations

import torch
from torch import nn

from kdx.models.base import ZooModel, conv1x1, conv3x3
from kdx.models.registry import register_model
from kdx.models.taps import Tap


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, kernel: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = conv3x3(cin, cout, stride, groups) if kernel == 3 else conv1x1(cin, cout, stride, groups)
    return [conv, nn.BatchNorm2d(cout), nn.ReLU()]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(  # the expansion conv is kept even for expand == 1 (RepDistiller)
            *_conv_bn_relu(cin, mid),
            *_conv_bn_relu(mid, mid, stride, kernel=3, groups=mid),
            conv1x1(mid, cout), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2Net(ZooModel):
    """(RepDistiller mobilenetv2.py) f0 = conv1 (conv-BN-ReLU), f1..f4 = blocks.1, .2, .4, .6; final
    map conv2; ``get_feat_modules``: conv1, blocks (not conv2)."""

    def feature_taps(self):
        return Tap("conv1"), [Tap(s) for s in self.stage_names]

    def final_tap(self):
        return Tap("conv2")

    def feat_modules(self):
        return [self.conv1, self.blocks]

    linear_init = "normal"
    # t (expansion), c (channels before width multiplier), n (blocks), s (first stride)
    SETTINGS = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]

    def __init__(self, num_classes: int = 100, in_channels: int = 3, expansion: int = 6, width_mult: float = 0.5):
        super().__init__(num_classes, in_channels)
        cin = int(32 * width_mult)
        self.conv1 = nn.Sequential(*_conv_bn_relu(in_channels, cin, 2, kernel=3))
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTINGS:
            t = expansion if t != 1 else 1
            cout = int(c * width_mult)
            self.blocks.append(nn.Sequential(*[InvertedResidual(cin if i == 0 else cout, cout, s if i == 0 else 1, t)
                                               for i in range(n)]))
            cin = cout
        last = 1280
        self.conv2 = nn.Sequential(*_conv_bn_relu(cin, last))
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        taps = [1, 2, 4, 6]
        self.stage_names = [f"blocks.{i}" for i in taps]
        self.stage_channels = [int(self.SETTINGS[i][1] * width_mult) for i in taps]
        self.num_features, self.classifier_name = last, "classifier.0"
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        return self.conv2(x)


@register_model(family="mobilenetv2")
def MobileNetV2(num_classes=100, in_channels=3, **kw):
    """MobileNetV2 x0.5 (RepDistiller mobile_half, expansion 6, 1280-d features)."""
    return MobileNetV2Net(num_classes, in_channels, **kw)
