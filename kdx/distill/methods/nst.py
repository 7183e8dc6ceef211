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
from kdx.distill.methods.at import check_paired, pair_labels, read_pairs, stage_taps, zip_taps
from kdx.distill.methods.base import Method, MethodContext, register_method
from kdx.distill.methods.repdistiller import hook_names, needs_final
from kdx.options import Option


@register_method
class NST(Method):
    name = "nst"
    help = "neuron selectivity transfer (polynomial-kernel MMD) on every intermediate stage"
    paper = "Huang, Wang. Like What You Like: Knowledge Distill via Neuron Selectivity Transfer. arXiv 2017"
    needs_teacher = True
    uses_features = True
    options = (
        Option("nst_weight", float, 50.0, "Weight of the summed NST losses (authors' configs).", low=0,
               panel="Method"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.taps_s, self.taps_t = zip_taps(*stage_taps(ctx))
        self.wants_final = needs_final(*self.taps_s, *self.taps_t)

    def stages(self):
        return hook_names(self.taps_s), hook_names(self.taps_t)

    def setup(self, probe):
        check_paired(self.name, self.taps_s, self.taps_t)

    def loss(self, out):
        terms = [KF.nst(s, t) for s, t in read_pairs(out, self.taps_s, self.taps_t)]
        return {"nst": self.params["nst_weight"] * torch.stack(terms).sum()}

    def record(self) -> dict:
        return super().record() | {"pairs": pair_labels(self.taps_s, self.taps_t)}
