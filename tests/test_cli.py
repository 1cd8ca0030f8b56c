"""The bundled Fashion-MNIST models and the `scorevae` command (run on the real bundled weights, few steps)."""

import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_scorevae import BetaVAE, FashionMNISTClassifier, ScoreVAEPipeline, cli, pretrained_path
from diffusers_scorevae.bundled import bundled_test_images
from diffusers_scorevae.cli import main


def test_bundled_pipeline_loads_and_reconstructs():
    pipe = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))
    assert pipe.unet.dtype == torch.float32  # float16 on disk, float32 in memory
    assert (pipe.unet.config.sample_size, pipe.unet.config.in_channels) == (28, 1)
    images, labels = bundled_test_images()
    assert images.shape[1:] == (28, 28) and images.dtype == np.uint8 and len(labels) == len(images) >= 16
    out = pipe(image=[PIL.Image.fromarray(images[0])], num_inference_steps=3, output_type="np")
    assert out.images.shape == (1, 28, 28, 1) and out.latent_codes.shape == (1, pipe.encoder.config.latent_dim)


def test_bundled_companions_load():
    assert BetaVAE.from_pretrained(pretrained_path("fashion-mnist-beta-vae")).config.latent_dim == 32
    FashionMNISTClassifier.from_pretrained(pretrained_path("fashion-mnist-classifier"))
    large = pretrained_path("fashion-mnist-prior-large")
    assert os.path.isdir(os.path.join(large, "unet")) and os.path.isdir(os.path.join(large, "scheduler"))
    with pytest.raises(ValueError, match="fashion-mnist"):
        pretrained_path("cifar-10")


def test_demo_writes_picture_and_metrics(tmp_path):
    code = main(["demo", "--output-dir", str(tmp_path), "--num-images", "3", "--num-inference-steps", "3"])
    assert code == 0
    assert PIL.Image.open(tmp_path / "reconstructions.png").size[0] > 3 * 28
    metrics = json.load(open(tmp_path / "metrics.json"))
    assert {"num_images", "num_inference_steps", "prior", "scorevae", "beta_vae", "originals"} <= set(metrics)
    for model in ("scorevae", "beta_vae"):
        assert set(metrics[model]) == {"kl", "l2", "psnr", "ssim", "sharpness", "class_kept"}
        assert all(np.isfinite(v) for v in metrics[model].values())
    assert metrics["num_images"] == 3 and metrics["num_inference_steps"] == 3


def test_demo_with_the_large_prior(tmp_path):
    code = main(
        ["demo", "--output-dir", str(tmp_path), "--num-images", "2", "--num-inference-steps", "2"]
        + ["--prior", "fashion-mnist-prior-large"]
    )
    assert code == 0
    assert json.load(open(tmp_path / "metrics.json"))["prior"] == "fashion-mnist-prior-large"


def test_reconstruct_own_images_and_errors(tmp_path, capsys):
    images, _ = bundled_test_images()
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"img{i}.png"))
        PIL.Image.fromarray(images[i]).convert("RGB").save(paths[-1])  # RGB: converted to the prior's 1 channel
    out = tmp_path / "out"
    assert main(["reconstruct", *paths, "--output-dir", str(out), "--num-inference-steps", "2"]) == 0
    assert os.path.exists(out / "img0_reconstruction.png") and np.load(out / "latent_codes.npy").shape[0] == 2

    PIL.Image.new("L", (32, 32)).save(tmp_path / "big.png")
    assert main(["reconstruct", str(tmp_path / "big.png"), "--output-dir", str(out)]) == 2
    assert "32x32" in capsys.readouterr().err
    assert main(["demo", "--num-images", "0", "--output-dir", str(out)]) == 2


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "diffusers_scorevae.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "demo" in result.stdout and "reconstruct" in result.stdout


def test_interpolate_default_range_inverts_the_bundled_encoder_without_diverging():
    # the command's z+xT row starts from DDIM-inverted noise: at its default range that noise must look like N(0, I)
    # and decode back to the images (guided at every step from log-SNR -6 it diverges: x_T std ~25, L2 ~17)
    from diffusers import DDIMScheduler

    from diffusers_scorevae.metrics import l2

    pipe = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe.set_progress_bar_config(disable=True)
    images = torch.from_numpy(bundled_test_images()[0][:4]).float()[:, None] / 255
    settings = dict(num_inference_steps=50, guidance_scale=3.5, guidance_log_snr_range=(2.0, float("inf")))
    inverted = pipe.invert(images, **settings)
    assert inverted.latents.flatten(1).std(dim=1).max() < 1.2
    decoded = pipe(latent_codes=inverted.latent_codes, latents=inverted.latents, output_type="pt", **settings).images
    assert l2(images, decoded).mean() < 1.5


def test_interpolate_writes_a_grid(tmp_path):
    images, _ = bundled_test_images()
    PIL.Image.fromarray(images[0]).save(tmp_path / "a.png")
    PIL.Image.fromarray(images[1]).save(tmp_path / "b.png")
    output = tmp_path / "grid.png"
    args = ["interpolate", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--num-points", "3"]
    assert main(args + ["--num-inference-steps", "3", "--output", str(output)]) == 0
    width, height = PIL.Image.open(output).size
    assert width > 5 * 28 * 3 and height >= 2 * 28 * 3  # A | 3 points | B, two labelled rows


def test_evaluate_bits_per_dim(tmp_path, monkeypatch):
    images, labels = bundled_test_images()
    import diffusers_scorevae.data as data

    monkeypatch.setattr(data, "load_fashion_mnist", lambda split, data_dir=None: (images, labels))
    output = tmp_path / "bpd.json"
    args = ["evaluate", "--bits-per-dim", "--num-images", "2", "--num-sampled-timesteps", "4", "--output", str(output)]
    assert main(args) == 0
    metrics = json.load(open(output))
    assert metrics["num_images_data"] == 2
    assert all(np.isfinite(metrics[k]) for k in metrics if "bits_per_dim" in k)


def test_evaluate_rate_fd_and_samples_per_code(tmp_path, monkeypatch, capsys):
    images, labels = bundled_test_images()
    import diffusers_scorevae.data as data

    monkeypatch.setattr(data, "load_fashion_mnist", lambda split, data_dir=None: (images, labels))
    output = tmp_path / "metrics.json"
    args = ["evaluate", "--num-images", "3", "--num-inference-steps", "2", "--realism", "1", "--output", str(output)]
    assert main(args + ["--num-samples-per-code", "2"]) == 0
    metrics = json.load(open(output))
    assert metrics["num_samples_per_code"] == 2
    scorevae, beta_vae = metrics["scorevae"], metrics["beta_vae"]
    assert {"kl", "l2", "fd", "class_kept", "l2_mean_of_k", "l2_between_decodes"} <= set(scorevae)
    assert {"kl", "l2", "fd", "class_kept"} <= set(beta_vae) and "l2_mean_of_k" not in beta_vae
    assert scorevae["kl"] > 0 and beta_vae["kl"] > 0 and scorevae["l2_between_decodes"] > 0
    assert "l2_between_decodes" in capsys.readouterr().out

    assert main(args + ["--num-samples-per-code", "0"]) == 2
    assert "--num-samples-per-code" in capsys.readouterr().err


def test_demo_shows_a_progress_bar_over_the_denoising_steps(tmp_path):
    # the command as a user runs it; TQDM_MININTERVAL=0 writes every update (the step bar is cleared after each batch)
    env = dict(os.environ, TQDM_MININTERVAL="0", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "diffusers_scorevae.cli", "demo", "--output-dir", str(tmp_path)]
    command += ["--num-images", "3", "--num-inference-steps", "3", "--realism", "1", "--batch-size", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert re.search(r"denoising: +100%\S* 3/3 \[", result.stderr), result.stderr  # each batch's steps, to the end
    assert re.search(r"ScoreVAE reconstruction: +100%\S* 2/2 \[", result.stderr), result.stderr  # and the batches


def test_guidance_log_snr_range_flag_reaches_every_decode(tmp_path, monkeypatch, capsys):
    seen = []
    call = ScoreVAEPipeline.__call__

    def recording_call(self, *args, **kwargs):
        seen.append(kwargs.get("guidance_log_snr_range"))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(ScoreVAEPipeline, "__call__", recording_call)
    flag = ["--guidance-log-snr-range", "-100", "2.5"]
    assert main(["demo", "--output-dir", str(tmp_path), "--num-images", "2", "--num-inference-steps", "2", *flag]) == 0
    assert seen == [(-100.0, 2.5)]
    assert json.load(open(tmp_path / "metrics.json"))["guidance_log_snr_range"] == [-100.0, 2.5]

    images, _ = bundled_test_images()
    PIL.Image.fromarray(images[0]).save(tmp_path / "a.png")
    args = ["reconstruct", str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "out")]
    args += ["--num-inference-steps", "2"]
    assert main(args + ["--guidance-log-snr-range", "0", "inf"]) == 0
    assert seen[-1] == (0.0, float("inf"))
    PIL.Image.fromarray(images[1]).save(tmp_path / "b.png")
    interpolate = ["interpolate", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--num-points", "2"]
    assert main(interpolate + ["--num-inference-steps", "2", "--output", str(tmp_path / "grid.png"), *flag]) == 0
    assert seen[-2:] == [(-100.0, 2.5)] * 2  # the decodes of both rows
    # without the flag, interpolate leaves the range to the model: the inversion range its encoder saved (the
    # bundled encoder's DDIM inversion diverges when guided at noisier steps)
    assert main(interpolate + ["--num-inference-steps", "2", "--output", str(tmp_path / "grid.png")]) == 0
    saved = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist")).decode_defaults
    assert seen[-2:] == [tuple(saved["inversion_log_snr_range"])] * 2 == [(2.0, float("inf"))] * 2

    assert main(args + ["--guidance-log-snr-range", "3", "1"]) == 2  # low > high: the pipeline's ValueError
    assert "guidance_log_snr_range" in capsys.readouterr().err
    assert main(["evaluate", "--bits-per-dim", *flag]) == 2
    assert "--guidance-log-snr-range" in capsys.readouterr().err


def test_decoding_flags_default_to_the_model_and_are_passed_only_when_set(tmp_path, monkeypatch, capsys):
    seen = []
    call = ScoreVAEPipeline.__call__

    @functools.wraps(call)  # the command reads which settings the pipeline takes from its signature
    def recording_call(self, *args, **kwargs):
        seen.append(kwargs)
        return call(self, *args, **{**kwargs, "num_inference_steps": kwargs.get("num_inference_steps", 2)})

    monkeypatch.setattr(ScoreVAEPipeline, "__call__", recording_call)
    images, _ = bundled_test_images()
    PIL.Image.fromarray(images[0]).save(tmp_path / "a.png")
    reconstruct = ["reconstruct", str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "out")]
    assert main(reconstruct) == 0
    for key in ("num_inference_steps", "guidance_scale", "guidance_log_snr_range", "realism", "clip_sample"):
        assert key not in seen[-1], key  # None: the pipeline decodes with what the model saved
    assert main(reconstruct + ["--guidance-scale", "2.5", "--num-inference-steps", "2"]) == 0
    assert seen[-1]["guidance_scale"] == 2.5 and seen[-1]["num_inference_steps"] == 2

    assert main(reconstruct + ["--realism", "1"]) == 0 and seen[-1]["realism"] == 1.0
    capsys.readouterr()
    assert main(reconstruct + ["--realism", "0.5"]) == 0 and seen[-1]["realism"] == 0.5
    # below 1 the decode starts from the encoder's mean decoder, which the latent bundle's encoder lacks: a clear error
    PIL.Image.fromarray(np.pad(images[0], 2)).save(tmp_path / "b.png")  # the latent bundle reads 32x32 images
    latent = ["reconstruct", str(tmp_path / "b.png"), "--output-dir", str(tmp_path / "out"), "--pipeline"]
    assert main(latent + ["fashion-mnist-latent", "--realism", "0.5"]) == 2
    assert "realism=0.5" in capsys.readouterr().err

    # demo records the settings it used: the flags', else the model's
    assert main(["demo", "--output-dir", str(tmp_path / "d"), "--num-images", "2", "--guidance-scale", "2.5"]) == 0
    metrics = json.load(open(tmp_path / "d" / "metrics.json"))
    assert metrics["guidance_scale"] == 2.5 and metrics["num_processes"] == 1
    saved = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist")).decode_defaults
    assert metrics["num_inference_steps"] == saved["num_inference_steps"] == 50
    assert metrics["guidance_log_snr_range"] == list(saved["guidance_log_snr_range"])
    assert metrics["realism"] == saved["realism"] and metrics["clip_sample"] is False


def test_deprecated_names_warn_and_forward(monkeypatch):
    from diffusers_scorevae import evaluation, loading

    with pytest.warns(FutureWarning, match="DEFAULT_GUIDANCE"):
        assert cli.DEFAULT_GUIDANCE == 3.5
    with pytest.warns(FutureWarning, match="loading.resolve"):
        assert cli.resolve("fashion-mnist") == loading.resolve("fashion-mnist")
    with pytest.raises(AttributeError):
        cli.NO_SUCH_NAME  # noqa: B018
    calls = []
    monkeypatch.setattr(loading, "load_pipeline", lambda *args: calls.append(args) or "pipe")
    with pytest.warns(FutureWarning, match="load_pipeline"):
        assert cli.load_pipeline("fashion-mnist", None, "ddim", "cpu") == "pipe"
    assert calls == [("fashion-mnist", None, "ddim", "cpu", None)]
    monkeypatch.setattr(evaluation, "compare", lambda pipe, images, **kwargs: kwargs)
    args = cli.build_parser().parse_args(["demo", "--guidance-scale", "2"])
    with pytest.warns(FutureWarning, match="evaluation.compare"):
        kwargs = cli.compare("pipe", "images", args, "cpu", "beta", "classifier")
    assert kwargs["guidance_scale"] == 2.0 and kwargs["num_inference_steps"] is None and kwargs["beta_vae"] == "beta"


def test_the_command_does_not_import_the_app():
    # the app is imported by `scorevae app` alone; importing the command loads neither gradio nor the app
    code = "import sys, diffusers_scorevae.cli; print('diffusers_scorevae.app' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
