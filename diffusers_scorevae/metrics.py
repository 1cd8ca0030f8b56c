"""Evaluation measures for reconstructions and samples. Images are `(B, C, H, W)` tensors in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str = "a", name_b: str = "b") -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must be image batches (B, C, H, W) of the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Per-image Euclidean norm ‖a − b‖₂ over all pixels and channels, shape `(B,)` (the ScoreVAE paper's L2)."""
    _check_same_shape(a, b)
    return (a.float() - b.float()).flatten(1).norm(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Per-image peak signal-to-noise ratio 10 log₁₀(1 / MSE) in dB for data range 1, shape `(B,)`."""
    _check_same_shape(a, b)
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    r"""
    Per-image structural similarity (Wang et al. 2004) for data range 1, shape `(B,)`.

    Local statistics use a Gaussian window (`window_size` 11, `sigma` 1.5) over the valid region, with the standard
    constants C₁ = (0.01)², C₂ = (0.03)²; the SSIM map is averaged per channel, then over channels.
    """
    _check_same_shape(a, b)
    # float64: the local variances E[x²] − E[x]² cancel badly in float32 next to C₂ ≈ 1e-3
    a, b = a.double(), b.double()
    channels = a.shape[1]
    window = _gaussian_window(window_size, sigma, channels, a.device).double()

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov_ab = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(dim=(2, 3)).mean(dim=1).float()


def sharpness(images: torch.Tensor) -> torch.Tensor:
    r"""
    Per-image variance of the discrete Laplacian (4-neighbour kernel, valid region), per channel then averaged, shape
    `(B,)`. Blurry images score low; a constant image scores 0.
    """
    if images.ndim != 4:
        raise ValueError(f"`images` must be an image batch (B, C, H, W), got shape {tuple(images.shape)}.")
    images = images.float()
    channels = images.shape[1]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=images.device)
    kernel = kernel.expand(channels, 1, 3, 3).contiguous()
    laplacian = F.conv2d(images, kernel, groups=channels)
    return laplacian.flatten(2).var(dim=2, correction=0).mean(dim=1)


@torch.no_grad()
def class_kept(
    classifier: torch.nn.Module,
    originals: torch.Tensor | None,
    reconstructions: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 512,
) -> float:
    r"""
    Fraction of reconstructions that a classifier assigns the class of their original.

    Args:
        classifier (`torch.nn.Module`):
            Maps images in [0, 1] to logits, e.g. [`FashionMNISTClassifier`] (in eval mode).
        originals (`torch.Tensor` of shape `(B, C, H, W)`):
            The original images; the reference class is the classifier's argmax on them. Ignored (may be `None`) when
            `labels` is given.
        reconstructions (`torch.Tensor` of shape `(B, C, H, W)`):
            The reconstructions.
        labels (`torch.Tensor` of shape `(B,)`, *optional*):
            True labels to compare to instead of the classifier's prediction on the originals.
        batch_size (`int`, *optional*, defaults to 512):
            Images per classifier call.

    Returns:
        `float`: the fraction in [0, 1].
    """
    device = next(classifier.parameters()).device

    def predict(images: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [classifier(chunk.to(device)).argmax(dim=1).cpu() for chunk in images.split(batch_size)]
        )

    if labels is None:
        if originals is None:
            raise ValueError("`class_kept` needs `originals` or `labels`, got neither.")
        _check_same_shape(originals, reconstructions, "originals", "reconstructions")
        reference = predict(originals)
    else:
        if labels.shape != reconstructions.shape[:1]:
            raise ValueError(
                f"`labels` must have shape (B,) with B = {reconstructions.shape[0]} reconstructions, got "
                f"{tuple(labels.shape)}."
            )
        reference = labels.cpu()
    return (predict(reconstructions) == reference).float().mean().item()


@torch.no_grad()
def classifier_features(classifier: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    r"""
    A classifier's penultimate features of `images`, batch by batch on the classifier's device: what
    [`frechet_distance`] compares (FID's formula with this classifier in place of Inception).

    Args:
        classifier (`torch.nn.Module`):
            Has a `features` method from images in [0, 1] to `(B, F)`, e.g. [`FashionMNISTClassifier`] (in eval mode).
        images (`torch.Tensor` of shape `(N, C, H, W)`):
            Images in [0, 1].
        batch_size (`int`, *optional*, defaults to 512):
            Images per classifier call.

    Returns:
        `torch.Tensor` of shape `(N, F)`, float32 on the CPU.
    """
    device = next(classifier.parameters()).device
    return torch.cat([classifier.features(chunk.to(device)).float().cpu() for chunk in images.split(batch_size)])


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    r"""
    Fréchet distance between Gaussians fitted to two feature sets (the FID formula, with any feature extractor):

        d² = ‖μ_a − μ_b‖² + tr(Σ_a) + tr(Σ_b) − 2 tr √(Σ_a Σ_b)

    computed in float64, with tr √(Σ_a Σ_b) = Σ √eig(√Σ_a Σ_b √Σ_a) from symmetric eigendecompositions (tiny negative
    eigenvalues from round-off are clamped to 0).

    Args:
        features_a (`torch.Tensor` of shape `(N_a, F)`), features_b (`torch.Tensor` of shape `(N_b, F)`):
            The two feature sets (at least two rows each).

    Returns:
        `float`: the squared Fréchet distance.
    """
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            "`features_a` and `features_b` must be (N, F) with the same F, got "
            f"{tuple(features_a.shape)} and {tuple(features_b.shape)}."
        )
    if min(features_a.shape[0], features_b.shape[0]) < 2:
        raise ValueError(
            "`features_a` and `features_b` need at least 2 rows each for a covariance, got "
            f"{features_a.shape[0]} and {features_b.shape[0]}."
        )
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(dim=0), b.mean(dim=0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)

    # √Σ_a from its eigendecomposition, then the eigenvalues of the symmetric √Σ_a Σ_b √Σ_a
    eigvals_a, eigvecs_a = torch.linalg.eigh(cov_a)
    sqrt_cov_a = (eigvecs_a * eigvals_a.clamp(min=0).sqrt()) @ eigvecs_a.T
    middle = sqrt_cov_a @ cov_b @ sqrt_cov_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()

    distance = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return distance.item()
