"""Shared fixtures; the repository root on ``sys.path`` for ``reference/`` (the transcriptions of
the authors' code that tests and benchmarks share, see reference/__init__.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny batches gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    barriers made such modules 5-8x slower; one thread for the module, restored after it."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
