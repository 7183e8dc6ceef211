"""``nst``: Huang and Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
Transfer", arXiv 1707.01219 (2017).

``nst_weight * sum over paired stages of MMD^2`` with the polynomial kernel ``(a . b)^2`` between
the L2-normalised channel maps (:func:`kdx.distill.functional.nst`, the larger map pooled to the
smaller) on every intermediate stage, RepDistiller's ``feat[1:-1]``, paired by ``zip`` as
``at`` (a deeper network's extra stages are left out, as in RepDistiller's ``NSTLoss``).
Default weight: the authors' configs (others_kd/nst: other_loss_weight 50).
"""

from __future__ import annotations

import torch

from kdx.distill import functional as KF
from kdx.distill.methods.at import StagePairs
from kdx.distill.methods.base import register_method
from kdx.options import Option


@register_method
class NST(StagePairs):
    name = "nst"
    help = "neuron selectivity transfer (polynomial-kernel MMD) on every intermediate stage"
    paper = "Huang, Wang. Like What You Like: Knowledge Distill via Neuron Selectivity Transfer. arXiv 2017"
    options = (
        Option("nst_weight", float, 50.0, "Weight of the summed NST losses (authors' configs).", low=0,
               panel="Method"),
    )

    def loss(self, out):
        terms = [KF.nst(s, t) for s, t in self.pairs(out)]
        return {"nst": self.params["nst_weight"] * torch.stack(terms).sum()}
