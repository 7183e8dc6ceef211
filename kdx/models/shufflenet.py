"""ShuffleNet V1 (g=3) and V2 (1x) with the CIFAR stems used by RepDistiller.

Both keep PyTorch's default initialisation, as the RepDistiller originals do.
Stage outputs ``layer1..3`` are post-ReLU (V1) / post-shuffle (V2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdx.models.base import ZooModel, channel_shuffle, conv1x1, conv3x3
from kdx.models.registry import register_model
from kdx.models.taps import Tap


class ShuffleNetBase(ZooModel):
    """(RepDistiller ShuffleNetv1/v2.py) f0 = ReLU(bn1), f1..f3 the stages; final map: layer3 (V1) or
    ReLU(bn2) (V2, after its conv2); ``get_feat_modules``: conv1, bn1, layer1..3 (not V2's conv2/bn2)."""

    def feature_taps(self):
        return Tap("bn1", relu=True), [Tap(s) for s in self.stage_names]

    def final_tap(self):
        return Tap("bn2", relu=True) if hasattr(self, "conv2") else Tap(self.stage_names[-1])

    def feat_modules(self):
        return [self.conv1, self.bn1] + [self.get_submodule(s) for s in self.stage_names]

    """1x1 conv stem (24 ch) + BN + ReLU, ``layer1..3``, optional 1x1 ``conv2`` head, ``linear``."""

    def _stem(self, in_channels: int) -> None:
        self.conv1 = conv1x1(in_channels, 24)
        self.bn1 = nn.BatchNorm2d(24)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        if hasattr(self, "conv2"):
            x = F.relu(self.bn2(self.conv2(x)))
        return x

    def _finish(self, stage_channels, num_features: int, num_classes: int) -> None:
        self.linear = nn.Linear(num_features, num_classes)
        self.stage_names, self.stage_channels = ["layer1", "layer2", "layer3"], list(stage_channels)
        self.num_features, self.classifier_name = num_features, "linear"


# ---------------------------------------------------------------- V1

class ShuffleV1Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = int(cout / 4)
        self.stride = stride
        self.g1 = 1 if cin == 24 else groups
        self.conv1 = conv1x1(cin, mid, groups=self.g1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, cout, groups=groups)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            out = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        else:
            out = out + x
        return F.relu(out)


class ShuffleNetV1(ShuffleNetBase):
    def __init__(self, num_classes: int = 100, in_channels: int = 3,
                 out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups: int = 3):
        super().__init__(num_classes, in_channels)
        self._stem(in_channels)
        cin = 24
        for i, (cout, n) in enumerate(zip(out_planes, num_blocks)):
            blocks = []
            for j in range(n):  # the first block concatenates its (pooled) input: emit cout - cin
                blocks.append(ShuffleV1Block(cin, cout - cin if j == 0 else cout, 2 if j == 0 else 1, groups))
                cin = cout
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self._finish(out_planes, out_planes[-1], num_classes)


# ---------------------------------------------------------------- V2

class ShuffleV2Block(nn.Module):
    """Stride-1 unit: split channels in half, transform the second half, concat, shuffle."""

    def __init__(self, channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = int(channels * split_ratio)
        c = self.split
        self.conv1 = conv1x1(c, c)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = conv3x3(c, c, groups=c)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = conv1x1(c, c)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 unit: two branches on the full input, concat, shuffle."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1 = conv3x3(cin, cin, 2, groups=cin)  # left: dw s2, 1x1
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = conv1x1(cin, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(cin, mid)  # right: 1x1, dw s2, 1x1
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = conv3x3(mid, mid, 2, groups=mid)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = conv1x1(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(ShuffleNetBase):
    def __init__(self, num_classes: int = 100, in_channels: int = 3,
                 out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3)):
        super().__init__(num_classes, in_channels)
        self._stem(in_channels)
        cin = 24
        for i, (cout, n) in enumerate(zip(out_channels[:3], num_blocks)):
            blocks = [ShuffleV2DownBlock(cin, cout)] + [ShuffleV2Block(cout) for _ in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.conv2 = conv1x1(cin, out_channels[3])
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self._finish(out_channels[:3], out_channels[3], num_classes)


@register_model(family="shufflenet")
def ShuffleV1(num_classes=100, in_channels=3, **kw):
    """ShuffleNet V1, groups 3 (widths 240/480/960, blocks 4-8-4)."""
    return ShuffleNetV1(num_classes, in_channels, **kw)


@register_model(family="shufflenet")
def ShuffleV2(num_classes=100, in_channels=3, **kw):
    """ShuffleNet V2 1x (widths 116/232/464, 1024-d features)."""
    return ShuffleNetV2(num_classes, in_channels, **kw)
