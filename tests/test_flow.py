"""Flow-matching priors (docs/math.md §10): the closed-form Gaussian check for flow, and the pipeline's features on a
`FlowMatchEulerDiscreteScheduler` / `FlowMatchHeunDiscreteScheduler` prior.

The closed-form check is §6's problem on the flow path x_σ = (1 − σ) x_0 + σ ε: the UNet's forward is replaced by the
exact velocity of N(m, s² I), v̂ = (x_σ − E[x_0 | x_σ]) / σ, and the encoder is §6's exact q(z | x_t) in its canonical
form (VP-scaled input and log-SNR), the very encoder the VP tests use. At γ = 1 the decode must be the flow of the
exact posterior p(x_0 | z) = N(μ_z, Σ): the same scheduler run on its velocity, trajectory for trajectory (any σ grid,
σ = 1 included, where the encoder term is a limit), and in mean and covariance from σ = 1.
"""

import math

import numpy as np
import pytest
import torch
from conftest import make_encoder, make_unet
from diffusers import (
    DDPMPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    FlowMatchLCMScheduler,
    LTXEulerAncestralRFScheduler,
    UniPCMultistepScheduler,
)
from diffusers.models.unets.unet_2d import UNet2DOutput
from test_closed_form import SHAPE, D, GaussianProblem, M, S

from diffusers_scorevae import ScoreVAEPipeline
from diffusers_scorevae.models.beta_vae import BetaVAE
from diffusers_scorevae.noise import (
    flow_encoder_term,
    flow_log_snr,
    flow_sigma_from_log_snr,
    flow_to_vp,
    scheduler_log_snr,
    velocity_to_epsilon,
)


def flow_posterior_mean(x: torch.Tensor, sigma: float, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """E[x_0 | x_σ] for x_0 ~ N(mean, cov) on the flow path: mean + (1 − σ) cov ((1 − σ)² cov + σ² I)⁻¹ (x − (1 − σ)
    mean), float64, `x` `[N, D]`. Exact at σ = 1 (the mean)."""
    eye = torch.eye(cov.shape[0], dtype=torch.float64)
    a = 1.0 - sigma
    gain = torch.linalg.solve(a**2 * cov + sigma**2 * eye, (x - a * mean).T).T
    return mean + a * gain @ cov.T


def exact_flow_unet(mean: float = M, std: float = S, num_train_timesteps: int = 1000):
    """A tiny UNet2DModel whose forward is the exact velocity of N(mean, std² I): v̂ = (x_σ − E[x_0 | x_σ]) / σ at
    σ = t / num_train_timesteps (a float timestep, as flow pipelines call their models)."""
    unet = make_unet(1, sample_size=SHAPE[1])

    def forward(sample, timestep, *args, return_dict=True, **kwargs):
        sigma = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)[0].item() / num_train_timesteps
        x = sample.double().flatten(1)
        cov = std**2 * torch.eye(x.shape[1], dtype=torch.float64)
        expected = flow_posterior_mean(x, sigma, torch.full((x.shape[1],), mean, dtype=torch.float64), cov)
        out = ((x - expected) / sigma).reshape(sample.shape).float()
        return UNet2DOutput(sample=out) if return_dict else (out,)

    unet.forward = forward
    return unet


class FlowGaussianProblem(GaussianProblem):
    """§6's problem (A, b, z, the exact posterior N(μ_z, Σ)) with a flow prior."""

    def pipeline(self, scheduler) -> ScoreVAEPipeline:
        pipe = ScoreVAEPipeline(unet=exact_flow_unet(), scheduler=scheduler, encoder=self.exact_encoder())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def posterior_loop(self, scheduler, latents, generator=None, **set_timesteps_kwargs):
        """`scheduler` run as a plain loop on the exact posterior's velocity v = (x_σ − E[x_0 | x_σ, z]) / σ
        (`generator` passed to the steps of a stochastic scheduler)."""
        scheduler.set_timesteps(**set_timesteps_kwargs)
        sample = latents
        step_kwargs = {} if generator is None else {"generator": generator}
        for t in scheduler.timesteps:
            sigma = t.item() / scheduler.config.num_train_timesteps
            x = sample.double().flatten(1)
            velocity = (x - flow_posterior_mean(x, sigma, self.mean, self.cov)) / sigma
            sample = scheduler.step(velocity.reshape(sample.shape).float(), t, sample, **step_kwargs).prev_sample
        return sample


@pytest.fixture(scope="module")
def problem():
    return FlowGaussianProblem()


def test_flow_is_a_rescaled_vp_path():
    # x_σ / c is the VP sample at λ = 2 log((1 − σ) / σ): α² + σ_vp² = 1 and α / σ_vp = e^{λ/2}
    sigma = torch.tensor([0.001, 0.2, 0.5, 0.9, 0.999], dtype=torch.float64)
    _, log_snr, alpha, sigma_vp = flow_to_vp(torch.zeros(5, 1, 1, 1), sigma)
    torch.testing.assert_close(alpha**2 + sigma_vp**2, torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(torch.log(alpha / sigma_vp) * 2, log_snr)
    torch.testing.assert_close(flow_sigma_from_log_snr(log_snr), sigma)
    assert flow_log_snr(1.0).item() == -math.inf and flow_log_snr(0.0).item() == math.inf
    # scheduler_log_snr reads a flow scheduler's float timesteps as σ · num_train_timesteps
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(7)
    torch.testing.assert_close(
        scheduler_log_snr(scheduler, scheduler.timesteps), flow_log_snr(scheduler.sigmas[:-1].double())
    )
    # the velocity's ε-space reading: ε̂ = x_σ + (1 − σ) v̂ is ε when v̂ = ε − x_0
    x0, eps = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x_sigma = 0.7 * x0 + 0.3 * eps
    torch.testing.assert_close(velocity_to_epsilon(eps - x0, x_sigma, 0.3), eps)


def test_encoder_term_is_the_vp_shift(problem):
    # σ g = σ_vp g_vp: the velocity shift σ/(1 − σ) g moves ε̂ = x + (1 − σ) v̂ by σ_vp ∇_{x_vp} log q, as for VP priors
    encoder = problem.exact_encoder()
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(3))
    codes = problem.codes(3)
    for sigma in (0.05, 0.5, 0.95):
        term = flow_encoder_term(encoder, x, sigma, codes)
        x_vp, log_snr, _, sigma_vp = flow_to_vp(x, sigma)
        x_vp = x_vp.detach().requires_grad_(True)
        with torch.enable_grad():
            out = encoder(x_vp, log_snr.float())
            log_q = -0.5 * (((codes - out.mean) ** 2) * torch.exp(-out.logvar) + out.logvar).sum()
            (score_vp,) = torch.autograd.grad(log_q, x_vp)
        torch.testing.assert_close((1 - sigma) * term, sigma_vp.item() * score_vp, rtol=1e-4, atol=1e-6)


def test_encoder_term_has_a_finite_limit_at_sigma_one(problem):
    encoder = problem.exact_encoder()
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(4))
    codes = problem.codes(2)
    at_one = flow_encoder_term(encoder, x, 1.0, codes)
    assert torch.isfinite(at_one).all() and at_one.abs().max() > 1e-3
    # the exact limit: s² Aᵀ(z − A m − b') / (s² + s_0²) · ... computed by letting σ → 1 in closed form
    near = [flow_encoder_term(encoder, x.double().float(), 1 - d, codes) for d in (1e-2, 5e-3)]
    extrapolated = 2 * near[1] - near[0]
    torch.testing.assert_close(at_one, extrapolated, rtol=1e-3, atol=1e-4)
    # per-sample σ with σ = 1 in some rows only
    mixed = flow_encoder_term(encoder, x, torch.tensor([1.0, 0.5]), codes)
    torch.testing.assert_close(mixed[0], at_one[0])
    torch.testing.assert_close(mixed[1], flow_encoder_term(encoder, x, 0.5, codes)[1])


# the decode is the flow of the exact posterior, trajectory for trajectory

GRIDS = {
    "uniform 10": {"num_inference_steps": 10},
    "custom below 1": {"sigmas": [0.9, 0.7, 0.45, 0.3, 0.2, 0.12, 0.06, 0.02]},
    "custom from 1": {"sigmas": [1.0, 0.8, 0.5, 0.25, 0.1, 0.03]},
}


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("grid", GRIDS)
def test_euler_decode_equals_posterior_flow(problem, grid, shift):
    kwargs = GRIDS[grid]
    latents = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(1))
    expected = problem.posterior_loop(FlowMatchEulerDiscreteScheduler(shift=shift), latents, **kwargs)
    pipe = problem.pipeline(FlowMatchEulerDiscreteScheduler(shift=shift))
    out = pipe(latent_codes=problem.codes(16), latents=latents, output_type="latent", **kwargs).images
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    prior_only = pipe(
        latent_codes=problem.codes(16), latents=latents, output_type="latent", guidance_scale=0, **kwargs
    )
    assert (prior_only.images - expected).abs().max() > 0.05


def test_heun_decode_equals_posterior_flow(problem):
    latents = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(1))
    expected = problem.posterior_loop(FlowMatchHeunDiscreteScheduler(), latents, num_inference_steps=8)
    pipe = problem.pipeline(FlowMatchHeunDiscreteScheduler())
    out = pipe(latent_codes=problem.codes(16), latents=latents, num_inference_steps=8, output_type="latent").images
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def ancestral(shift: float = 1.0) -> LTXEulerAncestralRFScheduler:
    return LTXEulerAncestralRFScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=shift).config)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_ancestral_decode_equals_the_ancestral_posterior_sampler(problem, shift):
    # the ancestral sampler of rectified flows, from σ = 1: the same noise draws give the same trajectory as the
    # scheduler run on the exact posterior's velocity
    latents = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.Generator().manual_seed(7)
    expected = problem.posterior_loop(ancestral(shift), latents, noise, num_inference_steps=8)
    pipe = problem.pipeline(ancestral(shift))
    out = pipe(
        latent_codes=problem.codes(16),
        latents=latents,
        num_inference_steps=8,
        generator=torch.Generator().manual_seed(7),
        output_type="latent",
    ).images
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_ancestral_decode_from_sigma_one_samples_the_posterior(problem):
    pipe = problem.pipeline(ancestral())
    generator = torch.Generator().manual_seed(0)
    codes = problem.codes(2000)
    samples = pipe(latent_codes=codes, num_inference_steps=200, generator=generator, output_type="latent")
    problem.check_samples(samples.images, mean_se=4.0, variance_range=(0.9, 1.1), direction_range=(0.8, 1.2))


def test_skipping_the_limit_at_sigma_one_is_measurably_wrong(problem):
    # the same grid from σ = 1 with the σ = 1 step left unguided (a range whose low end is finite) leaves the exact
    # posterior flow by 25x the previous test's tolerance (measured 2.7e-3 vs 1e-4): the limit is what makes it pass
    kwargs = GRIDS["custom from 1"]
    latents = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(1))
    expected = problem.posterior_loop(FlowMatchEulerDiscreteScheduler(), latents, **kwargs)
    pipe = problem.pipeline(FlowMatchEulerDiscreteScheduler())
    skipped = pipe(
        latent_codes=problem.codes(16),
        latents=latents,
        output_type="latent",
        guidance_log_snr_range=(-50.0, math.inf),
        **kwargs,
    ).images
    assert (skipped - expected).abs().max() > 2.5e-3


def test_decode_from_sigma_one_samples_the_posterior(problem):
    # 2000 decodes of one code through 100 Euler steps from pure noise at σ = 1
    pipe = problem.pipeline(FlowMatchEulerDiscreteScheduler())
    generator = torch.Generator().manual_seed(0)
    samples = pipe(
        latent_codes=problem.codes(2000), num_inference_steps=100, generator=generator, output_type="latent"
    )
    problem.check_samples(samples.images, mean_se=4.0, variance_range=(0.9, 1.1), direction_range=(0.8, 1.2))


def test_inversion_round_trip_on_the_exact_model(problem):
    pipe = problem.pipeline(FlowMatchEulerDiscreteScheduler())
    generator = torch.Generator().manual_seed(5)
    images = (M + S * torch.randn(4, *SHAPE, generator=generator)) / 2 + 0.5  # in [0, 1]
    inverted = pipe.invert(images, num_inference_steps=50, num_fixed_point_iterations=3)
    assert inverted.num_inference_steps == 50
    decoded = pipe(latent_codes=inverted.latent_codes, latents=inverted.latents, output_type="pt").images
    torch.testing.assert_close(decoded, images, rtol=0, atol=2e-3)


# the pipeline's features on a real (tiny) flow prior


def flow_pipe(scheduler=None, encoder=None) -> ScoreVAEPipeline:
    pipe = ScoreVAEPipeline(
        unet=make_unet(1), scheduler=scheduler or FlowMatchEulerDiscreteScheduler(), encoder=encoder or make_encoder(1)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_unguided_decode_is_the_flow_sampler():
    pipe = flow_pipe()
    ours = pipe(
        guidance_scale=0, batch_size=2, num_inference_steps=6, generator=torch.manual_seed(0), output_type="np"
    )
    # diffusers' own loop (DDPMPipeline steps any scheduler: UNet called with scheduler.timesteps, then step)
    theirs = DDPMPipeline(unet=pipe.unet, scheduler=FlowMatchEulerDiscreteScheduler())(
        batch_size=2, num_inference_steps=6, generator=torch.manual_seed(0), output_type="np"
    )
    np.testing.assert_allclose(ours.images, theirs.images, atol=1e-6)


def test_the_unet_gets_float_timesteps():
    pipe = flow_pipe()
    seen = []
    original = pipe.unet.forward

    def forward(sample, timestep, *args, **kwargs):
        seen.append(timestep)
        return original(sample, timestep, *args, **kwargs)

    pipe.unet.forward = forward
    pipe(batch_size=1, num_inference_steps=4, generator=torch.manual_seed(0), guidance_scale=1.0)
    assert all(torch.is_tensor(t) and t.is_floating_point() for t in seen)
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(4)
    torch.testing.assert_close(torch.stack([t.reshape(()) for t in seen]), scheduler.timesteps)


def test_realism_starts_from_the_mean_decoder_with_scale_noise():
    torch.manual_seed(0)
    beta_vae = BetaVAE(sample_size=8, in_channels=1, latent_dim=16, block_out_channels=(8, 16), norm_num_groups=4)
    encoder = make_encoder(1).with_decoder(beta_vae)
    pipe = flow_pipe(encoder=encoder)
    codes = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    # realism 0, no s_0: the mean estimate itself
    mean = pipe(latent_codes=codes, realism=0.0, output_type="latent").images
    torch.testing.assert_close(mean, encoder.decode(codes))
    # realism 0.5 of 10 steps: the last 5, from (1 − σ_5) x̂_0 + σ_5 ε
    seen = []
    pipe(
        latent_codes=codes,
        realism=0.5,
        num_inference_steps=10,
        latents=noise,
        output_type="latent",
        callback_on_step_end=lambda p, i, t, kw: seen.append(t) or {},
    )
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(10)
    torch.testing.assert_close(torch.stack(seen), scheduler.timesteps[5:])
    start = []
    original = pipe.unet.forward
    pipe.unet.forward = lambda sample, t, *a, **k: start.append(sample.clone()) or original(sample, t, *a, **k)
    pipe(latent_codes=codes, realism=0.5, num_inference_steps=10, latents=noise, output_type="latent")
    sigma = scheduler.sigmas[5]
    torch.testing.assert_close(start[0], (1 - sigma) * encoder.decode(codes) + sigma * noise)


def test_ancestral_realism_starts_on_the_flow_path():
    # LTXEulerAncestralRFScheduler has no `scale_noise`: the start is the flow path itself, (1 − σ) x̂_0 + σ ε
    torch.manual_seed(0)
    beta_vae = BetaVAE(sample_size=8, in_channels=1, latent_dim=16, block_out_channels=(8, 16), norm_num_groups=4)
    encoder = make_encoder(1).with_decoder(beta_vae)
    pipe = flow_pipe(ancestral(3.0), encoder=encoder)
    codes = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    start = []
    original = pipe.unet.forward
    pipe.unet.forward = lambda sample, t, *a, **k: start.append(sample.clone()) or original(sample, t, *a, **k)
    pipe(latent_codes=codes, realism=0.5, num_inference_steps=10, latents=noise, output_type="latent")
    scheduler = ancestral(3.0)
    scheduler.set_timesteps(10)
    sigma = scheduler.sigmas[5]
    assert len(start) == 5
    torch.testing.assert_close(start[0], (1 - sigma) * encoder.decode(codes) + sigma * noise)


def test_flow_pipeline_saves_and_loads(tmp_path):
    pipe = flow_pipe(FlowMatchEulerDiscreteScheduler(shift=2.0))
    codes = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    before = pipe(latent_codes=codes, num_inference_steps=4, generator=torch.manual_seed(0), output_type="np").images
    pipe.save_pretrained(tmp_path / "flow")
    loaded = ScoreVAEPipeline.from_pretrained(tmp_path / "flow")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler) and loaded.scheduler.config.shift == 2.0
    after = loaded(latent_codes=codes, num_inference_steps=4, generator=torch.manual_seed(0), output_type="np").images
    np.testing.assert_allclose(after, before, atol=1e-6)


def test_flow_prior_folder_with_an_encoder(tmp_path):
    # a plain flow prior folder (what examples/train_prior.py --flow_matching writes) plus encoder=
    pipe = flow_pipe()
    DDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler).save_pretrained(tmp_path / "prior")
    loaded = ScoreVAEPipeline.from_pretrained(tmp_path / "prior", encoder=pipe.encoder)
    assert isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler)
    out = loaded(image=torch.rand(1, 1, 8, 8), num_inference_steps=3, output_type="pt").images
    assert out.shape == (1, 1, 8, 8) and torch.isfinite(out).all()


def test_bits_per_dim_is_refused_for_flow_priors():
    pipe = flow_pipe()
    images = torch.randint(0, 256, (1, 1, 8, 8)) / 255.0
    for method in (pipe.bits_per_dim, pipe.prior_bits_per_dim):
        with pytest.raises(ValueError, match="flow-matching"):
            method(images)


@pytest.mark.parametrize(
    "scheduler, match",
    [
        (lambda: FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), "stochastic_sampling"),
        (lambda: FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), "use_dynamic_shifting"),
        (lambda: FlowMatchEulerDiscreteScheduler(invert_sigmas=True), "invert_sigmas"),
        (lambda: FlowMatchLCMScheduler(), "FlowMatchLCMScheduler"),
        (lambda: LTXEulerAncestralRFScheduler(s_noise=0.9), "s_noise"),
        (lambda: DPMSolverMultistepScheduler(use_flow_sigmas=True), "flow-sigma mode"),
        (lambda: UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"), "flow-sigma mode"),
    ],
    ids=["stochastic", "dynamic-shift", "invert-sigmas", "lcm", "s-noise", "dpm-flow-sigmas", "unipc-flow-prediction"],
)
def test_priors_that_cannot_be_guided_exactly_are_refused(scheduler, match):
    with pytest.raises(ValueError, match=match):
        flow_pipe(scheduler())
    # swapped in after construction: refused at the call
    pipe = flow_pipe()
    pipe.scheduler = scheduler()
    with pytest.raises(ValueError, match=match):
        pipe(batch_size=1, num_inference_steps=2)


def test_custom_timesteps_without_sigmas_are_refused():
    pipe = flow_pipe(FlowMatchEulerDiscreteScheduler(shift=3.0))
    with pytest.raises(ValueError, match="pass `sigmas` instead"):
        pipe(batch_size=1, timesteps=[900.0, 500.0, 100.0])


def test_flow_inversion_and_interpolation_run_with_the_euler_flow():
    pipe = flow_pipe(FlowMatchHeunDiscreteScheduler())
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    inverted = pipe.invert(images, num_inference_steps=5, guidance_scale=0.0)
    decoded = pipe(latent_codes=inverted.latent_codes, latents=inverted.latents, output_type="pt").images
    assert torch.isfinite(decoded).all()
    # the decode of inverted latents runs the inversion's deterministic Euler flow, whatever the pipeline's scheduler
    assert isinstance(pipe.scheduler, FlowMatchHeunDiscreteScheduler)
    from diffusers_scorevae.interpolation import interpolate

    out = interpolate(pipe, images[0], images[1], num_points=3, num_inference_steps=4)
    assert out.images.shape[0] == 3 and torch.isfinite(out.images).all()


def test_vp_schedulers_keep_reading_their_own_table():
    # a DDPM-family scheduler is still read through alphas_cumprod (not as a flow scheduler)
    scheduler = DPMSolverMultistepScheduler()
    scheduler.set_timesteps(5)
    expected = torch.log(scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)).double()[scheduler.timesteps]
    torch.testing.assert_close(scheduler_log_snr(scheduler, scheduler.timesteps), expected)
    assert D == 16


def test_latent_flow_prior_decodes_and_round_trips_a_folder(tmp_path):
    # a flow prior over an AutoencoderKL's latents (`vae=`): reconstruct, realism, save/load through the LDM layout
    from test_latent import images, kl_pipeline

    pipe = kl_pipeline(FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    x = images(1)
    before = pipe(image=x, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    assert before.shape == (2, 16, 16, 1) and np.isfinite(before).all()
    latent = pipe(image=x, num_inference_steps=3, generator=torch.manual_seed(0), output_type="latent").images
    assert latent.shape == (2, *pipe.latent_shape)
    inverted = pipe.invert(x, num_inference_steps=3, guidance_scale=0.0)
    assert inverted.latents.shape == latent.shape
    pipe.save_pretrained(tmp_path / "latent-flow")
    loaded = ScoreVAEPipeline.from_pretrained(tmp_path / "latent-flow")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler) and loaded.vae is not None
    after = loaded(image=x, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_a_flow_prior_repo_id_loads_from_an_offline_cache(tmp_path, monkeypatch):
    # `from_pretrained("org/name", encoder=...)` of a flow prior pushed in the DDPMPipeline layout, resolved from a
    # populated Hugging Face cache with HF_HUB_OFFLINE=1 (the real Hub code path, no network)
    from hub_cache import go_offline, write_cached_repo

    pipe = flow_pipe(FlowMatchEulerDiscreteScheduler(shift=3.0))
    DDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler).save_pretrained(tmp_path / "prior")
    cache = tmp_path / "cache"
    write_cached_repo(cache, "someone/flow-prior", tmp_path / "prior")
    go_offline(monkeypatch, cache, tmp_path / "hf_home")
    loaded = ScoreVAEPipeline.from_pretrained("someone/flow-prior", encoder=pipe.encoder)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler) and loaded.scheduler.config.shift == 3.0
    codes = torch.randn(1, 16, generator=torch.Generator().manual_seed(1))
    ours = loaded(latent_codes=codes, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    theirs = pipe(latent_codes=codes, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
