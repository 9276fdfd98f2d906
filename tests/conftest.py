import os

os.environ.setdefault("GLOG_v", "3")  # MindSpore: errors only
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from mindport import backend

backend.init_context()

try:  # the reference side is optional for pure-MindSpore tests
    import torch

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
except ImportError:  # pragma: no cover
    torch = None


@pytest.fixture
def rng():
    return np.random.Generator(np.random.PCG64(0))


@pytest.fixture
def ops_path(monkeypatch):
    """Run a block with the kernels switched off (MindSpore ops only), then restore them."""

    class Switch:
        def __enter__(self):
            monkeypatch.setenv("MINDPORT_KERNELS", "0")
            backend.kernel_library.cache_clear()

        def __exit__(self, *exc):
            monkeypatch.delenv("MINDPORT_KERNELS")
            backend.kernel_library.cache_clear()

    return Switch()
