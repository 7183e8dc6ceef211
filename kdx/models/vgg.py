"""VGG with BatchNorm as in RepDistiller (``vgg.py``).

Five blocks of [conv3x3(bias) - BN - ReLU] x k; the last ReLU of each block is applied in
``forward``, so the stage outputs ``block0..block4`` are **pre-ReLU** (RepDistiller's
"preact" features). Max-pool after blocks 0-2 (and after block 3 only for 64-pixel-high
inputs, as in the original), adaptive average pooling at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdx.models.base import ZooModel, conv3x3
from kdx.models.registry import register_model
from kdx.models.taps import Tap

CFGS = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "E": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _block(widths, cin: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [conv3x3(cin, w, bias=True), nn.BatchNorm2d(w), nn.ReLU()]
        cin = w
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    """(RepDistiller vgg.py) f0 = ReLU(block0), f1..f4 = ReLU(block1..4); final map ReLU(block4);
    ``get_feat_modules``: the blocks and pools (kdx pools functionally: the blocks)."""
    linear_init = "normal"

    def feature_taps(self):
        return Tap(self.stage_names[0], relu=True), [Tap(s, relu=True) for s in self.stage_names[1:]]

    def final_tap(self):
        return Tap(self.stage_names[-1], relu=True)

    def feat_modules(self):
        return [self.get_submodule(s) for s in self.stage_names]

    def __init__(self, cfg, num_classes: int = 100, in_channels: int = 3):
        super().__init__(num_classes, in_channels)
        cin = in_channels
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", _block(widths, cin))
            cin = widths[-1]
        self.classifier = nn.Linear(cin, num_classes)
        self.stage_names = [f"block{i}" for i in range(len(cfg))]
        self.stage_channels = [w[-1] for w in cfg]
        self.num_features, self.classifier_name = cin, "classifier"
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        for i, name in enumerate(self.stage_names):
            x = F.relu(getattr(self, name)(x))
            if i < 3 or (i == 3 and h == 64):
                x = F.max_pool2d(x, 2)
        return x


@register_model(family="vgg")
def vgg8(num_classes=100, in_channels=3, **kw):
    """VGG-8 with BN (one conv per block, cfg S)."""
    return VGG(CFGS["S"], num_classes, in_channels, **kw)


@register_model(family="vgg")
def vgg11(num_classes=100, in_channels=3, **kw):
    """VGG-11 with BN (cfg A)."""
    return VGG(CFGS["A"], num_classes, in_channels, **kw)


@register_model(family="vgg")
def vgg13(num_classes=100, in_channels=3, **kw):
    """VGG-13 with BN (cfg B)."""
    return VGG(CFGS["B"], num_classes, in_channels, **kw)


@register_model(family="vgg")
def vgg16(num_classes=100, in_channels=3, **kw):
    """VGG-16 with BN (cfg D)."""
    return VGG(CFGS["D"], num_classes, in_channels, **kw)


@register_model(family="vgg")
def vgg19(num_classes=100, in_channels=3, **kw):
    """VGG-19 with BN (cfg E)."""
    return VGG(CFGS["E"], num_classes, in_channels, **kw)
