"""Class clusters: classes that share an expert at a layer under hard routing.

Written in the official format read by the hierarchy guidance (``{"merged_classes": [[0, 8], ...]}``).
"""
from __future__ import annotations

import torch


def hard_clusters(hard_attention: list[torch.Tensor]) -> list[list[tuple[int, list[int]]]]:
    """Composed hard attention (one (C x E_l) one-hot matrix per layer) -> per layer the list of
    ``(expert, classes)`` for every non-empty expert, experts in index order, classes ascending.
    Every class is in exactly one cluster per layer."""
    out = []
    for att in hard_attention:
        owner = att.argmax(dim=1).tolist()
        groups = []
        for e in range(att.shape[1]):
            members = [c for c, o in enumerate(owner) if o == e]
            if members:
                groups.append((e, members))
        out.append(groups)
    return out


def cluster_json(groups: list[tuple[int, list[int]]], layer: int, class_names: list[str], run: str) -> dict:
    """The official ``merged_classes`` key plus kdx keys (layer, experts, names, class_names, run)."""
    return {
        "merged_classes": [members for _, members in groups],
        "layer": layer,
        "experts": [e for e, _ in groups],
        "names": [[class_names[c] for c in members] for _, members in groups],
        "class_names": list(class_names),
        "run": run,
    }


def cluster_rows(groups_per_layer, class_names: list[str], run: str) -> list[dict]:
    rows = []
    for layer, groups in enumerate(groups_per_layer, start=1):
        for k, (e, members) in enumerate(groups):
            for c in members:
                rows.append({"run": run, "layer": layer, "cluster": k, "expert": e, "class": c,
                             "class_name": class_names[c]})
    return rows


def explainer_tree(model) -> list[list[list[int]]]:
    """The class tree of a routed model under hard routing: per expert layer (first first), the
    ``merged_classes`` of every non-empty expert, as ``kdx analyze-conflicts`` writes them."""
    from kdx.analysis.attention import compose
    from kdx.analysis.routed import as_routed, routing_matrices

    groups = hard_clusters(compose(routing_matrices(as_routed(model), "hard")))
    return [[members for _, members in layer] for layer in groups]
