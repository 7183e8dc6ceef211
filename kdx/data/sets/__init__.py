"""kdx's own datasets, one file each; importing a file registers its datasets
(:func:`kdx.data.registry.register_dataset`). Add a dataset by adding a file here and its
import below."""

from kdx.data.sets import cifar  # noqa: F401  (the order of `kdx datasets`)
from kdx.data.sets import mnist  # noqa: F401
from kdx.data.sets import mini  # noqa: F401
from kdx.data.sets import tiny_imagenet  # noqa: F401
from kdx.data.sets import folder  # noqa: F401
