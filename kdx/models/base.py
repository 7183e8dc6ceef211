"""Shared pieces of the model zoo: the ``ZooModel`` base class and small building blocks.

Every zoo model follows the timm convention::

    forward(x) == forward_head(forward_features(x))

``forward_features`` returns the final feature map (N, D, h, w) after the last activation
and before global pooling; ``forward_head`` global-average-pools, flattens and (unless
``pre_logits``) applies the classifier. Pooling is always adaptive, so any input size that
survives the network's down-sampling works (1x28x28, 3x32x32, 3x64x64, ...).

Activations are never applied in place: forward hooks on any submodule (see
``kdx.models.hooks``) therefore see exactly what that module returned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdx.models.taps import FINAL, Tap


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=bias)


def conv1x1(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, groups=groups, bias=False)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: (N, g*c, H, W) -> interleave the g groups."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def init_linear(m: nn.Linear, scheme: str) -> None:
    if scheme == "normal":  # VGG / MobileNetV2 in RepDistiller
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.zeros_(m.bias)
    elif scheme == "zero_bias":  # WRN in RepDistiller
        m.reset_parameters()
        nn.init.zeros_(m.bias)
    elif scheme == "default":
        m.reset_parameters()
    else:
        raise ValueError(f"unknown linear init scheme {scheme!r}")


class ZooModel(nn.Module):
    """Base class of every zoo model.

    Subclasses build their layers, set ``stage_names`` / ``stage_channels`` /
    ``classifier_name`` / ``num_features`` and implement ``forward_features``.

    Attributes:
        arch: registry name (set by the registry; defaults to the class name).
        num_classes, in_channels: constructor arguments.
        num_features: D, the channel count of ``forward_features`` (= embedding size).
        stage_names: dotted ``named_modules()`` names of the intermediate stages, in depth
            order; their outputs are what ``extract_features`` returns by default.
        stage_channels: channel count of each stage output.
        classifier_name: dotted name of the final ``nn.Linear``.

    What a model knows about its features (:mod:`kdx.models.taps`): ``feature_taps()``,
    ``final_tap()``, ``feat_modules()`` and ``feature_info()``; a family overrides the first
    three where RepDistiller's model defines them differently from the defaults.
    """

    stage_names: list[str]
    stage_channels: list[int]
    classifier_name: str
    num_features: int
    linear_init: str = "default"

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.arch = type(self).__name__

    # ------------------------------------------------------------------ init
    def init_weights(self, convs: bool = True) -> None:
        """RepDistiller init: kaiming-normal(fan_out, relu) convs, BN 1/0, Linear per ``linear_init``."""
        if any(p.is_meta for p in self.parameters()):
            return  # shape-only model (``with torch.device("meta")``): nothing to initialise
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and convs:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                init_linear(m, self.linear_init)

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, feat: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(feat, 1).flatten(1)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------ classifier
    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised ``Linear(num_features, num_classes)``.

        ``num_classes=0`` installs ``nn.Identity`` (``forward`` then returns the embedding).
        """
        old = self.get_classifier()
        ref = next(self.parameters())
        if num_classes > 0:
            new: nn.Module = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            init_linear(new, self.linear_init)
        else:
            new = nn.Identity()
        parent_name, _, leaf = self.classifier_name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        setattr(parent, leaf, new)
        self.num_classes = int(num_classes)
        del old

    # ------------------------------------------------------------------ features
    def feature_taps(self) -> tuple[Tap | None, list[Tap]]:
        """``(stem, [stage taps])``: RepDistiller's ``f0`` and ``f1..fk`` (default: no stem, the stage outputs)."""
        return None, [Tap(s) for s in self.stage_names]

    def final_tap(self) -> Tap:
        """The final map RepDistiller pools into its last feature (default: ``forward_features``)."""
        return Tap(FINAL)

    def feat_modules(self) -> list[nn.Module]:
        """RepDistiller's ``get_feat_modules()`` (default: every child module but the classifier)."""
        head = self.get_classifier()
        return [m for m in self.children() if m is not head]

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters trained without weight decay (none in a zoo model; routed models: the routing)."""
        return []

    @torch.no_grad()
    def feature_info(self, image_size: int = 32) -> list[dict]:
        """timm-like ``[{"name", "channels", "reduction"}]`` of every stage tap, measured by one
        forward of a ``1 x in_channels x image_size x image_size`` probe (in eval mode, restored)."""
        from kdx.models.hooks import FeatureHooks

        ref = next(self.parameters())
        probe = torch.zeros(1, self.in_channels, image_size, image_size, device=ref.device, dtype=ref.dtype)
        was_training = self.training
        self.eval()
        try:
            with FeatureHooks(self, list(self.stage_names)) as hooks:
                self(probe)
                feats = hooks.features
        finally:
            self.train(was_training)
        return [{"name": n, "channels": int(feats[n].shape[1]), "reduction": image_size // int(feats[n].shape[-1])}
                for n in self.stage_names]

    def extra_repr(self) -> str:
        return f"arch={self.arch}, num_classes={self.num_classes}, in_channels={self.in_channels}"
