"""The Hub: loading by repo id (through a real Hugging Face cache, offline: see hub_cache.py) and from folders, as
`DiffusionPipeline` loads (weights formats, variants, dtypes); pushing with a model card (uploads captured); the
encoder's prior record."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import diffusers.models.modeling_utils
import diffusers.pipelines.pipeline_utils
import diffusers.utils.hub_utils
import huggingface_hub
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import LATENT_DIM, make_encoder, make_unet
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from hub_cache import go_offline, write_cached_repo
from huggingface_hub import HfApi, ModelCard

from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline
from diffusers_scorevae.hub import (
    PICKLE_HINT,
    as_package_model_index,
    create_model_card,
    describe_prior_compatibility,
    push_pipeline_to_hub,
    select_pipeline_files,
)

PRIOR_RECORD = {
    "name_or_path": "google/ddpm-cifar10-32",
    "revision": None,
    "scheduler": "DDPMScheduler",
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_size": 8,
    "in_channels": 3,
}
PICKLE = b"\x80\x04K\x01."  # a pickle: it must never be fetched, let alone loaded


def encoder_with_prior(seed: int = 0, **kwargs) -> ScoreVAEEncoder:
    """A tiny encoder (random head, `seed`) whose config records `PRIOR_RECORD`."""
    base = make_encoder(**kwargs)
    # (as a keyword: a config copied with `"prior": ...` would drop it, `prior` being in its `_use_default_values`)
    encoder = ScoreVAEEncoder.from_config(base.config, prior=PRIOR_RECORD)
    encoder.load_state_dict(base.state_dict())
    torch.manual_seed(seed)
    torch.nn.init.normal_(encoder.proj_out.weight, std=0.05)
    return encoder.eval()


def tiny_pipeline(seed: int = 0) -> ScoreVAEPipeline:
    return ScoreVAEPipeline(unet=make_unet(), scheduler=DDIMScheduler(), encoder=encoder_with_prior(seed))


def same_weights(a: torch.nn.Module, b: torch.nn.Module, dtype=torch.float32) -> bool:
    """Whether `a` and `b` hold the same weights once both are cast to `dtype` (neither module is changed)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].to(dtype), sb[k].to(dtype)) for k in sa)


EXTRA_REMOTE = {  # what real repos carry beside the weights: never needed
    "README.md": b"# a card\n",
    "samples/grid.png": b"\x89PNG not really",
    "unet/diffusion_pytorch_model.bin": PICKLE,
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A cache holding every repo the loading tests use, and the components they were saved from."""
    root = tmp_path_factory.mktemp("hub")
    cache, src = root / "cache", root / "src"
    parts = SimpleNamespace(cache=cache, commits={})

    # a full ScoreVAE pipeline: main, and a second revision with other encoder weights
    parts.pipe, parts.pipe_v2 = tiny_pipeline(seed=1), tiny_pipeline(seed=2)
    parts.pipe.save_pretrained(src / "scorevae")
    parts.pipe_v2.save_pretrained(src / "scorevae-v2")
    extra = {**EXTRA_REMOTE, "encoder/diffusion_pytorch_model.bin": PICKLE}
    parts.commits["main"] = write_cached_repo(cache, "org/scorevae", src / "scorevae", remote_only=extra)
    parts.commits["v2"] = write_cached_repo(cache, "org/scorevae", src / "scorevae-v2", ref="v2")

    # fp16 variant weights that differ from the plain ones; only the variant files were downloaded
    parts.pipe_fp16 = tiny_pipeline(seed=3)
    parts.pipe_fp16.unet.apply(lambda m: torch.nn.init.normal_(m.weight) if isinstance(m, torch.nn.Conv2d) else None)
    parts.pipe_fp16.to(torch.float16).save_pretrained(src / "scorevae-fp16", variant="fp16")
    parts.pipe_fp16.to(torch.float32)
    plain = {f"{c}/diffusion_pytorch_model.safetensors": b"plain weights, not downloaded" for c in ("unet", "encoder")}
    write_cached_repo(cache, "org/scorevae-fp16", src / "scorevae-fp16", remote_only=plain)

    # a standalone encoder
    parts.encoder = encoder_with_prior(seed=4)
    parts.encoder.save_pretrained(src / "encoder")
    write_cached_repo(cache, "org/encoder", src / "encoder", remote_only={"diffusion_pytorch_model.bin": PICKLE})

    # plain priors: DDPMPipeline with a DDPM scheduler (folders), a DDIM scheduler, and the flat root layout
    parts.unet = make_unet()
    DDPMPipeline(unet=parts.unet, scheduler=DDPMScheduler()).save_pretrained(src / "ddpm")
    write_cached_repo(cache, "google/ddpm-cifar10-32", src / "ddpm", remote_only=EXTRA_REMOTE)
    DDPMPipeline(unet=parts.unet, scheduler=DDIMScheduler(beta_schedule="squaredcos_cap_v2")).save_pretrained(
        src / "ddim"
    )
    write_cached_repo(cache, "org/ddim-prior", src / "ddim", remote_only=EXTRA_REMOTE)
    parts.unet.save_pretrained(src / "flat")
    DDPMScheduler().save_pretrained(src / "flat")
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.1.1"}
    index.update(scheduler=["diffusers", "DDPMScheduler"], unet=["diffusers", "UNet2DModel"])
    (src / "flat" / "model_index.json").write_text(json.dumps(index))
    write_cached_repo(cache, "org/flat-prior", src / "flat", remote_only={"diffusion_pytorch_model.bin": PICKLE})

    # pickles only
    DDPMPipeline(unet=parts.unet, scheduler=DDPMScheduler()).save_pretrained(src / "pickled", safe_serialization=False)
    write_cached_repo(cache, "org/pickled-prior", src / "pickled")
    parts.encoder.save_pretrained(src / "pickled-encoder", safe_serialization=False)
    write_cached_repo(cache, "org/pickled-encoder", src / "pickled-encoder")
    parts.src = src
    return parts


@pytest.fixture
def offline_hub(hub, monkeypatch, tmp_path):
    go_offline(monkeypatch, hub.cache, tmp_path / "hf_home")
    return hub


def strip_remote_code(folder: Path, tmp_path: Path) -> Path:
    """A copy of the saved pipeline `folder` as saves before the remote code wrote it: no `.py` files, the package's
    module names in `model_index.json`, no `auto_map`."""
    old = tmp_path / f"{folder.name}-old"
    shutil.copytree(folder, old, ignore=shutil.ignore_patterns("*.py"))
    index = as_package_model_index(json.loads((old / "model_index.json").read_text()))
    (old / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = json.loads((old / "encoder" / "config.json").read_text())
    config.pop("auto_map")
    (old / "encoder" / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return old


def decode(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    codes = torch.randn(2, LATENT_DIM, generator=torch.Generator().manual_seed(seed))
    return pipe(latent_codes=codes, num_inference_steps=2, generator=torch.manual_seed(seed), output_type="pt").images


# ---------------------------------------------------------------------------------------------------------------------
# loading


def test_pipeline_from_repo_id(offline_hub):
    pipe = ScoreVAEPipeline.from_pretrained("org/scorevae")
    assert isinstance(pipe, ScoreVAEPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.config._name_or_path == "org/scorevae"
    for name in ("unet", "encoder"):
        assert same_weights(getattr(pipe, name), getattr(offline_hub.pipe, name))
    assert torch.equal(decode(pipe), decode(offline_hub.pipe))
    # the README, sample images and .bin pickles of the listing were never downloaded, and were not needed
    snapshot = offline_hub.cache / "models--org--scorevae" / "snapshots" / offline_hub.commits["main"]
    assert not (snapshot / "unet" / "diffusion_pytorch_model.bin").exists()


def test_diffusers_own_download_refuses_a_scorevae_repo(offline_hub, tmp_path):
    """Why `ScoreVAEPipeline.download` exists: with the repo's file listing known (always online), diffusers refuses a
    repo saved before the remote code (its encoder's module is in neither diffusers nor transformers), and a repo
    with the remote code unless `trust_remote_code=True`; `ScoreVAEPipeline` loads both without it."""
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.download("org/scorevae")
    write_cached_repo(offline_hub.cache, "org/scorevae-old", strip_remote_code(offline_hub.src / "scorevae", tmp_path))
    with pytest.raises(ValueError, match="diffusers_scorevae.models.encoder"):
        DiffusionPipeline.download("org/scorevae-old")
    pipe = ScoreVAEPipeline.from_pretrained("org/scorevae-old")
    assert torch.equal(decode(pipe), decode(offline_hub.pipe))


@pytest.mark.parametrize("revision", ["v2", "commit"])
def test_pipeline_revision(offline_hub, revision):
    revision = offline_hub.commits["v2"] if revision == "commit" else revision
    pipe = ScoreVAEPipeline.from_pretrained("org/scorevae", revision=revision)
    assert same_weights(pipe.encoder, offline_hub.pipe_v2.encoder)
    assert not same_weights(pipe.encoder, offline_hub.pipe.encoder)


def test_pipeline_variant_and_dtype(offline_hub):
    # only the fp16 files are in the snapshot: loading must fetch nothing else
    pipe = ScoreVAEPipeline.from_pretrained("org/scorevae-fp16", variant="fp16", torch_dtype=torch.float16)
    assert pipe.unet.dtype == pipe.encoder.dtype == torch.float16
    for name in ("unet", "encoder"):
        assert same_weights(getattr(pipe, name), getattr(offline_hub.pipe_fp16, name), dtype=torch.float16)
    with pytest.raises(ValueError, match="You are trying to load the model files of the `variant=bf16`, but no such"):
        ScoreVAEPipeline.from_pretrained("org/scorevae-fp16", variant="bf16")


def test_pipeline_local_files_only(offline_hub, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # local_files_only alone must suffice
    pipe = ScoreVAEPipeline.from_pretrained("org/scorevae", local_files_only=True, dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16
    assert same_weights(pipe.encoder, offline_hub.pipe.encoder, dtype=torch.float16)


def test_encoder_from_repo_id(offline_hub):
    encoder = ScoreVAEEncoder.from_pretrained("org/encoder")
    assert same_weights(encoder, offline_hub.encoder) and encoder.config.prior == PRIOR_RECORD
    encoder = ScoreVAEEncoder.from_pretrained("org/scorevae", subfolder="encoder", torch_dtype=torch.float16)
    assert encoder.dtype == torch.float16 and same_weights(encoder, offline_hub.pipe.encoder, dtype=torch.float16)


@pytest.mark.parametrize(
    "repo_id, scheduler_cls",
    [("google/ddpm-cifar10-32", DDPMScheduler), ("org/ddim-prior", DDIMScheduler), ("org/flat-prior", DDPMScheduler)],
)
def test_wrap_a_plain_prior(offline_hub, repo_id, scheduler_cls):
    """A DDPMPipeline repo (folders, another scheduler, or the flat layout of early diffusers repos) + an encoder."""
    pipe = ScoreVAEPipeline.from_pretrained(repo_id, encoder=ScoreVAEEncoder.from_pretrained("org/encoder"))
    assert type(pipe) is ScoreVAEPipeline and type(pipe.scheduler) is scheduler_cls
    assert same_weights(pipe.unet, offline_hub.unet) and same_weights(pipe.encoder, offline_hub.encoder)
    reference = ScoreVAEPipeline(unet=offline_hub.unet, scheduler=pipe.scheduler, encoder=offline_hub.encoder)
    assert torch.equal(decode(pipe), decode(reference))
    assert not describe_prior_compatibility(pipe.encoder, pipe.unet, DDPMScheduler())


def test_wrap_a_plain_prior_needs_an_encoder(offline_hub):
    with pytest.raises(ValueError, match="encoder="):
        ScoreVAEPipeline.from_pretrained("google/ddpm-cifar10-32")


@pytest.mark.parametrize("kwargs", [{"in_channels": 1}, {"sample_size": 16}])
def test_encoder_beside_another_unet_is_a_value_error(offline_hub, kwargs):
    with pytest.raises(ValueError, match="encoder models images of"):
        ScoreVAEPipeline.from_pretrained("google/ddpm-cifar10-32", encoder=make_encoder(**kwargs))
    with pytest.raises(ValueError, match="encoder models images of"):
        ScoreVAEPipeline.from_pretrained("org/scorevae", encoder=make_encoder(**kwargs))


def test_bin_weights_load_as_in_diffusers(offline_hub):
    """`.bin`-only weights load by default, as in diffusers (`torch.load(weights_only=True)`: tensors, no code);
    `use_safetensors=True` refuses them."""
    encoder = ScoreVAEEncoder.from_pretrained("org/encoder")

    def pipeline_unet(name, **kwargs):
        return ScoreVAEPipeline.from_pretrained(name, encoder=encoder, **kwargs).unet

    for load, name, reference in (
        (pipeline_unet, "org/pickled-prior", offline_hub.unet),
        (pipeline_unet, offline_hub.src / "pickled", offline_hub.unet),
        (ScoreVAEEncoder.from_pretrained, "org/pickled-encoder", offline_hub.encoder),
        (ScoreVAEEncoder.from_pretrained, offline_hub.src / "pickled-encoder", offline_hub.encoder),
    ):
        # (the pipeline's message adds how to load them; the encoder's is diffusers')
        hint = re.escape(PICKLE_HINT) if load is pipeline_unet else "safetensors"
        with pytest.raises(OSError, match=hint):
            load(name, use_safetensors=True)
        assert same_weights(load(name), reference) and same_weights(load(name, use_safetensors=False), reference)


# ---------------------------------------------------------------------------------------------------------------------
# saving and loading as DiffusionPipeline does


class ReferencePipeline(DiffusionPipeline):
    """The same components loaded by diffusers alone: what `ScoreVAEPipeline.from_pretrained` must match."""

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, encoder: ScoreVAEEncoder):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, encoder=encoder)

    @classmethod
    def load_config(cls, *args, **kwargs):
        # the folder's remote code entries read as the package's classes, as `ScoreVAEPipeline.load_config` reads them
        loaded = super().load_config(*args, **kwargs)
        as_package_model_index(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded


def perturbed(pipe: ScoreVAEPipeline, seed: int) -> ScoreVAEPipeline:
    """`pipe` with other weights in both models, to tell which file a loaded model came from."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (pipe.unet, pipe.encoder):
            for parameter in module.parameters():
                parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    return pipe


def save_folders(root: Path) -> dict:
    """Pipeline folders as diffusers writes them: each weights format, variants, and mixtures; `A` and `B` are two
    sets of weights."""
    a, b = tiny_pipeline(seed=1), perturbed(tiny_pipeline(seed=1), seed=7)
    writes = {
        "safetensors": [lambda d: a.save_pretrained(d)],
        "bin": [lambda d: a.save_pretrained(d, safe_serialization=False)],
        "both": [lambda d: a.save_pretrained(d), lambda d: b.save_pretrained(d, safe_serialization=False)],
        "fp16": [lambda d: a.save_pretrained(d), lambda d: b.save_pretrained(d, variant="fp16")],
        "fp16-bin-only": [lambda d: a.save_pretrained(d, variant="fp16", safe_serialization=False)],
        "unet-fp16-bin": [
            lambda d: a.save_pretrained(d),
            lambda d: b.unet.save_pretrained(d / "unet", variant="fp16", safe_serialization=False),
        ],
        "encoder-bin": [
            lambda d: a.save_pretrained(d),
            lambda d: (d / "encoder" / "diffusion_pytorch_model.safetensors").unlink(),
            lambda d: b.encoder.save_pretrained(d / "encoder", safe_serialization=False),
        ],
        "sharded": [lambda d: a.save_pretrained(d, max_shard_size="40KB")],
        "sharded-bin-fp16": [
            lambda d: a.save_pretrained(d, max_shard_size="40KB", safe_serialization=False, variant="fp16")
        ],
    }
    for name, steps in writes.items():
        for step in steps:
            step(root / name)
    return {"A": a, "B": b, "folders": {name: root / name for name in writes}}


LOAD_KWARGS = [
    {},
    {"use_safetensors": True},
    {"use_safetensors": False},
    {"variant": "fp16"},
    {"variant": "fp16", "use_safetensors": True},
    {"variant": "fp16", "use_safetensors": False},
    {"torch_dtype": torch.float16},
    {"torch_dtype": {"unet": torch.float16, "default": torch.bfloat16}},
    {"dtype": {"encoder": torch.bfloat16}},
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    parts = save_folders(root / "src")
    parts["cache"] = root / "cache"
    for name, folder in parts["folders"].items():
        write_cached_repo(parts["cache"], f"org/saved-{name}", folder)
    return parts


def load_outcome(load, sources: dict) -> tuple:
    """What loading gave: the error type, or each model's dtype and which weights (`sources`' keys) it holds."""
    try:
        pipe = load()
    except (OSError, ValueError) as error:
        return ("error", OSError if isinstance(error, OSError) else ValueError)
    held = {}
    for name in ("unet", "encoder"):
        module = getattr(pipe, name)
        matches = [key for key, source in sources.items() if same_weights(module, getattr(source, name), module.dtype)]
        held[name] = (module.dtype, matches)
    return ("loaded", type(pipe.scheduler).__name__, held)


SAVED_FOLDERS = ["safetensors", "bin", "both", "fp16", "fp16-bin-only", "unet-fp16-bin", "encoder-bin", "sharded"]
SAVED_FOLDERS += ["sharded-bin-fp16"]


@pytest.mark.parametrize("folder", SAVED_FOLDERS)
def test_loading_matches_diffusion_pipeline(saved, folder, monkeypatch, tmp_path):
    """For every weights layout diffusers writes and every `use_safetensors` / `variant` / `torch_dtype` (dtype or
    per-component dict), `ScoreVAEPipeline.from_pretrained` loads what `DiffusionPipeline.from_pretrained` loads (or
    fails as it fails), from the folder and by repo id."""
    go_offline(monkeypatch, saved["cache"], tmp_path)
    sources = {"A": saved["A"], "B": saved["B"]}
    for kwargs in LOAD_KWARGS:
        path = saved["folders"][folder]
        expected = load_outcome(lambda: ReferencePipeline.from_pretrained(path, **kwargs), sources)
        local = load_outcome(lambda: ScoreVAEPipeline.from_pretrained(path, **kwargs), sources)
        by_id = load_outcome(lambda: ScoreVAEPipeline.from_pretrained(f"org/saved-{folder}", **kwargs), sources)
        assert local == by_id == expected, kwargs


@pytest.mark.parametrize("safe_serialization", [True, False])
@pytest.mark.parametrize("variant", [None, "fp16"])
def test_save_pretrained_round_trip(tmp_path, safe_serialization, variant):
    """The diffusers round trip, in every format: `save_pretrained(d, ...)` then `from_pretrained(d)`."""
    pipe = tiny_pipeline(seed=1)
    pipe.save_pretrained(tmp_path, safe_serialization=safe_serialization, variant=variant)
    dtype = torch.float16 if variant else torch.float32
    loaded = ScoreVAEPipeline.from_pretrained(tmp_path, variant=variant, torch_dtype=dtype)
    assert loaded.unet.dtype == loaded.encoder.dtype == dtype
    for name in ("unet", "encoder"):
        assert same_weights(getattr(loaded, name), getattr(pipe, name), dtype)
    if variant is None:
        assert torch.equal(decode(loaded), decode(pipe))


def test_torch_dtype_per_component(saved):
    encoder = saved["A"].encoder
    dtypes = {"unet": torch.float16, "encoder": torch.bfloat16}
    pipe = ScoreVAEPipeline.from_pretrained(saved["folders"]["safetensors"], encoder=encoder, torch_dtype=dtypes)
    assert pipe.unet.dtype == torch.float16 and pipe.encoder is encoder and encoder.dtype == torch.float32  # passed
    pipe = ScoreVAEPipeline.from_pretrained(saved["folders"]["safetensors"], torch_dtype={"default": torch.bfloat16})
    assert pipe.unet.dtype == pipe.encoder.dtype == torch.bfloat16


class _RunsCode:
    """Unpickled in full, this creates `path`: what a malicious `.bin` could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_bin_weights_never_run_code(tmp_path):
    """A `.bin` is read with `torch.load(weights_only=True)`: a pickle that would run code is an error, not a run."""
    marker = tmp_path / "code-ran"
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=False)
    weights = tmp_path / "pipe" / "encoder" / "diffusion_pytorch_model.bin"
    torch.save({"proj_out.weight": _RunsCode(marker)}, weights)
    with pytest.raises(OSError):
        ScoreVAEPipeline.from_pretrained(tmp_path / "pipe")
    with pytest.raises(OSError):
        ScoreVAEEncoder.from_pretrained(tmp_path / "pipe", subfolder="encoder")
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # the check is real: a full unpickle runs it
    assert marker.exists()


def test_custom_pipeline_is_refused():
    with pytest.raises(ValueError, match="custom_pipeline"):
        ScoreVAEPipeline.from_pretrained("org/scorevae", custom_pipeline="pipeline_ddpm")


def test_select_pipeline_files():
    files = [
        "model_index.json",
        "README.md",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
        "scheduler/scheduler_config.json",
        "encoder/config.json",
        "encoder/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    index = {"_class_name": "ScoreVAEPipeline", "unet": ["diffusers", "UNet2DModel"]}
    index.update(scheduler=["diffusers", "DDPMScheduler"], encoder=["diffusers_scorevae.models.encoder", "x"])
    assert select_pipeline_files(files, index) == [
        "encoder/config.json",
        "encoder/diffusion_pytorch_model.safetensors",
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    fp16 = select_pipeline_files(files, index, variant="fp16", passed_components=["encoder"])
    assert fp16 == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
    ]
    # use_safetensors as diffusers reads it: None (default) = safetensors where present, False = `.bin` only
    pickles = select_pipeline_files(files, index, use_safetensors=False, passed_components=["encoder"])
    assert "unet/diffusion_pytorch_model.bin" in pickles and "unet/diffusion_pytorch_model.safetensors" not in pickles
    with pytest.raises(OSError, match="no bin weights for `encoder`"):
        select_pipeline_files(files, index, use_safetensors=False)
    assert select_pipeline_files(files, index, use_safetensors=True) == select_pipeline_files(files, index)
    # the variant first (as diffusers picks it in a folder), then the format
    files.append("encoder/diffusion_pytorch_model.fp16.bin")
    assert "encoder/diffusion_pytorch_model.fp16.bin" in select_pipeline_files(files, index, variant="fp16")
    with pytest.raises(OSError, match="no fp16 safetensors weights for `encoder`"):
        select_pipeline_files(files, index, variant="fp16", use_safetensors=True)


def test_hub_code_never_imports_a_model_or_the_pipeline():
    """The models and the pipeline use the Hub code (its mixins); the Hub code never imports them back. Outside the
    hub package it imports only the remote code builder, which imports nothing of the package but the hub's
    `remote_saving` (it reads the package's source files, it does not import them)."""
    import diffusers_scorevae.hub

    folder = Path(diffusers_scorevae.hub.__file__).parent
    for path in [*folder.glob("*.py"), folder.parent / "remote_code.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                modules = ["." * node.level + (node.module or "")]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:  # `.x`: a sibling in the hub package; `..x` or `diffusers_scorevae.x`: outside it
                if path.name == "remote_code.py":
                    assert module in (".hub.remote_saving",) or not module.startswith((".", "diffusers_scorevae"))
                else:
                    allowed = module == "..remote_code"
                    assert allowed or not module.startswith(("..", "diffusers_scorevae")), (path.name, module)


def test_pipeline_from_repo_id_in_a_fresh_process(hub, tmp_path):
    """The most faithful check: the environment is set before huggingface_hub and diffusers are imported."""
    script = textwrap.dedent(
        """
        import torch
        from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline

        pipe = ScoreVAEPipeline.from_pretrained("org/scorevae")
        wrapped = ScoreVAEPipeline.from_pretrained("google/ddpm-cifar10-32", encoder=pipe.encoder)
        encoder = ScoreVAEEncoder.from_pretrained("org/scorevae", subfolder="encoder")
        assert torch.equal(encoder.proj_out.weight, pipe.encoder.proj_out.weight)
        print(type(pipe).__name__, type(wrapped).__name__, type(wrapped.scheduler).__name__)
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": str(hub.cache), "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_TOKEN", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ScoreVAEPipeline", "ScoreVAEPipeline", "DDPMScheduler"]


def test_bundled_large_prior_with_the_bundled_encoder():
    from diffusers_scorevae import pretrained_path

    try:
        prior, bundled = pretrained_path("fashion-mnist-prior-large"), pretrained_path("fashion-mnist")
    except (FileNotFoundError, ValueError):
        pytest.skip("the large prior is not bundled in this checkout")
    encoder = ScoreVAEEncoder.from_pretrained(bundled, subfolder="encoder")
    pipe = ScoreVAEPipeline.from_pretrained(prior, encoder=encoder)
    notes = describe_prior_compatibility(pipe.encoder, pipe.unet, pipe.scheduler)
    assert not any(note.startswith("incompatible") for note in notes)


# ---------------------------------------------------------------------------------------------------------------------
# pushing


@pytest.fixture
def uploads(monkeypatch, tmp_path):
    """Capture what would be uploaded: `HfApi.create_repo` / `upload_folder` copy the folder aside; diffusers' own
    upload path (`diffusers.utils.hub_utils.create_repo` / `upload_folder` / the remote card) must not run."""
    captured = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"me/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, commit_message=None, **kwargs):
        folder = tmp_path / "uploaded" / str(len(captured))
        shutil.copytree(folder_path, folder)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        captured.append(SimpleNamespace(repo_id=repo_id, folder=folder, files=files, message=commit_message))
        return f"https://huggingface.co/{repo_id}/commit/{'0' * 40}"

    def refuse(*args, **kwargs):
        raise AssertionError("diffusers' upload path ran")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    for module in (diffusers.utils.hub_utils, diffusers.pipelines.pipeline_utils, diffusers.models.modeling_utils):
        for name in ("create_repo", "upload_folder", "load_or_create_model_card"):
            monkeypatch.setattr(module, name, refuse, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return captured


def check_card(folder: Path, repo_id: str, snippet: str) -> ModelCard:
    card = ModelCard((folder / "README.md").read_text())
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["license"] == "apache-2.0"
    assert {"scorevae", "diffusers", "vae"} <= set(data["tags"])
    assert data["base_model"] == "google/ddpm-cifar10-32"
    assert f'{snippet}.from_pretrained("{repo_id}")' in card.text
    return card


def check_safetensors_only(files):
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]


def test_pipeline_push_to_hub(uploads, hub, tmp_path, monkeypatch):
    pipe = tiny_pipeline(seed=1)
    metrics = {"reconstruction L2": 1.25, "class kept": 0.875}
    training = {"beta": 0.01, "loss_weighting": "simple", "max_train_steps": 300}
    pipe.push_to_hub("scorevae-tiny", metrics=metrics, training=training, datasets=["uoft-cs/cifar10"])
    (upload,) = uploads
    assert upload.repo_id == "me/scorevae-tiny"
    assert {
        "README.md",
        "model_index.json",
        "encoder/config.json",
        "encoder/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "pipeline_scorevae.py",  # the remote code plain diffusers loads the repo with
        "encoder/modeling_scorevae_encoder.py",
    } == set(upload.files)
    check_safetensors_only(upload.files)
    card = check_card(upload.folder, "me/scorevae-tiny", "ScoreVAEPipeline")
    assert card.data.to_dict()["datasets"] == ["uoft-cs/cifar10"]
    for text in (
        "β (KL weight) | 0.01",
        "loss weighting | simple",
        "| 300 |",
        "latent size | 16",
        "class kept | 0.875",
    ):
        assert text in card.text

    # what was uploaded loads by repo id
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    write_cached_repo(tmp_path / "cache", "me/scorevae-tiny", upload.folder)
    loaded = ScoreVAEPipeline.from_pretrained("me/scorevae-tiny")
    assert same_weights(loaded.encoder, pipe.encoder) and torch.equal(decode(loaded), decode(pipe))


def test_encoder_push_to_hub(uploads):
    encoder = encoder_with_prior(seed=5)
    encoder.push_to_hub("org/encoder-tiny", commit_message="encoder v1")
    (upload,) = uploads
    code = "modeling_scorevae_encoder.py"  # the remote code diffusers' AutoModel loads the repo with
    assert set(upload.files) == {"README.md", "config.json", "diffusion_pytorch_model.safetensors", code}
    assert upload.message == "encoder v1"
    card = check_card(upload.folder, "org/encoder-tiny", "ScoreVAEEncoder")
    assert 'ScoreVAEPipeline.from_pretrained("google/ddpm-cifar10-32", encoder=encoder)' in card.text
    assert "prediction_type | epsilon" in card.text and "## Evaluation" not in card.text


def test_push_into_a_subfolder_writes_no_card(uploads):
    encoder_with_prior().push_to_hub("org/scorevae", subfolder="encoder", variant="fp16")
    code = "modeling_scorevae_encoder.py"
    assert uploads[0].files == ["config.json", "diffusion_pytorch_model.fp16.safetensors", code]


def test_push_refuses_pickles(uploads, tmp_path):
    with pytest.raises(ValueError, match="safe_serialization"):
        encoder_with_prior().push_to_hub("org/encoder", safe_serialization=False)
    with pytest.raises(ValueError, match="safe_serialization"):
        tiny_pipeline().save_pretrained(tmp_path / "p", safe_serialization=False, push_to_hub=True)
    assert not uploads


def test_save_pretrained_push_to_hub_uses_our_card(uploads, tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="org/saved", metrics={"L2": 2.0})
    (upload,) = uploads
    assert (tmp_path / "saved" / "README.md").is_file() and "README.md" in upload.files
    check_safetensors_only(upload.files)
    check_card(upload.folder, "org/saved", "ScoreVAEPipeline")


def test_save_pretrained_keeps_variants(tmp_path):
    """The overridden `save_pretrained` keeps the signature diffusers' pipeline saving inspects for `variant`."""
    tiny_pipeline().save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "encoder" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()


def test_push_pipeline_to_hub_from_a_training_run(uploads, tmp_path):
    output_dir = tmp_path / "run"
    tiny_pipeline().save_pretrained(output_dir)
    (output_dir / "checkpoint-40").mkdir()
    (output_dir / "checkpoint-40" / "optimizer.bin").write_bytes(PICKLE)
    log = [{"step": 20, "loss": 0.5}, {"step": 40, "loss": 0.25}]
    (output_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    args = Namespace(
        beta=0.02,
        latent_dim=LATENT_DIM,
        loss_weighting="min_snr",
        max_train_steps=40,
        dataset_name=None,
        fashion_mnist_dir="/usr/share/datasets/fashion-mnist",
        hub_token=None,
    )
    push_pipeline_to_hub(str(output_dir), "org/run", args)
    (upload,) = uploads
    assert not [f for f in upload.files if f.startswith("checkpoint") or f.endswith(".jsonl")]
    check_safetensors_only(upload.files)
    card = check_card(upload.folder, "org/run", "ScoreVAEPipeline")
    assert card.data.to_dict()["datasets"] == ["zalando-datasets/fashion_mnist"]
    for text in ("β (KL weight) | 0.02", "loss weighting | min_snr", "training steps (done) | 40", "| 0.25 |"):
        assert text in card.text


def test_push_pipeline_to_hub_refuses_bin_weights(uploads, tmp_path):
    tiny_pipeline().save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(OSError, match="no safetensors weights"):
        push_pipeline_to_hub(str(tmp_path), "org/run", Namespace())
    assert not uploads


def test_model_card_of_a_saved_pipeline_folder(tmp_path):
    """`push_pipeline_to_hub` writes the card from the saved configs: the same card as from the loaded pipeline
    (including the prior notes: this pipeline decodes with DDIM, its encoder was trained with DDPM)."""
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path)
    card = create_model_card(tmp_path, "org/x", training={"beta": 0.1})
    assert str(card) == str(create_model_card(pipe, "org/x", training={"beta": 0.1}))
    assert "- scheduler is 'DDIMScheduler', trained with 'DDPMScheduler'" in card.text


def test_training_script_push_to_hub(hub, tmp_path):
    """`examples/train_scorevae_encoder.py --push_to_hub` in a fresh process, with `HfApi`'s upload captured."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        PIL.Image.fromarray(np.full((8, 8, 3), 30 * i, dtype=np.uint8)).save(images / f"{i}.png")
    uploaded, output_dir = tmp_path / "uploaded", tmp_path / "run"
    script = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "train_scorevae_encoder.py"
    )
    argv = [script, "--pretrained_model_name_or_path", str(hub.src / "ddpm"), "--train_data_dir", str(images)]
    argv += [
        "--output_dir",
        str(output_dir),
        "--train_batch_size",
        "4",
        "--max_train_steps",
        "2",
        "--logging_steps",
        "1",
    ]
    argv += ["--encoder_block_out_channels", "8,16", "--encoder_norm_num_groups", "4", "--latent_dim", "8"]
    argv += ["--beta", "0.05", "--logger", "none", "--seed", "0", "--push_to_hub", "--hub_model_id", "org/trained"]
    wrapper = textwrap.dedent(
        f"""
        import runpy, shutil, sys, types
        from huggingface_hub import HfApi

        def create_repo(self, repo_id, **kwargs):
            return types.SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            shutil.copytree(folder_path, {str(uploaded)!r})
            return "https://huggingface.co/" + repo_id

        HfApi.create_repo, HfApi.upload_folder = create_repo, upload_folder
        sys.argv = {argv!r}
        runpy.run_path(sys.argv[0], run_name="__main__")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", wrapper], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(p.relative_to(uploaded).as_posix() for p in uploaded.rglob("*") if p.is_file())
    assert "encoder/diffusion_pytorch_model.safetensors" in files and "README.md" in files
    assert not [f for f in files if f.startswith(("checkpoint", "logs")) or f.endswith(".jsonl")]
    check_safetensors_only(files)
    card = ModelCard((uploaded / "README.md").read_text())
    assert 'ScoreVAEPipeline.from_pretrained("org/trained")' in card.text
    assert "β (KL weight) | 0.05" in card.text and "training steps (done) | 2" in card.text
    assert "latent size | 8" in card.text


@pytest.mark.parametrize("prior_path", ["runs/gpu/prior", "/data/prior", "./prior", "prior"])
def test_model_card_of_an_encoder_trained_against_a_local_prior(prior_path):
    encoder = ScoreVAEEncoder.from_config(make_encoder().config, prior={**PRIOR_RECORD, "name_or_path": prior_path})
    card = create_model_card(encoder, "org/encoder", license="mit")
    assert "base_model" not in card.data.to_dict() and card.data.license == "mit"
    assert prior_path in card.text and 'ScoreVAEEncoder.from_pretrained("org/encoder")' in card.text


# ---------------------------------------------------------------------------------------------------------------------
# the prior record


def test_describe_prior_compatibility():
    encoder, unet = encoder_with_prior(), make_unet()
    assert describe_prior_compatibility(encoder, unet, DDPMScheduler()) == []
    notes = describe_prior_compatibility(
        encoder, unet, DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    )
    assert len(notes) == 3 and not any(n.startswith("incompatible") for n in notes)
    assert any("v_prediction" in n for n in notes)
    notes = describe_prior_compatibility(encoder, make_unet(sample_size=16))
    assert notes == ["incompatible: sample_size is 16, the encoder was trained at 8."]
    assert "records no prior" in describe_prior_compatibility(make_encoder(), unet)[0]
