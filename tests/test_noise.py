"""The noise-level math of `diffusers_scorevae.noise` (docs/math.md §1-§4) against hand values and autograd."""

import pytest
import torch
from conftest import make_encoder
from diffusers import DDPMScheduler, EulerDiscreteScheduler

from diffusers_scorevae.models.encoder import ScoreVAEEncoderOutput
from diffusers_scorevae.noise import (
    PREDICTION_TYPES,
    alpha_sigma_from_log_snr,
    encoder_score,
    epsilon_to_model_output,
    guided_model_output,
    model_output_to_epsilon,
    scheduler_log_snr,
)

# log-SNR of a scheduler's timesteps


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_log_snr_of_integer_timesteps_matches_alphas_cumprod(beta_schedule):
    scheduler = DDPMScheduler(beta_schedule=beta_schedule)
    alphas_cumprod = scheduler.alphas_cumprod.double()
    timesteps = torch.tensor([0, 1, 10, 250, 500, 998, 999])
    expected = torch.log(alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps]))
    torch.testing.assert_close(scheduler_log_snr(scheduler, timesteps), expected, rtol=1e-10, atol=1e-10)
    # a python int and a 0-d tensor give 0-d results
    assert scheduler_log_snr(scheduler, 500).shape == ()
    torch.testing.assert_close(scheduler_log_snr(scheduler, torch.tensor(500)), expected[4], rtol=1e-10, atol=1e-10)


def test_log_snr_of_float_timesteps_interpolates():
    scheduler = DDPMScheduler()
    table = scheduler_log_snr(scheduler, torch.arange(1000))
    assert torch.all(table[1:] < table[:-1])  # λ decreases with t
    lam = scheduler_log_snr(scheduler, torch.tensor([10.25, 500.5, 998.75]))
    expected = torch.stack(
        [0.75 * table[10] + 0.25 * table[11], (table[500] + table[501]) / 2, 0.25 * table[998] + 0.75 * table[999]]
    )
    torch.testing.assert_close(lam, expected)


def test_log_snr_of_euler_float_timesteps_matches_its_sigmas():
    # Euler maps σ_ve to a float timestep by log-σ interpolation; λ = −2 log σ_ve must come back out.
    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(7)
    assert not torch.all(scheduler.timesteps == scheduler.timesteps.round())  # really fractional timesteps
    lam = scheduler_log_snr(scheduler, scheduler.timesteps)
    expected = -2 * torch.log(scheduler.sigmas[:-1].double())
    torch.testing.assert_close(lam, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("timestep", [-1, -0.5, 1000, 1000.5, torch.tensor([3, 1200])])
def test_log_snr_out_of_range_timestep_raises(timestep):
    with pytest.raises(ValueError, match="timestep"):
        scheduler_log_snr(DDPMScheduler(), timestep)


def test_log_snr_needs_alphas_cumprod():
    class NoSchedule:
        pass

    with pytest.raises(ValueError, match="alphas_cumprod"):
        scheduler_log_snr(NoSchedule(), 0)


def test_alpha_sigma_from_log_snr():
    alpha, sigma = alpha_sigma_from_log_snr(torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64))


# prediction-type conversions


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_prediction_type_round_trip(prediction_type):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64)
    out = torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64)
    alpha, sigma = alpha_sigma_from_log_snr(torch.tensor([-2.0, 0.5, 4.0], dtype=torch.float64))  # per-sample [B]
    epsilon = model_output_to_epsilon(out, x, alpha, sigma, prediction_type)
    torch.testing.assert_close(epsilon_to_model_output(epsilon, x, alpha, sigma, prediction_type), out)
    # and the other way round
    torch.testing.assert_close(
        model_output_to_epsilon(
            epsilon_to_model_output(out, x, alpha, sigma, prediction_type), x, alpha, sigma, prediction_type
        ),
        out,
    )


def test_prediction_type_formulas_against_hand_values():
    # α = 0.6, σ = 0.8, x_t = 1, model output 0.5 (docs/math.md §2)
    x, out, alpha, sigma = torch.tensor([[1.0]]), torch.tensor([[0.5]]), 0.6, 0.8
    assert model_output_to_epsilon(out, x, alpha, sigma, "epsilon").item() == pytest.approx(0.5)
    assert model_output_to_epsilon(out, x, alpha, sigma, "v_prediction").item() == pytest.approx(0.6 * 0.5 + 0.8)
    assert model_output_to_epsilon(out, x, alpha, sigma, "sample").item() == pytest.approx((1 - 0.6 * 0.5) / 0.8)
    assert epsilon_to_model_output(out, x, alpha, sigma, "epsilon").item() == pytest.approx(0.5)
    assert epsilon_to_model_output(out, x, alpha, sigma, "v_prediction").item() == pytest.approx((0.5 - 0.8) / 0.6)
    assert epsilon_to_model_output(out, x, alpha, sigma, "sample").item() == pytest.approx((1 - 0.8 * 0.5) / 0.6)


@pytest.mark.parametrize("convert", [model_output_to_epsilon, epsilon_to_model_output])
def test_unknown_prediction_type_raises(convert):
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="prediction_type"):
        convert(x, x, 0.6, 0.8, "x0")


# the encoder's score


def _linear_gaussian_encoder(W: torch.Tensor, V: torch.Tensor, c: torch.Tensor):
    """A real ScoreVAEEncoder whose forward is replaced by mean = W x, logvar = V x + c (x flattened)."""
    encoder = make_encoder(1, sample_size=4, latent_dim=W.shape[0], random_head=False)

    def forward(sample, log_snr, return_dict=True):
        x = sample.flatten(1).double()
        mean, logvar = (x @ W.T).float(), (x @ V.T + c).float()
        return ScoreVAEEncoderOutput(mean=mean, logvar=logvar) if return_dict else (mean, logvar)

    encoder.forward = forward
    return encoder


def _linear_gaussian_case():
    generator = torch.Generator().manual_seed(0)
    k, d = 5, 16
    W = 0.5 * torch.randn(k, d, generator=generator, dtype=torch.float64)
    V = 0.2 * torch.randn(k, d, generator=generator, dtype=torch.float64)
    c = 0.3 * torch.randn(k, generator=generator, dtype=torch.float64)
    x = torch.randn(3, 1, 4, 4, generator=generator)
    z = torch.randn(3, k, generator=generator)
    # ∇_x log q = Σ_k [(z_k − μ_k) e^{−ℓ_k} W_k + ½((z_k − μ_k)² e^{−ℓ_k} − 1) V_k]
    # (docs/math.md §4, including the ℓ term)
    xf = x.flatten(1).double()
    mu, ell = xf @ W.T, xf @ V.T + c
    r = (z.double() - mu) * torch.exp(-ell)
    expected = r @ W + 0.5 * ((z.double() - mu) ** 2 * torch.exp(-ell) - 1) @ V
    return _linear_gaussian_encoder(W, V, c), x, z, expected.reshape(x.shape).float()


def test_encoder_score_equals_analytic_gradient_including_log_variance_term():
    encoder, x, z, expected = _linear_gaussian_case()
    score = encoder_score(encoder, x, torch.tensor(0.3), z)
    assert score.shape == x.shape and score.dtype == x.dtype
    torch.testing.assert_close(score, expected, rtol=1e-4, atol=1e-5)
    # the ℓ term is really there: dropping it (as the authors' code does) gives a different answer
    W_only = _drop_log_variance_term(encoder, x, z)
    assert (score - W_only).abs().max() > 1e-2


def _drop_log_variance_term(encoder, x, z):
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        out = encoder(xg, 0.3)
        log_q = (-0.5 * (z - out.mean) ** 2 * torch.exp(-out.logvar.detach())).sum()
        return torch.autograd.grad(log_q, xg)[0]


def test_encoder_score_works_under_no_grad_and_leaves_no_graph():
    encoder, x, z, expected = _linear_gaussian_case()
    with torch.no_grad():
        score = encoder_score(encoder, x, torch.tensor(0.3), z)
    assert not score.requires_grad
    torch.testing.assert_close(score, expected, rtol=1e-4, atol=1e-5)
    # a sample that itself requires grad is not touched
    x_leaf = x.clone().requires_grad_(True)
    score = encoder_score(encoder, x_leaf, torch.tensor(0.3), z)
    assert x_leaf.grad is None and not score.requires_grad


def test_encoder_score_of_real_encoder_matches_finite_differences():
    encoder = make_encoder(3).double()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 8, 8, generator=generator, dtype=torch.float64)
    z = torch.randn(1, 16, generator=generator, dtype=torch.float64)
    log_snr = torch.tensor(1.5, dtype=torch.float64)
    score = encoder_score(encoder, x, log_snr, z)
    assert score.abs().max() > 0
    direction = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    h = 1e-5

    def log_q(sample):
        out = encoder(sample, log_snr)
        return (-0.5 * ((z - out.mean) ** 2 * torch.exp(-out.logvar) + out.logvar)).sum()

    with torch.no_grad():
        fd = (log_q(x + h * direction) - log_q(x - h * direction)) / (2 * h)
    assert (score * direction).sum().item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8)


def test_untrained_encoder_has_zero_score():
    encoder = make_encoder(3, random_head=False)
    score = encoder_score(encoder, torch.randn(2, 3, 8, 8), torch.tensor(0.0), torch.randn(2, 16))
    assert torch.all(score == 0)


# the guidance term


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_guided_model_output_with_zero_guidance_is_unchanged(prediction_type):
    generator = torch.Generator().manual_seed(0)
    out, x, score = (torch.randn(2, 3, 4, 4, generator=generator) for _ in range(3))
    guided = guided_model_output(out, x, score, torch.tensor(0.7, dtype=torch.float64), 0.0, prediction_type)
    torch.testing.assert_close(guided, out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_guided_model_output_shifts_epsilon_by_sigma_times_score(prediction_type):
    generator = torch.Generator().manual_seed(0)
    out, x, score = (torch.randn(2, 3, 4, 4, generator=generator) for _ in range(3))
    log_snr, gamma = torch.tensor(-0.4, dtype=torch.float64), 1.7
    alpha, sigma = (v.item() for v in alpha_sigma_from_log_snr(log_snr))
    guided = guided_model_output(out, x, score, log_snr, gamma, prediction_type)
    epsilon = model_output_to_epsilon(out, x, alpha, sigma, prediction_type)
    guided_epsilon = model_output_to_epsilon(guided, x, alpha, sigma, prediction_type)
    torch.testing.assert_close(guided_epsilon, epsilon - gamma * sigma * score, rtol=1e-4, atol=1e-5)


def test_guided_model_output_keeps_learned_variance_channels():
    generator = torch.Generator().manual_seed(0)
    x, score = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)
    out = torch.randn(2, 6, 4, 4, generator=generator)  # prediction, then the learned variance
    log_snr = torch.tensor(0.2, dtype=torch.float64)
    guided = guided_model_output(out, x, score, log_snr, 1.0, "epsilon")
    assert guided.shape == out.shape
    assert torch.equal(guided[:, 3:], out[:, 3:])
    sigma = alpha_sigma_from_log_snr(log_snr)[1].item()
    torch.testing.assert_close(guided[:, :3], out[:, :3] - sigma * score)


def test_guided_model_output_unknown_prediction_type_raises():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="prediction_type"):
        guided_model_output(x, x, x, torch.tensor(0.0), 1.0, "x0")
