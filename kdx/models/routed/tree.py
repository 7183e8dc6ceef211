"""The explainer's tree under hard routing: the parent each child takes, the classes under each expert."""

from __future__ import annotations

from kdx.models.routed.explainer import KDExplainer


def _class_paths(parents: list[list[int]], n_layers: int, num_classes: int) -> list[list[int]]:
    """Expert index of every class at each layer, followed from the leaves upward."""
    paths = []
    for c in range(num_classes):
        path = [0] * n_layers
        node = parents[-1][c]
        path[-1] = node
        for layer in range(n_layers - 2, -1, -1):
            node = parents[layer][node]
            path[layer] = node
        paths.append(path)
    return paths


def hard_tree(model: KDExplainer, class_names: list[str] | None = None) -> dict:
    """The tree under hard routing: the parent each child takes (``argmax`` of its routing row),
    and the classes under each expert.

    Expert layers are numbered from 1; routing layer ``l`` connects the experts of layer ``l``
    (parents) to those of layer ``l+1`` (children), the last one to the C classes.
    """
    parents = [r.detach().argmax(dim=1).tolist() for r in model.routing_logits()]
    n_layers = len(model.experts)
    names = class_names or [str(c) for c in range(model.num_classes)]
    paths = _class_paths(parents, n_layers, model.num_classes)
    layers = []
    for layer in range(n_layers):
        groups = []
        for e in range(model.experts[layer]):
            members = [c for c in range(model.num_classes) if paths[c][layer] == e]
            groups.append({"expert": e, "classes": members, "names": [names[c] for c in members]})
        layers.append({"layer": layer + 1, "experts": model.experts[layer],
                       "parent_of_child": parents[layer], "groups": groups})
    return {"experts": list(model.experts), "num_classes": model.num_classes, "class_names": names,
            "class_paths": paths, "layers": layers}
