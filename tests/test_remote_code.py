"""Remote code: a folder saved by this package loads in plain diffusers with `trust_remote_code=True` where the package
cannot be imported, and decodes exactly as the package does (the same generator, the same images); the code it ships
is generated from the package's source (`diffusers_scorevae.remote_code`); the package keeps priority over it.

The plain-diffusers side runs once, in a fresh process (tests/remote_load.py) where importing `diffusers_scorevae`
fails; it computes tests/remote_calls.py's outputs on tiny pipelines (pixel with a mean decoder and saved settings,
latent with an AutoencoderKL, a flow-matching prior), on the bundled Fashion-MNIST pipeline and on an encoder-only
folder.
"""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from conftest import make_encoder, make_unet
from diffusers import DDPMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from hub_cache import write_cached_repo
from remote_calls import decode_defaults, pipeline_outputs
from test_hub import strip_remote_code
from test_latent import PIXEL_SIZE, kl_pipeline

import diffusers_scorevae.remote_code as remote_code
from diffusers_scorevae import ScoreVAEEncoder, ScoreVAEPipeline, create_model_card, pretrained_path
from diffusers_scorevae.bundled import bundled_test_images
from diffusers_scorevae.hub.mixins import ENCODER_LIBRARY
from diffusers_scorevae.remote_code import check_remote_code, module_source, remote_code_files, write_remote_code

TESTS = Path(__file__).parent


def pixel_pipeline() -> ScoreVAEPipeline:
    """A tiny pixel pipeline whose saved settings decode at realism 0.5 from the encoder's mean decoder."""
    encoder = make_encoder(3).with_config(
        decoder_block_out_channels=(8, 16), realism=0.5, strength_at_realism_zero=0.1, guidance_scale=2.0
    )
    torch.manual_seed(5)
    for parameter in encoder.decoder.parameters():  # a decoder that is not its initialisation
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    scheduler = DDPMScheduler(num_train_timesteps=100)
    return ScoreVAEPipeline(unet=make_unet(3), scheduler=scheduler, encoder=encoder, num_inference_steps=8)


def images(channels: int, size: int, seed: int) -> np.ndarray:
    return torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(seed)).numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Folders saved by the package, the inputs, and the package's own outputs on them."""
    root = tmp_path_factory.mktemp("remote")
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)  # a flow-matching prior
    pipes = {"pixel": pixel_pipeline(), "latent": kl_pipeline()}
    pipes["flow"] = ScoreVAEPipeline(unet=make_unet(3), scheduler=flow, encoder=make_encoder(3), num_inference_steps=6)
    for name, pipe in pipes.items():
        pipe.save_pretrained(root / name)
    # the bundled pipeline, saved before the remote code existed: the code added to a copy of it
    shutil.copytree(pretrained_path("fashion-mnist"), root / "bundled")
    write_remote_code(root / "bundled")
    pipes["bundled"] = ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist"))
    pipes["pixel"].encoder.save_pretrained(root / "encoder")

    bundled = bundled_test_images()[0][:2, None].astype(np.float32) / 255
    inputs = {"pixel": images(3, 8, 0), "latent": images(1, PIXEL_SIZE, 1), "flow": images(3, 8, 2)}
    inputs.update(bundled=bundled, encoder=inputs["pixel"])
    np.savez(root / "inputs.npz", **inputs)
    outputs = {name: pipeline_outputs(pipe, inputs[name]) for name, pipe in pipes.items()}
    return {"root": root, "pipes": pipes, "inputs": inputs, "outputs": outputs}


@pytest.fixture(scope="module")
def remote(saved, tmp_path_factory):
    """What plain diffusers computes on the saved folders, in a process where this package cannot be imported; the
    pixel pipeline also as a repo id in an offline Hub cache."""
    root, out = saved["root"], tmp_path_factory.mktemp("remote-out")
    cache = root / "hub"
    write_cached_repo(cache, "org/scorevae-remote", root / "pixel")
    spec = {
        "pipelines": {name: str(root / name) for name in ("pixel", "latent", "flow", "bundled")},
        "images": str(root / "inputs.npz"),
        "resave": "pixel",
        "encoder": str(root / "encoder"),
        "hub": {"repo_id": "org/scorevae-remote", "name": "pixel"},
    }
    (root / "spec.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(root / "hf_home"),  # diffusers copies remote modules under HF_HOME/modules
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(TESTS),  # remote_calls.py, nothing of the package
    }
    command = [sys.executable, str(TESTS / "remote_load.py"), str(root / "spec.json"), str(out)]
    result = subprocess.run(command, env=env, cwd=out, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    arrays = dict(np.load(out / "outputs.npz"))
    return {"report": report, "arrays": arrays, "stderr": result.stderr}


def test_the_remote_process_cannot_import_the_package(remote):
    report = remote["report"]
    assert report["package_importable"] is False
    for name, loaded in report["pipelines"].items():
        assert loaded["class"].startswith("diffusers_modules.") and loaded["class"].endswith(".ScoreVAEPipeline"), name
        assert loaded["encoder_class"].endswith("modeling_scorevae_encoder.ScoreVAEEncoder"), name
    # diffusers checks each loaded component against the pipeline's annotation; the encoder's twin class passes
    assert "Expected types for encoder" not in remote["stderr"]


@pytest.mark.parametrize("name", ["pixel", "latent", "flow", "bundled"])
def test_plain_diffusers_decodes_as_the_package(saved, remote, name):
    """`__call__` with the saved settings (realism < 1 for the pixel and bundled pipelines), at realism 1, from
    sampled codes; `encode`; `invert` and the decode of its latents: the same generators give the same arrays."""
    expected = saved["outputs"][name]
    for key, value in expected.items():
        np.testing.assert_allclose(remote["arrays"][f"{name}/{key}"], value, rtol=0, atol=0, err_msg=key)
    assert remote["report"]["pipelines"][name]["decode_defaults"] == decode_defaults(saved["pipes"][name])


def test_the_decodes_compared_are_not_trivial(saved):
    pixel = saved["outputs"]["pixel"]
    assert saved["pipes"]["pixel"].decode_defaults["realism"] == 0.5
    assert not np.allclose(pixel["saved_defaults"], pixel["realism_1"])
    assert saved["pipes"]["bundled"].decode_defaults["realism"] < 1 and saved["pipes"]["latent"].vae is not None


def test_a_pipeline_loaded_through_remote_code_saves_and_reloads(saved, remote):
    resaved = Path(remote["report"]["resaved"])
    # it writes the code it was loaded from: the package's code, as the package writes it now
    assert check_remote_code(resaved) == []
    for path in remote_code_files(resaved):
        assert (resaved / path).read_bytes() == (saved["root"] / "pixel" / path).read_bytes()
    index = json.loads((resaved / "model_index.json").read_text())
    index.pop("_name_or_path")  # diffusers records where a loaded pipeline came from
    assert index == json.loads((saved["root"] / "pixel" / "model_index.json").read_text())
    expected = saved["outputs"]["pixel"]["saved_defaults"]
    np.testing.assert_allclose(remote["arrays"]["resaved/saved_defaults"], expected, rtol=0, atol=1e-6)
    # and the package loads what the remote code saved, with its own classes
    pipe = ScoreVAEPipeline.from_pretrained(resaved)
    assert type(pipe.encoder) is ScoreVAEEncoder
    outputs = pipeline_outputs(pipe, saved["inputs"]["pixel"])
    np.testing.assert_allclose(outputs["saved_defaults"], expected, rtol=0, atol=1e-6)


def test_without_trust_remote_code_diffusers_refuses(remote):
    assert "trust_remote_code=True" in remote["report"]["refusal"]
    assert "trust_remote_code=True" in remote["report"]["encoder_refusal"]


def test_an_encoder_folder_loads_with_auto_model(saved, remote):
    assert remote["report"]["encoder_class"].endswith("modeling_scorevae_encoder.ScoreVAEEncoder")
    encoder = saved["pipes"]["pixel"].encoder
    with torch.no_grad():
        image = torch.from_numpy(saved["inputs"]["encoder"]) * 2 - 1
        mean = encoder(image, encoder.config.clean_log_snr).mean.numpy()
    np.testing.assert_allclose(remote["arrays"]["encoder/mean"], mean, rtol=0, atol=1e-6)
    config = json.loads((saved["root"] / "encoder" / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "modeling_scorevae_encoder.ScoreVAEEncoder"}


def test_a_repo_id_in_an_offline_cache(saved, remote):
    """Offline, diffusers cannot load remote code by repo id: fetching a repo's module asks the Hub for the commit
    (`diffusers.utils.dynamic_modules_utils.get_cached_module_file`), even when every file is cached. The route
    docs/hub.md gives works: `snapshot_download(repo_id, local_files_only=True)`, then the folder. Should diffusers
    load by repo id offline one day, it must decode the same."""
    expected = saved["outputs"]["pixel"]["saved_defaults"]
    np.testing.assert_allclose(remote["arrays"]["hub_snapshot/saved_defaults"], expected, rtol=0, atol=1e-6)
    error = remote["report"]["repo_id_error"]
    if error is None:
        np.testing.assert_allclose(remote["arrays"]["hub_repo_id/saved_defaults"], expected, rtol=0, atol=1e-6)
    else:
        assert error.startswith("OfflineModeIsEnabled"), error


# ---------------------------------------------------------------------------------------------------------------------
# the saved layout, and the package's priority


def test_saved_folders_hold_what_the_package_writes_now(saved):
    root = saved["root"]
    files = ["encoder/modeling_scorevae_encoder.py", "pipeline_scorevae.py"]
    assert sorted(remote_code_files(root / "pixel")) == files
    for name in ("pixel", "latent", "flow", "bundled", "encoder"):
        assert check_remote_code(root / name) == [], name
    index = json.loads((root / "pixel" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_scorevae", "ScoreVAEPipeline"]
    assert index["encoder"] == ["modeling_scorevae_encoder", "ScoreVAEEncoder"]
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["vae"] == [None, None]


def test_check_remote_code_names_stale_files(tmp_path):
    pixel_pipeline().save_pretrained(tmp_path)
    code = tmp_path / "encoder" / "modeling_scorevae_encoder.py"
    code.write_text(code.read_text() + "# edited\n")
    (tmp_path / "pipeline_scorevae.py").unlink()
    assert check_remote_code(tmp_path) == ["pipeline_scorevae.py", "encoder/modeling_scorevae_encoder.py"]
    with pytest.raises(ValueError, match="neither a saved pipeline"):
        check_remote_code(tmp_path / "unet")


def test_the_package_keeps_priority(saved, monkeypatch):
    """With the package installed its own classes load a folder with remote code, asking for no trust_remote_code
    and reading no `auto_map` as an argument; `DiffusionPipeline` itself runs the folder's code (diffusers' rule)."""
    warnings = []
    monkeypatch.setattr(diffusers.configuration_utils.logger, "warning", warnings.append)
    folder = saved["root"] / "pixel"
    pipe = ScoreVAEPipeline.from_pretrained(folder)
    assert type(pipe) is ScoreVAEPipeline and type(pipe.encoder) is ScoreVAEEncoder
    encoder = ScoreVAEEncoder.from_pretrained(saved["root"] / "encoder")
    assert type(encoder) is ScoreVAEEncoder and "auto_map" not in encoder.config
    assert not warnings  # not "The config attributes {'auto_map': ...} were passed to ScoreVAEEncoder, but ..."
    # a prior swap onto a folder with remote code: the passed encoder is checked against the package's class
    swapped = ScoreVAEPipeline.from_pretrained(folder, encoder=encoder)
    assert swapped.encoder is encoder
    assert ENCODER_LIBRARY == ScoreVAEEncoder.__module__


def test_diffusers_with_the_package_installed_runs_the_folders_code(saved, tmp_path, monkeypatch):
    monkeypatch.setattr(diffusers.utils.dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(saved["root"] / "pixel")
    pipe = DiffusionPipeline.from_pretrained(saved["root"] / "pixel", trust_remote_code=True)
    assert type(pipe).__module__.startswith("diffusers_modules.") and not isinstance(pipe, ScoreVAEPipeline)

    # save_pretrained(push_to_hub=True) of the remote class pushes after the code is written (diffusers' own
    # push_to_hub, which saves again)
    pushed = {}
    monkeypatch.setattr(type(pipe), "push_to_hub", lambda self, repo_id, **kwargs: pushed.update(repo_id=repo_id))
    pipe.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="me/scorevae")
    assert pushed == {"repo_id": "me/scorevae"} and check_remote_code(tmp_path / "saved") == []


def test_the_model_card_shows_both_ways_to_load(saved):
    card = create_model_card(saved["pipes"]["pixel"], "org/scorevae").text
    assert 'ScoreVAEPipeline.from_pretrained("org/scorevae")' in card
    assert 'DiffusionPipeline.from_pretrained("org/scorevae", trust_remote_code=True)' in card
    assert 'snapshot_download("org/scorevae", local_files_only=True)' in card
    card = create_model_card(saved["pipes"]["pixel"].encoder, "org/encoder").text
    assert 'ScoreVAEEncoder.from_pretrained("org/encoder")' in card
    assert 'AutoModel.from_pretrained("org/encoder", trust_remote_code=True)' in card


def test_folders_saved_before_the_remote_code_still_load(tmp_path):
    """A folder as saves wrote it before the remote code (no `.py`, the package's module named in model_index.json, no
    `auto_map`; the bundled pipelines are such folders) loads and decodes as before; saving it again adds the code."""
    pipe = pixel_pipeline()
    pipe.save_pretrained(tmp_path / "saved")
    old = strip_remote_code(tmp_path / "saved", tmp_path)
    assert not list(old.rglob("*.py"))
    assert json.loads((old / "model_index.json").read_text())["encoder"] == [ENCODER_LIBRARY, "ScoreVAEEncoder"]
    loaded = ScoreVAEPipeline.from_pretrained(old)
    assert type(loaded.encoder) is ScoreVAEEncoder
    image = images(3, 8, 0)
    expected, outputs = pipeline_outputs(pipe, image), pipeline_outputs(loaded, image)
    for key, value in expected.items():
        np.testing.assert_array_equal(outputs[key], value, err_msg=key)
    assert type(ScoreVAEEncoder.from_pretrained(old, subfolder="encoder")) is ScoreVAEEncoder
    assert type(ScoreVAEPipeline.from_pretrained(pretrained_path("fashion-mnist")).encoder) is ScoreVAEEncoder
    loaded.save_pretrained(tmp_path / "again")
    assert check_remote_code(tmp_path / "again") == []


# ---------------------------------------------------------------------------------------------------------------------
# the generated modules


@pytest.mark.parametrize("kind", ["pipeline", "encoder"])
def test_generated_modules_import_only_torch_numpy_pil_diffusers_and_the_standard_library(kind):
    source = module_source(kind)
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, ast.unparse(node)
            roots.add(node.module.split(".")[0])
    assert roots - set(sys.stdlib_module_names) <= {"torch", "numpy", "PIL", "diffusers"}, roots
    assert "\nclass ScoreVAEEncoder(" in source
    assert ("\nclass ScoreVAEPipeline(" in source) == (kind == "pipeline")
    assert f"# Copied from {remote_code.MODULES[kind]}\n" in source


ENCODER = """from ..hub.mixins import ScoreVAEHubMixin


class ScoreVAEEncoder(ScoreVAEHubMixin):
    pass
"""
CLASHING_PIPELINE = """from ..models import ScoreVAEEncoder


def _downsampled_size():
    return 0
"""
CLASHING_ENCODER = """def _downsampled_size():
    return 1


class ScoreVAEEncoder:
    pass
"""
IMPORT_IN_A_DOCSTRING = '''def f():
    """
    from transformers import X
    """
'''


def fake_package(root: Path, files: dict[str, str]) -> Path:
    """A package tree like this one's, with `files` ({relative path: source}) over minimal modules."""
    package = root / "diffusers_scorevae"
    base = {
        "__init__.py": '__version__ = "9.9"\n',
        "hub/__init__.py": "",
        "hub/remote_saving.py": "class RemoteCodeMixin:\n    pass\n",
        "hub/mixins.py": "import huggingface_hub\n",
        "models/__init__.py": "from .encoder import ScoreVAEEncoder\n",
        "models/encoder.py": ENCODER,
        "pipelines/__init__.py": "",
        "pipelines/pipeline_scorevae.py": "import torch\n\nfrom ..models import ScoreVAEEncoder\n",
    }
    for path, text in {**base, **files}.items():
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(text)
    return package


@pytest.fixture
def fake(tmp_path, monkeypatch):
    def build(files: dict[str, str]) -> str:
        monkeypatch.setattr(remote_code, "PACKAGE_DIR", fake_package(tmp_path, files))
        return module_source("pipeline")

    monkeypatch.setattr(remote_code, "_BUILDS", {})
    return build


def test_the_builder_inlines_in_dependency_order_and_follows_the_source(fake, tmp_path):
    source = fake({"pipelines/pipeline_scorevae.py": "from ..models import ScoreVAEEncoder as Encoder\n\nX = 1\n"})
    sections = [line for line in source.splitlines() if line.startswith("# Copied from")]
    assert sections == [
        "# Copied from diffusers_scorevae.hub.remote_saving",
        "# Copied from diffusers_scorevae.models.encoder",
        "# Copied from diffusers_scorevae.pipelines.pipeline_scorevae",
    ]
    assert "ScoreVAEHubMixin = RemoteCodeMixin  # diffusers_scorevae.hub.mixins.ScoreVAEHubMixin (reduced)" in source
    assert "Encoder = ScoreVAEEncoder  # diffusers_scorevae.models.ScoreVAEEncoder" in source
    assert "huggingface_hub" not in source and "generated by diffusers_scorevae 9.9" in source
    # an edit to a module is in the next build (the build is cached on the files' stamps)
    path = tmp_path / "diffusers_scorevae" / "pipelines" / "pipeline_scorevae.py"
    path.write_text(path.read_text() + "\n\ndef added():\n    from ..models.encoder import ScoreVAEEncoder\n")
    assert "def added():\n    pass\n" in module_source("pipeline")


@pytest.mark.parametrize(
    "files, match",
    [
        ({"pipelines/pipeline_scorevae.py": "import scipy\n"}, "imports scipy"),
        ({"pipelines/pipeline_scorevae.py": "def f():\n    import accelerate\n"}, "imports accelerate"),
        ({"pipelines/pipeline_scorevae.py": "from .. import models\n"}, "as an object"),
        ({"pipelines/pipeline_scorevae.py": "import diffusers_scorevae.models\n"}, "as an object"),
        ({"pipelines/pipeline_scorevae.py": "from ..hub.mixins import Other\n"}, "REDUCED"),
        (
            {"pipelines/pipeline_scorevae.py": CLASHING_PIPELINE, "models/encoder.py": CLASHING_ENCODER},
            "both define _downsampled_size",
        ),
        ({"pipelines/pipeline_scorevae.py": "PATH = __file__\n"}, "uses __file__"),
        ({"pipelines/pipeline_scorevae.py": IMPORT_IN_A_DOCSTRING}, "transformers"),
    ],
)
def test_the_builder_refuses_what_remote_code_cannot_run(fake, files, match):
    with pytest.raises(ValueError, match=match):
        fake(files)
