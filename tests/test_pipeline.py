"""ScoreVAEPipeline with tiny real components: unconditional equivalence, every scheduler, inputs, outputs, errors."""

import doctest
import json
import os
import re

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import LATENT_DIM, make_encoder, make_unet
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline, ScoreVAEPipelineOutput
from diffusers_scorevae.noise import scheduler_log_snr
from diffusers_scorevae.pipelines import pipeline_scorevae

STEPS = 4


def seed(n: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(n)


def make_pipe(scheduler=None, channels: int = 3, unet=None, encoder=None) -> ScoreVAEPipeline:
    pipe = ScoreVAEPipeline(
        unet=unet or make_unet(channels),
        scheduler=scheduler or DDIMScheduler(),
        encoder=encoder or make_encoder(channels),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_calls(module) -> list:
    """Replace `module.forward` by a wrapper that records its calls; returns the (growing) list of calls."""
    calls, forward = [], module.forward

    def counting_forward(*args, **kwargs):
        calls.append(args)
        return forward(*args, **kwargs)

    module.forward = counting_forward
    return calls


def images_01(batch: int = 2, channels: int = 3, n: int = 3) -> torch.Tensor:
    """Random images in [0, 1] that are exactly representable as uint8 (so PIL and numpy inputs agree bit for bit)."""
    return torch.randint(0, 256, (batch, channels, 8, 8), generator=seed(n)).float() / 255


@torch.no_grad()
def plain_loop(unet, scheduler, latents, num_inference_steps):
    """The unconditional sampler as diffusers' pipelines write it."""
    scheduler.set_timesteps(num_inference_steps)
    sample = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_output = unet(scheduler.scale_model_input(sample, t), t).sample
        sample = scheduler.step(model_output, t, sample).prev_sample
    return sample


# 1. guidance_scale = 0 is the unconditional sampler, bit for bit, and never runs the encoder


def test_zero_guidance_equals_ddpm_pipeline_and_skips_encoder(unet, encoder, latent_codes):
    reference = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    reference.set_progress_bar_config(disable=True)
    expected = reference(batch_size=2, num_inference_steps=STEPS, generator=seed(), output_type="np").images

    encoder_calls = count_calls(encoder)
    pipe = make_pipe(DDPMScheduler(), unet=unet, encoder=encoder)
    out = pipe(batch_size=2, num_inference_steps=STEPS, guidance_scale=0, generator=seed(), output_type="np")
    np.testing.assert_array_equal(out.images, expected)
    assert out.latent_codes is None
    out = pipe(
        latent_codes=latent_codes, num_inference_steps=STEPS, guidance_scale=0, generator=seed(), output_type="np"
    )
    np.testing.assert_array_equal(out.images, expected)
    assert torch.equal(out.latent_codes, latent_codes)
    assert len(encoder_calls) == 0


def test_eta_reaches_ddim_like_ddim_pipeline(unet, encoder, latent_codes):
    # diffusers' DDIMPipeline passes eta (η) to DDIMScheduler.step: at guidance 0 ours is the same sampler bit for bit
    reference = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    reference.set_progress_bar_config(disable=True)
    expected = reference(batch_size=2, num_inference_steps=STEPS, eta=0.7, generator=seed(), output_type="np").images
    pipe = make_pipe(DDIMScheduler(), unet=unet, encoder=encoder)
    out = pipe(batch_size=2, num_inference_steps=STEPS, guidance_scale=0, eta=0.7, generator=seed(), output_type="np")
    np.testing.assert_array_equal(out.images, expected)
    # η changes the guided decode, and η = 0 is the default (deterministic DDIM)
    kwargs = dict(latent_codes=latent_codes, num_inference_steps=STEPS, output_type="pt")
    default = pipe(**kwargs, generator=seed()).images
    assert torch.equal(pipe(**kwargs, eta=0.0, generator=seed()).images, default)
    assert (pipe(**kwargs, eta=1.0, generator=seed()).images - default).abs().max() > 1e-4


def test_custom_timesteps_and_sigmas_as_diffusers_pipelines(unet, encoder, latent_codes):
    # the scheduler's own 50-step grid passed as `timesteps` is the same decode as num_inference_steps=50
    scheduler = DDPMScheduler(clip_sample=False)
    pipe = make_pipe(scheduler, unet=unet, encoder=encoder)
    scheduler.set_timesteps(STEPS)
    grid = scheduler.timesteps.tolist()
    kwargs = dict(latent_codes=latent_codes, guidance_scale=2.0, output_type="pt")
    default = pipe(**kwargs, num_inference_steps=STEPS, generator=seed()).images
    assert torch.equal(pipe(**kwargs, timesteps=grid, generator=seed()).images, default)
    # another grid: its length is the number of steps (num_inference_steps is ignored), and it changes the decode
    calls = []
    hook = unet.register_forward_hook(lambda module, inputs, output: calls.append(1))
    custom = pipe(**kwargs, timesteps=[900, 500, 200, 50, 10], num_inference_steps=STEPS, generator=seed()).images
    hook.remove()
    assert len(calls) == 5 and pipe.num_timesteps == 5
    assert (custom - default).abs().max() > 1e-4
    with pytest.raises(ValueError, match="descending"):
        pipe(**kwargs, timesteps=[10, 500, 900])
    with pytest.raises(ValueError, match="Only one of `timesteps` or `sigmas`"):
        pipe(**kwargs, timesteps=grid, sigmas=[1.0, 0.5])
    # a scheduler whose set_timesteps takes no custom grid says so
    with pytest.raises(ValueError, match="does not support custom timestep schedules"):
        make_pipe(DDIMScheduler(), unet=unet, encoder=encoder)(**kwargs, timesteps=grid)
    # sigmas, for the schedulers that take them (Euler)
    euler = make_pipe(EulerDiscreteScheduler(), unet=unet, encoder=encoder)
    out = euler(**kwargs, sigmas=[14.0, 5.0, 1.0, 0.2], generator=seed()).images
    assert out.shape == default.shape and euler.scheduler.sigmas[0].item() == pytest.approx(14.0)
    assert euler.num_timesteps == len(euler.scheduler.timesteps) < STEPS


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_zero_guidance_equals_plain_loop(unet, latent_codes, scheduler_cls, prediction_type):
    latents = torch.randn(2, 3, 8, 8, generator=seed(5))
    expected = plain_loop(unet, scheduler_cls(prediction_type=prediction_type), latents, STEPS)
    pipe = make_pipe(scheduler_cls(prediction_type=prediction_type), unet=unet)
    out = pipe(
        latent_codes=latent_codes, num_inference_steps=STEPS, guidance_scale=0, latents=latents, output_type="latent"
    )
    assert torch.equal(out.images, expected)
    # and guidance changes the result
    guided = pipe(latent_codes=latent_codes, num_inference_steps=STEPS, latents=latents, output_type="latent").images
    assert (guided - expected).abs().max() > 1e-4


def test_init_noise_sigma_is_read_after_set_timesteps(unet, latent_codes):
    def scheduler():
        return EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1)

    latents = torch.randn(2, 3, 8, 8, generator=seed(5))
    expected = plain_loop(unet, scheduler(), latents, STEPS)
    pipe = make_pipe(scheduler(), unet=unet)
    kwargs = dict(latent_codes=latent_codes, num_inference_steps=STEPS, output_type="latent", guidance_scale=0)
    first = pipe(latents=latents, **kwargs).images
    second = pipe(latents=latents, **kwargs).images
    assert torch.equal(first, second)
    assert torch.equal(first, expected)


# 2. every scheduler x prediction_type pairing that diffusers supports


SCHEDULERS = [
    DDPMScheduler,
    DDIMScheduler,
    PNDMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    UniPCMultistepScheduler,
    DEISMultistepScheduler,
    EulerDiscreteScheduler,
    EulerAncestralDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    LMSDiscreteScheduler,
]
UNSUPPORTED = {  # pairings diffusers' own `step` rejects
    (PNDMScheduler, "sample"): "diffusers' PNDMScheduler supports only epsilon and v_prediction",
    (EulerAncestralDiscreteScheduler, "sample"): "diffusers' EulerAncestralDiscreteScheduler: sample not implemented",
    (KDPM2DiscreteScheduler, "sample"): "diffusers' KDPM2DiscreteScheduler: sample not implemented",
    (KDPM2AncestralDiscreteScheduler, "sample"): "diffusers' KDPM2AncestralDiscreteScheduler: sample not implemented",
}
PAIRINGS = [
    pytest.param(
        cls,
        prediction_type,
        id=f"{cls.__name__}-{prediction_type}",
        marks=[pytest.mark.skip(reason=UNSUPPORTED[cls, prediction_type])]
        if (cls, prediction_type) in UNSUPPORTED
        else [],
    )
    for cls in SCHEDULERS
    for prediction_type in ("epsilon", "v_prediction", "sample")
]


@pytest.mark.parametrize("scheduler_cls, prediction_type", PAIRINGS)
def test_every_scheduler_and_prediction_type_reconstructs(unet, encoder, scheduler_cls, prediction_type):
    pipe = make_pipe(scheduler_cls(prediction_type=prediction_type), unet=unet, encoder=encoder)
    images = images_01()
    out = pipe(image=images, num_inference_steps=STEPS, generator=seed(), output_type="pt")
    assert out.images.shape == (2, 3, 8, 8)
    assert torch.isfinite(out.images).all()
    assert out.images.min() >= 0 and out.images.max() <= 1
    torch.testing.assert_close(out.latent_codes, pipe.encode(images))
    # the encoder term is really applied
    unguided = pipe(image=images, num_inference_steps=STEPS, guidance_scale=0, generator=seed(), output_type="latent")
    guided = pipe(image=images, num_inference_steps=STEPS, generator=seed(), output_type="latent")
    assert torch.isfinite(guided.images).all()
    assert (guided.images - unguided.images).abs().max() > 1e-4


@pytest.mark.parametrize("scheduler_cls", [HeunDiscreteScheduler, KDPM2DiscreteScheduler])
def test_second_order_schedulers_guide_both_model_calls(unet, encoder, latent_codes, scheduler_cls):
    unet_calls, encoder_calls = count_calls(unet), count_calls(encoder)
    pipe = make_pipe(scheduler_cls(), unet=unet, encoder=encoder)
    pipe(latent_codes=latent_codes, num_inference_steps=STEPS, generator=seed(), output_type="pt")
    assert (
        pipe.num_timesteps == len(pipe.scheduler.timesteps) == 2 * STEPS - 1
    )  # two model calls per step but the last
    assert len(encoder_calls) == len(unet_calls) == pipe.num_timesteps


def test_zero_terminal_snr_v_prediction_decodes(unet, encoder, latent_codes):
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")
    pipe = make_pipe(scheduler, unet=unet, encoder=encoder)
    assert torch.isfinite(
        pipe(latent_codes=latent_codes, num_inference_steps=STEPS, guidance_scale=0, output_type="pt").images
    ).all()
    out = pipe(latent_codes=latent_codes, num_inference_steps=STEPS, generator=seed(), output_type="pt")
    assert torch.isfinite(out.images).all()


# 2b. guidance in a limited log-SNR range: the encoder runs exactly at the steps inside it


def record_encoder_log_snrs(encoder) -> list:
    """Record the log-SNR of every encoder forward call (a forward pre-hook); returns the (growing) list."""
    seen = []
    encoder.register_forward_pre_hook(lambda module, args: seen.append(torch.as_tensor(args[1]).reshape(-1)[0].item()))
    return seen


def step_log_snrs(scheduler_cls, num_inference_steps=STEPS) -> list:
    """λ_t of every model call of `scheduler_cls()` (one per entry of `timesteps`: twice per step for Heun)."""
    scheduler = scheduler_cls()
    scheduler.set_timesteps(num_inference_steps)
    return [scheduler_log_snr(scheduler, t).item() for t in scheduler.timesteps]


def test_guidance_log_snr_range_none_or_everything_is_every_step(unet, encoder, latent_codes):
    seen = record_encoder_log_snrs(encoder)
    pipe = make_pipe(DDPMScheduler(), unet=unet, encoder=encoder)
    kwargs = dict(latent_codes=latent_codes, num_inference_steps=STEPS, output_type="latent")
    default = pipe(generator=seed(), **kwargs).images
    assert len(seen) == STEPS
    assert torch.equal(pipe(guidance_log_snr_range=None, generator=seed(), **kwargs).images, default)
    everything = (float("-inf"), float("inf"))
    assert torch.equal(pipe(guidance_log_snr_range=everything, generator=seed(), **kwargs).images, default)
    assert len(seen) == 3 * STEPS and pipe.guidance_log_snr_range == everything


@pytest.mark.parametrize("log_snr_range", [(50.0, 60.0), (float("-inf"), -50.0)], ids=["above", "below"])
def test_guidance_log_snr_range_excluding_every_step_is_unconditional(unet, encoder, latent_codes, log_snr_range):
    seen = record_encoder_log_snrs(encoder)
    pipe = make_pipe(DDPMScheduler(), unet=unet, encoder=encoder)
    kwargs = dict(latent_codes=latent_codes, num_inference_steps=STEPS, output_type="latent")
    unconditional = pipe(guidance_scale=0, generator=seed(), clip_sample=False, **kwargs).images
    out = pipe(guidance_log_snr_range=log_snr_range, generator=seed(), **kwargs)
    assert torch.equal(out.images, unconditional) and torch.equal(out.latent_codes, latent_codes)
    assert seen == []


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, HeunDiscreteScheduler, EulerDiscreteScheduler])
def test_guidance_log_snr_range_runs_the_encoder_exactly_inside_it(unet, encoder, latent_codes, scheduler_cls):
    log_snrs = step_log_snrs(scheduler_cls)
    levels = sorted(set(log_snrs))
    low, high = levels[1], levels[2]  # the range's ends are steps' own levels: the range is closed
    expected = [value for value in log_snrs if low <= value <= high]
    assert 0 < len(expected) < len(log_snrs)

    seen = record_encoder_log_snrs(encoder)
    pipe = make_pipe(scheduler_cls(), unet=unet, encoder=encoder)
    kwargs = dict(latent_codes=latent_codes, num_inference_steps=STEPS, generator=seed(), output_type="latent")
    partial = pipe(guidance_log_snr_range=(low, high), **kwargs).images
    assert seen == pytest.approx(expected, rel=1e-6)  # float32 in the encoder
    unguided = pipe(guidance_scale=0, **kwargs).images
    guided = pipe(**kwargs).images
    assert (partial - unguided).abs().max() > 1e-5 and (partial - guided).abs().max() > 1e-5


def test_guidance_log_snr_range_leaves_the_steps_before_it_unguided(unet, encoder, latent_codes):
    # DDIM runs from low to high λ: with guidance only from the third step on, the first two steps are the prior's
    log_snrs = step_log_snrs(DDIMScheduler)
    pipe = make_pipe(DDIMScheduler(), unet=unet, encoder=encoder)

    def trajectory(**kwargs):
        steps = []

        def record(pipe, i, t, callback_kwargs):
            steps.append(callback_kwargs["latents"].clone())
            return {}

        pipe(latent_codes=latent_codes, num_inference_steps=STEPS, generator=seed(), callback_on_step_end=record,
             **kwargs)  # fmt: skip
        return steps

    partial = trajectory(guidance_log_snr_range=(log_snrs[2], float("inf")))
    unguided, guided = trajectory(guidance_scale=0, clip_sample=False), trajectory()
    assert all(torch.equal(partial[i], unguided[i]) for i in (0, 1))
    assert (partial[2] - unguided[2]).abs().max() > 1e-6 and not torch.equal(partial[-1], guided[-1])


# 3. outputs


def test_output_types_agree():
    pipe = make_pipe()
    z = torch.randn(2, LATENT_DIM, generator=seed(1))
    outputs = {
        output_type: pipe(latent_codes=z, num_inference_steps=STEPS, generator=seed(), output_type=output_type)
        for output_type in ("pil", "np", "pt", "latent")
    }
    assert isinstance(outputs["pt"], ScoreVAEPipelineOutput)
    pt, latent, array, pil = (outputs[k].images for k in ("pt", "latent", "np", "pil"))
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, 8, 8) and 0 <= pt.min() and pt.max() <= 1
    assert isinstance(latent, torch.Tensor) and latent.shape == (2, 3, 8, 8)
    assert isinstance(array, np.ndarray) and array.shape == (2, 8, 8, 3) and array.dtype == np.float32
    assert isinstance(pil, list) and len(pil) == 2
    assert all(isinstance(im, PIL.Image.Image) and im.size == (8, 8) and im.mode == "RGB" for im in pil)
    torch.testing.assert_close(pt, (latent / 2 + 0.5).clamp(0, 1))
    np.testing.assert_allclose(array, pt.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil]), (array * 255).round().astype(np.uint8))
    for out in outputs.values():
        assert torch.equal(out.latent_codes, z)


def test_return_dict_false_gives_tuple():
    pipe = make_pipe()
    z = torch.randn(2, LATENT_DIM, generator=seed(1))
    as_dict = pipe(latent_codes=z, num_inference_steps=STEPS, generator=seed(), output_type="pt")
    as_tuple = pipe(latent_codes=z, num_inference_steps=STEPS, generator=seed(), output_type="pt", return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    assert torch.equal(as_tuple[0], as_dict.images) and torch.equal(as_tuple[1], as_dict.latent_codes)


def test_sampling_without_image_or_codes_draws_codes():
    pipe = make_pipe()
    out = pipe(batch_size=3, num_inference_steps=STEPS, generator=seed(), output_type="pt")
    assert out.images.shape == (3, 3, 8, 8) and out.latent_codes.shape == (3, LATENT_DIM)
    again = pipe(batch_size=3, num_inference_steps=STEPS, generator=seed(), output_type="pt")
    assert torch.equal(out.images, again.images) and torch.equal(out.latent_codes, again.latent_codes)
    # batch_size may be left at 1 or match the codes
    assert (
        pipe(latent_codes=out.latent_codes, batch_size=3, num_inference_steps=1, output_type="pt").images.shape[0] == 3
    )


# 4. inputs: image formats, batch vs single, PIL modes, code lists


def test_image_formats_and_batch_vs_single_give_consistent_codes():
    pipe = make_pipe()
    images = images_01()
    codes = pipe.encode(images)  # torch BCHW
    assert codes.shape == (2, LATENT_DIM)
    uint8 = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    pils = [PIL.Image.fromarray(a) for a in uint8]
    variants = {
        "torch CHW": [pipe.encode(images[0]), pipe.encode(images[1])],
        "numpy BHWC": [pipe.encode(images.permute(0, 2, 3, 1).numpy())],
        "numpy HWC": [
            pipe.encode(images[0].permute(1, 2, 0).numpy()),
            pipe.encode(images[1].permute(1, 2, 0).numpy()),
        ],
        "numpy uint8": [pipe.encode(uint8)],
        "PIL": [pipe.encode(pils[0]), pipe.encode(pils[1])],
        "list of PIL": [pipe.encode(pils)],
        "list of tensors": [pipe.encode([images[0], images[1]])],
    }
    for name, parts in variants.items():
        torch.testing.assert_close(torch.cat(parts), codes, rtol=1e-5, atol=1e-6, msg=name)


def test_batch_and_single_decode_agree_with_one_generator_per_image():
    pipe = make_pipe(DDPMScheduler())
    z = torch.randn(2, LATENT_DIM, generator=seed(1))
    batch = pipe(latent_codes=z, num_inference_steps=STEPS, generator=[seed(10), seed(11)], output_type="pt").images
    for i in range(2):
        single = pipe(latent_codes=z[i : i + 1], num_inference_steps=STEPS, generator=[seed(10 + i)], output_type="pt")
        torch.testing.assert_close(single.images[0], batch[i], rtol=1e-4, atol=1e-5)


def test_reconstruction_from_pil_image(unet, encoder):
    pipe = make_pipe(unet=unet, encoder=encoder)
    image = PIL.Image.fromarray((images_01(1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    out = pipe(image=image, num_inference_steps=STEPS, generator=seed())
    assert len(out.images) == 1 and out.images[0].size == (8, 8)
    torch.testing.assert_close(out.latent_codes, pipe.encode(image))


def test_pil_mode_conversion():
    rgb = PIL.Image.fromarray((images_01(1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), mode="RGB")
    gray = rgb.convert("L")
    pipe_1ch = make_pipe(channels=1)
    torch.testing.assert_close(pipe_1ch.encode(rgb), pipe_1ch.encode(gray))
    assert pipe_1ch(image=rgb, num_inference_steps=2, output_type="pt").images.shape == (1, 1, 8, 8)
    pipe_3ch = make_pipe(channels=3)
    torch.testing.assert_close(pipe_3ch.encode(gray), pipe_3ch.encode(gray.convert("RGB")))
    torch.testing.assert_close(pipe_3ch.encode(rgb.convert("RGBA")), pipe_3ch.encode(rgb))
    assert pipe_3ch(image=gray, num_inference_steps=2, output_type="pt").images.shape == (1, 3, 8, 8)


def test_latent_codes_as_lists():
    pipe = make_pipe()
    z = torch.randn(2, LATENT_DIM, generator=seed(1))
    expected = pipe(latent_codes=z, num_inference_steps=STEPS, generator=seed(), output_type="pt")
    for codes in ([z[0:1], z[1:2]], [z[0], z[1]], [z[0], z[1:2]]):
        out = pipe(latent_codes=codes, num_inference_steps=STEPS, generator=seed(), output_type="pt")
        assert torch.equal(out.latent_codes, z)
        torch.testing.assert_close(out.images, expected.images)


def test_determinism_with_generator_and_generator_list():
    pipe = make_pipe(DDPMScheduler())  # stochastic steps: the generator also feeds scheduler.step
    z = torch.randn(2, LATENT_DIM, generator=seed(1))
    a = pipe(latent_codes=z, num_inference_steps=STEPS, generator=seed(0), output_type="pt").images
    b = pipe(latent_codes=z, num_inference_steps=STEPS, generator=seed(0), output_type="pt").images
    c = pipe(latent_codes=z, num_inference_steps=STEPS, generator=seed(1), output_type="pt").images
    assert torch.equal(a, b) and not torch.allclose(a, c)
    d = pipe(latent_codes=z, num_inference_steps=STEPS, generator=[seed(3), seed(4)], output_type="pt").images
    e = pipe(latent_codes=z, num_inference_steps=STEPS, generator=[seed(3), seed(4)], output_type="pt").images
    assert torch.equal(d, e)


def test_latents_are_scaled_by_init_noise_sigma(latent_codes):
    pipe = make_pipe(EulerDiscreteScheduler())
    unet_calls = count_calls(pipe.unet)
    latents = torch.randn(2, 3, 8, 8, generator=seed(5))
    pipe(latent_codes=latent_codes, num_inference_steps=STEPS, latents=latents, output_type="pt")
    reference = EulerDiscreteScheduler()
    reference.set_timesteps(STEPS)
    assert reference.init_noise_sigma > 10  # a real scaling
    expected_input = reference.scale_model_input(latents * reference.init_noise_sigma, reference.timesteps[0])
    torch.testing.assert_close(unet_calls[0][0], expected_input)



def test_callback_on_step_end_can_replace_latents_and_sees_properties(latent_codes):
    pipe = make_pipe(DDIMScheduler(clip_sample=False))
    seen = []

    def callback(pipeline, step, timestep, callback_kwargs):
        seen.append((step, pipeline.num_timesteps, pipeline.guidance_scale, sorted(callback_kwargs)))
        assert torch.equal(callback_kwargs["latent_codes"], latent_codes)
        if step == pipeline.num_timesteps - 1:
            return {"latents": torch.full_like(callback_kwargs["latents"], 0.25)}
        return {}

    out = pipe(
        latent_codes=latent_codes,
        num_inference_steps=STEPS,
        guidance_scale=1.5,
        output_type="latent",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "latent_codes"],
    )
    assert [s[0] for s in seen] == list(range(STEPS))
    assert all(s[1:] == (STEPS, 1.5, ["latent_codes", "latents"]) for s in seen)
    assert torch.equal(out.images, torch.full((2, 3, 8, 8), 0.25))
    assert pipe.num_timesteps == STEPS and pipe.guidance_scale == 1.5


def test_callback_replacing_latents_mid_loop_changes_the_rest():
    pipe = make_pipe(DDIMScheduler(clip_sample=False))
    z = torch.randn(1, LATENT_DIM, generator=seed(1))
    kwargs = dict(latent_codes=z, num_inference_steps=STEPS, generator=seed(), output_type="latent")
    plain = pipe(**kwargs).images
    zeroed = pipe(**kwargs, callback_on_step_end=lambda p, i, t, kw: {"latents": kw["latents"] * 0} if i == 0 else {})
    assert not torch.allclose(plain, zeroed.images)


def test_encode_sample_posterior():
    pipe = make_pipe()
    images = images_01()
    mean = pipe.encode(images)
    a = pipe.encode(images, sample_posterior=True, generator=seed(7))
    b = pipe.encode(images, sample_posterior=True, generator=seed(7))
    c = pipe.encode(images, sample_posterior=True, generator=[seed(8), seed(9)])
    assert a.shape == mean.shape == c.shape
    assert torch.equal(a, b)
    assert not torch.allclose(a, mean) and not torch.allclose(a, c)


# 5. frozen prior: no gradients into the UNet, scheduler settings untouched


def test_unet_gets_no_gradients(latent_codes):
    pipe = make_pipe()
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    pipe(latent_codes=latent_codes, num_inference_steps=STEPS, generator=seed(), output_type="pt")
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert all(p.grad is None for p in pipe.unet.parameters())
    assert all(p.grad is None for p in pipe.encoder.parameters())


@pytest.mark.parametrize(
    "scheduler",
    [
        DDPMScheduler(clip_sample=True),
        DDIMScheduler(clip_sample=False),
        DDIMScheduler(clip_sample=True, thresholding=True),
        DPMSolverMultistepScheduler(thresholding=True),
        EulerDiscreteScheduler(),
    ],
    ids=lambda s: type(s).__name__,
)
def test_scheduler_config_is_unchanged(scheduler, latent_codes):
    before = dict(scheduler.config)
    pipe = make_pipe(scheduler)
    pipe(latent_codes=latent_codes, num_inference_steps=STEPS, generator=seed(), output_type="pt")
    assert dict(pipe.scheduler.config) == before


# 6. save / load


def test_save_pretrained_round_trip(tmp_path, latent_codes):
    pipe = make_pipe(DDPMScheduler(clip_sample=False))
    pipe.save_pretrained(tmp_path)
    for component in ("unet", "encoder"):
        assert os.path.isfile(tmp_path / component / "diffusion_pytorch_model.safetensors")
        assert not os.path.exists(tmp_path / component / "diffusion_pytorch_model.bin")
    # the remote code plain diffusers loads the folder with (tests/test_remote_code.py), named in list form
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_scorevae", "ScoreVAEPipeline"]
    assert model_index["encoder"] == ["modeling_scorevae_encoder", "ScoreVAEEncoder"]
    assert os.path.isfile(tmp_path / "pipeline_scorevae.py")
    assert os.path.isfile(tmp_path / "encoder" / "modeling_scorevae_encoder.py")

    loaded = ScoreVAEPipeline.from_pretrained(tmp_path)  # the package's own classes: no trust_remote_code
    assert type(loaded) is ScoreVAEPipeline and type(loaded.encoder) is ScoreVAEEncoder
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, DDPMScheduler) and not loaded.scheduler.config.clip_sample
    assert not any(p.requires_grad for p in loaded.unet.parameters())
    for a, b in ((pipe.unet, loaded.unet), (pipe.encoder, loaded.encoder)):
        for p, q in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(p, q)
    kwargs = dict(latent_codes=latent_codes, num_inference_steps=STEPS, output_type="pt")
    assert torch.equal(pipe(**kwargs, generator=seed()).images, loaded(**kwargs, generator=seed()).images)
    images = images_01()
    assert torch.equal(pipe.encode(images), loaded.encode(images))


# 7. bad input: a clear error naming the argument, and the pipeline still works afterwards


def _nan_image():
    image = images_01()
    image[0, 0, 0, 0] = float("nan")
    return image


def _inf_codes():
    z = torch.randn(2, LATENT_DIM)
    z[1, 3] = float("inf")
    return z


BAD_INPUTS = {
    "image and latent_codes": (
        dict(image=images_01(), latent_codes=torch.randn(2, LATENT_DIM)),
        ValueError,
        "latent_codes",
    ),
    "image wrong channels": (dict(image=torch.rand(2, 1, 8, 8)), ValueError, "image"),
    "image wrong size": (dict(image=torch.rand(2, 3, 6, 6)), ValueError, "image"),
    "image wrong ndim": (dict(image=torch.rand(8, 8)), ValueError, "image"),
    "numpy image wrong channels": (dict(image=np.random.rand(8, 8, 2).astype(np.float32)), ValueError, "image"),
    "PIL image wrong size": (dict(image=PIL.Image.new("RGB", (6, 8))), ValueError, "image"),
    "image NaN": (dict(image=_nan_image()), ValueError, "image"),
    "image inf": (dict(image=torch.full((1, 3, 8, 8), float("inf"))), ValueError, "image"),
    "image above 1": (dict(image=torch.full((1, 3, 8, 8), 1.5)), ValueError, "image"),
    "image below 0": (dict(image=torch.full((1, 3, 8, 8), -0.5)), ValueError, "image"),
    "image model space": (dict(image=torch.rand(1, 3, 8, 8) * 2 - 1), ValueError, "image"),
    "image wrong type": (dict(image="cat.png"), TypeError, "image"),
    "image empty list": (dict(image=[]), ValueError, "image"),
    "latent_codes NaN": (dict(latent_codes=torch.full((1, LATENT_DIM), float("nan"))), ValueError, "latent_codes"),
    "latent_codes inf": (dict(latent_codes=_inf_codes()), ValueError, "latent_codes"),
    "latent_codes wrong dim": (dict(latent_codes=torch.randn(2, LATENT_DIM - 1)), ValueError, "latent_codes"),
    "latent_codes 1-d": (dict(latent_codes=torch.randn(LATENT_DIM)), ValueError, "latent_codes"),
    "latent_codes 3-d": (dict(latent_codes=torch.randn(2, LATENT_DIM, 1)), ValueError, "latent_codes"),
    "latent_codes numpy": (dict(latent_codes=np.zeros((2, LATENT_DIM))), TypeError, "latent_codes"),
    "latent_codes list of non-tensors": (dict(latent_codes=[[0.0] * LATENT_DIM]), ValueError, "latent_codes"),
    "num_inference_steps 0": (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    "num_inference_steps -3": (dict(num_inference_steps=-3), ValueError, "num_inference_steps"),
    "guidance_scale < 0": (dict(guidance_scale=-0.5), ValueError, "guidance_scale"),
    "guidance_scale NaN": (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
    "output_type": (dict(output_type="jpeg"), ValueError, "output_type"),
    "guidance_log_snr_range low > high": (
        dict(guidance_log_snr_range=(2.0, 1.0)),
        ValueError,
        "guidance_log_snr_range",
    ),
    "guidance_log_snr_range NaN": (
        dict(guidance_log_snr_range=(float("nan"), 1.0)),
        ValueError,
        "guidance_log_snr_range",
    ),
    "guidance_log_snr_range one number": (dict(guidance_log_snr_range=3.0), ValueError, "guidance_log_snr_range"),
    "guidance_log_snr_range three numbers": (
        dict(guidance_log_snr_range=(0.0, 1.0, 2.0)),
        ValueError,
        "guidance_log_snr_range",
    ),
    "guidance_log_snr_range strings": (dict(guidance_log_snr_range=("0", "1")), ValueError, "guidance_log_snr_range"),
    "generator list too long": (dict(batch_size=2, generator=[seed(), seed(), seed()]), ValueError, "generator"),
    "generator list vs codes": (
        dict(latent_codes=torch.randn(3, LATENT_DIM), generator=[seed()]),
        ValueError,
        "generator",
    ),
    "latents wrong shape": (dict(batch_size=2, latents=torch.randn(2, 3, 4, 4)), ValueError, "latents"),
    "latents wrong batch": (dict(batch_size=2, latents=torch.randn(1, 3, 8, 8)), ValueError, "latents"),
    "latents NaN": (dict(latents=torch.full((1, 3, 8, 8), float("nan"))), ValueError, "latents"),
    "batch_size 0": (dict(batch_size=0), ValueError, "batch_size"),
    "batch_size vs codes": (dict(batch_size=3, latent_codes=torch.randn(2, LATENT_DIM)), ValueError, "batch_size"),
    "eta with DDPM": (dict(eta=0.5), ValueError, "eta"),
    "eta < 0": (dict(eta=-1.0), ValueError, "eta"),
    "eta NaN": (dict(eta=float("nan")), ValueError, "eta"),
    "callback tensor inputs": (
        dict(callback_on_step_end_tensor_inputs=["noise"]),
        ValueError,
        "callback_on_step_end_tensor_inputs",
    ),
}


@pytest.fixture(scope="module")
def shared_pipe():
    return make_pipe(DDPMScheduler())


@pytest.mark.parametrize("kwargs, error, name", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_and_pipeline_still_works(shared_pipe, kwargs, error, name):
    call = dict(num_inference_steps=2, output_type="pt")
    call.update(kwargs)
    with pytest.raises(error, match=re.escape(name)):
        shared_pipe(**call)
    good = shared_pipe(
        latent_codes=torch.zeros(1, LATENT_DIM), num_inference_steps=2, generator=seed(), output_type="pt"
    )
    assert torch.isfinite(good.images).all()


def test_bad_input_to_encode():
    pipe = make_pipe()
    with pytest.raises(ValueError, match="generator"):
        pipe.encode(images_01(2), sample_posterior=True, generator=[seed(), seed(), seed()])
    with pytest.raises(ValueError, match="image"):
        pipe.encode(torch.rand(2, 3, 8, 7))
    assert pipe.encode(images_01(2)).shape == (2, LATENT_DIM)


@pytest.mark.parametrize(
    "encoder_kwargs",
    [dict(in_channels=1), dict(sample_size=16), dict(sample_size=(8, 6))],
    ids=["channels", "size", "non-square"],
)
def test_encoder_that_does_not_match_unet_is_rejected(encoder_kwargs):
    with pytest.raises(ValueError, match="encoder"):
        ScoreVAEPipeline(unet=make_unet(3), scheduler=DDIMScheduler(), encoder=make_encoder(**encoder_kwargs))


def test_non_square_pipeline():
    unet = make_unet(3, sample_size=(8, 12))
    encoder = make_encoder(3, sample_size=(8, 12))
    pipe = make_pipe(unet=unet, encoder=encoder)
    out = pipe(image=torch.rand(1, 3, 8, 12), num_inference_steps=2, generator=seed(), output_type="pt")
    assert out.images.shape == (1, 3, 8, 12)
    with pytest.raises(ValueError, match="image"):
        pipe(image=torch.rand(1, 3, 12, 8), num_inference_steps=2)


# 8. the documented example runs


def test_docstring_example_runs():
    docstring = ScoreVAEPipeline.__call__.__doc__
    blocks = re.findall(r"```py\n(.*?)```", docstring, flags=re.S)
    assert len(blocks) == 1, "ScoreVAEPipeline.__call__ should carry one ```py example"
    example = "\n".join(line.strip() for line in blocks[0].splitlines())
    test = doctest.DocTestParser().get_doctest(example, {}, "ScoreVAEPipeline.__call__", pipeline_scorevae.__file__, 0)
    assert len(test.examples) >= 5
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted == len(test.examples)
