"""The encoder objectives through a flow-matching prior (docs/math.md §5, §8, §10): σ is drawn from the scheduler's
training grid without σ = 1, the UNet gets float timesteps σ · T, and the loss is the VP one in ε-space with the
canonical encoder at (x_σ / c, λ). Checked against a hand-written computation, for its gradients (the encoder's only),
and in the closed-form Gaussian problem, where the exact canonical encoder minimises both objectives."""

import math

import pytest
import torch
from conftest import make_encoder, make_unet
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.models.unets.unet_2d import UNet2DOutput
from test_closed_form import SHAPE, GaussianProblem, M, S
from test_posterior_loss import CLEAN_LOG_SNR, exact_student
from test_training import perturbed

from diffusers_scorevae import posterior_loss, scorevae_loss
from diffusers_scorevae.training import loss_weight, training_timesteps

T = 1000


def flow_grid(shift: float) -> torch.Tensor:
    """The training σ of diffusers' FlowMatchEulerDiscreteScheduler(shift), written out: s = k / T for k = 1 … T − 1
    (σ = 1 at k = T left out), σ = shift·s / (1 + (shift − 1) s), float32 as the scheduler computes it."""
    s = torch.arange(1, T, dtype=torch.float32) / T
    return shift * s / (1 + (shift - 1) * s)


def likelihood_weight(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """−dλ/ds on the shifted grid in closed form: 2 / (σ (1 − σ)) · (shift − (shift − 1) σ)² / shift."""
    return 2 / (sigma * (1 - sigma)) * (shift - (shift - 1) * sigma) ** 2 / shift


def reference_flow_loss(encoder, unet, shift, images, seed, beta, loss_weighting):
    """scorevae_loss for FlowMatchEulerDiscreteScheduler(shift), computed by hand from the same draws."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = images.shape[0]
    index = torch.randint(0, T - 1, (batch_size,), generator=generator)
    xi = torch.randn(batch_size, encoder.config.latent_dim, generator=generator)
    eps = torch.randn(images.shape, generator=generator)
    sigma = flow_grid(shift)[index]
    timesteps = sigma * T
    s = sigma.reshape(-1, 1, 1, 1)
    x_sigma = (1 - s) * images + s * eps
    with torch.no_grad():
        velocity = unet(x_sigma, timesteps).sample
    eps_hat = x_sigma + (1 - s) * velocity
    c = torch.sqrt((1 - s) ** 2 + s**2)
    x_vp = (x_sigma / c).detach().requires_grad_(True)
    log_snr = 2 * torch.log((1 - sigma) / sigma)
    clean_mean, clean_logvar = encoder(images, encoder.config.clean_log_snr, return_dict=False)
    z = clean_mean + torch.exp(0.5 * clean_logvar) * xi
    mean, logvar = encoder(x_vp, log_snr, return_dict=False)
    log_q = -0.5 * ((z - mean) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum()
    (score,) = torch.autograd.grad(log_q, x_vp, create_graph=True)
    weight = torch.ones(batch_size) if loss_weighting == "simple" else likelihood_weight(sigma, shift)
    score_loss = 0.5 * weight * (eps_hat - s / c * score - eps).pow(2).sum(dim=(1, 2, 3))
    kl = 0.5 * (clean_mean**2 + clean_logvar.exp() - 1 - clean_logvar).sum(dim=1)
    return (score_loss + beta * kl).mean(), timesteps


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("loss_weighting", ["simple", "likelihood"])
def test_flow_loss_equals_the_hand_written_computation(shift, loss_weighting):
    unet, encoder = make_unet(3), make_encoder(3, random_head=True)
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    out = scorevae_loss(
        encoder, unet, scheduler, images, beta=0.1, loss_weighting=loss_weighting, generator=torch.manual_seed(5)
    )
    expected, timesteps = reference_flow_loss(encoder, unet, shift, images, 5, 0.1, loss_weighting)
    assert out.timesteps.dtype == torch.float32 and torch.equal(out.timesteps, timesteps)
    # the likelihood weight's slope dσ/ds comes from finite differences of the float32 table
    rtol = 1e-5 if loss_weighting == "simple" else 1e-3
    torch.testing.assert_close(out.loss, expected, rtol=rtol, atol=0)
    # and so do the gradients, through the double backward (compared as vectors: float32 noise in small entries)
    parameters = list(encoder.parameters())
    mine = torch.cat([g.flatten() for g in torch.autograd.grad(out.loss, parameters)])
    theirs = torch.cat([g.flatten() for g in torch.autograd.grad(expected, parameters)])
    assert (mine - theirs).norm() <= rtol * theirs.norm()


def test_the_unet_gets_the_float_timesteps_of_the_grid_and_never_sigma_one():
    unet, encoder = make_unet(3), make_encoder(3)
    seen = []
    forward = unet.forward

    def spy(sample, timestep, *args, **kwargs):
        seen.append(timestep)
        return forward(sample, timestep, *args, **kwargs)

    unet.forward = spy
    images = torch.rand(256, 3, 8, 8) * 2 - 1
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, num_train_timesteps=20)  # 19 levels: every one is drawn
    scorevae_loss(encoder, unet, scheduler, images, generator=torch.manual_seed(0))
    (timesteps,) = seen
    assert timesteps.dtype == torch.float32 and timesteps.shape == (256,)
    grid = FlowMatchEulerDiscreteScheduler(shift=3.0, num_train_timesteps=20).timesteps
    assert set(timesteps.tolist()) == set(grid.tolist()) - {20.0}  # σ = 1 (t = T) excluded


def test_training_grid():
    for scheduler_class in (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler):
        for shift in (1.0, 3.0):
            scheduler = scheduler_class(shift=shift)
            levels = training_timesteps(scheduler)
            assert levels.shape == (T - 1,) and levels.dtype == torch.float32
            torch.testing.assert_close(levels, flow_grid(shift) * T, rtol=0, atol=0)
            scheduler.set_timesteps(4)  # an inference grid on the scheduler does not change the training one
            torch.testing.assert_close(training_timesteps(scheduler), levels, rtol=0, atol=0)
            weight = loss_weight(scheduler, levels, "likelihood").double()
            torch.testing.assert_close(weight, likelihood_weight(levels.double() / T, shift), rtol=1e-3, atol=0)
            assert torch.equal(loss_weight(scheduler, levels, "simple"), torch.ones(T - 1))
    # VP schedulers keep their integer timesteps
    assert torch.equal(training_timesteps(DDPMScheduler(num_train_timesteps=10)), torch.arange(10))


def test_gradients_reach_every_encoder_parameter_and_no_unet_parameter():
    unet, encoder = make_unet(3), make_encoder(3, random_head=True)
    unet.requires_grad_(True)  # even if the caller forgot to freeze it, the prior runs under no_grad
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    out = scorevae_loss(
        encoder,
        unet,
        FlowMatchEulerDiscreteScheduler(),
        images,
        loss_weighting="likelihood",
        generator=torch.manual_seed(0),
    )
    out.loss.backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in unet.parameters())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_timestep_distribution_has_one_weight_per_flow_level():
    unet, encoder = make_unet(3), make_encoder(3)
    scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match=r"shape \(999,\)"):
        scorevae_loss(encoder, unet, scheduler, torch.rand(2, 3, 8, 8), timestep_distribution=torch.ones(1000))
    probs = torch.zeros(999)
    probs[-1] = 1.0  # only the noisiest level below σ = 1
    out = scorevae_loss(encoder, unet, scheduler, torch.rand(2, 3, 8, 8), timestep_distribution=probs)
    assert out.timesteps.tolist() == [999.0, 999.0]


# the closed-form Gaussian problem (docs/math.md §6) on the flow path


def exact_flow_unet(mean: float = M, std: float = S):
    """A tiny UNet2DModel whose forward is the exact velocity of N(mean, std² I) at per-sample float timesteps σ · T:
    v̂ = (x_σ − E[x_0 | x_σ]) / σ, E[x_0 | x_σ] = m + (1 − σ) s² (x_σ − (1 − σ) m) / ((1 − σ)² s² + σ²)."""
    unet = make_unet(1, sample_size=SHAPE[1])

    def forward(sample, timestep, *args, return_dict=True, **kwargs):
        sigma = (torch.as_tensor(timestep, dtype=torch.float64) / T).reshape(-1, 1, 1, 1)
        x = sample.double()
        expected = mean + (1 - sigma) * std**2 * (x - (1 - sigma) * mean) / ((1 - sigma) ** 2 * std**2 + sigma**2)
        out = ((x - expected) / sigma).float()
        return UNet2DOutput(sample=out) if return_dict else (out,)

    unet.forward = forward
    return unet


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("loss_weighting", ["simple", "likelihood"])
def test_exact_encoder_has_the_lowest_expected_flow_loss(loss_weighting, shift):
    """The canonical exact q(z | x_t) of §6, the encoder the VP tests use, minimises the flow objective too."""
    problem = GaussianProblem()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    unet = exact_flow_unet()
    data = (M + S * torch.randn(4096, *SHAPE, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)

    def expected_loss(encoder):
        # common random numbers: every variant sees the same σ, ε and ξ
        losses = [
            scorevae_loss(
                encoder, unet, scheduler, data, loss_weighting=loss_weighting, generator=torch.manual_seed(seed)
            ).loss.item()
            for seed in range(4)
        ]
        return sum(losses) / len(losses)

    exact = expected_loss(problem.exact_encoder())
    for kind in ("drift", "var_x2", "var_x0.5"):
        worse = expected_loss(perturbed(problem.exact_encoder(), kind, clean_log_snr=10.0))
        assert worse > exact, f"{kind}: {worse:.4f} <= exact {exact:.4f} ({loss_weighting}, shift {shift})"


def test_exact_encoder_explains_part_of_the_flow_prior_loss():
    problem = GaussianProblem()
    data = M + S * torch.randn(2048, *SHAPE, generator=torch.Generator().manual_seed(0))
    out = scorevae_loss(
        problem.exact_encoder(),
        exact_flow_unet(),
        FlowMatchEulerDiscreteScheduler(),
        data,
        generator=torch.manual_seed(0),
    )
    assert out.score_loss < out.prior_loss and out.kl > 0


# posterior_loss reads only the noise levels: the flow grid, the encoder at (x_σ / c, λ)


@pytest.mark.parametrize("loss_weighting", ["simple", "likelihood"])
def test_posterior_loss_on_the_flow_grid_equals_the_hand_written_computation(loss_weighting):
    teacher, student = make_encoder(1, latent_dim=8), make_encoder(1, latent_dim=8)
    torch.nn.init.normal_(teacher.proj_out.weight, std=0.1)
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    shift = 3.0
    out = posterior_loss(
        student,
        FlowMatchEulerDiscreteScheduler(shift=shift),
        images,
        teacher,
        loss_weighting=loss_weighting,
        generator=torch.manual_seed(2),
        clean_fraction=0.25,
    )
    generator = torch.manual_seed(2)
    index = torch.randint(0, T - 1, (6,), generator=generator)
    eps = torch.randn(6, 1, 8, 8, generator=generator)
    sigma = flow_grid(shift)[index]
    assert torch.equal(out.timesteps, sigma * T)
    s = sigma.reshape(-1, 1, 1, 1)
    x_vp = ((1 - s) * images[2:] + s * eps) / torch.sqrt((1 - s) ** 2 + s**2)
    log_snr = torch.cat([torch.full((2,), teacher.config.clean_log_snr), 2 * torch.log((1 - sigma) / sigma)])
    mean, logvar = student(torch.cat([images[:2], x_vp]), log_snr, return_dict=False)
    t_mean, t_logvar = teacher(images, teacher.config.clean_log_snr, return_dict=False)
    nll = 0.5 * ((t_logvar.exp() + (t_mean - mean) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(1)
    weight = torch.ones(8)
    if loss_weighting == "likelihood":  # the clean rows are weighted as the least noisy level, σ = flow_grid[0]
        weight = likelihood_weight(torch.cat([flow_grid(shift)[:1].expand(2), sigma]), shift)
    torch.testing.assert_close(out.loss, (weight * nll).mean(), rtol=1e-3, atol=0)


@pytest.mark.parametrize("loss_weighting", ["simple", "likelihood"])
def test_exact_posterior_has_the_lowest_expected_flow_posterior_loss(loss_weighting):
    problem = GaussianProblem()
    teacher = problem.exact_encoder()
    scheduler = FlowMatchEulerDiscreteScheduler()
    data = (M + S * torch.randn(8192, *SHAPE, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)

    def expected_loss(encoder):
        losses = [
            posterior_loss(
                encoder,
                scheduler,
                data,
                teacher,
                loss_weighting=loss_weighting,
                generator=torch.manual_seed(seed),
                clean_fraction=0.0,
            ).loss.item()
            for seed in range(4)
        ]
        return sum(losses) / len(losses)

    exact = expected_loss(exact_student(problem))
    for kind in ("drift", "var_x2", "var_x0.5"):
        worse = expected_loss(perturbed(exact_student(problem), kind, clean_log_snr=CLEAN_LOG_SNR + 1))
        assert worse > exact, f"{kind}: {worse:.4f} <= exact {exact:.4f} ({loss_weighting})"
