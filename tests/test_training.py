"""scorevae_loss (docs/math.md §5): the exact encoder of the closed-form Gaussian problem minimises it, gradients reach
every encoder parameter and none of the UNet's, randomness comes from the generator, bad arguments are errors."""

import math

import pytest
import torch
from conftest import make_encoder, make_unet
from diffusers import DDPMScheduler
from test_closed_form import GaussianProblem, M, S, exact_prior_unet  # the exact §6 prior, per-sample timesteps too

from diffusers_scorevae import scorevae_loss
from diffusers_scorevae.models.encoder import ScoreVAEEncoderOutput
from diffusers_scorevae.noise import alpha_sigma_from_log_snr
from diffusers_scorevae.training import loss_weight


def perturbed(encoder, kind: str, clean_log_snr: float):
    """The exact encoder, changed at the noisy levels only (λ below the clean level), so that q(z | x_0) and hence the
    distribution of z are the same for every variant and the exact q(z | x_t) is the unique minimiser."""
    exact = encoder.forward

    def forward(sample, log_snr, return_dict=True):
        mean, logvar = exact(sample, log_snr, return_dict=False)
        log_snr = torch.as_tensor(log_snr, dtype=torch.float64).expand(sample.shape[0])
        noisy = (log_snr < clean_log_snr - 1e-3).reshape(-1, 1)
        sigma = alpha_sigma_from_log_snr(log_snr)[1].float().reshape(-1, 1)
        if kind == "drift":
            mean = torch.where(noisy, mean + 0.5 * sigma, mean)
        elif kind == "var_x2":
            logvar = torch.where(noisy, logvar + math.log(2), logvar)
        elif kind == "var_x0.5":
            logvar = torch.where(noisy, logvar - math.log(2), logvar)
        return ScoreVAEEncoderOutput(mean=mean, logvar=logvar) if return_dict else (mean, logvar)

    encoder.forward = forward
    return encoder


@pytest.mark.parametrize("loss_weighting", ["simple", "likelihood"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_exact_encoder_has_the_lowest_expected_loss(loss_weighting, prediction_type):
    problem = GaussianProblem()
    scheduler = DDPMScheduler(prediction_type=prediction_type, clip_sample=False)
    unet = exact_prior_unet(scheduler)
    data = (M + S * torch.randn(4096, 1, 4, 4, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)

    def expected_loss(encoder):
        # common random numbers: every variant sees the same t, ε and ξ
        total = 0.0
        for seed in range(4):
            generator = torch.Generator().manual_seed(seed)
            out = scorevae_loss(encoder, unet, scheduler, data, loss_weighting=loss_weighting, generator=generator)
            total += out.loss.item()
        return total / 4

    exact = expected_loss(problem.exact_encoder())
    for kind in ("drift", "var_x2", "var_x0.5"):
        encoder = perturbed(problem.exact_encoder(), kind, clean_log_snr=10.0)
        worse = expected_loss(encoder)
        assert worse > exact, f"{kind}: {worse:.4f} <= exact {exact:.4f} ({loss_weighting}, {prediction_type})"


def test_exact_encoder_explains_part_of_the_prior_loss():
    problem = GaussianProblem()
    scheduler = DDPMScheduler(clip_sample=False)
    unet = exact_prior_unet(scheduler)
    data = M + S * torch.randn(2048, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = scorevae_loss(problem.exact_encoder(), unet, scheduler, data, generator=torch.Generator().manual_seed(0))
    # the encoder term removes the part of the denoising error that z explains
    assert out.score_loss < out.prior_loss
    assert out.kl > 0


def tiny(in_channels=3):
    torch.manual_seed(0)
    unet = make_unet(in_channels)
    unet.requires_grad_(False)
    encoder = make_encoder(in_channels, random_head=True)
    return unet, encoder


@pytest.mark.parametrize("loss_weighting", ["simple", "likelihood"])
def test_gradients_reach_every_encoder_parameter_and_no_unet_parameter(loss_weighting):
    unet, encoder = tiny()
    unet.requires_grad_(True)  # even if the caller forgot to freeze it, the prior runs under no_grad
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    out = scorevae_loss(
        encoder, unet, DDPMScheduler(), images, loss_weighting=loss_weighting, generator=torch.manual_seed(0)
    )
    out.loss.backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in unet.parameters())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_all_randomness_comes_from_the_generator():
    unet, encoder = tiny()
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    a = scorevae_loss(encoder, unet, DDPMScheduler(), images, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG must not matter
    b = scorevae_loss(encoder, unet, DDPMScheduler(), images, generator=torch.Generator().manual_seed(3))
    c = scorevae_loss(encoder, unet, DDPMScheduler(), images, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.timesteps, b.timesteps)
    assert not torch.equal(a.loss, c.loss)


def test_loss_parts_and_beta():
    unet, encoder = tiny()
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    out0 = scorevae_loss(encoder, unet, DDPMScheduler(), images, beta=0.0, generator=torch.manual_seed(0))
    out1 = scorevae_loss(encoder, unet, DDPMScheduler(), images, beta=1.0, generator=torch.manual_seed(0))
    torch.testing.assert_close(out0.loss, out0.score_loss)
    torch.testing.assert_close(out1.loss, out1.score_loss + out1.kl)


def test_likelihood_weight_is_noise_rate_over_sigma_squared():
    scheduler = DDPMScheduler()
    t = torch.tensor([0, 10, 500, 999])
    weight = loss_weight(scheduler, t, "likelihood")
    # for the linear DDPM schedule g(t)² ≈ T · β_t (docs/math.md §5)
    approx = 1000 * scheduler.betas[t] / (1 - scheduler.alphas_cumprod[t])
    torch.testing.assert_close(weight, approx.float(), rtol=0.02, atol=0)
    assert torch.equal(loss_weight(scheduler, t, "simple"), torch.ones(4))


def test_importance_sampling_keeps_the_expectation():
    """Drawing t ∝ p(t) and weighting by 1/(T p(t)) estimates the same objective as uniform t."""
    problem = GaussianProblem()
    scheduler = DDPMScheduler(clip_sample=False)
    unet = exact_prior_unet(scheduler)
    encoder = problem.exact_encoder()
    data = M + S * torch.randn(8192, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    probs = loss_weight(scheduler, torch.arange(1000), "likelihood")
    uniform = scorevae_loss(
        encoder, unet, scheduler, data, loss_weighting="likelihood", generator=torch.manual_seed(0)
    ).loss
    weighted = scorevae_loss(
        encoder,
        unet,
        scheduler,
        data,
        loss_weighting="likelihood",
        generator=torch.manual_seed(0),
        timestep_distribution=probs,
    ).loss
    assert abs(weighted.item() - uniform.item()) / uniform.item() < 0.15


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_weighting": "snr"}, "loss_weighting"),
        ({"beta": -1.0}, "beta"),
        ({"timestep_distribution": torch.ones(10)}, "timestep_distribution"),
    ],
)
def test_bad_arguments(kwargs, match):
    unet, encoder = tiny()
    with pytest.raises(ValueError, match=match):
        scorevae_loss(encoder, unet, DDPMScheduler(), torch.rand(2, 3, 8, 8), **kwargs)
    with pytest.raises(ValueError, match="clean_images"):
        scorevae_loss(encoder, unet, DDPMScheduler(), torch.rand(3, 8, 8))
