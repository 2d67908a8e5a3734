"""Keep torch gentle on the shared CPU: two threads, fixed seed per test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
