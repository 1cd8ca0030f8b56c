"""Latent-diffusion priors: ScoreVAEPipeline with a `vae` (a `VQModel` as LDMPipeline's, or an `AutoencoderKL`).

The autoencoder's latent convention (`latent_scaling`, one test per case), a tiny latent pipeline end to end (encode
pixels, decode to pixels, every output type, inversion, interpolation, save / load / push, the LDMPipeline layout), the
refusals (bits/dim in latent space, class-conditional UNets, variance-exploding score models), and the exact
CompVis/ldm-celebahq-256 configs (random weights) loaded offline from a Hugging Face cache, decoding one step.
"""

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_encoder, make_unet
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    ScoreSdeVeScheduler,
    UNet2DModel,
    VQModel,
)
from diffusers.pipelines import LDMPipeline
from hub_cache import go_offline, write_cached_repo
from test_inversion import x_independent_unet

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline
from diffusers_scorevae.autoencoders import latent_scaling, vae_decode, vae_encode
from diffusers_scorevae.hub import load_latent_prior, load_prior
from diffusers_scorevae.interpolation import interpolate

LATENT_SIZE = 8
PIXEL_SIZE = 16  # two encoder blocks: one downsampling


def make_vqmodel(**kwargs) -> VQModel:
    torch.manual_seed(3)
    return VQModel(
        in_channels=3,
        out_channels=3,
        latent_channels=3,
        num_vq_embeddings=32,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=PIXEL_SIZE,
        **kwargs,
    ).eval()


def make_autoencoder_kl(**kwargs) -> AutoencoderKL:
    torch.manual_seed(4)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=4,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=PIXEL_SIZE,
        **kwargs,
    ).eval()


def ldm_folder(tmp_path, vq=None, scheduler=None, drop_scaling_factor=True) -> str:
    """An LDMPipeline saved by diffusers (`unet/`, `vqvae/`, `scheduler/`), its vqvae config without
    `scaling_factor` as CompVis/ldm-celebahq-256's."""
    folder = str(tmp_path / "ldm")
    pipe = LDMPipeline(vqvae=vq or make_vqmodel(), unet=make_unet(3), scheduler=scheduler or DDIMScheduler())
    pipe.save_pretrained(folder)
    if drop_scaling_factor:
        path = os.path.join(folder, "vqvae", "config.json")
        with open(path) as f:
            config = json.load(f)
        config.pop("scaling_factor")
        with open(path, "w") as f:
            json.dump(config, f)
    return folder


def vq_pipeline(tmp_path) -> ScoreVAEPipeline:
    return ScoreVAEPipeline.from_pretrained(ldm_folder(tmp_path), encoder=make_encoder(3))


def kl_pipeline(scheduler=None) -> ScoreVAEPipeline:
    vae = make_autoencoder_kl(scaling_factor=0.5, shift_factor=0.1)
    return ScoreVAEPipeline(
        unet=make_unet(4), scheduler=scheduler or DDPMScheduler(), encoder=make_encoder(4), vae=vae
    )


def images(channels=3, n=2, size=PIXEL_SIZE) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(5))


# ---------------------------------------------------------------------------------------------------------------------
# the latent convention: one rule, one test per case


def test_vqmodel_without_scaling_factor_is_unscaled(tmp_path):
    """CompVis/ldm-celebahq-256: the saved config has no scaling_factor; VQModel fills 0.18215 (which LDMPipeline
    divides by, diffusers #6725), but the model was trained unscaled."""
    built = make_vqmodel()
    assert built.config.scaling_factor == 0.18215  # diffusers' default fill
    assert latent_scaling(built) == (1.0, 0.0)
    folder = tmp_path / "vq"
    built.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("scaling_factor")
    (folder / "config.json").write_text(json.dumps(config))
    loaded = VQModel.from_pretrained(folder)
    assert loaded.config.scaling_factor == 0.18215 and latent_scaling(loaded) == (1.0, 0.0)


def test_vqmodel_with_scaling_factor_uses_it():
    assert latent_scaling(make_vqmodel(scaling_factor=0.5)) == (0.5, 0.0)
    assert latent_scaling(make_vqmodel(scaling_factor=0.18215)) == (0.18215, 0.0)  # given, not defaulted


def test_autoencoder_kl_uses_scaling_and_shift_factor():
    assert latent_scaling(make_autoencoder_kl()) == (0.18215, 0.0)  # as Stable Diffusion pipelines: the config value
    assert latent_scaling(make_autoencoder_kl(scaling_factor=0.5, shift_factor=0.1)) == (0.5, 0.1)


def test_latent_scaling_refuses_other_models():
    with pytest.raises(ValueError, match="vae is a UNet2DModel"):
        latent_scaling(make_unet(3))


def test_vae_encode_decode_follow_the_pipelines_conventions():
    x = images() * 2 - 1
    vq = make_vqmodel(scaling_factor=0.5)
    with torch.no_grad():
        h = vq.encode(x).latents  # before quantisation
        torch.testing.assert_close(vae_encode(vq, x), h * 0.5)
        torch.testing.assert_close(vae_decode(vq, h * 0.5), vq.decode(h).sample)  # LDMPipeline: decode(latents / s)
        kl = make_autoencoder_kl(scaling_factor=0.5, shift_factor=0.1)
        x1 = x[:, :1]
        mean = kl.encode(x1).latent_dist.mean
        torch.testing.assert_close(vae_encode(kl, x1), (mean - 0.1) * 0.5)
        torch.testing.assert_close(vae_decode(kl, (mean - 0.1) * 0.5), kl.decode(mean).sample)


# ---------------------------------------------------------------------------------------------------------------------
# a tiny latent pipeline


def test_ldm_layout_loads_with_the_vqvae_as_vae(tmp_path):
    pipe = vq_pipeline(tmp_path)
    assert isinstance(pipe.vae, VQModel) and not any(p.requires_grad for p in pipe.vae.parameters())
    assert pipe.vae.config.scaling_factor == 1.0  # written explicitly, so that a saved pipeline says it
    assert pipe.image_shape == (3, PIXEL_SIZE, PIXEL_SIZE) and pipe.latent_shape == (3, LATENT_SIZE, LATENT_SIZE)
    unet, scheduler, vae = load_latent_prior(ldm_folder(tmp_path / "again"))
    assert isinstance(vae, VQModel) and latent_scaling(vae) == (1.0, 0.0) and isinstance(scheduler, DDIMScheduler)
    assert len(load_prior(str(tmp_path / "again" / "ldm"))) == 2


def test_encode_takes_pixels_through_the_autoencoder(tmp_path):
    pipe = vq_pipeline(tmp_path)
    x = images()
    codes = pipe.encode(x)
    with torch.no_grad():
        expected = pipe.encoder(vae_encode(pipe.vae, x * 2 - 1), pipe.encoder.config.clean_log_snr).mean
    torch.testing.assert_close(codes, expected)
    pil = [PIL.Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for img in x]
    assert pipe.encode(pil).shape == codes.shape
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):  # latent-sized input is not an image
        pipe.encode(torch.rand(1, 3, LATENT_SIZE, LATENT_SIZE))
    with pytest.raises(ValueError, match="16x16"):
        pipe.encode(PIL.Image.new("RGB", (LATENT_SIZE, LATENT_SIZE)))


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_decode_returns_the_autoencoders_decode_in_every_output_type(tmp_path, kind):
    pipe = vq_pipeline(tmp_path) if kind == "vq" else kl_pipeline()
    channels = pipe.image_shape[0]
    x = images(channels)

    def run(output_type):
        return pipe(image=x, num_inference_steps=2, generator=torch.manual_seed(0), output_type=output_type).images

    latent = run("latent")
    assert latent.shape == (2, *pipe.latent_shape)
    with torch.no_grad():
        expected = (vae_decode(pipe.vae, latent) / 2 + 0.5).clamp(0, 1)
    pt = run("pt")
    assert pt.shape == (2, channels, PIXEL_SIZE, PIXEL_SIZE)
    torch.testing.assert_close(pt, expected)
    np.testing.assert_allclose(run("np"), expected.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    pil = run("pil")
    assert pil[0].size == (PIXEL_SIZE, PIXEL_SIZE)


def test_unguided_decode_is_ldm_pipeline(tmp_path):
    """guidance_scale=0 is LDMPipeline's sampler, bit for bit (with the vqvae's scaling made explicit)."""
    pipe = vq_pipeline(tmp_path)
    ldm = LDMPipeline(vqvae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler)
    kwargs = {"batch_size": 2, "num_inference_steps": 3, "output_type": "np"}
    expected = ldm(generator=torch.manual_seed(0), **kwargs).images
    ours = pipe(guidance_scale=0, generator=torch.manual_seed(0), **kwargs).images
    np.testing.assert_array_equal(ours, expected)


def test_guidance_changes_the_latent_decode(tmp_path):
    pipe = vq_pipeline(tmp_path)
    x = images()
    kwargs = {"num_inference_steps": 2, "output_type": "latent"}
    guided = pipe(image=x, guidance_scale=4.0, generator=torch.manual_seed(0), **kwargs).images
    unguided = pipe(image=x, guidance_scale=0.0, generator=torch.manual_seed(0), **kwargs).images
    assert (guided - unguided).abs().max() > 1e-4


def test_latents_argument_is_in_latent_shape(tmp_path):
    pipe = vq_pipeline(tmp_path)
    noise = torch.randn(1, *pipe.latent_shape)
    assert pipe(batch_size=1, latents=noise, num_inference_steps=1, output_type="pt").images.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"latents has shape \(1, 3, 16, 16\); expected \(1, 3, 8, 8\)"):
        pipe(batch_size=1, latents=torch.randn(1, 3, PIXEL_SIZE, PIXEL_SIZE), num_inference_steps=1)


def test_save_load_and_push_keep_the_autoencoder(tmp_path, monkeypatch):
    pipe = vq_pipeline(tmp_path)
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "VQModel"] and "vqvae" not in index
    assert json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"] == 1.0
    assert (folder / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ScoreVAEPipeline.from_pretrained(folder)
    assert latent_scaling(loaded.vae) == (1.0, 0.0)
    x = images()
    kwargs = {"num_inference_steps": 2, "output_type": "pt"}
    torch.testing.assert_close(
        loaded(image=x, generator=torch.manual_seed(0), **kwargs).images,
        pipe(image=x, generator=torch.manual_seed(0), **kwargs).images,
    )
    # a pixel pipeline saved now loads without a vae
    pixel = ScoreVAEPipeline(unet=make_unet(3), scheduler=DDPMScheduler(), encoder=make_encoder(3))
    pixel.save_pretrained(tmp_path / "pixel")
    assert ScoreVAEPipeline.from_pretrained(tmp_path / "pixel").vae is None

    uploaded = {}

    def upload_with_model_card(folder, repo_id, **kwargs):
        uploaded.update(files=sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")))

    monkeypatch.setattr("diffusers_scorevae.hub.mixins.upload_with_model_card", upload_with_model_card)
    pipe.push_to_hub("me/scorevae-ldm")
    assert "vae/diffusion_pytorch_model.safetensors" in uploaded["files"]
    assert not [f for f in uploaded["files"] if f.endswith(".bin")]


def test_ldm_repo_id_loads_offline_with_its_vqvae(tmp_path, monkeypatch):
    folder = ldm_folder(tmp_path)
    write_cached_repo(tmp_path / "cache", "org/ldm-tiny", folder)
    go_offline(monkeypatch, tmp_path / "cache", tmp_path / "home")
    pipe = ScoreVAEPipeline.from_pretrained("org/ldm-tiny", encoder=make_encoder(3))
    assert isinstance(pipe.vae, VQModel) and latent_scaling(pipe.vae) == (1.0, 0.0)
    assert pipe.name_or_path == "org/ldm-tiny"
    assert pipe(batch_size=1, num_inference_steps=1, output_type="pt").images.shape == (1, 3, 16, 16)
    unet, scheduler, vae = load_latent_prior("org/ldm-tiny")
    assert isinstance(vae, VQModel)


def test_autoencoder_must_match_the_unet():
    with pytest.raises(ValueError, match="latent_channels=4"):
        kl = make_autoencoder_kl()
        ScoreVAEPipeline(unet=make_unet(3), scheduler=DDPMScheduler(), encoder=make_encoder(3), vae=kl)
    with pytest.raises(ValueError, match="vae is a UNet2DModel"):
        ScoreVAEPipeline(unet=make_unet(3), scheduler=DDPMScheduler(), encoder=make_encoder(3), vae=make_unet(3))
    with pytest.raises(ValueError, match="encoder models images"):  # the encoder works on the latents
        ScoreVAEPipeline(
            unet=make_unet(4), scheduler=DDPMScheduler(), encoder=make_encoder(4, sample_size=PIXEL_SIZE),
            vae=make_autoencoder_kl(),
        )  # fmt: skip


def test_bits_per_dim_refuses_latent_priors(tmp_path):
    pipe = vq_pipeline(tmp_path)
    x = torch.randint(0, 256, (1, 3, PIXEL_SIZE, PIXEL_SIZE)).float() / 255
    for method in (pipe.bits_per_dim, pipe.prior_bits_per_dim):
        with pytest.raises(ValueError, match="continuous latents of its vae"):
            method(x)


def test_inversion_round_trip_in_latent_space(tmp_path):
    """For a noise prediction independent of x (and a zero encoder score) DDIM inversion is exact: inverting images
    and decoding returns their autoencoder latents, and the pixel decode is the autoencoder's reconstruction."""
    scheduler = DDIMScheduler(clip_sample=False)
    pipe = ScoreVAEPipeline(
        unet=x_independent_unet(scheduler), scheduler=scheduler, encoder=make_encoder(3, random_head=False),
        vae=make_vqmodel(scaling_factor=0.7),
    )  # fmt: skip
    x = images()
    inv = pipe.invert(x, num_inference_steps=10)
    assert inv.latents.shape == (2, *pipe.latent_shape)
    kwargs = {"latent_codes": inv.latent_codes, "latents": inv.latents, "num_inference_steps": 10}
    with torch.no_grad():
        target = vae_encode(pipe.vae, x * 2 - 1)
        reconstruction = (vae_decode(pipe.vae, target) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(pipe(output_type="latent", **kwargs).images, target, rtol=0, atol=1e-4)
    torch.testing.assert_close(pipe(output_type="pt", **kwargs).images, reconstruction, rtol=0, atol=1e-3)


@pytest.mark.parametrize("mode", ["z+xT", "z"])
def test_interpolation_with_a_latent_prior(tmp_path, mode):
    pipe = ScoreVAEPipeline.from_pretrained(
        ldm_folder(tmp_path, scheduler=DDIMScheduler(clip_sample=False)), encoder=make_encoder(3)
    )
    x = images()
    out = interpolate(pipe, x[0], x[1], num_points=3, num_inference_steps=2, mode=mode, generator=torch.manual_seed(0))
    assert out.images.shape == (3, 3, PIXEL_SIZE, PIXEL_SIZE) and out.latents.shape == (3, *pipe.latent_shape)


# ---------------------------------------------------------------------------------------------------------------------
# priors the pipeline cannot use: refused by name


def test_class_conditional_unet_is_refused():
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
        layers_per_block=1, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
        num_class_embeds=10,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"class-conditional \(num_class_embeds=10.*Supported: an unconditional"):
        ScoreVAEPipeline(unet=unet, scheduler=DDPMScheduler(), encoder=make_encoder(3))


def test_variance_exploding_score_models_are_refused():
    torch.manual_seed(0)
    ncsnpp_like = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=4,
        layers_per_block=1, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
        time_embedding_type="fourier",
    )  # fmt: skip
    with pytest.raises(ValueError, match="time_embedding_type='fourier'.*score"):
        ScoreVAEPipeline(unet=ncsnpp_like, scheduler=DDPMScheduler(), encoder=make_encoder(3))
    with pytest.raises(ValueError, match="ScoreSdeVeScheduler, which has no variance-preserving"):
        ScoreVAEPipeline(unet=make_unet(3), scheduler=ScoreSdeVeScheduler(), encoder=make_encoder(3))
    pipe = ScoreVAEPipeline(unet=make_unet(3), scheduler=DDPMScheduler(), encoder=make_encoder(3))
    pipe.scheduler = ScoreSdeVeScheduler()  # swapped after construction: refused before any step
    with pytest.raises(ValueError, match="ScoreSdeVeScheduler"):
        pipe(batch_size=1, num_inference_steps=1)


# ---------------------------------------------------------------------------------------------------------------------
# CompVis/ldm-celebahq-256: the exact configs, random weights, from a Hub cache, one step

COMPVIS_UNET = {
    "_class_name": "UNet2DModel",
    "act_fn": "silu",
    "attention_head_dim": 32,
    "block_out_channels": [224, 448, 672, 896],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 64,
    "time_embedding_type": "positional",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
COMPVIS_VQVAE = {
    "_class_name": "VQModel",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 3,
    "layers_per_block": 2,
    "num_vq_embeddings": 8192,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
}
COMPVIS_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0015,
    "clip_sample": False,
    "num_train_timesteps": 1000,
}
COMPVIS_INDEX = {
    "_class_name": "LDMPipeline",
    "_diffusers_version": "0.0.4",
    "scheduler": ["diffusers", "DDIMScheduler"],
    "unet": ["diffusers", "UNet2DModel"],
    "vqvae": ["diffusers", "VQModel"],
}


@pytest.fixture(scope="module")
def compvis_repo(tmp_path_factory):
    """CompVis/ldm-celebahq-256 in a Hugging Face cache: its model_index and configs verbatim (the vqvae's has no
    scaling_factor), random safetensors weights. Built once per module (274M + 55M parameters)."""
    root = tmp_path_factory.mktemp("compvis")
    repo = root / "repo"
    config = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    torch.manual_seed(0)
    unet = UNet2DModel(**config(COMPVIS_UNET))
    vqvae = VQModel(**config(COMPVIS_VQVAE))
    assert sum(p.numel() for p in unet.parameters()) == 274_056_163
    assert sum(p.numel() for p in vqvae.parameters()) == 55_322_782
    unet.save_pretrained(repo / "unet")
    vqvae.save_pretrained(repo / "vqvae")
    del unet, vqvae
    for name, data in (("unet", COMPVIS_UNET), ("vqvae", COMPVIS_VQVAE)):
        (repo / name / "config.json").write_text(json.dumps(data))  # verbatim: no scaling_factor
    (repo / "scheduler").mkdir()
    (repo / "scheduler" / "scheduler_config.json").write_text(json.dumps(COMPVIS_SCHEDULER))
    (repo / "model_index.json").write_text(json.dumps(COMPVIS_INDEX))
    write_cached_repo(root / "cache", "CompVis/ldm-celebahq-256", repo, link=True)
    return root


def test_compvis_ldm_celebahq_256_reconstructs_offline(compvis_repo, monkeypatch):
    go_offline(monkeypatch, compvis_repo / "cache", compvis_repo / "home")
    encoder = ScoreVAEEncoder(sample_size=64, in_channels=3, latent_dim=32)
    torch.nn.init.normal_(encoder.proj_out.weight, std=0.01)
    pipe = ScoreVAEPipeline.from_pretrained("CompVis/ldm-celebahq-256", encoder=encoder)
    assert isinstance(pipe.vae, VQModel) and isinstance(pipe.scheduler, DDIMScheduler)
    assert latent_scaling(pipe.vae) == (1.0, 0.0)  # not VQModel's 0.18215 (diffusers #6725)
    assert pipe.image_shape == (3, 256, 256) and pipe.latent_shape == (3, 64, 64)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    out = pipe(image=image, num_inference_steps=1, generator=torch.manual_seed(0), output_type="np")
    assert out.images.shape == (1, 256, 256, 3) and np.isfinite(out.images).all()
    assert out.latent_codes.shape == (1, 32)
    with pytest.raises(ValueError, match="the UNet models 256x256"):
        pipe.encode(PIL.Image.new("RGB", (64, 64)))


# ---------------------------------------------------------------------------------------------------------------------
# the training script on a latent prior

TRAINING_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                               "train_scorevae_encoder.py")  # fmt: skip


def run_training(args):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, TRAINING_SCRIPT, *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("objective", ["score", "posterior"])
def test_training_script_trains_on_the_latents_of_an_ldm(tmp_path, objective):
    prior = ldm_folder(tmp_path)
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "images")
    for i in range(16):
        PIL.Image.fromarray(rng.integers(0, 255, (PIXEL_SIZE, PIXEL_SIZE, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"{i}.png"
        )
    extra = ["--center_crop"]  # deterministic images: encoded once
    if objective == "posterior":
        teacher = make_encoder(3, latent_dim=8)  # a frozen encoder of clean latents
        teacher.save_pretrained(tmp_path / "teacher")
        extra = ["--random_flip", "--objective", "posterior", "--teacher", str(tmp_path / "teacher")]  # on the fly
    out = tmp_path / "run"
    result = run_training([
        "--pretrained_model_name_or_path", prior, "--train_data_dir", str(tmp_path / "images"),
        "--output_dir", str(out), "--train_batch_size", "4", "--max_train_steps", "2", "--latent_dim", "8",
        "--encoder_block_out_channels", "8,16", "--encoder_norm_num_groups", "4", "--logger", "none", "--seed", "0",
        *extra,
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr + result.stdout
    assert ("16 images encoded once" in log) == (objective == "score"), log[-2000:]
    pipe = ScoreVAEPipeline.from_pretrained(out)
    assert isinstance(pipe.vae, VQModel) and latent_scaling(pipe.vae) == (1.0, 0.0)
    assert pipe.encoder.config.sample_size == LATENT_SIZE and pipe.image_shape == (3, PIXEL_SIZE, PIXEL_SIZE)
    image = PIL.Image.open(tmp_path / "images" / "0.png")
    assert pipe(image=image, num_inference_steps=1, output_type="pil").images[0].size == (PIXEL_SIZE, PIXEL_SIZE)
    # the resolution the encoder sees is the autoencoder's, not the UNet's
    bad = run_training([
        "--pretrained_model_name_or_path", prior, "--train_data_dir", str(tmp_path / "images"),
        "--output_dir", str(tmp_path / "bad"), "--resolution", str(LATENT_SIZE), "--logger", "none",
    ])  # fmt: skip
    assert bad.returncode != 0 and "--resolution 8 does not match the resolution the prior models, 16" in bad.stderr


# ---------------------------------------------------------------------------------------------------------------------
# the command with a latent prior


def test_command_reconstructs_and_interpolates_with_a_latent_prior(tmp_path, capsys):
    from diffusers_scorevae.cli import main

    pipe = vq_pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "pipeline")
    paths = []
    for i, image in enumerate(images()):
        paths.append(str(tmp_path / f"{i}.png"))
        PIL.Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(paths[-1])
    common = ["--num-inference-steps", "2", "--device", "cpu"]
    # --prior: the pipeline's encoder beside an LDMPipeline folder (its vqvae becomes the vae)
    argv = ["reconstruct", *paths, "--pipeline", str(tmp_path / "pipeline"), "--prior", ldm_folder(tmp_path / "p")]
    assert main(argv + ["--output-dir", str(tmp_path / "out"), *common]) == 0
    with PIL.Image.open(tmp_path / "out" / "0_reconstruction.png") as reconstruction:
        assert reconstruction.size == (PIXEL_SIZE, PIXEL_SIZE)
    argv = ["interpolate", *paths, "--pipeline", str(tmp_path / "pipeline"), "--num-points", "3"]
    assert main(argv + ["--output", str(tmp_path / "grid.png"), *common]) == 0
    capsys.readouterr()
    fashion_mnist = "/usr/share/datasets/fashion-mnist"
    if os.path.isdir(fashion_mnist):  # the bound is refused, not computed on latents
        argv = ["evaluate", "--bits-per-dim", "--pipeline", str(tmp_path / "pipeline"), "--num-images", "2"]
        assert main(argv + ["--fashion-mnist-dir", fashion_mnist, *common]) == 2
        assert "continuous latents of its vae" in capsys.readouterr().err
