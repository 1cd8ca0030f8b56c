"""The ScoreVAE encoder objectives.

- `scorevae_loss` (docs/math.md §5): denoising score matching of the conditional score
  ∇ log p(x_t | z) ≈ s_θ(x_t, t) + ∇_{x_t} log q_φ(z | x_t, λ_t), with the prior s_θ frozen, plus β · KL.
- `posterior_loss` (docs/math.md §8): maximum likelihood of a frozen teacher's codes under q_φ(z | x_t, λ_t), the way
  classifier guidance fits its noisy classifier. No UNet and no double backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .models import BetaVAE, ScoreVAEEncoder
from .noise import (
    append_dims,
    continuous_noise_rate,
    finite_log_snr,
    gaussian_log_prob,
    guide_epsilon,
    kl_to_standard_normal,
    log_snr_from_alphas_cumprod,
    model_output_to_epsilon,
    training_alpha_sigma,
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
            The training timesteps drawn.
    """

    loss: torch.Tensor
    score_loss: torch.Tensor
    kl: torch.Tensor
    prior_loss: torch.Tensor
    timesteps: torch.Tensor


def draw_timesteps(
    noise_scheduler,
    batch_size: int,
    device,
    generator: torch.Generator | None = None,
    timestep_distribution: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training timesteps `(batch_size,)` drawn uniformly from the prior's schedule, or with probabilities
    ∝ `timestep_distribution`, and their importance weights 1 / (T · p(t)) (all ones for uniform draws)."""
    num_train_timesteps = len(noise_scheduler.alphas_cumprod)
    rng_device = generator.device if generator is not None else device
    if timestep_distribution is None:
        timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=rng_device)
        return timesteps.to(device), torch.ones(batch_size, device=device)
    probs = torch.as_tensor(timestep_distribution, dtype=torch.float64)
    if probs.shape != (num_train_timesteps,) or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(
            f"timestep_distribution must be non-negative weights of shape ({num_train_timesteps},), got shape "
            f"{tuple(probs.shape)}."
        )
    probs = probs.cpu() / probs.sum()
    timesteps = torch.multinomial(probs.to(rng_device), batch_size, replacement=True, generator=generator)
    importance = (1.0 / (num_train_timesteps * probs[timesteps.cpu()])).float().to(device)
    return timesteps.to(device), importance


def loss_weight(noise_scheduler, timesteps: torch.Tensor, loss_weighting: str) -> torch.Tensor:
    """w(t) of docs/math.md §5: 1 for "simple" (λ(t) = σ_t²), g(t)²/σ_t² for "likelihood" (the ELBO weighting)."""
    if loss_weighting == "simple":
        return torch.ones(timesteps.shape, device=timesteps.device)
    if loss_weighting == "likelihood":
        _, sigma = training_alpha_sigma(noise_scheduler, timesteps)
        return continuous_noise_rate(noise_scheduler, timesteps) / sigma**2
    raise ValueError(f"loss_weighting {loss_weighting!r} is not supported; choose one of {LOSS_WEIGHTINGS}.")


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

    Args:
        encoder ([`ScoreVAEEncoder`], possibly wrapped by accelerate/DDP):
            The encoder being trained.
        unet ([`UNet2DModel`]):
            The frozen prior. It runs under `torch.no_grad()` and never enters the autograd graph; it may be half
            precision.
        noise_scheduler ([`SchedulerMixin`]):
            The prior's training scheduler (its `alphas_cumprod` and `config.prediction_type` are used).
        clean_images (`torch.Tensor` of shape `(batch_size, C, H, W)`):
            Training images in model space, [-1, 1].
        beta (`float`, *optional*, defaults to 0.01):
            Weight of the KL term (the paper's β; sums over pixels and latent dims keep its meaning).
        loss_weighting (`str`, *optional*, defaults to `"simple"`):
            `"simple"` (w = 1) or `"likelihood"` (w = g(t)²/σ_t²).
        generator (`torch.Generator`, *optional*):
            Source of all randomness (ξ, t, ε); makes the loss deterministic.
        timestep_distribution (`torch.Tensor` of shape `(num_train_timesteps,)`, *optional*):
            Draw t with these probabilities instead of uniformly; each term is weighted by 1 / (T · p(t)), so the
            objective's expectation is unchanged (importance sampling).

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
    alpha, sigma = training_alpha_sigma(noise_scheduler, timesteps)
    alpha, sigma = append_dims(alpha, clean_images.ndim), append_dims(sigma, clean_images.ndim)
    noisy_images = alpha * clean_images + sigma * noise

    # 2. the prior's noise prediction, frozen
    with torch.no_grad():
        model_output = unet(noisy_images.to(unet.dtype), timesteps).sample.float()
        prediction_type = getattr(noise_scheduler.config, "prediction_type", "epsilon")
        epsilon = model_output_to_epsilon(
            model_output[:, : clean_images.shape[1]], noisy_images, alpha, sigma, prediction_type
        )

    # 3. one encoder forward on [x_0; x_t]: the posterior at the clean level and q(z | x_t, λ_t)
    alphas_cumprod = torch.as_tensor(noise_scheduler.alphas_cumprod).to(device)
    noisy_log_snr = log_snr_from_alphas_cumprod(alphas_cumprod[timesteps]).float()
    log_snr = torch.cat(
        [torch.full((batch_size,), float(config.clean_log_snr), device=device), finite_log_snr(noisy_log_snr)]
    )
    noisy_input = noisy_images.detach().requires_grad_(True)
    mean, logvar = encoder(torch.cat([clean_images, noisy_input]), log_snr, return_dict=False)
    mean, logvar = mean.float(), logvar.float()
    clean_mean, clean_logvar = mean[:batch_size], logvar[:batch_size]
    z = clean_mean + torch.exp(0.5 * clean_logvar) * latent_noise
    log_q = gaussian_log_prob(z, mean[batch_size:], logvar[batch_size:])
    (score,) = torch.autograd.grad(log_q.sum(), noisy_input, create_graph=True)

    # 4. weighted score matching + β KL
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

        t ~ U{0..T−1} (or `timestep_distribution`),  ε ~ N(0, I),  x_t = α_t x_0 + σ_t ε
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
    ⌈clean_fraction · batch_size⌉ images of the batch are encoded at the clean level (no noise, weighted as t = 0)
    instead of at a drawn t. Without them the clean level drifts away from the teacher as the noisy levels are fitted.

    No UNet runs: only the prior's training schedule (`noise_scheduler.alphas_cumprod`) is read. One encoder forward
    and one (single) backward per image.

    Args:
        encoder ([`ScoreVAEEncoder`], possibly wrapped by accelerate/DDP):
            The encoder being trained, q_φ(z | x_t, λ).
        noise_scheduler ([`SchedulerMixin`]):
            The prior's training scheduler (its `alphas_cumprod`).
        clean_images (`torch.Tensor` of shape `(batch_size, C, H, W)`):
            Training images in model space, [-1, 1].
        teacher ([`ScoreVAEEncoder`] or [`BetaVAE`]):
            The frozen encoder of clean images q_T(z | x_0): a `ScoreVAEEncoder` at its `clean_log_snr`, or the encoder
            of a `BetaVAE`. It runs under `torch.no_grad()` and receives no gradient. Its latent dimension must be the
            encoder's.
        loss_weighting (`str`, *optional*, defaults to `"simple"`):
            `"simple"` (w = 1) or `"likelihood"` (w = g(t)²/σ_t², as in [`scorevae_loss`]).
        generator (`torch.Generator`, *optional*):
            Source of all randomness (t, ε); makes the loss deterministic.
        timestep_distribution (`torch.Tensor` of shape `(num_train_timesteps,)`, *optional*):
            Draw t with these probabilities instead of uniformly; each term is weighted by 1 / (T · p(t)), so the
            objective's expectation is unchanged (importance sampling).
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

    # 2. timesteps and noise for the images after the first `num_clean` (all randomness from `generator`)
    num_noisy = batch_size - num_clean
    timesteps, importance = draw_timesteps(noise_scheduler, num_noisy, device, generator, timestep_distribution)
    noise = randn_tensor((num_noisy, *clean_images.shape[1:]), generator=generator, device=device)
    alpha, sigma = training_alpha_sigma(noise_scheduler, timesteps)
    noisy_images = append_dims(alpha, 4) * clean_images[num_clean:] + append_dims(sigma, 4) * noise
    alphas_cumprod = torch.as_tensor(noise_scheduler.alphas_cumprod).to(device)
    clean_log_snr = float(_unwrap(encoder).config.clean_log_snr)
    log_snr = torch.cat(
        [
            torch.full((num_clean,), clean_log_snr, device=device),
            log_snr_from_alphas_cumprod(alphas_cumprod[timesteps]).float(),
        ]
    )
    # the clean rows are the limit t -> 0: weighted as the first training timestep
    first = torch.zeros(num_clean, dtype=timesteps.dtype, device=device)
    weight = torch.cat(
        [
            loss_weight(noise_scheduler, first, loss_weighting),
            loss_weight(noise_scheduler, timesteps, loss_weighting) * importance,
        ]
    )

    # 3. q_φ(z | x, λ) on [x_0 (first num_clean); x_t (the rest)], one forward, and the expected negative
    #    log-likelihood of the teacher's codes under it
    mean, logvar = encoder(torch.cat([clean_images[:num_clean], noisy_images]), log_snr, return_dict=False)
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
