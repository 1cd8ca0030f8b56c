"""The ScoreVAE encoder objectives.

- `scorevae_loss` (docs/math.md §5): denoising score matching of the conditional score
  ∇ log p(x_t | z) ≈ s_θ(x_t, t) + ∇_{x_t} log q_φ(z | x_t, λ_t), with the prior s_θ frozen, plus β · KL.
- `posterior_loss` (docs/math.md §8): maximum likelihood of a frozen teacher's codes under q_φ(z | x_t, λ_t), the way
  classifier guidance fits its noisy classifier. No UNet and no double backward.

Both take VP (DDPM-family) priors and flow-matching ones (docs/math.md §10): the noise levels are drawn from the
prior's training levels (`training_timesteps`), and the encoder always sees the VP-scaled sample and its log-SNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .models import BetaVAE, ScoreVAEEncoder
from .noise import (
    append_dims,
    continuous_noise_rate,
    finite_log_snr,
    flow_sigma,
    flow_to_vp,
    gaussian_log_prob,
    guide_epsilon,
    is_flow_scheduler,
    kl_to_standard_normal,
    log_snr_from_alphas_cumprod,
    model_output_to_epsilon,
    training_alpha_sigma,
    velocity_to_epsilon,
)

LOSS_WEIGHTINGS = ("simple", "likelihood")


@dataclass
class ScoreVAELossOutput(BaseOutput):
    """
    Output of [`scorevae_loss`].

    Args:
        loss (`torch.Tensor`, scalar):
            The objective to minimise: mean over the batch of `score_loss + beta * kl` (importance-weighted when a
            `timestep_distribution` is given).
        score_loss (`torch.Tensor`, scalar):
            Batch mean of ½ · w(t) · ‖ε̂ − σ_t ∇ log q − ε‖² (summed over pixels), in nats per image.
        kl (`torch.Tensor`, scalar):
            Batch mean of KL(q_φ(z | x_0) ‖ N(0, I)) (summed over latent dimensions), in nats per image.
        prior_loss (`torch.Tensor`, scalar):
            The same weighted denoising loss of the prior alone (no encoder term) on the same draws, for logging:
            `prior_loss − score_loss` is how much the encoder explains.
        timesteps (`torch.Tensor` of shape `(batch_size,)`):
            The training timesteps drawn: integers for a VP prior, the float timesteps σ · T for a flow prior.
    """

    loss: torch.Tensor
    score_loss: torch.Tensor
    kl: torch.Tensor
    prior_loss: torch.Tensor
    timesteps: torch.Tensor


def training_timesteps(noise_scheduler) -> torch.Tensor:
    """The training levels the objectives draw from, as the timesteps the prior's UNet is called with, from the least
    noisy to the noisiest.

    - A VP (DDPM-family) scheduler: the integer timesteps 0 … T − 1 of its `alphas_cumprod` (T of them).
    - A flow-matching scheduler ([`~noise.is_flow_scheduler`], e.g. `FlowMatchEulerDiscreteScheduler`): the float
      timesteps σ · T of its training grid, the `sigmas` table of a fresh instance built from its config (so a
      `set_timesteps` call on `noise_scheduler` does not change it; with `shift`, σ = shift·s / (1 + (shift − 1) s) at
      s = k / T, k = 1 … T), without σ = 1 exactly: there x_σ is pure noise, λ = −∞, and the encoder has no finite
      log-SNR to be evaluated at (T − 1 levels).
    """
    if not is_flow_scheduler(noise_scheduler):
        return torch.arange(len(noise_scheduler.alphas_cumprod))
    sigmas, timesteps = _flow_training_grid(noise_scheduler)
    return timesteps[sigmas < 1]


def _flow_training_grid(noise_scheduler) -> tuple[torch.Tensor, torch.Tensor]:
    # the (sigmas, timesteps) tables of a fresh instance (training grid, σ = 1 included), least noisy first, float32
    fresh = type(noise_scheduler).from_config(noise_scheduler.config)
    sigmas, timesteps = torch.as_tensor(fresh.sigmas).float(), torch.as_tensor(fresh.timesteps).float()
    order = torch.argsort(sigmas)
    return sigmas[order], timesteps[order]


def draw_timesteps(
    noise_scheduler,
    batch_size: int,
    device,
    generator: torch.Generator | None = None,
    timestep_distribution: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training timesteps `(batch_size,)` drawn uniformly from the prior's training levels ([`training_timesteps`]:
    integers for VP schedulers, floats σ · T for flow ones), or with probabilities ∝ `timestep_distribution` (one per
    level), and their importance weights 1 / (N · p(t)) over the N levels (all ones for uniform draws)."""
    levels = training_timesteps(noise_scheduler)
    num_levels = len(levels)
    rng_device = generator.device if generator is not None else device
    if timestep_distribution is None:
        index = torch.randint(0, num_levels, (batch_size,), generator=generator, device=rng_device)
        return levels.to(device)[index.to(device)], torch.ones(batch_size, device=device)
    probs = torch.as_tensor(timestep_distribution, dtype=torch.float64)
    if probs.shape != (num_levels,) or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(
            f"timestep_distribution must be non-negative weights of shape ({num_levels},), one per training level of "
            f"the {type(noise_scheduler).__name__} (`training_timesteps`), got shape {tuple(probs.shape)}."
        )
    probs = probs.cpu() / probs.sum()
    index = torch.multinomial(probs.to(rng_device), batch_size, replacement=True, generator=generator)
    importance = (1.0 / (num_levels * probs[index.cpu()])).float().to(device)
    return levels.to(device)[index.to(device)], importance


def loss_weight(noise_scheduler, timesteps: torch.Tensor, loss_weighting: str) -> torch.Tensor:
    """w(t) of docs/math.md §5: 1 for "simple" (λ(t) = σ_t²), g(t)²/σ_t² for "likelihood" (the ELBO weighting).

    For any Gaussian path x_t = a_t x_0 + b_t ε, g² = d b²/dt − 2 (d log a / dt) b² = −b² dλ/dt, so the likelihood
    weight is the rate of log-SNR, g²/b² = −dλ/ds, in the time s ∈ (0, 1] on whose uniform grid the levels are drawn;
    both families then estimate the same ∫ ½ ‖ε̂_cond − ε‖² dλ.

    - VP: g(s)² = β(s) from the schedule's table ([`~noise.continuous_noise_rate`]) over σ_t² = 1 − ᾱ_t.
    - Flow (x_σ = (1 − σ) x_0 + σ ε, λ = 2 log((1 − σ) / σ), `timesteps` = σ · T):

          w = −dλ/dσ · dσ/ds = 2 / (σ (1 − σ)) · dσ/ds

      with dσ/ds the slope of the training grid σ(s) at s = k / T, from second-order finite differences of the
      scheduler's own table (for diffusers' `shift` grid dσ/ds = (shift − (shift − 1) σ)² / shift, 1 at shift 1; the
      differences match it to the table's float32 rounding, ~1e-4 relative). Infinite at σ = 1, which
      [`training_timesteps`] excludes.
    """
    if loss_weighting == "simple":
        return torch.ones(timesteps.shape, device=timesteps.device)
    if loss_weighting != "likelihood":
        raise ValueError(f"loss_weighting {loss_weighting!r} is not supported; choose one of {LOSS_WEIGHTINGS}.")
    if is_flow_scheduler(noise_scheduler):
        sigma = flow_sigma(noise_scheduler, timesteps)
        table = _flow_training_grid(noise_scheduler)[0].double()
        (slope,) = torch.gradient(table, spacing=1.0 / len(table), edge_order=2)
        slope = torch.from_numpy(np.interp(sigma.numpy(), table.numpy(), slope.numpy()))
        return (2 / (sigma * (1 - sigma)) * slope).float().to(timesteps.device)
    _, sigma = training_alpha_sigma(noise_scheduler, timesteps)
    return continuous_noise_rate(noise_scheduler, timesteps) / sigma**2


def noisy_images(
    noise_scheduler, clean_images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training images noised at `timesteps` (from [`draw_timesteps`]), as the prior's UNet sees them and as the
    canonical encoder sees them: `(sample, vp_sample, log_snr, alpha, sigma)`, the last three float32 `[B]` on the
    images' device (α_t, σ_t of the VP-scaled `vp_sample`).

    - VP: sample = vp_sample = α_t x_0 + σ_t ε, λ_t = log(ᾱ_t / (1 − ᾱ_t)).
    - Flow (docs/math.md §10): sample = x_σ = (1 − σ) x_0 + σ ε at σ = t / T, and vp_sample = x_σ / c = α x_0 + σ_vp ε
      (the same ε) with c = √((1 − σ)² + σ²), α = (1 − σ) / c, σ_vp = σ / c, λ = 2 log((1 − σ) / σ).
    """
    device = clean_images.device
    if is_flow_scheduler(noise_scheduler):
        flow = flow_sigma(noise_scheduler, timesteps)
        level = append_dims(flow.to(device, torch.float32), clean_images.ndim)
        sample = (1 - level) * clean_images + level * noise
        vp_sample, log_snr, alpha, sigma = flow_to_vp(sample, flow)
        return sample, vp_sample, *(v.to(device, torch.float32) for v in (log_snr, alpha, sigma))
    alpha, sigma = training_alpha_sigma(noise_scheduler, timesteps)
    sample = append_dims(alpha, clean_images.ndim) * clean_images + append_dims(sigma, clean_images.ndim) * noise
    alphas_cumprod = torch.as_tensor(noise_scheduler.alphas_cumprod).to(device)
    log_snr = log_snr_from_alphas_cumprod(alphas_cumprod[timesteps]).float()
    return sample, sample, log_snr, alpha, sigma


@dataclass
class PosteriorLossOutput(BaseOutput):
    """
    Output of [`posterior_loss`].

    Args:
        loss (`torch.Tensor`, scalar):
            The objective to minimise: the batch mean of w(t) · E_{z ~ q_T(z | x_0)}[−log q_φ(z | x_t, λ_t)]
            (importance-weighted when a `timestep_distribution` is given), in nats per image.
        nll (`torch.Tensor`, scalar):
            The unweighted batch mean of E_z[−log q_φ(z | x_t, λ_t)] (nats per image), for logging. It is bounded below
            by the teacher's conditional entropy `teacher_entropy` (reached only at the clean level).
        clean_nll (`torch.Tensor`, scalar):
            The mean of E_z[−log q_φ(z | x_0, λ_clean)] over the images encoded at the clean level (NaN when there
            are none); minus `teacher_entropy`, it is KL(q_T(z | x_0) ‖ q_φ(z | x_0, λ_clean)).
        teacher_kl (`torch.Tensor`, scalar):
            Batch mean of KL(q_T(z | x_0) ‖ N(0, I)): the rate of the teacher's codes, in nats per image.
        teacher_entropy (`torch.Tensor`, scalar):
            Batch mean of the entropy of q_T(z | x_0), in nats per image.
        timesteps (`torch.Tensor` of shape `(batch_size - num_clean,)`):
            The training timesteps drawn for the images after the first `num_clean`, which are at the clean level.
    """

    loss: torch.Tensor
    nll: torch.Tensor
    clean_nll: torch.Tensor
    teacher_kl: torch.Tensor
    teacher_entropy: torch.Tensor
    timesteps: torch.Tensor


def _unwrap(module):
    # accelerate / DDP wrap the encoder; its config lives on the inner module
    return getattr(module, "module", module)


def scorevae_loss(
    encoder,
    unet,
    noise_scheduler,
    clean_images: torch.Tensor,
    beta: float = 0.01,
    loss_weighting: str = "simple",
    generator: torch.Generator | None = None,
    timestep_distribution: torch.Tensor | None = None,
) -> ScoreVAELossOutput:
    r"""
    The ScoreVAE training objective for one batch (docs/math.md §5). Only the encoder receives gradients.

        z      = μ_φ(x_0, λ_clean) + exp(ℓ_φ(x_0, λ_clean)/2) · ξ          (reparameterised)
        t ~ U{0..T−1},  ε ~ N(0, I),  x_t = α_t x_0 + σ_t ε
        g      = ∇_{x_t} log q_φ(z | x_t, λ_t)                          (create_graph=True: double backward)
        ε̂      = UNet(x_t, t) under no_grad, as a noise prediction
        L      = mean_batch[ ½ w(t) ‖ε̂ − σ_t g − ε‖² + β · KL(q_φ(z | x_0) ‖ N(0, I)) ]

    The encoder runs once on the concatenation [x_0; x_t] (one forward, so DistributedDataParallel sees one call).

    With a flow-matching prior (a `FlowMatchEulerDiscreteScheduler`, ...; docs/math.md §10) the same loss is taken in
    ε-space, and the encoder is the same canonical object, called with the VP-scaled sample and λ:

        σ ~ U(training grid without σ = 1) (`training_timesteps`),  x_σ = (1 − σ) x_0 + σ ε
        v̂      = UNet(x_σ, σ · T) under no_grad (a float timestep), ε̂ = x_σ + (1 − σ) v̂
        x_vp   = x_σ / c = α x_0 + σ_vp ε,  c = √((1 − σ)² + σ²),  λ = 2 log((1 − σ) / σ)
        g      = ∇_{x_vp} log q_φ(z | x_vp, λ)
        L      = mean_batch[ ½ w ‖ε̂ − σ_vp g − ε‖² + β · KL ]

    σ = 1 is never drawn: x_σ is pure noise there and λ = −∞. w = 1 ("simple") is the VP form; "likelihood" is
    −dλ/ds = 2 / (σ (1 − σ)) · dσ/ds, the flow path's g²/σ² ([`loss_weight`]).

    Args:
        encoder ([`ScoreVAEEncoder`], possibly wrapped by accelerate/DDP):
            The encoder being trained.
        unet ([`UNet2DModel`]):
            The frozen prior. It runs under `torch.no_grad()` and never enters the autograd graph; it may be half
            precision.
        noise_scheduler ([`SchedulerMixin`]):
            The prior's training scheduler: a VP one (its `alphas_cumprod` and `config.prediction_type` are used) or a
            flow-matching one (its training grid of σ, from its config, and `config.num_train_timesteps`).
        clean_images (`torch.Tensor` of shape `(batch_size, C, H, W)`):
            Training images in model space, [-1, 1].
        beta (`float`, *optional*, defaults to 0.01):
            Weight of the KL term (the paper's β; sums over pixels and latent dims keep its meaning).
        loss_weighting (`str`, *optional*, defaults to `"simple"`):
            `"simple"` (w = 1) or `"likelihood"` (w = g(t)²/σ_t² = −dλ/ds, see [`loss_weight`]).
        generator (`torch.Generator`, *optional*):
            Source of all randomness (ξ, t, ε); makes the loss deterministic.
        timestep_distribution (`torch.Tensor` of shape `(num_levels,)`, *optional*):
            Draw t with these probabilities, one per level of [`training_timesteps`] (T for VP schedulers, T − 1 for
            flow ones), instead of uniformly; each term is weighted by 1 / (num_levels · p(t)), so the objective's
            expectation is unchanged (importance sampling).

    Returns:
        [`ScoreVAELossOutput`]: `.loss` to backpropagate, plus its parts for logging.
    """
    if clean_images.ndim != 4:
        raise ValueError(f"clean_images has shape {tuple(clean_images.shape)}; expected (batch_size, C, H, W).")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}.")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting {loss_weighting!r} is not supported; choose one of {LOSS_WEIGHTINGS}.")
    config = _unwrap(encoder).config
    device = clean_images.device
    batch_size = clean_images.shape[0]
    clean_images = clean_images.float()

    # 1. draw the timesteps and the noise (all randomness from `generator`)
    timesteps, importance = draw_timesteps(noise_scheduler, batch_size, device, generator, timestep_distribution)
    latent_noise = randn_tensor((batch_size, config.latent_dim), generator=generator, device=device)
    noise = randn_tensor(clean_images.shape, generator=generator, device=device)
    sample, vp_sample, noisy_log_snr, alpha, sigma = noisy_images(noise_scheduler, clean_images, noise, timesteps)

    # 2. the prior's noise prediction ε̂, frozen
    with torch.no_grad():
        model_output = unet(sample.to(unet.dtype), timesteps).sample.float()
        if is_flow_scheduler(noise_scheduler):  # a velocity v̂ ≈ ε − x_0 at x_σ
            epsilon = velocity_to_epsilon(model_output, sample, flow_sigma(noise_scheduler, timesteps))
        else:
            prediction_type = getattr(noise_scheduler.config, "prediction_type", "epsilon")
            epsilon = model_output_to_epsilon(
                model_output[:, : clean_images.shape[1]], sample, alpha, sigma, prediction_type
            )

    # 3. one encoder forward on [x_0; x_t] (x_t VP-scaled): the posterior at the clean level and q(z | x_t, λ_t)
    log_snr = torch.cat(
        [torch.full((batch_size,), float(config.clean_log_snr), device=device), finite_log_snr(noisy_log_snr)]
    )
    noisy_input = vp_sample.detach().requires_grad_(True)
    mean, logvar = encoder(torch.cat([clean_images, noisy_input]), log_snr, return_dict=False)
    mean, logvar = mean.float(), logvar.float()
    clean_mean, clean_logvar = mean[:batch_size], logvar[:batch_size]
    z = clean_mean + torch.exp(0.5 * clean_logvar) * latent_noise
    log_q = gaussian_log_prob(z, mean[batch_size:], logvar[batch_size:])
    (score,) = torch.autograd.grad(log_q.sum(), noisy_input, create_graph=True)

    # 4. weighted score matching in ε-space + β KL
    weight = loss_weight(noise_scheduler, timesteps, loss_weighting) * importance
    residual = guide_epsilon(epsilon, score, sigma, noisy_log_snr, 1.0) - noise  # the decode's own rule (§3)
    score_loss = 0.5 * weight * residual.pow(2).flatten(1).sum(dim=1)
    prior_loss = 0.5 * weight * (epsilon - noise).pow(2).flatten(1).sum(dim=1)
    kl = kl_to_standard_normal(clean_mean, clean_logvar)
    loss = (score_loss + beta * kl).mean()
    return ScoreVAELossOutput(
        loss=loss,
        score_loss=score_loss.mean().detach(),
        kl=kl.mean().detach(),
        prior_loss=prior_loss.mean().detach(),
        timesteps=timesteps,
    )


def teacher_posterior(teacher, clean_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's q_T(z | x_0) as `(mean, logvar)` in float32, without gradients: a [`ScoreVAEEncoder`] at its clean
    level, or a [`BetaVAE`]'s encoder."""
    teacher = _unwrap(teacher)
    with torch.no_grad():
        if isinstance(teacher, BetaVAE):
            mean, logvar = teacher.encode(clean_images.to(teacher.dtype))
        elif isinstance(teacher, ScoreVAEEncoder):
            mean, logvar = teacher(clean_images, float(teacher.config.clean_log_snr), return_dict=False)
        else:
            raise TypeError(
                f"teacher is a {type(teacher).__name__}; expected a ScoreVAEEncoder (encoded at its clean level) or a "
                "BetaVAE (its encoder)."
            )
    return mean.float(), logvar.float()


def posterior_loss(
    encoder,
    noise_scheduler,
    clean_images: torch.Tensor,
    teacher,
    loss_weighting: str = "simple",
    generator: torch.Generator | None = None,
    timestep_distribution: torch.Tensor | None = None,
    clean_fraction: float = 0.125,
) -> PosteriorLossOutput:
    r"""
    The posterior-matching objective for one batch (docs/math.md §8): fit q_φ(z | x_t, λ_t) to the posterior of a
    frozen teacher's code given the noisy image, p(z | x_t) = ∫ q_T(z | x_0) p(x_0 | x_t) dx_0, by maximum likelihood.

        t ~ U(training levels) (or `timestep_distribution`),  ε ~ N(0, I),  x_t = α_t x_0 + σ_t ε
        (μ_T, ℓ_T) = teacher(x_0)                              (no gradient)
        (μ, ℓ)     = encoder(x_t, λ_t)
        L = mean_batch[ w(t) · E_{z ~ N(μ_T, e^ℓ_T)}[−log N(z; μ, e^ℓ)] ]
          = mean_batch[ w(t) · ½ Σ_k ((e^ℓ_T,k + (μ_T,k − μ_k)²) e^−ℓ_k + ℓ_k + log 2π) ]

    The expectation over z ~ q_T(z | x_0) is taken in closed form (both are Gaussian): the same objective and the same
    expected gradient as drawing z, with less variance. Cross-entropy is minimised by the true conditional, so for
    every t and every w(t) > 0 the minimiser over all densities is p(z | x_t); in docs/math.md §6's Gaussian case that
    is the exact q(z | x_t) given there. Decoding with the fitted encoder samples p(x_0 | z) ∝ p(x_0) q_T(z | x_0).

    The code of an image is what the encoder gives at its clean level, q_φ(z | x_0, λ_clean) (what
    `ScoreVAEPipeline.encode` uses). Its minimiser is the teacher itself, and it must stay there: the first
    ⌈clean_fraction · batch_size⌉ images of the batch are encoded at the clean level (no noise, weighted as the least
    noisy training level) instead of at a drawn t. Without them the clean level drifts away from the teacher as the
    noisy levels are fitted.

    No UNet runs: only the prior's noise levels are read ([`training_timesteps`]), so the objective is the same for a
    VP and a flow-matching prior. With a flow scheduler t stands for σ on its training grid (σ = 1 excluded) and the
    encoder sees x_t VP-scaled, x_σ / c = α x_0 + σ_vp ε at λ = 2 log((1 − σ) / σ) (docs/math.md §10), as in
    [`scorevae_loss`]. One encoder forward and one (single) backward per image.

    Args:
        encoder ([`ScoreVAEEncoder`], possibly wrapped by accelerate/DDP):
            The encoder being trained, q_φ(z | x_t, λ).
        noise_scheduler ([`SchedulerMixin`]):
            The prior's training scheduler: a VP one (its `alphas_cumprod`) or a flow-matching one (its σ grid).
        clean_images (`torch.Tensor` of shape `(batch_size, C, H, W)`):
            Training images in model space, [-1, 1].
        teacher ([`ScoreVAEEncoder`] or [`BetaVAE`]):
            The frozen encoder of clean images q_T(z | x_0): a `ScoreVAEEncoder` at its `clean_log_snr`, or the encoder
            of a `BetaVAE`. It runs under `torch.no_grad()` and receives no gradient. Its latent dimension must be the
            encoder's.
        loss_weighting (`str`, *optional*, defaults to `"simple"`):
            `"simple"` (w = 1) or `"likelihood"` (w = g(t)²/σ_t² = −dλ/ds, as in [`scorevae_loss`]).
        generator (`torch.Generator`, *optional*):
            Source of all randomness (t, ε); makes the loss deterministic.
        timestep_distribution (`torch.Tensor` of shape `(num_levels,)`, *optional*):
            Draw t with these probabilities, one per level of [`training_timesteps`], instead of uniformly; each term
            is weighted by 1 / (num_levels · p(t)), so the objective's expectation is unchanged (importance sampling).
        clean_fraction (`float`, *optional*, defaults to 0.125):
            Share of the batch (rounded up) encoded at the encoder's clean level, fitted to the teacher's q_T(z | x_0)
            itself; 0 fits the noisy levels only.

    Returns:
        [`PosteriorLossOutput`]: `.loss` to backpropagate, plus parts for logging.
    """
    if clean_images.ndim != 4:
        raise ValueError(f"clean_images has shape {tuple(clean_images.shape)}; expected (batch_size, C, H, W).")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting {loss_weighting!r} is not supported; choose one of {LOSS_WEIGHTINGS}.")
    if not 0 <= clean_fraction < 1:
        raise ValueError(f"clean_fraction must be in [0, 1), got {clean_fraction}.")
    device = clean_images.device
    batch_size = clean_images.shape[0]
    num_clean = math.ceil(clean_fraction * batch_size)
    if num_clean >= batch_size:
        raise ValueError(
            f"clean_fraction {clean_fraction} leaves no noisy image in a batch of {batch_size}; lower it or use a "
            "larger batch."
        )
    clean_images = clean_images.float()

    # 1. the teacher's code distribution q_T(z | x_0), frozen
    teacher_mean, teacher_logvar = teacher_posterior(teacher, clean_images)
    latent_dim = _unwrap(encoder).config.latent_dim
    if teacher_mean.shape != (batch_size, latent_dim):
        raise ValueError(
            f"teacher gives codes of shape {tuple(teacher_mean.shape)}; the encoder's latent_dim is {latent_dim}."
        )

    # 2. timesteps and noise for the images after the first `num_clean` (all randomness from `generator`); the
    #    encoder sees x_t VP-scaled, whatever the prior's family
    num_noisy = batch_size - num_clean
    timesteps, importance = draw_timesteps(noise_scheduler, num_noisy, device, generator, timestep_distribution)
    noise = randn_tensor((num_noisy, *clean_images.shape[1:]), generator=generator, device=device)
    _, vp_sample, noisy_log_snr, _, _ = noisy_images(noise_scheduler, clean_images[num_clean:], noise, timesteps)
    clean_log_snr = float(_unwrap(encoder).config.clean_log_snr)
    log_snr = torch.cat([torch.full((num_clean,), clean_log_snr, device=device), noisy_log_snr])
    # the clean rows are the limit t -> 0: weighted as the least noisy training level
    first = training_timesteps(noise_scheduler)[:1].to(device).repeat(num_clean)
    weight = torch.cat(
        [
            loss_weight(noise_scheduler, first, loss_weighting),
            loss_weight(noise_scheduler, timesteps, loss_weighting) * importance,
        ]
    )

    # 3. q_φ(z | x, λ) on [x_0 (first num_clean); x_t (the rest)], one forward, and the expected negative
    #    log-likelihood of the teacher's codes under it
    mean, logvar = encoder(torch.cat([clean_images[:num_clean], vp_sample]), log_snr, return_dict=False)
    mean, logvar = mean.float(), logvar.float()
    nll = 0.5 * (
        ((teacher_logvar.exp() + (teacher_mean - mean) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi))
    ).sum(dim=1)
    teacher_entropy = 0.5 * (teacher_logvar + 1 + math.log(2 * math.pi)).sum(dim=1)
    return PosteriorLossOutput(
        loss=(weight * nll).mean(),
        nll=nll.mean().detach(),
        clean_nll=nll[:num_clean].mean().detach(),
        teacher_kl=kl_to_standard_normal(teacher_mean, teacher_logvar).mean(),
        teacher_entropy=teacher_entropy.mean(),
        timesteps=timesteps,
    )
