"""Feature taps: which module outputs make a model's features, declared by the model itself.

A :class:`Tap` names one tensor of a forward pass: the output of the submodule ``source``
(a dotted ``named_modules()`` name), or the model's final map when ``source == FINAL`` (what
``forward_features`` returns), optionally followed by a ReLU. A zoo model declares

* ``feature_taps() -> (stem, [stage, ...])``: RepDistiller's feature list ``f0, f1, ..., fk``
  (``model(x, is_feat=True, preact=False)`` there): the stem output and the stage outputs;
* ``final_tap()``: the final map that RepDistiller pools into its last feature;
* ``feat_modules()``: what RepDistiller's ``get_feat_modules()`` returns (the modules the
  initialisation phases of FSP and FT put in train mode and train);

so that every feature method works with a new architecture that declares them, without an
edit elsewhere. The defaults (:class:`kdx.models.base.ZooModel`) are the stage outputs, no
stem, the final map through ``forward_features``, and every child module but the classifier.
The explainer (:class:`kdx.models.routed.KDExplainer`) declares the same four: its stages are
its expert layers, each read as the layer's expert outputs concatenated along channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from kdx.errors import KdxError

FINAL = "forward_features"  # a Tap source: the model's final map (StepOutputs.feat_s / feat_t)


@dataclass(frozen=True)
class Tap:
    """One feature: the output of module ``source`` (the final map when ``source == FINAL``),
    followed by a ReLU when ``relu``. ``experts``: the output is an explainer expert layer's
    ``(E, N, c, h, w)`` stack, read as one map ``(N, E * c, h, w)`` (the experts' outputs
    concatenated along channels, expert 0 first) [kdx]."""

    source: str
    relu: bool = False
    experts: bool = False

    @property
    def label(self) -> str:
        name = f"experts({self.source})" if self.experts else self.source
        return f"relu({name})" if self.relu else name

    def read(self, features: dict, final: Optional[Tensor]) -> Tensor:
        t = final if self.source == FINAL else features[self.source]
        if t is None:
            raise KdxError(f"feature {self.source} was not captured in this forward")
        if self.experts:
            e, n = t.shape[:2]
            t = t.transpose(0, 1).reshape(n, e * t.shape[2], *t.shape[3:])
        return F.relu(t) if self.relu else t
