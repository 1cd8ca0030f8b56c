"""Decode settings saved with the model (docs/math.md §9): the encoder's config (γ, the log-SNR ranges, realism, the
mean decoder) and the pipeline's `model_index.json` (steps). `None` arguments take them, explicit ones win, they
survive save/load, an encoder saved alone and a prior swap; models saved without them keep the plain defaults. Also
x̂_0 clipping under guidance, and the realism knob on tiny real components."""

import json
import logging
import math

import pytest
import torch
from conftest import LATENT_DIM, SAMPLE_SIZE, make_encoder, make_unet
from diffusers import DDIMScheduler, DDPMScheduler

from diffusers_scorevae import BetaVAE, ScoreVAEEncoder, ScoreVAEPipeline

SETTINGS = dict(
    guidance_scale=2.5, guidance_log_snr_range=(-4.0, None), inversion_log_snr_range=(1.0, None), realism=0.5
)


def make_beta_vae() -> BetaVAE:
    torch.manual_seed(3)
    return BetaVAE(sample_size=SAMPLE_SIZE, in_channels=3, latent_dim=LATENT_DIM, block_out_channels=(8, 16),
                   norm_num_groups=4).eval()  # fmt: skip


def tuned_encoder(**settings) -> ScoreVAEEncoder:
    return make_encoder(3).with_decoder(make_beta_vae(), **{**SETTINGS, **settings}).eval()


def make_pipe(encoder=None, scheduler=None, **kwargs) -> ScoreVAEPipeline:
    pipe = ScoreVAEPipeline(
        unet=make_unet(3), scheduler=scheduler or DDPMScheduler(clip_sample=False), encoder=encoder or make_encoder(3),
        **kwargs,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_unet_calls(pipe) -> list:
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def test_defaults_of_a_model_saved_without_settings():
    assert make_pipe().decode_defaults == {
        "num_inference_steps": 50,
        "guidance_scale": 1.0,
        "guidance_log_snr_range": (-math.inf, math.inf),
        "inversion_log_snr_range": (-math.inf, math.inf),
        "realism": 1.0,
    }


def test_saved_settings_are_the_defaults_and_explicit_arguments_win(latent_codes):
    pipe = make_pipe(tuned_encoder(realism=None), num_inference_steps=7)
    defaults = pipe.decode_defaults
    assert defaults["num_inference_steps"] == 7 and defaults["guidance_scale"] == 2.5
    assert defaults["guidance_log_snr_range"] == (-4.0, math.inf)
    assert defaults["inversion_log_snr_range"] == (1.0, math.inf)
    calls = count_unet_calls(pipe)
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    by_default = pipe(latent_codes=latent_codes, generator=seed(), output_type="pt").images
    assert len(calls) == 7 and pipe.guidance_scale == 2.5 and pipe.guidance_log_snr_range == (-4.0, math.inf)
    explicit = pipe(latent_codes=latent_codes, num_inference_steps=7, guidance_scale=2.5,
                    guidance_log_snr_range=(-4.0, math.inf), generator=seed(), output_type="pt").images  # fmt: skip
    assert torch.equal(by_default, explicit)
    other = pipe(latent_codes=latent_codes, num_inference_steps=3, guidance_scale=1.0, generator=seed(),
                 output_type="pt").images  # fmt: skip
    assert len(calls) == 7 + 7 + 3 and pipe.guidance_scale == 1.0 and not torch.equal(other, by_default)


def test_settings_survive_save_load_an_encoder_alone_and_a_prior_swap(tmp_path):
    pipe = make_pipe(tuned_encoder(), num_inference_steps=9)
    pipe.save_pretrained(tmp_path / "pipe")
    with open(tmp_path / "pipe" / "model_index.json") as f:
        assert json.load(f)["num_inference_steps"] == 9
    with open(tmp_path / "pipe" / "encoder" / "config.json") as f:
        config = json.load(f)
    # JSON has no infinity: an unbounded end is null
    assert config["guidance_log_snr_range"] == [-4.0, None] and config["inversion_log_snr_range"] == [1.0, None]
    loaded = ScoreVAEPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.decode_defaults == pipe.decode_defaults
    codes = torch.ones(1, LATENT_DIM)
    torch.testing.assert_close(loaded.encoder.decode(codes), pipe.encoder.decode(codes))

    pipe.encoder.save_pretrained(tmp_path / "encoder")  # pushed alone, then beside another prior
    encoder = ScoreVAEEncoder.from_pretrained(tmp_path / "encoder")
    make_pipe(scheduler=DDIMScheduler()).save_pretrained(tmp_path / "prior")
    swapped = ScoreVAEPipeline.from_pretrained(tmp_path / "prior", encoder=encoder)
    expected = dict(pipe.decode_defaults, num_inference_steps=50)  # steps belong to the pipeline, not the encoder
    assert swapped.decode_defaults == expected and swapped.encoder.has_decoder


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(guidance_log_snr_range=(2.0, 1.0)), "guidance_log_snr_range"),
        (dict(inversion_log_snr_range=(float("nan"), 1.0)), "inversion_log_snr_range"),
        (dict(realism=1.5), "realism"),
        (dict(strength_at_realism_zero=1.0), "strength_at_realism_zero"),
    ],
)
def test_invalid_saved_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        tuned_encoder(**settings)


def test_realism_below_one_needs_a_mean_decoder(latent_codes):
    with pytest.raises(ValueError, match="mean decoder"):
        ScoreVAEEncoder(sample_size=8, in_channels=3, latent_dim=16, block_out_channels=(8, 16),
                        down_block_types=("DownBlock2D",) * 2, norm_num_groups=4, realism=0.5)  # fmt: skip
    pipe = make_pipe()
    with pytest.raises(ValueError, match="mean decoder"):
        pipe(latent_codes=latent_codes, num_inference_steps=4, realism=0.5)
    for realism in (-0.1, 1.01, float("nan"), True):
        with pytest.raises(ValueError, match="realism"):
            make_pipe(tuned_encoder())(latent_codes=latent_codes, num_inference_steps=4, realism=realism)
    assert pipe(latent_codes=latent_codes, num_inference_steps=2, realism=1.0, output_type="pt").images.shape[0] == 2


def test_realism_refines_the_last_part_of_the_schedule(latent_codes):
    pipe = make_pipe(tuned_encoder())
    calls = count_unet_calls(pipe)
    decoded = pipe.encoder.decode(latent_codes)
    # realism 0 without s_0: the mean estimate itself, no UNet call
    out = pipe(latent_codes=latent_codes, num_inference_steps=20, realism=0.0, output_type="latent").images
    assert calls == [] and torch.equal(out, decoded)
    for realism, steps in [(0.25, 5), (0.5, 10), (1.0, 20)]:
        calls.clear()
        pipe(latent_codes=latent_codes, num_inference_steps=20, realism=realism, output_type="pt")
        assert len(calls) == steps
    # s_0 saved with the encoder: realism r refines over s_0 + (1 - s_0) r of the schedule
    pipe = make_pipe(tuned_encoder(strength_at_realism_zero=0.1))
    calls = count_unet_calls(pipe)
    pipe(latent_codes=latent_codes, num_inference_steps=20, realism=0.0, output_type="pt")
    assert len(calls) == 2 and pipe.realism_strength(0.5) == pytest.approx(0.55)


def test_realism_starts_from_the_noised_mean_estimate(latent_codes):
    # with the UNet predicting zero noise, one DDIM step from x_t returns x̂_0 = x_t / α_t: the start was α x̂ + σ ε
    pipe = make_pipe(tuned_encoder(), scheduler=DDIMScheduler(clip_sample=False, set_alpha_to_one=True))
    pipe.unet.forward = lambda sample, t, **kwargs: type("Out", (), {"sample": torch.zeros_like(sample)})()
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    out = pipe(latent_codes=latent_codes, latents=noise, num_inference_steps=10, realism=0.1, guidance_scale=0,
               output_type="latent").images  # fmt: skip
    alpha_bar = pipe.scheduler.alphas_cumprod[pipe.scheduler.timesteps[-1]]
    start = alpha_bar.sqrt() * pipe.encoder.decode(latent_codes) + (1 - alpha_bar).sqrt() * noise
    expected = start / alpha_bar.sqrt()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_zero_guidance_is_the_unconditional_sampler_whatever_the_saved_realism(latent_codes):
    pipe = make_pipe(tuned_encoder())
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = make_pipe()
    out = pipe(latent_codes=latent_codes, guidance_scale=0, num_inference_steps=5, generator=seed(), output_type="pt")
    reference = plain(batch_size=2, guidance_scale=0, num_inference_steps=5, generator=seed(), output_type="pt")
    assert torch.equal(out.images, reference.images)


def test_guided_decodes_do_not_clip_unless_asked(latent_codes, caplog):
    clipping = make_pipe(scheduler=DDPMScheduler(clip_sample=True))
    unclipped = make_pipe(scheduler=DDPMScheduler(clip_sample=False))
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kwargs = dict(latent_codes=latent_codes, num_inference_steps=4, output_type="latent", guidance_scale=2.0)
    with caplog.at_level(logging.WARNING):
        guided = clipping(generator=seed(), **kwargs).images
        clipping(generator=seed(), **kwargs)
    assert sum("clip" in record.getMessage() for record in caplog.records) == 1  # said once
    assert torch.equal(guided, unclipped(generator=seed(), **kwargs).images)
    asked = clipping(generator=seed(), clip_sample=True, **kwargs).images
    assert torch.equal(asked, unclipped(generator=seed(), clip_sample=True, **kwargs).images)
    assert not torch.equal(asked, guided)
    assert clipping.scheduler.config.clip_sample  # the pipeline's scheduler is left as it was
    with pytest.raises(ValueError, match="clip_sample"):
        clipping(clip_sample="yes", **kwargs)


def test_with_decoder_copies_the_beta_vae_decoder():
    beta_vae = make_beta_vae()
    encoder = make_encoder(3).with_decoder(beta_vae, realism=0.3)
    codes = torch.randn(4, LATENT_DIM, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(encoder.decode(codes), beta_vae.decode(codes))
    assert encoder.config.realism == 0.3 and tuple(encoder.config.decoder_block_out_channels) == (8, 16)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(encoder(x, 1.0).mean, make_encoder(3)(x, 1.0).mean)
    with pytest.raises(ValueError, match="no mean decoder"):
        make_encoder(3).decode(codes)
