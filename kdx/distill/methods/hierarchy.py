"""``hierarchy``: hierarchy guidance (KDEXPLAINER.md section 5, part 2).

Auxiliary GAP + Linear heads on student stages predict the cluster of the true class, the
clusters being those ``kdx analyze-conflicts`` found for the explainer's layers;
``W * sum over heads of CE(cluster, per-cluster weight 1/|cluster|)``. Added by
``--hierarchy DIR_OR_FILE``; the stage mapping is in :mod:`kdx.distill.hierarchy`.
The heads are trained and resumed, not saved in ``model.safetensors``.
"""

import torch

from kdx.distill.hierarchy import HierarchyHeads, load_hierarchy, map_stages
from kdx.distill.methods.base import Method, MethodContext, register_method
from kdx.options import Option
from kdx.seeding import forked_rng


@register_method
class Hierarchy(Method):
    name = "hierarchy"
    reads = ("seed",)  # run values besides its own options
    help = "cluster-supervised auxiliary heads on student stages (needs --hierarchy)"
    paper = "Xue et al., KDExplainer: A Task-oriented Attention Model for Explaining Knowledge Distillation, IJCAI 2021"
    selectable = False
    uses_features = True
    options = (
        Option("hierarchy", list[str], None, "analyze-conflicts folder or clusters/layer{L}.json file; "
               "repeat the flag or separate with commas.", nullable=True, panel="Hierarchy", metavar="PATH"),
        Option("hierarchy_weight", float, 0.1, "Weight W of the cluster losses.", low=0, panel="Hierarchy"),
        Option("hierarchy_mapping", str, "authors", "Heads: authors = student stages 1 and 2 fed by explainer "
               "layers 1 and 2 (the official code); kdx-depth = every cluster layer, by relative depth.",
               choices=("authors", "kdx-depth"), panel="Hierarchy"),
        Option("hierarchy_stages", list[str], None, "Student stages, one per cluster layer, or STAGE=LAYER items "
               "(overrides --hierarchy-mapping).", nullable=True, panel="Hierarchy", metavar="STAGES"),
    )

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        student = ctx.student
        stage_names = list(student.stage_names)
        self.clusters = load_hierarchy(self.params["hierarchy"], ctx.num_classes)
        self.mapping = map_stages(stage_names, list(self.clusters), self.params["hierarchy_stages"],
                                  self.params["hierarchy_mapping"])
        with forked_rng(int(ctx.params.get("seed", 0)), self.name):  # the global RNG stays where it was
            self.heads = HierarchyHeads(self.mapping, dict(zip(stage_names, student.stage_channels)), self.clusters,
                                        ctx.num_classes)
        self._stages = sorted({s for s, _ in self.mapping}, key=stage_names.index)

    def stages(self):
        return self._stages, []

    def loss(self, out):
        losses = self.heads.head_losses(out.features_s, out.y)
        return {"hierarchy": self.params["hierarchy_weight"] * torch.stack(losses).sum()}

    def describe(self) -> dict:
        """The checkpoint metadata's ``hierarchy`` record."""
        return {"files": {str(k): v["file"] for k, v in self.clusters.items()},
                "clusters": {str(k): v["clusters"] for k, v in self.clusters.items()},
                "weight": self.params["hierarchy_weight"],
                "mapping": self.params["hierarchy_mapping"],
                "stage_mapping": [{"stage": s, "layer": layer} for s, layer in self.mapping],
                "loss": "sum over heads of W * CE(cluster, weight 1/|cluster|)",
                "aux_heads_saved": False}
