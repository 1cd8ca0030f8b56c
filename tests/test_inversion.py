"""DDIM inversion of the conditional model (`ScoreVAEPipeline.invert`).

(a) Alignment: for a model whose noise prediction does not depend on x, DDIM inversion is exact, so inverting and
decoding must return the image to float precision for every timestep spacing, offset, final ᾱ and prediction type.
(b) The closed-form Gaussian model of docs/math.md §6 (exact prior and exact encoder): the round trip error is small
and shrinks as the number of steps grows, while decoding the same code from fresh noise lands elsewhere.
(c) Tiny random components: shapes, finiteness, codes, the pipeline's scheduler left unchanged, errors.
"""

import logging
import math

import pytest
import torch
from conftest import LATENT_DIM, make_encoder, make_unet
from diffusers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from diffusers.models.unets.unet_2d import UNet2DOutput
from test_closed_form import SHAPE, GaussianProblem, M, S, exact_encoder, exact_prior_unet

from diffusers_scorevae import ScoreVAEInversionOutput, ScoreVAEPipeline
from diffusers_scorevae.interpolation import InterpolationOutput, interpolate, interpolation_grid, slerp
from diffusers_scorevae.inversion import ddim_inverse_step, ddim_step_alphas
from diffusers_scorevae.noise import alpha_sigma_from_log_snr, append_dims, epsilon_to_model_output, scheduler_log_snr


def gaussian_pipeline(scheduler, problem=None, scale: float = 1.0, s0: float = 0.15, clean_log_snr: float = 10.0):
    """ScoreVAEPipeline with the exact prior and exact encoder (by default the encoder of docs/math.md §6)."""
    problem = problem or GaussianProblem()
    b = torch.zeros(problem.A.shape[0], dtype=torch.float64)
    if scale == 1.0:  # docs/math.md §6: A x_0 + b = A (x_0 − m) + (b + A m)
        b = problem.b + problem.A @ torch.full((problem.A.shape[1],), M, dtype=torch.float64)
    encoder = exact_encoder(problem.A, b, scale, s0, clean_log_snr)
    pipe = ScoreVAEPipeline(unet=exact_prior_unet(scheduler), scheduler=scheduler, encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gaussian_images(n: int, seed: int) -> torch.Tensor:
    """n images of the Gaussian data N(m, s² I), quantised to 8 bits, in [0, 1]."""
    x = M + S * torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (((x + 1) * 127.5).round().clamp(0, 255) / 255).float()


# (a) alignment with DDIMScheduler.step


def x_independent_unet(scheduler):
    """A tiny UNet whose noise prediction ε̂(t) depends on t only (any prediction type): DDIM inversion is exact."""
    unet = make_unet(3)
    field = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))

    def forward(sample, timestep, *args, return_dict=True, **kwargs):
        alpha, sigma = alpha_sigma_from_log_snr(scheduler_log_snr(scheduler, timestep))
        t = append_dims(torch.as_tensor(timestep, dtype=torch.float32).reshape(-1), sample.ndim)
        epsilon = 0.5 * torch.sin(field + t / 150)
        out = epsilon_to_model_output(
            epsilon.double(), sample.double(), alpha, sigma, scheduler.config.prediction_type
        )
        return UNet2DOutput(sample=out.float()) if return_dict else (out.float(),)

    unet.forward = forward
    return unet


def test_inverse_step_undoes_ddim_step():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    timesteps, alpha_prods, alpha_prods_prev = ddim_step_alphas(scheduler, 10)
    torch.testing.assert_close(timesteps, scheduler.timesteps)
    generator = torch.Generator().manual_seed(0)
    sample, epsilon = torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 3, 8, 8, generator=generator)
    for i, t in enumerate(timesteps):
        prev = scheduler.step(epsilon, t, sample).prev_sample
        torch.testing.assert_close(ddim_inverse_step(epsilon, prev, alpha_prods[i], alpha_prods_prev[i]), sample)


SCHEDULER_CONFIGS = {
    "leading": {},
    "leading-offset-final-alpha": {"steps_offset": 1, "set_alpha_to_one": False},
    "trailing": {"timestep_spacing": "trailing"},
    "linspace": {"timestep_spacing": "linspace"},
    "cosine-v": {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
    "sample": {"prediction_type": "sample", "steps_offset": 1},
}


@pytest.mark.parametrize("num_inference_steps", [7, 10])
@pytest.mark.parametrize("name", SCHEDULER_CONFIGS)
def test_round_trip_is_exact_when_prediction_ignores_x(name, num_inference_steps):
    scheduler = DDIMScheduler(clip_sample=False, **SCHEDULER_CONFIGS[name])
    encoder = make_encoder(3, random_head=False)  # constant output: zero score, so ε̂_cond = ε̂(t)
    pipe = ScoreVAEPipeline(unet=x_independent_unet(scheduler), scheduler=scheduler, encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = pipe.invert(image, num_inference_steps=num_inference_steps)
    decoded = pipe(
        latent_codes=out.latent_codes,
        latents=out.latents,
        num_inference_steps=num_inference_steps,
        output_type="latent",
    ).images
    torch.testing.assert_close(decoded, image * 2 - 1, rtol=0, atol=1e-4)


# (b) the closed-form Gaussian model


def round_trip_error(pipe, image, num_inference_steps, latents=None, num_fixed_point_iterations=0):
    out = pipe.invert(
        image, num_inference_steps=num_inference_steps, num_fixed_point_iterations=num_fixed_point_iterations
    )
    latents = out.latents if latents is None else latents
    decoded = pipe(
        latent_codes=out.latent_codes, latents=latents, num_inference_steps=num_inference_steps, output_type="latent"
    ).images
    return (decoded - (image * 2 - 1)).abs().max().item()


def test_closed_form_round_trip_converges():
    # Measured max abs errors (x in [-1, 1]; 16 images of N(0.1, 0.2² I); PSNR on [0, 1] images in brackets):
    #   plain DDIM inversion:        20 steps 0.22 (28 dB), 100 steps 0.053 (41 dB), 500 steps 0.011 (55 dB)
    #   + 1 fixed-point iteration:   20 steps 0.094 (36 dB), 100 steps 4.2e-3 (63 dB), 500 steps 1.7e-4 (91 dB)
    #   + 3 fixed-point iterations:  20 steps 0.019 (51 dB), 100 steps 3.2e-5 (106 dB)
    # Plain inversion is first order (error ∝ 1/steps); the posterior here is narrow (std 0.083 along the code's
    # directions), which makes the conditional ODE stiff at low noise. Fresh noise instead of the inverted: 0.43.
    pipe = gaussian_pipeline(DDIMScheduler(clip_sample=False))
    image = gaussian_images(16, seed=0)
    errors = {n: round_trip_error(pipe, image, n) for n in (20, 100, 500)}
    assert errors[20] > errors[100] > errors[500], errors
    assert errors[100] < 0.08 and errors[500] < 0.02 and errors[20] / errors[500] > 10, errors
    assert round_trip_error(pipe, image, 100, num_fixed_point_iterations=3) < 2e-4
    # the code alone does not pin the image down: fresh noise gives another sample of p(x_0 | z)
    fresh = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(1))
    assert round_trip_error(pipe, image, 100, latents=fresh) > 0.2


def test_closed_form_inverted_noise_is_standard_normal():
    # With codes drawn z ~ q(z | x_0), each data image is a sample of p(x_0 | z), which the exact conditional ODE maps
    # to N(0, I). Measured over 512 images at 500 steps: variance 0.98 along the code's directions, 0.96 across them
    # (1.06 / 1.00 with one fixed-point iteration; 0.85 / 0.90 at 100 steps). (Encoder *means* as codes pin x_0 along
    # the code's directions, so x_T is then under-dispersed there: 0.36 of the posterior variance.)
    problem = GaussianProblem()
    pipe = gaussian_pipeline(DDIMScheduler(clip_sample=False), problem)
    image = gaussian_images(512, seed=2)
    codes = pipe.encode(image, sample_posterior=True, generator=torch.Generator().manual_seed(0))
    latents = pipe.invert(image, latent_codes=codes, num_inference_steps=500).latents
    assert abs(latents.mean().item()) < 4 / math.sqrt(latents.numel())
    variance = (latents.double().flatten(1) @ problem.basis).var(0)
    assert 0.9 < variance[: problem.A.shape[0]].mean() < 1.1 and 0.9 < variance[problem.A.shape[0] :].mean() < 1.1


def test_invert_warns_when_the_inversion_diverges(caplog):
    # the exact conditional ODE inverts to N(0, I)-like noise: no warning; an encoder term 300× too strong makes the
    # inverse ODE blow up, and the user is told rather than handed an x_T that decodes to something else
    pipe = gaussian_pipeline(DDIMScheduler(clip_sample=False))
    image = gaussian_images(4, seed=0)
    with caplog.at_level(logging.WARNING):
        pipe.invert(image, num_inference_steps=50)
    assert "diverged" not in caplog.text
    with caplog.at_level(logging.WARNING):
        latents = pipe.invert(image, num_inference_steps=50, guidance_scale=300.0).latents
    assert latents.flatten(1).std(dim=1).max() > 2
    assert "The inversion diverged" in caplog.text and "guidance_log_snr_range" in caplog.text


# (c) tiny random components


@pytest.fixture
def pipe(unet, encoder):
    pipe = ScoreVAEPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False), encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def images():
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_invert_shapes_codes_and_return_types(pipe, images):
    out = pipe.invert(images, num_inference_steps=10)
    assert isinstance(out, ScoreVAEInversionOutput)
    assert out.latents.shape == (2, 3, 8, 8) and torch.isfinite(out.latents).all()
    torch.testing.assert_close(out.latent_codes, pipe.encode(images))
    latents, codes = pipe.invert(images, num_inference_steps=10, return_dict=False)
    torch.testing.assert_close(latents, out.latents)
    # given codes are used as given; the encoder term changes the result
    codes = torch.randn(2, LATENT_DIM, generator=torch.Generator().manual_seed(1))
    given = pipe.invert(images, latent_codes=codes, num_inference_steps=10)
    torch.testing.assert_close(given.latent_codes, codes)
    assert (given.latents - out.latents).abs().max() > 1e-4
    unconditional = pipe.invert(images, num_inference_steps=10, guidance_scale=0.0)
    assert (unconditional.latents - out.latents).abs().max() > 1e-4


def test_invert_leaves_the_scheduler_unchanged(pipe, images):
    pipe.scheduler.set_timesteps(13)
    config, timesteps = dict(pipe.scheduler.config), pipe.scheduler.timesteps.clone()
    scheduler = pipe.scheduler
    pipe.invert(images, num_inference_steps=10)
    assert pipe.scheduler is scheduler and dict(pipe.scheduler.config) == config
    assert pipe.scheduler.num_inference_steps == 13
    torch.testing.assert_close(pipe.scheduler.timesteps, timesteps)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler])
def test_invert_runs_ddim_built_from_any_schedulers_config(unet, encoder, images, scheduler_class):
    # a stochastic or sigma-based scheduler is not inverted: the inversion runs DDIM built from its config, the
    # pipeline's scheduler is left as it was, and a decode of those latents retraces that DDIM pass
    scheduler = scheduler_class()
    pipe = ScoreVAEPipeline(unet=unet, scheduler=scheduler, encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe.invert(images, num_inference_steps=10)
    assert pipe.scheduler is scheduler and type(pipe.scheduler) is scheduler_class
    ddim = ScoreVAEPipeline(unet=unet, scheduler=DDIMScheduler.from_config(scheduler.config, clip_sample=False),
                            encoder=encoder)  # fmt: skip
    ddim.set_progress_bar_config(disable=True)
    torch.testing.assert_close(out.latents, ddim.invert(images, num_inference_steps=10).latents)
    decoded = pipe(latent_codes=out.latent_codes, latents=out.latents, output_type="pt").images
    by_hand = ddim(latent_codes=out.latent_codes, latents=out.latents.clone(), num_inference_steps=10,
                   output_type="pt").images  # fmt: skip
    torch.testing.assert_close(decoded, by_hand)


def test_invert_checks_inputs(pipe, images):
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe.invert(images, num_inference_steps=0)
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe.invert(images, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="num_fixed_point_iterations"):
        pipe.invert(images, num_fixed_point_iterations=-1)
    with pytest.raises(ValueError, match="one code per image"):
        pipe.invert(images, latent_codes=torch.zeros(3, LATENT_DIM))


@pytest.mark.parametrize(
    "make_scheduler",
    [
        # the scheduler a user builds first: DDIM from the config of a DDPM prior, which clips by default
        lambda: DDIMScheduler.from_config(DDPMScheduler().config),
        lambda: DDIMScheduler(clip_sample=False, thresholding=True),
        lambda: DDIMScheduler.from_config(DDPMScheduler(thresholding=True).config),
    ],
    ids=["clip_sample", "thresholding", "both"],
)
def test_invert_never_clips_and_its_decode_neither(unet, encoder, images, make_scheduler):
    # A decode that clips x̂_0 at every step is many-to-one (on the bundled model, inverting as if it did not clip gave
    # 15 dB at 100 steps, fresh noise 13 dB; docs/studies/eval_inversion.py): the inversion runs the same DDIM
    # without clipping, and the decode of its latents too, leaving the pipeline's scheduler as it was
    scheduler = make_scheduler()
    config = dict(scheduler.config)
    pipe = ScoreVAEPipeline(unet=unet, scheduler=scheduler, encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe.invert(images, num_inference_steps=5)
    assert pipe.scheduler is scheduler and dict(pipe.scheduler.config) == config
    unclipped = DDIMScheduler.from_config(config, clip_sample=False, thresholding=False)
    plain = ScoreVAEPipeline(unet=unet, scheduler=unclipped, encoder=encoder)
    plain.set_progress_bar_config(disable=True)
    torch.testing.assert_close(out.latents, plain.invert(images, num_inference_steps=5).latents)
    torch.testing.assert_close(
        pipe(latent_codes=out.latent_codes, latents=out.latents, output_type="pt").images,
        plain(
            latent_codes=out.latent_codes, latents=out.latents.clone(), num_inference_steps=5, output_type="pt"
        ).images,
    )
    with pytest.raises(ValueError, match="clip_sample=True"):
        pipe(latent_codes=out.latent_codes, latents=out.latents, clip_sample=True)


def test_invert_with_a_guidance_log_snr_range_round_trips():
    # the inverse steps follow the decode's rule (guided exactly at the steps whose λ is in the range), so the decode
    # with the same range retraces them (100 steps, 3 fixed-point iterations, as in the round trip above)
    pipe = gaussian_pipeline(DDIMScheduler(clip_sample=False))
    image = gaussian_images(16, seed=0)
    log_snr_range = (-3.0, 3.0)
    out = pipe.invert(
        image, num_inference_steps=100, guidance_log_snr_range=log_snr_range, num_fixed_point_iterations=3
    )

    def error(**kwargs):
        decoded = pipe(
            latent_codes=out.latent_codes, latents=out.latents, num_inference_steps=100, output_type="latent", **kwargs
        ).images
        return (decoded - (image * 2 - 1)).abs().max().item()

    assert error(guidance_log_snr_range=log_snr_range) < 2e-4  # measured 2.3e-5
    assert error() < 2e-4  # the decode of the inverted latents takes the inversion's range by default
    assert error(guidance_log_snr_range=(-math.inf, math.inf)) > 5e-3  # guided at every step: another path (0.016)
    assert (out.num_inference_steps, out.guidance_log_snr_range) == (100, log_snr_range)


def test_invert_runs_the_encoder_exactly_inside_the_guidance_log_snr_range(pipe, images):
    codes = pipe.encode(images)
    seen = []
    pipe.encoder.register_forward_pre_hook(lambda module, args: seen.append(torch.as_tensor(args[1]).reshape(-1)[0]))
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(10)
    log_snrs = sorted(scheduler_log_snr(scheduler, t).item() for t in scheduler.timesteps)
    low, high = log_snrs[3], log_snrs[6]  # closed: both ends are steps' own levels
    pipe.invert(images, latent_codes=codes, num_inference_steps=10, guidance_log_snr_range=(low, high))
    assert sorted(float(v) for v in seen) == pytest.approx(log_snrs[3:7], rel=1e-6)

    # a range that holds no step inverts the unconditional prior, and the encoder never runs
    seen.clear()
    kwargs = dict(latent_codes=codes, num_inference_steps=10)
    outside = pipe.invert(images, guidance_log_snr_range=(50.0, 60.0), **kwargs).latents
    assert seen == []
    assert torch.equal(outside, pipe.invert(images, guidance_scale=0.0, **kwargs).latents)
    with pytest.raises(ValueError, match="guidance_log_snr_range"):
        pipe.invert(images, guidance_log_snr_range=(1.0, 0.0))


# interpolation (linear in z, spherical in the inverted x_T)


def test_slerp():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 5, generator=generator), torch.randn(3, 4, 5, generator=generator)
    torch.testing.assert_close(slerp(a, b, torch.zeros(3)), a)
    torch.testing.assert_close(slerp(a, b, torch.ones(3)), b)
    # orthogonal vectors of equal norm: the path stays on the sphere
    u, v = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    for w in (0.25, 0.5, 0.9):
        point = slerp(u, v, torch.tensor([w]))
        torch.testing.assert_close(point.norm(), torch.tensor(3.0))
        torch.testing.assert_close(
            point, torch.tensor([[3 * math.cos(w * math.pi / 2), 3 * math.sin(w * math.pi / 2)]])
        )
    torch.testing.assert_close(slerp(u, u, torch.tensor([0.3])), u)  # parallel: no division by sin 0


def test_interpolate_z_and_x_T(pipe, images):
    out = interpolate(pipe, images[0], images[1], num_points=5, num_inference_steps=10)
    assert isinstance(out, InterpolationOutput)
    assert out.images.shape == (5, 3, 8, 8) and torch.isfinite(out.images).all()
    inverted = pipe.invert(images, num_inference_steps=10)
    torch.testing.assert_close(out.latent_codes[[0, -1]], inverted.latent_codes)
    torch.testing.assert_close(out.latents[[0, -1]], inverted.latents)
    torch.testing.assert_close(out.latent_codes[2], inverted.latent_codes.mean(0))
    # the endpoints are the round trips of the two images
    decoded = pipe(
        latent_codes=inverted.latent_codes, latents=inverted.latents, num_inference_steps=10, output_type="pt"
    ).images
    torch.testing.assert_close(out.images[[0, -1]], decoded, rtol=0, atol=1e-4)  # batch 5 vs 2: float noise


@pytest.mark.parametrize("mode", ["z+xT", "z"])
def test_interpolate_passes_the_guidance_log_snr_range_on(pipe, images, mode):
    # a range that holds no step: the inversion and the decodes are the unconditional model's
    def run(**kwargs):
        generator = torch.Generator().manual_seed(0)
        return interpolate(pipe, images[0], images[1], 3, 5, mode, generator=generator, **kwargs).images

    outside = run(guidance_log_snr_range=(50.0, 60.0))
    assert torch.equal(outside, run(guidance_scale=0.0))
    assert (outside - run()).abs().max() > 1e-4


def test_interpolate_z_with_shared_noise(unet, encoder, images):
    pipe = ScoreVAEPipeline(unet=unet, scheduler=DDPMScheduler(), encoder=encoder)  # stochastic: shared step noise
    pipe.set_progress_bar_config(disable=True)

    def z_row(image_a, image_b):
        generator = torch.Generator().manual_seed(0)
        return interpolate(pipe, image_a, image_b, num_points=3, num_inference_steps=5, mode="z", generator=generator)

    out = z_row(images[0], images[1])
    assert (out.latents == out.latents[:1]).all()
    torch.testing.assert_close(out.images, z_row(images[0], images[1]).images)
    # with equal codes, the shared noise makes equal images: the differences along the row come from z alone
    same = z_row(images[0], images[0])
    torch.testing.assert_close(same.images[0], same.images[2])


def test_interpolation_grid_and_errors(pipe, images):
    grid = interpolation_grid(
        pipe,
        images[0],
        images[1],
        num_points=4,
        num_inference_steps=5,
        generator=torch.Generator().manual_seed(0),
        scale=1,
    )
    assert grid.mode == "RGB" and grid.size[1] == 2 * (8 + 2) + 2  # two labelled rows of 8-pixel images
    with pytest.raises(ValueError, match="mode"):
        interpolate(pipe, images[0], images[1], mode="xT")
    with pytest.raises(ValueError, match="num_points"):
        interpolate(pipe, images[0], images[1], num_points=1)
    with pytest.raises(ValueError, match="one image"):
        interpolate(pipe, images, images[1])
