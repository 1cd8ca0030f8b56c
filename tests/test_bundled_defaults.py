"""The bundled Fashion-MNIST pipeline decodes with what it was tuned for, with no argument: its saved settings, its
mean decoder (realism), the inversion round trip, and a prior swap that keeps all of it (docs/math.md §9)."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline, metrics, pretrained_path
from diffusers_scorevae.bundled import bundled_test_images


@pytest.fixture(scope="module")
def pipe():
    pipe = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(bundled_test_images()[0][:4]).float().div(255).unsqueeze(1)


def count_unet_calls(pipe) -> tuple[list, object]:
    calls = []
    return calls, pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))


def test_saved_settings(pipe):
    defaults = pipe.decode_defaults
    assert defaults["num_inference_steps"] == 50 and defaults["guidance_scale"] == 3.5
    assert defaults["guidance_log_snr_range"] == (-6.0, math.inf)
    assert defaults["inversion_log_snr_range"] == (2.0, math.inf)
    assert pipe.encoder.has_decoder and 0 < defaults["realism"] < 1
    assert not pipe.scheduler.config.clip_sample


def test_defaults_decode_with_the_saved_realism(pipe, images):
    calls, hook = count_unet_calls(pipe)
    try:
        out = pipe(image=images, generator=torch.Generator().manual_seed(0), output_type="pt")
        strength = pipe.realism_strength(pipe.decode_defaults["realism"])
        assert len(calls) == int(50 * strength) < 50 / 3  # a third of the prior's own sampling, or less
        calls.clear()
        pipe(image=images[:1], realism=1.0, num_inference_steps=3, output_type="pt")
        assert len(calls) == 3
    finally:
        hook.remove()
    assert out.images.shape == images.shape
    # realism 0 is the refined mean estimate: closer to the originals than a posterior sample
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    mean = pipe(image=images, realism=0.0, generator=seed(), output_type="pt").images
    sample = pipe(image=images, realism=1.0, generator=seed(), output_type="pt").images
    assert metrics.l2(mean, images).mean() < metrics.l2(sample, images).mean()


@pytest.mark.parametrize("scheduler", ["bundled", "ddim_from_config"])
def test_inversion_round_trip_with_defaults_alone(pipe, images, scheduler):
    pipe = ScoreVAEPipeline(**pipe.components, num_inference_steps=pipe.config.num_inference_steps)
    pipe.set_progress_bar_config(disable=True)
    if scheduler == "ddim_from_config":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    inv = pipe.invert(images, num_inference_steps=100)
    assert inv.guidance_log_snr_range == (2.0, math.inf) and inv.guidance_scale == 3.5
    out = pipe(latent_codes=inv.latent_codes, latents=inv.latents, num_inference_steps=100, output_type="pt").images
    psnr = metrics.psnr(out, images)
    assert psnr.mean() > 30, psnr  # measured 34.3 dB on the first 32 test images


def test_a_prior_swap_keeps_the_settings_and_the_mean_decoder(pipe):
    encoder = ScoreVAEEncoder.from_pretrained(pretrained_path("fashion-mnist"), subfolder="encoder")
    swapped = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist-prior-large"), encoder=encoder)
    assert swapped.decode_defaults == pipe.decode_defaults and swapped.encoder.has_decoder
    assert swapped.scheduler.config.clip_sample  # the large prior's config clips; its guided decodes do not
