"""The bundled flow-matching prior: its layout, plain diffusers sampling it, and the bundled DDPM-trained encoder
decoding through it with no retraining at the saved settings (docs/math.md §10, docs/results.md)."""

import json
import math
import os

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMPipeline,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    LTXEulerAncestralRFScheduler,
)
from safetensors.torch import load_file

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline, metrics, pretrained_path
from diffusers_scorevae.bundled import bundled_test_images
from diffusers_scorevae.cli import main
from diffusers_scorevae.evaluation import image_generators

FLOW = "fashion-mnist-prior-flow"


@pytest.fixture(scope="module")
def encoder():
    return ScoreVAEEncoder.from_pretrained(pretrained_path("fashion-mnist"), subfolder="encoder")


@pytest.fixture(scope="module")
def flow(encoder):
    pipe = ScoreVAEPipeline.from_pretrained(pretrained_path(FLOW), encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(bundled_test_images()[0][:4]).float().div(255).unsqueeze(1)


def test_layout_and_plain_diffusers_sampling():
    folder = pretrained_path(FLOW)
    with open(os.path.join(folder, "model_index.json")) as f:
        assert json.load(f)["scheduler"] == ["diffusers", "LTXEulerAncestralRFScheduler"]
    weights = load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    assert 2.5e6 < sum(v.numel() for v in weights.values()) < 3.0e6  # about the DDPM prior's size (2.73M)
    # diffusers' own DDPMPipeline loop samples it (UNet at the scheduler's float timesteps, then step)
    pipe = DDPMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, LTXEulerAncestralRFScheduler) and pipe.scheduler.config.shift == 3.0
    out = pipe(batch_size=2, num_inference_steps=4, generator=torch.manual_seed(0), output_type="np").images
    assert out.shape == (2, 28, 28, 1) and np.isfinite(out).all()


def test_the_encoder_brings_its_settings_and_mean_decoder(flow):
    bundled = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))
    assert flow.decode_defaults == bundled.decode_defaults and flow.encoder.has_decoder
    assert isinstance(flow.scheduler, LTXEulerAncestralRFScheduler)


def test_defaults_reconstruct_as_well_as_the_ddpm_bundle(flow, images):
    # the same codes and per-image seeds through both priors at the saved defaults (realism, γ, range, steps)
    bundled = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))
    bundled.set_progress_bar_config(disable=True)
    l2 = {}
    for name, pipe in (("ddpm", bundled), ("flow", flow)):
        out = pipe(image=images, generator=image_generators(0, range(len(images))), output_type="pt").images
        l2[name] = metrics.l2(out, images).mean().item()
    assert l2["flow"] < 1.15 * l2["ddpm"], l2  # measured 1.754 against 1.755 on these four


def test_inversion_round_trip_with_defaults_alone(flow, images):
    inverted = flow.invert(images)
    assert inverted.num_inference_steps == flow.decode_defaults["num_inference_steps"]
    assert inverted.guidance_log_snr_range == (2.0, math.inf)
    out = flow(latent_codes=inverted.latent_codes, latents=inverted.latents, output_type="pt").images
    psnr = metrics.psnr(out, images)
    assert psnr.mean() > 30, psnr  # measured 32.4 dB on these four (25.2, 40.1, 39.6, 24.6)


@pytest.mark.parametrize("scheduler", [FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler])
def test_the_ode_samplers_decode_the_bundled_flow_prior(flow, images, scheduler):
    ode = ScoreVAEPipeline(**{**flow.components, "scheduler": scheduler.from_config(flow.scheduler.config)})
    ode.set_progress_bar_config(disable=True)
    assert ode.scheduler.config.shift == 3.0
    out = ode(image=images[:2], realism=1.0, num_inference_steps=6, generator=torch.manual_seed(0), output_type="pt")
    assert out.images.shape == (2, 1, 28, 28) and torch.isfinite(out.images).all()


def test_demo_with_the_flow_prior(tmp_path):
    code = main(
        ["demo", "--output-dir", str(tmp_path), "--num-images", "2", "--num-inference-steps", "4", "--prior", FLOW]
    )
    assert code == 0
    assert json.load(open(tmp_path / "metrics.json"))["prior"] == FLOW
