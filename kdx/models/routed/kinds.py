"""Checkpoint kind ``explainer``: build a KDExplainer from its metadata; metadata of an official import.

Registered in ``kdx.engine.checkpoint.KINDS``; loading an explainer checkpoint imports this
module, the model and the tree, never the training code.
"""

from __future__ import annotations

from kdx.errors import KdxError
from kdx.models.routed.explainer import KDExplainer, from_official_state_dict
from kdx.models.routed.tree import hard_tree


def build_explainer(meta: dict) -> KDExplainer:
    """The KDExplainer of a checkpoint: its constructor arguments are ``meta["explainer"]``."""
    return KDExplainer(**meta["explainer"])


def import_official(state: dict, num_classes: int | None = None) -> tuple[KDExplainer, dict]:
    """An official KDExplainer state dict -> (kdx model, checkpoint metadata).

    An official checkpoint does not say which stage wrote it: ``stage`` is recorded as None."""
    model = from_official_state_dict(state)
    if num_classes is not None and num_classes != model.num_classes:
        raise KdxError(f"--num-classes {num_classes} but the state dict has {model.num_classes} leaf heads")
    meta = {"kind": "explainer", "arch": "kdexplainer", "explainer": model.config_dict(),
            "num_classes": model.num_classes, "input_shape": [model.in_channels, model.image_size, model.image_size],
            "stage": None, "tree": hard_tree(model)}
    return model, meta
