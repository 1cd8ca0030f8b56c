"""The variational bound on −log p(x) in bits per dimension (`ScoreVAEPipeline.bits_per_dim`, `prior_bits_per_dim`).

The closed-form check: 8-bit data, the continuous Gaussian N(m, s² I) of docs/math.md §6 rounded to the grid (so its
exact probability mass P(x) is a product of Gaussian bin masses, computable exactly), with the exact prior ε̂. Then

- for every proper model of the 8-bit data, E_data[bound] ≥ E_data[−log p_model(x)] ≥ H(data) (the ELBO, then Gibbs'
  inequality): the bound averaged over data must not fall below the data's exact entropy beyond Monte Carlo error.
  No continuous-to-discrete correction is needed: the data are discrete and P(x) is exact.
- for the exact prior every term's expectation over data has a closed form (x̂_0 = E[x_0 | x_t] is linear in x_t, so
  the KL terms only need the data's first two moments), which the Monte Carlo estimate must match.

The bound of the exact prior is not tight: 6.72 bits/dim of entropy against a bound of 7.46 (fixed_small variances,
T = 1000 linear schedule). The gap is the DDPM bound's own: fixed reverse variances β̃_t ignore Var[x_0 | x_t] (large
relative to β̃_t at the first steps), and the decoder at t = 0 has noise std 0.01 ≈ the 8-bit bin width 2/255.
"""

import math

import pytest
import torch
from conftest import make_unet
from diffusers import DDIMScheduler, DDPMScheduler
from test_closed_form import SHAPE, D, M, S
from test_inversion import gaussian_images, gaussian_pipeline

from diffusers_scorevae import ScoreVAEPipeline
from diffusers_scorevae.bound import discretized_gaussian_log_likelihood

GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 8-bit values in [-1, 1]
# an encoder with codes of marginal N(0, I) (scale² s² + s_0² = 1), so that the model's p(z) = N(0, I) is exact
ENCODER_S0 = 0.6
ENCODER_SCALE = math.sqrt(1 - ENCODER_S0**2) / S


def test_discretized_likelihood_is_a_distribution():
    for mean in (-1.3, -0.5, 0.0, 0.99, 1.3):
        for log_scale in (math.log(1e-3), math.log(0.01), math.log(0.3), 0.0):
            log_p = discretized_gaussian_log_likelihood(GRID, torch.tensor(mean), torch.tensor(log_scale))
            assert torch.isfinite(log_p).all()
            torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-9)
    # broad decoders: the bin mass is the density times the bin width 2/255
    x, scale = GRID[50:200], 0.3
    density = torch.exp(-0.5 * (x / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
    log_p = discretized_gaussian_log_likelihood(x, torch.tensor(0.0), torch.tensor(math.log(scale)))
    torch.testing.assert_close(log_p, torch.log(density * 2 / 255), rtol=0, atol=1e-4)
    # far tails stay finite and exact (log Φ, no clamping)
    far = discretized_gaussian_log_likelihood(torch.tensor(0.0), torch.tensor(0.5), torch.tensor(math.log(1e-3)))
    assert -130_000 < far.item() < -120_000  # ≈ −(0.5/1e-3)²/2 = −125000


# the closed-form Gaussian model


def data_mass() -> torch.Tensor:
    """P(k) of one dimension of the 8-bit data: N(m, s²) rounded to the grid (the outer bins reach ±∞)."""
    return discretized_gaussian_log_likelihood(GRID, torch.tensor(M), torch.tensor(math.log(S))).exp()


def data_nll_bits(image: torch.Tensor) -> torch.Tensor:
    """The exact −log P(x) of 8-bit Gaussian data in bits per dimension, per image."""
    x = image.double() * 2 - 1
    log_p = discretized_gaussian_log_likelihood(x, torch.tensor(M), torch.tensor(math.log(S)))
    return -log_p.flatten(1).sum(1) / (D * math.log(2))


def analytic_prior_bound_bits(scheduler) -> float:
    """E_data[L_T + Σ_t L_t + L_0] of the exact prior with fixed_small variances, in bits per dimension.

    With α, σ of step t, x_t = α x_0 + σ n and x̂_0 = m + k (x_t − α m), k = α s² / (α² s² + σ²):
    E (x_0 − x̂_0)² = (1 − kα)² E(x_0 − m)² + k² σ², so E L_t = ½ (coef1² E(x_0 − x̂_0)² / β̃_t) per dimension
    (the variance terms cancel for fixed_small). L_0 is a one-dimensional expectation, by Monte Carlo.
    """
    betas = scheduler.betas.double()
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    mass = data_mass()
    second_moment = (mass * (GRID - M) ** 2).sum()  # E (x_0 − m)² of the 8-bit data (s² + bin width² / 12)
    alpha, sigma = alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()
    k = alpha * S**2 / (alpha**2 * S**2 + sigma**2)
    error = (1 - k * alpha) ** 2 * second_moment + k**2 * sigma**2
    posterior_variance = betas * (1 - prev) / (1 - alphas_cumprod)
    coef1 = betas * prev.sqrt() / (1 - alphas_cumprod)
    kl_terms = 0.5 * coef1[1:] ** 2 * error[1:] / posterior_variance[1:]
    a_T = alphas_cumprod[-1]
    prior_term = 0.5 * (-1 - torch.log(1 - a_T) + (1 - a_T) + a_T * (mass * GRID**2).sum())
    # L_0: decoder N(x̂_0(x_{t=0}), β̃_1) discretised, by Monte Carlo over x_0 and the noise (1-D: cheap)
    generator = torch.Generator().manual_seed(0)
    x0 = GRID[torch.multinomial(mass, 1_000_000, replacement=True, generator=generator)]
    x_t = alpha[0] * x0 + sigma[0] * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    mean = M + k[0] * (x_t - alpha[0] * M)
    decoder = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * torch.log(posterior_variance[1])).mean()
    return ((prior_term + kl_terms.sum() + decoder) / math.log(2)).item()


def entropy_bits() -> float:
    mass = data_mass()
    return (-(mass * mass.log()).sum() / math.log(2)).item()


@pytest.fixture(scope="module")
def gaussian_data():
    return gaussian_images(400, seed=0)


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item()


def test_prior_bound_matches_its_analytic_expectation(gaussian_data):
    # Measured: analytic 7.459 bits/dim (0.739 above the entropy, 6.720); Monte Carlo over 400 images 7.446 ± 0.033,
    # 0.731 ± 0.030 above the images' exact −log P(x).
    scheduler = DDPMScheduler(clip_sample=False)
    pipe = gaussian_pipeline(scheduler)
    expected = analytic_prior_bound_bits(scheduler)
    assert expected > entropy_bits() + 0.5  # the bound is above the entropy (see the module docstring)
    bits = pipe.prior_bits_per_dim(gaussian_data, generator=torch.Generator().manual_seed(0), batch_size=4096)
    assert bits.shape == (400,) and bits.dtype == torch.float64 and torch.isfinite(bits).all()
    mean, se = mean_and_se(bits - data_nll_bits(gaussian_data))  # paired with −log P(x): smaller variance
    expected_gap = expected - entropy_bits()
    assert abs(mean - expected_gap) < 4 * se + 0.01, (mean, se, expected_gap)


def test_sampled_timesteps_estimate_is_unbiased(gaussian_data):
    # 200 of the 999 KL terms per image, weighted by 999/200: measured 7.43 ± 0.13 bits/dim against 7.46 (the few large
    # KL terms of the first steps make uniform subsampling noisy: ± 0.27 with 50 terms).
    scheduler = DDPMScheduler(clip_sample=False)
    pipe = gaussian_pipeline(scheduler)
    bits = pipe.prior_bits_per_dim(
        gaussian_data, generator=torch.Generator().manual_seed(1), num_sampled_timesteps=200
    )
    mean, se = mean_and_se(bits - data_nll_bits(gaussian_data))
    assert abs(mean - (analytic_prior_bound_bits(scheduler) - entropy_bits())) < 4 * se + 0.01, (mean, se)


def test_bounds_are_not_below_the_data_entropy_and_order_data_before_noise(gaussian_data):
    # The exact encoder with codes of marginal N(0, I): q(z | x_0) is the model's exact posterior, so the ELBO's
    # encoder part is tight and the ScoreVAE bound differs from the prior's only by the diffusion bounds' gaps.
    # Measured over 400 images, bits/dim: entropy 6.72; prior bound 7.45; ScoreVAE bound 7.44 (0.73 ± 0.03 above the
    # images' exact −log P(x)); uniform noise images: 13.1 (ScoreVAE) and 13.3 (prior).
    pipe = gaussian_pipeline(DDPMScheduler(clip_sample=False), scale=ENCODER_SCALE, s0=ENCODER_S0, clean_log_snr=20.0)
    generator = torch.Generator().manual_seed(2)
    bits = pipe.bits_per_dim(gaussian_data, generator=generator, batch_size=4096)
    assert bits.shape == (400,) and torch.isfinite(bits).all()
    mean, se = mean_and_se(bits - data_nll_bits(gaussian_data))
    assert mean > -4 * se and mean < 1.5, (mean, se)

    noise = (torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(3)) * 255).round() / 255
    noise_bits = pipe.bits_per_dim(noise, generator=generator, batch_size=4096)
    noise_prior_bits = pipe.prior_bits_per_dim(noise, generator=generator, batch_size=4096)
    prior_bits = pipe.prior_bits_per_dim(gaussian_data[:64], generator=generator, batch_size=4096)
    assert noise_bits.mean() > bits.mean() + 3 and noise_prior_bits.mean() > prior_bits.mean() + 3


def test_bound_belongs_to_the_training_schedule_not_the_sampler(gaussian_data):
    # DDIM samples the same model as DDPM (fixed_small): same bound, same randomness, same numbers
    images = gaussian_data[:8]
    ddpm = gaussian_pipeline(DDPMScheduler(clip_sample=False)).prior_bits_per_dim(
        images, generator=torch.Generator().manual_seed(0)
    )
    ddim = gaussian_pipeline(DDIMScheduler(clip_sample=False)).prior_bits_per_dim(
        images, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(ddpm, ddim)
    large = gaussian_pipeline(DDPMScheduler(clip_sample=False, variance_type="fixed_large")).prior_bits_per_dim(
        images, generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(large).all() and (large - ddpm).abs().max() > 1e-3


# tiny random components


@pytest.fixture
def pipe(unet, encoder):
    pipe = ScoreVAEPipeline(unet=unet, scheduler=DDPMScheduler(), encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def images():
    return (torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).round() / 255


def test_bits_per_dim_on_tiny_components(pipe, images):
    bits = pipe.bits_per_dim(images, generator=torch.Generator().manual_seed(0))
    assert bits.shape == (2,) and torch.isfinite(bits).all() and (bits > 0).all()
    torch.testing.assert_close(bits, pipe.bits_per_dim(images, generator=torch.Generator().manual_seed(0)))
    prior = pipe.prior_bits_per_dim(images, generator=torch.Generator().manual_seed(0))
    assert prior.shape == (2,) and torch.isfinite(prior).all() and (prior - bits).abs().max() > 1e-4
    several = pipe.bits_per_dim(
        images, num_latent_samples=3, generator=torch.Generator().manual_seed(0), batch_size=97
    )
    sampled = pipe.bits_per_dim(images, generator=torch.Generator().manual_seed(0), num_sampled_timesteps=10)
    assert torch.isfinite(several).all() and torch.isfinite(sampled).all()
    # PIL images are 8-bit by construction
    pil = pipe.numpy_to_pil(images.permute(0, 2, 3, 1).numpy())
    assert torch.isfinite(pipe.prior_bits_per_dim(pil, num_sampled_timesteps=5)).all()


def test_bits_per_dim_checks_inputs(pipe, images):
    with pytest.raises(ValueError, match="8-bit"):
        pipe.bits_per_dim(images * 254 / 255 + 0.3 / 255)
    with pytest.raises(ValueError, match="num_latent_samples"):
        pipe.bits_per_dim(images, num_latent_samples=0)
    with pytest.raises(ValueError, match="num_sampled_timesteps"):
        pipe.prior_bits_per_dim(images, num_sampled_timesteps=1000)
    with pytest.raises(ValueError, match="batch_size"):
        pipe.prior_bits_per_dim(images, batch_size=0)
    with pytest.raises(ValueError, match="generator"):
        pipe.bits_per_dim(images, generator=[torch.Generator(), torch.Generator()])
    pipe.scheduler = DDPMScheduler(variance_type="learned_range")  # needs a UNet with 2·C output channels
    with pytest.raises(ValueError, match="learned_range"):
        pipe.prior_bits_per_dim(images, num_sampled_timesteps=5)
    pipe.scheduler = DDPMScheduler(variance_type="learned")
    with pytest.raises(ValueError, match="variance_type"):
        pipe.prior_bits_per_dim(images)


def test_learned_range_variance(encoder, images):
    pipe = ScoreVAEPipeline(
        unet=make_unet(3, out_channels=6), scheduler=DDPMScheduler(variance_type="learned_range"), encoder=encoder
    )
    bits = pipe.bits_per_dim(images, generator=torch.Generator().manual_seed(0), num_sampled_timesteps=20)
    assert bits.shape == (2,) and torch.isfinite(bits).all()
