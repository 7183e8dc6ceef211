"""The teacher/student model zoo (RepDistiller CIFAR architectures, state-dict compatible).

    from kdx.models import create_model, list_models, extract_features
    model = create_model("resnet32x4", num_classes=100, in_channels=3)
    logits, feats = extract_features(model, x)   # {"layer1": ..., "layer2": ..., "layer3": ...}

Every model is a ``ZooModel``: ``forward_features`` / ``forward_head(pre_logits=)``,
``num_features``, ``stage_names``, ``stage_channels``, ``classifier_name``,
``get_classifier()``, ``reset_classifier(n)``.
"""

from kdx.models.base import ZooModel
from kdx.models.hooks import FeatureHooks, extract_features
from kdx.models.registry import create_model, get_model_meta, list_models, register_model

# importing the architecture modules registers them
from kdx.models import mobilenet, resnet, shufflenet, vgg, wrn  # noqa: E402,F401  isort:skip

__all__ = [
    "FeatureHooks",
    "ZooModel",
    "create_model",
    "extract_features",
    "get_model_meta",
    "list_models",
    "register_model",
]
