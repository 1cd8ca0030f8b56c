"""posterior_loss (docs/math.md §8): in the closed-form Gaussian problem the exact q(z | x_t) of the teacher's codes
minimises it; the clean level is fitted to the teacher itself; gradients reach the encoder and never the teacher;
randomness comes from the generator; bad arguments are errors."""

import math

import pytest
import torch
from conftest import make_encoder
from diffusers import DDPMScheduler
from test_closed_form import S0, D, GaussianProblem, M, S, exact_encoder
from test_training import perturbed

from diffusers_scorevae import BetaVAE, posterior_loss
from diffusers_scorevae.noise import alpha_sigma_from_log_snr
from diffusers_scorevae.training import loss_weight

CLEAN_LOG_SNR = 10.0


def exact_student(problem):
    """The exact posterior of the teacher's code given x_t. The teacher (problem.exact_encoder() at its clean level)
    is N(A x_0 + b, (c_clean + s_0²) I) with c_clean = Cov[x_0 | x_clean]; given x_t the code is
    N(A E[x_0 | x_t] + b, (c_t + c_clean + s_0²) I)."""
    alpha, sigma = alpha_sigma_from_log_snr(torch.tensor(CLEAN_LOG_SNR, dtype=torch.float64))
    c_clean = (S**2 - alpha**2 * S**4 / (alpha**2 * S**2 + sigma**2)).item()
    b = problem.b + problem.A @ torch.full((D,), M, dtype=torch.float64)
    return exact_encoder(problem.A, b, 1.0, math.sqrt(S0**2 + c_clean))


@pytest.mark.parametrize("loss_weighting", ["simple", "likelihood"])
def test_exact_posterior_has_the_lowest_expected_loss(loss_weighting):
    problem = GaussianProblem()
    teacher = problem.exact_encoder()
    scheduler = DDPMScheduler(clip_sample=False)
    data = (M + S * torch.randn(8192, 1, 4, 4, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)

    def expected_loss(encoder):
        # common random numbers: every variant sees the same t and ε
        losses = [
            posterior_loss(
                encoder,
                scheduler,
                data,
                teacher,
                loss_weighting=loss_weighting,
                generator=torch.manual_seed(s),
                clean_fraction=0.0,  # the noisy levels only (the clean level: test_clean_level_is_the_teacher)
            ).loss.item()
            for s in range(4)
        ]
        return sum(losses) / len(losses)

    exact = expected_loss(exact_student(problem))
    for kind in ("drift", "var_x2", "var_x0.5"):
        worse = expected_loss(perturbed(exact_student(problem), kind, clean_log_snr=CLEAN_LOG_SNR + 1))
        assert worse > exact, f"{kind}: {worse:.4f} <= exact {exact:.4f} ({loss_weighting})"


def test_expectation_over_the_teachers_codes_is_exact():
    """The loss takes E_{z ~ q_T}[−log q_φ(z | x_t)] in closed form: it equals the average of sampled codes' NLL."""
    problem = GaussianProblem()
    teacher, student = problem.exact_encoder(), perturbed(exact_student(problem), "drift", CLEAN_LOG_SNR + 1)
    scheduler = DDPMScheduler(clip_sample=False)
    data = M + S * torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = posterior_loss(
        student, scheduler, data, teacher, generator=torch.Generator().manual_seed(0), clean_fraction=0.0
    )
    # rebuild x_t from the same draws and average −log q over many sampled codes
    generator = torch.Generator().manual_seed(0)
    timesteps = torch.randint(0, 1000, (16,), generator=generator)
    noise = torch.randn(data.shape, generator=generator)
    assert torch.equal(timesteps, out.timesteps)
    alpha, sigma = alpha_sigma_from_log_snr(
        torch.log(scheduler.alphas_cumprod[timesteps] / (1 - scheduler.alphas_cumprod[timesteps])).double()
    )
    noisy = alpha.float().reshape(-1, 1, 1, 1) * data + sigma.float().reshape(-1, 1, 1, 1) * noise
    log_snr = torch.log(scheduler.alphas_cumprod[timesteps] / (1 - scheduler.alphas_cumprod[timesteps]))
    mean, logvar = student(noisy, log_snr, return_dict=False)
    t_mean, t_logvar = teacher(data, CLEAN_LOG_SNR, return_dict=False)
    xi = torch.randn(20000, *t_mean.shape, generator=torch.Generator().manual_seed(5))
    z = t_mean + torch.exp(0.5 * t_logvar) * xi
    nll = 0.5 * ((z - mean) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1).mean(0)
    torch.testing.assert_close(out.loss, nll.mean(), rtol=2e-3, atol=0)


@pytest.mark.parametrize("teacher_kind", ["scorevae_encoder", "beta_vae"])
@pytest.mark.parametrize("loss_weighting", ["simple", "likelihood"])
def test_gradients_reach_the_encoder_and_not_the_teacher(teacher_kind, loss_weighting):
    encoder = make_encoder(1, sample_size=8, latent_dim=8)
    if teacher_kind == "beta_vae":
        torch.manual_seed(0)
        teacher = BetaVAE(sample_size=8, in_channels=1, latent_dim=8, block_out_channels=(8, 16), norm_num_groups=4)
        torch.nn.init.normal_(teacher.encoder.proj_out.weight, std=0.05)
    else:
        teacher = make_encoder(1, sample_size=8, latent_dim=8)
        torch.nn.init.normal_(teacher.proj_out.weight, std=0.1)
    # even if the caller forgot to freeze it, the teacher runs under no_grad
    teacher.requires_grad_(True)
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    out = posterior_loss(
        encoder, DDPMScheduler(), images, teacher, loss_weighting=loss_weighting, generator=torch.manual_seed(0)
    )
    out.loss.backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.teacher_kl > 0 and out.nll.requires_grad is False


def test_weighting_and_importance_sampling():
    encoder, teacher = make_encoder(1, latent_dim=8), make_encoder(1, latent_dim=8)
    torch.nn.init.normal_(teacher.proj_out.weight, std=0.1)
    scheduler = DDPMScheduler()
    images = torch.rand(4096, 1, 8, 8) * 2 - 1
    simple = posterior_loss(encoder, scheduler, images, teacher, generator=torch.manual_seed(0))
    torch.testing.assert_close(simple.loss, simple.nll)  # w = 1
    likelihood = posterior_loss(
        encoder, scheduler, images, teacher, loss_weighting="likelihood", generator=torch.manual_seed(0)
    )
    assert not torch.allclose(likelihood.loss, likelihood.nll)
    # drawing t ∝ p(t) and weighting by 1/(T p(t)) estimates the same objective as uniform t
    probs = torch.linspace(1, 10, 1000)
    weighted = posterior_loss(
        encoder, scheduler, images, teacher, generator=torch.manual_seed(0), timestep_distribution=probs
    )
    assert abs(weighted.loss.item() - simple.loss.item()) / simple.loss.item() < 0.05
    assert weighted.timesteps.float().mean() > simple.timesteps.float().mean() + 100  # late t drawn more often
    assert simple.timesteps.shape == (4096 - 512,)  # the first 12.5% are at the clean level
    assert torch.equal(loss_weight(scheduler, simple.timesteps, "simple"), torch.ones(4096 - 512))


def test_clean_level_is_the_teacher():
    """The first ⌈clean_fraction · B⌉ images are encoded at the clean level, where the minimiser is the teacher itself:
    a student equal to the teacher there has clean_nll = the teacher's entropy, one that drifted has more."""
    teacher = make_encoder(1, latent_dim=8)
    torch.nn.init.normal_(teacher.proj_out.weight, std=0.1)
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    out = posterior_loss(
        teacher, DDPMScheduler(), images, teacher, generator=torch.manual_seed(0), clean_fraction=0.25
    )
    assert out.timesteps.shape == (12,)
    torch.testing.assert_close(out.clean_nll, _mean_entropy(teacher, images[:4]), rtol=1e-5, atol=1e-5)
    drifted = make_encoder(1, latent_dim=8)
    drifted.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        drifted.proj_out.bias[8:] += 1.0  # a broader code distribution at every level
    worse = posterior_loss(
        drifted, DDPMScheduler(), images, teacher, generator=torch.manual_seed(0), clean_fraction=0.25
    )

    assert worse.clean_nll > out.clean_nll + 1
    with pytest.raises(ValueError, match="clean_fraction"):
        posterior_loss(teacher, DDPMScheduler(), images, teacher, clean_fraction=1.0)
    with pytest.raises(ValueError, match="clean_fraction"):
        posterior_loss(teacher, DDPMScheduler(), images[:1], teacher, clean_fraction=0.5)


def _mean_entropy(teacher, images):
    with torch.no_grad():
        _, logvar = teacher(images, teacher.config.clean_log_snr, return_dict=False)
    return (0.5 * (logvar + 1 + math.log(2 * math.pi)).sum(dim=1)).mean()


def test_all_randomness_comes_from_the_generator():
    encoder, teacher = make_encoder(1, latent_dim=8), make_encoder(1, latent_dim=8)
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    a = posterior_loss(encoder, DDPMScheduler(), images, teacher, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG must not matter
    b = posterior_loss(encoder, DDPMScheduler(), images, teacher, generator=torch.Generator().manual_seed(3))
    c = posterior_loss(encoder, DDPMScheduler(), images, teacher, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.timesteps, b.timesteps)
    assert not torch.equal(a.loss, c.loss)


def test_bad_arguments():
    encoder, teacher = make_encoder(1, latent_dim=8), make_encoder(1, latent_dim=8)
    images = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="loss_weighting"):
        posterior_loss(encoder, DDPMScheduler(), images, teacher, loss_weighting="snr")
    with pytest.raises(ValueError, match="clean_images"):
        posterior_loss(encoder, DDPMScheduler(), images[0], teacher)
    with pytest.raises(ValueError, match="timestep_distribution"):
        posterior_loss(encoder, DDPMScheduler(), images, teacher, timestep_distribution=torch.ones(10))
    with pytest.raises(ValueError, match="latent_dim"):
        posterior_loss(encoder, DDPMScheduler(), images, make_encoder(1, latent_dim=4))
    with pytest.raises(TypeError, match="teacher"):
        posterior_loss(encoder, DDPMScheduler(), images, torch.nn.Linear(2, 2))
