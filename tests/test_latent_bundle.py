"""The tooling of the latent Fashion-MNIST bundle: the AutoencoderKL script, the latent modes of the prior and β-VAE
scripts, the teacher check of the encoder script, the pad / crop rule of the evaluation (pixel pipelines unchanged),
the shipped bundle, the missing bundle's error, and scripts/train_latent_bundle.sh rehearsed with TINY=1 on synthetic
data."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_encoder, make_unet
from diffusers import AutoencoderKL, DDPMScheduler
from test_data import write_fashion_mnist

from diffusers_scorevae import ScoreVAEPipeline
from diffusers_scorevae.autoencoders import latent_scaling, load_autoencoder, scaling_factor_given, vae_encode
from diffusers_scorevae.data import pad_images
from diffusers_scorevae.evaluation import (
    autoencoder_reconstruct,
    center_crop,
    center_pad,
    fit_to_pipeline,
    image_generators,
    kl_rate,
    scorevae_decode_samples,
)
from diffusers_scorevae.hub import load_latent_prior
from diffusers_scorevae.models.beta_vae import BetaVAE

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "examples"))
import train_autoencoder_kl  # noqa: E402
import train_beta_vae  # noqa: E402
import train_prior  # noqa: E402
import train_scorevae_encoder  # noqa: E402


def make_autoencoder(sample_size=32, scaling_factor=0.7) -> AutoencoderKL:
    """A tiny AutoencoderKL with three blocks: 32x32x1 -> 8x8x4, as the bundle's."""
    torch.manual_seed(4)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=4,
        block_out_channels=(8, 8, 8),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    ).eval()


def latent_pipeline() -> ScoreVAEPipeline:
    return ScoreVAEPipeline(
        unet=make_unet(4), scheduler=DDPMScheduler(clip_sample=False), encoder=make_encoder(4), vae=make_autoencoder()
    )


def fashion_images(n=3) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------------------------
# the training scripts


def test_autoencoder_script_trains_resumes_and_sets_the_scaling_factor(tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "ae")
    write_fashion_mnist(data, num_train=32, num_test=8)
    common = [
        "--fashion_mnist_dir", data, "--output_dir", out, "--block_out_channels", "8,8,8", "--norm_num_groups", "4",
        "--train_batch_size", "8", "--checkpointing_steps", "2", "--logging_steps", "1",
        "--resume_from_checkpoint", "latest",
    ]  # fmt: skip
    train_autoencoder_kl.main(train_autoencoder_kl.parse_args(common + ["--max_train_steps", "2"]))
    train_autoencoder_kl.main(train_autoencoder_kl.parse_args(common + ["--max_train_steps", "3"]))  # resumes at 2
    with open(os.path.join(out, "train_log.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-3"]
    vae = AutoencoderKL.from_pretrained(out)
    assert os.path.isfile(os.path.join(out, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert scaling_factor_given(vae) and vae.config.scaling_factor == pytest.approx(1 / metrics["latent_std"])
    assert metrics["num_test_images"] == 8 and metrics["test_reconstruction_l2"] > 0
    # the padded training latents, scaled by the pipeline's rule, have unit standard deviation
    images = torch.from_numpy(pad_images(np.stack([np.zeros((28, 28), np.uint8)] * 2), 32)).float()[:, None]
    assert vae_encode(vae, images / 127.5 - 1).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="--resolution 30 must be a multiple of 4"):
        train_autoencoder_kl.parse_args(["--fashion_mnist_dir", data, "--resolution", "30"])


def test_prior_and_beta_vae_latent_modes(tmp_path):
    data, ae = str(tmp_path / "data"), str(tmp_path / "ae")
    write_fashion_mnist(data, num_train=16, num_test=4)
    make_autoencoder().save_pretrained(ae)
    prior = str(tmp_path / "prior")
    train_prior.main(train_prior.parse_args([
        "--fashion_mnist_dir", data, "--vae", ae, "--output_dir", prior, "--block_out_channels", "8,16",
        "--attention_levels", "1", "--attention_head_dim", "8", "--norm_num_groups", "4", "--train_batch_size", "8",
        "--max_train_steps", "2", "--checkpointing_steps", "2",
    ]))  # fmt: skip
    unet, scheduler, vae = load_latent_prior(prior)
    assert (unet.config.in_channels, unet.config.sample_size) == (4, 8) and isinstance(vae, AutoencoderKL)
    assert latent_scaling(vae) == (pytest.approx(0.7), 0.0) and scheduler.config.clip_sample is False
    pipe = ScoreVAEPipeline.from_pretrained(prior, encoder=make_encoder(4))
    assert pipe.image_shape == (1, 32, 32) and pipe.latent_shape == (4, 8, 8)
    with pytest.raises(ValueError, match="--random_flip cannot be combined with --vae"):
        train_prior.parse_args(["--fashion_mnist_dir", data, "--vae", ae, "--random_flip"])

    beta_vae = str(tmp_path / "beta_vae")
    train_beta_vae.main(train_beta_vae.parse_args([
        "--fashion_mnist_dir", data, "--vae", ae, "--output_dir", beta_vae, "--block_out_channels", "8,16",
        "--latent_dim", "4", "--train_batch_size", "8", "--max_train_steps", "2", "--device", "cpu",
    ]))  # fmt: skip
    teacher = BetaVAE.from_pretrained(beta_vae)
    assert (teacher.config.in_channels, teacher.config.sample_size) == (4, 8)
    assert isinstance(load_autoencoder(os.path.join(beta_vae, "vae")), AutoencoderKL)
    train_scorevae_encoder.check_teacher_matches_unet(teacher, unet, beta_vae)  # the latent teacher fits
    pixel_teacher = BetaVAE(sample_size=28, in_channels=1, latent_dim=4, block_out_channels=(8, 16))
    with pytest.raises(
        ValueError, match=r"reads \(in_channels, sample_size\) = \(1, 28\) but the prior's UNet models"
    ):
        train_scorevae_encoder.check_teacher_matches_unet(pixel_teacher, unet, "pixel-beta-vae")


def test_beta_vae_init_model_retunes_beta_from_saved_weights(tmp_path):
    # --init_model starts from a saved β-VAE (its architecture, its weights): how the bundled baseline was moved to the
    # ScoreVAE encoder's rate by a larger β
    data, start, out = str(tmp_path / "data"), str(tmp_path / "start"), str(tmp_path / "retuned")
    write_fashion_mnist(data, num_train=16, num_test=4)
    torch.manual_seed(0)
    BetaVAE(sample_size=28, in_channels=1, latent_dim=4, block_out_channels=(8, 16)).save_pretrained(start)
    args = ["--fashion_mnist_dir", data, "--output_dir", out, "--train_batch_size", "8", "--device", "cpu",
            "--learning_rate", "0", "--max_train_steps", "1", "--beta", "0.05"]  # fmt: skip
    train_beta_vae.main(train_beta_vae.parse_args(args + ["--init_model", start]))
    loaded, initial = BetaVAE.from_pretrained(out), BetaVAE.from_pretrained(start)
    assert loaded.config.latent_dim == 4 and tuple(loaded.config.block_out_channels) == (8, 16)
    for key, value in initial.state_dict().items():  # lr 0: the saved weights, unchanged
        assert torch.equal(loaded.state_dict()[key], value), key
    latent = str(tmp_path / "latent")
    BetaVAE(sample_size=8, in_channels=4, latent_dim=4, block_out_channels=(8, 16)).save_pretrained(latent)
    with pytest.raises(ValueError, match=r"--init_model .* models \(in_channels, sample_size\) = \(4, 8\)"):
        train_beta_vae.main(
            train_beta_vae.parse_args(args + ["--init_model", latent, "--output_dir", str(tmp_path / "x")])
        )


# ---------------------------------------------------------------------------------------------------------------------
# pad and crop in the evaluation


def test_pad_and_crop_rule():
    images = fashion_images()
    padded = center_pad(images, 32, 32)
    assert padded.shape == (3, 1, 32, 32) and torch.equal(center_crop(padded, 28, 28), images)
    assert padded[..., :2, :].abs().sum() == 0 and padded[..., :, -2:].abs().sum() == 0  # black borders
    uint8 = (images[:, 0] * 255).round().byte().numpy()  # the numpy rule of the training scripts agrees
    exact = torch.from_numpy(uint8).float()[:, None] / 255
    np.testing.assert_array_equal(
        pad_images(uint8, 32), (center_pad(exact, 32, 32)[:, 0] * 255).round().byte().numpy()
    )
    with pytest.raises(ValueError, match="never resized"):
        center_pad(images, 24, 24)
    with pytest.raises(ValueError, match="never resized"):
        pad_images(uint8, 24)


def test_pixel_pipelines_are_unchanged(unet_1ch, encoder_1ch):
    pipe = ScoreVAEPipeline(unet=unet_1ch, scheduler=DDPMScheduler(), encoder=encoder_1ch)
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert fit_to_pipeline(pipe, images) is images
    decodes = scorevae_decode_samples(pipe, images, num_inference_steps=2, progress=False)[0]
    direct = pipe(
        latent_codes=pipe.encode(images), num_inference_steps=2, generator=image_generators(0, range(2)),
        output_type="pt",
    ).images  # fmt: skip
    assert torch.equal(decodes, direct)
    with pytest.raises(ValueError, match=r"the pipeline reads \(N, 1, 8, 8\) images"):
        fit_to_pipeline(pipe, torch.rand(1, 1, 10, 10))


def test_latent_pipeline_gets_28x28_metrics():
    pipe = latent_pipeline()
    images = fashion_images()
    decodes = scorevae_decode_samples(pipe, images, num_inference_steps=2, progress=False)
    assert decodes.shape == (1, 3, 1, 28, 28)
    padded = center_pad(images, 32, 32)
    direct = pipe(
        latent_codes=pipe.encode(padded), num_inference_steps=2, generator=image_generators(0, range(len(padded))),
        output_type="pt",
    ).images  # fmt: skip
    assert torch.equal(decodes[0], center_crop(direct, 28, 28))
    # the rate is the encoder's KL on the autoencoder's latents of the padded images
    rate = kl_rate(pipe.encoder, padded, vae=pipe.vae)
    mean, logvar = pipe.encoder(
        vae_encode(pipe.vae, padded * 2 - 1), pipe.encoder.config.clean_log_snr, return_dict=False
    )
    expected = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=1)
    torch.testing.assert_close(rate, expected, rtol=1e-5, atol=1e-5)
    assert autoencoder_reconstruct(pipe, images).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match=r"the pipeline reads \(N, 1, 32, 32\) images"):
        fit_to_pipeline(pipe, torch.rand(1, 3, 28, 28))


def test_demo_with_a_latent_pipeline_reports_28x28_metrics_and_the_floor(tmp_path, capsys):
    from diffusers_scorevae.cli import main

    latent_pipeline().save_pretrained(tmp_path / "pipeline")
    argv = ["demo", "--pipeline", str(tmp_path / "pipeline"), "--num-images", "2", "--num-inference-steps", "1"]
    assert main(argv + ["--output-dir", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    with open(tmp_path / "demo" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["image_shape"] == [1, 32, 32] and metrics["beta_vae"]["kl"] > 0  # the pixel β-VAE beside it
    assert {"l2", "psnr", "ssim", "sharpness", "class_kept"} <= set(metrics["autoencoder"])
    assert "autoencoder" in capsys.readouterr().out


def test_shipped_latent_bundle_loads_reconstructs_and_is_not_offered_as_a_pixel_prior():
    from diffusers_scorevae import app, bundled
    from diffusers_scorevae.metrics import l2

    pipe = ScoreVAEPipeline.from_pretrained(bundled.pretrained_path("fashion-mnist-latent"))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.image_shape == (1, 32, 32) and pipe.latent_shape == (4, 8, 8)
    assert pipe.scheduler.config.clip_sample is False  # latents are not confined to [-1, 1]
    images = torch.from_numpy(bundled.bundled_test_images()[0][:4]).float()[:, None] / 255
    padded = center_pad(images, 32, 32)
    # the shipped autoencoder is the floor: its round trip is far closer than a blank image
    floor = l2(images, center_crop(autoencoder_reconstruct(pipe, padded), 28, 28))
    assert floor.mean() < 0.5 * l2(images, torch.zeros_like(images)).mean()
    codes = pipe.encode(padded)
    assert codes.shape == (4, pipe.encoder.config.latent_dim) and torch.isfinite(codes).all()
    out = pipe(latent_codes=codes, num_inference_steps=3, guidance_scale=2.0, output_type="pt",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.images.shape == (4, 1, 32, 32) and torch.isfinite(out.images).all()
    # swapping priors: a latent prior models another space, so neither side is offered the other
    assert app.bundled_priors(exclude="fashion-mnist") == ["fashion-mnist-prior-large", "fashion-mnist-prior-flow"]
    assert app.bundled_priors(exclude="fashion-mnist-latent") == []
    assert app.available_pipelines() == ["fashion-mnist", "fashion-mnist-latent"]
    # the app, which offers it: a 28×28 image is framed with black (not enlarged); the rate is the KL on the latents
    models = app.load_models("fashion-mnist-latent", device="cpu")
    result = app.reconstruct(models, images[0, 0].numpy(), num_inference_steps=2, num_decodes=2)
    assert result.note == "padded from 28×28 to 32×32 with black" and result.reconstructions.shape == (2, 1, 32, 32)
    assert result.metrics["scorevae"]["kl"] > 0
    # ... and compared as `scorevae evaluate` does: on the 28×28 image inside the frame, the pixel β-VAE beside it
    assert result.metrics["settings"]["compared_on"] == "the 28×28 image inside the black frame"
    inner = center_crop(result.reconstructions[:1], 28, 28)
    assert result.metrics["scorevae"]["l2"] == pytest.approx(l2(images[:1], inner).item(), rel=1e-5)
    assert result.beta_vae.shape == (1, 1, 28, 28) and result.metrics["beta_vae"]["kl"] > 0
    assert result.metrics["scorevae"]["class_kept"] is not None and "class" in result.metrics["original"]
    assert "over the 28×28 image inside the black frame" in app.metrics_markdown(result.metrics)
    # an image resized into the 32×32 frame is not a 28×28 one: no β-VAE or classifier for it
    result = app.reconstruct(models, np.zeros((64, 64), dtype=np.uint8), num_inference_steps=2)
    assert result.beta_vae is None and "beta_vae" not in result.metrics
    assert "compared_on" not in result.metrics["settings"]


def test_unbuilt_bundle_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from diffusers_scorevae import bundled
    from diffusers_scorevae.cli import main

    shutil.copy(os.path.join(bundled.PRETRAINED_DIR, "fashion-mnist-test-images.npz"), tmp_path)
    monkeypatch.setattr(bundled, "PRETRAINED_DIR", str(tmp_path))  # a package without the built bundle
    with pytest.raises(FileNotFoundError, match="not in this installation.*scripts/train_latent_bundle.sh"):
        bundled.pretrained_path("fashion-mnist-latent")
    assert main(["demo", "--pipeline", "fashion-mnist-latent", "--device", "cpu"]) == 2
    assert "train_latent_bundle.sh" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# the whole recipe, rehearsed


def test_tiny_bundle_rehearsal_loads_and_decodes(tmp_path):
    data, work = str(tmp_path / "data"), str(tmp_path / "work")
    write_fashion_mnist(data, num_train=64, num_test=4)
    steps = {f"{stage}_STEPS": "2" for stage in ("AE", "PRIOR", "BETA_VAE", "ENCODER")}
    env = {**os.environ, **steps, "TINY": "1", "WORK": work, "DATA": data, "EVAL_IMAGES": "2", "EVAL_STEPS": "1"}
    env["OMP_NUM_THREADS"] = "1"
    script = os.path.join(ROOT, "scripts", "train_latent_bundle.sh")
    result = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "| ScoreVAE (latent) |" in result.stdout and "autoencoder (floor)" in result.stdout
    with open(os.path.join(work, "report.json")) as f:
        report = json.load(f)
    assert report["num_images"] == 2 and report["decode_seconds_per_image"] > 0
    assert set(report["training_seconds"]) == {"autoencoder", "prior", "beta_vae", "encoder"}

    bundle = os.path.join(work, "fashion-mnist-latent")
    pipe = ScoreVAEPipeline.from_pretrained(bundle)
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.image_shape == (1, 32, 32)
    assert "fashion-mnist-latent" in pipe.encoder.config.prior["name_or_path"]
    from safetensors.torch import load_file

    weights = load_file(os.path.join(bundle, "unet", "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    out = pipe(image=center_pad(fashion_images(1), 32, 32), num_inference_steps=2, output_type="pt")
    assert out.images.shape == (1, 1, 32, 32) and torch.isfinite(out.images).all()

    again = subprocess.run(["bash", script], env=env, capture_output=True, text=True)  # every stage is done
    assert again.returncode == 0 and again.stdout.count("skipped") == 6, again.stdout[-2000:]
