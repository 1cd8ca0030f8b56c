"""The real Hub priors, offline: `google/ddpm-cifar10-32`, `google/ddpm-celebahq-256` and the diffusers tutorial's
`ddpm-butterflies-128`, with their exact configs and random weights, in each layout (everything at the repo root, as
the `google/ddpm-*` repos keep it, or `unet/` + `scheduler/` folders) and each weights format (`.bin` only, as older
repos have it, or safetensors beside the `.bin`), through a Hugging Face cache (hub_cache.py).

Every way to name a prior takes them: `ScoreVAEPipeline.from_pretrained(repo_id, encoder=...)`, the CLI's
`--prior repo_id` and the training script's `--pretrained_model_name_or_path repo_id`. The large UNets (113.7M
parameters) are built once per module; decoding runs one step.
"""

import importlib.util
import json
import os
import subprocess
import sys
from argparse import Namespace

import numpy as np
import PIL.Image
import pytest
import safetensors.torch
import torch
from conftest import make_unet
from diffusers import DDPMScheduler, UNet2DModel
from hub_cache import go_offline, write_cached_repo

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline
from diffusers_scorevae.cli import main
from diffusers_scorevae.loading import load_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_SCRIPT = os.path.join(ROOT, "examples", "train_scorevae_encoder.py")

# the configs as the Hub repos hold them (keys missing from the early ones take today's defaults)
_DDPM_2022 = {
    "act_fn": "silu",
    "attention_head_dim": None,
    "center_input_sample": False,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "time_embedding_type": "positional",
}
_DDPM_SCHEDULER_2022 = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.1.1",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
}
PRIORS = {
    "cifar10": {
        "repo_id": "google/ddpm-cifar10-32",
        "layout": ("root", "safetensors"),  # the repo as it is on the Hub
        "parameters": 35_746_307,
        "unet": {
            "_class_name": "UNet2DModel",
            "_diffusers_version": "0.1.1",
            **_DDPM_2022,
            "block_out_channels": [128, 256, 256, 256],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
            "sample_size": 32,
        },
        "scheduler": {**_DDPM_SCHEDULER_2022, "variance_type": "fixed_large"},
        "legacy_attention_names": True,
    },
    "celebahq": {
        "repo_id": "google/ddpm-celebahq-256",
        "layout": ("root", "bin"),
        "parameters": 113_673_219,
        "unet": {
            "_class_name": "UNet2DModel",
            "_diffusers_version": "0.1.1",
            **_DDPM_2022,
            "block_out_channels": [128, 128, 256, 256, 512, 512],
            "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
            "sample_size": 256,
        },
        "scheduler": {**_DDPM_SCHEDULER_2022, "variance_type": "fixed_small"},
        "legacy_attention_names": True,
    },
    "butterflies": {  # https://huggingface.co/docs/diffusers/tutorials/basic_training
        "repo_id": "user/ddpm-butterflies-128",
        "layout": ("folders", "safetensors"),
        "parameters": 113_673_219,
        "unet": {
            "_class_name": "UNet2DModel",
            "_diffusers_version": "0.12.0",
            "sample_size": 128,
            "in_channels": 3,
            "out_channels": 3,
            "layers_per_block": 2,
            "block_out_channels": [128, 128, 256, 256, 512, 512],
            "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
        },
        "scheduler": {"_class_name": "DDPMScheduler", "_diffusers_version": "0.12.0", "num_train_timesteps": 1000},
        "legacy_attention_names": False,
    },
}
LAYOUTS = [("root", "bin"), ("root", "safetensors"), ("folders", "bin"), ("folders", "safetensors")]
MODEL_INDEX = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.1.1"}
MODEL_INDEX.update(scheduler=["diffusers", "DDPMScheduler"], unet=["diffusers", "UNet2DModel"])


def repo_id(model: str, layout: str, weights: str) -> str:
    """The real id for the layout the repo has on the Hub; the other layouts get their own ids."""
    prior = PRIORS[model]
    return prior["repo_id"] if (layout, weights) == prior["layout"] else f"{prior['repo_id']}-{layout}-{weights}"


def legacy_attention_names(state_dict: dict) -> dict:
    """The 2022 checkpoints name attention weights `query` / `key` / `value` / `proj_attn` (diffusers renames them)."""
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    renamed = {}
    for key, value in state_dict.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        renamed[key] = value
    return renamed


def tiny_encoder(sample_size: int) -> ScoreVAEEncoder:
    torch.manual_seed(0)
    encoder = ScoreVAEEncoder(
        sample_size=sample_size,
        in_channels=3,
        latent_dim=8,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        norm_num_groups=4,
    )
    torch.nn.init.normal_(encoder.proj_out.weight, std=0.05)  # a non-zero score: decoding runs the guidance term
    return encoder.eval()


def write_prior_files(model: str, unet: UNet2DModel, folder) -> None:
    """The prior's files, once: its configs, and its weights in both formats (`model.bin`, `model.safetensors`)."""
    prior = PRIORS[model]
    folder.mkdir(parents=True)
    state_dict = unet.state_dict()
    if prior["legacy_attention_names"]:
        state_dict = legacy_attention_names(state_dict)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, folder / "model.safetensors")
    torch.save(state_dict, folder / "model.bin")
    (folder / "config.json").write_text(json.dumps(prior["unet"]))
    (folder / "scheduler_config.json").write_text(json.dumps(prior["scheduler"]))
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX))


def write_repo(cache, stage, files, name: str, layout: str, weights: str) -> None:
    """Repo `name` in `layout`, with `weights`, linked to the prior's `files` through a staging folder."""
    repo = stage / name
    unet_dir, scheduler_dir = (repo, repo) if layout == "root" else (repo / "unet", repo / "scheduler")
    for folder in (unet_dir, scheduler_dir):
        folder.mkdir(parents=True, exist_ok=True)
    extension = "bin" if weights == "bin" else "safetensors"
    links = {
        repo / "model_index.json": files / "model_index.json",
        unet_dir / "config.json": files / "config.json",
        unet_dir / f"diffusion_pytorch_model.{extension}": files / f"model.{extension}",
        scheduler_dir / "scheduler_config.json": files / "scheduler_config.json",
    }
    for link, target in links.items():
        link.symlink_to(target)
    # what the Hub lists but loading must not fetch: the card, and the `.bin` weights beside safetensors
    remote_only = {"README.md": b"# DDPM\n"}
    if weights == "safetensors":
        remote_only[(unet_dir / "diffusion_pytorch_model.bin").relative_to(repo).as_posix()] = b"never fetched"
    write_cached_repo(cache, name, repo, remote_only=remote_only, link=True)


@pytest.fixture(scope="module")
def priors(tmp_path_factory):
    """Each prior built once (random weights), its files written once, and the repos of every layout linked to them
    in a Hugging Face cache; plus a small ScoreVAE pipeline of each prior's image size, for the CLI's `--pipeline`."""
    root = tmp_path_factory.mktemp("priors")
    parts = {"cache": root / "cache", "unets": {}, "encoders": {}, "pipelines": {}}
    for model, prior in PRIORS.items():
        torch.manual_seed(0)
        parts["unets"][model] = UNet2DModel.from_config(prior["unet"]).eval()
        write_prior_files(model, parts["unets"][model], root / "files" / model)
        for layout, weights in LAYOUTS:
            name = repo_id(model, layout, weights)
            write_repo(parts["cache"], root / "repos", root / "files" / model, name, layout, weights)

        size = prior["unet"]["sample_size"]
        parts["encoders"][model] = tiny_encoder(size)
        pipeline = ScoreVAEPipeline(
            unet=make_unet(sample_size=size), scheduler=DDPMScheduler(), encoder=parts["encoders"][model]
        )
        parts["pipelines"][model] = root / "scorevae" / model
        pipeline.save_pretrained(parts["pipelines"][model])
    return parts


@pytest.fixture
def offline_priors(priors, monkeypatch, tmp_path):
    go_offline(monkeypatch, priors["cache"], tmp_path / "hf_home")
    return priors


def load_training_script():
    spec = importlib.util.spec_from_file_location("train_scorevae_encoder", TRAINING_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_prior(unet, scheduler, model, priors, scheduler_class=DDPMScheduler):
    prior = PRIORS[model]
    assert type(unet) is UNet2DModel and type(scheduler) is scheduler_class
    assert sum(p.numel() for p in unet.parameters()) == prior["parameters"]
    assert scheduler.config.get("variance_type") == prior["scheduler"].get("variance_type", "fixed_small")
    assert list(unet.config.block_out_channels) == prior["unet"]["block_out_channels"]
    loaded, expected = unet.state_dict(), priors["unets"][model].state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[key], expected[key]) for key in expected)


@pytest.mark.parametrize("layout, weights", LAYOUTS)
@pytest.mark.parametrize("model", list(PRIORS))
def test_every_entry_point_loads_the_prior(offline_priors, model, layout, weights):
    """`ScoreVAEPipeline.from_pretrained(repo_id, encoder=...)`, the CLI's `--prior` and the training script's
    `--pretrained_model_name_or_path`: the same UNet (weights, config) and scheduler from every layout and format."""
    name = repo_id(model, layout, weights)
    encoder = offline_priors["encoders"][model]

    pipe = ScoreVAEPipeline.from_pretrained(name, encoder=encoder)
    assert pipe.encoder is encoder
    check_prior(pipe.unet, pipe.scheduler, model, offline_priors)
    del pipe

    pipe = load_pipeline(str(offline_priors["pipelines"][model]), name, None, torch.device("cpu"))
    assert torch.equal(pipe.encoder.proj_out.weight, encoder.proj_out.weight)
    check_prior(pipe.unet, pipe.scheduler, model, offline_priors)
    del pipe

    unet, scheduler = load_training_script().load_prior(Namespace(pretrained_model_name_or_path=name, revision=None))
    check_prior(unet, scheduler, model, offline_priors)


def test_readme_wraps_a_hub_prior(offline_priors):
    """The README's "Wrap any prior" snippet runs against the real layout."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    snippet = readme[readme.index("**Wrap any prior**") :].split("```python\n", 1)[1]
    namespace = {}
    exec(snippet.split("```", 1)[0], namespace)
    pipe, swapped = namespace["pipe"], namespace["swapped"]
    check_prior(pipe.unet, pipe.scheduler, "cifar10", offline_priors)
    assert pipe.scheduler.config.clip_sample  # the repo's DDPM configuration as saved; guided decodes do not clip
    assert swapped.encoder is pipe.encoder and swapped.decode_defaults == pipe.decode_defaults


@pytest.mark.parametrize("model", list(PRIORS))
def test_cli_reconstructs_with_the_prior(offline_priors, model, tmp_path, capsys):
    """`scorevae reconstruct IMAGE --pipeline P --prior REPO_ID`: one decoding step with each real prior."""
    size = PRIORS[model]["unet"]["sample_size"]
    image = tmp_path / "image.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(image)
    argv = ["reconstruct", str(image), "--pipeline", str(offline_priors["pipelines"][model]), "--prior"]
    argv += [PRIORS[model]["repo_id"], "--num-inference-steps", "1", "--device", "cpu", "--output-dir", str(tmp_path)]
    main(argv)
    assert np.load(tmp_path / "latent_codes.npy").shape == (1, 8)
    with PIL.Image.open(tmp_path / "image_reconstruction.png") as reconstruction:
        assert reconstruction.size == (size, size)


def test_training_script_trains_against_a_hub_prior(priors, tmp_path):
    """`examples/train_scorevae_encoder.py --pretrained_model_name_or_path google/ddpm-cifar10-32` (root layout), in a
    fresh process with the network off: a training step, and a pipeline that loads."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        PIL.Image.fromarray(np.full((32, 32, 3), 60 * i, dtype=np.uint8)).save(images / f"{i}.png")
    argv = [TRAINING_SCRIPT, "--pretrained_model_name_or_path", "google/ddpm-cifar10-32", "--train_data_dir"]
    argv += [str(images), "--output_dir", str(tmp_path / "run"), "--train_batch_size", "2", "--max_train_steps", "1"]
    argv += ["--encoder_block_out_channels", "8,16", "--encoder_norm_num_groups", "4", "--latent_dim", "8"]
    argv += ["--logger", "none", "--seed", "0"]
    env = {**os.environ, "HF_HUB_CACHE": str(priors["cache"]), "HF_HOME": str(tmp_path / "home")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("HF_TOKEN", None)
    result = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    pipe = ScoreVAEPipeline.from_pretrained(tmp_path / "run")
    assert pipe.encoder.config.prior["name_or_path"] == "google/ddpm-cifar10-32"
    assert pipe.unet.config.sample_size == 32 and type(pipe.scheduler) is DDPMScheduler
