"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Tiny batches gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    barriers made such modules 5-8x slower; one thread for the module, restored after it."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
