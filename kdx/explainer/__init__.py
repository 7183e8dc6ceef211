"""The KDExplainer network (hierarchical mixture of experts) and its routing."""
from kdx.explainer.model import KDExplainer, from_official_state_dict, to_official_state_dict
from kdx.explainer.routing import route, routing_entropy, routing_probs, tau_at

__all__ = ["KDExplainer", "from_official_state_dict", "to_official_state_dict", "route", "routing_entropy",
           "routing_probs", "tau_at"]
