"""DDIM inversion of the conditional ScoreVAE model.

It runs the *conditional* noise prediction of docs/math.md §3 (`noise.guided_epsilon`),
ε̂_cond = ε̂ − γ · σ_t · ∇_{x_t} log q_φ(z | x_t, λ_t), at integer training timesteps. [`ScoreVAEPipeline.invert`]
calls it; `bound.py` holds the likelihood bound.

Notation map (variable -> symbol; 0-indexed training timesteps t = 0 … T−1 as in diffusers and improved-diffusion):

    alphas_cumprod[t]        -> ᾱ_t                (ᾱ_{−1} = 1)
    betas[t]                 -> β_t = 1 − ᾱ_t / ᾱ_{t−1}
    posterior_variance[t]    -> β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t),  the variance of q(x_{t−1} | x_t, x_0)
    x_start                  -> x_0, the image in [-1, 1]
    epsilon                  -> ε̂_cond(x_t, t), the guided noise prediction

## DDIM inversion

One deterministic DDIM step (η = 0) from noise level ᾱ_t down to ᾱ_prev, with ε̂ = ε̂_cond(x_t, t), is the affine map

    x_prev = √ᾱ_prev · (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t + √(1 − ᾱ_prev) · ε̂

Inversion runs the same steps in reverse order and solves each for x_t, taking ε̂ = ε̂_cond(x_prev, t) (the model at
the step's own timestep t, evaluated at the sample in hand: the usual first-order approximation, exact when ε̂ does
not depend on x):

    x_t = √ᾱ_t · (x_prev − √(1 − ᾱ_prev) ε̂) / √ᾱ_prev + √(1 − ᾱ_t) · ε̂

Optionally the step is then solved exactly by fixed-point iteration, ε̂ = ε̂_cond(x_t, t) with the latest x_t (as in
"exact inversion" methods): the decode then retraces the inverted path up to the iteration's convergence.

Only a decode that does not clip x̂_0 can be inverted. With `clip_sample=True` (or dynamic `thresholding`) the DDIM step
is x_prev = √ᾱ_prev · clip(x̂_0) + √(1 − ᾱ_prev) ε̂ (diffusers keeps the unclipped ε̂ unless `use_clipped_model_output`),
and the clip moves every pixel whose x̂_0 overshoots back inside, a little at every step: the decode contracts those
pixels towards the clipping boundary, so its inverse expands them, and errors grow from step to step. On the bundled
model no per-step inverse tried (solving for x̂_0 with ε̂ held, for ε̂ with x̂_0 held, Richardson iterations on the
clipped step, damped or not, from the unclipped solution or not) reaches 20 dB at 100 steps, where ignoring the clip
gives 15 dB and fresh noise 13 dB; `inversion_scheduler` therefore always inverts (and the decode of its result
always runs) a DDIM that does not clip.

The (t, ᾱ_t, ᾱ_prev) of every step are those `DDIMScheduler.step` uses after `set_timesteps` (any `timestep_spacing`,
`steps_offset`, `set_alpha_to_one`), so decoding the result with that scheduler retraces the inverted path.

## Flow priors: the Euler ODE run backwards

A flow prior's deterministic decode is Euler on the velocity, x_{i+1} = x_i + (σ_{i+1} − σ_i) v̂_cond(x_i, σ_i) over
`FlowMatchEulerDiscreteScheduler`'s sigmas (one such step is one DDIM step at the same pair of log-SNRs, docs/math.md
§10). `flow_invert` solves each step for x_i in reverse order, the same way: v̂ at the sample in hand, then optional
fixed-point iterations x_i ← x_{i+1} − (σ_{i+1} − σ_i) v̂_cond(x_i, σ_i).
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from .noise import is_flow_scheduler


def inversion_scheduler(scheduler):
    """The deterministic scheduler an inversion runs backwards (and the decode of its result runs forwards).

    VP priors: `scheduler` itself when it is a `DDIMScheduler` that neither clips nor thresholds x̂_0, else a
    `DDIMScheduler` built from its config (same training schedule, spacing and offset) with `clip_sample=False,
    thresholding=False`. Flow priors: `scheduler` itself when it is a deterministic `FlowMatchEulerDiscreteScheduler`,
    else one built from its config (same `shift` and sigma options; `stochastic_sampling=False`)."""
    if is_flow_scheduler(scheduler):
        if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and not scheduler.config.stochastic_sampling:
            return scheduler
        # the sigma options Euler knows (an ancestral scheduler's `eta`, `s_noise` have no meaning for the ODE)
        known = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters
        config = {key: value for key, value in scheduler.config.items() if key in known}
        return FlowMatchEulerDiscreteScheduler.from_config(config, stochastic_sampling=False)
    if isinstance(scheduler, DDIMScheduler) and not scheduler.config.clip_sample and not scheduler.config.thresholding:
        return scheduler
    return DDIMScheduler.from_config(scheduler.config, clip_sample=False, thresholding=False)


def ddim_step_alphas(scheduler: DDIMScheduler, num_inference_steps: int):
    """The forward DDIM pass's steps: timesteps t_1 > … > t_N of `set_timesteps(num_inference_steps)` and, for each,
    the (ᾱ_t, ᾱ_prev) that `DDIMScheduler.step` uses (float64 `[N]` each). Works on a copy: `scheduler` is
    unchanged."""
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(num_inference_steps)
    timesteps = ddim.timesteps
    alphas_cumprod = ddim.alphas_cumprod.double()
    prev_timesteps = timesteps - ddim.config.num_train_timesteps // num_inference_steps  # as in DDIMScheduler.step
    final = torch.as_tensor(ddim.final_alpha_cumprod, dtype=torch.float64)
    alpha_prod = alphas_cumprod[timesteps]
    alpha_prod_prev = torch.where(prev_timesteps >= 0, alphas_cumprod[prev_timesteps.clamp(min=0)], final)
    return timesteps, alpha_prod, alpha_prod_prev


def ddim_inverse_step(epsilon: torch.Tensor, sample: torch.Tensor, alpha_prod, alpha_prod_prev) -> torch.Tensor:
    """Undo one DDIM step (η = 0): the x_t at noise level ᾱ_t (`alpha_prod`) that DDIM maps to `sample` at ᾱ_prev,
    given the noise prediction ε̂ (module docstring). `alpha_prod`, `alpha_prod_prev` are scalars (floats or 0-d
    tensors); the result has `sample`'s dtype and device."""
    alpha_prod, alpha_prod_prev = float(alpha_prod), float(alpha_prod_prev)
    pred_original_sample = (sample - math.sqrt(1 - alpha_prod_prev) * epsilon) / math.sqrt(alpha_prod_prev)
    return math.sqrt(alpha_prod) * pred_original_sample + math.sqrt(1 - alpha_prod) * epsilon


def ddim_invert(
    epsilon_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    scheduler: DDIMScheduler,
    num_inference_steps: int,
    num_fixed_point_iterations: int = 0,
    progress_bar: Callable = iter,
) -> torch.Tensor:
    """Run the DDIM pass of `num_inference_steps` backwards from the image `sample` (x at the pass's final level) to
    its initial noise x_T. `epsilon_fn(x, t)` is the noise prediction at integer timestep `t` (a 0-d tensor).

    Each step takes ε̂ at the sample in hand, then refines x_t by `num_fixed_point_iterations` fixed-point iterations
    x_t ← inverse step with ε̂(x_t, t), which converge to the exact inverse of the DDIM step where ε̂ is smooth enough
    (one more `epsilon_fn` call each). No clipping: this inverts the decode of a scheduler that does not clip x̂_0
    (`inversion_scheduler`).
    """
    timesteps, alpha_prods, alpha_prods_prev = ddim_step_alphas(scheduler, num_inference_steps)
    for i in progress_bar(range(len(timesteps) - 1, -1, -1)):
        target = sample
        for _ in range(num_fixed_point_iterations + 1):
            epsilon = epsilon_fn(sample, timesteps[i])
            sample = ddim_inverse_step(epsilon.to(target.dtype), target, alpha_prods[i], alpha_prods_prev[i])
    return sample


def flow_invert(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    scheduler: FlowMatchEulerDiscreteScheduler,
    num_inference_steps: int,
    num_fixed_point_iterations: int = 0,
    progress_bar: Callable = iter,
) -> torch.Tensor:
    """Run the Euler flow decode of `num_inference_steps` backwards from the image `sample` (x at σ = 0) to its
    initial noise at σ = sigmas[0] (module docstring). `velocity_fn(x, t)` is the guided velocity at the scheduler's
    float timestep `t` (a 0-d tensor). Works on a copy of `scheduler`'s sigmas: `scheduler` is unchanged."""
    euler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    euler.set_timesteps(num_inference_steps)
    timesteps, sigmas = euler.timesteps, euler.sigmas.double()
    for i in progress_bar(range(len(timesteps) - 1, -1, -1)):
        target, step = sample, float(sigmas[i + 1] - sigmas[i])
        for _ in range(num_fixed_point_iterations + 1):
            velocity = velocity_fn(sample, timesteps[i])
            sample = target - step * velocity.to(target.dtype)
    return sample


# the likelihood bound
