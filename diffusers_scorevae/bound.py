"""The variational bound on −log p(x) of the conditional ScoreVAE model and of its prior, in bits per dimension.

It runs the conditional noise prediction of docs/math.md §3 (`noise.guided_epsilon`) at integer training
timesteps; [`ScoreVAEPipeline.bits_per_dim`] and [`ScoreVAEPipeline.prior_bits_per_dim`] call it.

Notation map (variable -> symbol; 0-indexed training timesteps t = 0 … T−1 as in diffusers and improved-diffusion):

    alphas_cumprod[t]        -> ᾱ_t                (ᾱ_{−1} = 1)
    betas[t]                 -> β_t = 1 − ᾱ_t / ᾱ_{t−1}
    posterior_variance[t]    -> β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t),  the variance of q(x_{t−1} | x_t, x_0)
    x_start                  -> x_0, the image in [-1, 1]
    epsilon                  -> ε̂_cond(x_t, t), the guided noise prediction

Ho et al. 2020, eq. 5: (Ho et al. 2020, eq. 5)

    −log p(x_0 | z) ≤ L_T + Σ_{t=1}^{T−1} L_t + L_0
    L_T = KL(q(x_{T−1} | x_0) ‖ N(0, I))                              (no model)
    L_t = KL(q(x_{t−1} | x_t, x_0) ‖ p(x_{t−1} | x_t, z)),   x_t ~ q(x_t | x_0)
    L_0 = −log p(x_0 | x_{t=0}, z)                                    (discretised Gaussian, 8-bit bins of width 2/255)

p(x_{t−1} | x_t, z) = N(μ̃(x_t, x̂_0), exp(v_t)) with x̂_0 = (x_t − σ_t ε̂_cond) / α_t (clipped when the scheduler clips)
and μ̃ the posterior mean of q(x_{t−1} | x_t, x_0); its log-variance v_t follows the scheduler's `variance_type`, as in
improved-diffusion (β̃_0 = 0 is replaced by β̃_1 at t = 0). With the encoder, −log p(x) ≤ E_q(z|x)[−log p(x | z)] +
KL(q(z | x) ‖ N(0, I)).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from .noise import append_dims

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned_range")


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) ‖ N(mean2, exp(logvar2))), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def log_ndtr_difference(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    # log(Φ(upper) − Φ(lower)) for upper > lower, accurate in both tails: reflect to the lower tail, where log Φ is
    # exact
    flip = lower > 0
    upper, lower = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
    log_upper, log_lower = torch.special.log_ndtr(upper), torch.special.log_ndtr(lower)
    return log_upper + torch.log(-torch.expm1(log_lower - log_upper))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) for 8-bit data x in [-1, 1] (values k·2/255 − 1) under N(mean, exp(log_scale)²) discretised to bins of
    width 2/255 centred on the data values, the outer bins extending to ±∞ (Ho et al. 2020 §3.3). Elementwise, float64;
    exact in the tails (log Φ, no clamping)."""
    x, mean, inv_std = x.double(), mean.double(), torch.exp(-log_scale.double())
    upper = (x - mean + 1 / 255) * inv_std
    lower = (x - mean - 1 / 255) * inv_std
    log_cdf_upper = torch.special.log_ndtr(upper)  # the bin of x = −1: (−∞, −1 + 1/255]
    log_survival_lower = torch.special.log_ndtr(-lower)  # the bin of x = 1: [1 − 1/255, ∞)
    middle = log_ndtr_difference(upper, lower)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_survival_lower, middle))


def check_8bit(x_start: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] snapped to the 8-bit grid k·2/255 − 1; a `ValueError` if they are not on it."""
    levels = (x_start.double() + 1) * 127.5
    off_grid = (levels - levels.round()).abs().max().item()
    if off_grid > 1e-3:
        raise ValueError(
            f"the likelihood bound is for 8-bit images, but image values are up to {off_grid / 255:.3g} off the grid "
            "of multiples of 1/255; quantise them first, e.g. `(image * 255).round() / 255`."
        )
    return levels.round() / 127.5 - 1


class DiffusionBound:
    """The per-timestep coefficients of the bound for a training schedule `alphas_cumprod` `[T]` (float64)."""

    def __init__(self, alphas_cumprod: torch.Tensor, variance_type: str = "fixed_small", clip_sample_range=None):
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"variance_type {variance_type!r} is not supported by the likelihood bound; choose one of "
                f"{VARIANCE_TYPES}."
            )
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
        if alphas_cumprod[-1] <= 0:
            raise ValueError(
                "the likelihood bound needs ᾱ_t > 0 at every step; zero-terminal-SNR schedules are not supported."
            )
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        betas = 1 - alphas_cumprod / prev
        posterior_variance = betas * (1 - prev) / (1 - alphas_cumprod)
        log_small = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
        log_large = torch.log(torch.cat([posterior_variance[1:2], betas[1:]]))
        self.num_train_timesteps = len(alphas_cumprod)
        self.alphas_cumprod = alphas_cumprod
        self.variance_type = variance_type
        self.clip_sample_range = clip_sample_range
        self.posterior_variance = posterior_variance
        self.posterior_mean_coef1 = betas * prev.sqrt() / (1 - alphas_cumprod)  # of x_0
        self.posterior_mean_coef2 = (1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod)  # of x_t
        self.min_log_variance, self.max_log_variance = log_small, torch.log(betas)
        self.model_log_variance = log_large if variance_type.startswith("fixed_large") else log_small

    @classmethod
    def from_scheduler(cls, scheduler) -> "DiffusionBound":
        """The bound of the model `scheduler` samples: its training schedule, `variance_type` (default `fixed_small`,
        the DDPM/DDIM posterior variance) and x̂_0 clipping (`clip_sample`, `clip_sample_range`)."""
        config = scheduler.config
        if getattr(config, "thresholding", False):
            raise ValueError(
                "the likelihood bound does not model dynamic thresholding; use a scheduler with thresholding=False."
            )
        clip = getattr(config, "clip_sample_range", 1.0) if getattr(config, "clip_sample", False) else None
        return cls(scheduler.alphas_cumprod, getattr(config, "variance_type", None) or "fixed_small", clip)

    def prior_term(self, x_start: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_{T−1} | x_0) ‖ N(0, I)) in nats, summed over dimensions: `[B, C, H, W]` -> `[B]`."""
        alpha_prod = self.alphas_cumprod[-1].to(x_start.device)
        mean, log_variance = alpha_prod.sqrt() * x_start.double(), torch.log1p(-alpha_prod)
        zero = torch.zeros((), dtype=torch.float64, device=x_start.device)
        return normal_kl(mean, log_variance, zero, zero).flatten(1).sum(1)

    def terms(self, x_start, sample, timesteps, epsilon, variance=None) -> torch.Tensor:
        """L_t in nats (summed over dimensions) for items `[N]` at `timesteps`: the KL for t ≥ 1, −log of the
        discretised decoder for t = 0. `sample` is x_t, `epsilon` the (guided) noise prediction, `variance` the UNet's
        variance channels for `learned_range`."""
        ndim, device = sample.ndim, sample.device

        def at(table):
            return append_dims(table.to(device)[timesteps], ndim)

        x_start, sample, epsilon = x_start.double(), sample.double(), epsilon.double()
        alpha_prod = at(self.alphas_cumprod)
        pred_original = (sample - (1 - alpha_prod).sqrt() * epsilon) / alpha_prod.sqrt()
        if self.clip_sample_range is not None:
            pred_original = pred_original.clamp(-self.clip_sample_range, self.clip_sample_range)
        if self.variance_type == "learned_range":
            if variance is None:
                raise ValueError("variance_type 'learned_range' needs a UNet with 2·C output channels.")
            frac = (variance.double() + 1) / 2
            model_log_variance = frac * at(self.max_log_variance) + (1 - frac) * at(self.min_log_variance)
        else:
            model_log_variance = at(self.model_log_variance).expand_as(sample)
        coef1, coef2 = at(self.posterior_mean_coef1), at(self.posterior_mean_coef2)
        model_mean = coef1 * pred_original + coef2 * sample
        true_mean = coef1 * x_start + coef2 * sample
        true_log_variance = torch.log(at(self.posterior_variance).clamp(min=1e-300))
        kl = normal_kl(true_mean, true_log_variance, model_mean, model_log_variance).flatten(1).sum(1)
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, model_mean, 0.5 * model_log_variance)
        return torch.where(timesteps.to(device) == 0, decoder_nll.flatten(1).sum(1), kl)


def diffusion_bound(
    epsilon_fn: Callable,
    x_start: torch.Tensor,
    bound: DiffusionBound,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    num_sampled_timesteps: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The DDPM bound L_T + Σ_t L_t + L_0 on −log p(x_0) in nats, per image: `[B, C, H, W]` -> float64 `[B]`.

    `epsilon_fn(x_t, timesteps, rows)` returns (ε̂, variance channels or `None`) for items `[N]`, `rows` indexing the
    images `x_start` they come from (to pick each image's code). Each L_t is estimated with one x_t ~ q(x_t | x_0), as
    in Ho et al.; `batch_size` (image, timestep) items go through the UNet at once. With `num_sampled_timesteps = n`,
    the T−1 KL terms are estimated without bias from n of them drawn uniformly without replacement per image, weighted
    by (T−1)/n; L_0 and L_T are always exact.
    """
    num_images, device = x_start.shape[0], x_start.device
    num_kl = bound.num_train_timesteps - 1
    if num_sampled_timesteps is None:
        kl_timesteps = torch.arange(1, num_kl + 1).expand(num_images, num_kl)
        weight = 1.0
    else:
        kl_timesteps = torch.stack(
            [torch.randperm(num_kl, generator=generator)[:num_sampled_timesteps] + 1 for _ in range(num_images)]
        )
        weight = num_kl / num_sampled_timesteps
    timesteps = torch.cat([torch.zeros(num_images, 1, dtype=torch.long), kl_timesteps], 1).flatten()
    rows = torch.arange(num_images).repeat_interleave(timesteps.numel() // num_images)
    weights = torch.where(timesteps == 0, 1.0, weight).double()

    total = bound.prior_term(x_start)
    for start in range(0, len(timesteps), batch_size):
        t, r = timesteps[start : start + batch_size].to(device), rows[start : start + batch_size].to(device)
        x0 = x_start[r]
        noise = randn_tensor(x0.shape, generator=generator, device=device, dtype=torch.float64)
        alpha_prod = append_dims(bound.alphas_cumprod.to(device)[t], x0.ndim)
        sample = (alpha_prod.sqrt() * x0.double() + (1 - alpha_prod).sqrt() * noise).to(dtype)
        epsilon, variance = epsilon_fn(sample, t, r)
        terms = bound.terms(x0, sample, t, epsilon, variance)
        total = total.index_add(0, r, terms * weights[start : start + batch_size].to(device))
    return total


def nats_to_bits_per_dim(nats: torch.Tensor, num_dims: int) -> torch.Tensor:
    """nats per image -> bits per dimension: nats / (D · ln 2)."""
    return nats / (num_dims * math.log(2))
