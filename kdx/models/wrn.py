"""Pre-activation Wide ResNets as in RepDistiller (``wrn.py``): WRN-depth-k.

Stage outputs (``block1..3``) are pre-activation sums; the final ``bn1`` + ReLU produce the
``forward_features`` map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdx.models.base import ZooModel, conv1x1, conv3x3
from kdx.models.registry import register_model
from kdx.models.taps import Tap


class WideBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = conv3x3(cout, cout)
        self.drop_rate = drop_rate
        self.equal_in_out = cin == cout
        self.convShortcut = None if self.equal_in_out else conv1x1(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        if not self.equal_in_out:  # RepDistiller: the pre-activated x also feeds the shortcut
            x = out
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal_in_out else self.convShortcut(x))


class NetworkBlock(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[WideBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate)
                                     for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(ZooModel):
    """(RepDistiller wrn.py) f0 = conv1, f1..f3 the raw block outputs (no BN/ReLU: the final BN +
    ReLU come after f3); final map ReLU(bn1); ``get_feat_modules``: conv1, block1..3 (not bn1)."""

    def feature_taps(self):
        return Tap("conv1"), [Tap(s) for s in self.stage_names]

    def final_tap(self):
        return Tap("bn1", relu=True)

    def feat_modules(self):
        return [self.conv1, self.block1, self.block2, self.block3]

    linear_init = "zero_bias"

    def __init__(self, depth: int, widen: int, num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0):
        super().__init__(num_classes, in_channels)
        assert (depth - 4) % 6 == 0, depth
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = conv3x3(in_channels, ch[0])
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        self.stage_names, self.stage_channels = ["block1", "block2", "block3"], ch[1:]
        self.num_features, self.classifier_name = ch[3], "fc"
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn1(x))


@register_model(family="wrn")
def wrn_16_1(num_classes=100, in_channels=3, **kw):
    """Wide ResNet 16-1 (pre-activation, widths 16/32/64)."""
    return WideResNet(16, 1, num_classes, in_channels, **kw)


@register_model(family="wrn")
def wrn_16_2(num_classes=100, in_channels=3, **kw):
    """Wide ResNet 16-2 (pre-activation, widths 32/64/128)."""
    return WideResNet(16, 2, num_classes, in_channels, **kw)


@register_model(family="wrn")
def wrn_40_1(num_classes=100, in_channels=3, **kw):
    """Wide ResNet 40-1 (pre-activation, widths 16/32/64)."""
    return WideResNet(40, 1, num_classes, in_channels, **kw)


@register_model(family="wrn")
def wrn_40_2(num_classes=100, in_channels=3, **kw):
    """Wide ResNet 40-2 (pre-activation, widths 32/64/128)."""
    return WideResNet(40, 2, num_classes, in_channels, **kw)
