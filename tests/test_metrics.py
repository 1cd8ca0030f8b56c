import math

import pytest
import torch

from diffusers_scorevae.metrics import (
    class_kept,
    classifier_features,
    frechet_distance,
    l2,
    psnr,
    sharpness,
    ssim,
)
from diffusers_scorevae.models.classifier import FashionMNISTClassifier


def images(seed=0, shape=(3, 1, 28, 28)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_identical_images():
    a = images()
    torch.testing.assert_close(l2(a, a), torch.zeros(3))
    torch.testing.assert_close(ssim(a, a), torch.ones(3))
    assert torch.isinf(psnr(a, a)).all()


def test_known_offset():
    # b = a + 0.1 everywhere: ‖a − b‖ = 0.1 · √(28·28) = 2.8, MSE = 0.01 -> PSNR = 20 dB
    a = images() * 0.8
    b = a + 0.1
    torch.testing.assert_close(l2(a, b), torch.full((3,), 2.8))
    torch.testing.assert_close(psnr(a, b), torch.full((3,), 20.0))
    # a constant offset leaves the structure term at 1; the luminance term is (2 μ_a μ_b + C1) / (μ_a² + μ_b² + C1) < 1
    assert (ssim(a, b) < 1).all() and (ssim(a, b) > 0.9).all()


def test_ssim_constant_images():
    # constant images: variances and covariance vanish, SSIM = (2 x y + C1) / (x² + y² + C1)
    x, y, c1 = 0.2, 0.6, 0.01**2
    a, b = torch.full((1, 2, 16, 16), x), torch.full((1, 2, 16, 16), y)
    torch.testing.assert_close(ssim(a, b), torch.tensor([(2 * x * y + c1) / (x**2 + y**2 + c1)]))


def test_ssim_per_channel_mean():
    a, b = images(0, (2, 3, 16, 16)), images(1, (2, 3, 16, 16))
    per_channel = torch.stack([ssim(a[:, c : c + 1], b[:, c : c + 1]) for c in range(3)], dim=1)
    torch.testing.assert_close(ssim(a, b), per_channel.mean(dim=1))


def test_sharpness():
    assert (sharpness(torch.full((2, 1, 8, 8), 0.3)) == 0).all()
    # a ramp has zero Laplacian; a 0/1 checkerboard has Laplacian −4 on its ones and +4 on its zeros: variance 16
    ramp = torch.linspace(0, 1, 8).expand(1, 1, 8, 8)
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2).float().expand(1, 1, 8, 8)
    torch.testing.assert_close(sharpness(ramp), torch.zeros(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(sharpness(checker), torch.tensor([16.0]))


def test_shape_mismatch():
    with pytest.raises(ValueError, match="`a` and `b`"):
        l2(images(shape=(2, 1, 28, 28)), images(shape=(3, 1, 28, 28)))
    with pytest.raises(ValueError, match="`a` and `b`"):
        ssim(images(shape=(2, 1, 28, 28)), images(shape=(2, 1, 27, 28)))
    with pytest.raises(ValueError, match="features_a"):
        frechet_distance(torch.randn(10, 4), torch.randn(10, 5))


def test_frechet_distance():
    features = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(features, features)) < 1e-8
    shift = torch.arange(8.0)
    assert math.isclose(frechet_distance(features, features + shift), shift.pow(2).sum().item(), rel_tol=1e-9)
    # scaling by 3: μ_b = 3 μ_a and Σ_b = 9 Σ_a, so √(Σ_a Σ_b) = 3 Σ_a and d² = 4 ‖μ_a‖² + (1 + 9 − 6) tr Σ_a
    scaled = features * 3
    features64 = features.double()
    expected = (4 * features64.mean(dim=0).pow(2).sum() + 4 * torch.cov(features64.T).trace()).item()
    assert math.isclose(frechet_distance(features, scaled), expected, rel_tol=1e-6)


def test_class_kept():
    torch.manual_seed(0)
    classifier = FashionMNISTClassifier(block_out_channels=(4, 8), feature_dim=8).eval()
    originals = images(0, (6, 1, 28, 28))
    assert class_kept(classifier, originals, originals) == 1.0
    predicted = classifier(originals).argmax(dim=1)
    wrong = (predicted + 1) % 10
    assert class_kept(classifier, None, originals, labels=predicted) == 1.0
    assert class_kept(classifier, None, originals, labels=wrong) == 0.0
    with pytest.raises(ValueError, match="labels"):
        class_kept(classifier, None, originals, labels=predicted[:3])
    with pytest.raises(ValueError, match="originals"):
        class_kept(classifier, originals[:3], originals)


def test_classifier_features():
    torch.manual_seed(0)
    classifier = FashionMNISTClassifier(block_out_channels=(4, 8), feature_dim=8).eval()
    originals = images(0, (5, 1, 28, 28))
    features = classifier_features(classifier, originals, batch_size=2)
    assert features.shape == (5, 8)
    torch.testing.assert_close(features, classifier.features(originals).detach())
