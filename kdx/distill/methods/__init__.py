"""Training methods, one file each; the registry and the contract are in :mod:`.base`.

The imports below are the wiring: importing a method file registers its method, and this
package's ``__init__`` runs before any of its modules, so the registry never imports a method.
Methods of other packages come in through the entry-point group ``kdx.methods``. Add a method
by adding a file here and its import line.
"""

from kdx.distill.methods.base import (  # noqa: F401
    Method, MethodContext, StepOutputs, all_methods, get_method, method_options, methods_for,
    register_method, resolve_ce_weight,
)
from kdx.distill.methods import ce, hierarchy, kd, ls, vam_entropy, vam_head  # noqa: E402,F401
from kdx.distill.methods import dkd  # noqa: E402,F401
from kdx.distill.methods import at  # noqa: E402,F401
from kdx.distill.methods import sp  # noqa: E402,F401
from kdx.distill.methods import pkt  # noqa: E402,F401
from kdx.distill.methods import rkd  # noqa: E402,F401
from kdx.distill.methods import nst  # noqa: E402,F401
from kdx.distill.methods import fitnet  # noqa: E402,F401
from kdx.distill.methods import crd  # noqa: E402,F401
from kdx.distill.methods import cc  # noqa: E402,F401
from kdx.distill.methods import vid  # noqa: E402,F401
from kdx.distill.methods import ft  # noqa: E402,F401
from kdx.distill.methods import fsp  # noqa: E402,F401
