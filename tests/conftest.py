"""Shared test fixtures: small random models with known properties, and the `gpu` marker's skip."""
import numpy as np
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def random_model(K=30, H=20, W=28, C=1, linear=False, rbf=False, seed=0, spread=2.0, bandwidth=(0.15, 0.4)):
    """K random steered kernels over an H x W image (centres may lie up to `spread` px outside)."""
    from smoe_core import SMoE

    rng = np.random.default_rng(seed)
    mu = rng.uniform(-spread, [W - 1 + spread, H - 1 + spread], (K, 2))
    chol = np.stack([rng.uniform(*bandwidth, K), rng.normal(0, 0.1, K), rng.uniform(*bandwidth, K)], 1)
    pi = rng.uniform(0.5, 1.5, K)
    experts = rng.uniform(0, 1, (K, C))
    slopes = rng.normal(0, 0.05, (K, C, 2)) if linear else None
    return SMoE(mu.astype(np.float32), chol.astype(np.float32), pi.astype(np.float32), experts.astype(np.float32),
                None if slopes is None else slopes.astype(np.float32), rbf=rbf, image_shape=(H, W))


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (restored after): small tensors on a busy 2-core machine run far faster on
    one thread than on two contending ones. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def make_model():
    return random_model
