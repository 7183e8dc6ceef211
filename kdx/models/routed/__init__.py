"""The two routed models and the routing they share.

``KDExplainer`` (explainer.py, the hierarchical mixture of experts) and ``VAMStudent`` (vam.py, a
zoo student with the virtual attention head) route with the same function
(:func:`kdx.models.routed.routing.route`); ``tree.py`` reads the explainer's hard tree and
``kinds.py`` builds either from a checkpoint's metadata.
"""
from kdx.models.routed.explainer import KDExplainer, from_official_state_dict, to_official_state_dict
from kdx.models.routed.routing import route, routing_entropy, routing_probs, tau_at
from kdx.models.routed.vam import VAMStudent, VirtualAttentionHead

__all__ = ["KDExplainer", "VAMStudent", "VirtualAttentionHead", "from_official_state_dict", "to_official_state_dict",
           "route", "routing_entropy", "routing_probs", "tau_at"]
