"""Every random seed of a run, from one place.

* :func:`seed_everything` seeds the global RNGs (Python, numpy, torch) once per run, before the
  model is built; nothing else in kdx reseeds them.
* :func:`forked_rng` builds something (a connector, a head, an embedding) from its own stream,
  ``(seed, name)``, inside a fork of torch's global CPU RNG: adding or removing one such part
  leaves every other draw of the run where it was.
* :func:`generator` and :func:`derive_seed` give the independent streams of samplers (the
  loaders' order and augmentation per epoch and step, splits, analysis subsets).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import zlib

import numpy as np
import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across runs and platforms)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def part_seed(seed: int, name: str) -> int:
    """The seed of the part ``name`` of a run with ``seed``: ``(seed * 1000003 + crc32(name)) mod 2^63``."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@contextlib.contextmanager
def forked_rng(seed: int, name: str):
    """Run the block with torch's global CPU RNG seeded by :func:`part_seed` and restore it after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(part_seed(seed, name))
        yield


def generator(seed: int, *parts) -> torch.Generator:
    """A CPU generator of its own: seeded with ``seed`` alone, or with ``derive_seed(seed, *parts)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *parts) if parts else int(seed))


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch (once per run); ``deterministic``: also torch's deterministic
    algorithms (cuDNN without autotuning)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
