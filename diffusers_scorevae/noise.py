"""Noise levels, prediction-type conversions and the ScoreVAE guidance term, in the quantities a diffusers
scheduler and UNet expose. See docs/math.md (§1-§4) for the derivations; this module imports nothing else of the
package.

Notation map (variable -> symbol in docs/math.md / the paper):

    alphas_cumprod  -> ᾱ_t                    (diffusers schedulers' training schedule)
    alpha           -> α_t = √ᾱ_t             (signal scale of the VP-scaled model input)
    sigma           -> σ_t = √(1 − ᾱ_t)       (noise scale of the VP-scaled model input)
    log_snr         -> λ_t = log(ᾱ_t / (1 − ᾱ_t))
    sample          -> x_t, the VP-scaled input the UNet sees (`scheduler.scale_model_input` output)
    epsilon         -> ε̂, the noise prediction
    score           -> ∇_{x_t} log q_φ(z | x_t, λ_t), the encoder's score

Flow-matching priors (docs/math.md §10; diffusers' FlowMatch* schedulers), in flow scale:

    flow sigma      -> σ ∈ [0, 1], x_σ = (1 − σ) x_0 + σ ε; the UNet is called with timestep σ · num_train_timesteps
    velocity        -> v̂ ≈ ε − x_0, the UNet's output
    vp scale        -> c = √((1 − σ)² + σ²): x_vp = x_σ / c is a VP sample at α = (1 − σ) / c, λ = 2 log((1 − σ) / σ)
"""

from __future__ import annotations

import math

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions to `x` until it has `target_ndim` dimensions."""
    return x.reshape(*x.shape, *([1] * (target_ndim - x.ndim)))


def log_snr_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """λ = log(ᾱ / (1 − ᾱ)), computed as log ᾱ − log1p(−ᾱ) in float64 for accuracy near ᾱ → 1."""
    alphas_cumprod = alphas_cumprod.double()
    return torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)


def alpha_sigma_from_log_snr(log_snr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, σ) of the VP process at log-SNR λ: α² = sigmoid(λ), σ² = sigmoid(−λ)."""
    return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()


# flow-matching schedulers without `scale_noise` (an ancestral sampler for rectified flows)
FLOW_SCHEDULERS_WITHOUT_SCALE_NOISE = ("LTXEulerAncestralRFScheduler",)


def is_flow_scheduler(scheduler) -> bool:
    """Whether `scheduler` steps a flow-matching path x_σ = (1 − σ) x_0 + σ ε with a velocity (diffusers'
    `FlowMatchEulerDiscreteScheduler`, `FlowMatchHeunDiscreteScheduler`, `LTXEulerAncestralRFScheduler`, ...): it has
    no `alphas_cumprod`, and has `scale_noise` or is one of `FLOW_SCHEDULERS_WITHOUT_SCALE_NOISE`."""
    if getattr(scheduler, "alphas_cumprod", None) is not None:
        return False
    return hasattr(scheduler, "scale_noise") or type(scheduler).__name__ in FLOW_SCHEDULERS_WITHOUT_SCALE_NOISE


def flow_sigma(scheduler, timestep) -> torch.Tensor:
    """σ of a flow scheduler's `timestep` (diffusers calls flow models with t = σ · num_train_timesteps), float64 on
    the CPU, of `timestep`'s shape. Raises a `ValueError` outside [0, num_train_timesteps]."""
    num_train_timesteps = scheduler.config.num_train_timesteps
    t = torch.as_tensor(timestep, dtype=torch.float64).cpu()
    if torch.any(t < 0) or torch.any(t > num_train_timesteps):
        raise ValueError(f"timestep {timestep} is outside the flow scheduler's range [0, {num_train_timesteps}].")
    return t / num_train_timesteps


def flow_log_snr(sigma) -> torch.Tensor:
    """λ = 2 log((1 − σ) / σ) of flow noise level σ (float64; −inf at σ = 1, +inf at σ = 0; docs/math.md §10)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return 2 * (torch.log1p(-sigma) - torch.log(sigma))


def flow_sigma_from_log_snr(log_snr) -> torch.Tensor:
    """The flow noise level σ = 1 / (1 + e^{λ/2}) at log-SNR λ (the inverse of `flow_log_snr`), float64."""
    return torch.sigmoid(-torch.as_tensor(log_snr, dtype=torch.float64) / 2)


def flow_vp_scale(sigma) -> torch.Tensor:
    """c = √((1 − σ)² + σ²): x_σ / c is the VP-scaled sample at the same log-SNR (docs/math.md §10), float64."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return torch.sqrt((1 - sigma) ** 2 + sigma**2)


def _training_log_snr(scheduler) -> torch.Tensor:
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ValueError(
            f"scheduler {type(scheduler).__name__} has no `alphas_cumprod`: ScoreVAE needs a scheduler of a "
            "variance-preserving (DDPM-family) training schedule, e.g. DDPMScheduler, DDIMScheduler, "
            "DPMSolverMultistepScheduler or EulerDiscreteScheduler, or a flow-matching one "
            "(FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler)."
        )
    return log_snr_from_alphas_cumprod(torch.as_tensor(alphas_cumprod))


def scheduler_log_snr(scheduler, timestep) -> torch.Tensor:
    """λ_t of the noise level at `timestep` (the value the pipeline passes to the UNet), from `scheduler`.

    Integer timesteps index the training schedule `scheduler.alphas_cumprod` exactly. Float timesteps (sigma-based
    schedulers such as Euler, Heun, KDPM2, LMS) are interpolated linearly in λ = −2 log σ_ve, the inverse of the
    log-sigma interpolation by which those schedulers map a noise level to a timestep. Flow-matching schedulers
    (`is_flow_scheduler`) give λ = 2 log((1 − σ) / σ) at σ = t / num_train_timesteps. Returns a float64 tensor of
    the shape of `timestep`.
    """
    if is_flow_scheduler(scheduler):
        return flow_log_snr(flow_sigma(scheduler, timestep))
    table = _training_log_snr(scheduler)
    t = torch.as_tensor(timestep, dtype=torch.float64).cpu()
    if getattr(scheduler.config, "timestep_type", "discrete") == "continuous":
        # EulerDiscreteScheduler(timestep_type="continuous") passes t = ¼ log σ_ve (EDM-style): λ = −2 log σ_ve
        return -8.0 * t
    if torch.any(t < 0) or torch.any(t > len(table) - 1):
        raise ValueError(f"timestep {timestep} is outside the scheduler's training range [0, {len(table) - 1}].")
    low = t.floor().long().clamp(max=len(table) - 1)
    high = (low + 1).clamp(max=len(table) - 1)
    w = t - low.double()
    return (1 - w) * table[low] + w * table[high]


def training_alpha_sigma(scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) for integer training `timesteps` of `scheduler`, as float32 tensors on the timesteps' device."""
    alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod).to(timesteps.device, torch.float64)[timesteps]
    return alphas_cumprod.sqrt().float(), (1 - alphas_cumprod).sqrt().float()


def split_variance(model_output: torch.Tensor, sample: torch.Tensor):
    """`(prediction, variance)` of a UNet output: UNets trained with a learned variance (`variance_type=
    "learned_range"`) return 2·C channels, the prediction then the variance; others return C (variance `None`)."""
    if model_output.shape[1] == 2 * sample.shape[1]:
        return model_output.split(sample.shape[1], dim=1)
    return model_output, None


def model_output_to_epsilon(
    model_output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Noise prediction ε̂ from a UNet output of `prediction_type` at x_t = `sample` (docs/math.md §2).

        epsilon:       ε̂ = out
        v_prediction:  ε̂ = α · out + σ · x_t
        sample:        ε̂ = (x_t − α · out) / σ

    `alpha` and `sigma` are scalars or per-sample `[B]` tensors.
    """
    alpha, sigma = append_dims(torch.as_tensor(alpha), sample.ndim), append_dims(torch.as_tensor(sigma), sample.ndim)
    if prediction_type == "epsilon":
        return model_output
    elif prediction_type == "v_prediction":
        return alpha * model_output + sigma * sample
    elif prediction_type == "sample":
        return (sample - alpha * model_output) / sigma
    raise ValueError(f"prediction_type {prediction_type!r} is not supported; choose one of {PREDICTION_TYPES}.")


def epsilon_to_model_output(
    epsilon: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The UNet output of `prediction_type` that corresponds to noise prediction `epsilon` at x_t = `sample`.

    epsilon:       out = ε̂
    v_prediction:  out = (ε̂ − σ · x_t) / α
    sample:        out = x̂_0 = (x_t − σ · ε̂) / α
    """
    alpha, sigma = append_dims(torch.as_tensor(alpha), sample.ndim), append_dims(torch.as_tensor(sigma), sample.ndim)
    if prediction_type == "epsilon":
        return epsilon
    elif prediction_type == "v_prediction":
        return (epsilon - sigma * sample) / alpha
    elif prediction_type == "sample":
        return (sample - sigma * epsilon) / alpha
    raise ValueError(f"prediction_type {prediction_type!r} is not supported; choose one of {PREDICTION_TYPES}.")


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag exp(logvar)) summed over the latent dimension: `[B, D]` -> `[B]` (docs/math.md §4)."""
    return -0.5 * ((z - mean) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(dim=-1)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag exp(logvar)) ‖ N(0, I)) summed over the latent dimension: `[B, D]` -> `[B]`."""
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=-1)


def log_snr_range(value, name: str = "guidance_log_snr_range") -> tuple[float, float] | None:
    """A log-SNR range as `(low, high)` floats (either may be ±inf), from a pair of numbers or, as configs store it in
    JSON, a list with `null` for an unbounded end (low `null` = −inf, high `null` = +inf); `None` stays `None`.

    Raises a `ValueError` naming `name` unless the value is `None` or two numbers (not NaN, not bools) with
    low <= high.
    """
    if value is None:
        return None
    pair = tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is not None and len(pair) == 2:
        pair = (-math.inf if pair[0] is None else pair[0], math.inf if pair[1] is None else pair[1])
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
        if numbers and not any(math.isnan(v) for v in pair) and pair[0] <= pair[1]:
            return (float(pair[0]), float(pair[1]))
    raise ValueError(
        f"{name} must be None or a pair (low, high) of numbers (finite or ±inf, not NaN; None for an unbounded end) "
        f"with low <= high, e.g. (-6.0, float('inf')); got {value!r}."
    )


def check_log_snr_range(guidance_log_snr_range, name: str = "guidance_log_snr_range"):
    """Raise a `ValueError` unless `guidance_log_snr_range` is `None` or a valid `(low, high)` (`log_snr_range`)."""
    log_snr_range(guidance_log_snr_range, name)


def log_snr_range_to_config(value) -> list | None:
    """`(low, high)` as JSON-friendly config values: a list with `None` (JSON `null`) for an infinite end."""
    value = log_snr_range(value)
    if value is None:
        return None
    return [None if math.isinf(value[0]) else value[0], None if math.isinf(value[1]) else value[1]]


def guided_steps(log_snr, guidance_log_snr_range=None, zero_snr: bool = False) -> torch.Tensor:
    """Where the encoder term applies (a bool tensor of `log_snr`'s shape): the one step rule of decoding, inversion
    and training (docs/math.md §3).

    A step is guided when its log-SNR λ is finite (at zero terminal SNR, ᾱ_T = 0, x_T is pure noise and says nothing
    about z) and lies in the closed range `guidance_log_snr_range = (low, high)` (`None`: every finite λ). With
    `zero_snr=True` (flow priors, whose velocity term has a finite limit at σ = 1, docs/math.md §10) λ = −∞ is
    guided too when the range's low end is −∞ (or there is no range).
    """
    log_snr = torch.as_tensor(log_snr)
    guided = torch.isfinite(log_snr)
    if zero_snr:
        guided = guided | (log_snr == -math.inf)
    if guidance_log_snr_range is not None:
        low, high = guidance_log_snr_range
        guided = guided & (log_snr >= low) & (log_snr <= high)
    return guided


def finite_log_snr(log_snr: torch.Tensor) -> torch.Tensor:
    """`log_snr` with non-finite entries set to 0, for the encoder's input: those steps are never guided
    (`guided_steps`), and a finite stand-in keeps NaN out of the forward and backward passes."""
    return torch.where(torch.isfinite(log_snr), log_snr, torch.zeros_like(log_snr))


def encoder_score(
    encoder,
    sample: torch.Tensor,
    log_snr: torch.Tensor,
    latent_codes: torch.Tensor,
) -> torch.Tensor:
    """∇_{x_t} log q_φ(z | x_t, λ_t) by autograd through the encoder only (docs/math.md §4), exact density including
    the log-variance term. `sample` is the VP-scaled model input `[B, C, H, W]`, `latent_codes` is z `[B, D]`,
    `log_snr` a scalar or `[B]` (non-finite entries are evaluated at λ = 0; `guided_steps` never guides them).

    Runs under a scoped `torch.enable_grad()` on a detached copy of `sample`, so it works inside `torch.no_grad()`
    and builds no graph into anything else. Returns a tensor of `sample`'s shape and dtype.
    """
    with torch.enable_grad():
        x = sample.detach().to(encoder.dtype).requires_grad_(True)
        log_snr = finite_log_snr(torch.as_tensor(log_snr, dtype=torch.float32)).to(x.device)
        out = encoder(x, log_snr, return_dict=True)
        log_q = gaussian_log_prob(latent_codes.to(out.mean.dtype), out.mean, out.logvar).sum()
        (score,) = torch.autograd.grad(log_q, x)
    return score.to(sample.dtype)


def guide_epsilon(
    epsilon: torch.Tensor,
    score: torch.Tensor | None,
    sigma: torch.Tensor,
    log_snr: torch.Tensor,
    guidance_scale: float,
    guidance_log_snr_range=None,
) -> torch.Tensor:
    """The guidance term (docs/math.md §3), the one place it is applied, by decoding, inversion and training:

        ε̂_cond = ε̂ − γ · σ_t · ∇_{x_t} log q_φ(z | x_t, λ_t)      at the steps `guided_steps` selects,
        ε̂_cond = ε̂                                               elsewhere.

    `epsilon` `[B, ...]`, `score` of its shape (`None` when γ = 0 or no step is guided), `sigma` and `log_snr`
    scalars or `[B]`. Differentiable in `score` (training takes its double backward through here).
    """
    guided = guided_steps(log_snr, guidance_log_snr_range)
    if guidance_scale == 0 or not bool(guided.any()):
        return epsilon
    if score is None:
        raise ValueError("guide_epsilon needs the encoder's score at the guided steps; got score=None.")
    sigma = append_dims(torch.as_tensor(sigma, device=epsilon.device), epsilon.ndim).to(epsilon.dtype)
    return subtract_where(epsilon, guidance_scale * sigma * score.to(epsilon.dtype), guided)


def subtract_where(value: torch.Tensor, shift: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
    """`value − shift` in the rows where `guided` (a bool `[B]` or scalar) holds, `value` elsewhere; differentiable."""
    if bool(guided.all()):
        return value - shift
    mask = append_dims(guided.to(value.device), value.ndim)
    return value - torch.where(mask, shift, torch.zeros_like(shift))


def guided_model_output(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    score: torch.Tensor | None,
    log_snr: torch.Tensor,
    guidance_scale: float,
    prediction_type: str,
    guidance_log_snr_range=None,
) -> torch.Tensor:
    """A UNet output with the encoder term added (`guide_epsilon`), returned in the UNet's `prediction_type`
    (docs/math.md §2-§3). The conversion to ε̂ and back uses the same (α_t, σ_t), so only the guidance term changes the
    output; learned-variance channels pass through.
    """
    alpha, sigma = alpha_sigma_from_log_snr(torch.as_tensor(log_snr, dtype=torch.float64))
    alpha, sigma = alpha.to(sample.device, torch.float32), sigma.to(sample.device, torch.float32)
    prediction, variance = split_variance(model_output, sample)
    dtype = prediction.dtype
    prediction, x = prediction.float(), sample.float()
    epsilon = model_output_to_epsilon(prediction, x, alpha, sigma, prediction_type)
    epsilon = guide_epsilon(epsilon, score, sigma, log_snr, guidance_scale, guidance_log_snr_range)
    prediction = epsilon_to_model_output(epsilon, x, alpha, sigma, prediction_type).to(dtype)
    return prediction if variance is None else torch.cat([prediction, variance], dim=1)


def guided_epsilon(
    unet,
    encoder,
    scheduler,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    latent_codes: torch.Tensor | None,
    guidance_scale: float,
    guidance_log_snr_range=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ε̂_cond = ε̂ − γ σ_t ∇_{x_t} log q_φ(z | x_t, λ_t) (docs/math.md §3) at integer training `timesteps` `[N]` of
    `scheduler`, by the decode's own rule (`guided_steps`, `guide_epsilon`).

    `sample` is x_t `[N, C, H, W]` (VP scale), `latent_codes` z `[N, latent_dim]` (unused when γ = 0). Returns
    ε̂_cond in float32 and, for UNets with a learned variance (2·C output channels), the variance channels (else
    `None`). The encoder runs only when some row is guided.
    """
    prediction, variance = split_variance(unet(sample, timesteps).sample, sample)
    log_snr = scheduler_log_snr(scheduler, timesteps)
    alpha, sigma = alpha_sigma_from_log_snr(log_snr)
    alpha, sigma = alpha.to(sample.device, torch.float32), sigma.to(sample.device, torch.float32)
    prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
    epsilon = model_output_to_epsilon(prediction.float(), sample.float(), alpha, sigma, prediction_type)
    score = None
    if guidance_scale > 0 and bool(guided_steps(log_snr, guidance_log_snr_range).any()):
        score = encoder_score(encoder, sample, log_snr.float(), latent_codes).float()
    epsilon = guide_epsilon(epsilon, score, sigma, log_snr, guidance_scale, guidance_log_snr_range)
    return epsilon, variance


# the sampling distance from σ = 1 at which the velocity term's limit there is extrapolated (`flow_encoder_term`)
FLOW_LIMIT_DELTA = 1e-3


def flow_to_vp(sample: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The VP view of a flow sample x_σ (docs/math.md §10): `(x_vp, λ, α, σ_vp)` with x_vp = x_σ / c,
    α = (1 − σ) / c, σ_vp = σ / c, c = √((1 − σ)² + σ²). `sigma` is a scalar or `[B]`; x_vp has `sample`'s dtype,
    the others are float64."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    c = flow_vp_scale(sigma)
    x_vp = sample / append_dims(c, sample.ndim).to(sample.device, sample.dtype)
    return x_vp, flow_log_snr(sigma), (1 - sigma) / c, sigma / c


def velocity_to_epsilon(velocity: torch.Tensor, sample: torch.Tensor, sigma) -> torch.Tensor:
    """ε̂ = x_σ + (1 − σ) v̂ from a flow model's velocity v̂ ≈ ε − x_0 at x_σ = `sample` (`sigma` scalar or `[B]`)."""
    sigma = append_dims(torch.as_tensor(sigma, dtype=torch.float64), sample.ndim).to(sample.device, sample.dtype)
    return sample + (1 - sigma) * velocity


def flow_encoder_term(
    encoder, sample: torch.Tensor, sigma, latent_codes: torch.Tensor, delta: float = FLOW_LIMIT_DELTA
) -> torch.Tensor:
    """σ / (1 − σ) · ∇_{x_σ} log q_φ(z | x_σ / c, λ): what the encoder term subtracts (times γ) from a flow model's
    velocity (docs/math.md §10). The canonical encoder is called with the VP-scaled sample x_σ / c and λ, so one
    encoder serves every prior family; the chain rule through x_σ / c divides its score by c.

    At σ = 1 (λ = −∞) the score vanishes while σ / (1 − σ) diverges; the product has a finite limit, which is
    extrapolated from σ = 1 − δ and 1 − 2δ (Richardson: 2 F(1 − δ) − F(1 − 2δ), error O(δ²)), the sample in hand taken
    as the sample at those levels. `sigma` is a scalar or `[B]` in [0, 1]; returns float32 of `sample`'s shape.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64)

    def term(level):
        x_vp, log_snr, _, _ = flow_to_vp(sample.float(), level)
        score = encoder_score(encoder, x_vp, log_snr.float(), latent_codes).float()
        factor = level / ((1 - level) * flow_vp_scale(level))
        return append_dims(factor, sample.ndim).to(sample.device, torch.float32) * score

    at_one = sigma >= 1
    if not bool(at_one.any()):
        return term(sigma)
    near = term(torch.where(at_one, torch.full_like(sigma, 1 - delta), sigma))
    nearer = term(torch.where(at_one, torch.full_like(sigma, 1 - 2 * delta), sigma))
    limit = 2 * near - nearer
    return torch.where(append_dims(at_one, sample.ndim).to(sample.device), limit, near)


def guide_velocity(
    velocity: torch.Tensor,
    term: torch.Tensor | None,
    log_snr: torch.Tensor,
    guidance_scale: float,
    guidance_log_snr_range=None,
) -> torch.Tensor:
    """The guidance term for flow priors (docs/math.md §10): v̂_cond = v̂ − γ σ / (1 − σ) ∇_{x_σ} log q_φ(z | x_σ) at
    the steps `guided_steps(..., zero_snr=True)` selects, v̂ elsewhere; `term` is `flow_encoder_term`'s output
    (`None` when nothing is guided). The same shift as `guide_epsilon` in ε-space: ε̂_cond = ε̂ − γ σ_vp ∇ log q."""
    guided = guided_steps(log_snr, guidance_log_snr_range, zero_snr=True)
    if guidance_scale == 0 or not bool(guided.any()):
        return velocity
    if term is None:
        raise ValueError("guide_velocity needs the encoder term at the guided steps; got term=None.")
    return subtract_where(velocity, (guidance_scale * term).to(velocity.dtype), guided)


def guided_velocity(
    unet,
    encoder,
    scheduler,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    latent_codes: torch.Tensor | None,
    guidance_scale: float,
    guidance_log_snr_range=None,
) -> torch.Tensor:
    """v̂_cond of a flow prior (docs/math.md §10) at float `timesteps` `[N]` (σ · num_train_timesteps) of the flow
    `scheduler`, by the decode's own rule (`guided_steps`, `guide_velocity`): the UNet's velocity minus
    γ σ / (1 − σ) ∇_{x_σ} log q_φ(z | x_σ). `sample` is x_σ `[N, C, H, W]` (flow scale). Returns float32."""
    velocity = unet(sample, timesteps).sample.float()
    sigma = flow_sigma(scheduler, timesteps)
    log_snr = flow_log_snr(sigma)
    term = None
    if guidance_scale > 0 and bool(guided_steps(log_snr, guidance_log_snr_range, zero_snr=True).any()):
        term = flow_encoder_term(encoder, sample, sigma, latent_codes)
    return guide_velocity(velocity, term, log_snr, guidance_scale, guidance_log_snr_range)


def continuous_noise_rate(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """g(t)² of the continuous VP process at s = t/T for a diffusers training schedule (docs/math.md §5).

    For VP, g(s)² = β(s) = −d log ᾱ / ds; with a discrete schedule of T steps, −d log ᾱ / ds ≈ T · (log ᾱ_{t−1} −
    log ᾱ_t) = −T · log(1 − β_t) ≈ T · β_t. The log form is exact for any `beta_schedule` (including
    `squaredcos_cap_v2`, whose late betas are large).
    """
    alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
    num_train_timesteps = len(alphas_cumprod)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    rate = num_train_timesteps * (torch.log(prev) - torch.log(alphas_cumprod))
    return rate.to(timesteps.device)[timesteps].float()
