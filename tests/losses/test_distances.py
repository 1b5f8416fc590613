import math

import numpy as np
import pytest
import torch

from reid_core.losses.distances import CosineDistance, EuclideanDistance, get_distance, safe_sqrt

from .reference import dist_matrix


@pytest.fixture
def x():
    return torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("normalize", [True, False])
def test_euclidean_matrix_matches_loop(x, normalize):
    d = EuclideanDistance(normalize_embeddings=normalize)(x)
    ref = dist_matrix(x.numpy(), "euclidean", normalize)
    np.testing.assert_allclose(d.numpy(), ref, atol=1e-10)


def test_squared_euclidean_and_cross_matrix(x):
    y = x[:3] * 2 + 0.1
    d = EuclideanDistance(power=2)(x, y)
    ref = dist_matrix(x.numpy(), "sq_euclidean", True, y=y.numpy())
    assert d.shape == (7, 3)
    np.testing.assert_allclose(d.numpy(), ref, atol=1e-10)


def test_cosine_matrix_matches_loop(x):
    d = CosineDistance()(x)
    np.testing.assert_allclose(d.numpy(), dist_matrix(x.numpy(), "cosine"), atol=1e-12)
    # scale invariance
    np.testing.assert_allclose(CosineDistance(normalize_embeddings=False)(3 * x).numpy(), d.numpy(), atol=1e-12)


@pytest.mark.parametrize("dist", [EuclideanDistance(), EuclideanDistance(power=2), CosineDistance()])
def test_pairwise_equals_matrix_diagonal(x, dist):
    y = torch.randn_like(x)
    full = dist(x, y)
    np.testing.assert_allclose(dist.pairwise(x, y).numpy(), torch.diagonal(full).numpy(), atol=1e-10)


def test_self_distance_diagonal_is_exact_zero(x):
    d = EuclideanDistance()(x.float())
    assert torch.all(torch.diagonal(d) == 0)


def test_all_equal_features_no_nan_gradient():
    x = torch.ones(6, 4, dtype=torch.float64, requires_grad=True)
    d = EuclideanDistance()(x)
    assert torch.all(d == 0)
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
    y = torch.ones(3, 4, requires_grad=True)
    EuclideanDistance().pairwise(y, y.detach().clone()).sum().backward()
    assert torch.isfinite(y.grad).all()


def test_safe_sqrt_values_and_gradient():
    v = torch.tensor([0.0, 1e-20, -1e-9, 4.0, 0.25], dtype=torch.float64, requires_grad=True)
    out = safe_sqrt(v)
    np.testing.assert_allclose(out.detach().numpy(), [0, 0, 0, 2.0, 0.5])
    out.sum().backward()
    np.testing.assert_allclose(v.grad.numpy(), [0, 0, 0, 1 / (2 * 2.0), 1 / (2 * 0.5)])
    assert math.isfinite(v.grad.sum().item())


def test_gradient_matches_finite_differences(x):
    xx = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: EuclideanDistance()(t), (xx,))
    assert torch.autograd.gradcheck(lambda t: CosineDistance()(t), (xx,))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="x"):
        EuclideanDistance()(torch.zeros(5))
    with pytest.raises(ValueError, match="dimension"):
        EuclideanDistance()(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="floating"):
        CosineDistance()(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="power"):
        EuclideanDistance(power=3)
    with pytest.raises(ValueError, match="distance"):
        get_distance("manhattan")
    assert isinstance(get_distance("cosine"), CosineDistance)
